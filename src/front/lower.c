/*
 * lower.c — turns the AST into the graph IR, and the frontend's public entry points.
 *
 * Everything goes through the ir_* builders, which check shapes as nodes are made, so a shape
 * error points at the model line that caused it. The statements are lowered twice into the same
 * Graph, once in training mode and once in evaluation mode: batchnorm (batch statistics and
 * running-statistics updates vs running statistics) and dropout (masks vs identity) differ
 * between the two, everything else merges by hash-consing, and leaves (inputs, parameters,
 * buffers, constants) are created by the first pass and looked up by the second. Updates of
 * running statistics and of the dropout counter are registered by the training pass only.
 *
 * Numbers in expressions stay compile-time values (and fold: `0.5 * 2` is 1) until they meet a
 * tensor, where they become a scalar constant of that tensor's element type, so `0.5 * x` works
 * for f32 and f64 alike. Layers and composites (`linear`, `conv2d`, `batchnorm`, l2pool2d, ...)
 * are built by the layer library (nn/): here a call's arguments are bound, checked where they
 * are written and turned into typed options, and the layer's name is chosen. Per-function
 * behaviour is a table (funcs[]) of argument names and one lowering function each. The train
 * block is read by settings.c.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "front/front.h"
#include "nn/nn.h"

typedef struct Func Func;
typedef Val (*LowerFn)(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer);

/* Whether and how a call is named. A name prefixes a layer's parameters and buffers (so it is
 * what a checkpoint calls them), or seeds a random site's masks. */
typedef enum Naming {
  NAMED_NO,     /* a plain function: `as` is an error */
  NAMED_LAYER,  /* makes parameters: named by `as`, its variable, or <function><n> */
  NAMED_SITE    /* draws random numbers (dropout): named by `as` or <function><n>, never by its
                   variable, since `h = dropout(h)` written twice must draw two different masks */
} Naming;

/* One function callable in a model file. Arguments are params[0..nparams); the first nrequired
 * must be given; the rest have defaults the lowering function supplies. A first parameter
 * written "*x" (as in Python) takes every positional argument: such a variadic function binds
 * its arguments itself. */
struct Func {
  const char *name;
  LowerFn lower;
  Op op;                      /* the primitive for the 1:1 functions (the main one otherwise) */
  Naming naming;
  int nrequired, nparams;
  const char *params[8];
};

const char *fe_fmt_num(Lower *L, double v) { return pool_printf(L->tmp, "%.15g", v); }

static const char *shape_text(Lower *L, const Shape *s) {
  char buf[256];
  return pool_strdup(L->tmp, shape_str(L->g, s, buf, sizeof buf));
}

static Node *node(Lower *L, int id) { return ir_at(L->g, id); }

/* ---- variables ---- */

static Var *find_var(Lower *L, const char *name) {
  for (int i = L->nvars - 1; i >= 0; i--)
    if (!strcmp(L->vars[i].name, name))
      return &L->vars[i];
  return NULL;
}

static const char *const var_kind_names[] = {
    [VAR_COMPUTED] = "variable", [VAR_INPUT] = "input", [VAR_CONST] = "constant",
    [VAR_PARAM] = "parameter",
};

/* Defines or (for computed variables) redefines a name. Leaves cannot be redefined or assigned:
 * their names are the tensors' names in checkpoints and in the generated program. */
static void set_var(Lower *L, const char *name, Loc loc, VarKind kind, Val v) {
  Var *old = find_var(L, name);
  if (old && (old->kind != VAR_COMPUTED || kind != VAR_COMPUTED)) {
    if (kind == VAR_COMPUTED)
      kiln_fail(loc, "cannot assign to %s '%s' (defined on line %d)", var_kind_names[old->kind],
                name, old->loc.line);
    kiln_fail(loc, "'%s' is already defined on line %d", name, old->loc.line);
  }
  if (old) {
    old->v = v;
    old->loc = loc;
    return;
  }
  if (L->nvars == L->capvars) {
    int cap = L->capvars ? 2 * L->capvars : 16;
    Var *nv = pool_alloc(L->tmp, (size_t)cap * sizeof(Var));
    if (L->nvars)
      memcpy(nv, L->vars, (size_t)L->nvars * sizeof(Var));
    L->vars = nv;
    L->capvars = cap;
  }
  L->vars[L->nvars++] = (Var){name, v, kind, loc};
}

/* ---- compile-time values: numbers, integers, booleans, lists ---- */

static const Op binary_ops[128] = {['+'] = OP_ADD, ['-'] = OP_SUB, ['*'] = OP_MUL,
                                   ['/'] = OP_DIV, ['^'] = OP_POW};

/* x op y for two numbers known at compile time. Folding must not smuggle an infinity or a NaN
 * past the checks on literals. */
static double fold(Lower *L, Op op, double x, double y, Loc at) {
  static const char symbol[OP_COUNT] = {[OP_ADD] = '+', [OP_SUB] = '-', [OP_MUL] = '*',
                                        [OP_DIV] = '/', [OP_POW] = '^'};
  double r = op == OP_ADD ? x + y : op == OP_SUB ? x - y : op == OP_MUL ? x * y
           : op == OP_DIV ? x / y : pow(x, y);
  if (!isfinite(r))
    kiln_fail(at, "the constant %s %c %s is not a finite number", fe_fmt_num(L, x), symbol[op],
              fe_fmt_num(L, y));
  return r;
}

/* a % b as in Python: the remainder takes the divisor's sign, so `i % 10` cycles 0..9 for
 * negative i too. Only numbers have it. */
static double modulo(Lower *L, double a, double b, Loc at) {
  if (b == 0)
    kiln_fail(at, "%s %% 0: the divisor of '%%' must not be zero", fe_fmt_num(L, a));
  double r = fmod(a, b);
  if (r != 0 && (r < 0) != (b < 0))
    r += b;
  return r;
}

/* Folds an expression made only of numbers (and names bound to numbers); false otherwise. */
static bool const_num(Lower *L, const Expr *e, double *out) {
  double a, b;
  switch (e->kind) {
  case EX_NUM:
    *out = e->num;
    return true;
  case EX_NAME: {
    Var *v = find_var(L, e->name);
    if (!v || v->v.node >= 0)
      return false;
    *out = v->v.num;
    return true;
  }
  case EX_NEG:
    if (!const_num(L, e->lhs, &a))
      return false;
    *out = -a;
    return true;
  case EX_BINARY:
    if (!const_num(L, e->lhs, &a) || !const_num(L, e->rhs, &b))
      return false;
    *out = e->op == '%' ? modulo(L, a, b, e->loc)
                        : fold(L, binary_ops[(unsigned char)e->op], a, b, e->loc);
    return true;
  default:
    return false;
  }
}

double fe_num_arg(Lower *L, const Expr *e, const char *what) {
  double v;
  if (!const_num(L, e, &v))
    kiln_fail(e->loc, "%s must be a number", what);
  if (!isfinite(v))
    kiln_fail(e->loc, "%s must be finite, got %s", what, fe_fmt_num(L, v));
  return v;
}

int64_t fe_int_arg(Lower *L, const Expr *e, int64_t lo, int64_t hi, const char *what) {
  double v = fe_num_arg(L, e, what);
  if (v != floor(v))
    kiln_fail(e->loc, "%s must be an integer, got %s", what, fe_fmt_num(L, v));
  if (v < (double)lo)
    kiln_fail(e->loc, "%s must be at least %lld, got %s", what, (long long)lo, fe_fmt_num(L, v));
  if (v > (double)hi)
    kiln_fail(e->loc, "%s is out of range: %s (at most %lld)", what, fe_fmt_num(L, v),
              (long long)hi);
  return (int64_t)v;
}

bool fe_bool_arg(const Expr *e, const char *what) {
  if (e->kind == EX_NAME && !strcmp(e->name, "true"))
    return true;
  if (e->kind == EX_NAME && !strcmp(e->name, "false"))
    return false;
  kiln_fail(e->loc, "%s must be true or false", what);
}

/* ---- argument binding ---- */

/* Matches a call's arguments to params: args[i] is the expression for params[i] or NULL. */
void fe_bind_args(const char *fname, const char *const *params, int nparams, int nrequired,
                  const Expr *call, Expr **args) {
  int npos = 0;
  while (npos < call->nargs && !call->args[npos].name)
    npos++;
  bool fixed = nparams == nrequired;
  if (npos > nparams || (fixed && call->nargs == npos && npos < nrequired)) {
    Loc at = npos > nparams ? call->args[nparams].loc : call->loc;
    if (fixed)
      kiln_fail(at, "%s takes %d argument%s, got %d", fname, nparams, nparams == 1 ? "" : "s",
                npos);
    kiln_fail(at, "%s takes at most %d arguments, got %d", fname, nparams, npos);
  }
  for (int i = 0; i < nparams; i++)
    args[i] = i < npos ? call->args[i].value : NULL;
  for (int i = npos; i < call->nargs; i++) {
    const Arg *a = &call->args[i];
    int k = 0;
    while (k < nparams && strcmp(params[k], a->name))
      k++;
    if (k == nparams)
      kiln_fail(a->loc, "unknown argument '%s' to %s", a->name, fname);
    if (args[k])
      kiln_fail(a->loc, "%s: argument '%s' is given twice", fname, a->name);
    args[k] = a->value;
  }
  for (int i = 0; i < nrequired; i++)
    if (!args[i])
      kiln_fail(call->loc, "%s: missing argument '%s'", fname, params[i]);
}

/* ---- initialisation schemes ---- */

typedef struct InitName {
  const char *name;
  int kind;
  const char *param;   /* the scheme's one argument, or NULL */
  bool optional;       /* the argument may be left out: it is then `dflt` */
  double dflt;
} InitName;

static const InitName init_names[] = {
    {"default", -1, NULL, false, 0},
    {"he", KILN_INIT_HE_NORMAL, NULL, false, 0},
    {"he_uniform", KILN_INIT_HE_UNIFORM, NULL, false, 0},
    {"xavier", KILN_INIT_XAVIER_UNIFORM, NULL, false, 0},
    {"xavier_normal", KILN_INIT_XAVIER_NORMAL, NULL, false, 0},
    {"zeros", KILN_INIT_ZEROS, NULL, false, 0},
    {"ones", KILN_INIT_ONES, NULL, false, 0},
    {"normal", KILN_INIT_NORMAL, "std", false, 0},
    {"uniform", KILN_INIT_UNIFORM, "a", false, 0},
    {"orthogonal", KILN_INIT_ORTHOGONAL, "gain", true, 1},
    {"lsuv", NN_INIT_LSUV, NULL, false, 0},
};

