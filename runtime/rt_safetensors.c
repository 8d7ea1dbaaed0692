/*
 * rt_safetensors.c — checkpoints in the safetensors format, so that kiln and PyTorch can read
 * each other's parameters.
 *
 * Layout: an 8-byte little-endian header length N; N bytes of JSON mapping each tensor name to
 * {"dtype":"F32","shape":[...],"data_offsets":[begin,end]} (plus an optional "__metadata__"
 * object), padded with spaces to a multiple of 8 so the data starts aligned; then the data, every
 * element little-endian, offsets relative to the start of the data.
 *
 * The reader trusts nothing: a checkpoint is user input. Its JSON parser is a small strict one
 * written for this header alone, and every offset and size is checked before it is used, with
 * 64-bit arithmetic that cannot overflow. As the format's specification requires, the tensors'
 * byte ranges must tile the data exactly: no overlaps, no holes, nothing after the last one.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"

/* ---- element types ---- */

static const struct { const char *name; int size; } dtypes[] = {
    [KILN_F32] = {"F32", 4}, [KILN_F64] = {"F64", 8}, [KILN_I32] = {"I32", 4},
    [RT_I64] = {"I64", 8},   [RT_F16] = {"F16", 2},   [RT_BF16] = {"BF16", 2},
};
enum { NDTYPES = sizeof dtypes / sizeof dtypes[0] };

static int dtype_valid(int d) { return d >= 0 && d < NDTYPES; }

static uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, m = x & 0x7fffff;
  int e = (int)((x >> 23) & 0xff);
  if (e == 0xff) /* inf stays inf; NaN stays a (quiet) NaN */
    return (uint16_t)(sign | 0x7c00 | (m ? 0x200 : 0));
  int he = e - 127 + 15;
  if (he >= 31)
    return (uint16_t)(sign | 0x7c00);
  uint32_t h, rem, mid;
  if (he <= 0) { /* half subnormal: shift the full significand, round to nearest even */
    if (he < -10)
      return (uint16_t)sign;
    uint32_t full = m | 0x800000;
    int shift = 14 - he;
    h = full >> shift;
    rem = full & ((1u << shift) - 1);
    mid = 1u << (shift - 1);
  } else {
    h = (uint32_t)he << 10 | m >> 13;
    rem = m & 0x1fff;
    mid = 0x1000;
  }
  if (rem > mid || (rem == mid && (h & 1)))
    h++; /* a carry into the exponent is the correct rounding, up to infinity */
  return (uint16_t)(sign | h);
}

static double f16_to_double(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m | 0x400, e - 25);
  return h & 0x8000 ? -v : v;
}

static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000)
    return (uint16_t)(x >> 16 | 0x40);
  return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

static double bf16_to_double(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}

/* Integers saturate rather than wrap, and NaN becomes 0: a checkpoint should never hold a value
 * that happens to depend on undefined behaviour. */
static int64_t to_int(double v, double lo, double hi) {
  if (isnan(v))
    return 0;
  v = nearbyint(v);
  return (int64_t)(v < lo ? lo : v > hi ? hi : v);
}

