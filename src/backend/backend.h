/*
 * backend.h — turning generated C into something that runs: the system C compiler into a
 * standalone trainer, or into a shared object loaded in process (aot.c).
 */
#ifndef KILN_BACKEND_H
#define KILN_BACKEND_H

#include "base/base.h"
#include "kiln_abi.h"

/* ================================ aot.c ================================ */

/* Where the system compiler and the runtime are. NULL or empty fields take the defaults. */
typedef struct BackendOptions {
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
/* Compiles c_source to a shared object and loads it; returns the kiln_program or NULL. */
const kiln_program *aot_load_shared(const BackendOptions *o, const char *c_source, void **handle,
                                   Buf *err);
/* Unloads what aot_load_shared loaded (NULL is fine); its kiln_program is gone afterwards. */
void aot_unload(void *handle);

#endif
