/*
 * cg_implicit.c — convolutions as implicit GEMMs: nothing unfolded, register-blocked vector
 * micro-kernels over a zero frame around each input image, so that every tap is a constant
 * offset with no bounds test.
 *
 * The weight gradient. Per image n,
 *     dw[o][c][p][q] += sum over (i, j) of x[c][i*SH - PT + p*DH][j*SW - PL + q*DW] * dy[o][i][j]
 * with dy's image transposed to dt[i*Wo + j][o] (opad columns, zero past O), so that output
 * channels are contiguous vector lanes, and x's image in the frame xp (cpad channels of Hp x Wp).
 * A micro-kernel keeps cb channels x pb kernel rows x KW kernel columns x ow output channels in
 * registers over all of the image's positions: per position it loads ow/lanes vectors of dt and
 * broadcasts one x per tap. Beyond the multiply-adds an image costs O(C*H*W + O*Ho*Wo), where
 * im2col + GEMM writes and packs C*KH*KW*Ho*Wo elements, about as many as the FMAs they feed
 * when O is 32. With fewer output channels than lanes (block.rows), the vectors run along rows
 * of dy instead (dy framed, rows padded to whole vectors), and each accumulator is summed across
 * its lanes at the end.
 *
 * Images are tasks in waves of `workers`, as the GEMM weight gradient's (cg_window.c): image
 * n's gradient, as part[c][p][q][o], in its slot, added after the wave into sum in image order,
 * so the result is the same for every thread count; sum is transposed into dw at the end.
 *
 * The forward pass. The weights are transposed once per call to wt[(c*KH + p)*KW + q][o], and
 * per image (a task each) a micro-kernel keeps pr x pc output positions x ow output channels in
 * registers over every tap: per tap it loads ow/lanes vectors of wt and broadcasts one input
 * per position, read from the frame at the tap's offset (a table). The results, part[i*Wo2 +
 * j][o], are transposed into y.
 *
 * The input gradient (stride 1), a forward pass over dy's frame with the taps flipped: vectors
 * along rows of dx (8 input channels would fill half of a 512-bit vector), cb channels x pr rows
 * a call, each tap broadcasting cb weights of wf[(o*KH + p')*KW + q'][c].
 *
 * Every output is summed over its taps or positions in one order, whatever the threads. The
 * register block depends on the vector width the C compiler picks (sched_implicit_block), so the
 * micro-kernel and the block's sizes are printed once per width under the preprocessor
 * conditions of sched_vector_widths; the driver is written once in terms of them, and the
 * scratch is laid out for the largest.
 */
#include <inttypes.h>

#include "cg/cg.h"

/* The sizes of one width's block, as the enum the driver reads. */
static void put_block(Buf *o, const ImplicitBlock *b) {
  buf_printf(o,
             "enum { " CG_KERNEL_NAME "_rows = %d, " CG_KERNEL_NAME "_cb = %d, " CG_KERNEL_NAME
             "_pb = %d, " CG_KERNEL_NAME
             "_pr = %d, " CG_KERNEL_NAME "_pc = %d, " CG_KERNEL_NAME "_ow = %" PRId64 ", "
             CG_KERNEL_NAME "_cpad = %" PRId64 ", " CG_KERNEL_NAME "_opad = %" PRId64 ", "
             CG_KERNEL_NAME "_ho2 = %" PRId64 ", " CG_KERNEL_NAME "_wo2 = %" PRId64 " };\n",
             b->rows, b->cb, b->pb, b->pr, b->pc, b->ow, b->cpad, b->opad, b->Ho2, b->Wo2);
}

/* The micro-kernel's head: its signature (after the FMA attribute) and nacc zeroed vector
 * accumulators a0, a1, ... */
static void put_head(Buf *o, DType dt, const char *in2, int nacc) {
  const char *T = ctype(dt);
  cg_fma_function(o);
  buf_printf(o,
             "static void " CG_KERNEL_NAME "_taps(const %s *restrict xr, const %s *restrict %s, "
             "%s *restrict out) {\n",
             T, T, in2, T);
  cg_fma_pragma(o);
  buf_puts(o, "  " CG_KERNEL_NAME "_v");
  for (int k = 0; k < nacc; k++)
    buf_printf(o, "%s a%d = {0}%s", k && k % 8 == 0 ? "\n   " : "", k, k + 1 < nacc ? "," : ";\n");
}

