/*
 * ir.h — the graph IR: ops (ops.def), nodes with symbolic shapes and source locations,
 * entries, and the rules that hold for every node.
 *
 *   ir.c     nodes, builders (hash-consing = CSE), entries, printing
 *   dot.c    an entry as Graphviz DOT, kernels as clusters (kiln graph)
 *   shape.c  shape and type rules per op, FLOP counts
 *   opt.c    algebraic rewrites, applied by ir_node as nodes are built
 *
 * A tensor's life: the frontend calls ir_node() for `h = relu(x)`; shape.c gives it a shape on
 * creation (so errors point at the model line); xform/ adds its gradient nodes; plan/ gives it an
 * arena offset; cg/ prints its loop nest; ref/ is its reference meaning.
 */
#ifndef KILN_IR_H
#define KILN_IR_H

#include "base/base.h"
#include "kiln_abi.h"

typedef enum Op {
#define OP(id, name, arity) OP_##id,
#include "ops.def"
#undef OP
  OP_COUNT
} Op;

typedef enum DType { DT_F32 = KILN_F32, DT_F64 = KILN_F64, DT_I32 = KILN_I32 } DType;

#define IR_MAX_RANK KILN_ABI_MAX_RANK
#define IR_MAX_METRICS 8
#define IR_MAX_OUTPUTS 64
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
  uint32_t salt;      /* DROPOUT, RANDN: tells random sites apart (same counter, other draws) */
} Attr;

/* Roles of STATE and leaf nodes, matching the ABI's roles. */
typedef enum Role {
  ROLE_NONE = -1,
  ROLE_PARAM = KILN_ROLE_PARAM,
  ROLE_STATE = KILN_ROLE_STATE,
  ROLE_HYPER = KILN_ROLE_HYPER,
  ROLE_INPUT = KILN_ROLE_INPUT,
  ROLE_OPT = KILN_ROLE_OPT,
  ROLE_GRAD = KILN_ROLE_GRAD
} Role;

/* The data field an input is fed from (`input x: ... from images`), as the frontend parses it;
 * the ABI names the field by text (kiln_tensor.feed, see ir_feed_name). */
enum { KILN_SRC_NONE = 0, KILN_SRC_IMAGES = 1, KILN_SRC_LABELS = 2 };
const char *ir_feed_name(int source);                    /* "images", "labels", or NULL */

