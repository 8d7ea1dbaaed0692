/*
 * tune.c — `kiln tune`: the schedule's choices measured on this machine instead of predicted.
 *
 * The cost model (sched.c) picks each convolution's algorithm and the GEMM's cache tiles from
 * shapes and cache sizes; what is fastest also depends on things it does not model (the
 * compiler's code for a given shape, a VM's real caches, the thread count). Tuning compiles the
 * model under candidate schedules, runs its train step on this machine with the profiler on, and
 * keeps what won:
 *   1. the default schedule, every convolution direct, every convolution through the GEMM: per
 *      convolution node (forward, input gradient and weight gradient apart) the algorithm whose
 *      calls took least time;
 *   2. with those, the GEMM tiles kc and mc halved and doubled: the step time decides;
 *   3. the result against the default, measured again in alternation: it is kept only if it is
 *      at least TUNE_MIN_GAIN faster, so noise never makes a build slower.
 * Every candidate computes the same function (kiln check holds every schedule against the
 * reference), so tuning changes speed only. The decisions are a SchedTuning, saved as text in the
 * cache directory under a key naming the model text and everything else the timings depend on.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "driver/driver.h"

/* A tuned schedule must beat the default by this much to be kept. */
#define TUNE_MIN_GAIN 0.02

static int tfail(char *err, size_t cap, const char *fmt, ...) KILN_PRINTF(3, 4);
static int tfail(char *err, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return -1;
}

/* One candidate's timings: the train step, and per node the time of its kernel calls. */
typedef struct Timing {
  double step;     /* seconds per train step */
  double *node;    /* per node id, seconds per step */
  int nnodes;
} Timing;

/* Fills the program's inputs with values a step accepts: uniform in [0, 1), class 0. */
static void fill_inputs(RtBackend *be) {
  const kiln_program *p = be->prog;
  RtRng rng;
  rt_rng_seed(&rng, 11);
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role != KILN_ROLE_INPUT)
      continue;
    int64_t n = rt_numel(t, p->batch);
    double *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    if (!v)
      continue;
    for (int64_t k = 0; k < n && t->dtype != KILN_I32; k++)
      v[k] = rt_rng_uniform(&rng);
    be->write(be->self, i, v, n);
    free(v);
  }
}

/* Compiles the model under o, runs its train step for about `seconds` after a warm-up, and
 * returns the timings. */
static int measure(const char *path, const Options *o, double seconds, Timing *t, char *err,
                   size_t cap) {
  Session s;
  if (session_open_file(&s, path, o) || session_load(&s)) {
    tfail(err, cap, "%s", s.error);
    session_close(&s);
    return -1;
  }
  char rerr[RT_ERR_LEN];
  RtBackend be;
  int rc = -1, train = rt_find_entry(s.prog, "train");
  if (train < 0) {
    tfail(err, cap, "error: the model has no train step to tune (no `minimize`)");
    session_close(&s);
    return -1;
  }
  if (rt_arena_backend_new(s.prog, &be, rerr)) {
    tfail(err, cap, "error: %s", rerr);
    session_close(&s);
    return -1;
  }
  if (be.set_threads(be.self, o->sched.threads, rerr) || rt_init_persistent(&be, 1, -1, rerr)) {
    tfail(err, cap, "error: %s", rerr);
    goto done;
  }
  fill_inputs(&be);
  for (int k = 0; k < 2; k++)
    if (be.run(be.self, train, s.prog->batch, rerr)) {
      tfail(err, cap, "error: %s", rerr);
      goto done;
    }
  if (be.profile_start(be.self, rerr)) {
    tfail(err, cap, "error: %s", rerr);
    goto done;
  }
  int64_t steps = 0;
  double t0 = rt_now(), elapsed = 0;
  while (elapsed < seconds || steps < 3) {
    if (be.run(be.self, train, s.prog->batch, rerr)) {
      tfail(err, cap, "error: %s", rerr);
      goto done;
    }
    steps++;
    elapsed = rt_now() - t0;
  }
  t->step = elapsed / (double)steps;
  t->nnodes = s.g->nnodes;
  t->node = calloc((size_t)(t->nnodes > 0 ? t->nnodes : 1), sizeof *t->node);
  if (!t->node) {
    tfail(err, cap, "error: out of memory");
    goto done;
  }
  const RtProfile *prof = rt_arena_profile(&be);
  for (int i = 0; i < s.prog->nsites; i++) {
    const kiln_site *site = &s.prog->sites[i];
    if (site->entry == train && site->node >= 0 && site->node < t->nnodes)
      t->node[site->node] += rt_profile_seconds(prof, i) / (double)steps;
  }
  rc = 0;
done:
  rt_arena_backend_free(&be);
  session_close(&s);
  return rc;
}

static void timing_free(Timing *t) {
  free(t->node);
  t->node = NULL;
}

static void say(FILE *log, const char *what, double step) {
  if (log)
    fprintf(log, "tune: %-40s %8.3f ms per step\n", what, step * 1e3);
}

