/*
 * cg_fuse.c — printing fused elementwise trees as one loop nest (sched.c decides which nodes
 * fuse and which updates are written in place).
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cg/cg.h"

/* ---------------------------------------------------------------------------------------------
 * Fused trees (sched.c decides them): one loop nest over the root's elements computing the inner
 * nodes in registers and storing only the root. An in-place update's kernel reads the old value of
 * its target through y, element before element. The registers are numbered in the order they are
 * computed (`const float v0`), not after their nodes, so that trees of the same shape print the
 * same kernel and share it (cg_file.c).
 */

bool cg_is_tree(const Cg *cg, const Node *n) { return sched_is_tree(cg->g, cg->s, n->id); }

/* A shape of one element whatever the batch. */
bool cg_is_single(const Shape *s) {
  for (int k = 0; k < s->rank; k++)
    if (s->d[k].sym >= 0 || s->d[k].n != 1)
      return false;
  return true;
}


/* Whether operand x lives in the storage of one of the kernel's outputs (an in-place update's
 * old value): then it is read through that output's pointer. Returns the output's index in
 * ta->out, or ta->nout for the root, or -1. */
static int in_output(const CgTreeArgs *ta, int x) {
  const int64_t *off = ta->cg->plan->offset;
  if (off[x] == off[ta->root->id])
    return ta->nout;
  for (int j = 0; j < ta->nout; j++)
    if (off[x] == off[ta->out[j]])
      return j;
  return -1;
}

void cg_tree_arg(int x, void *arg) {
  CgTreeArgs *ta = arg;
  const Node *xn = ir_at(ta->cg->g, x);
  int *list = ta->id, *count = &ta->n;
  if (is_data_const(xn)) {
    list = ta->dc;
    count = &ta->ndc;
  } else if (!in_arena(xn) || (!ta->all && in_output(ta, x) >= 0)) {
    return;
  }
  for (int i = 0; i < *count; i++)
    if (list[i] == x)
      return;
  KILN_ASSERT(*count < (int)(sizeof ta->id / sizeof ta->id[0]));
  list[(*count)++] = x;
}

static void tree_out(int x, void *arg) {
  CgTreeArgs *ta = arg;
  KILN_ASSERT(ta->nout < SCHED_FUSE_MAX_NODES);
  ta->out[ta->nout++] = x;
}

void cg_tree_args(Cg *cg, const Node *root, CgTreeArgs *ta, bool all) {
  memset(ta, 0, sizeof *ta);
  ta->cg = cg;
  ta->root = root;
  ta->all = all;
  sched_kernel_outputs(cg->g, cg->s, root->id, tree_out, ta);
  sched_kernel_operands(cg->g, cg->s, root->id, cg_tree_arg, ta);
}

static int local_of(const CgTreeArgs *ta, int x) {
  for (int i = 0; i < ta->nlocal; i++)
    if (ta->local[i] == x)
      return i;
  return -1;
}

/* Operand x of a node in the loop, as a primary expression at the current element. */
static const char *tree_opnd(Cg *cg, const CgTreeArgs *ta, int x) {
  const Node *xn = ir_at(cg->g, x);
  int l = local_of(ta, x);
  if (l >= 0)
    return pool_printf(cg->pool, "v%d", l);
  if (is_scalar_const(xn))
    return cg_scalar(cg, xn->attr.value, xn->dtype);
  for (int i = 0; i < ta->ndc; i++)
    if (ta->dc[i] == x)
      return ta->dcelem[i];
  int o = in_output(ta, x);
  if (o >= 0)
    return o == ta->nout ? ta->yelem : ta->outelem[o]; /* same shape (check_plan) */
  for (int i = 0; i < ta->n; i++)
    if (ta->id[i] == x)
      return ta->elem[i];
  unreachable();
}

/* Whether node n's input k is computed in the loop of ta's kernel. */
static bool in_loop(Cg *cg, const CgTreeArgs *ta, const Node *n, int k) {
  return sched_reads(n, k) && sched_in_kernel(cg->s, n->in[k], ta->root->id);
}

/* Computes n into the next register after its inputs in the loop (post-order, each once);
 * returns the register. */
