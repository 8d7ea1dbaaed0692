/*
 * test_help.c — kiln's shell manners, fast (no compiler runs): `kiln --help`, `kiln COMMAND
 * --help` and `kiln --man` hold every option the parser takes, with its default, because each is
 * checked against the very tables the parser looks options up in (tools/cli.c, the trainer's in
 * runtime/rt_train.c); an option of another command is refused with exit status 2 and the
 * commands it belongs to; exit statuses are the documented ones; colour follows --color,
 * $NO_COLOR, $TERM and whether stderr is a terminal (a pseudo-terminal through script(1)).
 */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "process_harness.h"
#include "runtime.h"

#define KILN KILN_BINARY_DIR "/kiln"
#define EX KILN_SOURCE_DIR "/examples/"

/* text with every run of blanks and newlines made one space: wrapped help reads as one line */
static char *flat(const char *text) {
  char *out = malloc(strlen(text) + 1), *o = out;
  ck_assert_ptr_nonnull(out);
  for (const char *p = text; *p; p++) {
    bool blank = *p == ' ' || *p == '\n';
    if (blank && o > out && o[-1] == ' ')
      continue;
    *o++ = blank ? ' ' : *p;
  }
  *o = 0;
  return out;
}

/* Whether the help lists a row "  NAME ARG" at the start of a line, followed by its text. */
static bool lists(const char *help, const char *name, const char *arg) {
  char left[256];
  snprintf(left, sizeof left, arg ? "\n  %s %s" : "\n  %s", name, arg);
  for (const char *p = strstr(help, left); p; p = strstr(p + 1, left)) {
    char next = p[strlen(left)];
    if (next == ' ' || next == '\n')
      return true;
  }
  return false;
}

/* Whether the help gives the default right after the option's text. */
static bool gives_default(const char *flat_help, const char *text, const char *dflt) {
  char *want = malloc(strlen(text) + strlen(dflt) + 32);
  sprintf(want, "%s (default: %s)", text, dflt);
  char *fw = flat(want);
  bool ok = strstr(flat_help, fw) != NULL;
  free(fw);
  free(want);
  return ok;
}

/* Whether command cmd's parser takes option row o: the lookup parse_args makes. */
static bool parser_takes(const CliOption *o, int cmd) {
  const char *name = o->name, *comma = strrchr(name, ',');
  name = comma ? comma + 2 : name;
  return cli_option(name, strlen(name), cmd, NULL) != NULL;
}

/* Whether command cmd takes the trainer option d (and kiln has no option of that name for it). */
static bool takes_trainer_option(int cmd, const RtOptionDoc *d) {
  size_t len = strcspn(d->name, ",");
  if (!cli_takes_trainer_options(cmd) || cli_option(d->name, len, cmd, NULL))
    return false;
  if (cmd != CMD_EVALUATE)
    return true;
  for (int k = 0; k < cli_nevaluate_trainer_options; k++)
    if (rt_option_spelled(d->name, cli_evaluate_trainer_options[k],
                          strlen(cli_evaluate_trainer_options[k])))
      return true;
  return false;
}

