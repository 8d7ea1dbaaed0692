/*
 * test_gemm.c — the GEMM routine generated matmul kernels call (src/cg/cg_gemm.c).
 *
 * The routine's text is compiled by the system C compiler into a shared object, for each vector
 * width it selects (AVX-512 via -march=native on this machine, AVX2, SSE, and the plain-loop
 * fallback of a compiler without GNU extensions, simulated with -U__GNUC__), and run on shapes
 * around every blocking boundary, all four transpose combinations and leading dimensions longer
 * than the rows, against a double-precision reference. It must write only C's valid part and
 * only the scratch it asked for. Then whole programs: matmul nodes large enough to take the GEMM
 * path, through the session's pipeline, at the planned and at smaller batches.
 */
#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "driver/driver.h"
#include "ir/ir.h"
#include "xform/xform.h"
#include "plan/plan.h"
#include "cg/cg.h"
#include "backend/backend.h"

/* The default schedule's GEMM tiles. */
static const GemmTiles *tiles(void) {
  static _Thread_local GemmTiles t;
  SchedOptions o;
  sched_default_options(&o);
  sched_gemm_tiles(&o, &t);
  return &t;
}

typedef void (*SGemm)(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int ta,
                      const float *B, int64_t ldb, int tb, float *C, int64_t ldc,
                      unsigned char *ws);
typedef void (*DGemm)(int64_t M, int64_t N, int64_t K, const double *A, int64_t lda, int ta,
                      const double *B, int64_t ldb, int tb, double *C, int64_t ldc,
                      unsigned char *ws);

/* ---- compiling the emitted routine ------------------------------------------------------------ */

typedef struct Lib {
  void *handle;
  SGemm s;
  DGemm d;
} Lib;

/* Both routines plus exported wrappers, compiled with cc flags; false when that compiler or
 * flag set is unavailable (only allowed for the optional variants). */
static bool lib_open(Lib *lib, const char *cc, const char *flags) {
  memset(lib, 0, sizeof *lib);
  Buf src = {0};
  buf_puts(&src, "#include <stdint.h>\n#include <string.h>\n");
  cg_gemm_emit(DT_F32, tiles(), &src);
  cg_gemm_emit(DT_F64, tiles(), &src);
  static const char *const wrap[2][2] = {{"float", "kiln_sgemm"}, {"double", "kiln_dgemm"}};
  for (int t = 0; t < 2; t++)
    buf_printf(&src,
               "void test_%s(int64_t M, int64_t N, int64_t K, const %s *A, int64_t lda, int ta,"
               " const %s *B, int64_t ldb, int tb, %s *C, int64_t ldc, unsigned char *ws)"
               " { %s(M, N, K, A, lda, ta, B, ldb, tb, C, ldc, ws); }\n",
               wrap[t][1], wrap[t][0], wrap[t][0], wrap[t][0], wrap[t][1]);
  char dir[] = "/tmp/kiln-test-gemm-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char c[128], so[128], log[128], cmd[1024];
  snprintf(c, sizeof c, "%s/g.c", dir);
  snprintf(so, sizeof so, "%s/g.so", dir);
  snprintf(log, sizeof log, "%s/log", dir);
  FILE *f = fopen(c, "w");
  ck_assert_ptr_nonnull(f);
  fputs(src.p, f);
  fclose(f);
  buf_free(&src);
  snprintf(cmd, sizeof cmd, "%s -std=c11 -Wall -Wextra -Werror %s -shared -fPIC -o %s %s >%s 2>&1",
           cc, flags, so, c, log);
  bool ok = system(cmd) == 0;
  if (ok) {
    lib->handle = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(lib->handle != NULL, "dlopen: %s", dlerror());
    lib->s = (SGemm)(uintptr_t)dlsym(lib->handle, "test_kiln_sgemm");
    lib->d = (DGemm)(uintptr_t)dlsym(lib->handle, "test_kiln_dgemm");
    ck_assert(lib->s && lib->d);
  } else {
    char msg[2048] = "";
    f = fopen(log, "r");
    if (f) {
      size_t n = fread(msg, 1, sizeof msg - 1, f);
      msg[n] = 0;
      fclose(f);
    }
    fprintf(stderr, "test_gemm: `%s %s` did not compile the routine:\n%s\n", cc, flags, msg);
  }
  unlink(c);
  unlink(so);
  unlink(log);
  rmdir(dir);
  return ok;
}

