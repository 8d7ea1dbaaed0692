/*
 * test_jit.c — the in-process JIT (src/backend/jit.cpp) against the system compiler: the MNIST
 * CNN compiled by both backends gives bit-identical gradients, parameters and optimizer state
 * from identical starting points, at one and two threads, and the JIT's gives the same bits at
 * one, two and three threads, also with two host threads running programs at once (the tasks on
 * runtime/rt_pool.c's threads, under the sanitizers too); a compile error comes back as a
 * message naming the generated line and prints nothing; programs
 * load and unload repeatedly without leaking (ASan's leak checker runs in CI). Built only when
 * kiln has the JIT.
 */
#include <check.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "program_harness.h"

/* Bytes of tensor t at the program's batch. */
static size_t tensor_bytes(const kiln_program *p, const kiln_tensor *t) {
  return (size_t)rt_numel(t, p->batch) * (t->dtype == KILN_F64 ? 8 : 4);
}

static void run_open(Run *r, const char *model, BackendKind kind, int threads) {
  Options o;
  session_default_options(&o);
  o.backend.kind = kind;
  o.sched.threads = threads;
  run_open_with(r, model, &o);
}

/* Every tensor a step writes or keeps must agree to the bit: the arenas a and b of programs p and
 * q. */
static void require_same_arenas(const kiln_program *p, const unsigned char *a,
                                const kiln_program *q, const unsigned char *b, const char *after) {
  ck_assert_int_eq(p->ntensors, q->ntensors);
  int compared = 0;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i], *u = &q->tensors[i];
    ck_assert_str_eq(t->name, u->name);
    if (t->role == KILN_ROLE_INPUT)
      continue;
    if (t->role != KILN_ROLE_PARAM && t->role != KILN_ROLE_STATE && t->role != KILN_ROLE_OPT &&
        t->role != KILN_ROLE_GRAD && t->role != KILN_ROLE_OUTPUT)
      continue;
    ck_assert_msg(memcmp(a + t->offset, b + u->offset, tensor_bytes(p, t)) == 0,
                  "%s differs after %s", t->name, after);
    compared++;
  }
  ck_assert_int_gt(compared, 10);
}

static void require_identical(const Run *a, const Run *b, const char *after) {
  require_same_arenas(a->s.prog, a->arena, b->s.prog, b->arena, after);
}

START_TEST(cnn_bit_identical_to_cc) {
  int threads = _i + 1;
  Run jit, cc;
  double t0 = rt_now();
  run_open(&jit, KILN_SOURCE_DIR "/examples/mnist_cnn.kiln", BACKEND_JIT, threads);
  double t1 = rt_now();
  run_open(&cc, KILN_SOURCE_DIR "/examples/mnist_cnn.kiln", BACKEND_CC, threads);
  double t2 = rt_now();
  fprintf(stderr, "mnist_cnn, %d thread(s): compile and load %.2f s (jit), %.2f s (cc)\n",
          threads, t1 - t0, t2 - t1);
  ck_assert_str_eq(jit.s.c.p, cc.s.c.p);

  run_reset(&jit);
  run_reset(&cc);
  run_entry(&jit, "grad");
  run_entry(&cc, "grad");
  require_identical(&jit, &cc, "a grad step");

  run_reset(&jit);
  run_reset(&cc);
  for (int k = 0; k < 3; k++) {
    run_entry(&jit, "train");
    run_entry(&cc, "train");
  }
  require_identical(&jit, &cc, "three train steps");
  run_close(&jit);
  run_close(&cc);
}
END_TEST

/* The generated code is written to give the same bits whatever runs its tasks (cg_window.c):
 * the JIT's program without tasks (one worker), and one with tasks for three workers run on
 * one, two and three threads. */
START_TEST(cnn_same_bits_at_every_thread_count) {
  Run runs[4];
  run_open(&runs[0], KILN_SOURCE_DIR "/examples/mnist_cnn.kiln", BACKEND_JIT, 1);
  ck_assert_ptr_null(strstr(runs[0].s.c.p, "kiln_run_tasks(ex"));
  for (int k = 1; k < 4; k++) {
    run_open(&runs[k], KILN_SOURCE_DIR "/examples/mnist_cnn.kiln", BACKEND_JIT, 3);
    ck_assert_ptr_nonnull(strstr(runs[k].s.c.p, "kiln_run_tasks(ex"));
    char err[RT_ERR_LEN];
    ck_assert_msg(rt_arena_set_threads(&runs[k].be, k, err) == 0, "%s", err);
    ck_assert_int_eq(rt_arena_threads(&runs[k].be), k);
  }
  static const char *const what[] = {"", "tasks on 1 thread", "tasks on 2 threads",
                                     "tasks on 3 threads"};
  for (int k = 0; k < 4; k++) {
    run_reset(&runs[k]);
    run_entry(&runs[k], "grad");
  }
  for (int k = 1; k < 4; k++)
    require_identical(&runs[0], &runs[k], what[k]);
  for (int k = 0; k < 4; k++) {
    run_reset(&runs[k]);
    for (int step = 0; step < 3; step++)
      run_entry(&runs[k], "train");
  }
  for (int k = 1; k < 4; k++)
    require_identical(&runs[0], &runs[k], what[k]);
  for (int k = 0; k < 4; k++)
    run_close(&runs[k]);
}
END_TEST

