/*
 * rt_images.c — image folders: PGM and PPM images listed in a labels.csv, as a data set beside
 * the IDX files of rt_idx.c.
 *
 * A folder data set is DIR/train/ and DIR/test/, each holding labels.csv ("file,label" lines,
 * file names relative to that directory) and the images it lists. Images are Netpbm files of
 * 8-bit samples: PGM (P5 binary, P2 ASCII; one channel) or PPM (P6, P3; three channels), stored
 * channel-first, [C, H, W], as an input [B, C, H, W] takes them. A maxval below 255 is rescaled
 * to 0..255 (rounded), so `from images / 255` means the same for every file.
 *
 * Everything read here comes from files a user did not necessarily write: every header field,
 * sample and CSV line is checked, and an error names the file and the byte or line. Sizes are
 * compared with the file's length before anything is allocated from them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"

/* Files larger than this are refused before they are read: no 8-bit image of a sensible size,
 * and no label list, comes near it. */
#define MAX_FILE_BYTES ((int64_t)1 << 30)
/* A side longer than this is refused as a corrupt header. */
#define MAX_SIDE 65536

/* ---- whole files ---- */

/* The contents of a regular file, NUL-terminated (malloc'd), its length in *len. */
static unsigned char *read_whole(const char *path, size_t *len, char *err) {
  struct stat st;
  FILE *f = rt_open_regular(path, &st, err);
  if (!f)
    return NULL;
  if (st.st_size > MAX_FILE_BYTES) {
    fclose(f);
    rt_errf(err, "%s: %lld bytes, more than the %lld a data file may have", path,
            (long long)st.st_size, (long long)MAX_FILE_BYTES);
    return NULL;
  }
  size_t n = (size_t)st.st_size;
  unsigned char *buf = malloc(n + 1);
  if (!buf) {
    fclose(f);
    rt_errf(err, "%s: out of memory reading %zu bytes", path, n);
    return NULL;
  }
  size_t got = fread(buf, 1, n, f);
  int failed = ferror(f);
  fclose(f);
  if (failed || got != n) {
    free(buf);
    rt_errf(err, "%s: read error: %s", path, failed ? strerror(errno) : "the file shrank");
    return NULL;
  }
  buf[n] = 0;
  *len = n;
  return buf;
}

/* A byte as a message shows it: 'x' when printable, else its hex value. */
static const char *show_byte(unsigned char c, char *buf, size_t len) {
  if (c >= 0x20 && c < 0x7f)
    snprintf(buf, len, "'%c'", c);
  else
    snprintf(buf, len, "byte 0x%02x", c);
  return buf;
}

/* ---- PGM and PPM ---- */

typedef struct Pnm {
  const unsigned char *p;
  size_t n, at;
  const char *path;
  char *err;
} Pnm;

static int pnm_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Whitespace and comments ('#' to the end of the line) between header fields. */
static void pnm_skip(Pnm *c) {
  for (;;) {
    while (c->at < c->n && pnm_space(c->p[c->at]))
      c->at++;
    if (c->at < c->n && c->p[c->at] == '#') {
      while (c->at < c->n && c->p[c->at] != '\n' && c->p[c->at] != '\r')
        c->at++;
      continue;
    }
    return;
  }
}

/* A header field: a whole number in [1, max], followed by whitespace or a comment. */
static int pnm_field(Pnm *c, const char *what, int64_t max, int64_t *out) {
  char b[16];
  pnm_skip(c);
  if (c->at >= c->n)
    return rt_errf(c->err, "%s: truncated: the file ends before the %s (byte %zu)", c->path,
                   what, c->at);
  size_t start = c->at;
  if (c->p[c->at] < '0' || c->p[c->at] > '9')
    return rt_errf(c->err, "%s: byte %zu: expected the %s, a whole number, found %s", c->path,
                   start, what, show_byte(c->p[c->at], b, sizeof b));
  int64_t v = 0;
  while (c->at < c->n && c->p[c->at] >= '0' && c->p[c->at] <= '9') {
    if (v <= max)
      v = v * 10 + (c->p[c->at] - '0');
    c->at++;
  }
  if (v < 1 || v > max)
    return rt_errf(c->err, "%s: byte %zu: the %s is %s%lld, outside 1 to %lld", c->path, start,
                   what, v > max ? "more than " : "", (long long)(v > max ? max : v),
                   (long long)max);
  if (c->at < c->n && !pnm_space(c->p[c->at]) && c->p[c->at] != '#')
    return rt_errf(c->err, "%s: byte %zu: expected whitespace after the %s, found %s", c->path,
                   c->at, what, show_byte(c->p[c->at], b, sizeof b));
  *out = v;
  return 0;
}

