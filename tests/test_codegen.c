/*
 * test_codegen.c — the generated C against the reference interpreter, and the AOT driver.
 *
 * Every op is built into a tiny graph, compiled to a shared object (cg_emit_c + the cc backend)
 * and run next to src/ref/interp.c in f64 from the same random leaves; every output must agree
 * within check_tolerance. Each graph runs at the batch it was planned for and at smaller batches
 * (every kernel takes the batch B at run time). Also: a golden test of a 1-op
 * program's text, the identifier rules (a name that is not an identifier never reaches the C),
 * label errors, update ordering, and the AOT failure paths (no partial output files).
 */
#include <check.h>
#include <dirent.h>
#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "driver/driver.h"
#include "ir/ir.h"
#include "xform/xform.h"
#include "plan/plan.h"
#include "cg/cg.h"
#include "backend/backend.h"
#include "ref/ref.h"
#include "runtime.h"
#include "front/front.h"

extern const char kiln_abi_h_text[];

static const Loc L0 = {0};
static Graph *g;
/* The schedule options of the next run_open (setup: the defaults). */
static SchedOptions opts;

static void setup(void) {
  sched_default_options(&opts);
  g = ir_new("t");
  ir_sym(g, "B");
}
static void teardown(void) { ir_free(g); }

/* Dims: n, or n*B. */
static Dim C_(int64_t n) { return (Dim){n, -1}; }
static Dim B_(int64_t n) { return (Dim){n, 0}; }
static Shape sh(int rank, Dim a, Dim b, Dim c) {
  Shape s = {rank, {a, b, c}};
  return s;
}
#define S0() sh(0, C_(1), C_(1), C_(1))
#define S1(a) sh(1, a, C_(1), C_(1))
#define S2(a, b) sh(2, a, b, C_(1))
#define S3(a, b, c) sh(3, a, b, c)

static int input(const char *name, DType dt, Shape s) {
  return ir_leaf(g, OP_INPUT, ROLE_INPUT, name, dt, s, L0);
}
static int param(const char *name, DType dt, Shape s) {
  return ir_leaf(g, OP_PARAM, ROLE_PARAM, name, dt, s, L0);
}
static void out(const char *name, int node) { ir_add_output(g, ENTRY_GRAD, name, node, NULL); }

/* ---- the harness ------------------------------------------------------------------------------ */

typedef struct Run {
  Session s;                  /* the graph g through the pipeline, compiled and loaded */
  const Plan *plan;
  const char *src;            /* the generated C */
  const kiln_program *prog;
  unsigned char *arena;
  RtBackend cbe, rbe;
  Interp *it;
  kiln_program rprog;
} Run;

static void run_open(Run *r, int64_t batch) {
  memset(r, 0, sizeof *r);
  Options o;
  session_default_options(&o);
  o.batch = batch;
  o.sched = opts;
  session_adopt(&r->s, g, &o);
  ck_assert_msg(session_load(&r->s) == 0, "%s\n--- source ---\n%s", r->s.error,
                r->s.c.p ? r->s.c.p : "");
  r->plan = &r->s.plan;
  r->src = r->s.c.p;
  r->prog = r->s.prog;
  size_t bytes = ((size_t)r->prog->arena_bytes + 63) / 64 * 64;
  r->arena = aligned_alloc(64, bytes);
  ck_assert_ptr_nonnull(r->arena);
  memset(r->arena, 0xA5, bytes); /* garbage: kernels must not rely on a zeroed arena */
  rt_arena_backend(r->prog, r->arena, &r->cbe);
  char terr[RT_ERR_LEN];
  ck_assert_msg(rt_arena_set_threads(&r->cbe, r->prog->threads, terr) == 0, "%s", terr);
  r->it = interp_new(g, r->plan->batch, false);
  ck_assert_ptr_nonnull(r->it);
  interp_backend(r->it, r->plan, &r->rprog, &r->rbe);
}

static void run_close(Run *r) {
  rt_arena_backend_free(&r->cbe);
  free(r->arena);
  interp_free(r->it);
  session_close(&r->s);
}

/* Random values for every leaf the driver writes: floats in [lo, hi) rounded to their dtype,
 * labels in [0, 5). */
static void randomise(Run *r, uint64_t seed, double lo, double hi) {
  RtRng rng;
  rt_rng_seed(&rng, seed);
  for (int i = 0; i < r->plan->ntensors; i++) {
    const kiln_tensor *t = &r->plan->tensors[i];
    if (t->role == KILN_ROLE_OUTPUT)
      continue;
    int64_t n = rt_numel(t, r->plan->batch);
    double *v = malloc((size_t)(n + 1) * sizeof *v);
    for (int64_t k = 0; k < n; k++) {
      if (t->dtype == KILN_I32)
        v[k] = (double)rt_rng_below(&rng, 5);
      else
        v[k] = lo + (hi - lo) * rt_rng_uniform(&rng);
      if (t->dtype == KILN_F32)
        v[k] = (double)(float)v[k];
    }
    r->cbe.write(r->cbe.self, i, v, n);
    r->rbe.write(r->rbe.self, i, v, n);
    free(v);
  }
}

/* Whether tensor t holds a result of entry e: an output or a gradient the entry writes. */
static bool result_of(const kiln_tensor *t, int e) {
  return (t->role == KILN_ROLE_OUTPUT || t->role == KILN_ROLE_GRAD) && rt_tensor_in_entry(t, e);
}

/* Runs the entry named `name` on both sides at batch and compares every output and gradient the
 * entry writes, and every parameter and state. */
static void run_compare(Run *r, const char *name, int64_t batch) {
  char err[RT_ERR_LEN];
  int entry = rt_find_entry(r->prog, name);
  ck_assert_int_ge(entry, 0);
  ck_assert_msg(r->cbe.run(r->cbe.self, entry, batch, err) == 0, "compiled: %s", err);
  ck_assert_msg(r->rbe.run(r->rbe.self, entry, batch, err) == 0, "reference: %s", err);
  for (int i = 0; i < r->plan->ntensors; i++) {
    const kiln_tensor *t = &r->plan->tensors[i];
    bool written = result_of(t, entry) || t->role == KILN_ROLE_PARAM || t->role == KILN_ROLE_STATE;
    if (!written)
      continue;
    int64_t n = rt_numel(t, batch);
    double *x = malloc((size_t)(n + 1) * sizeof *x), *y = malloc((size_t)(n + 1) * sizeof *y);
    r->cbe.read(r->cbe.self, i, x, n);
    r->rbe.read(r->rbe.self, i, y, n);
    CheckTol tol = check_tolerance(t->dtype == KILN_F32 ? DT_F32 : DT_F64);
    double scale = 0;
    for (int64_t k = 0; k < n; k++)
      scale = isfinite(y[k]) && fabs(y[k]) > scale ? fabs(y[k]) : scale;
    for (int64_t k = 0; k < n; k++)
      ck_assert_msg(x[k] == y[k] || (isnan(x[k]) && isnan(y[k])) ||
                        fabs(x[k] - y[k]) <= tol.abs + tol.rel * (fabs(y[k]) + scale),
                    "%s[%lld] at batch %lld: compiled %.9g, reference %.9g\n--- source ---\n%s",
                    t->name, (long long)k, (long long)batch, x[k], y[k], r->src);
    free(x);
    free(y);
  }
}

/* The whole check of the grad entry: specialised batch, then run-time batches. */
static void compare_grad(int64_t batch, double lo, double hi) {
  Run r;
  run_open(&r, batch);
  randomise(&r, 42, lo, hi);
  run_compare(&r, "grad", batch);
  if (batch > 2)
    run_compare(&r, "grad", batch - 1);
  if (batch > 1)
    run_compare(&r, "grad", 1);
  run_close(&r);
}

/* ---- every op --------------------------------------------------------------------------------- */

START_TEST(binary_ops_broadcasting) {
  static const Op ops[] = {OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_POW};
  DType dt = _i ? DT_F64 : DT_F32;
  int a = input("a", dt, S3(B_(1), C_(3), C_(4)));
  int row = input("row", dt, S1(C_(4)));
  int col = param("col", dt, S2(C_(3), C_(1)));
  int mid = input("mid", dt, S3(B_(1), C_(1), C_(4)));
  int same = input("same", dt, S3(B_(1), C_(3), C_(4)));
  int k = ir_const(g, 1.25, dt, L0);
  char name[32];
  for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
    int ys[] = {ir_binary(g, ops[i], a, row, L0),  ir_binary(g, ops[i], row, a, L0),
                ir_binary(g, ops[i], mid, col, L0), ir_binary(g, ops[i], a, same, L0),
                ir_binary(g, ops[i], a, k, L0),    ir_binary(g, ops[i], k, col, L0)};
    for (size_t j = 0; j < sizeof ys / sizeof *ys; j++) {
      snprintf(name, sizeof name, "y_%s_%zu", op_names[ops[i]], j);
      out(name, ys[j]);
    }
  }
  compare_grad(5, 0.5, 1.5);
}
END_TEST

START_TEST(unary_ops) {
  static const Op ops[] = {OP_NEG, OP_EXP, OP_LOG, OP_SQRT, OP_RELU};
  DType dt = _i ? DT_F64 : DT_F32;
  int x = input("x", dt, S2(B_(2), C_(7)));
  int p = param("p", dt, S1(C_(3)));
  for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
    char name[32];
    snprintf(name, sizeof name, "y.%s", op_names[ops[i]]);
    out(name, ir_unary(g, ops[i], x, L0));
    snprintf(name, sizeof name, "p.%s", op_names[ops[i]]);
    out(name, ir_unary(g, ops[i], p, L0));
  }
  compare_grad(4, 0.1, 2.0);
}
END_TEST

/* The seed chapters' elementwise math on both signs (and maximum against a broadcast row): the
 * generated expressions against the reference kernels, in f32 and f64. */
START_TEST(math_ops_mixed_signs) {
  static const Op ops[] = {OP_SIN, OP_COS, OP_ATAN, OP_ERF, OP_SIGN, OP_SOFTPLUS};
  DType dt = _i ? DT_F64 : DT_F32;
  int x = input("x", dt, S2(B_(2), C_(7)));
  int row = input("row", dt, S1(C_(7)));
  for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
    char name[32];
    snprintf(name, sizeof name, "y.%s", op_names[ops[i]]);
    out(name, ir_unary(g, ops[i], x, L0));
  }
  out("y.maximum", ir_binary(g, OP_MAXIMUM, x, row, L0));
  out("y.maximum_swapped", ir_binary(g, OP_MAXIMUM, row, x, L0));
  compare_grad(5, -3.0, 3.0);
}
END_TEST

START_TEST(relu_and_relu_grad_mixed_signs) {
  int x = input("x", DT_F32, S2(B_(1), C_(9)));
  int dy = input("dy", DT_F32, S2(B_(1), C_(9)));
  out("relu", ir_unary(g, OP_RELU, x, L0));
  out("relu_grad", ir_binary(g, OP_RELU_GRAD, x, dy, L0));
  compare_grad(6, -1.0, 1.0);
}
END_TEST

START_TEST(reductions) {
  DType dt = _i ? DT_F64 : DT_F32;
  int x = input("x", dt, S3(B_(1), C_(3), C_(4)));
  static const unsigned axes[] = {1, 2, 4, 3, 5, 6, 7};
  char name[32];
  for (size_t i = 0; i < sizeof axes / sizeof *axes; i++)
    for (int keep = 0; keep < 2; keep++) {
      snprintf(name, sizeof name, "sum%u_%d", axes[i], keep);
      out(name, ir_reduce(g, OP_SUM, x, axes[i], keep, L0));
      snprintf(name, sizeof name, "mean%u_%d", axes[i], keep);
      out(name, ir_reduce(g, OP_MEAN, x, axes[i], keep, L0));
    }
  /* NUMEL's value depends on the run-time batch: the input's only purpose is its shape. */
  out("numel_b", ir_reduce(g, OP_NUMEL, x, 1u, false, L0));
  out("numel_c", ir_reduce(g, OP_NUMEL, x, 6u, false, L0));
  compare_grad(5, -1.0, 1.0);
}
END_TEST

START_TEST(sum_to_and_expand) {
  DType dt = _i ? DT_F64 : DT_F32;
  int x = input("x", dt, S3(B_(1), C_(3), C_(4)));
  int like_col = param("like_col", dt, S2(C_(3), C_(1)));
  int like_row = param("like_row", dt, S1(C_(4)));
  int like_s = param("like_s", dt, S0());
  int like_b = input("like_b", dt, S3(B_(1), C_(1), C_(4)));
  int sum_to[] = {like_col, like_row, like_s, like_b};
  char name[32];
  for (size_t i = 0; i < 4; i++) {
    snprintf(name, sizeof name, "sum_to%zu", i);
    out(name, ir_node(g, OP_SUM_TO, 2, (int[]){x, sum_to[i]}, NULL, L0));
    snprintf(name, sizeof name, "expand%zu", i);
    out(name, ir_node(g, OP_EXPAND, 2, (int[]){sum_to[i], x}, NULL, L0));
  }
  compare_grad(4, -1.0, 1.0);
}
END_TEST

START_TEST(reshape_copies_in_order) {
  int x = input("x", DT_F32, S2(B_(1), C_(12)));
  int r = ir_reshape(g, x, S3(B_(1), C_(3), C_(4)), L0);
  out("r", r);
  out("r2", ir_reshape(g, ir_unary(g, OP_EXP, r, L0), S2(B_(3), C_(4)), L0));
  compare_grad(3, -1.0, 1.0);
}
END_TEST

START_TEST(matmul_all_transposes) {
  DType dt = _i ? DT_F64 : DT_F32;
  /* B in M, in K and in N; every transpose combination. */
  int xb = input("xb", dt, S2(B_(1), C_(7)));     /* [B, 7] */
  int xbt = input("xbt", dt, S2(C_(7), B_(1)));   /* [7, B] */
  int w = param("w", dt, S2(C_(7), C_(5)));       /* [7, 5] */
  int wt = param("wt", dt, S2(C_(5), C_(7)));     /* [5, 7] */
  int yb = input("yb", dt, S2(B_(1), C_(5)));     /* [B, 5] */
  out("m00", ir_matmul(g, xb, w, false, false, L0));   /* [B,5] */
  out("m01", ir_matmul(g, xb, wt, false, true, L0));   /* [B,5] */
  out("m10", ir_matmul(g, xbt, w, true, false, L0));   /* [B,5] */
  out("m11", ir_matmul(g, xbt, wt, true, true, L0));   /* [B,5] */
  out("k_b", ir_matmul(g, xb, yb, true, false, L0));   /* [7,5], K = B */
  out("k_bt", ir_matmul(g, yb, xbt, true, true, L0));  /* [5,7], K = B */
  out("n_b", ir_matmul(g, w, xbt, true, false, L0));   /* [5,B] */
  compare_grad(6, -1.0, 1.0);
}
END_TEST

/* The profile's view of a program: one site per kernel call in entry order, each with its exact
 * FLOPs at the full batch; marks around every kernel of an entry, in order, ending with -1; the
 * FMA probe's count of what it did. */
typedef struct Marks {
  int n, site[16];
} Marks;

static void record_mark(void *profiler, int site) {
  Marks *m = profiler;
  if (m->n < 16)
    m->site[m->n++] = site;
}

