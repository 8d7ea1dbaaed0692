/*
 * xform.h — graph transforms: reverse mode (autodiff.c), forward mode and Hessian-vector
 * products (ad_forward.c), and the training graph with its optimizers and entries (train.c).
 */
#ifndef KILN_XFORM_H
#define KILN_XFORM_H

#include "ir/ir.h"

/* ================================ autodiff.c ================================ */

/* Reverse mode as a graph transform: builds nodes for d(loss)/d(wrt[i]) into grads[i] from the
 * per-op vector-Jacobian rules. A leaf the loss does not depend on gets a zero gradient. */
void ad_reverse(Graph *g, int loss, const int *wrt, int nwrt, int *grads);

/* Whether autodiff.c has a vector-Jacobian rule for op (tests check every op has one or is
 * explicitly non-differentiable). */
bool ad_has_vjp(Op op);

/* Fault injection for the tests of the checks (kiln gradcheck): the vector-Jacobian rule of
 * this op doubles its result. OP_COUNT, the default, breaks nothing. */
extern Op ad_broken_op;


/* ================================ train.c ================================ */

/* Builds the three entry points from what the frontend left in g: "grad" (loss and every
 * parameter gradient), "train" (loss; updates: optimizer and running statistics) and "eval". */
void train_build(Graph *g);

/* ================================ ad_forward.c ================================ */

/* ad_forward.c. Forward mode as a graph transform: jvps[i] = the derivative of outs[i] in the
 * direction that moves wrt[j] along tangents[j] (a node of wrt[j]'s shape and dtype) for every j,
 * built from the per-op tangent rules. An output that does not depend on any wrt gets a zero
 * tensor. Every op has a tangent rule; applied to its own output it gives derivatives of any
 * order (kiln diff). */
void ad_forward(Graph *g, const int *wrt, const int *tangents, int nwrt, const int *outs,
                int nouts, int *jvps);
/* Whether ad_forward.c has a tangent rule for op (every non-leaf op has one). */
bool ad_has_jvp(Op op);

/* train.c, on demand after train_build (for `kiln jvp` / `kiln hvp`): one INPUT leaf
 * "tangent.<param>" per parameter, shaped like it, and more outputs of the grad entry —
 * train_build_jvp: "jvp.loss" and, with a declared output, "output" and "jvp.output" (the
 * directional derivatives of the training loss and of the evaluation-mode output);
 * train_build_hvp: "hvp.<param>", the Hessian of the training loss times the tangents, by
 * forward mode over the gradient graph. Both may be called on one graph. */
void train_build_jvp(Graph *g);
void train_build_hvp(Graph *g);

#endif
