/*
 * api.c — include/kiln.h on the session pipeline (session.c). The session is the error boundary,
 * so a bad model anywhere in the pipeline becomes KILN_ERROR and its diagnostic, never an exit, a
 * crash or a line on stderr.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "driver/driver.h"
#include "runtime.h"

struct kiln_model {
  Session s;              /* opened: the training graph */
};

static _Thread_local char last_error[4096];

const char *kiln_last_error(void) { return last_error; }

int api_set_error(const char *msg) {
  snprintf(last_error, sizeof last_error, "%s", msg ? msg : "");
  return msg ? KILN_ERROR : KILN_OK;
}

static kiln_status failf(const char *fmt, ...) KILN_PRINTF(1, 2);

static kiln_status compile(const char *path, const char *text, const Options *o,
                           kiln_model **out) {
  *out = NULL;
  last_error[0] = 0;
  kiln_model *m = calloc(1, sizeof *m);
  if (!m) return api_set_error("error: out of memory\n");
  int rc = text ? session_open_text(&m->s, path, text, o) : session_open_file(&m->s, path, o);
  if (rc) {
    api_set_error(m->s.error);
    session_close(&m->s);
    free(m);
    return KILN_ERROR;
  }
  *out = m;
  return KILN_OK;
}

kiln_status kiln_model_from_file(const char *path, kiln_model **out) {
  if (!path || !out) return api_set_error("error: kiln_model_from_file: NULL argument\n");
  return compile(path, NULL, NULL, out);
}

void kiln_model_options_init(kiln_model_options *o) {
  if (o) memset(o, 0, sizeof *o);
}

kiln_status kiln_model_open(const char *path, const char *text, const kiln_model_options *mo,
                            kiln_model **out) {
  if (!out || (!path && !text)) return api_set_error("error: kiln_model_open: NULL argument\n");
  *out = NULL;
  Options o;
  session_default_options(&o);
  if (mo) {
    static const char *const losses[] = {"auto", "none", "cross_entropy", "nll", "mse"};
    int k = 0;
    while (mo->onnx_loss && k < 5 && strcmp(mo->onnx_loss, losses[k])) k++;
    if (k == 5)
      return failf("kiln_model_open: the ONNX loss is auto, none, cross_entropy, nll or mse, "
                   "not '%s'", mo->onnx_loss);
    o.onnx.loss = mo->onnx_loss ? (OxLoss)k : OX_LOSS_AUTO;
    if (mo->onnx_optimizer && strpbrk(mo->onnx_optimizer, "\n#{}"))
      return failf("kiln_model_open: the optimizer is one call such as 'sgd(lr=0.1)', not '%s'",
                   mo->onnx_optimizer);
    o.onnx.optimizer = mo->onnx_optimizer;
    o.data_parallel = mo->data_parallel != 0;
  }
  return compile(path ? path : "<string>", text, &o, out);
}

kiln_status kiln_model_from_onnx(const char *path, const char *loss, const char *optimizer,
                                 kiln_model **out) {
  if (!path || !out) return api_set_error("error: kiln_model_from_onnx: NULL argument\n");
  *out = NULL;
  if (!ox_is_onnx_path(path))
    return failf("kiln_model_from_onnx: '%s' is not named *.onnx", path);
  kiln_model_options mo = {.onnx_loss = loss, .onnx_optimizer = optimizer};
  return kiln_model_open(path, NULL, &mo, out);
}

kiln_status kiln_model_from_string(const char *name, const char *text, kiln_model **out) {
  if (!text || !out) return api_set_error("error: kiln_model_from_string: NULL argument\n");
  return compile(name ? name : "<string>", text, NULL, out);
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
    api_set_error(s.error);
    session_close(&s);
    return KILN_ERROR;
  }
  *source = s.c.p;
  s.c = (Buf){0};
  session_close(&s);
  return KILN_OK;
}

/* ---- trainers ---- */

