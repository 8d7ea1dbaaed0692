/*
 * test_ir.c — the graph IR, shape inference, the training graph and the memory plan.
 *
 * Shape rules are tested directly through the builders: symbolic dimensions, broadcasting,
 * reshape counting symbols exactly, window arithmetic (seed 000 eq. 2.2) and every error message
 * as exact text. The plan is tested by its invariants (alignment, persistent tensors never
 * shared, no two tensors alive at once in any entry overlapping) rather than by fixed offsets.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "xform/xform.h"
#include "plan/plan.h"
#include "cg/cg.h"
#include "backend/backend.h"
#include "front/front.h"
#include "ref/ref.h"
#include "driver/driver.h"

#define SHAPE(...) \
  shape_of((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})

static Graph *g;
static SrcFile file = {"m.kiln", "y = op(x)\n"};
static Loc at = {&file, 1, 5};

static void setup(void) { g = ir_new("t"); }
static void teardown(void) { ir_free(g); }

static int f32(const char *name, Shape s) { return ir_leaf(g, OP_INPUT, ROLE_INPUT, name, DT_F32, s, at); }

/* Shape with the batch symbol in dimension 0: [n0*B, rest...]. */
static Shape batched(Shape s) {
  s.d[0].sym = ir_sym(g, "B");
  return s;
}

static char *shape_text(int id) {
  static char buf[128];
  return shape_str(g, &ir_at(g, id)->shape, buf, sizeof buf);
}

/* Runs fn under a trap and returns the error message, or NULL when nothing failed. */
static const char *error_of(void (*fn)(void)) {
  static Trap t;
  if (KILN_TRY(&t)) {
    fn();
    kiln_trap_end(&t);
    return NULL;
  }
  kiln_trap_end(&t);
  return t.msg;
}

START_TEST(broadcasting_with_symbols) {
  int a = f32("a", batched(SHAPE(1, 1, 4)));
  int b = f32("b", SHAPE(3, 1));
  int c = ir_binary(g, OP_ADD, a, b, at);
  ck_assert_str_eq(shape_text(c), "[B, 3, 4]");
  int d = ir_binary(g, OP_MUL, c, ir_const(g, 2, DT_F32, at), at);
  ck_assert_str_eq(shape_text(d), "[B, 3, 4]");
  /* Hash-consing: the same computation is the same node. */
  ck_assert_int_eq(ir_binary(g, OP_ADD, a, b, at), c);
  ck_assert_int_ne(ir_binary(g, OP_ADD, b, a, at), c);
  ck_assert_int_eq(ir_const(g, 2, DT_F32, at), ir_const(g, 2, DT_F32, at));
  ck_assert_int_ne(ir_const(g, 2, DT_F32, at), ir_const(g, 2, DT_F64, at));
}
END_TEST

static void bad_broadcast(void) {
  int a = f32("a", batched(SHAPE(1, 256)));
  int b = f32("b", batched(SHAPE(1, 10)));
  ir_binary(g, OP_ADD, a, b, at);
}

static void bad_symbolic_broadcast(void) {
  int a = f32("a", batched(SHAPE(1, 4)));
  int b = f32("b", SHAPE(3, 4));
  ir_binary(g, OP_SUB, a, b, at);
}

START_TEST(broadcast_errors) {
  ck_assert_str_eq(error_of(bad_broadcast),
                   "m.kiln:1:5: error: cannot add shapes [B, 256] and [B, 10]: dimension 1 differs\n"
                   "  y = op(x)\n"
                   "      ^\n");
  teardown();
  setup();
  /* B might be 3 at run time, but shapes must agree for every batch. */
  ck_assert_ptr_nonnull(strstr(error_of(bad_symbolic_broadcast),
                               "cannot sub shapes [B, 4] and [3, 4]: dimension 0 differs"));
}
END_TEST

START_TEST(reductions_and_reshape) {
  int x = f32("x", batched(SHAPE(1, 3, 4)));
  ck_assert_str_eq(shape_text(ir_reduce(g, OP_SUM, x, 1u << 1, false, at)), "[B, 4]");
  ck_assert_str_eq(shape_text(ir_reduce(g, OP_MEAN, x, 1u << 0 | 1u << 2, true, at)), "[1, 3, 1]");
  ck_assert_str_eq(shape_text(ir_reduce(g, OP_NUMEL, x, 1u << 0, false, at)), "[]");
  Shape flat = batched(SHAPE(1, 12));
  ck_assert_str_eq(shape_text(ir_reshape(g, x, flat, at)), "[B, 12]");
  Shape merged = SHAPE(12, 1);
  merged.d[0].sym = 0;  /* [12*B, 1] */
  ck_assert_str_eq(shape_text(ir_reshape(g, x, merged, at)), "[12*B, 1]");
  /* The identity reshape is no node at all. */
  ck_assert_int_eq(ir_reshape(g, x, ir_at(g, x)->shape, at), x);
}
END_TEST

static void reshape_loses_symbol(void) {
  int x = f32("x", batched(SHAPE(1, 12)));
  ir_reshape(g, x, SHAPE(64, 12), at);
}

