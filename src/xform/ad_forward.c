/*
 * ad_forward.c — forward-mode differentiation as a graph transform (Jacobian-vector products).
 *
 * ad_forward seeds chosen nodes with tangent nodes (a direction v per wrt tensor) and walks the
 * graph once in id order — ids are a topological order, so every input's tangent is known
 * before its users are visited — asking the tangent rule of each node's op to build the
 * node's tangent from its inputs' tangents: ẏ = Σᵢ ∂y/∂xᵢ · ẋᵢ. Like the vector-Jacobian rules
 * of autodiff.c, tangent rules build ordinary graph nodes through the IR builders, so a JVP
 * graph is shape-checked, hash-consed, optimised, planned, compiled and interpreted like every
 * other node, and each tangent node carries its primal node's source location.
 *
 * Only nodes on a path from a seed to a requested output get a tangent (the `need` mask, the
 * mirror image of ad_reverse's `dep`), so an op without a usable rule is an error only where a
 * tangent really has to flow through it. A missing tangent is represented by -1 (zero), never
 * by a zero tensor, so nothing is built for inputs that do not depend on the seeds.
 *
 * Forward over reverse: applied to the gradient nodes ad_reverse built, with the parameters as
 * seeds, ad_forward yields Hessian-vector products H·v (train.c: train_build_hvp). That is why
 * the second-order ops of the backward pass (cross_entropy_grad, relu_grad, maxpool2d_grad, the
 * convolution adjoints) have tangent rules even though reverse mode has none for some of them.
 *
 * Broadcasting is the mirror of reverse mode's too: a contribution smaller than the node (the
 * tangent of a broadcast bias) is EXPANDed up to the node's shape (plus()).
 */
#include "xform/xform.h"

#include <string.h>

typedef struct FwdCtx {
  Graph *g;
  int *tan;                 /* tangent node of each node below the outputs, -1 = zero */
} FwdCtx;

/* Returns n's tangent node, or -1 for zero. */
typedef int (*JvpRule)(FwdCtx *c, const Node *n);

/* Tangent of input i of n, -1 when it is zero (or the input is not a float tensor). */
static int td(FwdCtx *c, const Node *n, int i) {
  int x = n->in[i];
  return dtype_is_float(ir_at(c->g, x)->dtype) ? c->tan[x] : -1;
}

/* acc + d with d broadcast up to n's shape; -1 stands for zero on either side. */
static int plus(FwdCtx *c, const Node *n, int acc, int d) {
  if (d < 0)
    return acc;
  if (!shape_eq(&ir_at(c->g, d)->shape, &n->shape))
    d = ir_binary(c->g, OP_EXPAND, d, n->id, n->loc);
  return acc < 0 ? d : ir_binary(c->g, OP_ADD, acc, d, n->loc);
}

/* Shorthands; every node built for n's tangent gets n's location. */
static int sub(FwdCtx *c, const Node *n, int a, int b) {
  return ir_binary(c->g, OP_SUB, a, b, n->loc);
}
static int mul(FwdCtx *c, const Node *n, int a, int b) {
  return ir_binary(c->g, OP_MUL, a, b, n->loc);
}
static int dvd(FwdCtx *c, const Node *n, int a, int b) {
  return ir_binary(c->g, OP_DIV, a, b, n->loc);
}
static int neg(FwdCtx *c, const Node *n, int a) { return ir_unary(c->g, OP_NEG, a, n->loc); }
static int cnst(FwdCtx *c, const Node *n, double v) { return ir_const(c->g, v, n->dtype, n->loc); }
/* n's own op (same attributes) applied to other inputs: the tangent of every op linear in
 * those inputs. */
static int same_op(FwdCtx *c, const Node *n, int a, int b, int d) {
  int in[3] = {a, b, d};
  return ir_node(c->g, n->op, n->nin, in, &n->attr, n->loc);
}
/* ẋ * f, or zero. */
static int scaled(FwdCtx *c, const Node *n, int dx, int f) {
  return dx < 0 ? -1 : mul(c, n, dx, f);
}

