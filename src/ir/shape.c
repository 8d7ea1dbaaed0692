/*
 * shape.c — type and shape rules, one per op, and FLOP counts for `kiln shapes`.
 *
 * shape_infer runs when a node is built, so every error is reported against the model-file
 * location of the node and writes both shapes out. Dimensions may be symbolic (n * B); two
 * dimensions are compatible when they are equal as expressions, or one is the constant 1
 * (broadcasting). Nothing here knows a symbol's value.
 */
#include <string.h>

#include "ir/ir.h"

typedef void (*ShapeRule)(Graph *g, Node *n);
typedef double (*FlopRule)(const Graph *g, const Node *n, const int64_t *symvals);

static Node *in_node(Graph *g, const Node *n, int i) { return ir_at(g, n->in[i]); }

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
    kiln_fail(n->loc, "%s: dy must have the shape of x", op_names[n->op]);
}


/* ---- issue 3: activations, layout, windows ---- */

static void rule_axis(Graph *g, Node *n) {
  rule_unary(g, n);
  if (n->attr.axis < 0 || n->attr.axis >= n->shape.rank) {
    char s[96];
    kiln_fail(n->loc, "%s: axis %d out of range for shape %s", op_names[n->op], n->attr.axis,
              sh(g, &n->shape, s));
  }
}

static void rule_dropout(Graph *g, Node *n) {
  require_float(g, n, 0);
  Node *c = in_node(g, n, 1);
  if (c->dtype != DT_F64 || c->shape.rank != 0)
    kiln_fail(n->loc, "dropout: the step counter must be an f64 scalar");
  if (!(n->attr.value >= 0 && n->attr.value < 1))
    kiln_fail(n->loc, "dropout probability must be in [0, 1), got %g", n->attr.value);
  n->dtype = in_node(g, n, 0)->dtype;
  n->shape = in_node(g, n, 0)->shape;
}

static void rule_transpose(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0);
  int seen = 0;
  for (int i = 0; i < x->shape.rank; i++) {
    int p = n->attr.perm[i];
    if (p < 0 || p >= x->shape.rank || (seen & (1 << p))) {
      char s[96];
      kiln_fail(n->loc, "transpose: the axes must be a permutation of 0..%d for shape %s",
                x->shape.rank - 1, sh(g, &x->shape, s));
    }
    seen |= 1 << p;
  }
  n->dtype = x->dtype;
  n->shape.rank = x->shape.rank;
  for (int i = 0; i < x->shape.rank; i++) n->shape.d[i] = x->shape.d[n->attr.perm[i]];
}

static void rule_concat(Graph *g, Node *n) {
  Node *a = in_node(g, n, 0), *b = in_node(g, n, 1);
  require_same_dtype(g, n);
  int ax = n->attr.axis;
  char s1[96], s2[96];
  bool ok = a->shape.rank == b->shape.rank && ax >= 0 && ax < a->shape.rank;
  for (int i = 0; ok && i < a->shape.rank; i++)
    if (i != ax && !dim_eq(a->shape.d[i], b->shape.d[i])) ok = false;
  if (ok && a->shape.d[ax].sym != b->shape.d[ax].sym) ok = false;
  if (!ok)
    kiln_fail(n->loc, "cannot concatenate %s and %s along axis %d", sh(g, &a->shape, s1),
              sh(g, &b->shape, s2), ax);
  n->dtype = a->dtype;
  n->shape = a->shape;
  n->shape.d[ax].n = a->shape.d[ax].n + b->shape.d[ax].n;
}

static void require_index(Graph *g, Node *n, int i) {
  Node *x = in_node(g, n, i);
  if (x->dtype != DT_I32)
    kiln_fail(n->loc, "%s needs an i32 index, but %s is %s", op_names[n->op],
              x->name ? x->name : "it", dtype_name(x->dtype));
}

static void rule_randn(Graph *g, Node *n) {
  require_float(g, n, 0);
  Node *c = in_node(g, n, 1);
  if (c->dtype != DT_F64 || c->shape.rank != 0)
    kiln_fail(n->loc, "randn: the step counter must be an f64 scalar");
  n->dtype = in_node(g, n, 0)->dtype;
  n->shape = in_node(g, n, 0)->shape;
}

