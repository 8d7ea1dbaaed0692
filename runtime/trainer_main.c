/*
 * trainer_main.c — main() of a standalone trainer: the generated step (which defines
 * kiln_program_desc) plus this file plus the rt_*.c support code is the whole program.
 *
 * The backend here is the compiled arena itself: one 64-byte-aligned, zeroed block; a tensor is
 * `arena + offset`, and values cross into rt_train as doubles, converted from and to the tensor's
 * dtype. Before anything runs, every tensor is checked to lie inside the arena, so a planner bug
 * shows up as a message rather than as memory corruption.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

extern const kiln_program kiln_program_desc;

typedef struct Arena {
  const kiln_program *prog;
  unsigned char *base;
} Arena;

static int dtype_size(int dtype) { return dtype == KILN_F64 ? 8 : 4; }

static int arena_check(const kiln_program *p, char *err) {
  if (p->arena_bytes < 0)
    return rt_errf(err, "program has a negative arena size");
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    int64_t bytes = rt_numel(t, p->batch) * dtype_size(t->dtype);
    if (t->offset < 0 || t->offset % 64 || t->offset > p->arena_bytes ||
        bytes > p->arena_bytes - t->offset)
      return rt_errf(err, "tensor '%s' (%lld bytes at offset %lld) does not fit the %lld-byte "
                     "arena", t->name, (long long)bytes, (long long)t->offset,
                     (long long)p->arena_bytes);
  }
  return 0;
}

static int arena_run(void *self, int entry, int64_t batch, char *err) {
  Arena *a = self;
  kiln_entry_fn fn = entry == KILN_ENTRY_TRAIN ? a->prog->train
                   : entry == KILN_ENTRY_EVAL  ? a->prog->eval
                   : entry == KILN_ENTRY_GRAD  ? a->prog->grad : NULL;
  if (!fn)
    return rt_errf(err, "model '%s' has no %s entry point", a->prog->model ? a->prog->model : "?",
                   entry == KILN_ENTRY_TRAIN ? "train" : entry == KILN_ENTRY_EVAL ? "eval"
                                                                                  : "grad");
  if (batch < 1 || batch > a->prog->batch)
    return rt_errf(err, "batch %lld is outside 1..%lld", (long long)batch,
                   (long long)a->prog->batch);
  fn(a->base, batch);
  return 0;
}

/* n is clamped to the tensor's size for the maximum batch: a wrong count from the driver must
 * not write outside the tensor. */
static int64_t clamp_n(const Arena *a, const kiln_tensor *t, int64_t n) {
  int64_t max = rt_numel(t, a->prog->batch);
  return n < 0 ? 0 : n > max ? max : n;
}

static void arena_read(void *self, int tensor, double *out, int64_t n) {
  Arena *a = self;
  const kiln_tensor *t = &a->prog->tensors[tensor];
  unsigned char *p = a->base + t->offset;
  n = clamp_n(a, t, n);
  for (int64_t i = 0; i < n; i++) {
    switch (t->dtype) {
    case KILN_F32: { float v; memcpy(&v, p + 4 * i, 4); out[i] = v; break; }
    case KILN_F64: { double v; memcpy(&v, p + 8 * i, 8); out[i] = v; break; }
    default: { int32_t v; memcpy(&v, p + 4 * i, 4); out[i] = v; break; }
    }
  }
}

static void arena_write(void *self, int tensor, const double *in, int64_t n) {
  Arena *a = self;
  const kiln_tensor *t = &a->prog->tensors[tensor];
  unsigned char *p = a->base + t->offset;
  n = clamp_n(a, t, n);
  for (int64_t i = 0; i < n; i++) {
    switch (t->dtype) {
    case KILN_F32: { float v = (float)in[i]; memcpy(p + 4 * i, &v, 4); break; }
    case KILN_F64: memcpy(p + 8 * i, &in[i], 8); break;
    default: {
      /* Saturate: an out-of-range double converted to int32_t is undefined behaviour. */
      double d = isnan(in[i]) ? 0 : nearbyint(in[i]);
      int32_t v = d < INT32_MIN ? INT32_MIN : d > INT32_MAX ? INT32_MAX : (int32_t)d;
      memcpy(p + 4 * i, &v, 4);
      break;
    }
    }
  }
}

int main(int argc, char **argv) {
  const kiln_program *prog = &kiln_program_desc;
  const char *name = argc > 0 && argv[0] ? argv[0] : "trainer";
  const char *slash = strrchr(name, '/');
  if (slash)
    name = slash + 1;

  RtOptions o;
  rt_options_default(&o);
  int rc = rt_options_parse(&o, argc, argv, name);
  if (rc)
    return rc > 0 ? 0 : 1;

  char err[RT_ERR_LEN];
  if (rt_check_program(prog, err) || arena_check(prog, err)) {
    fprintf(stderr, "%s: error: %s\n", name, err);
    return 1;
  }
  /* aligned_alloc wants a size that is a multiple of the alignment. */
  size_t bytes = ((size_t)prog->arena_bytes + 63) / 64 * 64;
  Arena a = {prog, aligned_alloc(64, bytes ? bytes : 64)};
  if (!a.base) {
    fprintf(stderr, "%s: error: cannot allocate the %lld-byte arena\n", name,
            (long long)prog->arena_bytes);
    return 1;
  }
  memset(a.base, 0, bytes);
  RtBackend be = {prog, &a, arena_run, arena_read, arena_write};
  rc = rt_train(&be, &o);
  free(a.base);
  return rc;
}
