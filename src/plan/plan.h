/*
 * plan.h — the static memory plan: every tensor an entry reads or writes gets an arena offset,
 * and the kiln_tensor table the generated code and its drivers share.
 */
#ifndef KILN_PLAN_H
#define KILN_PLAN_H

#include "sched/sched.h"

/* ================================ plan.c ================================ */

/* Where a stored node is alive in each entry: positions in the entry's kernel sequence, first
 * -1 when the entry does not hold it (persistent tensors and inputs are not tracked). */
typedef struct PlanLife {
  int first[ENTRY_COUNT], last[ENTRY_COUNT];
} PlanLife;

/* The static memory plan for one compiled program: every tensor an entry reads or writes, with
 * its arena offset. Persistent tensors first, then inputs and outputs, then temporaries, which
 * share space by liveness (entries never run at the same time, so they share it too). */
typedef struct Plan {
  Pool *pool;               /* owns the arrays below (and the schedule plan_build made) */
  const Schedule *sched;    /* the schedule the plan follows (fusion, scratch) */
  int64_t batch;            /* value bound to symbol 0 (B) */
  int64_t symvals[IR_MAX_SYMS];
  int64_t *offset;          /* per node: byte offset in the arena, -1 if not stored */
  int64_t arena_bytes;
  kiln_tensor *tensors;     /* the ABI table: params, state, hypers, inputs, outputs */
  int ntensors;
  int *tensor_node;         /* node id of each table entry */
  int64_t scratch_offset;   /* one scratch region shared by all kernels (they run one at a time): */
  int64_t scratch_bytes;    /* packing buffers, im2col; the schedule's largest need */
  int *root;                /* per node: the node whose storage it uses (itself, a reshape's
                               input, an in-place update's target) */
  PlanLife *life;           /* per node (storage roots of computed nodes) */
} Plan;

/* Schedules g for batch with options o (NULL: sched_default_options) and plans it: binds the
 * batch symbol (others fail: they must be given in the model); fails if a shape is not positive
 * once bound. The graph is not changed: everything lives in out->pool. */
void plan_build(const Graph *g, int64_t batch, const SchedOptions *o, Plan *out);
/* Plans g under a schedule made by sched_build (which must outlive the plan). */
void plan_build_sched(const Graph *g, const Schedule *s, Plan *out);
void plan_free(Plan *p);
/* One line per stored tensor: node and name, offset, bytes, lifetime in each entry. */
void plan_print(const Graph *g, const Plan *p, FILE *out);

#endif
