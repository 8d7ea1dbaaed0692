/*
 * lower.c — turns the AST into the graph IR, and the frontend's public entry points.
 *
 * Everything goes through the ir_* builders, which check shapes as nodes are made, so a shape
 * error points at the model line that caused it. The statements are lowered twice into the same
 * Graph, once in training mode and once in evaluation mode: ops such as dropout or batchnorm
 * will differ between the two, everything else merges by hash-consing, and leaves (inputs,
 * parameters, constants) are created by the first pass and looked up by the second.
 *
 * Numbers in expressions stay compile-time values (and fold: `0.5 * 2` is 1) until they meet a
 * tensor, where they become a scalar constant of that tensor's element type, so `0.5 * x` works
 * for f32 and f64 alike. Layers are sugar: `linear` makes its parameters and primitive ops here,
 * and no later phase knows it existed. Per-function behaviour is a table (funcs[]) of argument
 * names and one lowering function each.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "frontend.h"

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
  int layer_count[32];        /* per function: auto-named layers so far (linear1, linear2, ...) */
  bool have_output, have_minimize;
} Lower;

typedef struct Func Func;
typedef Val (*LowerFn)(Lower *L, const Func *f, Expr *call, Expr **args, const char *layer);

/* One function callable in a model file. Arguments are params[0..nparams); the first nrequired
 * must be given; the rest have defaults the lowering function supplies. */
struct Func {
  const char *name;
  LowerFn lower;
  Op op;                      /* the primitive for the 1:1 functions */
  bool layer;                 /* makes parameters: named by `as`, its variable, or <name><n> */
  int nrequired, nparams;
  const char *params[6];
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
    *out = e->op == '+' ? a + b : e->op == '-' ? a - b : e->op == '*' ? a * b
         : e->op == '/' ? a / b : pow(a, b);
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
  if (a.node < 0 && b.node < 0) {
    double x = a.num, y = b.num;
    double r = op == OP_ADD ? x + y : op == OP_SUB ? x - y : op == OP_MUL ? x * y
             : op == OP_DIV ? x / y : pow(x, y);
    return (Val){-1, r};
  }
  DType dt = node(L, a.node >= 0 ? a.node : b.node)->dtype;
  int x = as_tensor(L, a, dt, la), y = as_tensor(L, b, dt, lb);
  return (Val){ir_binary(L->g, op, x, y, at), 0};
}

static const Op binary_ops[128] = {['+'] = OP_ADD, ['-'] = OP_SUB, ['*'] = OP_MUL,
                                   ['/'] = OP_DIV, ['^'] = OP_POW};

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
  int y = ir_matmul(L->g, x, w, false, true, call->loc);
  if (bias) {
    Shape bs = {.rank = 1, .d = {{out, -1}}};
    int b = param_leaf(L, pool_printf(L->tmp, "%s.bias", layer), dt, bs, at, bi, in, out);
    y = ir_binary(L->g, OP_ADD, y, b, call->loc);
  }
  (void)f;
  return (Val){y, 0};
}

