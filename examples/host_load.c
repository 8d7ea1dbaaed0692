/*
 * host_load.c — a C program that loads a model file, trains it in process, saves a checkpoint,
 * loads it into a second, freshly compiled trainer and checks that both evaluate alike.
 *
 *   host_load MODEL DATA_DIR CHECKPOINT [--limit N]
 *
 * e.g. host_load examples/mnist_cnn.kiln /usr/share/datasets/fashion-mnist /tmp/cnn.safetensors
 * The checkpoint is a safetensors file that PyTorch's load_state_dict takes as it is.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fashion_mnist.h"
#include "kiln.h"

enum { CLASSES = 10 };

static int fail(const char *what) {
  fprintf(stderr, "host_load: %s: %s", what, kiln_last_error());
  return 1;
}

/* Test loss and accuracy over the whole test set, in batches of the trainer's size. */
static int evaluate(kiln_trainer *t, const Dataset *test, double *loss, double *accuracy) {
  int64_t batch = kiln_trainer_batch(t), right = 0;
  float *logits = malloc((size_t)batch * CLASSES * sizeof *logits);
  if (!logits)
    return -1;
  double sum = 0;
  for (int64_t first = 0; first < test->count; first += batch) {
    int64_t n = test->count - first < batch ? test->count - first : batch;
    kiln_feed in[2] = {{"image", test->images + first * 784, (size_t)n * 784 * sizeof(float)},
                       {"label", test->labels + first, (size_t)n * sizeof(int32_t)}};
    double l;
    if (kiln_eval_step(t, n, in, 2, &l, logits, (size_t)n * CLASSES * sizeof *logits)) {
      free(logits);
      return -1;
    }
    sum += l * (double)n;
    right += count_right(logits, test->labels + first, n, CLASSES);
  }
  free(logits);
  *loss = sum / (double)test->count;
  *accuracy = (double)right / (double)test->count;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4 && !(argc == 6 && !strcmp(argv[4], "--limit"))) {
    fprintf(stderr, "usage: host_load MODEL DATA_DIR CHECKPOINT [--limit N]\n");
    return 2;
  }
  int64_t limit = argc == 6 ? atoll(argv[5]) : 0;
  Dataset train, test;
  if (dataset_load(argv[2], "train", limit, &train) || dataset_load(argv[2], "t10k", 0, &test))
    return 1;
  kiln_model *m;
  if (kiln_model_from_file(argv[1], &m))
    return fail("loading the model");
  kiln_options o;
  kiln_options_init(&o);
  kiln_trainer *trained, *loaded;
  if (kiln_compile(m, &o, &trained))
    return fail("compiling");

  /* One pass over the training images in file order, in batches of the compiled size. */
  int64_t batch = kiln_trainer_batch(trained);
  double loss = 0;
  for (int64_t first = 0; first + batch <= train.count; first += batch) {
    kiln_feed in[2] = {
        {"image", train.images + first * 784, (size_t)batch * 784 * sizeof(float)},
        {"label", train.labels + first, (size_t)batch * sizeof(int32_t)}};
    if (kiln_train_step(trained, batch, in, 2, &loss))
      return fail("training");
  }
  fprintf(stderr, "trained on %lld images, last loss %.4f\n",
          (long long)(train.count / batch * batch), loss);
  if (kiln_save(trained, argv[3]))
    return fail("saving");

  /* A second trainer starts from other parameters and takes the checkpoint's. */
  o.seed = 12345;
  if (kiln_compile(m, &o, &loaded) || kiln_load(loaded, argv[3]))
    return fail("reloading");
  double l1, a1, l2, a2;
  if (evaluate(trained, &test, &l1, &a1) || evaluate(loaded, &test, &l2, &a2))
    return fail("evaluating");
  printf("trained: test_loss=%.4f test_accuracy=%.4f\n", l1, a1);
  printf("loaded:  test_loss=%.4f test_accuracy=%.4f\n", l2, a2);
  int same = l1 == l2 && a1 == a2;
  if (!same)
    fprintf(stderr, "host_load: the reloaded model evaluates differently\n");
  kiln_trainer_free(trained);
  kiln_trainer_free(loaded);
  kiln_model_free(m);
  dataset_free(&train);
  dataset_free(&test);
  return same ? 0 : 1;
}
