/*
 * test_frontend.c — tests of the model-file frontend: lexer, parser, lowering, and every error
 * message, compared as the full text the user sees (file:line:col, message, source line, caret).
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "front/front.h"
#include "xform/xform.h"
#include "ref/ref.h"

#ifndef KILN_SOURCE_DIR
#define KILN_SOURCE_DIR "."
#endif

/* Compiles src as "t.kiln"; fails the test on an error. */
static Graph *compile_ok(const char *src) {
  Trap t;
  if (KILN_TRY(&t)) {
    Graph *g = fe_compile_string("t.kiln", src);
    kiln_trap_end(&t);
    return g;
  }
  kiln_trap_end(&t);
  ck_abort_msg("unexpected error:\n%s", t.msg);
  return NULL;
}

/* Compiles src as "t.kiln" and returns the error text (static), or NULL if it compiled. */
static const char *compile_err(const char *src) {
  static char msg[sizeof ((Trap *)0)->msg];
  Trap t;
  if (KILN_TRY(&t)) {
    Graph *g = fe_compile_string("t.kiln", src);
    kiln_trap_end(&t);
    ir_free(g);
    return NULL;
  }
  kiln_trap_end(&t);
  memcpy(msg, t.msg, sizeof msg);
  return msg;
}

static Node *leaf(Graph *g, const char *name) {
  int id = ir_find_leaf(g, name);
  ck_assert_msg(id >= 0, "no leaf '%s'", name);
  return ir_at(g, id);
}

static const char *shape_of_node(Graph *g, const Node *n) {
  static char buf[128];
  return shape_str(g, &n->shape, buf, sizeof buf);
}

/* ---- lexer ---- */

static Token *lex(Pool *p, const SrcFile *f, int *n) {
  return lex_tokens(p, f, strlen(f->text), n);
}

START_TEST(lex_tokens_and_locations) {
  Pool *p = pool_new();
  SrcFile f = {"t.kiln", "h = relu(x) ^ 2.5e-1  # comment\n\n  y=[1,.5]\n"};
  int n;
  Token *t = lex(p, &f, &n);
  struct { TokKind k; const char *text; int line, col; } want[] = {
      {TK_IDENT, "h", 1, 1},    {TK_PUNCT, "=", 1, 3},  {TK_IDENT, "relu", 1, 5},
      {TK_PUNCT, "(", 1, 9},    {TK_IDENT, "x", 1, 10}, {TK_PUNCT, ")", 1, 11},
      {TK_PUNCT, "^", 1, 13},   {TK_NUM, "2.5e-1", 1, 15}, {TK_NEWLINE, "\n", 1, 32},
      {TK_NEWLINE, "\n", 2, 1}, {TK_IDENT, "y", 3, 3},  {TK_PUNCT, "=", 3, 4},
      {TK_PUNCT, "[", 3, 5},    {TK_NUM, "1", 3, 6},    {TK_PUNCT, ",", 3, 7},
      {TK_NUM, ".5", 3, 8},     {TK_PUNCT, "]", 3, 10}, {TK_NEWLINE, "\n", 3, 11},
      {TK_EOF, "", 3, 11},
  };
  int nw = (int)(sizeof want / sizeof *want);
  ck_assert_int_eq(n, nw);
  for (int i = 0; i < nw; i++) {
    ck_assert_int_eq(t[i].kind, want[i].k);
    ck_assert_int_eq(t[i].len, (int)strlen(want[i].text));
    ck_assert(!strncmp(t[i].s, want[i].text, (size_t)t[i].len));
    ck_assert_int_eq(t[i].loc.line, want[i].line);
    ck_assert_int_eq(t[i].loc.col, want[i].col);
    ck_assert_ptr_eq(t[i].loc.file, &f);
  }
  ck_assert(t[7].num == 0.25 && !t[7].is_int);
  ck_assert(t[13].is_int && t[13].ival == 1);
  pool_free(p);
}
END_TEST

START_TEST(lex_numbers) {
  Pool *p = pool_new();
  SrcFile f = {"t.kiln", "0 42 1e3 1E+3 3.25 9223372036854775807 99999999999999999999"};
  int n;
  Token *t = lex(p, &f, &n);
  ck_assert_int_eq(n, 8);
  ck_assert(t[0].is_int && t[0].ival == 0);
  ck_assert(t[1].is_int && t[1].ival == 42);
  ck_assert(!t[2].is_int && t[2].num == 1000);
  ck_assert(!t[3].is_int && t[3].num == 1000);
  ck_assert(t[4].num == 3.25);
  ck_assert(t[5].is_int && t[5].ival == INT64_MAX);
  ck_assert(!t[6].is_int && t[6].num == 1e20); /* too big for an integer: a float */
  ck_assert_int_eq(t[7].kind, TK_EOF);
  pool_free(p);
}
END_TEST

START_TEST(lex_describe_tokens) {
  Pool *p = pool_new();
  SrcFile f = {"t.kiln", "relu ( 3\n"};
  int n;
  Token *t = lex(p, &f, &n);
  ck_assert_str_eq(lex_describe(p, &t[0]), "'relu'");
  ck_assert_str_eq(lex_describe(p, &t[1]), "'('");
  ck_assert_str_eq(lex_describe(p, &t[2]), "'3'");
  ck_assert_str_eq(lex_describe(p, &t[3]), "end of line");
  ck_assert_str_eq(lex_describe(p, &t[4]), "end of file");
  ck_assert(lex_is_ident("fc_1") && !lex_is_ident("1x") && !lex_is_ident("a.b") &&
            !lex_is_ident(""));
  pool_free(p);
}
END_TEST

/* ---- parser ---- */

START_TEST(parse_every_statement) {
  Pool *p = pool_new();
  const char *text =
      "model m\n"
      "input image: f32[B, 1, 28, 28] from images / 255\n"
      "input label: i32[B] from labels\n"
      "input raw: f64[B, 3]\n"
      "input scaled: f32[B] from images * 2\n"
      "const c: f64[1, 2] = [[2, 7]]\n"
      "param w: f64[2, 1] = [[0], [0]]\n"
      "param v: f32[3, 4] init=he\n"
      "param u: f32[]\n"
      "h = relu(x) as r\n"
      "output h\n"
      "minimize loss\n"
      "train { optimizer = sgd(lr=0.01)  steps = 15\n  batch = 4 }\n";
  SrcFile f = {"t.kiln", text};
  Program *prog = parse_program(p, &f, strlen(text));
  ck_assert_int_eq(prog->nstmts, 13);
  Stmt *s = prog->stmts;
  ck_assert_int_eq(s[0].kind, ST_MODEL);
  ck_assert_str_eq(s[0].name, "m");
  ck_assert_int_eq(s[1].kind, ST_INPUT);
  ck_assert_str_eq(s[1].name, "image");
  ck_assert_int_eq(s[1].type.dtype, DT_F32);
  ck_assert_int_eq(s[1].type.rank, 4);
  ck_assert_str_eq(s[1].type.d[0].sym, "B");
  ck_assert(s[1].type.d[1].sym == NULL && s[1].type.d[1].n == 1 && s[1].type.d[3].n == 28);
  ck_assert_int_eq(s[1].source, KILN_SRC_IMAGES);
  ck_assert(s[1].scale == 1.0 / 255);
  ck_assert_int_eq(s[2].source, KILN_SRC_LABELS);
  ck_assert_int_eq(s[2].type.dtype, DT_I32);
  ck_assert_int_eq(s[3].source, KILN_SRC_NONE);
  ck_assert_int_eq(s[3].type.dtype, DT_F64);
  ck_assert(s[4].scale == 2);
  ck_assert_int_eq(s[5].kind, ST_CONST);
  ck_assert_int_eq(s[5].value->kind, EX_LIST);
  ck_assert_int_eq(s[5].value->items[0]->nitems, 2);
  ck_assert_int_eq(s[6].kind, ST_PARAM);
  ck_assert_ptr_nonnull(s[6].value);
  ck_assert_ptr_null(s[6].init);
  ck_assert_ptr_nonnull(s[7].init);
  ck_assert_str_eq(s[7].init->name, "he");
  ck_assert(s[8].value == NULL && s[8].init == NULL && s[8].type.rank == 0);
  ck_assert_int_eq(s[9].kind, ST_ASSIGN);
  ck_assert_str_eq(s[9].name, "h");
  ck_assert_int_eq(s[9].value->kind, EX_CALL);
  ck_assert_str_eq(s[9].value->as, "r");
  ck_assert_int_eq(s[9].value->as_loc.col, 16);
  ck_assert_int_eq(s[10].kind, ST_OUTPUT);
  ck_assert_int_eq(s[11].kind, ST_MINIMIZE);
  ck_assert_str_eq(s[11].name, "loss");
  ck_assert_int_eq(s[12].kind, ST_TRAIN);
  ck_assert_int_eq(s[12].nsettings, 3);
  ck_assert_str_eq(s[12].settings[0].key, "optimizer");
  ck_assert_str_eq(s[12].settings[1].key, "steps");
  ck_assert_str_eq(s[12].settings[2].key, "batch");
  ck_assert_int_eq(s[12].settings[2].loc.line, 14);
  pool_free(p);
}
END_TEST

START_TEST(parse_keywords_are_contextual) {
  Pool *p = pool_new();
  const char *text = "input = relu(x)\noutput = input\n";
  SrcFile f = {"t.kiln", text};
  Program *prog = parse_program(p, &f, strlen(text));
  ck_assert_int_eq(prog->nstmts, 2);
  ck_assert_int_eq(prog->stmts[0].kind, ST_ASSIGN);
  ck_assert_str_eq(prog->stmts[0].name, "input");
  ck_assert_int_eq(prog->stmts[1].kind, ST_ASSIGN);
  pool_free(p);
}
END_TEST

/* Prints an expression fully parenthesised. */
static void show(Buf *b, const Expr *e) {
  switch (e->kind) {
  case EX_NUM: buf_puts(b, e->text); break;
  case EX_NAME: buf_puts(b, e->name); break;
  case EX_NEG: buf_puts(b, "(-"); show(b, e->lhs); buf_puts(b, ")"); break;
  case EX_BINARY:
    buf_puts(b, "(");
    show(b, e->lhs);
    buf_printf(b, " %c ", e->op);
    show(b, e->rhs);
    buf_puts(b, ")");
    break;
  case EX_CALL:
    buf_printf(b, "%s(", e->name);
    for (int i = 0; i < e->nargs; i++) {
      if (i) buf_puts(b, ", ");
      if (e->args[i].name) buf_printf(b, "%s=", e->args[i].name);
      show(b, e->args[i].value);
    }
    buf_puts(b, ")");
    if (e->as) buf_printf(b, " as %s", e->as);
    break;
  case EX_LIST:
  case EX_INDEX:
    if (e->kind == EX_INDEX) show(b, e->lhs);
    buf_puts(b, "[");
    for (int i = 0; i < e->nitems; i++) {
      if (i) buf_puts(b, ", ");
      show(b, e->items[i]);
    }
    buf_puts(b, "]");
    break;
  case EX_RANGE:
    if (e->lhs) show(b, e->lhs);
    buf_puts(b, ":");
    if (e->rhs) show(b, e->rhs);
    break;
  }
}

static const struct { const char *in, *out; } prec_cases[] = {
    {"a + b * c ^ 2", "(a + (b * (c ^ 2)))"},
    {"a - b - c", "((a - b) - c)"},
    {"a / b * c", "((a / b) * c)"},
    {"i % 10 + 1", "((i % 10) + 1)"},
    {"a * b % c ^ 2", "((a * b) % (c ^ 2))"},
    {"a ^ b ^ c", "(a ^ (b ^ c))"},
    {"-a ^ 2", "(-(a ^ 2))"},
    {"x[:, 2:5] * 2", "(x[:, 2:5] * 2)"},
    {"-x[1, -2:, :3]^2", "(-(x[1, (-2):, :3] ^ 2))"},
    {"f(x)[0][1:]", "f(x)[0][1:]"},
    {"a ^ -2", "(a ^ (-2))"},
    {"-a * b", "((-a) * b)"},
    {"(a + b) * c", "((a + b) * c)"},
    {"f(a, k=[1, -1]) + 1", "(f(a, k=[1, (-1)]) + 1)"},
    {"2 * linear(x, out=3) as fc", "(2 * linear(x, out=3) as fc)"},
    {"relu(\n  x,\n  y\n)", "relu(x, y)"},
    {"[[1, 2],\n [3, 4]]", "[[1, 2], [3, 4]]"},
    {"1.5e3 - .5", "(1.5e3 - .5)"},
};

START_TEST(parse_precedence) {
  Pool *p = pool_new();
  const char *text = pool_printf(p, "r = %s\n", prec_cases[_i].in);
  SrcFile f = {"t.kiln", text};
  Program *prog = parse_program(p, &f, strlen(text));
  ck_assert_int_eq(prog->nstmts, 1);
  Buf b = {0};
  show(&b, prog->stmts[0].value);
  ck_assert_str_eq(b.p, prec_cases[_i].out);
  buf_free(&b);
  pool_free(p);
}
END_TEST

/* ---- lowering ---- */

START_TEST(lower_mlp_example) {
  Trap t;
  Graph *g = NULL;
  if (KILN_TRY(&t)) {
    g = fe_compile_file(KILN_SOURCE_DIR "/examples/mlp.kiln");
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    ck_abort_msg("%s", t.msg);
  }
  ck_assert_str_eq(g->name, "mlp");
  ck_assert_int_eq(g->nsyms, 1);
  ck_assert_str_eq(g->syms[0], "B");
  struct { const char *name; const char *shape; int init; int64_t fan_in; } params[] = {
      {"fc1.weight", "[256, 784]", KILN_INIT_TORCH_DEFAULT, 784},
      {"fc1.bias", "[256]", KILN_INIT_TORCH_DEFAULT, 784},
      {"fc2.weight", "[10, 256]", KILN_INIT_TORCH_DEFAULT, 256},
      {"fc2.bias", "[10]", KILN_INIT_TORCH_DEFAULT, 256},
  };
  ck_assert_int_eq(g->nparams, 4);
  for (int i = 0; i < 4; i++) {
    Node *n = ir_at(g, g->params[i]);
    ck_assert_str_eq(n->name, params[i].name);
    ck_assert_int_eq(n->op, OP_PARAM);
    ck_assert_int_eq(n->role, ROLE_PARAM);
    ck_assert_int_eq(n->dtype, DT_F32);
    ck_assert_str_eq(shape_of_node(g, n), params[i].shape);
    ck_assert_int_eq(n->leaf.init, params[i].init);
    ck_assert_int_eq(n->leaf.fan_in, params[i].fan_in);
  }
  Node *image = leaf(g, "image"), *label = leaf(g, "label");
  ck_assert_int_eq(image->op, OP_INPUT);
  ck_assert_int_eq(image->role, ROLE_INPUT);
  ck_assert_int_eq(image->leaf.source, KILN_SRC_IMAGES);
  ck_assert(image->leaf.scale == 1.0 / 255);
  ck_assert_str_eq(shape_of_node(g, image), "[B, 1, 28, 28]");
  ck_assert_int_eq(label->leaf.source, KILN_SRC_LABELS);
  ck_assert_int_eq(label->dtype, DT_I32);
  /* Both modes merge: one loss node, and the output is the named logits. */
  ck_assert_int_ge(g->loss_train, 0);
  ck_assert_int_eq(g->loss_train, g->loss_eval);
  Node *loss = ir_at(g, g->loss_eval);
  ck_assert_int_eq(loss->op, OP_CROSS_ENTROPY);
  ck_assert_str_eq(loss->name, "loss");
  ck_assert_int_eq(loss->loc.line, 11);
  ck_assert_int_eq(loss->loc.col, 10);
  Node *out = ir_at(g, g->output_eval);
  ck_assert_str_eq(out->name, "logits");
  ck_assert_str_eq(shape_of_node(g, out), "[B, 10]");
  ck_assert_int_eq(out->op, OP_ADD);
  Node *mm = ir_at(g, out->in[0]);
  ck_assert_int_eq(mm->op, OP_MATMUL);
  ck_assert(!mm->attr.trans_a && mm->attr.trans_b);
  ck_assert_int_eq(g->train.optimizer, OPT_ADAM);
  ck_assert(g->train.lr == 1e-3 && g->train.beta1 == 0.9 && g->train.beta2 == 0.999 &&
            g->train.eps == 1e-8);
  ck_assert_int_eq(g->train.batch, 64);
  ck_assert_int_eq(g->train.epochs, 3);
  ck_assert_int_eq(g->train.seed, 1);
  ck_assert_int_eq(g->train.init, -1);
  ck_assert_int_eq(g->train.loc.line, 16);
  ir_free(g);
}
END_TEST

