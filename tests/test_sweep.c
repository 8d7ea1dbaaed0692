/*
 * test_sweep.c — the parts of `kiln sweep` and `kiln evaluate` that need no compiler: the grid
 * (its syntax, its messages, the order of its runs), the selection column, shell quoting of a
 * run's command, and the ensemble's averaging of class probabilities, against values computed
 * by hand. The commands themselves run end to end in test_sweep_cli.c.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "driver/driver.h"
#include "runtime.h"

/* The grid g after adding each spec (NULL-terminated); every spec must be accepted. */
static void grid_of(SweepGrid *g, const char *const *specs) {
  char err[512];
  memset(g, 0, sizeof *g);
  for (int i = 0; specs[i]; i++)
    ck_assert_msg(sweep_grid_add(g, specs[i], err, sizeof err) == 0, "%s: %s", specs[i], err);
}

/* The message for adding spec to a grid that already holds `before` (may be NULL). */
static void grid_refuses(const char *before, const char *spec, const char *message) {
  SweepGrid g;
  char err[512] = "";
  memset(&g, 0, sizeof g);
  if (before)
    ck_assert_int_eq(sweep_grid_add(&g, before, err, sizeof err), 0);
  ck_assert_int_eq(sweep_grid_add(&g, spec, err, sizeof err), -1);
  ck_assert_str_eq(err, message);
  sweep_grid_free(&g);
}

START_TEST(grid_product_in_order) {
  SweepGrid g;
  grid_of(&g, (const char *const[]){"lr=1e-3,3e-3", "batch=32,64,128", "seed=0x10", NULL});
  ck_assert_int_eq(g.naxes, 3);
  ck_assert_int_eq(g.runs, 6);
  ck_assert_str_eq(g.axes[0].key, "lr");
  ck_assert_str_eq(g.axes[0].option, "--lr");
  ck_assert_str_eq(g.axes[1].option, "--batch");
  ck_assert_str_eq(g.axes[0].values[1], "3e-3");   /* as written */
  ck_assert_str_eq(g.axes[2].values[0], "0x10");
  ck_assert_int_eq(sweep_grid_axis(&g, "batch"), 1);
  ck_assert_int_eq(sweep_grid_axis(&g, "epochs"), -1);
  /* The first key is the outermost loop, the last the innermost. */
  static const int want[6][2] = {{0, 0}, {0, 1}, {0, 2}, {1, 0}, {1, 1}, {1, 2}};
  for (int k = 0; k < 6; k++) {
    int index[SWEEP_MAX_AXES] = {-1, -1, -1};
    sweep_grid_point(&g, k, index);
    ck_assert_int_eq(index[0], want[k][0]);
    ck_assert_int_eq(index[1], want[k][1]);
    ck_assert_int_eq(index[2], 0);
  }
  sweep_grid_free(&g);
  ck_assert_int_eq(g.naxes, 0);
  /* Every key, each value at the edge of what its option takes. */
  grid_of(&g, (const char *const[]){"lr=0,1e3", "epochs=1,1000000000", "seed=0,18446744073709551615",
                                    "patience=1", "validation=0.5,10", "limit-train=1",
                                    "batch=1048576", NULL});
  ck_assert_int_eq(g.runs, 16);
  sweep_grid_free(&g);
}
END_TEST

