/*
 * parse.c — recursive-descent parser from tokens to the AST (front.h).
 *
 * A model file is a list of statements, one per line. The parser knows the statement forms, the
 * element types and the expression grammar; it does not know which functions exist or what
 * names mean (lower.c does), so `relu(x, y)` parses fine and fails when lowered. Statement
 * keywords are contextual: `input` starts an input declaration unless the next token is '=',
 * so a variable may still be called `input`. Each parse function has its grammar rule above it;
 * docs/language.md gives the whole grammar.
 */
#include <string.h>

#include "front/front.h"

typedef struct Parser {
  Pool *pool;
  const SrcFile *file;
  Token *toks;
  int ntok;
  int pos;
  int depth;          /* nesting of the expression being parsed (see nest) */
} Parser;

/* How deep an expression may nest: brackets, calls, unary minus, '^', and each further operand
 * of a chain like `a + b + c` (which builds a left-deep tree) count one level. Lowering walks
 * the tree recursively, so this keeps every later phase well inside the stack. */
#define PARSE_MAX_DEPTH 256

static Token *peek(Parser *P) { return &P->toks[P->pos]; }
static Token *peek_at(Parser *P, int k) {
  int i = P->pos + k;
  return &P->toks[i < P->ntok ? i : P->ntok - 1];
}
static Token *next(Parser *P) {
  Token *t = &P->toks[P->pos];
  if (t->kind != TK_EOF)
    P->pos++;
  return t;
}

static bool is_punct(const Token *t, char c) {
  return t->kind == TK_PUNCT && t->s[0] == c;
}
static bool is_word(const Token *t, const char *w) {
  return t->kind == TK_IDENT && (size_t)t->len == strlen(w) && !strncmp(t->s, w, (size_t)t->len);
}
static bool accept(Parser *P, char c) {
  if (!is_punct(peek(P), c))
    return false;
  next(P);
  return true;
}
static const char *desc(Parser *P, const Token *t) { return lex_describe(P->pool, t); }

/* Consumes punctuation c or fails with "expected 'c' <context>, got X". */
static Token *expect(Parser *P, char c, const char *context) {
  Token *t = peek(P);
  if (!is_punct(t, c))
    kiln_fail(t->loc, "expected '%c' %s, got %s", c, context, desc(P, t));
  return next(P);
}

static const char *expect_ident(Parser *P, const char *what, Loc *loc) {
  Token *t = peek(P);
  if (t->kind != TK_IDENT)
    kiln_fail(t->loc, "expected %s, got %s", what, desc(P, t));
  next(P);
  if (loc)
    *loc = t->loc;
  return pool_strndup(P->pool, t->s, (size_t)t->len);
}

static void skip_newlines(Parser *P) {
  while (peek(P)->kind == TK_NEWLINE)
    next(P);
}

/* Inside brackets a list may continue on the next line: skips line breaks when the token after
 * them is c (so `)` on its own line works, but a forgotten `)` is reported where its line ends). */
static bool accept_after_newlines(Parser *P, char c) {
  int k = 0;
  while (peek_at(P, k)->kind == TK_NEWLINE)
    k++;
  if (!is_punct(peek_at(P, k), c))
    return false;
  P->pos += k + 1;
  return true;
}

/* Enters one level of nesting at t; the caller restores P->depth when it returns. */
static void nest(Parser *P, const Token *t) {
  if (++P->depth > PARSE_MAX_DEPTH)
    kiln_fail(t->loc, "expression nested too deeply (more than %d levels of brackets, calls "
              "or operators)", PARSE_MAX_DEPTH);
}

static Expr *new_expr(Parser *P, ExprKind kind, Loc loc) {
  Expr *e = pool_alloc(P->pool, sizeof *e);
  e->kind = kind;
  e->loc = loc;
  return e;
}

/* A growable array in the parser's pool; the old block stays in the pool (freed with it). */
static void *grow(Parser *P, void *old, int n, int *cap, size_t elem) {
  if (n < *cap)
    return old;
  int c = *cap ? 2 * *cap : 4;
  void *p = pool_alloc(P->pool, (size_t)c * elem);
  if (n)
    memcpy(p, old, (size_t)n * elem);
  *cap = c;
  return p;
}

static Expr *expr(Parser *P);

