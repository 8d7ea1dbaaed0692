/*
 * runtime.h — support code linked into every trainer (and used by kiln itself).
 *
 * Nothing here includes a compiler header: a standalone trainer is the generated step plus
 * these files. Sections are named after the .c file that owns them. Functions that can fail
 * return 0 on success and -1 on failure, with a one-line message (naming the file and what is
 * wrong) in the caller's `err` buffer of RT_ERR_LEN bytes.
 */
#ifndef KILN_RUNTIME_H
#define KILN_RUNTIME_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kiln_abi.h"

struct stat;

#define RT_ERR_LEN 1024
#define RT_MAX_METRICS 8    /* metrics a trainer reports (`metric NAME` in the model) */

#if defined(__GNUC__)
#define RT_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define RT_PRINTF(f, a)
#endif

/* ---- rt_rng.c: reproducible random numbers ------------------------------------------------ */

/* splitmix64-seeded xoshiro256**; the same seed gives the same stream on every machine. */
typedef struct RtRng { uint64_t s[4]; } RtRng;
void rt_rng_seed(RtRng *r, uint64_t seed);
uint64_t rt_rng_next(RtRng *r);
double rt_rng_uniform(RtRng *r);            /* [0, 1) with 53 random bits */
double rt_rng_normal(RtRng *r);             /* N(0, 1), Box-Muller */
uint64_t rt_rng_below(RtRng *r, uint64_t n); /* uniform integer in [0, n), unbiased */
void rt_shuffle(RtRng *r, int64_t *idx, int64_t n); /* Fisher-Yates */
uint64_t rt_hash_name(uint64_t seed, const char *name); /* FNV-1a of name mixed with seed */

/* ---- rt_init.c: parameter initialisers ------------------------------------------------------ */

/* Fills out[0..n) for tensor t by its initialiser. The stream is seeded from (seed, t->name),
 * so each parameter's initial value depends only on the seed and its name, never on the order
 * in which tensors are initialised or on the runtime doing it. */
void rt_init_tensor(const kiln_tensor *t, uint64_t seed, double *out, int64_t n);

/* ---- rt_idx.c: IDX files (MNIST format), gzipped or not -------------------------------------- */

typedef struct RtIdx {
  int rank;
  int64_t dims[4];   /* as the header gives them: dims[0] is the file's item count */
  int64_t count;     /* items held: dims[0], or fewer when the load was limited */
  int64_t item;      /* product of dims[1..] */
  uint8_t *data;     /* count * item unsigned bytes (type 0x08 only) */
} RtIdx;
/* The whole file, every byte checked (nothing missing, nothing after the data). */
int rt_idx_load(const char *path, RtIdx *out, char *err);
/* The header and only the first max_items items (all when max_items < 0); the rest of the file
 * is not read. */
int rt_idx_load_first(const char *path, int64_t max_items, RtIdx *out, char *err);
void rt_idx_free(RtIdx *x);

/* A dataset split as stored by Debian's dataset-fashion-mnist (or MNIST): DIR holds
 * {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]. */
typedef struct RtDataset {
  RtIdx images, labels;
  char labels_path[4096]; /* the labels file, for messages */
} RtDataset;
/* Loads the first max_items examples (all when max_items < 0); images and labels files must
 * agree on their counts. */
int rt_dataset_load(const char *dir, const char *split /* "train" or "t10k" */, int64_t max_items,
                    RtDataset *out, char *err);
void rt_dataset_free(RtDataset *d);
/* The dataset as a provider of named fields, each holding one item per example: "images" (the
 * pixels) and "labels"; NULL for a field it does not have. */
const RtIdx *rt_dataset_field(const RtDataset *d, const char *name);

/* ---- rt_images.c: image folders (PGM, PPM and a labels.csv) ------------------------------ */

/* An 8-bit PGM (P5, P2: one channel) or PPM (P6, P3: three) image, channel-first: pixels holds
 * [channels, height, width] bytes; a maxval below 255 is rescaled to 0..255. */
typedef struct RtImage {
  int channels;
  int64_t height, width;
  uint8_t *pixels;
} RtImage;
/* The image in bytes[0..n) (path names it in messages), or in the file path. Every header field
 * and sample is checked; an error names the file and the byte. */
int rt_image_parse(const unsigned char *bytes, size_t n, const char *path, RtImage *out,
                   char *err);
int rt_image_load(const char *path, RtImage *out, char *err);
void rt_image_free(RtImage *im);

/* A labels.csv: one "file,label" row per example (the label after the last comma, 0 to 255;
 * spaces around either field and blank lines ignored; a first line "file,label" is a header).
 * File names are relative to the list's directory and may not leave it. */
typedef struct RtLabels {
  int64_t n;
  char **files;     /* into text */
  uint8_t *labels;
  int64_t *lines;   /* each row's line in the file, from 1 */
  char *text;
} RtLabels;
/* An error names path and the line. */
int rt_labels_parse(const char *text, size_t n, const char *path, RtLabels *out, char *err);
void rt_labels_free(RtLabels *l);

/* What the model expects of a data set, checked as it is read so that an error names the file:
 * the shape of the input fed from images, per example (rank 0: any, as long as all images
 * agree), and the classes labels must stay below (0: unchecked). */
