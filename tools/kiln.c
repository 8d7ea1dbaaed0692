/*
 * kiln.c — the command-line driver: one function per subcommand over the library's pipeline
 * (src/driver/session.c). This is the only place that reads the environment and asks the machine
 * about itself: it turns flags, $KILN_THREADS, $KILN_FUSE, $KILN_CONV, $CC, $KILN_HOME, $TMPDIR,
 * $XDG_CACHE_HOME, $HOME and where its own executable is into the session's options, and prints
 * the session's diagnostics (and with --verbose its phase times) on stderr, coloured as
 * --color, $NO_COLOR and $TERM say. Its words are cli.c's tables, which --help prints.
 *
 * Exit statuses (rt_exit_statuses): 0 success, 1 bad input or a failed run or check (message on
 * stderr), 2 bad usage, 130/143 training stopped by SIGINT/SIGTERM.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "driver/driver.h"
#include "runtime.h"

typedef struct Args {
  const char *cmd, *model, *out, *params, *inputs, *tangents;
  int nparams;            /* --params given this many times (evaluate: an ensemble) */
  const char **param_list;
  SweepGrid grid;         /* sweep: --grid */
  const char *keep, *select; /* sweep: --keep FILE, --select COLUMN */
  int ncommon;            /* kiln's options as written (sweep: repeated in each run's command) */
  char **common;
  int steps;
  const char *wrt;        /* kiln diff: the variable, its value and the highest order */
  double at;
  bool have_at;
  int order;
  const char *data;       /* kiln curvature */
  const char *kernel;     /* kiln check --kernel */
  int iterations;
  bool train_graph, reference;
  int precision;          /* 0: model's, 32, 64 (reference runtime) */
  int nrest;              /* options passed on to the trainer */
  char **rest;
  bool verbose;           /* --verbose: phase times on stderr */
  bool no_cache;          /* --no-cache */
  bool no_tune;           /* --no-tune: ignore what kiln tune stored */
  double seconds;         /* kiln tune: how long each schedule runs */
  SchedTuning tuning;     /* loaded from the cache: a.opt.sched.tuning points here */
  char tune_path[4200];
  char cache_dir[4096];   /* from $XDG_CACHE_HOME or $HOME */
  char runtime_dir[4096]; /* the trainer runtime beside this executable, unless $KILN_HOME */
  Options opt;            /* the session's */
} Args;

static int usage_error(const char *fmt, const char *arg) {
  char msg[1024];
  snprintf(msg, sizeof msg, fmt, arg);
  rt_color_printf(stderr, "kiln: error: %s\n(run 'kiln --help' for usage)\n", msg);
  return 2;
}

static bool parse_int(const char *s, int64_t lo, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo) return false;
  *out = v;
  return true;
}

/* The target the schedule derives its tiles from, asked of this machine: the data cache sizes the
 * C library reports (those it does not keep the library's default) and the widest vectors the CPU
 * has. $KILN_TARGET=generic keeps the library's fixed target, so that `kiln emit` prints the
 * same file on every machine (the golden tests). */
static void target_from_machine(Target *t) {
  const char *e = getenv("KILN_TARGET");
  if (e && !strcmp(e, "generic")) {
    SchedOptions d;
    sched_default_options(&d);
    *t = d.target;
    return;
  }
#ifdef _SC_LEVEL1_DCACHE_SIZE
  long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE),
       l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l1 > 0) t->l1_bytes = l1;
  if (l2 > 0) t->l2_bytes = l2;
  if (l3 > 0) t->l3_bytes = l3;
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  t->vector_bytes = __builtin_cpu_supports("avx512f") ? 64 : __builtin_cpu_supports("avx") ? 32 : 16;
#endif
}

/* --target NAME: the x86-64 microarchitecture levels gcc and clang know as -march values, and the
 * widest vectors each guarantees (the schedule's vector width); "native" is this machine. */
static int parse_target(const char *name, Options *o) {
  static const struct { const char *name; int vector_bytes; } levels[] = {
      {"x86-64", 16}, {"x86-64-v2", 16}, {"x86-64-v3", 32}, {"x86-64-v4", 64}};
  if (!strcmp(name, "native")) {
    o->backend.march = "native";
    target_from_machine(&o->sched.target);
    return 0;
  }
  for (size_t i = 0; i < sizeof levels / sizeof *levels; i++)
    if (!strcmp(name, levels[i].name)) {
      o->backend.march = levels[i].name;
      o->sched.target.vector_bytes = levels[i].vector_bytes;
      return 0;
    }
  return -1;
}

/* "jit" or "cc" into kind; -1 for anything else (or jit in a build without it). */
static int parse_backend(const char *name, BackendKind *kind) {
  if (!strcmp(name, "jit") && backend_has_jit())
    *kind = BACKEND_JIT;
  else if (!strcmp(name, "cc"))
    *kind = BACKEND_CC;
  else
    return -1;
  return 0;
}

/* The cache of compiled programs: $XDG_CACHE_HOME/kiln, else $HOME/.cache/kiln (the XDG base
 * directory rules: a relative $XDG_CACHE_HOME is ignored); none without either. */
static void cache_dir_from_environment(char *dir, size_t cap) {
  const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  dir[0] = 0;
  if (xdg && xdg[0] == '/')
    snprintf(dir, cap, "%s/kiln", xdg);
  else if (home && home[0] == '/')
    snprintf(dir, cap, "%s/.cache/kiln", home);
}

/* Where `kiln build` finds the trainer runtime when $KILN_HOME does not say: beside this
 * executable, as the build tree has it (kiln-runtime/) or as `cmake --install` puts it (from bin/,
 * KILN_RUNTIME_FROM_BINDIR: ../lib/kiln/runtime), so that an installed tree works wherever it is
 * and needs no build tree. NULL (the library's default, the build's) when neither is there. */
static const char *runtime_dir_beside_executable(char *dir, size_t cap) {
  char exe[4096], candidate[8192];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0)
    return NULL;
  exe[n] = 0;
  *strrchr(exe, '/') = 0;  /* the kernel's path of an executable is absolute */
  static const char *const layouts[] = {"kiln-runtime", KILN_RUNTIME_FROM_BINDIR};
  for (size_t i = 0; i < sizeof layouts / sizeof *layouts; i++) {
    snprintf(candidate, sizeof candidate, "%s/%s/libkilnrt.a", exe, layouts[i]);
    if (access(candidate, R_OK))
      continue;
    *strrchr(candidate, '/') = 0;
    char *real = realpath(candidate, NULL);
    if (real && strlen(real) < cap) {
      strcpy(dir, real);
      free(real);
      return dir;
    }
    free(real);
  }
  return NULL;
}

/* The session's defaults on this machine, before flags: every core, unless $KILN_THREADS says
 * otherwise; $KILN_FUSE=0 turns fusion off; $KILN_CONV=direct|gemm|implicit forces one convolution
 * algorithm (for comparisons); $CC, $KILN_HOME and $TMPDIR locate the compiler, the trainer
 * runtime and temporary files. */