/* list = "[" [expr ("," expr)* [","]] "]"     (line breaks allowed anywhere inside) */
static Expr *list(Parser *P) {
  Token *open = next(P);
  Expr *e = new_expr(P, EX_LIST, open->loc);
  int cap = 0;
  for (;;) {
    skip_newlines(P);
    if (accept(P, ']'))
      return e;
    if (peek(P)->kind == TK_EOF)
      kiln_fail(open->loc, "unterminated list: this '[' has no matching ']'");
    e->items = grow(P, e->items, e->nitems, &cap, sizeof(Expr *));
    e->items[e->nitems++] = expr(P);
    skip_newlines(P);
    if (accept(P, ']'))
      return e;
    Token *t = peek(P);
    if (t->kind == TK_EOF)
      kiln_fail(open->loc, "unterminated list: this '[' has no matching ']'");
    if (!accept(P, ','))
      kiln_fail(t->loc, "expected ',' or ']' in list, got %s", desc(P, t));
  }
}

/* call = IDENT "(" [arg ("," arg)* [","]] ")"
 * arg  = [IDENT "="] expr          (positional arguments come before keyword arguments) */
static Expr *call(Parser *P, Token *fn) {
  Expr *e = new_expr(P, EX_CALL, fn->loc);
  e->name = pool_strndup(P->pool, fn->s, (size_t)fn->len);
  next(P); /* the name */
  next(P); /* ( */
  int cap = 0;
  skip_newlines(P);
  if (accept(P, ')'))
    return e;
  for (;;) {
    skip_newlines(P);
    Token *t = peek(P);
    Arg a = {0};
    a.loc = t->loc;
    if (t->kind == TK_IDENT && is_punct(peek_at(P, 1), '=')) {
      a.name = pool_strndup(P->pool, t->s, (size_t)t->len);
      next(P);
      next(P);
    } else if (e->nargs && e->args[e->nargs - 1].name) {
      kiln_fail(t->loc, "positional argument after keyword argument '%s'",
                e->args[e->nargs - 1].name);
    }
    a.value = expr(P);
    e->args = grow(P, e->args, e->nargs, &cap, sizeof(Arg));
    e->args[e->nargs++] = a;
    if (accept_after_newlines(P, ')'))
      return e;
    if (accept(P, ',')) {
      if (accept_after_newlines(P, ')'))
        return e;
      continue;
    }
    Token *bad = peek(P);
    kiln_fail(bad->loc, "expected ')' after arguments, got %s", desc(P, bad));
  }
}

/* primary = NUMBER | IDENT | call | "(" expr ")" | list */
static Expr *primary(Parser *P) {
  Token *t = peek(P);
  if (t->kind == TK_NUM) {
    next(P);
    Expr *e = new_expr(P, EX_NUM, t->loc);
    e->num = t->num;
    e->is_int = t->is_int;
    e->text = pool_strndup(P->pool, t->s, (size_t)t->len);
    return e;
  }
  if (t->kind == TK_IDENT) {
    if (is_punct(peek_at(P, 1), '('))
      return call(P, t);
    next(P);
    Expr *e = new_expr(P, EX_NAME, t->loc);
    e->name = pool_strndup(P->pool, t->s, (size_t)t->len);
    return e;
  }
  if (is_punct(t, '(')) {
    next(P);
    skip_newlines(P);
    Expr *e = expr(P);
    if (!accept_after_newlines(P, ')')) {
      Token *bad = peek(P);
      kiln_fail(bad->loc, "expected ')' to close '(', got %s", desc(P, bad));
    }
    return e;
  }
  if (is_punct(t, '['))
    return list(P);
  kiln_fail(t->loc, "expected an expression, got %s", desc(P, t));
}

/* index = [expr] ":" [expr] | expr */
static Expr *index_item(Parser *P) {
  skip_newlines(P);
  Expr *start = NULL;
  if (!is_punct(peek(P), ':'))
    start = expr(P);
  skip_newlines(P);
  Token *colon = peek(P);
  if (!is_punct(colon, ':')) {
    if (!start)
      kiln_fail(colon->loc, "expected an index or a range such as 2:5, got %s", desc(P, colon));
    return start;
  }
  next(P);
  Expr *r = new_expr(P, EX_RANGE, colon->loc);
  r->lhs = start;
  skip_newlines(P);
  if (!is_punct(peek(P), ',') && !is_punct(peek(P), ']'))
    r->rhs = expr(P);
  return r;
}

