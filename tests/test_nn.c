/*
 * test_nn.c — the layer library (src/nn) used directly, with no model text.
 *
 * A small CNN (conv2d, batchnorm, relu, maxpool2d, flatten, dropout, linear, cross_entropy) built
 * by nn_* calls in both modes must be, node for node, the graph the DSL lowers from the same
 * network written as a model file: same ops, shapes, inputs, attributes, leaves (names,
 * initialisers, fans), entries and updates, and the reference interpreter must compute
 * bit-identical losses, gradients and outputs from the same values. Small layers are checked
 * against values worked out by hand: linear + cross_entropy (loss and gradients), batchnorm in
 * evaluation mode and its running-statistics updates in training mode.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn/nn.h"
#include "xform/xform.h"
#include "front/front.h"
#include "ref/ref.h"

static const Loc nowhere = {0};

static Shape dims(int rank, const int64_t *n, int batch_sym) {
  Shape s = {.rank = rank};
  for (int i = 0; i < rank; i++)
    s.d[i] = (Dim){n[i], i == 0 ? batch_sym : -1};
  return s;
}

static const NnInit torch_default = {NN_INIT_DEFAULT, 0};

/* The network of cnn_text, through the layer library. */
static Graph *cnn_nn(void) {
  Graph *g = ir_new("cnn");
  int b = ir_sym(g, "B");
  int x = ir_leaf(g, OP_INPUT, ROLE_INPUT, "x", DT_F32, dims(4, (int64_t[]){1, 2, 6, 6}, b),
                  nowhere);
  int y = ir_leaf(g, OP_INPUT, ROLE_INPUT, "y", DT_I32, dims(1, (int64_t[]){1}, b), nowhere);
  for (NnMode m = NN_TRAIN; m <= NN_EVAL; m++) {
    NnLayer conv1 = {m, "conv1", nowhere, nowhere}, bn1 = {m, "bn1", nowhere, nowhere},
            drop = {m, "drop", nowhere, nowhere}, fc = {m, "fc", nowhere, nowhere};
    NnConv2d co = {.out = 4, .kernel = {3, 3}, .stride = {1, 1}, .dilation = {1, 1},
                   .groups = 1, .bias = true, .init = torch_default};
    nn_pad_mode(NN_PAD_SAME, co.kernel, co.dilation, co.pad);
    int h = nn_conv2d(g, &conv1, x, &co);
    h = nn_batchnorm(g, &bn1, h, &(NnBatchnorm){.eps = 1e-5, .momentum = 0.1, .affine = true});
    h = ir_unary(g, OP_RELU, h, nowhere);
    h = nn_maxpool2d(g, h, &(NnPool2d){.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}},
                     nowhere);
    h = nn_dropout(g, &drop, nn_flatten(g, h, nowhere), 0.25);
    int logits = nn_linear(g, &fc, h, &(NnLinear){.out = 3, .bias = true, .init = torch_default});
    int loss = nn_cross_entropy(g, logits, y, nowhere);
    if (m == NN_TRAIN) {
      g->loss_train = loss;
    } else {
      g->loss_eval = loss;
      g->output_eval = logits;
    }
  }
  train_build(g);
  return g;
}

static const char *cnn_text =
    "model cnn\n"
    "input x: f32[B, 2, 6, 6]\n"
    "input y: i32[B]\n"
    "conv1 = conv2d(x, out=4, kernel=3, pad=same)\n"
    "bn1 = batchnorm(conv1)\n"
    "h = maxpool2d(relu(bn1), kernel=2)\n"
    "d = dropout(flatten(h), p=0.25) as drop\n"
    "fc = linear(d, out=3)\n"
    "loss = cross_entropy(fc, y)\n"
    "output fc\n"
    "minimize loss\n";

static Graph *compile_text(const char *text) {
  static Trap t;
  static Graph *g;    /* static: set under the trap, read after it */
  static bool built;
  g = NULL;
  built = false;
  if (KILN_TRY(&t)) {
    g = fe_compile_string("t.kiln", text);
    train_build(g);
    built = true;
  }
  kiln_trap_end(&t);
  if (!built)
    ck_abort_msg("%s", t.msg);
  return g;
}

static Graph *cnn_dsl(void) { return compile_text(cnn_text); }

/* Everything that defines node id except its location and printing name: op, type, inputs,
 * the attributes each op reads, and for leaves their name, role and initialiser. */
