/*
 * kiln_abi.h — the contract between a generated training step and the code that drives it.
 *
 * A generated translation unit (kiln emit) defines one `const kiln_program kiln_program_desc`
 * describing every tensor that lives in its arena, the entry points (a table of named functions)
 * and the model's training defaults (a table of key/value settings). The trainer runtime
 * (runtime/rt_train.c), `kiln check` and the JIT read only this description: they never see the
 * compiler's IR. Drivers look entries, tensors and settings up by name, so a new entry point or a
 * new training option adds a row to a table and leaves this layout alone. The generated file
 * embeds this header verbatim (src/cg/cg_file.c), so a trainer needs nothing from kiln at run
 * time and the two copies can never disagree.
 *
 * Layout: one arena of `arena_bytes` bytes, 64-byte aligned. Persistent tensors (parameters,
 * optimizer state, running statistics, hyper-parameters) come first; inputs, outputs and
 * temporaries follow. Every offset is in bytes and a multiple of 64. Tensors whose dims include
 * the batch (batch_axis >= 0) are laid out for the maximum batch `batch`; an entry point called
 * with a smaller batch uses the leading part of each such buffer.
 *
 * Entries of a trained model:
 *   "train"  forward in training mode, backward and the optimizer update, fused (the fast path);
 *   "grad"   forward in training mode and backward: writes "loss" and d loss / d param into the
 *            persistent gradient tensor "grad.<param>" (role GRAD) of every parameter, and
 *            updates running statistics and the dropout counter as "train" does;
 *   "apply"  the optimizer update from the "grad.<param>" tensors: parameters, optimizer state;
 *   "eval"   forward in evaluation mode.
 * "grad" then "apply" leaves bit-identical parameters, state and loss to "train"; between the two
 * the host may read and overwrite the gradient tensors (accumulate, average, all-reduce).
 *
 * Output names are fixed: "loss" (written by train and grad: the mean loss of the batch),
 * "penalty" (train and grad, when the model regularizes), "eval.loss" and "eval.output" (eval
 * entry: the loss and the model's declared output, e.g. the logits, absent if the model declares
 * none), and "eval.metric.NAME" (eval entry: each scalar the model reports with `metric NAME`,
 * a mean over the batch).
 *
 * Settings are the model's training defaults, each value a number printed by kiln: "epochs",
 * "steps" (full-batch updates for models whose data is in the file), "seed" and "patience"
 * (early stopping after this many epochs without a better test loss; 0 = off). A model with a
 * learning-rate schedule adds "lr_schedule" (KILN_LR_*) and its arguments, "lr_step_size" and
 * "lr_gamma" (step), "lr_gamma" (exponential), "lr_t_max" and "lr_eta_min" (cosine), and one
 * with a warm-up "lr_warmup" (epochs); the driver sets the hyper-parameter "lr" before each
 * epoch. "lsuv" = 1 asks the driver to scale each layer's weight to unit output variance on a
 * training batch before the first step (the eval outputs "lsuv.<weight>" are the layers'
 * outputs). A driver ignores keys it does not know.
 */
#ifndef KILN_ABI_H
#define KILN_ABI_H

#include <math.h>
#include <stdint.h>

#define KILN_ABI_VERSION 6
#define KILN_ABI_MAX_RANK 6
#define KILN_ABI_MAX_ENTRIES 31 /* bit i of kiln_tensor.entries is entry i */

/* Element types. */
enum { KILN_F32 = 0, KILN_F64 = 1, KILN_I32 = 2 };

/* What a tensor is to the driver. */
enum {
  KILN_ROLE_PARAM = 0,  /* learnable parameter: initialised, saved, updated by the train entry */
  KILN_ROLE_STATE = 1,  /* persistent non-learnable buffer, saved (batchnorm running stats) */
  KILN_ROLE_HYPER = 2,  /* scalar hyper-parameter (lr, ...) the driver may override */
  KILN_ROLE_INPUT = 3,  /* written by the driver before an entry runs */
  KILN_ROLE_OUTPUT = 4, /* read by the driver after an entry runs */
  KILN_ROLE_OPT = 5,    /* optimizer-private state (moments, step count): zeroed, not saved */
  KILN_ROLE_GRAD = 6    /* a parameter's gradient, written by grad and read by apply; the host
                           may read and overwrite it in between. Zeroed, not saved */
};

