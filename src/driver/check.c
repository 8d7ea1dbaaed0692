/*
 * check.c — `kiln check` and `kiln grad`: the generated code held against the reference runtime.
 *
 * check_model compiles the model's C into a shared object and runs it side by side with the
 * reference interpreter in f64 (the exact meaning of the graph), both behind the RtBackend
 * interface and both fed the same random parameters (rt_init_tensor with one seed: each
 * tensor's values depend only on the seed and its name) and the same random inputs. It compares
 * the grad entry (the loss and the gradient tensors), a few train steps, one step cut in two
 * (grad, then apply), the eval entry, and the grad entry again at a smaller batch (the code path
 * specialised for a run-time batch), printing one line per tensor.
 *
 * Tolerance rule (check_tolerance): an element x of the program against the reference r passes
 * when |x - r| <= abs + rel * (|r| + S), where S is the largest |r| in the tensor. For f32
 * programs abs = 1e-6, rel = 1e-3: float32 rounding is ~6e-8 per operation, and a long
 * reduction (a matmul over 784 terms, a loss over the batch) errs relative to the size of its
 * terms rather than of its result, so an element that cancels to ~0 inside a tensor is judged on
 * the tensor's scale (the S term), not its own; a wrong index or a missing term is off by far
 * more (and Adam, being scale-invariant, gives tiny gradients full-size steps whose precision
 * is the gradient's relative precision: its parameters differ by a fraction of lr). The small
 * absolute floor only matters for tensors that are ~0 throughout (Adam's second
 * moment early on); an error there still shows in the parameters it updates, which are compared
 * too. For f64 programs abs = 1e-12, rel = 1e-7. A NaN on one side only always fails.
 *
 * grad_model evaluates the grad entry at given parameters and inputs (safetensors in and out),
 * on the compiled program or on the reference: the piece a PyTorch comparison script calls.
 * forward_model does the same for a grad entry extended by train_build_jvp / train_build_hvp,
 * with a third file holding the direction (one tensor per parameter, under its name).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "driver/driver.h"
#include "backend/backend.h"
#include "cg/cg.h"
#include "ref/ref.h"
#include "runtime.h"

CheckTol check_tolerance(DType t) {
  if (t == DT_F64)
    return (CheckTol){1e-12, 1e-7};
  return (CheckTol){1e-6, 1e-3};
}

/* ---- the two sides ------------------------------------------------------------------------ */

/* Everything a check run holds besides the session, released by sides_free on every path. */
typedef struct Sides {
  Session *ss;                /* the model, its plan and the compiled program */
  const Plan *plan;
  RtBackend cbe;              /* compiled */
  bool have_cbe;
  RtBackend rbe;              /* reference (the session's interpreter) */
} Sides;

static void sides_free(Sides *s) {
  if (s->have_cbe)
    rt_arena_backend_free(&s->cbe);
}

/* The compiled side: the session's program (emitted, compiled and loaded) over a fresh arena. */
static int make_compiled(Sides *s) {
  if (session_load(s->ss))
    return -1;
  s->plan = &s->ss->plan;
  char err[RT_ERR_LEN];
  if (rt_arena_backend_new(s->ss->prog, &s->cbe, err))
    return session_fail(s->ss, "%s", err);
  s->have_cbe = true;
  return 0;
}

/* The reference side: the interpreter in f64, the exact meaning of the graph. */
static int make_reference(Sides *s) {
  if (session_reference(s->ss, 64, &s->rbe))
    return -1;
  s->plan = &s->ss->plan;
  return 0;
}

static int run(Sides *s, RtBackend *be, const char *entry, int64_t batch) {
  char err[RT_ERR_LEN] = "";
  int e = rt_find_entry(be->prog, entry);
  if (e < 0)
    snprintf(err, sizeof err, "the program has no \"%s\" entry", entry);
  else if (be->run(be->self, e, batch, err) == 0)
    return 0;
  return session_fail(s->ss, "%s runtime: %s", be == &s->rbe ? "reference" : "compiled", err);
}

/* ---- values ----------------------------------------------------------------------------------- */

int64_t check_label_classes(const Graph *g, const Plan *p, int node) {
  for (int i = 0; i < g->nnodes; i++) {
    const Node *n = ir_at(g, i);
    if ((n->op == OP_CROSS_ENTROPY || n->op == OP_CROSS_ENTROPY_GRAD) && n->in[1] == node)
      return dim_value(ir_at(g, n->in[0])->shape.d[1], p->symvals);
  }
  return 2;
}

/* Both sides get identical values: rounded to float first for f32 tensors, so the comparison
 * measures computation, not the rounding of the inputs. */
static void write_both(Sides *s, int t, double *v, int64_t n) {
  if (s->plan->tensors[t].dtype == KILN_F32)
    for (int64_t i = 0; i < n; i++)
      v[i] = (double)(float)v[i];
  s->cbe.write(s->cbe.self, t, v, n);
  s->rbe.write(s->rbe.self, t, v, n);
}

