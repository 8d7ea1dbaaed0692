/*
 * cg_gemm.c — the blocked matrix multiply that generated matmul kernels call.
 *
 * cg_elem.c prints a MATMUL kernel as one call to a static routine this file writes into the
 * program once per element type: `kiln_sgemm` (float) or `kiln_dgemm` (double), computing
 *     C[M,N] = op(A)[M,K] · op(B)[K,N]        (op = transpose or not, chosen at run time)
 * with sizes, leading dimensions and transposes as arguments (a kernel passes its run-time
 * batch). The schedule is BLIS's (see PERF-NOTES.md, "How"): loops over N-blocks, then K-blocks of
 * about 256 (so a packed B micro-panel stays in L1), then M-blocks; each K×N block of B and M×K
 * block of A is packed, zero-padded, into the scratch region plan.c reserves, in the order the
 * micro-kernel reads it; the micro-kernel keeps an MR×NR block of C in vector registers. When M
 * fits one M block (the batch-64 layers), full panels of an untransposed B are read in place:
 * each B element is then used only M times, too few to repay copying it. Products below the
 * schedule's threshold (sched.c) keep cg_elem.c's plain loop (bench/gemm.sh: the GEMM wins from
 * there up, even at N = 10, where the plain dot-product loop is a scalar dependency chain).
 *
 * Everything is portable C: the vectors are GCC vector types (gcc and clang), whose width the
 * generated text picks from the target's feature macros, because -march=native on gcc 12 does
 * not recognise Zen 5 and would not choose 512-bit vectors by itself. The micro-kernel is written
 * out fully unrolled over its register block (never over k) into its own noinline function with
 * restrict pointers: inlined into the tiling loops, gcc spilled accumulators. A compiler without
 * GNU extensions gets a plain loop nest with the same signature (as does -DKILN_PLAIN_C, which
 * the tests use to compile it).
 *
 * The plan reserves the packing buffers' worst case over every vector width
 * (sched_gemm_scratch), so the C compiler's choice of width never outgrows the arena.
 */
#include <inttypes.h>
#include <string.h>

#include "cg/cg.h"

/* One register-block shape: vector bytes, rows, vectors per row. */
typedef struct UkrShape {
  const char *cond;   /* preprocessor condition selecting it, NULL for the last */
  int vbytes, mr, nv;
} UkrShape;

/* 512-bit: 8 rows × 2 vectors (16 accumulators; 8×32 floats); 32 vector registers leave room.
 * 256- and 128-bit targets have 16 registers: 6 × 2 (12 accumulators). */
static const UkrShape ukr_shapes[] = {
    {"defined(__AVX512F__)", 64, 8, 2},
    {"defined(__AVX__)", 32, 6, 2},
    {NULL, 16, 6, 2},
};

const char *cg_gemm_name(DType dt) { return dt == DT_F64 ? "kiln_dgemm" : "kiln_sgemm"; }

/* ---------------------------------------------------------------------------------------------
 * Printing. Templates use $G for the routine's name (kiln_sgemm) and $T for the element type.
 */
static void put(Buf *o, DType dt, const char *tpl) {
  const char *g = cg_gemm_name(dt), *t = dt == DT_F64 ? "double" : "float";
  for (const char *p = tpl; *p; p++) {
    if (*p == '$' && (p[1] == 'G' || p[1] == 'T')) {
      buf_puts(o, p[1] == 'G' ? g : t);
      p++;
    } else {
      buf_printf(o, "%c", *p);
    }
  }
}

/* Both backends compile with contraction off (-ffp-contract=off), so gcc and clang round every
 * other expression alike and give the same bits; micro-kernels alone ask for FMAs, in each
 * compiler's own way: an attribute before the function (noinline, as a micro-kernel must stay)
 * and a pragma opening its body. */
