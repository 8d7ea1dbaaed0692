/* ox_none.c — kiln built without ONNX import (no protobuf-c at build time): the entry points
 * say so, and everything else about models works as before. */
#include <string.h>

#include "onnx/onnx.h"

bool ox_available(void) { return false; }

bool ox_is_onnx_path(const char *path) {
  size_t n = strlen(path);
  return n > 5 && !strcmp(path + n - 5, ".onnx");
}

void ox_default_options(OxOptions *o) { memset(o, 0, sizeof *o); }

const char *ox_supported_ops(void) { return ""; }

OxModel *ox_import(Pool *p, const char *path, const void *data, size_t n, OxOptions *o) {
  (void)p, (void)data, (void)n, (void)o;
  kiln_fail((Loc){0}, "%s: this kiln was built without ONNX import (it needs protobuf-c-compiler, "
            "libprotobuf-c-dev and libonnx-dev when it is built)", path);
}

OxTensor *ox_read_tensor(Pool *p, const char *path) {
  return ox_import(p, path, NULL, 0, NULL), NULL;
}
