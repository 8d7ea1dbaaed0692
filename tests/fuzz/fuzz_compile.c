/*
 * fuzz_compile.c — libFuzzer harness for the whole compile pipeline through the public API:
 * model text -> kiln_model_from_string (lex, parse, lower, train_build) -> kiln_emit_c (plan,
 * C code generation). Any input must end in KILN_OK or KILN_ERROR with a message; a crash, a
 * sanitizer report, a leak or a hang is a bug. See tests/fuzz/README.md.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = 0;
  kiln_model *m = NULL;
  if (kiln_model_from_string("fuzz.kiln", text, &m) == KILN_OK) {
    char *c = NULL;
    if (kiln_emit_c(m, 0, &c) == KILN_OK)
      free(c);
    else if (!kiln_last_error()[0])
      abort();  /* an error must always come with a message */
    kiln_model_free(m);
  } else if (!kiln_last_error()[0]) {
    abort();
  }
  free(text);
  return 0;
}
