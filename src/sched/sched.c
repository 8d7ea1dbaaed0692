/*
 * sched.c — the schedule: per node, how it is computed, decided once from the graph, the batch,
 * a target description and explicit options. Plan (storage) and code generator (loops) only read
 * it; the reference interpreter ignores it, so `kiln check` holds every schedule against the
 * meaning.
 *
 * The decisions:
 * - Elementwise fusion. Loops grow in node order: an elementwise input of an elementwise node joins
 *   the consumer's loop when it has the consumer's shape and type, runs in the same entries, and
 *   every kernel outside the loop that reads one of the loop's nodes runs after it (kernels run in
 *   node order, and the loop runs where its last node, the root, would). A joined node read only
 *   inside the loop stays in registers; one read outside (or an update's value, or an output) is
 *   also stored by the loop, which so has several outputs: Adam's new moments and parameter are
 *   one loop writing all three, batch norm's normalised input, its scaled value and the ReLU of
 *   it another. A node with one consumer in each entry that runs it (the train and apply entries
 *   share the optimizer's gradient-free terms, such as β·m) is instead recomputed inside each
 *   consumer's loop, as a tree. Operands left in memory are broadcast to the root's shape (an
 *   expand is such a read), so a batch norm's per-channel scale fuses like a scalar.
 * - Sums fed by loops. A sum, mean or sum_to of f32 whose input is such a loop and whose runs go
 *   through 16 partial sums (sched_reduce_runs) computes the loop inside its run loop: (x - m)^2
 *   for batch norm's variance, ReLU's gradient for the bias gradient, are summed from registers,
 *   never written and read back. Operands must be constant along a run or contiguous with it. The
 *   values and the order of the additions are the unfused program's, so the sums are too, bit
 *   for bit.
 * - Updates without copies. An update target <- value normally copies the value at the end of
 *   the entry. When the value is computed by a flat loop and, in every entry computing it, no
 *   kernel after that loop reads the target, the plan places the value in the target's storage
 *   and the copy disappears (the loop computes every value of an element before storing any, so
 *   its own reads see the old one). `fuse = false` turns all of this off.
 * - Convolution algorithm: direct loop nests, or per image im2col + the blocked GEMM when the
 *   GEMM's dimensions are large enough (>= 8 output channels per group, >= 16 output positions,
 *   and for the weight gradient K >= 16); the MNIST CNN's one-channel 3×3 first layer (K = 9)
 *   keeps a direct weight gradient, which is 3x faster there. `kiln tune`'s
 *   measurements (SchedOptions.tuning) override this per node, and the GEMM tiles.
 * - Threads: a convolution runs as tasks fixed by the shapes (one image each; the GEMM weight
 *   gradient's in waves of `threads` images), on up to `threads` workers chosen when the program
 *   runs, each with its own scratch slot; the GEMM weight gradient adds its images' gradients in
 *   image order, so the result is the same for every thread count, and the direct one stays
 *   serial. A large GEMM matmul runs as tasks of row or column blocks (matmul_tasks), which
 *   leave every element's sum as it was. Pools run an image per task and large elementwise loops
 *   blocks of their outer loop (cg_nest_open); sums stay serial, keeping their order.
 * - GEMM for matmuls above a size where packing pays, and its cache tiles, derived from the
 *   target's caches and vector width (sched_gemm_tiles).
 * - Pools whose windows tile the input are unrolled; tiling max pools with an odd number of
 *   windows per row, the convolutions and fused trees ask gcc for its full vectoriser cost model.
 * - Scratch bytes per kernel (packing buffers, im2col, f32 sums accumulated in double); the plan
 *   reserves the maximum once, since kernels run one at a time.
 */
#include <inttypes.h>
#include <string.h>

#include "sched/sched.h"

void sched_default_options(SchedOptions *o) {
  memset(o, 0, sizeof *o);
  o->target = (Target){.vector_bytes = 32, .l1_bytes = 32 << 10, .l2_bytes = 256 << 10,
                       .l3_bytes = 8 << 20, .cores = 1};
  o->threads = 1;
  o->fuse = true;
  o->conv = CONV_AUTO;
}

/* Tiles are printed into the generated C as int: keep them small and positive. */
static int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* ---------------------------------------------------------------------------------------------
 * GEMM tiles and scratch.
 */

/* BLIS's analytical model (Low et al., "Analytical modeling is enough for high-performance
 * BLIS", 2016), for the register block cg_gemm.c's micro-kernel uses at the target's vector
 * width (MR rows × NR floats: 8 × 32 with 64-byte vectors, else 6 × two vectors):
 * - kc: the micro-kernel streams a kc × NR micro-panel of B and an MR × kc sliver of A; both stay
 *   in three quarters of L1 (the rest holds C's block and lines in flight); a multiple of 32;
 * - mc: the packed mc × kc block of A stays in half of L2 (B's micro-panels stream through the
 *   other half); a multiple of 16, at most 512: on the 2-core Zen 5 test machine, which reports a
 *   2 MiB L2 (likely twice a core's own), mc 1168 ran a 1024² product at 92 GFLOP/s against 135-148
 *   for mc 128 to 512 (bench/gemm.sh);
 * - nc: the packed kc × nc block of B stays in a quarter of L3, shared by the cores (each thread
 *   packs its own); a multiple of 64, at most 8192 (the scratch grows with it).
 * Sizes are computed for f32, which every kiln model trains in; f64 products use the same tiles.
 * Cache sizes of 0 (unknown) count as the default target's. */
void sched_gemm_tiles(const SchedOptions *o, GemmTiles *t) {
  SchedOptions d;
  sched_default_options(&d);
  const Target *tg = &o->target;
  int64_t vb = tg->vector_bytes > 0 ? tg->vector_bytes : d.target.vector_bytes;
  int64_t l1 = tg->l1_bytes > 0 ? tg->l1_bytes : d.target.l1_bytes;
  int64_t l2 = tg->l2_bytes > 0 ? tg->l2_bytes : d.target.l2_bytes;
  int64_t l3 = tg->l3_bytes > 0 ? tg->l3_bytes : d.target.l3_bytes;
  int64_t cores = tg->cores > 0 ? tg->cores : 1, es = 4;
  int64_t mr = vb >= 64 ? 8 : 6, nr = vb >= 64 ? 32 : 2 * (vb >= 32 ? vb : 16) / es;
  int64_t kc = clamp(l1 * 3 / 4 / ((mr + nr) * es) / 32 * 32, 32, 1024);
  int64_t mc = clamp(l2 / 2 / (kc * es) / 16 * 16, 16, 512);
  int64_t nc = clamp(l3 / 4 / cores / (kc * es) / 64 * 64, 64, 8192);
  *t = (GemmTiles){.kc = o->gemm.kc > 0 ? o->gemm.kc : kc, .mc = o->gemm.mc > 0 ? o->gemm.mc : mc,
                   .nc = o->gemm.nc > 0 ? o->gemm.nc : nc};
  t->kc = clamp(t->kc, 1, 4096);
  t->mc = clamp(t->mc, 1, 4096);
  t->nc = clamp(t->nc, 1, 1 << 20);
}

/* Products below this many multiply-adds keep the plain loop nest: packing and the call do not
 * pay (bench/gemm.sh: the GEMM wins from there up, even at N = 10). */
enum { GEMM_MIN_MACS = 32768 };

static int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

int64_t sched_gemm_kc(int64_t kc_tile, int64_t K) {
  int64_t nb = (K + kc_tile - 1) / kc_tile;
  return (K + nb - 1) / nb;
}

