/*
 * train.c — turns a model into its entry points: train, eval, grad and apply.
 *
 * The optimizer is part of the graph: its moments and step count are persistent leaves (role
 * OPT), the learning rate is a hyper-parameter leaf the driver can override (--lr), and the
 * update is ordinary nodes that autodiff, the planner, the code generator and the reference
 * interpreter treat like any other. Formulas follow PyTorch's torch.optim so that a kiln run
 * and a PyTorch run from the same parameters take the same steps.
 *
 * train is the fused step; grad and apply are the same step cut in two at the gradients, which
 * grad stores in persistent GRAD leaves ("grad.<param>") and apply reads, so that a host can
 * accumulate or all-reduce them in between. The optimizer is built twice, once from the
 * gradient nodes and once from the GRAD leaves; hash-consing shares everything else, and both
 * entries compute every value the same way, so grad then apply is bit-identical to train.
 * Gradient clipping is the optimizer's first step, so apply clips the gradients the host left
 * (the all-reduced total, not each part). The learning-rate schedule is not in the graph: the
 * trainer writes each epoch's rate into the "lr" leaf (runtime/rt_schedule.c).
 *
 * On demand (kiln jvp / kiln hvp), the grad entry also gets directional derivatives: tangent
 * inputs per parameter and forward-mode nodes (ad_forward.c) over the loss, the output or the
 * gradient itself (Hessian-vector products).
 */
#include <stdlib.h>
#include <string.h>

#include "xform/xform.h"

/* What the names kiln gives the training outputs are for (ir_claim_name). */
static const char loss_what[] = "the minimised loss, an output of training";
static const char penalty_what[] = "the regularization penalty, an output of training";

/* The leaf of an optimizer built a second time (apply after train) already exists. */
static int existing(Graph *g, const char *name, Role role) {
  int id = ir_find_leaf(g, name);
  return id >= 0 && ir_at(g, id)->role == role ? id : -1;
}

/* A persistent optimizer tensor shaped like param p, named "<param>.<suffix>". */
static int opt_state(Graph *g, int p, const char *suffix) {
  Node *pn = ir_at(g, p);
  const char *name = pool_printf(g->pool, "%s.%s", pn->name, suffix);
  int id = existing(g, name, ROLE_OPT);
  if (id >= 0) return id;
  ir_claim_name(g, name, pool_printf(g->pool, "the optimizer's state '%s' of parameter '%s'",
                                     suffix, pn->name));
  id = ir_leaf(g, OP_STATE, ROLE_OPT, name, pn->dtype, pn->shape, pn->loc);
  ir_at(g, id)->leaf.init = KILN_INIT_ZEROS;
  return id;
}

static int scalar_state(Graph *g, Role role, const char *name, const char *what, DType dt,
                        double init, Loc loc) {
  Shape s = {0};
  int id = existing(g, name, role);
  if (id >= 0) return id;
  ir_claim_name(g, name, what);
  id = ir_leaf(g, OP_STATE, role, name, dt, s, loc);
  ir_at(g, id)->leaf.init = KILN_INIT_CONST;
  ir_at(g, id)->leaf.init_a = init;
  return id;
}

/* Whether a name from the train block (a layer, or a parameter) covers parameter `param`. */
static bool names_param(const char *name, const char *param) {
  size_t n = strlen(name);
  return !strncmp(name, param, n) && (param[n] == 0 || param[n] == '.');
}

/* covered[i]: parameter i is named by tn; a name that covers no parameter fails at its place. */
static bool *covered(Graph *g, const TrainNames *tn, const char *what) {
  bool *in = pool_alloc(g->pool, (size_t)g->nparams * sizeof *in);
  memset(in, 0, (size_t)g->nparams * sizeof *in);
  for (int k = 0; k < tn->n; k++) {
    bool any = false;
    for (int i = 0; i < g->nparams; i++)
      if (names_param(tn->names[k], ir_at(g, g->params[i])->name)) in[i] = any = true;
    if (!any)
      kiln_fail(tn->locs[k], "%s: '%s' names no layer or parameter of the model (the first is "
                "'%s')", what, tn->names[k], ir_at(g, g->params[0])->name);
  }
  return in;
}

