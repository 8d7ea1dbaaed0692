/*
 * driver.h — the compiler as a library: the one pipeline (session.c), `kiln check`, `grad`, `jvp`
 * and `hvp` (check.c), and the public API of include/kiln.h on top of them (api.c).
 *
 * check.c compiles the model's C (cg/) into a shared object (backend/) and drives it through the
 * same RtBackend interface as the reference interpreter (ref/ref.h), so a disagreement is between
 * the two meanings of the same graph, not between two drivers.
 */
#ifndef KILN_DRIVER_H
#define KILN_DRIVER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend/backend.h"
#include "onnx/onnx.h"
#include "plan/plan.h"
#include "ref/ref.h"
#include "sched/sched.h"

/* ================================ session.c ================================ */

/* Everything a compile depends on besides the model. Drivers fill it from their flags and
 * environment; the library reads neither. */
typedef struct Options {
  int64_t batch;          /* to specialise for; 0: the train block's, else 64 (batched) or 1 */
  SchedOptions sched;
  BackendOptions backend; /* JIT or cc; the system compiler, the runtime, temporary files */
  bool jvp, hvp;          /* extend the grad entry with forward-mode outputs (kiln jvp / hvp) */
  bool diagnose;          /* the eval entry also outputs every activation (--diagnose) */
  bool no_training;       /* stop after the frontend: no optimizer, no entries (kiln diff, whose
                             programs need no parameters) */
  OxOptions onnx;         /* how an ONNX model file is imported (its loss, optimizer, ...) */
  bool data_parallel;     /* batch statistics and the loss over every process of an MPI run
                             (kiln build --mpi; Graph.data_parallel) */
} Options;
void session_default_options(Options *o);

/* How long each stage took, in seconds (0: it did not run), for `kiln --verbose`: the library
 * measures, drivers print. */
typedef struct SessionTimes {
  double frontend;        /* parse, lower, training graph (autodiff, optimizer) */
  double plan;            /* schedule and memory plan */
  double emit;            /* the C source */
  double build;           /* session_build_trainer: the system compiler into a trainer */
  double load;            /* session_load, all of it */
  bool loaded;            /* session_load ran: backend holds its phases and the cache's use */
  BackendReport backend;
} SessionTimes;

/* One model on its way down the pipeline. Each stage runs the earlier ones it needs; each returns
 * 0, or -1 with the diagnostic in error ("file:line:col: error: ..." with the source line and a
 * caret, or the tensor and its shapes), after which the session may only be closed. */
typedef struct Session {
  Options opt;
  Graph *g;               /* the training graph (session_open_*) */
  Plan plan;              /* session_plan */
  Buf c;                  /* the generated C (session_emit) */
  BackendProgram *loaded; /* session_load: the compiled program and its description */
  const kiln_program *prog;
  Interp *ref;            /* session_reference: the interpreter and its program table */
  kiln_program ref_prog;
  OxModel *onnx;          /* an imported ONNX model: its text, initial values and ports */
  Pool *onnx_pool;
  bool planned, emitted, borrowed;
  SessionTimes times;
  char error[4096];
} Session;

/* Parse, lower and build the training graph of a model file or of text (name: for messages).
 * A file named *.onnx is imported first (opt.onnx says how); s->onnx then holds its initial
 * values, which session_init_values writes into a backend. */
int session_open_file(Session *s, const char *path, const Options *o);
int session_open_text(Session *s, const char *name, const char *text, const Options *o);
/* Starts from a graph built by hand (tests, builders); the caller keeps ownership of g. */
void session_adopt(Session *s, Graph *g, const Options *o);
int64_t session_batch(const Session *s);   /* the batch the session specialises for */
int session_plan(Session *s);              /* schedule and memory plan */
int session_emit(Session *s);              /* the whole step as one C11 translation unit */
int session_load(Session *s);              /* compiled and loaded into this process */
int session_build_trainer(Session *s, const char *out_path);  /* a standalone trainer */
/* The reference interpreter over the session's plan behind the RtBackend interface (the same
 * tensor table as the compiled program). precision 32 rounds every f32 value as a float32
 * program stores it, 64 computes in double, 0 follows the model's parameters. */