static void lib_close(Lib *lib) {
  if (lib->handle)
    dlclose(lib->handle);
}

/* ---- one shape -------------------------------------------------------------------------------- */

/* Deterministic values in [-1, 1). */
static uint64_t rng_state = 88172645463325252ull;
static double rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

#define GUARD 256
static const double SENTINEL = 12345.0;

/* Runs C = op(A) op(B) at M x N x K with leading dimensions padded by pad and the scratch start
 * misaligned by mis bytes, in f32 (dbl false) or f64, and checks: every valid element against the
 * reference within 1e-6·K (f32) or 1e-14·K (f64) of sum |a·b|, C's padding columns and the bytes
 * past the scratch the routine asked for untouched. */
static void check_shape(const Lib *lib, bool dbl, int64_t M, int64_t N, int64_t K, int ta, int tb,
                        int64_t pad, int mis) {
  int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
  int64_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
  size_t es = dbl ? sizeof(double) : sizeof(float);
  double *A = malloc(sizeof(double) * (size_t)(ar * lda)), *B = malloc(sizeof(double) * (size_t)(br * ldb));
  unsigned char *a = malloc(es * (size_t)(ar * lda)), *b = malloc(es * (size_t)(br * ldb));
  unsigned char *c = malloc(es * (size_t)(M * ldc));
  for (int64_t i = 0; i < ar * lda; i++) {
    A[i] = rnd();
    if (dbl)
      ((double *)a)[i] = A[i];
    else
      ((float *)a)[i] = (float)A[i], A[i] = (float)A[i];
  }
  for (int64_t i = 0; i < br * ldb; i++) {
    B[i] = rnd();
    if (dbl)
      ((double *)b)[i] = B[i];
    else
      ((float *)b)[i] = (float)B[i], B[i] = (float)B[i];
  }
  for (int64_t i = 0; i < M * ldc; i++) {
    if (dbl)
      ((double *)c)[i] = SENTINEL;
    else
      ((float *)c)[i] = (float)SENTINEL;
  }
  /* Shapes below the GEMM threshold never call the routine from generated code; give them the
   * bound of a shape above it (the bound grows with each size). */
  DType dt = dbl ? DT_F64 : DT_F32;
  int64_t wsb = sched_gemm_scratch(tiles(), M, N, K, dt);
  if (wsb == 0)
    wsb = sched_gemm_scratch(tiles(), M + 64, N + 64, K + 64, dt);
  ck_assert_int_gt(wsb, 0);
  unsigned char *wsmem = malloc((size_t)(wsb + mis + GUARD));
  memset(wsmem, 0x5A, (size_t)(wsb + mis + GUARD));
  unsigned char *ws = wsmem + mis;
  if (dbl)
    lib->d(M, N, K, (double *)a, lda, ta, (double *)b, ldb, tb, (double *)c, ldc, ws);
  else
    lib->s(M, N, K, (float *)a, lda, ta, (float *)b, ldb, tb, (float *)c, ldc, ws);
  for (int64_t i = 0; i < GUARD; i++)
    ck_assert_msg(ws[wsb + i] == 0x5A, "%lldx%lldx%lld: wrote past its %lld scratch bytes",
                  (long long)M, (long long)N, (long long)K, (long long)wsb);
  double rel = (dbl ? 1e-14 : 1e-6) * (double)K;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      double got = dbl ? ((double *)c)[i * ldc + j] : ((float *)c)[i * ldc + j];
      if (j >= N) {
        ck_assert_msg(got == SENTINEL, "wrote C[%lld][%lld] past N = %lld", (long long)i,
                      (long long)j, (long long)N);
        continue;
      }
      double r = 0, mag = 0;
      for (int64_t p = 0; p < K; p++) {
        double x = ta ? A[p * lda + i] : A[i * lda + p];
        double y = tb ? B[j * ldb + p] : B[p * ldb + j];
        r += x * y;
        mag += fabs(x * y);
      }
      ck_assert_msg(fabs(got - r) <= rel * mag + 1e-300,
                    "%s %lldx%lldx%lld ta=%d tb=%d pad=%lld: C[%lld][%lld] = %.17g, "
                    "reference %.17g", dbl ? "f64" : "f32", (long long)M, (long long)N,
                    (long long)K, ta, tb, (long long)pad, (long long)i, (long long)j, got, r);
    }
  free(A);
  free(B);
  free(a);
  free(b);
  free(c);
  free(wsmem);
}

