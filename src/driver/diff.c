/*
 * diff.c — `kiln diff`: a scalar program's derivatives of any order at a point.
 *
 * The k-th derivative is forward mode applied k times, each application differentiating the
 * nodes the previous one built (forward over forward), with the tangent of the variable a
 * constant 1. Reverse mode gives the same numbers another way: the gradient of the (k−1)-th
 * forward derivative (reverse over forward). Both are ordinary graph transforms
 * (xform/ad_forward.c, xform/autodiff.c); hash-consing and the rewrites at construction
 * (ir/opt.c) keep the graph of a high derivative small, and the f64 reference runtime evaluates
 * it. The program differentiated is the value the model minimizes, in evaluation mode; every
 * other input must have its value in the file.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "driver/driver.h"
#include "runtime.h"
#include "xform/xform.h"

/* Nodes id depends on (itself included): how large a derivative's graph is. */
static int reachable(const Graph *g, int id, unsigned char *mark) {
  memset(mark, 0, (size_t)g->nnodes);
  int n = 0, *stack = kiln_malloc((size_t)g->nnodes * sizeof *stack), top = 0;
  stack[top++] = id;
  mark[id] = 1;
  while (top) {
    const Node *x = ir_at(g, stack[--top]);
    n++;
    for (int i = 0; i < x->nin; i++)
      if (!mark[x->in[i]]) {
        mark[x->in[i]] = 1;
        stack[top++] = x->in[i];
      }
  }
  free(stack);
  return n;
}

/* Builds the derivatives: fwd[k] and rev[k] for k = 0..order (rev[0] unused), -1 for one that
 * is identically zero. */
static void build(Graph *g, int x, int order, int *fwd, int *rev) {
  const Node *xn = ir_at(g, x);
  int one = ir_const(g, 1.0, xn->dtype, xn->loc);
  fwd[0] = g->loss_eval;
  rev[0] = -1;
  for (int k = 1; k <= order; k++) {
    if (fwd[k - 1] < 0) {
      fwd[k] = rev[k] = -1;
      continue;
    }
    ad_forward(g, &x, &one, 1, &fwd[k - 1], 1, &fwd[k]);
    ad_reverse(g, fwd[k - 1], &x, 1, &rev[k]);
  }
}

/* session_fail's -1 as the 1 that every report-writing driver returns on a failure. */
#define REFUSE(...) (session_fail(s, __VA_ARGS__), 1)

