/*
 * compiler.h — the one internal header of kiln's compiler.
 *
 * It declares the core structures (source locations, the graph IR, the training spec) and the
 * functions each phase exports, in sections named after the .c file that owns them, in pipeline
 * order:
 *
 *   util.c      memory pool, string buffers, the error trap (kiln_fail)
 *   ir.c        the graph: nodes, builder functions (with hash-consing = CSE), entries, printing
 *   shape.c     shape and type rules per op, FLOP counts
 *   opt.c       algebraic rewrites, applied by ir_node as nodes are built
 *   autodiff.c  reverse mode: vector-Jacobian rules per op, the gradient graph transform
 *   train.c     optimizer updates and the train / eval / grad entry points
 *   plan.c      the static memory plan and the kiln_tensor table shared with the runtime
 *   cg_c.c      the C code generator
 *   aot.c       driving the system C compiler: trainers and shared objects
 *   ad_forward.c  forward mode: tangent rules per op, JVP and Hessian-vector product graphs
 *                 (declared in the last section, "forward mode")
 *
 * A tensor's life: the frontend calls ir_node() for `h = relu(x)`; shape.c gives it a shape on
 * creation (so errors point at the model line); autodiff.c adds its gradient nodes; plan.c gives
 * it an arena offset; cg_c.c prints its loop nest; runtime/interp.c is its reference meaning.
 */
#ifndef KILN_COMPILER_H
#define KILN_COMPILER_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../runtime/kiln_abi.h"

#if defined(__GNUC__)
#define KILN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KILN_PRINTF(f, a)
#endif

/* ================================ util.c ================================ */

/* A source file held in memory; tokens and nodes point into it. */
typedef struct SrcFile {
  const char *path;   /* as given by the user, used in messages */
  const char *text;   /* NUL-terminated contents */
} SrcFile;

/* A position in a model file. file == NULL means "no location" (internal nodes, API input). */
typedef struct Loc {
  const SrcFile *file;
  int line, col;      /* 1-based */
} Loc;

/* An arena of allocations freed together. Every compile owns one pool; when kiln_fail unwinds
 * the compile, freeing the pool frees everything it made. */
typedef struct Pool Pool;
Pool *pool_new(void);
void pool_free(Pool *p);
void *pool_alloc(Pool *p, size_t n);              /* zeroed, 16-byte aligned */
char *pool_strdup(Pool *p, const char *s);
char *pool_strndup(Pool *p, const char *s, size_t n);
char *pool_printf(Pool *p, const char *fmt, ...) KILN_PRINTF(2, 3);

/* The compiler's allocator: kiln_fail("out of memory") instead of returning NULL (the try
 * variant returns NULL). kiln_test_fail_alloc_after(n) makes every allocation after the next n
 * fail on this thread (n < 0: none), for fault-injection tests. */
void *kiln_malloc(size_t n);
void *kiln_calloc(size_t n, size_t size);
void *kiln_realloc(void *p, size_t n);
void *kiln_try_realloc(void *p, size_t n);
void kiln_test_fail_alloc_after(long n);

/* A growable string, used to build generated C and messages. */
typedef struct Buf {
  char *p;
  size_t len, cap;
} Buf;
void buf_printf(Buf *b, const char *fmt, ...) KILN_PRINTF(2, 3);
void buf_vprintf(Buf *b, const char *fmt, va_list ap);
void buf_puts(Buf *b, const char *s);
void buf_free(Buf *b);

/* The error trap. A public API function sets one up with KILN_TRY; anything below it that finds
 * bad input calls kiln_fail(), which formats the message into the trap and longjmps back (the
 * way Lua raises errors), so phases need no error plumbing. Messages look like
 *     model.kiln:12:9: error: cannot add [B, 256] and [B, 10]
 *       h = a + b
 *           ^
 */
typedef struct Trap {
  jmp_buf jb;
  char msg[4096];
  struct Trap *prev;
} Trap;
extern _Thread_local Trap *kiln_trap;
#define KILN_TRY(t) ((t)->prev = kiln_trap, kiln_trap = (t), setjmp((t)->jb) == 0)
void kiln_trap_end(Trap *t);   /* pops t; call on both paths */
_Noreturn void kiln_fail(Loc loc, const char *fmt, ...) KILN_PRINTF(2, 3);
_Noreturn void kiln_vfail(Loc loc, const char *fmt, va_list ap);
/* Formats "file:line:col: error: msg\n  source line\n  ^\n" into out (no location: "error: msg\n"),
 * truncating at cap bytes; never allocates. */
