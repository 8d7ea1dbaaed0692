/*
 * test_jit_omp.c — the OpenMP runtime of JIT'd code (src/backend/jit_omp.c), called as Clang's
 * code calls libomp: static schedules give every thread the bounds libomp 14 gives it, a fork
 * runs its body once per team member with every argument, num_threads holds for one fork, a fork
 * inside a region runs as a team of one, barriers hold, host threads have teams of their own whose
 * workers are joined when the host exits, and a forked child process gets new workers. Plain C:
 * runs with and without the JIT.
 */
#include <check.h>
#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"

/* ---- static schedules against libomp ---- */

typedef enum LoopType { LOOP_I32, LOOP_U32, LOOP_I64, LOOP_U64 } LoopType;

/* A loop as __kmpc_for_static_init_{4,4u,8,8u} receives it, and libomp's answers for teams of 1,
 * 2, 3 and 7: "lower,upper,stride,last" of thread 0, thread 1, ... These were recorded from
 * libomp 14.0.6 (Debian's libomp5-14, default settings) by calling its __kmpc_for_static_init_*
 * from every thread of `#pragma omp parallel num_threads(n)` with the same arguments. Clang emits
 * schedule 33 for schedule(static, chunk) and 34 for schedule(static), and counts its loops
 * upward by 1 from 0 in a signed or unsigned type; the other strides and the ends of every type
 * hold the arithmetic to libomp's, wrapping included. */
typedef struct ScheduleCase {
  LoopType type;
  int32_t schedule;
  int64_t lower, upper, incr, chunk;
  const char *libomp[4];
} ScheduleCase;

static const int team_sizes[4] = {1, 2, 3, 7};

