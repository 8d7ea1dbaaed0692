/*
 * ir.c — the graph IR: a typed, SSA-ordered list of tensor operations.
 *
 * Nodes are only ever created through the builders below, which run the op's shape rule
 * (shape.c) immediately — so a mismatch is reported at the model line that caused it — and
 * hash-cons the result: building the same op on the same inputs with the same attributes twice
 * returns the first node. That is common-subexpression elimination for free, and it is what
 * lets the frontend lower a model once per mode (train, eval) without duplicating the parts
 * that do not differ.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

const char *const op_names[OP_COUNT] = {
#define OP(id, name, arity) [OP_##id] = name,
#include "ops.def"
#undef OP
};

const int op_arity[OP_COUNT] = {
#define OP(id, name, arity) [OP_##id] = arity,
#include "ops.def"
#undef OP
};

const char *const entry_names[ENTRY_COUNT] = {"train", "eval", "grad", "apply"};

const char *ir_feed_name(int source) {
  return source == KILN_SRC_IMAGES ? "images" : source == KILN_SRC_LABELS ? "labels" : NULL;
}

static void setting(IrSettings *o, const char *key, const char *fmt, ...) KILN_PRINTF(3, 4);
static void setting(IrSettings *o, const char *key, const char *fmt, ...) {
  KILN_ASSERT(o->n < IR_MAX_SETTINGS);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(o->text[o->n], sizeof o->text[o->n], fmt, ap);
  va_end(ap);
  o->s[o->n] = (kiln_setting){key, o->text[o->n]};
  o->n++;
}

void ir_settings(const Graph *g, IrSettings *o) {
  const TrainSpec *t = &g->train;
  o->n = 0;
  setting(o, "epochs", "%d", t->epochs);
  setting(o, "steps", "%" PRId64, t->steps);
  setting(o, "seed", "%" PRIu64, t->seed);
  setting(o, "patience", "%d", t->patience);
  if (t->lsuv)
    setting(o, "lsuv", "%d", 1);
  if (g->data_parallel)
    setting(o, "data_parallel", "%d", 1);
  /* The learning-rate schedule only when there is one, so other programs keep their table.
   * %.17g gives back the same double through strtod. */
  if (t->schedule != KILN_LR_CONSTANT)
    setting(o, "lr_schedule", "%d", t->schedule);
  if (t->schedule == KILN_LR_STEP)
    setting(o, "lr_step_size", "%" PRId64, t->step_size);
  if (t->schedule == KILN_LR_STEP || t->schedule == KILN_LR_EXPONENTIAL)
    setting(o, "lr_gamma", "%.17g", t->gamma);
  if (t->schedule == KILN_LR_COSINE) {
    setting(o, "lr_t_max", "%" PRId64, t->t_max);
    setting(o, "lr_eta_min", "%.17g", t->eta_min);
  }
  if (t->warmup > 0)
    setting(o, "lr_warmup", "%" PRId64, t->warmup);
}

Graph *ir_new(const char *name) {
  Pool *pool = pool_new();
  Trap t;
  if (!KILN_TRY(&t)) {
    pool_free(pool);
    kiln_rethrow(&t);
  }
  Graph *g = pool_alloc(pool, sizeof *g);
  g->pool = pool;
  g->name = pool_strdup(pool, name ? name : "model");
  g->loss_train = g->loss_eval = g->output_eval = -1;
  g->train = (TrainSpec){.optimizer = OPT_ADAM, .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999,
                         .eps = 1e-8, .epochs = 1, .seed = 1, .init = -1};
  kiln_trap_end(&t);
  return g;
}

void ir_free(Graph *g) {
  if (!g) return;
  for (int b = 0; b < g->nblocks; b++) free(g->blocks[b]);
  free(g->blocks);
  free(g->hash);
  for (int e = 0; e < ENTRY_COUNT; e++) {
    free(g->entries[e].outputs);
    free(g->entries[e].updates);
  }
  free(g->data);
  free(g->params);
  free(g->grads);
  free(g->layer_weight);
  free(g->layer_output);
  free(g->acts);
  free(g->act_names);
  pool_free(g->pool);  /* g itself lives in the pool */
}