/* indexing = "[" index ("," index)* "]"   (one per leading axis, as in NumPy) */
static Expr *indexing(Parser *P, Expr *base) {
  Token *open = next(P);
  Expr *e = new_expr(P, EX_INDEX, open->loc);
  e->lhs = base;
  int cap = 0;
  for (;;) {
    e->items = grow(P, e->items, e->nitems, &cap, sizeof(Expr *));
    e->items[e->nitems++] = index_item(P);
    skip_newlines(P);
    if (accept(P, ']'))
      return e;
    Token *t = peek(P);
    if (t->kind == TK_EOF)
      kiln_fail(open->loc, "unterminated index: this '[' has no matching ']'");
    if (!accept(P, ','))
      kiln_fail(t->loc, "expected ',' or ']' in an index, got %s", desc(P, t));
  }
}

/* postfix = primary indexing* ["as" IDENT]        (only a call can be named) */
static Expr *postfix(Parser *P) {
  Expr *e = primary(P);
  while (is_punct(peek(P), '['))
    e = indexing(P, e);
  Token *t = peek(P);
  if (is_word(t, "as") && peek_at(P, 1)->kind == TK_IDENT) {
    if (e->kind != EX_CALL)
      kiln_fail(t->loc, "'as' names a layer and must follow a layer call such as linear(...)");
    next(P);
    e->as = expect_ident(P, "a layer name after 'as'", &e->as_loc);
  }
  return e;
}

static Expr *unary(Parser *P);

/* power = postfix ["^" unary]           (right-associative; -x^2 is -(x^2), 2^-1 is allowed) */
static Expr *power(Parser *P) {
  Expr *base = postfix(P);
  Token *t = peek(P);
  if (!is_punct(t, '^'))
    return base;
  next(P);
  Expr *e = new_expr(P, EX_BINARY, t->loc);
  e->op = '^';
  e->lhs = base;
  e->rhs = unary(P);
  return e;
}

/* unary = "-" unary | power */
static Expr *unary(Parser *P) {
  Token *t = peek(P);
  int depth = P->depth;
  nest(P, t);
  Expr *e;
  if (is_punct(t, '-')) {
    next(P);
    e = new_expr(P, EX_NEG, t->loc);
    e->lhs = unary(P);
  } else {
    e = power(P);
  }
  P->depth = depth;
  return e;
}

/* One left-associative level: operand (op operand)* with op one of the characters in ops. */
static Expr *left_assoc(Parser *P, const char *ops, Expr *(*operand)(Parser *)) {
  int depth = P->depth;
  Expr *e = operand(P);
  for (;;) {
    Token *t = peek(P);
    if (t->kind != TK_PUNCT || !strchr(ops, t->s[0])) {
      P->depth = depth;
      return e;
    }
    nest(P, t);
    next(P);
    Expr *b = new_expr(P, EX_BINARY, t->loc);
    b->op = t->s[0];
    b->lhs = e;
    b->rhs = operand(P);
    e = b;
  }
}

/* mul = unary (("*" | "/" | "%") unary)* */
static Expr *mul(Parser *P) { return left_assoc(P, "*/%", unary); }

/* expr = mul (("+" | "-") mul)* */
static Expr *expr(Parser *P) { return left_assoc(P, "+-", mul); }

/* type = ("f32" | "f64" | "i32") ["[" [dim ("," dim)*] "]"]
 * dim  = INTEGER | IDENT                 (no brackets, or "[]": a scalar) */
static TypeSpec type(Parser *P) {
  TypeSpec ts = {0};
  Token *t = peek(P);
  if (is_word(t, "f32"))
    ts.dtype = DT_F32;
  else if (is_word(t, "f64"))
    ts.dtype = DT_F64;
  else if (is_word(t, "i32"))
    ts.dtype = DT_I32;
  else
    kiln_fail(t->loc, "expected a type (f32, f64 or i32), got %s", desc(P, t));
  ts.loc = t->loc;
  next(P);
  Token *open = peek(P);
  if (!accept(P, '['))
    return ts;
  if (accept(P, ']'))
    return ts;
  for (;;) {
    Token *d = peek(P);
    if (ts.rank == IR_MAX_RANK)
      kiln_fail(d->loc, "a tensor may have at most %d dimensions", IR_MAX_RANK);
    TypeDim *td = &ts.d[ts.rank++];
    td->loc = d->loc;
    if (d->kind == TK_IDENT) {
      td->sym = pool_strndup(P->pool, d->s, (size_t)d->len);
    } else if (d->kind == TK_NUM) {
      if (!d->is_int || d->ival <= 0 || d->ival > INT32_MAX)
        kiln_fail(d->loc, "a dimension must be an integer from 1 to %d, got %s", INT32_MAX,
                  desc(P, d));
      td->n = d->ival;
    } else {
      kiln_fail(d->loc, "expected a dimension (a positive integer or the batch symbol), got %s",
                desc(P, d));
    }
    next(P);
    if (accept(P, ']'))
      return ts;
    Token *bad = peek(P);
    if (bad->kind == TK_NEWLINE || bad->kind == TK_EOF)
      kiln_fail(open->loc, "unterminated list: this '[' has no matching ']'");
    if (!accept(P, ','))
      kiln_fail(bad->loc, "expected ',' or ']' in the dimensions, got %s", desc(P, bad));
  }
}

