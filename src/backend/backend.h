/*
 * backend.h — turning generated C into something that runs: a program loaded in this process
 * through one interface (backend.c) over two backends, the in-process JIT (jit.cpp, Clang and
 * LLVM ORC) and the system C compiler into a shared object (aot.c), with compiled programs kept
 * on disk between processes (cache.c); and a standalone trainer, always through the system
 * compiler (aot.c).
 */
#ifndef KILN_BACKEND_H
#define KILN_BACKEND_H

#include "base/base.h"
#include "kiln_abi.h"

/* ================================ aot.c ================================ */

/* Which backend loads a program into the process. */
typedef enum BackendKind {
  BACKEND_DEFAULT = 0, /* the JIT when built in, else the system compiler */
  BACKEND_JIT,         /* Clang and LLVM in process (jit.cpp) */
  BACKEND_CC           /* the system compiler into a temporary shared object, then dlopen */
} BackendKind;

/* Which backend, and where the system compiler, the runtime and the cache are. NULL or empty
 * fields take the defaults. */
typedef struct BackendOptions {
  BackendKind kind;
  const char *cc;           /* the compiler command, may carry arguments ("ccache gcc"); "cc" */
  const char *runtime_dir;  /* headers, libkilnrt.a and trainer_main for trainers; the build's */
  const char *tmp_dir;      /* where private build directories are made; "/tmp" */
  const char *cache_dir;    /* compiled programs kept between processes (cache.c); none */
  int opt_level;            /* the compiler's -O level, 1 to 3; 0: 2 */
  bool mpi;                 /* trainers: one process of a data-parallel run under mpirun, built
                               with the MPI compiler wrapper (mpi_cc, default "mpicc") and the
                               runtime's mpi_comm.c */
  const char *mpi_cc;
  const char *march;        /* trainers: the CPU they are built for, the compiler's -march value
                               ("x86-64-v3"); "native" (this machine). Programs loaded into this
                               process are always built for this machine */
} BackendOptions;
void aot_default_options(BackendOptions *o);

/* Compiles c_source with the runtime into a standalone trainer at out_path (atomically). Returns
 * 0 or -1 with the compiler's output in err. */
int aot_build_trainer(const BackendOptions *o, const char *c_source, const char *out_path,
                      Buf *err);
/* What names the system compiler in a cache key: the command, its `--version` output and the
 * macros it predefines for -march=native (the host's instruction sets), asked once per process
 * and command. 0 and *identity (kept until exit), or -1 with the reason in err. */
int aot_identity(const BackendOptions *o, const char **identity, Buf *err);
/* The flags a shared object is compiled with, one string (part of the cache key). */
void aot_shared_flags(const BackendOptions *o, Buf *out);
/* Compiles c_source into a shared object and returns its bytes (*so, malloc'd); 0, or -1 with
 * the compiler's output in err. */
int aot_compile_shared(const BackendOptions *o, const char *c_source, void **so, size_t *size,
                       Buf *err);
/* Loads a shared object given as bytes (name: for the file, e.g. the cache key) from a private
 * copy in tmp_dir, so that no two loads share a path or a file and each has its own handle.
 * Returns its program and *handle, or NULL with the reason in err. */
const kiln_program *aot_load_shared(const BackendOptions *o, const void *so, size_t size,
                                   const char *name, void **handle, Buf *err);
/* Unloads what aot_load_shared loaded (NULL is fine); its kiln_program is gone afterwards. */
void aot_unload(void *handle);

/* ================================ cache.c ================================ */

/* A cache key: SHA-256 over length-prefixed parts (the source, the backend, the compiler's
 * identity, the flags). */
typedef struct CacheKey {
  Sha256 hash;
  unsigned char digest[SHA256_BYTES];
} CacheKey;
void cache_key_init(CacheKey *k);
void cache_key_add(CacheKey *k, const void *part, size_t size);
void cache_key_add_string(CacheKey *k, const char *s);
void cache_key_final(CacheKey *k);

/* Creates dir (and its parents) with mode 0700 if missing; -1 with the reason in why when it
 * cannot be made, is not a directory, or is owned or writable by another user. */
int cache_open_dir(const char *dir, Buf *why);

