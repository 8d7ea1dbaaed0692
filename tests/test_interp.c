/*
 * test_interp.c — the reference runtime against hand-computed values.
 *
 * The interpreter is the oracle everything else is checked against, so its own tests use
 * numbers worked out by hand (or closed forms such as log(3)), not another implementation:
 * every kernel on a small example, broadcasting in each direction, reductions with and without
 * keepdims, all four matmul transposes, the cross-entropy loss and its gradient, label errors,
 * the issue-3 ops (activations, softmax both ways round, stable bce, the dropout mask, layout,
 * convolutions with padding, stride, dilation and groups and their two adjoints, max pooling
 * with ties and -inf padding, average pooling with both divisors), f32 rounding, entry points
 * with updates, a symbolic batch, and the RtBackend view.
 */
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

#define NV(...) (sizeof((double[]){__VA_ARGS__}) / sizeof(double))
#define SHAPE(...) \
  shape_of((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})

static const Loc L0 = {0};
static Graph *g;
static Interp *it;
static char err[RT_ERR_LEN];

static void setup(void) { g = ir_new("t"); it = NULL; err[0] = 0; }
static void teardown(void) {
  interp_free(it);
  ir_free(g);
}

static int input(const char *name, DType dt, Shape s) {
  return ir_leaf(g, OP_INPUT, ROLE_INPUT, name, dt, s, L0);
}

static void set(int node, const double *v, size_t n) {
  ck_assert_int_eq(interp_numel(it, node), (int64_t)n);
  memcpy(interp_data(it, node), v, n * sizeof *v);
}
#define SET(node, ...) set(node, (double[]){__VA_ARGS__}, NV(__VA_ARGS__))

static void eval(int node) {
  int rc = interp_eval(it, &node, 1, 1, err);
  ck_assert_msg(rc == 0, "eval failed: %s", err);
}

/* Exact comparison: these kernels must reproduce the hand-computed values bit for bit. */
static void expect(int node, const double *v, size_t n) {
  ck_assert_int_eq(interp_numel(it, node), (int64_t)n);
  const double *y = interp_data(it, node);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(y[i] == v[i], "element %zu: got %.17g, expected %.17g", i, y[i], v[i]);
}
#define EXPECT(node, ...) expect(node, (double[]){__VA_ARGS__}, NV(__VA_ARGS__))

static void expect_near(int node, const double *v, size_t n, double tol) {
  ck_assert_int_eq(interp_numel(it, node), (int64_t)n);
  const double *y = interp_data(it, node);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(fabs(y[i] - v[i]) <= tol, "element %zu: got %.17g, expected %.17g", i, y[i],
                  v[i]);
}

static void start(void) {
  it = interp_new(g, 1, false);
  ck_assert_ptr_nonnull(it);
}

/* ---- elementwise ---- */

START_TEST(every_op_has_a_kernel) {
  for (int op = 0; op < OP_COUNT; op++)
    ck_assert_msg(interp_has_kernel((Op)op), "no reference kernel for %s", op_names[op]);
}
END_TEST

START_TEST(binary_broadcast_row) {
  int a = input("a", DT_F64, SHAPE(2, 3)), b = input("b", DT_F64, SHAPE(3));
  int add = ir_binary(g, OP_ADD, a, b, L0), sub = ir_binary(g, OP_SUB, b, a, L0);
  int mul = ir_binary(g, OP_MUL, a, b, L0), dv = ir_binary(g, OP_DIV, a, b, L0);
  start();
  SET(a, 1, 2, 3, 4, 5, 6);
  SET(b, 10, 20, 40);
  eval(add), eval(sub), eval(mul), eval(dv);
  EXPECT(add, 11, 22, 43, 14, 25, 46);
  EXPECT(sub, 9, 18, 37, 6, 15, 34);
  EXPECT(mul, 10, 40, 120, 40, 100, 240);
  EXPECT(dv, 0.1, 0.1, 0.075, 0.4, 0.25, 0.15);
}
END_TEST

/* [2,1] against [3]: both sides stretch. */
START_TEST(binary_broadcast_both_sides) {
  int a = input("a", DT_F64, SHAPE(2, 1)), b = input("b", DT_F64, SHAPE(3));
  int y = ir_binary(g, OP_SUB, a, b, L0);
  start();
  SET(a, 100, 200);
  SET(b, 1, 2, 3);
  eval(y);
  int64_t d[2];
  interp_shape(it, y, d);
  ck_assert_int_eq(d[0], 2);
  ck_assert_int_eq(d[1], 3);
  EXPECT(y, 99, 98, 97, 199, 198, 197);
}
END_TEST

/* [3,1,4] + [2,4] -> [3,2,4]: y[i,j,k] = a[i,k] + b[j,k]. */
START_TEST(binary_broadcast_rank3) {
  int a = input("a", DT_F64, SHAPE(3, 1, 4)), b = input("b", DT_F64, SHAPE(2, 4));
  int y = ir_binary(g, OP_ADD, a, b, L0);
  start();
  double av[12], bv[8];
  for (int i = 0; i < 12; i++) av[i] = 100 * (i / 4) + (i % 4);  /* 100 i + k */
  for (int i = 0; i < 8; i++) bv[i] = 10 * (i / 4);               /* 10 j */
  set(a, av, 12), set(b, bv, 8);
  eval(y);
  ck_assert_int_eq(interp_numel(it, y), 24);
  const double *v = interp_data(it, y);
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 2; j++)
      for (int k = 0; k < 4; k++)
        ck_assert(v[(i * 2 + j) * 4 + k] == 100 * i + 10 * j + k);
}
END_TEST

START_TEST(pow_and_relu_grad) {
  int a = input("a", DT_F64, SHAPE(4)), b = input("b", DT_F64, SHAPE(4));
  int p = ir_binary(g, OP_POW, a, b, L0), rg = ir_binary(g, OP_RELU_GRAD, a, b, L0);
  start();
  SET(a, 2, 4, -3, 0);
  SET(b, 3, 0.5, 2, 5);
  eval(p), eval(rg);
  EXPECT(p, 8, 2, 9, 0);
  EXPECT(rg, 3, 0.5, 0, 0);  /* x > 0 passes dy; x <= 0 (including 0) gives 0 */
}
END_TEST