/* decl_head = IDENT ":" type */
static void decl_head(Parser *P, Stmt *s, const char *what) {
  s->name = expect_ident(P, pool_printf(P->pool, "a name for the %s", what), &s->name_loc);
  expect(P, ':', pool_printf(P->pool, "and a type after the %s's name", what));
  s->type = type(P);
}

/* input = "input" IDENT ":" type ["from" source]
 * source = "images" [("/" | "*") NUMBER] | "labels" */
static void input_stmt(Parser *P, Stmt *s) {
  decl_head(P, s, "input");
  s->source = KILN_SRC_NONE;
  s->scale = 1;
  if (!is_word(peek(P), "from"))
    return;
  next(P);
  Token *src = peek(P);
  if (is_word(src, "labels")) {
    next(P);
    s->source = KILN_SRC_LABELS;
    return;
  }
  if (!is_word(src, "images"))
    kiln_fail(src->loc, "expected a data source ('images' or 'labels'), got %s", desc(P, src));
  next(P);
  s->source = KILN_SRC_IMAGES;
  Token *op = peek(P);
  if (!is_punct(op, '/') && !is_punct(op, '*'))
    return;
  next(P);
  Token *n = peek(P);
  if (n->kind != TK_NUM)
    kiln_fail(n->loc, "expected a number after '%c', got %s", op->s[0], desc(P, n));
  next(P);
  if (op->s[0] == '/') {
    if (n->num == 0)
      kiln_fail(n->loc, "cannot divide the images by zero");
    s->scale = 1.0 / n->num;
  } else {
    s->scale = n->num;
  }
}

/* const = "const" IDENT ":" type "=" expr
 * param = "param" IDENT ":" type ["=" expr | "init" "=" expr] */
static void value_stmt(Parser *P, Stmt *s, bool is_param) {
  decl_head(P, s, is_param ? "parameter" : "constant");
  Token *t = peek(P);
  if (is_param && is_word(t, "init") && is_punct(peek_at(P, 1), '=')) {
    next(P);
    next(P);
    s->init = expr(P);
    return;
  }
  if (is_param && (t->kind == TK_NEWLINE || t->kind == TK_EOF))
    return;
  expect(P, '=', is_param ? "or 'init=' after the parameter's type" : "and a value after the constant's type");
  s->value = expr(P);
}

/* train = "train" "{" {NEWLINE | IDENT "=" expr} "}" */
static void train_stmt(Parser *P, Stmt *s) {
  Token *open = expect(P, '{', "after 'train'");
  int cap = 0;
  for (;;) {
    skip_newlines(P);
    Token *t = peek(P);
    if (accept(P, '}'))
      return;
    if (t->kind == TK_EOF)
      kiln_fail(open->loc, "unterminated train block: this '{' has no matching '}'");
    Setting st = {0};
    st.key = expect_ident(P, "a setting name or '}'", &st.loc);
    expect(P, '=', pool_printf(P->pool, "after '%s'", st.key));
    st.value = expr(P);
    s->settings = grow(P, s->settings, s->nsettings, &cap, sizeof(Setting));
    s->settings[s->nsettings++] = st;
  }
}

static void stmt(Parser *P, Stmt *s);

/* for = "for" IDENT "in" expr "{" {NEWLINE | stmt (NEWLINE | before "}")} "}"
 * The iterable is range(...) or a list of numbers; lower.c unrolls the loop. */