static void *grow(void *p, int *cap, int need, size_t elem) {
  if (need <= *cap) return p;
  int n = *cap ? *cap : 16;
  while (n < need) n *= 2;
  void *r = kiln_realloc(p, (size_t)n * elem);
  *cap = n;
  return r;
}

int ir_sym(Graph *g, const char *name) {
  for (int i = 0; i < g->nsyms; i++)
    if (!strcmp(g->syms[i], name)) return i;
  if (g->nsyms == IR_MAX_SYMS) kiln_fail((Loc){0}, "too many dimension symbols");
  g->syms[g->nsyms] = pool_strdup(g->pool, name);
  return g->nsyms++;
}

static Node *new_node(Graph *g, Op op, Loc loc) {
  if (g->nnodes == g->nblocks * IR_BLOCK) {
    g->blocks = grow(g->blocks, &g->capblocks, g->nblocks + 1, sizeof(Node *));
    Node *block = kiln_malloc(IR_BLOCK * sizeof(Node));
    g->blocks[g->nblocks++] = block;
  }
  Node *n = ir_at(g, g->nnodes);
  memset(n, 0, sizeof *n);
  n->id = g->nnodes++;
  n->op = op;
  n->role = ROLE_NONE;
  n->data = -1;
  n->loc = loc;
  return n;
}

/* The most elements one tensor may hold, counting the batch symbol as 1: 2^40, 4 TiB of f32 —
 * beyond any machine kiln targets, and small enough that element counts, byte sizes and index
 * arithmetic stay exact in int64 everywhere. plan.c checks again once the batch is bound. */
#define IR_MAX_NUMEL ((int64_t)1 << 40)

/* Every node passes here when it is made, so no later phase can overflow a size. */
static void check_numel(Graph *g, const Shape *s, Loc loc, const char *leaf_name, Op op) {
  int64_t n = 1;
  for (int i = 0; i < s->rank; i++) {
    int64_t d = s->d[i].n;
    if (d > 0 && n > IR_MAX_NUMEL / d) {
      char sb[192];
      kiln_fail(loc, "%s%s%s of shape %s would have more than 2^40 elements (the most one tensor "
                "may have)", leaf_name ? "'" : "the result of ",
                leaf_name ? leaf_name : op_names[op], leaf_name ? "'" : "",
                shape_str(g, s, sb, sizeof sb));
    }
    if (d > 0) n *= d;
  }
}

/* Checked identifiers are the only text from a model file that may reach generated C: segments
 * of [A-Za-z0-9_] joined by '.', the first starting with a letter or '_' (later ones may be a
 * loop index, "conv.3.weight", as in a PyTorch ModuleList). */
static bool is_checked_name(const char *s) {
  if (!s || !*s) return false;
  bool start = true, first = true;
  for (; *s; s++) {
    char c = *s;
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    bool digit = c >= '0' && c <= '9';
    if (c == '.') {
      if (start) return false;
      start = true;
      first = false;
      continue;
    }
    if (!(alpha || (digit && !(start && first)))) return false;
    start = false;
  }
  return !start;
}

void ir_check_leaf_shape(Graph *g, const char *name, const Shape *s, Loc loc) {
  for (int i = 0; i < s->rank; i++)
    if (s->d[i].n <= 0) kiln_fail(loc, "dimension %d of '%s' must be positive", i, name ? name : "?");
  check_numel(g, s, loc, name ? name : "?", OP_PARAM);
}

int ir_leaf(Graph *g, Op op, Role role, const char *name, DType dt, Shape s, Loc loc) {
  KILN_ASSERT(op_is_leaf(op));
  if (name && !is_checked_name(name)) kiln_fail(loc, "'%s' is not a valid tensor name", name);
  if (name && ir_find_leaf(g, name) >= 0) kiln_fail(loc, "tensor '%s' is defined twice", name);
  ir_check_leaf_shape(g, name, &s, loc);
  Node *n = new_node(g, op, loc);
  n->role = role;
  n->name = name ? pool_strdup(g->pool, name) : NULL;
  n->dtype = dt;
  n->shape = s;
  if (op == OP_PARAM) {
    g->params = kiln_realloc(g->params, (size_t)(g->nparams + 1) * sizeof(int));
    g->params[g->nparams++] = n->id;
  }
  return n->id;
}

