/*
 * cg.h — the C code generator: a planned, scheduled graph to one C11 translation unit.
 *
 *   cg_file.c    the translation unit: the emitter table, kernels, entries, tensor table,
 *                program description, and the checks before anything is printed
 *   cg_loop.c    sizes known up to the batch, identifiers and literals, operands, the strided
 *                loop-nest printer
 *   cg_elem.c    elementwise, reductions, matmul, losses, softmax, dropout, layout
 *   cg_window.c  convolutions (direct, im2col + GEMM) and pools
 *   cg_fuse.c    fused elementwise trees (which nodes fuse is sched.c's decision)
 *   cg_gemm.c    the blocked GEMM routine matmuls and convolutions call
 *   cg_implicit.c  convolutions as implicit GEMMs (nothing unfolded)
 *
 * Every choice of how a node is computed comes from the schedule (plan->sched); the code
 * generator decides nothing of its own. The reference interpreter (src/ref/interp.c) is the
 * meaning every kernel is checked against.
 */
#ifndef KILN_CG_H
#define KILN_CG_H

#include "plan/plan.h"

/* ================================ cg_file.c ================================ */

/* Writes the whole program as one C11 translation unit: the ABI header, literal data, one static
 * kernel per distinct kernel text (nodes whose kernels print the same share it), the train / eval /
 * grad / apply entry points and `kiln_program_desc`. Follows
 * plan->sched; allocates from a pool of its own (freed on return), so the graph does not change
 * and emits may run concurrently. */
void cg_emit_c(const Graph *g, const Plan *plan, Buf *out);
/* Per node id, the name of the kernel function cg_emit_c's entries call for it ("k45_conv2d";
 * a node whose kernel prints the same as an earlier node's calls that one's), or NULL where no
 * entry calls a kernel for the node (leaves, reshapes sharing their input's bytes, nodes fused
 * into another's loop, nodes no entry runs). Allocated from out. */
const char **cg_kernel_names(const Graph *g, const Plan *plan, Pool *out);

/* Whether the emitter table (cg_file.c) has op; cg_emit_c fails at the node's line for one
 * without. */
bool cg_has_emitter(Op op);
/* Fault injection for the tests of kiln check: the kernels of this op add 1 to their first
 * output element. OP_COUNT, the default, breaks nothing. */
extern Op cg_broken_op;

/* ======================= internal: shared by the cg_*.c files ======================= */

/* Sizes known up to the batch: c * B^p. */
typedef struct Sz {
  int64_t c;
  int p;
} Sz;

static inline Sz sz_mul(Sz a, Sz b) {
  Sz r = {a.c * b.c, a.p + b.p};
  if (r.c == 0)
    r.p = 0;
  return r;
}
static inline bool sz_eq(Sz a, Sz b) { return a.c == b.c && a.p == b.p; }
static inline bool sz_is_one(Sz a) { return a.c == 1 && a.p == 0; }
static const Sz SZ_ONE = {1, 0};
static const Sz SZ_ZERO = {0, 0};

/* In a kernel's text, its name (substituted when the kernel is printed, so nodes whose kernels
 * print the same share one function): a byte no generated text otherwise contains. */
#define CG_KERNEL_NAME "\x01"

/* A parameter of the kernel being printed: "const float *restrict " and "a". */
typedef struct CgParam {
  const char *type, *name;
} CgParam;
#define CG_MAX_PARAMS (3 * SCHED_FUSE_MAX_NODES + IR_MAX_IN + 8)