static void put_le(unsigned char *p, uint64_t x, int n) {
  for (int i = 0; i < n; i++)
    p[i] = (unsigned char)(x >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n) {
  uint64_t x = 0;
  for (int i = 0; i < n; i++)
    x |= (uint64_t)p[i] << (8 * i);
  return x;
}

static void encode(int dtype, double v, unsigned char *p) {
  switch (dtype) {
  case KILN_F32: {
    float f = (float)v;
    uint32_t x;
    memcpy(&x, &f, 4);
    put_le(p, x, 4);
    return;
  }
  case KILN_F64: {
    uint64_t x;
    memcpy(&x, &v, 8);
    put_le(p, x, 8);
    return;
  }
  case KILN_I32: put_le(p, (uint32_t)(int32_t)to_int(v, INT32_MIN, INT32_MAX), 4); return;
  case RT_I64: put_le(p, (uint64_t)to_int(v, -0x1p63, 0x1p63 - 1024), 8); return;
  case RT_F16: put_le(p, f32_to_f16((float)v), 2); return;
  case RT_BF16: put_le(p, f32_to_bf16((float)v), 2); return;
  }
}

static double decode(int dtype, const unsigned char *p) {
  switch (dtype) {
  case KILN_F32: {
    uint32_t x = (uint32_t)get_le(p, 4);
    float f;
    memcpy(&f, &x, 4);
    return f;
  }
  case KILN_F64: {
    uint64_t x = get_le(p, 8);
    double d;
    memcpy(&d, &x, 8);
    return d;
  }
  case KILN_I32: return (int32_t)(uint32_t)get_le(p, 4);
  case RT_I64: return (double)(int64_t)get_le(p, 8);
  case RT_F16: return f16_to_double((uint16_t)get_le(p, 2));
  case RT_BF16: return bf16_to_double((uint16_t)get_le(p, 2));
  }
  return 0;
}

/* numel of a shape, or -1 if it does not fit in int64 (or a dim is negative). */
static int64_t shape_numel(const int64_t *dims, int rank) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) {
    if (dims[i] < 0 || (dims[i] && n > INT64_MAX / dims[i]))
      return -1;
    n *= dims[i];
  }
  return n;
}

/* ---- writer ---- */

typedef struct Buf { char *p; size_t len, cap; int oom; } Buf;