void cg_fma_function(Buf *o) {
  buf_puts(o, "#if defined(__clang__)\n__attribute__((noinline))\n#else\n"
              "__attribute__((noinline, optimize(\"fp-contract=fast\")))\n#endif\n");
}

void cg_fma_pragma(Buf *o) {
  buf_puts(o, "#if defined(__clang__)\n#pragma clang fp contract(fast)\n#endif\n");
}

/* The micro-kernel for one register-block shape: c[MR×NR] (+)= a-panel · b-panel over kc, with
 * a packed as kc rows of MR and b as kc rows of NR (both 64-byte aligned). beta = 0 overwrites c,
 * so C needs no zeroing before the first K block. Unrolled here over the block only. `rows`
 * prints $G_ukr_rows, which reads a in place instead: MR rows lda apart, each along k. */
static void emit_ukr(Buf *o, DType dt, const UkrShape *s, bool rows) {
  int es = (int)dtype_size(dt), lanes = s->vbytes / es;
  const char *t = dt == DT_F64 ? "double" : "float", *g = cg_gemm_name(dt);
  cg_fma_function(o);
  if (rows)
    buf_printf(o, "static void %s_ukr_rows(int64_t kc, const %s *restrict a, int64_t lda, "
                  "const %s *restrict b, int64_t ldb, %s *restrict c, int64_t ldc, int beta) {\n",
               g, t, t, t);
  else
    buf_printf(o, "static void %s_ukr(int64_t kc, const %s *restrict a, "
                  "const %s *restrict b, int64_t ldb, %s *restrict c, int64_t ldc, int beta) {\n",
               g, t, t, t);
  cg_fma_pragma(o);
  for (int i = 0; i < s->mr; i++) {
    buf_puts(o, "  ");
    for (int v = 0; v < s->nv; v++)
      buf_printf(o, "%s_v c%d_%d = {0};%s", g, i, v, v + 1 < s->nv ? " " : "\n");
  }
  if (rows)
    buf_puts(o, "  for (int64_t p = 0; p < kc; p++, a++, b += ldb) {\n");
  else
    buf_printf(o, "  for (int64_t p = 0; p < kc; p++, a += %d, b += ldb) {\n", s->mr);
  for (int v = 0; v < s->nv; v++) {
    buf_printf(o, "    %s_v b%d;\n", g, v);
    buf_printf(o, "    memcpy(&b%d, b + %d, sizeof b%d);\n", v, v * lanes, v);
  }
  for (int i = 0; i < s->mr; i++) {
    if (rows)
      buf_printf(o, "    { const %s a%d = a[%d * lda];", t, i, i);
    else
      buf_printf(o, "    { const %s a%d = a[%d];", t, i, i);
    for (int v = 0; v < s->nv; v++)
      buf_printf(o, " c%d_%d += a%d * b%d;", i, v, i, v);
    buf_puts(o, " }\n");
  }
  buf_puts(o, "  }\n");
  for (int i = 0; i < s->mr; i++)
    for (int v = 0; v < s->nv; v++) {
      buf_printf(o, "  { %s *q = c + %d * ldc + %d; %s_v t;", t, i, v * lanes, g);
      buf_printf(o, " if (beta) { memcpy(&t, q, sizeof t); c%d_%d += t; }", i, v);
      buf_printf(o, " memcpy(q, &c%d_%d, sizeof t); }\n", i, v);
    }
  buf_puts(o, "}\n");
}

