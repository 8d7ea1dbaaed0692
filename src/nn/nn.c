/*
 * nn.c — the layer library: each layer or composite op as primitive nodes built through the ir_*
 * builders, from typed arguments (nn.h says what each one means).
 *
 * Nothing here reads model text: the DSL's lowering checks and converts its call arguments and
 * calls these functions, and any other front end can do the same. What a layer builds, in which
 * order, and the names, initialisers and fans of its leaves are what checkpoints, the generated
 * code and PyTorch compatibility depend on, so they are written once, here.
 */
#include <math.h>
#include <string.h>

#include "nn/nn.h"

static const char *shape_text(Graph *g, const Shape *s, char *buf, size_t n) {
  return shape_str(g, s, buf, n);
}

static unsigned all_axes(int rank) { return rank ? (1u << rank) - 1 : 0; }

/* ---- leaves ---- */

void nn_fans(Graph *g, const char *name, const Shape *s, Loc loc, int64_t *fan_in,
             int64_t *fan_out) {
  ir_check_leaf_shape(g, name, s, loc);
  if (s->rank == 0) {
    *fan_in = *fan_out = 1;
  } else if (s->rank == 1) {
    *fan_in = *fan_out = s->d[0].n;
  } else {
    int64_t rf = 1;
    for (int i = 2; i < s->rank; i++)
      rf *= s->d[i].n;
    *fan_in = s->d[1].n * rf;
    *fan_out = s->d[0].n * rf;
  }
}

int nn_param(Graph *g, NnMode mode, const char *name, DType dt, Shape s, NnInit init,
             int64_t fan_in, int64_t fan_out, Loc loc) {
  if (mode == NN_EVAL) {
    int id = ir_find_leaf(g, name);
    KILN_ASSERT(id >= 0 && ir_at(g, id)->op == OP_PARAM);
    return id;
  }
  if (ir_find_leaf(g, name) >= 0)
    kiln_fail(loc, "parameter '%s' is defined twice", name);
  int id = ir_leaf(g, OP_PARAM, ROLE_PARAM, name, dt, s, loc);
  Node *n = ir_at(g, id);
  n->leaf.init = init.kind == NN_INIT_DEFAULT ? KILN_INIT_TORCH_DEFAULT : init.kind;
  n->leaf.init_a = init.a;
  n->leaf.fan_in = fan_in;
  n->leaf.fan_out = fan_out;
  return id;
}

int nn_state(Graph *g, NnMode mode, const char *name, DType dt, Shape s, int init, Loc loc) {
  if (mode == NN_EVAL) {
    int id = ir_find_leaf(g, name);
    KILN_ASSERT(id >= 0 && ir_at(g, id)->op == OP_STATE);
    return id;
  }
  int id = ir_leaf(g, OP_STATE, ROLE_STATE, name, dt, s, loc);
  ir_at(g, id)->leaf.init = init;
  return id;
}

/* "<layer>.<leaf>", in the graph's pool (ir_leaf copies it; a lookup needs it only briefly). */
static const char *leaf_name(Graph *g, const NnLayer *l, const char *leaf) {
  return pool_printf(g->pool, "%s.%s", l->name, leaf);
}

/* A layer's weight and bias as linear and conv2d make them: the weight with the given scheme,
 * the bias with PyTorch's default unless a scheme is given, which zeroes it. */
static int layer_weight(Graph *g, const NnLayer *l, DType dt, Shape s, NnInit init,
                        int64_t fan_in, int64_t fan_out) {
  int w = nn_param(g, l->mode, leaf_name(g, l, "weight"), dt, s, init, fan_in, fan_out,
                   l->name_loc);
  ir_at(g, w)->leaf.weight = true;
  return w;
}

static int layer_bias_shaped(Graph *g, const NnLayer *l, DType dt, Shape bs, NnInit init,
                             int64_t fan_in, int64_t fan_out) {
  NnInit bi = init.kind == NN_INIT_DEFAULT ? init : (NnInit){KILN_INIT_ZEROS, 0};
  return nn_param(g, l->mode, leaf_name(g, l, "bias"), dt, bs, bi, fan_in, fan_out, l->name_loc);
}

static int layer_bias(Graph *g, const NnLayer *l, DType dt, int64_t n, NnInit init,
                      int64_t fan_in, int64_t fan_out) {
  return layer_bias_shaped(g, l, dt, (Shape){.rank = 1, .d = {{n, -1}}}, init, fan_in, fan_out);
}

/* ---- input checks ---- */

void nn_check_image(Graph *g, int x, const char *fn, Loc loc) {
  const Node *xn = ir_at(g, x);
  const Shape *s = &xn->shape;
  char buf[256];
  if (s->rank != 4 || s->d[1].sym >= 0 || s->d[2].sym >= 0 || s->d[3].sym >= 0)
    kiln_fail(loc, "%s needs an input of shape [N, C, H, W], got %s", fn,
              shape_text(g, s, buf, sizeof buf));
  if (!dtype_is_float(xn->dtype))
    kiln_fail(loc, "%s needs a floating-point input, got %s", fn, dtype_name(xn->dtype));
}

void nn_check_linear(Graph *g, int x, Loc loc) {
  const Node *xn = ir_at(g, x);
  const Shape *xs = &xn->shape;
  char buf[256];
  if (xs->rank != 2)
    kiln_fail(loc, "linear needs an input of shape [N, in], got %s",
              shape_text(g, xs, buf, sizeof buf));
  if (!dtype_is_float(xn->dtype))
    kiln_fail(loc, "linear needs a floating-point input, got %s", dtype_name(xn->dtype));
  if (xs->d[1].sym >= 0)
    kiln_fail(loc, "linear: the input's feature dimension must be a number, got %s",
              shape_text(g, xs, buf, sizeof buf));
}