START_TEST(unary_ops) {
  int x = input("x", DT_F64, SHAPE(3));
  int ng = ir_unary(g, OP_NEG, x, L0), ex = ir_unary(g, OP_EXP, x, L0);
  int rl = ir_unary(g, OP_RELU, x, L0);
  int y = input("y", DT_F64, SHAPE(3));
  int lg = ir_unary(g, OP_LOG, y, L0), sq = ir_unary(g, OP_SQRT, y, L0);
  start();
  SET(x, -1.5, 0, 2);
  SET(y, 1, 4, 0.25);
  eval(ng), eval(ex), eval(rl), eval(lg), eval(sq);
  EXPECT(ng, 1.5, -0.0, -2);
  EXPECT(ex, exp(-1.5), 1, exp(2.0));
  EXPECT(rl, 0, 0, 2);
  EXPECT(lg, 0, log(4.0), log(0.25));
  EXPECT(sq, 1, 2, 0.5);
}
END_TEST

START_TEST(constants) {
  int c = ir_const(g, 2.5, DT_F64, L0);
  int lit = ir_leaf(g, OP_CONST, ROLE_NONE, NULL, DT_F64, SHAPE(2, 2), L0);
  ir_at(g, lit)->data = ir_literal(g, (double[]){1, 2, 3, 4}, 4);
  int y = ir_binary(g, OP_MUL, lit, c, L0);
  start();
  eval(y);
  EXPECT(c, 2.5);
  EXPECT(y, 2.5, 5, 7.5, 10);
}
END_TEST

/* ---- reductions ---- */

/* x[i,j,k] = 12 i + 4 j + k, shape [2,3,4]. */
static int iota234(void) {
  int x = input("x", DT_F64, SHAPE(2, 3, 4));
  return x;
}
static void fill_iota(int x) {
  double v[24];
  for (int i = 0; i < 24; i++) v[i] = i;
  set(x, v, 24);
}

START_TEST(sum_keepdims) {
  int x = iota234();
  int s1 = ir_reduce(g, OP_SUM, x, 1u << 1, true, L0);
  int s02 = ir_reduce(g, OP_SUM, x, 1u << 0 | 1u << 2, false, L0);
  int all = ir_reduce(g, OP_SUM, x, 7, false, L0);
  int allk = ir_reduce(g, OP_SUM, x, 7, true, L0);
  start();
  fill_iota(x);
  eval(s1), eval(s02), eval(all), eval(allk);
  int64_t d[3];
  interp_shape(it, s1, d);
  ck_assert(d[0] == 2 && d[1] == 1 && d[2] == 4);
  EXPECT(s1, 12, 15, 18, 21, 48, 51, 54, 57);   /* sum_j (12i+4j+k) = 36i + 12 + 3k */
  EXPECT(s02, 60, 92, 124);                     /* 8 terms: 48 + 32j + 12 */
  EXPECT(all, 276);                             /* 0 + ... + 23 */
  EXPECT(allk, 276);
  ck_assert_int_eq(ir_at(g, allk)->shape.rank, 3);
}
END_TEST

START_TEST(mean_and_numel) {
  int x = iota234();
  int m2 = ir_reduce(g, OP_MEAN, x, 1u << 2, false, L0);
  int m01 = ir_reduce(g, OP_MEAN, x, 3, true, L0);
  int n02 = ir_reduce(g, OP_NUMEL, x, 5, false, L0);
  int nall = ir_reduce(g, OP_NUMEL, x, 7, false, L0);
  start();
  fill_iota(x);
  eval(m2), eval(m01), eval(n02), eval(nall);
  EXPECT(m2, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5);
  EXPECT(m01, 10, 11, 12, 13);                  /* mean over i,j of 12i+4j+k = 6 + 4 + k */
  EXPECT(n02, 8);
  EXPECT(nall, 24);
}
END_TEST

START_TEST(sum_to_and_expand) {
  int x = input("x", DT_F64, SHAPE(2, 3));
  int row = input("row", DT_F64, SHAPE(3)), col = input("col", DT_F64, SHAPE(2, 1));
  int sr = ir_binary(g, OP_SUM_TO, x, row, L0), sc = ir_binary(g, OP_SUM_TO, x, col, L0);
  int er = ir_binary(g, OP_EXPAND, row, x, L0), ec = ir_binary(g, OP_EXPAND, col, x, L0);
  start();
  SET(x, 1, 2, 3, 4, 5, 6);
  SET(row, 7, 8, 9);
  SET(col, -1, -2);
  eval(sr), eval(sc), eval(er), eval(ec);
  EXPECT(sr, 5, 7, 9);
  EXPECT(sc, 6, 15);
  EXPECT(er, 7, 8, 9, 7, 8, 9);
  EXPECT(ec, -1, -1, -1, -2, -2, -2);
}
END_TEST

START_TEST(reshape_keeps_order) {
  int x = input("x", DT_F64, SHAPE(2, 3));
  int y = ir_reshape(g, x, SHAPE(3, 1, 2), L0);
  start();
  SET(x, 1, 2, 3, 4, 5, 6);
  eval(y);
  int64_t d[3];
  interp_shape(it, y, d);
  ck_assert(d[0] == 3 && d[1] == 1 && d[2] == 2);
  EXPECT(y, 1, 2, 3, 4, 5, 6);
}
END_TEST

/* ---- matmul ---- */

/* A = [[1,2,3],[4,5,6]], B = [[7,8],[9,10],[11,12]]: AB = [[58,64],[139,154]], stored plain or
 * transposed. */
START_TEST(matmul_all_transposes) {
  int a = input("a", DT_F64, SHAPE(2, 3)), at = input("at", DT_F64, SHAPE(3, 2));
  int b = input("b", DT_F64, SHAPE(3, 2)), bt = input("bt", DT_F64, SHAPE(2, 3));
  int y[4] = {ir_matmul(g, a, b, false, false, L0), ir_matmul(g, a, bt, false, true, L0),
              ir_matmul(g, at, b, true, false, L0), ir_matmul(g, at, bt, true, true, L0)};
  start();
  SET(a, 1, 2, 3, 4, 5, 6);
  SET(at, 1, 4, 2, 5, 3, 6);
  SET(b, 7, 8, 9, 10, 11, 12);
  SET(bt, 7, 9, 11, 8, 10, 12);
  for (int i = 0; i < 4; i++) {
    eval(y[i]);
    EXPECT(y[i], 58, 64, 139, 154);
  }
}
END_TEST