/* init = "default" | "he" | "he_uniform" | "xavier" | "xavier_normal" | "zeros" | "ones"
 *      | "normal" "(" ["std" "="] NUMBER ")" | "uniform" "(" ["a" "="] NUMBER ")" */
NnInit fe_init_spec(Lower *L, const Expr *e) {
  const char *name = e->kind == EX_NAME || e->kind == EX_CALL ? e->name : NULL;
  for (size_t i = 0; name && i < sizeof init_names / sizeof *init_names; i++) {
    const InitName *in = &init_names[i];
    if (strcmp(in->name, name))
      continue;
    if (!in->param) {
      if (e->kind == EX_CALL)
        kiln_fail(e->loc, "%s takes no arguments: write 'init = %s'", name, name);
      return (NnInit){in->kind, 0};
    }
    if (e->kind != EX_CALL && in->optional)
      return (NnInit){in->kind, in->dflt};
    if (e->kind != EX_CALL)
      kiln_fail(e->loc, "%s needs its argument: write 'init = %s(%s=...)'", name, name,
                in->param);
    Expr *arg;
    fe_bind_args(name, &in->param, 1, 1, e, &arg);
    double a = fe_num_arg(L, arg, pool_printf(L->tmp, "%s: '%s'", name, in->param));
    if (a < 0)
      kiln_fail(arg->loc, "%s: '%s' must not be negative", name, in->param);
    return (NnInit){in->kind, a};
  }
  kiln_fail(e->loc, "unknown initialisation; expected default, he, he_uniform, xavier, "
                    "xavier_normal, zeros, ones, normal(std=...), uniform(a=...), "
                    "orthogonal(gain=1) or lsuv");
}

/* ---- leaves ---- */

static Dim type_dim(Lower *L, const TypeDim *td) {
  if (!td->sym)
    return (Dim){td->n, -1};
  if (L->sym < 0) {
    L->sym = ir_sym(L->g, td->sym);
    L->symname = td->sym;
  } else if (strcmp(L->symname, td->sym)) {
    kiln_fail(td->loc, "a model may use one dimension symbol (the batch); '%s' is a second one",
              td->sym);
  }
  return (Dim){1, L->sym};
}

static Shape type_shape(Lower *L, const TypeSpec *ts) {
  Shape s = {.rank = ts->rank};
  for (int i = 0; i < ts->rank; i++)
    s.d[i] = type_dim(L, &ts->d[i]);
  return s;
}

static const char *type_text(Lower *L, const TypeSpec *ts) {
  Shape s = type_shape(L, ts);
  return pool_printf(L->tmp, "%s%s", dtype_name(ts->dtype), shape_text(L, &s));
}

static void require_fixed_shape(Lower *L, const Stmt *s, const char *what) {
  for (int i = 0; i < s->type.rank; i++)
    if (s->type.d[i].sym) {
      type_dim(L, &s->type.d[i]);  /* a second symbol is reported as such */
      kiln_fail(s->type.d[i].loc, "%s's shape cannot use the batch symbol '%s'", what,
                s->type.d[i].sym);
    }
}

/* A literal element must be representable in its tensor's type: an f32 beyond float's range
 * would become an infinity, an i32 must be a 32-bit integer. */
static void check_literal_value(Lower *L, DType dt, double v, Loc at) {
  if (dt == DT_I32 && (v != floor(v) || fabs(v) > INT32_MAX))
    kiln_fail(at, "i32 value %s is not a 32-bit integer", fe_fmt_num(L, v));
  if (dt == DT_F32 && fabs(v) > FLT_MAX)
    kiln_fail(at, "f32 value %s is beyond float's range (largest 3.4028235e+38); declare the "
              "tensor f64 or scale the value", fe_fmt_num(L, v));
}

/* Fills out[] (row-major) from a nested list literal that must match the type exactly. */
static void fill_literal(Lower *L, const Stmt *s, const Expr *e, int depth, double *out,
                         int64_t *pos) {
  const TypeSpec *ts = &s->type;
  if (depth == ts->rank) {
    double v;
    if (e->kind == EX_LIST)
      kiln_fail(e->loc, "the literal has more levels of nesting than %s has dimensions",
                type_text(L, ts));
    if (!const_num(L, e, &v))
      kiln_fail(e->loc, "expected a number in the literal");
    check_literal_value(L, ts->dtype, v, e->loc);
    out[(*pos)++] = v;
    return;
  }
  int64_t want = ts->d[depth].n;
  if (e->kind != EX_LIST)
    kiln_fail(e->loc, "expected a list of %lld element%s for dimension %d of %s",
              (long long)want, want == 1 ? "" : "s", depth, type_text(L, ts));
  if (e->nitems != want)
    kiln_fail(e->loc, "expected %lld elements for dimension %d of %s, got %d", (long long)want,
              depth, type_text(L, ts), e->nitems);
  for (int i = 0; i < e->nitems; i++)
    fill_literal(L, s, e->items[i], depth + 1, out, pos);
}

/* A literal that is a single number fills every element: true with that number in *v. Such a
 * constant is kept as the number, never as an array of copies, so that a short line such as
 * `const c: f32[4096, 4096] = 0.5` costs no more to emit and compile than the number. */
static bool literal_splat(Lower *L, const Stmt *s, double *v) {
  if (s->value->kind == EX_LIST || !const_num(L, s->value, v))
    return false;
  const Expr *first = s->value; /* the caret goes under the start of the expression */
  while (first->kind == EX_BINARY)
    first = first->lhs;
  check_literal_value(L, s->type.dtype, *v, first->loc);
  return true;
}

/* The literal's values, one per element, as a Graph.data index. */
static int literal_data(Lower *L, const Stmt *s) {
  int64_t n = 1;
  for (int i = 0; i < s->type.rank; i++) {
    n *= s->type.d[i].n;
    if (n > ((int64_t)1 << 28))
      kiln_fail(s->name_loc, "'%s' is too large for a literal (%s)", s->name,
                type_text(L, &s->type));
  }
  double *v = pool_alloc(L->tmp, (size_t)n * sizeof(double));
  int64_t pos = 0;
  fill_literal(L, s, s->value, 0, v, &pos);
  return ir_literal(L->g, v, n);
}

/* input = "input" NAME ":" TYPE ["from" SOURCE] */
static void lower_input(Lower *L, const Stmt *s) {
  Shape shape = type_shape(L, &s->type);
  if (s->source == KILN_SRC_LABELS && s->type.dtype != DT_I32)
    kiln_fail(s->type.loc, "labels are integers: declare '%s' as i32[...]", s->name);
  if (s->source == KILN_SRC_IMAGES && !dtype_is_float(s->type.dtype))
    kiln_fail(s->type.loc, "images are read as floating-point: declare '%s' as f32[...] or "
                           "f64[...]", s->name);
  int id;
  if (L->mode == NN_TRAIN) {
    if (find_var(L, s->name))
      set_var(L, s->name, s->name_loc, VAR_INPUT, (Val){-1, 0}); /* reports the clash */
    id = ir_leaf(L->g, OP_INPUT, ROLE_INPUT, s->name, s->type.dtype, shape, s->name_loc);
    node(L, id)->leaf.source = s->source;
    node(L, id)->leaf.scale = s->scale;
  } else {
    id = ir_find_leaf(L->g, s->name);
    KILN_ASSERT(id >= 0);
  }
  set_var(L, s->name, s->name_loc, VAR_INPUT, (Val){id, 0});
}

/* const = "const" NAME ":" TYPE "=" LITERAL */
static void lower_const(Lower *L, const Stmt *s) {
  require_fixed_shape(L, s, "a constant");
  int id;
  if (L->mode == NN_TRAIN) {
    if (find_var(L, s->name))
      set_var(L, s->name, s->name_loc, VAR_CONST, (Val){-1, 0});
    Shape shape = type_shape(L, &s->type);
    double v;
    if (literal_splat(L, s, &v)) {
      /* data stays -1: every phase reads such a constant as its one value, at any shape. */
      id = ir_leaf(L->g, OP_CONST, ROLE_NONE, s->name, s->type.dtype, shape, s->name_loc);
      node(L, id)->attr.value = v;
      node(L, id)->attr.dtype = s->type.dtype;
    } else {
      int data = literal_data(L, s);
      id = ir_leaf(L->g, OP_CONST, ROLE_NONE, s->name, s->type.dtype, shape, s->name_loc);
      node(L, id)->data = data;
    }
  } else {
    id = ir_find_leaf(L->g, s->name);
    KILN_ASSERT(id >= 0);
  }
  set_var(L, s->name, s->name_loc, VAR_CONST, (Val){id, 0});
}

/* param = "param" NAME ":" TYPE ["=" LITERAL | "init" "=" INIT] */
static void lower_param(Lower *L, const Stmt *s) {
  require_fixed_shape(L, s, "a parameter");
  if (!dtype_is_float(s->type.dtype))
    kiln_fail(s->type.loc, "a parameter must be floating-point (f32 or f64), not %s",
              dtype_name(s->type.dtype));
  if (L->mode == NN_TRAIN && find_var(L, s->name))
    set_var(L, s->name, s->name_loc, VAR_PARAM, (Val){-1, 0});
  Shape shape = type_shape(L, &s->type);
  int64_t fan_in, fan_out;
  nn_fans(L->g, s->name, &shape, s->name_loc, &fan_in, &fan_out);
  NnInit init = s->init ? fe_init_spec(L, s->init) : L->init;
  if (s->init && init.kind == NN_INIT_LSUV)
    kiln_fail(s->init->loc, "lsuv initialises the layers of the whole model on data: it is a "
              "train block setting (init = lsuv), not a parameter's");
  double splat = 0;
  bool is_splat = s->value && literal_splat(L, s, &splat);
  if (s->value)
    init = is_splat ? (NnInit){KILN_INIT_CONST, splat} : (NnInit){KILN_INIT_DATA, 0};
  int id = nn_param(L->g, L->mode, s->name, s->type.dtype, shape, init, fan_in, fan_out,
                    s->name_loc);
  node(L, id)->leaf.weight = shape.rank >= 2;
  if (L->mode == NN_TRAIN && s->value && !is_splat)
    node(L, id)->data = literal_data(L, s);
  set_var(L, s->name, s->name_loc, VAR_PARAM, (Val){id, 0});
}

/* ---- expressions ---- */

static Val lower_expr(Lower *L, Expr *e, const char *assigned);

/* The tensor an argument must be. */
static int tensor(Lower *L, Expr *e) {
  Val v = lower_expr(L, e, NULL);
  if (v.node < 0)
    kiln_fail(e->loc, "expected a tensor here, got the number %s", fe_fmt_num(L, v.num));
  return v.node;
}

/* A number meeting a tensor becomes a scalar constant of the tensor's element type. */
static int as_tensor(Lower *L, Val v, DType like, Loc loc) {
  return v.node >= 0 ? v.node : ir_const(L->g, v.num, like, loc);
}