/* freeze: marks the frozen parameters, which must leave some to train. */
static void mark_frozen(Graph *g, const TrainSpec *ts) {
  bool *frozen = covered(g, &ts->freeze, "freeze");
  int left = 0;
  for (int i = 0; i < g->nparams; i++) {
    ir_at(g, g->params[i])->leaf.frozen = frozen[i];
    left += !frozen[i];
  }
  if (!left) kiln_fail(ts->freeze.locs[0], "freeze: every parameter is frozen; nothing is left to train");
}

/* param_groups: each parameter's learning rate as a multiple of the model's, so that --lr and a
 * schedule scale every group alike (as torch's schedulers scale each group's initial lr). */
static double *lr_scales(Graph *g, const TrainSpec *ts) {
  double *scale = pool_alloc(g->pool, (size_t)g->nparams * sizeof *scale);
  for (int i = 0; i < g->nparams; i++) scale[i] = 1;
  bool *seen = pool_alloc(g->pool, (size_t)g->nparams * sizeof *seen);
  memset(seen, 0, (size_t)g->nparams * sizeof *seen);
  for (int k = 0; k < ts->ngroups; k++) {
    const TrainGroup *gr = &ts->groups[k];
    if (!(ts->lr > 0))
      kiln_fail(gr->loc, "param_groups: the optimizer's lr must be positive to scale from");
    bool *in = covered(g, &gr->members, "group");
    for (int i = 0; i < g->nparams; i++) {
      if (!in[i]) continue;
      if (seen[i])
        kiln_fail(gr->loc, "param_groups: '%s' is in two groups", ir_at(g, g->params[i])->name);
      seen[i] = true;
      scale[i] = gr->lr / ts->lr;
    }
  }
  return scale;
}

typedef struct OptCtx {
  Graph *g;
  const TrainSpec *ts;
  DType dt;
  Loc loc;
  EntryKind entry; /* the entry the updates go to: train or apply */
  int lr;    /* hyper-parameter leaf */
  int step;  /* Adam's step count after this update (t + 1) */
  int started; /* SGD with dampening: 0 before the first update, then 1 */
  const double *lr_scale; /* per parameter: its group's lr over the model's (param_groups) */
} OptCtx;

static int k(OptCtx *c, double v) { return ir_const(c->g, v, c->dt, c->loc); }
static int add(OptCtx *c, int a, int b) { return ir_binary(c->g, OP_ADD, a, b, c->loc); }
static int sub(OptCtx *c, int a, int b) { return ir_binary(c->g, OP_SUB, a, b, c->loc); }
static int mul(OptCtx *c, int a, int b) { return ir_binary(c->g, OP_MUL, a, b, c->loc); }
static int dvd(OptCtx *c, int a, int b) { return ir_binary(c->g, OP_DIV, a, b, c->loc); }
static void upd(OptCtx *c, int target, int value) { ir_add_update(c->g, c->entry, target, value); }

/* torch.optim's L2 weight decay: the gradient plus wd·p (nothing when wd is 0). */
static int decayed(OptCtx *c, int p, int grad) {
  double wd = c->ts->weight_decay;
  return wd != 0 ? add(c, grad, mul(c, k(c, wd), p)) : grad;
}

/* An exponential moving average: beta·avg + (1 − beta)·x. */
static int ema(OptCtx *c, double beta, int avg, int x) {
  return add(c, mul(c, k(c, beta), avg), mul(c, k(c, 1 - beta), x));
}

/* torch.optim.SGD: g += wd·p; buf = μ·buf + (1−dampening)·g; g = nesterov ? g + μ·buf : buf;
 * p −= lr·g. PyTorch seeds buf with the undamped g on the first step; buf starts at zero here,
 * so with dampening the first step's factor is 1 instead, through c->started (0, then 1). */
static void update_sgd(OptCtx *c, int p, int grad) {
  const TrainSpec *ts = c->ts;
  Graph *g = c->g;
  grad = decayed(c, p, grad);
  if (ts->momentum != 0) {
    int buf = opt_state(g, p, "momentum_buffer");
    int damp = ts->dampening == 0 ? k(c, 1)
                                  : sub(c, k(c, 1), mul(c, k(c, ts->dampening), c->started));
    int nbuf = add(c, mul(c, k(c, ts->momentum), buf), mul(c, damp, grad));
    upd(c, buf, nbuf);
    grad = ts->nesterov ? add(c, grad, mul(c, k(c, ts->momentum), nbuf)) : nbuf;
  }
  upd(c, p, sub(c, p, mul(c, c->lr, grad)));
}

