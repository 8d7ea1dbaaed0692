/*
 * kiln.h — kiln's public library API.
 *
 * A C program gets a model (from a model file, from text, or built with the calls of the builder
 * section), compiles its whole training step inside its own process into a trainer that owns
 * its memory, and trains it on its own buffers:
 *
 *     kiln_model *m;   kiln_trainer *t;   kiln_options o;   double loss;
 *     kiln_model_from_file("mnist_cnn.kiln", &m);
 *     kiln_options_init(&o);
 *     kiln_compile(m, &o, &t);                      // parameters initialised from the seed
 *     kiln_feed in[] = {{"image", pixels, 64 * 784 * sizeof(float)},
 *                       {"label", labels, 64 * sizeof(int32_t)}};
 *     kiln_train_step(t, 64, in, 2, &loss);
 *     kiln_save(t, "model.safetensors");
 *
 * Every function that can fail returns KILN_OK or KILN_ERROR; after an error kiln_last_error()
 * gives the message (for model errors "file:line:col: error: ...", the source line and a caret;
 * for buffers the tensor and its shapes). Handles are opaque. There is no global mutable state:
 * models and trainers are independent of each other, and each may be used by one thread at a
 * time.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#include "kiln_abi.h" /* element types KILN_F32 / KILN_F64 / KILN_I32 and roles KILN_ROLE_* */

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility; only what is declared here leaves it. */
#if defined(KILN_BUILDING_LIBRARY) && defined(__GNUC__)
#define KILN_API __attribute__((visibility("default")))
#else
#define KILN_API
#endif

typedef enum kiln_status { KILN_OK = 0, KILN_ERROR = 1 } kiln_status;

typedef struct kiln_model kiln_model;

/* Parses, type-checks and differentiates a model; builds its train, eval and grad entries. A
 * file named *.onnx is imported as kiln_model_from_onnx(path, NULL, NULL, out) would. */
KILN_API kiln_status kiln_model_from_file(const char *path, kiln_model **out);
/* Imports an ONNX model: its initializers become the values kiln_compile starts the parameters
 * from. loss says how it trains when the file has no loss of its own: "auto" (NULL; cross-entropy
 * on a [batch, classes] output of an image model, else none), "none" (evaluation only),
 * "cross_entropy", "nll" or "mse"; optimizer is the model language's call ("sgd(lr=0.1)"), NULL
 * for adam(lr=1e-3). Unsupported operators are named with the node. */
KILN_API kiln_status kiln_model_from_onnx(const char *path, const char *loss,
                                          const char *optimizer, kiln_model **out);
/* What the two above choose for you. */
typedef struct kiln_model_options {
  int data_parallel;      /* 1: for data-parallel training (docs/distributed.md): batch-norm
                             statistics and the loss's batch mean are taken over every process
                             through the collective given with kiln_set_allreduce. Each process
                             runs kiln_grad_step on its share of the batch, the host sums every
                             "grad.<p>" tensor over the processes, and each runs kiln_apply_step */
  const char *onnx_loss, *onnx_optimizer; /* an ONNX file: as kiln_model_from_onnx's */
} kiln_model_options;
KILN_API void kiln_model_options_init(kiln_model_options *o);
/* The model in text (named path in messages), or in the file at path when text is NULL. */
KILN_API kiln_status kiln_model_open(const char *path, const char *text,
                                     const kiln_model_options *o, kiln_model **out);
/* Same from text; `name` is used in error messages as the file name. */
KILN_API kiln_status kiln_model_from_string(const char *name, const char *text, kiln_model **out);
KILN_API void kiln_model_free(kiln_model *m);

/* The message of the last failed call on this thread ("" if none). */
KILN_API const char *kiln_last_error(void);

/* Number of learnable parameters (elements) and of parameter tensors. */
KILN_API int64_t kiln_param_count(const kiln_model *m);
KILN_API int kiln_param_tensors(const kiln_model *m);
/* Name and shape of the i-th parameter tensor (dims must hold 6 entries); returns its rank. */
KILN_API int kiln_param_info(const kiln_model *m, int i, const char **name, int64_t *dims);