/* One broadcast input, `src`, times vectors d0 .. d(nd-1) into the next nd accumulators
 * (*acc on). */
static void put_fmas(Buf *o, const char *indent, const char *T, const char *src, int *acc, int nd) {
  buf_printf(o, "%s{ const %s s = %s;", indent, T, src);
  for (int k = 0; k < nd; k++, (*acc)++)
    buf_printf(o, " a%d += s * d%d;", *acc, k);
  buf_puts(o, " }\n");
}

/* ov vectors d0, d1, ... loaded from `from`. */
static void put_loads(Buf *o, const char *indent, int ov, int lanes, const char *from) {
  for (int k = 0; k < ov; k++)
    buf_printf(o, "%s" CG_KERNEL_NAME "_v d%d; memcpy(&d%d, %s + %d, sizeof d%d);\n", indent, k, k,
               from, k * lanes, k);
}

/* The weight gradient's micro-kernel for block b: out[(c*KH + p)*KW + q][o] (opad apart) for
 * the block's c, p, q, o, from the frame (Hp x Wp) at its first channel and row (xr) and dt at
 * its first output channel. Unrolled over the block only, never over the positions. */
static void put_filter_rows_taps(Buf *o, const Window *w, DType dt, const ImplicitBlock *b,
                                 int64_t Wp);

static void put_filter_taps(Buf *o, const Window *w, DType dt, const ImplicitBlock *b, int64_t Hp,
                            int64_t Wp) {
  if (b->rows) {
    put_filter_rows_taps(o, w, dt, b, Wp);
    return;
  }
  const char *T = ctype(dt);
  int ov = (int)(b->ow / b->lanes);
  put_head(o, dt, "dt", b->cb * b->pb * (int)w->KW * ov);
  /* Columns outside, rows inside: along a row, tap q of column j is tap q - 1 of column j + 1,
   * and gcc then keeps the taps in registers and broadcasts them on the shuffle port, which
   * AVX-512 FMAs also use (20% slower than a broadcast from memory, a load). */
  buf_printf(o, "  for (int64_t j = 0; j < %" PRId64 "; j++)\n", w->Wo);
  buf_printf(o, "    for (int64_t i = 0; i < %" PRId64 "; i++) {\n", w->Ho);
  buf_printf(o, "      const %s *restrict xs = xr + i*%" PRId64 " + j*%" PRId64 ";\n", T,
             w->SH * Wp, w->SW);
  buf_printf(o, "      const %s *restrict ds = dt + (i*%" PRId64 " + j)*%" PRId64 ";\n", T, w->Wo,
             b->opad);
  put_loads(o, "      ", ov, b->lanes, "ds");
  int acc = 0;
  for (int c = 0; c < b->cb; c++)
    for (int p = 0; p < b->pb; p++)
      for (int64_t q = 0; q < w->KW; q++)
        put_fmas(o, "      ", T,
                 pool_printf(o->pool, "xs[%" PRId64 "]", (c * Hp + p * w->DH) * Wp + q * w->DW),
                 &acc, ov);
  buf_puts(o, "    }\n");
  acc = 0;
  for (int c = 0; c < b->cb; c++)
    for (int p = 0; p < b->pb; p++)
      for (int64_t q = 0; q < w->KW; q++)
        for (int k = 0; k < ov; k++, acc++)
          buf_printf(o, "  memcpy(out + %" PRId64 ", &a%d, sizeof a%d);\n",
                     ((c * w->KH + p) * w->KW + q) * b->opad + k * b->lanes, acc, acc);
  buf_puts(o, "}\n");
}

/* The weight gradient's micro-kernel along rows: out[q][o] (opad apart) for kernel columns q
 * and the block's ow output channels, from the frame at its channel and row (xr) and dy's frame
 * (Ho rows of Wo2, zero past Wo) at its first output channel: a vector of each over every
 * chunk of every row, each accumulator summed across its lanes in order at the end. */
