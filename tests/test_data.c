/*
 * test_data.c — the trainer's data pipeline (Check framework): PGM and PPM images, labels.csv,
 * image folders beside IDX files, per-channel normalisation and augmentation.
 *
 * Images are written byte by byte here, so every pixel a reader returns is known, and every
 * refusal is asserted with its whole message. Augmentations are checked on small images with a
 * fixed draw, against pixels worked out by hand. The driver is run over a fake backend that logs
 * every batch it is given: each training row must equal the example's pixels put through the
 * draw of (seed, epoch, example), each evaluation row the plain normalised pixels.
 */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"

/* ---- helpers ---- */

static char tmpdir[256];

static void setup_tmp(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln_data_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown_tmp(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

static const char *tpath(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *tpath(const char *fmt, ...) {
  static char bufs[4][512];
  static int next;
  char *p = bufs[next++ % 4], name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  snprintf(p, 512, "%s/%s", tmpdir, name);
  return p;
}

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  ck_assert_msg(f != NULL, "cannot write %s", path);
  ck_assert_uint_eq(fwrite(data, 1, n, f), n);
  ck_assert_int_eq(fclose(f), 0);
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* A binary PGM (channels 1) or PPM (3) of pixels given channel-first. */
static void write_pnm(const char *path, int channels, int w, int h, const uint8_t *chw) {
  char head[64];
  int n = snprintf(head, sizeof head, "P%c\n%d %d\n255\n", channels == 3 ? '6' : '5', w, h);
  size_t count = (size_t)(channels * w * h);
  unsigned char *buf = malloc((size_t)n + count);
  memcpy(buf, head, (size_t)n);
  for (size_t k = 0; k < count; k++) /* interleave: sample k is pixel k / C, channel k % C */
    buf[n + k] = chw[(k % (size_t)channels) * (size_t)(w * h) + k / (size_t)channels];
  write_bytes(path, buf, (size_t)n + count);
  free(buf);
}

static void mkdir_p(const char *path) { ck_assert(mkdir(path, 0777) == 0); }

/* Parses a PNM from a string of n bytes; 0 or -1, the message in err. */
static int parse_pnm(const char *bytes, size_t n, RtImage *im, char *err) {
  return rt_image_parse((const unsigned char *)bytes, n, "x.pgm", im, err);
}

/* ---- PGM and PPM ---- */

START_TEST(pnm_exact_pixels) {
  RtImage im;
  char err[RT_ERR_LEN] = "";
  /* P5, 3 x 2, a comment in the header. */
  static const char p5[] = "P5\n# made by hand\n3 2\n255\n\x00\x01\x7f\x80\xfe\xff";
  ck_assert_msg(parse_pnm(p5, sizeof p5 - 1, &im, err) == 0, "%s", err);
  ck_assert_int_eq(im.channels, 1);
  ck_assert_int_eq(im.width, 3);
  ck_assert_int_eq(im.height, 2);
  ck_assert_mem_eq(im.pixels, "\x00\x01\x7f\x80\xfe\xff", 6);
  rt_image_free(&im);
  /* P2: the same pixels in ASCII, any whitespace, comments between the header fields. */
  static const char p2[] = "P2 3#width\n2 255\n0 1 127\n\t128   254\r\n255\n\n";
  ck_assert_msg(parse_pnm(p2, sizeof p2 - 1, &im, err) == 0, "%s", err);
  ck_assert_int_eq(im.channels, 1);
  ck_assert_mem_eq(im.pixels, "\x00\x01\x7f\x80\xfe\xff", 6);
  rt_image_free(&im);
  /* P6, 2 x 2: RGB interleaved in the file, channel-first in memory. */
  static const char p6[] = "P6 2 2 255\n"
                           "\x01\x02\x03" "\x04\x05\x06"
                           "\x07\x08\x09" "\x0a\x0b\x0c";
  ck_assert_msg(parse_pnm(p6, sizeof p6 - 1, &im, err) == 0, "%s", err);
  ck_assert_int_eq(im.channels, 3);
  ck_assert_int_eq(im.width, 2);
  ck_assert_int_eq(im.height, 2);
  ck_assert_mem_eq(im.pixels, "\x01\x04\x07\x0a" "\x02\x05\x08\x0b" "\x03\x06\x09\x0c", 12);
  rt_image_free(&im);
  /* P3, and a maxval of 15 rescaled to 0..255 (rounded): 0, 1, 7, 8, 15, 3 -> 0, 17, 119, 136,
   * 255, 51; pixel 0 is (0, 1, 7), pixel 1 (8, 15, 3). */
  static const char p3[] = "P3\n1 2\n15\n0 1 7\n8 15 3";
  ck_assert_msg(parse_pnm(p3, sizeof p3 - 1, &im, err) == 0, "%s", err);
  ck_assert_int_eq(im.channels, 3);
  ck_assert_mem_eq(im.pixels, "\x00\x88" "\x11\xff" "\x77\x33", 6);
  rt_image_free(&im);
  static const char p2max[] = "P2 4 1 15 0 1 7 8";
  ck_assert_msg(parse_pnm(p2max, sizeof p2max - 1, &im, err) == 0, "%s", err);
  ck_assert_mem_eq(im.pixels, "\x00\x11\x77\x88", 4);
  rt_image_free(&im);
  /* maxval 1: 0 and 1 are black and white. */
  ck_assert_msg(parse_pnm("P5 2 1 1\n\x01\x00", 11, &im, err) == 0, "%s", err);
  ck_assert_mem_eq(im.pixels, "\xff\x00", 2);
  rt_image_free(&im);
}
END_TEST

START_TEST(pnm_errors) {
  struct {
    const char *bytes;
    size_t n;
    const char *want;
  } cases[] = {
#define C(s, w) {s, sizeof s - 1, w}
      C("", "x.pgm: not a PGM or PPM image (it should start with P5, P2, P6 or P3; the file is "
            "shorter than that)"),
      C("GIF89a", "x.pgm: not a PGM or PPM image (it should start with P5, P2, P6 or P3)"),
      C("P4 1 1\n\x80", "x.pgm: a PBM image (P4): only PGM (P5, P2) and PPM (P6, P3) are read"),
      C("P7\nWIDTH 1\n", "x.pgm: a PAM image (P7): only PGM (P5, P2) and PPM (P6, P3) are read"),
      C("P5x", "x.pgm: byte 2: expected whitespace after the magic P5, found 'x'"),
      C("P5\n", "x.pgm: truncated: the file ends before the width (byte 3)"),
      C("P5\n3 # no height", "x.pgm: truncated: the file ends before the height (byte 16)"),
      C("P5\n-3 2 255\n", "x.pgm: byte 3: expected the width, a whole number, found '-'"),
      C("P5\n3 2\x01 255\n", "x.pgm: byte 6: expected whitespace after the height, found byte "
                             "0x01"),
      C("P5\n0 2 255\n", "x.pgm: byte 3: the width is 0, outside 1 to 65536"),
      C("P5\n3 99999999999999999999 255\n", "x.pgm: byte 5: the height is more than 65536, "
                                            "outside 1 to 65536"),
      C("P5\n3 2 0\n", "x.pgm: byte 7: the maxval is 0, outside 1 to 65535"),
      C("P5\n3 2 65535\n", "x.pgm: maxval 65535: 16-bit samples are not supported (8-bit only, "
                           "maxval at most 255)"),
      C("P5\n3 2 255", "x.pgm: truncated: the file ends after the header (byte 10), before the 6 "
                       "samples"),
      C("P5\n3 2 255\n\x01\x02\x03\x04\x05", "x.pgm: truncated: the header promises 3 x 2 pixels "
                                             "(6 samples) from byte 11, and the file has fewer "
                                             "bytes than that"),
      C("P6\n1 1 255\n\x01\x02", "x.pgm: truncated: the header promises 1 x 1 RGB pixels (3 "
                                 "samples) from byte 11, and the file has fewer bytes than that"),
      C("P5\n1 1 255\n\x01\x02\x03", "x.pgm: 2 bytes after the 1 samples (from byte 12): one "
                                     "image per file"),
      C("P5\n2 1 100\n\x64\x65", "x.pgm: byte 12: sample 1 is 101, above the maxval 100"),
      C("P2\n2 1 100\n100 101", "x.pgm: byte 15: sample 1 is 101, above the maxval 100"),
      C("P2\n1 1 9\n123456789012345678901234", "x.pgm: byte 9: sample 0 is "
                                             "12345678901234567890..., above the maxval 9"),
      C("P2\n2 2 255\n1 2 3", "x.pgm: truncated: the header promises 2 x 2 pixels (4 samples) "
                              "from byte 11, and the file is too short to hold them"),
      C("P2\n2 2 255\n1 2 3      ", "x.pgm: truncated: the file ends after 3 of the 4 samples"),
      C("P2\n2 1 255\n1 x", "x.pgm: byte 13: expected sample 1, a whole number, found 'x'"),
      C("P2\n2 1 255\n1 2x", "x.pgm: byte 14: expected whitespace after sample 1, found 'x'"),
      C("P2\n1 1 255\n1 2", "x.pgm: byte 13: '2' after the last of the 1 samples: one image per "
                            "file"),
#undef C
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    RtImage im;
    char err[RT_ERR_LEN] = "";
    ck_assert_msg(parse_pnm(cases[i].bytes, cases[i].n, &im, err) == -1, "case %zu loaded", i);
    ck_assert_msg(!strcmp(err, cases[i].want), "case %zu:\n got  '%s'\n want '%s'", i, err,
                  cases[i].want);
    ck_assert_ptr_null(im.pixels);
  }
  /* Files: missing, a directory, a FIFO (refused without waiting for a writer). */
  RtImage im;
  char err[RT_ERR_LEN], want[1024];
  ck_assert_int_eq(rt_image_load(tpath("none.pgm"), &im, err), -1);
  snprintf(want, sizeof want, "%s/none.pgm: cannot open: No such file or directory", tmpdir);
  ck_assert_str_eq(err, want);
  ck_assert_int_eq(rt_image_load(tmpdir, &im, err), -1);
  snprintf(want, sizeof want, "%s: is a directory, not a file", tmpdir);
  ck_assert_str_eq(err, want);
  ck_assert_int_eq(mkfifo(tpath("fifo.pgm"), 0600), 0);
  ck_assert_int_eq(rt_image_load(tpath("fifo.pgm"), &im, err), -1);
  snprintf(want, sizeof want, "%s/fifo.pgm: not a regular file", tmpdir);
  ck_assert_str_eq(err, want);
  write_text(tpath("ok.pgm"), "P2 1 1 255 9");
  ck_assert_msg(rt_image_load(tpath("ok.pgm"), &im, err) == 0, "%s", err);
  ck_assert_int_eq(im.pixels[0], 9);
  rt_image_free(&im);
}
END_TEST

/* ---- labels.csv ---- */

START_TEST(labels_csv) {
  RtLabels l;
  char err[RT_ERR_LEN] = "";
  /* A header, CRLF, blank lines, spaces around fields, a comma inside a name, subdirectories. */
  static const char text[] = "file,label\r\na.pgm,0\r\n\r\n  b c.pgm , 12 \ncats/x,y.ppm,255\n"
                             "\n./d.pgm,7";
  ck_assert_msg(rt_labels_parse(text, sizeof text - 1, "L.csv", &l, err) == 0, "%s", err);
  ck_assert_int_eq(l.n, 4);
  ck_assert_str_eq(l.files[0], "a.pgm");
  ck_assert_str_eq(l.files[1], "b c.pgm");
  ck_assert_str_eq(l.files[2], "cats/x,y.ppm");
  ck_assert_str_eq(l.files[3], "./d.pgm");
  ck_assert_mem_eq(l.labels, "\x00\x0c\xff\x07", 4);
  ck_assert_int_eq(l.lines[0], 2);
  ck_assert_int_eq(l.lines[1], 4);
  ck_assert_int_eq(l.lines[2], 5);
  ck_assert_int_eq(l.lines[3], 7);
  rt_labels_free(&l);
  /* An empty list is a list of no examples. */
  ck_assert_int_eq(rt_labels_parse("", 0, "L.csv", &l, err), 0);
  ck_assert_int_eq(l.n, 0);
  rt_labels_free(&l);
  struct {
    const char *text;
    size_t n;
    const char *want;
  } cases[] = {
#define C(s, w) {s, sizeof s - 1, w}
      C("a.pgm,1\nb.pgm\n", "L.csv:2: expected 'file,label', found 'b.pgm'"),
      C("a.pgm,256", "L.csv:1: the label is not a whole number from 0 to 255 ('a.pgm,256')"),
      C("a.pgm,-1", "L.csv:1: the label is not a whole number from 0 to 255 ('a.pgm,-1')"),
      C("a.pgm,cat", "L.csv:1: the label is not a whole number from 0 to 255 ('a.pgm,cat')"),
      C("a.pgm,", "L.csv:1: the label is not a whole number from 0 to 255 ('a.pgm,')"),
      C("file,label\nfile,label", "L.csv:2: the label is not a whole number from 0 to 255 "
                                  "('file,label')"),
      C(" ,3", "L.csv:1: no file name before the comma (',3')"),
      C("/etc/passwd,1", "L.csv:1: an absolute path: files are named relative to the directory "
                         "of labels.csv ('/etc/passwd,1')"),
      C("a/../../b.pgm,1", "L.csv:1: a '..' in the file name leaves the directory of labels.csv "
                           "('a/../../b.pgm,1')"),
      C("..,1", "L.csv:1: a '..' in the file name leaves the directory of labels.csv ('..,1')"),
      C("a\tb\x01.pgm,1", "L.csv:1: a control byte in the file name ('a\\x09b\\x01.pgm,1')"),
      C("a.pgm,1\nb\0.pgm,2", "L.csv:2: a NUL byte at byte 2 of the line: not a text file"),
#undef C
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    ck_assert_msg(rt_labels_parse(cases[i].text, cases[i].n, "L.csv", &l, err) == -1,
                  "case %zu parsed", i);
    ck_assert_msg(!strcmp(err, cases[i].want), "case %zu:\n got  '%s'\n want '%s'", i, err,
                  cases[i].want);
    ck_assert_ptr_null(l.files);
  }
}
END_TEST

/* ---- image folders ---- */

/* DIR/<split>/ with n PGM images of w x h: pixel k of image i is (i * 16 + k) % 256, label
 * i % 3. */
static void write_folder(const char *split, int n, int w, int h) {
  mkdir_p(tpath("%s", split));
  char csv[4096] = "file,label\n";
  uint8_t px[256];
  for (int i = 0; i < n; i++) {
    for (int k = 0; k < w * h; k++)
      px[k] = (uint8_t)((i * 16 + k) % 256);
    write_pnm(tpath("%s/im%d.pgm", split, i), 1, w, h, px);
    snprintf(csv + strlen(csv), sizeof csv - strlen(csv), "im%d.pgm,%d\n", i, i % 3);
  }
  write_text(tpath("%s/labels.csv", split), csv);
}

START_TEST(folder_loads_exactly) {
  write_folder("train", 5, 3, 2);
  write_folder("test", 2, 3, 2);
  RtDataset d;
  char err[RT_ERR_LEN] = "", want[2048];
  ck_assert_msg(rt_data_load(tmpdir, "train", -1, NULL, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.rank, 4);
  ck_assert_int_eq(d.images.dims[0], 5);
  ck_assert_int_eq(d.images.dims[1], 1);
  ck_assert_int_eq(d.images.dims[2], 2);
  ck_assert_int_eq(d.images.dims[3], 3);
  ck_assert_int_eq(d.images.count, 5);
  ck_assert_int_eq(d.images.item, 6);
  ck_assert_mem_eq(d.images.data + 6 * 4, "\x40\x41\x42\x43\x44\x45", 6);
  ck_assert_mem_eq(d.labels.data, "\x00\x01\x02\x00\x01", 5);
  ck_assert_str_eq(d.labels_path, tpath("train/labels.csv"));
  rt_dataset_free(&d);
  /* The test split, and the first examples only; with none, the counts and shape still. */
  ck_assert_msg(rt_data_load(tmpdir, "test", -1, NULL, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 2);
  rt_dataset_free(&d);
  ck_assert_msg(rt_data_load(tmpdir, "train", 2, NULL, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 2);
  ck_assert_int_eq(d.images.dims[0], 5);
  ck_assert_int_eq(d.labels.count, 2);
  rt_dataset_free(&d);
  ck_assert_msg(rt_data_load(tmpdir, "train", 0, NULL, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.count, 0);
  ck_assert_int_eq(d.images.dims[0], 5);
  ck_assert_int_eq(d.images.item, 6);
  rt_dataset_free(&d);

  /* The model's input: [1, 2, 3], [2, 3] and 6 values all fit; [1, 3, 2] does not. */
  RtDataWant fit = {.input = "image", .rank = 3, .dims = {1, 2, 3}, .classes = 3};
  ck_assert_msg(rt_data_load(tmpdir, "train", -1, &fit, &d, err) == 0, "%s", err);
  rt_dataset_free(&d);
  fit = (RtDataWant){.input = "image", .rank = 2, .dims = {2, 3}};
  ck_assert_msg(rt_data_load(tmpdir, "train", -1, &fit, &d, err) == 0, "%s", err);
  rt_dataset_free(&d);
  fit = (RtDataWant){.input = "image", .rank = 1, .dims = {6}};
  ck_assert_msg(rt_data_load(tmpdir, "train", -1, &fit, &d, err) == 0, "%s", err);
  rt_dataset_free(&d);
  fit = (RtDataWant){.input = "image", .rank = 3, .dims = {1, 3, 2}};
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, &fit, &d, err), -1);
  snprintf(want, sizeof want, "%s/train/im0.pgm: the image is [1, 2, 3] ([channels, height, "
           "width]), but input 'image' takes [1, 3, 2] per example", tmpdir);
  ck_assert_str_eq(err, want);
  ck_assert_ptr_null(d.images.data);
  /* Labels beyond the model's classes, with the line that gives them. */
  fit = (RtDataWant){.input = "image", .rank = 3, .dims = {1, 2, 3}, .classes = 2};
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, &fit, &d, err), -1);
  snprintf(want, sizeof want, "%s/train/labels.csv:4: the label of 'im2.pgm' is 2, outside the "
           "model's 2 classes (0 to 1)", tmpdir);
  ck_assert_str_eq(err, want);
  /* ... unless they are not used. */
  ck_assert_msg(rt_data_load(tmpdir, "train", 2, &fit, &d, err) == 0, "%s", err);
  rt_dataset_free(&d);

  /* An image of another shape than the first, then one that is missing, then one damaged. */
  uint8_t px[18] = {0};
  write_pnm(tpath("train/im3.pgm"), 1, 2, 3, px);
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, NULL, &d, err), -1);
  snprintf(want, sizeof want, "%s/train/im3.pgm: the image is [1, 3, 2] ([channels, height, "
           "width]), but %s/train/im0.pgm is [1, 2, 3]: every image of a data set has one shape",
           tmpdir, tmpdir);
  ck_assert_str_eq(err, want);
  write_pnm(tpath("train/im3.pgm"), 3, 3, 2, px);
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, NULL, &d, err), -1);
  ck_assert_msg(strstr(err, "im3.pgm: the image is [3, 2, 3] ([channels"), "%s", err);
  ck_assert_int_eq(unlink(tpath("train/im3.pgm")), 0);
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, NULL, &d, err), -1);
  snprintf(want, sizeof want, "%s/train/im3.pgm: cannot open: No such file or directory (listed "
           "on line 5 of %s/train/labels.csv)", tmpdir, tmpdir);
  ck_assert_str_eq(err, want);
  write_text(tpath("train/im3.pgm"), "P5 3 2 255\n\x01\x02");
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, NULL, &d, err), -1);
  snprintf(want, sizeof want, "%s/train/im3.pgm: truncated: the header promises 3 x 2 pixels (6 "
           "samples) from byte 11, and the file has fewer bytes than that (listed on line 5 of "
           "%s/train/labels.csv)", tmpdir, tmpdir);
  ck_assert_str_eq(err, want);
  /* A bad line of the list. */
  write_text(tpath("train/labels.csv"), "im0.pgm,0\nim1.pgm;1\n");
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, NULL, &d, err), -1);
  snprintf(want, sizeof want, "%s/train/labels.csv:2: expected 'file,label', found 'im1.pgm;1'",
           tmpdir);
  ck_assert_str_eq(err, want);
  /* No test split. */
  ck_assert_int_eq(rename(tpath("test"), tpath("gone")), 0);
  ck_assert_int_eq(rt_data_load(tmpdir, "test", -1, NULL, &d, err), -1);
  snprintf(want, sizeof want, "%s/test/labels.csv: cannot open: No such file or directory",
           tmpdir);
  ck_assert_str_eq(err, want);
}
END_TEST

