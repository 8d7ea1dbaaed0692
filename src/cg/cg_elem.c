/*
 * cg_elem.c — emitters of the ops that are not windows: elementwise maps with broadcasting,
 * reductions (f32 sums accumulated in double), matmul (the plain i-k-j nest, or a call of the
 * blocked GEMM when the schedule says so), cross entropy, softmax, dropout and layout ops.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cg/cg.h"

/* The C spelling of each elementwise op, tinygrad-renderer style: $a, $b are the operands, $f
 * the math.h suffix of the result type, $t its C type, $v the node's attr.value in that type. */
const char *const cg_op_c[OP_COUNT] = {
    [OP_ADD] = "$a + $b",
    [OP_SUB] = "$a - $b",
    [OP_MUL] = "$a * $b",
    [OP_DIV] = "$a / $b",
    [OP_POW] = "pow$f($a, $b)",
    [OP_RELU_GRAD] = "$a > 0 ? $b : ($t)0",
    [OP_NEG] = "-$a",
    [OP_EXP] = "exp$f($a)",
    [OP_LOG] = "log$f($a)",
    [OP_SQRT] = "sqrt$f($a)",
    [OP_RELU] = "$a > 0 ? $a : ($t)0",
    [OP_EXPAND] = "$a",
    [OP_SIGMOID] = "($t)1 / (($t)1 + exp$f(-$a))",
    [OP_TANH] = "tanh$f($a)",
    [OP_LEAKY_RELU] = "$a > 0 ? $a : $v * $a",
    [OP_LEAKY_RELU_GRAD] = "$a > 0 ? $b : $v * $b",
    [OP_BCE_LOGITS] = "($a > 0 ? $a : ($t)0) - $a * $b + log1p$f(exp$f(-fabs$f($a)))",
    [OP_SIN] = "sin$f($a)",
    [OP_COS] = "cos$f($a)",
    [OP_ATAN] = "atan$f($a)",
    [OP_ERF] = "erf$f($a)",
    [OP_SIGN] = "$a > 0 ? ($t)1 : $a < 0 ? ($t)-1 : ($t)0",
    [OP_SOFTPLUS] = "$a > 20 ? $a : log1p$f(exp$f($a))",
    [OP_MAXIMUM] = "$a != $a || $a > $b ? $a : $b",
};

const char *cg_expand_template(Cg *cg, const char *tpl, const char *a, const char *b,
                                   DType t, double v) {
  Buf o = {.pool = cg->pool};
  for (const char *p = tpl; *p; p++) {
    if (*p != '$' || !p[1]) {
      buf_printf(&o, "%c", *p);
      continue;
    }
    p++;
    if (*p == 'a' || *p == 'b') {
      /* Operands are element reads (a[i]) or parenthesised literals: primary expressions. */
      buf_puts(&o, *p == 'a' ? a : b ? b : "0");
    }
    else if (*p == 'f')
      buf_puts(&o, mathsfx(t));
    else if (*p == 't')
      buf_puts(&o, ctype(t));
    else if (*p == 'v')
      buf_puts(&o, cg_scalar(cg, v, t));
    else
      unreachable();
  }
  const char *r = pool_strdup(cg->pool, o.p);
  buf_free(&o);
  return r;
}

/* Elementwise ops with broadcasting (and EXPAND, which is the identity broadcast). */
void cg_emit_map(Cg *cg, const Node *n) {
  const Graph *g = cg->g;
  int nread = n->op == OP_EXPAND ? 1 : n->nin;
  Sz dims[IR_MAX_RANK];
  for (int k = 0; k < n->shape.rank; k++)
    dims[k] = sz_dim(cg, n->shape.d[k]);
  Opnd ops[IR_MAX_IN + 1];
  memset(ops, 0, sizeof ops);
  ops[0].k = -1;
  cg_broadcast_strides(cg, &n->shape, &n->shape, ops[0].stride);
  for (int i = 0; i < nread; i++) {
    ops[i + 1].n = n;
    ops[i + 1].k = i;
    cg_broadcast_strides(cg, &ir_at(g, n->in[i])->shape, &n->shape, ops[i + 1].stride);
  }
  int depth = cg_nest_open(cg, n->shape.rank, dims, nread + 1, ops);
  const char *e = cg_expand_template(cg, cg_op_c[n->op], ops[1].elem, nread > 1 ? ops[2].elem : NULL,
                                  n->dtype, n->attr.value);
  cg_line(cg, "%s = %s;", ops[0].elem, e);
  cg_nest_close(cg, depth);
}

