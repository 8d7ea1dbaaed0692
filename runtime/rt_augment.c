/*
 * rt_augment.c — what happens to an image between the data set and the input it feeds:
 * on-the-fly augmentation of training examples and per-channel normalisation.
 *
 * An example's values are its pixels (0..255, [C, H, W]), augmented when it is a training
 * example, times the input's scale (`from images / 255`), then normalised per channel:
 * (v - mean[c]) / std[c]. Augmentation works in pixel units, so the zeros of padding are black
 * pixels, as in torchvision where RandomCrop comes before ToTensor and Normalize.
 *
 * Augmentation is random, and must be the same on resume and on any thread count: each
 * example's draw comes from a generator seeded by (run seed, epoch, index of the example in the
 * training set) alone — a counter-based scheme — never from a stream that advances with the
 * batches. A resumed run, which starts in the middle of an epoch, draws exactly what the
 * interrupted one would have, and nothing needs to be saved.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

/* ---- options ---- */

/* A whole-string finite number. */
static int parse_number(const char *s, size_t len, double *out) {
  char buf[64], *end;
  if (!len || len >= sizeof buf)
    return -1;
  memcpy(buf, s, len);
  buf[len] = 0;
  errno = 0;
  *out = strtod(buf, &end);
  return *end || errno || !isfinite(*out) || buf[0] == ' ' ? -1 : 0;
}

/* Shortest text that reads back to the same double. */
static void put_number(char *buf, size_t len, double v) {
  snprintf(buf, len, "%.15g", v);
  if (strtod(buf, NULL) != v)
    snprintf(buf, len, "%.17g", v);
}

int rt_normalize_parse(const char *text, RtNormalize *out, char *err) {
  memset(out, 0, sizeof *out);
  if (!strcmp(text, "auto")) {
    out->mode = RT_NORMALIZE_AUTO;
    return 0;
  }
  out->mode = RT_NORMALIZE_GIVEN;
  const char *p = text;
  for (;;) {
    size_t len = strcspn(p, ";");
    const char *comma = memchr(p, ',', len);
    double mean, std;
    if (out->channels == RT_MAX_CHANNELS)
      return rt_errf(err, "--normalize: more than %d channels", RT_MAX_CHANNELS);
    if (!comma || parse_number(p, (size_t)(comma - p), &mean) ||
        parse_number(comma + 1, len - (size_t)(comma - p) - 1, &std))
      return rt_errf(err, "--normalize: expected 'auto' or MEAN,STD per channel separated by "
                     "';' (0.1307,0.3081 or '0.49,0.25;0.48,0.24;0.45,0.26'), got '%s'", text);
    if (!(std > 0))
      return rt_errf(err, "--normalize: channel %d: the standard deviation must be positive, "
                     "got '%.*s'", out->channels, (int)(len - (size_t)(comma - p) - 1),
                     comma + 1);
    out->mean[out->channels] = mean;
    out->std[out->channels] = std;
    out->channels++;
    if (!p[len])
      return 0;
    p += len + 1;
  }
}

void rt_normalize_format(const RtNormalize *n, char *buf, size_t len) {
  size_t at = 0;
  buf[0] = 0;
  if (n->mode == RT_NORMALIZE_AUTO) {
    snprintf(buf, len, "auto");
    return;
  }
  for (int c = 0; c < n->channels && at < len; c++) {
    char m[32], s[32];
    put_number(m, sizeof m, n->mean[c]);
    put_number(s, sizeof s, n->std[c]);
    at += (size_t)snprintf(buf + at, len - at, "%s%s,%s", c ? ";" : "", m, s);
  }
}

