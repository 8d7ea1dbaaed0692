/*
 * interp.c — the reference runtime: every op's meaning, written as plainly as possible.
 *
 * One kernel per op in ref_kernels[], indexed by Op. Each reads its inputs' values and concrete
 * dims and writes its node's values; all arithmetic is in double, loops are the obvious nested
 * ones in a fixed order, and nothing is fused, tiled or reordered, so a kernel here can be read
 * as the definition the C emitter's faster loops must agree with (Halide's algorithm/schedule
 * split: this file ignores every schedule, which is what lets it check all of them).
 *
 * Broadcasting is done one way everywhere: a flat output index is decomposed into coordinates
 * and dotted with the input's strides, where an input axis that is missing (rank alignment on the
 * right) or of size 1 gets stride 0 (bcast_strides / bcast_offset). SUM_TO is the same map run
 * backwards: each input element is added into the output element it maps to.
 *
 * The window ops write each forward sum once and read it several ways: conv_walk is the 7-loop
 * cross-correlation that CONV2D, CONV2D_BWD_DATA and CONV2D_BWD_FILTER all run (each accumulates
 * a different one of the three operands), avgpool_walk serves AVGPOOL2D and its adjoint, and
 * window_argmax serves MAXPOOL2D and its gradient; so an adjoint cannot disagree with its forward
 * op about an index.
 *
 * Errors (a label outside [0, C), a batch larger than the storage) are reported through the
 * caller's err buffer, never by crashing, so a driver can print them and stop.
 */
#include "ref/ref.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct Interp {
  Graph *g;
  int nnodes;          /* g->nnodes at creation: storage exists for these nodes only */
  bool f32;            /* round f32 results to float after each op */
  int64_t max_batch;
  int64_t batch;       /* of the last run (max_batch before any) */
  double **val;        /* per node: values, row-major, capacity for max_batch */
  int64_t *cap;        /* per node: allocated element count */
  int64_t (*dims)[IR_MAX_RANK]; /* per node: concrete dims at `batch` */
  int64_t *numel;      /* per node: element count at `batch` */
  unsigned char *mark; /* scratch: nodes to evaluate */
  char *err;           /* the current run's message buffer (RT_ERR_LEN bytes) */
  const Plan *plan;    /* set by interp_backend */
  kiln_entry entries[ENTRY_COUNT]; /* the backend's entries table: names, no functions */
  IrSettings settings;             /* the backend's settings table */
  bool stop_at_faults;             /* fail at the first result that is not finite */
  void (*allreduce)(void *comm, void *data, int64_t n, int dtype); /* a data-parallel run's sum */
  void *comm;
  unsigned char *faulty;           /* per node: its last result held a NaN or an infinity */
};

typedef int (*RefKernel)(Interp *it, const Node *n);

static int fail(Interp *it, const char *fmt, ...) KILN_PRINTF(2, 3);
static int fail(Interp *it, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(it->err, RT_ERR_LEN, fmt, ap);
  va_end(ap);
  return -1;
}

static double *val(Interp *it, int id) { return it->val[id]; }
static const int64_t *dims(Interp *it, int id) { return it->dims[id]; }
static int rank(Interp *it, int id) { return ir_at(it->g, id)->shape.rank; }

/* Binds the batch symbol and computes every node's concrete dims. */
static void bind_batch(Interp *it, int64_t batch) {
  int64_t symvals[IR_MAX_SYMS] = {batch};
  it->batch = batch;
  for (int id = 0; id < it->nnodes; id++) {
    const Shape *s = &ir_at(it->g, id)->shape;
    int64_t n = 1;
    for (int k = 0; k < s->rank; k++) {
      it->dims[id][k] = dim_value(s->d[k], symvals);
      n *= it->dims[id][k];
    }
    it->numel[id] = n;
  }
}

/* ---- broadcasting ---------------------------------------------------------------------------- */

/* Strides that read node `in` while walking an index space of rank r, NumPy-aligned on the
 * right; missing or size-1 axes of `in` repeat (stride 0). */
static void bcast_strides(Interp *it, int in, int r, int64_t *strides) {
  int ir = rank(it, in);
  const int64_t *id = dims(it, in);
  int64_t s = 1;
  for (int k = r - 1; k >= 0; k--) {
    int j = k - (r - ir);
    if (j < 0 || id[j] == 1) {
      strides[k] = 0;
    } else {
      strides[k] = s;
    }
    if (j >= 0)
      s *= id[j];
  }
}

/* Offset in a strided tensor of the flat row-major index o of an index space with dims d. */
static int64_t bcast_offset(int64_t o, int r, const int64_t *d, const int64_t *strides) {
  int64_t off = 0;
  for (int k = r - 1; k >= 0; k--) {
    off += (o % d[k]) * strides[k];
    o /= d[k];
  }
  return off;
}

/* ---- elementwise ----------------------------------------------------------------------------- */

static int binary(Interp *it, const Node *n, double (*f)(double, double)) {
  int r = n->shape.rank;
  const int64_t *d = dims(it, n->id);
  int64_t sa[IR_MAX_RANK], sb[IR_MAX_RANK];
  bcast_strides(it, n->in[0], r, sa);
  bcast_strides(it, n->in[1], r, sb);
  const double *a = val(it, n->in[0]), *b = val(it, n->in[1]);
  double *y = val(it, n->id);
  int64_t cnt = it->numel[n->id];
  /* Equal element counts mean equal shapes here (shape.c broadcast them): skip the index map,
   * which only makes `kiln train --reference` bearable, not different. */
  if (it->numel[n->in[0]] == cnt && it->numel[n->in[1]] == cnt) {
    for (int64_t o = 0; o < cnt; o++)
      y[o] = f(a[o], b[o]);
    return 0;
  }
  for (int64_t o = 0; o < cnt; o++)
    y[o] = f(a[bcast_offset(o, r, d, sa)], b[bcast_offset(o, r, d, sb)]);
  return 0;
}

