/*
 * rt_train.c — the training driver: everything a trainer does around the generated step.
 *
 * It sees a program only through its kiln_program description and an RtBackend, so the same loop
 * drives a compiled arena (trainer_main.c) and the reference interpreter (`kiln train --runtime
 * reference`); two runs that differ only in the backend feed identical batches in identical order
 * and print comparable lines.
 *
 * Two kinds of model:
 *  - data models have inputs fed from named data fields ("images", "labels" of IDX files or an
 *    image folder): each epoch shuffles the training set, walks all of it in batches (the last
 *    one smaller), then evaluates on the whole test set in order; images may be augmented
 *    (training only) and normalised on their way (rt_augment.c);
 *  - literal models carry their data in the model file: `steps` full-batch updates, then the
 *    parameters and the output are printed, for comparison against a hand or PyTorch computation.
 *
 * The model's defaults (epochs, steps, seed, patience, the learning-rate schedule) come from the
 * program's settings table, looked up by key, so a new training option is a new key rather than a
 * new ABI. The schedule (rt_schedule.c) sets "lr" before each epoch from the epoch alone.
 *
 * Errors are collected in one buffer and printed once by rt_train, as "NAME: error: MESSAGE".
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"

/* ---- options ---- */

void rt_options_default(RtOptions *o) {
  memset(o, 0, sizeof *o);
  o->lr = -1;
  o->prog_name = "trainer";
  o->checkpoint_dir = "checkpoints";
  o->keep_checkpoints = 3;
  o->images_count = 16;
  o->mpi_timeout = 120;
}

/* The trainer's options. The enum orders the table and names the parser's cases. */
enum {
  OPT_DATA, OPT_NORMALIZE, OPT_AUGMENT, OPT_EPOCHS, OPT_LR, OPT_SEED, OPT_SAVE, OPT_LOAD,
  OPT_CHECKPOINT_EVERY, OPT_CHECKPOINT_DIR, OPT_KEEP_CHECKPOINTS, OPT_RESUME, OPT_METRICS,
  OPT_PLOT, OPT_IMAGES, OPT_IMAGES_COUNT, OPT_INIT_FROM, OPT_INIT_MAP, OPT_LIMIT_TRAIN,
  OPT_LIMIT_TEST, OPT_VALIDATION, OPT_PATIENCE, OPT_THREADS, OPT_PROFILE, OPT_MAX_MEMORY,
  OPT_DIAGNOSE, OPT_CURVATURE_EVERY, OPT_VERIFY, OPT_MPI_TIMEOUT, OPT_QUIET, OPT_COLOR, OPT_HELP,
  OPT_COUNT
};

const RtOptionDoc rt_trainer_options[OPT_COUNT] = {
    [OPT_DATA] = {"--data", "DIR", NULL,
                  "the data set: IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz], or "
                  "an image folder: DIR/train and DIR/test, each with a labels.csv of "
                  "'file,label' rows naming PGM or PPM images (a model with its data in the file "
                  "needs none)"},
    [OPT_NORMALIZE] = {"--normalize", "M,S[;M,S...]", "none",
                       "per-channel normalisation (v - M) / S of every image input, after its "
                       "scale (from images / 255), at training and evaluation; 'auto': the "
                       "training examples' own mean and standard deviation per channel, printed "
                       "for reuse"},
    [OPT_AUGMENT] = {"--augment", "LIST", "none",
                     "random changes to each training example (never to evaluation), from the "
                     "seed, the epoch and the example alone: flip (horizontal, half of the "
                     "time), crop=P (zero padding P, then a random crop), rotate=DEG, "
                     "translate=PX (one bilinear warp), contrast=C (a factor in [1-C, 1+C]); "
                     "e.g. flip,crop=4"},
    [OPT_EPOCHS] = {"--epochs", "N", "the model's epochs, or steps",
                    "number of epochs (steps, for a model with literal data)"},
    [OPT_LR] = {"--lr", "X", "the model's", "learning rate"},
    [OPT_SEED] = {"--seed", "S", "the model's, else 1",
                  "seed for initialisation, shuffling, augmentation and the validation split"},
    [OPT_SAVE] = {"--save", "FILE", NULL,
                  "write the parameters to FILE (safetensors) at the end"},
    [OPT_LOAD] = {"--load", "FILE", NULL,
                  "start from the parameters in FILE (safetensors)"},
    [OPT_CHECKPOINT_EVERY] = {"--checkpoint-every", "N", "none",
                              "write a resumable checkpoint every N steps (N epochs with "
                              "'Nepochs', e.g. 1epochs); SIGINT and SIGTERM always write one "
                              "after the step in progress, then stop"},
    [OPT_CHECKPOINT_DIR] = {"--checkpoint-dir", "D", "checkpoints", "where checkpoints go"},
    [OPT_KEEP_CHECKPOINTS] = {"--keep-checkpoints", "K", "3",
                              "keep the K newest checkpoints in that directory"},
    [OPT_RESUME] = {"--resume", "FILE", NULL,
                    "continue exactly where the checkpoint FILE stopped (the same options, "
                    "--epochs may grow): the result is bit-identical to a run that was never "
                    "interrupted"},
    [OPT_METRICS] = {"--metrics", "FILE", NULL, "write one CSV row per epoch to FILE"},
    [OPT_PLOT] = {"--plot", "FILE.svg", NULL,
                  "at the end, draw the --metrics CSV (losses, accuracies, other figures per "
                  "epoch) as an SVG picture"},
    [OPT_IMAGES] = {"--images", "DIR", NULL,
                    "after training, write the model's output on the first test examples as "
                    "8-bit PGM pictures, one per example and channel (DIR/test00000_c0.pgm; "
                    "values in [0, 1] map to 0..255, the rest are clamped)"},
    [OPT_IMAGES_COUNT] = {"--images-count", "N", "16", "how many test examples --images writes"},
    [OPT_INIT_FROM] = {"--init-from", "FILE", NULL,
                       "start from the tensors of FILE (safetensors) that the model has, by "
                       "name; the others keep their initialisation (transfer learning; with "
                       "'freeze' in the model, fine-tuning)"},
    [OPT_INIT_MAP] = {"--init-map", "MAP", NULL,
                      "rename FILE's tensors first: FILE_NAME=MODEL_NAME[,...], whole name "
                      "segments, e.g. features.0=conv1,classifier=fc2; NAME= leaves NAME's "
                      "tensors out (a layer of another shape)"},
    [OPT_LIMIT_TRAIN] = {"--limit-train", "N", "all", "use only the first N training examples"},
    [OPT_LIMIT_TEST] = {"--limit-test", "N", "all", "use only the first N test examples"},
    [OPT_VALIDATION] = {"--validation", "N", "none; 10% of the training examples with early "
                        "stopping",
                        "hold out N training examples (a fraction, when below 1) as a "
                        "validation split, chosen by the seed: every epoch reports it, and the "
                        "test set is measured once, at the end"},
    [OPT_PATIENCE] = {"--patience", "N", "the model's early_stop, else none",
                      "stop after N epochs without a better validation loss and keep the best "
                      "epoch's parameters"},
    [OPT_THREADS] = {"--threads", "N", "every core this process may use, at most the number "
                     "the trainer was built for",
                     "threads the step runs on; results are the same for every thread count"},
    [OPT_PROFILE] = {"--profile", NULL, NULL,
                     "at the end, print where the step's time went: per kernel call, its "
                     "share, GFLOP/s, percent of the measured FMA peak and the model line it "
                     "came from"},
    [OPT_MAX_MEMORY] = {"--max-memory", "SIZE", "no limit",
                        "refuse to start when the run is estimated to need more memory than "
                        "SIZE (bytes, or with K, M, G: 1500M, 2G)"},
    [OPT_DIAGNOSE] = {"--diagnose", NULL, NULL,
                      "after every epoch, per activation the share of dead ReLU units or "
                      "saturated sigmoid/tanh values, per parameter the gradient's and the last "
                      "update's size against the weight's, with warnings; also in the metrics "
                      "CSV (activations need a step compiled with --diagnose: kiln train "
                      "--diagnose, kiln build --diagnose)"},
    [OPT_CURVATURE_EVERY] = {"--curvature-every", "N", "none",
                             "every N steps, the largest eigenvalue of the loss's Hessian on "
                             "that step's batch by power iteration (lambda_max in the epoch "
                             "line and the CSV; needs a step compiled with Hessian-vector "
                             "products: kiln train or kiln build with this option)"},
    [OPT_VERIFY] = {"--verify", NULL, NULL,
                    "a trainer built with --mpi: after every epoch, check that every process "
                    "holds the same parameters (a hash of their bytes)"},
    [OPT_MPI_TIMEOUT] = {"--mpi-timeout", "S", "120",
                         "a trainer built with --mpi: seconds a process waits for the others "
                         "before the run ends with a message"},
    [OPT_QUIET] = {"--quiet", NULL, NULL, "no progress output on stderr"},
    [OPT_COLOR] = {"--color", "WHEN", "auto",
                   "colour 'error:' and 'warning:' on stderr: 'auto' when stderr is a terminal, "
                   "$NO_COLOR is unset or empty and $TERM is not 'dumb'; 'always' (even with "
                   "$NO_COLOR set); 'never'"},
    [OPT_HELP] = {"-h, --help", NULL, NULL, "show this message"},
};
const int rt_ntrainer_options = OPT_COUNT;

void rt_options_help(FILE *f, const char *name) {
  fprintf(f, "usage: %s [options]\n", name);
  for (int i = 0; i < OPT_COUNT; i++) {
    const RtOptionDoc *d = &rt_trainer_options[i];
    char left[64];
    snprintf(left, sizeof left, d->arg ? "%s %s" : "%s", d->name, d->arg);
    rt_help_item(f, 2, left, 22, d->help, d->dflt);
  }
  fprintf(f, "\nexit status:\n");
  for (int i = 0; i < rt_nexit_statuses; i++)
    rt_help_item(f, 2, rt_exit_statuses[i].name, 22, rt_exit_statuses[i].text, NULL);
}

static int opt_error(const char *name, const char *fmt, const char *a, const char *b) {
  char msg[RT_ERR_LEN];
  snprintf(msg, sizeof msg, fmt, a, b);
  rt_color_printf(stderr, "%s: error: %s\n", name, msg);
  return -1;
}

/* Whole-string numbers only: "12abc", "", " 3" and out-of-range values are all refused. */
static int parse_i64(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  if (!(*s >= '0' && *s <= '9'))
    return -1;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v <= 0)
    return -1;
  *out = v;
  return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (!(*s >= '0' && *s <= '9'))
    return -1;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || *end)
    return -1;
  *out = v;
  return 0;
}

/* Edit distance between a and b (insertions, deletions, substitutions), for "did you mean". */
static int distance(const char *a, const char *b) {
  size_t n = strlen(b);
  if (n > 63)
    return 99;
  int row[64];
  for (size_t j = 0; j <= n; j++)
    row[j] = (int)j;
  for (size_t i = 1; a[i - 1]; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= n; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      best = up + 1 < best ? up + 1 : best;
      best = row[j - 1] + 1 < best ? row[j - 1] + 1 : best;
      row[j] = best;
      diag = up;
    }
  }
  return row[n];
}

/* The row of the option spelled word[0..len), or -1. */
static int option_index(const char *word, size_t len) {
  for (int j = 0; j < OPT_COUNT; j++)
    if (rt_option_spelled(rt_trainer_options[j].name, word, len))
      return j;
  return -1;
}

int rt_option_known(const char *arg) { return option_index(arg, strlen(arg)) >= 0; }

int rt_option_takes_value(const char *arg) {
  int k = option_index(arg, strlen(arg));
  return k >= 0 && rt_trainer_options[k].arg != NULL;
}

/* " (did you mean --epochs?)" for the nearest trainer option, or of the nextra others, within 3
 * edits, else " (see --help)". */
const char *rt_option_hint(const char *key, const char *const *extra, int nextra, char *buf,
                           size_t len) {
  const char *best = NULL;
  int d = 4;
  for (int j = 0; j < OPT_COUNT + nextra; j++) {
    /* the last spelling of a row is its long one */
    const char *o = j < OPT_COUNT ? rt_trainer_options[j].name : extra[j - OPT_COUNT];
    const char *comma = strrchr(o, ',');
    if (comma)
      o = comma + 2;
    int k = distance(key, o);
    if (k < d)
      d = k, best = o;
  }
  snprintf(buf, len, best ? " (did you mean %s?)" : " (see --help)", best);
  return buf;
}