static const ScheduleCase schedule_cases[] = {
    {LOOP_I64, 33, 0, -1, 1, 1,
     {"0,-1,1,0",
      "0,-1,1,0 0,-1,1,0",
      "0,-1,1,0 0,-1,1,0 0,-1,1,0",
      "0,-1,1,0 0,-1,1,0 0,-1,1,0 0,-1,1,0 0,-1,1,0 0,-1,1,0 0,-1,1,0"}},
    {LOOP_I64, 34, 0, -1, 1, 1,
     {"0,-1,1,0",
      "0,-1,1,0 0,-1,1,0",
      "0,-1,1,0 0,-1,1,0 0,-1,1,0",
      "0,-1,1,0 0,-1,1,0 0,-1,1,0 0,-1,1,0 0,-1,1,0 0,-1,1,0 0,-1,1,0"}},
    {LOOP_I64, 33, 0, 0, 1, 1,
     {"0,0,1,1",
      "0,0,1,1 1,0,1,0",
      "0,0,1,1 1,0,1,0 1,0,1,0",
      "0,0,1,1 1,0,1,0 1,0,1,0 1,0,1,0 1,0,1,0 1,0,1,0 1,0,1,0"}},
    {LOOP_I64, 34, 0, 0, 1, 1,
     {"0,0,1,1",
      "0,0,1,1 1,0,1,0",
      "0,0,1,1 1,0,1,0 1,0,1,0",
      "0,0,1,1 1,0,1,0 1,0,1,0 1,0,1,0 1,0,1,0 1,0,1,0 1,0,1,0"}},
    {LOOP_I64, 33, 0, 2, 1, 1,
     {"0,2,3,1",
      "0,0,2,1 1,1,2,0",
      "0,0,3,0 1,1,3,0 2,2,3,1",
      "0,0,3,0 1,1,3,0 2,2,3,1 3,2,3,0 3,2,3,0 3,2,3,0 3,2,3,0"}},
    {LOOP_I64, 34, 0, 2, 1, 1,
     {"0,2,3,1",
      "0,1,3,0 2,2,3,1",
      "0,0,3,0 1,1,3,0 2,2,3,1",
      "0,0,3,0 1,1,3,0 2,2,3,1 3,2,3,0 3,2,3,0 3,2,3,0 3,2,3,0"}},
    {LOOP_I64, 33, 0, 9, 1, 1,
     {"0,9,10,1",
      "0,0,2,0 1,1,2,1",
      "0,0,3,1 1,1,3,0 2,2,3,0",
      "0,0,7,0 1,1,7,0 2,2,7,1 3,3,7,0 4,4,7,0 5,5,7,0 6,6,7,0"}},
    {LOOP_I64, 34, 0, 9, 1, 1,
     {"0,9,10,1",
      "0,4,10,0 5,9,10,1",
      "0,3,10,0 4,6,10,0 7,9,10,1",
      "0,1,10,0 2,3,10,0 4,5,10,0 6,6,10,0 7,7,10,0 8,8,10,0 9,9,10,1"}},
    {LOOP_I64, 33, 0, 9, 1, 3,
     {"0,9,10,1",
      "0,2,6,0 3,5,6,1",
      "0,2,9,1 3,5,9,0 6,8,9,0",
      "0,2,12,0 3,5,12,0 6,8,12,0 9,11,12,1 10,9,12,0 10,9,12,0 10,9,12,0"}},
    {LOOP_I64, 34, 0, 9, 1, 3,
     {"0,9,10,1",
      "0,4,10,0 5,9,10,1",
      "0,3,10,0 4,6,10,0 7,9,10,1",
      "0,1,10,0 2,3,10,0 4,5,10,0 6,6,10,0 7,7,10,0 8,8,10,0 9,9,10,1"}},
    {LOOP_I64, 33, 0, 9, 1, 20,
     {"0,9,10,1",
      "0,9,10,1 10,9,10,0",
      "0,9,10,1 10,9,10,0 10,9,10,0",
      "0,9,10,1 10,9,10,0 10,9,10,0 10,9,10,0 10,9,10,0 10,9,10,0 10,9,10,0"}},
    {LOOP_I64, 34, 0, 9, 1, 20,
     {"0,9,10,1",
      "0,4,10,0 5,9,10,1",
      "0,3,10,0 4,6,10,0 7,9,10,1",
      "0,1,10,0 2,3,10,0 4,5,10,0 6,6,10,0 7,7,10,0 8,8,10,0 9,9,10,1"}},
    {LOOP_I64, 33, 0, 9, 1, 0,
     {"0,9,10,1",
      "0,0,2,0 1,1,2,1",
      "0,0,3,1 1,1,3,0 2,2,3,0",
      "0,0,7,0 1,1,7,0 2,2,7,1 3,3,7,0 4,4,7,0 5,5,7,0 6,6,7,0"}},
    {LOOP_I64, 34, 0, 9, 1, 0,
     {"0,9,10,1",
      "0,4,10,0 5,9,10,1",
      "0,3,10,0 4,6,10,0 7,9,10,1",
      "0,1,10,0 2,3,10,0 4,5,10,0 6,6,10,0 7,7,10,0 8,8,10,0 9,9,10,1"}},
    {LOOP_I64, 33, 5, 30, 4, 2,
     {"5,30,26,1",
      "5,9,16,0 13,17,16,1",
      "5,9,24,1 13,17,24,0 21,25,24,0",
      "5,9,32,0 13,17,32,0 21,25,32,0 29,33,32,1 31,30,32,0 31,30,32,0 31,30,32,0"}},
    {LOOP_I64, 34, 5, 30, 4, 2,
     {"5,30,26,1",
      "5,17,7,0 21,29,7,1",
      "5,13,7,0 17,21,7,0 25,29,7,1",
      "5,5,7,0 9,9,7,0 13,13,7,0 17,17,7,0 21,21,7,0 25,25,7,0 29,29,7,1"}},
    {LOOP_I64, 33, 30, 5, -4, 2,
     {"30,5,-26,1",
      "30,26,-16,0 22,18,-16,1",
      "30,26,-24,1 22,18,-24,0 14,10,-24,0",
      "30,26,-32,0 22,18,-32,0 14,10,-32,0 6,2,-32,1 4,5,-32,0 4,5,-32,0 4,5,-32,0"}},
    {LOOP_I64, 34, 30, 5, -4, 2,
     {"30,5,-26,1",
      "30,18,7,0 14,6,7,1",
      "30,22,7,0 18,14,7,0 10,6,7,1",
      "30,30,7,0 26,26,7,0 22,22,7,0 18,18,7,0 14,14,7,0 10,10,7,0 6,6,7,1"}},
    {LOOP_I64, 33, 10, 0, -1, 1,
     {"10,0,-11,1",
      "10,10,-2,1 9,9,-2,0",
      "10,10,-3,0 9,9,-3,1 8,8,-3,0",
      "10,10,-7,0 9,9,-7,0 8,8,-7,0 7,7,-7,1 6,6,-7,0 5,5,-7,0 4,4,-7,0"}},
    {LOOP_I64, 34, 10, 0, -1, 1,
     {"10,0,-11,1",
      "10,5,11,0 4,0,11,1",
      "10,7,11,0 6,3,11,0 2,0,11,1",
      "10,9,11,0 8,7,11,0 6,5,11,0 4,3,11,0 2,2,11,0 1,1,11,0 0,0,11,1"}},
    {LOOP_I64, 33, 0, 10, -1, 1,
     {"0,10,-1,0",
      "0,10,-1,0 0,10,-1,0",
      "0,10,-1,0 0,10,-1,0 0,10,-1,0",
      "0,10,-1,0 0,10,-1,0 0,10,-1,0 0,10,-1,0 0,10,-1,0 0,10,-1,0 0,10,-1,0"}},
    {LOOP_I64, 34, 0, 10, -1, 1,
     {"0,10,-1,0",
      "0,10,-1,0 0,10,-1,0",
      "0,10,-1,0 0,10,-1,0 0,10,-1,0",
      "0,10,-1,0 0,10,-1,0 0,10,-1,0 0,10,-1,0 0,10,-1,0 0,10,-1,0 0,10,-1,0"}},
    {LOOP_I64, 33, -7, 7, 3, 1,
     {"-7,7,15,1",
      "-7,-7,6,1 -4,-4,6,0",
      "-7,-7,9,0 -4,-4,9,1 -1,-1,9,0",
      "-7,-7,15,0 -4,-4,15,0 -1,-1,15,0 2,2,15,0 5,5,15,1 8,7,15,0 8,7,15,0"}},
    {LOOP_I64, 34, -7, 7, 3, 1,
     {"-7,7,15,1",
      "-7,-1,5,0 2,5,5,1",
      "-7,-4,5,0 -1,2,5,0 5,5,5,1",
      "-7,-7,5,0 -4,-4,5,0 -1,-1,5,0 2,2,5,0 5,5,5,1 8,7,5,0 8,7,5,0"}},
    {LOOP_I64, 33, 3, 1000003, 7, 5,
     {"3,1000003,1000001,1",
      "3,31,70,0 38,66,70,1",
      "3,31,105,0 38,66,105,0 73,101,105,1",
      "3,31,245,0 38,66,245,0 73,101,245,0 108,136,245,0 143,171,245,1 178,206,245,0 213,241,245,0"}},
    {LOOP_I64, 34, 3, 1000003, 7, 5,
     {"3,1000003,1000001,1",
      "3,499999,142858,0 500006,1000002,142858,1",
      "3,333336,142858,0 333343,666669,142858,0 666676,1000002,142858,1",
      "3,142859,142858,0 142866,285722,142858,0 285729,428578,142858,0 428585,571434,142858,0 571441,714290,142858,0 714297,857146,142858,0 857153,1000002,142858,1"}},
    {LOOP_I32, 33, 0, 9, 1, 1,
     {"0,9,10,1",
      "0,0,2,0 1,1,2,1",
      "0,0,3,1 1,1,3,0 2,2,3,0",
      "0,0,7,0 1,1,7,0 2,2,7,1 3,3,7,0 4,4,7,0 5,5,7,0 6,6,7,0"}},
    {LOOP_I32, 34, 0, 9, 1, 1,
     {"0,9,10,1",
      "0,4,10,0 5,9,10,1",
      "0,3,10,0 4,6,10,0 7,9,10,1",
      "0,1,10,0 2,3,10,0 4,5,10,0 6,6,10,0 7,7,10,0 8,8,10,0 9,9,10,1"}},
    {LOOP_U32, 33, 0, 9, 1, 4,
     {"0,9,10,1",
      "0,3,8,1 4,7,8,0",
      "0,3,12,0 4,7,12,0 8,11,12,1",
      "0,3,12,0 4,7,12,0 8,11,12,1 10,9,12,0 10,9,12,0 10,9,12,0 10,9,12,0"}},
    {LOOP_U32, 34, 0, 9, 1, 4,
     {"0,9,10,1",
      "0,4,10,0 5,9,10,1",
      "0,3,10,0 4,6,10,0 7,9,10,1",
      "0,1,10,0 2,3,10,0 4,5,10,0 6,6,10,0 7,7,10,0 8,8,10,0 9,9,10,1"}},
    {LOOP_U64, 33, 0, 2, 1, 1,
     {"0,2,3,1",
      "0,0,2,1 1,1,2,0",
      "0,0,3,0 1,1,3,0 2,2,3,1",
      "0,0,3,0 1,1,3,0 2,2,3,1 3,2,3,0 3,2,3,0 3,2,3,0 3,2,3,0"}},
    {LOOP_U64, 34, 0, 2, 1, 1,
     {"0,2,3,1",
      "0,1,3,0 2,2,3,1",
      "0,0,3,0 1,1,3,0 2,2,3,1",
      "0,0,3,0 1,1,3,0 2,2,3,1 3,2,3,0 3,2,3,0 3,2,3,0 3,2,3,0"}},
    {LOOP_I32, 33, INT32_MAX - 9, INT32_MAX, 1, 1,
     {"2147483638,2147483647,10,1",
      "2147483638,2147483638,2,0 2147483639,2147483639,2,1",
      "2147483638,2147483638,3,1 2147483639,2147483639,3,0 2147483640,2147483640,3,0",
      "2147483638,2147483638,7,0 2147483639,2147483639,7,0 2147483640,2147483640,7,1 2147483641,2147483641,7,0 2147483642,2147483642,7,0 2147483643,2147483643,7,0 2147483644,2147483644,7,0"}},
    {LOOP_I32, 34, INT32_MAX - 9, INT32_MAX, 1, 1,
     {"2147483638,2147483647,10,1",
      "2147483638,2147483642,10,0 2147483643,2147483647,10,1",
      "2147483638,2147483641,10,0 2147483642,2147483644,10,0 2147483645,2147483647,10,1",
      "2147483638,2147483639,10,0 2147483640,2147483641,10,0 2147483642,2147483643,10,0 2147483644,2147483644,10,0 2147483645,2147483645,10,0 2147483646,2147483646,10,0 2147483647,2147483647,10,1"}},
    {LOOP_I32, 33, INT32_MAX - 9, INT32_MAX, 4, 2,
     {"2147483638,2147483647,10,1",
      "2147483638,2147483642,16,0 2147483646,-2147483646,16,1",
      "2147483638,2147483642,16,0 2147483646,-2147483646,16,1 -2147483648,2147483647,16,0",
      "2147483638,2147483642,16,0 2147483646,-2147483646,16,1 -2147483648,2147483647,16,0 -2147483648,2147483647,16,0 -2147483648,2147483647,16,0 -2147483648,2147483647,16,0 -2147483648,2147483647,16,0"}},
    {LOOP_I32, 34, INT32_MAX - 9, INT32_MAX, 4, 2,
     {"2147483638,2147483647,10,1",
      "2147483638,2147483642,3,0 2147483646,2147483646,3,1",
      "2147483638,2147483638,3,0 2147483642,2147483642,3,0 2147483646,2147483646,3,1",
      "2147483638,2147483638,3,0 2147483642,2147483642,3,0 2147483646,2147483646,3,1 -2147483648,2147483647,3,0 -2147483648,2147483647,3,0 -2147483648,2147483647,3,0 -2147483648,2147483647,3,0"}},
    {LOOP_I32, 33, INT32_MIN + 9, INT32_MIN, -1, 1,
     {"-2147483639,-2147483648,-10,1",
      "-2147483639,-2147483639,-2,0 -2147483640,-2147483640,-2,1",
      "-2147483639,-2147483639,-3,1 -2147483640,-2147483640,-3,0 -2147483641,-2147483641,-3,0",
      "-2147483639,-2147483639,-7,0 -2147483640,-2147483640,-7,0 -2147483641,-2147483641,-7,1 -2147483642,-2147483642,-7,0 -2147483643,-2147483643,-7,0 -2147483644,-2147483644,-7,0 -2147483645,-2147483645,-7,0"}},
    {LOOP_I32, 34, INT32_MIN + 9, INT32_MIN, -1, 1,
     {"-2147483639,-2147483648,-10,1",
      "-2147483639,-2147483643,10,0 -2147483644,-2147483648,10,1",
      "-2147483639,-2147483642,10,0 -2147483643,-2147483645,10,0 -2147483646,-2147483648,10,1",
      "-2147483639,-2147483640,10,0 -2147483641,-2147483642,10,0 -2147483643,-2147483644,10,0 -2147483645,-2147483645,10,0 -2147483646,-2147483646,10,0 -2147483647,-2147483647,10,0 -2147483648,-2147483648,10,1"}},
    {LOOP_I32, 33, INT32_MIN + 9, INT32_MIN, -4, 3,
     {"-2147483639,-2147483648,-10,1",
      "-2147483639,-2147483647,-12,1 2147483647,-2147483648,-12,0",
      "-2147483639,-2147483647,-12,1 2147483647,-2147483648,-12,0 2147483647,-2147483648,-12,0",
      "-2147483639,-2147483647,-12,1 2147483647,-2147483648,-12,0 2147483647,-2147483648,-12,0 2147483647,-2147483648,-12,0 2147483647,-2147483648,-12,0 2147483647,-2147483648,-12,0 2147483647,-2147483648,-12,0"}},
    {LOOP_I32, 34, INT32_MIN + 9, INT32_MIN, -4, 3,
     {"-2147483639,-2147483648,-10,1",
      "-2147483639,-2147483643,3,0 -2147483647,-2147483647,3,1",
      "-2147483639,-2147483639,3,0 -2147483643,-2147483643,3,0 -2147483647,-2147483647,3,1",
      "-2147483639,-2147483639,3,0 -2147483643,-2147483643,3,0 -2147483647,-2147483647,3,1 2147483647,-2147483648,3,0 2147483647,-2147483648,3,0 2147483647,-2147483648,3,0 2147483647,-2147483648,3,0"}},
    {LOOP_U32, 33, UINT32_MAX - 9, UINT32_MAX, 1, 1,
     {"4294967286,4294967295,10,1",
      "4294967286,4294967286,2,0 4294967287,4294967287,2,1",
      "4294967286,4294967286,3,1 4294967287,4294967287,3,0 4294967288,4294967288,3,0",
      "4294967286,4294967286,7,0 4294967287,4294967287,7,0 4294967288,4294967288,7,1 4294967289,4294967289,7,0 4294967290,4294967290,7,0 4294967291,4294967291,7,0 4294967292,4294967292,7,0"}},
    {LOOP_U32, 34, UINT32_MAX - 9, UINT32_MAX, 1, 1,
     {"4294967286,4294967295,10,1",
      "4294967286,4294967290,10,0 4294967291,4294967295,10,1",
      "4294967286,4294967289,10,0 4294967290,4294967292,10,0 4294967293,4294967295,10,1",
      "4294967286,4294967287,10,0 4294967288,4294967289,10,0 4294967290,4294967291,10,0 4294967292,4294967292,10,0 4294967293,4294967293,10,0 4294967294,4294967294,10,0 4294967295,4294967295,10,1"}},
    {LOOP_U32, 33, UINT32_MAX - 9, UINT32_MAX, 3, 2,
     {"4294967286,4294967295,10,1",
      "4294967286,4294967289,12,0 4294967292,4294967295,12,1",
      "4294967286,4294967289,12,0 4294967292,4294967295,12,1 0,4294967295,12,0",
      "4294967286,4294967289,12,0 4294967292,4294967295,12,1 0,4294967295,12,0 0,4294967295,12,0 0,4294967295,12,0 0,4294967295,12,0 0,4294967295,12,0"}},
    {LOOP_U32, 34, UINT32_MAX - 9, UINT32_MAX, 3, 2,
     {"4294967286,4294967295,10,1",
      "4294967286,4294967289,4,0 4294967292,4294967295,4,1",
      "4294967286,4294967289,4,0 4294967292,4294967292,4,0 4294967295,4294967295,4,1",
      "4294967286,4294967286,4,0 4294967289,4294967289,4,0 4294967292,4294967292,4,0 4294967295,4294967295,4,1 0,4294967295,4,0 0,4294967295,4,0 0,4294967295,4,0"}},
    {LOOP_U32, 33, 9, 0, -1, 2,
     {"9,0,-10,1",
      "9,8,-4,1 7,6,-4,0",
      "9,8,-6,0 7,6,-6,1 5,4,-6,0",
      "9,8,-10,0 7,6,-10,0 5,4,-10,0 3,2,-10,0 1,0,-10,1 4294967295,0,-10,0 4294967295,0,-10,0"}},
    {LOOP_U32, 34, 9, 0, -1, 2,
     {"9,0,-10,1",
      "9,5,10,0 4,0,10,1",
      "9,6,10,0 5,3,10,0 2,0,10,1",
      "9,8,10,0 7,6,10,0 5,4,10,0 3,3,10,0 2,2,10,0 1,1,10,0 0,0,10,1"}},
    {LOOP_I64, 33, INT64_MAX - 9, INT64_MAX, 1, 1,
     {"9223372036854775798,9223372036854775807,10,1",
      "9223372036854775798,9223372036854775798,2,0 9223372036854775799,9223372036854775799,2,1",
      "9223372036854775798,9223372036854775798,3,1 9223372036854775799,9223372036854775799,3,0 9223372036854775800,9223372036854775800,3,0",
      "9223372036854775798,9223372036854775798,7,0 9223372036854775799,9223372036854775799,7,0 9223372036854775800,9223372036854775800,7,1 9223372036854775801,9223372036854775801,7,0 9223372036854775802,9223372036854775802,7,0 9223372036854775803,9223372036854775803,7,0 9223372036854775804,9223372036854775804,7,0"}},
    {LOOP_I64, 34, INT64_MAX - 9, INT64_MAX, 1, 1,
     {"9223372036854775798,9223372036854775807,10,1",
      "9223372036854775798,9223372036854775802,10,0 9223372036854775803,9223372036854775807,10,1",
      "9223372036854775798,9223372036854775801,10,0 9223372036854775802,9223372036854775804,10,0 9223372036854775805,9223372036854775807,10,1",
      "9223372036854775798,9223372036854775799,10,0 9223372036854775800,9223372036854775801,10,0 9223372036854775802,9223372036854775803,10,0 9223372036854775804,9223372036854775804,10,0 9223372036854775805,9223372036854775805,10,0 9223372036854775806,9223372036854775806,10,0 9223372036854775807,9223372036854775807,10,1"}},
    {LOOP_I64, 33, INT64_MAX - 9, INT64_MAX, 4, 2,
     {"9223372036854775798,9223372036854775807,10,1",
      "9223372036854775798,9223372036854775802,16,0 9223372036854775806,-9223372036854775806,16,1",
      "9223372036854775798,9223372036854775802,16,0 9223372036854775806,-9223372036854775806,16,1 -9223372036854775808,9223372036854775807,16,0",
      "9223372036854775798,9223372036854775802,16,0 9223372036854775806,-9223372036854775806,16,1 -9223372036854775808,9223372036854775807,16,0 -9223372036854775808,9223372036854775807,16,0 -9223372036854775808,9223372036854775807,16,0 -9223372036854775808,9223372036854775807,16,0 -9223372036854775808,9223372036854775807,16,0"}},
    {LOOP_I64, 34, INT64_MAX - 9, INT64_MAX, 4, 2,
     {"9223372036854775798,9223372036854775807,10,1",
      "9223372036854775798,9223372036854775802,3,0 9223372036854775806,9223372036854775806,3,1",
      "9223372036854775798,9223372036854775798,3,0 9223372036854775802,9223372036854775802,3,0 9223372036854775806,9223372036854775806,3,1",
      "9223372036854775798,9223372036854775798,3,0 9223372036854775802,9223372036854775802,3,0 9223372036854775806,9223372036854775806,3,1 -9223372036854775808,9223372036854775807,3,0 -9223372036854775808,9223372036854775807,3,0 -9223372036854775808,9223372036854775807,3,0 -9223372036854775808,9223372036854775807,3,0"}},
    {LOOP_I64, 33, INT64_MIN + 9, INT64_MIN, -1, 1,
     {"-9223372036854775799,-9223372036854775808,-10,1",
      "-9223372036854775799,-9223372036854775799,-2,0 -9223372036854775800,-9223372036854775800,-2,1",
      "-9223372036854775799,-9223372036854775799,-3,1 -9223372036854775800,-9223372036854775800,-3,0 -9223372036854775801,-9223372036854775801,-3,0",
      "-9223372036854775799,-9223372036854775799,-7,0 -9223372036854775800,-9223372036854775800,-7,0 -9223372036854775801,-9223372036854775801,-7,1 -9223372036854775802,-9223372036854775802,-7,0 -9223372036854775803,-9223372036854775803,-7,0 -9223372036854775804,-9223372036854775804,-7,0 -9223372036854775805,-9223372036854775805,-7,0"}},
    {LOOP_I64, 34, INT64_MIN + 9, INT64_MIN, -1, 1,
     {"-9223372036854775799,-9223372036854775808,-10,1",
      "-9223372036854775799,-9223372036854775803,10,0 -9223372036854775804,-9223372036854775808,10,1",
      "-9223372036854775799,-9223372036854775802,10,0 -9223372036854775803,-9223372036854775805,10,0 -9223372036854775806,-9223372036854775808,10,1",
      "-9223372036854775799,-9223372036854775800,10,0 -9223372036854775801,-9223372036854775802,10,0 -9223372036854775803,-9223372036854775804,10,0 -9223372036854775805,-9223372036854775805,10,0 -9223372036854775806,-9223372036854775806,10,0 -9223372036854775807,-9223372036854775807,10,0 -9223372036854775808,-9223372036854775808,10,1"}},
    {LOOP_I64, 33, INT64_MIN + 9, INT64_MIN, -4, 3,
     {"-9223372036854775799,-9223372036854775808,-10,1",
      "-9223372036854775799,-9223372036854775807,-12,1 9223372036854775807,-9223372036854775808,-12,0",
      "-9223372036854775799,-9223372036854775807,-12,1 9223372036854775807,-9223372036854775808,-12,0 9223372036854775807,-9223372036854775808,-12,0",
      "-9223372036854775799,-9223372036854775807,-12,1 9223372036854775807,-9223372036854775808,-12,0 9223372036854775807,-9223372036854775808,-12,0 9223372036854775807,-9223372036854775808,-12,0 9223372036854775807,-9223372036854775808,-12,0 9223372036854775807,-9223372036854775808,-12,0 9223372036854775807,-9223372036854775808,-12,0"}},
    {LOOP_I64, 34, INT64_MIN + 9, INT64_MIN, -4, 3,
     {"-9223372036854775799,-9223372036854775808,-10,1",
      "-9223372036854775799,-9223372036854775803,3,0 -9223372036854775807,-9223372036854775807,3,1",
      "-9223372036854775799,-9223372036854775799,3,0 -9223372036854775803,-9223372036854775803,3,0 -9223372036854775807,-9223372036854775807,3,1",
      "-9223372036854775799,-9223372036854775799,3,0 -9223372036854775803,-9223372036854775803,3,0 -9223372036854775807,-9223372036854775807,3,1 9223372036854775807,-9223372036854775808,3,0 9223372036854775807,-9223372036854775808,3,0 9223372036854775807,-9223372036854775808,3,0 9223372036854775807,-9223372036854775808,3,0"}},
    {LOOP_U64, 33, -10, -1, 1, 1,
     {"18446744073709551606,18446744073709551615,10,1",
      "18446744073709551606,18446744073709551606,2,0 18446744073709551607,18446744073709551607,2,1",
      "18446744073709551606,18446744073709551606,3,1 18446744073709551607,18446744073709551607,3,0 18446744073709551608,18446744073709551608,3,0",
      "18446744073709551606,18446744073709551606,7,0 18446744073709551607,18446744073709551607,7,0 18446744073709551608,18446744073709551608,7,1 18446744073709551609,18446744073709551609,7,0 18446744073709551610,18446744073709551610,7,0 18446744073709551611,18446744073709551611,7,0 18446744073709551612,18446744073709551612,7,0"}},
    {LOOP_U64, 34, -10, -1, 1, 1,
     {"18446744073709551606,18446744073709551615,10,1",
      "18446744073709551606,18446744073709551610,10,0 18446744073709551611,18446744073709551615,10,1",
      "18446744073709551606,18446744073709551609,10,0 18446744073709551610,18446744073709551612,10,0 18446744073709551613,18446744073709551615,10,1",
      "18446744073709551606,18446744073709551607,10,0 18446744073709551608,18446744073709551609,10,0 18446744073709551610,18446744073709551611,10,0 18446744073709551612,18446744073709551612,10,0 18446744073709551613,18446744073709551613,10,0 18446744073709551614,18446744073709551614,10,0 18446744073709551615,18446744073709551615,10,1"}},
    {LOOP_U64, 33, -10, -1, 3, 2,
     {"18446744073709551606,18446744073709551615,10,1",
      "18446744073709551606,18446744073709551609,12,0 18446744073709551612,18446744073709551615,12,1",
      "18446744073709551606,18446744073709551609,12,0 18446744073709551612,18446744073709551615,12,1 0,18446744073709551615,12,0",
      "18446744073709551606,18446744073709551609,12,0 18446744073709551612,18446744073709551615,12,1 0,18446744073709551615,12,0 0,18446744073709551615,12,0 0,18446744073709551615,12,0 0,18446744073709551615,12,0 0,18446744073709551615,12,0"}},
    {LOOP_U64, 34, -10, -1, 3, 2,
     {"18446744073709551606,18446744073709551615,10,1",
      "18446744073709551606,18446744073709551609,4,0 18446744073709551612,18446744073709551615,4,1",
      "18446744073709551606,18446744073709551609,4,0 18446744073709551612,18446744073709551612,4,0 18446744073709551615,18446744073709551615,4,1",
      "18446744073709551606,18446744073709551606,4,0 18446744073709551609,18446744073709551609,4,0 18446744073709551612,18446744073709551612,4,0 18446744073709551615,18446744073709551615,4,1 0,18446744073709551615,4,0 0,18446744073709551615,4,0 0,18446744073709551615,4,0"}},
    {LOOP_U64, 33, 9, 0, -2, 1,
     {"9,0,-10,1",
      "9,9,-4,1 7,7,-4,0",
      "9,9,-6,0 7,7,-6,1 5,5,-6,0",
      "9,9,-10,0 7,7,-10,0 5,5,-10,0 3,3,-10,0 1,1,-10,1 18446744073709551615,0,-10,0 18446744073709551615,0,-10,0"}},
    {LOOP_U64, 34, 9, 0, -2, 1,
     {"9,0,-10,1",
      "9,5,5,0 3,1,5,1",
      "9,7,5,0 5,3,5,0 1,1,5,1",
      "9,9,5,0 7,7,5,0 5,5,5,0 3,3,5,0 1,1,5,1 18446744073709551615,0,5,0 18446744073709551615,0,5,0"}},
};