int ir_literal(Graph *g, const double *v, int64_t n) {
  g->data = grow(g->data, &g->capdata, g->ndata + 1, sizeof(Literal));
  Literal *l = &g->data[g->ndata];
  l->n = n;
  l->v = pool_alloc(g->pool, (size_t)(n > 0 ? n : 1) * sizeof(double));
  if (n > 0) memcpy(l->v, v, (size_t)n * sizeof(double));
  return g->ndata++;
}

int ir_find_leaf(Graph *g, const char *name) {
  for (int i = 0; i < g->nnodes; i++)
    if (op_is_leaf(ir_at(g, i)->op) && ir_at(g, i)->name && !strcmp(ir_at(g, i)->name, name))
      return i;
  return -1;
}

/* ---- hash-consing ---- */

/* Attributes are compared and hashed field by field, never as bytes: Attr has padding (after
 * the bools, inside every Dim of the reshape target) that a struct copy may fill with anything,
 * and two equal computations must find each other. A field added to Attr goes in attr_same.
 * Constants compare by their bits, so -0.0 stays apart from 0.0. */
static bool attr_same(const Attr *a, const Attr *b) {
  bool same = !memcmp(&a->value, &b->value, sizeof a->value) && a->dtype == b->dtype && a->axes == b->axes &&
              a->keepdims == b->keepdims && a->trans_a == b->trans_a &&
              a->trans_b == b->trans_b && a->shape.rank == b->shape.rank &&
              a->groups == b->groups && a->count_include_pad == b->count_include_pad &&
              a->axis == b->axis && a->start == b->start && a->len == b->len &&
              a->salt == b->salt && !memcmp(a->perm, b->perm, sizeof a->perm) &&
              !memcmp(a->kernel, b->kernel, sizeof a->kernel) &&
              !memcmp(a->stride, b->stride, sizeof a->stride) &&
              !memcmp(a->dilation, b->dilation, sizeof a->dilation) &&
              !memcmp(a->pad, b->pad, sizeof a->pad) &&
              !memcmp(a->in_size, b->in_size, sizeof a->in_size);
  for (int k = 0; same && k < a->shape.rank; k++)
    same = a->shape.d[k].n == b->shape.d[k].n && a->shape.d[k].sym == b->shape.d[k].sym;
  return same;
}

static uint64_t node_key(const Node *n) {
  /* FNV-1a over the fields that define a computation (attributes: the ones most ops set). */
  uint64_t h = 1469598103934665603u;
  const unsigned char *p;
#define MIX(ptr, len) \
  for (p = (const unsigned char *)(ptr); p < (const unsigned char *)(ptr) + (len); p++) \
    h = (h ^ *p) * 1099511628211u;
  const Attr *a = &n->attr;
  MIX(&n->op, sizeof n->op);
  MIX(&n->nin, sizeof n->nin);
  MIX(n->in, sizeof n->in);
  MIX(&n->dtype, sizeof n->dtype);
  MIX(&a->value, sizeof a->value);
  MIX(&a->axes, sizeof a->axes);
  MIX(a->kernel, sizeof a->kernel);
  MIX(a->stride, sizeof a->stride);
  MIX(&a->axis, sizeof a->axis);
  MIX(&a->shape.rank, sizeof a->shape.rank);
  for (int k = 0; k < a->shape.rank; k++)
    MIX(&a->shape.d[k].n, sizeof a->shape.d[k].n);
#undef MIX
  return h;
}

static bool same_computation(const Node *a, const Node *b) {
  return a->op == b->op && a->nin == b->nin && !memcmp(a->in, b->in, sizeof a->in) &&
         a->dtype == b->dtype && attr_same(&a->attr, &b->attr);
}