/* Which kind of data set a directory holds, and what it says when it holds neither. */
START_TEST(data_format_detected) {
  char err[RT_ERR_LEN] = "", want[1024];
  RtDataset d;
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, NULL, &d, err), -1);
  snprintf(want, sizeof want, "%s: no data set: neither IDX files (train-images-idx3-ubyte[.gz] "
           "and the rest) nor an image folder (train/labels.csv and test/labels.csv)", tmpdir);
  ck_assert_str_eq(err, want);
  ck_assert_int_eq(rt_data_load(tpath("nope"), "train", -1, NULL, &d, err), -1);
  snprintf(want, sizeof want, "%s/nope: No such file or directory", tmpdir);
  ck_assert_str_eq(err, want);
  write_text(tpath("file"), "x");
  ck_assert_int_eq(rt_data_load(tpath("file"), "train", -1, NULL, &d, err), -1);
  snprintf(want, sizeof want, "%s/file: not a directory (--data names the directory of a data "
           "set)", tmpdir);
  ck_assert_str_eq(err, want);
  /* IDX: train-images present, so the IDX reader speaks (here about the missing labels). */
  static const unsigned char idx[] = {0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 42};
  write_bytes(tpath("train-images-idx3-ubyte"), idx, sizeof idx);
  ck_assert_int_eq(rt_data_load(tmpdir, "train", -1, NULL, &d, err), -1);
  ck_assert_msg(strstr(err, "train-labels-idx1-ubyte.gz: no such file"), "%s", err);
  static const unsigned char lab[] = {0, 0, 8, 1, 0, 0, 0, 1, 2};
  write_bytes(tpath("train-labels-idx1-ubyte"), lab, sizeof lab);
  ck_assert_msg(rt_data_load(tmpdir, "train", -1, NULL, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.data[0], 42);
  ck_assert_int_eq(d.labels.data[0], 2);
  rt_dataset_free(&d);
  /* The test split of IDX is t10k. */
  ck_assert_int_eq(rt_data_load(tmpdir, "test", -1, NULL, &d, err), -1);
  ck_assert_msg(strstr(err, "t10k-images-idx3-ubyte.gz: no such file"), "%s", err);
  /* A train/ directory makes it an image folder. */
  write_folder("train", 1, 1, 1);
  ck_assert_msg(rt_data_load(tmpdir, "train", -1, NULL, &d, err) == 0, "%s", err);
  ck_assert_int_eq(d.images.rank, 4);
  rt_dataset_free(&d);
}
END_TEST