static void describe(Graph *g, int id, char *out, size_t cap) {
  const Node *n = ir_at(g, id);
  const Attr *a = &n->attr;
  char sb[128], ab[128];
  int k = snprintf(out, cap, "%s %s%s in", op_names[n->op], dtype_name(n->dtype),
                   shape_str(g, &n->shape, sb, sizeof sb));
  for (int i = 0; i < n->nin; i++)
    k += snprintf(out + k, cap - (size_t)k, " %d", n->in[i]);
  k += snprintf(out + k, cap - (size_t)k,
                " v=%.17g dt=%d axes=%u keep=%d t=%d%d shape=%s win=%lld,%lld/%lld,%lld/%lld,%lld/"
                "%lld,%lld,%lld,%lld g=%lld in=%lld,%lld cip=%d axis=%d slice=%lld,%lld salt=%u",
                a->value, a->dtype, a->axes, a->keepdims, a->trans_a, a->trans_b,
                shape_str(g, &a->shape, ab, sizeof ab), (long long)a->kernel[0],
                (long long)a->kernel[1], (long long)a->stride[0], (long long)a->stride[1],
                (long long)a->dilation[0], (long long)a->dilation[1], (long long)a->pad[0],
                (long long)a->pad[1], (long long)a->pad[2], (long long)a->pad[3],
                (long long)a->groups, (long long)a->in_size[0], (long long)a->in_size[1],
                a->count_include_pad, a->axis, (long long)a->start, (long long)a->len, a->salt);
  for (int i = 0; i < IR_MAX_RANK; i++)
    k += snprintf(out + k, cap - (size_t)k, "%s%d", i ? "," : " perm=", a->perm[i]);
  if (op_is_leaf(n->op))
    snprintf(out + k, cap - (size_t)k, " leaf %s role=%d init=%d a=%.17g fans=%lld,%lld w=%d",
             n->name ? n->name : "-", n->role, n->leaf.init, n->leaf.init_a,
             (long long)n->leaf.fan_in, (long long)n->leaf.fan_out, n->leaf.weight);
}

START_TEST(cnn_graph_equals_the_lowered_model) {
  Graph *a = cnn_nn(), *b = cnn_dsl();
  ck_assert_int_eq(a->nnodes, b->nnodes);
  char da[1024], db[1024];
  for (int i = 0; i < a->nnodes; i++) {
    describe(a, i, da, sizeof da);
    describe(b, i, db, sizeof db);
    ck_assert_msg(!strcmp(da, db), "node %d:\n  nn:  %s\n  dsl: %s", i, da, db);
  }
  ck_assert_int_eq(a->loss_train, b->loss_train);
  ck_assert_int_eq(a->loss_eval, b->loss_eval);
  ck_assert_int_eq(a->output_eval, b->output_eval);
  for (int e = 0; e < ENTRY_COUNT; e++) {
    ck_assert_int_eq(a->entries[e].noutputs, b->entries[e].noutputs);
    ck_assert_int_eq(a->entries[e].nupdates, b->entries[e].nupdates);
    for (int i = 0; i < a->entries[e].noutputs; i++) {
      ck_assert_str_eq(a->entries[e].outputs[i].name, b->entries[e].outputs[i].name);
      ck_assert_int_eq(a->entries[e].outputs[i].node, b->entries[e].outputs[i].node);
    }
    for (int i = 0; i < a->entries[e].nupdates; i++) {
      ck_assert_int_eq(a->entries[e].updates[i].target, b->entries[e].updates[i].target);
      ck_assert_int_eq(a->entries[e].updates[i].value, b->entries[e].updates[i].value);
    }
  }
  /* The parameters PyTorch's module would have, in its order. */
  static const char *const params[] = {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias",
                                       "fc.weight", "fc.bias"};
  static const char *const shapes[] = {"[4, 2, 3, 3]", "[4]", "[4]", "[4]", "[3, 36]", "[3]"};
  ck_assert_int_eq(a->nparams, 6);
  for (int i = 0; i < a->nparams; i++) {
    char sb[64];
    const Node *p = ir_at(a, a->params[i]);
    ck_assert_str_eq(p->name, params[i]);
    ck_assert_str_eq(shape_str(a, &p->shape, sb, sizeof sb), shapes[i]);
  }
  const Node *w = ir_at(a, ir_find_leaf(a, "conv1.weight"));
  ck_assert_int_eq(w->leaf.init, KILN_INIT_TORCH_DEFAULT);
  ck_assert_int_eq(w->leaf.fan_in, 18);
  ck_assert_int_eq(w->leaf.fan_out, 36);
  ck_assert(w->leaf.weight);
  ck_assert_int_eq(ir_at(a, ir_find_leaf(a, "bn1.running_var"))->leaf.init, KILN_INIT_ONES);
  ck_assert_int_ge(ir_find_leaf(a, "dropout.step"), 0);

  /* The same values in, bit-identical values out of every entry. */
  Interp *ia = interp_new(a, 2, false), *ib = interp_new(b, 2, false);
  ck_assert(ia && ib);
  for (int i = 0; i < a->nnodes; i++) {
    const Node *n = ir_at(a, i);
    if (n->op != OP_INPUT && n->op != OP_PARAM && n->op != OP_STATE)
      continue;
    int64_t numel = interp_numel(ia, i);
    double *va = interp_data(ia, i), *vb = interp_data(ib, i);
    for (int64_t k = 0; k < numel; k++)
      va[k] = vb[k] = n->op == OP_INPUT && n->dtype == DT_I32 ? (double)((k + 1) % 3)
                    : !strcmp(n->name, "bn1.running_var") ? 1 + 0.1 * (double)k
                                                          : sin(0.7 * (double)(k + 3 * i));
  }
  char err[RT_ERR_LEN];
  ck_assert_int_eq(interp_run(ia, ENTRY_GRAD, 2, err), 0);
  ck_assert_int_eq(interp_run(ib, ENTRY_GRAD, 2, err), 0);
  for (int i = 0; i < a->entries[ENTRY_GRAD].noutputs; i++) {
    int node = a->entries[ENTRY_GRAD].outputs[i].node;
    int64_t numel = interp_numel(ia, node);
    ck_assert(memcmp(interp_data(ia, node), interp_data(ib, node),
                     (size_t)numel * sizeof(double)) == 0);
  }
  double loss = interp_data(ia, a->loss_train)[0];
  ck_assert(isfinite(loss) && loss > 0);
  ck_assert_int_eq(interp_run(ia, ENTRY_EVAL, 2, err), 0);
  ck_assert_int_eq(interp_run(ib, ENTRY_EVAL, 2, err), 0);
  ck_assert(memcmp(interp_data(ia, a->output_eval), interp_data(ib, b->output_eval),
                   6 * sizeof(double)) == 0);
  ck_assert(interp_data(ia, a->loss_eval)[0] == interp_data(ib, b->loss_eval)[0]);
  interp_free(ia);
  interp_free(ib);
  ir_free(a);
  ir_free(b);
}
END_TEST

