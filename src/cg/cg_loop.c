/*
 * cg_loop.c — what every emitter prints with: sizes known up to the batch (Sz: c * B^p, printed
 * as `600`, `B` or `(784*B)`), identifiers and literals (the only model-file text that reaches
 * the C: numbers printed with %.17g and re-validated identifiers), operands, and the strided
 * loop-nest printer that elementwise ops, broadcasts, reductions and fused trees go through. It
 * merges contiguous axes, so the common same-shape case is one flat loop.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cg/cg.h"

/* ---------------------------------------------------------------------------------------------
 * Sizes known up to the batch: c * B^p.
 */

Sz sz_dim(const Cg *cg, Dim d) {
  if (d.sym < 0)
    return (Sz){d.n, 0};
  if (d.sym == 0)
    return (Sz){d.n, 1};
  return (Sz){d.n * cg->plan->symvals[d.sym], 0};
}

/* Product of dims [from, to) of s. */
Sz sz_prod(const Cg *cg, const Shape *s, int from, int to) {
  Sz r = SZ_ONE;
  for (int k = from; k < to; k++)
    r = sz_mul(r, sz_dim(cg, s->d[k]));
  return r;
}

/* Strings printed into the generated code live in the emit's pool (a few bytes each). */
const char *sz_c(const Cg *cg, Sz s) {
  if (s.p == 0)
    return pool_printf(cg->pool, "%" PRId64, s.c);
  Buf b = {.pool = cg->pool};
  if (s.c == 1 && s.p == 1)
    buf_puts(&b, "B");
  else {
    buf_puts(&b, "(");
    if (s.c != 1)
      buf_printf(&b, "%" PRId64 "*", s.c);
    for (int i = 0; i < s.p; i++)
      buf_puts(&b, i ? "*B" : "B");
    buf_puts(&b, ")");
  }
  const char *r = pool_strdup(cg->pool, b.p);
  buf_free(&b);
  return r;
}

/* ---------------------------------------------------------------------------------------------
 * Identifiers and literals.
 */