static void put_filter_rows_taps(Buf *o, const Window *w, DType dt, const ImplicitBlock *b,
                                 int64_t Wp) {
  const char *T = ctype(dt);
  int ob = (int)b->ow, kw = (int)w->KW;
  put_head(o, dt, "dt", ob * kw);
  buf_printf(o, "  for (int64_t i = 0; i < %" PRId64 "; i++)\n", w->Ho);
  buf_printf(o, "    for (int64_t j = 0; j < %" PRId64 "; j += %d) {\n", b->Wo2, b->lanes);
  buf_printf(o, "      const %s *restrict xs = xr + i*%" PRId64 " + j;\n", T, w->SH * Wp);
  buf_printf(o, "      const %s *restrict ds = dt + i*%" PRId64 " + j;\n", T, b->Wo2);
  for (int q = 0; q < kw; q++)
    buf_printf(o, "      " CG_KERNEL_NAME "_v x%d; memcpy(&x%d, xs + %" PRId64 ", sizeof x%d);\n", q,
               q, q * w->DW, q);
  for (int c = 0; c < ob; c++) {
    buf_printf(o, "      { " CG_KERNEL_NAME "_v d; memcpy(&d, ds + %" PRId64 ", sizeof d);",
               c * w->Ho * b->Wo2);
    for (int q = 0; q < kw; q++)
      buf_printf(o, " a%d += d * x%d;", c * kw + q, q);
    buf_puts(o, " }\n");
  }
  buf_puts(o, "    }\n");
  for (int c = 0; c < ob; c++)
    for (int q = 0; q < kw; q++) {
      buf_printf(o, "  { %s s = 0; for (int l = 0; l < %d; l++) s += a%d[l]; out[%" PRId64 "] = s; }\n",
                 T, b->lanes, c * kw + q, q * b->opad + c);
    }
  buf_puts(o, "}\n");
}

/* The forward's micro-kernel for block b: out[r*Wo2 + col][o] (opad apart) for the block's
 * positions (r, col) and output channels, from the frame at its first position (xr) and wt at
 * its first output channel, over every tap t (its input at xr + off[t]). */
static void put_forward_taps(Buf *o, const Window *w, DType dt, const ImplicitBlock *b,
                             int64_t Wp) {
  const char *T = ctype(dt);
  int ov = (int)(b->ow / b->lanes);
  put_head(o, dt, "wt", b->pr * b->pc * ov);
  buf_printf(o, "  for (int64_t t = 0; t < %" PRId64 "; t++) {\n", w->C * w->KH * w->KW);
  buf_printf(o, "    const %s *restrict xs = xr + " CG_KERNEL_NAME "_off[t];\n", T);
  buf_printf(o, "    const %s *restrict ws = wt + t*%" PRId64 ";\n", T, b->opad);
  put_loads(o, "    ", ov, b->lanes, "ws");
  int acc = 0;
  for (int r = 0; r < b->pr; r++)
    for (int c = 0; c < b->pc; c++)
      put_fmas(o, "    ", T, pool_printf(o->pool, "xs[%" PRId64 "]", r * w->SH * Wp + c * w->SW), &acc,
               ov);
  buf_puts(o, "  }\n");
  acc = 0;
  for (int r = 0; r < b->pr; r++)
    for (int c = 0; c < b->pc; c++)
      for (int k = 0; k < ov; k++, acc++)
        buf_printf(o, "  memcpy(out + %" PRId64 ", &a%d, sizeof a%d);\n",
                   (r * b->Wo2 + c) * b->opad + k * b->lanes, acc, acc);
  buf_puts(o, "}\n");
}

/* The input gradient's micro-kernel for block b: out[c*Ho2 + r][0, lanes) (Wo2 apart) for the
 * block's channels c and rows r, from dy's frame at the block's first row and column (xr) and
 * wf at its first channel, over every flipped tap t (dy at xr + off[t]). */
static void put_data_taps(Buf *o, const Window *w, DType dt, const ImplicitBlock *b, int64_t Wp) {
  const char *T = ctype(dt);
  put_head(o, dt, "wf", b->cb * b->pr);
  buf_printf(o, "  for (int64_t t = 0; t < %" PRId64 "; t++) {\n", w->O * w->KH * w->KW);
  buf_printf(o, "    const %s *restrict xs = xr + " CG_KERNEL_NAME "_off[t];\n", T);
  buf_printf(o, "    const %s *restrict ws = wf + t*%" PRId64 ";\n", T, b->cpad);
  for (int r = 0; r < b->pr; r++)
    buf_printf(o, "    " CG_KERNEL_NAME "_v d%d; memcpy(&d%d, xs + %" PRId64 ", sizeof d%d);\n", r,
               r, r * Wp, r);
  for (int c = 0, acc = 0; c < b->cb; c++)
    put_fmas(o, "    ", T, pool_printf(o->pool, "ws[%d]", c), &acc, b->pr);
  buf_puts(o, "  }\n");
  for (int c = 0, acc = 0; c < b->cb; c++)
    for (int r = 0; r < b->pr; r++, acc++)
      buf_printf(o, "  memcpy(out + %" PRId64 ", &a%d, sizeof a%d);\n", (c * b->Ho2 + r) * b->Wo2,
                 acc, acc);
  buf_puts(o, "}\n");
}

