/*
 * test_golden.c — what kiln prints and generates for the examples, against reviewed copies.
 *
 * tests/golden/NAME.ir is `kiln ir` of examples/NAME.kiln and NAME.c its `kiln emit --threads 1`.
 * Any change to the IR, the schedule or the generated C shows up here as a failing test naming
 * the first line that differs; scripts/update-golden.sh rewrites the copies, and the diff is
 * reviewed like code.
 */
#include <check.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KILN KILN_BINARY_DIR "/kiln"
#define EXAMPLES KILN_SOURCE_DIR "/examples"
#define GOLDEN KILN_SOURCE_DIR "/tests/golden"

static char *slurp(FILE *f, size_t *len) {
  size_t cap = 1 << 16, n = 0;
  char *p = malloc(cap);
  ck_assert_ptr_nonnull(p);
  for (size_t r; (r = fread(p + n, 1, cap - n - 1, f)) > 0;) {
    n += r;
    if (n + 1 == cap) {
      p = realloc(p, cap *= 2);
      ck_assert_ptr_nonnull(p);
    }
  }
  p[n] = 0;
  *len = n;
  return p;
}

/* Fails naming the first differing line of got against the golden file at path. */
static void compare(const char *path, const char *got, size_t got_len) {
  FILE *f = fopen(path, "r");
  ck_assert_msg(f != NULL, "%s is missing: run scripts/update-golden.sh", path);
  size_t want_len;
  char *want = slurp(f, &want_len);
  fclose(f);
  if (want_len != got_len || memcmp(want, got, got_len) != 0) {
    int line = 1;
    size_t i = 0, start = 0;
    for (; i < want_len && i < got_len && want[i] == got[i]; i++)
      if (want[i] == '\n') {
        line++;
        start = i + 1;
      }
    size_t we = strcspn(want + start, "\n"), ge = strcspn(got + start, "\n");
    ck_abort_msg("%s differs at line %d:\n  golden: %.*s\n  now:    %.*s\n"
                 "(if the change is intended, run scripts/update-golden.sh and review the diff)",
                 path, line, (int)(we > 200 ? 200 : we), want + start,
                 (int)(ge > 200 ? 200 : ge), got + start);
  }
  free(want);
}

/* Examples too large to review as text (msd_net unrolls 40 layers into 1.3 MB of C): kiln check
 * and test_cli cover them. scripts/update-golden.sh skips the same names. */
static const char *const not_golden[] = {"msd_net.kiln"};

static bool is_golden(const char *name) {
  for (size_t i = 0; i < sizeof not_golden / sizeof *not_golden; i++)
    if (!strcmp(name, not_golden[i]))
      return false;
  return true;
}

/* Runs `kiln <args> MODEL` on every example and compares its stdout with NAME<suffix>. */
static void each_example(const char *args, const char *suffix) {
  DIR *d = opendir(EXAMPLES);
  ck_assert_ptr_nonnull(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    size_t len = strlen(e->d_name);
    if (len < 6 || strcmp(e->d_name + len - 5, ".kiln") != 0 || !is_golden(e->d_name))
      continue;
    char cmd[1024], path[1024];
    snprintf(cmd, sizeof cmd,
             "env -u KILN_THREADS -u KILN_FUSE -u KILN_CONV KILN_TARGET=generic %s %s %s/%s", KILN,
             args, EXAMPLES, e->d_name);
    snprintf(path, sizeof path, "%s/%.*s%s", GOLDEN, (int)(len - 5), e->d_name, suffix);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t got_len;
    char *got = slurp(p, &got_len);
    ck_assert_msg(pclose(p) == 0, "%s failed", cmd);
    compare(path, got, got_len);
    free(got);
    n++;
  }
  closedir(d);
  ck_assert_int_ge(n, 3);
}

START_TEST(ir_of_examples) { each_example("ir", ".ir"); }
END_TEST

START_TEST(c_of_examples) { each_example("emit --threads 1", ".c"); }
END_TEST

int main(void) {
  Suite *s = suite_create("golden");
  TCase *tc = tcase_create("golden");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, ir_of_examples);
  tcase_add_test(tc, c_of_examples);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
