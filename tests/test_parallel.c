/*
 * test_parallel.c — data-parallel training through the C API, without MPI (Check framework).
 *
 * P "processes" are P threads, each with its own trainer compiled with data_parallel, joined by
 * a communicator written here (a barrier and a shared buffer: the sum in rank order, the same
 * for every thread). Each runs kiln_grad_step on its share of one batch, the gradients are summed
 * over the threads as a host would with MPI_Allreduce, and each runs kiln_apply_step. In float64
 * the result must equal one trainer's kiln_train_step on the whole batch: batch-norm statistics
 * over every process, the loss's share per process, even and uneven splits. Then the same with
 * dropout: rank 0 draws what one process draws, other ranks draw masks of their own.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

/* ---- a communicator of threads ---- */

typedef struct Comm {
  pthread_barrier_t barrier;
  int size;
  double *slot[8];  /* each rank's buffer, for the others to read */
  int calls;        /* collectives run (by rank 0) */
} Comm;

typedef struct Rank {
  Comm *c;
  int rank;
} Rank;

/* Every rank's values summed in rank order, the same sum for each (so the result does not
 * depend on which thread adds). */
static void thread_allreduce(void *comm, void *data, int64_t n, int dtype) {
  Rank *r = comm;
  Comm *c = r->c;
  double *mine = malloc((size_t)n * sizeof *mine);
  for (int64_t i = 0; i < n; i++)
    mine[i] = dtype == KILN_F64 ? ((double *)data)[i] : ((float *)data)[i];
  c->slot[r->rank] = mine;
  pthread_barrier_wait(&c->barrier);
  for (int64_t i = 0; i < n; i++) {
    double s = 0;
    for (int k = 0; k < c->size; k++)
      s += c->slot[k][i];
    if (dtype == KILN_F64)
      ((double *)data)[i] = s;
    else
      ((float *)data)[i] = (float)s;
  }
  pthread_barrier_wait(&c->barrier);
  if (r->rank == 0)
    c->calls++;
  free(mine);
  pthread_barrier_wait(&c->barrier);
}

/* ---- the model ---- */

static const char *model_text =
    "model par\n"
    "input x: f64[B, 2, 5, 5]\n"
    "input y: i32[B]\n"
    "c = conv2d(x, out=3, kernel=3, pad=1)\n"
    "h = relu(batchnorm(c) as bn)\n"
    "%s"
    "logits = linear(flatten(h), out=4) as fc\n"
    "loss = cross_entropy(logits, y)\n"
    "minimize loss\n"
    "train {\n  optimizer = sgd(lr=0.1, momentum=0.9)\n  batch = 8\n  seed = 3\n}\n";

#define NX (2 * 5 * 5)

static kiln_trainer *compile(int data_parallel, int dropout) {
  char text[2048];
  snprintf(text, sizeof text, model_text, dropout ? "h = dropout(h, p=0.3) as drop\n" : "");
  kiln_model_options mo;
  kiln_model_options_init(&mo);
  mo.data_parallel = data_parallel;
  kiln_model *m = NULL;
  ck_assert_msg(kiln_model_open("par.kiln", text, &mo, &m) == KILN_OK, "%s", kiln_last_error());
  kiln_options o;
  kiln_options_init(&o);
  o.backend = KILN_BACKEND_CC;
  kiln_trainer *t = NULL;
  ck_assert_msg(kiln_compile(m, &o, &t) == KILN_OK, "%s", kiln_last_error());
  kiln_model_free(m);
  return t;
}

static double xs[8 * NX];
static int32_t ys[8];

static void make_batch(void) {
  uint64_t s = 12345;
  for (int i = 0; i < 8 * NX; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    xs[i] = (double)(s >> 11) / 9007199254740992.0 * 2 - 1;
  }
  for (int i = 0; i < 8; i++) ys[i] = (int32_t)((i * 7 + 3) % 4);
}

typedef struct Job {
  Rank r;
  kiln_trainer *t;
  int lo, hi;       /* this rank's examples */
  int steps;
  double loss;
  kiln_status status;
} Job;

