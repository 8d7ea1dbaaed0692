/*
 * autodiff.c — reverse-mode differentiation as a graph transform.
 *
 * ad_reverse walks the forward nodes once, from the loss down to id 0 (ids are a topological
 * order, so every consumer of a node is visited before it — KANN's backward loop), and asks the
 * vector-Jacobian rule of each node's op to turn the node's adjoint dy into adjoints of its
 * inputs. Rules build ordinary graph nodes through the IR builders, so the backward pass is
 * shape-checked, hash-consed (CSE), optimised and compiled exactly like the forward pass, and
 * every gradient node carries the source location of the forward node it differentiates.
 *
 * Two masks keep the transform small and strict at once: `dep` (the node depends on some wrt
 * leaf) and float dtype. A rule builds an input's adjoint only if that input wants one, so no
 * gradient is built for labels, constants or subgraphs that cannot reach a parameter, and an op
 * without a rule is an error only where a gradient really has to flow through it.
 *
 * Broadcasting is undone in one place (give): an adjoint whose shape differs from its input's
 * is reduced with SUM_TO before it is accumulated with ADD.
 */
#include "xform/xform.h"

#include <stdlib.h>
#include <string.h>

typedef struct AdCtx {
  Graph *g;
  int *adj;                 /* adjoint node of each forward node, -1 = none yet */
  unsigned char *dep;       /* forward node depends on a wrt leaf */
} AdCtx;

typedef void (*VjpRule)(AdCtx *c, const Node *n, int dy);

static const Node *in_node(AdCtx *c, const Node *n, int i) { return ir_at(c->g, n->in[i]); }

/* Whether input i of n should receive an adjoint. */
static bool wants(AdCtx *c, const Node *n, int i) {
  const Node *x = in_node(c, n, i);
  return c->dep[x->id] && dtype_is_float(x->dtype);
}

/* Adds adjoint contribution d to input i of n, first summing away any broadcast. */
static void give(AdCtx *c, const Node *n, int i, int d) {
  if (!wants(c, n, i))
    return;
  int x = n->in[i];
  if (!shape_eq(&ir_at(c->g, d)->shape, &ir_at(c->g, x)->shape))
    d = ir_binary(c->g, OP_SUM_TO, d, x, n->loc);
  c->adj[x] = c->adj[x] < 0 ? d : ir_binary(c->g, OP_ADD, c->adj[x], d, n->loc);
}

/* Shorthands; every node built for n's gradient gets n's location. */
static int sub(AdCtx *c, const Node *n, int a, int b) { return ir_binary(c->g, OP_SUB, a, b, n->loc); }
static int mul(AdCtx *c, const Node *n, int a, int b) { return ir_binary(c->g, OP_MUL, a, b, n->loc); }
static int dvd(AdCtx *c, const Node *n, int a, int b) { return ir_binary(c->g, OP_DIV, a, b, n->loc); }
static int neg(AdCtx *c, const Node *n, int a) { return ir_unary(c->g, OP_NEG, a, n->loc); }
static int cnst(AdCtx *c, const Node *n, double v) { return ir_const(c->g, v, n->dtype, n->loc); }
static int matmul(AdCtx *c, const Node *n, int a, int b, bool ta, bool tb) {
  return ir_matmul(c->g, a, b, ta, tb, n->loc);
}
static int expand(AdCtx *c, const Node *n, int x, int like) {
  return shape_eq(&ir_at(c->g, x)->shape, &ir_at(c->g, like)->shape)
             ? x
             : ir_binary(c->g, OP_EXPAND, x, like, n->loc);
}

/* ---- rules: one per op; a = in[0], b = in[1], y = the node, dy = its adjoint ---- */

static void vjp_add(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, dy);
  give(c, n, 1, dy);
}

static void vjp_sub(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, dy);
  if (wants(c, n, 1))
    give(c, n, 1, neg(c, n, dy));
}

static void vjp_mul(AdCtx *c, const Node *n, int dy) {
  if (wants(c, n, 0))
    give(c, n, 0, mul(c, n, dy, n->in[1]));
  if (wants(c, n, 1))
    give(c, n, 1, mul(c, n, dy, n->in[0]));
}

