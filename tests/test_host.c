/*
 * test_host.c — include/kiln.h as a host program trains with it: compile a model into a trainer,
 * read and write its tensors by name, run train / grad / apply / eval steps on the program's own
 * buffers, save and load checkpoints, and get every mistake back as a status and a message.
 * Only the public header is used.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "kiln.h"

enum { BATCH = 16, PIXELS = 64, CLASSES = 4 };

/* A small MLP whose step is quick to compile; dropout and batchnorm make train and eval differ. */
static const char mlp[] =
    "model tiny\n"
    "input image: f32[B, 64] from images / 255\n"
    "input label: i32[B] from labels\n"
    "hidden = linear(image, out=12)\n"
    "logits = linear(relu(batchnorm(hidden) as bn), out=4) as out\n"
    "loss = cross_entropy(logits, label)\n"
    "output logits\n"
    "minimize loss\n"
    "train { optimizer = adam(lr=0.01)  batch = 16  seed = 7 }\n";

/* One fixed batch: pixel values in [0, 1), labels a function of them so there is something to
 * learn. */
static float images[BATCH * PIXELS];
static int32_t labels[BATCH];

static void make_data(void) {
  uint32_t x = 12345;
  for (int i = 0; i < BATCH * PIXELS; i++) {
    x = x * 1664525u + 1013904223u;
    images[i] = (float)(x >> 8) / 16777216.0f;
  }
  for (int n = 0; n < BATCH; n++)
    labels[n] = images[n * PIXELS] > 0.5f ? (images[n * PIXELS + 1] > 0.5f ? 3 : 2)
                                          : (images[n * PIXELS + 2] > 0.5f ? 1 : 0);
}

static kiln_feed feeds[2];
static const kiln_feed *batch_of(int64_t b) {
  feeds[0] = (kiln_feed){"image", images, (size_t)b * PIXELS * sizeof(float)};
  feeds[1] = (kiln_feed){"label", labels, (size_t)b * sizeof(int32_t)};
  return feeds;
}

static kiln_model *model(void) {
  kiln_model *m;
  ck_assert_msg(kiln_model_from_string("tiny.kiln", mlp, &m) == KILN_OK, "%s", kiln_last_error());
  return m;
}

static kiln_trainer *compile(kiln_model *m, kiln_backend backend, int64_t seed) {
  kiln_options o;
  kiln_options_init(&o);
  o.backend = backend;
  o.seed = seed;
  kiln_trainer *t;
  ck_assert_msg(kiln_compile(m, &o, &t) == KILN_OK, "%s", kiln_last_error());
  return t;
}

/* Every persistent tensor (parameters, state, optimizer state) of t, concatenated. */
static size_t persistent(kiln_trainer *t, unsigned char *out, size_t cap) {
  size_t used = 0;
  for (int i = 0; i < kiln_tensor_count(t); i++) {
    kiln_tensor_info info;
    ck_assert_int_eq(kiln_tensor_at(t, i, &info), KILN_OK);
    if (info.role == KILN_ROLE_INPUT || info.role == KILN_ROLE_OUTPUT)
      continue;
    ck_assert_uint_le(used + info.bytes, cap);
    ck_assert_int_eq(kiln_get(t, info.name, out + used, info.bytes), KILN_OK);
    used += info.bytes;
  }
  return used;
}

enum { STATE_CAP = 1 << 16 };

/* A small CNN: its convolutions run as tasks, so a trainer has threads to choose. */
static const char cnn[] =
    "model tinycnn\n"
    "input image: f32[B, 1, 8, 8] from images / 255\n"
    "input label: i32[B] from labels\n"
    "c = conv2d(image, out=8, kernel=3, pad=1)\n"
    "logits = linear(flatten(relu(c)), out=4) as out\n"
    "loss = cross_entropy(logits, label)\n"
    "minimize loss\n"
    "train { optimizer = adam(lr=0.01)  batch = 16  seed = 7 }\n";