START_TEST(lower_linear_toy_example) {
  Trap t;
  Graph *g = NULL;
  if (KILN_TRY(&t)) {
    g = fe_compile_file(KILN_SOURCE_DIR "/examples/linear_toy.kiln");
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    ck_abort_msg("%s", t.msg);
  }
  ck_assert_int_eq(g->nsyms, 0);
  Node *x = leaf(g, "x"), *w = leaf(g, "w"), *b = leaf(g, "b");
  ck_assert_int_eq(x->op, OP_CONST);
  ck_assert_int_eq(x->dtype, DT_F64);
  ck_assert_int_ge(x->data, 0);
  ck_assert_int_eq(g->data[x->data].n, 2);
  ck_assert(g->data[x->data].v[0] == 2 && g->data[x->data].v[1] == 7);
  ck_assert_int_eq(w->op, OP_PARAM);
  ck_assert_int_eq(w->leaf.init, KILN_INIT_DATA);
  ck_assert_int_eq(g->data[w->data].n, 2);
  ck_assert(g->data[w->data].v[0] == 0 && g->data[w->data].v[1] == 0);
  ck_assert_int_eq(b->leaf.init, KILN_INIT_DATA);
  ck_assert(g->data[b->data].v[0] == 1);
  Node *loss = ir_at(g, g->loss_train);
  ck_assert_int_eq(loss->op, OP_SUM);
  ck_assert_int_eq(loss->shape.rank, 0);
  ck_assert_str_eq(ir_at(g, g->output_eval)->name, "z");
  ck_assert_int_eq(g->train.optimizer, OPT_SGD);
  ck_assert(g->train.lr == 0.01 && g->train.momentum == 0);
  ck_assert_int_eq(g->train.steps, 15);
  ck_assert_int_eq(g->train.batch, 0);
  ck_assert_int_eq(g->train.epochs, 1);
  /* 0.5 * (y - z) ^ 2: the number becomes an f64 scalar constant. */
  Node *mul = ir_at(g, loss->in[0]);
  ck_assert_int_eq(mul->op, OP_MUL);
  Node *half = ir_at(g, mul->in[0]);
  ck_assert_int_eq(half->op, OP_CONST);
  ck_assert_int_eq(half->dtype, DT_F64);
  ck_assert(half->attr.value == 0.5);
  ck_assert_int_eq(half->loc.line, 16);
  Node *pw = ir_at(g, mul->in[1]);
  ck_assert_int_eq(pw->op, OP_POW);
  ck_assert_int_eq(ir_at(g, pw->in[0])->op, OP_SUB);
  ck_assert(ir_at(g, pw->in[1])->attr.value == 2);
  ir_free(g);
}
END_TEST

START_TEST(lower_precedence_graph) {
  Graph *g = compile_ok("input a: f32[3]\ninput b: f32[3]\ninput c: f32[3]\n"
                        "r = a + b * c ^ 2\nloss = sum(r)\nminimize loss\n");
  Node *add = ir_at(g, ir_at(g, g->loss_train)->in[0]);
  ck_assert_int_eq(add->op, OP_ADD);
  ck_assert_str_eq(add->name, "r");
  ck_assert_int_eq(add->loc.col, 7);
  ck_assert_str_eq(ir_at(g, add->in[0])->name, "a");
  Node *mul = ir_at(g, add->in[1]);
  ck_assert_int_eq(mul->op, OP_MUL);
  ck_assert_int_eq(mul->loc.col, 11);
  Node *pw = ir_at(g, mul->in[1]);
  ck_assert_int_eq(pw->op, OP_POW);
  ck_assert_str_eq(ir_at(g, pw->in[0])->name, "c");
  ir_free(g);
}
END_TEST

START_TEST(lower_layer_naming) {
  Graph *g = compile_ok("input x: f32[B, 4]\n"
                        "fc = linear(x, out=3)\n"                 /* the variable: fc */
                        "h = relu(linear(fc, out=5))\n"           /* auto: linear1 */
                        "linear2 = linear(h, out=2, bias=false)\n" /* explicit, taken */
                        "o = linear(h, out=2) + linear(h, out=2) as named\n" /* linear3, named */
                        "loss = sum(o) + sum(linear2)\nminimize loss\n");
  const char *names[] = {"fc.weight", "fc.bias", "linear1.weight", "linear1.bias",
                         "linear2.weight", "linear3.weight", "linear3.bias", "named.weight",
                         "named.bias"};
  ck_assert_int_eq(g->nparams, 9);
  for (int i = 0; i < 9; i++)
    ck_assert_str_eq(ir_at(g, g->params[i])->name, names[i]);
  ck_assert_int_eq(ir_find_leaf(g, "linear2.bias"), -1);
  ck_assert_str_eq(shape_of_node(g, leaf(g, "linear1.weight")), "[5, 3]");
  ck_assert_int_eq(g->output_eval, -1);
  ir_free(g);
}
END_TEST

START_TEST(lower_init_schemes) {
  Graph *g = compile_ok("input x: f32[B, 4]\nh = linear(x, out=3)\n"
                        "param p: f32[5, 2, 3]\nparam q: f32[7] init=normal(std=0.5)\n"
                        "loss = sum(h) + sum(p) + sum(q)\nminimize loss\n"
                        "train {\n  init = he\n}\n");
  ck_assert_int_eq(g->train.init, KILN_INIT_HE_NORMAL);
  ck_assert_int_eq(leaf(g, "h.weight")->leaf.init, KILN_INIT_HE_NORMAL);
  ck_assert_int_eq(leaf(g, "h.weight")->leaf.fan_in, 4);
  ck_assert_int_eq(leaf(g, "h.weight")->leaf.fan_out, 3);
  ck_assert_int_eq(leaf(g, "h.bias")->leaf.init, KILN_INIT_ZEROS);
  Node *p = leaf(g, "p");
  ck_assert_int_eq(p->leaf.init, KILN_INIT_HE_NORMAL);
  ck_assert_int_eq(p->leaf.fan_in, 6);
  ck_assert_int_eq(p->leaf.fan_out, 15);
  Node *q = leaf(g, "q");
  ck_assert_int_eq(q->leaf.init, KILN_INIT_NORMAL);
  ck_assert(q->leaf.init_a == 0.5);
  ir_free(g);

  static const struct { const char *init; int w, b; double a; } schemes[] = {
      {"default", KILN_INIT_TORCH_DEFAULT, KILN_INIT_TORCH_DEFAULT, 0},
      {"he_uniform", KILN_INIT_HE_UNIFORM, KILN_INIT_ZEROS, 0},
      {"xavier", KILN_INIT_XAVIER_UNIFORM, KILN_INIT_ZEROS, 0},
      {"xavier_normal", KILN_INIT_XAVIER_NORMAL, KILN_INIT_ZEROS, 0},
      {"uniform(a=0.1)", KILN_INIT_UNIFORM, KILN_INIT_ZEROS, 0.1},
      {"normal(0.02)", KILN_INIT_NORMAL, KILN_INIT_ZEROS, 0.02},
  };
  for (size_t i = 0; i < sizeof schemes / sizeof *schemes; i++) {
    char src[256];
    snprintf(src, sizeof src,
             "input x: f64[B, 4]\nh = linear(x, out=3)\nloss = mean(h)\nminimize loss\n"
             "train { init = %s }\n", schemes[i].init);
    g = compile_ok(src);
    Node *w = leaf(g, "h.weight"), *b = leaf(g, "h.bias");
    ck_assert_int_eq(w->dtype, DT_F64);
    ck_assert_int_eq(w->leaf.init, schemes[i].w);
    ck_assert_int_eq(b->leaf.init, schemes[i].b);
    ck_assert(w->leaf.init_a == schemes[i].a);
    ir_free(g);
  }
}
END_TEST

START_TEST(lower_train_settings) {
  Graph *g = compile_ok("input x: f32[B, 2]\nloss = mean(x)\nminimize loss\n"
                        "train {\n  optimizer = sgd(lr=0.1, momentum=0.9, nesterov=true,"
                        " weight_decay=5e-4)\n  batch = 32 epochs = 2\n  seed = 7\n}\n");
  ck_assert_int_eq(g->train.optimizer, OPT_SGD);
  ck_assert(g->train.lr == 0.1 && g->train.momentum == 0.9 && g->train.nesterov &&
            g->train.weight_decay == 5e-4 && g->train.dampening == 0);
  ck_assert_int_eq(g->train.batch, 32);
  ck_assert_int_eq(g->train.epochs, 2);
  ck_assert_int_eq(g->train.seed, 7);
  ir_free(g);
  g = compile_ok("input x: f32[B, 2]\nloss = mean(x)\nminimize loss\n"
                 "train { optimizer = adam(lr=2e-3, beta1=0.8, beta2=0.99, eps=1e-6) }\n");
  ck_assert_int_eq(g->train.optimizer, OPT_ADAM);
  ck_assert(g->train.lr == 2e-3 && g->train.beta1 == 0.8 && g->train.beta2 == 0.99 &&
            g->train.eps == 1e-6);
  ck_assert_str_eq(g->name, "t");  /* no model statement: the file stem */
  ir_free(g);
  /* torch.optim's defaults when only the optimizer is named */
  static char buf[512];
#define TRAIN_WITH(body) \
  (snprintf(buf, sizeof buf, "input x: f32[B, 2]\nloss = mean(x)\nminimize loss\ntrain { %s",  \
            body), buf)
  g = compile_ok(TRAIN_WITH("optimizer = adagrad() }\n"));
  ck_assert(g->train.optimizer == OPT_ADAGRAD && g->train.lr == 0.01 && g->train.eps == 1e-10 &&
            g->train.lr_decay == 0 && g->train.initial_accumulator_value == 0);
  ir_free(g);
  g = compile_ok(TRAIN_WITH("optimizer = adagrad(0.1, 0.01, 1e-4, 0.5, 1e-9) }\n"));
  ck_assert(g->train.lr == 0.1 && g->train.lr_decay == 0.01 && g->train.weight_decay == 1e-4 &&
            g->train.initial_accumulator_value == 0.5 && g->train.eps == 1e-9);
  ir_free(g);
  g = compile_ok(TRAIN_WITH("optimizer = rmsprop(momentum=0.9, centered=true) }\n"));
  ck_assert(g->train.optimizer == OPT_RMSPROP && g->train.lr == 0.01 && g->train.alpha == 0.99 &&
            g->train.eps == 1e-8 && g->train.momentum == 0.9 && g->train.centered);
  ir_free(g);
  g = compile_ok(TRAIN_WITH("optimizer = adadelta(rho=0.95) }\n"));
  ck_assert(g->train.optimizer == OPT_ADADELTA && g->train.lr == 1.0 && g->train.rho == 0.95 &&
            g->train.eps == 1e-6);
  ir_free(g);
  g = compile_ok(TRAIN_WITH("regularize = [elastic_net(l1=1e-5, l2=1e-4), max_norm(3)]"
                                   "\n early_stop = patience(4) }\n"));
  ck_assert(g->train.reg_l1 == 1e-5 && g->train.reg_l2 == 1e-4 && g->train.max_norm == 3 &&
            g->train.patience == 4);
  ir_free(g);
  /* AdamW's defaults are torch's, weight_decay 1e-2 included */
  g = compile_ok(TRAIN_WITH("optimizer = adamw() }\n"));
  ck_assert(g->train.optimizer == OPT_ADAMW && g->train.lr == 1e-3 && g->train.beta1 == 0.9 &&
            g->train.beta2 == 0.999 && g->train.eps == 1e-8 && g->train.weight_decay == 1e-2);
  ck_assert_int_eq(g->train.clip, CLIP_NONE);
  ck_assert_int_eq(g->train.schedule, KILN_LR_CONSTANT);
  ir_free(g);
  g = compile_ok(TRAIN_WITH("optimizer = adamw(2e-3, 0.8, 0.99, 1e-6, 0) clip = norm(1.5)\n"
                            " schedule = step(3) warmup = 2 }\n"));
  ck_assert(g->train.lr == 2e-3 && g->train.beta1 == 0.8 && g->train.beta2 == 0.99 &&
            g->train.eps == 1e-6 && g->train.weight_decay == 0);
  ck_assert(g->train.clip == CLIP_NORM && g->train.clip_at == 1.5);
  ck_assert(g->train.schedule == KILN_LR_STEP && g->train.step_size == 3 &&
            g->train.gamma == 0.1 && g->train.warmup == 2);
  ir_free(g);
  g = compile_ok(TRAIN_WITH("clip = value(clip_value=0.25) schedule = cosine(t_max=20, "
                            "eta_min=1e-5) }\n"));
  ck_assert(g->train.clip == CLIP_VALUE && g->train.clip_at == 0.25);
  ck_assert(g->train.schedule == KILN_LR_COSINE && g->train.t_max == 20 &&
            g->train.eta_min == 1e-5 && g->train.warmup == 0);
  /* The schedule reaches the trainer through the settings table, doubles exactly. */
  IrSettings st;
  ir_settings(g, &st);
  ck_assert_int_eq(st.n, 7);
  ck_assert(!strcmp(st.s[4].key, "lr_schedule") && !strcmp(st.s[4].value, "3"));
  ck_assert(!strcmp(st.s[5].key, "lr_t_max") && !strcmp(st.s[5].value, "20"));
  ck_assert(!strcmp(st.s[6].key, "lr_eta_min") && strtod(st.s[6].value, NULL) == 1e-5);
  ir_free(g);
  g = compile_ok(TRAIN_WITH("schedule = exponential(0.95) }\n"));
  ck_assert(g->train.schedule == KILN_LR_EXPONENTIAL && g->train.gamma == 0.95);
  ir_free(g);
#undef TRAIN_WITH
}
END_TEST

START_TEST(lower_reductions_reshape_and_numbers) {
  Graph *g = compile_ok(
      "input x: f32[B, 2, 3]\n"
      "s = sum(x, axes=[-1], keepdims=true)\n"   /* [B, 2, 1] */
      "m = mean(x, axes=[0, 2])\n"               /* [2] */
      "r = reshape(x, shape=[B, -1])\n"          /* [B, 6] */
      "q = reshape(x, shape=[-1, 3])\n"          /* [2*B, 3] */
      "f = flatten(x)\n"                          /* [B, 6]: same node as r */
      "k = 2 * 3 - 1\n"                           /* a number: 5 */
      "e = mse(r, f) + k * sum(exp(log(sqrt(relu(neg(q)))))) / div(m, 2)\n"
      "loss = mean(e)\nminimize loss\n");
  ck_assert_str_eq(shape_of_node(g, ir_at(g, ir_find_leaf(g, "x"))), "[B, 2, 3]");
  int ids[5] = {-1, -1, -1, -1, -1};
  const char *names[] = {"s", "m", "r", "q", "e"};
  for (int i = 0; i < g->nnodes; i++)
    for (int k = 0; k < 5; k++)
      if (ir_at(g, i)->name && !strcmp(ir_at(g, i)->name, names[k])) ids[k] = i;
  ck_assert_str_eq(shape_of_node(g, ir_at(g, ids[0])), "[B, 2, 1]");
  ck_assert_str_eq(shape_of_node(g, ir_at(g, ids[1])), "[2]");
  ck_assert_str_eq(shape_of_node(g, ir_at(g, ids[2])), "[B, 6]");
  ck_assert_str_eq(shape_of_node(g, ir_at(g, ids[3])), "[2*B, 3]");
  ck_assert_str_eq(shape_of_node(g, ir_at(g, ids[4])), "[2]");
  ck_assert_int_eq(ir_at(g, ids[0])->attr.axes, 4u);
  ck_assert(ir_at(g, ids[0])->attr.keepdims);
  ck_assert_int_eq(ir_at(g, ids[1])->attr.axes, 5u);
  /* The folded number 2 * 3 - 1 reaches the graph as one constant 5. */
  bool five = false;
  for (int i = 0; i < g->nnodes; i++)
    five |= ir_at(g, i)->op == OP_CONST && ir_at(g, i)->data < 0 && ir_at(g, i)->attr.value == 5;
  ck_assert(five);
  ir_free(g);
}
END_TEST