int64_t sched_gemm_scratch(const GemmTiles *t, int64_t M, int64_t N, int64_t K, DType dt) {
  if ((dt != DT_F32 && dt != DT_F64) || M <= 0 || N <= 0 || K <= 0)
    return 0;
  /* Saturating: huge shapes are the plan's business, not a reason to overflow here. */
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX ||
      (double)M * (double)N * (double)K < GEMM_MIN_MACS)
    return 0;
  int64_t es = (int64_t)dtype_size(dt), kc = sched_gemm_kc(t->kc, K);
  int64_t mc = M < t->mc ? M : t->mc, nc = N < t->nc ? N : t->nc;
  /* ceil(x / MR) * MR <= x + MR - 1 for any MR <= the maximum; same for NR. */
  int64_t a = round_up((mc + SCHED_GEMM_MR_MAX) * kc * es, 64);
  int64_t b = round_up((nc + SCHED_GEMM_NR_MAX) * kc * es, 64);
  int64_t bytes = a + b;
  /* If B is transposed and M small (the caller knows; reserve for both): an MR-row edge block of
   * B and op(A)^T, packed along deeper K blocks. */
  int64_t kd = sched_gemm_kc(SCHED_GEMM_BT_DEPTH * t->kc, K);
  int64_t mt = M < SCHED_GEMM_BT_M ? M : SCHED_GEMM_BT_M;
  int64_t bt = round_up(SCHED_GEMM_MR_MAX * kd * es, 64) +
               round_up((mt + SCHED_GEMM_NR_MAX) * kd * es, 64);
  bytes = bt > bytes ? bt : bytes;
  return 64 /* aligning the base */ + bytes;
}

/* Scratch the GEMM needs for M×N×K as a convolution's inner product, even below the size where
 * matmul nodes keep their plain loop: the bound grows with M and N, and with K up to one block. */
static int64_t conv_gemm_ws(const GemmTiles *t, int64_t M, int64_t N, int64_t K, DType dt) {
  return sched_gemm_scratch(t, M < 64 ? 64 : M, N < 64 ? 64 : N, K < 8 ? 8 : K, dt);
}

static bool in_arena(const Node *x) { return x->op != OP_CONST; }

/* Whether both operands of n are arena tensors of n's type (what the GEMM routines read). */
static bool gemm_operands(const Graph *g, const Node *n) {
  const Node *a = ir_at(g, n->in[0]), *b = ir_at(g, n->in[1]);
  return (n->dtype == DT_F32 || n->dtype == DT_F64) && in_arena(a) && in_arena(b) &&
         a->dtype == n->dtype && b->dtype == n->dtype;
}

static bool is_conv(Op op) {
  return op == OP_CONV2D || op == OP_CONV2D_BWD_DATA || op == OP_CONV2D_BWD_FILTER;
}

/* ---------------------------------------------------------------------------------------------
 * Per-op decisions.
 */

/* Whether an implicit convolution's vectors are well filled: the forward's run along output
 * channels, the input gradient's along rows of dx. With 8 (the MNIST CNN's conv1 forward) half
 * of a 512-bit vector would idle, and the GEMM takes it. */
static bool implicit_fills_vectors(const Graph *g, const Node *n) {
  Window w = win_of(g, n);
  int64_t es = (int64_t)dtype_size(n->dtype);
  if (n->op == OP_CONV2D)
    return w.O * es >= 64;
  if (n->op == OP_CONV2D_BWD_DATA)
    return w.W * es >= 48;
  return true;
}

static ConvAlgo conv_algo(const Graph *g, const Node *n, ConvAlgo want) {
  if (!gemm_operands(g, n))
    return CONV_DIRECT;
  if (want == CONV_IMPLICIT || want == CONV_AUTO)
    if (sched_implicit_ok(g, n) && (want == CONV_IMPLICIT || implicit_fills_vectors(g, n)))
      return CONV_IMPLICIT;
  if (want != CONV_AUTO && want != CONV_IMPLICIT)
    return want;
  Window w = win_of(g, n);
  int64_t k = w.C / w.G * w.KH * w.KW, og = w.O / w.G;
  /* The weight gradient's product has K columns: at K = 9 (the MNIST CNN's first layer) it is
   * 3x slower through the GEMM. The forward and input-gradient products keep K as their depth,
   * where even 9 is fine (conv1 forward: 0.19 ms through the GEMM, 1.09 ms direct). */
  bool wide = n->op != OP_CONV2D_BWD_FILTER || k >= 16;
  return wide && og >= 8 && w.Ho * w.Wo >= 16 ? CONV_GEMM : CONV_DIRECT;
}

int64_t sched_conv_slot_bytes(const Schedule *s, const Graph *g, const Node *n) {
  Window w = win_of(g, n);
  int64_t es = (int64_t)dtype_size(n->dtype), K = w.C / w.G * w.KH * w.KW, Og = w.O / w.G;
  int64_t HW = w.Ho * w.Wo, col = round_up(w.G * K * HW * es, 64), ws;
  if (n->op == OP_CONV2D)
    ws = conv_gemm_ws(&s->tiles, Og, HW, K, n->dtype);
  else if (n->op == OP_CONV2D_BWD_DATA)
    ws = conv_gemm_ws(&s->tiles, K, HW, Og, n->dtype);
  else
    ws = conv_gemm_ws(&s->tiles, Og, K, HW, n->dtype) + round_up(w.O * K * es, 64);
  return col + round_up(ws, 64);
}

static const char *const conv_names[] = {[CONV_AUTO] = "auto", [CONV_DIRECT] = "direct",
                                         [CONV_GEMM] = "gemm", [CONV_IMPLICIT] = "implicit"};

const char *sched_conv_name(ConvAlgo a) { return conv_names[a]; }

bool sched_conv_parse(const char *name, ConvAlgo *a) {
  for (int i = 0; i < (int)(sizeof conv_names / sizeof *conv_names); i++)
    if (!strcmp(name, conv_names[i])) {
      *a = (ConvAlgo)i;
      return true;
    }
  return false;
}

const VectorWidth sched_vector_widths[3] = {
    {"defined(__AVX512F__)", 64, 24},
    {"defined(__AVX__)", 32, 12},
    {NULL, 16, 12},
};

bool sched_implicit_ok(const Graph *g, const Node *n) {
  if (!is_conv(n->op) || !gemm_operands(g, n))
    return false;
  Window w = win_of(g, n);
  if (n->op == OP_CONV2D_BWD_DATA)
    return w.G == 1 && w.SH == 1 && w.SW == 1;
  return w.G == 1 && w.KW <= 12;
}

/* The frame around one input channel that the taps of positions [0, Ho2) x [0, Wo2) read. */
static void implicit_frame(const Window *w, ImplicitBlock *b) {
  int64_t hspan = (b->Ho2 - 1) * w->SH + (w->KH - 1) * w->DH + 1;
  int64_t wspan = (b->Wo2 - 1) * w->SW + (w->KW - 1) * w->DW + 1;
  b->Hp = w->PT + w->H > hspan ? w->PT + w->H : hspan;
  b->Wp = w->PL + w->W > wspan ? w->PL + w->W : wspan;
}

/* The weight gradient's block: output channels as wide as the vectors allow (at most 4
 * vectors), then kernel rows (a divisor of KH) and input channels until the accumulators are
 * used. The MNIST CNN's conv2 (8 -> 32, 5x5) gets 2 channels x 5 columns x 2 vectors of 16 with
 * AVX-512; its conv1 (1 -> 8, 3x3), 8 output channels x 3 columns along rows. */
