/*
 * opt.c — algebraic rewrites applied as nodes are built.
 *
 * ir_node asks opt_rewrite for a simpler equivalent before it creates a node, so every phase
 * (the frontend, autodiff, the optimizer update) builds already-simplified graphs and nothing
 * has to walk the graph afterwards. A rule may only replace a node by one computing the same
 * values exactly in real arithmetic; it exists because the result is cheaper or numerically
 * better.
 *
 * Rules:
 *   centre-shift   (y + c) - mean(y + c) → y - mean(y)   when c is constant along the averaged
 *                  axes. A convolution's bias before batch norm is such a c: it cancels, so its
 *                  gradient through the normalisation is exactly zero instead of float rounding
 *                  noise that Adam (which divides by the gradient's own size) would turn into
 *                  full-size random steps.
 *   mean-shift     mean(y + c) → mean(y) + c                when c is constant along the averaged
 *                  axes (keepdims). Batch norm's running mean then needs no pass over y + c of its
 *                  own: it shares the mean of y that centring takes, and y + c is not computed
 *                  when nothing else reads it (a convolution's bias before batch norm, in training).
 *   numel-operand  numel(x) → numel(y) for x = y ⊕ c (+ - * /) with y of x's shape and type.
 *                  numel reads only a shape, but an entry computes every node its nodes take: so
 *                  batch norm's count does not keep y + c (after mean-shift) alive by itself.
 *   relu-pool      relu_grad(x, maxpool2d_grad(x, dy)) → maxpool2d_grad(x, relu_grad(maxpool2d(x), dy)).
 *                  Each dy lands on its window's first maximum, where x is the pooled value: so the
 *                  mask can be taken on the pooled tensor (a quarter of the size for 2×2 windows,
 *                  and ReLU then max pool has computed maxpool2d(x) already), and the gradient is
 *                  the pool gradient's own output instead of one more full-size pass. Elsewhere both
 *                  are +0; where windows overlap, the dy added at an element all take its mask.
 */
#include "ir/ir.h"

/* Does c, broadcast against a tensor of shape `full`, take one value along every axis in axes? */
static bool constant_along(const Shape *c, const Shape *full, unsigned axes) {
  for (int i = 0; i < full->rank; i++) {
    if (!(axes & (1u << i))) continue;
    int ci = c->rank - full->rank + i;
    if (ci >= 0 && !(c->d[ci].sym < 0 && c->d[ci].n == 1)) return false;
  }
  return true;
}

/* The mean-shift rule: mean(y + c) → mean(y) + c. */
static int rewrite_mean_shift(Graph *g, Op op, const int *in, const Attr *attr, Loc loc) {
  if (op != OP_MEAN || !attr || !attr->keepdims) return -1;
  Node *a = ir_at(g, in[0]);
  if (a->op != OP_ADD) return -1;
  for (int k = 0; k < 2; k++) {
    Node *y = ir_at(g, a->in[k]), *c = ir_at(g, a->in[1 - k]);
    if (!shape_eq(&y->shape, &a->shape) || c->shape.rank > a->shape.rank ||
        !constant_along(&c->shape, &a->shape, attr->axes))
      continue;
    int mean_y = ir_reduce(g, OP_MEAN, y->id, attr->axes, true, loc);
    return ir_binary(g, OP_ADD, mean_y, c->id, loc);
  }
  return -1;
}

/* The numel-operand rule: numel(y ⊕ c) → numel(y). */
static int rewrite_numel_operand(Graph *g, Op op, const int *in, const Attr *attr, Loc loc) {
  if (op != OP_NUMEL || !attr) return -1;
  Node *x = ir_at(g, in[0]);
  if (x->op != OP_ADD && x->op != OP_SUB && x->op != OP_MUL && x->op != OP_DIV) return -1;
  for (int k = 0; k < 2; k++) {
    Node *y = ir_at(g, x->in[k]);
    if (shape_eq(&y->shape, &x->shape) && y->dtype == x->dtype)
      return ir_reduce(g, OP_NUMEL, y->id, attr->axes, attr->keepdims, loc);
  }
  return -1;
}

/* The relu-pool rule. */
static int rewrite_relu_pool(Graph *g, Op op, const int *in, Loc loc) {
  if (op != OP_RELU_GRAD) return -1;
  Node *pg = ir_at(g, in[1]);
  if (pg->op != OP_MAXPOOL2D_GRAD || pg->in[0] != in[0]) return -1;
  Attr a = pg->attr;
  int x = in[0], dy = pg->in[1];
  int pooled = ir_node(g, OP_MAXPOOL2D, 1, &x, &a, loc);
  int masked = ir_binary(g, OP_RELU_GRAD, pooled, dy, loc);
  return ir_node(g, OP_MAXPOOL2D_GRAD, 2, (int[]){x, masked}, &a, loc);
}

/* The centre-shift rule, with mean(y + c) already rewritten: (y + c) - (mean(y) + c) → y - mean(y). */
static int rewrite_centre_shift(Graph *g, Op op, const int *in, Loc loc) {
  if (op != OP_SUB) return -1;
  Node *a = ir_at(g, in[0]), *s = ir_at(g, in[1]);
  if (a->op != OP_ADD || s->op != OP_ADD) return -1;
  for (int k = 0; k < 2; k++) {
    Node *y = ir_at(g, a->in[k]), *m = ir_at(g, s->in[0]);
    int c = a->in[1 - k];
    if (s->in[1] != c || m->op != OP_MEAN || m->in[0] != y->id || !m->attr.keepdims ||
        !shape_eq(&y->shape, &a->shape) ||
        !constant_along(&ir_at(g, c)->shape, &a->shape, m->attr.axes))
      continue;
    return ir_binary(g, OP_SUB, y->id, m->id, loc);
  }
  return -1;
}

int opt_rewrite(Graph *g, Op op, int nin, const int *in, const Attr *a, Loc loc) {
  if (nin == 1) {
    int r = rewrite_mean_shift(g, op, in, a, loc);
    if (r < 0) r = rewrite_numel_operand(g, op, in, a, loc);
    if (r >= 0) return r;
  }
  if (nin == 2) {
    int r = rewrite_centre_shift(g, op, in, loc);
    if (r < 0) r = rewrite_relu_pool(g, op, in, loc);
    if (r >= 0) return r;
  }
  return -1;
}
