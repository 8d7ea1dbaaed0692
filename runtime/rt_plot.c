/*
 * rt_plot.c — a trainer's metrics CSV as a self-contained SVG: one panel for the losses
 * (train_loss, val_loss, test_loss), one for the accuracies and one for every other figure of
 * the validation or test set (a model's metrics, such as PSNR), each against the epoch, with axes,
 * ticks and a legend. Written by kiln itself, so a picture of a run needs nothing else; `kiln
 * plot` and a trainer's --plot both call it.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"

enum { MAX_COLS = 64, WIDTH = 720, PANEL = 280, MARGIN_L = 70, MARGIN_R = 170, MARGIN_T = 40 };

typedef struct Table {
  char *names[MAX_COLS];
  int ncols;
  double *v;        /* rows × ncols */
  int nrows;
} Table;

static void table_free(Table *t) {
  for (int i = 0; i < t->ncols; i++)
    free(t->names[i]);
  free(t->v);
}

/* The CSV a trainer writes: a header of names, then rows of numbers ("nan" where none). */
static int read_table(const char *path, Table *t, char *err) {
  struct stat st;
  FILE *f = rt_open_regular(path, &st, err);
  if (!f)
    return -1;
  char line[16384];
  memset(t, 0, sizeof *t);
  if (!fgets(line, sizeof line, f)) {
    fclose(f);
    return rt_errf(err, "%s: empty, expected a header line", path);
  }
  line[strcspn(line, "\r\n")] = 0;
  for (char *p = line, *comma; p; p = comma ? comma + 1 : NULL) {
    comma = strchr(p, ',');
    if (comma)
      *comma = 0;
    if (t->ncols == MAX_COLS) {
      fclose(f);
      table_free(t);
      return rt_errf(err, "%s: more than %d columns", path, MAX_COLS);
    }
    t->names[t->ncols++] = strdup(p);
  }
  if (strcmp(t->names[0], "epoch")) {
    fclose(f);
    table_free(t);
    return rt_errf(err, "%s: the first column is '%s', not 'epoch' (a trainer's --metrics file)",
                   path, t->names[0]);
  }
  int cap = 0, lineno = 1;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    line[strcspn(line, "\r\n")] = 0;
    if (!*line)
      continue;
    if (t->nrows == cap) {
      cap = cap ? 2 * cap : 64;
      double *v = realloc(t->v, (size_t)cap * (size_t)t->ncols * sizeof *v);
      if (!v) {
        fclose(f);
        table_free(t);
        return rt_errf(err, "out of memory");
      }
      t->v = v;
    }
    char *p = line;
    for (int c = 0; c < t->ncols; c++) {
      char *end;
      double x = strtod(p, &end);
      if (end == p || (*end != ',' && *end) || (c + 1 < t->ncols) != (*end == ',')) {
        fclose(f);
        table_free(t);
        return rt_errf(err, "%s:%d: expected %d numbers separated by commas", path, lineno,
                       t->ncols);
      }
      t->v[t->nrows * t->ncols + c] = x;
      p = end + (*end == ',');
    }
    t->nrows++;
  }
  fclose(f);
  return 0;
}

static int ends_with(const char *s, const char *tail) {
  size_t n = strlen(s), m = strlen(tail);
  return n >= m && !strcmp(s + n - m, tail);
}

/* Which panel a column is drawn in: 0 losses, 1 accuracies, 2 other figures of a set, -1 none. */
static int panel_of(const char *name) {
  if (ends_with(name, "_loss") || !strcmp(name, "train_loss"))
    return 0;
  if (ends_with(name, "_accuracy"))
    return 1;
  if (!strncmp(name, "val_", 4) || !strncmp(name, "test_", 5))
    return 2;
  return -1;
}

/* Text as SVG character data: names come from the CSV. */
static void xml_text(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '<')
      fputs("&lt;", f);
    else if (*s == '>')
      fputs("&gt;", f);
    else if (*s == '&')
      fputs("&amp;", f);
    else if ((unsigned char)*s >= 32)
      fputc(*s, f);
  }
}

