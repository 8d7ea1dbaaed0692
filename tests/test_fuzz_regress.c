/*
 * test_fuzz_regress.c — inputs found by fuzzing (tests/fuzz/) and by probing the limits the
 * fuzzers pointed at, each fed through the public API with the exact message it must produce.
 * Before the fixes they crashed (stack overflow, signed overflow), or failed with a message
 * about the wrong thing; each test names what it guards.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln.h"
#include "runtime.h"

/* A model whose line 2 is "loss = sum(" + body + ")" around one parameter w. */
static char *model_with_loss(const char *prefix, const char *body_unit, int n, const char *mid,
                             const char *suffix_unit) {
  size_t cap = strlen(prefix) + (strlen(body_unit) + strlen(suffix_unit)) * (size_t)n +
               strlen(mid) + 64;
  char *s = malloc(cap), *p = s;
  p = stpcpy(p, prefix);
  for (int i = 0; i < n; i++) p = stpcpy(p, body_unit);
  p = stpcpy(p, mid);
  for (int i = 0; i < n; i++) p = stpcpy(p, suffix_unit);
  stpcpy(p, ")\nminimize loss\n");
  return s;
}

/* The first line of the last error ("file:line:col: error: ..."). */
static const char *first_line(void) {
  static char line[512];
  const char *e = kiln_last_error();
  size_t n = strcspn(e, "\n");
  if (n >= sizeof line) n = sizeof line - 1;
  memcpy(line, e, n);
  line[n] = 0;
  return line;
}

static void expect_model_error(const char *text, const char *first) {
  kiln_model *m = (kiln_model *)1;
  ck_assert_int_eq(kiln_model_from_string("fuzz.kiln", text, &m), KILN_ERROR);
  ck_assert_ptr_null(m);
  ck_assert_str_eq(first_line(), first);
}

static void expect_compiles(const char *text) {
  kiln_model *m;
  ck_assert_msg(kiln_model_from_string("fuzz.kiln", text, &m) == KILN_OK, "%s", kiln_last_error());
  char *c;
  ck_assert_msg(kiln_emit_c(m, 0, &c) == KILN_OK, "%s", kiln_last_error());
  free(c);
  kiln_model_free(m);
}

#define DEEP "fuzz.kiln:2:%d: error: expression nested too deeply (more than 256 levels of " \
             "brackets, calls or operators)"

/* Stack overflow in the recursive-descent parser (and lowering): 100000 '(' crashed. */
START_TEST(deep_brackets) {
  char *s = model_with_loss("param w: f32[1]\nloss = sum(", "(", 100000, "w", ")");
  char want[256];
  snprintf(want, sizeof want, DEEP, 12 + 255);  /* the 256th '(' inside sum( is level 257 */
  expect_model_error(s, want);
  free(s);
  /* Just inside the limit compiles. */
  s = model_with_loss("param w: f32[1]\nloss = sum(", "(", 250, "w", ")");
  expect_compiles(s);
  free(s);
}
END_TEST

START_TEST(deep_calls_minus_power_lists) {
  char *s = model_with_loss("param w: f32[1]\nloss = sum(", "relu(", 50000, "w", ")");
  expect_model_error(s, "fuzz.kiln:2:1287: error: expression nested too deeply (more than 256 "
                        "levels of brackets, calls or operators)");
  free(s);
  s = model_with_loss("param w: f32[1]\nloss = sum(", "-", 100000, "w", "");
  expect_model_error(s, "fuzz.kiln:2:267: error: expression nested too deeply (more than 256 "
                        "levels of brackets, calls or operators)");
  free(s);
  s = model_with_loss("param w: f32[1]\nloss = sum(w", "^1", 100000, "", "");
  expect_model_error(s, "fuzz.kiln:2:522: error: expression nested too deeply (more than 256 "
                        "levels of brackets, calls or operators)");
  free(s);
  s = model_with_loss("param w: f32[1] = ", "[", 100000, "1", "]");
  expect_model_error(s, "fuzz.kiln:1:275: error: expression nested too deeply (more than 256 "
                        "levels of brackets, calls or operators)");
  free(s);
}
END_TEST