/* TRANSPOSE: out axis i is input axis perm[i]; one strided nest over the output. */
void cg_emit_transpose(Cg *cg, const Node *n) {
  const Shape *xs = &ir_at(cg->g, n->in[0])->shape;
  Sz dims[IR_MAX_RANK];
  Opnd ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].k = -1;
  cg_broadcast_strides(cg, &n->shape, &n->shape, ops[0].stride);
  ops[1].n = n;
  ops[1].k = 0;
  for (int i = 0; i < n->shape.rank; i++) {
    dims[i] = sz_dim(cg, n->shape.d[i]);
    ops[1].stride[i] = cg_stride_of(cg, xs, n->attr.perm[i]);
  }
  int depth = cg_nest_open(cg, n->shape.rank, dims, 2, ops);
  cg_line(cg, "%s = %s;", ops[0].elem, ops[1].elem);
  cg_nest_close(cg, depth);
}

/* Zeroes y (numel elements). */
void cg_emit_zero(Cg *cg, const Node *n) {
  cg_line(cg, "for (int64_t i = 0; i < %s; i++)", sz_c(cg, sz_prod(cg, &n->shape, 0, n->shape.rank)));
  cg_line(cg, "  y[i] = 0;");
}

/* Accumulates x = input 0 into y over x's shape, y's stride per x axis given, and divides by
 * div (a C expression) when it is not NULL. An f32 sum is kept in double in scratch (see
 * reduce_scratch) and rounded once at the end, as the reference does: batch norm sums tens of
 * thousands of terms per channel, and a float running sum loses ~n*eps of them, which its
 * backward pass then turns into errors far above the check's tolerance. */
