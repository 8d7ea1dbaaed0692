/*
 * front.h — the one internal header of kiln's frontend: model text -> tokens -> AST -> Graph.
 *
 * Sections are named after the .c file that owns them, in pipeline order:
 *
 *   lex.c       tokens with file:line:col (newlines are tokens: statements end at a line's end)
 *   parse.c     the AST: one Stmt per statement, Expr trees for right-hand sides and values
 *   lower.c     statements and expressions -> Graph: checks each call's arguments and builds
 *               through nn/ (layers, composites) and the ir_* builders; the public entry points
 *               fe_compile_*
 *   settings.c  the train block -> TrainSpec (optimizer, regularizers, early stopping, ...)
 *
 * The language itself is documented in docs/language.md; each parse function carries its
 * grammar rule. Every error goes through kiln_fail(loc, ...) at the token or expression that is
 * wrong, so nothing here returns error codes.
 */
#ifndef KILN_FRONTEND_H
#define KILN_FRONTEND_H

#include "ir/ir.h"
#include "nn/nn.h"

/* ================================ lex.c ================================ */

typedef enum TokKind {
  TK_IDENT,    /* [A-Za-z_][A-Za-z0-9_]* */
  TK_NUM,      /* 12, 0.5, 1e-3, .5 */
  TK_PUNCT,    /* one of + - * / ^ ( ) [ ] { } , = : */
  TK_NEWLINE,  /* end of a line (comments and blank lines produce one too) */
  TK_EOF
} TokKind;

typedef struct Token {
  TokKind kind;
  const char *s;      /* the text in the source (not NUL-terminated) */
  int len;
  double num;         /* TK_NUM: value */
  bool is_int;        /* TK_NUM: integer syntax whose value fits int64 */
  int64_t ival;       /* TK_NUM with is_int */
  Loc loc;
} Token;

/* Splits f->text (len bytes) into tokens ending with one TK_EOF; *ntok receives the count. */
Token *lex_tokens(Pool *p, const SrcFile *f, size_t len, int *ntok);
/* "'relu'", "'('", "end of line", "end of file": how a token is named in messages. */
const char *lex_describe(Pool *p, const Token *t);
/* Is s a checked identifier [A-Za-z_][A-Za-z0-9_]*? */
bool lex_is_ident(const char *s);

/* ================================ parse.c ================================ */

typedef enum ExprKind {
  EX_NUM,      /* num, is_int, text */
  EX_NAME,     /* name */
  EX_BINARY,   /* lhs op rhs, op one of + - * / % ^; loc is the operator's */
  EX_NEG,      /* -lhs; loc is the '-' */
  EX_CALL,     /* name(args); loc is the function name's; as = `as NAME` or NULL */
  EX_LIST,     /* [items]; loc is the '[' */
  EX_INDEX,    /* lhs[items]: each item an expression (one index) or an EX_RANGE; loc is '[' */
  EX_RANGE     /* start:stop inside an index, lhs = start and rhs = stop (NULL when left out);
                  loc is the ':' */
} ExprKind;

typedef struct Expr Expr;

/* One call argument: positional (name == NULL) or keyword. Positional ones come first. */
typedef struct Arg {
  const char *name;
  Loc loc;            /* the keyword's, or the value's for positional arguments */
  Expr *value;
} Arg;

struct Expr {
  ExprKind kind;
  Loc loc;
  double num;         /* EX_NUM */
  bool is_int;        /* EX_NUM: integer syntax that fits int64 */
  const char *text;   /* EX_NUM: as written, for messages */
  const char *name;   /* EX_NAME: the name; EX_CALL: the function */
  char op;            /* EX_BINARY */
  Expr *lhs, *rhs;    /* EX_BINARY; EX_NEG uses lhs */
  Arg *args;          /* EX_CALL */
  int nargs;
  Expr **items;       /* EX_LIST */
  int nitems;
  const char *as;     /* EX_CALL: layer name given with `as NAME`, else NULL */
  Loc as_loc;
  struct LayerName *layers; /* EX_CALL of a layer: the names lowering chose, one per loop
                               iteration (reused by the eval pass) */
};

/* A layer's name chosen in one iteration of the loops around its call (key: the iteration
 * suffix, "" outside loops, ".2.0" in the third iteration of an outer loop and the first of an
 * inner one). */
typedef struct LayerName {
  const char *key;
  const char *name;
  struct LayerName *next;
} LayerName;

typedef enum StmtKind {
  ST_MODEL,    /* model NAME */
  ST_INPUT,    /* input NAME: TYPE [from SOURCE] */
  ST_CONST,    /* const NAME: TYPE = LITERAL */
  ST_PARAM,    /* param NAME: TYPE [= LITERAL | init=INIT] */
  ST_ASSIGN,   /* NAME = EXPR */
  ST_OUTPUT,   /* output NAME */
  ST_METRIC,   /* metric NAME */
  ST_MINIMIZE, /* minimize NAME */
  ST_TRAIN,    /* train { KEY = VALUE ... } */
  ST_FOR       /* for NAME in ITERABLE { STMT ... } */
} StmtKind;

/* One dimension as written: a number, or the batch symbol's name. */
typedef struct TypeDim {
  int64_t n;          /* when sym == NULL */
  const char *sym;
  Loc loc;
} TypeDim;