int rt_options_parse(RtOptions *o, int argc, char **argv, const char *prog_name) {
  const char *name = prog_name ? prog_name : "trainer";
  o->prog_name = name;
  o->argc = argc;
  o->argv = argv;
  char hint[64];
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strncmp(arg, "--", 2) && strcmp(arg, "-h"))
      return opt_error(name, "unexpected argument '%s' (see --help)", arg, NULL);
    /* --opt VALUE or --opt=VALUE for those that take one */
    const char *val, *eq = strchr(arg, '=');
    size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
    char key[32];
    if (klen >= sizeof key)
      return opt_error(name, "unknown option '%s'%s", arg, rt_option_hint(arg, NULL, 0, hint, sizeof hint));
    memcpy(key, arg, klen);
    key[klen] = 0;
    int k = option_index(key, klen);
    if (k < 0)
      return opt_error(name, "unknown option '%s'%s", key, rt_option_hint(key, NULL, 0, hint, sizeof hint));
    if (!rt_trainer_options[k].arg) {
      if (eq)
        return opt_error(name, "option %s takes no value", key, NULL);
      switch (k) {
      case OPT_HELP: rt_options_help(stdout, name); return 1;
      case OPT_QUIET: o->quiet = 1; break;
      case OPT_DIAGNOSE: o->diagnose = 1; break;
      case OPT_PROFILE: o->profile = 1; break;
      case OPT_VERIFY: o->verify = 1; break;
      }
      continue;
    }
    if (eq)
      val = eq + 1;
    else if (i + 1 < argc)
      val = argv[++i];
    else
      return opt_error(name, "option %s needs a value", key, NULL);
    int64_t n;
    if (!*val)
      return opt_error(name, "option %s needs a non-empty value", key, NULL);
    switch (k) {
    case OPT_DATA: o->data_dir = val; break;
    case OPT_EPOCHS:
      if (parse_i64(val, &n) || n > 1000000000)
        return opt_error(name, "%s: expected a positive number of epochs, got '%s'", key, val);
      o->epochs = (int)n;
      break;
    case OPT_LR: {
      char *end;
      errno = 0;
      double lr = strtod(val, &end);
      if (*end || errno || !isfinite(lr) || lr < 0)
        return opt_error(name, "%s: expected a non-negative learning rate, got '%s'", key, val);
      o->lr = lr;
      break;
    }
    case OPT_SEED:
      if (parse_u64(val, &o->seed))
        return opt_error(name, "%s: expected an unsigned 64-bit seed, got '%s'", key, val);
      o->have_seed = 1;
      break;
    case OPT_SAVE: o->save_path = val; break;
    case OPT_LOAD: o->load_path = val; break;
    case OPT_METRICS: o->metrics_path = val; break;
    case OPT_LIMIT_TRAIN:
    case OPT_LIMIT_TEST:
      if (parse_i64(val, &n))
        return opt_error(name, "%s: expected a positive count, got '%s'", key, val);
      *(k == OPT_LIMIT_TRAIN ? &o->limit_train : &o->limit_test) = n;
      break;
    case OPT_PATIENCE:
      if (parse_i64(val, &n) || n > 1000000000)
        return opt_error(name, "%s: expected a positive number of epochs, got '%s'", key, val);
      o->patience = (int)n;
      break;
    case OPT_THREADS:
      if (parse_i64(val, &n) || n > 256)
        return opt_error(name, "%s: expected a number of threads in 1..256, got '%s'", key, val);
      o->threads = (int)n;
      break;
    case OPT_RESUME: o->resume_path = val; break;
    case OPT_CHECKPOINT_EVERY: {
      char count[32];
      size_t digits = strspn(val, "0123456789");
      const char *unit = val + digits;
      int epochs = !strcmp(unit, "epochs") || !strcmp(unit, "epoch");
      if (digits == 0 || digits >= sizeof count || (*unit && !epochs))
        return opt_error(name, "%s: expected a number of steps (500) or epochs (1epochs), got "
                         "'%s'", key, val);
      memcpy(count, val, digits);
      count[digits] = 0;
      if (parse_i64(count, &n))
        return opt_error(name, "%s: expected a positive count, got '%s'", key, val);
      o->checkpoint_every = n;
      o->checkpoint_epochs = epochs;
      break;
    }
    case OPT_CHECKPOINT_DIR: o->checkpoint_dir = val; break;
    case OPT_KEEP_CHECKPOINTS:
      if (parse_i64(val, &n) || n > 1000000)
        return opt_error(name, "%s: expected a positive count, got '%s'", key, val);
      o->keep_checkpoints = (int)n;
      break;
    case OPT_VALIDATION: {
      char *end;
      errno = 0;
      double v = strtod(val, &end);
      if (*end || errno || !(v > 0) || v > 1e15 || (v > 1 && v != floor(v)) || v == 1)
        return opt_error(name, "%s: expected a number of examples or a fraction between 0 and "
                         "1, got '%s'", key, val);
      o->validation = v;
      break;
    }
    case OPT_MAX_MEMORY: {
      char *end;
      errno = 0;
      double v = strtod(val, &end);
      double unit = !*end ? 1 : !strcmp(end, "K") ? 1024.0 : !strcmp(end, "M") ? 1048576.0
                  : !strcmp(end, "G") ? 1073741824.0 : 0;
      if (errno || end == val || !(v > 0) || unit == 0 || v * unit > 9e18 || v * unit < 1)
        return opt_error(name, "%s: expected a size in bytes, or with K, M or G (2G), got '%s'",
                         key, val);
      o->max_memory = (int64_t)(v * unit);
      break;
    }
    case OPT_NORMALIZE:
    case OPT_AUGMENT: {
      char msg[RT_ERR_LEN];
      if (k == OPT_NORMALIZE ? rt_normalize_parse(val, &o->normalize, msg)
                             : rt_augment_parse(val, &o->augment, msg))
        return opt_error(name, "%s", msg, NULL);
      break;
    }
    case OPT_IMAGES: o->images_dir = val; break;
    case OPT_IMAGES_COUNT:
      if (parse_i64(val, &n) || n > 1000000)
        return opt_error(name, "%s: expected a positive count, got '%s'", key, val);
      o->images_count = n;
      break;
    case OPT_INIT_FROM: o->init_from = val; break;
    case OPT_INIT_MAP: o->init_map = val; break;
    case OPT_CURVATURE_EVERY:
      if (parse_i64(val, &n))
        return opt_error(name, "%s: expected a positive number of steps, got '%s'", key, val);
      o->curvature_every = n;
      break;
    case OPT_PLOT: o->plot_path = val; break;
    case OPT_MPI_TIMEOUT: {
      char *end;
      double s = strtod(val, &end);
      if (*end || end == val || !(s >= 1 && s <= 86400))
        return opt_error(name, "%s: expected seconds from 1 to 86400, got '%s'", key, val);
      o->mpi_timeout = s;
      break;
    }
    case OPT_COLOR:
      if (rt_color_parse(val, &o->color))
        return opt_error(name, "%s: expected auto, always or never, got '%s'", key, val);
      break;
    }
  }
  return 0;
}

/* ---- program description ---- */

int rt_find_tensor(const kiln_program *p, const char *name) {
  for (int i = 0; i < p->ntensors; i++)
    if (!strcmp(p->tensors[i].name, name))
      return i;
  return -1;
}

int rt_find_entry(const kiln_program *p, const char *name) {
  for (int i = 0; i < p->nentries; i++)
    if (p->entries[i].name && !strcmp(p->entries[i].name, name))
      return i;
  return -1;
}

int rt_tensor_in_entry(const kiln_tensor *t, int entry) {
  return !t->entries || (entry >= 0 && entry < KILN_ABI_MAX_ENTRIES && (t->entries >> entry & 1));
}

const char *rt_setting(const kiln_program *p, const char *key) {
  for (int i = 0; i < p->nsettings; i++)
    if (p->settings[i].key && !strcmp(p->settings[i].key, key))
      return p->settings[i].value;
  return NULL;
}

/* A setting's value is a number written in full: "12", "0.5", "1e-3". */
static int is_number(const char *s) {
  char *end;
  if (!s || !*s)
    return 0;
  errno = 0;
  double v = strtod(s, &end);
  return !*end && !errno && isfinite(v);
}

int64_t rt_setting_int(const kiln_program *p, const char *key, int64_t dflt) {
  const char *v = rt_setting(p, key);
  char *end;
  if (!v || !*v)
    return dflt;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  return *end || errno ? dflt : (int64_t)n;
}

uint64_t rt_setting_u64(const kiln_program *p, const char *key, uint64_t dflt) {
  const char *v = rt_setting(p, key);
  char *end;
  if (!v || !(*v >= '0' && *v <= '9'))
    return dflt;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 10);
  return *end || errno ? dflt : (uint64_t)n;
}

int64_t rt_numel(const kiln_tensor *t, int64_t batch) {
  int64_t n = 1;
  for (int i = 0; i < t->rank; i++)
    n *= i == t->batch_axis && batch >= 0 ? batch : t->dims[i];
  return n;
}

void rt_format_dims(char *buf, size_t len, int rank, const int64_t *dims) {
  size_t at = (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < rank && at < len; i++)
    at += (size_t)snprintf(buf + at, len - at, "%s%lld", i ? ", " : "", (long long)dims[i]);
  if (at < len)
    snprintf(buf + at, len - at, "]");
}

int rt_check_program(const kiln_program *p, char *err) {
  if (!p)
    return rt_errf(err, "no program");
  if (p->abi_version != KILN_ABI_VERSION)
    return rt_errf(err, "program uses kiln ABI version %d, this runtime implements version %d",
                   p->abi_version, KILN_ABI_VERSION);
  if (p->batch < 1)
    return rt_errf(err, "program has batch size %lld; it must be at least 1", (long long)p->batch);
  if (p->ntensors < 0 || (p->ntensors && !p->tensors))
    return rt_errf(err, "program has a bad tensor table");
  if (p->nentries < 0 || p->nentries > KILN_ABI_MAX_ENTRIES || (p->nentries && !p->entries))
    return rt_errf(err, "program has a bad entry table (%d entries, at most %d)", p->nentries,
                   KILN_ABI_MAX_ENTRIES);
  for (int i = 0; i < p->nentries; i++) {
    if (!p->entries[i].name || !*p->entries[i].name)
      return rt_errf(err, "entry %d has no name", i);
    for (int j = 0; j < i; j++)
      if (!strcmp(p->entries[j].name, p->entries[i].name))
        return rt_errf(err, "two entries are named '%s'", p->entries[i].name);
  }
  if (p->nsettings < 0 || (p->nsettings && !p->settings))
    return rt_errf(err, "program has a bad settings table");
  for (int i = 0; i < p->nsettings; i++) {
    const kiln_setting *st = &p->settings[i];
    if (!st->key || !*st->key)
      return rt_errf(err, "setting %d has no key", i);
    for (int j = 0; j < i; j++)
      if (!strcmp(p->settings[j].key, st->key))
        return rt_errf(err, "two settings are named '%s'", st->key);
    if (!is_number(st->value))
      return rt_errf(err, "setting '%s' has value '%s', which is not a number", st->key,
                     st->value ? st->value : "(null)");
  }
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (!t->name || !*t->name)
      return rt_errf(err, "tensor %d has no name", i);
    for (int j = 0; j < i; j++)
      if (!strcmp(p->tensors[j].name, t->name))
        return rt_errf(err, "two tensors are named '%s'", t->name);
    if (t->role < KILN_ROLE_PARAM || t->role > KILN_ROLE_GRAD)
      return rt_errf(err, "tensor '%s' has unknown role %d", t->name, t->role);
    if (t->dtype < KILN_F32 || t->dtype > KILN_I32)
      return rt_errf(err, "tensor '%s' has unknown dtype %d", t->name, t->dtype);
    if (t->rank < 0 || t->rank > KILN_ABI_MAX_RANK)
      return rt_errf(err, "tensor '%s' has rank %d (at most %d)", t->name, t->rank,
                     KILN_ABI_MAX_RANK);
    if (t->batch_axis < -1 || t->batch_axis >= (t->rank > 0 ? t->rank : 0))
      return rt_errf(err, "tensor '%s' has batch axis %d but rank %d", t->name, t->batch_axis,
                     t->rank);
    for (int d = 0; d < t->rank; d++)
      if (t->dims[d] < 0)
        return rt_errf(err, "tensor '%s' has a negative dimension", t->name);
    if (t->batch_axis >= 0 && t->dims[t->batch_axis] < p->batch)
      return rt_errf(err, "tensor '%s' has room for %lld examples, the batch is %lld", t->name,
                     (long long)t->dims[t->batch_axis], (long long)p->batch);
    if (t->entries < 0 || (p->nentries < KILN_ABI_MAX_ENTRIES && t->entries >> p->nentries))
      return rt_errf(err, "tensor '%s' belongs to entries 0x%x, but the program has %d", t->name,
                     (unsigned)t->entries, p->nentries);
    if (t->role == KILN_ROLE_INPUT && t->feed && !(t->scale != 0))
      return rt_errf(err, "input '%s' fed from '%s' has scale 0: every value would read as 0",
                     t->name, t->feed);
  }
  /* A model without a loss (imported for evaluation) has no "loss": only training needs it. */
  int loss = rt_find_tensor(p, "loss");
  if (loss >= 0 && p->tensors[loss].role != KILN_ROLE_OUTPUT)
    return rt_errf(err, "program's \"loss\" is not an output");
  return 0;
}