START_TEST(grid_messages) {
  grid_refuses(NULL, "lr=abc", "--grid lr: 'abc' is not a learning rate (a number >= 0)");
  grid_refuses(NULL, "lr=-1e-3", "--grid lr: '-1e-3' is not a learning rate (a number >= 0)");
  grid_refuses(NULL, "lr=1e999", "--grid lr: '1e999' is not a learning rate (a number >= 0)");
  grid_refuses(NULL, "lr=nan", "--grid lr: 'nan' is not a learning rate (a number >= 0)");
  grid_refuses(NULL, "lr=", "--grid lr=: no values for lr");
  grid_refuses(NULL, "lr=1e-3,,3e-3", "--grid lr=1e-3,,3e-3: an empty value for lr");
  grid_refuses(NULL, "lr=1e-3,", "--grid lr=1e-3,: an empty value for lr");
  grid_refuses(NULL, "lr=1e-3,0.001", "--grid lr: '0.001' repeats '1e-3'");
  grid_refuses(NULL, "seed=16,0x10", "--grid seed: '0x10' repeats '16'");
  grid_refuses(NULL, "batch=32,64,032", "--grid batch: '032' repeats '32'");
  grid_refuses(NULL, "momentum=0.9",
               "--grid: unknown key 'momentum' (a grid takes lr, batch, epochs, seed, patience, "
               "validation, limit-train)");
  grid_refuses(NULL, "LR=0.1",
               "--grid: unknown key 'LR' (a grid takes lr, batch, epochs, seed, patience, "
               "validation, limit-train)");
  grid_refuses(NULL, "lr", "--grid 'lr': expected KEY=VALUE,VALUE,... (lr=1e-3,3e-3)");
  grid_refuses(NULL, "=1", "--grid '=1': expected KEY=VALUE,VALUE,... (lr=1e-3,3e-3)");
  grid_refuses("lr=0.1", "lr=0.2", "--grid: lr is given twice (list its values once: lr=A,B)");
  grid_refuses(NULL, "batch=0", "--grid batch: '0' is not a batch size (an integer from 1 to "
                                "1048576)");
  grid_refuses(NULL, "batch=1048577", "--grid batch: '1048577' is not a batch size (an integer "
                                      "from 1 to 1048576)");
  grid_refuses(NULL, "epochs=1.5", "--grid epochs: '1.5' is not a number of epochs (an integer "
                                   ">= 1)");
  grid_refuses(NULL, "epochs=+2", "--grid epochs: '+2' is not a number of epochs (an integer "
                                  ">= 1)");
  grid_refuses(NULL, "seed=-1", "--grid seed: '-1' is not a seed (an unsigned 64-bit integer)");
  grid_refuses(NULL, "seed=18446744073709551616",
               "--grid seed: '18446744073709551616' is not a seed (an unsigned 64-bit integer)");
  grid_refuses(NULL, "validation=1", "--grid validation: '1' is not a validation size (a number "
                                     "of examples, or a fraction between 0 and 1)");
  grid_refuses(NULL, "validation=2.5", "--grid validation: '2.5' is not a validation size (a "
                                       "number of examples, or a fraction between 0 and 1)");
  grid_refuses(NULL, "limit-train=0", "--grid limit-train: '0' is not a number of training "
                                      "examples (an integer >= 1)");
  grid_refuses(NULL, "patience=x", "--grid patience: 'x' is not a patience in epochs (an "
                                   "integer >= 1)");
}
END_TEST

/* A grid above SWEEP_MAX_RUNS is refused when the key that crosses it is added. */
START_TEST(grid_size_limit) {
  SweepGrid g;
  char err[512], spec[8192];
  memset(&g, 0, sizeof g);
  int at = snprintf(spec, sizeof spec, "limit-train=1");
  for (int i = 2; i <= 400; i++)
    at += snprintf(spec + at, sizeof spec - (size_t)at, ",%d", i);
  ck_assert_int_eq(sweep_grid_add(&g, spec, err, sizeof err), 0);
  at = snprintf(spec, sizeof spec, "seed=1");
  for (int i = 2; i <= 300; i++)
    at += snprintf(spec + at, sizeof spec - (size_t)at, ",%d", i);
  ck_assert_int_eq(sweep_grid_add(&g, spec, err, sizeof err), -1);
  ck_assert_str_eq(err, "--grid: 120000 runs; a sweep takes at most 100000");
  ck_assert_int_eq(g.naxes, 1);
  ck_assert_int_eq(g.runs, 400);
  sweep_grid_free(&g);
  at = snprintf(spec, sizeof spec, "seed=0");
  for (int i = 1; i <= 1000; i++)
    at += snprintf(spec + at, sizeof spec - (size_t)at, ",%d", i);
  ck_assert_int_eq(sweep_grid_add(&g, spec, err, sizeof err), -1);
  ck_assert_str_eq(err, "--grid seed: 1001 values, at most 1000 per key");
  sweep_grid_free(&g);
}
END_TEST