/* The calling thread's bounds of c, as the table writes them. */
static void bounds_text(const ScheduleCase *c, char *out, size_t n) {
  int32_t gtid = jit_omp_global_thread_num(NULL), last = -1;
  switch (c->type) {
  case LOOP_I32: {
    int32_t lower = (int32_t)c->lower, upper = (int32_t)c->upper, stride = 0;
    jit_omp_for_static_init_4(NULL, gtid, c->schedule, &last, &lower, &upper, &stride,
                              (int32_t)c->incr, (int32_t)c->chunk);
    snprintf(out, n, "%" PRId32 ",%" PRId32 ",%" PRId32 ",%" PRId32, lower, upper, stride, last);
    break;
  }
  case LOOP_U32: {
    uint32_t lower = (uint32_t)c->lower, upper = (uint32_t)c->upper;
    int32_t stride = 0;
    jit_omp_for_static_init_4u(NULL, gtid, c->schedule, &last, &lower, &upper, &stride,
                               (int32_t)c->incr, (int32_t)c->chunk);
    snprintf(out, n, "%" PRIu32 ",%" PRIu32 ",%" PRId32 ",%" PRId32, lower, upper, stride, last);
    break;
  }
  case LOOP_I64: {
    int64_t lower = c->lower, upper = c->upper, stride = 0;
    jit_omp_for_static_init_8(NULL, gtid, c->schedule, &last, &lower, &upper, &stride, c->incr,
                              c->chunk);
    snprintf(out, n, "%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId32, lower, upper, stride, last);
    break;
  }
  case LOOP_U64: {
    uint64_t lower = (uint64_t)c->lower, upper = (uint64_t)c->upper;
    int64_t stride = 0;
    jit_omp_for_static_init_8u(NULL, gtid, c->schedule, &last, &lower, &upper, &stride,
                               c->incr, c->chunk);
    snprintf(out, n, "%" PRIu64 ",%" PRIu64 ",%" PRId64 ",%" PRId32, lower, upper, stride, last);
    break;
  }
  }
  jit_omp_for_static_fini(NULL, gtid);
}

enum { MAX_TEAM = 8 };

typedef struct TeamBounds {
  const ScheduleCase *c;
  char bounds[MAX_TEAM][128];
  atomic_int members;
} TeamBounds;

static void record_bounds(int32_t *gtid, int32_t *btid, TeamBounds *tb) {
  ck_assert_int_eq(*gtid, *btid);
  ck_assert_int_lt(*btid, MAX_TEAM);
  bounds_text(tb->c, tb->bounds[*btid], sizeof tb->bounds[*btid]);
  atomic_fetch_add(&tb->members, 1);
}

/* Every thread's bounds of c in a team of nth, joined as the table writes them. */
static void team_bounds(const ScheduleCase *c, int nth, char *out, size_t n) {
  TeamBounds tb = {.c = c};
  atomic_init(&tb.members, 0);
  jit_omp_push_num_threads(NULL, jit_omp_global_thread_num(NULL), nth);
  jit_omp_fork_call(NULL, 1, (JitOmpMicrotask)record_bounds, &tb);
  ck_assert_int_eq(atomic_load(&tb.members), nth);
  out[0] = 0;
  for (int t = 0; t < nth; t++)
    snprintf(out + strlen(out), n - strlen(out), "%s%s", t ? " " : "", tb.bounds[t]);
}

START_TEST(static_schedules_as_libomp) {
  char got[1024];
  for (size_t i = 0; i < sizeof schedule_cases / sizeof *schedule_cases; i++) {
    const ScheduleCase *c = &schedule_cases[i];
    for (int k = 0; k < 4; k++) {
      team_bounds(c, team_sizes[k], got, sizeof got);
      ck_assert_msg(strcmp(got, c->libomp[k]) == 0,
                    "case %zu (type %d, schedule %d, %" PRId64 "..%" PRId64 " by %" PRId64
                    ", chunk %" PRId64 ") in a team of %d: %s, libomp %s",
                    i, (int)c->type, c->schedule, c->lower, c->upper, c->incr, c->chunk,
                    team_sizes[k], got, c->libomp[k]);
    }
    /* Outside any region a thread is a team of one. */
    bounds_text(c, got, sizeof got);
    ck_assert_str_eq(got, c->libomp[0]);
  }
}
END_TEST

/* ---- forks ---- */

/* What each member of a region saw. */
typedef struct Seen {
  atomic_int members;
  int32_t nth_of[MAX_TEAM]; /* the team size static_init implies: iterations 0..999 in blocks */
  pthread_t thread_of[MAX_TEAM];
} Seen;

/* A thread's team size, read off the plain static schedule of 1000 iterations (thread 0's
 * block is 1000 / nth long, rounded up). */
static int32_t team_size_seen(void) {
  int32_t gtid = jit_omp_global_thread_num(NULL), last, stride;
  int32_t lower = 0, upper = 999;
  jit_omp_for_static_init_4(NULL, gtid, 34, &last, &lower, &upper, &stride, 1, 1);
  jit_omp_for_static_fini(NULL, gtid);
  int32_t tid = jit_omp_global_thread_num(NULL);
  for (int32_t nth = 1; nth <= JIT_OMP_MAX_THREADS; nth++)
    if (lower == tid * (1000 / nth) + (tid < 1000 % nth ? tid : 1000 % nth) &&
        upper - lower + 1 == 1000 / nth + (tid < 1000 % nth))
      return nth;
  return -1;
}

static void see(int32_t *gtid, int32_t *btid, Seen *s) {
  (void)gtid;
  s->nth_of[*btid] = team_size_seen();
  s->thread_of[*btid] = pthread_self();
  atomic_fetch_add(&s->members, 1);
}

/* Forks see() with num_threads(nth), or without it when nth is 0. */
static void fork_seen(int nth, Seen *s) {
  memset(s, 0, sizeof *s);
  atomic_init(&s->members, 0);
  if (nth)
    jit_omp_push_num_threads(NULL, jit_omp_global_thread_num(NULL), nth);
  jit_omp_fork_call(NULL, 1, (JitOmpMicrotask)see, s);
}

START_TEST(num_threads_holds_for_one_fork) {
  Seen s;
  fork_seen(3, &s);
  ck_assert_int_eq(atomic_load(&s.members), 3);
  for (int t = 0; t < 3; t++)
    ck_assert_int_eq(s.nth_of[t], 3);
  ck_assert(pthread_equal(s.thread_of[0], pthread_self()));
  ck_assert(!pthread_equal(s.thread_of[1], s.thread_of[2]));
  for (int nth = 0; nth <= 1; nth++) { /* without num_threads, as with 1: a team of one */
    fork_seen(nth, &s);
    ck_assert_int_eq(atomic_load(&s.members), 1);
    ck_assert_int_eq(s.nth_of[0], 1);
    ck_assert(pthread_equal(s.thread_of[0], pthread_self()));
  }
  /* A smaller team after a larger one: the idle worker stays out. */
  fork_seen(5, &s);
  fork_seen(2, &s);
  ck_assert_int_eq(atomic_load(&s.members), 2);
  ck_assert_int_eq(s.nth_of[1], 2);
}
END_TEST

/* A body with every argument a fork can forward: each is the address of its own index. */
static int slots[JIT_OMP_MAX_ARGS];
static atomic_int args_right;

#define P int *
static void fifteen(int32_t *gtid, int32_t *btid, P a0, P a1, P a2, P a3, P a4, P a5, P a6, P a7,
                    P a8, P a9, P a10, P a11, P a12, P a13, P a14) {
  (void)gtid, (void)btid;
  int *a[] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14};
  bool right = true;
  for (int i = 0; i < JIT_OMP_MAX_ARGS; i++)
    right = right && a[i] == &slots[i];
  if (right)
    atomic_fetch_add(&args_right, 1);
}
#undef P

