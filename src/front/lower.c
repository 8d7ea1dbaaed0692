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
 * for f32 and f64 alike. Layers are sugar: `linear`, `conv2d`, `batchnorm`, `layernorm` make
 * their parameters and primitive ops here (as do composites such as l2pool2d), and no later
 * phase knows they existed, so their gradients come exactly from the primitives' rules.
 * Per-function behaviour is a table (funcs[]) of argument names and one lowering function each.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "front/front.h"

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

/* An initialisation scheme as written (`he`, `normal(std=0.01)`); kind -1 is `default`. */
typedef struct InitSpec {
  int kind;
  double a;
} InitSpec;

typedef struct Lower {
  Graph *g;
  Program *prog;
  Pool *tmp;
  int mode;                   /* 0: training, 1: evaluation */
  Var *vars;
  int nvars, capvars;
  int sym;                    /* the model's one dimension symbol (the batch), or -1 */
  const char *symname;
  InitSpec init;              /* the train block's `init` */
  const char **explicit_layers; /* names given by `as` or by assignment: auto names avoid them */
  int nexplicit;
  int layer_count[64];        /* per function: auto-named layers so far (linear1, linear2, ...) */
  const char **sites;         /* dropout sites named so far (training pass): names must differ */
  int nsites, capsites;
  bool have_output, have_minimize;
} Lower;

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

static const char *fmt_num(Lower *L, double v) { return pool_printf(L->tmp, "%.15g", v); }

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
    kiln_fail(at, "the constant %s %c %s is not a finite number", fmt_num(L, x), symbol[op],
              fmt_num(L, y));
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
    *out = fold(L, binary_ops[(unsigned char)e->op], a, b, e->loc);
    return true;
  default:
    return false;
  }
}

static double num_arg(Lower *L, const Expr *e, const char *what) {
  double v;
  if (!const_num(L, e, &v))
    kiln_fail(e->loc, "%s must be a number", what);
  if (!isfinite(v))
    kiln_fail(e->loc, "%s must be finite, got %s", what, fmt_num(L, v));
  return v;
}

static int64_t int_arg(Lower *L, const Expr *e, int64_t lo, int64_t hi, const char *what) {
  double v = num_arg(L, e, what);
  if (v != floor(v))
    kiln_fail(e->loc, "%s must be an integer, got %s", what, fmt_num(L, v));
  if (v < (double)lo)
    kiln_fail(e->loc, "%s must be at least %lld, got %s", what, (long long)lo, fmt_num(L, v));
  if (v > (double)hi)
    kiln_fail(e->loc, "%s is out of range: %s (at most %lld)", what, fmt_num(L, v), (long long)hi);
  return (int64_t)v;
}

static bool bool_arg(const Expr *e, const char *what) {
  if (e->kind == EX_NAME && !strcmp(e->name, "true"))
    return true;
  if (e->kind == EX_NAME && !strcmp(e->name, "false"))
    return false;
  kiln_fail(e->loc, "%s must be true or false", what);
}

/* ---- argument binding ---- */

/* Matches a call's arguments to params: args[i] is the expression for params[i] or NULL. */
static void bind_args(const char *fname, const char *const *params, int nparams, int nrequired,
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
} InitName;

static const InitName init_names[] = {
    {"default", -1, NULL},
    {"he", KILN_INIT_HE_NORMAL, NULL},
    {"he_uniform", KILN_INIT_HE_UNIFORM, NULL},
    {"xavier", KILN_INIT_XAVIER_UNIFORM, NULL},
    {"xavier_normal", KILN_INIT_XAVIER_NORMAL, NULL},
    {"zeros", KILN_INIT_ZEROS, NULL},
    {"ones", KILN_INIT_ONES, NULL},
    {"normal", KILN_INIT_NORMAL, "std"},
    {"uniform", KILN_INIT_UNIFORM, "a"},
};

/* init = "default" | "he" | "he_uniform" | "xavier" | "xavier_normal" | "zeros" | "ones"
 *      | "normal" "(" ["std" "="] NUMBER ")" | "uniform" "(" ["a" "="] NUMBER ")" */
static InitSpec init_spec(Lower *L, const Expr *e) {
  const char *name = e->kind == EX_NAME || e->kind == EX_CALL ? e->name : NULL;
  for (size_t i = 0; name && i < sizeof init_names / sizeof *init_names; i++) {
    const InitName *in = &init_names[i];
    if (strcmp(in->name, name))
      continue;
    if (!in->param) {
      if (e->kind == EX_CALL)
        kiln_fail(e->loc, "%s takes no arguments: write 'init = %s'", name, name);
      return (InitSpec){in->kind, 0};
    }
    if (e->kind != EX_CALL)
      kiln_fail(e->loc, "%s needs its argument: write 'init = %s(%s=...)'", name, name,
                in->param);
    Expr *arg;
    bind_args(name, &in->param, 1, 1, e, &arg);
    double a = num_arg(L, arg, pool_printf(L->tmp, "%s: '%s'", name, in->param));
    if (a < 0)
      kiln_fail(arg->loc, "%s: '%s' must not be negative", name, in->param);
    return (InitSpec){in->kind, a};
  }
  kiln_fail(e->loc, "unknown initialisation; expected default, he, he_uniform, xavier, "
                    "xavier_normal, zeros, ones, normal(std=...) or uniform(a=...)");
}

/* PyTorch's _calculate_fan_in_and_fan_out: fan_in = size(1) * receptive field, fan_out =
 * size(0) * receptive field; a vector counts its length for both. */
static void fans(const Shape *s, int64_t *fan_in, int64_t *fan_out) {
  if (s->rank == 0) {
    *fan_in = *fan_out = 1;
  } else if (s->rank == 1) {
    *fan_in = *fan_out = s->d[0].n;
  } else {
    int64_t rf = 1;
    for (int i = 2; i < s->rank; i++)
      rf *= s->d[i].n;
    *fan_in = s->d[1].n * rf;
    *fan_out = s->d[0].n * rf;
  }
}

/* ---- leaves ---- */

/* A parameter: made by the training pass, found by the evaluation pass. */
static int param_leaf(Lower *L, const char *name, DType dt, Shape s, Loc loc, InitSpec init,
                      int64_t fan_in, int64_t fan_out) {
  Graph *g = L->g;
  if (L->mode == 1) {
    int id = ir_find_leaf(g, name);
    KILN_ASSERT(id >= 0 && node(L, id)->op == OP_PARAM);
    return id;
  }
  if (ir_find_leaf(g, name) >= 0)
    kiln_fail(loc, "parameter '%s' is defined twice", name);
  int id = ir_leaf(g, OP_PARAM, ROLE_PARAM, name, dt, s, loc);
  Node *n = node(L, id);
  n->leaf.init = init.kind < 0 ? KILN_INIT_TORCH_DEFAULT : init.kind;
  n->leaf.init_a = init.a;
  n->leaf.fan_in = fan_in;
  n->leaf.fan_out = fan_out;
  return id;
}

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
    if (ts->dtype == DT_I32 && (v != floor(v) || fabs(v) > INT32_MAX))
      kiln_fail(e->loc, "i32 value %s is not a 32-bit integer", fmt_num(L, v));
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

