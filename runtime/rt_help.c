/*
 * rt_help.c — help text on a terminal, and what both kiln and its trainers say about themselves:
 * their exit statuses.
 *
 * Option and command descriptions are written once, as unwrapped paragraphs in tables (the
 * trainer's in rt_train.c, kiln's in tools/cli.c) that the parsers use too; this file wraps them
 * into columns for --help, and tools/cli.c turns the same tables into the manual page.
 */
#include <stdbool.h>
#include <string.h>

#include "runtime.h"

/* Every exit status kiln and a built trainer end with; the same numbers for both. */
const RtHelpItem rt_exit_statuses[] = {
    {"0", "success (also for --help)"},
    {"1", "bad input or a failed run: a model, data or parameter file that cannot be read or "
          "does not fit, a training run that diverged (a loss that is NaN or infinite), a check "
          "that found a disagreement, a compiler or a file that failed; the message is on stderr"},
    {"2", "bad usage: an unknown command or option (the nearest known one is named), a "
          "missing or malformed value, an option of another command"},
    {"130", "training stopped by SIGINT (Ctrl-C) after the step in progress; a checkpoint was "
            "written and the command that resumes the run printed"},
    {"143", "the same for SIGTERM"},
};
const int rt_nexit_statuses = sizeof rt_exit_statuses / sizeof *rt_exit_statuses;

/* Prints text from column `at` (the cursor is there), wrapped at RT_HELP_WIDTH with the
 * continuation lines indented to `col`; a word longer than the room gets a line of its own.
 * Returns the column it ends at. */
static int wrap(FILE *f, int at, int col, const char *text) {
  int first = 1;
  for (const char *p = text; *p;) {
    if (*p == ' ') {
      p++;
      continue;
    }
    int n = (int)strcspn(p, " ");
    if (!first && at + 1 + n > RT_HELP_WIDTH) {
      fprintf(f, "\n%*s", col, "");
      at = col;
    } else if (!first) {
      fputc(' ', f);
      at++;
    }
    fprintf(f, "%.*s", n, p);
    at += n;
    first = 0;
    p += n;
  }
  return at;
}

void rt_help_item(FILE *f, int indent, const char *left, int col, const char *text,
                  const char *dflt) {
  char all[4096];
  snprintf(all, sizeof all, dflt ? "%s (default: %s)" : "%s", text, dflt);
  int n, at = col;
  bool long_left = indent + (int)strlen(left) > RT_HELP_WIDTH;
  if (!long_left)
    n = fprintf(f, "%*s%s", indent, "", left);
  else /* a long synopsis: wrapped too, its continuation lines indented further */
    n = wrap(f, fprintf(f, "%*s", indent, ""), indent + 6, left);
  if (long_left)
    fprintf(f, "\n%*s", col, "");
  else if (n + 2 <= col)
    fprintf(f, "%*s", col - n, "");
  else if (n + 2 <= col + 6) /* a little past the column: on the same line all the same */
    at = fprintf(f, "  ") + n;
  else
    fprintf(f, "\n%*s", col, "");
  wrap(f, at, col, all);
  fputc('\n', f);
}

void rt_help_paragraph(FILE *f, int indent, int hang, const char *text) {
  fprintf(f, "%*s", indent, "");
  wrap(f, indent, indent + hang, text);
  fputc('\n', f);
}

int rt_option_spelled(const char *names, const char *word, size_t len) {
  for (const char *p = names; *p;) {
    size_t n = strcspn(p, ",");
    if (n == len && !strncmp(p, word, len))
      return 1;
    p += n;
    p += strspn(p, ", ");
  }
  return 0;
}