static void buf_add(Buf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

static void buf_str(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_int(Buf *b, int64_t v) {
  char t[32];
  snprintf(t, sizeof t, "%lld", (long long)v);
  buf_str(b, t);
}

/* A JSON string: quotes, backslashes and control characters escaped; other bytes (UTF-8) as is. */
static void buf_json_string(Buf *b, const char *s) {
  buf_add(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char t[8];
    if (*p == '"' || *p == '\\') {
      t[0] = '\\';
      t[1] = (char)*p;
      buf_add(b, t, 2);
    } else if (*p < 0x20) {
      snprintf(t, sizeof t, "\\u%04x", *p);
      buf_add(b, t, 6);
    } else {
      buf_add(b, (const char *)p, 1);
    }
  }
  buf_add(b, "\"", 1);
}

/* Builds the padded header; data offsets follow the order of ts. */
static int make_header(const RtNamedTensor *ts, int n, const RtMeta *meta, int nmeta, Buf *b,
                       const char *path, char *err) {
  int64_t off = 0;
  buf_add(b, "{", 1);
  if (nmeta > 0) {
    buf_str(b, "\"__metadata__\":{");
    for (int i = 0; i < nmeta; i++) {
      if (!meta[i].key || !meta[i].value) {
        rt_errf(err, "%s: metadata entry %d is incomplete", path, i);
        return -1;
      }
      if (i)
        buf_add(b, ",", 1);
      buf_json_string(b, meta[i].key);
      buf_add(b, ":", 1);
      buf_json_string(b, meta[i].value);
    }
    buf_str(b, n ? "}," : "}");
  }
  for (int i = 0; i < n; i++) {
    const RtNamedTensor *t = &ts[i];
    if (!t->name || !*t->name || !strcmp(t->name, "__metadata__")) {
      rt_errf(err, "%s: tensor %d has an invalid name", path, i);
      return -1;
    }
    for (int j = 0; j < i; j++)
      if (!strcmp(ts[j].name, t->name)) {
        rt_errf(err, "%s: tensor name '%s' appears twice", path, t->name);
        return -1;
      }
    if (!dtype_valid(t->dtype) || t->rank < 0 || t->rank > KILN_ABI_MAX_RANK) {
      rt_errf(err, "%s: tensor '%s' has an invalid dtype or rank", path, t->name);
      return -1;
    }
    int64_t numel = shape_numel(t->dims, t->rank);
    int size = dtypes[t->dtype].size;
    if (numel < 0 || numel > (INT64_MAX - off) / size) {
      rt_errf(err, "%s: tensor '%s' has an invalid shape", path, t->name);
      return -1;
    }
    if (i)
      buf_add(b, ",", 1);
    buf_json_string(b, t->name);
    buf_str(b, ":{\"dtype\":\"");
    buf_str(b, dtypes[t->dtype].name);
    buf_str(b, "\",\"shape\":[");
    for (int d = 0; d < t->rank; d++) {
      if (d)
        buf_add(b, ",", 1);
      buf_int(b, t->dims[d]);
    }
    buf_str(b, "],\"data_offsets\":[");
    buf_int(b, off);
    buf_add(b, ",", 1);
    off += numel * size;
    buf_int(b, off);
    buf_str(b, "]}");
  }
  buf_add(b, "}", 1);
  while (b->len % 8)
    buf_add(b, " ", 1);
  if (b->oom) {
    rt_errf(err, "%s: out of memory", path);
    return -1;
  }
  return 0;
}

static int write_all(FILE *f, const RtNamedTensor *ts, int n, const Buf *hdr) {
  unsigned char len[8], chunk[4096];
  put_le(len, hdr->len, 8);
  if (fwrite(len, 1, 8, f) != 8 || fwrite(hdr->p, 1, hdr->len, f) != hdr->len)
    return -1;
  for (int i = 0; i < n; i++) {
    int size = dtypes[ts[i].dtype].size;
    int64_t numel = shape_numel(ts[i].dims, ts[i].rank);
    size_t used = 0;
    for (int64_t j = 0; j < numel; j++) {
      if (used + (size_t)size > sizeof chunk) {
        if (fwrite(chunk, 1, used, f) != used)
          return -1;
        used = 0;
      }
      encode(ts[i].dtype, ts[i].values[j], chunk + used);
      used += (size_t)size;
    }
    if (used && fwrite(chunk, 1, used, f) != used)
      return -1;
  }
  return 0;
}

/* Makes the rename itself durable; best effort, as some file systems refuse to fsync a
 * directory and the data is already safe in the file. */
static void sync_dir(const char *path) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash)
    snprintf(dir, sizeof dir, ".");
  else if (slash == dir)
    dir[1] = 0;
  else
    *slash = 0;
  int fd = open(dir, O_RDONLY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

int rt_safetensors_save(const char *path, const RtNamedTensor *ts, int n, char *err) {
  return rt_safetensors_write(path, ts, n, NULL, 0, err);
}

int rt_safetensors_write(const char *path, const RtNamedTensor *ts, int n, const RtMeta *meta,
                         int nmeta, char *err) {
  Buf hdr = {0};
  if (make_header(ts, n, meta, nmeta, &hdr, path, err)) {
    free(hdr.p);
    return -1;
  }
  char tmp[4096], target[4096];
  int in_place = rt_write_target(path, target, sizeof target, err);
  if (in_place < 0) {
    free(hdr.p);
    return -1;
  }
  if (in_place) {
    /* A device or a pipe (/dev/null, /dev/stdout) is written as it is, never replaced. */
    FILE *out = fopen(path, "wb");
    int bad = !out || write_all(out, ts, n, &hdr) || fflush(out);
    int e = errno;
    if (out && fclose(out))
      bad = 1, e = errno;
    free(hdr.p);
    return bad ? rt_errf(err, "%s: write failed: %s", path, strerror(e ? e : EIO)) : 0;
  }
  FILE *f = rt_create_temp(target, tmp, sizeof tmp, err);
  if (!f) {
    free(hdr.p);
    return -1;
  }
  /* Each step names what failed; errno is captured before cleanup can change it. */
  const char *what = NULL;
  int e = 0;
  if (write_all(f, ts, n, &hdr))
    what = "write", e = errno;
  else if (fflush(f))
    what = "write", e = errno;
  else if (fsync(fileno(f)))
    what = "fsync", e = errno;
  if (fclose(f) && !what)
    what = "close", e = errno;
  if (!what && rename(tmp, target))
    what = "rename", e = errno;
  free(hdr.p);
  if (what) {
    unlink(tmp);
    rt_errf(err, "%s: %s failed: %s", path, what, strerror(e ? e : EIO));
    return -1;
  }
  sync_dir(path);
  return 0;
}

/* ---- reader: a strict JSON parser for the header ---- */

typedef struct Json {
  const char *p, *start, *end;
  const char *path;
  char *err;
  int failed;
} Json;

static int jfail(Json *j, const char *msg, const char *arg) {
  if (!j->failed)
    rt_errf(j->err, "%s: bad header JSON at byte %ld: %s%s", j->path,
             (long)(j->p - j->start), msg, arg ? arg : "");
  j->failed = 1;
  return -1;
}

/* Whitespace as JSON defines it (the padding is spaces). */
static void jws(Json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
    j->p++;
}

static int jpeek(Json *j) {
  jws(j);
  return j->p < j->end ? (unsigned char)*j->p : -1;
}

static int jexpect(Json *j, char c) {
  if (jpeek(j) != c) {
    char what[4] = {'\'', c, '\'', 0};
    return jfail(j, "expected ", what);
  }
  j->p++;
  return 0;
}

static int hexval(int c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
       : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int jhex4(Json *j, unsigned *out) {
  if (j->end - j->p < 4)
    return jfail(j, "truncated \\u escape", NULL);
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval((unsigned char)j->p[i]);
    if (h < 0)
      return jfail(j, "bad \\u escape", NULL);
    v = v << 4 | (unsigned)h;
  }
  j->p += 4;
  *out = v;
  return 0;
}

/* A string; *out (if out) receives a malloc'd, NUL-terminated copy with escapes decoded. Strings
 * containing NUL (\u0000) are refused: they cannot be tensor names. */
static int jstring(Json *j, char **out) {
  if (jexpect(j, '"'))
    return -1;
  Buf b = {0};
  for (;;) {
    if (j->p >= j->end) {
      free(b.p);
      return jfail(j, "unterminated string", NULL);
    }
    unsigned char c = (unsigned char)*j->p++;
    if (c == '"')
      break;
    if (c < 0x20) {
      free(b.p);
      return jfail(j, "control character in string", NULL);
    }
    if (c != '\\') {
      buf_add(&b, (const char *)&c, 1);
      continue;
    }
    if (j->p >= j->end) {
      free(b.p);
      return jfail(j, "unterminated string", NULL);
    }
    char e = *j->p++;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (simple && e) {
      static const char to[] = "\"\\/\b\f\n\r\t";
      buf_add(&b, &to[simple - "\"\\/bfnrt"], 1);
      continue;
    }
    unsigned u;
    if (e != 'u' || jhex4(j, &u)) {
      free(b.p);
      return jfail(j, "bad escape in string", NULL);
    }
    if (u >= 0xd800 && u < 0xdc00) { /* a surrogate pair */
      unsigned lo;
      if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u' || (j->p += 2, jhex4(j, &lo)) ||
          lo < 0xdc00 || lo > 0xdfff) {
        free(b.p);
        return jfail(j, "unpaired surrogate in string", NULL);
      }
      u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
    } else if (u >= 0xdc00 && u < 0xe000) {
      free(b.p);
      return jfail(j, "unpaired surrogate in string", NULL);
    }
    if (u == 0) {
      free(b.p);
      return jfail(j, "NUL character in string", NULL);
    }
    char t[4];
    int n;
    if (u < 0x80)
      t[0] = (char)u, n = 1;
    else if (u < 0x800)
      t[0] = (char)(0xc0 | u >> 6), t[1] = (char)(0x80 | (u & 0x3f)), n = 2;
    else if (u < 0x10000)
      t[0] = (char)(0xe0 | u >> 12), t[1] = (char)(0x80 | ((u >> 6) & 0x3f)),
      t[2] = (char)(0x80 | (u & 0x3f)), n = 3;
    else
      t[0] = (char)(0xf0 | u >> 18), t[1] = (char)(0x80 | ((u >> 12) & 0x3f)),
      t[2] = (char)(0x80 | ((u >> 6) & 0x3f)), t[3] = (char)(0x80 | (u & 0x3f)), n = 4;
    buf_add(&b, t, (size_t)n);
  }
  buf_add(&b, "", 0); /* allocates even for an empty string */
  if (b.oom) {
    free(b.p);
    return jfail(j, "out of memory", NULL);
  }
  if (out)
    *out = b.p;
  else
    free(b.p);
  return 0;
}

/* A non-negative integer as safetensors uses for shapes and offsets: digits only, no leading
 * zeros, no fraction or exponent, at most 2^53 so that every tool reading the file agrees. */
static int juint(Json *j, int64_t *out) {
  int c = jpeek(j);
  if (c < '0' || c > '9')
    return jfail(j, "expected a non-negative integer", NULL);
  const char *s = j->p;
  int64_t v = 0;
  while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
    v = v * 10 + (*j->p++ - '0');
    if (v > (int64_t)1 << 53)
      return jfail(j, "integer too large", NULL);
  }
  if (*s == '0' && j->p - s > 1)
    return jfail(j, "integer with a leading zero", NULL);
  if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
    return jfail(j, "expected an integer, found a fraction", NULL);
  *out = v;
  return 0;
}

