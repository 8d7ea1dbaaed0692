/*
 * nn.h — the layer library: layers and composite ops as functions over the graph with typed
 * arguments, independent of any model text (nn.c).
 *
 * The DSL's lowering (front/), an ONNX importer or a C builder API build the same layers by
 * calling these functions: `linear`, `conv2d`, the poolings, the normalisations, dropout and the
 * losses expand here into primitive ops through the ir_* builders, so no later phase knows they
 * existed and their gradients come exactly from the primitives' rules. Everything is built at
 * the Loc a caller gives (the model line, or no location), and bad tensors fail there with
 * kiln_fail. Options whose range a caller reads from its own input (eps, momentum, p) are
 * checked by that caller, which knows where they were written; here they are preconditions.
 *
 * Modes: a model is built twice into one graph, once per NnMode (docs/design.md, "Modes by
 * lowering twice"). The training pass makes parameters and buffers and registers their updates;
 * the evaluation pass finds them by name. Layers that differ by mode (batchnorm, dropout) take
 * the mode; the others hash-cons to the same nodes in both passes.
 */
#ifndef KILN_NN_H
#define KILN_NN_H

#include "ir/ir.h"

typedef enum NnMode {
  NN_TRAIN,   /* batch statistics, running-statistics updates, dropout masks; makes leaves */
  NN_EVAL     /* running statistics, dropout is the identity; finds the leaves made by NN_TRAIN */
} NnMode;

/* An initialisation scheme: kind is KILN_INIT_* or NN_INIT_DEFAULT (each layer's PyTorch
 * default); a is the scheme's argument (normal: std, uniform: bound). */
typedef struct NnInit {
  int kind;
  double a;
} NnInit;
#define NN_INIT_DEFAULT (-1)
#define NN_INIT_LSUV (-2)   /* the train block only: read as orthogonal with TrainSpec.lsuv */

/* One instance of a layer: how it is built and what its leaves are called. */
typedef struct NnLayer {
  NnMode mode;
  const char *name;   /* prefix of its leaves ("conv1" makes conv1.weight); dropout: the site */
  Loc loc;            /* where its ops are made (the call) */
  Loc name_loc;       /* where its leaves are made (where it is named; else loc) */
} NnLayer;

/* ---- leaves ---- */

/* PyTorch's _calculate_fan_in_and_fan_out: fan_in = size(1) * receptive field, fan_out =
 * size(0) * receptive field; a vector counts its length for both, a scalar 1. The shape of the
 * leaf name is checked first (at loc), so the products cannot overflow. */
void nn_fans(Graph *g, const char *name, const Shape *s, Loc loc, int64_t *fan_in,
             int64_t *fan_out);
/* A parameter named name: made in NN_TRAIN (a second one of that name fails), found in NN_EVAL.
 * init NN_INIT_DEFAULT is KILN_INIT_TORCH_DEFAULT, which reads the fans. */
int nn_param(Graph *g, NnMode mode, const char *name, DType dt, Shape s, NnInit init,
             int64_t fan_in, int64_t fan_out, Loc loc);
/* A persistent non-learnable tensor (running statistics) with initialiser init (KILN_INIT_*),
 * made in NN_TRAIN, found in NN_EVAL. */
int nn_state(Graph *g, NnMode mode, const char *name, DType dt, Shape s, int init, Loc loc);

/* ---- input checks (each layer runs its own; exported so a caller can check a tensor before
 * it reads the layer's other arguments, and report the first error first) ---- */

/* [N, C, H, W] with C, H and W numbers, floating-point; fn names the layer in the message. */
void nn_check_image(Graph *g, int x, const char *fn, Loc loc);
/* linear's input: [N, in], in a number, floating-point. */
void nn_check_linear(Graph *g, int x, Loc loc);
/* batchnorm's input: [N, C, H, W] or [N, C], C a number, floating-point. */
void nn_check_batchnorm(Graph *g, int x, Loc loc);
/* layernorm's input: [N, ...] with at least 2 axes and numbers after the first, floating-point. */
void nn_check_layernorm(Graph *g, int x, Loc loc);
/* conv2d: x's channels and out both divide into groups (>= 1). */
void nn_check_groups(Graph *g, int x, int64_t out, int64_t groups, Loc loc);

/* ---- layers with parameters ---- */

typedef struct NnLinear {
  int64_t out;        /* output features M */
  bool bias;
  NnInit init;        /* the weight's; any scheme but NN_INIT_DEFAULT zeroes the bias */
} NnLinear;
/* x [N, in] @ weight^T + bias, weight [M, in], bias [M] (PyTorch's nn.Linear); the weight is
 * a `weight` for regularisation. */
int nn_linear(Graph *g, const NnLayer *l, int x, const NnLinear *o);