static int unary(Interp *it, const Node *n, double (*f)(double)) {
  const double *x = val(it, n->in[0]);
  double *y = val(it, n->id);
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] = f(x[o]);
  return 0;
}

static double f_add(double a, double b) { return a + b; }
static double f_sub(double a, double b) { return a - b; }
static double f_mul(double a, double b) { return a * b; }
static double f_div(double a, double b) { return a / b; }
static double f_relu_grad(double x, double dy) { return x > 0 ? dy : 0.0; }
static double f_neg(double x) { return -x; }
static double f_relu(double x) { return x > 0 ? x : 0.0; }

static int k_add(Interp *it, const Node *n) { return binary(it, n, f_add); }
static int k_sub(Interp *it, const Node *n) { return binary(it, n, f_sub); }
static int k_mul(Interp *it, const Node *n) { return binary(it, n, f_mul); }
static int k_div(Interp *it, const Node *n) { return binary(it, n, f_div); }
static int k_pow(Interp *it, const Node *n) { return binary(it, n, pow); }
static int k_relu_grad(Interp *it, const Node *n) { return binary(it, n, f_relu_grad); }
static int k_neg(Interp *it, const Node *n) { return unary(it, n, f_neg); }
static int k_exp(Interp *it, const Node *n) { return unary(it, n, exp); }
static int k_log(Interp *it, const Node *n) { return unary(it, n, log); }
static int k_sqrt(Interp *it, const Node *n) { return unary(it, n, sqrt); }
static int k_relu(Interp *it, const Node *n) { return unary(it, n, f_relu); }

/* ---- leaves ---------------------------------------------------------------------------------- */

/* INPUT / PARAM / STATE: the value is whatever the driver or the initialiser wrote. */
static int k_leaf(Interp *it, const Node *n) {
  (void)it, (void)n;
  return 0;
}

/* A scalar attr.value repeated over the node's shape, or the literal's values. */
static int k_const(Interp *it, const Node *n) {
  double *y = val(it, n->id);
  int64_t cnt = it->numel[n->id];
  if (n->data >= 0) {
    const Literal *l = &it->g->data[n->data];
    if (l->n != cnt)
      return fail(it, "constant %s has %lld values for %lld elements", n->name ? n->name : "",
                  (long long)l->n, (long long)cnt);
    memcpy(y, l->v, (size_t)cnt * sizeof *y);
  } else {
    for (int64_t o = 0; o < cnt; o++)
      y[o] = n->attr.value;
  }
  return 0;
}

/* ---- reductions and broadcasts --------------------------------------------------------------- */

/* Sums x over attr.axes into y (keepdims or not: the flat layout is the same). */
static void reduce_sum(Interp *it, const Node *n) {
  int x = n->in[0], r = rank(it, x);
  const int64_t *xd = dims(it, x);
  int64_t ks[IR_MAX_RANK], s = 1;
  for (int k = r - 1; k >= 0; k--) {
    bool reduced = n->attr.axes & (1u << k);
    ks[k] = reduced ? 0 : s;
    if (!reduced)
      s *= xd[k];
  }
  double *y = val(it, n->id);
  const double *xv = val(it, x);
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] = 0.0;
  for (int64_t i = 0; i < it->numel[x]; i++)
    y[bcast_offset(i, r, xd, ks)] += xv[i];
}

/* Elements of x over attr.axes: the divisor of MEAN. */
static double count_over_axes(Interp *it, const Node *n) {
  int x = n->in[0];
  int64_t c = 1;
  for (int k = 0; k < rank(it, x); k++)
    if (n->attr.axes & (1u << k))
      c *= dims(it, x)[k];
  return (double)c;
}

static int k_sum(Interp *it, const Node *n) {
  reduce_sum(it, n);
  return 0;
}

static int k_mean(Interp *it, const Node *n) {
  reduce_sum(it, n);
  double c = count_over_axes(it, n), *y = val(it, n->id);
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] /= c;
  return 0;
}

static int k_numel(Interp *it, const Node *n) {
  val(it, n->id)[0] = count_over_axes(it, n);
  return 0;
}

/* y (like's shape) = x summed over the axes where like was broadcast. */
static int k_sum_to(Interp *it, const Node *n) {
  int x = n->in[0], r = rank(it, x);
  const int64_t *xd = dims(it, x);
  int64_t ys[IR_MAX_RANK];
  bcast_strides(it, n->id, r, ys);
  double *y = val(it, n->id);
  const double *xv = val(it, x);
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] = 0.0;
  for (int64_t i = 0; i < it->numel[x]; i++)
    y[bcast_offset(i, r, xd, ys)] += xv[i];
  return 0;
}

static int k_expand(Interp *it, const Node *n) {
  int r = n->shape.rank;
  const int64_t *d = dims(it, n->id);
  int64_t xs[IR_MAX_RANK];
  bcast_strides(it, n->in[0], r, xs);
  const double *x = val(it, n->in[0]);
  double *y = val(it, n->id);
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] = x[bcast_offset(o, r, d, xs)];
  return 0;
}

/* ---- shape ----------------------------------------------------------------------------------- */

static int k_reshape(Interp *it, const Node *n) {
  if (it->numel[n->in[0]] != it->numel[n->id])
    return fail(it, "reshape of %lld elements into %lld", (long long)it->numel[n->in[0]],
                (long long)it->numel[n->id]);
  memcpy(val(it, n->id), val(it, n->in[0]), (size_t)it->numel[n->id] * sizeof(double));
  return 0;
}

/* ---- linear algebra -------------------------------------------------------------------------- */

/* y[M,N] = op(a)[M,K] @ op(b)[K,N]; a stored [M,K] or, transposed, [K,M]; likewise b. */
static int k_matmul(Interp *it, const Node *n) {
  int a = n->in[0], b = n->in[1];
  bool ta = n->attr.trans_a, tb = n->attr.trans_b;
  int64_t a1 = dims(it, a)[1], b1 = dims(it, b)[1];
  int64_t M = ta ? a1 : dims(it, a)[0], K = ta ? dims(it, a)[0] : a1;
  int64_t N = tb ? dims(it, b)[0] : b1;
  const double *av = val(it, a), *bv = val(it, b);
  double *y = val(it, n->id);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; k++)
        acc += (ta ? av[k * a1 + i] : av[i * a1 + k]) * (tb ? bv[j * b1 + k] : bv[k * b1 + j]);
      y[i * N + j] = acc;
    }
  return 0;
}