START_TEST(profile_sites_and_marks) {
  int x = input("x", DT_F32, S2(B_(1), C_(7)));
  int w = param("w", DT_F32, S2(C_(7), C_(5)));
  int y = ir_matmul(g, x, w, false, false, L0);
  out("y", y);
  out("r", ir_unary(g, OP_RELU, y, L0));
  Run r;
  run_open(&r, 6);
  const kiln_program *p = r.prog;
  int grad = rt_find_entry(p, "grad");
  int n = 0;
  for (int i = 0; i < p->nsites; i++)
    if (p->sites[i].entry == grad) {
      const kiln_site *s = &p->sites[i];
      ck_assert_int_eq(s->per_example, 1);
      ck_assert_int_eq(s->tasks, 0);
      if (n++ == 0) {
        ck_assert_str_eq(s->op, "matmul");
        ck_assert(s->flops == 2.0 * 6 * 7 * 5);
      } else {
        ck_assert_str_eq(s->op, "relu");
        ck_assert(s->flops == 6.0 * 5);
      }
    }
  ck_assert_int_eq(n, 2);
  Marks m = {0};
  kiln_exec ex = {.mark = record_mark, .profiler = &m};
  p->entries[grad].fn(r.arena, 6, &ex);
  ck_assert_int_eq(m.n, 3);
  ck_assert_int_eq(p->sites[m.site[0]].entry, grad);
  ck_assert_str_eq(p->sites[m.site[0]].op, "matmul");
  ck_assert_str_eq(p->sites[m.site[1]].op, "relu");
  ck_assert_int_eq(m.site[2], -1);
  double flops = p->fma_probe(1000);
  ck_assert_msg(flops == 24000.0 * 4 || flops == 24000.0 * 8 || flops == 24000.0 * 16,
                "the probe did %g FLOPs in 1000 rounds", flops);
  run_close(&r);
}
END_TEST

START_TEST(cross_entropy_and_grad) {
  DType dt = _i ? DT_F64 : DT_F32;
  int z = input("z", dt, S2(B_(1), C_(5)));
  int lab = input("label", DT_I32, S1(B_(1)));
  int dy = param("dy", dt, S0());
  int big = ir_binary(g, OP_MUL, z, ir_const(g, 300.0, dt, L0), L0); /* exp would overflow */
  out("loss", ir_node(g, OP_CROSS_ENTROPY, 2, (int[]){z, lab}, NULL, L0));
  out("loss_big", ir_node(g, OP_CROSS_ENTROPY, 2, (int[]){big, lab}, NULL, L0));
  out("dz", ir_node(g, OP_CROSS_ENTROPY_GRAD, 3, (int[]){z, lab, dy}, NULL, L0));
  out("dz_big", ir_node(g, OP_CROSS_ENTROPY_GRAD, 3, (int[]){big, lab, dy}, NULL, L0));
  compare_grad(7, -2.0, 2.0);
}
END_TEST

/* Indexing by integer tensors, whose values here run 0..4: along an axis of 4, the index 4 is
 * out of range and must give NaN (gather, one_hot) or be skipped (gather's adjoint), the same in
 * both runtimes. Gathers along the batch axis and along an inner one. */
START_TEST(gather_and_one_hot) {
  DType dt = _i ? DT_F64 : DT_F32;
  int x = input("x", dt, S3(B_(1), C_(4), C_(3)));
  int ix1 = input("ix1", DT_I32, S3(B_(1), C_(2), C_(3)));
  int ix2 = input("ix2", DT_I32, S3(B_(1), C_(4), C_(5)));
  int lab = input("label", DT_I32, S2(B_(1), C_(3)));
  int dy = input("dy", dt, S3(B_(1), C_(2), C_(3)));
  Attr a1, a2;
  memset(&a1, 0, sizeof a1);
  memset(&a2, 0, sizeof a2);
  a1.axis = 1, a2.axis = 2;
  out("g1", ir_node(g, OP_GATHER, 2, (int[]){x, ix1}, &a1, L0));
  out("g2", ir_node(g, OP_GATHER, 2, (int[]){x, ix2}, &a2, L0));
  out("gg", ir_node(g, OP_GATHER_GRAD, 3, (int[]){dy, ix1, x}, &a1, L0));
  Attr oh;
  memset(&oh, 0, sizeof oh);
  oh.len = 4, oh.dtype = dt;
  out("oh", ir_node(g, OP_ONE_HOT, 1, &lab, &oh, L0));
  compare_grad(5, -2.0, 2.0);
}
END_TEST

/* Issue-3 elementwise ops and transpose: compared once the reference runtime has their kernels. */
START_TEST(activations_and_transpose) {
  static const Op ops[] = {OP_SIGMOID, OP_TANH, OP_LEAKY_RELU, OP_LEAKY_RELU_GRAD, OP_BCE_LOGITS,
                           OP_TRANSPOSE};
  int x = input("x", DT_F32, S3(B_(1), C_(3), C_(4)));
  int t = input("t", DT_F32, S1(C_(4)));
  int dy = input("dy", DT_F32, S3(B_(1), C_(3), C_(4)));
  bool reference = true;
  for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
    Attr a = {0};
    a.value = 0.125;
    a.perm[0] = 2, a.perm[1] = 0, a.perm[2] = 1;
    int in[2] = {x, ops[i] == OP_BCE_LOGITS ? t : dy};
    char name[32];
    snprintf(name, sizeof name, "y.%s", op_names[ops[i]]);
    out(name, ir_node(g, ops[i], op_arity[ops[i]], in, &a, L0));
    reference &= interp_has_kernel(ops[i]);
  }
  if (reference) {
    compare_grad(4, -2.0, 2.0);
    return;
  }
  /* Without reference kernels yet: the code must at least compile, run and give finite values. */
  Run r;
  run_open(&r, 4);
  randomise(&r, 5, -2.0, 2.0);
  char err[RT_ERR_LEN];
  ck_assert_int_eq(r.cbe.run(r.cbe.self, rt_find_entry(r.prog, "grad"), 3, err), 0);
  for (int i = 0; i < r.plan->ntensors; i++) {
    const kiln_tensor *kt = &r.plan->tensors[i];
    if (kt->role != KILN_ROLE_OUTPUT && kt->role != KILN_ROLE_GRAD)
      continue;
    double v[64];
    int64_t n = rt_numel(kt, 3);
    ck_assert_int_le(n, 64);
    r.cbe.read(r.cbe.self, i, v, n);
    for (int64_t k = 0; k < n; k++)
      ck_assert_msg(isfinite(v[k]), "%s[%lld] = %g", kt->name, (long long)k, v[k]);
  }
  run_close(&r);
}
END_TEST

/* ---- softmax, dropout, pooling, normalisation ----------------------------------------------- */

static Shape S4(Dim a, Dim b, Dim c, Dim d) {
  Shape s = {4, {a, b, c, d}};
  return s;
}

/* Writes v(k) into a tensor on both sides (e.g. values with ties, or a dropout counter). */
static void write_both(Run *r, const char *name, int64_t batch, double (*v)(int64_t k)) {
  int i = rt_find_tensor(r->prog, name);
  ck_assert_int_ge(i, 0);
  int64_t n = rt_numel(&r->plan->tensors[i], batch);
  double *d = malloc((size_t)(n + 1) * sizeof *d);
  for (int64_t k = 0; k < n; k++)
    d[k] = v(k);
  r->cbe.write(r->cbe.self, i, d, n);
  r->rbe.write(r->rbe.self, i, d, n);
  free(d);
}

START_TEST(softmax_each_axis) {
  DType dt = _i ? DT_F64 : DT_F32;
  int x = input("x", dt, S3(B_(1), C_(3), C_(5)));
  int xt = input("xt", dt, S2(C_(4), B_(1))); /* the batch inside a row: inner = B */
  int big = ir_binary(g, OP_MUL, x, ir_const(g, 300.0, dt, L0), L0);
  char name[32];
  for (int ax = 0; ax < 3; ax++) {
    Attr a = {0};
    a.axis = ax;
    snprintf(name, sizeof name, "softmax%d", ax);
    out(name, ir_node(g, OP_SOFTMAX, 1, &x, &a, L0));
    snprintf(name, sizeof name, "log_softmax%d", ax);
    out(name, ir_node(g, OP_LOG_SOFTMAX, 1, &x, &a, L0));
    snprintf(name, sizeof name, "log_softmax_big%d", ax);
    out(name, ir_node(g, OP_LOG_SOFTMAX, 1, &big, &a, L0));
    snprintf(name, sizeof name, "softmax_big%d", ax);
    out(name, ir_node(g, OP_SOFTMAX, 1, &big, &a, L0));
    if (ax < 2) {
      snprintf(name, sizeof name, "softmax_t%d", ax);
      out(name, ir_node(g, OP_SOFTMAX, 1, &xt, &a, L0));
    }
  }
  compare_grad(4, -2.0, 2.0);
}
END_TEST

static double counter_value(int64_t k) { return 12345.0 + (double)k; }

/* Dropout against the reference: the same elements dropped (compared exactly, not within a
 * tolerance), at several rates and salts, full and run-time batches. */
START_TEST(dropout_masks_match_reference) {
  DType dt = _i ? DT_F64 : DT_F32;
  int x = input("x", dt, S3(B_(1), C_(3), C_(7)));
  int counter = ir_leaf(g, OP_STATE, ROLE_STATE, "counter", DT_F64, S0(), L0);
  static const double ps[] = {0.0, 0.25, 0.5, 0.9, 0.999};
  char name[32];
  for (size_t i = 0; i < sizeof ps / sizeof *ps; i++)
    for (uint32_t salt = 1; salt <= 2; salt++) {
      Attr a = {0};
      a.value = ps[i];
      a.salt = salt;
      snprintf(name, sizeof name, "drop%zu_%u", i, salt);
      out(name, ir_node(g, OP_DROPOUT, 2, (int[]){x, counter}, &a, L0));
    }
  Run r;
  run_open(&r, 5);
  randomise(&r, 9, 0.5, 1.5); /* nonzero, so a zero means dropped */
  write_both(&r, "counter", 5, counter_value);
  static const int64_t batches[] = {5, 4, 1};
  for (size_t bi = 0; bi < 3; bi++) {
    int64_t b = batches[bi];
    run_compare(&r, "grad", b);
    for (int i = 0; i < r.plan->ntensors; i++) {
      const kiln_tensor *t = &r.plan->tensors[i];
      if (t->role != KILN_ROLE_OUTPUT)
        continue;
      int64_t n = rt_numel(t, b);
      double cv[128], rv[128];
      ck_assert_int_le(n, 128);
      r.cbe.read(r.cbe.self, i, cv, n);
      r.rbe.read(r.rbe.self, i, rv, n);
      int64_t dropped = 0;
      for (int64_t k = 0; k < n; k++) {
        ck_assert_msg((cv[k] == 0) == (rv[k] == 0), "%s[%lld]: mask differs", t->name,
                      (long long)k);
        if (dt == DT_F64)
          ck_assert_msg(cv[k] == rv[k], "%s[%lld]: %.17g vs %.17g", t->name, (long long)k, cv[k],
                        rv[k]);
        dropped += rv[k] == 0;
      }
      if (strncmp(t->name, "drop0_", 6) == 0)
        ck_assert_int_eq(dropped, 0);
    }
  }
  run_close(&r);
}
END_TEST

START_TEST(concat_and_slice) {
  DType dt = _i ? DT_F64 : DT_F32;
  int a = input("a", dt, S3(B_(1), C_(2), C_(3)));
  int b = input("b", dt, S3(B_(1), C_(4), C_(3)));
  int c = input("c", dt, S3(B_(1), C_(2), C_(5)));
  int t = input("t", dt, S2(C_(6), B_(1)));
  int u = param("u", dt, S2(C_(2), C_(3)));
  Attr ax = {0};
  ax.axis = 1;
  out("cat1", ir_node(g, OP_CONCAT, 2, (int[]){a, b}, &ax, L0));
  out("cat1_ba", ir_node(g, OP_CONCAT, 2, (int[]){b, a}, &ax, L0));
  ax.axis = 2;
  out("cat2", ir_node(g, OP_CONCAT, 2, (int[]){a, c}, &ax, L0));
  ax.axis = 0;
  out("cat0", ir_node(g, OP_CONCAT, 2, (int[]){a, a}, &ax, L0)); /* [2*B, 2, 3] */
  out("cat0c", ir_node(g, OP_CONCAT, 2, (int[]){u, u}, &ax, L0)); /* no batch at all */
  Attr sl = {0};
  sl.axis = 1, sl.start = 1, sl.len = 2;
  out("slice1", ir_node(g, OP_SLICE, 1, &b, &sl, L0));
  sl.axis = 2, sl.start = 0, sl.len = 1;
  out("slice2", ir_node(g, OP_SLICE, 1, &c, &sl, L0));
  sl.axis = 0, sl.start = 2, sl.len = 3;
  out("slice0", ir_node(g, OP_SLICE, 1, &t, &sl, L0));
  compare_grad(4, -1.0, 1.0);
}
END_TEST

/* A convolution: input [B, C, H, W], O outputs, groups, kernel, stride, dilation, padding
 * [top, bottom, left, right]. */
typedef struct ConvCase {
  int64_t C, H, W, O, G, kh, kw, sh, sw, dh, dw, pad[4];
} ConvCase;

static const ConvCase conv_cases[] = {
    {3, 5, 6, 4, 1, 1, 1, 1, 1, 1, 1, {0, 0, 0, 0}},  /* 1x1 pointwise */
    {2, 7, 6, 3, 1, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},  /* "same", as conv1 */
    {3, 6, 6, 4, 1, 5, 5, 1, 1, 1, 1, {2, 2, 2, 2}},  /* as conv2 */
    {2, 8, 7, 3, 1, 3, 3, 2, 2, 1, 1, {0, 1, 1, 0}},  /* stride 2, asymmetric padding */
    {2, 10, 11, 2, 1, 2, 3, 3, 3, 1, 1, {0, 0, 0, 0}}, /* stride 3, windows do not tile */
    {2, 9, 8, 3, 1, 3, 3, 1, 1, 2, 2, {2, 2, 2, 2}},  /* dilation 2 */
    {1, 7, 9, 2, 1, 3, 2, 1, 2, 2, 1, {1, 0, 0, 2}},  /* mixed stride/dilation, non-square */
    {4, 6, 5, 6, 2, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},  /* groups 2 */
    {3, 7, 7, 6, 3, 3, 3, 2, 2, 1, 1, {1, 1, 1, 1}},  /* depthwise, channel multiplier 2 */
    {3, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1, {2, 2, 2, 2}},  /* depthwise, full padding */
    {1, 3, 2, 2, 1, 3, 3, 1, 1, 1, 2, {1, 1, 2, 2}},  /* kernel columns that see no input */
};

static void conv_attr(const ConvCase *k, Attr *a) {
  memset(a, 0, sizeof *a);
  a->kernel[0] = k->kh, a->kernel[1] = k->kw;
  a->stride[0] = k->sh, a->stride[1] = k->sw;
  a->dilation[0] = k->dh, a->dilation[1] = k->dw;
  memcpy(a->pad, k->pad, sizeof a->pad);
  a->groups = k->G;
  a->in_size[0] = k->H, a->in_size[1] = k->W;
}

/* The three convolution ops of conv case k in type dt, as outputs y, dx and dw. */
static void conv_case_graph(const ConvCase *k, DType dt) {
  int x = input("x", dt, S4(B_(1), C_(k->C), C_(k->H), C_(k->W)));
  int w = param("w", dt, S4(C_(k->O), C_(k->C / k->G), C_(k->kh), C_(k->kw)));
  Attr a;
  conv_attr(k, &a);
  int y = ir_node(g, OP_CONV2D, 2, (int[]){x, w}, &a, L0);
  out("y", y);
  int dy = input("dy", dt, ir_at(g, y)->shape);
  out("dx", ir_node(g, OP_CONV2D_BWD_DATA, 2, (int[]){dy, w}, &a, L0));
  out("dw", ir_node(g, OP_CONV2D_BWD_FILTER, 2, (int[]){x, dy}, &a, L0));
}

/* The three convolution ops of one case against the reference, with the cost model's choices
 * (_i: case * 2 + f64). */
