/*
 * test_graph.c — `kiln graph` rendered by Graphviz, as a person would look at it.
 *
 * Each test pipes `kiln graph` into `dot -Tsvg` and reads the SVG: every kernel call of the
 * generated C (its kiln_sites table, from `kiln emit`) is exactly one cluster, titled with the
 * function's name; every node the schedule fuses into a kernel is drawn inside that kernel's
 * box; every node of `kiln shapes` carries its shape and type; and model text with quotes,
 * backslashes, entities and bytes that are not UTF-8 comes out as written, with no warning from
 * dot. Without `dot` on the PATH the whole test is skipped (exit 77, which CTest reports).
 */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ir/ir.h"
#include "process_harness.h"

#define KILN KILN_BINARY_DIR "/kiln"
#define MODEL KILN_SOURCE_DIR "/examples/mnist_cnn.kiln"
#define SKIPPED 77

/* ---- the SVG, as far as the tests read it ---- */

/* A cluster or a node of the drawing: its title (cluster_k45, n45), the lines of its label,
 * where its first line is and, for a cluster, its box. */
typedef struct Item {
  bool cluster;
  char title[64];
  int ntext;
  char text[4][160];
  double x0, y0, x1, y1, tx, ty;
} Item;

typedef struct Svg {
  int n;
  Item *item;
} Svg;

/* The text between from and to, entities for what the tests compare decoded. */
static void copy_text(char *dst, size_t cap, const char *from, const char *to) {
  static const struct { const char *ent, *ch; } ents[] = {
      {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&#45;", "-"},
      {"&#160;", " "}};
  size_t n = 0;
  while (from < to && n + 1 < cap) {
    bool done = false;
    for (size_t e = 0; e < sizeof ents / sizeof ents[0] && !done; e++)
      if (!strncmp(from, ents[e].ent, strlen(ents[e].ent))) {
        dst[n++] = ents[e].ch[0];
        from += strlen(ents[e].ent);
        done = true;
      }
    if (!done)
      dst[n++] = *from++;
  }
  dst[n] = 0;
}

/* The bounding box of the numbers of a points="x,y x,y" or d="Mx,yCx,y ..." attribute. */
static void bbox(const char *p, const char *end, Item *it) {
  it->x0 = it->y0 = 1e30;
  it->x1 = it->y1 = -1e30;
  int k = 0;
  while (p < end && *p != '"') {
    if ((*p >= '0' && *p <= '9') || *p == '-' || *p == '.') {
      char *q;
      double v = strtod(p, &q);
      if (k++ % 2 == 0) {
        it->x0 = v < it->x0 ? v : it->x0;
        it->x1 = v > it->x1 ? v : it->x1;
      } else {
        it->y0 = v < it->y0 ? v : it->y0;
        it->y1 = v > it->y1 ? v : it->y1;
      }
      p = q;
    } else {
      p++;
    }
  }
}

static const char *next_group(const char *p) {
  const char *best = NULL;
  static const char *const kinds[] = {"<g id=\"clust", "<g id=\"node", "<g id=\"edge"};
  for (int k = 0; k < 3; k++) {
    const char *q = strstr(p, kinds[k]);
    if (q && (!best || q < best))
      best = q;
  }
  return best;
}

static Svg parse_svg(const char *svg) {
  Svg s = {0};
  int cap = 0;
  for (const char *p = next_group(svg); p; ) {
    const char *end = next_group(p + 1);
    if (!end)
      end = p + strlen(p);
    bool cluster = !strncmp(p, "<g id=\"clust", 12), node = !strncmp(p, "<g id=\"node", 11);
    if (cluster || node) {
      if (s.n == cap) {
        cap = cap ? 2 * cap : 256;
        s.item = realloc(s.item, sizeof(Item) * (size_t)cap);
        ck_assert_ptr_nonnull(s.item);
      }
      Item *it = &s.item[s.n++];
      memset(it, 0, sizeof *it);
      it->cluster = cluster;
      const char *t = strstr(p, "<title>"), *te = t ? strstr(t, "</title>") : NULL;
      ck_assert_msg(t && te && te < end, "a group without a title: %.200s", p);
      copy_text(it->title, sizeof it->title, t + 7, te);
      const char *shape = NULL;
      for (const char *q = te; q < end && !shape; q++)
        if (!strncmp(q, " points=\"", 9) || !strncmp(q, " d=\"", 4))
          shape = strchr(q, '"') + 1;
      /* A cluster's box (nodes are placed by their label: plain text has no outline) */
      ck_assert_msg(shape != NULL || !cluster, "%s is drawn without a box", it->title);
      if (cluster)
        bbox(shape, end, it);
      for (const char *q = te; (q = strstr(q, "<text")) && q < end && it->ntext < 4; q++) {
        const char *gt = strchr(q, '>'), *close = strstr(q, "</text>");
        if (it->ntext == 0) {
          it->tx = atof(strstr(q, " x=\"") + 4);
          it->ty = atof(strstr(q, " y=\"") + 4);
        }
        copy_text(it->text[it->ntext], sizeof it->text[0], gt + 1, close);
        it->ntext++;
      }
    }
    p = end && *end ? end : NULL;
  }
  return s;
}

static const Item *find(const Svg *s, const char *title) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->item[i].title, title))
      return &s->item[i];
  return NULL;
}