static void cg_emit_accumulate(Cg *cg, const Node *n, const Sz *ystride, const char *div) {
  const Shape *xs = &ir_at(cg->g, n->in[0])->shape;
  Sz dims[IR_MAX_RANK];
  for (int k = 0; k < xs->rank; k++)
    dims[k] = sz_dim(cg, xs->d[k]);
  Opnd ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].k = -1;
  memcpy(ops[0].stride, ystride, sizeof(Sz) * (size_t)xs->rank);
  ops[1].n = n;
  ops[1].k = 0;
  cg_broadcast_strides(cg, xs, xs, ops[1].stride);
  const char *numel = sz_c(cg, sz_prod(cg, &n->shape, 0, n->shape.rank));
  bool wide = n->dtype == DT_F32;
  if (wide) {
    cg_line(cg, "double *restrict acc = (double *)scratch;");
    cg_line(cg, "for (int64_t i = 0; i < %s; i++)", numel);
    cg_line(cg, "  acc[i] = 0;");
  } else {
    cg_emit_zero(cg, n);
  }
  /* The trailing axes that are all summed over form one contiguous run of x per output: it is
   * summed into 16 partial sums (one 512-bit vector of doubles twice), added up in a fixed
   * order, instead of one running sum whose 4-cycle add latency bounds the loop (batch norm's
   * statistics sum Ho*Wo elements per channel and image). */
  int k0 = xs->rank;
  while (k0 > 0 && ystride[k0 - 1].c == 0)
    k0--;
  Sz run = sz_prod(cg, xs, k0, xs->rank);
  if (wide && in_arena(ir_at(cg->g, n->in[0])) && k0 < xs->rank && (run.p > 0 || run.c >= 32)) {
    bool tasks = cg_runs_open(cg, n, k0, dims, run, numel, &ops[2]);
    int depth = cg_nest_open(cg, k0, dims, 2 + tasks, ops);
    const char *xe = ops[1].elem; /* "a[idx]" */
    const char *L = sz_c(cg, run);
    cg_line(cg, "{");
    cg->indent++;
    cg_line(cg, "const float *restrict xr = a + %.*s;", (int)strlen(xe) - 3, xe + 2);
    cg_line(cg, "double ps[16] = {0};");
    cg_line(cg, "int64_t j = 0;");
    cg_line(cg, "for (; j + 16 <= %s; j += 16)", L);
    cg_line(cg, "  for (int u = 0; u < 16; u++)");
    cg_line(cg, "    ps[u] += (double)xr[j + u];");
    cg_line(cg, "for (int u = 0; u < 8; u++)");
    cg_line(cg, "  ps[u] += ps[u + 8];");
    cg_line(cg, "double s = ((ps[0] + ps[1]) + (ps[2] + ps[3])) + ((ps[4] + ps[5]) + (ps[6] + ps[7]));");
    cg_line(cg, "for (; j < %s; j++)", L);
    cg_line(cg, "  s += (double)xr[j];");
    if (tasks)
      cg_line(cg, "%s = s;", ops[2].elem);
    else
      cg_line(cg, "acc%s += s;", ops[0].elem + 1);
    cg->indent--;
    cg_line(cg, "}");
    cg_nest_close(cg, depth);
    if (tasks)
      cg_runs_close(cg, k0, dims, &ops[0], &ops[2]);
  } else {
    int depth = cg_nest_open(cg, xs->rank, dims, 2, ops);
    if (wide)
      cg_line(cg, "acc%s += (double)%s;", ops[0].elem + 1, ops[1].elem); /* y[i] -> acc[i] */
    else
      cg_line(cg, "%s += %s;", ops[0].elem, ops[1].elem);
    cg_nest_close(cg, depth);
  }
  if (wide) {
    cg_line(cg, "for (int64_t i = 0; i < %s; i++)", numel);
    if (div)
      cg_line(cg, "  y[i] = (%s)(acc[i] / (double)%s);", ctype(n->dtype), div);
    else
      cg_line(cg, "  y[i] = (%s)acc[i];", ctype(n->dtype));
  } else if (div) {
    cg_line(cg, "for (int64_t i = 0; i < %s; i++)", numel);
    cg_line(cg, "  y[i] /= (%s)%s;", ctype(n->dtype), div);
  }
}

/* SUM and MEAN over attr.axes. */
void cg_emit_reduce(Cg *cg, const Node *n) {
  const Shape *xs = &ir_at(cg->g, n->in[0])->shape;
  Sz yst[IR_MAX_RANK], count = SZ_ONE;
  Sz acc = SZ_ONE;
  for (int k = xs->rank - 1; k >= 0; k--) {
    if (n->attr.axes & (1u << k)) {
      yst[k] = SZ_ZERO;
      count = sz_mul(count, sz_dim(cg, xs->d[k]));
    } else {
      yst[k] = acc;
      acc = sz_mul(acc, sz_dim(cg, xs->d[k]));
    }
  }
  cg_emit_accumulate(cg, n, yst, n->op == OP_MEAN ? sz_c(cg, count) : NULL);
}

/* SUM_TO(x, like): sums x down to like's shape (n->shape), undoing a broadcast. */
void cg_emit_sum_to(Cg *cg, const Node *n) {
  const Shape *xs = &ir_at(cg->g, n->in[0])->shape;
  Sz yst[IR_MAX_RANK];
  cg_broadcast_strides(cg, &n->shape, xs, yst);
  cg_emit_accumulate(cg, n, yst, NULL);
}

/* NUMEL(x): a number known from the shape alone. */
void cg_emit_numel(Cg *cg, const Node *n) {
  const Shape *xs = &ir_at(cg->g, n->in[0])->shape;
  Sz c = SZ_ONE;
  for (int k = 0; k < xs->rank; k++)
    if (n->attr.axes & (1u << k))
      c = sz_mul(c, sz_dim(cg, xs->d[k]));
  cg_line(cg, "y[0] = (%s)%s;", ctype(n->dtype), sz_c(cg, c));
}