static int options_from_environment(Options *o, char *runtime_dir, size_t cap) {
  int cores = rt_available_cores();
  o->sched.threads = cores > 64 ? 64 : cores;
  o->sched.target.cores = o->sched.threads;
  target_from_machine(&o->sched.target);
  const char *e = getenv("KILN_THREADS");
  int64_t n;
  if (e && *e) {
    if (!parse_int(e, 1, &n) || n > 256)
      return usage_error("$KILN_THREADS needs an integer in 1..256, got '%s'", e);
    o->sched.threads = (int)n;
  }
  /* Where the backend finds its compiler, the trainer runtime and room for temporary files. */
  o->backend.cc = getenv("CC");
  o->backend.runtime_dir = getenv("KILN_HOME");
  if (!o->backend.runtime_dir || !*o->backend.runtime_dir)
    o->backend.runtime_dir = runtime_dir_beside_executable(runtime_dir, cap);
  o->backend.tmp_dir = getenv("TMPDIR");
  o->backend.mpi_cc = getenv("KILN_MPICC");
  e = getenv("KILN_BACKEND");
  if (e && *e && parse_backend(e, &o->backend.kind))
    return usage_error("$KILN_BACKEND is 'jit' or 'cc', not '%s'", e);
  e = getenv("KILN_FUSE");
  if (e && !strcmp(e, "0"))
    o->sched.fuse = false;
  e = getenv("KILN_CONV");
  if (e && *e) {
    if (!sched_conv_parse(e, &o->sched.conv))
      return usage_error("$KILN_CONV is 'auto', 'direct', 'gemm' or 'implicit', not '%s'", e);
  }
  return 0;
}

/* kiln's option names (the last spelling of each row), for the nearest-name hint. */
static int own_option_names(const char **names, int cap) {
  int n = 0;
  for (int i = 0; i < cli_noptions && n < cap; i++) {
    const char *name = cli_options[i].name, *comma = strrchr(name, ',');
    name = comma ? comma + 2 : name;
    bool seen = false;
    for (int k = 0; k < n; k++)
      seen |= !strcmp(names[k], name);
    if (!seen)
      names[n++] = name;
  }
  return n;
}

/* An option word that command cmd does not take: which commands do, or the nearest known name. */
static int option_refused(int cmd, const char *key, const CliOption *elsewhere) {
  char where[512], hint[64];
  if (elsewhere) {
    if (cmd == CMD_EVALUATE && elsewhere->id == OPT_OUTPUT)
      return usage_error("%s", "evaluate prints its figures on stdout (no -o)");
    if (cmd == CMD_SWEEP && elsewhere->id == OPT_RUNTIME)
      return usage_error("%s", "sweep trains the compiled step (no --runtime reference)");
    unsigned set = 0;
    for (int i = 0; i < cli_noptions; i++)
      if (rt_option_spelled(cli_options[i].name, key, strlen(key)))
        set |= cli_options[i].commands & CLI_ALL;
    cli_commands_of(set, where, sizeof where);
    rt_color_printf(stderr, "kiln: error: %s belongs to %s\n(run 'kiln %s --help' for its options)\n",
            key, where, cli_commands[cmd].name);
    return 2;
  }
  if (rt_option_known(key)) {
    rt_color_printf(stderr, "kiln: error: %s is a trainer option: it belongs to train and sweep (and "
            "built trainers)\n(run 'kiln %s --help' for its options)\n", key,
            cli_commands[cmd].name);
    return 2;
  }
  const char *own[64];
  int nown = own_option_names(own, 64);
  rt_color_printf(stderr, "kiln: error: unknown option '%s'%s\n(run 'kiln --help' for usage)\n", key,
          rt_option_hint(key, own, nown, hint, sizeof hint));
  return 2;
}