/* The literal's values as a Graph.data index; a single number fills every element. */
static int literal_data(Lower *L, const Stmt *s) {
  int64_t n = 1;
  for (int i = 0; i < s->type.rank; i++) {
    n *= s->type.d[i].n;
    if (n > ((int64_t)1 << 28))
      kiln_fail(s->name_loc, "'%s' is too large for a literal (%s)", s->name,
                type_text(L, &s->type));
  }
  double *v = pool_alloc(L->tmp, (size_t)n * sizeof(double));
  double one;
  if (s->value->kind != EX_LIST && const_num(L, s->value, &one)) {
    if (s->type.dtype == DT_I32 && one != floor(one))
      kiln_fail(s->value->loc, "i32 value %s is not an integer", fmt_num(L, one));
    for (int64_t i = 0; i < n; i++)
      v[i] = one;
  } else {
    int64_t pos = 0;
    fill_literal(L, s, s->value, 0, v, &pos);
  }
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
  if (L->mode == 0) {
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
  if (L->mode == 0) {
    if (find_var(L, s->name))
      set_var(L, s->name, s->name_loc, VAR_CONST, (Val){-1, 0});
    Shape shape = type_shape(L, &s->type);
    int data = literal_data(L, s);
    id = ir_leaf(L->g, OP_CONST, ROLE_NONE, s->name, s->type.dtype, shape, s->name_loc);
    node(L, id)->data = data;
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
  if (L->mode == 0 && find_var(L, s->name))
    set_var(L, s->name, s->name_loc, VAR_PARAM, (Val){-1, 0});
  Shape shape = type_shape(L, &s->type);
  int64_t fan_in, fan_out;
  fans(&shape, &fan_in, &fan_out);
  InitSpec init = s->init ? init_spec(L, s->init) : L->init;
  if (s->value)
    init = (InitSpec){KILN_INIT_DATA, 0};
  int id = param_leaf(L, s->name, s->type.dtype, shape, s->name_loc, init, fan_in, fan_out);
  node(L, id)->leaf.weight = shape.rank >= 2;
  if (L->mode == 0 && s->value)
    node(L, id)->data = literal_data(L, s);
  set_var(L, s->name, s->name_loc, VAR_PARAM, (Val){id, 0});
}

/* ---- expressions ---- */

static Val lower_expr(Lower *L, Expr *e, const char *assigned);

/* The tensor an argument must be. */
static int tensor(Lower *L, Expr *e) {
  Val v = lower_expr(L, e, NULL);
  if (v.node < 0)
    kiln_fail(e->loc, "expected a tensor here, got the number %s", fmt_num(L, v.num));
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

/* unary: exp log neg sqrt relu */
static Val fn_unary(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  return (Val){ir_unary(L->g, f->op, tensor(L, args[0]), call->loc), 0};
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
    int64_t a = int_arg(L, items[i], -IR_MAX_RANK, IR_MAX_RANK,
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
  bool keep = args[2] ? bool_arg(args[2], pool_printf(L->tmp, "%s: 'keepdims'", f->name)) : false;
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
    kiln_fail(loc, "the tensor is too large");
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
      to.d[i] = (Dim){int_arg(L, it, 1, INT32_MAX, "reshape: a dimension"), -1};
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
  int x = tensor(L, args[0]);
  Shape s = node(L, x)->shape;
  if (s.rank < 2)
    kiln_fail(call->loc, "flatten needs a tensor with at least 2 axes, got %s",
              shape_text(L, &s));
  Mono m = {1, 0};
  for (int i = 1; i < s.rank; i++)
    mono_mul(&m, s.d[i], call->loc);
  if (m.power > 1)
    kiln_fail(call->loc, "flatten of %s would multiply the batch symbol by itself",
              shape_text(L, &s));
  Shape to = {.rank = 2, .d = {s.d[0], {m.coef, m.power ? L->sym : -1}}};
  return (Val){ir_reshape(L->g, x, to, call->loc), 0};
}

/* cross_entropy(logits [N, C], labels i32[N]) -> scalar mean over N */
static Val fn_cross_entropy(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int in[2] = {tensor(L, args[0]), tensor(L, args[1])};
  return (Val){ir_node(L->g, f->op, 2, in, NULL, call->loc), 0};
}

/* mse(a, b) = mean((a - b)^2) over all axes */
static Val fn_mse(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)f, (void)layer;
  int a = tensor(L, args[0]), b = tensor(L, args[1]);
  int d = ir_binary(L->g, OP_SUB, a, b, call->loc);
  int two = ir_const(L->g, 2, node(L, d)->dtype, call->loc);
  int sq = ir_binary(L->g, OP_POW, d, two, call->loc);
  int rank = node(L, sq)->shape.rank;
  return (Val){rank ? ir_reduce(L->g, OP_MEAN, sq, all_axes(rank), false, call->loc) : sq, 0};
}

/* linear(x [N, in], out=M, bias=true): x @ weight^T + bias, weight [M, in], bias [M] */
static Val fn_linear(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  Node *xn = node(L, x);
  Shape xs = xn->shape;
  DType dt = xn->dtype;
  if (xs.rank != 2)
    kiln_fail(call->loc, "linear needs an input of shape [N, in], got %s", shape_text(L, &xs));
  if (!dtype_is_float(dt))
    kiln_fail(call->loc, "linear needs a floating-point input, got %s", dtype_name(dt));
  if (xs.d[1].sym >= 0)
    kiln_fail(call->loc, "linear: the input's feature dimension must be a number, got %s",
              shape_text(L, &xs));
  int64_t in = xs.d[1].n;
  int64_t out = int_arg(L, args[1], 1, INT32_MAX, "linear: 'out'");
  bool bias = args[2] ? bool_arg(args[2], "linear: 'bias'") : true;
  Loc at = call->as ? call->as_loc : call->loc;
  InitSpec wi = L->init, bi = L->init;
  if (bi.kind >= 0)
    bi = (InitSpec){KILN_INIT_ZEROS, 0};
  Shape ws = {.rank = 2, .d = {{out, -1}, {in, -1}}};
  int w = param_leaf(L, pool_printf(L->tmp, "%s.weight", layer), dt, ws, at, wi, in, out);
  node(L, w)->leaf.weight = true;
  int y = ir_matmul(L->g, x, w, false, true, call->loc);
  if (bias) {
    Shape bs = {.rank = 1, .d = {{out, -1}}};
    int b = param_leaf(L, pool_printf(L->tmp, "%s.bias", layer), dt, bs, at, bi, in, out);
    y = ir_binary(L->g, OP_ADD, y, b, call->loc);
  }
  (void)f;
  return (Val){y, 0};
}

/* ---- issue 3: activations, layout, losses ---- */

/* One axis, negative counting from the end. */
static int axis_arg(Lower *L, const Func *f, const Expr *e, int rank) {
  int64_t a = int_arg(L, e, -IR_MAX_RANK, IR_MAX_RANK, pool_printf(L->tmp, "%s: 'axis'", f->name));
  if (a < -rank || a >= rank)
    kiln_fail(e->loc, "%s: axis %lld is out of range for a tensor with %d axes", f->name,
              (long long)a, rank);
  return (int)(a < 0 ? a + rank : a);
}

/* leaky_relu(x, slope=0.01): x > 0 ? x : slope * x */
static Val fn_leaky_relu(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = tensor(L, args[0]);
  Attr a;
  memset(&a, 0, sizeof a);
  a.value = args[1] ? num_arg(L, args[1], "leaky_relu: 'slope'") : 0.01;
  return (Val){ir_node(L->g, f->op, 1, &x, &a, call->loc), 0};
}

/* softmax / log_softmax(x, axis=-1) */
static Val fn_softmax(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = tensor(L, args[0]);
  int rank = node(L, x)->shape.rank;
  if (rank == 0)
    kiln_fail(call->loc, "%s needs a tensor with at least 1 axis, got a scalar", f->name);
  Attr a;
  memset(&a, 0, sizeof a);
  a.axis = args[1] ? axis_arg(L, f, args[1], rank) : rank - 1;
  return (Val){ir_node(L->g, f->op, 1, &x, &a, call->loc), 0};
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
  Attr at;
  memset(&at, 0, sizeof at);
  at.axis = axis ? axis_arg(L, f, axis, rank) : 1;
  if (!axis && rank < 2)
    kiln_fail(call->loc, "concat joins along axis 1 by default, but %s has %d axis%s: give 'axis'",
              shape_text(L, &node(L, r)->shape), rank, rank == 1 ? "" : "es");
  for (int i = 1; i < n; i++) {
    int in[2] = {r, tensor(L, call->args[i].value)};
    r = ir_node(L->g, OP_CONCAT, 2, in, &at, call->loc);
  }
  return (Val){r, 0};
}

/* bce_with_logits(x, t) = mean over all elements of max(x,0) - x*t + log(1 + e^-|x|) */
static Val fn_bce_with_logits(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int in[2] = {tensor(L, args[0]), tensor(L, args[1])};
  int e = ir_node(L->g, f->op, 2, in, NULL, call->loc);
  int rank = node(L, e)->shape.rank;
  return (Val){rank ? ir_reduce(L->g, OP_MEAN, e, all_axes(rank), false, call->loc) : e, 0};
}

/* ---- issue 3: convolutional layers ---- */

/* A persistent non-learnable tensor (running statistics): made by the training pass, found by
 * the evaluation pass, like param_leaf. */
static int state_leaf(Lower *L, const char *name, DType dt, Shape s, Loc loc, int init) {
  if (L->mode == 1) {
    int id = ir_find_leaf(L->g, name);
    KILN_ASSERT(id >= 0 && node(L, id)->op == OP_STATE);
    return id;
  }
  int id = ir_leaf(L->g, OP_STATE, ROLE_STATE, name, dt, s, loc);
  node(L, id)->leaf.init = init;
  return id;
}

/* The input of a 2-D window function: [N, C, H, W] with C, H and W numbers, floating-point. */
static int image_arg(Lower *L, const Func *f, Expr *call, Expr *e) {
  int x = tensor(L, e);
  const Node *xn = node(L, x);
  const Shape *s = &xn->shape;
  if (s->rank != 4 || s->d[1].sym >= 0 || s->d[2].sym >= 0 || s->d[3].sym >= 0)
    kiln_fail(call->loc, "%s needs an input of shape [N, C, H, W], got %s", f->name,
              shape_text(L, s));
  if (!dtype_is_float(xn->dtype))
    kiln_fail(call->loc, "%s needs a floating-point input, got %s", f->name,
              dtype_name(xn->dtype));
  return x;
}

/* kernel=3 or kernel=[3, 5]: one integer for both axes, or [h, w]. */
static void pair_arg(Lower *L, const Func *f, const Expr *e, const char *arg, int64_t lo,
                     int64_t out[2]) {
  const char *what = pool_printf(L->tmp, "%s: '%s'", f->name, arg);
  if (e->kind != EX_LIST) {
    out[0] = out[1] = int_arg(L, e, lo, INT32_MAX, what);
    return;
  }
  if (e->nitems != 2)
    kiln_fail(e->loc, "%s must be one integer or a list [h, w], got a list of %d", what,
              e->nitems);
  for (int i = 0; i < 2; i++)
    out[i] = int_arg(L, e->items[i], lo, INT32_MAX, what);
}

/* conv2d's padding modes (seed 003): `same` (the seed's half padding) keeps the size at stride 1,
 * `full` lets the kernel overlap the input by one element, `valid` pads nothing. */
typedef enum PadMode { PAD_SAME, PAD_FULL, PAD_VALID, PAD_MODES } PadMode;
static const char *const pad_modes[PAD_MODES] = {
    [PAD_SAME] = "same", [PAD_FULL] = "full", [PAD_VALID] = "valid",
};

/* Fills a->pad ([top, bottom, left, right]) from pad=P | [ph, pw] | same | full | valid, once
 * a->kernel, a->stride and a->dilation are set. The modes are conv2d's only (modes = true).
 * The span a kernel adds is total = dilation*(k-1): same pads total/2 before and the rest after
 * (PyTorch's padding='same', the extra element going to the bottom/right), full pads total on
 * both sides. */
static void pad_arg(Lower *L, const Func *f, const Expr *e, bool modes, Attr *a) {
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
      if (m == PAD_SAME && (a->stride[0] != 1 || a->stride[1] != 1))
        kiln_fail(e->loc, "%s: pad=same needs stride 1 (as in PyTorch), but the stride is "
                  "[%lld, %lld]", f->name, (long long)a->stride[0], (long long)a->stride[1]);
      for (int ax = 0; ax < 2; ax++) {
        int64_t total = a->dilation[ax] * (a->kernel[ax] - 1);
        int64_t before = m == PAD_SAME ? total / 2 : m == PAD_FULL ? total : 0;
        int64_t after = m == PAD_SAME ? total - before : before;
        a->pad[2 * ax] = before;
        a->pad[2 * ax + 1] = after;
      }
      return;
    }
    if (!find_var(L, e->name))
      kiln_fail(e->loc, modes ? "%s: unknown padding '%s'; expected an integer, [ph, pw], same, "
                "full or valid" : "%s: unknown padding '%s'; expected an integer or [ph, pw]",
                f->name, e->name);
  }
  int64_t hw[2];
  pair_arg(L, f, e, "pad", 0, hw);
  a->pad[0] = a->pad[1] = hw[0];
  a->pad[2] = a->pad[3] = hw[1];
}

/* conv2d(x [N, C, H, W], out=O, kernel=K, stride=1, pad=0, dilation=1, groups=1, bias=true):
 * weight [O, C/groups, kh, kw] and bias [O] (PyTorch's nn.Conv2d layout); the bias is added as
 * [O, 1, 1] so it broadcasts over H and W. */
static Val fn_conv2d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = image_arg(L, f, call, args[0]);
  Shape xs = node(L, x)->shape;
  DType dt = node(L, x)->dtype;
  int64_t c = xs.d[1].n;
  int64_t out = int_arg(L, args[1], 1, INT32_MAX, "conv2d: 'out'");
  Attr a;
  memset(&a, 0, sizeof a);
  pair_arg(L, f, args[2], "kernel", 1, a.kernel);
  a.stride[0] = a.stride[1] = a.dilation[0] = a.dilation[1] = 1;
  if (args[3])
    pair_arg(L, f, args[3], "stride", 1, a.stride);
  if (args[5])
    pair_arg(L, f, args[5], "dilation", 1, a.dilation);
  pad_arg(L, f, args[4], true, &a);
  a.groups = args[6] ? int_arg(L, args[6], 1, INT32_MAX, "conv2d: 'groups'") : 1;
  if (c % a.groups || out % a.groups)
    kiln_fail(args[6]->loc, "conv2d: %lld input channels (of %s) and %lld output channels do not "
              "both divide into %lld groups", (long long)c, shape_text(L, &xs), (long long)out,
              (long long)a.groups);
  bool bias = args[7] ? bool_arg(args[7], "conv2d: 'bias'") : true;
  Loc at = call->as ? call->as_loc : call->loc;
  InitSpec wi = L->init, bi = L->init;
  if (bi.kind >= 0)
    bi = (InitSpec){KILN_INIT_ZEROS, 0};
  Shape ws = {.rank = 4,
              .d = {{out, -1}, {c / a.groups, -1}, {a.kernel[0], -1}, {a.kernel[1], -1}}};
  int64_t fan_in, fan_out;
  fans(&ws, &fan_in, &fan_out);
  int w = param_leaf(L, pool_printf(L->tmp, "%s.weight", layer), dt, ws, at, wi, fan_in, fan_out);
  node(L, w)->leaf.weight = true;
  int in[2] = {x, w};
  int y = ir_node(L->g, OP_CONV2D, 2, in, &a, call->loc);
  if (bias) {
    Shape bs = {.rank = 1, .d = {{out, -1}}};
    int b = param_leaf(L, pool_printf(L->tmp, "%s.bias", layer), dt, bs, at, bi, fan_in, fan_out);
    Shape b3 = {.rank = 3, .d = {{out, -1}, {1, -1}, {1, -1}}};
    y = ir_binary(L->g, OP_ADD, y, ir_reshape(L->g, b, b3, call->loc), call->loc);
  }
  return (Val){y, 0};
}