struct kiln_trainer {
  BackendProgram *code;   /* the compiled step; owns the kiln_program description */
  const kiln_program *prog;
  RtBackend arena;        /* the arena the step runs in, owned */
  int train, grad, apply, eval; /* entry indices, -1 when absent */
};

static kiln_status failf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kiln_vformat_error(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return KILN_ERROR;
}

void kiln_options_init(kiln_options *o) {
  memset(o, 0, sizeof *o);
  o->backend = KILN_BACKEND_DEFAULT;
  o->seed = -1;
}

int kiln_has_backend(kiln_backend b) {
  return b == KILN_BACKEND_JIT ? backend_has_jit() : b == KILN_BACKEND_CC || b == KILN_BACKEND_DEFAULT;
}

/* The public options as the session's, each field checked. */
static kiln_status session_options(const kiln_options *ko, Options *o) {
  session_default_options(o);
  if (!ko)
    return KILN_OK;
  if (ko->backend < KILN_BACKEND_DEFAULT || ko->backend > KILN_BACKEND_CC)
    return failf("kiln_compile: unknown backend %d", (int)ko->backend);
  if (ko->threads < 0 || ko->threads > 256)
    return failf("kiln_compile: threads must be in 0..256, got %d", ko->threads);
  if (ko->batch < 0)
    return failf("kiln_compile: batch must be >= 0, got %lld", (long long)ko->batch);
  if (ko->opt_level < 0 || ko->opt_level > 3)
    return failf("kiln_compile: opt_level must be in 0..3, got %d", ko->opt_level);
  if (ko->vector_bytes && ko->vector_bytes != 16 && ko->vector_bytes != 32 &&
      ko->vector_bytes != 64)
    return failf("kiln_compile: vector_bytes must be 0, 16, 32 or 64, got %d", ko->vector_bytes);
  if (ko->l1_bytes < 0 || ko->l2_bytes < 0 || ko->l3_bytes < 0)
    return failf("kiln_compile: cache sizes must be >= 0");
  o->batch = ko->batch;
  o->sched.threads = ko->threads > 0 ? ko->threads : 1;
  o->sched.target.cores = o->sched.threads;
  if (ko->vector_bytes)
    o->sched.target.vector_bytes = ko->vector_bytes;
  if (ko->l1_bytes)
    o->sched.target.l1_bytes = ko->l1_bytes;
  if (ko->l2_bytes)
    o->sched.target.l2_bytes = ko->l2_bytes;
  if (ko->l3_bytes)
    o->sched.target.l3_bytes = ko->l3_bytes;
  o->backend.kind = ko->backend == KILN_BACKEND_JIT ? BACKEND_JIT
                    : ko->backend == KILN_BACKEND_CC ? BACKEND_CC
                                                     : BACKEND_DEFAULT;
  o->backend.opt_level = ko->opt_level;
  if (ko->cc)
    o->backend.cc = ko->cc;
  if (ko->tmp_dir)
    o->backend.tmp_dir = ko->tmp_dir;
  o->backend.cache_dir = ko->cache_dir;
  return KILN_OK;
}

void kiln_trainer_free(kiln_trainer *t) {
  if (!t)
    return;
  rt_arena_backend_free(&t->arena);
  backend_unload(t->code);
  free(t);
}