START_TEST(select_columns) {
  SweepSelect s;
  char err[512];
  ck_assert_int_eq(sweep_select_parse("val_loss", &s, err, sizeof err), 0);
  ck_assert_str_eq(s.column, "val_loss");
  ck_assert_str_eq(s.metric, "");
  ck_assert(s.lower);
  ck_assert_int_eq(sweep_select_parse("val_accuracy", &s, err, sizeof err), 0);
  ck_assert(!s.lower);
  ck_assert_str_eq(s.metric, "");
  ck_assert_int_eq(sweep_select_parse("val_psnr_denoised", &s, err, sizeof err), 0);
  ck_assert_str_eq(s.metric, "psnr_denoised");
  ck_assert(!s.lower);
  ck_assert_int_eq(sweep_select_parse("min:val_psnr", &s, err, sizeof err), 0);
  ck_assert_str_eq(s.column, "val_psnr");
  ck_assert(s.lower);
  ck_assert_int_eq(sweep_select_parse("max:val_loss", &s, err, sizeof err), 0);
  ck_assert(!s.lower);
  ck_assert_int_eq(sweep_select_parse("test_accuracy", &s, err, sizeof err), -1);
  ck_assert_str_eq(err, "--select test_accuracy: the best run is chosen on the validation "
                        "split, never on the test set (val_loss, val_accuracy or val_METRIC)");
  ck_assert_int_eq(sweep_select_parse("max:train_loss", &s, err, sizeof err), -1);
  ck_assert_str_eq(err, "--select max:train_loss: the best run is chosen on the validation "
                        "split, never on the training set (val_loss, val_accuracy or "
                        "val_METRIC)");
  static const char *const bad[] = {"loss", "val_", "val_a-b", "min:", "lowest:val_loss", ""};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ck_assert_int_eq(sweep_select_parse(bad[i], &s, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "expected val_loss (lowest wins), val_accuracy (highest) or "
                              "val_METRIC") != NULL, "%s: %s", bad[i], err);
  }
}
END_TEST

