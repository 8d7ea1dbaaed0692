/*
 * ox_import.c — an ONNX graph translated into kiln model text, node by node.
 *
 * Every value the graph names is a Value: a tensor held in a kiln variable, or a compile-time
 * value (an initializer or Constant of integers, a Shape, ...) that later nodes read as
 * attributes (Reshape's shape, Slice's starts). The importer tracks every value's shape itself,
 * with the batch as the symbol B, because ONNX attributes mean different things at different
 * shapes (Flatten's axis, Reshape's 0, auto_pad, ceil_mode); kiln's own shape checks then run on
 * the text as on any model.
 *
 * The operator table (`ops`) maps each supported ONNX operator to one function. A function reads
 * the node's attributes with ONNX's defaults, refuses what kiln cannot express (unsupported(),
 * which names the feature), and emits statements with def(). Layers with initializers become
 * kiln layers (conv2d, linear, batchnorm) so that a trained model keeps ONNX's initial values
 * under kiln's parameter names.
 */
#define OX_INTERNAL
#include "onnx/onnx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A growing string in the importer's pool: nothing to free when an error unwinds. */
typedef struct Str {
  Pool *p;
  char *s;
  size_t len, cap;
} Str;

static KILN_PRINTF(2, 3) void str_printf(Str *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) kiln_fail((Loc){0}, "cannot format text");
  if (b->len + (size_t)n + 1 > b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 256;
    while (cap < b->len + (size_t)n + 1) cap *= 2;
    char *s = pool_alloc(b->p, cap);
    if (b->len) memcpy(s, b->s, b->len);
    b->s = s;
    b->cap = cap;
  }
  va_start(ap, fmt);
  vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* One dimension: n, or n·B when batch (B is the model's batch symbol). */
typedef struct Extent {
  int64_t n;
  bool batch;
} Extent;

typedef struct Value {
  const char *onnx;        /* the graph's name for it */
  const char *var;         /* the kiln variable holding it, once it is a tensor */
  int elem;                /* ONNX element type */
  int rank;
  Extent d[IR_MAX_RANK];
  bool shaped;             /* rank and d are known */
  /* A compile-time value: known[i] (times B when known_batch[i]) for every element. */
  double *known;
  bool *known_batch;
  int64_t nknown;
  const Onnx__TensorProto *init;  /* an initializer not declared yet (var NULL) */
  int uses;                /* node inputs that read it */
  bool graph_input;
} Value;

typedef struct Importer {
  Pool *p;
  const char *path;
  Onnx__GraphProto *g;
  OxOptions *o;
  int64_t opset;
  bool training;           /* a loss is added: dropout stays dropout */
  Value *vals;
  int nvals, capvals;
  const char **names;      /* kiln names in use (variables, layers, inputs) */
  int nnames, capnames;
  Str decl, body;
  OxTensor *init;
  int ninit, capinit;
  const Onnx__NodeProto *node;  /* the node being translated, for messages */
  size_t node_index;
  bool uses_batch;
  const char *batch_param; /* the ONNX dim_param that became B */
} Importer;

/* ---- messages ---- */

static const char *node_where(Importer *I) {
  const Onnx__NodeProto *nd = I->node;
  if (!nd) return I->path;
  if (nd->name && *nd->name)
    return pool_printf(I->p, "%s: node %zu '%s' (%s)", I->path, I->node_index, nd->name,
                       nd->op_type);
  return pool_printf(I->p, "%s: node %zu (%s)", I->path, I->node_index, nd->op_type);
}

static _Noreturn KILN_PRINTF(2, 3) void bad(Importer *I, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  kiln_fail((Loc){0}, "%s: %s", node_where(I), msg);
}

/* Something valid in ONNX that kiln does not import: feature names it for counting. */
static _Noreturn KILN_PRINTF(3, 4) void unsupported(Importer *I, const char *feature,
                                                    const char *fmt, ...) {
  snprintf(I->o->unsupported, sizeof I->o->unsupported, "%s", feature);
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  kiln_fail((Loc){0}, "%s: %s", node_where(I), msg);
}

/* ---- names ---- */

static bool name_used(Importer *I, const char *s) {
  for (int i = 0; i < I->nnames; i++)
    if (!strcmp(I->names[i], s)) return true;
  return false;
}

static void use_name(Importer *I, const char *s) {
  if (I->nnames == I->capnames) {
    I->capnames = I->capnames ? 2 * I->capnames : 64;
    const char **n = pool_alloc(I->p, (size_t)I->capnames * sizeof *n);
    if (I->nnames) memcpy(n, I->names, (size_t)I->nnames * sizeof *n);
    I->names = n;
  }
  I->names[I->nnames++] = s;
}

/* Words a kiln name must not be: statement keywords, the batch symbol, the loss's inputs. */
static bool reserved(const char *s) {
  static const char *const words[] = {"model", "input", "const", "param", "output", "metric",
                                      "minimize", "train", "for", "from", "as", "init", "B",
                                      "label", "target", "loss", "in", "true", "false", "same",
                                      "full", "valid", "images", "labels"};
  for (size_t i = 0; i < sizeof words / sizeof *words; i++)
    if (!strcmp(s, words[i])) return true;
  return false;
}

/* A fresh kiln identifier from an ONNX name: letters, digits and '_' kept, anything else '_',
 * at most 60 characters, a digit first prefixed, made unique with a counter. */
static const char *fresh(Importer *I, const char *onnx, const char *fallback) {
  char base[64];
  size_t n = 0;
  for (const char *c = onnx ? onnx : ""; *c && n < 60; c++)
    base[n++] = ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9'))
                    ? *c : '_';
  base[n] = 0;
  while (n && base[n - 1] == '_') base[--n] = 0;
  size_t lead = 0;
  while (base[lead] == '_') lead++;
  const char *b = base[lead] ? base + lead : fallback;
  const char *s = (*b >= '0' && *b <= '9') ? pool_printf(I->p, "%s%s", fallback, b)
                                           : pool_strdup(I->p, b);
  if (reserved(s)) s = pool_printf(I->p, "%s_", s);
  const char *r = s;
  for (int k = 2; name_used(I, r); k++) r = pool_printf(I->p, "%s_%d", s, k);
  use_name(I, r);
  return r;
}

/* ---- values ---- */

static Value *find(Importer *I, const char *name) {
  for (int i = I->nvals - 1; i >= 0; i--)
    if (!strcmp(I->vals[i].onnx, name)) return &I->vals[i];
  return NULL;
}

static Value *add_value(Importer *I, const char *name) {
  if (I->nvals == I->capvals) {
    I->capvals = I->capvals ? 2 * I->capvals : 64;
    Value *v = pool_alloc(I->p, (size_t)I->capvals * sizeof *v);
    if (I->nvals) memcpy(v, I->vals, (size_t)I->nvals * sizeof *v);
    I->vals = v;
  }
  Value *v = &I->vals[I->nvals++];
  memset(v, 0, sizeof *v);
  v->onnx = pool_strdup(I->p, name);
  return v;
}

static bool is_float(int elem) {
  return elem == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT || elem == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE;
}

static bool is_int(int elem) {
  return elem == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 || elem == ONNX__TENSOR_PROTO__DATA_TYPE__INT32;
}

static DType kiln_dtype(int elem) {
  return elem == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE ? DT_F64
         : elem == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT ? DT_F32 : DT_I32;
}

/* The element count (times B when *batch), saturating at INT64_MAX: no count kiln compiles comes
 * near it, so a saturated one fails every comparison it is in. */
static int64_t numel(const Value *v, bool *batch) {
  int64_t n = 1;
  int b = 0;
  for (int i = 0; i < v->rank; i++) {
    if (__builtin_mul_overflow(n, v->d[i].n, &n))
      n = INT64_MAX;
    b += v->d[i].batch;
  }
  if (batch) *batch = b > 0;
  return n;
}

/* Node input k, or NULL when the node has fewer inputs or leaves it out (""). */
static Value *in(Importer *I, size_t k) {
  const Onnx__NodeProto *nd = I->node;
  if (k >= nd->n_input || !nd->input[k] || !*nd->input[k]) return NULL;
  Value *v = find(I, nd->input[k]);
  if (!v)
    bad(I, "input '%s' is not a graph input, an initializer or an earlier node's output "
        "(ONNX lists nodes in topological order)", nd->input[k]);
  return v;
}

/* Node input k, which must be there. */
static Value *arg(Importer *I, size_t k) {
  Value *v = in(I, k);
  if (!v) bad(I, "input %zu is missing", k);
  return v;
}

/* Does a later node or the graph read output k? */
static bool output_read(Importer *I, size_t k) {
  const Onnx__NodeProto *nd = I->node;
  if (k >= nd->n_output || !nd->output[k] || !*nd->output[k]) return false;
  const char *name = nd->output[k];
  for (size_t i = 0; i < I->g->n_node; i++)
    for (size_t j = 0; j < I->g->node[i]->n_input; j++)
      if (I->g->node[i]->input[j] && !strcmp(I->g->node[i]->input[j], name)) return true;
  for (size_t i = 0; i < I->g->n_output; i++)
    if (!strcmp(I->g->output[i]->name, name)) return true;
  return false;
}

/* Is output k wanted (present and named)? */
static bool wants_output(Importer *I, size_t k) {
  const Onnx__NodeProto *nd = I->node;
  return k < nd->n_output && nd->output[k] && *nd->output[k];
}

static void need_shape(Importer *I, const Value *v) {
  if (!v->shaped)
    unsupported(I, "unknown shapes", "the shape of '%s' is not known (kiln imports graphs whose "
                "input shapes are given)", v->onnx);
}

static void need_float(Importer *I, const Value *v) {
  if (!is_float(v->elem))
    unsupported(I, pool_printf(I->p, "%s on %s", I->node->op_type, ox_elem_name(v->elem)),
                "'%s' is %s; kiln computes this on FLOAT or DOUBLE tensors", v->onnx,
                ox_elem_name(v->elem));
}

/* ---- text ---- */

/* The shortest decimal that reads back as x: exact, and readable (0.9, not 0.90000000000000002). */
static const char *num(Importer *I, double x) {
  if (!isfinite(x))
    unsupported(I, "infinite constants", "the value %g has no spelling in a kiln model", x);
  if (fabs(x) < 1e15 && x == trunc(x)) return pool_printf(I->p, "%lld", (long long)x);
  char buf[64];
  for (int digits = 15; digits <= 17; digits++) {
    snprintf(buf, sizeof buf, "%.*g", digits, x);
    if (strtod(buf, NULL) == x) break;
  }
  return pool_strdup(I->p, buf);
}

/* ONNX's attributes are float32: the shortest decimal that reads back as the same float, as a
 * double (0.9f is 0.9, not 0.89999997615814209), so the text shows what the exporter wrote. */
static double float_value(float f) {
  char buf[64];
  for (int digits = 6; digits <= 9; digits++) {
    snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
    if ((float)strtod(buf, NULL) == f) break;
  }
  return strtod(buf, NULL);
}

static const char *extent_text(Importer *I, Extent e) {
  if (!e.batch) return pool_printf(I->p, "%lld", (long long)e.n);
  I->uses_batch = true;
  return e.n == 1 ? "B" : pool_printf(I->p, "%lld*B", (long long)e.n);
}

static const char *type_text(Importer *I, DType dt, int rank, const Extent *d) {
  Str b = {.p = I->p};
  str_printf(&b, "%s", dtype_name(dt));
  if (rank) {
    str_printf(&b, "[");
    for (int i = 0; i < rank; i++) str_printf(&b, "%s%s", i ? ", " : "", extent_text(I, d[i]));
    str_printf(&b, "]");
  }
  const char *s = b.s;
  return s;
}

/* A shape as reshape's list: numbers, B, and at most one -1 for a multiple of B. */
static const char *shape_list(Importer *I, int rank, const Extent *d) {
  Str b = {.p = I->p};
  bool inferred = false;
  str_printf(&b, "[");
  for (int i = 0; i < rank; i++) {
    const char *t;
    if (!d[i].batch) t = num(I, (double)d[i].n);
    else if (d[i].n == 1) t = "B", I->uses_batch = true;
    else if (!inferred) t = "-1", inferred = true;
    else {
      unsupported(I, "shapes with two batch multiples", "the result's shape has two dimensions "
                  "that are multiples of the batch");
    }
    str_printf(&b, "%s%s", i ? ", " : "", t);
  }
  str_printf(&b, "]");
  const char *s = b.s;
  return s;
}

static const char *ints_list(Importer *I, int n, const int64_t *v) {
  Str b = {.p = I->p};
  str_printf(&b, "[");
  for (int i = 0; i < n; i++) str_printf(&b, "%s%lld", i ? ", " : "", (long long)v[i]);
  str_printf(&b, "]");
  const char *s = b.s;
  return s;
}

/* A nested literal of v's values in row-major order, shaped by dims. */
static void literal(Str *b, Importer *I, const double *v, int rank, const int64_t *dims,
                    int64_t *at) {
  if (rank == 0) {
    str_printf(b, "%s", num(I, v[(*at)++]));
    return;
  }
  str_printf(b, "[");
  for (int64_t i = 0; i < dims[0]; i++) {
    if (i) str_printf(b, ", ");
    literal(b, I, v, rank - 1, dims + 1, at);
  }
  str_printf(b, "]");
}

/* The initial values of a leaf, under kiln's name; dims may differ from the ONNX tensor's as
 * long as the count agrees (a 1-D convolution's weight gains an axis). */
static void add_init(Importer *I, const char *name, const OxTensor *t, int rank,
                     const int64_t *dims) {
  if (I->ninit == I->capinit) {
    I->capinit = I->capinit ? 2 * I->capinit : 16;
    OxTensor *n = pool_alloc(I->p, (size_t)I->capinit * sizeof *n);
    if (I->ninit) memcpy(n, I->init, (size_t)I->ninit * sizeof *n);
    I->init = n;
  }
  OxTensor *x = &I->init[I->ninit++];
  *x = *t;
  x->name = name;
  x->rank = rank;
  for (int i = 0; i < rank; i++) x->dims[i] = dims[i];
}

static OxTensor *init_values(Importer *I, const Value *v) {
  return ox_tensor(I->p, v->init, pool_printf(I->p, "%s: initializer '%s'", I->path, v->onnx));
}

/* The text that stands for v as an operand: its variable, a number for a known scalar, or a
 * declaration made now (an initializer becomes a param, other known values consts). */
static const char *ref(Importer *I, Value *v) {
  if (v->var) return v->var;
  if (v->known && v->nknown == 1 && v->rank == 0 && !v->known_batch[0] &&
      (is_float(v->elem) || is_int(v->elem))) {
    const char *s = num(I, v->known[0]);
    return v->known[0] < 0 ? pool_printf(I->p, "(%s)", s) : s;
  }
  need_shape(I, v);
  if (!is_float(v->elem) && !is_int(v->elem))
    unsupported(I, pool_printf(I->p, "%s tensors", ox_elem_name(v->elem)),
                "'%s' is %s, which kiln does not compute with", v->onnx, ox_elem_name(v->elem));
  DType dt = kiln_dtype(v->elem);
  const char *name = fresh(I, v->onnx, "c");
  int64_t dims[IR_MAX_RANK];
  for (int i = 0; i < v->rank; i++) dims[i] = v->d[i].n;
  if (v->init && is_float(v->elem)) { /* learnable, its values beside the text */
    str_printf(&I->decl, "param %s: %s   # initializer '%s'\n", name,
               type_text(I, dt, v->rank, v->d), v->onnx);
    add_init(I, name, init_values(I, v), v->rank, dims);
  } else {
    const double *vals;
    if (v->init) {
      OxTensor *t = init_values(I, v);
      vals = t->v;
    } else if (v->known) {
      for (int64_t i = 0; i < v->nknown; i++)
        if (v->known_batch[i])
          unsupported(I, "batch-dependent constants", "'%s' depends on the batch size and is "
                      "used as a tensor", v->onnx);
      vals = v->known;
    } else {
      bad(I, "'%s' has no value", v->onnx);
    }
    Str b = {.p = I->p};
    int64_t at = 0;
    literal(&b, I, vals, v->rank, dims, &at);
    str_printf(&I->decl, "const %s: %s = %s\n", name, type_text(I, dt, v->rank, v->d), b.s);
  }
  v->var = name;
  return name;
}

/* Output k of the node: the statement `var = expr` and the value it defines. */
static Value *def(Importer *I, size_t k, const char *expr, int elem, int rank, const Extent *d) {
  const Onnx__NodeProto *nd = I->node;
  if (k >= nd->n_output || !nd->output[k] || !*nd->output[k]) return NULL;
  Value *v = add_value(I, nd->output[k]);
  v->var = fresh(I, nd->output[k], "v");
  v->elem = elem;
  v->rank = rank;
  v->shaped = true;
  for (int i = 0; i < rank; i++) v->d[i] = d[i];
  str_printf(&I->body, "%s = %s", v->var, expr);
  if (k == 0)
    str_printf(&I->body, "   # %s%s%s", nd->op_type, nd->name && *nd->name ? " " : "",
               nd->name && *nd->name ? nd->name : "");
  str_printf(&I->body, "\n");
  return v;
}

/* A statement of the node's that is not one of its outputs (a shared subexpression): its
 * fresh variable. */
static const char *tmp_var(Importer *I, const char *base, const char *expr) {
  const char *v = fresh(I, base, "t");
  str_printf(&I->body, "%s = %s\n", v, expr);
  return v;
}

/* Output k as the same tensor as src (Identity, inference-mode Dropout). */
static void alias(Importer *I, size_t k, Value *src) {
  if (!wants_output(I, k)) return;
  if (!src->var && src->known) { /* keep it a compile-time value */
    Value *v = add_value(I, I->node->output[k]);
    const char *name = v->onnx;
    *v = *src;
    v->onnx = name;
    return;
  }
  def(I, k, ref(I, src), src->elem, src->rank, src->d);
}

/* A compile-time output. */
static Value *def_known(Importer *I, size_t k, int elem, int rank, const Extent *d, int64_t n,
                        const double *vals, const bool *batch) {
  if (!wants_output(I, k)) return NULL;
  Value *v = add_value(I, I->node->output[k]);
  v->elem = elem;
  v->rank = rank;
  v->shaped = true;
  for (int i = 0; i < rank; i++) v->d[i] = d[i];
  v->known = pool_alloc(I->p, (size_t)(n ? n : 1) * sizeof(double));
  v->known_batch = pool_alloc(I->p, (size_t)(n ? n : 1) * sizeof(bool));
  v->nknown = n;
  for (int64_t i = 0; i < n; i++) {
    v->known[i] = vals[i];
    v->known_batch[i] = batch && batch[i];
  }
  return v;
}

/* ---- attributes ---- */

static const Onnx__AttributeProto *attr(Importer *I, const char *name) {
  for (size_t i = 0; i < I->node->n_attribute; i++)
    if (!strcmp(I->node->attribute[i]->name, name)) return I->node->attribute[i];
  return NULL;
}

static void attr_type(Importer *I, const Onnx__AttributeProto *a, int type, const char *what) {
  if (a->has_type && (int)a->type != type) bad(I, "attribute '%s' must be %s", a->name, what);
}

static int64_t attr_int(Importer *I, const char *name, int64_t def) {
  const Onnx__AttributeProto *a = attr(I, name);
  if (!a) return def;
  attr_type(I, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT, "an integer");
  return a->i;
}

static double attr_float(Importer *I, const char *name, double def) {
  const Onnx__AttributeProto *a = attr(I, name);
  if (!a) return def;
  attr_type(I, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT, "a float");
  return float_value(a->f);
}

static const char *attr_string(Importer *I, const char *name, const char *def) {
  const Onnx__AttributeProto *a = attr(I, name);
  if (!a) return def;
  attr_type(I, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING, "a string");
  if (!a->s.len) return "";
  if (memchr(a->s.data, 0, a->s.len)) bad(I, "attribute '%s' holds a NUL byte", name);
  return pool_strndup(I->p, (const char *)a->s.data, a->s.len);
}

/* Up to max integers into out; the count, or -1 when the attribute is absent. */
static int attr_ints(Importer *I, const char *name, int64_t *out, int max) {
  const Onnx__AttributeProto *a = attr(I, name);
  if (!a) return -1;
  attr_type(I, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS, "a list of integers");
  if (a->n_ints > (size_t)max) bad(I, "attribute '%s' has %zu entries, more than %d", name,
                                   a->n_ints, max);
  for (size_t i = 0; i < a->n_ints; i++) out[i] = a->ints[i];
  return (int)a->n_ints;
}

/* A compile-time integer list from input k (opset >= 10 moved attributes to inputs): the count
 * into out, or -1 when the input is absent. */
static int known_ints(Importer *I, Value *v, int64_t *out, int max, const char *what) {
  if (!v) return -1;
  if (!v->known && v->init) {
    OxTensor *t = init_values(I, v);
    v->known = t->v;
    v->known_batch = pool_alloc(I->p, (size_t)(t->n ? t->n : 1) * sizeof(bool));
    v->nknown = t->n;
  }
  if (!v->known)
    unsupported(I, pool_printf(I->p, "%s computed at run time", what),
                "'%s' (%s) must be known when the model is compiled", v->onnx, what);
  if (v->nknown > max) bad(I, "'%s' (%s) has %lld entries, more than %d", v->onnx, what,
                           (long long)v->nknown, max);
  for (int64_t i = 0; i < v->nknown; i++) {
    if (v->known_batch[i])
      unsupported(I, "batch-dependent constants", "'%s' (%s) depends on the batch size", v->onnx,
                  what);
    if (!(fabs(v->known[i]) <= 9007199254740992.0) || v->known[i] != trunc(v->known[i]))
      bad(I, "'%s' (%s) must hold integers", v->onnx, what);
    out[i] = (int64_t)v->known[i];
  }
  return (int)v->nknown;
}

/* A compile-time scalar from input v (Clip's bounds, Dropout's ratio), or def when absent. */
static double known_scalar(Importer *I, Value *v, double def, const char *what) {
  if (!v) return def;
  if (!v->known && v->init) {
    OxTensor *t = init_values(I, v);
    v->known = t->v;
    v->known_batch = pool_alloc(I->p, (size_t)(t->n ? t->n : 1) * sizeof(bool));
    v->nknown = t->n;
  }
  if (!v->known || v->nknown != 1)
    unsupported(I, pool_printf(I->p, "%s computed at run time", what),
                "'%s' (%s) must be a scalar known when the model is compiled", v->onnx, what);
  return v->known[0];
}

static int axis_of(Importer *I, int64_t a, int rank, const char *what) {
  if (a < -rank || a >= (rank ? rank : 1))
    bad(I, "%s %lld is outside the rank %d", what, (long long)a, rank);
  return (int)(a < 0 ? a + rank : a);
}

/* ---- shapes ---- */

static void broadcast(Importer *I, const Value *a, const Value *b, int *rank, Extent *d) {
  need_shape(I, a);
  need_shape(I, b);
  int r = a->rank > b->rank ? a->rank : b->rank;
  for (int i = 0; i < r; i++) {
    int ia = i - (r - a->rank), ib = i - (r - b->rank);
    Extent x = ia >= 0 ? a->d[ia] : (Extent){1, false};
    Extent y = ib >= 0 ? b->d[ib] : (Extent){1, false};
    if (x.n == 1 && !x.batch) d[i] = y;
    else if (y.n == 1 && !y.batch) d[i] = x;
    else if (x.n == y.n && x.batch == y.batch) d[i] = x;
    else bad(I, "'%s' and '%s' do not broadcast (axis %d: %lld against %lld)", a->onnx, b->onnx,
             i, (long long)x.n, (long long)y.n);
  }
  *rank = r;
}

/* ---- elementwise ---- */

typedef struct OpDef OpDef;
typedef void OpFn(Importer *I, const OpDef *op);
struct OpDef {
  const char *name;
  OpFn *fn;
  const char *kiln;        /* the kiln function or operator the op maps to, when one */
  const char *domain;      /* NULL: the default domain */
};

static void op_unary(Importer *I, const OpDef *op) {
  Value *x = arg(I, 0);
  need_float(I, x);
  need_shape(I, x);
  def(I, 0, pool_printf(I->p, "%s(%s)", op->kiln, ref(I, x)), x->elem, x->rank, x->d);
}

/* The expression of an elementwise op of one operand, with ONNX's attributes. */
static void op_activation(Importer *I, const OpDef *op) {
  Value *xv = arg(I, 0);
  need_float(I, xv);
  need_shape(I, xv);
  const char *x = ref(I, xv), *e;
  const char *name = op->name;
  if (!strcmp(name, "LeakyRelu"))
    e = pool_printf(I->p, "leaky_relu(%s, slope=%s)", x, num(I, attr_float(I, "alpha", 0.01)));
  else if (!strcmp(name, "Elu"))
    e = pool_printf(I->p, "elu(%s, alpha=%s)", x, num(I, attr_float(I, "alpha", 1)));
  else if (!strcmp(name, "Selu"))
    e = pool_printf(I->p, "%s * elu(%s, alpha=%s)",
                    num(I, attr_float(I, "gamma", 1.05070102214813232421875)), x,
                    num(I, attr_float(I, "alpha", 1.67326319217681884765625)));
  else if (!strcmp(name, "HardSigmoid"))
    e = pool_printf(I->p, "clamp(%s * %s + %s, min=0, max=1)", num(I, attr_float(I, "alpha", 0.2)),
                    x, num(I, attr_float(I, "beta", 0.5)));
  else if (!strcmp(name, "HardSwish"))
    e = pool_printf(I->p, "%s * clamp(%s / 6 + 0.5, min=0, max=1)", x, x);
  else if (!strcmp(name, "Softsign"))
    e = pool_printf(I->p, "%s / (1 + abs(%s))", x, x);
  else if (!strcmp(name, "ThresholdedRelu"))
    e = pool_printf(I->p, "%s * step(%s - %s)", x, x, num(I, attr_float(I, "alpha", 1)));
  else if (!strcmp(name, "Celu")) {
    const char *a = num(I, attr_float(I, "alpha", 1));
    e = pool_printf(I->p, "relu(%s) + min(%s * (exp(%s / %s) - 1), 0)", x, a, x, a);
  } else if (!strcmp(name, "Reciprocal"))
    e = pool_printf(I->p, "1 / %s", x);
  else
    unreachable();
  def(I, 0, e, xv->elem, xv->rank, xv->d);
}

/* a OP b with ONNX's (NumPy's) broadcasting, which kiln shares. */
static void op_binary(Importer *I, const OpDef *op) {
  Value *a = arg(I, 0), *b = arg(I, 1);
  need_float(I, a);
  bool exponent = !strcmp(op->name, "Pow");
  if (!(exponent && b->known && b->nknown == 1)) need_float(I, b);
  if (!exponent && a->elem != b->elem)
    bad(I, "'%s' is %s but '%s' is %s", a->onnx, ox_elem_name(a->elem), b->onnx,
        ox_elem_name(b->elem));
  int rank;
  Extent d[IR_MAX_RANK];
  broadcast(I, a, b, &rank, d);
  const char *e = exponent ? pool_printf(I->p, "pow(%s, %s)", ref(I, a), ref(I, b))
                           : pool_printf(I->p, "%s %s %s", ref(I, a), op->kiln, ref(I, b));
  def(I, 0, e, a->elem, rank, d);
}

/* Sum, Mean, Max, Min over any number of operands, folded left to right. */
static void op_variadic(Importer *I, const OpDef *op) {
  if (I->node->n_input == 0) bad(I, "needs at least one input");
  Value *acc = arg(I, 0);
  need_float(I, acc);
  need_shape(I, acc);
  const char *e = ref(I, acc);
  int rank = acc->rank;
  Extent d[IR_MAX_RANK];
  memcpy(d, acc->d, sizeof d);
  Value shape = *acc;
  for (size_t k = 1; k < I->node->n_input; k++) {
    Value *b = arg(I, k);
    need_float(I, b);
    broadcast(I, &shape, b, &rank, d);
    shape.rank = rank;
    memcpy(shape.d, d, sizeof d);
    if (!strcmp(op->name, "Max") || !strcmp(op->name, "Min"))
      e = pool_printf(I->p, "%s(%s, %s)", op->kiln, e, ref(I, b));
    else
      e = pool_printf(I->p, "%s + %s", e, ref(I, b));
  }
  if (!strcmp(op->name, "Mean") && I->node->n_input > 1)
    e = pool_printf(I->p, "(%s) / %zu", e, I->node->n_input);
  def(I, 0, e, acc->elem, rank, d);
}

static void op_prelu(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0), *s = arg(I, 1);
  need_float(I, x);
  need_float(I, s);
  need_shape(I, x);
  need_shape(I, s);
  const char *slope = ref(I, s);
  /* Before opset 7 a vector slope is per channel (axis 1), as PyTorch exports nn.PReLU(C). */
  if (I->opset < 7 && s->rank == 1 && x->rank > 2 && s->d[0].n == x->d[1].n && s->d[0].n > 1) {
    Value r = *s;
    r.rank = x->rank - 1;
    for (int a = 1; a < r.rank; a++) r.d[a] = (Extent){1, false};
    slope = pool_printf(I->p, "reshape(%s, shape=%s)", slope, shape_list(I, r.rank, r.d));
    s = &r;
    int rank;
    Extent d[IR_MAX_RANK];
    broadcast(I, x, s, &rank, d);
    const char *xs = ref(I, x);
    def(I, 0, pool_printf(I->p, "relu(%s) + %s * min(%s, 0)", xs, slope, xs), x->elem, rank, d);
    return;
  }
  int rank;
  Extent d[IR_MAX_RANK];
  broadcast(I, x, s, &rank, d);
  const char *xs = ref(I, x);
  def(I, 0, pool_printf(I->p, "relu(%s) + %s * min(%s, 0)", xs, slope, xs), x->elem, rank, d);
}