kiln_status kiln_compile(const kiln_model *m, const kiln_options *ko, kiln_trainer **out) {
  last_error[0] = 0;
  if (!out)
    return failf("kiln_compile: NULL argument");
  *out = NULL;
  if (!m)
    return failf("kiln_compile: NULL model");
  Options o;
  if (session_options(ko, &o))
    return KILN_ERROR;
  kiln_trainer *t = calloc(1, sizeof *t);
  if (!t)
    return failf("out of memory");
  /* The session borrows the model's graph only until the program is loaded; the trainer keeps
   * the program alone, so the model may be freed first. */
  Session s;
  session_adopt(&s, m->s.g, &o);
  if (session_load(&s)) {
    api_set_error(s.error);
    session_close(&s);
    free(t);
    return KILN_ERROR;
  }
  t->code = session_take_program(&s);
  session_close(&s);
  t->prog = backend_program(t->code);
  char err[RT_ERR_LEN];
  if (rt_check_program(t->prog, err) || rt_arena_backend_new(t->prog, &t->arena, err)) {
    backend_unload(t->code);
    free(t);
    return failf("%s", err);
  }
  if (rt_arena_set_threads(&t->arena, t->prog->threads, err)) {
    kiln_trainer_free(t);
    return failf("%s", err);
  }
  t->train = rt_find_entry(t->prog, "train");
  t->grad = rt_find_entry(t->prog, "grad");
  t->apply = rt_find_entry(t->prog, "apply");
  t->eval = rt_find_entry(t->prog, "eval");
  uint64_t seed = ko && ko->seed >= 0 ? (uint64_t)ko->seed : rt_setting_u64(t->prog, "seed", 1);
  if (rt_init_persistent(&t->arena, seed, -1, err)) {
    kiln_trainer_free(t);
    return failf("%s", err);
  }
  /* An imported ONNX model starts from its initializers. */
  int n;
  RtNamedTensor *init = session_init_tensors(&m->s, &n);
  int rc = n && !init ? (snprintf(err, sizeof err, "out of memory"), -1)
           : n ? rt_init_from_tensors(&t->arena, init, n, "the ONNX initializers", NULL, NULL,
                                      NULL, err)
               : 0;
  free(init);
  if (rc) {
    kiln_trainer_free(t);
    return failf("%s", err);
  }
  *out = t;
  return KILN_OK;
}

int64_t kiln_trainer_batch(const kiln_trainer *t) { return t ? t->prog->batch : 0; }

kiln_status kiln_set_threads(kiln_trainer *t, int threads) {
  if (!t)
    return failf("kiln_set_threads: NULL trainer");
  char err[RT_ERR_LEN];
  if (rt_arena_set_threads(&t->arena, threads > 0 ? threads : t->prog->threads, err))
    return failf("kiln_set_threads: %s", err);
  return KILN_OK;
}

kiln_status kiln_set_allreduce(kiln_trainer *t,
                               void (*fn)(void *comm, void *data, int64_t n, int dtype),
                               void *comm) {
  if (!t)
    return failf("kiln_set_allreduce: NULL trainer");
  t->arena.set_allreduce(t->arena.self, fn, comm);
  return KILN_OK;
}

int kiln_threads(const kiln_trainer *t) { return t ? rt_arena_threads(&t->arena) : 0; }

int kiln_tensor_count(const kiln_trainer *t) { return t ? t->prog->ntensors : 0; }

static size_t dtype_bytes(int dtype) { return dtype == KILN_F64 ? 8 : 4; }

static const char *abi_dtype_name(int dtype) {
  return dtype == KILN_F64 ? "f64" : dtype == KILN_I32 ? "i32" : "f32";
}

static void describe(const kiln_tensor *k, int64_t batch, kiln_tensor_info *info) {
  memset(info, 0, sizeof *info);
  info->name = k->name;
  info->role = k->role;
  info->dtype = k->dtype;
  info->rank = k->rank;
  memcpy(info->dims, k->dims, sizeof info->dims);
  info->batch_axis = k->batch_axis;
  info->bytes = (size_t)rt_numel(k, batch) * dtype_bytes(k->dtype);
}

kiln_status kiln_tensor_at(const kiln_trainer *t, int i, kiln_tensor_info *info) {
  last_error[0] = 0;
  if (!t || !info)
    return failf("kiln_tensor_at: NULL argument");
  if (i < 0 || i >= t->prog->ntensors)
    return failf("kiln_tensor_at: no tensor %d (the trainer has %d)", i, t->prog->ntensors);
  describe(&t->prog->tensors[i], t->prog->batch, info);
  return KILN_OK;
}