/* The small CNN compiled for at most two threads. */
static kiln_trainer *compile_cnn(void) {
  kiln_model *m;
  ck_assert_msg(kiln_model_from_string("tinycnn.kiln", cnn, &m) == KILN_OK, "%s",
                kiln_last_error());
  kiln_options o;
  kiln_options_init(&o);
  o.threads = 2;
  kiln_trainer *t;
  ck_assert_msg(kiln_compile(m, &o, &t) == KILN_OK, "%s", kiln_last_error());
  kiln_model_free(m);
  return t;
}

/* A step after the first touches no new page: the arena, its scratch, the pool's threads (their
 * stacks prefaulted) and the program are all in place; no allocation or first touch inside the
 * step (a page fault costs microseconds, and the step was once 3.5% page faults). */
START_TEST(steps_take_no_page_faults) {
  make_data();
  kiln_trainer *t = compile_cnn();
  double loss;
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(kiln_train_step(t, BATCH, batch_of(BATCH), 2, &loss), KILN_OK);
    ck_assert_int_eq(kiln_eval_step(t, BATCH, batch_of(BATCH), 2, &loss, NULL, 0), KILN_OK);
  }
  struct rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  for (int i = 0; i < 40; i++) {
    ck_assert_int_eq(kiln_train_step(t, BATCH, batch_of(BATCH), 2, &loss), KILN_OK);
    ck_assert_int_eq(kiln_eval_step(t, BATCH, batch_of(BATCH), 2, &loss, NULL, 0), KILN_OK);
  }
  getrusage(RUSAGE_SELF, &after);
  /* Zero, as a rule; the kernel's own memory management (this VM reclaims cold pages) now and
   * then adds a few, where a fault inside every step would add 80. */
  long faults = after.ru_minflt - before.ru_minflt + after.ru_majflt - before.ru_majflt;
#if defined(__SANITIZE_ADDRESS__)
  /* AddressSanitizer's own fake stack frames and shadow take fresh pages as threads move. */
  (void)faults;
#else
  ck_assert_msg(faults < 40, "%ld page faults in 40 train and 40 eval steps", faults);
#endif
  kiln_trainer_free(t);
}
END_TEST

/* The thread count is the host's to change between steps, within what the trainer was compiled
 * for, and changes no bit: a trainer on one thread and one on two end three steps with the same
 * parameters and optimizer state. */
START_TEST(threads_change_no_result) {
  make_data();
  kiln_trainer *a = compile_cnn(), *b = compile_cnn();
  ck_assert_int_eq(kiln_threads(a), 2);
  ck_assert_int_eq(kiln_set_threads(a, 1), KILN_OK);
  ck_assert_int_eq(kiln_threads(a), 1);
  ck_assert_int_eq(kiln_set_threads(b, 7), KILN_OK); /* clamped to what it was compiled for */
  ck_assert_int_eq(kiln_threads(b), 2);
  ck_assert_int_eq(kiln_set_threads(NULL, 1), KILN_ERROR);
  ck_assert_ptr_nonnull(strstr(kiln_last_error(), "kiln_set_threads"));
  double la, lb;
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(kiln_train_step(a, BATCH, batch_of(BATCH), 2, &la), KILN_OK);
    ck_assert_int_eq(kiln_train_step(b, BATCH, batch_of(BATCH), 2, &lb), KILN_OK);
    ck_assert_msg(memcmp(&la, &lb, sizeof la) == 0, "step %d: loss %.17g on 1 thread, %.17g on 2",
                  i, la, lb);
  }
  static unsigned char sa[STATE_CAP], sb[STATE_CAP];
  size_t na = persistent(a, sa, sizeof sa), nb = persistent(b, sb, sizeof sb);
  ck_assert(na == nb && na > 0 && memcmp(sa, sb, na) == 0);
  kiln_trainer_free(a);
  kiln_trainer_free(b);
}
END_TEST

