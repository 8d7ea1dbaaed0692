/*
 * jit_omp.c — the OpenMP runtime of JIT'd code: the few libomp entry points (`__kmpc_*`) that
 * Clang's -fopenmp emits for the generated `#pragma omp parallel for`, over threads of kiln's own.
 * jit.cpp defines those names in every program's JITDylib as these functions (jit_omp_symbols),
 * so JIT'd code never reaches a libomp or libgomp in the process, and kiln loads neither.
 *
 * Teams: every host thread that forks has workers of its own, made when a fork first needs them,
 * so two threads running programs never share a thread or wait for each other. They are stopped
 * and joined when that thread exits (a pthread key's destructor); at process exit they are
 * asleep or spinning and end with the process. A fork inside a region runs serially as a team of
 * one, as libomp does without nested parallelism. num_threads applies to the next fork only; a
 * fork without it is a team of one (libomp's default, a thread per core, would mean asking the
 * machine, which the library never does). libomp's global thread ids are ignored: a thread's
 * place in its team is thread-local.
 *
 * Waking: a fork publishes the job, then bumps each needed worker's word; the host then runs its
 * own share and waits for the count of running workers to reach zero. Every wait spins first
 * (the generated step forks dozens of times per step, microseconds apart), yielding the core now
 * and then, and then sleeps on a condition variable, so idle workers cost nothing for long.
 *
 * Scheduling: __kmpc_for_static_init_* give each thread the bounds libomp 14 gives it (static
 * with a chunk: chunks round robin; static: one block per thread, the first ones an iteration
 * longer, libomp's default "balanced" split; zero-trip loops and teams of one as libomp),
 * computed in the loop's own type with its wrapping arithmetic.
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"

/* How a thread waits: it spins for SPIN_NS, then sleeps. In the MNIST CNN's step most waits end
 * within 4 µs and nearly all within 65 µs, the rest last milliseconds (the step's serial parts,
 * which a spinning worker would sit through on a core of its own). Waking a sleeper takes 40 µs
 * here and milliseconds on a busy machine, and a wait that outlasts the spin delays the next, so
 * the spin outlasts a wake-up. For its first YIELD_NS a spin only pauses, then it yields the core
 * every YIELD_NS: on a busy machine a spinner can otherwise keep the very thread it waits for off
 * the core. (Measured on the CNN's step, on two busy cores: pausing only, the step took 50%
 * longer than with libomp, most waits ending asleep; yielding from the first microseconds on, up
 * to 25% longer; as here, no longer than with libomp.) */
#define SPIN_NS 200000u
#define YIELD_NS 10000u

const int32_t jit_omp_max_fork_args = JIT_OMP_MAX_ARGS;

/* Threads sleeping on cond until some word changes; wake() finds them through count. */
typedef struct Sleepers {
  atomic_uint count;
  pthread_cond_t cond;
} Sleepers;

/* A parallel region: what every member of the team runs. */
typedef struct Job {
  JitOmpMicrotask fn;
  int32_t argc, nth;
  void *args[JIT_OMP_MAX_ARGS];
} Job;

struct Team;

/* Its own cache line: the worker spins on go. */
typedef struct Worker {
  alignas(64) atomic_uint go; /* bumped by the host for each region this worker is to join */
  Sleepers sleepers;
  struct Team *team;
  int32_t tid;
  pthread_t thread;
} Worker;

/* A host thread's workers; the host is thread 0 of every team it forks. */
typedef struct Team {
  pthread_mutex_t lock; /* only for sleeping and waking */
  Job job;              /* written by the host before it bumps the workers' go */
  int32_t nworkers;
  Worker *workers[JIT_OMP_MAX_THREADS - 1];
  atomic_bool stopping;
  alignas(64) atomic_uint running; /* workers still in the current region */
  Sleepers host;
  alignas(64) atomic_uint barrier_arrived;
  atomic_uint barrier_generation;
  Sleepers barrier;
} Team;

/* This thread's place in the region it runs (a team of one outside regions). */
typedef struct Member {
  Team *team; /* NULL in a team of one */
  int32_t tid, nth;
  int depth;  /* regions this thread is in */
} Member;

