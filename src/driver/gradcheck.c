/*
 * gradcheck.c — `kiln gradcheck`: the model's derivatives checked three independent ways, in
 * float64 on the reference runtime (seed 004's debugging table: "incorrect gradients → finite
 * differences").
 *
 * 1. Reverse mode against central finite differences of the loss, on a seeded sample of every
 *    parameter's elements.
 * 2. Directional derivatives along random directions: forward mode (jvp.loss) against reverse
 *    mode (∇L·v, which must agree to rounding) and against a finite difference along v.
 * 3. The adjoint identity ⟨J·v, w⟩ = ⟨v, Jᵀ·w⟩ for every op of the training graph, at the values
 *    the model gives its inputs: each op is rebuilt alone in a small graph whose leaves hold those
 *    values, its tangent rule gives J·v and its vector-Jacobian rule Jᵀ·w. A rule that is wrong
 *    for one op at one shape shows here with the op's name and model line, even when the model's
 *    loss happens not to expose it.
 * The first failure is named: the parameter and element, or the op and its line.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "driver/driver.h"
#include "runtime.h"
#include "xform/xform.h"

enum { SAMPLES_PER_PARAM = 6, DIRECTIONS = 3 };
static const double fd_step = 1e-6;

typedef struct Check {
  Session *s;
  Graph *g;
  Interp *it;
  RtBackend be;
  int loss;          /* the objective the grad entry differentiates */
  int jvp;           /* its directional derivative (forward mode) */
  int64_t batch;
  FILE *out;
  bool failed;
  char first[512];   /* the first failure, for the summary */
} Check;

static void fail_first(Check *c, const char *fmt, ...) KILN_PRINTF(2, 3);
static void fail_first(Check *c, const char *fmt, ...) {
  if (c->failed)
    return;
  c->failed = true;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->first, sizeof c->first, fmt, ap);
  va_end(ap);
}

static int entry_output(const Graph *g, EntryKind e, const char *name) {
  const Entry *en = &g->entries[e];
  for (int i = 0; i < en->noutputs; i++)
    if (!strcmp(en->outputs[i].name, name))
      return en->outputs[i].node;
  return -1;
}

/* Evaluates roots (nodes of the model) at the interpreter's current leaf values. */
static int eval(Check *c, const int *roots, int n) {
  char err[RT_ERR_LEN];
  if (interp_eval(c->it, roots, n, c->batch, err))
    return session_fail(c->s, "reference runtime: %s", err);
  return 0;
}

static double loss_at(Check *c, int *rc) {
  *rc |= eval(c, &c->loss, 1);
  return interp_data(c->it, c->loss)[0];
}

/* Parameters and state from their initialisers (the seed), inputs uniform in [0, 1) and labels
 * below their classes, tangents uniform in [-1, 1]. */
static void set_values(Check *c, uint64_t seed) {
  const Plan *p = &c->s->plan;
  RtRng r;
  rt_rng_seed(&r, rt_hash_name(seed, "kiln gradcheck"));
  double *buf = NULL;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    int64_t n = rt_numel(t, p->batch);
    buf = kiln_realloc(buf, (size_t)(n ? n : 1) * sizeof *buf);
    if (t->role == KILN_ROLE_INPUT && !strncmp(t->name, "tangent.", 8)) {
      for (int64_t k = 0; k < n; k++)
        buf[k] = 2 * rt_rng_uniform(&r) - 1;
    } else if (t->role == KILN_ROLE_INPUT && t->dtype == KILN_I32) {
      uint64_t classes = (uint64_t)check_label_classes(c->g, p, p->tensor_node[i]);
      for (int64_t k = 0; k < n; k++)
        buf[k] = (double)rt_rng_below(&r, classes);
    } else if (t->role == KILN_ROLE_INPUT) {
      for (int64_t k = 0; k < n; k++)
        buf[k] = t->init == KILN_INIT_DATA && t->data ? t->data[k] : rt_rng_uniform(&r);
    } else if (t->role != KILN_ROLE_OUTPUT) {
      rt_init_tensor(t, seed, buf, n);
    } else {
      continue;
    }
    c->be.write(c->be.self, i, buf, n);
  }
  free(buf);
}