static Val binop(Lower *L, Op op, Val a, Loc la, Val b, Loc lb, Loc at) {
  if (a.node < 0 && b.node < 0)
    return (Val){-1, fold(L, op, a.num, b.num, at)};
  DType dt = node(L, a.node >= 0 ? a.node : b.node)->dtype;
  int x = as_tensor(L, a, dt, la), y = as_tensor(L, b, dt, lb);
  return (Val){ir_binary(L->g, op, x, y, at), 0};
}

static unsigned all_axes(int rank) { return rank ? (1u << rank) - 1 : 0; }

/* An activation the trainer's --diagnose watches (evaluation pass): relu1, relu2, tanh1, ... in
 * the order of the file. */
static void record_activation(Lower *L, const Func *f, int y) {
  Graph *g = L->g;
  for (int i = 0; i < g->nacts; i++)
    if (g->acts[i] == y)
      return; /* the same value written twice (hash-consed) */
  int k = 1;
  for (int i = 0; i < g->nacts; i++)
    k += ir_at(g, g->acts[i])->op == f->op;
  g->acts = kiln_realloc(g->acts, (size_t)(g->nacts + 1) * sizeof *g->acts);
  g->act_names = kiln_realloc(g->act_names, (size_t)(g->nacts + 1) * sizeof *g->act_names);
  g->acts[g->nacts] = y;
  g->act_names[g->nacts++] = pool_printf(g->pool, "%s%d", f->name, k);
}

/* unary: exp log neg sqrt relu sin cos atan erf sign softplus ... */
static Val fn_unary(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int y = ir_unary(L->g, f->op, tensor(L, args[0]), call->loc);
  if (L->mode == NN_EVAL && (f->op == OP_RELU || f->op == OP_SIGMOID || f->op == OP_TANH))
    record_activation(L, f, y);
  return (Val){y, 0};
}

/* The unary functions the layer library composes from primitives (nn.h). */
static const struct {
  const char *name;
  int (*build)(Graph *g, int x, Loc loc);
} composites[] = {{"abs", nn_abs}, {"step", nn_step}, {"tan", nn_tan}, {"gelu", nn_gelu}};

static Val fn_composite(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = tensor(L, args[0]);
  for (size_t i = 0; i < sizeof composites / sizeof *composites; i++)
    if (!strcmp(composites[i].name, f->name))
      return (Val){composites[i].build(L->g, x, call->loc), 0};
  unreachable();
}

/* min(a, b), max(a, b): elementwise, broadcasting, numbers allowed on either side */
static Val fn_extremum(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  Val a = lower_expr(L, args[0], NULL), b = lower_expr(L, args[1], NULL);
  if (a.node < 0 && b.node < 0)
    kiln_fail(call->loc, "%s needs at least one tensor argument", f->name);
  DType dt = node(L, a.node >= 0 ? a.node : b.node)->dtype;
  int x = as_tensor(L, a, dt, args[0]->loc), y = as_tensor(L, b, dt, args[1]->loc);
  bool is_max = !strcmp(f->name, "max");
  return (Val){is_max ? nn_maximum(L->g, x, y, call->loc) : nn_minimum(L->g, x, y, call->loc), 0};
}

/* clamp(x, min=-inf, max=inf), at least one bound given */
static Val fn_clamp(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int x = tensor(L, args[0]);
  if (!args[1] && !args[2])
    kiln_fail(call->loc, "clamp: give 'min', 'max' or both");
  double lo = args[1] ? fe_num_arg(L, args[1], "clamp: 'min'") : -INFINITY;
  double hi = args[2] ? fe_num_arg(L, args[2], "clamp: 'max'") : INFINITY;
  if (lo > hi)
    kiln_fail(call->loc, "clamp: 'min' (%s) is larger than 'max' (%s)", fe_fmt_num(L, lo),
              fe_fmt_num(L, hi));
  return (Val){nn_clamp(L->g, x, lo, hi, call->loc), 0};
}

/* maxout(x, pieces) */
static Val fn_maxout(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int x = tensor(L, args[0]);
  int64_t pieces = fe_int_arg(L, args[1], 1, INT32_MAX, "maxout: 'pieces'");
  return (Val){nn_maxout(L->g, x, pieces, call->loc), 0};
}

/* elu(x, alpha=1) */
static Val fn_elu(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int x = tensor(L, args[0]);
  double alpha = args[1] ? fe_num_arg(L, args[1], "elu: 'alpha'") : 1.0;
  return (Val){nn_elu(L->g, x, alpha, call->loc), 0};
}

/* binary, broadcasting: add sub mul div pow (numbers allowed on either side) */
static Val fn_binary(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  Val a = lower_expr(L, args[0], NULL), b = lower_expr(L, args[1], NULL);
  if (a.node < 0 && b.node < 0)
    kiln_fail(call->loc, "%s needs at least one tensor argument", f->name);
  return binop(L, f->op, a, args[0]->loc, b, args[1]->loc, call->loc);
}

/* matmul(a, b): [M, K] x [K, N] -> [M, N] */
static Val fn_matmul(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int a = tensor(L, args[0]), b = tensor(L, args[1]);
  return (Val){ir_matmul(L->g, a, b, false, false, call->loc), 0};
}

/* Axes given as one integer or a list; negative ones count from the end. */
static unsigned axes_arg(Lower *L, const Func *f, Expr *e, int rank) {
  Expr *one[1] = {e};
  Expr **items = e->kind == EX_LIST ? e->items : one;
  int n = e->kind == EX_LIST ? e->nitems : 1;
  unsigned axes = 0;
  for (int i = 0; i < n; i++) {
    int64_t a = fe_int_arg(L, items[i], -IR_MAX_RANK, IR_MAX_RANK,
                           pool_printf(L->tmp, "%s: an axis", f->name));
    if (a < -rank || a >= rank)
      kiln_fail(items[i]->loc, "%s: axis %lld is out of range for a tensor with %d axes",
                f->name, (long long)a, rank);
    if (a < 0)
      a += rank;
    if (axes & (1u << a))
      kiln_fail(items[i]->loc, "%s: axis %lld is given twice", f->name, (long long)a);
    axes |= 1u << a;
  }
  return axes;
}

/* sum/mean(x, axes=[..], keepdims=false): no axes = all axes */
static Val fn_reduce(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = tensor(L, args[0]);
  int rank = node(L, x)->shape.rank;
  unsigned axes = args[1] ? axes_arg(L, f, args[1], rank) : all_axes(rank);
  bool keep =
      args[2] ? fe_bool_arg(args[2], pool_printf(L->tmp, "%s: 'keepdims'", f->name)) : false;
  if (!axes)
    return (Val){x, 0};  /* nothing to reduce */
  return (Val){ir_reduce(L->g, f->op, x, axes, keep, call->loc), 0};
}

/* A product of dimensions as coef * symbol^power (a model has at most one symbol). */
typedef struct Mono {
  int64_t coef;
  int power;
} Mono;

static void mono_mul(Mono *m, Dim d, Loc loc) {
  if (__builtin_mul_overflow(m->coef, d.n, &m->coef))
    kiln_fail(loc, "reshape: the target shape has more than 2^63 elements");
  if (d.sym >= 0)
    m->power++;
}

/* reshape(x, shape=[..]): one -1 allowed; the symbol may appear; counts must match exactly. */
static Val fn_reshape(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int x = tensor(L, args[0]);
  Shape from = node(L, x)->shape;
  Expr *se = args[1];
  if (se->kind != EX_LIST)
    kiln_fail(se->loc, "reshape: 'shape' must be a list such as [B, -1]");
  if (se->nitems > IR_MAX_RANK)
    kiln_fail(se->loc, "reshape: a tensor may have at most %d dimensions", IR_MAX_RANK);
  Shape to = {.rank = se->nitems};
  int infer = -1;
  Mono have = {1, 0}, want = {1, 0};
  for (int i = 0; i < from.rank; i++)
    mono_mul(&have, from.d[i], call->loc);
  const char *target = "[";
  for (int i = 0; i < se->nitems; i++) {
    Expr *it = se->items[i];
    const char *sep = i ? ", " : "";
    if (it->kind == EX_NAME && !find_var(L, it->name)) {
      if (L->sym < 0)
        kiln_fail(it->loc, "'%s' is not defined (no input declares a dimension symbol)",
                  it->name);
      if (strcmp(L->symname, it->name))
        kiln_fail(it->loc,
                  "a model may use one dimension symbol (the batch); '%s' is a second one",
                  it->name);
      to.d[i] = (Dim){1, L->sym};
      target = pool_printf(L->tmp, "%s%s%s", target, sep, it->name);
    } else {
      double v;
      if (const_num(L, it, &v) && v == -1) {
        if (infer >= 0)
          kiln_fail(it->loc, "reshape: only one dimension may be -1");
        infer = i;
        target = pool_printf(L->tmp, "%s%s-1", target, sep);
        continue;
      }
      to.d[i] = (Dim){fe_int_arg(L, it, 1, INT32_MAX, "reshape: a dimension"), -1};
      target = pool_printf(L->tmp, "%s%s%lld", target, sep, (long long)to.d[i].n);
    }
    mono_mul(&want, to.d[i], it->loc);
  }
  target = pool_printf(L->tmp, "%s]", target);
  if (infer >= 0) {
    int dp = have.power - want.power;
    if (want.coef == 0 || have.coef % want.coef || dp < 0 || dp > 1 || (dp == 1 && L->sym < 0))
      kiln_fail(se->loc, "cannot reshape %s to %s: no size for -1 makes the element counts equal",
                shape_text(L, &from), target);
    to.d[infer] = (Dim){have.coef / want.coef, dp ? L->sym : -1};
  } else if (have.coef != want.coef || have.power != want.power) {
    kiln_fail(se->loc, "cannot reshape %s to %s: element counts differ", shape_text(L, &from),
              target);
  }
  return (Val){ir_reshape(L->g, x, to, call->loc), 0};
}

/* flatten(x): [N, d1, d2, ...] -> [N, d1*d2*...] */
static Val fn_flatten(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  return (Val){nn_flatten(L->g, tensor(L, args[0]), call->loc), 0};
}

/* cross_entropy(logits [N, C], labels i32[N]) -> scalar mean over N */
static Val fn_cross_entropy(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int logits = tensor(L, args[0]), labels = tensor(L, args[1]);
  return (Val){nn_cross_entropy(L->g, logits, labels, call->loc), 0};
}

