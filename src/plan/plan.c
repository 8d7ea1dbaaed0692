/*
 * plan.c — the static memory plan: one arena, every offset known at compile time.
 *
 * Layout: persistent tensors (parameters, buffers, optimizer state, hyper-parameters), then
 * inputs, then temporaries. Temporaries share space: two computed nodes may overlap in the
 * arena only if no entry point has both alive at once. Liveness is per entry (a node is alive
 * from its definition to its last use in that entry; entry outputs and update values to the
 * end), and since entries never run concurrently a node's offset only has to avoid the nodes it
 * meets in some entry. Placement is greedy first-fit, largest first.
 *
 * The plan also produces the kiln_tensor table (kiln_abi.h) that the generated program exports
 * and the reference runtime's backend mirrors, so both runtimes present identical names.
 */
#include <stdlib.h>
#include <string.h>

#include "plan/plan.h"
#include "cg/cg.h"

#define ALIGN 64

static int64_t align_up(int64_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

/* Working arrays of one plan_build live in a pool freed on both paths. */
static _Thread_local Pool *scratch_pool;

static void *xcalloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) kiln_fail((Loc){0}, "out of memory");
  return pool_alloc(scratch_pool, n * size);
}

/* The most bytes one program's arena may need: 2^46 (64 TiB). Together with the per-tensor
 * bound of ir.c it keeps every offset and size exact in int64. */
#define PLAN_MAX_BYTES ((int64_t)1 << 46)

/* n's size in bytes with the batch bound, or -1 if it exceeds PLAN_MAX_BYTES. */
static int64_t checked_bytes(const Node *n, const int64_t *symvals) {
  int64_t b = (int64_t)dtype_size(n->dtype);
  for (int i = 0; i < n->shape.rank; i++) {
    Dim d = n->shape.d[i];
    int64_t v = d.n;
    if ((d.sym >= 0 && __builtin_mul_overflow(v, symvals[d.sym], &v)) ||
        __builtin_mul_overflow(b, v, &b) || b > PLAN_MAX_BYTES)
      return -1;
  }
  return b;
}

/* Adds size to *top (an arena position), failing when the arena grows past PLAN_MAX_BYTES. */
static void arena_grow(int64_t *top, int64_t size, int64_t batch) {
  if (size > PLAN_MAX_BYTES - *top)
    kiln_fail((Loc){0}, "the program needs more than 64 TiB of memory for batch %lld",
              (long long)batch);
  *top += size;
}

static bool needs_storage(const Node *n) {
  /* Scalar and literal constants are printed into the code, not stored in the arena. */
  return n->op != OP_CONST;
}

static int64_t node_bytes(const Node *n, const int64_t *symvals) {
  return align_up(shape_numel(&n->shape, symvals) * (int64_t)dtype_size(n->dtype));
}

static void add_tensor(Plan *p, Graph *g, int node, const char *name, int role, int entries) {
  Node *n = ir_at(g, node);
  kiln_tensor *t = &p->tensors[p->ntensors];
  memset(t, 0, sizeof *t);
  t->name = name;
  t->role = role;
  t->dtype = (int)n->dtype;
  t->rank = n->shape.rank;
  t->batch_axis = -1;
  for (int i = 0; i < n->shape.rank; i++) {
    t->dims[i] = dim_value(n->shape.d[i], p->symvals);
    if (n->shape.d[i].sym == 0 && t->batch_axis < 0) t->batch_axis = i;
  }
  t->offset = p->offset[node];
  t->entries = entries;
  t->init = n->leaf.init;
  t->init_a = n->leaf.init_a;
  t->init_b = n->leaf.init_b;
  t->fan_in = n->leaf.fan_in;
  t->fan_out = n->leaf.fan_out;
  t->data = n->data >= 0 ? g->data[n->data].v : NULL;
  t->feed = n->op == OP_INPUT ? ir_feed_name(n->leaf.source) : NULL;
  t->scale = n->leaf.scale;
  p->tensor_node[p->ntensors++] = node;
}