static void no_arguments(int32_t *gtid, int32_t *btid) {
  (void)gtid, (void)btid;
  atomic_fetch_add(&args_right, 1);
}

START_TEST(fork_forwards_every_argument) {
  ck_assert_int_eq(jit_omp_max_fork_args, JIT_OMP_MAX_ARGS);
  atomic_init(&args_right, 0);
  jit_omp_push_num_threads(NULL, 0, 4);
  jit_omp_fork_call(NULL, 15, (JitOmpMicrotask)fifteen, &slots[0], &slots[1], &slots[2],
                    &slots[3], &slots[4], &slots[5], &slots[6], &slots[7], &slots[8], &slots[9],
                    &slots[10], &slots[11], &slots[12], &slots[13], &slots[14]);
  ck_assert_int_eq(atomic_load(&args_right), 4);
  jit_omp_push_num_threads(NULL, 0, 2);
  jit_omp_fork_call(NULL, 0, (JitOmpMicrotask)no_arguments);
  ck_assert_int_eq(atomic_load(&args_right), 6);
}
END_TEST

typedef struct Nested {
  Seen inner[MAX_TEAM];
  pthread_t outer_thread[MAX_TEAM];
  int32_t outer_nth_after[MAX_TEAM];
} Nested;

static void fork_inside(int32_t *gtid, int32_t *btid, Nested *n) {
  (void)gtid;
  n->outer_thread[*btid] = pthread_self();
  fork_seen(4, &n->inner[*btid]);
  n->outer_nth_after[*btid] = team_size_seen(); /* back in the outer team */
}

