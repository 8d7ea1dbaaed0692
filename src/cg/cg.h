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
void cg_emit_c(Graph *g, const Plan *plan, Buf *out);
/* Bytes of scratch memory n's kernel needs (packing buffers, im2col), 0 for most ops. plan.c
 * reserves the maximum at Plan.scratch_offset. */
int64_t cg_scratch_bytes(const Graph *g, const Node *n, const int64_t *symvals);
/* The code generator's storage decisions, which plan.c follows (a schedule choice: every node
 * keeps its meaning). fused[i]: node i is an elementwise op computed in registers inside its one
 * consumer's loop, never stored. into[i] >= 0: node i, an update's value, is written straight
 * into that update's target, whose storage it takes (no copy at the end of the entry); -1
 * otherwise. Both arrays hold g->nnodes entries. $KILN_FUSE=0 turns both off. */
void cg_fusion(const Graph *g, unsigned char *fused, int *into);

/* Whether cg_c.c has an emitter for op; cg_emit_c fails at the node's line for one without. */
bool cg_has_emitter(Op op);


/* ================================ cg_gemm.c ================================ */

/* Scratch bytes kiln_sgemm / kiln_dgemm need for C[M,N] = op(A)[M,K] op(B)[K,N] (packed panels,
 * 64-byte aligned, for any vector width the C compiler picks); 0 when the plain loop nest is the
 * better schedule for that shape (tiny products) or dt is not floating point. */
int64_t cg_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, DType dt);
/* The routine's name for dt: "kiln_sgemm" (f32) or "kiln_dgemm" (f64). */
const char *cg_gemm_name(DType dt);
/* Prints the static routine for dt (f32 or f64) into out, once per program:
 *   void kiln_sgemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int ta,
 *                   const float *B, int64_t ldb, int tb, float *C, int64_t ldc,
 *                   unsigned char *ws);
 * C = op(A) op(B) with C's rows ldc apart, op(A)[i][p] = ta ? A[p*lda + i] : A[i*lda + p]. */
void cg_gemm_emit(DType dt, Buf *out);

#endif