void kiln_format_error(char *out, size_t cap, Loc loc, const char *msg);
_Noreturn void kiln_bug(const char *file, int line, const char *what);
/* Passes an error caught by an inner trap (already popped) on to the enclosing one: for code
 * that must clean up before failing. */
_Noreturn void kiln_rethrow(const Trap *caught);
#define unreachable() kiln_bug(__FILE__, __LINE__, "unreachable")
#define KILN_ASSERT(c) ((c) ? (void)0 : kiln_bug(__FILE__, __LINE__, #c))

/* Reads a whole file into the pool; NULL with errno set on failure. */
char *read_file(Pool *p, const char *path, size_t *len);

/* ================================ ir.c ================================ */

typedef enum Op {
#define OP(id, name, arity) OP_##id,
#include "ops.def"
#undef OP
  OP_COUNT
} Op;

typedef enum DType { DT_F32 = KILN_F32, DT_F64 = KILN_F64, DT_I32 = KILN_I32 } DType;

#define IR_MAX_RANK KILN_ABI_MAX_RANK
#define IR_MAX_IN 4
#define IR_MAX_SYMS 8

/* One dimension: n, or n * symbol when sym >= 0 (symbols are names like the batch size B,
 * bound to a number only when code is specialised or a graph is run). */
typedef struct Dim {
  int64_t n;
  int sym;            /* index into Graph.syms, or -1 */
} Dim;

typedef struct Shape {
  int rank;
  Dim d[IR_MAX_RANK];
} Shape;

/* Operation attributes. One flat struct, zero-initialised, so two nodes with equal attributes
 * compare equal with memcmp (hash-consing). Which fields an op reads is said in ops.def. */
typedef struct Attr {
  double value;       /* CONST scalar value; LEAKY_RELU* slope; DROPOUT probability */
  DType dtype;        /* CONST scalar element type */
  unsigned axes;      /* SUM/MEAN/NUMEL: bit i set = reduce axis i */
  bool keepdims;
  bool trans_a, trans_b;
  Shape shape;        /* RESHAPE target (may hold symbols) */
  /* 2-D windows (CONV2D*, *POOL2D*): [h, w] pairs; pad is [top, bottom, left, right]. */
  int64_t kernel[2], stride[2], dilation[2], pad[4];
  int64_t groups;     /* CONV2D*: channel groups */
  int64_t in_size[2]; /* CONV2D_BWD_DATA, AVGPOOL2D_GRAD: the forward input's H and W */
  bool count_include_pad; /* AVGPOOL2D*: divide by the full window (PyTorch's default) */
  int axis;           /* SOFTMAX, LOG_SOFTMAX, CONCAT, SLICE */
  int64_t start, len; /* SLICE */
  int perm[IR_MAX_RANK]; /* TRANSPOSE */
  uint32_t salt;      /* DROPOUT: tells dropout sites apart (same counter, different masks) */
} Attr;

/* Roles of STATE and leaf nodes, matching the ABI's roles. */
typedef enum Role {
  ROLE_NONE = -1,
  ROLE_PARAM = KILN_ROLE_PARAM,
  ROLE_STATE = KILN_ROLE_STATE,
  ROLE_HYPER = KILN_ROLE_HYPER,
  ROLE_INPUT = KILN_ROLE_INPUT,
  ROLE_OPT = KILN_ROLE_OPT
} Role;

/* How a leaf gets its value (PARAM/STATE: initialiser; INPUT: data source). */
typedef struct LeafInfo {
  int init;           /* KILN_INIT_* */
  double init_a, init_b;
  int64_t fan_in, fan_out;
  int source;         /* KILN_SRC_* for inputs */
  double scale;       /* images: value = pixel * scale */
  bool weight;        /* PARAM: a weight that `regularize` penalises and max_norm projects
                         (linear and conv2d weights, `param` declarations of rank >= 2) */
} LeafInfo;

typedef struct Node {
  int id;             /* ir_at(g, id) is this node; inputs always have smaller ids (SSA order) */
  Op op;
  DType dtype;
  Shape shape;
  int nin;
  int in[IR_MAX_IN];  /* input node ids */
  Attr attr;
  Role role;          /* leaves only */
  const char *name;   /* leaves: checked identifier ("fc1.weight"); others: the model's variable
                         name when it has one, for printing (may be NULL) */
  LeafInfo leaf;
  int data;           /* CONST/PARAM with literal values: index into Graph.data, else -1 */
  Loc loc;            /* model-file text this node came from (gradient nodes: their forward op's) */
} Node;

