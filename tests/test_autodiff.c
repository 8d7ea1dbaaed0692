/*
 * test_autodiff.c — every vector-Jacobian rule against central finite differences.
 *
 * Each test builds a tiny graph with the IR builders (no frontend), wraps the op under test as
 * loss = sum(op(...) * R) with a random constant R (so every output element gets a different
 * weight and a wrong index in a rule cannot cancel out), differentiates it with ad_reverse, and
 * evaluates the gradient graph with the reference interpreter in f64. Each gradient element is
 * compared with (loss(x + h) - loss(x - h)) / 2h. Shapes are chosen to broadcast ([3,1,4] with
 * [2,4]) so the SUM_TO that undoes broadcasting is exercised by every binary rule.
 *
 * The issue-3 ops get the same treatment over the cases where window arithmetic goes wrong:
 * stride 1/2/3, symmetric, asymmetric and full padding, dilation, groups (depthwise included),
 * non-square inputs and kernels, sizes whose windows do not tile, overlapping pools (inputs
 * spaced apart so that max pooling has no near-ties), both avgpool divisors; the convolution and
 * avgpool adjoints are checked as ops of their own and by differentiating a gradient again.
 *
 * Beyond the rules: a chain shaped like an MLP and a small CNN, an unused parameter (exactly
 * zero gradient), the error for an op without a rule, locations of gradient nodes, and a
 * completeness check that fails as soon as an op is added to ops.def without a rule or an
 * explicit exemption.
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

#include "graph_harness.h"

/* loss = sum(y * R), R a literal constant of y's shape. */
static int weighted_sum(int y) {
  Shape s = ir_at(g, y)->shape;
  int64_t n = shape_numel(&s, (int64_t[]){1});
  double *r = malloc((size_t)n * sizeof *r);
  for (int64_t i = 0; i < n; i++)
    r[i] = uniform(-1, 1);
  int R = ir_leaf(g, OP_CONST, ROLE_NONE, NULL, DT_F64, s, L0);
  ir_at(g, R)->data = ir_literal(g, r, n);
  free(r);
  return ir_reduce(g, OP_SUM, ir_binary(g, OP_MUL, y, R, L0), (1u << s.rank) - 1, false, L0);
}

static void differentiate(int loss, const int *wrt, int nwrt, int *grads) {
  Trap t;
  if (KILN_TRY(&t)) {
    ad_reverse(g, loss, wrt, nwrt, grads);
    kiln_trap_end(&t);
  } else {
    ck_abort_msg("ad_reverse failed: %s", t.msg);
  }
}

static double eval(Interp *it, int node) {
  ck_assert_msg(interp_eval(it, &node, 1, 1, err) == 0, "%s", err);
  return interp_data(it, node)[0];
}

/* Checks d loss / d wrt[i] from ad_reverse against central differences for every element.
 * fixed[] are leaves that are not differentiated (labels, `like` inputs). */
static void gradcheck_loss(int loss, const Fill *wrt, int nwrt, const Fill *fixed, int nfixed) {
  int wrt_ids[8], grads[8];
  ck_assert_int_le(nwrt, 8);
  for (int i = 0; i < nwrt; i++)
    wrt_ids[i] = wrt[i].node;
  differentiate(loss, wrt_ids, nwrt, grads);
  for (int i = 0; i < nwrt; i++)
    ck_assert_msg(shape_eq(&ir_at(g, grads[i])->shape, &ir_at(g, wrt_ids[i])->shape),
                  "gradient %d has the wrong shape", i);

  Interp *it = interp_new(g, 1, false);
  ck_assert_ptr_nonnull(it);
  for (int i = 0; i < nwrt; i++) fill(it, &wrt[i]);
  for (int i = 0; i < nfixed; i++) fill(it, &fixed[i]);
  int roots[9] = {loss};
  memcpy(roots + 1, grads, (size_t)nwrt * sizeof(int));
  ck_assert_msg(interp_eval(it, roots, nwrt + 1, 1, err) == 0, "%s", err);

  const double h = 1e-6, tol = 1e-6;
  for (int i = 0; i < nwrt; i++) {
    int64_t n = interp_numel(it, wrt[i].node);
    double *an = malloc((size_t)n * sizeof *an);
    memcpy(an, interp_data(it, grads[i]), (size_t)n * sizeof *an);
    double *x = interp_data(it, wrt[i].node);
    for (int64_t k = 0; k < n; k++) {
      double x0 = x[k];
      x[k] = x0 + h;
      double lp = eval(it, loss);
      x[k] = x0 - h;
      double lm = eval(it, loss);
      x[k] = x0;
      double fd = (lp - lm) / (2 * h);
      double scale = fmax(1.0, fmax(fabs(fd), fabs(an[k])));
      ck_assert_msg(fabs(fd - an[k]) <= tol * scale,
                    "d loss / d %s[%lld]: autodiff %.12g, finite differences %.12g",
                    ir_at(g, wrt[i].node)->name, (long long)k, an[k], fd);
    }
    free(an);
  }
  interp_free(it);
}

static void gradcheck(int y, const Fill *wrt, int nwrt, const Fill *fixed, int nfixed) {
  gradcheck_loss(weighted_sum(y), wrt, nwrt, fixed, nfixed);
}

static void derivative_check(int y, const Fill *wrt, int nwrt, const Fill *fixed, int nfixed) {
  gradcheck(y, wrt, nwrt, fixed, nfixed);
}

static void check_binary(Op op, Shape sa, Shape sb, bool positive_b) {
  rng_state = 42;
  int a = leaf("a", sa), b = leaf("b", sb);
  int y = ir_binary(g, op, a, b, L0);
  Fill w[2] = {ANY(a), ANY(b)};
  if (positive_b) w[1] = (Fill)POS(b);
  gradcheck(y, w, 2, NULL, 0);
}

/* ---- elementwise, broadcasting ---- */