static int parse_args(int argc, char **argv, Args *a) {
  bool verbose = a->verbose, no_cache = a->no_cache;  /* given before the command */
  memset(a, 0, sizeof *a);
  a->verbose = verbose;
  a->no_cache = no_cache;
  a->steps = 3;
  a->seconds = 0.3;
  session_default_options(&a->opt);
  if (options_from_environment(&a->opt, a->runtime_dir, sizeof a->runtime_dir)) return 2;
  a->rest = calloc((size_t)argc + 1, sizeof(char *));
  a->common = calloc((size_t)argc + 1, sizeof(char *));
  a->param_list = calloc((size_t)argc + 1, sizeof(char *));
  if (!a->rest || !a->common || !a->param_list) return usage_error("%s", "out of memory");
  a->cmd = argv[1];
  int cmd = cli_command(a->cmd);
  for (int i = 2; i < argc; i++) {
    const char *s = argv[i];
    if (s[0] != '-' || !s[1]) {
      if (a->model)
        return usage_error("unexpected argument '%s'", s);
      a->model = s;
      continue;
    }
    /* --option VALUE or --option=VALUE */
    char key[64];
    size_t klen = strcspn(s, "=");
    snprintf(key, sizeof key, "%.*s", (int)(klen < sizeof key ? klen : sizeof key - 1), s);
    const CliOption *elsewhere = NULL, *opt = cli_option(s, klen, cmd, &elsewhere);
    if (!opt) {
      if (!cli_takes_trainer_options(cmd) || !rt_option_known(key))
        return option_refused(cmd, key, elsewhere);
      /* A trainer option; rt_options_parse checks it. Those that take a value take the next
       * argument with them (unless written --opt=value). */
      a->rest[a->nrest++] = argv[i];
      if (rt_option_takes_value(key) && !s[klen] && i + 1 < argc)
        a->rest[a->nrest++] = argv[++i];
      continue;
    }
    int first = i;  /* the option's first word, for a->common */
    const char *val = NULL;
    if (opt->arg) {
      if (s[klen])
        val = s + klen + 1;
      else if (i + 1 < argc)
        val = argv[++i];
      else
        return usage_error("option %s needs a value", key);
    } else if (s[klen]) {
      return usage_error("option %s takes no value", key);
    }
    int64_t n;
    char *end;
    switch (opt->id) {
    case OPT_OUTPUT: a->out = val; break;
    case OPT_BATCH:
      if (!parse_int(val, 1, &n)) return usage_error("--batch needs a positive integer, got '%s'", val);
      a->opt.batch = n;
      break;
    case OPT_STEPS:
      if (!parse_int(val, 0, &n) || n > 1000000) return usage_error("--steps needs an integer >= 0, got '%s'", val);
      a->steps = (int)n;
      break;
    case OPT_THREADS:
      if (!parse_int(val, 1, &n) || n > 256) return usage_error("--threads needs an integer in 1..256, got '%s'", val);
      a->opt.sched.threads = (int)n;
      break;
    case OPT_BACKEND:
      if (parse_backend(val, &a->opt.backend.kind))
        return usage_error(backend_has_jit() ? "--backend is 'jit' or 'cc', not '%s'"
                                             : "--backend is 'cc' (built without LLVM), not '%s'", val);
      break;
    case OPT_TARGET:
      if (parse_target(val, &a->opt))
        return usage_error("--target is native, x86-64, x86-64-v2, x86-64-v3 or x86-64-v4, not "
                           "'%s'", val);
      break;
    case OPT_OPT_LEVEL: a->opt.backend.opt_level = s[2] - '0'; break;
    case OPT_TRAIN_GRAPH: a->train_graph = true; break;
    case OPT_MPI:
      /* a data-parallel step (batch statistics over every process) in an MPI trainer */
      a->opt.data_parallel = true;
      a->opt.backend.mpi = true;
      break;
    case OPT_LOSS: {
      static const char *const losses[] = {"auto", "none", "cross_entropy", "nll", "mse"};
      int k = 0;
      while (k < 5 && strcmp(val, losses[k])) k++;
      if (k == 5) return usage_error("--loss is auto, none, cross_entropy, nll or mse, not '%s'", val);
      a->opt.onnx.loss = (OxLoss)k;
      break;
    }
    case OPT_OPTIMIZER:
      if (strpbrk(val, "\n#{}"))
        return usage_error("--optimizer is one call such as 'sgd(lr=0.1, momentum=0.9)', not '%s'", val);
      a->opt.onnx.optimizer = val;
      break;
    case OPT_PIXEL_SCALE:
      a->opt.onnx.pixel_scale = strtod(val, &end);
      if (*end || end == val || !(a->opt.onnx.pixel_scale > 0) || !isfinite(a->opt.onnx.pixel_scale))
        return usage_error("--pixel-scale needs a positive number, got '%s'", val);
      break;
    case OPT_VERBOSE: a->verbose = true; break;
    case OPT_NO_CACHE: a->no_cache = true; break;
    case OPT_NO_TUNE: a->no_tune = true; break;
    case OPT_COLOR: {
      RtColorMode mode;  /* main has applied it already (rt_color_scan); here it is checked */
      if (rt_color_parse(val, &mode))
        return usage_error("--color is 'auto', 'always' or 'never', not '%s'", val);
      break;
    }
    case OPT_CURVATURE_EVERY:
      /* compiled in (the grad entry gets Hessian-vector products), and for train also the
       * trainer's option with its value */
      a->opt.hvp = true;
      if (cmd == CMD_TRAIN) {
        a->rest[a->nrest++] = "--curvature-every";
        a->rest[a->nrest++] = (char *)val;
      }
      break;
    case OPT_DIAGNOSE:
      /* compiled in (the eval entry outputs every activation), and for train also the trainer's
       * report */
      a->opt.diagnose = true;
      if (cmd == CMD_TRAIN)
        a->rest[a->nrest++] = argv[i];
      break;
    case OPT_KERNEL: a->kernel = val; break;
    case OPT_ITERATIONS:
      if (!parse_int(val, 1, &n) || n > 100000)
        return usage_error("--iterations needs an integer in 1..100000, got '%s'", val);
      a->iterations = (int)n;
      break;
    case OPT_DATA: a->data = val; break;
    case OPT_WRT: a->wrt = val; break;
    case OPT_AT:
      a->at = strtod(val, &end);
      if (*end || end == val || !isfinite(a->at))
        return usage_error("--at needs a finite number, got '%s'", val);
      a->have_at = true;
      break;
    case OPT_ORDER:
      if (!parse_int(val, 1, &n) || n > DIFF_MAX_ORDER)
        return usage_error("--order needs an integer in 1..64, got '%s'", val);
      a->order = (int)n;
      break;
    case OPT_SECONDS:
      a->seconds = strtod(val, &end);
      if (*end || !(a->seconds >= 0.01 && a->seconds <= 60))
        return usage_error("--seconds needs a number from 0.01 to 60, got '%s'", val);
      break;
    case OPT_RUNTIME:
      if (!strcmp(val, "reference")) a->reference = true;
      else if (!strcmp(val, "compiled")) a->reference = false;
      else return usage_error("--runtime is 'compiled' or 'reference', not '%s'", val);
      break;
    case OPT_PRECISION:
      if (!strcmp(val, "f32")) a->precision = 32;
      else if (!strcmp(val, "f64")) a->precision = 64;
      else return usage_error("--precision is 'f32' or 'f64', not '%s'", val);
      break;
    case OPT_PARAMS:
      a->params = val;
      a->param_list[a->nparams++] = val;
      break;
    case OPT_GRID: {
      /* KEY=V,V... words up to the next option; each word may hold several, space-separated. */
      if (val[0] == '-' || !strchr(val, '='))
        return usage_error("%s", "--grid needs KEY=V1,V2,... (e.g. --grid lr=1e-3,3e-3 batch=32,64)");
      for (const char *w = val; w; w = i + 1 < argc && argv[i + 1][0] != '-' &&
                                          strchr(argv[i + 1], '=') ? argv[++i] : NULL) {
        char word[4096], err[512];
        if (strlen(w) >= sizeof word) return usage_error("--grid: '%.60s...' is too long", w);
        strcpy(word, w);
        for (char *save = NULL, *spec = strtok_r(word, " \t", &save); spec; spec = strtok_r(NULL, " \t", &save))
          if (sweep_grid_add(&a->grid, spec, err, sizeof err)) return usage_error("%s", err);
      }
      break;
    }
    case OPT_KEEP: a->keep = val; break;
    case OPT_SELECT: a->select = val; break;
    case OPT_INPUTS: a->inputs = val; break;
    case OPT_TANGENTS: a->tangents = val; break;
    case OPT_HELP:
    case OPT_VERSION:
    case OPT_MAN:
      break; /* main answers these before parsing */
    }
    for (int j = first; opt->repeated && j <= i; j++)
      a->common[a->ncommon++] = argv[j];
  }
  if (!a->model) return usage_error("'%s' needs a MODEL file", a->cmd);
  if (!a->no_cache) {
    cache_dir_from_environment(a->cache_dir, sizeof a->cache_dir);
    a->opt.backend.cache_dir = a->cache_dir;
  }
  return 0;
}

/* Library diagnostics say "error: ..." (or "file:line:col: error: ..."); on the command line,
 * those without a location name the program. */
static void report(const Session *s) {
  rt_color_printf(stderr, "%s%s", !strncmp(s->error, "error: ", 7) ? "kiln: " : "", s->error);
}

/* After a compile: the cache's warning (a directory it could not use or write: compiling went on
 * without it) always, the phase times with --verbose. */
