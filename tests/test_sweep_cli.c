/*
 * test_sweep_cli.c — `kiln sweep` and `kiln evaluate` end to end, as a user runs them, on slices
 * of Fashion-MNIST with a linear classifier (one small compile per batch).
 *
 * The sweep: a 2 x 2 grid writes four rows in the documented order with the grid's values, the
 * parameters kept are bit for bit those of re-running the command of the row with the lowest
 * validation loss, the best by a metric is the row with the highest, and bad grids and options
 * get their messages with nothing written. Evaluation: one checkpoint's figures are those
 * `kiln train` printed when it saved it, each member of an ensemble prints what it prints alone,
 * and the ensemble's figures are checked against an independent computation on checkpoints made
 * here (zero weights: every example's output is the bias, so the probabilities are known).
 */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "process_harness.h"
#include "runtime.h"

#define KILN KILN_BINARY_DIR "/kiln"
#define DATA "/usr/share/datasets/fashion-mnist"


static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = calloc((size_t)n + 1, 1);
  ck_assert_int_eq(fread(s, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  return s;
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* tmpdir/name, in one of 8 buffers used in turn (copy what must outlive 8 more calls). */
static const char *at(const char *name) {
  static char paths[8][512];
  static int next;
  char *p = paths[next++ % 8];
  snprintf(p, 512, "%s/%s", tmpdir, name);
  return p;
}

/* A linear classifier on the pixels: fc.weight [10, 784], fc.bias [10]; `output` is the logits
 * or, with probabilities, softmax of them (the loss is the same). */
static void write_linear(const char *path, bool probabilities) {
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "model lin\n"
             "input image: f32[B, 1, 28, 28] from images / 255\n"
             "input label: i32[B] from labels\n"
             "logits = linear(flatten(image), out=10) as fc\n"
             "loss = cross_entropy(logits, label)\n"
             "%s\n"
             "minimize loss\n"
             "train { optimizer = sgd(lr=0.1)  batch = 50  epochs = 2  seed = 1 }\n",
          probabilities ? "probs = softmax(logits)\noutput probs" : "output logits");
  fclose(f);
}

/* Row i's fields (from 0) of a CSV without quoted fields; fields[] points into line. */
static int split_csv(char *line, char **fields, int cap) {
  int n = 0;
  for (char *p = line; n < cap; p++) {
    fields[n++] = p;
    p = strchr(p, ',');
    if (!p) break;
    *p = 0;
  }
  return n;
}

/* The number after "key=" in text, NaN when it is not there. */
static double figure(const char *text, const char *key) {
  char k[64];
  snprintf(k, sizeof k, " %s=", key);
  const char *p = strstr(text, k);
  return p ? strtod(p + strlen(k), NULL) : NAN;
}

/* A 2 x 2 grid: four rows, lr the outer loop and batch the inner, the run's seed and a command
 * that reproduces it; --keep holds exactly the parameters of the row with the lowest val_loss. */
START_TEST(sweep_two_by_two) {
  char cmd[4096], *out, *err;
  char model[512];
  snprintf(model, sizeof model, "%s", at("lin.kiln"));
  write_linear(model, false);
  snprintf(cmd, sizeof cmd,
           KILN " sweep '%s' --grid lr=0.05,0.2 batch=25,50 --data " DATA " --limit-train 400 "
           "--limit-test 100 -o '%s' --keep '%s'", model, at("sweep.csv"), at("best.st"));
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  /* Progress per run on stderr, with the values and, after the first, an estimate. */
  ck_assert_msg(strstr(err, "sweep: 4 runs, the grid's values in the order given (the last key "
                            "fastest), one after another on ") != NULL, "%s", err);
  ck_assert_msg(strstr(err, "sweep: each run holds out 10% of its training examples as a "
                            "validation split (--validation sets it)\n") != NULL, "%s", err);
  ck_assert_msg(strstr(err, "sweep: run 1/4  lr=0.05 batch=25\n") != NULL, "%s", err);
  ck_assert_msg(strstr(err, "sweep: run 4/4  lr=0.2 batch=50  ETA ") != NULL, "%s", err);
  char *csv = slurp(at("sweep.csv"));
  char *lines[8], *save = NULL;
  int nlines = 0;
  for (char *l = strtok_r(csv, "\n", &save); l && nlines < 8; l = strtok_r(NULL, "\n", &save))
    lines[nlines++] = l;
  ck_assert_int_eq(nlines, 5);
  ck_assert_str_eq(lines[0], "run,lr,batch,seed,train_loss,val_loss,val_accuracy,test_loss,"
                             "test_accuracy,epochs_run,seconds,status,command");
  static const char *const want[4][2] = {{"0.05", "25"}, {"0.05", "50"}, {"0.2", "25"},
                                         {"0.2", "50"}};
  int best = -1;
  double best_val = INFINITY;
  char *rows[4][16];
  for (int k = 0; k < 4; k++) {
    ck_assert_int_eq(split_csv(lines[k + 1], rows[k], 16), 13);
    char **f = rows[k];
    char num[8];
    snprintf(num, sizeof num, "%d", k + 1);
    ck_assert_str_eq(f[0], num);
    ck_assert_str_eq(f[1], want[k][0]);
    ck_assert_str_eq(f[2], want[k][1]);
    ck_assert_str_eq(f[3], "1");                    /* the model's seed */
    for (int j = 4; j <= 8; j++)
      ck_assert_msg(strtod(f[j], NULL) > 0, "row %d column %d: '%s'", k + 1, j, f[j]);
    ck_assert_str_eq(f[9], "2");                    /* the model's epochs */
    ck_assert_str_eq(f[11], "ok");
    snprintf(cmd, sizeof cmd, "kiln train %s --batch %s --data " DATA " --limit-train 400 "
             "--limit-test 100 --lr %s --seed 1 --validation 0.1", model, want[k][1],
             want[k][0]);
    ck_assert_str_eq(f[12], cmd);
    double val = strtod(f[5], NULL);
    if (val < best_val)
      best_val = val, best = k;
    /* The same figures on stdout. */
    snprintf(cmd, sizeof cmd, "run %d/4 lr=%s batch=%s: train_loss=", k + 1, want[k][0],
             want[k][1]);
    ck_assert_msg(strstr(out, cmd) != NULL, "%s", out);
  }
  snprintf(cmd, sizeof cmd, "best: run %d/4 lr=%s batch=%s (lowest val_loss %.4f); parameters "
           "in %s\nreproduce: %s\n", best + 1, want[best][0], want[best][1], best_val,
           at("best.st"), rows[best][12]);
  ck_assert_msg(strstr(out, cmd) != NULL, "want %s in %s", cmd, out);
  /* The best row's command, run on its own, saves bit for bit the parameters kept. */
  snprintf(cmd, sizeof cmd, KILN "%s --quiet --save '%s'", rows[best][12] + 4, at("again.st"));
  char *out2;
  ck_assert_int_eq(run(cmd, &out2, NULL), 0);
  char *kept = slurp(at("best.st")), *again = slurp(at("again.st"));
  struct stat st;
  ck_assert_int_eq(stat(at("best.st"), &st), 0);
  ck_assert_int_gt(st.st_size, 4 * 7850);
  ck_assert_mem_eq(kept, again, (size_t)st.st_size);
  ck_assert_double_eq_tol(figure(out2, "val_loss"), strtod(rows[best][5], NULL), 5.1e-5);
  ck_assert_double_eq_tol(figure(out2, "test_accuracy"), strtod(rows[best][8], NULL), 1e-9);
  /* And evaluating the kept file measures the row's test figures. */
  char *out3, *err3;
  snprintf(cmd, sizeof cmd, KILN " evaluate '%s' --batch %s --params '%s' --data " DATA
           " --limit-test 100 --quiet", model, want[best][1], at("best.st"));
  ck_assert_msg(run(cmd, &out3, &err3) == 0, "%s", err3);
  free(err3);
  ck_assert_double_eq_tol(figure(out3, "test_loss"), strtod(rows[best][7], NULL), 5.1e-5);
  ck_assert_double_eq_tol(figure(out3, "test_accuracy"), strtod(rows[best][8], NULL), 1e-9);
  free(out3);
  free(kept);
  free(again);
  free(out2);
  free(csv);
  free(out);
  free(err);
}
END_TEST

/* --select on a metric picks the highest; metric columns follow the figures; a grid key that is
 * also an option, and options the sweep does not pass on, are refused. */
START_TEST(sweep_selects_by_metric) {
  char cmd[4096], *out, *err;
  char model[512];
  snprintf(model, sizeof model, "%s", at("den.kiln"));
  FILE *f = fopen(model, "w");
  ck_assert_ptr_nonnull(f);
  fputs("model den\n"
        "input image: f32[B, 1, 28, 28] from images / 255\n"
        "out = conv2d(image, out=1, kernel=3, pad=1) as c\n"
        "quality = psnr(out, image)\n"
        "metric quality\n"
        "loss = mse(out, image)\n"
        "output out\n"
        "minimize loss\n"
        "train { optimizer = adam(lr=1e-3)  batch = 40  epochs = 1 }\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd,
           KILN " sweep '%s' --grid lr=1e-3,3e-2 seed=4 --data " DATA " --limit-train 200 "
           "--limit-test 40 --validation 40 --select val_quality -o '%s' --quiet", model,
           at("m.csv"));
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_str_eq(err, "");
  char *csv = slurp(at("m.csv"));
  char *lines[4], *save = NULL, *rows[2][20];
  int n = 0;
  for (char *l = strtok_r(csv, "\n", &save); l && n < 4; l = strtok_r(NULL, "\n", &save))
    lines[n++] = l;
  ck_assert_int_eq(n, 3);
  ck_assert_str_eq(lines[0], "run,lr,seed,train_loss,val_loss,val_accuracy,test_loss,"
                             "test_accuracy,val_quality,test_quality,epochs_run,seconds,status,"
                             "command");
  for (int k = 0; k < 2; k++) {
    ck_assert_int_eq(split_csv(lines[k + 1], rows[k], 20), 14);
    ck_assert_str_eq(rows[k][2], "4");
    ck_assert_str_eq(rows[k][5], "");    /* no accuracy: the model has no class scores */
    ck_assert_str_ne(rows[k][8], "");
    ck_assert_str_ne(rows[k][9], "");
  }
  int best = strtod(rows[1][8], NULL) > strtod(rows[0][8], NULL);
  snprintf(cmd, sizeof cmd, "best: run %d/2 lr=%s seed=4 (highest val_quality %.4f)\n",
           best + 1, rows[best][1], strtod(rows[best][8], NULL));
  ck_assert_msg(strstr(out, cmd) != NULL, "want %s in %s", cmd, out);
  /* The user's --validation is the run's: no default added. */
  ck_assert_msg(strstr(rows[0][13], " --validation 40 ") != NULL, "%s", rows[0][13]);
  ck_assert_ptr_null(strstr(rows[0][13], "--validation 0.1"));
  free(csv);
  free(out);
  free(err);
  /* Selection by accuracy needs class scores. */
  snprintf(cmd, sizeof cmd, KILN " sweep '%s' --grid lr=1e-3 --data " DATA " --select "
           "val_accuracy -o '%s'", model, at("n.csv"));
  ck_assert_int_eq(run(cmd, NULL, &err), 2);
  ck_assert_str_eq(err, "kiln sweep: error: --select val_accuracy: model 'den' has no accuracy "
                        "(it needs an output of class scores [N, C] and labels)\n");
  free(err);
  snprintf(cmd, sizeof cmd, KILN " sweep '%s' --grid lr=1e-3 --data " DATA " --select "
           "val_psnr -o '%s'", model, at("n.csv"));
  ck_assert_int_eq(run(cmd, NULL, &err), 2);
  ck_assert_str_eq(err, "kiln sweep: error: --select val_psnr: model 'den' has no metric 'psnr' "
                        "(its metrics: val_quality)\n");
  free(err);
  ck_assert(!exists(at("n.csv")));
}
END_TEST

START_TEST(sweep_refuses_bad_input) {
  static const struct {
    const char *args;
    int code;
    const char *message;
  } cases[] = {
      {"--grid lr=abc", 2, "kiln: error: --grid lr: 'abc' is not a learning rate (a number >= "
                           "0)\n(run 'kiln --help' for usage)\n"},
      {"--grid lr=", 2, "kiln: error: --grid lr=: no values for lr\n"},
      {"--grid 'lr=1e-3 batch=8,8'", 2, "kiln: error: --grid batch: '8' repeats '8'\n"},
      {"--grid momentum=0.9", 2, "kiln: error: --grid: unknown key 'momentum' (a grid takes lr, "
                                 "batch, epochs, seed, patience, validation, limit-train)\n"},
      {"--grid lr=1 lr=2", 2, "kiln: error: --grid: lr is given twice"},
      {"--grid", 2, "kiln: error: --grid needs KEY=V1,V2,..."},
      {"", 2, "kiln: error: sweep needs --grid KEY=V1,V2,..."},
      {"--grid lr=0.1 --lr 0.2", 2, "kiln sweep: error: lr is a grid key: give its values in "
                                    "--grid, not as --lr\n"},
      {"--grid batch=10 --batch 20", 2, "kiln sweep: error: batch is a grid key: give its values "
                                        "in --grid, not as --batch\n"},
      {"--grid lr=0.1 --save x.st", 2, "kiln sweep: error: --save is not for a sweep: the best "
                                       "run's parameters go to --keep FILE\n"},
      {"--grid lr=0.1 --metrics m.csv", 2, "kiln sweep: error: --metrics is not for a sweep"},
      {"--grid lr=0.1 --select test_loss", 2, "kiln: error: --select test_loss: the best run is "
                                              "chosen on the validation split, never on the test "
                                              "set"},
      {"--grid lr=0.1 --epochs x", 2, "kiln sweep: error: --epochs: expected a positive number "
                                      "of epochs, got 'x'\n"},
      {"--grid lr=0.1 --runtime reference", 2, "kiln: error: sweep trains the compiled step"},
  };
  char cmd[4096], *err;
  char model[512];
  snprintf(model, sizeof model, "%s", at("lin.kiln"));
  write_linear(model, false);
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    snprintf(cmd, sizeof cmd, "cd '%s' && " KILN " sweep '%s' %s --data " DATA, tmpdir, model,
             cases[i].args);
    ck_assert_msg(run(cmd, NULL, &err) == cases[i].code, "%s: %s", cases[i].args, err);
    ck_assert_msg(!strncmp(err, cases[i].message, strlen(cases[i].message)), "%s: %s",
                  cases[i].args, err);
    ck_assert_msg(!exists(at("sweep.csv")), "%s wrote sweep.csv", cases[i].args);
    free(err);
  }
  /* A model with its data in the file has no validation split to compare runs on. */
  snprintf(cmd, sizeof cmd, KILN " sweep " KILN_SOURCE_DIR "/examples/linear_toy.kiln --grid "
           "lr=0.1 -o '%s'", at("t.csv"));
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  ck_assert_str_eq(err, "kiln sweep: error: model 'linear_toy' has its data in the file: a sweep "
                        "compares runs on a validation split of a data set's training "
                        "examples\n");
  free(err);
  /* --grid belongs to sweep, --keep too. */
  snprintf(cmd, sizeof cmd, KILN " train '%s' --grid lr=0.1", model);
  ck_assert_int_eq(run(cmd, NULL, &err), 2);
  ck_assert_str_eq(err, "kiln: error: --grid belongs to sweep\n(run 'kiln train --help' for its "
                        "options)\n");
  free(err);
}
END_TEST

