/*
 * test_runtime.c — tests of the trainer support code in runtime/ (Check framework).
 *
 * Values are pinned where the runtime promises them (the random stream, the safetensors bytes,
 * the summary line); statistics get tolerances sized for 100k samples (about 5 standard errors).
 * The training driver is run against a fake backend written here, which decodes each example's
 * index from its pixels, so the test can see exactly which examples every batch carried.
 */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "runtime.h"

/* ---- helpers ---- */

static char tmpdir[256];

static void setup_tmp(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln_rt_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

/* The test directories are flat, so removing the files one level down is enough. */
static void teardown_tmp(void) {
  DIR *d = opendir(tmpdir);
  if (!d)
    return;
  struct dirent *e;
  char p[512];
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
    if (unlink(p))
      rmdir(p);
  }
  closedir(d);
  rmdir(tmpdir);
}

static const char *tpath(const char *name) {
  static char bufs[4][512];
  static int next;
  char *p = bufs[next++ % 4];
  snprintf(p, 512, "%s/%s", tmpdir, name);
  return p;
}

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(data, 1, n, f), n);
  ck_assert_int_eq(fclose(f), 0);
}

static void write_gz(const char *path, const void *data, size_t n) {
  gzFile g = gzopen(path, "wb");
  ck_assert_ptr_nonnull(g);
  ck_assert_int_eq(gzwrite(g, data, (unsigned)n), (int)n);
  ck_assert_int_eq(gzclose(g), Z_OK);
}

/* Reads a whole file into a malloc'd, NUL-terminated buffer. */
static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  char *s = malloc((size_t)n + 1);
  ck_assert_uint_eq(fread(s, 1, (size_t)n, f), (size_t)n);
  s[n] = 0;
  fclose(f);
  if (len)
    *len = (size_t)n;
  return s;
}

static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
  closedir(d);
  return n;
}

/* An IDX file: magic 0x0000 08 rank, big-endian dims, then the bytes. Returns its length. */
static size_t make_idx(unsigned char *buf, int rank, const uint32_t *dims, const uint8_t *data) {
  size_t n = 0, total = 1;
  buf[n++] = 0, buf[n++] = 0, buf[n++] = 0x08, buf[n++] = (unsigned char)rank;
  for (int i = 0; i < rank; i++) {
    buf[n++] = (unsigned char)(dims[i] >> 24), buf[n++] = (unsigned char)(dims[i] >> 16);
    buf[n++] = (unsigned char)(dims[i] >> 8), buf[n++] = (unsigned char)dims[i];
    total *= dims[i];
  }
  memcpy(buf + n, data, total);
  return n + total;
}