static void filter_block(const Window *w, int lanes, int acc, ImplicitBlock *b) {
  if (lanes > 1 && w->SW == 1 && w->O < lanes) {
    /* Fewer output channels than lanes (conv1's 8 of 16): vectors along rows of dy instead,
     * ob output channels x KW kernel columns a call. */
    int64_t ob = acc / w->KW;
    b->rows = true;
    b->cb = b->pb = 1;
    b->ow = ob < w->O ? ob : w->O;
    b->Ho2 = w->Ho;
    b->Wo2 = round_up(w->Wo, lanes);
    return;
  }
  int64_t ov = (w->O + lanes - 1) / lanes;
  if (ov > 4)
    ov = 4;
  if (w->KW * ov > acc)
    ov = acc / w->KW > 0 ? acc / w->KW : 1;
  int pb = 1;
  for (int d = 1; d <= w->KH; d++)
    if (w->KH % d == 0 && d * w->KW * ov <= acc)
      pb = d;
  int64_t cb = acc / (pb * w->KW * ov);
  cb = cb < 1 ? 1 : cb > w->C ? w->C : cb;
  b->cb = (int)cb;
  b->pb = pb;
  b->ow = ov * lanes;
  b->Ho2 = w->Ho;
  b->Wo2 = w->Wo;
}

/* How good a register block is: the share of its results that are kept (not padding), times its
 * accumulators up to 12 (enough independent FMAs to hide their latency on two units), times its
 * multiply-adds per load up to 1 (two loads and two FMAs issue per cycle). */
static double block_score(double kept, int64_t fmas, int64_t loads) {
  return kept * (double)(fmas < 12 ? fmas : 12) / 12.0 *
         (fmas >= loads ? 1.0 : (double)fmas / (double)loads);
}

/* The forward's block: pr x pc positions x ov vectors of output channels, the best by
 * block_score (per tap the block loads ov vectors and broadcasts pr*pc inputs). The MNIST CNN's conv2 (8 -> 32 channels, 14 x 14) gets 1 x 7
 * positions x 2 vectors of 16 with AVX-512. */
static void forward_block(const Window *w, int lanes, int acc, ImplicitBlock *b) {
  double best = -1;
  int64_t maxov = (w->O + lanes - 1) / lanes;
  for (int64_t ov = 1; ov <= 4 && ov <= maxov && ov <= acc; ov++)
    for (int pr = 1; pr * ov <= acc && pr <= w->Ho; pr++)
      for (int pc = 1; pr * pc * ov <= acc && pc <= w->Wo; pc++) {
        int64_t ho2 = round_up(w->Ho, pr), wo2 = round_up(w->Wo, pc), opad = round_up(w->O, ov * lanes);
        double kept = (double)(w->Ho * w->Wo * w->O) / (double)(ho2 * wo2 * opad);
        int64_t fmas = pr * pc * ov, loads = ov + pr * pc;
        double score = block_score(kept, fmas, loads);
        if (score > best + 1e-9) {
          best = score;
          b->pr = pr;
          b->pc = pc;
          b->ow = ov * lanes;
          b->Ho2 = ho2;
          b->Wo2 = wo2;
        }
      }
  b->cb = 1;
  b->pb = 1;
}

/* The input gradient's block: cb channels x pr rows of dx x one vector along a row, the best by
 * block_score (per tap the block broadcasts cb weights and loads pr vectors of dy, each usually
 * split across two cache lines). Rows are padded to Ho2 = H2 (a multiple of pr), each to Wo2 = whole vectors; the frame around one
 * channel of dy is shifted so that dx[h][w] reads dy at frame row h + p'*DH, column w + q'*DW
 * for the flipped taps p' = KH-1-p, q' = KW-1-q. The MNIST CNN's conv2 (dx 8 x 14 x 14) gets 8
 * channels x 2 rows x 16 columns with AVX-512. */
static void data_block(const Window *w, int lanes, int acc, ImplicitBlock *b) {
  double best = -1;
  for (int cb = 1; cb <= acc && cb <= w->C; cb++)
    for (int pr = 1; cb * pr <= acc && pr <= w->H; pr++) {
      int64_t cpad = round_up(w->C, cb), h2 = round_up(w->H, pr);
      double kept = (double)(w->C * w->H) / (double)(cpad * h2);
      /* A row's vector starts anywhere in a cache line: count its load twice (a split). */
      int fmas = cb * pr, loads = cb + 2 * pr;
      double score = block_score(kept, fmas, loads);
      if (score > best + 1e-9) {
        best = score;
        b->cb = cb;
        b->pr = pr;
        b->Ho2 = h2;
      }
    }
  b->pb = 1;
  b->pc = 1;
  b->ow = lanes;
  b->Wo2 = round_up(w->W, lanes);
  int64_t top = (w->KH - 1) * w->DH - w->PT, left = (w->KW - 1) * w->DW - w->PL;
  int64_t hspan = b->Ho2 + (w->KH - 1) * w->DH, wspan = b->Wo2 + (w->KW - 1) * w->DW;
  b->Hp = top + w->Ho > hspan ? top + w->Ho : hspan;
  b->Wp = left + w->Wo > wspan ? left + w->Wo : wspan;
}

void sched_implicit_block(const Window *w, Op op, DType dt, const VectorWidth *v,
                          ImplicitBlock *b) {
  memset(b, 0, sizeof *b);
  b->lanes = v->vbytes / (int)dtype_size(dt);
  if (op == OP_CONV2D_BWD_DATA) {
    data_block(w, b->lanes, v->accumulators, b);
    b->cpad = round_up(w->C, b->cb);
    b->opad = w->O;
    return;
  }
  if (op == OP_CONV2D)
    forward_block(w, b->lanes, v->accumulators, b);
  else
    filter_block(w, b->lanes, v->accumulators, b);
  b->cpad = round_up(w->C, b->cb);
  b->opad = round_up(w->O, b->ow);
  implicit_frame(w, b);
}

void sched_implicit_scratch(const Window *w, Op op, DType dt, ImplicitScratch *s) {
  ImplicitBlock *m = &s->max;
  sched_implicit_block(w, op, dt, &(VectorWidth){NULL, (int)dtype_size(dt), 1}, m);
  for (int i = 0; i < 3; i++) {
    ImplicitBlock b;
    sched_implicit_block(w, op, dt, &sched_vector_widths[i], &b);
    m->cpad = b.cpad > m->cpad ? b.cpad : m->cpad;
    m->opad = b.opad > m->opad ? b.opad : m->opad;
    m->Ho2 = b.Ho2 > m->Ho2 ? b.Ho2 : m->Ho2;
    m->Wo2 = b.Wo2 > m->Wo2 ? b.Wo2 : m->Wo2;
    m->Hp = b.Hp > m->Hp ? b.Hp : m->Hp;
    m->Wp = b.Wp > m->Wp ? b.Wp : m->Wp;
  }
  int64_t es = (int64_t)dtype_size(dt), taps = w->C * w->KH * w->KW;
  if (op == OP_CONV2D_BWD_DATA) {
    /* Shared: the flipped weights wf[(o*KH + p')*KW + q'][c] (cpad wide); per image the frame
     * of dy's O channels, then the dx rows computed (cpad x Ho2 rows of Wo2). */
    s->shared_bytes = round_up(w->O * w->KH * w->KW * m->cpad * es, 64);
    s->dt_at = s->part_at = round_up(w->O * m->Hp * m->Wp * es, 64);
    s->slot_bytes = s->part_at + round_up(m->cpad * m->Ho2 * m->Wo2 * es, 64);
    return;
  }
  implicit_frame(w, m);
  s->shared_bytes = round_up(taps * m->opad * es, 64);
  s->dt_at = round_up(m->cpad * m->Hp * m->Wp * es, 64);
  if (op == OP_CONV2D) {
    s->part_at = s->dt_at;
    s->slot_bytes = s->part_at + round_up(m->Ho2 * m->Wo2 * m->opad * es, 64);
  } else {
    /* dt: dy transposed (HW x opad), or along rows its frame (opad x Ho x Wo2). */
    s->part_at = s->dt_at + round_up(w->Ho * m->Wo2 * m->opad * es, 64);
    s->slot_bytes = s->part_at + round_up(m->cpad * w->KH * w->KW * m->opad * es, 64);
  }
}