START_TEST(vjp_add) { check_binary(OP_ADD, SHAPE(3, 1, 4), SHAPE(2, 4), false); }
END_TEST
START_TEST(vjp_add_same_shape) { check_binary(OP_ADD, SHAPE(2, 3), SHAPE(2, 3), false); }
END_TEST
START_TEST(vjp_sub) { check_binary(OP_SUB, SHAPE(2, 4), SHAPE(3, 1, 4), false); }
END_TEST
START_TEST(vjp_mul) { check_binary(OP_MUL, SHAPE(3, 1, 4), SHAPE(4), false); }
END_TEST
START_TEST(vjp_mul_scalar) { check_binary(OP_MUL, SHAPE(3, 2), SHAPE(1), false); }
END_TEST
START_TEST(vjp_div) { check_binary(OP_DIV, SHAPE(3, 1, 4), SHAPE(2, 1), true); }
END_TEST

START_TEST(vjp_pow) {
  rng_state = 7;
  int a = leaf("a", SHAPE(3, 1, 4)), b = leaf("b", SHAPE(2, 4));
  int y = ir_binary(g, OP_POW, a, b, L0);
  Fill w[2] = {POS(a), {b, -1.5, 1.5, false, NULL}};
  gradcheck(y, w, 2, NULL, 0);
}
END_TEST

/* A constant integer exponent on negative bases: d/db (log of a negative) is never built. */
START_TEST(vjp_pow_constant_exponent) {
  rng_state = 8;
  int a = leaf("a", SHAPE(2, 3));
  int y = ir_binary(g, OP_POW, a, ir_const(g, 3.0, DT_F64, L0), L0);
  Fill w[1] = {{a, -2, -0.5, false, NULL}};
  gradcheck(y, w, 1, NULL, 0);
  for (int i = 0; i < g->nnodes; i++)
    ck_assert_msg(ir_at(g, i)->op != OP_LOG, "a log node was built for a constant exponent");
}
END_TEST

static void check_unary(Op op, Fill f) {
  rng_state = 100 + (uint64_t)op;
  int x = leaf("x", SHAPE(3, 4));
  f.node = x;
  gradcheck(ir_unary(g, op, x, L0), &f, 1, NULL, 0);
}

START_TEST(vjp_neg) { check_unary(OP_NEG, (Fill)ANY(0)); }
END_TEST
START_TEST(vjp_exp) { check_unary(OP_EXP, (Fill)ANY(0)); }
END_TEST
START_TEST(vjp_log) { check_unary(OP_LOG, (Fill)POS(0)); }
END_TEST
START_TEST(vjp_sqrt) { check_unary(OP_SQRT, (Fill)POS(0)); }
END_TEST
START_TEST(vjp_relu) { check_unary(OP_RELU, (Fill)KINKFREE(0)); }
END_TEST

/* Linear in dy; zero almost everywhere in x (finite differences agree away from the kink). */
START_TEST(vjp_relu_grad) {
  rng_state = 9;
  int x = leaf("x", SHAPE(3, 4)), d = leaf("d", SHAPE(3, 4));
  Fill w[2] = {KINKFREE(x), ANY(d)};
  gradcheck(ir_binary(g, OP_RELU_GRAD, x, d, L0), w, 2, NULL, 0);
}
END_TEST

/* ---- reductions and broadcasts ---- */

static void check_reduce(Op op, unsigned axes, bool keepdims) {
  rng_state = 11 + axes;
  int x = leaf("x", SHAPE(3, 2, 4));
  Fill w[1] = {ANY(x)};
  gradcheck(ir_reduce(g, op, x, axes, keepdims, L0), w, 1, NULL, 0);
}

START_TEST(vjp_sum_middle) { check_reduce(OP_SUM, 2, false); }
END_TEST
START_TEST(vjp_sum_outer_keepdims) { check_reduce(OP_SUM, 5, true); }
END_TEST
START_TEST(vjp_sum_all) { check_reduce(OP_SUM, 7, false); }
END_TEST
START_TEST(vjp_mean_last) { check_reduce(OP_MEAN, 4, false); }
END_TEST
START_TEST(vjp_mean_first_keepdims) { check_reduce(OP_MEAN, 1, true); }
END_TEST
START_TEST(vjp_mean_all) { check_reduce(OP_MEAN, 7, false); }
END_TEST

/* x * numel(x): NUMEL passes no gradient, so d/dx is just numel (= 6 here). */
START_TEST(vjp_numel) {
  rng_state = 12;
  int x = leaf("x", SHAPE(2, 3));
  int y = ir_binary(g, OP_MUL, x, ir_reduce(g, OP_NUMEL, x, 3, false, L0), L0);
  Fill w[1] = {ANY(x)};
  gradcheck(y, w, 1, NULL, 0);
}
END_TEST

/* `like` only contributes its shape: its gradient is exactly zero. */
START_TEST(vjp_sum_to) {
  rng_state = 13;
  int x = leaf("x", SHAPE(3, 2, 4)), like = leaf("like", SHAPE(2, 1));
  Fill w[2] = {ANY(x), ANY(like)};
  gradcheck(ir_binary(g, OP_SUM_TO, x, like, L0), w, 2, NULL, 0);
}
END_TEST

START_TEST(vjp_expand) {
  rng_state = 14;
  int x = leaf("x", SHAPE(2, 1)), like = leaf("like", SHAPE(3, 2, 4));
  Fill w[2] = {ANY(x), ANY(like)};
  gradcheck(ir_binary(g, OP_EXPAND, x, like, L0), w, 2, NULL, 0);
}
END_TEST

START_TEST(vjp_reshape) {
  rng_state = 15;
  int x = leaf("x", SHAPE(3, 2, 4));
  Fill w[1] = {ANY(x)};
  gradcheck(ir_reshape(g, x, SHAPE(4, 6), L0), w, 1, NULL, 0);
}
END_TEST

/* ---- matmul: op(A)[3,4] @ op(B)[4,2] for every transpose combination ---- */

static void check_matmul(bool ta, bool tb) {
  rng_state = 16 + 2 * ta + tb;
  int a = leaf("a", ta ? SHAPE(4, 3) : SHAPE(3, 4));
  int b = leaf("b", tb ? SHAPE(2, 4) : SHAPE(4, 2));
  Fill w[2] = {ANY(a), ANY(b)};
  gradcheck(ir_matmul(g, a, b, ta, tb, L0), w, 2, NULL, 0);
}

