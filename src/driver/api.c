/*
 * api.c — include/kiln.h on top of the phases. Each function sets up the error trap, so a bad
 * model anywhere in the pipeline becomes KILN_ERROR and a message, never an exit or a crash.
 */
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "front/front.h"
#include "plan/plan.h"
#include "cg/cg.h"
#include "xform/xform.h"

struct kiln_model {
  Graph *g;
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
  Trap t;
  Graph *volatile g = NULL;
  if (KILN_TRY(&t)) {
    g = text ? fe_compile_string(path, text) : fe_compile_file(path);
    train_build(g);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    ir_free(g);
    free(m);
    return fail_with(t.msg);
  }
  m->g = g;
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
  ir_free(m->g);
  free(m);
}

int64_t kiln_param_count(const kiln_model *m) {
  int64_t total = 0;
  int64_t symvals[IR_MAX_SYMS] = {1};
  for (int i = 0; i < m->g->nparams; i++)
    total += shape_numel(&ir_at(m->g, m->g->params[i])->shape, symvals);
  return total;
}

int kiln_param_tensors(const kiln_model *m) { return m->g->nparams; }

int kiln_param_info(const kiln_model *m, int i, const char **name, int64_t *dims) {
  if (i < 0 || i >= m->g->nparams) return -1;
  const Node *n = ir_at(m->g, m->g->params[i]);
  int64_t symvals[IR_MAX_SYMS] = {1};
  if (name) *name = n->name;
  for (int d = 0; d < n->shape.rank && dims; d++) dims[d] = dim_value(n->shape.d[d], symvals);
  return n->shape.rank;
}

kiln_status kiln_emit_c(kiln_model *m, int64_t batch, char **source) {
  *source = NULL;
  last_error[0] = 0;
  Trap t;
  Plan plan = {0};
  Buf b = {0};
  if (KILN_TRY(&t)) {
    Graph *g = m->g;
    int64_t bsz = batch > 0 ? batch : g->train.batch > 0 ? g->train.batch : (g->nsyms ? 64 : 1);
    plan_build(g, bsz, NULL, &plan);
    cg_emit_c(g, &plan, &b);
    kiln_trap_end(&t);
  } else {
    kiln_trap_end(&t);
    plan_free(&plan);
    buf_free(&b);
    return fail_with(t.msg);
  }
  plan_free(&plan);
  *source = b.p;
  return KILN_OK;
}