/* Parameters, state, hyper-parameters and optimizer state from their initialisers. */
static void init_persistent(Sides *s, uint64_t seed, double *buf) {
  for (int i = 0; i < s->plan->ntensors; i++) {
    const kiln_tensor *t = &s->plan->tensors[i];
    if (t->role == KILN_ROLE_INPUT || t->role == KILN_ROLE_OUTPUT)
      continue;
    int64_t n = rt_numel(t, s->plan->batch);
    rt_init_tensor(t, seed, buf, n);
    write_both(s, i, buf, n);
  }
}

/* Fresh random inputs: floats uniform in [0, 1), labels uniform in [0, C). */
static void random_inputs(Graph *g, Sides *s, RtRng *r, double *buf) {
  for (int i = 0; i < s->plan->ntensors; i++) {
    const kiln_tensor *t = &s->plan->tensors[i];
    if (t->role != KILN_ROLE_INPUT)
      continue;
    int64_t n = rt_numel(t, s->plan->batch);
    if (t->dtype == KILN_I32) {
      uint64_t c = (uint64_t)check_label_classes(g, s->plan, s->plan->tensor_node[i]);
      for (int64_t k = 0; k < n; k++)
        buf[k] = (double)rt_rng_below(r, c);
    } else {
      for (int64_t k = 0; k < n; k++)
        buf[k] = rt_rng_uniform(r);
    }
    write_both(s, i, buf, n);
  }
}

/* ---- comparing -------------------------------------------------------------------------------- */

typedef struct Tally {
  int compared, failed;
  double worst;   /* largest error / allowed over everything */
  const char *first_entry; /* the entry whose results disagreed first, or NULL */
} Tally;

/* Compares tensor t of both sides at batch, prints one line, returns whether it passed. */
static bool compare(Sides *s, int t, int64_t batch, const char *phase, double *x, double *r,
                    Tally *ty, FILE *out) {
  const kiln_tensor *kt = &s->plan->tensors[t];
  int64_t n = rt_numel(kt, batch);
  s->cbe.read(s->cbe.self, t, x, n);
  s->rbe.read(s->rbe.self, t, r, n);
  CheckTol tol = check_tolerance(kt->dtype == KILN_F32 ? DT_F32 : DT_F64);
  double scale = 0;
  for (int64_t i = 0; i < n; i++)
    if (isfinite(r[i]) && fabs(r[i]) > scale)
      scale = fabs(r[i]);
  double max_abs = 0, max_rel = 0, worst = 0;
  bool nan_mismatch = false;
  for (int64_t i = 0; i < n; i++) {
    if (isnan(x[i]) || isnan(r[i])) {
      nan_mismatch |= isnan(x[i]) != isnan(r[i]);
      continue;
    }
    double d = fabs(x[i] - r[i]);
    if (isinf(x[i]) || isinf(r[i]))
      d = x[i] == r[i] ? 0 : INFINITY;
    double rel = d / (fabs(r[i]) > 1e-30 ? fabs(r[i]) : 1e-30);
    double allowed = tol.abs + tol.rel * (fabs(r[i]) + scale);
    if (d > max_abs)
      max_abs = d;
    if (rel > max_rel)
      max_rel = rel;
    if (d / allowed > worst)
      worst = d / allowed;
  }
  bool ok = !nan_mismatch && worst <= 1;
  ty->compared++;
  if (!ok)
    ty->failed++;
  if (worst > ty->worst || nan_mismatch)
    ty->worst = nan_mismatch ? INFINITY : worst;
  fprintf(out, "%-10s %-40s %11.3g %11.3g %8.3f  %s\n", phase, kt->name, max_abs, max_rel, worst,
          ok ? "ok" : nan_mismatch ? "NAN MISMATCH" : "EXCEEDS TOLERANCE");
  return ok;
}

/* Compares every tensor of `roles` (bit set of 1 << role) that entry writes (outputs and
 * gradients: only the entry's own). */
static void compare_all(Sides *s, unsigned roles, const char *entry, int64_t batch,
                        const char *phase, double *x, double *r, Tally *ty, FILE *out) {
  int e = rt_find_entry(s->cbe.prog, entry);
  for (int i = 0; i < s->plan->ntensors; i++) {
    const kiln_tensor *t = &s->plan->tensors[i];
    if (!(roles & (1u << t->role)))
      continue;
    if ((t->role == KILN_ROLE_OUTPUT || t->role == KILN_ROLE_GRAD) && !rt_tensor_in_entry(t, e))
      continue;
    if (!compare(s, i, batch, phase, x, r, ty, out) && !ty->first_entry)
      ty->first_entry = entry;
  }
}

/* ---- the first kernel that disagrees ------------------------------------------------------- */

/* Runs entry on the compiled program kernel by kernel from the reference's state: at every
 * kernel boundary (the profile marks the generated code calls), the output of the kernel that
 * just returned, still in its arena slot, is held against the reference's value of the same
 * node. The first one beyond tolerance is reported with its kernel, op, tensor, model line and
 * the largest error and where. */