typedef struct RtDataWant {
  const char *input;    /* the input's name, for messages */
  int rank;
  int64_t dims[KILN_ABI_MAX_RANK];
  int64_t classes;
} RtDataWant;
/* The image folder DIR/train or DIR/test (dir): the first max_items examples of its labels.csv
 * (all when max_items < 0), as a data set whose images are [count, C, H, W]. With max_items 0
 * the counts and the shape (from the first image) are still filled in. */
int rt_image_folder_load(const char *dir, int64_t max_items, const RtDataWant *want,
                         RtDataset *out, char *err);
/* The data set in dir, whichever kind it holds: an image folder when dir/train is a directory,
 * else IDX files. split: "train" or "test" (IDX's "t10k"). want may be NULL. */
int rt_data_load(const char *dir, const char *split, int64_t max_items, const RtDataWant *want,
                 RtDataset *out, char *err);

/* ---- rt_augment.c: per-channel normalisation and augmentation of training images ---------- */

#define RT_MAX_CHANNELS 16
enum { RT_NORMALIZE_OFF, RT_NORMALIZE_GIVEN, RT_NORMALIZE_AUTO };
/* --normalize: "auto" (the training set's statistics) or MEAN,STD per channel separated by ';'
 * (one pair: every channel), in the units an input receives (after `from images / 255`). */
typedef struct RtNormalize {
  int mode;
  int channels;
  double mean[RT_MAX_CHANNELS], std[RT_MAX_CHANNELS];
} RtNormalize;
int rt_normalize_parse(const char *text, RtNormalize *out, char *err);
/* The settings as --normalize takes them, each number read back to the same double. */
void rt_normalize_format(const RtNormalize *n, char *buf, size_t len);

/* --augment: a comma-separated list of flip, crop=P, rotate=DEGREES, translate=PIXELS and
 * contrast=C. */
typedef struct RtAugment {
  int on;
  int flip;           /* a horizontal flip with probability 1/2 */
  int crop;           /* P > 0: P zero pixels around, then a random crop back to the size */
  double rotate;      /* > 0: an angle uniform in [-rotate, rotate] degrees */
  double translate;   /* > 0: shifts uniform in [-translate, translate] pixels, per axis */
  double contrast;    /* > 0: a contrast factor uniform in [max(0, 1 - c), 1 + c] */
} RtAugment;
int rt_augment_parse(const char *text, RtAugment *out, char *err);
void rt_augment_format(const RtAugment *a, char *buf, size_t len);

/* One example's random choices. */
typedef struct RtAugDraw {
  int flip;
  int dy, dx;         /* the crop: output (y, x) reads input (y + dy, x + dx) */
  double angle;       /* degrees, counterclockwise as displayed */
  double tx, ty;      /* pixels, right and down */
  double contrast;    /* the factor (1: unchanged) */
} RtAugDraw;
/* The draw of training example `example` (its index in the training set) in epoch `epoch`: a
 * function of (seed, epoch, example) only. */
void rt_augment_draw(const RtAugment *a, uint64_t seed, int epoch, int64_t example,
                     RtAugDraw *d);
/* Applies d to v, [C, H, W] values in pixel units (0..255), in this order: the crop's shift,
 * the flip, the rotation and translation (one bilinear warp, zeros outside), the contrast
 * (clamped to 0..255). scratch holds C * H * W values. */
void rt_augment_apply(const RtAugDraw *d, double *v, int C, int64_t H, int64_t W,
                      double *scratch);
/* The images' [C, H, W]: an image folder's, or an IDX file's [N, H, W] as one channel. */
void rt_image_geometry(const RtIdx *images, int64_t chw[3]);
/* One example as an input receives it: the pixels px, augmented by d (NULL: not), times scale,
 * then (v - mean[c]) / std[c] per channel (mean NULL: not normalised). */
void rt_example_values(const uint8_t *px, const int64_t chw[3], const RtAugDraw *d, double scale,
                       const double *mean, const double *std, double *out, double *scratch);
/* Per-channel mean and standard deviation (over all pixels, divided by their number) of
 * examples idx[0..n) (the first n when idx is NULL), in pixel units; exact sums. -1 when there
 * are no pixels. */
int rt_channel_stats(const RtIdx *images, const int64_t *idx, int64_t n, double *mean,
                     double *std);

/* ---- rt_safetensors.c: checkpoints ---------------------------------------------------------- */

/* On-disk element types beyond the arena's three (KILN_F32, KILN_F64, KILN_I32): the loader
 * reports them for files written elsewhere, and the writer accepts them too. */
enum { RT_I64 = 3, RT_F16 = 4, RT_BF16 = 5 };

/* One named tensor in memory; values are converted to and from `dtype` on disk. */
typedef struct RtNamedTensor {
  const char *name;
  int dtype;          /* KILN_F32 / KILN_F64 / KILN_I32 (or RT_I64/F16/BF16): the on-disk type */
  int rank;
  int64_t dims[KILN_ABI_MAX_RANK];
  double *values;     /* numel values */
} RtNamedTensor;

