/*
 * train_file.c — compiles a model file through kiln's public API (kiln.h) and takes training steps
 * on the data the file holds (`const` tensors: examples/linear_toy.kiln), printing the loss of
 * each step and, at the end, the parameters.
 *
 *   train_file MODEL.kiln [STEPS]     (default: 15 steps)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kiln.h>

static int fail(const char *what) {
  fprintf(stderr, "train_file: error: %s: %s\n", what, kiln_last_error());
  return 1;
}

/* "name = v v v": a parameter's values, converted to double by element type. */
static int print_param(const kiln_trainer *t, const char *name) {
  kiln_tensor_info info;
  if (kiln_tensor_find(t, name, &info) != KILN_OK)
    return fail(name);
  unsigned char *bytes = malloc(info.bytes);
  if (!bytes || kiln_get(t, name, bytes, info.bytes) != KILN_OK) {
    free(bytes);
    return fail(name);
  }
  size_t size = info.dtype == KILN_F64 ? 8 : 4, n = info.bytes / size;
  printf("%s =", name);
  for (size_t i = 0; i < n; i++) {
    double v;
    if (info.dtype == KILN_F64) {
      memcpy(&v, bytes + i * size, size);
    } else if (info.dtype == KILN_F32) {
      float f;
      memcpy(&f, bytes + i * size, size);
      v = f;
    } else {
      int32_t k;
      memcpy(&k, bytes + i * size, size);
      v = k;
    }
    printf(" %.6f", v);
  }
  printf("\n");
  free(bytes);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: train_file MODEL.kiln [STEPS]\n");
    return 2;
  }
  int steps = argc > 2 ? atoi(argv[2]) : 15;
  kiln_model *m;
  kiln_trainer *t;
  kiln_options o;
  if (kiln_model_from_file(argv[1], &m) != KILN_OK)
    return fail(argv[1]);
  kiln_options_init(&o);
  kiln_status st = kiln_compile(m, &o, &t);
  kiln_model_free(m);
  if (st != KILN_OK)
    return fail("compile");
  int rc = 0;
  for (int i = 1; i <= steps && !rc; i++) {
    double loss;
    if (kiln_train_step(t, kiln_trainer_batch(t), NULL, 0, &loss) != KILN_OK)
      rc = fail("step");
    else
      printf("step %d loss=%.5g\n", i, loss);
  }
  /* Every parameter, in the trainer's order. */
  for (int i = 0; i < kiln_tensor_count(t) && !rc; i++) {
    kiln_tensor_info info;
    if (kiln_tensor_at(t, i, &info) == KILN_OK && info.role == KILN_ROLE_PARAM)
      rc = print_param(t, info.name);
  }
  kiln_trainer_free(t);
  return rc;
}