START_TEST(trains_on_host_buffers) {
  make_data();
  kiln_model *m = model();
  kiln_trainer *t = compile(m, KILN_BACKEND_DEFAULT, -1);
  kiln_model_free(m); /* the trainer does not need the model */
  ck_assert_int_eq(kiln_trainer_batch(t), BATCH);
  double lr;
  ck_assert_int_eq(kiln_get_scalar(t, "lr", &lr), KILN_OK);
  ck_assert_double_eq_tol(lr, 0.01, 1e-9); /* the model's learning rate, set at compile */
  double first, loss = 0;
  ck_assert_int_eq(kiln_train_step(t, BATCH, batch_of(BATCH), 2, &first), KILN_OK);
  ck_assert(isfinite(first) && first > 0.5);
  for (int i = 0; i < 60; i++)
    ck_assert_int_eq(kiln_train_step(t, BATCH, batch_of(BATCH), 2, &loss), KILN_OK);
  ck_assert_msg(loss < 0.5 * first, "loss %g after 61 steps, first %g", loss, first);
  double step;
  ck_assert_int_eq(kiln_get_scalar(t, "adam.step", &step), KILN_OK);
  ck_assert_double_eq(step, 61);
  /* Evaluation on fewer examples than compiled: the logits of 5 examples. */
  float logits[5 * CLASSES];
  double eval_loss;
  ck_assert_int_eq(kiln_eval_step(t, 5, batch_of(5), 2, &eval_loss, logits, sizeof logits),
                   KILN_OK);
  ck_assert(isfinite(eval_loss));
  int right = 0;
  for (int n = 0; n < 5; n++) {
    int best = 0;
    for (int c = 1; c < CLASSES; c++)
      if (logits[n * CLASSES + c] > logits[n * CLASSES + best])
        best = c;
    right += best == labels[n];
  }
  ck_assert_int_ge(right, 4);
  kiln_trainer_free(t);
}
END_TEST

/* Same seed, same parameters; the seed option overrides the model's. */
START_TEST(initialised_from_the_seed) {
  kiln_model *m = model();
  kiln_trainer *a = compile(m, KILN_BACKEND_DEFAULT, -1), *b = compile(m, KILN_BACKEND_DEFAULT, 7),
               *c = compile(m, KILN_BACKEND_DEFAULT, 8);
  static unsigned char sa[STATE_CAP], sb[STATE_CAP], sc[STATE_CAP];
  size_t n = persistent(a, sa, STATE_CAP);
  ck_assert_uint_eq(persistent(b, sb, STATE_CAP), n);
  ck_assert_uint_eq(persistent(c, sc, STATE_CAP), n);
  ck_assert_int_eq(memcmp(sa, sb, n), 0);
  ck_assert_int_ne(memcmp(sa, sc, n), 0);
  /* Running statistics start as PyTorch's: mean 0, variance 1. */
  float var[12];
  ck_assert_int_eq(kiln_get(a, "bn.running_var", var, sizeof var), KILN_OK);
  ck_assert_float_eq(var[0], 1.0f);
  ck_assert_float_eq(var[11], 1.0f);
  kiln_trainer_free(a);
  kiln_trainer_free(b);
  kiln_trainer_free(c);
  kiln_model_free(m);
}
END_TEST