/* How a leaf gets its value (PARAM/STATE: initialiser; INPUT: data source). */
typedef struct LeafInfo {
  int init;           /* KILN_INIT_* */
  double init_a, init_b;
  int64_t fan_in, fan_out;
  int source;         /* KILN_SRC_* for inputs */
  double scale;       /* fed value = the field's value * scale (images / 255) */
  bool weight;        /* PARAM: a weight that `regularize` penalises and max_norm projects
                         (linear and conv2d weights, `param` declarations of rank >= 2) */
  bool frozen;        /* PARAM: the train block freezes it (train.c): not differentiated, never
                         updated */
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

/* The entry points, in the order of the program's entries table (kiln_abi.h). */
typedef enum EntryKind {
  ENTRY_TRAIN = 0,  /* forward, backward and optimizer update in one step */
  ENTRY_EVAL = 1,   /* evaluation-mode forward */
  ENTRY_GRAD = 2,   /* forward and backward into the GRAD leaves, running statistics updated */
  ENTRY_APPLY = 3,  /* the optimizer update from the GRAD leaves */
  ENTRY_COUNT
} EntryKind;

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

typedef enum OptKind {
  OPT_SGD, OPT_ADAM, OPT_ADAGRAD, OPT_RMSPROP, OPT_ADADELTA, OPT_ADAMW
} OptKind;

/* Gradient clipping before the optimizer: torch.nn.utils.clip_grad_norm_ / clip_grad_value_. */
typedef enum ClipKind { CLIP_NONE, CLIP_NORM, CLIP_VALUE } ClipKind;

/* The model file's train block. */
/* Layer or parameter names as the train block gives them (a layer name stands for its
 * parameters "<layer>.*"), each with its location for messages. */
typedef struct TrainNames {
  const char **names;
  Loc *locs;
  int n;
} TrainNames;

/* param_groups: parameters whose learning rate is lr instead of the model's. */
typedef struct TrainGroup {
  TrainNames members;
  double lr;
  Loc loc;
} TrainGroup;

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
  ClipKind clip;
  double clip_at;     /* clip_grad_norm_'s max_norm or clip_grad_value_'s clip_value */
  int schedule;       /* KILN_LR_*: the learning-rate schedule the trainer follows per epoch */
  int64_t step_size;  /* KILN_LR_STEP */
  double gamma;       /* KILN_LR_STEP, KILN_LR_EXPONENTIAL */
  int64_t t_max;      /* KILN_LR_COSINE */
  double eta_min;     /* KILN_LR_COSINE */
  int64_t warmup;     /* epochs of linear warm-up before the schedule; 0 = none */
  int64_t batch;      /* 0: not given */
  int epochs;
  int64_t steps;      /* full-batch updates for in-file data */
  uint64_t seed;
  int init;           /* KILN_INIT_* override for weights, or -1 for each layer's default */
  TrainNames freeze;  /* parameters that keep their values: no gradient, no update */
  TrainGroup *groups; /* param_groups (graph pool) */
  int ngroups;
  bool diagnose;      /* the eval entry also outputs every activation, "diag.<relu1>", for the
                         trainer's --diagnose (a compile option, not a setting of the file) */
  bool lsuv;          /* init = lsuv: orthogonal weights, then each layer's output scaled to unit
                         variance on a training batch, first to last (the trainer does it) */
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
  const char *output_name;  /* its variable */
  int more_outputs[IR_MAX_OUTPUTS];  /* further `output` statements, in evaluation mode: the
                                        eval entry's "eval.output.<name>" */
  const char *more_output_names[IR_MAX_OUTPUTS];
  int nmore_outputs;
  int metrics[IR_MAX_METRICS];  /* `metric NAME`: scalars in evaluation mode, reported by the
                                   trainer as "eval.metric.<name>" */
  const char *metric_names[IR_MAX_METRICS];
  int nmetrics;
  /* Each layer with a weight, in model order, from the evaluation pass: the weight and the
   * layer's output (the convolution or product plus its bias), for init = lsuv. */
  int *layer_weight, *layer_output;
  int nlayers;
  /* The relu, sigmoid and tanh outputs of the evaluation pass and their names (relu1, ...), for
   * the trainer's --diagnose. */
  int *acts;
  const char **act_names;
  int nacts;
  TrainSpec train;
  /* Compiled for data-parallel training (docs/distributed.md): batch statistics and the loss's
   * batch mean are taken over every process through allreduce nodes. Set before lowering. */
  bool data_parallel;
  /* Set by train_build. */
  Entry entries[ENTRY_COUNT];
  int *grads;         /* grads[i] = gradient node of the i-th PARAM (order of params[]) */
  int *grad_leaves;   /* grad_leaves[i] = the i-th PARAM's GRAD leaf "grad.<param>" (pool) */
  int *params;        /* PARAM node ids in creation order */
  int nparams;
} Graph;

Graph *ir_new(const char *name);
void ir_free(Graph *g);

/* Builders. All of them check types and shapes (shape.c) and fail at loc on a mismatch. */
int ir_sym(Graph *g, const char *name);                  /* index of symbol, created on demand */
int ir_leaf(Graph *g, Op op, Role role, const char *name, DType dt, Shape s, Loc loc);
/* Fails at loc unless every dimension of s is positive and its element count is within the
 * bound every tensor keeps (so any product of its dimensions fits in int64): ir_leaf's check,
 * for code that multiplies a leaf's dimensions before making it. */
void ir_check_leaf_shape(Graph *g, const char *name, const Shape *s, Loc loc);
int ir_literal(Graph *g, const double *v, int64_t n);    /* copies v into Graph.data */
int ir_node(Graph *g, Op op, int nin, const int *in, const Attr *a, Loc loc);
int ir_const(Graph *g, double value, DType dt, Loc loc); /* scalar */
int ir_unary(Graph *g, Op op, int x, Loc loc);
int ir_binary(Graph *g, Op op, int a, int b, Loc loc);
/* The derivative of maximum(a, b) with respect to a: 1 where a > b, `share` at a tie, else 0
 * (with respect to b it is ir_maximum_weight(g, b, a, 1 - share)). Built from sign(a - b), whose
 * own derivative is zero, so it serves reverse and forward mode alike. */
int ir_maximum_weight(Graph *g, int a, int b, double share, DType dt, Loc loc);
/* The derivative of softplus at x: sigmoid(x), and exactly 1 above the threshold, where softplus
 * is x itself (PyTorch's). */
int ir_softplus_slope(Graph *g, int x, DType dt, Loc loc);
int ir_reduce(Graph *g, Op op, int x, unsigned axes, bool keepdims, Loc loc);
int ir_reshape(Graph *g, int x, Shape s, Loc loc);
int ir_matmul(Graph *g, int a, int b, bool ta, bool tb, Loc loc);
int ir_transpose(Graph *g, int x, const int *perm, Loc loc);
/* Adds output name of entry e; what says what the name means (ir_claim_name; NULL: "an output
 * of the <e> entry"). */
