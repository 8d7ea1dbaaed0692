/*
 * sweep.c — `kiln sweep`: hyper-parameter search over a grid (seed 001, section 4.10).
 *
 * The grid is the cartesian product of a few trainer settings, walked in the order its keys were
 * given with the last key fastest. Each run is an ordinary `kiln train`: its trainer options are
 * parsed from the command line its CSV row prints (rt_options_parse), and rt_train trains it on a
 * fresh arena, so a row plus the model reproduce the run bit for bit. Runs go one after another in
 * this process, each on every thread the step may use: the step's kernels already spread over
 * the cores, and two runs side by side would halve each one's threads and share the caches.
 *
 * `batch` is compiled into the step, so each distinct batch is its own program; sessions are
 * opened through the caller (which reads the cache, the tuning and reports phases) and kept for
 * the runs that share the batch. The best run is chosen on a validation split, never on the test
 * set, and its parameters are written over --keep atomically each time a run beats the best so
 * far, so the file always holds a finished run's parameters.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "driver/driver.h"
#include "runtime.h"

/* ---- the grid ---- */

enum { VALUE_RATE, VALUE_COUNT, VALUE_SEED, VALUE_VALIDATION };

static const struct GridKey {
  const char *key, *option;
  int kind;
  int64_t max;            /* VALUE_COUNT: the largest allowed (0: none) */
  const char *what;       /* for messages: "'abc' is not <what>" */
} grid_keys[] = {
    {"lr", "--lr", VALUE_RATE, 0, "a learning rate (a number >= 0)"},
    {"batch", "--batch", VALUE_COUNT, 1 << 20, "a batch size (an integer from 1 to 1048576)"},
    {"epochs", "--epochs", VALUE_COUNT, 1000000000, "a number of epochs (an integer >= 1)"},
    {"seed", "--seed", VALUE_SEED, 0, "a seed (an unsigned 64-bit integer)"},
    {"patience", "--patience", VALUE_COUNT, 1000000000,
     "a patience in epochs (an integer >= 1)"},
    {"validation", "--validation", VALUE_VALIDATION, 0,
     "a validation size (a number of examples, or a fraction between 0 and 1)"},
    {"limit-train", "--limit-train", VALUE_COUNT, 0,
     "a number of training examples (an integer >= 1)"},
};
enum { NGRID_KEYS = sizeof grid_keys / sizeof *grid_keys };

const char *sweep_grid_keys(void) {
  return "lr, batch, epochs, seed, patience, validation, limit-train";
}

/* A value as the trainer option reads it (rt_train.c's rules), into *num (real keys) or *whole
 * (the others), so that two spellings of one number count as a repeat. */
static bool parse_value(int kind, int64_t max, const char *s, double *num, uint64_t *whole) {
  char *end;
  errno = 0;
  *num = 0;
  *whole = 0;
  if (!*s)
    return false;
  switch (kind) {
  case VALUE_RATE:
    *num = strtod(s, &end);
    return !*end && !errno && isfinite(*num) && *num >= 0;
  case VALUE_VALIDATION:
    *num = strtod(s, &end);
    return !*end && !errno && *num > 0 && *num <= 1e15 && (*num < 1 || *num == floor(*num)) &&
           *num != 1;
  case VALUE_SEED:
    if (!(*s >= '0' && *s <= '9'))
      return false;
    *whole = strtoull(s, &end, 0);
    return !*end && !errno;
  default: {
    if (!(*s >= '0' && *s <= '9'))
      return false;
    long long v = strtoll(s, &end, 10);
    *whole = (uint64_t)v;
    return !*end && !errno && v >= 1 && (max == 0 || v <= max);
  }
  }
}

static int grid_error(char *err, size_t cap, const char *fmt, ...) KILN_PRINTF(3, 4);
static int grid_error(char *err, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return -1;
}

int sweep_grid_axis(const SweepGrid *g, const char *key) {
  for (int a = 0; a < g->naxes; a++)
    if (!strcmp(g->axes[a].key, key))
      return a;
  return -1;
}