static void op_clip(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_float(I, x);
  need_shape(I, x);
  double lo, hi;
  if (I->opset < 11) {
    lo = attr_float(I, "min", -INFINITY);
    hi = attr_float(I, "max", INFINITY);
  } else {
    lo = known_scalar(I, in(I, 1), -INFINITY, "Clip's min");
    hi = known_scalar(I, in(I, 2), INFINITY, "Clip's max");
  }
  const char *e = ref(I, x);
  if (isfinite(lo) && isfinite(hi))
    e = pool_printf(I->p, "clamp(%s, min=%s, max=%s)", e, num(I, lo), num(I, hi));
  else if (isfinite(lo))
    e = pool_printf(I->p, "clamp(%s, min=%s)", e, num(I, lo));
  else if (isfinite(hi))
    e = pool_printf(I->p, "clamp(%s, max=%s)", e, num(I, hi));
  def(I, 0, e, x->elem, x->rank, x->d);
}

/* ---- layers ---- */

/* A layer's name from its weight initializer's: "features.0.weight" -> features_0. */
static const char *layer_name(Importer *I, const char *weight) {
  size_t n = strlen(weight);
  static const char *const suffixes[] = {".weight", "_weight", "/weight", ".scale", "_scale"};
  for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
    size_t k = strlen(suffixes[i]);
    if (n > k && !strcmp(weight + n - k, suffixes[i])) {
      n -= k;
      break;
    }
  }
  return fresh(I, pool_strndup(I->p, weight, n), "layer");
}

