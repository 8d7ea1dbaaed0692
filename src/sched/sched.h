/*
 * sched.h — the schedule: how each node of a graph is computed, kept apart from what it means.
 *
 * The options below are everything a schedule may depend on besides the graph: a description of
 * the target and explicit choices. The library reads no environment variable and asks the
 * machine nothing; drivers (tools/kiln.c) fill these in from flags and $KILN_*.
 */
#ifndef KILN_SCHED_H
#define KILN_SCHED_H

#include "ir/ir.h"

/* The machine a schedule is decided for. */
typedef struct Target {
  int vector_bytes;          /* widest SIMD register the generated code may assume: 16, 32, 64 */
  int64_t l1_bytes, l2_bytes, l3_bytes;  /* data cache sizes per core (l3: shared) */
  int cores;
} Target;

typedef enum ConvAlgo {
  CONV_AUTO,                 /* the cost model picks per convolution */
  CONV_DIRECT,               /* direct loop nests */
  CONV_GEMM,                 /* im2col + the blocked GEMM */
  CONV_IMPLICIT              /* weight gradient: an implicit GEMM vectorised along the output
                                channels, nothing unfolded (cg_implicit.c) */
} ConvAlgo;

/* A convolution algorithm's name ("auto", "direct", "gemm", "implicit"), and the algorithm a
 * name gives (false for another name). */
const char *sched_conv_name(ConvAlgo a);
bool sched_conv_parse(const char *name, ConvAlgo *a);

/* The blocked GEMM's cache tiles (cg_gemm.c prints them into the routine): KC bounds the depth
 * of one packed panel (a kc × NR micro-panel of B and an MR × kc sliver of A stay in L1), MC × KC
 * of A stays in L2, KC × NC of B in L3. */
typedef struct GemmTiles {
  int64_t kc, mc, nc;
} GemmTiles;

/* Decisions `kiln tune` measured on this machine, overriding the cost model's: a convolution
 * algorithm per node, and GEMM tiles (a field > 0 overrides). */
enum { SCHED_TUNED_MAX = 256 };
typedef struct SchedTuning {
  int nconv;
  int conv_node[SCHED_TUNED_MAX];
  ConvAlgo conv_algo[SCHED_TUNED_MAX];
  GemmTiles gemm;
} SchedTuning;

typedef struct SchedOptions {
  Target target;
  int threads;               /* the most threads parallel kernels run on (their scratch has a
                                slot per worker), >= 1; 1: no parallel kernels */
  bool fuse;                 /* elementwise fusion and in-place updates */
  ConvAlgo conv;
  GemmTiles gemm;            /* a field > 0 overrides the tile sched_gemm_tiles derives from the
                                target; 0 (the default) derives it */
  const SchedTuning *tuning; /* measured decisions (kiln tune), or NULL; overrides conv and gemm */
} SchedOptions;

/* One thread, fusion on, the cost model's convolutions, tiles from the target, and a fixed
 * generic x86-64 target (32-byte vectors, 32 KiB / 256 KiB / 8 MiB caches, 1 core), so the same
 * call emits the same code on every machine. */
void sched_default_options(SchedOptions *o);

/* The GEMM tiles a schedule with options o uses: BLIS's analytical derivation from o->target
 * (kc from L1, mc from L2, nc from L3 and the cores sharing it, for the micro-kernel the vector
 * width selects), each field of o->gemm > 0 overriding; clamped to what the routine accepts.
 * The default target gives kc 256, mc 128, nc 2048. */
void sched_gemm_tiles(const SchedOptions *o, GemmTiles *t);

/* The largest register block (rows MR, columns NR) any micro-kernel cg_gemm.c prints may use:
 * the scratch bound covers every vector width the C compiler may pick. */
enum { SCHED_GEMM_MR_MAX = 16, SCHED_GEMM_NR_MAX = 64 };
/* A product by a transposed B with at most SCHED_GEMM_BT_M rows (cg_gemm.c's $G_acc_bt) reads
 * B's rows in place, along K blocks SCHED_GEMM_BT_DEPTH times the tile's kc: long runs the
 * prefetcher follows, and C's tile is stored fewer times. */
enum { SCHED_GEMM_BT_M = 128, SCHED_GEMM_BT_DEPTH = 8 };