/* One "__metadata__" entry of a safetensors header (both strings). */
typedef struct RtMeta { char *key, *value; } RtMeta;

/* Writes atomically: a fresh temporary file beside path (rt_create_temp), fsync, rename. On
 * failure nothing is left behind. _write adds metadata (nmeta entries, none when 0). */
int rt_safetensors_save(const char *path, const RtNamedTensor *ts, int n, char *err);
int rt_safetensors_write(const char *path, const RtNamedTensor *ts, int n, const RtMeta *meta,
                         int nmeta, char *err);
/* Loads every tensor (F32, F64, I32, I64, F16, BF16 accepted); *out is malloc'd, names and values
 * too. Truncated or corrupt files fail with a message naming the file and the problem; anything
 * but a regular file is refused before it is read. _read also returns the string-valued
 * metadata (meta may be NULL: not wanted). */
int rt_safetensors_load(const char *path, RtNamedTensor **out, int *n, char *err);
int rt_safetensors_read(const char *path, RtNamedTensor **out, int *n, RtMeta **meta, int *nmeta,
                        char *err);
void rt_safetensors_free(RtNamedTensor *ts, int n);
void rt_meta_free(RtMeta *meta, int n);
/* The value of key in meta, or NULL. */
const char *rt_meta_get(const RtMeta *meta, int n, const char *key);

/* Files. rt_create_temp makes a new file beside `path` (same directory, so a rename onto path is
 * atomic) with O_EXCL under an unpredictable name, readable as a plain file would be (the umask
 * applies); its name goes to tmp (len bytes). NULL with err on failure. rt_open_regular opens
 * path for reading only if it is a regular file (a FIFO or a device is refused without
 * blocking), filling *st. */
FILE *rt_create_temp(const char *path, char *tmp, size_t len, char *err);
/* Where a file kiln writes goes: 1 to write path in place (a pipe or a device, or a name under
 * /dev/ or /proc/ such as /dev/stdout, which leads to a descriptor of the process: renaming onto
 * it would replace the link, not write to it); 0 with target (len bytes) the name a new file is
 * renamed onto, path itself or, through symbolic links, the file they lead to (the link stays a
 * link); -1 with err for a directory or a path too long. */
int rt_write_target(const char *path, char *target, size_t len, char *err);
FILE *rt_open_regular(const char *path, struct stat *st, char *err);

/* ---- rt_plot.c: the metrics as a picture -------------------------------------------------------- */

/* A trainer's metrics CSV (first column "epoch") as a self-contained SVG at svg_path, atomically:
 * a panel for the losses, one for the accuracies, one for the other validation or test figures,
 * each present only when it has a value. 0, or -1 with err (a malformed CSV names the line). */
int rt_plot_csv(const char *csv_path, const char *svg_path, char *err);

/* ---- rt_export.c: outputs as pictures --------------------------------------------------------- */

/* v[0 .. h·w), row by row, as an 8-bit binary PGM: clamped to [0, 1], times 255, rounded (NaN
 * is 0). Atomic, like every file kiln writes. */
int rt_write_pgm(const char *path, const double *v, int64_t h, int64_t w, char *err);

/* ---- rt_progress.c: progress line and metrics ----------------------------------------------- */

typedef struct RtProgress {
  FILE *out;          /* stderr */
  int tty;            /* redraw in place with \r when out is a terminal */
  double start, last_draw;
  int drawn;          /* something is on the current line */
} RtProgress;
void rt_progress_init(RtProgress *p, FILE *out);
/* Draws "epoch 1/3  step 120/938  loss 0.4123  5400 img/s  ETA 0:31"; on a terminal at most
 * ~10 times a second, otherwise one line every `interval` seconds. */
void rt_progress_update(RtProgress *p, int epoch, int epochs, int64_t step, int64_t steps,
                        double loss, double images_per_s, double eta_s);
void rt_progress_done(RtProgress *p);  /* ends the in-place line */
double rt_now(void);                   /* monotonic seconds */
/* ---- colour on a terminal (rt_color.c) ---- */

/* --color WHEN. The command line wins over $NO_COLOR (no-color.org: a user's explicit request
 * overrides it), which wins over what auto finds. */
typedef enum RtColorMode { RT_COLOR_AUTO = 0, RT_COLOR_ALWAYS, RT_COLOR_NEVER } RtColorMode;
/* "auto", "always" or "never" into *mode; -1 for anything else. */
int rt_color_parse(const char *s, RtColorMode *mode);
/* The last --color WHEN or --color=WHEN of a command line, before it is parsed (so that a usage
 * error in it is coloured as asked); auto when there is none or it is not a mode. */
RtColorMode rt_color_scan(int argc, char **argv);
/* Whether diagnostics are coloured: always, never, or for auto when the stream is a terminal,
 * no_color ($NO_COLOR) is unset or empty and term ($TERM) is not "dumb". Pure: the caller
 * passes what it found. */
int rt_color_wanted(RtColorMode mode, int is_tty, const char *no_color, const char *term);
/* Colour on or off for every diagnostic this process writes from now on (set by main). */
void rt_color_set(int on);
int rt_color_on(void);
/* Writes diagnostic text (one or more lines) to f, coloured as clang colours its diagnostics
 * when colour is on: the "PREFIX: error: message" line in bold with "error:" red ("warning:"
 * magenta, "note:" cyan), the caret line under a quoted source line green. Stored diagnostics
 * (Session.error) carry no colour; it is added here, when printed. */
