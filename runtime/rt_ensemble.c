/*
 * rt_ensemble.c — saved parameters evaluated on a data set's test split (`kiln evaluate`): each
 * parameter file alone, as `kiln train` measures a run at its end, and several of them as an
 * ensemble whose prediction is the mean of the members' class probabilities.
 *
 * Only the evaluation half of a trainer is needed here (the test set, the eval entry, the
 * figures), so this file feeds batches itself rather than going through rt_train's run: the
 * same order (examples in file order, batches of the program's batch, the last one smaller),
 * the same scaling and normalisation (rt_example_values) and the same sums, so that one file's
 * figures equal those `kiln train --save` printed for it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

void rt_class_probabilities(const double *scores, int64_t classes, int kind, double *p) {
  if (kind == RT_SCORES_PROBABILITIES) {
    memcpy(p, scores, (size_t)classes * sizeof *p);
    return;
  }
  if (kind == RT_SCORES_LOG_PROBABILITIES) {
    for (int64_t c = 0; c < classes; c++)
      p[c] = exp(scores[c]);
    return;
  }
  double top = scores[0], sum = 0;
  for (int64_t c = 1; c < classes; c++)
    if (scores[c] > top)
      top = scores[c];
  for (int64_t c = 0; c < classes; c++)
    sum += p[c] = exp(scores[c] - top);
  for (int64_t c = 0; c < classes; c++)
    p[c] /= sum;
}

void rt_ensemble_average(const double *scores, int members, int64_t n, int64_t classes, int kind,
                         const uint8_t *labels, double *mean, double *loss, double *accuracy) {
  memset(mean, 0, (size_t)(n * classes) * sizeof *mean);
  double *p = malloc((size_t)classes * sizeof *p);
  if (!p) {
    *loss = *accuracy = NAN;
    return;
  }
  for (int m = 0; m < members; m++)
    for (int64_t k = 0; k < n; k++) {
      rt_class_probabilities(scores + ((int64_t)m * n + k) * classes, classes, kind, p);
      for (int64_t c = 0; c < classes; c++)
        mean[k * classes + c] += p[c];
    }
  free(p);
  double nll = 0;
  int64_t correct = 0;
  for (int64_t k = 0; k < n; k++) {
    double *row = mean + k * classes;
    int64_t best = 0;
    for (int64_t c = 0; c < classes; c++) {
      row[c] /= members;
      if (row[c] > row[best])
        best = c;
    }
    correct += best == labels[k];
    nll -= log(row[labels[k]]);
  }
  *loss = n ? nll / (double)n : NAN;
  *accuracy = n ? (double)correct / (double)n : NAN;
}

/* What one evaluation needs besides the backend. */
typedef struct Eval {
  RtBackend *be;
  const kiln_program *p;
  const RtOptions *o;
  RtDataset test;
  int64_t n;              /* test examples used */
  int64_t chw[3];
  double mean[RT_MAX_CHANNELS], std[RT_MAX_CHANNELS];
  double *buf, *scratch;
  int loss_t, out_t;      /* eval.loss, eval.output; -1 when absent */
  int metric_t[RT_MAX_METRICS];
  int nmetrics;
  int64_t classes;        /* > 0: the output is [N, classes] class scores and labels are fed */
} Eval;

/* Whether the program feeds an input from field `feed`. */
static int feeds(const kiln_program *p, const char *feed) {
  for (int i = 0; i < p->ntensors; i++)
    if (p->tensors[i].role == KILN_ROLE_INPUT && p->tensors[i].feed &&
        !strcmp(p->tensors[i].feed, feed))
      return 1;
  return 0;
}

