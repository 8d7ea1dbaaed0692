/*
 * backend.h — turning generated C into something that runs: a program loaded in this process
 * through one interface (backend.c) over two backends, the in-process JIT (jit.cpp, Clang and
 * LLVM ORC, with its own OpenMP runtime in jit_omp.c) and the system C compiler into a shared
 * object (aot.c); and a standalone trainer, always through the system compiler (aot.c).
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

/* Which backend, and where the system compiler and the runtime are. NULL or empty fields take
 * the defaults. */
typedef struct BackendOptions {
  BackendKind kind;
  const char *cc;           /* the compiler command, may carry arguments ("ccache gcc"); "cc" */
  const char *runtime_dir;  /* headers, libkilnrt.a and trainer_main for trainers; the build's */
  const char *tmp_dir;      /* where private build directories are made; "/tmp" */
  int opt_level;            /* the compiler's -O level, 1 to 3; 0: 2 */
} BackendOptions;
void aot_default_options(BackendOptions *o);

/* Compiles c_source with the runtime into a standalone trainer at out_path (atomically). Returns
 * 0 or -1 with the compiler's output in err. */
int aot_build_trainer(const BackendOptions *o, const char *c_source, const char *out_path,
                      Buf *err);
const kiln_program *aot_load_shared(const BackendOptions *o, const char *c_source, void **handle,
                                   Buf *err);
/* Unloads what aot_load_shared loaded (NULL is fine); its kiln_program is gone afterwards. */
void aot_unload(void *handle);


/* ================================ backend.c ================================ */

/* A program compiled and loaded by some backend. */
typedef struct BackendProgram BackendProgram;

bool backend_has_jit(void);
/* "-O1", "-O2" or "-O3" for BackendOptions.opt_level (0 and anything else: "-O2"), the flag
 * both backends pass to their compiler. */
const char *backend_opt_flag(int opt_level);
/* The backends built in, for `kiln --version`: "jit (LLVM 14.0.6), cc" or "cc". */
const char *backend_list(void);
/* Compiles source with the backend o->kind names and loads it; 0 and *out, or -1 with the
 * compiler's diagnostics (the offending generated line included) in err. */
int backend_load(const BackendOptions *o, const char *source, BackendProgram **out, Buf *err);
const kiln_program *backend_program(const BackendProgram *p);
/* Frees everything of p (NULL is fine); its kiln_program is gone afterwards. */
void backend_unload(BackendProgram *p);

/* ================================ jit.cpp ================================ */

/* The C face of the C++ shim (which repeats these declarations: it cannot include this C11
 * header). Only in builds with KILN_JIT. */
typedef struct JitProgram JitProgram;
/* Compiles c_source in memory with Clang's level opt_flag ("-O2") and looks up symbol; returns the
 * program and *address, or NULL with a malloc'd message in *err (Clang's diagnostics with the
 * generated line). */
JitProgram *jit_compile(const char *c_source, const char *opt_flag, const char *symbol,
                        void **address, char **err);
void jit_free(JitProgram *p); /* frees the code and everything LLVM held for it */
const char *jit_version(void); /* "LLVM 14.0.6" */

/* ================================ jit_omp.c ================================ */

/* The OpenMP runtime of JIT'd code: libomp's entry points for what Clang emits for the generated
 * `#pragma omp parallel for` (and `parallel` with `for` and barriers), over threads of kiln's
 * own, with libomp's semantics for those. jit.cpp defines each __kmpc_NAME of jit_omp_symbols
 * in every program as jit_omp_NAME. Plain C: built with or without the JIT. */

/* A region forwards at most this many shared variables (jit.cpp refuses code with more when it
 * compiles); a team has at most this many threads (larger num_threads get this many). */
enum { JIT_OMP_MAX_ARGS = 15, JIT_OMP_MAX_THREADS = 256 };
extern const int32_t jit_omp_max_fork_args; /* JIT_OMP_MAX_ARGS, for jit.cpp */

/* The outlined body of a region: called with pointers to the thread's id, then the fork's
 * arguments. */
typedef void (*JitOmpMicrotask)(int32_t *gtid, int32_t *btid, ...);

typedef struct JitOmpSymbol {
  const char *name;       /* "__kmpc_fork_call" */
  void (*address)(void);  /* jit_omp_fork_call */
} JitOmpSymbol;
extern const JitOmpSymbol jit_omp_symbols[]; /* ends with a NULL name */

/* libomp's ABI, ident_t * as void * (unused); the thread ids passed in are ignored. */
void jit_omp_fork_call(void *loc, int32_t argc, JitOmpMicrotask fn, ...);
void jit_omp_push_num_threads(void *loc, int32_t gtid, int32_t num_threads);
int32_t jit_omp_global_thread_num(void *loc);
void jit_omp_barrier(void *loc, int32_t gtid);
/* Bounds of the calling thread's iterations of a static schedule (33: chunked, else plain). */
void jit_omp_for_static_init_4(void *loc, int32_t gtid, int32_t schedule, int32_t *plast,
                               int32_t *plower, int32_t *pupper, int32_t *pstride, int32_t incr,
                               int32_t chunk);
void jit_omp_for_static_init_4u(void *loc, int32_t gtid, int32_t schedule, int32_t *plast,
                                uint32_t *plower, uint32_t *pupper, int32_t *pstride,
                                int32_t incr, int32_t chunk);
void jit_omp_for_static_init_8(void *loc, int32_t gtid, int32_t schedule, int32_t *plast,
                               int64_t *plower, int64_t *pupper, int64_t *pstride, int64_t incr,
                               int64_t chunk);
void jit_omp_for_static_init_8u(void *loc, int32_t gtid, int32_t schedule, int32_t *plast,
                                uint64_t *plower, uint64_t *pupper, int64_t *pstride,
                                int64_t incr, int64_t chunk);
void jit_omp_for_static_fini(void *loc, int32_t gtid);

#endif