/* d(a/b)/db = -a/b^2 = -y/b */
static void vjp_div(AdCtx *c, const Node *n, int dy) {
  if (wants(c, n, 0))
    give(c, n, 0, dvd(c, n, dy, n->in[1]));
  if (wants(c, n, 1))
    give(c, n, 1, neg(c, n, mul(c, n, dy, dvd(c, n, n->id, n->in[1]))));
}

/* d(a^b)/da = b a^(b-1); d(a^b)/db = log(a) a^b (only built when b needs it: log(a) is NaN
 * for the negative bases an integer exponent allows). */
static void vjp_pow(AdCtx *c, const Node *n, int dy) {
  int a = n->in[0], b = n->in[1];
  if (wants(c, n, 0)) {
    int bm1 = sub(c, n, b, ir_const(c->g, 1.0, in_node(c, n, 1)->dtype, n->loc));
    give(c, n, 0, mul(c, n, dy, mul(c, n, b, ir_binary(c->g, OP_POW, a, bm1, n->loc))));
  }
  if (wants(c, n, 1))
    give(c, n, 1, mul(c, n, dy, mul(c, n, ir_unary(c->g, OP_LOG, a, n->loc), n->id)));
}

/* relu_grad(x, dy') is linear in dy' (adjoint relu_grad(x, ddy)) and piecewise constant in x
 * (zero almost everywhere). */
static void vjp_relu_grad(AdCtx *c, const Node *n, int dy) {
  if (wants(c, n, 1))
    give(c, n, 1, ir_binary(c->g, OP_RELU_GRAD, n->in[0], dy, n->loc));
}

static void vjp_neg(AdCtx *c, const Node *n, int dy) { give(c, n, 0, neg(c, n, dy)); }
static void vjp_exp(AdCtx *c, const Node *n, int dy) { give(c, n, 0, mul(c, n, dy, n->id)); }
static void vjp_log(AdCtx *c, const Node *n, int dy) { give(c, n, 0, dvd(c, n, dy, n->in[0])); }

static void vjp_sqrt(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, dvd(c, n, dy, mul(c, n, cnst(c, n, 2.0), n->id)));
}

/* From relu's output, which is positive exactly where its input is (NaN and zeros give no
 * positive output): the backward pass then keeps only the output, which it reads anyway in most
 * networks (the next layer's weight gradient, a max pool's gradient), not the input as well. */
static void vjp_relu(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, ir_binary(c->g, OP_RELU_GRAD, n->id, dy, n->loc));
}

/* dy of a reduction, reshaped to the keepdims shape so that it broadcasts against x. */
static int keepdims_adjoint(AdCtx *c, const Node *n, int dy) {
  if (n->attr.keepdims)
    return dy;
  const Shape *xs = &in_node(c, n, 0)->shape;
  Shape k = *xs;
  for (int i = 0; i < k.rank; i++)
    if (n->attr.axes & (1u << i))
      k.d[i] = (Dim){1, -1};
  return ir_reshape(c->g, dy, k, n->loc);  /* returns dy when the shapes already agree */
}

static void vjp_sum(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, expand(c, n, keepdims_adjoint(c, n, dy), n->in[0]));
}

/* Divide before expanding: the smaller tensor takes the division. */
static void vjp_mean(AdCtx *c, const Node *n, int dy) {
  Attr a = {0};
  a.axes = n->attr.axes;
  int count = ir_node(c->g, OP_NUMEL, 1, &n->in[0], &a, n->loc);
  give(c, n, 0, expand(c, n, dvd(c, n, keepdims_adjoint(c, n, dy), count), n->in[0]));
}

/* NUMEL depends on x's shape, never its values. */
static void vjp_nothing(AdCtx *c, const Node *n, int dy) { (void)c, (void)n, (void)dy; }
/* y = Σ_p x_p over processes: every process's x_p reaches every y, so d/dx_p of Σ_q L_q(y) is
 * the sum over processes of their dL_q/dy — the same collective. */
