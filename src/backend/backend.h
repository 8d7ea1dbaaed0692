/*
 * backend.h — turning generated C into something that runs: the system C compiler into a
 * standalone trainer, or into a shared object loaded in process (aot.c).
 */
#ifndef KILN_BACKEND_H
#define KILN_BACKEND_H

#include "base/base.h"
#include "kiln_abi.h"

/* ================================ aot.c ================================ */

/* Directory of kiln's runtime files (headers and libkilnrt.a), from $KILN_HOME or the build. */
const char *aot_runtime_dir(void);
/* The C compiler: $CC or "cc". */
const char *aot_cc(void);
/* Compiles c_source with the runtime into a standalone trainer at out_path. Returns 0 or -1 with
 * the compiler's output in err. */
int aot_build_trainer(const char *c_source, const char *out_path, Buf *err);
/* Compiles c_source to a shared object and loads it; returns the kiln_program or NULL. */
const kiln_program *aot_load_shared(const char *c_source, void **handle, Buf *err);

#endif