static const Func funcs[] = {
    {"add", fn_binary, OP_ADD, false, 2, 2, {"a", "b"}},
    {"sub", fn_binary, OP_SUB, false, 2, 2, {"a", "b"}},
    {"mul", fn_binary, OP_MUL, false, 2, 2, {"a", "b"}},
    {"div", fn_binary, OP_DIV, false, 2, 2, {"a", "b"}},
    {"pow", fn_binary, OP_POW, false, 2, 2, {"a", "b"}},
    {"matmul", fn_matmul, OP_MATMUL, false, 2, 2, {"a", "b"}},
    {"exp", fn_unary, OP_EXP, false, 1, 1, {"x"}},
    {"log", fn_unary, OP_LOG, false, 1, 1, {"x"}},
    {"neg", fn_unary, OP_NEG, false, 1, 1, {"x"}},
    {"sqrt", fn_unary, OP_SQRT, false, 1, 1, {"x"}},
    {"relu", fn_unary, OP_RELU, false, 1, 1, {"x"}},
    {"sum", fn_reduce, OP_SUM, false, 1, 3, {"x", "axes", "keepdims"}},
    {"mean", fn_reduce, OP_MEAN, false, 1, 3, {"x", "axes", "keepdims"}},
    {"reshape", fn_reshape, OP_RESHAPE, false, 2, 2, {"x", "shape"}},
    {"flatten", fn_flatten, OP_RESHAPE, false, 1, 1, {"x"}},
    {"cross_entropy", fn_cross_entropy, OP_CROSS_ENTROPY, false, 2, 2, {"logits", "labels"}},
    {"mse", fn_mse, OP_SUB, false, 2, 2, {"a", "b"}},
    {"linear", fn_linear, OP_MATMUL, true, 2, 3, {"x", "out", "bias"}},
};
enum { NFUNCS = sizeof funcs / sizeof *funcs };
_Static_assert(NFUNCS <= 32, "Lower.layer_count needs one slot per function");

static const Func *find_func(const char *name) {
  for (int i = 0; i < NFUNCS; i++)
    if (!strcmp(funcs[i].name, name))
      return &funcs[i];
  return NULL;
}

static bool name_taken(Lower *L, const char *name) {
  for (int i = 0; i < L->nexplicit; i++)
    if (!strcmp(L->explicit_layers[i], name))
      return true;
  return ir_find_leaf(L->g, pool_printf(L->tmp, "%s.weight", name)) >= 0;
}

/* A layer's name: `as NAME`; else the variable it is assigned to when it is the whole
 * right-hand side; else <function><n>, skipping names the file uses for other layers. Chosen
 * once (training pass) and kept in the AST so both passes agree. */
static const char *layer_name(Lower *L, const Func *f, Expr *call, const char *assigned) {
  if (call->layer)
    return call->layer;
  if (call->as) {
    call->layer = call->as;
  } else if (assigned) {
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
  if (e->as && !f->layer)
    kiln_fail(e->as_loc, "'as' names a layer, but %s is not a layer", f->name);
  Expr *args[6];
  bind_args(f->name, f->params, f->nparams, f->nrequired, e, args);
  const char *layer = f->layer ? layer_name(L, f, e, assigned) : NULL;
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

static const char *const opt_params[][5] = {
    [OPT_ADAM] = {"lr", "beta1", "beta2", "eps", "weight_decay"},
    [OPT_SGD] = {"lr", "momentum", "dampening", "nesterov", "weight_decay"},
};

/* optimizer = "adam" "(" args ")" | "sgd" "(" args ")" */
static void train_optimizer(Lower *L, TrainSpec *t, const Expr *e) {
  if (e->kind != EX_CALL && e->kind != EX_NAME)
    kiln_fail(e->loc, "expected an optimizer: adam(lr=...) or sgd(lr=...)");
  bool adam = !strcmp(e->name, "adam");
  if (!adam && strcmp(e->name, "sgd"))
    kiln_fail(e->loc, "unknown optimizer '%s'; expected adam or sgd", e->name);
  if (e->kind == EX_NAME)
    kiln_fail(e->loc, "%s needs its arguments: write %s(lr=...)", e->name, e->name);
  OptKind k = adam ? OPT_ADAM : OPT_SGD;
  Expr *a[5];
  bind_args(e->name, opt_params[k], 5, adam ? 0 : 1, e, a);
  const char *n = e->name;
  t->optimizer = k;
  if (a[0]) {
    t->lr = num_arg(L, a[0], pool_printf(L->tmp, "%s: 'lr'", n));
    if (t->lr < 0)
      kiln_fail(a[0]->loc, "%s: 'lr' must not be negative", n);
  }
  if (a[4]) {
    t->weight_decay = num_arg(L, a[4], pool_printf(L->tmp, "%s: 'weight_decay'", n));
    if (t->weight_decay < 0)
      kiln_fail(a[4]->loc, "%s: 'weight_decay' must not be negative", n);
  }
  if (adam) {
    for (int i = 1; i <= 2; i++) {
      if (!a[i])
        continue;
      double b = num_arg(L, a[i], pool_printf(L->tmp, "adam: '%s'", opt_params[k][i]));
      if (b < 0 || b >= 1)
        kiln_fail(a[i]->loc, "adam: '%s' must be in [0, 1), got %s", opt_params[k][i],
                  fmt_num(L, b));
      *(i == 1 ? &t->beta1 : &t->beta2) = b;
    }
    if (a[3]) {
      t->eps = num_arg(L, a[3], "adam: 'eps'");
      if (t->eps <= 0)
        kiln_fail(a[3]->loc, "adam: 'eps' must be positive");
    }
  } else {
    if (a[1]) {
      t->momentum = num_arg(L, a[1], "sgd: 'momentum'");
      if (t->momentum < 0)
        kiln_fail(a[1]->loc, "sgd: 'momentum' must not be negative");
    }
    if (a[2])
      t->dampening = num_arg(L, a[2], "sgd: 'dampening'");
    if (a[3])
      t->nesterov = bool_arg(a[3], "sgd: 'nesterov'");
    if (t->nesterov && (t->momentum <= 0 || t->dampening != 0))
      kiln_fail(a[3]->loc, "sgd: nesterov needs a positive momentum and zero dampening");
  }
}

static const char *const train_keys[] = {"optimizer", "batch", "epochs", "steps", "seed", "init"};

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
    default:
      kiln_fail(st->loc, "unknown train setting '%s'; expected optimizer, batch, epochs, steps, "
                         "seed or init", st->key);
    }
  }
}