static void vjp_allreduce(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, ir_unary(c->g, OP_ALLREDUCE, dy, n->loc));
}

static void vjp_sum_to(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, expand(c, n, dy, n->in[0]));
}

/* give() sums dy down to x's shape, which is exactly the adjoint of a broadcast. */
static void vjp_expand(AdCtx *c, const Node *n, int dy) { give(c, n, 0, dy); }

static void vjp_reshape(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, ir_reshape(c->g, dy, in_node(c, n, 0)->shape, n->loc));
}

/* y = op(A) op(B). With A stored as a and B as b:
 *   y = a b      da = dy bᵀ      db = aᵀ dy
 *   y = a bᵀ     da = dy b       db = dyᵀ a
 *   y = aᵀ b     da = b dyᵀ      db = a dy
 *   y = aᵀ bᵀ    da = bᵀ dyᵀ     db = dyᵀ aᵀ
 */
static void vjp_matmul(AdCtx *c, const Node *n, int dy) {
  int a = n->in[0], b = n->in[1];
  bool ta = n->attr.trans_a, tb = n->attr.trans_b;
  if (wants(c, n, 0))
    give(c, n, 0,
         !ta ? matmul(c, n, dy, b, false, !tb) : matmul(c, n, b, dy, tb, true));
  if (wants(c, n, 1))
    give(c, n, 1,
         !tb ? matmul(c, n, a, dy, !ta, false) : matmul(c, n, dy, a, true, ta));
}

/* Labels are integers: no adjoint (wants() says so by dtype). */
static void vjp_cross_entropy(AdCtx *c, const Node *n, int dy) {
  int in[3] = {n->in[0], n->in[1], dy};
  if (wants(c, n, 0))
    give(c, n, 0, ir_node(c->g, OP_CROSS_ENTROPY_GRAD, 3, in, NULL, n->loc));
}

/* ---- issue 3: activations, layout, windows ---- */

/* dy * y * (1 - y) */
static void vjp_sigmoid(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, mul(c, n, dy, mul(c, n, n->id, sub(c, n, cnst(c, n, 1.0), n->id))));
}

/* dy * (1 - y^2) */
static void vjp_tanh(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, mul(c, n, dy, sub(c, n, cnst(c, n, 1.0), mul(c, n, n->id, n->id))));
}

static void vjp_sin(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, mul(c, n, dy, ir_unary(c->g, OP_COS, n->in[0], n->loc)));
}

static void vjp_cos(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, neg(c, n, mul(c, n, dy, ir_unary(c->g, OP_SIN, n->in[0], n->loc))));
}

/* dy / (1 + x^2) */
static void vjp_atan(AdCtx *c, const Node *n, int dy) {
  int x = n->in[0];
  give(c, n, 0, dvd(c, n, dy, ir_binary(c->g, OP_ADD, cnst(c, n, 1.0), mul(c, n, x, x), n->loc)));
}

/* dy 2/sqrt(pi) e^(-x^2) */
static void vjp_erf(AdCtx *c, const Node *n, int dy) {
  int x = n->in[0];
  int e = ir_unary(c->g, OP_EXP, neg(c, n, mul(c, n, x, x)), n->loc);
  give(c, n, 0, mul(c, n, dy, mul(c, n, cnst(c, n, 1.1283791670955126), e)));
}

static void vjp_softplus(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, mul(c, n, dy, ir_softplus_slope(c->g, n->in[0], n->dtype, n->loc)));
}

static void vjp_maximum(AdCtx *c, const Node *n, int dy) {
  int a = n->in[0], b = n->in[1];
  double share = n->attr.value;
  if (wants(c, n, 0))
    give(c, n, 0, mul(c, n, dy, ir_maximum_weight(c->g, a, b, share, n->dtype, n->loc)));
  if (wants(c, n, 1))
    give(c, n, 1, mul(c, n, dy, ir_maximum_weight(c->g, b, a, 1 - share, n->dtype, n->loc)));
}

/* gather's adjoint adds dy back where it was read; the index has none (integer). */
static void vjp_gather(AdCtx *c, const Node *n, int dy) {
  int in[3] = {dy, n->in[1], n->in[0]};
  if (wants(c, n, 0))
    give(c, n, 0, ir_node(c->g, OP_GATHER_GRAD, 3, in, &n->attr, n->loc));
}

