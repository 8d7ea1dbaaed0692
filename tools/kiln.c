/*
 * kiln.c — the command-line driver: one function per subcommand, each a thin sequence of
 * phase calls (frontend → train_build → plan → cg / interp), so reading it shows the pipeline.
 *
 * Exit codes: 0 success, 1 bad input or a failed check (message on stderr), 2 bad usage.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver/driver.h"
#include "backend/backend.h"
#include "cg/cg.h"
#include "front/front.h"
#include "ref/ref.h"
#include "xform/xform.h"
#include "runtime.h"

static const char usage[] =
    "usage: kiln <command> MODEL [options]\n"
    "\n"
    "commands:\n"
    "  shapes MODEL                  every node's shape, the parameters and FLOPs per example\n"
    "  graph MODEL [--train]         the forward (or whole training) graph as Graphviz DOT\n"
    "  ir MODEL                      the typed IR with all entry points (train, eval, grad)\n"
    "  emit MODEL [-o step.c]        the whole training step as one C11 translation unit\n"
    "  schedule MODEL                how each kernel is computed, and the memory plan\n"
    "  build MODEL -o TRAINER        a standalone trainer executable (system C compiler)\n"
    "  train MODEL [trainer options] train inside kiln (--runtime compiled|reference)\n"
    "  check MODEL [--steps N]       generated code against the reference runtime\n"
    "  grad MODEL --params P.safetensors --inputs I.safetensors -o G.safetensors\n"
    "                                [--runtime compiled|reference]  loss and gradients\n"
    "  jvp MODEL --params P --inputs I --tangents T -o OUT [--runtime ...]\n"
    "                                directional derivatives of the loss and the output\n"
    "  hvp MODEL --params P --inputs I --tangents T -o OUT [--runtime ...]\n"
    "                                Hessian of the loss times T, per parameter\n"
    "\n"
    "common options:\n"
    "  --batch N       batch size to specialise for (default: the model's train block)\n"
    "  --threads N     threads the generated code splits each batch over (default: the cores;\n"
    "                  also $KILN_THREADS); the split is fixed, so runs are reproducible\n"
    "                  ($KILN_CONV=gemm|direct forces a convolution algorithm, $KILN_FUSE=0\n"
    "                  turns elementwise fusion off)\n"
    "  -o FILE         output file ('-' for stdout where text)\n"
    "\n"
    "trainer options (train, and every built trainer):\n"
    "  --data DIR --epochs N --lr X --seed S --save FILE --load FILE --metrics FILE.csv\n"
    "  --limit-train N --limit-test N --patience N --quiet\n";

typedef struct Args {
  const char *cmd, *model, *out, *params, *inputs, *tangents;
  int64_t batch;
  int steps;
  bool train_graph, reference;
  int precision;          /* 0: model's, 32, 64 (reference runtime) */
  int nrest;              /* options passed on to the trainer */
  char **rest;
  SchedOptions sched;     /* from --threads and $KILN_THREADS, $KILN_CONV, $KILN_FUSE */
} Args;

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "kiln: error: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n(run 'kiln --help' for usage)\n");
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

