/*
 * sched.h — the schedule: how each node of a graph is computed, kept apart from what it means.
 *
 * The options below are everything a schedule may depend on besides the graph: a description of
 * the target and explicit choices. The library reads no environment variable and asks the
 * machine nothing; drivers (tools/kiln.c) fill these in from flags and $KILN_*.
 */
#ifndef KILN_SCHED_H
#define KILN_SCHED_H

#include "ir/ir.h"

/* The machine a schedule is decided for. */
typedef struct Target {
  int vector_bytes;          /* widest SIMD register the generated code may assume: 16, 32, 64 */
  int64_t l1_bytes, l2_bytes, l3_bytes;  /* data cache sizes per core (l3: shared) */
  int cores;
} Target;

typedef enum ConvAlgo {
  CONV_AUTO,                 /* the cost model picks per convolution */
  CONV_DIRECT,               /* direct loop nests */
  CONV_GEMM                  /* im2col + the blocked GEMM */
} ConvAlgo;

typedef struct SchedOptions {
  Target target;
  int threads;               /* batch chunks compiled into parallel kernels, >= 1 */
  bool fuse;                 /* elementwise fusion and in-place updates */
  ConvAlgo conv;
} SchedOptions;

/* One thread, fusion on, the cost model's convolutions, and a fixed generic x86-64 target
 * (32-byte vectors, 32 KiB / 1 MiB / 32 MiB caches, 1 core), so the same call emits the same
 * code on every machine. */
void sched_default_options(SchedOptions *o);

#endif