int rt_image_parse(const unsigned char *bytes, size_t n, const char *path, RtImage *out,
                   char *err) {
  memset(out, 0, sizeof *out);
  Pnm c = {bytes, n, 0, path, err};
  char b[16];
  if (n < 2 || bytes[0] != 'P' || !strchr("2356", bytes[1]) || !bytes[1]) {
    if (n >= 2 && bytes[0] == 'P' && strchr("147", bytes[1]) && bytes[1])
      return rt_errf(err, "%s: a %s image (P%c): only PGM (P5, P2) and PPM (P6, P3) are read",
                     path, bytes[1] == '7' ? "PAM" : "PBM", bytes[1]);
    return rt_errf(err, "%s: not a PGM or PPM image (it should start with P5, P2, P6 or P3%s)",
                   path, n < 2 ? "; the file is shorter than that" : "");
  }
  int binary = bytes[1] == '5' || bytes[1] == '6';
  int channels = bytes[1] == '3' || bytes[1] == '6' ? 3 : 1;
  c.at = 2;
  if (c.at < n && !pnm_space(bytes[c.at]) && bytes[c.at] != '#')
    return rt_errf(err, "%s: byte 2: expected whitespace after the magic P%c, found %s", path,
                   bytes[1], show_byte(bytes[c.at], b, sizeof b));
  int64_t width, height, maxval;
  if (pnm_field(&c, "width", MAX_SIDE, &width) || pnm_field(&c, "height", MAX_SIDE, &height) ||
      pnm_field(&c, "maxval", 65535, &maxval))
    return -1;
  if (maxval > 255)
    return rt_errf(err, "%s: maxval %lld: 16-bit samples are not supported (8-bit only, maxval "
                   "at most 255)", path, (long long)maxval);
  int64_t count = (int64_t)channels * width * height;
  /* The samples follow one whitespace byte after the maxval (a binary raster may start with any
   * byte, so no more is skipped). */
  if (c.at >= n)
    return rt_errf(err, "%s: truncated: the file ends after the header (byte %zu), before the "
                   "%lld samples", path, c.at, (long long)count);
  if (!pnm_space(bytes[c.at]))
    return rt_errf(err, "%s: byte %zu: expected whitespace after the maxval, found %s", path,
                   c.at, show_byte(bytes[c.at], b, sizeof b));
  c.at++;
  size_t start = c.at;
  int64_t rest = (int64_t)(n - start);
  /* An ASCII sample takes at least one digit and one separator (the last one none). */
  if (binary ? rest < count : rest + 1 < 2 * count)
    return rt_errf(err, "%s: truncated: the header promises %lld x %lld %s (%lld samples) from "
                   "byte %zu, and %s", path, (long long)width, (long long)height,
                   channels == 3 ? "RGB pixels" : "pixels", (long long)count, start,
                   binary ? "the file has fewer bytes than that" : "the file is too short to hold them");
  if (binary && rest > count)
    return rt_errf(err, "%s: %lld bytes after the %lld samples (from byte %lld): one image per "
                   "file", path, (long long)(rest - count), (long long)count,
                   (long long)(start + (size_t)count));
  uint8_t *px = malloc((size_t)(count ? count : 1));
  if (!px)
    return rt_errf(err, "%s: out of memory for %lld samples", path, (long long)count);
  int64_t plane = width * height;
  for (int64_t k = 0; k < count; k++) {
    int64_t v;
    size_t at;
    if (binary) {
      at = start + (size_t)k;
      v = bytes[at];
    } else {
      while (c.at < n && pnm_space(bytes[c.at]))
        c.at++;
      at = c.at;
      if (at >= n) {
        free(px);
        return rt_errf(err, "%s: truncated: the file ends after %lld of the %lld samples", path,
                       (long long)k, (long long)count);
      }
      if (bytes[at] < '0' || bytes[at] > '9') {
        free(px);
        return rt_errf(err, "%s: byte %zu: expected sample %lld, a whole number, found %s", path,
                       at, (long long)k, show_byte(bytes[at], b, sizeof b));
      }
      v = 0;
      while (c.at < n && bytes[c.at] >= '0' && bytes[c.at] <= '9') {
        if (v <= maxval)
          v = v * 10 + (bytes[c.at] - '0');
        c.at++;
      }
      if (c.at < n && !pnm_space(bytes[c.at])) {
        free(px);
        return rt_errf(err, "%s: byte %zu: expected whitespace after sample %lld, found %s",
                       path, c.at, (long long)k, show_byte(bytes[c.at], b, sizeof b));
      }
    }
    if (v > maxval) {
      free(px);
      if (binary)
        return rt_errf(err, "%s: byte %zu: sample %lld is %lld, above the maxval %lld", path, at,
                       (long long)k, (long long)v, (long long)maxval);
      size_t digits = c.at - at;
      return rt_errf(err, "%s: byte %zu: sample %lld is %.*s%s, above the maxval %lld", path, at,
                     (long long)k, digits > 20 ? 20 : (int)digits, (const char *)bytes + at,
                     digits > 20 ? "..." : "", (long long)maxval);
    }
    /* Interleaved in the file (RGB RGB ...), channel-first in memory. */
    int64_t pixel = k / channels, ch = k % channels;
    px[ch * plane + pixel] = (uint8_t)(maxval == 255 ? v : (v * 255 + maxval / 2) / maxval);
  }
  if (!binary) {
    while (c.at < n && pnm_space(bytes[c.at]))
      c.at++;
    if (c.at < n) {
      free(px);
      return rt_errf(err, "%s: byte %zu: %s after the last of the %lld samples: one image per "
                     "file", path, c.at, show_byte(bytes[c.at], b, sizeof b), (long long)count);
    }
  }
  out->channels = channels;
  out->height = height;
  out->width = width;
  out->pixels = px;
  return 0;
}

