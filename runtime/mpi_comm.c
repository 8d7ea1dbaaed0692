/*
 * mpi_comm.c — the communicator of a trainer built with `kiln build --mpi`: MPI_COMM_WORLD of
 * Open MPI (or any MPI) behind the RtComm interface. It is compiled into such trainers only, with
 * trainer_main.c under KILN_MPI; kiln itself and other trainers never link MPI.
 *
 * Every collective is a nonblocking MPI call waited on with a deadline, so that a process that
 * died or stopped answering ends the run on every process with a message within that time
 * instead of a hang, and a stop signal (mpirun forwards SIGINT and SIGTERM, and sends SIGTERM to
 * the survivors when a process fails) ends the wait at once.
 */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "runtime.h"

typedef struct MpiComm {
  MPI_Comm comm;
  int rank, size;
  double timeout;          /* seconds a collective may wait for the others */
  double busy;             /* seconds spent in collectives */
  MPI_Request pending[256]; /* started sums (start), waited for by finish_all */
  int npending;
} MpiComm;

static MpiComm world;

static MPI_Datatype mpi_type(int dtype) { return dtype == KILN_F64 ? MPI_DOUBLE : MPI_FLOAT; }

static int mpi_fail(MpiComm *c, int code, const char *what, char *err) {
  char text[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(code, text, &len);
  return rt_errf(err, "rank %d of %d: %s failed: %s", c->rank, c->size, what, text);
}

/* Waits for req, polling: MPI makes progress inside MPI_Test. */
static int wait_for(MpiComm *c, MPI_Request *req, const char *what, char *err) {
  double start = MPI_Wtime();
  for (;;) {
    int done = 0, code = MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (code != MPI_SUCCESS)
      return mpi_fail(c, code, what, err);
    if (done) {
      c->busy += MPI_Wtime() - start;
      return 0;
    }
    if (rt_stop_requested())
      return rt_errf(err, "rank %d of %d: stopped by a signal while waiting for the other "
                     "processes in %s (mpirun stops every process when one fails)", c->rank,
                     c->size, what);
    if (MPI_Wtime() - start > c->timeout)
      return rt_errf(err, "rank %d of %d: the other processes did not answer within %.0f s in "
                     "%s: one of them died or hangs (--mpi-timeout sets the wait)", c->rank,
                     c->size, c->timeout, what);
    /* MPI progresses inside MPI_Test: spin while a collective is likely to finish soon (the
     * others are a step away), then leave the core to them */
    if (MPI_Wtime() - start > 0.05) {
      struct timespec pause = {0, 20000};
      nanosleep(&pause, NULL);
    }
  }
}

static int comm_allreduce(void *self, void *data, int64_t n, int dtype, char *err) {
  MpiComm *c = self;
  size_t size = dtype == KILN_F64 ? 8 : 4;
  /* MPI counts are ints: a larger buffer goes in pieces */
  for (int64_t at = 0; at < n;) {
    int part = n - at > (1 << 30) ? 1 << 30 : (int)(n - at);
    MPI_Request req;
    int code = MPI_Iallreduce(MPI_IN_PLACE, (char *)data + (size_t)at * size, part,
                              mpi_type(dtype), MPI_SUM, c->comm, &req);
    if (code != MPI_SUCCESS)
      return mpi_fail(c, code, "MPI_Iallreduce", err);
    if (wait_for(c, &req, "an allreduce", err))
      return -1;
    at += part;
  }
  return 0;
}

static int comm_agree(void *self, uint64_t value, int *same, char *err) {
  MpiComm *c = self;
  uint64_t lo = value, hi = value;
  MPI_Request req[2];
  int code = MPI_Iallreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, c->comm, &req[0]);
  if (code == MPI_SUCCESS)
    code = MPI_Iallreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, c->comm, &req[1]);
  if (code != MPI_SUCCESS)
    return mpi_fail(c, code, "MPI_Iallreduce", err);
  if (wait_for(c, &req[0], "--verify", err) || wait_for(c, &req[1], "--verify", err))
    return -1;
  *same = lo == hi;
  return 0;
}

/* The program's allreduce ops cannot return an error: a failure ends every process. */
static void step_allreduce(void *self, void *data, int64_t n, int dtype) {
  char err[RT_ERR_LEN];
  if (comm_allreduce(self, data, n, dtype, err) == 0)
    return;
  rt_color_printf(stderr, "trainer: error: %s\n", err);
  fflush(stderr);
  MPI_Abort(((MpiComm *)self)->comm, rt_stop_requested() ? 128 + rt_stop_requested() : 1);
}

static double comm_seconds(void *self) { return ((MpiComm *)self)->busy; }

static void comm_progress(void *self) {
  MpiComm *c = self;
  int done;
  if (c->npending)
    MPI_Testall(c->npending, c->pending, &done, MPI_STATUSES_IGNORE);
}

static int comm_finish_all(void *self, char *err) {
  MpiComm *c = self;
  for (int i = 0; i < c->npending; i++)
    if (wait_for(c, &c->pending[i], "a gradient's allreduce", err))
      return -1;
  c->npending = 0;
  return 0;
}

static int comm_start(void *self, void *data, int64_t n, int dtype, char *err) {
  MpiComm *c = self;
  if (n > INT_MAX || c->npending == 256) /* too large or too many at once: summed now */
    return comm_allreduce(self, data, n, dtype, err);
  int code = MPI_Iallreduce(MPI_IN_PLACE, data, (int)n, mpi_type(dtype), MPI_SUM, c->comm,
                            &c->pending[c->npending]);
  if (code != MPI_SUCCESS)
    return mpi_fail(c, code, "MPI_Iallreduce", err);
  c->npending++;
  comm_progress(c);
  return 0;
}

int rt_mpi_start(int *argc, char ***argv, double timeout, RtComm *out, int *local_size,
                 char *err) {
  int code = MPI_Init(argc, argv);
  if (code != MPI_SUCCESS)
    return rt_errf(err, "MPI_Init failed (run the trainer with mpirun)");
  world.comm = MPI_COMM_WORLD;
  MPI_Comm_set_errhandler(world.comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(world.comm, &world.rank);
  MPI_Comm_size(world.comm, &world.size);
  world.timeout = timeout;
  /* processes on this machine, who share its cores */
  MPI_Comm local;
  *local_size = 1;
  if (MPI_Comm_split_type(world.comm, MPI_COMM_TYPE_SHARED, world.rank, MPI_INFO_NULL, &local) ==
      MPI_SUCCESS) {
    MPI_Comm_size(local, local_size);
    MPI_Comm_free(&local);
  }
  *out = (RtComm){world.rank, world.size, &world, comm_allreduce, comm_agree, step_allreduce,
                  comm_seconds, comm_start, comm_progress, comm_finish_all};
  return 0;
}

void rt_mpi_finish(int failed) {
  if (failed && world.size > 1)
    MPI_Abort(world.comm, failed); /* the others may wait in a collective: end them too */
  MPI_Finalize();
}