void nn_check_batchnorm(Graph *g, int x, Loc loc) {
  const Node *xn = ir_at(g, x);
  const Shape *xs = &xn->shape;
  char buf[256];
  if ((xs->rank != 2 && xs->rank != 4) || xs->d[1].sym >= 0)
    kiln_fail(loc, "batchnorm needs an input of shape [N, C, H, W] or [N, C], got %s",
              shape_text(g, xs, buf, sizeof buf));
  if (!dtype_is_float(xn->dtype))
    kiln_fail(loc, "batchnorm needs a floating-point input, got %s", dtype_name(xn->dtype));
}

void nn_check_layernorm(Graph *g, int x, Loc loc) {
  const Node *xn = ir_at(g, x);
  const Shape *xs = &xn->shape;
  char buf[256];
  bool fixed = xs->rank >= 2;
  for (int i = 1; i < xs->rank; i++)
    fixed &= xs->d[i].sym < 0;
  if (!fixed)
    kiln_fail(loc, "layernorm needs an input [N, ...] with at least 2 axes and numbers after the "
              "first, got %s", shape_text(g, xs, buf, sizeof buf));
  if (!dtype_is_float(xn->dtype))
    kiln_fail(loc, "layernorm needs a floating-point input, got %s", dtype_name(xn->dtype));
}

void nn_check_groups(Graph *g, int x, int64_t out, int64_t groups, Loc loc) {
  const Shape *xs = &ir_at(g, x)->shape;
  int64_t c = xs->d[1].n;
  char buf[256];
  if (groups < 1 || c % groups || out % groups)
    kiln_fail(loc, "conv2d: %lld input channels (of %s) and %lld output channels do not both "
              "divide into %lld groups", (long long)c, shape_text(g, xs, buf, sizeof buf),
              (long long)out, (long long)groups);
}

/* ---- layers with parameters ---- */

/* Notes a layer's weight and output (evaluation pass only, so each layer once), for init = lsuv;
 * returns y. */
static int record_layer(Graph *g, const NnLayer *l, int w, int y) {
  if (l->mode != NN_EVAL)
    return y;
  g->layer_weight = kiln_realloc(g->layer_weight, (size_t)(g->nlayers + 1) * sizeof(int));
  g->layer_output = kiln_realloc(g->layer_output, (size_t)(g->nlayers + 1) * sizeof(int));
  g->layer_weight[g->nlayers] = w;
  g->layer_output[g->nlayers++] = y;
  return y;
}

int nn_linear(Graph *g, const NnLayer *l, int x, const NnLinear *o) {
  nn_check_linear(g, x, l->loc);
  DType dt = ir_at(g, x)->dtype;
  int64_t in = ir_at(g, x)->shape.d[1].n;
  Shape ws = {.rank = 2, .d = {{o->out, -1}, {in, -1}}};
  int w = layer_weight(g, l, dt, ws, o->init, in, o->out);
  int y = ir_matmul(g, x, w, false, true, l->loc);
  if (o->bias)
    y = ir_binary(g, OP_ADD, y, layer_bias(g, l, dt, o->out, o->init, in, o->out), l->loc);
  return record_layer(g, l, w, y);
}

/* x with one more axis of 1 inserted at `at` (conv1d and the 1-D pools run as 2-D ones). */
static int with_unit_axis(Graph *g, int x, int at, Loc loc) {
  Shape s = ir_at(g, x)->shape;
  for (int k = s.rank; k > at; k--)
    s.d[k] = s.d[k - 1];
  s.d[at] = (Dim){1, -1};
  s.rank++;
  return ir_reshape(g, x, s, loc);
}

static int without_axis(Graph *g, int x, int at, Loc loc) {
  Shape s = ir_at(g, x)->shape;
  for (int k = at; k + 1 < s.rank; k++)
    s.d[k] = s.d[k + 1];
  s.rank--;
  return ir_reshape(g, x, s, loc);
}

static void check_sequence(Graph *g, int x, const char *fn, Loc loc) {
  const Node *xn = ir_at(g, x);
  char buf[256];
  if (xn->shape.rank != 3 || xn->shape.d[1].sym >= 0 || xn->shape.d[2].sym >= 0)
    kiln_fail(loc, "%s needs an input of shape [N, C, L], got %s", fn,
              shape_text(g, &xn->shape, buf, sizeof buf));
  if (!dtype_is_float(xn->dtype))
    kiln_fail(loc, "%s needs a floating-point input, got %s", fn, dtype_name(xn->dtype));
}

static int conv_layer(Graph *g, const NnLayer *l, int x, const NnConv2d *o, int wrank);

int nn_conv2d(Graph *g, const NnLayer *l, int x, const NnConv2d *o) {
  nn_check_image(g, x, "conv2d", l->loc);
  return conv_layer(g, l, x, o, 4);
}

/* x [N, C, L] as [N, C, 1, L] through conv2d with kernel [1, k]; the weight keeps PyTorch's
 * nn.Conv1d layout [O, C/groups, k] and is seen as [O, C/groups, 1, k]. */
int nn_conv1d(Graph *g, const NnLayer *l, int x, const NnConv2d *o) {
  check_sequence(g, x, "conv1d", l->loc);
  int y = conv_layer(g, l, with_unit_axis(g, x, 2, l->loc), o, 3);
  return without_axis(g, y, 2, l->loc);
}

int nn_maxpool1d(Graph *g, int x, const NnPool2d *o, Loc loc) {
  check_sequence(g, x, "maxpool1d", loc);
  return without_axis(g, nn_maxpool2d(g, with_unit_axis(g, x, 2, loc), o, loc), 2, loc);
}