static void report_phases(const Session *s, const Args *a) {
  const SessionTimes *t = &s->times;
  const BackendReport *b = &t->backend;
  if (t->loaded && b->warning[0])
    rt_color_printf(stderr, "kiln: warning: %s\n", b->warning);
  if (!a->verbose)
    return;
  const double ms = 1e3;
  fprintf(stderr, "kiln: %-34s %9.1f ms\n", "frontend (parse, lower, autodiff)", t->frontend * ms);
  if (t->plan > 0)
    fprintf(stderr, "kiln: %-34s %9.1f ms\n", "schedule and memory plan", t->plan * ms);
  if (t->emit > 0)
    fprintf(stderr, "kiln: %-34s %9.1f ms\n", "emit C", t->emit * ms);
  if (t->build > 0)
    fprintf(stderr, "kiln: %-34s %9.1f ms\n", "cc: compile and link the trainer", t->build * ms);
  if (!t->loaded)
    return;
  bool jit = b->kind == BACKEND_JIT;
  static const char *const cache_use[] = {"no cache", "cache hit", "cache miss",
                                          "cache entry invalid, replaced"};
  if (b->cache != CACHE_UNUSED)
    fprintf(stderr, "kiln: %-34s %9.1f ms  (%s)\n", "cache key and lookup", b->key * ms,
            cache_use[b->cache]);
  if (b->cache == CACHE_REPLACED && b->note[0])
    fprintf(stderr, "kiln: cache: %s\n", b->note);
  if (b->cache != CACHE_HIT) {
    if (jit) {
      fprintf(stderr, "kiln: %-34s %9.1f ms\n", "jit: clang (C to LLVM IR)", b->clang * ms);
      fprintf(stderr, "kiln: %-34s %9.1f ms\n", "jit: LLVM optimisation", b->optimise * ms);
      fprintf(stderr, "kiln: %-34s %9.1f ms\n", "jit: code generation", b->codegen * ms);
    } else {
      fprintf(stderr, "kiln: %-34s %9.1f ms\n", "cc: compile and link", b->cc * ms);
    }
  }
  fprintf(stderr, "kiln: %-34s %9.1f ms\n", jit ? "jit: loading and linking" : "cc: loading (dlopen)",
          b->load * ms);
  fprintf(stderr, "kiln: %-34s %9.1f ms%s\n", "model to loaded program",
          (t->frontend + t->plan + t->emit + t->load) * ms,
          b->cache == CACHE_HIT ? "  (cache hit: nothing compiled)" : "");
}

/* Runs fn(s, a, out) under a trap, writing to a fresh temporary file in the output's directory
 * that replaces a->out only on success, so a failed command never leaves a partial output file
 * (and a name planted beside it is never followed). */
typedef void (*Writer)(Session *s, const Args *a, FILE *out);

static int write_output(Session *s, const Args *a, Writer fn) {
  const char *path = a->out;
  bool to_stdout = !path || !strcmp(path, "-");
  char tmp[4096], target[4096], err[RT_ERR_LEN];
  FILE *volatile f = stdout;
  int in_place = to_stdout ? 0 : rt_write_target(path, target, sizeof target, err);
  if (in_place < 0) {
    rt_color_printf(stderr, "kiln: error: %s\n", err);
    return 1;
  }
  if (in_place) {
    /* a pipe, a device or /dev/stdout: written as it is */
    if (!(f = fopen(path, "w"))) {
      rt_color_printf(stderr, "kiln: error: cannot write '%s': %s\n", path, strerror(errno));
      return 1;
    }
  } else if (!to_stdout) {
    int fd = -1;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", target) < sizeof tmp)
      fd = mkstemp(tmp);
    f = fd < 0 ? NULL : fdopen(fd, "w");
    if (!f) {
      rt_color_printf(stderr, "kiln: error: cannot write '%s': %s\n", path, strerror(errno));
      if (fd >= 0) {
        close(fd);
        remove(tmp);
      }
      return 1;
    }
  }
  Trap t;
  int rc = 0;
  if (KILN_TRY(&t)) {
    fn(s, a, f);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    rt_color_puts(stderr, t.msg);
    rc = 1;
  }
  if (!to_stdout) {
    if (fclose(f) != 0 && rc == 0) {
      rt_color_printf(stderr, "kiln: error: cannot write '%s': %s\n", path, strerror(errno));
      rc = 1;
    }
    if (!in_place && rc == 0 && rename(tmp, target) != 0) {
      rt_color_printf(stderr, "kiln: error: cannot write '%s': %s\n", path, strerror(errno));
      rc = 1;
    }
    if (rc && !in_place) remove(tmp);
  }
  return rc;
}

/* ---- kiln shapes ---- */

static void group_digits(int64_t v, char *buf, size_t n) {
  char raw[32];
  snprintf(raw, sizeof raw, "%lld", (long long)v);
  size_t len = strlen(raw), j = 0;
  for (size_t i = 0; i < len && j + 2 < n; i++) {
    if (i && (len - i) % 3 == 0) buf[j++] = ',';
    buf[j++] = raw[i];
  }
  buf[j] = 0;
}

static double entry_flops(Graph *g, EntryKind e, const int64_t *symvals) {
  unsigned char *mark = calloc((size_t)g->nnodes, 1);
  if (!mark) kiln_fail((Loc){0}, "out of memory");
  ir_reachable(g, e, mark);
  double total = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (mark[i]) total += shape_flops(g, ir_at(g, i), symvals);
  free(mark);
  return total;
}

/* The parameter a layer's product reads as its weight (through a reshape: conv1d), or NULL. */
static const Node *layer_weight_of(Graph *g, const Node *n) {
  if ((n->op != OP_MATMUL && n->op != OP_CONV2D) || n->nin < 2)
    return NULL;
  const Node *w = ir_at(g, n->in[1]);
  if (w->op == OP_RESHAPE)
    w = ir_at(g, w->in[0]);
  return w->op == OP_PARAM && w->name ? w : NULL;
}

/* Seed 004 §2.5's three measures of a network's size, per layer of the forward pass: output
 * units (what training stores for the backward pass), weights (what it stores and updates), and
 * connections (multiply-adds per example: about three per connection for a training step). A
 * fully connected layer has as many connections as weights; a convolution reuses each weight at
 * every output position. */
static void write_layer_sizes(Graph *g, const unsigned char *forward, FILE *out) {
  int64_t one[IR_MAX_SYMS] = {1};
  int64_t units = 0, weights = 0, connections = 0;
  char u[32], w[32], c[32];
  bool header = false;
  for (int i = 0; i <= g->loss_train && i < g->nnodes; i++) {
    const Node *n = ir_at(g, i), *wt = forward[i] ? layer_weight_of(g, n) : NULL;
    if (!wt)
      continue;
    int64_t nu = shape_numel(&n->shape, one), nw = shape_numel(&wt->shape, one);
    int64_t nc = nw;
    if (n->op == OP_CONV2D) /* each output position of each map: kh kw C/groups products */
      nc = nu * nw / n->shape.d[1].n;
    if (!header)
      fprintf(out, "\nlayer sizes (seed 004, 2.5), per example:\n  %-24s %14s %14s %14s\n",
              "layer", "output units", "weights", "connections");
    header = true;
    size_t len = strlen(wt->name);
    int stem = len > 7 && !strcmp(wt->name + len - 7, ".weight") ? (int)len - 7 : (int)len;
    group_digits(nu, u, sizeof u), group_digits(nw, w, sizeof w), group_digits(nc, c, sizeof c);
    fprintf(out, "  %-24.*s %14s %14s %14s\n", stem, wt->name, u, w, c);
    units += nu, weights += nw, connections += nc;
  }
  if (!header)
    return;
  group_digits(units, u, sizeof u), group_digits(weights, w, sizeof w);
  group_digits(connections, c, sizeof c);
  fprintf(out, "  %-24s %14s %14s %14s\n", "total", u, w, c);
}

