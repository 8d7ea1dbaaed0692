/*
 * rt_checkpoint.c — checkpoints: a program's tensors in a safetensors file.
 *
 * Two kinds, one format:
 *  - a parameter file (`--save`, kiln_save): parameters and saved state (batch norm's running
 *    statistics) under their PyTorch names, nothing else, so `load_state_dict(strict=True)`
 *    takes it as it is;
 *  - a resumable checkpoint (`--checkpoint-every`, a signal): the same tensors, plus everything
 *    the next step depends on, under names starting with "kiln." that no model tensor can have
 *    (optimizer state "kiln.opt.NAME", hyper-parameters "kiln.hyper.NAME", early stopping's best
 *    epoch "kiln.best.NAME"), and the run's position and options in the header's metadata.
 *    PyTorch loads it after dropping the "kiln." keys.
 *
 * Values cross the backend as doubles and are stored in the tensor's own dtype, so every value
 * survives the round trip bit for bit, and a resumed run continues exactly where it stopped.
 * Doubles in the metadata are written as C99 hex floats ("%a") for the same reason.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

enum { KIND_PARAM, KIND_OPT, KIND_HYPER, KIND_BEST, NKINDS };
static const char *const kind_prefix[NKINDS] = {"", "kiln.opt.", "kiln.hyper.", "kiln.best."};
static const char FORMAT[] = "kiln resumable checkpoint 1";

int rt_saved(const kiln_tensor *t) {
  return t->role == KILN_ROLE_PARAM || t->role == KILN_ROLE_STATE;
}

/* Which kind of checkpoint entry tensor t is (best: early stopping's copy of a saved tensor). */
static int kind_of(const kiln_tensor *t) {
  return rt_saved(t) ? KIND_PARAM : t->role == KILN_ROLE_OPT ? KIND_OPT
                                  : t->role == KILN_ROLE_HYPER ? KIND_HYPER
                                                                : -1;
}

/* The full shape of t at the program's batch. */
static void full_dims(const kiln_program *p, const kiln_tensor *t, int64_t *dims) {
  memcpy(dims, t->dims, sizeof t->dims);
  if (t->batch_axis >= 0)
    dims[t->batch_axis] = p->batch;
}

/* ---- the model's identity ---- */

/* Everything a checkpoint's tensors must agree with: the tensor table (names, roles, dtypes,
 * shapes) and the batch. Settings are left out: they are defaults the command line overrides. */
uint64_t rt_program_fingerprint(const kiln_program *p) {
  uint64_t h = rt_hash_name(0, p->model ? p->model : "");
  char buf[64];
  snprintf(buf, sizeof buf, "batch %" PRId64, p->batch);
  h = rt_hash_name(h, buf);
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    h = rt_hash_name(h, t->name);
    snprintf(buf, sizeof buf, "%d %d %d %d", t->role, t->dtype, t->rank, t->batch_axis);
    h = rt_hash_name(h, buf);
    for (int d = 0; d < t->rank; d++) {
      snprintf(buf, sizeof buf, "%" PRId64, t->dims[d]);
      h = rt_hash_name(h, buf);
    }
  }
  return h;
}

/* ---- writing ---- */

typedef struct Entries {
  RtNamedTensor *ts;
  int n;
} Entries;

static void entries_free(Entries *e) {
  for (int i = 0; i < e->n; i++) {
    free((char *)e->ts[i].name);
    free(e->ts[i].values);
  }
  free(e->ts);
}

/* Appends t under prefix + its name with the values the backend holds (values == NULL) or
 * the given ones. */
static int entries_add(Entries *e, RtBackend *be, int i, const char *prefix, const double *values,
                       const char *path, char *err) {
  const kiln_program *p = be->prog;
  const kiln_tensor *t = &p->tensors[i];
  int64_t numel = rt_numel(t, p->batch);
  RtNamedTensor *nt = &e->ts[e->n];
  size_t len = strlen(prefix) + strlen(t->name) + 1;
  char *name = malloc(len);
  nt->values = malloc((size_t)(numel ? numel : 1) * sizeof(double));
  if (!name || !nt->values) {
    free(name);
    free(nt->values);
    return rt_errf(err, "%s: out of memory", path);
  }
  snprintf(name, len, "%s%s", prefix, t->name);
  nt->name = name;
  nt->dtype = t->dtype;
  nt->rank = t->rank;
  full_dims(p, t, nt->dims);
  if (values)
    memcpy(nt->values, values, (size_t)numel * sizeof(double));
  else
    be->read(be->self, i, nt->values, numel);
  e->n++;
  return 0;
}