int rt_augment_parse(const char *text, RtAugment *out, char *err) {
  static const char *const names[] = {"flip", "crop", "rotate", "translate", "contrast"};
  memset(out, 0, sizeof *out);
  int given[5] = {0};
  const char *p = text;
  for (;;) {
    size_t len = strcspn(p, ",");
    const char *eq = memchr(p, '=', len);
    size_t klen = eq ? (size_t)(eq - p) : len;
    int k = 0;
    while (k < 5 && !(strlen(names[k]) == klen && !strncmp(p, names[k], klen)))
      k++;
    if (k == 5)
      return rt_errf(err, "--augment: unknown augmentation '%.*s' (expected flip, crop=P, "
                     "rotate=DEGREES, translate=PIXELS or contrast=C, separated by commas)",
                     (int)len, p);
    if (given[k]++)
      return rt_errf(err, "--augment: '%s' is given twice", names[k]);
    double v = 0;
    if (k == 0 && eq)
      return rt_errf(err, "--augment: 'flip' takes no value (a horizontal flip half of the "
                     "time)");
    if (k > 0 && (!eq || parse_number(eq + 1, len - klen - 1, &v)))
      return rt_errf(err, "--augment: '%s' needs a number: %s", names[k],
                     k == 1 ? "crop=P, the zero padding in pixels (crop=4)"
                     : k == 2 ? "rotate=DEGREES, the largest angle (rotate=10)"
                     : k == 3 ? "translate=PIXELS, the largest shift (translate=2)"
                              : "contrast=C, the factor's range 1 +- C (contrast=0.2)");
    switch (k) {
    case 0: out->flip = 1; break;
    case 1:
      if (v != floor(v) || v < 1 || v > 4096)
        return rt_errf(err, "--augment: crop=P takes a whole number of pixels from 1 to 4096, "
                       "got '%.*s'", (int)(len - klen - 1), eq + 1);
      out->crop = (int)v;
      break;
    case 2:
      if (!(v > 0 && v <= 180))
        return rt_errf(err, "--augment: rotate=DEGREES takes an angle above 0 and at most 180, "
                       "got '%.*s'", (int)(len - klen - 1), eq + 1);
      out->rotate = v;
      break;
    case 3:
      if (!(v > 0 && v <= 4096))
        return rt_errf(err, "--augment: translate=PIXELS takes a shift above 0 and at most "
                       "4096, got '%.*s'", (int)(len - klen - 1), eq + 1);
      out->translate = v;
      break;
    case 4:
      if (!(v > 0 && v <= 100))
        return rt_errf(err, "--augment: contrast=C takes a number above 0 and at most 100, "
                       "got '%.*s'", (int)(len - klen - 1), eq + 1);
      out->contrast = v;
      break;
    }
    out->on = 1;
    if (!p[len])
      return 0;
    p += len + 1;
  }
}

void rt_augment_format(const RtAugment *a, char *buf, size_t len) {
  char v[32];
  size_t at = 0;
  buf[0] = 0;
#define ADD(...) (at += at < len ? (size_t)snprintf(buf + at, len - at, __VA_ARGS__) : 0)
  if (a->flip)
    ADD("%sflip", at ? "," : "");
  if (a->crop)
    ADD("%scrop=%d", at ? "," : "", a->crop);
  if (a->rotate > 0)
    put_number(v, sizeof v, a->rotate), ADD("%srotate=%s", at ? "," : "", v);
  if (a->translate > 0)
    put_number(v, sizeof v, a->translate), ADD("%stranslate=%s", at ? "," : "", v);
  if (a->contrast > 0)
    put_number(v, sizeof v, a->contrast), ADD("%scontrast=%s", at ? "," : "", v);
#undef ADD
}

/* ---- draws ---- */

/* splitmix64's finaliser: every input bit reaches every output bit. */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* A uniform number in [-r, r]. */
static double centred_uniform(RtRng *g, double r) { return (2 * rt_rng_uniform(g) - 1) * r; }