START_TEST(every_command_help_lists_its_options) {
  for (int cmd = 0; cmd < CMD_COUNT; cmd++) {
    const char *name = cli_commands[cmd].name;
    char line[256], *out, *err;
    snprintf(line, sizeof line, KILN " %s --help", name);
    ck_assert_int_eq(run(line, &out, &err), 0);
    ck_assert_str_eq(err, "");
    char *f = flat(out);
    snprintf(line, sizeof line, "usage: kiln %s %s ", name, cli_commands[cmd].synopsis);
    ck_assert_msg(!strncmp(f, line, strlen(line)), "%s --help:\n%s", name, out);
    int listed = 0;
    for (int i = 0; i < cli_noptions; i++) {
      const CliOption *o = &cli_options[i];
      bool takes = parser_takes(o, cmd) && (o->commands & CLI_CMD(cmd));
      if (takes) {
        ck_assert_msg(lists(out, o->name, o->arg), "kiln %s --help lacks %s", name, o->name);
        ck_assert_msg(!o->dflt || gives_default(f, o->help, o->dflt),
                      "kiln %s --help: %s without its default (%s)", name, o->name, o->dflt);
        listed++;
      } else if (o->commands & CLI_ALL) {
        /* the row of another command: not listed, unless a trainer option of that name is */
        bool trainer = false;
        for (int t = 0; t < rt_ntrainer_options; t++)
          trainer |= takes_trainer_option(cmd, &rt_trainer_options[t]) &&
                     rt_option_spelled(rt_trainer_options[t].name, o->name, strlen(o->name));
        ck_assert_msg(trainer || !lists(out, o->name, o->arg), "kiln %s --help lists %s %s",
                      name, o->name, o->arg ? o->arg : "");
      }
    }
    ck_assert_int_ge(listed, cmd == CMD_PLOT ? 4 : 7); /* the common options at least */
    for (int t = 0; t < rt_ntrainer_options; t++) {
      const RtOptionDoc *d = &rt_trainer_options[t];
      if (cli_option(d->name, strcspn(d->name, ","), cmd, NULL))
        continue; /* kiln's option of that name stands for it (--threads, --color) */
      bool want = takes_trainer_option(cmd, d);
      ck_assert_msg(lists(out, d->name, d->arg) == want, "kiln %s --help %s trainer option %s",
                    name, want ? "lacks" : "lists", d->name);
      ck_assert_msg(!want || !d->dflt || gives_default(f, d->help, d->dflt),
                    "kiln %s --help: %s without its default", name, d->name);
    }
    ck_assert_msg(strstr(out, "\nexit status") && strstr(out, "\n  130 "), "%s", out);
    free(f);
    free(out);
    free(err);
  }
}
END_TEST

/* kiln --help: every command, every option of kiln's and of the trainers' with its default, the
 * environment, and every exit status; and the same tables as a manual page. */
START_TEST(help_and_man_list_everything) {
  char *out, *err;
  ck_assert_int_eq(run(KILN " --help", &out, &err), 0);
  ck_assert_str_eq(err, "");
  char *f = flat(out);
  for (int c = 0; c < CMD_COUNT; c++) {
    char want[256];
    snprintf(want, sizeof want, "%s %s", cli_commands[c].name, cli_commands[c].synopsis);
    char *fw = flat(want);
    ck_assert_msg(strstr(f, fw) != NULL, "kiln --help lacks %s", want);
    free(fw);
  }
  for (int i = 0; i < cli_noptions; i++) {
    const CliOption *o = &cli_options[i];
    ck_assert_msg(lists(out, o->name, o->arg), "kiln --help lacks %s", o->name);
    ck_assert_msg(!o->dflt || strstr(f, o->dflt), "kiln --help: %s's default", o->name);
  }
  for (int t = 0; t < rt_ntrainer_options; t++) {
    const RtOptionDoc *d = &rt_trainer_options[t];
    ck_assert_msg(lists(out, d->name, d->arg), "kiln --help lacks trainer option %s", d->name);
    ck_assert_msg(!d->dflt || gives_default(f, d->help, d->dflt), "%s's default", d->name);
  }
  for (int e = 0; e < rt_nexit_statuses; e++) {
    char want[64];
    snprintf(want, sizeof want, "\n  %s ", rt_exit_statuses[e].name);
    ck_assert_msg(strstr(out, want), "kiln --help lacks exit status %s", rt_exit_statuses[e].name);
  }
  ck_assert_ptr_nonnull(strstr(out, "\n  NO_COLOR "));
  ck_assert_ptr_nonnull(strstr(out, "\n  KILN_HOME "));
  free(f);
  free(out);
  free(err);

  /* kiln --man: roff, hyphens escaped so that options copy as typed */
  ck_assert_int_eq(run(KILN " --man", &out, &err), 0);
  ck_assert_msg(strstr(out, ".TH KILN 1 \"\" \"kiln " KILN_VERSION "\"") &&
                    strstr(out, "\n.SH NAME\nkiln \\- compiles") &&
                    strstr(out, "\n.SH EXIT STATUS\n") && strstr(out, "\n.SH ENVIRONMENT\n") &&
                    strstr(out, "\n.SH TRAINER OPTIONS\n"),
                "%s", out);
  ck_assert_ptr_nonnull(strstr(out, "\n.TP\n\\fB\\-\\-batch\\fR \\fIN\\fR\n"));
  ck_assert_ptr_nonnull(strstr(out, "\n.TP\n\\fB\\-\\-keep\\-checkpoints\\fR \\fIK\\fR\n"));
  ck_assert_ptr_nonnull(strstr(out, "\n.TP\n\\fB143\\fR\n"));
  ck_assert_ptr_null(strstr(out, "\033"));
  free(out);
  free(err);

  /* a built trainer's --help: the same table, every option with its default */
  char *text;
  size_t len;
  FILE *mem = open_memstream(&text, &len);
  ck_assert_ptr_nonnull(mem);
  rt_options_help(mem, "trainer");
  fclose(mem);
  f = flat(text);
  for (int t = 0; t < rt_ntrainer_options; t++) {
    const RtOptionDoc *d = &rt_trainer_options[t];
    ck_assert_msg(lists(text, d->name, d->arg), "the trainer's --help lacks %s", d->name);
    ck_assert_msg(!d->dflt || gives_default(f, d->help, d->dflt), "%s's default", d->name);
  }
  ck_assert_ptr_nonnull(strstr(text, "\n  143 "));
  free(f);
  free(text);
}
END_TEST