int sweep_grid_add(SweepGrid *g, const char *spec, char *err, size_t cap) {
  const char *eq = strchr(spec, '=');
  if (!eq || eq == spec)
    return grid_error(err, cap, "--grid '%s': expected KEY=VALUE,VALUE,... (lr=1e-3,3e-3)",
                      spec);
  int k = -1;
  for (int i = 0; i < NGRID_KEYS; i++)
    if (strlen(grid_keys[i].key) == (size_t)(eq - spec) &&
        !strncmp(spec, grid_keys[i].key, (size_t)(eq - spec)))
      k = i;
  if (k < 0)
    return grid_error(err, cap, "--grid: unknown key '%.*s' (a grid takes %s)", (int)(eq - spec),
                      spec, sweep_grid_keys());
  const struct GridKey *key = &grid_keys[k];
  if (sweep_grid_axis(g, key->key) >= 0)
    return grid_error(err, cap, "--grid: %s is given twice (list its values once: %s=A,B)",
                      key->key, key->key);
  if (g->naxes == SWEEP_MAX_AXES)
    return grid_error(err, cap, "--grid: at most %d keys", SWEEP_MAX_AXES);
  if (!eq[1])
    return grid_error(err, cap, "--grid %s: no values for %s", spec, key->key);
  /* Count the values, then check each against the option's rules and the ones before it. */
  int n = 1;
  for (const char *c = eq + 1; *c; c++)
    n += *c == ',';
  if (n > SWEEP_MAX_VALUES)
    return grid_error(err, cap, "--grid %s: %d values, at most %d per key", key->key, n,
                      SWEEP_MAX_VALUES);
  SweepAxis ax = {.key = key->key, .option = key->option};
  ax.text = malloc(strlen(eq + 1) + 1);
  ax.values = malloc((size_t)n * sizeof *ax.values);
  double *nums = malloc((size_t)n * sizeof *nums);
  uint64_t *wholes = malloc((size_t)n * sizeof *wholes);
  int rc = -1;
  if (!ax.text || !ax.values || !nums || !wholes) {
    grid_error(err, cap, "out of memory");
    goto done;
  }
  strcpy(ax.text, eq + 1);
  for (char *v = ax.text;; v++) {
    char *comma = strchr(v, ',');
    if (comma)
      *comma = 0;
    int i = ax.n++;
    ax.values[i] = v;
    if (!*v) {
      grid_error(err, cap, "--grid %s: an empty value for %s", spec, key->key);
      goto done;
    }
    if (!parse_value(key->kind, key->max, v, &nums[i], &wholes[i])) {
      grid_error(err, cap, "--grid %s: '%s' is not %s", key->key, v, key->what);
      goto done;
    }
    for (int j = 0; j < i; j++) {
      bool real = key->kind == VALUE_RATE || key->kind == VALUE_VALIDATION;
      if (real ? nums[j] == nums[i] : wholes[j] == wholes[i]) {
        grid_error(err, cap, "--grid %s: '%s' repeats '%s'", key->key, v, ax.values[j]);
        goto done;
      }
    }
    if (!comma)
      break;
    v = comma;
  }
  int64_t runs = g->naxes ? g->runs : 1;
  if (runs * ax.n > SWEEP_MAX_RUNS) {
    grid_error(err, cap, "--grid: %lld runs; a sweep takes at most %d",
               (long long)(runs * ax.n), SWEEP_MAX_RUNS);
    goto done;
  }
  g->axes[g->naxes++] = ax;
  g->runs = runs * ax.n;
  ax.text = NULL;
  ax.values = NULL;
  rc = 0;
done:
  free(ax.text);
  free(ax.values);
  free(nums);
  free(wholes);
  return rc;
}

void sweep_grid_point(const SweepGrid *g, int64_t k, int *index) {
  for (int a = g->naxes - 1; a >= 0; a--) {
    index[a] = (int)(k % g->axes[a].n);
    k /= g->axes[a].n;
  }
}

void sweep_grid_free(SweepGrid *g) {
  for (int a = 0; a < g->naxes; a++) {
    free(g->axes[a].text);
    free(g->axes[a].values);
  }
  memset(g, 0, sizeof *g);
}

/* ---- selection ---- */

int sweep_select_parse(const char *text, SweepSelect *s, char *err, size_t cap) {
  memset(s, 0, sizeof *s);
  int direction = 0; /* -1 min, +1 max, 0 the column's own */
  const char *col = text;
  if (!strncmp(text, "min:", 4) || !strncmp(text, "max:", 4)) {
    direction = text[1] == 'i' ? -1 : 1;
    col = text + 4;
  }
  if (!strncmp(col, "test_", 5) || !strncmp(col, "train_", 6))
    return grid_error(err, cap, "--select %s: the best run is chosen on the validation split, "
                      "never on the %s set (val_loss, val_accuracy or val_METRIC)", text,
                      col[1] == 'e' ? "test" : "training");
  size_t len = strlen(col);
  bool ident = len > 4 && len < sizeof s->column;
  for (size_t i = 4; i < len && ident; i++)
    ident = (col[i] >= 'a' && col[i] <= 'z') || (col[i] >= 'A' && col[i] <= 'Z') ||
            (col[i] >= '0' && col[i] <= '9') || col[i] == '_';
  if (strncmp(col, "val_", 4) || !ident)
    return grid_error(err, cap, "--select '%s': expected val_loss (lowest wins), val_accuracy "
                      "(highest) or val_METRIC for a metric of the model (highest), optionally "
                      "prefixed min: or max:", text);
  snprintf(s->column, sizeof s->column, "%s", col);
  if (!strcmp(col, "val_loss"))
    s->lower = true;
  else if (strcmp(col, "val_accuracy"))
    snprintf(s->metric, sizeof s->metric, "%s", col + 4);
  if (direction)
    s->lower = direction < 0;
  return 0;
}