START_TEST(lower_const_fill_and_int_literals) {
  Graph *g = compile_ok("const c: f32[2, 2] = 0.5\nconst l: i32[3] = [0, -1, 2]\n"
                        "param p: f32[2, 2]\nparam q: f32[2, 2] = -3\n"
                        "loss = sum(c * p * q)\nminimize loss\n");
  Node *c = leaf(g, "c"), *l = leaf(g, "l"), *q = leaf(g, "q");
  /* A filled constant is its one value at its shape, with no array of copies. */
  ck_assert_int_eq(c->data, -1);
  ck_assert(c->attr.value == 0.5);
  ck_assert_int_eq(c->shape.rank, 2);
  ck_assert(g->data[l->data].v[1] == -1);
  ck_assert_int_eq(leaf(g, "p")->leaf.init, KILN_INIT_TORCH_DEFAULT);
  ck_assert_int_eq(leaf(g, "p")->leaf.fan_in, 2);
  /* So is a filled parameter's initial value. */
  ck_assert_int_eq(q->data, -1);
  ck_assert_int_eq(q->leaf.init, KILN_INIT_CONST);
  ck_assert(q->leaf.init_a == -3);
  ir_free(g);
}
END_TEST

START_TEST(lower_locations) {
  Graph *g = compile_ok("input x: f32[B, 4]\n\n  h = relu(x)\nloss = sum(h)\nminimize loss\n");
  Node *x = leaf(g, "x");
  ck_assert_int_eq(x->loc.line, 1);
  ck_assert_int_eq(x->loc.col, 7);
  ck_assert_str_eq(x->loc.file->path, "t.kiln");
  Node *loss = ir_at(g, g->loss_train);
  Node *h = ir_at(g, loss->in[0]);
  ck_assert_int_eq(h->op, OP_RELU);
  ck_assert_int_eq(h->loc.line, 3);
  ck_assert_int_eq(h->loc.col, 7);
  ck_assert_int_eq(loss->loc.line, 4);
  ck_assert_int_eq(loss->loc.col, 8);
  ir_free(g);
}
END_TEST

/* Compiles the bytes text[0..n) written to a file; returns the error text (static) or NULL. */
static const char *compile_file_err(const char *text, size_t n, char *path, size_t cap) {
  static char msg[sizeof ((Trap *)0)->msg];
  snprintf(path, cap, "/tmp/kiln_front_XXXXXX");
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, n), (ssize_t)n);
  close(fd);
  Trap t;
  const char *r = NULL;
  if (KILN_TRY(&t)) {
    ir_free(fe_compile_file(path));
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    memcpy(msg, t.msg, sizeof msg);
    r = msg;
  }
  unlink(path);
  return r;
}

/* A NUL byte is an error where it is (it used to be strerror(EILSEQ) with no position); a UTF-8
 * byte-order mark is skipped; a directory or a FIFO is refused by what it is, without waiting. */
START_TEST(compile_file_hostile_bytes) {
  char path[64], want[512];
  static const char nul[] = "param w: f32[2]\nloss = s\0um(w)\nminimize loss\n";
  const char *got = compile_file_err(nul, sizeof nul - 1, path, sizeof path);
  snprintf(want, sizeof want, "%s:2:9: error: unexpected byte 0x00 (NUL) in the model file\n"
           "  loss = s\n"
           "          ^\n", path);
  ck_assert_str_eq(got, want);
  static const char bom[] = "\xEF\xBB\xBFparam w: f32[2]\nloss = sum(w)\nminimize loss\n";
  got = compile_file_err(bom, sizeof bom - 1, path, sizeof path);
  ck_assert_msg(got == NULL, "%s", got);
  static const char bom_err[] = "\xEF\xBB\xBFparam w: f32[2]\nloss = sum(v)\nminimize loss\n";
  got = compile_file_err(bom_err, sizeof bom_err - 1, path, sizeof path);
  snprintf(want, sizeof want, "%s:2:12: error: 'v' is not defined\n"
           "  loss = sum(v)\n"
           "             ^\n", path);
  ck_assert_str_eq(got, want);
  Trap t;
  if (KILN_TRY(&t)) {
    fe_compile_file("/tmp");
    kiln_trap_end(&t);
    ck_abort_msg("no error");
  }
  kiln_trap_end(&t);
  ck_assert_str_eq(t.msg, "error: cannot read '/tmp': it is a directory\n");
  char fifo[] = "/tmp/kiln_front_fifo_XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(fifo));
  char fpath[64];
  snprintf(fpath, sizeof fpath, "%s/f", fifo);
  ck_assert_int_eq(mkfifo(fpath, 0600), 0);
  if (KILN_TRY(&t)) {
    fe_compile_file(fpath);
    kiln_trap_end(&t);
    ck_abort_msg("no error");
  }
  kiln_trap_end(&t);
  snprintf(want, sizeof want, "error: cannot read '%s': it is not a regular file\n", fpath);
  ck_assert_str_eq(t.msg, want);
  unlink(fpath);
  rmdir(fifo);
}
END_TEST

START_TEST(compile_file_missing) {
  Trap t;
  if (KILN_TRY(&t)) {
    fe_compile_file("/nonexistent/x.kiln");
    kiln_trap_end(&t);
    ck_abort_msg("no error");
  }
  kiln_trap_end(&t);
  ck_assert_str_eq(t.msg, "error: cannot read '/nonexistent/x.kiln': No such file or directory\n");
}
END_TEST

START_TEST(compile_error_restores_trap) {
  /* After an error the caller's trap is popped, and a nested trap sees the error. */
  Trap outer;
  if (KILN_TRY(&outer)) {
    ck_assert_ptr_eq(kiln_trap, &outer);
    const char *m = compile_err("x = $\n");
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_eq(kiln_trap, &outer);
    kiln_trap_end(&outer);
  } else {
    kiln_trap_end(&outer);
    ck_abort_msg("outer trap fired: %s", outer.msg);
  }
  ck_assert_ptr_null(kiln_trap);
}
END_TEST

/* ---- issue 3: convolutional networks ---- */

/* The node a statement assigned to `name` (the last one when reassigned). */
static Node *named(Graph *g, const char *name) {
  Node *found = NULL;
  for (int i = 0; i < g->nnodes; i++)
    if (!op_is_leaf(ir_at(g, i)->op) && ir_at(g, i)->name && !strcmp(ir_at(g, i)->name, name))
      found = ir_at(g, i);
  ck_assert_msg(found != NULL, "no node '%s'", name);
  return found;
}

static bool has_update(Graph *g, EntryKind e, const char *target) {
  for (int i = 0; i < g->entries[e].nupdates; i++)
    if (!strcmp(ir_at(g, g->entries[e].updates[i].target)->name, target)) return true;
  return false;
}

/* How many nodes of op the entry runs. */
static int count_reachable(Graph *g, EntryKind e, Op op) {
  unsigned char *mark = calloc((size_t)g->nnodes, 1);
  ck_assert_ptr_nonnull(mark);
  ir_reachable(g, e, mark);
  int n = 0;
  for (int i = 0; i < g->nnodes; i++) n += mark[i] && ir_at(g, i)->op == op;
  free(mark);
  return n;
}

/* Runs train_build, failing the test on an error. */
static void build_entries(Graph *g) {
  Trap t;
  if (KILN_TRY(&t)) {
    train_build(g);
    kiln_trap_end(&t);
    return;
  }
  kiln_trap_end(&t);
  ck_abort_msg("train_build: %s", t.msg);
}

START_TEST(lower_mnist_cnn_example) {
  Trap t;
  Graph *g = NULL;
  if (KILN_TRY(&t)) {
    g = fe_compile_file(KILN_SOURCE_DIR "/examples/mnist_cnn.kiln");
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    ck_abort_msg("%s", t.msg);
  }
  ck_assert_str_eq(g->name, "mnist_cnn");
  /* PyTorch's names, layouts and initialisers (seed 003's network). */
  static const struct { const char *name, *shape; int init; int64_t fan_in, fan_out, count; }
      params[] = {
          {"conv1.weight", "[8, 1, 3, 3]", KILN_INIT_TORCH_DEFAULT, 9, 72, 72},
          {"conv1.bias", "[8]", KILN_INIT_TORCH_DEFAULT, 9, 72, 8},
          {"bn1.weight", "[8]", KILN_INIT_ONES, 8, 8, 8},
          {"bn1.bias", "[8]", KILN_INIT_ZEROS, 8, 8, 8},
          {"conv2.weight", "[32, 8, 5, 5]", KILN_INIT_TORCH_DEFAULT, 200, 800, 6400},
          {"conv2.bias", "[32]", KILN_INIT_TORCH_DEFAULT, 200, 800, 32},
          {"bn2.weight", "[32]", KILN_INIT_ONES, 32, 32, 32},
          {"bn2.bias", "[32]", KILN_INIT_ZEROS, 32, 32, 32},
          {"fc1.weight", "[600, 1568]", KILN_INIT_TORCH_DEFAULT, 1568, 600, 940800},
          {"fc1.bias", "[600]", KILN_INIT_TORCH_DEFAULT, 1568, 600, 600},
          {"fc2.weight", "[10, 600]", KILN_INIT_TORCH_DEFAULT, 600, 10, 6000},
          {"fc2.bias", "[10]", KILN_INIT_TORCH_DEFAULT, 600, 10, 10},
      };
  ck_assert_int_eq(g->nparams, 12);
  int64_t total = 0;
  for (int i = 0; i < 12; i++) {
    Node *n = ir_at(g, g->params[i]);
    ck_assert_str_eq(n->name, params[i].name);
    ck_assert_int_eq(n->role, ROLE_PARAM);
    ck_assert_int_eq(n->dtype, DT_F32);
    ck_assert_str_eq(shape_of_node(g, n), params[i].shape);
    ck_assert_int_eq(n->leaf.init, params[i].init);
    ck_assert_int_eq(n->leaf.fan_in, params[i].fan_in);
    ck_assert_int_eq(n->leaf.fan_out, params[i].fan_out);
    ck_assert_int_eq(shape_numel(&n->shape, NULL), params[i].count);
    total += shape_numel(&n->shape, NULL);
  }
  ck_assert_int_eq(total, 954002);
  /* Buffers: saved (role STATE), in PyTorch's state_dict order after the layer's parameters. */
  static const struct { const char *name, *shape; DType dt; int init; } buffers[] = {
      {"bn1.running_mean", "[8]", DT_F32, KILN_INIT_ZEROS},
      {"bn1.running_var", "[8]", DT_F32, KILN_INIT_ONES},
      {"bn1.num_batches_tracked", "[]", DT_F64, KILN_INIT_ZEROS},
      {"bn2.running_mean", "[32]", DT_F32, KILN_INIT_ZEROS},
      {"bn2.running_var", "[32]", DT_F32, KILN_INIT_ONES},
      {"bn2.num_batches_tracked", "[]", DT_F64, KILN_INIT_ZEROS},
  };
  int nstate = 0;
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = ir_at(g, i);
    if (n->op != OP_STATE) continue;
    ck_assert_int_lt(nstate, 6);
    ck_assert_str_eq(n->name, buffers[nstate].name);
    ck_assert_int_eq(n->role, ROLE_STATE);
    ck_assert_int_eq(n->dtype, buffers[nstate].dt);
    ck_assert_str_eq(shape_of_node(g, n), buffers[nstate].shape);
    ck_assert_int_eq(n->leaf.init, buffers[nstate].init);
    nstate++;
  }
  ck_assert_int_eq(nstate, 6);
  /* The seed's sizes: 28x28x8 -> 14x14x8 -> 14x14x32 -> 7x7x32 -> 1568 -> 600 -> 10. */
  static const struct { const char *name, *shape; Op op; } chain[] = {
      {"conv1", "[B, 8, 28, 28]", OP_ADD},      {"bn1", "[B, 8, 28, 28]", OP_ADD},
      {"h1", "[B, 8, 14, 14]", OP_MAXPOOL2D},   {"conv2", "[B, 32, 14, 14]", OP_ADD},
      {"h2", "[B, 32, 7, 7]", OP_MAXPOOL2D},    {"x", "[B, 1568]", OP_RESHAPE},
      {"fc1", "[B, 600]", OP_ADD},              {"logits", "[B, 10]", OP_ADD},
  };
  for (size_t i = 0; i < sizeof chain / sizeof *chain; i++) {
    Node *n = named(g, chain[i].name);
    ck_assert_msg(!strcmp(shape_of_node(g, n), chain[i].shape), "%s: %s", chain[i].name,
                  shape_of_node(g, n));
    ck_assert_int_eq(n->op, chain[i].op);
  }
  /* conv1 = conv2d(...) + bias as [8, 1, 1]; padding 1 on every side, stride 1. */
  Node *conv = ir_at(g, named(g, "conv1")->in[0]);
  ck_assert_int_eq(conv->op, OP_CONV2D);
  ck_assert_int_eq(conv->loc.line, 10);
  ck_assert(conv->attr.pad[0] == 1 && conv->attr.pad[1] == 1 && conv->attr.pad[2] == 1 &&
            conv->attr.pad[3] == 1 && conv->attr.stride[0] == 1 && conv->attr.groups == 1);
  ck_assert_str_eq(shape_of_node(g, ir_at(g, named(g, "conv1")->in[1])), "[8, 1, 1]");
  Node *pool = named(g, "h1");
  ck_assert(pool->attr.kernel[0] == 2 && pool->attr.stride[1] == 2 && pool->attr.pad[3] == 0);
  /* Batch norm makes the modes differ: two losses. */
  ck_assert_int_ne(g->loss_train, g->loss_eval);
  ck_assert_int_eq(g->train.epochs, 2);
  ck_assert_int_eq(g->train.batch, 64);
  build_entries(g);
  const char *stats[] = {"bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
                         "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked"};
  for (int i = 0; i < 6; i++) {
    ck_assert_msg(has_update(g, ENTRY_TRAIN, stats[i]), "no train update of %s", stats[i]);
    /* grad updates them too, as PyTorch's forward does, so grad then apply is train */
    ck_assert(!has_update(g, ENTRY_EVAL, stats[i]) && has_update(g, ENTRY_GRAD, stats[i]));
    ck_assert(!has_update(g, ENTRY_APPLY, stats[i]));
  }
  ck_assert_int_eq(g->entries[ENTRY_EVAL].nupdates, 0);
  ck_assert_int_eq(g->entries[ENTRY_GRAD].nupdates, 6 + g->nparams); /* + the gradients */
  /* The eval entry normalises with the running statistics only: no batch means, no numel. */
  ck_assert_int_eq(count_reachable(g, ENTRY_EVAL, OP_NUMEL), 0);
  ck_assert_int_eq(count_reachable(g, ENTRY_EVAL, OP_MEAN), 0);
  ir_free(g);
}
END_TEST

/* Padding modes (seed 003: same = half, full) for odd and even kernels, with dilation; input
 * [B, 2, 9, 10]. */
static const struct { const char *args; int64_t pad[4]; const char *out; } pad_cases[] = {
    {"kernel=3, pad=same", {1, 1, 1, 1}, "[B, 4, 9, 10]"},
    {"kernel=4, pad=same", {1, 2, 1, 2}, "[B, 4, 9, 10]"},               /* total 3: extra after */
    {"kernel=[4, 3], dilation=[1, 2], pad=same", {1, 2, 2, 2}, "[B, 4, 9, 10]"}, /* 3 and 4 */
    {"kernel=2, dilation=3, pad=same", {1, 2, 1, 2}, "[B, 4, 9, 10]"},   /* total 3 */
    {"kernel=3, pad=full", {2, 2, 2, 2}, "[B, 4, 11, 12]"},              /* H + k - 1 */
    {"kernel=4, dilation=2, pad=full", {6, 6, 6, 6}, "[B, 4, 15, 16]"},
    {"kernel=2, pad=valid", {0, 0, 0, 0}, "[B, 4, 8, 9]"},
    {"kernel=[3, 5], stride=2, pad=[1, 2]", {1, 1, 2, 2}, "[B, 4, 5, 5]"},
    {"kernel=3, stride=[2, 3], pad=1", {1, 1, 1, 1}, "[B, 4, 5, 4]"},
    {"kernel=3, pad=[0, 2, 1, 0]", {0, 2, 1, 0}, "[B, 4, 9, 9]"},    /* ONNX's asymmetric pads */
};