/* Nodes per fused tree at most: keeps the loop body (and the plan's walk over it) small. */
enum { SCHED_FUSE_MAX_NODES = 32 };

/* How one node is computed. Every field has its plain-loop default for nodes no rule applies
 * to (conv = CONV_DIRECT, workers = 1, the rest 0 / false / -1). */
typedef struct NodeSched {
  bool fused;        /* an elementwise node computed in registers inside another node's loop */
  bool member;       /* fused into exactly one kernel, group's (a loop with several outputs),
                        rather than into each consumer's (a tree node, recomputed per entry) */
  bool stored;       /* a member the group's loop also writes to its own storage: a kernel
                        outside the group, an update or an output reads it */
  int into;          /* update value written straight into this update target's storage (no
                        copy at the end of the entry), or -1 */
  int group;         /* the node whose kernel computes this one: itself unless fused (a tree
                        node recomputed in several entries' loops names the last) */
  ConvAlgo conv;     /* convolutions: CONV_DIRECT or CONV_GEMM (im2col + the blocked GEMM) */
  bool gemm;         /* matmul: the blocked GEMM rather than the plain loop nest */
  bool tiles;        /* pools: windows tile the input (taps unrolled, no bounds tests) */
  bool vectorise;    /* ask gcc for its full vectoriser cost model on this kernel */
  int workers;       /* > 1: the kernel runs as tasks fixed by the shapes (kiln_abi.h) on up to
                        this many workers, each with a scratch slot; 1: serial loops */
  int split;         /* a parallel matmul's tasks take blocks of its rows (0) or columns (1) */
  int64_t block;     /* ... of this many rows or columns each */
  int64_t scratch;   /* bytes of the shared scratch region the kernel needs at the full batch */
} NodeSched;

/* The schedule of one graph at one batch: what plan and code generator read. */
typedef struct Schedule {
  SchedOptions opt;
  int64_t batch;
  int64_t symvals[IR_MAX_SYMS];  /* the batch bound to symbol 0 */
  int nnodes;
  NodeSched *node;               /* per node id */
  unsigned char *used;           /* per node: some entry runs it */
  GemmTiles tiles;               /* sched_gemm_tiles(&opt) */
  int64_t scratch_bytes;         /* max of node[].scratch: the region plan.c reserves */
} Schedule;

/* Decides the schedule of every node of g that an entry runs, for `batch` (symbol 0; <= 0: 1) and
 * options o (NULL: sched_default_options). Everything is allocated from pool. */
Schedule *sched_build(const Graph *g, int64_t batch, const SchedOptions *o, Pool *pool);
/* Bytes of scratch the blocked GEMM needs for C[M,N] = op(A)[M,K] op(B)[K,N] with tiles t
 * (packed panels, 64-byte aligned); 0 when the plain loop nest is the better schedule for that
 * shape (tiny products) or dt is not floating point. */
int64_t sched_gemm_scratch(const GemmTiles *t, int64_t M, int64_t N, int64_t K, DType dt);
/* The K block used for depth K: K split into equal parts of at most kc_tile (K = 600 with 256:
 * three blocks of 200). The generated routine computes the same. */
int64_t sched_gemm_kc(int64_t kc_tile, int64_t K);
/* Bytes of one batch chunk's slot of a GEMM convolution's scratch (64-byte multiple): its
 * unfolded image, the weight gradient of its image, the GEMM's packing buffers. */
int64_t sched_conv_slot_bytes(const Schedule *s, const Graph *g, const Node *n);
/* The register block of an implicit convolution (cg_implicit.c) for vectors of `vbytes`
 * (vbytes = the element size: the plain C kernel), ow output channels (a multiple of the lanes,
 * the output channels padded with zeros to opad, a multiple of ow) wide:
 * - weight gradient: each call of its micro-kernel accumulates cb input channels x pb kernel
 *   rows (a divisor of KH) x all KW kernel columns over every output position of one image; the
 *   input channels are padded with zeros to cpad, a multiple of cb;
 * - forward: each call accumulates pr x pc output positions over every tap; the positions are
 *   padded to Ho2 x Wo2, multiples of pr and pc, and computed but not stored there.
 * Hp x Wp is the zero frame around one channel of the input that every tap reads without a
 * bounds test. */