static void bad_axes(void) {
  int x = f32("x", SHAPE(2, 3));
  ir_reduce(g, OP_SUM, x, 1u << 2, false, at);
}

static void matmul_mismatch(void) {
  int a = f32("a", batched(SHAPE(1, 4)));
  int b = f32("b", SHAPE(3, 2));
  ir_matmul(g, a, b, false, false, at);
}

static void labels_not_int(void) {
  int l = f32("l", batched(SHAPE(1, 10)));
  int y = f32("y", batched(SHAPE(1)));
  ir_binary(g, OP_CROSS_ENTROPY, l, y, at);
}

START_TEST(shape_error_messages) {
  ck_assert_ptr_nonnull(strstr(error_of(reshape_loses_symbol),
                               "error: cannot reshape [B, 12] to [64, 12]: element counts differ"));
  teardown();
  setup();
  ck_assert_ptr_nonnull(strstr(error_of(bad_axes),
                               "error: sum: axis out of range for a tensor of shape [2, 3]"));
  teardown();
  setup();
  ck_assert_ptr_nonnull(strstr(error_of(matmul_mismatch),
                               "error: matmul of [B, 4] and [3, 2]: inner dimensions differ"));
  teardown();
  setup();
  ck_assert_ptr_nonnull(strstr(error_of(labels_not_int),
                               "error: cross_entropy needs integer (i32) labels, got f32"));
}
END_TEST

START_TEST(matmul_transposes) {
  int a = f32("a", SHAPE(5, 3)), b = f32("b", SHAPE(4, 3));
  ck_assert_str_eq(shape_text(ir_matmul(g, a, b, false, true, at)), "[5, 4]");
  ck_assert_str_eq(shape_text(ir_matmul(g, b, a, false, true, at)), "[4, 5]");
  int c = f32("c", SHAPE(5, 7));
  ck_assert_str_eq(shape_text(ir_matmul(g, a, c, true, false, at)), "[3, 7]");
}
END_TEST

/* Builds conv2d with the given window on x and returns its node. */
static int conv(int x, int w, int64_t stride, int64_t pad0, int64_t pad1, int64_t dil, int64_t groups) {
  Attr a = {0};
  Node *wn = ir_at(g, w);
  a.kernel[0] = wn->shape.d[2].n;
  a.kernel[1] = wn->shape.d[3].n;
  a.stride[0] = a.stride[1] = stride;
  a.pad[0] = a.pad[2] = pad0;
  a.pad[1] = a.pad[3] = pad1;
  a.dilation[0] = a.dilation[1] = dil;
  a.groups = groups;
  int in[2] = {x, w};
  return ir_node(g, OP_CONV2D, 2, in, &a, at);
}

START_TEST(conv_output_sizes) {
  /* Seed 000 eq. 2.2: Ho = floor((H + 2p - d(k-1) - 1)/s) + 1. */
  int x = f32("x", batched(SHAPE(1, 8, 14, 14)));
  int w5 = f32("w5", SHAPE(32, 8, 5, 5));
  ck_assert_str_eq(shape_text(conv(x, w5, 1, 2, 2, 1, 1)), "[B, 32, 14, 14]");  /* same */
  ck_assert_str_eq(shape_text(conv(x, w5, 1, 0, 0, 1, 1)), "[B, 32, 10, 10]");  /* valid */
  ck_assert_str_eq(shape_text(conv(x, w5, 1, 4, 4, 1, 1)), "[B, 32, 18, 18]");  /* full */
  ck_assert_str_eq(shape_text(conv(x, w5, 2, 1, 1, 1, 1)), "[B, 32, 6, 6]");    /* (14+2-5)/2+1 */
  ck_assert_str_eq(shape_text(conv(x, w5, 3, 0, 1, 2, 1)), "[B, 32, 3, 3]");    /* (15-9)/3+1 */
  int wg = f32("wg", SHAPE(16, 2, 3, 3));
  ck_assert_str_eq(shape_text(conv(x, wg, 1, 1, 1, 1, 4)), "[B, 16, 14, 14]");
  int w1 = f32("w1", SHAPE(4, 8, 1, 1));
  ck_assert_str_eq(shape_text(conv(x, w1, 1, 0, 0, 1, 1)), "[B, 4, 14, 14]");   /* pointwise */
}
END_TEST

static int conv_x, conv_w;
static void conv_too_big(void) {
  conv_x = f32("x", batched(SHAPE(1, 1, 4, 4)));
  conv_w = f32("w", SHAPE(2, 1, 5, 5));
  conv(conv_x, conv_w, 1, 0, 0, 1, 1);
}
static void conv_dilated_too_big(void) {
  conv_x = f32("x", batched(SHAPE(1, 1, 4, 4)));
  conv_w = f32("w", SHAPE(2, 1, 3, 3));
  conv(conv_x, conv_w, 1, 0, 0, 2, 1);
}
static void conv_groups(void) {
  conv_x = f32("x", batched(SHAPE(1, 6, 8, 8)));
  conv_w = f32("w", SHAPE(4, 2, 3, 3));
  conv(conv_x, conv_w, 1, 0, 0, 1, 4);
}
static void conv_channels(void) {
  conv_x = f32("x", batched(SHAPE(1, 3, 8, 8)));
  conv_w = f32("w", SHAPE(4, 2, 3, 3));
  conv(conv_x, conv_w, 1, 0, 0, 1, 1);
}