int nn_avgpool1d(Graph *g, int x, const NnPool2d *o, Loc loc) {
  check_sequence(g, x, "avgpool1d", loc);
  return without_axis(g, nn_avgpool2d(g, with_unit_axis(g, x, 2, loc), o, loc), 2, loc);
}

/* A convolution layer on a 4-D x whose weight parameter has rank wrank: 4 ([O, C/groups, kh,
 * kw]) or 3 ([O, C/groups, kw], kh being 1). */
static int conv_layer(Graph *g, const NnLayer *l, int x, const NnConv2d *o, int wrank) {
  nn_check_groups(g, x, o->out, o->groups, l->loc);
  DType dt = ir_at(g, x)->dtype;
  int64_t c = ir_at(g, x)->shape.d[1].n;
  Attr a;
  memset(&a, 0, sizeof a);
  memcpy(a.kernel, o->kernel, sizeof a.kernel);
  memcpy(a.stride, o->stride, sizeof a.stride);
  memcpy(a.dilation, o->dilation, sizeof a.dilation);
  memcpy(a.pad, o->pad, sizeof a.pad);
  a.groups = o->groups;
  Shape ws = {.rank = 4,
              .d = {{o->out, -1}, {c / o->groups, -1}, {o->kernel[0], -1}, {o->kernel[1], -1}}};
  Shape own = ws;
  if (wrank == 3)
    own = (Shape){.rank = 3, .d = {ws.d[0], ws.d[1], ws.d[3]}};
  int64_t fan_in, fan_out;
  nn_fans(g, leaf_name(g, l, "weight"), &own, l->name_loc, &fan_in, &fan_out);
  int w = layer_weight(g, l, dt, own, o->init, fan_in, fan_out);
  int in[2] = {x, wrank == 3 ? ir_reshape(g, w, ws, l->loc) : w};
  int y = ir_node(g, OP_CONV2D, 2, in, &a, l->loc);
  if (o->bias && o->untied) {
    /* one bias per output channel and location: [O, Ho, Wo], or [O, Lo] for conv1d */
    Shape ys = ir_at(g, y)->shape, b3 = {.rank = 3, .d = {ys.d[1], ys.d[2], ys.d[3]}};
    Shape bown = wrank == 3 ? (Shape){.rank = 2, .d = {ys.d[1], ys.d[3]}} : b3;
    int b = layer_bias_shaped(g, l, dt, bown, o->init, fan_in, fan_out);
    y = ir_binary(g, OP_ADD, y, wrank == 3 ? ir_reshape(g, b, b3, l->loc) : b, l->loc);
    return record_layer(g, l, w, y);
  }
  if (o->bias) {
    int b = layer_bias(g, l, dt, o->out, o->init, fan_in, fan_out);
    Shape b3 = {.rank = 3, .d = {{o->out, -1}, {1, -1}, {1, -1}}};
    y = ir_binary(g, OP_ADD, y, ir_reshape(g, b, b3, l->loc), l->loc);
  }
  return record_layer(g, l, w, y);
}

/* w mirrored along one axis: its slices of width 1 joined in reverse order (copies, so exact for
 * every value, and the gradient flows back through the slices). */
static int reversed(Graph *g, int w, int axis, Loc loc) {
  int64_t n = ir_at(g, w)->shape.d[axis].n;
  int r = -1;
  for (int64_t i = n - 1; i >= 0; i--) {
    Attr a;
    memset(&a, 0, sizeof a);
    a.axis = axis;
    a.start = i;
    a.len = 1;
    int s = n == 1 ? w : ir_node(g, OP_SLICE, 1, &w, &a, loc);
    if (r < 0) {
      r = s;
    } else {
      int in[2] = {r, s};
      memset(&a, 0, sizeof a);
      a.axis = axis;
      r = ir_node(g, OP_CONCAT, 2, in, &a, loc);
    }
  }
  return r;
}

int nn_conv(Graph *g, int x, int w, const NnConv2d *o, bool flip, Loc loc) {
  const Node *wn = ir_at(g, w);
  if (wn->shape.rank != 4 || wn->shape.d[0].sym >= 0) {
    char s[96];
    kiln_fail(loc, "the kernel must have shape [out, C/groups, kh, kw], got %s",
              shape_str(g, &wn->shape, s, sizeof s));
  }
  nn_check_groups(g, x, wn->shape.d[0].n, o->groups, loc);
  if (flip)
    w = reversed(g, reversed(g, w, 2, loc), 3, loc);
  Attr a;
  memset(&a, 0, sizeof a);
  a.kernel[0] = wn->shape.d[2].n;
  a.kernel[1] = wn->shape.d[3].n;
  memcpy(a.stride, o->stride, sizeof a.stride);
  memcpy(a.dilation, o->dilation, sizeof a.dilation);
  memcpy(a.pad, o->pad, sizeof a.pad);
  a.groups = o->groups;
  int in[2] = {x, w};
  return ir_node(g, OP_CONV2D, 2, in, &a, loc);
}

void nn_pad_mode(NnPadMode m, const int64_t kernel[2], const int64_t dilation[2], int64_t pad[4]) {
  for (int ax = 0; ax < 2; ax++) {
    int64_t total = dilation[ax] * (kernel[ax] - 1);
    int64_t before = m == NN_PAD_SAME ? total / 2 : m == NN_PAD_FULL ? total : 0;
    int64_t after = m == NN_PAD_SAME ? total - before : before;
    pad[2 * ax] = before;
    pad[2 * ax + 1] = after;
  }
}

/* (x - mean) / sqrt(var + eps) over axes, with the biased variance mean((x - mean)^2): the
 * normalisation shared by batch (training mode), layer and instance norm. *mu and *var receive
 * the statistics (keepdims). */