/* Layer names the file gives explicitly (by `as`, or by assignment of a layer call). */
static void collect_explicit(Lower *L, const Expr *e, const char *assigned, int *cap) {
  if (!e)
    return;
  if (e->kind == EX_CALL) {
    const Func *f = find_func(e->name);
    const char *name = e->as ? e->as : assigned;
    if (f && f->layer && name) {
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

/* Parses and lowers text (len bytes, NUL-terminated) already in g's pool. On an error the graph
 * and scratch memory are freed and the error is passed on to the caller's trap unchanged. */
static Graph *compile(Graph *g, const char *path, const char *text, size_t len) {
  Pool *tmp = pool_new();
  Trap t;
  if (KILN_TRY(&t)) {
    SrcFile *f = pool_alloc(g->pool, sizeof *f);
    f->path = pool_strdup(g->pool, path);
    f->text = text;
    Program *prog = parse_program(tmp, f, len);
    fe_lower(g, prog, tmp);
    kiln_trap_end(&t);
    pool_free(tmp);
    return g;
  }
  kiln_trap_end(&t);
  pool_free(tmp);
  ir_free(g);
  Trap *outer = kiln_trap;
  if (!outer) {
    fputs(t.msg, stderr);
    abort();
  }
  memcpy(outer->msg, t.msg, sizeof outer->msg);
  kiln_trap = outer->prev;
  longjmp(outer->jb, 1);
}

Graph *fe_compile_string(const char *path_for_messages, const char *text) {
  Graph *g = ir_new(NULL);
  Pool *p = g->pool;
  g->name = file_stem(p, path_for_messages);
  size_t len = strlen(text);
  return compile(g, path_for_messages, pool_strndup(p, text, len), len);
}

Graph *fe_compile_file(const char *path) {
  Graph *g = ir_new(NULL);
  Pool *p = g->pool;
  g->name = file_stem(p, path);
  size_t len;
  char *text = read_file(p, path, &len);
  if (!text) {
    int err = errno;
    ir_free(g);
    kiln_fail((Loc){0}, "cannot read '%s': %s", path, strerror(err));
  }
  return compile(g, path, text, len);
}