/* RESHAPE: same bytes. Only reached when the plan did not alias it to its input. */
void cg_emit_reshape(Cg *cg, const Node *n) {
  const Node *x = ir_at(cg->g, n->in[0]);
  Sz numel = sz_prod(cg, &n->shape, 0, n->shape.rank);
  if (in_arena(x)) {
    cg_line(cg, "memcpy(y, a, (size_t)%s * sizeof *y);", sz_c(cg, numel));
    return;
  }
  cg_line(cg, "for (int64_t i = 0; i < %s; i++)", sz_c(cg, numel));
  cg_line(cg, "  y[i] = %s;", cg_in_at(cg, n, 0, "i"));
}

/* MATMUL: y[M,N] = op(a)[M,K] @ op(b)[K,N]. Large products call the blocked GEMM of cg_gemm.c.
 * Small ones keep the plain schedule: i-k-j, so the inner loop runs along contiguous rows of b
 * and y and vectorises; i-j-k with a running sum when b is transposed (then both a row and b's
 * "column" are contiguous in k). */
void cg_emit_matmul(Cg *cg, const Node *n) {
  const Node *a = ir_at(cg->g, n->in[0]), *b = ir_at(cg->g, n->in[1]);
  bool ta = n->attr.trans_a, tb = n->attr.trans_b;
  Sz M = sz_dim(cg, n->shape.d[0]), N = sz_dim(cg, n->shape.d[1]);
  Sz K = sz_dim(cg, a->shape.d[ta ? 0 : 1]);
  const char *m = sz_c(cg, M), *nn = sz_c(cg, N), *k = sz_c(cg, K);
  const NodeSched *ns = &cg->s->node[n->id];
  const char *lda = sz_c(cg, sz_dim(cg, a->shape.d[1])), *ldb = sz_c(cg, sz_dim(cg, b->shape.d[1]));
  if (ns->gemm && ns->workers > 1) {
    /* Tasks of `block` rows (of y and op(a)) or columns (of y and op(b)), each in its worker's
     * slot of the scratch. */
    const char *d = ns->split ? nn : m, *t0 = ns->split ? "j0" : "i0";
    cg_line(cg, "scratch += (64 - (uintptr_t)scratch %% 64) %% 64;");
    cg_tasks_open(cg, "t");
    cg_line(cg, "const int64_t %s = t*%" PRId64 ", len = %s - %s < %" PRId64 " ? %s - %s : %" PRId64
                ";", t0, ns->block, d, t0, ns->block, d, t0, ns->block);
    if (ns->split)
      cg_line(cg, "%s(%s, len, %s, a, %s, %d, b + %s, %s, %d, y + j0, %s, scratch + worker*%" PRId64
                  ");", cg_gemm_name(n->dtype), m, k, lda, ta,
              tb ? pool_printf(cg->pool, "j0*%s", ldb) : "j0", ldb, tb, nn,
              sched_matmul_slot_bytes(cg->s, cg->g, n));
    else
      cg_line(cg, "%s(len, %s, %s, a + %s, %s, %d, b, %s, %d, y + i0*%s, %s, scratch + worker*%" PRId64
                  ");", cg_gemm_name(n->dtype), nn, k,
              ta ? "i0" : pool_printf(cg->pool, "i0*%s", lda), lda, ta, ldb, tb, nn, nn,
              sched_matmul_slot_bytes(cg->s, cg->g, n));
    cg_tasks_close(cg, pool_printf(cg->pool, "(%s + %" PRId64 ") / %" PRId64, d, ns->block - 1,
                                   ns->block), NULL, 0);
    return;
  }
  if (ns->gemm) {
    /* The blocked GEMM (cg_gemm.c); rows of a and b are their second dimension apart. */
    cg_line(cg, "%s(%s, %s, %s, a, %s, %d, b, %s, %d, y, %s, scratch);", cg_gemm_name(n->dtype), m,
         nn, k, lda, ta, ldb, tb, nn);
    return;
  }
  const char *aik = cg_in_at(cg, n, 0, ta ? pool_printf(cg->pool, "p*%s + i", m)
                                        : pool_printf(cg->pool, "i*%s + p", k));
  const char *bkj = cg_in_at(cg, n, 1, tb ? pool_printf(cg->pool, "j*%s + p", k)
                                        : pool_printf(cg->pool, "p*%s + j", nn));
  (void)b;
  if (!tb) {
    cg_line(cg, "for (int64_t i = 0; i < %s; i++) {", m);
    cg_line(cg, "  for (int64_t j = 0; j < %s; j++)", nn);
    cg_line(cg, "    y[i*%s + j] = 0;", nn);
    cg_line(cg, "  for (int64_t p = 0; p < %s; p++) {", k);
    cg_line(cg, "    const %s s = %s;", ctype(n->dtype), aik);
    cg_line(cg, "    for (int64_t j = 0; j < %s; j++)", nn);
    cg_line(cg, "      y[i*%s + j] += s * %s;", nn, bkj);
    cg_line(cg, "  }");
    cg_line(cg, "}");
  } else {
    cg_line(cg, "for (int64_t i = 0; i < %s; i++)", m);
    cg_line(cg, "  for (int64_t j = 0; j < %s; j++) {", nn);
    cg_line(cg, "    %s s = 0;", ctype(n->dtype));
    cg_line(cg, "    for (int64_t p = 0; p < %s; p++)", k);
    cg_line(cg, "      s += %s * %s;", aik, bkj);
    cg_line(cg, "    y[i*%s + j] = s;", nn);
    cg_line(cg, "  }");
  }
}

