/*
 * cg_window.c — convolutions and pools. Convolutions are direct loop nests with the kernel
 * columns unrolled, each with its constant range of valid output columns (so padding costs no
 * test in the inner loop, which runs along a row and vectorises), or, when the schedule says
 * so, im2col + the blocked GEMM per image, each image a task when the kernel has workers.
 * Max pools whose windows cover the input exactly run in contiguous passes (maxpool_passes);
 * other pools whose windows tile the input unroll their taps; the rest test each tap's bounds.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cg/cg.h"

/* "xo + j" or "xo + j*2": the input column of output column j for the current tap. */
static const char *win_xj(const Cg *cg, const Window *w) {
  return w->SW == 1 ? "xo + j" : pool_printf(cg->pool, "xo + j*%" PRId64, w->SW);
}

/* Opens the loops of the direct forward convolution and input gradient: n (one task per image
 * when the kernel has workers), o, i, p (the input row r, rows in the padding skipped), and sets
 * yo, the start of y's row (n, o, i), and cb, the first input channel of o's group. Closed by
 * conv_close. */
static void conv_open(Cg *cg, const Node *n, const Window *w, bool zero_yrow) {
  int64_t Cg_ = w->C / w->G, Og = w->O / w->G;
  if (cg->s->node[n->id].workers > 1) {
    cg_tasks_open(cg, "n");
  } else {
    cg_line(cg, "for (int64_t n = 0; n < %s; n++) {", sz_c(cg, sz_dim(cg, w->N)));
    cg->indent++;
  }
  cg_line(cg, "for (int64_t o = 0; o < %" PRId64 "; o++) {", w->O);
  cg->indent++;
  if (w->G == 1)
    cg_line(cg, "const int64_t cb = 0;");
  else
    cg_line(cg, "const int64_t cb = o / %" PRId64 " * %" PRId64 ";", Og, Cg_);
  cg_line(cg, "for (int64_t i = 0; i < %" PRId64 "; i++) {", w->Ho);
  cg->indent++;
  cg_line(cg, "const int64_t yo = ((n*%" PRId64 " + o)*%" PRId64 " + i)*%" PRId64 ";", w->O, w->Ho,
       w->Wo);
  if (zero_yrow) {
    cg_line(cg, "for (int64_t j = 0; j < %" PRId64 "; j++)", w->Wo);
    cg_line(cg, "  y[yo + j] = 0;");
  }
  cg_line(cg, "for (int64_t p = 0; p < %" PRId64 "; p++) {", w->KH);
  cg->indent++;
  cg_line(cg, "const int64_t r = i*%" PRId64 " - %" PRId64 " + p*%" PRId64 ";", w->SH, w->PT, w->DH);
  cg_line(cg, "if (r < 0 || r >= %" PRId64 ")", w->H);
  cg_line(cg, "  continue;");
}

static void conv_close(Cg *cg, const Node *n, const Window *w) {
  for (int k = 0; k < 3; k++) {
    cg->indent--;
    cg_line(cg, "}");
  }
  if (cg->s->node[n->id].workers > 1) {
    cg_tasks_close(cg, sz_c(cg, sz_dim(cg, w->N)), NULL, 0);
    return;
  }
  cg->indent--;
  cg_line(cg, "}");
}

/* One kernel column q inside conv_open's loops: its c loop with the constant column range, xo
 * the input element of column 0 (maybe in the padding, never read there) and wv the weight
 * w[o, c, p, q]; `body` is the inner statement over j. */
static void conv_tap(Cg *cg, const Node *n, const Window *w, int64_t q, int wk, const char *body) {
  int64_t j0, j1, Cg_ = w->C / w->G;
  win_cols(w, q, &j0, &j1);
  if (j0 == j1)
    return;
  cg_line(cg, "for (int64_t c = 0; c < %" PRId64 "; c++) { /* q = %" PRId64 " */", Cg_, q);
  cg->indent++;
  cg_line(cg, "const %s wv = %s;", ctype(n->dtype),
       cg_in_at(cg, n, wk,
             pool_printf(cg->pool, "((o*%" PRId64 " + c)*%" PRId64 " + p)*%" PRId64 " + %" PRId64,
                         Cg_, w->KH, w->KW, q)));
  cg_line(cg, "const int64_t xo = ((n*%" PRId64 " + cb + c)*%" PRId64 " + r)*%" PRId64 " + (%" PRId64 ");",
       w->C, w->H, w->W, q * w->DW - w->PL);
  cg_line(cg, "for (int64_t j = %" PRId64 "; j < %" PRId64 "; j++)", j0, j1);
  cg_line(cg, "  %s", body);
  cg->indent--;
  cg_line(cg, "}");
}

/* The GEMM schedule of the three convolutions (below the direct loops). */
static void cg_emit_conv_gemm(Cg *cg, const Node *n);

static bool conv_gemm(const Cg *cg, const Node *n) { return cg->s->node[n->id].conv == CONV_GEMM; }

/* CONV2D(x, w) -> y: direct convolution, loops n, o, i, p, q (unrolled: each kernel column
 * gets its own constant range of output columns, so no padding test is left inside), c, j.
 * The innermost loop runs along a row of y and a row of x (strided by SW) and vectorises;
 * y's row is the accumulator. */
void cg_emit_conv2d(Cg *cg, const Node *n) {
  if (cg->s->node[n->id].conv == CONV_IMPLICIT) {
    cg_emit_conv_implicit(cg, n);
    return;
  }
  if (conv_gemm(cg, n)) {
    cg_emit_conv_gemm(cg, n);
    return;
  }
  Window w = win_of(cg->g, n);
  conv_open(cg, n, &w, true);
  const char *body = pool_printf(cg->pool, "y[yo + j] = fma%s(wv, %s, y[yo + j]);",
                                 mathsfx(n->dtype), cg_in_at(cg, n, 0, win_xj(cg, &w)));
  for (int64_t q = 0; q < w.KW; q++)
    conv_tap(cg, n, &w, q, 1, body);
  conv_close(cg, n, &w);
}