/* The tensors of a checkpoint: the saved ones, and with rs the rest of a resumable one. */
static int collect(RtBackend *be, const RtResume *rs, Entries *e, const char *path, char *err) {
  const kiln_program *p = be->prog;
  e->ts = calloc((size_t)2 * (size_t)p->ntensors + 1, sizeof *e->ts);
  e->n = 0;
  if (!e->ts)
    return rt_errf(err, "%s: out of memory", path);
  const double *best = rs ? rs->best_vals : NULL;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    int kind = kind_of(t);
    if (kind < 0 || (kind != KIND_PARAM && !rs))
      continue;
    if (entries_add(e, be, i, kind_prefix[kind], NULL, path, err))
      return -1;
  }
  for (int i = 0; best && rs->best_epoch > 0 && i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (!rt_saved(t))
      continue;
    if (entries_add(e, be, i, kind_prefix[KIND_BEST], best, path, err))
      return -1;
    best += rt_numel(t, p->batch);
  }
  return 0;
}

int rt_save_checkpoint(RtBackend *be, const char *path, char *err) {
  return rt_write_checkpoint(be, path, NULL, err);
}

/* A double as text that reads back to the same bits. */
static void put_double(char *buf, size_t len, double v) { snprintf(buf, len, "%a", v); }

int rt_write_checkpoint(RtBackend *be, const char *path, const RtResume *rs, char *err) {
  Entries e = {0};
  int rc = -1;
  enum { NMETA = 12 };
  char v[NMETA][1100]; /* room for kiln.options */
  RtMeta meta[NMETA];
  int nmeta = 0;
  if (collect(be, rs, &e, path, err))
    goto done;
  if (rs) {
#define META(key, ...)                                                                          \
  (snprintf(v[nmeta], sizeof v[nmeta], __VA_ARGS__), meta[nmeta] = (RtMeta){(char *)(key), v[nmeta]}, \
   nmeta++)
    META("kiln.format", "%s", FORMAT);
    META("kiln.model", "%s", be->prog->model ? be->prog->model : "");
    META("kiln.fingerprint", "%016" PRIx64, rt_program_fingerprint(be->prog));
    META("kiln.options", "%s", rs->options);
    META("kiln.position", "epoch %d step %" PRId64 " seen %" PRId64, rs->epoch, rs->step,
         rs->seen);
    META("kiln.rng", "%016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64,
         rs->epoch_rng.s[0], rs->epoch_rng.s[1], rs->epoch_rng.s[2], rs->epoch_rng.s[3]);
    char a[40], b[40], c[40];
    put_double(a, sizeof a, rs->loss_sum);
    put_double(b, sizeof b, rs->train_time);
    META("kiln.progress", "loss_sum %s train_time %s train_images %" PRId64, a, b,
         rs->train_images);
    put_double(a, sizeof a, rs->last_train_loss);
    put_double(b, sizeof b, rs->last_test_loss);
    put_double(c, sizeof c, rs->last_acc);
    META("kiln.last", "epochs %d train_loss %s test_loss %s accuracy %s", rs->ran, a, b, c);
    put_double(a, sizeof a, rs->best_test_loss);
    put_double(b, sizeof b, rs->best_train_loss);
    put_double(c, sizeof c, rs->best_acc);
    META("kiln.best", "epoch %d test_loss %s train_loss %s accuracy %s", rs->best_epoch, a, b, c);
#undef META
  }
  rc = rt_safetensors_write(path, e.ts, e.n, meta, nmeta, err);
done:
  entries_free(&e);
  return rc;
}

/* ---- reading ---- */

static int parse_double(const char *s, double *out) {
  char *end;
  *out = strtod(s, &end);
  return end != s && (*end == 0 || *end == ' ') ? 0 : -1;
}

