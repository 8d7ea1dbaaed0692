/*
 * cli.c — kiln's commands, options, environment and exit statuses as tables, and the two ways
 * they are printed: wrapped for a terminal (--help) and as roff (--man, the kiln(1) page the
 * build generates and installs). The text exists once, here and in the trainer's table
 * (runtime/rt_train.c); no page is written by hand.
 */
#include "cli.h"

#include <string.h>

#include "runtime.h"

/* The column descriptions start at in --help. */
#define COMMAND_COL 32
#define OPTION_COL 24

const CliCommandDoc cli_commands[CMD_COUNT] = {
    [CMD_SHAPES] = {"shapes", "MODEL",
                    "every node's shape, the parameters and FLOPs per example"},
    [CMD_GRAPH] = {"graph", "MODEL [--train]",
                   "the forward (or whole training) graph as Graphviz DOT, each kernel a cluster "
                   "(| dot -Tsvg -o graph.svg)"},
    [CMD_IMPORT] = {"import", "MODEL.onnx [-o MODEL.kiln]",
                    "an ONNX model as a kiln model file, with its initializers beside it "
                    "(MODEL.safetensors); every command also takes *.onnx directly (--loss, "
                    "--optimizer, --pixel-scale say how it trains)"},
    [CMD_IR] = {"ir", "MODEL", "the typed IR with all entry points (train, eval, grad)"},
    [CMD_EMIT] = {"emit", "MODEL [-o step.c]",
                  "the whole training step as one C11 translation unit"},
    [CMD_SCHEDULE] = {"schedule", "MODEL", "how each kernel is computed, and the memory plan"},
    [CMD_BUILD] = {"build", "MODEL -o TRAINER",
                   "a standalone trainer executable (system C compiler), linked with the "
                   "trainer runtime ($KILN_HOME, else the one beside kiln); it takes the trainer "
                   "options. With --mpi, one for data-parallel training under mpirun"},
    [CMD_TRAIN] = {"train", "MODEL [trainer options]",
                   "train inside kiln (--runtime compiled|reference)"},
    [CMD_TUNE] = {"tune", "MODEL [--seconds S]",
                  "time candidate schedules (convolution algorithms, GEMM tiles) on this machine "
                  "and keep the fastest in the cache, where build, train and check find them "
                  "(--no-tune: not)"},
    [CMD_SWEEP] = {"sweep",
                   "MODEL --grid KEY=V,V... [KEY=V,V...] [trainer options] [-o sweep.csv] "
                   "[--keep BEST.safetensors] [--select val_loss|val_accuracy|val_METRIC]",
                   "train every combination of the grid's values (keys: lr, batch, epochs, "
                   "seed, patience, validation, limit-train; the last key varies fastest), one "
                   "run after another, each holding out 10% of the training examples for "
                   "validation unless --validation says otherwise; one CSV row per run with its "
                   "`kiln train` command; --keep: the parameters of the best run by --select"},
    [CMD_EVALUATE] = {"evaluate",
                      "MODEL --params P.safetensors [--params ...] --data DIR [--limit-test N] "
                      "[--normalize M,S] [--seed S]",
                      "each parameter file's test loss and accuracy (and metrics); with several, "
                      "also their ensemble's: the mean of the members' softmax probabilities, "
                      "loss -log of it at the label, accuracy from its argmax"},
    [CMD_CHECK] = {"check", "MODEL [--steps N] [--kernel NAME]",
                   "generated code against the reference runtime; on a disagreement it names "
                   "the first kernel that is wrong. With --kernel, that kernel alone under every "
                   "schedule choice (fusion, threads, convolution algorithm, tiles)"},
    [CMD_GRAD] = {"grad",
                  "MODEL --params P.safetensors --inputs I.safetensors -o G.safetensors",
                  "the loss and its gradients"},
    [CMD_JVP] = {"jvp", "MODEL --params P --inputs I --tangents T -o OUT",
                 "directional derivatives of the loss and the output"},
    [CMD_HVP] = {"hvp", "MODEL --params P --inputs I --tangents T -o OUT",
                 "the Hessian of the loss times T, per parameter"},
    [CMD_GRADCHECK] = {"gradcheck", "MODEL [--batch N]",
                       "every parameter's gradient against finite differences and forward "
                       "mode, and every op's tangent and adjoint rules against each other "
                       "(float64, reference runtime)"},
    [CMD_CURVATURE] = {"curvature", "MODEL [--params P.safetensors] [--data DIR] [--iterations N]",
                       "the loss's largest and smallest Hessian eigenvalues on a batch, the "
                       "condition number and the stable lr 2/lambda_max"},
    [CMD_PLOT] = {"plot", "METRICS.csv -o CURVES.svg",
                  "a trainer's --metrics file drawn as an SVG picture"},
    [CMD_DIFF] = {"diff", "MODEL --wrt X --at V [--order N]",
                  "the minimized scalar and its derivatives by the scalar X at X = V, orders "
                  "1..N, by forward mode applied k times and by reverse over forward"},
};