/* A flat chain `w+w+w+...` builds a left-deep tree that lowering walks recursively. */
START_TEST(long_operator_chain) {
  char *s = model_with_loss("param w: f32[1]\nloss = sum(w", "+w", 100000, "", "");
  expect_model_error(s, "fuzz.kiln:2:522: error: expression nested too deeply (more than 256 "
                        "levels of brackets, calls or operators)");
  free(s);
  s = model_with_loss("param w: f32[1]\nloss = sum(w", "*w", 240, "", "");
  expect_compiles(s);
  free(s);
}
END_TEST

/* A 100000-character name passed the frontend and failed in the code generator with "tensor
 * name is not a valid identifier" at emit time. */
START_TEST(name_length) {
  char name[200];
  memset(name, 'a', 129);
  name[129] = 0;
  char text[1024];
  snprintf(text, sizeof text, "param %s: f32[1]\nloss = sum(%s)\nminimize loss\n", name, name);
  expect_model_error(text, "fuzz.kiln:1:7: error: name is too long (129 characters; at most 128)");
  name[128] = 0;  /* at the limit, as a layer name too (suffixes make it longer in the C) */
  snprintf(text, sizeof text,
           "input x: f32[B, 4]\nparam %s: f32[4]\nh = linear(x * %s, out=2) as %s_\n"
           "loss = sum(batchnorm(h) as b%s)\nminimize loss\ntrain { optimizer = adam() }\n",
           name, name, name + 1, name + 1);
  expect_compiles(text);
}
END_TEST

/* Signed overflow of the element count (UBSan) in plan.c and ir.c. */
START_TEST(element_count_overflow) {
  kiln_model *m;
  ck_assert_int_eq(kiln_model_from_string("fuzz.kiln",
                                          "param w: f32[2147483647, 2147483647, 2147483647]\n"
                                          "loss = sum(w)\nminimize loss\n", &m), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "fuzz.kiln:1:7: error: 'w' of shape [2147483647, 2147483647, 2147483647] would "
                   "have more than 2^40 elements (the most one tensor may have)\n"
                   "  param w: f32[2147483647, 2147483647, 2147483647]\n"
                   "        ^\n");
  expect_model_error("input x: f32[B, 2147483647, 2147483647]\nparam w: f32[1]\n"
                     "loss = sum(x * w)\nminimize loss\n",
                     "fuzz.kiln:1:7: error: 'x' of shape [B, 2147483647, 2147483647] would have "
                     "more than 2^40 elements (the most one tensor may have)");
  /* Each operand fits; the broadcast result does not. */
  expect_model_error("param a: f32[1048576, 1]\nparam b: f32[1, 2097152]\nloss = sum(a + b)\n"
                     "minimize loss\n",
                     "fuzz.kiln:3:14: error: the result of add of shape [1048576, 2097152] would "
                     "have more than 2^40 elements (the most one tensor may have)");
  /* The reshape target's count is checked without overflowing. */
  expect_model_error("param w: f32[4]\nx = reshape(w, shape=[2147483647, 2147483647, 2147483647])\n"
                     "loss = sum(x)\nminimize loss\n",
                     "fuzz.kiln:2:47: error: reshape: the target shape has more than 2^63 elements");
  /* Dimensions themselves are bounded at the type. */
  expect_model_error("param w: f32[100000000000, 100000000000]\nloss = sum(w)\nminimize loss\n",
                     "fuzz.kiln:1:14: error: a dimension must be an integer from 1 to 2147483647, "
                     "got '100000000000'");
}
END_TEST

/* The fans (PyTorch's initialiser inputs) multiplied the dimensions before the shape was checked:
 * signed overflow (UBSan) for a parameter and for a convolution's weight. */
START_TEST(fan_overflow) {
  kiln_model *m;
  ck_assert_int_eq(kiln_model_from_string("fuzz.kiln",
                                          "param w: f32[1, 1, 2147483647, 2147483647, 2147483647]\n"
                                          "loss = sum(w)\nminimize loss\n", &m), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "fuzz.kiln:1:7: error: 'w' of shape [1, 1, 2147483647, 2147483647, 2147483647] "
                   "would have more than 2^40 elements (the most one tensor may have)\n"
                   "  param w: f32[1, 1, 2147483647, 2147483647, 2147483647]\n"
                   "        ^\n");
  expect_model_error("input x: f32[B, 1, 8, 8]\n"
                     "h = conv2d(x, out=4, kernel=2147483647, pad=2147483647)\n"
                     "loss = sum(h)\nminimize loss\n",
                     "fuzz.kiln:2:5: error: 'h.weight' of shape [4, 1, 2147483647, 2147483647] "
                     "would have more than 2^40 elements (the most one tensor may have)");
  expect_model_error("input x: f32[B, 1, 8, 8]\n"
                     "h = conv2d(x, out=4, kernel=2147483647, pad=same, dilation=2147483647) as c\n"
                     "loss = sum(h)\nminimize loss\n",
                     "fuzz.kiln:2:75: error: 'c.weight' of shape [4, 1, 2147483647, 2147483647] "
                     "would have more than 2^40 elements (the most one tensor may have)");
}
END_TEST