START_TEST(conv2d_and_adjoints) {
  conv_case_graph(&conv_cases[_i / 2], _i % 2 ? DT_F64 : DT_F32);
  compare_grad(3, -1.0, 1.0);
}
END_TEST

/* The same through the direct loop nests. */
START_TEST(conv2d_and_adjoints_direct) {
  opts.conv = CONV_DIRECT;
  conv_case_graph(&conv_cases[_i / 2], _i % 2 ? DT_F64 : DT_F32);
  compare_grad(3, -1.0, 1.0);
}
END_TEST

/* The same cases through im2col + GEMM (the schedule's conv = CONV_GEMM), or with the implicit
 * weight gradient where it applies (one group; the others then the cost model's), as tasks on three threads, more than there are
 * images at batches 2 and 1 (_i: (case * 2 + f64) * 2 + implicit). */
START_TEST(conv2d_and_adjoints_tasks) {
  const ConvCase *k = &conv_cases[_i / 4];
  DType dt = _i / 2 % 2 ? DT_F64 : DT_F32;
  bool implicit = _i % 2;
  opts.conv = implicit ? CONV_IMPLICIT : CONV_GEMM;
  opts.threads = 3;
  conv_case_graph(k, dt);
  Run r;
  run_open(&r, 3);
  if (implicit)
    ck_assert(!strstr(r.src, "_taps(xp + ") == (k->G > 1));
  else
    ck_assert_ptr_nonnull(strstr(r.src, dt == DT_F64 ? "kiln_dgemm_acc(" : "kiln_sgemm_acc("));
  ck_assert_ptr_nonnull(strstr(r.src, "kiln_run_tasks(ex"));
  randomise(&r, 42, -1.0, 1.0);
  run_compare(&r, "grad", 3);
  run_compare(&r, "grad", 2);
  run_compare(&r, "grad", 1);
  run_close(&r);
}
END_TEST

/* The system compiler's shared object of src, loaded: its program and *handle. */
static const kiln_program *compile_and_load(const BackendOptions *o, const char *src, void **handle,
                                            Buf *err) {
  void *so = NULL;
  size_t size = 0;
  *handle = NULL;
  if (aot_compile_shared(o, src, &so, &size, err))
    return NULL;
  const kiln_program *p = aot_load_shared(o, so, size, NULL, handle, err);
  free(so);
  return p;
}

/* Every f32 output of the grad entry at batch, run on `threads` threads (0: no exec, the
 * program's own serial loop), as raw bytes. */
static unsigned char *grad_outputs(const char *src, int64_t batch, int threads, size_t *len) {
  Buf err = {0};
  void *h;
  const kiln_program *p = compile_and_load(NULL, src, &h, &err);
  ck_assert_msg(p != NULL, "%s", err.p);
  buf_free(&err);
  size_t bytes = ((size_t)p->arena_bytes + 63) / 64 * 64;
  unsigned char *arena = aligned_alloc(64, bytes);
  memset(arena, 0, bytes);
  RtRng rng;
  rt_rng_seed(&rng, 7);
  for (int i = 0; i < p->ntensors; i++)
    if (p->tensors[i].role != KILN_ROLE_OUTPUT)
      for (int64_t k = 0; k < rt_numel(&p->tensors[i], p->batch); k++)
        ((float *)(arena + p->tensors[i].offset))[k] = (float)rt_rng_uniform(&rng) - 0.5f;
  char perr[RT_ERR_LEN];
  RtPool *pool = threads > 0 ? rt_pool_new(threads, perr) : NULL;
  ck_assert_msg(threads == 0 || pool, "%s", perr);
  ck_assert_int_eq(rt_pool_threads(pool), threads > 0 ? threads : 1);
  kiln_exec ex;
  rt_exec_init(&ex, pool);
  p->entries[rt_find_entry(p, "grad")].fn(arena, batch, threads > 0 ? &ex : NULL);
  rt_pool_free(pool);
  Buf o = {0};
  for (int i = 0; i < p->ntensors; i++)
    if (p->tensors[i].role == KILN_ROLE_OUTPUT || p->tensors[i].role == KILN_ROLE_GRAD) {
      size_t n = (size_t)rt_numel(&p->tensors[i], batch) * sizeof(float);
      for (size_t k = 0; k < n; k++)
        buf_printf(&o, "%02x", arena[p->tensors[i].offset + (int64_t)k]);
    }
  free(arena);
  dlclose(h);
  *len = o.len;
  return (unsigned char *)o.p;
}

/* Threaded convolutions run tasks fixed by the shapes with per-worker scratch and add the
 * weight gradient's per-image sums in image order (through the GEMM, or _i: implicit): the results are bit-identical from run to run,
 * on 2 or 3 threads, and with no exec (the program's own serial loop). */
START_TEST(conv_threads_deterministic) {
  opts.conv = _i ? CONV_IMPLICIT : CONV_GEMM;
  opts.threads = 3;
  int x = input("x", DT_F32, S4(B_(1), C_(8), C_(14), C_(14)));
  int w = param("w", DT_F32, S4(C_(32), C_(8), C_(5), C_(5)));
  Attr a;
  conv_attr(&(ConvCase){8, 14, 14, 32, 1, 5, 5, 1, 1, 1, 1, {2, 2, 2, 2}}, &a);
  int y = ir_node(g, OP_CONV2D, 2, (int[]){x, w}, &a, L0);
  out("y", y);
  int dy = input("dy", DT_F32, ir_at(g, y)->shape);
  out("dx", ir_node(g, OP_CONV2D_BWD_DATA, 2, (int[]){dy, w}, &a, L0));
  out("dw", ir_node(g, OP_CONV2D_BWD_FILTER, 2, (int[]){x, dy}, &a, L0));
  Plan p;
  Buf src = {0};
  plan_build(g, 16, &opts, &p);
  cg_emit_c(g, &p, &src);
  ck_assert_ptr_nonnull(strstr(src.p, "kiln_run_tasks(ex"));
  ck_assert_ptr_nonnull(strstr(src.p, ".threads = 3,"));
  for (int64_t batch = 16; batch > 0; batch -= 9) {
    size_t n[4];
    unsigned char *r[4];
    static const int threads[4] = {2, 2, 3, 0};
    for (int k = 0; k < 4; k++)
      r[k] = grad_outputs(src.p, batch, threads[k], &n[k]);
    for (int k = 1; k < 4; k++) {
      ck_assert(n[0] == n[k] && n[0] > 0);
      ck_assert_msg(!memcmp(r[0], r[k], n[0]), "2 threads and %d differ at batch %lld",
                    threads[k], (long long)batch);
    }
    for (int k = 0; k < 4; k++)
      free(r[k]);
  }
  buf_free(&src);
  plan_free(&p);
}
END_TEST

/* A pool: input [B, C, H, W], kernel, stride, dilation, padding [top, bottom, left, right]. */
typedef struct PoolCase {
  int64_t C, H, W, kh, kw, sh, sw, dh, dw, pad[4];
} PoolCase;

static const PoolCase pool_cases[] = {
    {2, 6, 6, 2, 2, 2, 2, 1, 1, {0, 0, 0, 0}}, /* tiling, as in the MNIST CNN */
    {2, 7, 5, 2, 2, 2, 2, 1, 1, {0, 0, 0, 0}}, /* odd sizes: the last row/column unused */
    {1, 7, 7, 3, 3, 2, 2, 1, 1, {1, 1, 1, 1}}, /* overlapping, padded */
    {2, 5, 6, 3, 2, 1, 1, 1, 1, {0, 0, 0, 0}}, /* overlapping, stride 1, non-square kernel */
    {1, 8, 7, 3, 3, 3, 2, 1, 1, {0, 1, 1, 0}}, /* asymmetric padding, stride 3 / 2 */
    {1, 9, 9, 3, 3, 2, 2, 2, 2, {1, 1, 1, 1}}, /* dilation 2 */
    {2, 6, 9, 3, 3, 3, 3, 1, 1, {0, 0, 0, 0}}, /* tiling exactly, three taps a row */
    {3, 6, 4, 3, 2, 3, 2, 1, 1, {0, 0, 0, 0}}, /* tiling exactly, non-square */
    {2, 3, 8, 1, 2, 1, 2, 1, 1, {0, 0, 0, 0}}, /* tiling exactly, one row */
    {1, 7, 7, 3, 3, 3, 3, 1, 1, {0, 2, 0, 2}}, /* ONNX's ceil_mode: past half the kernel */
    {2, 5, 6, 2, 3, 1, 2, 1, 1, {1, 0, 1, 2}}, /* asymmetric, a whole kernel less one */
};

/* Values with many ties (to test first-maximum selection) and negatives (so -inf padding
 * matters). */
static double tied_value(int64_t k) { return (double)((k * 7 + k / 5) % 4) - 2.0; }

/* NaNs, zeros of both signs and infinities, several in most windows: max pooling keeps the
 * first maximum (so the sign of a zero) and the last NaN, whose tap gets the gradient. */
static double special_value(int64_t k) {
  static const double v[] = {0.0, -0.0, NAN, 1.0, -INFINITY, -0.0, INFINITY, NAN, 0.0, -1.0, NAN};
  return v[(k * 5 + k / 3) % 11];
}

static void pool_attr(const PoolCase *k, Attr *a) {
  memset(a, 0, sizeof *a);
  a->kernel[0] = k->kh, a->kernel[1] = k->kw;
  a->stride[0] = k->sh, a->stride[1] = k->sw;
  a->dilation[0] = k->dh, a->dilation[1] = k->dw;
  memcpy(a->pad, k->pad, sizeof a->pad);
  a->in_size[0] = k->H, a->in_size[1] = k->W;
}

/* maxpool2d, avgpool2d (both divisors) and their adjoints for one case (_i: case * 2 + f64). */
START_TEST(pools_and_adjoints) {
  const PoolCase *k = &pool_cases[_i / 2];
  DType dt = _i % 2 ? DT_F64 : DT_F32;
  int x = input("x", dt, S4(B_(1), C_(k->C), C_(k->H), C_(k->W)));
  int xt = input("xt", dt, S4(B_(1), C_(k->C), C_(k->H), C_(k->W)));
  Attr a;
  pool_attr(k, &a);
  int y = ir_node(g, OP_MAXPOOL2D, 1, &x, &a, L0);
  out("max", y);
  out("max_tied", ir_node(g, OP_MAXPOOL2D, 1, &xt, &a, L0));
  int dy = input("dy", dt, ir_at(g, y)->shape);
  out("dmax", ir_node(g, OP_MAXPOOL2D_GRAD, 2, (int[]){x, dy}, &a, L0));
  out("dmax_tied", ir_node(g, OP_MAXPOOL2D_GRAD, 2, (int[]){xt, dy}, &a, L0));
  int xs = input("xs", dt, S4(B_(1), C_(k->C), C_(k->H), C_(k->W)));
  out("max_special", ir_node(g, OP_MAXPOOL2D, 1, &xs, &a, L0));
  out("dmax_special", ir_node(g, OP_MAXPOOL2D_GRAD, 2, (int[]){xs, dy}, &a, L0));
  /* the tangent gather: x's maxima pick t's values, ties and NaNs as the pool decides */
  out("pick", ir_node(g, OP_MAXPOOL2D_PICK, 2, (int[]){x, xs}, &a, L0));
  out("pick_tied", ir_node(g, OP_MAXPOOL2D_PICK, 2, (int[]){xt, x}, &a, L0));
  for (int inc = 0; inc < 2; inc++) {
    a.count_include_pad = inc;
    out(inc ? "avg_inc" : "avg_exc", ir_node(g, OP_AVGPOOL2D, 1, &x, &a, L0));
    out(inc ? "davg_inc" : "davg_exc", ir_node(g, OP_AVGPOOL2D_GRAD, 1, &dy, &a, L0));
  }
  Run r;
  run_open(&r, 3);
  randomise(&r, 11, -1.0, 1.0);
  write_both(&r, "xt", 3, tied_value);
  write_both(&r, "xs", 3, special_value);
  run_compare(&r, "grad", 3);
  /* run_compare takes -0 for +0: the signs of the maxima too. */
  int ms = rt_find_tensor(r.prog, "max_special");
  int64_t nms = rt_numel(&r.plan->tensors[ms], 3);
  double *cm = malloc((size_t)nms * sizeof *cm), *rm = malloc((size_t)nms * sizeof *rm);
  r.cbe.read(r.cbe.self, ms, cm, nms);
  r.rbe.read(r.rbe.self, ms, rm, nms);
  for (int64_t e = 0; e < nms; e++)
    ck_assert_msg(signbit(cm[e]) == signbit(rm[e]) || (isnan(cm[e]) && isnan(rm[e])),
                  "max_special[%lld]: compiled %g, reference %g", (long long)e, cm[e], rm[e]);
  free(cm);
  free(rm);
  run_compare(&r, "grad", 2);
  run_compare(&r, "grad", 1);
  run_close(&r);
}
END_TEST

/* Larger convolutions whose GEMM sizes are multiples of no tile and of no register block. */
static const ConvCase odd_convs[] = {
    {5, 11, 13, 37, 1, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}}, /* M 37, K 45, N 143 */
    {6, 9, 7, 21, 3, 3, 2, 2, 1, 1, 1, {1, 0, 1, 0}},  /* groups 3, stride 2 */
};

/* Every pool op of case k over x, as grad outputs named after tag: max pooling and its
 * gradient (from a dy input of its own), average pooling with and without the padding counted,
 * and their gradients. */
static void pool_ops(int x, const PoolCase *k, const char *tag) {
  char name[48];
  Attr a;
  pool_attr(k, &a);
  int y = ir_node(g, OP_MAXPOOL2D, 1, &x, &a, L0);
  snprintf(name, sizeof name, "%smax", tag);
  out(name, y);
  snprintf(name, sizeof name, "%sdy", tag);
  int dy = input(name, DT_F32, ir_at(g, y)->shape);
  snprintf(name, sizeof name, "%sdmax", tag);
  out(name, ir_node(g, OP_MAXPOOL2D_GRAD, 2, (int[]){x, dy}, &a, L0));
  for (int inc = 0; inc < 2; inc++) {
    a.count_include_pad = inc;
    snprintf(name, sizeof name, "%savg%d", tag, inc);
    out(name, ir_node(g, OP_AVGPOOL2D, 1, &x, &a, L0));
    snprintf(name, sizeof name, "%sdavg%d", tag, inc);
    out(name, ir_node(g, OP_AVGPOOL2D_GRAD, 1, &dy, &a, L0));
  }
}

/* Every convolution case (its three ops) and every pool case (max, average both ways, and their
 * adjoints) as outputs of the grad entry. */
static void all_windows(void) {
  char name[32];
  for (size_t i = 0; i < sizeof conv_cases / sizeof *conv_cases + 2; i++) {
    const ConvCase *k = i < 2 ? &odd_convs[i] : &conv_cases[i - 2];
    snprintf(name, sizeof name, "cx%zu", i);
    int x = input(name, DT_F32, S4(B_(1), C_(k->C), C_(k->H), C_(k->W)));
    snprintf(name, sizeof name, "cw%zu", i);
    int w = param(name, DT_F32, S4(C_(k->O), C_(k->C / k->G), C_(k->kh), C_(k->kw)));
    Attr a;
    conv_attr(k, &a);
    int y = ir_node(g, OP_CONV2D, 2, (int[]){x, w}, &a, L0);
    snprintf(name, sizeof name, "cy%zu", i);
    out(name, y);
    snprintf(name, sizeof name, "cdy%zu", i);
    int dy = input(name, DT_F32, ir_at(g, y)->shape);
    snprintf(name, sizeof name, "cdx%zu", i);
    out(name, ir_node(g, OP_CONV2D_BWD_DATA, 2, (int[]){dy, w}, &a, L0));
    snprintf(name, sizeof name, "cdw%zu", i);
    out(name, ir_node(g, OP_CONV2D_BWD_FILTER, 2, (int[]){x, dy}, &a, L0));
  }
  for (size_t i = 0; i < sizeof pool_cases / sizeof *pool_cases; i++) {
    const PoolCase *k = &pool_cases[i];
    snprintf(name, sizeof name, "px%zu", i);
    int x = input(name, DT_F32, S4(B_(1), C_(k->C), C_(k->H), C_(k->W)));
    snprintf(name, sizeof name, "p%zu", i);
    pool_ops(x, k, name);
  }
}