START_TEST(lower_conv_padding) {
  char src[256];
  snprintf(src, sizeof src, "input x: f32[B, 2, 9, 10]\nh = conv2d(x, out=4, %s, bias=false)\n"
           "loss = mean(h)\nminimize loss\n", pad_cases[_i].args);
  Graph *g = compile_ok(src);
  Node *h = named(g, "h");
  ck_assert_int_eq(h->op, OP_CONV2D);
  for (int k = 0; k < 4; k++)
    ck_assert_msg(h->attr.pad[k] == pad_cases[_i].pad[k], "%s: pad[%d] = %lld",
                  pad_cases[_i].args, k, (long long)h->attr.pad[k]);
  ck_assert_str_eq(shape_of_node(g, h), pad_cases[_i].out);
  ck_assert_int_eq(ir_find_leaf(g, "h.bias"), -1);
  ir_free(g);
}
END_TEST

/* A model without minimize evaluates only: its eval entry outputs every `output` (the first as
 * eval.output, the others by name) and there is no training step. Pools take asymmetric pads up
 * to the window's span less one (ONNX's ceil_mode). */
START_TEST(inference_model_outputs) {
  Graph *g = compile_ok("input x: f32[B, 2, 5, 5]\n"
                        "p = maxpool2d(x, kernel=3, stride=2, pad=[0, 2, 1, 1])\n"
                        "h = relu(x)\n"
                        "output p\noutput h\n");
  ck_assert_int_eq(g->loss_train, -1);
  ck_assert_str_eq(shape_of_node(g, named(g, "p")), "[B, 2, 3, 3]");
  build_entries(g);
  ck_assert_int_eq(g->entries[ENTRY_TRAIN].noutputs, 0);
  ck_assert_int_eq(g->entries[ENTRY_TRAIN].nupdates, 0);
  ck_assert_int_eq(g->entries[ENTRY_GRAD].noutputs, 0);
  ck_assert_int_eq(g->entries[ENTRY_EVAL].noutputs, 2);
  ck_assert_str_eq(g->entries[ENTRY_EVAL].outputs[0].name, "eval.output");
  ck_assert_int_eq(g->entries[ENTRY_EVAL].outputs[0].node, named(g, "p")->id);
  ck_assert_str_eq(g->entries[ENTRY_EVAL].outputs[1].name, "eval.output.h");
  ck_assert_int_eq(g->entries[ENTRY_EVAL].outputs[1].node, named(g, "h")->id);
  ir_free(g);
  ck_assert_str_eq(compile_err("input x: f32[B, 2, 5, 5]\np = maxpool2d(x, kernel=3, "
                               "pad=[0, 3, 0, 0])\noutput p\n"),
                   "t.kiln:2:5: error: maxpool2d: padding [0, 3, 0, 0] leaves windows of the "
                   "kernel [3, 3] without an input element (at most dilation·(kernel − 1) per "
                   "side)\n  p = maxpool2d(x, kernel=3, pad=[0, 3, 0, 0])\n      ^\n");
}
END_TEST

START_TEST(lower_conv_groups_and_init) {
  Graph *g = compile_ok("input x: f64[B, 4, 6, 6]\n"
                        "h = conv2d(x, out=6, kernel=[3, 2], groups=2, dilation=[1, 2]) as c\n"
                        "p = conv2d(h, out=6, kernel=1)\n"   /* pointwise */
                        "loss = mean(p)\nminimize loss\ntrain { init = he }\n");
  Node *w = leaf(g, "c.weight"), *b = leaf(g, "c.bias");
  ck_assert_str_eq(shape_of_node(g, w), "[6, 2, 3, 2]");
  ck_assert_int_eq(w->dtype, DT_F64);
  ck_assert_int_eq(w->leaf.init, KILN_INIT_HE_NORMAL);
  ck_assert_int_eq(w->leaf.fan_in, 12);    /* size(1) * kh * kw */
  ck_assert_int_eq(w->leaf.fan_out, 36);   /* size(0) * kh * kw */
  ck_assert_int_eq(b->leaf.init, KILN_INIT_ZEROS);
  Node *conv = ir_at(g, named(g, "h")->in[0]);
  ck_assert_int_eq(conv->attr.groups, 2);
  ck_assert(conv->attr.dilation[0] == 1 && conv->attr.dilation[1] == 2);
  ck_assert_str_eq(shape_of_node(g, conv), "[B, 6, 4, 4]");
  ck_assert_str_eq(shape_of_node(g, leaf(g, "p.weight")), "[6, 6, 1, 1]");
  ck_assert_str_eq(shape_of_node(g, named(g, "p")), "[B, 6, 4, 4]");
  ir_free(g);
}
END_TEST

START_TEST(lower_pools) {
  Graph *g = compile_ok("input x: f32[B, 3, 9, 9]\n"
                        "m = maxpool2d(x, 3, stride=2, pad=1, dilation=2)\n"
                        "a = avgpool2d(x, kernel=[2, 3], count_include_pad=false, pad=[1, 1])\n"
                        "l = l2pool2d(x, kernel=2, stride=1)\n"
                        "loss = mean(m) + mean(a) + mean(l)\nminimize loss\n");
  Node *m = named(g, "m");
  ck_assert_int_eq(m->op, OP_MAXPOOL2D);
  ck_assert(m->attr.kernel[0] == 3 && m->attr.stride[0] == 2 && m->attr.pad[0] == 1 &&
            m->attr.dilation[1] == 2);
  ck_assert_str_eq(shape_of_node(g, m), "[B, 3, 4, 4]");   /* (9 + 2 - 5)/2 + 1 */
  Node *a = named(g, "a");
  ck_assert_int_eq(a->op, OP_AVGPOOL2D);
  ck_assert(!a->attr.count_include_pad && a->attr.stride[0] == 2 && a->attr.stride[1] == 3);
  ck_assert(a->attr.dilation[0] == 1 && a->attr.dilation[1] == 1);
  ck_assert_str_eq(shape_of_node(g, a), "[B, 3, 5, 3]");
  /* l2pool2d = sqrt(relu(avgpool2d(x * x, count_include_pad)) * kh*kw) (seed 001 eq. 31b). */
  Node *l = named(g, "l");
  ck_assert_int_eq(l->op, OP_SQRT);
  ck_assert_str_eq(shape_of_node(g, l), "[B, 3, 8, 8]");
  Node *scaled = ir_at(g, l->in[0]);
  ck_assert_int_eq(scaled->op, OP_MUL);
  ck_assert(ir_at(g, scaled->in[1])->op == OP_CONST && ir_at(g, scaled->in[1])->attr.value == 4);
  ck_assert_int_eq(ir_at(g, scaled->in[0])->op, OP_RELU);
  Node *avg = ir_at(g, ir_at(g, scaled->in[0])->in[0]);
  ck_assert_int_eq(avg->op, OP_AVGPOOL2D);
  ck_assert(avg->attr.count_include_pad && avg->attr.stride[0] == 1);
  Node *sq = ir_at(g, avg->in[0]);
  ck_assert(sq->op == OP_MUL && sq->in[0] == leaf(g, "x")->id && sq->in[1] == sq->in[0]);
  ir_free(g);
}
END_TEST

/* An all-zero window (common after relu) has gradient 0 through l2pool2d, as in PyTorch, not the
 * NaN of sqrt's infinite slope times zero. */
START_TEST(l2pool_gradient_at_zero) {
  Graph *g = compile_ok("input x: f64[B, 1, 2, 2]\n"
                        "param w: f64[1] = [1]\n"
                        "l = l2pool2d(x * w, kernel=2)\n"
                        "loss = sum(l)\nminimize loss\n");
  train_build(g);
  Interp *it = interp_new(g, 1, false);
  double *x = interp_data(it, leaf(g, "x")->id);
  for (int i = 0; i < 4; i++) x[i] = 0;
  interp_data(it, leaf(g, "w")->id)[0] = 1;
  char err[RT_ERR_LEN];
  ck_assert_msg(interp_run(it, ENTRY_GRAD, 1, err) == 0, "%s", err);
  ck_assert(interp_data(it, g->grads[0])[0] == 0.0);
  /* Away from zero: d/dw sqrt(sum (w x)^2) = sqrt(sum x^2) at w = 1; 3-4-0-0 gives 5. */
  x[0] = 3, x[1] = 4;
  ck_assert_msg(interp_run(it, ENTRY_GRAD, 1, err) == 0, "%s", err);
  ck_assert_double_eq_tol(interp_data(it, g->grads[0])[0], 5.0, 1e-12);
  interp_free(it);
  ir_free(g);
}
END_TEST

START_TEST(lower_batchnorm_1d_and_options) {
  Graph *g = compile_ok("input x: f32[B, 5]\n"
                        "h = batchnorm(x, eps=1e-3, momentum=0.25)\n"
                        "n = batchnorm(h, affine=false) as plain\n"
                        "loss = mean(n)\nminimize loss\n");
  ck_assert_int_eq(g->nparams, 2);
  ck_assert_str_eq(shape_of_node(g, leaf(g, "h.weight")), "[5]");
  ck_assert_int_eq(ir_find_leaf(g, "plain.weight"), -1);
  ck_assert_str_eq(shape_of_node(g, leaf(g, "plain.running_var")), "[5]");
  /* The statistics are over the batch axis only (BatchNorm1d), and updates are registered once. */
  int rm = leaf(g, "h.running_mean")->id, rv = leaf(g, "h.running_var")->id;
  Entry *tr = &g->entries[ENTRY_TRAIN];
  ck_assert_int_eq(tr->nupdates, 6);
  const Update *u = &tr->updates[0];
  ck_assert_int_eq(u->target, rm);
  /* (1 - m) * running + m * batch */
  Node *upd = ir_at(g, u->value), *keep = ir_at(g, upd->in[0]), *take = ir_at(g, upd->in[1]);
  ck_assert(upd->op == OP_ADD && keep->op == OP_MUL && take->op == OP_MUL);
  ck_assert(ir_at(g, keep->in[0])->attr.value == 0.75 && keep->in[1] == rm);
  ck_assert(ir_at(g, take->in[0])->attr.value == 0.25);
  Node *mu = ir_at(g, ir_at(g, take->in[1])->in[0]);
  ck_assert(mu->op == OP_MEAN && mu->attr.axes == 1u && mu->attr.keepdims);
  /* running_var takes the unbiased variance: var * n / (n - 1), n = numel over the axes. */
  ck_assert_int_eq(tr->updates[1].target, rv);
  Node *unb = ir_at(g, ir_at(g, ir_at(g, tr->updates[1].value)->in[1])->in[1]);
  ck_assert_int_eq(unb->op, OP_MUL);
  Node *ratio = ir_at(g, unb->in[1]);
  ck_assert_int_eq(ratio->op, OP_DIV);
  Node *numel = ir_at(g, ratio->in[0]);
  ck_assert(numel->op == OP_NUMEL && numel->attr.axes == 1u && numel->in[0] == leaf(g, "x")->id);
  ck_assert_int_eq(ir_at(g, ratio->in[1])->op, OP_SUB);
  ck_assert_int_eq(tr->updates[2].target, leaf(g, "h.num_batches_tracked")->id);
  /* eps reaches the graph; the eval pass normalises with the running statistics. */
  bool eps = false;
  for (int i = 0; i < g->nnodes; i++)
    eps |= ir_at(g, i)->op == OP_CONST && ir_at(g, i)->attr.value == 1e-3;
  ck_assert(eps);
  ck_assert_int_ne(g->loss_train, g->loss_eval);
  build_entries(g);
  ck_assert_int_eq(count_reachable(g, ENTRY_EVAL, OP_MEAN), 1); /* only the loss's mean */
  ck_assert_int_eq(g->entries[ENTRY_EVAL].nupdates, 0);
  ir_free(g);
}
END_TEST

/* The batch-norm composition computes PyTorch's numbers (reference interpreter, f64): batch
 * statistics and running-statistics updates in a training step, running statistics in eval. */
START_TEST(lower_batchnorm_values) {
  Graph *g = compile_ok("input x: f64[B, 2]\nconst c: f64[2] = [1, 2]\n"
                        "h = batchnorm(x, eps=0.01, momentum=0.1)\n"
                        "loss = sum(h * c)\noutput h\nminimize loss\n"
                        "train { optimizer = sgd(lr=0) }\n");
  build_entries(g);
  Interp *it = interp_new(g, 4, false);
  ck_assert_ptr_nonnull(it);
  for (int i = 0; i < g->nnodes; i++) {  /* the initialisers rt_init would apply */
    Node *n = ir_at(g, i);
    if (n->op != OP_STATE && n->op != OP_PARAM) continue;
    double v = n->leaf.init == KILN_INIT_ONES    ? 1
               : n->leaf.init == KILN_INIT_CONST ? n->leaf.init_a
                                                 : 0;
    for (int64_t k = 0; k < interp_numel(it, i); k++) interp_data(it, i)[k] = v;
  }
  /* channel 0: 1 2 3 4 (mean 2.5, biased var 1.25); channel 1: 0 0 2 2 (mean 1, var 1) */
  const double x[8] = {1, 0, 2, 0, 3, 2, 4, 2};
  memcpy(interp_data(it, leaf(g, "x")->id), x, sizeof x);
  char err[RT_ERR_LEN];
  ck_assert_msg(interp_run(it, ENTRY_TRAIN, 4, err) == 0, "%s", err);
  double *rm = interp_data(it, leaf(g, "h.running_mean")->id);
  double *rv = interp_data(it, leaf(g, "h.running_var")->id);
  ck_assert(fabs(rm[0] - 0.25) < 1e-12 && fabs(rm[1] - 0.1) < 1e-12);
  /* 0.9 * 1 + 0.1 * unbiased var (n = 4: var * 4/3) */
  ck_assert(fabs(rv[0] - (0.9 + 0.1 * 1.25 * 4 / 3)) < 1e-12);
  ck_assert(fabs(rv[1] - (0.9 + 0.1 * 4.0 / 3)) < 1e-12);
  ck_assert(interp_data(it, leaf(g, "h.num_batches_tracked")->id)[0] == 1);
  /* training-mode loss: sum over channels of c * sum((x - mean) / sqrt(var + eps)) = 0 */
  ck_assert(fabs(interp_data(it, g->loss_train)[0]) < 1e-12);
  int ht = -1;
  for (int i = 0; i < g->nnodes; i++)
    if (ir_at(g, i)->name && !strcmp(ir_at(g, i)->name, "h") && i != g->output_eval) ht = i;
  ck_assert_int_ge(ht, 0);
  ck_assert(fabs(interp_data(it, ht)[0] - (1 - 2.5) / sqrt(1.25 + 0.01)) < 1e-12);
  ck_assert(fabs(interp_data(it, ht)[5] - (2 - 1) / sqrt(1 + 0.01)) < 1e-12);
  /* evaluation: the running statistics just updated */
  ck_assert_msg(interp_run(it, ENTRY_EVAL, 4, err) == 0, "%s", err);
  double *y = interp_data(it, g->output_eval);
  ck_assert(fabs(y[0] - (1 - rm[0]) / sqrt(rv[0] + 0.01)) < 1e-12);
  ck_assert(fabs(y[7] - (2 - rm[1]) / sqrt(rv[1] + 0.01)) < 1e-12);
  interp_free(it);
  ir_free(g);
}
END_TEST

START_TEST(lower_layernorm_instancenorm) {
  Graph *g = compile_ok("input x: f32[B, 3, 4, 5]\n"
                        "ln = layernorm(x)\n"
                        "i = instancenorm(ln, eps=0.01)\n"
                        "loss = mean(i)\nminimize loss\n");
  Node *w = leaf(g, "ln.weight"), *b = leaf(g, "ln.bias");
  ck_assert_str_eq(shape_of_node(g, w), "[3, 4, 5]");
  ck_assert_int_eq(w->leaf.init, KILN_INIT_ONES);
  ck_assert_int_eq(b->leaf.init, KILN_INIT_ZEROS);
  ck_assert_int_eq(g->nparams, 2);
  /* Same in both modes: one loss. */
  ck_assert_int_eq(g->loss_train, g->loss_eval);
  Node *in = named(g, "i");
  ck_assert_int_eq(in->op, OP_DIV);
  Node *mu = ir_at(g, ir_at(g, in->in[0])->in[1]);
  ck_assert(mu->op == OP_MEAN && mu->attr.axes == 12u);
  Node *lmu = NULL;
  for (int k = 0; k < g->nnodes; k++)
    if (ir_at(g, k)->op == OP_MEAN && ir_at(g, k)->in[0] == leaf(g, "x")->id) lmu = ir_at(g, k);
  ck_assert(lmu && lmu->attr.axes == 14u && lmu->attr.keepdims);
  for (int k = 0; k < g->nnodes; k++)
    ck_assert(ir_at(g, k)->op != OP_STATE);
  ir_free(g);
}
END_TEST