/* Commands that load a compiled program into kiln (what --backend and -O choose for). */
#define CLI_LOADS                                                                               \
  (CLI_CMD(CMD_TRAIN) | CLI_CMD(CMD_TUNE) | CLI_CMD(CMD_SWEEP) | CLI_CMD(CMD_EVALUATE) |      \
   CLI_CMD(CMD_CHECK) | CLI_CMD(CMD_GRAD) | CLI_CMD(CMD_JVP) | CLI_CMD(CMD_HVP) |             \
   CLI_CMD(CMD_CURVATURE) | CLI_CMD(CMD_DIFF))
#define CLI_FORWARD (CLI_CMD(CMD_GRAD) | CLI_CMD(CMD_JVP) | CLI_CMD(CMD_HVP))
#define CLI_TEXT                                                                                \
  (CLI_CMD(CMD_SHAPES) | CLI_CMD(CMD_GRAPH) | CLI_CMD(CMD_IMPORT) | CLI_CMD(CMD_IR) |         \
   CLI_CMD(CMD_EMIT) | CLI_CMD(CMD_SCHEDULE))

const CliOption cli_options[] = {
    /* before the command */
    {OPT_HELP, "-h, --help", NULL, CLI_GLOBAL | CLI_ALL, false, NULL,
     "this text; after a command, that command's options"},
    {OPT_VERSION, "--version", NULL, CLI_GLOBAL, false, NULL,
     "kiln's version and the backends it was built with"},
    {OPT_MAN, "--man", NULL, CLI_GLOBAL, false, NULL,
     "this text as a roff manual page (the installed kiln(1))"},
    /* one command's, or a few commands' */
    {OPT_OUTPUT, "-o", "FILE", CLI_TEXT, false, "stdout",
     "write the output to FILE instead ('-': stdout), replacing it only when the command "
     "succeeds"},
    {OPT_OUTPUT, "-o", "TRAINER", CLI_CMD(CMD_BUILD), false, NULL,
     "the trainer executable to write (required)"},
    {OPT_OUTPUT, "-o", "OUT.safetensors", CLI_FORWARD, false, NULL,
     "where the results go (required)"},
    {OPT_OUTPUT, "-o", "CURVES.svg", CLI_CMD(CMD_PLOT), false, NULL,
     "the picture to write (required)"},
    {OPT_OUTPUT, "-o", "FILE.csv", CLI_CMD(CMD_SWEEP), false, "sweep.csv",
     "one row per run ('-': stdout)"},
    {OPT_TRAIN_GRAPH, "--train", NULL, CLI_CMD(CMD_GRAPH), false, NULL,
     "the whole training graph (backward pass and optimizer) rather than the forward one"},
    {OPT_STEPS, "--steps", "N", CLI_CMD(CMD_CHECK), false, "3",
     "training steps to compare the compiled program and the reference over"},
    {OPT_KERNEL, "--kernel", "NAME", CLI_CMD(CMD_CHECK), false, NULL,
     "that kernel (k45_conv2d, or %45) alone under every schedule choice"},
    {OPT_RUNTIME, "--runtime", "R",
     CLI_CMD(CMD_TRAIN) | CLI_CMD(CMD_EVALUATE) | CLI_FORWARD, false, "compiled",
     "'compiled' (the generated C) or 'reference' (the interpreter, op by op; it names the op "
     "and model line that first produces a value that is not finite)"},
    {OPT_PRECISION, "--precision", "P", CLI_CMD(CMD_TRAIN) | CLI_CMD(CMD_EVALUATE), false,
     "the model's", "with --runtime reference: compute in 'f32' or 'f64'"},
    {OPT_DIAGNOSE, "--diagnose", NULL, CLI_CMD(CMD_TRAIN) | CLI_CMD(CMD_BUILD), false, NULL,
     "compile the eval entry with every activation as an output and, for train, report dead "
     "and saturated units, gradient and update sizes after every epoch (a built trainer "
     "reports with its own --diagnose)"},
    {OPT_CURVATURE_EVERY, "--curvature-every", "N", CLI_CMD(CMD_TRAIN) | CLI_CMD(CMD_BUILD),
     false, "none",
     "compile Hessian-vector products into the step and, for train, measure the loss "
     "Hessian's largest eigenvalue every N steps (a built trainer takes its own "
     "--curvature-every)"},
    {OPT_PARAMS, "--params", "P.safetensors",
     CLI_FORWARD | CLI_CMD(CMD_EVALUATE) | CLI_CMD(CMD_CURVATURE), false, NULL,
     "the parameters (evaluate: repeat it for an ensemble; curvature: default, the "
     "initialisation)"},
    {OPT_INPUTS, "--inputs", "I.safetensors", CLI_FORWARD, false, NULL,
     "the inputs of the batch, by name"},
    {OPT_TANGENTS, "--tangents", "T.safetensors", CLI_CMD(CMD_JVP) | CLI_CMD(CMD_HVP), false,
     NULL, "the direction, one tensor per parameter (and input, for jvp)"},
    {OPT_SECONDS, "--seconds", "S", CLI_CMD(CMD_TUNE), false, "0.3",
     "how long each candidate schedule runs (0.01 to 60)"},
    {OPT_GRID, "--grid", "KEY=V,V...", CLI_CMD(CMD_SWEEP), false, NULL,
     "the values to try, one KEY=V,V... word per key (keys: lr, batch, epochs, seed, patience, "
     "validation, limit-train)"},
    {OPT_KEEP, "--keep", "BEST.safetensors", CLI_CMD(CMD_SWEEP), false, NULL,
     "write the best run's parameters there"},
    {OPT_SELECT, "--select", "COLUMN", CLI_CMD(CMD_SWEEP), false, "val_loss",
     "the figure that picks the best run: val_loss (lowest), val_accuracy or val_METRIC "
     "(highest); min: or max: before it overrides the direction"},
    {OPT_ITERATIONS, "--iterations", "N", CLI_CMD(CMD_CURVATURE), false, "200",
     "the most power iterations (1 to 100000)"},
    {OPT_DATA, "--data", "DIR", CLI_CMD(CMD_CURVATURE), false, NULL,
     "take the batch from this data set (as the trainer's --data) rather than the model's "
     "values"},
    {OPT_WRT, "--wrt", "X", CLI_CMD(CMD_DIFF), false, NULL,
     "the scalar the derivatives are taken by (a parameter or input of one element)"},
    {OPT_AT, "--at", "V", CLI_CMD(CMD_DIFF), false, NULL, "the value of X"},
    {OPT_ORDER, "--order", "N", CLI_CMD(CMD_DIFF), false, "1",
     "derivatives of orders 1..N (at most 64)"},
    {OPT_TARGET, "--target", "T",
     CLI_CMD(CMD_BUILD) | CLI_CMD(CMD_EMIT) | CLI_CMD(CMD_SCHEDULE), true, "native",
     "the CPU a trainer is built for: x86-64, x86-64-v2, x86-64-v3 or x86-64-v4 (vectors of "
     "that level), so a trainer copied to an older CPU runs; native: this machine"},
    {OPT_BACKEND, "--backend", "B", CLI_LOADS, true, "jit when built in, else cc",
     "what compiles the step in process: 'jit' (Clang/LLVM inside kiln) or 'cc' (the system "
     "compiler and dlopen); also $KILN_BACKEND. `kiln --version` lists those built in"},
    {OPT_OPT_LEVEL, "-O1, -O2, -O3", NULL, CLI_LOADS | CLI_CMD(CMD_BUILD), true, "-O2",
     "the optimisation level of either backend and of build"},
    /* every command's that reads a model (the common options) */
    {OPT_MPI, "--mpi", NULL, CLI_MODEL, true, NULL,
     "compile the data-parallel step (batch statistics and the loss over every process): build "
     "makes a trainer for mpirun with Open MPI's mpicc (or $KILN_MPICC); in one process (check, "
     "gradcheck) the sums over processes are the identity (docs/distributed.md)"},
    {OPT_LOSS, "--loss", "L", CLI_MODEL, true, "auto",
     "for an ONNX model: the loss on its (first) output: auto (cross_entropy when the graph has "
     "one output and an image input, else none), none (evaluation only), cross_entropy, nll or "
     "mse (docs/onnx.md)"},
    {OPT_OPTIMIZER, "--optimizer", "CALL", CLI_MODEL, true, "adam(lr=1e-3)",
     "for an ONNX model: the train block's optimizer in the model language, e.g. "
     "'sgd(lr=0.1, momentum=0.9)'"},
    {OPT_PIXEL_SCALE, "--pixel-scale", "X", CLI_MODEL, true, "1/255",
     "for an ONNX model: its image input is `from images * X`"},
    {OPT_BATCH, "--batch", "N", CLI_MODEL, false, "the model's train block, else 64",
     "the batch size to specialise for"},
    {OPT_THREADS, "--threads", "N", CLI_MODEL, true,
     "$KILN_THREADS, else every core this process may use",
     "threads the step runs on; a built trainer runs on at most this many and takes --threads "
     "itself. Results are the same for every count"},
    {OPT_NO_TUNE, "--no-tune", NULL, CLI_MODEL, true, NULL,
     "ignore what `kiln tune` measured for this model (the cost model decides)"},
    {OPT_NO_CACHE, "--no-cache", NULL, CLI_GLOBAL | CLI_MODEL, true, NULL,
     "compile even when the cache holds this program, and store nothing; the cache is "
     "$XDG_CACHE_HOME/kiln, else $HOME/.cache/kiln"},
    {OPT_VERBOSE, "--verbose", NULL, CLI_GLOBAL | CLI_ALL, false, NULL,
     "print how long each phase took (parse to emit, compile or cache, load) and, for build, "
     "the trainer runtime used"},
    {OPT_COLOR, "--color", "WHEN", CLI_GLOBAL | CLI_ALL, false, "auto",
     "colour 'error:' (red), 'warning:' (magenta) and the caret under a model line (green) on "
     "stderr: 'auto' when stderr is a terminal, $NO_COLOR is unset or empty and $TERM is not "
     "'dumb'; 'always' (even with $NO_COLOR set: the command line wins); 'never'"},
};
const int cli_noptions = sizeof cli_options / sizeof *cli_options;

