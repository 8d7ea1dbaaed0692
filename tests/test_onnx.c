/*
 * test_onnx.c — ONNX import (Check framework).
 *
 * Models are built here with the protobuf-c bindings kiln reads them with, so each test holds
 * exactly the graph it needs: malformed and hostile files must end in an error naming the file
 * and the node (never a crash), unsupported operators are named with the list of supported ones,
 * layers take their initializers' values under kiln's names, and a model from ONNX's own test
 * data imports to exactly the expected text and, through the C API, computes ONNX's expected
 * output from its initializers.
 */
#define OX_INTERNAL
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver/driver.h"
#include "kiln.h"
#include "onnx/onnx.h"

#define TESTDATA "/usr/share/libonnx-testdata/data"

/* ---- building models ---- */

static void *mem[1024];
static int nmem;
static char tmpdir[256];

static void *A(size_t n) {
  ck_assert_int_lt(nmem, 1024);
  return mem[nmem++] = calloc(1, n);
}

static void setup(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln_onnx_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void) {
  while (nmem) free(mem[--nmem]);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

/* A float tensor input [d0, d1, ...]; d < 0 is the symbolic batch "N". */
static Onnx__ValueInfoProto *value(const char *name, int elem, int rank, const int64_t *dims) {
  Onnx__ValueInfoProto *v = A(sizeof *v);
  onnx__value_info_proto__init(v);
  v->name = (char *)name;
  Onnx__TypeProto *t = A(sizeof *t);
  onnx__type_proto__init(t);
  t->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
  t->tensor_type = A(sizeof *t->tensor_type);
  onnx__type_proto__tensor__init(t->tensor_type);
  t->tensor_type->has_elem_type = 1;
  t->tensor_type->elem_type = elem;
  Onnx__TensorShapeProto *s = A(sizeof *s);
  onnx__tensor_shape_proto__init(s);
  s->n_dim = (size_t)rank;
  s->dim = A((size_t)(rank + 1) * sizeof *s->dim);
  for (int i = 0; i < rank; i++) {
    Onnx__TensorShapeProto__Dimension *d = A(sizeof *d);
    onnx__tensor_shape_proto__dimension__init(d);
    if (dims[i] < 0) {
      d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
      d->dim_param = "N";
    } else {
      d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
      d->dim_value = dims[i];
    }
    s->dim[i] = d;
  }
  t->tensor_type->shape = s;
  v->type = t;
  return v;
}

static Onnx__TensorProto *tensor(const char *name, int rank, const int64_t *dims, int n,
                                 const float *v) {
  Onnx__TensorProto *t = A(sizeof *t);
  onnx__tensor_proto__init(t);
  t->name = (char *)name;
  t->has_data_type = 1;
  t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
  t->n_dims = (size_t)rank;
  t->dims = (int64_t *)dims;
  t->n_float_data = (size_t)n;
  t->float_data = (float *)v;
  return t;
}

static Onnx__AttributeProto *attr_i(const char *name, int64_t i) {
  Onnx__AttributeProto *a = A(sizeof *a);
  onnx__attribute_proto__init(a);
  a->name = (char *)name;
  a->has_type = 1;
  a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
  a->has_i = 1;
  a->i = i;
  return a;
}

static Onnx__NodeProto *node(const char *op, const char *name, int nin, const char **in,
                             const char *out, int nattr, Onnx__AttributeProto **attrs) {
  Onnx__NodeProto *n = A(sizeof *n);
  onnx__node_proto__init(n);
  n->op_type = (char *)op;
  n->name = (char *)name;
  n->n_input = (size_t)nin;
  n->input = (char **)in;
  n->n_output = 1;
  n->output = A(sizeof(char *));
  n->output[0] = (char *)out;
  n->n_attribute = (size_t)nattr;
  n->attribute = attrs;
  return n;
}

typedef struct Spec {
  Onnx__ValueInfoProto *in[4], *out[2];
  int nin, nout;
  Onnx__NodeProto *nodes[4];
  int nnodes;
  Onnx__TensorProto *inits[4];
  int ninits;
} Spec;

/* The model of spec at opset 13, written to tmpdir/name; returns the path. */
static const char *write_model(const char *name, const Spec *sp) {
  Onnx__ModelProto m;
  onnx__model_proto__init(&m);
  m.has_ir_version = 1;
  m.ir_version = 8;
  Onnx__OperatorSetIdProto os;
  onnx__operator_set_id_proto__init(&os);
  os.domain = "";
  os.has_version = 1;
  os.version = 13;
  Onnx__OperatorSetIdProto *osp = &os;
  m.n_opset_import = 1;
  m.opset_import = &osp;
  Onnx__GraphProto g;
  onnx__graph_proto__init(&g);
  g.name = "g";
  g.n_input = (size_t)sp->nin;
  g.input = (Onnx__ValueInfoProto **)sp->in;
  g.n_output = (size_t)sp->nout;
  g.output = (Onnx__ValueInfoProto **)sp->out;
  g.n_node = (size_t)sp->nnodes;
  g.node = (Onnx__NodeProto **)sp->nodes;
  g.n_initializer = (size_t)sp->ninits;
  g.initializer = (Onnx__TensorProto **)sp->inits;
  m.graph = &g;
  size_t n = onnx__model_proto__get_packed_size(&m);
  uint8_t *buf = A(n + 1);
  onnx__model_proto__pack(&m, buf);
  static char path[4][512];
  static int k;
  char *p = path[k++ % 4];
  snprintf(p, 512, "%s/%s", tmpdir, name);
  FILE *f = fopen(p, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
  fclose(f);
  return p;
}

/* Imports path; returns the error message ("" on success) and the model in *m. */
static const char *import(Pool *p, const char *path, OxOptions *o, OxModel **m) {
  static char msg[4096];
  Trap t;
  msg[0] = 0;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    snprintf(msg, sizeof msg, "%s", t.msg);
    return msg;
  }
  *m = ox_import(p, path, NULL, 0, o);
  kiln_trap_end(&t);
  return msg;
}

static const char *import_error(const char *path, OxOptions *o) {
  Pool *p = pool_new();
  OxModel *m = NULL;
  const char *msg = import(p, path, o, &m);
  pool_free(p);
  return msg;
}

/* ---- tests ---- */

START_TEST(malformed_files) {
  OxOptions o;
  ox_default_options(&o);
  char path[600];
  snprintf(path, sizeof path, "%s/junk.onnx", tmpdir);
  FILE *f = fopen(path, "wb");
  fwrite("\xff\xff\xff\xff\x0f", 1, 5, f);
  fclose(f);
  char want[1200];
  snprintf(want, sizeof want, "error: %s: not an ONNX model (the protobuf does not parse as "
           "onnx.ModelProto)\n", path);
  ck_assert_str_eq(import_error(path, &o), want);
  f = fopen(path, "wb"); /* an empty file is an empty ModelProto: no graph */
  fclose(f);
  snprintf(want, sizeof want, "error: %s: the ONNX model has no graph\n", path);
  ck_assert_str_eq(import_error(path, &o), want);
  snprintf(want, sizeof want, "error: cannot read '%s': it is a directory\n", tmpdir);
  const char *got = import_error(tmpdir, &o);
  ck_assert_msg(strstr(got, "cannot read") && strstr(got, tmpdir), "%s", got);
  /* every truncation of a real model fails cleanly or imports */
  const char *conv = TESTDATA "/node/test_conv_with_strides_padding/model.onnx";
  if (access(conv, R_OK) == 0) {
    Pool *p = pool_new();
    size_t n;
    char *bytes = read_file(p, conv, &n);
    for (size_t cut = 0; cut < n; cut += 7) {
      Pool *q = pool_new();
      Trap t;
      if (KILN_TRY(&t)) {
        ox_import(q, "cut.onnx", cut ? bytes : "", cut, &o);
        kiln_trap_end(&t);
      } else {
        kiln_trap_end(&t);
        ck_assert_msg(strstr(t.msg, "cut.onnx"), "the message names the file: %s", t.msg);
      }
      pool_free(q);
    }
    pool_free(p);
  }
}
END_TEST

START_TEST(hostile_tensors) {
  static const int64_t d2[] = {2, 3}, neg[] = {-2, 3}, huge[] = {1LL << 40, 1LL << 40};
  static const float v[6] = {1, 2, 3, 4, 5, 6};
  const char *in[] = {"x", "w"};
  OxOptions o;
  ox_default_options(&o);
  o.loss = OX_LOSS_NONE;
  struct {
    const int64_t *dims;
    int n;
    const char *want;
  } cases[] = {
      {d2, 5, "initializer 'w': the tensor has 5 values for 6 elements"},
      {neg, 6, "initializer 'w' has a dimension -2"},
      {huge, 6, "initializer 'w' has a dimension 1099511627776"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    Spec s = {.nin = 1, .nout = 1, .nnodes = 1, .ninits = 1};
    s.in[0] = value("x", 1, 2, d2);
    s.out[0] = value("y", 1, 2, d2);
    s.nodes[0] = node("Add", "add", 2, in, "y", 0, NULL);
    s.inits[0] = tensor("w", 2, cases[i].dims, cases[i].n, v);
    const char *path = write_model("bad.onnx", &s);
    const char *got = import_error(path, &o);
    ck_assert_msg(strstr(got, cases[i].want) && strstr(got, path), "case %zu: %s", i, got);
  }
}
END_TEST

START_TEST(unsupported_and_missing) {
  static const int64_t d[] = {2, 3};
  const char *in[] = {"x"}, *in2[] = {"x", "nowhere"};
  OxOptions o;
  ox_default_options(&o);
  Spec s = {.nin = 1, .nout = 1, .nnodes = 1};
  s.in[0] = value("x", 1, 2, d);
  s.out[0] = value("y", 1, 2, d);
  s.nodes[0] = node("Frobnicate", "f0", 1, in, "y", 0, NULL);
  const char *path = write_model("f.onnx", &s);
  char want[2048];
  snprintf(want, sizeof want, "error: %s: node 0 'f0' (Frobnicate): kiln does not import the "
           "operator Frobnicate; it imports %s\n", path, ox_supported_ops());
  ck_assert_str_eq(import_error(path, &o), want);
  ck_assert_str_eq(o.unsupported, "Frobnicate");
  ck_assert_ptr_nonnull(strstr(ox_supported_ops(), "Conv, Cos"));
  s.nodes[0] = node("Add", NULL, 2, in2, "y", 0, NULL);
  path = write_model("m.onnx", &s);
  snprintf(want, sizeof want, "error: %s: node 0 (Add): input 'nowhere' is not a graph input, "
           "an initializer or an earlier node's output (ONNX lists nodes in topological order)\n",
           path);
  ck_assert_str_eq(import_error(path, &o), want);
  ck_assert_str_eq(o.unsupported, "");
}
END_TEST

START_TEST(attribute_errors) {
  static const int64_t dx[] = {1, 2, 5, 5}, dw[] = {4, 2, 3, 3}, dy[] = {1, 4, 3, 3};
  static const float w[72] = {0};
  const char *in[] = {"x", "w"};
  OxOptions o;
  ox_default_options(&o);
  Onnx__AttributeProto *group0[] = {attr_i("group", 0)};
  Spec s = {.nin = 1, .nout = 1, .nnodes = 1, .ninits = 1};
  s.in[0] = value("x", 1, 4, dx);
  s.out[0] = value("y", 1, 4, dy);
  s.inits[0] = tensor("w", 4, dw, 72, w);
  s.nodes[0] = node("Conv", "c", 2, in, "y", 1, group0);
  const char *path = write_model("g.onnx", &s);
  char want[1024];
  snprintf(want, sizeof want, "error: %s: node 0 'c' (Conv): 'group' must be positive\n", path);
  ck_assert_str_eq(import_error(path, &o), want);
  Onnx__AttributeProto *group2[] = {attr_i("group", 2)};
  s.nodes[0] = node("Conv", "c", 2, in, "y", 1, group2);
  path = write_model("g2.onnx", &s);
  snprintf(want, sizeof want, "error: %s: node 0 'c' (Conv): 'x' has 2 channels but the weight "
           "'w' expects 2 x 2 groups\n", path);
  ck_assert_str_eq(import_error(path, &o), want);
}
END_TEST

/* Gemm with transB = 0 stores B as [K, N]: the linear layer's weight is its transpose, and the
 * layer is named after the initializer. */
START_TEST(gemm_becomes_linear) {
  static const int64_t dx[] = {-1, 4, 7, 7}, dflat[] = {-1, 196}, db[] = {196, 3}, dc[] = {3},
                       dy[] = {-1, 3};
  float *b = A(196 * 3 * sizeof(float));
  for (int i = 0; i < 196 * 3; i++) b[i] = (float)i;
  static const float c[3] = {0.5f, -1, 2};
  const char *fin[] = {"x"}, *gin[] = {"flat", "fc.weight", "fc.bias"};
  OxOptions o;
  ox_default_options(&o);
  Spec s = {.nin = 1, .nout = 1, .nnodes = 2, .ninits = 2};
  s.in[0] = value("x", 1, 4, dx);
  s.out[0] = value("y", 1, 2, dy);
  s.nodes[0] = node("Flatten", "flatten", 1, fin, "flat", 0, NULL);
  s.nodes[1] = node("Gemm", "gemm", 3, gin, "y", 0, NULL);
  s.inits[0] = tensor("fc.weight", 2, db, 196 * 3, b);
  s.inits[1] = tensor("fc.bias", 1, dc, 3, c);
  (void)dflat;
  const char *path = write_model("gemm.onnx", &s);
  Pool *p = pool_new();
  OxModel *m = NULL;
  ck_assert_str_eq(import(p, path, &o, &m), "");
  char want[2048];
  snprintf(want, sizeof want,
           "# Imported from %s by kiln import (ONNX opset 13).\n"
           "# Initial values of the 2 parameters and buffers below come from the file's "
           "initializers.\n"
           "model g\n\n"
           "input x: f32[B, 4, 7, 7] from images / 255\n"
           "input label: i32[B] from labels\n\n"
           "flat = flatten(x)   # Flatten flatten\n"
           "y = linear(flat, out=3) as fc   # Gemm gemm\n\n"
           "output y\n\n"
           "loss = cross_entropy(y, label)\n"
           "minimize loss\n\n"
           "train {\n  optimizer = adam(lr=1e-3)\n}\n", path);
  ck_assert_str_eq(m->text, want);
  ck_assert_int_eq(m->ninit, 2);
  ck_assert_str_eq(m->init[0].name, "fc.weight");
  ck_assert_int_eq(m->init[0].dims[0], 3);
  ck_assert_int_eq(m->init[0].dims[1], 196);
  for (int j = 0; j < 3; j++)
    for (int i = 0; i < 196; i++) ck_assert(m->init[0].v[j * 196 + i] == b[i * 3 + j]);
  ck_assert_str_eq(m->init[1].name, "fc.bias");
  ck_assert(m->init[1].v[1] == -1);
  ck_assert_int_eq(m->ninputs, 1);
  ck_assert_str_eq(m->outputs[0].kiln, "eval.output");
  pool_free(p);
}
END_TEST

START_TEST(conformance_model_text) {
  const char *path = TESTDATA "/node/test_maxpool_2d_ceil/model.onnx";
  if (access(path, R_OK)) return; /* libonnx-testdata: installed by run-tests.sh */
  Pool *p = pool_new();
  OxOptions o;
  ox_default_options(&o);
  OxModel *m = NULL;
  ck_assert_str_eq(import(p, path, &o, &m), "");
  /* ceil_mode: 4 = 3 + 2·(out − 1) − 1 needs one more row and column of padding at the end */
  char want[1024];
  snprintf(want, sizeof want,
           "# Imported from %s by kiln import (ONNX opset 12).\n"
           "model test_maxpool_2d_ceil\n\n"
           "input x: f32[1, 1, 4, 4]\n\n"
           "y = maxpool2d(x, kernel=3, stride=2, pad=[0, 1, 0, 1], dilation=1)   # MaxPool\n\n"
           "output y\n", path);
  ck_assert_str_eq(m->text, want);
  pool_free(p);
}
END_TEST

/* Through the C API: a convolution exported from PyTorch, its weights in initializers, computes
 * ONNX's expected output. */
START_TEST(api_starts_from_initializers) {
  const char *dir = TESTDATA "/pytorch-converted/test_Conv2d_groups";
  char model[512], in[512], out[512];
  snprintf(model, sizeof model, "%s/model.onnx", dir);
  if (access(model, R_OK)) return;
  snprintf(in, sizeof in, "%s/test_data_set_0/input_0.pb", dir);
  snprintf(out, sizeof out, "%s/test_data_set_0/output_0.pb", dir);
  kiln_model *m = NULL;
  ck_assert_int_eq(kiln_model_from_onnx(model, "bogus", NULL, &m), KILN_ERROR);
  ck_assert_ptr_nonnull(strstr(kiln_last_error(), "loss is auto, none"));
  ck_assert_msg(kiln_model_from_onnx(model, "none", NULL, &m) == KILN_OK, "%s", kiln_last_error());
  kiln_options ko;
  kiln_options_init(&ko);
  kiln_trainer *t = NULL;
  ck_assert_msg(kiln_compile(m, &ko, &t) == KILN_OK, "%s", kiln_last_error());
  Pool *p = pool_new();
  OxTensor *x = ox_read_tensor(p, in), *y = ox_read_tensor(p, out);
  float *xf = malloc((size_t)x->n * sizeof *xf), *yf = malloc((size_t)y->n * sizeof *yf);
  for (int64_t i = 0; i < x->n; i++) xf[i] = (float)x->v[i];
  kiln_tensor_info info;
  ck_assert_int_eq(kiln_tensor_at(t, 0, &info), KILN_OK);
  const char *input = NULL;
  for (int i = 0; i < kiln_tensor_count(t); i++) {
    kiln_tensor_at(t, i, &info);
    if (info.role == KILN_ROLE_INPUT) input = info.name;
  }
  ck_assert_ptr_nonnull(input);
  kiln_feed feed = {input, xf, (size_t)x->n * sizeof *xf};
  ck_assert_msg(kiln_eval_step(t, kiln_trainer_batch(t), &feed, 1, NULL, yf,
                               (size_t)y->n * sizeof *yf) == KILN_OK, "%s", kiln_last_error());
  for (int64_t i = 0; i < y->n; i++)
    ck_assert_msg(fabs(yf[i] - y->v[i]) <= 1e-5 + 1e-4 * fabs(y->v[i]), "element %lld: %g vs %g",
                  (long long)i, yf[i], y->v[i]);
  free(xf);
  free(yf);
  pool_free(p);
  kiln_trainer_free(t);
  kiln_model_free(m);
}
END_TEST

/* Inputs libFuzzer found (tests/fuzz/seeds/onnx), each with the exact message it must give. */
START_TEST(fuzz_regressions) {
  /* an empty string attribute (no bytes at all) was read with memchr(NULL, ...) */
  const char *path = KILN_SOURCE_DIR "/tests/fuzz/seeds/onnx/empty-string-attribute.onnx";
  OxOptions o;
  ox_default_options(&o);
  char want[1024];
  snprintf(want, sizeof want, "error: %s: node 0 (Conv): auto_pad '' is not NOTSET, SAME_UPPER, "
           "SAME_LOWER or VALID\n", path);
  ck_assert_str_eq(import_error(path, &o), want);
}
END_TEST

static Suite *onnx_suite(void) {
  Suite *s = suite_create("onnx");
  TCase *tc = tcase_create("onnx");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, malformed_files);
  tcase_add_test(tc, hostile_tensors);
  tcase_add_test(tc, unsupported_and_missing);
  tcase_add_test(tc, attribute_errors);
  tcase_add_test(tc, gemm_becomes_linear);
  tcase_add_test(tc, conformance_model_text);
  tcase_add_test(tc, api_starts_from_initializers);
  tcase_add_test(tc, fuzz_regressions);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(onnx_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
