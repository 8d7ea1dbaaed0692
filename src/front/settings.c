/*
 * settings.c — the train block: `train { key = value ... }` read into the graph's TrainSpec.
 *
 * The optimizer and its torch.optim arguments (one table, opt_names), regularizers, early
 * stopping, gradient clipping, the learning-rate schedule and warm-up, and the batch, epochs,
 * steps, seed and init settings. Values are compile-time numbers read through lower.c's argument
 * helpers (fe_num_arg, fe_bind_args, ...), so a setting is checked, and its errors worded, like a
 * call argument. Nothing here builds graph nodes: the training graph reads the TrainSpec later
 * (xform/train.c), and the trainer the schedule (ir_settings, runtime/rt_schedule.c).
 */
#include <math.h>
#include <string.h>

#include "front/front.h"

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
    {"adamw", OPT_ADAMW, 0, {"lr", "beta1", "beta2", "eps", "weight_decay"}},
    {"adagrad", OPT_ADAGRAD, 0,
     {"lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"}},
    {"rmsprop", OPT_RMSPROP, 0, {"lr", "alpha", "eps", "weight_decay", "momentum", "centered"}},
    {"adadelta", OPT_ADADELTA, 0, {"lr", "rho", "eps", "weight_decay"}},
};
#define OPT_LIST "sgd, adam, adamw, adagrad, rmsprop or adadelta"

/* A numeric optimizer argument checked against [lo, hi] (hi_open: hi excluded; lo_open: lo
 * excluded), stored through *out when given. */