START_TEST(vjp_matmul_nn) { check_matmul(false, false); }
END_TEST
START_TEST(vjp_matmul_nt) { check_matmul(false, true); }
END_TEST
START_TEST(vjp_matmul_tn) { check_matmul(true, false); }
END_TEST
START_TEST(vjp_matmul_tt) { check_matmul(true, true); }
END_TEST

/* The same matrix on both sides: the two contributions must add up. */
START_TEST(vjp_matmul_shared_operand) {
  rng_state = 20;
  int a = leaf("a", SHAPE(3, 3));
  Fill w[1] = {ANY(a)};
  gradcheck(ir_matmul(g, a, a, true, false, L0), w, 1, NULL, 0);
}
END_TEST

/* ---- losses ---- */

static const double label_values[4] = {2, 0, 1, 2};

/* gather along each axis (an index with repeats, so the adjoint must add) and its adjoint,
 * which is linear in dy; the index is data, with no derivative. */
static const double gather_index[] = {2, 0, 2, 1, 0, 0};
START_TEST(vjp_gather) {
  rng_state = 31;
  int x = leaf("x", SHAPE(3, 4));
  int ix = input("ix", DT_I32, SHAPE(3, 2));
  Fill w[1] = {{x, -2, 2, false, NULL}};
  Fill f[1] = {{ix, 0, 0, false, gather_index}};
  Attr a;
  memset(&a, 0, sizeof a);
  a.axis = 1;
  gradcheck(ir_node(g, OP_GATHER, 2, (int[]){x, ix}, &a, L0), w, 1, f, 1);
}
END_TEST

START_TEST(vjp_gather_axis0) {
  rng_state = 32;
  int x = leaf("x", SHAPE(3, 2));
  int ix = input("ix", DT_I32, SHAPE(3, 2));
  Fill w[1] = {{x, -2, 2, false, NULL}};
  Fill f[1] = {{ix, 0, 0, false, gather_index}};
  Attr a;
  memset(&a, 0, sizeof a);
  gradcheck(ir_node(g, OP_GATHER, 2, (int[]){x, ix}, &a, L0), w, 1, f, 1);
}
END_TEST

START_TEST(vjp_gather_grad) {
  rng_state = 33;
  int dy = leaf("dy", SHAPE(3, 2)), like = leaf("like", SHAPE(3, 4));
  int ix = input("ix", DT_I32, SHAPE(3, 2));
  Fill w[1] = {{dy, -2, 2, false, NULL}};
  Fill f[2] = {{ix, 0, 0, false, gather_index}, {like, -1, 1, false, NULL}};
  Attr a;
  memset(&a, 0, sizeof a);
  a.axis = 1;
  gradcheck(ir_node(g, OP_GATHER_GRAD, 3, (int[]){dy, ix, like}, &a, L0), w, 1, f, 2);
}
END_TEST

START_TEST(vjp_cross_entropy) {
  rng_state = 21;
  int z = leaf("z", SHAPE(4, 3));
  int lab = input("label", DT_I32, SHAPE(4));
  Fill w[1] = {{z, -2, 2, false, NULL}};
  Fill f[1] = {{lab, 0, 0, false, label_values}};
  gradcheck(ir_binary(g, OP_CROSS_ENTROPY, z, lab, L0), w, 1, f, 1);
}
END_TEST

/* x -> linear(4->3, torch layout W[out,in]) -> relu -> linear(3->3) -> cross_entropy. */
START_TEST(mlp_chain) {
  rng_state = 22;
  int x = input("x", DT_F64, SHAPE(4, 5));
  int lab = input("label", DT_I32, SHAPE(4));
  int w1 = leaf("fc1.weight", SHAPE(3, 5)), b1 = leaf("fc1.bias", SHAPE(3));
  int w2 = leaf("fc2.weight", SHAPE(3, 3)), b2 = leaf("fc2.bias", SHAPE(3));
  int h = ir_binary(g, OP_ADD, ir_matmul(g, x, w1, false, true, L0), b1, L0);
  h = ir_unary(g, OP_RELU, h, L0);
  int logits = ir_binary(g, OP_ADD, ir_matmul(g, h, w2, false, true, L0), b2, L0);
  int loss = ir_binary(g, OP_CROSS_ENTROPY, logits, lab, L0);
  Fill w[4] = {ANY(w1), ANY(b1), ANY(w2), ANY(b2)};
  Fill f[2] = {{x, -2, 2, false, NULL}, {lab, 0, 0, false, label_values}};
  gradcheck_loss(loss, w, 4, f, 2);
}
END_TEST

/* ---- issue 3: activations and normalised exponentials ---- */