/* Every output and gradient entry `entry` wrote at batch, bit for bit the same in the program
 * compiled for one thread and in the one for three (both already run). */
static void require_same_results(Run *one, Run *three, int entry, int64_t batch) {
  for (int i = 0; i < three->plan->ntensors; i++) {
    const kiln_tensor *t = &three->plan->tensors[i];
    if (!result_of(t, entry))
      continue;
    int64_t n = rt_numel(t, batch);
    double *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
    one->cbe.read(one->cbe.self, i, a, n);
    three->cbe.read(three->cbe.self, i, b, n);
    for (int64_t k = 0; k < n; k++)
      ck_assert_msg(memcmp(&a[k], &b[k], sizeof a[k]) == 0,
                    "%s[%lld] at batch %lld: %.9g with 1 thread, %.9g with 3", t->name,
                    (long long)k, (long long)batch, a[k], b[k]);
    free(a);
    free(b);
  }
}

/* The graph g compiled for one thread and for three (at least `parallel` kernels with tasks),
 * both randomised from `seed`; then, from the full batch down by `step` while positive, the
 * three-thread program against the reference and bit-identical to the one-thread program. */
static void one_and_three_threads(int64_t batch, int64_t step, uint64_t seed, int parallel) {
  Run one, three;
  opts.threads = 1;
  run_open(&one, batch);
  opts.threads = 3;
  run_open(&three, batch);
  ck_assert_ptr_null(strstr(one.src, "kiln_run_tasks"));
  ck_assert_ptr_nonnull(strstr(three.src, "kiln_run_tasks(ex"));
  ck_assert_int_eq(rt_arena_threads(&three.cbe), 3);
  int tasks = 0;
  for (int i = 0; i < g->nnodes; i++)
    tasks += three.plan->sched->node[i].workers == 3;
  ck_assert_int_ge(tasks, parallel);
  randomise(&one, seed, -1.0, 1.0);
  randomise(&three, seed, -1.0, 1.0);
  char err[RT_ERR_LEN];
  int entry = rt_find_entry(one.prog, "grad");
  for (int64_t b = batch; b >= 1; b -= step) {
    run_compare(&three, "grad", b);
    ck_assert_msg(one.cbe.run(one.cbe.self, entry, b, err) == 0, "%s", err);
    require_same_results(&one, &three, entry, b);
  }
  run_close(&one);
  run_close(&three);
}

/* Pools (an image per task), large elementwise loops (blocks of their outer loop, with
 * per-channel operands broadcast) and sums of them (blocks of runs) on three threads: against the reference, and bit-identical to
 * the serial program, at the full batch and a smaller one. */
START_TEST(pools_and_loops_as_tasks_match_one_thread) {
  int x = input("x", DT_F32, S4(B_(1), C_(16), C_(30), C_(29)));
  int sc = param("scale", DT_F32, S4(C_(1), C_(16), C_(1), C_(1)));
  int sh = param("shift", DT_F32, S4(C_(1), C_(16), C_(1), C_(1)));
  int h = ir_unary(g, OP_RELU, ir_binary(g, OP_ADD, ir_binary(g, OP_MUL, x, sc, L0), sh, L0), L0);
  out("h", h);
  static const PoolCase pools[] = {{16, 30, 29, 2, 2, 2, 2, 1, 1, {0, 0, 0, 0}},
                                   {16, 30, 29, 3, 3, 2, 2, 1, 1, {1, 1, 1, 1}}};
  pool_ops(h, &pools[0], "tile");
  pool_ops(h, &pools[1], "overlap");
  /* Sums computing their input's loop: per channel, as batch norm's (runs of whole images'
   * channels, one task per block of images), and per image and channel; and a sum of x itself. */
  out("chan_sq", ir_node(g, OP_SUM_TO, 2, (int[]){ir_binary(g, OP_MUL, x, x, L0), sc}, NULL, L0));
  out("plane_mean",
      ir_reduce(g, OP_MEAN, ir_binary(g, OP_SUB, x, sh, L0), (1u << 2) | (1u << 3), true, L0));
  out("chan_sum", ir_node(g, OP_SUM_TO, 2, (int[]){x, sc}, NULL, L0)); /* of a stored tensor */
  one_and_three_threads(40, 23, 9, 16); /* the fused loop, 12 pools, 3 sums */
}
END_TEST

/* Large matmuls run as tasks of row or column blocks (every transpose, the batch in M, N or K,
 * sizes no block divides, a smaller last batch): against the reference, and bit-identical to
 * the serial program, since every element is summed over K as before. */
START_TEST(matmul_tasks_match_one_thread) {
  DType dt = _i ? DT_F64 : DT_F32;
  int x = input("x", dt, S2(B_(1), C_(300)));     /* [B, 300] */
  int xt = input("xt", dt, S2(C_(300), B_(1)));   /* [300, B] */
  int w = param("w", dt, S2(C_(300), C_(150)));
  int wt = param("wt", dt, S2(C_(150), C_(300)));
  int p = param("p", dt, S2(C_(410), C_(300)));
  int pt = param("pt", dt, S2(C_(300), C_(410)));
  int q = param("q", dt, S2(C_(300), C_(41)));
  int yb = input("yb", dt, S2(B_(1), C_(410)));   /* [B, 410] */
  out("cols", ir_matmul(g, x, w, false, false, L0));        /* [B,150]: columns */
  out("cols_tb", ir_matmul(g, x, wt, false, true, L0));     /* [B,150] */
  out("cols_ta", ir_matmul(g, xt, w, true, false, L0));     /* [B,150] */
  out("rows", ir_matmul(g, p, q, false, false, L0));        /* [410,41]: rows */
  out("rows_ta", ir_matmul(g, pt, q, true, false, L0));     /* [410,41] */
  out("k_b", ir_matmul(g, yb, x, true, false, L0));         /* [410,300], K = B */
  one_and_three_threads(100, 63, 5, 6);
}
END_TEST

/* Every convolution and pool case with threads = 3 on a batch of 5 (the weight gradient's waves
 * of 3 and 2 images; at batch 1 two workers idle) and GEMM tiles that divide none of the sizes:
 * against the reference, and bit-identical to the same program with threads = 1. (_i: 0 every convolution
 * through the GEMM, 1 the cost model's choice.) */
START_TEST(threads_match_one_thread) {
  all_windows();
  opts.conv = _i ? CONV_AUTO : CONV_GEMM;
  opts.gemm = (GemmTiles){.kc = 40, .mc = 20, .nc = 100};
  one_and_three_threads(5, 2, 23, 1);
}
END_TEST

/* The direct weight gradient keeps its partial sums in the shared scratch region: the plan
 * reserves it and the kernel receives it. */
START_TEST(conv_filter_uses_scratch) {
  opts.conv = CONV_DIRECT;
  int x = input("x", DT_F32, S4(B_(1), C_(3), C_(6), C_(5)));
  int dy = input("dy", DT_F32, S4(B_(1), C_(4), C_(6), C_(5)));
  Attr a;
  conv_attr(&(ConvCase){3, 6, 5, 4, 1, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}}, &a);
  int dw = ir_node(g, OP_CONV2D_BWD_FILTER, 2, (int[]){x, dy}, &a, L0);
  out("dw", dw);
  Plan p;
  plan_build(g, 2, &opts, &p);
  ck_assert_int_eq(p.sched->node[dw].scratch, 3 * 3 * 3 * 5 * 4);
  ck_assert_int_ge(p.scratch_bytes, 3 * 3 * 3 * 5 * 4);
  ck_assert_int_eq(p.sched->node[x].scratch, 0);
  Buf src = {0};
  cg_emit_c(g, &p, &src);
  ck_assert_ptr_nonnull(strstr(src.p, "unsigned char *restrict scratch"));
  buf_free(&src);
  plan_free(&p);
}
END_TEST

/* Every op the reference runtime can run, the code generator can compile (pending issue-3 ops
 * are listed in cg_file.c's emitter table until both sides have them). */
START_TEST(emitters_cover_the_reference) {
  for (int op = 0; op < OP_COUNT; op++)
    if (interp_has_kernel((Op)op))
      ck_assert_msg(cg_has_emitter((Op)op), "no C emitter for %s", op_names[op]);
}
END_TEST

/* Literal data and scalar constants are printed into the code, never stored in the arena. */
START_TEST(literal_constants) {
  int x = input("x", DT_F64, S2(B_(1), C_(3)));
  double v[3] = {0.1, -2.5, 1e300};
  int c = ir_leaf(g, OP_CONST, ROLE_NONE, "table", DT_F64, S1(C_(3)), L0);
  ir_at(g, c)->data = ir_literal(g, v, 3);
  out("y", ir_binary(g, OP_MUL, x, c, L0));
  out("z", ir_binary(g, OP_ADD, ir_const(g, INFINITY, DT_F64, L0), x, L0));
  compare_grad(3, -1.0, 1.0);
}
END_TEST

/* A small model through train_build: grad, several train steps (updates), eval, all batches. */
START_TEST(train_entries_match) {
  int x = input("image", DT_F32, S2(B_(1), C_(6)));
  int lab = input("label", DT_I32, S1(B_(1)));
  int w = param("fc.weight", DT_F32, S2(C_(5), C_(6)));
  int b = param("fc.bias", DT_F32, S1(C_(5)));
  int h = ir_binary(g, OP_ADD, ir_matmul(g, x, w, false, true, L0), b, L0);
  int loss = ir_node(g, OP_CROSS_ENTROPY, 2, (int[]){ir_unary(g, OP_RELU, h, L0), lab}, NULL, L0);
  g->loss_train = g->loss_eval = loss;
  g->output_eval = h;
  g->train.optimizer = _i ? OPT_ADAM : OPT_SGD;
  g->train.lr = 0.05;
  g->train.momentum = 0.9;
  g->train.beta1 = 0.9;
  g->train.beta2 = 0.999;
  g->train.eps = 1e-8;
  g->train.weight_decay = 0.01;
  train_build(g);
  Run r;
  run_open(&r, 8);
  randomise(&r, 7, -1.0, 1.0);
  /* Optimizer state and the hyper-parameter from their initialisers, as a trainer would. */
  for (int i = 0; i < r.plan->ntensors; i++) {
    const kiln_tensor *t = &r.plan->tensors[i];
    if (t->role != KILN_ROLE_OPT && t->role != KILN_ROLE_HYPER)
      continue;
    double v[64];
    int64_t n = rt_numel(t, 8);
    ck_assert_int_le(n, 64);
    rt_init_tensor(t, 1, v, n);
    r.cbe.write(r.cbe.self, i, v, n);
    r.rbe.write(r.rbe.self, i, v, n);
  }
  run_compare(&r, "grad", 8);
  for (int step = 0; step < 3; step++)
    run_compare(&r, "train", 8);
  run_compare(&r, "train", 3); /* a final partial batch */
  run_compare(&r, "eval", 8);
  run_compare(&r, "eval", 5);
  run_close(&r);
}
END_TEST

/* ---- elementwise fusion and in-place updates (sched.c) ---------------------------------------- */

/* Kernel definitions in generated C (k12_sub, not kiln_train nor the GEMM routine's): how many,
 * and into *bytes (if not NULL) their length from the signature to the closing brace. */
static int kernel_defs(const char *src, size_t *bytes) {
  static const char def[] = "static KILN_NOINLINE void k";
  int n = 0;
  if (bytes)
    *bytes = 0;
  for (const char *p = src; (p = strstr(p, def)) != NULL; p++) {
    if (p[sizeof def - 1] < '0' || p[sizeof def - 1] > '9')
      continue;
    const char *end = strstr(p, "\n}\n");
    ck_assert_ptr_nonnull(end);
    if (bytes)
      *bytes += (size_t)(end + 3 - p);
    n++;
  }
  return n;
}

/* A tree of elementwise ops with single consumers, with scalar, broadcast (per-column, as a
 * batch norm's scale) and literal operands, is one kernel; its inner nodes have no arena
 * storage; with fusion off every node is its own kernel again. Both agree with the reference,
 * at the planned batch and a smaller one. */
START_TEST(fused_chain_is_one_kernel) {
  int x = input("x", DT_F32, S2(B_(1), C_(5)));
  int s = input("s", DT_F32, S0());
  int col = input("col", DT_F32, S1(C_(5)));
  double v[5] = {0.5, -1, 2, 0.25, 3};
  int lit = ir_leaf(g, OP_CONST, ROLE_NONE, "table", DT_F32, S1(C_(5)), L0);
  ir_at(g, lit)->data = ir_literal(g, v, 5);
  int a = ir_binary(g, OP_MUL, x, ir_const(g, 0.5, DT_F32, L0), L0);
  int b = ir_binary(g, OP_ADD, a, s, L0);
  int c = ir_unary(g, OP_TANH, ir_binary(g, OP_MUL, b, col, L0), L0);
  int d = ir_unary(g, OP_SIGMOID, ir_unary(g, OP_NEG, x, L0), L0);
  int e = ir_binary(g, OP_DIV, d, lit, L0);
  int y = ir_binary(g, OP_SUB, c, e, L0);
  out("y", y);
  const int inner[] = {a, b, ir_at(g, c)->in[0], c, d, ir_at(g, d)->in[0], e};
  for (int fuse = 1; fuse >= 0; fuse--) {
    opts.fuse = fuse;
    Run r;
    run_open(&r, 3);
    for (size_t k = 0; k < sizeof inner / sizeof inner[0]; k++)
      ck_assert_msg((r.plan->offset[inner[k]] < 0) == (fuse == 1), "node %d, fuse %d", inner[k],
                    fuse);
    ck_assert_int_ge(r.plan->offset[y], 0);
    int kernels = kernel_defs(r.src, NULL);
    ck_assert_msg(kernels == (fuse ? 1 : 8), "%d kernels\n%s", kernels, r.src);
    randomise(&r, 5, -2.0, 2.0);
    run_compare(&r, "grad", 3);
    run_compare(&r, "grad", 2);
    run_close(&r);
  }
}
END_TEST

/* check_model on s (one train step); on a disagreement, fails with what and the report's failing
 * lines (Check's messages are limited to a few kilobytes). */
static void check_passes(Session *s, const char *what) {
  FILE *log = tmpfile();
  ck_assert_ptr_nonnull(log);
  int rc = check_model(s, 1, 3, log);
  char line[256], failing[2048] = "";
  rewind(log);
  while (fgets(line, sizeof line, log))
    if (strstr(line, "EXCEEDS") || strstr(line, "MISMATCH") || strstr(line, "check: "))
      strncat(failing, line, sizeof failing - strlen(failing) - 1);
  fclose(log);
  ck_assert_msg(rc == 0, "%s: %s%.1500s", what, s->error, failing);
}

/* Generated code is checked under every compiler and level it may meet: a convolutional network
 * (GEMM convolutions with padding, both thread counts' code) built by gcc and by clang (when
 * installed) at -O2 and -O3, one grad, train and eval step against the f64 reference. gcc 12 at
 * -O3 with AVX2 once turned the im2col loops into code that zeroed copied rows. */