/* Any JSON value, validated and thrown away (the contents of "__metadata__"). */
static int jskip(Json *j, int depth) {
  if (depth > 32)
    return jfail(j, "nesting too deep", NULL);
  int c = jpeek(j);
  if (c == '"')
    return jstring(j, NULL);
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->p++;
    if (jpeek(j) == close) {
      j->p++;
      return 0;
    }
    for (;;) {
      if (c == '{' && (jstring(j, NULL) || jexpect(j, ':')))
        return -1;
      if (jskip(j, depth + 1))
        return -1;
      if (jpeek(j) == ',') {
        j->p++;
        continue;
      }
      return jexpect(j, close);
    }
  }
  static const char *const words[] = {"true", "false", "null"};
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(words[i]);
    if ((size_t)(j->end - j->p) >= n && !memcmp(j->p, words[i], n)) {
      j->p += n;
      return 0;
    }
  }
  if (c == '-' || (c >= '0' && c <= '9')) { /* a number: -?int frac? exp? */
    if (*j->p == '-')
      j->p++;
    const char *d = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
      j->p++;
    if (j->p == d || (*d == '0' && j->p - d > 1))
      return jfail(j, "bad number", NULL);
    if (j->p < j->end && *j->p == '.') {
      d = ++j->p;
      while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
        j->p++;
      if (j->p == d)
        return jfail(j, "bad number", NULL);
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
      j->p++;
      if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
        j->p++;
      d = j->p;
      while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
        j->p++;
      if (j->p == d)
        return jfail(j, "bad number", NULL);
    }
    return 0;
  }
  return jfail(j, "expected a value", NULL);
}