START_TEST(nested_fork_is_a_team_of_one) {
  Nested n;
  memset(&n, 0, sizeof n);
  jit_omp_push_num_threads(NULL, 0, 3);
  jit_omp_fork_call(NULL, 1, (JitOmpMicrotask)fork_inside, &n);
  for (int t = 0; t < 3; t++) {
    ck_assert_int_eq(atomic_load(&n.inner[t].members), 1);
    ck_assert_int_eq(n.inner[t].nth_of[0], 1);
    ck_assert(pthread_equal(n.inner[t].thread_of[0], n.outer_thread[t]));
    ck_assert_int_eq(n.outer_nth_after[t], 3);
  }
  /* num_threads pushed inside a region is spent there, not on the next outer fork. */
  Seen s;
  fork_seen(2, &s);
  ck_assert_int_eq(atomic_load(&s.members), 2);
}
END_TEST

/* Phases separated by barriers: in phase k every thread writes its slot, and after the barrier
 * every thread must see every slot of phase k. */
enum { PHASES = 500 };

typedef struct Phases {
  int32_t nth;
  atomic_int slot[MAX_TEAM];
  atomic_int wrong;
} Phases;

static void run_phases(int32_t *gtid, int32_t *btid, Phases *p) {
  for (int k = 1; k <= PHASES; k++) {
    atomic_store(&p->slot[*btid], k);
    jit_omp_barrier(NULL, *gtid);
    for (int32_t t = 0; t < p->nth; t++)
      if (atomic_load(&p->slot[t]) < k)
        atomic_fetch_add(&p->wrong, 1);
    jit_omp_barrier(NULL, *gtid);
  }
}

