/*
 * test_resume.c — training that survives being stopped: real trainer processes killed with
 * SIGKILL at random moments and resumed from their last checkpoint end bit-identical to a run
 * that was never interrupted; SIGINT and SIGTERM write a checkpoint and say how to go on; a
 * checkpoint resumes only the run it belongs to.
 */
#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "process_harness.h"

#define KILN KILN_BINARY_DIR "/kiln"
#define EX KILN_SOURCE_DIR "/examples/"
#define DATA "/usr/share/datasets/fashion-mnist"

static char *path_in(const char *name) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, 512, "%s/%s", tmpdir, name);
  return b;
}

/* Runs a shell command, its stderr into the file err_path (or discarded); the exit status. */
static int sh(const char *cmdline, const char *err_path) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "%s >/dev/null 2>'%s'", cmdline, err_path ? err_path : "/dev/null");
  int st = system(cmd);
  ck_assert(WIFEXITED(st));
  return WEXITSTATUS(st);
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  char *b = calloc((size_t)n + 1, 1);
  ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  if (len)
    *len = (size_t)n;
  return b;
}

static bool same_bytes(const char *a, const char *b) {
  size_t la, lb;
  char *x = slurp(a, &la), *y = slurp(b, &lb);
  bool same = la == lb && !memcmp(x, y, la);
  free(x);
  free(y);
  return same;
}

/* The newest checkpoint in dir by name (one timeline: names grow with the position), into out;
 * false when there is none. Counts temporaries left behind in *temps. */
static bool latest_checkpoint(const char *dir, char *out, size_t len, int *temps) {
  DIR *d = opendir(dir);
  char best[256] = "";
  *temps = 0;
  if (!d)
    return false;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strstr(e->d_name, ".tmp-"))
      ++*temps;
    else if (!strncmp(e->d_name, "ckpt-", 5) && strcmp(e->d_name, best) > 0)
      snprintf(best, sizeof best, "%s", e->d_name);
  }
  closedir(d);
  if (!*best)
    return false;
  snprintf(out, len, "%s/%s", dir, best);
  return true;
}

/* Starts argv[0] with argv, output discarded; its pid. */
static pid_t start(char *const *argv) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    freopen("/dev/null", "w", stdout);
    freopen("/dev/null", "w", stderr);
    execv(argv[0], argv);
    _exit(127);
  }
  return pid;
}

static void sleep_us(long us) {
  struct timespec t = {us / 1000000, (us % 1000000) * 1000};
  while (nanosleep(&t, &t) != 0) {
  }
}

static uint64_t rng_state;
static uint64_t next_rand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static const char *cnn_trainer(void) {
  const char *t = path_in("cnn");
  char cmd[1024];
  snprintf(cmd, sizeof cmd, KILN " build " EX "mnist_cnn.kiln -o '%s'", t);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  return t;
}

/* The CNN (batch norm, Adam, a last batch smaller than the rest) for two epochs of 600
 * examples, killed with SIGKILL at random moments and resumed from its newest checkpoint until
 * it finishes: the final parameters are byte-identical to those of an uninterrupted run, for
 * several seeds of the moments, and no temporary file outlives the run. */
