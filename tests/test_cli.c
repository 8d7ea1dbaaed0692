/*
 * test_cli.c — the kiln executable end to end, as a user runs it.
 *
 * Each test runs the built `kiln` (and the trainers it builds) as a child process and asserts on
 * exact output, exit codes and files: shapes and parameter counts, the seed's worked example,
 * a trainer trained on a slice of Fashion-MNIST whose loss must fall, checkpoints and gradients
 * that agree between the compiled and the reference runtime, errors that leave no output, and the
 * compiled-program cache and --verbose as the command uses them. The whole run keeps its cache in
 * a directory of its own ($XDG_CACHE_HOME), never the user's.
 */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "process_harness.h"
#include "runtime.h"

#define KILN KILN_BINARY_DIR "/kiln"
#define EX KILN_SOURCE_DIR "/examples/"
#define DATA "/usr/share/datasets/fashion-mnist"



static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

START_TEST(shapes_of_the_mlp) {
  char *out, *err;
  ck_assert_int_eq(run(KILN " shapes " EX "mlp.kiln", &out, &err), 0);
  ck_assert_ptr_nonnull(strstr(out, "  fc1.weight               f32[256, 784]            200,704\n"));
  ck_assert_ptr_nonnull(strstr(out, "  fc2.bias                 f32[10]                       10\n"));
  ck_assert_ptr_nonnull(strstr(out, "total parameters: 203,530\n"));
  ck_assert_ptr_nonnull(strstr(out, "logits             add            f32[B, 10]\n"));
  /* fc1: 2*784*256 + 256 bias adds + 256 relu; fc2: 2*256*10 + 10; loss 4*10/example. */
  ck_assert_ptr_nonnull(strstr(out, "forward FLOPs per example: 4.071e+05"));
  /* Seed 004's sizes: a fully connected layer has as many connections as weights. */
  ck_assert_ptr_nonnull(strstr(out, "  fc1                                 256        200,704"
                                    "        200,704\n"));
  ck_assert_ptr_nonnull(strstr(out, "  total                               266        203,264"
                                    "        203,264\n"));
  ck_assert_str_eq(err, "");
  free(out);
  free(err);
  /* A convolution reuses each weight at every output position: conv2 has 32 maps of 14 x 14
   * units, 32 x 8 x 5 x 5 weights, and 6,272 x 200 connections. */
  ck_assert_int_eq(run(KILN " shapes " EX "mnist_cnn.kiln", &out, &err), 0);
  ck_assert_ptr_nonnull(strstr(out, "  conv2                             6,272          6,400"
                                    "      1,254,400\n"));
  ck_assert_ptr_nonnull(strstr(out, "  conv1                             6,272             72"
                                    "         56,448\n"));
  free(out);
  free(err);
}
END_TEST

/* kiln schedule prints the target and the GEMM tiles it gives: the library's fixed target with
 * $KILN_TARGET=generic, otherwise this machine's caches (some tiles, whatever they are). */
START_TEST(schedule_prints_target_and_tiles) {
  char *out, *err;
  ck_assert_int_eq(run("KILN_TARGET=generic " KILN " schedule " EX "mnist_cnn.kiln --threads 1",
                       &out, &err), 0);
  ck_assert_msg(strstr(out, "target: vectors 32 bytes, L1 32768 bytes, L2 262144 bytes, "
                            "L3 8388608 bytes, cores 1\n") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "gemm tiles kc 256 mc 128 nc 2048,") != NULL, "%s", out);
  free(out);
  free(err);
  ck_assert_int_eq(run("env -u KILN_TARGET " KILN " schedule " EX "mnist_cnn.kiln", &out, &err), 0);
  ck_assert_msg(strstr(out, "target: vectors ") != NULL && strstr(out, "gemm tiles kc ") != NULL,
                "%s", out);
  free(out);
  free(err);
}
END_TEST

START_TEST(graph_is_dot) {
  char *out;
  ck_assert_int_eq(run(KILN " graph " EX "mlp.kiln", &out, NULL), 0);
  ck_assert_ptr_nonnull(strstr(out, "digraph \"mlp\" {"));
  ck_assert_ptr_nonnull(strstr(out, "fc1.weight\\nparam [256, 784] f32"));
  ck_assert_ptr_null(strstr(out, "update"));
  free(out);
  ck_assert_int_eq(run(KILN " graph " EX "mlp.kiln --train", &out, NULL), 0);
  ck_assert_ptr_nonnull(strstr(out, "label=\"update\""));
  ck_assert_ptr_nonnull(strstr(out, "fc1.weight.exp_avg"));
  free(out);
}
END_TEST

/* Seed 001 §1.2.1, computed in float64: the values the issue fixes. */
START_TEST(linear_toy_reference) {
  char *out;
  ck_assert_int_eq(run(KILN " train " EX "linear_toy.kiln --runtime reference", &out, NULL), 0);
  ck_assert_str_eq(out,
                   "w = 0.370367 1.296285\n"
                   "b = 1.185184\n"
                   "output = 10.999913\n"
                   "final steps=15 loss=1.8038e-08\n");  /* the loss the 15th step saw */
  free(out);
  /* The compiled runtime takes the same fifteen steps. */
  ck_assert_int_eq(run(KILN " train " EX "linear_toy.kiln --runtime compiled", &out, NULL), 0);
  ck_assert_ptr_nonnull(strstr(out, "w = 0.370367 1.296285\nb = 1.185184\noutput = 10.999913\n"));
  free(out);
}
END_TEST

/* A run that diverges stops with the step and writes no checkpoint; under the reference runtime
 * it names the op and model line that first produced a value that is not finite (the square of
 * the residual, once lr 1e30 has blown the parameters up). */
START_TEST(diverging_run_names_the_op) {
  char cmd[1024], *err;
  snprintf(cmd, sizeof cmd, KILN " train " EX "linear_toy.kiln --lr 1e30 --save '%s/f.st' --quiet",
           tmpdir);
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  ck_assert_msg(strstr(err, "kiln train: error: step 6: the loss is infinite (the run diverged"),
                "%s", err);
  free(err);
  snprintf(cmd, sizeof cmd, "%s/f.st", tmpdir);
  ck_assert(!exists(cmd));
  ck_assert_int_eq(run(KILN " train " EX "linear_toy.kiln --lr 1e30 --runtime reference --quiet",
                       NULL, &err), 1);
  ck_assert_str_eq(err, "kiln train: error: " EX "linear_toy.kiln:16:26: pow produced an "
                        "infinity at element 0 from finite inputs\n");
  free(err);
}
END_TEST

/* SGD with momentum 0.9 and dampening 0.5 on loss w²/2 from w = 1, lr 0.1: torch.optim.SGD seeds
 * the buffer with the undamped gradient, so buf = 1, w = 0.9, then buf = 0.9 + 0.5·0.9 = 1.35,
 * w = 0.9 − 0.135 = 0.765 (with a damped first step it would be 0.8575). */
START_TEST(sgd_dampening_first_step) {
  char path[300], cmd[600], *out;
  snprintf(path, sizeof path, "%s/damp.kiln", tmpdir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("param w: f64[1] = [1]\nloss = sum(0.5 * w * w)\nminimize loss\n"
        "train { optimizer = sgd(lr=0.1, momentum=0.9, dampening=0.5)  steps = 2 }\n", f);
  fclose(f);
  for (int ref = 0; ref < 2; ref++) {
    snprintf(cmd, sizeof cmd, KILN " train '%s' --quiet --runtime %s", path,
             ref ? "reference" : "compiled");
    ck_assert_int_eq(run(cmd, &out, NULL), 0);
    ck_assert_str_eq(out, "w = 0.765000\nfinal steps=2 loss=0.405\n");
    free(out);
  }
}
END_TEST

/* `kiln check` (generated code against the reference runtime, gradients against finite
 * differences) on a small model with each optimizer and regularizer. */
START_TEST(check_every_optimizer) {
  static const char *const blocks[] = {
      "optimizer = sgd(lr=0.1, momentum=0.9, nesterov=true)",
      "optimizer = adam(lr=0.01, weight_decay=1e-3)",
      "optimizer = adagrad(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)",
      "optimizer = rmsprop(momentum=0.9, centered=true)",
      "optimizer = adadelta(weight_decay=0.01)",
      "optimizer = sgd(lr=0.1) regularize = [elastic_net(l1=1e-3, l2=1e-2), max_norm(1)]",
  };
  char path[300], cmd[600], *out, *err;
  snprintf(path, sizeof path, "%s/opt.kiln", tmpdir);
  for (size_t i = 0; i < sizeof blocks / sizeof *blocks; i++) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "const x: f64[4, 3] = [[0.5, -1, 2], [1.5, 0.25, -0.5], [-1, 2, 1], [0, 1, -2]]\n"
               "const y: f64[4, 2] = [[1, -1], [0.5, 2], [-1.5, 0], [2, 1]]\n"
               "param w: f64[3, 2] = [[0.3, -0.7], [0.9, 0.1], [-0.4, 0.6]]\n"
               "param b: f64[2] = [0.2, -0.1]\n"
               "loss = mean((matmul(x, w) + b - y) ^ 2)\nminimize loss\ntrain { %s }\n",
            blocks[i]);
    fclose(f);
    snprintf(cmd, sizeof cmd, KILN " check '%s' --steps 3", path);
    int rc = run(cmd, &out, &err);
    ck_assert_msg(rc == 0 && strstr(out, "check: OK"), "%s\n%s%s", blocks[i], out, err);
    free(out), free(err);
  }
  /* early stopping needs a test set */
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("param w: f64[1] = [1]\nloss = sum(w * w)\nminimize loss\n"
        "train { optimizer = sgd(lr=0.1) early_stop = patience(2) }\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " train '%s' --quiet", path);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_msg(strstr(err, "early stopping needs a test set"), "%s", err);
  free(out), free(err);
}
END_TEST

START_TEST(check_mlp_passes) {
  char *out;
  ck_assert_int_eq(run(KILN " check " EX "mlp.kiln --steps 2", &out, NULL), 0);
  ck_assert_ptr_nonnull(strstr(out, "grad.fc1.weight"));
  ck_assert_ptr_nonnull(strstr(out, "check: OK"));
  free(out);
}
END_TEST

/* Reads column `col` (0-based) of CSV row `row` (1-based, after the header). */
static double csv_field(const char *path, int row, int col) {
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  char line[512];
  double v = NAN;
  for (int r = 0; fgets(line, sizeof line, f); r++) {
    if (r != row) continue;
    char *p = line;
    for (int c = 0; c < col; c++) p = strchr(p, ',') + 1;
    v = strtod(p, NULL);
  }
  fclose(f);
  return v;
}