typedef enum CacheRead {
  CACHE_READ_ABSENT,   /* no entry */
  CACHE_READ_FOUND,    /* *payload (malloc'd) and *size */
  CACHE_READ_INVALID   /* an entry that must not be loaded: why says what is wrong */
} CacheRead;
/* The entry of key ("<dir>/<hex key>.<suffix>"), checked against its header's key, length and
 * checksum. */
CacheRead cache_read(const char *dir, const CacheKey *k, const char *suffix, void **payload,
                     size_t *size, Buf *why);
/* Writes the entry atomically (temporary file, fsync, rename; nothing left on failure); 0, or
 * -1 with one line in why. */
int cache_write(const char *dir, const CacheKey *k, const char *suffix, const void *payload,
                size_t size, Buf *why);


/* ================================ backend.c ================================ */

/* A program compiled and loaded by some backend. */
typedef struct BackendProgram BackendProgram;

/* What became of the cache in one load. */
typedef enum CacheUse {
  CACHE_UNUSED,    /* no cache directory, or it could not be used (see warning) */
  CACHE_HIT,       /* loaded from the cache: nothing compiled */
  CACHE_MISS,      /* compiled, then stored */
  CACHE_REPLACED   /* an invalid entry (truncated, corrupt, failing to load) recompiled */
} CacheUse;

/* How one load went, phase by phase (seconds; 0 for phases that did not run). */
typedef struct BackendReport {
  BackendKind kind;           /* the backend that ran */
  CacheUse cache;
  double key;                 /* composing and hashing the cache key, reading the entry */
  double clang, optimise, codegen;  /* the JIT: Clang to IR, LLVM's pipeline, machine code */
  double cc;                  /* the system compiler: compile and link */
  double load;                /* linking and loading into the process */
  char warning[256];          /* one line when the cache could not be used or written */
  char note[256];             /* CACHE_REPLACED: what was wrong with the entry */
} BackendReport;

bool backend_has_jit(void);
/* "-O1", "-O2" or "-O3" for BackendOptions.opt_level (0 and anything else: "-O2"), the flag
 * both backends pass to their compiler. */
const char *backend_opt_flag(int opt_level);
/* The backends built in, for `kiln --version`: "jit (LLVM 14.0.6), cc" or "cc". */
const char *backend_list(void);
/* Compiles source with the backend o->kind names and loads it — or, with o->cache_dir, loads
 * what an earlier compile of the same source by the same compiler with the same flags stored
 * there; 0 and *out, or -1 with the compiler's diagnostics (the offending generated line
 * included) in err. A cache that cannot be read or written is no error: the report's warning
 * says why. */
int backend_load(const BackendOptions *o, const char *source, BackendProgram **out, Buf *err);
const kiln_program *backend_program(const BackendProgram *p);
const BackendReport *backend_report(const BackendProgram *p);
/* Frees everything of p (NULL is fine); its kiln_program is gone afterwards. */
void backend_unload(BackendProgram *p);

/* ================================ jit.cpp ================================ */

/* The C face of the C++ shim (which repeats these declarations: it cannot include this C11
 * header). Only in builds with KILN_JIT. */
typedef struct JitProgram JitProgram;
typedef struct JitTimes {
  double clang, optimise, codegen;
} JitTimes;
/* Everything besides the source and the -O level that decides the object file (LLVM's version,
 * triple, host CPU and features, code generator settings, the prelude): for cache keys. */
const char *jit_identity(void);
/* Compiles c_source in memory with Clang's level opt_flag ("-O2") into an object file for this
 * CPU: 0 and *object (malloc'd) / *size, or -1 with a malloc'd message in *err (Clang's
 * diagnostics with the generated line). */
int jit_compile_object(const char *c_source, const char *opt_flag, void **object, size_t *size,
                       JitTimes *times, char **err);
/* Links an object file from jit_compile_object into the process and looks up symbol; the program
 * and *address, or NULL with a malloc'd message in *err. */
JitProgram *jit_load_object(const void *object, size_t size, const char *symbol, void **address,
                            char **err);
void jit_free(JitProgram *p); /* frees the code and everything LLVM held for it */
const char *jit_version(void); /* "LLVM 14.0.6" */

#endif