/* Adam's step of parameter p from the value `from` (p itself, or AdamW's decayed p):
 * m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
 * p = from − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + ε). */
static void adam_step(OptCtx *c, int p, int from, int grad) {
  const TrainSpec *ts = c->ts;
  Graph *g = c->g;
  int m = opt_state(g, p, "exp_avg"), v = opt_state(g, p, "exp_avg_sq");
  int nm = ema(c, ts->beta1, m, grad);
  int nv = ema(c, ts->beta2, v, mul(c, grad, grad));
  int bc1 = sub(c, k(c, 1), ir_binary(g, OP_POW, k(c, ts->beta1), c->step, c->loc));
  int bc2 = sub(c, k(c, 1), ir_binary(g, OP_POW, k(c, ts->beta2), c->step, c->loc));
  int step_size = dvd(c, c->lr, bc1);
  int denom = add(c, dvd(c, ir_unary(g, OP_SQRT, nv, c->loc), ir_unary(g, OP_SQRT, bc2, c->loc)),
                  k(c, ts->eps));
  upd(c, m, nm);
  upd(c, v, nv);
  upd(c, p, sub(c, from, mul(c, step_size, dvd(c, nm, denom))));
}

/* torch.optim.Adam: the L2 weight decay enters the gradient, then Adam's step. */
static void update_adam(OptCtx *c, int p, int grad) { adam_step(c, p, p, decayed(c, p, grad)); }

/* torch.optim.AdamW (1.13's order): p ← p·(1 − lr·wd), i.e. p − lr·wd·p rounded as torch's
 * mul_ does, then Adam's step from the decayed p with the undecayed gradient. */
static void update_adamw(OptCtx *c, int p, int grad) {
  double wd = c->ts->weight_decay;
  int from = wd != 0 ? mul(c, p, sub(c, k(c, 1), mul(c, c->lr, k(c, wd)))) : p;
  adam_step(c, p, from, grad);
}

/* torch.optim.Adagrad: g += wd·p; clr = lr / (1 + (t−1)·lr_decay); sum += g²;
 * p −= clr · g / (sqrt(sum) + ε). torch seeds sum with initial_accumulator_value; optimizer
 * state starts at zero here, so "<param>.sum" holds the accumulated squares and the update
 * adds the initial value back: the same steps. */
static void update_adagrad(OptCtx *c, int p, int grad) {
  const TrainSpec *ts = c->ts;
  Graph *g = c->g;
  grad = decayed(c, p, grad);
  int sum = opt_state(g, p, "sum");
  int nsum = add(c, sum, mul(c, grad, grad));
  upd(c, sum, nsum);
  int acc = ts->initial_accumulator_value != 0 ? add(c, nsum, k(c, ts->initial_accumulator_value))
                                               : nsum;
  int clr = c->lr;
  if (ts->lr_decay != 0) /* c->step is t − 1 here: the count before this update */
    clr = dvd(c, c->lr, add(c, k(c, 1), mul(c, c->step, k(c, ts->lr_decay))));
  int denom = add(c, ir_unary(g, OP_SQRT, acc, c->loc), k(c, ts->eps));
  upd(c, p, sub(c, p, mul(c, clr, dvd(c, grad, denom))));
}

/* torch.optim.RMSprop: g += wd·p; v = α·v + (1−α)·g²; centered: ḡ = α·ḡ + (1−α)·g,
 * ṽ = v − ḡ², else ṽ = v; momentum μ > 0: b = μ·b + g/(sqrt(ṽ) + ε), p −= lr·b;
 * otherwise p −= lr · g/(sqrt(ṽ) + ε). */