/* A matmul's M, N and K at the full batch. */
static void matmul_dims(const Schedule *s, const Graph *g, const Node *n, int64_t *M, int64_t *N,
                        int64_t *K) {
  const Node *a = ir_at(g, n->in[0]);
  *M = dim_value(n->shape.d[0], s->symvals);
  *N = dim_value(n->shape.d[1], s->symvals);
  *K = dim_value(a->shape.d[n->attr.trans_a ? 0 : 1], s->symvals);
}

int64_t sched_matmul_slot_bytes(const Schedule *s, const Graph *g, const Node *n) {
  const NodeSched *ns = &s->node[n->id];
  int64_t M, N, K;
  matmul_dims(s, g, n, &M, &N, &K);
  return round_up(sched_gemm_scratch(&s->tiles, ns->split ? M : ns->block,
                                     ns->split ? ns->block : N, K, n->dtype), 64);
}

/* Elementwise loops and pools over at least this many elements run as tasks when there are
 * threads: the MNIST CNN's activations (100,352 elements at batch 64 and more) and fc1's Adam
 * update (940,800) do, its per-channel and fc2 loops do not. */
enum { PARALLEL_ELEMENTS = 65536 };

/* Matmuls of at least this many multiply-adds run as tasks when there are threads: the
 * MNIST CNN's fc1 products (60 M) are; its fc2 (0.4 M) would spend more waking a thread. */
enum { PARALLEL_MATMUL_MACS = 4 << 20 };

/* Splits a large GEMM matmul into tasks of whole rows or columns, the longer side, in blocks
 * aligned to the micro-kernel (8 rows, 32 columns) and about two per thread, so a thread that
 * gets less of a core takes fewer. Every element is still summed over K in the same order, so
 * the split changes no bit. */
static void matmul_tasks(const Schedule *s, const Graph *g, const Node *n, NodeSched *ns) {
  int64_t M, N, K;
  matmul_dims(s, g, n, &M, &N, &K);
  if (s->opt.threads < 2 || (double)M * (double)N * (double)K < PARALLEL_MATMUL_MACS)
    return;
  ns->split = N >= M;
  int64_t d = ns->split ? N : M, align = ns->split ? 32 : 8, tasks = 2 * s->opt.threads;
  ns->block = round_up((d + tasks - 1) / tasks, align);
  if (ns->block >= d)
    return;
  ns->workers = s->opt.threads;
}

/* The scratch bytes of n's kernel under the decisions already made in ns. */
static int64_t node_scratch(const Schedule *s, const Graph *g, const Node *n, const NodeSched *ns) {
  switch (n->op) {
  case OP_SUM:
  case OP_MEAN:
  case OP_SUM_TO: {
    /* f32 sums accumulate in double; as tasks, each run's sum is kept until they are added. */
    if (n->dtype != DT_F32)
      return 0;
    int64_t bytes = shape_numel(&n->shape, s->symvals) * (int64_t)sizeof(double);
    if (ns->workers > 1) {
      const Shape *xs = &ir_at(g, n->in[0])->shape;
      int64_t runs = 1;
      for (int k = 0; k < sched_reduce_k0(g, n); k++)
        runs *= dim_value(xs->d[k], s->symvals);
      bytes += runs * (int64_t)sizeof(double);
    }
    return bytes;
  }
  case OP_MATMUL: {
    if (!ns->gemm)
      return 0;
    if (ns->workers > 1)
      return 64 + ns->workers * sched_matmul_slot_bytes(s, g, n);
    const Node *a = ir_at(g, n->in[0]);
    int64_t K = dim_value(a->shape.d[n->attr.trans_a ? 0 : 1], s->symvals);
    return sched_gemm_scratch(&s->tiles, dim_value(n->shape.d[0], s->symvals),
                              dim_value(n->shape.d[1], s->symvals), K, n->dtype);
  }
  case OP_CONV2D:
  case OP_CONV2D_BWD_DATA:
  case OP_CONV2D_BWD_FILTER:
    if (ns->conv == CONV_GEMM)
      return 64 + ns->workers * sched_conv_slot_bytes(s, g, n);
    if (ns->conv == CONV_IMPLICIT) {
      Window w = win_of(g, n);
      ImplicitScratch is;
      sched_implicit_scratch(&w, n->op, n->dtype, &is);
      return 64 + is.shared_bytes + ns->workers * is.slot_bytes;
    }
    if (n->op == OP_CONV2D_BWD_FILTER) {
      /* One row of partial sums per weight of an output channel. */
      Window w = win_of(g, n);
      return w.C / w.G * w.KH * w.KW * w.Wo * (int64_t)dtype_size(n->dtype);
    }
    return 0;
  default:
    return 0;
  }
}

/* ---------------------------------------------------------------------------------------------
 * Fusion.
 */

/* Ops a fused loop computes in registers: the elementwise ops cg spells as C expressions. */
static const bool fusible[OP_COUNT] = {
    [OP_ADD] = true,        [OP_SUB] = true,         [OP_MUL] = true,
    [OP_DIV] = true,        [OP_POW] = true,         [OP_NEG] = true,
    [OP_EXP] = true,        [OP_LOG] = true,         [OP_SQRT] = true,
    [OP_RELU] = true,       [OP_RELU_GRAD] = true,   [OP_SIGMOID] = true,
    [OP_TANH] = true,       [OP_LEAKY_RELU] = true,  [OP_LEAKY_RELU_GRAD] = true,
    [OP_SIN] = true,        [OP_COS] = true,         [OP_ATAN] = true,
    [OP_ERF] = true,        [OP_SIGN] = true,        [OP_SOFTPLUS] = true,
    [OP_MAXIMUM] = true,
    [OP_EXPAND] = true,     /* a broadcast read, such as batch norm's per-channel gradient terms */
};


bool sched_reads(const Node *n, int k);

/* Whether n can be part of a fused loop nest over its elements: a fusible op whose operands
 * have its type (scalar constants: any type, cast when read); they may be broadcast. */
static bool flat_map(const Graph *g, const Node *n) {
  if (!fusible[n->op])
    return false;
  for (int k = 0; k < n->nin; k++) {
    const Node *x = ir_at(g, n->in[k]);
    if (sched_reads(n, k) && x->dtype != n->dtype && x->op != OP_CONST)
      return false;
  }
  return true;
}

bool sched_reads(const Node *n, int k) {
  if (n->op == OP_SUM_TO || n->op == OP_EXPAND)
    return k == 0;
  return n->op != OP_NUMEL;
}

/* A walk over what one kernel computes in registers, each node once. */
typedef struct KernelWalk {
  const Graph *g;
  const Schedule *s;
  int root;
  void (*fn)(int x, void *arg);
  void *arg;
  bool all;  /* walk_outputs reports every node the kernel computes, not only those it stores */
  int nseen, seen[4 * SCHED_FUSE_MAX_NODES];
} KernelWalk;