/* The window of a pooling function: kernel, stride (default: the kernel), pad (default 0). */
static Attr pool_attr(Lower *L, const Func *f, Expr **args) {
  Attr a;
  memset(&a, 0, sizeof a);
  pair_arg(L, f, args[1], "kernel", 1, a.kernel);
  a.stride[0] = a.kernel[0];
  a.stride[1] = a.kernel[1];
  if (args[2])
    pair_arg(L, f, args[2], "stride", 1, a.stride);
  a.dilation[0] = a.dilation[1] = 1;
  pad_arg(L, f, args[3], false, &a);
  return a;
}

/* maxpool2d(x, kernel, stride=kernel, pad=0, dilation=1) */
static Val fn_maxpool2d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  Attr a = pool_attr(L, f, args);
  if (args[4])
    pair_arg(L, f, args[4], "dilation", 1, a.dilation);
  return (Val){ir_node(L->g, OP_MAXPOOL2D, 1, &x, &a, call->loc), 0};
}

/* avgpool2d(x, kernel, stride=kernel, pad=0, count_include_pad=true) */
static Val fn_avgpool2d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  Attr a = pool_attr(L, f, args);
  a.count_include_pad =
      args[4] ? bool_arg(args[4], "avgpool2d: 'count_include_pad'") : true;
  return (Val){ir_node(L->g, OP_AVGPOOL2D, 1, &x, &a, call->loc), 0};
}