typedef struct Locate {
  Sides *s;
  Interp *ref;
  unsigned char *arena;
  int entry;
  int64_t batch;
  int prev;           /* the site whose kernel is running, or -1 */
  int found;          /* the first site that disagrees, or -1 */
  double max_abs, max_rel;
  int64_t at;         /* where max_abs is, flat */
  int checked;
} Locate;

/* Whether the kernel of site k left a value the reference agrees with (or one not to judge). */
static bool site_agrees(Locate *L, int k) {
  const kiln_site *site = &L->s->ss->prog->sites[k];
  const Graph *g = L->s->ss->g;
  const Plan *p = L->s->plan;
  const Node *n = ir_at(g, site->node);
  int64_t off = p->offset[p->root[n->id]];
  if (site->entry != L->entry || off < 0 || !dtype_is_float(n->dtype))
    return true;
  int64_t numel = shape_numel(&n->shape, p->symvals);
  const double *r = interp_data(L->ref, n->id);
  const unsigned char *x = L->arena + off;
  CheckTol tol = check_tolerance(n->dtype);
  double scale = 0, worst = 0, max_abs = 0, max_rel = 0;
  int64_t at = 0;
  for (int64_t i = 0; i < numel; i++)
    if (isfinite(r[i]))
      scale = fmax(scale, fabs(r[i]));
  for (int64_t i = 0; i < numel; i++) {
    double v = n->dtype == DT_F32 ? (double)((const float *)(const void *)x)[i]
                                  : ((const double *)(const void *)x)[i];
    double d = isnan(v) != isnan(r[i]) ? INFINITY : isnan(v) ? 0 : fabs(v - r[i]);
    double allowed = tol.abs + tol.rel * (fabs(r[i]) + scale);
    if (d > max_abs)
      max_abs = d, at = i;
    max_rel = fmax(max_rel, d / fmax(fabs(r[i]), 1e-30));
    worst = fmax(worst, d / allowed);
  }
  L->checked++;
  if (worst <= 1)
    return true;
  L->max_abs = max_abs, L->max_rel = max_rel, L->at = at;
  return false;
}

static void locate_mark(void *self, int site) {
  Locate *L = self;
  if (L->found < 0 && L->prev >= 0 && !site_agrees(L, L->prev))
    L->found = L->prev;
  L->prev = site;
}

/* "[0, 2, 1, 3]": the coordinates of flat index i in shape s (symbols bound by p). */
static void coordinates(const Shape *s, const Plan *p, int64_t i, char *buf, size_t len) {
  int64_t c[IR_MAX_RANK];
  for (int k = s->rank - 1; k >= 0; k--) {
    int64_t d = dim_value(s->d[k], p->symvals);
    c[k] = d > 0 ? i % d : 0;
    i = d > 0 ? i / d : 0;
  }
  size_t used = (size_t)snprintf(buf, len, "[");
  for (int k = 0; k < s->rank && used < len; k++)
    used += (size_t)snprintf(buf + used, len - used, "%s%lld", k ? ", " : "", (long long)c[k]);
  if (used < len)
    snprintf(buf + used, len - used, "]");
}

static int locate_kernel(Sides *s, const char *entry, double *buf, FILE *out) {
  const kiln_program *prog = s->ss->prog;
  /* The compiled side starts from the reference's state and inputs. */
  for (int i = 0; i < s->plan->ntensors; i++) {
    const kiln_tensor *t = &s->plan->tensors[i];
    if (t->role == KILN_ROLE_OUTPUT)
      continue;
    int64_t n = rt_numel(t, s->plan->batch);
    s->rbe.read(s->rbe.self, i, buf, n);
    s->cbe.write(s->cbe.self, i, buf, n);
  }
  Locate L = {.s = s, .ref = s->ss->ref, .arena = rt_arena_base(&s->cbe),
              .entry = rt_find_entry(prog, entry), .batch = s->plan->batch, .prev = -1,
              .found = -1};
  char err[RT_ERR_LEN];
  if (interp_run(L.ref, (EntryKind)L.entry, L.batch, err))
    return session_fail(s->ss, "reference runtime: %s", err);
  kiln_exec ex = {.mark = locate_mark, .profiler = &L};
  prog->entries[L.entry].fn(L.arena, L.batch, &ex);
  if (L.found < 0) {
    fprintf(out, "kernels: the %d kernel outputs of %s agree with the reference one by one; the "
            "difference builds up across kernels or steps\n", L.checked, entry);
    return 0;
  }
  const kiln_site *site = &prog->sites[L.found];
  const Node *n = ir_at(s->ss->g, site->node);
  char where[160];
  coordinates(&n->shape, s->plan, L.at, where, sizeof where);
  fprintf(out, "first kernel that disagrees (entry %s): %s, computing %s (%%%d%s%s%s) at %s\n",
          entry, site->kernel, site->op, n->id, n->name ? " '" : "", n->name ? n->name : "",
          n->name ? "'" : "", site->source[0] ? site->source : "no model line");
  fprintf(out, "  max abs error %.3g, max rel error %.3g, largest at element %s of shape %s\n",
          L.max_abs, L.max_rel, where, shape_str(s->ss->g, &n->shape, (char[128]){0}, 128));
  return 0;
}