/* Packing and the blocked driver, written once in terms of $G_mr / $G_nr / $G_ukr. */
static const char gemm_driver[] =
    "/* Packs rows [0, mc) x depth [0, kc) of op(A) (A points at its block's first element) into\n"
    " * micro-panels of $G_mr rows: ap[ir*kc + p*$G_mr + i] = op(A)[ir+i][p], zero past mc. */\n"
    "static void $G_pack_a(int64_t mc, int64_t kc, const $T *restrict A, int64_t lda, int ta,\n"
    "                      $T *restrict ap) {\n"
    "  for (int64_t ir = 0; ir < mc; ir += $G_mr) {\n"
    "    $T *restrict d = ap + ir * kc;\n"
    "    const int64_t mr = mc - ir < $G_mr ? mc - ir : $G_mr;\n"
    "    if (ta) {\n"
    "      for (int64_t p = 0; p < kc; p++) {\n"
    "        const $T *s = A + p * lda + ir;\n"
    "        for (int64_t i = 0; i < mr; i++) d[p * $G_mr + i] = s[i];\n"
    "        for (int64_t i = mr; i < $G_mr; i++) d[p * $G_mr + i] = 0;\n"
    "      }\n"
    "    } else {\n"
    "      for (int64_t i = 0; i < mr; i++) {\n"
    "        const $T *s = A + (ir + i) * lda;\n"
    "        for (int64_t p = 0; p < kc; p++) d[p * $G_mr + i] = s[p];\n"
    "      }\n"
    "      for (int64_t i = mr; i < $G_mr; i++)\n"
    "        for (int64_t p = 0; p < kc; p++) d[p * $G_mr + i] = 0;\n"
    "    }\n"
    "  }\n"
    "}\n"
    "\n"
    "/* Packs depth [0, kc) x columns [0, nc) of op(B) into micro-panels of $G_nr columns:\n"
    " * bp[jr*kc + p*$G_nr + j] = op(B)[p][jr+j], zero past nc. */\n"
    "static void $G_pack_b(int64_t nc, int64_t kc, const $T *restrict B, int64_t ldb, int tb,\n"
    "                      int direct, $T *restrict bp) {\n"
    "  for (int64_t jr = 0; jr < nc; jr += $G_nr) {\n"
    "    $T *restrict d = bp + jr * kc;\n"
    "    const int64_t nr = nc - jr < $G_nr ? nc - jr : $G_nr;\n"
    "    if (!tb && nr == $G_nr && direct) {\n"
    "      /* Read in place by the micro-kernel (see $G). */\n"
    "    } else if (!tb) {\n"
    "      for (int64_t p = 0; p < kc; p++) {\n"
    "        for (int64_t j = 0; j < nr; j++) d[p * $G_nr + j] = B[p * ldb + jr + j];\n"
    "        for (int64_t j = nr; j < $G_nr; j++) d[p * $G_nr + j] = 0;\n"
    "      }\n"
    "    } else {\n"
    "      /* Columns of op(B) are rows of B: read them contiguously, write the panel (in L1)\n"
    "       * with stride $G_nr, eight at a time. */\n"
    "      int64_t j = 0;\n"
    "      for (; j + 8 <= nr; j += 8) {\n"
    "        const $T *s0 = B + (jr + j) * ldb, *s1 = s0 + ldb, *s2 = s1 + ldb, *s3 = s2 + ldb;\n"
    "        const $T *s4 = s3 + ldb, *s5 = s4 + ldb, *s6 = s5 + ldb, *s7 = s6 + ldb;\n"
    "        for (int64_t p = 0; p < kc; p++) {\n"
    "          $T *q = d + p * $G_nr + j;\n"
    "          q[0] = s0[p]; q[1] = s1[p]; q[2] = s2[p]; q[3] = s3[p];\n"
    "          q[4] = s4[p]; q[5] = s5[p]; q[6] = s6[p]; q[7] = s7[p];\n"
    "        }\n"
    "      }\n"
    "      for (; j < nr; j++) {\n"
    "        const $T *s = B + (jr + j) * ldb;\n"
    "        for (int64_t p = 0; p < kc; p++) d[p * $G_nr + j] = s[p];\n"
    "      }\n"
    "      for (j = nr; j < $G_nr; j++)\n"
    "        for (int64_t p = 0; p < kc; p++) d[p * $G_nr + j] = 0;\n"
    "    }\n"
    "  }\n"
    "}\n"
    "\n"
    "/* C[M,N] (+)= op(A)[M,K] B[N,K]^T at small M (the batch): each element of B is used\n"
    " * only M times, too few to repay packing B, which would mean transposing it (fc1's forward\n"
    " * x W^T). So the product is computed transposed, C^T = B op(A)^T: B's rows are the\n"
    " * micro-kernel's broadcast operand, read where they are, and the small op(A)^T is packed\n"
    " * into its micro-panels once per K block. The K blocks are deeper than $G_acc's: B's rows\n"
    " * stream from memory in long runs, and C's tile is stored once per block (transposed). */\n"
    "static void $G_acc_bt(int64_t M, int64_t N, int64_t K, const $T *A, int64_t lda, int ta,\n"
    "                      const $T *B, int64_t ldb, $T *C, int64_t ldc, int acc,\n"
    "                      unsigned char *ws) {\n"
    "  const int64_t nkb = (K + $G_kcb_bt - 1) / $G_kcb_bt, kcmax = (K + nkb - 1) / nkb;\n"
    "  ws += (64 - (uintptr_t)ws % 64) % 64;\n"
    "  /* The last rows of B, fewer than $G_mr, are packed (zero-padded) into ap. */\n"
    "  $T *ap = ($T *)(void *)ws;\n"
    "  $T *bp = ($T *)(void *)(ws + ($G_mr * kcmax * (int64_t)sizeof($T) + 63) / 64 * 64);\n"
    "  for (int64_t pc = 0; pc < K; pc += kcmax) {\n"
    "    const int64_t kc = K - pc < kcmax ? K - pc : kcmax;\n"
    "    const int first = pc == 0 && !acc;\n"
    "    $G_pack_b(M, kc, ta ? A + pc * lda : A + pc, lda, !ta, 0, bp);\n"
    "    for (int64_t ir = 0; ir < N; ir += $G_mr) {\n"
    "      const int64_t mr = N - ir < $G_mr ? N - ir : $G_mr;\n"
    "      if (mr < $G_mr)\n"
    "        $G_pack_a(mr, kc, B + ir * ldb + pc, ldb, 0, ap);\n"
    "      for (int64_t jr = 0; jr < M; jr += $G_nr) {\n"
    "        const int64_t nr = M - jr < $G_nr ? M - jr : $G_nr;\n"
    "        $T t[$G_mr * $G_nr] __attribute__((aligned(64)));\n"
    "        if (mr == $G_mr)\n"
    "          $G_ukr_rows(kc, B + ir * ldb + pc, ldb, bp + jr * kc, $G_nr, t, $G_nr, 0);\n"
    "        else\n"
    "          $G_ukr(kc, ap, bp + jr * kc, $G_nr, t, $G_nr, 0);\n"
    "        for (int64_t j = 0; j < nr; j++) {\n"
    "          $T *c = C + (jr + j) * ldc + ir;\n"
    "          for (int64_t i = 0; i < mr; i++)\n"
    "            c[i] = (first ? 0 : c[i]) + t[i * $G_nr + j];\n"
    "        }\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "}\n"
    "\n"
    "/* C[M,N] (+)= op(A)[M,K] op(B)[K,N]; op(A)[i][p] = ta ? A[p*lda + i] : A[i*lda + p],\n"
    " * likewise B; acc: add to C instead of overwriting it (the convolutions' weight gradient\n"
    " * sums one product per image).\n"
    " * ws: scratch of at least sched_gemm_scratch(M, N, K) bytes. */\n"
    "static void $G_acc(int64_t M, int64_t N, int64_t K, const $T *A, int64_t lda, int ta,\n"
    "                   const $T *B, int64_t ldb, int tb, $T *C, int64_t ldc, int acc,\n"
    "                   unsigned char *ws) {\n"
    "  if (M <= 0 || N <= 0)\n"
    "    return;\n"
    "  if (K <= 0) {\n"
    "    for (int64_t i = 0; i < M && !acc; i++)\n"
    "      for (int64_t j = 0; j < N; j++) C[i * ldc + j] = 0;\n"
    "    return;\n"
    "  }\n"
    "  if (tb && M <= $G_bt_m) {\n"
    "    $G_acc_bt(M, N, K, A, lda, ta, B, ldb, C, ldc, acc, ws);\n"
    "    return;\n"
    "  }\n"
    "  const int64_t nkb = (K + $G_kcb - 1) / $G_kcb, kcmax = (K + nkb - 1) / nkb;\n"
    "  const int64_t mcmax = M < $G_mcb ? M : $G_mcb;\n"
    "  const int64_t abytes = ((mcmax + $G_mr - 1) / $G_mr * $G_mr * kcmax * (int64_t)sizeof($T)\n"
    "                          + 63) / 64 * 64;\n"
    "  ws += (64 - (uintptr_t)ws % 64) % 64;\n"
    "  $T *ap = ($T *)(void *)ws, *bp = ($T *)(void *)(ws + abytes);\n"
    "  for (int64_t jc = 0; jc < N; jc += $G_ncb) {\n"
    "    const int64_t nc = N - jc < $G_ncb ? N - jc : $G_ncb;\n"
    "    for (int64_t pc = 0; pc < K; pc += kcmax) {\n"
    "      const int64_t kc = K - pc < kcmax ? K - pc : kcmax;\n"
    "      $G_pack_b(nc, kc, tb ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, tb,\n"
    "                M <= $G_mcb, bp);\n"
    "      for (int64_t ic = 0; ic < M; ic += $G_mcb) {\n"
    "        const int64_t mc = M - ic < $G_mcb ? M - ic : $G_mcb;\n"
    "        $G_pack_a(mc, kc, ta ? A + pc * lda + ic : A + ic * lda + pc, lda, ta, ap);\n"
    "        for (int64_t jr = 0; jr < nc; jr += $G_nr) {\n"
    "          const int64_t nr = nc - jr < $G_nr ? nc - jr : $G_nr;\n"
    "          /* Full panels of an untransposed B are read where they are, rows ldb apart: at\n"
    "           * small M a packed B is used too few times to repay the copy. */\n"
    "          const int direct = !tb && nr == $G_nr && M <= $G_mcb;\n"
    "          const $T *bq = direct ? B + pc * ldb + jc + jr : bp + jr * kc;\n"
    "          const int64_t bs = direct ? ldb : $G_nr;\n"
    "          for (int64_t ir = 0; ir < mc; ir += $G_mr) {\n"
    "            const int64_t mr = mc - ir < $G_mr ? mc - ir : $G_mr;\n"
    "            $T *c = C + (ic + ir) * ldc + jc + jr;\n"
    "            if (mr == $G_mr && nr == $G_nr) {\n"
    "              $G_ukr(kc, ap + ir * kc, bq, bs, c, ldc, pc > 0 || acc);\n"
    "            } else {\n"
    "              /* Edge tile: the full block into a buffer, the valid part into C. */\n"
    "              $T t[$G_mr * $G_nr] __attribute__((aligned(64)));\n"
    "              $G_ukr(kc, ap + ir * kc, bq, bs, t, $G_nr, 0);\n"
    "              for (int64_t i = 0; i < mr; i++)\n"
    "                for (int64_t j = 0; j < nr; j++)\n"
    "                  c[i * ldc + j] = (pc > 0 || acc ? c[i * ldc + j] : 0) + t[i * $G_nr + j];\n"
    "            }\n"
    "          }\n"
    "        }\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "}\n"
    "\n"
    "/* C[M,N] = op(A)[M,K] op(B)[K,N]. */\n"
    "static inline void $G(int64_t M, int64_t N, int64_t K, const $T *A, int64_t lda, int ta,\n"
    "                      const $T *B, int64_t ldb, int tb, $T *C, int64_t ldc,\n"
    "                      unsigned char *ws) {\n"
    "  $G_acc(M, N, K, A, lda, ta, B, ldb, tb, C, ldc, 0, ws);\n"
    "}\n";