/* l2pool2d(x, kernel, stride=kernel, pad=0) = sqrt of the sum of squares over each window (seed
 * 001 eq. 31b), composed as sqrt(relu(avgpool2d(x*x, count_include_pad=true)) * kh*kw): padding
 * adds zeros to the sum, as in PyTorch's LPPool2d with norm_type 2. The relu changes no value
 * (the mean of squares is >= 0) but, like PyTorch's, its gradient selects 0 where a window is all
 * zero, so sqrt's infinite slope at 0 gives a zero gradient there instead of NaN. */
static Val fn_l2pool2d(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  Attr a = pool_attr(L, f, args);
  a.count_include_pad = true;
  Graph *g = L->g;
  int sq = ir_binary(g, OP_MUL, x, x, call->loc);
  int avg = ir_unary(g, OP_RELU, ir_node(g, OP_AVGPOOL2D, 1, &sq, &a, call->loc), call->loc);
  int area = ir_const(g, (double)(a.kernel[0] * a.kernel[1]), node(L, x)->dtype, call->loc);
  return (Val){ir_unary(g, OP_SQRT, ir_binary(g, OP_MUL, avg, area, call->loc), call->loc), 0};
}

/* eps=..: a positive number (default 1e-5) */
static double eps_arg(Lower *L, const Func *f, const Expr *e) {
  if (!e)
    return 1e-5;
  double v = num_arg(L, e, pool_printf(L->tmp, "%s: 'eps'", f->name));
  if (v <= 0)
    kiln_fail(e->loc, "%s: 'eps' must be positive, got %s", f->name, fmt_num(L, v));
  return v;
}

/* (x - mean) / sqrt(var + eps) over axes, with the biased variance mean((x - mean)^2): the
 * normalisation shared by batch (training mode), layer and instance norm. *mu and *var receive
 * the statistics (keepdims). */
static int normalize(Lower *L, int x, unsigned axes, double eps, Loc loc, int *mu, int *var) {
  Graph *g = L->g;
  DType dt = node(L, x)->dtype;
  *mu = ir_reduce(g, OP_MEAN, x, axes, true, loc);
  int d = ir_binary(g, OP_SUB, x, *mu, loc);
  *var = ir_reduce(g, OP_MEAN, ir_binary(g, OP_MUL, d, d, loc), axes, true, loc);
  int sd = ir_unary(g, OP_SQRT, ir_binary(g, OP_ADD, *var, ir_const(g, eps, dt, loc), loc), loc);
  return ir_binary(g, OP_DIV, d, sd, loc);
}

