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
#include "compiler.h"

#include <stdlib.h>
#include <string.h>

typedef struct AdCtx {
  Graph *g;
  int *adj;                 /* adjoint node of each forward node, -1 = none yet */
  unsigned char *dep;       /* forward node depends on a wrt leaf */
} AdCtx;

/* n is a copy: building nodes may move g->nodes. */
typedef void (*VjpRule)(AdCtx *c, const Node *n, int dy);

static const Node *in_node(AdCtx *c, const Node *n, int i) { return &c->g->nodes[n->in[i]]; }

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
  if (!shape_eq(&c->g->nodes[d].shape, &c->g->nodes[x].shape))
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
  return shape_eq(&c->g->nodes[x].shape, &c->g->nodes[like].shape)
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

static void vjp_relu(AdCtx *c, const Node *n, int dy) {
  give(c, n, 0, ir_binary(c->g, OP_RELU_GRAD, n->in[0], dy, n->loc));
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
};

bool ad_has_vjp(Op op) { return op >= 0 && op < OP_COUNT && vjp_rules[op] != NULL; }

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
    const Node *n = &g->nodes[id];
    for (int k = 0; k < n->nin && !c.dep[id]; k++)
      c.dep[id] = c.dep[n->in[k]];
  }

  /* The seed: d loss / d loss = 1 (ones of the loss's shape for a non-scalar "loss"). */
  Node lossn = g->nodes[loss];
  if (!dtype_is_float(lossn.dtype))
    kiln_fail(lossn.loc, "cannot differentiate a %s loss", dtype_name(lossn.dtype));
  int one = ir_const(g, 1.0, lossn.dtype, lossn.loc);
  c.adj[loss] = lossn.shape.rank ? ir_binary(g, OP_EXPAND, one, loss, lossn.loc) : one;

  for (int id = loss; id >= 0; id--) {
    if (c.adj[id] < 0 || !c.dep[id] || op_is_leaf(g->nodes[id].op))
      continue;
    Node n = g->nodes[id];  /* a copy: rules append nodes, which may move g->nodes */
    if (!vjp_rules[n.op])
      kiln_fail(n.loc, "cannot differentiate through %s", op_names[n.op]);
    vjp_rules[n.op](&c, &n, c.adj[id]);
  }

  for (int i = 0; i < nwrt; i++) {
    int w = wrt[i];
    if (w < nfwd && c.adj[w] >= 0) {
      grads[i] = c.adj[w];
    } else {
      Node wn = g->nodes[w];
      if (!dtype_is_float(wn.dtype))
        kiln_fail(wn.loc, "cannot differentiate with respect to %s tensor '%s'",
                  dtype_name(wn.dtype), wn.name ? wn.name : "?");
      int zero = ir_const(g, 0.0, wn.dtype, wn.loc);
      grads[i] = wn.shape.rank ? ir_binary(g, OP_EXPAND, zero, w, wn.loc) : zero;
    }
  }
}