static void rule_one_hot(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0);
  require_index(g, n, 0);
  if (x->shape.rank >= IR_MAX_RANK || n->attr.len < 1 || n->attr.len > ((int64_t)1 << 31))
    kiln_fail(n->loc, "one_hot: %lld classes for a rank-%d input", (long long)n->attr.len,
              x->shape.rank);
  n->dtype = n->attr.dtype;
  n->shape = x->shape;
  n->shape.d[n->shape.rank++] = (Dim){n->attr.len, -1};
}

/* The index has x's shape except along the axis, where it may have any extent. */
static void rule_gather(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0), *ix = in_node(g, n, 1);
  require_float(g, n, 0);
  require_index(g, n, 1);
  int ax = n->attr.axis;
  char s1[96], s2[96];
  bool fits = ix->shape.rank == x->shape.rank && ax >= 0 && ax < x->shape.rank;
  for (int k = 0; fits && k < x->shape.rank; k++)
    fits = k == ax || dim_eq(x->shape.d[k], ix->shape.d[k]);
  if (!fits)
    kiln_fail(n->loc, "gather along axis %d: the index %s must have the shape of %s but along "
              "that axis", ax, sh(g, &ix->shape, s1), sh(g, &x->shape, s2));
  n->dtype = x->dtype;
  n->shape = ix->shape;
}

static void rule_gather_grad(Graph *g, Node *n) {
  Node *dy = in_node(g, n, 0), *like = in_node(g, n, 2);
  require_float(g, n, 0);
  require_index(g, n, 1);
  n->dtype = dy->dtype;
  n->shape = like->shape;
}

static void rule_slice(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0);
  int ax = n->attr.axis;
  char s[96];
  if (ax < 0 || ax >= x->shape.rank || x->shape.d[ax].sym >= 0 || n->attr.start < 0 ||
      n->attr.len <= 0 || n->attr.start + n->attr.len > x->shape.d[ax].n)
    kiln_fail(n->loc, "slice [%lld, %lld) along axis %d is out of range for shape %s",
              (long long)n->attr.start, (long long)(n->attr.start + n->attr.len), ax,
              sh(g, &x->shape, s));
  n->dtype = x->dtype;
  n->shape = x->shape;
  n->shape.d[ax].n = n->attr.len;
}

/* Output extent of a window along one axis (seed 000 eq. 2.2); fails with the sizes involved. */
static int64_t window_out(Graph *g, Node *n, const Shape *xs, int axis) {
  const Attr *a = &n->attr;
  int64_t in = xs->d[2 + axis].n;
  int64_t padded = in + a->pad[2 * axis] + a->pad[2 * axis + 1];
  int64_t span = a->dilation[axis] * (a->kernel[axis] - 1) + 1;
  char s[96];
  if (a->kernel[axis] <= 0 || a->stride[axis] <= 0 || a->dilation[axis] <= 0 ||
      a->pad[2 * axis] < 0 || a->pad[2 * axis + 1] < 0)
    kiln_fail(n->loc, "%s: kernel, stride and dilation must be positive and padding >= 0",
              op_names[n->op]);
  if (span > padded) {
    char dil[96] = "";
    if (a->dilation[axis] > 1)
      snprintf(dil, sizeof dil, ", %lld with dilation %lld", (long long)a->kernel[axis],
               (long long)a->dilation[axis]);
    kiln_fail(n->loc, "%s: the %s window (%lld%s) is larger than the padded input (%lld) of "
              "shape %s", op_names[n->op], axis ? "horizontal" : "vertical", (long long)span, dil,
              (long long)padded, sh(g, xs, s));
  }
  return win_extent(in, a->kernel[axis], a->stride[axis], a->dilation[axis], a->pad[2 * axis],
                    a->pad[2 * axis + 1]);
}

static void require_nchw(Graph *g, Node *n, const Node *x, const char *what) {
  char s[96];
  if (x->shape.rank != 4 || x->shape.d[1].sym >= 0 || x->shape.d[2].sym >= 0 ||
      x->shape.d[3].sym >= 0)
    kiln_fail(n->loc, "%s needs %s of shape [N, C, H, W], got %s", op_names[n->op], what,
              sh(g, &x->shape, s));
}

