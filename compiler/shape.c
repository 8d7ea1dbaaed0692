/*
 * shape.c — type and shape rules, one per op, and FLOP counts for `kiln shapes`.
 *
 * shape_infer runs when a node is built, so every error is reported against the model-file
 * location of the node and writes both shapes out. Dimensions may be symbolic (n * B); two
 * dimensions are compatible when they are equal as expressions, or one is the constant 1
 * (broadcasting). Nothing here knows a symbol's value.
 */
#include <string.h>

#include "compiler.h"

typedef void (*ShapeRule)(Graph *g, Node *n);
typedef double (*FlopRule)(const Graph *g, const Node *n, const int64_t *symvals);

static Node *in_node(Graph *g, const Node *n, int i) { return &g->nodes[n->in[i]]; }

static const char *sh(Graph *g, const Shape *s, char *buf) { return shape_str(g, s, buf, 96); }

static void require_float(Graph *g, Node *n, int i) {
  Node *x = in_node(g, n, i);
  if (!dtype_is_float(x->dtype))
    kiln_fail(n->loc, "%s needs a floating-point input, but %s is %s",
              op_names[n->op], x->name ? x->name : "its input", dtype_name(x->dtype));
}

static void require_same_dtype(Graph *g, Node *n) {
  Node *a = in_node(g, n, 0), *b = in_node(g, n, 1);
  if (a->dtype != b->dtype)
    kiln_fail(n->loc, "%s of %s and %s: element types differ", op_names[n->op],
              dtype_name(a->dtype), dtype_name(b->dtype));
}

static bool is_one(Dim d) { return d.sym < 0 && d.n == 1; }

Shape shape_broadcast(Graph *g, const Shape *a, const Shape *b, Loc loc, const char *what) {
  Shape r = {0};
  r.rank = a->rank > b->rank ? a->rank : b->rank;
  for (int i = 0; i < r.rank; i++) {
    int ia = a->rank - r.rank + i, ib = b->rank - r.rank + i;
    Dim da = ia >= 0 ? a->d[ia] : (Dim){1, -1};
    Dim db = ib >= 0 ? b->d[ib] : (Dim){1, -1};
    if (dim_eq(da, db) || is_one(db))
      r.d[i] = da;
    else if (is_one(da))
      r.d[i] = db;
    else {
      char s1[96], s2[96];
      kiln_fail(loc, "cannot %s shapes %s and %s: dimension %d differs", what, sh(g, a, s1),
                sh(g, b, s2), i);
    }
  }
  return r;
}

/* ---- rules ---- */

static void rule_leaf(Graph *g, Node *n) {
  (void)g;
  (void)n;  /* leaves get their type and shape from the builder */
}

static void rule_const(Graph *g, Node *n) {
  (void)g;
  n->dtype = n->attr.dtype;
  n->shape.rank = 0;
}

static void rule_binary(Graph *g, Node *n) {
  require_float(g, n, 0);
  require_float(g, n, 1);
  require_same_dtype(g, n);
  n->dtype = in_node(g, n, 0)->dtype;
  n->shape = shape_broadcast(g, &in_node(g, n, 0)->shape, &in_node(g, n, 1)->shape, n->loc,
                             op_names[n->op]);
}

static void rule_unary(Graph *g, Node *n) {
  require_float(g, n, 0);
  n->dtype = in_node(g, n, 0)->dtype;
  n->shape = in_node(g, n, 0)->shape;
}

static unsigned all_axes(int rank) { return rank >= 32 ? ~0u : (1u << rank) - 1; }

static void rule_reduce(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0);
  if (n->op != OP_NUMEL) require_float(g, n, 0);
  if (n->attr.axes & ~all_axes(x->shape.rank)) {
    char s[96];
    kiln_fail(n->loc, "%s: axis out of range for a tensor of shape %s", op_names[n->op],
              sh(g, &x->shape, s));
  }
  n->dtype = x->dtype;
  if (n->op == OP_NUMEL) {
    if (!dtype_is_float(n->dtype)) n->dtype = DT_F32;
    n->shape.rank = 0;
    return;
  }
  Shape r = {0};
  for (int i = 0; i < x->shape.rank; i++) {
    if (n->attr.axes & (1u << i)) {
      if (n->attr.keepdims) r.d[r.rank++] = (Dim){1, -1};
    } else {
      r.d[r.rank++] = x->shape.d[i];
    }
  }
  n->shape = r;
}