static void opt_num(Lower *L, const char *opt, const char *key, const Expr *e, double lo,
                    bool lo_open, double hi, bool hi_open, double *out) {
  if (!e)
    return;
  double v = fe_num_arg(L, e, pool_printf(L->tmp, "%s: '%s'", opt, key));
  bool bad = v < lo || (lo_open && v == lo) || v > hi || (hi_open && v == hi);
  if (bad) {
    if (hi == INFINITY)
      kiln_fail(e->loc, "%s: '%s' must %s, got %s", opt, key,
                lo_open ? "be positive" : "not be negative", fe_fmt_num(L, v));
    kiln_fail(e->loc, "%s: '%s' must be in %c%s, %s%c, got %s", opt, key, lo_open ? '(' : '[',
              fe_fmt_num(L, lo), fe_fmt_num(L, hi), hi_open ? ')' : ']', fe_fmt_num(L, v));
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
  fe_bind_args(e->name, o->params, np, o->nrequired, e, arg);
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
  case OPT_ADAMW: t->weight_decay = 1e-2; break;
  default: break;
  }
  opt_num(L, n, "lr", a[A_LR], 0, false, INFINITY, false, &t->lr);
  if (a[A_WD]) {
    t->weight_decay = fe_num_arg(L, a[A_WD], pool_printf(L->tmp, "%s: 'weight_decay'", n));
    if (t->weight_decay < 0)
      kiln_fail(a[A_WD]->loc, "%s: 'weight_decay' must not be negative", n);
  }
  if (o->kind != OPT_SGD && a[A_EPS]) {
    t->eps = fe_num_arg(L, a[A_EPS], pool_printf(L->tmp, "%s: 'eps'", n));
    if (t->eps <= 0)
      kiln_fail(a[A_EPS]->loc, "%s: 'eps' must be positive", n);
  }
  switch (o->kind) {
  case OPT_ADAM:
  case OPT_ADAMW:
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
      t->centered = fe_bool_arg(a[A_Y], "rmsprop: 'centered'");
    break;
  case OPT_ADADELTA:
    opt_num(L, n, "rho", a[A_X], 0, false, 1, false, &t->rho);
    break;
  case OPT_SGD:
    if (a[A_MOM]) {
      t->momentum = fe_num_arg(L, a[A_MOM], "sgd: 'momentum'");
      if (t->momentum < 0)
        kiln_fail(a[A_MOM]->loc, "sgd: 'momentum' must not be negative");
    }
    if (a[A_X])
      t->dampening = fe_num_arg(L, a[A_X], "sgd: 'dampening'");
    if (a[A_Y])
      t->nesterov = fe_bool_arg(a[A_Y], "sgd: 'nesterov'");
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
  fe_bind_args(n, en ? two : mn ? c : one, en ? 2 : 1, en ? 2 : 1, e, a);
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
  fe_bind_args("patience", p, 1, 1, e, a);
  return (int)fe_int_arg(L, a[0], 1, INT32_MAX, "patience");
}

/* Names of layers or parameters: NAME or [NAME, ...], added to out (in the graph's pool, since
 * train.c resolves them when the parameters exist). */
static void train_names(Lower *L, const Expr *e, const char *what, TrainNames *out) {
  int n = e->kind == EX_LIST ? e->nitems : 1;
  const char **names = pool_alloc(L->g->pool, (size_t)(out->n + n) * sizeof *names);
  Loc *locs = pool_alloc(L->g->pool, (size_t)(out->n + n) * sizeof *locs);
  if (out->n) {
    memcpy(names, out->names, (size_t)out->n * sizeof *names);
    memcpy(locs, out->locs, (size_t)out->n * sizeof *locs);
  }
  for (int i = 0; i < n; i++) {
    const Expr *it = e->kind == EX_LIST ? e->items[i] : e;
    if (it->kind != EX_NAME)
      kiln_fail(it->loc, "%s: expected a layer or parameter name", what);
    names[out->n] = pool_strdup(L->g->pool, it->name);
    locs[out->n++] = it->loc;
  }
  out->names = names;
  out->locs = locs;
}

/* param_groups = [group(NAME, ..., lr=X), ...]: torch.optim's parameter groups, of which only
 * the learning rate may differ. */
static void train_groups(Lower *L, TrainSpec *t, const Expr *e) {
  int n = e->kind == EX_LIST ? e->nitems : 1;
  t->groups = pool_alloc(L->g->pool, (size_t)n * sizeof *t->groups);
  for (int i = 0; i < n; i++) {
    const Expr *it = e->kind == EX_LIST ? e->items[i] : e;
    if (it->kind != EX_CALL || strcmp(it->name, "group"))
      kiln_fail(it->loc, "param_groups: expected group(NAME, ..., lr=X), e.g. group(fc2, lr=0.01)");
    TrainGroup *gr = &t->groups[t->ngroups++];
    memset(gr, 0, sizeof *gr);
    gr->loc = it->loc;
    gr->lr = -1;
    for (int a = 0; a < it->nargs; a++) {
      const Arg *arg = &it->args[a];
      if (!arg->name) {
        train_names(L, arg->value, "group", &gr->members);
      } else if (!strcmp(arg->name, "lr")) {
        gr->lr = -1;
        opt_num(L, "group", "lr", arg->value, 0, false, INFINITY, false, &gr->lr);
      } else {
        kiln_fail(arg->loc, "group: only 'lr' may differ between parameter groups, not '%s'",
                  arg->name);
      }
    }
    if (gr->members.n == 0)
      kiln_fail(it->loc, "group: name the layers or parameters it holds");
    if (gr->lr < 0)
      kiln_fail(it->loc, "group: give its learning rate, e.g. lr=0.01");
  }
}

/* clip = "norm" "(" max_norm ")" | "value" "(" clip_value ")" */
static void train_clip(Lower *L, TrainSpec *t, const Expr *e) {
  static const char *const expect =
      "expected gradient clipping: norm(max_norm) or value(clip_value)";
  if (e->kind != EX_CALL && e->kind != EX_NAME)
    kiln_fail(e->loc, "%s", expect);
  bool norm = !strcmp(e->name, "norm");
  if (!norm && strcmp(e->name, "value"))
    kiln_fail(e->loc, "unknown gradient clipping '%s'; %s", e->name, expect);
  const char *param = norm ? "max_norm" : "clip_value";
  if (e->kind == EX_NAME)
    kiln_fail(e->loc, "%s needs its argument: write %s(%s)", e->name, e->name, param);
  Expr *a[1];
  fe_bind_args(e->name, &param, 1, 1, e, a);
  t->clip = norm ? CLIP_NORM : CLIP_VALUE;
  opt_num(L, e->name, param, a[0], 0, true, INFINITY, false, &t->clip_at);
}

/* schedule = "step" "(" step_size ["," gamma] ")" | "exponential" "(" gamma ")"
 *          | "cosine" "(" t_max ["," eta_min] ")"
 * torch.optim.lr_scheduler's StepLR, ExponentialLR and CosineAnnealingLR, counted in epochs. */
static void train_schedule(Lower *L, TrainSpec *t, const Expr *e) {
  static const char *const expect = "expected a learning-rate schedule: step(step_size, "
                                    "gamma=0.1), exponential(gamma) or cosine(t_max, eta_min=0)";
  static const struct {
    const char *name, *signature;
    int kind;
    const char *params[2];
  } schedules[] = {{"step", "step(step_size, gamma=0.1)", KILN_LR_STEP, {"step_size", "gamma"}},
                   {"exponential", "exponential(gamma)", KILN_LR_EXPONENTIAL, {"gamma", NULL}},
                   {"cosine", "cosine(t_max, eta_min=0)", KILN_LR_COSINE, {"t_max", "eta_min"}}};
  if (e->kind != EX_CALL && e->kind != EX_NAME)
    kiln_fail(e->loc, "%s", expect);
  size_t k = 0, n = sizeof schedules / sizeof *schedules;
  while (k < n && strcmp(schedules[k].name, e->name))
    k++;
  if (k == n)
    kiln_fail(e->loc, "unknown learning-rate schedule '%s'; %s", e->name, expect);
  const char *name = schedules[k].name;
  if (e->kind == EX_NAME)
    kiln_fail(e->loc, "%s needs arguments: write %s", name, schedules[k].signature);
  Expr *a[2] = {0};
  fe_bind_args(name, schedules[k].params, schedules[k].params[1] ? 2 : 1, 1, e, a);
  t->schedule = schedules[k].kind;
  switch (t->schedule) {
  case KILN_LR_STEP:
    t->step_size = fe_int_arg(L, a[0], 1, INT32_MAX, "step: 'step_size'");
    t->gamma = 0.1;
    opt_num(L, name, "gamma", a[1], 0, true, INFINITY, false, &t->gamma);
    break;
  case KILN_LR_EXPONENTIAL:
    opt_num(L, name, "gamma", a[0], 0, true, INFINITY, false, &t->gamma);
    break;
  case KILN_LR_COSINE:
    t->t_max = fe_int_arg(L, a[0], 1, INT32_MAX, "cosine: 't_max'");
    opt_num(L, name, "eta_min", a[1], 0, false, INFINITY, false, &t->eta_min);
    break;
  }
}

static const char *const train_keys[] = {"optimizer", "batch", "epochs", "steps", "seed", "init",
                                         "regularize", "early_stop", "freeze", "param_groups",
                                         "clip", "schedule", "warmup"};

NnInit fe_read_train(Lower *L, const Stmt *s, TrainSpec *t) {
  NnInit init = {NN_INIT_DEFAULT, 0};
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
      t->batch = fe_int_arg(L, st->value, 1, INT32_MAX, what);
      break;
    case 2:
      t->epochs = (int)fe_int_arg(L, st->value, 1, INT32_MAX, what);
      break;
    case 3:
      t->steps = fe_int_arg(L, st->value, 0, INT64_C(1) << 40, what);
      break;
    case 4:
      t->seed = (uint64_t)fe_int_arg(L, st->value, 0, INT64_C(1) << 53, what);
      break;
    case 5:
      init = fe_init_spec(L, st->value);
      if (init.kind == NN_INIT_LSUV) {
        t->lsuv = true;
        init = (NnInit){KILN_INIT_ORTHOGONAL, 1};
      }
      t->init = init.kind;
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
    case 8:
      train_names(L, st->value, "freeze", &t->freeze);
      break;
    case 9:
      train_groups(L, t, st->value);
      break;
    case 10:
      train_clip(L, t, st->value);
      break;
    case 11:
      train_schedule(L, t, st->value);
      break;
    case 12:
      t->warmup = fe_int_arg(L, st->value, 0, INT32_MAX, what);
      break;
    default:
      kiln_fail(st->loc, "unknown train setting '%s'; expected optimizer, batch, epochs, steps, "
                         "seed, init, regularize, early_stop, freeze, param_groups, clip, "
                         "schedule or warmup", st->key);
    }
  }
  return init;
}