/* ---- commands ---- */

void sweep_shell_word(Buf *b, const char *arg) {
  static const char safe[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                             "-_./=:,+@%";
  if (*arg && strspn(arg, safe) == strlen(arg)) {
    buf_puts(b, arg);
    return;
  }
  buf_puts(b, "'");
  for (const char *c = arg; *c; c++)
    buf_puts(b, *c == '\'' ? "'\\''" : (char[2]){*c, 0});
  buf_puts(b, "'");
}

/* A field of a CSV row: in double quotes when it holds a comma, a quote or a line break. */
static void csv_field(Buf *b, const char *s) {
  if (!strpbrk(s, ",\"\n\r")) {
    buf_puts(b, s);
    return;
  }
  buf_puts(b, "\"");
  for (const char *c = s; *c; c++)
    buf_puts(b, *c == '"' ? "\"\"" : (char[2]){*c, 0});
  buf_puts(b, "\"");
}

/* "0:31", "1:02:03". */
static void format_seconds(char *buf, size_t len, double s) {
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

/* ---- the sweep ---- */

typedef struct Sweep {
  const SweepPlan *plan;
  const SweepGrid *g;
  FILE *log;                /* the plan's, or NULL with --quiet */
  RtOptions base;           /* the trainer options every run shares, as parsed */
  /* The programs opened so far, one per batch. */
  int nsessions;
  int64_t *session_batch;
  Session **sessions;
  /* From the first program (the same model at every batch). */
  int nmetrics;
  const char *metric_names[RT_MAX_METRICS];
  int select_metric;        /* index of the selected metric, or -1 */
  uint64_t model_seed;
  int64_t model_epochs;
  int batch_axis, seed_axis, epochs_axis, validation_axis;
} Sweep;

/* Whether the trainer options set `option` (as "--lr V" or "--lr=V"). */
static bool trainer_sets(const SweepPlan *p, const char *option) {
  size_t n = strlen(option);
  for (int i = 0; i < p->ntrainer; i++)
    if (!strncmp(p->trainer[i], option, n) && (!p->trainer[i][n] || p->trainer[i][n] == '='))
      return true;
  return false;
}

/* Options a sweep cannot pass on to its runs, and what to do instead. */
static int refuse_options(const Sweep *sw) {
  const RtOptions *o = &sw->base;
  const char *why = NULL, *option = NULL;
  if (o->save_path)
    option = "--save", why = "the best run's parameters go to --keep FILE";
  else if (o->metrics_path)
    option = "--metrics", why = "the sweep writes one row per run to -o FILE.csv; a run's "
                                "metrics per epoch come from its own kiln train command";
  else if (o->resume_path)
    option = "--resume", why = "a run is resumed with its own kiln train command";
  else if (o->checkpoint_every > 0)
    option = "--checkpoint-every", why = "the runs would share one checkpoint directory; "
                                         "checkpoint a run with its own kiln train command";
  else if (o->images_dir)
    option = "--images", why = "write a run's pictures with its own kiln train command";
  if (option) {
    rt_color_printf(stderr, "kiln sweep: error: %s is not for a sweep: %s\n", option, why);
    return 2;
  }
  for (int a = 0; a < sw->g->naxes; a++)
    if (trainer_sets(sw->plan, sw->g->axes[a].option) ||
        (a == sw->batch_axis && sw->plan->batch > 0)) {
      rt_color_printf(stderr, "kiln sweep: error: %s is a grid key: give its values in --grid, not as "
              "%s\n", sw->g->axes[a].key, sw->g->axes[a].option);
      return 2;
    }
  return 0;
}

/* The session specialised for batch, opened on first use. NULL after the caller said why. */
static Session *session_for(Sweep *sw, int64_t batch) {
  for (int i = 0; i < sw->nsessions; i++)
    if (sw->session_batch[i] == batch)
      return sw->sessions[i];
  Session *s = calloc(1, sizeof *s);
  if (!s) {
    rt_color_printf(stderr, "kiln sweep: error: out of memory\n");
    return NULL;
  }
  if (sw->plan->open(sw->plan->ctx, batch, s)) {
    session_close(s);
    free(s);
    return NULL;
  }
  sw->session_batch[sw->nsessions] = batch;
  sw->sessions[sw->nsessions++] = s;
  return s;
}

/* What the sweep needs of the model, from its first program: data to train on, the metrics,
 * the figure selection uses, and the defaults a run's command leaves to the model. */
static int inspect_program(Sweep *sw, const kiln_program *p) {
  const SweepSelect *sel = &sw->plan->select;
  bool data = false, labels = false;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role == KILN_ROLE_INPUT && t->feed) {
      data = true;
      labels |= !strcmp(t->feed, "labels");
    }
  }
  if (!data) {
    rt_color_printf(stderr, "kiln sweep: error: model '%s' has its data in the file: a sweep compares "
            "runs on a validation split of a data set's training examples\n",
            p->model ? p->model : "?");
    return 1;
  }
  if (!sw->base.data_dir) {
    rt_color_printf(stderr, "kiln sweep: error: model '%s' reads images and labels: pass --data DIR\n",
            p->model ? p->model : "?");
    return 2;
  }
  static const char prefix[] = "eval.metric.";
  sw->select_metric = -1;
  for (int i = 0; i < p->ntensors && sw->nmetrics < RT_MAX_METRICS; i++)
    if (p->tensors[i].role == KILN_ROLE_OUTPUT &&
        !strncmp(p->tensors[i].name, prefix, sizeof prefix - 1)) {
      const char *name = p->tensors[i].name + sizeof prefix - 1;
      if (sel->metric[0] && !strcmp(sel->metric, name))
        sw->select_metric = sw->nmetrics;
      sw->metric_names[sw->nmetrics++] = name;
    }
  if (sel->metric[0] && sw->select_metric < 0) {
    rt_color_printf(stderr, "kiln sweep: error: --select %s: model '%s' has no metric '%s'",
            sel->column, p->model ? p->model : "?", sel->metric);
    for (int m = 0; m < sw->nmetrics; m++)
      fprintf(stderr, "%s val_%s", m ? "," : " (its metrics:", sw->metric_names[m]);
    fprintf(stderr, "%s\n", sw->nmetrics ? ")" : "");
    return 2;
  }
  int out = rt_find_tensor(p, "eval.output");
  const kiln_tensor *o = out >= 0 ? &p->tensors[out] : NULL;
  bool classifier = o && o->rank >= 2 && o->batch_axis == 0 && labels &&
                    rt_numel(o, 1) == o->dims[o->rank - 1];
  if (!strcmp(sel->column, "val_accuracy") && !classifier) {
    rt_color_printf(stderr, "kiln sweep: error: --select val_accuracy: model '%s' has no accuracy (it "
            "needs an output of class scores [N, C] and labels)\n", p->model ? p->model : "?");
    return 2;
  }
  sw->model_seed = rt_setting_u64(p, "seed", 1);
  sw->model_epochs = rt_setting_int(p, "epochs", 1);
  return 0;
}

