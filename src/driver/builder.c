/*
 * builder.c — the C builder of include/kiln.h: each call writes one statement of kiln's language,
 * and finishing compiles the text through the front end (api.c's kiln_model_from_string).
 *
 * Why text: a model built in C then goes through exactly the checks, shape rules and layers of a
 * model file, both modes included (the evaluation pass is a second lowering of the statements),
 * and every error points at the line of the call that caused it. Nothing a host passes reaches
 * the text unchecked: names must be identifiers, words too, and numbers are finite and printed so
 * that they read back as the same double.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "driver/driver.h"
#include "front/front.h"

struct kiln_builder {
  char name[128];
  Buf body;             /* the statements, one a line */
  Buf train;            /* the train block's settings, one a line */
  Buf regularize;       /* regularizers, collected into one list */
  Buf text;             /* the whole model, made by kiln_builder_source / finish */
  int nvars;
  char error[1024];     /* the first failure; every later call repeats it */
};

static kiln_status fail(kiln_builder *b, const char *fmt, ...) KILN_PRINTF(2, 3);
static kiln_status fail(kiln_builder *b, const char *fmt, ...) {
  if (b && !b->error[0]) {
    va_list ap;
    va_start(ap, fmt);
    kiln_vformat_error(b->error, sizeof b->error, fmt, ap);
    va_end(ap);
  }
  return api_set_error(b ? b->error : "error: NULL builder\n");
}

/* Each call starts here: the builder exists and has not failed; the message is cleared. */
static kiln_status usable(kiln_builder *b) {
  if (!b)
    return api_set_error("error: NULL builder\n");
  if (b->error[0])
    return api_set_error(b->error);
  return api_set_error(NULL);
}

/* Names the host chooses; the `_` prefix is the builder's own (generated variables). */
static bool host_name(const char *s) { return s && lex_is_ident(s) && s[0] != '_'; }

/* A buffer that ran out of memory is a failure of the call that grew it. */
static kiln_status grown(kiln_builder *b, const Buf *buf) {
  return buf->lost ? fail(b, "out of memory") : KILN_OK;
}

static kiln_status number(kiln_builder *b, Buf *o, const char *what, double v) {
  if (!isfinite(v))
    return fail(b, "%s must be a finite number, got %g", what, v);
  /* %.17g reads back as the same double; integers print without a fraction. */
  buf_printf(o, "%.17g", v);
  return KILN_OK;
}

static kiln_status var(kiln_builder *b, Buf *o, kiln_var v) {
  if (v < 0 || v >= b->nvars)
    return fail(b, "no tensor %d in this builder (it has made %d)", (int)v, b->nvars);
  buf_printf(o, "_%d", (int)v);
  return KILN_OK;
}

/* "key=value, ..." of a call; keyless options are positional and come first. */
static kiln_status options(kiln_builder *b, Buf *o, const char *fn, const kiln_option *opts,
                           int n, bool first) {
  if (n < 0 || (n > 0 && !opts))
    return fail(b, "%s: %d options at %p", fn, n, (const void *)opts);
  for (int i = 0; i < n; i++) {
    const kiln_option *op = &opts[i];
    if (op->key && !lex_is_ident(op->key))
      return fail(b, "%s: option name '%s' is not an identifier", fn, op->key);
    if (!op->key && i > 0 && opts[i - 1].key)
      return fail(b, "%s: a positional option (no key) after keyword '%s'", fn, opts[i - 1].key);
    buf_puts(o, first && i == 0 ? "" : ", ");
    if (op->key)
      buf_printf(o, "%s=", op->key);
    if (op->word) {
      if (!lex_is_ident(op->word))
        return fail(b, "%s: option %s's word '%s' is not an identifier", fn,
                    op->key ? op->key : "(positional)", op->word);
      buf_puts(o, op->word);
    } else if (number(b, o, op->key ? op->key : fn, op->number)) {
      return KILN_ERROR;
    }
  }
  return KILN_OK;
}

