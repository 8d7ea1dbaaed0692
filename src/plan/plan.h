/*
 * plan.h — the static memory plan: every tensor an entry reads or writes gets an arena offset,
 * and the kiln_tensor table the generated code and its drivers share.
 */
#ifndef KILN_PLAN_H
#define KILN_PLAN_H

#include "ir/ir.h"

/* ================================ plan.c ================================ */

/* The static memory plan for one compiled program: every tensor an entry reads or writes, with
 * its arena offset. Persistent tensors first, then inputs and outputs, then temporaries, which
 * share space by liveness (entries never run at the same time, so they share it too). */
typedef struct Plan {
  int64_t batch;            /* value bound to symbol 0 (B) */
  int64_t symvals[IR_MAX_SYMS];
  int64_t *offset;          /* per node: byte offset in the arena, -1 if not stored */
  int64_t arena_bytes;
  kiln_tensor *tensors;     /* the ABI table: params, state, hypers, inputs, outputs */
  int ntensors;
  int *tensor_node;         /* node id of each table entry */
  int64_t scratch_offset;   /* one scratch region shared by all kernels (they run one at a time): */
  int64_t scratch_bytes;    /* packing buffers, im2col; the max of cg_scratch_bytes over nodes */
} Plan;

/* Binds every symbol: the batch symbol to batch, others fail (they must be given in the model).
 * Fails if a shape is not positive once bound. */
void plan_build(Graph *g, int64_t batch, Plan *out);
void plan_free(Plan *p);

#endif