/* Is v an initializer that only this node reads, so a layer may own it? */
static bool owned_initializer(const Value *v) { return v && v->init && !v->var && v->uses == 1; }

/* Windows of Conv and the pools: kernel, stride, dilation and pads [top, bottom, left, right]
 * of a 2-D window (a 1-D one is [1, k]), from ONNX's attributes at input size hw. */
typedef struct Win {
  int64_t kernel[2], stride[2], dilation[2], pad[4];
  int64_t out[2];
} Win;

static void window(Importer *I, int spatial, const int64_t *kernel, const Extent *hw, bool ceil_mode,
                   bool pool, Win *w) {
  int64_t v[4];
  for (int a = 0; a < 2; a++) {
    w->kernel[a] = 1;
    w->stride[a] = 1;
    w->dilation[a] = 1;
    w->pad[2 * a] = w->pad[2 * a + 1] = 0;
  }
  int off = 2 - spatial; /* a 1-D window is the second axis */
  for (int a = 0; a < spatial; a++) w->kernel[off + a] = kernel[a];
  int n = attr_ints(I, "strides", v, 2);
  if (n >= 0 && n != spatial) bad(I, "'strides' has %d entries for %d spatial axes", n, spatial);
  for (int a = 0; a < n; a++) w->stride[off + a] = v[a];
  n = attr_ints(I, "dilations", v, 2);
  if (n >= 0 && n != spatial) bad(I, "'dilations' has %d entries for %d spatial axes", n, spatial);
  for (int a = 0; a < n; a++) w->dilation[off + a] = v[a];
  for (int a = 0; a < 2; a++)
    if (w->kernel[a] < 1 || w->stride[a] < 1 || w->dilation[a] < 1 || w->kernel[a] > INT32_MAX ||
        w->stride[a] > INT32_MAX || w->dilation[a] > INT32_MAX)
      bad(I, "kernel, strides and dilations must be positive");
  const char *auto_pad = attr_string(I, "auto_pad", "NOTSET");
  int64_t H[2] = {1, 1};
  for (int a = 0; a < spatial; a++) {
    if (hw[a].batch) unsupported(I, "batch-sized spatial axes", "a spatial axis is the batch");
    H[off + a] = hw[a].n;
  }
  if (!strcmp(auto_pad, "NOTSET")) {
    n = attr_ints(I, "pads", v, 4);
    if (n >= 0 && n != 2 * spatial) bad(I, "'pads' has %d entries for %d spatial axes", n, spatial);
    for (int a = 0; n > 0 && a < spatial; a++) {
      w->pad[2 * (off + a)] = v[a];             /* ONNX: all begins, then all ends */
      w->pad[2 * (off + a) + 1] = v[spatial + a];
    }
  } else if (!strcmp(auto_pad, "SAME_UPPER") || !strcmp(auto_pad, "SAME_LOWER")) {
    for (int a = 0; a < 2; a++) {
      int64_t out = (H[a] + w->stride[a] - 1) / w->stride[a];
      int64_t total = (out - 1) * w->stride[a] + w->dilation[a] * (w->kernel[a] - 1) + 1 - H[a];
      if (total < 0) total = 0;
      int64_t small = total / 2, large = total - small;
      bool upper = !strcmp(auto_pad, "SAME_UPPER");
      w->pad[2 * a] = upper ? small : large;
      w->pad[2 * a + 1] = upper ? large : small;
    }
  } else if (strcmp(auto_pad, "VALID")) {
    bad(I, "auto_pad '%s' is not NOTSET, SAME_UPPER, SAME_LOWER or VALID", auto_pad);
  }
  for (int a = 0; a < 4; a++)
    if (w->pad[a] < 0 || w->pad[a] > INT32_MAX) bad(I, "pads must be between 0 and 2^31");
  for (int a = 0; a < 2; a++) {
    int64_t span = w->dilation[a] * (w->kernel[a] - 1) + 1;
    int64_t room = H[a] + w->pad[2 * a] + w->pad[2 * a + 1] - span;
    if (room < 0)
      bad(I, "the window (%lld with dilation) is larger than the padded input (%lld)",
          (long long)span, (long long)(H[a] + w->pad[2 * a] + w->pad[2 * a + 1]));
    w->out[a] = room / w->stride[a] + 1;
    if (ceil_mode && room % w->stride[a]) {
      int64_t out = room / w->stride[a] + 2;
      /* PyTorch's and ONNX's rule: the last window starts inside the input or its left
       * padding; the extra padding is what that window needs past the end. */
      if ((out - 1) * w->stride[a] >= H[a] + w->pad[2 * a]) out--;
      if (out > w->out[a]) {
        w->pad[2 * a + 1] += (out - 1) * w->stride[a] + span - (H[a] + w->pad[2 * a] +
                                                               w->pad[2 * a + 1]);
        w->out[a] = out;
      }
    }
  }
  (void)pool;
}

static const char *pair_text(Importer *I, const int64_t *v) {
  return v[0] == v[1] ? num(I, (double)v[0]) : pool_printf(I->p, "[%lld, %lld]", (long long)v[0],
                                                           (long long)v[1]);
}

static const char *pad_text(Importer *I, const int64_t *p) {
  if (p[0] == p[1] && p[2] == p[3]) return pair_text(I, (int64_t[]){p[0], p[2]});
  return pool_printf(I->p, "[%lld, %lld, %lld, %lld]", (long long)p[0], (long long)p[1],
                     (long long)p[2], (long long)p[3]);
}

/* The input of a 1-D or 2-D window op as a 4-D tensor (a 1-D one gains an axis of 1). */
static const char *as_image(Importer *I, Value *x, int *spatial) {
  need_shape(I, x);
  if (x->rank == 4) {
    *spatial = 2;
    return ref(I, x);
  }
  if (x->rank == 3) {
    *spatial = 1;
    Extent d[4] = {x->d[0], x->d[1], {1, false}, x->d[2]};
    return pool_printf(I->p, "reshape(%s, shape=%s)", ref(I, x), shape_list(I, 4, d));
  }
  unsupported(I, pool_printf(I->p, "%s (%d-D)", I->node->op_type, x->rank - 2),
              "'%s' has rank %d; kiln's windows are 1-D and 2-D", x->onnx, x->rank);
}

/* The 4-D result e of a window op back in the input's rank. */
static void def_window(Importer *I, int spatial, const char *e, int elem, Extent n, Extent c,
                       const Win *w) {
  Extent d[4] = {n, c, {w->out[0], false}, {w->out[1], false}};
  if (spatial == 2) {
    def(I, 0, e, elem, 4, d);
    return;
  }
  Extent r[3] = {n, c, {w->out[1], false}};
  def(I, 0, pool_printf(I->p, "reshape(%s, shape=%s)", e, shape_list(I, 3, r)), elem, 3, r);
}

static void op_conv(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0), *wv = arg(I, 1), *bv = in(I, 2);
  need_float(I, x);
  need_shape(I, wv);
  int spatial;
  const char *xs = as_image(I, x, &spatial);
  if (wv->rank != spatial + 2)
    bad(I, "the weight '%s' has rank %d for a %d-D convolution", wv->onnx, wv->rank, spatial);
  if (wv->d[0].batch || wv->d[1].batch) bad(I, "the weight's shape depends on the batch");
  int64_t O = wv->d[0].n, kernel[2], v[2];
  for (int a = 0; a < spatial; a++) kernel[a] = wv->d[2 + a].n;
  int nk = attr_ints(I, "kernel_shape", v, 2);
  for (int a = 0; a < nk; a++)
    if (v[a] != kernel[a]) bad(I, "kernel_shape disagrees with the weight's shape");
  int64_t groups = attr_int(I, "group", 1);
  if (groups < 1 || groups > INT32_MAX) bad(I, "'group' must be positive");
  if (x->d[1].batch || x->d[1].n != wv->d[1].n * groups)
    bad(I, "'%s' has %lld channels but the weight '%s' expects %lld x %lld groups", x->onnx,
        (long long)x->d[1].n, wv->onnx, (long long)wv->d[1].n, (long long)groups);
  if (bv && (bv->rank != 1 || bv->d[0].n != O))
    bad(I, "the bias '%s' must have shape [%lld]", bv->onnx, (long long)O);
  Win w;
  window(I, spatial, kernel, x->d + 2, false, false, &w);
  const char *geometry = pool_printf(I->p, "stride=%s, pad=%s, dilation=%s%s",
                                     pair_text(I, w.stride), pad_text(I, w.pad),
                                     pair_text(I, w.dilation),
                                     groups > 1 ? pool_printf(I->p, ", groups=%lld",
                                                              (long long)groups) : "");
  const char *e;
  if (owned_initializer(wv) && (!bv || owned_initializer(bv))) {
    const char *name = layer_name(I, wv->onnx);
    int64_t dims[4] = {O, wv->d[1].n, w.kernel[0], w.kernel[1]};
    add_init(I, pool_printf(I->p, "%s.weight", name), init_values(I, wv), 4, dims);
    if (bv) add_init(I, pool_printf(I->p, "%s.bias", name), init_values(I, bv), 1, &O);
    wv->var = bv ? (bv->var = name) : name;
    e = pool_printf(I->p, "conv2d(%s, out=%lld, kernel=%s, %s%s) as %s", xs, (long long)O,
                    pair_text(I, w.kernel), geometry, bv ? "" : ", bias=false", name);
  } else {
    const char *ws = ref(I, wv);
    if (spatial == 1) {
      Extent d[4] = {wv->d[0], wv->d[1], {1, false}, wv->d[2]};
      ws = pool_printf(I->p, "reshape(%s, shape=%s)", ws, shape_list(I, 4, d));
    }
    e = pool_printf(I->p, "conv(%s, %s, %s)", xs, ws, geometry);
    if (bv) {
      need_float(I, bv);
      e = pool_printf(I->p, "%s + reshape(%s, shape=[%lld, 1, 1])", e, ref(I, bv), (long long)O);
    }
  }
  def_window(I, spatial, e, x->elem, x->d[0], (Extent){O, false}, &w);
}

static void op_pool(Importer *I, const OpDef *op) {
  Value *x = arg(I, 0);
  need_float(I, x);
  bool max = !strcmp(op->name, "MaxPool");
  if (max && wants_output(I, 1))
    unsupported(I, "MaxPool's Indices", "the Indices output of MaxPool is not supported");
  int spatial;
  const char *xs = as_image(I, x, &spatial);
  int64_t kernel[2];
  int nk = attr_ints(I, "kernel_shape", kernel, 2);
  if (nk != spatial) bad(I, "'kernel_shape' must have %d entries", spatial);
  bool ceil_mode = attr_int(I, "ceil_mode", 0) != 0;
  Win w;
  window(I, spatial, kernel, x->d + 2, ceil_mode, true, &w);
  const char *e;
  if (max) {
    if (attr_int(I, "storage_order", 0) != 0 && wants_output(I, 1))
      unsupported(I, "MaxPool's storage_order", "storage_order 1 is not supported");
    e = pool_printf(I->p, "maxpool2d(%s, kernel=%s, stride=%s, pad=%s, dilation=%s)", xs,
                    pair_text(I, w.kernel), pair_text(I, w.stride), pad_text(I, w.pad),
                    pair_text(I, w.dilation));
  } else if (!strcmp(op->name, "AveragePool")) {
    bool include = attr_int(I, "count_include_pad", 0) != 0;
    if (include && ceil_mode)
      unsupported(I, "AveragePool ceil_mode with count_include_pad",
                  "ceil_mode with count_include_pad=1 is not supported");
    e = pool_printf(I->p, "avgpool2d(%s, kernel=%s, stride=%s, pad=%s, count_include_pad=%s)", xs,
                    pair_text(I, w.kernel), pair_text(I, w.stride), pad_text(I, w.pad),
                    include ? "true" : "false");
  } else { /* LpPool */
    if (attr_int(I, "p", 2) != 2)
      unsupported(I, "LpPool with p != 2", "only p = 2 is supported");
    e = pool_printf(I->p, "l2pool2d(%s, kernel=%s, stride=%s, pad=%s)", xs, pair_text(I, w.kernel),
                    pair_text(I, w.stride), pad_text(I, w.pad));
  }
  def_window(I, spatial, e, x->elem, x->d[0], x->d[1], &w);
}

static void op_global_pool(Importer *I, const OpDef *op) {
  Value *x = arg(I, 0);
  need_float(I, x);
  need_shape(I, x);
  if (x->rank < 3) bad(I, "the input must have spatial axes");
  Extent d[IR_MAX_RANK];
  memcpy(d, x->d, sizeof d);
  for (int a = 2; a < x->rank; a++) d[a] = (Extent){1, false};
  if (!strcmp(op->name, "GlobalAveragePool")) {
    int64_t axes[IR_MAX_RANK];
    for (int a = 2; a < x->rank; a++) axes[a - 2] = a;
    def(I, 0, pool_printf(I->p, "mean(%s, axes=%s, keepdims=true)", ref(I, x),
                          ints_list(I, x->rank - 2, axes)), x->elem, x->rank, d);
    return;
  }
  int spatial;
  const char *xs = as_image(I, x, &spatial);
  int64_t k[2] = {spatial == 2 ? x->d[2].n : 1, x->d[x->rank - 1].n};
  Win w = {.kernel = {k[0], k[1]}, .out = {1, 1}};
  def_window(I, spatial, pool_printf(I->p, "maxpool2d(%s, kernel=%s)", xs, pair_text(I, k)),
             x->elem, x->d[0], x->d[1], &w);
}