const char *const cli_evaluate_trainer_options[] = {"--data", "--limit-test", "--normalize",
                                                    "--seed", "--threads", "--quiet"};
const int cli_nevaluate_trainer_options =
    sizeof cli_evaluate_trainer_options / sizeof *cli_evaluate_trainer_options;

/* The environment kiln reads (only tools/kiln.c reads it). */
static const RtHelpItem environment[] = {
    {"KILN_THREADS", "threads the step runs on, as --threads (1..256)"},
    {"KILN_BACKEND", "'jit' or 'cc', as --backend"},
    {"KILN_HOME", "the trainer runtime build links with (kiln_abi.h, runtime.h, libkilnrt.a, "
                  "trainer_main.c, mpi_comm.c); default: beside the kiln executable, "
                  "lib/kiln/runtime of an installed kiln or kiln-runtime/ of a build tree"},
    {"CC", "the C compiler for build and the cc backend (it may carry arguments: \"ccache "
           "gcc\"); default: cc"},
    {"KILN_MPICC", "the MPI compiler wrapper build --mpi uses; default: mpicc"},
    {"TMPDIR", "where private build directories are made; default: /tmp"},
    {"XDG_CACHE_HOME, HOME", "the cache of compiled programs and tuning: $XDG_CACHE_HOME/kiln, "
                             "else $HOME/.cache/kiln"},
    {"KILN_FUSE", "0: no elementwise fusion (for comparisons)"},
    {"KILN_CONV", "auto, direct, gemm or implicit: one convolution algorithm for every layer "
                  "(for comparisons)"},
    {"KILN_TARGET", "generic: the library's fixed target instead of this machine's caches and "
                    "vectors, so that emit prints the same file everywhere"},
    {"NO_COLOR", "set and not empty: no colour unless --color=always (no-color.org)"},
    {"TERM", "dumb: no colour unless --color=always"},
};