/* ---- rules: one per op; a = in[0], b = in[1], y = the node; ȧ, ḃ their tangents ---- */

static int jvp_add(FwdCtx *c, const Node *n) {
  return plus(c, n, plus(c, n, -1, td(c, n, 0)), td(c, n, 1));
}

static int jvp_sub(FwdCtx *c, const Node *n) {
  int db = td(c, n, 1);
  return plus(c, n, plus(c, n, -1, td(c, n, 0)), db < 0 ? -1 : neg(c, n, db));
}

static int jvp_mul(FwdCtx *c, const Node *n) {
  int t = plus(c, n, -1, scaled(c, n, td(c, n, 0), n->in[1]));
  return plus(c, n, t, scaled(c, n, td(c, n, 1), n->in[0]));
}

/* (ȧ - y ḃ) / b */
static int jvp_div(FwdCtx *c, const Node *n) {
  int da = td(c, n, 0), db = td(c, n, 1), num = da;
  if (db >= 0) {
    int t = mul(c, n, n->id, db);
    num = da < 0 ? neg(c, n, t) : sub(c, n, da, t);
  }
  return plus(c, n, -1, dvd(c, n, num, n->in[1]));
}

/* ȧ b a^(b-1) + ḃ log(a) y (the log only when b has a tangent, as in reverse mode). */
static int jvp_pow(FwdCtx *c, const Node *n) {
  int a = n->in[0], b = n->in[1], t = -1;
  if (td(c, n, 0) >= 0) {
    int bm1 = sub(c, n, b, ir_const(c->g, 1.0, ir_at(c->g, b)->dtype, n->loc));
    int d = mul(c, n, b, ir_binary(c->g, OP_POW, a, bm1, n->loc));
    t = plus(c, n, t, mul(c, n, td(c, n, 0), d));
  }
  if (td(c, n, 1) >= 0)
    t = plus(c, n, t, mul(c, n, td(c, n, 1), mul(c, n, ir_unary(c->g, OP_LOG, a, n->loc), n->id)));
  return t;
}

/* relu_grad / leaky_relu_grad (x, dy): linear in dy, piecewise constant in x (zero a.e.). */
static int jvp_relu_grad(FwdCtx *c, const Node *n) {
  int ddy = td(c, n, 1);
  return ddy < 0 ? -1 : plus(c, n, -1, same_op(c, n, n->in[0], ddy, -1));
}

static int jvp_neg(FwdCtx *c, const Node *n) { return neg(c, n, td(c, n, 0)); }
/* linear: the tangent of a sum over processes is the sum of the tangents */
static int jvp_allreduce(FwdCtx *c, const Node *n) {
  return ir_unary(c->g, OP_ALLREDUCE, td(c, n, 0), n->loc);
}
static int jvp_exp(FwdCtx *c, const Node *n) { return mul(c, n, td(c, n, 0), n->id); }
static int jvp_log(FwdCtx *c, const Node *n) { return dvd(c, n, td(c, n, 0), n->in[0]); }
static int jvp_sqrt(FwdCtx *c, const Node *n) {
  return dvd(c, n, td(c, n, 0), mul(c, n, cnst(c, n, 2.0), n->id));
}
static int jvp_relu(FwdCtx *c, const Node *n) {
  return ir_binary(c->g, OP_RELU_GRAD, n->in[0], td(c, n, 0), n->loc);
}

/* The op itself on the tangent of its first input, the rest unchanged: reductions, sum_to,
 * expand, reshape, transpose, slice, dropout (same mask: same salt and counter), the pools that
 * are linear (avgpool2d and its adjoint). */
static int jvp_linear(FwdCtx *c, const Node *n) {
  if (td(c, n, 0) < 0)
    return -1;  /* only `like` of sum_to / expand has a tangent: it gives only its shape */
  return same_op(c, n, td(c, n, 0), n->nin > 1 ? n->in[1] : -1, -1);
}