void rt_color_puts(FILE *f, const char *text);
/* printf of a diagnostic, written with rt_color_puts. */
void rt_color_printf(FILE *f, const char *fmt, ...) RT_PRINTF(2, 3);

/* ---- help text (rt_help.c) ---- */

#define RT_HELP_WIDTH 96 /* columns --help text is wrapped to */
typedef struct RtHelpItem {
  const char *name, *text;
} RtHelpItem;
/* Every exit status of kiln and of a built trainer, with what it means. */
extern const RtHelpItem rt_exit_statuses[];
extern const int rt_nexit_statuses;
/* "  LEFT    text (default: dflt)": left after indent spaces, text from column col (on the next
 * line when left reaches past it), wrapped; dflt may be NULL. */
void rt_help_item(FILE *f, int indent, const char *left, int col, const char *text,
                  const char *dflt);
/* A paragraph, wrapped, its first line indented by indent and the others by hang more. */
void rt_help_paragraph(FILE *f, int indent, int hang, const char *text);
/* Whether word[0..len) is one of names' spellings ("-h, --help"). */
int rt_option_spelled(const char *names, const char *word, size_t len);

/* Formats a message into err (RT_ERR_LEN bytes), truncating if needed; always returns -1. */
int rt_errf(char *err, const char *fmt, ...) RT_PRINTF(2, 3);

typedef struct RtCsv { FILE *f; const char *path; /* borrowed, for messages */ } RtCsv;
/* Creates the metrics file with its header row (replacing any old one atomically); keep > 0
 * carries over the old file's rows for epochs 1..keep (a resumed run's). */
int rt_csv_open(RtCsv *c, const char *path, const char *header, int keep, char *err);
void rt_csv_row(RtCsv *c, const char *fmt, ...);
int rt_csv_close(RtCsv *c, char *err);

/* ---- rt_train.c: the training driver, shared by compiled trainers and `kiln train` ----------- */

/* A way to run a program: the compiled arena or the reference interpreter. Tensor values cross
 * this boundary as doubles, converted to the tensor's dtype by the backend. */
typedef struct RtBackend {
  const kiln_program *prog;
  void *self;
  /* entry: an index into prog->entries (rt_find_entry); batch <= prog->batch. Returns 0, or -1
   * with err. */
  int (*run)(void *self, int entry, int64_t batch, char *err);
  void (*read)(void *self, int tensor, double *out, int64_t n);
  void (*write)(void *self, int tensor, const double *in, int64_t n);
  /* Threads to run entries on from now on (<= 0: as many as the program allows); NULL for a
   * backend that runs on the calling thread only. 0, or -1 with err. */
  int (*set_threads)(void *self, int threads, char *err);
  /* Profiling, NULL for a backend that cannot: start counts every kernel call from now on
   * (0, or -1 with err); report prints what was counted (rt_profile_report) to out. */
  int (*profile_start)(void *self, char *err);
  void (*profile_report)(void *self, FILE *out);
  /* A data-parallel run's collective for the program's allreduce ops (kiln_exec.allreduce);
   * NULL fn: one process. */
  void (*set_allreduce)(void *self, void (*fn)(void *comm, void *data, int64_t n, int dtype),
                        void *comm);
  /* The bytes of tensor i in the program's own dtype, or NULL for a backend that keeps values
   * otherwise (the reference runtime): for collectives straight from the arena. */
  void *(*tensor_data)(void *self, int tensor);
  /* mark(ctx, site) before each kernel call and mark(ctx, -1) after an entry's last
   * (kiln_exec.mark), for a driver that acts between kernels; NULL removes it. 0, or -1 when the
   * backend cannot (no call sites, or profiling holds the marks). */
  int (*set_mark)(void *self, void (*mark)(void *ctx, int site), void *ctx);
} RtBackend;

/* ---- data-parallel runs: the communicator a trainer built with --mpi hands rt_train
 * (runtime/mpi_comm.c; docs/distributed.md) ---- */
typedef struct RtComm {
  int rank, size;
  void *self;
  /* In place, the sum over every process of the n values of type dtype (KILN_F32, KILN_F64) at
   * data, the same on each. 0, or -1 with err (a process failed or stopped answering). */
  int (*allreduce)(void *self, void *data, int64_t n, int dtype, char *err);
  /* *same = whether every process holds value. 0, or -1 with err. */
  int (*agree)(void *self, uint64_t value, int *same, char *err);
  /* For the program's in-step allreduce ops (kiln_exec.allreduce), which cannot return an
   * error: a failure ends every process with a message. */
  void (*step_allreduce)(void *comm, void *data, int64_t n, int dtype);
  /* Seconds this process has spent in collectives so far (waiting included). */
  double (*seconds)(void *self);
  /* A sum like allreduce's that runs while the caller goes on (NULL: not offered): start it
   * (data must stay untouched until finish_all), let the started ones progress, and wait for
   * all of them. 0, or -1 with err. */
  int (*start)(void *self, void *data, int64_t n, int dtype, char *err);
  void (*progress)(void *self);
  int (*finish_all)(void *self, char *err);
} RtComm;