static int tree_value(Cg *cg, CgTreeArgs *ta, const Node *n) {
  for (int k = 0; k < n->nin; k++)
    if (in_loop(cg, ta, n, k) && local_of(ta, n->in[k]) < 0)
      tree_value(cg, ta, ir_at(cg->g, n->in[k]));
  const char *a = tree_opnd(cg, ta, n->in[0]);
  const char *b = n->nin > 1 && sched_reads(n, 1) ? tree_opnd(cg, ta, n->in[1]) : NULL;
  const char *e = cg_expand_template(cg, cg_op_c[n->op], a, b, n->dtype, n->attr.value);
  KILN_ASSERT(ta->nlocal < SCHED_FUSE_MAX_NODES);
  cg_line(cg, "const %s v%d = %s;", ctype(n->dtype), ta->nlocal, e);
  ta->local[ta->nlocal++] = n->id;
  return ta->nlocal - 1;
}

/* The stores of the members the loop writes besides its root. */
static void tree_stores(Cg *cg, CgTreeArgs *ta) {
  for (int j = 0; j < ta->nout; j++)
    cg_line(cg, "%s = v%d;", ta->outelem[j], local_of(ta, ta->out[j]));
}

/* Inner nodes first, each into the next register; the root into y. A loop with several outputs
 * computes every value before it stores any, so that an output written in place of an operand
 * never changes what another value of the same element reads. */
static void tree_node(Cg *cg, CgTreeArgs *ta, const Node *n) {
  if (ta->nout == 0) {
    for (int k = 0; k < n->nin; k++)
      if (in_loop(cg, ta, n, k) && local_of(ta, n->in[k]) < 0)
        tree_value(cg, ta, ir_at(cg->g, n->in[k]));
    const char *a = tree_opnd(cg, ta, n->in[0]);
    const char *b = n->nin > 1 && sched_reads(n, 1) ? tree_opnd(cg, ta, n->in[1]) : NULL;
    cg_line(cg, "%s = %s;", ta->yelem,
            cg_expand_template(cg, cg_op_c[n->op], a, b, n->dtype, n->attr.value));
    return;
  }
  int v = tree_value(cg, ta, n);
  tree_stores(cg, ta);
  cg_line(cg, "%s = v%d;", ta->yelem, v);
}

/* " v0 = %5 mul, v1 = %6 sqrt": the nodes n's loop computes in registers in tree_node's order
 * (those it also stores marked), for the kernel's comment. */
static void tree_comment(Cg *cg, const Node *n, Buf *b, CgTreeArgs *ta) {
  for (int k = 0; k < n->nin; k++)
    if (in_loop(cg, ta, n, k) && local_of(ta, n->in[k]) < 0) {
      const Node *x = ir_at(cg->g, n->in[k]);
      tree_comment(cg, x, b, ta);
      buf_printf(b, "%s v%d = %%%d %s%s", ta->nlocal ? "," : "", ta->nlocal, x->id,
                 op_names[x->op], cg->s->node[x->id].stored ? " (stored)" : "");
      KILN_ASSERT(ta->nlocal < SCHED_FUSE_MAX_NODES);
      ta->local[ta->nlocal++] = x->id;
    }
}

void cg_tree_comment(Cg *cg, const Node *n, Buf *b) {
  CgTreeArgs ta;
  memset(&ta, 0, sizeof ta);
  ta.cg = cg;
  ta.root = n;
  tree_comment(cg, n, b, &ta);
}

/* A tree kernel's operands for a loop nest over shape `it`: ops[0] the root's output (strides
 * left to the caller), then the other outputs z0, z1, ... (of shape it), then the operands in
 * memory x0, x1, ... and the literal arrays, broadcast to it. Returns how many. */
static int tree_operands(Cg *cg, const CgTreeArgs *ta, const Shape *it, Opnd *ops) {
  int nop = 1 + ta->nout + ta->n + ta->ndc;
  KILN_ASSERT(nop <= NEST_MAX_OPS);
  memset(ops, 0, sizeof(Opnd) * NEST_MAX_OPS);
  ops[0].k = -1;
  for (int j = 0; j < ta->nout; j++) {
    Opnd *o = &ops[1 + j];
    o->k = -1;
    o->name = pool_printf(cg->pool, "z%d", j);
    cg_broadcast_strides(cg, it, it, o->stride);
  }
  for (int i = 0; i < ta->n + ta->ndc; i++) {
    bool lit = i >= ta->n;
    const Node *x = ir_at(cg->g, lit ? ta->dc[i - ta->n] : ta->id[i]);
    Opnd *o = &ops[1 + ta->nout + i];
    o->k = 0;
    o->name = lit ? lit_name(cg, x->data) : pool_printf(cg->pool, "x%d", i);
    o->cast = lit ? ctype(x->dtype) : NULL;
    cg_broadcast_strides(cg, &x->shape, it, o->stride);
  }
  return nop;
}