/* The generator's state while printing one translation unit. */
typedef struct Cg {
  const Graph *g;
  const Plan *plan;
  const Schedule *s;       /* plan->sched: every choice of how a node is computed */
  Pool *pool;              /* this emit's strings and arrays, freed at its end */
  Buf *out;
  int indent;
  unsigned char *used;     /* nodes some entry runs */
  unsigned char *var;      /* node's kernel depends on the batch symbol */
  unsigned char *litused;  /* g->data arrays referenced */
  unsigned char *nores;    /* kernel output overlaps an input: no restrict (elementwise only) */
  const char **litname;    /* C name of each g->data array: lit3, or lit3_fc1_weight */
  const char **tname;      /* C name of each arena tensor an entry passes: conv1_weight, t12 */
  int *shared;             /* the node whose kernel a node's call uses: itself, or an earlier
                              node whose kernel prints the same (cg_emit_kernels) */
  /* The kernel being printed: its parameters, the task functions printed before it, and the
   * open task's saved output and indentation (cg_tasks_open). */
  /* Every kernel call of the entries so far (kiln_site), and the entry being printed. */
  struct CgSite *sites;
  int nsites, entry;
  const Node *knode;
  CgParam params[CG_MAX_PARAMS];
  int nparams;
  Buf *pre;
  int ntasks;
  Buf *task_out;
  int task_indent;
  /* cg_nest_open splits its outer loop into tasks (a large elementwise kernel with workers);
   * nest_task_count is then the open tasks' count, for cg_nest_close. */
  bool nest_tasks;
  const char *nest_task_count;
  int64_t nest_task_scale;  /* elements per iteration of the nest's innermost loop (a sum's run) */
} Cg;

/* Elements per task of a parallel elementwise loop. */
enum { NEST_TASK_ELEMENTS = 16384 };

/* Element types: the C type and the suffix of its math.h functions (expf, exp). */
static inline const char *ctype(DType t) {
  static const char *const names[] = {[DT_F32] = "float", [DT_F64] = "double",
                                      [DT_I32] = "int32_t"};
  return names[t];
}

/* Suffix of math.h functions for a type: expf, exp. */
static inline const char *mathsfx(DType t) { return t == DT_F32 ? "f" : ""; }

/* A kernel's input is an arena tensor (a pointer parameter a, b, c, ...), a scalar constant
 * (printed as a literal) or a literal array (read from a static double array). */
static inline bool is_scalar_const(const Node *x) { return x->op == OP_CONST && x->data < 0; }
static inline bool is_data_const(const Node *x) { return x->op == OP_CONST && x->data >= 0; }
static inline bool in_arena(const Node *x) { return x->op != OP_CONST; }

static inline const char *lit_name(const Cg *cg, int data) { return cg->litname[data]; }

/* A strided operand of a loop nest: element = base[sum_k i_k * stride[k]]. */
typedef struct Opnd {
  const Node *n;           /* the node read (for constants), NULL for the output */
  int k;                   /* input index, or -1 for the output y */
  Sz stride[IR_MAX_RANK];  /* per iteration axis, 0 = broadcast / reduced */
  const char *name;        /* if set, element = name[idx] (a fused loop's operands), */
  const char *cast;        /* or ((cast)name[idx]) with this set */
  const char *elem;        /* set by cg_nest_open */
} Opnd;

/* Operands of one loop nest at most: a fused loop's outputs and its leaves. */
#define NEST_MAX_OPS (3 * SCHED_FUSE_MAX_NODES + 8)

/* An emitter prints the body of node n's kernel: y (the output) and a, b, c, d for the inputs
 * held in the arena. One per op, in cg_file.c's table. */
typedef void (*CgEmit)(Cg *cg, const Node *n);

/* Fusion as the schedule decided it. */
static inline bool is_fused(const Cg *cg, int id) { return cg->s->node[id].fused; }
static inline int into_of(const Cg *cg, int id) { return cg->s->node[id].into; }

/* The operands of tree kernel `root` left in memory: its distinct arena operands, passed as
 * pointer parameters x0, x1, ... (except those in the storage of one of its outputs: an in-place
 * update's old value, read through that output's pointer), and its literal arrays; and the members
 * its loop stores besides root, passed as z0, z1, ... */
