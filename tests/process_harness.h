/*
 * process_harness.h — what the tests that run kiln and its trainers as child processes share
 * (test_cli.c, test_resume.c): a scratch directory per test, and a suite run whose compiled
 * programs go to a cache of its own ($XDG_CACHE_HOME), never the user's. Included by one test
 * file each (everything is static).
 */
#ifndef KILN_PROCESS_HARNESS_H
#define KILN_PROCESS_HARNESS_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

static char tmpdir[256];

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