/* The per-row part shared by the loss and its gradient: m = max of row i, s = sum exp(x - m),
 * both in double, and t = the label. */
static void cg_emit_ce_row(Cg *cg, const Node *n, const char *C) {
  const char *xi0 = cg_in_at(cg, n, 0, pool_printf(cg->pool, "i*%s", C));
  const char *xij = cg_in_at(cg, n, 0, pool_printf(cg->pool, "i*%s + j", C));
  cg_line(cg, "double m = (double)%s;", xi0);
  cg_line(cg, "for (int64_t j = 1; j < %s; j++)", C);
  cg_line(cg, "  if ((double)%s > m) m = (double)%s;", xij, xij);
  cg_line(cg, "double s = 0;");
  cg_line(cg, "for (int64_t j = 0; j < %s; j++)", C);
  cg_line(cg, "  s += exp((double)%s - m);", xij);
  cg_line(cg, "const int64_t t = (int64_t)%s;", cg_in_at(cg, n, 1, "i"));
}

/* CROSS_ENTROPY(logits[N,C], labels[N]): mean of logsumexp - logit[label], stable (max
 * subtracted). A label outside [0, C) is never used as an index: the loss becomes NaN, which is
 * the program's error flag for bad labels. */
void cg_emit_cross_entropy(Cg *cg, const Node *n) {
  const Shape *ls = &ir_at(cg->g, n->in[0])->shape;
  const char *N = sz_c(cg, sz_dim(cg, ls->d[0])), *C = sz_c(cg, sz_dim(cg, ls->d[1]));
  cg_line(cg, "double total = 0;");
  cg_line(cg, "int bad = 0;");
  cg_line(cg, "for (int64_t i = 0; i < %s; i++) {", N);
  cg->indent++;
  cg_emit_ce_row(cg, n, C);
  cg_line(cg, "if (t < 0 || t >= %s) {", C);
  cg_line(cg, "  bad = 1;");
  cg_line(cg, "  continue;");
  cg_line(cg, "}");
  cg_line(cg, "total += m + log(s) - (double)%s;",
       cg_in_at(cg, n, 0, pool_printf(cg->pool, "i*%s + t", C)));
  cg->indent--;
  cg_line(cg, "}");
  cg_line(cg, "y[0] = bad ? (%s)NAN : (%s)(total / (double)%s);", ctype(n->dtype), ctype(n->dtype), N);
}

/* CROSS_ENTROPY_GRAD(logits, labels, dy) = dy * (softmax - onehot) / N; rows with a bad label
 * become NaN. */