/* gather_grad is linear in dy; its adjoint reads the same places again. */
static void vjp_gather_grad(AdCtx *c, const Node *n, int dy) {
  int in[2] = {dy, n->in[1]};
  if (wants(c, n, 0))
    give(c, n, 0, ir_node(c->g, OP_GATHER, 2, in, &n->attr, n->loc));
}

static int leaky_relu_grad(AdCtx *c, const Node *n, int x, int dy) {
  Attr a = {0};
  a.value = n->attr.value;
  int in[2] = {x, dy};
  return ir_node(c->g, OP_LEAKY_RELU_GRAD, 2, in, &a, n->loc);
}

static void vjp_leaky_relu(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, leaky_relu_grad(c, n, n->in[0], dy));
}

/* Like relu_grad: linear in dy', piecewise constant in x. */
static void vjp_leaky_relu_grad(AdCtx *c, const Node *n, int dy) {
  if (wants(c, n, 1))
    give(c, n, 1, leaky_relu_grad(c, n, n->in[0], dy));
}

static int sum_axis(AdCtx *c, const Node *n, int x) {
  return ir_reduce(c->g, OP_SUM, x, 1u << n->attr.axis, true, n->loc);
}

/* y * (dy - sum(dy * y)) along the axis */
static void vjp_softmax(AdCtx *c, const Node *n, int dy) {
  int s = sum_axis(c, n, mul(c, n, dy, n->id));
  give(c, n, 0, mul(c, n, n->id, sub(c, n, dy, s)));
}

/* dy - softmax(x) * sum(dy), softmax(x) = exp(y) */
static void vjp_log_softmax(AdCtx *c, const Node *n, int dy) {
  int p = ir_unary(c->g, OP_EXP, n->id, n->loc);
  give(c, n, 0, sub(c, n, dy, mul(c, n, p, sum_axis(c, n, dy))));
}

/* d/dx = sigmoid(x) - t, d/dt = -x; give() sums either away where it was broadcast. */
static void vjp_bce_logits(AdCtx *c, const Node *n, int dy) {
  int x = n->in[0], t = n->in[1];
  if (wants(c, n, 0))
    give(c, n, 0, mul(c, n, dy, sub(c, n, ir_unary(c->g, OP_SIGMOID, x, n->loc), t)));
  if (wants(c, n, 1))
    give(c, n, 1, neg(c, n, mul(c, n, dy, x)));
}

/* The same op on dy: identical attributes and counter give the identical mask and scale. The
 * counter gets nothing (the output is piecewise constant in it). */
static void vjp_dropout(AdCtx *c, const Node *n, int dy) {
  int in[2] = {dy, n->in[1]};
  give(c, n, 0, ir_node(c->g, OP_DROPOUT, 2, in, &n->attr, n->loc));
}

static void vjp_transpose(AdCtx *c, const Node *n, int dy) {
  int inv[IR_MAX_RANK] = {0};
  for (int i = 0; i < n->shape.rank; i++)
    inv[n->attr.perm[i]] = i;
  give(c, n, 0, ir_transpose(c->g, dy, inv, n->loc));
}

static int slice(AdCtx *c, const Node *n, int x, int axis, int64_t start, int64_t len) {
  Attr a = {0};
  a.axis = axis;
  a.start = start;
  a.len = len;
  return ir_node(c->g, OP_SLICE, 1, &x, &a, n->loc);
}

static int concat(AdCtx *c, const Node *n, int a, int b, int axis) {
  Attr at = {0};
  at.axis = axis;
  int in[2] = {a, b};
  return ir_node(c->g, OP_CONCAT, 2, in, &at, n->loc);
}