/* A run that fails (a learning rate that makes the loss NaN) gets a row marked failed; the sweep
 * goes on, and fails only when no run is left to choose. */
START_TEST(sweep_goes_on_after_a_failed_run) {
  char cmd[4096], *out, *err;
  char model[512];
  snprintf(model, sizeof model, "%s", at("lin.kiln"));
  write_linear(model, false);
  snprintf(cmd, sizeof cmd, KILN " sweep '%s' --grid lr=1e38,0.1 --data " DATA " --limit-train "
           "200 --limit-test 50 --quiet -o '%s'", model, at("f.csv"));
  ck_assert_int_eq(run(cmd, &out, &err), 0);
  ck_assert_msg(strstr(err, "kiln sweep (run 1/2): error: epoch 1, step ") != NULL, "%s", err);
  ck_assert_msg(strstr(out, "run 1/2 lr=1e38: failed (the error is above)\n") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "best: run 2/2 lr=0.1 (lowest val_loss ") != NULL, "%s", out);
  char *csv = slurp(at("f.csv"));
  ck_assert_msg(strstr(csv, "\n1,1e38,1,,,,,,,") != NULL && strstr(csv, ",failed,kiln train ")
                && strstr(csv, "\n2,0.1,1,"), "%s", csv);
  free(csv);
  free(out);
  free(err);
  /* -o -: the rows on stdout, among the runs' lines. */
  snprintf(cmd, sizeof cmd, KILN " sweep '%s' --grid lr=0.1 --data " DATA " --limit-train 200 "
           "--limit-test 50 --quiet -o -", model);
  ck_assert_int_eq(run(cmd, &out, NULL), 0);
  ck_assert_msg(!strncmp(out, "run,lr,seed,train_loss,", 23) && strstr(out, "\n1,0.1,1,"),
                "%s", out);
  free(out);
  snprintf(cmd, sizeof cmd, KILN " sweep '%s' --grid lr=1e38 --data " DATA " --limit-train "
           "200 --limit-test 50 --quiet -o '%s' --keep '%s'", model, at("f.csv"), at("k.st"));
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  ck_assert_msg(strstr(err, "kiln sweep: error: no run has a val_loss to choose the best by\n"),
                "%s", err);
  ck_assert(!exists(at("k.st")));
  free(err);
}
END_TEST