static _Thread_local Member self = {NULL, 0, 1, 0};
static _Thread_local int32_t next_team_size; /* push_num_threads: for the next fork only */
static _Thread_local Team *own_team;         /* the workers of this (host) thread */

static pthread_once_t team_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t team_key; /* its destructor stops a host thread's workers when it exits */
static bool team_key_made;

/* ---- waiting ---- */

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
static void wait_until(atomic_uint *word, unsigned value, bool until_equal, Sleepers *s,
                       pthread_mutex_t *lock) {
  if (reached(word, value, until_equal) || spin_until(word, value, until_equal))
    return;
  pthread_mutex_lock(lock);
  atomic_fetch_add(&s->count, 1);
  while (!reached(word, value, until_equal))
    pthread_cond_wait(&s->cond, lock);
  atomic_fetch_sub(&s->count, 1);
  pthread_mutex_unlock(lock);
}

static void wake(Sleepers *s, pthread_mutex_t *lock) {
  if (atomic_load(&s->count) == 0)
    return;
  pthread_mutex_lock(lock);
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(lock);
}

/* ---- regions ---- */

/* Calls fn(&gtid, &btid, args...) with its own arity, as libomp's __kmp_invoke_microtask does. */
static void invoke(JitOmpMicrotask fn, int32_t tid, int32_t argc, void *const *a) {
  int32_t gtid = tid, btid = tid;
  int32_t *g = &gtid, *b = &btid;
  typedef void (*Any)(void);
#define P void *
  switch (argc) {
  case 0: ((void (*)(int32_t *, int32_t *))(Any)fn)(g, b); break;
  case 1: ((void (*)(int32_t *, int32_t *, P))(Any)fn)(g, b, a[0]); break;
  case 2: ((void (*)(int32_t *, int32_t *, P, P))(Any)fn)(g, b, a[0], a[1]); break;
  case 3: ((void (*)(int32_t *, int32_t *, P, P, P))(Any)fn)(g, b, a[0], a[1], a[2]); break;
  case 4:
    ((void (*)(int32_t *, int32_t *, P, P, P, P))(Any)fn)(g, b, a[0], a[1], a[2], a[3]);
    break;
  case 5:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P))(Any)fn)(g, b, a[0], a[1], a[2], a[3], a[4]);
    break;
  case 6:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P))(Any)fn)(g, b, a[0], a[1], a[2], a[3],
                                                               a[4], a[5]);
    break;
  case 7:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P))(Any)fn)(g, b, a[0], a[1], a[2], a[3],
                                                                  a[4], a[5], a[6]);
    break;
  case 8:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P, P))(Any)fn)(g, b, a[0], a[1], a[2],
                                                                     a[3], a[4], a[5], a[6], a[7]);
    break;
  case 9:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P, P, P))(Any)fn)(
        g, b, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
    break;
  case 10:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P, P, P, P))(Any)fn)(
        g, b, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9]);
    break;
  case 11:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P, P, P, P, P))(Any)fn)(
        g, b, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10]);
    break;
  case 12:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P, P, P, P, P, P))(Any)fn)(
        g, b, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11]);
    break;
  case 13:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P, P, P, P, P, P, P))(Any)fn)(
        g, b, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12]);
    break;
  case 14:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P, P, P, P, P, P, P, P))(Any)fn)(
        g, b, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12],
        a[13]);
    break;
  case 15:
    ((void (*)(int32_t *, int32_t *, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P))(Any)fn)(
        g, b, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12],
        a[13], a[14]);
    break;
  }
#undef P
}

/* Runs the job as thread tid of a team of nth, then returns the thread to where it was. */
static void run_as_member(Team *team, int32_t tid, int32_t nth, const Job *job) {
  Member outer = self;
  self = (Member){team, tid, nth, outer.depth + 1};
  invoke(job->fn, tid, job->argc, job->args);
  self = outer;
}

static void *worker_main(void *arg) {
  Worker *w = arg;
  Team *team = w->team;
  unsigned seen = 0;
  for (;;) {
    wait_until(&w->go, seen, false, &w->sleepers, &team->lock);
    seen = atomic_load(&w->go);
    if (atomic_load(&team->stopping))
      return NULL;
    run_as_member(team, w->tid, team->job.nth, &team->job);
    if (atomic_fetch_sub(&team->running, 1) == 1)
      wake(&team->host, &team->lock);
  }
}