START_TEST(vjp_sigmoid) { check_unary(OP_SIGMOID, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(vjp_tanh) { check_unary(OP_TANH, (Fill){0, -2, 2, false, NULL}); }
END_TEST

/* The elementwise math of the seed chapters (sign: zero away from 0; softplus on both sides of
 * its threshold; maximum: random operands, so no ties). */
START_TEST(vjp_sin) { check_unary(OP_SIN, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(vjp_cos) { check_unary(OP_COS, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(vjp_atan) { check_unary(OP_ATAN, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(vjp_erf) { check_unary(OP_ERF, (Fill){0, -2, 2, false, NULL}); }
END_TEST
START_TEST(vjp_sign) { check_unary(OP_SIGN, (Fill){0, 0.1, 2, false, NULL}); }
END_TEST
START_TEST(vjp_softplus) { check_unary(OP_SOFTPLUS, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(vjp_softplus_above_threshold) {
  check_unary(OP_SOFTPLUS, (Fill){0, 21, 25, false, NULL});
}
END_TEST
START_TEST(vjp_maximum) { check_binary(OP_MAXIMUM, SHAPE(3, 1, 4), SHAPE(2, 4), false); }
END_TEST

START_TEST(vjp_leaky_relu) {
  rng_state = 30;
  int x = leaf("x", SHAPE(3, 4));
  Fill w[1] = {KINKFREE(x)};
  gradcheck(op1(OP_LEAKY_RELU, x, &(Attr){.value = 0.1}), w, 1, NULL, 0);
}
END_TEST

/* Linear in dy with the same slope; zero in x away from the kink. dy broadcasts ([4] into
 * [3,4]), so the SUM_TO of give() is exercised too. */
START_TEST(vjp_leaky_relu_grad) {
  rng_state = 31;
  int x = leaf("x", SHAPE(3, 4)), d = leaf("d", SHAPE(4)), d2 = leaf("d2", SHAPE(3, 4));
  Fill w[2] = {KINKFREE(x), ANY(d)};
  gradcheck(op2(OP_LEAKY_RELU_GRAD, x, d, &(Attr){.value = 0.2}), w, 2, NULL, 0);
  Fill w2[2] = {KINKFREE(x), ANY(d2)};
  gradcheck(op2(OP_LEAKY_RELU_GRAD, x, d2, &(Attr){.value = -0.5}), w2, 2, NULL, 0);
}
END_TEST

static void check_softmax(Op op, Shape s, int axis) {
  rng_state = 32 + (uint64_t)axis;
  int x = leaf("x", s);
  Fill w[1] = {{x, -2, 2, false, NULL}};
  gradcheck(op1(op, x, &(Attr){.axis = axis}), w, 1, NULL, 0);
}

START_TEST(vjp_softmax_axis0) { check_softmax(OP_SOFTMAX, SHAPE(3, 4), 0); }
END_TEST
START_TEST(vjp_softmax_axis1) { check_softmax(OP_SOFTMAX, SHAPE(3, 4), 1); }
END_TEST
START_TEST(vjp_softmax_middle_axis) { check_softmax(OP_SOFTMAX, SHAPE(2, 3, 2), 1); }
END_TEST
START_TEST(vjp_log_softmax_axis0) { check_softmax(OP_LOG_SOFTMAX, SHAPE(3, 4), 0); }
END_TEST
START_TEST(vjp_log_softmax_axis1) { check_softmax(OP_LOG_SOFTMAX, SHAPE(3, 4), 1); }
END_TEST
START_TEST(vjp_log_softmax_middle_axis) { check_softmax(OP_LOG_SOFTMAX, SHAPE(2, 3, 2), 1); }
END_TEST

/* Targets broadcast one way, then logits the other. */
START_TEST(vjp_bce_logits) {
  rng_state = 34;
  int x = leaf("x", SHAPE(3, 4)), t = leaf("t", SHAPE(4));
  Fill w[2] = {{x, -3, 3, false, NULL}, {t, 0, 1, false, NULL}};
  gradcheck(ir_binary(g, OP_BCE_LOGITS, x, t, L0), w, 2, NULL, 0);
  int x2 = leaf("x2", SHAPE(4)), t2 = leaf("t2", SHAPE(3, 4));
  Fill w2[2] = {{x2, -3, 3, false, NULL}, {t2, 0, 1, false, NULL}};
  gradcheck(ir_binary(g, OP_BCE_LOGITS, x2, t2, L0), w2, 2, NULL, 0);
}
END_TEST

/* With the counter fixed the mask is fixed: the op is linear and finite differences apply; and
 * the gradient of sum(dropout(x)) is exactly keep / (1 - p), element by element. */
START_TEST(vjp_dropout) {
  rng_state = 35;
  const double p = 0.3, step[1] = {17};
  const uint32_t salt = 5;
  int x = leaf("x", SHAPE(6, 5));
  int ctr = input("step", DT_F64, shape_of(0, NULL));
  Attr a = {.value = p, .salt = salt};
  int y = op2(OP_DROPOUT, x, ctr, &a);
  Fill w[1] = {ANY(x)};
  Fill f[1] = {{ctr, 0, 0, false, step}};
  gradcheck(y, w, 1, f, 1);

  int loss = ir_reduce(g, OP_SUM, y, 3, false, L0), grad;
  differentiate(loss, &x, 1, &grad);
  Interp *it = interp_new(g, 1, false);
  fill(it, &f[0]);
  ck_assert_int_eq(interp_eval(it, &grad, 1, 1, err), 0);
  int kept = 0;
  for (int64_t i = 0; i < 30; i++) {
    bool keep = kiln_dropout_uniform(salt, step[0], i) >= p;
    kept += keep;
    ck_assert(interp_data(it, grad)[i] == (keep ? 1 / (1 - p) : 0.0));
  }
  ck_assert(kept > 0 && kept < 30);  /* both cases occur */
  interp_free(it);
}
END_TEST

/* ---- issue 3: layout ---- */

START_TEST(vjp_transpose) {
  rng_state = 36;
  int x = leaf("x", SHAPE(2, 3, 4));
  Fill w[1] = {ANY(x)};
  gradcheck(ir_transpose(g, x, (int[]){2, 0, 1}, L0), w, 1, NULL, 0);
  int x2 = leaf("x2", SHAPE(3, 2));
  Fill w2[1] = {ANY(x2)};
  gradcheck(ir_transpose(g, x2, (int[]){1, 0}, L0), w2, 1, NULL, 0);
}
END_TEST

static void check_concat(Shape sa, Shape sb, int axis) {
  rng_state = 37 + (uint64_t)axis;
  int a = leaf("a", sa), b = leaf("b", sb);
  Fill w[2] = {ANY(a), ANY(b)};
  gradcheck(op2(OP_CONCAT, a, b, &(Attr){.axis = axis}), w, 2, NULL, 0);
}

START_TEST(vjp_concat_axis0) { check_concat(SHAPE(2, 3), SHAPE(1, 3), 0); }
END_TEST
START_TEST(vjp_concat_channels) { check_concat(SHAPE(2, 3, 2, 2), SHAPE(2, 1, 2, 2), 1); }
END_TEST
START_TEST(vjp_concat_last) { check_concat(SHAPE(2, 2), SHAPE(2, 3), 1); }
END_TEST

/* A leading, a middle and a trailing slice: zero blocks on either side or both. */
START_TEST(vjp_slice) {
  static const int64_t cuts[3][2] = {{0, 2}, {1, 3}, {3, 2}};
  for (int k = 0; k < 3; k++) {
    rng_state = 38 + (uint64_t)k;
    int x = leaf(k == 0 ? "x0" : k == 1 ? "x1" : "x2", SHAPE(3, 5, 2));
    Fill w[1] = {ANY(x)};
    gradcheck(op1(OP_SLICE, x, &(Attr){.axis = 1, .start = cuts[k][0], .len = cuts[k][1]}), w,
              1, NULL, 0);
  }
}
END_TEST

/* Slicing back what was concatenated: the two rules compose into the identity. */
START_TEST(vjp_concat_then_slice) {
  rng_state = 41;
  int a = leaf("a", SHAPE(2, 3)), b = leaf("b", SHAPE(2, 2));
  int c = op2(OP_CONCAT, a, b, &(Attr){.axis = 1});
  int y = op1(OP_SLICE, c, &(Attr){.axis = 1, .start = 2, .len = 2});
  Fill w[2] = {ANY(a), ANY(b)};
  gradcheck(y, w, 2, NULL, 0);
}
END_TEST

/* ---- issue 3: 2-D windows ---- */

START_TEST(vjp_conv2d_plain) { check_conv(SHAPE(2, 3, 5, 5), 4, WIN(.k = {3, 3})); }
END_TEST
/* 7x5 with a 3x3 kernel at stride 2: the last row and column are never a window's start. */
START_TEST(vjp_conv2d_stride2_pad1_odd) {
  check_conv(SHAPE(1, 2, 7, 5), 3, WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1}));
}
END_TEST
START_TEST(vjp_conv2d_stride3_pad2_nonsquare) {
  check_conv(SHAPE(1, 2, 8, 7), 2, WIN(.k = {2, 3}, .s = {3, 3}, .p = {2, 2, 2, 2}));
}
END_TEST
START_TEST(vjp_conv2d_asymmetric) {
  check_conv(SHAPE(1, 2, 6, 5), 3, WIN(.k = {3, 2}, .s = {2, 1}, .p = {0, 2, 1, 0}));
}
END_TEST
START_TEST(vjp_conv2d_dilation2) {
  check_conv(SHAPE(1, 2, 7, 6), 2, WIN(.k = {3, 2}, .d = {2, 2}, .p = {1, 1, 1, 1}));
}
END_TEST
START_TEST(vjp_conv2d_mixed_dilation_stride) {
  check_conv(SHAPE(2, 2, 6, 7), 2, WIN(.k = {3, 3}, .s = {1, 2}, .d = {2, 1}, .p = {2, 1, 0, 1}));
}
END_TEST
START_TEST(vjp_conv2d_groups2) {
  check_conv(SHAPE(2, 4, 5, 4), 6, WIN(.k = {3, 3}, .p = {1, 1, 1, 1}, .groups = 2));
}
END_TEST
START_TEST(vjp_conv2d_groups4_dilation_stride) {
  check_conv(SHAPE(1, 8, 6, 6), 4, WIN(.k = {2, 2}, .s = {2, 2}, .d = {2, 2}, .groups = 4));
}
END_TEST
START_TEST(vjp_conv2d_depthwise) {
  check_conv(SHAPE(1, 4, 5, 5), 4, WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1}, .groups = 4));
}
END_TEST
/* Depthwise with a channel multiplier of 2: each input channel feeds two outputs. */
START_TEST(vjp_conv2d_depthwise_multiplier) {
  check_conv(SHAPE(1, 2, 4, 4), 4, WIN(.k = {2, 3}, .p = {0, 1, 1, 1}, .groups = 2));
}
END_TEST
START_TEST(vjp_conv2d_pointwise) { check_conv(SHAPE(2, 3, 4, 5), 5, WIN(.k = {1, 1})); }
END_TEST
/* "Full" padding (seed 003): k - 1 on every side, so every partial overlap is an output. */
START_TEST(vjp_conv2d_full_padding) {
  check_conv(SHAPE(1, 1, 4, 3), 2, WIN(.k = {3, 3}, .p = {2, 2, 2, 2}));
}
END_TEST

/* The gradient graph differentiated again: the conv adjoints' own rules carry it, and the
 * result matches finite differences of the first gradient. */
START_TEST(conv2d_double_backward) {
  rng_state = 60;
  Win w = WIN(.k = {3, 2}, .s = {2, 1}, .p = {1, 0, 1, 1}, .groups = 2);
  Attr a = win_attr(&w);
  int x = leaf("x", SHAPE(1, 4, 5, 4)), wt = leaf("w", SHAPE(2, 2, 3, 2));
  int y = op2(OP_CONV2D, x, wt, &a);
  y = ir_binary(g, OP_MUL, y, y, L0);  /* nonlinear, so the second derivatives are not zero */
  int wrt[2] = {x, wt}, grads[2];
  differentiate(weighted_sum(y), wrt, 2, grads);
  Fill f[2] = {ANY(x), ANY(wt)};
  gradcheck(grads[0], f, 2, NULL, 0);
  gradcheck(grads[1], f, 2, NULL, 0);
}
END_TEST

static void check_maxpool(Shape xs, Win w) {
  rng_state = 70 + (uint64_t)(xs.d[2].n + w.k[1]);
  Attr a = win_attr(&w);
  int x = leaf("x", xs);
  double *v = distinct_values(shape_numel(&xs, (int64_t[]){1}));
  Fill f[1] = {{x, 0, 0, false, v}};
  int y = op1(OP_MAXPOOL2D, x, &a);
  gradcheck(y, f, 1, NULL, 0);
  /* maxpool2d_grad in dy and maxpool2d_pick in t: linear, each the other's adjoint; x fixed */
  int dy = leaf("dy", ir_at(g, y)->shape), t = leaf("t", xs);
  Fill fd[1] = {ANY(dy)}, ft[1] = {ANY(t)};
  gradcheck(op2(OP_MAXPOOL2D_GRAD, x, dy, &a), fd, 1, f, 1);
  gradcheck(op2(OP_MAXPOOL2D_PICK, x, t, &a), ft, 1, f, 1);
  free(v);
}

START_TEST(vjp_maxpool2d_tiling) { check_maxpool(SHAPE(1, 2, 4, 6), WIN(.k = {2, 2}, .s = {2, 2})); }
END_TEST
/* Overlapping windows (kernel 3, stride 2) on a 7x5 input: shared elements collect several dy. */
START_TEST(vjp_maxpool2d_overlapping_odd) {
  check_maxpool(SHAPE(2, 2, 7, 5), WIN(.k = {3, 3}, .s = {2, 2}));
}
END_TEST
START_TEST(vjp_maxpool2d_padded) {
  check_maxpool(SHAPE(1, 2, 6, 5), WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1}));
}
END_TEST
START_TEST(vjp_maxpool2d_asymmetric_nonsquare) {
  check_maxpool(SHAPE(1, 1, 5, 6), WIN(.k = {2, 3}, .s = {1, 2}, .p = {1, 0, 0, 1}));
}
END_TEST
START_TEST(vjp_maxpool2d_dilation) {
  check_maxpool(SHAPE(1, 1, 5, 5), WIN(.k = {2, 2}, .d = {2, 2}));
}
END_TEST
/* Max pooling after ReLU, whose gradient takes ReLU's mask on the pooled tensor (opt.c's
 * relu-pool rule): overlapping windows, and tiling ones, about half their inputs negative. */
START_TEST(vjp_relu_then_maxpool2d) {
  const Win ws[] = {WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1}), WIN(.k = {2, 2}, .s = {2, 2})};
  for (int i = 0; i < 2; i++) {
    rng_state = 90 + (uint64_t)i;
    Shape xs = SHAPE(2, 2, 6, 6);
    Attr a = win_attr(&ws[i]);
    int x = leaf(i ? "x_tiling" : "x_overlapping", xs);
    int64_t n = shape_numel(&xs, (int64_t[]){1});
    double *v = distinct_values(n);
    for (int64_t k = 0; k < n; k++)
      v[k] += 0.0125; /* no input at ReLU's kink */
    Fill f[1] = {{x, 0, 0, false, v}};
    gradcheck(op1(OP_MAXPOOL2D, ir_unary(g, OP_RELU, x, L0), &a), f, 1, NULL, 0);
    free(v);
  }
}
END_TEST

START_TEST(vjp_avgpool2d_overlapping_padded) {
  for (int inc = 0; inc < 2; inc++) {
    teardown(), setup();
    check_avgpool(SHAPE(1, 2, 7, 5),
                  WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1}, .include_pad = inc));
  }
}
END_TEST
START_TEST(vjp_avgpool2d_asymmetric_nonsquare) {
  for (int inc = 0; inc < 2; inc++) {
    teardown(), setup();
    check_avgpool(SHAPE(1, 2, 5, 6),
                  WIN(.k = {2, 3}, .s = {2, 1}, .p = {1, 0, 1, 1}, .include_pad = inc));
  }
}
END_TEST
/* Padding past half the kernel, as ONNX's ceil_mode gives: the last windows hang over the end
 * but still hold an element of the input. */
