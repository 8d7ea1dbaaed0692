/*
 * rt_idx.c — IDX files (the MNIST format), plain or gzipped.
 *
 * An IDX file is a big-endian header — two zero bytes, an element-type byte, a rank byte, then
 * one uint32 per dimension — followed by the elements. Only unsigned bytes (type 0x08) occur in
 * MNIST and Fashion-MNIST, so only they are accepted. Whether a file is gzipped is decided by its
 * first two bytes (1f 8b), not its name.
 *
 * The data is read in growing chunks rather than allocated from the header's dims up front: a
 * corrupt header claiming terabytes then fails as "truncated" instead of exhausting memory.
 *
 * A load may stop after the first N items (--limit-train, --limit-test): inflating all of
 * Fashion-MNIST's 60,000 training images takes a quarter of a second, which dominated starting a
 * short run once the compiled step came from the cache. The rest of such a file is then neither
 * read nor checked.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "runtime.h"

/* A byte source: stdio for plain files, zlib for gzipped ones. */
typedef struct Reader {
  FILE *f;
  gzFile gz;
  const char *path;
  char *err;
  int64_t file_bytes; /* the size of the file as stored (compressed, when gz) */
} Reader;

/* Deflate expands its input at most 1032 times (RFC 1951: a 258-byte match per bit-pair code,
 * about 1032:1 at best), so a gzip file of n bytes holds at most this many: a header promising
 * more is refused before anything is inflated. */
static int64_t gz_most_bytes(int64_t n) { return n > INT64_MAX / 1100 ? INT64_MAX : n * 1032 + 1024; }

