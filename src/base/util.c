/*
 * util.c — the small pieces every phase uses: a memory pool, growable strings, file reading and
 * the error trap.
 *
 * Errors unwind with longjmp to the nearest KILN_TRY (set at each public API function), so no
 * phase needs to propagate failure codes; everything a compile allocates comes from its pool,
 * so unwinding leaks nothing once the caller frees the graph.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"

/* ---- pool ---- */

typedef struct Chunk {
  struct Chunk *next;
  size_t used, cap;
  _Alignas(16) unsigned char mem[];
} Chunk;

struct Pool {
  Chunk *head;
};

static _Noreturn void out_of_memory(void) {
  kiln_fail((Loc){0}, "out of memory");
}

/* ---- allocation, with fault injection ----
 * Every allocation of the compiler goes through here, so a test can make the n-th one fail and
 * check that each failure point unwinds to a clean error with nothing leaked (SQLite's habit). */

static _Thread_local long alloc_countdown = -1;

void kiln_test_fail_alloc_after(long n) { alloc_countdown = n; }

static bool injected_failure(void) {
  if (alloc_countdown < 0) return false;
  if (alloc_countdown == 0) return true;  /* stays failing until reset, like real exhaustion */
  alloc_countdown--;
  return false;
}

void *kiln_try_realloc(void *p, size_t n) {
  if (injected_failure()) return NULL;
  return realloc(p, n ? n : 1);
}

void *kiln_malloc(size_t n) {
  void *p = kiln_try_realloc(NULL, n);
  if (!p) out_of_memory();
  return p;
}

void *kiln_calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) out_of_memory();
  void *p = kiln_malloc(n * size);
  memset(p, 0, n * size);
  return p;
}

void *kiln_realloc(void *p, size_t n) {
  void *r = kiln_try_realloc(p, n);
  if (!r) out_of_memory();
  return r;
}

Pool *pool_new(void) { return kiln_calloc(1, sizeof(Pool)); }

void pool_free(Pool *p) {
  if (!p) return;
  for (Chunk *c = p->head, *next; c; c = next) {
    next = c->next;
    free(c);
  }
  free(p);
}

size_t pool_bytes(const Pool *p) {
  size_t n = 0;
  for (const Chunk *c = p ? p->head : NULL; c; c = c->next) n += sizeof *c + c->cap;
  return n;
}

void *pool_alloc(Pool *p, size_t n) {
  /* Every request counts for fault injection, even one a chunk can serve, so that each call
   * site's failure path is exercised. */
  if (injected_failure()) out_of_memory();
  n = (n + 15) & ~(size_t)15;
  Chunk *c = p->head;
  if (!c || c->cap - c->used < n) {
    size_t cap = n > 65536 ? n : 65536;
    c = kiln_malloc(sizeof *c + cap);
    c->used = 0;
    c->cap = cap;
    c->next = p->head;
    p->head = c;
  }
  void *r = c->mem + c->used;
  c->used += n;
  memset(r, 0, n);
  return r;
}

char *pool_strndup(Pool *p, const char *s, size_t n) {
  char *r = pool_alloc(p, n + 1);
  memcpy(r, s, n);
  r[n] = 0;
  return r;
}

char *pool_strdup(Pool *p, const char *s) { return pool_strndup(p, s, strlen(s)); }

char *pool_printf(Pool *p, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *r = pool_alloc(p, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(r, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return r;
}

/* ---- growable strings ---- */

void buf_vprintf(Buf *b, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) return;
  if (b->len + (size_t)n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + (size_t)n + 1) cap *= 2;
    char *p;
    if (b->pool) { /* the old block stays in the pool until it is freed */
      p = pool_alloc(b->pool, cap);
      if (b->len)
        memcpy(p, b->p, b->len + 1);
    } else {
      p = b->lossy ? kiln_try_realloc(b->p, cap) : kiln_realloc(b->p, cap);
    }
    if (!p) {
      b->lost = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
}

void buf_printf(Buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  buf_vprintf(b, fmt, ap);
  va_end(ap);
}

void buf_puts(Buf *b, const char *s) { buf_printf(b, "%s", s); }

void buf_free(Buf *b) {
  if (!b->pool)
    free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
  b->lost = false;
}

/* ---- files ---- */

const char *kiln_not_regular_file(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0 || S_ISREG(st.st_mode))
    return NULL;
  return S_ISDIR(st.st_mode) ? "is a directory" : "is not a regular file";
}

char *read_file(Pool *p, const char *path, size_t *len) {
  /* Without O_NONBLOCK, opening a FIFO waits for a writer: open first, then look at what it is. */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    int saved = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    close(fd);
    errno = saved;
    return NULL;
  }
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    close(fd);
    return NULL;
  }
  char *text = NULL;
  size_t used = 0, cap = 0, n;
  char chunk[65536];
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (used + n + 1 > cap) {
      cap = (used + n + 1) * 2;
      char *t = kiln_try_realloc(text, cap);
      if (!t) {
        free(text);
        fclose(f);
        errno = ENOMEM;
        return NULL;
      }
      text = t;
    }
    memcpy(text + used, chunk, n);
    used += n;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    free(text);
    errno = EIO;
    return NULL;
  }
  Trap t;
  if (!KILN_TRY(&t)) {
    free(text);
    kiln_rethrow(&t);
  }
  char *r = pool_strndup(p, text ? text : "", used);
  kiln_trap_end(&t);
  if (len) *len = used;
  free(text);
  return r;
}