/* The tensor named name, or -1 with the error set (what names the caller wanted, and where). */
static int find(const kiln_trainer *t, const char *fn, const char *name) {
  if (!t || !name) {
    failf("%s: NULL argument", fn);
    return -1;
  }
  int i = rt_find_tensor(t->prog, name);
  if (i < 0)
    failf("%s: model '%s' has no tensor named '%s'", fn, t->prog->model ? t->prog->model : "?",
          name);
  return i;
}

kiln_status kiln_tensor_find(const kiln_trainer *t, const char *name, kiln_tensor_info *info) {
  last_error[0] = 0;
  int i = find(t, "kiln_tensor_find", name);
  if (i < 0)
    return KILN_ERROR;
  if (info)
    describe(&t->prog->tensors[i], t->prog->batch, info);
  return KILN_OK;
}

/* "f32[64, 1, 28, 28]" */
static void type_text(char *buf, size_t len, const kiln_tensor *k, int64_t batch) {
  int64_t dims[KILN_ABI_MAX_RANK];
  memcpy(dims, k->dims, sizeof dims);
  if (k->batch_axis >= 0)
    dims[k->batch_axis] = batch;
  char d[256];
  rt_format_dims(d, sizeof d, k->rank, dims);
  snprintf(buf, len, "%s%s", abi_dtype_name(k->dtype), d);
}

/* Whether a copy of `bytes` fits tensor k: its whole size, or the leading whole examples of a
 * tensor whose first axis is the batch. */
static kiln_status check_copy(const kiln_trainer *t, const char *fn, const kiln_tensor *k,
                              size_t bytes) {
  size_t whole = (size_t)rt_numel(k, t->prog->batch) * dtype_bytes(k->dtype);
  size_t example = (size_t)rt_numel(k, 1) * dtype_bytes(k->dtype);
  if (bytes == whole)
    return KILN_OK;
  if (k->batch_axis == 0 && example && bytes % example == 0 && bytes > 0 && bytes < whole)
    return KILN_OK;
  char type[300];
  type_text(type, sizeof type, k, t->prog->batch);
  if (k->batch_axis == 0)
    return failf("%s: tensor '%s' is %s: %zu bytes, or %zu per example for fewer; got %zu bytes",
                 fn, k->name, type, whole, example, bytes);
  return failf("%s: tensor '%s' is %s (%zu bytes); got %zu bytes", fn, k->name, type, whole,
               bytes);
}

kiln_status kiln_get(const kiln_trainer *t, const char *name, void *dst, size_t bytes) {
  last_error[0] = 0;
  int i = find(t, "kiln_get", name);
  if (i < 0)
    return KILN_ERROR;
  const kiln_tensor *k = &t->prog->tensors[i];
  if (!dst || check_copy(t, "kiln_get", k, bytes))
    return dst ? KILN_ERROR : failf("kiln_get: NULL buffer");
  memcpy(dst, rt_arena_base(&t->arena) + k->offset, bytes);
  return KILN_OK;
}

kiln_status kiln_set(kiln_trainer *t, const char *name, const void *src, size_t bytes) {
  last_error[0] = 0;
  int i = find(t, "kiln_set", name);
  if (i < 0)
    return KILN_ERROR;
  const kiln_tensor *k = &t->prog->tensors[i];
  if (!src || check_copy(t, "kiln_set", k, bytes))
    return src ? KILN_ERROR : failf("kiln_set: NULL buffer");
  memcpy(rt_arena_base(&t->arena) + k->offset, src, bytes);
  return KILN_OK;
}

/* A tensor of one element, for the scalar accessors. */
static int find_scalar(const kiln_trainer *t, const char *fn, const char *name) {
  int i = find(t, fn, name);
  if (i >= 0 && rt_numel(&t->prog->tensors[i], t->prog->batch) != 1) {
    char type[300];
    type_text(type, sizeof type, &t->prog->tensors[i], t->prog->batch);
    failf("%s: tensor '%s' is %s, not a scalar", fn, name, type);
    return -1;
  }
  return i;
}