START_TEST(barriers_hold_every_thread) {
  for (int32_t nth = 1; nth <= 5; nth += 2) {
    Phases p = {.nth = nth};
    jit_omp_push_num_threads(NULL, 0, nth);
    jit_omp_fork_call(NULL, 1, (JitOmpMicrotask)run_phases, &p);
    ck_assert_int_eq(atomic_load(&p.wrong), 0);
  }
  jit_omp_barrier(NULL, 0); /* outside a region: nothing to wait for */
}
END_TEST

/* Many short regions of changing sizes, as a training step forks them: every member runs each
 * once, and no wake-up is lost. */
typedef struct Tally {
  atomic_long runs;
} Tally;

static void count_run(int32_t *gtid, int32_t *btid, Tally *t) {
  (void)gtid, (void)btid;
  atomic_fetch_add(&t->runs, 1);
}

static long many_regions(int regions) {
  Tally t;
  atomic_init(&t.runs, 0);
  long want = 0;
  for (int r = 0; r < regions; r++) {
    int nth = 1 + r % 4;
    want += nth;
    jit_omp_push_num_threads(NULL, 0, nth);
    jit_omp_fork_call(NULL, 1, (JitOmpMicrotask)count_run, &t);
  }
  return atomic_load(&t.runs) - want; /* 0 when right */
}