static void op_gemm(Importer *I, const OpDef *op) {
  (void)op;
  Value *a = arg(I, 0), *b = arg(I, 1), *c = in(I, 2);
  need_float(I, a);
  need_float(I, b);
  need_shape(I, a);
  need_shape(I, b);
  if (a->rank != 2 || b->rank != 2) bad(I, "Gemm takes matrices");
  double alpha = attr_float(I, "alpha", 1), beta = attr_float(I, "beta", 1);
  bool ta = attr_int(I, "transA", 0) != 0, tb = attr_int(I, "transB", 0) != 0;
  Extent M = a->d[ta ? 1 : 0], K = a->d[ta ? 0 : 1], Kb = b->d[tb ? 1 : 0], N = b->d[tb ? 0 : 1];
  if (K.n != Kb.n || K.batch != Kb.batch) bad(I, "inner dimensions differ: %lld and %lld",
                                              (long long)K.n, (long long)Kb.n);
  Extent d[2] = {M, N};
  if (c) {
    need_float(I, c);
    need_shape(I, c);
  }
  if (!ta && alpha == 1 && owned_initializer(b) && !N.batch && !K.batch &&
      (!c || (owned_initializer(c) && beta == 1 && c->rank == 1 && c->d[0].n == N.n))) {
    const char *name = layer_name(I, b->onnx);
    OxTensor *wt = init_values(I, b);
    if (!tb) { /* stored [K, N]; linear's weight is [N, K] */
      OxTensor *t = pool_alloc(I->p, sizeof *t);
      *t = *wt;
      t->v = pool_alloc(I->p, (size_t)wt->n * sizeof(double));
      for (int64_t i = 0; i < K.n; i++)
        for (int64_t j = 0; j < N.n; j++) t->v[j * K.n + i] = wt->v[i * N.n + j];
      wt = t;
    }
    int64_t dims[2] = {N.n, K.n};
    add_init(I, pool_printf(I->p, "%s.weight", name), wt, 2, dims);
    if (c) add_init(I, pool_printf(I->p, "%s.bias", name), init_values(I, c), 1, &N.n);
    b->var = name;
    if (c) c->var = name;
    def(I, 0, pool_printf(I->p, "linear(%s, out=%lld%s) as %s", ref(I, a), (long long)N.n,
                          c ? "" : ", bias=false", name), a->elem, 2, d);
    return;
  }
  const char *as = ref(I, a), *bs = ref(I, b);
  const char *e = pool_printf(I->p, "matmul(%s, %s)", ta ? pool_printf(I->p, "transpose(%s)", as)
                                                         : as,
                              tb ? pool_printf(I->p, "transpose(%s)", bs) : bs);
  if (alpha != 1) e = pool_printf(I->p, "%s * %s", num(I, alpha), e);
  if (c && beta != 0)
    e = beta == 1 ? pool_printf(I->p, "%s + %s", e, ref(I, c))
                  : pool_printf(I->p, "%s + %s * %s", e, num(I, beta), ref(I, c));
  def(I, 0, e, a->elem, 2, d);
}

static void op_matmul(Importer *I, const OpDef *op) {
  (void)op;
  Value *a = arg(I, 0), *b = arg(I, 1);
  need_float(I, a);
  need_float(I, b);
  need_shape(I, a);
  need_shape(I, b);
  if (a->rank > 2 || b->rank > 2)
    unsupported(I, "MatMul (batched)", "kiln's matmul takes matrices and vectors; '%s' has rank "
                "%d and '%s' rank %d", a->onnx, a->rank, b->onnx, b->rank);
  if (a->rank == 0 || b->rank == 0) bad(I, "MatMul does not take scalars");
  Extent ka = a->d[a->rank - 1], kb = b->d[0];
  if (ka.n != kb.n || ka.batch != kb.batch) bad(I, "inner dimensions differ");
  if (a->rank == 2 && b->rank == 2 && owned_initializer(b) && !b->d[1].batch && !ka.batch) {
    const char *name = layer_name(I, b->onnx);
    OxTensor *wt = init_values(I, b), *t = pool_alloc(I->p, sizeof *t);
    int64_t K = kb.n, N = b->d[1].n;
    *t = *wt;
    t->v = pool_alloc(I->p, (size_t)wt->n * sizeof(double));
    for (int64_t i = 0; i < K; i++)
      for (int64_t j = 0; j < N; j++) t->v[j * K + i] = wt->v[i * N + j];
    int64_t dims[2] = {N, K};
    add_init(I, pool_printf(I->p, "%s.weight", name), t, 2, dims);
    b->var = name;
    Extent d[2] = {a->d[0], b->d[1]};
    def(I, 0, pool_printf(I->p, "linear(%s, out=%lld, bias=false) as %s", ref(I, a), (long long)N,
                          name), a->elem, 2, d);
    return;
  }
  const char *as = ref(I, a), *bs = ref(I, b);
  Extent one = {1, false};
  if (a->rank == 1) as = pool_printf(I->p, "reshape(%s, shape=%s)", as, shape_list(I, 2, (Extent[]){one, ka}));
  if (b->rank == 1) bs = pool_printf(I->p, "reshape(%s, shape=%s)", bs, shape_list(I, 2, (Extent[]){kb, one}));
  const char *e = pool_printf(I->p, "matmul(%s, %s)", as, bs);
  Extent d[2];
  int rank = 0;
  if (a->rank == 2) d[rank++] = a->d[0];
  if (b->rank == 2) d[rank++] = b->d[1];
  if (rank < 2) e = pool_printf(I->p, "reshape(%s, shape=%s)", e, shape_list(I, rank, d));
  def(I, 0, e, a->elem, rank, d);
}

/* x's per-channel vector v as [C, 1, 1] (or [C] for [N, C] input) for broadcasting. */
static const char *per_channel(Importer *I, Value *v, int rank) {
  need_float(I, v);
  need_shape(I, v);
  if (v->rank != 1) bad(I, "'%s' must be a vector", v->onnx);
  if (rank == 2) return ref(I, v);
  Extent d[IR_MAX_RANK] = {v->d[0]};
  for (int a = 1; a < rank - 1; a++) d[a] = (Extent){1, false};
  return pool_printf(I->p, "reshape(%s, shape=%s)", ref(I, v), shape_list(I, rank - 1, d));
}

static void op_batchnorm(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0), *s = arg(I, 1), *b = arg(I, 2), *m = arg(I, 3), *v = arg(I, 4);
  need_float(I, x);
  need_shape(I, x);
  /* Training mode (PyTorch's export of a model in train()) is what kiln's batchnorm layer does
   * in a training step, as long as nothing reads the running statistics the node outputs; an
   * inference import evaluates with the running statistics, which is not that node's meaning. */
  bool training = attr_int(I, "training_mode", 0) != 0;
  if ((training && !I->training) || output_read(I, 1) || output_read(I, 2))
    unsupported(I, "BatchNormalization (training mode)", "training mode with the running "
                "statistics as outputs is not supported; kiln's batchnorm layer keeps them");
  if (x->rank < 2) bad(I, "the input must be [N, C, ...]");
  double eps = attr_float(I, "epsilon", 1e-5), momentum = attr_float(I, "momentum", 0.9);
  if (!(eps > 0)) bad(I, "epsilon must be positive");
  if (owned_initializer(s) && owned_initializer(b) && owned_initializer(m) &&
      owned_initializer(v) && (x->rank == 4 || x->rank == 2) && momentum >= 0 && momentum <= 1) {
    const char *name = layer_name(I, s->onnx);
    const char *leaf[4] = {"weight", "bias", "running_mean", "running_var"};
    Value *vals[4] = {s, b, m, v};
    for (int i = 0; i < 4; i++) {
      if (vals[i]->rank != 1 || vals[i]->d[0].n != x->d[1].n)
        bad(I, "'%s' must have shape [%lld]", vals[i]->onnx, (long long)x->d[1].n);
      add_init(I, pool_printf(I->p, "%s.%s", name, leaf[i]), init_values(I, vals[i]), 1,
               &x->d[1].n);
      vals[i]->var = name;
    }
    def(I, 0, pool_printf(I->p, "batchnorm(%s, eps=%s, momentum=%s) as %s", ref(I, x), num(I, eps),
                          num(I, float_value((float)(1 - momentum))), name), x->elem, x->rank, x->d);
    return;
  }
  const char *xs = ref(I, x);
  def(I, 0, pool_printf(I->p, "(%s - %s) / sqrt(%s + %s) * %s + %s", xs, per_channel(I, m, x->rank),
                        per_channel(I, v, x->rank), num(I, eps), per_channel(I, s, x->rank),
                        per_channel(I, b, x->rank)), x->elem, x->rank, x->d);
}

static void op_instancenorm(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0), *s = arg(I, 1), *b = arg(I, 2);
  need_float(I, x);
  need_shape(I, x);
  if (x->rank != 4) unsupported(I, "InstanceNormalization (not 2-D)", "kiln's instancenorm "
                                "takes [N, C, H, W]");
  double eps = attr_float(I, "epsilon", 1e-5);
  if (!(eps > 0)) bad(I, "epsilon must be positive");
  def(I, 0, pool_printf(I->p, "instancenorm(%s, eps=%s) * %s + %s", ref(I, x), num(I, eps),
                        per_channel(I, s, 4), per_channel(I, b, 4)), x->elem, 4, x->d);
}

static void op_layernorm(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0), *s = arg(I, 1), *b = in(I, 2);
  need_float(I, x);
  need_shape(I, x);
  int axis = axis_of(I, attr_int(I, "axis", -1), x->rank, "axis");
  double eps = attr_float(I, "epsilon", 1e-5);
  if (!(eps > 0)) bad(I, "epsilon must be positive");
  int64_t axes[IR_MAX_RANK];
  Extent stat[IR_MAX_RANK]; /* the statistics' shape: the normalised axes kept as 1 */
  for (int a = 0; a < x->rank; a++) stat[a] = a < axis ? x->d[a] : (Extent){1, false};
  for (int a = axis; a < x->rank; a++) axes[a - axis] = a;
  const char *al = ints_list(I, x->rank - axis, axes);
  const char *xs = ref(I, x);
  const char *me = pool_printf(I->p, "mean(%s, axes=%s, keepdims=true)", xs, al);
  Value *mv = def(I, 1, me, x->elem, x->rank, stat);
  const char *cs = tmp_var(I, "centred", pool_printf(I->p, "%s - %s", xs, mv ? mv->var : me));
  const char *ie = pool_printf(I->p, "1 / sqrt(mean(%s * %s, axes=%s, keepdims=true) + %s)", cs,
                               cs, al, num(I, eps));
  Value *iv = def(I, 2, ie, x->elem, x->rank, stat);
  const char *e = pool_printf(I->p, "%s * %s * %s", cs, iv ? iv->var : pool_printf(I->p, "(%s)", ie),
                              ref(I, s));
  if (b) e = pool_printf(I->p, "%s + %s", e, ref(I, b));
  def(I, 0, e, x->elem, x->rank, x->d);
}

static void op_dropout(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  if (wants_output(I, 1))
    unsupported(I, "Dropout's mask", "the mask output of Dropout is not supported");
  double ratio = I->opset < 12 ? attr_float(I, "ratio", 0.5)
                               : known_scalar(I, in(I, 1), 0.5, "Dropout's ratio");
  bool training = I->opset >= 12 && known_scalar(I, in(I, 2), 0, "Dropout's training_mode") != 0;
  if (!(ratio >= 0 && ratio < 1)) bad(I, "ratio %g is not in [0, 1)", ratio);
  if (training && ratio > 0)
    unsupported(I, "Dropout (training mode)", "training_mode is true: its random mask cannot be "
                "reproduced (kiln's dropout layer draws its own)");
  if (I->training && ratio > 0) {
    need_float(I, x);
    need_shape(I, x);
    const char *site = fresh(I, I->node->name && *I->node->name ? I->node->name : "dropout",
                             "dropout");
    def(I, 0, pool_printf(I->p, "dropout(%s, p=%s) as %s", ref(I, x), num(I, ratio), site), x->elem,
        x->rank, x->d);
    return;
  }
  alias(I, 0, x);
}

/* ---- shape operators ---- */

/* An output shaped d from x by a reshape (Flatten, Reshape, Squeeze, Unsqueeze); a known input
 * stays known. */
static void reshaped(Importer *I, Value *x, int rank, const Extent *d) {
  if (rank > IR_MAX_RANK) unsupported(I, "rank above 6", "the result has rank %d", rank);
  if (x->known && !x->var) {
    def_known(I, 0, x->elem, rank, d, x->nknown, x->known, x->known_batch);
    return;
  }
  def(I, 0, pool_printf(I->p, "reshape(%s, shape=%s)", ref(I, x), shape_list(I, rank, d)),
      x->elem, rank, d);
}

/* The product of d[from..to) as one extent (at most one batch factor). */
static Extent product(Importer *I, const Extent *d, int from, int to) {
  Extent e = {1, false};
  for (int i = from; i < to; i++) {
    if (d[i].batch && e.batch) unsupported(I, "batch squared", "two axes hold the batch");
    if (__builtin_mul_overflow(e.n, d[i].n, &e.n) || e.n > INT32_MAX)
      bad(I, "the merged dimension exceeds 2^31");
    e.batch |= d[i].batch;
  }
  return e;
}

static void op_flatten(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_shape(I, x);
  int axis = (int)attr_int(I, "axis", 1);
  if (axis < -x->rank || axis > x->rank) bad(I, "axis %d is outside the rank %d", axis, x->rank);
  if (axis < 0) axis += x->rank;
  Extent d[2] = {product(I, x->d, 0, axis), product(I, x->d, axis, x->rank)};
  if (axis == 1 && x->rank > 2 && x->var) { /* kiln's own flatten */
    def(I, 0, pool_printf(I->p, "flatten(%s)", x->var), x->elem, 2, d);
    return;
  }
  reshaped(I, x, 2, d);
}

