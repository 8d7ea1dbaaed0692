/*
 * session.c — the one pipeline: model text → graph → training graph → plan → C → loaded program.
 *
 * Every user of the compiler goes through here: the kiln command, `kiln check`, the public API in
 * api.c and the tests. A Session holds one model on its way down the pipeline together with the
 * options that shape it; each stage runs the stages before it that have not run yet, so a caller
 * asks for what it wants ("the C source", "a loaded program") and never spells out the sequence.
 *
 * This is the library's error boundary. Below it phases fail by unwinding (kiln_fail); here each
 * stage sets a trap and turns a failure into -1 with the diagnostic in Session.error — the model
 * line with a caret, or the tensor and its shapes — and the session stays valid (closing it frees
 * everything). Nothing here prints: drivers decide where diagnostics go.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "driver/driver.h"
#include "backend/backend.h"
#include "cg/cg.h"
#include "front/front.h"
#include "xform/xform.h"

void session_default_options(Options *o) {
  memset(o, 0, sizeof *o);
  sched_default_options(&o->sched);
  aot_default_options(&o->backend);
}

/* A diagnostic already formatted (a trap's message). */
static int failed(Session *s, const char *msg) {
  snprintf(s->error, sizeof s->error, "%s", msg);
  return -1;
}

int session_fail(Session *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kiln_vformat_error(s->error, sizeof s->error, fmt, ap);
  va_end(ap);
  return -1;
}

static void begin(Session *s, const Options *o) {
  memset(s, 0, sizeof *s);
  if (o)
    s->opt = *o;
  else
    session_default_options(&s->opt);
}

/* Parses and lowers the model (text, or the file at path when text is NULL) and builds its
 * training graph with the entries the options ask for. */
static int open_model(Session *s, const char *path, const char *text, const Options *o) {
  begin(s, o);
  double t0 = kiln_now();
  Trap t;
  Graph *volatile g = NULL;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    ir_free(g);
    return failed(s, t.msg);
  }
  FeOptions fe = {.data_parallel = s->opt.data_parallel};
  if (!text && ox_is_onnx_path(path)) {
    s->onnx_pool = pool_new();
    s->onnx = ox_import(s->onnx_pool, path, NULL, 0, &s->opt.onnx);
    g = fe_compile_string_with(pool_printf(s->onnx_pool, "%s (imported)", path), s->onnx->text,
                               &fe);
  } else {
    g = text ? fe_compile_string_with(path, text, &fe) : fe_compile_file_with(path, &fe);
  }
  g->train.diagnose = s->opt.diagnose;
  if (s->opt.no_training) {
    kiln_trap_end(&t);
    s->g = g;
    s->times.frontend = kiln_now() - t0;
    return 0;
  }
  train_build(g);
  if (s->opt.jvp)
    train_build_jvp(g);
  if (s->opt.hvp)
    train_build_hvp(g);
  kiln_trap_end(&t);
  s->g = g;
  s->times.frontend = kiln_now() - t0;
  return 0;
}

int session_open_file(Session *s, const char *path, const Options *o) {
  return open_model(s, path, NULL, o);
}

int session_open_text(Session *s, const char *name, const char *text, const Options *o) {
  return open_model(s, name ? name : "<string>", text, o);
}

void session_adopt(Session *s, Graph *g, const Options *o) {
  begin(s, o);
  s->g = g;
  s->borrowed = true;
}

int64_t session_batch(const Session *s) {
  if (s->opt.batch > 0)
    return s->opt.batch;
  if (s->g->train.batch > 0)
    return s->g->train.batch;
  return s->g->nsyms ? 64 : 1;
}

int session_plan(Session *s) {
  if (s->planned)
    return 0;
  double t0 = kiln_now();
  Trap t;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    plan_free(&s->plan);
    memset(&s->plan, 0, sizeof s->plan);
    return failed(s, t.msg);
  }
  plan_build(s->g, session_batch(s), &s->opt.sched, &s->plan);
  kiln_trap_end(&t);
  s->planned = true;
  s->times.plan = kiln_now() - t0;
  return 0;
}

int session_emit(Session *s) {
  if (s->emitted)
    return 0;
  if (session_plan(s))
    return -1;
  double t0 = kiln_now();
  Trap t;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    buf_free(&s->c);
    return failed(s, t.msg);
  }
  cg_emit_c(s->g, &s->plan, &s->c);
  kiln_trap_end(&t);
  s->emitted = true;
  s->times.emit = kiln_now() - t0;
  return 0;
}