START_TEST(trainer_learns_on_a_slice) {
  char cmd[2048], trainer[300], csv[300], ckpt[300], *out, *err;
  snprintf(trainer, sizeof trainer, "%s/trainer", tmpdir);
  snprintf(csv, sizeof csv, "%s/metrics.csv", tmpdir);
  snprintf(ckpt, sizeof ckpt, "%s/mlp.safetensors", tmpdir);
  snprintf(cmd, sizeof cmd, KILN " build " EX "mlp.kiln -o '%s'", trainer);
  ck_assert_int_eq(run(cmd, NULL, &err), 0);
  ck_assert(exists(trainer));
  free(err);
  snprintf(cmd, sizeof cmd,
           "'%s' --data " DATA " --epochs 3 --limit-train 3000 --limit-test 1000 --seed 7 "
           "--metrics '%s' --save '%s' --quiet",
           trainer, csv, ckpt);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_str_eq(err, "");
  ck_assert_ptr_nonnull(strstr(out, "final epochs=3 train_loss="));
  double l1 = csv_field(csv, 1, 1), l3 = csv_field(csv, 3, 1), acc = csv_field(csv, 3, 3);
  ck_assert_msg(l3 < 0.8 * l1, "training loss did not fall: %g -> %g", l1, l3);
  ck_assert_msg(acc > 0.65, "test accuracy after 3 epochs on 3000 images: %g", acc);
  free(out);
  free(err);

  /* The checkpoint has PyTorch names and layouts and nothing else. */
  RtNamedTensor *ts;
  int n;
  char e[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_load(ckpt, &ts, &n, e), 0);
  ck_assert_int_eq(n, 4);
  bool seen = false;
  for (int i = 0; i < n; i++)
    if (!strcmp(ts[i].name, "fc1.weight")) {
      seen = true;
      ck_assert_int_eq(ts[i].rank, 2);
      ck_assert_int_eq(ts[i].dims[0], 256);
      ck_assert_int_eq(ts[i].dims[1], 784);
    }
  ck_assert(seen);
  rt_safetensors_free(ts, n);

  /* Resuming from the checkpoint: the first epoch starts where the last one ended. */
  snprintf(cmd, sizeof cmd,
           "'%s' --data " DATA " --epochs 1 --limit-train 3000 --limit-test 1000 --load '%s' --quiet",
           trainer, ckpt);
  ck_assert_int_eq(run(cmd, &out, NULL), 0);
  double resumed = strtod(strstr(out, "train_loss=") + 11, NULL);
  ck_assert_msg(resumed < 0.9 * l1, "resumed loss %g vs first epoch %g", resumed, l1);
  free(out);
}
END_TEST

/* Regularization and early stopping end to end on a data set: the progress lines say the
 * training loss includes the penalty, the summary reports early stopping, and every row of the
 * saved weight has norm <= max_norm's c. */
START_TEST(regularized_early_stopping_on_data) {
  char path[300], ckpt[300], cmd[1024], *out, *err;
  snprintf(path, sizeof path, "%s/reg.kiln", tmpdir);
  snprintf(ckpt, sizeof ckpt, "%s/reg.safetensors", tmpdir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("input image: f32[B, 1, 28, 28] from images / 255\ninput label: i32[B] from labels\n"
        "logits = linear(flatten(image), out=10) as fc\nloss = cross_entropy(logits, label)\n"
        "output logits\nminimize loss\n"
        "train { optimizer = sgd(lr=0.5, momentum=0.9) batch = 32\n"
        "  regularize = [l2(1e-3), max_norm(0.5)] early_stop = patience(2) }\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " train '%s' --data " DATA " --epochs 3 --limit-train 256 "
           "--limit-test 128 --save '%s'", path, ckpt);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(err, "epoch 1/3  train_loss(+penalty) "), "%s", err);
  ck_assert_msg(strstr(out, " early_stop=") && strstr(out, " best_epoch="), "%s", out);
  free(out), free(err);
  RtNamedTensor *ts;
  int n;
  char e[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_load(ckpt, &ts, &n, e), 0);
  bool seen = false;
  for (int i = 0; i < n; i++) {
    if (strcmp(ts[i].name, "fc.weight")) continue;
    seen = true;
    ck_assert_int_eq(ts[i].dims[0], 10);
    double top = 0;
    for (int r = 0; r < 10; r++) {
      double s = 0;
      for (int c = 0; c < 784; c++) s += ts[i].values[r * 784 + c] * ts[i].values[r * 784 + c];
      top = fmax(top, sqrt(s));
    }
    ck_assert_msg(top <= 0.5 * (1 + 1e-6) && top > 0.4, "largest row norm %g", top);
  }
  ck_assert(seen);
  rt_safetensors_free(ts, n);
}
END_TEST

/* The mixed-scale dense denoiser: on a slice of Fashion-MNIST, one epoch lifts the test PSNR
 * clearly above the noisy input's (noise std 0.3: 10·log10(1/0.09) = 10.46 dB), and the
 * metrics reach the progress line, the summary and the CSV. */
START_TEST(msd_denoiser_gains_psnr) {
  char csv[300], cmd[1024], *out, *err;
  snprintf(csv, sizeof csv, "%s/msd.csv", tmpdir);
  snprintf(cmd, sizeof cmd, KILN " train " EX "msd_net.kiln --data " DATA " --epochs 1 "
           "--limit-train 2000 --limit-test 256 --metrics '%s'", csv);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  const char *a = strstr(out, " test_psnr_noisy="), *b = strstr(out, " test_psnr_denoised=");
  ck_assert_msg(a && b, "%s", out);
  double noisy = strtod(a + strlen(" test_psnr_noisy="), NULL);
  double denoised = strtod(b + strlen(" test_psnr_denoised="), NULL);
  ck_assert_msg(noisy > 10.2 && noisy < 10.7, "noisy input: %g dB", noisy);
  ck_assert_msg(denoised > noisy + 3, "denoised %g dB against the noisy input's %g dB", denoised,
                noisy);
  ck_assert_msg(strstr(err, "  test_psnr_noisy ") && strstr(err, "  test_psnr_denoised "), "%s",
                err);
  free(out), free(err);
  FILE *f = fopen(csv, "r");
  ck_assert_ptr_nonnull(f);
  char header[256];
  ck_assert_ptr_nonnull(fgets(header, sizeof header, f));
  fclose(f);
  ck_assert_str_eq(header, "epoch,train_loss,test_loss,test_accuracy,images_per_s,seconds,lr,"
                           "test_psnr_noisy,test_psnr_denoised\n");
}
END_TEST

/* Reads a PGM written by --images: the header and h·w bytes. */
static unsigned char *read_pgm(const char *path, int *h, int *w) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "%s is missing", path);
  ck_assert_int_eq(fscanf(f, "P5 %d %d 255", w, h), 2);
  ck_assert_int_eq(fgetc(f), '\n');
  unsigned char *px = malloc((size_t)(*h * *w));
  ck_assert_int_eq(fread(px, 1, (size_t)(*h * *w), f), (size_t)(*h * *w));
  ck_assert_int_eq(fgetc(f), EOF);
  fclose(f);
  return px;
}

/* examples/filters.kiln: the learned 3x3 layer converges to the vertical edge detector
 * mirrored (a layer cross-correlates, convolve convolves), and --images writes the image itself
 * as channel 0 byte for byte, the blurred picture as channel 1 (the kernel of seed 004 eq. 2.5
 * over 8, computed here from the image), six channels for each of the first three examples. */
START_TEST(filters_example) {
  char dir[300], ckpt[300], cmd[1024], path[400], *out, *err;
  snprintf(dir, sizeof dir, "%s/pictures", tmpdir);
  snprintf(ckpt, sizeof ckpt, "%s/f.safetensors", tmpdir);
  snprintf(cmd, sizeof cmd, KILN " train " EX "filters.kiln --data " DATA " --images '%s' "
           "--images-count 3 --save '%s'", dir, ckpt);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  ck_assert_msg(strstr(err, "images: 18 PGM files in "), "%s", err);
  free(out), free(err);
  RtNamedTensor *ts;
  int n;
  char e[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_load(ckpt, &ts, &n, e), 0);
  const double mirrored[9] = {-1, 0, 1, -2, 0, 2, -1, 0, 1};
  ck_assert_int_eq(n, 1);
  ck_assert_str_eq(ts[0].name, "fit.weight");
  for (int i = 0; i < 9; i++)
    ck_assert_msg(fabs(ts[0].values[i] - mirrored[i]) < 0.02, "fit.weight[%d] = %g", i,
                  ts[0].values[i]);
  rt_safetensors_free(ts, n);
  RtIdx images;
  ck_assert_msg(rt_idx_load_first(DATA "/t10k-images-idx3-ubyte.gz", 3, &images, e) == 0, "%s", e);
  for (int k = 0; k < 3; k++) {
    int h, w, h1, w1;
    snprintf(path, sizeof path, "%s/test%05d_c0.pgm", dir, k);
    unsigned char *c0 = read_pgm(path, &h, &w);
    snprintf(path, sizeof path, "%s/test%05d_c1.pgm", dir, k);
    unsigned char *c1 = read_pgm(path, &h1, &w1);
    ck_assert(h == 28 && w == 28 && h1 == 28 && w1 == 28);
    const uint8_t *img = images.data + k * 784;
    ck_assert(!memcmp(c0, img, 784));
    for (int i = 0; i < 28; i++)
      for (int j = 0; j < 28; j++) {
        double v = 4.0 * img[i * 28 + j];
        v += i > 0 ? img[(i - 1) * 28 + j] : 0;
        v += i < 27 ? img[(i + 1) * 28 + j] : 0;
        v += j > 0 ? img[i * 28 + j - 1] : 0;
        v += j < 27 ? img[i * 28 + j + 1] : 0;
        ck_assert_msg(abs((int)c1[i * 28 + j] - (int)lround(v / 8)) <= 1, "(%d, %d): %d, %g",
                      i, j, c1[i * 28 + j], v / 8);
      }
    free(c0), free(c1);
  }
  rt_idx_free(&images);
  snprintf(path, sizeof path, "%s/test00002_c5.pgm", dir);
  ck_assert(exists(path));
  snprintf(path, sizeof path, "%s/test00003_c0.pgm", dir);
  ck_assert(!exists(path));
}
END_TEST

/* init = lsuv: each layer's output variance on the first batch is scaled to 1 (within 0.1),
 * first layer to last, and training goes on from there. */