/* What a data run measured on the parameters it kept (the last epoch's, or early stopping's
 * best), for a driver that reports runs itself (kiln sweep); NaN where the run has no figure. */
typedef struct RtResult {
  int epochs;               /* epochs trained */
  double train_loss;
  double val_loss, val_accuracy, val_metrics[RT_MAX_METRICS];  /* NaN without a validation split */
  double test_loss, test_accuracy, test_metrics[RT_MAX_METRICS];
} RtResult;

/* ---- rt_diagnose.c: --diagnose ------------------------------------------------------------------ */

/* Per activation (the eval entry's "diag.NAME" outputs) the share of dead ReLU units or saturated
 * sigmoid/tanh values and the RMS; per parameter that trains, the gradient's norm, its ratio to
 * the weight's and the last step's update over the weight. rt_diag_before_step keeps the
 * parameters before a step; rt_diag_measure runs the eval and grad entries on the batch already
 * written (restoring every state the grad entry changes) and keeps the values for rt_diag_print
 * (a block of lines, then warnings about mostly dead or saturated activations and vanishing or
 * exploding gradients) and rt_diag_csv (",v,v,..." in rt_diag_columns' order, appended to a
 * header). */
typedef struct RtDiag RtDiag;
int rt_diag_open(RtDiag **d, RtBackend *be, char *err);
void rt_diag_free(RtDiag *d);
int rt_diag_activations(const RtDiag *d);
void rt_diag_columns(const RtDiag *d, char *header, size_t len);
void rt_diag_before_step(RtDiag *d);
int rt_diag_measure(RtDiag *d, int64_t batch, char *err);
void rt_diag_print(const RtDiag *d, FILE *out);
void rt_diag_csv(const RtDiag *d, char *buf, size_t len);

/* ---- rt_curvature.c: Hessian-vector products ------------------------------------------------ */

/* Over a program built with Hessian-vector products, the parameters that train as one vector of
 * rt_hvp_size elements: rt_hvp_apply computes hv = H v of the loss on the batch already in the
 * inputs (running statistics and counters are put back afterwards); rt_hvp_power runs power
 * iteration from a seeded random start until λ = vᵀHv changes by less than tol (relative) or
 * after iters products, giving λ (the eigenvalue of largest magnitude) and the products used. */
typedef struct RtHvp RtHvp;
int rt_hvp_open(RtHvp **h, RtBackend *be, int64_t batch, char *err);
void rt_hvp_free(RtHvp *h);
int64_t rt_hvp_size(const RtHvp *h);
int rt_hvp_apply(RtHvp *h, const double *v, double *hv, char *err);
int rt_hvp_power(RtHvp *h, int iters, double tol, uint64_t seed, double *lambda, int *used,
                 char *err);

typedef struct RtOptions {
  const char *data_dir;   /* NULL: the model's data is in the file, or no data */
  RtNormalize normalize;  /* applied to every input fed from images */
  RtAugment augment;      /* applied to training examples only */
  int epochs;             /* <= 0: the program's default */
  double lr;              /* < 0: the model's */
  int have_seed; uint64_t seed;
  const char *save_path;  /* safetensors checkpoint, or NULL */
  const char *load_path;  /* start from these parameters, or NULL */
  const char *init_from;  /* start from the tensors of this file the model has (by name), or NULL */
  const char *init_map;   /* renamings for init_from: "FILE_NAME=MODEL_NAME,...", or NULL */
  const RtNamedTensor *init_tensors; /* or start from these (an imported model's initial values, */
  int ninit_tensors;                 /* named init_source in messages); init_from takes precedence */
  const char *init_source;
  const char *metrics_path; /* CSV, or NULL */
  const char *plot_path;  /* --plot: the metrics CSV drawn as an SVG at the end, or NULL */
  const char *images_dir; /* write the output on test examples as PGM files here, or NULL */
  int64_t images_count;   /* how many test examples --images writes (16) */
  int64_t limit_train;    /* >0: use only the first N training examples (tests) */
  int64_t limit_test;
  int quiet;              /* no progress line */
  const RtComm *comm;     /* a data-parallel run's communicator, or NULL: one process */
  int verify;             /* --verify: every epoch, check that every process holds the same
                             parameters (a hash compared over the communicator) */
  double mpi_timeout;     /* --mpi-timeout: seconds a collective waits for the other processes */
  int diagnose;           /* per epoch: dead and saturated units, gradient and update norms */
  int64_t curvature_every; /* > 0: λmax of the Hessian every this many steps */
  int patience;           /* >0: early stopping (overrides the program's); 0: the program's */
  int threads;            /* threads the step runs on (at most the program's bound); 0: that bound */
  int profile;            /* print where the step's time went (the backend's profile_report) */
  int64_t max_memory;       /* > 0: refuse to start a run estimated to need more bytes */
  double validation;        /* > 0: hold out this many training examples (a fraction when
                               < 1) as a validation split; early stopping uses 10% by default */
  const char *resume_path;  /* continue the run a resumable checkpoint stopped, or NULL */
  int64_t checkpoint_every; /* > 0: a resumable checkpoint every this many steps (or epochs) */
  int checkpoint_epochs;    /* checkpoint_every counts epochs */
  const char *checkpoint_dir; /* where checkpoints go ("checkpoints") */
  int keep_checkpoints;     /* how many of the newest to keep (3) */
  int argc;                 /* the command line (rt_options_parse), for the line saying how */
  char **argv;              /* to resume */
  const char *prog_name;  /* prefix of messages on stderr ("trainer: error: ..."); set by
                             rt_options_parse, "trainer" by default */
  RtResult *result;       /* set: a data run fills it and prints no summary line */
  RtColorMode color;      /* --color; the program's main decides with it (rt_color_wanted) */
} RtOptions;

