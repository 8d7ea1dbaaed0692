/*
 * kiln_abi.h — the contract between a generated training step and the code that drives it.
 *
 * A generated translation unit (kiln emit) defines one `const kiln_program kiln_program_desc`
 * describing every tensor that lives in its arena, plus the entry points. The trainer runtime
 * (runtime/trainer.c), `kiln check` and the JIT read only this description: they never see the
 * compiler's IR. The generated file embeds this header verbatim (see cg_c.c), so a trainer needs
 * nothing from kiln at run time and the two copies can never disagree.
 *
 * Layout: one arena of `arena_bytes` bytes, 64-byte aligned. Persistent tensors (parameters,
 * optimizer state, running statistics, hyper-parameters) come first; inputs, outputs and
 * temporaries follow. Every offset is in bytes and a multiple of 64. Tensors whose dims include
 * the batch (batch_axis >= 0) are laid out for the maximum batch `batch`; an entry point called
 * with a smaller batch uses the leading part of each such buffer.
 *
 * Output names are fixed: "loss" (written by train and grad: the mean loss of the batch),
 * "eval.loss" and "eval.output" (eval entry: the loss and the model's declared output, e.g. the
 * logits, absent if the model declares none) and "grad.<param>" (grad entry: d loss / d param).
 */
#ifndef KILN_ABI_H
#define KILN_ABI_H

#include <stdint.h>

#define KILN_ABI_VERSION 2
#define KILN_ABI_MAX_RANK 6

/* Element types. */
enum { KILN_F32 = 0, KILN_F64 = 1, KILN_I32 = 2 };

/* What a tensor is to the driver. */
enum {
  KILN_ROLE_PARAM = 0,  /* learnable parameter: initialised, saved, updated by the train entry */
  KILN_ROLE_STATE = 1,  /* persistent non-learnable buffer, saved (batchnorm running stats) */
  KILN_ROLE_HYPER = 2,  /* scalar hyper-parameter (lr, ...) the driver may override */
  KILN_ROLE_INPUT = 3,  /* written by the driver before an entry runs */
  KILN_ROLE_OUTPUT = 4, /* read by the driver after an entry runs */
  KILN_ROLE_OPT = 5     /* optimizer-private state (moments, step count): zeroed, not saved */
};

/* Where a data input comes from. */
enum { KILN_SRC_NONE = 0, KILN_SRC_IMAGES = 1, KILN_SRC_LABELS = 2 };

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
  KILN_INIT_SEED = 11           /* a counter derived from the run seed: (seed mod 2^20) * 2^32 */
};

/* Entry points a tensor belongs to, as a bit set. */
enum { KILN_ENTRY_TRAIN = 1, KILN_ENTRY_EVAL = 2, KILN_ENTRY_GRAD = 4 };

typedef struct kiln_tensor {
  const char *name;      /* PyTorch-style name: "fc1.weight", "image", "loss", "grad.fc1.weight" */
  int role;              /* KILN_ROLE_* */
  int dtype;             /* KILN_F32 / KILN_F64 / KILN_I32 */
  int rank;
  int64_t dims[KILN_ABI_MAX_RANK]; /* for the maximum batch */
  int batch_axis;        /* index of the batch dimension in dims, or -1 */
  int64_t offset;        /* byte offset in the arena */
  int entries;           /* KILN_ENTRY_* bits: which entry points read (inputs) or write it */
  /* Initialisation (params and state). */
  int init;              /* KILN_INIT_* */
  double init_a, init_b;
  int64_t fan_in, fan_out;
  const double *data;    /* KILN_INIT_DATA: numel values */
  /* Data inputs. */
  int source;            /* KILN_SRC_* */
  double scale;          /* images: value = pixel * scale */
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

typedef void (*kiln_entry_fn)(unsigned char *arena, int64_t batch);

typedef struct kiln_program {
  int abi_version;       /* KILN_ABI_VERSION */
  const char *model;     /* model name (file stem) */
  int64_t batch;         /* maximum (and usual) batch size */
  int64_t arena_bytes;
  int ntensors;
  const kiln_tensor *tensors;
  kiln_entry_fn train;   /* forward + backward + optimizer update; writes the loss */
  kiln_entry_fn eval;    /* evaluation-mode forward; writes the loss and the prediction */
  kiln_entry_fn grad;    /* forward + backward without update; writes loss and every gradient */
  /* Defaults from the model file's train block. */
  int epochs;
  int64_t steps;         /* >0: number of full-batch updates for models whose data is in the file */
  uint64_t seed;
  int patience;          /* >0: early stopping after this many epochs without a better test loss */
} kiln_program;

#endif