/* Reads "KEY VALUE" pairs of a metadata value in order, each VALUE a hex float or an integer. */
static int meta_fields(const char *text, const char *const *keys, double *vals, int n) {
  const char *p = text;
  for (int i = 0; i < n; i++) {
    size_t kl = strlen(keys[i]);
    while (*p == ' ')
      p++;
    if (strncmp(p, keys[i], kl) || p[kl] != ' ')
      return -1;
    p += kl + 1;
    if (parse_double(p, &vals[i]))
      return -1;
    while (*p && *p != ' ')
      p++;
  }
  while (*p == ' ')
    p++;
  return *p ? -1 : 0;
}

/* The tensor of ts named prefix + t's name with t's shape, or NULL with err. */
static const RtNamedTensor *find_entry(const kiln_program *p, const kiln_tensor *t,
                                       const char *prefix, const RtNamedTensor *ts, int n,
                                       const char *path, char *err) {
  char name[512], want[128], got[128];
  snprintf(name, sizeof name, "%s%s", prefix, t->name);
  int64_t dims[KILN_ABI_MAX_RANK];
  full_dims(p, t, dims);
  rt_format_dims(want, sizeof want, t->rank, dims);
  for (int k = 0; k < n; k++) {
    if (strcmp(ts[k].name, name))
      continue;
    if (ts[k].rank != t->rank || memcmp(ts[k].dims, dims, (size_t)t->rank * sizeof *dims)) {
      rt_format_dims(got, sizeof got, ts[k].rank, ts[k].dims);
      rt_errf(err, "%s: tensor '%s' has shape %s, but the model's has shape %s", path, name, got,
              want);
      return NULL;
    }
    return &ts[k];
  }
  rt_errf(err, "%s: no tensor '%s' (the model's has shape %s)", path, name, want);
  return NULL;
}

/* A parameter or running statistic that is not finite would train on NaN from the first step. */
static int check_finite(const RtNamedTensor *f, const char *path, char *err) {
  int64_t n = 1;
  for (int d = 0; d < f->rank; d++)
    n *= f->dims[d];
  for (int64_t k = 0; k < n; k++)
    if (!isfinite(f->values[k]))
      return rt_errf(err, "%s: tensor '%s' holds %s at element %" PRId64
                     " (the run that wrote it diverged?)", path, f->name,
                     isnan(f->values[k]) ? "NaN" : "an infinity", k);
  return 0;
}

