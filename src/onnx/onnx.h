/*
 * onnx.h — ONNX import: an ONNX model file becomes kiln model text.
 *
 *   ox_read.c    the protobuf (onnx.proto's C bindings, generated at build time by protoc-c) and
 *                its tensors, checked: a malformed or hostile file is an error, never a crash
 *   ox_import.c  the graph translated node by node into model-language statements through one
 *                table of ONNX operators, each with ONNX's exact semantics
 *
 * The translation is text on purpose: `kiln import` prints exactly what `kiln train model.onnx`
 * compiles, the model language's checks apply to imported models unchanged, and every layer is
 * built by the same layer library (nn/) as a hand-written model. Initializers that a layer
 * absorbs (a Conv's weight, a Gemm's, a BatchNormalization's statistics) become that layer's
 * parameters and buffers under kiln's names ("conv1.weight"); the others become `param`s. Their
 * values travel beside the text as an initial-values table, which a trainer loads like
 * --init-from. Errors name the file and the node: "model.onnx: node 3 'Conv_3' (Conv): ...".
 */
#ifndef KILN_ONNX_H
#define KILN_ONNX_H

#include "ir/ir.h"

/* How a model without a loss of its own is made trainable. */
typedef enum OxLoss {
  OX_LOSS_AUTO,           /* cross_entropy when the graph has one output [N, C] and an image
                             input; otherwise none */
  OX_LOSS_NONE,           /* an inference model: no training step */
  OX_LOSS_CROSS_ENTROPY,  /* cross_entropy(output, label) with `input label: i32[B] from labels` */
  OX_LOSS_NLL,            /* nll(output, label): the output holds log-probabilities */
  OX_LOSS_MSE             /* mse(output, target) with `input target` shaped like the output */
} OxLoss;

typedef struct OxOptions {
  OxLoss loss;
  const char *optimizer;  /* the train block's optimizer as the model language writes it
                             ("sgd(lr=0.1, momentum=0.9)"), or NULL: adam(lr=1e-3) */
  int64_t batch, epochs;  /* written into the train block when > 0 */
  double pixel_scale;     /* a trained model's image input is `from images * pixel_scale`
                             (0: 1/255) */
  const char *model_name; /* the `model` statement, or NULL: the file's stem */
  /* Filled when the import fails on something kiln does not support (as opposed to a file that
   * is wrong): the operator or feature, "Conv (3-D)", for counting in conformance runs. */
  char unsupported[96];
} OxOptions;
void ox_default_options(OxOptions *o);

/* A tensor of initial values under the name kiln gives it ("conv1.weight"). */
typedef struct OxTensor {
  const char *name;
  DType dtype;
  int rank;
  int64_t dims[IR_MAX_RANK];
  int64_t n;
  double *v;
} OxTensor;

/* A graph input or output and the kiln tensor that carries it. */
typedef struct OxPort {
  const char *onnx;       /* ONNX's name */
  const char *kiln;       /* the kiln input's name, or the eval entry's output ("eval.output",
                             "eval.output.y") */
  DType dtype;            /* as kiln holds it */
  int elem;               /* ONNX's element type (TensorProto.DataType) */
} OxPort;

typedef struct OxModel {
  char *text;             /* the kiln model */
  OxTensor *init;         /* initial values of parameters and buffers */
  int ninit;
  OxPort *inputs, *outputs;
  int ninputs, noutputs;
  int64_t opset;          /* the default domain's version */
} OxModel;

/* Is ONNX import built in? */
bool ox_available(void);
/* Reads and translates the ONNX file at path (data: its bytes, n of them, when not NULL), in
 * pool p; kiln_fail with the file and node on any error. */
OxModel *ox_import(Pool *p, const char *path, const void *data, size_t n, OxOptions *o);
/* A serialized TensorProto (the .pb files of ONNX's test data), as values in double. */
OxTensor *ox_read_tensor(Pool *p, const char *path);
/* The ONNX operators kiln imports, comma-separated, for messages. */
const char *ox_supported_ops(void);
/* Is path an ONNX file by its name (".onnx")? How drivers that take either kind of model file
 * tell them apart. */
bool ox_is_onnx_path(const char *path);

/* ---- between ox_read.c and ox_import.c (they see the protobuf bindings) ---- */
#ifdef OX_INTERNAL
#include "onnx.pb-c.h"

/* The model in path (data/n: its bytes), unpacked and checked for what every later step relies
 * on: a graph, names on every value, tensors whose sizes agree with their data. *free_it is
 * what ox_free_model releases. */
Onnx__ModelProto *ox_read_model(const char *path, const void *data, size_t n);
void ox_free_model(Onnx__ModelProto *m);
/* A TensorProto's values in double (ints exactly up to 2^53): kiln_fail naming what (a file,
 * an initializer, an attribute) when its type is not a number kiln reads or its data is short. */
OxTensor *ox_tensor(Pool *p, const Onnx__TensorProto *t, const char *what);
/* "FLOAT", "INT64", ... */
const char *ox_elem_name(int elem);
#endif

#endif