/* nll(logp, labels), hinge(scores, labels, margin=1) */
static Val fn_nll(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = tensor(L, args[0]), labels = tensor(L, args[1]);
  if (!strcmp(f->name, "nll"))
    return (Val){nn_nll(L->g, x, labels, call->loc), 0};
  double margin = args[2] ? fe_num_arg(L, args[2], "hinge: 'margin'") : 1.0;
  return (Val){nn_hinge(L->g, x, labels, margin, call->loc), 0};
}

/* one_hot(labels, classes, dtype=f32) */
static Val fn_one_hot(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int labels = tensor(L, args[0]);
  int64_t classes = fe_int_arg(L, args[1], 1, (int64_t)1 << 31, "one_hot: 'classes'");
  DType dt = DT_F32;
  if (args[2]) {
    const char *t = args[2]->kind == EX_NAME ? args[2]->name : "";
    if (strcmp(t, "f32") && strcmp(t, "f64"))
      kiln_fail(args[2]->loc, "one_hot: 'dtype' is f32 or f64");
    dt = t[1] == '6' ? DT_F64 : DT_F32;
  }
  return (Val){nn_one_hot(L->g, labels, classes, dt, call->loc), 0};
}

/* gather(x, axis, index) */
static Val fn_gather(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int x = tensor(L, args[0]);
  int rank = node(L, x)->shape.rank;
  int64_t axis = fe_int_arg(L, args[1], -rank, rank - 1, "gather: 'axis'");
  return (Val){nn_gather(L->g, x, (int)(axis < 0 ? axis + rank : axis), tensor(L, args[2]),
                         call->loc), 0};
}

/* mse(a, b) = mean((a - b)^2) over all axes */
static Val fn_mse(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int a = tensor(L, args[0]), b = tensor(L, args[1]);
  return (Val){nn_mse(L->g, a, b, call->loc), 0};
}

static Val fn_psnr(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int a = tensor(L, args[0]), b = tensor(L, args[1]);
  double peak = args[2] ? fe_num_arg(L, args[2], "psnr: 'peak'") : 1;
  if (!(peak > 0))
    kiln_fail(args[2]->loc, "psnr: 'peak' must be positive, got %s", fe_fmt_num(L, peak));
  if (node(L, a)->shape.rank < 1)
    kiln_fail(args[0]->loc, "psnr needs a batch of examples [N, ...], got a scalar");
  if (!dtype_is_float(node(L, a)->dtype))
    kiln_fail(args[0]->loc, "psnr needs floating-point tensors, got %s",
              dtype_name(node(L, a)->dtype));
  return (Val){nn_psnr(L->g, a, b, peak, call->loc), 0};
}

/* The layer a call builds: named `layer`, its leaves made at the `as` name when there is one. */
static NnLayer layer_of(const Lower *L, const Expr *call, const char *layer) {
  return (NnLayer){L->mode, layer, call->loc, call->as ? call->as_loc : call->loc};
}

/* linear(x [N, in], out=M, bias=true): x @ weight^T + bias, weight [M, in], bias [M] */
static Val fn_linear(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f;
  int x = tensor(L, args[0]);
  nn_check_linear(L->g, x, call->loc);
  NnLinear o = {.out = fe_int_arg(L, args[1], 1, INT32_MAX, "linear: 'out'"), .init = L->init};
  o.bias = args[2] ? fe_bool_arg(args[2], "linear: 'bias'") : true;
  NnLayer l = layer_of(L, call, layer);
  return (Val){nn_linear(L->g, &l, x, &o), 0};
}

/* ---- activations, layout, losses ---- */

/* One axis, negative counting from the end. */
static int axis_arg(Lower *L, const Func *f, const Expr *e, int rank) {
  int64_t a = fe_int_arg(L, e, -IR_MAX_RANK, IR_MAX_RANK,
                         pool_printf(L->tmp, "%s: 'axis'", f->name));
  if (a < -rank || a >= rank)
    kiln_fail(e->loc, "%s: axis %lld is out of range for a tensor with %d axes", f->name,
              (long long)a, rank);
  return (int)(a < 0 ? a + rank : a);
}

/* leaky_relu(x, slope=0.01): x > 0 ? x : slope * x */
static Val fn_leaky_relu(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int x = tensor(L, args[0]);
  double slope = args[1] ? fe_num_arg(L, args[1], "leaky_relu: 'slope'") : 0.01;
  return (Val){nn_leaky_relu(L->g, x, slope, call->loc), 0};
}

/* softmax / log_softmax(x, axis=-1) */
static Val fn_softmax(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = tensor(L, args[0]);
  int rank = node(L, x)->shape.rank;
  if (rank == 0)
    kiln_fail(call->loc, "%s needs a tensor with at least 1 axis, got a scalar", f->name);
  int axis = args[1] ? axis_arg(L, f, args[1], rank) : rank - 1;
  return (Val){nn_softmax(L->g, x, axis, f->op == OP_LOG_SOFTMAX, call->loc), 0};
}

/* transpose(x, axes=[..]): result axis i is x's axis axes[i]; no axes: reversed (NumPy's) */
static Val fn_transpose(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = tensor(L, args[0]);
  int rank = node(L, x)->shape.rank;
  int perm[IR_MAX_RANK];
  if (!args[1]) {
    for (int i = 0; i < rank; i++)
      perm[i] = rank - 1 - i;
  } else {
    Expr *e = args[1];
    if (e->kind != EX_LIST || e->nitems != rank)
      kiln_fail(e->loc, "transpose: 'axes' must be a list of all %d axes of %s in their new order",
                rank, shape_text(L, &node(L, x)->shape));
    for (int i = 0; i < rank; i++)
      perm[i] = axis_arg(L, f, e->items[i], rank);
  }
  return (Val){ir_transpose(L->g, x, perm, call->loc), 0};
}

/* concat(a, b, ..., axis=1): joined along axis, pairwise left to right. Variadic: binds its own
 * arguments (every positional one is a tensor). */
static Val fn_concat(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)args, (void)layer;
  const Expr *axis = NULL;
  int n = 0;
  for (int i = 0; i < call->nargs; i++) {
    const Arg *a = &call->args[i];
    if (!a->name) {
      n++;
    } else if (strcmp(a->name, "axis")) {
      kiln_fail(a->loc, "unknown argument '%s' to concat", a->name);
    } else {
      if (axis)
        kiln_fail(a->loc, "concat: argument 'axis' is given twice");
      axis = a->value;
    }
  }
  if (n == 0)
    kiln_fail(call->loc, "concat needs at least one tensor");
  int r = tensor(L, call->args[0].value);
  int rank = node(L, r)->shape.rank;
  int ax = axis ? axis_arg(L, f, axis, rank) : 1;
  if (!axis && rank < 2)
    kiln_fail(call->loc, "concat joins along axis 1 by default, but %s has %d axis%s: give 'axis'",
              shape_text(L, &node(L, r)->shape), rank, rank == 1 ? "" : "es");
  /* one argument at a time, so its nodes come after the join of the ones before it */
  for (int i = 1; i < n; i++) {
    int in[2] = {r, tensor(L, call->args[i].value)};
    r = nn_concat(L->g, 2, in, ax, call->loc);
  }
  return (Val){r, 0};
}

/* bce_with_logits(x, t) = mean over all elements of max(x,0) - x*t + log(1 + e^-|x|) */
static Val fn_bce_with_logits(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int x = tensor(L, args[0]), t = tensor(L, args[1]);
  return (Val){nn_bce_with_logits(L->g, x, t, call->loc), 0};
}

/* ---- convolutional layers ---- */

/* The input of a 2-D window function: [N, C, H, W] with C, H and W numbers, floating-point. */
static int image_arg(Lower *L, const Func *f, Expr *call, Expr *e) {
  int x = tensor(L, e);
  nn_check_image(L->g, x, f->name, call->loc);
  return x;
}

/* kernel=3 or kernel=[3, 5]: one integer for both axes, or [h, w]. */
static void pair_arg(Lower *L, const Func *f, const Expr *e, const char *arg, int64_t lo,
                     int64_t out[2]) {
  const char *what = pool_printf(L->tmp, "%s: '%s'", f->name, arg);
  if (e->kind != EX_LIST) {
    out[0] = out[1] = fe_int_arg(L, e, lo, INT32_MAX, what);
    return;
  }
  if (e->nitems != 2)
    kiln_fail(e->loc, "%s must be one integer or a list [h, w]%s, got a list of %d", what,
              strcmp(arg, "pad") ? "" : " or [top, bottom, left, right]", e->nitems);
  for (int i = 0; i < 2; i++)
    out[i] = fe_int_arg(L, e->items[i], lo, INT32_MAX, what);
}

/* conv2d's padding modes (seed 003), by the names a model file writes. */
static const char *const pad_modes[] = {
    [NN_PAD_SAME] = "same", [NN_PAD_FULL] = "full", [NN_PAD_VALID] = "valid",
};
enum { PAD_MODES = sizeof pad_modes / sizeof *pad_modes };

/* Fills pad ([top, bottom, left, right]) from pad=P | [ph, pw] | same | full | valid, once
 * kernel, stride and dilation are known. The modes are conv2d's only (modes = true). */
static void pad_arg(Lower *L, const Func *f, const Expr *e, bool modes, const int64_t kernel[2],
                    const int64_t stride[2], const int64_t dilation[2], int64_t pad[4]) {
  if (!e)
    return;
  if (e->kind == EX_NAME) {
    int m = 0;
    while (m < PAD_MODES && strcmp(pad_modes[m], e->name))
      m++;
    if (m < PAD_MODES && !modes)
      kiln_fail(e->loc, "%s: pad=%s is for conv2d only; expected an integer or [ph, pw]",
                f->name, pad_modes[m]);
    if (m < PAD_MODES) {
      if (m == NN_PAD_SAME && (stride[0] != 1 || stride[1] != 1))
        kiln_fail(e->loc, "%s: pad=same needs stride 1 (as in PyTorch), but the stride is "
                  "[%lld, %lld]", f->name, (long long)stride[0], (long long)stride[1]);
      nn_pad_mode((NnPadMode)m, kernel, dilation, pad);
      return;
    }
    if (!find_var(L, e->name))
      kiln_fail(e->loc, modes ? "%s: unknown padding '%s'; expected an integer, [ph, pw], same, "
                "full or valid" : "%s: unknown padding '%s'; expected an integer or [ph, pw]",
                f->name, e->name);
  }
  if (e->kind == EX_LIST && e->nitems == 4) { /* [top, bottom, left, right] (ONNX's pads) */
    const char *what = pool_printf(L->tmp, "%s: 'pad'", f->name);
    for (int i = 0; i < 4; i++)
      pad[i] = fe_int_arg(L, e->items[i], 0, INT32_MAX, what);
    return;
  }
  int64_t hw[2];
  pair_arg(L, f, e, "pad", 0, hw);
  pad[0] = pad[1] = hw[0];
  pad[2] = pad[3] = hw[1];
}