void cg_emit_cross_entropy_grad(Cg *cg, const Node *n) {
  const Shape *ls = &ir_at(cg->g, n->in[0])->shape;
  const char *N = sz_c(cg, sz_dim(cg, ls->d[0])), *C = sz_c(cg, sz_dim(cg, ls->d[1]));
  const char *T = ctype(n->dtype);
  cg_line(cg, "const double g = (double)%s / (double)%s;", cg_in_at(cg, n, 2, "0"), N);
  cg_line(cg, "for (int64_t i = 0; i < %s; i++) {", N);
  cg->indent++;
  cg_emit_ce_row(cg, n, C);
  cg_line(cg, "const int ok = t >= 0 && t < %s;", C);
  cg_line(cg, "for (int64_t j = 0; j < %s; j++)", C);
  cg_line(cg, "  y[i*%s + j] = ok ? (%s)(g * (exp((double)%s - m) / s - (double)(j == t))) : (%s)NAN;",
       C, T, cg_in_at(cg, n, 0, pool_printf(cg->pool, "i*%s + j", C)), T);
  cg->indent--;
  cg_line(cg, "}");
}

/* ---------------------------------------------------------------------------------------------
 * Normalised exponentials, dropout and layout.
 */

/* "k" when s is one, else "k*s": a loop index scaled by a stride. */
static const char *cg_scaled(const Cg *cg, const char *k, Sz s) {
  if (sz_is_one(s))
    return k;
  return pool_printf(cg->pool, "%s*%s", k, sz_c(cg, s));
}

/* SOFTMAX / LOG_SOFTMAX along attr.axis: x seen as rows [outer, len, inner] (element (o, k, b)
 * at (o*len + k)*inner + b). Like the reference, each row is shifted by its maximum and summed
 * in double, so an f32 result is the reference's rounded to float. */
void cg_emit_softmax(Cg *cg, const Node *n) {
  const Shape *xs = &ir_at(cg->g, n->in[0])->shape;
  int ax = n->attr.axis;
  Sz outer = sz_prod(cg, xs, 0, ax), len = sz_dim(cg, xs->d[ax]);
  Sz inner = sz_prod(cg, xs, ax + 1, xs->rank);
  const char *T = ctype(n->dtype);
  const char *at = pool_printf(cg->pool, "base + %s", cg_scaled(cg, "k", inner));
  const char *xk = cg_in_at(cg, n, 0, at);
  cg_line(cg, "for (int64_t o = 0; o < %s; o++)", sz_c(cg, outer));
  cg_line(cg, "  for (int64_t b = 0; b < %s; b++) {", sz_c(cg, inner));
  cg->indent += 2;
  cg_line(cg, "const int64_t base = %s + b;", cg_scaled(cg, "o", sz_mul(len, inner)));
  cg_line(cg, "double m = -INFINITY, s = 0;");
  cg_line(cg, "for (int64_t k = 0; k < %s; k++)", sz_c(cg, len));
  cg_line(cg, "  m = (double)%s > m ? (double)%s : m;", xk, xk);
  cg_line(cg, "for (int64_t k = 0; k < %s; k++)", sz_c(cg, len));
  cg_line(cg, "  s += exp((double)%s - m);", xk);
  if (n->op == OP_LOG_SOFTMAX) {
    cg_line(cg, "const double ls = log(s);");
    cg_line(cg, "for (int64_t k = 0; k < %s; k++)", sz_c(cg, len));
    cg_line(cg, "  y[%s] = (%s)((double)%s - m - ls);", at, T, xk);
  } else {
    cg_line(cg, "for (int64_t k = 0; k < %s; k++)", sz_c(cg, len));
    cg_line(cg, "  y[%s] = (%s)(exp((double)%s - m) / s);", at, T, xk);
  }
  cg->indent -= 2;
  cg_line(cg, "  }");
}

/* DROPOUT(x, counter): the reference's mask, kiln_dropout_uniform(salt, counter, flat index)
 * >= p, and its scaling done in double, so both sides drop and scale the same elements
 * bit for bit. The flat index of an element does not depend on the batch, so a smaller batch's
 * mask is the leading part of the full one. */