static uint32_t fnv1a(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

START_TEST(lower_dropout_modes) {
  Graph *g = compile_ok("input x: f32[B, 8]\nparam w: f32[8]\n"
                        "h = dropout(x)\n"
                        "h = dropout(h, p=0.25)\n"
                        "k = dropout(h, 0.1) as drop\n"
                        "z = dropout(k, p=0)\n"
                        "loss = mean(z * w)\nminimize loss\n");
  /* Sites are named by `as` or dropout<n>, never by the variable: `h = dropout(h)` twice draws
   * two different masks. */
  Node *d1 = named(g, "h");
  ck_assert_int_eq(d1->op, OP_DROPOUT);
  ck_assert(d1->attr.value == 0.25 && d1->attr.salt == fnv1a("dropout2"));
  Node *d0 = ir_at(g, d1->in[0]);
  ck_assert(d0->op == OP_DROPOUT && d0->attr.value == 0.5 && d0->attr.salt == fnv1a("dropout1"));
  Node *dk = named(g, "k");
  ck_assert(dk->op == OP_DROPOUT && dk->attr.salt == fnv1a("drop"));
  ck_assert_int_eq(ir_at(g, ir_at(g, g->loss_train)->in[0])->in[0], dk->id); /* p = 0: k */
  /* One counter per model: f64 scalar, role OPT, seeded, one update. */
  Node *c = leaf(g, "dropout.step");
  ck_assert(d0->in[1] == c->id && d1->in[1] == c->id && dk->in[1] == c->id);
  ck_assert_int_eq(c->op, OP_STATE);
  ck_assert_int_eq(c->role, ROLE_OPT);
  ck_assert_int_eq(c->dtype, DT_F64);
  ck_assert_int_eq(c->shape.rank, 0);
  ck_assert_int_eq(c->leaf.init, KILN_INIT_SEED);
  ck_assert_int_eq(g->entries[ENTRY_TRAIN].nupdates, 1);
  Node *inc = ir_at(g, g->entries[ENTRY_TRAIN].updates[0].value);
  ck_assert(inc->op == OP_ADD && inc->in[0] == c->id && ir_at(g, inc->in[1])->attr.value == 1);
  /* Evaluation mode: no dropout at all. */
  Node *eloss = ir_at(g, g->loss_eval);
  ck_assert_int_eq(ir_at(g, eloss->in[0])->in[0], leaf(g, "x")->id);
  build_entries(g);
  ck_assert_int_eq(count_reachable(g, ENTRY_EVAL, OP_DROPOUT), 0);
  ck_assert_int_eq(count_reachable(g, ENTRY_TRAIN, OP_DROPOUT), 3);
  ck_assert(has_update(g, ENTRY_TRAIN, "dropout.step"));
  ck_assert(has_update(g, ENTRY_GRAD, "dropout.step"));  /* each grad draws new masks */
  ck_assert(!has_update(g, ENTRY_APPLY, "dropout.step"));
  ir_free(g);
}
END_TEST

START_TEST(lower_activations_and_layout) {
  Graph *g = compile_ok("input x: f32[B, 4]\ninput t: f32[B, 4]\ninput im: f32[B, 2, 3, 3]\n"
                        "a = sigmoid(x) + tanh(x) + leaky_relu(x) + leaky_relu(x, slope=0.2)\n"
                        "s = softmax(x)\n"
                        "ls = log_softmax(x, axis=0)\n"
                        "tr = transpose(x)\n"
                        "tp = transpose(im, axes=[0, 2, 3, -3])\n"
                        "c = concat(im, im, relu(im))\n"
                        "c0 = concat(x, t, axis=-2)\n"
                        "b = bce_with_logits(x, t)\n"
                        "loss = b + mean(a) + mean(s) + mean(ls) + mean(tr) + mean(tp) + mean(c)"
                        " + mean(c0)\nminimize loss\n");
  int x = leaf(g, "x")->id;
  int slope_default = 0, slope_given = 0, other = 0;
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = ir_at(g, i);
    if (n->op == OP_LEAKY_RELU) {
      ck_assert_int_eq(n->in[0], x);
      slope_default += n->attr.value == 0.01;
      slope_given += n->attr.value == 0.2;
    }
    if (n->op == OP_SIGMOID || n->op == OP_TANH) {
      ck_assert_int_eq(n->in[0], x);
      other++;
    }
  }
  ck_assert(slope_default == 1 && slope_given == 1 && other == 2);
  ck_assert(named(g, "s")->op == OP_SOFTMAX && named(g, "s")->attr.axis == 1);
  ck_assert(named(g, "ls")->op == OP_LOG_SOFTMAX && named(g, "ls")->attr.axis == 0);
  Node *tr = named(g, "tr");
  ck_assert(tr->op == OP_TRANSPOSE && tr->attr.perm[0] == 1 && tr->attr.perm[1] == 0);
  ck_assert_str_eq(shape_of_node(g, tr), "[4, B]");
  Node *tp = named(g, "tp");
  ck_assert_str_eq(shape_of_node(g, tp), "[B, 3, 3, 2]");
  ck_assert(tp->attr.perm[3] == 1);
  Node *c = named(g, "c");   /* ((im, im), relu(im)) along axis 1 */
  ck_assert(c->op == OP_CONCAT && c->attr.axis == 1);
  ck_assert_str_eq(shape_of_node(g, c), "[B, 6, 3, 3]");
  ck_assert_int_eq(ir_at(g, c->in[0])->op, OP_CONCAT);
  ck_assert_str_eq(shape_of_node(g, ir_at(g, c->in[0])), "[B, 4, 3, 3]");
  ck_assert_str_eq(shape_of_node(g, named(g, "c0")), "[2*B, 4]");
  Node *b = named(g, "b");
  ck_assert(b->op == OP_MEAN && b->attr.axes == 3u && b->shape.rank == 0);
  ck_assert_int_eq(ir_at(g, b->in[0])->op, OP_BCE_LOGITS);
  ir_free(g);
}
END_TEST

START_TEST(lower_loops) {
  /* Layers named in a loop get the iteration's index (ModuleList style); auto names count on;
   * variables assigned in the body keep their last value; the loop variable is a number. */
  Graph *g = compile_ok("input x: f32[B, 2, 8, 8]\n"
                        "h = x\n"
                        "for i in range(1, 7, 2) {\n"
                        "  c = conv2d(h, out=1, kernel=3, dilation=i % 4, pad=same)\n"
                        "  h = concat(h, relu(c), axis=1)\n"
                        "  for j in [0.5, 2] { s = sum(linear(flatten(h), out=2)) * j }\n"
                        "}\n"
                        "for k in range(2) { h = relu(conv2d(h, out=5, kernel=1) as pw) }\n"
                        "for k in range(3, 3) { h = relu(h) }\n"
                        "loss = mean(h) + k + s\nminimize loss\n");
  const char *names[] = {"c.0.weight",        "c.0.bias",     "linear1.weight",
                         "linear1.bias",      "linear2.weight", "linear2.bias",
                         "c.1.weight",        "c.1.bias",     "linear3.weight"};
  for (int i = 0; i < 9; i++)
    ck_assert_str_eq(ir_at(g, g->params[i])->name, names[i]);
  ck_assert_int_eq(g->nparams, 3 * 6 + 2 * 2);
  ck_assert_str_eq(shape_of_node(g, leaf(g, "c.2.weight")), "[1, 4, 3, 3]");
  ck_assert_str_eq(shape_of_node(g, leaf(g, "pw.1.weight")), "[5, 5, 1, 1]");
  /* dilation = i % 4 for i = 1, 3, 5: 1, 3, 1 */
  int dil[3] = {1, 3, 1}, seen = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const Node *n = ir_at(g, i);
    if (n->op == OP_CONV2D && n->shape.d[1].n == 1 && seen < 3)
      ck_assert_int_eq(n->attr.dilation[0], dil[seen++]);
  }
  ck_assert_int_eq(seen, 3);
  ir_free(g);
}
END_TEST

START_TEST(lower_orthogonal_and_lsuv) {
  Graph *g = compile_ok("input x: f32[B, 4]\nparam p: f32[3, 4] init=orthogonal(gain=2)\n"
                        "h = linear(x, out=3) as fc\nloss = mean(h) + mean(p)\nminimize loss\n"
                        "train { init = orthogonal }\n");
  ck_assert_int_eq(leaf(g, "p")->leaf.init, KILN_INIT_ORTHOGONAL);
  ck_assert_double_eq(leaf(g, "p")->leaf.init_a, 2);
  ck_assert_int_eq(leaf(g, "fc.weight")->leaf.init, KILN_INIT_ORTHOGONAL);
  ck_assert_double_eq(leaf(g, "fc.weight")->leaf.init_a, 1);
  ck_assert_int_eq(leaf(g, "fc.bias")->leaf.init, KILN_INIT_ZEROS);
  ck_assert(!g->train.lsuv);
  ir_free(g);
  g = compile_ok("input x: f32[B, 4]\nh = linear(relu(linear(x, out=3) as a), out=2) as b\n"
                 "loss = mean(h)\nminimize loss\ntrain { init = lsuv }\n");
  ck_assert(g->train.lsuv);
  ck_assert_int_eq(leaf(g, "a.weight")->leaf.init, KILN_INIT_ORTHOGONAL);
  ck_assert_int_eq(g->nlayers, 2);
  ck_assert_str_eq(ir_at(g, g->layer_weight[0])->name, "a.weight");
  ck_assert_str_eq(ir_at(g, g->layer_weight[1])->name, "b.weight");
  ir_free(g);
}
END_TEST

START_TEST(lower_untied_bias) {
  Graph *g = compile_ok("input x: f32[B, 2, 8, 8]\ninput s: f32[B, 3, 10]\n"
                        "h = conv2d(x, out=3, kernel=3, stride=2, bias=untied) as c\n"
                        "k = conv1d(s, out=2, kernel=5, bias=untied) as d\n"
                        "loss = mean(h) + mean(k)\nminimize loss\n");
  ck_assert_str_eq(shape_of_node(g, leaf(g, "c.bias")), "[3, 3, 3]");
  ck_assert_str_eq(shape_of_node(g, leaf(g, "d.bias")), "[2, 6]");
  ck_assert_int_eq(leaf(g, "c.bias")->leaf.fan_in, 2 * 9);
  ir_free(g);
}
END_TEST

START_TEST(lower_auto_names_skip_buffers) {
  /* An unnamed batchnorm without affine has no weight; its buffers still take the name. */
  Graph *g = compile_ok("input x: f32[B, 3]\n"
                        "h = relu(batchnorm(x, affine=false))\n"
                        "k = relu(batchnorm(h))\n"
                        "loss = mean(k)\nminimize loss\n");
  leaf(g, "batchnorm1.running_mean");
  leaf(g, "batchnorm2.weight");
  leaf(g, "batchnorm2.running_mean");
  ir_free(g);
}
END_TEST

/* freeze: a frozen first convolution gets no gradient, no optimizer state and no update, and the
 * backward pass computes nothing for it: one weight gradient convolution fewer, and none
 * reaching back to the image. */
static const char frozen_cnn[] =
    "input x: f32[B, 1, 12, 12]\ninput y: i32[B]\n"
    "h = relu(conv2d(x, out=4, kernel=3) as c1)\n"
    "h = relu(conv2d(h, out=4, kernel=3) as c2)\n"
    "logits = linear(flatten(h), out=3) as fc\nloss = cross_entropy(logits, y)\nminimize loss\n"
    "train { batch = 4 %s }\n";

START_TEST(freeze_prunes_the_backward_pass) {
  char text[1024];
  snprintf(text, sizeof text, frozen_cnn, "");
  Graph *all = compile_ok(text);
  build_entries(all);
  snprintf(text, sizeof text, frozen_cnn, "freeze = c1");
  Graph *g = compile_ok(text);
  build_entries(g);
  ck_assert(leaf(g, "c1.weight")->leaf.frozen && leaf(g, "c1.bias")->leaf.frozen);
  ck_assert(!leaf(g, "c2.weight")->leaf.frozen);
  ck_assert_int_eq(ir_find_leaf(g, "grad.c1.weight"), -1);
  ck_assert_int_eq(ir_find_leaf(g, "c1.weight.exp_avg"), -1);
  ck_assert(ir_find_leaf(g, "grad.c2.weight") >= 0);
  ck_assert(!has_update(g, ENTRY_TRAIN, "c1.weight") && !has_update(g, ENTRY_APPLY, "c1.bias"));
  ck_assert(has_update(g, ENTRY_TRAIN, "c2.weight"));
  ck_assert_int_eq(count_reachable(all, ENTRY_TRAIN, OP_CONV2D_BWD_FILTER), 2);
  ck_assert_int_eq(count_reachable(g, ENTRY_TRAIN, OP_CONV2D_BWD_FILTER), 1);
  ck_assert_int_eq(count_reachable(all, ENTRY_TRAIN, OP_CONV2D_BWD_DATA), 1);
  ck_assert_int_eq(count_reachable(g, ENTRY_TRAIN, OP_CONV2D_BWD_DATA), 0);
  ir_free(all);
  ir_free(g);
  /* clipping by norm sums over the parameters that train */
  snprintf(text, sizeof text, frozen_cnn, "freeze = c1  clip = norm(1)");
  g = compile_ok(text);
  build_entries(g);
  ck_assert_int_eq(count_reachable(g, ENTRY_TRAIN, OP_CONV2D_BWD_FILTER), 1);
  ck_assert(!has_update(g, ENTRY_APPLY, "c1.weight") && has_update(g, ENTRY_APPLY, "fc.bias"));
  ir_free(g);
  /* freezing the last layers keeps the path back to the first */
  snprintf(text, sizeof text, frozen_cnn, "freeze = [c2, fc]");
  g = compile_ok(text);
  build_entries(g);
  ck_assert_int_eq(count_reachable(g, ENTRY_TRAIN, OP_CONV2D_BWD_FILTER), 1);
  ck_assert_int_eq(count_reachable(g, ENTRY_TRAIN, OP_CONV2D_BWD_DATA), 1);
  ir_free(g);
}
END_TEST