/* One tensor's descriptor, parsed into t (name already set) and its byte range. */
typedef struct Entry { RtNamedTensor t; int64_t begin, end; } Entry;

/* shape = '[' ( uint ( ',' uint )* )? ']'   at most KILN_ABI_MAX_RANK dims */
static int jshape(Json *j, RtNamedTensor *t) {
  if (jexpect(j, '['))
    return -1;
  if (jpeek(j) == ']') {
    j->p++;
    return 0;
  }
  for (;;) {
    if (t->rank == KILN_ABI_MAX_RANK) {
      rt_errf(j->err, "%s: tensor '%s' has more than %d dimensions", j->path,
               t->name, KILN_ABI_MAX_RANK);
      j->failed = 1;
      return -1;
    }
    if (juint(j, &t->dims[t->rank++]))
      return -1;
    if (jpeek(j) != ',')
      return jexpect(j, ']');
    j->p++;
  }
}

/* entry = '{' ( '"dtype"' ':' string | '"shape"' ':' '[' uint,* ']'
 *             | '"data_offsets"' ':' '[' uint ',' uint ']' ),* '}'   each key exactly once */
static int jentry(Json *j, Entry *e) {
  int have_dtype = 0, have_shape = 0, have_offsets = 0;
  if (jexpect(j, '{'))
    return -1;
  if (jpeek(j) == '}')
    return jfail(j, "empty descriptor for tensor ", e->t.name);
  for (;;) {
    char *key;
    if (jstring(j, &key))
      return -1;
    if (jexpect(j, ':')) {
      free(key);
      return -1;
    }
    int rc = 0;
    if (!strcmp(key, "dtype") && !have_dtype) {
      char *s;
      have_dtype = 1;
      if ((rc = jstring(j, &s)) == 0) {
        e->t.dtype = -1;
        for (int d = 0; d < NDTYPES; d++)
          if (!strcmp(s, dtypes[d].name))
            e->t.dtype = d;
        if (e->t.dtype < 0) {
          rt_errf(j->err, "%s: tensor '%s' has unsupported dtype \"%.32s\"", j->path,
                   e->t.name, s);
          j->failed = 1;
          rc = -1;
        }
        free(s);
      }
    } else if (!strcmp(key, "shape") && !have_shape) {
      have_shape = 1;
      rc = jshape(j, &e->t);
    } else if (!strcmp(key, "data_offsets") && !have_offsets) {
      have_offsets = 1;
      rc = jexpect(j, '[') || juint(j, &e->begin) || jexpect(j, ',') || juint(j, &e->end) ||
           jexpect(j, ']') ? -1 : 0;
    } else {
      rc = jfail(j, "unexpected or repeated field ", key);
    }
    free(key);
    if (rc)
      return -1;
    if (jpeek(j) == ',') {
      j->p++;
      continue;
    }
    if (jexpect(j, '}'))
      return -1;
    break;
  }
  if (!have_dtype || !have_shape || !have_offsets)
    return jfail(j,
                 !have_dtype ? "missing \"dtype\" for tensor "
                 : !have_shape ? "missing \"shape\" for tensor "
                               : "missing \"data_offsets\" for tensor ",
                 e->t.name);
  return 0;
}