/* ---- teams ---- */

static void free_team(Team *t) {
  for (int32_t i = 0; i < t->nworkers; i++)
    free(t->workers[i]);
  free(t);
}

/* The key's destructor: the host thread exits, so do its workers. */
static void stop_team(void *arg) {
  Team *t = arg;
  atomic_store(&t->stopping, true);
  for (int32_t i = 0; i < t->nworkers; i++) {
    atomic_fetch_add(&t->workers[i]->go, 1);
    wake(&t->workers[i]->sleepers, &t->lock);
  }
  for (int32_t i = 0; i < t->nworkers; i++) {
    pthread_join(t->workers[i]->thread, NULL);
    pthread_cond_destroy(&t->workers[i]->sleepers.cond);
  }
  pthread_cond_destroy(&t->barrier.cond);
  pthread_cond_destroy(&t->host.cond);
  pthread_mutex_destroy(&t->lock);
  if (own_team == t)
    own_team = NULL;
  free_team(t);
}

/* A child of fork() has none of the workers: it forgets them (their memory only; their locks may
 * be in any state) and makes new ones when it forks a region. */
static void forget_team_in_child(void) {
  if (!own_team)
    return;
  free_team(own_team);
  own_team = NULL;
  pthread_setspecific(team_key, NULL);
}

static void make_team_key(void) {
  team_key_made = pthread_key_create(&team_key, stop_team) == 0 &&
                  pthread_atfork(NULL, NULL, forget_team_in_child) == 0;
}

static Team *new_team(void) {
  size_t bytes = (sizeof(Team) + 63) / 64 * 64;
  Team *t = aligned_alloc(64, bytes);
  if (!t)
    return NULL;
  memset(t, 0, bytes);
  if (pthread_mutex_init(&t->lock, NULL) != 0)
    goto no_lock;
  if (pthread_cond_init(&t->host.cond, NULL) != 0)
    goto no_host;
  if (pthread_cond_init(&t->barrier.cond, NULL) != 0)
    goto no_barrier;
  if (pthread_setspecific(team_key, t) != 0)
    goto no_key;
  atomic_init(&t->stopping, false);
  atomic_init(&t->running, 0);
  atomic_init(&t->host.count, 0);
  atomic_init(&t->barrier_arrived, 0);
  atomic_init(&t->barrier_generation, 0);
  atomic_init(&t->barrier.count, 0);
  return t;
no_key:
  pthread_cond_destroy(&t->barrier.cond);
no_barrier:
  pthread_cond_destroy(&t->host.cond);
no_host:
  pthread_mutex_destroy(&t->lock);
no_lock:
  free(t);
  return NULL;
}

static bool add_worker(Team *t) {
  Worker *w = aligned_alloc(64, sizeof *w);
  if (!w)
    return false;
  memset(w, 0, sizeof *w);
  if (pthread_cond_init(&w->sleepers.cond, NULL) != 0) {
    free(w);
    return false;
  }
  atomic_init(&w->go, 0);
  atomic_init(&w->sleepers.count, 0);
  w->team = t;
  w->tid = t->nworkers + 1;
  /* Workers take no asynchronous signals: the host's handlers run on the host's threads. Faults
   * stay deliverable, so crash handlers (the sanitizers') still report them. */
  sigset_t blocked, old;
  sigfillset(&blocked);
  int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT};
  for (size_t i = 0; i < sizeof faults / sizeof *faults; i++)
    sigdelset(&blocked, faults[i]);
  pthread_sigmask(SIG_SETMASK, &blocked, &old);
  int e = pthread_create(&w->thread, NULL, worker_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e != 0) {
    pthread_cond_destroy(&w->sleepers.cond);
    free(w);
    return false;
  }
  t->workers[t->nworkers++] = w;
  return true;
}

/* The calling host thread's team with up to want members (its workers made as needed); how many
 * it has, 1 (and no team) when it can have no workers. */