/* CONV2D_BWD_DATA(dy, w) -> dx: the forward's loops with the roles swapped, each dy element
 * scattered into the dx row it came from (dx zeroed first). Within one j loop the targets are
 * distinct, so it vectorises like the forward (a strided store when SW > 1). */
void cg_emit_conv2d_bwd_data(Cg *cg, const Node *n) {
  if (cg->s->node[n->id].conv == CONV_IMPLICIT) {
    cg_emit_conv_implicit(cg, n);
    return;
  }
  if (conv_gemm(cg, n)) {
    cg_emit_conv_gemm(cg, n);
    return;
  }
  Window w = win_of(cg->g, n);
  cg_emit_zero(cg, n);
  conv_open(cg, n, &w, false);
  const char *xj = win_xj(cg, &w);
  const char *body = pool_printf(cg->pool, "y[%s] = fma%s(wv, %s, y[%s]);", xj,
                                 mathsfx(n->dtype), cg_in_at(cg, n, 0, "yo + j"), xj);
  for (int64_t q = 0; q < w.KW; q++)
    conv_tap(cg, n, &w, q, 1, body);
  conv_close(cg, n, &w);
}

/* CONV2D_BWD_FILTER(x, dy) -> dw: per output channel o, the forward's loops (o outermost so
 * that o's partial sums stay in cache) accumulate x * dy elementwise into a row of Wo partial
 * sums per weight (c, p, q) in scratch, so the inner loop has no reduction to reassociate and
 * vectorises; each row is summed into dw[o, c, p, q] at the end. */
void cg_emit_conv2d_bwd_filter(Cg *cg, const Node *n) {
  if (cg->s->node[n->id].conv == CONV_IMPLICIT) {
    cg_emit_conv_implicit(cg, n);
    return;
  }
  if (conv_gemm(cg, n)) {
    cg_emit_conv_gemm(cg, n);
    return;
  }
  Window w = win_of(cg->g, n);
  int64_t Cg_ = w.C / w.G, Og = w.O / w.G, taps = Cg_ * w.KH * w.KW;
  const char *T = ctype(n->dtype);
  cg_line(cg, "%s *restrict acc = (%s *)scratch; /* [C/G, KH, KW, Wo] */", T, T);
  cg_line(cg, "for (int64_t o = 0; o < %" PRId64 "; o++) {", w.O);
  cg->indent++;
  if (w.G == 1)
    cg_line(cg, "const int64_t cb = 0;");
  else
    cg_line(cg, "const int64_t cb = o / %" PRId64 " * %" PRId64 ";", Og, Cg_);
  cg_line(cg, "for (int64_t t = 0; t < %" PRId64 "; t++)", taps * w.Wo);
  cg_line(cg, "  acc[t] = 0;");
  cg_line(cg, "for (int64_t n = 0; n < %s; n++)", sz_c(cg, sz_dim(cg, w.N)));
  cg_line(cg, "  for (int64_t i = 0; i < %" PRId64 "; i++) {", w.Ho);
  cg->indent += 2;
  cg_line(cg, "const int64_t yo = ((n*%" PRId64 " + o)*%" PRId64 " + i)*%" PRId64 ";", w.O, w.Ho,
       w.Wo);
  cg_line(cg, "for (int64_t p = 0; p < %" PRId64 "; p++) {", w.KH);
  cg->indent++;
  cg_line(cg, "const int64_t r = i*%" PRId64 " - %" PRId64 " + p*%" PRId64 ";", w.SH, w.PT, w.DH);
  cg_line(cg, "if (r < 0 || r >= %" PRId64 ")", w.H);
  cg_line(cg, "  continue;");
  const char *xj = cg_in_at(cg, n, 0, win_xj(cg, &w)), *dyj = cg_in_at(cg, n, 1, "yo + j");
  for (int64_t q = 0; q < w.KW; q++) {
    int64_t j0, j1;
    win_cols(&w, q, &j0, &j1);
    if (j0 == j1)
      continue;
    cg_line(cg, "for (int64_t c = 0; c < %" PRId64 "; c++) { /* q = %" PRId64 " */", Cg_, q);
    cg->indent++;
    cg_line(cg, "%s *restrict s = acc + ((c*%" PRId64 " + p)*%" PRId64 " + %" PRId64 ")*%" PRId64 ";",
         T, w.KH, w.KW, q, w.Wo);
    cg_line(cg, "const int64_t xo = ((n*%" PRId64 " + cb + c)*%" PRId64 " + r)*%" PRId64 " + (%" PRId64 ");",
         w.C, w.H, w.W, q * w.DW - w.PL);
    cg_line(cg, "for (int64_t j = %" PRId64 "; j < %" PRId64 "; j++)", j0, j1);
    cg_line(cg, "  s[j] = fma%s(%s, %s, s[j]);", mathsfx(n->dtype), xj, dyj);
    cg->indent--;
    cg_line(cg, "}");
  }
  cg->indent--;
  cg_line(cg, "}");
  cg->indent -= 2;
  cg_line(cg, "  }");
  cg_line(cg, "for (int64_t t = 0; t < %" PRId64 "; t++) {", taps);
  cg_line(cg, "  %s sum = 0;", T);
  cg_line(cg, "  for (int64_t j = 0; j < %" PRId64 "; j++)", w.Wo);
  cg_line(cg, "    sum += acc[t*%" PRId64 " + j];", w.Wo);
  cg_line(cg, "  y[o*%" PRId64 " + t] = sum;", taps);
  cg_line(cg, "}");
  cg->indent--;
  cg_line(cg, "}");
}