static void write_shapes(Session *s, const Args *a, FILE *out) {
  (void)a;
  Graph *g = s->g;
  char sb[128], nb[32];
  unsigned char *used = calloc((size_t)g->nnodes, 1), *m = calloc((size_t)g->nnodes, 1);
  if (!used || !m) kiln_fail((Loc){0}, "out of memory");
  for (int e = 0; e < ENTRY_COUNT; e++) {
    ir_reachable(g, e, m);
    for (int i = 0; i < g->nnodes; i++) used[i] |= m[i];
  }
  fprintf(out, "model %s", g->name);
  if (g->nsyms) fprintf(out, " (batch symbol %s)", g->syms[0]);
  fprintf(out, "\n\nforward graph (training mode):\n");
  ir_reachable(g, ENTRY_GRAD, m);  /* forward + backward; show only forward nodes: ids <= loss */
  for (int i = 0; i <= g->loss_train && i < g->nnodes; i++) {
    Node *n = ir_at(g, i);
    if (!m[i] || (n->op == OP_CONST && n->data < 0)) continue;
    fprintf(out, "  %%%-4d %-18s %-14s %s%s\n", i, n->name ? n->name : "", op_names[n->op],
            dtype_name(n->dtype), shape_str(g, &n->shape, sb, sizeof sb));
  }
  fprintf(out, "\nparameters:\n");
  int64_t total = 0;
  for (int i = 0; i < g->nparams; i++) {
    Node *n = ir_at(g, g->params[i]);
    int64_t count = shape_numel(&n->shape, (int64_t[IR_MAX_SYMS]){1});
    total += count;
    group_digits(count, nb, sizeof nb);
    fprintf(out, "  %-24s %s%-16s %12s\n", n->name, dtype_name(n->dtype),
            shape_str(g, &n->shape, sb, sizeof sb), nb);
  }
  bool header = false;
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = ir_at(g, i);
    if (n->op != OP_STATE || n->role != ROLE_STATE) continue;
    if (!header) fprintf(out, "\nbuffers (saved, not learned):\n");
    header = true;
    fprintf(out, "  %-24s %s%s\n", n->name, dtype_name(n->dtype), shape_str(g, &n->shape, sb, sizeof sb));
  }
  group_digits(total, nb, sizeof nb);
  fprintf(out, "\ntotal parameters: %s\n", nb);
  ir_reachable(g, ENTRY_GRAD, m);
  write_layer_sizes(g, m, out);
  int64_t batch = session_batch(s);
  int64_t symvals[IR_MAX_SYMS] = {batch};
  double per = g->nsyms ? (double)batch : 1.0;
  double fwd = entry_flops(g, ENTRY_EVAL, symvals) / per;
  double trn = entry_flops(g, ENTRY_TRAIN, symvals) / per;
  fprintf(out, "forward FLOPs per example: %.4g (%.1f MFLOP)\n", fwd, fwd / 1e6);
  fprintf(out, "training FLOPs per example: %.4g (%.1f MFLOP; batch %lld step: %.1f MFLOP)\n",
          trn, trn / 1e6, (long long)batch, trn * per / 1e6);
  free(used);
  free(m);
}

/* ---- kiln graph / ir / emit ---- */

/* ---- kiln import ---- */

static void write_imported(Session *s, const Args *a, FILE *out) {
  (void)a;
  fputs(s->onnx->text, out);
}

/* The model text to -o (or stdout) and, with -o, the initial values beside it as
 * <stem>.safetensors, which the text's header names. */
static int cmd_import(Session *s, const Args *a) {
  if (!s->onnx) {
    rt_color_printf(stderr, "kiln: error: %s is not an ONNX file (import reads *.onnx)\n", a->model);
    return 2;
  }
  const OxModel *m = s->onnx;
  char values[4096] = "";
  bool to_file = a->out && strcmp(a->out, "-");
  if (m->ninit && to_file) {
    const char *dot = strrchr(a->out, '.'), *slash = strrchr(a->out, '/');
    int stem = dot && (!slash || dot > slash) ? (int)(dot - a->out) : (int)strlen(a->out);
    if (snprintf(values, sizeof values, "%.*s.safetensors", stem, a->out) >= (int)sizeof values) {
      rt_color_printf(stderr, "kiln: error: the name '%s' is too long\n", a->out);
      return 1;
    }
    int n;
    RtNamedTensor *ts = session_init_tensors(s, &n);
    char err[RT_ERR_LEN];
    if (!ts) return rt_color_printf(stderr, "kiln: error: out of memory\n"), 1;
    int rc = rt_safetensors_save(values, ts, n, err);
    free(ts);
    if (rc) {
      rt_color_printf(stderr, "kiln: error: %s\n", err);
      return 1;
    }
  }
  int rc = write_output(s, a, write_imported);
  if (rc == 0 && m->ninit)
    fprintf(stderr, values[0] ? "kiln: %d initial values in %s: train from them with "
            "--init-from %s\n" : "kiln: %d initial values not written (give -o FILE.kiln to write "
            "them beside it)%s%s\n", m->ninit, values, values);
  return rc;
}

static void write_dot(Session *s, const Args *a, FILE *out) {
  graph_print_dot(s, a->train_graph, out);
}

/* The kernels are the schedule's and the code generator's: planned first. */
static int cmd_graph(Session *s, const Args *a) {
  if (a->train_graph && s->g->loss_train < 0) {
    session_fail(s, "model %s minimizes nothing, so it has no training graph (without --train, "
                    "kiln graph draws its evaluation)", s->g->name);
    report(s);
    return 1;
  }
  if (session_plan(s)) {
    report(s);
    return 1;
  }
  return write_output(s, a, write_dot);
}

static void write_ir(Session *s, const Args *a, FILE *out) {
  (void)a;
  ir_print(s->g, out);
}

static void write_c(Session *s, const Args *a, FILE *out) {
  (void)a;
  fwrite(s->c.p, 1, s->c.len, out);
}

static int cmd_emit(Session *s, const Args *a) {
  if (session_emit(s)) {
    report(s);
    return 1;
  }
  return write_output(s, a, write_c);
}

/* ---- kiln schedule ---- */

static void write_schedule(Session *s, const Args *a, FILE *out) {
  (void)a;
  sched_print(s->g, s->plan.sched, out);
  fputc('\n', out);
  plan_print(s->g, &s->plan, out);
}

static int cmd_schedule(Session *s, const Args *a) {
  if (session_plan(s)) {
    report(s);
    return 1;
  }
  return write_output(s, a, write_schedule);
}

/* ---- kiln build ---- */