static int32_t host_team(int32_t want, Team **out) {
  if (want > JIT_OMP_MAX_THREADS)
    want = JIT_OMP_MAX_THREADS;
  pthread_once(&team_key_once, make_team_key);
  if (!team_key_made)
    return 1;
  if (!own_team && !(own_team = new_team()))
    return 1;
  while (own_team->nworkers < want - 1 && add_worker(own_team))
    ;
  *out = own_team;
  return own_team->nworkers + 1 < want ? own_team->nworkers + 1 : want;
}

void jit_omp_fork_call(void *loc, int32_t argc, JitOmpMicrotask fn, ...) {
  (void)loc;
  if (argc < 0 || argc > JIT_OMP_MAX_ARGS)
    abort(); /* unreachable from JIT'd code: jit.cpp refuses such regions when it compiles */
  Job job = {.fn = fn, .argc = argc, .nth = 1};
  va_list ap;
  va_start(ap, fn);
  for (int32_t i = 0; i < argc; i++)
    job.args[i] = va_arg(ap, void *);
  va_end(ap);
  /* Without num_threads (which the generated code always gives) a team of one: the library asks
   * the machine nothing, not even its cores. */
  int32_t want = next_team_size;
  next_team_size = 0;
  Team *team = NULL;
  if (self.depth == 0 && want > 1)
    job.nth = host_team(want, &team);
  if (job.nth == 1) {
    run_as_member(NULL, 0, 1, &job);
    return;
  }
  team->job = job;
  atomic_store(&team->running, (unsigned)job.nth - 1);
  for (int32_t i = 0; i < job.nth - 1; i++) {
    atomic_fetch_add(&team->workers[i]->go, 1);
    wake(&team->workers[i]->sleepers, &team->lock);
  }
  run_as_member(team, 0, job.nth, &team->job);
  wait_until(&team->running, 0, true, &team->host, &team->lock);
}

void jit_omp_push_num_threads(void *loc, int32_t gtid, int32_t num_threads) {
  (void)loc, (void)gtid;
  next_team_size = num_threads;
}

int32_t jit_omp_global_thread_num(void *loc) {
  (void)loc;
  return self.tid;
}

void jit_omp_barrier(void *loc, int32_t gtid) {
  (void)loc, (void)gtid;
  Team *t = self.team;
  if (!t)
    return;
  /* Whoever arrives last opens the barrier for the others; arrivals are reset before it opens,
   * so a thread already at the next barrier counts there. */
  unsigned generation = atomic_load(&t->barrier_generation);
  if (atomic_fetch_add(&t->barrier_arrived, 1) == (unsigned)self.nth - 1) {
    atomic_store(&t->barrier_arrived, 0);
    atomic_store(&t->barrier_generation, generation + 1);
    wake(&t->barrier, &t->lock);
  } else {
    wait_until(&t->barrier_generation, generation, false, &t->barrier, &t->lock);
  }
}

/* ---- static schedules ---- */

/* libomp's kmp_sch_static_chunked; its monotonic and nonmonotonic modifier bits are ignored. */
enum { SCHED_STATIC_CHUNKED = 33, SCHED_MODIFIERS = (1 << 29) | (1 << 30) };

/* A loop variable's type; values of it travel as their bits in a uint64_t. */
typedef struct LoopType {
  unsigned bits;
  bool is_signed;
} LoopType;

static const LoopType loop_i32 = {32, true}, loop_u32 = {32, false}, loop_i64 = {64, true},
                      loop_u64 = {64, false};

static uint64_t wrap(LoopType t, uint64_t v) { return t.bits == 64 ? v : v & UINT32_MAX; }

/* a < b as values of t: flipping the sign bit maps signed order onto unsigned order. */
static bool less(LoopType t, uint64_t a, uint64_t b) {
  uint64_t sign = t.is_signed ? (uint64_t)1 << (t.bits - 1) : 0;
  return (wrap(t, a) ^ sign) < (wrap(t, b) ^ sign);
}

/* libomp's __kmp_for_static_init for thread tid of nth, schedule static with chunk (33) or, for
 * every other kind, static (34) split as libomp splits it by default (KMP_SCHEDULE's
 * "static,balanced"): a partition of the iterations either way. incr and chunk are the loop's
 * signed type, sign-extended. */