kiln_status kiln_builder_new(const char *name, kiln_builder **out) {
  if (!out)
    return api_set_error("error: kiln_builder_new: NULL argument\n");
  *out = NULL;
  api_set_error(NULL);
  if (!name || !lex_is_ident(name) || strlen(name) >= sizeof((kiln_builder *)0)->name) {
    char msg[512];
    snprintf(msg, sizeof msg, "error: kiln_builder_new: the model name '%.200s' is not an "
             "identifier (letters, digits, _) of at most 127 characters\n", name ? name : "");
    return api_set_error(msg);
  }
  kiln_builder *b = calloc(1, sizeof *b);
  if (!b)
    return api_set_error("error: out of memory\n");
  snprintf(b->name, sizeof b->name, "%s", name);
  b->body.lossy = b->train.lossy = b->regularize.lossy = b->text.lossy = true;
  *out = b;
  return KILN_OK;
}

void kiln_builder_free(kiln_builder *b) {
  if (!b)
    return;
  buf_free(&b->body);
  buf_free(&b->train);
  buf_free(&b->regularize);
  buf_free(&b->text);
  free(b);
}

/* Starts `_N = `, N the handle of the variable the line makes (commit returns it, after the
 * arguments are read: out may be one of them); a named layer gets its name from `as NAME` at the
 * end of the line. */
static kiln_status assign(kiln_builder *b, const char *fn, const char *name, Buf *line,
                          kiln_var *out) {
  if (!out)
    return fail(b, "%s: NULL result", fn);
  if (name && !host_name(name))
    return fail(b, "%s: the name '%s' is not an identifier (letters, digits, _; not starting "
                   "with _)", fn, name);
  buf_printf(line, "_%d = ", b->nvars);
  return KILN_OK;
}

/* Appends a finished line, or drops it when something failed on the way; a line that makes a
 * variable returns its handle through out. */
static kiln_status commit(kiln_builder *b, Buf *line, kiln_var *out) {
  if (line->lost) {
    buf_free(line);
    return fail(b, "out of memory");
  }
  buf_printf(&b->body, "%s\n", line->p);
  buf_free(line);
  if (b->body.lost)
    return fail(b, "out of memory");
  if (out)
    *out = b->nvars++;
  return KILN_OK;
}

kiln_status kiln_input(kiln_builder *b, const char *name, int dtype, int rank,
                       const int64_t *dims, const char *feed, double scale, kiln_var *out) {
  if (usable(b))
    return KILN_ERROR;
  if (!out)
    return fail(b, "kiln_input: NULL result");
  if (!host_name(name))
    return fail(b, "kiln_input: the name '%s' is not an identifier (letters, digits, _; not "
                   "starting with _)", name ? name : "(null)");
  if (dtype != KILN_F32 && dtype != KILN_F64 && dtype != KILN_I32)
    return fail(b, "kiln_input '%s': unknown dtype %d", name, dtype);
  if (rank < 0 || rank > KILN_ABI_MAX_RANK || (rank > 0 && !dims))
    return fail(b, "kiln_input '%s': rank %d (at most %d, with dims)", name, rank,
                KILN_ABI_MAX_RANK);
  if (feed && strcmp(feed, "images") && strcmp(feed, "labels"))
    return fail(b, "kiln_input '%s': feed must be \"images\", \"labels\" or NULL, got '%s'",
                name, feed);
  if (scale != 1 && (!feed || strcmp(feed, "images")))
    return fail(b, "kiln_input '%s': only an input fed from images has a scale (use 1)", name);
  Buf line = {.lossy = true};
  /* The input keeps the host's name (the C API feeds it by that name); a variable aliases it. */
  buf_printf(&line, "input %s: %s", name, dtype == KILN_F64 ? "f64" : dtype == KILN_I32 ? "i32"
                                                                                       : "f32");
  if (rank > 0)
    buf_puts(&line, "[");
  for (int i = 0; i < rank; i++) {
    if (dims[i] != KILN_BATCH && dims[i] < 1) {
      buf_free(&line);
      return fail(b, "kiln_input '%s': dimension %d is %lld (> 0, or KILN_BATCH)", name, i,
                  (long long)dims[i]);
    }
    if (dims[i] == KILN_BATCH)
      buf_printf(&line, "%sB", i ? ", " : "");
    else
      buf_printf(&line, "%s%lld", i ? ", " : "", (long long)dims[i]);
  }
  if (rank > 0)
    buf_puts(&line, "]");
  if (feed) {
    buf_printf(&line, " from %s", feed);
    if (!strcmp(feed, "images") && scale != 1) {
      buf_puts(&line, " * ");
      if (number(b, &line, "kiln_input scale", scale)) {
        buf_free(&line);
        return KILN_ERROR;
      }
    }
  }
  buf_printf(&line, "\n_%d = %s", b->nvars, name);
  return commit(b, &line, out);
}