START_TEST(vjp_pools_ceil_mode_padding) {
  check_maxpool(SHAPE(1, 2, 7, 7), WIN(.k = {3, 3}, .s = {3, 3}, .p = {0, 2, 0, 2}));
  for (int inc = 0; inc < 2; inc++) {
    teardown(), setup();
    check_avgpool(SHAPE(1, 2, 7, 6),
                  WIN(.k = {3, 2}, .s = {3, 2}, .p = {0, 2, 1, 1}, .include_pad = inc));
  }
}
END_TEST
START_TEST(vjp_avgpool2d_unpadded) { check_avgpool(SHAPE(2, 1, 4, 3), WIN(.k = {2, 2})); }
END_TEST

START_TEST(avgpool2d_double_backward) {
  rng_state = 61;
  Win w = WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1});
  Attr a = win_attr(&w);
  int x = leaf("x", SHAPE(1, 2, 5, 5));
  int y = op1(OP_AVGPOOL2D, x, &a);
  y = ir_binary(g, OP_MUL, y, y, L0);
  int grad;
  differentiate(weighted_sum(y), &x, 1, &grad);
  Fill f[1] = {ANY(x)};
  gradcheck(grad, f, 1, NULL, 0);
}
END_TEST

/* A small convolutional network end to end: conv, leaky relu, max pool, flatten, softmax
 * cross-entropy through log_softmax. */