/* All or nothing: every check passes before the first value is written to the backend. */
static int load(RtBackend *be, const char *path, RtResume *rs, char *err) {
  const kiln_program *p = be->prog;
  RtNamedTensor *ts;
  RtMeta *meta;
  int n, nmeta, rc = -1;
  if (rt_safetensors_read(path, &ts, &n, &meta, &nmeta, err))
    return -1;
  const RtNamedTensor **match = calloc((size_t)p->ntensors + 1, sizeof *match);
  const RtNamedTensor **best = calloc((size_t)p->ntensors + 1, sizeof *best);
  if (!match || !best) {
    rt_errf(err, "%s: out of memory", path);
    goto done;
  }
  if (rs) {
    const char *format = rt_meta_get(meta, nmeta, "kiln.format");
    if (!format || strcmp(format, FORMAT)) {
      rt_errf(err, "%s: not a resumable checkpoint (%s): --resume takes what --checkpoint-every "
              "or an interrupted run writes; --load starts from a file's parameters", path,
              format ? "unknown format" : "it holds parameters only");
      goto done;
    }
    const char *fp = rt_meta_get(meta, nmeta, "kiln.fingerprint");
    char want[32];
    snprintf(want, sizeof want, "%016" PRIx64, rt_program_fingerprint(p));
    if (!fp || strcmp(fp, want)) {
      const char *model = rt_meta_get(meta, nmeta, "kiln.model");
      rt_errf(err, "%s: written by a different model or batch (model '%s'), not by this "
              "program of model '%s'", path, model ? model : "?", p->model ? p->model : "?");
      goto done;
    }
    const char *opts = rt_meta_get(meta, nmeta, "kiln.options");
    if (!opts || strcmp(opts, rs->options)) {
      rt_errf(err, "%s: written by a run with options '%s'; this run has '%s': resume with the "
              "same ones", path, opts ? opts : "?", rs->options);
      goto done;
    }
    static const char *const kpos[] = {"epoch", "step", "seen"};
    static const char *const kprog[] = {"loss_sum", "train_time", "train_images"};
    static const char *const klast[] = {"epochs", "train_loss", "test_loss", "accuracy"};
    static const char *const kbest[] = {"epoch", "test_loss", "train_loss", "accuracy"};
    double pos[3], prog[3], last[4], bst[4];
    const char *rng = rt_meta_get(meta, nmeta, "kiln.rng");
    const char *mpos = rt_meta_get(meta, nmeta, "kiln.position");
    const char *mprog = rt_meta_get(meta, nmeta, "kiln.progress");
    const char *mlast = rt_meta_get(meta, nmeta, "kiln.last");
    const char *mbest = rt_meta_get(meta, nmeta, "kiln.best");
    if (!rng || !mpos || !mprog || !mlast || !mbest || meta_fields(mpos, kpos, pos, 3) ||
        meta_fields(mprog, kprog, prog, 3) || meta_fields(mlast, klast, last, 4) ||
        meta_fields(mbest, kbest, bst, 4) ||
        sscanf(rng, "%" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64, &rs->epoch_rng.s[0],
               &rs->epoch_rng.s[1], &rs->epoch_rng.s[2], &rs->epoch_rng.s[3]) != 4 ||
        pos[0] < 0 || pos[0] > 1e9 || pos[1] < 0 || pos[2] < 0 || bst[0] < 0 || bst[0] > 1e9 ||
        last[0] < 0 || last[0] > 1e9) {
      rt_errf(err, "%s: the run's position in the metadata is damaged", path);
      goto done;
    }
    rs->epoch = (int)pos[0];
    rs->step = (int64_t)pos[1];
    rs->seen = (int64_t)pos[2];
    rs->loss_sum = prog[0];
    rs->train_time = prog[1];
    rs->train_images = (int64_t)prog[2];
    rs->ran = (int)last[0];
    rs->last_train_loss = last[1];
    rs->last_test_loss = last[2];
    rs->last_acc = last[3];
    rs->best_epoch = (int)bst[0];
    rs->best_test_loss = bst[1];
    rs->best_train_loss = bst[2];
    rs->best_acc = bst[3];
  }
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    int kind = kind_of(t);
    if (kind < 0 || (kind != KIND_PARAM && !rs))
      continue;
    if (!(match[i] = find_entry(p, t, kind_prefix[kind], ts, n, path, err)))
      goto done;
    if (kind == KIND_PARAM && check_finite(match[i], path, err))
      goto done;
    if (rs && rs->best_epoch > 0 && kind == KIND_PARAM &&
        !(best[i] = find_entry(p, t, kind_prefix[KIND_BEST], ts, n, path, err)))
      goto done;
  }
  for (int k = 0; k < n; k++) {
    if (!strncmp(ts[k].name, "kiln.", 5))
      continue; /* a resumable checkpoint's own entries; --load wants the parameters only */
    int i = rt_find_tensor(p, ts[k].name);
    if (i < 0 || !rt_saved(&p->tensors[i])) {
      rt_errf(err, "%s: tensor '%s' is not a parameter or state of the model", path, ts[k].name);
      goto done;
    }
  }
  if (rs && rs->best_epoch > 0) {
    int64_t total = 0;
    for (int i = 0; i < p->ntensors; i++)
      if (best[i])
        total += rt_numel(&p->tensors[i], p->batch);
    if (!(rs->best_vals = malloc((size_t)(total ? total : 1) * sizeof(double)))) {
      rt_errf(err, "%s: out of memory", path);
      goto done;
    }
    double *at = rs->best_vals;
    for (int i = 0; i < p->ntensors; i++)
      if (best[i]) {
        int64_t m = rt_numel(&p->tensors[i], p->batch);
        memcpy(at, best[i]->values, (size_t)m * sizeof(double));
        at += m;
      }
  }
  for (int i = 0; i < p->ntensors; i++)
    if (match[i])
      be->write(be->self, i, match[i]->values, rt_numel(&p->tensors[i], p->batch));
  rc = 0;
done:
  free(match);
  free(best);
  rt_safetensors_free(ts, n);
  rt_meta_free(meta, nmeta);
  return rc;
}