int rt_image_load(const char *path, RtImage *out, char *err) {
  size_t n;
  memset(out, 0, sizeof *out);
  unsigned char *bytes = read_whole(path, &n, err);
  if (!bytes)
    return -1;
  int rc = rt_image_parse(bytes, n, path, out, err);
  free(bytes);
  return rc;
}

void rt_image_free(RtImage *im) {
  free(im->pixels);
  memset(im, 0, sizeof *im);
}

/* ---- labels.csv ---- */

/* Up to 60 characters of s (len bytes) for a message, other bytes than printable ASCII as \xNN. */
static const char *quote(const char *s, size_t len, char *buf, size_t size) {
  size_t at = 0;
  for (size_t i = 0; i < len && at + 8 < size; i++) {
    unsigned char c = (unsigned char)s[i];
    if (i == 60) {
      at += (size_t)snprintf(buf + at, size - at, "...");
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '\\')
      buf[at++] = (char)c;
    else
      at += (size_t)snprintf(buf + at, size - at, "\\x%02x", c);
  }
  buf[at] = 0;
  return buf;
}

static void trim(char **s, size_t *len) {
  while (*len && (**s == ' ' || **s == '\t'))
    (*s)++, (*len)--;
  while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
    (*len)--;
}

/* Whether name (len bytes), relative to the list's directory, leaves it through a "..". */
static int leaves_directory(const char *name, size_t len) {
  size_t seg = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i == len || name[i] == '/') {
      if (seg == 2 && name[i - 1] == '.' && name[i - 2] == '.')
        return 1;
      seg = 0;
    } else {
      seg++;
    }
  }
  return 0;
}