/* Errors found when the parameters exist (train_build). */
START_TEST(freeze_and_group_errors) {
  static const struct { const char *train, *msg; } cases[] = {
      {"freeze = c3", "t.kiln:8:28: error: freeze: 'c3' names no layer or parameter of the model "
                      "(the first is 'c1.weight')\n"},
      {"freeze = [c1, c2, fc]", "t.kiln:8:29: error: freeze: every parameter is frozen; nothing "
                                "is left to train\n"},
      {"param_groups = [group(c1, lr=0.1), group(c1, fc, lr=1)]",
       "t.kiln:8:54: error: param_groups: 'c1.weight' is in two groups\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char text[1024];
    snprintf(text, sizeof text, frozen_cnn, cases[i].train);
    Graph *g = compile_ok(text);
    Trap t;
    if (KILN_TRY(&t)) {
      train_build(g);
      kiln_trap_end(&t);
      ck_abort_msg("%s: no error", cases[i].train);
    }
    kiln_trap_end(&t);
    char *nl = strchr(t.msg, '\n');
    ck_assert_msg(nl && !strncmp(t.msg, cases[i].msg, (size_t)(nl - t.msg + 1)),
                  "%s:\n%s", cases[i].train, t.msg);
    ir_free(g);
  }
}
END_TEST

/* ---- every error message ---- */

static const struct { const char *what, *src, *msg; } errors[] = {
    {"loop without in",
     "for i range(3) { }\n",
     "t.kiln:1:7: error: expected 'in' after the loop variable 'i', got 'range'\n"
     "  for i range(3) { }\n"
     "        ^\n"},
    {"loop unterminated",
     "input x: f32[B, 3]\nfor i in range(3) {\n  x2 = relu(x)\n",
     "t.kiln:2:19: error: unterminated loop: this '{' has no matching '}'\n"
     "  for i in range(3) {\n"
     "                    ^\n"},
    {"loop over a tensor",
     "input x: f32[B, 3]\nfor i in x { }\n",
     "t.kiln:2:10: error: a loop runs over range(...) or a list of numbers such as [1, 2, 4]\n"
     "  for i in x { }\n"
     "           ^\n"},
    {"loop zero step",
     "for i in range(0, 4, 0) { }\n",
     "t.kiln:1:22: error: range: the step must not be zero\n"
     "  for i in range(0, 4, 0) { }\n"
     "                       ^\n"},
    {"loop too long",
     "for i in range(1000000) { }\n",
     "t.kiln:1:10: error: this loop would run 1000000 times (at most 100000)\n"
     "  for i in range(1000000) { }\n"
     "           ^\n"},
    {"loops too long in all",
     "for i in range(1000) {\n for j in range(1000) { }\n}\n",
     "t.kiln:2:2: error: the loops repeat their bodies more than 100000 times in all\n"
     "   for j in range(1000) { }\n"
     "   ^\n"},
    {"param in a loop",
     "for i in range(2) {\n  param w: f32[3]\n}\n",
     "t.kiln:2:3: error: only assignments and loops may appear inside a loop\n"
     "    param w: f32[3]\n"
     "    ^\n"},
    {"loop variable is an input",
     "input x: f32[B, 3]\nfor x in range(2) { }\n",
     "t.kiln:2:5: error: cannot assign to input 'x' (defined on line 1)\n"
     "  for x in range(2) { }\n"
     "      ^\n"},
    {"loop layer named twice",
     "input x: f32[B, 3]\nfor i in range(2) {\n  h = linear(x, out=2) as fc\n"
     "  h2 = linear(x, out=2) as fc\n}\n",
     "t.kiln:4:28: error: parameter 'fc.0.weight' is defined twice\n"
     "    h2 = linear(x, out=2) as fc\n"
     "                             ^\n"},
    {"metric not a scalar",
     "input x: f32[B, 3]\nmetric x\n",
     "t.kiln:2:8: error: a metric is a floating-point scalar (the mean over a batch), but 'x' is "
     "f32[B, 3]\n"
     "  metric x\n"
     "         ^\n"},
    {"metric twice",
     "input x: f32[B, 3]\nm = mean(x)\nmetric m\nmetric m\nminimize m\n",
     "t.kiln:4:8: error: 'm' is already a metric\n"
     "  metric m\n"
     "         ^\n"},
    {"noise negative std",
     "input x: f32[B, 3]\nh = noise(x, std=-1)\n",
     "t.kiln:2:18: error: noise: 'std' must not be negative, got -1\n"
     "  h = noise(x, std=-1)\n"
     "                   ^\n"},
    {"noise site twice",
     "input x: f32[B, 3]\nh = noise(x, 1) + noise(x, 1) as n\nk = noise(x, 1) as n\n",
     "t.kiln:3:20: error: noise site 'n' is named twice: each site needs its own name\n"
     "  k = noise(x, 1) as n\n"
     "                     ^\n"},
    {"psnr peak",
     "input x: f32[B, 3]\np = psnr(x, x, peak=0)\n",
     "t.kiln:2:21: error: psnr: 'peak' must be positive, got 0\n"
     "  p = psnr(x, x, peak=0)\n"
     "                      ^\n"},
    {"conv kernel rank",
     "input x: f32[B, 1, 8, 8]\nconst k: f32[3, 3] = 0\nh = conv(x, k)\n",
     "t.kiln:3:13: error: conv: the kernel must have shape [out, C/groups, kh, kw], got [3, 3]\n"
     "  h = conv(x, k)\n"
     "              ^\n"},
    {"convolve kernel channels",
     "input x: f32[B, 2, 8, 8]\nconst k: f32[1, 3, 3, 3] = 0\nh = convolve(x, k)\n",
     "t.kiln:3:5: error: conv2d: weight [1, 3, 3, 3] expects 3 input channels per group, but the "
     "input [B, 2, 8, 8] has 2 in each of 1 groups\n"
     "  h = convolve(x, k)\n"
     "      ^\n"},
    {"lsuv on a parameter",
     "param w: f32[3, 3] init=lsuv\n",
     "t.kiln:1:25: error: lsuv initialises the layers of the whole model on data: it is a train "
     "block setting (init = lsuv), not a parameter's\n"
     "  param w: f32[3, 3] init=lsuv\n"
     "                          ^\n"},
    {"orthogonal gain",
     "train { init = orthogonal(gain=-1) }\n",
     "t.kiln:1:32: error: orthogonal: 'gain' must not be negative\n"
     "  train { init = orthogonal(gain=-1) }\n"
     "                                 ^\n"},
    {"group without lr",
     "train { param_groups = [group(fc)] }\n",
     "t.kiln:1:25: error: group: give its learning rate, e.g. lr=0.01\n"
     "  train { param_groups = [group(fc)] }\n"
     "                          ^\n"},
    {"group other hyper-parameter",
     "train { param_groups = group(fc, lr=1, momentum=0.9) }\n",
     "t.kiln:1:40: error: group: only 'lr' may differ between parameter groups, not 'momentum'\n"
     "  train { param_groups = group(fc, lr=1, momentum=0.9) }\n"
     "                                         ^\n"},
    {"freeze a number",
     "train { freeze = [fc, 2] }\n",
     "t.kiln:1:23: error: freeze: expected a layer or parameter name\n"
     "  train { freeze = [fc, 2] }\n"
     "                        ^\n"},
    {"conv bias word",
     "input x: f32[B, 2, 8, 8]\nh = conv2d(x, out=3, kernel=3, bias=tied)\n",
     "t.kiln:2:37: error: conv2d: 'bias' must be true, false or untied\n"
     "  h = conv2d(x, out=3, kernel=3, bias=tied)\n"
     "                                      ^\n"},
    {"modulo of a tensor",
     "input x: f32[B, 3]\nh = x % 2\n",
     "t.kiln:2:7: error: '%' works on numbers only (such as a loop index), not on tensors\n"
     "  h = x % 2\n"
     "        ^\n"},
    {"modulo by zero",
     "k = 5 % (2 - 2)\n",
     "t.kiln:1:7: error: 5 % 0: the divisor of '%' must not be zero\n"
     "  k = 5 % (2 - 2)\n"
     "        ^\n"},
    {"unexpected char",
     "x = $\n",
     "t.kiln:1:5: error: unexpected character '$'\n"
     "  x = $\n"
     "      ^\n"},
    {"unexpected byte",
     "x = \x01""\n",
     "t.kiln:1:5: error: unexpected byte 0x01\n"
     "  x = \\x01\n"
     "      ^\n"},
    /* Control bytes are shown escaped, never sent to the terminal; the caret still points. */
    {"escape sequence",
     "param w: f32[2]\nloss = sum(w) \x1b[31m\x7f\nminimize loss\n",
     "t.kiln:2:15: error: unexpected byte 0x1B\n"
     "  loss = sum(w) \\x1b[31m\\x7f\n"
     "                ^\n"},
    {"escape before the caret",
     "param w: f32[2]\nloss = \x1b sum(w)$\nminimize loss\n",
     "t.kiln:2:8: error: unexpected byte 0x1B\n"
     "  loss = \\x1b sum(w)$\n"
     "         ^\n"},
    {"invalid number",
     "a = 12abc\n",
     "t.kiln:1:5: error: invalid number '12abc'\n"
     "  a = 12abc\n"
     "      ^\n"},
    {"invalid exp",
     "a = 1e\n",
     "t.kiln:1:5: error: invalid number '1e'\n"
     "  a = 1e\n"
     "      ^\n"},
    {"num range",
     "a = 1e999\n",
     "t.kiln:1:5: error: number '1e999' is out of range\n"
     "  a = 1e999\n"
     "      ^\n"},
    {"expected rparen",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu(x\nloss = sum(h)\nminimize loss\n",
     "t.kiln:3:11: error: expected ')' after arguments, got end of line\n"
     "  h = relu(x\n"
     "            ^\n"},
    {"expected rparen 2",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu(x y)\n",
     "t.kiln:3:12: error: expected ')' after arguments, got 'y'\n"
     "  h = relu(x y)\n"
     "             ^\n"},
    {"unknown fn",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = conv3d(x)\n",
     "t.kiln:3:5: error: unknown function 'conv3d'\n"
     "  h = conv3d(x)\n"
     "      ^\n"},
    {"not defined",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu(z)\n",
     "t.kiln:3:10: error: 'z' is not defined\n"
     "  h = relu(z)\n"
     "           ^\n"},
    {"arity",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu(x, x)\n",
     "t.kiln:3:13: error: relu takes 1 argument, got 2\n"
     "  h = relu(x, x)\n"
     "              ^\n"},
    {"arity0",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu()\n",
     "t.kiln:3:5: error: relu takes 1 argument, got 0\n"
     "  h = relu()\n"
     "      ^\n"},
    {"at most",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = linear(x, 3, true, 4)\n",
     "t.kiln:3:24: error: linear takes at most 3 arguments, got 4\n"
     "  h = linear(x, 3, true, 4)\n"
     "                         ^\n"},
    {"missing out",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = linear(x)\n",
     "t.kiln:3:5: error: linear: missing argument 'out'\n"
     "  h = linear(x)\n"
     "      ^\n"},
    {"unknown arg",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = linear(x, outs=3)\n",
     "t.kiln:3:15: error: unknown argument 'outs' to linear\n"
     "  h = linear(x, outs=3)\n"
     "                ^\n"},
    {"twice arg",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = linear(x, out=3, out=4)\n",
     "t.kiln:3:22: error: linear: argument 'out' is given twice\n"
     "  h = linear(x, out=3, out=4)\n"
     "                       ^\n"},
    {"positional after kw",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = linear(x, out=3, true)\n",
     "t.kiln:3:22: error: positional argument after keyword argument 'out'\n"
     "  h = linear(x, out=3, true)\n"
     "                       ^\n"},
    {"second symbol",
     "input x: f32[B, 4]\ninput y: i32[B]\ninput z: f32[N, 4]\n",
     "t.kiln:3:14: error: a model may use one dimension symbol (the batch); 'N' is a second one\n"
     "  input z: f32[N, 4]\n"
     "               ^\n"},
    {"dup param",
     "input x: f32[B, 4]\ninput y: i32[B]\nfc1 = linear(x, out=3)\nfc1 = linear(x, out=3)\n",
     "t.kiln:4:7: error: parameter 'fc1.weight' is defined twice\n"
     "  fc1 = linear(x, out=3)\n"
     "        ^\n"},
    {"dup param as",
     "input x: f32[B, 4]\ninput y: i32[B]\na = linear(x, out=3) as fc\nb = relu(linear(x, out=3) as fc)\n",
     "t.kiln:4:30: error: parameter 'fc.weight' is defined twice\n"
     "  b = relu(linear(x, out=3) as fc)\n"
     "                               ^\n"},
    {"non scalar loss",
     "input x: f32[B, 4]\ninput y: i32[B]\nloss = linear(x, out=10)\nminimize loss\n",
     "t.kiln:4:10: error: 'loss' must be a scalar to minimize, but it has shape [B, 10]\n"
     "  minimize loss\n"
     "           ^\n"},
    {"no minimize",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu(x)\n\n# end\n",
     "t.kiln:3:12: error: no 'minimize' statement (and no 'output': a model without a loss "
     "only evaluates, so it needs an output)\n"
     "  h = relu(x)\n"
     "             ^\n"},
    {"no minimize empty",
     "",
     "t.kiln:1:1: error: no 'minimize' statement (and no 'output': a model without a loss "
     "only evaluates, so it needs an output)\n"
     "  \n"
     "  ^\n"},
    {"unterminated list",
     "const c: f32[2] = [1, 2\n",
     "t.kiln:1:19: error: unterminated list: this '[' has no matching ']'\n"
     "  const c: f32[2] = [1, 2\n"
     "                    ^\n"},
    {"unterminated list type",
     "input x: f32[B, 4\n",
     "t.kiln:1:13: error: unterminated list: this '[' has no matching ']'\n"
     "  input x: f32[B, 4\n"
     "              ^\n"},
    {"list sep",
     "const c: f32[2] = [1 2]\n",
     "t.kiln:1:22: error: expected ',' or ']' in list, got '2'\n"
     "  const c: f32[2] = [1 2]\n"
     "                       ^\n"},
    {"expected expr",
     "a = )\n",
     "t.kiln:1:5: error: expected an expression, got ')'\n"
     "  a = )\n"
     "      ^\n"},
    {"end of line",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu(x) x\n",
     "t.kiln:3:13: error: expected end of line after the statement, got 'x'\n"
     "  h = relu(x) x\n"
     "              ^\n"},
    {"expected =",
     "h relu(x)\n",
     "t.kiln:1:3: error: expected '=' after 'h' (or a statement keyword), got 'relu'\n"
     "  h relu(x)\n"
     "    ^\n"},
    {"statement",
     "= 3\n",
     "t.kiln:1:1: error: expected a statement, got '='\n"
     "  = 3\n"
     "  ^\n"},
    {"as nonlayer",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu(x) as r\n",
     "t.kiln:3:16: error: 'as' names a layer, but relu is not a layer\n"
     "  h = relu(x) as r\n"
     "                 ^\n"},
    {"as nonc",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = x as r\n",
     "t.kiln:3:7: error: 'as' names a layer and must follow a layer call such as linear(...)\n"
     "  h = x as r\n"
     "        ^\n"},
    {"bad type",
     "input x: f16[2]\n",
     "t.kiln:1:10: error: expected a type (f32, f64 or i32), got 'f16'\n"
     "  input x: f16[2]\n"
     "           ^\n"},
    {"dim zero",
     "input x: f32[0]\n",
     "t.kiln:1:14: error: a dimension must be an integer from 1 to 2147483647, got '0'\n"
     "  input x: f32[0]\n"
     "               ^\n"},
    {"dim big",
     "input x: f32[99999999999]\n",
     "t.kiln:1:14: error: a dimension must be an integer from 1 to 2147483647, got '99999999999'\n"
     "  input x: f32[99999999999]\n"
     "               ^\n"},
    {"dim float",
     "input x: f32[2.5]\n",
     "t.kiln:1:14: error: a dimension must be an integer from 1 to 2147483647, got '2.5'\n"
     "  input x: f32[2.5]\n"
     "               ^\n"},
    {"too many dims",
     "input x: f32[1,1,1,1,1,1,1]\n",
     "t.kiln:1:26: error: a tensor may have at most 6 dimensions\n"
     "  input x: f32[1,1,1,1,1,1,1]\n"
     "                           ^\n"},
    {"source",
     "input x: f32[2] from disk\n",
     "t.kiln:1:22: error: expected a data source ('images' or 'labels'), got 'disk'\n"
     "  input x: f32[2] from disk\n"
     "                       ^\n"},
    {"labels dtype",
     "input x: f32[B] from labels\n",
     "t.kiln:1:10: error: labels are integers: declare 'x' as i32[...]\n"
     "  input x: f32[B] from labels\n"
     "           ^\n"},
    {"images dtype",
     "input x: i32[B, 3] from images\n",
     "t.kiln:1:10: error: images are read as floating-point: declare 'x' as f32[...] or f64[...]\n"
     "  input x: i32[B, 3] from images\n"
     "           ^\n"},
    {"div zero",
     "input x: f32[B, 3] from images / 0\n",
     "t.kiln:1:34: error: cannot divide the images by zero\n"
     "  input x: f32[B, 3] from images / 0\n"
     "                                   ^\n"},
    {"const sym",
     "const c: f32[B] = 1\n",
     "t.kiln:1:14: error: a constant's shape cannot use the batch symbol 'B'\n"
     "  const c: f32[B] = 1\n"
     "               ^\n"},
    {"literal count",
     "const c: f32[1, 2] = [[1, 2, 3]]\n",
     "t.kiln:1:23: error: expected 2 elements for dimension 1 of f32[1, 2], got 3\n"
     "  const c: f32[1, 2] = [[1, 2, 3]]\n"
     "                        ^\n"},
    {"literal nest",
     "const c: f32[2] = [[1], [2]]\n",
     "t.kiln:1:20: error: the literal has more levels of nesting than f32[2] has dimensions\n"
     "  const c: f32[2] = [[1], [2]]\n"
     "                     ^\n"},
    {"literal flat",
     "const c: f32[2, 1] = [1, 2]\n",
     "t.kiln:1:23: error: expected a list of 1 element for dimension 1 of f32[2, 1]\n"
     "  const c: f32[2, 1] = [1, 2]\n"
     "                        ^\n"},
    {"i32 literal",
     "const c: i32[2] = [1, 2.5]\n",
     "t.kiln:1:23: error: i32 value 2.5 is not a 32-bit integer\n"
     "  const c: i32[2] = [1, 2.5]\n"
     "                        ^\n"},
    {"groupnorm groups",
     "input x: f32[B, 6, 3]\ny = groupnorm(x, 4)\n",
     "t.kiln:2:5: error: groupnorm: 4 groups do not divide the 6 channels of [B, 6, 3]\n"
     "  y = groupnorm(x, 4)\n"
     "      ^\n"},
    {"maxout pieces",
     "input x: f32[B, 6, 3]\ny = maxout(x, 4)\n",
     "t.kiln:2:5: error: maxout: 4 pieces do not divide the channels (axis 1) of [B, 6, 3]\n"
     "  y = maxout(x, 4)\n"
     "      ^\n"},
    {"conv1d on an image",
     "input x: f32[B, 3, 4, 5]\ny = conv1d(x, out=2, kernel=3)\n",
     "t.kiln:2:5: error: conv1d needs an input of shape [N, C, L], got [B, 3, 4, 5]\n"
     "  y = conv1d(x, out=2, kernel=3)\n"
     "      ^\n"},
    {"maxpool1d with a pair",
     "input x: f32[B, 3, 8]\ny = maxpool1d(x, kernel=[1, 2])\n",
     "t.kiln:2:25: error: maxpool1d: 'kernel' must be a number\n"
     "  y = maxpool1d(x, kernel=[1, 2])\n"
     "                          ^\n"},
    {"index the batch",
     "input x: f32[B, 4]\ny = x[1]\n",
     "t.kiln:2:7: error: axis 0 is the batch 'B': only ':' can index it\n"
     "  y = x[1]\n"
     "        ^\n"},
    {"index out of range",
     "param w: f32[3, 4] = 0\ny = w[3]\n",
     "t.kiln:2:7: error: index 3 is out of range for an axis of 3\n"
     "  y = w[3]\n"
     "        ^\n"},
    {"empty range",
     "param w: f32[3, 4] = 0\ny = w[:, 3:1]\n",
     "t.kiln:2:11: error: the range 3:1 along axis 1 (of 4) is empty\n"
     "  y = w[:, 3:1]\n"
     "            ^\n"},
    {"too many indices",
     "param w: f32[3, 4] = 0\ny = w[1, 2, 3]\n",
     "t.kiln:2:6: error: 3 indices for a tensor of rank 2 (shape [3, 4])\n"
     "  y = w[1, 2, 3]\n"
     "       ^\n"},
    {"fractional index",
     "param w: f32[3, 4] = 0\ny = w[1.5]\n",
     "t.kiln:2:7: error: an index must be a whole number, got 1.5\n"
     "  y = w[1.5]\n"
     "        ^\n"},
    {"f32 literal beyond float",
     "const c: f32[2] = [1, 1e39]\n",
     "t.kiln:1:23: error: f32 value 1e+39 is beyond float's range (largest 3.4028235e+38); "
     "declare the tensor f64 or scale the value\n"
     "  const c: f32[2] = [1, 1e39]\n"
     "                        ^\n"},
    {"f32 fill beyond float",
     "param p: f32[3] = -2e38 * 2\n",
     "t.kiln:1:19: error: f32 value -4e+38 is beyond float's range (largest 3.4028235e+38); "
     "declare the tensor f64 or scale the value\n"
     "  param p: f32[3] = -2e38 * 2\n"
     "                    ^\n"},
    {"param i32",
     "param p: i32[2] = [1, 2]\n",
     "t.kiln:1:10: error: a parameter must be floating-point (f32 or f64), not i32\n"
     "  param p: i32[2] = [1, 2]\n"
     "           ^\n"},
    {"param no init",
     "param p: f32[2] 3\n",
     "t.kiln:1:17: error: expected '=' or 'init=' after the parameter's type, got '3'\n"
     "  param p: f32[2] 3\n"
     "                  ^\n"},
    {"redefine",
     "input x: f32[B, 4]\ninput y: i32[B]\ninput x: f32[3]\n",
     "t.kiln:3:7: error: 'x' is already defined on line 1\n"
     "  input x: f32[3]\n"
     "        ^\n"},
    {"assign input",
     "input x: f32[B, 4]\ninput y: i32[B]\nx = relu(x)\n",
     "t.kiln:3:1: error: cannot assign to input 'x' (defined on line 1)\n"
     "  x = relu(x)\n"
     "  ^\n"},
    {"output undefined",
     "input x: f32[B, 4]\ninput y: i32[B]\noutput q\n",
     "t.kiln:3:8: error: 'q' is not defined\n"
     "  output q\n"
     "         ^\n"},
    {"output number",
     "n = 3\noutput n\n",
     "t.kiln:2:8: error: 'n' is a number, not a tensor\n"
     "  output n\n"
     "         ^\n"},
    {"same output twice",
     "input x: f32[B, 4]\ninput y: i32[B]\noutput x\noutput x\n",
     "t.kiln:4:8: error: 'x' is already an output\n"
     "  output x\n"
     "         ^\n"},
    {"two minimize",
     "input x: f32[B, 4]\ninput y: i32[B]\nloss = sum(x)\nminimize loss\nminimize loss\n",
     "t.kiln:5:1: error: a model has one 'minimize' statement; this is a second one\n"
     "  minimize loss\n"
     "  ^\n"},
    {"two models",
     "model a\nmodel b\n",
     "t.kiln:2:1: error: a model has one 'model' statement; this is a second one\n"
     "  model b\n"
     "  ^\n"},
    {"loss int",
     "input x: f32[B, 4]\ninput y: i32[B]\nloss = sum(y)\nminimize loss\n",
     "t.kiln:3:8: error: sum needs a floating-point input, but y is i32\n"
     "  loss = sum(y)\n"
     "         ^\n"},
    {"train unknown",
     "train { foo = 3 }\n",
     "t.kiln:1:9: error: unknown train setting 'foo'; expected optimizer, batch, epochs, steps, seed, init, regularize, early_stop, freeze, param_groups, clip, schedule or warmup\n"
     "  train { foo = 3 }\n"
     "          ^\n"},
    {"train twice",
     "train { batch = 3 batch = 4 }\n",
     "t.kiln:1:19: error: train setting 'batch' is given twice\n"
     "  train { batch = 3 batch = 4 }\n"
     "                    ^\n"},
    {"train batch 0",
     "train { batch = 0 }\n",
     "t.kiln:1:17: error: 'batch' must be at least 1, got 0\n"
     "  train { batch = 0 }\n"
     "                  ^\n"},
    {"train batch frac",
     "train { batch = 2.5 }\n",
     "t.kiln:1:17: error: 'batch' must be an integer, got 2.5\n"
     "  train { batch = 2.5 }\n"
     "                  ^\n"},
    {"train batch huge",
     "train { batch = 1e12 }\n",
     "t.kiln:1:17: error: 'batch' is out of range: 1000000000000 (at most 2147483647)\n"
     "  train { batch = 1e12 }\n"
     "                  ^\n"},
    {"train opt",
     "train { optimizer = lbfgs(lr=1) }\n",
     "t.kiln:1:21: error: unknown optimizer 'lbfgs'; expected sgd, adam, adamw, adagrad, rmsprop or adadelta\n"
     "  train { optimizer = lbfgs(lr=1) }\n"
     "                      ^\n"},
    {"train rmsprop alpha",
     "train { optimizer = rmsprop(alpha=1.5) }\n",
     "t.kiln:1:35: error: rmsprop: 'alpha' must be in [0, 1], got 1.5\n"
     "  train { optimizer = rmsprop(alpha=1.5) }\n"
     "                                    ^\n"},
    {"train rmsprop arg",
     "train { optimizer = rmsprop(beta1=0.9) }\n",
     "t.kiln:1:29: error: unknown argument 'beta1' to rmsprop\n"
     "  train { optimizer = rmsprop(beta1=0.9) }\n"
     "                              ^\n"},
    {"train rmsprop centered",
     "train { optimizer = rmsprop(centered=1) }\n",
     "t.kiln:1:38: error: rmsprop: 'centered' must be true or false\n"
     "  train { optimizer = rmsprop(centered=1) }\n"
     "                                       ^\n"},
    {"train adagrad eps",
     "train { optimizer = adagrad(eps=0) }\n",
     "t.kiln:1:33: error: adagrad: 'eps' must be positive\n"
     "  train { optimizer = adagrad(eps=0) }\n"
     "                                  ^\n"},
    {"train adagrad decay",
     "train { optimizer = adagrad(lr_decay=-1) }\n",
     "t.kiln:1:38: error: adagrad: 'lr_decay' must not be negative, got -1\n"
     "  train { optimizer = adagrad(lr_decay=-1) }\n"
     "                                       ^\n"},
    {"train adadelta rho",
     "train { optimizer = adadelta(rho=-0.1) }\n",
     "t.kiln:1:34: error: adadelta: 'rho' must be in [0, 1], got -0.1\n"
     "  train { optimizer = adadelta(rho=-0.1) }\n"
     "                                   ^\n"},
    {"train adadelta lr",
     "train { optimizer = adadelta(lr=-1) }\n",
     "t.kiln:1:33: error: adadelta: 'lr' must not be negative, got -1\n"
     "  train { optimizer = adadelta(lr=-1) }\n"
     "                                  ^\n"},
    {"train reg unknown",
     "train { regularize = l3(1) }\n",
     "t.kiln:1:22: error: unknown regularizer 'l3'; expected a regularizer: l1(lambda), l2(lambda), elastic_net(l1=..., l2=...) or max_norm(c)\n"
     "  train { regularize = l3(1) }\n"
     "                       ^\n"},
    {"train reg l2",
     "train { regularize = l2(-1) }\n",
     "t.kiln:1:25: error: l2: 'lambda' must be positive, got -1\n"
     "  train { regularize = l2(-1) }\n"
     "                          ^\n"},
    {"train reg elastic",
     "train { regularize = elastic_net(l1=0.1) }\n",
     "t.kiln:1:22: error: elastic_net: missing argument 'l2'\n"
     "  train { regularize = elastic_net(l1=0.1) }\n"
     "                       ^\n"},
    {"train reg twice",
     "train { regularize = [l2(0.1), l2(0.2)] }\n",
     "t.kiln:1:32: error: regularize: the l2 penalty is given twice\n"
     "  train { regularize = [l2(0.1), l2(0.2)] }\n"
     "                                 ^\n"},
    {"train reg name",
     "train { regularize = max_norm }\n",
     "t.kiln:1:22: error: max_norm needs its argument: write max_norm(...)\n"
     "  train { regularize = max_norm }\n"
     "                       ^\n"},
    {"train early",
     "train { early_stop = 3 }\n",
     "t.kiln:1:22: error: expected 'early_stop = patience(N)': stop after N epochs without a better test loss\n"
     "  train { early_stop = 3 }\n"
     "                       ^\n"},
    {"train patience",
     "train { early_stop = patience(0) }\n",
     "t.kiln:1:31: error: patience must be at least 1, got 0\n"
     "  train { early_stop = patience(0) }\n"
     "                                ^\n"},
    {"train adamw beta2",
     "train { optimizer = adamw(beta2=1) }\n",
     "t.kiln:1:33: error: adamw: 'beta2' must be in [0, 1), got 1\n"
     "  train { optimizer = adamw(beta2=1) }\n"
     "                                  ^\n"},
    {"train clip norm",
     "train { clip = norm(-1) }\n",
     "t.kiln:1:21: error: norm: 'max_norm' must be positive, got -1\n"
     "  train { clip = norm(-1) }\n"
     "                      ^\n"},
    {"train clip value",
     "train { clip = value }\n",
     "t.kiln:1:16: error: value needs its argument: write value(clip_value)\n"
     "  train { clip = value }\n"
     "                 ^\n"},
    {"train clip unknown",
     "train { clip = scale(2) }\n",
     "t.kiln:1:16: error: unknown gradient clipping 'scale'; expected gradient clipping: norm(max_norm) or value(clip_value)\n"
     "  train { clip = scale(2) }\n"
     "                 ^\n"},
    {"train schedule unknown",
     "train { schedule = linear(3) }\n",
     "t.kiln:1:20: error: unknown learning-rate schedule 'linear'; expected a learning-rate schedule: step(step_size, gamma=0.1), exponential(gamma) or cosine(t_max, eta_min=0)\n"
     "  train { schedule = linear(3) }\n"
     "                     ^\n"},
    {"train schedule name",
     "train { schedule = cosine }\n",
     "t.kiln:1:20: error: cosine needs arguments: write cosine(t_max, eta_min=0)\n"
     "  train { schedule = cosine }\n"
     "                     ^\n"},
    {"train schedule step",
     "train { schedule = step(0) }\n",
     "t.kiln:1:25: error: step: 'step_size' must be at least 1, got 0\n"
     "  train { schedule = step(0) }\n"
     "                          ^\n"},
    {"train schedule gamma",
     "train { schedule = exponential(gamma=0) }\n",
     "t.kiln:1:38: error: exponential: 'gamma' must be positive, got 0\n"
     "  train { schedule = exponential(gamma=0) }\n"
     "                                       ^\n"},
    {"train schedule eta_min",
     "train { schedule = cosine(10, eta_min=-1) }\n",
     "t.kiln:1:39: error: cosine: 'eta_min' must not be negative, got -1\n"
     "  train { schedule = cosine(10, eta_min=-1) }\n"
     "                                        ^\n"},
    {"train warmup",
     "train { warmup = -2 }\n",
     "t.kiln:1:18: error: 'warmup' must be at least 0, got -2\n"
     "  train { warmup = -2 }\n"
     "                   ^\n"},
    {"train sgd lr",
     "train { optimizer = sgd() }\n",
     "t.kiln:1:21: error: sgd: missing argument 'lr'\n"
     "  train { optimizer = sgd() }\n"
     "                      ^\n"},
    {"train opt arg",
     "train { optimizer = adam(lr=1, beta3=2) }\n",
     "t.kiln:1:32: error: unknown argument 'beta3' to adam\n"
     "  train { optimizer = adam(lr=1, beta3=2) }\n"
     "                                 ^\n"},
    {"train init",
     "train { init = kaiming }\n",
     "t.kiln:1:16: error: unknown initialisation; expected default, he, he_uniform, xavier, "
     "xavier_normal, zeros, ones, normal(std=...), uniform(a=...), orthogonal(gain=1) or lsuv\n"
     "  train { init = kaiming }\n"
     "                 ^\n"},
    {"train init normal",
     "train { init = normal }\n",
     "t.kiln:1:16: error: normal needs its argument: write 'init = normal(std=...)'\n"
     "  train { init = normal }\n"
     "                 ^\n"},
    {"train unterminated",
     "train { batch = 3\n",
     "t.kiln:1:7: error: unterminated train block: this '{' has no matching '}'\n"
     "  train { batch = 3\n"
     "        ^\n"},
    {"train key",
     "train { 3 }\n",
     "t.kiln:1:9: error: expected a setting name or '}', got '3'\n"
     "  train { 3 }\n"
     "          ^\n"},
    {"train two",
     "train { }\ntrain { }\n",
     "t.kiln:2:1: error: a model has one train block; this is a second one\n"
     "  train { }\n"
     "  ^\n"},
    {"train eq",
     "train { batch 3 }\n",
     "t.kiln:1:15: error: expected '=' after 'batch', got '3'\n"
     "  train { batch 3 }\n"
     "                ^\n"},
    {"reshape bad",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = reshape(x, shape=[B, 3])\n",
     "t.kiln:3:22: error: cannot reshape [B, 4] to [B, 3]: element counts differ\n"
     "  h = reshape(x, shape=[B, 3])\n"
     "                       ^\n"},
    {"reshape -1",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = reshape(x, shape=[3, -1])\n",
     "t.kiln:3:22: error: cannot reshape [B, 4] to [3, -1]: no size for -1 makes the element counts equal\n"
     "  h = reshape(x, shape=[3, -1])\n"
     "                       ^\n"},
    {"reshape two -1",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = reshape(x, shape=[-1, -1])\n",
     "t.kiln:3:27: error: reshape: only one dimension may be -1\n"
     "  h = reshape(x, shape=[-1, -1])\n"
     "                            ^\n"},
    {"reshape sym",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = reshape(x, shape=[N, -1])\n",
     "t.kiln:3:23: error: a model may use one dimension symbol (the batch); 'N' is a second one\n"
     "  h = reshape(x, shape=[N, -1])\n"
     "                        ^\n"},
    {"reshape notlist",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = reshape(x, shape=3)\n",
     "t.kiln:3:22: error: reshape: 'shape' must be a list such as [B, -1]\n"
     "  h = reshape(x, shape=3)\n"
     "                       ^\n"},
    {"flatten rank",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = flatten(y)\n",
     "t.kiln:3:5: error: flatten needs a tensor with at least 2 axes, got [B]\n"
     "  h = flatten(y)\n"
     "      ^\n"},
    {"axis range",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = sum(x, axes=[2])\n",
     "t.kiln:3:18: error: sum: axis 2 is out of range for a tensor with 2 axes\n"
     "  h = sum(x, axes=[2])\n"
     "                   ^\n"},
    {"axis twice",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = sum(x, axes=[1, -1])\n",
     "t.kiln:3:21: error: sum: axis 1 is given twice\n"
     "  h = sum(x, axes=[1, -1])\n"
     "                      ^\n"},
    {"keepdims",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = sum(x, keepdims=yes)\n",
     "t.kiln:3:21: error: sum: 'keepdims' must be true or false\n"
     "  h = sum(x, keepdims=yes)\n"
     "                      ^\n"},
    {"linear rank",
     "input x: f32[B, 2, 3]\nh = linear(x, out=2)\n",
     "t.kiln:2:5: error: linear needs an input of shape [N, in], got [B, 2, 3]\n"
     "  h = linear(x, out=2)\n"
     "      ^\n"},
    {"linear int",
     "input x: i32[B, 3]\nh = linear(x, out=2)\n",
     "t.kiln:2:5: error: linear needs a floating-point input, got i32\n"
     "  h = linear(x, out=2)\n"
     "      ^\n"},
    {"linear out 0",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = linear(x, out=0)\n",
     "t.kiln:3:19: error: linear: 'out' must be at least 1, got 0\n"
     "  h = linear(x, out=0)\n"
     "                    ^\n"},
    {"linear bias",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = linear(x, out=2, bias=1)\n",
     "t.kiln:3:27: error: linear: 'bias' must be true or false\n"
     "  h = linear(x, out=2, bias=1)\n"
     "                            ^\n"},
    {"tensor number",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = relu(3)\n",
     "t.kiln:3:10: error: expected a tensor here, got the number 3\n"
     "  h = relu(3)\n"
     "           ^\n"},
    {"list value",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = [1, 2]\n",
     "t.kiln:3:5: error: a list is not a value here (lists are for literals, axes and shapes)\n"
     "  h = [1, 2]\n"
     "      ^\n"},
    {"sym value",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = x * B\n",
     "t.kiln:3:9: error: 'B' is a dimension symbol, not a value\n"
     "  h = x * B\n"
     "          ^\n"},
    {"shape mismatch",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = x + linear(x, out=3)\n",
     "t.kiln:3:7: error: cannot add shapes [B, 4] and [B, 3]: dimension 1 differs\n"
     "  h = x + linear(x, out=3)\n"
     "        ^\n"},
    {"ce",
     "input x: f32[B, 4]\ninput y: i32[B]\nloss = cross_entropy(x, x)\n",
     "t.kiln:3:8: error: cross_entropy needs integer (i32) labels, got f32\n"
     "  loss = cross_entropy(x, x)\n"
     "         ^\n"},
    {"paren",
     "input x: f32[B, 4]\ninput y: i32[B]\nh = (x + x\nminimize h\n",
     "t.kiln:3:11: error: expected ')' to close '(', got end of line\n"
     "  h = (x + x\n"
     "            ^\n"},
    {"model name",
     "model 3\n",
     "t.kiln:1:7: error: expected a name after 'model', got '3'\n"
     "  model 3\n"
     "        ^\n"},
    {"conv kernel too big",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(x, out=4, kernel=11)\n",
     "t.kiln:3:5: error: conv2d: the vertical window (11) is larger than the padded input (8) of shape [B, 3, 8, 8]\n"
     "  h = conv2d(x, out=4, kernel=11)\n"
     "      ^\n"},
    {"conv groups",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(x, out=4, kernel=3, groups=2)\n",
     "t.kiln:3:39: error: conv2d: 3 input channels (of [B, 3, 8, 8]) and 4 output channels do not both divide into 2 groups\n"
     "  h = conv2d(x, out=4, kernel=3, groups=2)\n"
     "                                        ^\n"},
    {"conv groups 0",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(x, out=4, kernel=3, groups=0)\n",
     "t.kiln:3:39: error: conv2d: 'groups' must be at least 1, got 0\n"
     "  h = conv2d(x, out=4, kernel=3, groups=0)\n"
     "                                        ^\n"},
    {"conv pad string",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(x, out=4, kernel=3, pad=half)\n",
     "t.kiln:3:36: error: conv2d: unknown padding 'half'; expected an integer, [ph, pw], same, full or valid\n"
     "  h = conv2d(x, out=4, kernel=3, pad=half)\n"
     "                                     ^\n"},
    {"conv same stride",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(x, out=4, kernel=3, stride=2, pad=same)\n",
     "t.kiln:3:46: error: conv2d: pad=same needs stride 1 (as in PyTorch), but the stride is [2, 2]\n"
     "  h = conv2d(x, out=4, kernel=3, stride=2, pad=same)\n"
     "                                               ^\n"},
    {"conv input rank",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(flatten(x), out=4, kernel=3)\n",
     "t.kiln:3:5: error: conv2d needs an input of shape [N, C, H, W], got [B, 192]\n"
     "  h = conv2d(flatten(x), out=4, kernel=3)\n"
     "      ^\n"},
    {"conv int input",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(reshape(y, shape=[B, 1, 1, 1]), out=4, kernel=1)\n",
     "t.kiln:3:5: error: conv2d needs a floating-point input, got i32\n"
     "  h = conv2d(reshape(y, shape=[B, 1, 1, 1]), out=4, kernel=1)\n"
     "      ^\n"},
    {"conv kernel list",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(x, out=4, kernel=[3, 3, 3])\n",
     "t.kiln:3:29: error: conv2d: 'kernel' must be one integer or a list [h, w], got a list of 3\n"
     "  h = conv2d(x, out=4, kernel=[3, 3, 3])\n"
     "                              ^\n"},
    {"conv stride 0",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(x, out=4, kernel=3, stride=[1, 0])\n",
     "t.kiln:3:43: error: conv2d: 'stride' must be at least 1, got 0\n"
     "  h = conv2d(x, out=4, kernel=3, stride=[1, 0])\n"
     "                                            ^\n"},
    {"conv missing kernel",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = conv2d(x, out=4)\n",
     "t.kiln:3:5: error: conv2d: missing argument 'kernel'\n"
     "  h = conv2d(x, out=4)\n"
     "      ^\n"},
    {"flatten mismatch",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "param w: f32[100, 10]\n"
     "h = matmul(flatten(maxpool2d(x, kernel=2)), w)\n",
     "t.kiln:4:5: error: matmul of [B, 48] and [100, 10]: inner dimensions differ\n"
     "  h = matmul(flatten(maxpool2d(x, kernel=2)), w)\n"
     "      ^\n"},
    {"dropout p",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = dropout(x, p=1)\n",
     "t.kiln:3:18: error: dropout: 'p' must be in [0, 1), got 1\n"
     "  h = dropout(x, p=1)\n"
     "                   ^\n"},
    {"dropout p neg",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = dropout(x, p=-0.5)\n",
     "t.kiln:3:18: error: dropout: 'p' must be in [0, 1), got -0.5\n"
     "  h = dropout(x, p=-0.5)\n"
     "                   ^\n"},
    {"dropout twice",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "a = dropout(x) as d\n"
     "b = dropout(x) as d\n",
     "t.kiln:4:19: error: dropout site 'd' is named twice: each site needs its own name\n"
     "  b = dropout(x) as d\n"
     "                    ^\n"},
    {"pool pad mode",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = maxpool2d(x, kernel=2, pad=same)\n",
     "t.kiln:3:32: error: maxpool2d: pad=same is for conv2d only; expected an integer or [ph, pw]\n"
     "  h = maxpool2d(x, kernel=2, pad=same)\n"
     "                                 ^\n"},
    {"pool pad big",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = maxpool2d(x, kernel=2, pad=2)\n",
     "t.kiln:3:5: error: maxpool2d: padding [2, 2, 2, 2] leaves windows of the kernel [2, 2] "
     "without an input element (at most dilation·(kernel − 1) per side)\n"
     "  h = maxpool2d(x, kernel=2, pad=2)\n"
     "      ^\n"},
    {"pool too big",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = avgpool2d(x, kernel=[2, 9])\n",
     "t.kiln:3:5: error: avgpool2d: the horizontal window (9) is larger than the padded input (8) of shape [B, 3, 8, 8]\n"
     "  h = avgpool2d(x, kernel=[2, 9])\n"
     "      ^\n"},
    {"l2pool too big",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = l2pool2d(x, kernel=9)\n",
     "t.kiln:3:5: error: avgpool2d: the vertical window (9) is larger than the padded input (8) of shape [B, 3, 8, 8]\n"
     "  h = l2pool2d(x, kernel=9)\n"
     "      ^\n"},
    {"pool cip",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = avgpool2d(x, 2, count_include_pad=1)\n",
     "t.kiln:3:39: error: avgpool2d: 'count_include_pad' must be true or false\n"
     "  h = avgpool2d(x, 2, count_include_pad=1)\n"
     "                                        ^\n"},
    {"bn momentum",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = batchnorm(flatten(x), momentum=2)\n",
     "t.kiln:3:36: error: batchnorm: 'momentum' must be in [0, 1], got 2\n"
     "  h = batchnorm(flatten(x), momentum=2)\n"
     "                                     ^\n"},
    {"bn rank",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = batchnorm(y)\n",
     "t.kiln:3:5: error: batchnorm needs an input of shape [N, C, H, W] or [N, C], got [B]\n"
     "  h = batchnorm(y)\n"
     "      ^\n"},
    {"bn dup",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "bn = batchnorm(x)\n"
     "bn = batchnorm(x)\n",
     "t.kiln:4:6: error: parameter 'bn.weight' is defined twice\n"
     "  bn = batchnorm(x)\n"
     "       ^\n"},
    {"ln eps",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = layernorm(x, eps=0)\n",
     "t.kiln:3:22: error: layernorm: 'eps' must be positive, got 0\n"
     "  h = layernorm(x, eps=0)\n"
     "                       ^\n"},
    {"ln rank",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = layernorm(sum(x))\n",
     "t.kiln:3:5: error: layernorm needs an input [N, ...] with at least 2 axes and numbers after the first, got []\n"
     "  h = layernorm(sum(x))\n"
     "      ^\n"},
    {"in rank",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = instancenorm(flatten(x))\n",
     "t.kiln:3:5: error: instancenorm needs an input of shape [N, C, H, W], got [B, 192]\n"
     "  h = instancenorm(flatten(x))\n"
     "      ^\n"},
    {"transpose len",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = transpose(x, axes=[0, 1])\n",
     "t.kiln:3:23: error: transpose: 'axes' must be a list of all 4 axes of [B, 3, 8, 8] in their new order\n"
     "  h = transpose(x, axes=[0, 1])\n"
     "                        ^\n"},
    {"transpose perm",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = transpose(x, axes=[0, 1, 1, 2])\n",
     "t.kiln:3:5: error: transpose: the axes must be a permutation of 0..3 for shape [B, 3, 8, 8]\n"
     "  h = transpose(x, axes=[0, 1, 1, 2])\n"
     "      ^\n"},
    {"concat dtype",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = concat(x, y)\n",
     "t.kiln:3:5: error: concat of f32 and i32: element types differ\n"
     "  h = concat(x, y)\n"
     "      ^\n"},
    {"concat shapes",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = concat(x, flatten(x))\n",
     "t.kiln:3:5: error: cannot concatenate [B, 3, 8, 8] and [B, 192] along axis 1\n"
     "  h = concat(x, flatten(x))\n"
     "      ^\n"},
    {"concat arg",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = concat(x, x, dim=1)\n",
     "t.kiln:3:18: error: unknown argument 'dim' to concat\n"
     "  h = concat(x, x, dim=1)\n"
     "                   ^\n"},
    {"concat none",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = concat(axis=0)\n",
     "t.kiln:3:5: error: concat needs at least one tensor\n"
     "  h = concat(axis=0)\n"
     "      ^\n"},
    {"concat rank",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = concat(sum(x, axes=[1, 2, 3]), y)\n",
     "t.kiln:3:5: error: concat joins along axis 1 by default, but [B] has 1 axis: give 'axis'\n"
     "  h = concat(sum(x, axes=[1, 2, 3]), y)\n"
     "      ^\n"},
    {"softmax axis",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = softmax(x, axis=4)\n",
     "t.kiln:3:21: error: softmax: axis 4 is out of range for a tensor with 4 axes\n"
     "  h = softmax(x, axis=4)\n"
     "                      ^\n"},
    {"softmax scalar",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = softmax(sum(x))\n",
     "t.kiln:3:5: error: softmax needs a tensor with at least 1 axis, got a scalar\n"
     "  h = softmax(sum(x))\n"
     "      ^\n"},
    {"bce shapes",
     "input x: f32[B, 3, 8, 8]\n"
     "input y: i32[B]\n"
     "h = bce_with_logits(flatten(x), x)\n",
     "t.kiln:3:5: error: cannot bce_logits shapes [B, 192] and [B, 3, 8, 8]: dimension 2 differs\n"
     "  h = bce_with_logits(flatten(x), x)\n"
     "      ^\n"},
};

START_TEST(error_messages) {
  const char *got = compile_err(errors[_i].src);
  ck_assert_msg(got != NULL, "%s: no error", errors[_i].what);
  ck_assert_msg(!strcmp(got, errors[_i].msg), "%s:\n--- expected\n%s--- got\n%s", errors[_i].what,
                errors[_i].msg, got);
}
END_TEST

static Suite *frontend_suite(void) {
  Suite *s = suite_create("frontend");
  TCase *lexer = tcase_create("lexer");
  tcase_add_test(lexer, lex_tokens_and_locations);
  tcase_add_test(lexer, lex_numbers);
  tcase_add_test(lexer, lex_describe_tokens);
  suite_add_tcase(s, lexer);
  TCase *parser = tcase_create("parser");
  tcase_add_test(parser, parse_every_statement);
  tcase_add_test(parser, parse_keywords_are_contextual);
  tcase_add_loop_test(parser, parse_precedence, 0,
                      (int)(sizeof prec_cases / sizeof *prec_cases));
  suite_add_tcase(s, parser);
  TCase *lower = tcase_create("lower");
  tcase_add_test(lower, lower_mlp_example);
  tcase_add_test(lower, lower_linear_toy_example);
  tcase_add_test(lower, lower_precedence_graph);
  tcase_add_test(lower, lower_layer_naming);
  tcase_add_test(lower, lower_loops);
  tcase_add_test(lower, lower_untied_bias);
  tcase_add_test(lower, lower_orthogonal_and_lsuv);
  tcase_add_test(lower, freeze_prunes_the_backward_pass);
  tcase_add_test(lower, freeze_and_group_errors);
  tcase_add_test(lower, lower_init_schemes);
  tcase_add_test(lower, lower_train_settings);
  tcase_add_test(lower, lower_reductions_reshape_and_numbers);
  tcase_add_test(lower, lower_const_fill_and_int_literals);
  tcase_add_test(lower, lower_locations);
  tcase_add_test(lower, compile_file_missing);
  tcase_add_test(lower, compile_file_hostile_bytes);
  tcase_add_test(lower, compile_error_restores_trap);
  tcase_add_test(lower, lower_mnist_cnn_example);
  tcase_add_test(lower, inference_model_outputs);
  tcase_add_loop_test(lower, lower_conv_padding, 0, (int)(sizeof pad_cases / sizeof *pad_cases));
  tcase_add_test(lower, lower_conv_groups_and_init);
  tcase_add_test(lower, lower_pools);
  tcase_add_test(lower, l2pool_gradient_at_zero);
  tcase_add_test(lower, lower_batchnorm_1d_and_options);
  tcase_add_test(lower, lower_batchnorm_values);
  tcase_add_test(lower, lower_layernorm_instancenorm);
  tcase_add_test(lower, lower_dropout_modes);
  tcase_add_test(lower, lower_activations_and_layout);
  tcase_add_test(lower, lower_auto_names_skip_buffers);
  suite_add_tcase(s, lower);
  TCase *err = tcase_create("errors");
  tcase_add_loop_test(err, error_messages, 0, (int)(sizeof errors / sizeof *errors));
  suite_add_tcase(s, err);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(frontend_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