/* sum_to(x, like): like's shape must broadcast to x's shape. */
static void rule_sum_to(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0), *like = in_node(g, n, 1);
  require_float(g, n, 0);
  Shape b = shape_broadcast(g, &like->shape, &x->shape, n->loc, "reduce");
  if (!shape_eq(&b, &x->shape)) {
    char s1[96], s2[96];
    kiln_fail(n->loc, "sum_to: %s does not broadcast to %s", sh(g, &like->shape, s1),
              sh(g, &x->shape, s2));
  }
  n->dtype = x->dtype;
  n->shape = like->shape;
}

/* expand(x, like): x's shape must broadcast to like's shape. */
static void rule_expand(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0), *like = in_node(g, n, 1);
  require_float(g, n, 0);
  Shape b = shape_broadcast(g, &x->shape, &like->shape, n->loc, "expand");
  if (!shape_eq(&b, &like->shape)) {
    char s1[96], s2[96];
    kiln_fail(n->loc, "expand: %s does not broadcast to %s", sh(g, &x->shape, s1),
              sh(g, &like->shape, s2));
  }
  n->dtype = x->dtype;
  n->shape = like->shape;
}

/* Element counts as symbolic monomials: n * B^k. Reshape must preserve the count exactly. */
typedef struct Mono {
  int64_t n;
  int pow[IR_MAX_SYMS];
} Mono;

static Mono shape_mono(const Shape *s) {
  Mono m = {1, {0}};
  for (int i = 0; i < s->rank; i++) {
    m.n *= s->d[i].n;
    if (s->d[i].sym >= 0) m.pow[s->d[i].sym]++;
  }
  return m;
}

static void rule_reshape(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0);
  Mono a = shape_mono(&x->shape), b = shape_mono(&n->attr.shape);
  if (a.n != b.n || memcmp(a.pow, b.pow, sizeof a.pow)) {
    char s1[96], s2[96];
    kiln_fail(n->loc, "cannot reshape %s to %s: element counts differ", sh(g, &x->shape, s1),
              sh(g, &n->attr.shape, s2));
  }
  n->dtype = x->dtype;
  n->shape = n->attr.shape;
}

static void rule_matmul(Graph *g, Node *n) {
  Node *a = in_node(g, n, 0), *b = in_node(g, n, 1);
  require_float(g, n, 0);
  require_float(g, n, 1);
  require_same_dtype(g, n);
  char s1[96], s2[96];
  if (a->shape.rank != 2 || b->shape.rank != 2)
    kiln_fail(n->loc, "matmul needs two matrices, got %s and %s", sh(g, &a->shape, s1),
              sh(g, &b->shape, s2));
  Dim m = a->shape.d[n->attr.trans_a ? 1 : 0], ka = a->shape.d[n->attr.trans_a ? 0 : 1];
  Dim kb = b->shape.d[n->attr.trans_b ? 1 : 0], nn = b->shape.d[n->attr.trans_b ? 0 : 1];
  if (!dim_eq(ka, kb))
    kiln_fail(n->loc, "matmul of %s%s and %s%s: inner dimensions differ", sh(g, &a->shape, s1),
              n->attr.trans_a ? "ᵀ" : "", sh(g, &b->shape, s2), n->attr.trans_b ? "ᵀ" : "");
  n->dtype = a->dtype;
  n->shape.rank = 2;
  n->shape.d[0] = m;
  n->shape.d[1] = nn;
}

static void check_logits_labels(Graph *g, Node *n) {
  Node *lg = in_node(g, n, 0), *lb = in_node(g, n, 1);
  char s1[96], s2[96];
  require_float(g, n, 0);
  if (lg->shape.rank != 2)
    kiln_fail(n->loc, "cross_entropy needs logits of shape [N, C], got %s", sh(g, &lg->shape, s1));
  if (lb->dtype != DT_I32)
    kiln_fail(n->loc, "cross_entropy needs integer (i32) labels, got %s", dtype_name(lb->dtype));
  if (lb->shape.rank != 1 || !dim_eq(lb->shape.d[0], lg->shape.d[0]))
    kiln_fail(n->loc, "cross_entropy: labels %s do not match logits %s (expected [N])",
              sh(g, &lb->shape, s2), sh(g, &lg->shape, s1));
}

static void rule_cross_entropy(Graph *g, Node *n) {
  check_logits_labels(g, n);
  n->dtype = in_node(g, n, 0)->dtype;
  n->shape.rank = 0;
}