/* Reads up to n bytes; returns how many, or -1 after writing the error. */
static int64_t rd_read(Reader *r, void *buf, int64_t n) {
  int64_t got = 0;
  while (got < n) {
    if (r->gz) {
      unsigned want = n - got > (1 << 30) ? 1u << 30 : (unsigned)(n - got);
      int k = gzread(r->gz, (char *)buf + got, want);
      if (k < 0) {
        int code;
        const char *msg = gzerror(r->gz, &code);
        rt_errf(r->err, "%s: corrupt gzip data (%s)", r->path,
                 msg && *msg ? msg : "zlib error");
        return -1;
      }
      if (k == 0) {
        /* gzread reports a stream cut short as a clean end plus an error code. */
        int code;
        const char *msg = gzerror(r->gz, &code);
        if (code != Z_OK && code != Z_STREAM_END) {
          rt_errf(r->err, "%s: corrupt gzip data (%s)", r->path,
                   msg && *msg ? msg : "zlib error");
          return -1;
        }
        break;
      }
      got += k;
    } else {
      size_t k = fread((char *)buf + got, 1, (size_t)(n - got), r->f);
      if (k == 0) {
        if (ferror(r->f)) {
          rt_errf(r->err, "%s: read error: %s", r->path, strerror(errno));
          return -1;
        }
        break;
      }
      got += (int64_t)k;
    }
  }
  return got;
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The header, then the first max_items items (all when max_items < 0). */
static int idx_parse(Reader *r, int64_t max_items, RtIdx *out) {
  const char *path = r->path;
  char *err = r->err;
  unsigned char h[4 + 4 * 4];
  int64_t k = rd_read(r, h, 4);
  if (k < 0)
    return -1;
  if (k < 4) {
    rt_errf(err, "%s: truncated: file ends inside the 4-byte IDX magic", path);
    return -1;
  }
  if (h[0] != 0 || h[1] != 0 || h[3] < 1 || h[3] > 4) {
    rt_errf(err, "%s: bad magic 0x%08x: not an IDX file", path, (unsigned)be32(h));
    return -1;
  }
  if (h[2] != 0x08) {
    rt_errf(err,
             "%s: unsupported IDX element type 0x%02x (only unsigned bytes, 0x08, are supported)",
             path, h[2]);
    return -1;
  }
  int rank = h[3];
  k = rd_read(r, h + 4, 4 * rank);
  if (k < 0)
    return -1;
  if (k < 4 * rank) {
    rt_errf(err, "%s: truncated: file ends inside the header (%d dimensions)", path,
             rank);
    return -1;
  }
  out->rank = rank;
  int64_t total = 1;
  for (int i = 0; i < rank; i++) {
    out->dims[i] = be32(h + 4 + 4 * i);
    /* Each dim is below 2^32; stop before the product can overflow int64. */
    if (out->dims[i] != 0 && total > INT64_MAX / 2 / out->dims[i]) {
      rt_errf(err, "%s: header dimensions are impossibly large", path);
      return -1;
    }
    total *= out->dims[i];
  }
  out->count = out->dims[0];
  out->item = out->count ? total / out->count : 1;
  bool limited = max_items >= 0 && max_items < out->count;
  if (limited) {
    out->count = max_items;
    total = max_items * out->item;
  }
  if (!out->dims[0])
    for (int i = 1; i < rank; i++) {
      /* No data, but the item size is still used: the same bound as above. */
      if (out->dims[i] != 0 && out->item > INT64_MAX / 2 / out->dims[i]) {
        rt_errf(err, "%s: header dimensions are impossibly large", path);
        return -1;
      }
      out->item *= out->dims[i];
    }

  if (r->gz && total > gz_most_bytes(r->file_bytes)) {
    rt_errf(err, "%s: header promises %lld data bytes, more than a %lld-byte gzip file can hold",
            path, (long long)total, (long long)r->file_bytes);
    return -1;
  }
  /* Read the elements in chunks that double, up to the size the header promises. */
  int64_t cap = 0, got = 0;
  uint8_t *data = NULL;
  while (got < total) {
    if (got == cap) {
      int64_t ncap = cap ? cap * 2 : 1 << 20;
      if (ncap > total)
        ncap = total;
      uint8_t *nd = realloc(data, (size_t)ncap);
      if (!nd) {
        free(data);
        rt_errf(err, "%s: out of memory reading %lld bytes", path, (long long)total);
        return -1;
      }
      data = nd;
      cap = ncap;
    }
    k = rd_read(r, data + got, cap - got);
    if (k < 0) {
      free(data);
      return -1;
    }
    if (k == 0)
      break;
    got += k;
  }
  if (got < total) {
    free(data);
    rt_errf(err, "%s: truncated: header promises %lld data bytes, file has %lld",
             path, (long long)total, (long long)got);
    return -1;
  }
  unsigned char extra;
  k = limited ? 0 : rd_read(r, &extra, 1);
  if (k != 0) {
    free(data);
    if (k > 0)
      rt_errf(err, "%s: size mismatch: data continues past the %lld bytes the header "
               "promises", path, (long long)total);
    return -1;
  }
  if (!data) /* an empty tensor still gets a valid pointer */
    data = malloc(1);
  if (!data) {
    rt_errf(err, "%s: out of memory", path);
    return -1;
  }
  out->data = data;
  return 0;
}

int rt_idx_load(const char *path, RtIdx *out, char *err) {
  return rt_idx_load_first(path, -1, out, err);
}

int rt_idx_load_first(const char *path, int64_t max_items, RtIdx *out, char *err) {
  memset(out, 0, sizeof *out);
  Reader r = {.path = path, .err = err};
  struct stat st;
  if (!(r.f = rt_open_regular(path, &st, err)))
    return -1;
  r.file_bytes = st.st_size;
  unsigned char magic[2];
  size_t k = fread(magic, 1, 2, r.f);
  if (k == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
    /* zlib reads the same open file, already known to be a regular one. */
    rewind(r.f);
    int fd = dup(fileno(r.f));
    fclose(r.f);
    r.f = NULL;
    r.gz = fd >= 0 ? gzdopen(fd, "rb") : NULL;
    if (!r.gz && fd >= 0)
      close(fd);
    if (!r.gz) {
      rt_errf(err, "%s: cannot open: %s", path, errno ? strerror(errno) : "zlib");
      return -1;
    }
    gzbuffer(r.gz, 1 << 16);
  } else {
    rewind(r.f);
  }
  int rc = idx_parse(&r, max_items, out);
  if (r.gz)
    gzclose(r.gz);
  else
    fclose(r.f);
  if (rc)
    memset(out, 0, sizeof *out);
  return rc;
}

void rt_idx_free(RtIdx *x) {
  free(x->data);
  memset(x, 0, sizeof *x);
}

/* DIR/NAME.gz if it exists, else DIR/NAME; NULL (with the error) if neither does. */
static int find_file(const char *dir, const char *name, char *path, size_t len, char *err) {
  snprintf(path, len, "%s/%s.gz", dir, name);
  if (access(path, F_OK) == 0)
    return 0;
  snprintf(path, len, "%s/%s", dir, name);
  if (access(path, F_OK) == 0)
    return 0;
  rt_errf(err, "%s/%s.gz: no such file (nor %s/%s)", dir, name, dir, name);
  return -1;
}

int rt_dataset_load(const char *dir, const char *split, int64_t max_items, RtDataset *out,
                    char *err) {
  memset(out, 0, sizeof *out);
  char name[64], ipath[4096], lpath[4096];
  snprintf(name, sizeof name, "%s-images-idx3-ubyte", split);
  if (find_file(dir, name, ipath, sizeof ipath, err))
    return -1;
  snprintf(name, sizeof name, "%s-labels-idx1-ubyte", split);
  if (find_file(dir, name, lpath, sizeof lpath, err))
    return -1;
  if (rt_idx_load_first(ipath, max_items, &out->images, err))
    return -1;
  if (rt_idx_load_first(lpath, max_items, &out->labels, err)) {
    rt_idx_free(&out->images);
    return -1;
  }
  snprintf(out->labels_path, sizeof out->labels_path, "%s", lpath);
  if (out->images.rank < 2)
    rt_errf(err, "%s: expected images (rank 2 or more), found rank %d", ipath,
             out->images.rank);
  else if (out->labels.rank != 1)
    rt_errf(err, "%s: expected labels (rank 1), found rank %d", lpath,
             out->labels.rank);
  else if (out->images.dims[0] != out->labels.dims[0])
    rt_errf(err, "%s: %lld labels, but %s has %lld images", lpath,
             (long long)out->labels.dims[0], ipath, (long long)out->images.dims[0]);
  else
    return 0;
  rt_dataset_free(out);
  return -1;
}

void rt_dataset_free(RtDataset *d) {
  rt_idx_free(&d->images);
  rt_idx_free(&d->labels);
}

const RtIdx *rt_dataset_field(const RtDataset *d, const char *name) {
  if (!name)
    return NULL;
  if (!strcmp(name, "images"))
    return &d->images;
  if (!strcmp(name, "labels"))
    return &d->labels;
  return NULL;
}