START_TEST(conv_errors) {
  ck_assert_ptr_nonnull(strstr(error_of(conv_too_big),
                               "error: conv2d: the vertical window (5) is larger than "
                               "the padded input (4) of shape [B, 1, 4, 4]"));
  teardown();
  setup();
  ck_assert_ptr_nonnull(strstr(error_of(conv_dilated_too_big),
                               "error: conv2d: the vertical window (5, 3 with dilation 2) is larger "
                               "than the padded input (4) of shape [B, 1, 4, 4]"));
  teardown();
  setup();
  ck_assert_ptr_nonnull(strstr(error_of(conv_groups),
                               "error: conv2d: 6 input and 4 output channels do not divide into 4 groups"));
  teardown();
  setup();
  ck_assert_ptr_nonnull(strstr(error_of(conv_channels),
                               "error: conv2d: weight [4, 2, 3, 3] expects 2 input channels per group, "
                               "but the input [B, 3, 8, 8] has 3 in each of 1 groups"));
}
END_TEST

START_TEST(pool_and_layout_shapes) {
  int x = f32("x", batched(SHAPE(1, 8, 7, 5)));
  Attr a = {0};
  a.kernel[0] = a.kernel[1] = 3;
  a.stride[0] = a.stride[1] = 2;
  a.dilation[0] = a.dilation[1] = 1;
  ck_assert_str_eq(shape_text(ir_node(g, OP_MAXPOOL2D, 1, &x, &a, at)), "[B, 8, 3, 2]");
  a.pad[0] = a.pad[1] = a.pad[2] = a.pad[3] = 1;
  ck_assert_str_eq(shape_text(ir_node(g, OP_AVGPOOL2D, 1, &x, &a, at)), "[B, 8, 4, 3]");
  int perm[4] = {0, 2, 3, 1};
  ck_assert_str_eq(shape_text(ir_transpose(g, x, perm, at)), "[B, 7, 5, 8]");
  int y = f32("y", batched(SHAPE(1, 4, 7, 5)));
  Attr c = {0};
  c.axis = 1;
  int in[2] = {x, y};
  int cat = ir_node(g, OP_CONCAT, 2, in, &c, at);
  ck_assert_str_eq(shape_text(cat), "[B, 12, 7, 5]");
  Attr s = {0};
  s.axis = 1;
  s.start = 8;
  s.len = 4;
  ck_assert_str_eq(shape_text(ir_node(g, OP_SLICE, 1, &cat, &s, at)), "[B, 4, 7, 5]");
}
END_TEST

/* (y + c) - mean(y + c) is built as y - mean(y) when c is constant along the averaged axes. */
START_TEST(centre_shift_rewrite) {
  int y = f32("y", batched(SHAPE(1, 8, 5, 5)));
  int c = f32("c", SHAPE(8, 1, 1));
  unsigned axes = 1u << 0 | 1u << 2 | 1u << 3;
  int a = ir_binary(g, OP_ADD, y, c, at);
  int centred = ir_binary(g, OP_SUB, a, ir_reduce(g, OP_MEAN, a, axes, true, at), at);
  Node *n = ir_at(g, centred);
  ck_assert_int_eq(n->op, OP_SUB);
  ck_assert_int_eq(n->in[0], y);
  ck_assert_int_eq(ir_at(g, n->in[1])->op, OP_MEAN);
  ck_assert_int_eq(ir_at(g, n->in[1])->in[0], y);
  /* Along axis 1 the shift varies: nothing to cancel. */
  int across = ir_binary(g, OP_SUB, a, ir_reduce(g, OP_MEAN, a, 1u << 1, true, at), at);
  ck_assert_int_eq(ir_at(g, across)->in[0], a);
  /* Without keepdims the mean is not a centring of a. */
  ck_assert_int_eq(ir_at(g, ir_binary(g, OP_SUB, a, ir_reduce(g, OP_MEAN, a, axes | 1u << 1, false, at), at))->in[0], a);
}
END_TEST

/* mean(y + c) is built as mean(y) + c, and numel(y + c) as numel(y): batch norm's running mean
 * and count then read y, and y + c need not be computed. */