/* The same contracts without vector extensions, one output channel a call: the weight
 * gradient's over one channel and row of taps, the forward's over one position, the input
 * gradient's over one element of dx. */
static void put_plain_taps(Buf *o, const Window *w, Op op, DType dt, const ImplicitBlock *b,
                           int64_t Wp) {
  const char *T = ctype(dt);
  if (op != OP_CONV2D_BWD_FILTER) {
    bool fwd = op == OP_CONV2D;
    buf_printf(o,
               "static void " CG_KERNEL_NAME "_taps(const %s *restrict xr, const %s *restrict %s, "
               "%s *restrict out) {\n",
               T, T, fwd ? "wt" : "wf", T);
    buf_printf(o, "  %s s = 0;\n", T);
    buf_printf(o, "  for (int64_t t = 0; t < %" PRId64 "; t++)\n",
               (fwd ? w->C : w->O) * w->KH * w->KW);
    buf_printf(o, "    s += xr[" CG_KERNEL_NAME "_off[t]] * %s[t*%" PRId64 "];\n", fwd ? "wt" : "wf",
               fwd ? b->opad : b->cpad);
    buf_puts(o, "  out[0] = s;\n}\n");
    return;
  }
  buf_printf(o,
             "static void " CG_KERNEL_NAME "_taps(const %s *restrict xr, const %s *restrict dt, "
             "%s *restrict out) {\n",
             T, T, T);
  buf_printf(o, "  for (int64_t q = 0; q < %" PRId64 "; q++) {\n", w->KW);
  buf_printf(o, "    %s s = 0;\n", T);
  buf_printf(o, "    for (int64_t i = 0; i < %" PRId64 "; i++)\n", w->Ho);
  buf_printf(o, "      for (int64_t j = 0; j < %" PRId64 "; j++)\n", w->Wo);
  buf_printf(o,
             "        s += xr[i*%" PRId64 " + j*%" PRId64 " + q*%" PRId64 "] * dt[(i*%" PRId64
             " + j)*%" PRId64 "];\n",
             w->SH * Wp, w->SW, w->DW, w->Wo, b->opad);
  buf_printf(o, "    out[q*%" PRId64 "] = s;\n", b->opad);
  buf_puts(o, "  }\n}\n");
}

/* The micro-kernels of every width, before the kernel, with the forward's table of tap
 * offsets into the frame. */
static void put_taps(Cg *cg, const Window *w, Op op, DType dt, const ImplicitScratch *is) {
  Buf *o = cg->pre;
  ImplicitBlock b;
  int64_t Hp = is->max.Hp, Wp = is->max.Wp;
  if (op != OP_CONV2D_BWD_FILTER) {
    /* The forward's taps (c, p, q) over x's frame, the input gradient's (o, p', q') over dy's. */
    int64_t chans = op == OP_CONV2D ? w->C : w->O;
    buf_printf(o, "static const int32_t " CG_KERNEL_NAME "_off[%" PRId64 "] = {",
               chans * w->KH * w->KW);
    for (int64_t c = 0, t = 0; c < chans; c++)
      for (int64_t p = 0; p < w->KH; p++)
        for (int64_t q = 0; q < w->KW; q++, t++)
          buf_printf(o, "%s%s%" PRId64, t ? "," : "", t % 16 ? " " : "\n  ",
                     (c * Hp + p * w->DH) * Wp + q * w->DW);
    buf_puts(o, "};\n");
  }
  buf_puts(o, "#if defined(__GNUC__) && !defined(KILN_PLAIN_C)\n");
  for (int i = 0; i < 3; i++) {
    const VectorWidth *v = &sched_vector_widths[i];
    if (v->cond)
      buf_printf(o, "#%s %s\n", i == 0 ? "if" : "elif", v->cond);
    else
      buf_puts(o, "#else\n");
    sched_implicit_block(w, op, dt, v, &b);
    buf_printf(o, "typedef %s " CG_KERNEL_NAME "_v __attribute__((vector_size(%d)));\n",
               ctype(dt), v->vbytes);
    put_block(o, &b);
    if (op == OP_CONV2D)
      put_forward_taps(o, w, dt, &b, Wp);
    else if (op == OP_CONV2D_BWD_DATA)
      put_data_taps(o, w, dt, &b, Wp);
    else
      put_filter_taps(o, w, dt, &b, Hp, Wp);
  }
  buf_puts(o, "#endif\n#else\n");
  sched_implicit_block(w, op, dt, &(VectorWidth){NULL, (int)dtype_size(dt), 1}, &b);
  put_block(o, &b);
  put_plain_taps(o, w, op, dt, &b, Wp);
  buf_puts(o, "#endif\n");
}