static void free_entries(Entry *es, int n) {
  for (int i = 0; i < n; i++) {
    free((char *)es[i].t.name);
    free(es[i].t.values);
  }
  free(es);
}

void rt_meta_free(RtMeta *meta, int n) {
  for (int i = 0; meta && i < n; i++) {
    free(meta[i].key);
    free(meta[i].value);
  }
  free(meta);
}

const char *rt_meta_get(const RtMeta *meta, int n, const char *key) {
  for (int i = 0; i < n; i++)
    if (!strcmp(meta[i].key, key))
      return meta[i].value;
  return NULL;
}

/* metadata = '{' ( string ':' value ),* '}': the string-valued entries are kept (the format
 * allows only those; anything else is validated and dropped). */
static int jmeta(Json *j, RtMeta **meta, int *nmeta) {
  int cap = 0;
  if (jexpect(j, '{'))
    return -1;
  if (jpeek(j) == '}') {
    j->p++;
    return 0;
  }
  for (;;) {
    char *key, *value = NULL;
    if (jstring(j, &key))
      return -1;
    if (jexpect(j, ':') || (jpeek(j) == '"' ? jstring(j, &value) : jskip(j, 1))) {
      free(key);
      return -1;
    }
    if (!value || !meta) {
      free(key);
      free(value);
    } else {
      if (*nmeta == cap) {
        int ncap = cap ? 2 * cap : 8;
        RtMeta *nm = realloc(*meta, (size_t)ncap * sizeof *nm);
        if (!nm) {
          free(key);
          free(value);
          return jfail(j, "out of memory", NULL);
        }
        *meta = nm;
        cap = ncap;
      }
      (*meta)[(*nmeta)++] = (RtMeta){key, value};
    }
    if (jpeek(j) == ',') {
      j->p++;
      continue;
    }
    return jexpect(j, '}');
  }
}