START_TEST(every_compiler_and_level) {
  static const char text[] =
      "input x: f32[B, 3, 14, 14] from images\ninput label: i32[B] from labels\n"
      "c1 = conv2d(x, out=8, kernel=3, pad=1)\n"
      "c2 = conv2d(relu(batchnorm(c1) as bn), out=16, kernel=3, pad=1)\n"
      "logits = linear(flatten(maxpool2d(relu(c2), kernel=2)), out=5) as fc\n"
      "loss = cross_entropy(logits, label)\nminimize loss\n"
      "train {\n  optimizer = adam(lr=1e-2)\n  batch = 6\n}\n";
  /* The in-process JIT (when built in), then gcc and clang through the cc backend. */
  static const char *const compilers[] = {"jit", "gcc", "clang"};
  for (int c = 0; c < 3; c++) {
    char path[64];
    snprintf(path, sizeof path, "/usr/bin/%s", compilers[c]);
    if (c == 0 ? !backend_has_jit() : access(path, X_OK) != 0) {
      ck_assert_msg(c != 1, "gcc is required");
      continue;
    }
    for (int level = 2; level <= 3; level++) {
      Options o;
      session_default_options(&o);
      o.sched.threads = 2;
      o.backend.kind = c == 0 ? BACKEND_JIT : BACKEND_CC;
      o.backend.cc = c == 0 ? NULL : compilers[c];
      o.backend.opt_level = level;
      Session s;
      ck_assert_msg(session_open_text(&s, "levels.kiln", text, &o) == 0, "%s", s.error);
      char what[32];
      snprintf(what, sizeof what, "%s -O%d", compilers[c], level);
      check_passes(&s, what);
      session_close(&s);
    }
  }
}
END_TEST

/* The train and apply entries share the optimizer's terms that do not depend on the gradient
 * (β1·m, β2·v). They must still fuse into each entry's update loop, and the parameters, moments
 * and running statistics still be written in place: the fused step must not pay for the split
 * one with stored temporaries and copies. */
START_TEST(train_entry_unaffected_by_apply) {
  Session s;
  const char *text = "input x: f32[B, 3, 6, 6] from images\ninput label: i32[B] from labels\n"
                     "c = conv2d(x, out=4, kernel=3, pad=1)\nh = relu(batchnorm(c) as bn)\n"
                     "logits = linear(flatten(h), out=5) as fc\n"
                     "loss = cross_entropy(logits, label)\nminimize loss\n"
                     "train {\n  optimizer = adam(lr=1e-3)\n}\n";
  Options o;
  session_default_options(&o);
  o.batch = 4;
  ck_assert_msg(session_open_text(&s, "m.kiln", text, &o) == 0 && session_emit(&s) == 0, "%s",
                s.error);
  const Graph *m = s.g;
  int moments = 0;
  for (int i = 0; i < m->nnodes; i++) {
    const Node *n = ir_at(m, i);
    for (int k = 0; k < n->nin && n->op == OP_MUL; k++) {
      const char *name = ir_at(m, n->in[k])->name;
      size_t len = name ? strlen(name) : 0;
      if ((len > 8 && !strcmp(name + len - 8, ".exp_avg")) ||
          (len > 11 && !strcmp(name + len - 11, ".exp_avg_sq"))) {
        ck_assert_msg(s.plan.offset[i] < 0, "%%%d (a multiple of %s) is stored", i, name);
        moments++;
      }
    }
  }
  ck_assert_int_eq(moments, 2 * m->nparams);
  const char *train = strstr(s.c.p, "static void kiln_train(");
  ck_assert_ptr_nonnull(train);
  const char *end = strstr(train, "\n}\n");
  ck_assert_ptr_nonnull(end);
  const char *copy = strstr(train, "memcpy(");
  ck_assert_msg(copy == NULL || copy > end, "the train entry copies an update:\n%.*s",
                (int)(end - train), train);
  session_close(&s);
}
END_TEST

/* An update whose value is a fused tree and whose target nothing later reads is written in
 * place (no copy); one whose target a later kernel still reads keeps its copy. Several steps
 * against the reference, so reading a half-updated parameter would show. */
START_TEST(update_in_place_only_when_safe) {
  int p = param("p", DT_F32, S1(C_(6)));
  int q = param("q", DT_F32, S1(C_(6)));
  ir_add_output(g, ENTRY_TRAIN, "loss", ir_reduce(g, OP_SUM, p, 1, false, L0), NULL);
  /* p <- p - 0.1*p*p: nothing after it reads p. */
  int pv = ir_binary(g, OP_SUB, p,
                     ir_binary(g, OP_MUL, ir_const(g, 0.1, DT_F32, L0),
                               ir_binary(g, OP_MUL, p, p, L0), L0), L0);
  ir_add_update(g, ENTRY_TRAIN, p, pv);
  /* q <- exp(-q)*0.5, but the output z, a sum computed after it, still reads q. */
  int qv = ir_binary(g, OP_MUL, ir_unary(g, OP_EXP, ir_unary(g, OP_NEG, q, L0), L0),
                     ir_const(g, 0.5, DT_F32, L0), L0);
  ir_add_update(g, ENTRY_TRAIN, q, qv);
  int z = ir_reduce(g, OP_SUM, q, 1, false, L0);
  ck_assert_int_gt(z, qv);
  ir_add_output(g, ENTRY_TRAIN, "z", z, NULL);
  Run r;
  run_open(&r, 1);
  ck_assert_int_eq(r.plan->offset[pv], r.plan->offset[p]);
  ck_assert_int_ne(r.plan->offset[qv], r.plan->offset[q]);
  ck_assert_msg(strstr(r.src, "memcpy(p, ") == NULL, "p is still copied\n%s", r.src);
  ck_assert_msg(strstr(r.src, "memcpy(q, ") != NULL, "q is not copied\n%s", r.src);
  randomise(&r, 11, 0.1, 1.0);
  for (int step = 0; step < 3; step++)
    run_compare(&r, "train", 1);
  run_close(&r);
}
END_TEST

/* A later elementwise reader of an updated target joins the update's loop, which then has two
 * outputs: the new value, written in place (it stores after computing everything, so the reader
 * still sees the old value), and the reader's. One kernel, no copy, the reference's values. */
START_TEST(update_in_place_in_shared_loop) {
  int q = param("q", DT_F32, S1(C_(7)));
  int qv = ir_binary(g, OP_MUL, ir_unary(g, OP_EXP, ir_unary(g, OP_NEG, q, L0), L0),
                     ir_const(g, 0.5, DT_F32, L0), L0);
  ir_add_update(g, ENTRY_TRAIN, q, qv);
  int z = ir_binary(g, OP_ADD, q, ir_unary(g, OP_SQRT, qv, L0), L0);
  ir_add_output(g, ENTRY_TRAIN, "z", z, NULL);
  ir_add_output(g, ENTRY_TRAIN, "loss", ir_reduce(g, OP_SUM, z, 1, false, L0), NULL);
  Run r;
  run_open(&r, 1);
  ck_assert_int_eq(r.plan->offset[qv], r.plan->offset[q]);
  ck_assert(r.plan->sched->node[qv].stored && r.plan->sched->node[qv].group == z);
  ck_assert_msg(strstr(r.src, "memcpy(q, ") == NULL, "q is copied\n%s", r.src);
  ck_assert_int_eq(kernel_defs(r.src, NULL), 2); /* the loop, the sum */
  randomise(&r, 11, 0.1, 1.0);
  for (int step = 0; step < 3; step++)
    run_compare(&r, "train", 1);
  run_close(&r);
}
END_TEST

/* Reads every tensor the driver can see (outputs of `entry`, parameters and state). */
static double *snapshot(Run *r, const char *name, int64_t batch, int64_t *total) {
  int entry = rt_find_entry(r->prog, name);
  int64_t n = 0;
  for (int i = 0; i < r->plan->ntensors; i++)
    n += rt_numel(&r->plan->tensors[i], batch);
  double *v = malloc((size_t)(n + 1) * sizeof *v), *at = v;
  for (int i = 0; i < r->plan->ntensors; i++) {
    const kiln_tensor *t = &r->plan->tensors[i];
    int64_t k = rt_numel(t, batch);
    bool seen = t->role == KILN_ROLE_OUTPUT || t->role == KILN_ROLE_GRAD
                    ? rt_tensor_in_entry(t, entry)
                    : t->role != KILN_ROLE_INPUT;
    if (seen)
      r->cbe.read(r->cbe.self, i, at, k);
    else
      for (int64_t j = 0; j < k; j++)
        at[j] = 0;
    at += k;
  }
  *total = n;
  return v;
}

/* A small trainer (Adam, leaky relu, sigmoid) compiled with fusion on and off: after every
 * step, every output, parameter and optimizer state agree up to float rounding (they should be
 * bit-identical: C evaluates each float op in float either way, without contraction in ISO C). */
START_TEST(fusion_matches_unfused) {
  int x = input("image", DT_F32, S2(B_(1), C_(6)));
  int lab = input("label", DT_I32, S1(B_(1)));
  int w = param("fc.weight", DT_F32, S2(C_(5), C_(6)));
  int b = param("fc.bias", DT_F32, S1(C_(5)));
  int h = ir_binary(g, OP_ADD, ir_matmul(g, x, w, false, true, L0), b, L0);
  Attr la = {.value = 0.1};
  int a1 = ir_node(g, OP_LEAKY_RELU, 1, (int[]){h}, &la, L0);
  int a2 = ir_binary(g, OP_MUL, ir_unary(g, OP_SIGMOID, h, L0), a1, L0);
  int loss = ir_node(g, OP_CROSS_ENTROPY, 2, (int[]){a2, lab}, NULL, L0);
  g->loss_train = g->loss_eval = loss;
  g->output_eval = a2;
  g->train.optimizer = _i ? OPT_ADAM : OPT_SGD;
  g->train.lr = 0.05;
  g->train.momentum = 0.9;
  g->train.nesterov = true;
  g->train.beta1 = 0.9;
  g->train.beta2 = 0.999;
  g->train.eps = 1e-8;
  g->train.weight_decay = 0.01;
  train_build(g);
  Run r[2];
  for (int f = 0; f < 2; f++) {
    opts.fuse = f;
    run_open(&r[f], 8);
    randomise(&r[f], 7, -1.0, 1.0);
    for (int i = 0; i < r[f].plan->ntensors; i++) {
      const kiln_tensor *t = &r[f].plan->tensors[i];
      if (t->role != KILN_ROLE_OPT && t->role != KILN_ROLE_HYPER)
        continue;
      double v[64];
      int64_t n = rt_numel(t, 8);
      ck_assert_int_le(n, 64);
      rt_init_tensor(t, 1, v, n);
      r[f].cbe.write(r[f].cbe.self, i, v, n);
      r[f].rbe.write(r[f].rbe.self, i, v, n);
    }
  }
  ck_assert_int_eq(r[0].plan->ntensors, r[1].plan->ntensors);
  ck_assert_msg(strcmp(r[0].src, r[1].src) != 0, "fusion changed nothing");
  const struct {
    const char *entry;
    int64_t batch;
  } steps[] = {{"grad", 8},  {"train", 8}, {"train", 8}, {"train", 8},
               {"train", 3}, {"eval", 8},  {"eval", 5}};
  for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
    int64_t n0, n1;
    for (int f = 0; f < 2; f++)
      run_compare(&r[f], steps[s].entry, steps[s].batch); /* each against the reference */
    double *v0 = snapshot(&r[0], steps[s].entry, steps[s].batch, &n0);
    double *v1 = snapshot(&r[1], steps[s].entry, steps[s].batch, &n1);
    ck_assert_int_eq(n0, n1);
    for (int64_t k = 0; k < n0; k++)
      ck_assert_msg(v0[k] == v1[k] || fabs(v0[k] - v1[k]) <= 1e-6 * (1 + fabs(v0[k])),
                    "step %zu element %lld: unfused %.9g, fused %.9g", s, (long long)k, v0[k],
                    v1[k]);
    free(v0);
    free(v1);
  }
  run_close(&r[0]);
  run_close(&r[1]);
}
END_TEST

/* Adam on one parameter is one loop: the first and second moments are members of the
 * parameter's update loop, each stored in place, and the loop reads the gradient once. */
START_TEST(adam_is_one_loop_per_parameter) {
  int x = input("image", DT_F32, S2(B_(1), C_(7)));
  int lab = input("label", DT_I32, S1(B_(1)));
  int w = param("fc.weight", DT_F32, S2(C_(5), C_(7)));
  int h = ir_matmul(g, x, w, false, true, L0);
  int loss = ir_node(g, OP_CROSS_ENTROPY, 2, (int[]){h, lab}, NULL, L0);
  g->loss_train = g->loss_eval = loss;
  g->output_eval = h;
  g->train.optimizer = OPT_ADAM;
  g->train.lr = 0.01;
  g->train.beta1 = 0.9;
  g->train.beta2 = 0.999;
  g->train.eps = 1e-8;
  train_build(g);
  Run r;
  run_open(&r, 5);
  const Schedule *s = r.plan->sched;
  const Entry *en = &g->entries[ENTRY_TRAIN];
  int group = -1, updates = 0;
  for (int u = 0; u < en->nupdates; u++) {
    int t = en->updates[u].target, v = en->updates[u].value;
    if (ir_at(g, t)->shape.rank != 2)
      continue;
    ck_assert_int_eq(r.plan->offset[v], r.plan->offset[t]);
    if (group < 0)
      group = s->node[v].group;
    ck_assert_msg(s->node[v].group == group, "%s is updated in another loop", ir_at(g, t)->name);
    updates++;
  }
  ck_assert_int_eq(updates, 3); /* the weight, exp_avg, exp_avg_sq */
  ck_assert_msg(strstr(r.src, "memcpy(fc_weight") == NULL, "an update is copied\n%s", r.src);
  randomise(&r, 5, -1.0, 1.0);
  for (int step = 0; step < 3; step++)
    run_compare(&r, "train", 5);
  run_close(&r);
}
END_TEST

/* A compiled model on its own arena, every tensor but the outputs set from one seed. */
typedef struct TextRun {
  Session s;
  unsigned char *arena;
  RtBackend be;
} TextRun;

static void text_run_open(TextRun *r, const char *text, int64_t batch, bool fuse) {
  Options o;
  session_default_options(&o);
  o.batch = batch;
  o.sched.fuse = fuse;
  ck_assert_msg(session_open_text(&r->s, "fuse.kiln", text, &o) == 0 && session_load(&r->s) == 0,
                "%s", r->s.error);
  size_t bytes = ((size_t)r->s.prog->arena_bytes + 63) / 64 * 64;
  r->arena = aligned_alloc(64, bytes);
  memset(r->arena, 0xA5, bytes);
  rt_arena_backend(r->s.prog, r->arena, &r->be);
  RtRng rng;
  rt_rng_seed(&rng, 17);
  for (int i = 0; i < r->s.plan.ntensors; i++) {
    const kiln_tensor *t = &r->s.plan.tensors[i];
    if (t->role == KILN_ROLE_OUTPUT)
      continue;
    int64_t n = rt_numel(t, batch);
    double *v = malloc((size_t)(n + 1) * sizeof *v);
    for (int64_t k = 0; k < n; k++)
      v[k] = t->dtype == KILN_I32 ? (double)rt_rng_below(&rng, 4)
             : t->role == KILN_ROLE_OPT || t->role == KILN_ROLE_HYPER
                 ? (double)(float)(0.01 + 0.001 * rt_rng_uniform(&rng))
                 : (double)(float)(2 * rt_rng_uniform(&rng) - 1);
    r->be.write(r->be.self, i, v, n);
    free(v);
  }
}

static void text_run_close(TextRun *r) {
  rt_arena_backend_free(&r->be);
  free(r->arena);
  session_close(&r->s);
}

/* Batch norm's statistics and gradient sums computed by the loops that produce what they sum
 * ((x - mean)^2, the gradient times the normalised input), with odd sizes (a 7×9 image, whose
 * 63-element runs are no multiple of the 16 partial sums, 5 channels, batch 5 then 3): every
 * parameter, moment and running statistic bit-identical to the unfused program's after each
 * step, and the fused program has fewer kernels. */
