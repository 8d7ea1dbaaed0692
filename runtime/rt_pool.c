/*
 * rt_pool.c — the threads a generated step runs its tasks on (kiln_exec.run).
 *
 * A program splits its large kernels into tasks fixed by the shapes (kiln_abi.h); which thread
 * runs which task never changes a result, so tasks are handed out first come, first served: on a
 * busy machine the thread that has a core takes the tasks the other cannot, and a region waits at
 * most for one task in flight, never for a thread that has not been scheduled yet.
 *
 * The thread calling rt_pool_run is worker 0 and works too; threads - 1 workers of the pool's own
 * wait between regions. A region is published as a generation number: `claim` holds it in its
 * high half and the next unclaimed task in its low half, so claiming a task is one compare-and-swap
 * that also proves the region is still the one whose task, args and count were read (the caller
 * closes the word before it writes the next region's). The caller waits until the count of
 * finished tasks reaches the region's, then may publish the next.
 *
 * Waiting: spin, then sleep. In the MNIST CNN's step most waits end within microseconds and the
 * rest last milliseconds (the step's serial parts, which a spinning worker would sit through on a
 * core of its own); waking a sleeper takes ~40 µs here and milliseconds on a busy machine. So a
 * waiter spins for SPIN_NS, yielding the core every YIELD_NS (on a busy machine a spinner can
 * otherwise keep the very thread it waits for off the core), then sleeps on a condition
 * variable. OpenMP runtimes spin far longer by default (libgomp: ~300,000 rounds), which made a
 * two-thread trainer 7× slower than a one-thread one when the step had long serial parts.
 */
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime.h"

#define SPIN_NS 200000u
#define CLAIM_CLOSED 0xffffffffu /* the low half of a claim word whose region is being set up */
#define YIELD_NS 10000u

/* Threads sleeping on cond until a word changes; wake() finds them through count. */
typedef struct Sleepers {
  atomic_uint count;
  pthread_cond_t cond;
} Sleepers;

struct RtPool {
  int threads;              /* workers, the caller included */
  pthread_t *ids;           /* threads - 1 of them */
  pthread_mutex_t lock;     /* only for sleeping and waking */
  alignas(64) atomic_uint generation; /* bumped to publish a region, and to stop */
  atomic_bool stopping;
  Sleepers idle;            /* workers waiting for a region */
  alignas(64) _Atomic uint64_t claim; /* generation << 32 | next task */
  _Atomic(kiln_task_fn) task;
  _Atomic(void *) args;
  atomic_uint ntasks;
  alignas(64) atomic_uint done; /* tasks of this region finished */
  Sleepers caller;          /* the caller waiting for done */
};

typedef struct WorkerStart {
  RtPool *pool;
  int index;
} WorkerStart;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Whether *word is value (until_equal) or no longer value (!until_equal). */
static bool reached(atomic_uint *word, unsigned value, bool until_equal) {
  return (atomic_load(word) == value) == until_equal;
}

static bool spin_until(atomic_uint *word, unsigned value, bool until_equal) {
  uint64_t start = now_ns(), deadline = start + SPIN_NS, next_yield = start + YIELD_NS;
  for (unsigned i = 1;; i++) {
    if (reached(word, value, until_equal))
      return true;
    cpu_relax();
    if (i % 64 == 0) {
      uint64_t t = now_ns();
      if (t > deadline)
        return false;
      if (t > next_yield) {
        sched_yield();
        next_yield = t + YIELD_NS;
      }
    }
  }
}

/* Every change of a waited-for word is a seq_cst store followed by wake(); a sleeper counts
 * itself before its last look at the word. So either the sleeper sees the change or the waker
 * sees the sleeper, and then signals under the lock the sleeper holds until it waits. */
static void wait_until(RtPool *p, atomic_uint *word, unsigned value, bool until_equal,
                       Sleepers *s) {
  if (reached(word, value, until_equal) || spin_until(word, value, until_equal))
    return;
  pthread_mutex_lock(&p->lock);
  atomic_fetch_add(&s->count, 1);
  while (!reached(word, value, until_equal))
    pthread_cond_wait(&s->cond, &p->lock);
  atomic_fetch_sub(&s->count, 1);
  pthread_mutex_unlock(&p->lock);
}

static void wake(RtPool *p, Sleepers *s) {
  if (atomic_load(&s->count) == 0)
    return;
  pthread_mutex_lock(&p->lock);
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&p->lock);
}

/* Claims and runs tasks of region `generation` until none is left. task, args and ntasks are
 * read after a look at claim and used only when the claim's compare-and-swap proves the claim
 * word did not change in between: the caller closes it (a new generation, CLAIM_CLOSED) before
 * it writes the next region's task, args and count, and cannot get there before every task of
 * this region is claimed and finished. */