int rt_load_checkpoint(RtBackend *be, const char *path, char *err) {
  return load(be, path, NULL, err);
}

int rt_read_checkpoint(RtBackend *be, const char *path, RtResume *rs, char *err) {
  return load(be, path, rs, err);
}

/* ---- --init-from: some parameters from another model's file ---- */

/* The name a file's tensor takes under map ("features.0=conv1,head=fc2": a prefix of whole
 * segments replaced; the first rule that applies wins; "head=" leaves those tensors out), into
 * out (len bytes); which rule applied goes to *rule (-1: none). 0, or -1 when the result does
 * not fit. */
static int mapped_name(const char *name, char (*from)[128], char (*to)[128], int nrules,
                       char *out, size_t len, int *rule) {
  *rule = -1;
  for (int r = 0; r < nrules; r++) {
    size_t n = strlen(from[r]);
    if (strncmp(name, from[r], n) || (name[n] && name[n] != '.'))
      continue;
    *rule = r;
    return (size_t)snprintf(out, len, "%s%s", to[r], name + n) < len ? 0 : -1;
  }
  return (size_t)snprintf(out, len, "%s", name) < len ? 0 : -1;
}

/* A rule's side: one or more segments [A-Za-z0-9_] joined by '.'. */
static int map_side_ok(const char *s) {
  if (!*s || *s == '.')
    return 0;
  for (const char *c = s; *c; c++) {
    int word = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
               *c == '_';
    if (!word && !(*c == '.' && c[1] && c[1] != '.'))
      return 0;
  }
  return 1;
}