static void hash_insert(Graph *g, int id) {
  if ((g->nnodes + 1) * 2 > g->hashcap) {
    int cap = g->hashcap ? g->hashcap * 2 : 1024;
    while (cap < g->nnodes * 4) cap *= 2;
    int *t = kiln_malloc((size_t)cap * sizeof(int));
    for (int i = 0; i < cap; i++) t[i] = -1;
    free(g->hash);
    g->hash = t;
    g->hashcap = cap;
    for (int i = 0; i < g->nnodes; i++)
      if (!op_is_leaf(ir_at(g, i)->op) && i != id) hash_insert(g, i);
  }
  uint64_t h = node_key(ir_at(g, id));
  int mask = g->hashcap - 1;
  for (int i = (int)(h & (uint64_t)mask);; i = (i + 1) & mask)
    if (g->hash[i] < 0) {
      g->hash[i] = id;
      return;
    }
}

static int hash_find(Graph *g, const Node *n) {
  if (!g->hashcap) return -1;
  uint64_t h = node_key(n);
  int mask = g->hashcap - 1;
  for (int i = (int)(h & (uint64_t)mask); g->hash[i] >= 0; i = (i + 1) & mask)
    if (same_computation(ir_at(g, g->hash[i]), n)) return g->hash[i];
  return -1;
}

int ir_node(Graph *g, Op op, int nin, const int *in, const Attr *a, Loc loc) {
  KILN_ASSERT(!op_is_leaf(op) || op == OP_CONST);
  KILN_ASSERT(nin >= 0 && nin <= IR_MAX_IN);
  if (op != OP_CONST && nin != op_arity[op])
    kiln_fail(loc, "%s takes %d input%s, got %d", op_names[op], op_arity[op],
              op_arity[op] == 1 ? "" : "s", nin);
  Node probe = {0};
  probe.op = op;
  probe.nin = nin;
  for (int i = 0; i < nin; i++) {
    KILN_ASSERT(in[i] >= 0 && in[i] < g->nnodes);
    probe.in[i] = in[i];
  }
  if (a) probe.attr = *a;
  probe.data = -1;
  probe.role = ROLE_NONE;
  probe.loc = loc;
  shape_infer(g, &probe);  /* fails at loc on a type or shape error */
  check_numel(g, &probe.shape, loc, NULL, op);
  int simpler = opt_rewrite(g, op, nin, probe.in, &probe.attr, loc);
  if (simpler >= 0) return simpler;
  int found = hash_find(g, &probe);
  if (found >= 0) return found;
  Node *n = new_node(g, op, loc);
  int id = n->id;
  probe.id = id;
  *n = probe;
  hash_insert(g, id);
  return id;
}

int ir_const(Graph *g, double value, DType dt, Loc loc) {
  Attr a = {0};
  a.value = value;
  a.dtype = dt;
  return ir_node(g, OP_CONST, 0, NULL, &a, loc);
}

int ir_unary(Graph *g, Op op, int x, Loc loc) { return ir_node(g, op, 1, &x, NULL, loc); }

/* s + (1 - s) sigmoid(x) with s = step(x - 20) = relu(sign(x - 20)). */
int ir_softplus_slope(Graph *g, int x, DType dt, Loc loc) {
  int over = ir_binary(g, OP_SUB, x, ir_const(g, 20.0, dt, loc), loc);
  int s = ir_unary(g, OP_RELU, ir_unary(g, OP_SIGN, over, loc), loc);
  int below = ir_binary(g, OP_SUB, ir_const(g, 1.0, dt, loc), s, loc);
  return ir_binary(g, OP_ADD, s,
                   ir_binary(g, OP_MUL, below, ir_unary(g, OP_SIGMOID, x, loc), loc), loc);
}