/* ---- the run ---- */

typedef struct Run {
  RtBackend *be;
  const kiln_program *prog;
  const RtOptions *o;
  char err[RT_ERR_LEN];
  double *buf;        /* scratch, room for the largest tensor */
  int64_t buf_n;
  uint64_t seed;
  int train_e, eval_e;  /* entry indices; eval_e is -1 when the program has none */
  RtProgress progress;
  char last_checkpoint[4096]; /* the newest resumable checkpoint of this run, or "" */
  /* The model's metrics (`metric NAME`, eval entry outputs "eval.metric.NAME"). */
  int nmetrics;
  int metric_t[RT_MAX_METRICS];
  const char *metric_name[RT_MAX_METRICS];
  /* Images on their way to an input: their [C, H, W], the training set's per-channel
   * statistics for --normalize auto (pixel units), and room for one example. */
  int64_t chw[3];
  double *pixel_mean, *pixel_std;
  double *norm_mean, *norm_std, *scratch;
  unsigned char *loaded;  /* --init-from: per tensor, whether the file set it (NULL: none did) */
  RtDiag *diag;           /* --diagnose, or NULL */
  RtHvp *hvp;             /* --curvature-every, or NULL */
  double lambda_max;      /* its last measurement (NaN before the first) */
  RtSchedule schedule;
  int lr_t;           /* the hyper-parameter "lr", or -1 */
  double base_lr;     /* --lr, else the model's: what the schedule starts from */
  /* A data-parallel run (o->comm): each step runs grad on this process's share of the batch,
   * sums the gradients over the processes, then runs apply. */
  const RtComm *comm;
  int grad_e, apply_e;
  unsigned char *bucket; /* the gradients on their way to the allreduce, RT_BUCKET_BYTES */
  unsigned char *started; /* per tensor: its sum began during the grad entry (overlap) */
  int overlap_last;       /* the kernel call marked last, or -1 */
  int overlap_failed;     /* a sum could not be started: r->err says why */
  int overlapped;         /* gradients whose sum started during the last grad entry */
  RtOptions local;       /* o as this process uses it (rank > 0: writes nothing, prints nothing) */
} Run;

/* Gradients are summed over the processes in buckets of this many bytes: few collectives of a
 * useful size, whatever the number of parameter tensors. */
#define RT_BUCKET_BYTES ((size_t)4 << 20)

/* Finds the model's metrics among the eval entry's outputs. */
static void find_metrics(Run *r) {
  const kiln_program *p = r->prog;
  static const char prefix[] = "eval.metric.";
  for (int i = 0; i < p->ntensors && r->nmetrics < RT_MAX_METRICS; i++)
    if (p->tensors[i].role == KILN_ROLE_OUTPUT &&
        !strncmp(p->tensors[i].name, prefix, sizeof prefix - 1)) {
      r->metric_t[r->nmetrics] = i;
      r->metric_name[r->nmetrics++] = p->tensors[i].name + sizeof prefix - 1;
    }
}

/* "  test_psnr 21.3024" per metric (fmt: one %s for the set's name, one for the metric's, one
 * %f); a message leaves out the metrics that are NaN (not measured), a CSV row (csv) keeps
 * every column. */
static const char *metric_figures(const Run *r, const char *set, const double *v, const char *fmt,
                                  int csv, char *buf, size_t len) {
  size_t used = 0;
  buf[0] = 0;
  for (int i = 0; i < r->nmetrics && used < len; i++) {
    if (isnan(v[i]) && !csv)
      continue;
    int k = snprintf(buf + used, len - used, fmt, set, r->metric_name[i], v[i]);
    if (k < 0)
      break;
    used += (size_t)k;
  }
  return buf;
}

int rt_init_persistent(RtBackend *be, uint64_t seed, double lr, char *err) {
  const kiln_program *p = be->prog;
  int64_t most = 1;
  for (int i = 0; i < p->ntensors; i++)
    if (rt_numel(&p->tensors[i], p->batch) > most)
      most = rt_numel(&p->tensors[i], p->batch);
  double *buf = malloc((size_t)most * sizeof *buf);
  if (!buf)
    return rt_errf(err, "out of memory");
  int lr_used = 0;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    int64_t n = rt_numel(t, p->batch);
    switch (t->role) {
    case KILN_ROLE_PARAM:
    case KILN_ROLE_STATE:
    case KILN_ROLE_HYPER:
      rt_init_tensor(t, seed, buf, n);
      if (t->role == KILN_ROLE_HYPER && !strcmp(t->name, "lr") && lr >= 0) {
        for (int64_t k = 0; k < n; k++)
          buf[k] = lr;
        lr_used = 1;
      }
      break;
    case KILN_ROLE_OPT:
    case KILN_ROLE_GRAD:
      memset(buf, 0, (size_t)n * sizeof *buf);
      break;
    default:
      continue;
    }
    be->write(be->self, i, buf, n);
  }
  free(buf);
  if (lr >= 0 && !lr_used)
    return rt_errf(err, "--lr given, but model '%s' has no hyper-parameter named \"lr\"",
                   p->model ? p->model : "?");
  return 0;
}

/* The learning rate of epoch `epoch` (from 0), written into "lr" when a schedule changes it;
 * NaN when the program has no "lr". */
static double set_lr(Run *r, int64_t epoch) {
  if (r->lr_t < 0)
    return NAN;
  double lr = rt_schedule_lr(&r->schedule, r->base_lr, epoch);
  if (rt_schedule_active(&r->schedule))
    r->be->write(r->be->self, r->lr_t, &lr, 1);
  return lr;
}

static int run_entry(Run *r, int entry, int64_t batch) {
  char err[RT_ERR_LEN] = "";
  if (r->be->run(r->be->self, entry, batch, err))
    return rt_errf(r->err, "%s", *err ? err : "the step failed");
  return 0;
}

/* The first value of a scalar output. */
static double read_scalar(Run *r, int t, int64_t batch) {
  r->be->read(r->be->self, t, r->buf, rt_numel(&r->prog->tensors[t], batch));
  return r->buf[0];
}

/* The per-channel normalisation of image input t, in its units, into r->norm_mean and
 * r->norm_std; 0 when there is none. */
static int input_normalization(Run *r, const kiln_tensor *t) {
  const RtNormalize *n = &r->o->normalize;
  if (n->mode == RT_NORMALIZE_OFF)
    return 0;
  for (int64_t c = 0; c < r->chw[0]; c++) {
    int from = n->channels == 1 ? 0 : (int)c;
    r->norm_mean[c] = n->mode == RT_NORMALIZE_AUTO ? r->pixel_mean[c] * t->scale : n->mean[from];
    r->norm_std[c] = n->mode == RT_NORMALIZE_AUTO ? r->pixel_std[c] * fabs(t->scale)
                                                   : n->std[from];
  }
  return 1;
}

/* Writes examples order[first..first+b) (or first..first+b when order is NULL) of ds into every
 * fed input read by `entry`: each value is the field's value times the input's scale; images
 * are augmented when epoch > 0 (training) and normalised. */
static void write_batch(Run *r, int entry, const RtDataset *ds, const int64_t *order,
                        int64_t first, int64_t b, int epoch) {
  const kiln_program *p = r->prog;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    const RtIdx *f = t->role == KILN_ROLE_INPUT ? rt_dataset_field(ds, t->feed) : NULL;
    if (!f || !rt_tensor_in_entry(t, entry))
      continue;
    int64_t item = f->item;
    int images = f == &ds->images, augment = images && epoch > 0 && r->o->augment.on;
    int normalize = images && input_normalization(r, t);
    for (int64_t k = 0; k < b; k++) {
      int64_t example = order ? order[first + k] : first + k;
      const uint8_t *src = f->data + example * item;
      double *dst = r->buf + k * item;
      if (augment || normalize) {
        RtAugDraw draw;
        if (augment)
          rt_augment_draw(&r->o->augment, r->seed, epoch, example, &draw);
        rt_example_values(src, r->chw, augment ? &draw : NULL, t->scale,
                          normalize ? r->norm_mean : NULL, r->norm_std, dst, r->scratch);
        continue;
      }
      for (int64_t j = 0; j < item; j++)
        dst[j] = src[j] * t->scale;
    }
    r->be->write(r->be->self, i, r->buf, rt_numel(t, b));
  }
}

/* Every fed input must name a field the dataset has and hold whole examples along axis 0, of
 * the size the files provide. */
static int check_data_inputs(Run *r, const RtDataset *ds, const char *dir) {
  const kiln_program *p = r->prog;
  char want[128], got[128];
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role != KILN_ROLE_INPUT || !t->feed)
      continue;
    const RtIdx *f = rt_dataset_field(ds, t->feed);
    if (!f)
      return rt_errf(r->err, "input '%s' is fed from '%s', which the dataset in %s does not "
                     "have (it has images and labels)", t->name, t->feed, dir);
    if (t->batch_axis != 0)
      return rt_errf(r->err, "data input '%s' must have the batch as its first axis", t->name);
    rt_format_dims(want, sizeof want, t->rank, t->dims);
    if (f == &ds->labels && rt_numel(t, 1) != 1)
      return rt_errf(r->err, "label input '%s' has shape %s: expected one label per example",
                     t->name, want);
    if (rt_numel(t, 1) != f->item) {
      rt_format_dims(got, sizeof got, f->rank - 1, f->dims + 1);
      return rt_errf(r->err, "input '%s' has shape %s (%lld values per example), but the %s "
                     "in %s are %s (%lld values)", t->name, want, (long long)rt_numel(t, 1),
                     t->feed, dir, got, (long long)f->item);
    }
  }
  return 0;
}

/* Loss (example-weighted mean of eval.loss), accuracy (argmax over the last axis of
 * eval.output against the label) and each metric (example-weighted mean, into metrics[]) over
 * examples idx[0..n) of a dataset (the first n when idx is NULL), in order; `what` names them in
 * messages. NaN where the program does not provide what is needed. */
static int evaluate(Run *r, const RtDataset *test, const int64_t *idx, int64_t n,
                    const char *what, double *loss, double *acc, double *metrics) {
  const kiln_program *p = r->prog;
  int tl = rt_find_tensor(p, "eval.loss"), to = rt_find_tensor(p, "eval.output");
  int have_labels = 0;
  for (int i = 0; i < p->ntensors; i++)
    if (p->tensors[i].role == KILN_ROLE_INPUT && p->tensors[i].feed &&
        !strcmp(p->tensors[i].feed, "labels"))
      have_labels = 1;
  const kiln_tensor *out = to >= 0 ? &p->tensors[to] : NULL;
  int64_t classes = out && out->rank >= 2 && out->batch_axis == 0 ? out->dims[out->rank - 1] : 0;
  int can_score = have_labels && classes > 0 && rt_numel(out, 1) == classes;
  *loss = *acc = NAN;
  for (int m = 0; m < RT_MAX_METRICS; m++)
    metrics[m] = NAN;
  if ((tl < 0 && !can_score && !r->nmetrics) || n <= 0 || r->eval_e < 0)
    return 0;
  double loss_sum = 0, metric_sum[RT_MAX_METRICS] = {0};
  int64_t correct = 0;
  /* In a data-parallel run each process evaluates its own part; the sums are added up. */
  int64_t from = r->comm ? n * r->comm->rank / r->comm->size : 0;
  int64_t until = r->comm ? n * (r->comm->rank + 1) / r->comm->size : n;
  for (int64_t first = from; first < until; first += p->batch) {
    int64_t b = until - first < p->batch ? until - first : p->batch;
    write_batch(r, r->eval_e, test, idx, first, b, 0);
    if (run_entry(r, r->eval_e, b))
      return -1;
    if (tl >= 0) {
      double l = read_scalar(r, tl, b);
      if (isnan(l))
        return rt_errf(r->err, "%s examples %lld to %lld: the loss is NaN (the parameters "
                       "hold values the model's ops cannot take)", what, (long long)first,
                       (long long)(first + b - 1));
      loss_sum += l * (double)b;
    }
    for (int m = 0; m < r->nmetrics; m++)
      metric_sum[m] += read_scalar(r, r->metric_t[m], b) * (double)b;
    if (can_score) {
      r->be->read(r->be->self, to, r->buf, rt_numel(out, b));
      for (int64_t k = 0; k < b; k++) {
        const double *row = r->buf + k * classes;
        int64_t best = 0;
        for (int64_t c = 1; c < classes; c++)
          if (row[c] > row[best])
            best = c; /* ties go to the first, as torch.argmax */
        correct += best == test->labels.data[idx ? idx[first + k] : first + k];
      }
    }
  }
  if (r->comm) {
    double sums[2 + RT_MAX_METRICS] = {loss_sum, (double)correct};
    memcpy(sums + 2, metric_sum, sizeof metric_sum);
    if (r->comm->allreduce(r->comm->self, sums, 2 + r->nmetrics, KILN_F64, r->err))
      return -1;
    loss_sum = sums[0];
    correct = (int64_t)sums[1];
    memcpy(metric_sum, sums + 2, sizeof metric_sum);
  }
  if (tl >= 0)
    *loss = loss_sum / (double)n;
  if (can_score)
    *acc = (double)correct / (double)n;
  for (int m = 0; m < r->nmetrics; m++)
    metrics[m] = metric_sum[m] / (double)n;
  return 0;
}