/* ---------------------------------------------------------------------------------------------
 * Convolutions through the GEMM. Per image, the input is unfolded (im2col) into
 * col[(c*KH + p)*KW + q][i*Wo + j] = x[c][i*SH - PT + p*DH][j*SW - PL + q*DW] (0 in the padding),
 * so per group g, with K = C/G*KH*KW rows of col per group:
 *   forward        y_n[g]  = w[g] · col_g                  (M = O/G, N = Ho*Wo, K)
 *   input grad     dcol_g  = w[g]ᵀ · dy_n[g], then col2im  (M = K, N = Ho*Wo, K = O/G)
 *   weight grad    dw_n[g] = dy_n[g] · col_gᵀ              (M = O/G, N = K, K = Ho*Wo)
 * each a call of kiln_sgemm (cg_gemm.c). With several workers, each image is a task, run in
 * the scratch slot of the worker that runs it (its col buffer and GEMM packing buffers); the
 * weight gradient runs the batch in waves of one image per slot, each image's dw_n in its slot,
 * added to dw in image order after the wave (conv_gemm_filter). So results depend neither on
 * which thread runs a task nor on the number of threads.
 */

static int64_t align64(int64_t b) { return (b + 63) / 64 * 64; }

/* Opens the loop over the images n of the batch: with several workers, one task per image,
 * run by the kernel's `ex`; `ws` the running worker's slot of the scratch (base 64-byte
 * aligned), `col` the slot's unfolded image. Closed by conv_close_images. */
static void conv_open_images(Cg *cg, const Node *n, Sz batch) {
  const char *T = ctype(n->dtype);
  int workers = cg->s->node[n->id].workers;
  cg_line(cg, "scratch += (64 - (uintptr_t)scratch %% 64) %% 64;");
  if (workers > 1) {
    cg_tasks_open(cg, "n");
    cg_line(cg, "unsigned char *ws = scratch + worker*%" PRId64 ";",
            sched_conv_slot_bytes(cg->s, cg->g, n));
  } else {
    cg_line(cg, "unsigned char *ws = scratch;");
  }
  cg_line(cg, "%s *restrict col = (%s *)(void *)ws;", T, T);
  if (workers == 1) {
    cg_line(cg, "for (int64_t n = 0; n < %s; n++) {", sz_c(cg, batch));
    cg->indent++;
  }
}

static void conv_close_images(Cg *cg, const Node *n, Sz batch) {
  if (cg->s->node[n->id].workers > 1) {
    cg_tasks_close(cg, sz_c(cg, batch), NULL, 0);
    return;
  }
  cg->indent--;
  cg_line(cg, "}");
}

/* Unfolds image n of x (input k of the node) into col, or with `back` folds col back into image
 * n of y (col2im: y's image zeroed, then every col element added to the input element it was
 * taken from). Kernel columns are unrolled, each with its constant range of valid output
 * columns; rows in the padding are zero rows of col. */
static void conv_im2col(Cg *cg, const Node *n, const Window *w, int k, bool back) {
  int64_t HW = w->Ho * w->Wo;
  const char *T = ctype(n->dtype);
  const char *xs = w->SW == 1 ? "xn[xo + j]" : pool_printf(cg->pool, "xn[xo + j*%" PRId64 "]", w->SW);
  if (back) {
    cg_line(cg, "%s *restrict xn = y + n*%" PRId64 ";", T, w->C * w->H * w->W);
    cg_line(cg, "for (int64_t e = 0; e < %" PRId64 "; e++)", w->C * w->H * w->W);
    cg_line(cg, "  xn[e] = 0;");
  } else {
    cg_line(cg, "const %s *restrict xn = %s + n*%" PRId64 ";", T, cg_param_names[k],
         w->C * w->H * w->W);
  }
  cg_line(cg, "for (int64_t c = 0; c < %" PRId64 "; c++)", w->C);
  cg_line(cg, "  for (int64_t p = 0; p < %" PRId64 "; p++) {", w->KH);
  cg->indent += 2;
  for (int64_t q = 0; q < w->KW; q++) {
    int64_t j0, j1;
    win_cols(w, q, &j0, &j1);
    if (back && j0 == j1)
      continue;
    cg_line(cg, "{ /* q = %" PRId64 " */", q);
    cg->indent++;
    cg_line(cg, "%s%s *restrict d = col + ((c*%" PRId64 " + p)*%" PRId64 " + %" PRId64 ")*%" PRId64 ";",
         back ? "const " : "", T, w->KH, w->KW, q, HW);
    cg_line(cg, "for (int64_t i = 0; i < %" PRId64 "; i++) {", w->Ho);
    cg->indent++;
    cg_line(cg, "const int64_t r = i*%" PRId64 " - %" PRId64 " + p*%" PRId64 ";", w->SH, w->PT,
         w->DH);
    if (back) {
      cg_line(cg, "if (r < 0 || r >= %" PRId64 ")", w->H);
      cg_line(cg, "  continue;");
      cg_line(cg, "const int64_t xo = (c*%" PRId64 " + r)*%" PRId64 " + (%" PRId64 ");", w->H, w->W,
           q * w->DW - w->PL);
      cg_line(cg, "for (int64_t j = %" PRId64 "; j < %" PRId64 "; j++)", j0, j1);
      cg_line(cg, "  %s += d[i*%" PRId64 " + j];", xs, w->Wo);
    } else {
      /* Rows and runs of padding are memset and contiguous runs of the input memcpy'd: gcc 12
       * at -O3 with AVX2 or AVX-512 vectorises the equivalent loops (a zero row, `continue`, a
       * copy loop) into code that leaves copied rows zero. Reduced, that is a 15-line loop nest
       * with no undefined behaviour; the library calls are as fast and do not trigger it. */
      cg_line(cg, "%s *restrict di = d + i*%" PRId64 ";", T, w->Wo);
      cg_line(cg, "if (r < 0 || r >= %" PRId64 ") {", w->H);
      cg_line(cg, "  memset(di, 0, %" PRId64 " * sizeof *di);", w->Wo);
      cg_line(cg, "  continue;");
      cg_line(cg, "}");
      cg_line(cg, "const int64_t xo = (c*%" PRId64 " + r)*%" PRId64 " + (%" PRId64 ");", w->H,
           w->W, q * w->DW - w->PL);
      if (j0 > 0)
        cg_line(cg, "memset(di, 0, %" PRId64 " * sizeof *di);", j0);
      if (j1 > j0 && w->SW == 1) {
        cg_line(cg, "memcpy(di + %" PRId64 ", xn + xo + %" PRId64 ", %" PRId64 " * sizeof *di);",
                j0, j0, j1 - j0);
      } else if (j1 > j0) {
        cg_line(cg, "for (int64_t j = %" PRId64 "; j < %" PRId64 "; j++)", j0, j1);
        cg_line(cg, "  di[j] = %s;", xs);
      }
      if (j1 < w->Wo)
        cg_line(cg, "memset(di + %" PRId64 ", 0, %" PRId64 " * sizeof *di);", j1, w->Wo - j1);
    }
    cg->indent--;
    cg_line(cg, "}");
    cg->indent--;
    cg_line(cg, "}");
  }
  cg->indent -= 2;
  cg_line(cg, "  }");
}

