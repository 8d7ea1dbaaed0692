/*
 * dot.c — one entry of the graph as Graphviz DOT, for `kiln graph`.
 *
 * Every node the entry runs is drawn with its name, op, shape and type, leaves filled by role
 * (parameters, inputs, state, optimizer state, ...), and a tooltip with its id and the model line
 * it came from. Given the kernels that compute the nodes (IrDotKernels: the driver reads them off
 * the schedule and the code generator, which ir/ must not see), each kernel is a cluster titled
 * with its function's name, around the nodes its loop computes.
 *
 * Everything printed inside a DOT string goes through dot_text, so no name, model line or file
 * name can end the string, and Graphviz shows it as written.
 */
#include <string.h>

#include "ir/ir.h"

/* Graphviz reads a label's backslashes once (`\\` is one backslash, `\N` the node's name) and a
 * tooltip's twice; entities (`&amp;`) in both. */
typedef enum DotCtx { DOT_LABEL, DOT_TOOLTIP } DotCtx;

/* The length of the UTF-8 sequence at s, or 0 when it is not one (Graphviz warns about input
 * that is not UTF-8, and the SVG it writes would not be well-formed). */
static int utf8_len(const unsigned char *s) {
  unsigned char c = s[0];
  int n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                       : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (n == 3 && ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F)))
    return 0; /* overlong, surrogate */
  if (n == 4 && ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F)))
    return 0; /* overlong, beyond U+10FFFF */
  for (int k = 1; k < n; k++)
    if ((s[k] & 0xC0) != 0x80)
      return 0;
  return n;
}

/* At most max bytes of s (a whole character more at the end) as the inside of a DOT string:
 * shown as written, control characters as spaces, bytes that are not UTF-8 as '?'. */
static void dot_text(FILE *out, const char *s, size_t max, DotCtx ctx) {
  const unsigned char *p = (const unsigned char *)(s ? s : "");
  for (size_t done = 0; *p && done < max;) {
    int n = utf8_len(p);
    if (*p == '"')
      fputs("\\\"", out);
    else if (*p == '\\')
      fputs(ctx == DOT_TOOLTIP ? "\\\\\\\\" : "\\\\", out);
    else if (*p == '&')
      fputs("&amp;", out);
    else if (*p < 0x20 || *p == 0x7F)
      fputc(' ', out);
    else if (n == 0)
      fputc('?', out);
    else
      fwrite(p, 1, (size_t)n, out);
    p += n ? n : 1;
    done += n ? (size_t)n : 1;
  }
}

/* The model line of loc without its leading blanks, at most the first 120 bytes: where a
 * tooltip says what the node came from. NULL when loc has no file. */
static const char *source_line(Loc loc, size_t *len) {
  if (!loc.file || !loc.file->text || loc.line < 1)
    return NULL;
  const char *p = loc.file->text;
  for (int l = 1; l < loc.line && p; l++)
    if ((p = strchr(p, '\n')))
      p++;
  if (!p)
    return NULL;
  p += strspn(p, " \t");
  *len = strcspn(p, "\r\n");
  if (*len > 120)
    *len = 120;
  return p;
}

/* "mnist_cnn.kiln:13": the base name of the model file and the line. */
static void dot_where(FILE *out, Loc loc, DotCtx ctx) {
  const char *path = loc.file->path ? loc.file->path : "", *base = strrchr(path, '/');
  dot_text(out, base ? base + 1 : path, 200, ctx);
  fprintf(out, ":%d", loc.line);
}

/* Fill colours of leaves by role, so parameters, data and state read apart at a glance. */
static const char *leaf_fill(const Node *n) {
  switch (n->role) {
  case ROLE_PARAM: return "#cfe8ff";
  case ROLE_INPUT: return "#d8f5d0";
  case ROLE_STATE: return "#fff2b3";
  case ROLE_OPT: return "#fde0c5";
  case ROLE_HYPER: return "#e8dcf5";
  case ROLE_GRAD: return "#f9d5d3";
  case ROLE_NONE: break;
  }
  return "#eeeeee";
}

/* A scalar constant is drawn once per use, a small number beside the node reading it (kernels
 * print it as a literal): one 0.9 read by every Adam loop would pull edges across the drawing. */
static bool per_use(const Node *n) { return n->op == OP_CONST && n->data < 0; }