/* A directory the run writes into (option names it in messages): made when missing, and
 * checked to be a writable directory before anything is computed. */
static int output_dir(Run *r, const char *dir, const char *option) {
  struct stat st;
  if (mkdir(dir, 0777) && errno != EEXIST)
    return rt_errf(r->err, "%s %s: cannot create it: %s", option, dir, strerror(errno));
  if (stat(dir, &st) || !S_ISDIR(st.st_mode))
    return rt_errf(r->err, "%s %s: not a directory", option, dir);
  if (access(dir, W_OK | X_OK))
    return rt_errf(r->err, "%s %s: cannot write in it: %s", option, dir, strerror(errno));
  return 0;
}

/* init = lsuv (Mishkin and Matas; seed 002, 5.1.7): the weights start orthogonal; then, from the
 * first layer to the last, the layer's output on one training batch (the eval entry's
 * "lsuv.<weight>") is measured and its weight scaled by 1/sqrt(variance) until the variance is
 * within 0.1 of 1, at most 10 times. A layer whose output does not vary is left as it is. */
static int lsuv_init(Run *r, const RtDataset *train, const int64_t *idx, int64_t n) {
  const kiln_program *p = r->prog;
  int64_t b = n < p->batch ? n : p->batch;
  if (b < 1 || r->eval_e < 0)
    return 0;
  write_batch(r, r->eval_e, train, idx, 0, b, 0);
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role != KILN_ROLE_OUTPUT || strncmp(t->name, "lsuv.", 5))
      continue;
    int w = rt_find_tensor(p, t->name + 5);
    if (w < 0)
      return rt_errf(r->err, "init = lsuv: no weight '%s' for the layer output '%s'",
                     t->name + 5, t->name);
    if (r->loaded && r->loaded[w])
      continue; /* --init-from set it: a pre-trained layer keeps its scale */
    int64_t ny = rt_numel(t, b), nw = rt_numel(&p->tensors[w], p->batch);
    double var = NAN;
    int tries = 0;
    for (;; tries++) {
      if (run_entry(r, r->eval_e, b))
        return -1;
      r->be->read(r->be->self, i, r->buf, ny);
      double mean = 0, sq = 0;
      for (int64_t k = 0; k < ny; k++)
        mean += r->buf[k];
      mean /= (double)ny;
      for (int64_t k = 0; k < ny; k++)
        sq += (r->buf[k] - mean) * (r->buf[k] - mean);
      var = sq / (double)ny;
      if (!(var > 0) || !isfinite(var) || fabs(var - 1) < 0.1 || tries == 10)
        break;
      r->be->read(r->be->self, w, r->buf, nw);
      for (int64_t k = 0; k < nw; k++)
        r->buf[k] /= sqrt(var);
      r->be->write(r->be->self, w, r->buf, nw);
    }
    if (!r->o->quiet)
      fprintf(stderr, "lsuv: %s output variance %.4f after %d scaling%s\n", t->name + 5, var,
              tries, tries == 1 ? "" : "s");
  }
  return 0;
}

/* --images: the model must have an image-shaped output ([N, H, W] or [N, C, H, W]) and the
 * directory must be writable; checked before training, so a long run cannot end in this error. */
static int prepare_images_dir(Run *r) {
  const kiln_program *p = r->prog;
  const char *dir = r->o->images_dir;
  int to = rt_find_tensor(p, "eval.output");
  if (to < 0 || r->eval_e < 0)
    return rt_errf(r->err, "--images writes the model's output, but the model declares none "
                   "(an 'output NAME' statement)");
  const kiln_tensor *t = &p->tensors[to];
  if (t->batch_axis != 0 || (t->rank != 3 && t->rank != 4)) {
    char dims[128];
    rt_format_dims(dims, sizeof dims, t->rank, t->dims);
    return rt_errf(r->err, "--images writes pictures of shape [N, H, W] or [N, C, H, W], but the "
                   "model's output has shape %s", dims);
  }
  return output_dir(r, dir, "--images");
}

/* The evaluation-mode output on the first examples of the test set, one PGM per example and
 * channel: DIR/test00000_c0.pgm. Returns the number of files written, or -1. */
static int64_t write_images(Run *r, const RtDataset *test, int64_t ntest) {
  const kiln_program *p = r->prog;
  const kiln_tensor *t = &p->tensors[rt_find_tensor(p, "eval.output")];
  int64_t n = r->o->images_count < ntest ? r->o->images_count : ntest, files = 0;
  int64_t h = t->dims[t->rank - 2], w = t->dims[t->rank - 1], c = t->rank == 4 ? t->dims[1] : 1;
  for (int64_t first = 0; first < n; first += p->batch) {
    int64_t b = n - first < p->batch ? n - first : p->batch;
    write_batch(r, r->eval_e, test, NULL, first, b, 0);
    if (run_entry(r, r->eval_e, b))
      return -1;
    r->be->read(r->be->self, rt_find_tensor(p, "eval.output"), r->buf, rt_numel(t, b));
    for (int64_t k = 0; k < b; k++)
      for (int64_t ch = 0; ch < c; ch++) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/test%05lld_c%lld.pgm", r->o->images_dir,
                             (long long)(first + k), (long long)ch) >= sizeof path)
          return rt_errf(r->err, "--images %s: the path is too long", r->o->images_dir);
        if (rt_write_pgm(path, r->buf + (k * c + ch) * h * w, h, w, r->err))
          return -1;
        files++;
      }
  }
  return files;
}

/* What to do about a step that went wrong: resume from the last good checkpoint under the
 * reference runtime, which stops at the first op whose result is not finite and names its line. */
static void fault_hint(Run *r, char *hint, size_t len) {
  if (*r->last_checkpoint)
    snprintf(hint, len, "; last good checkpoint: %s (to name the op that produced it: kiln train "
             "MODEL.kiln --runtime reference --resume %s, with this run's options)",
             r->last_checkpoint, r->last_checkpoint);
  else
    snprintf(hint, len, "; no checkpoint was written (with --checkpoint-every N, kiln train "
             "MODEL.kiln --runtime reference --resume CHECKPOINT names the op that produced it)");
}

/* After every step: a loss that is not finite ends the run (labels were checked when the data
 * was loaded, so it is the arithmetic), and so does a running statistic that is not; batch norm's
 * unbiased variance n/(n - 1) is NaN for a batch with one value per channel, which PyTorch
 * refuses too ("Expected more than 1 value per channel when training"). */
static int check_step(Run *r, int epoch, int64_t step, int64_t b, int loss_t) {
  const kiln_program *p = r->prog;
  char hint[9000];
  double loss = read_scalar(r, loss_t, b);
  if (!isfinite(loss)) {
    fault_hint(r, hint, sizeof hint);
    return rt_errf(r->err, "epoch %d, step %lld: the training loss is %s (the run diverged, or "
                   "an op such as log, sqrt, exp or a division left its domain)%s", epoch,
                   (long long)step, isnan(loss) ? "NaN" : "infinite", hint);
  }
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role != KILN_ROLE_STATE)
      continue;
    int64_t n = rt_numel(t, p->batch);
    r->be->read(r->be->self, i, r->buf, n);
    for (int64_t k = 0; k < n; k++)
      if (!isfinite(r->buf[k])) {
        size_t len = strlen(t->name);
        if (b == 1 && len >= 12 && !strcmp(t->name + len - 12, ".running_var"))
          return rt_errf(r->err, "epoch %d, step %lld: a batch of 1 example has no unbiased "
                         "variance for '%s' (batchnorm needs more than 1 value per channel "
                         "when training): choose --limit-train or the batch so that no batch "
                         "holds a single example", epoch, (long long)step, t->name);
        fault_hint(r, hint, sizeof hint);
        return rt_errf(r->err, "epoch %d, step %lld: '%s' became %s at element %lld%s", epoch,
                       (long long)step, t->name, isnan(r->buf[k]) ? "NaN" : "infinite",
                       (long long)k, hint);
      }
  }
  return 0;
}

/* The number of classes the model scores (the last axis of eval.output), or 0. */
static int64_t model_classes(const kiln_program *p) {
  int to = rt_find_tensor(p, "eval.output");
  const kiln_tensor *out = to >= 0 ? &p->tensors[to] : NULL;
  return out && out->rank >= 2 && out->batch_axis == 0 ? out->dims[out->rank - 1] : 0;
}

/* Every label of the examples used names one of the model's classes: checked as the data is
 * loaded, so a bad file is named with the example rather than found as a NaN loss later. */
static int check_labels(Run *r, const RtDataset *ds, int64_t n) {
  int64_t classes = model_classes(r->prog);
  if (classes <= 0)
    return 0;
  for (int64_t i = 0; i < n && i < ds->labels.count; i++)
    if (ds->labels.data[i] >= classes)
      return rt_errf(r->err, "%s: the label of example %lld is %d, outside the model's %lld "
                     "classes (0 to %lld)", ds->labels_path, (long long)i, ds->labels.data[i],
                     (long long)classes, (long long)classes - 1);
  return 0;
}

/* Early stopping keeps a copy of every saved tensor (parameters, running statistics) from the
 * epoch with the best test loss, and writes it back when training stops. */
typedef struct Best {
  double *vals;           /* the saved tensors, one after the other, in table order */
  int epoch;              /* 0: none yet */
  double test_loss, train_loss, acc;
} Best;

static int best_copy(Run *r, Best *b, int restore) {
  const kiln_program *p = r->prog;
  int64_t total = 0;
  for (int i = 0; i < p->ntensors; i++)
    if (rt_saved(&p->tensors[i]))
      total += rt_numel(&p->tensors[i], -1);
  if (!b->vals && !(b->vals = malloc((size_t)(total > 0 ? total : 1) * sizeof *b->vals)))
    return rt_errf(r->err, "out of memory");
  double *at = b->vals;
  for (int i = 0; i < p->ntensors; i++) {
    if (!rt_saved(&p->tensors[i]))
      continue;
    int64_t n = rt_numel(&p->tensors[i], -1);
    if (restore)
      r->be->write(r->be->self, i, at, n);
    else
      r->be->read(r->be->self, i, at, n);
    at += n;
  }
  return 0;
}

/* Early stopping's default from the model: epochs without a better test loss, 0 = off. */
static int model_patience(const kiln_program *p) {
  int64_t n = rt_setting_int(p, "patience", 0);
  return n > 0 && n <= 1000000000 ? (int)n : 0;
}

/* ---- stopping and checkpoints ---- */

/* The signal that asked the run to stop (SIGINT or SIGTERM), or 0; only the handler sets it. */
static volatile sig_atomic_t stop_signal;

int rt_stop_requested(void) { return stop_signal; }

static void on_stop_signal(int sig) {
  stop_signal = sig;
  /* A second one ends the process the usual way, for a user who cannot wait for the step. */
  signal(sig, SIG_DFL);
}

typedef struct Signals {
  struct sigaction old_int, old_term;
} Signals;

static void signals_catch(Signals *s) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  stop_signal = 0;
  sigaction(SIGINT, &sa, &s->old_int);
  sigaction(SIGTERM, &sa, &s->old_term);
}

static void signals_restore(const Signals *s) {
  sigaction(SIGINT, &s->old_int, NULL);
  sigaction(SIGTERM, &s->old_term, NULL);
}

/* The directory part of path ("." for a bare name). */
static void dir_of(const char *path, char *dir, size_t len) {
  const char *slash = strrchr(path, '/');
  if (!slash)
    snprintf(dir, len, ".");
  else if (slash == path)
    snprintf(dir, len, "/");
  else
    snprintf(dir, len, "%.*s", (int)(slash - path), path);
}

/* Output paths are checked before training starts, not after hours of it: the directory exists
 * and takes new files, and the path is not a directory. */
static int check_output(Run *r, const char *path, const char *option) {
  struct stat st;
  char dir[4096];
  if (!path)
    return 0;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return rt_errf(r->err, "%s %s: is a directory", option, path);
  dir_of(path, dir, sizeof dir);
  if (stat(dir, &st) || !S_ISDIR(st.st_mode))
    return rt_errf(r->err, "%s %s: the directory %s does not exist", option, path, dir);
  if (access(dir, W_OK | X_OK))
    return rt_errf(r->err, "%s %s: cannot write in %s: %s", option, path, dir, strerror(errno));
  return 0;
}

/* Whether name is one of the checkpoints this driver writes (ckpt-....safetensors), or with
 * temp set, a temporary one of them a killed run left behind (.ckpt-....tmp-XXXXXX). */
static int checkpoint_name(const char *name, int temp) {
  size_t n = strlen(name);
  if (temp)
    return !strncmp(name, ".ckpt-", 6) && strstr(name, ".safetensors.tmp-") != NULL;
  return !strncmp(name, "ckpt-", 5) && n > 17 && !strcmp(name + n - 12, ".safetensors");
}