static int normalize(Graph *g, int x, unsigned axes, double eps, Loc loc, int *mu, int *var) {
  DType dt = ir_at(g, x)->dtype;
  *mu = ir_reduce(g, OP_MEAN, x, axes, true, loc);
  int d = ir_binary(g, OP_SUB, x, *mu, loc);
  *var = ir_reduce(g, OP_MEAN, ir_binary(g, OP_MUL, d, d, loc), axes, true, loc);
  int sd = ir_unary(g, OP_SQRT, ir_binary(g, OP_ADD, *var, ir_const(g, eps, dt, loc), loc), loc);
  return ir_binary(g, OP_DIV, d, sd, loc);
}

/* normalize's batch statistics over every process of a data-parallel run: sums and counts
 * summed over the processes (allreduce), so the result is the one a single process would get on
 * the whole batch and does not depend on how it is split. *n receives the global count. */
static int normalize_over_processes(Graph *g, int x, unsigned axes, double eps, Loc loc, int *mu,
                                    int *var, int *n) {
  DType dt = ir_at(g, x)->dtype;
  /* A shift constant along the reduced axes (a convolution's bias) cancels in x − μ and σ²: the
   * statistics are taken without it, so its gradient is exactly 0, as opt.c's rewrites make it
   * in one process (a sum over processes hides the shift from them). */
  int shift = -1, base = x;
  const Node *xn = ir_at(g, x);
  for (int k = 0; k < 2 && xn->op == OP_ADD && shift < 0; k++) {
    const Node *c = ir_at(g, xn->in[k]), *b = ir_at(g, xn->in[1 - k]);
    bool constant = shape_eq(&b->shape, &xn->shape);
    for (int a = 0; a < xn->shape.rank && constant; a++) {
      int ca = a - (xn->shape.rank - c->shape.rank);
      if ((axes >> a & 1u) && ca >= 0 && !(c->shape.d[ca].n == 1 && c->shape.d[ca].sym < 0))
        constant = false;
    }
    if (constant)
      shift = c->id, base = b->id;
  }
  *n = ir_unary(g, OP_ALLREDUCE, ir_reduce(g, OP_NUMEL, x, axes, false, loc), loc);
  int sum = ir_unary(g, OP_ALLREDUCE, ir_reduce(g, OP_SUM, base, axes, true, loc), loc);
  int mu_base = ir_binary(g, OP_DIV, sum, *n, loc);
  *mu = shift < 0 ? mu_base : ir_binary(g, OP_ADD, mu_base, shift, loc);
  int d = ir_binary(g, OP_SUB, base, mu_base, loc);
  int sq = ir_reduce(g, OP_SUM, ir_binary(g, OP_MUL, d, d, loc), axes, true, loc);
  *var = ir_binary(g, OP_DIV, ir_unary(g, OP_ALLREDUCE, sq, loc), *n, loc);
  int sd = ir_unary(g, OP_SQRT, ir_binary(g, OP_ADD, *var, ir_const(g, eps, dt, loc), loc), loc);
  return ir_binary(g, OP_DIV, d, sd, loc);
}

/* (1 - m) * running + m * batch: PyTorch's running-statistics update. */
static int running_update(Graph *g, int running, int batch, double m, Loc loc) {
  DType dt = ir_at(g, running)->dtype;
  int keep = ir_binary(g, OP_MUL, ir_const(g, 1 - m, dt, loc), running, loc);
  return ir_binary(g, OP_ADD, keep, ir_binary(g, OP_MUL, ir_const(g, m, dt, loc), batch, loc), loc);
}

int nn_batchnorm(Graph *g, const NnLayer *l, int x, const NnBatchnorm *o) {
  nn_check_batchnorm(g, x, l->loc);
  KILN_ASSERT(o->eps > 0 && o->momentum >= 0 && o->momentum <= 1);
  Shape xs = ir_at(g, x)->shape;
  DType dt = ir_at(g, x)->dtype;
  int64_t c = xs.d[1].n;
  Loc at = l->name_loc, loc = l->loc;
  double m = o->momentum;
  Shape cs = {.rank = 1, .d = {{c, -1}}};
  Shape bc = xs.rank == 4 ? (Shape){.rank = 3, .d = {{c, -1}, {1, -1}, {1, -1}}} : cs;
  unsigned axes = xs.rank == 4 ? 1u | 4u | 8u : 1u;
  int gamma = -1, beta = -1;
  if (o->affine) {
    gamma = nn_param(g, l->mode, leaf_name(g, l, "weight"), dt, cs, (NnInit){KILN_INIT_ONES, 0},
                     c, c, at);
    beta = nn_param(g, l->mode, leaf_name(g, l, "bias"), dt, cs, (NnInit){KILN_INIT_ZEROS, 0},
                    c, c, at);
  }
  int rm = nn_state(g, l->mode, leaf_name(g, l, "running_mean"), dt, cs, KILN_INIT_ZEROS, at);
  int rv = nn_state(g, l->mode, leaf_name(g, l, "running_var"), dt, cs, KILN_INIT_ONES, at);
  int nbt = nn_state(g, l->mode, leaf_name(g, l, "num_batches_tracked"), DT_F64, (Shape){0},
                     KILN_INIT_ZEROS, at);
  int y;
  if (l->mode == NN_TRAIN) {
    int mu, var, n;
    if (g->data_parallel) {
      y = normalize_over_processes(g, x, axes, o->eps, loc, &mu, &var, &n);
    } else {
      y = normalize(g, x, axes, o->eps, loc, &mu, &var);
      n = ir_reduce(g, OP_NUMEL, x, axes, false, loc);
    }
    int n1 = ir_binary(g, OP_SUB, n, ir_const(g, 1, dt, loc), loc);
    int unbiased = ir_binary(g, OP_MUL, ir_reshape(g, var, cs, loc),
                             ir_binary(g, OP_DIV, n, n1, loc), loc);
    ir_add_update(g, ENTRY_TRAIN, rm, running_update(g, rm, ir_reshape(g, mu, cs, loc), m, loc));
    ir_add_update(g, ENTRY_TRAIN, rv, running_update(g, rv, unbiased, m, loc));
    ir_add_update(g, ENTRY_TRAIN, nbt,
                  ir_binary(g, OP_ADD, nbt, ir_const(g, 1, DT_F64, loc), loc));
  } else {
    int d = ir_binary(g, OP_SUB, x, ir_reshape(g, rm, bc, loc), loc);
    int v = ir_binary(g, OP_ADD, ir_reshape(g, rv, bc, loc), ir_const(g, o->eps, dt, loc), loc);
    y = ir_binary(g, OP_DIV, d, ir_unary(g, OP_SQRT, v, loc), loc);
  }
  if (o->affine) {
    y = ir_binary(g, OP_MUL, y, ir_reshape(g, gamma, bc, loc), loc);
    y = ir_binary(g, OP_ADD, y, ir_reshape(g, beta, bc, loc), loc);
  }
  return y;
}

