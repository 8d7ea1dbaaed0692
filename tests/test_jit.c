/*
 * test_jit.c — the in-process JIT (src/backend/jit.cpp) against the system compiler: the MNIST
 * CNN compiled by both backends gives bit-identical gradients, parameters and optimizer state
 * from identical starting points, at one and two threads; a compile error comes back as a message
 * naming the generated line and prints nothing; programs load and unload repeatedly without
 * leaking (ASan's leak checker runs in CI). Built only when kiln has the JIT.
 */
#include <check.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver/driver.h"
#include "runtime.h"

/* Bytes of tensor t at the program's batch. */
static size_t tensor_bytes(const kiln_program *p, const kiln_tensor *t) {
  return (size_t)rt_numel(t, p->batch) * (t->dtype == KILN_F64 ? 8 : 4);
}

/* A loaded program with its own arena. */
typedef struct Run {
  Session s;
  unsigned char *arena;
  RtBackend be;
} Run;

static void run_open(Run *r, const char *model, BackendKind kind, int threads) {
  Options o;
  session_default_options(&o);
  o.backend.kind = kind;
  o.sched.threads = threads;
  ck_assert_msg(session_open_file(&r->s, model, &o) == 0, "%s", r->s.error);
  ck_assert_msg(session_load(&r->s) == 0, "%s", r->s.error);
  const kiln_program *p = r->s.prog;
  size_t bytes = ((size_t)p->arena_bytes + 63) / 64 * 64;
  r->arena = aligned_alloc(64, bytes);
  ck_assert_ptr_nonnull(r->arena);
  memset(r->arena, 0, bytes);
  rt_arena_backend(p, r->arena, &r->be);
}

static void run_close(Run *r) {
  rt_arena_backend_free(&r->be);
  free(r->arena);
  session_close(&r->s);
}

/* The same starting point on every backend: parameters, state and hyper-parameters from their
 * initialisers (seed 7), optimizer state and gradients zero, inputs from a fixed stream. */
static void run_reset(Run *r) {
  const kiln_program *p = r->s.prog;
  memset(r->arena, 0, (size_t)p->arena_bytes);
  RtRng rng;
  rt_rng_seed(&rng, 42);
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    int64_t n = rt_numel(t, p->batch);
    double *v = calloc((size_t)n, sizeof *v);
    ck_assert_ptr_nonnull(v);
    if (t->role == KILN_ROLE_PARAM || t->role == KILN_ROLE_STATE || t->role == KILN_ROLE_HYPER) {
      rt_init_tensor(t, 7, v, n);
      r->be.write(r->be.self, i, v, n);
    } else if (t->role == KILN_ROLE_INPUT) {
      for (int64_t k = 0; k < n; k++)
        v[k] = t->dtype == KILN_I32 ? (double)rt_rng_below(&rng, 10) : rt_rng_uniform(&rng);
      r->be.write(r->be.self, i, v, n);
    }
    free(v);
  }
}

static void run_entry(Run *r, const char *name) {
  char err[512] = "";
  int e = rt_find_entry(r->s.prog, name);
  ck_assert_int_ge(e, 0);
  ck_assert_msg(r->be.run(r->be.self, e, r->s.prog->batch, err) == 0, "%s", err);
}

/* Every tensor a step writes or keeps must agree to the bit. */
static void require_identical(const Run *a, const Run *b, const char *after) {
  const kiln_program *p = a->s.prog;
  ck_assert_int_eq(p->ntensors, b->s.prog->ntensors);
  int compared = 0;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i], *u = &b->s.prog->tensors[i];
    ck_assert_str_eq(t->name, u->name);
    if (t->role == KILN_ROLE_INPUT)
      continue;
    if (t->role != KILN_ROLE_PARAM && t->role != KILN_ROLE_STATE && t->role != KILN_ROLE_OPT &&
        t->role != KILN_ROLE_GRAD && t->role != KILN_ROLE_OUTPUT)
      continue;
    ck_assert_msg(memcmp(a->arena + t->offset, b->arena + u->offset, tensor_bytes(p, t)) == 0,
                  "%s differs between the backends after %s", t->name, after);
    compared++;
  }
  ck_assert_int_gt(compared, 10);
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
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