/* Shape of a conv2d's output from x and w, checking channels and groups. */
static Shape conv_out(Graph *g, Node *n, const Node *x, const Node *w) {
  char s1[96], s2[96];
  require_nchw(g, n, x, "an input");
  if (w->shape.rank != 4)
    kiln_fail(n->loc, "conv2d needs a weight of shape [O, C/groups, kh, kw], got %s",
              sh(g, &w->shape, s1));
  int64_t groups = n->attr.groups, c = x->shape.d[1].n, o = w->shape.d[0].n;
  if (groups <= 0 || c % groups || o % groups)
    kiln_fail(n->loc, "conv2d: %lld input and %lld output channels do not divide into %lld groups",
              (long long)c, (long long)o, (long long)groups);
  if (w->shape.d[1].n != c / groups)
    kiln_fail(n->loc, "conv2d: weight %s expects %lld input channels per group, but the input %s "
              "has %lld in each of %lld groups", sh(g, &w->shape, s1), (long long)w->shape.d[1].n,
              sh(g, &x->shape, s2), (long long)(c / groups), (long long)groups);
  if (n->attr.kernel[0] != w->shape.d[2].n || n->attr.kernel[1] != w->shape.d[3].n)
    kiln_fail(n->loc, "conv2d: attr.kernel does not match the weight %s", sh(g, &w->shape, s1));
  Shape r = {0};
  r.rank = 4;
  r.d[0] = x->shape.d[0];
  r.d[1] = (Dim){o, -1};
  r.d[2] = (Dim){window_out(g, n, &x->shape, 0), -1};
  r.d[3] = (Dim){window_out(g, n, &x->shape, 1), -1};
  return r;
}

static void rule_conv2d(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0), *w = in_node(g, n, 1);
  require_float(g, n, 0);
  require_same_dtype(g, n);
  n->dtype = x->dtype;
  n->shape = conv_out(g, n, x, w);
}

/* The forward input an adjoint op reconstructs: [N, C, in_size] with N from dy. */
static Shape input_like(const Node *dy, int64_t c, const int64_t *in_size) {
  Shape r = {0};
  r.rank = 4;
  r.d[0] = dy->shape.d[0];
  r.d[1] = (Dim){c, -1};
  r.d[2] = (Dim){in_size[0], -1};
  r.d[3] = (Dim){in_size[1], -1};
  return r;
}

static void check_adjoint_output(Graph *g, Node *n, const Shape *fwd_out, const Node *dy) {
  char s1[96], s2[96];
  if (!shape_eq(fwd_out, &dy->shape))
    kiln_fail(n->loc, "%s: dy has shape %s but the forward output would be %s", op_names[n->op],
              sh(g, &dy->shape, s1), sh(g, fwd_out, s2));
}

static void rule_conv2d_bwd_data(Graph *g, Node *n) {
  Node *dy = in_node(g, n, 0), *w = in_node(g, n, 1);
  require_same_dtype(g, n);
  require_nchw(g, n, dy, "dy");
  Node x = {0};
  x.shape = input_like(dy, w->shape.rank == 4 ? w->shape.d[1].n * n->attr.groups : 0, n->attr.in_size);
  Shape fwd = conv_out(g, n, &x, w);
  check_adjoint_output(g, n, &fwd, dy);
  n->dtype = dy->dtype;
  n->shape = x.shape;
}

static void rule_conv2d_bwd_filter(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0), *dy = in_node(g, n, 1);
  require_same_dtype(g, n);
  require_nchw(g, n, x, "an input");
  require_nchw(g, n, dy, "dy");
  int64_t groups = n->attr.groups;
  Node w = {0};
  w.shape.rank = 4;
  w.shape.d[0] = (Dim){dy->shape.d[1].n, -1};
  w.shape.d[1] = (Dim){groups > 0 ? x->shape.d[1].n / groups : 0, -1};
  w.shape.d[2] = (Dim){n->attr.kernel[0], -1};
  w.shape.d[3] = (Dim){n->attr.kernel[1], -1};
  Shape fwd = conv_out(g, n, x, &w);
  check_adjoint_output(g, n, &fwd, dy);
  n->dtype = x->dtype;
  n->shape = w.shape;
}