/* ---- options ---- */

START_TEST(normalize_and_augment_options) {
  RtNormalize n;
  RtAugment a;
  char err[RT_ERR_LEN], text[512];
  ck_assert_int_eq(rt_normalize_parse("auto", &n, err), 0);
  ck_assert_int_eq(n.mode, RT_NORMALIZE_AUTO);
  rt_normalize_format(&n, text, sizeof text);
  ck_assert_str_eq(text, "auto");
  ck_assert_int_eq(rt_normalize_parse("0.1307,0.3081", &n, err), 0);
  ck_assert_int_eq(n.mode, RT_NORMALIZE_GIVEN);
  ck_assert_int_eq(n.channels, 1);
  ck_assert_double_eq(n.mean[0], 0.1307);
  ck_assert_double_eq(n.std[0], 0.3081);
  ck_assert_int_eq(rt_normalize_parse("0.49,0.25;-0.5,1e-3;0.1,0.3", &n, err), 0);
  ck_assert_int_eq(n.channels, 3);
  ck_assert_double_eq(n.mean[1], -0.5);
  ck_assert_double_eq(n.std[1], 1e-3);
  rt_normalize_format(&n, text, sizeof text);
  ck_assert_str_eq(text, "0.49,0.25;-0.5,0.001;0.1,0.3");
  /* Shortest text that reads back exactly. */
  n.mean[0] = 0.1 + 0.2;
  rt_normalize_format(&n, text, sizeof text);
  ck_assert_str_eq(text, "0.30000000000000004,0.25;-0.5,0.001;0.1,0.3");
  struct {
    const char *text, *want;
  } bad_norm[] = {
      {"0.5", "--normalize: expected 'auto' or MEAN,STD per channel separated by ';' (0.1307,0.3081 "
              "or '0.49,0.25;0.48,0.24;0.45,0.26'), got '0.5'"},
      {"0.5,x", "got '0.5,x'"},
      {"0.5,0.2;", "got '0.5,0.2;'"},
      {"0.5,0.2,0.3", "got '0.5,0.2,0.3'"},
      {"nan,1", "got 'nan,1'"},
      {"0.5,0", "--normalize: channel 0: the standard deviation must be positive, got '0'"},
      {"1,1;0.5,-2", "--normalize: channel 1: the standard deviation must be positive, got '-2'"},
      {"1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1;1,1",
       "--normalize: more than 16 channels"},
  };
  for (size_t i = 0; i < sizeof bad_norm / sizeof *bad_norm; i++) {
    ck_assert_int_eq(rt_normalize_parse(bad_norm[i].text, &n, err), -1);
    ck_assert_msg(strstr(err, bad_norm[i].want), "case %zu: '%s'", i, err);
  }

  ck_assert_int_eq(rt_augment_parse("contrast=0.2,flip,rotate=10,crop=4,translate=2.5", &a, err),
                   0);
  ck_assert_int_eq(a.on, 1);
  ck_assert_int_eq(a.flip, 1);
  ck_assert_int_eq(a.crop, 4);
  ck_assert_double_eq(a.rotate, 10);
  ck_assert_double_eq(a.translate, 2.5);
  ck_assert_double_eq(a.contrast, 0.2);
  rt_augment_format(&a, text, sizeof text);
  ck_assert_str_eq(text, "flip,crop=4,rotate=10,translate=2.5,contrast=0.2");
  ck_assert_int_eq(rt_augment_parse("flip", &a, err), 0);
  ck_assert_int_eq(a.crop, 0);
  struct {
    const char *text, *want;
  } bad_aug[] = {
      {"mirror", "--augment: unknown augmentation 'mirror' (expected flip, crop=P, "
                 "rotate=DEGREES, translate=PIXELS or contrast=C, separated by commas)"},
      {"flip,", "--augment: unknown augmentation ''"},
      {"flip,flip", "--augment: 'flip' is given twice"},
      {"flip=1", "--augment: 'flip' takes no value (a horizontal flip half of the time)"},
      {"crop", "--augment: 'crop' needs a number: crop=P, the zero padding in pixels (crop=4)"},
      {"crop=2.5", "--augment: crop=P takes a whole number of pixels from 1 to 4096, got '2.5'"},
      {"crop=0", "got '0'"},
      {"rotate=0", "--augment: rotate=DEGREES takes an angle above 0 and at most 180, got '0'"},
      {"rotate=181", "got '181'"},
      {"translate=-1", "--augment: translate=PIXELS takes a shift above 0 and at most 4096, got "
                       "'-1'"},
      {"contrast=inf", "--augment: 'contrast' needs a number: contrast=C, the factor's range "
                       "1 +- C (contrast=0.2)"},
      {"contrast=0", "--augment: contrast=C takes a number above 0 and at most 100, got '0'"},
  };
  for (size_t i = 0; i < sizeof bad_aug / sizeof *bad_aug; i++) {
    ck_assert_int_eq(rt_augment_parse(bad_aug[i].text, &a, err), -1);
    ck_assert_msg(strstr(err, bad_aug[i].want), "case %zu: '%s'", i, err);
  }
}
END_TEST