/* ---- losses ---- */

static int logits, labels;

static void build_ce(void) {
  logits = input("logits", DT_F64, SHAPE(2, 3));
  labels = input("label", DT_I32, SHAPE(2));
}

START_TEST(cross_entropy_value) {
  build_ce();
  int ce = ir_binary(g, OP_CROSS_ENTROPY, logits, labels, L0);
  start();
  SET(logits, 1, 2, 3, 1, 1, 1);
  SET(labels, 2, 0);
  eval(ce);
  /* row 0: log(1 + e^-1 + e^-2); row 1: log 3. */
  double want = (log(1 + exp(-1.0) + exp(-2.0)) + log(3.0)) / 2;
  ck_assert_double_eq_tol(want, 0.753109126556245, 1e-15);
  expect_near(ce, &want, 1, 1e-12);
}
END_TEST

/* Large logits must not overflow: the kernel shifts by the row maximum. */
START_TEST(cross_entropy_stable) {
  build_ce();
  int ce = ir_binary(g, OP_CROSS_ENTROPY, logits, labels, L0);
  start();
  SET(logits, 1000, 1000, 1000, -1000, 0, 1000);
  SET(labels, 1, 2);
  eval(ce);
  double want = log(3.0) / 2;
  expect_near(ce, &want, 1, 1e-12);
}
END_TEST

START_TEST(cross_entropy_grad_value) {
  build_ce();
  int dy = ir_const(g, 2.0, DT_F64, L0);
  int cg = ir_node(g, OP_CROSS_ENTROPY_GRAD, 3, (int[]){logits, labels, dy}, NULL, L0);
  start();
  SET(logits, 1, 2, 3, 1, 1, 1);
  SET(labels, 2, 0);
  eval(cg);
  /* dy / N = 1: softmax minus one-hot. */
  double want[6] = {0.09003057317038046, 0.24472847105479767, 0.6652409557748219 - 1,
                    1.0 / 3 - 1, 1.0 / 3, 1.0 / 3};
  expect_near(cg, want, 6, 1e-15);
}
END_TEST

static void expect_label_error(double bad, const char *msg) {
  build_ce();
  int ce = ir_binary(g, OP_CROSS_ENTROPY, logits, labels, L0);
  start();
  SET(logits, 1, 2, 3, 1, 1, 1);
  SET(labels, 0, bad);
  ck_assert_int_eq(interp_eval(it, &ce, 1, 1, err), -1);
  ck_assert_str_eq(err, msg);
}

START_TEST(cross_entropy_label_too_big) {
  expect_label_error(3, "cross_entropy: label tensor 'label' has value 3 at index 1, "
                        "outside [0, 3)");
}
END_TEST

START_TEST(cross_entropy_label_negative) {
  expect_label_error(-1, "cross_entropy: label tensor 'label' has value -1 at index 1, "
                         "outside [0, 3)");
}
END_TEST

START_TEST(cross_entropy_label_not_integer) {
  expect_label_error(1.5, "cross_entropy: label tensor 'label' has value 1.5 at index 1, "
                          "outside [0, 3)");
}
END_TEST

START_TEST(cross_entropy_grad_label_error) {
  build_ce();
  int dy = ir_const(g, 1.0, DT_F64, L0);
  int cg = ir_node(g, OP_CROSS_ENTROPY_GRAD, 3, (int[]){logits, labels, dy}, NULL, L0);
  start();
  SET(labels, 7, 0);
  ck_assert_int_eq(interp_eval(it, &cg, 1, 1, err), -1);
  ck_assert_str_eq(err, "cross_entropy_grad: label tensor 'label' has value 7 at index 0, "
                        "outside [0, 3)");
}
END_TEST

/* ---- activations and normalised exponentials (issue 3) ---- */

static int op1(Op op, int x, const Attr *a) { return ir_node(g, op, 1, &x, a, L0); }
static int op2(Op op, int a, int b, const Attr *at) {
  return ir_node(g, op, 2, (int[]){a, b}, at, L0);
}

START_TEST(sigmoid_and_tanh) {
  int x = input("x", DT_F64, SHAPE(5));
  int sg = ir_unary(g, OP_SIGMOID, x, L0), th = ir_unary(g, OP_TANH, x, L0);
  start();
  SET(x, 0, 2, -2, 800, -800);
  eval(sg), eval(th);
  double e = exp(-2.0), t2 = (1 - e * e) / (1 + e * e);
  expect_near(sg, (double[]){0.5, 1 / (1 + e), e / (1 + e), 1, 0}, 5, 1e-16);
  ck_assert(interp_data(it, sg)[0] == 0.5);
  ck_assert(interp_data(it, sg)[3] == 1.0 && interp_data(it, sg)[4] == 0.0);  /* no NaN */
  expect_near(th, (double[]){0, t2, -t2, 1, -1}, 5, 1e-15);
}
END_TEST

/* Slope 0.25 keeps every product exact; dy of leaky_relu_grad broadcasts over rows. */
START_TEST(leaky_relu_and_grad) {
  int x = input("x", DT_F64, SHAPE(2, 3)), d = input("d", DT_F64, SHAPE(3));
  int y = op1(OP_LEAKY_RELU, x, &(Attr){.value = 0.25});
  int gr = op2(OP_LEAKY_RELU_GRAD, x, d, &(Attr){.value = 0.25});
  start();
  SET(x, -4, 0, 2, 8, -1, -0.5);
  SET(d, 10, 20, 40);
  eval(y), eval(gr);
  EXPECT(y, -1, 0, 2, 8, -0.25, -0.125);
  EXPECT(gr, 2.5, 5, 40, 10, 5, 10);  /* x = 0 takes the slope, as relu_grad gives 0 there */
}
END_TEST

