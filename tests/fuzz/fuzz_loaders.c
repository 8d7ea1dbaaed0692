/*
 * fuzz_loaders.c — libFuzzer harness for the runtime's file readers: rt_safetensors_read
 * (checkpoints, with their metadata), rt_idx_load (IDX data sets, plain or gzipped), and an image
 * folder's rt_image_load (PGM, PPM) and rt_labels_parse (labels.csv). The first byte picks the
 * reader (bit 1 set: an image folder's, bit 2 then choosing the list; else bit 0: IDX or
 * safetensors), the rest is the file's contents. Any input must load or fail with a message in err;
 * a crash, a sanitizer report, a leak or a hang is a bug. See tests/fuzz/README.md.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime.h"

static char path[64];

/* One scratch file per process, rewritten for every input (the readers take a path). */
static int write_file(const uint8_t *data, size_t size) {
  if (!path[0]) {
    snprintf(path, sizeof path, "/tmp/kiln-fuzz-loaders-%ld", (long)getpid());
  }
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  if (size && fwrite(data, 1, size, f) != size) {
    fclose(f);
    return -1;
  }
  return fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || write_file(data + 1, size - 1) != 0) return 0;
  char err[RT_ERR_LEN] = "";
  if (data[0] & 2) {
    if (data[0] & 4) {
      RtLabels l;
      if (rt_labels_parse((const char *)data + 1, size - 1, "labels.csv", &l, err) == 0) {
        /* What the loader relies on: every name a non-empty string inside the text. */
        for (int64_t i = 0; i < l.n; i++)
          if (!l.files[i][0] || l.files[i][0] == '/' || l.lines[i] < 1) abort();
        rt_labels_free(&l);
      } else if (!err[0]) {
        abort();
      }
      return 0;
    }
    RtImage im;
    if (rt_image_load(path, &im, err) == 0) {
      unsigned sum = 0;
      for (int64_t i = 0; i < im.channels * im.height * im.width; i++) sum += im.pixels[i];
      (void)sum;
      rt_image_free(&im);
    } else if (!err[0]) {
      abort();
    }
  } else if (data[0] & 1) {
    RtIdx x;
    memset(&x, 0, sizeof x);
    if (rt_idx_load(path, &x, err) == 0) {
      /* What the trainer relies on: count * item bytes, all readable. */
      unsigned sum = 0;
      for (int64_t i = 0; i < x.count * x.item; i++) sum += x.data[i];
      (void)sum;
      rt_idx_free(&x);
    } else if (!err[0]) {
      abort();  /* a failure must say why */
    }
  } else {
    RtNamedTensor *ts = NULL;
    RtMeta *meta = NULL;
    int n = 0, nmeta = 0;
    if (rt_safetensors_read(path, &ts, &n, &meta, &nmeta, err) == 0) {
      for (int i = 0; i < nmeta; i++)
        if (!meta[i].key || !meta[i].value || rt_meta_get(meta, nmeta, meta[i].key) == NULL)
          abort();
      rt_meta_free(meta, nmeta);
      double sum = 0;
      for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < ts[i].rank; d++) numel *= ts[i].dims[d];
        for (int64_t k = 0; k < numel; k++) sum += ts[i].values[k];
        if (!ts[i].name) abort();
      }
      (void)sum;
      rt_safetensors_free(ts, n);
    } else if (!err[0]) {
      abort();
    }
  }
  return 0;
}