/* Runs fn with stdout and stderr sent to files in tmpdir; returns fn's result. */
static int capture(int (*fn)(void *), void *arg, char **out, char **err) {
  fflush(stdout);
  fflush(stderr);
  int so = dup(1), se = dup(2);
  int fo = open(tpath("stdout.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int fe = open(tpath("stderr.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fo, 1);
  dup2(fe, 2);
  int rc = fn(arg);
  fflush(stdout);
  fflush(stderr);
  dup2(so, 1);
  dup2(se, 2);
  close(so), close(se), close(fo), close(fe);
  *out = read_all(tpath("stdout.txt"), NULL);
  *err = read_all(tpath("stderr.txt"), NULL);
  unlink(tpath("stdout.txt"));
  unlink(tpath("stderr.txt"));
  return rc;
}

/* ---- rt_rng.c ---- */

START_TEST(rng_pinned) {
  RtRng r;
  rt_rng_seed(&r, 0);
  /* splitmix64's first output from state 0 is a published constant. */
  ck_assert_uint_eq(r.s[0], 0xe220a8397b1dcdafULL);
  ck_assert_uint_eq(rt_rng_next(&r), 0x99ec5f36cb75f2b4ULL);
  ck_assert_uint_eq(rt_rng_next(&r), 0xbf6e1f784956452aULL);
  ck_assert_uint_eq(rt_rng_next(&r), 0x1a5f849d4933e6e0ULL);
  rt_rng_seed(&r, 42);
  ck_assert_uint_eq(rt_rng_next(&r), 0x15780b2e0c2ec716ULL);
  rt_rng_seed(&r, 42);
  ck_assert_double_eq(rt_rng_uniform(&r), (double)(0x15780b2e0c2ec716ULL >> 11) * 0x1.0p-53);
  ck_assert_uint_eq(rt_hash_name(1, "fc1.weight"), 0x63ccab5291416bf1ULL);
}
END_TEST

START_TEST(rng_reproducible) {
  RtRng a, b;
  rt_rng_seed(&a, 12345);
  rt_rng_seed(&b, 12345);
  for (int i = 0; i < 1000; i++)
    ck_assert_uint_eq(rt_rng_next(&a), rt_rng_next(&b));
  rt_rng_seed(&b, 12346);
  int same = 0;
  for (int i = 0; i < 1000; i++)
    same += rt_rng_next(&a) == rt_rng_next(&b);
  ck_assert_int_eq(same, 0);
}
END_TEST

START_TEST(rng_uniform_normal_stats) {
  RtRng r;
  rt_rng_seed(&r, 7);
  const int n = 100000;
  double s = 0, s2 = 0, lo = 1, hi = 0;
  for (int i = 0; i < n; i++) {
    double u = rt_rng_uniform(&r);
    ck_assert(u >= 0 && u < 1);
    s += u, s2 += u * u;
    lo = u < lo ? u : lo, hi = u > hi ? u : hi;
  }
  ck_assert_double_eq_tol(s / n, 0.5, 0.005);
  ck_assert_double_eq_tol(s2 / n - (s / n) * (s / n), 1.0 / 12, 0.002);
  ck_assert(lo < 1e-3 && hi > 1 - 1e-3);
  s = s2 = 0;
  double s3 = 0;
  int beyond3 = 0;
  for (int i = 0; i < n; i++) {
    double z = rt_rng_normal(&r);
    ck_assert(isfinite(z));
    s += z, s2 += z * z, s3 += z * z * z;
    beyond3 += fabs(z) > 3;
  }
  ck_assert_double_eq_tol(s / n, 0, 0.016);
  ck_assert_double_eq_tol(sqrt(s2 / n), 1, 0.012);
  ck_assert_double_eq_tol(s3 / n, 0, 0.05);
  /* P(|z| > 3) = 0.0027: 270 expected. */
  ck_assert(beyond3 > 200 && beyond3 < 340);
}
END_TEST

START_TEST(rng_below) {
  RtRng r;
  rt_rng_seed(&r, 3);
  ck_assert_uint_eq(rt_rng_below(&r, 0), 0);
  ck_assert_uint_eq(rt_rng_below(&r, 1), 0);
  int counts[7] = {0};
  for (int i = 0; i < 70000; i++) {
    uint64_t v = rt_rng_below(&r, 7);
    ck_assert_uint_lt(v, 7);
    counts[v]++;
  }
  for (int i = 0; i < 7; i++)
    ck_assert(counts[i] > 9500 && counts[i] < 10500);
  uint64_t big = (1ULL << 63) + 12345;
  int high = 0;
  for (int i = 0; i < 10000; i++) {
    uint64_t v = rt_rng_below(&r, big);
    ck_assert_uint_lt(v, big);
    high += v >= big / 2;
  }
  ck_assert(high > 4700 && high < 5300);
}
END_TEST

START_TEST(rng_shuffle) {
  enum { N = 1000 };
  int64_t a[N], b[N];
  int seen[N] = {0};
  RtRng r, r2;
  for (int i = 0; i < N; i++)
    a[i] = b[i] = i;
  rt_rng_seed(&r, 99);
  rt_rng_seed(&r2, 99);
  rt_shuffle(&r, a, N);
  rt_shuffle(&r2, b, N);
  int fixed = 0;
  for (int i = 0; i < N; i++) {
    ck_assert(a[i] >= 0 && a[i] < N);
    seen[a[i]]++;
    ck_assert_int_eq(a[i], b[i]);
    fixed += a[i] == i;
  }
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(seen[i], 1);
  ck_assert_int_lt(fixed, 10); /* a random permutation has ~1 fixed point */
  rt_shuffle(&r, a, 0);
  int64_t one = 5;
  rt_shuffle(&r, &one, 1);
  ck_assert_int_eq(one, 5);
  /* Every one of the 6 orders of 3 elements turns up, about equally often. */
  int orders[6] = {0};
  for (int t = 0; t < 6000; t++) {
    int64_t c[3] = {0, 1, 2};
    rt_shuffle(&r, c, 3);
    orders[c[0] * 2 + (c[1] > c[2])]++;
  }
  for (int i = 0; i < 6; i++)
    ck_assert(orders[i] > 850 && orders[i] < 1150);
}
END_TEST

START_TEST(rng_hash_name) {
  ck_assert_uint_eq(rt_hash_name(1, "a"), rt_hash_name(1, "a"));
  ck_assert_uint_ne(rt_hash_name(1, "a"), rt_hash_name(2, "a"));
  ck_assert_uint_ne(rt_hash_name(1, "a"), rt_hash_name(1, "b"));
  ck_assert_uint_ne(rt_hash_name(1, "fc1.weight"), rt_hash_name(1, "fc1.bias"));
  ck_assert_uint_ne(rt_hash_name(0, ""), 0);
}
END_TEST

/* ---- rt_init.c ---- */

static kiln_tensor param(const char *name, int init, double a, int64_t fan_in, int64_t fan_out) {
  kiln_tensor t = {.name = name, .role = KILN_ROLE_PARAM, .dtype = KILN_F32, .rank = 1,
                   .batch_axis = -1, .init = init, .init_a = a, .fan_in = fan_in,
                   .fan_out = fan_out};
  return t;
}

/* Mean, standard deviation and largest magnitude of n samples of t. */
static void init_stats(const kiln_tensor *t, double *mean, double *std, double *maxabs) {
  enum { N = 100000 };
  static double v[N];
  rt_init_tensor(t, 2024, v, N);
  double s = 0, s2 = 0, m = 0;
  for (int i = 0; i < N; i++) {
    s += v[i], s2 += v[i] * v[i];
    m = fabs(v[i]) > m ? fabs(v[i]) : m;
  }
  *mean = s / N;
  *std = sqrt(s2 / N - *mean * *mean);
  *maxabs = m;
}

START_TEST(init_distributions) {
  struct { int init; double a; int64_t fi, fo; int uniform; double scale; } cases[] = {
      /* scale: the bound of a uniform, the std of a normal */
      {KILN_INIT_TORCH_DEFAULT, 0, 100, 10, 1, 0.1},
      {KILN_INIT_TORCH_DEFAULT, 0, 784, 10, 1, 1 / 28.0},
      {KILN_INIT_HE_NORMAL, 0, 50, 10, 0, 0.2},
      {KILN_INIT_HE_UNIFORM, 0, 24, 10, 1, 0.5},
      {KILN_INIT_XAVIER_UNIFORM, 0, 30, 70, 1, sqrt(0.06)},
      {KILN_INIT_XAVIER_NORMAL, 0, 150, 50, 0, 0.1},
      {KILN_INIT_NORMAL, 0.3, 0, 0, 0, 0.3},
      {KILN_INIT_UNIFORM, 2.0, 0, 0, 1, 2.0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    kiln_tensor t = param("layer.weight", cases[i].init, cases[i].a, cases[i].fi, cases[i].fo);
    double mean, std, maxabs, s = cases[i].scale;
    init_stats(&t, &mean, &std, &maxabs);
    double want_std = cases[i].uniform ? s / sqrt(3) : s;
    ck_assert_msg(fabs(mean) < 0.02 * s, "case %zu: mean %g", i, mean);
    ck_assert_msg(fabs(std / want_std - 1) < 0.01, "case %zu: std %g, want %g", i, std, want_std);
    if (cases[i].uniform)
      ck_assert_msg(maxabs <= s && maxabs > 0.999 * s, "case %zu: max %g bound %g", i, maxabs, s);
    else
      ck_assert_msg(maxabs > 3.5 * s && maxabs < 6 * s, "case %zu: max %g", i, maxabs);
  }
}
END_TEST

START_TEST(init_constant_kinds) {
  double v[5];
  static const double data[5] = {1.5, -2, 0, 3.25, 7};
  kiln_tensor t = param("x", KILN_INIT_ZEROS, 9, 1, 1);
  for (int i = 0; i < 5; i++)
    v[i] = 99;
  rt_init_tensor(&t, 1, v, 5);
  for (int i = 0; i < 5; i++)
    ck_assert_double_eq(v[i], 0);
  t.init = KILN_INIT_ONES;
  rt_init_tensor(&t, 1, v, 5);
  for (int i = 0; i < 5; i++)
    ck_assert_double_eq(v[i], 1);
  t.init = KILN_INIT_CONST;
  t.init_a = -0.125;
  rt_init_tensor(&t, 1, v, 5);
  for (int i = 0; i < 5; i++)
    ck_assert_double_eq(v[i], -0.125);
  t.init = KILN_INIT_DATA;
  t.data = data;
  rt_init_tensor(&t, 1, v, 5);
  for (int i = 0; i < 5; i++)
    ck_assert_double_eq(v[i], data[i]);
  t.data = NULL; /* no data: zeros rather than a crash */
  rt_init_tensor(&t, 1, v, 5);
  ck_assert_double_eq(v[4], 0);
}
END_TEST

START_TEST(init_depends_on_seed_and_name_only) {
  double a[8], b[8], c[8], d[8];
  kiln_tensor t = param("fc1.weight", KILN_INIT_TORCH_DEFAULT, 0, 16, 4);
  kiln_tensor u = param("fc1.bias", KILN_INIT_TORCH_DEFAULT, 0, 16, 4);
  rt_init_tensor(&t, 5, a, 8);
  rt_init_tensor(&u, 5, c, 8); /* initialising another tensor in between changes nothing */
  rt_init_tensor(&t, 5, b, 8);
  for (int i = 0; i < 8; i++)
    ck_assert_double_eq(a[i], b[i]);
  ck_assert_double_ne(a[0], c[0]);
  rt_init_tensor(&t, 6, d, 8);
  ck_assert_double_ne(a[0], d[0]);
  /* The stream is rt_rng seeded with rt_hash_name(seed, name): uniform mapped to +-bound. */
  RtRng r;
  rt_rng_seed(&r, rt_hash_name(5, "fc1.weight"));
  ck_assert_double_eq(a[0], 0.25 * (2 * rt_rng_uniform(&r) - 1));
}
END_TEST

/* orthogonal: the tensor as a matrix [dims[0], rest] has orthonormal rows when it is wide and
 * orthonormal columns when it is tall, times the gain; a vector is a unit vector. */
START_TEST(init_orthogonal) {
  static const struct { int rank; int64_t dims[4]; double gain; } cases[] = {
      {2, {5, 12}, 1}, {2, {12, 5}, 1}, {4, {4, 2, 3, 3}, 2}, {2, {7, 7}, 0.5}, {1, {6}, 1}};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    kiln_tensor t = param("w", KILN_INIT_ORTHOGONAL, cases[c].gain, 1, 1);
    t.rank = cases[c].rank;
    int64_t n = 1;
    for (int k = 0; k < t.rank; k++)
      n *= t.dims[k] = cases[c].dims[k];
    double v[72];
    rt_init_tensor(&t, 3, v, n);
    int64_t rows = t.rank > 1 ? t.dims[0] : n, cols = n / rows;
    int wide = rows < cols;
    int64_t k = wide ? rows : cols, m = wide ? cols : rows;
    for (int64_t a = 0; a < k; a++)
      for (int64_t b = 0; b < k; b++) {
        double dot = 0;
        for (int64_t i = 0; i < m; i++)
          dot += wide ? v[a * cols + i] * v[b * cols + i] : v[i * cols + a] * v[i * cols + b];
        double want = a == b ? cases[c].gain * cases[c].gain : 0;
        ck_assert_msg(fabs(dot - want) < 1e-12, "case %zu: <%lld, %lld> = %.17g", c,
                      (long long)a, (long long)b, dot);
      }
  }
}
END_TEST

/* ---- rt_idx.c ---- */

START_TEST(idx_plain_and_gz) {
  uint8_t pix[3 * 2 * 4];
  for (int i = 0; i < 24; i++)
    pix[i] = (uint8_t)(i * 10);
  unsigned char buf[256];
  size_t n = make_idx(buf, 3, (uint32_t[]){3, 2, 4}, pix);
  write_bytes(tpath("a.idx"), buf, n);
  write_gz(tpath("a.idx.gz"), buf, n);
  const char *paths[] = {tpath("a.idx"), tpath("a.idx.gz")};
  for (int k = 0; k < 2; k++) {
    RtIdx x;
    char err[RT_ERR_LEN] = "";
    ck_assert_msg(rt_idx_load(paths[k], &x, err) == 0, "%s", err);
    ck_assert_int_eq(x.rank, 3);
    ck_assert_int_eq(x.dims[0], 3);
    ck_assert_int_eq(x.dims[1], 2);
    ck_assert_int_eq(x.dims[2], 4);
    ck_assert_int_eq(x.count, 3);
    ck_assert_int_eq(x.item, 8);
    ck_assert_mem_eq(x.data, pix, 24);
    rt_idx_free(&x);
    ck_assert_ptr_null(x.data);
  }
  uint8_t labels[5] = {9, 0, 0, 3, 255};
  n = make_idx(buf, 1, (uint32_t[]){5}, labels);
  write_gz(tpath("l.gz"), buf, n);
  RtIdx x;
  char err[RT_ERR_LEN];
  ck_assert_int_eq(rt_idx_load(tpath("l.gz"), &x, err), 0);
  ck_assert_int_eq(x.rank, 1);
  ck_assert_int_eq(x.count, 5);
  ck_assert_int_eq(x.item, 1);
  ck_assert_mem_eq(x.data, labels, 5);
  rt_idx_free(&x);
}
END_TEST

/* The first items of a file: the rest is not read, so a file cut short after them still loads. */
START_TEST(idx_load_first) {
  uint8_t pix[40];
  for (int i = 0; i < 40; i++)
    pix[i] = (uint8_t)i;
  unsigned char buf[256];
  size_t n = make_idx(buf, 2, (uint32_t[]){5, 8}, pix);
  write_bytes(tpath("cut.idx"), buf, n - 3);
  write_gz(tpath("cut.idx.gz"), buf, n - 3);
  const char *paths[] = {tpath("cut.idx"), tpath("cut.idx.gz")};
  for (int k = 0; k < 2; k++) {
    RtIdx x;
    char err[RT_ERR_LEN] = "";
    ck_assert_int_eq(rt_idx_load(paths[k], &x, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "truncated"));
    ck_assert_msg(rt_idx_load_first(paths[k], 2, &x, err) == 0, "%s", err);
    ck_assert_int_eq(x.count, 2);
    ck_assert_int_eq(x.dims[0], 5);
    ck_assert_int_eq(x.item, 8);
    ck_assert_mem_eq(x.data, pix, 16);
    rt_idx_free(&x);
    ck_assert_int_eq(rt_idx_load_first(paths[k], 0, &x, err), 0);
    ck_assert_int_eq(x.count, 0);
    ck_assert_ptr_nonnull(x.data);
    rt_idx_free(&x);
    ck_assert_int_eq(rt_idx_load_first(paths[k], 5, &x, err), -1);
  }
}
END_TEST

/* Loads path, expects failure with a message that starts with the path and contains `want`. */
static void expect_idx_error(const char *path, const char *want) {
  RtIdx x;
  char err[RT_ERR_LEN] = "";
  ck_assert_int_eq(rt_idx_load(path, &x, err), -1);
  ck_assert_ptr_null(x.data);
  ck_assert_msg(!strncmp(err, path, strlen(path)), "message does not name the file: %s", err);
  ck_assert_msg(strstr(err, want) != NULL, "want '%s' in: %s", want, err);
  ck_assert_ptr_null(strchr(err, '\n'));
}

START_TEST(idx_errors) {
  uint8_t pix[40] = {1, 2, 3};
  unsigned char buf[256];
  size_t n = make_idx(buf, 3, (uint32_t[]){5, 2, 4}, pix);

  expect_idx_error(tpath("missing.idx"), "cannot open: No such file or directory");
  write_bytes(tpath("t1"), buf, n - 1);
  expect_idx_error(tpath("t1"), "truncated: header promises 40 data bytes, file has 39");
  write_bytes(tpath("t2"), buf, 10);
  expect_idx_error(tpath("t2"), "truncated: file ends inside the header");
  write_bytes(tpath("t3"), buf, 2);
  expect_idx_error(tpath("t3"), "truncated: file ends inside the 4-byte IDX magic");
  write_bytes(tpath("empty"), buf, 0);
  expect_idx_error(tpath("empty"), "truncated");
  /* A gzipped header promising 4 GB: refused before inflating anything, since deflate cannot
   * expand a file this small that much. */
  unsigned char gz4g[12] = {0, 0, 0x08, 2, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00};
  write_gz(tpath("huge.gz"), gz4g, sizeof gz4g);
  struct stat hs;
  ck_assert_int_eq(stat(tpath("huge.gz"), &hs), 0);
  char want[160];
  snprintf(want, sizeof want, "header promises 4294967296 data bytes, more than a %lld-byte "
           "gzip file can hold", (long long)hs.st_size);
  expect_idx_error(tpath("huge.gz"), want);
  unsigned char bad[64];
  memcpy(bad, buf, n);
  bad[0] = 0x12;
  write_bytes(tpath("magic"), bad, n);
  expect_idx_error(tpath("magic"), "bad magic 0x12000803: not an IDX file");
  memcpy(bad, buf, n);
  bad[2] = 0x0d; /* float elements */
  write_bytes(tpath("type"), bad, n);
  expect_idx_error(tpath("type"), "unsupported IDX element type 0x0d");
  memcpy(bad, buf, n);
  bad[n] = 7;
  write_bytes(tpath("long"), bad, n + 1);
  expect_idx_error(tpath("long"), "size mismatch: data continues past the 40 bytes");
  /* A header claiming 2^32-1 items of 2^20 bytes (4 PiB): fails as truncated, without trying
   * to allocate what it claims. */
  unsigned char huge[] = {0, 0, 8, 3, 255, 255, 255, 255, 0, 16, 0, 0, 0, 0, 0, 1, 1, 2};
  write_bytes(tpath("huge"), huge, sizeof huge);
  expect_idx_error(tpath("huge"), "truncated: header promises 4503599626321920 data bytes, "
                                  "file has 2");
  unsigned char vast[] = {0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 1, 1, 2};
  write_bytes(tpath("vast"), vast, sizeof vast);
  expect_idx_error(tpath("vast"), "header dimensions are impossibly large");

  /* gzip: truncated stream, and a stream whose compressed bytes are damaged. */
  write_gz(tpath("g.gz"), buf, n);
  size_t glen;
  char *gz = read_all(tpath("g.gz"), &glen);
  write_bytes(tpath("gtrunc.gz"), gz, glen / 2);
  expect_idx_error(tpath("gtrunc.gz"), "");
  RtIdx x;
  char err[RT_ERR_LEN];
  rt_idx_load(tpath("gtrunc.gz"), &x, err);
  ck_assert_msg(strstr(err, "truncated") || strstr(err, "corrupt gzip"), "%s", err);
  for (size_t i = 10; i < glen - 8; i++)
    gz[i] ^= 0x5a;
  write_bytes(tpath("gbad.gz"), gz, glen);
  expect_idx_error(tpath("gbad.gz"), "corrupt gzip data");
  /* Only the gzip magic, nothing after it. */
  write_bytes(tpath("gmagic.gz"), "\x1f\x8b", 2);
  expect_idx_error(tpath("gmagic.gz"), "");
  free(gz);
}
END_TEST

/* Writes a split of n examples of 2x2 pixels (pixel 0 = i % 256, pixel 1 = i / 256, then 7, 7)
 * with label i % 3, images plain and labels gzipped (or the other way round). */
static void write_split(const char *dir, const char *split, int n, int side, int gz_images) {
  int item = side * side;
  uint8_t *pix = calloc((size_t)(n * item) + 1, 1), *lab = calloc((size_t)n + 1, 1);
  unsigned char *buf = malloc((size_t)(n * item) + 64);
  for (int i = 0; i < n; i++) {
    pix[i * item] = (uint8_t)(i % 256);
    pix[i * item + 1] = (uint8_t)(i / 256);
    for (int j = 2; j < item; j++)
      pix[i * item + j] = 7;
    lab[i] = (uint8_t)(i % 3);
  }
  char path[512];
  size_t len = make_idx(buf, 3, (uint32_t[]){(uint32_t)n, (uint32_t)side, (uint32_t)side}, pix);
  snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte%s", dir, split, gz_images ? ".gz" : "");
  (gz_images ? write_gz : write_bytes)(path, buf, len);
  len = make_idx(buf, 1, (uint32_t[]){(uint32_t)n}, lab);
  snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte%s", dir, split, gz_images ? "" : ".gz");
  (gz_images ? write_bytes : write_gz)(path, buf, len);
  free(pix), free(lab), free(buf);
}

START_TEST(dataset_load_small) {
  write_split(tmpdir, "train", 10, 2, 0);
  write_split(tmpdir, "t10k", 7, 2, 1);
  RtDataset d;
  char err[RT_ERR_LEN] = "";
  ck_assert_msg(rt_dataset_load(tmpdir, "train", -1, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 10);
  ck_assert_int_eq(d.images.item, 4);
  ck_assert_int_eq(d.labels.count, 10);
  ck_assert_int_eq(d.labels.data[5], 2);
  ck_assert_int_eq(d.images.data[4 * 9], 9);
  rt_dataset_free(&d);
  ck_assert_msg(rt_dataset_load(tmpdir, "t10k", -1, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 7);
  rt_dataset_free(&d);

  /* 10 images but 9 labels. */
  unsigned char buf[64];
  uint8_t lab[9] = {0};
  size_t len = make_idx(buf, 1, (uint32_t[]){9}, lab);
  write_gz(tpath("train-labels-idx1-ubyte.gz"), buf, len);
  ck_assert_int_eq(rt_dataset_load(tmpdir, "train", -1, &d, err), -1);
  ck_assert_msg(strstr(err, "train-labels-idx1-ubyte.gz: 9 labels, but ") &&
                    strstr(err, "train-images-idx3-ubyte has 10 images"), "%s", err);
  ck_assert_ptr_null(d.images.data);

  /* The first items only: the counts still come from both headers. */
  ck_assert_int_eq(rt_dataset_load(tmpdir, "train", 3, &d, err), -1);
  ck_assert_msg(strstr(err, "9 labels, but "), "%s", err);
  write_split(tmpdir, "train", 10, 2, 0);
  ck_assert_msg(rt_dataset_load(tmpdir, "train", 3, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 3);
  ck_assert_int_eq(d.images.dims[0], 10);
  ck_assert_int_eq(d.labels.count, 3);
  ck_assert_int_eq(d.images.data[4 * 2], 2);
  rt_dataset_free(&d);
  ck_assert_msg(rt_dataset_load(tmpdir, "train", 50, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 10);
  rt_dataset_free(&d);

  ck_assert_int_eq(rt_dataset_load(tmpdir, "nope", -1, &d, err), -1);
  ck_assert_msg(strstr(err, "nope-images-idx3-ubyte.gz: no such file (nor "), "%s", err);
  ck_assert_int_eq(rt_dataset_load("/nonexistent/dir", "train", -1, &d, err), -1);
  ck_assert_msg(strstr(err, "/nonexistent/dir/train-images-idx3-ubyte.gz: no such file"), "%s",
                err);
}
END_TEST

START_TEST(dataset_fashion_mnist) {
  const char *dir = "/usr/share/datasets/fashion-mnist";
  RtDataset d;
  char err[RT_ERR_LEN] = "";
  ck_assert_msg(rt_dataset_load(dir, "train", -1, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 60000);
  ck_assert_int_eq(d.images.rank, 3);
  ck_assert_int_eq(d.images.dims[1], 28);
  ck_assert_int_eq(d.images.dims[2], 28);
  ck_assert_int_eq(d.images.item, 784);
  ck_assert_int_eq(d.labels.count, 60000);
  ck_assert_int_eq(d.labels.data[0], 9); /* the first training image is an ankle boot */
  int64_t hist[10] = {0};
  for (int i = 0; i < 60000; i++) {
    ck_assert_int_lt(d.labels.data[i], 10);
    hist[d.labels.data[i]]++;
  }
  for (int c = 0; c < 10; c++)
    ck_assert_int_eq(hist[c], 6000);
  rt_dataset_free(&d);
  ck_assert_msg(rt_dataset_load(dir, "t10k", -1, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 10000);
  ck_assert_int_eq(d.images.item, 784);
  ck_assert_int_eq(d.labels.count, 10000);
  rt_dataset_free(&d);
}
END_TEST

/* ---- rt_safetensors.c ---- */

static RtNamedTensor named(const char *name, int dtype, int rank, const int64_t *dims,
                           double *values) {
  RtNamedTensor t = {.name = name, .dtype = dtype, .rank = rank, .values = values};
  for (int i = 0; i < rank; i++)
    t.dims[i] = dims[i];
  return t;
}

START_TEST(st_round_trip) {
  double v0[1] = {3.5};
  double v1[3] = {1.0f / 3, -2, 1e30f};
  double v2[6] = {1.0 / 3, -1e300, 5e-324, 0, -0.0, 123456789.123456789};
  double v3[8] = {-2147483648.0, 2147483647, 0, -1, 1, 7, 8, 9};
  double v4[24];
  for (int i = 0; i < 24; i++)
    v4[i] = i * 0.25 - 3;
  RtNamedTensor ts[] = {
      named("scalar", KILN_F32, 0, NULL, v0),
      named("fc1.bias", KILN_F32, 1, (int64_t[]){3}, v1),
      named("f64 \"quoted\"\\name", KILN_F64, 2, (int64_t[]){2, 3}, v2),
      named("ints", KILN_I32, 3, (int64_t[]){2, 2, 2}, v3),
      named("conv.weight", KILN_F32, 4, (int64_t[]){2, 3, 2, 2}, v4),
      named("empty", KILN_F64, 2, (int64_t[]){0, 5}, NULL),
  };
  int n = sizeof ts / sizeof ts[0];
  char err[RT_ERR_LEN] = "";
  ck_assert_msg(rt_safetensors_save(tpath("m.safetensors"), ts, n, err) == 0, "%s", err);
  RtNamedTensor *back;
  int nb;
  ck_assert_msg(rt_safetensors_load(tpath("m.safetensors"), &back, &nb, err) == 0, "%s", err);
  ck_assert_int_eq(nb, n);
  for (int i = 0; i < n; i++) {
    ck_assert_str_eq(back[i].name, ts[i].name);
    ck_assert_int_eq(back[i].dtype, ts[i].dtype);
    ck_assert_int_eq(back[i].rank, ts[i].rank);
    int64_t numel = 1;
    for (int d = 0; d < ts[i].rank; d++) {
      ck_assert_int_eq(back[i].dims[d], ts[i].dims[d]);
      numel *= ts[i].dims[d];
    }
    for (int64_t k = 0; k < numel; k++)
      ck_assert_msg(back[i].values[k] == ts[i].values[k] ||
                        (ts[i].dtype == KILN_F32 && back[i].values[k] == (float)ts[i].values[k]),
                    "%s[%lld]: %.17g != %.17g", ts[i].name, (long long)k, back[i].values[k],
                    ts[i].values[k]);
  }
  ck_assert(signbit(back[2].values[4]));
  rt_safetensors_free(back, nb);
  ck_assert_int_eq(count_files(tmpdir), 1); /* no temporary left behind */
}
END_TEST

START_TEST(st_header_bytes) {
  double v[3] = {1, -2, 0.5};
  RtNamedTensor ts[] = {named("a", KILN_F32, 1, (int64_t[]){2}, v),
                        named("b", KILN_I32, 0, NULL, v + 1)};
  char err[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_save(tpath("h.st"), ts, 2, err), 0);
  size_t len;
  char *s = read_all(tpath("h.st"), &len);
  const char *json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[8,12]}}";
  size_t jl = strlen(json), hl = (jl + 7) / 8 * 8;
  ck_assert_uint_eq(len, 8 + hl + 12);
  unsigned char lenle[8] = {(unsigned char)hl, (unsigned char)(hl >> 8)};
  ck_assert_mem_eq(s, lenle, 8);
  ck_assert_mem_eq(s + 8, json, jl);
  for (size_t i = jl; i < hl; i++)
    ck_assert_int_eq(s[8 + i], ' ');
  static const unsigned char data[12] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 0xfe, 0xff, 0xff, 0xff};
  ck_assert_mem_eq(s + 8 + hl, data, 12);
  free(s);
}
END_TEST

/* Writes a file made of an 8-byte length, the header (padded or not as given) and data. */
static void write_st(const char *path, const char *header, const void *data, size_t dlen) {
  size_t hl = strlen(header);
  unsigned char *buf = malloc(8 + hl + dlen + 1);
  for (int i = 0; i < 8; i++)
    buf[i] = (unsigned char)(hl >> (8 * i));
  memcpy(buf + 8, header, hl);
  memcpy(buf + 8 + hl, data, dlen);
  write_bytes(path, buf, 8 + hl + dlen);
  free(buf);
}

START_TEST(st_other_dtypes) {
  /* Written by hand, as another tool would: F16 1, -2, 65504, 2^-24; BF16 1.5, -inf; I64 -3,
   * 2^40; plus metadata and a name with a \u escape. */
  const char *hdr = "{\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"}, "
                    "\"h\" : {\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                    "\"b\\u00e9\":{\"shape\":[2],\"dtype\":\"BF16\",\"data_offsets\":[8,12]},"
                    "\"l\":{\"dtype\":\"I64\",\"shape\":[1,2],\"data_offsets\":[12,28]}}   ";
  unsigned char data[28] = {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00, /* F16 */
                            0xc0, 0x3f, 0x80, 0xff,                         /* BF16 */
                            0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* I64 -3 */
                            0, 0, 0, 0, 0, 1, 0, 0};                        /* 2^40 */
  write_st(tpath("o.st"), hdr, data, sizeof data);
  RtNamedTensor *t;
  int n;
  char err[RT_ERR_LEN] = "";
  ck_assert_msg(rt_safetensors_load(tpath("o.st"), &t, &n, err) == 0, "%s", err);
  ck_assert_int_eq(n, 3);
  ck_assert_str_eq(t[0].name, "h");
  ck_assert_int_eq(t[0].dtype, RT_F16);
  ck_assert_double_eq(t[0].values[0], 1);
  ck_assert_double_eq(t[0].values[1], -2);
  ck_assert_double_eq(t[0].values[2], 65504);
  ck_assert_double_eq(t[0].values[3], ldexp(1, -24));
  ck_assert_str_eq(t[1].name, "b\xc3\xa9");
  ck_assert_int_eq(t[1].dtype, RT_BF16);
  ck_assert_double_eq(t[1].values[0], 1.5);
  ck_assert(isinf(t[1].values[1]) && t[1].values[1] < 0);
  ck_assert_int_eq(t[2].dtype, RT_I64);
  ck_assert_int_eq(t[2].rank, 2);
  ck_assert_double_eq(t[2].values[0], -3);
  ck_assert_double_eq(t[2].values[1], 1099511627776.0);
  /* ...and back out through the writer, rounding to nearest even. */
  double hv[6] = {1, -2, 65504, ldexp(1, -24), 1 + ldexp(1, -11), 1e6};
  RtNamedTensor w[] = {named("h", RT_F16, 1, (int64_t[]){6}, hv),
                       named("b", RT_BF16, 1, (int64_t[]){2}, t[1].values),
                       named("l", RT_I64, 2, (int64_t[]){1, 2}, t[2].values)};
  ck_assert_int_eq(rt_safetensors_save(tpath("o2.st"), w, 3, err), 0);
  rt_safetensors_free(t, n);
  ck_assert_int_eq(rt_safetensors_load(tpath("o2.st"), &t, &n, err), 0);
  ck_assert_double_eq(t[0].values[2], 65504);
  ck_assert_double_eq(t[0].values[3], ldexp(1, -24));
  ck_assert_double_eq(t[0].values[4], 1); /* a tie, to the even neighbour */
  ck_assert(isinf(t[0].values[5]));
  ck_assert_double_eq(t[1].values[0], 1.5);
  ck_assert_double_eq(t[2].values[1], 1099511627776.0);
  rt_safetensors_free(t, n);
}
END_TEST

/* Loads path, expects failure with a one-line message naming the file and containing want. */
static void expect_st_error(const char *path, const char *want) {
  RtNamedTensor *t = (RtNamedTensor *)1;
  int n = 5;
  char err[RT_ERR_LEN] = "";
  ck_assert_int_eq(rt_safetensors_load(path, &t, &n, err), -1);
  ck_assert_ptr_null(t);
  ck_assert_int_eq(n, 0);
  ck_assert_msg(!strncmp(err, path, strlen(path)), "message does not name the file: %s", err);
  ck_assert_msg(strstr(err, want) != NULL, "want '%s' in: %s", want, err);
  ck_assert_ptr_null(strchr(err, '\n'));
}

START_TEST(st_errors) {
  static const unsigned char d16[16] = {0};
  struct { const char *header; size_t dlen; const char *want; } cases[] = {
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7,
       "data_offsets [0, 8] out of range (the data is 7 bytes)"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "out of range"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
       "shape and dtype F32 need 12 bytes but data_offsets cover 8"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
       "data_offsets [4, 12] overlap tensor 'a'"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
       "unused bytes [0, 4) in the data before tensor 'a'"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
       "size mismatch: tensors cover 4 data bytes, the file has 8"},
      {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
       "tensor 'a' has unsupported dtype \"U8\""},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
       "tensor 'a' has more than 6 dimensions"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate tensor a"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "missing \"data_offsets\" for tensor a"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
       "unexpected or repeated field x"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
       "unexpected or repeated field shape"},
      {"{\"a\" {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
       "bad header JSON at byte 5: expected ':'"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}", 4,
       "expected a non-negative integer"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
       "expected a non-negative integer"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
       "expected an integer, found a fraction"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "leading zero"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4,
       "integer too large"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4,
       "bad header JSON"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4,
       "unexpected text after the header object"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "expected '}'"},
      {"{\"a\x01\":{}}", 0, "control character in string"},
      {"{\"\\ud800\":{}}", 0, "unpaired surrogate"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"__metadata__\":[]}", 4,
       "\"__metadata__\" must be an object"},
      {"[]", 0, "expected '{'"},
      {"", 0, "expected '{'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "e%zu.st", i);
    write_st(tpath(name), cases[i].header, d16, cases[i].dlen);
    RtNamedTensor *t;
    int n;
    char msg[RT_ERR_LEN] = "";
    ck_assert_msg(rt_safetensors_load(tpath(name), &t, &n, msg) == -1, "case %zu loaded", i);
    expect_st_error(tpath(name), cases[i].want);
  }

  /* File-level damage. */
  expect_st_error(tpath("absent.st"), "cannot open");
  write_bytes(tpath("short.st"), "\x10\0\0", 3);
  expect_st_error(tpath("short.st"), "truncated: 3 bytes, too short for the 8-byte header length");
  write_bytes(tpath("big.st"), "\xff\xff\0\0\0\0\0\0{}", 10);
  expect_st_error(tpath("big.st"), "header length 65535 is larger than the file (10 bytes)");
  write_bytes(tpath("huge.st"), "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
  expect_st_error(tpath("huge.st"), "is larger than the file");
  /* A good file cut short at every length fails cleanly. */
  double v[4] = {1, 2, 3, 4};
  RtNamedTensor ts[] = {named("w", KILN_F32, 2, (int64_t[]){2, 2}, v)};
  char err[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_save(tpath("good.st"), ts, 1, err), 0);
  size_t len;
  char *s = read_all(tpath("good.st"), &len);
  for (size_t cut = 0; cut < len; cut++) {
    write_bytes(tpath("cut.st"), s, cut);
    expect_st_error(tpath("cut.st"), "");
  }
  free(s);
}
END_TEST

START_TEST(st_empty_and_bad_input) {
  char err[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_save(tpath("none.st"), NULL, 0, err), 0);
  RtNamedTensor *t;
  int n;
  ck_assert_int_eq(rt_safetensors_load(tpath("none.st"), &t, &n, err), 0);
  ck_assert_int_eq(n, 0);
  rt_safetensors_free(t, n);
  double v[2] = {1, 2};
  RtNamedTensor dup[] = {named("x", KILN_F32, 1, (int64_t[]){1}, v),
                         named("x", KILN_F32, 1, (int64_t[]){1}, v + 1)};
  ck_assert_int_eq(rt_safetensors_save(tpath("dup.st"), dup, 2, err), -1);
  ck_assert_msg(strstr(err, "tensor name 'x' appears twice"), "%s", err);
  RtNamedTensor bad = named("y", 17, 1, (int64_t[]){1}, v);
  ck_assert_int_eq(rt_safetensors_save(tpath("bad.st"), &bad, 1, err), -1);
  ck_assert_msg(strstr(err, "invalid dtype"), "%s", err);
  ck_assert_int_eq(count_files(tmpdir), 1);
}
END_TEST

/* Every writer (parameter files, metrics CSV, pictures) writes through a symbolic link to the
 * file it leads to (a dangling one's file is created), so the link stays a link; a device and
 * any name under /dev are written as they are, never replaced. */
START_TEST(writers_keep_links_and_devices) {
  double v[4] = {0, 0.25, 0.5, 1};
  RtNamedTensor a = named("a", KILN_F32, 1, (int64_t[]){4}, v);
  char err[RT_ERR_LEN] = "", link[512], file[512];
  static const char *const kinds[] = {"st", "csv", "pgm"};
  for (int k = 0; k < 3; k++) {
    for (int dangling = 0; dangling < 2; dangling++) {
      snprintf(file, sizeof file, "%s", tpath(dangling ? "made" : "real"));
      snprintf(link, sizeof link, "%s", tpath("link"));
      unlink(link);
      unlink(file);
      if (!dangling) {
        FILE *f = fopen(file, "w");
        ck_assert_ptr_nonnull(f);
        fclose(f);
      }
      ck_assert_int_eq(symlink(dangling ? "made" : file, link), 0); /* relative when dangling */
      int rc;
      if (k == 0) {
        rc = rt_safetensors_save(link, &a, 1, err);
      } else if (k == 1) {
        RtCsv c;
        memset(&c, 0, sizeof c);
        rc = rt_csv_open(&c, link, "x,y", -1, err);
        rt_csv_row(&c, "%d,%d", 1, 2);
        rc |= rt_csv_close(&c, err);
      } else {
        rc = rt_write_pgm(link, v, 2, 2, err);
      }
      ck_assert_msg(rc == 0, "%s: %s", kinds[k], err);
      struct stat st;
      ck_assert_int_eq(lstat(link, &st), 0);
      ck_assert_msg(S_ISLNK(st.st_mode), "%s: the link was replaced", kinds[k]);
      ck_assert_int_eq(stat(file, &st), 0);
      ck_assert_msg(S_ISREG(st.st_mode) && st.st_size > 0, "%s: nothing written", kinds[k]);
    }
  }
  unlink(link);
  unlink(tpath("made"));
  unlink(tpath("real"));
  ck_assert_int_eq(rt_safetensors_save("/dev/null", &a, 1, err), 0);
  ck_assert_int_eq(rt_write_pgm("/dev/null", v, 2, 2, err), 0);
  struct stat st;
  ck_assert_int_eq(lstat("/dev/null", &st), 0);
  ck_assert(S_ISCHR(st.st_mode));
  char target[4096];
  ck_assert_int_eq(rt_write_target("/dev/stdout", target, sizeof target, err), 1);
  ck_assert_int_eq(rt_write_target("/proc/self/fd/1", target, sizeof target, err), 1);
  ck_assert_int_eq(rt_write_target(tpath("new.st"), target, sizeof target, err), 0);
  ck_assert_str_eq(target, tpath("new.st"));
}
END_TEST

START_TEST(st_atomic_write) {
  double v[2] = {1, 2}, w[2] = {5, 6};
  RtNamedTensor a = named("a", KILN_F32, 1, (int64_t[]){2}, v);
  RtNamedTensor b = named("a", KILN_F32, 1, (int64_t[]){2}, w);
  char err[RT_ERR_LEN] = "";
  /* Overwriting replaces the file and leaves nothing else. */
  ck_assert_int_eq(rt_safetensors_save(tpath("c.st"), &a, 1, err), 0);
  ck_assert_int_eq(rt_safetensors_save(tpath("c.st"), &b, 1, err), 0);
  ck_assert_int_eq(count_files(tmpdir), 1);
  RtNamedTensor *t;
  int n;
  ck_assert_int_eq(rt_safetensors_load(tpath("c.st"), &t, &n, err), 0);
  ck_assert_double_eq(t[0].values[1], 6);
  rt_safetensors_free(t, n);

  /* Into a directory that does not exist. */
  ck_assert_int_eq(rt_safetensors_save(tpath("no/such/dir.st"), &a, 1, err), -1);
  ck_assert_msg(strstr(err, "no/such/dir.st: cannot create") &&
                    strstr(err, "No such file or directory"), "%s", err);

  /* Over a directory: refused, nothing created, the directory stays. */
  ck_assert_int_eq(mkdir(tpath("adir"), 0755), 0);
  ck_assert_int_eq(rt_safetensors_save(tpath("adir"), &a, 1, err), -1);
  ck_assert_msg(strstr(err, "adir: is a directory"), "%s", err);
  struct stat st;
  ck_assert_int_eq(stat(tpath("adir"), &st), 0);
  ck_assert(S_ISDIR(st.st_mode));
  ck_assert_int_eq(count_files(tmpdir), 2);

  /* A failed save does not touch the existing checkpoint. */
  RtNamedTensor bad = named("a", KILN_F32, -1, NULL, w);
  ck_assert_int_eq(rt_safetensors_save(tpath("c.st"), &bad, 1, err), -1);
  ck_assert_int_eq(rt_safetensors_load(tpath("c.st"), &t, &n, err), 0);
  ck_assert_double_eq(t[0].values[1], 6);
  rt_safetensors_free(t, n);

  /* A directory we may not write to (root may write anywhere, so only as another user). */
  if (geteuid() != 0) {
    ck_assert_int_eq(mkdir(tpath("ro"), 0555), 0);
    ck_assert_int_eq(rt_safetensors_save(tpath("ro/x.st"), &a, 1, err), -1);
    ck_assert_msg(strstr(err, "Permission denied"), "%s", err);
    ck_assert_int_eq(count_files(tpath("ro")), 0);
    chmod(tpath("ro"), 0755);
  }
  /* /dev/full accepts the open and fails the write: stands in for a full disk. A device is
   * written as it is, never replaced by a rename. */
  ck_assert_int_eq(rt_safetensors_save("/dev/full", &a, 1, err), -1);
  ck_assert_msg(strstr(err, "/dev/full: write failed: No space left on device"), "%s", err);
  struct stat full;
  ck_assert_int_eq(stat("/dev/full", &full), 0);
  ck_assert(S_ISCHR(full.st_mode));

  /* A symlink planted where a predictable temporary name would be (P.tmp.PID, what the writer
   * once used) is never followed: its target keeps its bytes, and the save succeeds. */
  char link[512];
  snprintf(link, sizeof link, "%s.tmp.%ld", tpath("victim.st"), (long)getpid());
  FILE *victim = fopen(tpath("target.txt"), "w");
  fputs("keep me", victim);
  fclose(victim);
  ck_assert_int_eq(symlink(tpath("target.txt"), link), 0);
  ck_assert_int_eq(rt_safetensors_save(tpath("victim.st"), &a, 1, err), 0);
  char *kept = read_all(tpath("target.txt"), NULL);
  ck_assert_str_eq(kept, "keep me");
  free(kept);
  ck_assert_int_eq(rt_safetensors_load(tpath("victim.st"), &t, &n, err), 0);
  ck_assert_double_eq(t[0].values[0], v[0]);
  rt_safetensors_free(t, n);
}
END_TEST

/* ---- rt_progress.c ---- */

START_TEST(progress_lines) {
  FILE *f = fopen(tpath("p.txt"), "w+");
  RtProgress p;
  rt_progress_init(&p, f);
  ck_assert_int_eq(p.tty, 0);
  rt_progress_update(&p, 1, 3, 120, 938, 0.41234, 5400.2, 31.4);
  ck_assert_int_eq(ftell(f), 0); /* not a terminal: nothing before 5 seconds */
  p.last_draw -= 5.5;
  rt_progress_update(&p, 1, 3, 120, 938, 0.41234, 5400.2, 31.4);
  rt_progress_update(&p, 1, 3, 121, 938, 0.4, 5400, 30);
  p.last_draw -= 5.5;
  rt_progress_update(&p, 2, 3, 5, 938, 0.3, 6000, 3725);
  rt_progress_done(&p);
  fflush(f);
  char *s = read_all(tpath("p.txt"), NULL);
  ck_assert_str_eq(s, "epoch 1/3  step 120/938  loss 0.4123  5400 img/s  ETA 0:31\n"
                      "epoch 2/3  step 5/938  loss 0.3000  6000 img/s  ETA 1:02:05\n");
  free(s);
  fclose(f);

  /* As a terminal: the first frame at once, redrawn in place, throttled, ended by done. */
  f = fopen(tpath("q.txt"), "w+");
  rt_progress_init(&p, f);
  p.tty = 1;
  rt_progress_update(&p, 1, 2, 1, 10, 1.5, 100, 0.5);
  rt_progress_update(&p, 1, 2, 2, 10, 1.5, 100, 0.5); /* within 0.1 s: skipped */
  p.last_draw -= 0.2;
  rt_progress_update(&p, 1, 2, 3, 10, 1.25, 100, -1);
  rt_progress_done(&p);
  rt_progress_done(&p); /* a second done adds nothing */
  rt_progress_update(&p, 0, 0, 7, 9, 0.5, 10, 59.6); /* no epochs: the epoch part is left out */
  fflush(f);
  s = read_all(tpath("q.txt"), NULL);
  ck_assert_str_eq(s, "\repoch 1/2  step 1/10  loss 1.5000  100 img/s  ETA 0:01\033[K"
                      "\repoch 1/2  step 3/10  loss 1.2500  100 img/s  ETA ?\033[K\n"
                      "\rstep 7/9  loss 0.5000  10 img/s  ETA 1:00\033[K");
  free(s);
  fclose(f);
}
END_TEST

START_TEST(progress_clock_and_csv) {
  double a = rt_now();
  nanosleep(&(struct timespec){0, 20000000}, NULL);
  double b = rt_now();
  ck_assert(b - a >= 0.019 && b - a < 1);
  RtCsv c;
  char err[RT_ERR_LEN];
  ck_assert_int_eq(rt_csv_open(&c, tpath("m.csv"), "epoch,loss", 0, err), 0);
  rt_csv_row(&c, "%d,%.4f", 1, 0.5);
  rt_csv_row(&c, "%d,%.4f", 2, 0.25);
  char *s = read_all(tpath("m.csv"), NULL); /* rows are flushed as they are written */
  ck_assert_str_eq(s, "epoch,loss\n1,0.5000\n2,0.2500\n");
  free(s);
  ck_assert_int_eq(rt_csv_close(&c, err), 0);
  /* A resumed run keeps the rows of the epochs before its checkpoint (1 here), none after. */
  ck_assert_int_eq(rt_csv_open(&c, tpath("m.csv"), "epoch,loss", 1, err), 0);
  rt_csv_row(&c, "%d,%.4f", 2, 0.125);
  ck_assert_int_eq(rt_csv_close(&c, err), 0);
  s = read_all(tpath("m.csv"), NULL);
  ck_assert_str_eq(s, "epoch,loss\n1,0.5000\n2,0.1250\n");
  free(s);
  ck_assert_int_eq(rt_csv_open(&c, tpath("nodir/m.csv"), "x", 0, err), -1);
  ck_assert_msg(strstr(err, "nodir/m.csv: cannot create a file in its directory: No such file"),
                "%s", err);
  ck_assert_int_eq(rt_csv_open(&c, "/dev/full", "x", 0, err), 0);
  rt_csv_row(&c, "%d", 1);
  ck_assert_int_eq(rt_csv_close(&c, err), -1);
  ck_assert_msg(strstr(err, "/dev/full: write failed"), "%s", err);
}
END_TEST

/* ---- rt_train.c: options ---- */

typedef struct ParseCall { int argc; char **argv; RtOptions o; } ParseCall;

static int do_parse(void *arg) {
  ParseCall *c = arg;
  rt_options_default(&c->o);
  return rt_options_parse(&c->o, c->argc, c->argv, "trainer");
}

static int parse(ParseCall *c, char **out, char **err, ...) {
  static char *argv[32];
  va_list ap;
  va_start(ap, err);
  int argc = 0;
  argv[argc++] = "trainer";
  for (char *a; (a = va_arg(ap, char *));)
    argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;
  c->argc = argc;
  c->argv = argv;
  return capture(do_parse, c, out, err);
}

START_TEST(options) {
  ParseCall c;
  char *out, *err;
  ck_assert_int_eq(parse(&c, &out, &err, "--data", "/d", "--epochs", "3", "--lr=0.05", "--seed",
                         "18446744073709551615", "--save", "s.st", "--load", "l.st", "--metrics",
                         "m.csv", "--limit-train", "100", "--limit-test=50", "--quiet", "--patience", "4", NULL), 0);
  ck_assert_str_eq(out, "");
  ck_assert_str_eq(err, "");
  free(out), free(err);
  ck_assert_str_eq(c.o.data_dir, "/d");
  ck_assert_int_eq(c.o.epochs, 3);
  ck_assert_double_eq(c.o.lr, 0.05);
  ck_assert_int_eq(c.o.have_seed, 1);
  ck_assert_uint_eq(c.o.seed, UINT64_MAX);
  ck_assert_str_eq(c.o.save_path, "s.st");
  ck_assert_str_eq(c.o.load_path, "l.st");
  ck_assert_str_eq(c.o.metrics_path, "m.csv");
  ck_assert_int_eq(c.o.limit_train, 100);
  ck_assert_int_eq(c.o.limit_test, 50);
  ck_assert_int_eq(c.o.quiet, 1);
  ck_assert_int_eq(c.o.patience, 4);
  ck_assert_str_eq(c.o.prog_name, "trainer");

  /* The long-run options: checkpoints by steps or epochs, validation by count or fraction. */
  ck_assert_int_eq(parse(&c, &out, &err, "--checkpoint-every", "2epochs", "--checkpoint-dir",
                         "ck", "--keep-checkpoints", "5", "--resume", "r.st", "--validation",
                         "0.25", "--max-memory", "1.5G", NULL), 0);
  free(out), free(err);
  ck_assert_int_eq(c.o.checkpoint_every, 2);
  ck_assert_int_eq(c.o.checkpoint_epochs, 1);
  ck_assert_str_eq(c.o.checkpoint_dir, "ck");
  ck_assert_int_eq(c.o.keep_checkpoints, 5);
  ck_assert_str_eq(c.o.resume_path, "r.st");
  ck_assert_double_eq(c.o.validation, 0.25);
  ck_assert_int_eq(c.o.max_memory, 1610612736);
  ck_assert_int_eq(parse(&c, &out, &err, "--checkpoint-every", "300", "--validation", "5000",
                         NULL), 0);
  free(out), free(err);
  ck_assert_int_eq(c.o.checkpoint_every, 300);
  ck_assert_int_eq(c.o.checkpoint_epochs, 0);
  ck_assert_str_eq(c.o.checkpoint_dir, "checkpoints");
  ck_assert_int_eq(c.o.keep_checkpoints, 3);
  ck_assert_double_eq(c.o.validation, 5000);

  ck_assert_int_eq(parse(&c, &out, &err, NULL), 0);
  ck_assert_ptr_null(c.o.data_dir);
  ck_assert_int_eq(c.o.epochs, 0);
  ck_assert_double_eq(c.o.lr, -1);
  ck_assert_int_eq(c.o.have_seed, 0);
  free(out), free(err);

  ck_assert_int_eq(parse(&c, &out, &err, "--epochs", "2", "--help", NULL), 1);
  ck_assert_ptr_nonnull(strstr(out, "usage: trainer [options]"));
  ck_assert_ptr_nonnull(strstr(out, "--limit-train N"));
  free(out), free(err);

  struct { const char *a, *b, *want; } bad[] = {
      {"--epochs", "0", "trainer: error: --epochs: expected a positive number of epochs, got '0'\n"},
      {"--epochs", "3x", "got '3x'"},
      {"--epochs", "-1", "got '-1'"},
      {"--lr", "abc", "trainer: error: --lr: expected a non-negative learning rate, got 'abc'\n"},
      {"--lr", "-0.1", "got '-0.1'"},
      {"--lr", "nan", "got 'nan'"},
      {"--seed", "-5", "expected an unsigned 64-bit seed, got '-5'"},
      {"--seed", "18446744073709551616", "unsigned 64-bit seed"},
      {"--limit-test", "x", "--limit-test: expected a positive count, got 'x'"},
      {"--patience", "0", "--patience: expected a positive number of epochs, got '0'"},
      {"--data", "", "option --data needs a non-empty value"},
      {"--checkpoint-every", "0", "--checkpoint-every: expected a positive count, got '0'"},
      {"--checkpoint-every", "2days", "--checkpoint-every: expected a number of steps (500) or "
                                      "epochs (1epochs), got '2days'"},
      {"--keep-checkpoints", "0", "--keep-checkpoints: expected a positive count, got '0'"},
      {"--validation", "1", "--validation: expected a number of examples or a fraction between "
                            "0 and 1, got '1'"},
      {"--validation", "2.5", "got '2.5'"},
      {"--validation", "-0.1", "got '-0.1'"},
      {"--max-memory", "2T", "--max-memory: expected a size in bytes, or with K, M or G (2G), "
                             "got '2T'"},
      {"--max-memory", "0", "got '0'"},
      {"--frobnicate", "1", "trainer: error: unknown option '--frobnicate' (see --help)\n"},
      {"stray", NULL, "trainer: error: unexpected argument 'stray' (see --help)\n"},
      {"--save", NULL, "trainer: error: option --save needs a value\n"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_int_eq(parse(&c, &out, &err, bad[i].a, bad[i].b, NULL), -1);
    ck_assert_msg(strstr(err, bad[i].want) != NULL, "want '%s' in '%s'", bad[i].want, err);
    ck_assert_str_eq(out, "");
    free(out), free(err);
  }
}
END_TEST

/* ---- rt_train.c: the driver, over a fake backend ---- */

/* A data model with everything the driver handles: a parameter w and a running statistic, the
 * learning rate, optimizer state, image and label inputs, and the three outputs. Batch 4. */
enum { T_W, T_RUNNING, T_LR, T_STEPS, T_IMAGE, T_LABEL, T_LOSS, T_EVAL_LOSS, T_EVAL_OUT, NT };
#define B 4
/* The fake's entries: looked up by name, so their order here is the fake's own. */
enum { E_EVAL, E_TRAIN, NE };
static const kiln_entry fake_entries[NE] = {[E_EVAL] = {"eval", NULL}, [E_TRAIN] = {"train", NULL}};
static const kiln_setting fake_settings[] = {{"epochs", "1"}, {"seed", "1"}};
static const kiln_tensor data_tensors[NT] = {
    [T_W] = {.name = "w", .role = KILN_ROLE_PARAM, .dtype = KILN_F32, .rank = 1, .dims = {1},
             .batch_axis = -1, .init = KILN_INIT_CONST, .init_a = 0.5},
    [T_RUNNING] = {.name = "bn.running_var", .role = KILN_ROLE_STATE, .dtype = KILN_F32,
                   .rank = 1, .dims = {2}, .batch_axis = -1, .init = KILN_INIT_ONES},
    [T_LR] = {.name = "lr", .role = KILN_ROLE_HYPER, .dtype = KILN_F32, .rank = 0,
              .batch_axis = -1, .init = KILN_INIT_CONST, .init_a = 0.1},
    [T_STEPS] = {.name = "adam.t", .role = KILN_ROLE_OPT, .dtype = KILN_F32, .rank = 0,
                 .batch_axis = -1},
    [T_IMAGE] = {.name = "image", .role = KILN_ROLE_INPUT, .dtype = KILN_F32, .rank = 4,
                 .dims = {B, 1, 2, 2}, .batch_axis = 0, .feed = "images", .scale = 1.0,
                 .entries = 1 << E_TRAIN | 1 << E_EVAL},
    [T_LABEL] = {.name = "label", .role = KILN_ROLE_INPUT, .dtype = KILN_I32, .rank = 1,
                 .dims = {B}, .batch_axis = 0, .feed = "labels",
                 .scale = 1.0, .entries = 1 << E_TRAIN | 1 << E_EVAL},
    [T_LOSS] = {.name = "loss", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F32, .rank = 0,
                .batch_axis = -1, .entries = 1 << E_TRAIN},
    [T_EVAL_LOSS] = {.name = "eval.loss", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F32, .rank = 0,
                     .batch_axis = -1, .entries = 1 << E_EVAL},
    [T_EVAL_OUT] = {.name = "eval.output", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F32,
                    .rank = 2, .dims = {B, 3}, .batch_axis = 0, .entries = 1 << E_EVAL},
};

enum { MAXEX = 64, MAXLOG = 256 };

typedef struct Fake {
  const kiln_program *prog;
  double *vals[16];          /* each tensor's values, numel for the maximum batch */
  int train_visits[MAXEX];   /* how often each training example was fed */
  int epochs_done;           /* evaluation passes seen, i.e. epochs finished */
  int problems;              /* anything the driver got wrong, counted */
  char problem[256];
  int64_t batches[MAXLOG];   /* batch sizes of the train calls, in order */
  int nbatches;
  int order[MAXLOG * B];     /* training examples in the order they came */
  int norder;
  int eval_prev;             /* the last example of the evaluation pass so far */
  int last_entry;            /* the entry run before this one */
  double first_w, first_lr;  /* what the first train call saw */
  int fail_at;               /* >0: the nth run fails */
  int nan_loss_at;           /* >0: the nth train call returns a NaN loss (bad-label flag) */
  int nan_state_at;          /* >0: the nth train call makes bn.running_var NaN */
  int nan_eval;              /* the eval loss is NaN (bad-label flag) */
  int runs;
  const double *eval_curve;  /* non-NULL: the eval loss of epoch e is eval_curve[e - 1] */
  double w_at_epoch[16];     /* w when epoch e was evaluated (e < 16) */
  double lr_at_epoch[16];    /* lr when epoch e was evaluated: the one its steps used */
} Fake;

static void fake_problem(Fake *f, const char *msg, int a, int b) {
  if (!f->problems++)
    snprintf(f->problem, sizeof f->problem, "%s (%d, %d)", msg, a, b);
}

/* The example in row k of the image input: pixel 0 + 256 * pixel 1. */
static int fake_example(Fake *f, int64_t k) {
  const double *img = f->vals[T_IMAGE] + k * 4;
  if (img[2] != 7 || img[3] != 7)
    fake_problem(f, "pixels 2 and 3 should be 7", (int)img[2], (int)img[3]);
  return (int)img[0] + 256 * (int)img[1];
}

static int fake_run(void *self, int entry, int64_t batch, char *err) {
  Fake *f = self;
  if (f->fail_at && ++f->runs == f->fail_at)
    return rt_errf(err, "fake backend: injected failure");
  if (batch < 1 || batch > B)
    fake_problem(f, "batch out of range", (int)batch, B);
  double sum = 0;
  if (entry == E_TRAIN) {
    f->last_entry = E_TRAIN;
    if (!f->nbatches) {
      f->first_w = f->vals[T_W][0];
      f->first_lr = f->vals[T_LR][0];
    }
    if (f->nbatches < MAXLOG)
      f->batches[f->nbatches++] = batch;
    for (int64_t k = 0; k < batch; k++) {
      int ex = fake_example(f, k);
      if (ex < 0 || ex >= MAXEX) {
        fake_problem(f, "example out of range", ex, 0);
        continue;
      }
      if (f->vals[T_LABEL][k] != ex % 3)
        fake_problem(f, "label does not match", ex, (int)f->vals[T_LABEL][k]);
      f->train_visits[ex]++;
      if (f->norder < MAXLOG * B)
        f->order[f->norder++] = ex;
      sum += ex;
    }
    f->vals[T_LOSS][0] = sum / (double)batch; /* the mean example index */
    f->vals[T_W][0] -= f->vals[T_LR][0] * (f->vals[T_W][0] - 1); /* w drifts toward 1 */
    f->vals[T_RUNNING][1] += 1;
    f->vals[T_STEPS][0] += 1;
    if (f->nan_loss_at == f->nbatches)
      f->vals[T_LOSS][0] = NAN;
    if (f->nan_state_at == f->nbatches)
      f->vals[T_RUNNING][0] = NAN;
    return 0;
  }
  if (entry != E_EVAL) {
    fake_problem(f, "unexpected entry", entry, 0);
    return 0;
  }
  if (f->last_entry == E_TRAIN) { /* the epoch's evaluation: every example seen once so far */
    f->epochs_done++;
    if (f->epochs_done < 16)
      f->w_at_epoch[f->epochs_done] = f->vals[T_W][0],
      f->lr_at_epoch[f->epochs_done] = f->vals[T_LR][0];
    for (int i = 0; i < MAXEX; i++)
      if (f->train_visits[i] && f->train_visits[i] != f->epochs_done)
        fake_problem(f, "example visited the wrong number of times", i, f->train_visits[i]);
  }
  f->last_entry = entry;
  for (int64_t k = 0; k < batch; k++) {
    int ex = fake_example(f, k);
    /* Each pass (validation examples, then perhaps the test set) walks its examples in order. */
    if (k == 0 && ex <= f->eval_prev)
      f->eval_prev = -1;
    if (ex <= f->eval_prev)
      fake_problem(f, "evaluation examples out of order", ex, f->eval_prev);
    f->eval_prev = ex;
    if (f->vals[T_LABEL][k] != ex % 3)
      fake_problem(f, "eval label does not match", ex, (int)f->vals[T_LABEL][k]);
    sum += ex;
    /* Predicts the label, except for every fifth example. */
    int pred = ex % 5 ? ex % 3 : (ex + 1) % 3;
    for (int c = 0; c < 3; c++)
      f->vals[T_EVAL_OUT][k * 3 + c] = c == pred ? 2.0 : -1.0;
  }
  f->vals[T_EVAL_LOSS][0] = f->nan_eval ? NAN : sum / (double)batch;
  if (f->eval_curve)
    f->vals[T_EVAL_LOSS][0] = f->eval_curve[f->epochs_done - 1];
  return 0;
}

static void fake_read(void *self, int t, double *out, int64_t n) {
  Fake *f = self;
  if (n > rt_numel(&f->prog->tensors[t], f->prog->batch))
    fake_problem(f, "read past the tensor", t, (int)n);
  else
    memcpy(out, f->vals[t], (size_t)n * sizeof *out);
}

static void fake_write(void *self, int t, const double *in, int64_t n) {
  Fake *f = self;
  if (n > rt_numel(&f->prog->tensors[t], f->prog->batch))
    fake_problem(f, "write past the tensor", t, (int)n);
  else
    memcpy(f->vals[t], in, (size_t)n * sizeof *in);
}

static void fake_init(Fake *f, const kiln_program *p) {
  memset(f, 0, sizeof *f);
  f->prog = p;
  for (int i = 0; i < p->ntensors; i++)
    f->vals[i] = calloc((size_t)rt_numel(&p->tensors[i], p->batch) + 1, sizeof(double));
}

static void fake_free(Fake *f) {
  for (int i = 0; i < f->prog->ntensors; i++)
    free(f->vals[i]);
}

typedef struct TrainCall { RtBackend be; RtOptions o; } TrainCall;

static int do_train(void *arg) {
  TrainCall *c = arg;
  return rt_train(&c->be, &c->o);
}

static kiln_program data_program(void) {
  kiln_program p = {.abi_version = KILN_ABI_VERSION, .model = "fake", .batch = B,
                    .ntensors = NT, .tensors = data_tensors, .nentries = NE,
                    .entries = fake_entries, .nsettings = 2, .settings = fake_settings};
  return p;
}

/* Trains the fake with the given options; returns the exit code, output in out/err. */
static int train_fake(Fake *f, const kiln_program *p, RtOptions *o, char **out, char **err) {
  fake_init(f, p);
  TrainCall c = {{.prog = p, .self = f, .run = fake_run, .read = fake_read, .write = fake_write}, *o};
  return capture(do_train, &c, out, err);
}

static void default_opts(RtOptions *o) {
  rt_options_default(o);
  o->data_dir = tmpdir;
  o->quiet = 1;
}

START_TEST(train_visits_every_example) {
  write_split(tmpdir, "train", 10, 2, 1);
  write_split(tmpdir, "t10k", 7, 2, 0);
  kiln_program p = data_program();
  RtOptions o;
  default_opts(&o);
  o.epochs = 3;
  o.metrics_path = tpath("metrics.csv");
  Fake f;
  char *out, *err;
  ck_assert_int_eq(train_fake(&f, &p, &o, &out, &err), 0);
  ck_assert_msg(f.problems == 0, "%s", f.problem);
  ck_assert_str_eq(err, "");
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(f.train_visits[i], 3);
  ck_assert_int_eq(f.epochs_done, 3);
  /* 10 examples in batches of 4: 4, 4, 2 every epoch. */
  ck_assert_int_eq(f.nbatches, 9);
  for (int i = 0; i < 9; i++)
    ck_assert_int_eq(f.batches[i], i % 3 == 2 ? 2 : 4);
  /* Shuffled, and differently each epoch. */
  ck_assert(memcmp(f.order, (int[]){0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 10 * sizeof(int)) != 0);
  ck_assert(memcmp(f.order, f.order + 10, 10 * sizeof(int)) != 0);
  /* Initial values as the program says. */
  ck_assert_double_eq(f.first_w, 0.5);
  ck_assert_double_eq(f.first_lr, (double)0.1);
  ck_assert_double_eq(f.vals[T_STEPS][0], 9); /* OPT zeroed at the start, then counted */
  /* Train loss: the mean index over the epoch is 4.5 whatever the order. Test loss: the
   * example-weighted mean of batch means over 0..6 = 3 (the mean of the means would be 3.25).
   * Accuracy: all but examples 0 and 5 of 7. */
  ck_assert_msg(!strncmp(out, "final epochs=3 train_loss=4.5000 test_loss=3.0000 "
                              "test_accuracy=0.7143 images_per_s=", 84), "%s", out);
  const char *ips = out + 84;
  ck_assert(*ips >= '0' && *ips <= '9');
  while (*ips >= '0' && *ips <= '9')
    ips++;
  ck_assert_str_eq(ips, "\n");
  free(out), free(err);

  char *csv = read_all(tpath("metrics.csv"), NULL);
  ck_assert_msg(!strncmp(csv, "epoch,train_loss,test_loss,test_accuracy,images_per_s,seconds,lr\n"
                              "1,4.500000,3.000000,0.714286,", 94), "%s", csv);
  ck_assert_msg(strstr(csv, ",0.1\n") != NULL, "%s", csv); /* the model's lr, no schedule */
  int lines = 0;
  for (char *s = csv; *s; s++)
    lines += *s == '\n';
  ck_assert_int_eq(lines, 4);
  ck_assert_ptr_nonnull(strstr(csv, "\n2,4.500000,3.000000,0.714286,"));
  ck_assert_ptr_nonnull(strstr(csv, "\n3,4.500000,3.000000,0.714286,"));
  free(csv);
  fake_free(&f);
}
END_TEST

/* Early stopping: the test loss goes down, then up; training stops `patience` epochs after the
 * best one and leaves the best epoch's parameters and running statistics in place. */
START_TEST(train_early_stopping) {
  write_split(tmpdir, "train", 6, 2, 0);
  write_split(tmpdir, "t10k", 3, 2, 0);
  static const double curve[] = {5, 3, 2, 2, 4, 1, 1, 1, 1, 1};
  kiln_program p = data_program();
  RtOptions o;
  default_opts(&o);
  o.epochs = 10;
  o.patience = 2;
  o.quiet = 0;
  Fake f;
  char *out, *err;
  fake_init(&f, &p);
  f.eval_curve = curve;
  TrainCall c = {{.prog = &p, .self = &f, .run = fake_run, .read = fake_read, .write = fake_write}, o};
  ck_assert_int_eq(capture(do_train, &c, &out, &err), 0);
  ck_assert_msg(f.problems == 0, "%s", f.problem);
  /* best at epoch 3 (a tie at 4 is no improvement), stop after 5 */
  ck_assert_int_eq(f.epochs_done, 5);
  /* Early stopping selects on a validation split (10% of the 6 examples, at least 1: here
   * example 0, which the fake mispredicts), never on the test set, which is measured once at the
   * end (the fake's eval loss is the curve's value for the epochs done, so 4 there). */
  ck_assert_int_eq(f.train_visits[0], 0);
  for (int i = 1; i < 6; i++)
    ck_assert_int_eq(f.train_visits[i], 5);
  ck_assert_msg(!strncmp(out, "final epochs=5 train_loss=3.0000 val_loss=2.0000 "
                              "val_accuracy=0.0000 test_loss=4.0000 test_accuracy=0.6667 "
                              "images_per_s=", 112), "%s", out);
  ck_assert_msg(strstr(err, "early stopping selects on a validation split of 1 training example "
                            "(--validation sets its size)\n"), "%s", err);
  ck_assert_msg(strstr(out, " early_stop=yes best_epoch=3\n"), "%s", out);
  ck_assert_msg(strstr(err, "epoch 3/10") && strstr(err, "(best)"), "%s", err);
  ck_assert_msg(strstr(err, "epoch 5/10") &&
                strstr(err, "(no better validation loss for 2 epochs: stopping)") &&
                strstr(err, "early stopping: stopped after epoch 5; keeping epoch 3"), "%s", err);
  ck_assert(f.w_at_epoch[3] != f.w_at_epoch[5]);
  ck_assert_double_eq(f.vals[T_W][0], f.w_at_epoch[3]);   /* restored */
  ck_assert_double_eq(f.vals[T_RUNNING][1], 1 + 3 * 2);  /* STATE: 1, then +1 per step, 3 epochs */
  ck_assert_double_eq(f.vals[T_STEPS][0], 5 * 2);          /* OPT state is not restored */
  free(out), free(err);
  fake_free(&f);

  /* From the program (the train block's early_stop), never triggered: all epochs, the best kept */
  const kiln_setting patient[] = {{"epochs", "1"}, {"seed", "1"}, {"patience", "3"}};
  p.nsettings = 3;
  p.settings = patient;
  default_opts(&o);
  o.epochs = 6;
  fake_init(&f, &p);
  f.eval_curve = curve;
  c = (TrainCall){{.prog = &p, .self = &f, .run = fake_run, .read = fake_read, .write = fake_write}, o};
  ck_assert_int_eq(capture(do_train, &c, &out, &err), 0);
  ck_assert_int_eq(f.epochs_done, 6);
  ck_assert_msg(strstr(out, "final epochs=6 ") && strstr(out, "test_loss=1.0000") &&
                strstr(out, " early_stop=no best_epoch=6\n"), "%s", out);
  ck_assert_double_eq(f.vals[T_W][0], f.w_at_epoch[6]);
  free(out), free(err);
  fake_free(&f);
}
END_TEST

START_TEST(train_seed_limits_and_lr) {
  write_split(tmpdir, "train", 30, 2, 0);
  write_split(tmpdir, "t10k", 9, 2, 0);
  kiln_program p = data_program();
  RtOptions o;
  default_opts(&o);
  Fake a, b, c;
  char *out, *err;
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 0);
  free(out), free(err);
  ck_assert_int_eq(train_fake(&b, &p, &o, &out, &err), 0);
  free(out), free(err);
  ck_assert_int_eq(a.norder, 30);
  ck_assert_mem_eq(a.order, b.order, 30 * sizeof(int)); /* same seed, same order */
  o.have_seed = 1;
  o.seed = 2;
  ck_assert_int_eq(train_fake(&c, &p, &o, &out, &err), 0);
  free(out), free(err);
  ck_assert(memcmp(a.order, c.order, 30 * sizeof(int)) != 0);
  fake_free(&a), fake_free(&b), fake_free(&c);

  /* --limit-train 5 --limit-test 3 --lr 0.25: examples 0..4 in batches of 4 and 1. */
  default_opts(&o);
  o.limit_train = 5;
  o.limit_test = 3;
  o.lr = 0.25;
  o.epochs = 2;
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 0);
  ck_assert_msg(a.problems == 0, "%s", a.problem);
  ck_assert_int_eq(a.nbatches, 4);
  ck_assert_int_eq(a.batches[0], 4);
  ck_assert_int_eq(a.batches[1], 1);
  for (int i = 0; i < MAXEX; i++)
    ck_assert_int_eq(a.train_visits[i], i < 5 ? 2 : 0);
  ck_assert_double_eq(a.first_lr, 0.25);
  /* Test examples 0, 1, 2: mean 1; example 0 is mispredicted. */
  ck_assert_msg(!strncmp(out, "final epochs=2 train_loss=2.0000 test_loss=1.0000 "
                              "test_accuracy=0.6667 images_per_s=", 84), "%s", out);
  free(out), free(err);
  fake_free(&a);
}
END_TEST

/* The schedule's closed forms, exact where the arithmetic is: warm-up (t+1)/W, then StepLR,
 * ExponentialLR or CosineAnnealingLR counted from the end of the warm-up. */
START_TEST(schedule_closed_forms) {
  RtSchedule s = {.kind = KILN_LR_CONSTANT, .step_size = 1, .t_max = 1};
  ck_assert(!rt_schedule_active(&s));
  ck_assert_double_eq(rt_schedule_lr(&s, 0.3, 0), 0.3);
  ck_assert_double_eq(rt_schedule_lr(&s, 0.3, 1000), 0.3);

  s = (RtSchedule){.kind = KILN_LR_STEP, .step_size = 3, .gamma = 0.5, .t_max = 1};
  static const double step[] = {1, 1, 1, 0.5, 0.5, 0.5, 0.25};
  for (int t = 0; t < 7; t++)
    ck_assert_double_eq(rt_schedule_lr(&s, 1, t), step[t]);
  s.gamma = 0.1; /* torch: base_lr * gamma ** (epoch // step_size) */
  ck_assert_double_eq(rt_schedule_lr(&s, 0.2, 7), 0.2 * pow(0.1, 2));

  s = (RtSchedule){.kind = KILN_LR_EXPONENTIAL, .step_size = 1, .gamma = 0.5, .t_max = 1};
  ck_assert(rt_schedule_active(&s));
  static const double expo[] = {2, 1, 0.5, 0.25, 0.125};
  for (int t = 0; t < 5; t++)
    ck_assert_double_eq(rt_schedule_lr(&s, 2, t), expo[t]);

  /* eta_min + (base - eta_min)(1 + cos(pi t / T_max)) / 2, periodic in 2 T_max as torch's */
  s = (RtSchedule){.kind = KILN_LR_COSINE, .step_size = 1, .t_max = 4, .eta_min = 0.25};
  ck_assert_double_eq(rt_schedule_lr(&s, 1.25, 0), 1.25);
  ck_assert_double_eq_tol(rt_schedule_lr(&s, 1.25, 1), 0.25 + (1 + sqrt(0.5)) / 2, 1e-15);
  ck_assert_double_eq(rt_schedule_lr(&s, 1.25, 2), 0.75);
  ck_assert_double_eq_tol(rt_schedule_lr(&s, 1.25, 3), 0.25 + (1 - sqrt(0.5)) / 2, 1e-15);
  ck_assert_double_eq(rt_schedule_lr(&s, 1.25, 4), 0.25);
  ck_assert_double_eq_tol(rt_schedule_lr(&s, 1.25, 5), 0.25 + (1 - sqrt(0.5)) / 2, 1e-15);
  ck_assert_double_eq(rt_schedule_lr(&s, 1.25, 8), 1.25);

  /* Warm-up alone ends at the base learning rate; before a schedule, the schedule starts when
   * it ends (SequentialLR's milestone). */
  s = (RtSchedule){.kind = KILN_LR_CONSTANT, .step_size = 1, .t_max = 1, .warmup = 4};
  ck_assert(rt_schedule_active(&s));
  static const double warm[] = {0.75, 1.5, 2.25, 3, 3, 3};
  for (int t = 0; t < 6; t++)
    ck_assert_double_eq(rt_schedule_lr(&s, 3, t), warm[t]);
  s = (RtSchedule){.kind = KILN_LR_STEP, .step_size = 1, .gamma = 0.5, .t_max = 1, .warmup = 2};
  static const double warm_step[] = {0.5, 1, 1, 0.5, 0.25};
  for (int t = 0; t < 5; t++)
    ck_assert_double_eq(rt_schedule_lr(&s, 1, t), warm_step[t]);
  s = (RtSchedule){.kind = KILN_LR_COSINE, .step_size = 1, .t_max = 2, .warmup = 1};
  ck_assert_double_eq(rt_schedule_lr(&s, 1, 0), 1);
  ck_assert_double_eq(rt_schedule_lr(&s, 1, 1), 1);
  ck_assert_double_eq(rt_schedule_lr(&s, 1, 2), 0.5);
  ck_assert_double_eq(rt_schedule_lr(&s, 1, 3), 0);
}
END_TEST

/* The schedule as the program's settings carry it, and the ones a trainer refuses. */
START_TEST(schedule_from_settings) {
  char err[RT_ERR_LEN] = "";
  RtSchedule s;
  kiln_program p = {.nsettings = 0};
  ck_assert_int_eq(rt_schedule_of(&p, &s, err), 0);
  ck_assert(s.kind == KILN_LR_CONSTANT && s.warmup == 0);
  static const kiln_setting cosine[] = {
      {"epochs", "3"}, {"lr_schedule", "3"}, {"lr_t_max", "10"}, {"lr_eta_min", "0.001"},
      {"lr_warmup", "2"}};
  p = (kiln_program){.nsettings = 5, .settings = cosine};
  ck_assert_int_eq(rt_schedule_of(&p, &s, err), 0);
  ck_assert(s.kind == KILN_LR_COSINE && s.t_max == 10 && s.eta_min == 0.001 && s.warmup == 2);
  static const kiln_setting step[] = {{"lr_schedule", "1"}, {"lr_step_size", "5"},
                                      {"lr_gamma", "0.30000000000000004"}};
  p = (kiln_program){.nsettings = 3, .settings = step};
  ck_assert_int_eq(rt_schedule_of(&p, &s, err), 0);
  ck_assert(s.kind == KILN_LR_STEP && s.step_size == 5 && s.gamma == 0.1 + 0.2);
  static const kiln_setting unknown[] = {{"lr_schedule", "9"}};
  p = (kiln_program){.nsettings = 1, .settings = unknown};
  ck_assert_int_eq(rt_schedule_of(&p, &s, err), -1);
  ck_assert_str_eq(err, "the program's learning-rate schedule 9 is not one this trainer knows");
  static const kiln_setting bad[] = {{"lr_schedule", "1"}, {"lr_step_size", "0"}};
  p = (kiln_program){.nsettings = 2, .settings = bad};
  ck_assert_int_eq(rt_schedule_of(&p, &s, err), -1);
}
END_TEST

/* The driver sets "lr" before every epoch from the schedule (base: the model's lr, or --lr),
 * prints it in the epoch line and writes it in the CSV column lr. */
START_TEST(train_schedule) {
  write_split(tmpdir, "train", 6, 2, 0);
  write_split(tmpdir, "t10k", 3, 2, 0);
  static const kiln_setting settings[] = {{"epochs", "5"},        {"seed", "1"},
                                          {"lr_schedule", "1"},   {"lr_step_size", "1"},
                                          {"lr_gamma", "0.5"},    {"lr_warmup", "2"}};
  kiln_program p = data_program();
  p.nsettings = 6, p.settings = settings;
  RtOptions o;
  default_opts(&o);
  o.quiet = 0;
  o.metrics_path = tpath("metrics.csv");
  Fake f;
  char *out, *err;
  ck_assert_int_eq(train_fake(&f, &p, &o, &out, &err), 0);
  ck_assert_msg(f.problems == 0, "%s", f.problem);
  static const double lr[] = {0.05, 0.1, 0.1, 0.05, 0.025};
  for (int e = 1; e <= 5; e++)
    ck_assert_double_eq(f.lr_at_epoch[e], lr[e - 1]);
  ck_assert_msg(strstr(err, "epoch 1/5  train_loss ") && strstr(err, "  lr 0.05  ") &&
                    strstr(err, "  lr 0.025  "), "%s", err);
  char *csv = read_all(tpath("metrics.csv"), NULL);
  ck_assert_msg(strstr(csv, ",lr\n1,") && strstr(csv, ",0.05\n2,") && strstr(csv, ",0.1\n3,") &&
                    strstr(csv, ",0.1\n4,") && strstr(csv, ",0.05\n5,") &&
                    strstr(csv, ",0.025\n"), "%s", csv);
  free(csv), free(out), free(err);
  fake_free(&f);
  o.lr = 0.4; /* --lr is the base the schedule starts from */
  o.quiet = 1;
  ck_assert_int_eq(train_fake(&f, &p, &o, &out, &err), 0);
  static const double lr4[] = {0.2, 0.4, 0.4, 0.2, 0.1};
  for (int e = 1; e <= 5; e++)
    ck_assert_double_eq(f.lr_at_epoch[e], lr4[e - 1]);
  free(out), free(err);
  fake_free(&f);
}
END_TEST

START_TEST(train_checkpoints) {
  write_split(tmpdir, "train", 8, 2, 0);
  write_split(tmpdir, "t10k", 4, 2, 0);
  kiln_program p = data_program();
  RtOptions o;
  default_opts(&o);
  o.save_path = tpath("ck.st");
  Fake a, b;
  char *out, *err;
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 0);
  free(out), free(err);
  /* Two steps of w -= 0.1 (w - 1) from 0.5, stored as F32. */
  double w = 0.5;
  for (int i = 0; i < 2; i++)
    w -= 0.1 * (w - 1);
  ck_assert_double_eq_tol(a.vals[T_W][0], w, 1e-12);
  RtNamedTensor *t;
  int n;
  char msg[RT_ERR_LEN];
  ck_assert_int_eq(rt_safetensors_load(tpath("ck.st"), &t, &n, msg), 0);
  ck_assert_int_eq(n, 2); /* params and state; not lr, not optimizer state */
  ck_assert_str_eq(t[0].name, "w");
  ck_assert_int_eq(t[0].dtype, KILN_F32);
  ck_assert_double_eq(t[0].values[0], (float)w);
  ck_assert_str_eq(t[1].name, "bn.running_var");
  ck_assert_double_eq(t[1].values[0], 1);
  ck_assert_double_eq(t[1].values[1], 3);
  rt_safetensors_free(t, n);

  /* Starting from it: the first step sees the saved values. */
  default_opts(&o);
  o.load_path = tpath("ck.st");
  ck_assert_int_eq(train_fake(&b, &p, &o, &out, &err), 0);
  ck_assert_double_eq(b.first_w, (float)w);
  free(out), free(err);
  fake_free(&a), fake_free(&b);

  /* A checkpoint whose shapes or names do not match is refused, naming both shapes. */
  double v[3] = {1, 2, 3};
  RtNamedTensor wrong[] = {named("w", KILN_F32, 1, (int64_t[]){3}, v),
                           named("bn.running_var", KILN_F32, 1, (int64_t[]){2}, v)};
  ck_assert_int_eq(rt_safetensors_save(tpath("wrong.st"), wrong, 2, msg), 0);
  o.load_path = tpath("wrong.st");
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 1);
  ck_assert_msg(strstr(err, "trainer: error: ") == err &&
                    strstr(err, "wrong.st: tensor 'w' has shape [3], but the model's has shape [1]"),
                "%s", err);
  ck_assert_str_eq(out, "");
  ck_assert_int_eq(a.nbatches, 0);
  free(out), free(err);
  fake_free(&a);
  RtNamedTensor missing[] = {named("w", KILN_F32, 1, (int64_t[]){1}, v)};
  ck_assert_int_eq(rt_safetensors_save(tpath("missing.st"), missing, 1, msg), 0);
  o.load_path = tpath("missing.st");
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 1);
  ck_assert_msg(strstr(err, "missing.st: no tensor 'bn.running_var' (the model's has shape [2])"),
                "%s", err);
  free(out), free(err);
  fake_free(&a);
  RtNamedTensor extra[] = {named("w", KILN_F32, 1, (int64_t[]){1}, v),
                           named("bn.running_var", KILN_F32, 1, (int64_t[]){2}, v),
                           named("fc9.bias", KILN_F32, 1, (int64_t[]){1}, v)};
  ck_assert_int_eq(rt_safetensors_save(tpath("extra.st"), extra, 3, msg), 0);
  o.load_path = tpath("extra.st");
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 1);
  ck_assert_msg(strstr(err, "extra.st: tensor 'fc9.bias' is not a parameter or state"), "%s", err);
  free(out), free(err);
  fake_free(&a);
  o.load_path = tpath("absent.st");
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 1);
  ck_assert_msg(strstr(err, "absent.st: cannot open"), "%s", err);
  free(out), free(err);
  fake_free(&a);
  /* A checkpoint written by a run that diverged is refused, naming the tensor and element. */
  double bad[2] = {1, INFINITY};
  RtNamedTensor diverged[] = {named("w", KILN_F32, 1, (int64_t[]){1}, v),
                              named("bn.running_var", KILN_F32, 1, (int64_t[]){2}, bad)};
  ck_assert_int_eq(rt_safetensors_save(tpath("inf.st"), diverged, 2, msg), 0);
  o.load_path = tpath("inf.st");
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 1);
  ck_assert_msg(strstr(err, "inf.st: tensor 'bn.running_var' holds an infinity at element 1 "
                            "(the run that wrote it diverged?)"), "%s", err);
  ck_assert_int_eq(a.nbatches, 0);
  free(out), free(err);
  fake_free(&a);
  /* A FIFO is refused at once rather than waited on. */
  ck_assert_int_eq(mkfifo(tpath("fifo.st"), 0600), 0);
  o.load_path = tpath("fifo.st");
  ck_assert_int_eq(train_fake(&a, &p, &o, &out, &err), 1);
  ck_assert_msg(strstr(err, "fifo.st: not a regular file"), "%s", err);
  free(out), free(err);
  fake_free(&a);
}
END_TEST