/* relu(s) + share (1 - s^2), s = sign(a - b): 1, share or 0. */
int ir_maximum_weight(Graph *g, int a, int b, double share, DType dt, Loc loc) {
  int s = ir_unary(g, OP_SIGN, ir_binary(g, OP_SUB, a, b, loc), loc);
  int w = ir_unary(g, OP_RELU, s, loc);
  if (share == 0)
    return w;
  int tie = ir_binary(g, OP_SUB, ir_const(g, 1.0, dt, loc), ir_binary(g, OP_MUL, s, s, loc), loc);
  return ir_binary(g, OP_ADD, w, ir_binary(g, OP_MUL, ir_const(g, share, dt, loc), tie, loc), loc);
}

int ir_binary(Graph *g, Op op, int a, int b, Loc loc) {
  int in[2] = {a, b};
  return ir_node(g, op, 2, in, NULL, loc);
}

int ir_reduce(Graph *g, Op op, int x, unsigned axes, bool keepdims, Loc loc) {
  Attr a = {0};
  a.axes = axes;
  a.keepdims = keepdims;
  return ir_node(g, op, 1, &x, &a, loc);
}

int ir_reshape(Graph *g, int x, Shape s, Loc loc) {
  if (shape_eq(&ir_at(g, x)->shape, &s)) return x;
  Attr a = {0};
  a.shape = s;
  return ir_node(g, OP_RESHAPE, 1, &x, &a, loc);
}

int ir_matmul(Graph *g, int a, int b, bool ta, bool tb, Loc loc) {
  Attr at = {0};
  at.trans_a = ta;
  at.trans_b = tb;
  int in[2] = {a, b};
  return ir_node(g, OP_MATMUL, 2, in, &at, loc);
}

int ir_transpose(Graph *g, int x, const int *perm, Loc loc) {
  Attr a = {0};
  int rank = ir_at(g, x)->shape.rank;
  bool identity = true;
  for (int i = 0; i < rank; i++) {
    a.perm[i] = perm[i];
    identity &= perm[i] == i;
  }
  if (identity) return x;
  return ir_node(g, OP_TRANSPOSE, 1, &x, &a, loc);
}

void ir_claim_name(Graph *g, const char *name, const char *what) {
  int id = ir_find_leaf(g, name);
  if (id >= 0)
    kiln_fail(ir_at(g, id)->loc, "'%s' is also the name of a tensor kiln generates: %s; rename it",
              name, what);
}

int ir_isolate(Graph *h, const Graph *g, const Node *n, int *leaves) {
  for (int i = 0; i < g->nsyms; i++)
    ir_sym(h, g->syms[i]);
  for (int i = 0; i < n->nin; i++) {
    const Node *x = ir_at(g, n->in[i]);
    leaves[i] = ir_leaf(h, OP_INPUT, ROLE_INPUT, pool_printf(h->pool, "in%d", i), x->dtype,
                        x->shape, n->loc);
  }
  return ir_node(h, n->op, n->nin, leaves, &n->attr, n->loc);
}

void ir_add_output(Graph *g, EntryKind e, const char *name, int node, const char *what) {
  ir_claim_name(g, name, what ? what : pool_printf(g->pool, "an output of the %s entry",
                                                    entry_names[e]));
  Entry *en = &g->entries[e];
  en->outputs = grow(en->outputs, &en->capoutputs, en->noutputs + 1, sizeof(Output));
  en->outputs[en->noutputs++] = (Output){pool_strdup(g->pool, name), node};
}

void ir_add_update(Graph *g, EntryKind e, int target, int value) {
  Entry *en = &g->entries[e];
  KILN_ASSERT(op_is_leaf(ir_at(g, target)->op));
  en->updates = grow(en->updates, &en->capupdates, en->nupdates + 1, sizeof(Update));
  en->updates[en->nupdates++] = (Update){target, value};
}

int ir_reachable(const Graph *g, EntryKind e, unsigned char *mark) {
  const Entry *en = &g->entries[e];
  memset(mark, 0, (size_t)g->nnodes);
  for (int i = 0; i < en->noutputs; i++) mark[en->outputs[i].node] = 1;
  for (int i = 0; i < en->nupdates; i++) mark[en->updates[i].value] = 1;
  int count = 0;
  for (int id = g->nnodes - 1; id >= 0; id--) {
    if (!mark[id]) continue;
    count++;
    const Node *n = ir_at(g, id);
    for (int k = 0; k < n->nin; k++) mark[n->in[k]] = 1;
  }
  return count;
}

