/*
 * test_forward.c — forward mode (ad_forward) and Hessian-vector products.
 *
 * Tangent rules: each test builds a tiny graph with the IR builders, seeds every float input of
 * the op under test with a random tangent leaf, and evaluates the tangent of the op's output in
 * the f64 reference interpreter. It is compared element by element with central differences
 * of the forward value along the same direction, (y(x + h v) - y(x - h v)) / 2h — once with all
 * inputs moving together and once per input with the others' tangents zeroed, so a wrong term
 * cannot hide behind a right one. Shapes and window cases follow test_autodiff.c: broadcasting
 * binary ops, every matmul transpose, conv2d and both adjoints over strides, padding, dilation
 * and groups, pools, and the second-order ops of the backward pass (cross_entropy_grad,
 * relu_grad, maxpool2d_grad) that forward-over-reverse goes through.
 *
 * Hessian-vector products: models compiled from model-file text (an MLP with cross-entropy, a
 * conv + batch norm + max pool + avg pool network), H·v from the grad entry after
 * train_build_hvp against central differences of the gradient, (∇L(θ + h v) − ∇L(θ − h v)) / 2h;
 * symmetry vᵀ(H w) = wᵀ(H v); and train_build_jvp's directional derivative of the loss against
 * ∇L · v from reverse mode; the generated C against the reference on the extended entry (kiln
 * check). Then structure: every op has a tangent rule, errors point at the
 * model line, and an op is only asked for a tangent where one flows.
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
#include "driver/driver.h"
#include "front/front.h"
#include "ref/ref.h"

#include "graph_harness.h"

static void forward(const int *wrt, const int *tans, int nwrt, const int *outs, int nouts,
                    int *jvps) {
  Trap t;
  if (KILN_TRY(&t)) {
    ad_forward(g, wrt, tans, nwrt, outs, nouts, jvps);
    kiln_trap_end(&t);
  } else {
    ck_abort_msg("ad_forward failed: %s", t.msg);
  }
}

static void eval_into(Interp *it, int node, double *out) {
  ck_assert_msg(interp_eval(it, &node, 1, 1, err) == 0, "%s", err);
  memcpy(out, interp_data(it, node), (size_t)interp_numel(it, node) * sizeof *out);
}

/* Checks the tangent of y along random directions of wrt[] against central differences.
 * fixed[] are leaves that do not move (labels, counters, `like` inputs). */
static void jvpcheck(int y, const Fill *wrt, int nwrt, const Fill *fixed, int nfixed) {
  int w[8], tans[8], jvp;
  ck_assert_int_le(nwrt, 8);
  for (int i = 0; i < nwrt; i++) {
    w[i] = wrt[i].node;
    char name[32];
    snprintf(name, sizeof name, "tangent%d", i);
    if (ir_find_leaf(g, name) >= 0)  /* a second check in one graph */
      snprintf(name, sizeof name, "tangent%d_%d", i, g->nnodes);
    Node wn = *ir_at(g, w[i]);
    tans[i] = ir_leaf(g, OP_INPUT, ROLE_INPUT, name, wn.dtype, wn.shape, L0);
  }
  forward(w, tans, nwrt, &y, 1, &jvp);
  ck_assert(shape_eq(&ir_at(g, jvp)->shape, &ir_at(g, y)->shape));

  Interp *it = interp_new(g, 1, false);
  ck_assert_ptr_nonnull(it);
  for (int i = 0; i < nwrt; i++) fill(it, &wrt[i]);
  for (int i = 0; i < nfixed; i++) fill(it, &fixed[i]);
  double *v[8];
  for (int i = 0; i < nwrt; i++) {
    Fill tf = ANY(tans[i]);
    fill(it, &tf);
    int64_t n = interp_numel(it, tans[i]);
    v[i] = malloc((size_t)n * sizeof(double));
    memcpy(v[i], interp_data(it, tans[i]), (size_t)n * sizeof(double));
  }
  int64_t ny = shape_numel(&ir_at(g, y)->shape, (int64_t[]){1});
  double *an = malloc((size_t)ny * sizeof *an), *yp = malloc((size_t)ny * sizeof *yp),
         *ym = malloc((size_t)ny * sizeof *ym);
  const double h = 1e-6, tol = 1e-6;
  /* only = -1: every input moves; otherwise only input `only` does. */
  for (int only = nwrt > 1 ? -1 : 0; only < nwrt; only++) {
    for (int i = 0; i < nwrt; i++) {
      int64_t n = interp_numel(it, tans[i]);
      for (int64_t k = 0; k < n; k++)
        interp_data(it, tans[i])[k] = only < 0 || only == i ? v[i][k] : 0.0;
    }
    eval_into(it, jvp, an);
    for (int s = 0; s < 2; s++) {
      for (int i = 0; i < nwrt; i++) {
        if (only >= 0 && only != i) continue;
        double *x = interp_data(it, w[i]);
        for (int64_t k = 0; k < interp_numel(it, w[i]); k++)
          x[k] += (s == 0 ? h : -2 * h) * v[i][k];
      }
      eval_into(it, y, s == 0 ? yp : ym);
    }
    for (int i = 0; i < nwrt; i++) {
      if (only >= 0 && only != i) continue;
      double *x = interp_data(it, w[i]);
      for (int64_t k = 0; k < interp_numel(it, w[i]); k++)
        x[k] += h * v[i][k];
    }
    for (int64_t k = 0; k < ny; k++) {
      double fd = (yp[k] - ym[k]) / (2 * h);
      double scale = fmax(1.0, fmax(fabs(fd), fabs(an[k])));
      ck_assert_msg(fabs(fd - an[k]) <= tol * scale,
                    "%s: tangent[%lld] along %s: forward mode %.12g, finite differences %.12g",
                    op_names[ir_at(g, y)->op], (long long)k,
                    only < 0 ? "every input" : ir_at(g, w[only])->name, an[k], fd);
    }
  }
  for (int i = 0; i < nwrt; i++) free(v[i]);
  free(an), free(yp), free(ym);
  interp_free(it);
}