void rt_options_default(RtOptions *o);

/* The trainer's options, one row each: what rt_options_parse accepts is what --help lists (and
 * what `kiln train --help` and kiln(1) list), so neither can miss one. */
typedef struct RtOptionDoc {
  const char *name;  /* "--epochs"; several spellings separated by ", " ("-h, --help") */
  const char *arg;   /* what its value is ("N"); NULL for a flag */
  const char *dflt;  /* what holds without it, for "(default: ...)"; NULL when nothing does */
  const char *help;  /* one paragraph, wrapped when printed */
} RtOptionDoc;
extern const RtOptionDoc rt_trainer_options[];
extern const int rt_ntrainer_options;
/* The trainer's --help: usage, every option with its default, and the exit statuses. */
void rt_options_help(FILE *f, const char *prog_name);
/* Whether a trainer option (exactly as written, without "=value") takes a value. */
int rt_option_takes_value(const char *arg);
/* Whether arg is a trainer option (with a value or a flag); and for one that is not, " (did you
 * mean --epochs?)" naming the nearest trainer option or of the nextra others within 3 edits,
 * else " (see --help)", in buf. */
int rt_option_known(const char *arg);
const char *rt_option_hint(const char *arg, const char *const *extra, int nextra, char *buf,
                           size_t len);
/* Parses the trainer's command line into o. Returns 0, 1 for --help (usage printed), -1 on error
 * (message printed to stderr). */
int rt_options_parse(RtOptions *o, int argc, char **argv, const char *prog_name);
/* Runs the whole training; prints the summary line on stdout. Returns the process exit code. */
int rt_train(RtBackend *be, const RtOptions *o);
/* mpi_comm.c, compiled into trainers built with --mpi only: MPI_Init and the world's
 * communicator (collectives give up after timeout seconds), and how many processes share this
 * machine; 0, or -1 with err. rt_mpi_finish ends MPI, every process when failed != 0. */
int rt_mpi_start(int *argc, char ***argv, double timeout, RtComm *out, int *local_size,
                 char *err);
void rt_mpi_finish(int failed);
/* The signal (SIGINT, SIGTERM) that asked a running rt_train to stop, or 0: for waits that
 * must give up with it (a data-parallel run's collectives). */
int rt_stop_requested(void);

/* Checks what the driver relies on: the ABI version, a positive batch, every tensor's name
 * (present, unique), role, dtype, rank, dims, batch axis and entry bits, a "loss" output, entry
 * names (present, unique) and settings (keys present and unique, values numbers). */
int rt_check_program(const kiln_program *p, char *err);

/* "[64, 1, 28, 28]" into buf (len bytes), for messages naming a tensor's shape. */
void rt_format_dims(char *buf, size_t len, int rank, const int64_t *dims);

/* Index of the tensor named `name`, or -1. */
int rt_find_tensor(const kiln_program *p, const char *name);
int64_t rt_numel(const kiln_tensor *t, int64_t batch);
/* Index of the entry named `name` ("train", "grad", ...) in p->entries, or -1. */
int rt_find_entry(const kiln_program *p, const char *name);
/* Whether tensor t is read or written by entry `entry` (an index; a tensor without entry bits
 * belongs to every entry). */
int rt_tensor_in_entry(const kiln_tensor *t, int entry);
/* The value of setting `key`, or NULL. */
const char *rt_setting(const kiln_program *p, const char *key);
/* Setting `key` as a whole number; dflt when it is absent or not one (rt_check_program refuses
 * values that are not numbers). */
int64_t rt_setting_int(const kiln_program *p, const char *key, int64_t dflt);
uint64_t rt_setting_u64(const kiln_program *p, const char *key, uint64_t dflt);

/* Fills every persistent tensor as a trainer starts: parameters, state and hyper-parameters by
 * their initialisers from `seed` (the program's "seed" setting is the usual one), optimizer state
 * and gradients with zeros; lr >= 0 overrides the hyper-parameter "lr" (an error if there is
 * none). Returns 0, or -1 with err. */
int rt_init_persistent(RtBackend *be, uint64_t seed, double lr, char *err);

/* ---- rt_ensemble.c: saved parameters evaluated on the test set, alone or as an ensemble ---- */

/* How a classifier's output rows read as class probabilities: logits (softmax), probabilities
 * (a model whose output is softmax(...)) or log-probabilities (log_softmax(...)). */