START_TEST(sigkill_and_resume_is_bit_identical) {
  const char *trainer = cnn_trainer();
  char cmd[2048], full[512], ckdir[512];
  snprintf(full, sizeof full, "%s", path_in("full.safetensors"));
  snprintf(cmd, sizeof cmd,
           "'%s' --data " DATA " --epochs 2 --limit-train 600 --limit-test 100 --seed 5 "
           "--save '%s' --quiet", trainer, full);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long run_us = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
  for (int seed = 1; seed <= 4; seed++) {
    rng_state = 0x9E3779B97F4A7C15ull * (uint64_t)seed;
    snprintf(ckdir, sizeof ckdir, "%s/ck%d", tmpdir, seed);
    char out[512], resume[512] = "";
    snprintf(out, sizeof out, "%s/out%d.safetensors", tmpdir, seed);
    int kills = 0, finished = 0, restarts = 0;
    for (int attempt = 0; attempt < 60 && !finished; attempt++) {
      char *argv[24];
      int a = 0;
      argv[a++] = (char *)trainer;
      char *fixed[] = {"--data", DATA, "--epochs", "2", "--limit-train", "600", "--limit-test",
                       "100", "--seed", "5", "--checkpoint-every", "1", "--keep-checkpoints",
                       "2", "--quiet", "--checkpoint-dir", ckdir, "--save", out};
      for (size_t k = 0; k < sizeof fixed / sizeof *fixed; k++)
        argv[a++] = fixed[k];
      if (*resume) {
        argv[a++] = "--resume";
        argv[a++] = resume;
      }
      argv[a] = NULL;
      pid_t pid = start(argv);
      /* A moment anywhere in a whole run's time (startup, steps, checkpoint writes,
       * evaluation); the later attempts let the run finish. */
      long wait_us = attempt < 6 ? (long)(next_rand() % (uint64_t)(run_us + 1)) : -1;
      if (wait_us >= 0) {
        sleep_us(wait_us);
        kill(pid, SIGKILL);
      }
      int st;
      ck_assert_int_eq(waitpid(pid, &st, 0), pid);
      if (WIFEXITED(st)) {
        ck_assert_msg(WEXITSTATUS(st) == 0, "seed %d: the trainer failed (exit %d) resuming %s",
                      seed, WEXITSTATUS(st), resume);
        finished = 1;
      } else {
        ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        kills++;
      }
      if (finished && kills == 0 && restarts < 5) {
        /* Every kill came after the run had ended (run times vary on a busy machine): again
         * from the start, with earlier moments. */
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", ckdir, out);
        ck_assert_int_eq(system(cmd), 0);
        finished = 0, attempt = -1, *resume = 0, run_us /= 2, restarts++;
        continue;
      }
      int temps;
      if (!latest_checkpoint(ckdir, resume, sizeof resume, &temps))
        *resume = 0; /* killed before the first checkpoint: start again */
      if (finished)
        ck_assert_msg(temps == 0, "seed %d: %d temporary files left in %s", seed, temps, ckdir);
    }
    ck_assert_msg(finished, "seed %d: never finished", seed);
    ck_assert_msg(kills >= 1, "seed %d: never killed", seed);
    ck_assert_msg(same_bytes(full, out), "seed %d: after %d kills the parameters differ from "
                  "the uninterrupted run's", seed, kills);
  }
}
END_TEST

/* SIGINT and SIGTERM end the step in progress, write a checkpoint, say how to continue and exit
 * with the shell's code for the signal; following that line ends bit-identical to an
 * uninterrupted run (here on another thread count), and the metrics file keeps its rows. */
START_TEST(signals_write_a_checkpoint_and_say_how_to_resume) {
  const char *trainer = cnn_trainer();
  char cmd[2048], full[512];
  snprintf(full, sizeof full, "%s", path_in("full.safetensors"));
  snprintf(cmd, sizeof cmd,
           "'%s' --data " DATA " --epochs 3 --limit-train 3000 --limit-test 100 --seed 2 "
           "--save '%s' --quiet --threads 2", trainer, full);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  static const int sigs[2] = {SIGINT, SIGTERM};
  for (int k = 0; k < 2; k++) {
    char ckdir[512], out[512], errp[512], metrics[512];
    snprintf(ckdir, sizeof ckdir, "%s/sig%d", tmpdir, k);
    snprintf(out, sizeof out, "%s/sig%d.safetensors", tmpdir, k);
    snprintf(errp, sizeof errp, "%s/sig%d.err", tmpdir, k);
    snprintf(metrics, sizeof metrics, "%s/sig%d.csv", tmpdir, k);
    char *argv[] = {(char *)trainer, "--data", DATA, "--epochs", "3", "--limit-train", "3000",
                    "--limit-test", "100", "--seed", "2", "--threads", "1", "--save", out,
                    "--metrics", metrics, "--checkpoint-dir", ckdir, NULL};
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      freopen("/dev/null", "w", stdout);
      freopen(errp, "w", stderr);
      execv(argv[0], argv);
      _exit(127);
    }
    /* After the first epoch: the metrics file has its row. */
    for (int tries = 0; tries < 400; tries++) {
      struct stat st;
      if (stat(metrics, &st) == 0 && st.st_size > 70)
        break;
      sleep_us(20000);
    }
    sleep_us(100000);
    kill(pid, sigs[k]);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 128 + sigs[k]);
    char *err = slurp(errp, NULL);
    const char *name = sigs[k] == SIGINT ? "SIGINT" : "SIGTERM";
    char *stopped = strstr(err, "cnn: stopped by ");
    ck_assert_msg(stopped && strstr(stopped, name) && strstr(stopped, " at ") &&
                      strstr(stopped, "; checkpoint "), "%s", err);
    char *hint = strstr(err, "cnn: to continue: ");
    ck_assert_msg(hint != NULL, "%s", err);
    hint += strlen("cnn: to continue: ");
    *strchr(hint, '\n') = 0;
    ck_assert_ptr_nonnull(strstr(hint, " --resume "));
    /* Continue as told, on two threads this time. */
    snprintf(cmd, sizeof cmd, "%s --threads 2", hint);
    ck_assert_int_eq(sh(cmd, NULL), 0);
    free(err);
    ck_assert_msg(same_bytes(full, out), "%s: the resumed run's parameters differ", name);
    char *csv = slurp(metrics, NULL);
    ck_assert_msg(!strncmp(csv, "epoch,train_loss", 16) && strstr(csv, "\n1,") &&
                      strstr(csv, "\n2,") && strstr(csv, "\n3,") &&
                      !strstr(strstr(csv, "\n3,") + 1, "\n3,"),
                  "%s", csv);
    free(csv);
  }
}
END_TEST