/* "%.6f", or nothing for NaN (a figure the run does not have). */
static void csv_number(Buf *b, double v, const char *fmt) {
  buf_puts(b, ",");
  if (!isnan(v))
    buf_printf(b, fmt, v);
}

/* " name=%.4f" for a figure the run has. */
static void figure(Buf *b, const char *name, double v) {
  if (!isnan(v))
    buf_printf(b, " %s=%.4f", name, v);
}

/* A run's figure that selection compares, NaN when it has none. */
static double selected(const Sweep *sw, const RtResult *r) {
  const SweepSelect *sel = &sw->plan->select;
  if (sw->select_metric >= 0)
    return r->val_metrics[sw->select_metric];
  return !strcmp(sel->column, "val_accuracy") ? r->val_accuracy : r->val_loss;
}

/* The command line of run k, as words: kiln train MODEL, kiln's options, the batch, the shared
 * trainer options, the grid's values and, when neither sets them, the seed and the validation
 * split. *tail is where the trainer options start. */
typedef struct Command {
  const char *words[256 + SWEEP_MAX_AXES * 2];
  int n, tail;
  char seed[32], batch[32];
} Command;

static int command_of(const Sweep *sw, const int *index, Command *c) {
  const SweepPlan *p = sw->plan;
  if (p->ncommon + p->ntrainer + 2 * SWEEP_MAX_AXES + 12 > (int)(sizeof c->words / sizeof *c->words))
    return -1;
  c->n = 0;
  c->words[c->n++] = "kiln";
  c->words[c->n++] = "train";
  c->words[c->n++] = p->model;
  for (int i = 0; i < p->ncommon; i++)
    c->words[c->n++] = p->common[i];
  if (sw->batch_axis >= 0) {
    c->words[c->n++] = "--batch";
    c->words[c->n++] = sw->g->axes[sw->batch_axis].values[index[sw->batch_axis]];
  } else if (p->batch > 0) {
    snprintf(c->batch, sizeof c->batch, "%" PRId64, p->batch);
    c->words[c->n++] = "--batch";
    c->words[c->n++] = c->batch;
  }
  c->tail = c->n;
  for (int i = 0; i < p->ntrainer; i++)
    c->words[c->n++] = p->trainer[i];
  for (int a = 0; a < sw->g->naxes; a++) {
    if (a == sw->batch_axis)
      continue;
    c->words[c->n++] = sw->g->axes[a].option;
    c->words[c->n++] = sw->g->axes[a].values[index[a]];
  }
  if (sw->seed_axis < 0 && !sw->base.have_seed) {
    snprintf(c->seed, sizeof c->seed, "%" PRIu64, sw->model_seed);
    c->words[c->n++] = "--seed";
    c->words[c->n++] = c->seed;
  }
  if (sw->validation_axis < 0 && sw->base.validation <= 0) {
    c->words[c->n++] = "--validation";
    c->words[c->n++] = "0.1";
  }
  return 0;
}