/* header = '{' ( string ':' ( entry | metadata for "__metadata__" ) ),* '}' spaces* */
static int jheader(Json *j, Entry **out, int *nout, RtMeta **meta, int *nmeta) {
  Entry *es = NULL;
  int n = 0, cap = 0, have_meta = 0;
  if (jexpect(j, '{'))
    return -1;
  if (jpeek(j) == '}')
    j->p++;
  else
    for (;;) {
      char *name;
      if (jstring(j, &name))
        goto fail;
      if (jexpect(j, ':')) {
        free(name);
        goto fail;
      }
      if (!strcmp(name, "__metadata__")) {
        free(name);
        if (have_meta) {
          jfail(j, "\"__metadata__\" appears twice", NULL);
          goto fail;
        }
        have_meta = 1;
        if (jpeek(j) != '{') {
          jfail(j, "\"__metadata__\" must be an object", NULL);
          goto fail;
        }
        if (jmeta(j, meta, nmeta))
          goto fail;
      } else {
        for (int i = 0; i < n; i++)
          if (!strcmp(es[i].t.name, name)) {
            jfail(j, "duplicate tensor ", name);
            free(name);
            goto fail;
          }
        if (n == cap) {
          int ncap = cap ? 2 * cap : 16;
          Entry *nes = realloc(es, (size_t)ncap * sizeof *es);
          if (!nes) {
            free(name);
            jfail(j, "out of memory", NULL);
            goto fail;
          }
          es = nes;
          cap = ncap;
        }
        memset(&es[n], 0, sizeof es[n]);
        es[n].t.name = name;
        n++;
        if (jentry(j, &es[n - 1]))
          goto fail;
      }
      if (jpeek(j) == ',') {
        j->p++;
        continue;
      }
      if (jexpect(j, '}'))
        goto fail;
      break;
    }
  if (jpeek(j) != -1) {
    jfail(j, "unexpected text after the header object", NULL);
    goto fail;
  }
  *out = es;
  *nout = n;
  return 0;
fail:
  free_entries(es, n);
  return -1;
}