/* grad then apply is train, bit for bit; between them the host owns the gradients. */
START_TEST(grad_then_apply_is_train) {
  make_data();
  kiln_model *m = model();
  kiln_trainer *a = compile(m, KILN_BACKEND_DEFAULT, -1), *b = compile(m, KILN_BACKEND_DEFAULT, -1);
  double la, lb;
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(kiln_train_step(a, BATCH, batch_of(BATCH), 2, &la), KILN_OK);
    ck_assert_int_eq(kiln_grad_step(b, BATCH, batch_of(BATCH), 2, &lb), KILN_OK);
    ck_assert_int_eq(kiln_apply_step(b), KILN_OK);
    ck_assert(la == lb);
  }
  float wa[12 * 64], wb[12 * 64];
  ck_assert_int_eq(kiln_get(a, "hidden.weight", wa, sizeof wa), KILN_OK);
  ck_assert_int_eq(kiln_get(b, "hidden.weight", wb, sizeof wb), KILN_OK);
  ck_assert_int_eq(memcmp(wa, wb, sizeof wa), 0);
  /* A zeroed gradient leaves the weight where Adam's momentum alone takes it; doubling it
   * changes the result: the host's writes are what apply reads. */
  float g[12 * 64];
  ck_assert_int_eq(kiln_grad_step(b, BATCH, batch_of(BATCH), 2, NULL), KILN_OK);
  ck_assert_int_eq(kiln_get(b, "grad.hidden.weight", g, sizeof g), KILN_OK);
  float norm = 0;
  for (int i = 0; i < 12 * 64; i++)
    norm += g[i] * g[i];
  ck_assert(norm > 0);
  for (int i = 0; i < 12 * 64; i++)
    g[i] *= 2;
  ck_assert_int_eq(kiln_set(b, "grad.hidden.weight", g, sizeof g), KILN_OK);
  ck_assert_int_eq(kiln_apply_step(b), KILN_OK);
  ck_assert_int_eq(kiln_train_step(a, BATCH, batch_of(BATCH), 2, NULL), KILN_OK);
  ck_assert_int_eq(kiln_get(a, "hidden.weight", wa, sizeof wa), KILN_OK);
  ck_assert_int_eq(kiln_get(b, "hidden.weight", wb, sizeof wb), KILN_OK);
  ck_assert_int_ne(memcmp(wa, wb, sizeof wa), 0);
  kiln_trainer_free(a);
  kiln_trainer_free(b);
  kiln_model_free(m);
}
END_TEST

/* Two trainers in one process, stepped in turn, end exactly where each alone does. */
START_TEST(two_trainers_are_independent) {
  make_data();
  kiln_model *m = model();
  kiln_trainer *alone = compile(m, KILN_BACKEND_DEFAULT, 3);
  double want[5];
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(kiln_train_step(alone, BATCH, batch_of(BATCH), 2, &want[i]), KILN_OK);
  kiln_trainer *a = compile(m, KILN_BACKEND_DEFAULT, 3), *b = compile(m, KILN_BACKEND_DEFAULT, 4);
  ck_assert_int_eq(kiln_set_scalar(b, "lr", 0.5), KILN_OK); /* b diverges from a */
  for (int i = 0; i < 5; i++) {
    double la, lb;
    ck_assert_int_eq(kiln_train_step(a, BATCH, batch_of(BATCH), 2, &la), KILN_OK);
    ck_assert_int_eq(kiln_train_step(b, BATCH - 3, batch_of(BATCH - 3), 2, &lb), KILN_OK);
    ck_assert(la == want[i]);
  }
  kiln_trainer_free(alone);
  kiln_trainer_free(a);
  kiln_trainer_free(b);
  kiln_model_free(m);
}
END_TEST

/* The JIT and the system compiler give the same bits. */
START_TEST(backends_agree) {
  if (!kiln_has_backend(KILN_BACKEND_JIT))
    return;
  make_data();
  kiln_model *m = model();
  kiln_trainer *j = compile(m, KILN_BACKEND_JIT, -1), *c = compile(m, KILN_BACKEND_CC, -1);
  for (int i = 0; i < 3; i++) {
    double lj, lc;
    ck_assert_int_eq(kiln_train_step(j, BATCH, batch_of(BATCH), 2, &lj), KILN_OK);
    ck_assert_int_eq(kiln_train_step(c, BATCH, batch_of(BATCH), 2, &lc), KILN_OK);
    ck_assert(lj == lc);
  }
  static unsigned char sj[STATE_CAP], sc[STATE_CAP];
  size_t n = persistent(j, sj, STATE_CAP);
  ck_assert_uint_eq(persistent(c, sc, STATE_CAP), n);
  ck_assert_int_eq(memcmp(sj, sc, n), 0);
  kiln_trainer_free(j);
  kiln_trainer_free(c);
  kiln_model_free(m);
}
END_TEST