/* conv2d(x [N, C, H, W], out=O, kernel=K, stride=1, pad=0, dilation=1, groups=1, bias=true) */
/* A convolution layer's bias=: true (one per channel, the default), false, or untied (one per
 * channel and output location). */
static void bias_arg(const Expr *e, const Func *f, NnConv2d *o) {
  o->bias = true;
  o->untied = e && e->kind == EX_NAME && !strcmp(e->name, "untied");
  if (!e || o->untied)
    return;
  if (e->kind != EX_NAME || (strcmp(e->name, "true") && strcmp(e->name, "false")))
    kiln_fail(e->loc, "%s: 'bias' must be true, false or untied", f->name);
  o->bias = fe_bool_arg(e, f->name);
}

/* conv(x, w, ...) and convolve(x, w, ...): a given kernel, F.conv2d's geometry arguments. */
static Val fn_conv(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  int w = tensor(L, args[1]);
  const Shape *ws = &node(L, w)->shape;
  if (ws->rank != 4)
    kiln_fail(args[1]->loc, "%s: the kernel must have shape [out, C/groups, kh, kw], got %s",
              f->name, shape_text(L, ws));
  NnConv2d o = {.stride = {1, 1}, .dilation = {1, 1}, .kernel = {ws->d[2].n, ws->d[3].n}};
  if (args[2])
    pair_arg(L, f, args[2], "stride", 1, o.stride);
  if (args[4])
    pair_arg(L, f, args[4], "dilation", 1, o.dilation);
  pad_arg(L, f, args[3], true, o.kernel, o.stride, o.dilation, o.pad);
  o.groups = args[5] ? fe_int_arg(L, args[5], 1, INT32_MAX, pool_printf(L->tmp, "%s: 'groups'",
                                                                         f->name)) : 1;
  return (Val){nn_conv(L->g, x, w, &o, !strcmp(f->name, "convolve"), call->loc), 0};
}

static Val fn_conv2d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = image_arg(L, f, call, args[0]);
  NnConv2d o = {.out = fe_int_arg(L, args[1], 1, INT32_MAX, "conv2d: 'out'"),
                .stride = {1, 1}, .dilation = {1, 1}};
  pair_arg(L, f, args[2], "kernel", 1, o.kernel);
  if (args[3])
    pair_arg(L, f, args[3], "stride", 1, o.stride);
  if (args[5])
    pair_arg(L, f, args[5], "dilation", 1, o.dilation);
  pad_arg(L, f, args[4], true, o.kernel, o.stride, o.dilation, o.pad);
  o.groups = args[6] ? fe_int_arg(L, args[6], 1, INT32_MAX, "conv2d: 'groups'") : 1;
  if (args[6])
    nn_check_groups(L->g, x, o.out, o.groups, args[6]->loc);
  bias_arg(args[7], f, &o);
  o.init = L->init;
  NnLayer l = layer_of(L, call, layer);
  return (Val){nn_conv2d(L->g, &l, x, &o), 0};
}

/* The 1-D functions' sizes: one integer, used as [1, n] by the 2-D machinery. */
static void single_arg(Lower *L, const Func *f, const Expr *e, const char *arg, int64_t lo,
                       int64_t out[2]) {
  out[0] = lo > 0 ? 1 : 0;
  out[1] = fe_int_arg(L, e, lo, INT32_MAX, pool_printf(L->tmp, "%s: '%s'", f->name, arg));
}

/* pad=P (both ends of the sequence) or, for conv1d, same | full | valid. */
static void pad1_arg(Lower *L, const Func *f, const Expr *e, bool modes, const int64_t kernel[2],
                     const int64_t stride[2], const int64_t dilation[2], int64_t pad[4]) {
  if (e && e->kind == EX_LIST)
    kiln_fail(e->loc, "%s: 'pad' is one integer%s", f->name, modes ? ", same, full or valid" : "");
  pad_arg(L, f, e, modes, kernel, stride, dilation, pad);
  pad[0] = pad[1] = 0;
}

/* conv1d(x, out, kernel, stride=1, pad=0, dilation=1, groups=1, bias=true) on [N, C, L] */
static Val fn_conv1d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  NnConv2d o = {.out = fe_int_arg(L, args[1], 1, INT32_MAX, "conv1d: 'out'"),
                .stride = {1, 1}, .dilation = {1, 1}};
  single_arg(L, f, args[2], "kernel", 1, o.kernel);
  if (args[3])
    single_arg(L, f, args[3], "stride", 1, o.stride);
  if (args[5])
    single_arg(L, f, args[5], "dilation", 1, o.dilation);
  pad1_arg(L, f, args[4], true, o.kernel, o.stride, o.dilation, o.pad);
  o.groups = args[6] ? fe_int_arg(L, args[6], 1, INT32_MAX, "conv1d: 'groups'") : 1;
  bias_arg(args[7], f, &o);
  o.init = L->init;
  NnLayer l = layer_of(L, call, layer);
  return (Val){nn_conv1d(L->g, &l, x, &o), 0};
}

/* maxpool1d(x, kernel, stride=kernel, pad=0, dilation=1), avgpool1d(x, kernel, stride=kernel,
 * pad=0, count_include_pad=true) on [N, C, L] */
static Val fn_pool1d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = tensor(L, args[0]);
  NnPool2d o = {.dilation = {1, 1}};
  single_arg(L, f, args[1], "kernel", 1, o.kernel);
  o.stride[0] = 1, o.stride[1] = o.kernel[1];
  if (args[2])
    single_arg(L, f, args[2], "stride", 1, o.stride);
  pad1_arg(L, f, args[3], false, o.kernel, o.stride, o.dilation, o.pad);
  if (f->op == OP_MAXPOOL2D) {
    if (args[4])
      single_arg(L, f, args[4], "dilation", 1, o.dilation);
    return (Val){nn_maxpool1d(L->g, x, &o, call->loc), 0};
  }
  o.count_include_pad = args[4] ? fe_bool_arg(args[4], "avgpool1d: 'count_include_pad'") : true;
  return (Val){nn_avgpool1d(L->g, x, &o, call->loc), 0};
}

/* The window of a pooling function: kernel, stride (default: the kernel), pad (default 0). */
static NnPool2d pool_window(Lower *L, const Func *f, Expr **args) {
  NnPool2d o = {.dilation = {1, 1}};
  pair_arg(L, f, args[1], "kernel", 1, o.kernel);
  o.stride[0] = o.kernel[0];
  o.stride[1] = o.kernel[1];
  if (args[2])
    pair_arg(L, f, args[2], "stride", 1, o.stride);
  pad_arg(L, f, args[3], false, o.kernel, o.stride, o.dilation, o.pad);
  return o;
}

/* maxpool2d(x, kernel, stride=kernel, pad=0, dilation=1) */
static Val fn_maxpool2d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  NnPool2d o = pool_window(L, f, args);
  if (args[4])
    pair_arg(L, f, args[4], "dilation", 1, o.dilation);
  return (Val){nn_maxpool2d(L->g, x, &o, call->loc), 0};
}

/* avgpool2d(x, kernel, stride=kernel, pad=0, count_include_pad=true) */
static Val fn_avgpool2d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  NnPool2d o = pool_window(L, f, args);
  o.count_include_pad =
      args[4] ? fe_bool_arg(args[4], "avgpool2d: 'count_include_pad'") : true;
  return (Val){nn_avgpool2d(L->g, x, &o, call->loc), 0};
}

/* l2pool2d(x, kernel, stride=kernel, pad=0) = sqrt of the sum of squares over each window (seed
 * 001 eq. 31b), as PyTorch's LPPool2d with norm_type 2 (nn_l2pool2d says how). */
static Val fn_l2pool2d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  NnPool2d o = pool_window(L, f, args);
  return (Val){nn_l2pool2d(L->g, x, &o, call->loc), 0};
}

/* eps=..: a positive number (default 1e-5) */
static double eps_arg(Lower *L, const Func *f, const Expr *e) {
  if (!e)
    return 1e-5;
  double v = fe_num_arg(L, e, pool_printf(L->tmp, "%s: 'eps'", f->name));
  if (v <= 0)
    kiln_fail(e->loc, "%s: 'eps' must be positive, got %s", f->name, fe_fmt_num(L, v));
  return v;
}

/* batchnorm(x [N, C, H, W] or [N, C], eps=1e-5, momentum=0.1, affine=true): PyTorch's
 * BatchNorm2d / BatchNorm1d, batch statistics in the training pass and running statistics in the
 * evaluation pass (nn_batchnorm). */
static Val fn_batchnorm(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  nn_check_batchnorm(L->g, x, call->loc);
  NnBatchnorm o = {.eps = eps_arg(L, f, args[1])};
  o.momentum = args[2] ? fe_num_arg(L, args[2], "batchnorm: 'momentum'") : 0.1;
  if (o.momentum < 0 || o.momentum > 1)
    kiln_fail(args[2]->loc, "batchnorm: 'momentum' must be in [0, 1], got %s",
              fe_fmt_num(L, o.momentum));
  o.affine = args[3] ? fe_bool_arg(args[3], "batchnorm: 'affine'") : true;
  NnLayer l = layer_of(L, call, layer);
  return (Val){nn_batchnorm(L->g, &l, x, &o), 0};
}

/* layernorm(x [N, ...], eps=1e-5, affine=true): over every axis but the first, with weight and
 * bias of shape x.shape[1:] (PyTorch's nn.LayerNorm(x.shape[1:])). Same in both modes. */
static Val fn_layernorm(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  nn_check_layernorm(L->g, x, call->loc);
  double eps = eps_arg(L, f, args[1]);
  bool affine = args[2] ? fe_bool_arg(args[2], "layernorm: 'affine'") : true;
  NnLayer l = layer_of(L, call, layer);
  return (Val){nn_layernorm(L->g, &l, x, eps, affine), 0};
}

/* groupnorm(x [N, C, ...], groups, eps=1e-5, affine=true) */
static Val fn_groupnorm(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  int64_t groups = fe_int_arg(L, args[1], 1, INT32_MAX, "groupnorm: 'groups'");
  double eps = eps_arg(L, f, args[2]);
  bool affine = args[3] ? fe_bool_arg(args[3], "groupnorm: 'affine'") : true;
  NnLayer l = layer_of(L, call, layer);
  return (Val){nn_groupnorm(L->g, &l, x, groups, eps, affine), 0};
}

/* instancenorm(x [N, C, H, W], eps=1e-5): over (H, W) per example and channel, no affine and no
 * running statistics (PyTorch's nn.InstanceNorm2d defaults). */
static Val fn_instancenorm(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  return (Val){nn_instancenorm(L->g, x, eps_arg(L, f, args[1]), call->loc), 0};
}