void cg_emit_dropout(Cg *cg, const Node *n) {
  const char *p = cg_dbl(cg, n->attr.value);
  cg_line(cg, "const double counter = (double)%s;", cg_in_at(cg, n, 1, "0"));
  cg_line(cg, "for (int64_t i = 0; i < %s; i++)", sz_c(cg, sz_prod(cg, &n->shape, 0, n->shape.rank)));
  cg_line(cg, "  y[i] = kiln_dropout_uniform(%" PRIu32 "u, counter, i) >= %s ? (%s)((double)%s / (1.0 - %s)) : (%s)0;",
       n->attr.salt, p, ctype(n->dtype), cg_in_at(cg, n, 0, "i"), p, ctype(n->dtype));
}

/* ALLREDUCE: x, then summed over a data-parallel run's processes by the driver's collective
 * (kiln_exec.allreduce); x itself in one process. */
void cg_emit_allreduce(Cg *cg, const Node *n) {
  const char *count = sz_c(cg, sz_prod(cg, &n->shape, 0, n->shape.rank));
  cg_line(cg, "for (int64_t i = 0; i < %s; i++)", count);
  cg_line(cg, "  y[i] = %s;", cg_in_at(cg, n, 0, "i"));
  cg_line(cg, "if (ex && ex->allreduce)");
  cg_line(cg, "  ex->allreduce(ex->comm, y, %s, %d);", count, n->dtype == DT_F64 ? KILN_F64 : KILN_F32);
}

/* RANDN(like, counter): the reference's samples, computed in double and rounded once. */
void cg_emit_randn(Cg *cg, const Node *n) {
  cg_line(cg, "const double counter = (double)%s;", cg_in_at(cg, n, 1, "0"));
  cg_line(cg, "for (int64_t i = 0; i < %s; i++)", sz_c(cg, sz_prod(cg, &n->shape, 0, n->shape.rank)));
  cg_line(cg, "  y[i] = (%s)kiln_normal(%" PRIu32 "u, counter, i);", ctype(n->dtype), n->attr.salt);
}

/* CONCAT(a, b) along attr.axis: each outer row of y is a's row followed by b's. */
void cg_emit_concat(Cg *cg, const Node *n) {
  int ax = n->attr.axis;
  const Shape *as = &ir_at(cg->g, n->in[0])->shape, *bs = &ir_at(cg->g, n->in[1])->shape;
  Sz outer = sz_prod(cg, &n->shape, 0, ax), inner = sz_prod(cg, &n->shape, ax + 1, n->shape.rank);
  Sz ra = sz_mul(sz_dim(cg, as->d[ax]), inner), rb = sz_mul(sz_dim(cg, bs->d[ax]), inner);
  Sz ry = sz_mul(sz_dim(cg, n->shape.d[ax]), inner);
  cg_line(cg, "for (int64_t o = 0; o < %s; o++) {", sz_c(cg, outer));
  cg_line(cg, "  for (int64_t k = 0; k < %s; k++)", sz_c(cg, ra));
  cg_line(cg, "    y[%s + k] = %s;", cg_scaled(cg, "o", ry),
       cg_in_at(cg, n, 0, pool_printf(cg->pool, "%s + k", cg_scaled(cg, "o", ra))));
  cg_line(cg, "  for (int64_t k = 0; k < %s; k++)", sz_c(cg, rb));
  cg_line(cg, "    y[%s + %s + k] = %s;", cg_scaled(cg, "o", ry), sz_c(cg, ra),
       cg_in_at(cg, n, 1, pool_printf(cg->pool, "%s + k", cg_scaled(cg, "o", rb))));
  cg_line(cg, "}");
}

/* SLICE: attr.len entries from attr.start along attr.axis (a constant axis). */
void cg_emit_slice(Cg *cg, const Node *n) {
  int ax = n->attr.axis;
  const Shape *xs = &ir_at(cg->g, n->in[0])->shape;
  Sz outer = sz_prod(cg, xs, 0, ax), inner = sz_prod(cg, xs, ax + 1, xs->rank);
  Sz rx = sz_mul(sz_dim(cg, xs->d[ax]), inner), ry = sz_mul((Sz){n->attr.len, 0}, inner);
  Sz off = sz_mul((Sz){n->attr.start, 0}, inner);
  cg_line(cg, "for (int64_t o = 0; o < %s; o++)", sz_c(cg, outer));
  cg_line(cg, "  for (int64_t k = 0; k < %s; k++)", sz_c(cg, ry));
  cg_line(cg, "    y[%s + k] = %s;", cg_scaled(cg, "o", ry),
       cg_in_at(cg, n, 0, pool_printf(cg->pool, "%s + %s + k", cg_scaled(cg, "o", rx),
                                   sz_c(cg, off))));
}


