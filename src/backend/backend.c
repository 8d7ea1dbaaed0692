/*
 * backend.c — one interface over the backends that load a generated program into this process:
 * the JIT (jit.cpp) when kiln is built with LLVM, and the system compiler plus dlopen (aot.c).
 * Both compile the source into bytes (an object file, a shared object) and then load those, which
 * is where the cache (cache.c) sits: with a cache directory, bytes stored by an earlier compile of
 * the same source, by the same compiler with the same flags, are loaded instead of compiling.
 * Both check the ABI version the same way, so a caller sees one kind of program whichever made it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"

struct BackendProgram {
  BackendKind kind;
  const kiln_program *prog;
  void *handle; /* the JitProgram or the dlopen handle */
  BackendReport report;
};

bool backend_has_jit(void) {
#ifdef KILN_JIT
  return true;
#else
  return false;
#endif
}

const char *backend_opt_flag(int opt_level) {
  return opt_level == 1 ? "-O1" : opt_level == 3 ? "-O3" : "-O2";
}

const char *backend_list(void) {
#ifdef KILN_JIT
  static char list[64];
  if (!list[0])
    snprintf(list, sizeof list, "jit (%s), cc", jit_version());
  return list;
#else
  return "cc";
#endif
}

static void release(BackendKind kind, void *handle) {
#ifdef KILN_JIT
  if (kind == BACKEND_JIT) {
    jit_free(handle);
    return;
  }
#endif
  (void)kind;
  aot_unload(handle);
}

/* The first line of text into a report's fixed field. */
static void keep_line(char *dst, size_t cap, const char *text) {
  size_t n = strcspn(text, "\n");
  snprintf(dst, cap, "%.*s", (int)(n < cap ? n : cap - 1), text);
}

/* The cache key of source for backend kind: everything that decides the compiled bytes and
 * whether they run here. A format word first, so that a change to how kiln composes keys or
 * compiles (one not visible in the parts) can retire every old entry at once. */
static int compose_key(BackendKind kind, const BackendOptions *o, const char *source,
                       CacheKey *k, Buf *why) {
  cache_key_init(k);
  cache_key_add_string(k, "kiln compiled program 1");
  if (kind == BACKEND_JIT) {
#ifdef KILN_JIT
    cache_key_add_string(k, "jit");
    cache_key_add_string(k, jit_identity());
    cache_key_add_string(k, backend_opt_flag(o->opt_level));
#endif
  } else {
    const char *identity;
    if (aot_identity(o, &identity, why))
      return -1;
    Buf flags = {.lossy = true};
    aot_shared_flags(o, &flags);
    cache_key_add_string(k, "cc");
    cache_key_add_string(k, identity);
    cache_key_add_string(k, flags.p ? flags.p : "");
    buf_free(&flags);
  }
  cache_key_add_string(k, source);
  cache_key_final(k);
  return 0;
}

/* Compiles source into what the backend loads: an object file (JIT) or a shared object (cc). */
static int compile_payload(BackendKind kind, const BackendOptions *o, const char *source,
                           void **bytes, size_t *size, BackendReport *r, Buf *err) {
  if (kind == BACKEND_JIT) {
#ifdef KILN_JIT
    char *msg = NULL;
    JitTimes t;
    int rc = jit_compile_object(source, backend_opt_flag(o->opt_level), bytes, size, &t, &msg);
    r->clang = t.clang;
    r->optimise = t.optimise;
    r->codegen = t.codegen;
    if (rc) {
      buf_puts(err, msg ? msg : "out of memory\n");
      free(msg);
    }
    return rc;
#endif
  }
  double t0 = kiln_now();
  int rc = aot_compile_shared(o, source, bytes, size, err);
  r->cc = kiln_now() - t0;
  return rc;
}

/* Loads a payload into the process: its program, and the handle that unloads it. name: the
 * cache key in hex, or NULL. */
static const kiln_program *load_payload(BackendKind kind, const BackendOptions *o,
                                        const void *bytes, size_t size, const char *name,
                                        void **handle, Buf *err) {
  if (kind == BACKEND_JIT) {
#ifdef KILN_JIT
    char *msg = NULL;
    void *addr = NULL;
    *handle = jit_load_object(bytes, size, "kiln_program_desc", &addr, &msg);
    if (!*handle) {
      buf_puts(err, msg ? msg : "out of memory\n");
      free(msg);
    }
    return addr;
#endif
  }
  return aot_load_shared(o, bytes, size, name, handle, err);
}

/* The cache's side of one load: its key, once the directory could be used. */
typedef struct Lookup {
  bool usable;
  CacheKey key;
  char name[2 * SHA256_BYTES + 1]; /* the key in hex */
} Lookup;