/* dropout(x, p=0.5): PyTorch's inverted dropout in the training pass (nn_dropout), x itself in
 * the evaluation pass. Each site's name must differ: it seeds the site's masks. */
/* A random site (dropout, noise) draws from its name: two sites with one name would draw the
 * same numbers. Checked in the training pass. */
static void claim_site(Lower *L, const Func *f, const Expr *call, const char *layer) {
  if (L->mode == NN_EVAL)
    return;
  for (int i = 0; i < L->nsites; i++)
    if (!strcmp(L->sites[i], layer))
      kiln_fail(call->as ? call->as_loc : call->loc,
                "%s site '%s' is named twice: each site needs its own name", f->name, layer);
  if (L->nsites == L->capsites) {
    L->capsites = L->capsites ? 2 * L->capsites : 8;
    const char **s = pool_alloc(L->tmp, (size_t)L->capsites * sizeof *s);
    if (L->nsites)
      memcpy(s, L->sites, (size_t)L->nsites * sizeof *s);
    L->sites = s;
  }
  L->sites[L->nsites++] = layer;
}

static Val fn_dropout(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  double p = args[1] ? fe_num_arg(L, args[1], "dropout: 'p'") : 0.5;
  if (!(p >= 0 && p < 1))
    kiln_fail(args[1]->loc, "dropout: 'p' must be in [0, 1), got %s", fe_fmt_num(L, p));
  if (L->mode == NN_EVAL)
    return (Val){x, 0};
  claim_site(L, f, call, layer);
  NnLayer l = layer_of(L, call, layer);
  return (Val){nn_dropout(L->g, &l, x, p), 0};
}

static Val fn_noise(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  if (!dtype_is_float(node(L, x)->dtype))
    kiln_fail(args[0]->loc, "noise needs a floating-point tensor, got %s",
              dtype_name(node(L, x)->dtype));
  double std = fe_num_arg(L, args[1], "noise: 'std'");
  if (std < 0)
    kiln_fail(args[1]->loc, "noise: 'std' must not be negative, got %s", fe_fmt_num(L, std));
  claim_site(L, f, call, layer);
  NnLayer l = layer_of(L, call, layer);
  return (Val){nn_noise(L->g, &l, x, std), 0};
}

static const Func funcs[] = {
    {"add", fn_binary, OP_ADD, NAMED_NO, 2, 2, {"a", "b"}},
    {"sub", fn_binary, OP_SUB, NAMED_NO, 2, 2, {"a", "b"}},
    {"mul", fn_binary, OP_MUL, NAMED_NO, 2, 2, {"a", "b"}},
    {"div", fn_binary, OP_DIV, NAMED_NO, 2, 2, {"a", "b"}},
    {"pow", fn_binary, OP_POW, NAMED_NO, 2, 2, {"a", "b"}},
    {"matmul", fn_matmul, OP_MATMUL, NAMED_NO, 2, 2, {"a", "b"}},
    {"exp", fn_unary, OP_EXP, NAMED_NO, 1, 1, {"x"}},
    {"log", fn_unary, OP_LOG, NAMED_NO, 1, 1, {"x"}},
    {"neg", fn_unary, OP_NEG, NAMED_NO, 1, 1, {"x"}},
    {"sqrt", fn_unary, OP_SQRT, NAMED_NO, 1, 1, {"x"}},
    {"relu", fn_unary, OP_RELU, NAMED_NO, 1, 1, {"x"}},
    {"sigmoid", fn_unary, OP_SIGMOID, NAMED_NO, 1, 1, {"x"}},
    {"tanh", fn_unary, OP_TANH, NAMED_NO, 1, 1, {"x"}},
    {"leaky_relu", fn_leaky_relu, OP_LEAKY_RELU, NAMED_NO, 1, 2, {"x", "slope"}},
    {"sin", fn_unary, OP_SIN, NAMED_NO, 1, 1, {"x"}},
    {"cos", fn_unary, OP_COS, NAMED_NO, 1, 1, {"x"}},
    {"tan", fn_composite, OP_SIN, NAMED_NO, 1, 1, {"x"}},
    {"atan", fn_unary, OP_ATAN, NAMED_NO, 1, 1, {"x"}},
    {"erf", fn_unary, OP_ERF, NAMED_NO, 1, 1, {"x"}},
    {"abs", fn_composite, OP_SIGN, NAMED_NO, 1, 1, {"x"}},
    {"sign", fn_unary, OP_SIGN, NAMED_NO, 1, 1, {"x"}},
    {"step", fn_composite, OP_SIGN, NAMED_NO, 1, 1, {"x"}},
    {"softplus", fn_unary, OP_SOFTPLUS, NAMED_NO, 1, 1, {"x"}},
    {"gelu", fn_composite, OP_ERF, NAMED_NO, 1, 1, {"x"}},
    {"elu", fn_elu, OP_EXP, NAMED_NO, 1, 2, {"x", "alpha"}},
    {"maxout", fn_maxout, OP_MAXIMUM, NAMED_NO, 2, 2, {"x", "pieces"}},
    {"clamp", fn_clamp, OP_MAXIMUM, NAMED_NO, 1, 3, {"x", "min", "max"}},
    {"min", fn_extremum, OP_MAXIMUM, NAMED_NO, 2, 2, {"a", "b"}},
    {"max", fn_extremum, OP_MAXIMUM, NAMED_NO, 2, 2, {"a", "b"}},
    {"softmax", fn_softmax, OP_SOFTMAX, NAMED_NO, 1, 2, {"x", "axis"}},
    {"log_softmax", fn_softmax, OP_LOG_SOFTMAX, NAMED_NO, 1, 2, {"x", "axis"}},
    {"sum", fn_reduce, OP_SUM, NAMED_NO, 1, 3, {"x", "axes", "keepdims"}},
    {"mean", fn_reduce, OP_MEAN, NAMED_NO, 1, 3, {"x", "axes", "keepdims"}},
    {"reshape", fn_reshape, OP_RESHAPE, NAMED_NO, 2, 2, {"x", "shape"}},
    {"flatten", fn_flatten, OP_RESHAPE, NAMED_NO, 1, 1, {"x"}},
    {"transpose", fn_transpose, OP_TRANSPOSE, NAMED_NO, 1, 2, {"x", "axes"}},
    {"concat", fn_concat, OP_CONCAT, NAMED_NO, 1, 2, {"*x", "axis"}},
    {"cross_entropy", fn_cross_entropy, OP_CROSS_ENTROPY, NAMED_NO, 2, 2, {"logits", "labels"}},
    {"mse", fn_mse, OP_SUB, NAMED_NO, 2, 2, {"a", "b"}},
    {"psnr", fn_psnr, OP_LOG, NAMED_NO, 2, 3, {"a", "b", "peak"}},
    {"nll", fn_nll, OP_GATHER, NAMED_NO, 2, 2, {"logp", "labels"}},
    {"hinge", fn_nll, OP_GATHER, NAMED_NO, 2, 3, {"scores", "labels", "margin"}},
    {"one_hot", fn_one_hot, OP_ONE_HOT, NAMED_NO, 2, 3, {"labels", "classes", "dtype"}},
    {"gather", fn_gather, OP_GATHER, NAMED_NO, 3, 3, {"x", "axis", "index"}},
    {"bce_with_logits", fn_bce_with_logits, OP_BCE_LOGITS, NAMED_NO, 2, 2, {"x", "t"}},
    {"linear", fn_linear, OP_MATMUL, NAMED_LAYER, 2, 3, {"x", "out", "bias"}},
    {"conv2d", fn_conv2d, OP_CONV2D, NAMED_LAYER, 3, 8,
     {"x", "out", "kernel", "stride", "pad", "dilation", "groups", "bias"}},
    {"conv", fn_conv, OP_CONV2D, NAMED_NO, 2, 6, {"x", "w", "stride", "pad", "dilation", "groups"}},
    {"convolve", fn_conv, OP_CONV2D, NAMED_NO, 2, 6,
     {"x", "w", "stride", "pad", "dilation", "groups"}},
    {"conv1d", fn_conv1d, OP_CONV2D, NAMED_LAYER, 3, 8,
     {"x", "out", "kernel", "stride", "pad", "dilation", "groups", "bias"}},
    {"maxpool1d", fn_pool1d, OP_MAXPOOL2D, NAMED_NO, 2, 5,
     {"x", "kernel", "stride", "pad", "dilation"}},
    {"avgpool1d", fn_pool1d, OP_AVGPOOL2D, NAMED_NO, 2, 5,
     {"x", "kernel", "stride", "pad", "count_include_pad"}},
    {"maxpool2d", fn_maxpool2d, OP_MAXPOOL2D, NAMED_NO, 2, 5,
     {"x", "kernel", "stride", "pad", "dilation"}},
    {"avgpool2d", fn_avgpool2d, OP_AVGPOOL2D, NAMED_NO, 2, 5,
     {"x", "kernel", "stride", "pad", "count_include_pad"}},
    {"l2pool2d", fn_l2pool2d, OP_AVGPOOL2D, NAMED_NO, 2, 4, {"x", "kernel", "stride", "pad"}},
    {"batchnorm", fn_batchnorm, OP_MEAN, NAMED_LAYER, 1, 4, {"x", "eps", "momentum", "affine"}},
    {"layernorm", fn_layernorm, OP_MEAN, NAMED_LAYER, 1, 3, {"x", "eps", "affine"}},
    {"instancenorm", fn_instancenorm, OP_MEAN, NAMED_NO, 1, 2, {"x", "eps"}},
    {"groupnorm", fn_groupnorm, OP_MEAN, NAMED_LAYER, 2, 4, {"x", "groups", "eps", "affine"}},
    {"dropout", fn_dropout, OP_DROPOUT, NAMED_SITE, 1, 2, {"x", "p"}},
    {"noise", fn_noise, OP_RANDN, NAMED_SITE, 2, 2, {"x", "std"}},
};
enum { NFUNCS = sizeof funcs / sizeof *funcs };
_Static_assert(NFUNCS <= 64, "Lower.layer_count needs one slot per function");

static const Func *find_func(const char *name) {
  for (int i = 0; i < NFUNCS; i++)
    if (!strcmp(funcs[i].name, name))
      return &funcs[i];
  return NULL;
}

/* Whether a layer name is used: named explicitly somewhere in the file, or the prefix of an
 * existing leaf (`bn.running_mean` takes `bn` even without a weight). */