static int parse_args(int argc, char **argv, Args *a) {
  memset(a, 0, sizeof *a);
  a->steps = 3;
  a->rest = calloc((size_t)argc + 1, sizeof(char *));
  if (!a->rest) return usage_error("%s", "out of memory");
  /* The library reads no environment and asks the machine nothing: the CLI decides for it. */
  sched_default_options(&a->sched);
  const char *env = getenv("KILN_THREADS");
  long threads = env && *env ? strtol(env, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
  a->sched.threads = threads < 1 ? 1 : threads > 64 ? 64 : (int)threads;
  env = getenv("KILN_CONV");
  if (env && !strcmp(env, "gemm")) a->sched.conv = CONV_GEMM;
  else if (env && !strcmp(env, "direct")) a->sched.conv = CONV_DIRECT;
  env = getenv("KILN_FUSE");
  a->sched.fuse = !(env && !strcmp(env, "0"));
  a->cmd = argv[1];
  for (int i = 2; i < argc; i++) {
    const char *s = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    int64_t n;
#define NEED_VALUE() \
  if (!val) return usage_error("option %s needs a value", s); \
  i++
    if (!strcmp(s, "-o")) {
      NEED_VALUE();
      a->out = val;
    } else if (!strcmp(s, "--batch")) {
      NEED_VALUE();
      if (!parse_int(val, 1, &n)) return usage_error("--batch needs a positive integer, got '%s'", val);
      a->batch = n;
    } else if (!strcmp(s, "--steps")) {
      NEED_VALUE();
      if (!parse_int(val, 0, &n) || n > 1000000) return usage_error("--steps needs an integer >= 0, got '%s'", val);
      a->steps = (int)n;
    } else if (!strcmp(s, "--threads")) {
      NEED_VALUE();
      if (!parse_int(val, 1, &n) || n > 256) return usage_error("--threads needs an integer in 1..256, got '%s'", val);
      /* The number of batch chunks compiled into the parallel kernels. */
      a->sched.threads = n > 64 ? 64 : (int)n;
    } else if (!strcmp(s, "--train")) {
      a->train_graph = true;
    } else if (!strcmp(s, "--runtime")) {
      NEED_VALUE();
      if (!strcmp(val, "reference")) a->reference = true;
      else if (!strcmp(val, "compiled")) a->reference = false;
      else return usage_error("--runtime is 'compiled' or 'reference', not '%s'", val);
    } else if (!strcmp(s, "--precision")) {
      NEED_VALUE();
      if (!strcmp(val, "f32")) a->precision = 32;
      else if (!strcmp(val, "f64")) a->precision = 64;
      else return usage_error("--precision is 'f32' or 'f64', not '%s'", val);
    } else if (!strcmp(s, "--params")) {
      NEED_VALUE();
      a->params = val;
    } else if (!strcmp(s, "--inputs")) {
      NEED_VALUE();
      a->inputs = val;
    } else if (!strcmp(s, "--tangents")) {
      NEED_VALUE();
      a->tangents = val;
    } else if (s[0] == '-' && s[1]) {
      /* A trainer option; rt_options_parse checks it. Those that take a value take the next
       * argument with them (unless written --opt=value). */
      static const char *const with_value[] = {"--data", "--epochs", "--lr", "--seed", "--save",
                                               "--load", "--metrics", "--limit-train",
                                               "--limit-test", "--patience"};
      a->rest[a->nrest++] = argv[i];
      for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++)
        if (!strcmp(s, with_value[k]) && val) {
          a->rest[a->nrest++] = argv[++i];
          break;
        }
    } else if (!a->model) {
      a->model = s;
    } else {
      return usage_error("unexpected argument '%s'", s);
    }
#undef NEED_VALUE
  }
  if (!a->model) return usage_error("'%s' needs a MODEL file", a->cmd);
  return 0;
}

/* Compiles the model through train_build (and, for jvp / hvp, the forward-mode outputs of the
 * grad entry); on error prints the message and returns NULL. */
static Graph *compile_model(const char *path, const char *cmd) {
  Trap t;
  Graph *volatile g = NULL;
  if (KILN_TRY(&t)) {
    g = fe_compile_file(path);
    train_build(g);
    if (!strcmp(cmd, "jvp")) train_build_jvp(g);
    if (!strcmp(cmd, "hvp")) train_build_hvp(g);
    kiln_trap_end(&t);
    return g;
  }
  kiln_trap_end(&t);
  fputs(t.msg, stderr);
  ir_free(g);
  return NULL;
}

static int64_t batch_of(Graph *g, const Args *a) {
  if (a->batch) return a->batch;
  if (g->train.batch) return g->train.batch;
  return g->nsyms ? 64 : 1;
}

/* Runs fn(g, a, out) under a trap, writing to a temporary file that replaces a->out only on
 * success, so a failed command never leaves a partial output file. */
typedef void (*Writer)(Graph *g, const Args *a, FILE *out);