/* A model tensor named like one kiln generates built, emitted and passed kiln check; the trainer
 * then refused its tensor table ("two tensors are named 'penalty'"). */
START_TEST(generated_name_collisions) {
  kiln_model *m;
  ck_assert_int_eq(kiln_model_from_string("fuzz.kiln",
                                          "input x: f32[B, 4]\nparam weight: f32[4]\n"
                                          "h = linear(x * weight, out=2) as grad\n"
                                          "loss = sum(h)\nminimize loss\n", &m), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "fuzz.kiln:3:34: error: 'grad.weight' is also the name of a tensor kiln "
                   "generates: the gradient of parameter 'weight' (line 2); rename it\n"
                   "  h = linear(x * weight, out=2) as grad\n"
                   "                                   ^\n");
  expect_model_error("input x: f32[B, 4]\nparam penalty: f32[4]\n"
                     "l = sum(linear(x * penalty, out=2))\nminimize l\n"
                     "train {\n  regularize = l2(1e-4)\n}\n",
                     "fuzz.kiln:2:7: error: 'penalty' is also the name of a tensor kiln generates: "
                     "the regularization penalty, an output of training; rename it");
  expect_model_error("input x: f32[B, 4]\nparam loss: f32[4]\nl = sum(x * loss)\nminimize l\n",
                     "fuzz.kiln:2:7: error: 'loss' is also the name of a tensor kiln generates: "
                     "the minimised loss, an output of training; rename it");
  expect_model_error("input lr: f32[B, 4]\nparam w: f32[4]\nl = sum(lr * w)\nminimize l\n",
                     "fuzz.kiln:1:7: error: 'lr' is also the name of a tensor kiln generates: "
                     "the learning rate, which the trainer sets; rename it");
  /* Without the regularizer there is no "penalty" output, so the name is free. */
  expect_compiles("input x: f32[B, 4]\nparam penalty: f32[4]\n"
                  "l = sum(linear(x * penalty, out=2))\nminimize l\n");
}
END_TEST

/* A one-number literal filling a large constant was printed element by element into the
 * generated C: `const c: f32[4096, 4096] = 0.5` made an 89 MB step.c that took 3.7 GB and
 * 100 s to build. The value is now kept once, whatever the shape. */
START_TEST(filled_constant_stays_small) {
  const char *text = "input x: f32[B, 4096]\nconst c: f32[4096, 4096] = 0.5\n"
                     "param w: f32[4096, 4096] = 0.25\n"
                     "loss = mean(matmul(x, c + w))\nminimize loss\n";
  kiln_model *m;
  ck_assert_msg(kiln_model_from_string("fuzz.kiln", text, &m) == KILN_OK, "%s", kiln_last_error());
  char *c;
  ck_assert_msg(kiln_emit_c(m, 4, &c) == KILN_OK, "%s", kiln_last_error());
  ck_assert_msg(strlen(c) < 200000, "step.c has %zu bytes", strlen(c));
  free(c);
  kiln_model_free(m);
}
END_TEST