/* fc.weight zero and fc.bias as given: every example's logits are the bias. */
static void write_bias_checkpoint(const char *path, const double *bias, int weight_cols) {
  double *w = calloc((size_t)10 * weight_cols, sizeof *w), b[10];
  for (int c = 0; c < 10; c++)
    b[c] = (float)bias[c];
  RtNamedTensor ts[2] = {{"fc.weight", KILN_F32, 2, {10, weight_cols}, w},
                         {"fc.bias", KILN_F32, 1, {10}, b}};
  char err[RT_ERR_LEN];
  ck_assert_msg(rt_safetensors_save(path, ts, 2, err) == 0, "%s", err);
  free(w);
}

/* Member A puts most weight on class 0 and nearly as much on class 2, member B on class 1 and
 * nearly as much on 2: each alone always predicts its own class, their mean probabilities always
 * class 2 (voting could not produce it). The figures are computed here from the labels. */
START_TEST(ensemble_of_known_members) {
  static const double a[10] = {3, 0, 2.8, 0, 0, 0, 0, 0, 0, 0};
  static const double b[10] = {0, 3, 2.8, 0, 0, 0, 0, 0, 0, 0};
  write_bias_checkpoint(at("a.st"), a, 784);
  write_bias_checkpoint(at("b.st"), b, 784);
  RtDataset test;
  char err_buf[RT_ERR_LEN];
  ck_assert_msg(rt_dataset_load(DATA, "t10k", 300, &test, err_buf) == 0, "%s", err_buf);
  double pa[10], pb[10], la[10], lb[10];
  for (int c = 0; c < 10; c++)
    la[c] = (float)a[c], lb[c] = (float)b[c];
  rt_class_probabilities(la, 10, RT_SCORES_LOGITS, pa);
  rt_class_probabilities(lb, 10, RT_SCORES_LOGITS, pb);
  double nll_a = 0, nll_b = 0, nll = 0;
  int hits[3] = {0, 0, 0};
  for (int k = 0; k < 300; k++) {
    int y = test.labels.data[k];
    nll_a -= log(pa[y]);
    nll_b -= log(pb[y]);
    nll -= log((pa[y] + pb[y]) / 2);
    hits[0] += y == 0, hits[1] += y == 1, hits[2] += y == 2;
  }
  rt_dataset_free(&test);
  ck_assert(hits[0] != hits[2] && hits[1] != hits[2]);
  char cmd[4096], *out, *err, want[512];
  for (int probabilities = 0; probabilities < 2; probabilities++) {
    char model[512];
    snprintf(model, sizeof model, "%s", at(probabilities ? "soft.kiln" : "lin.kiln"));
    write_linear(model, probabilities);
    snprintf(cmd, sizeof cmd, KILN " evaluate '%s' --params '%s' --params '%s' --data " DATA
             " --limit-test 300", model, at("a.st"), at("b.st"));
    ck_assert_int_eq(run(cmd, &out, &err), 0);
    /* Members: the model's own loss (cross_entropy, in float32) and the argmax of the output;
     * the ensemble: -log of the mean probability of the label, and the argmax of the mean. */
    char *line[3], *save = NULL;
    int n = 0;
    for (char *l = strtok_r(out, "\n", &save); l && n < 3; l = strtok_r(NULL, "\n", &save))
      line[n++] = l;
    ck_assert_int_eq(n, 3);
    snprintf(want, sizeof want, "%s: test_loss=", at("a.st"));
    ck_assert(!strncmp(line[0], want, strlen(want)));
    snprintf(want, sizeof want, "%s: test_loss=", at("b.st"));
    ck_assert(!strncmp(line[1], want, strlen(want)));
    ck_assert(!strncmp(line[2], "ensemble of 2: test_loss=", 25));
    ck_assert_double_eq_tol(figure(line[0], "test_loss"), nll_a / 300, 1e-4);
    ck_assert_double_eq_tol(figure(line[1], "test_loss"), nll_b / 300, 1e-4);
    ck_assert_double_eq_tol(figure(line[2], "test_loss"), nll / 300, 1e-4);
    snprintf(want, sizeof want, " test_accuracy=%.4f", hits[0] / 300.0);
    ck_assert_str_eq(strstr(line[0], " test_accuracy="), want);
    snprintf(want, sizeof want, " test_accuracy=%.4f", hits[1] / 300.0);
    ck_assert_str_eq(strstr(line[1], " test_accuracy="), want);
    snprintf(want, sizeof want, " test_accuracy=%.4f", hits[2] / 300.0);
    ck_assert_str_eq(strstr(line[2], " test_accuracy="), want);
    ck_assert_msg(strstr(err, "evaluate: 300 test examples of " DATA ", in batches of 50\n"),
                  "%s", err);
    ck_assert_msg(strstr(err, probabilities ? "(the softmax output)" : "(softmax of the output)"),
                  "%s", err);
    free(out);
    free(err);
  }
  /* A checkpoint that does not fit the model: the tensor and both shapes. */
  write_bias_checkpoint(at("c.st"), a, 783);
  snprintf(cmd, sizeof cmd, KILN " evaluate '%s' --params '%s' --params '%s' --data " DATA,
           at("lin.kiln"), at("a.st"), at("c.st"));
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_str_eq(out, "");
  snprintf(want, sizeof want, "kiln evaluate: error: %s: tensor 'fc.weight' has shape [10, 783], "
           "but the model's has shape [10, 784]\n", at("c.st"));
  ck_assert_str_eq(err, want);
  free(out);
  free(err);
  snprintf(cmd, sizeof cmd, KILN " evaluate " KILN_SOURCE_DIR "/examples/mlp.kiln --params '%s' "
           "--data " DATA, at("a.st"));
  ck_assert_int_eq(run(cmd, NULL, &err), 1);
  snprintf(want, sizeof want, "kiln evaluate: error: %s: no tensor 'fc1.weight' (the model's has "
           "shape [256, 784])\n", at("a.st"));
  ck_assert_str_eq(err, want);
  free(err);
}
END_TEST