/* (1 - m) * running + m * batch: PyTorch's running-statistics update. */
static int running_update(Lower *L, int running, int batch, double m, Loc loc) {
  Graph *g = L->g;
  DType dt = node(L, running)->dtype;
  int keep = ir_binary(g, OP_MUL, ir_const(g, 1 - m, dt, loc), running, loc);
  return ir_binary(g, OP_ADD, keep, ir_binary(g, OP_MUL, ir_const(g, m, dt, loc), batch, loc), loc);
}

/* batchnorm(x [N, C, H, W] or [N, C], eps=1e-5, momentum=0.1, affine=true): PyTorch's
 * BatchNorm2d / BatchNorm1d. Per channel over (N, H, W). Training mode normalises with the batch
 * statistics and registers the running-statistics updates (train entry only; the variance kept
 * is unbiased, var * n/(n-1) with n = N*H*W symbolic in the batch); evaluation mode normalises
 * with the running statistics. weight (gamma) and bias (beta) broadcast as [C, 1, 1]. */
static Val fn_batchnorm(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  Graph *g = L->g;
  Shape xs = node(L, x)->shape;
  DType dt = node(L, x)->dtype;
  if ((xs.rank != 2 && xs.rank != 4) || xs.d[1].sym >= 0)
    kiln_fail(call->loc, "batchnorm needs an input of shape [N, C, H, W] or [N, C], got %s",
              shape_text(L, &xs));
  if (!dtype_is_float(dt))
    kiln_fail(call->loc, "batchnorm needs a floating-point input, got %s", dtype_name(dt));
  double eps = eps_arg(L, f, args[1]);
  double m = args[2] ? num_arg(L, args[2], "batchnorm: 'momentum'") : 0.1;
  if (m < 0 || m > 1)
    kiln_fail(args[2]->loc, "batchnorm: 'momentum' must be in [0, 1], got %s", fmt_num(L, m));
  bool affine = args[3] ? bool_arg(args[3], "batchnorm: 'affine'") : true;
  int64_t c = xs.d[1].n;
  Loc at = call->as ? call->as_loc : call->loc, loc = call->loc;
  Shape cs = {.rank = 1, .d = {{c, -1}}};
  Shape bc = xs.rank == 4 ? (Shape){.rank = 3, .d = {{c, -1}, {1, -1}, {1, -1}}} : cs;
  unsigned axes = xs.rank == 4 ? 1u | 4u | 8u : 1u;
  int gamma = -1, beta = -1;
  if (affine) {
    gamma = param_leaf(L, pool_printf(L->tmp, "%s.weight", layer), dt, cs, at,
                       (InitSpec){KILN_INIT_ONES, 0}, c, c);
    beta = param_leaf(L, pool_printf(L->tmp, "%s.bias", layer), dt, cs, at,
                      (InitSpec){KILN_INIT_ZEROS, 0}, c, c);
  }
  int rm = state_leaf(L, pool_printf(L->tmp, "%s.running_mean", layer), dt, cs, at,
                      KILN_INIT_ZEROS);
  int rv = state_leaf(L, pool_printf(L->tmp, "%s.running_var", layer), dt, cs, at,
                      KILN_INIT_ONES);
  int nbt = state_leaf(L, pool_printf(L->tmp, "%s.num_batches_tracked", layer), DT_F64,
                       (Shape){0}, at, KILN_INIT_ZEROS);
  int y;
  if (L->mode == 0) {
    int mu, var;
    y = normalize(L, x, axes, eps, loc, &mu, &var);
    int n = ir_reduce(g, OP_NUMEL, x, axes, false, loc);
    int n1 = ir_binary(g, OP_SUB, n, ir_const(g, 1, dt, loc), loc);
    int unbiased = ir_binary(g, OP_MUL, ir_reshape(g, var, cs, loc),
                             ir_binary(g, OP_DIV, n, n1, loc), loc);
    ir_add_update(g, ENTRY_TRAIN, rm, running_update(L, rm, ir_reshape(g, mu, cs, loc), m, loc));
    ir_add_update(g, ENTRY_TRAIN, rv, running_update(L, rv, unbiased, m, loc));
    ir_add_update(g, ENTRY_TRAIN, nbt,
                  ir_binary(g, OP_ADD, nbt, ir_const(g, 1, DT_F64, loc), loc));
  } else {
    int d = ir_binary(g, OP_SUB, x, ir_reshape(g, rm, bc, loc), loc);
    int v = ir_binary(g, OP_ADD, ir_reshape(g, rv, bc, loc), ir_const(g, eps, dt, loc), loc);
    y = ir_binary(g, OP_DIV, d, ir_unary(g, OP_SQRT, v, loc), loc);
  }
  if (affine) {
    y = ir_binary(g, OP_MUL, y, ir_reshape(g, gamma, bc, loc), loc);
    y = ir_binary(g, OP_ADD, y, ir_reshape(g, beta, bc, loc), loc);
  }
  return (Val){y, 0};
}

/* layernorm(x [N, ...], eps=1e-5, affine=true): over every axis but the first, with weight and
 * bias of shape x.shape[1:] (PyTorch's nn.LayerNorm(x.shape[1:])). Same in both modes. */
static Val fn_layernorm(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  Shape xs = node(L, x)->shape;
  DType dt = node(L, x)->dtype;
  bool fixed = xs.rank >= 2;
  for (int i = 1; i < xs.rank; i++)
    fixed &= xs.d[i].sym < 0;
  if (!fixed)
    kiln_fail(call->loc, "layernorm needs an input [N, ...] with at least 2 axes and numbers "
              "after the first, got %s", shape_text(L, &xs));
  if (!dtype_is_float(dt))
    kiln_fail(call->loc, "layernorm needs a floating-point input, got %s", dtype_name(dt));
  double eps = eps_arg(L, f, args[1]);
  bool affine = args[2] ? bool_arg(args[2], "layernorm: 'affine'") : true;
  int mu, var;
  int y = normalize(L, x, all_axes(xs.rank) & ~1u, eps, call->loc, &mu, &var);
  if (affine) {
    Shape ps = {.rank = xs.rank - 1};
    for (int i = 1; i < xs.rank; i++)
      ps.d[i - 1] = xs.d[i];
    Loc at = call->as ? call->as_loc : call->loc;
    int64_t numel = shape_numel(&ps, NULL);
    int w = param_leaf(L, pool_printf(L->tmp, "%s.weight", layer), dt, ps, at,
                       (InitSpec){KILN_INIT_ONES, 0}, numel, numel);
    int b = param_leaf(L, pool_printf(L->tmp, "%s.bias", layer), dt, ps, at,
                       (InitSpec){KILN_INIT_ZEROS, 0}, numel, numel);
    y = ir_binary(L->g, OP_ADD, ir_binary(L->g, OP_MUL, y, w, call->loc), b, call->loc);
  }
  return (Val){y, 0};
}

