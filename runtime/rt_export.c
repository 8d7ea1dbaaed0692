/*
 * rt_export.c — a model's outputs as pictures: 8-bit binary PGM (P5) files, one per example and
 * channel, so that what a filter or a denoiser does can be looked at with any image viewer.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "runtime.h"

/* Values v[0 .. h·w) row by row, clamped to [0, 1] and scaled to 0..255 (rounded to nearest;
 * NaN becomes 0), written atomically to path. */
int rt_write_pgm(const char *path, const double *v, int64_t h, int64_t w, char *err) {
  char tmp[4096], target[4096];
  int in_place = rt_write_target(path, target, sizeof target, err);
  if (in_place < 0)
    return -1;
  FILE *f = in_place ? fopen(path, "wb") : rt_create_temp(target, tmp, sizeof tmp, err);
  if (!f)
    return in_place ? rt_errf(err, "%s: cannot open: %s", path, strerror(errno)) : -1;
  fprintf(f, "P5\n%lld %lld\n255\n", (long long)w, (long long)h);
  for (int64_t i = 0; i < h * w; i++) {
    double x = v[i] > 1 ? 1 : v[i] >= 0 ? v[i] : 0; /* NaN fails both tests: 0 */
    fputc((int)lround(x * 255), f);
  }
  if (in_place) {
    int bad = fflush(f) || ferror(f);
    int e = errno;
    if (fclose(f) || bad)
      return rt_errf(err, "%s: cannot write: %s", path, strerror(e ? e : EIO));
    return 0;
  }
  if (fflush(f) || fsync(fileno(f)) || ferror(f)) {
    rt_errf(err, "%s: cannot write: %s", path, strerror(errno));
    fclose(f);
    unlink(tmp);
    return -1;
  }
  fclose(f);
  if (rename(tmp, target)) {
    rt_errf(err, "%s: cannot write: %s", path, strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}
