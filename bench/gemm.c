/*
 * bench/gemm.c — GFLOP/s of the GEMM routine kiln writes into generated programs (cg_gemm.c),
 * on the matmul shapes of the seed networks, next to the plain loop nest src/cg/cg_elem.c prints for small
 * products and against the FP32 peak in PERF-NOTES.md.
 *
 * It emits kiln_sgemm exactly as a program gets it, plus one plain-loop kernel per shape with
 * constant bounds (the default schedule), compiles them the way aot.c compiles programs
 * (cc -std=c11 -O2 -march=native), loads the result and times each shape (best of 5 runs of at
 * least 0.1 s of thread CPU time). Every result is first checked against a double-precision reference.
 * Build and run: bench/gemm.sh (links against a Release build's libkiln).
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"
#include "cg/cg.h"

typedef void (*GemmFn)(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int ta,
                       const float *B, int64_t ldb, int tb, float *C, int64_t ldc,
                       unsigned char *ws);
typedef void (*PlainFn)(const float *A, const float *B, float *C);

typedef struct Shape3 {
  const char *what;
  int64_t M, N, K;
  int ta, tb;
} Shape3;

static const Shape3 shapes[] = {
    {"cnn fc1 forward  X.Wt  ", 64, 600, 1568, 0, 1},
    {"cnn fc1 input grad dY.W", 64, 1568, 600, 0, 0},
    {"cnn fc1 weight grad dYt.X", 600, 1568, 64, 1, 0},
    {"mlp fc1 forward  X.Wt  ", 64, 256, 784, 0, 1},
    {"mlp fc1 weight grad    ", 256, 784, 64, 1, 0},
    {"mlp fc2 forward  H.Wt  ", 64, 10, 256, 0, 1},
    {"mlp fc2 input grad     ", 64, 256, 10, 0, 0},
    {"mlp fc2 weight grad    ", 10, 256, 64, 1, 0},
    {"square 1024            ", 1024, 1024, 1024, 0, 0},
};
#define NSHAPES (sizeof shapes / sizeof *shapes)

/* One core's FP32 FMA peak in GFLOP/s: bench/gemm.sh measures it with bench/peak.c. */
static double peak_1core(void) {
  const char *p = getenv("KILN_PEAK");
  return p && atof(p) > 0 ? atof(p) : 0;
}

/* CPU time of this thread: the machine is shared (other builds and tests run on its two cores),
 * and time spent descheduled is not the kernel's. */
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The plain schedule of cg_elem.c's cg_emit_matmul, specialised to one shape. */
static void emit_plain(Buf *b, int i, const Shape3 *s) {
  long long M = s->M, N = s->N, K = s->K;
  const char *aik = s->ta ? "A[p*%lld + i]" : "A[i*%lld + p]";
  const char *bkj = s->tb ? "B[j*%lld + p]" : "B[p*%lld + j]";
  char a[64], bb[64];
  snprintf(a, sizeof a, aik, s->ta ? M : K);
  snprintf(bb, sizeof bb, bkj, s->tb ? K : N);
  buf_printf(b, "void plain%d(const float *restrict A, const float *restrict B, "
                "float *restrict C) {\n", i);
  if (!s->tb)
    buf_printf(b, "  for (int64_t i = 0; i < %lld; i++) {\n"
                  "    for (int64_t j = 0; j < %lld; j++) C[i*%lld + j] = 0;\n"
                  "    for (int64_t p = 0; p < %lld; p++) {\n"
                  "      const float s = %s;\n"
                  "      for (int64_t j = 0; j < %lld; j++) C[i*%lld + j] += s * %s;\n"
                  "    }\n  }\n}\n", M, N, N, K, a, N, N, bb);
  else
    buf_printf(b, "  for (int64_t i = 0; i < %lld; i++)\n"
                  "    for (int64_t j = 0; j < %lld; j++) {\n"
                  "      float s = 0;\n"
                  "      for (int64_t p = 0; p < %lld; p++) s += %s * %s;\n"
                  "      C[i*%lld + j] = s;\n    }\n}\n", M, N, K, a, bb, N);
}

static void *compile(const char *src) {
  char dir[] = "/tmp/kiln-gemm-bench-XXXXXX";
  if (!mkdtemp(dir))
    return NULL;
  char c[256], so[256], cmd[1024];
  snprintf(c, sizeof c, "%s/g.c", dir);
  snprintf(so, sizeof so, "%s/g.so", dir);
  FILE *f = fopen(c, "w");
  if (!f)
    return NULL;
  fputs(src, f);
  fclose(f);
  /* The flags kiln's cc backend compiles programs with at -O2. */
  const char *cc = getenv("CC") && *getenv("CC") ? getenv("CC") : "cc";
  snprintf(cmd, sizeof cmd,
           "%s -std=c11 -O2 -march=native -fno-math-errno -ffp-contract=off -shared -fPIC "
           "-o %s %s", cc, so, c);
  void *h = system(cmd) == 0 ? dlopen(so, RTLD_NOW) : NULL;
  unlink(c);
  unlink(so);
  rmdir(dir);
  return h;
}