START_TEST(cnn_chain) {
  rng_state = 62;
  Win cw = WIN(.k = {3, 3}, .p = {1, 1, 1, 1}), pw = WIN(.k = {2, 2}, .s = {2, 2});
  Attr ca = win_attr(&cw), pa = win_attr(&pw);
  int x = input("x", DT_F64, SHAPE(2, 1, 4, 4));
  int w1 = leaf("conv1.weight", SHAPE(2, 1, 3, 3)), b1 = leaf("conv1.bias", SHAPE(2, 1, 1));
  int w2 = leaf("fc.weight", SHAPE(3, 8));
  int h = ir_binary(g, OP_ADD, op2(OP_CONV2D, x, w1, &ca), b1, L0);
  h = op1(OP_LEAKY_RELU, h, &(Attr){.value = 0.01});
  h = op1(OP_MAXPOOL2D, h, &pa);
  h = ir_reshape(g, h, SHAPE(2, 8), L0);
  int z = ir_matmul(g, h, w2, false, true, L0);
  int ls = op1(OP_LOG_SOFTMAX, z, &(Attr){.axis = 1});
  int loss = weighted_sum(ls);
  Fill w[3] = {ANY(w1), ANY(b1), ANY(w2)};
  Fill f[1] = {{x, -2, 2, false, NULL}};
  gradcheck_loss(loss, w, 3, f, 1);
}
END_TEST