typedef struct TypeSpec {
  DType dtype;
  int rank;
  TypeDim d[IR_MAX_RANK];
  Loc loc;            /* the element type's name */
} TypeSpec;

/* One `key = value` of a train block. */
typedef struct Setting {
  const char *key;
  Loc loc;            /* the key's */
  Expr *value;
} Setting;

typedef struct Stmt {
  StmtKind kind;
  Loc loc;            /* the keyword's (ST_ASSIGN: the '='s) */
  const char *name;   /* the declared / assigned / named variable (ST_TRAIN: NULL) */
  Loc name_loc;
  TypeSpec type;      /* ST_INPUT, ST_CONST, ST_PARAM */
  int source;         /* ST_INPUT: KILN_SRC_* */
  double scale;       /* ST_INPUT from images: pixel multiplier (1 unless `/ N` or `* N`) */
  Expr *value;        /* ST_CONST, ST_PARAM: the literal (or NULL); ST_ASSIGN: right-hand side */
  Expr *init;         /* ST_PARAM: init=INIT, or NULL */
  Setting *settings;  /* ST_TRAIN */
  int nsettings;
  struct Stmt *body;  /* ST_FOR: the statements repeated, with name the loop variable and value
                         what it runs over */
  int nbody;
} Stmt;

typedef struct Program {
  const SrcFile *file;
  Stmt *stmts;
  int nstmts;
  Loc end;            /* end of file, for "no 'minimize' statement" */
} Program;

/* Parses a whole model file. Syntax errors fail at the offending token. */
Program *parse_program(Pool *p, const SrcFile *f, size_t len);

/* ================================ lower.c ================================ */

/* A value during lowering: a tensor (node >= 0) or a compile-time number. */
typedef struct Val {
  int node;
  double num;
} Val;

typedef enum VarKind { VAR_COMPUTED, VAR_INPUT, VAR_CONST, VAR_PARAM } VarKind;

typedef struct Var {
  const char *name;
  Val v;
  VarKind kind;
  Loc loc;            /* where it was defined */
} Var;

/* The state of one lowering (both passes). */
typedef struct Lower {
  Graph *g;
  Program *prog;
  Pool *tmp;
  NnMode mode;                /* the pass: NN_TRAIN, then NN_EVAL */
  Var *vars;
  int nvars, capvars;
  int sym;                    /* the model's one dimension symbol (the batch), or -1 */
  const char *symname;
  NnInit init;                /* the train block's `init` */
  const char **explicit_layers; /* names given by `as` or by assignment: auto names avoid them */
  int nexplicit;
  int layer_count[64];        /* per function: auto-named layers so far (linear1, linear2, ...) */
  const char **sites;         /* dropout sites named so far (training pass): names must differ */
  int nsites, capsites;
  bool have_output, have_minimize;
  const char *suffix;         /* inside loops: ".i" per enclosing loop, the iteration's index,
                                 added to the layer names the file gives (ModuleList style) */
  int64_t loop_iterations;    /* bodies lowered by loops so far in this pass */
} Lower;

/* Compile-time arguments, shared with settings.c. `what` names the argument in messages
 * ("linear: 'out'"); each fails at the expression that is wrong. */
const char *fe_fmt_num(Lower *L, double v);                      /* "%.15g" */
double fe_num_arg(Lower *L, const Expr *e, const char *what);   /* a finite number */
int64_t fe_int_arg(Lower *L, const Expr *e, int64_t lo, int64_t hi, const char *what);
bool fe_bool_arg(const Expr *e, const char *what);              /* true or false */
/* Matches a call's arguments to params: args[i] is the expression for params[i] or NULL. */
void fe_bind_args(const char *fname, const char *const *params, int nparams, int nrequired,
                  const Expr *call, Expr **args);
/* An initialisation scheme as written (`he`, `normal(std=0.01)`); `default` is NN_INIT_DEFAULT. */
NnInit fe_init_spec(Lower *L, const Expr *e);


/* Lowers prog into g (twice: training mode, then evaluation mode) and fills g->loss_train,
 * g->loss_eval, g->output_eval, g->train and g->name. tmp holds scratch memory. */
void fe_lower(Graph *g, Program *prog, Pool *tmp);

/* ================================ settings.c ================================ */

/* Reads the train block s into t (t->loc included) and returns its `init` (NN_INIT_DEFAULT when
 * not given), which the layers' weights use. */
NnInit fe_read_train(Lower *L, const Stmt *s, TrainSpec *t);

/* ================================ lower.c ================================ */

/* The frontend's public entry points: parse and lower a model into a new Graph (train_build is
 * not yet run). Errors kiln_fail to the caller's KILN_TRY; the partly built graph is freed
 * first. The source text is kept in the graph's pool, since every Loc points into it. */
Graph *fe_compile_file(const char *path);
Graph *fe_compile_string(const char *path_for_messages, const char *text);
/* The same for a compile that changes what the text lowers to. */
typedef struct FeOptions {
  bool data_parallel;   /* Graph.data_parallel: batch statistics over every process */
} FeOptions;
Graph *fe_compile_file_with(const char *path, const FeOptions *o);
Graph *fe_compile_string_with(const char *path_for_messages, const char *text,
                              const FeOptions *o);

#endif