/* The whole training step as one C11 translation unit specialised to `batch` (0: the model's).
 * *source is malloc'd; free it with free(). */
KILN_API kiln_status kiln_emit_c(kiln_model *m, int64_t batch, char **source);

/* ---- building a model with C calls ------------------------------------------------------------ */

/* A model under construction, one call a statement. The builder writes the model in kiln's
 * language, one line per call (kiln_builder_source), and kiln_builder_finish compiles that text
 * through the same front end as a model file: every check, shape rule and layer of the language
 * applies unchanged, an error names the call's line and shows it with a caret, and the model
 * can be saved and later used as a model file by `kiln train`. Calls check their arguments
 * (names, handles, numbers) at once; after the first failure every later call fails with the same
 * message, so a host may check only the last status. */
typedef struct kiln_builder kiln_builder;
typedef int32_t kiln_var;   /* a tensor of the model being built */

#define KILN_BATCH (-1)     /* a dimension that is the batch, in kiln_input's dims */

/* A keyword option of a call: a number, or (word != NULL) a word such as `same` or `true`. */
typedef struct kiln_option {
  const char *key;
  double number;
  const char *word;
} kiln_option;

/* name: the model's name, an identifier. */
KILN_API kiln_status kiln_builder_new(const char *name, kiln_builder **out);
KILN_API void kiln_builder_free(kiln_builder *b);
/* The model text the calls so far make (owned by b, valid until its next call). */
KILN_API const char *kiln_builder_source(const kiln_builder *b);

/* `input NAME: DTYPE[dims] [from FEED * scale]`: a tensor fed at every step. dtype KILN_F32,
 * KILN_F64 or KILN_I32; dims[i] > 0 or KILN_BATCH. feed: "images" (bytes times scale), "labels",
 * or NULL when the host feeds it only through the C API. */
KILN_API kiln_status kiln_input(kiln_builder *b, const char *name, int dtype, int rank,
                                const int64_t *dims, const char *feed, double scale,
                                kiln_var *out);

/* Any function of the language (docs/language.md) applied to args with keyword options:
 * kiln_call(b, "leaky_relu", NULL, &x, 1, (kiln_option[]){{"slope", 0.2}}, 1, &y). A layer with
 * parameters takes its name from `name` ("conv1" makes conv1.weight and conv1.bias); NULL gives
 * a generated one. */
KILN_API kiln_status kiln_call(kiln_builder *b, const char *fn, const char *name,
                               const kiln_var *args, int nargs, const kiln_option *options,
                               int noptions, kiln_var *out);

/* The layers a CNN is made of, as typed shorthands of kiln_call. stride 0 means the default
 * (1 for convolutions, the kernel for pooling). */
KILN_API kiln_status kiln_conv2d(kiln_builder *b, const char *name, kiln_var x, int64_t out,
                                 int64_t kernel, int64_t stride, int64_t pad, kiln_var *y);
KILN_API kiln_status kiln_linear(kiln_builder *b, const char *name, kiln_var x, int64_t out,
                                 kiln_var *y);
KILN_API kiln_status kiln_batchnorm(kiln_builder *b, const char *name, kiln_var x, kiln_var *y);
KILN_API kiln_status kiln_maxpool2d(kiln_builder *b, kiln_var x, int64_t kernel, int64_t stride,
                                    kiln_var *y);
KILN_API kiln_status kiln_relu(kiln_builder *b, kiln_var x, kiln_var *y);
KILN_API kiln_status kiln_flatten(kiln_builder *b, kiln_var x, kiln_var *y);
KILN_API kiln_status kiln_dropout(kiln_builder *b, const char *name, kiln_var x, double p,
                                  kiln_var *y);
KILN_API kiln_status kiln_cross_entropy(kiln_builder *b, kiln_var logits, kiln_var labels,
                                        kiln_var *loss);

/* `output` (the prediction eval computes) and `minimize` (the loss; exactly once). */
KILN_API kiln_status kiln_output(kiln_builder *b, kiln_var x);
KILN_API kiln_status kiln_minimize(kiln_builder *b, kiln_var loss);