void cg_image_waves_open(Cg *cg, const char *B, int workers) {
  cg_line(cg, "for (int64_t n0 = 0; n0 < %s; n0 += %d) {", B, workers);
  cg->indent++;
  if (workers > 1) {
    cg_tasks_open(cg, "t");
  } else {
    cg_line(cg, "{");
    cg->indent++;
    cg_line(cg, "const int64_t t = 0;");
  }
  cg_line(cg, "const int64_t n = n0 + t;");
}

void cg_image_waves_close(Cg *cg, const char *B, int workers) {
  if (workers > 1) {
    static const char *const locals[] = {"n0"};
    cg_tasks_close(cg, pool_printf(cg->pool, "%s - n0 < %d ? %s - n0 : %d", B, workers, B, workers),
                   locals, 1);
  } else {
    cg->indent--;
    cg_line(cg, "}");
  }
}

/* The weight gradient through the GEMM: the batch in waves of `workers` images, image n0 + t of
 * a wave (task t) in slot t with its own dw_n (col, then the slot's dw buffer, then the GEMM's);
 * after each wave its images' dw_n are added to y in image order. So every element of y is
 * 0 + dw_0 + dw_1 + ... whatever the number of workers or threads, with scratch for `workers`
 * images only. */
static void conv_gemm_filter(Cg *cg, const Node *n, const Window *w, Sz N, int64_t colb) {
  int64_t K = w->C / w->G * w->KH * w->KW, Og = w->O / w->G, HW = w->Ho * w->Wo;
  int64_t es = (int64_t)dtype_size(n->dtype), slot = sched_conv_slot_bytes(cg->s, cg->g, n);
  int workers = cg->s->node[n->id].workers;
  const char *gm = cg_gemm_name(n->dtype), *T = ctype(n->dtype), *B = sz_c(cg, N);
  cg_line(cg, "scratch += (64 - (uintptr_t)scratch %% 64) %% 64;");
  cg_line(cg, "for (int64_t e = 0; e < %" PRId64 "; e++)", w->O * K);
  cg_line(cg, "  y[e] = 0;");
  cg_image_waves_open(cg, B, workers);
  cg_line(cg, "unsigned char *ws = scratch + t*%" PRId64 ";", slot);
  cg_line(cg, "%s *restrict col = (%s *)(void *)ws;", T, T);
  cg_line(cg, "%s *restrict part = (%s *)(void *)(ws + %" PRId64 ");", T, T, colb);
  cg_line(cg, "unsigned char *gws = ws + %" PRId64 ";", colb + align64(w->O * K * es));
  conv_im2col(cg, n, w, 0, false);
  cg_line(cg, "for (int64_t g = 0; g < %" PRId64 "; g++)", w->G);
  cg_line(cg, "  %s(%" PRId64 ", %" PRId64 ", %" PRId64 ", b + n*%" PRId64 " + g*%" PRId64
              ", %" PRId64 ", 0, col + g*%" PRId64 ", %" PRId64 ", 1, part + g*%" PRId64
              ", %" PRId64 ", gws);",
          gm, Og, K, HW, w->O * HW, Og * HW, HW, K * HW, HW, Og * K, K);
  cg_image_waves_close(cg, B, workers);
  cg_line(cg, "for (int64_t t = 0; t < %d && n0 + t < %s; t++) {", workers, B);
  cg_line(cg, "  const %s *restrict part = (const %s *)(void *)(scratch + t*%" PRId64 " + %" PRId64
              ");", T, T, slot, colb);
  cg_line(cg, "  for (int64_t e = 0; e < %" PRId64 "; e++)", w->O * K);
  cg_line(cg, "    y[e] += part[e];");
  cg_line(cg, "}");
  cg->indent--;
  cg_line(cg, "}");
}

