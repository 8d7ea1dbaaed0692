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
  ck_assert_ptr_nonnull(strstr(c, "#define KILN_ABI_VERSION 6"));
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


/* s without its C comments (which name model lines), in place. */
static void drop_comments(char *s) {
  char *w = s;
  for (const char *r = s; *r;) {
    if (r[0] == '/' && r[1] == '*') {
      const char *e = strstr(r + 2, "*/");
      r = e ? e + 2 : r + strlen(r);
    } else {
      *w++ = *r++;
    }
  }
  *w = 0;
}

/* The seed's CNN built with C calls is examples/mnist_cnn.kiln: the same parameters, in the same
 * order, under the same names, and the same tensors in the same places of the arena. */
START_TEST(builder_makes_the_cnn) {
  kiln_builder *b;
  ck_assert_int_eq(kiln_builder_new("mnist_cnn", &b), KILN_OK);
  kiln_var image, label, x, logits, loss;
  ck_assert_int_eq(kiln_input(b, "image", KILN_F32, 4, (int64_t[]){KILN_BATCH, 1, 28, 28},
                              "images", 1.0 / 255, &image), KILN_OK);
  ck_assert_int_eq(kiln_input(b, "label", KILN_I32, 1, (int64_t[]){KILN_BATCH}, "labels", 1,
                              &label), KILN_OK);
  kiln_conv2d(b, "conv1", image, 8, 3, 0, 1, &x);
  kiln_batchnorm(b, "bn1", x, &x);
  kiln_relu(b, x, &x);
  kiln_maxpool2d(b, x, 2, 0, &x);
  kiln_conv2d(b, "conv2", x, 32, 5, 0, 2, &x);
  kiln_batchnorm(b, "bn2", x, &x);
  kiln_relu(b, x, &x);
  kiln_maxpool2d(b, x, 2, 0, &x);
  kiln_flatten(b, x, &x);
  kiln_linear(b, "fc1", x, 600, &x);
  kiln_relu(b, x, &x);
  kiln_linear(b, "fc2", x, 10, &logits);
  kiln_cross_entropy(b, logits, label, &loss);
  kiln_output(b, logits);
  kiln_minimize(b, loss);
  kiln_train_call(b, "optimizer", "adam", (kiln_option[]){{"lr", 1e-3, NULL}}, 1);
  kiln_train_number(b, "batch", 64);
  kiln_train_number(b, "epochs", 2);
  ck_assert_int_eq(kiln_train_number(b, "seed", 1), KILN_OK);
  kiln_model *built, *file;
  ck_assert_msg(kiln_builder_finish(b, &built) == KILN_OK, "%s", kiln_last_error());
  ck_assert_int_eq(kiln_model_from_file(KILN_SOURCE_DIR "/examples/mnist_cnn.kiln", &file),
                   KILN_OK);
  ck_assert_int_eq(kiln_param_count(built), 954002);
  ck_assert_int_eq(kiln_param_tensors(built), kiln_param_tensors(file));
  for (int i = 0; i < kiln_param_tensors(file); i++) {
    const char *nb, *nf;
    int64_t db[6], df[6];
    ck_assert_int_eq(kiln_param_info(built, i, &nb, db), kiln_param_info(file, i, &nf, df));
    ck_assert_str_eq(nb, nf);
  }
  char *cb, *cf;
  ck_assert_int_eq(kiln_emit_c(built, 0, &cb), KILN_OK);
  ck_assert_int_eq(kiln_emit_c(file, 0, &cf), KILN_OK);
  drop_comments(cb);
  drop_comments(cf);
  /* Temporaries are named after the variables that hold them, so compare the program's tensor
   * table (every tensor a driver sees, with its offset) and its description. */
  const char *tb = strstr(cb, "static const kiln_tensor kiln_tensors["),
             *tf = strstr(cf, "static const kiln_tensor kiln_tensors[");
  ck_assert_ptr_nonnull(tb);
  ck_assert_ptr_nonnull(tf);
  ck_assert_msg(strcmp(tb, tf) == 0, "the built model's tensors differ from the model file's");
  free(cb);
  free(cf);
  kiln_model_free(built);
  kiln_model_free(file);
  kiln_builder_free(b);
}
END_TEST

