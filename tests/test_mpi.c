/*
 * test_mpi.c — data-parallel training under Open MPI's mpirun (Check framework).
 *
 * A small CNN with batch norm is built with `kiln build --mpi` and trained on a slice of
 * Fashion-MNIST by 1, 2 and 4 processes (mpirun --oversubscribe): every process must hold the
 * same parameters after every epoch (--verify), the loss curve must be the single process's
 * within the documented tolerance, a run must repeat itself bit for bit, a process that is
 * killed or stops answering must end the run on every process with a message within a bounded
 * time, and the last checkpoint must resume. Skipped (exit 77) where mpirun or mpicc is missing.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "process_harness.h"

static const char *tpath(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *tpath(const char *fmt, ...) {
  static char bufs[4][512];
  static int next;
  char *p = bufs[next++ % 4], name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  snprintf(p, 512, "%s/%s", tmpdir, name);
  return p;
}

#define KILN KILN_BINARY_DIR "/kiln"
#define DATA "/usr/share/datasets/fashion-mnist"

static const char *model =
    "model small\n"
    "input image: f32[B, 1, 28, 28] from images / 255\n"
    "input label: i32[B] from labels\n"
    "c1 = conv2d(image, out=4, kernel=3, stride=2)\n"
    "h = maxpool2d(relu(batchnorm(c1) as bn1), kernel=2)\n"
    "h = relu(linear(flatten(h), out=128) as fc1)\n"
    "logits = linear(h, out=10) as fc\n"
    "loss = cross_entropy(logits, label)\n"
    "output logits\n"
    "minimize loss\n"
    "train {\n  optimizer = adam(lr=3e-3)\n  batch = 32\n  epochs = 2\n}\n";

static char mpirun[256];

/* mpirun with the flags a test machine needs (root, more processes than cores). */
static void init_mpirun(void) {
  snprintf(mpirun, sizeof mpirun, "mpirun --oversubscribe%s -np",
           geteuid() == 0 ? " --allow-run-as-root" : "");
}

/* The model built into tmpdir/tr with --mpi. */
static void build(void) {
  char cmd[1024], *err = NULL;
  FILE *f = fopen(tpath("small.kiln"), "w");
  ck_assert_ptr_nonnull(f);
  fputs(model, f);
  fclose(f);
  snprintf(cmd, sizeof cmd, KILN " build %s --mpi -o %s", tpath("small.kiln"), tpath("tr"));
  ck_assert_msg(run(cmd, NULL, &err) == 0, "%s", err);
  free(err);
}

/* Per epoch: train_loss, test_loss and test_accuracy of a metrics CSV. */
static int read_curve(const char *path, double curve[][3], int most) {
  FILE *f = fopen(path, "r");
  ck_assert_msg(f != NULL, "no %s", path);
  char line[4096];
  int n = 0;
  ck_assert_ptr_nonnull(fgets(line, sizeof line, f)); /* header */
  while (n < most && fgets(line, sizeof line, f)) {
    int epoch;
    ck_assert_int_eq(sscanf(line, "%d,%lf,%lf,%lf", &epoch, &curve[n][0], &curve[n][1],
                            &curve[n][2]), 4);
    ck_assert_int_eq(epoch, n + 1);
    n++;
  }
  fclose(f);
  return n;
}

static const char *flags = "--data " DATA " --limit-train 640 --limit-test 320";

