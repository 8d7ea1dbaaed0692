/*
 * sched.c — the schedule's options.
 */
#include <string.h>

#include "sched/sched.h"

void sched_default_options(SchedOptions *o) {
  memset(o, 0, sizeof *o);
  o->target = (Target){.vector_bytes = 32, .l1_bytes = 32 << 10, .l2_bytes = 1 << 20,
                       .l3_bytes = 32 << 20, .cores = 1};
  o->threads = 1;
  o->fuse = true;
  o->conv = CONV_AUTO;
}
