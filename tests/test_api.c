/*
 * test_api.c — include/kiln.h as a C program uses it: build a model from text made at run time,
 * read its parameters, get its training step as C, and get errors back as values.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

static const char mlp[] =
    "input image: f32[B, 784] from images / 255\n"
    "input label: i32[B] from labels\n"
    "hidden = linear(image, out=32)\n"
    "logits = linear(relu(hidden), out=10) as out\n"
    "loss = cross_entropy(logits, label)\n"
    "output logits\n"
    "minimize loss\n"
    "train { optimizer = sgd(lr=0.1, momentum=0.9)  batch = 16 }\n";

START_TEST(model_from_text) {
  kiln_model *m;
  ck_assert_int_eq(kiln_model_from_string("net.kiln", mlp, &m), KILN_OK);
  ck_assert_str_eq(kiln_last_error(), "");
  ck_assert_int_eq(kiln_param_tensors(m), 4);
  ck_assert_int_eq(kiln_param_count(m), 784 * 32 + 32 + 32 * 10 + 10);
  const char *name;
  int64_t dims[6];
  ck_assert_int_eq(kiln_param_info(m, 0, &name, dims), 2);
  ck_assert_str_eq(name, "hidden.weight");
  ck_assert_int_eq(dims[0], 32);
  ck_assert_int_eq(dims[1], 784);
  ck_assert_int_eq(kiln_param_info(m, 3, &name, dims), 1);
  ck_assert_str_eq(name, "out.bias");
  ck_assert_int_eq(kiln_param_info(m, 4, &name, dims), -1);
  kiln_model_free(m);
}
END_TEST

START_TEST(emit_specialises_the_batch) {
  kiln_model *m;
  ck_assert_int_eq(kiln_model_from_string("net.kiln", mlp, &m), KILN_OK);
  char *c;
  ck_assert_int_eq(kiln_emit_c(m, 0, &c), KILN_OK);
  /* The model's batch (16) and the names in the ABI table. */
  ck_assert_ptr_nonnull(strstr(c, "const kiln_program kiln_program_desc"));
  ck_assert_ptr_nonnull(strstr(c, "\"hidden.weight\""));
  ck_assert_ptr_nonnull(strstr(c, "\"hidden.weight.momentum_buffer\""));
  ck_assert_ptr_nonnull(strstr(c, "#define KILN_ABI_VERSION 3"));
  ck_assert_ptr_nonnull(strstr(c, "  .batch = 16,\n"));
  free(c);
  ck_assert_int_eq(kiln_emit_c(m, 5, &c), KILN_OK);
  ck_assert_ptr_nonnull(strstr(c, "  .batch = 5,\n"));
  free(c);
  kiln_model_free(m);
}
END_TEST

START_TEST(errors_are_values) {
  kiln_model *m = (kiln_model *)1;
  ck_assert_int_eq(kiln_model_from_string("bad.kiln", "input x: f32[B, 3]\ny = relu(x, 2)\n", &m),
                   KILN_ERROR);
  ck_assert_ptr_null(m);
  ck_assert_str_eq(kiln_last_error(),
                   "bad.kiln:2:13: error: relu takes 1 argument, got 2\n"
                   "  y = relu(x, 2)\n"
                   "              ^\n");
  ck_assert_int_eq(kiln_model_from_file("/nonexistent/model.kiln", &m), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "error: cannot read '/nonexistent/model.kiln': No such file or directory\n");
  ck_assert_int_eq(kiln_model_from_string("x", NULL, &m), KILN_ERROR);
  /* A good call afterwards clears the message. */
  ck_assert_int_eq(kiln_model_from_string("net.kiln", mlp, &m), KILN_OK);
  ck_assert_str_eq(kiln_last_error(), "");
  kiln_model_free(m);
}
END_TEST

/* Many models built and freed in one process: nothing leaks (LeakSanitizer in CI), nothing is
 * shared between them. */
START_TEST(many_models) {
  for (int i = 0; i < 20; i++) {
    kiln_model *m;
    ck_assert_int_eq(kiln_model_from_string("net.kiln", mlp, &m), KILN_OK);
    char *c;
    ck_assert_int_eq(kiln_emit_c(m, 1 + i, &c), KILN_OK);
    free(c);
    kiln_model_free(m);
  }
}
END_TEST

void kiln_test_fail_alloc_after(long n);  /* src/base/util.c: fault injection */

/* SQLite's habit: make the 1st, 2nd, 3rd ... allocation fail in turn. Every failure must come
 * back as the error "out of memory" with nothing leaked (LeakSanitizer in CI) and no crash,
 * until the budget is large enough for the compile to succeed. */
static void fail_each_allocation(const char *text) {
  long n;
  for (n = 0; n < 100000; n++) {
    kiln_model *m = NULL;
    kiln_test_fail_alloc_after(n);
    kiln_status st = kiln_model_from_string("net.kiln", text, &m);
    kiln_test_fail_alloc_after(-1);
    if (st == KILN_OK) {
      kiln_model_free(m);
      break;
    }
    ck_assert_ptr_null(m);
    ck_assert_str_eq(kiln_last_error(), "error: out of memory\n");
  }
  ck_assert_msg(n > 10 && n < 100000, "compile needed %ld allocations", n);
}

START_TEST(allocation_failures_unwind) {
  fail_each_allocation(mlp);
  fail_each_allocation("input image: f32[B, 1, 12, 12] from images / 255\n"
                       "input label: i32[B] from labels\n"
                       "c = conv2d(image, out=4, kernel=3, pad=same)\n"
                       "h = maxpool2d(relu(batchnorm(c) as bn), kernel=2)\n"
                       "logits = linear(flatten(dropout(h, p=0.25)), out=10)\n"
                       "loss = cross_entropy(logits, label)\n"
                       "output logits\nminimize loss\n"
                       "train { optimizer = adam(lr=1e-3) }\n");
}
END_TEST

static Suite *api_suite(void) {
  Suite *s = suite_create("api");
  TCase *tc = tcase_create("api");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, model_from_text);
  tcase_add_test(tc, emit_specialises_the_batch);
  tcase_add_test(tc, errors_are_values);
  tcase_add_test(tc, many_models);
  tcase_add_test(tc, allocation_failures_unwind);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(api_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