static void rule_cross_entropy_grad(Graph *g, Node *n) {
  check_logits_labels(g, n);
  if (in_node(g, n, 2)->shape.rank != 0) kiln_fail(n->loc, "cross_entropy_grad: dy must be a scalar");
  n->dtype = in_node(g, n, 0)->dtype;
  n->shape = in_node(g, n, 0)->shape;
}

static void rule_relu_grad(Graph *g, Node *n) {
  rule_binary(g, n);
  if (!shape_eq(&n->shape, &in_node(g, n, 0)->shape))
    kiln_fail(n->loc, "relu_grad: dy must have the shape of x");
}

static const ShapeRule shape_rules[OP_COUNT] = {
    [OP_INPUT] = rule_leaf,         [OP_PARAM] = rule_leaf,     [OP_STATE] = rule_leaf,
    [OP_CONST] = rule_const,        [OP_ADD] = rule_binary,     [OP_SUB] = rule_binary,
    [OP_MUL] = rule_binary,         [OP_DIV] = rule_binary,     [OP_POW] = rule_binary,
    [OP_RELU_GRAD] = rule_relu_grad, [OP_NEG] = rule_unary,     [OP_EXP] = rule_unary,
    [OP_LOG] = rule_unary,          [OP_SQRT] = rule_unary,     [OP_RELU] = rule_unary,
    [OP_SUM] = rule_reduce,         [OP_MEAN] = rule_reduce,    [OP_NUMEL] = rule_reduce,
    [OP_SUM_TO] = rule_sum_to,      [OP_EXPAND] = rule_expand,  [OP_RESHAPE] = rule_reshape,
    [OP_MATMUL] = rule_matmul,      [OP_CROSS_ENTROPY] = rule_cross_entropy,
    [OP_CROSS_ENTROPY_GRAD] = rule_cross_entropy_grad,
};

void shape_infer(Graph *g, Node *n) {
  if (!shape_rules[n->op]) kiln_bug(__FILE__, __LINE__, op_names[n->op]);
  shape_rules[n->op](g, n);
}

/* ---- FLOPs: multiply-adds count 2, everything elementwise 1 ---- */

static double numel_of(const Graph *g, int id, const int64_t *sv) {
  return (double)shape_numel(&g->nodes[id].shape, sv);
}

static double flops_none(const Graph *g, const Node *n, const int64_t *sv) {
  (void)g, (void)n, (void)sv;
  return 0;
}

static double flops_out(const Graph *g, const Node *n, const int64_t *sv) {
  return numel_of(g, n->id, sv);
}

static double flops_in(const Graph *g, const Node *n, const int64_t *sv) {
  return numel_of(g, n->in[0], sv);
}

static double flops_matmul(const Graph *g, const Node *n, const int64_t *sv) {
  const Node *a = &g->nodes[n->in[0]];
  double k = (double)dim_value(a->shape.d[n->attr.trans_a ? 0 : 1], sv);
  return 2.0 * k * numel_of(g, n->id, sv);
}

/* log-sum-exp per row (max, exp, sum, log) plus the pick: about 4 per logit. */
static double flops_xent(const Graph *g, const Node *n, const int64_t *sv) {
  return 4.0 * numel_of(g, n->in[0], sv);
}

static const FlopRule flop_rules[OP_COUNT] = {
    [OP_INPUT] = flops_none,  [OP_PARAM] = flops_none,   [OP_STATE] = flops_none,
    [OP_CONST] = flops_none,  [OP_ADD] = flops_out,      [OP_SUB] = flops_out,
    [OP_MUL] = flops_out,     [OP_DIV] = flops_out,      [OP_POW] = flops_out,
    [OP_RELU_GRAD] = flops_out, [OP_NEG] = flops_out,    [OP_EXP] = flops_out,
    [OP_LOG] = flops_out,     [OP_SQRT] = flops_out,     [OP_RELU] = flops_out,
    [OP_SUM] = flops_in,      [OP_MEAN] = flops_in,      [OP_NUMEL] = flops_none,
    [OP_SUM_TO] = flops_in,   [OP_EXPAND] = flops_none,  [OP_RESHAPE] = flops_none,
    [OP_MATMUL] = flops_matmul, [OP_CROSS_ENTROPY] = flops_xent,
    [OP_CROSS_ENTROPY_GRAD] = flops_xent,
};

double shape_flops(const Graph *g, const Node *n, const int64_t *symvals) {
  return flop_rules[n->op](g, n, symvals);
}