void rt_augment_draw(const RtAugment *a, uint64_t seed, int epoch, int64_t example,
                     RtAugDraw *d) {
  uint64_t key = rt_hash_name(seed, "kiln.augment");
  uint64_t base = mix64(mix64(key ^ (uint64_t)epoch * 0x9e3779b97f4a7c15ULL) + (uint64_t)example);
  /* One generator per kind of augmentation: what one kind draws does not depend on which
   * others are on. */
  RtRng g[5];
  for (int k = 0; k < 5; k++)
    rt_rng_seed(&g[k], base + (uint64_t)k);
  memset(d, 0, sizeof *d);
  d->contrast = 1;
  if (a->flip)
    d->flip = (int)(rt_rng_next(&g[0]) >> 63);
  if (a->crop) {
    uint64_t span = 2 * (uint64_t)a->crop + 1;
    d->dy = (int)((int64_t)rt_rng_below(&g[1], span) - a->crop);
    d->dx = (int)((int64_t)rt_rng_below(&g[1], span) - a->crop);
  }
  if (a->rotate > 0)
    d->angle = centred_uniform(&g[2], a->rotate);
  if (a->translate > 0) {
    d->tx = centred_uniform(&g[3], a->translate);
    d->ty = centred_uniform(&g[3], a->translate);
  }
  if (a->contrast > 0) {
    double lo = 1 - a->contrast > 0 ? 1 - a->contrast : 0, hi = 1 + a->contrast;
    d->contrast = lo + (hi - lo) * rt_rng_uniform(&g[4]);
  }
}

/* ---- applying a draw ---- */

/* out[c][y][x] = in[c][y + dy][x + dx], zero outside. */
static void shift(const double *in, double *out, int C, int64_t H, int64_t W, int64_t dy,
                  int64_t dx) {
  for (int c = 0; c < C; c++)
    for (int64_t y = 0; y < H; y++)
      for (int64_t x = 0; x < W; x++) {
        int64_t sy = y + dy, sx = x + dx;
        out[(c * H + y) * W + x] =
            sy >= 0 && sy < H && sx >= 0 && sx < W ? in[(c * H + sy) * W + sx] : 0;
      }
}

/* The rotation by angle degrees (counterclockwise as displayed, about the image's centre) and
 * the shift (tx right, ty down) as one inverse map, sampled bilinearly with zeros outside. */
static void warp(const double *in, double *out, int C, int64_t H, int64_t W, double angle,
                 double tx, double ty) {
  double t = angle * (3.14159265358979323846 / 180), cs = cos(t), sn = sin(t);
  double cx = (double)(W - 1) / 2, cy = (double)(H - 1) / 2;
  for (int64_t y = 0; y < H; y++)
    for (int64_t x = 0; x < W; x++) {
      double ox = (double)x - cx - tx, oy = (double)y - cy - ty;
      double xs = cx + cs * ox - sn * oy, ys = cy + sn * ox + cs * oy;
      double fx0 = floor(xs), fy0 = floor(ys);
      double fx = xs - fx0, fy = ys - fy0;
      /* Far outside: all zero (and no conversion of a huge double to an integer). */
      if (!(fx0 > -2 && fx0 < (double)W && fy0 > -2 && fy0 < (double)H)) {
        for (int c = 0; c < C; c++)
          out[(c * H + y) * W + x] = 0;
        continue;
      }
      int64_t x0 = (int64_t)fx0, y0 = (int64_t)fy0;
      for (int c = 0; c < C; c++) {
        const double *plane = in + c * H * W;
        double v[2][2];
        for (int i = 0; i < 2; i++)
          for (int j = 0; j < 2; j++) {
            int64_t sy = y0 + i, sx = x0 + j;
            v[i][j] = sy >= 0 && sy < H && sx >= 0 && sx < W ? plane[sy * W + sx] : 0;
          }
        out[(c * H + y) * W + x] = (1 - fy) * ((1 - fx) * v[0][0] + fx * v[0][1]) +
                                   fy * ((1 - fx) * v[1][0] + fx * v[1][1]);
      }
    }
}