START_TEST(lsuv_scales_every_layer) {
  char path[300], cmd[1024], *out, *err;
  snprintf(path, sizeof path, "%s/lsuv.kiln", tmpdir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("input image: f32[B, 1, 28, 28] from images / 255\ninput label: i32[B] from labels\n"
        "h = relu(conv2d(image, out=4, kernel=5, stride=2) as c1)\n"
        "h = tanh(linear(flatten(h), out=32) as fc1)\n"
        "logits = linear(h, out=10) as fc2\nloss = cross_entropy(logits, label)\n"
        "output logits\nminimize loss\ntrain { batch = 50  init = lsuv }\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " train '%s' --data " DATA " --limit-train 500 "
           "--limit-test 100", path);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  const char *layers[] = {"c1.weight", "fc1.weight", "fc2.weight"}, *at = err;
  for (int i = 0; i < 3; i++) {
    char want[64];
    snprintf(want, sizeof want, "lsuv: %s output variance ", layers[i]);
    at = strstr(at, want);
    ck_assert_msg(at, "%s missing, in order, from:\n%s", want, err);
    at += strlen(want);
    double var = strtod(at, NULL);
    ck_assert_msg(fabs(var - 1) < 0.1, "%s: variance %g", layers[i], var);
  }
  ck_assert_msg(strstr(out, "test_accuracy="), "%s", out);
  free(out), free(err);
}
END_TEST

/* Transfer learning: a network pre-trained and saved, then a new one whose first layer has
 * another name and whose head has another shape starts from the file (--init-from, renaming
 * with --init-map, leaving the old head out) and freezes that layer: it ends exactly as loaded,
 * the rest trains. */
START_TEST(init_from_and_freeze) {
  char pre[300], post[300], src[300], dst[300], cmd[2048], *out, *err;
  snprintf(pre, sizeof pre, "%s/pre.safetensors", tmpdir);
  snprintf(post, sizeof post, "%s/post.safetensors", tmpdir);
  snprintf(src, sizeof src, "%s/pre.kiln", tmpdir);
  snprintf(dst, sizeof dst, "%s/post.kiln", tmpdir);
  const char *head = "input image: f32[B, 1, 28, 28] from images / 255\n"
                     "input label: i32[B] from labels\n";
  FILE *f = fopen(src, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "%sh = relu(conv2d(image, out=4, kernel=5, stride=3) as conv1)\n"
             "logits = linear(flatten(h), out=10) as fc\nloss = cross_entropy(logits, label)\n"
             "output logits\nminimize loss\ntrain { batch = 50 }\n", head);
  fclose(f);
  f = fopen(dst, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "%sh = relu(conv2d(image, out=4, kernel=5, stride=3) as features)\n"
             "h = relu(linear(flatten(h), out=20) as fc)\n"
             "logits = linear(h, out=10) as head\nloss = cross_entropy(logits, label)\n"
             "output logits\nminimize loss\ntrain { batch = 50  freeze = features }\n", head);
  fclose(f);
  const char *slice = "--data " DATA " --epochs 1 --limit-train 500 --limit-test 100";
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --save '%s' --quiet", src, slice, pre);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  free(out), free(err);
  /* the old head has another shape: an error naming both, until it is left out */
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --init-from '%s' --init-map conv1=features",
           dst, slice, pre);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_msg(strstr(err, "pre.safetensors: tensor 'fc.weight' has shape [10, 256], but the "
                            "model's 'fc.weight' has shape [20, 256]"), "%s", err);
  free(out), free(err);
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --init-from '%s' --init-map conv1=features,fc= "
           "--save '%s'", dst, slice, pre, post);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(err, "pre.safetensors: 2 tensors loaded (features.weight, features.bias); "
                            "4 parameters keep their initialisation (fc.weight, fc.bias, "
                            "head.weight, head.bias); 2 in the file unused (fc.weight, fc.bias)"),
                "%s", err);
  free(out), free(err);
  RtNamedTensor *a, *b;
  int na, nb;
  char e[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_load(pre, &a, &na, e), 0);
  ck_assert_int_eq(rt_safetensors_load(post, &b, &nb, e), 0);
  int same = 0;
  for (int i = 0; i < na; i++)
    for (int j = 0; j < nb; j++) {
      bool renamed = !strncmp(a[i].name, "conv1.", 6) && !strncmp(b[j].name, "features.", 9) &&
                     !strcmp(a[i].name + 6, b[j].name + 9);
      if (!renamed)
        continue;
      int64_t n = 1;
      for (int d = 0; d < a[i].rank; d++) n *= a[i].dims[d];
      ck_assert_msg(!memcmp(a[i].values, b[j].values, (size_t)n * sizeof(double)),
                    "frozen %s changed", b[j].name);
      same++;
    }
  ck_assert_int_eq(same, 2);
  rt_safetensors_free(a, na);
  rt_safetensors_free(b, nb);
  /* a renaming that applies to nothing, and --init-map alone */
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --init-from '%s' --init-map conv9=features,fc=",
           dst, slice, pre);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_msg(strstr(err, "--init-map: no tensor in "), "%s", err);
  free(out), free(err);
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --init-map conv1=features", dst, slice);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_msg(strstr(err, "--init-map renames the tensors of --init-from FILE, which is "
                            "missing"), "%s", err);
  free(out), free(err);
}
END_TEST

/* Reads kiln diff's table: forward[k] and reverse[k] for k = 0..order (reverse[0] unused). */
static void read_diff(const char *out, int order, double *fwd, double *rev) {
  const char *line = strstr(out, "\norder ");
  ck_assert_msg(line != NULL, "%s", out);
  for (int k = 0; k <= order; k++) {
    line = strchr(line + 1, '\n');
    ck_assert_msg(line != NULL, "%s", out);
    char *end;
    ck_assert_int_eq(strtol(line + 1, &end, 10), k);
    fwd[k] = strtod(end, &end);
    rev[k] = k ? strtod(end, &end) : 0;
  }
}

/* Seed 002, 5.5: y = exp(sin x + sin² x) + sin(exp x + exp² x) and its derivative by both
 * modes, at several points; and the 10th derivative of exp(sin x) against Faà di Bruno's
 * formula, e^(sin x)·B_n(sin' x, ..., sin^(n) x) with B the complete Bell polynomials. */
START_TEST(diff_closed_forms) {
  char model[300], cmd[1024], *out, *err;
  snprintf(model, sizeof model, "%s/y.kiln", tmpdir);
  FILE *f = fopen(model, "w");
  ck_assert_ptr_nonnull(f);
  fputs("input x: f64\ny = exp(sin(x) + sin(x)^2) + sin(exp(x) + exp(x)^2)\nminimize y\n", f);
  fclose(f);
  const double points[] = {-1.25, 0, 0.5, 1.5};
  for (int p = 0; p < 4; p++) {
    double x = points[p], fwd[2], rev[2];
    snprintf(cmd, sizeof cmd, KILN " diff '%s' --wrt x --at %.17g", model, x);
    ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
    read_diff(out, 1, fwd, rev);
    double s = sin(x), c = cos(x), e = exp(x);
    double y = exp(s + s * s) + sin(e + e * e);
    double dy = exp(s + s * s) * (c + 2 * s * c) + cos(e + e * e) * (e + 2 * e * e);
    ck_assert_msg(fabs(fwd[0] - y) <= 1e-9 * fmax(1, fabs(y)), "y(%g) = %.17g", x, fwd[0]);
    ck_assert_msg(fabs(fwd[1] - dy) <= 1e-9 * fmax(1, fabs(dy)), "forward y'(%g) = %.17g, "
                  "closed form %.17g", x, fwd[1], dy);
    ck_assert_msg(fabs(rev[1] - dy) <= 1e-9 * fmax(1, fabs(dy)), "reverse y'(%g) = %.17g, "
                  "closed form %.17g", x, rev[1], dy);
    free(out), free(err);
  }
  f = fopen(model, "w");
  ck_assert_ptr_nonnull(f);
  fputs("input x: f64\ny = exp(sin(x))\nminimize y\n", f);
  fclose(f);
  enum { N = 10 };
  const double x = 0.7;
  double fwd[N + 1], rev[N + 1], bell[N + 1] = {1}, dsin[N + 1];
  for (int j = 0; j <= N; j++)
    dsin[j] = sin(x + j * 1.5707963267948966);
  for (int m = 0; m < N; m++) { /* B_(m+1) = Σ C(m, k) B_(m−k) x_(k+1) */
    double binom = 1;
    bell[m + 1] = 0;
    for (int k = 0; k <= m; k++) {
      bell[m + 1] += binom * bell[m - k] * dsin[k + 1];
      binom = binom * (m - k) / (k + 1);
    }
  }
  snprintf(cmd, sizeof cmd, KILN " diff '%s' --wrt x --at 0.7 --order 10", model);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  read_diff(out, N, fwd, rev);
  for (int k = 0; k <= N; k++) {
    double want = exp(sin(x)) * bell[k];
    ck_assert_msg(fabs(fwd[k] - want) <= 1e-9 * fmax(1, fabs(want)), "forward d^%d = %.17g, "
                  "closed form %.17g", k, fwd[k], want);
    if (k)
      ck_assert_msg(fabs(rev[k] - want) <= 1e-9 * fmax(1, fabs(want)), "reverse d^%d = %.17g, "
                    "closed form %.17g", k, rev[k], want);
  }
  /* the graph of the 10th derivative stays small, and compiled it gives the same number */
  const char *last = strstr(out, "\n10 ");
  ck_assert_ptr_nonnull(last);
  char *end;
  strtod(last + 4, &end);                  /* forward */
  strtod(end, &end);                       /* reverse */
  double compiled = strtod(end, NULL);
  ck_assert_msg(fabs(compiled - exp(sin(x)) * bell[N]) <= 1e-9 * fabs(exp(sin(x)) * bell[N]),
                "compiled d^10 = %.17g", compiled);
  ck_assert_msg(strstr(out, ", compiled in "), "%s", out);
  long nodes = strtol(strrchr(last, ' ') + 1, NULL, 10);
  ck_assert_msg(nodes > 0 && nodes < 1000, "%ld nodes", nodes);
  free(out), free(err);
}
END_TEST