/* Sets a leaf's values by name. */
static void put(Interp *it, Graph *g, const char *name, const double *v, int n) {
  int id = ir_find_leaf(g, name);
  ck_assert_int_ge(id, 0);
  ck_assert_int_eq(interp_numel(it, id), n);
  memcpy(interp_data(it, id), v, (size_t)n * sizeof *v);
}

static void near(double got, double want) {
  ck_assert_msg(fabs(got - want) <= 1e-14 * (1 + fabs(want)), "got %.17g, want %.17g", got, want);
}

/* x [[1, 1], [0, -1]] through W [[1, 2], [3, 4]], b [0.5, -0.5] gives logits [3.5, 6.5] and
 * [-1.5, -4.5]; with labels 1 and 0 each row's loss is log(1 + e^-3). With s = 1/(1 + e^3) the
 * softmax minus the one-hot rows are [s, -s] and [-s, s], so dL/db = 0 and
 * dL/dW = [[s/2, s], [-s/2, -s]]. */
START_TEST(linear_cross_entropy_values) {
  Graph *g = ir_new("lin");
  int bs = ir_sym(g, "B");
  int x = ir_leaf(g, OP_INPUT, ROLE_INPUT, "x", DT_F64, dims(2, (int64_t[]){1, 2}, bs), nowhere);
  int y = ir_leaf(g, OP_INPUT, ROLE_INPUT, "y", DT_I32, dims(1, (int64_t[]){1}, bs), nowhere);
  NnLayer fc = {NN_TRAIN, "fc", nowhere, nowhere};
  NnLinear o = {.out = 2, .bias = true, .init = {KILN_INIT_HE_NORMAL, 0}};
  int logits = nn_linear(g, &fc, x, &o);
  g->loss_train = g->loss_eval = nn_cross_entropy(g, logits, y, nowhere);
  fc.mode = NN_EVAL;
  ck_assert_int_eq(nn_linear(g, &fc, x, &o), logits);  /* the eval pass finds the same nodes */
  const Node *w = ir_at(g, ir_find_leaf(g, "fc.weight")), *b = ir_at(g, ir_find_leaf(g, "fc.bias"));
  ck_assert_int_eq(w->leaf.init, KILN_INIT_HE_NORMAL);
  ck_assert_int_eq(b->leaf.init, KILN_INIT_ZEROS);  /* a given scheme zeroes the bias */
  ck_assert(w->leaf.weight && !b->leaf.weight);
  ck_assert_int_eq(w->leaf.fan_in, 2);
  train_build(g);

  Interp *it = interp_new(g, 2, false);
  put(it, g, "x", (double[]){1, 1, 0, -1}, 4);
  put(it, g, "y", (double[]){1, 0}, 2);
  put(it, g, "fc.weight", (double[]){1, 2, 3, 4}, 4);
  put(it, g, "fc.bias", (double[]){0.5, -0.5}, 2);
  char err[RT_ERR_LEN];
  ck_assert_int_eq(interp_run(it, ENTRY_GRAD, 2, err), 0);
  const double *lg = interp_data(it, logits);
  near(lg[0], 3.5), near(lg[1], 6.5), near(lg[2], -1.5), near(lg[3], -4.5);
  near(interp_data(it, g->loss_train)[0], log1p(exp(-3)));
  double s = 1 / (1 + exp(3));
  const double *gw = interp_data(it, g->grads[0]), *gb = interp_data(it, g->grads[1]);
  near(gw[0], s / 2), near(gw[1], s), near(gw[2], -s / 2), near(gw[3], -s);
  near(gb[0], 0), near(gb[1], 0);
  interp_free(it);
  ir_free(g);
}
END_TEST