/* NUMEL reads only a shape. */
static int jvp_zero(FwdCtx *c, const Node *n) { (void)c, (void)n; return -1; }

/* Bilinear ops — matmul, conv2d and its two adjoints: f(ȧ, b) + f(a, ḃ) with f the op itself. */
static int jvp_bilinear(FwdCtx *c, const Node *n) {
  int da = td(c, n, 0), db = td(c, n, 1), t = -1;
  if (da >= 0)
    t = plus(c, n, t, same_op(c, n, da, n->in[1], -1));
  if (db >= 0)
    t = plus(c, n, t, same_op(c, n, n->in[0], db, -1));
  return t;
}

/* d/dlogits of the mean cross-entropy is (softmax - onehot) / N = cross_entropy_grad(z, l, 1):
 * the tangent is its dot product with ż (and hash-conses with the gradient of the loss). */
static int jvp_cross_entropy(FwdCtx *c, const Node *n) {
  int in[3] = {n->in[0], n->in[1], cnst(c, n, 1.0)};
  int grad = ir_node(c->g, OP_CROSS_ENTROPY_GRAD, 3, in, NULL, n->loc);
  return ir_reduce(c->g, OP_SUM, mul(c, n, grad, td(c, n, 0)), 3, false, n->loc);
}

static int sum_axis(FwdCtx *c, const Node *n, int x, int axis) {
  return ir_reduce(c->g, OP_SUM, x, 1u << axis, true, n->loc);
}

/* The softmax Jacobian along axis applied to ẋ: p ⊙ (ẋ - Σ p ẋ). */
static int softmax_jvp(FwdCtx *c, const Node *n, int p, int dx, int axis) {
  return mul(c, n, p, sub(c, n, dx, sum_axis(c, n, mul(c, n, p, dx), axis)));
}

/* cross_entropy_grad(z, l, dy) = dy (softmax(z) - onehot(l)) / N: linear in dy; in z the
 * softmax Jacobian-vector product scaled by dy / N — the piece that makes Hessian-vector
 * products of classification losses possible. */
static int jvp_cross_entropy_grad(FwdCtx *c, const Node *n) {
  int z = n->in[0], dz = td(c, n, 0), ddy = td(c, n, 2), t = -1;
  if (ddy >= 0)
    t = plus(c, n, t, same_op(c, n, z, n->in[1], ddy));
  if (dz >= 0) {
    Attr sm = {0};
    sm.axis = 1;
    int p = ir_node(c->g, OP_SOFTMAX, 1, &z, &sm, n->loc);
    int count = ir_reduce(c->g, OP_NUMEL, z, 1u, false, n->loc);
    t = plus(c, n, t, mul(c, n, softmax_jvp(c, n, p, dz, 1), dvd(c, n, n->in[2], count)));
  }
  return t;
}

/* ẋ y (1 - y) */
static int jvp_sigmoid(FwdCtx *c, const Node *n) {
  return mul(c, n, td(c, n, 0), mul(c, n, n->id, sub(c, n, cnst(c, n, 1.0), n->id)));
}

/* ẋ (1 - y²) */
static int jvp_tanh(FwdCtx *c, const Node *n) {
  return mul(c, n, td(c, n, 0), sub(c, n, cnst(c, n, 1.0), mul(c, n, n->id, n->id)));
}

static int jvp_sin(FwdCtx *c, const Node *n) {
  return mul(c, n, td(c, n, 0), ir_unary(c->g, OP_COS, n->in[0], n->loc));
}

static int jvp_cos(FwdCtx *c, const Node *n) {
  return neg(c, n, mul(c, n, td(c, n, 0), ir_unary(c->g, OP_SIN, n->in[0], n->loc)));
}

/* ẋ / (1 + x²) */
static int jvp_atan(FwdCtx *c, const Node *n) {
  int x = n->in[0];
  return dvd(c, n, td(c, n, 0),
             ir_binary(c->g, OP_ADD, cnst(c, n, 1.0), mul(c, n, x, x), n->loc));
}