/* Rows (0, log 2, log 3) and columns hold softmax weights 1/6, 2/6, 3/6. */
START_TEST(softmax_both_axes) {
  int x = input("x", DT_F64, SHAPE(2, 3)), xt = input("xt", DT_F64, SHAPE(3, 2));
  int s1 = op1(OP_SOFTMAX, x, &(Attr){.axis = 1}), s0 = op1(OP_SOFTMAX, xt, &(Attr){.axis = 0});
  int l1 = op1(OP_LOG_SOFTMAX, x, &(Attr){.axis = 1});
  start();
  SET(x, 0, log(2.0), log(3.0), 5, 5, 5);
  SET(xt, 0, 5, log(2.0), 5, log(3.0), 5);
  eval(s1), eval(s0), eval(l1);
  double third = 1.0 / 3;
  expect_near(s1, (double[]){1.0 / 6, 2.0 / 6, 3.0 / 6, third, third, third}, 6, 1e-15);
  expect_near(s0, (double[]){1.0 / 6, third, 2.0 / 6, third, 3.0 / 6, third}, 6, 1e-15);
  expect_near(l1, (double[]){-log(6.0), log(2.0) - log(6.0), log(3.0) - log(6.0), -log(3.0),
                             -log(3.0), -log(3.0)}, 6, 1e-15);
}
END_TEST

/* Logits of ±1000 must not overflow: each row is shifted by its maximum. */
START_TEST(softmax_stable) {
  int x = input("x", DT_F64, SHAPE(2, 2));
  int s = op1(OP_SOFTMAX, x, &(Attr){.axis = 1}), l = op1(OP_LOG_SOFTMAX, x, &(Attr){.axis = 1});
  start();
  SET(x, 1000, 1000, -1000, 0);
  eval(s), eval(l);
  expect_near(s, (double[]){0.5, 0.5, 0, 1}, 4, 1e-15);
  EXPECT(l, -log(2.0), -log(2.0), -1000, 0);
}
END_TEST

/* Moderate logits: the stable formula agrees with -(t log s + (1 - t) log(1 - s)), s = sigmoid.
 * Targets broadcast along rows. */
START_TEST(bce_logits_matches_naive) {
  int x = input("x", DT_F64, SHAPE(2, 3)), t = input("t", DT_F64, SHAPE(3));
  int y = ir_binary(g, OP_BCE_LOGITS, x, t, L0);
  start();
  double xv[6] = {-2, 0.5, 3, 0, -0.25, 1.5}, tv[3] = {0, 0.3, 1}, want[6];
  set(x, xv, 6), set(t, tv, 3);
  for (int i = 0; i < 6; i++) {
    double s = 1 / (1 + exp(-xv[i])), tt = tv[i % 3];
    want[i] = -(tt * log(s) + (1 - tt) * log(1 - s));
  }
  eval(y);
  expect_near(y, want, 6, 1e-14);
}
END_TEST

/* At ±100 the naive formula takes log(0); the stable one gives 100 or about e^-100. */
START_TEST(bce_logits_stable) {
  int x = input("x", DT_F64, SHAPE(4)), t = input("t", DT_F64, SHAPE(4));
  int y = ir_binary(g, OP_BCE_LOGITS, x, t, L0);
  start();
  SET(x, 100, 100, -100, -100);
  SET(t, 1, 0, 0, 1);
  eval(y);
  const double *v = interp_data(it, y);
  ck_assert(v[1] == 100 && v[3] == 100);
  ck_assert(v[0] > 0 && v[0] < 1e-43 && v[2] == v[0]);  /* log1p(e^-100) = 3.72e-44 */
  ck_assert_double_eq_tol(v[0], 3.720075976020836e-44, 1e-58);
}
END_TEST

/* 40000 samples of randn: each is kiln_normal(salt, counter, index); mean, variance, the
 * fourth moment (3 for a normal) and the share beyond 2 sd (4.55%) within a few standard errors;
 * a new counter draws other numbers. */
START_TEST(randn_samples) {
  int x = input("x", DT_F64, SHAPE(200, 200));
  int step = input("step", DT_F64, shape_of(0, NULL));
  int r = op2(OP_RANDN, x, step, &(Attr){.salt = 7});
  start();
  SET(step, 5);
  eval(r);
  const double *y = interp_data(it, r);
  double m1 = 0, m2 = 0, m4 = 0;
  int tail = 0, n = 40000;
  for (int i = 0; i < n; i++) {
    ck_assert(y[i] == kiln_normal(7, 5, i));
    m1 += y[i], m2 += y[i] * y[i], m4 += y[i] * y[i] * y[i] * y[i];
    tail += fabs(y[i]) > 2;
  }
  m1 /= n, m2 /= n, m4 /= n;
  ck_assert_msg(fabs(m1) < 0.02 && fabs(m2 - 1) < 0.03 && fabs(m4 - 3) < 0.2,
                "mean %g, variance %g, fourth moment %g", m1, m2, m4);
  ck_assert_msg(tail > 1650 && tail < 2000, "%d beyond 2 sd", tail);
  double first = y[0];
  SET(step, 6);
  eval(r);
  ck_assert(interp_data(it, r)[0] != first);
}
END_TEST

/* 10000 ones at p = 0.25: about 7500 kept (a binomial's sd is 43), each exactly 4/3; the mask
 * depends on (salt, counter) only, and p = 0 is the identity. */
START_TEST(dropout_mask) {
  int x = input("x", DT_F64, SHAPE(100, 100));
  int step = input("step", DT_F64, shape_of(0, NULL));
  int d1 = op2(OP_DROPOUT, x, step, &(Attr){.value = 0.25, .salt = 1});
  int d2 = op2(OP_DROPOUT, x, step, &(Attr){.value = 0.25, .salt = 2});
  int d0 = op2(OP_DROPOUT, x, step, &(Attr){.value = 0, .salt = 1});
  start();
  double *xv = interp_data(it, x);
  for (int i = 0; i < 10000; i++) xv[i] = 1;
  SET(step, 3);
  eval(d1);
  double *first = malloc(10000 * sizeof *first);
  memcpy(first, interp_data(it, d1), 10000 * sizeof *first);
  int kept = 0;
  for (int i = 0; i < 10000; i++) {
    ck_assert(first[i] == 0 || first[i] == 1 / 0.75);
    ck_assert((first[i] != 0) == (kiln_dropout_uniform(1, 3, i) >= 0.25));
    kept += first[i] != 0;
  }
  ck_assert_int_ge(kept, 7300);
  ck_assert_int_le(kept, 7700);
  eval(d1);  /* same counter: the same mask */
  ck_assert(memcmp(first, interp_data(it, d1), 10000 * sizeof *first) == 0);
  eval(d2);  /* another salt: another mask */
  int same = 0;
  for (int i = 0; i < 10000; i++) same += (first[i] != 0) == (interp_data(it, d2)[i] != 0);
  ck_assert_int_lt(same, 9000);  /* independent masks agree on about 62.5% */
  SET(step, 4);  /* another step: another mask */
  eval(d1);
  same = 0;
  for (int i = 0; i < 10000; i++) same += (first[i] != 0) == (interp_data(it, d1)[i] != 0);
  ck_assert_int_lt(same, 9000);
  for (int i = 0; i < 10000; i++) xv[i] = i * 0.1;
  eval(d0);
  ck_assert(memcmp(xv, interp_data(it, d0), 10000 * sizeof *xv) == 0);
  free(first);
}
END_TEST