/* ---- losses ---------------------------------------------------------------------------------- */

/* Labels must be whole numbers in [0, C); data from a file can hold anything. */
static int check_labels(Interp *it, const Node *n, int64_t N, int64_t C) {
  const Node *ln = ir_at(it->g, n->in[1]);
  const double *lab = val(it, ln->id);
  for (int64_t i = 0; i < N; i++)
    if (!(lab[i] >= 0 && lab[i] < (double)C && lab[i] == floor(lab[i])))
      return fail(it, "%s: label tensor '%s' has value %g at index %lld, outside [0, %lld)",
                  op_names[n->op], ln->name ? ln->name : "labels", lab[i], (long long)i,
                  (long long)C);
  return 0;
}

/* log(sum(exp(z))) of one row, shifted by the row's maximum so that exp cannot overflow. */
static double logsumexp(const double *z, int64_t C) {
  double m = -INFINITY, s = 0.0;
  for (int64_t c = 0; c < C; c++)
    m = z[c] > m ? z[c] : m;
  for (int64_t c = 0; c < C; c++)
    s += exp(z[c] - m);
  return m + log(s);
}

static int k_cross_entropy(Interp *it, const Node *n) {
  int z = n->in[0];
  int64_t N = dims(it, z)[0], C = dims(it, z)[1];
  if (check_labels(it, n, N, C))
    return -1;
  const double *zv = val(it, z), *lab = val(it, n->in[1]);
  double total = 0.0;
  for (int64_t i = 0; i < N; i++)
    total += logsumexp(zv + i * C, C) - zv[i * C + (int64_t)lab[i]];
  val(it, n->id)[0] = total / (double)N;
  return 0;
}

/* dy * (softmax(z) - onehot(labels)) / N; dy broadcasts (it is the loss's scalar adjoint). */
static int k_cross_entropy_grad(Interp *it, const Node *n) {
  int z = n->in[0];
  int64_t N = dims(it, z)[0], C = dims(it, z)[1];
  if (check_labels(it, n, N, C))
    return -1;
  const int64_t *d = dims(it, n->id);
  int64_t ds[IR_MAX_RANK];
  bcast_strides(it, n->in[2], 2, ds);
  const double *zv = val(it, z), *lab = val(it, n->in[1]), *dy = val(it, n->in[2]);
  double *y = val(it, n->id);
  for (int64_t i = 0; i < N; i++) {
    double lse = logsumexp(zv + i * C, C);
    for (int64_t c = 0; c < C; c++) {
      int64_t o = i * C + c;
      double p = exp(zv[o] - lse) - (c == (int64_t)lab[i] ? 1.0 : 0.0);
      y[o] = dy[bcast_offset(o, 2, d, ds)] * p / (double)N;
    }
  }
  return 0;
}

/* ---- activations and normalised exponentials ------------------------------------------------ */

/* Written so that neither branch's exp can overflow. */
static double f_sigmoid(double x) {
  if (x >= 0)
    return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

/* max(x,0) - x t + log(1 + e^-|x|): the loss of logit x against target t, stable for any x. */
static double f_bce_logits(double x, double t) {
  return (x > 0 ? x : 0.0) - x * t + log1p(exp(-fabs(x)));
}

static int k_sigmoid(Interp *it, const Node *n) { return unary(it, n, f_sigmoid); }
static int k_tanh(Interp *it, const Node *n) { return unary(it, n, tanh); }

static double f_sign(double x) { return x > 0 ? 1.0 : x < 0 ? -1.0 : 0.0; }
static double f_softplus(double x) { return x > 20 ? x : log1p(exp(x)); }
static double f_maximum(double a, double b) { return a != a || a > b ? a : b; }
static int k_sin(Interp *it, const Node *n) { return unary(it, n, sin); }
static int k_cos(Interp *it, const Node *n) { return unary(it, n, cos); }
static int k_atan(Interp *it, const Node *n) { return unary(it, n, atan); }
static int k_erf(Interp *it, const Node *n) { return unary(it, n, erf); }
static int k_sign(Interp *it, const Node *n) { return unary(it, n, f_sign); }
static int k_softplus(Interp *it, const Node *n) { return unary(it, n, f_softplus); }
static int k_maximum(Interp *it, const Node *n) { return binary(it, n, f_maximum); }
static int k_bce_logits(Interp *it, const Node *n) { return binary(it, n, f_bce_logits); }

static int k_leaky_relu(Interp *it, const Node *n) {
  const double *x = val(it, n->in[0]);
  double *y = val(it, n->id), slope = n->attr.value;
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] = x[o] > 0 ? x[o] : slope * x[o];
  return 0;
}

/* dy may be broadcast against x (shape.c only requires the result to have x's shape). */
static int k_leaky_relu_grad(Interp *it, const Node *n) {
  int r = n->shape.rank;
  const int64_t *d = dims(it, n->id);
  int64_t sx[IR_MAX_RANK], sd[IR_MAX_RANK];
  bcast_strides(it, n->in[0], r, sx);
  bcast_strides(it, n->in[1], r, sd);
  const double *x = val(it, n->in[0]), *dy = val(it, n->in[1]);
  double *y = val(it, n->id), slope = n->attr.value;
  for (int64_t o = 0; o < it->numel[n->id]; o++) {
    double g = dy[bcast_offset(o, r, d, sd)];
    y[o] = x[bcast_offset(o, r, d, sx)] > 0 ? g : slope * g;
  }
  return 0;
}

/* A tensor seen as [outer, len, inner] around one axis: element (a, k, b) is at
 * (a * len + k) * inner + b. Softmax, concat and slice all work on rows of this form. */
