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

static int rewrite_centre_shift(Graph *g, Op op, const int *in, Loc loc) {
  if (op != OP_SUB) return -1;
  Node *a = ir_at(g, in[0]), *m = ir_at(g, in[1]);
  if (a->op != OP_ADD || m->op != OP_MEAN || m->in[0] != a->id || !m->attr.keepdims) return -1;
  for (int k = 0; k < 2; k++) {
    Node *y = ir_at(g, a->in[k]), *c = ir_at(g, a->in[1 - k]);
    if (!shape_eq(&y->shape, &a->shape) || !constant_along(&c->shape, &a->shape, m->attr.axes))
      continue;
    int mean_y = ir_reduce(g, OP_MEAN, y->id, m->attr.axes, true, loc);
    return ir_binary(g, OP_SUB, y->id, mean_y, loc);
  }
  return -1;
}

int opt_rewrite(Graph *g, Op op, int nin, const int *in, const Attr *a, Loc loc) {
  (void)a;
  if (nin == 2) {
    int r = rewrite_centre_shift(g, op, in, loc);
    if (r >= 0) return r;
  }
  return -1;
}