/* Shapes: degenerate, primes, around MR (6, 8), NR (8..64), the K block (256, split evenly), the
 * M block (126..128), the seed networks' layers, and K in two of the deeper blocks a transposed
 * B at small M takes (2 x 1250). */
typedef struct Mnk {
  int64_t m, n, k;
} Mnk;
static const Mnk shapes[] = {
    {1, 1, 1},     {7, 13, 29},    {1, 64, 1},     {64, 1, 3},      {5, 7, 1},
    {6, 16, 8},    {8, 32, 16},    {9, 33, 17},    {12, 48, 255},   {13, 31, 256},
    {17, 65, 257}, {3, 5, 513},    {127, 63, 40},  {129, 97, 300},  {257, 130, 7},
    {64, 10, 256}, {10, 256, 64},  {64, 256, 10},  {23, 129, 1000}, {9, 21, 2500},
};

static void all_shapes(const Lib *lib, bool dbl) {
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
    for (int t = 0; t < 4; t++)
      check_shape(lib, dbl, shapes[s].m, shapes[s].n, shapes[s].k, t >> 1, t & 1,
                  (int64_t)(s % 3) * 3, (int)(s % 5) * 13);
}

/* ---- tests ------------------------------------------------------------------------------------ */

/* The variants: -march=native (AVX-512 here), AVX2 + FMA, baseline x86-64 (SSE) or the target's
 * default, and the plain loops a compiler without __GNUC__ gets. */
static const char *const variants[] = {"-O2 -march=native", "-O2 -mavx2 -mfma", "-O2",
                                       "-O2 -U__GNUC__ -Wno-builtin-macro-redefined"};

/* The entry point named `name` of a loaded program. */
static kiln_entry_fn entry_fn(const kiln_program *p, const char *name) {
  for (int i = 0; i < p->nentries; i++)
    if (!strcmp(p->entries[i].name, name)) return p->entries[i].fn;
  ck_abort_msg("no entry %s", name);
  return NULL;
}

/* The compiler the routine is tried with: $CC as the user's builds would, else cc. */
static const char *test_cc(void) {
  const char *cc = getenv("CC");
  return cc && *cc ? cc : "cc";
}

START_TEST(routine_all_shapes) {
  Lib lib;
  const char *flags = variants[_i];
  bool optional = strstr(flags, "-mavx2") != NULL || strstr(flags, "-U__GNUC__") != NULL;
  if (!lib_open(&lib, test_cc(), flags)) {
    ck_assert_msg(optional, "the routine must compile with %s %s", test_cc(), flags);
    return;
  }
  all_shapes(&lib, false);
  all_shapes(&lib, true);
  lib_close(&lib);
}
END_TEST

/* clang, when installed: the other compiler the generated code must work with. */
START_TEST(routine_with_clang) {
  if (access("/usr/bin/clang", X_OK) != 0)
    return;
  Lib lib;
  ck_assert(lib_open(&lib, "clang", "-O2 -march=native"));
  all_shapes(&lib, false);
  lib_close(&lib);
}
END_TEST

/* The CNN's fc1: forward X·Wᵀ, input gradient dY·W, weight gradient dYᵀ·X. */
START_TEST(routine_fc1_shapes) {
  Lib lib;
  ck_assert(lib_open(&lib, test_cc(), "-O2 -march=native"));
  check_shape(&lib, false, 64, 600, 1568, 0, 1, 0, 0);
  check_shape(&lib, false, 64, 1568, 600, 0, 0, 0, 0);
  check_shape(&lib, false, 600, 1568, 64, 1, 0, 0, 0);
  check_shape(&lib, false, 64, 600, 1568, 1, 1, 5, 7);
  lib_close(&lib);
}
END_TEST