/* Two members trained with different seeds: each prints, as a member, what it prints alone, and
 * alone what `kiln train` printed when it saved it. */
START_TEST(ensemble_members_match_their_runs) {
  char cmd[4096], *train_out[2], *alone[2], *out, *err;
  char model[512];
  snprintf(model, sizeof model, "%s", at("lin.kiln"));
  write_linear(model, false);
  for (int i = 0; i < 2; i++) {
    snprintf(cmd, sizeof cmd, KILN " train '%s' --data " DATA " --limit-train 300 --limit-test "
             "150 --epochs 1 --seed %d --save '%s' --quiet", model, 11 + i, at(i ? "s2.st" : "s1.st"));
    ck_assert_int_eq(run(cmd, &train_out[i], NULL), 0);
    snprintf(cmd, sizeof cmd, KILN " evaluate '%s' --params '%s' --data " DATA " --limit-test 150"
             " --quiet", model, at(i ? "s2.st" : "s1.st"));
    ck_assert_int_eq(run(cmd, &alone[i], &err), 0);
    ck_assert_str_eq(err, "");
    free(err);
    char want[512];
    snprintf(want, sizeof want, "%s: test_loss=%.4f test_accuracy=%.4f\n",
             at(i ? "s2.st" : "s1.st"), figure(train_out[i], "test_loss"),
             figure(train_out[i], "test_accuracy"));
    ck_assert_str_eq(alone[i], want);
  }
  ck_assert_str_ne(alone[0] + strlen(at("s1.st")), alone[1] + strlen(at("s2.st")));
  snprintf(cmd, sizeof cmd, KILN " evaluate '%s' --params '%s' --params '%s' --data " DATA
           " --limit-test 150 --quiet", model, at("s1.st"), at("s2.st"));
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  free(err);
  size_t n0 = strlen(alone[0]), n1 = strlen(alone[1]);
  ck_assert(!strncmp(out, alone[0], n0));
  ck_assert(!strncmp(out + n0, alone[1], n1));
  ck_assert_msg(!strncmp(out + n0 + n1, "ensemble of 2: test_loss=", 25), "%s", out);
  double acc = figure(out + n0 + n1, "test_accuracy");
  ck_assert(acc > 0.5 && acc <= 1);
  /* Options that are about training are not evaluate's. */
  free(out);
  snprintf(cmd, sizeof cmd, KILN " evaluate '%s' --params '%s' --data " DATA " --epochs 2",
           model, at("s1.st"));
  ck_assert_int_eq(run(cmd, NULL, &err), 2);
  ck_assert_str_eq(err, "kiln: error: evaluate takes --data, --limit-test, --normalize, --seed, "
                        "--threads and --quiet of the trainer options, not '--epochs'\n(run "
                        "'kiln --help' for usage)\n");
  free(err);
  snprintf(cmd, sizeof cmd, KILN " grad '%s' --params a --params b", model);
  ck_assert_int_eq(run(cmd, NULL, &err), 2);
  ck_assert_str_eq(err, "kiln: error: grad takes one --params (several make an ensemble for "
                        "evaluate)\n(run 'kiln --help' for usage)\n");
  free(err);
  for (int i = 0; i < 2; i++) {
    free(train_out[i]);
    free(alone[i]);
  }
}
END_TEST

static Suite *sweep_cli_suite(void) {
  Suite *s = suite_create("sweep_cli");
  TCase *tc = tcase_create("sweep");
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, sweep_two_by_two);
  tcase_add_test(tc, sweep_selects_by_metric);
  tcase_add_test(tc, sweep_refuses_bad_input);
  tcase_add_test(tc, sweep_goes_on_after_a_failed_run);
  suite_add_tcase(s, tc);
  tc = tcase_create("evaluate");
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, ensemble_of_known_members);
  tcase_add_test(tc, ensemble_members_match_their_runs);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  return run_with_private_cache(sweep_cli_suite());
}