int rt_labels_parse(const char *text, size_t n, const char *path, RtLabels *out, char *err) {
  memset(out, 0, sizeof *out);
  char q[512];
  /* Every row holds at least two bytes and a line break, except perhaps the last. */
  size_t cap = n / 3 + 1;
  out->text = malloc(n + 1);
  out->files = malloc(cap * sizeof *out->files);
  out->labels = malloc(cap);
  out->lines = malloc(cap * sizeof *out->lines);
  if (!out->text || !out->files || !out->labels || !out->lines) {
    rt_labels_free(out);
    return rt_errf(err, "%s: out of memory", path);
  }
  memcpy(out->text, text, n);
  out->text[n] = 0;
  char *p = out->text, *end = out->text + n;
  for (int64_t line = 1; p < end; line++) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    char *stop = nl ? nl : end;
    size_t len = (size_t)(stop - p);
    char *row = p;
    p = nl ? nl + 1 : end;
    char *nul = memchr(row, 0, len);
    if (nul) {
      rt_labels_free(out);
      return rt_errf(err, "%s:%lld: a NUL byte at byte %lld of the line: not a text file", path,
                     (long long)line, (long long)(nul - row) + 1);
    }
    if (len && row[len - 1] == '\r')
      len--;
    trim(&row, &len);
    if (!len)
      continue;
    if (line == 1 && len == 10 && !memcmp(row, "file,label", 10))
      continue; /* the header row */
    char *comma = NULL;
    for (size_t i = len; i-- > 0;)
      if (row[i] == ',') {
        comma = row + i;
        break;
      }
    if (!comma) {
      rt_errf(err, "%s:%lld: expected 'file,label', found '%s'", path, (long long)line,
              quote(row, len, q, sizeof q));
      rt_labels_free(out);
      return -1;
    }
    char *file = row, *label = comma + 1;
    size_t flen = (size_t)(comma - row), llen = len - flen - 1;
    trim(&file, &flen);
    trim(&label, &llen);
    int value = 0, digits = llen > 0 && llen <= 3;
    for (size_t i = 0; digits && i < llen; i++) {
      digits = label[i] >= '0' && label[i] <= '9';
      value = value * 10 + (label[i] - '0');
    }
    const char *why = NULL;
    if (!flen)
      why = "no file name before the comma";
    else if (!digits || value > 255)
      why = "the label is not a whole number from 0 to 255";
    else if (file[0] == '/')
      why = "an absolute path: files are named relative to the directory of labels.csv";
    else
      for (size_t i = 0; i < flen && !why; i++)
        if ((unsigned char)file[i] < 0x20 || file[i] == 0x7f)
          why = "a control byte in the file name";
    if (!why && leaves_directory(file, flen))
      why = "a '..' in the file name leaves the directory of labels.csv";
    if (why) {
      rt_errf(err, "%s:%lld: %s ('%s')", path, (long long)line, why,
              quote(row, len, q, sizeof q));
      rt_labels_free(out);
      return -1;
    }
    file[flen] = 0;
    out->files[out->n] = file;
    out->labels[out->n] = (uint8_t)value;
    out->lines[out->n] = line;
    out->n++;
  }
  return 0;
}

void rt_labels_free(RtLabels *l) {
  free(l->text);
  free(l->files);
  free(l->labels);
  free(l->lines);
  memset(l, 0, sizeof *l);
}

/* ---- the folder as a data set ---- */

/* Whether an image of [C, H, W] fits the input `want` describes: its shape without the batch
 * axis is [C, H, W], or [H, W] for one channel; any other shape takes the same number of values
 * (a flattened input). */
static int fits(const RtDataWant *want, const int64_t chw[3]) {
  if (want->rank == 3)
    return !memcmp(want->dims, chw, 3 * sizeof *chw);
  if (want->rank == 2)
    return chw[0] == 1 && want->dims[0] == chw[1] && want->dims[1] == chw[2];
  int64_t n = 1;
  for (int i = 0; i < want->rank; i++)
    n *= want->dims[i];
  return n == chw[0] * chw[1] * chw[2];
}

/* Loads one listed image and checks its shape against the model's input (want) or else the
 * first image's (first_chw, first); the image's pixels go to px when it is not NULL. */
static int load_listed(const char *dir, const RtLabels *list, int64_t i, const RtDataWant *want,
                       int64_t chw[3], const char *first, uint8_t *px, char *err) {
  char path[4096], listed[RT_ERR_LEN], shape[96], other[96];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, list->files[i]) >= sizeof path)
    return rt_errf(err, "%s/labels.csv:%lld: the path of '%s' is too long", dir,
                   (long long)list->lines[i], list->files[i]);
  RtImage im;
  if (rt_image_load(path, &im, listed)) {
    /* Which line listed it, for a file that is missing or damaged. */
    return rt_errf(err, "%s (listed on line %lld of %s/labels.csv)", listed,
                   (long long)list->lines[i], dir);
  }
  int64_t got[3] = {im.channels, im.height, im.width};
  rt_format_dims(shape, sizeof shape, 3, got);
  int rc = 0;
  if (want && want->rank > 0 && !fits(want, got)) {
    rt_format_dims(other, sizeof other, want->rank, want->dims);
    rc = rt_errf(err, "%s: the image is %s ([channels, height, width]), but input '%s' takes %s "
                 "per example", path, shape, want->input ? want->input : "?", other);
  } else if (first && memcmp(got, chw, sizeof got)) {
    rt_format_dims(other, sizeof other, 3, chw);
    rc = rt_errf(err, "%s: the image is %s ([channels, height, width]), but %s/%s is %s: every "
                 "image of a data set has one shape", path, shape, dir, first, other);
  }
  if (!rc) {
    memcpy(chw, got, sizeof got);
    if (px)
      memcpy(px, im.pixels, (size_t)(got[0] * got[1] * got[2]));
  }
  rt_image_free(&im);
  return rc;
}

