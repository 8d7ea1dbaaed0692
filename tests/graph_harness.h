/*
 * graph_harness.h — what the graph-level tests share: a fresh graph per test, builders for
 * leaves and ops without a model file, a fixed-seed generator and ways to fill leaves through
 * the reference interpreter. Included by one test file each (everything is static).
 */
#ifndef KILN_GRAPH_HARNESS_H
#define KILN_GRAPH_HARNESS_H

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "xform/xform.h"
#include "plan/plan.h"
#include "cg/cg.h"
#include "backend/backend.h"
#include "ref/ref.h"

#define SHAPE(...) \
  shape_of((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})

static const Loc L0 = {0};
static Graph *g;
static char err[RT_ERR_LEN];

static void setup(void) { g = ir_new("t"); }
static void teardown(void) { ir_free(g); }

/* A fixed-seed generator local to the tests, so their inputs never change. */
static uint64_t rng_state;
static double uniform(double lo, double hi) {
  rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return lo + (hi - lo) * (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

/* How to fill a leaf: uniform in [lo, hi]; `kinkfree` keeps |x| >= 0.2 so relu is smooth near
 * every sample; `values` gives exact values instead (labels). */
typedef struct Fill {
  int node;
  double lo, hi;
  bool kinkfree;
  const double *values;
} Fill;

#define ANY(x) {x, -1, 1, false, NULL}
#define POS(x) {x, 0.5, 2, false, NULL}
#define KINKFREE(x) {x, -1, 1, true, NULL}

static int leaf(const char *name, Shape s) {
  return ir_leaf(g, OP_PARAM, ROLE_PARAM, name, DT_F64, s, L0);
}
static int input(const char *name, DType dt, Shape s) {
  return ir_leaf(g, OP_INPUT, ROLE_INPUT, name, dt, s, L0);
}
static int op1(Op op, int x, const Attr *a) { return ir_node(g, op, 1, &x, a, L0); }
static int op2(Op op, int a, int b, const Attr *at) {
  return ir_node(g, op, 2, (int[]){a, b}, at, L0);
}

static void fill(Interp *it, const Fill *f) {
  double *v = interp_data(it, f->node);
  for (int64_t i = 0; i < interp_numel(it, f->node); i++) {
    if (f->values) {
      v[i] = f->values[i];
      continue;
    }
    v[i] = uniform(f->lo, f->hi);
    if (f->kinkfree && fabs(v[i]) < 0.2)
      v[i] = v[i] < 0 ? v[i] - 0.2 : v[i] + 0.2;
  }
}

/* A 2-D window (conv2d and the pools): zeros mean stride 1, dilation 1, one group. */
typedef struct Win {
  int64_t k[2], s[2], p[4], d[2], groups;
  bool include_pad;
} Win;
#define WIN(...) ((Win){__VA_ARGS__})

static Attr win_attr(const Win *w) {
  Attr a = {0};
  for (int i = 0; i < 2; i++) {
    a.kernel[i] = w->k[i];
    a.stride[i] = w->s[i] ? w->s[i] : 1;
    a.dilation[i] = w->d[i] ? w->d[i] : 1;
  }
  memcpy(a.pad, w->p, sizeof a.pad);
  a.groups = w->groups ? w->groups : 1;
  a.count_include_pad = w->include_pad;
  return a;
}

/* Distinct inputs at least 0.05 apart in shuffled order, so that no window has two maxima
 * within the finite-difference step. */
static double *distinct_values(int64_t n) {
  double *v = malloc((size_t)n * sizeof *v);
  for (int64_t i = 0; i < n; i++)
    v[i] = 0.05 * (double)i - 0.025 * (double)n;
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)uniform(0, (double)i + 1);
    if (j > i)
      j = i;
    double t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
  return v;
}

/* The derivative check each including test file defines (gradcheck against finite differences
 * in test_autodiff.c, jvpcheck in test_forward.c): y with respect to the leaves in wrt, the
 * leaves in fixed held still. The window cases below run through it. */
static void derivative_check(int y, const Fill *wrt, int nwrt, const Fill *fixed, int nfixed);

/* conv2d in x and w, then its two adjoints on their own in both of their inputs (bilinear; the
 * second-order rules that double backward goes through). */
static void check_conv(Shape xs, int64_t out_ch, Win w) {
  rng_state = 50 + (uint64_t)(xs.d[2].n * 7 + w.k[0] * 3 + w.groups);
  Attr a = win_attr(&w);
  int x = leaf("x", xs);
  int wt = leaf("w", SHAPE(out_ch, xs.d[1].n / a.groups, w.k[0], w.k[1]));
  int y = op2(OP_CONV2D, x, wt, &a);
  Fill f[2] = {ANY(x), ANY(wt)};
  derivative_check(y, f, 2, NULL, 0);
  int dy = leaf("dy", ir_at(g, y)->shape);
  Attr ad = a;
  ad.in_size[0] = xs.d[2].n;
  ad.in_size[1] = xs.d[3].n;
  Fill fd[2] = {ANY(dy), ANY(wt)};
  derivative_check(op2(OP_CONV2D_BWD_DATA, dy, wt, &ad), fd, 2, NULL, 0);
  Fill ff[2] = {ANY(x), ANY(dy)};
  derivative_check(op2(OP_CONV2D_BWD_FILTER, x, dy, &a), ff, 2, NULL, 0);
}

/* avgpool2d, then its adjoint avgpool2d_grad on its own. */
static void check_avgpool(Shape xs, Win w) {
  rng_state = 80 + (uint64_t)(xs.d[2].n + w.k[1] + w.include_pad);
  Attr a = win_attr(&w);
  int x = leaf("x", xs);
  int y = op1(OP_AVGPOOL2D, x, &a);
  Fill f[1] = {ANY(x)};
  derivative_check(y, f, 1, NULL, 0);
  int dy = leaf("dy", ir_at(g, y)->shape);
  Attr ag = a;
  ag.in_size[0] = xs.d[2].n;
  ag.in_size[1] = xs.d[3].n;
  Fill fd[1] = {ANY(dy)};
  derivative_check(op1(OP_AVGPOOL2D_GRAD, dy, &ag), fd, 1, NULL, 0);
}

#endif
