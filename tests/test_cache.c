/*
 * test_cache.c — the compiled-program cache (src/backend/cache.c, backend.c) and the hash it is
 * keyed by (src/base/sha256.c).
 *
 * SHA-256 against FIPS 180-4's vectors; entries that are truncated, corrupt, extended or carry
 * another key are refused; then through the session, for the system compiler and (when built in)
 * the JIT: a miss compiles and stores one entry, a second load compiles nothing, a program loaded
 * from the cache computes bit-identical arenas to a freshly compiled one, a corrupt or truncated
 * entry is rebuilt, another -O level is another entry, no cache writes nothing, a cache that
 * cannot be used or written is a one-line warning and not an error, two processes filling the
 * same empty cache both succeed and leave one valid entry, and shared objects loaded from the
 * cache never alias and unload.
 */
#define _GNU_SOURCE /* dl_iterate_phdr */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "program_harness.h"

#define MLP KILN_SOURCE_DIR "/examples/mlp.kiln"

/* ---- SHA-256 ---- */

static void require_digest(const void *data, size_t n, const char *hex) {
  unsigned char d[SHA256_BYTES];
  char got[2 * SHA256_BYTES + 1];
  sha256(data, n, d);
  sha256_hex(d, got);
  ck_assert_str_eq(got, hex);
}