static void update_rmsprop(OptCtx *c, int p, int grad) {
  const TrainSpec *ts = c->ts;
  Graph *g = c->g;
  grad = decayed(c, p, grad);
  int v = opt_state(g, p, "square_avg");
  int nv = ema(c, ts->alpha, v, mul(c, grad, grad));
  upd(c, v, nv);
  int avg = nv;
  if (ts->centered) {
    int ga = opt_state(g, p, "grad_avg");
    int nga = ema(c, ts->alpha, ga, grad);
    upd(c, ga, nga);
    avg = sub(c, nv, mul(c, nga, nga));
  }
  int step = dvd(c, grad, add(c, ir_unary(g, OP_SQRT, avg, c->loc), k(c, ts->eps)));
  if (ts->momentum > 0) {
    int buf = opt_state(g, p, "momentum_buffer");
    step = add(c, mul(c, k(c, ts->momentum), buf), step);
    upd(c, buf, step);
  }
  upd(c, p, sub(c, p, mul(c, c->lr, step)));
}

/* torch.optim.Adadelta: g += wd·p; v = ρ·v + (1−ρ)·g²; Δ = sqrt(u + ε)/sqrt(v + ε) · g;
 * u = ρ·u + (1−ρ)·Δ²; p −= lr·Δ. */
static void update_adadelta(OptCtx *c, int p, int grad) {
  const TrainSpec *ts = c->ts;
  Graph *g = c->g;
  grad = decayed(c, p, grad);
  int v = opt_state(g, p, "square_avg"), u = opt_state(g, p, "acc_delta");
  int nv = ema(c, ts->rho, v, mul(c, grad, grad));
  int eps = k(c, ts->eps);
  int delta = mul(c, dvd(c, ir_unary(g, OP_SQRT, add(c, u, eps), c->loc),
                         ir_unary(g, OP_SQRT, add(c, nv, eps), c->loc)),
                  grad);
  int nu = ema(c, ts->rho, u, mul(c, delta, delta));
  upd(c, v, nv);
  upd(c, u, nu);
  upd(c, p, sub(c, p, mul(c, c->lr, delta)));
}

/* The regularization penalty l1·Σ|w| + (l2/2)·Σw² over every weight (LeafInfo.weight), or -1
 * when there is none. |w| is relu(w) + relu(−w), whose gradient is sign(w) with 0 at 0 like
 * torch.abs's. */
static int penalty(OptCtx *c) {
  const TrainSpec *ts = c->ts;
  Graph *g = c->g;
  int pen = -1;
  for (int i = 0; i < g->nparams; i++) {
    int p = g->params[i];
    Node *pn = ir_at(g, p);
    if (!pn->leaf.weight || pn->leaf.frozen) continue;
    unsigned all = (1u << pn->shape.rank) - 1;
    int term = -1;
    if (ts->reg_l1 > 0) {
      int abs = add(c, ir_unary(g, OP_RELU, p, c->loc),
                    ir_unary(g, OP_RELU, ir_unary(g, OP_NEG, p, c->loc), c->loc));
      term = mul(c, k(c, ts->reg_l1), ir_reduce(g, OP_SUM, abs, all, false, c->loc));
    }
    if (ts->reg_l2 > 0) {
      int sq = mul(c, k(c, ts->reg_l2 / 2), ir_reduce(g, OP_SUM, mul(c, p, p), all, false, c->loc));
      term = term < 0 ? sq : add(c, term, sq);
    }
    if (term >= 0) pen = pen < 0 ? term : add(c, pen, term);
  }
  return pen;
}

/* max_norm(c): after the update, each output unit's incoming weight vector (a weight's slice
 * along its first axis: a row of linear's [out, in], a filter of conv2d's [O, C, kh, kw]) is
 * scaled by c / max(‖w‖, c), i.e. projected onto the ball of radius c. Rank-1 weights do not
 * exist (LeafInfo.weight needs rank >= 2). */
static int project_max_norm(OptCtx *c, int p, int updated) {
  Graph *g = c->g;
  Node *pn = ir_at(g, p);
  unsigned rest = ((1u << pn->shape.rank) - 1) & ~1u;
  int norm = ir_unary(g, OP_SQRT, ir_reduce(g, OP_SUM, mul(c, updated, updated), rest, true,
                                            c->loc), c->loc);
  int cap = k(c, c->ts->max_norm);
  int excess = ir_unary(g, OP_RELU, sub(c, norm, cap), c->loc);
  return mul(c, updated, dvd(c, cap, add(c, cap, excess)));
}

