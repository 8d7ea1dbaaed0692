/*
 * aot.c — driving the system C compiler over generated code.
 *
 * Two products: a standalone trainer (the generated step + runtime/trainer_main + libkilnrt.a,
 * linked with zlib and libm) and a shared object that kiln loads into its own process (for
 * `kiln train`, `kiln check` and the tests). Both go through one helper that writes the source to
 * a temporary file and runs the compiler with fork/execvp — never a shell string, so paths with
 * spaces or quotes are just arguments — capturing its output for the error message.
 *
 * The shared object is compiled into bytes and loaded from bytes, apart, so that backend.c can
 * keep the bytes in the cache. Loading writes them to a private file of their own: the dynamic
 * loader hands back an already loaded object for a known path or inode, so two programs must
 * never share either.
 *
 * Outputs appear atomically: the compiler writes a temporary name in the output's directory,
 * which is renamed over the target only on success, so a failed build never leaves a partial
 * or stale-looking trainer behind.
 *
 * Generated code is plain C11: its threads are the driver's (kiln_exec, runtime/rt_pool.c), so
 * no OpenMP flag or runtime is involved, and a trainer links libpthread for the pool.
 *
 * Which compiler, runtime directory and temporary directory are options (BackendOptions); the
 * driver fills them from $CC, $KILN_HOME (else the runtime beside the kiln executable, in a build
 * tree or an installed one) and $TMPDIR. The runtime directory (by default the build's,
 * KILN_RUNTIME_DIR) must hold kiln_abi.h, runtime.h, libkilnrt.a and trainer_main.o or
 * trainer_main.c.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/backend.h"

#ifndef KILN_RUNTIME_DIR
#define KILN_RUNTIME_DIR "."
#endif

/* A trainer links libkilnrt.a, which the sanitizer build instruments like kiln itself: the
 * trainer must then link the sanitizer runtimes too. */
#if defined(__SANITIZE_ADDRESS__)
#define AOT_SANITIZE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AOT_SANITIZE 1
#endif
#endif

void aot_default_options(BackendOptions *o) {
  memset(o, 0, sizeof *o);
  o->kind = BACKEND_DEFAULT;
  o->cc = "cc";
  o->runtime_dir = KILN_RUNTIME_DIR;
  o->tmp_dir = "/tmp";
  o->cache_dir = NULL;
  o->opt_level = 0;
  o->march = "native";
}

/* Unset or empty fields fall back to the defaults. */
static BackendOptions resolved(const BackendOptions *o) {
  BackendOptions r;
  aot_default_options(&r);
  if (o && o->cc && *o->cc)
    r.cc = o->cc;
  if (o && o->runtime_dir && *o->runtime_dir)
    r.runtime_dir = o->runtime_dir;
  if (o && o->tmp_dir && *o->tmp_dir)
    r.tmp_dir = o->tmp_dir;
  r.opt_level = o ? o->opt_level : 0;  /* backend_opt_flag maps it */
  if (o && o->march && *o->march)
    r.march = o->march;
  r.mpi = o && o->mpi;
  r.mpi_cc = o && o->mpi_cc && *o->mpi_cc ? o->mpi_cc : "mpicc";
  return r;
}

/* An argument vector that owns its strings. */
typedef struct Argv {
  char **v;
  int n, cap;
} Argv;

static int argv_push(Argv *a, const char *s) {
  if (a->n + 2 > a->cap) {
    int cap = a->cap ? a->cap * 2 : 32;
    char **v = realloc(a->v, (size_t)cap * sizeof *v);
    if (!v)
      return -1;
    a->v = v;
    a->cap = cap;
  }
  char *d = strdup(s);
  if (!d)
    return -1;
  a->v[a->n++] = d;
  a->v[a->n] = NULL;
  return 0;
}

static void argv_free(Argv *a) {
  for (int i = 0; i < a->n; i++)
    free(a->v[i]);
  free(a->v);
  memset(a, 0, sizeof *a);
}

/* The compiler command may carry arguments ("ccache gcc", "gcc -m64"), as make's $CC does:
 * split on blanks. */
static int argv_push_cc(Argv *a, const char *cc) {
  char *copy = strdup(cc);
  if (!copy)
    return -1;
  int rc = 0;
  for (char *save = NULL, *w = strtok_r(copy, " \t\n", &save); w && !rc;
       w = strtok_r(NULL, " \t\n", &save))
    rc = argv_push(a, w);
  free(copy);
  return rc || a->n == 0 ? -1 : 0;
}

