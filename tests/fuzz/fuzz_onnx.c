/*
 * fuzz_onnx.c — libFuzzer harness for ONNX import: any bytes as an ONNX model file through the
 * protobuf reader, the translation into model text and the frontend that compiles the text
 * (lower, train_build). Every input must end in a model or an error message; a crash, a
 * sanitizer report, a leak or a hang is a bug. Seeds: ONNX's own test models (tests/fuzz/run.sh
 * copies them from Debian's libonnx-testdata). See tests/fuzz/README.md.
 */
#include <stdint.h>
#include <stdlib.h>

#include "front/front.h"
#include "onnx/onnx.h"
#include "xform/xform.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Pool *p = pool_new();
  Graph *volatile g = NULL;
  Trap t;
  if (KILN_TRY(&t)) {
    OxOptions o;
    ox_default_options(&o);
    OxModel *m = ox_import(p, "fuzz.onnx", size ? (const void *)data : "", size, &o);
    g = fe_compile_string("fuzz.onnx (imported)", m->text);
    train_build(g);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    if (!t.msg[0]) abort(); /* an error must always come with a message */
  }
  ir_free(g);
  pool_free(p);
  return 0;
}