static void command_text(const Command *c, Buf *b) {
  for (int i = 0; i < c->n; i++) {
    if (i)
      buf_puts(b, " ");
    sweep_shell_word(b, c->words[i]);
  }
}

/* The epochs run k asks for, to estimate how long the rest will take. */
static double run_epochs(const Sweep *sw, const int *index) {
  if (sw->epochs_axis >= 0)
    return strtod(sw->g->axes[sw->epochs_axis].values[index[sw->epochs_axis]], NULL);
  return sw->base.epochs > 0 ? sw->base.epochs : sw->model_epochs > 0 ? (double)sw->model_epochs : 1;
}

/* The directory of a file the sweep will write exists and takes new files. */
static int check_writable(const char *path, const char *option) {
  struct stat st;
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!*path) {
    rt_color_printf(stderr, "kiln sweep: error: %s needs a file name\n", option);
    return 2;
  }
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    rt_color_printf(stderr, "kiln sweep: error: %s %s: is a directory\n", option, path);
    return 1;
  }
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    return 0; /* a device or a pipe (/dev/stdout) is written in place */
  snprintf(dir, sizeof dir, "%.*s", slash ? (slash == path ? 1 : (int)(slash - path)) : 1,
           slash ? path : ".");
  const char *why = stat(dir, &st) ? strerror(errno)
                    : !S_ISDIR(st.st_mode) ? "not a directory"
                    : access(dir, W_OK | X_OK) ? strerror(errno)
                                               : NULL;
  if (why) {
    rt_color_printf(stderr, "kiln sweep: error: %s %s: cannot write in %s: %s\n", option, path, dir,
            why);
    return 1;
  }
  return 0;
}

typedef struct Best {
  int64_t run;              /* -1: none yet */
  double value;
  Buf command, values;
} Best;

/* One run of the grid on its way through. */
typedef struct SweepRun {
  int64_t k;                /* from 0 */
  int index[SWEEP_MAX_AXES];
  Buf values, command;      /* "lr=1e-3 batch=32" and its kiln train command */
  int rc;                   /* rt_train's: 0 trained, 1 failed, > 1 stopped by a signal */
  RtResult res;
  uint64_t seed;
  double seconds;
  double value;             /* the figure selection compares; NaN when there is none */
  bool better;              /* it beats every run before it */
} SweepRun;

/* Trains run r through rt_train on a fresh arena, from its command's options, and when it beats
 * the best so far writes its parameters over --keep. 0, or the sweep's exit code. */