static int cmd_build(Session *s, const Args *a) {
  if (!a->out) return usage_error("%s", "build needs -o TRAINER");
  if (a->verbose) {
    BackendOptions d;
    aot_default_options(&d);
    const char *rt = a->opt.backend.runtime_dir;
    fprintf(stderr, "kiln: trainer runtime %s\n", rt && *rt ? rt : d.runtime_dir);
  }
  if (session_build_trainer(s, a->out)) {
    report(s);
    return 1;
  }
  fprintf(stderr, "kiln: wrote trainer %s\n", a->out);
  int n;
  RtNamedTensor *init = session_init_tensors(s, &n);
  if (n) { /* an ONNX model's initializers, for the trainer's --init-from */
    char path[4200], err[RT_ERR_LEN];
    snprintf(path, sizeof path, "%s.safetensors", a->out);
    int rc = !init ? (snprintf(err, sizeof err, "out of memory"), -1)
                   : rt_safetensors_save(path, init, n, err);
    free(init);
    if (rc) {
      rt_color_printf(stderr, "kiln: error: %s\n", err);
      return 1;
    }
    fprintf(stderr, "kiln: wrote the ONNX initializers to %s: start from them with %s "
            "--init-from %s\n", path, a->out, path);
  }
  return 0;
}

/* ---- kiln train ---- */

/* The compiled runtime for `kiln train`: the generated C compiled and loaded in process. */
static int train_compiled(Session *s, const Args *a, RtOptions *o) {
  if (session_load(s)) {
    report(s);
    return 1;
  }
  report_phases(s, a);
  RtBackend be;
  char err[RT_ERR_LEN];
  if (rt_arena_backend_new(s->prog, &be, err)) {
    rt_color_printf(stderr, "kiln: error: %s\n", err);
    return 1;
  }
  int rc = rt_train(&be, o);
  rt_arena_backend_free(&be);
  return rc;
}

static int train_reference(Session *s, const Args *a, RtOptions *o) {
  RtBackend be;
  if (session_reference(s, a->precision, &be)) {
    report(s);
    return 1;
  }
  if (interp_stop_at_faults(s->ref, true)) {
    rt_color_printf(stderr, "kiln: error: out of memory\n");
    return 1;
  }
  return rt_train(&be, o);
}

static int cmd_train(Session *s, const Args *a) {
  RtOptions o;
  rt_options_default(&o);
  char **argv = calloc((size_t)a->nrest + 2, sizeof(char *));
  if (!argv) return 1;
  argv[0] = "kiln train";
  for (int i = 0; i < a->nrest; i++) argv[i + 1] = a->rest[i];
  int rc = rt_options_parse(&o, a->nrest + 1, argv, "kiln train");
  free(argv);
  if (rc) return rc > 0 ? 0 : 2;
  /* The runtime would open it and, for a FIFO, wait for a writer forever. */
  const char *why = o.load_path ? kiln_not_regular_file(o.load_path) : NULL;
  if (why) {
    rt_color_printf(stderr, "kiln: error: %s: %s\n", o.load_path, why);
    return 1;
  }
  if (!o.threads)
    o.threads = a->opt.sched.threads;
  /* An imported model starts from its initializers unless the options say otherwise. */
  RtNamedTensor *init = session_init_tensors(s, &o.ninit_tensors);
  if (o.ninit_tensors && !init) return rt_color_printf(stderr, "kiln: error: out of memory\n"), 1;
  o.init_tensors = init;
  o.init_source = a->model;
  rc = a->reference ? train_reference(s, a, &o) : train_compiled(s, a, &o);
  free(init);
  return rc;
}

/* ---- kiln tune ---- */

/* The model's text, for the tuning file's key; NULL if it cannot be read (the session will say
 * why). */
static char *model_text(Pool *pool, const char *path) {
  size_t len;
  return read_file(pool, path, &len);
}

/* Points the options at what `kiln tune` stored for this model and these options, if anything. */
static void use_tuning(Args *a) {
  if (a->no_cache || a->no_tune)
    return;
  Pool *pool = pool_new();
  const char *text = model_text(pool, a->model);
  if (text && !tune_file_path(a->cache_dir, text, &a->opt, KILN_VERSION, a->tune_path,
                              sizeof a->tune_path)) {
    int got = tune_load(a->tune_path, &a->tuning);
    if (got > 0) {
      a->opt.sched.tuning = &a->tuning;
      if (a->verbose)
        fprintf(stderr, "kiln: using the schedule kiln tune measured: %s\n", a->tune_path);
    } else if (got < 0) {
      rt_color_printf(stderr, "kiln: warning: ignoring %s: not a tuning file\n", a->tune_path);
    }
  }
  pool_free(pool);
}

static int cmd_tune(Args *a) {
  if (a->no_cache || !a->cache_dir[0])
    return usage_error("%s", "tune stores what it measures in the cache: it needs one "
                             "(no --no-cache; $XDG_CACHE_HOME or $HOME)");
  Pool *pool = pool_new();
  const char *text = model_text(pool, a->model);
  char err[4096];
  TuneResult r;
  int rc = 1;
  if (!text) {
    rt_color_printf(stderr, "kiln: error: cannot read %s: %s\n", a->model, strerror(errno));
  } else if (tune_file_path(a->cache_dir, text, &a->opt, KILN_VERSION, a->tune_path,
                            sizeof a->tune_path)) {
    rt_color_printf(stderr, "kiln: error: the cache directory path is too long\n");
  } else if (tune_model(a->model, &a->opt, a->seconds, stderr, &r, err, sizeof err)) {
    rt_color_printf(stderr, "%s%s%s", !strncmp(err, "error: ", 7) ? "kiln: " : "", err,
            err[0] && err[strlen(err) - 1] == '\n' ? "" : "\n");
  } else {
    char comment[512];
    snprintf(comment, sizeof comment,
             "kiln tune %s, %d thread(s): %.3f ms per train step tuned, %.3f default", a->model,
             a->opt.sched.threads, r.tuned_ms, r.default_ms);
    if (!tune_save(a->tune_path, &r.tuning, comment, err, sizeof err)) {
      printf("tune: %s on %d thread(s), %d schedules tried: %.3f ms per train step tuned, "
             "%.3f default (%+.1f%%)\n",
             a->model, a->opt.sched.threads, r.candidates, r.tuned_ms, r.default_ms,
             100 * (r.tuned_ms / r.default_ms - 1));
      if (!r.kept)
        printf("tune: the default schedule is as fast; kept it\n");
      for (int k = 0; k < r.tuning.nconv; k++)
        printf("  %%%d: %s\n", r.tuning.conv_node[k], sched_conv_name(r.tuning.conv_algo[k]));
      if (r.tuning.gemm.kc > 0)
        printf("  GEMM tiles: kc %lld, mc %lld, nc %lld\n", (long long)r.tuning.gemm.kc,
               (long long)r.tuning.gemm.mc, (long long)r.tuning.gemm.nc);
      printf("tune: stored in %s; build, train and check use it (--no-tune: not)\n",
             a->tune_path);
      rc = 0;
    } else {
      rt_color_printf(stderr, "kiln: %s\n", err);
    }
  }
  pool_free(pool);
  return rc;
}

/* ---- kiln sweep ---- */

/* The sweep's way to a program at a batch: the options of the command line with that batch
 * (and what `kiln tune` measured for it), loaded through the cache, reported like `kiln train`. */