/* Input image n (input 0, `a`) into the slot's frame xp: channels up to the block's cpad, zero
 * around the image. */
static void put_frame(Cg *cg, const Window *w, const ImplicitBlock *m) {
  const char *T = ctype(cg->knode->dtype);
  cg_line(cg, "%s *restrict xp = (%s *)(void *)ws;", T, T);
  cg_line(cg, "memset(xp, 0, " CG_KERNEL_NAME "_cpad * %" PRId64 " * sizeof *xp);", m->Hp * m->Wp);
  cg_line(cg, "for (int64_t c = 0; c < %" PRId64 "; c++)", w->C);
  cg_line(cg, "  for (int64_t r = 0; r < %" PRId64 "; r++)", w->H);
  cg_line(cg,
          "    memcpy(xp + (c*%" PRId64 " + r + %" PRId64 ")*%" PRId64 " + %" PRId64
          ", a + ((n*%" PRId64 " + c)*%" PRId64 " + r)*%" PRId64 ", %" PRId64 " * sizeof *xp);",
          m->Hp, w->PT, m->Wp, w->PL, w->C, w->H, w->W, w->W);
}

/* The weight gradient of image n: frame, dy (input 1, `b`) transposed or, along rows, framed,
 * every block's micro-kernel into part. */
static void put_filter_image(Cg *cg, const Window *w, const ImplicitScratch *is) {
  const char *T = ctype(cg->knode->dtype);
  const ImplicitBlock *m = &is->max;
  int64_t HW = w->Ho * w->Wo, K = w->KH * w->KW;
  put_frame(cg, w, m);
  cg_line(cg, "%s *restrict dt = (%s *)(void *)(ws + %" PRId64 ");", T, T, is->dt_at);
  cg_line(cg, "%s *restrict part = (%s *)(void *)(ws + %" PRId64 ");", T, T, is->part_at);
  cg_line(cg, "if (" CG_KERNEL_NAME "_rows) {");
  cg_line(cg, "  memset(dt, 0, " CG_KERNEL_NAME "_opad * %" PRId64 " * " CG_KERNEL_NAME
              "_wo2 * sizeof *dt);", w->Ho);
  cg_line(cg, "  for (int64_t o = 0; o < %" PRId64 "; o++)", w->O);
  cg_line(cg, "    for (int64_t i = 0; i < %" PRId64 "; i++)", w->Ho);
  cg_line(cg, "      memcpy(dt + (o*%" PRId64 " + i)*" CG_KERNEL_NAME "_wo2, b + ((n*%" PRId64
              " + o)*%" PRId64 " + i)*%" PRId64 ", %" PRId64 " * sizeof *dt);",
          w->Ho, w->O, w->Ho, w->Wo, w->Wo);
  cg_line(cg, "} else {");
  cg_line(cg, "  for (int64_t s = 0; s < %" PRId64 "; s++) {", HW);
  cg_line(cg, "    for (int64_t o = 0; o < %" PRId64 "; o++)", w->O);
  cg_line(cg, "      dt[s*" CG_KERNEL_NAME "_opad + o] = b[(n*%" PRId64 " + o)*%" PRId64 " + s];",
          w->O, HW);
  cg_line(cg, "    for (int64_t o = %" PRId64 "; o < " CG_KERNEL_NAME "_opad; o++)", w->O);
  cg_line(cg, "      dt[s*" CG_KERNEL_NAME "_opad + o] = 0;");
  cg_line(cg, "  }");
  cg_line(cg, "}");
  cg_line(cg, "for (int64_t c0 = 0; c0 < " CG_KERNEL_NAME "_cpad; c0 += " CG_KERNEL_NAME "_cb)");
  cg_line(cg, "  for (int64_t p0 = 0; p0 < %" PRId64 "; p0 += " CG_KERNEL_NAME "_pb)", w->KH);
  cg_line(cg, "    for (int64_t o0 = 0; o0 < " CG_KERNEL_NAME "_opad; o0 += " CG_KERNEL_NAME "_ow)");
  cg_line(cg,
          "      " CG_KERNEL_NAME "_taps(xp + (c0*%" PRId64 " + p0*%" PRId64 ")*%" PRId64
          ", dt + o0*(" CG_KERNEL_NAME "_rows ? %" PRId64 "*" CG_KERNEL_NAME "_wo2 : 1)"
          ", part + (c0*%" PRId64 " + p0*%" PRId64 ")*" CG_KERNEL_NAME "_opad + o0);",
          m->Hp, w->DH, m->Wp, w->Ho, K, w->KW);
}