/* instancenorm(x [N, C, H, W], eps=1e-5): over (H, W) per example and channel, no affine and no
 * running statistics (PyTorch's nn.InstanceNorm2d defaults). */
static Val fn_instancenorm(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  (void)layer;
  int x = image_arg(L, f, call, args[0]);
  int mu, var;
  return (Val){normalize(L, x, 4u | 8u, eps_arg(L, f, args[1]), call->loc, &mu, &var), 0};
}

/* A stable 32-bit hash of a dropout site's name (FNV-1a): the site's salt. */
static uint32_t site_salt(const char *name) {
  uint32_t h = 2166136261u;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    h = (h ^ *p) * 16777619u;
  return h;
}

/* The model's one dropout step counter (an f64 scalar, role OPT, seeded from the run seed),
 * advanced by 1 per training step: made at the first dropout site. */
static int dropout_counter(Lower *L, Loc loc) {
  Graph *g = L->g;
  int id = ir_find_leaf(g, "dropout.step");
  if (id >= 0)
    return id;
  id = ir_leaf(g, OP_STATE, ROLE_OPT, "dropout.step", DT_F64, (Shape){0}, loc);
  node(L, id)->leaf.init = KILN_INIT_SEED;
  ir_add_update(g, ENTRY_TRAIN, id, ir_binary(g, OP_ADD, id, ir_const(g, 1, DT_F64, loc), loc));
  return id;
}

/* dropout(x, p=0.5): training mode keeps each element with probability 1 - p and scales it by
 * 1/(1 - p) (PyTorch's inverted dropout); the mask depends on the site's name, the step counter
 * and the element's index. Evaluation mode (and p = 0): x itself. */
static Val fn_dropout(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer) {
  int x = tensor(L, args[0]);
  double p = args[1] ? num_arg(L, args[1], "dropout: 'p'") : 0.5;
  if (!(p >= 0 && p < 1))
    kiln_fail(args[1]->loc, "dropout: 'p' must be in [0, 1), got %s", fmt_num(L, p));
  if (L->mode == 1)
    return (Val){x, 0};
  for (int i = 0; i < L->nsites; i++)
    if (!strcmp(L->sites[i], layer))
      kiln_fail(call->as ? call->as_loc : call->loc,
                "dropout site '%s' is named twice: each site needs its own name", layer);
  if (L->nsites == L->capsites) {
    L->capsites = L->capsites ? 2 * L->capsites : 8;
    const char **s = pool_alloc(L->tmp, (size_t)L->capsites * sizeof *s);
    if (L->nsites)
      memcpy(s, L->sites, (size_t)L->nsites * sizeof *s);
    L->sites = s;
  }
  L->sites[L->nsites++] = layer;
  if (p == 0)
    return (Val){x, 0};
  Attr a;
  memset(&a, 0, sizeof a);
  a.value = p;
  a.salt = site_salt(layer);
  int in[2] = {x, dropout_counter(L, call->loc)};
  return (Val){ir_node(L->g, f->op, 2, in, &a, call->loc), 0};
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
    {"bce_with_logits", fn_bce_with_logits, OP_BCE_LOGITS, NAMED_NO, 2, 2, {"x", "t"}},
    {"linear", fn_linear, OP_MATMUL, NAMED_LAYER, 2, 3, {"x", "out", "bias"}},
    {"conv2d", fn_conv2d, OP_CONV2D, NAMED_LAYER, 3, 8,
     {"x", "out", "kernel", "stride", "pad", "dilation", "groups", "bias"}},
    {"maxpool2d", fn_maxpool2d, OP_MAXPOOL2D, NAMED_NO, 2, 5,
     {"x", "kernel", "stride", "pad", "dilation"}},
    {"avgpool2d", fn_avgpool2d, OP_AVGPOOL2D, NAMED_NO, 2, 5,
     {"x", "kernel", "stride", "pad", "count_include_pad"}},
    {"l2pool2d", fn_l2pool2d, OP_AVGPOOL2D, NAMED_NO, 2, 4, {"x", "kernel", "stride", "pad"}},
    {"batchnorm", fn_batchnorm, OP_MEAN, NAMED_LAYER, 1, 4, {"x", "eps", "momentum", "affine"}},
    {"layernorm", fn_layernorm, OP_MEAN, NAMED_LAYER, 1, 3, {"x", "eps", "affine"}},
    {"instancenorm", fn_instancenorm, OP_MEAN, NAMED_NO, 1, 2, {"x", "eps"}},
    {"dropout", fn_dropout, OP_DROPOUT, NAMED_SITE, 1, 2, {"x", "p"}},
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
 * right-hand side; else <function><n>, skipping names the file uses for other layers. Chosen
 * once (training pass) and kept in the AST so both passes agree. */
static const char *layer_name(Lower *L, const Func *f, Expr *call, const char *assigned) {
  if (call->layer)
    return call->layer;
  if (call->as) {
    call->layer = call->as;
  } else if (assigned && f->naming == NAMED_LAYER) {
    call->layer = assigned;
  } else {
    int k = (int)(f - funcs);
    const char *name;
    do
      name = pool_printf(L->tmp, "%s%d", f->name, ++L->layer_count[k]);
    while (name_taken(L, name));
    call->layer = name;
  }
  return call->layer;
}

static Val lower_call(Lower *L, Expr *e, const char *assigned) {
  const Func *f = find_func(e->name);
  if (!f)
    kiln_fail(e->loc, "unknown function '%s'", e->name);
  if (e->as && f->naming == NAMED_NO)
    kiln_fail(e->as_loc, "'as' names a layer, but %s is not a layer", f->name);
  Expr *args[8] = {0};
  if (f->params[0][0] != '*')
    bind_args(f->name, f->params, f->nparams, f->nrequired, e, args);
  const char *layer = f->naming != NAMED_NO ? layer_name(L, f, e, assigned) : NULL;
  return f->lower(L, f, e, args, layer);
}

/* assigned: the variable this expression is the whole right-hand side of (names a layer). */
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
    return binop(L, binary_ops[(unsigned char)e->op], a, e->lhs->loc, b, e->rhs->loc, e->loc);
  }
  case EX_CALL:
    return lower_call(L, e, assigned);
  case EX_LIST:
    kiln_fail(e->loc, "a list is not a value here (lists are for literals, axes and shapes)");
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
  case ST_ASSIGN: {
    bool whole_layer = s->value->kind == EX_CALL;
    Val v = lower_expr(L, s->value, whole_layer ? s->name : NULL);
    set_var(L, s->name, s->name_loc, VAR_COMPUTED, v);
    if (v.node >= 0 && !node(L, v.node)->name)
      node(L, v.node)->name = pool_strdup(g->pool, s->name);
    return;
  }
  case ST_OUTPUT: {
    if (L->have_output)
      kiln_fail(s->loc, "a model has one 'output' statement; this is a second one");
    L->have_output = true;
    Node *n = named_tensor(L, s);
    if (L->mode == 1)
      g->output_eval = n->id;
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
    if (L->mode == 0)
      g->loss_train = n->id;
    else
      g->loss_eval = n->id;
    return;
  }
  }
  unreachable();
}

