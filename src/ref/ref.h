/*
 * ref.h — the reference runtime: kiln's graph IR evaluated op by op (interp.c).
 *
 * The interpreter reads the typed Graph itself instead of a generated program, so that it is the
 * living definition of every op and the oracle that `kiln check` and the tests compare compiled
 * code against. It is part of the compiler library, never of a standalone trainer; it shares
 * runtime/'s RtBackend interface so one training driver serves both.
 *
 * Values are held as double whatever the dtype (i32 labels too). Two precisions:
 *   - f32 = false: every op is computed and stored in double, also for f32 tensors — the exact
 *     meaning of the graph, used for finite-difference gradient checks;
 *   - f32 = true: the result of every f32 node (and every value written into an f32 leaf) is
 *     rounded to float, emulating float32 arithmetic at op boundaries the way a compiled program
 *     stores its f32 buffers. f64 and i32 nodes are unaffected.
 * The driver (or rt_init through the backend) writes INPUT / PARAM / STATE leaves; they keep
 * their values between runs. CONST leaves are filled from the graph.
 */
#ifndef KILN_REF_H
#define KILN_REF_H

#include <stdbool.h>
#include <stdint.h>

#include "plan/plan.h"
#include "runtime.h"

typedef struct Interp Interp;

/* Storage for every node at batch max_batch (symbol 0 = the batch; a graph with any other symbol
 * is not supported). Returns NULL when a symbol other than the batch is present or memory runs
 * out. The graph must outlive the interpreter and must not grow while it is in use. */
Interp *interp_new(Graph *g, int64_t max_batch, bool f32);
void interp_free(Interp *it);
/* From now on (on), a run fails at the first op whose result holds a NaN or an infinity while
 * its inputs hold none, naming the op and its model line: where a diverging run went wrong.
 * -1 when out of memory. */
int interp_stop_at_faults(Interp *it, bool on);

/* Evaluates the nodes entry e needs (ir_reachable) in id order, then applies its updates: every
 * update value is captured first and only then assigned to its target, so updates never see each
 * other's results. Returns 0, or -1 with a one-line message in err (RT_ERR_LEN bytes), e.g. a
 * label outside [0, C) or batch > max_batch; leaves are not modified on failure. */
int interp_run(Interp *it, EntryKind e, int64_t batch, char *err);

/* Evaluates roots[0..nroots) and everything they depend on (no entry needed: used by tests and
 * by passes that want a node's value). Same errors as interp_run. */
int interp_eval(Interp *it, const int *roots, int nroots, int64_t batch, char *err);

/* The values of a node, row-major, numel at the last batch (max_batch before any run). Leaves
 * are written through this pointer too. */
double *interp_data(Interp *it, int node);
/* Concrete dims (rank = the node's shape rank) and element count at the last batch. */
void interp_shape(Interp *it, int node, int64_t *dims);
int64_t interp_numel(Interp *it, int node);

/* Whether ref_kernels[] has an entry for op (the completeness test uses it). */
bool interp_has_kernel(Op op);

/* An RtBackend over the interpreter, using the kiln_tensor table of a Plan (plan_build) so names
 * and roles are identical to the compiled program's; offsets and arena_bytes are ignored, and
 * *prog_out's entries table names the entries in EntryKind order without functions (run goes
 * through be_out->run, with the entry's index). plan, it and
 * prog_out must outlive be_out. Writes into f32 tensors are rounded in f32 mode. */
void interp_backend(Interp *it, const Plan *plan, kiln_program *prog_out, RtBackend *be_out);

#endif