/* psnr of a = [[0, 0], [1, 1]] against b = [[0.1, 0.1], [1, 0.8]]: per example mean squared
 * errors 0.01 and 0.02, so 20 dB and 10·log10(50) dB, averaged; peak 2 adds 20·log10(2). The
 * metrics are eval outputs under their names. */
START_TEST(psnr_metric_values) {
  Graph *g = compile_text("input a: f64[B, 2]\ninput b: f64[B, 2]\nparam s: f64[2] = 1\n"
                          "loss = mse(a * s, b)\nminimize loss\n"
                          "p = psnr(a, b)\nq = psnr(a, b, peak=2)\n"
                          "metric p\nmetric q\n");
  ck_assert_int_eq(g->nmetrics, 2);
  Interp *it = interp_new(g, 2, false);
  put(it, g, "a", (double[]){0, 0, 1, 1}, 4);
  put(it, g, "b", (double[]){0.1, 0.1, 1, 0.8}, 4);
  char err[RT_ERR_LEN];
  ck_assert_int_eq(interp_run(it, ENTRY_EVAL, 2, err), 0);
  double want = (20 + 10 * log10(50)) / 2;
  ck_assert_double_eq_tol(interp_data(it, g->metrics[0])[0], want, 1e-12);
  ck_assert_double_eq_tol(interp_data(it, g->metrics[1])[0], want + 20 * log10(2), 1e-12);
  int outs = 0;
  for (int i = 0; i < g->entries[ENTRY_EVAL].noutputs; i++)
    outs += !strcmp(g->entries[ENTRY_EVAL].outputs[i].name, "eval.metric.p") ||
            !strcmp(g->entries[ENTRY_EVAL].outputs[i].name, "eval.metric.q");
  ck_assert_int_eq(outs, 2);
  interp_free(it);
  ir_free(g);
}
END_TEST

/* noise: the evaluation draw is the same at every call and differs from training's, which
 * follows dropout.step; the gradient passes to x unchanged. */
START_TEST(noise_modes) {
  Graph *g = compile_text("input x: f64[B, 3]\nparam w: f64[3] = [1, 2, 3]\n"
                          "y = noise(x * w, std=0.5) as corrupt\nloss = sum(y)\nminimize loss\n"
                          "output y\n");
  Interp *it = interp_new(g, 2, false);
  double xs[6] = {1, 2, 3, 4, 5, 6};
  put(it, g, "x", xs, 6);
  put(it, g, "w", (double[]){1, 2, 3}, 3);
  put(it, g, "dropout.step", (double[]){7}, 1);
  char err[RT_ERR_LEN];
  double first[6], eval_sum = 0;
  ck_assert_int_eq(interp_run(it, ENTRY_EVAL, 2, err), 0);
  memcpy(first, interp_data(it, g->output_eval), sizeof first);
  ck_assert_int_eq(interp_run(it, ENTRY_EVAL, 2, err), 0);
  ck_assert(!memcmp(first, interp_data(it, g->output_eval), sizeof first));
  for (int i = 0; i < 6; i++) {
    ck_assert(fabs(first[i] - xs[i] * (i % 3 + 1)) > 1e-6);
    eval_sum += first[i];
  }
  ck_assert_int_eq(interp_run(it, ENTRY_GRAD, 2, err), 0);
  ck_assert(fabs(interp_data(it, g->loss_train)[0] - eval_sum) > 1e-6);
  const double *gw = interp_data(it, g->grads[0]);
  near(gw[0], 1 + 4), near(gw[1], 2 + 5), near(gw[2], 3 + 6);
  interp_free(it);
  ir_free(g);
}
END_TEST

