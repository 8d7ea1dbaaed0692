/*
 * curvature.c — `kiln curvature`: the extreme eigenvalues of the loss's Hessian on a batch, from
 * compiled Hessian-vector products (the grad entry extended by train_build_hvp), never forming H.
 *
 * The largest eigenvalue by power iteration (H·v normalised, λ = vᵀHv, until λ settles); the
 * smallest by Lanczos (k steps with full reorthogonalisation, the tridiagonal's extreme
 * eigenvalues by Sturm bisection), which also gives a second estimate of the largest. Plain
 * gradient descent is stable on a quadratic of this curvature for lr < 2/λmax (seed 004, 1.4.3,
 * eq. 1.21); the report puts that beside the model's lr. The condition number λmax/λmin is
 * reported when H is positive definite.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "driver/driver.h"
#include "runtime.h"

typedef struct Hvp {
  Session *s;
  RtBackend *be;
  const kiln_program *p;
  int grad_e;
  int64_t batch;
  int np;             /* parameters that train */
  int *tangent, *out; /* per such parameter: the tangent input and the hvp output */
  int64_t *len;
  int64_t n;          /* all their elements */
  double *buf;
} Hvp;

/* hv = H v over the concatenated parameters. */
static int apply(Hvp *h, const double *v, double *hv) {
  int64_t at = 0;
  for (int i = 0; i < h->np; i++) {
    h->be->write(h->be->self, h->tangent[i], v + at, h->len[i]);
    at += h->len[i];
  }
  char err[RT_ERR_LEN];
  if (h->be->run(h->be->self, h->grad_e, h->batch, err))
    return session_fail(h->s, "%s", err);
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

/* Eigenvalues of the symmetric tridiagonal (diagonal a[0..k), off-diagonal b[0..k-1)) below x:
 * the Sturm count. */
static int below(const double *a, const double *b, int k, double x) {
  int count = 0;
  double q = 1;
  for (int i = 0; i < k; i++) {
    q = a[i] - x - (i ? b[i - 1] * b[i - 1] / q : 0);
    if (q == 0)
      q = 1e-300;
    count += q < 0;
  }
  return count;
}

/* The j-th smallest eigenvalue (from 0) of the tridiagonal, by bisection within Gershgorin's
 * bounds. */
static double tridiagonal_eigenvalue(const double *a, const double *b, int k, int j) {
  double lo = INFINITY, hi = -INFINITY;
  for (int i = 0; i < k; i++) {
    double r = (i ? fabs(b[i - 1]) : 0) + (i + 1 < k ? fabs(b[i]) : 0);
    lo = fmin(lo, a[i] - r);
    hi = fmax(hi, a[i] + r);
  }
  for (int it = 0; it < 200 && hi - lo > 1e-15 * fmax(1, fabs(lo) + fabs(hi)); it++) {
    double mid = (lo + hi) / 2;
    if (below(a, b, k, mid) > j)
      hi = mid;
    else
      lo = mid;
  }
  return (lo + hi) / 2;
}

static void random_unit(double *v, int64_t n, RtRng *r) {
  for (int64_t i = 0; i < n; i++)
    v[i] = rt_rng_normal(r);
  double norm = sqrt(dot(v, v, n));
  for (int64_t i = 0; i < n; i++)
    v[i] /= norm;
}

/* Power iteration: the eigenvalue of largest magnitude. */
static int power(Hvp *h, int iters, RtRng *r, double *lambda, int *used) {
  double *v = kiln_malloc((size_t)h->n * sizeof *v), *hv = kiln_malloc((size_t)h->n * sizeof *hv);
  random_unit(v, h->n, r);
  double prev = NAN;
  int rc = 0;
  for (*used = 0; *used < iters; (*used)++) {
    if ((rc = apply(h, v, hv)))
      break;
    *lambda = dot(v, hv, h->n);
    double norm = sqrt(dot(hv, hv, h->n));
    if (!(norm > 0))
      break; /* H v = 0: the curvature along v is 0 */
    for (int64_t i = 0; i < h->n; i++)
      v[i] = hv[i] / norm;
    if (fabs(*lambda - prev) <= 1e-12 * fabs(*lambda)) {
      (*used)++;
      break;
    }
    prev = *lambda;
  }
  free(v);
  free(hv);
  return rc;
}

/* Lanczos with full reorthogonalisation, k steps at most: the smallest and largest Ritz values. */
static int lanczos(Hvp *h, int k, RtRng *r, double *lo, double *hi, int *steps) {
  if (k > h->n)
    k = (int)h->n;
  double *q = kiln_malloc((size_t)h->n * (size_t)(k + 1) * sizeof *q);
  double *w = kiln_malloc((size_t)h->n * sizeof *w);
  double *a = kiln_malloc((size_t)k * sizeof *a), *b = kiln_malloc((size_t)k * sizeof *b);
  random_unit(q, h->n, r);
  int rc = 0, m = 0;
  for (; m < k; m++) {
    double *qm = q + (size_t)m * (size_t)h->n;
    if ((rc = apply(h, qm, w)))
      break;
    a[m] = dot(qm, w, h->n);
    for (int pass = 0; pass < 2; pass++) /* against every earlier vector, twice */
      for (int j = 0; j <= m; j++) {
        double *qj = q + (size_t)j * (size_t)h->n, c = dot(qj, w, h->n);
        for (int64_t i = 0; i < h->n; i++)
          w[i] -= c * qj[i];
      }
    b[m] = sqrt(dot(w, w, h->n));
    if (m + 1 == k || b[m] <= 1e-12 * fabs(a[m])) {
      m++;
      break; /* an invariant subspace: the Ritz values are eigenvalues */
    }
    double *next = q + (size_t)(m + 1) * (size_t)h->n;
    for (int64_t i = 0; i < h->n; i++)
      next[i] = w[i] / b[m];
  }
  *steps = m;
  if (!rc && m > 0) {
    *lo = tridiagonal_eigenvalue(a, b, m, 0);
    *hi = tridiagonal_eigenvalue(a, b, m, m - 1);
  }
  free(q);
  free(w);
  free(a);
  free(b);
  return rc;
}

int curvature_model(Session *s, const CurvatureOptions *co, FILE *out) {
  Hvp h = {.s = s};
  RtBackend be;
  RtDataset ds;
  memset(&ds, 0, sizeof ds);
  char err[RT_ERR_LEN];
  int rc = 1;
  bool have_be = false;
  if (session_load(s))
    return 1;
  h.p = s->prog;
  h.be = &be;
  h.batch = h.p->batch;
  if (rt_arena_backend_new(h.p, &be, err)) {
    session_fail(s, "%s", err);
    return 1;
  }
  have_be = true;
  h.grad_e = rt_find_entry(h.p, "grad");
  if (rt_init_persistent(&be, s->g->train.seed, -1, err) ||
      (co->params && rt_load_checkpoint(&be, co->params, err))) {
    session_fail(s, "%s", err);
    goto done;
  }
  /* The batch: the first examples of the training set, or the model's own data. */
  h.buf = kiln_malloc(sizeof(double));
  int fed = 0;
  for (int i = 0; i < h.p->ntensors; i++) {
    const kiln_tensor *t = &h.p->tensors[i];
    if (t->role != KILN_ROLE_INPUT || !strncmp(t->name, "tangent.", 8))
      continue;
    if (t->feed && !co->data) {
      session_fail(s, "input '%s' is fed from a dataset: give --data DIR", t->name);
      goto done;
    }
    if (t->feed && !fed) {
      if (rt_dataset_load(co->data, "train", h.batch, &ds, err)) {
        session_fail(s, "%s", err);
        goto done;
      }
      if (ds.images.count < h.batch)
        h.batch = ds.images.count;
      fed = 1;
    }
    int64_t n = rt_numel(t, h.batch);
    h.buf = kiln_realloc(h.buf, (size_t)(n ? n : 1) * sizeof *h.buf);
    const RtIdx *f = t->feed ? rt_dataset_field(&ds, t->feed) : NULL;
    if (f) {
      for (int64_t k = 0; k < n; k++)
        h.buf[k] = f->data[k] * t->scale;
    } else if (t->init == KILN_INIT_DATA && t->data) {
      memcpy(h.buf, t->data, (size_t)n * sizeof *h.buf);
    } else {
      session_fail(s, "input '%s' has no data: kiln curvature needs its values", t->name);
      goto done;
    }
    be.write(be.self, i, h.buf, n);
  }
  /* The parameters that train, their tangents and products. */
  Graph *g = s->g;
  h.tangent = kiln_malloc((size_t)g->nparams * sizeof(int));
  h.out = kiln_malloc((size_t)g->nparams * sizeof(int));
  h.len = kiln_malloc((size_t)g->nparams * sizeof(int64_t));
  for (int i = 0; i < g->nparams; i++) {
    const char *name = ir_at(g, g->params[i])->name;
    int t = rt_find_tensor(h.p, pool_printf(g->pool, "tangent.%s", name));
    int o = rt_find_tensor(h.p, pool_printf(g->pool, "hvp.%s", name));
    if (t < 0 || o < 0)
      continue; /* frozen */
    h.tangent[h.np] = t;
    h.out[h.np] = o;
    h.len[h.np] = rt_numel(&h.p->tensors[t], h.batch);
    h.n += h.len[h.np++];
  }
  RtRng r;
  rt_rng_seed(&r, rt_hash_name(co->seed, "kiln curvature"));
  double lmax = NAN, lo = NAN, hi = NAN;
  int used = 0, steps = 0;
  if (power(&h, co->iterations, &r, &lmax, &used) ||
      lanczos(&h, co->lanczos_steps, &r, &lo, &hi, &steps))
    goto done;
  double lr = g->train.lr;
  fprintf(out, "curvature %s: the Hessian of the loss on a batch of %lld, %lld parameters\n",
          g->name, (long long)h.batch, (long long)h.n);
  /* Power iteration finds the eigenvalue of largest magnitude: the largest one when it is
   * positive, else Lanczos's largest Ritz value is. */
  if (!(lmax > 0))
    lmax = hi;
  fprintf(out, "largest eigenvalue   %.9g   (power iteration, %d Hessian-vector products)\n",
          lmax, used);
  fprintf(out, "                     %.9g   (Lanczos, %d steps)\n", hi, steps);
  fprintf(out, "smallest eigenvalue  %.9g   (Lanczos)\n", lo);
  if (lo > 0)
    fprintf(out, "condition number     %.6g\n", lmax / lo);
  else
    fprintf(out, "condition number     none: the Hessian is not positive definite here (a "
                 "saddle or a flat direction)\n");
  if (lmax > 0)
    fprintf(out, "stable lr for plain gradient descent: below 2/lambda_max = %.6g (the model's lr "
                 "is %g%s)\n", 2 / lmax, lr, lr < 2 / lmax ? "" : ": above it");
  rc = 0;
done:
  free(h.buf);
  free(h.tangent);
  free(h.out);
  free(h.len);
  rt_dataset_free(&ds);
  if (have_be)
    rt_arena_backend_free(&be);
  return rc;
}