START_TEST(mean_shift_and_numel_rewrites) {
  int y = f32("y", batched(SHAPE(1, 8, 5, 5)));
  int c = f32("c", SHAPE(8, 1, 1));
  unsigned axes = 1u << 0 | 1u << 2 | 1u << 3;
  int a = ir_binary(g, OP_ADD, y, c, at);
  Node *m = ir_at(g, ir_reduce(g, OP_MEAN, a, axes, true, at));
  ck_assert_int_eq(m->op, OP_ADD);
  ck_assert_int_eq(m->in[1], c);
  ck_assert_int_eq(ir_at(g, m->in[0])->op, OP_MEAN);
  ck_assert_int_eq(ir_at(g, m->in[0])->in[0], y);
  ck_assert_str_eq(shape_text(m->id), "[1, 8, 1, 1]");
  /* Along axis 1 the shift varies, and without keepdims the shapes differ: kept as written. */
  ck_assert_int_eq(ir_at(g, ir_reduce(g, OP_MEAN, a, 1u << 1, true, at))->in[0], a);
  ck_assert_int_eq(ir_at(g, ir_reduce(g, OP_MEAN, a, axes, false, at))->in[0], a);
  ck_assert_int_eq(ir_at(g, ir_reduce(g, OP_NUMEL, a, axes, false, at))->in[0], y);
}
END_TEST

/* relu_grad(h, maxpool2d_grad(h, dy)) is built as maxpool2d_grad(h, relu_grad(maxpool2d(h), dy)):
 * the mask on the pooled tensor, which the forward pass has computed (hash-consing finds it). */
START_TEST(relu_pool_rewrite) {
  int h = ir_unary(g, OP_RELU, f32("x", batched(SHAPE(1, 4, 8, 8))), at);
  Attr a = {0};
  a.kernel[0] = a.kernel[1] = 2;
  a.stride[0] = a.stride[1] = 2;
  a.dilation[0] = a.dilation[1] = 1;
  a.in_size[0] = a.in_size[1] = 8;
  int pooled = ir_node(g, OP_MAXPOOL2D, 1, &h, &a, at);
  int dy = f32("dy", batched(SHAPE(1, 4, 4, 4)));
  int pg = ir_node(g, OP_MAXPOOL2D_GRAD, 2, (int[]){h, dy}, &a, at);
  Node *n = ir_at(g, ir_binary(g, OP_RELU_GRAD, h, pg, at));
  ck_assert_int_eq(n->op, OP_MAXPOOL2D_GRAD);
  ck_assert_int_eq(n->in[0], h);
  Node *m = ir_at(g, n->in[1]);
  ck_assert_int_eq(m->op, OP_RELU_GRAD);
  ck_assert_int_eq(m->in[0], pooled);
  ck_assert_int_eq(m->in[1], dy);
  /* A mask of another tensor than the pool's input stays as written. */
  int other = f32("o", batched(SHAPE(1, 4, 8, 8)));
  ck_assert_int_eq(ir_at(g, ir_binary(g, OP_RELU_GRAD, other, pg, at))->in[1], pg);
}
END_TEST

/* ---- training graph and plan on the MLP ---- */

/* The session's pipeline up to the training graph; the caller owns the graph. */
static Graph *compile(const char *path) {
  Session s;
  if (session_open_file(&s, path, NULL))
    ck_abort_msg("%s", s.error);
  Graph *r = session_take_graph(&s);
  session_close(&s);
  return r;
}

START_TEST(training_graph_entries) {
  Graph *m = compile(KILN_SOURCE_DIR "/examples/mlp.kiln");
  /* grad: the loss, 4 gradients stored; train and apply: 4 params + 8 moments + step updated. */
  ck_assert_int_eq(m->entries[ENTRY_GRAD].noutputs, 1);
  ck_assert_int_eq(m->entries[ENTRY_GRAD].nupdates, 4);
  const Node *g0 = ir_at(m, m->entries[ENTRY_GRAD].updates[0].target);
  ck_assert_str_eq(g0->name, "grad.fc1.weight");
  ck_assert_int_eq(g0->role, ROLE_GRAD);
  ck_assert_int_eq(m->entries[ENTRY_GRAD].updates[0].value, m->grads[0]);
  ck_assert_int_eq(m->entries[ENTRY_TRAIN].nupdates, 13);
  ck_assert_int_eq(m->entries[ENTRY_APPLY].nupdates, 13);
  ck_assert_int_eq(m->entries[ENTRY_APPLY].noutputs, 0);
  /* apply updates the same targets as train, reading the GRAD leaves instead of the gradients */
  for (int u = 0; u < 13; u++)
    ck_assert_int_eq(m->entries[ENTRY_APPLY].updates[u].target,
                     m->entries[ENTRY_TRAIN].updates[u].target);
  ck_assert_int_eq(m->entries[ENTRY_EVAL].noutputs, 2);
  /* Gradients have their parameter's shape. */
  for (int i = 0; i < m->nparams; i++)
    ck_assert(shape_eq(&ir_at(m, m->grads[i])->shape, &ir_at(m, m->params[i])->shape));
  /* The forward pass is shared between train and eval: same loss node. */
  ck_assert_int_eq(m->loss_train, m->loss_eval);
  ck_assert_int_ge(ir_find_leaf(m, "fc2.bias.exp_avg_sq"), 0);
  ck_assert_int_eq(ir_at(m, ir_find_leaf(m, "lr"))->role, ROLE_HYPER);
  ir_free(m);
}
END_TEST