enum { RT_SCORES_LOGITS, RT_SCORES_PROBABILITIES, RT_SCORES_LOG_PROBABILITIES };

/* Row scores[0..classes) of that kind as probabilities p: softmax (the maximum subtracted),
 * exp, or the values as they are. */
void rt_class_probabilities(const double *scores, int64_t classes, int kind, double *p);

/* An ensemble of `members` classifiers on n examples. scores holds each member's output rows,
 * one member after the other ([members][n][classes]); mean gets the members' probabilities
 * averaged per example ([n][classes], summed in member order, divided by members). The
 * prediction is the argmax of the mean (ties to the first class, as torch.argmax); *accuracy is
 * the fraction of predictions equal to the label and *loss the mean over examples of
 * -log(mean probability of the label) (infinite when that probability is 0). */
void rt_ensemble_average(const double *scores, int members, int64_t n, int64_t classes, int kind,
                         const uint8_t *labels, double *mean, double *loss, double *accuracy);

/* A model's figures on a test set; NaN where it has none. */
typedef struct RtEvalFigures {
  double loss, accuracy, metrics[RT_MAX_METRICS];
} RtEvalFigures;

typedef struct RtEnsembleReport {
  int64_t examples;                         /* test examples evaluated */
  int nmetrics;
  const char *metric_names[RT_MAX_METRICS]; /* the model's metrics, into the program's table */
  int scored;                               /* the output is class scores with labels: the
                                               ensemble's figures are in `ensemble` */
  RtEvalFigures ensemble;                   /* loss and accuracy (metrics NaN) */
} RtEnsembleReport;

/* Evaluates the parameter files params[0..n) on the test set of o->data_dir (--limit-test,
 * --normalize with given values, --seed for tensors the files do not hold, --threads), one after
 * the other on backend be: each file must hold every parameter and saved state of the model with
 * its shape (rt_load_checkpoint). members[i] gets file i's figures as `kiln train` measures
 * them at the end of a run (the eval entry in batches of the program's batch: the loss and
 * metrics weighted by the batch's examples, accuracy from the argmax of the output). With a
 * classifier output (rows of class scores of `kind`, labels fed) the ensemble's figures follow
 * rt_ensemble_average; every output is kept for that, n x examples x classes values. Returns 0,
 * or -1 with err. */
int rt_evaluate_checkpoints(RtBackend *be, const RtOptions *o, const char *const *params, int n,
                            int kind, RtEvalFigures *members, RtEnsembleReport *report, char *err);

/* ---- rt_schedule.c: the learning rate of each epoch ----------------------------------------- */

typedef struct RtSchedule {
  int kind;               /* KILN_LR_* */
  int64_t step_size;      /* step: epochs between decays */
  double gamma;           /* step, exponential: the factor */
  int64_t t_max;          /* cosine: epochs from the base learning rate down to eta_min */
  double eta_min;         /* cosine: the lowest learning rate */
  int64_t warmup;         /* epochs of linear warm-up before the schedule starts; 0: none */
} RtSchedule;

/* The program's schedule from its settings (constant when it has none); -1 with err for a kind
 * this driver does not know or a value out of range. */
int rt_schedule_of(const kiln_program *p, RtSchedule *s, char *err);
/* Whether the learning rate ever differs from the base one. */
int rt_schedule_active(const RtSchedule *s);
/* The learning rate of epoch `epoch` (from 0) for the base learning rate `base`: a pure function
 * of the epoch, torch.optim.lr_scheduler's closed forms (rt_schedule.c). */
double rt_schedule_lr(const RtSchedule *s, double base, int64_t epoch);

/* ---- rt_checkpoint.c: parameter files and resumable checkpoints ---------------------------- */

/* Where a run stands, and what else a resumable checkpoint carries besides the tensors. */
typedef struct RtResume {
  char options[1024];     /* the run's options that shape its course ("seed 1 lr model ...");
                             a checkpoint resumes only a run with the same ones */
  int epoch;              /* the epoch in progress, from 1 (literal-data models: 0) */
  int64_t step;           /* steps of it finished (literal-data models: of the run) */
  int64_t seen;           /* examples of it trained on */
  RtRng epoch_rng;        /* the shuffle generator as the epoch began, before its shuffle */
  double loss_sum;        /* the epoch's batch losses times their sizes, so far */
  double train_time;      /* seconds of training in the finished epochs */
  int64_t train_images;   /* examples trained on in the finished epochs */
  int ran;                /* epochs finished, and the last one's figures */
  double last_train_loss, last_test_loss, last_acc;
  int best_epoch;         /* early stopping: the best epoch so far (0: none) and its figures */
  double best_test_loss, best_train_loss, best_acc;
  double *best_vals;      /* its saved tensors, one after the other in table order */
} RtResume;

/* Whether t is saved in every checkpoint: a parameter or saved state (running statistics). */
int rt_saved(const kiln_tensor *t);
/* A hash of what a checkpoint's tensors must match: the tensor table and the batch. */
uint64_t rt_program_fingerprint(const kiln_program *p);
/* Parameter files: the saved tensors under their names (PyTorch's). Loading checks every name,
 * shape and value (no NaN or infinity) before it writes anything, and ignores a resumable
 * checkpoint's "kiln." entries. */
