/*
 * rt_profile.c — where a compiled step's time goes: per kernel call site (kiln_abi.h's
 * kiln_site), its share of the entry, GFLOP/s and percent of this CPU's FMA peak, named by the
 * model line it came from.
 *
 * The generated entries call mark(site) before each kernel and mark(-1) after the last, so a
 * kernel's time is the clock between its mark and the next: one clock read per kernel call
 * (~20 ns through the vDSO against kernels of microseconds and more). The entry's own time,
 * measured around the call, leaves the rest — its final copies, the calls between kernels — as
 * "outside kernels".
 *
 * The peak is measured, not assumed: the program's own fma_probe (compiled with its flags, on
 * the widest vectors it uses) on one thread, and on as many threads as the step runs on at once,
 * since two hardware threads of one core share its FMA units. A kernel run as tasks is compared
 * with the peak of the threads it ran on, any other with one thread's.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

struct RtProfile {
  const kiln_program *prog;
  double *seconds;          /* per site */
  double *flops;            /* per site, done (at each call's batch) */
  int64_t *calls;           /* per site */
  double entry_seconds[KILN_ABI_MAX_ENTRIES];
  int64_t entry_calls[KILN_ABI_MAX_ENTRIES];
  int64_t batch;            /* of the entry running */
  int last;                 /* the site whose kernel runs, or -1 */
  double last_at;
};

RtProfile *rt_profile_new(const kiln_program *p, char *err) {
  RtProfile *r = calloc(1, sizeof *r);
  size_t n = (size_t)(p->nsites > 0 ? p->nsites : 1);
  if (r) {
    r->seconds = calloc(n, sizeof *r->seconds);
    r->flops = calloc(n, sizeof *r->flops);
    r->calls = calloc(n, sizeof *r->calls);
  }
  if (!r || !r->seconds || !r->flops || !r->calls) {
    rt_profile_free(r);
    rt_errf(err, "out of memory for a profile of %d call sites", p->nsites);
    return NULL;
  }
  r->prog = p;
  r->last = -1;
  return r;
}

void rt_profile_free(RtProfile *r) {
  if (!r)
    return;
  free(r->seconds);
  free(r->flops);
  free(r->calls);
  free(r);
}

void rt_profile_mark(void *profiler, int site) {
  RtProfile *r = profiler;
  double now = rt_now();
  if (r->last >= 0) {
    const kiln_site *s = &r->prog->sites[r->last];
    r->seconds[r->last] += now - r->last_at;
    r->flops[r->last] += s->per_example ? s->flops * (double)r->batch / (double)r->prog->batch
                                        : s->flops;
    r->calls[r->last]++;
  }
  r->last = site >= 0 && site < r->prog->nsites ? site : -1;
  r->last_at = now;
}

void rt_profile_entry(RtProfile *r, int entry, double seconds) {
  if (entry >= 0 && entry < KILN_ABI_MAX_ENTRIES) {
    r->entry_seconds[entry] += seconds;
    r->entry_calls[entry]++;
  }
}

void rt_profile_batch(RtProfile *r, int64_t batch) { r->batch = batch; }

double rt_profile_seconds(const RtProfile *r, int site) {
  return r && site >= 0 && site < r->prog->nsites ? r->seconds[site] : 0;
}

/* Sites of one entry, by time spent, longest first. */
static const RtProfile *sorting;
static int by_time(const void *a, const void *b) {
  double x = sorting->seconds[*(const int *)a], y = sorting->seconds[*(const int *)b];
  return (x < y) - (x > y);
}

void rt_profile_report(const RtProfile *r, FILE *out, double peak1, double peak_all, int threads,
                       int rows) {
  const kiln_program *p = r->prog;
  int *order = malloc(sizeof(int) * (size_t)(p->nsites > 0 ? p->nsites : 1));
  if (!order) {
    fprintf(out, "profile: out of memory\n");
    return;
  }
  fprintf(out, "profile: FMA peak %.1f GFLOP/s on 1 thread, %.1f on %d (measured)\n", peak1,
          peak_all, threads);
  for (int e = 0; e < p->nentries && e < KILN_ABI_MAX_ENTRIES; e++) {
    if (!r->entry_calls[e])
      continue;
    int n = 0;
    double in_kernels = 0, flops = 0;
    for (int i = 0; i < p->nsites; i++)
      if (p->sites[i].entry == e && r->calls[i]) {
        order[n++] = i;
        in_kernels += r->seconds[i];
        flops += r->flops[i];
      }
    sorting = r;
    qsort(order, (size_t)n, sizeof *order, by_time);
    double total = r->entry_seconds[e], per = 1e3 / (double)r->entry_calls[e];
    fprintf(out,
            "\nentry %s: %lld calls, %.3f ms each, %.1f GFLOP/s (%.0f%% of %d-thread peak)\n",
            p->entries[e].name, (long long)r->entry_calls[e], total * per,
            total > 0 ? flops / total / 1e9 : 0.0,
            total > 0 && peak_all > 0 ? 100 * flops / total / 1e9 / peak_all : 0.0, threads);
    fprintf(out, "  %6s %9s %8s %7s  %-28s %-26s %s\n", "share", "ms/call", "GFLOP/s", "of peak",
            "kernel", "op", "line");
    double shown = 0;
    for (int k = 0; k < n && k < rows; k++) {
      int i = order[k];
      const kiln_site *s = &p->sites[i];
      double gf = r->seconds[i] > 0 ? r->flops[i] / r->seconds[i] / 1e9 : 0;
      double peak = s->tasks ? peak_all : peak1;
      char gfs[32] = "-", pct[32] = "-";
      if (s->flops > 0) {
        snprintf(gfs, sizeof gfs, "%.1f", gf);
        if (peak > 0)
          snprintf(pct, sizeof pct, "%.0f%%", 100 * gf / peak);
      }
      fprintf(out, "  %5.1f%% %9.3f %8s %7s  %-28s %-26s %s\n",
              total > 0 ? 100 * r->seconds[i] / total : 0.0, r->seconds[i] * per, gfs, pct,
              s->kernel, s->op, s->source && *s->source ? s->source : "-");
      shown += r->seconds[i];
    }
    if (n > rows)
      fprintf(out, "  %5.1f%% %9.3f %8s %7s  (%d more calls)\n",
              total > 0 ? 100 * (in_kernels - shown) / total : 0.0, (in_kernels - shown) * per,
              "", "", n - rows);
    fprintf(out, "  %5.1f%% %9.3f %8s %7s  (outside kernels: the entry's copies and calls)\n",
            total > 0 ? 100 * (total - in_kernels) / total : 0.0, (total - in_kernels) * per, "",
            "");
  }
  free(order);
}