int session_reference(Session *s, int precision, RtBackend *be);
/* The caller takes the loaded program (session_load): closing the session no longer unloads it;
 * free it with backend_unload. */
BackendProgram *session_take_program(Session *s);
/* The caller takes the graph: closing the session no longer frees it. */
Graph *session_take_graph(Session *s);
/* Sets error to "error: <message>\n" (a failure that is not the model's: a file, the compiler,
 * memory) and returns -1. */
int session_fail(Session *s, const char *fmt, ...) KILN_PRINTF(2, 3);
/* Writes an imported model's initial values (its initializers) into be, after the program's
 * own initialisation; nothing for a kiln model file. 0, or -1 with s->error. */
int session_init_values(Session *s, RtBackend *be);
/* The same values as named tensors (names and values borrowed from the session; the array is
 * malloc'd: free it), or NULL with *n = 0 when there are none (or NULL with *n > 0 when out of
 * memory). */
RtNamedTensor *session_init_tensors(const Session *s, int *n);
/* Frees everything, unloading the program: nothing of it may be used afterwards. NULL and closed
 * sessions are fine. */
void session_close(Session *s);

/* ================================ graph.c ================================ */

/* `kiln graph`: the train entry (training) or the eval entry of a planned session as Graphviz
 * DOT, each kernel call of the generated C a cluster `cluster_k<node>` titled with the kernel
 * function's name (k45_conv2d) around the nodes its loop computes; failures unwind to the
 * caller's trap. */
void graph_print_dot(const Session *s, bool training, FILE *out);

/* ================================ check.c ================================ */

/* Tolerance of a comparison of a value computed in the program's dtype against the f64
 * reference: |x - r| <= abs + rel * (|r| + S), S the largest |r| in the tensor (so elements
 * that cancel to ~0 inside a large tensor are judged on the tensor's scale). f32: abs 1e-6,
 * rel 1e-3; f64: abs 1e-12, rel 1e-7. */
typedef struct CheckTol {
  double abs, rel;
} CheckTol;
CheckTol check_tolerance(DType t);
/* The number of classes of a labels input `node`: the logits width of a cross-entropy reading
 * it (2 when none does). Random labels are drawn below it. */
int64_t check_label_classes(const Graph *g, const Plan *p, int node);

/* The three report on out (results) and put a failure that is not a disagreement — a file, the
 * compiler, memory — into s->error; they return 0, or 1 on any failure.
 *
 * Plans and compiles the session's model, initialises the compiled program and the f64
 * reference from the same random parameters (seed) and inputs, and compares: the grad entry
 * (loss and every gradient), then `steps` train steps (loss, every parameter and state after
 * each), a grad + apply step, the eval entry, then the grad entry again at a smaller batch (the
 * run-time batch code path). Prints a table of max absolute / relative differences to out. */
int check_model(Session *s, int steps, uint64_t seed, FILE *out);
/* `kiln check --kernel NAME`: one kernel (k45_conv2d, %45) alone, its inputs the values the model
 * gives them at random parameters and inputs, compiled under every schedule choice that applies
 * (fusion on and off, 1 and 2 threads, each convolution algorithm, default and small GEMM tiles)
 * and held against the f64 reference: a table to out. 0, or 1 on a disagreement or a failure
 * (the reason in s->error). */
int check_kernel(Session *s, const char *name, uint64_t seed, FILE *out);

/* Loads parameters and inputs from safetensors files (every parameter and input of the model,
 * with exactly its shape), runs the grad entry with batch = the inputs' leading dimension on the
 * compiled program (or the f64 reference with use_reference) and writes "loss" and one tensor
 * per gradient, named after its parameter ("fc1.weight"), to out_path. The session's batch
 * option is set to the inputs' batch. */
int grad_model(Session *s, const char *params_path, const char *inputs_path, const char *out_path,
               bool use_reference, FILE *out);

/* `kiln jvp` / `kiln hvp`: as grad_model on a graph that train_build_jvp (hvp false) or
 * train_build_hvp (hvp true) extended, with the direction read from tangents_path (one tensor
 * per parameter, named and shaped like it). Writes "loss" and then, for jvp, "jvp.loss" and
 * (with a declared output) "output" and "jvp.output"; for hvp, H·v per parameter under the
 * parameter's name. */