static void op_reshape(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_shape(I, x);
  Value *sv = arg(I, 1);
  if (!sv->known && sv->init) known_ints(I, sv, (int64_t[IR_MAX_RANK]){0}, IR_MAX_RANK, "shape");
  if (!sv->known)
    unsupported(I, "Reshape to a computed shape", "the target shape '%s' must be known when the "
                "model is compiled", sv->onnx);
  if (sv->nknown > IR_MAX_RANK) unsupported(I, "rank above 6", "the target has rank %lld",
                                            (long long)sv->nknown);
  bool allowzero = attr_int(I, "allowzero", 0) != 0;
  int rank = (int)sv->nknown, infer = -1;
  Extent d[IR_MAX_RANK];
  for (int i = 0; i < rank; i++) {
    double v = sv->known[i];
    if (!(v >= -1 && v <= INT32_MAX) || v != trunc(v))
      bad(I, "shape entry %d is %g, not a dimension", i, v);
    if (sv->known_batch[i]) d[i] = (Extent){(int64_t)v, true};
    else if (v == 0 && !allowzero) {
      if (i >= x->rank) bad(I, "shape entry %d is 0 (copy) but the input has rank %d", i, x->rank);
      d[i] = x->d[i];
    } else if (v == -1) {
      if (infer >= 0) bad(I, "the shape has two -1 entries");
      infer = i;
      d[i] = (Extent){1, false};
    } else if (v < 1) {
      unsupported(I, "empty tensors", "shape entry %d is %g", i, v);
    } else {
      d[i] = (Extent){(int64_t)v, false};
    }
  }
  bool xb, tb;
  int64_t xn = numel(x, &xb);
  Value tmp = {.rank = rank};
  memcpy(tmp.d, d, sizeof d);
  int64_t tn = numel(&tmp, &tb);
  if (infer >= 0) {
    if (tb && !xb) bad(I, "the shape holds the batch but the input does not");
    if (tn == 0 || xn % tn) bad(I, "%lld elements do not reshape to the shape", (long long)xn);
    d[infer] = (Extent){xn / tn, xb && !tb};
  } else if (xn != tn || xb != tb) {
    bad(I, "the input's %lld%s elements do not fill the shape's %lld%s", (long long)xn,
        xb ? "·B" : "", (long long)tn, tb ? "·B" : "");
  }
  reshaped(I, x, rank, d);
}

static void op_squeeze(Importer *I, const OpDef *op) {
  Value *x = arg(I, 0);
  need_shape(I, x);
  bool unsq = !strcmp(op->name, "Unsqueeze");
  int64_t axes[IR_MAX_RANK + 1];
  int n = I->opset < 13 ? attr_ints(I, "axes", axes, IR_MAX_RANK)
                        : known_ints(I, in(I, 1), axes, IR_MAX_RANK, "axes");
  Extent d[IR_MAX_RANK + 1];
  int rank = 0;
  if (unsq) {
    if (n < 0) bad(I, "Unsqueeze needs axes");
    int out = x->rank + n;
    if (out > IR_MAX_RANK) unsupported(I, "rank above 6", "the result has rank %d", out);
    bool mark[IR_MAX_RANK + 1] = {0};
    for (int i = 0; i < n; i++) {
      int a = axis_of(I, axes[i], out, "axis");
      if (mark[a]) bad(I, "axis %d is given twice", a);
      mark[a] = true;
    }
    for (int a = 0, k = 0; a < out; a++) d[rank++] = mark[a] ? (Extent){1, false} : x->d[k++];
  } else {
    bool mark[IR_MAX_RANK] = {0};
    for (int i = 0; i < n; i++) {
      int a = axis_of(I, axes[i], x->rank, "axis");
      if (x->d[a].n != 1 || x->d[a].batch) bad(I, "axis %d has size %lld, not 1", a,
                                               (long long)x->d[a].n);
      mark[a] = true;
    }
    for (int a = 0; a < x->rank; a++) {
      bool drop = n < 0 ? (x->d[a].n == 1 && !x->d[a].batch) : mark[a];
      if (!drop) d[rank++] = x->d[a];
    }
  }
  reshaped(I, x, rank, d);
}

static void op_transpose(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_shape(I, x);
  int64_t perm[IR_MAX_RANK];
  int n = attr_ints(I, "perm", perm, IR_MAX_RANK);
  if (n < 0) {
    n = x->rank;
    for (int i = 0; i < n; i++) perm[i] = n - 1 - i;
  }
  if (n != x->rank) bad(I, "perm has %d entries for rank %d", n, x->rank);
  bool seen[IR_MAX_RANK] = {0};
  Extent d[IR_MAX_RANK];
  for (int i = 0; i < n; i++) {
    int a = axis_of(I, perm[i], n, "perm entry");
    if (seen[a]) bad(I, "perm repeats axis %d", a);
    seen[a] = true;
    perm[i] = a;
    d[i] = x->d[a];
  }
  def(I, 0, pool_printf(I->p, "transpose(%s, axes=%s)", ref(I, x), ints_list(I, n, perm)), x->elem,
      n, d);
}

/* Are all of the node's inputs compile-time values? */
static bool all_known(Importer *I) {
  for (size_t k = 0; k < I->node->n_input; k++) {
    Value *v = in(I, k);
    if (v && !v->known) {
      if (v->init && !v->var && is_int(v->elem)) {
        known_ints(I, v, (int64_t[1]){0}, 0, "");
        continue;
      }
      return false;
    }
    if (v && v->var) return false;
  }
  return true;
}

static void op_concat(Importer *I, const OpDef *op) {
  (void)op;
  if (I->node->n_input == 0) bad(I, "needs at least one input");
  Value *a = arg(I, 0);
  need_shape(I, a);
  int axis = axis_of(I, attr_int(I, "axis", 0), a->rank, "axis");
  Extent d[IR_MAX_RANK];
  memcpy(d, a->d, sizeof d);
  bool known = a->rank == 1 && all_known(I);
  for (size_t k = 1; k < I->node->n_input; k++) {
    Value *b = arg(I, k);
    need_shape(I, b);
    if (b->rank != a->rank || b->elem != a->elem) bad(I, "inputs differ in rank or type");
    for (int i = 0; i < a->rank; i++)
      if (i != axis && (b->d[i].n != a->d[i].n || b->d[i].batch != a->d[i].batch))
        bad(I, "'%s' and '%s' differ on axis %d", a->onnx, b->onnx, i);
    if (d[axis].batch != b->d[axis].batch) unsupported(I, "batch-multiple concatenation", "the "
                                                       "batch axis is joined with another");
    d[axis].n += b->d[axis].n;
  }
  if (known) { /* a shape under construction: [B, -1] */
    int64_t n = d[0].n, at = 0;
    double *v = pool_alloc(I->p, (size_t)n * sizeof(double));
    bool *vb = pool_alloc(I->p, (size_t)n * sizeof(bool));
    for (size_t k = 0; k < I->node->n_input; k++) {
      Value *b = arg(I, k);
      for (int64_t i = 0; i < b->nknown; i++, at++) {
        v[at] = b->known[i];
        vb[at] = b->known_batch[i];
      }
    }
    def_known(I, 0, a->elem, 1, d, n, v, vb);
    return;
  }
  if (I->node->n_input == 1) {
    alias(I, 0, a);
    return;
  }
  Str b = {.p = I->p};
  str_printf(&b, "concat(");
  for (size_t k = 0; k < I->node->n_input; k++) str_printf(&b, "%s, ", ref(I, arg(I, k)));
  str_printf(&b, "axis=%d)", axis);
  const char *e = b.s;
  def(I, 0, e, a->elem, a->rank, d);
}

/* Clamps a Slice bound as ONNX does for a positive step. */
static int64_t slice_bound(int64_t v, int64_t dim) {
  if (v < 0) v += dim;
  return v < 0 ? 0 : v > dim ? dim : v;
}

static void op_slice(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_shape(I, x);
  int64_t starts[IR_MAX_RANK], ends[IR_MAX_RANK], axes[IR_MAX_RANK], steps[IR_MAX_RANK];
  int n, na, ns = -1;
  if (I->opset < 10) {
    n = attr_ints(I, "starts", starts, IR_MAX_RANK);
    if (attr_ints(I, "ends", ends, IR_MAX_RANK) != n || n < 0) bad(I, "starts and ends differ");
    na = attr_ints(I, "axes", axes, IR_MAX_RANK);
  } else {
    n = known_ints(I, arg(I, 1), starts, IR_MAX_RANK, "starts");
    if (known_ints(I, arg(I, 2), ends, IR_MAX_RANK, "ends") != n) bad(I, "starts and ends differ");
    na = known_ints(I, in(I, 3), axes, IR_MAX_RANK, "axes");
    ns = known_ints(I, in(I, 4), steps, IR_MAX_RANK, "steps");
  }
  if (na >= 0 && na != n) bad(I, "axes and starts differ in length");
  if (ns >= 0 && ns != n) bad(I, "steps and starts differ in length");
  int64_t lo[IR_MAX_RANK], hi[IR_MAX_RANK];
  bool sliced[IR_MAX_RANK] = {0};
  Extent d[IR_MAX_RANK];
  memcpy(d, x->d, sizeof d);
  for (int i = 0; i < x->rank; i++) lo[i] = 0, hi[i] = x->d[i].n;
  for (int i = 0; i < n; i++) {
    int a = axis_of(I, na >= 0 ? axes[i] : i, x->rank, "axis");
    if (sliced[a]) bad(I, "axis %d is sliced twice", a);
    if (ns >= 0 && steps[i] != 1)
      unsupported(I, "Slice with steps", "a step of %lld (kiln slices with step 1)",
                  (long long)steps[i]);
    sliced[a] = true;
    if (x->d[a].batch) {
      if (slice_bound(starts[i], INT64_MAX / 2) == 0 && ends[i] >= INT32_MAX) continue;
      unsupported(I, "Slice of the batch axis", "the batch axis is sliced");
    }
    lo[a] = slice_bound(starts[i], x->d[a].n);
    hi[a] = slice_bound(ends[i], x->d[a].n);
    if (hi[a] <= lo[a]) unsupported(I, "empty tensors", "axis %d is sliced to nothing", a);
    d[a].n = hi[a] - lo[a];
  }
  if (x->known && !x->var && x->rank == 1) {
    def_known(I, 0, x->elem, 1, d, d[0].n, x->known + lo[0], x->known_batch + lo[0]);
    return;
  }
  int last = -1;
  for (int a = 0; a < x->rank; a++)
    if (sliced[a] && (lo[a] != 0 || hi[a] != x->d[a].n)) last = a;
  if (last < 0) {
    alias(I, 0, x);
    return;
  }
  Str b = {.p = I->p};
  str_printf(&b, "%s[", ref(I, x));
  for (int a = 0; a <= last; a++) {
    if (lo[a] == 0 && hi[a] == x->d[a].n) str_printf(&b, "%s:", a ? ", " : "");
    else str_printf(&b, "%s%lld:%lld", a ? ", " : "", (long long)lo[a], (long long)hi[a]);
  }
  str_printf(&b, "]");
  const char *e = b.s;
  def(I, 0, e, x->elem, x->rank, d);
}

static void op_gather(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0), *iv = arg(I, 1);
  need_shape(I, x);
  need_shape(I, iv);
  int axis = axis_of(I, attr_int(I, "axis", 0), x->rank, "axis");
  int64_t idx[64];
  if (!iv->known && !(iv->init && !iv->var))
    unsupported(I, "Gather with computed indices", "the indices '%s' must be known when the model "
                "is compiled", iv->onnx);
  int n = known_ints(I, iv, idx, 64, "indices");
  if (iv->rank > 1) unsupported(I, "Gather with indices of rank 2 or more", "indices of rank %d",
                                iv->rank);
  if (x->d[axis].batch) unsupported(I, "Gather along the batch axis", "gathers along the batch");
  for (int i = 0; i < n; i++) {
    if (idx[i] < -x->d[axis].n || idx[i] >= x->d[axis].n) bad(I, "index %lld is out of range",
                                                            (long long)idx[i]);
    if (idx[i] < 0) idx[i] += x->d[axis].n;
  }
  Extent d[IR_MAX_RANK];
  int rank = 0;
  for (int a = 0; a < x->rank; a++) {
    if (a != axis) d[rank++] = x->d[a];
    else if (iv->rank == 1) d[rank++] = (Extent){n, false};
  }
  if (x->known && !x->var && x->rank == 1) { /* Shape -> Gather: dimensions picked */
    double v[64];
    bool vb[64];
    for (int i = 0; i < n; i++) {
      v[i] = x->known[idx[i]];
      vb[i] = x->known_batch[idx[i]];
    }
    def_known(I, 0, x->elem, rank, d, n, v, vb);
    return;
  }
  const char *xs = ref(I, x);
  Str b = {.p = I->p};
  if (iv->rank == 0) {
    str_printf(&b, "%s[", xs);
    for (int a = 0; a < axis; a++) str_printf(&b, ":, ");
    str_printf(&b, "%lld]", (long long)idx[0]);
  } else {
    str_printf(&b, "concat(");
    for (int i = 0; i < n; i++) {
      str_printf(&b, "%s[", xs);
      for (int a = 0; a < axis; a++) str_printf(&b, ":, ");
      str_printf(&b, "%lld:%lld], ", (long long)idx[i], (long long)idx[i] + 1);
    }
    str_printf(&b, "axis=%d)", axis);
  }
  const char *e = b.s;
  def(I, 0, e, x->elem, rank, d);
}

static void op_shape(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_shape(I, x);
  int64_t start = attr_int(I, "start", 0), end = attr_int(I, "end", x->rank);
  start = slice_bound(start, x->rank);
  end = slice_bound(end, x->rank);
  double v[IR_MAX_RANK];
  bool vb[IR_MAX_RANK];
  int n = 0;
  for (int64_t a = start; a < end; a++, n++) {
    v[n] = (double)x->d[a].n;
    vb[n] = x->d[a].batch;
  }
  Extent d[1] = {{n, false}};
  def_known(I, 0, ONNX__TENSOR_PROTO__DATA_TYPE__INT64, 1, d, n, v, vb);
}

static void op_size(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_shape(I, x);
  bool b;
  double n = (double)numel(x, &b);
  def_known(I, 0, ONNX__TENSOR_PROTO__DATA_TYPE__INT64, 0, NULL, 1, &n, &b);
}