/* The program's tensors and what they mean for an evaluation, before any data is read. */
static int describe(Eval *e, RtEnsembleReport *report, char *err) {
  const kiln_program *p = e->p;
  if (rt_check_program(p, err))
    return -1;
  int eval_e = rt_find_entry(p, "eval");
  if (eval_e < 0)
    return rt_errf(err, "program '%s' has no \"eval\" entry", p->model ? p->model : "?");
  if (!feeds(p, "images") && !feeds(p, "labels"))
    return rt_errf(err, "model '%s' has its data in the file: evaluation measures a data set's "
                   "test split", p->model ? p->model : "?");
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role == KILN_ROLE_INPUT && !t->feed && rt_tensor_in_entry(t, eval_e))
      return rt_errf(err, "input '%s' has no data: evaluation feeds inputs from the data set "
                     "(`from images`, `from labels`)", t->name);
  }
  e->loss_t = rt_find_tensor(p, "eval.loss");
  e->out_t = rt_find_tensor(p, "eval.output");
  static const char prefix[] = "eval.metric.";
  for (int i = 0; i < p->ntensors && e->nmetrics < RT_MAX_METRICS; i++)
    if (p->tensors[i].role == KILN_ROLE_OUTPUT &&
        !strncmp(p->tensors[i].name, prefix, sizeof prefix - 1)) {
      report->metric_names[e->nmetrics] = p->tensors[i].name + sizeof prefix - 1;
      e->metric_t[e->nmetrics++] = i;
    }
  report->nmetrics = e->nmetrics;
  const kiln_tensor *out = e->out_t >= 0 ? &p->tensors[e->out_t] : NULL;
  int64_t classes = out && out->rank >= 2 && out->batch_axis == 0 ? out->dims[out->rank - 1] : 0;
  if (classes > 0 && feeds(p, "labels") && rt_numel(out, 1) == classes)
    e->classes = classes;
  int64_t most = 1;
  for (int i = 0; i < p->ntensors; i++)
    if (rt_numel(&p->tensors[i], p->batch) > most)
      most = rt_numel(&p->tensors[i], p->batch);
  if (!(e->buf = malloc((size_t)most * sizeof *e->buf)))
    return rt_errf(err, "out of memory");
  return 0;
}

/* The test split, checked against the model: every fed input's field and size, labels below the
 * classes, and the normalisation's channels. */