int check_model(Session *ss, int steps, uint64_t seed, FILE *out) {
  Sides s = {.ss = ss};
  Graph *g = ss->g;
  int rc = 1;
  double *buf = NULL, *x = NULL, *r = NULL;
  if (make_compiled(&s) || make_reference(&s))
    goto done;

  int64_t maxn = 1;
  for (int i = 0; i < s.plan->ntensors; i++) {
    int64_t n = rt_numel(&s.plan->tensors[i], s.plan->batch);
    if (n > maxn)
      maxn = n;
  }
  buf = malloc((size_t)maxn * sizeof *buf);
  x = malloc((size_t)maxn * sizeof *x);
  r = malloc((size_t)maxn * sizeof *r);
  if (!buf || !x || !r) {
    session_fail(ss, "out of memory");
    goto done;
  }
  DType dt = g->nparams > 0 ? ir_at(g, g->params[0])->dtype : DT_F32;
  CheckTol tol = check_tolerance(dt);
  fprintf(out, "check %s: batch %lld, seed %llu, compiled %s against the f64 reference\n",
          ss->prog->model, (long long)s.plan->batch, (unsigned long long)seed, dtype_name(dt));
  fprintf(out, "tolerance: |x - ref| <= %g + %g * (|ref| + max|ref|), per tensor\n", tol.abs,
          tol.rel);
  fprintf(out, "%-10s %-40s %11s %11s %8s\n", "phase", "tensor", "max abs", "max rel", "/ tol");

  Tally ty = {0};
  RtRng rng;
  rt_rng_seed(&rng, rt_hash_name(seed, "kiln check inputs"));
  init_persistent(&s, seed, buf);
  random_inputs(g, &s, &rng, buf);
  const unsigned out_role = 1u << KILN_ROLE_OUTPUT;
  const unsigned grads = out_role | (1u << KILN_ROLE_GRAD);
  const unsigned persistent =
      (1u << KILN_ROLE_PARAM) | (1u << KILN_ROLE_STATE) | (1u << KILN_ROLE_OPT);

  /* 1. Gradients. */
  if (run(&s, &s.cbe, "grad", s.plan->batch) ||
      run(&s, &s.rbe, "grad", s.plan->batch))
    goto done;
  compare_all(&s, grads, "grad", s.plan->batch, "grad", x, r, &ty, out);

  /* 2. Train steps, fresh inputs each time; both sides carry their own state forward. */
  for (int step = 1; step <= steps; step++) {
    char phase[32];
    snprintf(phase, sizeof phase, "train %d", step);
    random_inputs(g, &s, &rng, buf);
    if (run(&s, &s.cbe, "train", s.plan->batch) ||
        run(&s, &s.rbe, "train", s.plan->batch))
      goto done;
    compare_all(&s, out_role, "train", s.plan->batch, phase, x, r, &ty, out);
    compare_all(&s, persistent, "train", s.plan->batch, phase, x, r, &ty, out);
  }

  /* 2b. The same step cut in two: grad, then apply from the gradient tensors. */
  random_inputs(g, &s, &rng, buf);
  if (run(&s, &s.cbe, "grad", s.plan->batch) ||
      run(&s, &s.rbe, "grad", s.plan->batch) ||
      run(&s, &s.cbe, "apply", s.plan->batch) ||
      run(&s, &s.rbe, "apply", s.plan->batch))
    goto done;
  compare_all(&s, persistent, "apply", s.plan->batch, "apply", x, r, &ty, out);

  /* 3. Evaluation. */
  if (run(&s, &s.cbe, "eval", s.plan->batch) ||
      run(&s, &s.rbe, "eval", s.plan->batch))
    goto done;
  compare_all(&s, out_role, "eval", s.plan->batch, "eval", x, r, &ty, out);

  /* 4. A smaller batch runs the code specialised for a run-time batch. */
  if (s.plan->batch > 1 && g->nsyms > 0) {
    int64_t small = s.plan->batch / 2;
    char phase[32];
    snprintf(phase, sizeof phase, "grad @%lld", (long long)small);
    if (run(&s, &s.cbe, "grad", small) ||
        run(&s, &s.rbe, "grad", small))
      goto done;
    compare_all(&s, grads, "grad", small, phase, x, r, &ty, out);
  }

  if (ty.first_entry && locate_kernel(&s, ty.first_entry, buf, out))
    goto done;
  if (ty.failed)
    fprintf(out, "check: FAILED: %d of %d tensors beyond tolerance\n", ty.failed, ty.compared);
  else
    fprintf(out, "check: OK: %d tensors within tolerance (worst %.3g of the allowed error)\n",
            ty.compared, ty.worst);
  rc = ty.failed ? 1 : 0;
done:
  free(buf);
  free(x);
  free(r);
  sides_free(&s);
  return rc;
}