static bool walk_seen(KernelWalk *w, int x) {
  for (int i = 0; i < w->nseen; i++)
    if (w->seen[i] == x)
      return true;
  KILN_ASSERT(w->nseen < (int)(sizeof w->seen / sizeof w->seen[0]));
  w->seen[w->nseen++] = x;
  return false;
}

static void walk_operands(KernelWalk *w, int n) {
  const Node *nd = ir_at(w->g, n);
  for (int k = 0; k < nd->nin; k++) {
    int x = nd->in[k];
    if (!sched_reads(nd, k))
      continue;
    if (!sched_in_kernel(w->s, x, w->root))
      w->fn(x, w->arg);
    else if (!walk_seen(w, x))
      walk_operands(w, x);
  }
}

void sched_kernel_operands(const Graph *g, const Schedule *s, int n, void (*fn)(int x, void *arg),
                           void *arg) {
  KernelWalk w = {.g = g, .s = s, .root = n, .fn = fn, .arg = arg};
  walk_operands(&w, n);
}

static void walk_outputs(KernelWalk *w, int n) {
  const Node *nd = ir_at(w->g, n);
  for (int k = 0; k < nd->nin; k++) {
    int x = nd->in[k];
    if (sched_reads(nd, k) && sched_in_kernel(w->s, x, w->root) && !walk_seen(w, x)) {
      walk_outputs(w, x);
      if (w->all || w->s->node[x].stored)
        w->fn(x, w->arg);
    }
  }
}

void sched_kernel_outputs(const Graph *g, const Schedule *s, int root, void (*fn)(int x, void *arg),
                          void *arg) {
  KernelWalk w = {.g = g, .s = s, .root = root, .fn = fn, .arg = arg};
  walk_outputs(&w, root);
}

void sched_kernel_fused(const Graph *g, const Schedule *s, int root, void (*fn)(int x, void *arg),
                        void *arg) {
  KernelWalk w = {.g = g, .s = s, .root = root, .fn = fn, .arg = arg, .all = true};
  walk_outputs(&w, root);
}

typedef struct LastRead {
  int *last;  /* per node: the last kernel (node id) of the entry reading it */
  int kernel;
} LastRead;

static void note_read(int x, void *arg) {
  LastRead *lr = arg;
  lr->last[x] = lr->kernel;
}

/* Whether x may be computed in registers inside each of its consumers' loops: an elementwise
 * node that is no entry's output or update value, read by exactly one consumer in each entry
 * that runs it (or by several, when it is recomputable: decided by the caller) (the train and apply entries share the optimizer's gradient-free terms, such as
 * β·m: each entry's loop computes its own copy), every consumer an elementwise node of x's shape
 * and type. */
static bool fusible_everywhere(const Graph *g, const int *pinned, int x, const int *seen_in,
                               const bool *bad) {
  const Node *xn = ir_at(g, x);
  return seen_in[x] && !bad[x] && !pinned[x] && !op_is_leaf(xn->op) && flat_map(g, xn);
}

/* Full-size tensors the loop computing x in registers reads: its operands of x's shape, looking
 * through the tree nodes it computes too (broadcast operands, per channel, are cheap). */
static int full_reads(const Graph *g, const Schedule *s, int x, int depth) {
  const Node *xn = ir_at(g, x);
  int n = 0;
  for (int k = 0; k < xn->nin; k++) {
    int a = xn->in[k];
    const Node *an = ir_at(g, a);
    if (!sched_reads(xn, k) || !shape_eq(&an->shape, &xn->shape))
      continue;
    n += s->node[a].fused && !s->node[a].member && depth < 4 ? full_reads(g, s, a, depth + 1) : 1;
  }
  return n;
}

/* Whether x, read by several consumers in one entry, is better recomputed in each of their loops
 * than stored: a multiply or add reading one full-size tensor (batch norm's gradient times its
 * scale, and that over the deviation): each consumer then reads that tensor instead of x, and x
 * is never written. */
static bool recomputable(const Graph *g, const Schedule *s, int x) {
  Op op = ir_at(g, x)->op;
  bool cheap = op == OP_ADD || op == OP_SUB || op == OP_MUL || op == OP_DIV || op == OP_NEG;
  return cheap && full_reads(g, s, x, 0) <= 1;
}

static bool is_reduce(Op op) { return op == OP_SUM || op == OP_MEAN || op == OP_SUM_TO; }

int sched_reduce_k0(const Graph *g, const Node *n) {
  const Shape *xs = &ir_at(g, n->in[0])->shape;
  int k0 = xs->rank, off = xs->rank - n->shape.rank;
  while (k0 > 0) {
    int k = k0 - 1;
    bool summed = n->op == OP_SUM_TO ? k - off < 0 || !dim_eq(n->shape.d[k - off], xs->d[k])
                                     : (n->attr.axes & (1u << k)) != 0;
    if (!summed)
      break;
    k0--;
  }
  return k0;
}

bool sched_reduce_runs(const Graph *g, const Schedule *s, const Node *n) {
  const Node *x = ir_at(g, n->in[0]);
  if (!is_reduce(n->op) || n->dtype != DT_F32 || !in_arena(x))
    return false;
  int k0 = sched_reduce_k0(g, n);
  bool batch = false;
  int64_t run = 1;
  for (int k = k0; k < x->shape.rank; k++) {
    batch |= x->shape.d[k].sym == 0;
    run *= dim_value(x->shape.d[k], s->symvals);
  }
  return k0 < x->shape.rank && (batch || run >= 32);
}

/* Whether every operand of a loop over shape d reads, along d's axes from k0 on, either one
 * contiguous run of d's shape or one value (a per-channel scale): what a reduction's run loop
 * indexes. */
typedef struct RunCheck {
  const Graph *g;
  const Shape *d;
  int k0;
  bool ok;
} RunCheck;

static void run_operand(int x, void *arg) {
  RunCheck *rc = arg;
  const Shape *xs = &ir_at(rc->g, x)->shape;
  int off = rc->d->rank - xs->rank;
  bool all = true, none = true;
  for (int k = rc->k0; k < rc->d->rank; k++) {
    int kx = k - off;
    bool same = kx >= 0 && dim_eq(xs->d[kx], rc->d->d[k]);
    bool one = kx < 0 || (xs->d[kx].sym < 0 && xs->d[kx].n == 1);
    all &= same;
    none &= one;
  }
  /* Axes before k0 broadcast as the loop nest prints them; a run must be the operand's tail. */
  rc->ok &= all || none;
}

/* The state of fusion while groups grow: consumers of each node (data reads in some entry, a
 * compressed list), each kernel's members. */
typedef struct Fuse {
  const Graph *g;
  Schedule *s;
  const int *entries;
  int *cstart, *cons;   /* consumers of i: cons[cstart[i] .. cstart[i + 1]) */
  int *next;            /* members of a group as a list from its root: root, next[root], ... */
  int *tail;            /* per root: the last node of its list */
  int *size;            /* per root: nodes its loop computes (members and tree nodes) */
} Fuse;

/* Whether every consumer outside the group of roots a and b (merged, root c) of a member of either
 * runs after c's kernel: a member is stored where c's loop runs, so an earlier reader would find
 * it missing. A tree node reading a member counts as outside (its kernel may be elsewhere). */
