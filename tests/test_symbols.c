/*
 * test_symbols.c — libkiln exports its public API and nothing else.
 *
 * The library is built with hidden visibility and include/kiln.h marks the API; this reads the
 * shared library's dynamic symbol table with nm and requires every defined symbol to be a
 * kiln_* function declared in kiln.h, and every function of kiln.h to be there; and the
 * functions it imports to exclude the environment and the machine's description.
 */
#include <check.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

/* The linker's own markers, present in every shared object. */
static const char *const linker_symbols[] = {"_init", "_fini", "__bss_start", "_edata", "_end"};

/* Every name declared `KILN_API` in kiln.h, read from the header itself. */
static int api_names(char names[][64], int cap) {
  FILE *h = fopen(KILN_SOURCE_DIR "/include/kiln.h", "r");
  ck_assert_ptr_nonnull(h);
  char line[512];
  int n = 0;
  while (fgets(line, sizeof line, h)) {
    if (strncmp(line, "KILN_API ", 9) != 0) continue;
    /* The function's name is the identifier right before its '('. */
    char *paren = strchr(line, '(');
    ck_assert_ptr_nonnull(paren);
    char *k = paren;
    while (k > line && (isalnum((unsigned char)k[-1]) || k[-1] == '_')) k--;
    size_t len = (size_t)(paren - k);
    ck_assert_msg(strncmp(k, "kiln_", 5) == 0, "kiln.h declares a function without kiln_: %s", line);
    ck_assert(n < cap && len < 64);
    memcpy(names[n], k, len);
    names[n++][len] = 0;
  }
  fclose(h);
  return n;
}

START_TEST(only_the_api_is_exported) {
  char api[64][64];
  int napi = api_names(api, 64);
  ck_assert_int_ge(napi, 8);
  int found[64] = {0};
  FILE *p = popen("nm -D --defined-only '" KILN_SHARED_LIBRARY "'", "r");
  ck_assert_ptr_nonnull(p);
  char line[512];
  int symbols = 0;
  while (fgets(line, sizeof line, p)) {
    char addr[64], type[8], name[256];
    if (sscanf(line, "%63s %7s %255s", addr, type, name) != 3) continue;
    symbols++;
    bool linker = false;
    for (size_t i = 0; i < sizeof linker_symbols / sizeof *linker_symbols; i++)
      linker |= strcmp(name, linker_symbols[i]) == 0;
    if (linker) continue;
    int k = 0;
    while (k < napi && strcmp(api[k], name) != 0) k++;
    ck_assert_msg(k < napi, "libkiln exports '%s', which is not in include/kiln.h", name);
    found[k] = 1;
  }
  ck_assert_int_eq(pclose(p), 0);
  ck_assert_int_gt(symbols, 0);
  for (int k = 0; k < napi; k++)
    ck_assert_msg(found[k], "kiln.h declares '%s' but libkiln does not export it", api[k]);
}
END_TEST

/* The library takes everything as options: drivers read the environment and ask the machine,
 * libkiln never does (so the same call gives the same code everywhere). */
START_TEST(reads_no_environment) {
  static const char *const banned[] = {"getenv", "secure_getenv", "sysconf", "get_nprocs"};
  FILE *p = popen("nm -D --undefined-only '" KILN_SHARED_LIBRARY "'", "r");
  ck_assert_ptr_nonnull(p);
  char line[512];
  int symbols = 0;
  while (fgets(line, sizeof line, p)) {
    char type[8], name[256];
    if (sscanf(line, "%7s %255s", type, name) != 2) continue;
    symbols++;
    name[strcspn(name, "@")] = 0;
    for (size_t i = 0; i < sizeof banned / sizeof *banned; i++)
      ck_assert_msg(strcmp(name, banned[i]) != 0, "libkiln calls %s", name);
  }
  ck_assert_int_eq(pclose(p), 0);
  ck_assert_int_gt(symbols, 10);
}
END_TEST

int main(void) {
  Suite *s = suite_create("symbols");
  TCase *tc = tcase_create("symbols");
  tcase_add_test(tc, only_the_api_is_exported);
  tcase_add_test(tc, reads_no_environment);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