/* The smaller of a and b through the MAXIMUM primitive, −max(−a, −b) (negation is exact), as
 * nn_minimum builds it; the optimizer is never differentiated, so the tie share is moot. */
static int minimum(OptCtx *c, int a, int b) {
  Graph *g = c->g;
  Attr at = {0};
  int in[2] = {ir_unary(g, OP_NEG, a, c->loc), ir_unary(g, OP_NEG, b, c->loc)};
  return ir_unary(g, OP_NEG, ir_node(g, OP_MAXIMUM, 2, in, &at, c->loc), c->loc);
}

static int maximum(OptCtx *c, int a, int b) {
  Attr at = {0};
  int in[2] = {a, b};
  return ir_node(c->g, OP_MAXIMUM, 2, in, &at, c->loc);
}

/* Gradient clipping, into clipped[i] from grads[i] (the gradients the optimizer is built from,
 * so apply clips what the host left in the GRAD leaves, e.g. all-reduced gradients):
 * - norm: torch.nn.utils.clip_grad_norm_ (1.13): total = ‖(‖g_1‖, ..., ‖g_n‖)‖ over every
 *   parameter's gradient, coef = min(max_norm / (total + 1e-6), 1), g_i ← g_i·coef;
 * - value: clip_grad_value_: g_i ← clamp(g_i, −v, v). */
static void clip_gradients(OptCtx *c, const int *grads, int *clipped) {
  Graph *g = c->g;
  double at = c->ts->clip_at;
  if (c->ts->clip == CLIP_VALUE) {
    for (int i = 0; i < g->nparams; i++)
      clipped[i] = grads[i] < 0 ? -1 : minimum(c, maximum(c, grads[i], k(c, -at)), k(c, at));
    return;
  }
  int total = -1; /* Σ‖g_i‖² over the parameters that train (frozen ones have none), then its
                     square root */
  for (int i = 0; i < g->nparams; i++) {
    if (grads[i] < 0) continue;
    int rank = ir_at(g, grads[i])->shape.rank, sq = mul(c, grads[i], grads[i]);
    if (rank > 0)
      sq = ir_reduce(g, OP_SUM, sq, (1u << rank) - 1, false, c->loc);
    int norm = ir_unary(g, OP_SQRT, sq, c->loc);
    total = total < 0 ? mul(c, norm, norm) : add(c, total, mul(c, norm, norm));
  }
  total = ir_unary(g, OP_SQRT, total, c->loc);
  int coef = minimum(c, dvd(c, k(c, at), add(c, total, k(c, 1e-6))), k(c, 1));
  for (int i = 0; i < g->nparams; i++)
    clipped[i] = grads[i] < 0 ? -1 : mul(c, grads[i], coef);
}

/* The optimizer's updates into entry e, from grads[i], the gradient of the i-th parameter
 * (clipped first when the train block says so). Built once from the gradient nodes (train) and
 * once from the GRAD leaves (apply): the second time the optimizer's leaves are found by name and
 * hash-consing returns every node that does not read a gradient, so both entries compute each
 * value with the same nodes. */