/* Without GNU vector extensions: the plain loop nest, same signature. */
static const char gemm_plain[] =
    "static void $G_acc(int64_t M, int64_t N, int64_t K, const $T *A, int64_t lda, int ta,\n"
    "                   const $T *B, int64_t ldb, int tb, $T *C, int64_t ldc, int acc,\n"
    "                   unsigned char *ws) {\n"
    "  (void)ws;\n"
    "  for (int64_t i = 0; i < M; i++) {\n"
    "    for (int64_t j = 0; j < N && !acc; j++) C[i * ldc + j] = 0;\n"
    "    for (int64_t p = 0; p < K; p++) {\n"
    "      const $T s = ta ? A[p * lda + i] : A[i * lda + p];\n"
    "      for (int64_t j = 0; j < N; j++)\n"
    "        C[i * ldc + j] += s * (tb ? B[j * ldb + p] : B[p * ldb + j]);\n"
    "    }\n"
    "  }\n"
    "}\n"
    "\n"
    "static inline void $G(int64_t M, int64_t N, int64_t K, const $T *A, int64_t lda, int ta,\n"
    "                      const $T *B, int64_t ldb, int tb, $T *C, int64_t ldc,\n"
    "                      unsigned char *ws) {\n"
    "  $G_acc(M, N, K, A, lda, ta, B, ldb, tb, C, ldc, 0, ws);\n"
    "}\n";

