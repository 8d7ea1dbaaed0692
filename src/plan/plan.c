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

#include <inttypes.h>

#include "plan/plan.h"

#define ALIGN 64

static int64_t align_up(int64_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

/* n objects of size bytes each from pool, zeroed. */
static void *xcalloc(Pool *pool, size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) kiln_fail((Loc){0}, "out of memory");
  return pool_alloc(pool, (n ? n : 1) * size);
}

/* The most bytes one program's arena may need: 2^46 (64 TiB). Together with the per-tensor
 * bound of ir.c it keeps every offset and size exact in int64. */
#define PLAN_MAX_BYTES ((int64_t)1 << 46)

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

static void add_tensor(Plan *p, const Graph *g, int node, const char *name, int role, int entries) {
  const Node *n = ir_at(g, node);
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

static void plan_arena(const Graph *g, const Schedule *s, Plan *p);

/* Storage roots read by the kernel being placed, at position pos. */
typedef struct LiveRead {
  const int *root;
  Interval *live;
  int pos;
} LiveRead;

static void live_read(int x, void *arg) {
  LiveRead *lr = arg;
  if (lr->live[lr->root[x]].first >= 0) lr->live[lr->root[x]].last = lr->pos;
}

/* A member a kernel stores is defined where that kernel runs. */
static void live_def(int x, void *arg) {
  LiveRead *lr = arg;
  if (lr->root[x] == x) lr->live[x] = (Interval){lr->pos, lr->pos};
}

/* Plans g under schedule s, or one built for batch and o, in a fresh p->pool; on an error frees
 * it and passes the error on. */
static void plan_in_pool(const Graph *g, int64_t batch, const SchedOptions *o, const Schedule *s,
                         Plan *p) {
  memset(p, 0, sizeof *p);
  Pool *pool = pool_new();
  Trap t;
  if (!KILN_TRY(&t)) {
    pool_free(pool);
    memset(p, 0, sizeof *p);
    kiln_rethrow(&t);
  }
  p->pool = pool;
  plan_arena(g, s ? s : sched_build(g, batch, o, pool), p);
  kiln_trap_end(&t);
}

void plan_build(const Graph *g, int64_t batch, const SchedOptions *o, Plan *p) {
  plan_in_pool(g, batch, o, NULL, p);
}

void plan_build_sched(const Graph *g, const Schedule *s, Plan *p) {
  plan_in_pool(g, s->batch, NULL, s, p);
}

static void plan_arena(const Graph *g, const Schedule *s, Plan *p) {
  Pool *pool = p->pool;
  int64_t batch = s->batch;
  p->sched = s;
  p->batch = batch;
  memcpy(p->symvals, s->symvals, sizeof p->symvals);
  int nn = g->nnodes;
  KILN_ASSERT(s->nnodes == nn);
  p->offset = xcalloc(pool, (size_t)nn, sizeof(int64_t));
  for (int i = 0; i < nn; i++) p->offset[i] = -1;

  /* Which nodes each entry touches. */
  unsigned char *mark[ENTRY_COUNT];
  int *in_entries = xcalloc(pool, (size_t)nn, sizeof(int));
  for (int e = 0; e < ENTRY_COUNT; e++) {
    mark[e] = xcalloc(pool, (size_t)nn, 1);
    ir_reachable(g, e, mark[e]);
    for (int i = 0; i < nn; i++)
      if (mark[e][i]) in_entries[i] |= 1 << e;
    for (int i = 0; i < g->entries[e].nupdates; i++)
      in_entries[g->entries[e].updates[i].target] |= 1 << e;
  }
  /* Persistent leaves (in creation order, so the table reads like the model), then inputs. */
  int64_t top = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < nn; i++) {
      const Node *n = ir_at(g, i);
      bool persistent = n->op == OP_PARAM || n->op == OP_STATE;
      bool input = n->op == OP_INPUT;
      if ((pass == 0 && !persistent) || (pass == 1 && !input)) continue;
      if (!persistent && !in_entries[i]) continue;
      p->offset[i] = top;
      arena_grow(&top, node_bytes(n, p->symvals), batch);
    }
  int64_t temp_base = top;

  /* The schedule decides two storage questions: fused nodes get no storage unless their loop
   * stores them, and an update value written in place shares its target's (like a reshape,
   * below). */
  /* A reshape is the same bytes as its input, so it shares its input's storage: root[i] is the
   * node whose storage i uses. Not for leaves that an entry updates, whose bytes change at the
   * end of the entry while an output aliasing them might still be read. */
  bool *updated = xcalloc(pool, (size_t)nn, sizeof(bool));
  for (int e = 0; e < ENTRY_COUNT; e++)
    for (int i = 0; i < g->entries[e].nupdates; i++) updated[g->entries[e].updates[i].target] = true;
  int *root = xcalloc(pool, (size_t)nn, sizeof(int));
  p->root = root;
  /* A gradient is computed straight into its grad leaf: grad writes the leaf and reads it
   * nowhere, train (which computes the same node) never touches the leaf, and apply, which reads
   * it, computes no gradient. It is then complete the moment its kernel returns, when a
   * data-parallel driver may start summing it (kiln_site.finishes). */
  int *grad_leaf = xcalloc(pool, (size_t)nn, sizeof(int));
  for (int i = 0; i < nn; i++) grad_leaf[i] = -1;
  const Entry *ge = &g->entries[ENTRY_GRAD];
  for (int u = 0; u < ge->nupdates; u++) {
    int t = ge->updates[u].target, v = ge->updates[u].value;
    const Node *tn = ir_at(g, t), *vn = ir_at(g, v);
    bool ok = tn->role == ROLE_GRAD && !op_is_leaf(vn->op) && vn->op != OP_RESHAPE &&
              s->node[v].into < 0 && !s->node[v].fused && !(in_entries[v] & (1 << ENTRY_APPLY)) &&
              shape_eq(&tn->shape, &vn->shape) && tn->dtype == vn->dtype && p->offset[t] >= 0;
    for (int e = 0; e < ENTRY_COUNT && ok; e++)
      for (int o = 0; o < g->entries[e].noutputs; o++)
        ok &= g->entries[e].outputs[o].node != v;
    for (int o = 0; o < ge->nupdates && ok; o++)
      if (o != u && (ge->updates[o].value == v || ge->updates[o].target == t))
        ok = false;
    if (ok)
      grad_leaf[v] = t;
  }
  for (int i = 0; i < nn; i++) {
    const Node *n = ir_at(g, i);
    root[i] = s->node[i].into >= 0 ? s->node[i].into : grad_leaf[i] >= 0 ? grad_leaf[i] : i;
    if (n->op != OP_RESHAPE) continue;
    int r = root[n->in[0]];
    const Node *rn = ir_at(g, r);
    if (rn->op == OP_CONST || (op_is_leaf(rn->op) && (updated[r] || p->offset[r] < 0))) continue;
    root[i] = r;
  }

  /* Live intervals of computed storage roots, per entry. */
  Interval *live[ENTRY_COUNT];
  for (int e = 0; e < ENTRY_COUNT; e++) {
    live[e] = xcalloc(pool, (size_t)nn, sizeof(Interval));
    int pos = 0, end = nn + 1;
    for (int i = 0; i < nn; i++) live[e][i].first = -1;
    for (int i = 0; i < nn; i++) {
      if (!mark[e][i]) continue;
      const Node *n = ir_at(g, i);
      if (s->node[i].fused) continue;  /* runs (reads its inputs) inside another node's kernel */
      LiveRead lr = {.root = root, .live = live[e], .pos = pos};
      if (!op_is_leaf(n->op) && root[i] == i) live[e][i] = (Interval){pos, pos};
      if (!op_is_leaf(n->op)) {
        sched_kernel_outputs(g, s, i, live_def, &lr);
        sched_kernel_operands(g, s, i, live_read, &lr);
      }
      pos++;
    }
    const Entry *en = &g->entries[e];
    for (int i = 0; i < en->noutputs; i++)
      if (live[e][root[en->outputs[i].node]].first >= 0) live[e][root[en->outputs[i].node]].last = end;
    for (int i = 0; i < en->nupdates; i++)
      if (live[e][root[en->updates[i].value]].first >= 0) live[e][root[en->updates[i].value]].last = end;
  }

  p->life = xcalloc(pool, (size_t)nn, sizeof(PlanLife));
  for (int i = 0; i < nn; i++)
    for (int e = 0; e < ENTRY_COUNT; e++) {
      p->life[i].first[e] = live[e][i].first;
      p->life[i].last[e] = live[e][i].last;
    }

  /* Temporaries, largest first, each at the lowest offset clear of every interfering node. */
  int *order = xcalloc(pool, (size_t)nn, sizeof(int));
  int64_t *size = xcalloc(pool, (size_t)nn, sizeof(int64_t));
  int ntemp = 0;
  for (int i = 0; i < nn; i++) {
    const Node *n = ir_at(g, i);
    if (op_is_leaf(n->op) || !needs_storage(n) || !in_entries[i] || root[i] != i ||
        (s->node[i].fused && !s->node[i].stored))
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
  int *placed = xcalloc(pool, (size_t)ntemp, sizeof(int));
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
  int64_t scratch = s->scratch_bytes;
  p->scratch_offset = arena_end;
  if (scratch > PLAN_MAX_BYTES) arena_grow(&arena_end, PLAN_MAX_BYTES + 1, batch);
  p->scratch_bytes = align_up(scratch);
  arena_grow(&arena_end, p->scratch_bytes, batch);
  p->arena_bytes = arena_end > 0 ? arena_end : ALIGN;

  /* The ABI table: params, state, hypers, inputs, then each entry's outputs. */
  int cap = nn;
  for (int e = 0; e < ENTRY_COUNT; e++) cap += g->entries[e].noutputs;
  p->tensors = xcalloc(pool, (size_t)cap, sizeof(kiln_tensor));
  p->tensor_node = xcalloc(pool, (size_t)cap, sizeof(int));
  for (int i = 0; i < nn; i++) {
    const Node *n = ir_at(g, i);
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
  pool_free(p->pool);
  memset(p, 0, sizeof *p);
}

void plan_print(const Graph *g, const Plan *p, FILE *out) {
  fprintf(out, "memory plan: batch %" PRId64 ", arena %" PRId64 " bytes, scratch %" PRId64
               " bytes at %" PRId64 "\n", p->batch, p->arena_bytes, p->scratch_bytes,
          p->scratch_offset);
  fprintf(out, "%-6s %-28s %12s %12s  %s\n", "node", "tensor", "offset", "bytes", "lifetime");
  for (int i = 0; i < g->nnodes; i++) {
    const Node *n = ir_at(g, i);
    if (p->offset[i] < 0) continue;
    char sh[128];
    const char *name = n->name ? n->name : op_names[n->op];
    fprintf(out, "%%%-5d %-28s %12" PRId64 " %12" PRId64 "  ", i, name, p->offset[i],
            node_bytes(n, p->symvals));
    if (n->op == OP_PARAM || n->op == OP_STATE) {
      fprintf(out, "persistent");
    } else if (n->op == OP_INPUT) {
      fprintf(out, "input");
    } else if (p->root[i] != i) {
      fprintf(out, "shares %%%d", p->root[i]);
    } else {
      /* Positions count the kernels of the entry; "end": read after its last kernel. */
      int64_t end = g->nnodes + 1;
      for (int e = 0; e < ENTRY_COUNT; e++) {
        const PlanLife *l = &p->life[i];
        if (l->first[e] < 0) continue;
        if (l->last[e] == end)
          fprintf(out, " %s %d..end", entry_names[e], l->first[e]);
        else
          fprintf(out, " %s %d..%d", entry_names[e], l->first[e], l->last[e]);
      }
    }
    fprintf(out, "  %s\n", shape_str(g, &n->shape, sh, sizeof sh));
  }
}
