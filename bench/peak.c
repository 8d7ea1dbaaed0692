/*
 * peak.c — this machine's FP32 FMA peak, measured: every core runs independent chains of
 * 512-bit (or the widest the compiler targets) fused multiply-adds, enough of them to cover the
 * FMA latency. Prints `fma_peak_gflops_per_core=X fma_peak_gflops_all=Y cores=N`; bench/run
 * reports each kernel's speed as a share of it.
 *
 *   cc -O2 -march=native -ffp-contract=fast -pthread bench/peak.c -o peak && ./peak
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef float vec __attribute__((vector_size(64)));
enum { CHAINS = 12, ITERS = 600 * 1000 * 1000 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static volatile float sink;

/* Twelve named accumulators (registers, not an array the compiler may keep in memory): with two
 * FMA units of 4-cycle latency, 8 independent chains keep them busy. */
static void *chains(void *arg) {
  (void)arg;
  vec a, b;
  for (int k = 0; k < 16; k++) {
    a[k] = 0.999999f;
    b[k] = 1e-7f;
  }
  vec c0 = a, c1 = a + b, c2 = a - b, c3 = a * a, c4 = b, c5 = a + a, c6 = b + b, c7 = a * b,
      c8 = a - a, c9 = b * b, c10 = a + b + b, c11 = a - b - b;
  for (long i = 0; i < ITERS / CHAINS; i++) {
    c0 = c0 * a + b; c1 = c1 * a + b; c2 = c2 * a + b; c3 = c3 * a + b;
    c4 = c4 * a + b; c5 = c5 * a + b; c6 = c6 * a + b; c7 = c7 * a + b;
    c8 = c8 * a + b; c9 = c9 * a + b; c10 = c10 * a + b; c11 = c11 * a + b;
  }
  vec s = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11;
  sink = s[0];
  return NULL;
}

/* GFLOP/s of `threads` threads running the chains at once. */
static double measure(int threads) {
  pthread_t t[256];
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    double t0 = now();
    for (int i = 0; i < threads; i++)
      pthread_create(&t[i], NULL, chains, NULL);
    for (int i = 0; i < threads; i++)
      pthread_join(t[i], NULL);
    double flops = 2.0 * 16 * (double)(ITERS / CHAINS * CHAINS) * threads;
    double g = flops / (now() - t0) / 1e9;
    best = g > best ? g : best;
  }
  return best;
}

int main(void) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1 || cores > 256)
    cores = 1;
  double one = measure(1), all = measure((int)cores);
  printf("fma_peak_gflops_per_core=%.1f fma_peak_gflops_all=%.1f cores=%ld\n", one, all, cores);
  return 0;
}