void rt_augment_apply(const RtAugDraw *d, double *v, int C, int64_t H, int64_t W,
                      double *scratch) {
  int64_t n = (int64_t)C * H * W;
  if (d->dy || d->dx) {
    shift(v, scratch, C, H, W, d->dy, d->dx);
    memcpy(v, scratch, (size_t)n * sizeof *v);
  }
  if (d->flip)
    for (int64_t row = 0; row < (int64_t)C * H; row++)
      for (int64_t x = 0; x < W / 2; x++) {
        double t = v[row * W + x];
        v[row * W + x] = v[row * W + W - 1 - x];
        v[row * W + W - 1 - x] = t;
      }
  if (d->angle != 0 || d->tx != 0 || d->ty != 0) {
    warp(v, scratch, C, H, W, d->angle, d->tx, d->ty);
    memcpy(v, scratch, (size_t)n * sizeof *v);
  }
  if (d->contrast != 1) {
    /* torchvision's adjust_contrast: blend with the mean of the grey image (ITU-R 601-2 luma for
     * three channels), clamped to the pixel range. */
    int64_t plane = H * W;
    double mean = 0;
    if (C == 3)
      for (int64_t k = 0; k < plane; k++)
        mean += 0.299 * v[k] + 0.587 * v[plane + k] + 0.114 * v[2 * plane + k];
    else
      for (int64_t k = 0; k < n; k++)
        mean += v[k];
    mean /= (double)(C == 3 ? plane : n);
    for (int64_t k = 0; k < n; k++) {
      double b = d->contrast * v[k] + (1 - d->contrast) * mean;
      v[k] = b < 0 ? 0 : b > 255 ? 255 : b;
    }
  }
}

/* ---- an example as the input takes it ---- */

void rt_image_geometry(const RtIdx *images, int64_t chw[3]) {
  chw[0] = chw[1] = 1;
  chw[2] = images->item;
  if (images->rank == 4)
    memcpy(chw, images->dims + 1, 3 * sizeof *chw);
  else if (images->rank == 3)
    chw[1] = images->dims[1], chw[2] = images->dims[2];
}

void rt_example_values(const uint8_t *px, const int64_t chw[3], const RtAugDraw *d, double scale,
                       const double *mean, const double *std, double *out, double *scratch) {
  int64_t plane = chw[1] * chw[2], n = chw[0] * plane;
  for (int64_t k = 0; k < n; k++)
    out[k] = px[k];
  if (d)
    rt_augment_apply(d, out, (int)chw[0], chw[1], chw[2], scratch);
  for (int64_t k = 0; k < n; k++)
    out[k] *= scale;
  if (mean)
    for (int64_t c = 0; c < chw[0]; c++)
      for (int64_t k = c * plane; k < (c + 1) * plane; k++)
        out[k] = (out[k] - mean[c]) / std[c];
}

int rt_channel_stats(const RtIdx *images, const int64_t *idx, int64_t n, double *mean,
                     double *std) {
  int64_t chw[3];
  rt_image_geometry(images, chw);
  int64_t plane = chw[1] * chw[2];
  for (int64_t c = 0; c < chw[0]; c++) {
    /* Integer sums: exact, whatever the order of the examples. */
    uint64_t sum = 0, sumsq = 0;
    for (int64_t i = 0; i < n; i++) {
      const uint8_t *p = images->data + (idx ? idx[i] : i) * images->item + c * plane;
      for (int64_t k = 0; k < plane; k++) {
        sum += p[k];
        sumsq += (uint64_t)p[k] * p[k];
      }
    }
    double count = (double)n * (double)plane;
    if (count <= 0)
      return -1;
    double m = (double)sum / count, var = (double)sumsq / count - m * m;
    mean[c] = m;
    std[c] = var > 0 ? sqrt(var) : 0;
  }
  return 0;
}