/* Whether s may appear in the generated C (string literals and, with '.' replaced, names). */
bool cg_ident_ok(const char *s) {
  if (!s || !((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
    return false;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
          *p == '_' || *p == '.'))
      return false;
  return strlen(s) <= 200;
}

/* A name that must reach the C (tensor names in the table): fails unless it validates. */
void cg_checked_name(Cg *cg, const char *s, Loc loc, const char *what) {
  (void)cg;
  if (!cg_ident_ok(s))
    kiln_fail(loc, "%s name is not a valid identifier ([A-Za-z_][A-Za-z0-9_.]*)", what);
}

/* "fc1.weight" -> "fc1_weight" (caller validated s). */
const char *cg_c_ident(Cg *cg, const char *s) {
  char *r = pool_strdup(cg->pool, s);
  for (char *p = r; *p; p++)
    if (*p == '.')
      *p = '_';
  return r;
}

/* A double as C source: %.17g round-trips exactly; non-finite values as math.h macros. */
const char *cg_dbl(Cg *cg, double v) {
  if (isnan(v))
    return "NAN";
  if (isinf(v))
    return v > 0 ? "INFINITY" : "-INFINITY";
  return pool_printf(cg->pool, "%.17g", v);
}


/* ---------------------------------------------------------------------------------------------
 * Output helpers.
 */
void cg_line(Cg *cg, const char *fmt, ...) {
  for (int i = 0; i < cg->indent; i++)
    buf_puts(cg->out, "  ");
  va_list ap;
  va_start(ap, fmt);
  buf_vprintf(cg->out, fmt, ap);
  va_end(ap);
  buf_puts(cg->out, "\n");
}

/* ---------------------------------------------------------------------------------------------
 * Operands. A kernel's input is an arena tensor (a pointer parameter a, b, c, ...), a scalar
 * constant (printed as a literal) or a literal array (read from a static double array).
 */
const char *const cg_param_names[IR_MAX_IN] = {"a", "b", "c", "d"};


const char *cg_scalar(Cg *cg, double v, DType t) {
  return pool_printf(cg->pool, "((%s)%s)", ctype(t), cg_dbl(cg, v));
}

/* Element `idx` (a C expression) of input k of n, in the input's own type. */
const char *cg_in_at(Cg *cg, const Node *n, int k, const char *idx) {
  const Node *x = ir_at(cg->g, n->in[k]);
  if (is_scalar_const(x))
    return cg_scalar(cg, x->attr.value, x->dtype);
  if (is_data_const(x))
    return pool_printf(cg->pool, "((%s)%s[%s])", ctype(x->dtype), lit_name(cg, x->data), idx);
  return pool_printf(cg->pool, "%s[%s]", cg_param_names[k], idx);
}


/* Contiguous (row-major) stride of axis k of s. */
Sz cg_stride_of(const Cg *cg, const Shape *s, int k) { return sz_prod(cg, s, k + 1, s->rank); }

/* Strides for reading `in` broadcast (NumPy: right-aligned, 1 stretches) over iteration `it`. */
void cg_broadcast_strides(const Cg *cg, const Shape *in, const Shape *it, Sz *st) {
  int off = it->rank - in->rank;
  for (int k = 0; k < it->rank; k++) {
    int ki = k - off;
    if (ki < 0 || !dim_eq(in->d[ki], it->d[k]))
      st[k] = SZ_ZERO;
    else
      st[k] = cg_stride_of(cg, in, ki);
  }
}

/* Opens loops over dims[0..rank) and sets each operand's element expression; ops[0] is the one the
 * nest stores. Axes of size one are dropped and neighbouring axes merged when every operand is
 * contiguous across them, so equal shapes give one flat loop. Returns the number of loops to
 * close. */
int cg_nest_open(Cg *cg, int rank, const Sz *dims, int nop, Opnd *ops) {
  Sz d[IR_MAX_RANK], st[NEST_MAX_OPS][IR_MAX_RANK];
  int r = 0;
  KILN_ASSERT(nop <= NEST_MAX_OPS);
  for (int k = 0; k < rank; k++) {
    if (sz_is_one(dims[k]))
      continue;
    bool merge = r > 0;
    for (int o = 0; merge && o < nop; o++)
      merge = sz_eq(st[o][r - 1], sz_mul(ops[o].stride[k], dims[k]));
    if (merge) {
      d[r - 1] = sz_mul(d[r - 1], dims[k]);
      for (int o = 0; o < nop; o++)
        st[o][r - 1] = ops[o].stride[k];
      continue;
    }
    d[r] = dims[k];
    for (int o = 0; o < nop; o++)
      st[o][r] = ops[o].stride[k];
    r++;
  }
  /* A nest storing a value its innermost loop does not change (a broadcast, such as an expand of
   * per-channel values over an image): LLVM unrolled the loop around that one completely, to
   * hundreds of vector stores in one block, and took half a second over an 8-line kernel. */
  bool invariant = r >= 2;
  for (int o = 1; o < nop; o++)
    invariant = invariant && st[o][r - 1].c == 0;
  for (int k = 0; k < r; k++) {
    if (k == 0 && cg->nest_tasks && r > 0) {
      /* Tasks of `block` outer iterations, about NEST_TASK_ELEMENTS elements each. */
      int64_t inner = cg->nest_task_scale > 0 ? cg->nest_task_scale : 1;
      for (int j = 1; j < r; j++)
        inner *= d[j].p ? d[j].c * cg->plan->batch : d[j].c;
      int64_t block = NEST_TASK_ELEMENTS / (inner > 0 ? inner : 1);
      block = block < 1 ? 1 : block > 64 ? block / 64 * 64 : block;
      cg->nest_task_count = pool_printf(cg->pool, "(%s + %" PRId64 ") / %" PRId64, sz_c(cg, d[0]),
                                        block - 1, block);
      cg_tasks_open(cg, "t");
      cg->nest_tasks = false; /* consumed: this nest's tasks only */
      cg->nest_task_scale = 1;
      cg_line(cg, "const int64_t lo = t*%" PRId64 ", hi = %s - lo < %" PRId64 " ? %s : lo + %" PRId64
                  ";", block, sz_c(cg, d[0]), block, sz_c(cg, d[0]), block);
      if (invariant && k == r - 2)
        cg_line(cg, "KILN_NO_UNROLL");
      cg_line(cg, "for (int64_t i0 = lo; i0 < hi; i0++) {");
      cg->indent++;
      continue;
    }
    if (invariant && k == r - 2)
      cg_line(cg, "KILN_NO_UNROLL");
    cg_line(cg, "for (int64_t i%d = 0; i%d < %s; i%d++) {", k, k, sz_c(cg, d[k]), k);
    cg->indent++;
  }
  for (int o = 0; o < nop; o++) {
    Buf b = {.pool = cg->pool};
    for (int k = 0; k < r; k++) {
      if (st[o][k].c == 0)
        continue;
      if (b.len)
        buf_puts(&b, " + ");
      if (sz_is_one(st[o][k]))
        buf_printf(&b, "i%d", k);
      else
        buf_printf(&b, "i%d*%s", k, sz_c(cg, st[o][k]));
    }
    const char *idx = b.len ? b.p : "0";
    if (ops[o].name && ops[o].cast)
      ops[o].elem = pool_printf(cg->pool, "((%s)%s[%s])", ops[o].cast, ops[o].name, idx);
    else if (ops[o].name)
      ops[o].elem = pool_printf(cg->pool, "%s[%s]", ops[o].name, idx);
    else if (ops[o].k < 0)
      ops[o].elem = pool_printf(cg->pool, "y[%s]", idx);
    else
      ops[o].elem = cg_in_at(cg, ops[o].n, ops[o].k, idx);
    buf_free(&b);
  }
  return r;
}

void cg_nest_close(Cg *cg, int depth) {
  while (depth-- > 0) {
    cg->indent--;
    cg_line(cg, "}");
  }
  if (cg->nest_task_count) {
    cg_tasks_close(cg, cg->nest_task_count, NULL, 0);
    cg->nest_task_count = NULL;
  }
}

bool cg_runs_open(Cg *cg, const Node *n, int k0, const Sz *dims, Sz run, const char *numel,
                  Opnd *runs) {
  bool tasks = cg->s->node[n->id].workers > 1;
  if (tasks) {
    /* Named through scratch, a parameter, since tasks see no local of the kernel. */
    *runs = (Opnd){.k = -1, .name = pool_printf(cg->pool, "((double *)(void *)scratch + %s)", numel)};
    Sz st = SZ_ONE;
    for (int k = k0 - 1; k >= 0; k--) {
      runs->stride[k] = st;
      st = sz_mul(st, dims[k]);
    }
  }
  cg->nest_tasks = tasks;
  if (tasks)
    cg->nest_task_scale = run.p ? run.c * cg->plan->batch : run.c;
  return tasks;
}

void cg_runs_close(Cg *cg, int k0, const Sz *dims, const Opnd *y, const Opnd *runs) {
  cg->nest_tasks = false; /* unconsumed when the nest had no loop */
  cg->nest_task_scale = 1;
  Opnd sum[2] = {*y, *runs};
  sum[0].name = "acc";
  int d = cg_nest_open(cg, k0, dims, 2, sum);
  cg_line(cg, "%s += %s;", sum[0].elem, sum[1].elem);
  cg_nest_close(cg, d);
}