/* dy split back into a's part and b's part. */
static void vjp_concat(AdCtx *c, const Node *n, int dy) {
  int ax = n->attr.axis;
  Dim da = in_node(c, n, 0)->shape.d[ax], db = in_node(c, n, 1)->shape.d[ax];
  if (da.sym >= 0)
    kiln_fail(n->loc, "cannot differentiate concat along an axis that depends on the batch");
  if (wants(c, n, 0))
    give(c, n, 0, slice(c, n, dy, ax, 0, da.n));
  if (wants(c, n, 1))
    give(c, n, 1, slice(c, n, dy, ax, da.n, db.n));
}

/* dy put back in place between zeros: concat(0[before], dy, 0[after]). The zero blocks are a
 * scalar expanded to the shape of the matching slice of x (only its shape is read). */
static void vjp_slice(AdCtx *c, const Node *n, int dy) {
  int x = n->in[0], ax = n->attr.axis;
  int64_t start = n->attr.start, end = start + n->attr.len, size = in_node(c, n, 0)->shape.d[ax].n;
  int d = dy;
  if (start > 0)
    d = concat(c, n, expand(c, n, cnst(c, n, 0.0), slice(c, n, x, ax, 0, start)), d, ax);
  if (end < size)
    d = concat(c, n, d, expand(c, n, cnst(c, n, 0.0), slice(c, n, x, ax, end, size - end)), ax);
  give(c, n, 0, d);
}

/* The window attributes of a forward op, and nothing else: the gradient ops then hash-cons
 * with each other (double backward meets the forward nodes again) whatever else the forward
 * node's Attr held. */
static Attr window_attr(const Node *n) {
  Attr a = {0};
  memcpy(a.kernel, n->attr.kernel, sizeof a.kernel);
  memcpy(a.stride, n->attr.stride, sizeof a.stride);
  memcpy(a.dilation, n->attr.dilation, sizeof a.dilation);
  memcpy(a.pad, n->attr.pad, sizeof a.pad);
  a.groups = n->attr.groups;
  a.count_include_pad = n->attr.count_include_pad;
  return a;
}

static int window_op(AdCtx *c, const Node *n, Op op, int a, int b, const int64_t *in_size) {
  Attr at = window_attr(n);
  if (in_size) {
    at.in_size[0] = in_size[0];
    at.in_size[1] = in_size[1];
  }
  int in[2] = {a, b};
  return ir_node(c->g, op, op_arity[op], in, &at, n->loc);
}

/* H and W of window op n's forward input (constant: shape.c requires it). */
static const int64_t *in_hw(AdCtx *c, const Node *n, int64_t *buf) {
  Window w = win_of(c->g, n);
  buf[0] = w.H;
  buf[1] = w.W;
  return buf;
}

/* y = conv2d(x, w): dx = bwd_data(dy, w), dw = bwd_filter(x, dy). */
static void vjp_conv2d(AdCtx *c, const Node *n, int dy) {
  int x = n->in[0], w = n->in[1];
  int64_t s[2];
  if (wants(c, n, 0))
    give(c, n, 0, window_op(c, n, OP_CONV2D_BWD_DATA, dy, w, in_hw(c, n, s)));
  if (wants(c, n, 1))
    give(c, n, 1, window_op(c, n, OP_CONV2D_BWD_FILTER, x, dy, NULL));
}

/* dx = bwd_data(dy, w) is bilinear, dx[xi] = sum dy[yi] w[wi] over the conv's index triples;
 * with ddx its adjoint: d/ddy = conv2d(ddx, w), d/dw = bwd_filter(ddx, dy). */
static void vjp_conv2d_bwd_data(AdCtx *c, const Node *n, int ddx) {
  int dyn = n->in[0], w = n->in[1];
  if (wants(c, n, 0))
    give(c, n, 0, window_op(c, n, OP_CONV2D, ddx, w, NULL));
  if (wants(c, n, 1))
    give(c, n, 1, window_op(c, n, OP_CONV2D_BWD_FILTER, ddx, dyn, NULL));
}

/* dw = bwd_filter(x, dy), dw[wi] = sum x[xi] dy[yi]; with ddw its adjoint:
 * d/dx = bwd_data(dy, ddw), d/ddy = conv2d(x, ddw). */