/* ---- layout (issue 3) ---- */

START_TEST(transpose_values) {
  int a = input("a", DT_F64, SHAPE(2, 3));
  int at = ir_transpose(g, a, (int[]){1, 0}, L0);
  int x = iota234();
  int y = ir_transpose(g, x, (int[]){2, 0, 1}, L0);
  start();
  SET(a, 1, 2, 3, 4, 5, 6);
  fill_iota(x);
  eval(at), eval(y);
  EXPECT(at, 1, 4, 2, 5, 3, 6);
  int64_t d[3];
  interp_shape(it, y, d);
  ck_assert(d[0] == 4 && d[1] == 2 && d[2] == 3);
  const double *v = interp_data(it, y);
  for (int k = 0; k < 4; k++)
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 3; j++)
        ck_assert(v[(k * 2 + i) * 3 + j] == 12 * i + 4 * j + k);  /* y[k,i,j] = x[i,j,k] */
}
END_TEST

START_TEST(concat_and_slice_values) {
  int a = input("a", DT_F64, SHAPE(2, 2)), b = input("b", DT_F64, SHAPE(2, 1));
  int c = input("c", DT_F64, SHAPE(1, 2));
  int ab = op2(OP_CONCAT, a, b, &(Attr){.axis = 1}), ac = op2(OP_CONCAT, a, c, &(Attr){.axis = 0});
  int x = input("x", DT_F64, SHAPE(2, 4));
  int s1 = op1(OP_SLICE, x, &(Attr){.axis = 1, .start = 1, .len = 2});
  int s0 = op1(OP_SLICE, x, &(Attr){.axis = 0, .start = 1, .len = 1});
  start();
  SET(a, 1, 2, 3, 4);
  SET(b, 9, 8);
  SET(c, 5, 6);
  SET(x, 1, 2, 3, 4, 5, 6, 7, 8);
  eval(ab), eval(ac), eval(s1), eval(s0);
  EXPECT(ab, 1, 2, 9, 3, 4, 8);
  EXPECT(ac, 1, 2, 3, 4, 5, 6);
  EXPECT(s1, 2, 3, 6, 7);
  EXPECT(s0, 5, 6, 7, 8);
}
END_TEST

/* ---- 2-D windows (issue 3) ---- */

/* kernel kh x kw, stride s, padding [top, bottom, left, right], dilation d, groups. */
static Attr win(int64_t kh, int64_t kw, int64_t s, const int64_t pad[4], int64_t d,
                int64_t groups) {
  Attr a = {0};
  a.kernel[0] = kh, a.kernel[1] = kw;
  a.stride[0] = a.stride[1] = s;
  a.dilation[0] = a.dilation[1] = d;
  if (pad)
    memcpy(a.pad, pad, sizeof a.pad);
  a.groups = groups;
  return a;
}

static const int64_t PAD1[4] = {1, 1, 1, 1};

/* x = 1..9 as 3x3, w = [[1,2],[3,4]] (not symmetric: a flipped kernel would show). */
static int x33, w22;
static void build_x33(void) {
  x33 = input("x", DT_F64, SHAPE(1, 1, 3, 3));
  w22 = input("w", DT_F64, SHAPE(1, 1, 2, 2));
}
static void fill_x33(void) {
  SET(x33, 1, 2, 3, 4, 5, 6, 7, 8, 9);
  SET(w22, 1, 2, 3, 4);
}

/* Cross-correlation: y[0,0] = 1*1 + 2*2 + 4*3 + 5*4 = 37, and so on. */
START_TEST(conv2d_values) {
  build_x33();
  Attr plain = win(2, 2, 1, NULL, 1, 1), padded = win(2, 2, 2, PAD1, 1, 1);
  Attr dil = win(2, 2, 1, NULL, 2, 1), asym = win(2, 2, 1, (int64_t[]){0, 1, 1, 0}, 1, 1);
  int y = op2(OP_CONV2D, x33, w22, &plain), yp = op2(OP_CONV2D, x33, w22, &padded);
  int yd = op2(OP_CONV2D, x33, w22, &dil), ya = op2(OP_CONV2D, x33, w22, &asym);
  start();
  fill_x33();
  eval(y), eval(yp), eval(yd), eval(ya);
  EXPECT(y, 37, 47, 67, 77);
  /* stride 2, pad 1: windows at (-1,-1), (-1,1), (1,-1), (1,1) see 1, 2 3, 4 7, 5 6 8 9. */
  EXPECT(yp, 4, 6 + 12, 8 + 28, 77);
  EXPECT(yd, 1 + 6 + 21 + 36);  /* dilation 2 reads the corners 1, 3, 7, 9 */
  /* pad bottom 1, left 1: 3x3 out; the left column sees only w's right half, the bottom row
   * only w's top row. */
  EXPECT(ya, 18, 37, 47, 36, 67, 77, 14, 23, 26);
}
END_TEST

/* groups = 2: outputs 0-1 read input channel 0, outputs 2-3 channel 1 (1x1 kernels); and with
 * two channels per group, each output sums its own group's pair. */
START_TEST(conv2d_groups) {
  int x = input("x", DT_F64, SHAPE(1, 2, 2, 2)), w = input("w", DT_F64, SHAPE(4, 1, 1, 1));
  int x4 = input("x4", DT_F64, SHAPE(1, 4, 1, 1)), w4 = input("w4", DT_F64, SHAPE(2, 2, 1, 1));
  Attr a = win(1, 1, 1, NULL, 1, 2);
  int y = op2(OP_CONV2D, x, w, &a), y4 = op2(OP_CONV2D, x4, w4, &a);
  start();
  SET(x, 1, 2, 3, 4, 5, 6, 7, 8);
  SET(w, 1, 2, 3, 4);
  SET(x4, 1, 2, 3, 4);
  SET(w4, 1, 10, 100, 1000);
  eval(y), eval(y4);
  EXPECT(y, 1, 2, 3, 4, 2, 4, 6, 8, 15, 18, 21, 24, 20, 24, 28, 32);
  EXPECT(y4, 1 * 1 + 10 * 2, 100 * 3 + 1000 * 4);
}
END_TEST

