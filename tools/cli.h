/*
 * cli.h — the kiln command's vocabulary as data: its commands and options in tables that the
 * parser in kiln.c looks words up in, and that `kiln --help`, `kiln COMMAND --help` and the
 * manual page (`kiln --man`, installed as kiln(1)) are printed from. An option the parser takes
 * is therefore an option the help lists, for exactly the commands that take it.
 */
#ifndef KILN_CLI_H
#define KILN_CLI_H

#include <stdbool.h>
#include <stdio.h>

typedef enum CliCommand {
  CMD_SHAPES, CMD_GRAPH, CMD_IMPORT, CMD_IR, CMD_EMIT, CMD_SCHEDULE, CMD_BUILD, CMD_TRAIN, CMD_TUNE,
  CMD_SWEEP, CMD_EVALUATE, CMD_CHECK, CMD_GRAD, CMD_JVP, CMD_HVP, CMD_GRADCHECK, CMD_CURVATURE,
  CMD_PLOT, CMD_DIFF, CMD_COUNT
} CliCommand;

typedef struct CliCommandDoc {
  const char *name;      /* "build" */
  const char *synopsis;  /* what follows the name: "MODEL -o TRAINER" */
  const char *help;      /* one paragraph */
} CliCommandDoc;
extern const CliCommandDoc cli_commands[CMD_COUNT];

/* Sets of commands an option belongs to, one bit per CliCommand. CLI_GLOBAL: it may also come
 * before the command (kiln --verbose train ...); an option whose set is only CLI_GLOBAL comes
 * there alone (kiln --version). */
#define CLI_CMD(c) (1u << (c))
#define CLI_ALL ((1u << CMD_COUNT) - 1)
#define CLI_MODEL (CLI_ALL & ~CLI_CMD(CMD_PLOT)) /* every command that reads a model */
#define CLI_GLOBAL (1u << CMD_COUNT)

/* kiln's own options, each handled by one case of parse_args's switch. */
typedef enum CliOptionId {
  OPT_OUTPUT, OPT_BATCH, OPT_THREADS, OPT_BACKEND, OPT_OPT_LEVEL, OPT_TARGET, OPT_NO_TUNE,
  OPT_NO_CACHE, OPT_VERBOSE, OPT_COLOR, OPT_HELP, OPT_VERSION, OPT_MAN, OPT_TRAIN_GRAPH,
  OPT_STEPS, OPT_KERNEL, OPT_RUNTIME, OPT_PRECISION, OPT_DIAGNOSE, OPT_CURVATURE_EVERY,
  OPT_PARAMS, OPT_INPUTS, OPT_TANGENTS, OPT_SECONDS, OPT_GRID, OPT_KEEP, OPT_SELECT,
  OPT_ITERATIONS, OPT_DATA, OPT_WRT, OPT_AT, OPT_ORDER, OPT_MPI, OPT_LOSS, OPT_OPTIMIZER,
  OPT_PIXEL_SCALE
} CliOptionId;

typedef struct CliOption {
  CliOptionId id;
  const char *name;   /* "--batch"; several spellings separated by ", " ("-O1, -O2, -O3") */
  const char *arg;    /* what its value is ("N"), NULL for a flag */
  unsigned commands;  /* CLI_CMD bits (and CLI_GLOBAL) */
  bool repeated;      /* kiln sweep repeats it in each run's `kiln train` command */
  const char *dflt;   /* what holds without it, for "(default: ...)"; NULL when nothing does */
  const char *help;   /* one paragraph */
} CliOption;
extern const CliOption cli_options[];
extern const int cli_noptions;

/* Trainer options that `kiln evaluate` takes (those about the test set). */
extern const char *const cli_evaluate_trainer_options[];
extern const int cli_nevaluate_trainer_options;

/* The command named name, or -1. */
int cli_command(const char *name);
/* Whether command cmd takes the trainer's options (all of them, or for evaluate some). */
bool cli_takes_trainer_options(int cmd);
/* The option spelled word[0..len) that command cmd takes (cmd == -1: before the command), or
 * NULL; *elsewhere (if not NULL) is set to a row of that spelling for other commands, if any. */
const CliOption *cli_option(const char *word, size_t len, int cmd, const CliOption **elsewhere);
/* "check", "grad, jvp and hvp": the commands of a set, for "--steps belongs to check". */
void cli_commands_of(unsigned commands, char *buf, size_t cap);

/* kiln without a command (short); kiln --help; kiln COMMAND --help; kiln --man (roff, the
 * kiln(1) manual page). */
void cli_usage(FILE *f);
void cli_help(FILE *f);
void cli_command_help(FILE *f, int cmd);
void cli_man(FILE *f, const char *version);

#endif