/* Creates the checkpoint directory if needed and removes what a killed run left half-written. */
static int prepare_checkpoint_dir(Run *r) {
  const char *dir = r->o->checkpoint_dir;
  if (output_dir(r, dir, "--checkpoint-dir"))
    return -1;
  DIR *d = opendir(dir);
  struct dirent *e;
  char path[4096];
  while (d && (e = readdir(d)))
    if (checkpoint_name(e->d_name, 1) &&
        (size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < sizeof path)
      unlink(path);
  if (d)
    closedir(d);
  return 0;
}

typedef struct Aged {
  char name[256];
  struct timespec mtime;
} Aged;

static int newest_first(const void *a, const void *b) {
  const Aged *x = a, *y = b;
  if (x->mtime.tv_sec != y->mtime.tv_sec)
    return x->mtime.tv_sec < y->mtime.tv_sec ? 1 : -1;
  if (x->mtime.tv_nsec != y->mtime.tv_nsec)
    return x->mtime.tv_nsec < y->mtime.tv_nsec ? 1 : -1;
  return -strcmp(x->name, y->name);
}

/* Keeps the newest --keep-checkpoints checkpoints in the directory (by time written, so a run
 * resumed from an older one keeps its own). */
static void prune_checkpoints(Run *r) {
  const char *dir = r->o->checkpoint_dir;
  DIR *d = opendir(dir);
  if (!d)
    return;
  Aged *all = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  char path[4096];
  struct stat st;
  while ((e = readdir(d))) {
    if (!checkpoint_name(e->d_name, 0) || strlen(e->d_name) >= sizeof all->name ||
        (size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path ||
        stat(path, &st))
      continue;
    if (n == cap) {
      Aged *more = realloc(all, (cap = cap ? 2 * cap : 16) * sizeof *all);
      if (!more)
        break;
      all = more;
    }
    snprintf(all[n].name, sizeof all[n].name, "%s", e->d_name);
    all[n++].mtime = st.st_mtim;
  }
  closedir(d);
  qsort(all, n, sizeof *all, newest_first);
  for (size_t k = (size_t)r->o->keep_checkpoints; k < n; k++)
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, all[k].name) < sizeof path)
      unlink(path);
  free(all);
}

/* Writes a resumable checkpoint for position rs into the checkpoint directory; its path goes to
 * path. */
static int write_checkpoint(Run *r, const RtResume *rs, char *path, size_t len) {
  if (r->comm && r->comm->rank > 0) { /* every process holds the same: rank 0 writes it */
    snprintf(path, len, "(written by rank 0)");
    return 0;
  }
  if (prepare_checkpoint_dir(r))
    return -1;
  if ((size_t)snprintf(path, len, "%s/ckpt-e%04d-s%06" PRId64 ".safetensors",
                       r->o->checkpoint_dir, rs->epoch, rs->step) >= len)
    return rt_errf(r->err, "--checkpoint-dir %s: path too long", r->o->checkpoint_dir);
  if (rt_write_checkpoint(r->be, path, rs, r->err))
    return -1;
  snprintf(r->last_checkpoint, sizeof r->last_checkpoint, "%s", path);
  prune_checkpoints(r);
  return 0;
}

/* After a stop signal: the checkpoint of position rs, and how to go on. The exit code is the
 * shell's for a death by that signal (130 for SIGINT, 143 for SIGTERM). */
static int stop_now(Run *r, const RtResume *rs, const char *where) {
  char path[4096];
  int sig = stop_signal ? stop_signal : SIGTERM; /* a data-parallel run stops with its peers */
  if (r->comm && r->comm->rank > 0)
    return 128 + sig; /* rank 0 writes the checkpoint and says how to go on */
  const char *name = r->o->prog_name ? r->o->prog_name : "trainer";
  if (!r->o->quiet)
    rt_progress_done(&r->progress);
  if (write_checkpoint(r, rs, path, sizeof path)) {
    rt_color_printf(stderr, "%s: error: stopped by %s at %s, and the checkpoint could not be written: "
            "%s\n", name, sig == SIGINT ? "SIGINT" : "SIGTERM", where, r->err);
    return 128 + sig;
  }
  fprintf(stderr, "%s: stopped by %s at %s; checkpoint %s\n", name,
          sig == SIGINT ? "SIGINT" : "SIGTERM", where, path);
  fprintf(stderr, "%s: to continue:", name);
  for (int i = 0; i < r->o->argc; i++) {
    const char *a = r->o->argv[i];
    if (!strcmp(a, "--resume")) {
      i++;
      continue;
    }
    if (!strncmp(a, "--resume=", 9))
      continue;
    int plain = *a && strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789-_./=:,+@%") == strlen(a);
    fprintf(stderr, plain ? " %s" : " '%s'", a);
  }
  fprintf(stderr, " --resume %s\n", path);
  return 128 + sig;
}

/* The options that shape a run's course: a checkpoint resumes only a run that has the same. */
static void run_options(Run *r, int64_t ntrain, int64_t nval, int64_t ntest, int patience,
                        RtResume *rs) {
  char lr[40] = "model";
  if (r->o->lr >= 0)
    snprintf(lr, sizeof lr, "%a", r->o->lr);
  snprintf(rs->options, sizeof rs->options,
           "seed %" PRIu64 " lr %s train %" PRId64 " validation %" PRId64 " test %" PRId64
           " patience %d", r->seed, lr, ntrain, nval, ntest, patience);
  /* Only when set, so that the options of a run without them read as they always have. */
  char text[900];
  size_t at = strlen(rs->options);
  if (r->o->normalize.mode != RT_NORMALIZE_OFF) {
    rt_normalize_format(&r->o->normalize, text, sizeof text);
    at += (size_t)snprintf(rs->options + at, sizeof rs->options - at, " normalize %s", text);
  }
  if (r->o->augment.on && at < sizeof rs->options) {
    rt_augment_format(&r->o->augment, text, sizeof text);
    snprintf(rs->options + at, sizeof rs->options - at, " augment %s", text);
  }
}

/* Which of n training examples are held out: a seeded choice of nval of them. fit gets the
 * n - nval others, then the held-out ones, each part in increasing order (evaluation walks the
 * validation split in order, as it walks the test set). */
static int split_validation(uint64_t seed, int64_t n, int64_t nval, int64_t *fit) {
  unsigned char *held = calloc((size_t)n + 1, 1);
  if (!held)
    return -1;
  RtRng rng;
  rt_rng_seed(&rng, rt_hash_name(seed, "kiln.validation"));
  for (int64_t i = 0; i < n; i++)
    fit[i] = i;
  rt_shuffle(&rng, fit, n);
  for (int64_t i = 0; i < nval; i++)
    held[fit[i]] = 1;
  int64_t a = 0, b = n - nval;
  for (int64_t i = 0; i < n; i++)
    fit[held[i] ? b++ : a++] = i;
  free(held);
  return 0;
}

/* Whether a checkpoint is due after global step `global` (counting from 1), or after epoch
 * `epoch` when at_epoch_end. */
static int checkpoint_due(const RtOptions *o, int64_t global, int epoch, int at_epoch_end) {
  if (o->checkpoint_every <= 0 || o->checkpoint_epochs != at_epoch_end)
    return 0;
  return (at_epoch_end ? epoch : global) % o->checkpoint_every == 0;
}

/* A test figure in fmt, or "" for one the run does not have (NaN): a model without labels has
 * no accuracy, an empty test set neither figure. (A test loss that is NaN stops the run.) */
static const char *figure(double v, const char *fmt, char *buf, size_t len) {
  if (isnan(v))
    return "";
  snprintf(buf, len, fmt, v);
  return buf;
}

/* "123.4 MiB": in the units --max-memory's M means. */
static const char *megabytes(double bytes, char *buf, size_t len) {
  snprintf(buf, len, "%.1f MiB", bytes / 1048576.0);
  return buf;
}

/* Before anything large is allocated or read: what the run will hold in memory (the step's
 * arena, the examples used, the driver's buffers), reported, and refused above --max-memory.
 * The data's size comes from the IDX headers alone (ntrain, ntest: the examples used). */
static int memory_plan(Run *r, int64_t ntrain, int64_t ntest, int64_t item_bytes) {
  const kiln_program *p = r->prog;
  double arena = (double)(p->arena_bytes > 0 ? p->arena_bytes : 0);
  double data = (double)(ntrain + ntest) * (double)(item_bytes + 1 + 3 * sizeof(int64_t));
  /* The batch buffer; a checkpoint's values while it is written; early stopping's copy. */
  double driver = (double)r->buf_n * sizeof(double);
  int patience = r->o->patience > 0 || model_patience(p) > 0;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    double bytes = (double)rt_numel(t, p->batch) * sizeof(double);
    if (rt_saved(t) || t->role == KILN_ROLE_OPT || t->role == KILN_ROLE_HYPER)
      driver += bytes;
    if (rt_saved(t) && patience)
      driver += bytes;
  }
  double total = arena + data + driver;
  char a[32], b[32], c[32], t[32], m[32];
  if (r->o->max_memory > 0 && total > (double)r->o->max_memory)
    return rt_errf(r->err, "this run needs about %s (the step's arena %s, the data %s, the "
                   "trainer's buffers %s), more than --max-memory %s", megabytes(total, t, 32),
                   megabytes(arena, a, 32), megabytes(data, b, 32), megabytes(driver, c, 32),
                   megabytes((double)r->o->max_memory, m, 32));
  if (!r->o->quiet)
    fprintf(stderr, "memory: at most about %s (the step's arena %s, the data %s, the trainer's "
            "buffers %s)\n", megabytes(total, t, 32), megabytes(arena, a, 32),
            megabytes(data, b, 32), megabytes(driver, c, 32));
  return 0;
}

/* What the data set must fit: the shape of the first input fed from images, and the classes. */
static void data_want(Run *r, RtDataWant *want) {
  const kiln_program *p = r->prog;
  memset(want, 0, sizeof *want);
  want->classes = model_classes(p);
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role == KILN_ROLE_INPUT && t->feed && !strcmp(t->feed, "images") &&
        t->batch_axis == 0 && t->rank >= 1) {
      want->input = t->name;
      want->rank = t->rank - 1;
      memcpy(want->dims, t->dims + 1, (size_t)want->rank * sizeof *want->dims);
      return;
    }
  }
}

/* The images' geometry, the buffers normalisation and augmentation use, and for --normalize
 * auto the statistics of the examples trained on (fit[0..nfit): not the validation split),
 * printed in --normalize's syntax so that another run can reuse them. */
static int prepare_images(Run *r, const RtDataset *train, const int64_t *fit, int64_t nfit) {
  const RtOptions *o = r->o;
  rt_image_geometry(&train->images, r->chw);
  int64_t C = r->chw[0];
  if (o->normalize.mode == RT_NORMALIZE_OFF && !o->augment.on)
    return 0;
  if (o->normalize.mode == RT_NORMALIZE_GIVEN && o->normalize.channels != 1 &&
      o->normalize.channels != C)
    return rt_errf(r->err, "--normalize gives %d channels, but the images in %s have %lld",
                   o->normalize.channels, o->data_dir, (long long)C);
  r->pixel_mean = malloc((size_t)(4 * C) * sizeof(double));
  r->scratch = malloc((size_t)(train->images.item > 0 ? train->images.item : 1) * sizeof(double));
  if (!r->pixel_mean || !r->scratch)
    return rt_errf(r->err, "out of memory");
  r->pixel_std = r->pixel_mean + C;
  r->norm_mean = r->pixel_mean + 2 * C;
  r->norm_std = r->pixel_mean + 3 * C;
  if (o->normalize.mode != RT_NORMALIZE_AUTO)
    return 0;
  if (rt_channel_stats(&train->images, fit, nfit, r->pixel_mean, r->pixel_std))
    return rt_errf(r->err, "--normalize auto: the training images have no pixels");
  const kiln_tensor *input = NULL;
  for (int i = 0; i < r->prog->ntensors && !input; i++)
    if (r->prog->tensors[i].role == KILN_ROLE_INPUT && r->prog->tensors[i].feed &&
        !strcmp(r->prog->tensors[i].feed, "images"))
      input = &r->prog->tensors[i];
  for (int64_t c = 0; c < C; c++)
    if (!(r->pixel_std[c] > 0))
      return rt_errf(r->err, "--normalize auto: channel %lld of the %lld training images is "
                     "constant (standard deviation 0): give --normalize MEAN,STD", (long long)c,
                     (long long)nfit);
  if (!o->quiet && input) {
    input_normalization(r, input);
    fprintf(stderr, "normalize: the mean and standard deviation per channel of the %lld training "
            "examples, in the units of input '%s': --normalize ", (long long)nfit, input->name);
    /* Quoted for a shell when it holds a ';'. */
    fprintf(stderr, "%s", C > 1 ? "'" : "");
    for (int64_t c = 0; c < C; c++)
      fprintf(stderr, "%s%.6g,%.6g", c ? ";" : "", r->norm_mean[c], r->norm_std[c]);
    fprintf(stderr, "%s\n", C > 1 ? "'" : "");
  }
  return 0;
}