/* The scratch bound: positive exactly when the GEMM is chosen, never for i32, growing with every
 * size, and the choice is the plain loop for tiny products. */
START_TEST(scratch_bound) {
  ck_assert_int_eq(sched_gemm_scratch(tiles(), 2, 3, 4, DT_F32), 0);
  ck_assert_int_eq(sched_gemm_scratch(tiles(), 64, 600, 1568, DT_I32), 0);
  ck_assert_int_eq(sched_gemm_scratch(tiles(), 0, 600, 1568, DT_F32), 0);
  int64_t s = sched_gemm_scratch(tiles(), 64, 600, 1568, DT_F32);
  ck_assert_int_gt(s, 0);
  ck_assert_int_le(s, 4 << 20); /* blocks, not whole operands */
  ck_assert_int_gt(sched_gemm_scratch(tiles(), 64, 600, 1568, DT_F64), s);
  for (int64_t m = 32; m < 600; m += 37)
    ck_assert_int_le(sched_gemm_scratch(tiles(), m, 300, 300, DT_F32),
                     sched_gemm_scratch(tiles(), m + 1, 300, 300, DT_F32));
  ck_assert_str_eq(cg_gemm_name(DT_F32), "kiln_sgemm");
  ck_assert_str_eq(cg_gemm_name(DT_F64), "kiln_dgemm");
}
END_TEST

/* The tiles follow the target: the default one gives kc 256, mc 128, nc 2048; a larger L1 and
 * wider vectors change kc, L2 mc (at most 512), L3 and the cores sharing it nc; unknown sizes
 * (0) count as the default's; an explicit tile overrides only itself. */
START_TEST(tiles_follow_the_target) {
  SchedOptions o;
  GemmTiles t;
  sched_default_options(&o);
  sched_gemm_tiles(&o, &t);
  ck_assert(t.kc == 256 && t.mc == 128 && t.nc == 2048);
  o.target = (Target){.vector_bytes = 64, .l1_bytes = 48 << 10, .l2_bytes = 2 << 20,
                      .l3_bytes = 260 << 20, .cores = 2};
  sched_gemm_tiles(&o, &t);
  ck_assert_msg(t.kc == 224 && t.mc == 512 && t.nc == 8192, "%lld %lld %lld", (long long)t.kc,
                (long long)t.mc, (long long)t.nc);
  o.target = (Target){.vector_bytes = 16, .l1_bytes = 16 << 10, .l2_bytes = 256 << 10,
                      .l3_bytes = 8 << 20, .cores = 4};
  sched_gemm_tiles(&o, &t);
  ck_assert_msg(t.kc == 192 && t.mc == 160 && t.nc == 640, "%lld %lld %lld", (long long)t.kc,
                (long long)t.mc, (long long)t.nc);
  o.target = (Target){0};
  sched_gemm_tiles(&o, &t);
  ck_assert(t.kc == 256 && t.mc == 128 && t.nc == 2048);
  o.gemm.kc = 100;
  sched_gemm_tiles(&o, &t);
  ck_assert(t.kc == 100 && t.mc == 128 && t.nc == 2048);
  for (int64_t l1 = 8 << 10; l1 <= 1 << 20; l1 *= 2) {
    GemmTiles a, b;
    o = (SchedOptions){.target = {.vector_bytes = 32, .l1_bytes = l1}};
    sched_gemm_tiles(&o, &a);
    o.target.l1_bytes = 2 * l1;
    sched_gemm_tiles(&o, &b);
    ck_assert(a.kc >= 32 && a.kc <= b.kc && b.kc <= 1024 && a.mc >= 16 && a.nc >= 64);
  }
}
END_TEST

/* ---- whole programs --------------------------------------------------------------------------- */

static const Loc L0 = {0};