enum { HOST_STEPS = 3 };

/* HOST_STEPS train steps of r; NULL or the first failure. */
static void *train_steps(void *arg) {
  Run *r = arg;
  static _Thread_local char err[512];
  int e = rt_find_entry(r->s.prog, "train");
  for (int k = 0; k < HOST_STEPS; k++)
    if (r->be.run(r->be.self, e, r->s.prog->batch, err) != 0)
      return err;
  return NULL;
}

/* Two host threads, each training its own JIT'd program with its own inputs at the same time,
 * get what each got alone: every program has its own pool. */
START_TEST(two_host_threads_at_once) {
  Run runs[2];
  unsigned char *alone[2];
  for (int h = 0; h < 2; h++) {
    run_open(&runs[h], KILN_SOURCE_DIR "/examples/mnist_cnn.kiln", BACKEND_JIT, 2);
    run_reset_inputs(&runs[h], 42 + (uint64_t)h);
    ck_assert_ptr_null(train_steps(&runs[h]));
    alone[h] = malloc((size_t)runs[h].s.prog->arena_bytes);
    ck_assert_ptr_nonnull(alone[h]);
    memcpy(alone[h], runs[h].arena, (size_t)runs[h].s.prog->arena_bytes);
  }
  pthread_t hosts[2];
  for (int h = 0; h < 2; h++) {
    run_reset_inputs(&runs[h], 42 + (uint64_t)h);
    ck_assert_int_eq(pthread_create(&hosts[h], NULL, train_steps, &runs[h]), 0);
  }
  for (int h = 0; h < 2; h++) {
    void *failed;
    ck_assert_int_eq(pthread_join(hosts[h], &failed), 0);
    ck_assert_msg(!failed, "%s", (char *)failed);
  }
  for (int h = 0; h < 2; h++) {
    require_same_arenas(runs[h].s.prog, alone[h], runs[h].s.prog, runs[h].arena,
                        "train steps alone and beside another host thread");
    free(alone[h]);
    run_close(&runs[h]);
  }
}
END_TEST

/* Runs backend_load on source with stderr redirected to a file; returns what was printed. */
static char *load_quietly(const char *source, int *rc, Buf *err) {
  char path[] = "/tmp/kiln-test-jit-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  fflush(stderr);
  int saved = dup(2);
  dup2(fd, 2);
  BackendOptions o;
  aot_default_options(&o);
  o.kind = BACKEND_JIT;
  BackendProgram *p = NULL;
  *rc = backend_load(&o, source, &p, err);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  backend_unload(p);
  static char printed[4096];
  ssize_t n = pread(fd, printed, sizeof printed - 1, 0);
  printed[n > 0 ? n : 0] = 0;
  close(fd);
  unlink(path);
  return printed;
}

START_TEST(compile_error_names_the_line) {
  Buf err = {0};
  int rc;
  const char *printed = load_quietly("#include <stdint.h>\nint64_t f(void) {\n"
                                     "  return undeclared_thing;\n}\n", &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_msg(err.p && strstr(err.p, "step.c:3:"), "%s", err.p ? err.p : "(none)");
  ck_assert_msg(strstr(err.p, "return undeclared_thing;"), "%s", err.p);
  ck_assert_msg(printed[0] == 0, "printed: %s", printed);
  buf_free(&err);

  /* A header the prelude does not stand in for is refused, not read from disk. */
  printed = load_quietly("#include <stdio.h>\nint x;\n", &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_msg(err.p && strstr(err.p, "step.c:1:") && strstr(err.p, "<stdio.h>"), "%s", err.p);
  ck_assert_msg(printed[0] == 0, "printed: %s", printed);
  buf_free(&err);

  /* Code that compiles but defines no program: the lookup fails through ORC, quietly. */
  printed = load_quietly("int x;\n", &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_msg(err.p && strstr(err.p, "kiln_program_desc"), "%s", err.p ? err.p : "(none)");
  ck_assert_msg(printed[0] == 0, "printed: %s", printed);
  buf_free(&err);
}
END_TEST

/* Compile, run and free five times: LeakSanitizer (CI's sanitizer build) sees any leak. */
START_TEST(load_unload_cycles) {
  for (int k = 0; k < 5; k++) {
    Run r;
    run_open(&r, KILN_SOURCE_DIR "/examples/mlp.kiln", BACKEND_JIT, 2);
    run_reset(&r);
    run_entry(&r, "train");
    run_close(&r);
  }
}
END_TEST

START_TEST(default_backend_is_the_jit) {
  ck_assert(backend_has_jit());
  ck_assert_ptr_nonnull(strstr(backend_list(), "jit (LLVM "));
}
END_TEST

int main(void) {
  Suite *s = suite_create("jit");
  TCase *tc = tcase_create("jit");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, default_backend_is_the_jit);
  tcase_add_test(tc, compile_error_names_the_line);
  tcase_add_test(tc, load_unload_cycles);
  tcase_add_loop_test(tc, cnn_bit_identical_to_cc, 0, 2);
  tcase_add_test(tc, cnn_same_bits_at_every_thread_count);
  tcase_add_test(tc, two_host_threads_at_once);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