void cg_gemm_emit(DType dt, const GemmTiles *t, Buf *out) {
  const char *g = cg_gemm_name(dt);
  KILN_ASSERT(dt == DT_F32 || dt == DT_F64);
  buf_printf(out, "/* %s: the blocked matrix multiply the matmul kernels call (kiln cg_gemm.c). */\n",
             g);
  buf_puts(out, "#if defined(__GNUC__) && !defined(KILN_PLAIN_C)\n");
  buf_printf(out, "enum { %s_kcb = %d, %s_ncb = %d, %s_bt_m = %d, %s_kcb_bt = %d };\n", g,
             (int)t->kc, g, (int)t->nc, g, SCHED_GEMM_BT_M, g,
             (int)(SCHED_GEMM_BT_DEPTH * t->kc));
  size_t n = sizeof ukr_shapes / sizeof *ukr_shapes;
  for (size_t i = 0; i < n; i++) {
    const UkrShape *s = &ukr_shapes[i];
    KILN_ASSERT(s->mr <= SCHED_GEMM_MR_MAX &&
                s->nv * s->vbytes / (int)dtype_size(dt) <= SCHED_GEMM_NR_MAX);
    if (s->cond)
      buf_printf(out, "#%s %s\n", i == 0 ? "if" : "elif", s->cond);
    else
      buf_puts(out, "#else\n");
    int lanes = s->vbytes / (int)dtype_size(dt);
    buf_printf(out, "typedef %s %s_v __attribute__((vector_size(%d)));\n",
               dt == DT_F64 ? "double" : "float", g, s->vbytes);
    /* The M block is a multiple of MR, so only the last one has an edge tile. */
    buf_printf(out, "enum { %s_mr = %d, %s_nr = %d, %s_mcb = %d };\n", g, s->mr, g,
               s->nv * lanes, g, (int)(t->mc / s->mr * s->mr));
    emit_ukr(out, dt, s, false);
    emit_ukr(out, dt, s, true);
  }
  buf_puts(out, "#endif\n");
  put(out, dt, gemm_driver);
  buf_puts(out, "#else\n");
  put(out, dt, gemm_plain);
  buf_puts(out, "#endif\n\n");
}