static int by_begin(const void *a, const void *b) {
  const Entry *x = *(Entry *const *)a, *y = *(Entry *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* Sizes and offsets: each tensor's range matches its shape, lies in the data, and together the
 * ranges tile [0, data_len) exactly. */
static int check_layout(Entry *es, int n, int64_t data_len, const char *path, char *err) {
  for (int i = 0; i < n; i++) {
    Entry *e = &es[i];
    int64_t numel = shape_numel(e->t.dims, e->t.rank), size = dtypes[e->t.dtype].size;
    if (e->begin > e->end || e->end > data_len) {
      rt_errf(err, "%s: tensor '%s': data_offsets [%lld, %lld] out of range (the "
               "data is %lld bytes)", path, e->t.name, (long long)e->begin, (long long)e->end,
               (long long)data_len);
      return -1;
    }
    if (numel < 0 || numel > INT64_MAX / size || numel * size != e->end - e->begin) {
      rt_errf(err, "%s: tensor '%s': shape and dtype %s need %lld bytes but "
               "data_offsets cover %lld", path, e->t.name, dtypes[e->t.dtype].name,
               numel < 0 || numel > INT64_MAX / size ? -1LL : (long long)(numel * size),
               (long long)(e->end - e->begin));
      return -1;
    }
  }
  Entry **order = malloc((size_t)(n ? n : 1) * sizeof *order);
  if (!order) {
    rt_errf(err, "%s: out of memory", path);
    return -1;
  }
  for (int i = 0; i < n; i++)
    order[i] = &es[i];
  qsort(order, (size_t)n, sizeof *order, by_begin);
  int64_t at = 0;
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    Entry *e = order[i];
    if (e->begin < at) {
      rt_errf(err, "%s: tensor '%s': data_offsets [%lld, %lld] overlap tensor '%s'",
               path, e->t.name, (long long)e->begin, (long long)e->end, order[i - 1]->t.name);
      rc = -1;
    } else if (e->begin > at) {
      rt_errf(err, "%s: unused bytes [%lld, %lld) in the data before tensor '%s'",
               path, (long long)at, (long long)e->begin, e->t.name);
      rc = -1;
    }
    at = e->end;
  }
  if (!rc && at != data_len) {
    rt_errf(err, "%s: size mismatch: tensors cover %lld data bytes, the file has %lld",
             path, (long long)at, (long long)data_len);
    rc = -1;
  }
  free(order);
  return rc;
}

int rt_safetensors_load(const char *path, RtNamedTensor **out, int *nout, char *err) {
  return rt_safetensors_read(path, out, nout, NULL, NULL, err);
}

int rt_safetensors_read(const char *path, RtNamedTensor **out, int *nout, RtMeta **meta,
                        int *nmeta, char *err) {
  *out = NULL;
  *nout = 0;
  if (meta) {
    *meta = NULL;
    *nmeta = 0;
  }
  struct stat st;
  FILE *f = rt_open_regular(path, &st, err);
  if (!f)
    return -1;
  int64_t size = st.st_size;
  unsigned char lenb[8];
  if (size < 8 || fread(lenb, 1, 8, f) != 8) {
    rt_errf(err, "%s: truncated: %lld bytes, too short for the 8-byte header length",
             path, (long long)size);
    fclose(f);
    return -1;
  }
  uint64_t hlen = get_le(lenb, 8);
  if (hlen > (uint64_t)(size - 8)) {
    rt_errf(err, "%s: header length %llu is larger than the file (%lld bytes)", path,
             (unsigned long long)hlen, (long long)size);
    fclose(f);
    return -1;
  }
  int64_t data_len = size - 8 - (int64_t)hlen;
  char *hdr = malloc(hlen ? hlen : 1);
  unsigned char *data = malloc(data_len ? (size_t)data_len : 1);
  Entry *es = NULL;
  int n = 0;
  if (!hdr || !data) {
    rt_errf(err, "%s: out of memory", path);
    goto fail;
  }
  if (fread(hdr, 1, hlen, f) != hlen || fread(data, 1, (size_t)data_len, f) != (size_t)data_len) {
    rt_errf(err, "%s: read error (was the file truncated while reading?)", path);
    goto fail;
  }
  Json j = {.p = hdr, .start = hdr, .end = hdr + hlen, .path = path, .err = err};
  if (jheader(&j, &es, &n, meta, nmeta))
    goto fail;
  if (check_layout(es, n, data_len, path, err))
    goto fail;
  for (int i = 0; i < n; i++) {
    Entry *e = &es[i];
    int64_t numel = shape_numel(e->t.dims, e->t.rank);
    int size1 = dtypes[e->t.dtype].size;
    /* numel is known to be valid here (check_layout); the bound restates it for the compiler. */
    if (numel >= 0 && numel <= data_len)
      e->t.values = malloc((size_t)(numel ? numel : 1) * sizeof(double));
    if (!e->t.values) {
      rt_errf(err, "%s: out of memory for tensor '%s'", path, e->t.name);
      goto fail;
    }
    for (int64_t k = 0; k < numel; k++)
      e->t.values[k] = decode(e->t.dtype, data + e->begin + k * size1);
  }
  RtNamedTensor *ts = malloc((size_t)(n ? n : 1) * sizeof *ts);
  if (!ts) {
    rt_errf(err, "%s: out of memory", path);
    goto fail;
  }
  for (int i = 0; i < n; i++)
    ts[i] = es[i].t;
  free(es);
  free(hdr);
  free(data);
  fclose(f);
  *out = ts;
  *nout = n;
  return 0;
fail:
  free_entries(es, n);
  free(hdr);
  free(data);
  fclose(f);
  if (meta) {
    rt_meta_free(*meta, *nmeta);
    *meta = NULL;
    *nmeta = 0;
  }
  return -1;
}

void rt_safetensors_free(RtNamedTensor *ts, int n) {
  if (!ts)
    return;
  for (int i = 0; i < n; i++) {
    free((char *)ts[i].name);
    free(ts[i].values);
  }
  free(ts);
}