static void for_stmt(Parser *P, Stmt *s, Token *kw) {
  s->name = expect_ident(P, "a loop variable after 'for'", &s->name_loc);
  Token *in = peek(P);
  if (!is_word(in, "in"))
    kiln_fail(in->loc, "expected 'in' after the loop variable '%s', got %s", s->name,
              desc(P, in));
  next(P);
  s->value = expr(P);
  Token *open = expect(P, '{', "to open the loop's body");
  int depth = P->depth;
  nest(P, kw);
  int cap = 0;
  for (;;) {
    skip_newlines(P);
    if (accept(P, '}'))
      break;
    if (peek(P)->kind == TK_EOF)
      kiln_fail(open->loc, "unterminated loop: this '{' has no matching '}'");
    s->body = grow(P, s->body, s->nbody, &cap, sizeof(Stmt));
    Stmt *b = &s->body[s->nbody++];
    memset(b, 0, sizeof *b);
    stmt(P, b);
    Token *t = peek(P);
    if (t->kind != TK_NEWLINE && !is_punct(t, '}'))
      kiln_fail(t->loc, "expected end of line after the statement, got %s", desc(P, t));
  }
  P->depth = depth;
}

static const char *const keywords[] = {
    [ST_MODEL] = "model",   [ST_INPUT] = "input",       [ST_CONST] = "const",
    [ST_PARAM] = "param",   [ST_ASSIGN] = NULL,         [ST_OUTPUT] = "output",
    [ST_MINIMIZE] = "minimize", [ST_TRAIN] = "train",   [ST_FOR] = "for",
    [ST_METRIC] = "metric",
};

/* stmt = model | input | const | param | output | metric | minimize | train | for
 *      | IDENT "=" expr
 * model = "model" IDENT;  output = "output" IDENT;  metric = "metric" IDENT;
 * minimize = "minimize" IDENT */
static void stmt(Parser *P, Stmt *s) {
  Token *t = peek(P);
  s->loc = t->loc;
  if (t->kind == TK_IDENT && !is_punct(peek_at(P, 1), '=')) {
    for (int k = 0; k < (int)(sizeof keywords / sizeof *keywords); k++) {
      if (!keywords[k] || !is_word(t, keywords[k]))
        continue;
      next(P);
      s->kind = (StmtKind)k;
      switch (s->kind) {
      case ST_INPUT:
        input_stmt(P, s);
        return;
      case ST_CONST:
        value_stmt(P, s, false);
        return;
      case ST_PARAM:
        value_stmt(P, s, true);
        return;
      case ST_TRAIN:
        train_stmt(P, s);
        return;
      case ST_FOR:
        for_stmt(P, s, t);
        return;
      default: /* model, output, metric, minimize: one name */
        s->name = expect_ident(P, pool_printf(P->pool, "a name after '%s'", keywords[k]),
                               &s->name_loc);
        return;
      }
    }
  }
  if (t->kind != TK_IDENT)
    kiln_fail(t->loc, "expected a statement, got %s", desc(P, t));
  if (!is_punct(peek_at(P, 1), '='))
    kiln_fail(peek_at(P, 1)->loc, "expected '=' after '%.*s' (or a statement keyword), got %s",
              t->len, t->s, desc(P, peek_at(P, 1)));
  s->kind = ST_ASSIGN;
  s->name = pool_strndup(P->pool, t->s, (size_t)t->len);
  s->name_loc = t->loc;
  next(P);
  s->loc = next(P)->loc;
  s->value = expr(P);
}

/* program = {NEWLINE} {stmt NEWLINE {NEWLINE}} EOF */
Program *parse_program(Pool *p, const SrcFile *f, size_t len) {
  Parser P = {.pool = p, .file = f};
  P.toks = lex_tokens(p, f, len, &P.ntok);
  Program *prog = pool_alloc(p, sizeof *prog);
  prog->file = f;
  int cap = 0;
  for (;;) {
    skip_newlines(&P);
    if (peek(&P)->kind == TK_EOF)
      break;
    prog->stmts = grow(&P, prog->stmts, prog->nstmts, &cap, sizeof(Stmt));
    Stmt *s = &prog->stmts[prog->nstmts++];
    memset(s, 0, sizeof *s);
    stmt(&P, s);
    Token *t = peek(&P);
    if (t->kind != TK_NEWLINE && t->kind != TK_EOF)
      kiln_fail(t->loc, "expected end of line after the statement, got %s", desc(&P, t));
  }
  prog->end = peek(&P)->loc;
  return prog;
}