static void static_bounds(LoopType t, uint32_t nth, uint32_t tid, int32_t schedule,
                          int32_t *plast, uint64_t *plower, uint64_t *pupper, uint64_t *pstride,
                          int64_t incr, int64_t chunk) {
  uint64_t lower = wrap(t, *plower), upper = wrap(t, *pupper), step = (uint64_t)incr;
  uint64_t next = incr > 0 ? 1 : UINT64_MAX; /* one step past the end, in the loop's direction */
  bool up = incr > 0, last;
  if (up ? less(t, upper, lower) : less(t, lower, upper)) { /* no iterations: bounds kept */
    last = false;
    *pstride = step;
  } else if (nth == 1) { /* a team of one runs them all */
    last = true;
    *pstride = up ? upper - lower + 1 : -(lower - upper + 1);
  } else {
    uint64_t trip = incr == 1    ? upper - lower + 1
                    : incr == -1 ? lower - upper + 1
                    : up         ? wrap(t, upper - lower) / step + 1
                                 : wrap(t, lower - upper) / wrap(t, -step) + 1;
    trip = wrap(t, trip);
    if ((schedule & ~SCHED_MODIFIERS) == SCHED_STATIC_CHUNKED) {
      uint64_t size = chunk < 1 ? 1 : (uint64_t)chunk;
      if (size > trip)
        size = trip;
      if (size == 0) /* 2^bits iterations, a trip count of 0 (libomp divides by zero) */
        size = 1;
      uint64_t chunks = trip / size + (trip % size ? 1 : 0), span = size * step;
      if (chunks < nth && tid >= chunks) {
        lower = upper + next;
      } else {
        lower += span * tid;
        upper = lower + span - step;
      }
      *pstride = span * (chunks < nth ? chunks : nth);
      last = tid == wrap(t, chunks - 1) % nth;
    } else if (trip < nth) {
      if (tid < trip)
        upper = lower = lower + tid * step;
      else
        lower = upper + next;
      last = tid == wrap(t, trip - 1);
      *pstride = trip;
    } else { /* the first trip % nth threads take one iteration more */
      uint64_t size = trip / nth, extras = trip % nth;
      lower += step * (tid * size + (tid < extras ? tid : extras));
      upper = lower + size * step - (tid < extras ? 0 : step);
      last = tid == nth - 1;
      *pstride = trip;
    }
  }
  *plower = wrap(t, lower);
  *pupper = wrap(t, upper);
  *pstride = wrap(t, *pstride);
  if (plast)
    *plast = last;
}

/* The ABI's four loop types: values converted to their bits and back. */
#define STATIC_INIT(suffix, T, ST, type)                                                          \
  void jit_omp_for_static_init_##suffix(void *loc, int32_t gtid, int32_t schedule,               \
                                        int32_t *plast, T *plower, T *pupper, ST *pstride,       \
                                        ST incr, ST chunk) {                                     \
    (void)loc, (void)gtid;                                                                        \
    uint64_t lower = (uint64_t)*plower, upper = (uint64_t)*pupper, stride;                       \
    static_bounds(type, (uint32_t)self.nth, (uint32_t)self.tid, schedule, plast, &lower, &upper, \
                  &stride, incr, chunk);                                                          \
    *plower = (T)lower;                                                                           \
    *pupper = (T)upper;                                                                           \
    *pstride = (ST)stride;                                                                        \
  }
STATIC_INIT(4, int32_t, int32_t, loop_i32)
STATIC_INIT(4u, uint32_t, int32_t, loop_u32)
STATIC_INIT(8, int64_t, int64_t, loop_i64)
STATIC_INIT(8u, uint64_t, int64_t, loop_u64)
#undef STATIC_INIT

void jit_omp_for_static_fini(void *loc, int32_t gtid) { (void)loc, (void)gtid; }

#define ENTRY(name) {"__kmpc_" #name, (void (*)(void))jit_omp_##name}
const JitOmpSymbol jit_omp_symbols[] = {
    ENTRY(fork_call),         ENTRY(push_num_threads),  ENTRY(global_thread_num),
    ENTRY(for_static_init_4), ENTRY(for_static_init_4u), ENTRY(for_static_init_8),
    ENTRY(for_static_init_8u), ENTRY(for_static_fini),  ENTRY(barrier),
    {NULL, NULL}};
#undef ENTRY