START_TEST(train_errors) {
  write_split(tmpdir, "train", 8, 2, 0);
  write_split(tmpdir, "t10k", 4, 2, 0);
  kiln_program p = data_program();
  RtOptions o;
  Fake f;
  char *out, *err;
  struct { const char *want; } cases[] = {{"pass --data DIR"},
                                          {"ABI version 99"},
                                          {"injected failure"},
                                          {"no hyper-parameter named \"lr\""},
                                          {"input 'image' has shape [4, 1, 3, 3] (9 values per "
                                           "example), but the images in"},
                                          {"model 'fake' has no loss to minimize: it only evaluates"},
                                          {"batch size 0"},
                                          {"two tensors are named 'w'"},
                                          {"epoch 1, step 2: the training loss is NaN (the run "
                                           "diverged, or an op such as log, sqrt, exp or a "
                                           "division left its domain); no checkpoint was "
                                           "written (with --checkpoint-every N, kiln train "
                                           "MODEL.kiln --runtime reference --resume CHECKPOINT "
                                           "names the op that produced it)"},
                                          {"epoch 1, step 2: 'bn.running_var' became NaN at "
                                           "element 0; no checkpoint was written"},
                                          {"epoch 1, step 2: a batch of 1 example has no "
                                           "unbiased variance for 'bn.running_var' (batchnorm "
                                           "needs more than 1 value per channel when "
                                           "training)"},
                                          {"test examples 0 to 3: the loss is NaN (the "
                                           "parameters hold values the model's ops cannot "
                                           "take)"},
                                          {"program 'fake' has no \"train\" entry"},
                                          {"setting 'epochs' has value 'many', which is not a "
                                           "number"},
                                          {"input 'image' is fed from 'pixels', which the "
                                           "dataset in"},
                                          {"two entries are named 'eval'"},
                                          {"tensor 'loss' belongs to entries 0x4, but the "
                                           "program has 2"},
                                          {"input 'label' fed from 'labels' has scale 0"},
                                          {"train-labels-idx1-ubyte.gz: the label of example 2 "
                                           "is 2, outside the model's 2 classes (0 to 1)"},
                                          {"input 'image' has no data: a trainer feeds an input "
                                           "from the dataset"},
                                          {"this run needs about 0.0 MiB (the step's arena 0.0 "
                                           "MiB, the data 0.0 MiB, the trainer's buffers 0.0 "
                                           "MiB), more than --max-memory 0.0 MiB"}};
  static const kiln_entry no_train[] = {{"eval", NULL}, {"valid", NULL}};
  static const kiln_entry two_evals[] = {{"eval", NULL}, {"eval", NULL}};
  static const kiln_setting bad_setting[] = {{"epochs", "many"}};
  kiln_tensor ts[NT];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    default_opts(&o);
    p = data_program();
    memcpy(ts, data_tensors, sizeof ts);
    p.tensors = ts;
    switch (i) {
    case 0: o.data_dir = NULL; break;
    case 1: p.abi_version = 99; break;
    case 2: break;
    case 3: ts[T_LR].name = "learning_rate", o.lr = 0.5; break;
    case 4: ts[T_IMAGE].dims[2] = ts[T_IMAGE].dims[3] = 3; break;
    case 5: ts[T_LOSS].name = "loss2"; break;
    case 6: p.batch = 0; break;
    case 7: ts[T_RUNNING].name = "w"; break;
    case 10: o.limit_train = 5; break; /* batches of 4 and 1 */
    case 12: p.entries = no_train; break;
    case 13: p.settings = bad_setting, p.nsettings = 1; break;
    case 14: ts[T_IMAGE].feed = "pixels"; break;
    case 15: p.entries = two_evals; break;
    case 16: ts[T_LOSS].entries = 4; break;
    case 17: ts[T_LABEL].scale = 0; break;
    case 18: ts[T_EVAL_OUT].dims[1] = 2; break;
    case 19: ts[T_IMAGE].feed = NULL; break;
    case 20: o.max_memory = 16; break;
    }
    fake_init(&f, &p);
    f.fail_at = i == 2 ? 3 : 0;
    f.nan_loss_at = i == 8 ? 2 : 0;
    f.nan_state_at = i == 9 || i == 10 ? 2 : 0;
    f.nan_eval = i == 11;
    TrainCall c = {{.prog = &p, .self = &f, .run = fake_run, .read = fake_read, .write = fake_write}, o};
    ck_assert_int_eq(capture(do_train, &c, &out, &err), 1);
    ck_assert_msg(!strncmp(err, "trainer: error: ", 16) && strstr(err, cases[i].want) &&
                      strchr(err, '\n') == err + strlen(err) - 1,
                  "case %zu: want '%s' in '%s'", i, cases[i].want, err);
    ck_assert_str_eq(out, "");
    free(out), free(err);
    fake_free(&f);
  }
  /* A data directory without the files. */
  default_opts(&o);
  o.data_dir = "/nonexistent";
  o.prog_name = "mnist";
  p = data_program();
  ck_assert_int_eq(train_fake(&f, &p, &o, &out, &err), 1);
  ck_assert_str_eq(err, "mnist: error: /nonexistent: No such file or directory\n");
  free(out), free(err);
  fake_free(&f);
}
END_TEST

