/*
 * rt_init.c — parameter initialisers.
 *
 * Each KILN_INIT_* scheme as PyTorch defines it (torch.nn.init), in terms of the fan_in and
 * fan_out the compiler computed for the tensor (for a conv weight [out, in, kh, kw]: fan_in =
 * in*kh*kw, fan_out = out*kh*kw, as torch's _calculate_fan_in_and_fan_out). TORCH_DEFAULT is what
 * nn.Linear and nn.Conv2d do to both weight and bias: kaiming_uniform_(a=sqrt(5)) on the weight
 * works out to U(+-1/sqrt(fan_in)), and the bias uses the same bound.
 *
 * The values will not equal PyTorch's for the same seed (a different generator); what matters is
 * the distribution, and that kiln's own runtimes agree bit for bit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

static void fill_uniform(RtRng *r, double bound, double *out, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    out[i] = bound * (2.0 * rt_rng_uniform(r) - 1.0);
}

static void fill_normal(RtRng *r, double std, double *out, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    out[i] = std * rt_rng_normal(r);
}

/* torch.nn.init.orthogonal_: the tensor as a matrix [rows = dims[0], cols = the rest], drawn
 * Gaussian, transposed when it is wide, factored A = QR with R's diagonal made positive (which
 * fixes Q), Q transposed back and scaled by gain. Gram-Schmidt computes that Q directly: it
 * makes R's diagonal positive, and running it twice per column keeps Q orthonormal to rounding.
 * A rank-1 tensor is one column. */
static void fill_orthogonal(RtRng *r, const kiln_tensor *t, double gain, double *out, int64_t n) {
  int64_t rows = t->rank >= 1 && t->dims[0] > 0 ? t->dims[0] : 1, cols = n / rows;
  if (t->rank < 2)
    rows = n, cols = 1;
  fill_normal(r, 1.0, out, n);
  int wide = rows < cols;
  int64_t m = wide ? cols : rows, k = wide ? rows : cols; /* A is m x k, m >= k */
  /* column j of A is out[j*cols ...] read across when wide (a row of the tensor), else down */
  int64_t step = wide ? 1 : cols, next = wide ? cols : 1;
  double *v = malloc((size_t)m * sizeof *v);
  if (!v) {
    memset(out, 0, (size_t)n * sizeof *out); /* no memory: the caller's tensor stays defined */
    return;
  }
  for (int64_t j = 0; j < k; j++) {
    for (int64_t i = 0; i < m; i++)
      v[i] = out[j * next + i * step];
    for (int pass = 0; pass < 2; pass++)
      for (int64_t q = 0; q < j; q++) {
        double dot = 0;
        for (int64_t i = 0; i < m; i++)
          dot += out[q * next + i * step] * v[i];
        for (int64_t i = 0; i < m; i++)
          v[i] -= dot * out[q * next + i * step];
      }
    double norm = 0;
    for (int64_t i = 0; i < m; i++)
      norm += v[i] * v[i];
    norm = sqrt(norm);
    for (int64_t i = 0; i < m; i++)
      out[j * next + i * step] = norm > 0 ? v[i] / norm : 0;
  }
  free(v);
  for (int64_t i = 0; i < n; i++)
    out[i] *= gain;
}

void rt_init_tensor(const kiln_tensor *t, uint64_t seed, double *out, int64_t n) {
  RtRng r;
  rt_rng_seed(&r, rt_hash_name(seed, t->name));
  /* A zero fan (a tensor with an empty dimension) has no elements to fill anyway; clamping to 1
   * only keeps the arithmetic finite. */
  double fan_in = t->fan_in > 0 ? (double)t->fan_in : 1.0;
  double fan_out = t->fan_out > 0 ? (double)t->fan_out : 1.0;

  switch (t->init) {
  case KILN_INIT_ONES:
    for (int64_t i = 0; i < n; i++)
      out[i] = 1.0;
    return;
  case KILN_INIT_CONST:
    for (int64_t i = 0; i < n; i++)
      out[i] = t->init_a;
    return;
  case KILN_INIT_NORMAL:
    fill_normal(&r, t->init_a, out, n);
    return;
  case KILN_INIT_UNIFORM:
    fill_uniform(&r, t->init_a, out, n);
    return;
  case KILN_INIT_XAVIER_NORMAL:
    fill_normal(&r, sqrt(2.0 / (fan_in + fan_out)), out, n);
    return;
  case KILN_INIT_XAVIER_UNIFORM:
    fill_uniform(&r, sqrt(6.0 / (fan_in + fan_out)), out, n);
    return;
  case KILN_INIT_HE_NORMAL:
    fill_normal(&r, sqrt(2.0 / fan_in), out, n);
    return;
  case KILN_INIT_HE_UNIFORM:
    fill_uniform(&r, sqrt(6.0 / fan_in), out, n);
    return;
  case KILN_INIT_ORTHOGONAL:
    fill_orthogonal(&r, t, t->init_a, out, n);
    return;
  case KILN_INIT_TORCH_DEFAULT:
    fill_uniform(&r, 1.0 / sqrt(fan_in), out, n);
    return;
  case KILN_INIT_DATA:
    if (t->data) {
      memcpy(out, t->data, (size_t)n * sizeof *out);
      return;
    }
    break;
  default: /* KILN_INIT_ZEROS, and anything unknown: zero is the least surprising value */
    break;
  }
  for (int64_t i = 0; i < n; i++)
    out[i] = 0.0;
}