/* One loop nest over the root's elements (the strided printer: every member has the root's
 * shape, leaves are broadcast to it), the loop's body inside. */
void cg_emit_tree(Cg *cg, const Node *n, CgTreeArgs *ta) {
  Sz dims[IR_MAX_RANK];
  for (int k = 0; k < n->shape.rank; k++)
    dims[k] = sz_dim(cg, n->shape.d[k]);
  Opnd ops[NEST_MAX_OPS];
  int nop = tree_operands(cg, ta, &n->shape, ops);
  cg_broadcast_strides(cg, &n->shape, &n->shape, ops[0].stride);
  cg->nest_tasks = cg->s->node[n->id].workers > 1;
  int depth = cg_nest_open(cg, n->shape.rank, dims, nop, ops);
  cg->nest_tasks = false;
  ta->yelem = ops[0].elem;
  for (int j = 0; j < ta->nout; j++)
    ta->outelem[j] = ops[1 + j].elem;
  for (int i = 0; i < ta->n; i++)
    ta->elem[i] = ops[1 + ta->nout + i].elem;
  for (int i = 0; i < ta->ndc; i++)
    ta->dcelem[i] = ops[1 + ta->nout + ta->n + i].elem;
  ta->nlocal = 0;
  tree_node(cg, ta, n);
  cg_nest_close(cg, depth);
}

/* The index inside "name[idx]" or "((T)name[idx])". */
static const char *elem_index(Cg *cg, const char *elem) {
  const char *a = strchr(elem, '['), *b = strrchr(elem, ']');
  KILN_ASSERT(a && b && b > a);
  return pool_strndup(cg->pool, a + 1, (size_t)(b - a - 1));
}

/* An axis of one element: whatever an operand's stride along it, it does not make the operand
 * vary along a run (sched.c's run_operand reads a [1] against [B, 1] as one value). */
static bool unit_axis(const Shape *s, int k) { return s->d[k].sym < 0 && s->d[k].n == 1; }

/* The body of a reduction's run loop at element J of the run: the fused values, the stores, and
 * what is done with the value (`last`, with %s for its register). */
static void reduce_body(Cg *cg, CgTreeArgs *ta, const Node *x, const Sz *const *st, int k0,
                        int rank, const char *J, const char *last) {
  const Shape *xs = &x->shape;
  for (int j = 0; j < ta->nout; j++)
    ta->outelem[j] = pool_printf(cg->pool, "w%d[%s]", j, J);
  /* Elements of the run are loaded up front, unconditionally: a load inside a select (ReLU's
   * gradient) kept gcc from vectorising the run loop. */
  for (int i = 0; i < ta->n + ta->ndc; i++) {
    bool run = false;
    for (int k = k0; k < rank; k++)
      run |= st[1 + ta->nout + i][k].c != 0 && !unit_axis(xs, k);
    const char *e = pool_printf(cg->pool, "h%d", i);
    if (run) {
      bool lit = i >= ta->n;
      DType t = lit ? ir_at(cg->g, ta->dc[i - ta->n])->dtype : ir_at(cg->g, ta->id[i])->dtype;
      cg_line(cg, "const %s e%d = %s%s%sr%d[%s]%s;", ctype(t), i, lit ? "((" : "",
              lit ? ctype(t) : "", lit ? ")" : "", i, J, lit ? ")" : "");
      e = pool_printf(cg->pool, "e%d", i);
    }
    if (i < ta->n)
      ta->elem[i] = e;
    else
      ta->dcelem[i - ta->n] = e;
  }
  ta->nlocal = 0;
  int v = tree_value(cg, ta, x);
  tree_stores(cg, ta);
  cg_line(cg, last, pool_printf(cg->pool, "v%d", v));
}

/* A sum, mean or sum_to of f32 whose input is a fused loop (sched.c): cg_emit_accumulate's run
 * loop (16 partial sums per contiguous run, added in a fixed order, accumulated in double per
 * output), with each element computed in registers instead of read, so the sums are the unfused
 * program's bit for bit. Operands constant along a run (per-channel values) are read once per
 * run; the others and the stored members through pointers to the run. */