typedef struct Interval {
  int first, last;  /* positions in one entry's schedule; first < 0: not in the entry */
} Interval;

static void plan_arena(Graph *g, int64_t batch, Plan *p);

/* Node x is read at pos: its storage root lives until then. A fused node is no storage; its
 * kernel is its consumer's, so its own inputs are read at the consumer's position (trees are
 * at most a few dozen nodes, so the recursion stays shallow). */
static void live_read(const Graph *g, const unsigned char *fused, const int *root,
                      Interval *live, int x, int pos) {
  if (fused[x]) {
    for (int k = 0; k < ir_at(g, x)->nin; k++) live_read(g, fused, root, live, ir_at(g, x)->in[k], pos);
    return;
  }
  if (live[root[x]].first >= 0) live[root[x]].last = pos;
}

void plan_build(Graph *g, int64_t batch, Plan *p) {
  memset(p, 0, sizeof *p);
  Pool *tmp = pool_new();
  Trap t;
  if (!KILN_TRY(&t)) {
    pool_free(tmp);
    scratch_pool = NULL;
    kiln_rethrow(&t);
  }
  scratch_pool = tmp;
  plan_arena(g, batch, p);
  kiln_trap_end(&t);
  scratch_pool = NULL;
  pool_free(tmp);
}

static void plan_arena(Graph *g, int64_t batch, Plan *p) {
  if (g->nsyms > 1)
    kiln_fail((Loc){0}, "the model uses %d dimension symbols; only one (the batch) is allowed",
              g->nsyms);
  if (batch <= 0) batch = 1;
  if (batch > INT32_MAX)
    kiln_fail((Loc){0}, "the batch must be from 1 to %d, got %lld", INT32_MAX, (long long)batch);
  p->batch = batch;
  p->symvals[0] = batch;
  int nn = g->nnodes;
  p->offset = kiln_calloc((size_t)nn, sizeof(int64_t));
  for (int i = 0; i < nn; i++) p->offset[i] = -1;

  /* Which nodes each entry touches. */
  unsigned char *mark[ENTRY_COUNT];
  int *in_entries = xcalloc((size_t)nn, sizeof(int));
  for (int e = 0; e < ENTRY_COUNT; e++) {
    mark[e] = xcalloc((size_t)nn, 1);
    ir_reachable(g, e, mark[e]);
    for (int i = 0; i < nn; i++)
      if (mark[e][i]) in_entries[i] |= 1 << e;
    for (int i = 0; i < g->entries[e].nupdates; i++)
      in_entries[g->entries[e].updates[i].target] |= 1 << e;
  }
  for (int i = 0; i < nn; i++) {
    Node *n = ir_at(g, i);
    /* ir.c bounds every tensor with the batch as 1; the bound batch can still make it huge. */
    if ((in_entries[i] || op_is_leaf(n->op)) && checked_bytes(n, p->symvals) < 0) {
      char sb[192];
      kiln_fail(n->loc, "tensor %s of shape %s needs more than 64 TiB for batch %lld",
                n->name ? n->name : op_names[n->op], shape_str(g, &n->shape, sb, sizeof sb),
                (long long)batch);
    }
    for (int d = 0; d < n->shape.rank; d++)
      if (dim_value(n->shape.d[d], p->symvals) <= 0 && in_entries[i]) {
        char sb[128];
        kiln_fail(n->loc, "tensor %s has shape %s, which is empty for batch %lld",
                  n->name ? n->name : op_names[n->op], shape_str(g, &n->shape, sb, sizeof sb),
                  (long long)batch);
      }
  }

  /* Persistent leaves (in creation order, so the table reads like the model), then inputs. */
  int64_t top = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < nn; i++) {
      Node *n = ir_at(g, i);
      bool persistent = n->op == OP_PARAM || n->op == OP_STATE;
      bool input = n->op == OP_INPUT;
      if ((pass == 0 && !persistent) || (pass == 1 && !input)) continue;
      if (!persistent && !in_entries[i]) continue;
      p->offset[i] = top;
      arena_grow(&top, node_bytes(n, p->symvals), batch);
    }
  int64_t temp_base = top;

  /* The code generator's schedule decides two storage questions (cg_fusion): fused nodes get no
   * storage, and an update value written in place shares its target's (like a reshape, below). */
  unsigned char *fused = xcalloc((size_t)nn, 1);
  int *into = xcalloc((size_t)nn, sizeof(int));
  cg_fusion(g, fused, into);

  /* A reshape is the same bytes as its input, so it shares its input's storage: root[i] is the
   * node whose storage i uses. Not for leaves that an entry updates, whose bytes change at the
   * end of the entry while an output aliasing them might still be read. */
  bool *updated = xcalloc((size_t)nn, sizeof(bool));
  for (int e = 0; e < ENTRY_COUNT; e++)
    for (int i = 0; i < g->entries[e].nupdates; i++) updated[g->entries[e].updates[i].target] = true;
  int *root = xcalloc((size_t)nn, sizeof(int));
  for (int i = 0; i < nn; i++) {
    Node *n = ir_at(g, i);
    root[i] = into[i] >= 0 ? into[i] : i;
    if (n->op != OP_RESHAPE) continue;
    int r = root[n->in[0]];
    Node *rn = ir_at(g, r);
    if (rn->op == OP_CONST || (op_is_leaf(rn->op) && (updated[r] || p->offset[r] < 0))) continue;
    root[i] = r;
  }

  /* Live intervals of computed storage roots, per entry. */
  Interval *live[ENTRY_COUNT];
  for (int e = 0; e < ENTRY_COUNT; e++) {
    live[e] = xcalloc((size_t)nn, sizeof(Interval));
    int pos = 0, end = nn + 1;
    for (int i = 0; i < nn; i++) live[e][i].first = -1;
    for (int i = 0; i < nn; i++) {
      if (!mark[e][i]) continue;
      Node *n = ir_at(g, i);
      if (fused[i]) continue;  /* runs (reads its inputs) inside its consumer's kernel */
      if (!op_is_leaf(n->op) && root[i] == i) live[e][i] = (Interval){pos, pos};
      for (int k = 0; k < n->nin; k++) live_read(g, fused, root, live[e], n->in[k], pos);
      pos++;
    }
    const Entry *en = &g->entries[e];
    for (int i = 0; i < en->noutputs; i++)
      if (live[e][root[en->outputs[i].node]].first >= 0) live[e][root[en->outputs[i].node]].last = end;
    for (int i = 0; i < en->nupdates; i++)
      if (live[e][root[en->updates[i].value]].first >= 0) live[e][root[en->updates[i].value]].last = end;
  }

  /* Temporaries, largest first, each at the lowest offset clear of every interfering node. */
  int *order = xcalloc((size_t)nn, sizeof(int));
  int64_t *size = xcalloc((size_t)nn, sizeof(int64_t));
  int ntemp = 0;
  for (int i = 0; i < nn; i++) {
    Node *n = ir_at(g, i);
    if (op_is_leaf(n->op) || !needs_storage(n) || !in_entries[i] || root[i] != i || fused[i])
      continue;
    size[i] = node_bytes(n, p->symvals);
    order[ntemp++] = i;
  }
  for (int a = 1; a < ntemp; a++)  /* insertion sort: stable, sizes descending */
    for (int b = a; b > 0 && size[order[b]] > size[order[b - 1]]; b--) {
      int t = order[b];
      order[b] = order[b - 1];
      order[b - 1] = t;
    }
  int *placed = xcalloc((size_t)ntemp, sizeof(int));
  int nplaced = 0;
  int64_t arena_end = temp_base;
  for (int a = 0; a < ntemp; a++) {
    int i = order[a];
    int64_t off = temp_base;
    /* Retry until no interfering placed node overlaps [off, off+size). */
    for (bool moved = true; moved;) {
      moved = false;
      for (int b = 0; b < nplaced; b++) {
        int j = placed[b];
        bool meet = false;
        for (int e = 0; e < ENTRY_COUNT && !meet; e++)
          meet = live[e][i].first >= 0 && live[e][j].first >= 0 &&
                 live[e][i].first <= live[e][j].last && live[e][j].first <= live[e][i].last;
        if (!meet) continue;
        if (off < p->offset[j] + size[j] && p->offset[j] < off + size[i]) {
          off = p->offset[j] + size[j];
          moved = true;
        }
      }
    }
    p->offset[i] = off;
    placed[nplaced++] = i;
    if (off + size[i] > arena_end) arena_end = off + size[i];
    if (arena_end > PLAN_MAX_BYTES) arena_grow(&arena_end, 0, batch);
  }
  for (int i = 0; i < nn; i++)
    if (root[i] != i && in_entries[i]) p->offset[i] = p->offset[root[i]];

  /* Scratch for kernels that pack or unfold their operands: one region, as kernels run one at
   * a time. */
  int64_t scratch = 0;
  for (int i = 0; i < nn; i++) {
    Node *n = ir_at(g, i);
    if (op_is_leaf(n->op) || !in_entries[i]) continue;
    int64_t need = cg_scratch_bytes(g, n, p->symvals);
    if (need > scratch) scratch = need;
  }
  p->scratch_offset = arena_end;
  if (scratch > PLAN_MAX_BYTES) arena_grow(&arena_end, PLAN_MAX_BYTES + 1, batch);
  p->scratch_bytes = align_up(scratch);
  arena_grow(&arena_end, p->scratch_bytes, batch);
  p->arena_bytes = arena_end > 0 ? arena_end : ALIGN;

  /* The ABI table: params, state, hypers, inputs, then each entry's outputs. */
  int cap = nn;
  for (int e = 0; e < ENTRY_COUNT; e++) cap += g->entries[e].noutputs;
  p->tensors = kiln_calloc((size_t)cap, sizeof(kiln_tensor));
  p->tensor_node = kiln_calloc((size_t)cap, sizeof(int));
  for (int i = 0; i < nn; i++) {
    Node *n = ir_at(g, i);
    if ((n->op == OP_PARAM || n->op == OP_STATE || n->op == OP_INPUT) && p->offset[i] >= 0)
      add_tensor(p, g, i, n->name, (int)n->role, in_entries[i]);
  }
  /* An output written by several entries (the loss of train and grad) is listed once. */
  for (int e = 0; e < ENTRY_COUNT; e++) {
    const Entry *en = &g->entries[e];
    for (int o = 0; o < en->noutputs; o++) {
      int dup = -1;
      for (int t = 0; t < p->ntensors; t++)
        if (p->tensors[t].role == KILN_ROLE_OUTPUT && !strcmp(p->tensors[t].name, en->outputs[o].name))
          dup = t;
      if (dup >= 0) {
        KILN_ASSERT(p->tensor_node[dup] == en->outputs[o].node);
        p->tensors[dup].entries |= 1 << e;
        continue;
      }
      int node = en->outputs[o].node;
      if (p->offset[node] < 0)
        kiln_fail(ir_at(g, node)->loc, "output '%s' is a constant; nothing to compute",
                  en->outputs[o].name);
      add_tensor(p, g, node, en->outputs[o].name, KILN_ROLE_OUTPUT, 1 << e);
    }
  }
}

void plan_free(Plan *p) {
  free(p->offset);
  free(p->tensors);
  free(p->tensor_node);
  memset(p, 0, sizeof *p);
}