/* ---- normalisation ---- */

START_TEST(channel_stats_exact) {
  /* Three examples of 2 channels x 2 pixels. Channel 0: 0, 255 in each (mean 127.5, std 127.5);
   * channel 1: 10, 20 | 30, 40 | 50, 60 (mean 35, variance (25^2 + 15^2 + 5^2) * 2 / 6). */
  uint8_t px[] = {0, 255, 10, 20, 255, 0, 30, 40, 0, 255, 50, 60};
  RtIdx im = {.rank = 4, .dims = {3, 2, 1, 2}, .count = 3, .item = 4, .data = px};
  double mean[2], std[2];
  ck_assert_int_eq(rt_channel_stats(&im, NULL, 3, mean, std), 0);
  ck_assert_double_eq(mean[0], 127.5);
  ck_assert_double_eq(std[0], 127.5);
  ck_assert_double_eq(mean[1], 35);
  ck_assert_double_eq_tol(std[1], sqrt(875.0 / 3), 1e-12);
  /* A chosen subset (examples 2 and 1): channel 1 is 50, 60, 30, 40. */
  int64_t idx[] = {2, 1};
  ck_assert_int_eq(rt_channel_stats(&im, idx, 2, mean, std), 0);
  ck_assert_double_eq(mean[1], 45);
  ck_assert_double_eq(std[1], sqrt(125.0));
  ck_assert_int_eq(rt_channel_stats(&im, NULL, 0, mean, std), -1);
  /* Geometry: an IDX file's [N, H, W] is one channel. */
  int64_t chw[3];
  RtIdx idx3 = {.rank = 3, .dims = {5, 28, 27}, .item = 756};
  rt_image_geometry(&idx3, chw);
  ck_assert(chw[0] == 1 && chw[1] == 28 && chw[2] == 27);
  rt_image_geometry(&im, chw);
  ck_assert(chw[0] == 2 && chw[1] == 1 && chw[2] == 2);

  /* An example's values: pixels times the scale, then (v - mean) / std per channel. */
  double out[4], scratch[4];
  const double m[2] = {0.5, 0.25}, s[2] = {0.5, 0.125};
  rt_example_values(px, (int64_t[]){2, 1, 2}, NULL, 1.0 / 255, m, s, out, scratch);
  ck_assert_double_eq(out[0], (0 / 255.0 - 0.5) / 0.5);
  ck_assert_double_eq(out[1], (255 * (1 / 255.0) - 0.5) / 0.5);
  ck_assert_double_eq(out[2], (10 * (1 / 255.0) - 0.25) / 0.125);
  ck_assert_double_eq(out[3], (20 * (1 / 255.0) - 0.25) / 0.125);
  rt_example_values(px, (int64_t[]){2, 1, 2}, NULL, 0.5, NULL, NULL, out, scratch);
  ck_assert(out[0] == 0 && out[1] == 127.5 && out[2] == 5 && out[3] == 10);
}
END_TEST

