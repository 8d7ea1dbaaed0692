/*
 * rt_diagnose.c — what a trainer's --diagnose measures after every epoch (seed 000, 2.2.3.1;
 * seed 004, 1.6): per activation (the eval entry's "diag.<relu1>" outputs), the share of dead
 * ReLU units (a channel or feature that is 0 for every example and position of the batch) or of
 * saturated sigmoid and tanh values, and the activations' RMS; per parameter, the gradient's norm
 * against the weight's and the last step's update against the weight.
 *
 * The gradients come from the grad entry on the same batch. That entry also advances running
 * statistics and the dropout counter, so everything persistent that is not a parameter is saved
 * before and put back after: a run with --diagnose trains exactly as one without.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

struct RtDiag {
  RtBackend *be;
  const kiln_program *p;
  int eval_e, grad_e;
  int nacts, *act;                 /* diag outputs */
  int nparams, *param, *grad;      /* parameters that train and their gradient tensors */
  double *before;                  /* the parameters before the epoch's last step */
  int nsaved, *saved;              /* state the grad entry changes, restored after it */
  double *saved_vals;
  int64_t saved_total, param_total;
  double *buf;
  int64_t buf_n;
  double *values;                  /* the last measurement, in column order */
};

static const char *act_name(const RtDiag *d, int i) { return d->p->tensors[d->act[i]].name + 5; }
static const char *param_name(const RtDiag *d, int i) { return d->p->tensors[d->param[i]].name; }

int rt_diag_open(RtDiag **out, RtBackend *be, char *err) {
  const kiln_program *p = be->prog;
  RtDiag *d = calloc(1, sizeof *d);
  if (!d)
    return rt_errf(err, "out of memory");
  d->be = be;
  d->p = p;
  d->eval_e = rt_find_entry(p, "eval");
  d->grad_e = rt_find_entry(p, "grad");
  int n = p->ntensors;
  d->act = calloc((size_t)n + 1, sizeof *d->act);
  d->param = calloc((size_t)n + 1, sizeof *d->param);
  d->grad = calloc((size_t)n + 1, sizeof *d->grad);
  d->saved = calloc((size_t)n + 1, sizeof *d->saved);
  if (!d->act || !d->param || !d->grad || !d->saved) {
    rt_diag_free(d);
    return rt_errf(err, "out of memory");
  }
  d->buf_n = 1;
  for (int i = 0; i < n; i++) {
    const kiln_tensor *t = &p->tensors[i];
    int64_t m = rt_numel(t, p->batch);
    if (m > d->buf_n)
      d->buf_n = m;
    if (t->role == KILN_ROLE_OUTPUT && !strncmp(t->name, "diag.", 5))
      d->act[d->nacts++] = i;
    char gname[512];
    snprintf(gname, sizeof gname, "grad.%s", t->name);
    int g = t->role == KILN_ROLE_PARAM ? rt_find_tensor(p, gname) : -1;
    if (g >= 0) {
      d->param[d->nparams] = i;
      d->grad[d->nparams++] = g;
      d->param_total += m;
    }
    if (t->role == KILN_ROLE_STATE || t->role == KILN_ROLE_OPT) {
      d->saved[d->nsaved++] = i;
      d->saved_total += m;
    }
  }
  d->buf = malloc((size_t)d->buf_n * sizeof *d->buf);
  d->before = malloc((size_t)(d->param_total ? d->param_total : 1) * sizeof *d->before);
  d->saved_vals = malloc((size_t)(d->saved_total ? d->saved_total : 1) * sizeof *d->saved_vals);
  d->values = calloc((size_t)(2 * d->nacts + 3 * d->nparams + 1), sizeof *d->values);
  if (!d->buf || !d->before || !d->saved_vals || !d->values) {
    rt_diag_free(d);
    return rt_errf(err, "out of memory");
  }
  *out = d;
  return 0;
}

void rt_diag_free(RtDiag *d) {
  if (!d)
    return;
  free(d->act);
  free(d->param);
  free(d->grad);
  free(d->saved);
  free(d->buf);
  free(d->before);
  free(d->saved_vals);
  free(d->values);
  free(d);
}

int rt_diag_activations(const RtDiag *d) { return d->nacts; }

void rt_diag_columns(const RtDiag *d, char *buf, size_t len) {
  size_t used = strlen(buf);
  for (int i = 0; i < d->nacts && used < len; i++) {
    const char *a = act_name(d, i);
    used += (size_t)snprintf(buf + used, len - used, ",%s_%s,%s_rms",
                             strncmp(a, "relu", 4) ? "saturated" : "dead", a, a);
  }
  for (int i = 0; i < d->nparams && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, ",%s_grad_norm,%s_grad_ratio,%s_update_ratio",
                             param_name(d, i), param_name(d, i), param_name(d, i));
}

void rt_diag_before_step(RtDiag *d) {
  double *at = d->before;
  for (int i = 0; i < d->nparams; i++) {
    int64_t m = rt_numel(&d->p->tensors[d->param[i]], d->p->batch);
    d->be->read(d->be->self, d->param[i], at, m);
    at += m;
  }
}

static double norm(const double *v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++)
    s += v[i] * v[i];
  return sqrt(s);
}