static void split_at_axis(Interp *it, int node, int axis, int64_t *outer, int64_t *len,
                          int64_t *inner) {
  const int64_t *d = dims(it, node);
  *outer = *inner = 1;
  for (int k = 0; k < axis; k++)
    *outer *= d[k];
  *len = d[axis];
  for (int k = axis + 1; k < rank(it, node); k++)
    *inner *= d[k];
}

/* softmax, or log_softmax when log_out, along attr.axis; each row shifted by its maximum so
 * that exp cannot overflow. */
static int softmax_rows(Interp *it, const Node *n, bool log_out) {
  int64_t outer, len, inner;
  split_at_axis(it, n->in[0], n->attr.axis, &outer, &len, &inner);
  const double *x = val(it, n->in[0]);
  double *y = val(it, n->id);
  for (int64_t a = 0; a < outer; a++)
    for (int64_t b = 0; b < inner; b++) {
      const double *xr = x + a * len * inner + b;
      double *yr = y + a * len * inner + b;
      double m = -INFINITY, s = 0.0;
      for (int64_t k = 0; k < len; k++)
        m = xr[k * inner] > m ? xr[k * inner] : m;
      for (int64_t k = 0; k < len; k++)
        s += exp(xr[k * inner] - m);
      for (int64_t k = 0; k < len; k++)
        yr[k * inner] = log_out ? xr[k * inner] - m - log(s) : exp(xr[k * inner] - m) / s;
    }
  return 0;
}

static int k_softmax(Interp *it, const Node *n) { return softmax_rows(it, n, false); }
static int k_log_softmax(Interp *it, const Node *n) { return softmax_rows(it, n, true); }

/* Inverted dropout. The mask is a pure function of (salt, counter, flat index), so the backward
 * node (the same op applied to dy) drops exactly the same elements; p = 0 keeps everything and
 * divides by 1, the identity. */
static int k_dropout(Interp *it, const Node *n) {
  const double *x = val(it, n->in[0]);
  double *y = val(it, n->id), p = n->attr.value, counter = val(it, n->in[1])[0];
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] = kiln_dropout_uniform(n->attr.salt, counter, o) >= p ? x[o] / (1.0 - p) : 0.0;
  return 0;
}

/* ---- layout ---------------------------------------------------------------------------------- */

/* Walks y in row-major order and reads x through its strides permuted: y's axis k is x's axis
 * perm[k]. */
static int k_transpose(Interp *it, const Node *n) {
  int x = n->in[0], r = rank(it, x);
  const int64_t *xd = dims(it, x);
  int64_t xs[IR_MAX_RANK], ps[IR_MAX_RANK], s = 1;
  for (int k = r - 1; k >= 0; k--) {
    xs[k] = s;
    s *= xd[k];
  }
  for (int k = 0; k < r; k++)
    ps[k] = xs[n->attr.perm[k]];
  const double *xv = val(it, x);
  double *y = val(it, n->id);
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] = xv[bcast_offset(o, r, dims(it, n->id), ps)];
  return 0;
}

/* Each outer row of y is a's row followed by b's. */
static int k_concat(Interp *it, const Node *n) {
  int64_t outer, la, lb, inner;
  split_at_axis(it, n->in[0], n->attr.axis, &outer, &la, &inner);
  split_at_axis(it, n->in[1], n->attr.axis, &outer, &lb, &inner);
  const double *a = val(it, n->in[0]), *b = val(it, n->in[1]);
  double *y = val(it, n->id);
  for (int64_t o = 0; o < outer; o++) {
    for (int64_t k = 0; k < la * inner; k++)
      *y++ = a[o * la * inner + k];
    for (int64_t k = 0; k < lb * inner; k++)
      *y++ = b[o * lb * inner + k];
  }
  return 0;
}

static int k_slice(Interp *it, const Node *n) {
  int64_t outer, len, inner;
  split_at_axis(it, n->in[0], n->attr.axis, &outer, &len, &inner);
  const double *x = val(it, n->in[0]);
  double *y = val(it, n->id);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t k = 0; k < n->attr.len * inner; k++)
      *y++ = x[(o * len + n->attr.start) * inner + k];
  return 0;
}

/* ---- indexing by integer tensors --------------------------------------------------------------- */

static int k_one_hot(Interp *it, const Node *n) {
  const double *lab = val(it, n->in[0]);
  double *y = val(it, n->id);
  int64_t C = n->attr.len;
  for (int64_t k = 0; k < it->numel[n->in[0]]; k++)
    for (int64_t c = 0; c < C; c++)
      y[k * C + c] = lab[k] < 0 || lab[k] >= (double)C ? NAN : (double)(c == (int64_t)lab[k]);
  return 0;
}

/* Noise: a pure function of (salt, counter, flat index), as generated code computes it. */
static int k_randn(Interp *it, const Node *n) {
  double *y = val(it, n->id), counter = val(it, n->in[1])[0];
  for (int64_t o = 0; o < it->numel[n->id]; o++)
    y[o] = kiln_normal(n->attr.salt, counter, o);
  return 0;
}

/* The sum over a data-parallel run's processes, through the driver's collective (values in
 * double here); the values themselves in one process. */
static int k_allreduce(Interp *it, const Node *n) {
  double *y = val(it, n->id);
  memcpy(y, val(it, n->in[0]), (size_t)it->numel[n->id] * sizeof *y);
  if (it->allreduce)
    it->allreduce(it->comm, y, it->numel[n->id], KILN_F64);
  return 0;
}

static int k_gather(Interp *it, const Node *n) {
  int64_t outer, len, inner, ilen = dims(it, n->in[1])[n->attr.axis];
  split_at_axis(it, n->in[0], n->attr.axis, &outer, &len, &inner);
  const double *x = val(it, n->in[0]), *ix = val(it, n->in[1]);
  double *y = val(it, n->id);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < ilen; j++)
      for (int64_t i = 0; i < inner; i++) {
        int64_t at = (o * ilen + j) * inner + i;
        double t = ix[at];
        y[at] = t >= 0 && t < (double)len ? x[(o * len + (int64_t)t) * inner + i] : NAN;
      }
  return 0;
}