static bool has_line(const Item *it, const char *line) {
  for (int k = 0; k < it->ntext; k++)
    if (!strcmp(it->text[k], line))
      return true;
  return false;
}

/* ---- what kiln says elsewhere about the same model ---- */

/* A kernel call of the generated C: a row of kiln_sites. */
typedef struct Site {
  int entry, node;
  char kernel[64];
} Site;

static int read_sites(const char *c, Site *sites, int max) {
  const char *p = strstr(c, "static const kiln_site kiln_sites[");
  ck_assert_ptr_nonnull(p);
  int n = 0;
  for (p = strchr(p, '\n') + 1; strncmp(p, "};", 2); p = strchr(p, '\n') + 1) {
    ck_assert_int_lt(n, max);
    ck_assert_int_eq(sscanf(p, " {%d, %d, \"%63[^\"]\"", &sites[n].entry, &sites[n].node,
                            sites[n].kernel), 3);
    n++;
  }
  return n;
}

/* `kiln graph MODEL ARGS | dot -Tsvg`: the SVG; kiln's exit status and dot's must be 0, and
 * neither may say anything on stderr. */
static char *render(const char *args) {
  char cmd[1024], *svg, *err;
  snprintf(cmd, sizeof cmd, "( (%s graph %s; echo \"kiln exit $?\" >&2) | dot -Tsvg )", KILN,
           args);
  ck_assert_int_eq(run(cmd, &svg, &err), 0);
  ck_assert_str_eq(err, "kiln exit 0\n");
  free(err);
  ck_assert_ptr_nonnull(strstr(svg, "</svg>"));
  return svg;
}

/* `kiln ARGS`'s standard output into *out (malloc'd); it must succeed. */
static void kiln_out(const char *args, char **out) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s %s", KILN, args);
  ck_assert_int_eq(run(cmd, out, NULL), 0);
}

/* Entry `entry` of the model drawn with --train or without: every kernel call of the entry in
 * the generated C is exactly one cluster, cluster_k<node>, whose title is the name of the
 * function it calls (a function the C defines), and there is no other cluster; every node the
 * schedule fuses into one of those kernels is drawn inside its box, unless its label says that
 * several loops recompute it. Returns the parsed SVG. */