static const char *grads[] = {"grad.bn.weight", "grad.bn.bias", "grad.c.weight", "grad.c.bias",
                              "grad.fc.weight", "grad.fc.bias"};

static void *run_rank(void *arg) {
  Job *j = arg;
  kiln_set_allreduce(j->t, thread_allreduce, &j->r);
  for (int s = 0; s < j->steps && j->status == KILN_OK; s++) {
    kiln_feed in[2] = {{"x", xs + j->lo * NX, (size_t)(j->hi - j->lo) * NX * sizeof(double)},
                       {"y", ys + j->lo, (size_t)(j->hi - j->lo) * sizeof(int32_t)}};
    j->status = kiln_grad_step(j->t, j->hi - j->lo, in, 2, &j->loss);
    /* the host's part: every gradient summed over the processes */
    for (size_t g = 0; g < sizeof grads / sizeof *grads && j->status == KILN_OK; g++) {
      kiln_tensor_info info;
      if (kiln_tensor_find(j->t, grads[g], &info) != KILN_OK)
        continue;
      size_t bytes = info.bytes;
      int64_t numel = (int64_t)(bytes / sizeof(double));
      double *v = malloc(bytes);
      kiln_get(j->t, grads[g], v, bytes);
      thread_allreduce(&j->r, v, numel, KILN_F64);
      kiln_set(j->t, grads[g], v, bytes);
      free(v);
    }
    if (j->status == KILN_OK)
      j->status = kiln_apply_step(j->t);
  }
  return NULL;
}

/* Trains `steps` steps split over `size` threads at the cut points, returns the trainers. */
static void run_split(int size, const int *cut, int steps, int dropout, kiln_trainer **ts,
                      double *loss) {
  Comm c = {.size = size};
  pthread_barrier_init(&c.barrier, NULL, (unsigned)size);
  Job jobs[8];
  pthread_t th[8];
  for (int r = 0; r < size; r++) {
    ts[r] = compile(1, dropout);
    jobs[r] = (Job){{&c, r}, ts[r], cut[r], cut[r + 1], steps, 0, KILN_OK};
    if (dropout) {
      double rank = r;
      ck_assert_int_eq(kiln_set(ts[r], "dp.rank", &rank, sizeof rank), KILN_OK);
    }
  }
  for (int r = 0; r < size; r++) pthread_create(&th[r], NULL, run_rank, &jobs[r]);
  for (int r = 0; r < size; r++) pthread_join(th[r], NULL);
  for (int r = 0; r < size; r++) ck_assert_msg(jobs[r].status == KILN_OK, "%s", kiln_last_error());
  for (int r = 1; r < size; r++) ck_assert(jobs[r].loss == jobs[0].loss); /* the global loss */
  ck_assert_int_gt(c.calls, 0);
  *loss = jobs[0].loss;
  pthread_barrier_destroy(&c.barrier);
}

static void expect_same(kiln_trainer *a, kiln_trainer *b, const char *name, double tol) {
  kiln_tensor_info info;
  ck_assert_int_eq(kiln_tensor_find(a, name, &info), KILN_OK);
  size_t bytes = info.bytes;
  int64_t numel = (int64_t)(bytes / sizeof(double));
  double *x = malloc(bytes), *y = malloc(bytes);
  kiln_get(a, name, x, bytes);
  kiln_get(b, name, y, bytes);
  for (int64_t i = 0; i < numel; i++)
    ck_assert_msg(fabs(x[i] - y[i]) <= tol * (1 + fabs(y[i])), "%s[%lld]: %.17g vs %.17g", name,
                  (long long)i, x[i], y[i]);
  free(x);
  free(y);
}

static const char *saved[] = {"c.weight", "c.bias", "bn.weight", "bn.bias", "bn.running_mean",
                              "bn.running_var", "fc.weight", "fc.bias"};