static bool readers_after(const Fuse *f, int a, int b, int c) {
  for (int r = 0; r < 2; r++)
    for (int m = r ? b : a; m >= 0; m = f->next[m])
      for (int j = f->cstart[m]; j < f->cstart[m + 1]; j++) {
        int e = f->cons[j], ge = f->s->node[e].group;
        bool inside = !(f->s->node[e].fused && !f->s->node[e].member) && (ge == a || ge == b);
        if (!inside && e < c)
          return false;
      }
  return true;
}

/* Adds group `from` (a root) to group `to` (a root). */
static void fuse_join(Fuse *f, int from, int to) {
  for (int m = from; m >= 0; m = f->next[m]) {
    f->s->node[m].group = to;
    f->s->node[m].fused = f->s->node[m].member = true;
  }
  f->next[f->tail[to]] = from;
  f->tail[to] = f->tail[from];
  f->size[to] += f->size[from];
}

static void note_stored(int x, void *arg) {
  Schedule *s = arg;
  if (s->node[x].member)
    s->node[x].stored = true;
}

/* Fills fused, member, stored, into and group; entries[i] has bit e set when entry e runs i. */
static void fuse(const Graph *g, Schedule *s, const int *entries, Pool *pool) {
  int nn = g->nnodes;
  for (int i = 0; i < nn; i++) {
    s->node[i].into = -1;
    s->node[i].group = i;
  }
  if (!s->opt.fuse || nn == 0)
    return;
  int *seen_in = pool_alloc(pool, (size_t)nn * sizeof(int)); /* entries with a consumer of i */
  bool *bad = pool_alloc(pool, (size_t)nn * sizeof(bool));   /* a consumer that cannot fuse i */
  bool *shared = pool_alloc(pool, (size_t)nn * sizeof(bool)); /* two consumers in one entry */
  bool *decided = pool_alloc(pool, (size_t)nn * sizeof(bool));
  int *pinned = pool_alloc(pool, (size_t)nn * sizeof(int));  /* output or update value somewhere */
  int *outputs = pool_alloc(pool, (size_t)nn * sizeof(int)); /* output of some entry */
  int *last = pool_alloc(pool, (size_t)nn * sizeof(int));
  int *into = pool_alloc(pool, (size_t)nn * sizeof(int));    /* -2: no update has i as value */
  int *into_entries = pool_alloc(pool, (size_t)nn * sizeof(int));
  Fuse f = {.g = g, .s = s, .entries = entries};
  f.cstart = pool_alloc(pool, (size_t)(nn + 1) * sizeof(int));
  f.next = pool_alloc(pool, (size_t)nn * sizeof(int));
  f.tail = pool_alloc(pool, (size_t)nn * sizeof(int));
  f.size = pool_alloc(pool, (size_t)nn * sizeof(int));
  for (int e = 0; e < ENTRY_COUNT; e++) {
    const Entry *en = &g->entries[e];
    for (int o = 0; o < en->noutputs; o++) {
      pinned[en->outputs[o].node]++;
      outputs[en->outputs[o].node]++;
    }
    for (int u = 0; u < en->nupdates; u++)
      pinned[en->updates[u].value]++;
  }
  int ncons = 0;
  for (int c = 0; c < nn; c++) {
    const Node *cn = ir_at(g, c);
    f.next[c] = -1;
    f.tail[c] = c;
    if (!entries[c])
      continue;
    for (int k = 0; k < cn->nin; k++) {
      int x = cn->in[k];
      const Node *xn = ir_at(g, x);
      if (!sched_reads(cn, k))
        continue;
      f.cstart[x + 1]++;
      ncons++;
      if (seen_in[x] & entries[c])
        shared[x] = true;
      if (!flat_map(g, cn) || !shape_eq(&xn->shape, &cn->shape) || xn->dtype != cn->dtype)
        bad[x] = true;
      seen_in[x] |= entries[c];
    }
  }
  for (int i = 0; i < nn; i++)
    f.cstart[i + 1] += f.cstart[i];
  f.cons = pool_alloc(pool, (size_t)(ncons + 1) * sizeof(int));
  int *fill = pool_alloc(pool, (size_t)(nn + 1) * sizeof(int));
  for (int c = 0; c < nn; c++)
    for (int k = 0; k < ir_at(g, c)->nin && entries[c]; k++)
      if (sched_reads(ir_at(g, c), k)) {
        int x = ir_at(g, c)->in[k];
        f.cons[f.cstart[x] + fill[x]++] = c;
      }

  /* Consumers in id order, so an input's own group is complete when it is considered. An input
   * that is a tree (one consumer per entry, no members) is computed inside each consumer's loop,
   * as before; the first consumer to see a shared input decides for all (its size bound is the
   * only choice left). Otherwise the input's group joins the consumer's when both run in the same
   * entries, every reader outside runs after the consumer and the loop stays small: one loop
   * then stores each member something outside reads (several outputs) and keeps the rest in
   * registers. */
  for (int c = 0; c < nn; c++) {
    const Node *cn = ir_at(g, c);
    if (!entries[c] || !flat_map(g, cn))
      continue;
    f.size[c] = 1;
    for (int k = 0; k < cn->nin; k++) {
      int x = cn->in[k];
      const Node *xn = ir_at(g, x);
      if (s->node[x].fused && s->node[x].member && s->node[x].group == c)
        continue; /* read twice, or through another input */
      if (!decided[x] && fusible_everywhere(g, pinned, x, seen_in, bad) && f.next[x] < 0 &&
          (!shared[x] || recomputable(g, s, x))) {
        decided[x] = true;
        s->node[x].fused = f.size[c] + f.size[x] <= SCHED_FUSE_MAX_NODES;
      }
      if (s->node[x].fused && !s->node[x].member) {
        /* A recomputed node too large for this loop is stored once after all (its earlier
         * consumers then read it too). */
        if (shared[x] && f.size[c] + f.size[x] > SCHED_FUSE_MAX_NODES) {
          s->node[x].fused = false;
        } else {
          f.size[c] += f.size[x];
          continue;
        }
      }
      if (s->node[x].fused || op_is_leaf(xn->op) || !flat_map(g, xn) || !entries[x] ||
          entries[x] != entries[c] || !shape_eq(&xn->shape, &cn->shape) ||
          xn->dtype != cn->dtype || f.size[c] + f.size[x] > SCHED_FUSE_MAX_NODES ||
          !readers_after(&f, x, c, c))
        continue;
      fuse_join(&f, x, c);
    }
  }
  /* A sum or mean whose input is such a loop (run in the same entries, read after it only by
   * later kernels) computes it: the run loop of its partial sums computes each element in
   * registers, stores the members something else reads, and adds the value, so the summed
   * tensor need not be written and read again (batch norm's (x - mean)^2). */
  for (int r = 0; r < nn; r++) {
    const Node *rn = ir_at(g, r);
    int x = rn->in[0];
    const Node *xn = ir_at(g, x);
    if (!entries[r] || !sched_reduce_runs(g, s, rn) || s->node[x].fused || op_is_leaf(xn->op) ||
        !flat_map(g, xn) || entries[x] != entries[r] || xn->dtype != rn->dtype ||
        f.size[x] + 1 > SCHED_FUSE_MAX_NODES)
      continue;
    f.size[r] = 1;
    if (!readers_after(&f, x, r, r))
      continue;
    RunCheck rc = {.g = g, .d = &xn->shape, .k0 = sched_reduce_k0(g, rn), .ok = true};
    sched_kernel_operands(g, s, x, run_operand, &rc);
    if (rc.ok)
      fuse_join(&f, x, r);
  }
  /* A consumer has a larger id than its inputs: walking down, each tree node's consumer already
   * knows its group (a node fused into several entries' loops is printed with the last). */
  for (int c = nn - 1; c >= 0; c--)
    for (int k = 0; k < ir_at(g, c)->nin; k++) {
      int x = ir_at(g, c)->in[k];
      if (s->node[x].fused && !s->node[x].member && entries[c])
        s->node[x].group = s->node[c].group;
    }
  /* A member is stored when a kernel outside its group reads it, or it is pinned. */
  for (int i = 0; i < nn; i++) {
    if (s->node[i].member && pinned[i])
      s->node[i].stored = true;
    if (entries[i] && !op_is_leaf(ir_at(g, i)->op) && !s->node[i].fused)
      sched_kernel_operands(g, s, i, note_stored, s);
  }

  /* Updates written in place: value v takes target t's storage when, in every entry that runs v,
   * v is the value of exactly one update, to t, t is the target of no other update and no kernel
   * of that entry after the one computing v reads t; v is no output and t no update's value. A
   * loop with several outputs stores them after computing all of them, so its own reads of t
   * see the old value. */
  for (int i = 0; i < nn; i++)
    into[i] = -2;
  for (int e = 0; e < ENTRY_COUNT; e++) {
    const Entry *en = &g->entries[e];
    LastRead lr = {.last = last};
    for (int i = 0; i < nn; i++)
      last[i] = -1;
    for (int j = 0; j < nn; j++)
      if ((entries[j] & (1 << e)) && !op_is_leaf(ir_at(g, j)->op) && !s->node[j].fused) {
        lr.kernel = j;
        sched_kernel_operands(g, s, j, note_read, &lr);
      }
    for (int u = 0; u < en->nupdates; u++) {
      int t = en->updates[u].target, v = en->updates[u].value;
      const Node *tn = ir_at(g, t), *vn = ir_at(g, v);
      bool ok = !op_is_leaf(vn->op) && flat_map(g, vn) && (entries[v] & (1 << e)) &&
                !outputs[v] && (!s->node[v].fused || s->node[v].stored) &&
                (tn->op == OP_PARAM || tn->op == OP_STATE) && shape_eq(&tn->shape, &vn->shape) &&
                tn->dtype == vn->dtype && last[t] <= s->node[v].group && !pinned[t];
      for (int o = 0; o < en->nupdates && ok; o++)
        if (o != u && (en->updates[o].target == t || en->updates[o].value == v))
          ok = false;
      into[v] = !ok || (into[v] != -2 && into[v] != t) ? -1 : t;
      into_entries[v] |= 1 << e;
    }
  }
  for (int v = 0; v < nn; v++)
    if (into[v] >= 0 && into_entries[v] == entries[v])
      s->node[v].into = into[v];
}