/* Dead units of a relu output [N, C, ...] (or [N, C]): channels that are 0 everywhere. */
static double dead_share(const double *v, const kiln_tensor *t, int64_t batch) {
  int64_t c = t->rank >= 2 ? t->dims[1] : 1, inner = 1;
  for (int k = 2; k < t->rank; k++)
    inner *= t->dims[k];
  if (t->rank < 2)
    c = rt_numel(t, batch) / (batch > 0 ? batch : 1), inner = 1;
  int64_t dead = 0;
  for (int64_t ch = 0; ch < c; ch++) {
    int alive = 0;
    for (int64_t b = 0; b < batch && !alive; b++)
      for (int64_t k = 0; k < inner && !alive; k++)
        alive = v[(b * c + ch) * inner + k] != 0;
    dead += !alive;
  }
  return c ? (double)dead / (double)c : 0;
}

/* Saturated sigmoid or tanh values: within 1% of the range's ends. */
static double saturated_share(const double *v, int64_t n, int tanh_like) {
  int64_t s = 0;
  for (int64_t i = 0; i < n; i++)
    s += tanh_like ? fabs(v[i]) > 0.99 : (v[i] < 0.01 || v[i] > 0.99);
  return n ? (double)s / (double)n : 0;
}

int rt_diag_measure(RtDiag *d, int64_t batch, char *err) {
  const kiln_program *p = d->p;
  double *val = d->values;
  int k = 0;
  if (d->nacts && d->eval_e >= 0 && d->be->run(d->be->self, d->eval_e, batch, err))
    return -1;
  for (int i = 0; i < d->nacts; i++) {
    const kiln_tensor *t = &p->tensors[d->act[i]];
    int64_t n = rt_numel(t, batch);
    d->be->read(d->be->self, d->act[i], d->buf, n);
    const char *a = act_name(d, i);
    int relu = !strncmp(a, "relu", 4);
    double share = relu ? dead_share(d->buf, t, batch)
                        : saturated_share(d->buf, n, !strncmp(a, "tanh", 4));
    val[k++] = share;
    val[k++] = n ? norm(d->buf, n) / sqrt((double)n) : 0;
  }
  /* Gradients on the same batch, with the persistent state put back afterwards. */
  double *at = d->saved_vals;
  for (int i = 0; i < d->nsaved; i++) {
    int64_t m = rt_numel(&p->tensors[d->saved[i]], p->batch);
    d->be->read(d->be->self, d->saved[i], at, m);
    at += m;
  }
  int rc = d->grad_e >= 0 ? d->be->run(d->be->self, d->grad_e, batch, err) : 0;
  at = d->saved_vals;
  for (int i = 0; i < d->nsaved; i++) {
    int64_t m = rt_numel(&p->tensors[d->saved[i]], p->batch);
    d->be->write(d->be->self, d->saved[i], at, m);
    at += m;
  }
  if (rc)
    return -1;
  const double *before = d->before;
  for (int i = 0; i < d->nparams; i++) {
    int64_t m = rt_numel(&p->tensors[d->param[i]], p->batch);
    d->be->read(d->be->self, d->grad[i], d->buf, m);
    double g = norm(d->buf, m);
    d->be->read(d->be->self, d->param[i], d->buf, m);
    double w = norm(d->buf, m), step = 0;
    for (int64_t e = 0; e < m; e++)
      step += (d->buf[e] - before[e]) * (d->buf[e] - before[e]);
    before += m;
    double ratio = w > 0 ? g / w : NAN, update = w > 0 ? sqrt(step) / w : NAN;
    val[k++] = g;
    val[k++] = ratio;
    val[k++] = update;
  }
  return 0;
}

void rt_diag_print(const RtDiag *d, FILE *out) {
  const double *v = d->values;
  int k = 0;
  for (int i = 0; i < d->nacts; i++, k += 2) {
    const char *a = act_name(d, i);
    fprintf(out, "  %-24s %s %5.1f%%  rms %.4g\n", a,
            strncmp(a, "relu", 4) ? "saturated" : "dead     ", 100 * v[k], v[k + 1]);
  }
  for (int i = 0; i < d->nparams; i++, k += 3)
    fprintf(out, "  %-24s grad norm %.4g  grad/weight %.3g  update/weight %.3g\n",
            param_name(d, i), v[k], v[k + 1], v[k + 2]);
  /* What deserves a second look (seed 000, 2.2.3.1; seed 004, 1.6). */
  k = 0;
  for (int i = 0; i < d->nacts; i++, k += 2) {
    const char *a = act_name(d, i);
    int relu = !strncmp(a, "relu", 4);
    if (v[k] > 0.5)
      rt_color_printf(out, "warning: %s: %.0f%% of its %s\n", a, 100 * v[k],
              relu ? "units are dead, 0 for every example: they pass no gradient (a smaller "
                     "learning rate or He initialisation may help)"
                   : "values are saturated, where its gradient vanishes");
  }
  for (int i = 0; i < d->nparams; i++, k += 3) {
    if (!isfinite(v[k]) || v[k + 1] > 1e3)
      rt_color_printf(out, "warning: %s: the gradient explodes (norm %.3g, %.3g times the weight's)\n",
              param_name(d, i), v[k], v[k + 1]);
    else if (v[k + 1] < 1e-7)
      rt_color_printf(out, "warning: %s: the gradient is 0 or vanishing (norm %.3g): a dead path, or a "
              "bias that a normalisation after it cancels\n", param_name(d, i), v[k]);
  }
}

void rt_diag_csv(const RtDiag *d, char *buf, size_t len) {
  size_t used = 0;
  buf[0] = 0;
  int n = 2 * d->nacts + 3 * d->nparams;
  for (int i = 0; i < n && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, ",%.6g", d->values[i]);
}