/* The adjoints on the same example: bwd_data spreads each dy over its window (a "full"
 * correlation with the flipped kernel), bwd_filter sums the windows. */
START_TEST(conv2d_adjoint_values) {
  build_x33();
  int dy = input("dy", DT_F64, SHAPE(1, 1, 2, 2));
  Attr a = win(2, 2, 1, NULL, 1, 1), ap = win(2, 2, 2, PAD1, 1, 1);
  a.in_size[0] = a.in_size[1] = ap.in_size[0] = ap.in_size[1] = 3;
  int dx = op2(OP_CONV2D_BWD_DATA, dy, w22, &a), dxp = op2(OP_CONV2D_BWD_DATA, dy, w22, &ap);
  Attr f = win(2, 2, 1, NULL, 1, 1);
  int dw = op2(OP_CONV2D_BWD_FILTER, x33, dy, &f);
  start();
  fill_x33();
  SET(dy, 1, 1, 1, 1);
  eval(dx), eval(dxp), eval(dw);
  EXPECT(dx, 1, 3, 2, 4, 10, 6, 3, 7, 4);
  EXPECT(dxp, 4, 3, 4, 2, 1, 2, 4, 3, 4);  /* each element in exactly one stride-2 window */
  EXPECT(dw, 12, 16, 24, 28);
}
END_TEST

/* Overlapping 2x2 windows at stride 1: 9 is the maximum of two windows and collects both dy. */
START_TEST(maxpool_values_and_grad) {
  int x = input("x", DT_F64, SHAPE(1, 1, 3, 3)), dy = input("dy", DT_F64, SHAPE(1, 1, 2, 2));
  Attr a = win(2, 2, 1, NULL, 1, 1), a3 = win(3, 3, 2, PAD1, 1, 1);
  int y = op1(OP_MAXPOOL2D, x, &a), gx = op2(OP_MAXPOOL2D_GRAD, x, dy, &a);
  int y3 = op1(OP_MAXPOOL2D, x, &a3), g3 = op2(OP_MAXPOOL2D_GRAD, x, dy, &a3);
  start();
  SET(x, 1, 9, 2, 3, 4, 8, 7, 5, 6);
  SET(dy, 1, 2, 3, 4);
  eval(y), eval(gx), eval(y3), eval(g3);
  EXPECT(y, 9, 9, 7, 8);
  EXPECT(gx, 0, 3, 0, 0, 0, 4, 3, 0, 0);
  /* kernel 3, stride 2, pad 1: the same four windows clipped to the input. */
  EXPECT(y3, 9, 9, 7, 8);
  EXPECT(g3, 0, 3, 0, 0, 0, 4, 3, 0, 0);
}
END_TEST

/* Equal maxima: dy goes to the first in row-major order, wherever it is. */
START_TEST(maxpool_tie_picks_first) {
  int x = input("x", DT_F64, SHAPE(1, 2, 2, 2)), dy = input("dy", DT_F64, SHAPE(1, 2, 1, 1));
  Attr a = win(2, 2, 1, NULL, 1, 1);
  int y = op1(OP_MAXPOOL2D, x, &a), gx = op2(OP_MAXPOOL2D_GRAD, x, dy, &a);
  start();
  SET(x, 3, 1, 3, 3, 1, 3, 2, 3);
  SET(dy, 5, 7);
  eval(y), eval(gx);
  EXPECT(y, 3, 3);
  EXPECT(gx, 5, 0, 0, 0, 0, 7, 0, 0);
}
END_TEST

/* Padding is -inf, not 0: negative inputs stay the maxima of their corner windows. */
START_TEST(maxpool_padding_is_minus_infinity) {
  int x = input("x", DT_F64, SHAPE(1, 1, 2, 2));
  Attr a = win(2, 2, 2, PAD1, 1, 1);
  int y = op1(OP_MAXPOOL2D, x, &a);
  start();
  SET(x, -1, -2, -3, -4);
  eval(y);
  EXPECT(y, -1, -2, -3, -4);
}
END_TEST

/* 2x2 windows at stride 2 with padding 1 on x = 1..9 see {1}, {2,3}, {4,7}, {5,6,8,9}. Counting
 * the padding divides by 4 everywhere; not counting it divides by 1, 2, 2, 4. */
START_TEST(avgpool_values_and_grad) {
  int x = input("x", DT_F64, SHAPE(1, 1, 3, 3)), dy = input("dy", DT_F64, SHAPE(1, 1, 2, 2));
  Attr inc = win(2, 2, 2, PAD1, 1, 1), exc = inc;
  inc.count_include_pad = true;
  int yi = op1(OP_AVGPOOL2D, x, &inc), ye = op1(OP_AVGPOOL2D, x, &exc);
  inc.in_size[0] = inc.in_size[1] = exc.in_size[0] = exc.in_size[1] = 3;
  int gi = op1(OP_AVGPOOL2D_GRAD, dy, &inc), ge = op1(OP_AVGPOOL2D_GRAD, dy, &exc);
  start();
  SET(x, 1, 2, 3, 4, 5, 6, 7, 8, 9);
  SET(dy, 1, 1, 1, 1);
  eval(yi), eval(ye), eval(gi), eval(ge);
  EXPECT(yi, 0.25, 1.25, 2.75, 7);
  EXPECT(ye, 1, 2.5, 5.5, 7);
  EXPECT(gi, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25);
  EXPECT(ge, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.5, 0.25, 0.25);
}
END_TEST

/* Overlapping 2x2 windows at stride 1: the adjoint adds every window's share. */
START_TEST(avgpool_grad_overlapping) {
  int dy = input("dy", DT_F64, SHAPE(1, 1, 2, 2));
  Attr a = win(2, 2, 1, NULL, 1, 1);
  a.in_size[0] = a.in_size[1] = 3;
  int gx = op1(OP_AVGPOOL2D_GRAD, dy, &a);
  start();
  SET(dy, 4, 8, 12, 16);
  eval(gx);
  EXPECT(gx, 1, 3, 2, 4, 10, 6, 3, 7, 4);
}
END_TEST