bool sched_is_tree(const Graph *g, const Schedule *s, int id) {
  const Node *n = ir_at(g, id);
  if (op_is_leaf(n->op) || s->node[id].fused)
    return false;
  if (s->node[id].into >= 0)
    return true;
  for (int k = 0; k < n->nin; k++)
    if (sched_reads(n, k) && sched_in_kernel(s, n->in[k], id))
      return true;
  return false;
}

/* ---------------------------------------------------------------------------------------------
 * The whole schedule.
 */

/* The most bytes one program's arena may need: 2^46 (64 TiB). Together with the per-tensor
 * bound of ir.c it keeps every offset and size exact in int64. */
#define SCHED_MAX_BYTES ((int64_t)1 << 46)

/* n's size in bytes with the batch bound, or -1 if it exceeds SCHED_MAX_BYTES. */
static int64_t checked_bytes(const Node *n, const int64_t *symvals) {
  int64_t b = (int64_t)dtype_size(n->dtype);
  for (int i = 0; i < n->shape.rank; i++) {
    Dim d = n->shape.d[i];
    int64_t v = d.n;
    if ((d.sym >= 0 && __builtin_mul_overflow(v, symvals[d.sym], &v)) ||
        __builtin_mul_overflow(b, v, &b) || b > SCHED_MAX_BYTES)
      return -1;
  }
  return b;
}

Schedule *sched_build(const Graph *g, int64_t batch, const SchedOptions *o, Pool *pool) {
  if (g->nsyms > 1)
    kiln_fail((Loc){0}, "the model uses %d dimension symbols; only one (the batch) is allowed",
              g->nsyms);
  if (batch <= 0)
    batch = 1;
  if (batch > INT32_MAX)
    kiln_fail((Loc){0}, "the batch must be from 1 to %d, got %lld", INT32_MAX, (long long)batch);
  Schedule *s = pool_alloc(pool, sizeof *s);
  if (o)
    s->opt = *o;
  else
    sched_default_options(&s->opt);
  s->opt.threads = s->opt.threads < 1 ? 1 : s->opt.threads > 64 ? 64 : s->opt.threads;
  s->batch = batch;
  s->symvals[0] = batch;
  const SchedTuning *tuned = s->opt.tuning;
  if (tuned) {
    s->opt.gemm.kc = tuned->gemm.kc > 0 ? tuned->gemm.kc : s->opt.gemm.kc;
    s->opt.gemm.mc = tuned->gemm.mc > 0 ? tuned->gemm.mc : s->opt.gemm.mc;
    s->opt.gemm.nc = tuned->gemm.nc > 0 ? tuned->gemm.nc : s->opt.gemm.nc;
  }
  sched_gemm_tiles(&s->opt, &s->tiles);
  int nn = g->nnodes;
  s->nnodes = nn;
  s->node = pool_alloc(pool, (size_t)(nn > 0 ? nn : 1) * sizeof(NodeSched));
  s->used = pool_alloc(pool, (size_t)(nn > 0 ? nn : 1));

  /* Which entries run each node; update targets count as touched. */
  int *entries = pool_alloc(pool, (size_t)(nn > 0 ? nn : 1) * sizeof(int));
  unsigned char *mark = pool_alloc(pool, (size_t)(nn > 0 ? nn : 1));
  for (int e = 0; e < ENTRY_COUNT; e++) {
    ir_reachable(g, (EntryKind)e, mark);
    for (int i = 0; i < nn; i++)
      if (mark[i]) {
        entries[i] |= 1 << e;
        s->used[i] = 1;
      }
  }
  for (int i = 0; i < nn; i++) {
    const Node *n = ir_at(g, i);
    bool touched = entries[i] != 0;
    for (int e = 0; e < ENTRY_COUNT && !touched; e++)
      for (int u = 0; u < g->entries[e].nupdates; u++)
        touched |= g->entries[e].updates[u].target == i;
    /* ir.c bounds every tensor with the batch as 1; the bound batch can still make it huge. */
    if ((touched || op_is_leaf(n->op)) && checked_bytes(n, s->symvals) < 0) {
      char sb[192];
      kiln_fail(n->loc, "tensor %s of shape %s needs more than 64 TiB for batch %lld",
                n->name ? n->name : op_names[n->op], shape_str(g, &n->shape, sb, sizeof sb),
                (long long)batch);
    }
    for (int d = 0; d < n->shape.rank; d++)
      if (dim_value(n->shape.d[d], s->symvals) <= 0 && touched) {
        char sb[128];
        kiln_fail(n->loc, "tensor %s has shape %s, which is empty for batch %lld",
                  n->name ? n->name : op_names[n->op], shape_str(g, &n->shape, sb, sizeof sb),
                  (long long)batch);
      }
  }

  fuse(g, s, entries, pool);
  for (int i = 0; i < nn; i++) {
    const Node *n = ir_at(g, i);
    NodeSched *ns = &s->node[i];
    ns->conv = CONV_DIRECT;
    ns->workers = 1;
    if (!s->used[i] || op_is_leaf(n->op))
      continue;
    if (is_conv(n->op)) {
      ConvAlgo want = s->opt.conv;
      for (int k = 0; tuned && k < tuned->nconv && k < SCHED_TUNED_MAX; k++)
        if (tuned->conv_node[k] == i)
          want = tuned->conv_algo[k];
      ns->conv = conv_algo(g, n, want);
      /* Images are tasks, except in the direct weight gradient, which sums over them. */
      if (ns->conv != CONV_DIRECT || n->op != OP_CONV2D_BWD_FILTER)
        ns->workers = s->opt.threads;
      ns->vectorise = true;
    }
    if (n->op == OP_MATMUL && gemm_operands(g, n)) {
      const Node *a = ir_at(g, n->in[0]);
      int64_t K = dim_value(a->shape.d[n->attr.trans_a ? 0 : 1], s->symvals);
      ns->gemm = sched_gemm_scratch(&s->tiles, dim_value(n->shape.d[0], s->symvals),
                                    dim_value(n->shape.d[1], s->symvals), K, n->dtype) > 0;
      if (ns->gemm)
        matmul_tasks(s, g, n, ns);
    }
    if (op_is_window(n->op) && !is_conv(n->op)) {
      Window w = win_of(g, n);
      ns->tiles = win_tiles(&w);
      /* Max pools that tile their input exactly run as contiguous passes (cg_window.c), which
       * gcc's cheap cost model leaves half scalar (0.31 against 0.08 ms for the MNIST CNN's
       * second pool). Of the other tiling ones, gcc's cheap cost model vectorises an even row
       * of windows two lanes at a time, branch-free, but leaves an odd one scalar, where the
       * first-maximum selects become mispredicted branches (1.4 ms against 0.2 ms for 7-window
       * rows). Only max pools use the tiling code. */
      if ((n->op == OP_MAXPOOL2D || n->op == OP_MAXPOOL2D_GRAD) && ns->tiles &&
          (win_tiles_exactly(&w) || w.Wo % 2 == 1))
        ns->vectorise = true;
      /* One task per image. */
      if (shape_numel(&n->shape, s->symvals) >= PARALLEL_ELEMENTS)
        ns->workers = s->opt.threads;
    }
    if (!sched_is_tree(g, s, i) && sched_reduce_runs(g, s, n) && sched_reduce_k0(g, n) > 0 &&
        shape_numel(&ir_at(g, n->in[0])->shape, s->symvals) >= PARALLEL_ELEMENTS)
      ns->workers = s->opt.threads; /* a sum of a stored tensor: blocks of runs as tasks */
    if (sched_is_tree(g, s, i)) {
      ns->vectorise = true;
      /* Elementwise loops over many elements run as tasks of whole blocks of their outer loop;
       * so do the runs of a sum computing its input's loop, over many elements, when it has
       * more than one run (its additions stay in one order: cg_emit_reduce_tree). */
      bool sums = n->op == OP_SUM || n->op == OP_MEAN || n->op == OP_SUM_TO;
      const Node *x = ir_at(g, n->in[0]);
      if (sums ? sched_reduce_k0(g, n) > 0 && shape_numel(&x->shape, s->symvals) >= PARALLEL_ELEMENTS
               : shape_numel(&n->shape, s->symvals) >= PARALLEL_ELEMENTS)
        ns->workers = s->opt.threads;
    }
    ns->scratch = node_scratch(s, g, n, ns);
    if (ns->scratch > s->scratch_bytes)
      s->scratch_bytes = ns->scratch;
  }
  return s;
}