int nn_layernorm(Graph *g, const NnLayer *l, int x, double eps, bool affine) {
  nn_check_layernorm(g, x, l->loc);
  KILN_ASSERT(eps > 0);
  Shape xs = ir_at(g, x)->shape;
  DType dt = ir_at(g, x)->dtype;
  int mu, var;
  int y = normalize(g, x, all_axes(xs.rank) & ~1u, eps, l->loc, &mu, &var);
  if (affine) {
    Shape ps = {.rank = xs.rank - 1};
    for (int i = 1; i < xs.rank; i++)
      ps.d[i - 1] = xs.d[i];
    int64_t numel = shape_numel(&ps, NULL);
    int w = nn_param(g, l->mode, leaf_name(g, l, "weight"), dt, ps, (NnInit){KILN_INIT_ONES, 0},
                     numel, numel, l->name_loc);
    int b = nn_param(g, l->mode, leaf_name(g, l, "bias"), dt, ps, (NnInit){KILN_INIT_ZEROS, 0},
                     numel, numel, l->name_loc);
    y = ir_binary(g, OP_ADD, ir_binary(g, OP_MUL, y, w, l->loc), b, l->loc);
  }
  return y;
}

int nn_groupnorm(Graph *g, const NnLayer *l, int x, int64_t groups, double eps, bool affine) {
  const Node *xn = ir_at(g, x);
  Shape xs = xn->shape;
  char buf[256];
  if (xs.rank < 2 || xs.rank >= IR_MAX_RANK || xs.d[1].sym >= 0 || !dtype_is_float(xn->dtype))
    kiln_fail(l->loc, "groupnorm needs a floating-point input of shape [N, C, ...], got %s",
              shape_text(g, &xs, buf, sizeof buf));
  int64_t c = xs.d[1].n;
  if (groups < 1 || c % groups)
    kiln_fail(l->loc, "groupnorm: %lld groups do not divide the %lld channels of %s",
              (long long)groups, (long long)c, shape_text(g, &xs, buf, sizeof buf));
  KILN_ASSERT(eps > 0);
  DType dt = xn->dtype;
  Shape grouped = xs;
  for (int k = grouped.rank; k > 2; k--)
    grouped.d[k] = grouped.d[k - 1];
  grouped.d[1] = (Dim){groups, -1};
  grouped.d[2] = (Dim){c / groups, -1};
  grouped.rank++;
  int mu, var;
  int y = normalize(g, ir_reshape(g, x, grouped, l->loc), all_axes(grouped.rank) & ~3u, eps,
                    l->loc, &mu, &var);
  y = ir_reshape(g, y, xs, l->loc);
  if (affine) {
    Shape ps = {.rank = 1, .d = {{c, -1}}}, per = {.rank = xs.rank - 1};
    for (int k = 0; k < per.rank; k++)
      per.d[k] = (Dim){k == 0 ? c : 1, -1};
    int w = nn_param(g, l->mode, leaf_name(g, l, "weight"), dt, ps, (NnInit){KILN_INIT_ONES, 0},
                     c, c, l->name_loc);
    int b = nn_param(g, l->mode, leaf_name(g, l, "bias"), dt, ps, (NnInit){KILN_INIT_ZEROS, 0},
                     c, c, l->name_loc);
    y = ir_binary(g, OP_ADD, ir_binary(g, OP_MUL, y, ir_reshape(g, w, per, l->loc), l->loc),
                  ir_reshape(g, b, per, l->loc), l->loc);
  }
  return y;
}

/* ---- layers without parameters ---- */

int nn_instancenorm(Graph *g, int x, double eps, Loc loc) {
  nn_check_image(g, x, "instancenorm", loc);
  KILN_ASSERT(eps > 0);
  int mu, var;
  return normalize(g, x, 4u | 8u, eps, loc, &mu, &var);
}

/* A stable 32-bit hash of a dropout site's name (FNV-1a): the site's salt. */
static uint32_t site_salt(const char *name) {
  uint32_t h = 2166136261u;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    h = (h ^ *p) * 16777619u;
  return h;
}

/* The model's one dropout step counter (an f64 scalar, role OPT, seeded from the run seed),
 * advanced by 1 per training step: made at the first dropout site. */