/* A step of 1, 2 or 5 times a power of ten giving about five ticks over [lo, hi]. */
static double tick_step(double lo, double hi) {
  double span = hi - lo, raw = span / 5, p = pow(10, floor(log10(raw))), f = raw / p;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

static const char *const colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf"};

static void draw_panel(FILE *f, const Table *t, int which, const char *title, int top) {
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (int r = 0; r < t->nrows; r++) {
    double x = t->v[r * t->ncols];
    for (int c = 1; c < t->ncols; c++) {
      double y = t->v[r * t->ncols + c];
      if (panel_of(t->names[c]) != which || !isfinite(y) || !isfinite(x))
        continue;
      xlo = fmin(xlo, x), xhi = fmax(xhi, x), ylo = fmin(ylo, y), yhi = fmax(yhi, y);
    }
  }
  if (xhi == xlo)
    xlo -= 1, xhi += 1;
  if (yhi == ylo)
    ylo -= 0.5, yhi += 0.5;
  double pad = (yhi - ylo) * 0.05;
  ylo -= pad, yhi += pad;
  int w = WIDTH - MARGIN_L - MARGIN_R, h = PANEL - 60, x0 = MARGIN_L, y0 = top + 30;
#define PX(x) (x0 + ((x) - xlo) / (xhi - xlo) * w)
#define PY(y) (y0 + h - ((y) - ylo) / (yhi - ylo) * h)
  fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", x0,
          top + 20, title);
  fprintf(f, "<rect class=\"plot\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
          "stroke=\"#444\"/>\n", x0, y0, w, h);
  double ys = tick_step(ylo, yhi);
  for (double y = ceil(ylo / ys) * ys; y <= yhi; y += ys)
    fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
            "<text class=\"ytick\" x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%g"
            "</text>\n", x0, x0 + w, PY(y), PY(y), x0 - 6, PY(y) + 4, fabs(y) < ys / 1e6 ? 0 : y);
  double xs = tick_step(xlo, xhi) < 1 ? 1 : tick_step(xlo, xhi);
  for (double x = ceil(xlo / xs) * xs; x <= xhi; x += xs)
    fprintf(f, "<text class=\"xtick\" x=\"%.1f\" y=\"%d\" font-size=\"11\" "
            "text-anchor=\"middle\">%g</text>\n", PX(x), y0 + h + 16, x);
  fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">epoch</text>\n",
          x0 + w / 2, y0 + h + 34);
  int k = 0;
  for (int c = 1; c < t->ncols; c++) {
    if (panel_of(t->names[c]) != which)
      continue;
    const char *colour = colours[k % (int)(sizeof colours / sizeof *colours)];
    fprintf(f, "<polyline class=\"series\" data-name=\"");
    xml_text(f, t->names[c]);
    fprintf(f, "\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", colour);
    for (int r = 0; r < t->nrows; r++) {
      double x = t->v[r * t->ncols], y = t->v[r * t->ncols + c];
      if (isfinite(x) && isfinite(y))
        fprintf(f, "%.1f,%.1f ", PX(x), PY(y));
    }
    fprintf(f, "\"/>\n");
    fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>"
            "<text class=\"legend\" x=\"%d\" y=\"%d\" font-size=\"12\">", x0 + w + 12,
            x0 + w + 32, y0 + 10 + 18 * k, y0 + 10 + 18 * k, colour, x0 + w + 38,
            y0 + 14 + 18 * k);
    xml_text(f, t->names[c]);
    fprintf(f, "</text>\n");
    k++;
  }
#undef PX
#undef PY
}

int rt_plot_csv(const char *csv_path, const char *svg_path, char *err) {
  Table t;
  if (read_table(csv_path, &t, err))
    return -1;
  static const char *const titles[] = {"loss", "accuracy", "other figures"};
  int present[3] = {0}, npanels = 0;
  for (int c = 1; c < t.ncols; c++) {
    int p = panel_of(t.names[c]);
    for (int r = 0; p >= 0 && r < t.nrows; r++)
      present[p] |= isfinite(t.v[r * t.ncols + c]);
  }
  for (int p = 0; p < 3; p++)
    npanels += present[p];
  if (!t.nrows || !npanels) {
    table_free(&t);
    return rt_errf(err, "%s: no losses, accuracies or figures to draw (%d rows)", csv_path,
                   t.nrows);
  }
  char tmp[4096], target[4096];
  int in_place = rt_write_target(svg_path, target, sizeof target, err);
  FILE *f = in_place < 0 ? NULL
            : in_place   ? fopen(svg_path, "w")
                         : rt_create_temp(target, tmp, sizeof tmp, err);
  if (!f) {
    table_free(&t);
    return in_place > 0 ? rt_errf(err, "%s: cannot open: %s", svg_path, strerror(errno)) : -1;
  }
  int height = MARGIN_T + npanels * PANEL + 20;
  fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
          "width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n"
          "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
          "<text x=\"%d\" y=\"24\" font-size=\"16\">", WIDTH, height, WIDTH, height, MARGIN_L);
  xml_text(f, csv_path);
  fprintf(f, " (%d epoch%s)</text>\n", t.nrows, t.nrows == 1 ? "" : "s");
  int top = MARGIN_T;
  for (int p = 0; p < 3; p++)
    if (present[p]) {
      draw_panel(f, &t, p, titles[p], top);
      top += PANEL;
    }
  fprintf(f, "</svg>\n");
  table_free(&t);
  int bad = fflush(f) || ferror(f);
  int e = errno;
  if (!in_place && !bad)
    bad = fsync(fileno(f)) != 0;
  if (fclose(f) || bad || (!in_place && rename(tmp, target))) {
    if (!in_place)
      unlink(tmp);
    return rt_errf(err, "%s: cannot write: %s", svg_path, strerror(e ? e : EIO));
  }
  return 0;
}