static int train_run(Sweep *sw, SweepRun *r, const Best *best) {
  const SweepPlan *p = sw->plan;
  const SweepGrid *g = sw->g;
  int64_t batch = sw->batch_axis >= 0
                      ? strtoll(g->axes[sw->batch_axis].values[r->index[sw->batch_axis]], NULL, 10)
                      : p->batch;
  Session *s = session_for(sw, batch);
  if (!s)
    return 1;
  Command cmd;
  if (command_of(sw, r->index, &cmd)) {
    rt_color_printf(stderr, "kiln sweep: error: too many options\n");
    return 2;
  }
  command_text(&cmd, &r->command);
  /* The run's options are its command's, parsed as kiln train parses them; its messages name
   * the run ("kiln sweep (run 3/4): error: ..."). */
  const char *argv[sizeof cmd.words / sizeof *cmd.words + 1];
  int argc = 1;
  argv[0] = "kiln sweep";
  for (int i = cmd.tail; i < cmd.n; i++)
    argv[argc++] = cmd.words[i];
  char name[64];
  snprintf(name, sizeof name, "kiln sweep (run %" PRId64 "/%" PRId64 ")", r->k + 1, g->runs);
  RtOptions o;
  rt_options_default(&o);
  if (rt_options_parse(&o, argc, (char **)argv, name))
    return 2;
  o.argc = cmd.n;             /* a stopped run says how to continue: its own command */
  o.argv = (char **)cmd.words;
  o.result = &r->res;
  if (!o.threads)
    o.threads = p->threads;
  o.quiet |= sw->log == NULL;
  r->seed = o.have_seed ? o.seed : sw->model_seed;
  RtBackend be;
  char err[RT_ERR_LEN];
  if (rt_arena_backend_new(s->prog, &be, err)) {
    rt_color_printf(stderr, "kiln sweep: error: %s\n", err);
    return 1;
  }
  double t0 = rt_now();
  r->rc = rt_train(&be, &o);
  r->seconds = rt_now() - t0;
  if (r->rc > 1) { /* a signal stopped the run, which wrote its checkpoint and said so */
    rt_arena_backend_free(&be);
    fprintf(stderr, "kiln sweep: stopped in run %" PRId64 " of %" PRId64 "; the rows of the "
            "runs before it are %s%s\n", r->k + 1, g->runs,
            strcmp(p->csv_path, "-") ? "in " : "above", strcmp(p->csv_path, "-") ? p->csv_path : "");
    return r->rc;
  }
  r->value = r->rc == 0 ? selected(sw, &r->res) : NAN;
  r->better = !isnan(r->value) && (best->run < 0 || (p->select.lower ? r->value < best->value
                                                                     : r->value > best->value));
  int rc = 0;
  if (r->better && p->keep_path && rt_save_checkpoint(&be, p->keep_path, err)) {
    rt_color_printf(stderr, "kiln sweep: error: --keep %s\n", err);
    rc = 1;
  }
  rt_arena_backend_free(&be);
  return rc;
}

/* Run r's CSV row (the run, the grid's values, the seed, the figures, the command) and its line
 * on stdout. 0, or 1 out of memory. */
static int record_run(const Sweep *sw, const SweepRun *r, RtCsv *csv) {
  const SweepPlan *p = sw->plan;
  const SweepGrid *g = sw->g;
  const RtResult *res = &r->res;
  Buf row = {.lossy = true}, line = {.lossy = true};
  buf_printf(&row, "%" PRId64, r->k + 1);
  for (int a = 0; a < g->naxes; a++) {
    buf_puts(&row, ",");
    csv_field(&row, g->axes[a].values[r->index[a]]);
  }
  if (sw->seed_axis < 0)
    buf_printf(&row, ",%" PRIu64, r->seed);
  if (r->rc) {
    for (int i = 0; i < 5 + 2 * sw->nmetrics; i++)
      buf_puts(&row, ",");
    buf_printf(&row, ",,%.3f,failed,", r->seconds);
  } else {
    csv_number(&row, res->train_loss, "%.6f");
    csv_number(&row, res->val_loss, "%.6f");
    csv_number(&row, res->val_accuracy, "%.6f");
    csv_number(&row, res->test_loss, "%.6f");
    csv_number(&row, res->test_accuracy, "%.6f");
    for (int m = 0; m < sw->nmetrics; m++)
      csv_number(&row, res->val_metrics[m], "%.6f");
    for (int m = 0; m < sw->nmetrics; m++)
      csv_number(&row, res->test_metrics[m], "%.6f");
    buf_printf(&row, ",%d,%.3f,ok,", res->epochs, r->seconds);
    char name[80];
    figure(&line, "train_loss", res->train_loss);
    figure(&line, "val_loss", res->val_loss);
    figure(&line, "val_accuracy", res->val_accuracy);
    for (int m = 0; m < sw->nmetrics; m++) {
      snprintf(name, sizeof name, "val_%s", sw->metric_names[m]);
      figure(&line, name, res->val_metrics[m]);
    }
    figure(&line, "test_loss", res->test_loss);
    figure(&line, "test_accuracy", res->test_accuracy);
    for (int m = 0; m < sw->nmetrics; m++) {
      snprintf(name, sizeof name, "test_%s", sw->metric_names[m]);
      figure(&line, name, res->test_metrics[m]);
    }
  }
  csv_field(&row, r->command.p ? r->command.p : "");
  int rc = 0;
  if (row.lost || line.lost || r->command.lost || r->values.lost) {
    rt_color_printf(stderr, "kiln sweep: error: out of memory\n");
    rc = 1;
  } else {
    rt_csv_row(csv, "%s", row.p);
    if (p->out && r->rc)
      fprintf(p->out, "run %" PRId64 "/%" PRId64 " %s: failed (the error is above)\n", r->k + 1,
              g->runs, r->values.p ? r->values.p : "");
    else if (p->out)
      fprintf(p->out, "run %" PRId64 "/%" PRId64 " %s:%s epochs=%d seconds=%.1f%s\n", r->k + 1,
              g->runs, r->values.p ? r->values.p : "", line.p ? line.p : "", res->epochs,
              r->seconds, r->better ? "  (best so far)" : "");
    if (p->out)
      fflush(p->out);
  }
  buf_free(&row);
  buf_free(&line);
  return rc;
}