typedef struct ImplicitBlock {
  bool rows;  /* weight gradient: vectors along rows of dy (padded to Wo2), ow output channels a
                 call, each accumulator summed across its lanes at the end; chosen when the
                 output channels would leave a vector part empty */
  int lanes, cb, pb, pr, pc;
  int64_t ow, cpad, opad, Ho2, Wo2, Hp, Wp;
} ImplicitBlock;
/* The vector widths GNU C may pick, widest first: the preprocessor condition selecting each
 * (NULL: the rest) and how many accumulators a micro-kernel keeps in its registers (32 or 16).
 * Without GNU vector extensions, {NULL, element size, 1} describes the plain kernel. */
typedef struct VectorWidth {
  const char *cond;
  int vbytes, accumulators;
} VectorWidth;
extern const VectorWidth sched_vector_widths[3];
/* Whether an implicit GEMM can compute convolution n (the weight gradient or the forward; one
 * group, kernel columns that fit a register block, floating point in the arena). */
bool sched_implicit_ok(const Graph *g, const Node *n);
void sched_implicit_block(const Window *w, Op op, DType dt, const VectorWidth *v,
                          ImplicitBlock *b);
/* The scratch of an implicit convolution, laid out for the largest block of any width: first
 * shared_bytes of what all images share (the weight gradient's sum over the images, the
 * forward's transposed weights), then per image slot (slot_bytes each) its frame at 0, the
 * weight gradient's transposed dy at dt_at, and the block results at part_at. */
typedef struct ImplicitScratch {
  ImplicitBlock max;
  int64_t shared_bytes, slot_bytes, dt_at, part_at;
} ImplicitScratch;
void sched_implicit_scratch(const Window *w, Op op, DType dt, ImplicitScratch *s);
/* Bytes of one worker's slot of a parallel matmul's scratch (64-byte multiple): the GEMM's
 * packing buffers for one block. */
int64_t sched_matmul_slot_bytes(const Schedule *s, const Graph *g, const Node *n);
/* Whether node n reads input k's elements (expand and sum_to read only their first input, numel
 * none: the others give a shape). */
bool sched_reads(const Node *n, int k);
/* Whether kernel `root` computes fused node x in registers: a tree node anywhere, a member only
 * in its group's kernel. */
static inline bool sched_in_kernel(const Schedule *s, int x, int root) {
  return s->node[x].fused && (!s->node[x].member || s->node[x].group == root);
}
/* For a sum, mean or sum_to node n: the first axis k0 of the trailing axes of its input that it
 * sums over, all of them (the input's shape from k0 on is one contiguous run per output). */
int sched_reduce_k0(const Graph *g, const Node *n);
/* Whether the sum over each run of n (sum, mean, sum_to of f32) goes through 16 partial sums
 * (the run is at least 32 elements, or grows with the batch), the loop a fused input joins. */
bool sched_reduce_runs(const Graph *g, const Schedule *s, const Node *n);
/* Calls fn(x, arg) for every stored operand x of the kernel computing node n, looking through
 * the nodes it computes in registers; an operand read twice is reported twice. */
void sched_kernel_operands(const Graph *g, const Schedule *s, int n, void (*fn)(int x, void *arg),
                           void *arg);
/* Calls fn(x, arg) for every member of root's group the loop stores, in the order the loop
 * computes them (post-order from root, each once). */
void sched_kernel_outputs(const Graph *g, const Schedule *s, int root, void (*fn)(int x, void *arg),
                          void *arg);
/* Calls fn(x, arg) for every node root's kernel computes in registers, stored or not, in the
 * order the loop computes them (post-order from root, each once): what `kiln graph` draws inside
 * the kernel's cluster. */
void sched_kernel_fused(const Graph *g, const Schedule *s, int root, void (*fn)(int x, void *arg),
                        void *arg);
/* Whether node id's kernel is a flat fused loop: it computes fused inner nodes, or writes an
 * update's new value in place. */
bool sched_is_tree(const Graph *g, const Schedule *s, int id);
/* One line per kernel: node, op, model line, fused group, convolution algorithm, workers, scratch. */
void sched_print(const Graph *g, const Schedule *s, FILE *out);

#endif
