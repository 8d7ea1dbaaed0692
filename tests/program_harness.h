/*
 * program_harness.h — what the tests of loaded programs share (test_jit.c, test_cache.c): a
 * model compiled and loaded through the session with an arena of its own, the same starting
 * point on every backend, and entries run by name. Included by one test file each (everything
 * is static).
 */
#ifndef KILN_PROGRAM_HARNESS_H
#define KILN_PROGRAM_HARNESS_H

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "driver/driver.h"
#include "runtime.h"

/* A loaded program with its own arena. */
typedef struct Run {
  Session s;
  unsigned char *arena;
  RtBackend be;
} Run;

/* Opens model with options o (the session's defaults when NULL), compiles and loads it. */
static void run_open_with(Run *r, const char *model, const Options *o) {
  ck_assert_msg(session_open_file(&r->s, model, o) == 0, "%s", r->s.error);
  ck_assert_msg(session_load(&r->s) == 0, "%s", r->s.error);
  char err[RT_ERR_LEN];
  ck_assert_msg(rt_arena_backend_new(r->s.prog, &r->be, err) == 0, "%s", err);
  /* As many threads as the program was compiled for. */
  ck_assert_msg(rt_arena_set_threads(&r->be, r->s.prog->threads, err) == 0, "%s", err);
  r->arena = rt_arena_base(&r->be);
}

static void run_close(Run *r) {
  rt_arena_backend_free(&r->be);
  session_close(&r->s);
}

/* The same starting point on every backend: parameters, state and hyper-parameters from their
 * initialisers (seed 7), optimizer state and gradients zero, inputs from the stream of
 * input_seed. */
static void run_reset_inputs(Run *r, uint64_t input_seed) {
  const kiln_program *p = r->s.prog;
  memset(r->arena, 0, (size_t)p->arena_bytes);
  RtRng rng;
  rt_rng_seed(&rng, input_seed);
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

static void run_reset(Run *r) { run_reset_inputs(r, 42); }

/* Runs the entry called name at the program's batch. */
static void run_entry(Run *r, const char *name) {
  char err[RT_ERR_LEN] = "";
  int e = rt_find_entry(r->s.prog, name);
  ck_assert_int_ge(e, 0);
  ck_assert_msg(r->be.run(r->be.self, e, r->s.prog->batch, err) == 0, "%s", err);
}

#endif