/* ẋ 2/√π e^(-x²) */
static int jvp_erf(FwdCtx *c, const Node *n) {
  int x = n->in[0];
  int e = ir_unary(c->g, OP_EXP, neg(c, n, mul(c, n, x, x)), n->loc);
  return mul(c, n, td(c, n, 0), mul(c, n, cnst(c, n, 1.1283791670955126), e));
}

static int jvp_softplus(FwdCtx *c, const Node *n) {
  return mul(c, n, td(c, n, 0), ir_softplus_slope(c->g, n->in[0], n->dtype, n->loc));
}

/* ȧ w_a + ḃ w_b, the weights of the reverse rule */
static int jvp_maximum(FwdCtx *c, const Node *n) {
  int a = n->in[0], b = n->in[1], t = -1;
  double share = n->attr.value;
  if (td(c, n, 0) >= 0)
    t = plus(c, n, t, mul(c, n, td(c, n, 0),
                          ir_maximum_weight(c->g, a, b, share, n->dtype, n->loc)));
  if (td(c, n, 1) >= 0)
    t = plus(c, n, t, mul(c, n, td(c, n, 1),
                          ir_maximum_weight(c->g, b, a, 1 - share, n->dtype, n->loc)));
  return t;
}

/* gather_grad (dy, index, like): linear in dy */
static int jvp_gather_grad(FwdCtx *c, const Node *n) {
  return td(c, n, 0) < 0 ? -1 : same_op(c, n, td(c, n, 0), n->in[1], n->in[2]);
}

static int jvp_leaky_relu(FwdCtx *c, const Node *n) {
  Attr a = {0};
  a.value = n->attr.value;
  int in[2] = {n->in[0], td(c, n, 0)};
  return ir_node(c->g, OP_LEAKY_RELU_GRAD, 2, in, &a, n->loc);
}

static int jvp_softmax(FwdCtx *c, const Node *n) {
  return softmax_jvp(c, n, n->id, td(c, n, 0), n->attr.axis);
}

/* ẋ - Σ softmax(x) ẋ, softmax(x) = exp(y) */
static int jvp_log_softmax(FwdCtx *c, const Node *n) {
  int dx = td(c, n, 0), p = ir_unary(c->g, OP_EXP, n->id, n->loc);
  return sub(c, n, dx, sum_axis(c, n, mul(c, n, p, dx), n->attr.axis));
}

/* ∂/∂x = sigmoid(x) - t, ∂/∂t = -x. */
static int jvp_bce_logits(FwdCtx *c, const Node *n) {
  int x = n->in[0], tg = n->in[1], t = -1;
  if (td(c, n, 0) >= 0)
    t = plus(c, n, t, mul(c, n, td(c, n, 0), sub(c, n, ir_unary(c->g, OP_SIGMOID, x, n->loc), tg)));
  if (td(c, n, 1) >= 0)
    t = plus(c, n, t, neg(c, n, mul(c, n, td(c, n, 1), x)));
  return t;
}

/* The counter gets nothing: the output is piecewise constant in it. */
static int jvp_dropout(FwdCtx *c, const Node *n) {
  return td(c, n, 0) < 0 ? -1 : same_op(c, n, td(c, n, 0), n->in[1], -1);
}

static int jvp_transpose(FwdCtx *c, const Node *n) {
  return ir_transpose(c->g, td(c, n, 0), n->attr.perm, n->loc);
}

/* A missing side is zeros of its shape (a scalar expanded: only the shape of x is read). */
static int jvp_concat(FwdCtx *c, const Node *n) {
  int t[2];
  for (int i = 0; i < 2; i++) {
    t[i] = td(c, n, i);
    if (t[i] < 0)
      t[i] = ir_binary(c->g, OP_EXPAND, cnst(c, n, 0.0), n->in[i], n->loc);
  }
  return same_op(c, n, t[0], t[1], -1);
}