/* The three convolutions as im2col + GEMM (see above). */
static void cg_emit_conv_gemm(Cg *cg, const Node *n) {
  Window w = win_of(cg->g, n);
  int64_t K = w.C / w.G * w.KH * w.KW, Og = w.O / w.G, HW = w.Ho * w.Wo;
  int64_t ysz = w.O * HW;
  int64_t colb = align64(w.G * K * HW * (int64_t)dtype_size(n->dtype));
  const char *gm = cg_gemm_name(n->dtype);
  /* Every operand's batch is its first dimension; dx's is the node's own. */
  Sz N = sz_dim(cg, (n->op == OP_CONV2D_BWD_DATA ? &n->shape : &ir_at(cg->g, n->in[0])->shape)->d[0]);
  if (n->op == OP_CONV2D_BWD_FILTER) {
    conv_gemm_filter(cg, n, &w, N, colb);
    return;
  }
  conv_open_images(cg, n, N);
  cg_line(cg, "unsigned char *gws = ws + %" PRId64 ";", colb);
  if (n->op == OP_CONV2D) {
    conv_im2col(cg, n, &w, 0, false);
    cg_line(cg, "for (int64_t g = 0; g < %" PRId64 "; g++)", w.G);
    cg_line(cg, "  %s(%" PRId64 ", %" PRId64 ", %" PRId64 ", b + g*%" PRId64 ", %" PRId64
             ", 0, col + g*%" PRId64 ", %" PRId64 ", 0, y + n*%" PRId64 " + g*%" PRId64
             ", %" PRId64 ", gws);",
         gm, Og, HW, K, Og * K, K, K * HW, HW, ysz, Og * HW, HW);
  } else if (n->op == OP_CONV2D_BWD_DATA) {
    cg_line(cg, "for (int64_t g = 0; g < %" PRId64 "; g++)", w.G);
    cg_line(cg, "  %s(%" PRId64 ", %" PRId64 ", %" PRId64 ", b + g*%" PRId64 ", %" PRId64
             ", 1, a + n*%" PRId64 " + g*%" PRId64 ", %" PRId64 ", 0, col + g*%" PRId64
             ", %" PRId64 ", gws);",
         gm, K, HW, Og, Og * K, K, ysz, Og * HW, HW, K * HW, HW);
    conv_im2col(cg, n, &w, 0, true);
  }
  conv_close_images(cg, n, N);
}

/* Opens the loops over every pool window (n, c, i, j; with workers, one task per image n), with yi
 * the output element, and the taps of the window (p, q), padding skipped, with xi the input element.
 * Six loops to close with pool_close, the last two with pool_close_taps first. */
static void pool_open_windows(Cg *cg, const Node *node, const Window *w) {
  if (cg->s->node[node->id].workers > 1) {
    cg_tasks_open(cg, "n"); /* one task per image */
    cg_line(cg, "{");
  } else {
    cg_line(cg, "for (int64_t n = 0; n < %s; n++)", sz_c(cg, sz_dim(cg, w->N)));
  }
  cg_line(cg, "  for (int64_t c = 0; c < %" PRId64 "; c++)", w->C);
  cg_line(cg, "    for (int64_t i = 0; i < %" PRId64 "; i++)", w->Ho);
  cg_line(cg, "      for (int64_t j = 0; j < %" PRId64 "; j++) {", w->Wo);
  cg->indent += 4;
  cg_line(cg, "const int64_t yi = ((n*%" PRId64 " + c)*%" PRId64 " + i)*%" PRId64 " + j;", w->C,
       w->Ho, w->Wo);
}

static void pool_open_taps(Cg *cg, const Window *w) {
  cg_line(cg, "for (int64_t p = 0; p < %" PRId64 "; p++) {", w->KH);
  cg_line(cg, "  const int64_t r = i*%" PRId64 " - %" PRId64 " + p*%" PRId64 ";", w->SH, w->PT,
       w->DH);
  cg_line(cg, "  if (r < 0 || r >= %" PRId64 ")", w->H);
  cg_line(cg, "    continue;");
  cg_line(cg, "  for (int64_t q = 0; q < %" PRId64 "; q++) {", w->KW);
  cg_line(cg, "    const int64_t s = j*%" PRId64 " - %" PRId64 " + q*%" PRId64 ";", w->SW, w->PL,
       w->DW);
  cg_line(cg, "    if (s < 0 || s >= %" PRId64 ")", w->W);
  cg_line(cg, "      continue;");
  cg_line(cg, "    const int64_t xi = ((n*%" PRId64 " + c)*%" PRId64 " + r)*%" PRId64 " + s;", w->C,
       w->H, w->W);
  cg->indent += 2;
}

static void pool_close_taps(Cg *cg) {
  cg->indent -= 2;
  cg_line(cg, "  }");
  cg_line(cg, "}");
}

static void pool_close(Cg *cg, const Node *node, const Window *w) {
  cg->indent -= 4;
  cg_line(cg, "      }");
  if (cg->s->node[node->id].workers > 1) {
    cg_line(cg, "}");
    cg_tasks_close(cg, sz_c(cg, sz_dim(cg, w->N)), NULL, 0);
  }
}

/* The first maximum of window (n, c, i, j) into best, as the reference's window_argmax:
 * padding is -inf and never read, a later tap wins only when strictly greater (PyTorch's
 * row-major first maximum) or NaN; -1 when no tap is in bounds. */
static void maxpool_argmax(Cg *cg, const Node *n, const Window *w) {
  const char *T = ctype(n->dtype);
  cg_line(cg, "int64_t best = -1;");
  cg_line(cg, "%s m = -INFINITY;", T);
  pool_open_taps(cg, w);
  cg_line(cg, "const %s v = %s;", T, cg_in_at(cg, n, 0, "xi"));
  cg_line(cg, "if (best < 0)");
  cg_line(cg, "  best = xi;");
  cg_line(cg, "if (v > m || isnan(v)) {");
  cg_line(cg, "  m = v;");
  cg_line(cg, "  best = xi;");
  cg_line(cg, "}");
  pool_close_taps(cg);
}