static const char summary[] =
    "kiln compiles a neural-network model file into C code for its whole training step (forward "
    "pass, backward pass and optimizer update) specialised to the model's shapes, with a static "
    "memory plan; builds that code into a standalone trainer, or trains with it in process; and "
    "checks every generated kernel against a reference interpreter. Errors go to stderr as "
    "FILE:LINE:COL: error: MESSAGE with the source line and a caret; results go to stdout.";

int cli_command(const char *name) {
  for (int c = 0; c < CMD_COUNT; c++)
    if (!strcmp(name, cli_commands[c].name))
      return c;
  return -1;
}

bool cli_takes_trainer_options(int cmd) {
  return cmd == CMD_TRAIN || cmd == CMD_SWEEP || cmd == CMD_EVALUATE;
}

const CliOption *cli_option(const char *word, size_t len, int cmd, const CliOption **elsewhere) {
  unsigned want = cmd < 0 ? CLI_GLOBAL : CLI_CMD(cmd);
  const CliOption *other = NULL;
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (!rt_option_spelled(o->name, word, len))
      continue;
    if (o->commands & want)
      return o;
    other = other ? other : o;
  }
  if (elsewhere)
    *elsewhere = other;
  return NULL;
}

void cli_commands_of(unsigned commands, char *buf, size_t cap) {
  size_t len = 0;
  int n = 0, total = 0;
  for (int c = 0; c < CMD_COUNT; c++)
    total += (commands >> c) & 1;
  buf[0] = 0;
  for (int c = 0; c < CMD_COUNT && len < cap; c++)
    if ((commands >> c) & 1) {
      n++;
      len += (size_t)snprintf(buf + len, cap - len, "%s%s", n == 1 ? "" : n == total ? " and " : ", ",
                              cli_commands[c].name);
    }
}