static void vjp_conv2d_bwd_filter(AdCtx *c, const Node *n, int ddw) {
  int x = n->in[0], dyn = n->in[1];
  int64_t s[2];
  if (wants(c, n, 0))
    give(c, n, 0, window_op(c, n, OP_CONV2D_BWD_DATA, dyn, ddw, in_hw(c, n, s)));
  if (wants(c, n, 1))
    give(c, n, 1, window_op(c, n, OP_CONV2D, x, ddw, NULL));
}

static void vjp_maxpool2d(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, window_op(c, n, OP_MAXPOOL2D_GRAD, n->in[0], dy, NULL));
}

static void vjp_avgpool2d(AdCtx *c, const Node *n, int dy) {
  int64_t s[2];
  give(c, n, 0, window_op(c, n, OP_AVGPOOL2D_GRAD, dy, -1, in_hw(c, n, s)));
}

/* maxpool2d_grad is linear in dy, routing each dy to its window's maximum: its adjoint reads
 * ddx back at the maxima. In x it is piecewise constant. */
static void vjp_maxpool2d_grad(AdCtx *c, const Node *n, int ddx) {
  give(c, n, 1, window_op(c, n, OP_MAXPOOL2D_PICK, n->in[0], ddx, NULL));
}

/* maxpool2d_pick is linear in t with maxpool2d_grad as its adjoint; piecewise constant in x. */
static void vjp_maxpool2d_pick(AdCtx *c, const Node *n, int dy) {
  give(c, n, 1, window_op(c, n, OP_MAXPOOL2D_GRAD, n->in[0], dy, NULL));
}

/* avgpool2d_grad is linear: its adjoint is avgpool2d itself. */
static void vjp_avgpool2d_grad(AdCtx *c, const Node *n, int ddx) {
  give(c, n, 0, window_op(c, n, OP_AVGPOOL2D, ddx, -1, NULL));
}

/* Leaves have no inputs; CROSS_ENTROPY_GRAD has no rule (no second derivatives of the loss):
 * reaching it with a gradient that must flow on is an error. */
static const VjpRule vjp_rules[OP_COUNT] = {
    [OP_ADD] = vjp_add,
    [OP_SUB] = vjp_sub,
    [OP_MUL] = vjp_mul,
    [OP_DIV] = vjp_div,
    [OP_POW] = vjp_pow,
    [OP_RELU_GRAD] = vjp_relu_grad,
    [OP_NEG] = vjp_neg,
    [OP_EXP] = vjp_exp,
    [OP_LOG] = vjp_log,
    [OP_SQRT] = vjp_sqrt,
    [OP_RELU] = vjp_relu,
    [OP_SUM] = vjp_sum,
    [OP_MEAN] = vjp_mean,
    [OP_NUMEL] = vjp_nothing,
    [OP_SUM_TO] = vjp_sum_to,
    [OP_EXPAND] = vjp_expand,
    [OP_RESHAPE] = vjp_reshape,
    [OP_MATMUL] = vjp_matmul,
    [OP_CROSS_ENTROPY] = vjp_cross_entropy,
    [OP_SIGMOID] = vjp_sigmoid,
    [OP_TANH] = vjp_tanh,
    [OP_SIN] = vjp_sin,
    [OP_COS] = vjp_cos,
    [OP_ATAN] = vjp_atan,
    [OP_ERF] = vjp_erf,
    [OP_SIGN] = vjp_nothing,
    [OP_SOFTPLUS] = vjp_softplus,
    [OP_MAXIMUM] = vjp_maximum,
    [OP_ONE_HOT] = vjp_nothing,
    [OP_RANDN] = vjp_nothing,
    [OP_ALLREDUCE] = vjp_allreduce,
    [OP_GATHER] = vjp_gather,
    [OP_GATHER_GRAD] = vjp_gather_grad,
    [OP_LEAKY_RELU] = vjp_leaky_relu,
    [OP_LEAKY_RELU_GRAD] = vjp_leaky_relu_grad,
    [OP_SOFTMAX] = vjp_softmax,
    [OP_LOG_SOFTMAX] = vjp_log_softmax,
    [OP_BCE_LOGITS] = vjp_bce_logits,
    [OP_DROPOUT] = vjp_dropout,
    [OP_TRANSPOSE] = vjp_transpose,
    [OP_CONCAT] = vjp_concat,
    [OP_SLICE] = vjp_slice,
    [OP_CONV2D] = vjp_conv2d,
    [OP_CONV2D_BWD_DATA] = vjp_conv2d_bwd_data,
    [OP_CONV2D_BWD_FILTER] = vjp_conv2d_bwd_filter,
    [OP_MAXPOOL2D] = vjp_maxpool2d,
    [OP_MAXPOOL2D_GRAD] = vjp_maxpool2d_grad,
    [OP_MAXPOOL2D_PICK] = vjp_maxpool2d_pick,
    [OP_AVGPOOL2D] = vjp_avgpool2d,
    [OP_AVGPOOL2D_GRAD] = vjp_avgpool2d_grad,
};