int rt_save_checkpoint(RtBackend *be, const char *path, char *err);
int rt_load_checkpoint(RtBackend *be, const char *path, char *err);
/* --init-from: the tensors of a parameter file (or checkpoint) that the model has, by name after
 * map's renamings ("features.0=conv1,head=fc2", whole-segment prefixes; "head=" leaves a
 * prefix's tensors out; NULL: none), others
 * left as they are: transfer learning. Shapes must match; at least one tensor must load; every
 * rule must apply to some name. loaded[i] (when not NULL) is set for each tensor written. A line
 * on report (when not NULL) says what was loaded, kept and unused. */
int rt_init_from(RtBackend *be, const char *path, const char *map, unsigned char *loaded,
                 FILE *report, char *err);
/* The same from tensors in memory (an imported model's initial values), path naming them in
 * messages. */
int rt_init_from_tensors(RtBackend *be, const RtNamedTensor *ts, int n, const char *path,
                         const char *map, unsigned char *loaded, FILE *report, char *err);
/* Resumable checkpoints: rs == NULL writes a parameter file. Reading fills rs (best_vals is
 * malloc'd) after checking the file was written by this program and by a run with
 * rs->options, which the caller sets. */
int rt_write_checkpoint(RtBackend *be, const char *path, const RtResume *rs, char *err);
int rt_read_checkpoint(RtBackend *be, const char *path, RtResume *rs, char *err);

/* ---- rt_pool.c: the threads a program's tasks run on ------------------------------------------ */

typedef struct RtPool RtPool;
/* A pool of `threads` workers: the thread calling rt_pool_run and threads - 1 of its own, which
 * sleep between regions after a short spin. Returns NULL with err when a thread cannot start.
 * One thread at a time may run tasks on a pool. */
RtPool *rt_pool_new(int threads, char *err);
void rt_pool_free(RtPool *p);
int rt_pool_threads(const RtPool *p);
/* kiln_exec.run: task(args, t, worker) for every t in [0, ntasks), claimed first come, first
 * served; returns when all have finished. A NULL pool runs them in order on worker 0. */
void rt_pool_run(void *pool, kiln_task_fn task, void *args, int64_t ntasks);
/* An exec running tasks on p (NULL: in order on the calling thread), without a profiler. */
void rt_exec_init(kiln_exec *e, RtPool *p);

/* ---- rt_profile.c: where a compiled step's time goes ----------------------------------------- */

typedef struct RtProfile RtProfile;
RtProfile *rt_profile_new(const kiln_program *p, char *err);
void rt_profile_free(RtProfile *r);
/* kiln_exec.mark. */
void rt_profile_mark(void *profiler, int site);
/* The batch of the entry about to run, and after it, its time. */
void rt_profile_batch(RtProfile *r, int64_t batch);
void rt_profile_entry(RtProfile *r, int entry, double seconds);
/* Per entry that ran: its time per call, then its `rows` longest call sites (share, time per
 * call, GFLOP/s, percent of peak, kernel, op, model line) and what the rest took. peak1 and
 * peak_all: the FMA peak in GFLOP/s of one thread and of `threads`. */
void rt_profile_report(const RtProfile *r, FILE *out, double peak1, double peak_all, int threads,
                       int rows);
/* The time spent in site's kernel so far. */
double rt_profile_seconds(const RtProfile *r, int site);

/* ---- rt_cores.c ---- */

/* The processors this process may run on (its affinity mask), at least 1. */
int rt_available_cores(void);

/* ---- rt_backend_arena.c: the compiled program's arena as an RtBackend (codegen) -------------- */

/* A backend over a generated program and its arena (arena_bytes, 64-byte aligned, owned by the
 * caller): run calls the entry points (batch checked against 1..p->batch), read / write convert
 * between double and each tensor's dtype at `arena + offset` (counts clamped to the tensor; i32
 * writes round and saturate). The backend holds a small allocation: release it with
 * rt_arena_backend_free. If that allocation fails, run reports it and read / write do nothing. */
void rt_arena_backend(const kiln_program *p, unsigned char *arena, RtBackend *be);
/* The same over an arena of its own: zeroed, 64-byte aligned, freed by rt_arena_backend_free.
 * Returns 0, or -1 with err (and nothing to free). */
int rt_arena_backend_new(const kiln_program *p, RtBackend *be, char *err);
/* Runs the program's tasks on `threads` threads from now on (clamped to 1 .. prog->threads;
 * <= 0: prog->threads). Returns 0, or -1 with err when the threads cannot start (the backend
 * then stays as it was). */
int rt_arena_set_threads(RtBackend *be, int threads, char *err);
/* The threads the backend runs tasks on. */
int rt_arena_threads(const RtBackend *be);
/* The backend's profile since profile_start, or NULL. */
const RtProfile *rt_arena_profile(const RtBackend *be);
/* The arena a backend of this file runs on (NULL if its allocation failed). */
unsigned char *rt_arena_base(const RtBackend *be);
void rt_arena_backend_free(RtBackend *be);

#endif