void cg_emit_reduce_tree(Cg *cg, const Node *n, CgTreeArgs *ta) {
  const Graph *g = cg->g;
  const Node *x = ir_at(g, n->in[0]);
  const Shape *xs = &x->shape;
  int rank = xs->rank, k0 = sched_reduce_k0(g, n);
  Sz dims[IR_MAX_RANK], yst[IR_MAX_RANK], count = SZ_ONE;
  for (int k = 0; k < rank; k++)
    dims[k] = sz_dim(cg, xs->d[k]);
  if (n->op == OP_SUM_TO) {
    cg_broadcast_strides(cg, &n->shape, xs, yst);
  } else {
    Sz acc = SZ_ONE;
    for (int k = rank - 1; k >= 0; k--) {
      if (n->attr.axes & (1u << k)) {
        yst[k] = SZ_ZERO;
        count = sz_mul(count, dims[k]);
      } else {
        yst[k] = acc;
        acc = sz_mul(acc, dims[k]);
      }
    }
  }
  Opnd ops[NEST_MAX_OPS];
  int nop = tree_operands(cg, ta, xs, ops);
  memcpy(ops[0].stride, yst, sizeof(Sz) * (size_t)rank);
  const Sz *st[NEST_MAX_OPS];
  for (int o = 0; o < nop; o++)
    st[o] = ops[o].stride;
  const char *numel = sz_c(cg, sz_prod(cg, &n->shape, 0, n->shape.rank));
  Sz run = sz_prod(cg, xs, k0, rank);
  const char *L = sz_c(cg, run);
  cg_line(cg, "double *restrict acc = (double *)scratch;");
  cg_line(cg, "for (int64_t i = 0; i < %s; i++)", numel);
  cg_line(cg, "  acc[i] = 0;");
  KILN_ASSERT(nop < NEST_MAX_OPS);
  Opnd *runs = &ops[nop];
  bool tasks = cg_runs_open(cg, n, k0, dims, run, numel, runs);
  int depth = cg_nest_open(cg, k0, dims, nop + tasks, ops);
  cg_line(cg, "{");
  cg->indent++;
  for (int j = 0; j < ta->nout; j++)
    cg_line(cg, "%s *restrict w%d = z%d + %s;", ctype(n->dtype), j, j,
            elem_index(cg, ops[1 + j].elem));
  for (int i = 0; i < ta->n + ta->ndc; i++) {
    const Opnd *op = &ops[1 + ta->nout + i];
    bool run = false;
    for (int k = k0; k < rank; k++)
      run |= op->stride[k].c != 0 && !unit_axis(xs, k);
    if (!run)
      cg_line(cg, "const %s h%d = %s;", ctype(n->dtype), i, op->elem);
    else
      cg_line(cg, "const %s *restrict r%d = %s + %s;",
              i < ta->n ? ctype(n->dtype) : "double", i, op->name, elem_index(cg, op->elem));
  }
  cg_line(cg, "double ps[16] = {0};");
  cg_line(cg, "int64_t j = 0;");
  /* Sixteen values into t, then into the partial sums: as one loop (a select, the stores and the
   * sums together) gcc left it scalar. */
  cg_line(cg, "for (; j + 16 <= %s; j += 16) {", L);
  cg_line(cg, "  %s t[16];", ctype(n->dtype));
  cg_line(cg, "  for (int u = 0; u < 16; u++) {");
  cg->indent += 2;
  reduce_body(cg, ta, x, st, k0, rank, "j + u", "t[u] = %s;");
  cg->indent -= 2;
  cg_line(cg, "  }");
  cg_line(cg, "  for (int u = 0; u < 16; u++)");
  cg_line(cg, "    ps[u] += (double)t[u];");
  cg_line(cg, "}");
  cg_line(cg, "for (int u = 0; u < 8; u++)");
  cg_line(cg, "  ps[u] += ps[u + 8];");
  cg_line(cg, "double s = ((ps[0] + ps[1]) + (ps[2] + ps[3])) + ((ps[4] + ps[5]) + (ps[6] + ps[7]));");
  cg_line(cg, "for (; j < %s; j++) {", L);
  cg->indent++;
  reduce_body(cg, ta, x, st, k0, rank, "j", "s += (double)%s;");
  cg->indent--;
  cg_line(cg, "}");
  if (tasks)
    cg_line(cg, "%s = s;", runs->elem);
  else
    cg_line(cg, "acc%s += s;", ops[0].elem + 1);
  cg->indent--;
  cg_line(cg, "}");
  cg_nest_close(cg, depth);
  if (tasks)
    cg_runs_close(cg, k0, dims, &ops[0], runs);
  cg_line(cg, "for (int64_t i = 0; i < %s; i++)", numel);
  if (n->op == OP_MEAN)
    cg_line(cg, "  y[i] = (%s)(acc[i] / (double)%s);", ctype(n->dtype), sz_c(cg, count));
  else
    cg_line(cg, "  y[i] = (%s)acc[i];", ctype(n->dtype));
}