/* ---- data-parallel steps ---- */

/* Every gradient ("grad.<p>") not summed yet (done[i] == 0) summed over the processes: packed
 * into buckets of RT_BUCKET_BYTES, each summed by one allreduce, unpacked. */
static int allreduce_gradients(Run *r, const unsigned char *done) {
  const kiln_program *p = r->prog;
  const RtComm *c = r->comm;
  size_t used = 0;
  int dtype = -1, first = 0;
  for (int i = 0; i <= p->ntensors; i++) {
    const kiln_tensor *t = i < p->ntensors ? &p->tensors[i] : NULL;
    if (t && (t->role != KILN_ROLE_GRAD || done[i]))
      continue;
    size_t size = t ? (t->dtype == KILN_F64 ? 8 : 4) : 0;
    size_t bytes = t ? (size_t)rt_numel(t, p->batch) * size : 0;
    /* flush the bucket when it is full, the type changes, or at the end */
    if (used && (!t || used + bytes > RT_BUCKET_BYTES || t->dtype != dtype)) {
      if (c->allreduce(c->self, r->bucket, (int64_t)(used / (dtype == KILN_F64 ? 8 : 4)), dtype,
                       r->err))
        return -1;
      size_t at = 0;
      for (int k = first; k < i; k++) {
        const kiln_tensor *u = &p->tensors[k];
        if (u->role != KILN_ROLE_GRAD || done[k])
          continue;
        size_t ub = (size_t)rt_numel(u, p->batch) * (u->dtype == KILN_F64 ? 8 : 4);
        memcpy(r->be->tensor_data(r->be->self, k), r->bucket + at, ub);
        at += ub;
      }
      used = 0;
    }
    if (!t)
      break;
    if (bytes > RT_BUCKET_BYTES) { /* a large gradient is summed where it lies */
      if (c->allreduce(c->self, r->be->tensor_data(r->be->self, i),
                       rt_numel(t, p->batch), t->dtype, r->err))
        return -1;
      first = i + 1;
      continue;
    }
    if (!used)
      first = i, dtype = t->dtype;
    memcpy(r->bucket + used, r->be->tensor_data(r->be->self, i), bytes);
    used += bytes;
  }
  return 0;
}

/* Gradients at least this large start their sum while the backward pass goes on; smaller ones
 * wait for the buckets, where they cost one collective together. */
#define RT_OVERLAP_BYTES ((size_t)64 << 10)

/* Between the grad entry's kernels (the backend's marks): the gradient the kernel just run
 * completed (kiln_site.finishes) starts its sum over the processes, and the sums under way
 * progress, so communication overlaps the backward pass of earlier layers. */
static void overlap_mark(void *ctx, int site) {
  Run *r = ctx;
  const kiln_program *p = r->prog;
  int last = r->overlap_last;
  r->overlap_last = site;
  if (last >= 0 && last < p->nsites && p->sites[last].entry == r->grad_e && !r->overlap_failed) {
    int t = p->sites[last].finishes;
    if (t >= 0 && t < p->ntensors && p->tensors[t].role == KILN_ROLE_GRAD && !r->started[t]) {
      const kiln_tensor *k = &p->tensors[t];
      int64_t n = rt_numel(k, p->batch);
      if ((size_t)n * (k->dtype == KILN_F64 ? 8 : 4) >= RT_OVERLAP_BYTES) {
        if (r->comm->start(r->comm->self, r->be->tensor_data(r->be->self, t), n, k->dtype,
                           r->err))
          r->overlap_failed = 1;
        else
          r->started[t] = 1, r->overlapped++;
      }
    }
  }
  r->comm->progress(r->comm->self);
}

/* One global step of b examples from order[seen..]: this process's share through grad, the
 * gradients summed (the large ones while grad still runs), then apply on every process alike.
 * The shares are contiguous, in rank order, as even as b allows. */
static int data_parallel_step(Run *r, const RtDataset *train, const int64_t *order, int64_t seen,
                              int64_t b, int epoch) {
  int64_t lo = b * r->comm->rank / r->comm->size, hi = b * (r->comm->rank + 1) / r->comm->size;
  write_batch(r, r->grad_e, train, order, seen + lo, hi - lo, epoch);
  memset(r->started, 0, (size_t)r->prog->ntensors);
  r->overlapped = 0;
  int overlap = r->comm->start && r->be->set_mark &&
                r->be->set_mark(r->be->self, overlap_mark, r) == 0;
  r->overlap_last = -1;
  int rc = run_entry(r, r->grad_e, hi - lo);
  if (overlap) {
    r->be->set_mark(r->be->self, NULL, NULL);
    if (r->overlap_failed)
      return -1;
    char ignored[RT_ERR_LEN]; /* after a failed step, its own message is the one to keep */
    if (r->comm->finish_all(r->comm->self, rc ? ignored : r->err) && !rc)
      return -1;
  }
  if (rc || allreduce_gradients(r, r->started))
    return -1;
  return run_entry(r, r->apply_e, hi - lo);
}

/* A hash of every parameter and saved state's bytes (FNV-1a), for --verify. */
static uint64_t parameters_hash(Run *r) {
  const kiln_program *p = r->prog;
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (!rt_saved(t))
      continue;
    int64_t n = rt_numel(t, p->batch);
    r->be->read(r->be->self, i, r->buf, n);
    const unsigned char *bytes = (const unsigned char *)r->buf;
    for (size_t k = 0; k < (size_t)n * sizeof *r->buf; k++)
      h = (h ^ bytes[k]) * 1099511628211ull;
  }
  return h;
}

/* --verify: every process must hold the same parameters after each epoch. */
static int verify_parameters(Run *r, int epoch) {
  uint64_t h = parameters_hash(r);
  int same;
  if (r->comm->agree(r->comm->self, h, &same, r->err))
    return -1;
  if (!same)
    return rt_errf(r->err, "epoch %d: the processes' parameters differ (rank %d's hash is "
                   "%016llx): a process computed something the others did not", epoch,
                   r->comm->rank, (unsigned long long)h);
  if (!r->o->quiet)
    fprintf(stderr, "verify: epoch %d: the %d processes hold the same parameters (hash %016llx)\n",
            epoch, r->comm->size, (unsigned long long)h);
  return 0;
}

/* Whether any process was asked to stop, so that every process stops after the same step. */
static int any_stop(Run *r, int *stop) {
  double s = stop_signal ? 1.0 : 0.0;
  if (r->comm && r->comm->allreduce(r->comm->self, &s, 1, KILN_F64, r->err))
    return -1;
  *stop = s > 0;
  return 0;
}