START_TEST(plan_invariants) {
  Graph *m = compile(KILN_SOURCE_DIR "/examples/mlp.kiln");
  Plan p;
  plan_build(m, 64, NULL, &p);
  ck_assert_int_eq(p.arena_bytes % 64, 0);
  /* Every stored node is aligned and inside the arena. */
  int64_t symvals[IR_MAX_SYMS] = {64};
  for (int i = 0; i < m->nnodes; i++) {
    if (p.offset[i] < 0) continue;
    ck_assert_int_eq(p.offset[i] % 64, 0);
    int64_t bytes = shape_numel(&ir_at(m, i)->shape, symvals) * (int64_t)dtype_size(ir_at(m, i)->dtype);
    ck_assert_int_le(p.offset[i] + bytes, p.arena_bytes);
  }
  /* Within each entry, nodes alive at the same time never overlap: simulate each entry and
   * check every node's inputs still own their 64-byte blocks when it runs. */
  for (int e = 0; e < ENTRY_COUNT; e++) {
    unsigned char *mark = calloc((size_t)m->nnodes, 1);
    ir_reachable(m, e, mark);
    int *owner = malloc((size_t)p.arena_bytes / 64 * sizeof(int));
    for (int64_t k = 0; k < p.arena_bytes / 64; k++) owner[k] = -1;
    for (int i = 0; i < m->nnodes; i++) {
      if (!mark[i] || p.offset[i] < 0) continue;
      Node *n = ir_at(m, i);
      for (int k = 0; k < n->nin; k++) {
        int in = n->in[k];
        if (p.offset[in] < 0 || op_is_leaf(ir_at(m, in)->op)) continue;
        int64_t blocks = (shape_numel(&ir_at(m, in)->shape, symvals) * (int64_t)dtype_size(ir_at(m, in)->dtype) + 63) / 64;
        for (int64_t w = 0; w < blocks; w++)
          ck_assert_msg(owner[p.offset[in] / 64 + w] == in, "entry %s: input %%%d of %%%d was overwritten",
                        entry_names[e], in, i);
      }
      if (op_is_leaf(n->op)) continue;
      int64_t blocks = (shape_numel(&n->shape, symvals) * (int64_t)dtype_size(n->dtype) + 63) / 64;
      for (int64_t w = 0; w < blocks; w++) owner[p.offset[i] / 64 + w] = i;
    }
    /* Outputs and update values survive to the end of the entry. */
    const Entry *en = &m->entries[e];
    for (int o = 0; o < en->noutputs; o++) {
      int id = en->outputs[o].node;
      ck_assert_int_eq(owner[p.offset[id] / 64], id);
    }
    for (int u = 0; u < en->nupdates; u++) ck_assert_int_eq(owner[p.offset[en->updates[u].value] / 64], en->updates[u].value);
    free(owner);
    free(mark);
  }
  /* The ABI table names every parameter, input and output once. */
  int params = 0, outputs = 0, grads = 0;
  for (int t = 0; t < p.ntensors; t++) {
    params += p.tensors[t].role == KILN_ROLE_PARAM;
    outputs += p.tensors[t].role == KILN_ROLE_OUTPUT;
    if (p.tensors[t].role == KILN_ROLE_GRAD) {
      grads++;  /* written by grad (entry 2), read by apply (entry 3) */
      ck_assert_int_eq(p.tensors[t].entries, 1 << ENTRY_GRAD | 1 << ENTRY_APPLY);
    }
    if (!strcmp(p.tensors[t].name, "image")) {
      ck_assert_int_eq(p.tensors[t].batch_axis, 0);
      ck_assert_int_eq(p.tensors[t].dims[0], 64);
      ck_assert_str_eq(p.tensors[t].feed, "images");
    }
  }
  ck_assert_int_eq(params, 4);
  ck_assert_int_eq(outputs, 1 + 2);  /* loss (train+grad), eval.loss, eval.output */
  ck_assert_int_eq(grads, 4);
  plan_free(&p);
  ir_free(m);
}
END_TEST

/* plan_build under allocation failure at every point: a clean "out of memory", nothing leaked. */
/* Plans m with only n allocations allowed; returns whether it succeeded (the plan is freed). */
static bool plan_within(Graph *m, long n) {
  Plan p;
  Trap t;
  kiln_test_fail_alloc_after(n);
  if (KILN_TRY(&t)) {
    plan_build(m, 64, NULL, &p);
    kiln_trap_end(&t);
    kiln_test_fail_alloc_after(-1);
    plan_free(&p);
    return true;
  }
  kiln_trap_end(&t);
  kiln_test_fail_alloc_after(-1);
  ck_assert_str_eq(t.msg, "error: out of memory\n");
  plan_free(&p);
  return false;
}

START_TEST(plan_allocation_failures) {
  Graph *m = compile(KILN_SOURCE_DIR "/examples/mnist_cnn.kiln");
  long n = 0;
  while (n < 10000 && !plan_within(m, n)) n++;
  ck_assert_int_gt(n, 5);
  ck_assert_int_lt(n, 10000);
  ir_free(m);
}
END_TEST