START_TEST(checkpoints_round_trip) {
  make_data();
  kiln_model *m = model();
  kiln_trainer *a = compile(m, KILN_BACKEND_DEFAULT, -1), *b = compile(m, KILN_BACKEND_DEFAULT, 99);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(kiln_train_step(a, BATCH, batch_of(BATCH), 2, NULL), KILN_OK);
  char path[] = "/tmp/kiln-host-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  ck_assert_int_eq(kiln_save(a, path), KILN_OK);
  ck_assert_int_eq(kiln_load(b, path), KILN_OK);
  float oa[BATCH * CLASSES], ob[BATCH * CLASSES];
  double la, lb;
  ck_assert_int_eq(kiln_eval_step(a, BATCH, batch_of(BATCH), 2, &la, oa, sizeof oa), KILN_OK);
  ck_assert_int_eq(kiln_eval_step(b, BATCH, batch_of(BATCH), 2, &lb, ob, sizeof ob), KILN_OK);
  ck_assert_int_eq(memcmp(oa, ob, sizeof oa), 0);
  ck_assert(la == lb);
  unlink(path);
  ck_assert_int_eq(kiln_load(b, path), KILN_ERROR);
  ck_assert_ptr_nonnull(strstr(kiln_last_error(), path));
  kiln_trainer_free(a);
  kiln_trainer_free(b);
  kiln_model_free(m);
}
END_TEST

/* With a cache directory, the second compile of a model loads what the first stored, and trains
 * to the same bits. */