kiln_status kiln_call(kiln_builder *b, const char *fn, const char *name, const kiln_var *args,
                      int nargs, const kiln_option *opts, int nopts, kiln_var *out) {
  if (usable(b))
    return KILN_ERROR;
  if (!fn || !lex_is_ident(fn))
    return fail(b, "kiln_call: the function '%s' is not an identifier", fn ? fn : "(null)");
  if (nargs < 0 || (nargs > 0 && !args))
    return fail(b, "%s: %d arguments at %p", fn, nargs, (const void *)args);
  Buf line = {.lossy = true};
  if (assign(b, fn, name, &line, out)) {
    buf_free(&line);
    return KILN_ERROR;
  }
  buf_printf(&line, "%s(", fn);
  kiln_status st = KILN_OK;
  for (int i = 0; i < nargs && !st; i++) {
    buf_puts(&line, i ? ", " : "");
    st = var(b, &line, args[i]);
  }
  if (!st)
    st = options(b, &line, fn, opts, nopts, nargs == 0);
  if (st) {
    buf_free(&line);
    return KILN_ERROR;
  }
  buf_puts(&line, ")");
  if (name)
    buf_printf(&line, " as %s", name);
  return commit(b, &line, out);
}

kiln_status kiln_conv2d(kiln_builder *b, const char *name, kiln_var x, int64_t out,
                        int64_t kernel, int64_t stride, int64_t pad, kiln_var *y) {
  kiln_option o[4] = {{"out", (double)out, NULL}, {"kernel", (double)kernel, NULL},
                      {"pad", (double)pad, NULL}, {"stride", (double)stride, NULL}};
  return kiln_call(b, "conv2d", name, &x, 1, o, stride ? 4 : 3, y);
}

kiln_status kiln_linear(kiln_builder *b, const char *name, kiln_var x, int64_t out,
                        kiln_var *y) {
  kiln_option o = {"out", (double)out, NULL};
  return kiln_call(b, "linear", name, &x, 1, &o, 1, y);
}

kiln_status kiln_batchnorm(kiln_builder *b, const char *name, kiln_var x, kiln_var *y) {
  return kiln_call(b, "batchnorm", name, &x, 1, NULL, 0, y);
}

kiln_status kiln_maxpool2d(kiln_builder *b, kiln_var x, int64_t kernel, int64_t stride,
                           kiln_var *y) {
  kiln_option o[2] = {{"kernel", (double)kernel, NULL}, {"stride", (double)stride, NULL}};
  return kiln_call(b, "maxpool2d", NULL, &x, 1, o, stride ? 2 : 1, y);
}

kiln_status kiln_relu(kiln_builder *b, kiln_var x, kiln_var *y) {
  return kiln_call(b, "relu", NULL, &x, 1, NULL, 0, y);
}

kiln_status kiln_flatten(kiln_builder *b, kiln_var x, kiln_var *y) {
  return kiln_call(b, "flatten", NULL, &x, 1, NULL, 0, y);
}

kiln_status kiln_dropout(kiln_builder *b, const char *name, kiln_var x, double p, kiln_var *y) {
  kiln_option o = {"p", p, NULL};
  return kiln_call(b, "dropout", name, &x, 1, &o, 1, y);
}