static const kiln_tensor *tensor(const kiln_program *p, const char *name) {
  for (int i = 0; i < p->ntensors; i++)
    if (!strcmp(p->tensors[i].name, name))
      return &p->tensors[i];
  ck_abort_msg("no tensor %s", name);
  return NULL;
}

/* Fills a float tensor's first n values. */
static void fill(unsigned char *arena, const kiln_tensor *t, int64_t n, DType dt) {
  for (int64_t i = 0; i < n; i++) {
    double v = rnd();
    if (dt == DT_F64)
      ((double *)(arena + t->offset))[i] = v;
    else
      ((float *)(arena + t->offset))[i] = (float)v;
  }
}

static double at(const unsigned char *arena, const kiln_tensor *t, int64_t i, DType dt) {
  return dt == DT_F64 ? ((const double *)(arena + t->offset))[i]
                      : ((const float *)(arena + t->offset))[i];
}

/* y = x·wᵀ ([B,300]·[70,300]ᵀ), g = xᵀ·y2 ([300,B]·[B,70], K = B), h = w·xᵀ ([70,B], N = B),
 * small = x[:, :] tiny product (plain loop): every one against the reference sum. */
START_TEST(program_matmuls) {
  DType dt = _i ? DT_F64 : DT_F32;
  const int64_t batch = 37, F = 300, O = 70;
  Graph *g = ir_new("gemm");
  ir_sym(g, "B");
  Shape sx = {2, {{1, 0}, {F, -1}}}, sw = {2, {{O, -1}, {F, -1}}}, sy2 = {2, {{1, 0}, {O, -1}}};
  Shape st = {2, {{2, -1}, {3, -1}}};
  int x = ir_leaf(g, OP_INPUT, ROLE_INPUT, "x", dt, sx, L0);
  int w = ir_leaf(g, OP_PARAM, ROLE_PARAM, "w", dt, sw, L0);
  int y2 = ir_leaf(g, OP_INPUT, ROLE_INPUT, "y2", dt, sy2, L0);
  int t = ir_leaf(g, OP_PARAM, ROLE_PARAM, "t", dt, st, L0);
  ir_add_output(g, ENTRY_GRAD, "y", ir_matmul(g, x, w, false, true, L0), NULL);
  ir_add_output(g, ENTRY_GRAD, "gw", ir_matmul(g, x, y2, true, false, L0), NULL);
  ir_add_output(g, ENTRY_GRAD, "h", ir_matmul(g, w, x, false, true, L0), NULL);
  ir_add_output(g, ENTRY_GRAD, "small", ir_matmul(g, t, t, true, false, L0), NULL);
  Options o;
  session_default_options(&o);
  o.batch = batch;
  Session s;
  session_adopt(&s, g, &o);
  ck_assert_msg(session_load(&s) == 0, "%s", s.error);
  const char *name = cg_gemm_name(dt);
  char call[64];
  snprintf(call, sizeof call, "%s(", name);
  ck_assert_msg(strstr(s.c.p, call) != NULL, "no %s call in the program", name);
  ck_assert_int_gt(s.plan.scratch_bytes, 0);
  const kiln_program *p = s.prog;
  size_t bytes = ((size_t)p->arena_bytes + 63) / 64 * 64;
  unsigned char *arena = aligned_alloc(64, bytes);
  memset(arena, 0xA5, bytes);
  const kiln_tensor *tx = tensor(p, "x"), *tw = tensor(p, "w"), *ty2 = tensor(p, "y2");
  const kiln_tensor *tt = tensor(p, "t"), *ty = tensor(p, "y"), *tg = tensor(p, "gw");
  const kiln_tensor *th = tensor(p, "h"), *ts = tensor(p, "small");
  fill(arena, tw, O * F, dt);
  fill(arena, tt, 6, dt);
  const int64_t batches[] = {batch, batch - 1, 9, 1};
  for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++) {
    const int64_t nb = batches[bi];
    fill(arena, tx, nb * F, dt);
    fill(arena, ty2, nb * O, dt);
    entry_fn(p, "grad")(arena, nb, NULL);
    double rel = dt == DT_F64 ? 1e-13 : 1e-6 * (double)F;
    for (int64_t i = 0; i < nb; i++)
      for (int64_t j = 0; j < O; j++) {
        double r = 0, mag = 0;
        for (int64_t k = 0; k < F; k++) {
          r += at(arena, tx, i * F + k, dt) * at(arena, tw, j * F + k, dt);
          mag += fabs(at(arena, tx, i * F + k, dt) * at(arena, tw, j * F + k, dt));
        }
        ck_assert_msg(fabs(at(arena, ty, i * O + j, dt) - r) <= rel * mag, "y[%lld][%lld] B=%lld",
                      (long long)i, (long long)j, (long long)nb);
        ck_assert_msg(fabs(at(arena, th, j * nb + i, dt) - r) <= rel * mag, "h[%lld][%lld] B=%lld",
                      (long long)j, (long long)i, (long long)nb);
      }
    for (int64_t k = 0; k < F; k++)
      for (int64_t j = 0; j < O; j++) {
        double r = 0, mag = 0;
        for (int64_t i = 0; i < nb; i++) {
          r += at(arena, tx, i * F + k, dt) * at(arena, ty2, i * O + j, dt);
          mag += fabs(at(arena, tx, i * F + k, dt) * at(arena, ty2, i * O + j, dt));
        }
        ck_assert_msg(fabs(at(arena, tg, k * O + j, dt) - r) <= rel * mag + 1e-300,
                      "gw[%lld][%lld] B=%lld", (long long)k, (long long)j, (long long)nb);
      }
    for (int64_t i = 0; i < 3; i++)
      for (int64_t j = 0; j < 3; j++) {
        double r = 0;
        for (int64_t k = 0; k < 2; k++)
          r += at(arena, tt, k * 3 + i, dt) * at(arena, tt, k * 3 + j, dt);
        ck_assert(fabs(at(arena, ts, i * 3 + j, dt) - r) <= 1e-6 * (fabs(r) + 1));
      }
  }
  free(arena);
  session_close(&s);
  ir_free(g);
}
END_TEST

