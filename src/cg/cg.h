/*
 * cg.h — the C code generator: a planned graph to one C11 translation unit (cg_c.c), with the
 * blocked GEMM routine its matrix products and convolutions call (cg_gemm.c).
 */
#ifndef KILN_CG_H
#define KILN_CG_H

#include "plan/plan.h"

/* ================================ cg_c.c ================================ */

/* Writes the whole program as one C11 translation unit: the ABI header, literal data, one static
 * kernel per node, the train / eval / grad entry points and `kiln_program_desc`. */
/* Follows plan->sched for every choice of how a node is computed; allocates from its own pool
 * (freed on return), so the graph does not change and emits may run concurrently. */
void cg_emit_c(const Graph *g, const Plan *plan, Buf *out);

/* Whether cg_c.c has an emitter for op; cg_emit_c fails at the node's line for one without. */
bool cg_has_emitter(Op op);


/* ================================ cg_gemm.c ================================ */

/* The routine's name for dt: "kiln_sgemm" (f32) or "kiln_dgemm" (f64). */
const char *cg_gemm_name(DType dt);
/* Prints the static routine for dt (f32 or f64) with cache tiles t into out, once per program
 * (its scratch need: sched_gemm_scratch):
 *   void kiln_sgemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int ta,
 *                   const float *B, int64_t ldb, int tb, float *C, int64_t ldc,
 *                   unsigned char *ws);
 * C = op(A) op(B) with C's rows ldc apart, op(A)[i][p] = ta ? A[p*lda + i] : A[i*lda + p]. */
void cg_gemm_emit(DType dt, const GemmTiles *t, Buf *out);

#endif