static int dropout_counter(Graph *g, Loc loc) {
  int id = ir_find_leaf(g, "dropout.step");
  if (id < 0) {
    ir_claim_name(g, "dropout.step", "dropout's step counter");
    id = ir_leaf(g, OP_STATE, ROLE_OPT, "dropout.step", DT_F64, (Shape){0}, loc);
    ir_at(g, id)->leaf.init = KILN_INIT_SEED;
    ir_add_update(g, ENTRY_TRAIN, id, ir_binary(g, OP_ADD, id, ir_const(g, 1, DT_F64, loc), loc));
  }
  if (!g->data_parallel)
    return id;
  /* Each process draws its own masks for its own examples: the step plus the process's rank
   * (dp.rank, which the trainer sets) times 2^32, so rank 0 draws what one process would. */
  int rank = ir_find_leaf(g, "dp.rank");
  if (rank < 0) {
    ir_claim_name(g, "dp.rank", "the process's rank in a data-parallel run");
    rank = ir_leaf(g, OP_STATE, ROLE_HYPER, "dp.rank", DT_F64, (Shape){0}, loc);
    ir_at(g, rank)->leaf.init = KILN_INIT_ZEROS;
  }
  return ir_binary(g, OP_ADD, id,
                   ir_binary(g, OP_MUL, rank, ir_const(g, 4294967296.0, DT_F64, loc), loc), loc);
}

int nn_dropout(Graph *g, const NnLayer *l, int x, double p) {
  KILN_ASSERT(p >= 0 && p < 1);
  if (l->mode == NN_EVAL || p == 0)
    return x;
  Attr a;
  memset(&a, 0, sizeof a);
  a.value = p;
  a.salt = site_salt(l->name);
  int in[2] = {x, dropout_counter(g, l->loc)};
  return ir_node(g, OP_DROPOUT, 2, in, &a, l->loc);
}

/* x + std·ε, ε ~ N(0, 1) per element. Training draws afresh at every step (dropout's step
 * counter); evaluation draws the same ε every time (counter 0, a salt of its own), so every
 * evaluation sees the same noisy inputs and its figures can be compared across epochs. */
int nn_noise(Graph *g, const NnLayer *l, int x, double std) {
  KILN_ASSERT(std >= 0);
  Attr a;
  memset(&a, 0, sizeof a);
  a.salt = site_salt(l->name);
  int counter;
  if (l->mode == NN_EVAL) {
    a.salt ^= 0x9E3779B9u;
    counter = ir_const(g, 0, DT_F64, l->loc);
  } else {
    counter = dropout_counter(g, l->loc);
  }
  int in[2] = {x, counter};
  int eps = ir_node(g, OP_RANDN, 2, in, &a, l->loc);
  DType dt = ir_at(g, x)->dtype;
  return ir_binary(g, OP_ADD, x, ir_binary(g, OP_MUL, ir_const(g, std, dt, l->loc), eps, l->loc),
                   l->loc);
}

/* The attributes of a pooling window; what each pooling reads is set by its function. */
static Attr pool_attr(const NnPool2d *o) {
  Attr a;
  memset(&a, 0, sizeof a);
  memcpy(a.kernel, o->kernel, sizeof a.kernel);
  memcpy(a.stride, o->stride, sizeof a.stride);
  memcpy(a.pad, o->pad, sizeof a.pad);
  a.dilation[0] = a.dilation[1] = 1;
  return a;
}

int nn_maxpool2d(Graph *g, int x, const NnPool2d *o, Loc loc) {
  nn_check_image(g, x, "maxpool2d", loc);
  Attr a = pool_attr(o);
  memcpy(a.dilation, o->dilation, sizeof a.dilation);
  return ir_node(g, OP_MAXPOOL2D, 1, &x, &a, loc);
}

int nn_avgpool2d(Graph *g, int x, const NnPool2d *o, Loc loc) {
  nn_check_image(g, x, "avgpool2d", loc);
  Attr a = pool_attr(o);
  a.count_include_pad = o->count_include_pad;
  return ir_node(g, OP_AVGPOOL2D, 1, &x, &a, loc);
}

/* Composed as sqrt(relu(avgpool2d(x*x, count_include_pad=true)) * kh*kw): padding adds zeros to
 * the sum. The relu changes no value (the mean of squares is >= 0) but, like PyTorch's, its
 * gradient selects 0 where a window is all zero, so sqrt's infinite slope at 0 gives a zero
 * gradient there instead of NaN. */
int nn_l2pool2d(Graph *g, int x, const NnPool2d *o, Loc loc) {
  nn_check_image(g, x, "l2pool2d", loc);
  Attr a = pool_attr(o);
  a.count_include_pad = true;
  int sq = ir_binary(g, OP_MUL, x, x, loc);
  int avg = ir_unary(g, OP_RELU, ir_node(g, OP_AVGPOOL2D, 1, &sq, &a, loc), loc);
  int area = ir_const(g, (double)(a.kernel[0] * a.kernel[1]), ir_at(g, x)->dtype, loc);
  return ir_unary(g, OP_SQRT, ir_binary(g, OP_MUL, avg, area, loc), loc);
}

int nn_flatten(Graph *g, int x, Loc loc) {
  Shape s = ir_at(g, x)->shape;
  char buf[256];
  if (s.rank < 2)
    kiln_fail(loc, "flatten needs a tensor with at least 2 axes, got %s",
              shape_text(g, &s, buf, sizeof buf));
  /* The product of the trailing dimensions as coef * symbol^power. */
  int64_t coef = 1;
  int power = 0, sym = -1;
  for (int i = 1; i < s.rank; i++) {
    if (__builtin_mul_overflow(coef, s.d[i].n, &coef))
      kiln_fail(loc, "the tensor is too large");
    if (s.d[i].sym >= 0)
      power++, sym = s.d[i].sym;
  }
  if (power > 1)
    kiln_fail(loc, "flatten of %s would multiply the batch symbol by itself",
              shape_text(g, &s, buf, sizeof buf));
  /* Field by field into zeroed memory: the shape lands in the node's attributes, which
   * hash-consing compares bytewise, padding included. */
  Shape to;
  memset(&to, 0, sizeof to);
  to.rank = 2;
  to.d[0].n = s.d[0].n, to.d[0].sym = s.d[0].sym;
  to.d[1].n = coef, to.d[1].sym = sym;
  return ir_reshape(g, x, to, loc);
}