int forward_model(Session *s, bool hvp, const char *params_path, const char *inputs_path,
                  const char *tangents_path, const char *out_path, bool use_reference, FILE *out);

/* ================================ diff.c ================================ */

#define DIFF_MAX_ORDER 64
/* `kiln diff`: the value the model minimizes (evaluation mode) and its derivatives of order 1 to
 * `order` by the scalar input or parameter `wrt` at the point `at`, by forward mode applied k
 * times and by reverse mode over forward mode k − 1 times, evaluated by the f64 reference; a
 * table to out (order, forward, reverse, the nodes of the k-th derivative's graph). The session
 * was opened with no_training. Every other input must have a value in the model. 0, or 1 with
 * the reason in s->error. */
int diff_model(Session *s, const char *wrt, double at, int order, FILE *out);

/* ================================ gradcheck.c ================================ */

/* `kiln gradcheck`: in float64 on the reference runtime, at parameters from the model's
 * initialisers (seed) and random inputs: reverse mode against central finite differences on a
 * sample of every parameter's elements; forward mode, reverse mode and a finite difference along
 * random directions; and the adjoint identity <J v, w> = <v, J^T w> between the tangent and
 * vector-Jacobian rules of every op in the training graph, at the values the model gives it.
 * Prints a report to out, ending with the first failure (parameter and element, or op and
 * line). The session must have been opened with the jvp option. 0, or 1 on a failed check or
 * with the reason in s->error. */
int gradcheck_model(Session *s, uint64_t seed, FILE *out);

/* ================================ curvature.c ================================ */

typedef struct CurvatureOptions {
  const char *params;     /* parameters to measure at (safetensors), or NULL: the initialisers' */
  const char *data;       /* the dataset whose first training examples are the batch, or NULL */
  uint64_t seed;          /* the start vectors' */
  int iterations;         /* power iteration's most Hessian-vector products */
  int lanczos_steps;
} CurvatureOptions;

/* `kiln curvature`: on one batch (the session's batch of the first training examples, or the
 * model's own data), the largest eigenvalue of the loss's Hessian by power iteration and the
 * smallest (and largest again) by Lanczos, on compiled Hessian-vector products; the condition
 * number and the largest stable learning rate of plain gradient descent, 2/λmax. The session
 * must have the hvp option. 0, or 1 with the reason in s->error. */
int curvature_model(Session *s, const CurvatureOptions *co, FILE *out);

/* ================================ sweep.c ================================ */

/* `kiln sweep`: every point of a grid of trainer settings trained in turn, one CSV row per run,
 * the best run by a validation figure kept. */

#define SWEEP_MAX_AXES 8
#define SWEEP_MAX_VALUES 1000   /* per key */
#define SWEEP_MAX_RUNS 100000

/* One key of a grid and its values, as written (each checked as the option takes it). */
typedef struct SweepAxis {
  const char *key;        /* "lr", "batch", "epochs", "seed", "patience", "validation",
                             "limit-train" */
  const char *option;     /* what `kiln train` takes it as: "--lr", "--batch", ... */
  int n;
  char **values;
  char *text;             /* the values' storage */
} SweepAxis;

typedef struct SweepGrid {
  SweepAxis axes[SWEEP_MAX_AXES];
  int naxes;
  int64_t runs;           /* the product of the axes' sizes (1 for an empty grid) */
} SweepGrid;

/* The keys a grid takes, in a sentence: "lr, batch, epochs, ...". */
const char *sweep_grid_keys(void);
/* Adds the axis "KEY=V1,V2,..." to g (initially zeroed). 0, or -1 with a message in err (an
 * unknown key names the valid ones; a value that is malformed, out of range or repeated, an empty
 * list, a key given twice or a grid above SWEEP_MAX_RUNS runs are refused). */
int sweep_grid_add(SweepGrid *g, const char *spec, char *err, size_t cap);
/* The axis of key, or -1. */
int sweep_grid_axis(const SweepGrid *g, const char *key);
/* The values of run k (from 0, below g->runs): index[a] is the value's index on axis a. The
 * runs are the cartesian product in the order the keys were given, the last key varying fastest
 * (nested loops, the first key outermost). */