/* ---- structure ---- */

START_TEST(unused_param_gets_exact_zero) {
  int w = leaf("w", SHAPE(2, 3)), u = leaf("u", SHAPE(4, 1)), s = leaf("s", SHAPE(1));
  int loss = ir_reduce(g, OP_SUM, ir_unary(g, OP_EXP, w, L0), 3, false, L0);
  int wrt[3] = {w, u, s}, grads[3];
  differentiate(loss, wrt, 3, grads);
  ck_assert(shape_eq(&ir_at(g, grads[1])->shape, &ir_at(g, u)->shape));
  ck_assert(shape_eq(&ir_at(g, grads[2])->shape, &ir_at(g, s)->shape));
  Interp *it = interp_new(g, 1, false);
  for (int i = 0; i < 4; i++) interp_data(it, u)[i] = 3.0;
  interp_data(it, s)[0] = 5.0;
  ck_assert_int_eq(interp_eval(it, grads, 3, 1, err), 0);
  for (int i = 0; i < 4; i++) ck_assert(interp_data(it, grads[1])[i] == 0.0);
  ck_assert(interp_data(it, grads[2])[0] == 0.0);
  interp_free(it);
}
END_TEST

START_TEST(cross_entropy_grad_is_not_differentiable) {
  static const SrcFile src = {"m.kiln", "z = x * w\nbad = cross_entropy_grad(z, label, 1)\n"};
  Loc at = {&src, 2, 7};
  int x = input("x", DT_F64, SHAPE(2, 3)), w = leaf("w", SHAPE(3));
  int lab = input("label", DT_I32, SHAPE(2));
  int z = ir_binary(g, OP_MUL, x, w, L0);
  int in[3] = {z, lab, ir_const(g, 1.0, DT_F64, L0)};
  int bad = ir_node(g, OP_CROSS_ENTROPY_GRAD, 3, in, NULL, at);
  int loss = weighted_sum(bad);
  int grad;
  Trap t;
  if (KILN_TRY(&t)) {
    ad_reverse(g, loss, &w, 1, &grad);
    kiln_trap_end(&t);
    ck_abort_msg("ad_reverse should have failed");
  }
  ck_assert_str_eq(t.msg, "m.kiln:2:7: error: cannot differentiate through cross_entropy_grad\n"
                          "  bad = cross_entropy_grad(z, label, 1)\n"
                          "        ^\n");
}
END_TEST

/* An op without a rule is fine where no gradient has to flow through it. */
START_TEST(no_rule_needed_off_the_gradient_path) {
  rng_state = 23;
  int c = input("c", DT_F64, SHAPE(2, 3)), w = leaf("w", SHAPE(2, 3));
  int lab = input("label", DT_I32, SHAPE(2));
  int in[3] = {c, lab, ir_const(g, 1.0, DT_F64, L0)};
  int cg = ir_node(g, OP_CROSS_ENTROPY_GRAD, 3, in, NULL, L0);
  int y = ir_binary(g, OP_MUL, w, cg, L0);
  Fill wf[1] = {ANY(w)};
  Fill f[2] = {ANY(c), {lab, 0, 0, false, label_values}};
  gradcheck(y, wf, 1, f, 2);
}
END_TEST

START_TEST(integer_wrt_is_an_error) {
  int x = leaf("x", SHAPE(2, 3));
  int lab = input("label", DT_I32, SHAPE(2));
  int loss = ir_binary(g, OP_CROSS_ENTROPY, x, lab, L0);
  int wrt[2] = {x, lab}, grads[2];
  Trap t;
  if (KILN_TRY(&t)) {
    ad_reverse(g, loss, wrt, 2, grads);
    kiln_trap_end(&t);
    ck_abort_msg("ad_reverse should have failed");
  }
  ck_assert_str_eq(t.msg, "error: cannot differentiate with respect to i32 tensor 'label'\n");
}
END_TEST

/* Every node ad_reverse builds points at the model line of the forward op it differentiates. */
START_TEST(gradient_nodes_carry_forward_locations) {
  static const SrcFile src = {"m.kiln", "h = relu(x)\ny = h * h\n"};
  Loc l1 = {&src, 1, 5}, l2 = {&src, 2, 7};
  int x = leaf("x", SHAPE(2, 3));
  int h = ir_unary(g, OP_RELU, x, l1);
  int y = ir_binary(g, OP_MUL, h, h, l2);
  int loss = ir_reduce(g, OP_SUM, y, 3, false, l2);
  int before = g->nnodes, grad;
  differentiate(loss, &x, 1, &grad);
  ck_assert_int_gt(g->nnodes, before);
  for (int i = before; i < g->nnodes; i++) {
    const Node *n = ir_at(g, i);
    ck_assert_ptr_eq(n->loc.file, &src);
    ck_assert_int_eq(n->loc.line, n->op == OP_RELU_GRAD ? 1 : 2);
  }
  ck_assert_int_eq(ir_at(g, grad)->op, OP_RELU_GRAD);
}
END_TEST

