/*
 * rt_color.c — colour in diagnostics, as clang and gcc show them on a terminal.
 *
 * Messages are made and kept as plain text (the library's Session.error, the runtime's err
 * buffers); colour is added only by rt_color_puts, at the moment a program writes one to its
 * stderr, and only when the program's main said so (rt_color_set) after weighing --color,
 * $NO_COLOR, $TERM and whether stderr is a terminal (rt_color_wanted). The decision is one
 * process-wide flag: kiln and the trainer runtime it runs in process print alike.
 */
#include <stdarg.h>
#include <string.h>

#include "runtime.h"

#define BOLD "\033[1m"
#define RED "\033[1;31m"
#define MAGENTA "\033[1;35m"
#define CYAN "\033[1;36m"
#define GREEN "\033[1;32m"
#define RESET "\033[0m"

static int color_on;

int rt_color_parse(const char *s, RtColorMode *mode) {
  static const char *const names[] = {"auto", "always", "never"};
  for (int i = 0; i < 3; i++)
    if (!strcmp(s, names[i])) {
      *mode = (RtColorMode)i;
      return 0;
    }
  return -1;
}

RtColorMode rt_color_scan(int argc, char **argv) {
  RtColorMode mode = RT_COLOR_AUTO, m;
  for (int i = 1; i < argc; i++) {
    const char *val = NULL;
    if (!strncmp(argv[i], "--color=", 8))
      val = argv[i] + 8;
    else if (!strcmp(argv[i], "--color") && i + 1 < argc)
      val = argv[++i];
    if (val && !rt_color_parse(val, &m))
      mode = m;
  }
  return mode;
}

int rt_color_wanted(RtColorMode mode, int is_tty, const char *no_color, const char *term) {
  if (mode != RT_COLOR_AUTO)
    return mode == RT_COLOR_ALWAYS;
  if (no_color && *no_color)
    return 0;
  return is_tty && !(term && !strcmp(term, "dumb"));
}

void rt_color_set(int on) { color_on = on; }

int rt_color_on(void) { return color_on; }

/* The diagnostic kind a line announces ("error: " after the start or after ": "), its colour,
 * and where it starts; NULL for a line that is not a diagnostic's first. */
static const char *kind_of(const char *line, size_t len, const char **color, size_t *klen) {
  static const struct { const char *word, *color; } kinds[] = {
      {"error:", RED}, {"warning:", MAGENTA}, {"note:", CYAN}};
  for (size_t i = 0; i < len; i++) {
    if (i && !(i >= 2 && line[i - 1] == ' ' && line[i - 2] == ':'))
      continue;
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
      size_t n = strlen(kinds[k].word);
      if (i + n <= len && !strncmp(line + i, kinds[k].word, n) &&
          (i + n == len || line[i + n] == ' ')) {
        *color = kinds[k].color;
        *klen = n;
        return line + i;
      }
    }
  }
  return NULL;
}

/* A caret line: blanks and a single '^' (the column a diagnostic points at). */
static int is_caret(const char *line, size_t len) {
  size_t blanks = strspn(line, " \t");
  return blanks < len && line[blanks] == '^' && blanks + 1 == len;
}

void rt_color_puts(FILE *f, const char *text) {
  if (!color_on) {
    fputs(text, f);
    return;
  }
  for (const char *p = text; *p;) {
    size_t len = strcspn(p, "\n");
    const char *color, *kind;
    size_t klen;
    if ((kind = kind_of(p, len, &color, &klen))) {
      const char *rest = kind + klen;
      size_t nrest = len - (size_t)(rest - p);
      if (kind > p)
        fprintf(f, BOLD "%.*s" RESET, (int)(kind - p), p);
      fprintf(f, "%s%.*s" RESET, color, (int)klen, kind);
      if (nrest)
        fprintf(f, BOLD "%.*s" RESET, (int)nrest, rest);
    } else if (is_caret(p, len)) {
      size_t blanks = strspn(p, " \t");
      fprintf(f, "%.*s" GREEN "^" RESET, (int)blanks, p);
    } else {
      fwrite(p, 1, len, f);
    }
    p += len;
    if (*p == '\n') {
      fputc('\n', f);
      p++;
    }
  }
}

void rt_color_printf(FILE *f, const char *fmt, ...) {
  char text[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  rt_color_puts(f, text);
}