/* 1. Reverse mode against central differences on a sample of each parameter's elements. */
static int check_parameters(Check *c, uint64_t seed) {
  Graph *g = c->g;
  RtRng r;
  rt_rng_seed(&r, rt_hash_name(seed, "kiln gradcheck samples"));
  fprintf(c->out, "%-28s %9s %14s %14s\n", "parameter", "sampled", "max |fd - g|", "/ tolerance");
  int rc = 0;
  for (int i = 0; i < g->nparams && !rc; i++) {
    int p = g->params[i], gr = g->grads[i];
    const Node *pn = ir_at(g, p);
    if (gr < 0)
      continue; /* frozen */
    rc |= eval(c, &gr, 1);
    int64_t n = interp_numel(c->it, p);
    double *grad = kiln_malloc((size_t)n * sizeof *grad), scale = 0;
    memcpy(grad, interp_data(c->it, gr), (size_t)n * sizeof *grad);
    for (int64_t k = 0; k < n; k++)
      scale = fmax(scale, fabs(grad[k]));
    int m = n < SAMPLES_PER_PARAM ? (int)n : SAMPLES_PER_PARAM;
    double worst = 0, worst_ratio = 0;
    for (int j = 0; j < m && !rc; j++) {
      int64_t k = n <= SAMPLES_PER_PARAM ? j : (int64_t)rt_rng_below(&r, (uint64_t)n);
      double *v = interp_data(c->it, p), keep = v[k];
      v[k] = keep + fd_step;
      double up = loss_at(c, &rc);
      v[k] = keep - fd_step;
      double down = loss_at(c, &rc);
      v[k] = keep;
      double fd = (up - down) / (2 * fd_step), err = fabs(fd - grad[k]);
      double tol = 1e-8 + 1e-5 * (fabs(grad[k]) + scale);
      worst = fmax(worst, err);
      worst_ratio = fmax(worst_ratio, err / tol);
      if (!(err <= tol))
        fail_first(c, "parameter '%s' element %lld: reverse mode %.10g, finite difference %.10g",
                   pn->name, (long long)k, grad[k], fd);
    }
    fprintf(c->out, "%-28s %4d of %-6lld %10.3g %14.3g%s\n", pn->name, m, (long long)n, worst,
            worst_ratio, worst_ratio <= 1 ? "" : "  FAILED");
    free(grad);
  }
  return rc;
}

/* θ += step·v for the parameters that train, v their tangent inputs. */
static void move(Check *c, double step) {
  Graph *g = c->g;
  for (int i = 0; i < g->nparams; i++) {
    if (g->grads[i] < 0)
      continue;
    const char *name = pool_printf(g->pool, "tangent.%s", ir_at(g, g->params[i])->name);
    const double *v = interp_data(c->it, ir_find_leaf(g, name));
    double *th = interp_data(c->it, g->params[i]);
    for (int64_t k = 0; k < interp_numel(c->it, g->params[i]); k++)
      th[k] += step * v[k];
  }
}

/* 2. Along random directions: forward mode, reverse mode and a finite difference. */
static int check_directions(Check *c, uint64_t seed) {
  Graph *g = c->g;
  const Plan *p = &c->s->plan;
  RtRng r;
  rt_rng_seed(&r, rt_hash_name(seed, "kiln gradcheck directions"));
  int rc = 0;
  fprintf(c->out, "%-10s %20s %20s %20s\n", "direction", "forward (jvp)", "reverse (grad.v)",
          "finite difference");
  for (int d = 0; d < DIRECTIONS && !rc; d++) {
    for (int i = 0; i < p->ntensors; i++) { /* a fresh direction in the tangent inputs */
      const kiln_tensor *t = &p->tensors[i];
      if (t->role != KILN_ROLE_INPUT || strncmp(t->name, "tangent.", 8))
        continue;
      double *v = interp_data(c->it, p->tensor_node[i]);
      for (int64_t k = 0; k < rt_numel(t, p->batch); k++)
        v[k] = 2 * rt_rng_uniform(&r) - 1;
    }
    rc |= eval(c, &c->jvp, 1);
    double fwd = interp_data(c->it, c->jvp)[0], rev = 0;
    for (int i = 0; i < g->nparams && !rc; i++) {
      if (g->grads[i] < 0)
        continue;
      const char *name = pool_printf(g->pool, "tangent.%s", ir_at(g, g->params[i])->name);
      const double *v = interp_data(c->it, ir_find_leaf(g, name));
      rc |= eval(c, &g->grads[i], 1);
      const double *gr = interp_data(c->it, g->grads[i]);
      for (int64_t k = 0; k < interp_numel(c->it, g->params[i]); k++)
        rev += v[k] * gr[k];
    }
    /* L(θ + h·v) − L(θ − h·v), then back to θ */
    move(c, fd_step);
    double fd = loss_at(c, &rc);
    move(c, -2 * fd_step);
    fd -= loss_at(c, &rc);
    move(c, fd_step);
    fd /= 2 * fd_step;
    bool modes = fabs(fwd - rev) <= 1e-10 * (1 + fabs(rev));
    bool finite = fabs(fd - rev) <= 1e-5 * (1 + fabs(rev));
    fprintf(c->out, "%-10d %20.12g %20.12g %20.12g%s\n", d + 1, fwd, rev, fd,
            modes && finite ? "" : "  FAILED");
    if (!modes)
      fail_first(c, "direction %d: forward mode %.15g, reverse mode %.15g", d + 1, fwd, rev);
    else if (!finite)
      fail_first(c, "direction %d: reverse mode %.15g, finite difference %.15g", d + 1, rev, fd);
  }
  return rc;
}

