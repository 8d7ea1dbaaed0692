/*
 * bench/compile.c — how long a model takes from its file to a program loaded in process, cold:
 * kiln's own work (parse, differentiate, schedule, plan, emit) and the backends' (the JIT, the
 * system compiler and dlopen), each in a fresh session, with the size of the generated C.
 *
 * It drives the session (src/driver) rather than the kiln command so that nothing else is timed:
 * `kiln train` would add reading the data set, about half a second. Every compile starts from
 * nothing (a new session, a new LLJIT or a new compiler process); a compile cache, if kiln gets
 * one, must stay off here. Times are CPU seconds, the compiler process's included, median of the
 * runs. Built by bench/compile.sh, which also writes the models it is usually given.
 *
 *   bench_compile [--threads N] [--runs R] MODEL...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "driver/driver.h"

/* CPU seconds of this process and of its children that have been waited for (the system
 * compiler): on a shared machine, time spent descheduled is not the compile's. */
static double cpu_seconds(void) {
  double t = 0;
  const int who[] = {RUSAGE_SELF, RUSAGE_CHILDREN};
  for (int i = 0; i < 2; i++) {
    struct rusage u;
    getrusage(who[i], &u);
    t += (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
  }
  return t;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, by_value);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Kernel definitions in generated C: k12_mean, not the GEMM routine's functions nor the entries'. */
static int count_kernels(const char *c) {
  static const char def[] = "\nstatic KILN_NOINLINE void k";
  int n = 0;
  for (const char *p = c; (p = strstr(p, def)) != NULL; p++)
    n += p[sizeof def - 1] >= '0' && p[sizeof def - 1] <= '9';
  return n;
}

/* One cold compile of path: kiln alone, up to the C (backend < 0), or up to the program loaded
 * by that backend. Returns the seconds taken, or -1 with the diagnostic printed. */
static double compile_once(const char *path, const Options *base, int backend, size_t *bytes,
                           int *kernels) {
  Options o = *base;
  if (backend >= 0)
    o.backend.kind = (BackendKind)backend;
  Session s;
  double t0 = cpu_seconds();
  int rc = session_open_file(&s, path, &o);
  if (!rc)
    rc = backend < 0 ? session_emit(&s) : session_load(&s);
  double t = cpu_seconds() - t0;
  if (rc) {
    fprintf(stderr, "bench_compile: %s: %s", path, s.error);
    t = -1;
  } else if (bytes) {
    *bytes = s.c.len;
    *kernels = count_kernels(s.c.p);
  }
  session_close(&s);
  return t;
}

int main(int argc, char **argv) {
  Options o;
  session_default_options(&o);
  o.sched.threads = 1;
  int runs = 3, first = 1;
  for (; first + 1 < argc && argv[first][0] == '-'; first += 2) {
    int v = atoi(argv[first + 1]);
    if (!strcmp(argv[first], "--threads") && v >= 1 && v <= 64)
      o.sched.threads = o.sched.target.cores = v;
    else if (!strcmp(argv[first], "--runs") && v >= 1 && v <= 100)
      runs = v;
    else
      break;
  }
  if (first >= argc || argv[first][0] == '-') {
    fprintf(stderr, "usage: bench_compile [--threads N] [--runs R] MODEL...\n");
    return 2;
  }
  static const struct {
    const char *name;
    int kind; /* -1: emit only */
  } columns[] = {{"kiln", -1}, {"jit", BACKEND_JIT}, {"cc", BACKEND_CC}};
  enum { NCOL = sizeof columns / sizeof columns[0] };
  printf("%-24s %10s %8s", "model", "C bytes", "kernels");
  for (int c = 0; c < NCOL; c++)
    printf(" %8s s", columns[c].name);
  printf("\n");
  for (int m = first; m < argc; m++) {
    size_t bytes = 0;
    int kernels = 0;
    double sec[NCOL];
    for (int c = 0; c < NCOL; c++) {
      if (columns[c].kind == BACKEND_JIT && !backend_has_jit()) {
        sec[c] = -1;
        continue;
      }
      double t[100];
      for (int r = 0; r < runs; r++)
        if ((t[r] = compile_once(argv[m], &o, columns[c].kind, &bytes, &kernels)) < 0)
          return 1;
      sec[c] = median(t, runs);
    }
    const char *base = strrchr(argv[m], '/');
    printf("%-24s %10zu %8d", base ? base + 1 : argv[m], bytes, kernels);
    for (int c = 0; c < NCOL; c++)
      if (sec[c] < 0)
        printf(" %10s", "-");
      else
        printf(" %10.3f", sec[c]);
    printf("\n");
    fflush(stdout);
  }
  return 0;
}