static void emit_filter(Cg *cg, const Node *n, const Window *w, const ImplicitScratch *is) {
  int64_t rows = w->C * w->KH * w->KW;
  int workers = cg->s->node[n->id].workers;
  const char *T = ctype(n->dtype), *B = sz_c(cg, sz_dim(cg, w->N));
  cg_line(cg, "%s *restrict sum = (%s *)(void *)scratch;", T, T);
  cg_line(cg, "memset(sum, 0, %" PRId64 " * " CG_KERNEL_NAME "_opad * sizeof *sum);", rows);
  cg_image_waves_open(cg, B, workers);
  cg_line(cg, "unsigned char *ws = scratch + %" PRId64 " + t*%" PRId64 ";", is->shared_bytes,
          is->slot_bytes);
  put_filter_image(cg, w, is);
  cg_image_waves_close(cg, B, workers);
  cg_line(cg, "for (int64_t t = 0; t < %d && n0 + t < %s; t++) {", workers, B);
  cg_line(cg, "  const %s *restrict part = (const %s *)(void *)(scratch + %" PRId64 " + t*%" PRId64
              " + %" PRId64 ");",
          T, T, is->shared_bytes, is->slot_bytes, is->part_at);
  cg_line(cg, "  for (int64_t e = 0; e < %" PRId64 " * " CG_KERNEL_NAME "_opad; e++)", rows);
  cg_line(cg, "    sum[e] += part[e];");
  cg_line(cg, "}");
  cg->indent--;
  cg_line(cg, "}");
  cg_line(cg, "for (int64_t o = 0; o < %" PRId64 "; o++)", w->O);
  cg_line(cg, "  for (int64_t k = 0; k < %" PRId64 "; k++)", rows);
  cg_line(cg, "    y[o*%" PRId64 " + k] = sum[k*" CG_KERNEL_NAME "_opad + o];", rows);
}

/* The forward: weights transposed into wt (shared), then per image (a task each, in the slot
 * of the worker running it) its frame, every block's micro-kernel into part, part transposed
 * into y's image. */