int rt_image_folder_load(const char *dir, int64_t max_items, const RtDataWant *want,
                         RtDataset *out, char *err) {
  memset(out, 0, sizeof *out);
  char csv[4096];
  if ((size_t)snprintf(csv, sizeof csv, "%s/labels.csv", dir) >= sizeof csv)
    return rt_errf(err, "%s: path too long", dir);
  size_t n;
  unsigned char *text = read_whole(csv, &n, err);
  if (!text)
    return -1;
  RtLabels list;
  int rc = rt_labels_parse((const char *)text, n, csv, &list, err);
  free(text);
  if (rc)
    return -1;
  int64_t use = max_items >= 0 && max_items < list.n ? max_items : list.n;
  int64_t classes = want ? want->classes : 0;
  for (int64_t i = 0; i < use && classes > 0; i++)
    if (list.labels[i] >= classes) {
      rt_errf(err, "%s:%lld: the label of '%s' is %d, outside the model's %lld classes (0 to "
              "%lld)", csv, (long long)list.lines[i], list.files[i], list.labels[i],
              (long long)classes, (long long)classes - 1);
      goto fail;
    }
  /* The first image gives the shape, also when no example is used (a run's first look at the
   * data, for its memory estimate). */
  int64_t chw[3] = {1, 1, 1};
  if (list.n > 0 && load_listed(dir, &list, 0, want, chw, NULL, NULL, err))
    goto fail;
  int64_t item = list.n > 0 ? chw[0] * chw[1] * chw[2] : 0;
  out->images = (RtIdx){.rank = 4, .dims = {list.n, chw[0], chw[1], chw[2]}, .count = use,
                        .item = item};
  out->labels = (RtIdx){.rank = 1, .dims = {list.n}, .count = use, .item = 1};
  out->images.data = malloc((size_t)(use * item > 0 ? use * item : 1));
  out->labels.data = malloc((size_t)(use > 0 ? use : 1));
  if (!out->images.data || !out->labels.data) {
    rt_errf(err, "%s: out of memory for %lld images of %lld bytes", dir, (long long)use,
            (long long)item);
    goto fail;
  }
  for (int64_t i = 0; i < use; i++)
    if (load_listed(dir, &list, i, want, chw, list.files[0], out->images.data + i * item, err))
      goto fail;
  memcpy(out->labels.data, list.labels, (size_t)use);
  snprintf(out->labels_path, sizeof out->labels_path, "%s", csv);
  rt_labels_free(&list);
  return 0;
fail:
  rt_labels_free(&list);
  rt_dataset_free(out);
  return -1;
}

/* ---- either kind of data set ---- */

int rt_data_load(const char *dir, const char *split, int64_t max_items, const RtDataWant *want,
                 RtDataset *out, char *err) {
  memset(out, 0, sizeof *out);
  struct stat st;
  char path[4096];
  if (stat(dir, &st))
    return rt_errf(err, "%s: %s", dir, strerror(errno));
  if (!S_ISDIR(st.st_mode))
    return rt_errf(err, "%s: not a directory (--data names the directory of a data set)", dir);
  int test = !strcmp(split, "test");
  snprintf(path, sizeof path, "%s/train", dir);
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, test ? "test" : "train") >= sizeof path)
      return rt_errf(err, "%s: path too long", dir);
    return rt_image_folder_load(path, max_items, want, out, err);
  }
  snprintf(path, sizeof path, "%s/train-images-idx3-ubyte", dir);
  char gz[4200];
  snprintf(gz, sizeof gz, "%s.gz", path);
  if (access(path, F_OK) && access(gz, F_OK))
    return rt_errf(err, "%s: no data set: neither IDX files (train-images-idx3-ubyte[.gz] and "
                   "the rest) nor an image folder (train/labels.csv and test/labels.csv)", dir);
  return rt_dataset_load(dir, test ? "t10k" : "train", max_items, out, err);
}