/* Every run of the grid in order; the best so far in *best. 0, or the sweep's exit code. */
static int sweep_runs(Sweep *sw, RtCsv *csv, Best *best) {
  const SweepGrid *g = sw->g;
  int index[SWEEP_MAX_AXES] = {0};
  double done_seconds = 0, done_epochs = 0, total_epochs = 0;
  int64_t failed = 0;
  for (int64_t k = 0; k < g->runs; k++) {
    sweep_grid_point(g, k, index);
    total_epochs += run_epochs(sw, index);
  }
  for (int64_t k = 0; k < g->runs; k++) {
    SweepRun r = {.k = k, .values = {.lossy = true}, .command = {.lossy = true}, .value = NAN};
    sweep_grid_point(g, k, r.index);
    for (int a = 0; a < g->naxes; a++)
      buf_printf(&r.values, "%s%s=%s", a ? " " : "", g->axes[a].key,
                 g->axes[a].values[r.index[a]]);
    if (sw->log) {
      /* The time left, from the seconds per epoch of the runs so far. */
      char eta[32] = "";
      if (done_epochs > 0)
        format_seconds(eta, sizeof eta, done_seconds / done_epochs * (total_epochs - done_epochs));
      fprintf(sw->log, "sweep: run %" PRId64 "/%" PRId64 "  %s%s%s\n", k + 1, g->runs,
              r.values.p ? r.values.p : "", eta[0] ? "  ETA " : "", eta);
      fflush(sw->log);
    }
    int rc = train_run(sw, &r, best);
    if (!rc)
      rc = record_run(sw, &r, csv);
    if (rc) {
      buf_free(&r.values);
      buf_free(&r.command);
      return rc;
    }
    done_seconds += r.seconds;
    done_epochs += run_epochs(sw, r.index);
    failed += r.rc != 0;
    if (r.better) {
      buf_free(&best->command);
      buf_free(&best->values);
      *best = (Best){k, r.value, r.command, r.values};
    } else {
      buf_free(&r.values);
      buf_free(&r.command);
    }
  }
  if (sw->log && failed)
    fprintf(sw->log, "sweep: %" PRId64 " of %" PRId64 " runs failed\n", failed, g->runs);
  return 0;
}