/* Opens the loops over rows of tiling windows: n, c, i, j, with xw the input element of tap
 * (0, 0) of window (i, j) and yi the output element. Closed by pool_close. */
static void pool_open_tiles(Cg *cg, const Node *node, const Window *w) {
  pool_open_windows(cg, node, w);
  cg_line(cg, "const int64_t xw = ((n*%" PRId64 " + c)*%" PRId64 " + i*%" PRId64 ")*%" PRId64
           " + j*%" PRId64 ";",
       w->C, w->H, w->SH, w->W, w->SW);
}

/* The first maximum of a tiling window, taps unrolled as selects (so the j loop vectorises):
 * m its value, bt its tap number, with the reference's rule (a later tap wins when strictly
 * greater, or NaN). */
static void maxpool_tile_argmax(Cg *cg, const Node *n, const Window *w, bool want_tap) {
  const char *T = ctype(n->dtype);
  cg_line(cg, "%s m = %s;", T, cg_in_at(cg, n, 0, "xw"));
  if (want_tap)
    cg_line(cg, "int bt = 0;");
  for (int64_t t = 1; t < w->KH * w->KW; t++) {
    int64_t off = t / w->KW * w->W + t % w->KW;
    cg_line(cg, "{ const %s v = %s; const int gt = v > m || v != v;", T,
         cg_in_at(cg, n, 0, pool_printf(cg->pool, "xw + %" PRId64, off)));
    if (want_tap)
      cg_line(cg, "  bt = gt ? %" PRId64 " : bt;", t);
    cg_line(cg, "  m = gt ? v : m; }");
  }
}

/* Max pools whose windows cover the input exactly run in passes over a block of an image's rows
 * of windows, each pass a long contiguous loop that vectorises: first each input row's first
 * maximum of every window's KW columns (a flat loop, since windows never straddle rows), then the
 * first maximum of those over the window's KH rows. Taken row by row this is the reference's
 * fold over the taps in row-major order: the fold's step (a later value wins when strictly
 * greater, or NaN) combines the folds of consecutive runs of taps in order to the fold of the
 * whole run, so both the value and the tap are the reference's, NaNs and signed zeros included.
 * Selects are on the values' bits, so that no compiler turns them into branches. */

/* Output rows per block: the blocks' arrays (on the stack) of about 2048 elements each, the
 * image's rows split evenly. */
static int64_t pool_block_rows(const Window *w) {
  int64_t rows = w->C * w->Ho, most = 2048 / (w->KH * w->Wo);
  if (most < 1)
    most = 1;
  int64_t blocks = (rows + most - 1) / most;
  return (rows + blocks - 1) / blocks;
}

/* Whether maxpool node n takes the passes: an exact tiling over tensors in the arena, with rows
 * short enough for the blocks' arrays to stay small on a worker's stack. */
static bool pool_passes(const Cg *cg, const Node *n, const Window *w) {
  for (int k = 0; k < n->nin; k++)
    if (!in_arena(ir_at(cg->g, n->in[k])))
      return false;
  return cg->s->node[n->id].tiles && win_tiles_exactly(w) && w->KH * w->Wo <= 2048;
}

/* Opens the loop over the images n (one task per image with workers) and the blocks of its
 * rows of windows: r0 the first, `rows` their number, xr the block's first input row. Closed by
 * pool_close_blocks. */
static void pool_open_blocks(Cg *cg, const Node *node, const Window *w, int64_t block) {
  const char *T = ctype(node->dtype);
  if (cg->s->node[node->id].workers > 1) {
    cg_tasks_open(cg, "n"); /* one task per image */
    cg_line(cg, "{");
  } else {
    cg_line(cg, "for (int64_t n = 0; n < %s; n++) {", sz_c(cg, sz_dim(cg, w->N)));
  }
  cg->indent++;
  int64_t rows = w->C * w->Ho;
  cg_line(cg, "for (int64_t r0 = 0; r0 < %" PRId64 "; r0 += %" PRId64 ") {", rows, block);
  cg->indent++;
  cg_line(cg, "const int64_t rows = %" PRId64 " - r0 < %" PRId64 " ? %" PRId64 " - r0 : %" PRId64
              ";",
          rows, block, rows, block);
  cg_line(cg, "const %s *restrict xr = a + (n*%" PRId64 " + r0)*%" PRId64 ";", T, rows,
          w->KH * w->W);
}

static void pool_close_blocks(Cg *cg, const Node *node, const Window *w) {
  cg->indent--;
  cg_line(cg, "}");
  cg->indent--;
  cg_line(cg, "}");
  if (cg->s->node[node->id].workers > 1)
    cg_tasks_close(cg, sz_c(cg, sz_dim(cg, w->N)), NULL, 0);
}

/* One step of the fold: m becomes v when v is greater or NaN, and `tap` (if any) becomes t. */
static void maxpool_step(Cg *cg, const char *T, const char *U, const char *v, const char *tap,
                         int64_t t) {
  cg_line(cg, "{ const %s v = %s;", T, v);
  cg_line(cg, "  const %s k = -(%s)((v > m) | (v != v));", U, U);
  cg_line(cg, "  %s mb, vb;", U);
  cg_line(cg, "  memcpy(&mb, &m, sizeof mb);");
  cg_line(cg, "  memcpy(&vb, &v, sizeof vb);");
  cg_line(cg, "  mb = (vb & k) | (mb & ~k);");
  cg_line(cg, "  memcpy(&m, &mb, sizeof m);");
  if (tap)
    cg_line(cg, "  %s = (k & %" PRId64 ") | (%s & ~k);", tap, t, tap);
  cg_line(cg, "}");
}