typedef struct NnConv2d {
  int64_t out;        /* output channels O */
  int64_t kernel[2], stride[2], dilation[2];   /* [h, w], each >= 1 */
  int64_t pad[4];     /* [top, bottom, left, right], >= 0 */
  int64_t groups;     /* >= 1 */
  bool bias;
  bool untied;        /* with bias: one per output channel and location, [O, Ho, Wo] (seed 001's
                         untied bias), instead of one per channel */
  NnInit init;        /* as NnLinear's */
} NnConv2d;
/* x [N, C, H, W] with weight [O, C/groups, kh, kw] and bias [O] (PyTorch's nn.Conv2d layout);
 * the bias is added as [O, 1, 1] so it broadcasts over H and W. */
int nn_conv2d(Graph *g, const NnLayer *l, int x, const NnConv2d *o);
/* x [N, C, L] with weight [O, C/groups, k] and bias [O] (nn.Conv1d's layout); o's kernel,
 * stride and dilation are [1, k], [1, s], [1, d] and its pad [0, 0, left, right]. */
int nn_conv1d(Graph *g, const NnLayer *l, int x, const NnConv2d *o);

/* x [N, C, H, W] with a given kernel w [O, C/groups, kh, kw] (any tensor: a constant for a
 * fixed filter, a parameter, a computed value), o's geometry (its out, kernel, bias and init are
 * ignored): F.conv2d's cross-correlation, or with flip the true convolution of seed 004 eq. 2.2,
 * the kernel mirrored along both spatial axes. */
int nn_conv(Graph *g, int x, int w, const NnConv2d *o, bool flip, Loc loc);

/* Padding by mode. The span a kernel adds is total = dilation*(k-1): same pads total/2 before
 * and the rest after (PyTorch's padding='same', the extra element going to the bottom/right;
 * it keeps the size at stride 1), full pads total on both sides, valid pads nothing. */
typedef enum NnPadMode { NN_PAD_SAME, NN_PAD_FULL, NN_PAD_VALID } NnPadMode;
void nn_pad_mode(NnPadMode m, const int64_t kernel[2], const int64_t dilation[2], int64_t pad[4]);

typedef struct NnBatchnorm {
  double eps;         /* > 0; PyTorch's default 1e-5 */
  double momentum;    /* in [0, 1]; default 0.1 */
  bool affine;        /* default true */
} NnBatchnorm;
/* PyTorch's BatchNorm2d / BatchNorm1d on x [N, C, H, W] or [N, C], per channel over (N, H, W),
 * with leaves <name>.weight, .bias (when affine), .running_mean, .running_var and
 * .num_batches_tracked. NN_TRAIN normalises with the batch statistics and registers the
 * running-statistics updates in the train entry (the variance kept is unbiased, var * n/(n-1)
 * with n = N*H*W symbolic in the batch); NN_EVAL normalises with the running statistics. */
int nn_batchnorm(Graph *g, const NnLayer *l, int x, const NnBatchnorm *o);
/* PyTorch's nn.LayerNorm(x.shape[1:]): over every axis but the first, with weight and bias of
 * shape x.shape[1:] when affine. Same in both modes. */
int nn_layernorm(Graph *g, const NnLayer *l, int x, double eps, bool affine);
/* Group normalisation (seed 000 eq. 2.20-2.21, nn.GroupNorm): x [N, C, ...] with its C channels
 * in `groups` groups of consecutive channels, each group of each example normalised over its
 * channels and positions (biased variance); affine: weight [C] (ones) and bias [C] (zeros) per
 * channel. */
int nn_groupnorm(Graph *g, const NnLayer *l, int x, int64_t groups, double eps, bool affine);

/* ---- layers without parameters ---- */

/* PyTorch's nn.InstanceNorm2d defaults: x [N, C, H, W] over (H, W) per example and channel, no
 * affine and no running statistics. */
int nn_instancenorm(Graph *g, int x, double eps, Loc loc);
/* Inverted dropout with probability p in [0, 1): NN_TRAIN keeps each element with probability
 * 1 - p and scales it by 1/(1 - p), the mask depending on the site's name (l->name), the model's
 * step counter dropout.step (made at the first site) and the element's index. NN_EVAL and p = 0
 * return x itself. Each site needs its own name. */
int nn_dropout(Graph *g, const NnLayer *l, int x, double p);
/* Additive Gaussian noise x + std·ε in both modes (a denoiser's corrupted input): ε drawn per
 * element from the site's name and, in training, dropout.step; evaluation draws the same ε at
 * every call. Each site needs its own name. */
int nn_noise(Graph *g, const NnLayer *l, int x, double std);