START_TEST(processes_agree_and_match_one) {
  build();
  char cmd[2048], *out = NULL, *err = NULL;
  snprintf(cmd, sizeof cmd, "cd %s && ./tr %s --metrics one.csv --save one.safetensors", tmpdir,
           flags);
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s", err);
  free(out), free(err);
  double one[4][3], many[4][3];
  ck_assert_int_eq(read_curve(tpath("one.csv"), one, 4), 2);
  static const int sizes[] = {1, 2, 4};
  for (int k = 0; k < 3; k++) {
    int n = sizes[k];
    snprintf(cmd, sizeof cmd, "cd %s && %s %d ./tr %s --verify --metrics n%d.csv --save n%d.safetensors",
             tmpdir, mpirun, n, flags, n, n);
    ck_assert_msg(run(cmd, &out, &err) == 0, "np %d: %s", n, err);
    /* every process holds the same parameters after each epoch; only rank 0 reports */
    for (int e = 1; e <= 2; e++) {
      char want[128];
      snprintf(want, sizeof want, "verify: epoch %d: the %d processes hold the same parameters",
               e, n);
      ck_assert_msg(strstr(err, want), "np %d: no '%s' in:\n%s", n, want, err);
    }
    ck_assert_msg(strstr(out, "final epochs=2") && !strstr(strstr(out, "final") + 1, "final"),
                  "np %d: one summary line expected:\n%s", n, out);
    /* fc1's weight gradient (128 x 144 floats, past the 64 KiB threshold) is summed while the
     * rest of the backward pass runs */
    ck_assert_msg(strstr(err, "1 of 8 gradients summed while the backward pass ran"), "np %d:\n%s",
                  n, err);
    free(out), free(err);
    char csv[64];
    snprintf(csv, sizeof csv, "n%d.csv", n);
    ck_assert_int_eq(read_curve(tpath("%s", csv), many, 4), 2);
    /* the same examples in every global batch: the same curve up to the order of sums
     * (docs/distributed.md: 1e-4; measured ~1e-6) */
    for (int e = 0; e < 2; e++)
      for (int c = 0; c < 3; c++)
        ck_assert_msg(fabs(many[e][c] - one[e][c]) <= 1e-4 * (1 + fabs(one[e][c])),
                      "np %d epoch %d column %d: %.6f vs one process %.6f", n, e + 1, c,
                      many[e][c], one[e][c]);
  }
  /* one process under mpirun takes the split path and is exactly the plain run */
  snprintf(cmd, sizeof cmd, "cmp -s %s %s", tpath("n1.safetensors"), tpath("one.safetensors"));
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* The data-parallel step in one process: generated code against the reference (the allreduce
 * nodes are the identity there), and every op's rules against finite differences. */
START_TEST(data_parallel_step_checks) {
  build();
  char cmd[1024], *out = NULL, *err = NULL;
  snprintf(cmd, sizeof cmd, KILN " check %s --mpi --batch 8", tpath("small.kiln"));
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s%s", out, err);
  ck_assert_ptr_nonnull(strstr(out, "check: OK"));
  free(out), free(err);
  snprintf(cmd, sizeof cmd, KILN " gradcheck %s --mpi --batch 4", tpath("small.kiln"));
  ck_assert_msg(run(cmd, &out, &err) == 0, "%s%s", out, err);
  ck_assert_ptr_nonnull(strstr(out, "gradcheck: OK"));
  free(out), free(err);
}
END_TEST

START_TEST(runs_repeat_bit_for_bit) {
  build();
  char cmd[2048], *err = NULL;
  for (int i = 0; i < 2; i++) {
    snprintf(cmd, sizeof cmd, "cd %s && %s 2 ./tr %s --quiet --save run%d.safetensors", tmpdir,
             mpirun, flags, i);
    ck_assert_msg(run(cmd, NULL, &err) == 0, "%s", err);
    free(err);
  }
  snprintf(cmd, sizeof cmd, "cmp -s %s %s", tpath("run0.safetensors"), tpath("run1.safetensors"));
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* mpirun in the background, its output to files; its pid. */
static pid_t start_background(const char *args) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cd %s && exec %s 2 ./tr %s >bg.out 2>bg.err", tmpdir, mpirun, args);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  return pid;
}

/* The pid of the trainer process with this rank, or -1. */
static pid_t rank_pid(int rank) {
  char cmd[256], *out = NULL;
  snprintf(cmd, sizeof cmd, "for p in $(pgrep -x tr); do tr '\\0' '\\n' </proc/$p/environ | "
           "grep -qx OMPI_COMM_WORLD_RANK=%d && echo $p; done", rank);
  run(cmd, &out, NULL);
  pid_t pid = atoi(out) > 0 ? (pid_t)atoi(out) : -1;
  free(out);
  return pid;
}

static void pause_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Waits for pid at most `seconds`; its exit status, or -1 if it is still running. */
static int wait_at_most(pid_t pid, double seconds) {
  double until = now() + seconds;
  while (now() < until) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid)
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    pause_ms(100);
  }
  kill(-pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  char *s = calloc(1 << 20, 1);
  size_t n = fread(s, 1, (1 << 20) - 1, f);
  s[n] = 0;
  fclose(f);
  return s;
}

/* A process killed mid-run ends the others within seconds, with a message; the newest
 * checkpoint is whole and resumes (under mpirun again). Then a process that stops answering
 * (SIGSTOP) ends the run after --mpi-timeout. */
