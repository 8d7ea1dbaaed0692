/*
 * driver.h — `kiln check`, `grad`, `jvp` and `hvp`: generated code against the reference.
 *
 * Both compile the model's C (src/cg/) into a shared object (aot.c) and drive it through the
 * same RtBackend interface as the reference interpreter (ref/ref.h), so a disagreement
 * is between the two meanings of the same graph, not between two drivers.
 */
#ifndef KILN_CROSSCHECK_H
#define KILN_CROSSCHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "sched/sched.h"

/* Tolerance of a comparison of a value computed in the program's dtype against the f64
 * reference: |x - r| <= abs + rel * (|r| + S), S the largest |r| in the tensor (so elements
 * that cancel to ~0 inside a large tensor are judged on the tensor's scale). f32: abs 1e-6,
 * rel 1e-3; f64: abs 1e-12, rel 1e-7. */
typedef struct CheckTol {
  double abs, rel;
} CheckTol;
CheckTol check_tolerance(DType t);

/* Plans and compiles g for `batch`, initialises the compiled program and the f64 reference from
 * the same random parameters (seed) and inputs, and compares: the grad entry (loss and every
 * gradient), then `steps` train steps (loss, every parameter and state after each), then the eval
 * entry, then the grad entry again at a smaller batch (the run-time batch code path). Prints a
 * table of max absolute / relative differences to out. Returns 0 if everything is within
 * tolerance, 1 otherwise (also on any error, with the message on out). The compiled side uses
 * schedule options so (NULL: sched_default_options), as do grad_model and forward_model. */
int check_model(Graph *g, int64_t batch, int steps, uint64_t seed, FILE *out,
                const SchedOptions *so);

/* Loads parameters and inputs from safetensors files (every parameter and input of the model,
 * with exactly its shape), runs the grad entry with batch = the inputs' leading dimension on the
 * compiled program (or the f64 reference with use_reference) and writes "loss" and one tensor
 * per gradient, named after its parameter ("fc1.weight"), to out_path. Returns 0 or 1 (message
 * on stderr... and on out). */
int grad_model(Graph *g, const char *params_path, const char *inputs_path, const char *out_path,
               bool use_reference, FILE *out, const SchedOptions *so);

/* `kiln jvp` / `kiln hvp`: as grad_model on a graph that train_build_jvp (hvp false) or
 * train_build_hvp (hvp true) extended, with the direction read from tangents_path (one tensor
 * per parameter, named and shaped like it). Writes "loss" and then, for jvp, "jvp.loss" and
 * (with a declared output) "output" and "jvp.output"; for hvp, H·v per parameter under the
 * parameter's name. Returns 0 or 1 (message on out). */
int forward_model(Graph *g, bool hvp, const char *params_path, const char *inputs_path,
                  const char *tangents_path, const char *out_path, bool use_reference, FILE *out,
                  const SchedOptions *so);

#endif