START_TEST(cache_dir_option) {
  make_data();
  char dir[] = "/tmp/kiln-host-cache-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  kiln_model *m = model();
  kiln_options o;
  kiln_options_init(&o);
  o.cache_dir = dir;
  kiln_trainer *a, *b;
  ck_assert_msg(kiln_compile(m, &o, &a) == KILN_OK, "%s", kiln_last_error());
  ck_assert_msg(kiln_compile(m, &o, &b) == KILN_OK, "%s", kiln_last_error());
  char cmd[128];
  snprintf(cmd, sizeof cmd, "test $(ls %s | wc -l) = 1", dir);
  ck_assert_int_eq(system(cmd), 0); /* one entry, no temporary left */
  double la, lb;
  ck_assert_int_eq(kiln_train_step(a, BATCH, batch_of(BATCH), 2, &la), KILN_OK);
  ck_assert_int_eq(kiln_train_step(b, BATCH, batch_of(BATCH), 2, &lb), KILN_OK);
  ck_assert(la == lb);
  kiln_trainer_free(a);
  kiln_trainer_free(b);
  kiln_model_free(m);
  snprintf(cmd, sizeof cmd, "rm -r %s", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(mistakes_are_values) {
  make_data();
  kiln_model *m = model();
  kiln_trainer *t = compile(m, KILN_BACKEND_DEFAULT, -1);
  float w[12 * 64];
  ck_assert_int_eq(kiln_get(t, "hiden.weight", w, sizeof w), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(), "error: kiln_get: model 'tiny' has no tensor named "
                                      "'hiden.weight'\n");
  ck_assert_int_eq(kiln_set(t, "hidden.weight", w, 100), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "error: kiln_set: tensor 'hidden.weight' is f32[12, 64] (3072 bytes); got 100 "
                   "bytes\n");
  ck_assert_int_eq(kiln_get_scalar(t, "hidden.bias", NULL), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "error: kiln_get_scalar: tensor 'hidden.bias' is f32[12], not a scalar\n");
  ck_assert_int_eq(kiln_train_step(t, BATCH + 1, batch_of(BATCH + 1), 2, NULL), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(), "error: kiln_train_step: batch 17 is outside 1..16, the "
                                      "largest this trainer was compiled for\n");
  kiln_feed wrong[2] = {{"image", images, 100}, {"label", labels, 8 * sizeof(int32_t)}};
  ck_assert_int_eq(kiln_train_step(t, 8, wrong, 2, NULL), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(), "error: kiln_train_step: input 'image' is f32[8, 64] for "
                                      "batch 8: 2048 bytes; got 100 bytes\n");
  ck_assert_int_eq(kiln_grad_step(t, 8, batch_of(8), 1, NULL), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(),
                   "error: kiln_grad_step: input 'label' (i32[8]) is missing\n");
  kiln_feed extra[3] = {feeds[0], feeds[1], {"pixels", images, 4}};
  ck_assert_int_eq(kiln_train_step(t, 8, extra, 3, NULL), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(), "error: kiln_train_step: 'pixels' is not an input of this "
                                      "step (its inputs: 'image', 'label')\n");
  float out[3];
  ck_assert_int_eq(kiln_eval_step(t, 8, batch_of(8), 2, NULL, out, sizeof out), KILN_ERROR);
  ck_assert_str_eq(kiln_last_error(), "error: kiln_eval_step: the output is f32[8, 4] for batch "
                                      "8: 128 bytes; got 12 bytes\n");
  kiln_options o;
  kiln_options_init(&o);
  o.threads = -2;
  kiln_trainer *bad = (kiln_trainer *)1;
  ck_assert_int_eq(kiln_compile(m, &o, &bad), KILN_ERROR);
  ck_assert_ptr_null(bad);
  ck_assert_str_eq(kiln_last_error(), "error: kiln_compile: threads must be in 0..256, got -2\n");
  /* A good call clears the message; the trainer is unharmed by the failures. */
  ck_assert_int_eq(kiln_train_step(t, 8, batch_of(8), 2, NULL), KILN_OK);
  ck_assert_str_eq(kiln_last_error(), "");
  kiln_trainer_free(t);
  kiln_model_free(m);
}
END_TEST

void kiln_test_fail_alloc_after(long n); /* src/base/util.c: fault injection */

/* SQLite's habit over compile and step: the 1st, 2nd, 3rd ... allocation of kiln's compiler
 * fails in turn; each failure comes back as "out of memory" with nothing leaked (LeakSanitizer in
 * CI), until the budget suffices and the trainer steps. */
START_TEST(allocation_failures_unwind) {
  make_data();
  kiln_model *m = model();
  long n;
  for (n = 0; n < 100000; n++) {
    kiln_trainer *t = NULL;
    kiln_options o;
    kiln_options_init(&o);
    o.backend = KILN_BACKEND_CC; /* the quickest compile for the one that succeeds */
    kiln_test_fail_alloc_after(n);
    kiln_status st = kiln_compile(m, &o, &t);
    kiln_test_fail_alloc_after(-1);
    if (st == KILN_OK) {
      ck_assert_int_eq(kiln_train_step(t, BATCH, batch_of(BATCH), 2, NULL), KILN_OK);
      kiln_trainer_free(t);
      break;
    }
    ck_assert_ptr_null(t);
    ck_assert_ptr_nonnull(strstr(kiln_last_error(), "out of memory"));
  }
  ck_assert_msg(n > 10 && n < 100000, "compile needed %ld allocations", n);
  kiln_model_free(m);
}
END_TEST

static Suite *host_suite(void) {
  Suite *s = suite_create("host");
  TCase *tc = tcase_create("host");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, trains_on_host_buffers);
  tcase_add_test(tc, threads_change_no_result);
  tcase_add_test(tc, steps_take_no_page_faults);
  tcase_add_test(tc, initialised_from_the_seed);
  tcase_add_test(tc, grad_then_apply_is_train);
  tcase_add_test(tc, two_trainers_are_independent);
  tcase_add_test(tc, backends_agree);
  tcase_add_test(tc, checkpoints_round_trip);
  tcase_add_test(tc, cache_dir_option);
  tcase_add_test(tc, mistakes_are_values);
  tcase_add_test(tc, allocation_failures_unwind);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(host_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