/* The nodes whose schedule has a convolution algorithm to choose. */
static bool is_conv_node(const Node *n) {
  return n->op == OP_CONV2D || n->op == OP_CONV2D_BWD_DATA || n->op == OP_CONV2D_BWD_FILTER;
}

int tune_model(const char *path, const Options *base, double seconds, FILE *log, TuneResult *out,
               char *err, size_t cap) {
  memset(out, 0, sizeof *out);
  Options o = *base;
  o.sched.tuning = NULL;
  Timing def = {0}, direct = {0}, gemm = {0}, implicit = {0};
  bool implicit_ok[SCHED_TUNED_MAX] = {false}, any_implicit = false;
  int rc = -1;
  if (measure(path, &o, seconds, &def, err, cap))
    return -1;
  say(log, "default schedule", def.step);
  out->candidates = 1;

  /* Which nodes are convolutions: from a session of the model itself. */
  Session s;
  if (session_open_file(&s, path, &o)) {
    tfail(err, cap, "%s", s.error);
    session_close(&s);
    goto done;
  }
  SchedTuning *t = &out->tuning;
  for (int i = 0; i < s.g->nnodes && t->nconv < SCHED_TUNED_MAX; i++)
    if (is_conv_node(ir_at(s.g, i))) {
      implicit_ok[t->nconv] = sched_implicit_ok(s.g, ir_at(s.g, i));
      any_implicit |= implicit_ok[t->nconv];
      t->conv_node[t->nconv++] = i;
    }
  session_close(&s);

  if (t->nconv > 0) {
    o.sched.conv = CONV_DIRECT;
    if (measure(path, &o, seconds, &direct, err, cap))
      goto done;
    say(log, "every convolution direct", direct.step);
    o.sched.conv = CONV_GEMM;
    if (measure(path, &o, seconds, &gemm, err, cap))
      goto done;
    say(log, "every convolution through the GEMM", gemm.step);
    out->candidates += 2;
    if (any_implicit) {
      o.sched.conv = CONV_IMPLICIT;
      if (measure(path, &o, seconds, &implicit, err, cap))
        goto done;
      say(log, "every convolution it can take implicit", implicit.step);
      out->candidates++;
    }
    o.sched.conv = base->sched.conv;
    /* Nodes the train step does not run (the eval entry's) keep the cost model's choice. */
    int kept = 0;
    for (int k = 0; k < t->nconv; k++) {
      int id = t->conv_node[k];
      if (direct.node[id] == 0 && gemm.node[id] == 0)
        continue;
      ConvAlgo a = direct.node[id] <= gemm.node[id] ? CONV_DIRECT : CONV_GEMM;
      double at = a == CONV_DIRECT ? direct.node[id] : gemm.node[id];
      if (implicit_ok[k] && implicit.node[id] < at)
        a = CONV_IMPLICIT;
      t->conv_node[kept] = id;
      t->conv_algo[kept++] = a;
    }
    t->nconv = kept;
  }

  /* The tiles, with the convolutions chosen. */
  o.sched.tuning = t;
  Timing cur = {0};
  if (measure(path, &o, seconds, &cur, err, cap))
    goto done;
  say(log, "chosen convolutions, default tiles", cur.step);
  out->candidates++;
  double best = cur.step;
  timing_free(&cur);
  {
    Session ps;
    if (session_open_file(&ps, path, &o) || session_plan(&ps)) {
      tfail(err, cap, "%s", ps.error);
      session_close(&ps);
      goto done;
    }
    t->gemm = ps.plan.sched->tiles;
    session_close(&ps);
  }
  GemmTiles start = t->gemm;
  static const struct {
    const char *what;
    int kc_num, kc_den, mc_num, mc_den;
  } tries[] = {{"GEMM kc halved", 1, 2, 1, 1},
               {"GEMM kc doubled", 2, 1, 1, 1},
               {"GEMM mc halved", 1, 1, 1, 2},
               {"GEMM mc doubled", 1, 1, 2, 1}};
  for (size_t k = 0; k < sizeof tries / sizeof *tries; k++) {
    GemmTiles keep = t->gemm;
    t->gemm.kc = start.kc * tries[k].kc_num / tries[k].kc_den / 32 * 32;
    t->gemm.mc = start.mc * tries[k].mc_num / tries[k].mc_den / 16 * 16;
    if (t->gemm.kc < 32 || t->gemm.mc < 16 || t->gemm.kc > 1024 || t->gemm.mc > 2048) {
      t->gemm = keep;
      continue;
    }
    if (measure(path, &o, seconds, &cur, err, cap))
      goto done;
    char what[96];
    snprintf(what, sizeof what, "%s (kc %" PRId64 ", mc %" PRId64 ")", tries[k].what, t->gemm.kc,
             t->gemm.mc);
    say(log, what, cur.step);
    out->candidates++;
    if (cur.step < best)
      best = cur.step;
    else
      t->gemm = keep;
    timing_free(&cur);
  }

  /* The tuned schedule against the default, again, in alternation. */
  double tuned_s = 1e30, def_s = 1e30;
  for (int rep = 0; rep < 2; rep++) {
    Timing a = {0}, b = {0};
    o.sched.tuning = NULL;
    if (measure(path, &o, seconds, &a, err, cap))
      goto done;
    o.sched.tuning = t;
    if (measure(path, &o, seconds, &b, err, cap)) {
      timing_free(&a);
      goto done;
    }
    def_s = a.step < def_s ? a.step : def_s;
    tuned_s = b.step < tuned_s ? b.step : tuned_s;
    timing_free(&a);
    timing_free(&b);
  }
  say(log, "default schedule, again", def_s);
  say(log, "tuned schedule", tuned_s);
  out->default_ms = def_s * 1e3;
  out->tuned_ms = tuned_s * 1e3;
  out->kept = tuned_s < def_s * (1 - TUNE_MIN_GAIN);
  if (!out->kept)
    memset(t, 0, sizeof *t);
  rc = 0;
done:
  timing_free(&def);
  timing_free(&direct);
  timing_free(&gemm);
  timing_free(&implicit);
  return rc;
}