/* One array of literal values (model-file constants). */
typedef struct Literal {
  int64_t n;
  double *v;
} Literal;

typedef enum EntryKind { ENTRY_TRAIN = 0, ENTRY_EVAL = 1, ENTRY_GRAD = 2, ENTRY_COUNT } EntryKind;

/* A value an entry point makes visible under a fixed name (see kiln_abi.h). */
typedef struct Output {
  const char *name;
  int node;
} Output;

/* At the end of an entry, target (a PARAM or STATE leaf) takes value's value. */
typedef struct Update {
  int target, value;
} Update;

typedef struct Entry {
  Output *outputs;
  int noutputs, capoutputs;
  Update *updates;
  int nupdates, capupdates;
} Entry;

typedef enum OptKind { OPT_SGD, OPT_ADAM, OPT_ADAGRAD, OPT_RMSPROP, OPT_ADADELTA } OptKind;

/* The model file's train block. */
typedef struct TrainSpec {
  OptKind optimizer;
  double lr, momentum, dampening, weight_decay, beta1, beta2, eps;
  double lr_decay, initial_accumulator_value;  /* adagrad */
  double alpha;       /* rmsprop's smoothing constant */
  double rho;         /* adadelta's smoothing constant */
  bool nesterov;
  bool centered;      /* rmsprop */
  /* Regularization (train.c): l1·Σ|w| + (l2/2)·Σw² over the weights (parameters of rank >= 2)
   * is added to the minimised loss; max_norm > 0 projects each output unit's incoming weight
   * vector onto the ball of that radius after every update. */
  double reg_l1, reg_l2, max_norm;
  int patience;       /* early stopping: epochs without a better test loss; 0 = off */
  int64_t batch;      /* 0: not given */
  int epochs;
  int64_t steps;      /* full-batch updates for in-file data */
  uint64_t seed;
  int init;           /* KILN_INIT_* override for weights, or -1 for each layer's default */
  Loc loc;
} TrainSpec;

typedef struct Graph {
  Pool *pool;
  const char *name;   /* model name */
  /* Nodes live in blocks of IR_BLOCK that never move once allocated, so a Node * stays valid
   * while the graph grows (builders may be called while a caller holds one). */
  Node **blocks;
  int nnodes, nblocks, capblocks;
  const char *syms[IR_MAX_SYMS];
  int nsyms;
  Literal *data;
  int ndata, capdata;
  int *hash;          /* open-addressing table of node ids for hash-consing, -1 = empty */
  int hashcap;
  /* Set by the frontend. */
  int loss_train;     /* scalar loss, training-mode graph (-1 if none) */
  int loss_eval;      /* scalar loss, evaluation-mode graph */
  int output_eval;    /* the model's declared output in evaluation mode, or -1 */
  TrainSpec train;
  /* Set by train_build. */
  Entry entries[ENTRY_COUNT];
  int *grads;         /* grads[i] = gradient node of the i-th PARAM (order of params[]) */
  int *params;        /* PARAM node ids in creation order */
  int nparams;
} Graph;

Graph *ir_new(const char *name);
void ir_free(Graph *g);

/* Builders. All of them check types and shapes (shape.c) and fail at loc on a mismatch. */
int ir_sym(Graph *g, const char *name);                  /* index of symbol, created on demand */
int ir_leaf(Graph *g, Op op, Role role, const char *name, DType dt, Shape s, Loc loc);
int ir_literal(Graph *g, const double *v, int64_t n);    /* copies v into Graph.data */
int ir_node(Graph *g, Op op, int nin, const int *in, const Attr *a, Loc loc);
int ir_const(Graph *g, double value, DType dt, Loc loc); /* scalar */
int ir_unary(Graph *g, Op op, int x, Loc loc);
int ir_binary(Graph *g, Op op, int a, int b, Loc loc);
int ir_reduce(Graph *g, Op op, int x, unsigned axes, bool keepdims, Loc loc);
int ir_reshape(Graph *g, int x, Shape s, Loc loc);
int ir_matmul(Graph *g, int a, int b, bool ta, bool tb, Loc loc);
int ir_transpose(Graph *g, int x, const int *perm, Loc loc);
void ir_add_output(Graph *g, EntryKind e, const char *name, int node);
void ir_add_update(Graph *g, EntryKind e, int target, int value);

/* Node lookup. */
#define IR_BLOCK 256
static inline Node *ir_at(const Graph *g, int id) {
  return &g->blocks[id / IR_BLOCK][id % IR_BLOCK];
}
int ir_find_leaf(Graph *g, const char *name);            /* -1 if none */

