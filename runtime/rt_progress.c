/*
 * rt_progress.c — what a trainer tells the person waiting for it: a progress line on stderr, the
 * metrics CSV, the monotonic clock, and the formatter behind every `err` message.
 *
 * On a terminal the progress line is redrawn in place (\r, then clear to end of line) at most ten
 * times a second, so a fast step does not spend its time printing. Anywhere else (a log file, CI)
 * \r would pile up into one unreadable line, so a full line is printed every five seconds instead.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime.h"

#define TTY_INTERVAL 0.1
#define LOG_INTERVAL 5.0

int rt_errf(char *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, RT_ERR_LEN, fmt, ap);
  va_end(ap);
  return -1;
}

double rt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void rt_progress_init(RtProgress *p, FILE *out) {
  p->out = out;
  p->tty = out && isatty(fileno(out));
  p->start = p->last_draw = rt_now();
  p->drawn = 0;
}

/* "0:31", "12:05", "1:02:03"; "?" before there is a rate to extrapolate from. */
static void fmt_eta(char *buf, size_t len, double s) {
  if (!(s >= 0) || s > 1e8) {
    snprintf(buf, len, "?");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

void rt_progress_update(RtProgress *p, int epoch, int epochs, int64_t step, int64_t steps,
                        double loss, double images_per_s, double eta_s) {
  if (!p->out)
    return;
  double now = rt_now();
  double interval = p->tty ? TTY_INTERVAL : LOG_INTERVAL;
  /* A terminal gets its first frame at once; a log waits a whole interval, so a short run
   * prints nothing but its summary. */
  int last = p->tty && step == steps; /* so the line left on screen shows the whole epoch */
  if ((p->drawn || !p->tty) && now - p->last_draw < interval && !last)
    return;
  p->last_draw = now;
  char eta[32], line[256];
  fmt_eta(eta, sizeof eta, eta_s);
  int n = 0;
  if (epochs > 0)
    n = snprintf(line, sizeof line, "epoch %d/%d  ", epoch, epochs);
  snprintf(line + n, sizeof line - (size_t)n, "step %lld/%lld  loss %.4f  %.0f img/s  ETA %s",
           (long long)step, (long long)steps, loss, images_per_s, eta);
  if (p->tty) {
    fprintf(p->out, "\r%s\033[K", line);
    p->drawn = 1;
  } else {
    fprintf(p->out, "%s\n", line);
  }
  fflush(p->out);
}

void rt_progress_done(RtProgress *p) {
  if (p->out && p->tty && p->drawn) {
    fputc('\n', p->out);
    fflush(p->out);
  }
  p->drawn = 0;
}

/* The rows of an existing metrics file whose first field (the epoch) is at most keep, in order,
 * appended to f: a resumed run's file keeps the epochs before the checkpoint and none after. */
static void keep_rows(const char *path, int keep, FILE *f) {
  struct stat st;
  char err[RT_ERR_LEN], line[1024];
  FILE *old = rt_open_regular(path, &st, err);
  if (!old)
    return;
  for (int first = 1; fgets(line, sizeof line, old); first = 0) {
    char *end;
    long epoch = strtol(line, &end, 10);
    if (!first && end != line && *end == ',' && epoch >= 1 && epoch <= keep)
      fputs(line, f);
  }
  fclose(old);
}

int rt_csv_open(RtCsv *c, const char *path, const char *header, int keep, char *err) {
  char tmp[4096], target[4096];
  c->path = path;
  int in_place = rt_write_target(path, target, sizeof target, err);
  if (in_place < 0)
    return -1;
  if (in_place) {
    /* A device or a pipe (/dev/stdout) is written as it is, never replaced. */
    if (!(c->f = fopen(path, "w")))
      return rt_errf(err, "%s: cannot open: %s", path, strerror(errno));
    fprintf(c->f, "%s\n", header);
    fflush(c->f);
    return 0;
  }
  /* A fresh file takes the old one's place only once it holds the header and kept rows. */
  FILE *f = rt_create_temp(target, tmp, sizeof tmp, err);
  if (!f)
    return -1;
  fprintf(f, "%s\n", header);
  if (keep > 0)
    keep_rows(target, keep, f);
  if (fflush(f) || rename(tmp, target)) {
    rt_errf(err, "%s: cannot write: %s", path, strerror(errno));
    fclose(f);
    unlink(tmp);
    return -1;
  }
  c->f = f;
  return 0;
}

/* One row: fmt is the row without its newline. Flushed at once, so a run that is killed still
 * leaves every finished epoch in the file. */
void rt_csv_row(RtCsv *c, const char *fmt, ...) {
  if (!c->f)
    return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(c->f, fmt, ap);
  va_end(ap);
  fputc('\n', c->f);
  fflush(c->f);
}

int rt_csv_close(RtCsv *c, char *err) {
  if (!c->f)
    return 0;
  int bad = ferror(c->f);
  int e = errno;
  if (fclose(c->f) && !bad)
    bad = 1, e = errno;
  c->f = NULL;
  if (bad)
    return rt_errf(err, "%s: write failed: %s", c->path ? c->path : "metrics file",
                   strerror(e ? e : EIO));
  return 0;
}
