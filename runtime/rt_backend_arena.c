/*
 * rt_backend_arena.c — a compiled program's arena seen through the RtBackend interface.
 *
 * The generated code keeps every tensor at `arena + offset` in its own dtype; drivers (rt_train,
 * `kiln check`, `kiln grad`) exchange values as doubles. This file is the conversion between the
 * two, plus the call of an entry (by its index in the program's table) with the batch checked, so no caller pokes at the arena itself.
 * Counts are clamped to the tensor's size at the maximum batch: a wrong count from a driver must
 * not read or write outside the tensor.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

typedef struct ArenaBe {
  const kiln_program *prog;
  unsigned char *base;
  int owned;          /* base was allocated by rt_arena_backend_new */
  RtPool *pool;       /* NULL: tasks run on the calling thread */
  kiln_exec exec;
  RtProfile *profile; /* NULL: not profiling */
  void (*allreduce)(void *comm, void *data, int64_t n, int dtype); /* kept across exec resets */
  void *comm;
  void (*mark)(void *ctx, int site); /* a driver's marks (set_mark), also kept */
  void *mark_ctx;
} ArenaBe;

static int arena_set_threads(void *self, int threads, char *err);

static void arena_set_allreduce(void *self, void (*fn)(void *, void *, int64_t, int), void *comm) {
  ArenaBe *a = self;
  if (!a)
    return;
  a->allreduce = a->exec.allreduce = fn;
  a->comm = a->exec.comm = comm;
}

static int arena_set_mark(void *self, void (*mark)(void *ctx, int site), void *ctx) {
  ArenaBe *a = self;
  if (!a || a->profile || (mark && !a->prog->sites))
    return -1;
  a->mark = a->exec.mark = mark;
  a->mark_ctx = a->exec.profiler = ctx;
  return 0;
}

static void *arena_tensor_data(void *self, int tensor) {
  ArenaBe *a = self;
  if (!a || tensor < 0 || tensor >= a->prog->ntensors)
    return NULL;
  return a->base + a->prog->tensors[tensor].offset;
}
static int arena_profile_start(void *self, char *err);
static void arena_profile_report(void *self, FILE *out);

static int arena_run(void *self, int entry, int64_t batch, char *err) {
  ArenaBe *a = self;
  if (!a)
    return rt_errf(err, "out of memory creating the arena backend");
  if (entry < 0 || entry >= a->prog->nentries)
    return rt_errf(err, "the program has no entry %d", entry);
  kiln_entry_fn fn = a->prog->entries[entry].fn;
  if (!fn)
    return rt_errf(err, "entry '%s' has no function",
                   a->prog->entries[entry].name ? a->prog->entries[entry].name : "?");
  if (batch < 1 || batch > a->prog->batch)
    return rt_errf(err, "batch %lld is outside 1..%lld", (long long)batch,
                   (long long)a->prog->batch);
  if (!a->profile) {
    fn(a->base, batch, &a->exec);
    return 0;
  }
  rt_profile_batch(a->profile, batch);
  double t0 = rt_now();
  fn(a->base, batch, &a->exec);
  rt_profile_entry(a->profile, entry, rt_now() - t0);
  return 0;
}

static int64_t clamp_n(const ArenaBe *a, const kiln_tensor *t, int64_t n) {
  int64_t max = rt_numel(t, a->prog->batch);
  return n < 0 ? 0 : n > max ? max : n;
}

static void arena_read(void *self, int tensor, double *out, int64_t n) {
  ArenaBe *a = self;
  if (!a || tensor < 0 || tensor >= a->prog->ntensors)
    return;
  const kiln_tensor *t = &a->prog->tensors[tensor];
  const unsigned char *p = a->base + t->offset;
  int64_t m = clamp_n(a, t, n);
  for (int64_t i = 0; i < m; i++) {
    if (t->dtype == KILN_F32) {
      float v;
      memcpy(&v, p + 4 * i, 4);
      out[i] = v;
    } else if (t->dtype == KILN_F64) {
      memcpy(&out[i], p + 8 * i, 8);
    } else {
      int32_t v;
      memcpy(&v, p + 4 * i, 4);
      out[i] = v;
    }
  }
  for (int64_t i = m; i < n; i++)
    out[i] = 0.0;
}

static void arena_write(void *self, int tensor, const double *in, int64_t n) {
  ArenaBe *a = self;
  if (!a || tensor < 0 || tensor >= a->prog->ntensors)
    return;
  const kiln_tensor *t = &a->prog->tensors[tensor];
  unsigned char *p = a->base + t->offset;
  n = clamp_n(a, t, n);
  for (int64_t i = 0; i < n; i++) {
    if (t->dtype == KILN_F32) {
      float v = (float)in[i];
      memcpy(p + 4 * i, &v, 4);
    } else if (t->dtype == KILN_F64) {
      memcpy(p + 8 * i, &in[i], 8);
    } else {
      /* Converting an out-of-range double to int32_t is undefined: saturate, NaN to 0. */
      double d = isnan(in[i]) ? 0.0 : nearbyint(in[i]);
      int32_t v = d < (double)INT32_MIN ? INT32_MIN : d > (double)INT32_MAX ? INT32_MAX : (int32_t)d;
      memcpy(p + 4 * i, &v, 4);
    }
  }
}