static void emit_forward(Cg *cg, const Node *n, const Window *w, const ImplicitScratch *is) {
  int64_t taps = w->C * w->KH * w->KW, HW = w->Ho * w->Wo;
  int workers = cg->s->node[n->id].workers;
  const char *T = ctype(n->dtype), *B = sz_c(cg, sz_dim(cg, w->N));
  const ImplicitBlock *m = &is->max;
  cg_line(cg, "{");
  cg_line(cg, "  %s *restrict wt = (%s *)(void *)scratch;", T, T);
  cg_line(cg, "  for (int64_t t = 0; t < %" PRId64 "; t++) {", taps);
  cg_line(cg, "    for (int64_t o = 0; o < %" PRId64 "; o++)", w->O);
  cg_line(cg, "      wt[t*" CG_KERNEL_NAME "_opad + o] = b[o*%" PRId64 " + t];", taps);
  cg_line(cg, "    for (int64_t o = %" PRId64 "; o < " CG_KERNEL_NAME "_opad; o++)", w->O);
  cg_line(cg, "      wt[t*" CG_KERNEL_NAME "_opad + o] = 0;");
  cg_line(cg, "  }");
  cg_line(cg, "}");
  if (workers > 1) {
    cg_tasks_open(cg, "n");
    cg_line(cg, "const %s *restrict wt = (const %s *)(void *)scratch;", T, T);
    cg_line(cg, "unsigned char *ws = scratch + %" PRId64 " + worker*%" PRId64 ";", is->shared_bytes,
            is->slot_bytes);
  } else {
    cg_line(cg, "const %s *restrict wt = (const %s *)(void *)scratch;", T, T);
    cg_line(cg, "unsigned char *ws = scratch + %" PRId64 ";", is->shared_bytes);
    cg_line(cg, "for (int64_t n = 0; n < %s; n++) {", B);
    cg->indent++;
  }
  put_frame(cg, w, m);
  cg_line(cg, "%s *restrict part = (%s *)(void *)(ws + %" PRId64 ");", T, T, is->part_at);
  cg_line(cg, "for (int64_t i0 = 0; i0 < " CG_KERNEL_NAME "_ho2; i0 += " CG_KERNEL_NAME "_pr)");
  cg_line(cg, "  for (int64_t j0 = 0; j0 < " CG_KERNEL_NAME "_wo2; j0 += " CG_KERNEL_NAME "_pc)");
  cg_line(cg, "    for (int64_t o0 = 0; o0 < " CG_KERNEL_NAME "_opad; o0 += " CG_KERNEL_NAME "_ow)");
  cg_line(cg,
          "      " CG_KERNEL_NAME "_taps(xp + i0*%" PRId64 " + j0*%" PRId64
          ", wt + o0, part + (i0*" CG_KERNEL_NAME "_wo2 + j0)*" CG_KERNEL_NAME "_opad + o0);",
          w->SH * m->Wp, w->SW);
  cg_line(cg, "for (int64_t o = 0; o < %" PRId64 "; o++)", w->O);
  cg_line(cg, "  for (int64_t i = 0; i < %" PRId64 "; i++)", w->Ho);
  cg_line(cg, "    for (int64_t j = 0; j < %" PRId64 "; j++)", w->Wo);
  cg_line(cg,
          "      y[(n*%" PRId64 " + o)*%" PRId64 " + i*%" PRId64 " + j] = part[(i*" CG_KERNEL_NAME
          "_wo2 + j)*" CG_KERNEL_NAME "_opad + o];",
          w->O, HW, w->Wo);
  if (workers > 1) {
    cg_tasks_close(cg, B, NULL, 0);
  } else {
    cg->indent--;
    cg_line(cg, "}");
  }
}

/* The input gradient: the weights flipped and transposed into wf (shared), then per image (a
 * task each) dy's frame, every block's micro-kernel into part, part's rows into dx's image. */