/* Adding an op to ops.def without a VJP rule (or listing it here on purpose) breaks this. */
START_TEST(every_op_has_a_rule_or_is_exempt) {
  /* cross_entropy_grad: no second derivatives of the loss. */
  static const Op non_differentiable[] = {OP_CROSS_ENTROPY_GRAD};
  for (int op = 0; op < OP_COUNT; op++) {
    bool exempt = false;
    for (size_t i = 0; i < sizeof non_differentiable / sizeof *non_differentiable; i++)
      exempt |= non_differentiable[i] == (Op)op;
    if (op_is_leaf((Op)op))
      ck_assert_msg(!ad_has_vjp((Op)op), "leaf %s has a VJP rule", op_names[op]);
    else if (exempt)
      ck_assert_msg(!ad_has_vjp((Op)op), "%s is listed as non-differentiable but has a rule",
                    op_names[op]);
    else
      ck_assert_msg(ad_has_vjp((Op)op), "%s has no VJP rule", op_names[op]);
  }
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("autodiff");
  TCase *tc = tcase_create("rules");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, vjp_add);
  tcase_add_test(tc, vjp_add_same_shape);
  tcase_add_test(tc, vjp_sub);
  tcase_add_test(tc, vjp_mul);
  tcase_add_test(tc, vjp_mul_scalar);
  tcase_add_test(tc, vjp_div);
  tcase_add_test(tc, vjp_pow);
  tcase_add_test(tc, vjp_pow_constant_exponent);
  tcase_add_test(tc, vjp_neg);
  tcase_add_test(tc, vjp_exp);
  tcase_add_test(tc, vjp_log);
  tcase_add_test(tc, vjp_sqrt);
  tcase_add_test(tc, vjp_relu);
  tcase_add_test(tc, vjp_relu_grad);
  tcase_add_test(tc, vjp_sum_middle);
  tcase_add_test(tc, vjp_sum_outer_keepdims);
  tcase_add_test(tc, vjp_sum_all);
  tcase_add_test(tc, vjp_mean_last);
  tcase_add_test(tc, vjp_mean_first_keepdims);
  tcase_add_test(tc, vjp_mean_all);
  tcase_add_test(tc, vjp_numel);
  tcase_add_test(tc, vjp_sum_to);
  tcase_add_test(tc, vjp_expand);
  tcase_add_test(tc, vjp_reshape);
  tcase_add_test(tc, vjp_matmul_nn);
  tcase_add_test(tc, vjp_matmul_nt);
  tcase_add_test(tc, vjp_matmul_tn);
  tcase_add_test(tc, vjp_matmul_tt);
  tcase_add_test(tc, vjp_matmul_shared_operand);
  tcase_add_test(tc, vjp_cross_entropy);
  tcase_add_test(tc, mlp_chain);
  suite_add_tcase(s, tc);
  TCase *tw = tcase_create("issue3");
  tcase_add_checked_fixture(tw, setup, teardown);
  tcase_set_timeout(tw, 60);
  tcase_add_test(tw, vjp_sigmoid);
  tcase_add_test(tw, vjp_tanh);
  tcase_add_test(tw, vjp_gather);
  tcase_add_test(tw, vjp_gather_axis0);
  tcase_add_test(tw, vjp_gather_grad);
  tcase_add_test(tw, vjp_sin);
  tcase_add_test(tw, vjp_cos);
  tcase_add_test(tw, vjp_atan);
  tcase_add_test(tw, vjp_erf);
  tcase_add_test(tw, vjp_sign);
  tcase_add_test(tw, vjp_softplus);
  tcase_add_test(tw, vjp_softplus_above_threshold);
  tcase_add_test(tw, vjp_maximum);
  tcase_add_test(tw, vjp_leaky_relu);
  tcase_add_test(tw, vjp_leaky_relu_grad);
  tcase_add_test(tw, vjp_softmax_axis0);
  tcase_add_test(tw, vjp_softmax_axis1);
  tcase_add_test(tw, vjp_softmax_middle_axis);
  tcase_add_test(tw, vjp_log_softmax_axis0);
  tcase_add_test(tw, vjp_log_softmax_axis1);
  tcase_add_test(tw, vjp_log_softmax_middle_axis);
  tcase_add_test(tw, vjp_bce_logits);
  tcase_add_test(tw, vjp_dropout);
  tcase_add_test(tw, vjp_transpose);
  tcase_add_test(tw, vjp_concat_axis0);
  tcase_add_test(tw, vjp_concat_channels);
  tcase_add_test(tw, vjp_concat_last);
  tcase_add_test(tw, vjp_slice);
  tcase_add_test(tw, vjp_concat_then_slice);
  tcase_add_test(tw, vjp_conv2d_plain);
  tcase_add_test(tw, vjp_conv2d_stride2_pad1_odd);
  tcase_add_test(tw, vjp_conv2d_stride3_pad2_nonsquare);
  tcase_add_test(tw, vjp_conv2d_asymmetric);
  tcase_add_test(tw, vjp_conv2d_dilation2);
  tcase_add_test(tw, vjp_conv2d_mixed_dilation_stride);
  tcase_add_test(tw, vjp_conv2d_groups2);
  tcase_add_test(tw, vjp_conv2d_groups4_dilation_stride);
  tcase_add_test(tw, vjp_conv2d_depthwise);
  tcase_add_test(tw, vjp_conv2d_depthwise_multiplier);
  tcase_add_test(tw, vjp_conv2d_pointwise);
  tcase_add_test(tw, vjp_conv2d_full_padding);
  tcase_add_test(tw, conv2d_double_backward);
  tcase_add_test(tw, vjp_maxpool2d_tiling);
  tcase_add_test(tw, vjp_maxpool2d_overlapping_odd);
  tcase_add_test(tw, vjp_maxpool2d_padded);
  tcase_add_test(tw, vjp_maxpool2d_asymmetric_nonsquare);
  tcase_add_test(tw, vjp_maxpool2d_dilation);
  tcase_add_test(tw, vjp_relu_then_maxpool2d);
  tcase_add_test(tw, vjp_avgpool2d_overlapping_padded);
  tcase_add_test(tw, vjp_avgpool2d_asymmetric_nonsquare);
  tcase_add_test(tw, vjp_pools_ceil_mode_padding);
  tcase_add_test(tw, vjp_avgpool2d_unpadded);
  tcase_add_test(tw, avgpool2d_double_backward);
  tcase_add_test(tw, cnn_chain);
  suite_add_tcase(s, tw);
  TCase *ts = tcase_create("structure");
  tcase_add_checked_fixture(ts, setup, teardown);
  tcase_add_test(ts, unused_param_gets_exact_zero);
  tcase_add_test(ts, cross_entropy_grad_is_not_differentiable);
  tcase_add_test(ts, no_rule_needed_off_the_gradient_path);
  tcase_add_test(ts, integer_wrt_is_an_error);
  tcase_add_test(ts, gradient_nodes_carry_forward_locations);
  tcase_add_test(ts, every_op_has_a_rule_or_is_exempt);
  suite_add_tcase(s, ts);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