/* One SGD step with lr 0.1 and param_groups giving b lr 0.5, c frozen: loss = a·x + b·x + c·x
 * over x = [1, 2] has gradient x for each, so a moves by 0.1·x, b by 0.5·x and c not at all. */
START_TEST(groups_and_freeze_step) {
  Graph *g = compile_text("input x: f64[B, 2]\nparam a: f64[2] = [1, 1]\n"
                          "param b: f64[2] = [1, 1]\nparam c: f64[2] = [1, 1]\n"
                          "loss = sum(x * a + x * b + x * c)\nminimize loss\n"
                          "train { optimizer = sgd(lr=0.1)  freeze = c\n"
                          "  param_groups = [group(b, lr=0.5)] }\n");
  Interp *it = interp_new(g, 1, false);
  put(it, g, "x", (double[]){1, 2}, 2);
  put(it, g, "a", (double[]){1, 1}, 2);
  put(it, g, "b", (double[]){1, 1}, 2);
  put(it, g, "c", (double[]){1, 1}, 2);
  put(it, g, "lr", (double[]){0.1}, 1);
  char err[RT_ERR_LEN];
  ck_assert_int_eq(interp_run(it, ENTRY_TRAIN, 1, err), 0);
  const double *a = interp_data(it, ir_find_leaf(g, "a")), *b = interp_data(it, ir_find_leaf(g, "b"));
  const double *c = interp_data(it, ir_find_leaf(g, "c"));
  near(a[0], 1 - 0.1), near(a[1], 1 - 0.2);
  near(b[0], 1 - 0.5), near(b[1], 1 - 1.0);
  ck_assert(c[0] == 1 && c[1] == 1);
  /* --lr scales every group alike: lr 0.2 doubles both steps */
  put(it, g, "a", (double[]){1, 1}, 2);
  put(it, g, "b", (double[]){1, 1}, 2);
  put(it, g, "lr", (double[]){0.2}, 1);
  ck_assert_int_eq(interp_run(it, ENTRY_TRAIN, 1, err), 0);
  near(a[0], 1 - 0.2), near(b[0], 1 - 1.0);
  interp_free(it);
  ir_free(g);
}
END_TEST

/* batchnorm on [N, C] = [2, 2] with x [[3, 2], [1, 5]]: evaluation mode normalises with the
 * running statistics, training mode moves them by momentum 0.1 towards the batch mean [2, 3.5]
 * and the unbiased batch variance [2, 4.5]. */
