/*
 * window.c — the geometry of 2-D window ops (convolutions, pools and their adjoints), written
 * once for shape rules, autodiff and code generation. The reference interpreter keeps its own
 * as the independent oracle.
 *
 * A window op sits between a forward input x [N, C, H, W] and a forward output y [N, O, Ho, Wo]
 * (O = C for pools); for an adjoint one of the two is the node itself and the other an operand
 * or, for AVGPOOL2D_GRAD, attr.in_size. Tap (p, q) of output (i, j) reads input row
 * i*SH - PT + p*DH and column j*SW - PL + q*DW, nothing when that is in the padding.
 */
#include "ir/ir.h"

int64_t win_extent(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t pad_lo,
                   int64_t pad_hi) {
  int64_t padded = in + pad_lo + pad_hi, span = dilation * (kernel - 1) + 1;
  if (kernel <= 0 || stride <= 0 || dilation <= 0 || pad_lo < 0 || pad_hi < 0 || span > padded)
    return -1;
  return (padded - span) / stride + 1;
}

bool op_is_window(Op op) {
  switch (op) {
  case OP_CONV2D: case OP_CONV2D_BWD_DATA: case OP_CONV2D_BWD_FILTER:
  case OP_MAXPOOL2D: case OP_MAXPOOL2D_GRAD: case OP_AVGPOOL2D: case OP_AVGPOOL2D_GRAD:
  case OP_MAXPOOL2D_PICK:
    return true;
  default:
    return false;
  }
}

Window win_of(const Graph *g, const Node *n) {
  KILN_ASSERT(op_is_window(n->op));
  const Shape *in0 = &ir_at(g, n->in[0])->shape;
  const Shape *xs, *ys;
  switch (n->op) {
  case OP_CONV2D_BWD_DATA:
    xs = &n->shape, ys = in0;
    break;
  case OP_CONV2D_BWD_FILTER:
  case OP_MAXPOOL2D_GRAD:
    xs = in0, ys = &ir_at(g, n->in[1])->shape;
    break;
  case OP_AVGPOOL2D_GRAD:
    xs = &n->shape, ys = in0;
    break;
  default:  /* CONV2D, MAXPOOL2D, AVGPOOL2D, MAXPOOL2D_PICK */
    xs = in0, ys = &n->shape;
    break;
  }
  const Attr *a = &n->attr;
  return (Window){.N = xs->d[0], .C = xs->d[1].n, .H = xs->d[2].n, .W = xs->d[3].n,
                  .O = ys->d[1].n, .Ho = ys->d[2].n, .Wo = ys->d[3].n,
                  .G = a->groups > 0 ? a->groups : 1, .KH = a->kernel[0], .KW = a->kernel[1],
                  .SH = a->stride[0], .SW = a->stride[1], .DH = a->dilation[0],
                  .DW = a->dilation[1], .PT = a->pad[0], .PB = a->pad[1], .PL = a->pad[2],
                  .PR = a->pad[3]};
}

void win_cols(const Window *w, int64_t q, int64_t *j0, int64_t *j1) {
  int64_t lo = w->PL - q * w->DW;             /* j*SW >= lo */
  int64_t hi = w->W - 1 + w->PL - q * w->DW;  /* j*SW <= hi */
  *j0 = lo <= 0 ? 0 : (lo + w->SW - 1) / w->SW;
  *j1 = hi < 0 ? 0 : hi / w->SW + 1;
  if (*j1 > w->Wo)
    *j1 = w->Wo;
  if (*j1 < *j0)
    *j1 = *j0;
}

bool win_tiles(const Window *w) {
  return w->KH == w->SH && w->KW == w->SW && w->DH == 1 && w->DW == 1 && w->PT == 0 &&
         w->PL == 0 && w->KH * w->KW <= 16 && w->Ho * w->SH <= w->H && w->Wo * w->SW <= w->W;
}

bool win_tiles_exactly(const Window *w) {
  return win_tiles(w) && w->Ho * w->SH == w->H && w->Wo * w->SW == w->W;
}