/* kiln diff's refusals: no such variable, a tensor, another input without a value, a bad order. */
START_TEST(diff_errors) {
  char model[300], cmd[1024], *out, *err;
  snprintf(model, sizeof model, "%s/z.kiln", tmpdir);
  FILE *f = fopen(model, "w");
  ck_assert_ptr_nonnull(f);
  fputs("input x: f64\ninput v: f64[3]\ninput z: f64\ny = sum(v * x) + z\nminimize y\n", f);
  fclose(f);
  static const struct { const char *args, *msg; int rc; } cases[] = {
      {"--wrt w --at 1", "--wrt w: the model has no input or parameter of that name", 1},
      {"--wrt v --at 1", "--wrt v: kiln diff differentiates by a floating-point scalar, but 'v' "
                         "is f64 of rank 1", 1},
      {"--wrt x --at 1", "input 'v' has no value: kiln diff sets only the --wrt variable", 1},
      {"--wrt x --at 1 --order 65", "--order needs an integer in 1..64, got '65'", 2},
      {"--wrt x --at one", "--at needs a finite number, got 'one'", 2},
      {"--wrt x", "diff needs --wrt X --at V", 2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    snprintf(cmd, sizeof cmd, KILN " diff '%s' %s", model, cases[i].args);
    ck_assert_int_eq(run(cmd, &out, &err), cases[i].rc);
    ck_assert_msg(strstr(err, cases[i].msg), "%s: %s", cases[i].args, err);
    free(out), free(err);
  }
}
END_TEST

/* kiln curvature on quadratics with known Hessians: diag(1, 2, 5, 10) (condition number 10,
 * stable lr below 0.2), and an indefinite one with eigenvalues 3, -1 and 0.5 in rotated axes. */
START_TEST(curvature_of_quadratics) {
  char model[300], cmd[1024], *out, *err;
  snprintf(model, sizeof model, "%s/q.kiln", tmpdir);
  static const struct { const char *text; double lmax, lmin, cond; } cases[] = {
      {"const d: f64[4] = [1, 2, 5, 10]\nparam w: f64[4] = [1, -1, 0.5, 2]\n"
       "loss = 0.5 * sum(d * w * w)\nminimize loss\ntrain { optimizer = sgd(lr=0.1) }\n",
       10, 1, 10},
      {"param w: f64[3] = [0.3, -0.2, 1]\n"
       "a = (w[0] + w[1]) * 0.7071067811865476\nb = (w[0] - w[1]) * 0.7071067811865476\n"
       "loss = 0.5 * (3 * a * a - b * b + 0.5 * w[2] * w[2])\nminimize loss\n"
       "train { optimizer = sgd(lr=1) }\n", 3, -1, 0},
  };
  for (int c = 0; c < 2; c++) {
    FILE *f = fopen(model, "w");
    ck_assert_ptr_nonnull(f);
    fputs(cases[c].text, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, KILN " curvature '%s'", model);
    ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
    const char *a = strstr(out, "largest eigenvalue"), *b = strstr(out, "smallest eigenvalue");
    ck_assert_msg(a && b, "%s", out);
    double lmax = strtod(a + strlen("largest eigenvalue"), NULL);
    double lmin = strtod(b + strlen("smallest eigenvalue"), NULL);
    ck_assert_msg(fabs(lmax - cases[c].lmax) < 1e-6 && fabs(lmin - cases[c].lmin) < 1e-6,
                  "%s", out);
    if (cases[c].cond > 0) {
      const char *k = strstr(out, "condition number");
      ck_assert_msg(k && fabs(strtod(k + strlen("condition number"), NULL) - 10) < 1e-5, "%s",
                    out);
      ck_assert_msg(strstr(out, "below 2/lambda_max = 0.2 (the model's lr is 0.1)"), "%s", out);
    } else {
      ck_assert_msg(strstr(out, "not positive definite"), "%s", out);
      ck_assert_msg(strstr(out, "(the model's lr is 1: above it)"), "%s", out);
    }
    free(out), free(err);
  }
}
END_TEST

/* Two parameter files hold the same tensors byte for byte (what changed them: `what`). */
static void same_parameters(const char *a, const char *b, const char *what) {
  RtNamedTensor *ta, *tb;
  int na, nb;
  char e[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_load(a, &ta, &na, e), 0);
  ck_assert_int_eq(rt_safetensors_load(b, &tb, &nb, e), 0);
  ck_assert_int_eq(na, nb);
  for (int i = 0; i < na; i++) {
    int64_t n = 1;
    for (int d = 0; d < ta[i].rank; d++) n *= ta[i].dims[d];
    ck_assert_msg(!memcmp(ta[i].values, tb[i].values, (size_t)n * sizeof(double)),
                  "%s differs with %s", ta[i].name, what);
  }
  rt_safetensors_free(ta, na);
  rt_safetensors_free(tb, nb);
}

/* --diagnose on a network built to have dead units: a ReLU after a layer shifted by -100 is 0
 * for every example (100% dead, warned about, its layer's gradient 0), a tanh of large inputs
 * saturates; the figures reach the CSV; and the run trains exactly as one without --diagnose. */
START_TEST(diagnose_dead_units) {
  char model[300], csv[300], a[300], b[300], cmd[2048], *out, *err;
  snprintf(model, sizeof model, "%s/dead.kiln", tmpdir);
  snprintf(csv, sizeof csv, "%s/diag.csv", tmpdir);
  snprintf(a, sizeof a, "%s/a.safetensors", tmpdir);
  snprintf(b, sizeof b, "%s/b.safetensors", tmpdir);
  FILE *f = fopen(model, "w");
  ck_assert_ptr_nonnull(f);
  fputs("input image: f32[B, 1, 28, 28] from images / 255\ninput label: i32[B] from labels\n"
        "x = flatten(image)\n"
        "dead = relu(linear(x, out=8) as fc1 - 100)\n"
        "sat = tanh(linear(x, out=8) as fc2 * 1000)\n"
        "logits = linear(dropout(concat(dead, sat), p=0.2), out=10) as head\n"
        "loss = cross_entropy(logits, label)\noutput logits\nminimize loss\n"
        "train { batch = 50 }\n", f);
  fclose(f);
  /* two epochs: the first one's measurement must leave the second one's training alone */
  const char *slice = "--data " DATA " --epochs 2 --limit-train 200 --limit-test 100";
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --diagnose --metrics '%s' --save '%s'", model,
           slice, csv, a);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  ck_assert_msg(strstr(err, "  relu1                    dead      100.0%"), "%s", err);
  ck_assert_msg(strstr(err, "warning: relu1: 100% of its units are dead"), "%s", err);
  ck_assert_msg(strstr(err, "warning: tanh1: "), "%s", err);
  ck_assert_msg(strstr(err, "warning: fc1.weight: the gradient is 0 or vanishing (norm 0)"), "%s",
                err);
  free(out), free(err);
  f = fopen(csv, "r");
  ck_assert_ptr_nonnull(f);
  char header[4096], row[4096];
  ck_assert_ptr_nonnull(fgets(header, sizeof header, f));
  ck_assert_ptr_nonnull(fgets(row, sizeof row, f));
  fclose(f);
  ck_assert_msg(strstr(header, ",lr,dead_relu1,relu1_rms,saturated_tanh1,tanh1_rms,"
                               "fc1.weight_grad_norm,"), "%s", header);
  /* the dead share is the 8th column: 1 */
  const char *c = row;
  for (int k = 0; k < 7; k++)
    c = strchr(c, ',') + 1;
  ck_assert_msg(strtod(c, NULL) == 1, "%s", row);
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --save '%s' --quiet", model, slice, b);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  free(out), free(err);
  same_parameters(a, b, "--diagnose");
}
END_TEST

/* --curvature-every: lambda_max in the epoch line and the CSV, the training untouched by the
 * measurement (byte-identical parameters with and without), and a step built without
 * Hessian-vector products refused with the way to get them. */
START_TEST(curvature_every_steps) {
  char model[300], csv[300], a[300], b[300], trainer[300], cmd[2048], *out, *err;
  snprintf(model, sizeof model, "%s/c.kiln", tmpdir);
  snprintf(csv, sizeof csv, "%s/c.csv", tmpdir);
  snprintf(a, sizeof a, "%s/a.safetensors", tmpdir);
  snprintf(b, sizeof b, "%s/b.safetensors", tmpdir);
  snprintf(trainer, sizeof trainer, "%s/t", tmpdir);
  FILE *f = fopen(model, "w");
  ck_assert_ptr_nonnull(f);
  fputs("input image: f32[B, 1, 28, 28] from images / 255\ninput label: i32[B] from labels\n"
        "h = relu(batchnorm(linear(flatten(image), out=16) as fc1) as bn)\n"
        "logits = linear(dropout(h, p=0.1), out=10) as fc2\n"
        "loss = cross_entropy(logits, label)\noutput logits\nminimize loss\n"
        "train { batch = 50 }\n", f);
  fclose(f);
  const char *slice = "--data " DATA " --epochs 2 --limit-train 300 --limit-test 100";
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --curvature-every 2 --metrics '%s' --save '%s'",
           model, slice, csv, a);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  ck_assert_msg(strstr(err, "  lambda_max "), "%s", err);
  free(out), free(err);
  f = fopen(csv, "r");
  ck_assert_ptr_nonnull(f);
  char header[1024], row[1024];
  ck_assert_ptr_nonnull(fgets(header, sizeof header, f));
  ck_assert_ptr_nonnull(fgets(row, sizeof row, f));
  fclose(f);
  ck_assert_msg(strstr(header, ",lr,lambda_max\n"), "%s", header);
  ck_assert_msg(strtod(strrchr(row, ',') + 1, NULL) > 0, "%s", row);
  snprintf(cmd, sizeof cmd, KILN " train '%s' %s --save '%s' --quiet", model, slice, b);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  free(out), free(err);
  same_parameters(a, b, "--curvature-every");
  snprintf(cmd, sizeof cmd, "{ " KILN " build '%s' -o '%s' && '%s' %s --curvature-every 2; }",
           model, trainer, trainer, slice);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_msg(strstr(err, "this program has no Hessian-vector products"), "%s", err);
  free(out), free(err);
}
END_TEST

/* --plot and kiln plot: the metrics CSV as an SVG with a loss and an accuracy panel, one point
 * per epoch in every series, the legend naming the columns; rendered by librsvg (as a viewer
 * would) into a PNG of the picture's size. A malformed CSV names its line. */
START_TEST(plot_metrics) {
  char csv[300], svg[300], png[300], cmd[2048], *out, *err;
  snprintf(csv, sizeof csv, "%s/m.csv", tmpdir);
  snprintf(svg, sizeof svg, "%s/m.svg", tmpdir);
  snprintf(png, sizeof png, "%s/m.png", tmpdir);
  snprintf(cmd, sizeof cmd, KILN " train " EX "mlp.kiln --data " DATA " --epochs 3 "
           "--limit-train 600 --limit-test 200 --metrics '%s' --plot '%s' --quiet", csv, svg);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  free(out), free(err);
  for (int pass = 0; pass < 2; pass++) {
    if (pass) { /* the same picture from the command */
      snprintf(cmd, sizeof cmd, KILN " plot '%s' -o '%s'", csv, svg);
      ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
      free(out), free(err);
    }
    FILE *f = fopen(svg, "r");
    ck_assert_ptr_nonnull(f);
    static char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    ck_assert_msg(strstr(text, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" "
                               "height=\"620\""), "%.300s", text);
    ck_assert(strstr(text, ">loss</text>") && strstr(text, ">accuracy</text>"));
    const char *names[] = {"train_loss", "test_loss", "test_accuracy"};
    for (int i = 0; i < 3; i++) {
      char key[96];
      snprintf(key, sizeof key, "data-name=\"%s\"", names[i]);
      const char *series = strstr(text, key);
      ck_assert_msg(series, "no series %s", names[i]);
      const char *pts = strstr(series, "points=\"") + 8;
      int points = 0;
      for (const char *c = pts; *c != '"'; c++)
        points += *c == ',';
      ck_assert_int_eq(points, 3);
      snprintf(key, sizeof key, "class=\"legend\" x=");
      ck_assert(strstr(text, key));
    }
  }
  snprintf(cmd, sizeof cmd, "rsvg-convert '%s' -o '%s'", svg, png);
  ck_assert_msg(run(cmd, &out, &err) == 0, "librsvg could not render the picture: %s", err);
  free(out), free(err);
  unsigned char head[24];
  FILE *f = fopen(png, "rb");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fread(head, 1, 24, f), 24);
  fclose(f);
  ck_assert(!memcmp(head, "\x89PNG", 4));
  unsigned w = (unsigned)head[16] << 24 | head[17] << 16 | head[18] << 8 | head[19];
  unsigned h = (unsigned)head[20] << 24 | head[21] << 16 | head[22] << 8 | head[23];
  ck_assert_msg(w == 720 && h == 620, "%ux%u", w, h);
  f = fopen(csv, "w");
  ck_assert_ptr_nonnull(f);
  fputs("epoch,train_loss\n1,0.5\n2,abc\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " plot '%s' -o '%s'", csv, svg);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_msg(strstr(err, "m.csv:3: expected 2 numbers separated by commas"), "%s", err);
  free(out), free(err);
}
END_TEST

/* --images refuses a model whose output is not a picture, before training. */
START_TEST(images_need_a_picture) {
  char cmd[1024], *out, *err;
  snprintf(cmd, sizeof cmd, KILN " train " EX "mlp.kiln --data " DATA " --images '%s/p'",
           tmpdir);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_msg(strstr(err, "--images writes pictures of shape [N, H, W] or [N, C, H, W], but "
                            "the model's output has shape [64, 10]"), "%s", err);
  ck_assert_msg(!strstr(err, "epoch 1"), "%s", err);
  free(out), free(err);
}
END_TEST

