/*
 * graph.c — `kiln graph`: an entry of the model as Graphviz DOT, each kernel of the generated C
 * drawn as a cluster around the nodes its loop computes and titled with the function's name, as
 * `kiln emit`, `kiln check --kernel` and the profile name it.
 *
 * The printer (ir/dot.c) knows no schedule; this is where the graph, the schedule (which nodes
 * one loop computes: sched_kernel_fused) and the code generator (what the functions are called:
 * cg_kernel_names) meet.
 */
#include <string.h>

#include "cg/cg.h"
#include "driver/driver.h"

/* The kernels of an entry that compute each node in their loops. */
enum { SHOWN_KERNELS = 3 };
typedef struct Fused {
  int *count;   /* per node: how many kernels compute it */
  int *first;   /* per node: the first SHOWN_KERNELS of them */
  int root;     /* the kernel being walked */
} Fused;

static void note_fused(int x, void *arg) {
  Fused *f = arg;
  if (f->count[x] < SHOWN_KERNELS)
    f->first[SHOWN_KERNELS * x + f->count[x]] = f->root;
  f->count[x]++;
}

void graph_print_dot(const Session *s, bool training, FILE *out) {
  KILN_ASSERT(s->planned);
  const Graph *g = s->g;
  const Schedule *sc = s->plan.sched;
  EntryKind e = training ? ENTRY_TRAIN : ENTRY_EVAL;
  Pool *pool = pool_new();
  Trap t;
  if (!KILN_TRY(&t)) {
    pool_free(pool);
    kiln_rethrow(&t);
  }
  size_t nn = (size_t)(g->nnodes > 0 ? g->nnodes : 1);
  unsigned char *mark = pool_alloc(pool, nn);
  ir_reachable(g, e, mark);
  const char **names = cg_kernel_names(g, &s->plan, pool);
  const char **about = pool_alloc(pool, sizeof(char *) * nn);
  const char **note = pool_alloc(pool, sizeof(char *) * nn);
  int *in = pool_alloc(pool, sizeof(int) * nn), calls = 0;
  Fused f = {.count = pool_alloc(pool, sizeof(int) * nn),
             .first = pool_alloc(pool, sizeof(int) * SHOWN_KERNELS * nn)};
  for (int i = 0; i < g->nnodes; i++) {
    in[i] = -1;
    if (!mark[i] || !names[i])
      continue;
    calls++;
    f.root = i;
    note_fused(i, &f);
    sched_kernel_fused(g, sc, i, note_fused, &f);
  }
  /* A node one kernel computes is drawn in its cluster; one several kernels compute again in
   * their loops (a tree node read by several) outside, saying which. */
  for (int i = 0; i < g->nnodes; i++) {
    const Node *n = ir_at(g, i);
    if (!mark[i] || op_is_leaf(n->op))
      continue;
    if (f.count[i] == 1) {
      in[i] = f.first[SHOWN_KERNELS * i];
      continue;
    }
    if (f.count[i] == 0 && sc->node[i].fused)
      continue; /* in no loop of this entry: drawn as it is */
    Buf b = {.pool = pool};
    if (f.count[i] == 0)
      buf_puts(&b, "a view of its input: no kernel");
    for (int j = 0; j < f.count[i] && j < SHOWN_KERNELS; j++)
      buf_printf(&b, "%s%s", j ? ", " : "recomputed in ", names[f.first[SHOWN_KERNELS * i + j]]);
    if (f.count[i] > SHOWN_KERNELS)
      buf_printf(&b, ", +%d more", f.count[i] - SHOWN_KERNELS);
    note[i] = b.p;
  }
  int *members = pool_alloc(pool, sizeof(int) * nn);
  for (int i = 0; i < g->nnodes; i++)
    if (in[i] >= 0 && in[i] != i)
      members[in[i]]++;
  /* A kernel's tooltip: what it computes and what the schedule decided, in kiln schedule's
   * words. */
  for (int r = 0; r < g->nnodes; r++) {
    if (!mark[r] || !names[r])
      continue;
    const Node *n = ir_at(g, r);
    const NodeSched *ns = &sc->node[r];
    Buf b = {.pool = pool};
    buf_printf(&b, "%s: %%%d %s", names[r], r, op_names[n->op]);
    if (members[r])
      buf_printf(&b, " and %d node%s in its loop", members[r], members[r] > 1 ? "s" : "");
    if (ns->into >= 0)
      buf_printf(&b, ", written in place into %%%d", ns->into);
    if (ns->into >= 0 && ir_at(g, ns->into)->name)
      buf_printf(&b, " %s", ir_at(g, ns->into)->name);
    if (n->op == OP_CONV2D || n->op == OP_CONV2D_BWD_DATA || n->op == OP_CONV2D_BWD_FILTER)
      buf_printf(&b, ", conv=%s", sched_conv_name(ns->conv));
    if (n->op == OP_MATMUL)
      buf_printf(&b, ", %s", ns->gemm ? "gemm" : "loops");
    if (ns->workers > 1)
      buf_printf(&b, ", workers=%d", ns->workers);
    about[r] = b.p;
  }
  const char *what = training ? "the train entry (forward, backward, optimizer)"
                              : "the eval entry (forward in evaluation mode)";
  IrDotKernels k = {
      .title = pool_printf(pool, "%s: %s, %d kernel call%s, batch %lld", g->name, what, calls,
                           calls == 1 ? "" : "s", (long long)s->plan.batch),
      .in = in,
      .name = names,
      .about = about,
      .note = note,
  };
  ir_print_dot(g, e, &k, out);
  kiln_trap_end(&t);
  pool_free(pool);
}