static Svg check_kernels(const char *svg, int entry) {
  char *c, *sched;
  kiln_out("emit " MODEL, &c);
  kiln_out("schedule " MODEL, &sched);
  static Site sites[4096];
  int nsites = read_sites(c, sites, 4096), calls = 0;
  Svg s = parse_svg(svg);
  int clusters = 0;
  for (int i = 0; i < s.n; i++)
    clusters += s.item[i].cluster;
  for (int i = 0; i < nsites; i++) {
    if (sites[i].entry != entry)
      continue;
    calls++;
    char title[64], def[128];
    snprintf(title, sizeof title, "cluster_k%d", sites[i].node);
    int found = 0;
    const Item *cl = NULL;
    for (int j = 0; j < s.n; j++)
      if (s.item[j].cluster && !strcmp(s.item[j].title, title)) {
        found++;
        cl = &s.item[j];
      }
    ck_assert_msg(found == 1, "kernel call %s for %%%d: %d clusters", sites[i].kernel,
                  sites[i].node, found);
    ck_assert_msg(cl->ntext >= 1 && !strcmp(cl->text[0], sites[i].kernel),
                  "%s is titled '%s', the C calls %s", title, cl->ntext ? cl->text[0] : "",
                  sites[i].kernel);
    snprintf(def, sizeof def, "static KILN_NOINLINE void %s(", sites[i].kernel);
    ck_assert_msg(strstr(c, def) != NULL, "no function %s in the C", sites[i].kernel);
  }
  ck_assert_int_gt(calls, 10);
  ck_assert_int_eq(clusters, calls);
  /* "%93    sub    mnist_cnn.kiln:11    fused into %100": inside cluster_k100's box. */
  int inside = 0;
  for (const char *p = sched; (p = strstr(p, "\n%")); p++) {
    int x, root;
    char op[64], line[64];
    if (sscanf(p, "\n%%%d %63s %63s fused into %%%d", &x, op, line, &root) != 4)
      continue;
    char ct[64], nt[64];
    snprintf(ct, sizeof ct, "cluster_k%d", root);
    snprintf(nt, sizeof nt, "n%d", x);
    const Item *cl = find(&s, ct), *n = find(&s, nt);
    if (!cl || !n)
      continue; /* not in this entry */
    bool recomputed = n->ntext && !strncmp(n->text[n->ntext - 1], "recomputed in ", 14);
    bool in = n->tx > cl->x0 && n->tx < cl->x1 && n->ty > cl->y0 && n->ty < cl->y1;
    ck_assert_msg(in || recomputed, "%s (%s) is drawn outside %s", nt, op, ct);
    inside += in;
  }
  ck_assert_int_gt(inside, 5);
  free(c);
  free(sched);
  return s;
}

/* The eval entry: kernels as clusters, and the shapes the model's comments give. */
START_TEST(eval_graph_renders_kernels_and_shapes) {
  char *svg = render(MODEL);
  Svg s = check_kernels(svg, 1);
  ck_assert_ptr_nonnull(strstr(svg, "mnist_cnn: the eval entry"));
  /* conv2 and the pools, as `kiln shapes` and the model file have them. */
  int conv2 = 0, h1 = 0, h2 = 0;
  for (int i = 0; i < s.n; i++) {
    conv2 += has_line(&s.item[i], "conv2d [B, 32, 14, 14] f32");
    h1 += has_line(&s.item[i], "h1") && has_line(&s.item[i], "maxpool2d [B, 8, 14, 14] f32");
    h2 += has_line(&s.item[i], "h2") && has_line(&s.item[i], "maxpool2d [B, 32, 7, 7] f32");
  }
  ck_assert_int_eq(conv2, 1);
  ck_assert_int_eq(h1, 1);
  ck_assert_int_eq(h2, 1);
  const Item *w = find(&s, "n44");
  ck_assert_ptr_nonnull(w);
  ck_assert(has_line(w, "conv2.weight") && has_line(w, "param [32, 8, 5, 5] f32"));
  /* The conv2d node is drawn in the box of the kernel that computes it. */
  for (int i = 0; i < s.n; i++)
    if (has_line(&s.item[i], "conv2d [B, 32, 14, 14] f32")) {
      char title[64];
      snprintf(title, sizeof title, "cluster_k%s", s.item[i].title + 1);
      const Item *cl = find(&s, title);
      ck_assert_ptr_nonnull(cl);
      ck_assert_str_eq(cl->text[0], "k45_conv2d");
      ck_assert(s.item[i].tx > cl->x0 && s.item[i].tx < cl->x1);
    }
  free(s.item);
  free(svg);
}
END_TEST

/* The train entry: forward, backward and optimizer with their kernels; every node of the
 * training-mode forward graph `kiln shapes` lists is drawn with its name, shape and type. */