static int k_gather_grad(Interp *it, const Node *n) {
  int64_t outer, len, inner, ilen = dims(it, n->in[1])[n->attr.axis];
  split_at_axis(it, n->in[2], n->attr.axis, &outer, &len, &inner);
  const double *dy = val(it, n->in[0]), *ix = val(it, n->in[1]);
  double *y = val(it, n->id);
  memset(y, 0, (size_t)it->numel[n->id] * sizeof *y);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < ilen; j++)
      for (int64_t i = 0; i < inner; i++) {
        int64_t at = (o * ilen + j) * inner + i;
        double t = ix[at];
        if (t >= 0 && t < (double)len)
          y[(o * len + (int64_t)t) * inner + i] += dy[at];
      }
  return 0;
}

/* ---- 2-D windows ----------------------------------------------------------------------------- */

/* A window op between a forward input x [N, C, H, W] and a forward output y [N, O, Ho, Wo]
 * (O = C for pools). Which nodes play x and y depends on the op: for an adjoint, one of them is
 * the node itself. */
typedef struct Win {
  int64_t N, C, H, W, O, Ho, Wo;
  const Attr *a;
} Win;

static Win window(Interp *it, const Node *n, int x, int y) {
  const int64_t *xd = dims(it, x), *yd = dims(it, y);
  return (Win){xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], &n->attr};
}

/* The input row (axis 0) or column (axis 1) that tap p of output position i reads,
 * i * stride - pad_before + p * dilation, or -1 when that falls in the padding. */
static int64_t tap(const Win *w, int axis, int64_t i, int64_t p) {
  int64_t r = i * w->a->stride[axis] - w->a->pad[2 * axis] + p * w->a->dilation[axis];
  return r >= 0 && r < (axis ? w->W : w->H) ? r : -1;
}

static int64_t x_index(const Win *w, int64_t n, int64_t c, int64_t r, int64_t s) {
  return ((n * w->C + c) * w->H + r) * w->W + s;
}

static int64_t y_index(const Win *w, int64_t n, int64_t o, int64_t i, int64_t j) {
  return ((n * w->O + o) * w->Ho + i) * w->Wo + j;
}

static void zero(Interp *it, int node) {
  memset(val(it, node), 0, (size_t)it->numel[node] * sizeof(double));
}

typedef enum ConvRole { CONV_FORWARD, CONV_DATA, CONV_FILTER } ConvRole;

/* The one sum behind the three convolution ops: each output element (n, o, i, j) and each tap
 * (c, p, q) of its group g = o / (O/G) pair an input element with a weight,
 *     y[n,o,i,j] += x[n, g*C/G + c, tap(i,p), tap(j,q)] * w[o,c,p,q],
 * taps in the zero padding contributing nothing. CONV2D accumulates x*w into y, BWD_DATA dy*w
 * into x, BWD_FILTER x*dy into w: the same index triples read three ways, so the two adjoints
 * are the forward op's transposes by construction. The accumulated array starts zeroed. */
static void conv_walk(const Win *w, ConvRole role, double *x, double *wt, double *y) {
  int64_t G = w->a->groups, Cg = w->C / G, Og = w->O / G;
  int64_t kh = w->a->kernel[0], kw = w->a->kernel[1];
  for (int64_t n = 0; n < w->N; n++)
    for (int64_t o = 0; o < w->O; o++)
      for (int64_t i = 0; i < w->Ho; i++)
        for (int64_t j = 0; j < w->Wo; j++)
          for (int64_t c = 0; c < Cg; c++)
            for (int64_t p = 0; p < kh; p++)
              for (int64_t q = 0; q < kw; q++) {
                int64_t r = tap(w, 0, i, p), s = tap(w, 1, j, q);
                if (r < 0 || s < 0)
                  continue;
                int64_t xi = x_index(w, n, (o / Og) * Cg + c, r, s);
                int64_t wi = ((o * Cg + c) * kh + p) * kw + q;
                int64_t yi = y_index(w, n, o, i, j);
                if (role == CONV_FORWARD)
                  y[yi] += x[xi] * wt[wi];
                else if (role == CONV_DATA)
                  x[xi] += y[yi] * wt[wi];
                else
                  wt[wi] += x[xi] * y[yi];
              }
}

/* (x, w) -> y */
static int k_conv2d(Interp *it, const Node *n) {
  Win w = window(it, n, n->in[0], n->id);
  zero(it, n->id);
  conv_walk(&w, CONV_FORWARD, val(it, n->in[0]), val(it, n->in[1]), val(it, n->id));
  return 0;
}

/* (dy, w) -> dx */
static int k_conv2d_bwd_data(Interp *it, const Node *n) {
  Win w = window(it, n, n->id, n->in[0]);
  zero(it, n->id);
  conv_walk(&w, CONV_DATA, val(it, n->id), val(it, n->in[1]), val(it, n->in[0]));
  return 0;
}

/* (x, dy) -> dw */
static int k_conv2d_bwd_filter(Interp *it, const Node *n) {
  Win w = window(it, n, n->in[0], n->in[1]);
  zero(it, n->id);
  conv_walk(&w, CONV_FILTER, val(it, n->in[0]), val(it, n->id), val(it, n->in[1]));
  return 0;
}

/* Flat index into x of the maximum of window (n, c, i, j), or -1 if no tap is in bounds.
 * PyTorch's rule: start from the first in-bounds element with max = -inf, scan the taps in
 * row-major order and take a value that is strictly greater (so the first of equal maxima
 * wins) or NaN (so NaN propagates). Padding is -inf: it is never read. */
