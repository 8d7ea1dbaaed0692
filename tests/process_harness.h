/*
 * process_harness.h — what the tests that run kiln and its trainers as child processes share
 * (test_cli.c, test_sweep_cli.c, test_resume.c): a scratch directory per test, a command run
 * with its output captured, and a suite run whose compiled
 * programs go to a cache of its own ($XDG_CACHE_HOME), never the user's. Included by one test
 * file each (everything is static).
 */
#ifndef KILN_PROCESS_HARNESS_H
#define KILN_PROCESS_HARNESS_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

static char tmpdir[256];

/* Runs a shell command line, capturing stdout and stderr; returns the exit status. */
static inline int run(const char *cmdline, char **out, char **err) {
  char cmd[8192], outp[300], errp[300];
  snprintf(outp, sizeof outp, "%s/stdout", tmpdir);
  snprintf(errp, sizeof errp, "%s/stderr", tmpdir);
  ck_assert_int_lt(snprintf(cmd, sizeof cmd, "%s >'%s' 2>'%s'", cmdline, outp, errp),
                   (int)sizeof cmd);
  int st = system(cmd);
  ck_assert(WIFEXITED(st));
  const char *paths[2] = {outp, errp};
  char **dst[2] = {out, err};
  for (int i = 0; i < 2; i++) {
    if (!dst[i]) continue;
    FILE *f = fopen(paths[i], "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *dst[i] = calloc((size_t)n + 1, 1);
    ck_assert_int_eq(fread(*dst[i], 1, (size_t)n, f), (size_t)n);
    fclose(f);
  }
  return WEXITSTATUS(st);
}

/* The checked fixture: a fresh directory per test, removed with what the test left in it. */
static void make_tmpdir(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln_test_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

/* Runs the suite with every kiln it starts keeping its compiled programs in a cache directory
 * of the run's own; the process's exit status. */
static int run_with_private_cache(Suite *suite) {
  char cache[] = "/tmp/kiln_test_cache_XXXXXX";
  if (!mkdtemp(cache) || setenv("XDG_CACHE_HOME", cache, 1) != 0)
    return EXIT_FAILURE;
  SRunner *sr = srunner_create(suite);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache);
  if (system(cmd) != 0)
    failed++;
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