void ir_add_output(Graph *g, EntryKind e, const char *name, int node, const char *what);
/* Rebuilds node n of g alone in h (empty): g's symbols, one INPUT leaf "in<i>" shaped like each
 * of n's inputs (ids into leaves), and n's op over them, whose id is returned. For checks that
 * take one op out of a model (kiln check --kernel, gradcheck's adjoint identity). */
int ir_isolate(Graph *h, const Graph *g, const Node *n, int *leaves);
/* Every name kiln makes up (gradients, optimizer state, hyper-parameters, outputs) passes here
 * before it is used: if one of the model's own tensors already has it, this fails at that
 * tensor's declaration, saying what kiln needs the name for (what, e.g. "the gradient of
 * 'w'"). Leaves and outputs share one namespace: the program's tensor table. */
void ir_claim_name(Graph *g, const char *name, const char *what);
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

/* Printing (kiln shapes, --dump-ir). */
void ir_print(Graph *g, FILE *out);
/* "param", "optimizer state", ...; NULL for ROLE_NONE. */
const char *ir_role_name(Role r);

extern const char *const entry_names[ENTRY_COUNT];      /* "train", "eval", "grad", "apply" */

/* The train block's defaults as the ABI's settings (kiln_abi.h): keys with numbers as text, in
 * the caller's storage (no allocation, so it cannot fail). */
#define IR_MAX_SETTINGS 16
typedef struct IrSettings {
  kiln_setting s[IR_MAX_SETTINGS];
  char text[IR_MAX_SETTINGS][32];
  int n;
} IrSettings;
void ir_settings(const Graph *g, IrSettings *out);

/* ================================ dot.c ================================ */

/* The kernels computing an entry's nodes, for ir_print_dot to draw as clusters. ir/ knows no
 * schedule: the driver fills this in from sched/ and cg/. The arrays are per node id. */
typedef struct IrDotKernels {
  const char *title;          /* the drawing's title, or NULL: the model and the entry */
  const int *in;              /* the node whose kernel computes this one (itself for the node a
                                 kernel is called for), or -1: none (a leaf, a view of its
                                 input) or several (recomputed in each of its consumers' loops) */
  const char *const *name;    /* at a kernel's node: the function's name, "k45_conv2d"; a node
                                 whose in[] names a node without one is drawn outside clusters */
  const char *const *about;   /* at a kernel's node: its tooltip, or NULL */
  const char *const *note;    /* a line added to the node's label, or NULL */
} IrDotKernels;
/* Graphviz DOT (kiln graph) of the nodes entry e runs: each with its name, op, shape and type,
 * leaves filled by role, the model line in a tooltip; the entry's outputs and updates; with
 * kernels (NULL: none), each kernel a cluster around the nodes it computes. */
void ir_print_dot(const Graph *g, EntryKind e, const IrDotKernels *kernels, FILE *out);

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

/* ================================ window.c ================================ */

/* A 2-D window op's geometry: forward input x [N, C, H, W], forward output y [N, O, Ho, Wo]
 * (O = C for pools), G channel groups, kernel KH×KW, stride SH×SW, dilation DH×DW, padding
 * top/bottom/left/right. Tap (p, q) of output (i, j) reads input row i*SH - PT + p*DH and column
 * j*SW - PL + q*DW (nothing in the padding). */
typedef struct Window {
  Dim N;
  int64_t C, H, W, O, Ho, Wo, G;
  int64_t KH, KW, SH, SW, DH, DW, PT, PB, PL, PR;
} Window;

/* Whether op is a convolution, a pool or one of their adjoints. */
bool op_is_window(Op op);
/* The geometry of window op n (its shapes already inferred). */
Window win_of(const Graph *g, const Node *n);
/* Output extent along one axis of an input extent `in`: (in + pads - span) / stride + 1 with
 * span = dilation*(kernel-1) + 1; -1 when an argument is out of range or the window is larger
 * than the padded input. */
int64_t win_extent(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t pad_lo,
                   int64_t pad_hi);
/* The output columns [*j0, *j1) whose tap column q lands inside the input (empty: j0 == j1). */
void win_cols(const Window *w, int64_t q, int64_t *j0, int64_t *j1);
/* Whether the windows tile the input without overlap or padding (kernel = stride, at most 16
 * taps): every tap in bounds, every input element in at most one window. */
bool win_tiles(const Window *w);
/* Whether the windows tile the input and cover it exactly: no row or column left over, so an
 * image's rows of windows are its input rows taken KH at a time. */
bool win_tiles_exactly(const Window *w);

#endif
