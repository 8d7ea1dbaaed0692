/*
 * ox_read.c — ONNX's protobuf read and checked.
 *
 * protobuf-c parses the bytes (it refuses truncated and malformed messages); everything the
 * format leaves open is checked here before the importer reads it: dimensions are non-negative
 * and their product fits, a tensor's data holds exactly its element count, names are present.
 * After ox_read_model the importer may index any tensor it is given without a bound check.
 */
#define OX_INTERNAL
#include "onnx/onnx.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* Larger files are not models kiln can train in memory anyway, and the bound keeps every size
 * computed from the file within a size_t. */
#define OX_MAX_FILE ((size_t)1 << 31)

bool ox_available(void) { return true; }

bool ox_is_onnx_path(const char *path) {
  size_t n = strlen(path);
  return n > 5 && !strcmp(path + n - 5, ".onnx");
}

const char *ox_elem_name(int elem) {
  static const char *const names[] = {
      "UNDEFINED", "FLOAT", "UINT8",  "INT8",   "UINT16",    "INT16",      "INT32",   "INT64",
      "STRING",    "BOOL",  "FLOAT16", "DOUBLE", "UINT32",   "UINT64",     "COMPLEX64",
      "COMPLEX128", "BFLOAT16"};
  return elem >= 0 && elem < (int)(sizeof names / sizeof *names) ? names[elem] : "an unknown type";
}

/* The element count of dims, or -1 when a dimension is negative or the count exceeds 2^40 (no
 * tensor kiln holds comes near it; the bound keeps byte sizes far from overflow). */
static int64_t dims_count(const int64_t *dims, size_t rank) {
  int64_t n = 1;
  for (size_t i = 0; i < rank; i++) {
    if (dims[i] < 0) return -1;
    if (dims[i] && n > ((int64_t)1 << 40) / dims[i]) return -1;
    n *= dims[i];
  }
  return n;
}

static size_t elem_bytes(int elem) {
  switch (elem) {
  case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT32:
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32: return 4;
  case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE:
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64: return 8;
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT16:
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT16: return 2;
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT8:
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT8:
  case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL: return 1;
  default: return 0;
  }
}

static uint64_t load_le(const uint8_t *p, size_t n) {
  uint64_t x = 0;
  for (size_t i = 0; i < n; i++) x |= (uint64_t)p[i] << (8 * i);
  return x;
}

/* One element of raw_data (little-endian, as ONNX stores it whatever the host). */
static double raw_value(int elem, const uint8_t *p) {
  switch (elem) {
  case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: {
    uint32_t u = (uint32_t)load_le(p, 4);
    float f;
    memcpy(&f, &u, 4);
    return f;
  }
  case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: {
    uint64_t u = load_le(p, 8);
    double d;
    memcpy(&d, &u, 8);
    return d;
  }
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT64: return (double)(int64_t)load_le(p, 8);
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64: return (double)load_le(p, 8);
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: return (int32_t)load_le(p, 4);
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32: return (uint32_t)load_le(p, 4);
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT16: return (int16_t)load_le(p, 2);
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT16: return (uint16_t)load_le(p, 2);
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT8: return (int8_t)p[0];
  default: return p[0]; /* UINT8, BOOL */
  }
}

OxTensor *ox_tensor(Pool *p, const Onnx__TensorProto *t, const char *what) {
  int elem = t->has_data_type ? t->data_type : 0;
  size_t esize = elem_bytes(elem);
  if (!esize)
    kiln_fail((Loc){0}, "%s: tensor of type %s, which kiln does not read (it reads FLOAT, DOUBLE "
              "and the integer types)", what, ox_elem_name(elem));
  if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
    kiln_fail((Loc){0}, "%s: the tensor's data is in an external file, which kiln does not read "
              "(save the model with its data inside: onnx.save(model, path, "
              "save_as_external_data=False))", what);
  if (t->segment)
    kiln_fail((Loc){0}, "%s: a segmented tensor, which kiln does not read", what);
  if (t->n_dims > IR_MAX_RANK)
    kiln_fail((Loc){0}, "%s: a tensor of rank %zu; kiln tensors have at most %d axes", what,
              t->n_dims, IR_MAX_RANK);
  int64_t n = dims_count(t->dims, t->n_dims);
  if (n < 0)
    kiln_fail((Loc){0}, "%s: the tensor's dimensions are negative or too large", what);
  OxTensor *x = pool_alloc(p, sizeof *x);
  x->name = t->name ? pool_strdup(p, t->name) : "";
  x->dtype = elem == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE ? DT_F64
             : elem == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT ? DT_F32 : DT_I32;
  x->rank = (int)t->n_dims;
  for (int i = 0; i < x->rank; i++) x->dims[i] = t->dims[i];
  x->n = n;
  x->v = pool_alloc(p, (size_t)(n ? n : 1) * sizeof(double));
  size_t have;
  if (t->has_raw_data) {
    have = t->raw_data.len / esize;
    if (t->raw_data.len % esize || have != (size_t)n)
      kiln_fail((Loc){0}, "%s: raw_data holds %zu bytes, but %lld elements of %s need %lld", what,
                t->raw_data.len, (long long)n, ox_elem_name(elem), (long long)n * (long long)esize);
    for (int64_t i = 0; i < n; i++) x->v[i] = raw_value(elem, t->raw_data.data + (size_t)i * esize);
    return x;
  }
  switch (elem) {
  case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
    have = t->n_float_data;
    break;
  case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE:
    have = t->n_double_data;
    break;
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
    have = t->n_int64_data;
    break;
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32:
  case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64:
    have = t->n_uint64_data;
    break;
  default: /* the small integer types and BOOL live in int32_data */
    have = t->n_int32_data;
    break;
  }
  if (have != (size_t)n)
    kiln_fail((Loc){0}, "%s: the tensor has %zu values for %lld elements", what, have,
              (long long)n);
  for (int64_t i = 0; i < n; i++) {
    switch (elem) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: x->v[i] = t->float_data[i]; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: x->v[i] = t->double_data[i]; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64: x->v[i] = (double)t->int64_data[i]; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32:
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64: x->v[i] = (double)t->uint64_data[i]; break;
    default: x->v[i] = t->int32_data[i]; break;
    }
  }
  return x;
}