/* A program whose matmuls are all tiny keeps the plain loops and emits no routine. */
START_TEST(program_tiny_matmul_stays_plain) {
  Graph *g = ir_new("tiny");
  ir_sym(g, "B");
  Shape sx = {2, {{1, 0}, {7, -1}}}, sw = {2, {{7, -1}, {5, -1}}};
  int x = ir_leaf(g, OP_INPUT, ROLE_INPUT, "x", DT_F32, sx, L0);
  int w = ir_leaf(g, OP_PARAM, ROLE_PARAM, "w", DT_F32, sw, L0);
  ir_add_output(g, ENTRY_GRAD, "y", ir_matmul(g, x, w, false, false, L0), NULL);
  Plan plan;
  Buf src = {0};
  Trap tr;
  if (KILN_TRY(&tr)) {
    plan_build(g, 6, NULL, &plan);
    cg_emit_c(g, &plan, &src);
    kiln_trap_end(&tr);
  } else {
    kiln_trap_end(&tr);
    ck_abort_msg("compile failed: %s", tr.msg);
  }
  ck_assert(strstr(src.p, "kiln_sgemm") == NULL);
  ck_assert_int_eq(plan.scratch_bytes, 0);
  buf_free(&src);
  plan_free(&plan);
  ir_free(g);
}
END_TEST

int main(void) {
  Suite *s = suite_create("gemm");
  TCase *tc = tcase_create("routine");
  tcase_set_timeout(tc, 600);
  tcase_add_loop_test(tc, routine_all_shapes, 0, (int)(sizeof variants / sizeof *variants));
  tcase_add_test(tc, routine_with_clang);
  tcase_add_test(tc, routine_fc1_shapes);
  tcase_add_test(tc, scratch_bound);
  tcase_add_test(tc, tiles_follow_the_target);
  suite_add_tcase(s, tc);
  TCase *tp = tcase_create("program");
  tcase_set_timeout(tp, 600);
  tcase_add_loop_test(tp, program_matmuls, 0, 2);
  tcase_add_test(tp, program_tiny_matmul_stays_plain);
  suite_add_tcase(s, tp);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