/* ẏ = ẋ at each window's first maximum of x, whatever the windows' overlap or dilation. */
static int jvp_maxpool2d(FwdCtx *c, const Node *n) {
  int in[2] = {n->in[0], td(c, n, 0)};
  return ir_node(c->g, OP_MAXPOOL2D_PICK, 2, in, &n->attr, n->loc);
}

/* maxpool2d_grad(x, dy) and maxpool2d_pick(x, t): linear in their second input with the same
 * routing; piecewise constant in x. */
static int jvp_maxpool2d_grad(FwdCtx *c, const Node *n) {
  return td(c, n, 1) < 0 ? -1 : same_op(c, n, n->in[0], td(c, n, 1), -1);
}

/* Leaves have no rule: their tangent is a seed or zero. Every other op has one. */
static const JvpRule jvp_rules[OP_COUNT] = {
    [OP_ADD] = jvp_add,
    [OP_SUB] = jvp_sub,
    [OP_MUL] = jvp_mul,
    [OP_DIV] = jvp_div,
    [OP_POW] = jvp_pow,
    [OP_RELU_GRAD] = jvp_relu_grad,
    [OP_NEG] = jvp_neg,
    [OP_EXP] = jvp_exp,
    [OP_LOG] = jvp_log,
    [OP_SQRT] = jvp_sqrt,
    [OP_RELU] = jvp_relu,
    [OP_SUM] = jvp_linear,
    [OP_MEAN] = jvp_linear,
    [OP_NUMEL] = jvp_zero,
    [OP_SUM_TO] = jvp_linear,
    [OP_EXPAND] = jvp_linear,
    [OP_RESHAPE] = jvp_linear,
    [OP_MATMUL] = jvp_bilinear,
    [OP_CROSS_ENTROPY] = jvp_cross_entropy,
    [OP_CROSS_ENTROPY_GRAD] = jvp_cross_entropy_grad,
    [OP_SIGMOID] = jvp_sigmoid,
    [OP_TANH] = jvp_tanh,
    [OP_SIN] = jvp_sin,
    [OP_COS] = jvp_cos,
    [OP_ATAN] = jvp_atan,
    [OP_ERF] = jvp_erf,
    [OP_SIGN] = jvp_zero,
    [OP_SOFTPLUS] = jvp_softplus,
    [OP_MAXIMUM] = jvp_maximum,
    [OP_ONE_HOT] = jvp_zero,
    [OP_RANDN] = jvp_zero,
    [OP_ALLREDUCE] = jvp_allreduce,
    [OP_GATHER] = jvp_linear,
    [OP_GATHER_GRAD] = jvp_gather_grad,
    [OP_LEAKY_RELU] = jvp_leaky_relu,
    [OP_LEAKY_RELU_GRAD] = jvp_relu_grad,
    [OP_SOFTMAX] = jvp_softmax,
    [OP_LOG_SOFTMAX] = jvp_log_softmax,
    [OP_BCE_LOGITS] = jvp_bce_logits,
    [OP_DROPOUT] = jvp_dropout,
    [OP_TRANSPOSE] = jvp_transpose,
    [OP_CONCAT] = jvp_concat,
    [OP_SLICE] = jvp_linear,
    [OP_CONV2D] = jvp_bilinear,
    [OP_CONV2D_BWD_DATA] = jvp_bilinear,
    [OP_CONV2D_BWD_FILTER] = jvp_bilinear,
    [OP_MAXPOOL2D] = jvp_maxpool2d,
    [OP_MAXPOOL2D_GRAD] = jvp_maxpool2d_grad,
    [OP_MAXPOOL2D_PICK] = jvp_maxpool2d_grad,
    [OP_AVGPOOL2D] = jvp_linear,
    [OP_AVGPOOL2D_GRAD] = jvp_linear,
};

bool ad_has_jvp(Op op) { return op >= 0 && op < OP_COUNT && jvp_rules[op] != NULL; }