/* A model whose data is in the file: y = w . x over three rows, w halved by every step. */
static const double lit_w[2] = {1, 2}, lit_x[6] = {1, 0, 0, 1, 1, 1};
static const kiln_tensor lit_tensors[] = {
    {.name = "w", .role = KILN_ROLE_PARAM, .dtype = KILN_F32, .rank = 1, .dims = {2},
     .batch_axis = -1, .init = KILN_INIT_DATA, .data = lit_w},
    {.name = "x", .role = KILN_ROLE_INPUT, .dtype = KILN_F32, .rank = 2, .dims = {3, 2},
     .batch_axis = 0, .init = KILN_INIT_DATA, .data = lit_x},
    {.name = "loss", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F32, .rank = 0, .batch_axis = -1},
    {.name = "eval.output", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F32, .rank = 1, .dims = {3},
     .batch_axis = 0},
};

typedef struct Lit { double w[2], x[6], loss, out[3]; int trains, evals, bad; } Lit;

static int lit_run(void *self, int entry, int64_t batch, char *err) {
  Lit *l = self;
  (void)err;
  l->bad += batch != 3 || memcmp(l->x, lit_x, sizeof l->x);
  if (entry == 0) { /* lit_entries: train, eval */
    l->trains++;
    l->w[0] *= 0.5, l->w[1] *= 0.5;
    l->loss = l->w[0] + l->w[1];
    memset(l->x, 0, sizeof l->x); /* as if the planner reused the input's bytes */
  } else {
    l->evals++;
    for (int i = 0; i < 3; i++)
      l->out[i] = l->x[2 * i] * l->w[0] + l->x[2 * i + 1] * l->w[1];
  }
  return 0;
}