/* The train block: `key = number` (batch, epochs, seed, steps) and `key = fn(options)`
 * (optimizer = adam(lr=1e-3), init = he(), early_stop = patience(3); regularize may be given
 * several times and collects a list). */
KILN_API kiln_status kiln_train_number(kiln_builder *b, const char *key, double value);
KILN_API kiln_status kiln_train_call(kiln_builder *b, const char *key, const char *fn,
                                     const kiln_option *options, int noptions);

/* Compiles the statements into a model (the builder stays usable: add more and finish again). */
KILN_API kiln_status kiln_builder_finish(kiln_builder *b, kiln_model **out);

/* ---- compiling a trainer ----------------------------------------------------------------- */

typedef enum kiln_backend {
  KILN_BACKEND_DEFAULT = 0, /* the JIT when this kiln has it, else the system compiler */
  KILN_BACKEND_JIT = 1,     /* Clang and LLVM inside this process: no file, no process */
  KILN_BACKEND_CC = 2       /* the system C compiler into a private directory, then dlopen */
} kiln_backend;

/* Everything a compile depends on besides the model. kiln_options_init fills the defaults; kiln
 * asks the machine nothing, so the same options give the same program everywhere. */
typedef struct kiln_options {
  kiln_backend backend;
  int threads;            /* the most threads a step may run on (the trainer starts with this
                             many; kiln_set_threads changes it); 0: 1. Results are the same
                             for every thread count */
  int64_t batch;          /* largest batch a step takes; 0: the model's train block, else 64 */
  int opt_level;          /* the compiler's -O level, 1..3; 0: 2 */
  int64_t seed;           /* parameter initialisation; < 0: the model's train block, else 1 */
  int vector_bytes;       /* widest SIMD register to plan for: 16, 32 or 64; 0: 32 */
  int64_t l1_bytes, l2_bytes, l3_bytes; /* data caches per core, to tile for; 0: 32K/256K/8M */
  const char *cache_dir;  /* compiled programs are kept here and reused; NULL: no cache */
  const char *cc;         /* cc backend: the compiler command; NULL: "cc" */
  const char *tmp_dir;    /* cc backend: where its private directory is made; NULL: "/tmp" */
} kiln_options;
KILN_API void kiln_options_init(kiln_options *o);
/* Whether this kiln has backend b built in (KILN_BACKEND_DEFAULT: always). */
KILN_API int kiln_has_backend(kiln_backend b);

/* A compiled training step and the memory it runs in: parameters, optimizer state, inputs,
 * outputs and temporaries, in one arena. */
typedef struct kiln_trainer kiln_trainer;

/* Compiles the model's training step (entries train, grad, apply, eval) and initialises every
 * parameter, running statistic, optimizer state and hyper-parameter exactly as `kiln train` and
 * a standalone trainer do. The trainer does not refer to the model afterwards. */
KILN_API kiln_status kiln_compile(const kiln_model *m, const kiln_options *o, kiln_trainer **out);
KILN_API void kiln_trainer_free(kiln_trainer *t);
/* The largest batch a step of t takes. */
KILN_API int64_t kiln_trainer_batch(const kiln_trainer *t);
/* Runs t's steps on `threads` threads from now on, at most kiln_options.threads (more are
 * clamped); threads <= 0: as many as that. Results do not change. */
KILN_API kiln_status kiln_set_threads(kiln_trainer *t, int threads);
/* A data-parallel model's collective (kiln_model_options.data_parallel): fn(comm, data, n, dtype)
 * must replace the n values of type dtype (KILN_F32 or KILN_F64) at data with their sum over
 * every process, the same on each, before it returns (MPI_Allreduce with MPI_SUM, or the host's
 * own). Steps call it for batch statistics and the loss; NULL: one process. */
KILN_API kiln_status kiln_set_allreduce(kiln_trainer *t,
                                        void (*fn)(void *comm, void *data, int64_t n, int dtype),
                                        void *comm);