/* The first pass: h[u] the first maximum of the KW columns of window column u of the block's
 * input rows (and hq[u] its column, with `want_tap`). */
static void maxpool_row_pass(Cg *cg, const Node *n, const Window *w, bool want_tap) {
  const char *T = ctype(n->dtype), *U = dtype_size(n->dtype) == 4 ? "uint32_t" : "uint64_t";
  cg_line(cg, "for (int64_t u = 0; u < rows*%" PRId64 "; u++) {", w->KH * w->Wo);
  cg->indent++;
  cg_line(cg, "%s m = xr[u*%" PRId64 "];", T, w->KW);
  if (want_tap)
    cg_line(cg, "%s q = 0;", U);
  for (int64_t q = 1; q < w->KW; q++)
    maxpool_step(cg, T, U, pool_printf(cg->pool, "xr[u*%" PRId64 " + %" PRId64 "]", w->KW, q),
                 want_tap ? "q" : NULL, q);
  cg_line(cg, "h[u] = m;");
  if (want_tap)
    cg_line(cg, "hq[u] = q;");
  cg->indent--;
  cg_line(cg, "}");
}

/* Opens the second pass: m the first maximum over the KH rows of window (r0 + i, j) of the
 * block (and p its row, with `want_tap`). Two loops to close. */
static void maxpool_open_window_pass(Cg *cg, const Node *n, const Window *w, bool want_tap) {
  const char *T = ctype(n->dtype), *U = dtype_size(n->dtype) == 4 ? "uint32_t" : "uint64_t";
  cg_line(cg, "for (int64_t i = 0; i < rows; i++)");
  cg_line(cg, "  for (int64_t j = 0; j < %" PRId64 "; j++) {", w->Wo);
  cg->indent += 2;
  cg_line(cg, "%s m = h[i*%" PRId64 " + j];", T, w->KH * w->Wo);
  if (want_tap)
    cg_line(cg, "%s p = 0;", U);
  for (int64_t p = 1; p < w->KH; p++)
    maxpool_step(cg, T, U,
                 pool_printf(cg->pool, "h[i*%" PRId64 " + %" PRId64 " + j]", w->KH * w->Wo,
                             p * w->Wo),
                 want_tap ? "p" : NULL, p);
}

static void maxpool_passes(Cg *cg, const Node *n, const Window *w) {
  const char *T = ctype(n->dtype);
  int64_t block = pool_block_rows(w);
  pool_open_blocks(cg, n, w, block);
  cg_line(cg, "%s h[%" PRId64 "];", T, block * w->KH * w->Wo);
  maxpool_row_pass(cg, n, w, false);
  maxpool_open_window_pass(cg, n, w, false);
  cg_line(cg, "y[(n*%" PRId64 " + r0 + i)*%" PRId64 " + j] = m;", w->C * w->Ho, w->Wo);
  cg->indent -= 2;
  cg_line(cg, "  }");
  pool_close_blocks(cg, n, w);
}

/* The gradient's passes: the forward's two, the second storing dy's bits in the winning row of
 * each window and +0 in the others (gs, by window column of each input row), then a flat pass
 * storing gs in the winning column and +0 in the others. Every input element is written once. */
static void maxpool_grad_passes(Cg *cg, const Node *n, const Window *w) {
  const char *T = ctype(n->dtype), *U = dtype_size(n->dtype) == 4 ? "uint32_t" : "uint64_t";
  int64_t block = pool_block_rows(w), len = block * w->KH * w->Wo;
  pool_open_blocks(cg, n, w, block);
  cg_line(cg, "%s h[%" PRId64 "];", T, len);
  cg_line(cg, "%s hq[%" PRId64 "], gs[%" PRId64 "];", U, len, len);
  maxpool_row_pass(cg, n, w, true);
  maxpool_open_window_pass(cg, n, w, true);
  cg_line(cg, "%s gb;", U);
  cg_line(cg, "memcpy(&gb, &b[(n*%" PRId64 " + r0 + i)*%" PRId64 " + j], sizeof gb);",
          w->C * w->Ho, w->Wo);
  for (int64_t p = 0; p < w->KH; p++)
    cg_line(cg, "gs[i*%" PRId64 " + %" PRId64 " + j] = gb & -(%s)(p == %" PRId64 ");",
            w->KH * w->Wo, p * w->Wo, U, p);
  cg->indent -= 2;
  cg_line(cg, "  }");
  cg_line(cg, "%s *restrict dr = y + (n*%" PRId64 " + r0)*%" PRId64 ";", T, w->C * w->Ho,
          w->KH * w->W);
  cg_line(cg, "for (int64_t u = 0; u < rows*%" PRId64 "; u++) {", w->KH * w->Wo);
  for (int64_t q = 0; q < w->KW; q++)
    cg_line(cg, "  { const %s o = gs[u] & -(%s)(hq[u] == %" PRId64 "); memcpy(&dr[u*%" PRId64
                " + %" PRId64 "], &o, sizeof o); }",
            U, U, q, w->KW, q);
  cg_line(cg, "}");
  pool_close_blocks(cg, n, w);
}