/* ---- the train block ---- */

/* Each optimizer's arguments in torch.optim's order, and its defaults (torch.optim's, except
 * that sgd requires lr as torch does). */
typedef struct OptName {
  const char *name;
  OptKind kind;
  int nrequired;
  const char *params[6];
} OptName;

static const OptName opt_names[] = {
    {"sgd", OPT_SGD, 1, {"lr", "momentum", "dampening", "nesterov", "weight_decay"}},
    {"adam", OPT_ADAM, 0, {"lr", "beta1", "beta2", "eps", "weight_decay"}},
    {"adagrad", OPT_ADAGRAD, 0,
     {"lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"}},
    {"rmsprop", OPT_RMSPROP, 0, {"lr", "alpha", "eps", "weight_decay", "momentum", "centered"}},
    {"adadelta", OPT_ADADELTA, 0, {"lr", "rho", "eps", "weight_decay"}},
};
#define OPT_LIST "sgd, adam, adagrad, rmsprop or adadelta"

/* A numeric optimizer argument checked against [lo, hi] (hi_open: hi excluded; lo_open: lo
 * excluded), stored through *out when given. */
static void opt_num(Lower *L, const char *opt, const char *key, const Expr *e, double lo,
                    bool lo_open, double hi, bool hi_open, double *out) {
  if (!e)
    return;
  double v = num_arg(L, e, pool_printf(L->tmp, "%s: '%s'", opt, key));
  bool bad = v < lo || (lo_open && v == lo) || v > hi || (hi_open && v == hi);
  if (bad) {
    if (hi == INFINITY)
      kiln_fail(e->loc, "%s: '%s' must %s, got %s", opt, key,
                lo_open ? "be positive" : "not be negative", fmt_num(L, v));
    kiln_fail(e->loc, "%s: '%s' must be in %c%s, %s%c, got %s", opt, key, lo_open ? '(' : '[',
              fmt_num(L, lo), fmt_num(L, hi), hi_open ? ')' : ']', fmt_num(L, v));
  }
  *out = v;
}

/* optimizer = name "(" args ")", name one of opt_names */
static void train_optimizer(Lower *L, TrainSpec *t, const Expr *e) {
  if (e->kind != EX_CALL && e->kind != EX_NAME)
    kiln_fail(e->loc, "expected an optimizer: " OPT_LIST ", e.g. adam(lr=1e-3)");
  const OptName *o = NULL;
  for (size_t i = 0; i < sizeof opt_names / sizeof *opt_names; i++)
    if (!strcmp(e->name, opt_names[i].name))
      o = &opt_names[i];
  if (!o)
    kiln_fail(e->loc, "unknown optimizer '%s'; expected " OPT_LIST, e->name);
  if (e->kind == EX_NAME)
    kiln_fail(e->loc, "%s needs its arguments: write %s(lr=...)", e->name, e->name);
  int np = 0;
  while (np < 6 && o->params[np])
    np++;
  Expr *a[6] = {0}, *arg[6] = {0};
  bind_args(e->name, o->params, np, o->nrequired, e, arg);
  /* a[] by meaning, whatever the position in the optimizer's signature */
  enum { A_LR, A_WD, A_EPS, A_MOM, A_X, A_Y };
  const char *n = o->name;
  for (int i = 0; i < np; i++) {
    const char *p = o->params[i];
    int slot = !strcmp(p, "lr") ? A_LR : !strcmp(p, "weight_decay") ? A_WD
             : !strcmp(p, "eps") ? A_EPS : !strcmp(p, "momentum") ? A_MOM
             : !strcmp(p, "beta1") || !strcmp(p, "lr_decay") || !strcmp(p, "alpha")
                     || !strcmp(p, "rho") || !strcmp(p, "dampening") ? A_X : A_Y;
    a[slot] = arg[i];
  }
  t->optimizer = o->kind;
  /* torch.optim's defaults */
  switch (o->kind) {
  case OPT_ADAGRAD: t->lr = 0.01, t->eps = 1e-10; break;
  case OPT_RMSPROP: t->lr = 0.01, t->eps = 1e-8, t->alpha = 0.99; break;
  case OPT_ADADELTA: t->lr = 1.0, t->eps = 1e-6, t->rho = 0.9; break;
  default: break;
  }
  opt_num(L, n, "lr", a[A_LR], 0, false, INFINITY, false, &t->lr);
  if (a[A_WD]) {
    t->weight_decay = num_arg(L, a[A_WD], pool_printf(L->tmp, "%s: 'weight_decay'", n));
    if (t->weight_decay < 0)
      kiln_fail(a[A_WD]->loc, "%s: 'weight_decay' must not be negative", n);
  }
  if (o->kind != OPT_SGD && a[A_EPS]) {
    t->eps = num_arg(L, a[A_EPS], pool_printf(L->tmp, "%s: 'eps'", n));
    if (t->eps <= 0)
      kiln_fail(a[A_EPS]->loc, "%s: 'eps' must be positive", n);
  }
  switch (o->kind) {
  case OPT_ADAM:
    opt_num(L, n, "beta1", a[A_X], 0, false, 1, true, &t->beta1);
    opt_num(L, n, "beta2", a[A_Y], 0, false, 1, true, &t->beta2);
    break;
  case OPT_ADAGRAD:
    opt_num(L, n, "lr_decay", a[A_X], 0, false, INFINITY, false, &t->lr_decay);
    opt_num(L, n, "initial_accumulator_value", a[A_Y], 0, false, INFINITY, false,
            &t->initial_accumulator_value);
    break;
  case OPT_RMSPROP:
    opt_num(L, n, "alpha", a[A_X], 0, false, 1, false, &t->alpha);
    opt_num(L, n, "momentum", a[A_MOM], 0, false, INFINITY, false, &t->momentum);
    if (a[A_Y])
      t->centered = bool_arg(a[A_Y], "rmsprop: 'centered'");
    break;
  case OPT_ADADELTA:
    opt_num(L, n, "rho", a[A_X], 0, false, 1, false, &t->rho);
    break;
  case OPT_SGD:
    if (a[A_MOM]) {
      t->momentum = num_arg(L, a[A_MOM], "sgd: 'momentum'");
      if (t->momentum < 0)
        kiln_fail(a[A_MOM]->loc, "sgd: 'momentum' must not be negative");
    }
    if (a[A_X])
      t->dampening = num_arg(L, a[A_X], "sgd: 'dampening'");
    if (a[A_Y])
      t->nesterov = bool_arg(a[A_Y], "sgd: 'nesterov'");
    if (t->nesterov && (t->momentum <= 0 || t->dampening != 0))
      kiln_fail(a[A_Y]->loc, "sgd: nesterov needs a positive momentum and zero dampening");
    break;
  }
}