void sweep_grid_point(const SweepGrid *g, int64_t k, int *index);
void sweep_grid_free(SweepGrid *g);

/* What picks the best run: a validation column of the sweep's CSV and its direction. */
typedef struct SweepSelect {
  char column[64];        /* "val_loss", "val_accuracy" or "val_NAME" (a metric) */
  char metric[56];        /* NAME for a metric, else "" */
  bool lower;             /* lower is better */
} SweepSelect;
/* "val_loss" (lowest wins), "val_accuracy" (highest), "val_NAME" for the model's metric NAME
 * (highest, as PSNR), each direction overridable with a "min:" or "max:" prefix. Test-set
 * columns are refused: selection never looks at the test set. 0, or -1 with err. */
int sweep_select_parse(const char *text, SweepSelect *s, char *err, size_t cap);

/* One argument as a POSIX shell reads it back: as it is when it holds only safe characters,
 * else in single quotes. Appends to b. */
void sweep_shell_word(Buf *b, const char *arg);

typedef struct SweepPlan {
  const char *model;      /* the model file as given: each run's command names it */
  const SweepGrid *grid;
  int ntrainer;           /* trainer options as given, passed to every run */
  char **trainer;
  int ncommon;            /* kiln's own options as given (--threads 2, -O3; not --batch),
                             repeated in each run's command */
  char **common;
  int64_t batch;          /* --batch, when batch is not a grid key (0: the model's) */
  int threads;            /* threads each run's step runs on */
  const char *csv_path;   /* one row per run */
  const char *keep_path;  /* the best run's parameters, or NULL */
  SweepSelect select;
  /* Opens the model specialised for batch (0: the model's own) into s and loads its step (the
   * compiled-program cache applies); 0, or -1 after saying why on stderr. The sweep closes s. */
  int (*open)(void *ctx, int64_t batch, Session *s);
  void *ctx;
  FILE *log;              /* what the sweep is doing (stderr); NULL: quiet */
  FILE *out;              /* each run's figures, the best run and its command (stdout) */
} SweepPlan;

/* Trains every run of the grid in order, sequentially in this process, each run through
 * rt_train (its options parsed from its own `kiln train` command line, so that the command in
 * its CSV row reproduces it) with a validation split (10% of the training examples unless
 * --validation or the grid says otherwise). A run that fails (a diverging learning rate) gets a
 * row marked failed and the sweep goes on. Returns the exit code: 0 when a best run was found,
 * 1 when none was (or a file could not be written), 2 for options a sweep refuses, and a
 * signal's code (130, 143) when one stopped it. */
int sweep_run(const SweepPlan *plan);

/* ================================ api.c ================================ */

/* Sets this thread's kiln_last_error to msg and returns KILN_ERROR; NULL clears it and returns
 * KILN_OK. For builder.c, the other half of include/kiln.h. */
int api_set_error(const char *msg);

/* ================================ tune.c ================================ */

/* What `kiln tune` found: the decisions (empty when the default schedule was as fast), the train
 * step's time under the default and the tuned schedule, and how many schedules were tried. */
typedef struct TuneResult {
  SchedTuning tuning;
  double default_ms, tuned_ms;
  int candidates;
  bool kept;
} TuneResult;
/* Compiles the model file at path under candidate schedules (options o otherwise), runs each
 * one's train step for about `seconds` on o->sched.threads threads, and returns the winners;
 * one progress line per candidate to log (NULL: none). 0, or -1 with the message in err. */
int tune_model(const char *path, const Options *o, double seconds, FILE *log, TuneResult *out,
               char *err, size_t cap);
/* Where the tuning of this model text under o lives: <cache_dir>/tune/<hash>.txt, the hash over
 * the text, kiln's version and every option the timings depend on. 0, or -1 (no cache dir). */
int tune_file_path(const char *cache_dir, const char *model_text, const Options *o,
                   const char *version, char *path, size_t cap);
/* Saves t as text (one line per decision after a comment), atomically. */
int tune_save(const char *path, const SchedTuning *t, const char *comment, char *err, size_t cap);
/* Loads a tuning file: 1, 0 when there is none, -1 when it is not one (t is then empty). */
int tune_load(const char *path, SchedTuning *t);

#endif
