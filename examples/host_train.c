/*
 * host_train.c — a C program that builds a small CNN with kiln's C API (no model file), compiles
 * its training step inside the process and trains it on Fashion-MNIST with its own data loop.
 *
 *   host_train DATA_DIR [--epochs N] [--limit N] [--threads N]
 *
 * DATA_DIR holds {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (Debian's
 * dataset-fashion-mnist: /usr/share/datasets/fashion-mnist). --limit trains on the first N
 * images only. Prints progress on stderr and the test accuracy on stdout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fashion_mnist.h"
#include "kiln.h"

enum { BATCH = 64, CLASSES = 10 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int fail(const char *what) {
  fprintf(stderr, "host_train: %s: %s", what, kiln_last_error());
  return 1;
}

/* conv(16) → batchnorm → ReLU → 2×2 max-pool, twice, then a linear classifier; Adam. */
static kiln_status build(kiln_model **out) {
  kiln_builder *b;
  if (kiln_builder_new("host_cnn", &b))
    return KILN_ERROR;
  kiln_var image, label, x, logits, loss;
  kiln_input(b, "image", KILN_F32, 4, (int64_t[]){KILN_BATCH, 1, 28, 28}, "images", 1.0 / 255,
             &image);
  kiln_input(b, "label", KILN_I32, 1, (int64_t[]){KILN_BATCH}, "labels", 1, &label);
  kiln_conv2d(b, "conv1", image, 16, 3, 1, 1, &x);
  kiln_batchnorm(b, "bn1", x, &x);
  kiln_relu(b, x, &x);
  kiln_maxpool2d(b, x, 2, 2, &x);
  kiln_conv2d(b, "conv2", x, 32, 3, 1, 1, &x);
  kiln_batchnorm(b, "bn2", x, &x);
  kiln_relu(b, x, &x);
  kiln_maxpool2d(b, x, 2, 2, &x);
  kiln_flatten(b, x, &x);
  kiln_linear(b, "fc", x, CLASSES, &logits);
  kiln_cross_entropy(b, logits, label, &loss);
  kiln_output(b, logits);
  kiln_minimize(b, loss);
  kiln_train_call(b, "optimizer", "adam", (kiln_option[]){{"lr", 2e-3, NULL}}, 1);
  kiln_train_number(b, "batch", BATCH);
  kiln_train_number(b, "seed", 1);
  /* Builder calls fail sticky: the last status reports the first failure. */
  kiln_status st = kiln_builder_finish(b, out);
  kiln_builder_free(b);
  return st;
}

/* The share of test images whose largest logit is their label. */
static int evaluate(kiln_trainer *t, const Dataset *test, double *accuracy) {
  static float logits[BATCH * CLASSES];
  int64_t right = 0;
  for (int64_t first = 0; first < test->count; first += BATCH) {
    int64_t n = test->count - first < BATCH ? test->count - first : BATCH;
    kiln_feed in[2] = {{"image", test->images + first * 784, (size_t)n * 784 * sizeof(float)},
                       {"label", test->labels + first, (size_t)n * sizeof(int32_t)}};
    if (kiln_eval_step(t, n, in, 2, NULL, logits, (size_t)n * CLASSES * sizeof(float)))
      return -1;
    right += count_right(logits, test->labels + first, n, CLASSES);
  }
  *accuracy = (double)right / (double)test->count;
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || argv[1][0] == '-') {
    fprintf(stderr, "usage: host_train DATA_DIR [--epochs N] [--limit N] [--threads N]\n");
    return 2;
  }
  int epochs = 1, threads = 1;
  int64_t limit = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--epochs"))
      epochs = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--limit"))
      limit = atoll(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads"))
      threads = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "host_train: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  Dataset train, test;
  if (dataset_load(argv[1], "train", limit, &train) || dataset_load(argv[1], "t10k", 0, &test))
    return 1;

  double t0 = now();
  kiln_model *model;
  if (build(&model))
    return fail("building the model");
  kiln_options o;
  kiln_options_init(&o);
  o.threads = threads;
  kiln_trainer *t;
  if (kiln_compile(model, &o, &t))
    return fail("compiling");
  kiln_model_free(model);
  fprintf(stderr, "compiled in %.2f s\n", now() - t0);

  int64_t *order = malloc((size_t)train.count * sizeof *order);
  float *images = malloc(BATCH * 784 * sizeof *images);
  int32_t *labels = malloc(BATCH * sizeof *labels);
  if (!order || !images || !labels)
    return fprintf(stderr, "host_train: out of memory\n"), 1;
  uint64_t rng = 42;
  int64_t steps = train.count / BATCH; /* a last partial batch is dropped, as PyTorch's
                                          drop_last does */
  double loss = 0, start = now();
  for (int epoch = 1; epoch <= epochs; epoch++) {
    for (int64_t i = 0; i < train.count; i++)
      order[i] = i;
    for (int64_t i = train.count - 1; i > 0; i--) { /* Fisher-Yates with an LCG of our own */
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      int64_t j = (int64_t)((rng >> 33) % (uint64_t)(i + 1)), tmp = order[i];
      order[i] = order[j];
      order[j] = tmp;
    }
    for (int64_t s = 0; s < steps; s++) {
      for (int k = 0; k < BATCH; k++) {
        int64_t e = order[s * BATCH + k];
        memcpy(images + k * 784, train.images + e * 784, 784 * sizeof *images);
        labels[k] = train.labels[e];
      }
      kiln_feed in[2] = {{"image", images, BATCH * 784 * sizeof *images},
                         {"label", labels, BATCH * sizeof *labels}};
      if (kiln_train_step(t, BATCH, in, 2, &loss))
        return fail("training");
      if ((s + 1) % 100 == 0 || s + 1 == steps) {
        double done = (double)((epoch - 1) * steps + s + 1), el = now() - start;
        fprintf(stderr, "epoch %d/%d  step %lld/%lld  loss %.4f  %.0f img/s\n", epoch, epochs,
                (long long)(s + 1), (long long)steps, loss, done * BATCH / el);
      }
    }
  }
  double accuracy;
  if (evaluate(t, &test, &accuracy))
    return fail("evaluating");
  printf("final train_loss=%.4f test_accuracy=%.4f\n", loss, accuracy);
  free(order);
  free(images);
  free(labels);
  kiln_trainer_free(t);
  dataset_free(&train);
  dataset_free(&test);
  return 0;
}