/* A checkpoint resumes only its own run: a parameter file, another seed, another model are
 * refused with a message saying why, and --load with --resume is an error. Output paths are
 * checked before training. */
START_TEST(resume_refuses_other_runs) {
  const char *trainer = cnn_trainer();
  char cmd[2048], errp[512], ckdir[512], ck[512];
  snprintf(errp, sizeof errp, "%s", path_in("err"));
  snprintf(ckdir, sizeof ckdir, "%s", path_in("ck"));
  const char *base = "--data " DATA " --epochs 1 --limit-train 200 --limit-test 50 --quiet";
  snprintf(cmd, sizeof cmd, "'%s' %s --checkpoint-every 1epochs --checkpoint-dir '%s' --save '%s'",
           trainer, base, ckdir, path_in("params.st"));
  ck_assert_int_eq(sh(cmd, NULL), 0);
  int temps;
  ck_assert(latest_checkpoint(ckdir, ck, sizeof ck, &temps));
  ck_assert_str_eq(strrchr(ck, '/'), "/ckpt-e0002-s000000.safetensors");
  struct {
    const char *extra, *want;
  } cases[] = {
      {"--resume '%s/params.st'", "params.st: not a resumable checkpoint (it holds parameters "
                                  "only): --resume takes what --checkpoint-every"},
      {"--seed 9 --resume '%s/ck/ckpt-e0002-s000000.safetensors'",
       "written by a run with options 'seed 1 lr model train 200 validation 0 test 50 "
       "patience 0'; this run has 'seed 9 lr model train 200 validation 0 test 50 patience 0': "
       "resume with the same ones"},
      {"--load '%s/params.st' --resume '%s/params.st'", "--load and --resume exclude each other"},
      {"--save '%s/nodir/x.st'", "--save %s/nodir/x.st: the directory %s/nodir does not exist"},
      {"--metrics '%s'", "--metrics %s: is a directory"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char extra[1024], want[1024];
    snprintf(extra, sizeof extra, cases[i].extra, tmpdir, tmpdir);
    snprintf(want, sizeof want, cases[i].want, tmpdir, tmpdir);
    snprintf(cmd, sizeof cmd, "'%s' %s %s", trainer, base, extra);
    ck_assert_int_eq(sh(cmd, errp), 1);
    char *err = slurp(errp, NULL);
    ck_assert_msg(strstr(err, want) != NULL, "case %zu: want '%s' in: %s", i, want, err);
    free(err);
  }
  /* Another model's checkpoint. */
  char mlp[512];
  snprintf(mlp, sizeof mlp, "%s", path_in("mlp"));
  snprintf(cmd, sizeof cmd, KILN " build " EX "mlp.kiln -o '%s'", mlp);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  snprintf(cmd, sizeof cmd, "'%s' %s --resume '%s'", mlp, base, ck);
  ck_assert_int_eq(sh(cmd, errp), 1);
  char *err = slurp(errp, NULL);
  ck_assert_msg(strstr(err, "written by a different model or batch (model 'mnist_cnn'), not by "
                            "this program of model 'mlp'"), "%s", err);
  free(err);
}
END_TEST

/* With augmentation and --normalize auto, resuming from a checkpoint in the middle of either
 * epoch (on another thread count) ends byte-identical to an uninterrupted run: each example's
 * draw depends on (seed, epoch, example) alone. The options are part of what a checkpoint
 * resumes. */
START_TEST(augmented_resume_is_bit_identical) {
  const char *trainer = cnn_trainer();
  const char *opts = "--data " DATA " --epochs 2 --limit-train 600 --limit-test 100 --seed 5 "
                     "--normalize auto --augment flip,crop=2,rotate=8,translate=1,contrast=0.3 "
                     "--quiet";
  char cmd[2048], full[512], ckdir[512], out[512], errp[512];
  snprintf(full, sizeof full, "%s", path_in("full.safetensors"));
  snprintf(ckdir, sizeof ckdir, "%s", path_in("ck"));
  snprintf(errp, sizeof errp, "%s", path_in("err"));
  snprintf(cmd, sizeof cmd, "'%s' %s --threads 1 --save '%s'", trainer, opts, full);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  /* 10 steps an epoch: checkpoints after global steps 7 and 14. */
  snprintf(cmd, sizeof cmd, "'%s' %s --threads 1 --checkpoint-every 7 --checkpoint-dir '%s'",
           trainer, opts, ckdir);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  static const char *const points[] = {"ckpt-e0001-s000007", "ckpt-e0002-s000004"};
  for (int i = 0; i < 2; i++) {
    snprintf(out, sizeof out, "%s/resumed%d.safetensors", tmpdir, i);
    snprintf(cmd, sizeof cmd, "'%s' %s --threads 2 --resume '%s/%s.safetensors' --save '%s'",
             trainer, opts, ckdir, points[i], out);
    ck_assert_int_eq(sh(cmd, errp), 0);
    ck_assert_msg(same_bytes(full, out), "resumed from %s: the parameters differ", points[i]);
  }
  /* Another augmentation: refused, naming both. */
  snprintf(cmd, sizeof cmd, "'%s' --data " DATA " --epochs 2 --limit-train 600 --limit-test 100 "
           "--seed 5 --normalize auto --augment flip --quiet --resume '%s/%s.safetensors'",
           trainer, ckdir, points[1]);
  ck_assert_int_eq(sh(cmd, errp), 1);
  char *err = slurp(errp, NULL);
  ck_assert_msg(strstr(err, "written by a run with options 'seed 5 lr model train 600 validation "
                            "0 test 100 patience 0 normalize auto augment flip,crop=2,rotate=8,"
                            "translate=1,contrast=0.3'; this run has 'seed 5 lr model train 600 "
                            "validation 0 test 100 patience 0 normalize auto augment flip'"),
                "%s", err);
  free(err);
}
END_TEST

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ck_assert_msg(f != NULL, "cannot write %s", path);
  fputs(text, f);
  fclose(f);
}