/* kiln grad at the same point, compiled and reference: the same loss and gradients. */
START_TEST(grad_agrees_between_runtimes) {
  char cmd[2048], params[300], inputs[300], g1[300], g2[300], e[RT_ERR_LEN];
  snprintf(params, sizeof params, "%s/p.safetensors", tmpdir);
  snprintf(inputs, sizeof inputs, "%s/i.safetensors", tmpdir);
  snprintf(g1, sizeof g1, "%s/g1.safetensors", tmpdir);
  snprintf(g2, sizeof g2, "%s/g2.safetensors", tmpdir);
  /* Parameters and inputs: deterministic values. */
  static double w1[256 * 784], b1[256], w2[10 * 256], b2[10], img[5 * 784], lab[5];
  for (int i = 0; i < 256 * 784; i++) w1[i] = 0.01 * sin(i * 0.37);
  for (int i = 0; i < 256; i++) b1[i] = 0.01 * cos(i);
  for (int i = 0; i < 2560; i++) w2[i] = 0.05 * sin(i * 1.3);
  for (int i = 0; i < 10; i++) b2[i] = 0.1 * i;
  for (int i = 0; i < 5 * 784; i++) img[i] = (i % 255) / 255.0;
  for (int i = 0; i < 5; i++) lab[i] = (i * 3) % 10;
  RtNamedTensor p[4] = {{"fc1.weight", KILN_F32, 2, {256, 784}, w1},
                        {"fc1.bias", KILN_F32, 1, {256}, b1},
                        {"fc2.weight", KILN_F32, 2, {10, 256}, w2},
                        {"fc2.bias", KILN_F32, 1, {10}, b2}};
  RtNamedTensor in[2] = {{"image", KILN_F32, 4, {5, 1, 28, 28}, img}, {"label", KILN_I32, 1, {5}, lab}};
  ck_assert_int_eq(rt_safetensors_save(params, p, 4, e), 0);
  ck_assert_int_eq(rt_safetensors_save(inputs, in, 2, e), 0);
  snprintf(cmd, sizeof cmd, KILN " grad " EX "mlp.kiln --params '%s' --inputs '%s' -o '%s'", params, inputs, g1);
  ck_assert_int_eq(run(cmd, NULL, NULL), 0);
  snprintf(cmd, sizeof cmd, KILN " grad " EX "mlp.kiln --params '%s' --inputs '%s' -o '%s' --runtime reference",
           params, inputs, g2);
  ck_assert_int_eq(run(cmd, NULL, NULL), 0);
  RtNamedTensor *a, *b;
  int na, nb;
  ck_assert_int_eq(rt_safetensors_load(g1, &a, &na, e), 0);
  ck_assert_int_eq(rt_safetensors_load(g2, &b, &nb, e), 0);
  ck_assert_int_eq(na, 5);
  ck_assert_int_eq(nb, 5);
  for (int i = 0; i < na; i++) {
    ck_assert_str_eq(a[i].name, b[i].name);
    int64_t numel = 1;
    for (int d = 0; d < a[i].rank; d++) numel *= a[i].dims[d];
    double scale = 0;
    for (int64_t k = 0; k < numel; k++) scale = fmax(scale, fabs(b[i].values[k]));
    for (int64_t k = 0; k < numel; k++)
      ck_assert_msg(fabs(a[i].values[k] - b[i].values[k]) <= 1e-4 * scale + 1e-6,
                    "%s[%lld]: %g vs %g", a[i].name, (long long)k, a[i].values[k], b[i].values[k]);
  }
  rt_safetensors_free(a, na);
  rt_safetensors_free(b, nb);
}
END_TEST

/* A label outside [0, C) fed to kiln grad: the compiled program would only flag it with a NaN
 * loss, so the command refuses it, as the reference runtime does, and writes nothing. */
START_TEST(grad_refuses_bad_labels) {
  char cmd[2048], params[300], inputs[300], g1[300], e[RT_ERR_LEN], *out, *err;
  snprintf(params, sizeof params, "%s/p.safetensors", tmpdir);
  snprintf(inputs, sizeof inputs, "%s/i.safetensors", tmpdir);
  snprintf(g1, sizeof g1, "%s/g1.safetensors", tmpdir);
  static double w1[256 * 784], b1[256], w2[10 * 256], b2[10], img[3 * 784];
  double lab[3] = {0, 9, 10};
  RtNamedTensor p[4] = {{"fc1.weight", KILN_F32, 2, {256, 784}, w1},
                        {"fc1.bias", KILN_F32, 1, {256}, b1},
                        {"fc2.weight", KILN_F32, 2, {10, 256}, w2},
                        {"fc2.bias", KILN_F32, 1, {10}, b2}};
  RtNamedTensor in[2] = {{"image", KILN_F32, 4, {3, 1, 28, 28}, img}, {"label", KILN_I32, 1, {3}, lab}};
  ck_assert_int_eq(rt_safetensors_save(params, p, 4, e), 0);
  ck_assert_int_eq(rt_safetensors_save(inputs, in, 2, e), 0);
  for (int ref = 0; ref < 2; ref++) {
    snprintf(cmd, sizeof cmd, KILN " grad " EX "mlp.kiln --params '%s' --inputs '%s' -o '%s'%s",
             params, inputs, g1, ref ? " --runtime reference" : "");
    ck_assert_int_eq(run(cmd, &out, &err), 1);
    char want[600];
    snprintf(want, sizeof want, "kiln: error: %s: cross_entropy: label tensor 'label' has value "
             "10 at index 2, outside [0, 10)\n", inputs);
    ck_assert_str_eq(err, want);
    ck_assert_str_eq(out, "");
    ck_assert(!exists(g1));
    free(out), free(err);
  }
}
END_TEST

/* kiln hvp / jvp on the linear toy, whose loss 0.5 (y - x·w - b)² has the Hessian a aᵀ with
 * a = (x1, x2, 1) = (2, 7, 1): at w = 0, b = 1 along v = (w: [1, 0], b: 2), a·v = 4, so
 * H v = 4 a; the loss's derivative is -(y - z) a·v = -10 · 4 and the output's a·v = 4. Exact in
 * f64 on both runtimes. Then a tangent of the wrong shape and a missing one. */
START_TEST(hvp_and_jvp_closed_form) {
  char cmd[2048], params[300], inputs[300], tans[300], bad[300], out[300], e[RT_ERR_LEN], *err;
  snprintf(params, sizeof params, "%s/p.safetensors", tmpdir);
  snprintf(inputs, sizeof inputs, "%s/i.safetensors", tmpdir);
  snprintf(tans, sizeof tans, "%s/t.safetensors", tmpdir);
  snprintf(bad, sizeof bad, "%s/bad.safetensors", tmpdir);
  snprintf(out, sizeof out, "%s/o.safetensors", tmpdir);
  double w[2] = {0, 0}, b[1] = {1}, vw[2] = {1, 0}, vb[1] = {2};
  RtNamedTensor p[2] = {{"w", KILN_F64, 2, {2, 1}, w}, {"b", KILN_F64, 1, {1}, b}};
  RtNamedTensor t[2] = {{"w", KILN_F64, 2, {2, 1}, vw}, {"b", KILN_F64, 1, {1}, vb}};
  RtNamedTensor tb[1] = {{"w", KILN_F64, 2, {1, 2}, vw}};
  ck_assert_int_eq(rt_safetensors_save(params, p, 2, e), 0);
  ck_assert_int_eq(rt_safetensors_save(inputs, p, 0, e), 0);
  ck_assert_int_eq(rt_safetensors_save(tans, t, 2, e), 0);
  ck_assert_int_eq(rt_safetensors_save(bad, tb, 1, e), 0);
  static const char *const runtimes[2] = {"compiled", "reference"};
  for (int r = 0; r < 2; r++) {
    snprintf(cmd, sizeof cmd, KILN " hvp " EX "linear_toy.kiln --params '%s' --inputs '%s' "
             "--tangents '%s' -o '%s' --runtime %s", params, inputs, tans, out, runtimes[r]);
    ck_assert_int_eq(run(cmd, NULL, NULL), 0);
    RtNamedTensor *h;
    int nh;
    ck_assert_int_eq(rt_safetensors_load(out, &h, &nh, e), 0);
    ck_assert_int_eq(nh, 3);
    ck_assert_str_eq(h[0].name, "loss");
    ck_assert(h[0].values[0] == 50);
    ck_assert_str_eq(h[1].name, "w");
    ck_assert(h[1].values[0] == 8 && h[1].values[1] == 28);
    ck_assert_str_eq(h[2].name, "b");
    ck_assert(h[2].values[0] == 4);
    rt_safetensors_free(h, nh);

    snprintf(cmd, sizeof cmd, KILN " jvp " EX "linear_toy.kiln --params '%s' --inputs '%s' "
             "--tangents '%s' -o '%s' --runtime %s", params, inputs, tans, out, runtimes[r]);
    ck_assert_int_eq(run(cmd, NULL, NULL), 0);
    ck_assert_int_eq(rt_safetensors_load(out, &h, &nh, e), 0);
    ck_assert_int_eq(nh, 4);
    static const char *const names[4] = {"loss", "jvp.loss", "output", "jvp.output"};
    static const double values[4] = {50, -40, 1, 4};
    for (int i = 0; i < 4; i++) {
      ck_assert_str_eq(h[i].name, names[i]);
      ck_assert_msg(h[i].values[0] == values[i], "%s = %g", names[i], h[i].values[0]);
    }
    rt_safetensors_free(h, nh);
  }
  snprintf(cmd, sizeof cmd, KILN " hvp " EX "linear_toy.kiln --params '%s' --inputs '%s' "
           "--tangents '%s' -o '%s'", params, inputs, bad, out);
  ck_assert_int_eq(run(cmd, NULL, &err), 1);  /* errors on stderr */
  ck_assert_msg(strstr(err, "bad.safetensors: tensor 'w' has shape [1, 2] but the parameter is "
                            "[2, 1]\n") != NULL, "%s", err);
  free(err);
  snprintf(cmd, sizeof cmd, KILN " hvp " EX "linear_toy.kiln --params '%s' --inputs '%s' "
           "--tangents '%s' -o '%s'", params, inputs, inputs, out);
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  ck_assert_msg(strstr(err, "i.safetensors: no tensor 'w' (the direction for parameter 'w')\n") !=
                NULL, "%s", err);
  free(err);
  snprintf(cmd, sizeof cmd, KILN " hvp " EX "linear_toy.kiln --params '%s' --inputs '%s' -o '%s'",
           params, inputs, out);
  ck_assert_int_eq(run(cmd, NULL, NULL), 2);
}
END_TEST

/* The tangent inputs and outputs kiln jvp and hvp add are generated names too: a model tensor
 * already named so is reported at its declaration. */