static Shape pool_out(Graph *g, Node *n, const Node *x) {
  require_nchw(g, n, x, "an input");
  Shape r = x->shape;
  r.d[2] = (Dim){window_out(g, n, &x->shape, 0), -1};
  r.d[3] = (Dim){window_out(g, n, &x->shape, 1), -1};
  return r;
}

static void rule_pool(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0);
  require_float(g, n, 0);
  /* Every window must hold at least one element of the input: no side padded by more than
   * the window's span less one (PyTorch asks for at most half the kernel; ONNX's ceil_mode and
   * asymmetric pads need the looser bound). */
  for (int a = 0; a < 2; a++) {
    int64_t span = n->attr.dilation[a] * (n->attr.kernel[a] - 1);
    if (n->op == OP_AVGPOOL2D || n->op == OP_AVGPOOL2D_GRAD)
      span = n->attr.kernel[a] - 1;
    if (n->attr.pad[2 * a] > span || n->attr.pad[2 * a + 1] > span)
      kiln_fail(n->loc, "%s: padding [%lld, %lld, %lld, %lld] leaves windows of the kernel "
                "[%lld, %lld] without an input element (at most dilation·(kernel − 1) per side)",
                op_names[n->op], (long long)n->attr.pad[0], (long long)n->attr.pad[1],
                (long long)n->attr.pad[2], (long long)n->attr.pad[3],
                (long long)n->attr.kernel[0], (long long)n->attr.kernel[1]);
  }
  n->dtype = x->dtype;
  n->shape = pool_out(g, n, x);
}

static void rule_maxpool_pick(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0), *t = in_node(g, n, 1);
  require_same_dtype(g, n);
  char s1[96], s2[96];
  if (!shape_eq(&x->shape, &t->shape))
    kiln_fail(n->loc, "maxpool2d_pick: t has shape %s but x has shape %s", sh(g, &t->shape, s1),
              sh(g, &x->shape, s2));
  rule_pool(g, n);
}

static void rule_maxpool_grad(Graph *g, Node *n) {
  Node *x = in_node(g, n, 0), *dy = in_node(g, n, 1);
  require_same_dtype(g, n);
  Shape fwd = pool_out(g, n, x);
  check_adjoint_output(g, n, &fwd, dy);
  n->dtype = x->dtype;
  n->shape = x->shape;
}

static void rule_avgpool_grad(Graph *g, Node *n) {
  Node *dy = in_node(g, n, 0);
  require_float(g, n, 0);
  require_nchw(g, n, dy, "dy");
  Node x = {0};
  x.shape = input_like(dy, dy->shape.d[1].n, n->attr.in_size);
  Shape fwd = pool_out(g, n, &x);
  check_adjoint_output(g, n, &fwd, dy);
  n->dtype = dy->dtype;
  n->shape = x.shape;
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
    [OP_SIGMOID] = rule_unary,      [OP_TANH] = rule_unary,     [OP_LEAKY_RELU] = rule_unary,
    [OP_SIN] = rule_unary,          [OP_COS] = rule_unary,      [OP_ATAN] = rule_unary,
    [OP_ERF] = rule_unary,          [OP_SIGN] = rule_unary,     [OP_SOFTPLUS] = rule_unary,
    [OP_MAXIMUM] = rule_binary,
    [OP_ONE_HOT] = rule_one_hot,    [OP_RANDN] = rule_randn,    [OP_ALLREDUCE] = rule_unary,    [OP_GATHER] = rule_gather,  [OP_GATHER_GRAD] = rule_gather_grad,
    [OP_LEAKY_RELU_GRAD] = rule_relu_grad, [OP_SOFTMAX] = rule_axis, [OP_LOG_SOFTMAX] = rule_axis,
    [OP_BCE_LOGITS] = rule_binary,  [OP_DROPOUT] = rule_dropout, [OP_TRANSPOSE] = rule_transpose,
    [OP_CONCAT] = rule_concat,      [OP_SLICE] = rule_slice,    [OP_CONV2D] = rule_conv2d,
    [OP_CONV2D_BWD_DATA] = rule_conv2d_bwd_data, [OP_CONV2D_BWD_FILTER] = rule_conv2d_bwd_filter,
    [OP_MAXPOOL2D] = rule_pool,     [OP_MAXPOOL2D_GRAD] = rule_maxpool_grad,
    [OP_MAXPOOL2D_PICK] = rule_maxpool_pick,
    [OP_AVGPOOL2D] = rule_pool,     [OP_AVGPOOL2D_GRAD] = rule_avgpool_grad,
};