/* ---- --help ---- */

static void option_left(const CliOption *o, char *buf, size_t cap) {
  snprintf(buf, cap, o->arg ? "%s %s" : "%s", o->name, o->arg);
}

static void command_item(FILE *f, int c) {
  char left[512];
  snprintf(left, sizeof left, "%s %s", cli_commands[c].name, cli_commands[c].synopsis);
  rt_help_item(f, 2, left, COMMAND_COL, cli_commands[c].help, NULL);
}

/* Whether an option is a common one: every command that reads a model takes it. */
static bool common(const CliOption *o) { return (o->commands & CLI_MODEL) == CLI_MODEL; }

/* The trainer's options command cmd takes, or with cmd < 0 all of them (a built trainer's). */
static void trainer_items(FILE *f, int cmd) {
  for (int i = 0; i < rt_ntrainer_options; i++) {
    const RtOptionDoc *d = &rt_trainer_options[i];
    bool taken = cmd != CMD_EVALUATE;
    for (int k = 0; !taken && k < cli_nevaluate_trainer_options; k++)
      taken = rt_option_spelled(d->name, cli_evaluate_trainer_options[k],
                                strlen(cli_evaluate_trainer_options[k]));
    /* where kiln has an option of the same name (--threads, --color), kiln's is the one */
    if (!taken || (cmd >= 0 && cli_option(d->name, strcspn(d->name, ","), cmd, NULL)))
      continue;
    char left[128];
    snprintf(left, sizeof left, d->arg ? "%s %s" : "%s", d->name, d->arg);
    rt_help_item(f, 2, left, OPTION_COL, d->help, d->dflt);
  }
}

static void tail(FILE *f) {
  fprintf(f, "\nenvironment:\n");
  for (size_t i = 0; i < sizeof environment / sizeof *environment; i++)
    rt_help_item(f, 2, environment[i].name, OPTION_COL, environment[i].text, NULL);
  fprintf(f, "\nexit status (kiln and the trainers it builds):\n");
  for (int i = 0; i < rt_nexit_statuses; i++)
    rt_help_item(f, 2, rt_exit_statuses[i].name, OPTION_COL, rt_exit_statuses[i].text, NULL);
}