static void derivative_check(int y, const Fill *wrt, int nwrt, const Fill *fixed, int nfixed) {
  jvpcheck(y, wrt, nwrt, fixed, nfixed);
}

static void check_binary(Op op, Shape sa, Shape sb, bool positive_b) {
  rng_state = 42 + (uint64_t)op;
  int a = leaf("a", sa), b = leaf("b", sb);
  Fill w[2] = {ANY(a), ANY(b)};
  if (positive_b) w[1] = (Fill)POS(b);
  jvpcheck(ir_binary(g, op, a, b, L0), w, 2, NULL, 0);
}

/* ---- elementwise ---- */

START_TEST(jvp_add) { check_binary(OP_ADD, SHAPE(3, 1, 4), SHAPE(2, 4), false); }
END_TEST
START_TEST(jvp_sub) { check_binary(OP_SUB, SHAPE(2, 4), SHAPE(3, 1, 4), false); }
END_TEST
START_TEST(jvp_mul) { check_binary(OP_MUL, SHAPE(3, 1, 4), SHAPE(4), false); }
END_TEST
START_TEST(jvp_div) { check_binary(OP_DIV, SHAPE(3, 1, 4), SHAPE(2, 1), true); }
END_TEST

START_TEST(jvp_pow) {
  rng_state = 7;
  int a = leaf("a", SHAPE(3, 1, 4)), b = leaf("b", SHAPE(2, 4));
  Fill w[2] = {POS(a), {b, -1.5, 1.5, false, NULL}};
  jvpcheck(ir_binary(g, OP_POW, a, b, L0), w, 2, NULL, 0);
}
END_TEST

/* A constant integer exponent on negative bases: no log is built. */
START_TEST(jvp_pow_constant_exponent) {
  rng_state = 8;
  int a = leaf("a", SHAPE(2, 3));
  Fill w[1] = {{a, -2, -0.5, false, NULL}};
  jvpcheck(ir_binary(g, OP_POW, a, ir_const(g, 3.0, DT_F64, L0), L0), w, 1, NULL, 0);
  for (int i = 0; i < g->nnodes; i++)
    ck_assert_msg(ir_at(g, i)->op != OP_LOG, "a log node was built for a constant exponent");
}
END_TEST

static void check_unary(Op op, Fill f) {
  rng_state = 100 + (uint64_t)op;
  int x = leaf("x", SHAPE(3, 4));
  f.node = x;
  jvpcheck(ir_unary(g, op, x, L0), &f, 1, NULL, 0);
}