/* Parameter initialisers. Values a and b are the scheme's parameters (see runtime/rt_init.c). */
enum {
  KILN_INIT_ZEROS = 0,
  KILN_INIT_ONES = 1,
  KILN_INIT_CONST = 2,          /* every element = a */
  KILN_INIT_NORMAL = 3,         /* N(0, a^2) */
  KILN_INIT_UNIFORM = 4,        /* U(-a, a) */
  KILN_INIT_XAVIER_NORMAL = 5,  /* N(0, 2/(fan_in+fan_out)) */
  KILN_INIT_XAVIER_UNIFORM = 6, /* U(+-sqrt(6/(fan_in+fan_out))) */
  KILN_INIT_HE_NORMAL = 7,      /* N(0, 2/fan_in) */
  KILN_INIT_HE_UNIFORM = 8,     /* U(+-sqrt(6/fan_in)) */
  KILN_INIT_TORCH_DEFAULT = 9,  /* PyTorch's Linear/Conv default: U(+-1/sqrt(fan_in)) */
  KILN_INIT_DATA = 10,          /* literal values from the model file, in `data` */
  KILN_INIT_SEED = 11,          /* a counter derived from the run seed: (seed mod 2^20) * 2^32 */
  KILN_INIT_ORTHOGONAL = 12     /* a times a matrix [dims[0], rest] with orthonormal rows or
                                   columns, from the QR of a Gaussian one (orthogonal_) */
};

/* Learning-rate schedules, the "lr_schedule" setting: torch.optim.lr_scheduler's StepLR,
 * ExponentialLR and CosineAnnealingLR, stepped once per epoch. */
enum { KILN_LR_CONSTANT = 0, KILN_LR_STEP = 1, KILN_LR_EXPONENTIAL = 2, KILN_LR_COSINE = 3 };

typedef struct kiln_tensor {
  const char *name;      /* PyTorch-style name: "fc1.weight", "image", "loss", "grad.fc1.weight" */
  int role;              /* KILN_ROLE_* */
  int dtype;             /* KILN_F32 / KILN_F64 / KILN_I32 */
  int rank;
  int64_t dims[KILN_ABI_MAX_RANK]; /* for the maximum batch */
  int batch_axis;        /* index of the batch dimension in dims, or -1 */
  int64_t offset;        /* byte offset in the arena */
  int entries;           /* bit i set: entry i of kiln_program.entries reads (inputs) or writes
                            (outputs, gradients) it; 0: any entry may */
  /* Initialisation (params and state). */
  int init;              /* KILN_INIT_* */
  double init_a, init_b;
  int64_t fan_in, fan_out;
  const double *data;    /* KILN_INIT_DATA: numel values */
  /* Data inputs. */
  const char *feed;      /* the data field the driver fills it from ("images", "labels"), or
                            NULL when the driver does not feed it */
  double scale;          /* a fed value is the field's value * scale (images / 255) */
} kiln_tensor;

/* The dropout mask, shared by generated code and the reference runtime so both drop exactly the
 * same elements: a counter-based generator (splitmix64 finaliser) of the dropout site's salt, the
 * step counter and the element's flat index, uniform in [0, 1). An element is kept when the value
 * is >= p. */