typedef struct CgTreeArgs {
  Cg *cg;
  const Node *root;
  bool all;  /* collect the operands in its outputs' storage too (for check_plan) */
  int nout, out[SCHED_FUSE_MAX_NODES];                /* stored members */
  const char *outelem[SCHED_FUSE_MAX_NODES];
  int n, ndc;
  int id[2 * SCHED_FUSE_MAX_NODES + 2];
  int dc[2 * SCHED_FUSE_MAX_NODES + 2];            /* literal arrays (CONST with data) */
  const char *elem[2 * SCHED_FUSE_MAX_NODES + 2];  /* element expressions, set by cg_emit_tree */
  const char *dcelem[2 * SCHED_FUSE_MAX_NODES + 2];
  const char *yelem;
  int nlocal, local[SCHED_FUSE_MAX_NODES];  /* inner nodes in registers v0, v1, ... */
} CgTreeArgs;

/* ---- cg_file.c: tasks ---- */

/* Parallel tasks (kiln_abi.h). The lines printed between cg_tasks_open and cg_tasks_close become
 * the body of a task function, where `task_var` is the task's number and `worker` its worker's
 * (0 .. the node's schedule's workers - 1), with the kernel's parameters and the int64_t
 * `locals` of the kernel in scope; the kernel then runs `ntasks` (a C expression) of them through
 * its `ex` and continues when all have finished. Only in kernels whose node has workers > 1. */
void cg_tasks_open(Cg *cg, const char *task_var);
void cg_tasks_close(Cg *cg, const char *ntasks, const char *const *locals, int nlocals);

/* ---- cg_loop.c: sizes, identifiers, operands, the strided loop-nest printer ---- */
extern const char *const cg_param_names[IR_MAX_IN];
Sz sz_dim(const Cg *cg, Dim d);
Sz sz_prod(const Cg *cg, const Shape *s, int from, int to);
const char *sz_c(const Cg *cg, Sz s);
bool cg_ident_ok(const char *s);
void cg_checked_name(Cg *cg, const char *s, Loc loc, const char *what);
const char *cg_c_ident(Cg *cg, const char *s);
const char *cg_dbl(Cg *cg, double v);
void cg_line(Cg *cg, const char *fmt, ...) KILN_PRINTF(2, 3);
const char *cg_scalar(Cg *cg, double v, DType t);
const char *cg_in_at(Cg *cg, const Node *n, int k, const char *idx);
Sz cg_stride_of(const Cg *cg, const Shape *s, int k);
void cg_broadcast_strides(const Cg *cg, const Shape *in, const Shape *it, Sz *st);
int cg_nest_open(Cg *cg, int rank, const Sz *dims, int nop, Opnd *ops);
void cg_nest_close(Cg *cg, int depth);
/* A reduction's runs (the nest over its first k0 axes of dims, each iteration summing a run of
 * `run` elements into acc, `numel` doubles in scratch) as tasks when n has workers: then
 * cg_runs_open sets *runs to one double per run after acc, in row-major order, and makes the
 * next cg_nest_open split its outer loop into tasks (blocks of about NEST_TASK_ELEMENTS
 * elements); the caller's nest stores each run's sum in runs (with nop + 1 operands) instead of
 * adding it to acc; after its cg_nest_close, cg_runs_close adds the runs into acc (y's
 * operand's strides) in the order the serial nest would. So the sums do not depend on the
 * threads. Returns whether the runs are tasks (cg_runs_close is then due). */
bool cg_runs_open(Cg *cg, const Node *n, int k0, const Sz *dims, Sz run, const char *numel,
                  Opnd *runs);
void cg_runs_close(Cg *cg, int k0, const Sz *dims, const Opnd *y, const Opnd *runs);

/* ---- cg_elem.c: elementwise, reductions, matmul, losses, softmax, layout ---- */
/* The C spelling of each elementwise op: $a, $b the operands, $f the math.h suffix, $t the C
 * type, $v attr.value. */
