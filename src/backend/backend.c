/*
 * backend.c — one interface over the backends that load a generated program into this process:
 * the JIT (jit.cpp) when kiln is built with LLVM, and the system compiler plus dlopen (aot.c).
 * Both check the ABI version the same way, so a caller sees one kind of program whichever made it.
 */
#include <stdio.h>
#include <stdlib.h>

#include "backend/backend.h"

struct BackendProgram {
  BackendKind kind;
  const kiln_program *prog;
  void *handle; /* the JitProgram or the dlopen handle */
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

int backend_load(const BackendOptions *o, const char *source, BackendProgram **out, Buf *err) {
  *out = NULL;
  BackendKind kind = o ? o->kind : BACKEND_DEFAULT;
  if (kind == BACKEND_DEFAULT)
    kind = backend_has_jit() ? BACKEND_JIT : BACKEND_CC;
  const kiln_program *prog = NULL;
  void *handle = NULL;
  if (kind == BACKEND_JIT) {
#ifdef KILN_JIT
    char *msg = NULL;
    void *addr = NULL;
    handle = jit_compile(source, backend_opt_flag(o ? o->opt_level : 0), "kiln_program_desc",
                         &addr, &msg);
    if (!handle) {
      buf_puts(err, msg ? msg : "out of memory\n");
      free(msg);
      return -1;
    }
    prog = addr;
#else
    buf_puts(err, "this kiln is built without the JIT backend (no LLVM): use the cc backend\n");
    return -1;
#endif
  } else {
    prog = aot_load_shared(o, source, &handle, err);
    if (!prog)
      return -1;
  }
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
  *p = (BackendProgram){kind, prog, handle};
  *out = p;
  return 0;
}

const kiln_program *backend_program(const BackendProgram *p) { return p->prog; }

void backend_unload(BackendProgram *p) {
  if (!p)
    return;
  release(p->kind, p->handle);
  free(p);
}