static bool name_taken(Lower *L, const char *name) {
  for (int i = 0; i < L->nexplicit; i++)
    if (!strcmp(L->explicit_layers[i], name))
      return true;
  size_t n = strlen(name);
  for (int i = 0; i < L->g->nnodes; i++) {
    const char *leaf = ir_at(L->g, i)->name;
    if (op_is_leaf(ir_at(L->g, i)->op) && leaf && !strncmp(leaf, name, n) && leaf[n] == '.')
      return true;
  }
  return false;
}

/* A layer's name: `as NAME`; else the variable it is assigned to when it is the whole
 * right-hand side; else <function><n>, skipping names the file uses for other layers. Inside
 * loops a given name gets the iteration's suffix (`f.3` in the fourth iteration), as PyTorch
 * names the modules of a ModuleList. Chosen once per iteration (training pass) and kept in the
 * AST so both passes agree. */
static const char *layer_name(Lower *L, const Func *f, Expr *call, const char *assigned) {
  for (const LayerName *n = call->layers; n; n = n->next)
    if (!strcmp(n->key, L->suffix))
      return n->name;
  const char *name;
  if (call->as) {
    name = pool_printf(L->tmp, "%s%s", call->as, L->suffix);
  } else if (assigned && f->naming == NAMED_LAYER) {
    name = pool_printf(L->tmp, "%s%s", assigned, L->suffix);
  } else {
    int k = (int)(f - funcs);
    do
      name = pool_printf(L->tmp, "%s%d", f->name, ++L->layer_count[k]);
    while (name_taken(L, name));
  }
  LayerName *n = pool_alloc(L->tmp, sizeof *n);
  *n = (LayerName){L->suffix, name, call->layers};
  call->layers = n;
  return name;
}

static Val lower_call(Lower *L, Expr *e, const char *assigned) {
  const Func *f = find_func(e->name);
  if (!f)
    kiln_fail(e->loc, "unknown function '%s'", e->name);
  if (e->as && f->naming == NAMED_NO)
    kiln_fail(e->as_loc, "'as' names a layer, but %s is not a layer", f->name);
  Expr *args[8] = {0};
  if (f->params[0][0] != '*')
    fe_bind_args(f->name, f->params, f->nparams, f->nrequired, e, args);
  const char *layer = f->naming != NAMED_NO ? layer_name(L, f, e, assigned) : NULL;
  return f->lower(L, f, e, args, layer);
}

/* assigned: the variable this expression is the whole right-hand side of (names a layer). */
/* An index bound: a whole number, negative counting from the end (Python's rule), clipped to
 * [0, n] when it is a range's bound. */
static int64_t index_bound(Lower *L, const Expr *e, int64_t n, bool clip) {
  double v = fe_num_arg(L, e, "an index");
  if (v != floor(v) || fabs(v) > 1e15)
    kiln_fail(e->loc, "an index must be a whole number, got %s", fe_fmt_num(L, v));
  int64_t i = (int64_t)v < 0 ? (int64_t)v + n : (int64_t)v;
  if (clip)
    return i < 0 ? 0 : i > n ? n : i;
  if (i < 0 || i >= n)
    kiln_fail(e->loc, "index %s is out of range for an axis of %lld", fe_fmt_num(L, v),
              (long long)n);
  return i;
}

/* x[i, a:b, :]: per leading axis a range (a slice along it) or one index (a slice of one,
 * the axis then dropped); axes not mentioned are kept whole. Steps are not supported. */
static int lower_index(Lower *L, Expr *e) {
  int x = tensor(L, e->lhs);
  Shape shape = node(L, x)->shape;
  if (e->nitems > shape.rank)
    kiln_fail(e->loc, "%d indices for a tensor of rank %d (shape %s)", e->nitems, shape.rank,
              shape_text(L, &shape));
  bool drop[IR_MAX_RANK] = {false};
  for (int k = 0; k < e->nitems; k++) {
    Expr *it = e->items[k];
    bool range = it->kind == EX_RANGE;
    if (range && !it->lhs && !it->rhs)
      continue; /* ':' keeps the axis */
    if (shape.d[k].sym >= 0)
      kiln_fail(it->loc, "axis %d is the batch '%s': only ':' can index it", k,
                L->symname ? L->symname : "B");
    int64_t n = shape.d[k].n, start, stop;
    if (range) {
      start = it->lhs ? index_bound(L, it->lhs, n, true) : 0;
      stop = it->rhs ? index_bound(L, it->rhs, n, true) : n;
    } else {
      start = index_bound(L, it, n, false);
      stop = start + 1;
      drop[k] = true;
    }
    if (stop <= start)
      kiln_fail(it->loc, "the range %lld:%lld along axis %d (of %lld) is empty", (long long)start,
                (long long)stop, k, (long long)n);
    if (start == 0 && stop == n)
      continue;
    Attr a;
    memset(&a, 0, sizeof a);
    a.axis = k;
    a.start = start;
    a.len = stop - start;
    x = ir_node(L->g, OP_SLICE, 1, &x, &a, it->loc);
  }
  Shape out = node(L, x)->shape, kept = {0};
  bool any = false;
  for (int k = 0; k < out.rank; k++) {
    if (drop[k]) {
      any = true;
      continue;
    }
    kept.d[kept.rank++] = out.d[k];
  }
  return any ? ir_reshape(L->g, x, kept, e->loc) : x;
}

static Val lower_expr(Lower *L, Expr *e, const char *assigned) {
  switch (e->kind) {
  case EX_NUM:
    return (Val){-1, e->num};
  case EX_NAME: {
    Var *v = find_var(L, e->name);
    if (v)
      return v->v;
    if (L->symname && !strcmp(L->symname, e->name))
      kiln_fail(e->loc, "'%s' is a dimension symbol, not a value", e->name);
    kiln_fail(e->loc, "'%s' is not defined", e->name);
  }
  case EX_NEG: {
    Val v = lower_expr(L, e->lhs, NULL);
    if (v.node < 0)
      return (Val){-1, -v.num};
    return (Val){ir_unary(L->g, OP_NEG, v.node, e->loc), 0};
  }
  case EX_BINARY: {
    Val a = lower_expr(L, e->lhs, NULL), b = lower_expr(L, e->rhs, NULL);
    if (e->op == '%') {
      if (a.node >= 0 || b.node >= 0)
        kiln_fail(e->loc, "'%%' works on numbers only (such as a loop index), not on tensors");
      return (Val){-1, modulo(L, a.num, b.num, e->loc)};
    }
    return binop(L, binary_ops[(unsigned char)e->op], a, e->lhs->loc, b, e->rhs->loc, e->loc);
  }
  case EX_CALL:
    return lower_call(L, e, assigned);
  case EX_LIST:
    kiln_fail(e->loc, "a list is not a value here (lists are for literals, axes and shapes)");
  case EX_INDEX:
    return (Val){lower_index(L, e), 0};
  case EX_RANGE:
    kiln_fail(e->loc, "a range such as 2:5 belongs inside an index, x[2:5]");
  }
  unreachable();
}

/* ---- statements ---- */

/* The tensor a statement names (output, minimize). */
static Node *named_tensor(Lower *L, const Stmt *s) {
  Var *v = find_var(L, s->name);
  if (!v)
    kiln_fail(s->name_loc, "'%s' is not defined", s->name);
  if (v->v.node < 0)
    kiln_fail(s->name_loc, "'%s' is a number, not a tensor", s->name);
  return node(L, v->v.node);
}

/* How many times loops may repeat their bodies in all: far beyond any real network, and small
 * enough that a typo such as range(1e9) fails at once instead of exhausting memory. */
#define LOOP_MAX_ITERATIONS 100000

/* The values a loop runs over: range(stop) or range(start, stop[, step]) of whole numbers, as
 * in Python, or a list of numbers. Returns how many, in *out (scratch memory). */
static int64_t loop_values(Lower *L, const Expr *e, double **out) {
  if (e->kind == EX_LIST) {
    *out = pool_alloc(L->tmp, (size_t)(e->nitems ? e->nitems : 1) * sizeof **out);
    for (int i = 0; i < e->nitems; i++)
      (*out)[i] = fe_num_arg(L, e->items[i], "a loop value");
    return e->nitems;
  }
  if (e->kind != EX_CALL || strcmp(e->name, "range"))
    kiln_fail(e->loc, "a loop runs over range(...) or a list of numbers such as [1, 2, 4]");
  if (e->nargs < 1 || e->nargs > 3)
    kiln_fail(e->loc, "range takes 1 to 3 arguments (stop, or start, stop, step), got %d",
              e->nargs);
  int64_t v[3] = {0, 0, 1}, lim = (int64_t)1 << 40;
  for (int i = 0; i < e->nargs; i++) {
    if (e->args[i].name)
      kiln_fail(e->args[i].loc, "range takes its arguments by position");
    v[e->nargs == 1 ? 1 : i] = fe_int_arg(L, e->args[i].value, -lim, lim, "range: an argument");
  }
  if (v[2] == 0)
    kiln_fail(e->args[2].loc, "range: the step must not be zero");
  int64_t n = v[2] > 0 ? (v[1] - v[0] + v[2] - 1) / v[2] : (v[0] - v[1] - v[2] - 1) / -v[2];
  if (n < 0)
    n = 0;
  if (n > LOOP_MAX_ITERATIONS)
    kiln_fail(e->loc, "this loop would run %lld times (at most %d)", (long long)n,
              LOOP_MAX_ITERATIONS);
  *out = pool_alloc(L->tmp, (size_t)(n ? n : 1) * sizeof **out);
  for (int64_t i = 0; i < n; i++)
    (*out)[i] = (double)(v[0] + i * v[2]);
  return n;
}

static void lower_stmt(Lower *L, Stmt *s);

/* for NAME in ITERABLE { ... }: the body lowered once per value, with NAME bound to it as a
 * number. Variables assigned in the body stay assigned after it, as in Python, which is how a
 * loop builds a network layer by layer. */
static void lower_loop(Lower *L, Stmt *s) {
  double *vals;
  int64_t n = loop_values(L, s->value, &vals);
  L->loop_iterations += n;
  if (L->loop_iterations > LOOP_MAX_ITERATIONS)
    kiln_fail(s->loc, "the loops repeat their bodies more than %d times in all",
              LOOP_MAX_ITERATIONS);
  for (int i = 0; i < s->nbody; i++)
    if (s->body[i].kind != ST_ASSIGN && s->body[i].kind != ST_FOR)
      kiln_fail(s->body[i].loc, "only assignments and loops may appear inside a loop");
  const char *outer = L->suffix;
  for (int64_t k = 0; k < n; k++) {
    set_var(L, s->name, s->name_loc, VAR_COMPUTED, (Val){-1, vals[k]});
    L->suffix = pool_printf(L->tmp, "%s.%lld", outer, (long long)k);
    for (int i = 0; i < s->nbody; i++)
      lower_stmt(L, &s->body[i]);
  }
  L->suffix = outer;
}