static int64_t window_argmax(const Win *w, const double *x, int64_t n, int64_t c, int64_t i,
                             int64_t j) {
  int64_t best = -1;
  double m = -INFINITY;
  for (int64_t p = 0; p < w->a->kernel[0]; p++)
    for (int64_t q = 0; q < w->a->kernel[1]; q++) {
      int64_t r = tap(w, 0, i, p), s = tap(w, 1, j, q);
      if (r < 0 || s < 0)
        continue;
      int64_t xi = x_index(w, n, c, r, s);
      if (best < 0)
        best = xi;
      if (x[xi] > m || isnan(x[xi])) {
        m = x[xi];
        best = xi;
      }
    }
  return best;
}

static int k_maxpool2d(Interp *it, const Node *n) {
  Win w = window(it, n, n->in[0], n->id);
  const double *x = val(it, n->in[0]);
  double *y = val(it, n->id);
  for (int64_t b = 0; b < w.N; b++)
    for (int64_t c = 0; c < w.C; c++)
      for (int64_t i = 0; i < w.Ho; i++)
        for (int64_t j = 0; j < w.Wo; j++) {
          int64_t k = window_argmax(&w, x, b, c, i, j);
          y[y_index(&w, b, c, i, j)] = k < 0 ? -INFINITY : x[k];
        }
  return 0;
}

/* (x, t) -> t at each window's maximum of x. */
static int k_maxpool2d_pick(Interp *it, const Node *n) {
  Win w = window(it, n, n->in[0], n->id);
  const double *x = val(it, n->in[0]), *t = val(it, n->in[1]);
  double *y = val(it, n->id);
  for (int64_t b = 0; b < w.N; b++)
    for (int64_t c = 0; c < w.C; c++)
      for (int64_t i = 0; i < w.Ho; i++)
        for (int64_t j = 0; j < w.Wo; j++) {
          int64_t k = window_argmax(&w, x, b, c, i, j);
          y[y_index(&w, b, c, i, j)] = k < 0 ? 0.0 : t[k];
        }
  return 0;
}

/* (x, dy) -> dx: each dy goes to its window's maximum; overlapping windows add up. */
static int k_maxpool2d_grad(Interp *it, const Node *n) {
  Win w = window(it, n, n->in[0], n->in[1]);
  const double *x = val(it, n->in[0]), *dy = val(it, n->in[1]);
  double *dx = val(it, n->id);
  zero(it, n->id);
  for (int64_t b = 0; b < w.N; b++)
    for (int64_t c = 0; c < w.C; c++)
      for (int64_t i = 0; i < w.Ho; i++)
        for (int64_t j = 0; j < w.Wo; j++) {
          int64_t k = window_argmax(&w, x, b, c, i, j);
          if (k >= 0)
            dx[k] += dy[y_index(&w, b, c, i, j)];
        }
  return 0;
}

/* What avgpool2d divides window (i, j) by: kh*kw when the padding counts (PyTorch's
 * count_include_pad=True, whose divisor is the window clipped to the padded input — the whole
 * window, since windows never leave the padded input here), else the in-bounds taps. */
static double avg_divisor(const Win *w, int64_t i, int64_t j) {
  if (w->a->count_include_pad)
    return (double)(w->a->kernel[0] * w->a->kernel[1]);
  int64_t cnt = 0;
  for (int64_t p = 0; p < w->a->kernel[0]; p++)
    for (int64_t q = 0; q < w->a->kernel[1]; q++)
      cnt += tap(w, 0, i, p) >= 0 && tap(w, 1, j, q) >= 0;
  return (double)cnt;
}

/* AVGPOOL2D (x -> y) and its adjoint AVGPOOL2D_GRAD (dy -> dx) walk the same window taps: one
 * gathers sums and divides, the other scatters dy / divisor. */
static void avgpool_walk(const Win *w, bool adjoint, double *x, double *y) {
  for (int64_t b = 0; b < w->N; b++)
    for (int64_t c = 0; c < w->C; c++)
      for (int64_t i = 0; i < w->Ho; i++)
        for (int64_t j = 0; j < w->Wo; j++) {
          int64_t yi = y_index(w, b, c, i, j);
          double div = avg_divisor(w, i, j), acc = 0.0;
          for (int64_t p = 0; p < w->a->kernel[0]; p++)
            for (int64_t q = 0; q < w->a->kernel[1]; q++) {
              int64_t r = tap(w, 0, i, p), s = tap(w, 1, j, q);
              if (r < 0 || s < 0)
                continue;
              if (adjoint)
                x[x_index(w, b, c, r, s)] += y[yi] / div;
              else
                acc += x[x_index(w, b, c, r, s)];
            }
          if (!adjoint)
            y[yi] = acc / div;
        }
}

static int k_avgpool2d(Interp *it, const Node *n) {
  Win w = window(it, n, n->in[0], n->id);
  avgpool_walk(&w, false, val(it, n->in[0]), val(it, n->id));
  return 0;
}

static int k_avgpool2d_grad(Interp *it, const Node *n) {
  Win w = window(it, n, n->id, n->in[0]);
  zero(it, n->id);
  avgpool_walk(&w, true, val(it, n->id), val(it, n->in[0]));
  return 0;
}