/* Within the bound for batch 1, but not once the batch is bound: a clear error at emit time. */
START_TEST(batch_makes_it_too_large) {
  kiln_model *m;
  ck_assert_int_eq(kiln_model_from_string("fuzz.kiln",
                                          "input x: f32[B, 2147483647]\nparam w: f32[1]\n"
                                          "y = reshape(x, shape=[-1])\nloss = sum(y * w)\n"
                                          "minimize loss\n", &m), KILN_OK);
  char *c = (char *)1;
  ck_assert_int_eq(kiln_emit_c(m, 2147483647, &c), KILN_ERROR);
  ck_assert_ptr_null(c);
  ck_assert_str_eq(kiln_last_error(),
                   "fuzz.kiln:1:7: error: tensor x of shape [B, 2147483647] needs more than 64 TiB "
                   "for batch 2147483647\n"
                   "  input x: f32[B, 2147483647]\n"
                   "        ^\n");
  ck_assert_int_eq(kiln_emit_c(m, (int64_t)1 << 40, &c), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "error: the batch must be from 1 to 2147483647, got 1099511627776\n");
  ck_assert_int_eq(kiln_emit_c(m, 3, &c), KILN_OK);
  free(c);
  kiln_model_free(m);
}
END_TEST

/* Found by fuzz_compile: a scalar parameter the loss does not use got a bare constant as its
 * gradient, and emitting failed with "output 'grad.w' is a constant; nothing to compute" (and
 * leaked plan.c's working arrays on that path). */
START_TEST(unused_scalar_param) {
  const char *text = "input x: f32[B, 8]\nparam w: f32\nparam v: f32[8]\n"
                     "loss = mean(x * v)\nminimize loss\n";
  kiln_model *m;
  ck_assert_int_eq(kiln_model_from_string("fuzz.kiln", text, &m), KILN_OK);
  char *c;
  ck_assert_msg(kiln_emit_c(m, 4, &c) == KILN_OK, "%s", kiln_last_error());
  ck_assert_ptr_nonnull(strstr(c, "\"grad.w\""));
  free(c);
  kiln_model_free(m);
  /* The minimised fuzzer input. */
  expect_compiles("input x: f32[B, 8]\nparam w: f32# ]\nh = dropout(x)\n"
                  "h = dropout(h, p=0.25)\nk = dropout(h, 0.1) as drop\nz = dropout(k, p=0)\n"
                  "loss = mean(z * --------00000000-------------------------------3--------"
                  "---------7)\nminimize loss\n");
}
END_TEST

/* Found by fuzz_loaders: an IDX header with no items (dims[0] = 0) skipped the overflow check
 * on the item size, and 0xFFFFFFFF * 0xFFFFFF07 overflowed int64 (UBSan). */
/* Folding numbers could make an infinity or a NaN that no literal check sees. */
START_TEST(folded_constants_are_finite) {
  expect_model_error("param w: f32[2] = [-0, 0/0]\nloss = sum(w)\nminimize loss\n",
                     "fuzz.kiln:1:25: error: the constant 0 / 0 is not a finite number");
  expect_model_error("param w: f32[2]\nloss = sum(w) * (1e308 * 10)\nminimize loss\n",
                     "fuzz.kiln:2:24: error: the constant 1e+308 * 10 is not a finite number");
  expect_model_error("param w: f32[2]\nloss = sum(w) * 10 ^ 400\nminimize loss\n",
                     "fuzz.kiln:2:20: error: the constant 10 ^ 400 is not a finite number");
}
END_TEST

START_TEST(idx_empty_with_huge_items) {
  static const unsigned char file[] = {0x00, 0x00, 0x08, 0x03, 0x00, 0x00, 0x00, 0x00,
                                       0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x07};
  char path[] = "/tmp/kiln-fuzz-idx-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, file, sizeof file), (ssize_t)sizeof file);
  close(fd);
  RtIdx x;
  char err[RT_ERR_LEN], want[RT_ERR_LEN];
  ck_assert_int_eq(rt_idx_load(path, &x, err), -1);
  snprintf(want, sizeof want, "%s: header dimensions are impossibly large", path);
  ck_assert_str_eq(err, want);
  ck_assert_ptr_null(x.data);
  unlink(path);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("fuzz_regress");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, deep_brackets);
  tcase_add_test(tc, deep_calls_minus_power_lists);
  tcase_add_test(tc, long_operator_chain);
  tcase_add_test(tc, name_length);
  tcase_add_test(tc, element_count_overflow);
  tcase_add_test(tc, fan_overflow);
  tcase_add_test(tc, generated_name_collisions);
  tcase_add_test(tc, filled_constant_stays_small);
  tcase_add_test(tc, batch_makes_it_too_large);
  tcase_add_test(tc, unused_scalar_param);
  tcase_add_test(tc, folded_constants_are_finite);
  tcase_add_test(tc, idx_empty_with_huge_items);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