/* Shapes. */
Shape shape_of(int rank, const int64_t *dims);           /* all-constant shape */
bool shape_eq(const Shape *a, const Shape *b);
bool dim_eq(Dim a, Dim b);
int64_t dim_value(Dim d, const int64_t *symvals);        /* symvals[sym] for each symbol */
int64_t shape_numel(const Shape *s, const int64_t *symvals);
/* "[B, 784]", "[2*B, 3]", "[]". Returns buf. */
char *shape_str(const Graph *g, const Shape *s, char *buf, size_t n);
const char *dtype_name(DType t);                         /* "f32" */
size_t dtype_size(DType t);
bool dtype_is_float(DType t);

/* Op metadata from ops.def. */
extern const char *const op_names[OP_COUNT];
extern const int op_arity[OP_COUNT];
static inline bool op_is_leaf(Op op) { return op_arity[op] < 0; }

/* The nodes an entry needs, in execution (id) order. mark[id] is set for each; returns count.
 * mark must hold g->nnodes bytes. */
int ir_reachable(const Graph *g, EntryKind e, unsigned char *mark);

/* Printing (kiln shapes, kiln graph, --dump-ir). */
void ir_print(Graph *g, FILE *out);
void ir_print_dot(Graph *g, FILE *out, bool training);
extern const char *const entry_names[ENTRY_COUNT];      /* "train", "eval", "grad" */

/* ================================ shape.c ================================ */

/* Computes n->dtype and n->shape from its inputs and attributes; kiln_fail at n->loc with both
 * shapes written out on a mismatch. Called by ir_node for every node it creates. */
void shape_infer(Graph *g, Node *n);
/* Result shape of broadcasting a with b; fails at loc naming both shapes. */
Shape shape_broadcast(Graph *g, const Shape *a, const Shape *b, Loc loc, const char *what);
/* Floating-point operations of one execution of n with symbols bound to symvals. */
double shape_flops(const Graph *g, const Node *n, const int64_t *symvals);

/* ================================ opt.c ================================ */

/* An exactly equivalent, simpler node for op(in) with attributes a, built through the builders,
 * or -1 when no rule applies. ir_node calls it for every node it is asked to build. */
int opt_rewrite(Graph *g, Op op, int nin, const int *in, const Attr *a, Loc loc);

/* ================================ autodiff.c ================================ */

/* Reverse mode as a graph transform: builds nodes for d(loss)/d(wrt[i]) into grads[i] from the
 * per-op vector-Jacobian rules. A leaf the loss does not depend on gets a zero gradient. */
void ad_reverse(Graph *g, int loss, const int *wrt, int nwrt, int *grads);

/* ================================ train.c ================================ */

/* Builds the three entry points from what the frontend left in g: "grad" (loss and every
 * parameter gradient), "train" (loss; updates: optimizer and running statistics) and "eval". */
void train_build(Graph *g);

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

/* ================================ aot.c ================================ */

/* Directory of kiln's runtime files (headers and libkilnrt.a), from $KILN_HOME or the build. */
const char *aot_runtime_dir(void);
/* The C compiler: $CC or "cc". */
const char *aot_cc(void);
/* Compiles c_source with the runtime into a standalone trainer at out_path. Returns 0 or -1 with
 * the compiler's output in err. */
int aot_build_trainer(const char *c_source, const char *out_path, Buf *err);
/* Compiles c_source to a shared object and loads it; returns the kiln_program or NULL. */
const kiln_program *aot_load_shared(const char *c_source, void **handle, Buf *err);

/* ---- autodiff/interp requests ---- */

/* Whether autodiff.c has a vector-Jacobian rule for op (tests check every op has one or is
 * explicitly non-differentiable). */
bool ad_has_vjp(Op op);

/* ---- codegen requests ---- */

/* Whether cg_c.c has an emitter for op; cg_emit_c fails at the node's line for one without. */
bool cg_has_emitter(Op op);

/* ---- cg_gemm.c ---- */

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

/* ---- forward mode ---- */

/* ad_forward.c. Forward mode as a graph transform: jvps[i] = the derivative of outs[i] in the
 * direction that moves wrt[j] along tangents[j] (a node of wrt[j]'s shape and dtype) for every j,
 * built from the per-op tangent rules. An output that does not depend on any wrt gets a zero
 * tensor. Fails at a node's location only where a tangent has to flow through an op it cannot
 * differentiate (max pooling with overlapping windows). */
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