static int open_for_batch(void *ctx, int64_t batch, Session *s) {
  Args *a = ctx;
  if (batch > 0)
    a->opt.batch = batch;
  a->opt.sched.tuning = NULL;
  use_tuning(a);
  if (session_open_file(s, a->model, &a->opt) || session_load(s)) {
    report(s);
    return -1;
  }
  report_phases(s, a);
  return 0;
}

static int cmd_sweep(Args *a) {
  if (!a->grid.naxes)
    return usage_error("%s", "sweep needs --grid KEY=V1,V2,... (e.g. --grid lr=1e-3,3e-3 batch=32,64)");
  if (a->reference)
    return usage_error("%s", "sweep trains the compiled step (no --runtime reference)");
  SweepPlan plan = {
      .model = a->model, .grid = &a->grid, .ntrainer = a->nrest, .trainer = a->rest,
      .ncommon = a->ncommon, .common = a->common, .batch = a->opt.batch,
      .threads = a->opt.sched.threads,
      .csv_path = a->out ? a->out : "sweep.csv",
      .keep_path = a->keep, .open = open_for_batch, .ctx = a, .log = stderr, .out = stdout};
  char err[512];
  if (sweep_select_parse(a->select ? a->select : "val_loss", &plan.select, err, sizeof err))
    return usage_error("%s", err);
  return sweep_run(&plan);
}

/* ---- kiln evaluate ---- */

/* How the model's output reads as class probabilities: softmax(...) and log_softmax(...) over the
 * last axis already are (the log of) them; anything else is taken as logits. */
static int output_scores(const Graph *g) {
  if (g->output_eval < 0)
    return RT_SCORES_LOGITS;
  const Node *n = ir_at((Graph *)g, g->output_eval);
  if ((n->op == OP_SOFTMAX || n->op == OP_LOG_SOFTMAX) && n->attr.axis == n->shape.rank - 1)
    return n->op == OP_SOFTMAX ? RT_SCORES_PROBABILITIES : RT_SCORES_LOG_PROBABILITIES;
  return RT_SCORES_LOGITS;
}

/* " test_loss=0.5123 test_accuracy=0.8100 test_psnr=20.1234": the figures the model has. */
static void print_figures(const RtEvalFigures *f, const RtEnsembleReport *r, bool metrics) {
  if (!isnan(f->loss)) printf(" test_loss=%.4f", f->loss);
  if (!isnan(f->accuracy)) printf(" test_accuracy=%.4f", f->accuracy);
  for (int m = 0; metrics && m < r->nmetrics; m++)
    if (!isnan(f->metrics[m])) printf(" test_%s=%.4f", r->metric_names[m], f->metrics[m]);
  printf("\n");
}

static int cmd_evaluate(Session *s, Args *a) {
  if (!a->nparams)
    return usage_error("%s", "evaluate needs --params FILE.safetensors (repeat it for an ensemble)");
  for (int i = 0; i < a->nrest; i++) {
    const char *w = a->rest[i];
    size_t len = strcspn(w, "=");
    bool ok = false;
    for (int k = 0; k < cli_nevaluate_trainer_options; k++)
      ok |= rt_option_spelled(cli_evaluate_trainer_options[k], w, len);
    if (!ok)
      return usage_error("evaluate takes --data, --limit-test, --normalize, --seed, --threads and "
                         "--quiet of the trainer options, not '%s'", w);
    if (rt_option_takes_value(w))
      i++;
  }
  RtOptions o;
  rt_options_default(&o);
  char **argv = calloc((size_t)a->nrest + 2, sizeof(char *));
  if (!argv) return 1;
  argv[0] = "kiln evaluate";
  for (int i = 0; i < a->nrest; i++) argv[i + 1] = a->rest[i];
  int rc = rt_options_parse(&o, a->nrest + 1, argv, "kiln evaluate");
  free(argv);
  if (rc) return rc > 0 ? 0 : 2;
  if (!o.threads)
    o.threads = a->opt.sched.threads;
  RtBackend be;
  char err[RT_ERR_LEN];
  bool arena = !a->reference;
  if (a->reference) {
    if (session_reference(s, a->precision, &be)) {
      report(s);
      return 1;
    }
  } else {
    if (session_load(s)) {
      report(s);
      return 1;
    }
    report_phases(s, a);
    if (rt_arena_backend_new(s->prog, &be, err)) {
      rt_color_printf(stderr, "kiln: error: %s\n", err);
      return 1;
    }
  }
  RtEvalFigures *members = calloc((size_t)a->nparams, sizeof *members);
  RtEnsembleReport report;
  int kind = output_scores(s->g);
  rc = 1;
  if (!members)
    rt_color_printf(stderr, "kiln: error: out of memory\n");
  else if (rt_evaluate_checkpoints(&be, &o, a->param_list, a->nparams, kind, members, &report, err))
    rt_color_printf(stderr, "kiln evaluate: error: %s\n", err);
  else
    rc = 0;
  if (!rc) {
    if (!o.quiet)
      fprintf(stderr, "evaluate: %lld test examples of %s, in batches of %lld\n",
              (long long)report.examples, o.data_dir, (long long)be.prog->batch);
    for (int i = 0; i < a->nparams; i++) {
      printf("%s:", a->param_list[i]);
      print_figures(&members[i], &report, true);
    }
    if (a->nparams > 1 && report.scored) {
      printf("ensemble of %d:", a->nparams);
      print_figures(&report.ensemble, &report, false);
      if (!o.quiet)
        fprintf(stderr, "evaluate: the ensemble predicts the argmax of the mean of the members' "
                "class probabilities (%s); its loss is the mean of -log of that mean at the "
                "label\n", kind == RT_SCORES_LOGITS ? "softmax of the output"
                            : kind == RT_SCORES_PROBABILITIES ? "the softmax output"
                                                              : "exp of the log_softmax output");
    } else if (a->nparams > 1 && !o.quiet) {
      fprintf(stderr, "evaluate: the ensemble is not scored: the output is not class scores with "
              "labels, and the model's loss and metrics are computed from its own output, so they "
              "are given per member\n");
    }
    fflush(stdout);
  }
  free(members);
  if (arena)
    rt_arena_backend_free(&be);
  return rc;
}

/* ---- kiln check / grad / jvp / hvp ---- */

/* The checks print their results on stdout; a failure that is not a disagreement (a file, the
 * compiler) leaves a diagnostic. */
static int checked(Session *s, int rc) {
  if (rc && s->error[0]) report(s);
  return rc;
}

static int cmd_check(Session *s, const Args *a) {
  if (a->kernel)
    return checked(s, check_kernel(s, a->kernel, s->g->train.seed, stdout));
  return checked(s, check_model(s, a->steps, s->g->train.seed, stdout));
}

static int cmd_grad(Session *s, const Args *a) {
  if (!a->params || !a->inputs || !a->out)
    return usage_error("%s", "grad needs --params P.safetensors --inputs I.safetensors -o G.safetensors");
  return checked(s, grad_model(s, a->params, a->inputs, a->out, a->reference, stdout));
}

static int cmd_curvature(Session *s, const Args *a) {
  CurvatureOptions co = {.params = a->params, .data = a->data, .seed = s->g->train.seed,
                         .iterations = a->iterations ? a->iterations : 200, .lanczos_steps = 30};
  return checked(s, curvature_model(s, &co, stdout));
}