START_TEST(shell_words) {
  static const char *const cases[][2] = {
      {"--lr", "--lr"},
      {"examples/mlp.kiln", "examples/mlp.kiln"},
      {"a b", "'a b'"},
      {"it's", "'it'\\''s'"},
      {"", "''"},
      {"flip;crop=4", "'flip;crop=4'"},
      {"$HOME", "'$HOME'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    Buf b = {.lossy = true};
    sweep_shell_word(&b, cases[i][0]);
    ck_assert_str_eq(b.p, cases[i][1]);
    buf_free(&b);
  }
}
END_TEST

START_TEST(class_probabilities) {
  double p[3];
  /* softmax([ln 2, 0, ln 2]) = [2, 1, 2] / 5 */
  rt_class_probabilities((const double[]){log(2), 0, log(2)}, 3, RT_SCORES_LOGITS, p);
  ck_assert_double_eq_tol(p[0], 0.4, 1e-15);
  ck_assert_double_eq_tol(p[1], 0.2, 1e-15);
  ck_assert_double_eq_tol(p[2], 0.4, 1e-15);
  /* Large logits: the maximum is subtracted, nothing overflows. */
  rt_class_probabilities((const double[]){1000, 1000 + log(3), 0}, 3, RT_SCORES_LOGITS, p);
  ck_assert_double_eq_tol(p[0], 0.25, 1e-12);
  ck_assert_double_eq_tol(p[1], 0.75, 1e-12);
  ck_assert_double_eq(p[2], 0);
  rt_class_probabilities((const double[]){0.1, 0.7, 0.2}, 3, RT_SCORES_PROBABILITIES, p);
  ck_assert_double_eq(p[1], 0.7);
  rt_class_probabilities((const double[]){log(0.5), log(0.25), log(0.25)}, 3,
                         RT_SCORES_LOG_PROBABILITIES, p);
  ck_assert_double_eq_tol(p[0], 0.5, 1e-15);
  ck_assert_double_eq_tol(p[2], 0.25, 1e-15);
}
END_TEST

/* Two members, two examples, three classes, with probabilities chosen to be exact:
 *   example 0: A softmax([0, 0, 0]) = [1/3, 1/3, 1/3], B softmax([ln 2, 0, ln 2]) = [.4, .2, .4]
 *              mean [11/30, 8/30, 11/30]: a tie between classes 0 and 2 goes to 0; label 2
 *   example 1: A softmax([ln 3, 0, 0]) = [.6, .2, .2], B softmax([0, ln 4, 0]) = [1/6, 2/3, 1/6]
 *              mean [23/60, 26/60, 11/60]: class 1, the label, although A alone says 0.
 * accuracy 1/2, loss -(ln(11/30) + ln(26/60)) / 2. */
START_TEST(ensemble_average_exact) {
  const double scores[2 * 2 * 3] = {0, 0, 0, log(3), 0, 0,                /* member A */
                                    log(2), 0, log(2), 0, log(4), 0};     /* member B */
  const uint8_t labels[2] = {2, 1};
  double mean[6], loss, acc;
  rt_ensemble_average(scores, 2, 2, 3, RT_SCORES_LOGITS, labels, mean, &loss, &acc);
  const double want[6] = {11.0 / 30, 8.0 / 30, 11.0 / 30, 23.0 / 60, 26.0 / 60, 11.0 / 60};
  for (int i = 0; i < 6; i++)
    ck_assert_double_eq_tol(mean[i], want[i], 1e-15);
  ck_assert_double_eq(acc, 0.5);
  ck_assert_double_eq_tol(loss, -(log(11.0 / 30) + log(26.0 / 60)) / 2, 1e-14);
  /* One member: its own probabilities, and the cross-entropy of its logits. */
  rt_ensemble_average(scores + 6, 1, 2, 3, RT_SCORES_LOGITS, labels, mean, &loss, &acc);
  ck_assert_double_eq(acc, 0.5);  /* example 0 ties 0 and 2: 0; example 1: 1 */
  ck_assert_double_eq_tol(loss, -(log(0.4) + log(2.0 / 3)) / 2, 1e-14);
  /* The same members given as probabilities and as log-probabilities average alike. */
  double probs[12], logs[12];
  for (int m = 0; m < 4; m++)
    rt_class_probabilities(scores + 3 * m, 3, RT_SCORES_LOGITS, probs + 3 * m);
  for (int i = 0; i < 12; i++)
    logs[i] = log(probs[i]);
  double loss_p, acc_p, loss_l, acc_l;
  rt_ensemble_average(probs, 2, 2, 3, RT_SCORES_PROBABILITIES, labels, mean, &loss_p, &acc_p);
  rt_ensemble_average(logs, 2, 2, 3, RT_SCORES_LOG_PROBABILITIES, labels, mean, &loss_l, &acc_l);
  ck_assert_double_eq(acc_p, 0.5);
  ck_assert_double_eq(acc_l, 0.5);
  ck_assert_double_eq_tol(loss_p, -(log(11.0 / 30) + log(26.0 / 60)) / 2, 1e-14);
  ck_assert_double_eq_tol(loss_l, loss_p, 1e-14);
  /* A label no member gives any probability: the loss is infinite, as -log 0. */
  const double certain[3] = {1, 0, 0};
  const uint8_t other[1] = {1};
  rt_ensemble_average(certain, 1, 1, 3, RT_SCORES_PROBABILITIES, other, mean, &loss, &acc);
  ck_assert(isinf(loss) && loss > 0);
  ck_assert_double_eq(acc, 0);
}
END_TEST

static Suite *sweep_suite(void) {
  Suite *s = suite_create("sweep");
  TCase *tc = tcase_create("grid");
  tcase_add_test(tc, grid_product_in_order);
  tcase_add_test(tc, grid_messages);
  tcase_add_test(tc, grid_size_limit);
  tcase_add_test(tc, select_columns);
  tcase_add_test(tc, shell_words);
  suite_add_tcase(s, tc);
  tc = tcase_create("ensemble");
  tcase_add_test(tc, class_probabilities);
  tcase_add_test(tc, ensemble_average_exact);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(sweep_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