START_TEST(split_equals_one_process) {
  make_batch();
  /* one process, the whole batch, three train steps */
  kiln_trainer *one = compile(0, 0);
  kiln_feed in[2] = {{"x", xs, sizeof xs}, {"y", ys, sizeof ys}};
  double loss1 = 0;
  for (int s = 0; s < 3; s++) ck_assert_int_eq(kiln_train_step(one, 8, in, 2, &loss1), KILN_OK);
  static const int even2[] = {0, 4, 8}, uneven2[] = {0, 3, 8}, four[] = {0, 2, 3, 6, 8};
  struct {
    int size;
    const int *cut;
  } splits[] = {{2, even2}, {2, uneven2}, {4, four}};
  for (size_t k = 0; k < sizeof splits / sizeof *splits; k++) {
    kiln_trainer *ts[8];
    double loss;
    run_split(splits[k].size, splits[k].cut, 3, 0, ts, &loss);
    ck_assert_msg(fabs(loss - loss1) <= 1e-12, "split %zu: loss %.17g vs %.17g", k, loss, loss1);
    for (int r = 0; r < splits[k].size; r++)
      for (size_t i = 0; i < sizeof saved / sizeof *saved; i++) expect_same(ts[r], one, saved[i], 1e-12);
    for (int r = 0; r < splits[k].size; r++) kiln_trainer_free(ts[r]);
  }
  kiln_trainer_free(one);
}
END_TEST

/* Without a collective (one process), a data-parallel model is the model itself. */
START_TEST(one_process_without_collective) {
  make_batch();
  kiln_trainer *dp = compile(1, 0), *one = compile(0, 0);
  kiln_feed in[2] = {{"x", xs, sizeof xs}, {"y", ys, sizeof ys}};
  double a, b;
  for (int s = 0; s < 2; s++) {
    ck_assert_int_eq(kiln_train_step(dp, 8, in, 2, &a), KILN_OK);
    ck_assert_int_eq(kiln_train_step(one, 8, in, 2, &b), KILN_OK);
    ck_assert_msg(fabs(a - b) <= 1e-13, "%.17g vs %.17g", a, b);
  }
  for (size_t i = 0; i < sizeof saved / sizeof *saved; i++) expect_same(dp, one, saved[i], 1e-13);
  kiln_trainer_free(dp);
  kiln_trainer_free(one);
}
END_TEST

/* Dropout: each process draws its own masks (rank 0 those of one process), so two ranks do not
 * repeat each other's draw on their first examples. */
START_TEST(dropout_masks_per_process) {
  make_batch();
  /* the same examples on both ranks: equal masks would give equal gradients */
  static const int cut[] = {0, 4, 8};
  for (int i = 0; i < 4; i++) {
    memcpy(xs + (4 + i) * NX, xs + i * NX, NX * sizeof(double));
    ys[4 + i] = ys[i];
  }
  kiln_trainer *ts[8];
  double loss;
  run_split(2, cut, 1, 1, ts, &loss);
  ck_assert(isfinite(loss));
  /* rank 0 alone, one process, its four examples: the draw rank 0 made is one process's */
  kiln_trainer *one = compile(0, 1);
  kiln_feed in[2] = {{"x", xs, 4 * NX * sizeof(double)}, {"y", ys, 4 * sizeof(int32_t)}};
  double l0;
  ck_assert_int_eq(kiln_grad_step(one, 4, in, 2, &l0), KILN_OK);
  kiln_trainer *dp = compile(1, 1);
  double rank1 = 1, l1;
  ck_assert_int_eq(kiln_set(dp, "dp.rank", &rank1, sizeof rank1), KILN_OK);
  ck_assert_int_eq(kiln_grad_step(dp, 4, in, 2, &l1), KILN_OK);
  ck_assert_msg(l0 != l1, "rank 1 drew rank 0's masks: loss %.17g both", l0);
  kiln_trainer_free(dp);
  kiln_trainer_free(one);
  for (int r = 0; r < 2; r++) kiln_trainer_free(ts[r]);
}
END_TEST

static Suite *parallel_suite(void) {
  Suite *s = suite_create("parallel");
  TCase *tc = tcase_create("parallel");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, split_equals_one_process);
  tcase_add_test(tc, one_process_without_collective);
  tcase_add_test(tc, dropout_masks_per_process);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(parallel_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