/* The threads t's steps run on. */
KILN_API int kiln_threads(const kiln_trainer *t);

/* ---- tensors by name ------------------------------------------------------------------------- */

typedef struct kiln_tensor_info {
  const char *name;       /* "conv1.weight", "conv1.weight.exp_avg", "lr", "image", "loss" */
  int role;               /* KILN_ROLE_PARAM, _STATE, _HYPER, _INPUT, _OUTPUT, _OPT, _GRAD */
  int dtype;              /* KILN_F32, KILN_F64, KILN_I32 */
  int rank;
  int64_t dims[KILN_ABI_MAX_RANK]; /* at the largest batch */
  int batch_axis;         /* the axis that is the batch, or -1 */
  size_t bytes;           /* the whole tensor at the largest batch */
} kiln_tensor_info;

KILN_API int kiln_tensor_count(const kiln_trainer *t);
/* The i-th tensor (0 <= i < kiln_tensor_count) or the one named name. */
KILN_API kiln_status kiln_tensor_at(const kiln_trainer *t, int i, kiln_tensor_info *info);
KILN_API kiln_status kiln_tensor_find(const kiln_trainer *t, const char *name,
                                      kiln_tensor_info *info);

/* Copies a tensor's values out of / into the trainer, in the tensor's own element type. bytes
 * must be the tensor's size, or for a tensor with a batch axis first, the size of a whole
 * number of examples (the leading ones). */
KILN_API kiln_status kiln_get(const kiln_trainer *t, const char *name, void *dst, size_t bytes);
KILN_API kiln_status kiln_set(kiln_trainer *t, const char *name, const void *src, size_t bytes);
/* A scalar tensor ("lr", "loss", "adam.step") as a double, converted from its element type. */
KILN_API kiln_status kiln_get_scalar(const kiln_trainer *t, const char *name, double *value);
KILN_API kiln_status kiln_set_scalar(kiln_trainer *t, const char *name, double value);

/* ---- steps ----------------------------------------------------------------------------------- */

/* One input of a step: the tensor's values (already scaled: what the model computes with, not
 * raw pixels) for `batch` examples, in its element type. */
typedef struct kiln_feed {
  const char *name;
  const void *data;
  size_t bytes;
} kiln_feed;

/* Each step takes 1 <= batch <= kiln_trainer_batch(t) examples and every input the step reads,
 * once each, with their sizes checked (kiln_tensor_info's role KILN_ROLE_INPUT lists them). The loss is the batch's mean (NULL: not wanted).
 *
 * train: forward, backward and the optimizer update.
 * grad:  forward and backward; leaves d loss / d p in the tensor "grad.<p>" of every parameter
 *        p, for the host to read, combine or overwrite before apply.
 * apply: the optimizer update from the "grad.<p>" tensors; grad then apply is bit-identical to
 *        train.
 * eval:  forward in evaluation mode (running statistics, no dropout); the model's declared
 *        output ("output NAME") goes to output (output_bytes for `batch` examples; NULL: not
 *        wanted). */
KILN_API kiln_status kiln_train_step(kiln_trainer *t, int64_t batch, const kiln_feed *inputs,
                                     int ninputs, double *loss);
KILN_API kiln_status kiln_grad_step(kiln_trainer *t, int64_t batch, const kiln_feed *inputs,
                                    int ninputs, double *loss);
KILN_API kiln_status kiln_apply_step(kiln_trainer *t);
KILN_API kiln_status kiln_eval_step(kiln_trainer *t, int64_t batch, const kiln_feed *inputs,
                                    int ninputs, double *loss, void *output,
                                    size_t output_bytes);

/* ---- checkpoints ------------------------------------------------------------------------------ */

/* Parameters and saved state (running statistics) as a safetensors file under their PyTorch
 * names, written atomically; load checks every name and shape before changing anything. */
KILN_API kiln_status kiln_save(const kiln_trainer *t, const char *path);
KILN_API kiln_status kiln_load(kiln_trainer *t, const char *path);

#ifdef __cplusplus
}
#endif

#endif