static void describe(Buf *err, const Argv *a) {
  buf_puts(err, "command:");
  for (int i = 0; i < a->n; i++)
    buf_printf(err, " %s", a->v[i]);
  buf_puts(err, "\n");
}

/* Runs argv, its stdout and stderr appended to out. Returns the exit status, or -1 if it could
 * not run or was killed. */
static int run(const Argv *a, Buf *out) {
  int fd[2];
  if (pipe(fd) != 0) {
    buf_printf(out, "pipe: %s\n", strerror(errno));
    return -1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    buf_printf(out, "fork: %s\n", strerror(errno));
    close(fd[0]);
    close(fd[1]);
    return -1;
  }
  if (pid == 0) {
    dup2(fd[1], 1);
    dup2(fd[1], 2);
    close(fd[0]);
    close(fd[1]);
    execvp(a->v[0], a->v);
    dprintf(2, "cannot run '%s': %s\n", a->v[0], strerror(errno));
    _exit(127);
  }
  close(fd[1]);
  char chunk[4096];
  for (;;) {
    ssize_t r = read(fd[0], chunk, sizeof chunk - 1);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    chunk[r] = 0;
    /* Compiler output is capped: a broken program can produce megabytes of errors. */
    if (out->len < 64 * 1024)
      buf_puts(out, chunk);
  }
  close(fd[0]);
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      return -1;
  if (WIFEXITED(st))
    return WEXITSTATUS(st);
  buf_printf(out, "compiler killed by signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  return -1;
}

/* Makes a private temporary directory "<tmpdir>/kiln-XXXXXX" (path: PATH_MAX bytes) holding
 * step.c with src in it. remove_temp deletes what the builds put there. */
static int write_temp_source(const char *tmp, const char *src, char *dir, size_t cap, Buf *err) {
  if ((size_t)snprintf(dir, cap, "%s/kiln-XXXXXX", tmp) >= cap - 16) {
    buf_printf(err, "temporary directory path too long\n");
    return -1;
  }
  if (!mkdtemp(dir)) {
    buf_printf(err, "cannot create a temporary directory in %s: %s\n", tmp, strerror(errno));
    return -1;
  }
  char path[4096 + 16];
  snprintf(path, sizeof path, "%s/step.c", dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || kiln_write_all(fd, src, strlen(src)) != 0 || close(fd) != 0) {
    buf_printf(err, "cannot write %s: %s\n", path, strerror(errno));
    if (fd >= 0)
      unlink(path);
    rmdir(dir);
    return -1;
  }
  return 0;
}

static void remove_temp(const char *dir) {
  static const char *const names[] = {"step.c", "step.so"};
  char path[4096 + 16];
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    unlink(path);
  }
  rmdir(dir);
}

/* A fresh name in out's directory ("<out>.tmp-XXXXXX"), created empty so no one else takes it. */
static int temp_output(const char *out, char *path, size_t cap, Buf *err) {
  if ((size_t)snprintf(path, cap, "%s.tmp-XXXXXX", out) >= cap) {
    buf_printf(err, "output path too long\n");
    return -1;
  }
  int fd = mkstemp(path);
  if (fd < 0) {
    buf_printf(err, "cannot create a file next to %s: %s\n", out, strerror(errno));
    return -1;
  }
  close(fd);
  return 0;
}

static bool file_exists(const char *path) { return access(path, R_OK) == 0; }