/* ---- the model ---- */

static void need_name(const char *path, const char *name, const char *what, size_t i) {
  if (!name)
    kiln_fail((Loc){0}, "%s: %s %zu has no name", path, what, i);
}

/* What the importer relies on of every graph: named values and nodes with an operator. */
static void check_graph(const char *path, const Onnx__GraphProto *g) {
  for (size_t i = 0; i < g->n_input; i++) need_name(path, g->input[i]->name, "graph input", i);
  for (size_t i = 0; i < g->n_output; i++) need_name(path, g->output[i]->name, "graph output", i);
  for (size_t i = 0; i < g->n_initializer; i++)
    need_name(path, g->initializer[i]->name, "initializer", i);
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *nd = g->node[i];
    if (!nd->op_type || !*nd->op_type)
      kiln_fail((Loc){0}, "%s: node %zu has no operator (op_type)", path, i);
    for (size_t a = 0; a < nd->n_attribute; a++)
      if (!nd->attribute[a]->name)
        kiln_fail((Loc){0}, "%s: node %zu (%s): attribute %zu has no name", path, i, nd->op_type,
                  a);
  }
}

Onnx__ModelProto *ox_read_model(const char *path, const void *data, size_t n) {
  Pool *tmp = NULL;
  if (!data) {
    const char *why = kiln_not_regular_file(path);
    if (why)
      kiln_fail((Loc){0}, "cannot read '%s': %s", path, why);
    tmp = pool_new();
    data = read_file(tmp, path, &n);
    if (!data) {
      int e = errno;
      pool_free(tmp);
      kiln_fail((Loc){0}, "cannot read '%s': %s", path, strerror(e));
    }
  }
  if (n > OX_MAX_FILE) {
    pool_free(tmp);
    kiln_fail((Loc){0}, "%s: larger than 2 GiB, which kiln does not import", path);
  }
  Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, n, data);
  pool_free(tmp);
  if (!m)
    kiln_fail((Loc){0}, "%s: not an ONNX model (the protobuf does not parse as onnx.ModelProto)",
              path);
  if (!m->graph) {
    onnx__model_proto__free_unpacked(m, NULL);
    kiln_fail((Loc){0}, "%s: the ONNX model has no graph", path);
  }
  Trap t;
  if (!KILN_TRY(&t)) {
    kiln_trap_end(&t);
    onnx__model_proto__free_unpacked(m, NULL);
    kiln_rethrow(&t);
  }
  check_graph(path, m->graph);
  kiln_trap_end(&t);
  return m;
}

void ox_free_model(Onnx__ModelProto *m) {
  if (m) onnx__model_proto__free_unpacked(m, NULL);
}

OxTensor *ox_read_tensor(Pool *p, const char *path) {
  size_t n;
  char *data = read_file(p, path, &n);
  if (!data)
    kiln_fail((Loc){0}, "cannot read '%s': %s", path, strerror(errno));
  Onnx__TensorProto *t = onnx__tensor_proto__unpack(NULL, n, (const uint8_t *)data);
  if (!t)
    kiln_fail((Loc){0}, "%s: not a serialized ONNX TensorProto", path);
  Trap tr;
  if (!KILN_TRY(&tr)) {
    kiln_trap_end(&tr);
    onnx__tensor_proto__free_unpacked(t, NULL);
    kiln_rethrow(&tr);
  }
  OxTensor *x = ox_tensor(p, t, path);
  kiln_trap_end(&tr);
  onnx__tensor_proto__free_unpacked(t, NULL);
  return x;
}