void ad_forward(Graph *g, const int *wrt, const int *tangents, int nwrt, const int *outs,
                int nouts, int *jvps) {
  int nfwd = 0;
  for (int i = 0; i < nouts; i++) {
    KILN_ASSERT(outs[i] >= 0 && outs[i] < g->nnodes);
    if (outs[i] + 1 > nfwd)
      nfwd = outs[i] + 1;
  }
  FwdCtx c = {g, NULL};
  /* Freed on both paths: kiln_fail longjmps out, so allocate in the pool. */
  c.tan = pool_alloc(g->pool, (size_t)(nfwd + 1) * sizeof *c.tan);
  unsigned char *need = pool_alloc(g->pool, (size_t)nfwd + 1);
  unsigned char *seeded = pool_alloc(g->pool, (size_t)nfwd + 1);
  for (int i = 0; i < nfwd; i++)
    c.tan[i] = -1;
  for (int i = 0; i < nouts; i++)
    need[outs[i]] = 1;
  for (int id = nfwd - 1; id >= 0; id--)
    if (need[id])
      for (int k = 0; k < ir_at(g, id)->nin; k++)
        need[ir_at(g, id)->in[k]] = 1;

  for (int i = 0; i < nwrt; i++) {
    KILN_ASSERT(wrt[i] >= 0 && wrt[i] < g->nnodes);
    KILN_ASSERT(tangents[i] >= 0 && tangents[i] < g->nnodes);
    const Node *wn = ir_at(g, wrt[i]), *tn = ir_at(g, tangents[i]);
    const char *name = wn->name ? wn->name : op_names[wn->op];
    if (!dtype_is_float(wn->dtype))
      kiln_fail(wn->loc, "cannot differentiate with respect to %s tensor '%s'",
                dtype_name(wn->dtype), name);
    if (!shape_eq(&wn->shape, &tn->shape) || wn->dtype != tn->dtype) {
      char s1[128], s2[128];
      kiln_fail(tn->loc, "the tangent of '%s' is %s%s, but '%s' is %s%s", name,
                dtype_name(tn->dtype), shape_str(g, &tn->shape, s1, sizeof s1), name,
                dtype_name(wn->dtype), shape_str(g, &wn->shape, s2, sizeof s2));
    }
    int w = wrt[i];
    if (w >= nfwd || !need[w])
      continue;
    c.tan[w] = c.tan[w] < 0 ? tangents[i] : ir_binary(g, OP_ADD, c.tan[w], tangents[i], wn->loc);
    seeded[w] = 1;
  }

  for (int id = 0; id < nfwd; id++) {
    if (!need[id] || seeded[id])
      continue;
    const Node *n = ir_at(g, id);
    if (op_is_leaf(n->op) || !dtype_is_float(n->dtype))
      continue;
    bool flows = false;
    for (int k = 0; k < n->nin; k++)
      flows |= dtype_is_float(ir_at(g, n->in[k])->dtype) && c.tan[n->in[k]] >= 0;
    if (!flows)
      continue;
    if (!jvp_rules[n->op])
      kiln_fail(n->loc, "cannot differentiate through %s in forward mode", op_names[n->op]);
    int t = jvp_rules[n->op](&c, n);
    KILN_ASSERT(t < 0 || (shape_eq(&ir_at(g, t)->shape, &n->shape) && ir_at(g, t)->dtype == n->dtype));
    c.tan[id] = t;
  }

  for (int i = 0; i < nouts; i++) {
    const Node *on = ir_at(g, outs[i]);
    if (!dtype_is_float(on->dtype))
      kiln_fail(on->loc, "cannot differentiate a %s value", dtype_name(on->dtype));
    if (c.tan[outs[i]] >= 0) {
      jvps[i] = c.tan[outs[i]];
    } else {
      /* Expanded even for a scalar: a JVP is an entry output, which needs storage. */
      int zero = ir_const(g, 0.0, on->dtype, on->loc);
      jvps[i] = ir_binary(g, OP_EXPAND, zero, outs[i], on->loc);
    }
  }
}