/* ---- optimizer updates against their closed forms ---- */

/* loss = sum(w * c) has the constant gradient c, so each optimizer's trajectory has a closed
 * form. Runs `steps` train steps in f64 and returns w. */
/* w after `steps` updates of loss = sum(w * c) (a constant gradient c) with the given optimizer;
 * w is [1, 1], so it is a weight for `regularize`, which `extra` may set. */
static double train_linear_reg(const char *optimizer, const char *extra, int steps, double w0,
                               double c) {
  char text[512];
  snprintf(text, sizeof text,
           "const c: f64[1] = [%.17g]\nparam w: f64[1, 1] = [[%.17g]]\nloss = sum(w * c)\n"
           "minimize loss\ntrain { optimizer = %s %s }\n", c, w0, optimizer, extra);
  Trap t;
  Graph *volatile m = NULL;
  if (KILN_TRY(&t)) {
    m = fe_compile_string("opt.kiln", text);
    train_build(m);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    ck_abort_msg("%s", t.msg);
  }
  Plan p;
  plan_build(m, 1, NULL, &p);
  Interp *it = interp_new(m, 1, false);
  kiln_program prog;
  RtBackend be;
  interp_backend(it, &p, &prog, &be);
  char err[RT_ERR_LEN];
  /* Initialise leaves as the driver would. */
  for (int i = 0; i < p.ntensors; i++) {
    const kiln_tensor *kt = &p.tensors[i];
    if (kt->role == KILN_ROLE_INPUT || kt->role == KILN_ROLE_OUTPUT) continue;
    int64_t n = rt_numel(kt, 1);
    double *v = calloc((size_t)n, sizeof *v);
    if (kt->role != KILN_ROLE_OPT) rt_init_tensor(kt, 1, v, n);
    be.write(be.self, i, v, n);
    free(v);
  }
  for (int s = 0; s < steps; s++) ck_assert_int_eq(be.run(be.self, rt_find_entry(&prog, "train"), 1, err), 0);
  double w = interp_data(it, ir_find_leaf(m, "w"))[0];
  interp_free(it);
  plan_free(&p);
  ir_free(m);
  return w;
}

static double train_linear(const char *optimizer, int steps, double w0, double c) {
  return train_linear_reg(optimizer, "", steps, w0, c);
}

START_TEST(sgd_closed_forms) {
  double lr = 0.1, mu = 0.9, c = 2, w0 = 1;
  ck_assert_double_eq_tol(train_linear("sgd(lr=0.1)", 5, w0, c), w0 - 5 * lr * c, 1e-14);
  /* Momentum: buf_t = c (1 - mu^t) / (1 - mu); w_T = w0 - lr sum_t buf_t. */
  double w = w0, buf = 0, wn = w0, bufn = 0;
  for (int t = 0; t < 6; t++) {
    buf = mu * buf + c;
    w -= lr * buf;
    bufn = mu * bufn + c;
    wn -= lr * (c + mu * bufn);  /* Nesterov: g + mu * buf */
  }
  ck_assert_double_eq_tol(train_linear("sgd(lr=0.1, momentum=0.9)", 6, w0, c), w, 1e-13);
  ck_assert_double_eq_tol(train_linear("sgd(lr=0.1, momentum=0.9, nesterov=true)", 6, w0, c), wn, 1e-13);
  /* Weight decay adds wd * w to the gradient. */
  double wd = w0;
  for (int t = 0; t < 3; t++) wd -= lr * (c + 0.01 * wd);
  ck_assert_double_eq_tol(train_linear("sgd(lr=0.1, weight_decay=0.01)", 3, w0, c), wd, 1e-14);
}
END_TEST

START_TEST(adam_closed_form) {
  /* With a constant gradient c, Adam's bias-corrected m̂ = c and v̂ = c², so every step moves w
   * by lr * c / (|c| + eps) exactly as torch.optim.Adam computes it. */
  double lr = 1e-3, c = -0.5, eps = 1e-8, w0 = 0.25;
  double expect = w0 - 7 * lr * c / (fabs(c) + eps);
  ck_assert_double_eq_tol(train_linear("adam(lr=1e-3)", 7, w0, c), expect, 1e-12);
}
END_TEST