static void optimizer_step(OptCtx *c, EntryKind e, const int *grads) {
  Graph *g = c->g;
  const TrainSpec *ts = c->ts;
  c->entry = e;
  if (ts->clip != CLIP_NONE) {
    int *clipped = pool_alloc(g->pool, (size_t)g->nparams * sizeof(int));
    clip_gradients(c, grads, clipped);
    grads = clipped;
  }
  c->lr = scalar_state(g, ROLE_HYPER, "lr", "the learning rate, which the trainer sets", c->dt, ts->lr, ts->loc);
  if (ts->optimizer == OPT_ADAM || ts->optimizer == OPT_ADAMW) {
    bool w = ts->optimizer == OPT_ADAMW;
    int t = scalar_state(g, ROLE_OPT, w ? "adamw.step" : "adam.step",
                         w ? "AdamW's step count" : "Adam's step count", c->dt, 0, ts->loc);
    c->step = add(c, t, k(c, 1));
    upd(c, t, c->step);
  } else if (ts->optimizer == OPT_ADAGRAD && ts->lr_decay != 0) {
    c->step = scalar_state(g, ROLE_OPT, "adagrad.step", "Adagrad's step count",
                           c->dt, 0, ts->loc);
    upd(c, c->step, add(c, c->step, k(c, 1)));
  } else if (ts->optimizer == OPT_SGD && ts->momentum != 0 && ts->dampening != 0) {
    c->started = scalar_state(g, ROLE_OPT, "sgd.started", "SGD's first-step flag",
                              c->dt, 0, ts->loc);
    upd(c, c->started, k(c, 1));
  }
  static void (*const updates[])(OptCtx *, int, int) = {
      [OPT_SGD] = update_sgd, [OPT_ADAM] = update_adam, [OPT_ADAGRAD] = update_adagrad,
      [OPT_RMSPROP] = update_rmsprop, [OPT_ADADELTA] = update_adadelta,
      [OPT_ADAMW] = update_adamw};
  int lr = c->lr;
  for (int i = 0; i < g->nparams; i++) {
    if (grads[i] < 0) continue; /* frozen */
    c->lr = c->lr_scale[i] == 1 ? lr : mul(c, lr, k(c, c->lr_scale[i]));
    updates[ts->optimizer](c, g->params[i], grads[i]);
  }
  c->lr = lr;
  if (ts->max_norm > 0) { /* project the new value of every weight: rewrite its update */
    Entry *en = &g->entries[e];
    for (int u = 0; u < en->nupdates; u++) {
      Update *up = &en->updates[u];
      Node *tn = ir_at(g, up->target);
      if (tn->op == OP_PARAM && tn->leaf.weight)
        up->value = project_max_norm(c, up->target, up->value);
    }
  }
}

/* eval: the evaluation-mode loss, the declared outputs and metrics, and what the trainer's
 * options read. */
static void eval_outputs(Graph *g) {
  const TrainSpec *ts = &g->train;
  if (g->loss_eval >= 0)
    ir_add_output(g, ENTRY_EVAL, "eval.loss", g->loss_eval, "the loss in evaluation mode");
  if (g->output_eval >= 0)
    ir_add_output(g, ENTRY_EVAL, "eval.output", g->output_eval,
                  "the declared output in evaluation mode");
  for (int i = 0; i < g->nmore_outputs; i++)
    ir_add_output(g, ENTRY_EVAL, pool_printf(g->pool, "eval.output.%s", g->more_output_names[i]),
                  g->more_outputs[i], "a further output in evaluation mode");
  for (int i = 0; i < g->nmetrics; i++)
    ir_add_output(g, ENTRY_EVAL, pool_printf(g->pool, "eval.metric.%s", g->metric_names[i]),
                  g->metrics[i], "a metric the trainer reports");
  /* --diagnose: every activation, whose dead or saturated units the trainer counts. */
  for (int i = 0; ts->diagnose && i < g->nacts; i++)
    ir_add_output(g, ENTRY_EVAL, pool_printf(g->pool, "diag.%s", g->act_names[i]), g->acts[i],
                  "an activation, for --diagnose");
  /* init = lsuv: every layer's output, which the trainer scales to unit variance. */
  for (int i = 0; ts->lsuv && i < g->nlayers; i++)
    ir_add_output(g, ENTRY_EVAL,
                  pool_printf(g->pool, "lsuv.%s", ir_at(g, g->layer_weight[i])->name),
                  g->layer_output[i], "a layer's output, for init = lsuv");
}

/* Data-parallel training: each process holds n_p of the batch's n examples, and its loss is the
 * mean over its own. The global loss, the mean over all n, is Σ_p (n_p / n)·loss_p: each process
 * differentiates its share (n_p / n)·loss_p, so the gradients summed over processes (the
 * trainer's allreduce) are the global loss's gradient, uneven splits included; batch statistics
 * already couple the processes through their own allreduce nodes. *reported is the global loss,
 * the same number in every process. */