/* Loads the program from the cache when it holds a valid entry that loads; otherwise NULL, with
 * r->cache and r->warning or r->note saying why. */
static const kiln_program *from_cache(BackendKind kind, const BackendOptions *o,
                                      const char *source, const char *suffix, Lookup *c,
                                      void **handle, BackendReport *r) {
  double t0 = kiln_now();
  Buf why = {.lossy = true};
  c->usable = cache_open_dir(o->cache_dir, &why) == 0 &&
              compose_key(kind, o, source, &c->key, &why) == 0;
  if (!c->usable) {
    keep_line(r->warning, sizeof r->warning, why.p ? why.p : "cache not used");
    buf_free(&why);
    return NULL;
  }
  sha256_hex(c->key.digest, c->name);
  void *bytes = NULL;
  size_t size = 0;
  CacheRead found = cache_read(o->cache_dir, &c->key, suffix, &bytes, &size, &why);
  r->key = kiln_now() - t0;
  r->cache = found == CACHE_READ_ABSENT ? CACHE_MISS : CACHE_REPLACED;
  const kiln_program *prog = NULL;
  if (found == CACHE_READ_FOUND) {
    t0 = kiln_now();
    Buf load_err = {.lossy = true};
    prog = load_payload(kind, o, bytes, size, c->name, handle, &load_err);
    r->load = kiln_now() - t0;
    if (prog)
      r->cache = CACHE_HIT;
    else /* a valid entry that does not load (a library gone from the system): compile again */
      buf_printf(&why, "the cached program does not load: %s", load_err.p ? load_err.p : "");
    buf_free(&load_err);
    free(bytes);
  }
  if (r->cache == CACHE_REPLACED)
    keep_line(r->note, sizeof r->note, why.p ? why.p : "invalid entry");
  buf_free(&why);
  return prog;
}

/* Compiles source, stores the result when the cache is usable, and loads it. */
static const kiln_program *compile_and_load(BackendKind kind, const BackendOptions *o,
                                            const char *source, const char *suffix,
                                            const Lookup *c, void **handle, BackendReport *r,
                                            Buf *err) {
  void *bytes = NULL;
  size_t size = 0;
  if (compile_payload(kind, o, source, &bytes, &size, r, err))
    return NULL;
  if (c->usable) {
    Buf why = {.lossy = true};
    if (cache_write(o->cache_dir, &c->key, suffix, bytes, size, &why))
      keep_line(r->warning, sizeof r->warning, why.p ? why.p : "cannot write the cache");
    buf_free(&why);
  }
  double t0 = kiln_now();
  const kiln_program *prog =
      load_payload(kind, o, bytes, size, c->usable ? c->name : NULL, handle, err);
  r->load = kiln_now() - t0;
  free(bytes);
  return prog;
}

int backend_load(const BackendOptions *opt, const char *source, BackendProgram **out, Buf *err) {
  *out = NULL;
  BackendOptions o;
  aot_default_options(&o);
  if (opt)
    o = *opt;
  BackendKind kind = o.kind == BACKEND_DEFAULT ? backend_has_jit() ? BACKEND_JIT : BACKEND_CC
                                               : o.kind;
  if (kind == BACKEND_JIT && !backend_has_jit()) {
    buf_puts(err, "this kiln is built without the JIT backend (no LLVM): use the cc backend\n");
    return -1;
  }
  BackendReport r = {.kind = kind, .cache = CACHE_UNUSED};
  const char *suffix = kind == BACKEND_JIT ? "o" : "so";
  Lookup c = {0};
  void *handle = NULL;
  const kiln_program *prog = NULL;
  if (o.cache_dir && *o.cache_dir)
    prog = from_cache(kind, &o, source, suffix, &c, &handle, &r);
  if (!prog)
    prog = compile_and_load(kind, &o, source, suffix, &c, &handle, &r, err);
  if (!prog)
    return -1;
  if (prog->abi_version != KILN_ABI_VERSION) {
    buf_printf(err, "ABI version %d, expected %d\n", prog->abi_version, KILN_ABI_VERSION);
    release(kind, handle);
    return -1;
  }
  BackendProgram *p = kiln_try_realloc(NULL, sizeof *p);
  if (!p) {
    buf_puts(err, "out of memory\n");
    release(kind, handle);
    return -1;
  }
  *p = (BackendProgram){kind, prog, handle, r};
  *out = p;
  return 0;
}

const kiln_program *backend_program(const BackendProgram *p) { return p->prog; }

const BackendReport *backend_report(const BackendProgram *p) { return &p->report; }

void backend_unload(BackendProgram *p) {
  if (!p)
    return;
  release(p->kind, p->handle);
  free(p);
}
