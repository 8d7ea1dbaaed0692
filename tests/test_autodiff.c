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
 * Beyond the rules: a chain shaped like an MLP, an unused parameter (exactly zero gradient),
 * the error for an op without a rule, locations of gradient nodes, and a completeness check that
 * fails as soon as an op is added to ops.def without a rule or an explicit exemption.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "interp.h"

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

static int leaf(const char *name, Shape s) {
  return ir_leaf(g, OP_PARAM, ROLE_PARAM, name, DT_F64, s, L0);
}
static int input(const char *name, DType dt, Shape s) {
  return ir_leaf(g, OP_INPUT, ROLE_INPUT, name, dt, s, L0);
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

#define ANY(x) {x, -1, 1, false, NULL}
#define POS(x) {x, 0.5, 2, false, NULL}
#define KINKFREE(x) {x, -1, 1, true, NULL}

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
    ck_assert_msg(g->nodes[i].op != OP_LOG, "a log node was built for a constant exponent");
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
    const Node *n = &g->nodes[i];
    ck_assert_ptr_eq(n->loc.file, &src);
    ck_assert_int_eq(n->loc.line, n->op == OP_RELU_GRAD ? 1 : 2);
  }
  ck_assert_int_eq(ir_at(g, grad)->op, OP_RELU_GRAD);
}
END_TEST

/* Adding an op to ops.def without a VJP rule (or listing it here on purpose) breaks this. */
START_TEST(every_op_has_a_rule_or_is_exempt) {
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