/* ---- precision ---- */

/* f32 mode rounds every f32 result to float; f64 mode computes the same graph exactly. */
START_TEST(f32_rounding) {
  int x = input("x", DT_F32, SHAPE(2));
  int c = ir_const(g, 0.2, DT_F32, L0);
  int y = ir_binary(g, OP_ADD, x, c, L0);
  int third = ir_binary(g, OP_DIV, ir_const(g, 1.0, DT_F32, L0), ir_const(g, 3.0, DT_F32, L0), L0);
  int e = ir_unary(g, OP_EXP, x, L0);
  int s = ir_reduce(g, OP_SUM, e, 1, false, L0);

  it = interp_new(g, 1, true);
  SET(x, 0.1, 1.0);
  eval(y), eval(third), eval(s);
  double y0 = (double)(float)((double)(float)0.1 + (double)(float)0.2);
  ck_assert(interp_data(it, x)[0] == (double)0.1f);  /* the leaf itself is stored as float */
  ck_assert(interp_data(it, y)[0] == y0);
  ck_assert(interp_data(it, y)[0] != 0.1 + 0.2);
  ck_assert(interp_data(it, y)[1] == (double)(float)(1.0 + (double)0.2f));
  ck_assert(interp_data(it, third)[0] == (double)(1.0f / 3.0f));
  double e0 = (double)(float)exp((double)0.1f), e1 = (double)(float)exp(1.0);
  ck_assert(interp_data(it, s)[0] == (double)(float)(e0 + e1));
  interp_free(it);

  it = interp_new(g, 1, false);
  SET(x, 0.1, 1.0);
  eval(y), eval(third);
  ck_assert(interp_data(it, y)[0] == 0.1 + 0.2);
  ck_assert(interp_data(it, third)[0] == 1.0 / 3.0);
}
END_TEST

/* f64 nodes are never rounded, even in f32 mode. */
START_TEST(f32_mode_leaves_f64_alone) {
  int x = input("x", DT_F64, SHAPE(1));
  int y = ir_binary(g, OP_DIV, x, ir_const(g, 3.0, DT_F64, L0), L0);
  it = interp_new(g, 1, true);
  SET(x, 1.0);
  eval(y);
  EXPECT(y, 1.0 / 3.0);
}
END_TEST

/* ---- entries, batch, errors ---- */

START_TEST(entry_updates_are_simultaneous) {
  int a = ir_leaf(g, OP_STATE, ROLE_STATE, "a", DT_F64, SHAPE(2), L0);
  int b = ir_leaf(g, OP_STATE, ROLE_STATE, "b", DT_F64, SHAPE(2), L0);
  int a1 = ir_binary(g, OP_ADD, a, ir_const(g, 1.0, DT_F64, L0), L0);
  ir_add_update(g, ENTRY_TRAIN, a, b);
  ir_add_update(g, ENTRY_TRAIN, b, a1);
  ir_add_output(g, ENTRY_TRAIN, "a1", a1, NULL);
  start();
  SET(a, 1, 2);
  SET(b, 10, 20);
  ck_assert_int_eq(interp_run(it, ENTRY_TRAIN, 1, err), 0);
  EXPECT(a, 10, 20);
  EXPECT(b, 2, 3);      /* a + 1 with the old a */
  EXPECT(a1, 2, 3);
  ck_assert_int_eq(interp_run(it, ENTRY_TRAIN, 1, err), 0);
  EXPECT(a, 2, 3);
  EXPECT(b, 11, 21);
}
END_TEST

START_TEST(symbolic_batch) {
  int B = ir_sym(g, "B");
  Shape s = SHAPE(1, 2);
  s.d[0] = (Dim){1, B};
  int x = input("x", DT_F64, s);
  int sum0 = ir_reduce(g, OP_SUM, x, 1, false, L0);
  int cnt = ir_reduce(g, OP_NUMEL, x, 1, false, L0);
  it = interp_new(g, 4, false);
  ck_assert_ptr_nonnull(it);
  ck_assert_int_eq(interp_numel(it, x), 8);
  double *xv = interp_data(it, x);
  for (int i = 0; i < 8; i++) xv[i] = i;
  int roots[2] = {sum0, cnt};
  ck_assert_int_eq(interp_eval(it, roots, 2, 3, err), 0);
  int64_t d[2];
  interp_shape(it, x, d);
  ck_assert(d[0] == 3 && d[1] == 2);
  EXPECT(sum0, 6, 9);   /* rows 0..2 only */
  EXPECT(cnt, 3);
  ck_assert_int_eq(interp_eval(it, roots, 2, 5, err), -1);
  ck_assert_str_eq(err, "batch 5 is outside [1, 4]");
  ck_assert_int_eq(interp_eval(it, roots, 2, 0, err), -1);
  ck_assert_str_eq(err, "batch 0 is outside [1, 4]");
}
END_TEST

START_TEST(graph_growth_is_reported) {
  int x = input("x", DT_F64, SHAPE(2));
  start();
  int y = ir_unary(g, OP_NEG, x, L0);
  ck_assert_int_eq(interp_eval(it, &y, 1, 1, err), -1);
  ck_assert_str_eq(err, "no node 1");
  ck_assert_int_eq(interp_run(it, ENTRY_EVAL, 1, err), -1);
  ck_assert_str_eq(err, "the graph has 2 nodes but the interpreter was made for 1");
}
END_TEST

/* A label error in the middle of an entry leaves the persistent tensors untouched. */
START_TEST(failed_run_applies_no_update) {
  build_ce();
  int w = ir_leaf(g, OP_PARAM, ROLE_PARAM, "w", DT_F64, SHAPE(1), L0);
  int z = ir_binary(g, OP_MUL, logits, w, L0);
  int ce = ir_binary(g, OP_CROSS_ENTROPY, z, labels, L0);
  ir_add_update(g, ENTRY_TRAIN, w, ir_binary(g, OP_ADD, w, ce, L0));
  start();
  SET(w, 5);
  SET(logits, 1, 2, 3, 1, 1, 1);
  SET(labels, 0, 9);
  ck_assert_int_eq(interp_run(it, ENTRY_TRAIN, 1, err), -1);
  ck_assert_str_eq(err, "cross_entropy: label tensor 'label' has value 9 at index 1, "
                        "outside [0, 3)");
  EXPECT(w, 5);
}
END_TEST