static int write_output(Graph *g, const Args *a, Writer fn, const char *default_out) {
  const char *path = a->out ? a->out : default_out;
  bool to_stdout = !path || !strcmp(path, "-");
  char tmp[4096];
  FILE *volatile f = stdout;
  if (!to_stdout) {
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    f = fopen(tmp, "w");
    if (!f) {
      fprintf(stderr, "kiln: error: cannot write '%s': %s\n", path, strerror(errno));
      return 1;
    }
  }
  Trap t;
  int rc = 0;
  if (KILN_TRY(&t)) {
    fn(g, a, f);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    fputs(t.msg, stderr);
    rc = 1;
  }
  if (!to_stdout) {
    if (fclose(f) != 0 && rc == 0) {
      fprintf(stderr, "kiln: error: cannot write '%s': %s\n", path, strerror(errno));
      rc = 1;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
      fprintf(stderr, "kiln: error: cannot write '%s': %s\n", path, strerror(errno));
      rc = 1;
    }
    if (rc) remove(tmp);
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

static void write_shapes(Graph *g, const Args *a, FILE *out) {
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
  int64_t batch = batch_of(g, a);
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

static void write_dot(Graph *g, const Args *a, FILE *out) { ir_print_dot(g, out, a->train_graph); }

static void write_ir(Graph *g, const Args *a, FILE *out) {
  (void)a;
  ir_print(g, out);
}

static void write_c(Graph *g, const Args *a, FILE *out) {
  Plan plan;
  plan_build(g, batch_of(g, a), &a->sched, &plan);
  Buf b = {0};
  cg_emit_c(g, &plan, &b);
  fwrite(b.p, 1, b.len, out);
  buf_free(&b);
  plan_free(&plan);
}

/* ---- kiln schedule ---- */

static void write_schedule(Graph *g, const Args *a, FILE *out) {
  Plan plan;
  plan_build(g, batch_of(g, a), &a->sched, &plan);
  sched_print(g, plan.sched, out);
  fputc('\n', out);
  plan_print(g, &plan, out);
  plan_free(&plan);
}

/* ---- kiln build ---- */

/* Plans and generates the program's C into src; on error prints it and returns 1. */
static int generate(Graph *g, const Args *a, Buf *src) {
  Trap t;
  Plan plan = {0};
  if (KILN_TRY(&t)) {
    plan_build(g, batch_of(g, a), &a->sched, &plan);
    cg_emit_c(g, &plan, src);
    kiln_trap_end(&t);
    plan_free(&plan);
    return 0;
  }
  kiln_trap_end(&t);
  fputs(t.msg, stderr);
  plan_free(&plan);
  return 1;
}

static int cmd_build(Graph *g, const Args *a) {
  if (!a->out) return usage_error("%s", "build needs -o TRAINER");
  Buf src = {0}, err = {0};
  int rc = generate(g, a, &src);
  if (!rc && aot_build_trainer(src.p, a->out, &err) != 0) {
    fprintf(stderr, "kiln: error: building '%s' failed:\n%s", a->out, err.p ? err.p : "");
    rc = 1;
  }
  if (!rc) fprintf(stderr, "kiln: wrote trainer %s\n", a->out);
  buf_free(&src);
  buf_free(&err);
  return rc;
}

/* ---- kiln train ---- */

/* The compiled runtime for `kiln train`: the generated C built as a shared object and loaded
 * (the JIT will replace the system compiler here). */
static int train_compiled(Graph *g, const Args *a, RtOptions *o) {
  Buf src = {0}, err = {0};
  int rc = 0;
  if (generate(g, a, &src)) return 1;
  void *handle = NULL;
  const kiln_program *prog = aot_load_shared(src.p, &handle, &err);
  if (!prog) {
    fprintf(stderr, "kiln: error: compiling the generated code failed:\n%s", err.p ? err.p : "");
    rc = 1;
  } else {
    unsigned char *arena = aligned_alloc(64, (size_t)(prog->arena_bytes + 63) / 64 * 64);
    if (!arena) {
      fprintf(stderr, "kiln: error: out of memory for a %lld-byte arena\n", (long long)prog->arena_bytes);
      rc = 1;
    } else {
      memset(arena, 0, (size_t)prog->arena_bytes);
      RtBackend be;
      rt_arena_backend(prog, arena, &be);
      rc = rt_train(&be, o);
      rt_arena_backend_free(&be);
      free(arena);
    }
  }
  buf_free(&src);
  buf_free(&err);
  (void)handle;  /* stays loaded until exit: the program table points into it */
  return rc;
}

static int train_reference(Graph *g, const Args *a, RtOptions *o) {
  Trap t;
  Plan plan = {0};
  if (KILN_TRY(&t)) {
    plan_build(g, batch_of(g, a), &a->sched, &plan);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    fputs(t.msg, stderr);
    return 1;
  }
  bool f32 = a->precision ? a->precision == 32 : ir_at(g, g->params[0])->dtype == DT_F32;
  Interp *it = interp_new(g, plan.batch, f32);
  if (!it) {
    fprintf(stderr, "kiln: error: cannot create the reference runtime (out of memory)\n");
    plan_free(&plan);
    return 1;
  }
  kiln_program prog;
  RtBackend be;
  interp_backend(it, &plan, &prog, &be);
  int rc = rt_train(&be, o);
  interp_free(it);
  plan_free(&plan);
  return rc;
}

static int cmd_train(Graph *g, const Args *a) {
  RtOptions o;
  rt_options_default(&o);
  char **argv = calloc((size_t)a->nrest + 2, sizeof(char *));
  if (!argv) return 1;
  argv[0] = "kiln train";
  for (int i = 0; i < a->nrest; i++) argv[i + 1] = a->rest[i];
  int rc = rt_options_parse(&o, a->nrest + 1, argv, "kiln train");
  free(argv);
  if (rc) return rc > 0 ? 0 : 2;
  return a->reference ? train_reference(g, a, &o) : train_compiled(g, a, &o);
}

/* ---- kiln check / grad ---- */

static int cmd_check(Graph *g, const Args *a) {
  return check_model(g, batch_of(g, a), a->steps, g->train.seed, stdout, &a->sched);
}

static int cmd_grad(Graph *g, const Args *a) {
  if (!a->params || !a->inputs || !a->out)
    return usage_error("%s", "grad needs --params P.safetensors --inputs I.safetensors -o G.safetensors");
  return grad_model(g, a->params, a->inputs, a->out, a->reference, stdout, &a->sched);
}

/* ---- kiln jvp / hvp ---- */

static int cmd_forward(Graph *g, const Args *a, bool hvp) {
  if (!a->params || !a->inputs || !a->tangents || !a->out)
    return usage_error("%s needs --params P.safetensors --inputs I.safetensors --tangents "
                       "T.safetensors -o OUT.safetensors", a->cmd);
  return forward_model(g, hvp, a->params, a->inputs, a->tangents, a->out, a->reference, stdout,
                       &a->sched);
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  static const char *const commands[] = {"shapes", "graph", "ir", "emit", "schedule", "build",
                                         "train", "check", "grad",
                                         "jvp", "hvp"};
  bool known = false;
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) known |= !strcmp(argv[1], commands[i]);
  if (!known) return usage_error("unknown command '%s'", argv[1]);
  Args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) {
    free(a.rest);
    return rc;
  }
  if (a.tangents && strcmp(a.cmd, "jvp") && strcmp(a.cmd, "hvp")) {
    free(a.rest);
    return usage_error("%s", "--tangents belongs to jvp and hvp");
  }
  /* Trainer options belong to `train` only. */
  if (a.nrest && strcmp(a.cmd, "train")) {
    rc = usage_error("unknown option '%s'", a.rest[0]);
    free(a.rest);
    return rc;
  }
  Graph *g = compile_model(a.model, a.cmd);
  if (!g) {
    free(a.rest);
    return 1;
  }
  const char *cmd = a.cmd;
  if (!strcmp(cmd, "shapes")) rc = write_output(g, &a, write_shapes, NULL);
  else if (!strcmp(cmd, "graph")) rc = write_output(g, &a, write_dot, NULL);
  else if (!strcmp(cmd, "ir")) rc = write_output(g, &a, write_ir, NULL);
  else if (!strcmp(cmd, "emit")) rc = write_output(g, &a, write_c, NULL);
  else if (!strcmp(cmd, "schedule")) rc = write_output(g, &a, write_schedule, NULL);
  else if (!strcmp(cmd, "build")) rc = cmd_build(g, &a);
  else if (!strcmp(cmd, "train")) rc = cmd_train(g, &a);
  else if (!strcmp(cmd, "check")) rc = cmd_check(g, &a);
  else if (!strcmp(cmd, "jvp")) rc = cmd_forward(g, &a, false);
  else if (!strcmp(cmd, "hvp")) rc = cmd_forward(g, &a, true);
  else rc = cmd_grad(g, &a);
  ir_free(g);
  free(a.rest);
  return rc;
}