static int share_of_processes(OptCtx *c, int objective, int *reported) {
  Graph *g = c->g;
  int batch_input = -1;
  for (int i = 0; i < g->nnodes && batch_input < 0; i++) {
    const Node *n = ir_at(g, i);
    if (n->op == OP_INPUT && n->role == ROLE_INPUT && n->shape.rank > 0 && n->shape.d[0].sym >= 0 &&
        n->dtype == c->dt)
      batch_input = i;
  }
  if (batch_input < 0)
    kiln_fail(c->ts->loc, "data-parallel training splits the batch, but the model has no %s "
              "input with the batch as its first axis", dtype_name(c->dt));
  int n_here = ir_reduce(g, OP_NUMEL, batch_input, 1u, false, c->loc);
  int n_all = ir_unary(g, OP_ALLREDUCE, n_here, c->loc);
  int share = mul(c, objective, ir_binary(g, OP_DIV, n_here, n_all, c->loc));
  *reported = ir_unary(g, OP_ALLREDUCE, share, c->loc);
  return share;
}

void train_build(Graph *g) {
  const TrainSpec *ts = &g->train;
  if (g->loss_train < 0) { /* an inference model: the eval entry alone */
    g->entries[ENTRY_TRAIN].nupdates = 0;
    eval_outputs(g);
    return;
  }
  Node *loss = ir_at(g, g->loss_train);
  if (loss->shape.rank != 0) {
    char sb[128];
    kiln_fail(loss->loc, "the loss must be a scalar, but it has shape %s",
              shape_str(g, &loss->shape, sb, sizeof sb));
  }
  if (g->nparams == 0) kiln_fail(ts->loc, "the model has no parameters to train");
  DType dt = ir_at(g, g->params[0])->dtype;
  for (int i = 0; i < g->nparams; i++) {
    Node *p = ir_at(g, g->params[i]);
    if (p->dtype != dt)
      kiln_fail(p->loc, "parameter '%s' is %s but '%s' is %s: one element type per model",
                p->name, dtype_name(p->dtype), ir_at(g, g->params[0])->name, dtype_name(dt));
  }
  if (loss->dtype != dt)
    kiln_fail(loss->loc, "the loss is %s but the parameters are %s", dtype_name(loss->dtype),
              dtype_name(dt));

  /* grad: the loss and d loss / d param for every parameter. */
  int nparams = g->nparams;  /* optimizer leaves below are STATE, so this stays fixed */
  mark_frozen(g, ts);
  OptCtx c = {.g = g, .ts = ts, .dt = dt, .loc = ts->loc, .lr_scale = lr_scales(g, ts)};
  /* The minimised objective: the model's loss plus the regularization penalty, built before
   * autodiff so its gradient comes from the ordinary rules. grad and train report it as
   * "loss", and the penalty alone as "penalty"; the eval entry's loss has no penalty. */
  int pen = penalty(&c), objective = g->loss_train;
  if (pen >= 0) objective = add(&c, g->loss_train, pen);
  int reported = objective;
  if (g->data_parallel) objective = share_of_processes(&c, objective, &reported);
  /* Only the parameters that train are differentiated: the backward pass holds nothing that
   * only frozen ones would need. g->grads[i] is -1 for a frozen parameter. */
  g->grads = kiln_malloc((size_t)nparams * sizeof(int));
  int *wrt = pool_alloc(g->pool, (size_t)nparams * sizeof(int)), ntrain = 0;
  int *dwrt = pool_alloc(g->pool, (size_t)nparams * sizeof(int));
  for (int i = 0; i < nparams; i++)
    if (!ir_at(g, g->params[i])->leaf.frozen) wrt[ntrain++] = g->params[i];
  ad_reverse(g, objective, wrt, ntrain, dwrt);
  for (int i = 0, j = 0; i < nparams; i++)
    g->grads[i] = ir_at(g, g->params[i])->leaf.frozen ? -1 : dwrt[j++];
  ir_add_output(g, ENTRY_GRAD, "loss", reported, loss_what);

  /* grad also does what the frontend's train updates do (running statistics, the dropout
   * counter), so that grad then apply is train; then it stores each gradient in its GRAD leaf. */
  int nfront = g->entries[ENTRY_TRAIN].nupdates;
  for (int u = 0; u < nfront; u++) {
    Update up = g->entries[ENTRY_TRAIN].updates[u];
    ir_add_update(g, ENTRY_GRAD, up.target, up.value);
  }
  if (pen >= 0) ir_add_output(g, ENTRY_GRAD, "penalty", pen, penalty_what);
  g->grad_leaves = pool_alloc(g->pool, (size_t)nparams * sizeof(int));
  for (int i = 0; i < nparams; i++) {
    Node p = *ir_at(g, g->params[i]);
    g->grad_leaves[i] = -1;
    if (p.leaf.frozen) continue;
    const char *name = pool_printf(g->pool, "grad.%s", p.name);
    ir_claim_name(g, name, pool_printf(g->pool, "the gradient of parameter '%s' (line %d)", p.name,
                                       p.loc.line));
    int id = ir_leaf(g, OP_STATE, ROLE_GRAD, name, p.dtype, p.shape, p.loc);
    ir_at(g, id)->leaf.init = KILN_INIT_ZEROS;
    g->grad_leaves[i] = id;
    ir_add_update(g, ENTRY_GRAD, id, g->grads[i]);
  }

  /* train: the loss, then every parameter's update (running statistics were added by the
   * frontend); apply: the same updates from the GRAD leaves. */
  ir_add_output(g, ENTRY_TRAIN, "loss", reported, loss_what);
  if (pen >= 0) ir_add_output(g, ENTRY_TRAIN, "penalty", pen, penalty_what);
  optimizer_step(&c, ENTRY_TRAIN, g->grads);
  optimizer_step(&c, ENTRY_APPLY, g->grad_leaves);

  eval_outputs(g);
}