static double *lit_slot(Lit *l, int t) {
  return t == 0 ? l->w : t == 1 ? l->x : t == 2 ? &l->loss : l->out;
}
static void lit_read(void *self, int t, double *out, int64_t n) {
  memcpy(out, lit_slot(self, t), (size_t)n * sizeof *out);
}
static void lit_write(void *self, int t, const double *in, int64_t n) {
  memcpy(lit_slot(self, t), in, (size_t)n * sizeof *in);
}

START_TEST(train_literal_model) {
  static const kiln_entry lit_entries[] = {{"train", NULL}, {"eval", NULL}};
  kiln_setting settings[] = {{"epochs", "1"}, {"steps", "3"}};
  kiln_program p = {.abi_version = KILN_ABI_VERSION, .model = "lit", .batch = 3, .ntensors = 4,
                    .tensors = lit_tensors, .nentries = 2, .entries = lit_entries,
                    .nsettings = 2, .settings = settings};
  Lit l = {0};
  RtOptions o;
  rt_options_default(&o);
  o.quiet = 1;
  o.save_path = tpath("lit.st");
  TrainCall c = {{.prog = &p, .self = &l, .run = lit_run, .read = lit_read, .write = lit_write}, o};
  char *out, *err;
  ck_assert_int_eq(capture(do_train, &c, &out, &err), 0);
  ck_assert_str_eq(err, "");
  ck_assert_str_eq(out, "w = 0.125000 0.250000\n"
                        "output = 0.125000 0.250000 0.375000\n"
                        "final steps=3 loss=0.375\n");
  ck_assert_int_eq(l.trains, 3);
  ck_assert_int_eq(l.evals, 1);
  ck_assert_int_eq(l.bad, 0);
  free(out), free(err);
  ck_assert_int_eq(access(tpath("lit.st"), F_OK), 0);

  /* --epochs counts steps for such a model; without steps the program's epochs do. */
  memset(&l, 0, sizeof l);
  c.o.epochs = 1;
  c.o.save_path = NULL;
  ck_assert_int_eq(capture(do_train, &c, &out, &err), 0);
  ck_assert_str_eq(out, "w = 0.500000 1.000000\noutput = 0.500000 1.000000 1.500000\n"
                        "final steps=1 loss=1.5\n");
  free(out), free(err);
  memset(&l, 0, sizeof l);
  c.o.epochs = 0;
  settings[0].value = "2";
  settings[1].value = "0";
  ck_assert_int_eq(capture(do_train, &c, &out, &err), 0);
  ck_assert_ptr_nonnull(strstr(out, "final steps=2 loss=0.75\n"));
  free(out), free(err);
  /* With --data given anyway, nothing changes: the model reads no files. */
}
END_TEST