START_TEST(jvp_hvp_name_collisions) {
  char model[300], cmd[1024], *out, *err;
  snprintf(model, sizeof model, "%s/t.kiln", tmpdir);
  FILE *f = fopen(model, "w");
  fputs("input x: f32[B, 4]\nparam weight: f32[4]\nh = linear(x * weight, out=2) as tangent\n"
        "loss = sum(h)\nminimize loss\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " hvp '%s' --params p --inputs i --tangents t -o o", model);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  char want[1024];
  snprintf(want, sizeof want,
           "%s:3:34: error: 'tangent.weight' is also the name of a tensor kiln generates: the "
           "tangent of parameter 'weight' (line 2); rename it\n"
           "  h = linear(x * weight, out=2) as tangent\n"
           "                                   ^\n", model);
  ck_assert_str_eq(err, want);
  free(out);
  free(err);
  f = fopen(model, "w");
  fputs("input output: f32[B, 4]\nparam w: f32[4]\nh = output * w\noutput h\nl = sum(h)\n"
        "minimize l\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " jvp '%s' --params p --inputs i --tangents t -o o", model);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  snprintf(want, sizeof want,
           "%s:1:7: error: 'output' is also the name of a tensor kiln generates: the declared "
           "output (kiln jvp); rename it\n"
           "  input output: f32[B, 4]\n"
           "        ^\n", model);
  ck_assert_str_eq(err, want);
  free(out);
  free(err);
}
END_TEST

/* Filled constants and parameters (one number for every element) are kept as that number at
 * their shape; the generated code still agrees with the reference through every op that reads
 * them. */
START_TEST(filled_constants_check) {
  char model[300], cmd[1024], *out, *err;
  snprintf(model, sizeof model, "%s/fill.kiln", tmpdir);
  FILE *f = fopen(model, "w");
  fputs("input x: f32[B, 8]\nconst c: f32[8, 8] = 0.5\nconst e: f32[2, 4, 8] = 3\n"
        "param w: f32[8, 8] = 0.25\nparam v: f32[8]\n"
        "h = matmul(x * v, transpose(c, axes=[1, 0]) + reshape(e, shape=[8, 8]) + w)\n"
        "k = concat(h + sum(c, axes=[0]), reshape(sum(e, axes=[0, 1]), shape=[1, 8]) * x, axis=1)\n"
        "loss = mean(k * k) + sum(flatten(e) * 0.001)\nminimize loss\n"
        "train {\n  regularize = l2(1e-4)\n  optimizer = adam(lr=1e-2)\n}\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " check '%s' --steps 2 --backend cc", model);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s%s", out, err);
  ck_assert_ptr_nonnull(strstr(out, "check: OK"));
  free(out);
  free(err);
}
END_TEST

/* Paths kiln reads are refused unless they are regular files: a FIFO used to hang --load. */
START_TEST(refuses_fifos_and_directories) {
  char fifo[300], cmd[1024], want[600], *out, *err;
  snprintf(fifo, sizeof fifo, "%s/fifo", tmpdir);
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  snprintf(cmd, sizeof cmd, "timeout 60 " KILN " train " EX "linear_toy.kiln --load '%s'", fifo);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  snprintf(want, sizeof want, "kiln: error: %s: is not a regular file\n", fifo);
  ck_assert_str_eq(err, want);
  free(out);
  free(err);
  snprintf(cmd, sizeof cmd, "timeout 60 " KILN " grad " EX "linear_toy.kiln --params '%s' "
           "--inputs '%s' -o '%s/g'", fifo, fifo, tmpdir);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_str_eq(err, want);
  free(out);
  free(err);
  snprintf(cmd, sizeof cmd, "timeout 60 " KILN " shapes '%s'", tmpdir);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  snprintf(want, sizeof want, "kiln: error: cannot read '%s': it is a directory\n", tmpdir);
  ck_assert_str_eq(err, want);
  free(out);
  free(err);
}
END_TEST

START_TEST(bad_model_leaves_no_output) {
  char model[300], outc[300], cmd[1024], *err;
  snprintf(model, sizeof model, "%s/bad.kiln", tmpdir);
  snprintf(outc, sizeof outc, "%s/step.c", tmpdir);
  FILE *f = fopen(model, "w");
  fputs("input x: f32[B, 4]\ny = relu(x) + foo\nminimize y\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " emit '%s' -o '%s'", model, outc);
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  char expect[1024];
  snprintf(expect, sizeof expect,
           "%s:2:15: error: 'foo' is not defined\n  y = relu(x) + foo\n                ^\n", model);
  ck_assert_str_eq(err, expect);
  ck_assert(!exists(outc));
  free(err);
  /* A shape mismatch names both shapes at the line. */
  f = fopen(model, "w");
  fputs("input x: f32[B, 4]\nparam w: f32[3, 2]\ny = matmul(x, w)\nl = sum(y)\nminimize l\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " build '%s' -o '%s/t'", model, tmpdir);
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  ck_assert_ptr_nonnull(strstr(err, "bad.kiln:3:5: error: matmul of [B, 4] and [3, 2]: inner dimensions differ"));
  free(err);
}
END_TEST

/* --threads bounds the threads the generated code may run on: one means no tasks at all. */
START_TEST(threads_option) {
  char *one, *two, *err;
  ck_assert_int_eq(run(KILN " emit " EX "mnist_cnn.kiln --threads 1", &one, NULL), 0);
  ck_assert_int_eq(run(KILN " emit " EX "mnist_cnn.kiln --threads 2", &two, NULL), 0);
  ck_assert_ptr_null(strstr(one, "kiln_run_tasks"));
  ck_assert_ptr_nonnull(strstr(one, ".threads = 1,"));
  ck_assert_ptr_nonnull(strstr(two, "kiln_run_tasks(ex"));
  ck_assert_ptr_nonnull(strstr(two, ".threads = 2,"));
  ck_assert_ptr_null(strstr(two, "#pragma omp"));
  free(one);
  free(two);
  ck_assert_int_eq(run(KILN " emit " EX "mlp.kiln --threads 0", NULL, &err), 2);
  ck_assert_ptr_nonnull(strstr(err, "--threads needs an integer in 1..256, got '0'"));
  free(err);
}
END_TEST

/* Convolutions whose sizes are multiples of no vector width or tile (20, 13 and 7 output
 * channels, rows of 13, a stride and a dilation, batch 5) pass `kiln check` with the generated code compiled
 * for every vector width its micro-kernels pick (AVX-512 where the machine has it, AVX2, SSE),
 * for the plain C a compiler without GNU vector extensions gets, and by clang when installed. */
START_TEST(every_vector_width_checks) {
  static const char model[] =
      "model convs\n"
      "input image: f32[B, 3, 11, 13] from images\n"
      "input label: i32[B] from labels\n"
      "c1 = conv2d(image, out=20, kernel=3, pad=1)\n"
      "c2 = conv2d(relu(c1), out=13, kernel=5, pad=2)\n"
      "c3 = conv2d(relu(c2), out=7, kernel=2, dilation=2, stride=2)\n"
      "logits = linear(flatten(c3), out=4)\n"
      "loss = cross_entropy(logits, label)\n"
      "minimize loss\n"
      "train {\n  optimizer = sgd(lr=0.1)\n  batch = 5\n  seed = 3\n}\n";
  static const char *const ccs[] = {"cc", "cc -mno-avx512f", "cc -mno-avx", "cc -DKILN_PLAIN_C",
                                    "clang"};
  char path[512], cmd[1024], *out;
  snprintf(path, sizeof path, "%s/convs.kiln", tmpdir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(model, f);
  fclose(f);
  for (size_t i = 0; i < sizeof ccs / sizeof *ccs; i++) {
    if (!strcmp(ccs[i], "clang") && access("/usr/bin/clang", X_OK) != 0)
      continue;
    snprintf(cmd, sizeof cmd, "CC='%s' " KILN " check '%s' --backend cc", ccs[i], path);
    ck_assert_int_eq(run(cmd, &out, NULL), 0);
    ck_assert_msg(strstr(out, "check: OK: 54 tensors within tolerance"), "%s:\n%s", ccs[i], out);
    free(out);
  }
  snprintf(cmd, sizeof cmd, KILN " schedule '%s'", path);
  ck_assert_int_eq(run(cmd, &out, NULL), 0);
  /* Each implicit kernel is among them. */
  ck_assert_ptr_nonnull(strstr(out, "conv2d               convs.kiln:4             kernel conv=implicit"));
  ck_assert_ptr_nonnull(strstr(out, "conv2d_bwd_data      convs.kiln:5             kernel conv=implicit"));
  ck_assert_ptr_nonnull(strstr(out, "conv2d_bwd_filter    convs.kiln:5             kernel conv=implicit"));
  free(out);
}
END_TEST

/* A trainer built for the baseline x86-64 has no AVX instruction (no ymm or zmm register) and
 * learns; a target kiln does not know is a usage error. */
START_TEST(target_option) {
  char cmd[1024], *out, *err;
  snprintf(cmd, sizeof cmd, KILN " build " EX "mlp.kiln --target x86-64 -o '%s/t'", tmpdir);
  ck_assert_int_eq(run(cmd, NULL, NULL), 0);
  snprintf(cmd, sizeof cmd, "objdump -d '%s/t' | grep -cE 'ymm|zmm'", tmpdir);
  ck_assert_int_eq(run(cmd, &out, NULL), 1); /* grep found nothing */
  ck_assert_str_eq(out, "0\n");
  free(out);
  snprintf(cmd, sizeof cmd, "'%s/t' --data " DATA " --epochs 1 --limit-train 3200 "
           "--limit-test 500 --quiet", tmpdir);
  ck_assert_int_eq(run(cmd, &out, NULL), 0);
  double acc = 0;
  const char *p = strstr(out, "test_accuracy=");
  ck_assert_ptr_nonnull(p);
  sscanf(p, "test_accuracy=%lf", &acc);
  ck_assert_msg(acc > 0.6, "%s", out);
  free(out);
  ck_assert_int_eq(run(KILN " build " EX "mlp.kiln --target pentium4 -o /dev/null", NULL, &err),
                   2);
  ck_assert_ptr_nonnull(strstr(err, "--target is native, x86-64, x86-64-v2, x86-64-v3 or "
                                    "x86-64-v4, not 'pentium4'"));
  free(err);
}
END_TEST

START_TEST(usage_errors) {
  char *err;
  ck_assert_int_eq(run(KILN " frobnicate x.kiln", NULL, &err), 2);
  ck_assert_ptr_nonnull(strstr(err, "kiln: error: unknown command 'frobnicate'"));
  free(err);
  ck_assert_int_eq(run(KILN " shapes /nonexistent.kiln", NULL, &err), 1);
  ck_assert_str_eq(err, "kiln: error: cannot read '/nonexistent.kiln': No such file or directory\n");
  free(err);
  ck_assert_int_eq(run(KILN " build " EX "mlp.kiln", NULL, &err), 2);
  ck_assert_ptr_nonnull(strstr(err, "build needs -o TRAINER"));
  free(err);
  /* every command's --help: its own lines, the common options, and the trainer's for train */
  static const char *const commands[] = {"shapes", "graph", "ir", "emit", "schedule", "build",
                                         "train", "tune", "check", "grad", "jvp", "hvp", "sweep",
                                         "evaluate", "diff", "gradcheck", "curvature", "plot"};
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
    char cmd[256], want[64], *out;
    snprintf(cmd, sizeof cmd, KILN " %s --help", commands[i]);
    ck_assert_int_eq(run(cmd, &out, NULL), 0);
    snprintf(want, sizeof want, "\n  %s ", commands[i]);
    ck_assert_msg(strstr(out, want) && strstr(out, "common options:\n"), "%s:\n%s",
                  commands[i], out);
    if (!strcmp(commands[i], "train"))
      ck_assert_msg(strstr(out, "  --epochs N ") && strstr(out, "  --plot FILE.svg "), "%s", out);
    free(out);
  }
  /* an unknown option names the nearest known one, kiln's or the trainer's */
  static const struct { const char *args, *msg; } near[] = {
      {" train " EX "mlp.kiln --epoch 2", "unknown option '--epoch' (did you mean --epochs?)"},
      {" check " EX "mlp.kiln --step 2", "unknown option '--step' (did you mean --steps?)"},
      {" grad " EX "mlp.kiln --param=p", "unknown option '--param' (did you mean --params?)"},
      {" train " EX "mlp.kiln --frobnicate", "unknown option '--frobnicate' (see --help)"},
  };
  for (size_t i = 0; i < sizeof near / sizeof *near; i++) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, KILN "%s", near[i].args);
    ck_assert_int_eq(run(cmd, NULL, &err), 2);
    ck_assert_msg(strstr(err, near[i].msg), "%s", err);
    free(err);
  }
}
END_TEST

/* The cache from the command line: a miss, then a hit that compiles nothing, --no-cache, and the
 * phases --verbose prints. */
/* Training through the JIT with --no-cache starts no process (no execve but kiln's own) and opens
 * no file for writing: no compiler, no temporary file, no OpenMP registration file. strace is
 * one of the test dependencies (run-tests.sh). */
START_TEST(jit_training_writes_nothing) {
  char cmd[2048], log[320], *out;
  ck_assert_int_eq(run(KILN " --version", &out, NULL), 0);
  bool jit = strstr(out, "jit (") != NULL;
  free(out);
  if (!jit) /* a build without LLVM: the cc backend runs the compiler by design */
    return;
  snprintf(log, sizeof log, "%s/strace.log", tmpdir);
  /* LeakSanitizer (the sanitizer build) cannot run under ptrace. */
  snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0 "
           "strace -f -e trace=execve,openat -o '%s' " KILN " train " EX
           "mnist_cnn.kiln --backend jit --threads 2 --data " DATA " --epochs 1 --limit-train 640 "
           "--limit-test 100 --no-cache --quiet", log);
  ck_assert_msg(run(cmd, &out, NULL) == 0, "is strace installed? %s", out);
  ck_assert_ptr_nonnull(strstr(out, "final "));
  free(out);
  snprintf(cmd, sizeof cmd, "grep -c 'execve(' '%s'", log);
  ck_assert_int_eq(run(cmd, &out, NULL), 0);
  ck_assert_str_eq(out, "1\n");
  free(out);
  snprintf(cmd, sizeof cmd, "grep -E 'openat\\(.*(O_WRONLY|O_RDWR|O_CREAT)' '%s'", log);
  ck_assert_int_eq(run(cmd, &out, NULL), 1); /* grep found no such line */
  free(out);
}
END_TEST

