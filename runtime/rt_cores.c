/*
 * rt_cores.c — how many processors this process may run on: a trainer's default thread count.
 * Its own file so that only the programs that ask (trainers, the kiln command) link it: the
 * library asks the machine nothing.
 */
#define _GNU_SOURCE /* sched_getaffinity */
#include <sched.h>
#include <unistd.h>

#include "runtime.h"

int rt_available_cores(void) {
#ifdef CPU_COUNT
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
#endif
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)(n > 256 ? 256 : n) : 1;
}