static int train_data(Run *r) {
  const kiln_program *p = r->prog;
  const RtOptions *o = r->o;
  RtDataset train = {0}, test = {0};
  RtCsv csv = {0};
  int64_t *order = NULL, *fit_idx = NULL, *val_idx = NULL;
  Best best = {0};
  RtResume rs = {0};
  int rc = -1;
  if (!o->data_dir)
    return rt_errf(r->err, "model '%s' reads images and labels: pass --data DIR (IDX files such "
                   "as /usr/share/datasets/fashion-mnist, or an image folder with train/ and "
                   "test/)", p->model ? p->model : "?");
  RtDataWant want;
  data_want(r, &want);
  /* The headers first: how much the run will hold, before any of it is read. */
  if (rt_data_load(o->data_dir, "train", 0, &want, &train, r->err) ||
      rt_data_load(o->data_dir, "test", 0, &want, &test, r->err))
    goto done;
  int64_t use_train = train.images.dims[0], use_test = test.images.dims[0];
  if (o->limit_train > 0 && o->limit_train < use_train)
    use_train = o->limit_train;
  if (o->limit_test > 0 && o->limit_test < use_test)
    use_test = o->limit_test;
  if (memory_plan(r, use_train, use_test, train.images.item))
    goto done;
  rt_dataset_free(&train);
  rt_dataset_free(&test);
  /* Only the examples the run uses are read (--limit-train, --limit-test). */
  if (rt_data_load(o->data_dir, "train", o->limit_train > 0 ? o->limit_train : -1, &want,
                   &train, r->err) ||
      rt_data_load(o->data_dir, "test", o->limit_test > 0 ? o->limit_test : -1, &want, &test,
                   r->err) ||
      check_data_inputs(r, &train, o->data_dir))
    goto done;
  if (test.images.item != train.images.item) {
    rt_errf(r->err, "%s: test images have %lld values, training images %lld", o->data_dir,
            (long long)test.images.item, (long long)train.images.item);
    goto done;
  }
  int64_t ntrain = train.images.count, ntest = test.images.count;
  if (o->limit_train > 0 && o->limit_train < ntrain)
    ntrain = o->limit_train;
  if (o->limit_test > 0 && o->limit_test < ntest)
    ntest = o->limit_test;
  if (ntrain == 0) {
    rt_errf(r->err, "%s: no training examples", o->data_dir);
    goto done;
  }
  if (check_labels(r, &train, ntrain) || check_labels(r, &test, ntest))
    goto done;
  int patience = o->patience > 0 ? o->patience : model_patience(p);
  /* The validation split: training examples held out (chosen by the seed), evaluated every
   * epoch and what early stopping selects on, so the test set plays no part in choosing the
   * parameters and is measured once, at the end. */
  int64_t nval = o->validation >= 1 ? (int64_t)o->validation
                 : o->validation > 0 ? (int64_t)llround(o->validation * (double)ntrain)
                                     : 0;
  if (patience > 0 && o->validation <= 0) {
    nval = ntrain / 10 > 0 ? ntrain / 10 : 1;
    if (!o->quiet)
      fprintf(stderr, "early stopping selects on a validation split of %lld training example%s "
              "(--validation sets its size)\n", (long long)nval, nval == 1 ? "" : "s");
  }
  if (o->validation > 0 && nval == 0)
    nval = 1;
  if (nval >= ntrain) {
    rt_errf(r->err, "--validation: %lld of the %lld training examples leave none to train on",
            (long long)nval, (long long)ntrain);
    goto done;
  }
  int64_t nfit = ntrain - nval;
  if (!(fit_idx = malloc((size_t)ntrain * sizeof *fit_idx)) ||
      split_validation(r->seed, ntrain, nval, fit_idx)) {
    rt_errf(r->err, "out of memory");
    goto done;
  }
  val_idx = fit_idx + nfit;
  if (prepare_images(r, &train, fit_idx, nfit))
    goto done;
  run_options(r, ntrain, nval, ntest, patience, &rs);
  if (o->resume_path) {
    if (rt_read_checkpoint(r->be, o->resume_path, &rs, r->err))
      goto done;
    if (rs.epoch < 1 || rs.seen > nfit) {
      rt_errf(r->err, "%s: its position (epoch %d, %" PRId64 " examples) does not fit this run",
              o->resume_path, rs.epoch, rs.seen);
      goto done;
    }
    best = (Best){rs.best_vals, rs.best_epoch, rs.best_test_loss, rs.best_train_loss,
                  rs.best_acc};
    rs.best_vals = NULL;
    snprintf(r->last_checkpoint, sizeof r->last_checkpoint, "%s", o->resume_path);
  } else if (!o->load_path && rt_setting_int(p, "lsuv", 0) == 1 &&
             lsuv_init(r, &train, fit_idx, nfit)) {
    goto done;
  }
  const char *set = nval ? "val" : "test";
  char header[8192], metric_text[512], diag_text[8192] = "";
  snprintf(header, sizeof header,
           "epoch,train_loss,%s_loss,%s_accuracy,images_per_s,seconds,lr", set, set);
  for (int m = 0; m < r->nmetrics; m++) {
    size_t used = strlen(header);
    snprintf(header + used, sizeof header - used, ",%s_%s", set, r->metric_name[m]);
  }
  if (r->hvp) {
    size_t used = strlen(header);
    snprintf(header + used, sizeof header - used, ",lambda_max");
  }
  if (r->diag)
    rt_diag_columns(r->diag, header, sizeof header);
  if (o->metrics_path &&
      rt_csv_open(&csv, o->metrics_path, header, o->resume_path ? rs.epoch - 1 : -1, r->err))
    goto done;
  order = malloc((size_t)(nfit ? nfit : 1) * sizeof *order);
  if (!order) {
    rt_errf(r->err, "out of memory");
    goto done;
  }

  int64_t model_epochs = rt_setting_int(p, "epochs", 1);
  int epochs = o->epochs > 0                                    ? o->epochs
               : model_epochs > 0 && model_epochs <= 1000000000 ? (int)model_epochs
                                                                : 1;
  int64_t steps = (nfit + p->batch - 1) / p->batch;
  int loss_t = rt_find_tensor(p, "loss");
  RtRng rng;
  rt_rng_seed(&rng, rt_hash_name(r->seed, "kiln.shuffle"));
  double train_time = 0, train_loss = NAN, test_loss = NAN, acc = NAN;
  double metrics[RT_MAX_METRICS], final_metrics[RT_MAX_METRICS];
  for (int m = 0; m < RT_MAX_METRICS; m++)
    metrics[m] = final_metrics[m] = NAN;
  int64_t train_images = 0;
  int ran = 0, stopped = 0, first_epoch = 1;
  if (o->resume_path) {
    rng = rs.epoch_rng;
    first_epoch = rs.epoch;
    train_time = rs.train_time;
    train_images = rs.train_images;
    ran = rs.ran;
    train_loss = rs.last_train_loss, test_loss = rs.last_test_loss, acc = rs.last_acc;
    /* The previous run stopped early: nothing is left to do but report it. */
    stopped = patience > 0 && best.epoch > 0 && ran - best.epoch >= patience;
  }
  /* The loss the train step reports includes the regularization penalty when there is one. */
  const char *train_name = rt_find_tensor(p, "penalty") >= 0 ? "train_loss(+penalty)" : "train_loss";
  for (int epoch = first_epoch; epoch <= epochs && !stopped; epoch++) {
    double t0 = rt_now(), loss_sum = 0, lr = set_lr(r, epoch - 1);
    int64_t seen = 0, step0 = 1, resumed_seen = 0;
    RtRng epoch_rng = rng;
    memcpy(order, fit_idx, (size_t)nfit * sizeof *order);
    rt_shuffle(&rng, order, nfit);
    if (o->resume_path && epoch == first_epoch) {
      seen = resumed_seen = rs.seen, loss_sum = rs.loss_sum, step0 = rs.step + 1;
      if (seen != (rs.step < steps ? rs.step * p->batch : nfit)) {
        rt_errf(r->err, "%s: its position (step %" PRId64 ", %" PRId64 " examples) does not fit "
                "batch %" PRId64, o->resume_path, rs.step, rs.seen, p->batch);
        goto done;
      }
    }
    for (int64_t step = step0; step <= steps; step++) {
      int64_t b = nfit - seen < p->batch ? nfit - seen : p->batch;
      if (r->comm && b < r->comm->size)
        break; /* fewer examples left than processes: every process needs one (docs) */
      if (r->comm) {
        if (data_parallel_step(r, &train, order, seen, b, epoch) ||
            check_step(r, epoch, step, b, loss_t))
          goto done;
      } else {
        write_batch(r, r->train_e, &train, order, seen, b, epoch);
        if (r->diag && step == steps)
          rt_diag_before_step(r->diag); /* the update/weight ratio is the last step's */
        if (run_entry(r, r->train_e, b) || check_step(r, epoch, step, b, loss_t))
          goto done;
      }
      loss_sum += read_scalar(r, loss_t, b) * (double)b;
      seen += b;
      int64_t at = (int64_t)(epoch - 1) * steps + step;
      if (r->hvp && at % o->curvature_every == 0 && b == p->batch) {
        /* on the batch just trained on; the same start vector for the same step in any run */
        int used;
        if (rt_hvp_power(r->hvp, 50, 1e-4, rt_hash_name(r->seed + (uint64_t)at, "kiln.curvature"),
                         &r->lambda_max, &used, r->err))
          goto done;
      }
      if (!o->quiet) {
        double elapsed = train_time + rt_now() - t0;
        double rate = elapsed > 0 ? (double)(train_images + seen - resumed_seen) / elapsed : 0;
        double left = (double)(epochs - epoch) * (double)nfit + (double)(nfit - seen);
        rt_progress_update(&r->progress, epoch, epochs, step, steps, loss_sum / (double)seen,
                           rate, rate > 0 ? left / rate : -1);
      }
      int64_t global = (int64_t)(epoch - 1) * steps + step;
      int stop;
      if (any_stop(r, &stop))
        goto done;
      if (stop || checkpoint_due(o, global, epoch, 0)) {
        rs.epoch = epoch, rs.step = step, rs.seen = seen, rs.epoch_rng = epoch_rng;
        rs.loss_sum = loss_sum, rs.train_time = train_time, rs.train_images = train_images;
        rs.ran = ran, rs.last_train_loss = train_loss, rs.last_test_loss = test_loss;
        rs.last_acc = acc;
        rs.best_epoch = best.epoch, rs.best_test_loss = best.test_loss;
        rs.best_train_loss = best.train_loss, rs.best_acc = best.acc, rs.best_vals = best.vals;
        char path[4096], where[96];
        if (stop) {
          snprintf(where, sizeof where, "epoch %d, step %" PRId64 " of %" PRId64, epoch, step,
                   steps);
          rc = stop_now(r, &rs, where);
          goto stopped_by_signal;
        }
        if (write_checkpoint(r, &rs, path, sizeof path))
          goto done;
      }
    }
    /* Seconds of this run only: a resumed epoch's earlier part is not in its rate. */
    double epoch_train = rt_now() - t0;
    train_time += epoch_train;
    train_images += seen - resumed_seen;
    train_loss = loss_sum / (double)seen;
    ran = epoch;
    if (!o->quiet)
      rt_progress_done(&r->progress);
    if (r->comm && o->verify && verify_parameters(r, epoch))
      goto done;
    if (nval ? evaluate(r, &train, val_idx, nval, "validation", &test_loss, &acc, metrics)
             : evaluate(r, &test, NULL, ntest, "test", &test_loss, &acc, metrics))
      goto done;
    double rate = epoch_train > 0 ? (double)(seen - resumed_seen) / epoch_train : 0;
    char note[80] = "", figs1[64], figs2[64], figs3[64], figs4[64];
    if (patience > 0) {
      /* NaN never improves; the first epoch always sets the best */
      if (best.epoch == 0 || test_loss < best.test_loss) {
        if (best_copy(r, &best, 0))
          goto done;
        best = (Best){best.vals, epoch, test_loss, train_loss, acc};
        snprintf(note, sizeof note, "  (best)");
      } else if (epoch - best.epoch >= patience) {
        stopped = 1;
        snprintf(note, sizeof note, "  (no better validation loss for %d epoch%s: stopping)",
                 patience,
                 patience == 1 ? "" : "s");
      }
    }
    if (r->diag) {
      /* The first examples of the validation split, or of the test set. */
      const RtDataset *ds = nval ? &train : &test;
      const int64_t *idx = nval ? val_idx : NULL;
      int64_t n = nval ? nval : ntest, b = n < p->batch ? n : p->batch;
      if (b > 0) {
        write_batch(r, r->eval_e, ds, idx, 0, b, 0);
        write_batch(r, rt_find_entry(p, "grad"), ds, idx, 0, b, 0);
        if (rt_diag_measure(r->diag, b, r->err))
          goto done;
        rt_diag_csv(r->diag, diag_text, sizeof diag_text);
      }
    }
    if (!o->quiet)
      fprintf(stderr, "epoch %d/%d  %s %.4f%s%s%s%s%s  %.0f img/s%s\n", epoch, epochs, train_name,
              train_loss,
              figure(test_loss, nval ? "  val_loss %.4f" : "  test_loss %.4f", figs1,
                     sizeof figs1),
              figure(acc, nval ? "  val_accuracy %.4f" : "  test_accuracy %.4f", figs2,
                     sizeof figs2),
              metric_figures(r, set, metrics, "  %s_%s %.4f", 0, metric_text, sizeof metric_text),
              figure(lr, "  lr %.6g", figs3, sizeof figs3),
              figure(r->lambda_max, "  lambda_max %.4g", figs4, sizeof figs4), rate, note);
    char lam[48] = "";
    if (r->hvp)
      snprintf(lam, sizeof lam, ",%.9g", r->lambda_max);
    rt_csv_row(&csv, "%d,%.6f,%.6f,%.6f,%.1f,%.3f,%.9g%s%s%s", epoch, train_loss, test_loss, acc,
               rate, rt_now() - t0, lr,
               metric_figures(r, set, metrics, "%.0s%.0s,%.6f", 1, metric_text, sizeof metric_text),
               lam, diag_text);
    if (r->diag && !o->quiet)
      rt_diag_print(r->diag, stderr);
    int stop;
    if (any_stop(r, &stop))
      goto done;
    if (stop || checkpoint_due(o, 0, epoch, 1)) {
      rs = (RtResume){.epoch = epoch + 1, .epoch_rng = rng, .train_time = train_time,
                      .train_images = train_images, .ran = ran, .last_train_loss = train_loss,
                      .last_test_loss = test_loss, .last_acc = acc, .best_epoch = best.epoch,
                      .best_test_loss = best.test_loss, .best_train_loss = best.train_loss,
                      .best_acc = best.acc, .best_vals = best.vals};
      run_options(r, ntrain, nval, ntest, patience, &rs);
      char path[4096], where[96];
      if (stop) {
        snprintf(where, sizeof where, "the end of epoch %d", epoch);
        rc = stop_now(r, &rs, where);
        goto stopped_by_signal;
      }
      if (write_checkpoint(r, &rs, path, sizeof path))
        goto done;
    }
  }
  if (rt_csv_close(&csv, r->err))
    goto done;
  if (best.epoch > 0) {
    /* early stopping: go back to the best epoch's parameters, and report that epoch */
    if (best_copy(r, &best, 1))
      goto done;
    train_loss = best.train_loss, test_loss = best.test_loss, acc = best.acc;
    if (!o->quiet)
      fprintf(stderr, "early stopping: %s after epoch %d; keeping epoch %d (best val_loss "
              "%.4f)\n", stopped ? "stopped" : "ran all epochs", ran, best.epoch, test_loss);
  }
  /* With a validation split the test set is measured once, on the parameters kept. */
  double final_test_loss = nval ? NAN : test_loss, final_acc = nval ? NAN : acc;
  if (nval ? evaluate(r, &test, NULL, ntest, "test", &final_test_loss, &final_acc, final_metrics)
           : (memcpy(final_metrics, metrics, sizeof metrics), 0))
    goto done;
  if (o->save_path && rt_save_checkpoint(r->be, o->save_path, r->err))
    goto done;
  if (o->plot_path && rt_plot_csv(o->metrics_path, o->plot_path, r->err))
    goto done;
  if (o->images_dir) {
    int64_t files = write_images(r, &test, ntest);
    if (files < 0)
      goto done;
    if (!o->quiet)
      fprintf(stderr, "images: %lld PGM files in %s\n", (long long)files, o->images_dir);
  }
  if (o->result) {
    /* The metrics of the epoch early stopping kept were not kept with it: measure them again. */
    if (nval && best.epoch > 0 && r->nmetrics > 0 &&
        evaluate(r, &train, val_idx, nval, "validation", &test_loss, &acc, metrics))
      goto done;
    RtResult *res = o->result;
    res->epochs = ran;
    res->train_loss = train_loss;
    res->val_loss = nval ? test_loss : NAN;
    res->val_accuracy = nval ? acc : NAN;
    res->test_loss = final_test_loss;
    res->test_accuracy = final_acc;
    for (int m = 0; m < RT_MAX_METRICS; m++) {
      res->val_metrics[m] = nval ? metrics[m] : NAN;
      res->test_metrics[m] = final_metrics[m];
    }
    rc = 0;
    goto done;
  }
  if (r->comm && r->comm->rank > 0) { /* rank 0 reports the run */
    rc = 0;
    goto done;
  }
  if (r->comm && r->comm->seconds && !o->quiet && train_time > 0) {
    int ngrad = 0;
    for (int i = 0; i < p->ntensors; i++)
      ngrad += p->tensors[i].role == KILN_ROLE_GRAD;
    fprintf(stderr, "data-parallel: %d processes; rank 0 spent %.1f%% of its training time in "
            "collectives (%.2f s of %.2f s); %d of %d gradients summed while the backward pass "
            "ran\n", r->comm->size, 100 * r->comm->seconds(r->comm->self) / train_time,
            r->comm->seconds(r->comm->self), train_time, r->overlapped, ngrad);
  }
  char figs[4][64];
  printf("final epochs=%d train_loss=%.4f%s%s%s%s images_per_s=%.0f", ran, train_loss,
         nval ? figure(test_loss, " val_loss=%.4f", figs[0], sizeof figs[0]) : "",
         nval ? figure(acc, " val_accuracy=%.4f", figs[1], sizeof figs[1]) : "",
         figure(final_test_loss, " test_loss=%.4f", figs[2], sizeof figs[2]),
         figure(final_acc, " test_accuracy=%.4f", figs[3], sizeof figs[3]),
         train_time > 0 ? (double)train_images / train_time : 0.0);
  printf("%s", metric_figures(r, "test", final_metrics, " %s_%s=%.4f", 0, metric_text,
                              sizeof metric_text));
  if (patience > 0)
    printf(" early_stop=%s best_epoch=%d", stopped ? "yes" : "no", best.epoch);
  printf("\n");
  fflush(stdout);
  rc = 0;
  goto done;
stopped_by_signal:
  fflush(stdout);
done:
  if (csv.f) {
    char ignored[RT_ERR_LEN];
    rt_csv_close(&csv, ignored);
  }
  free(order);
  free(fit_idx);
  free(best.vals);
  free(rs.best_vals == best.vals ? NULL : rs.best_vals);
  rt_dataset_free(&train);
  rt_dataset_free(&test);
  free(r->pixel_mean);
  free(r->scratch);
  r->pixel_mean = r->scratch = NULL;
  return rc;
}