int sweep_run(const SweepPlan *plan) {
  Sweep sw = {.plan = plan, .g = plan->grid};
  const SweepGrid *g = plan->grid;
  sw.batch_axis = sweep_grid_axis(g, "batch");
  sw.seed_axis = sweep_grid_axis(g, "seed");
  sw.epochs_axis = sweep_grid_axis(g, "epochs");
  sw.validation_axis = sweep_grid_axis(g, "validation");
  /* The shared trainer options, parsed once to refuse what a sweep cannot do before any run. */
  const char **argv = calloc((size_t)plan->ntrainer + 2, sizeof *argv);
  if (!argv) {
    rt_color_printf(stderr, "kiln sweep: error: out of memory\n");
    return 1;
  }
  argv[0] = "kiln sweep";
  for (int i = 0; i < plan->ntrainer; i++)
    argv[i + 1] = plan->trainer[i];
  rt_options_default(&sw.base);
  int prc = rt_options_parse(&sw.base, plan->ntrainer + 1, (char **)argv, "kiln sweep");
  free(argv);
  if (prc)
    return prc > 0 ? 0 : 2;
  int rc = refuse_options(&sw);
  if (rc)
    return rc;
  sw.log = sw.base.quiet ? NULL : plan->log;
  bool csv_stdout = !strcmp(plan->csv_path, "-");
  if ((!csv_stdout && (rc = check_writable(plan->csv_path, "-o"))) ||
      (plan->keep_path && (rc = check_writable(plan->keep_path, "--keep"))))
    return rc;
  int nbatches = sw.batch_axis >= 0 ? g->axes[sw.batch_axis].n : 1;
  sw.session_batch = calloc((size_t)nbatches, sizeof *sw.session_batch);
  sw.sessions = calloc((size_t)nbatches, sizeof *sw.sessions);
  RtCsv csv = {0};
  Best best = {.run = -1, .command = {.lossy = true}, .values = {.lossy = true}};
  Buf header = {.lossy = true};
  char err[RT_ERR_LEN];
  rc = 1;
  if (!sw.session_batch || !sw.sessions) {
    rt_color_printf(stderr, "kiln sweep: error: out of memory\n");
    goto done;
  }
  /* The first run's program tells what the model has; the others are the same model. */
  int first[SWEEP_MAX_AXES] = {0};
  int64_t batch = sw.batch_axis >= 0
                      ? strtoll(g->axes[sw.batch_axis].values[first[sw.batch_axis]], NULL, 10)
                      : plan->batch;
  Session *s = session_for(&sw, batch);
  if (!s || (rc = inspect_program(&sw, s->prog)))
    goto done;
  rc = 1;
  buf_puts(&header, "run");
  for (int a = 0; a < g->naxes; a++)
    buf_printf(&header, ",%s", g->axes[a].key);
  if (sw.seed_axis < 0)
    buf_puts(&header, ",seed");
  buf_puts(&header, ",train_loss,val_loss,val_accuracy,test_loss,test_accuracy");
  for (int m = 0; m < sw.nmetrics; m++)
    buf_printf(&header, ",val_%s", sw.metric_names[m]);
  for (int m = 0; m < sw.nmetrics; m++)
    buf_printf(&header, ",test_%s", sw.metric_names[m]);
  buf_puts(&header, ",epochs_run,seconds,status,command");
  if (header.lost) {
    rt_color_printf(stderr, "kiln sweep: error: out of memory\n");
    goto done;
  }
  if (csv_stdout) {
    /* The rows go to stdout between the runs' lines; closing it is not the sweep's to do. */
    printf("%s\n", header.p);
    fflush(stdout);
    csv = (RtCsv){stdout, "stdout"};
  } else if (rt_csv_open(&csv, plan->csv_path, header.p, -1, err)) {
    rt_color_printf(stderr, "kiln sweep: error: -o %s\n", err);
    goto done;
  }
  if (sw.log) {
    fprintf(sw.log, "sweep: %" PRId64 " run%s, the grid's values in the order given (the last "
            "key fastest), one after another on %d thread%s each\n", g->runs,
            g->runs == 1 ? "" : "s", plan->threads, plan->threads == 1 ? "" : "s");
    if (sw.validation_axis < 0 && sw.base.validation <= 0)
      fprintf(sw.log, "sweep: each run holds out 10%% of its training examples as a "
              "validation split (--validation sets it)\n");
    fprintf(sw.log, "sweep: the best run has the %s %s (--select); rows %s%s\n",
            plan->select.lower ? "lowest" : "highest", plan->select.column,
            csv_stdout ? "on stdout" : "in ", csv_stdout ? "" : plan->csv_path);
  }
  rc = sweep_runs(&sw, &csv, &best);
  if (csv_stdout)
    csv.f = NULL;
  if (rt_csv_close(&csv, err)) {
    rt_color_printf(stderr, "kiln sweep: error: -o %s\n", err);
    rc = rc ? rc : 1;
  }
  if (rc)
    goto done;
  if (best.run < 0) {
    rt_color_printf(stderr, "kiln sweep: error: no run has a %s to choose the best by\n",
            plan->select.column);
    rc = 1;
    goto done;
  }
  if (plan->out) {
    fprintf(plan->out, "best: run %" PRId64 "/%" PRId64 " %s (%s %s %.4f)", best.run + 1, g->runs,
            best.values.p ? best.values.p : "", plan->select.lower ? "lowest" : "highest",
            plan->select.column, best.value);
    if (plan->keep_path)
      fprintf(plan->out, "; parameters in %s", plan->keep_path);
    fprintf(plan->out, "\nreproduce: %s\n", best.command.p ? best.command.p : "");
    fflush(plan->out);
  }
  rc = 0;
done:
  if (csv.f && !csv_stdout)
    rt_csv_close(&csv, err);
  buf_free(&header);
  buf_free(&best.command);
  buf_free(&best.values);
  for (int i = 0; i < sw.nsessions; i++) {
    session_close(sw.sessions[i]);
    free(sw.sessions[i]);
  }
  free(sw.sessions);
  free(sw.session_batch);
  return rc;
}