/* ---------------------------------------------------------------------------------------------
 * Printing (kiln schedule).
 */


/* " (tuned)" for a tile kiln tune measured, " (set)" for one the options gave, else "". */
static const char *tile_note(const Schedule *s, int64_t set, int which) {
  const SchedTuning *t = s->opt.tuning;
  int64_t tuned = !t ? 0 : which == 0 ? t->gemm.kc : which == 1 ? t->gemm.mc : t->gemm.nc;
  return tuned > 0 ? " (tuned)" : set > 0 ? " (set)" : "";
}

static bool conv_tuned(const Schedule *s, int id) {
  const SchedTuning *t = s->opt.tuning;
  for (int k = 0; t && k < t->nconv && k < SCHED_TUNED_MAX; k++)
    if (t->conv_node[k] == id)
      return true;
  return false;
}

void sched_print(const Graph *g, const Schedule *s, FILE *out) {
  const Target *t = &s->opt.target;
  const GemmTiles *set = &s->opt.gemm;
  fprintf(out, "target: vectors %d bytes, L1 %" PRId64 " bytes, L2 %" PRId64 " bytes, L3 %" PRId64
               " bytes, cores %d\n",
          t->vector_bytes, t->l1_bytes, t->l2_bytes, t->l3_bytes, t->cores);
  fprintf(out, "schedule: batch %" PRId64 ", threads %d, fuse %s, conv %s, gemm tiles kc %" PRId64
               "%s mc %" PRId64 "%s nc %" PRId64 "%s, scratch %" PRId64 " bytes\n",
          s->batch, s->opt.threads, s->opt.fuse ? "on" : "off", conv_names[s->opt.conv],
          s->tiles.kc, tile_note(s, set->kc, 0), s->tiles.mc, tile_note(s, set->mc, 1),
          s->tiles.nc, tile_note(s, set->nc, 2), s->scratch_bytes);
  fprintf(out, "%-6s %-20s %-24s %s\n", "node", "op", "line", "schedule");
  for (int i = 0; i < s->nnodes; i++) {
    const Node *n = ir_at(g, i);
    const NodeSched *ns = &s->node[i];
    if (!s->used[i] || op_is_leaf(n->op))
      continue;
    char where[64] = "-";
    if (n->loc.file) {
      const char *path = n->loc.file->path, *base = strrchr(path, '/');
      snprintf(where, sizeof where, "%s:%d", base ? base + 1 : path, n->loc.line);
    }
    fprintf(out, "%%%-5d %-20s %-24s", i, op_names[n->op], where);
    if (ns->fused) {
      fprintf(out, " fused into %%%d%s", ns->group, ns->stored ? " stored" : "");
      if (ns->into >= 0)
        fprintf(out, " in-place(%%%d)", ns->into);
      fputc('\n', out);
      continue;
    }
    fprintf(out, " kernel");
    if (sched_is_tree(g, s, i)) {
      int members = 0;
      for (int j = 0; j < s->nnodes; j++)
        members += s->node[j].fused && s->node[j].group == i;
      if (members)
        fprintf(out, " fused(%d)", members);
    }
    if (ns->into >= 0)
      fprintf(out, " in-place(%%%d)", ns->into);
    if (is_conv(n->op))
      fprintf(out, " conv=%s%s", conv_names[ns->conv], conv_tuned(s, i) ? " (tuned)" : "");
    if (n->op == OP_MATMUL)
      fprintf(out, " %s", ns->gemm ? "gemm" : "loops");
    if (ns->tiles)
      fprintf(out, " tiles");
    if (ns->workers > 1)
      fprintf(out, " workers=%d", ns->workers);
    if (ns->workers > 1 && n->op == OP_MATMUL)
      fprintf(out, " tasks=%s/%" PRId64, ns->split ? "columns" : "rows", ns->block);
    if (ns->vectorise)
      fprintf(out, " vectorise");
    if (ns->scratch)
      fprintf(out, " scratch=%" PRId64, ns->scratch);
    fputc('\n', out);
  }
}