void shape_infer(Graph *g, Node *n) {
  if (!shape_rules[n->op]) kiln_bug(__FILE__, __LINE__, op_names[n->op]);
  shape_rules[n->op](g, n);
}

/* ---- FLOPs: multiply-adds count 2, everything elementwise 1 ---- */

static double numel_of(const Graph *g, int id, const int64_t *sv) {
  return (double)shape_numel(&ir_at(g, id)->shape, sv);
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
  const Node *a = ir_at(g, n->in[0]);
  double k = (double)dim_value(a->shape.d[n->attr.trans_a ? 0 : 1], sv);
  return 2.0 * k * numel_of(g, n->id, sv);
}

/* log-sum-exp per row (max, exp, sum, log) plus the pick: about 4 per logit. */
static double flops_xent(const Graph *g, const Node *n, const int64_t *sv) {
  return 4.0 * numel_of(g, n->in[0], sv);
}


/* A convolution's multiply-adds: every output element sums C/groups * kh * kw products. Its two
 * adjoints do the same work. */
static double flops_conv(const Graph *g, const Node *n, const int64_t *sv) {
  const Node *out = n->op == OP_CONV2D ? n : ir_at(g, n->op == OP_CONV2D_BWD_DATA ? n->in[0] : n->in[1]);
  const Node *x = n->op == OP_CONV2D_BWD_DATA ? n : ir_at(g, n->in[0]);
  double per = (double)(x->shape.d[1].n / (n->attr.groups ? n->attr.groups : 1)) *
               (double)(n->attr.kernel[0] * n->attr.kernel[1]);
  return 2.0 * per * (double)shape_numel(&out->shape, sv);
}

static double flops_pool(const Graph *g, const Node *n, const int64_t *sv) {
  const Node *out = n->op == OP_MAXPOOL2D || n->op == OP_AVGPOOL2D || n->op == OP_MAXPOOL2D_PICK ? n
                    : n->op == OP_MAXPOOL2D_GRAD ? ir_at(g, n->in[1]) : ir_at(g, n->in[0]);
  return (double)(n->attr.kernel[0] * n->attr.kernel[1]) * (double)shape_numel(&out->shape, sv);
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
    [OP_SIGMOID] = flops_out,  [OP_TANH] = flops_out,    [OP_LEAKY_RELU] = flops_out,
    [OP_SIN] = flops_out,      [OP_COS] = flops_out,     [OP_ATAN] = flops_out,
    [OP_ERF] = flops_out,      [OP_SIGN] = flops_out,    [OP_SOFTPLUS] = flops_out,
    [OP_MAXIMUM] = flops_out,
    [OP_ONE_HOT] = flops_none, [OP_RANDN] = flops_out, [OP_ALLREDUCE] = flops_out, [OP_GATHER] = flops_none, [OP_GATHER_GRAD] = flops_out,
    [OP_LEAKY_RELU_GRAD] = flops_out, [OP_SOFTMAX] = flops_xent, [OP_LOG_SOFTMAX] = flops_xent,
    [OP_BCE_LOGITS] = flops_out, [OP_DROPOUT] = flops_out, [OP_TRANSPOSE] = flops_none,
    [OP_CONCAT] = flops_none,  [OP_SLICE] = flops_none,  [OP_CONV2D] = flops_conv,
    [OP_CONV2D_BWD_DATA] = flops_conv, [OP_CONV2D_BWD_FILTER] = flops_conv,
    [OP_MAXPOOL2D] = flops_pool, [OP_MAXPOOL2D_GRAD] = flops_pool, [OP_MAXPOOL2D_PICK] = flops_pool,
    [OP_AVGPOOL2D] = flops_pool, [OP_AVGPOOL2D_GRAD] = flops_pool,
};

double shape_flops(const Graph *g, const Node *n, const int64_t *symvals) {
  return flop_rules[n->op](g, n, symvals);
}