START_TEST(cache_and_verbose) {
  char cmd[1024], cache[300], entries[320], *out, *err;
  snprintf(cache, sizeof cache, "%s/cache", tmpdir);
  snprintf(entries, sizeof entries, "%s/kiln", cache);
  const char *train = KILN " --verbose train " EX "linear_toy.kiln --runtime compiled --quiet";
  snprintf(cmd, sizeof cmd, "XDG_CACHE_HOME='%s' %s", cache, train);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(err, "kiln: frontend (parse, lower, autodiff)") &&
                    strstr(err, "kiln: schedule and memory plan") && strstr(err, "kiln: emit C") &&
                    strstr(err, "(cache miss)") && strstr(err, "model to loaded program"),
                "%s", err);
  ck_assert_msg(strstr(err, "jit: LLVM optimisation") || strstr(err, "cc: compile and link"), "%s",
                err);
  ck_assert_ptr_nonnull(strstr(out, "final "));
  char *first = out;
  free(err);
  struct stat st;
  ck_assert_int_eq(stat(entries, &st), 0);
  ck_assert_int_eq(st.st_mode & 0777, 0700);

  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(err, "(cache hit)") && strstr(err, "cache hit: nothing compiled") &&
                    !strstr(err, "jit: LLVM optimisation") && !strstr(err, "cc: compile and link"),
                "%s", err);
  ck_assert_str_eq(out, first);
  free(out);
  free(err);

  /* --no-cache, before or after the command: compiled, and nothing about a cache. */
  snprintf(cmd, sizeof cmd, "XDG_CACHE_HOME='%s' %s --no-cache", cache, train);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(!strstr(err, "cache") && strstr(err, "model to loaded program"), "%s", err);
  ck_assert_str_eq(out, first);
  free(out);
  free(err);
  free(first);

  /* A cache directory that cannot be made: one warning, and training goes on. */
  snprintf(cmd, sizeof cmd, "XDG_CACHE_HOME=/dev/null %s", train);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(err, "kiln: warning: cannot create the cache directory /dev/null/kiln"),
                "%s", err);
  ck_assert_ptr_nonnull(strstr(out, "final "));
  free(out);
  free(err);

  ck_assert_int_eq(run(KILN " --help", &out, NULL), 0);
  ck_assert_ptr_nonnull(strstr(out, "--no-cache"));
  ck_assert_ptr_nonnull(strstr(out, "--verbose"));
  free(out);
}
END_TEST

START_TEST(trainer_data_errors) {
  char cmd[1024], trainer[300], *err;
  snprintf(trainer, sizeof trainer, "%s/trainer", tmpdir);
  snprintf(cmd, sizeof cmd, KILN " build " EX "mlp.kiln -o '%s'", trainer);
  ck_assert_int_eq(run(cmd, NULL, NULL), 0);
  snprintf(cmd, sizeof cmd, "'%s' --data /nonexistent --quiet", trainer);
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  ck_assert_ptr_nonnull(strstr(err, "/nonexistent: No such file or directory"));
  free(err);
  snprintf(cmd, sizeof cmd, "'%s' --quiet", trainer);
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  ck_assert_ptr_nonnull(strstr(err, "--data"));
  free(err);
}
END_TEST

/* The bytes of a binary file (malloc'd), *len its size. */
static char *file_bytes(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "cannot open %s", path);
  ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
  long n = ftell(f);
  ck_assert_int_gt(n, 0);
  rewind(f);
  char *b = malloc((size_t)n);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return b;
}

/* A trainer's thread count is a run-time choice that changes no bit: the CNN trainer built for
 * three threads ends a seeded run with byte-identical checkpoints on 1, 2 and 3 threads (with a
 * last batch smaller than the rest), and refuses a bad --threads. */
START_TEST(trainer_same_bytes_on_every_thread_count) {
  char cmd[2048], trainer[300], ckpt[3][300], *err;
  snprintf(trainer, sizeof trainer, "%s/cnn", tmpdir);
  snprintf(cmd, sizeof cmd, KILN " build " EX "mnist_cnn.kiln --threads 3 -o '%s'", trainer);
  ck_assert_int_eq(run(cmd, NULL, NULL), 0);
  char *bytes[3];
  size_t len[3];
  for (int t = 0; t < 3; t++) {
    snprintf(ckpt[t], sizeof ckpt[t], "%s/cnn%d.safetensors", tmpdir, t + 1);
    snprintf(cmd, sizeof cmd,
             "'%s' --data " DATA " --epochs 1 --limit-train 200 --limit-test 50 --seed 3 "
             "--threads %d --save '%s' --quiet",
             trainer, t + 1, ckpt[t]);
    ck_assert_int_eq(run(cmd, NULL, NULL), 0);
    bytes[t] = file_bytes(ckpt[t], &len[t]);
    ck_assert(len[t] > 100000);
  }
  for (int t = 1; t < 3; t++)
    ck_assert_msg(len[t] == len[0] && !memcmp(bytes[0], bytes[t], len[0]),
                  "checkpoints on 1 and %d threads differ", t + 1);
  for (int t = 0; t < 3; t++)
    free(bytes[t]);
  /* bad usage is exit status 2 for a trainer too, coloured when asked */
  snprintf(cmd, sizeof cmd, "'%s' --data " DATA " --threads 0 --quiet", trainer);
  ck_assert_int_eq(run(cmd, NULL, &err), 2);
  ck_assert_ptr_nonnull(strstr(err, "--threads: expected a number of threads in 1..256, got '0'"));
  ck_assert_ptr_null(strchr(err, '\033'));
  free(err);
  snprintf(cmd, sizeof cmd, "NO_COLOR=1 '%s' --threads 0 --color=always", trainer);
  ck_assert_int_eq(run(cmd, NULL, &err), 2);
  ck_assert_msg(strstr(err, ": \033[0m\033[1;31merror:\033[0m\033[1m --threads: expected"), "%s",
                err);
  free(err);
}
END_TEST

/* --profile: after the summary, per entry the kernels by time with GFLOP/s, percent of the
 * measured peak and their model lines; the reference runtime has no kernels to time. */
START_TEST(profile_option) {
  char cmd[2048], trainer[300], *out, *err;
  snprintf(trainer, sizeof trainer, "%s/mlp", tmpdir);
  snprintf(cmd, sizeof cmd, KILN " build " EX "mlp.kiln -o '%s'", trainer);
  ck_assert_int_eq(run(cmd, NULL, NULL), 0);
  snprintf(cmd, sizeof cmd,
           "'%s' --data " DATA " --epochs 1 --limit-train 640 --limit-test 64 --profile --quiet",
           trainer);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_str_eq(err, "");
  const char *final = strstr(out, "final epochs=1"), *peak = strstr(out, "profile: FMA peak ");
  const char *train = strstr(out, "\nentry train: 10 calls, ");
  const char *eval = strstr(out, "\nentry eval: 1 calls, ");
  ck_assert_msg(final && peak && train && eval && final < peak && peak < train && train < eval,
                "%s", out);
  /* fc1's forward product, its model line and a speed. */
  const char *fc1 = strstr(train, "matmul                     mlp.kiln:8\n");
  ck_assert_msg(fc1 && fc1 < eval, "%s", out);
  ck_assert_ptr_nonnull(strstr(train, "(outside kernels: the entry's copies and calls)"));
  free(out);
  free(err);
  ck_assert_int_eq(run(KILN " train " EX "linear_toy.kiln --runtime reference --profile", NULL,
                       &err), 1);
  ck_assert_ptr_nonnull(strstr(err, "--profile needs compiled code"));
  free(err);
}
END_TEST

/* kiln tune: tries schedules, stores the winners in the cache under the model and options, and
 * later commands use them (`kiln schedule` marks them) unless told --no-tune; a file that is not a
 * tuning is ignored with a warning; tuning without a cache is a usage error. */
START_TEST(tune_stores_and_builds_use_it) {
  char cmd[2048], cache[300], *out, *err;
  snprintf(cache, sizeof cache, "%s/cache", tmpdir);
  snprintf(cmd, sizeof cmd,
           "XDG_CACHE_HOME='%s' " KILN " tune " EX "mnist_cnn.kiln --batch 8 --threads 2 "
           "--seconds 0.02", cache);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(out, "schedules tried") && strstr(out, "stored in"), "%s", out);
  ck_assert_msg(strstr(err, "tune: default schedule") && strstr(err, "tune: tuned schedule"),
                "%s", err);
  const char *at = strstr(out, "stored in "), *end = at ? strchr(at, ';') : NULL;
  ck_assert_ptr_nonnull(end);
  char path[1024];
  snprintf(path, sizeof path, "%.*s", (int)(end - at - 10), at + 10);
  FILE *f = fopen(path, "r");
  ck_assert_msg(f != NULL, "no tuning file %s", path);
  char line[256];
  ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
  ck_assert_msg(!strncmp(line, "# kiln tune ", 12), "%s", line);
  fclose(f);
  free(out);
  free(err);

  /* Used: said with --verbose, marked by kiln schedule when it changed something. */
  snprintf(cmd, sizeof cmd,
           "XDG_CACHE_HOME='%s' " KILN " --verbose schedule " EX "mnist_cnn.kiln --batch 8 "
           "--threads 2", cache);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(err, "using the schedule kiln tune measured"), "%s", err);
  free(out);
  free(err);
  snprintf(cmd, sizeof cmd,
           "XDG_CACHE_HOME='%s' " KILN " --verbose schedule " EX "mnist_cnn.kiln --batch 8 "
           "--threads 2 --no-tune", cache);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_ptr_null(strstr(err, "kiln tune"));
  ck_assert_ptr_null(strstr(out, "(tuned)"));
  free(out);
  free(err);
  /* Other options, another key: not used. */
  snprintf(cmd, sizeof cmd,
           "XDG_CACHE_HOME='%s' " KILN " --verbose schedule " EX "mnist_cnn.kiln --batch 16 "
           "--threads 2", cache);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_ptr_null(strstr(err, "kiln tune"));
  free(out);
  free(err);
  /* Every tuned schedule computes the same function. */
  snprintf(cmd, sizeof cmd,
           "XDG_CACHE_HOME='%s' " KILN " check " EX "mnist_cnn.kiln --batch 8 --threads 2", cache);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(out, "check: OK"), "%s%s", out, err);
  free(out);
  free(err);

  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("conv 3 sideways\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd,
           "XDG_CACHE_HOME='%s' " KILN " schedule " EX "mnist_cnn.kiln --batch 8 --threads 2",
           cache);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(err, "warning: ignoring ") && strstr(err, "not a tuning file"), "%s", err);
  ck_assert_ptr_null(strstr(out, "(tuned)"));
  free(out);
  free(err);

  ck_assert_int_eq(run(KILN " --no-cache tune " EX "mlp.kiln", NULL, &err), 2);
  ck_assert_ptr_nonnull(strstr(err, "tune stores what it measures in the cache"));
  free(err);
}
END_TEST