/* The DOT id of node x as the user (a node "n42", an update "u3", an output "o0") reads it. */
static void dot_ref(FILE *out, int x, bool scalar, const char *user) {
  if (scalar)
    fprintf(out, "c%d_%s", x, user);
  else
    fprintf(out, "n%d", x);
}

/* `tooltip="%45 conv2d\nmnist_cnn.kiln:13: conv2 = conv2d(h1, ...)"`. */
static void dot_tooltip(FILE *out, const Node *n, const char *what) {
  fprintf(out, "tooltip=\"%%%d %s", n->id, what);
  size_t len;
  const char *line = source_line(n->loc, &len);
  if (line) {
    fputs("\\n", out);
    dot_where(out, n->loc, DOT_TOOLTIP);
    fputs(": ", out);
    dot_text(out, line, len, DOT_TOOLTIP);
  }
  fputc('"', out);
}

static void dot_scalar(FILE *out, const Node *c, const char *user, const char *indent) {
  fprintf(out, "%s", indent);
  dot_ref(out, c->id, true, user);
  fprintf(out, " [label=\"%.6g\", shape=plaintext, style=solid, fontsize=8, ", c->attr.value);
  dot_tooltip(out, c, dtype_name(c->dtype));
  fputs("];\n", out);
}

/* A node: "relu1\nrelu [B, 32, 13, 13] f32" (name, op or role, shape, type) and the note, then
 * the scalar constants it reads. */
static void dot_node(FILE *out, const Graph *g, const Node *n, const IrDotKernels *k,
                     const char *indent) {
  char sb[128];
  bool leaf = op_is_leaf(n->op);
  fprintf(out, "%sn%d [label=\"", indent, n->id);
  if (n->name) {
    dot_text(out, n->name, 200, DOT_LABEL);
    fputs("\\n", out);
  }
  const char *what = leaf && ir_role_name(n->role) ? ir_role_name(n->role) : op_names[n->op];
  fprintf(out, "%s ", what);
  dot_text(out, shape_str(g, &n->shape, sb, sizeof sb), sizeof sb, DOT_LABEL); /* symbols' names */
  fprintf(out, " %s", dtype_name(n->dtype));
  if (k && k->note && k->note[n->id]) {
    fputs("\\n", out);
    dot_text(out, k->note[n->id], 200, DOT_LABEL);
  }
  fputs("\", ", out);
  dot_tooltip(out, n, what);
  if (leaf)
    fprintf(out, ", style=filled, fillcolor=\"%s\"", leaf_fill(n));
  else if (k && k->in[n->id] < 0) /* no kernel of its own: a view, or recomputed in several */
    fputs(", style=\"rounded,dashed,filled\"", out);
  fputs("];\n", out);
  char user[16];
  snprintf(user, sizeof user, "n%d", n->id);
  for (int j = 0; j < n->nin; j++)
    if (per_use(ir_at(g, n->in[j])))
      dot_scalar(out, ir_at(g, n->in[j]), user, indent);
}

/* A kernel: a cluster around the nodes it computes, titled with its function's name. */
static void dot_cluster(FILE *out, const Graph *g, const IrDotKernels *k, int root,
                        const int *next) {
  fprintf(out, "  subgraph cluster_k%d {\n    label=\"", root);
  dot_text(out, k->name[root], 200, DOT_LABEL);
  fputs("\";\n", out);
  if (k->about && k->about[root]) {
    fputs("    tooltip=\"", out);
    dot_text(out, k->about[root], 1000, DOT_TOOLTIP);
    fputs("\";\n", out);
  }
  for (int x = root; x >= 0; x = next[x])
    dot_node(out, g, ir_at(g, x), k, "    ");
  fputs("  }\n", out);
}

/* An edge from value x to the user's DOT node (its id). A scalar x is drawn for this use: here
 * when declare is set (outputs and updates), else where the user node was (dot_node). */
static void dot_edge_from(FILE *out, const Graph *g, int x, const char *user, bool declare,
                          const char *attrs) {
  const Node *v = ir_at(g, x);
  if (per_use(v) && declare)
    dot_scalar(out, v, user, "  ");
  fputs("  ", out);
  dot_ref(out, x, per_use(v), user);
  fprintf(out, " -> %s%s;\n", user, attrs);
}