static int load_test(Eval *e, char *err) {
  const kiln_program *p = e->p;
  const RtOptions *o = e->o;
  if (!o->data_dir)
    return rt_errf(err, "model '%s' reads images and labels: pass --data DIR",
                   p->model ? p->model : "?");
  if (o->normalize.mode == RT_NORMALIZE_AUTO)
    return rt_errf(err, "--normalize auto takes the training examples' statistics, which depend "
                   "on the run: give the MEAN,STD values its training printed");
  RtDataWant want;
  memset(&want, 0, sizeof want);
  int out_rank = e->out_t >= 0 ? p->tensors[e->out_t].rank : 0;
  want.classes = out_rank >= 2 && p->tensors[e->out_t].batch_axis == 0
                     ? p->tensors[e->out_t].dims[out_rank - 1] : 0;
  for (int i = 0; i < p->ntensors && !want.input; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role == KILN_ROLE_INPUT && t->feed && !strcmp(t->feed, "images") &&
        t->batch_axis == 0 && t->rank >= 1) {
      want.input = t->name;
      want.rank = t->rank - 1;
      memcpy(want.dims, t->dims + 1, (size_t)want.rank * sizeof *want.dims);
    }
  }
  if (rt_data_load(o->data_dir, "test", o->limit_test > 0 ? o->limit_test : -1, &want, &e->test,
                   err))
    return -1;
  e->n = e->test.images.count;
  if (e->n == 0)
    return rt_errf(err, "%s: no test examples", o->data_dir);
  char wants[128], got[128];
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role != KILN_ROLE_INPUT || !t->feed)
      continue;
    const RtIdx *f = rt_dataset_field(&e->test, t->feed);
    if (!f)
      return rt_errf(err, "input '%s' is fed from '%s', which the dataset in %s does not have "
                     "(it has images and labels)", t->name, t->feed, o->data_dir);
    if (t->batch_axis != 0)
      return rt_errf(err, "data input '%s' must have the batch as its first axis", t->name);
    if (rt_numel(t, 1) != f->item) {
      rt_format_dims(wants, sizeof wants, t->rank, t->dims);
      rt_format_dims(got, sizeof got, f->rank - 1, f->dims + 1);
      return rt_errf(err, "input '%s' has shape %s (%lld values per example), but the %s in %s "
                     "are %s (%lld values)", t->name, wants, (long long)rt_numel(t, 1), t->feed,
                     o->data_dir, got, (long long)f->item);
    }
  }
  if (want.classes > 0)
    for (int64_t k = 0; k < e->n; k++)
      if (e->test.labels.data[k] >= want.classes)
        return rt_errf(err, "%s: the label of example %lld is %d, outside the model's %lld "
                       "classes (0 to %lld)", e->test.labels_path, (long long)k,
                       e->test.labels.data[k], (long long)want.classes,
                       (long long)want.classes - 1);
  rt_image_geometry(&e->test.images, e->chw);
  if (o->normalize.mode == RT_NORMALIZE_GIVEN) {
    int64_t C = e->chw[0];
    if (o->normalize.channels != 1 && o->normalize.channels != C)
      return rt_errf(err, "--normalize gives %d channels, but the images in %s have %lld",
                     o->normalize.channels, o->data_dir, (long long)C);
    if (C > RT_MAX_CHANNELS)
      return rt_errf(err, "--normalize: the images in %s have %lld channels, at most %d",
                     o->data_dir, (long long)C, RT_MAX_CHANNELS);
    for (int64_t c = 0; c < C; c++) {
      int from = o->normalize.channels == 1 ? 0 : (int)c;
      e->mean[c] = o->normalize.mean[from];
      e->std[c] = o->normalize.std[from];
    }
    int64_t item = e->test.images.item > 0 ? e->test.images.item : 1;
    if (!(e->scratch = malloc((size_t)item * sizeof *e->scratch)))
      return rt_errf(err, "out of memory");
  }
  return 0;
}

/* Test examples [first, first + b) into every fed input of the eval entry, as rt_train feeds an
 * evaluation: the field's values times the input's scale, images normalised. */
static void write_batch(Eval *e, int eval_e, int64_t first, int64_t b) {
  const kiln_program *p = e->p;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    const RtIdx *f = t->role == KILN_ROLE_INPUT ? rt_dataset_field(&e->test, t->feed) : NULL;
    if (!f || !rt_tensor_in_entry(t, eval_e))
      continue;
    int normalize = f == &e->test.images && e->o->normalize.mode == RT_NORMALIZE_GIVEN;
    for (int64_t k = 0; k < b; k++) {
      const uint8_t *src = f->data + (first + k) * f->item;
      double *dst = e->buf + k * f->item;
      if (normalize)
        rt_example_values(src, e->chw, NULL, t->scale, e->mean, e->std, dst, e->scratch);
      else
        for (int64_t j = 0; j < f->item; j++)
          dst[j] = src[j] * t->scale;
    }
    e->be->write(e->be->self, i, e->buf, rt_numel(t, b));
  }
}

static double read_scalar(Eval *e, int t, int64_t b) {
  e->be->read(e->be->self, t, e->buf, rt_numel(&e->p->tensors[t], b));
  return e->buf[0];
}