/* regularizer = "l1" "(" λ ")" | "l2" "(" λ ")" | "elastic_net" "(" "l1" "=" λ "," "l2" "=" λ ")"
 *             | "max_norm" "(" c ")" */
static void train_regularizer(Lower *L, TrainSpec *t, const Expr *e) {
  static const char *const expect =
      "expected a regularizer: l1(lambda), l2(lambda), elastic_net(l1=..., l2=...) or max_norm(c)";
  if (e->kind != EX_CALL && e->kind != EX_NAME)
    kiln_fail(e->loc, "%s", expect);
  const char *n = e->name;
  bool l1 = !strcmp(n, "l1"), l2 = !strcmp(n, "l2"), en = !strcmp(n, "elastic_net"),
       mn = !strcmp(n, "max_norm");
  if (!l1 && !l2 && !en && !mn)
    kiln_fail(e->loc, "unknown regularizer '%s'; %s", n, expect);
  if (e->kind == EX_NAME)
    kiln_fail(e->loc, "%s needs its argument%s: write %s", n, en ? "s" : "",
              en ? "elastic_net(l1=..., l2=...)" : pool_printf(L->tmp, "%s(...)", n));
  static const char *const one[] = {"lambda"}, *const two[] = {"l1", "l2"},
                           *const c[] = {"c"};
  Expr *a[2] = {0};
  bind_args(n, en ? two : mn ? c : one, en ? 2 : 1, en ? 2 : 1, e, a);
  double *dst[2] = {l1 ? &t->reg_l1 : l2 ? &t->reg_l2 : en ? &t->reg_l1 : &t->max_norm,
                    en ? &t->reg_l2 : NULL};
  for (int i = 0; i < (en ? 2 : 1); i++) {
    if (*dst[i] != 0)
      kiln_fail(e->loc, "regularize: %s penalty is given twice",
                dst[i] == &t->reg_l1 ? "the l1" : dst[i] == &t->reg_l2 ? "the l2" : "max_norm");
    opt_num(L, n, en ? two[i] : mn ? "c" : "lambda", a[i], 0, true, INFINITY, false, dst[i]);
  }
}

/* early_stop = "patience" "(" N ")" */
static int train_early_stop(Lower *L, const Expr *e) {
  if (!((e->kind == EX_CALL || e->kind == EX_NAME) && !strcmp(e->name, "patience")))
    kiln_fail(e->loc, "expected 'early_stop = patience(N)': stop after N epochs without a "
                      "better test loss");
  if (e->kind == EX_NAME)
    kiln_fail(e->loc, "patience needs its argument: write patience(N)");
  static const char *const p[] = {"n"};
  Expr *a[1];
  bind_args("patience", p, 1, 1, e, a);
  return (int)int_arg(L, a[0], 1, INT32_MAX, "patience");
}

static const char *const train_keys[] = {"optimizer", "batch", "epochs", "steps", "seed", "init",
                                         "regularize", "early_stop"};

static void read_train(Lower *L, const Stmt *s) {
  TrainSpec *t = &L->g->train;
  t->loc = s->loc;
  for (int i = 0; i < s->nsettings; i++) {
    const Setting *st = &s->settings[i];
    for (int j = 0; j < i; j++)
      if (!strcmp(s->settings[j].key, st->key))
        kiln_fail(st->loc, "train setting '%s' is given twice", st->key);
    const char *what = pool_printf(L->tmp, "'%s'", st->key);
    size_t k = 0;
    while (k < sizeof train_keys / sizeof *train_keys && strcmp(train_keys[k], st->key))
      k++;
    switch (k) {
    case 0:
      train_optimizer(L, t, st->value);
      break;
    case 1:
      t->batch = int_arg(L, st->value, 1, INT32_MAX, what);
      break;
    case 2:
      t->epochs = (int)int_arg(L, st->value, 1, INT32_MAX, what);
      break;
    case 3:
      t->steps = int_arg(L, st->value, 0, INT64_C(1) << 40, what);
      break;
    case 4:
      t->seed = (uint64_t)int_arg(L, st->value, 0, INT64_C(1) << 53, what);
      break;
    case 5:
      L->init = init_spec(L, st->value);
      t->init = L->init.kind;
      break;
    case 6:
      if (st->value->kind == EX_LIST) {
        for (int j = 0; j < st->value->nitems; j++)
          train_regularizer(L, t, st->value->items[j]);
      } else {
        train_regularizer(L, t, st->value);
      }
      break;
    case 7:
      t->patience = train_early_stop(L, st->value);
      break;
    default:
      kiln_fail(st->loc, "unknown train setting '%s'; expected optimizer, batch, epochs, steps, "
                         "seed, init, regularize or early_stop", st->key);
    }
  }
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

void fe_lower(Graph *g, Program *prog, Pool *tmp) {
  Lower L = {.g = g, .prog = prog, .tmp = tmp, .sym = -1, .init = {-1, 0}};
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
    } else if (s->kind == ST_ASSIGN) {
      collect_explicit(&L, s->value, s->name, &cap);
    }
  }
  if (train)
    read_train(&L, train);
  for (L.mode = 0; L.mode < 2; L.mode++) {
    L.nvars = 0;
    L.have_output = L.have_minimize = false;
    memset(L.layer_count, 0, sizeof L.layer_count);
    for (int i = 0; i < prog->nstmts; i++)
      lower_stmt(&L, &prog->stmts[i]);
    if (!L.have_minimize)
      kiln_fail(prog->end, "no 'minimize' statement");
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
static Graph *new_graph(const char *path) {
  Graph *g = ir_new(NULL);
  Trap t;
  if (!KILN_TRY(&t)) {
    ir_free(g);
    kiln_rethrow(&t);
  }
  g->name = file_stem(g->pool, path);
  kiln_trap_end(&t);
  return g;
}

Graph *fe_compile_string(const char *path_for_messages, const char *text) {
  return compile(new_graph(path_for_messages), path_for_messages, text, strlen(text));
}

Graph *fe_compile_file(const char *path) {
  Graph *g = new_graph(path);
  Trap t;
  if (!KILN_TRY(&t)) {
    ir_free(g);
    kiln_rethrow(&t);
  }
  size_t len;
  char *text = read_file(g->pool, path, &len);
  if (!text) kiln_fail((Loc){0}, "cannot read '%s': %s", path, strerror(errno));
  kiln_trap_end(&t);
  return compile(g, path, text, len);
}