/* Joins up to four names for a message: "a, b, c and 7 more". */
static void some_names(char *buf, size_t len, const char *const *names, int n) {
  size_t used = 0;
  buf[0] = 0;
  for (int i = 0; i < n && i < 4 && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", names[i]);
  if (n > 4 && used < len)
    snprintf(buf + used, len - used, " and %d more", n - 4);
}

int rt_init_from(RtBackend *be, const char *path, const char *map, unsigned char *loaded,
                 FILE *report, char *err) {
  RtNamedTensor *ts;
  int n;
  if (rt_safetensors_load(path, &ts, &n, err))
    return -1;
  int rc = rt_init_from_tensors(be, ts, n, path, map, loaded, report, err);
  rt_safetensors_free(ts, n);
  return rc;
}

int rt_init_from_tensors(RtBackend *be, const RtNamedTensor *ts, int n, const char *path,
                         const char *map, unsigned char *loaded, FILE *report, char *err) {
  enum { MAX_RULES = 32 };
  const kiln_program *p = be->prog;
  char from[MAX_RULES][128], to[MAX_RULES][128];
  int nrules = 0, rule_used[MAX_RULES] = {0};
  for (const char *s = map ? map : ""; *s;) {
    const char *end = strchr(s, ',');
    size_t n = end ? (size_t)(end - s) : strlen(s);
    const char *eq = memchr(s, '=', n);
    if (nrules == MAX_RULES)
      return rt_errf(err, "--init-map: at most %d renamings", MAX_RULES);
    if (!eq || (size_t)(eq - s) >= sizeof from[0] || n - (size_t)(eq - s) - 1 >= sizeof to[0])
      return rt_errf(err, "--init-map: expected FILE_NAME=MODEL_NAME[,...], e.g. "
                     "features.0=conv1, got '%.*s'", (int)n, s);
    memcpy(from[nrules], s, (size_t)(eq - s));
    from[nrules][eq - s] = 0;
    memcpy(to[nrules], eq + 1, n - (size_t)(eq - s) - 1);
    to[nrules][n - (size_t)(eq - s) - 1] = 0;
    if (!map_side_ok(from[nrules]) || (to[nrules][0] && !map_side_ok(to[nrules])))
      return rt_errf(err, "--init-map: '%.*s' is not NAME=NAME or NAME= (names of letters, "
                     "digits and '_' joined by '.')", (int)n, s);
    nrules++;
    s += n + (end ? 1 : 0);
  }
  int rc = -1, nload = 0, nunused = 0, nkept = 0;
  const RtNamedTensor **match = calloc((size_t)p->ntensors + 1, sizeof *match);
  const char **unused = calloc((size_t)n + 1, sizeof *unused);
  const char **kept = calloc((size_t)p->ntensors + 1, sizeof *kept);
  const char **got = calloc((size_t)p->ntensors + 1, sizeof *got);
  if (!match || !unused || !kept || !got) {
    rt_errf(err, "%s: out of memory", path);
    goto done;
  }
  for (int k = 0; k < n; k++) {
    if (!strncmp(ts[k].name, "kiln.", 5))
      continue; /* a resumable checkpoint's optimizer state and position */
    char name[512];
    int rule;
    if (mapped_name(ts[k].name, from, to, nrules, name, sizeof name, &rule)) {
      rt_errf(err, "--init-map: the name '%s' gets too long", ts[k].name);
      goto done;
    }
    if (rule >= 0)
      rule_used[rule] = 1;
    if (rule >= 0 && !to[rule][0]) { /* NAME=: left out on purpose */
      unused[nunused++] = ts[k].name;
      continue;
    }
    int i = rt_find_tensor(p, name);
    if (i < 0 || !rt_saved(&p->tensors[i])) {
      unused[nunused++] = ts[k].name;
      continue;
    }
    const kiln_tensor *t = &p->tensors[i];
    int same = ts[k].rank == t->rank;
    for (int d = 0; same && d < t->rank; d++)
      same = ts[k].dims[d] == t->dims[d];
    if (!same) {
      char want[128], have[128];
      rt_format_dims(want, sizeof want, t->rank, t->dims);
      rt_format_dims(have, sizeof have, ts[k].rank, ts[k].dims);
      rt_errf(err, "%s: tensor '%s'%s%s%s has shape %s, but the model's '%s' has shape %s", path,
              ts[k].name, rule >= 0 ? " (as '" : "", rule >= 0 ? name : "", rule >= 0 ? "')" : "",
              have, t->name, want);
      goto done;
    }
    if (match[i]) {
      rt_errf(err, "%s: both '%s' and '%s' would initialise the model's '%s'", path,
              match[i]->name, ts[k].name, t->name);
      goto done;
    }
    if (check_finite(&ts[k], path, err))
      goto done;
    match[i] = &ts[k];
  }
  for (int r = 0; r < nrules; r++)
    if (!rule_used[r]) {
      rt_errf(err, "--init-map: no tensor in %s starts with '%s'", path, from[r]);
      goto done;
    }
  for (int i = 0; i < p->ntensors; i++) {
    if (match[i])
      got[nload++] = p->tensors[i].name;
    else if (p->tensors[i].role == KILN_ROLE_PARAM)
      kept[nkept++] = p->tensors[i].name;
  }
  if (nload == 0) {
    char file_names[512], model_names[512];
    some_names(file_names, sizeof file_names, unused, nunused);
    const char *params[4];
    int np = 0;
    for (int i = 0; i < p->ntensors && np < 4; i++)
      if (p->tensors[i].role == KILN_ROLE_PARAM)
        params[np++] = p->tensors[i].name;
    some_names(model_names, sizeof model_names, params, np);
    rt_errf(err, "%s: none of its tensors (%s) is a parameter of the model (%s, ...); "
            "--init-map renames them", path, file_names, model_names);
    goto done;
  }
  for (int i = 0; i < p->ntensors; i++)
    if (match[i]) {
      be->write(be->self, i, match[i]->values, rt_numel(&p->tensors[i], p->batch));
      if (loaded)
        loaded[i] = 1;
    }
  if (report) {
    char a[512], b[512], c[512];
    some_names(a, sizeof a, got, nload);
    some_names(b, sizeof b, kept, nkept);
    some_names(c, sizeof c, unused, nunused);
    fprintf(report, "init-from %s: %d tensor%s loaded (%s)", path, nload, nload == 1 ? "" : "s",
            a);
    if (nkept)
      fprintf(report, "; %d parameter%s keep their initialisation (%s)", nkept,
              nkept == 1 ? "" : "s", b);
    if (nunused)
      fprintf(report, "; %d in the file unused (%s)", nunused, c);
    fprintf(report, "\n");
  }
  rc = 0;
done:
  free(match);
  free(unused);
  free(kept);
  free(got);
  return rc;
}
