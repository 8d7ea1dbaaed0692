/*
 * lex.c — splits a model file into tokens.
 *
 * Tokens are identifiers, numbers, single-character punctuation, and newlines: a statement ends
 * where its line ends, so the line break is a token and the parser decides where it may be
 * skipped (inside list literals and argument lists). A comment runs from '#' to the end of the
 * line. Every token records file, line and column (1-based, counted in bytes), which is all an
 * error message needs to quote the line and put a caret under the spot.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "front/front.h"

typedef struct Lexer {
  Pool *pool;
  const SrcFile *file;
  const char *p, *end;
  const char *line_start;
  int line;
  Token *toks;
  int ntok, cap;
} Lexer;

static Loc loc_at(const Lexer *L, const char *at) {
  return (Loc){L->file, L->line, (int)(at - L->line_start) + 1};
}

static Token *push(Lexer *L, TokKind kind, const char *s, int len) {
  if (L->ntok == L->cap) {
    int cap = L->cap ? 2 * L->cap : 256;
    Token *t = pool_alloc(L->pool, (size_t)cap * sizeof(Token));
    if (L->ntok)
      memcpy(t, L->toks, (size_t)L->ntok * sizeof(Token));
    L->toks = t;
    L->cap = cap;
  }
  Token *t = &L->toks[L->ntok++];
  memset(t, 0, sizeof *t);
  t->kind = kind;
  t->s = s;
  t->len = len;
  t->loc = loc_at(L, s);
  return t;
}

#define LEX_MAX_IDENT 128

static bool is_ident_start(int c) { return isalpha(c) || c == '_'; }
static bool is_ident_char(int c) { return isalnum(c) || c == '_'; }

bool lex_is_ident(const char *s) {
  if (!s || !is_ident_start((unsigned char)*s))
    return false;
  for (s++; *s; s++)
    if (!is_ident_char((unsigned char)*s))
      return false;
  return true;
}

/* number = digits ["." digits] [("e"|"E") ["+"|"-"] digits] | "." digits [exponent]
 * A letter or digit glued to the end (`12abc`, `1e`) makes the whole word an invalid number
 * rather than a number followed by a name. */
static void lex_number(Lexer *L) {
  const char *s = L->p, *q = s;
  bool is_int = true;
  while (q < L->end && isdigit((unsigned char)*q))
    q++;
  if (q < L->end && *q == '.') {
    is_int = false;
    q++;
    while (q < L->end && isdigit((unsigned char)*q))
      q++;
  }
  if (q < L->end && (*q == 'e' || *q == 'E')) {
    is_int = false;
    q++;
    if (q < L->end && (*q == '+' || *q == '-'))
      q++;
    const char *digits = q;
    while (q < L->end && isdigit((unsigned char)*q))
      q++;
    if (q == digits) {
      while (q < L->end && is_ident_char((unsigned char)*q))
        q++;
      kiln_fail(loc_at(L, s), "invalid number '%.*s'", (int)(q - s), s);
    }
  }
  if (q < L->end && (is_ident_char((unsigned char)*q) || *q == '.')) {
    while (q < L->end && (is_ident_char((unsigned char)*q) || *q == '.'))
      q++;
    kiln_fail(loc_at(L, s), "invalid number '%.*s'", (int)(q - s), s);
  }
  int len = (int)(q - s);
  char *text = pool_strndup(L->pool, s, (size_t)len);
  Token *t = push(L, TK_NUM, s, len);
  errno = 0;
  t->num = strtod(text, NULL);
  if (errno == ERANGE && isinf(t->num))
    kiln_fail(t->loc, "number '%s' is out of range", text);
  if (is_int) {
    errno = 0;
    long long v = strtoll(text, NULL, 10);
    if (errno != ERANGE) {
      t->is_int = true;
      t->ival = v;
    }
  }
  L->p = q;
}

Token *lex_tokens(Pool *p, const SrcFile *f, size_t len, int *ntok) {
  Lexer L = {.pool = p, .file = f, .p = f->text, .end = f->text + len, .line_start = f->text,
             .line = 1};
  while (L.p < L.end) {
    unsigned char c = (unsigned char)*L.p;
    if (c == '\n') {
      push(&L, TK_NEWLINE, L.p, 1);
      L.p++;
      L.line++;
      L.line_start = L.p;
    } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
      L.p++;
    } else if (c == '#') {
      while (L.p < L.end && *L.p != '\n')
        L.p++;
    } else if (is_ident_start(c)) {
      const char *s = L.p;
      while (L.p < L.end && is_ident_char((unsigned char)*L.p))
        L.p++;
      /* Names reach the generated C with suffixes (".exp_avg_sq", "grad."), whose identifiers
       * the code generator caps at 200 characters: a bound here leaves room for them. */
      if (L.p - s > LEX_MAX_IDENT)
        kiln_fail(loc_at(&L, s), "name is too long (%lld characters; at most %d)",
                  (long long)(L.p - s), LEX_MAX_IDENT);
      push(&L, TK_IDENT, s, (int)(L.p - s));
    } else if (isdigit(c) || (c == '.' && L.p + 1 < L.end && isdigit((unsigned char)L.p[1]))) {
      lex_number(&L);
    } else if (strchr("+-*/%^()[]{},=:", c) && c != '\0') {
      push(&L, TK_PUNCT, L.p, 1);
      L.p++;
    } else if (isprint(c)) {
      kiln_fail(loc_at(&L, L.p), "unexpected character '%c'", c);
    } else {
      kiln_fail(loc_at(&L, L.p), "unexpected byte 0x%02X", c);
    }
  }
  /* The end of file is reported where the last line with a token ends, not on an empty line
   * or one that does not exist, so a message about it can quote something. */
  Token *eof = push(&L, TK_EOF, L.p, 0);
  int i = L.ntok - 1;
  while (i > 0 && L.toks[i - 1].kind == TK_NEWLINE)
    i--;
  if (i < L.ntok - 1)
    eof->loc = L.toks[i].loc;
  *ntok = L.ntok;
  return L.toks;
}

const char *lex_describe(Pool *p, const Token *t) {
  switch (t->kind) {
  case TK_NEWLINE:
    return "end of line";
  case TK_EOF:
    return "end of file";
  default:
    return pool_printf(p, "'%.*s'", t->len, t->s);
  }
}