START_TEST(a_failed_process_stops_the_others) {
  build();
  char args[1024];
  snprintf(args, sizeof args, "--data " DATA " --limit-train 6400 --limit-test 320 --epochs 50 "
           "--checkpoint-every 20 --checkpoint-dir ck --quiet");
  pid_t mp = start_background(args);
  /* once a checkpoint is written, kill rank 1 */
  pid_t victim = -1;
  for (double until = now() + 60; now() < until && victim < 0; pause_ms(200)) {
    char *out = NULL;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s/ck 2>/dev/null | grep -c safetensors", tmpdir);
    run(cmd, &out, NULL);
    if (atoi(out) > 0)
      victim = rank_pid(1);
    free(out);
  }
  ck_assert_msg(victim > 0, "no checkpoint or no rank 1 within 60 s");
  ck_assert_int_eq(kill(victim, SIGKILL), 0);
  double t0 = now();
  int st = wait_at_most(mp, 60);
  ck_assert_msg(st > 0, "mpirun: status %d (still running 60 s after rank 1 was killed?)", st);
  ck_assert_msg(now() - t0 < 30, "the run took %.1f s to stop", now() - t0);
  char *err = slurp(tpath("bg.err"));
  ck_assert_msg(strstr(err, "tr[rank 0]: error: rank 0 of 2: stopped by a signal while waiting "
                       "for the other processes") ||
                    strstr(err, "exited on signal 9"),
                "no message saying why:\n%s", err);
  free(err);
  /* the newest checkpoint resumes, two processes again, to the end of the next epoch */
  char cmd[2048], *out = NULL, *rerr = NULL;
  snprintf(cmd, sizeof cmd, "cd %s && ls -t ck/*.safetensors | head -1", tmpdir);
  run(cmd, &out, NULL);
  out[strcspn(out, "\n")] = 0;
  char ckpt[512];
  snprintf(ckpt, sizeof ckpt, "%s", out);
  free(out);
  int epoch = 0;
  ck_assert_int_eq(sscanf(strstr(ckpt, "ckpt-e"), "ckpt-e%d", &epoch), 1);
  snprintf(cmd, sizeof cmd, "cd %s && %s 2 ./tr --data " DATA " --limit-train 6400 "
           "--limit-test 320 --epochs %d --resume %s --quiet", tmpdir, mpirun, epoch + 1, ckpt);
  ck_assert_msg(run(cmd, &out, &rerr) == 0, "resume %s: %s", ckpt, rerr);
  char want[64];
  snprintf(want, sizeof want, "final epochs=%d ", epoch + 1);
  ck_assert_msg(strstr(out, want), "resume: %s", out);
  free(out), free(rerr);

  /* a process that stops answering: the others give up after --mpi-timeout */
  snprintf(args, sizeof args, "--data " DATA " --limit-train 6400 --limit-test 320 --epochs 200 "
           "--mpi-timeout 3 --quiet");
  mp = start_background(args);
  victim = -1;
  for (double until = now() + 60; now() < until && victim < 0; pause_ms(200))
    victim = rank_pid(1);
  ck_assert_int_gt(victim, 0);
  pause_ms(500);
  ck_assert_int_eq(kill(victim, SIGSTOP), 0);
  t0 = now();
  st = wait_at_most(mp, 60);
  kill(victim, SIGKILL);
  ck_assert_msg(st > 0, "mpirun: status %d", st);
  ck_assert_msg(now() - t0 < 30, "the run took %.1f s to stop", now() - t0);
  err = slurp(tpath("bg.err"));
  ck_assert_msg(strstr(err, "the other processes did not answer within 3 s"), "%s", err);
  free(err);
}
END_TEST

static bool have(const char *tool) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", tool);
  return system(cmd) == 0;
}

int main(void) {
  if (!have("mpirun") || !have("mpicc") || access(DATA, R_OK)) {
    printf("test_mpi: skipped (needs Open MPI's mpirun and mpicc, and %s)\n", DATA);
    return 77;
  }
  init_mpirun();
  /* Under the sanitizer build trainers are instrumented too; Open MPI keeps allocations until
   * exit by design, which the leak checker would report as the trainer's. */
  const char *asan = getenv("ASAN_OPTIONS");
  char opts[512];
  snprintf(opts, sizeof opts, "%s%sdetect_leaks=0", asan ? asan : "", asan && *asan ? ":" : "");
  setenv("ASAN_OPTIONS", opts, 1);
  Suite *s = suite_create("mpi");
  TCase *tc = tcase_create("mpi");
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, processes_agree_and_match_one);
  tcase_add_test(tc, data_parallel_step_checks);
  tcase_add_test(tc, runs_repeat_bit_for_bit);
  tcase_add_test(tc, a_failed_process_stops_the_others);
  suite_add_tcase(s, tc);
  return run_with_private_cache(s);
}
