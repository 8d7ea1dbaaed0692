/*
 * api.c — include/kiln.h on the session pipeline (session.c). The session is the error boundary,
 * so a bad model anywhere in the pipeline becomes KILN_ERROR and its diagnostic, never an exit, a
 * crash or a line on stderr.
 */
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "driver/driver.h"

struct kiln_model {
  Session s;              /* opened: the training graph */
};

static _Thread_local char last_error[4096];

const char *kiln_last_error(void) { return last_error; }

static kiln_status fail_with(const char *msg) {
  snprintf(last_error, sizeof last_error, "%s", msg);
  return KILN_ERROR;
}

static kiln_status compile(const char *path, const char *text, kiln_model **out) {
  *out = NULL;
  last_error[0] = 0;
  kiln_model *m = calloc(1, sizeof *m);
  if (!m) return fail_with("error: out of memory\n");
  int rc = text ? session_open_text(&m->s, path, text, NULL) : session_open_file(&m->s, path, NULL);
  if (rc) {
    fail_with(m->s.error);
    session_close(&m->s);
    free(m);
    return KILN_ERROR;
  }
  *out = m;
  return KILN_OK;
}

kiln_status kiln_model_from_file(const char *path, kiln_model **out) {
  if (!path || !out) return fail_with("error: kiln_model_from_file: NULL argument\n");
  return compile(path, NULL, out);
}

kiln_status kiln_model_from_string(const char *name, const char *text, kiln_model **out) {
  if (!text || !out) return fail_with("error: kiln_model_from_string: NULL argument\n");
  return compile(name ? name : "<string>", text, out);
}

void kiln_model_free(kiln_model *m) {
  if (!m) return;
  session_close(&m->s);
  free(m);
}

int64_t kiln_param_count(const kiln_model *m) {
  int64_t total = 0;
  int64_t symvals[IR_MAX_SYMS] = {1};
  for (int i = 0; i < m->s.g->nparams; i++)
    total += shape_numel(&ir_at(m->s.g, m->s.g->params[i])->shape, symvals);
  return total;
}

int kiln_param_tensors(const kiln_model *m) { return m->s.g->nparams; }

int kiln_param_info(const kiln_model *m, int i, const char **name, int64_t *dims) {
  if (i < 0 || i >= m->s.g->nparams) return -1;
  const Node *n = ir_at(m->s.g, m->s.g->params[i]);
  int64_t symvals[IR_MAX_SYMS] = {1};
  if (name) *name = n->name;
  for (int d = 0; d < n->shape.rank && dims; d++) dims[d] = dim_value(n->shape.d[d], symvals);
  return n->shape.rank;
}

/* Each emit is a session of its own over the model's graph, so a model can be emitted any number
 * of times, for any batch, without holding on to earlier plans. */
kiln_status kiln_emit_c(kiln_model *m, int64_t batch, char **source) {
  *source = NULL;
  last_error[0] = 0;
  Options o;
  session_default_options(&o);
  o.batch = batch > 0 ? batch : 0;
  Session s;
  session_adopt(&s, m->s.g, &o);
  if (session_emit(&s)) {
    fail_with(s.error);
    session_close(&s);
    return KILN_ERROR;
  }
  *source = s.c.p;
  s.c = (Buf){0};
  session_close(&s);
  return KILN_OK;
}