/* ---- kiln grad ------------------------------------------------------------------------------- */

static const RtNamedTensor *find_named(const RtNamedTensor *ts, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (ts[i].name && !strcmp(ts[i].name, name))
      return &ts[i];
  return NULL;
}

/* Tangent inputs ("tangent.<param>", train_build_jvp / train_build_hvp) come from the tangents
 * file, under the parameter's name, not from the inputs file. */
static const char *tangent_of(const char *name) {
  return name && !strncmp(name, "tangent.", 8) ? name + 8 : NULL;
}

/* The batch the inputs file implies: from the first model input with a batch dimension. */
static int grad_batch(Session *ss, const RtNamedTensor *in, int nin, const char *path,
                      int64_t *batch) {
  Graph *g = ss->g;
  *batch = 0;
  for (int i = 0; i < g->nnodes && *batch == 0; i++) {
    const Node *n = ir_at(g, i);
    if (n->op != OP_INPUT || tangent_of(n->name))
      continue;
    const RtNamedTensor *t = find_named(in, nin, n->name);
    if (!t) {
      return session_fail(ss, "%s: no tensor '%s' (a model input)", path, n->name);
    }
    for (int k = 0; k < n->shape.rank; k++)
      if (n->shape.d[k].sym == 0) {
        if (t->rank != n->shape.rank || t->dims[k] <= 0 || t->dims[k] % n->shape.d[k].n) {
          char want[160], have[160];
          shape_str(g, &n->shape, want, sizeof want);
          rt_format_dims(have, sizeof have, t->rank, t->dims);
          return session_fail(ss, "%s: tensor '%s' has shape %s but the model needs %s", path,
                              n->name, have, want);
        }
        *batch = t->dims[k] / n->shape.d[k].n;
        break;
      }
  }
  if (*batch == 0)
    *batch = g->train.batch > 0 ? g->train.batch : 1;
  return 0;
}

/* Labels from the inputs file must lie in [0, C) of the cross_entropy that reads them: the
 * reference runtime refuses others, and the compiled program only flags them with a NaN loss
 * (cg/cg_elem.c), which must not reach the output file as if it were a result. */
static int check_labels(Session *ss, const RtNamedTensor *in, int nin, const char *path) {
  Graph *g = ss->g;
  for (int i = 0; i < g->nnodes; i++) {
    const Node *n = ir_at(g, i);
    if (n->op != OP_CROSS_ENTROPY)
      continue;
    const Node *lab = ir_at(g, n->in[1]), *logits = ir_at(g, n->in[0]);
    const RtNamedTensor *t = lab->op == OP_INPUT ? find_named(in, nin, lab->name) : NULL;
    if (!t)
      continue;
    int64_t c = logits->shape.d[logits->shape.rank - 1].n, numel = 1;
    for (int k = 0; k < t->rank; k++)
      numel *= t->dims[k];
    for (int64_t k = 0; k < numel; k++) {
      double v = t->values[k];
      if (!(v >= 0 && v < (double)c && v == floor(v))) {
        return session_fail(ss, "%s: cross_entropy: label tensor '%s' has value %g at index "
                            "%lld, outside [0, %lld)", path, t->name, v, (long long)k,
                            (long long)c);
      }
    }
  }
  return 0;
}

/* Writes every tensor of `role` from the file into the backend, each with exactly its shape.
 * With `tangents`, only the tangent inputs, each from the tensor named after its parameter;
 * without, every tensor of the role but those. */
static int load_role(Session *ss, const Plan *p, RtBackend *be, int role, bool tangents,
                     const RtNamedTensor *ts, int n, const char *path) {
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    const char *param = tangent_of(t->name);
    if (t->role != role || tangents != (param != NULL))
      continue;
    const char *name = param ? param : t->name;
    const RtNamedTensor *f = find_named(ts, n, name);
    if (!f) {
      if (param)
        return session_fail(ss, "%s: no tensor '%s' (the direction for parameter '%s')", path,
                            name, name);
      return session_fail(ss, "%s: no tensor '%s' (a model %s)", path, name,
                          role == KILN_ROLE_INPUT ? "input" : "parameter");
    }
    bool same = f->rank == t->rank;
    for (int k = 0; same && k < t->rank; k++)
      same = f->dims[k] == t->dims[k];
    if (!same) {
      char want[160], have[160];
      rt_format_dims(want, sizeof want, t->rank, t->dims);
      rt_format_dims(have, sizeof have, f->rank, f->dims);
      return session_fail(ss, "%s: tensor '%s' has shape %s but %s %s", path, name, have,
                          param ? "the parameter is" : "the model needs", want);
    }
    be->write(be->self, i, f->values, rt_numel(t, p->batch));
  }
  return 0;
}