double kiln_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- errors ---- */

_Thread_local Trap *kiln_trap;

void kiln_trap_end(Trap *t) { kiln_trap = t->prev; }

/* Appends to out (cap bytes, always NUL-terminated); returns the new length. */
static size_t append(char *out, size_t cap, size_t len, const char *fmt, ...) KILN_PRINTF(4, 5);
static size_t append(char *out, size_t cap, size_t len, const char *fmt, ...) {
  if (len + 1 >= cap) return len;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out + len, cap - len, fmt, ap);
  va_end(ap);
  if (n < 0) return len;
  return len + (size_t)n < cap ? len + (size_t)n : cap - 1;
}

void kiln_vformat_error(char *out, size_t cap, const char *fmt, va_list ap) {
  char msg[2048];
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  if (n && msg[n - 1] == '\n')
    msg[n - 1] = 0;
  kiln_format_error(out, cap, (Loc){0}, msg);
}

/* Whether byte c of model text would act on a terminal rather than print (it is shown as \xNN). */
static bool is_control(unsigned char c, bool newline_ok) {
  return (c < 0x20 && c != '\t' && !(newline_ok && c == '\n')) || c == 0x7f;
}

/* Appends s[0..n) with control bytes escaped. */
static size_t append_text(char *out, size_t cap, size_t len, const char *s, size_t n,
                          bool newline_ok) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    len = is_control(c, newline_ok) ? append(out, cap, len, "\\x%02x", c)
                                    : append(out, cap, len, "%c", c);
  }
  return len;
}

/* Formats into a fixed buffer, never the heap: this runs while reporting "out of memory". */
void kiln_format_error(char *out, size_t cap, Loc loc, const char *msg) {
  out[0] = 0;
  size_t len = 0;
  if (loc.file)
    len = append(out, cap, len, "%s:%d:%d: ", loc.file->path, loc.line, loc.col);
  len = append(out, cap, len, "error: ");
  len = append_text(out, cap, len, msg, strlen(msg), true);
  len = append(out, cap, len, "\n");
  if (!loc.file)
    return;
  /* Find the source line and print it with a caret under the column. */
  const char *s = loc.file->text;
  for (int line = 1; line < loc.line && *s; s++)
    if (*s == '\n') line++;
  const char *e = s;
  while (*e && *e != '\n') e++;
  len = append(out, cap, len, "  ");
  len = append_text(out, cap, len, s, (size_t)(e - s), false);
  len = append(out, cap, len, "\n  ");
  for (int i = 1; i < loc.col && s + i - 1 < e; i++) {
    unsigned char c = (unsigned char)s[i - 1];
    len = append(out, cap, len, "%s", c == '\t' ? "\t" : is_control(c, false) ? "    " : " ");
  }
  append(out, cap, len, "^\n");
}

_Noreturn void kiln_vfail(Loc loc, const char *fmt, va_list ap) {
  char msg[2048];
  vsnprintf(msg, sizeof msg, fmt, ap);
  Trap *t = kiln_trap;
  if (!t) {
    /* No API boundary set a trap: this is a programming error in kiln itself. */
    char text[4096];
    kiln_format_error(text, sizeof text, loc, msg);
    fputs(text, stderr);
    abort();
  }
  kiln_format_error(t->msg, sizeof t->msg, loc, msg);
  kiln_trap = t->prev;
  longjmp(t->jb, 1);
}

_Noreturn void kiln_rethrow(const Trap *caught) {
  Trap *t = kiln_trap;
  if (!t) {
    fputs(caught->msg, stderr);
    abort();
  }
  if (t != caught) snprintf(t->msg, sizeof t->msg, "%s", caught->msg);
  kiln_trap = t->prev;
  longjmp(t->jb, 1);
}

_Noreturn void kiln_fail(Loc loc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kiln_vfail(loc, fmt, ap);
}

_Noreturn void kiln_bug(const char *file, int line, const char *what) {
  kiln_fail((Loc){0}, "internal error at %s:%d: %s (please report this)", file, line, what);
}

/* ---- whole reads and writes ---- */

int kiln_read_all(int fd, void *buf, size_t n) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

int kiln_write_all(int fd, const void *buf, size_t n) {
  const unsigned char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int kiln_write_file_atomic(const char *path, const void *head, size_t head_n, const void *data,
                           size_t n) {
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  int fd = mkstemp(tmp);
  if (fd < 0)
    return -1;
  /* Durable before it is visible: after a crash the name holds the old file or the whole new
   * one, never a prefix of it. */
  int bad = kiln_write_all(fd, head, head_n) || kiln_write_all(fd, data, n) || fsync(fd);
  int saved = errno;
  if (close(fd) != 0 && !bad) {
    bad = 1;
    saved = errno;
  }
  if (!bad && rename(tmp, path) != 0) {
    bad = 1;
    saved = errno;
  }
  if (bad) {
    unlink(tmp);
    errno = saved;
    return -1;
  }
  return 0;
}