void rt_arena_backend(const kiln_program *p, unsigned char *arena, RtBackend *be) {
  memset(be, 0, sizeof *be);
  ArenaBe *a = malloc(sizeof *a);
  if (a) {
    *a = (ArenaBe){p, arena, 0, NULL, {0}, NULL, NULL, NULL, NULL, NULL};
    rt_exec_init(&a->exec, NULL);
  }
  be->prog = p;
  be->self = a;
  be->run = arena_run;
  be->read = arena_read;
  be->write = arena_write;
  be->set_threads = arena_set_threads;
  be->profile_start = arena_profile_start;
  be->profile_report = arena_profile_report;
  be->set_allreduce = arena_set_allreduce;
  be->tensor_data = arena_tensor_data;
  be->set_mark = arena_set_mark;
}

int rt_arena_backend_new(const kiln_program *p, RtBackend *be, char *err) {
  memset(be, 0, sizeof *be);
  /* aligned_alloc wants a multiple of the alignment, and something to allocate. */
  size_t bytes = p->arena_bytes > 0 ? ((size_t)p->arena_bytes + 63) / 64 * 64 : 64;
  unsigned char *arena = aligned_alloc(64, bytes);
  if (!arena)
    return rt_errf(err, "out of memory for a %lld-byte arena", (long long)p->arena_bytes);
  memset(arena, 0, bytes);
  rt_arena_backend(p, arena, be);
  if (!be->self) {
    free(arena);
    return rt_errf(err, "out of memory creating the arena backend");
  }
  ((ArenaBe *)be->self)->owned = 1;
  return 0;
}

static int arena_set_threads(void *self, int threads, char *err) {
  ArenaBe *a = self;
  if (!a)
    return rt_errf(err, "out of memory creating the arena backend");
  int most = a->prog->threads > 0 ? a->prog->threads : 1;
  threads = threads <= 0 || threads > most ? most : threads;
  if (threads == rt_pool_threads(a->pool))
    return 0;
  RtPool *p = NULL;
  if (threads > 1 && !(p = rt_pool_new(threads, err)))
    return -1;
  rt_pool_free(a->pool);
  a->pool = p;
  rt_exec_init(&a->exec, p);
  a->exec.allreduce = a->allreduce;
  a->exec.comm = a->comm;
  a->exec.mark = a->mark;
  a->exec.profiler = a->mark_ctx;
  if (a->profile) {
    a->exec.mark = rt_profile_mark;
    a->exec.profiler = a->profile;
  }
  return 0;
}

static int arena_profile_start(void *self, char *err) {
  ArenaBe *a = self;
  if (!a)
    return rt_errf(err, "out of memory creating the arena backend");
  if (!a->prog->sites || !a->prog->fma_probe)
    return rt_errf(err, "the program has no call sites to profile");
  if (!a->profile && !(a->profile = rt_profile_new(a->prog, err)))
    return -1;
  a->exec.mark = rt_profile_mark;
  a->exec.profiler = a->profile;
  return 0;
}

/* The program's FMA probe on `threads` threads at once, each for about 0.1 s. */
typedef struct Probe {
  const kiln_program *prog;
  int64_t iters;
  double flops[256];
} Probe;

static void probe_task(void *args, int64_t task, int worker) {
  Probe *p = args;
  (void)worker;
  p->flops[task] = p->prog->fma_probe(p->iters);
}

static double fma_peak(ArenaBe *a, int threads) {
  Probe pr = {a->prog, 1 << 16, {0}};
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = rt_now(), flops = 0;
    rt_pool_run(threads > 1 ? a->pool : NULL, probe_task, &pr, threads);
    double dt = rt_now() - t0;
    for (int t = 0; t < threads; t++)
      flops += pr.flops[t];
    double g = dt > 0 ? flops / dt / 1e9 : 0;
    best = g > best ? g : best;
    if (dt < 0.05 && pr.iters < ((int64_t)1 << 40))
      pr.iters *= 4;
  }
  return best;
}

static void arena_profile_report(void *self, FILE *out) {
  ArenaBe *a = self;
  if (!a || !a->profile)
    return;
  int threads = rt_pool_threads(a->pool);
  double one = fma_peak(a, 1), all = threads > 1 ? fma_peak(a, threads) : one;
  rt_profile_report(a->profile, out, one, all, threads, 25);
}

int rt_arena_set_threads(RtBackend *be, int threads, char *err) {
  return arena_set_threads(be->self, threads, err);
}

const RtProfile *rt_arena_profile(const RtBackend *be) {
  const ArenaBe *a = be->self;
  return a ? a->profile : NULL;
}

int rt_arena_threads(const RtBackend *be) {
  const ArenaBe *a = be->self;
  return a ? rt_pool_threads(a->pool) : 1;
}

unsigned char *rt_arena_base(const RtBackend *be) {
  const ArenaBe *a = be->self;
  return a ? a->base : NULL;
}

void rt_arena_backend_free(RtBackend *be) {
  if (!be)
    return;
  ArenaBe *a = be->self;
  if (a && a->owned)
    free(a->base);
  if (a) {
    rt_pool_free(a->pool);
    rt_profile_free(a->profile);
  }
  free(a);
  be->self = NULL;
}