/* ---- the thread pool ---- */

enum { POOL_MAX_TASKS = 1000 };

typedef struct PoolRegion {
  atomic_int runs[POOL_MAX_TASKS]; /* per task, how often it ran */
  atomic_int workers[8];           /* per worker, how many tasks it ran */
  atomic_int bad_worker;
  int threads;
} PoolRegion;

static void count_task(void *args, int64_t task, int worker) {
  PoolRegion *r = args;
  if (worker < 0 || worker >= r->threads)
    atomic_fetch_add(&r->bad_worker, 1);
  else
    atomic_fetch_add(&r->workers[worker], 1);
  /* Some work, longer for some tasks, so that both threads take part. */
  volatile double x = 0;
  for (int64_t k = 0; k < 2000 * (task % 7 + 1); k++)
    x += (double)k;
  atomic_fetch_add(&r->runs[task], 1);
}

/* Every task of every region runs exactly once, on a worker in range, and all have finished when
 * rt_pool_run returns; regions back to back and after the workers fell asleep, with more threads
 * than tasks, one task, none; a NULL pool runs them in order on worker 0. */
START_TEST(pool_runs_every_task_once) {
  static const int64_t sizes[] = {0, 1, 2, 3, 64, 999, 5, 1000};
  char err[RT_ERR_LEN];
  for (int threads = 1; threads <= 4; threads++) {
    RtPool *pool = threads == 4 ? NULL : rt_pool_new(threads, err);
    int nthreads = pool ? threads : 1;
    ck_assert_msg(threads == 4 || pool, "%s", err);
    ck_assert_int_eq(rt_pool_threads(pool), nthreads);
    kiln_exec ex;
    rt_exec_init(&ex, pool);
    for (int rep = 0; rep < 3; rep++) {
      for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        PoolRegion *r = calloc(1, sizeof *r);
        ck_assert_ptr_nonnull(r);
        r->threads = nthreads;
        ex.run(ex.pool, count_task, r, sizes[k]);
        for (int64_t t = 0; t < POOL_MAX_TASKS; t++)
          ck_assert_msg(atomic_load(&r->runs[t]) == (t < sizes[k]),
                        "%d threads, %lld tasks: task %lld ran %d times", nthreads,
                        (long long)sizes[k], (long long)t, atomic_load(&r->runs[t]));
        ck_assert_int_eq(atomic_load(&r->bad_worker), 0);
        int total = 0;
        for (int w = 0; w < nthreads; w++)
          total += atomic_load(&r->workers[w]);
        ck_assert_int_eq(total, (int)sizes[k]);
        free(r);
      }
      /* Past the spin: the workers are asleep when the next region starts. */
      nanosleep(&(struct timespec){0, 2000000}, NULL);
    }
    rt_pool_free(pool);
  }
}
END_TEST