/* A compiler failure on generated code is kiln's bug, not the user's: say so, with the
 * compiler's own words. */
static int compiler_failed(Session *s, const char *what, Buf *err) {
  if (err->lost || (err->p && !strcmp(err->p, "out of memory\n"))) {
    buf_free(err);
    return session_fail(s, "out of memory");
  }
  session_fail(s, "%s failed (a bug in kiln's code generator):\n%s", what, err->p ? err->p : "");
  buf_free(err);
  return -1;
}

int session_load(Session *s) {
  if (s->prog)
    return 0;
  if (session_emit(s))
    return -1;
  double t0 = kiln_now();
  Buf err = {.lossy = true};
  if (backend_load(&s->opt.backend, s->c.p, &s->loaded, &err) != 0)
    return compiler_failed(s, "compiling the generated code", &err);
  buf_free(&err);
  s->times.load = kiln_now() - t0;
  s->times.loaded = true;
  s->times.backend = *backend_report(s->loaded);
  s->prog = backend_program(s->loaded);
  if (s->prog->ntensors != s->plan.ntensors) {
    session_fail(s, "the compiled program has %d tensors, the plan %d", s->prog->ntensors,
                 s->plan.ntensors);
    s->prog = NULL;
    backend_unload(s->loaded);
    s->loaded = NULL;
    return -1;
  }
  return 0;
}

int session_build_trainer(Session *s, const char *out_path) {
  if (session_emit(s))
    return -1;
  double t0 = kiln_now();
  Buf err = {.lossy = true};
  if (aot_build_trainer(&s->opt.backend, s->c.p, out_path, &err) != 0) {
    char what[512];
    snprintf(what, sizeof what, "building '%s'", out_path);
    return compiler_failed(s, what, &err);
  }
  buf_free(&err);
  s->times.build = kiln_now() - t0;
  return 0;
}

int session_reference(Session *s, int precision, RtBackend *be) {
  if (session_plan(s))
    return -1;
  const Graph *g = s->g;
  bool f32 = precision ? precision == 32
                       : g->nparams == 0 || ir_at(g, g->params[0])->dtype == DT_F32;
  interp_free(s->ref);
  s->ref = interp_new(s->g, s->plan.batch, f32);
  if (!s->ref)
    return session_fail(s, "cannot create the reference runtime (out of memory)");
  interp_backend(s->ref, &s->plan, &s->ref_prog, be);
  return 0;
}

BackendProgram *session_take_program(Session *s) {
  BackendProgram *p = s->loaded;
  s->loaded = NULL;
  s->prog = NULL;
  return p;
}

Graph *session_take_graph(Session *s) {
  Graph *g = s->g;
  s->g = NULL;
  return g;
}

void session_close(Session *s) {
  if (!s)
    return;
  buf_free(&s->c);
  interp_free(s->ref);
  if (s->planned)
    plan_free(&s->plan);
  if (!s->borrowed)
    ir_free(s->g);
  backend_unload(s->loaded);
  pool_free(s->onnx_pool);
  memset(s, 0, sizeof *s);
}

RtNamedTensor *session_init_tensors(const Session *s, int *n) {
  *n = s->onnx ? s->onnx->ninit : 0;
  if (!*n)
    return NULL;
  RtNamedTensor *ts = calloc((size_t)*n, sizeof *ts);
  for (int i = 0; ts && i < *n; i++) {
    const OxTensor *t = &s->onnx->init[i];
    ts[i] = (RtNamedTensor){t->name, t->dtype, t->rank, {0}, t->v};
    memcpy(ts[i].dims, t->dims, sizeof ts[i].dims);
  }
  return ts;
}

int session_init_values(Session *s, RtBackend *be) {
  int n;
  RtNamedTensor *ts = session_init_tensors(s, &n);
  if (!n)
    return 0;
  if (!ts)
    return session_fail(s, "out of memory");
  char err[1024];
  int rc = rt_init_from_tensors(be, ts, n, "the ONNX initializers", NULL, NULL, NULL, err);
  free(ts);
  return rc ? session_fail(s, "%s", err) : 0;
}
