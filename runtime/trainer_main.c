/*
 * trainer_main.c — main() of a standalone trainer: the generated step (which defines
 * kiln_program_desc) plus this file plus the rt_*.c support code is the whole program.
 *
 * Built with --mpi (KILN_MPI, and mpi_comm.c), it is one process of a data-parallel run under
 * mpirun: MPI starts after the options are read, each process takes its share of the cores, and
 * rank 0 alone prints and writes (rt_train).
 *
 * The backend is the compiled arena itself (rt_backend_arena.c): one 64-byte-aligned, zeroed
 * block, a tensor at `arena + offset`. Before anything runs, every tensor is checked to lie
 * inside the arena, so a planner bug shows up as a message rather than as memory corruption.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime.h"

extern const kiln_program kiln_program_desc;

static int dtype_size(int dtype) { return dtype == KILN_F64 ? 8 : 4; }

/* The arena backend trusts the offsets; a trainer checks them once, before anything runs. */
static int arena_check(const kiln_program *p, char *err) {
  if (p->arena_bytes < 0)
    return rt_errf(err, "program has a negative arena size");
  for (int i = 0; i < p->ntensors; i++) {
    const kiln_tensor *t = &p->tensors[i];
    int64_t bytes = rt_numel(t, p->batch) * dtype_size(t->dtype);
    if (t->offset < 0 || t->offset % 64 || t->offset > p->arena_bytes ||
        bytes > p->arena_bytes - t->offset)
      return rt_errf(err, "tensor '%s' (%lld bytes at offset %lld) does not fit the %lld-byte "
                     "arena", t->name, (long long)bytes, (long long)t->offset,
                     (long long)p->arena_bytes);
  }
  return 0;
}

int main(int argc, char **argv) {
  const kiln_program *prog = &kiln_program_desc;
  const char *name = argc > 0 && argv[0] ? argv[0] : "trainer";
  const char *slash = strrchr(name, '/');
  if (slash)
    name = slash + 1;

  /* Colour as kiln decides it: --color, else $NO_COLOR, else whether stderr is a terminal. */
  rt_color_set(rt_color_wanted(rt_color_scan(argc, argv), isatty(STDERR_FILENO),
                               getenv("NO_COLOR"), getenv("TERM")));
  RtOptions o;
  rt_options_default(&o);
  int rc = rt_options_parse(&o, argc, argv, name);
  if (rc)
    return rc > 0 ? 0 : 2; /* --help, or bad usage */
  char err[RT_ERR_LEN];
  int sharing = 1; /* processes on this machine */
#ifdef KILN_MPI
  RtComm comm;
  if (rt_mpi_start(&argc, &argv, o.mpi_timeout, &comm, &sharing, err)) {
    rt_color_printf(stderr, "%s: error: %s\n", name, err);
    return 1;
  }
  o.comm = &comm;
  static char ranked[256];
  if (comm.size > 1) { /* messages say which process they come from */
    snprintf(ranked, sizeof ranked, "%s[rank %d]", name, comm.rank);
    name = ranked;
    o.prog_name = ranked;
  }
#endif
  if (!o.threads) {
    o.threads = rt_available_cores() / sharing;
    if (o.threads < 1)
      o.threads = 1;
  }

  unsigned char *arena = NULL;
  rc = 1;
  if (rt_check_program(prog, err) || arena_check(prog, err)) {
    rt_color_printf(stderr, "%s: error: %s\n", name, err);
    goto out;
  }
  /* aligned_alloc wants a size that is a multiple of the alignment. */
  size_t bytes = ((size_t)prog->arena_bytes + 63) / 64 * 64;
  arena = aligned_alloc(64, bytes ? bytes : 64);
  if (!arena) {
    rt_color_printf(stderr, "%s: error: cannot allocate the %lld-byte arena\n", name,
            (long long)prog->arena_bytes);
    goto out;
  }
  memset(arena, 0, bytes);
  RtBackend be;
  rt_arena_backend(prog, arena, &be);
  rc = rt_train(&be, &o);
  rt_arena_backend_free(&be);
out:
  free(arena);
#ifdef KILN_MPI
  rt_mpi_finish(rc);
#endif
  return rc;
}