/* ---- augmentation ---- */

/* A 3 x 4 one-channel image 1..12, row by row. */
static void image12(double *v) {
  for (int k = 0; k < 12; k++)
    v[k] = k + 1;
}

START_TEST(augment_exact_pixels) {
  double v[24], scratch[24];
  RtAugDraw none = {.contrast = 1};
  /* Nothing drawn: unchanged. */
  image12(v);
  rt_augment_apply(&none, v, 1, 3, 4, scratch);
  for (int k = 0; k < 12; k++)
    ck_assert_double_eq(v[k], k + 1);
  /* Flip: every row reversed. */
  RtAugDraw d = none;
  d.flip = 1;
  image12(v);
  rt_augment_apply(&d, v, 1, 3, 4, scratch);
  static const double flipped[12] = {4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9};
  ck_assert_mem_eq(v, flipped, sizeof flipped);
  /* Crop with padding: (dy, dx) = (1, -2) reads row y + 1, column x - 2; zeros outside. */
  d = none;
  d.dy = 1, d.dx = -2;
  image12(v);
  rt_augment_apply(&d, v, 1, 3, 4, scratch);
  static const double cropped[12] = {0, 0, 5, 6, 0, 0, 9, 10, 0, 0, 0, 0};
  ck_assert_mem_eq(v, cropped, sizeof cropped);
  /* Crop then flip, on two channels: the same on each. */
  d.flip = 1;
  image12(v);
  image12(v + 12);
  rt_augment_apply(&d, v, 2, 3, 4, scratch);
  static const double both[12] = {6, 5, 0, 0, 10, 9, 0, 0, 0, 0, 0, 0};
  ck_assert_mem_eq(v, both, sizeof both);
  ck_assert_mem_eq(v + 12, both, sizeof both);
  /* A whole-pixel translation through the bilinear warp is exact: 1 right, 1 up. */
  d = none;
  d.tx = 1, d.ty = -1;
  image12(v);
  rt_augment_apply(&d, v, 1, 3, 4, scratch);
  static const double moved[12] = {0, 5, 6, 7, 0, 9, 10, 11, 0, 0, 0, 0};
  ck_assert_mem_eq(v, moved, sizeof moved);
  /* Half a pixel right: each value the mean of two neighbours (zero beyond the edge). */
  d = none;
  d.tx = 0.5;
  image12(v);
  rt_augment_apply(&d, v, 1, 3, 4, scratch);
  static const double half[12] = {0.5, 1.5, 2.5, 3.5, 2.5, 5.5, 6.5, 7.5, 4.5, 9.5, 10.5, 11.5};
  ck_assert_mem_eq(v, half, sizeof half);
  /* 90 degrees counterclockwise on a 3 x 3 image about its centre: the top row becomes the
   * left column, read upwards (to rounding: cos 90 degrees is 6e-17 in doubles). */
  d = none;
  d.angle = 90;
  double sq[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  rt_augment_apply(&d, sq, 1, 3, 3, scratch);
  static const double turned[9] = {3, 6, 9, 2, 5, 8, 1, 4, 7};
  for (int k = 0; k < 9; k++)
    ck_assert_double_eq_tol(sq[k], turned[k], 1e-12);
  /* 180 degrees: the image reversed. */
  d.angle = -180;
  double sq2[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  rt_augment_apply(&d, sq2, 1, 3, 3, scratch);
  for (int k = 0; k < 9; k++)
    ck_assert_double_eq_tol(sq2[k], 9 - k, 1e-12);
  /* Contrast: f * v + (1 - f) * mean, clamped to 0..255; one channel's mean is its own. */
  d = none;
  d.contrast = 1.5;
  double c1[4] = {0, 100, 200, 240}; /* mean 135 */
  rt_augment_apply(&d, c1, 1, 2, 2, scratch);
  ck_assert_double_eq(c1[0], 0);           /* -67.5, clamped */
  ck_assert_double_eq(c1[1], 82.5);        /* 150 - 67.5 */
  ck_assert_double_eq(c1[2], 232.5);       /* 300 - 67.5 */
  ck_assert_double_eq(c1[3], 255);         /* 292.5, clamped */
  d.contrast = 0.5;
  double c3[6] = {100, 200, 0, 50, 10, 30}; /* R, G, B planes of 2 pixels */
  /* grey = 0.299 R + 0.587 G + 0.114 B: 0.299*100 + 0.587*0 + 0.114*10 = 31.04 and
   * 0.299*200 + 0.587*50 + 0.114*30 = 89.1; mean 60.07. */
  double mean = (0.299 * 100 + 0.587 * 0 + 0.114 * 10 + 0.299 * 200 + 0.587 * 50 + 0.114 * 30) / 2;
  rt_augment_apply(&d, c3, 3, 1, 2, scratch);
  static const double orig[6] = {100, 200, 0, 50, 10, 30};
  for (int k = 0; k < 6; k++)
    ck_assert_double_eq_tol(c3[k], 0.5 * orig[k] + 0.5 * mean, 1e-12);
}
END_TEST

START_TEST(augment_draws_reproducible) {
  RtAugment a;
  char err[RT_ERR_LEN];
  ck_assert_int_eq(rt_augment_parse("flip,crop=3,rotate=15,translate=2,contrast=0.25", &a, err),
                   0);
  RtAugDraw x, y;
  /* A function of (seed, epoch, example) only. */
  rt_augment_draw(&a, 7, 2, 41, &x);
  rt_augment_draw(&a, 7, 2, 41, &y);
  ck_assert_mem_eq(&x, &y, sizeof x);
  int differ_epoch = 0, differ_seed = 0, flips = 0, seen_dy[7] = {0};
  for (int64_t ex = 0; ex < 2000; ex++) {
    rt_augment_draw(&a, 7, 1, ex, &x);
    rt_augment_draw(&a, 7, 2, ex, &y);
    differ_epoch += memcmp(&x, &y, sizeof x) != 0;
    rt_augment_draw(&a, 8, 1, ex, &y);
    differ_seed += memcmp(&x, &y, sizeof x) != 0;
    flips += x.flip;
    ck_assert(x.dy >= -3 && x.dy <= 3 && x.dx >= -3 && x.dx <= 3);
    seen_dy[x.dy + 3]++;
    ck_assert(fabs(x.angle) <= 15 && fabs(x.tx) <= 2 && fabs(x.ty) <= 2);
    ck_assert(x.contrast >= 0.75 && x.contrast <= 1.25);
  }
  ck_assert_int_eq(differ_epoch, 2000);
  ck_assert_int_eq(differ_seed, 2000);
  ck_assert_msg(flips > 900 && flips < 1100, "%d flips of 2000", flips);
  for (int k = 0; k < 7; k++)
    ck_assert_msg(seen_dy[k] > 200, "crop offset %d drawn %d times", k - 3, seen_dy[k]);
  /* What one kind draws does not depend on which others are on; what is off draws nothing. */
  RtAugment only_rotate;
  ck_assert_int_eq(rt_augment_parse("rotate=15", &only_rotate, err), 0);
  rt_augment_draw(&a, 7, 3, 5, &x);
  rt_augment_draw(&only_rotate, 7, 3, 5, &y);
  ck_assert_double_eq(x.angle, y.angle);
  ck_assert(y.flip == 0 && y.dy == 0 && y.dx == 0 && y.tx == 0 && y.ty == 0 && y.contrast == 1);
  /* Pinned: a change of the scheme would change every augmented run (and break resuming a
   * checkpoint of an older trainer). */
  rt_augment_draw(&a, 1, 1, 0, &x);
  char pinned[160];
  snprintf(pinned, sizeof pinned, "%d %d %d %.6f %.6f %.6f %.6f", x.flip, x.dy, x.dx, x.angle,
           x.tx, x.ty, x.contrast);
  ck_assert_str_eq(pinned, "1 0 0 8.029936 0.935336 1.540519 0.903971");
}
END_TEST

/* ---- the driver: batches over a fake backend ---- */

/* A model with an image input [B, 1, 2, 3] (scale 1/255) fed from a folder, labels (unchecked:
 * no eval.output, so a label can name its example), a training loss and an evaluation loss. */
enum { T_IMAGE, T_LABEL, T_LOSS, T_EVAL_LOSS, NT };
#define B 4
enum { E_TRAIN, E_EVAL, NE };
static const kiln_entry entries[NE] = {[E_TRAIN] = {"train", NULL}, [E_EVAL] = {"eval", NULL}};
static const kiln_setting settings[] = {{"epochs", "2"}, {"seed", "1"}};
static const kiln_tensor tensors[NT] = {
    [T_IMAGE] = {.name = "image", .role = KILN_ROLE_INPUT, .dtype = KILN_F32, .rank = 4,
                 .dims = {B, 1, 2, 3}, .batch_axis = 0, .feed = "images", .scale = 1.0 / 255},
    [T_LABEL] = {.name = "label", .role = KILN_ROLE_INPUT, .dtype = KILN_I32, .rank = 1,
                 .dims = {B}, .batch_axis = 0, .feed = "labels", .scale = 1.0},
    [T_LOSS] = {.name = "loss", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F32, .rank = 0,
                .batch_axis = -1, .entries = 1 << E_TRAIN},
    [T_EVAL_LOSS] = {.name = "eval.loss", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F32,
                     .rank = 0, .batch_axis = -1, .entries = 1 << E_EVAL},
};

enum { MAXROWS = 256 };
typedef struct Log {
  double image[MAXROWS * B * 6]; /* what each row of each run held */
  int label[MAXROWS * B], entry[MAXROWS * B], run[MAXROWS * B];
  int rows, runs;
  double vals[NT][B * 6];
} Log;

static int log_run(void *self, int entry, int64_t batch, char *err) {
  Log *l = self;
  (void)err;
  for (int64_t k = 0; k < batch && l->rows < MAXROWS * B; k++, l->rows++) {
    memcpy(l->image + l->rows * 6, l->vals[T_IMAGE] + k * 6, 6 * sizeof(double));
    l->label[l->rows] = (int)l->vals[T_LABEL][k];
    l->entry[l->rows] = entry;
    l->run[l->rows] = l->runs;
  }
  l->runs++;
  l->vals[T_LOSS][0] = l->vals[T_EVAL_LOSS][0] = 1;
  return 0;
}
static void log_read(void *self, int t, double *out, int64_t n) {
  memcpy(out, ((Log *)self)->vals[t], (size_t)n * sizeof *out);
}
static void log_write(void *self, int t, const double *in, int64_t n) {
  memcpy(((Log *)self)->vals[t], in, (size_t)n * sizeof *in);
}

/* rt_train with stdout discarded and stderr in tmpdir/stderr.txt; its exit code. */
static int train_quietly(RtBackend *be, const RtOptions *o) {
  fflush(stdout);
  fflush(stderr);
  int out = dup(1), err = dup(2);
  ck_assert(freopen("/dev/null", "w", stdout) != NULL);
  ck_assert(freopen(tpath("stderr.txt"), "w", stderr) != NULL);
  int rc = rt_train(be, o);
  fflush(stdout);
  fflush(stderr);
  dup2(out, 1);
  dup2(err, 2);
  close(out);
  close(err);
  return rc;
}

/* Trains the logging fake on the folder in tmpdir with the given --normalize and --augment
 * (NULL: none) and seed; stderr into err_out (malloc'd) when it is not NULL. */
static Log *train_logged(const char *normalize, const char *augment, uint64_t seed,
                         char **err_out) {
  static const kiln_program prog = {.abi_version = KILN_ABI_VERSION, .model = "logged",
                                    .batch = B, .ntensors = NT, .tensors = tensors,
                                    .nentries = NE, .entries = entries, .nsettings = 2,
                                    .settings = settings};
  RtOptions o;
  rt_options_default(&o);
  o.data_dir = tmpdir;
  o.have_seed = 1;
  o.seed = seed;
  char err[RT_ERR_LEN];
  if (normalize)
    ck_assert_int_eq(rt_normalize_parse(normalize, &o.normalize, err), 0);
  if (augment)
    ck_assert_int_eq(rt_augment_parse(augment, &o.augment, err), 0);
  Log *l = calloc(1, sizeof *l);
  RtBackend be = {.prog = &prog, .self = l, .run = log_run, .read = log_read, .write = log_write};
  /* stderr to a file: the driver prints the statistics --normalize auto found. */
  int rc = train_quietly(&be, &o);
  FILE *f = fopen(tpath("stderr.txt"), "rb");
  char *text = calloc(1, 8192);
  ck_assert_uint_lt(fread(text, 1, 8191, f), 8191);
  fclose(f);
  ck_assert_msg(rc == 0, "%s", text);
  if (err_out)
    *err_out = text;
  else
    free(text);
  return l;
}

/* 10 training images (3 x 2, pixel k of image i: (i * 16 + k * 37) % 256) labelled with their
 * index, 3 test images likewise. */
static void write_indexed_folder(void) {
  for (int split = 0; split < 2; split++) {
    const char *name = split ? "test" : "train";
    int n = split ? 3 : 10;
    mkdir_p(tpath("%s", name));
    char csv[1024] = "";
    for (int i = 0; i < n; i++) {
      uint8_t px[6];
      for (int k = 0; k < 6; k++)
        px[k] = (uint8_t)((i * 16 + k * 37 + split * 5) % 256);
      write_pnm(tpath("%s/%d.pgm", name, i), 1, 3, 2, px);
      snprintf(csv + strlen(csv), sizeof csv - strlen(csv), "%d.pgm,%d\n", i, i);
    }
    write_text(tpath("%s/labels.csv", name), csv);
  }
}

START_TEST(driver_feeds_augmented_normalised_batches) {
  write_indexed_folder();
  RtDataset train, test;
  char err[RT_ERR_LEN];
  ck_assert_msg(rt_data_load(tmpdir, "train", -1, NULL, &train, err) == 0, "%s", err);
  ck_assert_msg(rt_data_load(tmpdir, "test", -1, NULL, &test, err) == 0, "%s", err);
  const char *aug = "flip,crop=1,rotate=30,translate=0.5,contrast=0.5";
  char *stderr_text;
  Log *a = train_logged("auto", aug, 3, &stderr_text);
  /* The statistics, printed for reuse, are those of the 10 training images. */
  double pm, ps;
  ck_assert_int_eq(rt_channel_stats(&train.images, NULL, 10, &pm, &ps), 0);
  char line[256];
  snprintf(line, sizeof line, "normalize: the mean and standard deviation per channel of the 10 "
           "training examples, in the units of input 'image': --normalize %.6g,%.6g\n",
           pm * (1.0 / 255), ps * (1.0 / 255));
  ck_assert_msg(strstr(stderr_text, line), "want '%s' in '%s'", line, stderr_text);
  free(stderr_text);
  /* 2 epochs of 10 examples in batches of 4, each followed by the 3 test examples. */
  ck_assert_int_eq(a->rows, 2 * (10 + 3));
  const double mean = pm * (1.0 / 255), std = ps * fabs(1.0 / 255);
  RtAugment spec;
  ck_assert_int_eq(rt_augment_parse(aug, &spec, err), 0);
  int seen[3][10] = {{0}}, augmented = 0;
  for (int r = 0, train_runs = 0, last_run = -1; r < a->rows; r++) {
    double want[6], scratch[6];
    int ex = a->label[r];
    if (a->entry[r] == E_TRAIN) {
      if (a->run[r] != last_run)
        train_runs++, last_run = a->run[r];
      int epoch = train_runs <= 3 ? 1 : 2; /* 3 batches an epoch: 4, 4, 2 */
      RtAugDraw d;
      rt_augment_draw(&spec, 3, epoch, ex, &d);
      rt_example_values(train.images.data + ex * 6, (int64_t[]){1, 2, 3}, &d, 1.0 / 255, &mean,
                        &std, want, scratch);
      double plain[6];
      rt_example_values(train.images.data + ex * 6, (int64_t[]){1, 2, 3}, NULL, 1.0 / 255, &mean,
                        &std, plain, scratch);
      augmented += memcmp(want, plain, sizeof want) != 0;
      seen[epoch][ex]++;
    } else {
      /* Evaluation: never augmented, normalised alike. */
      rt_example_values(test.images.data + ex * 6, (int64_t[]){1, 2, 3}, NULL, 1.0 / 255, &mean,
                        &std, want, scratch);
    }
    ck_assert_msg(!memcmp(a->image + r * 6, want, sizeof want), "row %d (entry %d, example %d)",
                  r, a->entry[r], ex);
  }
  for (int e = 1; e <= 2; e++)
    for (int ex = 0; ex < 10; ex++)
      ck_assert_int_eq(seen[e][ex], 1);
  ck_assert_int_eq(augmented, 20);
  /* The same seed: the same bytes in every batch; another seed: other ones. */
  Log *b = train_logged("auto", aug, 3, NULL);
  ck_assert_int_eq(b->rows, a->rows);
  ck_assert_mem_eq(a->image, b->image, (size_t)a->rows * 6 * sizeof(double));
  ck_assert_mem_eq(a->label, b->label, (size_t)a->rows * sizeof(int));
  Log *c = train_logged("auto", aug, 4, NULL);
  ck_assert(memcmp(a->image, c->image, (size_t)a->rows * 6 * sizeof(double)) != 0);
  free(b), free(c);
  /* Given values, and neither option: the values fed are those of the plain pixels. */
  Log *g = train_logged("0.5,0.25", NULL, 3, NULL);
  Log *plain = train_logged(NULL, NULL, 3, NULL);
  for (int r = 0; r < g->rows; r++) {
    const RtDataset *ds = g->entry[r] == E_TRAIN ? &train : &test;
    for (int k = 0; k < 6; k++) {
      double v = ds->images.data[g->label[r] * 6 + k] * (1.0 / 255);
      ck_assert_double_eq(g->image[r * 6 + k], (v - 0.5) / 0.25);
      ck_assert_double_eq(plain->image[r * 6 + k], v);
    }
  }
  free(g), free(plain), free(a);
  rt_dataset_free(&train);
  rt_dataset_free(&test);
}
END_TEST

START_TEST(driver_refuses_bad_pipelines) {
  write_indexed_folder();
  static const kiln_program prog = {.abi_version = KILN_ABI_VERSION, .model = "logged",
                                    .batch = B, .ntensors = NT, .tensors = tensors,
                                    .nentries = NE, .entries = entries, .nsettings = 2,
                                    .settings = settings};
  struct {
    const char *normalize, *want;
  } cases[] = {
      {"1,1;2,2", "trainer: error: --normalize gives 2 channels, but the images in %s have 1\n"},
      {"auto", "trainer: error: --normalize auto: channel 0 of the 10 training images is "
               "constant (standard deviation 0): give --normalize MEAN,STD\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    if (i == 1) /* every training image black */
      for (int k = 0; k < 10; k++) {
        uint8_t zero[6] = {0};
        write_pnm(tpath("train/%d.pgm", k), 1, 3, 2, zero);
      }
    RtOptions o;
    rt_options_default(&o);
    o.data_dir = tmpdir;
    o.quiet = 1;
    char err[RT_ERR_LEN], want[1024];
    ck_assert_int_eq(rt_normalize_parse(cases[i].normalize, &o.normalize, err), 0);
    Log *l = calloc(1, sizeof *l);
    RtBackend be = {.prog = &prog, .self = l, .run = log_run, .read = log_read, .write = log_write};
    int rc = train_quietly(&be, &o);
    ck_assert_int_eq(rc, 1);
    FILE *f = fopen(tpath("stderr.txt"), "rb");
    char text[2048] = "";
    ck_assert_uint_lt(fread(text, 1, sizeof text - 1, f), sizeof text - 1);
    fclose(f);
    snprintf(want, sizeof want, cases[i].want, tmpdir);
    ck_assert_str_eq(text, want);
    ck_assert_int_eq(l->runs, 0);
    free(l);
  }
}
END_TEST

/* A model whose data is in the file has no images to normalise or augment. */
START_TEST(literal_models_refuse_the_pipeline) {
  static const double w0[1] = {1};
  static const kiln_tensor lit[] = {
      {.name = "w", .role = KILN_ROLE_PARAM, .dtype = KILN_F64, .rank = 1, .dims = {1},
       .batch_axis = -1, .init = KILN_INIT_DATA, .data = w0},
      {.name = "loss", .role = KILN_ROLE_OUTPUT, .dtype = KILN_F64, .rank = 0, .batch_axis = -1},
  };
  static const kiln_entry train_only[] = {{"train", NULL}};
  static const kiln_program prog = {.abi_version = KILN_ABI_VERSION, .model = "toy", .batch = 1,
                                    .ntensors = 2, .tensors = lit, .nentries = 1,
                                    .entries = train_only};
  for (int i = 0; i < 2; i++) {
    RtOptions o;
    rt_options_default(&o);
    char err[RT_ERR_LEN];
    if (i == 0)
      ck_assert_int_eq(rt_augment_parse("flip", &o.augment, err), 0);
    else
      ck_assert_int_eq(rt_normalize_parse("auto", &o.normalize, err), 0);
    Log *l = calloc(1, sizeof *l);
    RtBackend be = {.prog = &prog, .self = l, .run = log_run, .read = log_read, .write = log_write};
    ck_assert_int_eq(train_quietly(&be, &o), 1);
    ck_assert_int_eq(l->runs, 0);
    free(l);
    FILE *f = fopen(tpath("stderr.txt"), "rb");
    char text[1024] = "";
    ck_assert_uint_lt(fread(text, 1, sizeof text - 1, f), sizeof text - 1);
    fclose(f);
    ck_assert_str_eq(text, i == 0 ? "trainer: error: --augment works on images from a data set, "
                                    "but model 'toy' has its data in the file\n"
                                  : "trainer: error: --normalize works on images from a data "
                                    "set, but model 'toy' has its data in the file\n");
  }
}
END_TEST

/* The options as the trainer's command line takes them, a bad one's message, the usage text. */
START_TEST(trainer_options) {
  RtOptions o;
  rt_options_default(&o);
  char *argv[] = {"t", "--normalize", "0.5,0.25;0.4,0.2;0.3,0.1", "--augment=flip,crop=4", NULL};
  ck_assert_int_eq(rt_options_parse(&o, 4, argv, "t"), 0);
  ck_assert_int_eq(o.normalize.channels, 3);
  ck_assert_double_eq(o.normalize.std[2], 0.1);
  ck_assert_int_eq(o.augment.flip, 1);
  ck_assert_int_eq(o.augment.crop, 4);
  /* A bad value: the parser's message after the trainer's name. */
  char *bad[] = {"t", "--augment", "flip,zoom=2", NULL};
  fflush(stderr);
  int saved = dup(2);
  ck_assert(freopen(tpath("stderr.txt"), "w", stderr) != NULL);
  int rc = rt_options_parse(&o, 3, bad, "t");
  char *help[] = {"t", "--help", NULL};
  fflush(stdout);
  int saved_out = dup(1);
  ck_assert(freopen(tpath("stdout.txt"), "w", stdout) != NULL);
  int rc_help = rt_options_parse(&o, 2, help, "t");
  fflush(stdout);
  fflush(stderr);
  dup2(saved, 2);
  dup2(saved_out, 1);
  close(saved);
  close(saved_out);
  ck_assert_int_eq(rc, -1);
  ck_assert_int_eq(rc_help, 1);
  static char text[32768];
  FILE *f = fopen(tpath("stderr.txt"), "rb");
  ck_assert_uint_lt(fread(text, 1, sizeof text - 1, f), sizeof text - 1);
  fclose(f);
  ck_assert_str_eq(text, "t: error: --augment: unknown augmentation 'zoom=2' (expected flip, "
                         "crop=P, rotate=DEGREES, translate=PIXELS or contrast=C, separated by "
                         "commas)\n");
  memset(text, 0, sizeof text);
  f = fopen(tpath("stdout.txt"), "rb");
  ck_assert_uint_lt(fread(text, 1, sizeof text - 1, f), sizeof text - 1);
  fclose(f);
  ck_assert_msg(strstr(text, "  --normalize M,S[;M,S...]  per-channel normalisation") &&
                    strstr(text, "  --augment LIST      random changes to each training example") &&
                    strstr(text, "'file,label' rows naming PGM or PPM images"),
                "%.2000s", text);
}
END_TEST

static Suite *data_suite(void) {
  Suite *s = suite_create("data");
  TCase *tc = tcase_create("data");
  tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
  tcase_add_test(tc, pnm_exact_pixels);
  tcase_add_test(tc, pnm_errors);
  tcase_add_test(tc, labels_csv);
  tcase_add_test(tc, folder_loads_exactly);
  tcase_add_test(tc, data_format_detected);
  tcase_add_test(tc, normalize_and_augment_options);
  tcase_add_test(tc, channel_stats_exact);
  tcase_add_test(tc, augment_exact_pixels);
  tcase_add_test(tc, augment_draws_reproducible);
  tcase_add_test(tc, driver_feeds_augmented_normalised_batches);
  tcase_add_test(tc, driver_refuses_bad_pipelines);
  tcase_add_test(tc, literal_models_refuse_the_pipeline);
  tcase_add_test(tc, trainer_options);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(data_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