/* Which outputs of the grad entry a command writes, and under what name (NULL: not written). */
typedef enum Deriv { DERIV_GRAD, DERIV_JVP, DERIV_HVP } Deriv;

static const char *written_name(Deriv d, const char *name) {
  static const char *const prefix[] = {[DERIV_GRAD] = "grad.", [DERIV_HVP] = "hvp."};
  if (!strcmp(name, "loss"))
    return name;
  if (d == DERIV_JVP)
    return !strcmp(name, "jvp.loss") || !strcmp(name, "output") || !strcmp(name, "jvp.output")
               ? name
               : NULL;
  size_t k = strlen(prefix[d]);
  return strncmp(name, prefix[d], k) ? NULL : name + k;
}

/* kiln grad / jvp / hvp: one run of the grad entry (which train_build_jvp / train_build_hvp
 * extended) at the given values. */
static int derivatives(Session *ss, Deriv d, const char *params_path, const char *inputs_path,
                       const char *tangents_path, const char *out_path, bool use_reference,
                       FILE *out) {
  Sides s = {.ss = ss};
  Graph *g = ss->g;
  RtNamedTensor *pt = NULL, *it = NULL, *tt = NULL, *ot = NULL;
  int np = 0, ni = 0, nt = 0, no = 0, rc = 1;
  double *buf = NULL;
  char err[RT_ERR_LEN];
  const char *paths[3] = {params_path, inputs_path, tangents_path};
  for (int i = 0; i < 3; i++) {
    const char *why = paths[i] ? kiln_not_regular_file(paths[i]) : NULL;
    if (why) { /* reading a FIFO would wait for a writer forever */
      session_fail(ss, "%s: %s", paths[i], why);
      goto done;
    }
  }
  if (rt_safetensors_load(params_path, &pt, &np, err) ||
      rt_safetensors_load(inputs_path, &it, &ni, err) ||
      (tangents_path && rt_safetensors_load(tangents_path, &tt, &nt, err))) {
    session_fail(ss, "%s", err);
    goto done;
  }
  int64_t batch;
  if (grad_batch(ss, it, ni, inputs_path, &batch) || check_labels(ss, it, ni, inputs_path))
    goto done;
  ss->opt.batch = batch;
  if (use_reference ? make_reference(&s) : make_compiled(&s))
    goto done;
  RtBackend *be = use_reference ? &s.rbe : &s.cbe;

  /* State the grad entry reads but the file need not hold (running statistics) starts from its
   * initialiser, then the file wins where it has the tensor. */
  int64_t maxn = 1;
  for (int i = 0; i < s.plan->ntensors; i++) {
    int64_t n = rt_numel(&s.plan->tensors[i], s.plan->batch);
    maxn = n > maxn ? n : maxn;
  }
  buf = malloc((size_t)maxn * sizeof *buf);
  ot = calloc((size_t)s.plan->ntensors + 1, sizeof *ot);
  if (!buf || !ot) {
    session_fail(ss, "out of memory");
    goto done;
  }
  for (int i = 0; i < s.plan->ntensors; i++) {
    const kiln_tensor *t = &s.plan->tensors[i];
    if (t->role == KILN_ROLE_STATE || t->role == KILN_ROLE_HYPER || t->role == KILN_ROLE_OPT) {
      const RtNamedTensor *f = find_named(pt, np, t->name);
      int64_t n = rt_numel(t, s.plan->batch);
      bool same = f && f->rank == t->rank;
      for (int k = 0; same && k < t->rank; k++)
        same = f->dims[k] == t->dims[k];
      if (same)
        be->write(be->self, i, f->values, n);
      else {
        rt_init_tensor(t, g->train.seed, buf, n);
        be->write(be->self, i, buf, n);
      }
    }
  }
  if (load_role(ss, s.plan, be, KILN_ROLE_PARAM, false, pt, np, params_path) ||
      load_role(ss, s.plan, be, KILN_ROLE_INPUT, false, it, ni, inputs_path) ||
      (tangents_path &&
       load_role(ss, s.plan, be, KILN_ROLE_INPUT, true, tt, nt, tangents_path)))
    goto done;
  if (run(&s, be, "grad", s.plan->batch))
    goto done;

  /* "loss" and each gradient (the GRAD tensors "grad.<param>") or H v under its parameter's name;
   * jvp: the loss, the output and their directional derivatives. */
  int grad_e = rt_find_entry(be->prog, "grad");
  for (int i = 0; i < s.plan->ntensors; i++) {
    const kiln_tensor *t = &s.plan->tensors[i];
    if ((t->role != KILN_ROLE_OUTPUT && t->role != KILN_ROLE_GRAD) ||
        !rt_tensor_in_entry(t, grad_e))
      continue;
    const char *name = written_name(d, t->name);
    if (!name)
      continue;
    RtNamedTensor *o = &ot[no];
    int64_t n = rt_numel(t, s.plan->batch);
    o->values = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    if (!o->values) {
      session_fail(ss, "out of memory");
      goto done;
    }
    no++;
    o->name = name;
    o->dtype = t->dtype;
    o->rank = t->rank;
    memcpy(o->dims, t->dims, sizeof o->dims);
    be->read(be->self, i, o->values, n);
    if (!strcmp(name, "loss"))
      fprintf(out, "loss %.9g (batch %lld, %s)\n", o->values[0], (long long)s.plan->batch,
              use_reference ? "reference" : "compiled");
  }
  if (rt_safetensors_save(out_path, ot, no, err)) {
    session_fail(ss, "%s", err);
    goto done;
  }
  if (d == DERIV_JVP)
    fprintf(out, "wrote %d tensors (loss, jvp.loss%s) to %s\n", no,
            no > 2 ? ", output, jvp.output" : "", out_path);
  else
    fprintf(out, "wrote the loss and %d %s to %s\n", no - 1,
            d == DERIV_GRAD ? "gradients" : "Hessian-vector products", out_path);
  rc = 0;
done:
  if (ot)
    for (int i = 0; i < no; i++)
      free(ot[i].values);
  free(ot);
  free(buf);
  if (pt)
    rt_safetensors_free(pt, np);
  if (it)
    rt_safetensors_free(it, ni);
  if (tt)
    rt_safetensors_free(tt, nt);
  sides_free(&s);
  return rc;
}

