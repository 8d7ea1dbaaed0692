/*
 * fashion_mnist.h — the host examples' own data loader: Fashion-MNIST (or MNIST) IDX files,
 * gzipped as Debian's dataset-fashion-mnist ships them, read with zlib. kiln is not involved:
 * a host program brings its data in whatever way it likes and hands kiln float and int buffers.
 */
#ifndef FASHION_MNIST_H
#define FASHION_MNIST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

typedef struct Dataset {
  int64_t count;
  float *images;   /* count × 784 pixels scaled to [0, 1] */
  int32_t *labels; /* count labels 0..9 */
} Dataset;

static uint32_t idx_u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads DIR/NAME-ubyte.gz: its header must have `rank` dimensions; returns the bytes after it
 * (at most `limit` items) and the item count, or NULL with a message on stderr. */
static unsigned char *idx_read(const char *dir, const char *name, int rank, int64_t limit,
                               int64_t *count, int64_t *item) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s-ubyte.gz", dir, name);
  gzFile f = gzopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return NULL;
  }
  unsigned char head[16];
  int hn = 4 + 4 * rank;
  unsigned char *data = NULL;
  if (gzread(f, head, (unsigned)hn) != hn || idx_u32(head) != (uint32_t)(0x800 + rank)) {
    fprintf(stderr, "%s: not an IDX file of rank %d\n", path, rank);
    goto done;
  }
  *count = idx_u32(head + 4);
  *item = rank == 3 ? (int64_t)idx_u32(head + 8) * idx_u32(head + 12) : 1;
  if (limit > 0 && *count > limit)
    *count = limit;
  size_t bytes = (size_t)(*count * *item);
  data = malloc(bytes ? bytes : 1);
  if (!data || gzread(f, data, (unsigned)bytes) != (int)bytes) {
    fprintf(stderr, "%s: truncated\n", path);
    free(data);
    data = NULL;
  }
done:
  gzclose(f);
  return data;
}

/* How many of n rows of `classes` logits have their largest value at the row's label. */
static int64_t count_right(const float *logits, const int32_t *labels, int64_t n, int classes) {
  int64_t right = 0;
  for (int64_t k = 0; k < n; k++) {
    int best = 0;
    for (int c = 1; c < classes; c++)
      if (logits[k * classes + c] > logits[k * classes + best])
        best = c;
    right += best == labels[k];
  }
  return right;
}

static void dataset_free(Dataset *d) {
  free(d->images);
  free(d->labels);
  memset(d, 0, sizeof *d);
}

/* split: "train" or "t10k"; at most limit examples (0: all). Returns 0 or -1. */
static int dataset_load(const char *dir, const char *split, int64_t limit, Dataset *d) {
  memset(d, 0, sizeof *d);
  char name[64];
  int64_t n, item, nl, one;
  snprintf(name, sizeof name, "%s-images-idx3", split);
  unsigned char *px = idx_read(dir, name, 3, limit, &n, &item);
  snprintf(name, sizeof name, "%s-labels-idx1", split);
  unsigned char *lb = px ? idx_read(dir, name, 1, limit, &nl, &one) : NULL;
  if (!px || !lb || nl != n || item != 784) {
    if (px && lb)
      fprintf(stderr, "%s: %lld images of %lld pixels, %lld labels\n", dir, (long long)n,
              (long long)item, (long long)nl);
    free(px);
    free(lb);
    return -1;
  }
  d->count = n;
  d->images = malloc((size_t)n * 784 * sizeof *d->images);
  d->labels = malloc((size_t)n * sizeof *d->labels);
  if (d->images && d->labels) {
    for (int64_t i = 0; i < n * 784; i++)
      d->images[i] = px[i] / 255.0f;
    for (int64_t i = 0; i < n; i++)
      d->labels[i] = lb[i];
  }
  free(px);
  free(lb);
  if (!d->images || !d->labels) {
    fprintf(stderr, "out of memory\n");
    dataset_free(d);
    return -1;
  }
  return 0;
}

#endif