static const RefKernel ref_kernels[OP_COUNT] = {
    [OP_INPUT] = k_leaf,
    [OP_PARAM] = k_leaf,
    [OP_STATE] = k_leaf,
    [OP_CONST] = k_const,
    [OP_ADD] = k_add,
    [OP_SUB] = k_sub,
    [OP_MUL] = k_mul,
    [OP_DIV] = k_div,
    [OP_POW] = k_pow,
    [OP_RELU_GRAD] = k_relu_grad,
    [OP_NEG] = k_neg,
    [OP_EXP] = k_exp,
    [OP_LOG] = k_log,
    [OP_SQRT] = k_sqrt,
    [OP_RELU] = k_relu,
    [OP_SUM] = k_sum,
    [OP_MEAN] = k_mean,
    [OP_NUMEL] = k_numel,
    [OP_SUM_TO] = k_sum_to,
    [OP_EXPAND] = k_expand,
    [OP_RESHAPE] = k_reshape,
    [OP_MATMUL] = k_matmul,
    [OP_CROSS_ENTROPY] = k_cross_entropy,
    [OP_CROSS_ENTROPY_GRAD] = k_cross_entropy_grad,
    [OP_SIGMOID] = k_sigmoid,
    [OP_TANH] = k_tanh,
    [OP_SIN] = k_sin,
    [OP_COS] = k_cos,
    [OP_ATAN] = k_atan,
    [OP_ERF] = k_erf,
    [OP_SIGN] = k_sign,
    [OP_SOFTPLUS] = k_softplus,
    [OP_MAXIMUM] = k_maximum,
    [OP_ONE_HOT] = k_one_hot,
    [OP_RANDN] = k_randn,
    [OP_ALLREDUCE] = k_allreduce,
    [OP_GATHER] = k_gather,
    [OP_GATHER_GRAD] = k_gather_grad,
    [OP_LEAKY_RELU] = k_leaky_relu,
    [OP_LEAKY_RELU_GRAD] = k_leaky_relu_grad,
    [OP_SOFTMAX] = k_softmax,
    [OP_LOG_SOFTMAX] = k_log_softmax,
    [OP_BCE_LOGITS] = k_bce_logits,
    [OP_DROPOUT] = k_dropout,
    [OP_TRANSPOSE] = k_transpose,
    [OP_CONCAT] = k_concat,
    [OP_SLICE] = k_slice,
    [OP_CONV2D] = k_conv2d,
    [OP_CONV2D_BWD_DATA] = k_conv2d_bwd_data,
    [OP_CONV2D_BWD_FILTER] = k_conv2d_bwd_filter,
    [OP_MAXPOOL2D] = k_maxpool2d,
    [OP_MAXPOOL2D_GRAD] = k_maxpool2d_grad,
    [OP_MAXPOOL2D_PICK] = k_maxpool2d_pick,
    [OP_AVGPOOL2D] = k_avgpool2d,
    [OP_AVGPOOL2D_GRAD] = k_avgpool2d_grad,
};

bool interp_has_kernel(Op op) { return op >= 0 && op < OP_COUNT && ref_kernels[op] != NULL; }

/* ---- driving --------------------------------------------------------------------------------- */

Interp *interp_new(Graph *g, int64_t max_batch, bool f32) {
  if (g->nsyms > 1 || max_batch < 1)
    return NULL;
  Interp *it = calloc(1, sizeof *it);
  if (!it)
    return NULL;
  it->g = g;
  it->nnodes = g->nnodes;
  it->f32 = f32;
  it->max_batch = max_batch;
  size_t nn = (size_t)g->nnodes + 1; /* never calloc(0) */
  it->val = calloc(nn, sizeof *it->val);
  it->cap = calloc(nn, sizeof *it->cap);
  it->dims = calloc(nn, sizeof *it->dims);
  it->numel = calloc(nn, sizeof *it->numel);
  it->mark = calloc(nn, 1);
  if (!it->val || !it->cap || !it->dims || !it->numel || !it->mark)
    goto oom;
  bind_batch(it, max_batch);
  for (int id = 0; id < g->nnodes; id++) {
    it->cap[id] = it->numel[id] > 0 ? it->numel[id] : 0;
    it->val[id] = calloc((size_t)it->cap[id] + 1, sizeof(double));
    if (!it->val[id])
      goto oom;
  }
  return it;
oom:
  interp_free(it);
  return NULL;
}

void interp_free(Interp *it) {
  if (!it)
    return;
  if (it->val)
    for (int id = 0; id < it->nnodes; id++)
      free(it->val[id]);
  free(it->val);
  free(it->cap);
  free(it->dims);
  free(it->numel);
  free(it->mark);
  free(it->faulty);
  free(it);
}

int interp_stop_at_faults(Interp *it, bool on) {
  if (on && !it->faulty && !(it->faulty = calloc((size_t)it->nnodes + 1, 1)))
    return -1;
  it->stop_at_faults = on;
  return 0;
}

/* With stop_at_faults: node n's result is not finite. Its origin when every input was finite:
 * the op and its line are named; a leaf is named as the tensor it is. Otherwise it only carries
 * an earlier fault along, which was reported when it happened. */
static int check_fault(Interp *it, const Node *n) {
  const double *v = val(it, n->id);
  int64_t k = 0, m = it->numel[n->id];
  while (k < m && isfinite(v[k]))
    k++;
  it->faulty[n->id] = k < m;
  if (k == m)
    return 0;
  for (int i = 0; i < n->nin; i++)
    if (it->faulty[n->in[i]])
      return 0;
  const char *what = isnan(v[k]) ? "NaN" : "an infinity";
  char where[600] = "";
  if (n->loc.file)
    snprintf(where, sizeof where, "%s:%d:%d: ", n->loc.file->path, n->loc.line, n->loc.col);
  if (n->nin == 0)
    return fail(it, "%s'%s' holds %s at element %lld", where, n->name ? n->name : "?", what,
                (long long)k);
  return fail(it, "%s%s%s%s produced %s at element %lld from finite inputs", where,
              op_names[n->op], n->name ? " " : "", n->name ? n->name : "", what, (long long)k);
}

static void round_f32(double *v, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    v[i] = (double)(float)v[i];
}

/* Evaluates the marked nodes in id order (ids are topological). */
static int run_marked(Interp *it, int64_t batch) {
  if (it->g->nnodes != it->nnodes)
    return fail(it, "the graph has %d nodes but the interpreter was made for %d",
                it->g->nnodes, it->nnodes);
  if (batch < 1 || batch > it->max_batch)
    return fail(it, "batch %lld is outside [1, %lld]", (long long)batch,
                (long long)it->max_batch);
  bind_batch(it, batch);
  for (int id = 0; id < it->nnodes; id++) {
    if (!it->mark[id])
      continue;
    const Node *n = ir_at(it->g, id);
    if (it->numel[id] < 0 || it->numel[id] > it->cap[id])
      return fail(it, "node %d (%s) has %lld elements at batch %lld", id, op_names[n->op],
                  (long long)it->numel[id], (long long)batch);
    if (ref_kernels[n->op](it, n))
      return -1;
    /* Leaves too: a value the driver wrote through interp_data lands in a float buffer in a
     * compiled program. Rounding twice changes nothing. */
    if (it->f32 && n->dtype == DT_F32)
      round_f32(val(it, id), it->numel[id]);
    if (it->stop_at_faults && n->dtype != DT_I32 && check_fault(it, n))
      return -1;
  }
  return 0;
}