START_TEST(train_graph_renders_kernels_and_every_shape) {
  char *svg = render(MODEL " --train");
  Svg s = check_kernels(svg, 0);
  ck_assert_ptr_nonnull(strstr(svg, "mnist_cnn: the train entry"));
  ck_assert_ptr_nonnull(find(&s, "cluster_k45"));
  char *shapes;
  kiln_out("shapes " MODEL, &shapes);
  const char *p = strstr(shapes, "forward graph (training mode):\n");
  ck_assert_ptr_nonnull(p);
  int checked = 0;
  for (p = strchr(p, '\n') + 1; *p == ' '; p = strchr(p, '\n') + 1) {
    /* "  %41   bn1                add            f32[B, 8, 28, 28]" */
    char line[256], title[32], name[128] = "", op[128], want[512];
    int id;
    snprintf(line, sizeof line, "%.*s", (int)strcspn(p, "\n"), p);
    ck_assert_int_eq(sscanf(line, " %%%d", &id), 1);
    char *ty = NULL;
    static const char *const types[] = {" f32[", " f64[", " i32["};
    for (int k = 0; k < 3 && !ty; k++)
      ty = strstr(line, types[k]);
    ck_assert_msg(ty != NULL, "%s", line);
    *ty = 0;
    int words = sscanf(strchr(line, '%'), "%%%*d %127s %127s", name, op);
    if (words == 1) {
      snprintf(op, sizeof op, "%s", name);
      name[0] = 0;
    }
    if (!strcmp(op, "const"))
      continue; /* scalars are drawn beside each reader */
    snprintf(want, sizeof want, "%s %s %.3s", op, ty + 4, ty + 1);
    snprintf(title, sizeof title, "n%d", id);
    const Item *n = find(&s, title);
    ck_assert_msg(n != NULL, "%%%d %s is not drawn", id, op);
    ck_assert_msg(has_line(n, want), "%%%d is drawn without '%s'", id, want);
    ck_assert_msg(!name[0] || !strcmp(n->text[0], name), "%%%d is drawn without its name %s", id,
                  name);
    checked++;
  }
  ck_assert_int_gt(checked, 60);
  /* The optimizer's state and the updates. */
  int exp_avg = 0, updates = 0;
  for (int i = 0; i < s.n; i++) {
    exp_avg += has_line(&s.item[i], "conv2.weight.exp_avg") &&
               has_line(&s.item[i], "optimizer state [32, 8, 5, 5] f32");
    updates += has_line(&s.item[i], "conv2.weight") && !strncmp(s.item[i].title, "u", 1);
  }
  ck_assert_int_eq(exp_avg, 1);
  ck_assert_int_eq(updates, 1);
  free(shapes);
  free(s.item);
  free(svg);
}
END_TEST

/* Model text reaches the drawing as written: quotes, backslashes (which Graphviz reads as
 * escapes), '&' (an entity), markup, and bytes that are not UTF-8 in a line the tooltips
 * quote; a file name with '&' in a directory with a quote and a backslash. */
START_TEST(model_text_is_escaped) {
  char dir[512], path[600], args[700];
  snprintf(dir, sizeof dir, "%s/we\"ird\\dir", tmpdir);
  ck_assert_int_eq(mkdir(dir, 0700), 0);
  snprintf(path, sizeof path, "%s/m&q.kiln", dir);
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  fputs("model q\n"
        "input image: f32[B, 4]\n"
        "input label: i32[B]\n"
        "h = relu(linear(image, out=3)) # a \"quoted\" \\N back\\slash & <b>x</b> \\\\G \xff\xfe é\n"
        "loss = cross_entropy(h, label)\n"
        "minimize loss\n"
        "train {\n  optimizer = sgd(lr=0.1)\n  batch = 4\n}\n", f);
  ck_assert_int_eq(fclose(f), 0);
  /* The shell's single quotes keep the path as it is. */
  snprintf(args, sizeof args, "'%s' --train", path);
  char *svg = render(args);
  /* The tooltip of the matmul: file name and line as written, quoted in the SVG's XML. */
  static const char want[] = "m&amp;q.kiln:4: h = relu(linear(image, out=3)) # a &quot;quoted&quot; "
                             "\\N back\\slash &amp; &lt;b&gt;x&lt;/b&gt; \\\\G ?? é\"";
  const char *at = strstr(svg, "m&amp;q.kiln:4: ");
  ck_assert_ptr_nonnull(at);
  ck_assert_msg(!strncmp(at, want, strlen(want)), "the model line is drawn as %.200s", at);
  Svg s = parse_svg(svg);
  const Item *w = find(&s, "n2");
  ck_assert_ptr_nonnull(w);
  ck_assert(has_line(w, "linear1.weight") && has_line(w, "param [3, 4] f32"));
  free(s.item);
  free(svg);
}
END_TEST

/* A model that minimizes nothing (an imported one, say) is drawn as it evaluates; --train says
 * why there is nothing to draw. */