START_TEST(batchnorm_modes_values) {
  Graph *g = ir_new("bn");
  int bs = ir_sym(g, "B");
  Shape s2 = dims(2, (int64_t[]){1, 2}, bs);
  int x = ir_leaf(g, OP_INPUT, ROLE_INPUT, "x", DT_F64, s2, nowhere);
  int t = ir_leaf(g, OP_INPUT, ROLE_INPUT, "t", DT_F64, s2, nowhere);
  NnBatchnorm o = {.eps = 1e-5, .momentum = 0.1, .affine = true};
  NnLayer bn = {NN_TRAIN, "bn", nowhere, nowhere};
  g->loss_train = nn_mse(g, nn_batchnorm(g, &bn, x, &o), t, nowhere);
  bn.mode = NN_EVAL;
  int y = nn_batchnorm(g, &bn, x, &o);
  g->loss_eval = nn_mse(g, y, t, nowhere);
  g->output_eval = y;
  ck_assert_int_ne(y, ir_at(g, g->loss_train)->in[0]);  /* the modes differ */
  train_build(g);

  Interp *it = interp_new(g, 2, false);
  put(it, g, "x", (double[]){3, 2, 1, 5}, 4);
  put(it, g, "t", (double[]){0, 0, 0, 0}, 4);
  put(it, g, "bn.weight", (double[]){2, 3}, 2);
  put(it, g, "bn.bias", (double[]){0.5, 0.5}, 2);
  put(it, g, "bn.running_mean", (double[]){1, 2}, 2);
  put(it, g, "bn.running_var", (double[]){4, 9}, 2);
  char err[RT_ERR_LEN];
  ck_assert_int_eq(interp_run(it, ENTRY_EVAL, 2, err), 0);
  const double *v = interp_data(it, y);
  near(v[0], (3 - 1) / sqrt(4 + 1e-5) * 2 + 0.5);
  near(v[1], (2 - 2) / sqrt(9 + 1e-5) * 3 + 0.5);
  near(v[2], (1 - 1) / sqrt(4 + 1e-5) * 2 + 0.5);
  near(v[3], (5 - 2) / sqrt(9 + 1e-5) * 3 + 0.5);
  ck_assert_int_eq(interp_run(it, ENTRY_TRAIN, 2, err), 0);
  const double *rm = interp_data(it, ir_find_leaf(g, "bn.running_mean"));
  const double *rv = interp_data(it, ir_find_leaf(g, "bn.running_var"));
  near(rm[0], 0.9 * 1 + 0.1 * 2), near(rm[1], 0.9 * 2 + 0.1 * 3.5);
  near(rv[0], 0.9 * 4 + 0.1 * 2), near(rv[1], 0.9 * 9 + 0.1 * 4.5);
  near(interp_data(it, ir_find_leaf(g, "bn.num_batches_tracked"))[0], 1);
  interp_free(it);
  ir_free(g);
}
END_TEST

/* Bad tensors fail at the given location with the layer's message; parameters cannot clash. */
static Graph *eg;
static const char *error_of(void (*fn)(void)) {
  static Trap t;
  eg = ir_new("e");
  const char *msg = NULL;
  if (KILN_TRY(&t))
    fn();
  else
    msg = t.msg;
  kiln_trap_end(&t);
  ir_free(eg);
  return msg;
}

static void conv_on_matrix(void) {
  int x = ir_leaf(eg, OP_INPUT, ROLE_INPUT, "x", DT_F32, shape_of(2, (int64_t[]){4, 3}), nowhere);
  NnLayer l = {NN_TRAIN, "c", nowhere, nowhere};
  nn_conv2d(eg, &l, x, &(NnConv2d){.out = 2, .kernel = {1, 1}, .stride = {1, 1},
                                    .dilation = {1, 1}, .groups = 1});
}

static void linear_twice(void) {
  int x = ir_leaf(eg, OP_INPUT, ROLE_INPUT, "x", DT_F32, shape_of(2, (int64_t[]){4, 3}), nowhere);
  NnLayer l = {NN_TRAIN, "fc", nowhere, nowhere};
  nn_linear(eg, &l, x, &(NnLinear){.out = 2, .init = torch_default});
  nn_linear(eg, &l, x, &(NnLinear){.out = 2, .init = torch_default});
}

static void groups_mismatch(void) {
  int x = ir_leaf(eg, OP_INPUT, ROLE_INPUT, "x", DT_F32,
                  shape_of(4, (int64_t[]){1, 3, 5, 5}), nowhere);
  NnLayer l = {NN_TRAIN, "c", nowhere, nowhere};
  nn_conv2d(eg, &l, x, &(NnConv2d){.out = 4, .kernel = {1, 1}, .stride = {1, 1},
                                    .dilation = {1, 1}, .groups = 2});
}

START_TEST(errors) {
  ck_assert_str_eq(error_of(conv_on_matrix),
                   "error: conv2d needs an input of shape [N, C, H, W], got [4, 3]\n");
  ck_assert_str_eq(error_of(linear_twice), "error: parameter 'fc.weight' is defined twice\n");
  ck_assert_str_eq(error_of(groups_mismatch),
                   "error: conv2d: 3 input channels (of [1, 3, 5, 5]) and 4 output channels do "
                   "not both divide into 2 groups\n");
}
END_TEST

int main(void) {
  Suite *s = suite_create("nn");
  TCase *tc = tcase_create("nn");
  tcase_add_test(tc, cnn_graph_equals_the_lowered_model);
  tcase_add_test(tc, linear_cross_entropy_values);
  tcase_add_test(tc, batchnorm_modes_values);
  tcase_add_test(tc, psnr_metric_values);
  tcase_add_test(tc, noise_modes);
  tcase_add_test(tc, groups_and_freeze_step);
  tcase_add_test(tc, errors);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