int nn_softmax(Graph *g, int x, int axis, bool log, Loc loc) {
  Attr a;
  memset(&a, 0, sizeof a);
  a.axis = axis;
  return ir_node(g, log ? OP_LOG_SOFTMAX : OP_SOFTMAX, 1, &x, &a, loc);
}

int nn_leaky_relu(Graph *g, int x, double slope, Loc loc) {
  Attr a;
  memset(&a, 0, sizeof a);
  a.value = slope;
  return ir_node(g, OP_LEAKY_RELU, 1, &x, &a, loc);
}

/* maximum(a, b) whose gradient at a tie goes `share` to a. */
static int maximum_sharing(Graph *g, int a, int b, double share, Loc loc) {
  Attr at;
  memset(&at, 0, sizeof at);
  at.value = share;
  int in[2] = {a, b};
  return ir_node(g, OP_MAXIMUM, 2, in, &at, loc);
}

int nn_maximum(Graph *g, int a, int b, Loc loc) { return maximum_sharing(g, a, b, 0.5, loc); }

/* -maximum(-a, -b): negation is exact, so this is the smaller of the two to the bit. */
int nn_minimum(Graph *g, int a, int b, Loc loc) {
  int na = ir_unary(g, OP_NEG, a, loc), nb = ir_unary(g, OP_NEG, b, loc);
  return ir_unary(g, OP_NEG, nn_maximum(g, na, nb, loc), loc);
}

/* x at a tie with either bound keeps the whole gradient (share 1 to x). An infinite bound is
 * no bound (clamp(x, min=0) has none above). */
int nn_clamp(Graph *g, int x, double lo, double hi, Loc loc) {
  DType dt = ir_at(g, x)->dtype;
  if (isfinite(lo))
    x = maximum_sharing(g, x, ir_const(g, lo, dt, loc), 1.0, loc);
  if (isfinite(hi)) {
    int top = maximum_sharing(g, ir_unary(g, OP_NEG, x, loc), ir_const(g, -hi, dt, loc), 1.0, loc);
    x = ir_unary(g, OP_NEG, top, loc);
  }
  return x;
}

/* x sign(x): exact (a product by 1, 0 or -1), and its gradient is sign(x), 0 at 0. */
int nn_abs(Graph *g, int x, Loc loc) {
  return ir_binary(g, OP_MUL, x, ir_unary(g, OP_SIGN, x, loc), loc);
}

int nn_step(Graph *g, int x, Loc loc) {
  return ir_unary(g, OP_RELU, ir_unary(g, OP_SIGN, x, loc), loc);
}

int nn_tan(Graph *g, int x, Loc loc) {
  return ir_binary(g, OP_DIV, ir_unary(g, OP_SIN, x, loc), ir_unary(g, OP_COS, x, loc), loc);
}

/* Two branches joined by a step mask s = step(x): y = s x + (1 - s) alpha (e^min(x, 0) - 1).
 * The exponent is clamped at 0 so the unused branch stays finite, and min(x, 0) gives x the
 * whole gradient at the tie, so that at x = 0 the gradient is alpha, PyTorch's (its negative
 * branch); relu(x) + alpha (e^(-relu(-x)) - 1) would give 0 there. */
int nn_elu(Graph *g, int x, double alpha, Loc loc) {
  DType dt = ir_at(g, x)->dtype;
  int s = nn_step(g, x, loc), one = ir_const(g, 1.0, dt, loc);
  int nonpos = ir_unary(g, OP_NEG, maximum_sharing(g, ir_unary(g, OP_NEG, x, loc),
                                                   ir_const(g, 0.0, dt, loc), 1.0, loc), loc);
  int e = ir_binary(g, OP_SUB, ir_unary(g, OP_EXP, nonpos, loc), one, loc);
  int branch = ir_binary(g, OP_MUL, ir_const(g, alpha, dt, loc), e, loc);
  return ir_binary(g, OP_ADD, ir_binary(g, OP_MUL, s, x, loc),
                   ir_binary(g, OP_MUL, ir_binary(g, OP_SUB, one, s, loc), branch, loc), loc);
}

int nn_maxout(Graph *g, int x, int64_t pieces, Loc loc) {
  const Node *xn = ir_at(g, x);
  char buf[256];
  if (xn->shape.rank < 2 || xn->shape.rank >= IR_MAX_RANK || xn->shape.d[1].sym >= 0 ||
      pieces < 1 || xn->shape.d[1].n % pieces)
    kiln_fail(loc, "maxout: %lld pieces do not divide the channels (axis 1) of %s",
              (long long)pieces, shape_text(g, &xn->shape, buf, sizeof buf));
  Shape grouped = xn->shape;
  for (int k = grouped.rank; k > 2; k--)
    grouped.d[k] = grouped.d[k - 1];
  grouped.d[1].n = xn->shape.d[1].n / pieces;
  grouped.d[2] = (Dim){pieces, -1};
  grouped.rank++;
  int xg = ir_reshape(g, x, grouped, loc), y = -1;
  for (int64_t j = 0; j < pieces; j++) {
    Attr a;
    memset(&a, 0, sizeof a);
    a.axis = 2;
    a.start = j;
    a.len = 1;
    int piece = without_axis(g, ir_node(g, OP_SLICE, 1, &xg, &a, loc), 2, loc);
    y = y < 0 ? piece : nn_maximum(g, y, piece, loc);
  }
  return y;
}

