/*
 * base.h — what every part of the compiler library uses: source locations, a memory pool,
 * growable strings, the allocator with fault injection and the error trap (util.c); SHA-256
 * (sha256.c).
 *
 * Errors unwind: a public entry point sets a trap with KILN_TRY, anything below it that finds bad
 * input calls kiln_fail(), and everything a compile allocates lives in a pool freed on the way
 * out, so no phase carries error codes.
 */
#ifndef KILN_BASE_H
#define KILN_BASE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define KILN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KILN_PRINTF(f, a)
#endif

/* A source file held in memory; tokens and nodes point into it. */
typedef struct SrcFile {
  const char *path;   /* as given by the user, used in messages */
  const char *text;   /* NUL-terminated contents */
} SrcFile;

/* A position in a model file. file == NULL means "no location" (internal nodes, API input). */
typedef struct Loc {
  const SrcFile *file;
  int line, col;      /* 1-based */
} Loc;

/* An arena of allocations freed together. Every compile owns one pool; when kiln_fail unwinds
 * the compile, freeing the pool frees everything it made. */
typedef struct Pool Pool;
Pool *pool_new(void);
void pool_free(Pool *p);
void *pool_alloc(Pool *p, size_t n);              /* zeroed, 16-byte aligned */
char *pool_strdup(Pool *p, const char *s);
char *pool_strndup(Pool *p, const char *s, size_t n);
char *pool_printf(Pool *p, const char *fmt, ...) KILN_PRINTF(2, 3);
size_t pool_bytes(const Pool *p);                 /* memory the pool holds, for tests */

/* The compiler's allocator: kiln_fail("out of memory") instead of returning NULL (the try
 * variant returns NULL). kiln_test_fail_alloc_after(n) makes every allocation after the next n
 * fail on this thread (n < 0: none), for fault-injection tests. */
void *kiln_malloc(size_t n);
void *kiln_calloc(size_t n, size_t size);
void *kiln_realloc(void *p, size_t n);
void *kiln_try_realloc(void *p, size_t n);
void kiln_test_fail_alloc_after(long n);

/* A growable string, used to build generated C and messages. Out of memory, a Buf fails through
 * kiln_fail, unless it is lossy: then it keeps what it has and sets lost. Code that holds
 * resources a trap cannot release (processes, files, loaded code: backend/) uses lossy Bufs. A
 * Buf with a pool grows in the pool's memory: a failure that unwinds past it leaks nothing, and
 * buf_free need not be called (code generation's temporary strings). */
typedef struct Buf {
  char *p;
  size_t len, cap;
  bool lossy, lost;
  Pool *pool;
} Buf;
void buf_printf(Buf *b, const char *fmt, ...) KILN_PRINTF(2, 3);
void buf_vprintf(Buf *b, const char *fmt, va_list ap);
void buf_puts(Buf *b, const char *s);
void buf_free(Buf *b);

/* The error trap. A public API function sets one up with KILN_TRY; anything below it that finds
 * bad input calls kiln_fail(), which formats the message into the trap and longjmps back (the
 * way Lua raises errors), so phases need no error plumbing. Messages look like
 *     model.kiln:12:9: error: cannot add [B, 256] and [B, 10]
 *       h = a + b
 *           ^
 */
typedef struct Trap {
  jmp_buf jb;
  char msg[4096];
  struct Trap *prev;
} Trap;
extern _Thread_local Trap *kiln_trap;
#define KILN_TRY(t) ((t)->prev = kiln_trap, kiln_trap = (t), setjmp((t)->jb) == 0)
void kiln_trap_end(Trap *t);   /* pops t; call on both paths */
_Noreturn void kiln_fail(Loc loc, const char *fmt, ...) KILN_PRINTF(2, 3);
_Noreturn void kiln_vfail(Loc loc, const char *fmt, va_list ap);
/* Formats "file:line:col: error: msg\n  source line\n  ^\n" into out (no location: "error: msg\n"),
 * truncating at cap bytes; never allocates. */
void kiln_format_error(char *out, size_t cap, Loc loc, const char *msg);
/* "error: <fmt ...>\n" into out (cap bytes) for failures that are not at a model line (a file,
 * a buffer, memory); never allocates. */
void kiln_vformat_error(char *out, size_t cap, const char *fmt, va_list ap);
_Noreturn void kiln_bug(const char *file, int line, const char *what);
/* Passes an error caught by an inner trap (already popped) on to the enclosing one: for code
 * that must clean up before failing. */
_Noreturn void kiln_rethrow(const Trap *caught);
#define unreachable() kiln_bug(__FILE__, __LINE__, "unreachable")
#define KILN_ASSERT(c) ((c) ? (void)0 : kiln_bug(__FILE__, __LINE__, #c))

/* Reads a whole regular file into the pool (NUL-terminated; the text may hold NUL bytes, *len
 * counts them); NULL with errno set on failure: EISDIR for a directory, EINVAL for anything else
 * that is not a regular file (a FIFO is never waited on). */
char *read_file(Pool *p, const char *path, size_t *len);
/* Why path must not be opened for reading ("is a directory", "is not a regular file"), or NULL
 * for a regular file or one that cannot be looked at (opening it will say why). */
const char *kiln_not_regular_file(const char *path);

/* Seconds on a monotonic clock, for the phase times a session reports. */
double kiln_now(void);

/* SHA-256 (sha256.c): names and checks entries of the compiled-program cache. */
#define SHA256_BYTES 32
typedef struct Sha256 {
  uint32_t h[8];
  uint64_t bytes;
  unsigned char block[64];
  size_t fill;
} Sha256;
void sha256_init(Sha256 *s);
void sha256_update(Sha256 *s, const void *data, size_t n);
void sha256_final(Sha256 *s, unsigned char digest[SHA256_BYTES]);
void sha256(const void *data, size_t n, unsigned char digest[SHA256_BYTES]);
/* 64 lowercase hex digits and a NUL. */
void sha256_hex(const unsigned char digest[SHA256_BYTES], char hex[2 * SHA256_BYTES + 1]);

/* Reads or writes exactly n bytes of fd, through short counts and EINTR; 0, or -1 (errno set; a
 * read that meets the end of the file fails too). */
int kiln_read_all(int fd, void *buf, size_t n);
int kiln_write_all(int fd, const void *buf, size_t n);
/* Writes path's whole contents, head then data (either may be empty), atomically: a private
 * temporary file beside it (mkstemp), fsync, rename; nothing is left behind on failure. 0, or -1
 * with errno. */
int kiln_write_file_atomic(const char *path, const void *head, size_t head_n, const void *data,
                           size_t n);

#endif