START_TEST(fused_reductions_bit_identical) {
  static const char text[] =
      "input x: f32[B, 3, 7, 9] from images\ninput label: i32[B] from labels\n"
      "c = conv2d(x, out=5, kernel=3, pad=1)\nh = relu(batchnorm(c) as bn)\n"
      "logits = linear(flatten(maxpool2d(h, kernel=2)), out=4) as fc\n"
      "loss = cross_entropy(logits, label)\nminimize loss\n"
      "train {\n  optimizer = adam(lr=1e-2)\n}\n";
  TextRun r[2];
  for (int f = 0; f < 2; f++)
    text_run_open(&r[f], text, 5, f == 1);
  const Graph *fg = r[1].s.g;
  const Schedule *fs = r[1].s.plan.sched;
  int fused_sums = 0;
  for (int i = 0; i < fg->nnodes; i++) {
    const Node *n = ir_at(fg, i);
    if ((n->op == OP_MEAN || n->op == OP_SUM_TO) && fs->used[i] && sched_is_tree(fg, fs, i))
      fused_sums++;
  }
  /* (x - m)^2 for the variance; the scale gradient and the two sums of the input's (the bias
   * gradient sums the pool gradient's output, which takes ReLU's mask itself) */
  ck_assert_msg(fused_sums >= 4, "%d fused sums", fused_sums);
  ck_assert_int_lt(kernel_defs(r[1].s.c.p, NULL), kernel_defs(r[0].s.c.p, NULL));
  ck_assert_int_eq(r[0].s.plan.ntensors, r[1].s.plan.ntensors);
  const int64_t batches[] = {5, 5, 3, 5};
  for (size_t step = 0; step < sizeof batches / sizeof batches[0]; step++) {
    char err[RT_ERR_LEN];
    for (int f = 0; f < 2; f++) {
      int e = rt_find_entry(r[f].s.prog, "train");
      ck_assert_msg(r[f].be.run(r[f].be.self, e, batches[step], err) == 0, "%s", err);
    }
    for (int i = 0; i < r[0].s.plan.ntensors; i++) {
      const kiln_tensor *t = &r[0].s.plan.tensors[i];
      if (t->role == KILN_ROLE_INPUT || t->role == KILN_ROLE_GRAD ||
          (t->role == KILN_ROLE_OUTPUT && !rt_tensor_in_entry(t, ENTRY_TRAIN)))
        continue;
      int64_t n = rt_numel(t, batches[step]);
      double *v0 = malloc((size_t)n * sizeof *v0), *v1 = malloc((size_t)n * sizeof *v1);
      r[0].be.read(r[0].be.self, i, v0, n);
      r[1].be.read(r[1].be.self, i, v1, n);
      for (int64_t k = 0; k < n; k++)
        ck_assert_msg(v0[k] == v1[k], "step %zu %s[%lld]: unfused %.9g, fused %.9g", step,
                      t->name, (long long)k, v0[k], v1[k]);
      free(v0);
      free(v1);
    }
  }
  for (int f = 0; f < 2; f++)
    text_run_close(&r[f]);
  /* And against the reference. */
  Session s;
  Options o;
  session_default_options(&o);
  o.batch = 5;
  ck_assert_msg(session_open_text(&s, "fuse.kiln", text, &o) == 0, "%s", s.error);
  check_passes(&s, "fused");
  session_close(&s);
}
END_TEST

/* A fused reduction whose operands broadcast along axes of one element: [1] against [B, 1] is one
 * value per run, however its stride along the unit axis is written (a linear layer with one
 * output once summed its bias as if it had B of them). Batches past the 16-lane loop too. */
static const char *const unit_axis_models[] = {
    "input x: f32[B, 4]\nf = linear(x, out=1)\nloss = mean(f)\nminimize loss\n",
    "input x: f32[B, 1]\nparam b: f32[1] = [0.5]\nloss = mean(x * b + b)\nminimize loss\n",
    "input x: f32[B, 1, 1]\nparam b: f32[1, 1] = [[2]]\nparam c: f32[1] = [3]\n"
    "loss = mean(sum(x + b, axes=[1])) + sum(x * c)\nminimize loss\n",
    "input x: f32[B, 2, 1]\nparam b: f32[1, 1] = [[2]]\nloss = sum(x * b)\nminimize loss\n",
};

START_TEST(fused_reduction_unit_axes) {
  const int64_t batches[] = {5, 37};
  for (int k = 0; k < 2; k++) {
    Session s;
    Options o;
    session_default_options(&o);
    o.batch = batches[k];
    ck_assert_msg(session_open_text(&s, "unit.kiln", unit_axis_models[_i], &o) == 0, "%s",
                  s.error);
    check_passes(&s, unit_axis_models[_i]);
    session_close(&s);
  }
}
END_TEST

/* noise draws the reference's numbers in training (dropout.step) and evaluation (fixed). */
START_TEST(noise_matches_reference) {
  Session s;
  Options o;
  session_default_options(&o);
  o.batch = 7;
  ck_assert_msg(session_open_text(&s, "noise.kiln",
                                  "input x: f32[B, 3, 5]\nparam w: f32[5] = 1\n"
                                  "y = noise(x * w, std=0.5)\nloss = mean(y * y)\nminimize loss\n"
                                  "output y\n", &o) == 0, "%s", s.error);
  check_passes(&s, "noise");
  session_close(&s);
}
END_TEST

/* kiln check names the kernel that is wrong: a max pool made to add 1 to its first output
 * (cg_broken_op) is reported with its kernel, the model line and where the error is. */
START_TEST(check_names_the_broken_kernel) {
  static const char text[] =
      "input x: f32[B, 2, 8, 8] from images\ninput label: i32[B] from labels\n"
      "h = relu(conv2d(x, out=3, kernel=3, pad=1) as conv)\n"
      "p = maxpool2d(h, kernel=2)\n"
      "logits = linear(flatten(p), out=4) as fc\n"
      "loss = cross_entropy(logits, label)\nminimize loss\ntrain { batch = 3 }\n";
  Session s;
  Options o;
  session_default_options(&o);
  o.backend.cache_dir = NULL;
  cg_broken_op = OP_MAXPOOL2D;
  int rc = session_open_text(&s, "broken.kiln", text, &o);
  ck_assert_msg(rc == 0, "%s", s.error);
  FILE *log = tmpfile();
  ck_assert_ptr_nonnull(log);
  rc = check_model(&s, 1, 1, log);
  cg_broken_op = OP_COUNT;
  char report[16384];
  rewind(log);
  size_t n = fread(report, 1, sizeof report - 1, log);
  report[n] = 0;
  fclose(log);
  ck_assert_msg(rc == 1, "%s%s", report, s.error);
  ck_assert_msg(strstr(report, "first kernel that disagrees (entry grad): k"), "%s", report);
  ck_assert_msg(strstr(report, "_maxpool2d, computing maxpool2d (%"), "%s", report);
  ck_assert_msg(strstr(report, "'p') at broken.kiln:4\n"), "%s", report);
  ck_assert_msg(strstr(report, "  max abs error 1, max rel error "), "%s", report);
  ck_assert_msg(strstr(report, "largest at element [0, 0, 0, 0] of shape [B, 3, 4, 4]"), "%s",
                report);
  /* That kernel alone, under every schedule: wrong in each while broken, right once repaired. */
  char kernel[64];
  const char *k = strstr(report, "(entry grad): ") + strlen("(entry grad): ");
  snprintf(kernel, sizeof kernel, "%.*s", (int)strcspn(k, ","), k);
  for (int broken = 1; broken >= 0; broken--) {
    cg_broken_op = broken ? OP_MAXPOOL2D : OP_COUNT;
    log = tmpfile();
    ck_assert_ptr_nonnull(log);
    rc = check_kernel(&s, kernel, 1, log);
    cg_broken_op = OP_COUNT;
    rewind(log);
    n = fread(report, 1, sizeof report - 1, log);
    report[n] = 0;
    fclose(log);
    ck_assert_msg(rc == broken, "%s: %s%s", kernel, report, s.error);
    ck_assert_msg(strstr(report, broken ? "check: FAILED: 4 of 4 schedules"
                                        : "check: OK: 4 of 4 schedules"), "%s", report);
  }
  session_close(&s);
}
END_TEST

/* An update chain a <- b, b <- c must copy b before overwriting it. */
START_TEST(update_chain_order) {
  int a = param("a", DT_F32, S1(C_(4)));
  int b = param("b", DT_F32, S1(C_(4)));
  int c = param("c", DT_F32, S1(C_(4)));
  int y = ir_binary(g, OP_ADD, a, c, L0);
  ir_add_output(g, ENTRY_TRAIN, "loss", ir_reduce(g, OP_SUM, y, 1, false, L0), NULL);
  ir_add_update(g, ENTRY_TRAIN, b, y);
  ir_add_update(g, ENTRY_TRAIN, a, b);
  Run r;
  run_open(&r, 1);
  randomise(&r, 3, -1.0, 1.0);
  run_compare(&r, "train", 1);
  run_compare(&r, "train", 1);
  run_close(&r);
}
END_TEST

START_TEST(update_cycle_is_an_error) {
  int a = param("a", DT_F32, S1(C_(4)));
  int b = param("b", DT_F32, S1(C_(4)));
  ir_add_output(g, ENTRY_TRAIN, "loss", ir_reduce(g, OP_SUM, a, 1, false, L0), NULL);
  ir_add_update(g, ENTRY_TRAIN, a, b);
  ir_add_update(g, ENTRY_TRAIN, b, a);
  Plan p;
  Buf src = {0};
  Trap t;
  bool failed = false;
  if (KILN_TRY(&t)) {
    plan_build(g, 1, &opts, &p);
    cg_emit_c(g, &p, &src);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    failed = true;
    ck_assert_msg(strstr(t.msg, "cycle") != NULL, "%s", t.msg);
  }
  ck_assert(failed);
  plan_free(&p);
  buf_free(&src);
}
END_TEST

/* Nodes read by several loops are recomputed in each (sched.c's recomputable), as long as every
 * loop stays within SCHED_FUSE_MAX_NODES: here a loop reading two shared chains of 20 nodes
 * stores one of them instead. */
START_TEST(recomputed_nodes_fit_their_loops) {
  int x = input("x", DT_F32, S2(B_(1), C_(40)));
  int s1 = x, s2 = x;
  for (int i = 0; i < 20; i++) {
    s1 = ir_binary(g, OP_MUL, s1, ir_const(g, 1.0 + i / 64.0, DT_F32, L0), L0);
    s2 = ir_binary(g, OP_ADD, s2, ir_const(g, i / 32.0, DT_F32, L0), L0);
  }
  out("a", ir_unary(g, OP_NEG, s1, L0));
  out("b", ir_unary(g, OP_NEG, s2, L0));
  out("c", ir_binary(g, OP_ADD, s1, s2, L0));
  Run r;
  run_open(&r, 3);
  randomise(&r, 5, -1.0, 1.0);
  run_compare(&r, "grad", 3);
  run_close(&r);
}
END_TEST

/* A label outside [0, C) must not be used as an index: the loss becomes NaN, nothing crashes. */
START_TEST(bad_labels_give_nan) {
  int z = input("z", DT_F32, S2(B_(1), C_(5)));
  int lab = input("label", DT_I32, S1(B_(1)));
  int dy = param("dy", DT_F32, S0());
  out("loss", ir_node(g, OP_CROSS_ENTROPY, 2, (int[]){z, lab}, NULL, L0));
  out("dz", ir_node(g, OP_CROSS_ENTROPY_GRAD, 3, (int[]){z, lab, dy}, NULL, L0));
  Run r;
  run_open(&r, 3);
  randomise(&r, 1, -1.0, 1.0);
  double labels[3] = {1, 1000000, -7};
  int li = rt_find_tensor(r.prog, "label");
  r.cbe.write(r.cbe.self, li, labels, 3);
  char err[RT_ERR_LEN];
  ck_assert_int_eq(r.cbe.run(r.cbe.self, rt_find_entry(r.prog, "grad"), 3, err), 0);
  double loss, dz[15];
  r.cbe.read(r.cbe.self, rt_find_tensor(r.prog, "loss"), &loss, 1);
  r.cbe.read(r.cbe.self, rt_find_tensor(r.prog, "dz"), dz, 15);
  ck_assert(isnan(loss));
  ck_assert(!isnan(dz[0]) && isnan(dz[5]) && isnan(dz[14]));
  run_close(&r);
}
END_TEST

/* ---- kernels shared across layers ---------------------------------------------------------- */

/* scripts/conv_stack.sh's model: a stack of conv-batchnorm-ReLU layers, into text. */
static void conv_stack(int layers, Buf *text) {
  char cmd[1024], line[256];
  snprintf(cmd, sizeof cmd, "bash '%s/scripts/conv_stack.sh' %d", KILN_SOURCE_DIR, layers);
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  while (fgets(line, sizeof line, p))
    buf_puts(text, line);
  ck_assert_int_eq(pclose(p), 0);
}

/* Layers of the same shapes share their kernels, so the code grows with the number of distinct
 * layers, not with depth: 32 layers have the 4-layer stack's kernels, and their definitions take
 * at most 1.2 times the bytes (their comments list more users). What still grows with depth is
 * one call per node in each entry and one tensor table row per tensor. */
START_TEST(kernels_do_not_grow_with_depth) {
  static const int depth[2] = {4, 32};
  size_t bytes[2], total[2];
  int kernels[2];
  for (int i = 0; i < 2; i++) {
    Buf text = {0};
    conv_stack(depth[i], &text);
    Session s;
    ck_assert_msg(session_open_text(&s, "conv_stack.kiln", text.p, NULL) == 0 &&
                      session_emit(&s) == 0,
                  "%s", s.error);
    kernels[i] = kernel_defs(s.c.p, &bytes[i]);
    total[i] = s.c.len;
    session_close(&s);
    buf_free(&text);
  }
  ck_assert_msg(kernels[1] == kernels[0] && 10 * bytes[1] <= 12 * bytes[0],
                "4 layers: %d kernels, %zu bytes of %zu; 32 layers: %d kernels, %zu bytes of %zu",
                kernels[0], bytes[0], total[0], kernels[1], bytes[1], total[1]);
}
END_TEST

/* The 7-layer stack against the reference, through the JIT (when built in) and the system
 * compiler: kernels shared by several layers, and a train entry long enough to be cut into
 * parts (cg_emit_part). */
START_TEST(conv_stack_checks) {
  Buf text = {0};
  conv_stack(7, &text);
  for (int c = 0; c < 2; c++) {
    if (c == 0 && !backend_has_jit())
      continue;
    Options o;
    session_default_options(&o);
    o.batch = 3;
    o.backend.kind = c == 0 ? BACKEND_JIT : BACKEND_CC;
    Session s;
    ck_assert_msg(session_open_text(&s, "conv_stack7.kiln", text.p, &o) == 0 &&
                      session_emit(&s) == 0,
                  "%s", s.error);
    ck_assert_msg(strstr(s.c.p, "kiln_train_part2(") != NULL, "the train entry is one function");
    check_passes(&s, c == 0 ? "jit" : "cc");
    session_close(&s);
  }
  buf_free(&text);
}
END_TEST

/* ---- text ------------------------------------------------------------------------------------- */