/* Inputs that hold literal data from the model file. Written before every run, because the
 * memory planner may reuse an input's bytes for temporaries once the step has read it. */
static void write_literal_inputs(Run *r, int entry) {
  const kiln_program *p = r->prog;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role == KILN_ROLE_INPUT && !t->feed && t->init == KILN_INIT_DATA && t->data &&
        rt_tensor_in_entry(t, entry))
      r->be->write(r->be->self, i, t->data, rt_numel(t, p->batch));
  }
}

static void print_values(Run *r, const char *name, int t, int64_t batch) {
  int64_t n = rt_numel(&r->prog->tensors[t], batch);
  r->be->read(r->be->self, t, r->buf, n);
  printf("%s =", name);
  for (int64_t k = 0; k < n; k++)
    printf(" %.6f", r->buf[k]);
  printf("\n");
}

static int train_literal(Run *r) {
  const kiln_program *p = r->prog;
  const RtOptions *o = r->o;
  /* An explicit --epochs counts steps here; otherwise the model's steps, else its epochs. */
  int64_t model_steps = rt_setting_int(p, "steps", 0), model_epochs = rt_setting_int(p, "epochs", 1);
  int64_t steps = o->epochs > 0 ? o->epochs : model_steps > 0 ? model_steps
                                            : model_epochs > 0 ? model_epochs : 1;
  int loss_t = rt_find_tensor(p, "loss");
  double loss = NAN, t0 = rt_now();
  int64_t first = 1;
  RtResume rs = {0};
  run_options(r, 0, 0, 0, 0, &rs);
  if (o->resume_path) {
    if (rt_read_checkpoint(r->be, o->resume_path, &rs, r->err))
      return -1;
    free(rs.best_vals);
    rs.best_vals = NULL;
    first = rs.step + 1;
    loss = rs.last_train_loss;
    snprintf(r->last_checkpoint, sizeof r->last_checkpoint, "%s", o->resume_path);
  }
  for (int64_t s = first; s <= steps; s++) {
    set_lr(r, s - 1); /* each step is a full-batch epoch */
    write_literal_inputs(r, r->train_e);
    if (run_entry(r, r->train_e, p->batch))
      return -1;
    loss = read_scalar(r, loss_t, p->batch);
    if (!isfinite(loss)) {
      char hint[9000];
      fault_hint(r, hint, sizeof hint);
      return rt_errf(r->err, "step %lld: the loss is %s (the run diverged, or an op such as "
                     "log, sqrt, exp or a division left its domain)%s", (long long)s,
                     isnan(loss) ? "NaN" : "infinite", hint);
    }
    if (stop_signal || checkpoint_due(o, s, 0, 0)) {
      rs.step = s, rs.last_train_loss = loss;
      char path[4096], where[64];
      if (stop_signal) {
        snprintf(where, sizeof where, "step %lld of %lld", (long long)s, (long long)steps);
        return stop_now(r, &rs, where);
      }
      if (write_checkpoint(r, &rs, path, sizeof path))
        return -1;
    }
    if (!o->quiet) {
      double el = rt_now() - t0, rate = el > 0 ? (double)(s * p->batch) / el : 0;
      rt_progress_update(&r->progress, 0, 0, s, steps, loss, rate,
                         rate > 0 ? (double)((steps - s) * p->batch) / rate : -1);
    }
  }
  if (!o->quiet)
    rt_progress_done(&r->progress);
  for (int i = 0; i < p->ntensors; i++)
    if (p->tensors[i].role == KILN_ROLE_PARAM)
      print_values(r, p->tensors[i].name, i, p->batch);
  int out = rt_find_tensor(p, "eval.output");
  if (out >= 0 && r->eval_e >= 0) {
    write_literal_inputs(r, r->eval_e);
    if (run_entry(r, r->eval_e, p->batch))
      return -1;
    print_values(r, "output", out, p->batch);
  }
  if (o->save_path && rt_save_checkpoint(r->be, o->save_path, r->err))
    return -1;
  printf("final steps=%lld loss=%.6g\n", (long long)steps, loss);
  fflush(stdout);
  return 0;
}

/* A data-parallel run's setup: rank > 0 prints and writes nothing (rank 0 does, for the run);
 * the program must have been compiled for it, and the options it cannot split are refused. */
static int data_parallel_setup(Run *r) {
  const RtComm *c = r->comm;
  const kiln_program *p = r->prog;
  r->local = *r->o;
  if (c->rank > 0) {
    r->local.quiet = 1;
    r->local.metrics_path = r->local.save_path = r->local.plot_path = NULL;
    r->local.images_dir = NULL;
    r->local.result = NULL;
  }
  r->o = &r->local;
  if (rt_setting_int(p, "data_parallel", 0) != 1)
    return rt_errf(r->err, "model '%s' was not compiled for data-parallel training: build the "
                   "trainer with kiln build --mpi", p->model ? p->model : "?");
  r->grad_e = rt_find_entry(p, "grad");
  r->apply_e = rt_find_entry(p, "apply");
  if (r->grad_e < 0 || r->apply_e < 0 || !r->be->tensor_data || !r->be->set_allreduce)
    return rt_errf(r->err, "a data-parallel run needs the grad and apply entries and a compiled "
                   "arena");
  if (r->o->diagnose || r->o->curvature_every > 0 || rt_setting_int(p, "lsuv", 0) == 1)
    return rt_errf(r->err, "%s is not available in a data-parallel run",
                   r->o->diagnose ? "--diagnose" : r->o->curvature_every > 0
                                                      ? "--curvature-every" : "init = lsuv");
  if (!(r->bucket = malloc(RT_BUCKET_BYTES)) ||
      !(r->started = calloc((size_t)p->ntensors + 1, 1)))
    return rt_errf(r->err, "out of memory");
  r->be->set_allreduce(r->be->self, c->step_allreduce, c->self);
  return 0;
}

int rt_train(RtBackend *be, const RtOptions *o) {
  Run r = {.be = be, .prog = be ? be->prog : NULL, .o = o, .comm = o ? o->comm : NULL};
  const char *name = o->prog_name ? o->prog_name : "trainer";
  int rc = -1;
  if (!rt_check_program(r.prog, r.err) && rt_find_tensor(r.prog, "loss") < 0)
    rt_errf(r.err, "model '%s' has no loss to minimize: it only evaluates (an ONNX model "
            "imported with --loss none, or a model file without 'minimize')",
            r.prog->model ? r.prog->model : "?");
  if (r.err[0])
    goto done;
  const kiln_program *p = r.prog;
  if (r.comm && data_parallel_setup(&r))
    goto done;
  o = r.o;
  r.seed = o->have_seed ? o->seed : rt_setting_u64(p, "seed", 1);
  r.train_e = rt_find_entry(p, "train");
  r.eval_e = rt_find_entry(p, "eval");
  find_metrics(&r);
  if (r.train_e < 0) {
    rt_errf(r.err, "program '%s' has no \"train\" entry", p->model ? p->model : "?");
    goto done;
  }
  r.buf_n = 1;
  for (int i = 0; i < p->ntensors; i++) {
    int64_t n = rt_numel(&p->tensors[i], p->batch);
    if (n > r.buf_n)
      r.buf_n = n;
  }
  r.buf = malloc((size_t)r.buf_n * sizeof *r.buf);
  if (!r.buf) {
    rt_errf(r.err, "out of memory");
    goto done;
  }
  rt_progress_init(&r.progress, stderr);
  if (be->set_threads && be->set_threads(be->self, o->threads, r.err))
    goto done;
  if (o->profile && !be->profile_start) {
    rt_errf(r.err, "--profile needs compiled code; the reference runtime has no kernels to time");
    goto done;
  }
  if (o->profile && be->profile_start(be->self, r.err))
    goto done;
  if (rt_init_persistent(be, r.seed, o->lr, r.err) || rt_schedule_of(p, &r.schedule, r.err))
    goto done;
  r.lr_t = rt_find_tensor(p, "lr");
  if (r.lr_t >= 0 && p->tensors[r.lr_t].role != KILN_ROLE_HYPER)
    r.lr_t = -1;
  if (r.lr_t >= 0 && o->lr >= 0)
    r.base_lr = o->lr;
  else if (r.lr_t >= 0) /* its initial value as a double, before rounding to the tensor's type */
    rt_init_tensor(&p->tensors[r.lr_t], r.seed, &r.base_lr, 1);
  if (o->load_path && o->resume_path) {
    rt_errf(r.err, "--load and --resume exclude each other: --resume restores the parameters "
            "and everything else the run had");
    goto done;
  }
  if (o->load_path && rt_load_checkpoint(be, o->load_path, r.err))
    goto done;
  if (o->plot_path && !o->metrics_path) {
    rt_errf(r.err, "--plot draws the metrics CSV: give --metrics FILE.csv too");
    goto done;
  }
  if (o->init_map && !o->init_from) {
    rt_errf(r.err, "--init-map renames the tensors of --init-from FILE, which is missing");
    goto done;
  }
  if (o->init_from && (o->load_path || o->resume_path)) {
    rt_errf(r.err, "--init-from and %s exclude each other: %s sets every parameter", o->load_path
            ? "--load" : "--resume", o->load_path ? "--load" : "--resume");
    goto done;
  }
  if (o->init_from || (o->ninit_tensors && !o->load_path && !o->resume_path)) {
    if (!(r.loaded = calloc((size_t)p->ntensors + 1, 1))) {
      rt_errf(r.err, "out of memory");
      goto done;
    }
    if (o->init_from
            ? rt_init_from(be, o->init_from, o->init_map, r.loaded, o->quiet ? NULL : stderr, r.err)
            : rt_init_from_tensors(be, o->init_tensors, o->ninit_tensors, o->init_source, NULL,
                                   r.loaded, o->quiet ? NULL : stderr, r.err))
      goto done;
  }
  r.lambda_max = NAN;
  if (o->curvature_every > 0 && rt_hvp_open(&r.hvp, be, p->batch, r.err))
    goto done;
  if (o->diagnose) {
    if (rt_diag_open(&r.diag, be, r.err))
      goto done;
    rt_diag_before_step(r.diag);
    if (!rt_diag_activations(r.diag) && !o->quiet)
      fprintf(stderr, "diagnose: this step has no activation outputs (compile it with --diagnose "
              "for dead and saturated units); gradients and updates are measured\n");
  }
  if (check_output(&r, o->save_path, "--save") ||
      check_output(&r, o->metrics_path, "--metrics") ||
      (o->checkpoint_every > 0 && prepare_checkpoint_dir(&r)) ||
      (o->images_dir && prepare_images_dir(&r)))
    goto done;
  int data = 0;
  for (int i = 0; i < p->ntensors; i++)
    if (p->tensors[i].role == KILN_ROLE_INPUT && p->tensors[i].feed)
      data = 1;
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    if (t->role == KILN_ROLE_INPUT && !t->feed && !(t->init == KILN_INIT_DATA && t->data) &&
        (rt_tensor_in_entry(t, r.train_e) || (r.eval_e >= 0 && rt_tensor_in_entry(t, r.eval_e)))) {
      rt_errf(r.err, "input '%s' has no data: a trainer feeds an input from the dataset "
              "(`from images`, `from labels`) or from values in the model file, and '%s' has "
              "neither (a host program feeds such inputs through the C API)", t->name, t->name);
      goto done;
    }
  }
  if (!data && (o->patience > 0 || model_patience(p) > 0)) {
    rt_errf(r.err, "early stopping needs a test set, but model '%s' has its data in the file "
            "(no --data)", p->model ? p->model : "?");
    goto done;
  }
  if (!data && (o->normalize.mode != RT_NORMALIZE_OFF || o->augment.on)) {
    rt_errf(r.err, "%s works on images from a data set, but model '%s' has its data in the file",
            o->augment.on ? "--augment" : "--normalize", p->model ? p->model : "?");
    goto done;
  }
  Signals sig;
  signals_catch(&sig);
  if (r.comm && !data) {
    signals_restore(&sig);
    rt_errf(r.err, "model '%s' has its data in the file: there is no batch to split over "
            "processes", p->model ? p->model : "?");
    goto done;
  }
  rc = data ? train_data(&r) : train_literal(&r);
  signals_restore(&sig);
  if (rc == 0 && o->profile) {
    be->profile_report(be->self, stdout);
    fflush(stdout);
  }
done:
  free(r.buf);
  free(r.loaded);
  free(r.bucket);
  free(r.started);
  rt_diag_free(r.diag);
  rt_hvp_free(r.hvp);
  if (rc > 0)
    return rc; /* stopped by a signal, and said so */
  if (rc) {
    fflush(stdout);
    rt_color_printf(stderr, "%s: error: %s\n", name, r.err);
    return 1;
  }
  return 0;
}