kiln_status kiln_get_scalar(const kiln_trainer *t, const char *name, double *value) {
  last_error[0] = 0;
  int i = find_scalar(t, "kiln_get_scalar", name);
  if (i < 0)
    return KILN_ERROR;
  if (!value)
    return failf("kiln_get_scalar: NULL argument");
  t->arena.read(t->arena.self, i, value, 1);
  return KILN_OK;
}

kiln_status kiln_set_scalar(kiln_trainer *t, const char *name, double value) {
  last_error[0] = 0;
  int i = find_scalar(t, "kiln_set_scalar", name);
  if (i < 0)
    return KILN_ERROR;
  t->arena.write(t->arena.self, i, &value, 1);
  return KILN_OK;
}

/* Copies the step's inputs into the arena: every input the entry reads, given once, each of the
 * size `batch` examples take. */
static kiln_status feed(kiln_trainer *t, const char *fn, int entry, int64_t batch,
                        const kiln_feed *in, int n) {
  const kiln_program *p = t->prog;
  if (n < 0 || (n > 0 && !in))
    return failf("%s: %d inputs at %p", fn, n, (const void *)in);
  if (batch < 1 || batch > p->batch)
    return failf("%s: batch %lld is outside 1..%lld, the largest this trainer was compiled for",
                 fn, (long long)batch, (long long)p->batch);
  for (int j = 0; j < n; j++) {
    int i = in[j].name ? rt_find_tensor(p, in[j].name) : -1;
    if (i < 0 || p->tensors[i].role != KILN_ROLE_INPUT || !rt_tensor_in_entry(&p->tensors[i], entry)) {
      char names[1024] = "";
      size_t used = 0;
      for (int k = 0; k < p->ntensors; k++)
        if (p->tensors[k].role == KILN_ROLE_INPUT && rt_tensor_in_entry(&p->tensors[k], entry) &&
            used < sizeof names)
          used += (size_t)snprintf(names + used, sizeof names - used, "%s'%s'", used ? ", " : "",
                                   p->tensors[k].name);
      return failf("%s: '%s' is not an input of this step (its inputs: %s)", fn,
                   in[j].name ? in[j].name : "(null)", used ? names : "none");
    }
    for (int k = 0; k < j; k++)
      if (!strcmp(in[k].name, in[j].name))
        return failf("%s: input '%s' is given twice", fn, in[j].name);
  }
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *k = &p->tensors[i];
    if (k->role != KILN_ROLE_INPUT || !rt_tensor_in_entry(k, entry))
      continue;
    const kiln_feed *f = NULL;
    for (int j = 0; j < n && !f; j++)
      if (!strcmp(in[j].name, k->name))
        f = &in[j];
    char type[300];
    type_text(type, sizeof type, k, batch);
    if (!f)
      return failf("%s: input '%s' (%s) is missing", fn, k->name, type);
    size_t want = (size_t)rt_numel(k, batch) * dtype_bytes(k->dtype);
    if (f->bytes != want || !f->data)
      return failf("%s: input '%s' is %s for batch %lld: %zu bytes; got %zu bytes%s", fn,
                   k->name, type, (long long)batch, want, f->bytes, f->data ? "" : " at NULL");
    memcpy(rt_arena_base(&t->arena) + k->offset, f->data, want);
  }
  return KILN_OK;
}

static kiln_status run(kiln_trainer *t, const char *fn, const char *entry_name, int entry,
                       int64_t batch) {
  if (entry < 0)
    return failf("%s: model '%s' has no \"%s\" entry", fn, t->prog->model ? t->prog->model : "?",
                 entry_name);
  char err[RT_ERR_LEN] = "";
  if (t->arena.run(t->arena.self, entry, batch, err))
    return failf("%s: %s", fn, err);
  return KILN_OK;
}