/* Regions back to back, as a step's kernels run them, with counts that change every region:
 * every task runs exactly once in its own region (a worker still holding the last region's
 * final claim once ran a task past its end with the next region's count, and the region
 * after that waited forever). */
static atomic_int region_runs[80];

static void mark_run(void *args, int64_t task, int worker) {
  (void)args;
  (void)worker;
  atomic_fetch_add(&region_runs[task], 1);
}

START_TEST(pool_regions_back_to_back) {
  char err[RT_ERR_LEN];
  for (int threads = 2; threads <= 3; threads++) {
    RtPool *pool = rt_pool_new(threads, err);
    ck_assert_msg(pool != NULL, "%s", err);
    for (int r = 0; r < 40000; r++) {
      int n = 2 + r % 70;
      for (int t = 0; t < n + 8; t++)
        atomic_store(&region_runs[t], 0);
      rt_pool_run(pool, mark_run, NULL, n);
      for (int t = 0; t < n + 8; t++)
        ck_assert_msg(atomic_load(&region_runs[t]) == (t < n),
                      "region %d of %d tasks on %d threads: task %d ran %d times", r, n,
                      threads, t, atomic_load(&region_runs[t]));
    }
    rt_pool_free(pool);
  }
}
END_TEST

/* Pools of 1 to 4 threads start and stop cleanly, many times over, with and without a region
 * run (every worker is joined; LeakSanitizer sees what is left). */