/* 3. ⟨J·v, w⟩ against ⟨v, Jᵀ·w⟩ for op node n of the model, at its inputs' values. Returns the
 * relative disagreement, or -1 when the op has no input to differentiate. */
static double adjoint_gap(Check *c, const Node *n, RtRng *r, int *rc) {
  Graph *h = ir_new("adjoint");
  Trap t;
  double gap = -1;
  Interp *it = NULL;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    interp_free(it);
    ir_free(h);
    *rc = session_fail(c->s, "adjoint identity of %s: %s", op_names[n->op], t.msg);
    return -1;
  }
  int in[IR_MAX_IN], wrt[IR_MAX_IN], tan[IR_MAX_IN], nw = 0;
  int y = ir_isolate(h, c->g, n, in);
  for (int i = 0; i < n->nin; i++) {
    const Node *x = ir_at(h, in[i]);
    if (dtype_is_float(x->dtype)) {
      wrt[nw] = in[i];
      tan[nw++] = ir_leaf(h, OP_INPUT, ROLE_INPUT, pool_printf(h->pool, "v%d", i), x->dtype,
                          x->shape, n->loc);
    }
  }
  const Node *yn = ir_at(h, y);
  if (nw == 0 || !dtype_is_float(yn->dtype)) {
    kiln_trap_end(&t);
    ir_free(h);
    return -1;
  }
  int w = ir_leaf(h, OP_INPUT, ROLE_INPUT, "w", yn->dtype, yn->shape, n->loc);
  unsigned all = yn->shape.rank ? (1u << yn->shape.rank) - 1 : 0;
  int jv, jt[IR_MAX_IN];
  ad_forward(h, wrt, tan, nw, &y, 1, &jv);
  int yw = ir_binary(h, OP_MUL, y, w, n->loc);
  int s = yn->shape.rank ? ir_reduce(h, OP_SUM, yw, all, false, n->loc) : yw;
  ad_reverse(h, s, wrt, nw, jt);
  kiln_trap_end(&t);

  it = interp_new(h, c->batch, false);
  if (!it) {
    ir_free(h);
    *rc = session_fail(c->s, "out of memory");
    return -1;
  }
  for (int i = 0; i < n->nin; i++)
    memcpy(interp_data(it, in[i]), interp_data(c->it, n->in[i]),
           (size_t)interp_numel(it, in[i]) * sizeof(double));
  for (int k = 0; k < nw; k++)
    for (int64_t e = 0; e < interp_numel(it, tan[k]); e++)
      interp_data(it, tan[k])[e] = 2 * rt_rng_uniform(r) - 1;
  for (int64_t e = 0; e < interp_numel(it, w); e++)
    interp_data(it, w)[e] = 2 * rt_rng_uniform(r) - 1;
  int roots[1 + IR_MAX_IN], nr = 0;
  if (jv >= 0)
    roots[nr++] = jv;
  for (int k = 0; k < nw; k++)
    if (jt[k] >= 0)
      roots[nr++] = jt[k];
  char err[RT_ERR_LEN];
  if (nr && interp_eval(it, roots, nr, c->batch, err)) {
    *rc = session_fail(c->s, "adjoint identity of %s: %s", op_names[n->op], err);
  } else {
    double lhs = 0, rhs = 0, mag = 0;
    if (jv >= 0)
      for (int64_t e = 0; e < interp_numel(it, w); e++) {
        lhs += interp_data(it, jv)[e] * interp_data(it, w)[e];
        mag += fabs(interp_data(it, jv)[e] * interp_data(it, w)[e]);
      }
    for (int k = 0; k < nw; k++)
      if (jt[k] >= 0)
        for (int64_t e = 0; e < interp_numel(it, tan[k]); e++) {
          rhs += interp_data(it, tan[k])[e] * interp_data(it, jt[k])[e];
          mag += fabs(interp_data(it, tan[k])[e] * interp_data(it, jt[k])[e]);
        }
    gap = fabs(lhs - rhs) / (mag > 0 ? mag : 1);
    if (!isfinite(lhs) && !isfinite(rhs))
      gap = 0; /* both sides meet the same inf or NaN: nothing to compare */
  }
  interp_free(it);
  ir_free(h);
  return gap;
}