void cli_usage(FILE *f) {
  char list[512] = "commands:";
  for (int c = 0; c < CMD_COUNT; c++)
    snprintf(list + strlen(list), sizeof list - strlen(list), " %s%s", cli_commands[c].name,
             c + 1 < CMD_COUNT ? "," : "");
  fprintf(f, "usage: kiln [--verbose] [--no-cache] [--color WHEN] COMMAND MODEL [options]\n");
  rt_help_paragraph(f, 0, 2, list);
  fprintf(f, "(run 'kiln --help' for every command and option, 'kiln COMMAND --help' for one "
             "command's)\n");
}

void cli_help(FILE *f) {
  char left[128], cmds[512];
  fprintf(f, "usage: kiln [--verbose] [--no-cache] [--color WHEN] COMMAND MODEL [options]\n"
             "       kiln COMMAND --help | --help | --version | --man\n\n");
  rt_help_paragraph(f, 0, 0, summary);
  fprintf(f, "\ncommands:\n");
  for (int c = 0; c < CMD_COUNT; c++)
    command_item(f, c);
  fprintf(f, "\noptions of some commands (named first):\n");
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (common(o) || !(o->commands & CLI_ALL))
      continue;
    char text[2048];
    cli_commands_of(o->commands & CLI_ALL, cmds, sizeof cmds);
    snprintf(text, sizeof text, "%s: %s", cmds, o->help);
    option_left(o, left, sizeof left);
    rt_help_item(f, 2, left, OPTION_COL, text, o->dflt);
  }
  fprintf(f, "\ncommon options (of every command that reads a model; --verbose, --no-cache "
             "and\n--color may also come before the command):\n");
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (!common(o))
      continue;
    option_left(o, left, sizeof left);
    rt_help_item(f, 2, left, OPTION_COL, o->help, o->dflt);
  }
  fprintf(f, "\ninstead of a command:\n");
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (o->commands & CLI_ALL)
      continue;
    option_left(o, left, sizeof left);
    rt_help_item(f, 2, left, OPTION_COL, o->help, o->dflt);
  }
  fprintf(f, "\ntrainer options (of train, sweep and every built trainer; evaluate takes --data,"
             "\n--limit-test, --normalize, --seed, --threads and --quiet):\n");
  trainer_items(f, -1);
  tail(f);
}

void cli_command_help(FILE *f, int cmd) {
  char left[128];
  const CliCommandDoc *c = &cli_commands[cmd];
  char usage[512];
  snprintf(usage, sizeof usage, "usage: kiln %s %s", c->name, c->synopsis);
  rt_help_paragraph(f, 0, 6, usage);
  fputc('\n', f);
  command_item(f, cmd);
  bool header = false;
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (common(o) || !(o->commands & CLI_CMD(cmd)))
      continue;
    if (!header)
      fprintf(f, "\noptions:\n");
    header = true;
    option_left(o, left, sizeof left);
    rt_help_item(f, 2, left, OPTION_COL, o->help, o->dflt);
  }
  fprintf(f, "\ncommon options:\n");
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (!common(o) || !(o->commands & CLI_CMD(cmd)))
      continue;
    option_left(o, left, sizeof left);
    rt_help_item(f, 2, left, OPTION_COL, o->help, o->dflt);
  }
  if (cli_takes_trainer_options(cmd)) {
    fprintf(f, "\ntrainer options%s:\n", cmd == CMD_EVALUATE ? " (those about the test set)" : "");
    trainer_items(f, cmd);
  }
  tail(f);
}

/* ---- --man ---- */

/* Text for roff: backslashes and hyphens escaped (so that options copy as typed), and a
 * line that would start with a control character guarded. */
static void roff(FILE *f, const char *s) {
  if (*s == '.' || *s == '\'')
    fputs("\\&", f);
  for (; *s; s++) {
    if (*s == '\\')
      fputs("\\e", f);
    else if (*s == '-')
      fputs("\\-", f);
    else
      fputc(*s, f);
  }
}