START_TEST(model_without_loss) {
  char path[300], args[400], *out, *err;
  snprintf(path, sizeof path, "%s/ev.kiln", tmpdir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("model ev\ninput x: f32[B, 4]\ny = relu(linear(x, out=3))\noutput y\n", f);
  ck_assert_int_eq(fclose(f), 0);
  snprintf(args, sizeof args, "'%s'", path);
  char *svg = render(args);
  Svg s = parse_svg(svg);
  const Item *y = NULL;
  for (int i = 0; i < s.n; i++)
    if (has_line(&s.item[i], "y") && has_line(&s.item[i], "relu [B, 3] f32"))
      y = &s.item[i];
  ck_assert_ptr_nonnull(y);
  ck_assert_ptr_nonnull(strstr(svg, "ev: the eval entry"));
  free(s.item);
  free(svg);
  snprintf(args, sizeof args, KILN " graph '%s' --train", path);
  ck_assert_int_eq(run(args, &out, &err), 1);
  ck_assert_str_eq(out, "");
  ck_assert_str_eq(err, "kiln: error: model ev minimizes nothing, so it has no training graph "
                        "(without --train, kiln graph draws its evaluation)\n");
  free(out);
  free(err);
}
END_TEST

/* The printer alone, on a graph built by hand with names no model file can give (the builder
 * API checks leaf names only): a DOT file dot reads without a word, showing every name as it is
 * spelt. */
START_TEST(any_name_is_valid_dot) {
  static const char odd[] = "a \"b\" \\N \\\\ & <c> \xff;";
  Graph *g = ir_new("we\"ird\\graph");
  int sym = ir_sym(g, "N\"\\");
  Shape sh = {.rank = 2, .d = {{1, sym}, {3, -1}}};
  int x = ir_leaf(g, OP_INPUT, ROLE_INPUT, "x", DT_F32, sh, (Loc){0});
  int y = ir_unary(g, OP_RELU, x, (Loc){0});
  ir_at(g, y)->name = odd;
  ir_add_output(g, ENTRY_EVAL, "out", y, NULL);
  g->entries[ENTRY_EVAL].outputs[0].name = odd;
  int in[2] = {-1, -1};
  in[y] = y;
  const char *names[2] = {NULL, odd}, *about[2] = {NULL, odd};
  IrDotKernels k = {.title = odd, .in = in, .name = names, .about = about};
  char path[300], cmd[700], *svg, *err;
  snprintf(path, sizeof path, "%s/g.dot", tmpdir);
  for (int with_kernels = 0; with_kernels < 2; with_kernels++) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ir_print_dot(g, ENTRY_EVAL, with_kernels ? &k : NULL, f);
    ck_assert_int_eq(fclose(f), 0);
    snprintf(cmd, sizeof cmd, "dot -Tsvg '%s'", path);
    ck_assert_int_eq(run(cmd, &svg, &err), 0);
    ck_assert_str_eq(err, "");
    Svg s = parse_svg(svg);
    const Item *n = find(&s, "n1");
    ck_assert_ptr_nonnull(n);
    ck_assert_str_eq(n->text[0], "a \"b\" \\N \\\\ & <c> ?;");
    ck_assert_str_eq(n->text[1], "relu [N\"\\, 3] f32");
    const Item *o = find(&s, "o0");
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(o->text[0], "a \"b\" \\N \\\\ & <c> ?;");
    if (!with_kernels)
      ck_assert_ptr_nonnull(strstr(svg, ">we&quot;ird\\graph: the eval entry</text>"));
    if (with_kernels) {
      const Item *c = find(&s, "cluster_k1");
      ck_assert_ptr_nonnull(c);
      ck_assert_str_eq(c->text[0], "a \"b\" \\N \\\\ & <c> ?;");
      ck_assert_ptr_nonnull(strstr(svg, "xlink:title=\"a &quot;b&quot; \\N \\\\ &amp; &lt;c&gt; ?;\""));
    }
    free(s.item);
    free(svg);
    free(err);
  }
  ir_free(g);
}
END_TEST

static Suite *graph_suite(void) {
  Suite *s = suite_create("graph");
  TCase *tc = tcase_create("graph");
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, eval_graph_renders_kernels_and_shapes);
  tcase_add_test(tc, train_graph_renders_kernels_and_every_shape);
  tcase_add_test(tc, model_text_is_escaped);
  tcase_add_test(tc, model_without_loss);
  tcase_add_test(tc, any_name_is_valid_dot);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  if (system("command -v dot >/dev/null 2>&1") != 0) {
    printf("test_graph: skipped: Graphviz's dot is not on the PATH (Debian: apt-get install "
           "graphviz)\n");
    return SKIPPED;
  }
  return run_with_private_cache(graph_suite());
}