static inline double kiln_dropout_uniform(uint32_t salt, double counter, int64_t index) {
  /* The counter is a whole number >= 0 kept in a double; anything else maps to 0 rather than
   * to an undefined conversion. */
  uint64_t c = counter >= 0 && counter < 18446744073709551616.0 ? (uint64_t)counter : 0;
  uint64_t z = c * 0x9E3779B97F4A7C15ull + ((uint64_t)salt << 32) +
               (uint64_t)index * 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* A standard normal sample for noise(), shared in the same way: Box-Muller on the generator's
 * uniforms at indices 2i and 2i + 1 (1 - u is in (0, 1], so the logarithm is finite). */
static inline double kiln_normal(uint32_t salt, double counter, int64_t index) {
  double u1 = kiln_dropout_uniform(salt, counter, 2 * index);
  double u2 = kiln_dropout_uniform(salt, counter, 2 * index + 1);
  return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

/* Threads. A program splits its large kernels into tasks whose number and contents depend only
 * on the shapes, and hands them to the driver's scheduler: task(args, t, worker) for every t in
 * [0, ntasks), each once, on workers numbered 0 .. kiln_program.threads - 1 (one task at a time
 * per worker; the worker picks the task's scratch slot, so which worker runs a task never changes
 * a result). run returns when every task has finished. A driver that passes no kiln_exec, or one
 * without run, gets every task in order on worker 0: the same results on one thread. */
typedef void (*kiln_task_fn)(void *args, int64_t task, int worker);

typedef struct kiln_exec {
  void (*run)(void *pool, kiln_task_fn task, void *args, int64_t ntasks);
  void *pool;
  /* Profiling, NULL when off: mark(profiler, s) just before the kernel of call site s (an index
   * into kiln_program.sites) runs, and mark(profiler, -1) once the entry's last kernel has
   * returned (its updates follow), so each kernel's time is the time to the next mark. */
  void (*mark)(void *profiler, int site);
  void *profiler;
  /* Data-parallel runs (an allreduce op): the sum over every process of the n values of type
   * dtype (KILN_F32, KILN_F64) at data, in place, the same on every process; NULL in a run of one
   * process, where the sum is the values themselves. */
  void (*allreduce)(void *comm, void *data, int64_t n, int dtype);
  void *comm;
} kiln_exec;

typedef void (*kiln_entry_fn)(unsigned char *arena, int64_t batch, const kiln_exec *exec);

/* An entry point under its name ("train", "eval", "grad", "apply"). */
typedef struct kiln_entry {
  const char *name;
  kiln_entry_fn fn;      /* NULL in descriptions of programs that are not compiled (the reference
                            runtime runs entries by index through its own backend) */
} kiln_entry;

/* A call of a kernel in an entry, for profiles. */
typedef struct kiln_site {
  int entry;             /* index into kiln_program.entries */
  int node;              /* the graph node it computes (%45 in kiln schedule) */
  const char *kernel;    /* the generated function: "k45_conv2d" */
  const char *op;        /* what it computes: "conv2d", "fused add" */
  const char *source;    /* the model line it came from: "mnist_cnn.kiln:13" ("" if none) */
  double flops;          /* floating-point operations of one call at the full batch */
  int per_example;       /* 1: the work scales with the batch of the call */
  int tasks;             /* 1: runs as tasks on the driver's threads */
  int finishes;          /* a gradient ("grad.<p>", an index into kiln_program.tensors) that is
                            complete once this call returns, or -1: a data-parallel driver may
                            start summing it over the processes while the step goes on */
} kiln_site;

/* One training default: a key and a number, as text. */
typedef struct kiln_setting {
  const char *key;
  const char *value;
} kiln_setting;

typedef struct kiln_program {
  int abi_version;       /* KILN_ABI_VERSION */
  const char *model;     /* model name (file stem) */
  int64_t batch;         /* maximum (and usual) batch size */
  int threads;           /* workers the scratch has room for: a driver runs at most this many */
  int64_t arena_bytes;
  int ntensors;
  const kiln_tensor *tensors;
  int nentries;          /* at most KILN_ABI_MAX_ENTRIES */
  const kiln_entry *entries;
  int nsettings;
  const kiln_setting *settings; /* defaults from the model file's train block */
  int nsites;
  const kiln_site *sites;       /* every kernel call of every entry */
  /* Runs `iters` rounds of independent fused multiply-adds on the widest vectors the program was
   * compiled for and returns the floating-point operations done: this CPU's peak, as the
   * program's own kernels could reach it. */
  double (*fma_probe)(int64_t iters);
} kiln_program;

#endif