/* The program for y = relu(x), x: f32[B, 4], batch 8, after the embedded ABI header. */
static const char golden_relu[] =
    "\n"
    "\n"
    "#if defined(__GNUC__)\n"
    "#define KILN_NOINLINE __attribute__((noinline))\n"
    "#define KILN_ASSUME(c) ((c) ? (void)0 : __builtin_unreachable())\n"
    "#else\n"
    "#define KILN_NOINLINE\n"
    "#define KILN_ASSUME(c) ((void)(c))\n"
    "#endif\n"
    "#if defined(__clang__)\n"
    "#define KILN_CALLS __attribute__((noinline, optnone))\n"
    "#define KILN_NO_UNROLL _Pragma(\"clang loop unroll(disable)\")\n"
    "#elif defined(__GNUC__)\n"
    "#define KILN_CALLS __attribute__((noinline, optimize(\"O0\")))\n"
    "#define KILN_NO_UNROLL\n"
    "#else\n"
    "#define KILN_CALLS\n"
    "#define KILN_NO_UNROLL\n"
    "#endif\n"
    "#define KILN_MARK(site) (ex && ex->mark ? ex->mark(ex->profiler, site) : (void)0)\n"
    "\n"
    "/* %1 = relu(%0 x) -> h  f32 [B, 4] */\n"
    "static KILN_NOINLINE void k1_relu(float *restrict y, const float *restrict a, int64_t B) {\n"
    "  KILN_ASSUME(B >= 1 && B <= 8);\n"
    "  for (int64_t i0 = 0; i0 < (4*B); i0++) {\n"
    "    y[i0] = a[i0] > 0 ? a[i0] : (float)0;\n"
    "  }\n"
    "}\n"
    "\n"
    "static volatile float kiln_fma_sink;\n"
    "#if defined(__GNUC__)\n"
    "#if defined(__AVX512F__)\n"
    "typedef float kiln_fma_v __attribute__((vector_size(64)));\n"
    "#elif defined(__AVX__)\n"
    "typedef float kiln_fma_v __attribute__((vector_size(32)));\n"
    "#else\n"
    "typedef float kiln_fma_v __attribute__((vector_size(16)));\n"
    "#endif\n"
    "#if defined(__clang__)\n"
    "__attribute__((noinline))\n"
    "#else\n"
    "__attribute__((noinline, optimize(\"fp-contract=fast\")))\n"
    "#endif\n"
    "static double kiln_fma_probe(int64_t iters) {\n"
    "#if defined(__clang__)\n"
    "#pragma clang fp contract(fast)\n"
    "#endif\n"
    "  kiln_fma_v a, b;\n"
    "  for (int k = 0; k < (int)(sizeof a / sizeof a[0]); k++) {\n"
    "    a[k] = 0.999999f;\n"
    "    b[k] = 1e-7f;\n"
    "  }\n"
    "  kiln_fma_v c0 = a, c1 = a + b, c2 = a - b, c3 = a * a, c4 = b, c5 = a + a, c6 = b + b,\n"
    "             c7 = a * b, c8 = a - a, c9 = b * b, c10 = a + b + b, c11 = a - b - b;\n"
    "  for (int64_t i = 0; i < iters; i++) {\n"
    "    c0 = c0 * a + b; c1 = c1 * a + b; c2 = c2 * a + b; c3 = c3 * a + b;\n"
    "    c4 = c4 * a + b; c5 = c5 * a + b; c6 = c6 * a + b; c7 = c7 * a + b;\n"
    "    c8 = c8 * a + b; c9 = c9 * a + b; c10 = c10 * a + b; c11 = c11 * a + b;\n"
    "  }\n"
    "  kiln_fma_v s = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11;\n"
    "  kiln_fma_sink = s[0];\n"
    "  return 2.0 * 12 * (double)(sizeof a / sizeof a[0]) * (double)iters;\n"
    "}\n"
    "#else\n"
    "static double kiln_fma_probe(int64_t iters) {\n"
    "  float c[12] = {0}, a = 0.999999f, b = 1e-7f;\n"
    "  for (int64_t i = 0; i < iters; i++)\n"
    "    for (int k = 0; k < 12; k++)\n"
    "      c[k] = c[k] * a + b;\n"
    "  kiln_fma_sink = c[0] + c[11];\n"
    "  return 2.0 * 12 * (double)iters;\n"
    "}\n"
    "#endif\n"
    "\n"
    "static void kiln_train(unsigned char *arena, int64_t B, const kiln_exec *ex) {\n"
    "  if (B < 1 || B > 8)\n"
    "    return;\n"
    "  KILN_MARK(-1);\n"
    "}\n"
    "\n"
    "static void kiln_eval(unsigned char *arena, int64_t B, const kiln_exec *ex) {\n"
    "  if (B < 1 || B > 8)\n"
    "    return;\n"
    "  float *const x = (float *)(arena + 0);\n"
    "  float *const h = (float *)(arena + 128);\n"
    "  KILN_MARK(0);\n"
    "  k1_relu(h, x, B);\n"
    "  KILN_MARK(-1);\n"
    "}\n"
    "\n"
    "static void kiln_grad(unsigned char *arena, int64_t B, const kiln_exec *ex) {\n"
    "  if (B < 1 || B > 8)\n"
    "    return;\n"
    "  KILN_MARK(-1);\n"
    "}\n"
    "\n"
    "static void kiln_apply(unsigned char *arena, int64_t B, const kiln_exec *ex) {\n"
    "  if (B < 1 || B > 8)\n"
    "    return;\n"
    "  KILN_MARK(-1);\n"
    "}\n"
    "\n"
    "static const kiln_site kiln_sites[1] = {\n"
    "  {1, 1, \"k1_relu\", \"relu\", \"\", 32, 1, 0, -1},\n"
    "};\n"
    "\n"
    "static const kiln_tensor kiln_tensors[2] = {\n"
    "  {.name = \"x\", .role = KILN_ROLE_INPUT, .dtype = KILN_F32, .rank = 2, .dims = {8, 4},\n"
    "   .batch_axis = 0, .offset = 0, .entries = 2, .init = KILN_INIT_ZEROS,\n"
    "   .init_a = 0, .init_b = 0, .fan_in = 0, .fan_out = 0,\n"
    "   .data = NULL, .feed = NULL, .scale = 0},\n"
    "  {.name = \"eval.output\", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F32, .rank = 2, .dims = {8, 4},\n"
    "   .batch_axis = 0, .offset = 128, .entries = 2, .init = KILN_INIT_ZEROS,\n"
    "   .init_a = 0, .init_b = 0, .fan_in = 0, .fan_out = 0,\n"
    "   .data = NULL, .feed = NULL, .scale = 0},\n"
    "};\n"
    "\n"
    "static const kiln_entry kiln_entries[4] = {\n"
    "  {\"train\", kiln_train},\n"
    "  {\"eval\", kiln_eval},\n"
    "  {\"grad\", kiln_grad},\n"
    "  {\"apply\", kiln_apply},\n"
    "};\n"
    "static const kiln_setting kiln_settings[4] = {\n"
    "  {\"epochs\", \"1\"},\n"
    "  {\"steps\", \"0\"},\n"
    "  {\"seed\", \"1\"},\n"
    "  {\"patience\", \"0\"},\n"
    "};\n"
    "\n"
    "const kiln_program kiln_program_desc = {\n"
    "  .abi_version = KILN_ABI_VERSION,\n"
    "  .model = \"t\",\n"
    "  .batch = 8,\n"
    "  .threads = 1,\n"
    "  .arena_bytes = 256,\n"
    "  .ntensors = 2,\n"
    "  .tensors = kiln_tensors,\n"
    "  .nentries = 4,\n"
    "  .entries = kiln_entries,\n"
    "  .nsettings = 4,\n"
    "  .settings = kiln_settings,\n"
    "  .nsites = 1,\n"
    "  .sites = kiln_sites,\n"
    "  .fma_probe = kiln_fma_probe,\n"
    "};\n";

START_TEST(golden_one_op_program) {
  int x = input("x", DT_F32, S2(B_(1), C_(4)));
  int y = ir_unary(g, OP_RELU, x, L0);
  ir_at(g, y)->name = "h";
  ir_add_output(g, ENTRY_EVAL, "eval.output", y, NULL);
  Plan p;
  Buf src = {0};
  plan_build(g, 8, &opts, &p);
  cg_emit_c(g, &p, &src);
  const char *head = "/* Generated by kiln from model t: the training step, batch 8, arena 256 "
                     "bytes. */\n#include <math.h>\n#include <stdint.h>\n#include <string.h>\n\n";
  ck_assert_msg(!strncmp(src.p, head, strlen(head)), "header:\n%s", src.p);
  const char *abi = src.p + strlen(head);
  ck_assert_msg(!strncmp(abi, kiln_abi_h_text, strlen(kiln_abi_h_text)), "ABI text not verbatim");
  const char *rest = abi + strlen(kiln_abi_h_text);
  ck_assert_msg(!strcmp(rest, golden_relu), "emitted program differs from the golden text:\n%s",
                rest);
  plan_free(&p);
  buf_free(&src);
}
END_TEST

/* A tensor name that is not an identifier fails the compile and never reaches the C; a bad
 * variable name is left out of comments; the model name is sanitised. */
START_TEST(identifiers_are_validated) {
  int x = input("x", DT_F32, S2(B_(1), C_(4)));
  int y = ir_unary(g, OP_RELU, x, L0);
  ir_at(g, y)->name = "h */ evil(); /*";
  ir_add_output(g, ENTRY_EVAL, "eval.output", y, NULL);
  g->name = "my model\"; evil(); \"";
  Plan p;
  Buf src = {0};
  plan_build(g, 2, &opts, &p);
  cg_emit_c(g, &p, &src);
  /* The letters survive, the syntax does not. */
  ck_assert_ptr_null(strstr(src.p, "evil()"));
  ck_assert_ptr_null(strstr(src.p, "*/ evil"));
  ck_assert_ptr_nonnull(strstr(src.p, ".model = \"my_model___evil_____\","));
  buf_free(&src);
  plan_free(&p);

  /* Leaves are checked when created (ir.c); a name changed afterwards is caught again here. */
  ir_at(g, x)->name = "x\\\"); system(\"rm";
  plan_build(g, 2, &opts, &p);
  Trap t;
  bool failed = false;
  if (KILN_TRY(&t)) {
    cg_emit_c(g, &p, &src);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    failed = true;
    ck_assert_msg(strstr(t.msg, "not a valid identifier") != NULL, "%s", t.msg);
  }
  ck_assert(failed);
  ck_assert(src.p == NULL || strstr(src.p, "system") == NULL);
  buf_free(&src);
  plan_free(&p);
}
END_TEST

/* Entries name the tensors they pass by their model names, '.' as '_'; a name the C compiler
 * would misread (a keyword, a macro, one of the file's own identifiers) or one already taken gets
 * the node's id, and the program still computes what the reference does. */
START_TEST(tensor_names_in_entries) {
  int x = input("x.in", DT_F32, S2(B_(1), C_(4)));
  int w = param("int", DT_F32, S1(C_(4)));
  int q = param("x_in", DT_F32, S1(C_(4)));
  static const char *const names[] = {"memcpy", "B", "k1_relu", "t2",  "y",
                                      "linux",  "NAN", "h",     "h", "scratch"};
  int v = x;
  for (int i = 0; i < (int)(sizeof names / sizeof *names); i++) {
    v = ir_binary(g, i % 2 ? OP_ADD : OP_MUL, v, i % 3 ? w : q, L0);
    ir_at(g, v)->name = names[i];
    static const char *const outs[] = {"o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9"};
    out(outs[i], v); /* an output each, so none is fused away */
  }
  Run r;
  run_open(&r, 3);
  const char *want[] = {"float *const x_in = ", "float *const x_in_2 = ", "float *const h = ",
                        "float *const int_1 = ", "float *const memcpy_3 = ",
                        "float *const linux_8 = ", "float *const y_7 = "};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    ck_assert_msg(strstr(r.src, want[i]) != NULL, "no '%s' in\n%s", want[i], r.src);
  const char *never[] = {"float *const int ", "float *const B ", "float *const NAN ",
                         "float *const t2 = (float *)(arena + 0)", "float *const k1_relu "};
  for (size_t i = 0; i < sizeof never / sizeof *never; i++)
    ck_assert_msg(strstr(r.src, never[i]) == NULL, "'%s' in\n%s", never[i], r.src);
  randomise(&r, 5, -1.0, 1.0);
  run_compare(&r, "grad", 3);
  run_compare(&r, "grad", 2);
  run_close(&r);
}
END_TEST

/* ---- aot -------------------------------------------------------------------------------------- */

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  ck_assert_ptr_nonnull(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));)
    n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
  closedir(d);
  return n;
}

static void tiny_program(Buf *src) {
  int x = input("x", DT_F32, S2(B_(1), C_(4)));
  int lab = input("label", DT_I32, S1(B_(1)));
  int w = param("w", DT_F32, S2(C_(4), C_(3)));
  int loss = ir_node(g, OP_CROSS_ENTROPY, 2, (int[]){ir_matmul(g, x, w, false, false, L0), lab},
                     NULL, L0);
  g->loss_train = g->loss_eval = loss;
  g->output_eval = -1;
  g->train.optimizer = OPT_SGD;
  g->train.lr = 0.1;
  train_build(g);
  Plan p;
  plan_build(g, 4, &opts, &p);
  cg_emit_c(g, &p, src);
  plan_free(&p);
}

START_TEST(aot_bad_cc_leaves_nothing) {
  Buf src = {0}, err = {0};
  tiny_program(&src);
  char dir[] = "/tmp/kiln-test-aot-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char outp[256];
  snprintf(outp, sizeof outp, "%s/my trainer", dir);
  BackendOptions o;
  aot_default_options(&o);
  o.cc = "/nonexistent/kiln-no-such-cc";
  ck_assert_int_eq(aot_build_trainer(&o, src.p, outp, &err), -1);
  ck_assert_msg(err.p && strstr(err.p, "kiln-no-such-cc"), "%s", err.p);
  ck_assert_int_eq(count_entries(dir), 0);
  void *h = NULL;
  buf_free(&err);
  ck_assert_ptr_null(compile_and_load(&o, src.p, &h, &err));
  ck_assert_ptr_null(h);

  /* A compiler that runs and fails. */
  o.cc = "false";
  buf_free(&err);
  ck_assert_int_eq(aot_build_trainer(&o, src.p, outp, &err), -1);
  ck_assert_int_eq(count_entries(dir), 0);

  /* Broken C: the compiler's message comes back. */
  buf_free(&err);
  ck_assert_int_eq(aot_build_trainer(NULL, "this is not C;\n", outp, &err), -1);
  ck_assert_msg(err.p && strstr(err.p, "error"), "%s", err.p);
  ck_assert_int_eq(count_entries(dir), 0);
  rmdir(dir);
  buf_free(&src);
  buf_free(&err);
}
END_TEST

/* A real trainer: builds next to a path with a space, and runs (--help needs no data). */
START_TEST(aot_builds_a_trainer) {
  Buf src = {0}, err = {0};
  tiny_program(&src);
  char dir[] = "/tmp/kiln-test-aot-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char outp[256];
  snprintf(outp, sizeof outp, "%s/my trainer", dir);
  ck_assert_msg(aot_build_trainer(NULL, src.p, outp, &err) == 0, "%s", err.p);
  ck_assert_int_eq(count_entries(dir), 1);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout))
      _exit(126);
    execl(outp, outp, "--help", (char *)NULL);
    _exit(127);
  }
  int st;
  waitpid(pid, &st, 0);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  unlink(outp);
  rmdir(dir);
  buf_free(&src);
  buf_free(&err);
}
END_TEST

/* ---- grad and apply against train ------------------------------------------------------------ */

/* Replaces the fixture's graph by a model compiled from text, with its entries built. */
static void use_model(const char *src) {
  Trap t;
  Graph *volatile m = NULL;
  if (KILN_TRY(&t)) {
    m = fe_compile_string("split.kiln", src);
    train_build(m);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    ir_free(m);
    ck_abort_msg("compile failed: %s", t.msg);
  }
  ir_free(g);
  g = m;
}

/* What a driver does before training, on both sides: persistent tensors from their initialisers
 * (seeded by name, so two Runs start equal), zeros for optimizer state and gradients. */