/* An index read as an int64 (the inputs are i32). */
static const char *index_at(Cg *cg, const Node *n, int k, const char *at) {
  return pool_printf(cg->pool, "(int64_t)%s", cg_in_at(cg, n, k, at));
}

void cg_emit_one_hot(Cg *cg, const Node *n) {
  const Shape *ls = &ir_at(cg->g, n->in[0])->shape;
  int64_t C = n->attr.len;
  const char *T = ctype(n->dtype);
  cg_line(cg, "for (int64_t k = 0; k < %s; k++) {", sz_c(cg, sz_prod(cg, ls, 0, ls->rank)));
  cg_line(cg, "  const int64_t t = %s;", index_at(cg, n, 0, "k"));
  cg_line(cg, "  for (int64_t c = 0; c < %" PRId64 "; c++)", C);
  cg_line(cg, "    y[k * %" PRId64 " + c] = t < 0 || t >= %" PRId64 " ? (%s)NAN : (%s)(c == t);", C,
          C, T, T);
  cg_line(cg, "}");
}

/* gather and its adjoint over [outer, axis, inner] blocks: the index's axis has ilen entries,
 * the data's len. */
static void gather_loops(Cg *cg, const Node *n, const Shape *xs) {
  int ax = n->attr.axis;
  const Shape *is = &ir_at(cg->g, n->in[1])->shape;
  cg_line(cg, "for (int64_t o = 0; o < %s; o++)", sz_c(cg, sz_prod(cg, xs, 0, ax)));
  cg_line(cg, "  for (int64_t j = 0; j < %s; j++)", sz_c(cg, sz_dim(cg, is->d[ax])));
  cg_line(cg, "    for (int64_t i = 0; i < %s; i++) {", sz_c(cg, sz_prod(cg, xs, ax + 1, xs->rank)));
  cg_line(cg, "      const int64_t at = (o * %s + j) * %s + i;", sz_c(cg, sz_dim(cg, is->d[ax])),
          sz_c(cg, sz_prod(cg, xs, ax + 1, xs->rank)));
}

void cg_emit_gather(Cg *cg, const Node *n) {
  const Shape *xs = &ir_at(cg->g, n->in[0])->shape;
  int ax = n->attr.axis;
  const char *len = sz_c(cg, sz_dim(cg, xs->d[ax])), *inner = sz_c(cg, sz_prod(cg, xs, ax + 1, xs->rank));
  gather_loops(cg, n, xs);
  cg_line(cg, "      const int64_t t = %s;", index_at(cg, n, 1, "at"));
  cg_line(cg, "      y[at] = t >= 0 && t < %s ? %s : (%s)NAN;", len,
          cg_in_at(cg, n, 0, pool_printf(cg->pool, "(o * %s + t) * %s + i", len, inner)),
          ctype(n->dtype));
  cg_line(cg, "    }");
}

void cg_emit_gather_grad(Cg *cg, const Node *n) {
  const Shape *xs = &n->shape;
  int ax = n->attr.axis;
  const char *len = sz_c(cg, sz_dim(cg, xs->d[ax])), *inner = sz_c(cg, sz_prod(cg, xs, ax + 1, xs->rank));
  cg_line(cg, "for (int64_t k = 0; k < %s; k++)", sz_c(cg, sz_prod(cg, xs, 0, xs->rank)));
  cg_line(cg, "  y[k] = 0;");
  gather_loops(cg, n, xs);
  cg_line(cg, "      const int64_t t = %s;", index_at(cg, n, 1, "at"));
  cg_line(cg, "      if (t >= 0 && t < %s)", len);
  cg_line(cg, "        y[(o * %s + t) * %s + i] += %s;", len, inner, cg_in_at(cg, n, 0, "at"));
  cg_line(cg, "    }");
}

void cg_emit_leaf(Cg *cg, const Node *n) {
  (void)cg;
  (void)n;
}