/* ---- the tuning file ---- */

int tune_file_path(const char *cache_dir, const char *model_text, const Options *o,
                   const char *version, char *path, size_t cap) {
  if (!cache_dir || !*cache_dir)
    return -1;
  CacheKey k;
  cache_key_init(&k);
  cache_key_add_string(&k, "kiln tune 1");
  cache_key_add_string(&k, version);
  cache_key_add_string(&k, model_text);
  char parts[512];
  const Target *tg = &o->sched.target;
  snprintf(parts, sizeof parts,
           "batch %" PRId64 " threads %d fuse %d conv %d backend %d O%d vector %d l1 %" PRId64
           " l2 %" PRId64 " l3 %" PRId64 " cores %d march %s",
           o->batch, o->sched.threads, o->sched.fuse, (int)o->sched.conv, (int)o->backend.kind,
           o->backend.opt_level, tg->vector_bytes, tg->l1_bytes, tg->l2_bytes, tg->l3_bytes,
           tg->cores, o->backend.march ? o->backend.march : "native");
  cache_key_add_string(&k, parts);
  cache_key_final(&k);
  char hex[2 * SHA256_BYTES + 1];
  sha256_hex(k.digest, hex);
  return (size_t)snprintf(path, cap, "%s/tune/%s.txt", cache_dir, hex) < cap ? 0 : -1;
}

int tune_save(const char *path, const SchedTuning *t, const char *comment, char *err, size_t cap) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash)
    *slash = 0;
  Buf why = {.lossy = true};
  if (cache_open_dir(dir, &why)) {
    tfail(err, cap, "error: cannot use %s: %s", dir, why.p ? why.p : "?");
    buf_free(&why);
    return -1;
  }
  buf_free(&why);
  Buf text = {.lossy = true};
  buf_printf(&text, "# %s\n", comment);
  for (int k = 0; k < t->nconv; k++)
    buf_printf(&text, "conv %d %s\n", t->conv_node[k], sched_conv_name(t->conv_algo[k]));
  if (t->gemm.kc > 0)
    buf_printf(&text, "gemm %" PRId64 " %" PRId64 " %" PRId64 "\n", t->gemm.kc, t->gemm.mc,
               t->gemm.nc);
  if (!text.p || text.lost) {
    buf_free(&text);
    return tfail(err, cap, "error: out of memory");
  }
  int rc = kiln_write_file_atomic(path, NULL, 0, text.p, text.len);
  buf_free(&text);
  if (rc)
    return tfail(err, cap, "error: cannot write %s: %s", path, strerror(errno));
  return 0;
}

int tune_load(const char *path, SchedTuning *t) {
  memset(t, 0, sizeof *t);
  FILE *f = fopen(path, "r");
  if (!f)
    return errno == ENOENT ? 0 : -1;
  char line[256];
  int ok = 1;
  while (ok && fgets(line, sizeof line, f)) {
    int node;
    char algo[16];
    long long kc, mc, nc;
    if (line[0] == '#' || line[0] == '\n')
      continue;
    ConvAlgo a;
    if (sscanf(line, "conv %d %15s", &node, algo) == 2 && node >= 0 &&
        t->nconv < SCHED_TUNED_MAX && sched_conv_parse(algo, &a) && a != CONV_AUTO) {
      t->conv_node[t->nconv] = node;
      t->conv_algo[t->nconv++] = a;
    } else if (sscanf(line, "gemm %lld %lld %lld", &kc, &mc, &nc) == 3 && kc > 0 && kc <= 4096 &&
               mc > 0 && mc <= 4096 && nc > 0 && nc <= (1 << 20)) {
      t->gemm = (GemmTiles){kc, mc, nc};
    } else {
      ok = 0;
    }
  }
  fclose(f);
  if (!ok)
    memset(t, 0, sizeof *t);
  return ok ? 1 : -1;
}