static int cmd_diff(Session *s, const Args *a) {
  if (!a->wrt || !a->have_at)
    return usage_error("%s", "diff needs --wrt X --at V (and --order N for derivatives past the "
                       "first)");
  return checked(s, diff_model(s, a->wrt, a->at, a->order ? a->order : 1, stdout));
}

static int cmd_forward(Session *s, const Args *a, bool hvp) {
  if (!a->params || !a->inputs || !a->tangents || !a->out)
    return usage_error("%s needs --params P.safetensors --inputs I.safetensors --tangents "
                       "T.safetensors -o OUT.safetensors", a->cmd);
  return checked(s, forward_model(s, hvp, a->params, a->inputs, a->tangents, a->out,
                                  a->reference, stdout));
}

/* The command after its arguments were parsed: checks of which options go with which command,
 * then the session and the command's function. */
static int run_command(Args *a) {
  /* Which options go with which command the parser has checked (cli.c's table). */
  const char *cmd = a->cmd;
  bool sweep = !strcmp(cmd, "sweep"), evaluate = !strcmp(cmd, "evaluate");
  if (a->nparams > 1 && !evaluate)
    return usage_error("%s takes one --params (several make an ensemble for evaluate)", cmd);
  a->opt.jvp = !strcmp(cmd, "jvp") || !strcmp(cmd, "gradcheck");
  a->opt.hvp |= !strcmp(cmd, "hvp") || !strcmp(cmd, "curvature");
  a->opt.no_training = !strcmp(cmd, "diff");
  if (!strcmp(cmd, "tune"))
    return cmd_tune(a);
  if (!strcmp(cmd, "plot")) { /* a CSV, not a model */
    char err[RT_ERR_LEN];
    if (!a->out)
      return usage_error("%s", "plot needs -o CURVES.svg");
    if (rt_plot_csv(a->model, a->out, err)) {
      rt_color_printf(stderr, "kiln: error: %s\n", err);
      return 1;
    }
    return 0;
  }
  use_tuning(a);
  Session s;
  int rc;
  if (session_open_file(&s, a->model, &a->opt)) {
    report(&s);
    session_close(&s);
    return 1;
  }
  if (!strcmp(cmd, "shapes")) rc = write_output(&s, a, write_shapes);
  else if (!strcmp(cmd, "graph")) rc = cmd_graph(&s, a);
  else if (!strcmp(cmd, "import")) rc = cmd_import(&s, a);
  else if (!strcmp(cmd, "ir")) rc = write_output(&s, a, write_ir);
  else if (!strcmp(cmd, "emit")) rc = cmd_emit(&s, a);
  else if (!strcmp(cmd, "schedule")) rc = cmd_schedule(&s, a);
  else if (!strcmp(cmd, "build")) rc = cmd_build(&s, a);
  else if (!strcmp(cmd, "train")) rc = cmd_train(&s, a);
  else if (sweep) rc = cmd_sweep(a);
  else if (evaluate) rc = cmd_evaluate(&s, a);
  else if (!strcmp(cmd, "check")) rc = cmd_check(&s, a);
  else if (!strcmp(cmd, "jvp")) rc = cmd_forward(&s, a, false);
  else if (!strcmp(cmd, "hvp")) rc = cmd_forward(&s, a, true);
  else if (!strcmp(cmd, "diff")) rc = cmd_diff(&s, a);
  else if (!strcmp(cmd, "curvature")) rc = cmd_curvature(&s, a);
  else if (!strcmp(cmd, "gradcheck")) rc = checked(&s, gradcheck_model(&s, s.g->train.seed, stdout));
  else rc = cmd_grad(&s, a);
  /* train and evaluate reported before they started; a sweep's runs report their own. */
  if ((strcmp(cmd, "train") && !sweep && !evaluate) || a->reference)
    report_phases(&s, a);
  session_close(&s);
  return rc;
}

int main(int argc, char **argv) {
  /* Colour as asked, before anything is printed (a usage error included); the parser checks
   * --color's value. The command line wins over $NO_COLOR, which wins over auto. */
  rt_color_set(rt_color_wanted(rt_color_scan(argc, argv), isatty(STDERR_FILENO),
                               getenv("NO_COLOR"), getenv("TERM")));
  Args a;
  memset(&a, 0, sizeof a);
  /* Options before the command: those of every command that may come there, or one that
   * stands instead of a command (--help, --version, --man). */
  while (argc > 1 && argv[1][0] == '-') {
    const char *s = argv[1];
    size_t klen = strcspn(s, "=");
    const CliOption *elsewhere = NULL, *o = cli_option(s, klen, -1, &elsewhere);
    if (!o && elsewhere) {
      char key[64];
      snprintf(key, sizeof key, "%.*s", (int)(klen < sizeof key ? klen : sizeof key - 1), s);
      return usage_error("%s comes after the command (kiln COMMAND MODEL ... OPTION)", key);
    }
    if (!o) {
      const char *own[64];
      char hint[64], key[64];
      snprintf(key, sizeof key, "%.*s", (int)(klen < sizeof key ? klen : sizeof key - 1), s);
      int nown = own_option_names(own, 64);
      rt_color_printf(stderr, "kiln: error: unknown option '%s'%s\n(run 'kiln --help' for usage)\n",
              key, rt_option_hint(key, own, nown, hint, sizeof hint));
      return 2;
    }
    int words = 1;
    if (o->id == OPT_HELP) {
      cli_help(stdout);
      return 0;
    } else if (o->id == OPT_VERSION) {
      printf("kiln %s (backends: %s)\n", KILN_VERSION, backend_list());
      return 0;
    } else if (o->id == OPT_MAN) {
      cli_man(stdout, KILN_VERSION);
      return fflush(stdout) ? 1 : 0;
    } else if (o->id == OPT_VERBOSE) {
      a.verbose = true;
    } else if (o->id == OPT_NO_CACHE) {
      a.no_cache = true;
    } else if (o->id == OPT_COLOR) {
      RtColorMode mode;
      const char *val = s[klen] ? s + klen + 1 : argc > 2 ? argv[2] : NULL;
      words += !s[klen];
      if (!val || rt_color_parse(val, &mode))
        return usage_error("--color is 'auto', 'always' or 'never', not '%s'", val ? val : "");
    }
    for (int k = 0; k < words; k++) {  /* the command moves up to argv[1] */
      argv[1] = argv[0];
      argv++;
      argc--;
    }
  }
  if (argc < 2) {
    cli_usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "help")) {
    cli_help(stdout);
    return 0;
  }
  int cmd = cli_command(argv[1]);
  if (cmd < 0) return usage_error("unknown command '%s'", argv[1]);
  for (int i = 2; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      cli_command_help(stdout, cmd);
      return 0;
    }
  int rc = parse_args(argc, argv, &a);
  if (!rc)
    rc = run_command(&a);
  sweep_grid_free(&a.grid);
  free(a.rest);
  free(a.common);
  free(a.param_list);
  return rc;
}