/* An image folder written here: 3 classes of 8 x 8 RGB images (PPM), class c a bright 3 x 3
 * square in channel c at a random place over dim noise, the per-channel pixel sums (and sums of
 * squares) of the training images in sum[] and sumsq[]. */
static void write_ppm_folder(const char *dir, int ntrain, int ntest, double sum[3],
                             double sumsq[3]) {
  uint32_t state = 12345;
  char path[600];
  for (int c = 0; c < 3; c++)
    sum[c] = sumsq[c] = 0;
  snprintf(path, sizeof path, "%s", dir);
  ck_assert_int_eq(mkdir(path, 0777), 0);
  for (int split = 0; split < 2; split++) {
    const char *name = split ? "test" : "train";
    int n = split ? ntest : ntrain;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ck_assert_int_eq(mkdir(path, 0777), 0);
    snprintf(path, sizeof path, "%s/%s/labels.csv", dir, name);
    FILE *csv = fopen(path, "w");
    ck_assert_ptr_nonnull(csv);
    fprintf(csv, "file,label\n");
    for (int i = 0; i < n; i++) {
      int label = i % 3;
      unsigned char px[8][8][3];
      for (int k = 0; k < 192; k++) {
        state = state * 1664525u + 1013904223u;
        ((unsigned char *)px)[k] = (unsigned char)(state >> 27); /* 0..31 */
      }
      state = state * 1664525u + 1013904223u;
      int y0 = (int)(state >> 16) % 6, x0 = (int)(state >> 8) % 6;
      for (int y = y0; y < y0 + 3; y++)
        for (int x = x0; x < x0 + 3; x++)
          px[y][x][label] = 200;
      snprintf(path, sizeof path, "%s/%s/im%d.ppm", dir, name, i);
      FILE *f = fopen(path, "wb");
      ck_assert_ptr_nonnull(f);
      fprintf(f, "P6\n8 8\n255\n");
      ck_assert_uint_eq(fwrite(px, 1, sizeof px, f), sizeof px);
      fclose(f);
      fprintf(csv, "im%d.ppm,%d\n", i, label);
      for (int k = 0; k < 192 && !split; k++) {
        double v = ((unsigned char *)px)[k];
        sum[k % 3] += v;
        sumsq[k % 3] += v * v;
      }
    }
    fclose(csv);
  }
}

/* A trainer learns from an image folder with --normalize auto and --augment: the statistics it
 * prints are the training images' own and train a second run when given back; the thread count
 * changes no byte of the result; kiln train takes the same options; an image of another shape is
 * refused naming the file. */
START_TEST(trainer_learns_from_an_image_folder) {
  char model[300], trainer[300], data[300], cmd[4096], ck[2][300], *out, *err;
  snprintf(model, sizeof model, "%s/rgb.kiln", tmpdir);
  snprintf(trainer, sizeof trainer, "%s/rgb", tmpdir);
  snprintf(data, sizeof data, "%s/data", tmpdir);
  FILE *f = fopen(model, "w");
  ck_assert_ptr_nonnull(f);
  fputs("input image: f32[B, 3, 8, 8] from images / 255\ninput label: i32[B] from labels\n"
        "conv = conv2d(image, out=4, kernel=3, pad=1)\n"
        "logits = linear(flatten(relu(conv)), out=3) as fc\nloss = cross_entropy(logits, label)\n"
        "output logits\nminimize loss\n"
        "train { optimizer = adam(lr=0.01) batch = 16 epochs = 6 seed = 3 }\n", f);
  fclose(f);
  double sum[3], sumsq[3];
  write_ppm_folder(data, 150, 60, sum, sumsq);
  snprintf(cmd, sizeof cmd, KILN " build '%s' --threads 2 -o '%s'", model, trainer);
  ck_assert_int_eq(run(cmd, NULL, NULL), 0);
  const char *aug = "--augment flip,crop=1,rotate=10,translate=0.5,contrast=0.2";
  for (int t = 0; t < 2; t++) {
    snprintf(ck[t], sizeof ck[t], "%s/rgb%d.safetensors", tmpdir, t + 1);
    snprintf(cmd, sizeof cmd, "'%s' --data '%s' --normalize auto %s --threads %d --save '%s'",
             trainer, data, aug, t + 1, ck[t]);
    ck_assert_int_eq(run(cmd, &out, &err), 0);
    /* The statistics of the 150 training images, after the input's / 255. */
    char want[512] = "normalize: the mean and standard deviation per channel of the 150 training "
                     "examples, in the units of input 'image': --normalize '";
    for (int c = 0; c < 3; c++) {
      double count = 150 * 64, m = sum[c] / count, sd = sqrt(sumsq[c] / count - m * m);
      snprintf(want + strlen(want), sizeof want - strlen(want), "%s%.6g,%.6g", c ? ";" : "",
               m * (1.0 / 255), sd * (1.0 / 255));
    }
    strcat(want, "'\n");
    ck_assert_msg(strstr(err, want), "want '%s' in '%s'", want, err);
    double acc = strtod(strstr(out, "test_accuracy=") + 14, NULL);
    ck_assert_msg(acc >= 0.9, "test accuracy %g: %s", acc, out);
    if (t == 0) {
      /* The printed values, given back: the same run to the printed precision. */
      char *given = strstr(err, "--normalize '"), *end = strchr(given + 13, '\'');
      snprintf(cmd, sizeof cmd, "'%s' --data '%s' %.*s %s --quiet", trainer, data,
               (int)(end + 1 - given), given, aug);
      free(out), free(err);
      ck_assert_int_eq(run(cmd, &out, &err), 0);
      ck_assert_str_eq(err, "");
      acc = strtod(strstr(out, "test_accuracy=") + 14, NULL);
      ck_assert_msg(acc >= 0.9, "test accuracy %g with the printed statistics: %s", acc, out);
    }
    free(out), free(err);
  }
  size_t len[2];
  char *bytes[2] = {file_bytes(ck[0], &len[0]), file_bytes(ck[1], &len[1])};
  ck_assert_msg(len[0] == len[1] && !memcmp(bytes[0], bytes[1], len[0]),
                "1 and 2 threads trained different parameters");
  free(bytes[0]), free(bytes[1]);
  /* kiln train passes the options that take a value on, with the value as the next argument. */
  snprintf(cmd, sizeof cmd, KILN " train '%s' --data '%s' --validation 30 --normalize auto "
           "--augment flip --max-memory 1G --epochs 1 --quiet", model, data);
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(out, "final epochs=1 ") && strstr(out, " val_loss="), "%s%s", out, err);
  free(out), free(err);
  /* A test image of another shape. */
  snprintf(cmd, sizeof cmd, "printf 'P6 8 7 255\\n' > '%s/test/im7.ppm' && head -c 168 /dev/zero "
           ">> '%s/test/im7.ppm'", data, data);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(cmd, sizeof cmd, "'%s' --data '%s' --quiet", trainer, data);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  char want[1024];
  snprintf(want, sizeof want, "rgb: error: %s/test/im7.ppm: the image is [3, 7, 8] ([channels, "
           "height, width]), but input 'image' takes [3, 8, 8] per example\n", data);
  ck_assert_str_eq(err, want);
  ck_assert_str_eq(out, "");
  free(out), free(err);
}
END_TEST

static Suite *cli_suite(void) {
  Suite *s = suite_create("cli");
  TCase *tc = tcase_create("cli");
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_set_timeout(tc, 900);
  tcase_add_test(tc, shapes_of_the_mlp);
  tcase_add_test(tc, schedule_prints_target_and_tiles);
  tcase_add_test(tc, graph_is_dot);
  tcase_add_test(tc, linear_toy_reference);
  tcase_add_test(tc, diverging_run_names_the_op);
  tcase_add_test(tc, check_mlp_passes);
  tcase_add_test(tc, check_every_optimizer);
  tcase_add_test(tc, regularized_early_stopping_on_data);
  tcase_add_test(tc, msd_denoiser_gains_psnr);
  tcase_add_test(tc, filters_example);
  tcase_add_test(tc, images_need_a_picture);
  tcase_add_test(tc, lsuv_scales_every_layer);
  tcase_add_test(tc, init_from_and_freeze);
  tcase_add_test(tc, diff_closed_forms);
  tcase_add_test(tc, diff_errors);
  tcase_add_test(tc, curvature_of_quadratics);
  tcase_add_test(tc, diagnose_dead_units);
  tcase_add_test(tc, curvature_every_steps);
  tcase_add_test(tc, plot_metrics);
  tcase_add_test(tc, trainer_learns_on_a_slice);
  tcase_add_test(tc, grad_agrees_between_runtimes);
  tcase_add_test(tc, grad_refuses_bad_labels);
  tcase_add_test(tc, sgd_dampening_first_step);
  tcase_add_test(tc, hvp_and_jvp_closed_form);
  tcase_add_test(tc, jvp_hvp_name_collisions);
  tcase_add_test(tc, filled_constants_check);
  tcase_add_test(tc, refuses_fifos_and_directories);
  tcase_add_test(tc, bad_model_leaves_no_output);
  tcase_add_test(tc, threads_option);
  tcase_add_test(tc, usage_errors);
  tcase_add_test(tc, target_option);
  tcase_add_test(tc, every_vector_width_checks);
  tcase_add_test(tc, trainer_same_bytes_on_every_thread_count);
  tcase_add_test(tc, profile_option);
  tcase_add_test(tc, tune_stores_and_builds_use_it);
  tcase_add_test(tc, cache_and_verbose);
  tcase_add_test(tc, jit_training_writes_nothing);
  suite_add_tcase(s, tc);
  /* The data pipeline on its own (CK_RUN_CASE=images). */
  tc = tcase_create("images");
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_set_timeout(tc, 900);
  tcase_add_test(tc, trainer_learns_from_an_image_folder);
  tcase_add_test(tc, trainer_data_errors);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return run_with_private_cache(cli_suite()); }