START_TEST(many_short_regions) { ck_assert_int_eq(many_regions(5000), 0); }
END_TEST

/* ---- host threads ---- */

typedef struct HostRun {
  const Seen *test_team; /* the team of the thread that runs the test */
  bool right;
} HostRun;

static void *host_main(void *arg) {
  HostRun *h = arg;
  h->right = many_regions(1000) == 0;
  Seen s;
  fork_seen(3, &s);
  for (int t = 1; t < 3; t++)
    for (int u = 1; u < 3; u++)
      h->right = h->right && !pthread_equal(s.thread_of[t], h->test_team->thread_of[u]);
  return NULL;
}

/* The threads of this process, from /proc. */
static int thread_count(void) {
  DIR *d = opendir("/proc/self/task");
  ck_assert_ptr_nonnull(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

START_TEST(host_threads_have_their_own_teams) {
  /* The test thread's own team first, so a host thread that took its workers would show. */
  Seen mine;
  fork_seen(3, &mine);
  int before = thread_count();
  pthread_t hosts[3];
  HostRun runs[3];
  for (int h = 0; h < 3; h++) {
    runs[h] = (HostRun){.test_team = &mine};
    ck_assert_int_eq(pthread_create(&hosts[h], NULL, host_main, &runs[h]), 0);
  }
  for (int h = 0; h < 3; h++) {
    ck_assert_int_eq(pthread_join(hosts[h], NULL), 0);
    ck_assert(runs[h].right);
  }
  /* Each host's workers were joined when it exited: the process is back to its threads. A task
   * may linger in /proc for a moment after its join. */
  struct timespec pause = {0, 1000000};
  for (int i = 0; i < 1000 && thread_count() != before; i++)
    nanosleep(&pause, NULL);
  ck_assert_int_eq(thread_count(), before);
}
END_TEST

START_TEST(forked_child_gets_new_workers) {
  Seen s;
  fork_seen(3, &s);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    fork_seen(3, &s);
    _exit(atomic_load(&s.members) == 3 && many_regions(1000) == 0 ? 0 : 1);
  }
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("jit_omp");
  TCase *tc = tcase_create("jit_omp");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, static_schedules_as_libomp);
  tcase_add_test(tc, num_threads_holds_for_one_fork);
  tcase_add_test(tc, fork_forwards_every_argument);
  tcase_add_test(tc, nested_fork_is_a_team_of_one);
  tcase_add_test(tc, barriers_hold_every_thread);
  tcase_add_test(tc, many_short_regions);
  tcase_add_test(tc, host_threads_have_their_own_teams);
  tcase_add_test(tc, forked_child_gets_new_workers);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