static void read_loss(kiln_trainer *t, const char *name, double *loss) {
  int i = rt_find_tensor(t->prog, name);
  if (loss)
    *loss = NAN;
  if (loss && i >= 0)
    t->arena.read(t->arena.self, i, loss, 1);
}

/* train and grad: the same inputs, a different entry. */
static kiln_status step(kiln_trainer *t, const char *fn, const char *entry_name, int entry,
                        int64_t batch, const kiln_feed *in, int n, double *loss) {
  last_error[0] = 0;
  if (!t)
    return failf("%s: NULL trainer", fn);
  if (entry < 0)
    return run(t, fn, entry_name, entry, batch);
  if (feed(t, fn, entry, batch, in, n) || run(t, fn, entry_name, entry, batch))
    return KILN_ERROR;
  read_loss(t, "loss", loss);
  return KILN_OK;
}

kiln_status kiln_train_step(kiln_trainer *t, int64_t batch, const kiln_feed *in, int n,
                            double *loss) {
  return step(t, "kiln_train_step", "train", t ? t->train : -1, batch, in, n, loss);
}

kiln_status kiln_grad_step(kiln_trainer *t, int64_t batch, const kiln_feed *in, int n,
                           double *loss) {
  return step(t, "kiln_grad_step", "grad", t ? t->grad : -1, batch, in, n, loss);
}

kiln_status kiln_apply_step(kiln_trainer *t) {
  last_error[0] = 0;
  if (!t)
    return failf("kiln_apply_step: NULL trainer");
  /* The update reads no batch-sized tensor; the batch only has to be valid. */
  return run(t, "kiln_apply_step", "apply", t->apply, t->prog->batch);
}

kiln_status kiln_eval_step(kiln_trainer *t, int64_t batch, const kiln_feed *in, int n,
                           double *loss, void *output, size_t output_bytes) {
  last_error[0] = 0;
  if (!t)
    return failf("kiln_eval_step: NULL trainer");
  if (t->eval < 0)
    return run(t, "kiln_eval_step", "eval", t->eval, batch);
  int out = rt_find_tensor(t->prog, "eval.output");
  if (output && out < 0)
    return failf("kiln_eval_step: model '%s' declares no output (an `output NAME` line)",
                 t->prog->model ? t->prog->model : "?");
  if (feed(t, "kiln_eval_step", t->eval, batch, in, n))
    return KILN_ERROR;
  if (output) {
    const kiln_tensor *k = &t->prog->tensors[out];
    size_t want = (size_t)rt_numel(k, batch) * dtype_bytes(k->dtype);
    if (output_bytes != want) {
      char type[300];
      type_text(type, sizeof type, k, batch);
      return failf("kiln_eval_step: the output is %s for batch %lld: %zu bytes; got %zu bytes",
                   type, (long long)batch, want, output_bytes);
    }
  }
  if (run(t, "kiln_eval_step", "eval", t->eval, batch))
    return KILN_ERROR;
  read_loss(t, "eval.loss", loss);
  if (output)
    memcpy(output, rt_arena_base(&t->arena) + t->prog->tensors[out].offset, output_bytes);
  return KILN_OK;
}

kiln_status kiln_save(const kiln_trainer *t, const char *path) {
  last_error[0] = 0;
  if (!t || !path)
    return failf("kiln_save: NULL argument");
  char err[RT_ERR_LEN];
  /* Saving reads the arena through the backend interface, which is not const. */
  RtBackend be = t->arena;
  return rt_save_checkpoint(&be, path, err) ? failf("%s", err) : KILN_OK;
}

kiln_status kiln_load(kiln_trainer *t, const char *path) {
  last_error[0] = 0;
  if (!t || !path)
    return failf("kiln_load: NULL argument");
  const char *why = kiln_not_regular_file(path); /* a FIFO would block the load forever */
  if (why)
    return failf("%s: %s", path, why);
  char err[RT_ERR_LEN];
  return rt_load_checkpoint(&t->arena, path, err) ? failf("%s", err) : KILN_OK;
}