static void emit_data(Cg *cg, const Node *n, const Window *w, const ImplicitScratch *is) {
  int workers = cg->s->node[n->id].workers;
  const char *T = ctype(n->dtype), *B = sz_c(cg, sz_dim(cg, w->N));
  const ImplicitBlock *m = &is->max;
  int64_t top = (w->KH - 1) * w->DH - w->PT, left = (w->KW - 1) * w->DW - w->PL;
  int64_t i0 = top < 0 ? -top : 0, j0 = left < 0 ? -left : 0;
  int64_t ncols = w->Wo - j0 < m->Wp - (j0 + left) ? w->Wo - j0 : m->Wp - (j0 + left);
  cg_line(cg, "{");
  cg_line(cg, "  %s *restrict wf = (%s *)(void *)scratch;", T, T);
  cg_line(cg, "  for (int64_t o = 0; o < %" PRId64 "; o++)", w->O);
  cg_line(cg, "    for (int64_t p = 0; p < %" PRId64 "; p++)", w->KH);
  cg_line(cg, "      for (int64_t q = 0; q < %" PRId64 "; q++) {", w->KW);
  cg_line(cg, "        %s *restrict d = wf + ((o*%" PRId64 " + p)*%" PRId64 " + q)*" CG_KERNEL_NAME
              "_cpad;", T, w->KH, w->KW);
  cg_line(cg, "        for (int64_t c = 0; c < " CG_KERNEL_NAME "_cpad; c++)");
  cg_line(cg,
          "          d[c] = c < %" PRId64 " ? b[((o*%" PRId64 " + c)*%" PRId64 " + %" PRId64
          " - p)*%" PRId64 " + %" PRId64 " - q] : 0;",
          w->C, w->C, w->KH, w->KH - 1, w->KW, w->KW - 1);
  cg_line(cg, "      }");
  cg_line(cg, "}");
  if (workers > 1) {
    cg_tasks_open(cg, "n");
    cg_line(cg, "unsigned char *ws = scratch + %" PRId64 " + worker*%" PRId64 ";", is->shared_bytes,
            is->slot_bytes);
  } else {
    cg_line(cg, "unsigned char *ws = scratch + %" PRId64 ";", is->shared_bytes);
    cg_line(cg, "for (int64_t n = 0; n < %s; n++) {", B);
    cg->indent++;
  }
  cg_line(cg, "const %s *restrict wf = (const %s *)(void *)scratch;", T, T);
  cg_line(cg, "%s *restrict xp = (%s *)(void *)ws;", T, T);
  cg_line(cg, "%s *restrict part = (%s *)(void *)(ws + %" PRId64 ");", T, T, is->part_at);
  cg_line(cg, "memset(xp, 0, %" PRId64 " * sizeof *xp);", w->O * m->Hp * m->Wp);
  cg_line(cg, "for (int64_t o = 0; o < %" PRId64 "; o++)", w->O);
  cg_line(cg, "  for (int64_t i = %" PRId64 "; i < %" PRId64 " && i + %" PRId64 " < %" PRId64 "; i++)",
          i0, w->Ho, top, m->Hp);
  cg_line(cg,
          "    memcpy(xp + (o*%" PRId64 " + i + %" PRId64 ")*%" PRId64 " + %" PRId64
          ", a + ((n*%" PRId64 " + o)*%" PRId64 " + i)*%" PRId64 " + %" PRId64 ", %" PRId64
          " * sizeof *xp);",
          m->Hp, top, m->Wp, j0 + left, w->O, w->Ho, w->Wo, j0, ncols);
  cg_line(cg, "for (int64_t h0 = 0; h0 < " CG_KERNEL_NAME "_ho2; h0 += " CG_KERNEL_NAME "_pr)");
  cg_line(cg, "  for (int64_t c0 = 0; c0 < " CG_KERNEL_NAME "_cpad; c0 += " CG_KERNEL_NAME "_cb)");
  cg_line(cg, "    for (int64_t w0 = 0; w0 < " CG_KERNEL_NAME "_wo2; w0 += " CG_KERNEL_NAME "_ow)");
  cg_line(cg,
          "      " CG_KERNEL_NAME "_taps(xp + h0*%" PRId64 " + w0, wf + c0, part + (c0*"
          CG_KERNEL_NAME "_ho2 + h0)*" CG_KERNEL_NAME "_wo2 + w0);",
          m->Wp);
  cg_line(cg, "for (int64_t c = 0; c < %" PRId64 "; c++)", w->C);
  cg_line(cg, "  for (int64_t h = 0; h < %" PRId64 "; h++)", w->H);
  cg_line(cg,
          "    memcpy(y + ((n*%" PRId64 " + c)*%" PRId64 " + h)*%" PRId64 ", part + (c*"
          CG_KERNEL_NAME "_ho2 + h)*" CG_KERNEL_NAME "_wo2, %" PRId64 " * sizeof *part);",
          w->C, w->H, w->W, w->W);
  if (workers > 1) {
    cg_tasks_close(cg, B, NULL, 0);
  } else {
    cg->indent--;
    cg_line(cg, "}");
  }
}

void cg_emit_conv_implicit(Cg *cg, const Node *n) {
  Window w = win_of(cg->g, n);
  ImplicitScratch is;
  sched_implicit_scratch(&w, n->op, n->dtype, &is);
  put_taps(cg, &w, n->op, n->dtype, &is);
  cg_line(cg, "scratch += (64 - (uintptr_t)scratch %% 64) %% 64;");
  if (n->op == OP_CONV2D)
    emit_forward(cg, n, &w, &is);
  else if (n->op == OP_CONV2D_BWD_DATA)
    emit_data(cg, n, &w, &is);
  else
    emit_filter(cg, n, &w, &is);
}