START_TEST(builder_writes_the_language) {
  kiln_builder *b;
  ck_assert_int_eq(kiln_builder_new("tiny", &b), KILN_OK);
  kiln_var x, y, loss;
  kiln_input(b, "x", KILN_F64, 2, (int64_t[]){KILN_BATCH, 3}, NULL, 1, &x);
  kiln_linear(b, "fc", x, 2, &y);
  kiln_call(b, "leaky_relu", NULL, &y, 1, (kiln_option[]){{"slope", 0.25, NULL}}, 1, &y);
  kiln_call(b, "mean", NULL, &y, 1, NULL, 0, &loss);
  kiln_minimize(b, loss);
  kiln_train_call(b, "optimizer", "sgd", (kiln_option[]){{"lr", 0.1, NULL},
                  {"nesterov", 0, "true"}, {"momentum", 0.9, NULL}}, 3);
  kiln_train_call(b, "early_stop", "patience", (kiln_option[]){{NULL, 3, NULL}}, 1);
  kiln_train_call(b, "init", "he", NULL, 0);
  kiln_train_call(b, "regularize", "l2", (kiln_option[]){{NULL, 1e-4, NULL}}, 1);
  ck_assert_int_eq(kiln_train_call(b, "regularize", "max_norm", (kiln_option[]){{NULL, 3, NULL}},
                                   1), KILN_OK);
  ck_assert_str_eq(kiln_builder_source(b),
                   "model tiny\n"
                   "input x: f64[B, 3]\n"
                   "_0 = x\n"
                   "_1 = linear(_0, out=2) as fc\n"
                   "_2 = leaky_relu(_1, slope=0.25)\n"
                   "_3 = mean(_2)\n"
                   "minimize _3\n"
                   "train {\n"
                   "  optimizer = sgd(lr=0.10000000000000001, nesterov=true, momentum=0.90000000000000002)\n"
                   "  early_stop = patience(3)\n"
                   "  init = he\n"
                   "  regularize = [l2(0.0001), max_norm(3)]\n"
                   "}\n");
  kiln_model *m;
  ck_assert_msg(kiln_builder_finish(b, &m) == KILN_OK, "%s", kiln_last_error());
  kiln_model_free(m);
  kiln_builder_free(b);
}
END_TEST

/* Arguments are checked at the call; the first failure sticks; shape errors show the call's line. */
START_TEST(builder_errors) {
  kiln_builder *b;
  ck_assert_int_eq(kiln_builder_new("bad name", &b), KILN_ERROR);
  ck_assert_ptr_null(b);
  ck_assert_ptr_nonnull(strstr(kiln_last_error(), "'bad name' is not an identifier"));
  ck_assert_int_eq(kiln_builder_new("net", &b), KILN_OK);
  kiln_var x, y;
  ck_assert_int_eq(kiln_input(b, "x", KILN_F32, 2, (int64_t[]){KILN_BATCH, 0}, NULL, 1, &x),
                   KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "error: kiln_input 'x': dimension 1 is 0 (> 0, or KILN_BATCH)\n");
  /* Sticky: a correct call after a failure fails with the first message. */
  ck_assert_int_eq(kiln_input(b, "x", KILN_F32, 2, (int64_t[]){KILN_BATCH, 4}, NULL, 1, &x),
                   KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "error: kiln_input 'x': dimension 1 is 0 (> 0, or KILN_BATCH)\n");
  kiln_builder_free(b);

  kiln_builder_new("net", &b);
  kiln_input(b, "x", KILN_F32, 2, (int64_t[]){KILN_BATCH, 4}, NULL, 1, &x);
  ck_assert_int_eq(kiln_relu(b, 7, &y), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(), "error: no tensor 7 in this builder (it has made 1)\n");
  kiln_builder_free(b);

  kiln_builder_new("net", &b);
  kiln_input(b, "x", KILN_F32, 2, (int64_t[]){KILN_BATCH, 4}, NULL, 1, &x);
  ck_assert_int_eq(kiln_call(b, "relu); system(\"x", NULL, &x, 1, NULL, 0, &y), KILN_ERROR);
  ck_assert_ptr_nonnull(strstr(kiln_last_error(), "is not an identifier"));
  kiln_builder_free(b);

  kiln_builder_new("net", &b);
  kiln_input(b, "x", KILN_F32, 2, (int64_t[]){KILN_BATCH, 4}, NULL, 1, &x);
  ck_assert_int_eq(kiln_linear(b, "fc", x, 3, &y), KILN_OK);
  ck_assert_int_eq(kiln_conv2d(b, "conv", y, 8, 3, 0, 1, &y), KILN_OK);
  kiln_var loss;
  kiln_call(b, "mean", NULL, &y, 1, NULL, 0, &loss);
  kiln_minimize(b, loss);
  kiln_model *m = (kiln_model *)1;
  ck_assert_int_eq(kiln_builder_finish(b, &m), KILN_ERROR);
  ck_assert_ptr_null(m);
  const char *e = kiln_last_error();
  ck_assert_msg(strncmp(e, "<net>:5:", 8) == 0 && strstr(e, "conv2d") &&
                    strstr(e, "_2 = conv2d(_1, out=8, kernel=3, pad=1) as conv\n"),
                "%s", e);
  kiln_builder_free(b);
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
  tcase_add_test(tc, builder_makes_the_cnn);
  tcase_add_test(tc, builder_writes_the_language);
  tcase_add_test(tc, builder_errors);
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