START_TEST(sha256_known_vectors) {
  require_digest("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  require_digest("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  require_digest(two_blocks, strlen(two_blocks),
                 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  /* A million 'a's, fed in uneven pieces: the streaming path across block boundaries. */
  char a[1000];
  memset(a, 'a', sizeof a);
  Sha256 s;
  sha256_init(&s);
  size_t fed = 0;
  for (size_t piece = 1; fed < 1000000; piece = piece % 997 + 1) {
    size_t n = piece < 1000000 - fed ? piece : 1000000 - fed;
    sha256_update(&s, a, n);
    fed += n;
  }
  unsigned char d[SHA256_BYTES];
  char hex[2 * SHA256_BYTES + 1];
  sha256_final(&s, d);
  sha256_hex(d, hex);
  ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
END_TEST

/* ---- files ---- */

static void make_dir(char *dir, size_t cap) {
  snprintf(dir, cap, "/tmp/kiln-test-cache-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void remove_dir(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "chmod -R u+w '%s' 2>/dev/null; rm -rf '%s'", dir, dir);
  ck_assert_int_eq(system(cmd), 0);
}

/* Counts dir's files: *entries named like cache entries (64 hex digits, .o or .so), *others
 * anything else (temporary files). path: the last entry's. */
static void count_files(const char *dir, int *entries, int *others, char *path, size_t cap) {
  *entries = *others = 0;
  DIR *d = opendir(dir);
  ck_assert_ptr_nonnull(d);
  for (struct dirent *e; (e = readdir(d));) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    size_t hex = strspn(e->d_name, "0123456789abcdef");
    if (hex == 64 && (!strcmp(e->d_name + 64, ".o") || !strcmp(e->d_name + 64, ".so"))) {
      ++*entries;
      if (path)
        snprintf(path, cap, "%s/%s", dir, e->d_name);
    } else {
      ++*others;
    }
  }
  closedir(d);
}

static long file_size(const char *path) {
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  return (long)st.st_size;
}

/* Flips one bit of the byte at offset (from the end when negative). */
static void flip_byte(const char *path, long offset) {
  int fd = open(path, O_RDWR);
  ck_assert_int_ge(fd, 0);
  off_t at = offset >= 0 ? offset : file_size(path) + offset;
  unsigned char c;
  ck_assert_int_eq(pread(fd, &c, 1, at), 1);
  c ^= 0x10;
  ck_assert_int_eq(pwrite(fd, &c, 1, at), 1);
  close(fd);
}

static void truncate_to(const char *path, long size) { ck_assert_int_eq(truncate(path, size), 0); }

static void append_byte(const char *path) {
  int fd = open(path, O_WRONLY | O_APPEND);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, "x", 1), 1);
  close(fd);
}

START_TEST(entries_are_checked) {
  char dir[64], path[600];
  make_dir(dir, sizeof dir);
  CacheKey k, other;
  cache_key_init(&k);
  cache_key_add_string(&k, "a program");
  cache_key_final(&k);
  cache_key_init(&other);
  cache_key_add_string(&other, "another program");
  cache_key_final(&other);
  char payload[1000];
  for (size_t i = 0; i < sizeof payload; i++)
    payload[i] = (char)(i * 7);
  Buf why = {0};
  void *got = NULL;
  size_t n = 0;
  ck_assert_int_eq(cache_read(dir, &k, "o", &got, &n, &why), CACHE_READ_ABSENT);
  ck_assert_int_eq(cache_write(dir, &k, "o", payload, sizeof payload, &why), 0);
  ck_assert_int_eq(cache_read(dir, &k, "o", &got, &n, &why), CACHE_READ_FOUND);
  ck_assert_uint_eq(n, sizeof payload);
  ck_assert_int_eq(memcmp(got, payload, n), 0);
  free(got);
  int entries, others;
  count_files(dir, &entries, &others, path, sizeof path);
  ck_assert_int_eq(entries, 1);
  ck_assert_int_eq(others, 0);
  ck_assert_int_eq(file_size(path), 88 + (long)sizeof payload);

  /* Each kind of damage is refused with its reason, and a rewrite repairs it. */
  struct {
    int kind;        /* 0 flip, 1 truncate, 2 extend */
    long where;
    const char *reason;
  } damage[] = {
      {0, -1, "checksum"},         {0, 500, "checksum"},       {0, 0, "not a kiln cache entry"},
      {0, 8, "format version"},    {0, 20, "key does not match"}, {0, 50, "truncated"},
      {0, 60, "checksum"},         {1, 88 + 999, "truncated"}, {1, 40, "truncated"},
      {1, 0, "truncated"},         {2, 0, "truncated or extended"},
  };
  for (size_t i = 0; i < sizeof damage / sizeof *damage; i++) {
    if (damage[i].kind == 0)
      flip_byte(path, damage[i].where);
    else if (damage[i].kind == 1)
      truncate_to(path, damage[i].where);
    else
      append_byte(path);
    buf_free(&why);
    ck_assert_int_eq(cache_read(dir, &k, "o", &got, &n, &why), CACHE_READ_INVALID);
    ck_assert_ptr_null(got);
    ck_assert_msg(why.p && strstr(why.p, damage[i].reason) && strstr(why.p, path),
                  "damage %zu: %s", i, why.p ? why.p : "(none)");
    ck_assert_int_eq(cache_write(dir, &k, "o", payload, sizeof payload, &why), 0);
    ck_assert_int_eq(cache_read(dir, &k, "o", &got, &n, &why), CACHE_READ_FOUND);
    free(got);
  }

  /* An entry renamed to another key is not that key's. */
  char moved[600];
  char hex[2 * SHA256_BYTES + 1];
  sha256_hex(other.digest, hex);
  snprintf(moved, sizeof moved, "%s/%s.o", dir, hex);
  ck_assert_int_eq(rename(path, moved), 0);
  buf_free(&why);
  ck_assert_int_eq(cache_read(dir, &other, "o", &got, &n, &why), CACHE_READ_INVALID);
  ck_assert_ptr_nonnull(strstr(why.p, "key does not match"));
  buf_free(&why);
  remove_dir(dir);
}
END_TEST

START_TEST(key_parts_are_delimited) {
  CacheKey a, b;
  cache_key_init(&a);
  cache_key_add_string(&a, "ab");
  cache_key_add_string(&a, "c");
  cache_key_final(&a);
  cache_key_init(&b);
  cache_key_add_string(&b, "a");
  cache_key_add_string(&b, "bc");
  cache_key_final(&b);
  ck_assert_int_ne(memcmp(a.digest, b.digest, SHA256_BYTES), 0);
}
END_TEST

/* ---- through the session ---- */

static BackendKind backend_of(int i) { return i == 0 ? BACKEND_CC : BACKEND_JIT; }

static void run_open_threads(Run *r, const char *model, BackendKind kind, const char *cache_dir,
                             const char *tmp_dir, int opt_level, int threads) {
  Options o;
  session_default_options(&o);
  o.backend.kind = kind;
  o.backend.cache_dir = cache_dir;
  o.backend.tmp_dir = tmp_dir;
  o.backend.opt_level = opt_level;
  o.sched.threads = threads;
  run_open_with(r, model, &o);
}

static void run_open(Run *r, const char *model, BackendKind kind, const char *cache_dir,
                     const char *tmp_dir, int opt_level) {
  run_open_threads(r, model, kind, cache_dir, tmp_dir, opt_level, 1);
}

static CacheUse cache_use(const Run *r) { return r->s.times.backend.cache; }

/* Parameters and state from their initialisers, inputs from a fixed stream, then one train
 * step. */
static void run_step(Run *r) {
  run_reset(r);
  run_entry(r, "train");
}

/* The whole arena after one step, byte for byte. */
static void require_same_step(Run *a, Run *b) {
  ck_assert_int_eq(a->s.prog->arena_bytes, b->s.prog->arena_bytes);
  run_step(a);
  run_step(b);
  ck_assert_msg(memcmp(a->arena, b->arena, (size_t)a->s.prog->arena_bytes) == 0,
                "the arenas differ after a train step");
}

static void require_empty(const char *dir) {
  int entries, others;
  count_files(dir, &entries, &others, NULL, 0);
  ck_assert_int_eq(entries + others, 0);
}

START_TEST(miss_then_hit) {
  BackendKind kind = backend_of(_i);
  char cache[64], tmp[64], entry[600];
  make_dir(cache, sizeof cache);
  make_dir(tmp, sizeof tmp);
  Run fresh, first, second;
  run_open(&fresh, MLP, kind, NULL, tmp, 0);
  ck_assert_int_eq(cache_use(&fresh), CACHE_UNUSED);
  require_empty(cache); /* no cache directory: nothing written anywhere */
  require_empty(tmp);   /* private copies and build directories are gone */

  run_open(&first, MLP, kind, cache, tmp, 0);
  ck_assert_int_eq(cache_use(&first), CACHE_MISS);
  ck_assert_str_eq(first.s.times.backend.warning, "");
  int entries, others;
  count_files(cache, &entries, &others, entry, sizeof entry);
  ck_assert_int_eq(entries, 1);
  ck_assert_int_eq(others, 0);
  ck_assert_ptr_nonnull(strstr(entry, kind == BACKEND_JIT ? ".o" : ".so"));

  run_open(&second, MLP, kind, cache, tmp, 0);
  ck_assert_int_eq(cache_use(&second), CACHE_HIT);
  const BackendReport *b = &second.s.times.backend;
  ck_assert(b->clang == 0 && b->optimise == 0 && b->codegen == 0 && b->cc == 0);
  require_empty(tmp);
  require_same_step(&fresh, &second);
  require_same_step(&first, &second);
  run_close(&fresh);
  run_close(&first);
  run_close(&second);
  count_files(cache, &entries, &others, NULL, 0);
  ck_assert_int_eq(entries, 1);
  ck_assert_int_eq(others, 0);
  remove_dir(cache);
  remove_dir(tmp);
}
END_TEST

START_TEST(damaged_entry_is_rebuilt) {
  BackendKind kind = backend_of(_i);
  char cache[64], entry[600];
  make_dir(cache, sizeof cache);
  Run fresh;
  run_open(&fresh, MLP, kind, NULL, NULL, 0);
  Run r;
  run_open(&r, MLP, kind, cache, NULL, 0);
  run_close(&r);
  int entries, others;
  count_files(cache, &entries, &others, entry, sizeof entry);
  ck_assert_int_eq(entries, 1);
  long whole = file_size(entry);
  for (int damage = 0; damage < 3; damage++) {
    if (damage == 0)
      flip_byte(entry, whole / 2); /* inside the code */
    else if (damage == 1)
      truncate_to(entry, whole - 100);
    else
      flip_byte(entry, 30); /* the key in the header */
    run_open(&r, MLP, kind, cache, NULL, 0);
    ck_assert_int_eq(cache_use(&r), CACHE_REPLACED);
    ck_assert_msg(strstr(r.s.times.backend.note, "invalid"), "%s", r.s.times.backend.note);
    ck_assert_str_eq(r.s.times.backend.warning, "");
    require_same_step(&fresh, &r);
    run_close(&r);
    ck_assert_int_eq(file_size(entry), whole);
    /* The rewritten entry is whole again. */
    run_open(&r, MLP, kind, cache, NULL, 0);
    ck_assert_int_eq(cache_use(&r), CACHE_HIT);
    require_same_step(&fresh, &r);
    run_close(&r);
  }
  count_files(cache, &entries, &others, NULL, 0);
  ck_assert_int_eq(entries, 1);
  ck_assert_int_eq(others, 0);
  run_close(&fresh);
  remove_dir(cache);
}
END_TEST

START_TEST(opt_level_is_part_of_the_key) {
  BackendKind kind = backend_of(_i);
  char cache[64];
  make_dir(cache, sizeof cache);
  Run a, b, c;
  run_open(&a, MLP, kind, cache, NULL, 2);
  run_open(&b, MLP, kind, cache, NULL, 1);
  ck_assert_int_eq(cache_use(&a), CACHE_MISS);
  ck_assert_int_eq(cache_use(&b), CACHE_MISS);
  run_open(&c, MLP, kind, cache, NULL, 0); /* 0 is -O2 */
  ck_assert_int_eq(cache_use(&c), CACHE_HIT);
  int entries, others;
  count_files(cache, &entries, &others, NULL, 0);
  ck_assert_int_eq(entries, 2);
  ck_assert_int_eq(others, 0);
  run_close(&a);
  run_close(&b);
  run_close(&c);
  remove_dir(cache);
}
END_TEST

/* A cache that cannot be used or written costs a compile and one line of warning. */
START_TEST(unusable_cache_is_a_warning) {
  BackendKind kind = backend_of(_i);
  char dir[64], bad[128];
  make_dir(dir, sizeof dir);

  /* Writable by others: its entries would be someone else's code. */
  ck_assert_int_eq(chmod(dir, 0777), 0);
  Run r;
  run_open(&r, MLP, kind, dir, NULL, 0);
  ck_assert_int_eq(cache_use(&r), CACHE_UNUSED);
  ck_assert_msg(strstr(r.s.times.backend.warning, "may write to it"), "%s",
                r.s.times.backend.warning);
  ck_assert_ptr_null(strchr(r.s.times.backend.warning, '\n'));
  run_close(&r);
  require_empty(dir);
  ck_assert_int_eq(chmod(dir, 0700), 0);

  /* A path that cannot be a directory. */
  snprintf(bad, sizeof bad, "%s/file/kiln", dir);
  char file[128];
  snprintf(file, sizeof file, "%s/file", dir);
  FILE *f = fopen(file, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);
  run_open(&r, MLP, kind, bad, NULL, 0);
  ck_assert_int_eq(cache_use(&r), CACHE_UNUSED);
  ck_assert_msg(strstr(r.s.times.backend.warning, "cannot create the cache directory"), "%s",
                r.s.times.backend.warning);
  run_close(&r);
  unlink(file);

  /* A directory that cannot be written: read-only for a normal user; root writes anywhere, so
   * there /proc/self stands in (owned by root, and no file can be made in it). */
  const char *readonly = dir;
  struct stat st;
  if (geteuid() == 0)
    readonly = stat("/proc/self", &st) == 0 ? "/proc/self" : NULL;
  else
    ck_assert_int_eq(chmod(dir, 0500), 0);
  if (readonly) {
    run_open(&r, MLP, kind, readonly, NULL, 0);
    ck_assert_int_eq(cache_use(&r), CACHE_MISS);
    ck_assert_msg(strstr(r.s.times.backend.warning, "cannot write"), "%s",
                  r.s.times.backend.warning);
    ck_assert_ptr_null(strchr(r.s.times.backend.warning, '\n'));
    run_close(&r);
  }
  require_empty(dir);
  remove_dir(dir);
}
END_TEST

/* Two processes compiling the same program into the same empty cache at once. */
START_TEST(two_processes_fill_one_entry) {
  BackendKind kind = backend_of(_i);
  char cache[64];
  make_dir(cache, sizeof cache);
  int go[2];
  ck_assert_int_eq(pipe(go), 0);
  pid_t pid[2];
  for (int k = 0; k < 2; k++) {
    pid[k] = fork();
    ck_assert_int_ge(pid[k], 0);
    if (pid[k] == 0) {
      close(go[1]);
      char c;
      if (read(go[0], &c, 1) != 0) /* both start when the pipe closes */
        _exit(3);
      Options o;
      session_default_options(&o);
      o.backend.kind = kind;
      o.backend.cache_dir = cache;
      o.sched.threads = 1;
      Session s;
      int rc = session_open_file(&s, MLP, &o) || session_load(&s);
      int ok = rc == 0 && s.prog && s.times.backend.warning[0] == 0 &&
               s.times.backend.cache != CACHE_UNUSED;
      session_close(&s);
      _exit(ok ? 0 : 1);
    }
  }
  close(go[0]);
  close(go[1]);
  for (int k = 0; k < 2; k++) {
    int st;
    ck_assert_int_eq(waitpid(pid[k], &st, 0), pid[k]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "process %d failed", k);
  }
  int entries, others;
  count_files(cache, &entries, &others, NULL, 0);
  ck_assert_int_eq(entries, 1);
  ck_assert_int_eq(others, 0);
  Run r;
  run_open(&r, MLP, kind, cache, NULL, 0);
  ck_assert_int_eq(cache_use(&r), CACHE_HIT);
  run_close(&r);
  remove_dir(cache);
}
END_TEST

/* Objects loaded from files in a directory under prefix, by the dynamic loader's list. */
typedef struct Mapped {
  const char *prefix;
  int count;
} Mapped;

static int count_mapped(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  Mapped *m = data;
  if (info->dlpi_name && !strncmp(info->dlpi_name, m->prefix, strlen(m->prefix)))
    m->count++;
  return 0;
}

static int mapped_from(const char *dir) {
  Mapped m = {dir, 0};
  dl_iterate_phdr(count_mapped, &m);
  return m.count;
}

/* Shared objects from the cache: the same entry twice and two different programs are separate
 * objects with their own handles (the loader would hand back an object already loaded from the
 * same path or inode), and each unloads. */
START_TEST(shared_objects_never_alias) {
  char cache[64], tmp[64], linear[600];
  make_dir(cache, sizeof cache);
  make_dir(tmp, sizeof tmp);
  snprintf(linear, sizeof linear, "%s/examples/linear_toy.kiln", KILN_SOURCE_DIR);
  Run a, b, c;
  run_open(&a, MLP, BACKEND_CC, cache, tmp, 0);
  run_open(&b, MLP, BACKEND_CC, cache, tmp, 0);
  run_open(&c, linear, BACKEND_CC, cache, tmp, 0);
  ck_assert_int_eq(cache_use(&a), CACHE_MISS);
  ck_assert_int_eq(cache_use(&b), CACHE_HIT);
  ck_assert_int_eq(cache_use(&c), CACHE_MISS);
  ck_assert_ptr_ne(a.s.prog, b.s.prog);
  ck_assert_ptr_ne(a.s.prog, c.s.prog);
  ck_assert_int_ne(a.s.prog->ntensors, c.s.prog->ntensors);
  ck_assert_int_eq(mapped_from(tmp), 3);
  require_same_step(&a, &b);
  run_close(&b);
  ck_assert_int_eq(mapped_from(tmp), 2);
  run_close(&a);
  run_close(&c);
  ck_assert_int_eq(mapped_from(tmp), 0);
  require_empty(tmp);
  /* And again from the cache, after everything was unloaded. */
  run_open(&c, linear, BACKEND_CC, cache, tmp, 0);
  ck_assert_int_eq(cache_use(&c), CACHE_HIT);
  ck_assert_int_eq(mapped_from(tmp), 1);
  run_close(&c);
  ck_assert_int_eq(mapped_from(tmp), 0);
  remove_dir(cache);
  remove_dir(tmp);
}
END_TEST

/* Programs with parallel tasks unload too: their pool is stopped first, so no thread is left
 * in their code, and the next program gets a pool of its own. */
START_TEST(threaded_programs_unload) {
  char tmp[64];
  make_dir(tmp, sizeof tmp);
  for (int k = 0; k < 3; k++) {
    Run r;
    run_open_threads(&r, KILN_SOURCE_DIR "/examples/mnist_cnn.kiln", BACKEND_CC, NULL, tmp, 0, 2);
    ck_assert_ptr_nonnull(strstr(r.s.c.p, "kiln_run_tasks(ex"));
    ck_assert_int_eq(rt_arena_threads(&r.be), 2);
    ck_assert_int_eq(mapped_from(tmp), 1);
    run_step(&r);
    run_close(&r);
    ck_assert_int_eq(mapped_from(tmp), 0);
  }
  remove_dir(tmp);
}
END_TEST

int main(void) {
  Suite *s = suite_create("cache");
  TCase *tc = tcase_create("cache");
  tcase_set_timeout(tc, 600);
  int backends = backend_has_jit() ? 2 : 1;
  tcase_add_test(tc, sha256_known_vectors);
  tcase_add_test(tc, key_parts_are_delimited);
  tcase_add_test(tc, entries_are_checked);
  tcase_add_loop_test(tc, miss_then_hit, 0, backends);
  tcase_add_loop_test(tc, damaged_entry_is_rebuilt, 0, backends);
  tcase_add_loop_test(tc, opt_level_is_part_of_the_key, 0, backends);
  tcase_add_loop_test(tc, unusable_cache_is_a_warning, 0, backends);
  tcase_add_loop_test(tc, two_processes_fill_one_entry, 0, backends);
  tcase_add_test(tc, shared_objects_never_alias);
  tcase_add_test(tc, threaded_programs_unload);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