/* ---- RtBackend ---- */

START_TEST(backend_matches_plan_table) {
  int B = ir_sym(g, "B");
  Shape xs = SHAPE(1, 3);
  xs.d[0] = (Dim){1, B};
  int x = input("x", DT_F32, xs);
  int w = ir_leaf(g, OP_PARAM, ROLE_PARAM, "w", DT_F32, SHAPE(3), L0);
  int y = ir_binary(g, OP_MUL, x, w, L0);
  int loss = ir_reduce(g, OP_SUM, y, 3, false, L0);
  ir_add_output(g, ENTRY_GRAD, "loss", loss, NULL);
  ir_add_update(g, ENTRY_TRAIN, w, ir_binary(g, OP_ADD, w, ir_const(g, 1.0, DT_F32, L0), L0));
  Plan plan;
  Trap t;
  if (KILN_TRY(&t)) {
    plan_build(g, 2, NULL, &plan);
    kiln_trap_end(&t);
  } else {
    ck_abort_msg("plan_build failed: %s", t.msg);
  }
  it = interp_new(g, 2, true);
  kiln_program prog;
  RtBackend be;
  interp_backend(it, &plan, &prog, &be);
  ck_assert_ptr_eq(be.prog, &prog);
  ck_assert_int_eq(prog.ntensors, plan.ntensors);
  ck_assert_int_eq(prog.batch, 2);
  ck_assert_str_eq(prog.model, "t");
  int tx = -1, tw = -1, tl = -1;
  for (int i = 0; i < prog.ntensors; i++) {
    const char *nm = prog.tensors[i].name;
    *(!strcmp(nm, "x") ? &tx : !strcmp(nm, "w") ? &tw : &tl) = i;
  }
  ck_assert_str_eq(prog.tensors[tl].name, "loss");
  ck_assert(tx >= 0 && tw >= 0 && tl >= 0);
  be.write(be.self, tw, (double[]){1, 2, 0.1}, 3);
  ck_assert(interp_data(it, w)[2] == (double)0.1f);  /* f32 tensor: stored as float */
  be.write(be.self, tx, (double[]){1, 1, 1, 2, 2, 2}, 6);
  ck_assert_int_eq(be.run(be.self, rt_find_entry(&prog, "grad"), 2, err), 0);
  double l;
  be.read(be.self, tl, &l, 1);
  ck_assert(l == (double)(float)(3 * (3 + (double)0.1f)));
  ck_assert_int_eq(be.run(be.self, rt_find_entry(&prog, "grad"), 1, err), 0);  /* batch 1: first row */
  be.read(be.self, tl, &l, 1);
  ck_assert(l == (double)(float)(3 + (double)0.1f));
  ck_assert_int_eq(be.run(be.self, rt_find_entry(&prog, "train"), 2, err), 0);
  double wv[3];
  be.read(be.self, tw, wv, 3);
  ck_assert(wv[0] == 2 && wv[1] == 3 && wv[2] == (double)(float)(1 + (double)0.1f));
  ck_assert_int_eq(prog.nentries, 4);
  ck_assert_str_eq(prog.entries[3].name, "apply");
  ck_assert_int_eq(be.run(be.self, 4, 2, err), -1);
  ck_assert_str_eq(err, "no entry point 4");
  plan_free(&plan);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("interp");
  TCase *tc = tcase_create("kernels");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, every_op_has_a_kernel);
  tcase_add_test(tc, binary_broadcast_row);
  tcase_add_test(tc, binary_broadcast_both_sides);
  tcase_add_test(tc, binary_broadcast_rank3);
  tcase_add_test(tc, pow_and_relu_grad);
  tcase_add_test(tc, unary_ops);
  tcase_add_test(tc, constants);
  tcase_add_test(tc, sum_keepdims);
  tcase_add_test(tc, mean_and_numel);
  tcase_add_test(tc, sum_to_and_expand);
  tcase_add_test(tc, reshape_keeps_order);
  tcase_add_test(tc, matmul_all_transposes);
  tcase_add_test(tc, cross_entropy_value);
  tcase_add_test(tc, cross_entropy_stable);
  tcase_add_test(tc, cross_entropy_grad_value);
  tcase_add_test(tc, cross_entropy_label_too_big);
  tcase_add_test(tc, cross_entropy_label_negative);
  tcase_add_test(tc, cross_entropy_label_not_integer);
  tcase_add_test(tc, cross_entropy_grad_label_error);
  tcase_add_test(tc, sigmoid_and_tanh);
  tcase_add_test(tc, leaky_relu_and_grad);
  tcase_add_test(tc, softmax_both_axes);
  tcase_add_test(tc, softmax_stable);
  tcase_add_test(tc, bce_logits_matches_naive);
  tcase_add_test(tc, bce_logits_stable);
  tcase_add_test(tc, dropout_mask);
  tcase_add_test(tc, randn_samples);
  tcase_add_test(tc, transpose_values);
  tcase_add_test(tc, concat_and_slice_values);
  tcase_add_test(tc, conv2d_values);
  tcase_add_test(tc, conv2d_groups);
  tcase_add_test(tc, conv2d_adjoint_values);
  tcase_add_test(tc, maxpool_values_and_grad);
  tcase_add_test(tc, maxpool_tie_picks_first);
  tcase_add_test(tc, maxpool_padding_is_minus_infinity);
  tcase_add_test(tc, avgpool_values_and_grad);
  tcase_add_test(tc, avgpool_grad_overlapping);
  tcase_add_test(tc, f32_rounding);
  tcase_add_test(tc, f32_mode_leaves_f64_alone);
  suite_add_tcase(s, tc);
  TCase *te = tcase_create("entries");
  tcase_add_checked_fixture(te, setup, teardown);
  tcase_add_test(te, entry_updates_are_simultaneous);
  tcase_add_test(te, symbolic_batch);
  tcase_add_test(te, graph_growth_is_reported);
  tcase_add_test(te, failed_run_applies_no_update);
  tcase_add_test(te, backend_matches_plan_table);
  suite_add_tcase(s, te);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