int nn_gelu(Graph *g, int x, Loc loc) {
  DType dt = ir_at(g, x)->dtype;
  int scaled = ir_binary(g, OP_MUL, x, ir_const(g, 0.7071067811865476, dt, loc), loc);
  int cdf = ir_binary(g, OP_ADD, ir_const(g, 1.0, dt, loc), ir_unary(g, OP_ERF, scaled, loc), loc);
  return ir_binary(g, OP_MUL, ir_binary(g, OP_MUL, ir_const(g, 0.5, dt, loc), x, loc), cdf, loc);
}

int nn_concat(Graph *g, int n, const int *xs, int axis, Loc loc) {
  KILN_ASSERT(n >= 1);
  Attr a;
  memset(&a, 0, sizeof a);
  a.axis = axis;
  int r = xs[0];
  for (int i = 1; i < n; i++) {
    int in[2] = {r, xs[i]};
    r = ir_node(g, OP_CONCAT, 2, in, &a, loc);
  }
  return r;
}

/* ---- losses ---- */

int nn_cross_entropy(Graph *g, int logits, int labels, Loc loc) {
  int in[2] = {logits, labels};
  return ir_node(g, OP_CROSS_ENTROPY, 2, in, NULL, loc);
}

int nn_one_hot(Graph *g, int labels, int64_t classes, DType dt, Loc loc) {
  Attr a;
  memset(&a, 0, sizeof a);
  a.len = classes;
  a.dtype = dt;
  return ir_node(g, OP_ONE_HOT, 1, &labels, &a, loc);
}

int nn_gather(Graph *g, int x, int axis, int index, Loc loc) {
  Attr a;
  memset(&a, 0, sizeof a);
  a.axis = axis;
  int in[2] = {x, index};
  return ir_node(g, OP_GATHER, 2, in, &a, loc);
}

/* x[i, labels[i]] as an [N, 1] column. */
static int picked(Graph *g, int x, int labels, Loc loc) {
  Shape col = ir_at(g, labels)->shape;
  col.d[col.rank++] = (Dim){1, -1};
  return nn_gather(g, x, 1, ir_reshape(g, labels, col, loc), loc);
}

static void require_scores(Graph *g, int x, int labels, const char *what, Loc loc) {
  const Node *xn = ir_at(g, x), *ln = ir_at(g, labels);
  if (xn->shape.rank != 2 || ln->shape.rank != 1 || ln->dtype != DT_I32)
    kiln_fail(loc, "%s takes scores [N, C] and i32 labels [N], got %s and %s", what,
              xn->shape.rank == 2 ? "a matrix" : "a tensor of another rank",
              ln->dtype == DT_I32 && ln->shape.rank == 1 ? "a vector of labels" : "no i32 vector");
}

int nn_nll(Graph *g, int logp, int labels, Loc loc) {
  require_scores(g, logp, labels, "nll", loc);
  int p = picked(g, logp, labels, loc);
  return ir_unary(g, OP_NEG, ir_reduce(g, OP_MEAN, p, 3u, false, loc), loc);
}

/* relu(margin - x_y + x_j) summed over every j counts margin once more at j = y (whose own
 * derivative cancels exactly, -1 + 1): that margin is taken off before dividing by C. */
int nn_hinge(Graph *g, int scores, int labels, double margin, Loc loc) {
  require_scores(g, scores, labels, "hinge", loc);
  DType dt = ir_at(g, scores)->dtype;
  int xy = picked(g, scores, labels, loc);
  int m = ir_const(g, margin, dt, loc);
  int gap = ir_binary(g, OP_ADD, ir_binary(g, OP_SUB, m, xy, loc), scores, loc);
  int per = ir_reduce(g, OP_SUM, ir_unary(g, OP_RELU, gap, loc), 2u, false, loc);
  int C = ir_reduce(g, OP_NUMEL, scores, 2u, false, loc);
  int loss = ir_binary(g, OP_DIV, ir_binary(g, OP_SUB, per, m, loc), C, loc);
  return ir_reduce(g, OP_MEAN, loss, 1u, false, loc);
}

int nn_mse(Graph *g, int a, int b, Loc loc) {
  int d = ir_binary(g, OP_SUB, a, b, loc);
  int two = ir_const(g, 2, ir_at(g, d)->dtype, loc);
  int sq = ir_binary(g, OP_POW, d, two, loc);
  int rank = ir_at(g, sq)->shape.rank;
  return rank ? ir_reduce(g, OP_MEAN, sq, all_axes(rank), false, loc) : sq;
}

int nn_psnr(Graph *g, int a, int b, double peak, Loc loc) {
  KILN_ASSERT(peak > 0);
  int d = ir_binary(g, OP_SUB, a, b, loc);
  DType dt = ir_at(g, d)->dtype;
  int sq = ir_binary(g, OP_MUL, d, d, loc);
  int rank = ir_at(g, sq)->shape.rank;
  KILN_ASSERT(rank >= 1);
  int per_example = rank > 1 ? ir_reduce(g, OP_MEAN, sq, all_axes(rank) & ~1u, false, loc) : sq;
  int db = ir_binary(g, OP_MUL, ir_const(g, 10 / log(10.0), dt, loc),
                     ir_binary(g, OP_SUB, ir_const(g, log(peak * peak), dt, loc),
                               ir_unary(g, OP_LOG, per_example, loc), loc), loc);
  return ir_reduce(g, OP_MEAN, db, 1u, false, loc);
}

int nn_bce_with_logits(Graph *g, int x, int t, Loc loc) {
  int in[2] = {x, t};
  int e = ir_node(g, OP_BCE_LOGITS, 2, in, NULL, loc);
  int rank = ir_at(g, e)->shape.rank;
  return rank ? ir_reduce(g, OP_MEAN, e, all_axes(rank), false, loc) : e;
}