/* ---- shapes ---- */

Shape shape_of(int rank, const int64_t *dims) {
  Shape s = {0};
  s.rank = rank;
  for (int i = 0; i < rank; i++) s.d[i] = (Dim){dims[i], -1};
  return s;
}

bool dim_eq(Dim a, Dim b) { return a.n == b.n && a.sym == b.sym; }

bool shape_eq(const Shape *a, const Shape *b) {
  if (a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (!dim_eq(a->d[i], b->d[i])) return false;
  return true;
}

int64_t dim_value(Dim d, const int64_t *symvals) {
  return d.sym >= 0 ? d.n * symvals[d.sym] : d.n;
}

int64_t shape_numel(const Shape *s, const int64_t *symvals) {
  int64_t n = 1;
  for (int i = 0; i < s->rank; i++) n *= dim_value(s->d[i], symvals);
  return n;
}

char *shape_str(const Graph *g, const Shape *s, char *buf, size_t n) {
  size_t len = 0;
  len += (size_t)snprintf(buf + len, n - len, "[");
  for (int i = 0; i < s->rank && len < n; i++) {
    Dim d = s->d[i];
    const char *sep = i ? ", " : "";
    if (d.sym < 0)
      len += (size_t)snprintf(buf + len, n - len, "%s%lld", sep, (long long)d.n);
    else if (d.n == 1)
      len += (size_t)snprintf(buf + len, n - len, "%s%s", sep, g->syms[d.sym]);
    else
      len += (size_t)snprintf(buf + len, n - len, "%s%lld*%s", sep, (long long)d.n, g->syms[d.sym]);
  }
  if (len < n) snprintf(buf + len, n - len, "]");
  return buf;
}

const char *dtype_name(DType t) {
  static const char *const names[] = {[DT_F32] = "f32", [DT_F64] = "f64", [DT_I32] = "i32"};
  return names[t];
}

size_t dtype_size(DType t) { return t == DT_F64 ? 8 : 4; }

bool dtype_is_float(DType t) { return t == DT_F32 || t == DT_F64; }

/* ---- printing ---- */

static const char *role_names[] = {[ROLE_PARAM] = "param", [ROLE_STATE] = "state",
                                   [ROLE_HYPER] = "hyper", [ROLE_INPUT] = "input",
                                   [ROLE_OPT] = "optimizer state", [ROLE_GRAD] = "gradient"};

const char *ir_role_name(Role r) { return r == ROLE_NONE ? NULL : role_names[r]; }

void ir_print(Graph *g, FILE *out) {
  char sb[128];
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = ir_at(g, i);
    fprintf(out, "%%%-4d %-18s %s%-16s", n->id, op_names[n->op], dtype_name(n->dtype),
            shape_str(g, &n->shape, sb, sizeof sb));
    for (int k = 0; k < n->nin; k++) fprintf(out, " %%%d", n->in[k]);
    if (n->op == OP_CONST && n->data < 0) fprintf(out, " %.9g", n->attr.value);
    if (n->name) fprintf(out, "  ; %s", n->name);
    if (n->role != ROLE_NONE) fprintf(out, " (%s)", role_names[n->role]);
    fputc('\n', out);
  }
  for (int e = 0; e < ENTRY_COUNT; e++) {
    Entry *en = &g->entries[e];
    if (!en->noutputs && !en->nupdates) continue;
    fprintf(out, "entry %s:", entry_names[e]);
    for (int i = 0; i < en->noutputs; i++)
      fprintf(out, " %s=%%%d", en->outputs[i].name, en->outputs[i].node);
    for (int i = 0; i < en->nupdates; i++)
      fprintf(out, " %s<-%%%d", ir_at(g, en->updates[i].target)->name, en->updates[i].value);
    fputc('\n', out);
  }
}