typedef struct NnPool2d {
  int64_t kernel[2], stride[2], dilation[2];   /* [h, w], each >= 1 */
  int64_t pad[4];     /* [top, bottom, left, right], >= 0 */
  bool count_include_pad;                      /* avgpool2d: divide by the full window */
} NnPool2d;
/* x [N, C, H, W] (checked with the layer's name). maxpool2d reads dilation; avgpool2d reads
 * count_include_pad; l2pool2d reads neither (dilation 1, padding counts as zeros). */
int nn_maxpool2d(Graph *g, int x, const NnPool2d *o, Loc loc);
int nn_avgpool2d(Graph *g, int x, const NnPool2d *o, Loc loc);
/* 1-D pools on [N, C, L], as the 2-D ones with windows [1, k] (o given so). */
int nn_maxpool1d(Graph *g, int x, const NnPool2d *o, Loc loc);
int nn_avgpool1d(Graph *g, int x, const NnPool2d *o, Loc loc);
/* The square root of the sum of squares over each window (PyTorch's LPPool2d, norm_type 2). */
int nn_l2pool2d(Graph *g, int x, const NnPool2d *o, Loc loc);

/* [N, d1, d2, ...] -> [N, d1*d2*...]. */
int nn_flatten(Graph *g, int x, Loc loc);
/* softmax, or log_softmax when log, along axis (in [0, rank)). */
int nn_softmax(Graph *g, int x, int axis, bool log, Loc loc);
/* x > 0 ? x : slope * x */
int nn_leaky_relu(Graph *g, int x, double slope, Loc loc);

/* The elementwise toolbox of the seed chapters, from the primitives (ops.def), each with
 * PyTorch's definition and gradient:
 *   maximum / minimum   torch.maximum / minimum: at a tie the gradient is split evenly
 *   clamp(x, lo, hi)    torch.clamp: the gradient passes where lo <= x <= hi (both bounds kept)
 *   abs, step           |x| (gradient sign x, 0 at 0); x > 0 ? 1 : 0 (gradient 0)
 *   tan                 sin x / cos x
 *   elu(alpha)          x > 0 ? x : alpha (e^x - 1); gradient alpha at 0, as PyTorch
 *   gelu                x/2 (1 + erf(x / sqrt 2)), PyTorch's exact form */
int nn_maximum(Graph *g, int a, int b, Loc loc);
int nn_minimum(Graph *g, int a, int b, Loc loc);
int nn_clamp(Graph *g, int x, double lo, double hi, Loc loc);
int nn_abs(Graph *g, int x, Loc loc);
int nn_step(Graph *g, int x, Loc loc);
int nn_tan(Graph *g, int x, Loc loc);
int nn_elu(Graph *g, int x, double alpha, Loc loc);
int nn_gelu(Graph *g, int x, Loc loc);
/* Maxout (seed 000, 2.2): x [N, C, ...] -> [N, C/pieces, ...], each output the largest of
 * `pieces` consecutive channels (Goodfellow et al.'s grouping), as max(max(x0, x1), x2) ... */
int nn_maxout(Graph *g, int x, int64_t pieces, Loc loc);
/* xs[0..n) joined along axis, pairwise left to right (n >= 1). */
int nn_concat(Graph *g, int n, const int *xs, int axis, Loc loc);

/* ---- losses (scalars) ---- */

/* logits [N, C], labels i32[N]: the mean over N of -log softmax(logits)[label]. */
int nn_cross_entropy(Graph *g, int logits, int labels, Loc loc);
/* mean((a - b)^2) over all axes. */
int nn_mse(Graph *g, int a, int b, Loc loc);
/* Peak signal-to-noise ratio in decibels, a [N, ...] against b (broadcast): per example
 * 10·log10(peak² / mean((a − b)²)) over its other axes, averaged over the N examples
 * (+inf for an exact match). */
int nn_psnr(Graph *g, int a, int b, double peak, Loc loc);
/* logp [N, C] (log-probabilities), labels i32[N]: the mean over N of -logp[label]
 * (F.nll_loss). */
int nn_nll(Graph *g, int logp, int labels, Loc loc);
/* scores [N, C], labels i32[N]: the multi-class hinge loss, the mean over N of
 * sum over j != label of max(0, margin - x[label] + x[j]) / C (F.multi_margin_loss). */
int nn_hinge(Graph *g, int scores, int labels, double margin, Loc loc);
/* labels i32[...] -> [..., classes], 1 at the label, else 0 (F.one_hot), of type dt. */
int nn_one_hot(Graph *g, int labels, int64_t classes, DType dt, Loc loc);
/* torch.gather(x, axis, index). */
int nn_gather(Graph *g, int x, int axis, int index, Loc loc);
/* The mean over all elements of max(x,0) - x*t + log(1 + e^-|x|). */
int nn_bce_with_logits(Graph *g, int x, int t, Loc loc);

#endif
