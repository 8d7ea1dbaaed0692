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


void cg_tree_arg(int x, void *arg) {
  CgTreeArgs *ta = arg;
  const Node *xn = ir_at(ta->cg->g, x);
  int *list = ta->id, *count = &ta->n;
  if (is_data_const(xn)) {
    list = ta->dc;
    count = &ta->ndc;
  } else if (!in_arena(xn) ||
             (!ta->all && ta->cg->plan->offset[x] == ta->cg->plan->offset[ta->root->id])) {
    return;
  }
  for (int i = 0; i < *count; i++)
    if (list[i] == x)
      return;
  KILN_ASSERT(*count < (int)(sizeof ta->id / sizeof ta->id[0]));
  list[(*count)++] = x;
}

void cg_tree_args(Cg *cg, const Node *root, CgTreeArgs *ta) {
  memset(ta, 0, sizeof *ta);
  ta->cg = cg;
  ta->root = root;
  sched_kernel_operands(cg->g, cg->s, root->id, cg_tree_arg, ta);
}

/* Operand x of a node in the tree, as a primary expression at the current element. */
static const char *tree_opnd(Cg *cg, const CgTreeArgs *ta, int x) {
  const Node *xn = ir_at(cg->g, x);
  for (int i = 0; i < ta->nlocal; i++)
    if (ta->local[i] == x)
      return pool_printf(cg->pool, "v%d", i);
  if (is_scalar_const(xn))
    return cg_scalar(cg, xn->attr.value, xn->dtype);
  for (int i = 0; i < ta->ndc; i++)
    if (ta->dc[i] == x)
      return ta->dcelem[i];
  if (cg->plan->offset[x] == cg->plan->offset[ta->root->id])
    return ta->yelem;  /* same shape as y (check_plan) */
  for (int i = 0; i < ta->n; i++)
    if (ta->id[i] == x)
      return ta->elem[i];
  unreachable();
}

/* Inner nodes first (post-order), each into the next register; the root into y. */
static void tree_node(Cg *cg, CgTreeArgs *ta, const Node *n) {
  for (int k = 0; k < n->nin; k++)
    if (is_fused(cg, n->in[k]))
      tree_node(cg, ta, ir_at(cg->g, n->in[k]));
  const char *a = tree_opnd(cg, ta, n->in[0]);
  const char *b = n->nin > 1 ? tree_opnd(cg, ta, n->in[1]) : NULL;
  const char *e = cg_expand_template(cg, cg_op_c[n->op], a, b, n->dtype, n->attr.value);
  if (n == ta->root) {
    cg_line(cg, "%s = %s;", ta->yelem, e);
    return;
  }
  KILN_ASSERT(ta->nlocal < SCHED_FUSE_MAX_NODES);
  cg_line(cg, "const %s v%d = %s;", ctype(n->dtype), ta->nlocal, e);
  ta->local[ta->nlocal++] = n->id;
}

/* " v0 = %5 mul, v1 = %6 sqrt": the fused inner nodes of n's tree in tree_node's order, for the
 * kernel's comment; *count numbers them. */
static void tree_comment(Cg *cg, const Node *n, Buf *b, int *count) {
  for (int k = 0; k < n->nin; k++)
    if (is_fused(cg, n->in[k])) {
      const Node *x = ir_at(cg->g, n->in[k]);
      tree_comment(cg, x, b, count);
      buf_printf(b, "%s v%d = %%%d %s", *count ? "," : "", *count, x->id, op_names[x->op]);
      ++*count;
    }
}

void cg_tree_comment(Cg *cg, const Node *n, Buf *b) {
  int count = 0;
  tree_comment(cg, n, b, &count);
}

/* One loop nest over the root's elements (the strided printer: every inner node has the root's
 * shape, leaves are broadcast to it), the tree's body inside. */
void cg_emit_tree(Cg *cg, const Node *n, CgTreeArgs *ta) {
  const Graph *g = cg->g;
  Sz dims[IR_MAX_RANK];
  for (int k = 0; k < n->shape.rank; k++)
    dims[k] = sz_dim(cg, n->shape.d[k]);
  Opnd ops[NEST_MAX_OPS];
  int nop = 1 + ta->n + ta->ndc;
  KILN_ASSERT(nop <= NEST_MAX_OPS);
  memset(ops, 0, sizeof ops);
  ops[0].k = -1;
  cg_broadcast_strides(cg, &n->shape, &n->shape, ops[0].stride);
  for (int i = 0; i < ta->n + ta->ndc; i++) {
    bool lit = i >= ta->n;
    const Node *x = ir_at(g, lit ? ta->dc[i - ta->n] : ta->id[i]);
    Opnd *o = &ops[1 + i];
    o->k = 0;
    o->name = lit ? lit_name(cg, x->data) : pool_printf(cg->pool, "x%d", i);
    o->cast = lit ? ctype(x->dtype) : NULL;
    cg_broadcast_strides(cg, &x->shape, &n->shape, o->stride);
  }
  int depth = cg_nest_open(cg, n->shape.rank, dims, nop, ops);
  ta->yelem = ops[0].elem;
  for (int i = 0; i < ta->n; i++)
    ta->elem[i] = ops[1 + i].elem;
  for (int i = 0; i < ta->ndc; i++)
    ta->dcelem[i] = ops[1 + ta->n + i].elem;
  ta->nlocal = 0;
  tree_node(cg, ta, n);
  cg_nest_close(cg, depth);
}