int diff_model(Session *s, const char *wrt, double at, int order, FILE *out) {
  Graph *g = s->g;
  if (order < 1 || order > DIFF_MAX_ORDER)
    return REFUSE("--order must be 1 to %d, got %d", DIFF_MAX_ORDER, order);
  int x = ir_find_leaf(g, wrt);
  const Node *xn = x >= 0 ? ir_at(g, x) : NULL;
  if (!xn || (xn->op != OP_INPUT && xn->op != OP_PARAM))
    return REFUSE("--wrt %s: the model has no input or parameter of that name",
                        wrt);
  if (xn->shape.rank != 0 || !dtype_is_float(xn->dtype))
    return REFUSE("--wrt %s: kiln diff differentiates by a floating-point "
                        "scalar, but '%s' is %s of rank %d", wrt, wrt, dtype_name(xn->dtype),
                        xn->shape.rank);
  if (g->loss_eval < 0 || ir_at(g, g->loss_eval)->shape.rank != 0)
    return REFUSE("kiln diff differentiates the scalar the model minimizes");
  int fwd[DIFF_MAX_ORDER + 1], rev[DIFF_MAX_ORDER + 1];
  double t0 = kiln_now();
  Trap t;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    snprintf(s->error, sizeof s->error, "%s", t.msg); /* already a located diagnostic */
    return 1;
  }
  build(g, x, order, fwd, rev);
  kiln_trap_end(&t);
  double built = kiln_now() - t0;
  /* Every input the program reads needs a value: only --wrt gets one here. */
  unsigned char *mark = kiln_malloc((size_t)g->nnodes);
  int *roots = kiln_malloc((size_t)(2 * order + 1) * sizeof *roots), nroots = 0;
  for (int k = 0; k <= order; k++) {
    if (fwd[k] >= 0)
      roots[nroots++] = fwd[k];
    if (k && rev[k] >= 0)
      roots[nroots++] = rev[k];
  }
  for (int r = 0; r < nroots; r++) {
    reachable(g, roots[r], mark);
    for (int i = 0; i < g->nnodes; i++) {
      const Node *n = ir_at(g, i);
      if (mark[i] && n->op == OP_INPUT && i != x) {
        free(mark), free(roots);
        return REFUSE("input '%s' has no value: kiln diff sets only the --wrt "
                            "variable; give the others values in the model (const)", n->name);
      }
    }
  }
  Interp *it = interp_new(g, 1, false);
  if (!it) {
    free(mark), free(roots);
    return REFUSE("out of memory");
  }
  interp_data(it, x)[0] = at;
  char err[RT_ERR_LEN];
  if (interp_eval(it, roots, nroots, 1, err)) {
    interp_free(it), free(mark), free(roots);
    return REFUSE("%s", err);
  }
  /* The forward derivatives compiled as any program is: outputs of the eval entry. */
  double *compiled = kiln_malloc((size_t)(order + 1) * sizeof *compiled), t1 = kiln_now();
  for (int k = 0; k <= order; k++) {
    compiled[k] = fwd[k] < 0 ? 0.0 : NAN;
    if (fwd[k] >= 0)
      ir_add_output(g, ENTRY_EVAL, pool_printf(g->pool, "diff.%d", k), fwd[k],
                    "a derivative (kiln diff)");
  }
  RtBackend be;
  bool have_be = session_load(s) == 0 && rt_arena_backend_new(s->prog, &be, err) == 0;
  double compile_s = kiln_now() - t1;
  if (have_be) {
    int xt = rt_find_tensor(s->prog, wrt);
    if (xt >= 0)
      be.write(be.self, xt, &at, 1);
    if (be.run(be.self, rt_find_entry(s->prog, "eval"), 1, err) == 0)
      for (int k = 0; k <= order; k++) {
        int t = fwd[k] >= 0 ? rt_find_tensor(s->prog, pool_printf(g->pool, "diff.%d", k)) : -1;
        if (t >= 0)
          be.read(be.self, t, &compiled[k], 1);
      }
    rt_arena_backend_free(&be);
  }
  fprintf(out, "diff %s: d^k %s / d%s^k at %s = %.15g (derivatives built in %.3f s", g->name,
          ir_at(g, g->loss_eval)->name ? ir_at(g, g->loss_eval)->name : "loss", wrt, wrt, at,
          built);
  if (have_be)
    fprintf(out, ", compiled in %.3f s)\n", compile_s);
  else
    fprintf(out, "; not compiled: %s)\n", s->error[0] ? s->error : err);
  fprintf(out, "%-6s %-25s %-25s %-25s %s\n", "order", "forward", "reverse", "compiled", "nodes");
  for (int k = 0; k <= order; k++) {
    double f = fwd[k] >= 0 ? interp_data(it, fwd[k])[0] : 0.0;
    fprintf(out, "%-6d %-25.17g ", k, f);
    if (k == 0)
      fprintf(out, "%-25s ", "");
    else
      fprintf(out, "%-25.17g ", rev[k] >= 0 ? interp_data(it, rev[k])[0] : 0.0);
    fprintf(out, "%-25.17g %d\n", compiled[k], fwd[k] >= 0 ? reachable(g, fwd[k], mark) : 0);
  }
  s->error[0] = 0;
  free(compiled);
  interp_free(it);
  free(mark);
  free(roots);
  return 0;
}