void ir_print_dot(const Graph *g, EntryKind e, const IrDotKernels *k, FILE *out) {
  Pool *pool = pool_new();
  Trap t;
  if (!KILN_TRY(&t)) {
    pool_free(pool);
    kiln_rethrow(&t);
  }
  int nn = g->nnodes > 0 ? g->nnodes : 1;
  unsigned char *mark = pool_alloc(pool, (size_t)nn);
  ir_reachable(g, e, mark);
  /* The nodes of each kernel as a list from its own node, then in id order: next[x]. */
  int *next = pool_alloc(pool, sizeof(int) * (size_t)nn);
  int *last = pool_alloc(pool, sizeof(int) * (size_t)nn);
  for (int i = 0; i < g->nnodes; i++)
    next[i] = -1, last[i] = i;
  for (int i = 0; i < g->nnodes; i++) {
    int r = k ? k->in[i] : -1;
    if (mark[i] && r >= 0 && r != i && mark[r] && k->name[r]) {
      next[last[r]] = i;
      last[r] = i;
    }
  }
  fputs("digraph \"", out);
  dot_text(out, g->name, 200, DOT_LABEL);
  fputs("\" {\n  rankdir=TB;\n  fontname=\"Helvetica\";\n"
        "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=\"rounded,filled\", "
        "fillcolor=white];\n"
        "  edge [fontname=\"Helvetica\", fontsize=9, arrowsize=0.6, color=\"#555555\"];\n", out);
  if (k) /* what every cluster looks like; the title's own font is set at the end */
    fputs("  graph [style=\"rounded,filled\", fillcolor=\"#eef3fb\", color=\"#8aa4c8\", "
          "fontsize=10, labeljust=l];\n", out);
  /* Kernels first: a node belongs to the cluster it is first named in. */
  for (int i = 0; k && i < g->nnodes; i++)
    if (mark[i] && k->in[i] == i && k->name[i])
      dot_cluster(out, g, k, i, next);
  for (int i = 0; i < g->nnodes; i++) {
    int r = k ? k->in[i] : -1;
    if (mark[i] && !per_use(ir_at(g, i)) && !(r >= 0 && mark[r] && k->name[r]))
      dot_node(out, g, ir_at(g, i), k, "  ");
  }
  char user[32];
  for (int i = 0; i < g->nnodes; i++) {
    const Node *n = ir_at(g, i);
    snprintf(user, sizeof user, "n%d", i);
    for (int j = 0; mark[i] && j < n->nin; j++)
      dot_edge_from(out, g, n->in[j], user, false, "");
  }
  const Entry *en = &g->entries[e];
  for (int i = 0; i < en->noutputs; i++) {
    fprintf(out, "  o%d [label=\"", i);
    dot_text(out, en->outputs[i].name, 200, DOT_LABEL);
    fputs("\", shape=ellipse, style=dashed];\n", out);
    snprintf(user, sizeof user, "o%d", i);
    dot_edge_from(out, g, en->outputs[i].node, user, true, "");
  }
  /* An update's target takes its value when the entry ends: drawn as a node of its own beside
   * the value, since an edge back up to the leaf would cross the whole drawing. */
  for (int i = 0; i < en->nupdates; i++) {
    const Node *target = ir_at(g, en->updates[i].target);
    fprintf(out, "  u%d [label=\"", i);
    dot_text(out, target->name, 200, DOT_LABEL);
    fprintf(out, "\", style=\"dashed,filled\", fillcolor=\"%s\", tooltip=\"%%%d takes this value "
                 "when the %s entry ends\"];\n",
            leaf_fill(target), target->id, entry_names[e]);
    snprintf(user, sizeof user, "u%d", i);
    dot_edge_from(out, g, en->updates[i].value, user, true,
                  " [style=dashed, color=red, label=\"update\"]");
  }
  /* The title last: a label set earlier would be every cluster's default. */
  fputs("  fontsize=14;\n  labeljust=c;\n  labelloc=t;\n  label=\"", out);
  if (k && k->title)
    dot_text(out, k->title, 1000, DOT_LABEL);
  else {
    dot_text(out, g->name, 200, DOT_LABEL);
    fprintf(out, ": the %s entry", entry_names[e]);
  }
  fputs("\";\n}\n", out);
  kiln_trap_end(&t);
  pool_free(pool);
}