/* The learning rate depends on the position alone: a run with warm-up and a step schedule,
 * resumed from each of its checkpoints (in the middle of an epoch and at the end of one), ends
 * byte-identical to the run that wrote them; so does a model whose data is in the file, whose
 * every step is an epoch of its schedule. */
START_TEST(schedule_resumes_bit_identical) {
  char model[256], trainer[256], full[256], out[256], ckdir[256], ck[512], cmd[2048];
  snprintf(model, sizeof model, "%s", path_in("sched.kiln"));
  snprintf(trainer, sizeof trainer, "%s", path_in("sched"));
  snprintf(full, sizeof full, "%s", path_in("full.safetensors"));
  snprintf(out, sizeof out, "%s", path_in("out.safetensors"));
  snprintf(ckdir, sizeof ckdir, "%s", path_in("ck"));
  write_text(model, "input image: f32[B, 1, 28, 28] from images / 255\n"
                    "input label: i32[B] from labels\n"
                    "fc1 = linear(flatten(image), out=32)\n"
                    "logits = linear(relu(fc1), out=10) as fc2\n"
                    "loss = cross_entropy(logits, label)\n"
                    "output logits\n"
                    "minimize loss\n"
                    "train {\n"
                    "  optimizer = sgd(lr=0.1, momentum=0.9)\n"
                    "  schedule = step(1, gamma=0.5)\n"
                    "  warmup = 1\n"
                    "  batch = 64\n"
                    "}\n");
  snprintf(cmd, sizeof cmd, KILN " build '%s' -o '%s'", model, trainer);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  /* 5 steps an epoch, a checkpoint every 2: inside epochs 1, 2 and 3, and after the last step
   * of epoch 2. */
  const char *base = "--data " DATA " --epochs 3 --limit-train 320 --limit-test 64 --quiet";
  snprintf(cmd, sizeof cmd, "'%s' %s --checkpoint-every 2 --keep-checkpoints 50 "
           "--checkpoint-dir '%s' --save '%s'", trainer, base, ckdir, full);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  DIR *d = opendir(ckdir);
  ck_assert_ptr_nonnull(d);
  struct dirent *e;
  int resumed = 0;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, "ckpt-", 5))
      continue;
    snprintf(ck, sizeof ck, "%s/%s", ckdir, e->d_name);
    snprintf(cmd, sizeof cmd, "'%s' %s --resume '%s' --save '%s'", trainer, base, ck, out);
    ck_assert_int_eq(sh(cmd, NULL), 0);
    ck_assert_msg(same_bytes(full, out), "resumed from %s: the parameters differ", e->d_name);
    resumed++;
  }
  closedir(d);
  ck_assert_int_eq(resumed, 7);

  snprintf(model, sizeof model, "%s", path_in("literal.kiln"));
  write_text(model, "const x: f64[4, 3] = [[0.5, -1, 2], [1.5, 0.25, -0.5], [-1, 2, 1], [0, 1, -2]]\n"
                    "const y: f64[4, 2] = [[1, -1], [0.5, 2], [-1.5, 0], [2, 1]]\n"
                    "param w: f64[3, 2] = [[0.3, -0.7], [0.9, 0.1], [-0.4, 0.6]]\n"
                    "loss = mean((matmul(x, w) - y) ^ 2)\n"
                    "minimize loss\n"
                    "train { optimizer = adam(lr=0.1) schedule = cosine(3, eta_min=0.01) "
                    "warmup = 2 steps = 6 }\n");
  snprintf(ckdir, sizeof ckdir, "%s", path_in("ck_literal"));
  snprintf(cmd, sizeof cmd, KILN " train '%s' --runtime reference --quiet --checkpoint-every=1 "
           "--keep-checkpoints=10 --checkpoint-dir='%s' --save '%s'", model, ckdir, full);
  ck_assert_int_eq(sh(cmd, NULL), 0);
  for (int step = 1; step < 6; step++) {
    snprintf(cmd, sizeof cmd, KILN " train '%s' --runtime reference --quiet "
             "--resume='%s/ckpt-e0000-s%06d.safetensors' --save '%s'", model, ckdir, step, out);
    ck_assert_int_eq(sh(cmd, NULL), 0);
    ck_assert_msg(same_bytes(full, out), "resumed after step %d: the parameters differ", step);
  }
}
END_TEST

static Suite *resume_suite(void) {
  Suite *s = suite_create("resume");
  TCase *tc = tcase_create("resume");
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, resume_refuses_other_runs);
  tcase_add_test(tc, signals_write_a_checkpoint_and_say_how_to_resume);
  tcase_add_test(tc, sigkill_and_resume_is_bit_identical);
  tcase_add_test(tc, schedule_resumes_bit_identical);
  suite_add_tcase(s, tc);
  /* The data pipeline on its own (CK_RUN_CASE=augment). */
  tc = tcase_create("augment");
  tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, augmented_resume_is_bit_identical);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return run_with_private_cache(resume_suite()); }