/* The parameters in path on the test set; with scores, the output rows go there. */
static int evaluate_file(Eval *e, const char *path, uint64_t seed, RtEvalFigures *fig,
                         double *scores, char *err) {
  const kiln_program *p = e->p;
  int eval_e = rt_find_entry(p, "eval");
  /* The initialisers first, for what a parameter file does not hold (hyper-parameters). */
  if (rt_init_persistent(e->be, seed, -1, err) || rt_load_checkpoint(e->be, path, err))
    return -1;
  double loss_sum = 0, metric_sum[RT_MAX_METRICS] = {0};
  int64_t correct = 0;
  for (int64_t first = 0; first < e->n; first += p->batch) {
    int64_t b = e->n - first < p->batch ? e->n - first : p->batch;
    write_batch(e, eval_e, first, b);
    char msg[RT_ERR_LEN] = "";
    if (e->be->run(e->be->self, eval_e, b, msg))
      return rt_errf(err, "%s", *msg ? msg : "the evaluation step failed");
    if (e->loss_t >= 0) {
      double l = read_scalar(e, e->loss_t, b);
      if (isnan(l))
        return rt_errf(err, "%s: test examples %lld to %lld: the loss is NaN (the parameters "
                       "hold values the model's ops cannot take)", path, (long long)first,
                       (long long)(first + b - 1));
      loss_sum += l * (double)b;
    }
    for (int m = 0; m < e->nmetrics; m++)
      metric_sum[m] += read_scalar(e, e->metric_t[m], b) * (double)b;
    if (e->classes > 0) {
      e->be->read(e->be->self, e->out_t, e->buf, rt_numel(&p->tensors[e->out_t], b));
      for (int64_t k = 0; k < b; k++) {
        const double *row = e->buf + k * e->classes;
        int64_t best = 0;
        for (int64_t c = 1; c < e->classes; c++)
          if (row[c] > row[best])
            best = c;
        correct += best == e->test.labels.data[first + k];
      }
      if (scores)
        memcpy(scores + first * e->classes, e->buf, (size_t)(b * e->classes) * sizeof *scores);
    }
  }
  fig->loss = e->loss_t >= 0 ? loss_sum / (double)e->n : NAN;
  fig->accuracy = e->classes > 0 ? (double)correct / (double)e->n : NAN;
  for (int m = 0; m < RT_MAX_METRICS; m++)
    fig->metrics[m] = m < e->nmetrics ? metric_sum[m] / (double)e->n : NAN;
  return 0;
}

int rt_evaluate_checkpoints(RtBackend *be, const RtOptions *o, const char *const *params, int n,
                            int kind, RtEvalFigures *members, RtEnsembleReport *report, char *err) {
  Eval e = {.be = be, .p = be ? be->prog : NULL, .o = o};
  double *scores = NULL, *mean = NULL;
  int rc = -1;
  memset(report, 0, sizeof *report);
  report->ensemble.loss = report->ensemble.accuracy = NAN;
  for (int m = 0; m < RT_MAX_METRICS; m++)
    report->ensemble.metrics[m] = NAN;
  if (n < 1) {
    rt_errf(err, "no parameter files to evaluate");
    goto done;
  }
  if (describe(&e, report, err))
    goto done;
  const kiln_program *p = e.p;
  uint64_t seed = o->have_seed ? o->seed : rt_setting_u64(p, "seed", 1);
  if (be->set_threads && be->set_threads(be->self, o->threads, err))
    goto done;
  if (load_test(&e, err))
    goto done;
  report->examples = e.n;
  report->scored = e.classes > 0;
  if (report->scored) {
    double cells = (double)n * (double)e.n * (double)e.classes;
    if (cells > 1e9 || !(scores = malloc((size_t)cells * sizeof *scores)) ||
        !(mean = malloc((size_t)(e.n * e.classes) * sizeof *mean))) {
      rt_errf(err, "out of memory (the outputs of %d members on %lld examples)", n,
              (long long)e.n);
      goto done;
    }
  }
  for (int i = 0; i < n; i++)
    if (evaluate_file(&e, params[i], seed, &members[i],
                      scores ? scores + (int64_t)i * e.n * e.classes : NULL, err))
      goto done;
  if (scores)
    rt_ensemble_average(scores, n, e.n, e.classes, kind, e.test.labels.data, mean,
                        &report->ensemble.loss, &report->ensemble.accuracy);
  rc = 0;
done:
  free(scores);
  free(mean);
  free(e.buf);
  free(e.scratch);
  rt_dataset_free(&e.test);
  return rc;
}