kiln_status kiln_cross_entropy(kiln_builder *b, kiln_var logits, kiln_var labels,
                               kiln_var *loss) {
  kiln_var args[2] = {logits, labels};
  return kiln_call(b, "cross_entropy", NULL, args, 2, NULL, 0, loss);
}

/* `output _N` / `minimize _N` */
static kiln_status declare(kiln_builder *b, const char *keyword, kiln_var x) {
  if (usable(b))
    return KILN_ERROR;
  Buf line = {.lossy = true};
  buf_printf(&line, "%s ", keyword);
  if (var(b, &line, x)) {
    buf_free(&line);
    return KILN_ERROR;
  }
  return commit(b, &line, NULL);
}

kiln_status kiln_output(kiln_builder *b, kiln_var x) { return declare(b, "output", x); }

kiln_status kiln_minimize(kiln_builder *b, kiln_var loss) { return declare(b, "minimize", loss); }

kiln_status kiln_train_number(kiln_builder *b, const char *key, double value) {
  if (usable(b))
    return KILN_ERROR;
  if (!key || !lex_is_ident(key))
    return fail(b, "kiln_train_number: the key '%s' is not an identifier", key ? key : "(null)");
  buf_printf(&b->train, "  %s = ", key);
  if (number(b, &b->train, key, value))
    return KILN_ERROR;
  buf_puts(&b->train, "\n");
  return grown(b, &b->train);
}

kiln_status kiln_train_call(kiln_builder *b, const char *key, const char *fn,
                            const kiln_option *opts, int nopts) {
  if (usable(b))
    return KILN_ERROR;
  if (!key || !lex_is_ident(key))
    return fail(b, "kiln_train_call: the key '%s' is not an identifier", key ? key : "(null)");
  if (!fn || !lex_is_ident(fn))
    return fail(b, "kiln_train_call %s: the function '%s' is not an identifier", key,
                fn ? fn : "(null)");
  Buf value = {.lossy = true};
  buf_puts(&value, fn);
  /* A scheme without options is a word (`init = he`); with options, a call. */
  if (nopts > 0) {
    buf_puts(&value, "(");
    if (options(b, &value, fn, opts, nopts, true)) {
      buf_free(&value);
      return KILN_ERROR;
    }
    buf_puts(&value, ")");
  }
  if (!strcmp(key, "regularize"))
    buf_printf(&b->regularize, "%s%s", b->regularize.len ? ", " : "", value.p ? value.p : "");
  else
    buf_printf(&b->train, "  %s = %s\n", key, value.p ? value.p : "");
  bool lost = value.lost;
  buf_free(&value);
  if (lost)
    return fail(b, "out of memory");
  return grown(b, !strcmp(key, "regularize") ? &b->regularize : &b->train);
}

/* The whole model: name, statements, train block. */
static const char *source(kiln_builder *b) {
  Buf *t = &b->text;
  t->len = 0;
  buf_printf(t, "model %s\n", b->name);
  if (b->body.p)
    buf_puts(t, b->body.p);
  if (b->train.len || b->regularize.len) {
    buf_puts(t, "train {\n");
    if (b->train.p)
      buf_puts(t, b->train.p);
    if (b->regularize.len)
      buf_printf(t, "  regularize = [%s]\n", b->regularize.p);
    buf_puts(t, "}\n");
  }
  return t->lost ? NULL : t->p;
}

const char *kiln_builder_source(const kiln_builder *b) {
  if (!b)
    return "";
  const char *s = source((kiln_builder *)b);
  return s ? s : "";
}

kiln_status kiln_builder_finish(kiln_builder *b, kiln_model **out) {
  if (!out)
    return fail(b, "kiln_builder_finish: NULL argument");
  *out = NULL;
  if (usable(b))
    return KILN_ERROR;
  const char *text = source(b);
  if (!text)
    return fail(b, "out of memory");
  /* Messages name the model in angle brackets: the text is the builder's, not a file. */
  char file[160];
  snprintf(file, sizeof file, "<%s>", b->name);
  return kiln_model_from_string(file, text, out);
}