static void init_persistent(Run *r, uint64_t seed) {
  for (int i = 0; i < r->plan->ntensors; i++) {
    const kiln_tensor *t = &r->plan->tensors[i];
    if (t->role == KILN_ROLE_INPUT || t->role == KILN_ROLE_OUTPUT)
      continue;
    int64_t n = rt_numel(t, r->plan->batch);
    double *v = calloc((size_t)n + 1, sizeof *v);
    if (t->role != KILN_ROLE_OPT && t->role != KILN_ROLE_GRAD)
      rt_init_tensor(t, seed, v, n);
    r->cbe.write(r->cbe.self, i, v, n);
    r->rbe.write(r->rbe.self, i, v, n);
    free(v);
  }
}

/* Random inputs for rows [first, first + rows) of a batch drawn from seed, written as a batch of
 * `rows` into both sides of r: floats in [-1, 1), labels in [0, 5). */
static void feed_rows(Run *r, uint64_t seed, int64_t first, int64_t rows) {
  RtRng rng;
  rt_rng_seed(&rng, seed);
  for (int i = 0; i < r->plan->ntensors; i++) {
    const kiln_tensor *t = &r->plan->tensors[i];
    if (t->role != KILN_ROLE_INPUT)
      continue;
    int64_t n = rt_numel(t, r->plan->batch), item = rt_numel(t, 1);
    double *v = malloc((size_t)(n + 1) * sizeof *v);
    for (int64_t k = 0; k < n; k++) {
      v[k] = t->dtype == KILN_I32 ? (double)rt_rng_below(&rng, 5) : 2 * rt_rng_uniform(&rng) - 1;
      if (t->dtype == KILN_F32)
        v[k] = (double)(float)v[k];
    }
    r->cbe.write(r->cbe.self, i, v + first * item, rows * item);
    r->rbe.write(r->rbe.self, i, v + first * item, rows * item);
    free(v);
  }
}

static void run_both(Run *r, const char *entry, int64_t batch) {
  char err[RT_ERR_LEN];
  int e = rt_find_entry(r->prog, entry);
  ck_assert_int_ge(e, 0);
  ck_assert_int_eq(rt_find_entry(&r->rprog, entry), e);
  ck_assert_msg(r->cbe.run(r->cbe.self, e, batch, err) == 0, "compiled %s: %s", entry, err);
  ck_assert_msg(r->rbe.run(r->rbe.self, e, batch, err) == 0, "reference %s: %s", entry, err);
}

/* Every parameter, state and optimizer state (and with `outputs`, the loss and the penalty) of a
 * and b, on one side: equal bit for bit (tol 0) or within tol of the tensor's magnitude. */
static void same_state(Run *a, Run *b, bool compiled, bool outputs, double tol, const char *when) {
  RtBackend *ba = compiled ? &a->cbe : &a->rbe, *bb = compiled ? &b->cbe : &b->rbe;
  int compared = 0;
  for (int i = 0; i < a->plan->ntensors; i++) {
    const kiln_tensor *t = &a->plan->tensors[i];
    if (t->role == KILN_ROLE_INPUT || t->role == KILN_ROLE_HYPER || t->role == KILN_ROLE_GRAD ||
        (t->role == KILN_ROLE_OUTPUT &&
         (!outputs || (strcmp(t->name, "loss") && strcmp(t->name, "penalty")))))
      continue;
    int64_t n = rt_numel(t, 1);
    double *x = malloc((size_t)(n + 1) * sizeof *x), *y = malloc((size_t)(n + 1) * sizeof *y);
    ba->read(ba->self, i, x, n);
    bb->read(bb->self, i, y, n);
    double scale = 0;
    for (int64_t k = 0; k < n; k++)
      scale = fmax(scale, fabs(y[k]));
    for (int64_t k = 0; k < n; k++)
      ck_assert_msg(tol == 0 ? !memcmp(&x[k], &y[k], sizeof x[k])
                             : fabs(x[k] - y[k]) <= tol * (1 + scale),
                    "%s, %s: %s[%lld] = %.17g, expected %.17g", when,
                    compiled ? "compiled" : "reference", t->name, (long long)k, x[k], y[k]);
    compared++;
    free(x);
    free(y);
  }
  ck_assert_int_ge(compared, 9);
}

/* Batch norm (running statistics), dropout (the step counter), Adam with weight decay (moments,
 * step count) and both regularizations (the penalty, max_norm's projection). */
static const char split_src[] =
    "input image: f32[B, 1, 6, 6]\n"
    "input label: i32[B]\n"
    "c = conv2d(image, out=3, kernel=3, pad=1) as conv1\n"
    "h = maxpool2d(relu(batchnorm(c) as bn1), kernel=2)\n"
    "d = dropout(flatten(h), p=0.3)\n"
    "logits = linear(d, out=5) as fc\n"
    "loss = cross_entropy(logits, label)\n"
    "output logits\n"
    "minimize loss\n"
    "train {\n"
    "  optimizer = adam(lr=0.01, weight_decay=0.05)\n"
    "  regularize = [elastic_net(l1=1e-3, l2=1e-2), max_norm(0.6)]\n"
    "  batch = 4\n"
    "}\n";

/* The same network with gradient clipping, which apply does from the gradient tensors: by the
 * total norm with AdamW, by value with SGD's momentum. */
static const char *const split_variants[] = {
    split_src,
    "input image: f32[B, 1, 6, 6]\n"
    "input label: i32[B]\n"
    "c = conv2d(image, out=3, kernel=3, pad=1) as conv1\n"
    "h = maxpool2d(relu(batchnorm(c) as bn1), kernel=2)\n"
    "logits = linear(flatten(h), out=5) as fc\n"
    "loss = cross_entropy(logits, label)\n"
    "minimize loss\n"
    "train {\n"
    "  optimizer = adamw(lr=0.01, weight_decay=0.05)\n"
    "  clip = norm(0.1)\n"
    "  regularize = max_norm(0.6)\n"
    "  batch = 4\n"
    "}\n",
    "input image: f32[B, 1, 6, 6]\n"
    "input label: i32[B]\n"
    "c = conv2d(image, out=3, kernel=3, pad=1) as conv1\n"
    "logits = linear(flatten(relu(c)), out=5) as fc\n"
    "loss = cross_entropy(logits, label)\n"
    "minimize loss\n"
    "train {\n"
    "  optimizer = sgd(lr=0.1, momentum=0.9, dampening=0.1)\n"
    "  clip = value(0.02)\n"
    "  batch = 4\n"
    "}\n",
};

/* grad then apply leaves bit-identical parameters, state and loss to train, on the compiled
 * program and on the reference runtime, step after step; apply reads only the gradient tensors
 * (grad, an entry that changes no parameter, then apply is the whole step). _i: the model. */
START_TEST(grad_then_apply_is_train) {
  use_model(split_variants[_i]);
  Run fused, split;
  run_open(&fused, 4);
  run_open(&split, 4);
  init_persistent(&fused, 3);
  init_persistent(&split, 3);
  for (int step = 1; step <= 3; step++) {
    int64_t b = step == 3 ? 3 : 4; /* and a final partial batch */
    feed_rows(&fused, 100 + (uint64_t)step, 0, b);
    feed_rows(&split, 100 + (uint64_t)step, 0, b);
    run_both(&fused, "train", b);
    run_both(&split, "grad", b);
    run_both(&split, "apply", b);
    char when[32];
    snprintf(when, sizeof when, "step %d", step);
    same_state(&split, &fused, true, true, 0, when);
    same_state(&split, &fused, false, true, 0, when);
  }
  run_close(&fused);
  run_close(&split);
}
END_TEST

static const char accum_src[] =
    "input x: f64[B, 6]\n"
    "input label: i32[B]\n"
    "h = relu(linear(x, out=7) as fc1)\n"
    "logits = linear(h, out=5) as fc2\n"
    "loss = cross_entropy(logits, label)\n"
    "minimize loss\n"
    "train { optimizer = adam(lr=0.01, weight_decay=0.05) batch = 4 }\n";

/* Gradient accumulation by the host: grad on each half of a batch, the gradient tensors averaged
 * and written back, then apply, is one train step on the whole batch (the mean loss of equal
 * halves is the mean of their means), up to rounding. */
START_TEST(accumulated_halves_are_one_step) {
  use_model(accum_src);
  Run whole, halves;
  run_open(&whole, 4);
  run_open(&halves, 4);
  init_persistent(&whole, 5);
  init_persistent(&halves, 5);
  int ngrads = 0;
  for (int step = 1; step <= 2; step++) {
    feed_rows(&whole, 200 + (uint64_t)step, 0, 4);
    run_both(&whole, "train", 4);
    /* Per side (compiled, reference): the mean loss and the mean of each gradient element. */
    double sum[2][128] = {{0}}, lsum[2] = {0};
    int loss = rt_find_tensor(halves.prog, "loss");
    for (int half = 0; half < 2; half++) {
      feed_rows(&halves, 200 + (uint64_t)step, 2 * half, 2);
      run_both(&halves, "grad", 2);
      for (int side = 0; side < 2; side++) {
        RtBackend *be = side ? &halves.rbe : &halves.cbe;
        double l, v[128];
        be->read(be->self, loss, &l, 1);
        lsum[side] += l / 2;
        int64_t at = 0;
        for (int i = 0; i < halves.plan->ntensors; i++) {
          const kiln_tensor *t = &halves.plan->tensors[i];
          if (t->role != KILN_ROLE_GRAD)
            continue;
          ck_assert(!strncmp(t->name, "grad.", 5) && rt_find_tensor(halves.prog, t->name + 5) >= 0);
          int64_t n = rt_numel(t, 1);
          ck_assert_int_le(at + n, 128);
          be->read(be->self, i, v, n);
          for (int64_t k = 0; k < n; k++)
            sum[side][at + k] += v[k] / 2;
          at += n;
        }
      }
    }
    for (int side = 0; side < 2; side++) {
      RtBackend *be = side ? &halves.rbe : &halves.cbe, *wbe = side ? &whole.rbe : &whole.cbe;
      double lw;
      wbe->read(wbe->self, rt_find_tensor(whole.prog, "loss"), &lw, 1);
      ck_assert_msg(fabs(lsum[side] - lw) <= 1e-12 * (1 + fabs(lw)),
                    "loss %.17g, whole batch %.17g", lsum[side], lw);
      /* The host's average replaces the gradient of the last half. */
      int64_t at = 0;
      ngrads = 0;
      for (int i = 0; i < halves.plan->ntensors; i++) {
        const kiln_tensor *t = &halves.plan->tensors[i];
        if (t->role != KILN_ROLE_GRAD)
          continue;
        be->write(be->self, i, sum[side] + at, rt_numel(t, 1));
        at += rt_numel(t, 1);
        ngrads++;
      }
    }
    run_both(&halves, "apply", 4);
    char when[32];
    snprintf(when, sizeof when, "step %d", step);
    same_state(&halves, &whole, false, false, 1e-11, when);
    same_state(&halves, &whole, true, false, 1e-11, when);
  }
  ck_assert_int_eq(ngrads, 4);
  run_close(&whole);
  run_close(&halves);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("codegen");
  TCase *tc = tcase_create("ops");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_loop_test(tc, binary_ops_broadcasting, 0, 2);
  tcase_add_loop_test(tc, unary_ops, 0, 2);
  tcase_add_loop_test(tc, math_ops_mixed_signs, 0, 2);
  tcase_add_loop_test(tc, gather_and_one_hot, 0, 2);
  tcase_add_test(tc, relu_and_relu_grad_mixed_signs);
  tcase_add_loop_test(tc, reductions, 0, 2);
  tcase_add_loop_test(tc, sum_to_and_expand, 0, 2);
  tcase_add_test(tc, reshape_copies_in_order);
  tcase_add_loop_test(tc, matmul_all_transposes, 0, 2);
  tcase_add_test(tc, profile_sites_and_marks);
  tcase_add_loop_test(tc, matmul_tasks_match_one_thread, 0, 2);
  tcase_add_test(tc, pools_and_loops_as_tasks_match_one_thread);
  tcase_add_loop_test(tc, cross_entropy_and_grad, 0, 2);
  tcase_add_test(tc, literal_constants);
  tcase_add_test(tc, activations_and_transpose);
  tcase_add_test(tc, emitters_cover_the_reference);
  tcase_add_loop_test(tc, softmax_each_axis, 0, 2);
  tcase_add_loop_test(tc, dropout_masks_match_reference, 0, 2);
  tcase_add_loop_test(tc, concat_and_slice, 0, 2);
  tcase_add_loop_test(tc, conv2d_and_adjoints, 0,
                      (int)(2 * sizeof conv_cases / sizeof *conv_cases));
  tcase_add_loop_test(tc, conv2d_and_adjoints_direct, 0,
                      (int)(2 * sizeof conv_cases / sizeof *conv_cases));
  tcase_add_loop_test(tc, conv2d_and_adjoints_tasks, 0,
                      (int)(4 * sizeof conv_cases / sizeof *conv_cases));
  tcase_add_loop_test(tc, conv_threads_deterministic, 0, 2);
  tcase_add_loop_test(tc, pools_and_adjoints, 0,
                      (int)(2 * sizeof pool_cases / sizeof *pool_cases));
  tcase_add_test(tc, conv_filter_uses_scratch);
  tcase_add_loop_test(tc, threads_match_one_thread, 0, 2);
  tcase_add_loop_test(tc, train_entries_match, 0, 2);
  tcase_add_test(tc, update_chain_order);
  tcase_add_test(tc, fused_chain_is_one_kernel);
  tcase_add_test(tc, update_in_place_only_when_safe);
  tcase_add_test(tc, update_in_place_in_shared_loop);
  tcase_add_test(tc, train_entry_unaffected_by_apply);
  tcase_add_test(tc, every_compiler_and_level);
  tcase_add_loop_test(tc, fusion_matches_unfused, 0, 2);
  tcase_add_test(tc, adam_is_one_loop_per_parameter);
  tcase_add_test(tc, fused_reductions_bit_identical);
  tcase_add_test(tc, noise_matches_reference);
  tcase_add_test(tc, check_names_the_broken_kernel);
  tcase_add_loop_test(tc, fused_reduction_unit_axes, 0,
                      (int)(sizeof unit_axis_models / sizeof *unit_axis_models));
  tcase_add_test(tc, update_cycle_is_an_error);
  tcase_add_test(tc, bad_labels_give_nan);
  tcase_add_test(tc, recomputed_nodes_fit_their_loops);
  tcase_add_test(tc, tensor_names_in_entries);
  suite_add_tcase(s, tc);
  TCase *td = tcase_create("depth");
  tcase_set_timeout(td, 600);
  tcase_add_test(td, kernels_do_not_grow_with_depth);
  tcase_add_test(td, conv_stack_checks);
  suite_add_tcase(s, td);
  TCase *tt = tcase_create("text");
  tcase_add_checked_fixture(tt, setup, teardown);
  tcase_add_test(tt, golden_one_op_program);
  tcase_add_test(tt, identifiers_are_validated);
  suite_add_tcase(s, tt);
  TCase *tsplit = tcase_create("split");
  tcase_add_checked_fixture(tsplit, setup, teardown);
  tcase_set_timeout(tsplit, 120);
  tcase_add_loop_test(tsplit, grad_then_apply_is_train, 0,
                      (int)(sizeof split_variants / sizeof *split_variants));
  tcase_add_test(tsplit, accumulated_halves_are_one_step);
  suite_add_tcase(s, tsplit);
  TCase *ta = tcase_create("aot");
  tcase_add_checked_fixture(ta, setup, teardown);
  tcase_set_timeout(ta, 300);
  tcase_add_test(ta, aot_bad_cc_leaves_nothing);
  tcase_add_test(ta, aot_builds_a_trainer);
  suite_add_tcase(s, ta);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