static float *randv(int64_t n) {
  float *v = malloc((size_t)n * sizeof *v);
  for (int64_t i = 0; i < n; i++)
    v[i] = (float)rand() / (float)RAND_MAX - 0.5f;
  return v;
}

/* Largest |C - reference| relative to sum |a||b| over the row/column. */
static double check(const Shape3 *s, const float *A, const float *B, const float *C) {
  double worst = 0;
  for (int64_t i = 0; i < s->M; i++)
    for (int64_t j = 0; j < s->N; j++) {
      double r = 0, mag = 0;
      for (int64_t p = 0; p < s->K; p++) {
        double x = s->ta ? A[p * s->M + i] : A[i * s->K + p];
        double y = s->tb ? B[j * s->K + p] : B[p * s->N + j];
        r += x * y;
        mag += fabs(x * y);
      }
      double e = fabs(C[i * s->N + j] - r) / (mag > 0 ? mag : 1);
      if (e > worst)
        worst = e;
    }
  return worst;
}

/* Best seconds per call over 5 runs of >= 0.1 s. */
static double time_it(GemmFn g, PlainFn p, const Shape3 *s, const float *A, const float *B,
                      float *C, unsigned char *ws) {
  double best = 1e30;
  for (int r = 0; r < 5; r++) {
    int64_t n = 0;
    double t0 = now(), t;
    do {
      if (g)
        g(s->M, s->N, s->K, A, s->ta ? s->M : s->K, s->ta, B, s->tb ? s->K : s->N, s->tb, C,
          s->N, ws);
      else
        p(A, B, C);
      n++;
      t = now() - t0;
    } while (t < 0.1);
    if (t / (double)n < best)
      best = t / (double)n;
  }
  return best;
}

/* Usage: bench_gemm [kc mc nc]; the tiles default to what the schedule derives for the default
 * target (sched_default_options). */
int main(int argc, char **argv) {
  SchedOptions o;
  sched_default_options(&o);
  if (argc == 4)
    o.gemm = (GemmTiles){atoll(argv[1]), atoll(argv[2]), atoll(argv[3])};
  GemmTiles t;
  sched_gemm_tiles(&o, &t);
  Buf src = {0};
  buf_puts(&src, "#include <stdint.h>\n#include <string.h>\n");
  cg_gemm_emit(DT_F32, &t, &src);
  buf_puts(&src, "void gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, "
                 "int ta, const float *B, int64_t ldb, int tb, float *C, int64_t ldc, "
                 "unsigned char *ws) { kiln_sgemm(M, N, K, A, lda, ta, B, ldb, tb, C, ldc, ws); }\n");
  for (size_t i = 0; i < NSHAPES; i++)
    emit_plain(&src, (int)i, &shapes[i]);
  void *h = compile(src.p);
  if (!h) {
    fprintf(stderr, "gemm bench: cannot compile the emitted routine\n");
    return 1;
  }
  GemmFn gemm = (GemmFn)(uintptr_t)dlsym(h, "gemm");
  const double peak = peak_1core();
  printf("kiln_sgemm, 1 thread, tiles kc %lld mc %lld nc %lld, FMA peak %.0f GFLOP/s per core "
         "(bench/peak.c)\n", (long long)t.kc, (long long)t.mc, (long long)t.nc, peak);
  printf("%-26s %5s %5s %5s  %8s %6s  %8s  %s\n", "shape", "M", "N", "K", "gemm", "%peak",
         "plain", "scratch");
  for (size_t i = 0; i < NSHAPES; i++) {
    const Shape3 *s = &shapes[i];
    float *A = randv(s->M * s->K), *B = randv(s->K * s->N), *C = randv(s->M * s->N);
    int64_t wsb = sched_gemm_scratch(&t, s->M, s->N, s->K, DT_F32);
    if (wsb == 0) /* the compiler would pick the plain loop; time the routine anyway */
      wsb = sched_gemm_scratch(&t, s->M + 64, s->N + 64, s->K + 64, DT_F32);
    unsigned char *ws = malloc((size_t)wsb + 1) + 1; /* deliberately misaligned */
    char name[32];
    snprintf(name, sizeof name, "plain%zu", i);
    PlainFn plain = (PlainFn)(uintptr_t)dlsym(h, name);
    gemm(s->M, s->N, s->K, A, s->ta ? s->M : s->K, s->ta, B, s->tb ? s->K : s->N, s->tb, C, s->N,
         ws);
    double err = check(s, A, B, C);
    double flop = 2.0 * (double)s->M * (double)s->N * (double)s->K;
    double tg = time_it(gemm, NULL, s, A, B, C, ws);
    double tp = time_it(NULL, plain, s, A, B, C, ws);
    printf("%-26s %5lld %5lld %5lld  %8.1f %5.0f%%  %8.1f  %s%s\n", s->what, (long long)s->M,
           (long long)s->N, (long long)s->K, flop / tg * 1e-9, peak > 0 ? 100 * flop / tg * 1e-9 / peak : 0.0,
           flop / tp * 1e-9, sched_gemm_scratch(&t, s->M, s->N, s->K, DT_F32) ? "gemm" : "plain",
           err > 1e-5 ? "  WRONG" : "");
    free(ws - 1);
    free(A);
    free(B);
    free(C);
  }
  buf_free(&src);
  return 0;
}