void cg_emit_maxpool2d(Cg *cg, const Node *n) {
  Window w = win_of(cg->g, n);
  if (pool_passes(cg, n, &w)) {
    maxpool_passes(cg, n, &w);
    return;
  }
  if (cg->s->node[n->id].tiles) {
    pool_open_tiles(cg, n, &w);
    maxpool_tile_argmax(cg, n, &w, false);
    cg_line(cg, "y[yi] = m;");
    pool_close(cg, n, &w);
    return;
  }
  pool_open_windows(cg, n, &w);
  maxpool_argmax(cg, n, &w);
  cg_line(cg, "y[yi] = best < 0 ? (%s)-INFINITY : %s;", ctype(n->dtype), cg_in_at(cg, n, 0, "best"));
  pool_close(cg, n, &w);
}

/* MAXPOOL2D_GRAD(x, dy) -> dx: each dy to its window's first maximum; overlapping windows add. */
void cg_emit_maxpool2d_grad(Cg *cg, const Node *n) {
  Window w = win_of(cg->g, n);
  if (pool_passes(cg, n, &w)) {
    maxpool_grad_passes(cg, n, &w);
    return;
  }
  if (cg->s->node[n->id].tiles) {
    /* Each tap of a window is written once: dy at the first maximum, 0 elsewhere; only rows
     * and columns no window covers need zeroing beforehand. */
    if (w.Ho * w.SH != w.H || w.Wo * w.SW != w.W)
      cg_emit_zero(cg, n);
    /* The stores select dy's bits or +0's with an integer mask: written as `bt == t ? gv : 0`
     * gcc branched on every tap, mispredicting on real data (1.2 ms per pass at batch 64 on
     * the MNIST CNN, 0.16 ms without branches). Bit for bit the same values. */
    const char *U = dtype_size(n->dtype) == 4 ? "uint32_t" : "uint64_t";
    pool_open_tiles(cg, n, &w);
    maxpool_tile_argmax(cg, n, &w, true);
    cg_line(cg, "const %s gv = %s;", ctype(n->dtype), cg_in_at(cg, n, 1, "yi"));
    cg_line(cg, "%s gb;", U);
    cg_line(cg, "memcpy(&gb, &gv, sizeof gb);");
    for (int64_t t = 0; t < w.KH * w.KW; t++)
      cg_line(cg, "{ const %s o = gb & -(%s)(bt == %" PRId64 "); memcpy(&y[xw + %" PRId64 "], &o, sizeof o); }",
           U, U, t, t / w.KW * w.W + t % w.KW);
    pool_close(cg, n, &w);
    return;
  }
  cg_emit_zero(cg, n);
  pool_open_windows(cg, n, &w);
  maxpool_argmax(cg, n, &w);
  cg_line(cg, "if (best >= 0)");
  cg_line(cg, "  y[best] += %s;", cg_in_at(cg, n, 1, "yi"));
  pool_close(cg, n, &w);
}

/* MAXPOOL2D_PICK(x, t): t at each window's first maximum of x, found as maxpool2d finds it. */
void cg_emit_maxpool2d_pick(Cg *cg, const Node *n) {
  Window w = win_of(cg->g, n);
  pool_open_windows(cg, n, &w);
  maxpool_argmax(cg, n, &w);
  cg_line(cg, "y[yi] = best < 0 ? (%s)0 : %s;", ctype(n->dtype), cg_in_at(cg, n, 1, "best"));
  pool_close(cg, n, &w);
}

/* The divisor of window (i, j): the whole window when the padding counts, else its in-bounds
 * taps (rows in bounds times columns in bounds). */
static void avgpool_divisor(Cg *cg, const Node *n, const Window *w) {
  const char *T = ctype(n->dtype);
  if (n->attr.count_include_pad) {
    cg_line(cg, "const %s div = (%s)%" PRId64 ";", T, T, w->KH * w->KW);
    return;
  }
  cg_line(cg, "int64_t rows = 0, cols = 0;");
  cg_line(cg, "for (int64_t p = 0; p < %" PRId64 "; p++) {", w->KH);
  cg_line(cg, "  const int64_t r = i*%" PRId64 " - %" PRId64 " + p*%" PRId64 ";", w->SH, w->PT,
       w->DH);
  cg_line(cg, "  rows += r >= 0 && r < %" PRId64 ";", w->H);
  cg_line(cg, "}");
  cg_line(cg, "for (int64_t q = 0; q < %" PRId64 "; q++) {", w->KW);
  cg_line(cg, "  const int64_t s = j*%" PRId64 " - %" PRId64 " + q*%" PRId64 ";", w->SW, w->PL,
       w->DW);
  cg_line(cg, "  cols += s >= 0 && s < %" PRId64 ";", w->W);
  cg_line(cg, "}");
  cg_line(cg, "const %s div = (%s)(rows * cols);", T, T);
}

void cg_emit_avgpool2d(Cg *cg, const Node *n) {
  Window w = win_of(cg->g, n);
  pool_open_windows(cg, n, &w);
  avgpool_divisor(cg, n, &w);
  cg_line(cg, "%s sum = 0;", ctype(n->dtype));
  pool_open_taps(cg, &w);
  cg_line(cg, "sum += %s;", cg_in_at(cg, n, 0, "xi"));
  pool_close_taps(cg);
  cg_line(cg, "y[yi] = sum / div;");
  pool_close(cg, n, &w);
}

/* AVGPOOL2D_GRAD(dy) -> dx: each dy / divisor added to every in-bounds tap of its window. */
void cg_emit_avgpool2d_grad(Cg *cg, const Node *n) {
  Window w = win_of(cg->g, n);
  cg_emit_zero(cg, n);
  pool_open_windows(cg, n, &w);
  avgpool_divisor(cg, n, &w);
  cg_line(cg, "const %s gv = %s / div;", ctype(n->dtype), cg_in_at(cg, n, 0, "yi"));
  pool_open_taps(cg, &w);
  cg_line(cg, "y[xi] += gv;");
  pool_close_taps(cg);
  pool_close(cg, n, &w);
}