START_TEST(jvp_neg) { check_unary(OP_NEG, (Fill)ANY(0)); }
END_TEST
START_TEST(jvp_exp) { check_unary(OP_EXP, (Fill)ANY(0)); }
END_TEST
START_TEST(jvp_log) { check_unary(OP_LOG, (Fill)POS(0)); }
END_TEST
START_TEST(jvp_sqrt) { check_unary(OP_SQRT, (Fill)POS(0)); }
END_TEST
START_TEST(jvp_relu) { check_unary(OP_RELU, (Fill)KINKFREE(0)); }
END_TEST
START_TEST(jvp_sigmoid) { check_unary(OP_SIGMOID, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(jvp_tanh) { check_unary(OP_TANH, (Fill){0, -2, 2, false, NULL}); }
END_TEST

/* The elementwise math of the seed chapters (sign: zero away from 0; softplus on both sides of
 * its threshold; maximum: random operands, so no ties). */
START_TEST(jvp_sin) { check_unary(OP_SIN, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(jvp_cos) { check_unary(OP_COS, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(jvp_atan) { check_unary(OP_ATAN, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(jvp_erf) { check_unary(OP_ERF, (Fill){0, -2, 2, false, NULL}); }
END_TEST
START_TEST(jvp_sign) { check_unary(OP_SIGN, (Fill){0, 0.1, 2, false, NULL}); }
END_TEST
START_TEST(jvp_softplus) { check_unary(OP_SOFTPLUS, (Fill){0, -3, 3, false, NULL}); }
END_TEST
START_TEST(jvp_softplus_above_threshold) {
  check_unary(OP_SOFTPLUS, (Fill){0, 21, 25, false, NULL});
}
END_TEST
START_TEST(jvp_maximum) { check_binary(OP_MAXIMUM, SHAPE(3, 1, 4), SHAPE(2, 4), false); }
END_TEST

/* relu_grad and leaky_relu_grad: linear in dy (broadcast [4] into [3,4] too), zero a.e. in x. */
START_TEST(jvp_relu_grads) {
  rng_state = 9;
  int x = leaf("x", SHAPE(3, 4)), d = leaf("d", SHAPE(3, 4)), d4 = leaf("d4", SHAPE(4));
  Fill w[2] = {KINKFREE(x), ANY(d)};
  jvpcheck(ir_binary(g, OP_RELU_GRAD, x, d, L0), w, 2, NULL, 0);
  Fill w2[2] = {KINKFREE(x), ANY(d4)};
  jvpcheck(op2(OP_LEAKY_RELU_GRAD, x, d4, &(Attr){.value = 0.2}), w2, 2, NULL, 0);
  jvpcheck(op2(OP_LEAKY_RELU_GRAD, x, d, &(Attr){.value = -0.5}), w, 2, NULL, 0);
}
END_TEST

START_TEST(jvp_leaky_relu) {
  rng_state = 30;
  int x = leaf("x", SHAPE(3, 4));
  Fill w[1] = {KINKFREE(x)};
  jvpcheck(op1(OP_LEAKY_RELU, x, &(Attr){.value = 0.1}), w, 1, NULL, 0);
}
END_TEST

/* ---- reductions, broadcasts, layout ---- */

START_TEST(jvp_reductions) {
  rng_state = 11;
  int x = leaf("x", SHAPE(3, 2, 4));
  Fill w[1] = {ANY(x)};
  jvpcheck(ir_reduce(g, OP_SUM, x, 2, false, L0), w, 1, NULL, 0);
  jvpcheck(ir_reduce(g, OP_SUM, x, 5, true, L0), w, 1, NULL, 0);
  jvpcheck(ir_reduce(g, OP_MEAN, x, 4, false, L0), w, 1, NULL, 0);
  jvpcheck(ir_reduce(g, OP_MEAN, x, 7, false, L0), w, 1, NULL, 0);
  /* x * numel(x): numel has no tangent */
  jvpcheck(ir_binary(g, OP_MUL, x, ir_reduce(g, OP_NUMEL, x, 3, false, L0), L0), w, 1, NULL, 0);
}
END_TEST

/* `like` moves too: it only gives a shape, so it contributes nothing. */
START_TEST(jvp_sum_to_expand) {
  rng_state = 13;
  int x = leaf("x", SHAPE(3, 2, 4)), like = leaf("like", SHAPE(2, 1));
  Fill w[2] = {ANY(x), ANY(like)};
  jvpcheck(ir_binary(g, OP_SUM_TO, x, like, L0), w, 2, NULL, 0);
  int s = leaf("s", SHAPE(2, 1)), big = leaf("big", SHAPE(3, 2, 4));
  Fill w2[2] = {ANY(s), ANY(big)};
  jvpcheck(ir_binary(g, OP_EXPAND, s, big, L0), w2, 2, NULL, 0);
}
END_TEST

START_TEST(jvp_reshape_transpose) {
  rng_state = 15;
  int x = leaf("x", SHAPE(3, 2, 4));
  Fill w[1] = {ANY(x)};
  jvpcheck(ir_reshape(g, x, SHAPE(4, 6), L0), w, 1, NULL, 0);
  jvpcheck(ir_transpose(g, x, (int[]){2, 0, 1}, L0), w, 1, NULL, 0);
}
END_TEST

START_TEST(jvp_concat_slice) {
  rng_state = 37;
  int a = leaf("a", SHAPE(2, 3, 2)), b = leaf("b", SHAPE(2, 1, 2));
  Fill w[2] = {ANY(a), ANY(b)};
  int c = op2(OP_CONCAT, a, b, &(Attr){.axis = 1});
  jvpcheck(c, w, 2, NULL, 0);
  jvpcheck(op1(OP_SLICE, c, &(Attr){.axis = 1, .start = 1, .len = 2}), w, 2, NULL, 0);
  /* only one side has a tangent: the other is zeros of its shape */
  int k = input("k", DT_F64, SHAPE(2, 2, 2));
  Fill f[1] = {ANY(k)};
  jvpcheck(op2(OP_CONCAT, k, a, &(Attr){.axis = 1}), w, 1, f, 1);
}
END_TEST

static void check_matmul(bool ta, bool tb) {
  rng_state = 16 + 2 * ta + tb;
  int a = leaf("a", ta ? SHAPE(4, 3) : SHAPE(3, 4));
  int b = leaf("b", tb ? SHAPE(2, 4) : SHAPE(4, 2));
  Fill w[2] = {ANY(a), ANY(b)};
  jvpcheck(ir_matmul(g, a, b, ta, tb, L0), w, 2, NULL, 0);
}

START_TEST(jvp_matmul) {
  for (int k = 0; k < 4; k++) {
    teardown(), setup();
    check_matmul(k & 2, k & 1);
  }
}
END_TEST

/* ---- losses and normalised exponentials ---- */

static const double label_values[4] = {2, 0, 1, 2};

/* gather along each axis (an index with repeats, so the adjoint must add) and its adjoint,
 * which is linear in dy; the index is data, with no derivative. */
static const double gather_index[] = {2, 0, 2, 1, 0, 0};
START_TEST(jvp_gather) {
  rng_state = 31;
  int x = leaf("x", SHAPE(3, 4));
  int ix = input("ix", DT_I32, SHAPE(3, 2));
  Fill w[1] = {{x, -2, 2, false, NULL}};
  Fill f[1] = {{ix, 0, 0, false, gather_index}};
  Attr a;
  memset(&a, 0, sizeof a);
  a.axis = 1;
  jvpcheck(ir_node(g, OP_GATHER, 2, (int[]){x, ix}, &a, L0), w, 1, f, 1);
}
END_TEST

START_TEST(jvp_gather_axis0) {
  rng_state = 32;
  int x = leaf("x", SHAPE(3, 2));
  int ix = input("ix", DT_I32, SHAPE(3, 2));
  Fill w[1] = {{x, -2, 2, false, NULL}};
  Fill f[1] = {{ix, 0, 0, false, gather_index}};
  Attr a;
  memset(&a, 0, sizeof a);
  jvpcheck(ir_node(g, OP_GATHER, 2, (int[]){x, ix}, &a, L0), w, 1, f, 1);
}
END_TEST

START_TEST(jvp_gather_grad) {
  rng_state = 33;
  int dy = leaf("dy", SHAPE(3, 2)), like = leaf("like", SHAPE(3, 4));
  int ix = input("ix", DT_I32, SHAPE(3, 2));
  Fill w[1] = {{dy, -2, 2, false, NULL}};
  Fill f[2] = {{ix, 0, 0, false, gather_index}, {like, -1, 1, false, NULL}};
  Attr a;
  memset(&a, 0, sizeof a);
  a.axis = 1;
  jvpcheck(ir_node(g, OP_GATHER_GRAD, 3, (int[]){dy, ix, like}, &a, L0), w, 1, f, 2);
}
END_TEST

START_TEST(jvp_cross_entropy) {
  rng_state = 21;
  int z = leaf("z", SHAPE(4, 3));
  int lab = input("label", DT_I32, SHAPE(4));
  Fill w[1] = {{z, -2, 2, false, NULL}};
  Fill f[1] = {{lab, 0, 0, false, label_values}};
  jvpcheck(ir_binary(g, OP_CROSS_ENTROPY, z, lab, L0), w, 1, f, 1);
}
END_TEST

/* The op HVPs of classifiers go through: the softmax Jacobian in z, linear in dy. */
START_TEST(jvp_cross_entropy_grad) {
  rng_state = 22;
  int z = leaf("z", SHAPE(4, 3)), dy = leaf("dy", shape_of(0, NULL));
  int lab = input("label", DT_I32, SHAPE(4));
  int y = ir_node(g, OP_CROSS_ENTROPY_GRAD, 3, (int[]){z, lab, dy}, NULL, L0);
  Fill w[2] = {{z, -2, 2, false, NULL}, {dy, 0.5, 2, false, NULL}};
  Fill f[1] = {{lab, 0, 0, false, label_values}};
  jvpcheck(y, w, 2, f, 1);
}
END_TEST

static void check_softmax(Op op, Shape s, int axis) {
  int x = leaf(op == OP_SOFTMAX ? "xs" : "xl", s);
  Fill w[1] = {{x, -2, 2, false, NULL}};
  jvpcheck(op1(op, x, &(Attr){.axis = axis}), w, 1, NULL, 0);
}

START_TEST(jvp_softmax) {
  for (int axis = 0; axis < 3; axis++) {
    teardown(), setup();
    rng_state = 32 + (uint64_t)axis;
    check_softmax(OP_SOFTMAX, SHAPE(2, 3, 2), axis);
    check_softmax(OP_LOG_SOFTMAX, SHAPE(2, 3, 2), axis);
  }
}
END_TEST

START_TEST(jvp_bce_logits) {
  rng_state = 34;
  int x = leaf("x", SHAPE(3, 4)), t = leaf("t", SHAPE(4));
  Fill w[2] = {{x, -3, 3, false, NULL}, {t, 0, 1, false, NULL}};
  jvpcheck(ir_binary(g, OP_BCE_LOGITS, x, t, L0), w, 2, NULL, 0);
  int x2 = leaf("x2", SHAPE(4)), t2 = leaf("t2", SHAPE(3, 4));
  Fill w2[2] = {{x2, -3, 3, false, NULL}, {t2, 0, 1, false, NULL}};
  jvpcheck(ir_binary(g, OP_BCE_LOGITS, x2, t2, L0), w2, 2, NULL, 0);
}
END_TEST

/* With the counter fixed, dropout is linear in x with the same mask. */
START_TEST(jvp_dropout) {
  rng_state = 35;
  const double step[1] = {17};
  int x = leaf("x", SHAPE(6, 5));
  int ctr = input("step", DT_F64, shape_of(0, NULL));
  Fill w[1] = {ANY(x)};
  Fill f[1] = {{ctr, 0, 0, false, step}};
  jvpcheck(op2(OP_DROPOUT, x, ctr, &(Attr){.value = 0.3, .salt = 5}), w, 1, f, 1);
}
END_TEST

/* ---- 2-D windows ---- */

START_TEST(jvp_conv2d_plain) { check_conv(SHAPE(2, 3, 5, 5), 4, WIN(.k = {3, 3})); }
END_TEST
START_TEST(jvp_conv2d_stride2_pad1_odd) {
  check_conv(SHAPE(1, 2, 7, 5), 3, WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1}));
}
END_TEST
START_TEST(jvp_conv2d_asymmetric_dilated) {
  check_conv(SHAPE(2, 2, 6, 7), 2, WIN(.k = {3, 3}, .s = {1, 2}, .d = {2, 1}, .p = {2, 1, 0, 1}));
}
END_TEST
START_TEST(jvp_conv2d_groups) {
  check_conv(SHAPE(2, 4, 5, 4), 6, WIN(.k = {3, 3}, .p = {1, 1, 1, 1}, .groups = 2));
}
END_TEST

/* maxpool2d (any windows: tiling, padded with a ragged edge, overlapping, dilated), and
 * maxpool2d_grad and maxpool2d_pick: linear in their second input, zero a.e. in x. */
static void check_maxpool(Shape xs, Win w, bool forward_op) {
  rng_state = 70 + (uint64_t)(xs.d[2].n + w.k[1]);
  Attr a = win_attr(&w);
  int x = leaf("x", xs);
  double *v = distinct_values(shape_numel(&xs, (int64_t[]){1}));
  Fill f[1] = {{x, 0, 0, false, v}};
  int y = op1(OP_MAXPOOL2D, x, &a);
  if (forward_op) jvpcheck(y, f, 1, NULL, 0);
  int dy = leaf("dy", ir_at(g, y)->shape);
  Fill f2[2] = {{x, 0, 0, false, v}, ANY(dy)};
  jvpcheck(op2(OP_MAXPOOL2D_GRAD, x, dy, &a), f2, 2, NULL, 0);
  int t = leaf("t", xs);
  Fill f3[2] = {{x, 0, 0, false, v}, ANY(t)};
  jvpcheck(op2(OP_MAXPOOL2D_PICK, x, t, &a), f3, 2, NULL, 0);
  free(v);
}

START_TEST(jvp_maxpool2d_tiling) {
  check_maxpool(SHAPE(1, 2, 4, 6), WIN(.k = {2, 2}, .s = {2, 2}), true);
}
END_TEST
START_TEST(jvp_maxpool2d_ragged_padded) {
  check_maxpool(SHAPE(2, 2, 7, 5), WIN(.k = {2, 3}, .s = {2, 3}, .p = {1, 0, 1, 1}), true);
}
END_TEST
START_TEST(jvp_maxpool2d_overlapping) {
  check_maxpool(SHAPE(2, 2, 7, 5), WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1}), true);
}
END_TEST
START_TEST(jvp_maxpool2d_dilated_stride1) {
  check_maxpool(SHAPE(1, 2, 6, 7), WIN(.k = {2, 3}, .s = {1, 1}, .d = {2, 1}), true);
}
END_TEST

START_TEST(jvp_avgpool2d) {
  for (int inc = 0; inc < 2; inc++) {
    teardown(), setup();
    check_avgpool(SHAPE(1, 2, 7, 5),
                  WIN(.k = {3, 3}, .s = {2, 2}, .p = {1, 1, 1, 1}, .include_pad = inc));
  }
}
END_TEST

/* ---- Hessian-vector products of whole models ---- */

static const char mlp_src[] =
    "input x: f64[B, 5]\n"
    "input label: i32[B]\n"
    "h = tanh(linear(x, out=4) as fc1)\n"
    "h2 = relu(linear(h, out=4) as fc2)\n"
    "logits = linear(h2, out=3) as fc3\n"
    "loss = cross_entropy(logits, label)\n"
    "output logits\n"
    "minimize loss\n"
    "train { optimizer = sgd(lr=0.1) batch = 4 }\n";

static const char cnn_src[] =
    "input image: f64[B, 2, 6, 6]\n"
    "input label: i32[B]\n"
    "c1 = conv2d(image, out=3, kernel=3, pad=1) as conv1\n"
    "h = maxpool2d(relu(batchnorm(c1) as bn1), kernel=2)\n"
    "c2 = conv2d(h, out=4, kernel=2, stride=1) as conv2\n"
    "h2 = avgpool2d(sigmoid(c2), kernel=2)\n"
    "logits = linear(flatten(h2), out=3) as fc\n"
    "loss = cross_entropy(logits, label)\n"
    "output logits\n"
    "minimize loss\n"
    "train { optimizer = adam(lr=1e-3) batch = 3 }\n";

/* The pipeline up to the training graph with forward-mode outputs; the caller owns the graph. */
static Graph *compile(const char *src, bool hvp, bool jvp) {
  Options o;
  session_default_options(&o);
  o.hvp = hvp;
  o.jvp = jvp;
  Session s;
  if (session_open_text(&s, "m.kiln", src, &o))
    ck_abort_msg("compile failed: %s", s.error);
  Graph *m = session_take_graph(&s);
  session_close(&s);
  return m;
}

/* An output of the grad entry, or the value it stores into the GRAD leaf of that name. */
static int output_node(Graph *m, const char *name) {
  const Entry *e = &m->entries[ENTRY_GRAD];
  for (int i = 0; i < e->noutputs; i++)
    if (!strcmp(e->outputs[i].name, name)) return e->outputs[i].node;
  for (int i = 0; i < e->nupdates; i++)
    if (!strcmp(ir_at(m, e->updates[i].target)->name, name)) return e->updates[i].value;
  ck_abort_msg("no output %s", name);
  return -1;
}

/* A model with random parameters and inputs in the f64 interpreter. Inputs that are labels get
 * 0..2; every other float leaf (parameters, tangents) uniform in [-1, 1]; batch norm buffers
 * keep their initial values (the grad entry does not read them). */
static Interp *model_interp(Graph *m, int64_t batch) {
  Interp *it = interp_new(m, batch, false);
  ck_assert_ptr_nonnull(it);
  for (int i = 0; i < m->nnodes; i++) {
    Node *n = ir_at(m, i);
    if (n->op != OP_PARAM && n->op != OP_INPUT) continue;
    double *v = interp_data(it, i);
    for (int64_t k = 0; k < interp_numel(it, i); k++)
      v[k] = n->dtype == DT_I32 ? (double)(k % 3) : uniform(-1, 1);
  }
  return it;
}

/* One run of the grad entry as a function of the parameters: grad also advances the running
 * statistics and the dropout counter (as train does), which finite differences must not see, so
 * the STATE leaves are put back afterwards. */
static void run_grad(Graph *m, Interp *it, int64_t batch) {
  double **saved = calloc((size_t)m->nnodes, sizeof *saved);
  for (int i = 0; i < m->nnodes; i++)
    if (ir_at(m, i)->role == ROLE_STATE) {
      size_t bytes = (size_t)interp_numel(it, i) * sizeof(double);
      saved[i] = malloc(bytes + sizeof(double));
      memcpy(saved[i], interp_data(it, i), bytes);
    }
  ck_assert_msg(interp_run(it, ENTRY_GRAD, batch, err) == 0, "%s", err);
  for (int i = 0; i < m->nnodes; i++)
    if (saved[i]) {
      memcpy(interp_data(it, i), saved[i], (size_t)interp_numel(it, i) * sizeof(double));
      free(saved[i]);
    }
  free(saved);
}

/* H v from the grad entry against (∇L(θ + h v) - ∇L(θ - h v)) / 2h for every parameter. */
static void hvp_against_fd(const char *src, int64_t batch, uint64_t seed) {
  rng_state = seed;
  Graph *m = compile(src, true, false);
  Interp *it = model_interp(m, batch);
  int np = m->nparams;
  double **hv = calloc((size_t)np, sizeof *hv), **gp = calloc((size_t)np, sizeof *gp);
  run_grad(m, it, batch);
  for (int i = 0; i < np; i++) {
    int64_t n = interp_numel(it, m->params[i]);
    const char *pn = ir_at(m, m->params[i])->name;
    hv[i] = malloc((size_t)n * sizeof(double));
    gp[i] = malloc((size_t)n * sizeof(double));
    memcpy(hv[i], interp_data(it, output_node(m, pool_printf(m->pool, "hvp.%s", pn))),
           (size_t)n * sizeof(double));
  }
  const double h = 1e-5;
  for (int s = 0; s < 2; s++) {
    for (int i = 0; i < np; i++) {
      const char *pn = ir_at(m, m->params[i])->name;
      double *p = interp_data(it, m->params[i]);
      const double *v = interp_data(it, ir_find_leaf(m, pool_printf(m->pool, "tangent.%s", pn)));
      for (int64_t k = 0; k < interp_numel(it, m->params[i]); k++)
        p[k] += (s == 0 ? h : -2 * h) * v[k];
    }
    run_grad(m, it, batch);
    for (int i = 0; i < np; i++) {
      const char *pn = ir_at(m, m->params[i])->name;
      const double *gr = interp_data(it, output_node(m, pool_printf(m->pool, "grad.%s", pn)));
      for (int64_t k = 0; k < interp_numel(it, m->params[i]); k++)
        gp[i][k] = s == 0 ? gr[k] : (gp[i][k] - gr[k]) / (2 * h);
    }
  }
  int nonzero = 0;
  for (int i = 0; i < np; i++) {
    const char *pn = ir_at(m, m->params[i])->name;
    for (int64_t k = 0; k < interp_numel(it, m->params[i]); k++) {
      double scale = fmax(1.0, fabs(gp[i][k]));
      nonzero += fabs(hv[i][k]) > 1e-6;
      ck_assert_msg(fabs(hv[i][k] - gp[i][k]) <= 1e-6 * scale,
                    "(H v)[%s][%lld]: forward over reverse %.12g, finite differences %.12g", pn,
                    (long long)k, hv[i][k], gp[i][k]);
    }
    free(hv[i]);
    free(gp[i]);
  }
  ck_assert_int_gt(nonzero, 10);
  free(hv);
  free(gp);
  interp_free(it);
  ir_free(m);
}

START_TEST(hvp_mlp) { hvp_against_fd(mlp_src, 4, 1); }
END_TEST
START_TEST(hvp_cnn_batchnorm_pools) { hvp_against_fd(cnn_src, 3, 2); }
END_TEST

/* H is symmetric: vᵀ(H w) = wᵀ(H v), with H v and H w from two runs of the same entry. */
static void hvp_symmetry(const char *src, int64_t batch, uint64_t seed) {
  rng_state = seed;
  Graph *m = compile(src, true, false);
  Interp *it = model_interp(m, batch);
  int np = m->nparams;
  double vhw = 0, whv = 0, norm = 0;
  double **v = calloc((size_t)np, sizeof *v), **hv = calloc((size_t)np, sizeof *hv);
  run_grad(m, it, batch);
  for (int i = 0; i < np; i++) {
    const char *pn = ir_at(m, m->params[i])->name;
    int t = ir_find_leaf(m, pool_printf(m->pool, "tangent.%s", pn));
    int64_t n = interp_numel(it, t);
    v[i] = malloc((size_t)n * sizeof(double));
    hv[i] = malloc((size_t)n * sizeof(double));
    memcpy(v[i], interp_data(it, t), (size_t)n * sizeof(double));
    memcpy(hv[i], interp_data(it, output_node(m, pool_printf(m->pool, "hvp.%s", pn))),
           (size_t)n * sizeof(double));
    for (int64_t k = 0; k < n; k++) interp_data(it, t)[k] = uniform(-1, 1);  /* w */
  }
  run_grad(m, it, batch);
  for (int i = 0; i < np; i++) {
    const char *pn = ir_at(m, m->params[i])->name;
    const double *w = interp_data(it, ir_find_leaf(m, pool_printf(m->pool, "tangent.%s", pn)));
    const double *hw = interp_data(it, output_node(m, pool_printf(m->pool, "hvp.%s", pn)));
    for (int64_t k = 0; k < interp_numel(it, m->params[i]); k++) {
      vhw += v[i][k] * hw[k];
      whv += w[k] * hv[i][k];
      norm += fabs(v[i][k] * hw[k]) + fabs(w[k] * hv[i][k]);
    }
    free(v[i]);
    free(hv[i]);
  }
  ck_assert_msg(fabs(vhw - whv) <= 1e-12 * fmax(1.0, norm), "vᵀHw = %.17g but wᵀHv = %.17g",
                vhw, whv);
  ck_assert(fabs(vhw) > 1e-6);
  free(v);
  free(hv);
  interp_free(it);
  ir_free(m);
}

START_TEST(hvp_symmetric_mlp) { hvp_symmetry(mlp_src, 4, 3); }
END_TEST
START_TEST(hvp_symmetric_cnn) { hvp_symmetry(cnn_src, 3, 4); }
END_TEST

/* train_build_jvp: the directional derivative of the loss equals ∇L · v from reverse mode, and
 * the output's tangent matches finite differences (evaluation mode: running statistics). */
START_TEST(jvp_of_model_loss_and_output) {
  rng_state = 5;
  Graph *m = compile(cnn_src, true, true);  /* both on one graph: the tangent leaves are shared */
  Interp *it = model_interp(m, 3);
  run_grad(m, it, 3);
  double dot = 0;
  for (int i = 0; i < m->nparams; i++) {
    const char *pn = ir_at(m, m->params[i])->name;
    const double *v = interp_data(it, ir_find_leaf(m, pool_printf(m->pool, "tangent.%s", pn)));
    const double *gr = interp_data(it, output_node(m, pool_printf(m->pool, "grad.%s", pn)));
    for (int64_t k = 0; k < interp_numel(it, m->params[i]); k++) dot += v[k] * gr[k];
  }
  double jl = interp_data(it, output_node(m, "jvp.loss"))[0];
  ck_assert_msg(fabs(jl - dot) <= 1e-12 * fmax(1.0, fabs(dot)), "jvp.loss %.17g, ∇L·v %.17g", jl,
                dot);
  int out = output_node(m, "output"), jout = output_node(m, "jvp.output");
  int64_t n = interp_numel(it, out);
  double *an = malloc((size_t)n * sizeof *an), *yp = malloc((size_t)n * sizeof *yp);
  memcpy(an, interp_data(it, jout), (size_t)n * sizeof *an);
  const double h = 1e-6;
  for (int s = 0; s < 2; s++) {
    for (int i = 0; i < m->nparams; i++) {
      const char *pn = ir_at(m, m->params[i])->name;
      double *p = interp_data(it, m->params[i]);
      const double *v = interp_data(it, ir_find_leaf(m, pool_printf(m->pool, "tangent.%s", pn)));
      for (int64_t k = 0; k < interp_numel(it, m->params[i]); k++)
        p[k] += (s == 0 ? h : -2 * h) * v[k];
    }
    run_grad(m, it, 3);
    for (int64_t k = 0; k < n; k++)
      yp[k] = s == 0 ? interp_data(it, out)[k] : (yp[k] - interp_data(it, out)[k]) / (2 * h);
  }
  for (int64_t k = 0; k < n; k++)
    ck_assert_msg(fabs(an[k] - yp[k]) <= 1e-6 * fmax(1.0, fabs(yp[k])),
                  "jvp.output[%lld]: %.12g, finite differences %.12g", (long long)k, an[k], yp[k]);
  free(an);
  free(yp);
  interp_free(it);
  ir_free(m);
}
END_TEST

/* The generated C runs the extended grad entry too: kiln check compares its H v, jvp.loss and
 * jvp.output (with every gradient, train step and eval output) against the reference. */
START_TEST(compiled_hvp_matches_reference) {
  Graph *m = compile(cnn_src, true, true);
  FILE *log = tmpfile();
  ck_assert_ptr_nonnull(log);
  Options o;
  session_default_options(&o);
  o.batch = 3;
  Session s;
  session_adopt(&s, m, &o);
  int rc = check_model(&s, 1, 7, log);
  ck_assert_msg(rc == 0 || s.error[0] == 0, "%s", s.error);
  session_close(&s);
  char text[1 << 15] = "";
  rewind(log);
  size_t n = fread(text, 1, sizeof text - 1, log);
  text[n] = 0;
  fclose(log);
  ck_assert_msg(rc == 0, "%s", text);
  ck_assert_msg(strstr(text, "hvp.conv1.weight") && strstr(text, "jvp.output"), "%s", text);
  ir_free(m);
}
END_TEST

/* ---- structure ---- */

/* A network with 3/2 max pooling (overlapping windows) and a dilated one: Hessian-vector
 * products through the pools' second-order ops against finite differences of gradients. */
static const char overlapping_pools_src[] =
    "input image: f64[B, 1, 9, 9]\n"
    "input label: i32[B]\n"
    "h = maxpool2d(tanh(conv2d(image, out=2, kernel=3, pad=1) as conv1), kernel=3, stride=2)\n"
    "h = maxpool2d(relu(h), kernel=2, stride=1, dilation=2)\n"
    "logits = linear(flatten(h), out=3) as fc\n"
    "loss = cross_entropy(logits, label)\n"
    "output logits\n"
    "minimize loss\n"
    "train { optimizer = sgd(lr=0.1) batch = 2 }\n";

START_TEST(hvp_overlapping_pools) { hvp_against_fd(overlapping_pools_src, 2, 5); }
END_TEST

/* The same op is fine where no tangent flows through it. */
START_TEST(no_tangent_needed_off_the_path) {
  rng_state = 24;
  int p = leaf("p", SHAPE(1, 1, 5, 5)), c = input("c", DT_F64, SHAPE(1, 1, 5, 5));
  Attr a = win_attr(&WIN(.k = {3, 3}, .s = {2, 2}));
  int pooled = op1(OP_MAXPOOL2D, c, &a);                  /* [1,1,2,2], constant in p */
  int y = ir_binary(g, OP_MUL, ir_reduce(g, OP_SUM, p, 15, false, L0),
                    ir_reduce(g, OP_SUM, pooled, 15, false, L0), L0);
  Fill w[1] = {ANY(p)};
  Fill f[1] = {ANY(c)};
  jvpcheck(y, w, 1, f, 1);
}
END_TEST

START_TEST(tangent_shape_mismatch_is_an_error) {
  int p = leaf("fc.weight", SHAPE(2, 3));
  int t = input("t", DT_F64, SHAPE(3, 2));
  int y = ir_unary(g, OP_EXP, p, L0), jvp;
  Trap tr;
  if (KILN_TRY(&tr)) {
    ad_forward(g, &p, &t, 1, &y, 1, &jvp);
    kiln_trap_end(&tr);
    ck_abort_msg("ad_forward should have failed");
  }
  ck_assert_str_eq(tr.msg, "error: the tangent of 'fc.weight' is f64[3, 2], but 'fc.weight' is "
                           "f64[2, 3]\n");
}
END_TEST

/* An output independent of the seeds gets an exact zero of its shape. */
START_TEST(independent_output_gets_exact_zero) {
  int p = leaf("p", SHAPE(2, 3)), q = leaf("q", SHAPE(4));
  int t = input("t", DT_F64, SHAPE(2, 3));
  int y = ir_unary(g, OP_EXP, q, L0), jvp;
  forward(&p, &t, 1, &y, 1, &jvp);
  ck_assert(shape_eq(&ir_at(g, jvp)->shape, &ir_at(g, y)->shape));
  Interp *it = interp_new(g, 1, false);
  ck_assert_int_eq(interp_eval(it, &jvp, 1, 1, err), 0);
  for (int i = 0; i < 4; i++) ck_assert(interp_data(it, jvp)[i] == 0.0);
  interp_free(it);
}
END_TEST

START_TEST(tangent_nodes_carry_forward_locations) {
  static const SrcFile src = {"m.kiln", "h = relu(x)\ny = h * h\n"};
  Loc l1 = {&src, 1, 5}, l2 = {&src, 2, 7};
  int x = leaf("x", SHAPE(2, 3)), t = input("t", DT_F64, SHAPE(2, 3));
  int h = ir_unary(g, OP_RELU, x, l1);
  int y = ir_binary(g, OP_MUL, h, h, l2);
  int before = g->nnodes, jvp;
  forward(&x, &t, 1, &y, 1, &jvp);
  ck_assert_int_gt(g->nnodes, before);
  for (int i = before; i < g->nnodes; i++) {
    const Node *n = ir_at(g, i);
    ck_assert_ptr_eq(n->loc.file, &src);
    ck_assert_int_eq(n->loc.line, n->op == OP_RELU_GRAD ? 1 : 2);
  }
}
END_TEST

/* Adding an op to ops.def without a tangent rule breaks this: every non-leaf op has one. */
START_TEST(every_op_has_a_tangent_rule) {
  for (int op = 0; op < OP_COUNT; op++) {
    if (op_is_leaf((Op)op))
      ck_assert_msg(!ad_has_jvp((Op)op), "leaf %s has a tangent rule", op_names[op]);
    else
      ck_assert_msg(ad_has_jvp((Op)op), "%s has no tangent rule", op_names[op]);
  }
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("forward");
  TCase *tc = tcase_create("rules");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, jvp_add);
  tcase_add_test(tc, jvp_sub);
  tcase_add_test(tc, jvp_mul);
  tcase_add_test(tc, jvp_div);
  tcase_add_test(tc, jvp_pow);
  tcase_add_test(tc, jvp_pow_constant_exponent);
  tcase_add_test(tc, jvp_neg);
  tcase_add_test(tc, jvp_exp);
  tcase_add_test(tc, jvp_log);
  tcase_add_test(tc, jvp_sqrt);
  tcase_add_test(tc, jvp_relu);
  tcase_add_test(tc, jvp_sigmoid);
  tcase_add_test(tc, jvp_tanh);
  tcase_add_test(tc, jvp_gather);
  tcase_add_test(tc, jvp_gather_axis0);
  tcase_add_test(tc, jvp_gather_grad);
  tcase_add_test(tc, jvp_sin);
  tcase_add_test(tc, jvp_cos);
  tcase_add_test(tc, jvp_atan);
  tcase_add_test(tc, jvp_erf);
  tcase_add_test(tc, jvp_sign);
  tcase_add_test(tc, jvp_softplus);
  tcase_add_test(tc, jvp_softplus_above_threshold);
  tcase_add_test(tc, jvp_maximum);
  tcase_add_test(tc, jvp_relu_grads);
  tcase_add_test(tc, jvp_leaky_relu);
  tcase_add_test(tc, jvp_reductions);
  tcase_add_test(tc, jvp_sum_to_expand);
  tcase_add_test(tc, jvp_reshape_transpose);
  tcase_add_test(tc, jvp_concat_slice);
  tcase_add_test(tc, jvp_matmul);
  tcase_add_test(tc, jvp_cross_entropy);
  tcase_add_test(tc, jvp_cross_entropy_grad);
  tcase_add_test(tc, jvp_softmax);
  tcase_add_test(tc, jvp_bce_logits);
  tcase_add_test(tc, jvp_dropout);
  tcase_add_test(tc, jvp_conv2d_plain);
  tcase_add_test(tc, jvp_conv2d_stride2_pad1_odd);
  tcase_add_test(tc, jvp_conv2d_asymmetric_dilated);
  tcase_add_test(tc, jvp_conv2d_groups);
  tcase_add_test(tc, jvp_maxpool2d_tiling);
  tcase_add_test(tc, jvp_maxpool2d_ragged_padded);
  tcase_add_test(tc, jvp_maxpool2d_overlapping);
  tcase_add_test(tc, jvp_maxpool2d_dilated_stride1);
  tcase_add_test(tc, jvp_avgpool2d);
  suite_add_tcase(s, tc);
  TCase *th = tcase_create("hvp");
  tcase_set_timeout(th, 120);
  tcase_add_test(th, hvp_mlp);
  tcase_add_test(th, hvp_cnn_batchnorm_pools);
  tcase_add_test(th, hvp_symmetric_mlp);
  tcase_add_test(th, hvp_symmetric_cnn);
  tcase_add_test(th, jvp_of_model_loss_and_output);
  tcase_add_test(th, compiled_hvp_matches_reference);
  suite_add_tcase(s, th);
  TCase *ts = tcase_create("structure");
  tcase_add_checked_fixture(ts, setup, teardown);
  tcase_add_test(ts, hvp_overlapping_pools);
  tcase_add_test(ts, no_tangent_needed_off_the_path);
  tcase_add_test(ts, tangent_shape_mismatch_is_an_error);
  tcase_add_test(ts, independent_output_gets_exact_zero);
  tcase_add_test(ts, tangent_nodes_carry_forward_locations);
  tcase_add_test(ts, every_op_has_a_tangent_rule);
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
