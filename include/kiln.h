/*
 * kiln.h — kiln's public library API.
 *
 * A C program compiles a model (from a file or from text it built at run time), inspects it and
 * gets the generated C for its whole training step. Every function returns KILN_OK or
 * KILN_ERROR; after an error, kiln_last_error() gives the message (for model errors:
 * "file:line:col: error: ...", the source line and a caret). Handles are opaque; nothing here
 * exposes kiln's internal structures.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility; only what is declared here leaves it. */
#if defined(KILN_BUILDING_LIBRARY) && defined(__GNUC__)
#define KILN_API __attribute__((visibility("default")))
#else
#define KILN_API
#endif

typedef enum kiln_status { KILN_OK = 0, KILN_ERROR = 1 } kiln_status;

typedef struct kiln_model kiln_model;

/* Parses, type-checks and differentiates a model; builds its train, eval and grad entries. */
KILN_API kiln_status kiln_model_from_file(const char *path, kiln_model **out);
/* Same from text; `name` is used in error messages as the file name. */
KILN_API kiln_status kiln_model_from_string(const char *name, const char *text, kiln_model **out);
KILN_API void kiln_model_free(kiln_model *m);

/* The message of the last failed call on this thread ("" if none). */
KILN_API const char *kiln_last_error(void);

/* Number of learnable parameters (elements) and of parameter tensors. */
KILN_API int64_t kiln_param_count(const kiln_model *m);
KILN_API int kiln_param_tensors(const kiln_model *m);
/* Name and shape of the i-th parameter tensor (dims must hold 6 entries); returns its rank. */
KILN_API int kiln_param_info(const kiln_model *m, int i, const char **name, int64_t *dims);

/* The whole training step as one C11 translation unit specialised to `batch` (0: the model's).
 * *source is malloc'd; free it with free(). */
KILN_API kiln_status kiln_emit_c(kiln_model *m, int64_t batch, char **source);

#ifdef __cplusplus
}
#endif

#endif