int aot_build_trainer(const BackendOptions *opt, const char *c_source, const char *out_path,
                      Buf *err) {
  BackendOptions o = resolved(opt);
  const char *rt = o.runtime_dir;
  char dir[4096], src[4096 + 16], tmp[4096], main_o[4096], lib[4096], inc[4096 + 2];
  char comm[4096] = "";
  snprintf(main_o, sizeof main_o, "%s/trainer_main.o", rt);
  if (!file_exists(main_o) || o.mpi) /* built here with KILN_MPI */
    snprintf(main_o, sizeof main_o, "%s/trainer_main.c", rt);
  if (o.mpi) {
    snprintf(comm, sizeof comm, "%s/mpi_comm.c", rt);
    if (!file_exists(comm)) {
      buf_printf(err, "the runtime directory %s lacks mpi_comm.c\n", rt);
      return -1;
    }
  }
  snprintf(lib, sizeof lib, "%s/libkilnrt.a", rt);
  snprintf(inc, sizeof inc, "-I%s", rt);
  if (!file_exists(main_o) || !file_exists(lib)) {
    buf_printf(err, "the runtime directory %s lacks trainer_main.o/.c or libkilnrt.a\n", rt);
    return -1;
  }
  if (write_temp_source(o.tmp_dir, c_source, dir, sizeof dir, err))
    return -1;
  snprintf(src, sizeof src, "%s/step.c", dir);
  if (temp_output(out_path, tmp, sizeof tmp, err)) {
    remove_temp(dir);
    return -1;
  }
  Argv a = {0};
  int rc = argv_push_cc(&a, o.mpi ? (o.mpi_cc ? o.mpi_cc : "mpicc") : o.cc);
  char march[128];
  snprintf(march, sizeof march, "-march=%s", o.march);
  const char *flags[] = {"-std=c11", backend_opt_flag(o.opt_level), march, "-fno-math-errno",
                         "-ffp-contract=off"};
  for (size_t i = 0; i < sizeof flags / sizeof *flags && !rc; i++)
    rc = argv_push(&a, flags[i]);
  if (!rc)
    rc = argv_push(&a, "-o");
  const char *rest[] = {tmp, inc, src, main_o, lib, "-lz", "-lm", "-pthread",
#ifdef AOT_SANITIZE
                        "-fsanitize=address,undefined",
#endif
  };
  for (size_t i = 0; i < sizeof rest / sizeof *rest && !rc; i++)
    rc = argv_push(&a, rest[i]);
  if (!rc && o.mpi)
    rc = argv_push(&a, "-DKILN_MPI") || argv_push(&a, comm);
  if (rc) {
    buf_printf(err, "out of memory\n");
  } else {
    int st = run(&a, err);
    if (st != 0) {
      describe(err, &a);
      rc = -1;
    } else if (chmod(tmp, 0755) != 0 || rename(tmp, out_path) != 0) {
      buf_printf(err, "cannot write %s: %s\n", out_path, strerror(errno));
      rc = -1;
    }
  }
  if (rc)
    unlink(tmp);
  remove_temp(dir);
  argv_free(&a);
  return rc;
}

/* The command that compiles the shared object from src into so. One function for
 * the compile and for the cache key's flags. */
static int shared_command(const BackendOptions *o, const char *so, const char *src, Argv *a) {
  int rc = argv_push_cc(a, o->cc);
  const char *flags[] = {"-std=c11", backend_opt_flag(o->opt_level), "-march=native",
                         "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC",
                         "-o", so, src, "-lm"};
  for (size_t i = 0; i < sizeof flags / sizeof *flags && !rc; i++)
    rc = argv_push(a, flags[i]);
  return rc;
}

void aot_shared_flags(const BackendOptions *opt, Buf *out) {
  BackendOptions o = resolved(opt);
  Argv a = {0};
  if (shared_command(&o, "OUT", "IN", &a) == 0)
    for (int i = 0; i < a.n; i++)
      buf_printf(out, "%s%s", i ? " " : "", a.v[i]);
  else
    buf_puts(out, "(out of memory)");
  argv_free(&a);
}

/* Identities of the compiler commands this process asked, kept until exit: the compiler stays
 * the same while the process runs, and asking it costs two process starts. */
typedef struct Identity {
  struct Identity *next;
  char *cc, *text;
} Identity;
static pthread_mutex_t identities_lock = PTHREAD_MUTEX_INITIALIZER;
static Identity *identities;

/* Runs the compiler with extra arguments, its output appended to out; the exit status. */
static int ask_compiler(const char *cc, const char *const *args, size_t nargs, Buf *out) {
  Argv a = {0};
  int rc = argv_push_cc(&a, cc);
  for (size_t i = 0; i < nargs && !rc; i++)
    rc = argv_push(&a, args[i]);
  if (!rc)
    rc = run(&a, out);
  argv_free(&a);
  return rc;
}

