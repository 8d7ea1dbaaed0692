/*
 * test_gradcheck.c — kiln gradcheck: passes on every example, and names the first parameter or
 * op when something is wrong (a rule broken on purpose with ad_broken_op, a kink).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver/driver.h"
#include "xform/xform.h"

#define EXAMPLES KILN_SOURCE_DIR "/examples/"

/* Runs gradcheck on a model (a file, or text when text is not NULL) at a small batch; the
 * report goes into report (cap bytes). Returns gradcheck_model's result. */
static int gradcheck(const char *path, const char *text, char *report, size_t cap) {
  Options o;
  session_default_options(&o);
  o.jvp = true;
  o.batch = 2;
  Session s;
  int rc = text ? session_open_text(&s, path, text, &o) : session_open_file(&s, path, &o);
  ck_assert_msg(rc == 0, "%s", s.error);
  FILE *f = tmpfile();
  ck_assert_ptr_nonnull(f);
  rc = gradcheck_model(&s, 1, f);
  rewind(f);
  size_t n = fread(report, 1, cap - 1, f);
  report[n] = 0;
  fclose(f);
  if (rc && s.error[0])
    strncat(report, s.error, cap - strlen(report) - 1);
  session_close(&s);
  return rc;
}

static const char *const examples[] = {"mlp.kiln", "linear_toy.kiln", "filters.kiln",
                                       "mnist_cnn.kiln"};

START_TEST(examples_pass) {
  static char report[16384];
  char path[512];
  snprintf(path, sizeof path, EXAMPLES "%s", examples[_i]);
  int rc = gradcheck(path, NULL, report, sizeof report);
  ck_assert_msg(rc == 0 && strstr(report, "gradcheck: OK\n"), "%s", report);
  ck_assert_msg(strstr(report, "adjoint identity <J v, w> = <v, J^T w>: "), "%s", report);
}
END_TEST

/* Nearly every op of the language in one model (elementwise math, activations, conv1d, group
 * and layer normalisation, both 1-D pools, maxout, softmax, the losses, gather, one_hot, slicing,
 * transpose): gradients, directions and every op's adjoint identity. */
static const char zoo[] =
    "input x: f64[B, 4, 6]\n"
    "input label: i32[B]\n"
    "param w: f64[4, 6] = 0.5\n"
    "h = x * w\n"
    "e = sin(h) + cos(h) + tan(h * 0.3) + atan(h) + erf(h) + abs(h) + softplus(h) + gelu(h)\n"
    "e = e + elu(h) + clamp(h, min=-0.3, max=0.4) + max(h, h * 0.5) + min(h, 0.2) + sigmoid(h)\n"
    "e = e + tanh(h) + sqrt(h * h + 1) + exp(h * 0.1) + log(h * h + 1) + leaky_relu(h) + relu(h)\n"
    "e = e + sign(h) + step(h) + h ^ 2\n"
    "c = conv1d(e, out=6, kernel=3, pad=1) as conv\n"
    "c = groupnorm(c, 2) as gn\n"
    "p = maxpool1d(c, kernel=3, stride=2) + avgpool1d(c, kernel=3, stride=2)\n"
    "m = maxout(p, 2)\n"
    "f = flatten(m)\n"
    "q = layernorm(f) as ln\n"
    "logits = linear(q, out=5) as fc\n"
    "s = softmax(logits) + log_softmax(logits) * 0.1\n"
    "loss = cross_entropy(logits, label) + nll(log_softmax(logits), label) + hinge(logits, label) + mean(s * s) + sum(gather(logits, 1, reshape(label, shape=[-1, 1]))) * 0.01 + mean(one_hot(label, 5, dtype=f64) * logits) + mean(transpose(f)[1:3, :])\n"
    "minimize loss\n"
    "train { batch = 3 }\n";

START_TEST(op_zoo_passes) {
  static char report[16384];
  int rc = gradcheck("zoo.kiln", zoo, report, sizeof report);
  ck_assert_msg(rc == 0 && strstr(report, "gradcheck: OK\n"), "%s", report);
}
END_TEST

static const char cnn[] =
    "input x: f64[B, 2, 6, 6]\ninput label: i32[B]\n"
    "h = maxpool2d(tanh(conv2d(x, out=3, kernel=3, pad=1) as conv), kernel=3, stride=2)\n"
    "logits = linear(flatten(h), out=4) as fc\n"
    "loss = cross_entropy(logits, label)\nminimize loss\n";

/* A vector-Jacobian rule doubled on purpose: the adjoint identity names that op and its line,
 * and the gradients of what it feeds disagree with finite differences. */
START_TEST(broken_rule_is_named) {
  static char report[16384];
  ad_broken_op = OP_TANH;
  int rc = gradcheck("broken.kiln", cnn, report, sizeof report);
  ad_broken_op = OP_COUNT;
  ck_assert_int_eq(rc, 1);
  ck_assert_msg(strstr(report, "gradcheck: FAILED: parameter 'conv.weight' element "), "%s",
                report);
  ck_assert_msg(strstr(report, "  FAILED\n"), "%s", report);
  /* the parameters after it are right; the adjoint identity names tanh at line 3 */
  ck_assert_msg(strstr(report, "(tanh at line 3)  FAILED"), "%s", report);
  ad_broken_op = OP_MAXPOOL2D;
  rc = gradcheck("broken.kiln", cnn, report, sizeof report);
  ad_broken_op = OP_COUNT;
  ck_assert_int_eq(rc, 1);
  ck_assert_msg(strstr(report, "(maxpool2d at line 3)  FAILED"), "%s", report);
  /* and with nothing broken the same model passes */
  rc = gradcheck("fine.kiln", cnn, report, sizeof report);
  ck_assert_msg(rc == 0, "%s", report);
}
END_TEST

/* At a kink the one-sided slopes differ: relu at exactly 0 has gradient 0 (PyTorch's choice)
 * and a central difference of 1/2. gradcheck says which parameter and element. */
START_TEST(kink_is_reported) {
  static char report[16384];
  int rc = gradcheck("kink.kiln",
                     "input x: f64[B, 3]\nparam w: f64[3] = [0, 1, -1]\n"
                     "loss = sum(relu(w) * x) + sum(w * w)\nminimize loss\n",
                     report, sizeof report);
  ck_assert_int_eq(rc, 1);
  ck_assert_msg(strstr(report, "gradcheck: FAILED: parameter 'w' element 0: reverse mode 0, "
                               "finite difference "), "%s", report);
}
END_TEST

static Suite *gradcheck_suite(void) {
  Suite *s = suite_create("gradcheck");
  TCase *tc = tcase_create("gradcheck");
  tcase_set_timeout(tc, 600);
  tcase_add_loop_test(tc, examples_pass, 0, (int)(sizeof examples / sizeof *examples));
  tcase_add_test(tc, op_zoo_passes);
  tcase_add_test(tc, broken_rule_is_named);
  tcase_add_test(tc, kink_is_reported);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(gradcheck_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