START_TEST(pool_start_stop) {
  char err[RT_ERR_LEN];
  for (int k = 0; k < 20; k++) {
    RtPool *pool = rt_pool_new(1 + k % 4, err);
    ck_assert_msg(pool != NULL, "%s", err);
    if (k % 2) {
      PoolRegion *r = calloc(1, sizeof *r);
      ck_assert_ptr_nonnull(r);
      r->threads = 1 + k % 4;
      rt_pool_run(pool, count_task, r, 17);
      ck_assert_int_eq(atomic_load(&r->runs[16]), 1);
      free(r);
    }
    rt_pool_free(pool);
  }
  rt_pool_free(NULL);
  ck_assert_int_ge(rt_available_cores(), 1);
}
END_TEST

static Suite *runtime_suite(void) {
  Suite *s = suite_create("runtime");
  TCase *tc = tcase_create("rng");
  tcase_add_test(tc, rng_pinned);
  tcase_add_test(tc, rng_reproducible);
  tcase_add_test(tc, rng_uniform_normal_stats);
  tcase_add_test(tc, rng_below);
  tcase_add_test(tc, rng_shuffle);
  tcase_add_test(tc, rng_hash_name);
  suite_add_tcase(s, tc);

  tc = tcase_create("init");
  tcase_add_test(tc, init_distributions);
  tcase_add_test(tc, init_constant_kinds);
  tcase_add_test(tc, init_depends_on_seed_and_name_only);
  tcase_add_test(tc, init_orthogonal);
  tcase_add_test(tc, writers_keep_links_and_devices);
  suite_add_tcase(s, tc);

  tc = tcase_create("files");
  tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, idx_plain_and_gz);
  tcase_add_test(tc, idx_errors);
  tcase_add_test(tc, idx_load_first);
  tcase_add_test(tc, dataset_load_small);
  tcase_add_test(tc, dataset_fashion_mnist);
  tcase_add_test(tc, st_round_trip);
  tcase_add_test(tc, st_header_bytes);
  tcase_add_test(tc, st_other_dtypes);
  tcase_add_test(tc, st_errors);
  tcase_add_test(tc, st_empty_and_bad_input);
  tcase_add_test(tc, st_atomic_write);
  tcase_add_test(tc, progress_lines);
  tcase_add_test(tc, progress_clock_and_csv);
  suite_add_tcase(s, tc);

  tc = tcase_create("pool");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, pool_runs_every_task_once);
  tcase_add_test(tc, pool_start_stop);
  tcase_add_test(tc, pool_regions_back_to_back);
  suite_add_tcase(s, tc);

  tc = tcase_create("schedule");
  tcase_add_test(tc, schedule_closed_forms);
  tcase_add_test(tc, schedule_from_settings);
  suite_add_tcase(s, tc);

  tc = tcase_create("train");
  tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
  tcase_add_test(tc, options);
  tcase_add_test(tc, train_visits_every_example);
  tcase_add_test(tc, train_seed_limits_and_lr);
  tcase_add_test(tc, train_early_stopping);
  tcase_add_test(tc, train_schedule);
  tcase_add_test(tc, train_checkpoints);
  tcase_add_test(tc, train_errors);
  tcase_add_test(tc, train_literal_model);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(runtime_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