static int check_adjoints(Check *c, uint64_t seed) {
  Graph *g = c->g;
  RtRng r;
  rt_rng_seed(&r, rt_hash_name(seed, "kiln gradcheck adjoints"));
  unsigned char *mark = kiln_malloc((size_t)g->nnodes);
  memset(mark, 0, (size_t)g->nnodes);
  ir_reachable(g, ENTRY_GRAD, mark);
  int *roots = kiln_malloc((size_t)g->nnodes * sizeof *roots), nroots = 0, rc = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (mark[i] && !op_is_leaf(ir_at(g, i)->op))
      roots[nroots++] = i;
  rc = eval(c, roots, nroots);
  int checked = 0, worst_at = -1;
  double worst = 0;
  for (int k = 0; k < nroots && !rc; k++) {
    const Node *n = ir_at(g, roots[k]);
    if (!ad_has_vjp(n->op) || !ad_has_jvp(n->op))
      continue;
    double gap = adjoint_gap(c, n, &r, &rc);
    if (gap < 0)
      continue;
    checked++;
    if (gap > worst || worst_at < 0)
      worst = gap, worst_at = n->id;
    if (!(gap <= 1e-10))
      fail_first(c, "op %s (%%%d) at %s:%d: <J v, w> and <v, J^T w> differ by %.3g relative",
                 op_names[n->op], n->id, n->loc.file ? n->loc.file->path : "?", n->loc.line,
                 gap);
  }
  if (!rc && worst_at >= 0) {
    const Node *n = ir_at(g, worst_at);
    fprintf(c->out, "adjoint identity <J v, w> = <v, J^T w>: %d ops, worst %.3g relative (%s at "
            "line %d)%s\n", checked, worst, op_names[n->op], n->loc.line,
            worst <= 1e-10 ? "" : "  FAILED");
  }
  free(mark);
  free(roots);
  return rc;
}

int gradcheck_model(Session *s, uint64_t seed, FILE *out) {
  Check c = {.s = s, .g = s->g, .out = out};
  if (session_reference(s, 64, &c.be))
    return 1;
  c.it = s->ref;
  c.batch = s->plan.batch;
  c.loss = entry_output(c.g, ENTRY_GRAD, "loss");
  c.jvp = entry_output(c.g, ENTRY_GRAD, "jvp.loss");
  if (c.loss < 0 || c.jvp < 0) {
    session_fail(s, "gradcheck needs the grad entry with jvp.loss (open the session with the "
                 "jvp option)");
    return 1;
  }
  fprintf(out, "gradcheck %s: batch %lld, seed %llu, float64 reference runtime, finite "
          "differences with h = %g\n", c.g->name, (long long)c.batch, (unsigned long long)seed,
          fd_step);
  set_values(&c, seed);
  if (check_parameters(&c, seed) || check_directions(&c, seed) || check_adjoints(&c, seed))
    return 1;
  if (c.failed) {
    fprintf(out, "gradcheck: FAILED: %s\n", c.first);
    return 1;
  }
  fprintf(out, "gradcheck: OK\n");
  return 0;
}
