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

/* Lanczos with full reorthogonalisation, k steps at most: the smallest and largest Ritz values. */
static int lanczos(Session *s, RtHvp *hv, int k, RtRng *r, double *lo, double *hi, int *steps) {
  int64_t n = rt_hvp_size(hv);
  if (k > n)
    k = (int)n;
  double *q = kiln_malloc((size_t)n * (size_t)(k + 1) * sizeof *q);
  double *w = kiln_malloc((size_t)n * sizeof *w);
  char err[RT_ERR_LEN];
  double *a = kiln_malloc((size_t)k * sizeof *a), *b = kiln_malloc((size_t)k * sizeof *b);
  random_unit(q, n, r);
  int rc = 0, m = 0;
  for (; m < k; m++) {
    double *qm = q + (size_t)m * (size_t)n;
    if ((rc = rt_hvp_apply(hv, qm, w, err))) {
      session_fail(s, "%s", err);
      break;
    }
    a[m] = dot(qm, w, n);
    for (int pass = 0; pass < 2; pass++) /* against every earlier vector, twice */
      for (int j = 0; j <= m; j++) {
        double *qj = q + (size_t)j * (size_t)n, c = dot(qj, w, n);
        for (int64_t i = 0; i < n; i++)
          w[i] -= c * qj[i];
      }
    b[m] = sqrt(dot(w, w, n));
    if (m + 1 == k || b[m] <= 1e-12 * fabs(a[m])) {
      m++;
      break; /* an invariant subspace: the Ritz values are eigenvalues */
    }
    double *next = q + (size_t)(m + 1) * (size_t)n;
    for (int64_t i = 0; i < n; i++)
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
  RtBackend be;
  RtDataset ds;
  memset(&ds, 0, sizeof ds);
  RtHvp *hv = NULL;
  double *buf = NULL;
  char err[RT_ERR_LEN];
  int rc = 1;
  if (session_load(s))
    return 1;
  const kiln_program *p = s->prog;
  int64_t batch = p->batch;
  if (rt_arena_backend_new(p, &be, err)) {
    session_fail(s, "%s", err);
    return 1;
  }
  if (rt_init_persistent(&be, s->g->train.seed, -1, err) ||
      (co->params && rt_load_checkpoint(&be, co->params, err))) {
    session_fail(s, "%s", err);
    goto done;
  }
  /* The batch: the first examples of the training set, or the model's own data. */
  buf = kiln_malloc(sizeof(double));
  int fed = 0;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role != KILN_ROLE_INPUT || !strncmp(t->name, "tangent.", 8))
      continue;
    if (t->feed && !co->data) {
      session_fail(s, "input '%s' is fed from a dataset: give --data DIR", t->name);
      goto done;
    }
    if (t->feed && !fed) {
      if (rt_dataset_load(co->data, "train", batch, &ds, err)) {
        session_fail(s, "%s", err);
        goto done;
      }
      if (ds.images.count < batch)
        batch = ds.images.count;
      fed = 1;
    }
    int64_t n = rt_numel(t, batch);
    buf = kiln_realloc(buf, (size_t)(n ? n : 1) * sizeof *buf);
    const RtIdx *f = t->feed ? rt_dataset_field(&ds, t->feed) : NULL;
    if (f) {
      for (int64_t k = 0; k < n; k++)
        buf[k] = f->data[k] * t->scale;
    } else if (t->init == KILN_INIT_DATA && t->data) {
      memcpy(buf, t->data, (size_t)n * sizeof *buf);
    } else {
      session_fail(s, "input '%s' has no data: kiln curvature needs its values", t->name);
      goto done;
    }
    be.write(be.self, i, buf, n);
  }
  if (rt_hvp_open(&hv, &be, batch, err)) {
    session_fail(s, "%s", err);
    goto done;
  }
  RtRng r;
  rt_rng_seed(&r, rt_hash_name(co->seed, "kiln curvature"));
  double lmax = NAN, lo = NAN, hi = NAN;
  int used = 0, steps = 0;
  if (rt_hvp_power(hv, co->iterations, 1e-12, rt_hash_name(co->seed, "kiln curvature power"),
                   &lmax, &used, err)) {
    session_fail(s, "%s", err);
    goto done;
  }
  if (lanczos(s, hv, co->lanczos_steps, &r, &lo, &hi, &steps))
    goto done;
  Graph *g = s->g;
  double lr = g->train.lr;
  fprintf(out, "curvature %s: the Hessian of the loss on a batch of %lld, %lld parameters\n",
          g->name, (long long)batch, (long long)rt_hvp_size(hv));
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
  rt_hvp_free(hv);
  free(buf);
  rt_dataset_free(&ds);
  rt_arena_backend_free(&be);
  return rc;
}