/* Every spelling of every trainer option is one the trainer's parser takes (and a flag takes
 * no value); the parser refuses what the table does not have. */
START_TEST(trainer_parser_takes_its_table) {
  for (int t = 0; t < rt_ntrainer_options; t++) {
    const RtOptionDoc *d = &rt_trainer_options[t];
    for (const char *p = d->name; *p;) {
      size_t n = strcspn(p, ",");
      char word[64];
      snprintf(word, sizeof word, "%.*s", (int)n, p);
      ck_assert_msg(rt_option_known(word), "%s", word);
      ck_assert_int_eq(rt_option_takes_value(word), d->arg != NULL);
      p += n;
      p += strspn(p, ", ");
    }
  }
  ck_assert(!rt_option_known("--epoch"));
  ck_assert(!rt_option_known("--batch"));
}
END_TEST

/* Exit statuses, exactly: 0 help and success, 1 bad input, 2 bad usage of every kind. */
START_TEST(exit_statuses) {
  char path[300], *out, *err;
  ck_assert_int_eq(run(KILN " shapes " EX "linear_toy.kiln", &out, NULL), 0);
  ck_assert_ptr_nonnull(strstr(out, "total parameters: 3\n"));
  free(out);
  snprintf(path, sizeof path, "%s/bad.kiln", tmpdir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("model m\nparam w: f32[2] = [1, 2]\nloss = sum(w * q)\nminimize loss\n", f);
  fclose(f);
  char cmd[600];
  snprintf(cmd, sizeof cmd, KILN " shapes '%s'", path);
  ck_assert_int_eq(run(cmd, &out, &err), 1);
  ck_assert_str_eq(out, "");
  ck_assert_ptr_nonnull(strstr(err, "bad.kiln:3:16: error: 'q' is not defined\n"
                                    "  loss = sum(w * q)\n                 ^\n"));
  free(out);
  free(err);
  static const struct { const char *args, *msg; } usage[] = {
      {"", "usage: kiln "},
      {" frobnicate x.kiln", "kiln: error: unknown command 'frobnicate'\n"},
      {" --frobnicate shapes x.kiln", "kiln: error: unknown option '--frobnicate'"},
      {" shapes", "kiln: error: 'shapes' needs a MODEL file\n"},
      {" --batch 4 shapes x.kiln", "kiln: error: --batch comes after the command"},
      {" shapes " EX "mlp.kiln --steps 3", "kiln: error: --steps belongs to check\n"
                                           "(run 'kiln shapes --help' for its options)\n"},
      {" emit " EX "mlp.kiln --tangents t", "kiln: error: --tangents belongs to jvp and hvp\n"},
      {" check " EX "mlp.kiln --epochs 3", "kiln: error: --epochs is a trainer option"},
      {" plot m.csv --batch 4", "kiln: error: --batch belongs to shapes, graph, "},
      {" shapes " EX "mlp.kiln --batch", "kiln: error: option --batch needs a value\n"},
      {" shapes " EX "mlp.kiln --batch=0", "--batch needs a positive integer, got '0'"},
      {" shapes " EX "mlp.kiln --verbose=yes", "kiln: error: option --verbose takes no value\n"},
      {" shapes " EX "mlp.kiln --color sometimes", "--color is 'auto', 'always' or 'never'"},
      {" train " EX "linear_toy.kiln --epochs 0", "kiln train: error: --epochs: expected a "
                                                  "positive number of epochs, got '0'\n"},
  };
  for (size_t i = 0; i < sizeof usage / sizeof *usage; i++) {
    snprintf(cmd, sizeof cmd, KILN "%s", usage[i].args);
    ck_assert_msg(run(cmd, &out, &err) == 2, "%s", cmd);
    ck_assert_msg(strstr(err, usage[i].msg) != NULL, "%s:\n%s", cmd, err);
    ck_assert_str_eq(out, "");
    free(out);
    free(err);
  }
  /* options work written --opt=value too, and before the command where they may */
  ck_assert_int_eq(run(KILN " --verbose --color=never shapes " EX "mlp.kiln --batch=4", &out,
                       &err), 0);
  ck_assert_ptr_nonnull(strstr(out, "(1.5 MFLOP; batch 4 step: 5.9 MFLOP)"));
  ck_assert_ptr_nonnull(strstr(err, "kiln: frontend (parse, lower, autodiff)"));
  free(out);
  free(err);
  ck_assert_int_eq(run(KILN " --version", &out, NULL), 0);
  ck_assert_ptr_nonnull(strstr(out, "kiln " KILN_VERSION " (backends: "));
  free(out);
}
END_TEST

/* The decision, all of it: the command line, then $NO_COLOR (set and not empty), then a
 * terminal that is not dumb. */
START_TEST(color_decision) {
  ck_assert(rt_color_wanted(RT_COLOR_AUTO, 1, NULL, "xterm"));
  ck_assert(rt_color_wanted(RT_COLOR_AUTO, 1, "", "xterm"));
  ck_assert(!rt_color_wanted(RT_COLOR_AUTO, 1, "1", "xterm"));
  ck_assert(!rt_color_wanted(RT_COLOR_AUTO, 1, NULL, "dumb"));
  ck_assert(!rt_color_wanted(RT_COLOR_AUTO, 0, NULL, "xterm"));
  ck_assert(rt_color_wanted(RT_COLOR_ALWAYS, 0, "1", "dumb"));
  ck_assert(!rt_color_wanted(RT_COLOR_NEVER, 1, NULL, "xterm"));
  char *argv[] = {"kiln", "--color=never", "shapes", "--color", "always", "--color", NULL};
  ck_assert_int_eq(rt_color_scan(6, argv), RT_COLOR_ALWAYS);
  ck_assert_int_eq(rt_color_scan(2, argv), RT_COLOR_NEVER);
  /* what is coloured: the kind and its line, the caret; other lines are left as they are */
  char *text;
  size_t len;
  static const char diag[] = "kiln: warning: cannot create x\nnote: see y\ntrain: 3 epochs\n"
                             "m.kiln:3:16: error: d\n  loss = q\n         ^\n";
  for (int on = 0; on < 2; on++) {
    FILE *mem = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(mem);
    rt_color_set(on);
    rt_color_puts(mem, diag);
    rt_color_set(0);
    fclose(mem);
    if (on)
      ck_assert_str_eq(text, "\033[1mkiln: \033[0m\033[1;35mwarning:\033[0m\033[1m cannot create "
                             "x\033[0m\n\033[1;36mnote:\033[0m\033[1m see y\033[0m\ntrain: 3 "
                             "epochs\n\033[1mm.kiln:3:16: \033[0m\033[1;31merror:\033[0m\033[1m d"
                             "\033[0m\n  loss = q\n         \033[1;32m^\033[0m\n");
    else
      ck_assert_str_eq(text, diag);
    free(text);
  }
}
END_TEST

#define RED_ERROR "\033[1;31merror:\033[0m"
#define GREEN_CARET "\033[1;32m^\033[0m"

/* A model error in colour: "error:" red, the location and message bold, the caret green, the
 * quoted model line as it is; and no escape at all where colour is off. */
START_TEST(colored_diagnostics) {
  char path[300], cmd[900], *out, *err;
  snprintf(path, sizeof path, "%s/bad.kiln", tmpdir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("model m\nparam w: f32[2] = [1, 2]\nloss = sum(w * q)\nminimize loss\n", f);
  fclose(f);
  static const struct { const char *env, *before, *after; bool color; } cases[] = {
      {"", "", " --color=always", true},
      {"NO_COLOR=1 ", "--color always ", "", true}, /* the command line wins */
      {"NO_COLOR=1 ", "", "", false},
      {"", "", "", false},                          /* stderr is a file */
      {"", "", " --color=never", false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    snprintf(cmd, sizeof cmd, "env -u NO_COLOR %s" KILN " %sshapes '%s'%s", cases[i].env,
             cases[i].before, path, cases[i].after);
    ck_assert_int_eq(run(cmd, &out, &err), 1);
    if (cases[i].color) {
      char want[600];
      snprintf(want, sizeof want, "\033[1m%s:3:16: \033[0m" RED_ERROR
               "\033[1m 'q' is not defined\033[0m\n  loss = sum(w * q)\n                 "
               GREEN_CARET "\n", path);
      ck_assert_msg(!strcmp(err, want), "%s:\n%s", cmd, err);
    } else {
      ck_assert_msg(!strchr(err, '\033') && strstr(err, "error: 'q' is not defined"), "%s:\n%s",
                    cmd, err);
    }
    free(out);
    free(err);
  }
  /* usage errors too, coloured as asked before they are found */
  ck_assert_int_eq(run(KILN " --color=always shapes x.kiln --frobnicate", NULL, &err), 2);
  ck_assert_msg(strstr(err, "\033[1mkiln: \033[0m" RED_ERROR "\033[1m unknown option"), "%s", err);
  free(err);
}
END_TEST

/* On a terminal (a pseudo-terminal made by script(1)) auto colours, unless $NO_COLOR is set and
 * not empty or $TERM is dumb. */
START_TEST(color_on_a_terminal) {
  char path[300], cmd[1200], *out;
  snprintf(path, sizeof path, "%s/bad.kiln", tmpdir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("loss = q\n", f);
  fclose(f);
  static const struct { const char *env; bool color; } cases[] = {
      {"TERM=xterm", true}, {"TERM=xterm NO_COLOR=", true}, {"TERM=xterm NO_COLOR=1", false},
      {"TERM=dumb", false}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    snprintf(cmd, sizeof cmd, "env -u NO_COLOR %s script -qec \"" KILN " shapes '%s'\" /dev/null",
             cases[i].env, path);
    run(cmd, &out, NULL);
    ck_assert_msg(strstr(out, "error:") != NULL, "is script(1) installed (bsdutils)? %s", out);
    ck_assert_msg((strstr(out, RED_ERROR) != NULL) == cases[i].color, "%s:\n%s", cmd, out);
    free(out);
  }
}
END_TEST

static Suite *help_suite(void) {
  Suite *s = suite_create("help");
  TCase *tc = tcase_create("help");
  tcase_set_timeout(tc, 120);
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_add_test(tc, every_command_help_lists_its_options);
  tcase_add_test(tc, help_and_man_list_everything);
  tcase_add_test(tc, trainer_parser_takes_its_table);
  tcase_add_test(tc, exit_statuses);
  tcase_add_test(tc, color_decision);
  tcase_add_test(tc, colored_diagnostics);
  tcase_add_test(tc, color_on_a_terminal);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return run_with_private_cache(help_suite()); }