START_TEST(adaptive_closed_forms) {
  /* The torch.optim update formulas (1.13 docs' pseudo-code) stepped in double precision for a
   * constant gradient c; kiln's graph must land on the same w. */
  double c = 0.7, w0 = 0.3;
  /* adagrad(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, eps=1e-10) */
  double w = w0, sum = 0.2;
  for (int t = 1; t <= 6; t++) {
    sum += c * c;
    w -= 0.1 / (1 + (t - 1) * 0.05) * c / (sqrt(sum) + 1e-10);
  }
  ck_assert_double_eq_tol(
      train_linear("adagrad(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2)", 6, w0, c), w,
      1e-13);
  w = w0, sum = 0;
  for (int t = 1; t <= 4; t++) {
    double g = c + 0.1 * w;  /* weight_decay */
    sum += g * g;
    w -= 0.01 * g / (sqrt(sum) + 1e-10);
  }
  ck_assert_double_eq_tol(train_linear("adagrad(weight_decay=0.1)", 4, w0, c), w, 1e-13);
  /* rmsprop in its four shapes: plain, momentum, centered, both */
  for (int shape = 0; shape < 4; shape++) {
    double mu = shape & 1 ? 0.9 : 0, alpha = 0.9, v = 0, ga = 0, buf = 0;
    bool centered = shape & 2;
    w = w0;
    for (int t = 1; t <= 5; t++) {
      v = alpha * v + (1 - alpha) * c * c;
      double avg = v;
      if (centered) {
        ga = alpha * ga + (1 - alpha) * c;
        avg = v - ga * ga;
      }
      double step = c / (sqrt(avg) + 1e-8);
      if (mu > 0) step = buf = mu * buf + step;
      w -= 0.01 * step;
    }
    char opt[128];
    snprintf(opt, sizeof opt, "rmsprop(alpha=0.9, momentum=%g, centered=%s)", mu,
             centered ? "true" : "false");
    ck_assert_double_eq_tol(train_linear(opt, 5, w0, c), w, 1e-12);
  }
  /* adadelta(lr=1, rho=0.9, eps=1e-6) */
  double v = 0, u = 0;
  w = w0;
  for (int t = 1; t <= 5; t++) {
    v = 0.9 * v + 0.1 * c * c;
    double d = sqrt(u + 1e-6) / sqrt(v + 1e-6) * c;
    u = 0.9 * u + 0.1 * d * d;
    w -= d;
  }
  ck_assert_double_eq_tol(train_linear("adadelta()", 5, w0, c), w, 1e-13);
}
END_TEST

START_TEST(regularizer_closed_forms) {
  /* l2(λ) adds λ·w to the gradient, l1(λ) adds λ·sign(w), elastic_net both. */
  double c = 0.5, w0 = 0.8, lr = 0.1, w = w0;
  for (int t = 0; t < 4; t++) w -= lr * (c + 0.2 * w);
  ck_assert_double_eq_tol(train_linear_reg("sgd(lr=0.1)", "regularize = l2(0.2)", 4, w0, c), w,
                          1e-14);
  w = w0;
  for (int t = 0; t < 4; t++) w -= lr * (c + 0.3 * (w > 0 ? 1 : w < 0 ? -1 : 0));
  ck_assert_double_eq_tol(train_linear_reg("sgd(lr=0.1)", "regularize = l1(0.3)", 4, w0, c), w,
                          1e-14);
  w = -w0;
  for (int t = 0; t < 4; t++) w -= lr * (c + 0.3 * (w > 0 ? 1 : w < 0 ? -1 : 0) + 0.2 * w);
  ck_assert_double_eq_tol(train_linear_reg("sgd(lr=0.1)", "regularize = elastic_net(l1=0.3, l2=0.2)",
                                           4, -w0, c), w, 1e-14);
  /* max_norm: w = 0.8 − 0.1·(−5) = 1.3 per step before projection, clipped to 1 each time */
  ck_assert_double_eq_tol(
      train_linear_reg("sgd(lr=0.1)", "regularize = max_norm(1)", 3, w0, -5), 1, 1e-14);
  ck_assert_double_eq_tol(
      train_linear_reg("sgd(lr=0.1)", "regularize = max_norm(2)", 1, w0, -5), 1.3, 1e-14);
  ck_assert_double_eq_tol(
      train_linear_reg("sgd(lr=0.1)", "regularize = max_norm(1)", 1, w0, 5), 0.3, 1e-14);
  ck_assert_double_eq_tol(
      train_linear_reg("sgd(lr=0.1)", "regularize = max_norm(1)", 1, -w0, 5), -1, 1e-14);
}
END_TEST


/* A chain of r relus, then a convolution, batch norm, a linear layer and a loss. The batch-norm
 * rewrite and autodiff build nodes while the code building them holds pointers to earlier ones;
 * sweeping r moves those nodes across every block and table boundary of the graph up to 2304
 * nodes, so under ASan a pointer invalidated by growth is caught wherever it is held. */
static char *relu_chain_model(int r) {
  Buf b = {0};
  buf_puts(&b, "input image: f32[B, 1, 6, 6] from images\ninput label: i32[B] from labels\n"
               "h0 = image\n");
  for (int i = 0; i < r; i++)
    buf_printf(&b, "h%d = relu(h%d)\n", i + 1, i);
  buf_printf(&b, "c = conv2d(h%d, out=3, kernel=3, pad=1)\nb = batchnorm(c)\n"
                 "logits = linear(flatten(b), out=10)\nloss = cross_entropy(logits, label)\n"
                 "minimize loss\ntrain {\n  batch = 4\n}\n", r);
  return b.p;
}