static void work(RtPool *p, unsigned generation, int worker) {
  for (;;) {
    uint64_t v = atomic_load(&p->claim);
    if ((unsigned)(v >> 32) != generation)
      return;
    kiln_task_fn task = atomic_load_explicit(&p->task, memory_order_relaxed);
    void *args = atomic_load_explicit(&p->args, memory_order_relaxed);
    unsigned n = atomic_load_explicit(&p->ntasks, memory_order_relaxed);
    unsigned next = (unsigned)v;
    if (next >= n)
      return;
    if (!atomic_compare_exchange_weak(&p->claim, &v, v + 1))
      continue;
    task(args, next, worker);
    if (atomic_fetch_add(&p->done, 1) + 1 == n)
      wake(p, &p->caller);
  }
}

/* A worker's stack is touched once, as deep as tasks go (the GEMM's edge tile and the kernels'
 * locals take a few KiB): otherwise whichever task first ran deepest on a worker took a page
 * fault inside a step, at random, since tasks go to whichever thread is free. */
enum { STACK_PREFAULT = 64 << 10 };

#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void prefault_stack(void) {
  volatile unsigned char page[STACK_PREFAULT];
  for (size_t i = 0; i < sizeof page; i += 1024)
    page[i] = 0;
}

static void *worker_main(void *arg) {
  prefault_stack();
  WorkerStart *start = arg;
  RtPool *p = start->pool;
  int index = start->index;
  free(start);
  unsigned seen = 0;
  for (;;) {
    wait_until(p, &p->generation, seen, false, &p->idle);
    seen = atomic_load(&p->generation);
    if (atomic_load(&p->stopping))
      return NULL;
    work(p, seen, index);
  }
}

RtPool *rt_pool_new(int threads, char *err) {
  if (threads < 1)
    threads = 1;
  RtPool *p = calloc(1, sizeof *p);
  if (!p || (threads > 1 && !(p->ids = calloc((size_t)threads - 1, sizeof *p->ids)))) {
    free(p);
    rt_errf(err, "out of memory for a pool of %d threads", threads);
    return NULL;
  }
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->idle.cond, NULL);
  pthread_cond_init(&p->caller.cond, NULL);
  p->threads = 1;
  for (int i = 1; i < threads; i++) {
    WorkerStart *start = malloc(sizeof *start);
    if (start)
      *start = (WorkerStart){p, i};
    if (!start || pthread_create(&p->ids[i - 1], NULL, worker_main, start) != 0) {
      free(start);
      rt_pool_free(p);
      rt_errf(err, "cannot start thread %d of %d", i + 1, threads);
      return NULL;
    }
    p->threads++;
  }
  return p;
}

void rt_pool_free(RtPool *p) {
  if (!p)
    return;
  atomic_store(&p->stopping, true);
  atomic_fetch_add(&p->generation, 1);
  pthread_mutex_lock(&p->lock);
  pthread_cond_broadcast(&p->idle.cond);
  pthread_mutex_unlock(&p->lock);
  for (int i = 0; i < p->threads - 1; i++)
    pthread_join(p->ids[i], NULL);
  pthread_cond_destroy(&p->idle.cond);
  pthread_cond_destroy(&p->caller.cond);
  pthread_mutex_destroy(&p->lock);
  free(p->ids);
  free(p);
}

int rt_pool_threads(const RtPool *p) { return p ? p->threads : 1; }

void rt_pool_run(void *pool, kiln_task_fn task, void *args, int64_t ntasks) {
  RtPool *p = pool;
  if (!p || p->threads == 1 || ntasks <= 1 || ntasks > INT32_MAX) {
    for (int64_t t = 0; t < ntasks; t++)
      task(args, t, 0);
    return;
  }
  unsigned n = (unsigned)ntasks, generation = atomic_load(&p->generation) + 1;
  /* Closed first: a worker still holding the last region's final claim word could otherwise
   * read this region's count and claim a task past the last region's end. */
  atomic_store(&p->claim, (uint64_t)generation << 32 | CLAIM_CLOSED);
  atomic_store(&p->done, 0);
  atomic_store_explicit(&p->task, task, memory_order_relaxed);
  atomic_store_explicit(&p->args, args, memory_order_relaxed);
  atomic_store_explicit(&p->ntasks, n, memory_order_relaxed);
  atomic_store(&p->claim, (uint64_t)generation << 32);
  atomic_store(&p->generation, generation);
  wake(p, &p->idle);
  work(p, generation, 0);
  wait_until(p, &p->done, n, true, &p->caller);
}

void rt_exec_init(kiln_exec *e, RtPool *p) {
  memset(e, 0, sizeof *e);
  e->run = rt_pool_run;
  e->pool = p;
}