bool ad_has_vjp(Op op) { return op >= 0 && op < OP_COUNT && vjp_rules[op] != NULL; }

Op ad_broken_op = OP_COUNT;

void ad_reverse(Graph *g, int loss, const int *wrt, int nwrt, int *grads) {
  KILN_ASSERT(loss >= 0 && loss < g->nnodes);
  int nfwd = loss + 1;  /* only nodes up to the loss can contribute to it */
  AdCtx c = {g, NULL, NULL};
  /* Freed on both paths: kiln_fail longjmps out, so allocate in the pool. */
  c.adj = pool_alloc(g->pool, (size_t)nfwd * sizeof *c.adj);
  c.dep = pool_alloc(g->pool, (size_t)nfwd);
  for (int i = 0; i < nfwd; i++)
    c.adj[i] = -1;
  for (int i = 0; i < nwrt; i++) {
    KILN_ASSERT(wrt[i] >= 0 && wrt[i] < g->nnodes);
    if (wrt[i] < nfwd)
      c.dep[wrt[i]] = 1;
  }
  for (int id = 0; id < nfwd; id++) {
    const Node *n = ir_at(g, id);
    for (int k = 0; k < n->nin && !c.dep[id]; k++)
      c.dep[id] = c.dep[n->in[k]];
  }

  /* The seed: d loss / d loss = 1 (ones of the loss's shape for a non-scalar "loss"). */
  const Node *lossn = ir_at(g, loss);
  if (!dtype_is_float(lossn->dtype))
    kiln_fail(lossn->loc, "cannot differentiate a %s loss", dtype_name(lossn->dtype));
  int one = ir_const(g, 1.0, lossn->dtype, lossn->loc);
  c.adj[loss] = lossn->shape.rank ? ir_binary(g, OP_EXPAND, one, loss, lossn->loc) : one;

  for (int id = loss; id >= 0; id--) {
    if (c.adj[id] < 0 || !c.dep[id] || op_is_leaf(ir_at(g, id)->op))
      continue;
    const Node *n = ir_at(g, id);
    if (!vjp_rules[n->op])
      kiln_fail(n->loc, "cannot differentiate through %s", op_names[n->op]);
    /* A rule made wrong on purpose doubles its cotangent: the tests of kiln gradcheck. */
    vjp_rules[n->op](&c, n, n->op == ad_broken_op ? ir_binary(g, OP_ADD, c.adj[id], c.adj[id],
                                                               n->loc)
                                                  : c.adj[id]);
  }

  for (int i = 0; i < nwrt; i++) {
    int w = wrt[i];
    if (w < nfwd && c.adj[w] >= 0) {
      grads[i] = c.adj[w];
    } else {
      const Node *wn = ir_at(g, w);
      if (!dtype_is_float(wn->dtype))
        kiln_fail(wn->loc, "cannot differentiate with respect to %s tensor '%s'",
                  dtype_name(wn->dtype), wn->name ? wn->name : "?");
      /* Expanded even for a scalar: a gradient is an entry output, which needs storage, and
       * a bare constant has none. */
      int zero = ir_const(g, 0.0, wn->dtype, wn->loc);
      grads[i] = ir_binary(g, OP_EXPAND, zero, w, wn->loc);
    }
  }
}