/* ".TP" with the tag in bold and its argument in italics, then the paragraph. */
static void man_item(FILE *f, const char *name, const char *arg, const char *text,
                     const char *dflt) {
  fputs(".TP\n\\fB", f);
  roff(f, name);
  fputs("\\fR", f);
  if (arg) {
    fputs(" \\fI", f);
    roff(f, arg);
    fputs("\\fR", f);
  }
  fputc('\n', f);
  roff(f, text);
  if (dflt) {
    fputs(" (default: ", f);
    roff(f, dflt);
    fputc(')', f);
  }
  fputc('\n', f);
}

void cli_man(FILE *f, const char *version) {
  char cmds[512], text[2048];
  fprintf(f, ".\\\" kiln(1), generated by `kiln --man` from the tables of kiln --help\n");
  fprintf(f, ".TH KILN 1 \"\" \"kiln %s\" \"User Commands\"\n", version);
  fputs(".nh\n.ad l\n", f); /* option names neither hyphenated nor stretched */
  fputs(".SH NAME\nkiln \\- compiles a neural\\-network model into C code for its training "
        "step\n", f);
  fputs(".SH SYNOPSIS\n.B kiln\n[\\fB\\-\\-verbose\\fR] [\\fB\\-\\-no\\-cache\\fR] "
        "[\\fB\\-\\-color\\fR \\fIWHEN\\fR] \\fICOMMAND\\fR \\fIMODEL\\fR [\\fIoptions\\fR]\n"
        ".br\n.B kiln\n\\fICOMMAND\\fR \\fB\\-\\-help\\fR | \\fB\\-\\-help\\fR | "
        "\\fB\\-\\-version\\fR | \\fB\\-\\-man\\fR\n", f);
  fputs(".SH DESCRIPTION\n", f);
  roff(f, summary);
  fputs("\n.SH COMMANDS\n", f);
  for (int c = 0; c < CMD_COUNT; c++)
    man_item(f, cli_commands[c].name, cli_commands[c].synopsis, cli_commands[c].help, NULL);
  fputs(".SH OPTIONS\nOptions of some commands, each with the commands that take it:\n", f);
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (common(o) || !(o->commands & CLI_ALL))
      continue;
    cli_commands_of(o->commands & CLI_ALL, cmds, sizeof cmds);
    snprintf(text, sizeof text, "%s: %s", cmds, o->help);
    man_item(f, o->name, o->arg, text, o->dflt);
  }
  fputs(".PP\nCommon options, of every command that reads a model (\\fB\\-\\-verbose\\fR, "
        "\\fB\\-\\-no\\-cache\\fR and \\fB\\-\\-color\\fR may also come before the command):\n",
        f);
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (common(o))
      man_item(f, o->name, o->arg, o->help, o->dflt);
  }
  fputs(".PP\nInstead of a command:\n", f);
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    if (!(o->commands & CLI_ALL))
      man_item(f, o->name, o->arg, o->help, o->dflt);
  }
  fputs(".SH TRAINER OPTIONS\nOf \\fBkiln train\\fR, \\fBkiln sweep\\fR and every trainer "
        "\\fBkiln build\\fR writes (\\fBkiln evaluate\\fR takes \\fB\\-\\-data\\fR, "
        "\\fB\\-\\-limit\\-test\\fR, \\fB\\-\\-normalize\\fR, \\fB\\-\\-seed\\fR, "
        "\\fB\\-\\-threads\\fR and \\fB\\-\\-quiet\\fR):\n", f);
  for (int i = 0; i < rt_ntrainer_options; i++) {
    const RtOptionDoc *d = &rt_trainer_options[i];
    man_item(f, d->name, d->arg, d->help, d->dflt);
  }
  fputs(".SH ENVIRONMENT\n", f);
  for (size_t i = 0; i < sizeof environment / sizeof *environment; i++)
    man_item(f, environment[i].name, NULL, environment[i].text, NULL);
  fputs(".SH EXIT STATUS\nkiln and the trainers it builds:\n", f);
  for (int i = 0; i < rt_nexit_statuses; i++)
    man_item(f, rt_exit_statuses[i].name, NULL, rt_exit_statuses[i].text, NULL);
  fputs(".SH SEE ALSO\n\\fBcc\\fR(1); the language reference and design notes in kiln's "
        "docs/ (language.md, design.md)\n", f);
}
