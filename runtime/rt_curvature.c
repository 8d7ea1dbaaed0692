/*
 * rt_curvature.c — Hessian-vector products of a program built with them (kiln's hvp option: the
 * grad entry reads "tangent.<param>" and writes "hvp.<param>"), over the concatenated parameters
 * that train, and the largest eigenvalue by power iteration. `kiln curvature` and a trainer's
 * --curvature-every both use it. The grad entry also advances running statistics and the dropout
 * counter; every persistent tensor that is not a parameter is saved before and put back after,
 * so measuring the curvature never changes the training.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

struct RtHvp {
  RtBackend *be;
  const kiln_program *p;
  int grad_e;
  int64_t batch;
  int np, *tangent, *out;
  int64_t *len, n;
  int nsaved, *saved;
  double *saved_vals;
};

int rt_hvp_open(RtHvp **out, RtBackend *be, int64_t batch, char *err) {
  const kiln_program *p = be->prog;
  RtHvp *h = calloc(1, sizeof *h);
  if (!h)
    return rt_errf(err, "out of memory");
  h->be = be;
  h->p = p;
  h->batch = batch;
  h->grad_e = rt_find_entry(p, "grad");
  int n = p->ntensors;
  h->tangent = calloc((size_t)n + 1, sizeof *h->tangent);
  h->out = calloc((size_t)n + 1, sizeof *h->out);
  h->len = calloc((size_t)n + 1, sizeof *h->len);
  h->saved = calloc((size_t)n + 1, sizeof *h->saved);
  if (!h->tangent || !h->out || !h->len || !h->saved) {
    rt_hvp_free(h);
    return rt_errf(err, "out of memory");
  }
  int64_t saved = 0;
  for (int i = 0; i < n; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role == KILN_ROLE_STATE || t->role == KILN_ROLE_OPT) {
      h->saved[h->nsaved++] = i;
      saved += rt_numel(t, p->batch);
    }
    if (t->role != KILN_ROLE_PARAM)
      continue;
    char name[512];
    snprintf(name, sizeof name, "tangent.%s", t->name);
    int tt = rt_find_tensor(p, name);
    snprintf(name, sizeof name, "hvp.%s", t->name);
    int o = rt_find_tensor(p, name);
    if (tt < 0 || o < 0)
      continue; /* frozen */
    h->tangent[h->np] = tt;
    h->out[h->np] = o;
    h->len[h->np] = rt_numel(t, p->batch);
    h->n += h->len[h->np++];
  }
  if (h->grad_e < 0 || h->np == 0) {
    rt_hvp_free(h);
    return rt_errf(err, "this program has no Hessian-vector products (compile it with "
                   "Hessian-vector products: kiln curvature does, and so does kiln train or kiln "
                   "build with --curvature-every)");
  }
  if (!(h->saved_vals = malloc((size_t)(saved ? saved : 1) * sizeof *h->saved_vals))) {
    rt_hvp_free(h);
    return rt_errf(err, "out of memory");
  }
  *out = h;
  return 0;
}

void rt_hvp_free(RtHvp *h) {
  if (!h)
    return;
  free(h->tangent);
  free(h->out);
  free(h->len);
  free(h->saved);
  free(h->saved_vals);
  free(h);
}

int64_t rt_hvp_size(const RtHvp *h) { return h->n; }

static void state(RtHvp *h, int restore) {
  double *at = h->saved_vals;
  for (int i = 0; i < h->nsaved; i++) {
    int64_t m = rt_numel(&h->p->tensors[h->saved[i]], h->p->batch);
    if (restore)
      h->be->write(h->be->self, h->saved[i], at, m);
    else
      h->be->read(h->be->self, h->saved[i], at, m);
    at += m;
  }
}

int rt_hvp_apply(RtHvp *h, const double *v, double *hv, char *err) {
  int64_t at = 0;
  for (int i = 0; i < h->np; i++) {
    h->be->write(h->be->self, h->tangent[i], v + at, h->len[i]);
    at += h->len[i];
  }
  state(h, 0);
  int rc = h->be->run(h->be->self, h->grad_e, h->batch, err);
  state(h, 1);
  if (rc)
    return -1;
  at = 0;
  for (int i = 0; i < h->np; i++) {
    h->be->read(h->be->self, h->out[i], hv + at, h->len[i]);
    at += h->len[i];
  }
  return 0;
}

static double dot(const double *a, const double *b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++)
    s += a[i] * b[i];
  return s;
}

int rt_hvp_power(RtHvp *h, int iters, double tol, uint64_t seed, double *lambda, int *used,
                 char *err) {
  double *v = malloc((size_t)h->n * sizeof *v), *hv = malloc((size_t)h->n * sizeof *hv);
  if (!v || !hv) {
    free(v);
    free(hv);
    return rt_errf(err, "out of memory");
  }
  RtRng r;
  rt_rng_seed(&r, seed);
  for (int64_t i = 0; i < h->n; i++)
    v[i] = rt_rng_normal(&r);
  double norm = sqrt(dot(v, v, h->n)), prev = NAN;
  for (int64_t i = 0; i < h->n; i++)
    v[i] /= norm;
  int rc = 0;
  *lambda = 0;
  for (*used = 0; *used < iters; (*used)++) {
    if ((rc = rt_hvp_apply(h, v, hv, err)))
      break;
    *lambda = dot(v, hv, h->n);
    norm = sqrt(dot(hv, hv, h->n));
    if (!(norm > 0))
      break; /* H v = 0: no curvature along v */
    for (int64_t i = 0; i < h->n; i++)
      v[i] = hv[i] / norm;
    if (fabs(*lambda - prev) <= tol * fabs(*lambda)) {
      (*used)++;
      break;
    }
    prev = *lambda;
  }
  free(v);
  free(hv);
  return rc;
}