int interp_eval(Interp *it, const int *roots, int nroots, int64_t batch, char *err) {
  it->err = err;
  memset(it->mark, 0, (size_t)it->nnodes);
  for (int i = 0; i < nroots; i++) {
    if (roots[i] < 0 || roots[i] >= it->nnodes)
      return fail(it, "no node %d", roots[i]);
    it->mark[roots[i]] = 1;
  }
  for (int id = it->nnodes - 1; id >= 0; id--)
    if (it->mark[id])
      for (int k = 0; k < ir_at(it->g, id)->nin; k++)
        it->mark[ir_at(it->g, id)->in[k]] = 1;
  return run_marked(it, batch);
}

int interp_run(Interp *it, EntryKind e, int64_t batch, char *err) {
  it->err = err;
  if (it->g->nnodes != it->nnodes)
    return run_marked(it, batch); /* reports the mismatch */
  memset(it->mark, 0, (size_t)it->nnodes);
  ir_reachable(it->g, e, it->mark);
  if (run_marked(it, batch))
    return -1;
  /* Capture every update value before assigning any, so `a <- b, b <- a` swaps. */
  const Entry *en = &it->g->entries[e];
  double **tmp = calloc((size_t)en->nupdates + 1, sizeof *tmp);
  if (!tmp)
    return fail(it, "out of memory applying updates");
  int rc = 0;
  for (int u = 0; u < en->nupdates && rc == 0; u++) {
    const Update *up = &en->updates[u];
    if (it->numel[up->value] != it->numel[up->target]) {
      rc = fail(it, "update of %s: %lld values for %lld elements",
                ir_at(it->g, up->target)->name ? ir_at(it->g, up->target)->name : "?",
                (long long)it->numel[up->value], (long long)it->numel[up->target]);
      break;
    }
    size_t bytes = (size_t)it->numel[up->value] * sizeof(double);
    tmp[u] = malloc(bytes + sizeof(double));
    if (!tmp[u])
      rc = fail(it, "out of memory applying updates");
    else
      memcpy(tmp[u], val(it, up->value), bytes);
  }
  for (int u = 0; u < en->nupdates && rc == 0; u++) {
    const Update *up = &en->updates[u];
    memcpy(val(it, up->target), tmp[u], (size_t)it->numel[up->target] * sizeof(double));
  }
  for (int u = 0; u < en->nupdates; u++)
    free(tmp[u]);
  free(tmp);
  return rc;
}

double *interp_data(Interp *it, int node) { return it->val[node]; }

void interp_shape(Interp *it, int node, int64_t *d) {
  for (int k = 0; k < rank(it, node); k++)
    d[k] = it->dims[node][k];
}

int64_t interp_numel(Interp *it, int node) { return it->numel[node]; }

/* ---- the RtBackend ----------------------------------------------------------------------------- */

static int be_run(void *self, int entry, int64_t batch, char *err) {
  Interp *it = self;
  /* The backend's entries table lists the EntryKinds in order (interp_backend). */
  if (entry < 0 || entry >= ENTRY_COUNT) {
    snprintf(err, RT_ERR_LEN, "no entry point %d", entry);
    return -1;
  }
  EntryKind e = (EntryKind)entry;
  return interp_run(it, e, batch, err);
}

/* The driver's n is the tensor's element count at some batch <= the maximum; a node's buffer is
 * dense at the current batch, matching the "leading part" rule of kiln_abi.h. */
static void be_read(void *self, int t, double *out, int64_t n) {
  Interp *it = self;
  int node = it->plan->tensor_node[t];
  int64_t m = n < it->cap[node] ? n : it->cap[node];
  memcpy(out, it->val[node], (size_t)(m > 0 ? m : 0) * sizeof(double));
  for (int64_t i = m > 0 ? m : 0; i < n; i++)
    out[i] = 0.0;
}

static void be_write(void *self, int t, const double *in, int64_t n) {
  Interp *it = self;
  int node = it->plan->tensor_node[t];
  int64_t m = n < it->cap[node] ? n : it->cap[node];
  if (m <= 0)
    return;
  memcpy(it->val[node], in, (size_t)m * sizeof(double));
  if (it->f32 && it->plan->tensors[t].dtype == KILN_F32)
    round_f32(it->val[node], m);
}

static void be_set_allreduce(void *self, void (*fn)(void *, void *, int64_t, int), void *comm) {
  Interp *it = self;
  it->allreduce = fn;
  it->comm = comm;
}

void interp_backend(Interp *it, const Plan *plan, kiln_program *prog, RtBackend *be) {
  it->plan = plan;
  memset(prog, 0, sizeof *prog);
  prog->abi_version = KILN_ABI_VERSION;
  prog->model = it->g->name;
  prog->batch = plan->batch;
  prog->arena_bytes = plan->arena_bytes;
  prog->ntensors = plan->ntensors;
  prog->tensors = plan->tensors;
  for (int e = 0; e < ENTRY_COUNT; e++)
    it->entries[e] = (kiln_entry){entry_names[e], NULL};
  prog->nentries = ENTRY_COUNT;
  prog->entries = it->entries;
  ir_settings(it->g, &it->settings);
  prog->nsettings = it->settings.n;
  prog->settings = it->settings.s;
  memset(be, 0, sizeof *be);
  be->prog = prog;
  be->self = it;
  be->run = be_run;
  be->read = be_read;
  be->write = be_write;
  be->set_allreduce = be_set_allreduce;
}