int grad_model(Session *ss, const char *params_path, const char *inputs_path, const char *out_path,
               bool use_reference, FILE *out) {
  return derivatives(ss, DERIV_GRAD, params_path, inputs_path, NULL, out_path, use_reference, out);
}

int forward_model(Session *ss, bool hvp, const char *params_path, const char *inputs_path,
                  const char *tangents_path, const char *out_path, bool use_reference, FILE *out) {
  return derivatives(ss, hvp ? DERIV_HVP : DERIV_JVP, params_path, inputs_path, tangents_path,
                     out_path, use_reference, out);
}

/* ---- one kernel across every schedule choice ------------------------------------------------ */

/* The node a kernel name stands for: "k45_conv2d" (kiln schedule, profiles, generated code),
 * "%45" or "45". -1 when there is none. */
static int kernel_node(const Graph *g, const char *name) {
  const char *p = name[0] == 'k' || name[0] == '%' ? name + 1 : name;
  char *end;
  long id = strtol(p, &end, 10);
  if (end == p || (*end && *end != '_') || id < 0 || id >= g->nnodes)
    return -1;
  return op_is_leaf(ir_at(g, (int)id)->op) ? -1 : (int)id;
}

int check_kernel(Session *ss, const char *name, uint64_t seed, FILE *out) {
  Graph *g = ss->g;
  int id = kernel_node(g, name);
  if (id < 0)
    return session_fail(ss, "no kernel '%s': give a name from kiln schedule or a profile "
                        "(k45_conv2d) or a node (%%45)", name), 1;
  const Node *n = ir_at(g, id);
  /* The inputs' values: the model's own, at random parameters and inputs (reference runtime). */
  Sides s = {.ss = ss};
  if (make_reference(&s))
    return 1;
  RtRng rng;
  rt_rng_seed(&rng, rt_hash_name(seed, "kiln check inputs"));
  int64_t most = 1;
  for (int i = 0; i < s.plan->ntensors; i++)
    most = rt_numel(&s.plan->tensors[i], s.plan->batch) > most
               ? rt_numel(&s.plan->tensors[i], s.plan->batch) : most;
  double *buf = kiln_malloc((size_t)most * sizeof *buf);
  for (int i = 0; i < s.plan->ntensors; i++) { /* the reference side only */
    const kiln_tensor *t = &s.plan->tensors[i];
    int64_t m = rt_numel(t, s.plan->batch);
    if (t->role == KILN_ROLE_OUTPUT)
      continue;
    if (t->role != KILN_ROLE_INPUT) {
      rt_init_tensor(t, seed, buf, m);
    } else if (t->dtype == KILN_I32) {
      uint64_t c = (uint64_t)check_label_classes(g, s.plan, s.plan->tensor_node[i]);
      for (int64_t k = 0; k < m; k++)
        buf[k] = (double)rt_rng_below(&rng, c);
    } else {
      for (int64_t k = 0; k < m; k++)
        buf[k] = rt_rng_uniform(&rng);
    }
    s.rbe.write(s.rbe.self, i, buf, m);
  }
  free(buf);
  char err[RT_ERR_LEN];
  if (interp_eval(ss->ref, &id, 1, s.plan->batch, err))
    return session_fail(ss, "reference runtime: %s", err), 1;

  int leaves[IR_MAX_IN];
  Graph *volatile h = NULL;
  Trap t;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    ir_free(h);
    return session_fail(ss, "%s", t.msg), 1;
  }
  h = ir_new("kernel");
  ir_add_output(h, ENTRY_EVAL, "y", ir_isolate(h, g, n, leaves), "the kernel's output");
  kiln_trap_end(&t);
  Interp *ref = interp_new(h, s.plan->batch, false);
  if (!ref) {
    ir_free(h);
    return session_fail(ss, "out of memory"), 1;
  }
  for (int i = 0; i < n->nin; i++)
    memcpy(interp_data(ref, leaves[i]), interp_data(ss->ref, n->in[i]),
           (size_t)interp_numel(ref, leaves[i]) * sizeof(double));
  int y = h->entries[ENTRY_EVAL].outputs[0].node;
  if (interp_eval(ref, &y, 1, s.plan->batch, err)) {
    interp_free(ref);
    ir_free(h);
    return session_fail(ss, "reference runtime: %s", err), 1;
  }
  bool conv = n->op == OP_CONV2D || n->op == OP_CONV2D_BWD_DATA || n->op == OP_CONV2D_BWD_FILTER;
  bool gemm = conv || n->op == OP_MATMUL;
  fprintf(out, "kernel %%%d %s of %s (line %d): inputs from the model at random parameters; "
          "every schedule against the f64 reference\n", id, op_names[n->op], g->name, n->loc.line);
  fprintf(out, "%-48s %11s %11s %8s\n", "schedule", "max abs", "max rel", "/ tol");
  int failed = 0, tried = 0;
  static const ConvAlgo algos[] = {CONV_DIRECT, CONV_GEMM, CONV_IMPLICIT};
  static const GemmTiles tiles[] = {{0, 0, 0}, {16, 8, 32}};
  for (int fuse = 1; fuse >= 0; fuse--)
    for (int threads = 1; threads <= 2; threads++)
      for (int a = 0; a < (conv ? 3 : 1); a++)
        for (int k = 0; k < (gemm ? 2 : 1); k++) {
          Options o = ss->opt;
          o.batch = s.plan->batch;
          o.sched.fuse = fuse;
          o.sched.threads = threads;
          o.sched.conv = conv ? algos[a] : CONV_AUTO;
          o.sched.gemm = tiles[k];
          o.sched.tuning = NULL;
          char label[96];
          snprintf(label, sizeof label, "fuse %s, %d thread%s%s%s%s", fuse ? "on" : "off",
                   threads, threads > 1 ? "s" : "", conv ? ", conv " : "",
                   conv ? sched_conv_name(algos[a]) : "", k ? ", tiles 16/8/32" : "");
          Session vs;
          session_adopt(&vs, h, &o);
          RtBackend be;
          if (session_load(&vs) || rt_arena_backend_new(vs.prog, &be, err)) {
            fprintf(out, "%-44s cannot compile: %s\n", label, vs.error[0] ? vs.error : err);
            session_close(&vs);
            failed++;
            continue;
          }
          for (int i = 0; i < n->nin; i++) {
            int ti = rt_find_tensor(vs.prog, pool_printf(h->pool, "in%d", i));
            be.write(be.self, ti, interp_data(ref, leaves[i]), interp_numel(ref, leaves[i]));
          }
          int yt = rt_find_tensor(vs.prog, "y");
          int64_t m = interp_numel(ref, y);
          double *x = kiln_malloc((size_t)m * sizeof *x);
          if (be.run(be.self, rt_find_entry(vs.prog, "eval"), s.plan->batch, err)) {
            fprintf(out, "%-44s cannot run: %s\n", label, err);
            failed++;
          } else {
            be.read(be.self, yt, x, m);
            const double *r = interp_data(ref, y);
            CheckTol tol = check_tolerance(ir_at(h, y)->dtype);
            double scale = 0, worst = 0, max_abs = 0, max_rel = 0;
            for (int64_t e = 0; e < m; e++)
              if (isfinite(r[e]))
                scale = fmax(scale, fabs(r[e]));
            for (int64_t e = 0; e < m; e++) {
              double d = isnan(x[e]) != isnan(r[e]) ? INFINITY : isnan(r[e]) ? 0 : fabs(x[e] - r[e]);
              max_abs = fmax(max_abs, d);
              max_rel = fmax(max_rel, d / fmax(fabs(r[e]), 1e-30));
              worst = fmax(worst, d / (tol.abs + tol.rel * (fabs(r[e]) + scale)));
            }
            fprintf(out, "%-48s %11.3g %11.3g %8.3f  %s\n", label, max_abs, max_rel, worst,
                    worst <= 1 ? "ok" : "EXCEEDS TOLERANCE");
            failed += worst > 1;
          }
          tried++;
          free(x);
          rt_arena_backend_free(&be);
          session_close(&vs);
        }
  fprintf(out, failed ? "check: FAILED: %d of %d schedules\n" : "check: OK: %d of %d schedules\n",
          failed ? failed : tried, tried);
  interp_free(ref);
  ir_free(h);
  return failed ? 1 : 0;
}