static void op_constant(Importer *I, const OpDef *op) {
  (void)op;
  if (I->node->n_attribute != 1) bad(I, "a Constant has exactly one attribute");
  const Onnx__AttributeProto *a = I->node->attribute[0];
  const char *nm = a->name;
  Extent d[IR_MAX_RANK];
  if (!strcmp(nm, "value")) {
    if (!a->t) bad(I, "'value' holds no tensor");
    OxTensor *t = ox_tensor(I->p, a->t, node_where(I));
    for (int i = 0; i < t->rank; i++) d[i] = (Extent){t->dims[i], false};
    if (t->n == 0) unsupported(I, "empty tensors", "the constant is empty");
    def_known(I, 0, a->t->data_type, t->rank, d, t->n, t->v, NULL);
  } else if (!strcmp(nm, "value_float") || !strcmp(nm, "value_int")) {
    double v = nm[6] == 'f' ? a->f : (double)a->i;
    def_known(I, 0, nm[6] == 'f' ? ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT
                                 : ONNX__TENSOR_PROTO__DATA_TYPE__INT64, 0, NULL, 1, &v, NULL);
  } else if (!strcmp(nm, "value_floats") || !strcmp(nm, "value_ints")) {
    bool f = nm[6] == 'f';
    int64_t n = f ? (int64_t)a->n_floats : (int64_t)a->n_ints;
    if (n == 0) unsupported(I, "empty tensors", "the constant is empty");
    double *v = pool_alloc(I->p, (size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) v[i] = f ? a->floats[i] : (double)a->ints[i];
    d[0] = (Extent){n, false};
    def_known(I, 0, f ? ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT : ONNX__TENSOR_PROTO__DATA_TYPE__INT64,
              1, d, n, v, NULL);
  } else {
    unsupported(I, pool_printf(I->p, "Constant %s", nm), "a Constant given as '%s'", nm);
  }
}

static void op_constant_of_shape(Importer *I, const OpDef *op) {
  (void)op;
  int64_t dims[IR_MAX_RANK];
  int rank = known_ints(I, arg(I, 0), dims, IR_MAX_RANK, "shape");
  double value = 0;
  int elem = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
  const Onnx__AttributeProto *a = attr(I, "value");
  if (a) {
    if (!a->t) bad(I, "'value' holds no tensor");
    OxTensor *t = ox_tensor(I->p, a->t, node_where(I));
    if (t->n != 1) bad(I, "'value' must hold one element");
    value = t->v[0];
    elem = a->t->data_type;
  }
  Extent d[IR_MAX_RANK];
  int64_t n = 1;
  for (int i = 0; i < rank; i++) {
    if (dims[i] < 1) unsupported(I, "empty tensors", "the shape has a dimension %lld",
                                 (long long)dims[i]);
    if (dims[i] > (1 << 20) || (n *= dims[i]) > (1 << 20))
      unsupported(I, "large constants", "more than 2^20 elements");
    d[i] = (Extent){dims[i], false};
  }
  double *v = pool_alloc(I->p, (size_t)n * sizeof(double));
  for (int64_t i = 0; i < n; i++) v[i] = value;
  def_known(I, 0, elem, rank, d, n, v, NULL);
}

static void op_cast(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  int to = (int)attr_int(I, "to", 0);
  if (x->known && !x->var) {
    if (!is_float(to) && !is_int(to)) unsupported(I, pool_printf(I->p, "Cast to %s",
                                                                 ox_elem_name(to)),
                                                  "a cast to %s", ox_elem_name(to));
    double *v = pool_alloc(I->p, (size_t)(x->nknown ? x->nknown : 1) * sizeof(double));
    for (int64_t i = 0; i < x->nknown; i++) {
      v[i] = is_int(to) ? trunc(x->known[i]) : x->known[i];
      if (to == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) v[i] = (float)v[i];
    }
    def_known(I, 0, to, x->rank, x->d, x->nknown, v, x->known_batch);
    return;
  }
  if (to == x->elem || (is_int(to) && is_int(x->elem))) {
    alias(I, 0, x);
    if (wants_output(I, 0)) find(I, I->node->output[0])->elem = to;
    return;
  }
  unsupported(I, pool_printf(I->p, "Cast %s to %s", ox_elem_name(x->elem), ox_elem_name(to)),
              "kiln has no conversion from %s to %s", ox_elem_name(x->elem), ox_elem_name(to));
}

static void op_identity(Importer *I, const OpDef *op) {
  (void)op;
  alias(I, 0, arg(I, 0));
}

/* Elementwise arithmetic on compile-time values (shape computations): Add, Sub, Mul, Div. */
static bool fold_arith(Importer *I, const OpDef *op) {
  Value *a = in(I, 0), *b = in(I, 1);
  if (!a || !b || !all_known(I)) return false;
  if (!is_int(a->elem) || a->rank > 1 || b->rank > 1) return false;
  int64_t n = a->nknown > b->nknown ? a->nknown : b->nknown;
  if ((a->nknown != n && a->nknown != 1) || (b->nknown != n && b->nknown != 1)) return false;
  double *v = pool_alloc(I->p, (size_t)n * sizeof(double));
  bool *vb = pool_alloc(I->p, (size_t)n * sizeof(bool));
  char o = op->kiln[0];
  for (int64_t i = 0; i < n; i++) {
    double x = a->known[a->nknown == 1 ? 0 : i], y = b->known[b->nknown == 1 ? 0 : i];
    bool xb = a->known_batch[a->nknown == 1 ? 0 : i], yb = b->known_batch[b->nknown == 1 ? 0 : i];
    if ((xb || yb) && !(o == '*' && !(xb && yb)) && !(o == '/' && xb && !yb)) return false;
    if (o == '/' && (y == 0 || fmod(x, y) != 0)) return false;
    v[i] = o == '+' ? x + y : o == '-' ? x - y : o == '*' ? x * y : x / y;
    vb[i] = xb || yb;
  }
  Extent d[1] = {{n, false}};
  def_known(I, 0, a->elem, a->rank > b->rank ? a->rank : b->rank, d, n, v, vb);
  return true;
}

static void op_arith(Importer *I, const OpDef *op) {
  if (!fold_arith(I, op)) op_binary(I, op);
}

static void op_softmax(Importer *I, const OpDef *op) {
  Value *x = arg(I, 0);
  need_float(I, x);
  need_shape(I, x);
  int axis = axis_of(I, attr_int(I, "axis", I->opset < 13 ? 1 : -1), x->rank, "axis");
  const char *fn = op->kiln, *xs = ref(I, x);
  if (I->opset >= 13 || axis == x->rank - 1) {
    def(I, 0, pool_printf(I->p, "%s(%s, axis=%d)", fn, xs, axis), x->elem, x->rank, x->d);
    return;
  }
  /* Before opset 13 the input is read as a matrix [d0·…·d(axis-1), d(axis)·…]. */
  Extent m[2] = {product(I, x->d, 0, axis), product(I, x->d, axis, x->rank)};
  const char *e = pool_printf(I->p, "reshape(%s(reshape(%s, shape=%s), axis=1), shape=%s)", fn, xs,
                              shape_list(I, 2, m), shape_list(I, x->rank, x->d));
  def(I, 0, e, x->elem, x->rank, x->d);
}

static void op_reduce(Importer *I, const OpDef *op) {
  Value *x = arg(I, 0);
  need_float(I, x);
  need_shape(I, x);
  int64_t axes[IR_MAX_RANK];
  bool sum_inputs = !strcmp(op->name, "ReduceSum") && I->opset >= 13;
  int n = sum_inputs ? known_ints(I, in(I, 1), axes, IR_MAX_RANK, "axes")
                     : attr_ints(I, "axes", axes, IR_MAX_RANK);
  bool keep = attr_int(I, "keepdims", 1) != 0;
  if (n <= 0 && sum_inputs && attr_int(I, "noop_with_empty_axes", 0)) {
    alias(I, 0, x);
    return;
  }
  bool mark[IR_MAX_RANK] = {0};
  if (n <= 0) {
    n = x->rank;
    for (int a = 0; a < n; a++) axes[a] = a;
  }
  for (int i = 0; i < n; i++) {
    axes[i] = axis_of(I, axes[i], x->rank, "axis");
    if (mark[axes[i]]) bad(I, "axis %lld is given twice", (long long)axes[i]);
    mark[axes[i]] = true;
  }
  Extent d[IR_MAX_RANK];
  int rank = 0;
  for (int a = 0; a < x->rank; a++) {
    if (!mark[a]) d[rank++] = x->d[a];
    else if (keep) d[rank++] = (Extent){1, false};
  }
  const char *xs = ref(I, x), *inner = xs, *fn = "sum", *outer = NULL;
  const char *name = op->name;
  if (!strcmp(name, "ReduceMean")) fn = "mean";
  else if (!strcmp(name, "ReduceSumSquare")) inner = pool_printf(I->p, "%s * %s", xs, xs);
  else if (!strcmp(name, "ReduceL1")) inner = pool_printf(I->p, "abs(%s)", xs);
  else if (!strcmp(name, "ReduceL2")) inner = pool_printf(I->p, "%s * %s", xs, xs), outer = "sqrt";
  else if (!strcmp(name, "ReduceLogSum")) outer = "log";
  else if (!strcmp(name, "ReduceLogSumExp")) inner = pool_printf(I->p, "exp(%s)", xs), outer = "log";
  const char *e = pool_printf(I->p, "%s(%s, axes=%s, keepdims=%s)", fn, inner,
                              ints_list(I, n, axes), keep ? "true" : "false");
  if (outer) e = pool_printf(I->p, "%s(%s)", outer, e);
  def(I, 0, e, x->elem, rank, d);
}

/* ReduceMax and ReduceMin as max pooling: the kept axes moved first and merged into the batch
 * axis, the reduced ones last and merged into one window [1, R], so the gradient is max
 * pooling's (the first maximum's). ReduceMin is −ReduceMax(−x). */
static void op_reduce_extremum(Importer *I, const OpDef *op) {
  Value *x = arg(I, 0);
  need_float(I, x);
  need_shape(I, x);
  bool min = !strcmp(op->name, "ReduceMin");
  int64_t axes[IR_MAX_RANK];
  int n = attr_ints(I, "axes", axes, IR_MAX_RANK);
  bool keep = attr_int(I, "keepdims", 1) != 0;
  bool mark[IR_MAX_RANK] = {0};
  if (n <= 0) {
    n = x->rank;
    for (int a = 0; a < n; a++) axes[a] = a;
  }
  for (int i = 0; i < n; i++) {
    int a = axis_of(I, axes[i], x->rank, "axis");
    if (mark[a]) bad(I, "axis %d is given twice", a);
    mark[a] = true;
  }
  int64_t perm[IR_MAX_RANK];
  int np = 0, rank = 0;
  bool moved = false;
  Extent kept = {1, false}, d[IR_MAX_RANK];
  int64_t R = 1;
  for (int a = 0; a < x->rank; a++)
    if (!mark[a]) {
      moved |= np != a;
      perm[np++] = a;
      if (x->d[a].batch && kept.batch) unsupported(I, "batch squared", "two axes hold the batch");
      kept.n *= x->d[a].n;
      kept.batch |= x->d[a].batch;
    }
  for (int a = 0; a < x->rank; a++)
    if (mark[a]) {
      moved |= np != a;
      perm[np++] = a;
      if (x->d[a].batch)
        unsupported(I, pool_printf(I->p, "%s over the batch", op->name), "the batch axis is "
                    "reduced");
      R *= x->d[a].n;
    }
  for (int a = 0; a < x->rank; a++) {
    if (!mark[a]) d[rank++] = x->d[a];
    else if (keep) d[rank++] = (Extent){1, false};
  }
  const char *e = ref(I, x);
  if (min) e = pool_printf(I->p, "-%s", e);
  if (moved) e = pool_printf(I->p, "transpose(%s, axes=%s)", e, ints_list(I, x->rank, perm));
  Extent win[4] = {kept, {1, false}, {1, false}, {R, false}};
  e = pool_printf(I->p, "maxpool2d(reshape(%s, shape=%s), kernel=[1, %lld])", e,
                  shape_list(I, 4, win), (long long)R);
  e = pool_printf(I->p, "reshape(%s, shape=%s)", e, shape_list(I, rank, d));
  if (min) e = pool_printf(I->p, "-%s", e);
  def(I, 0, e, x->elem, rank, d);
}

/* Split into the node's outputs along an axis, by the sizes given (an input from opset 13, an
 * attribute before) or in equal parts. */
static void op_split(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_shape(I, x);
  int axis = axis_of(I, attr_int(I, "axis", 0), x->rank, "axis");
  int64_t sizes[64];
  size_t nout = I->node->n_output;
  if (nout < 1 || nout > 64) bad(I, "Split has %zu outputs (1 to 64 are imported)", nout);
  int n = I->opset < 13 ? attr_ints(I, "split", sizes, 64)
                        : known_ints(I, in(I, 1), sizes, 64, "split");
  if (x->d[axis].batch) unsupported(I, "Split along the batch", "the batch axis is split");
  int64_t dim = x->d[axis].n;
  if (n < 0) {
    if (dim % (int64_t)nout) bad(I, "%lld does not split into %zu equal parts", (long long)dim, nout);
    n = (int)nout;
    for (int i = 0; i < n; i++) sizes[i] = dim / (int64_t)nout;
  }
  if ((size_t)n != nout) bad(I, "%d sizes for %zu outputs", n, nout);
  int64_t at = 0;
  for (int i = 0; i < n; i++) {
    if (sizes[i] < 1) unsupported(I, "empty tensors", "part %d has size %lld", i, (long long)sizes[i]);
    at += sizes[i];
  }
  if (at != dim) bad(I, "the sizes add up to %lld, not %lld", (long long)at, (long long)dim);
  const char *xs = ref(I, x);
  at = 0;
  for (int i = 0; i < n; i++) {
    Str e = {.p = I->p};
    str_printf(&e, "%s[", xs);
    for (int a = 0; a < axis; a++) str_printf(&e, ":, ");
    str_printf(&e, "%lld:%lld]", (long long)at, (long long)(at + sizes[i]));
    Extent d[IR_MAX_RANK];
    memcpy(d, x->d, sizeof d);
    d[axis].n = sizes[i];
    def(I, (size_t)i, e.s, x->elem, x->rank, d);
    at += sizes[i];
  }
}

/* Pad in constant mode: each axis joined with constant blocks before and after. */
static void op_pad(Importer *I, const OpDef *op) {
  (void)op;
  Value *x = arg(I, 0);
  need_float(I, x);
  need_shape(I, x);
  const char *mode = attr_string(I, "mode", "constant");
  if (strcmp(mode, "constant"))
    unsupported(I, pool_printf(I->p, "Pad mode %s", mode), "mode '%s' (kiln pads with a constant)",
                mode);
  int64_t pads[2 * IR_MAX_RANK];
  int n;
  double value;
  if (I->opset < 11) {
    n = attr_ints(I, "pads", pads, 2 * IR_MAX_RANK);
    value = attr_float(I, "value", 0);
  } else {
    n = known_ints(I, arg(I, 1), pads, 2 * IR_MAX_RANK, "pads");
    value = known_scalar(I, in(I, 2), 0, "Pad's constant_value");
    if (in(I, 3)) unsupported(I, "Pad with axes", "the axes input is not supported");
  }
  if (n != 2 * x->rank) bad(I, "pads has %d entries for rank %d", n, x->rank);
  const char *e = ref(I, x);
  Extent d[IR_MAX_RANK];
  memcpy(d, x->d, sizeof d);
  for (int a = 0; a < x->rank; a++) {
    int64_t before = pads[a], after = pads[x->rank + a];
    if (before < 0 || after < 0) unsupported(I, "Pad with negative pads", "a negative pad crops");
    if (before > INT32_MAX || after > INT32_MAX) bad(I, "pads must be below 2^31");
    if (!before && !after) continue;
    if (d[a].batch) unsupported(I, "Pad of the batch axis", "the batch axis is padded");
    for (int k = 0; k < x->rank; k++)
      if (k != a && d[k].batch)
        unsupported(I, "Pad of batch-sized tensors", "a constant block would be batch-sized");
    Str c = {.p = I->p};
    str_printf(&c, "concat(");
    for (int side = 0; side < 2; side++) {
      int64_t w = side ? after : before;
      if (side) str_printf(&c, "%s, ", e);
      if (!w) continue;
      Extent bd[IR_MAX_RANK];
      memcpy(bd, d, sizeof bd);
      bd[a].n = w;
      const char *block = fresh(I, "pad", "pad");
      str_printf(&I->decl, "const %s: %s = %s\n", block,
                 type_text(I, kiln_dtype(x->elem), x->rank, bd), num(I, value));
      str_printf(&c, "%s, ", block);
    }
    str_printf(&c, "axis=%d)", a);
    d[a].n += before + after;
    e = c.s;
  }
  def(I, 0, e, x->elem, x->rank, d);
}

/* ---- losses ---- */

/* SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss: scores [N, C, d1, ...], labels
 * [N, d1, ...], optional class weights [C], reduction mean | sum | none, ignore_index. The plain
 * case is kiln's cross_entropy / nll; the others are written out: the log-probability at each
 * label picked with one_hot, weighted by the label's class weight (0 where the label is
 * ignore_index), and the mean divided by the weights' sum, as ONNX defines it. */
static void op_loss(Importer *I, const OpDef *op) {
  bool sce = !strcmp(op->name, "SoftmaxCrossEntropyLoss");
  Value *x = arg(I, 0), *t = arg(I, 1), *w = in(I, 2);
  need_float(I, x);
  need_shape(I, x);
  need_shape(I, t);
  if (x->rank < 2 || t->rank != x->rank - 1 || !is_int(t->elem))
    bad(I, "the scores must be [N, C, ...] and the labels integers [N, ...]");
  for (int a = 0; a < t->rank; a++)
    if (t->d[a].n != x->d[a ? a + 1 : 0].n || t->d[a].batch != x->d[a ? a + 1 : 0].batch)
      bad(I, "the labels' shape does not match the scores'");
  if (x->d[1].batch) bad(I, "the classes axis is the batch");
  int64_t C = x->d[1].n;
  const char *reduction = attr_string(I, "reduction", "mean");
  bool mean = !strcmp(reduction, "mean"), sum = !strcmp(reduction, "sum");
  if (!mean && !sum && strcmp(reduction, "none")) bad(I, "reduction '%s' is not mean, sum or none",
                                                       reduction);
  const Onnx__AttributeProto *ii = attr(I, "ignore_index");
  int64_t ignore = ii ? attr_int(I, "ignore_index", 0) : -1;
  if (ii && (ignore < 0 || ignore >= C))
    unsupported(I, pool_printf(I->p, "%s with ignore_index outside the classes", op->name),
                "ignore_index %lld is not a class (0..%lld)", (long long)ignore, (long long)C - 1);
  if (w) {
    need_float(I, w);
    need_shape(I, w);
    if (w->rank != 1 || w->d[0].n != C) bad(I, "the weights must be [%lld]", (long long)C);
  }
  const char *xs = ref(I, x), *ts = ref(I, t);
  const char *logp = sce ? tmp_var(I, "log_prob", pool_printf(I->p, "log_softmax(%s, axis=1)", xs))
                         : xs;
  if (sce && wants_output(I, 1)) def(I, 1, logp, x->elem, x->rank, x->d);
  if (x->rank == 2 && !w && !ii && !strcmp(reduction, "mean")) {
    def(I, 0, pool_printf(I->p, "%s(%s, %s)", sce ? "cross_entropy" : "nll", xs, ts), x->elem, 0,
        NULL);
    return;
  }
  int r = x->rank, last = r - 1;
  if (r > 2) { /* the classes last, as one_hot has them */
    int64_t perm[IR_MAX_RANK];
    perm[0] = 0;
    for (int a = 2; a < r; a++) perm[a - 1] = a;
    perm[last] = 1;
    logp = pool_printf(I->p, "transpose(%s, axes=%s)", logp, ints_list(I, r, perm));
  }
  const char *oh = tmp_var(I, "one_hot", pool_printf(I->p, "one_hot(%s, %lld, dtype=%s)", ts,
                                                     (long long)C,
                                                     dtype_name(kiln_dtype(x->elem))));
  const char *picked = pool_printf(I->p, "sum(%s * %s, axes=[%d])", oh, logp, last);
  const char *weight = NULL;
  if (w) weight = pool_printf(I->p, "sum(%s * %s, axes=[%d])", oh, ref(I, w), last);
  if (ii) {
    Str idx = {.p = I->p};
    str_printf(&idx, "%s[", oh);
    for (int a = 0; a < last; a++) str_printf(&idx, ":, ");
    str_printf(&idx, "%lld]", (long long)ignore);
    const char *keep = pool_printf(I->p, "(1 - %s)", idx.s);
    weight = weight ? pool_printf(I->p, "%s * %s", weight, keep) : keep;
  }
  if (weight) weight = tmp_var(I, "weight", weight);
  const char *each = weight ? pool_printf(I->p, "-(%s * %s)", weight, picked)
                            : pool_printf(I->p, "-%s", picked);
  if (!mean && !sum) {
    def(I, 0, each, x->elem, t->rank, t->d);
    return;
  }
  const char *e = pool_printf(I->p, "sum(%s)", each);
  if (mean) e = weight ? pool_printf(I->p, "%s / sum(%s)", e, weight)
                       : pool_printf(I->p, "mean(%s)", each);
  def(I, 0, e, x->elem, 0, NULL);
}

/* ---- ONNX's training operators (ai.onnx.preview.training): one step of an optimizer over n
 * tensors, inputs R (learning rate), T (step count), then n of each per-tensor input. ---- */

static void training_inputs(Importer *I, int per, int *n, Value **R, Value **T) {
  size_t k = I->node->n_input;
  if (k < 2 || (k - 2) % (size_t)per) bad(I, "needs R, T and %d inputs per tensor", per);
  *n = (int)((k - 2) / (size_t)per);
  *R = arg(I, 0);
  *T = arg(I, 1);
  need_float(I, *R);
}

/* step(T): 1 after the first step, 0 at T = 0 (ONNX's `if t > 0`). */
static void op_adagrad(Importer *I, const OpDef *op) {
  (void)op;
  int n;
  Value *R, *T;
  training_inputs(I, 3, &n, &R, &T);
  const char *norm = num(I, attr_float(I, "norm_coefficient", 0));
  const char *eps = num(I, attr_float(I, "epsilon", (float)1e-6));
  const char *decay = num(I, attr_float(I, "decay_factor", 0));
  const char *r = NULL;
  for (int i = 0; i < n; i++) {
    Value *x = arg(I, 2 + (size_t)i), *g = arg(I, 2 + (size_t)(n + i)), *h = arg(I, 2 + (size_t)(2 * n + i));
    need_float(I, x);
    if (!r) { /* the decayed rate, once for all tensors */
      T->elem = x->elem;
      r = fresh(I, "rate", "v");
      str_printf(&I->body, "%s = %s / (1 + %s * %s)   # Adagrad%s%s\n", r, ref(I, R), ref(I, T),
                 decay, I->node->name && *I->node->name ? " " : "",
                 I->node->name ? I->node->name : "");
    }
    const char *xs = ref(I, x);
    const char *gr = pool_printf(I->p, "(%s * %s + %s)", norm, xs, ref(I, g));
    Value *hn = def(I, (size_t)(n + i), pool_printf(I->p, "%s + %s * %s", ref(I, h), gr, gr),
                    x->elem, x->rank, x->d);
    const char *hs = hn ? hn->var : pool_printf(I->p, "(%s + %s * %s)", ref(I, h), gr, gr);
    def(I, (size_t)i, pool_printf(I->p, "%s - %s * %s / (sqrt(%s) + %s)", xs, r, gr, hs, eps),
        x->elem, x->rank, x->d);
  }
}

static void op_momentum(Importer *I, const OpDef *op) {
  (void)op;
  int n;
  Value *R, *T;
  training_inputs(I, 3, &n, &R, &T);
  if (!attr(I, "alpha") || !attr(I, "beta") || !attr(I, "mode") || !attr(I, "norm_coefficient"))
    bad(I, "Momentum needs the attributes alpha, beta, mode and norm_coefficient");
  const char *alpha = num(I, attr_float(I, "alpha", 0)), *beta = num(I, attr_float(I, "beta", 0));
  const char *norm = num(I, attr_float(I, "norm_coefficient", 0));
  const char *mode = attr_string(I, "mode", "standard");
  bool nesterov = !strcmp(mode, "nesterov");
  if (!nesterov && strcmp(mode, "standard")) bad(I, "mode '%s' is not standard or nesterov", mode);
  for (int i = 0; i < n; i++) {
    Value *x = arg(I, 2 + (size_t)i), *g = arg(I, 2 + (size_t)(n + i)), *v = arg(I, 2 + (size_t)(2 * n + i));
    need_float(I, x);
    T->elem = x->elem;
    const char *xs = ref(I, x);
    const char *gr = pool_printf(I->p, "(%s * %s + %s)", norm, xs, ref(I, g));
    /* beta at T > 0, else 1 */
    const char *badj = pool_printf(I->p, "(1 + (%s - 1) * step(%s))", beta, ref(I, T));
    const char *ve = pool_printf(I->p, "%s * %s + %s * %s", alpha, ref(I, v), badj, gr);
    Value *vn = def(I, (size_t)(n + i), ve, x->elem, x->rank, x->d);
    const char *vs = vn ? vn->var : pool_printf(I->p, "(%s)", ve);
    const char *xe = nesterov ? pool_printf(I->p, "%s - %s * (%s + %s * %s)", xs, ref(I, R), gr,
                                            alpha, vs)
                              : pool_printf(I->p, "%s - %s * %s", xs, ref(I, R), vs);
    def(I, (size_t)i, xe, x->elem, x->rank, x->d);
  }
}

static void op_adam(Importer *I, const OpDef *op) {
  (void)op;
  int n;
  Value *R, *T;
  training_inputs(I, 4, &n, &R, &T);
  double a = attr_float(I, "alpha", (float)0.9), b = attr_float(I, "beta", (float)0.999);
  const char *alpha = num(I, a), *beta = num(I, b);
  const char *eps = num(I, attr_float(I, "epsilon", (float)1e-6));
  const char *norm = num(I, attr_float(I, "norm_coefficient", 0));
  double post = attr_float(I, "norm_coefficient_post", 0);
  for (int i = 0; i < n; i++) {
    Value *x = arg(I, 2 + (size_t)i), *g = arg(I, 2 + (size_t)(n + i));
    Value *v = arg(I, 2 + (size_t)(2 * n + i)), *h = arg(I, 2 + (size_t)(3 * n + i));
    need_float(I, x);
    T->elem = x->elem;
    const char *xs = ref(I, x), *ts = ref(I, T);
    const char *gr = pool_printf(I->p, "(%s * %s + %s)", norm, xs, ref(I, g));
    const char *ve = pool_printf(I->p, "%s * %s + %s * %s", alpha, ref(I, v), num(I, float_value((float)(1 - a))), gr);
    const char *he = pool_printf(I->p, "%s * %s + %s * %s * %s", beta, ref(I, h), num(I, float_value((float)(1 - b))), gr,
                                 gr);
    Value *vn = def(I, (size_t)(n + i), ve, x->elem, x->rank, x->d);
    Value *hn = def(I, (size_t)(2 * n + i), he, x->elem, x->rank, x->d);
    const char *vs = vn ? vn->var : pool_printf(I->p, "(%s)", ve);
    const char *hs = hn ? hn->var : pool_printf(I->p, "(%s)", he);
    /* The bias correction at T > 0; at T = 0 the rate as it is (s = step(T) selects). */
    const char *s = pool_printf(I->p, "step(%s)", ts);
    const char *radj = pool_printf(I->p, "%s * (%s * sqrt(1 - pow(%s, %s)) / (1 - pow(%s, %s) + 1 - %s)"
                                   " + 1 - %s)", ref(I, R), s, beta, ts, alpha, ts, s, s);
    const char *xe = pool_printf(I->p, "%s - %s * (%s / (sqrt(%s) + %s))", xs, radj, vs, hs, eps);
    if (post != 0) xe = pool_printf(I->p, "%s * (%s)", num(I, float_value((float)(1 - post))), xe);
    def(I, (size_t)i, xe, x->elem, x->rank, x->d);
  }
}

/* ---- the table ---- */

#define TRAINING_DOMAIN "ai.onnx.preview.training"
static const OpDef ops[] = {
    {"Abs", op_unary, "abs", NULL},
    {"Adagrad", op_adagrad, NULL, TRAINING_DOMAIN},
    {"Adam", op_adam, NULL, TRAINING_DOMAIN},
    {"Add", op_arith, "+", NULL},
    {"Atan", op_unary, "atan", NULL},
    {"AveragePool", op_pool, NULL, NULL},
    {"BatchNormalization", op_batchnorm, NULL, NULL},
    {"Cast", op_cast, NULL, NULL},
    {"Celu", op_activation, NULL, NULL},
    {"Clip", op_clip, NULL, NULL},
    {"Concat", op_concat, NULL, NULL},
    {"Constant", op_constant, NULL, NULL},
    {"ConstantOfShape", op_constant_of_shape, NULL, NULL},
    {"Conv", op_conv, NULL, NULL},
    {"Cos", op_unary, "cos", NULL},
    {"Div", op_arith, "/", NULL},
    {"Dropout", op_dropout, NULL, NULL},
    {"Elu", op_activation, NULL, NULL},
    {"Erf", op_unary, "erf", NULL},
    {"Exp", op_unary, "exp", NULL},
    {"Flatten", op_flatten, NULL, NULL},
    {"Gather", op_gather, NULL, NULL},
    {"Gemm", op_gemm, NULL, NULL},
    {"GlobalAveragePool", op_global_pool, NULL, NULL},
    {"GlobalMaxPool", op_global_pool, NULL, NULL},
    {"HardSigmoid", op_activation, NULL, NULL},
    {"HardSwish", op_activation, NULL, NULL},
    {"Identity", op_identity, NULL, NULL},
    {"InstanceNormalization", op_instancenorm, NULL, NULL},
    {"LayerNormalization", op_layernorm, NULL, NULL},
    {"LeakyRelu", op_activation, NULL, NULL},
    {"Log", op_unary, "log", NULL},
    {"LogSoftmax", op_softmax, "log_softmax", NULL},
    {"LpPool", op_pool, NULL, NULL},
    {"MatMul", op_matmul, NULL, NULL},
    {"Max", op_variadic, "max", NULL},
    {"MaxPool", op_pool, NULL, NULL},
    {"Mean", op_variadic, NULL, NULL},
    {"Min", op_variadic, "min", NULL},
    {"Momentum", op_momentum, NULL, TRAINING_DOMAIN},
    {"Mul", op_arith, "*", NULL},
    {"Neg", op_unary, "neg", NULL},
    {"NegativeLogLikelihoodLoss", op_loss, NULL, NULL},
    {"Pow", op_binary, NULL, NULL},
    {"PRelu", op_prelu, NULL, NULL},
    {"Pad", op_pad, NULL, NULL},
    {"Reciprocal", op_activation, NULL, NULL},
    {"ReduceL1", op_reduce, NULL, NULL},
    {"ReduceL2", op_reduce, NULL, NULL},
    {"ReduceLogSum", op_reduce, NULL, NULL},
    {"ReduceLogSumExp", op_reduce, NULL, NULL},
    {"ReduceMax", op_reduce_extremum, NULL, NULL},
    {"ReduceMean", op_reduce, NULL, NULL},
    {"ReduceMin", op_reduce_extremum, NULL, NULL},
    {"ReduceSum", op_reduce, NULL, NULL},
    {"ReduceSumSquare", op_reduce, NULL, NULL},
    {"Relu", op_unary, "relu", NULL},
    {"Reshape", op_reshape, NULL, NULL},
    {"Selu", op_activation, NULL, NULL},
    {"Shape", op_shape, NULL, NULL},
    {"Sigmoid", op_unary, "sigmoid", NULL},
    {"Sign", op_unary, "sign", NULL},
    {"Sin", op_unary, "sin", NULL},
    {"Size", op_size, NULL, NULL},
    {"Slice", op_slice, NULL, NULL},
    {"Softmax", op_softmax, "softmax", NULL},
    {"SoftmaxCrossEntropyLoss", op_loss, NULL, NULL},
    {"Softplus", op_unary, "softplus", NULL},
    {"Softsign", op_activation, NULL, NULL},
    {"Split", op_split, NULL, NULL},
    {"Sqrt", op_unary, "sqrt", NULL},
    {"Squeeze", op_squeeze, NULL, NULL},
    {"Sub", op_arith, "-", NULL},
    {"Sum", op_variadic, NULL, NULL},
    {"Tan", op_unary, "tan", NULL},
    {"Tanh", op_unary, "tanh", NULL},
    {"ThresholdedRelu", op_activation, NULL, NULL},
    {"Transpose", op_transpose, NULL, NULL},
    {"Unsqueeze", op_squeeze, NULL, NULL},
};

const char *ox_supported_ops(void) {
  static char text[2048];
  if (!text[0]) {
    size_t at = 0;
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
      at += (size_t)snprintf(text + at, sizeof text - at, "%s%s", i ? ", " : "", ops[i].name);
  }
  return text;
}

static bool default_domain(const char *d) { return !d || !*d || !strcmp(d, "ai.onnx"); }

static const OpDef *find_op(const Onnx__NodeProto *nd) {
  for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
    if (!strcmp(ops[i].name, nd->op_type) &&
        (ops[i].domain ? nd->domain && !strcmp(nd->domain, ops[i].domain)
                       : default_domain(nd->domain)))
      return &ops[i];
  return NULL;
}

/* ---- the model ---- */

/* A graph input's type: element type and shape, the batch symbol for dim_params. */
static void input_type(Importer *I, Value *v, const Onnx__ValueInfoProto *vi) {
  const Onnx__TypeProto *tp = vi->type;
  if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
    unsupported(I, "non-tensor inputs", "graph input '%s' is not a tensor", vi->name);
  const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
  v->elem = tt->has_elem_type ? tt->elem_type : 0;
  if (!tt->shape) return; /* unknown rank: need_shape refuses it where it matters */
  if (tt->shape->n_dim > IR_MAX_RANK)
    unsupported(I, "rank above 6", "graph input '%s' has rank %zu", vi->name, tt->shape->n_dim);
  v->rank = (int)tt->shape->n_dim;
  v->shaped = true;
  for (int i = 0; i < v->rank; i++) {
    const Onnx__TensorShapeProto__Dimension *dm = tt->shape->dim[i];
    if (dm->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
      if (dm->dim_value < 1)
        unsupported(I, "empty tensors", "graph input '%s' has a dimension %lld", vi->name,
                    (long long)dm->dim_value);
      if (dm->dim_value > INT32_MAX) bad(I, "graph input '%s' has a dimension above 2^31", vi->name);
      v->d[i] = (Extent){dm->dim_value, false};
      continue;
    }
    const char *param = dm->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM &&
                        dm->dim_param ? dm->dim_param : "?";
    if (I->batch_param && strcmp(I->batch_param, param))
      unsupported(I, "several symbolic dimensions", "graph input '%s' has the symbolic dimension "
                  "'%s' besides '%s'; kiln models have one, the batch", vi->name, param,
                  I->batch_param);
    I->batch_param = pool_strdup(I->p, param);
    v->d[i] = (Extent){1, true};
  }
}

static bool is_initializer(Importer *I, const char *name) {
  for (size_t i = 0; i < I->g->n_initializer; i++)
    if (!strcmp(I->g->initializer[i]->name, name)) return true;
  return false;
}

static void count_uses(Importer *I) {
  for (size_t i = 0; i < I->g->n_node; i++)
    for (size_t k = 0; k < I->g->node[i]->n_input; k++) {
      const char *nm = I->g->node[i]->input[k];
      Value *v = nm && *nm ? find(I, nm) : NULL;
      if (v) v->uses++;
    }
  for (size_t i = 0; i < I->g->n_output; i++) {
    Value *v = find(I, I->g->output[i]->name);
    if (v) v->uses++;
  }
}

static void add_port(Importer *I, OxPort **ports, int *n, const char *onnx, const char *kiln,
                     DType dt, int elem) {
  OxPort *p = pool_alloc(I->p, (size_t)(*n + 1) * sizeof *p);
  if (*n) memcpy(p, *ports, (size_t)*n * sizeof *p);
  p[*n] = (OxPort){onnx, kiln, dt, elem};
  *ports = p;
  (*n)++;
}

static int64_t opset_of(const Onnx__ModelProto *m) {
  for (size_t i = 0; i < m->n_opset_import; i++) {
    const Onnx__OperatorSetIdProto *o = m->opset_import[i];
    if (default_domain(o->domain) && o->has_version) return o->version;
  }
  return 1;
}

static const char *file_stem(Importer *I) {
  const char *b = strrchr(I->path, '/');
  b = b ? b + 1 : I->path;
  const char *dot = strrchr(b, '.');
  return pool_strndup(I->p, b, dot && dot != b ? (size_t)(dot - b) : strlen(b));
}

static void translate(Importer *I, OxModel *out) {
  Onnx__GraphProto *g = I->g;
  OxOptions *o = I->o;
  /* Initializers first (a graph input with an initializer's name is that initializer). */
  for (size_t i = 0; i < g->n_initializer; i++) {
    const Onnx__TensorProto *t = g->initializer[i];
    Value *v = add_value(I, t->name);
    v->init = t;
    v->elem = t->has_data_type ? t->data_type : 0;
    if (t->n_dims > IR_MAX_RANK)
      unsupported(I, "rank above 6", "initializer '%s' has rank %zu", t->name, t->n_dims);
    v->rank = (int)t->n_dims;
    v->shaped = true;
    for (int k = 0; k < v->rank; k++) {
      if (t->dims[k] < 1 || t->dims[k] > INT32_MAX)
        unsupported(I, "empty tensors", "initializer '%s' has a dimension %lld", t->name,
                    (long long)t->dims[k]);
      v->d[k] = (Extent){t->dims[k], false};
    }
  }
  Str inputs = {.p = I->p};
  for (size_t i = 0; i < g->n_input; i++) {
    const Onnx__ValueInfoProto *vi = g->input[i];
    if (is_initializer(I, vi->name)) continue;
    Value *v = add_value(I, vi->name);
    v->graph_input = true;
    input_type(I, v, vi);
  }
  count_uses(I);
  /* Step counts of ONNX's training operators are integers read as numbers: found first, so
   * their inputs are declared floating-point. */
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *nd = g->node[i];
    if (nd->domain && !strcmp(nd->domain, TRAINING_DOMAIN) && nd->n_input > 2) {
      Value *T = nd->input[1] ? find(I, nd->input[1]) : NULL, *X = nd->input[2] ? find(I, nd->input[2]) : NULL;
      if (T && X && T->graph_input && is_float(X->elem)) T->elem = X->elem;
    }
  }
  Value *image = NULL;
  bool train = o->loss != OX_LOSS_NONE;
  if (o->loss == OX_LOSS_AUTO) {
    train = false;
    if (g->n_output == 1)
      for (int i = 0; i < I->nvals; i++)
        if (I->vals[i].graph_input && I->vals[i].rank == 4 && is_float(I->vals[i].elem) &&
            I->vals[i].d[0].batch)
          train = true;
    o->loss = train ? OX_LOSS_CROSS_ENTROPY : OX_LOSS_NONE;
  }
  I->training = train;
  for (int i = 0; i < I->nvals; i++) {
    Value *v = &I->vals[i];
    if (!v->graph_input) continue;
    if (!is_float(v->elem) && !is_int(v->elem))
      unsupported(I, pool_printf(I->p, "%s inputs", ox_elem_name(v->elem)), "graph input '%s' is "
                  "%s; kiln inputs are f32, f64 or i32", v->onnx, ox_elem_name(v->elem));
    need_shape(I, v);
    v->var = fresh(I, v->onnx, "x");
    DType dt = kiln_dtype(v->elem);
    const char *from = "";
    if (train && !image && v->rank == 4 && is_float(v->elem) && v->d[0].batch) {
      image = v;
      double scale = o->pixel_scale > 0 ? o->pixel_scale : 1.0 / 255;
      from = scale == 1.0 / 255 ? " from images / 255"
                                : pool_printf(I->p, " from images * %s", num(I, scale));
    }
    str_printf(&inputs, "input %s: %s%s\n", v->var, type_text(I, dt, v->rank, v->d), from);
    add_port(I, &out->inputs, &out->ninputs, v->onnx, v->var, dt, v->elem);
  }
  if (train && !image)
    unsupported(I, "training without an image input", "training the model needs an image input "
                "[N, C, H, W] whose first dimension is symbolic (export with dynamic_axes); give "
                "--loss none to import it for evaluation");
  for (size_t i = 0; i < g->n_node; i++) {
    I->node = g->node[i];
    I->node_index = i;
    const OpDef *op = find_op(I->node);
    if (!op) {
      const char *dom = I->node->domain && *I->node->domain ? I->node->domain : NULL;
      unsupported(I, pool_printf(I->p, "%s%s%s", dom ? dom : "", dom ? "." : "", I->node->op_type),
                  "kiln does not import the operator %s%s%s; it imports %s", I->node->op_type,
                  dom ? " of domain " : "", dom ? dom : "", ox_supported_ops());
    }
    op->fn(I, op);
  }
  I->node = NULL;
  /* The outputs, each in its own variable. */
  Str outs = {.p = I->p};
  const char *first = NULL;
  for (size_t i = 0; i < g->n_output; i++) {
    Value *v = find(I, g->output[i]->name);
    if (!v) bad(I, "graph output '%s' is not computed by any node", g->output[i]->name);
    if (!v->var && (v->known || v->init))
      unsupported(I, "constant outputs", "graph output '%s' is a constant (kiln programs output "
                  "what they compute)", v->onnx);
    const char *var = ref(I, v);
    bool taken = v->graph_input || v->init;
    for (int k = 0; k < out->noutputs && !taken; k++)
      if (!strcmp(out->outputs[k].kiln + (k ? strlen("eval.output.") : 0), var)) taken = true;
    if (taken || (first && !strcmp(first, var))) {
      const char *copy = fresh(I, pool_printf(I->p, "%s_out", v->onnx), "out");
      str_printf(&I->body, "%s = %s\n", copy, var);
      var = copy;
    }
    if (!first) first = var;
    str_printf(&outs, "output %s\n", var);
    add_port(I, &out->outputs, &out->noutputs, v->onnx,
             i == 0 ? "eval.output" : pool_printf(I->p, "eval.output.%s", var),
             kiln_dtype(v->elem), v->elem);
  }
  /* The loss and train block, when the model trains. */
  Str tail = {.p = I->p};
  if (train) {
    Value *y = g->n_output ? find(I, g->output[0]->name) : NULL;
    if (!y || y->rank != 2 || !y->d[0].batch || !is_float(y->elem))
      unsupported(I, "training a model whose output is not [B, C]", "the loss needs the graph's "
                  "output as [batch, classes]");
    if (o->loss == OX_LOSS_MSE) {
      str_printf(&inputs, "input target: %s\n", type_text(I, kiln_dtype(y->elem), 2, y->d));
      str_printf(&tail, "loss = mse(%s, target)\n", first);
    } else {
      str_printf(&inputs, "input label: i32[B] from labels\n");
      str_printf(&tail, "loss = %s(%s, label)\n", o->loss == OX_LOSS_NLL ? "nll" : "cross_entropy",
                 first);
    }
    str_printf(&tail, "minimize loss\n\ntrain {\n  optimizer = %s\n",
               o->optimizer ? o->optimizer : "adam(lr=1e-3)");
    if (o->batch > 0) str_printf(&tail, "  batch = %lld\n", (long long)o->batch);
    if (o->epochs > 0) str_printf(&tail, "  epochs = %lld\n", (long long)o->epochs);
    str_printf(&tail, "}\n");
  }
  const char *model = o->model_name ? o->model_name
                      : fresh(I, g->name && *g->name ? g->name : file_stem(I), "model");
  Str text = {.p = I->p};
  str_printf(&text, "# Imported from %s by kiln import (ONNX opset %lld).\n", I->path,
             (long long)I->opset);
  if (I->ninit)
    str_printf(&text, "# Initial values of the %d parameters and buffers below come from the "
               "file's initializers.\n", I->ninit);
  str_printf(&text, "model %s\n\n%s%s\n%s\n%s%s%s", model, inputs.s ? inputs.s : "",
             I->decl.s ? I->decl.s : "", I->body.s ? I->body.s : "", outs.s ? outs.s : "",
             tail.len ? "\n" : "", tail.s ? tail.s : "");
  out->text = text.s;
  out->init = I->init;
  out->ninit = I->ninit;
}

void ox_default_options(OxOptions *o) { memset(o, 0, sizeof *o); }

OxModel *ox_import(Pool *p, const char *path, const void *data, size_t n, OxOptions *o) {
  o->unsupported[0] = 0;
  Onnx__ModelProto *m = ox_read_model(path, data, n);
  Importer I = {.p = p, .path = path, .g = m->graph, .o = o, .opset = opset_of(m)};
  I.decl.p = I.body.p = p;
  Trap t;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    ox_free_model(m);
    kiln_rethrow(&t);
  }
  OxModel *out = pool_alloc(p, sizeof *out);
  out->opset = I.opset;
  translate(&I, out);
  kiln_trap_end(&t);
  ox_free_model(m);
  return out;
}