/* Compiles text through emission; returns the node count, or fails the test with the error. */
static int compile_through_emit(const char *text) {
  Session s;
  if (session_open_text(&s, "chain.kiln", text, NULL) || session_emit(&s))
    ck_abort_msg("%s", s.error);
  ck_assert_ptr_nonnull(strstr(s.c.p, "kiln_program_desc"));
  int n = s.g->nnodes;
  session_close(&s);
  return n;
}

START_TEST(graph_growth_keeps_nodes_in_place) {
  /* The forward graph has r + 13 nodes when batch norm starts building (r = 243 put its first
   * node at id 256); each window puts it on both sides of a power of two and a block end. */
  static const int boundaries[] = {256, 512, 1024, 2048};
  int max_nodes = 0;
  for (int k = 0; k < 4; k++) {
    for (int r = boundaries[k] - 40; r < boundaries[k] + 8; r += 2) {
      char *text = relu_chain_model(r);
      int n = compile_through_emit(text);
      max_nodes = n > max_nodes ? n : max_nodes;
      free(text);
    }
  }
  ck_assert_int_gt(max_nodes, 8 * IR_BLOCK);
}
END_TEST

/* ---- emitting leaves the model as it was ---- */

/* The C of m under the given options (fails the test on an error). */
static char *emit_with(const Graph *m, int threads, bool fuse) {
  SchedOptions o;
  sched_default_options(&o);
  o.threads = threads;
  o.fuse = fuse;
  Plan p = {0};
  Buf b = {0};
  Trap t;
  if (KILN_TRY(&t)) {
    plan_build(m, 64, &o, &p);
    cg_emit_c(m, &p, &b);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    ck_abort_msg("%s", t.msg);
  }
  plan_free(&p);
  return b.p;
}

START_TEST(emits_do_not_grow_the_model) {
  Graph *m = compile(KILN_SOURCE_DIR "/examples/mnist_cnn.kiln");
  size_t before = pool_bytes(m->pool);
  int nodes = m->nnodes;
  char *first = emit_with(m, 2, true);
  for (int i = 0; i < 99; i++) {
    char *again = emit_with(m, 2, true);
    ck_assert_str_eq(again, first);
    free(again);
  }
  ck_assert_uint_eq(pool_bytes(m->pool), before);
  ck_assert_int_eq(m->nnodes, nodes);
  free(first);
  ir_free(m);
}
END_TEST

typedef struct EmitJob {
  const Graph *m;
  int threads;
  bool fuse;
  const char *want;
  int mismatches;
} EmitJob;

static void *emit_job(void *arg) {
  EmitJob *j = arg;
  for (int i = 0; i < 5; i++) {
    char *c = emit_with(j->m, j->threads, j->fuse);
    j->mismatches += strcmp(c, j->want) != 0;
    free(c);
  }
  return NULL;
}

/* Two threads emit the same model at once with different options (what an autotuner does): each
 * gets exactly what a sequential emit with its options gives. */
START_TEST(concurrent_emits_agree_with_sequential) {
  Graph *m = compile(KILN_SOURCE_DIR "/examples/mnist_cnn.kiln");
  char *one = emit_with(m, 1, true), *two = emit_with(m, 2, false);
  ck_assert_str_ne(one, two);
  EmitJob jobs[2] = {{m, 1, true, one, 0}, {m, 2, false, two, 0}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, emit_job, &jobs[i]), 0);
  for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_join(th[i], NULL), 0);
  ck_assert_int_eq(jobs[0].mismatches, 0);
  ck_assert_int_eq(jobs[1].mismatches, 0);
  free(one);
  free(two);
  ir_free(m);
}
END_TEST

static Suite *ir_suite(void) {
  Suite *s = suite_create("ir");
  TCase *tc = tcase_create("shapes");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, broadcasting_with_symbols);
  tcase_add_test(tc, broadcast_errors);
  tcase_add_test(tc, reductions_and_reshape);
  tcase_add_test(tc, shape_error_messages);
  tcase_add_test(tc, matmul_transposes);
  tcase_add_test(tc, conv_output_sizes);
  tcase_add_test(tc, conv_errors);
  tcase_add_test(tc, pool_and_layout_shapes);
  tcase_add_test(tc, centre_shift_rewrite);
  tcase_add_test(tc, mean_shift_and_numel_rewrites);
  tcase_add_test(tc, relu_pool_rewrite);
  suite_add_tcase(s, tc);
  TCase *tm = tcase_create("model");
  tcase_set_timeout(tm, 120);
  tcase_add_test(tm, training_graph_entries);
  tcase_add_test(tm, plan_invariants);
  tcase_add_test(tm, plan_allocation_failures);
  tcase_add_test(tm, sgd_closed_forms);
  tcase_add_test(tm, adam_closed_form);
  tcase_add_test(tm, adaptive_closed_forms);
  tcase_add_test(tm, regularizer_closed_forms);
  tcase_add_test(tm, graph_growth_keeps_nodes_in_place);
  tcase_add_test(tm, emits_do_not_grow_the_model);
  tcase_add_test(tm, concurrent_emits_agree_with_sequential);
  suite_add_tcase(s, tm);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(ir_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