int aot_identity(const BackendOptions *opt, const char **identity, Buf *err) {
  BackendOptions o = resolved(opt);
  *identity = NULL;
  pthread_mutex_lock(&identities_lock);
  Identity *id = identities;
  while (id && strcmp(id->cc, o.cc) != 0)
    id = id->next;
  if (!id) {
    Buf text = {.lossy = true};
    buf_printf(&text, "cc 1; command %s\n--version:\n", o.cc);
    static const char *const version[] = {"--version"};
    /* -march=native's instruction sets, as the compiler sees this CPU: an entry compiled on
     * another machine sharing the cache directory must not be loaded here. */
    static const char *const native[] = {"-march=native", "-dM", "-E", "-x", "c", "/dev/null"};
    int bad = ask_compiler(o.cc, version, 1, &text) != 0;
    if (!bad) {
      buf_puts(&text, "native macros:\n");
      bad = ask_compiler(o.cc, native, sizeof native / sizeof *native, &text) != 0;
    }
    bad = bad || text.lost;
    id = bad ? NULL : malloc(sizeof *id);
    char *cc = id ? strdup(o.cc) : NULL;
    if (!cc) {
      free(id);
      id = NULL;
      buf_free(&text);
      if (bad)
        buf_printf(err, "'%s --version' or '%s -march=native -dM -E' failed", o.cc, o.cc);
      else
        buf_printf(err, "out of memory identifying '%s'", o.cc);
    } else {
      *id = (Identity){identities, cc, text.p};
      identities = id;
    }
  }
  pthread_mutex_unlock(&identities_lock);
  if (!id)
    return -1;
  *identity = id->text;
  return 0;
}

/* Reads the whole file at path into a malloc'd buffer. */
static int read_whole(const char *path, void **bytes, size_t *size, Buf *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  unsigned char *p = NULL;
  size_t got = 0;
  if (fd >= 0 && fstat(fd, &st) == 0 && (p = malloc(st.st_size > 0 ? (size_t)st.st_size : 1))) {
    while (got < (size_t)st.st_size) {
      ssize_t r = read(fd, p + got, (size_t)st.st_size - got);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        break;
      got += (size_t)r;
    }
    if (got == (size_t)st.st_size) {
      close(fd);
      *bytes = p;
      *size = got;
      return 0;
    }
  }
  buf_printf(err, "cannot read %s: %s\n", path, p && got ? "short read" : strerror(errno));
  free(p);
  if (fd >= 0)
    close(fd);
  return -1;
}

int aot_compile_shared(const BackendOptions *opt, const char *c_source, void **so_bytes,
                       size_t *size, Buf *err) {
  BackendOptions o = resolved(opt);
  *so_bytes = NULL;
  *size = 0;
  char dir[4096], src[4096 + 16], so[4096 + 16];
  if (write_temp_source(o.tmp_dir, c_source, dir, sizeof dir, err))
    return -1;
  snprintf(src, sizeof src, "%s/step.c", dir);
  snprintf(so, sizeof so, "%s/step.so", dir);
  Argv a = {0};
  int rc = shared_command(&o, so, src, &a);
  if (rc) {
    buf_printf(err, "out of memory\n");
  } else if (run(&a, err) != 0) {
    describe(err, &a);
    rc = -1;
  } else {
    rc = read_whole(so, so_bytes, size, err);
  }
  remove_temp(dir);
  argv_free(&a);
  return rc;
}

const kiln_program *aot_load_shared(const BackendOptions *opt, const void *so_bytes, size_t size,
                                   const char *name, void **handle, Buf *err) {
  BackendOptions o = resolved(opt);
  *handle = NULL;
  /* The dynamic loader returns an object already loaded under the same path, or from the same
   * device and inode, instead of loading the file: each load gets a fresh directory (mkdtemp) and
   * a fresh file, and the mapping keeps the file's inode from being reused while the object is
   * loaded. The file is named after the program (its cache key), so even a directory name that
   * came round again could only meet the same program. */
  char dir[4096], so[4096 + 80];
  if ((size_t)snprintf(dir, sizeof dir, "%s/kiln-XXXXXX", o.tmp_dir) >= sizeof dir - 80) {
    buf_printf(err, "temporary directory path too long\n");
    return NULL;
  }
  if (!mkdtemp(dir)) {
    buf_printf(err, "cannot create a temporary directory in %s: %s\n", o.tmp_dir, strerror(errno));
    return NULL;
  }
  snprintf(so, sizeof so, "%s/%.64s.so", dir, name && *name ? name : "step");
  int fd = open(so, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  const kiln_program *prog = NULL;
  if (fd < 0 || kiln_write_all(fd, so_bytes, size) != 0 || close(fd) != 0) {
    buf_printf(err, "cannot write %s: %s\n", so, strerror(errno));
    if (fd >= 0)
      close(fd);
  } else {
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      buf_printf(err, "dlopen: %s\n", dlerror());
    } else {
      prog = dlsym(h, "kiln_program_desc");
      if (!prog) {
        buf_printf(err, "the generated code defines no kiln_program_desc\n");
        dlclose(h);
      } else {
        *handle = h;
      }
    }
  }
  /* The mapping outlives the file. */
  unlink(so);
  rmdir(dir);
  return prog;
}

void aot_unload(void *handle) {
  if (handle)
    dlclose(handle);
}