static void lower_stmt(Lower *L, Stmt *s) {
  Graph *g = L->g;
  switch (s->kind) {
  case ST_MODEL:
  case ST_TRAIN:
    return; /* read before lowering */
  case ST_INPUT:
    lower_input(L, s);
    return;
  case ST_CONST:
    lower_const(L, s);
    return;
  case ST_PARAM:
    lower_param(L, s);
    return;
  case ST_FOR:
    lower_loop(L, s);
    return;
  case ST_ASSIGN: {
    bool whole_layer = s->value->kind == EX_CALL;
    Val v = lower_expr(L, s->value, whole_layer ? s->name : NULL);
    set_var(L, s->name, s->name_loc, VAR_COMPUTED, v);
    if (v.node >= 0 && !node(L, v.node)->name)
      node(L, v.node)->name = pool_strdup(g->pool, s->name);
    return;
  }
  case ST_OUTPUT: {
    Node *n = named_tensor(L, s);
    bool first = !L->have_output;
    L->have_output = true;
    if (L->mode == NN_TRAIN)
      return;
    if (first) { /* the first is the prediction (accuracy, kiln jvp) */
      g->output_eval = n->id;
      g->output_name = pool_strdup(g->pool, s->name);
      return;
    }
    if (!strcmp(g->output_name, s->name))
      kiln_fail(s->name_loc, "'%s' is already an output", s->name);
    for (int i = 0; i < g->nmore_outputs; i++)
      if (!strcmp(g->more_output_names[i], s->name))
        kiln_fail(s->name_loc, "'%s' is already an output", s->name);
    if (g->nmore_outputs == IR_MAX_OUTPUTS)
      kiln_fail(s->loc, "a model has at most %d outputs", IR_MAX_OUTPUTS + 1);
    g->more_output_names[g->nmore_outputs] = pool_strdup(g->pool, s->name);
    g->more_outputs[g->nmore_outputs++] = n->id;
    return;
  }
  case ST_METRIC: {
    Node *n = named_tensor(L, s);
    if (n->shape.rank != 0 || !dtype_is_float(n->dtype))
      kiln_fail(s->name_loc, "a metric is a floating-point scalar (the mean over a batch), but "
                "'%s' is %s%s", s->name, dtype_name(n->dtype), shape_text(L, &n->shape));
    if (L->mode == NN_TRAIN)
      return;
    for (int i = 0; i < g->nmetrics; i++)
      if (!strcmp(g->metric_names[i], s->name))
        kiln_fail(s->name_loc, "'%s' is already a metric", s->name);
    if (g->nmetrics == IR_MAX_METRICS)
      kiln_fail(s->loc, "a model reports at most %d metrics", IR_MAX_METRICS);
    g->metric_names[g->nmetrics] = pool_strdup(g->pool, s->name);
    g->metrics[g->nmetrics++] = n->id;
    return;
  }
  case ST_MINIMIZE: {
    if (L->have_minimize)
      kiln_fail(s->loc, "a model has one 'minimize' statement; this is a second one");
    L->have_minimize = true;
    Node *n = named_tensor(L, s);
    if (n->shape.rank != 0)
      kiln_fail(s->name_loc, "'%s' must be a scalar to minimize, but it has shape %s", s->name,
                shape_text(L, &n->shape));
    if (!dtype_is_float(n->dtype))
      kiln_fail(s->name_loc, "'%s' must be floating-point to minimize, but it is %s", s->name,
                dtype_name(n->dtype));
    if (L->mode == NN_TRAIN)
      g->loss_train = n->id;
    else
      g->loss_eval = n->id;
    return;
  }
  }
  unreachable();
}

/* Layer names the file gives explicitly (by `as`, or by assignment of a layer call). */
static void collect_explicit(Lower *L, const Expr *e, const char *assigned, int *cap) {
  if (!e)
    return;
  if (e->kind == EX_CALL) {
    const Func *f = find_func(e->name);
    const char *name = e->as ? e->as : f && f->naming == NAMED_LAYER ? assigned : NULL;
    if (f && f->naming != NAMED_NO && name) {
      if (L->nexplicit == *cap) {
        *cap = *cap ? 2 * *cap : 8;
        const char **p = pool_alloc(L->tmp, (size_t)*cap * sizeof *p);
        if (L->nexplicit)
          memcpy(p, L->explicit_layers, (size_t)L->nexplicit * sizeof *p);
        L->explicit_layers = p;
      }
      L->explicit_layers[L->nexplicit++] = name;
    }
    for (int i = 0; i < e->nargs; i++)
      collect_explicit(L, e->args[i].value, NULL, cap);
  }
  collect_explicit(L, e->lhs, NULL, cap);
  collect_explicit(L, e->rhs, NULL, cap);
  for (int i = 0; i < e->nitems; i++)
    collect_explicit(L, e->items[i], NULL, cap);
}

/* The layer names given by the assignments in stmts and the loops among them. */
static void collect_stmts(Lower *L, Stmt *stmts, int n, int *cap) {
  for (int i = 0; i < n; i++) {
    if (stmts[i].kind == ST_ASSIGN)
      collect_explicit(L, stmts[i].value, stmts[i].name, cap);
    else if (stmts[i].kind == ST_FOR)
      collect_stmts(L, stmts[i].body, stmts[i].nbody, cap);
  }
}

void fe_lower(Graph *g, Program *prog, Pool *tmp) {
  Lower L = {.g = g, .prog = prog, .tmp = tmp, .sym = -1, .init = {-1, 0}, .suffix = ""};
  const Stmt *model = NULL, *train = NULL;
  int cap = 0;
  for (int i = 0; i < prog->nstmts; i++) {
    Stmt *s = &prog->stmts[i];
    if (s->kind == ST_MODEL) {
      if (model)
        kiln_fail(s->loc, "a model has one 'model' statement; this is a second one");
      model = s;
      g->name = pool_strdup(g->pool, s->name);
    } else if (s->kind == ST_TRAIN) {
      if (train)
        kiln_fail(s->loc, "a model has one train block; this is a second one");
      train = s;
    }
  }
  collect_stmts(&L, prog->stmts, prog->nstmts, &cap);
  if (train)
    L.init = fe_read_train(&L, train, &g->train);
  for (L.mode = 0; L.mode < 2; L.mode++) {
    L.nvars = 0;
    L.have_output = L.have_minimize = false;
    L.loop_iterations = 0;
    memset(L.layer_count, 0, sizeof L.layer_count);
    for (int i = 0; i < prog->nstmts; i++)
      lower_stmt(&L, &prog->stmts[i]);
    /* Without 'minimize' the model only evaluates (an imported inference graph): it needs an
     * output, and it has no training step. */
    if (!L.have_minimize && !L.have_output)
      kiln_fail(prog->end, "no 'minimize' statement (and no 'output': a model without a loss "
                "only evaluates, so it needs an output)");
  }
}

/* ---- entry points ---- */

/* The default model name: the file's stem made into an identifier ("my-net.kiln" -> my_net). */
static const char *file_stem(Pool *p, const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  const char *dot = strrchr(base, '.');
  size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
  if (n == 0)
    return "model";
  char *s = pool_strndup(p, base, n);
  for (char *c = s; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')))
      *c = '_';
  if (*s >= '0' && *s <= '9')
    return pool_printf(p, "_%s", s);
  return s;
}

/* Parses and lowers text (len bytes, NUL-terminated), kept in g's pool. On an error the graph
 * and scratch memory are freed and the error is passed on to the caller's trap unchanged. */
/* The line and column (1-based, in bytes) of byte off of f's text. */
static Loc loc_at(const SrcFile *f, size_t off) {
  Loc loc = {f, 1, 1};
  for (size_t i = 0; i < off; i++) {
    if (f->text[i] == '\n') {
      loc.line++;
      loc.col = 1;
    } else {
      loc.col++;
    }
  }
  return loc;
}

/* A UTF-8 byte-order mark, which some editors write, is not part of the model: the bytes after
 * it. (Skipped by the callers of compile, whose arguments must not change around its setjmp.) */
static size_t bom_length(const char *text, size_t len) {
  return len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0;
}

static Graph *compile(Graph *g, const char *path, const char *text, size_t len) {
  Trap t;
  if (!KILN_TRY(&t)) {
    ir_free(g);
    kiln_rethrow(&t);
  }
  Pool *tmp = pool_new();
  kiln_trap_end(&t);
  if (KILN_TRY(&t)) {
    SrcFile *f = pool_alloc(g->pool, sizeof *f);
    f->path = pool_strdup(g->pool, path);
    f->text = pool_strndup(g->pool, text, len);  /* tokens and locations point into it */
    const char *nul = memchr(text, 0, len);
    if (nul) /* the text ends there for every later phase: refuse it where it is */
      kiln_fail(loc_at(f, (size_t)(nul - text)), "unexpected byte 0x00 (NUL) in the model file");
    Program *prog = parse_program(tmp, f, len);
    fe_lower(g, prog, tmp);
    kiln_trap_end(&t);
    pool_free(tmp);
    return g;
  }
  kiln_trap_end(&t);
  pool_free(tmp);
  ir_free(g);
  kiln_rethrow(&t);
}

/* A new graph named after the file, freed again if that fails. */
static Graph *new_graph(const char *path, const FeOptions *o) {
  Graph *g = ir_new(NULL);
  g->data_parallel = o && o->data_parallel;
  Trap t;
  if (!KILN_TRY(&t)) {
    ir_free(g);
    kiln_rethrow(&t);
  }
  g->name = file_stem(g->pool, path);
  kiln_trap_end(&t);
  return g;
}

Graph *fe_compile_string_with(const char *path_for_messages, const char *text,
                              const FeOptions *o) {
  size_t len = strlen(text), bom = bom_length(text, len);
  return compile(new_graph(path_for_messages, o), path_for_messages, text + bom, len - bom);
}

Graph *fe_compile_string(const char *path_for_messages, const char *text) {
  return fe_compile_string_with(path_for_messages, text, NULL);
}

Graph *fe_compile_file(const char *path) { return fe_compile_file_with(path, NULL); }

Graph *fe_compile_file_with(const char *path, const FeOptions *o) {
  Graph *g = new_graph(path, o);
  Trap t;
  if (!KILN_TRY(&t)) {
    ir_free(g);
    kiln_rethrow(&t);
  }
  size_t len;
  char *text = read_file(g->pool, path, &len);
  if (!text)
    kiln_fail((Loc){0}, "cannot read '%s': %s", path,
              errno == EISDIR ? "it is a directory"
              : errno == EINVAL ? "it is not a regular file" : strerror(errno));
  kiln_trap_end(&t);
  size_t bom = bom_length(text, len);
  return compile(g, path, text + bom, len - bom);
}