/* ---- forward mode on demand: kiln jvp, kiln hvp ---- */

/* The tangent leaf of every parameter ("tangent.<param>", an INPUT shaped like it), created on
 * the first call; ids in parameter order, in the pool. */
static int *tangent_leaves(Graph *g) {
  if (!g->grads) kiln_fail((Loc){0}, "forward mode needs the grad entry: call train_build first");
  int *t = pool_alloc(g->pool, (size_t)g->nparams * sizeof(int));
  for (int i = 0; i < g->nparams; i++) {
    Node p = *ir_at(g, g->params[i]);
    const char *name = pool_printf(g->pool, "tangent.%s", p.name);
    t[i] = existing(g, name, ROLE_INPUT);
    if (t[i] >= 0) continue;
    ir_claim_name(g, name, pool_printf(g->pool, "the tangent of parameter '%s' (line %d)", p.name,
                                       p.loc.line));
    t[i] = ir_leaf(g, OP_INPUT, ROLE_INPUT, name, p.dtype, p.shape, p.loc);
  }
  return t;
}

void train_build_jvp(Graph *g) {
  int *t = tangent_leaves(g);
  int outs[2] = {g->loss_train, g->output_eval}, jvps[2];
  int nouts = g->output_eval >= 0 ? 2 : 1;
  ad_forward(g, g->params, t, g->nparams, outs, nouts, jvps);
  ir_add_output(g, ENTRY_GRAD, "jvp.loss", jvps[0], "the loss's directional derivative");
  if (nouts == 2) {
    ir_add_output(g, ENTRY_GRAD, "output", g->output_eval, "the declared output (kiln jvp)");
    ir_add_output(g, ENTRY_GRAD, "jvp.output", jvps[1], "the output's directional derivative");
  }
}

/* H v = d/dε grad(θ + ε v) at ε = 0: forward mode over the gradient nodes (forward over
 * reverse), so the cost is a small multiple of one gradient and H is never formed. */
void train_build_hvp(Graph *g) {
  int *t = tangent_leaves(g);
  /* The Hessian's rows of the parameters that train (frozen ones have no gradient). */
  int *grads = pool_alloc(g->pool, (size_t)g->nparams * sizeof(int)), n = 0;
  int *which = pool_alloc(g->pool, (size_t)g->nparams * sizeof(int));
  for (int i = 0; i < g->nparams; i++)
    if (g->grads[i] >= 0) which[n] = i, grads[n++] = g->grads[i];
  int *hv = pool_alloc(g->pool, (size_t)g->nparams * sizeof(int));
  ad_forward(g, g->params, t, g->nparams, grads, n, hv);
  for (int j = 0; j < n; j++) {
    int i = which[j];
    const Node *p = ir_at(g, g->params[i]);
    ir_add_output(g, ENTRY_GRAD, pool_printf(g->pool, "hvp.%s", p->name), hv[j],
                  pool_printf(g->pool, "the Hessian-vector product of parameter '%s' (line %d)",
                              p->name, p->loc.line));
  }
}