extern const char *const cg_op_c[OP_COUNT];
const char *cg_expand_template(Cg *cg, const char *tpl, const char *a, const char *b, DType t,
                               double v);
void cg_emit_map(Cg *cg, const Node *n);
void cg_emit_transpose(Cg *cg, const Node *n);
void cg_emit_zero(Cg *cg, const Node *n);
void cg_emit_reduce(Cg *cg, const Node *n);
void cg_emit_sum_to(Cg *cg, const Node *n);
void cg_emit_numel(Cg *cg, const Node *n);
void cg_emit_reshape(Cg *cg, const Node *n);
void cg_emit_matmul(Cg *cg, const Node *n);
void cg_emit_cross_entropy(Cg *cg, const Node *n);
void cg_emit_cross_entropy_grad(Cg *cg, const Node *n);
void cg_emit_softmax(Cg *cg, const Node *n);
void cg_emit_dropout(Cg *cg, const Node *n);
void cg_emit_concat(Cg *cg, const Node *n);
void cg_emit_slice(Cg *cg, const Node *n);
void cg_emit_one_hot(Cg *cg, const Node *n);
void cg_emit_randn(Cg *cg, const Node *n);
void cg_emit_allreduce(Cg *cg, const Node *n);
void cg_emit_maxpool2d_pick(Cg *cg, const Node *n);
void cg_emit_gather(Cg *cg, const Node *n);
void cg_emit_gather_grad(Cg *cg, const Node *n);
void cg_emit_leaf(Cg *cg, const Node *n);

/* ---- cg_window.c: convolutions (direct and im2col + GEMM) and pools ---- */
void cg_emit_conv2d(Cg *cg, const Node *n);
void cg_emit_conv2d_bwd_data(Cg *cg, const Node *n);
void cg_emit_conv2d_bwd_filter(Cg *cg, const Node *n);
void cg_emit_maxpool2d(Cg *cg, const Node *n);
void cg_emit_maxpool2d_grad(Cg *cg, const Node *n);
void cg_emit_avgpool2d(Cg *cg, const Node *n);
void cg_emit_avgpool2d_grad(Cg *cg, const Node *n);
/* The loop over a weight gradient's images in waves of `workers` (with workers, task t of the
 * wave starting at image n0; else one image at a time, t = 0), with `n` the image: the loop and
 * task are open after cg_image_waves_open; cg_image_waves_close closes the task (the caller then
 * adds the wave's results in image order) but not the loop. */
void cg_image_waves_open(Cg *cg, const char *B, int workers);
void cg_image_waves_close(Cg *cg, const char *B, int workers);

/* ---- cg_fuse.c: fused elementwise trees (the analysis is sched.c's) ---- */
bool cg_is_tree(const Cg *cg, const Node *n);
bool cg_is_single(const Shape *s);
void cg_tree_arg(int x, void *arg);
void cg_tree_args(Cg *cg, const Node *root, CgTreeArgs *ta, bool all);
void cg_tree_comment(Cg *cg, const Node *n, Buf *b);
void cg_emit_tree(Cg *cg, const Node *n, CgTreeArgs *ta);
void cg_emit_reduce_tree(Cg *cg, const Node *n, CgTreeArgs *ta);

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
/* Around a micro-kernel: the attribute before its definition (noinline, FMAs allowed) and the
 * pragma opening its body (clang's way of allowing them). */
void cg_fma_function(Buf *o);
void cg_fma_pragma(Buf *o);

/* ================================ cg_implicit.c ================================ */

/* A convolution as an implicit GEMM (the schedule's CONV_IMPLICIT): the forward and weight
 * gradient vectorised along output channels, the input gradient along rows; its micro-kernels
 * go before the kernel (cg->pre). */
void cg_emit_conv_implicit(Cg *cg, const Node *n);

#endif
