/*
 * cache.c — compiled programs kept on disk, so that a process compiling a model it (or another
 * process) compiled before only loads the result.
 *
 * An entry is one file, "<dir>/<key in hex>.<suffix>": a header, then the payload (the JIT's
 * object file or the system compiler's shared object). The key is SHA-256 over everything that
 * decides the payload's bytes (backend.c composes it); the header repeats it in full with the
 * payload's length and SHA-256, so a truncated, corrupt or misnamed entry is recognised and never
 * loaded. Header, little-endian:
 *
 *   0  "KILNCACH"       8 bytes
 *   8  format version   u32 (CACHE_FORMAT)
 *  12  header bytes     u32 (88)
 *  16  key              32 bytes
 *  48  payload bytes    u64
 *  56  payload SHA-256  32 bytes
 *
 * Writes are atomic: a temporary file from mkstemp in the same directory, written, fsync'd and
 * renamed over the entry, so a reader sees a whole old entry or a whole new one, two processes
 * writing the same entry both succeed, and a failed write leaves nothing behind. The directory is
 * made with mode 0700; since its entries become code in this process, one that another user owns
 * or may write to is not used.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"

#define CACHE_FORMAT 1
#define HEADER_BYTES 88
static const char magic[8] = {'K', 'I', 'L', 'N', 'C', 'A', 'C', 'H'};

void cache_key_init(CacheKey *k) { sha256_init(&k->hash); }

/* Each part is preceded by its length, so no two different lists of parts hash alike. */
void cache_key_add(CacheKey *k, const void *part, size_t size) {
  unsigned char len[8];
  for (int i = 0; i < 8; i++)
    len[i] = (unsigned char)((uint64_t)size >> (8 * i));
  sha256_update(&k->hash, len, sizeof len);
  sha256_update(&k->hash, part, size);
}

void cache_key_add_string(CacheKey *k, const char *s) { cache_key_add(k, s, strlen(s)); }

void cache_key_final(CacheKey *k) { sha256_final(&k->hash, k->digest); }

/* Creates the missing directories of path, each with mode 0700 (as the XDG base directories
 * want). */
static int make_dirs(const char *path, Buf *why) {
  char p[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof p) {
    buf_printf(why, "cache directory '%s': path empty or too long", path);
    return -1;
  }
  memcpy(p, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != 0)
      continue;
    char c = p[i];
    p[i] = 0;
    if (mkdir(p, 0700) != 0 && errno != EEXIST) {
      buf_printf(why, "cannot create the cache directory %s: %s", p, strerror(errno));
      return -1;
    }
    p[i] = c;
  }
  return 0;
}

int cache_open_dir(const char *dir, Buf *why) {
  if (make_dirs(dir, why))
    return -1;
  struct stat st;
  if (stat(dir, &st) != 0) {
    buf_printf(why, "cache directory %s: %s", dir, strerror(errno));
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    buf_printf(why, "cache directory %s is not a directory", dir);
    return -1;
  }
  if (st.st_uid != geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH))) {
    buf_printf(why, "cache directory %s is not used: another user owns it or may write to it",
               dir);
    return -1;
  }
  return 0;
}

static int entry_path(const char *dir, const CacheKey *k, const char *suffix, char *path,
                      size_t cap) {
  char hex[2 * SHA256_BYTES + 1];
  sha256_hex(k->digest, hex);
  return (size_t)snprintf(path, cap, "%s/%s.%s", dir, hex, suffix) < cap ? 0 : -1;
}

static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++)
    v |= (uint32_t)p[i] << (8 * i);
  return v;
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* Checks the header against the key and the file's size; NULL or what is wrong. */
static const char *bad_header(const unsigned char *h, const CacheKey *k, uint64_t file_bytes) {
  if (memcmp(h, magic, sizeof magic) != 0)
    return "not a kiln cache entry";
  if (get_u32(h + 8) != CACHE_FORMAT || get_u32(h + 12) != HEADER_BYTES)
    return "another format version";
  if (memcmp(h + 16, k->digest, SHA256_BYTES) != 0)
    return "its key does not match its name";
  if (get_u64(h + 48) != file_bytes - HEADER_BYTES)
    return "truncated or extended";
  return NULL;
}

CacheRead cache_read(const char *dir, const CacheKey *k, const char *suffix, void **payload,
                     size_t *size, Buf *why) {
  *payload = NULL;
  *size = 0;
  char path[4096];
  if (entry_path(dir, k, suffix, path, sizeof path)) {
    buf_printf(why, "cache directory path too long: %s", dir);
    return CACHE_READ_INVALID;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return CACHE_READ_ABSENT;
    buf_printf(why, "cannot read %s: %s", path, strerror(errno));
    return CACHE_READ_INVALID;
  }
  struct stat st;
  unsigned char header[HEADER_BYTES];
  const char *wrong = NULL;
  unsigned char *bytes = NULL;
  size_t n = 0;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
    wrong = "not a regular file";
  else if ((uint64_t)st.st_size < HEADER_BYTES || kiln_read_all(fd, header, HEADER_BYTES) != 0)
    wrong = "truncated";
  else
    wrong = bad_header(header, k, (uint64_t)st.st_size);
  if (!wrong) {
    n = (size_t)st.st_size - HEADER_BYTES;
    bytes = malloc(n ? n : 1);
    if (!bytes)
      wrong = "out of memory reading it";
    else if (kiln_read_all(fd, bytes, n) != 0)
      wrong = "truncated while being read";
  }
  close(fd);
  if (!wrong) {
    unsigned char sum[SHA256_BYTES];
    sha256(bytes, n, sum);
    if (memcmp(sum, header + 56, SHA256_BYTES) != 0)
      wrong = "its contents do not match their checksum";
  }
  if (wrong) {
    free(bytes);
    buf_printf(why, "cache entry %s is invalid (%s)", path, wrong);
    return CACHE_READ_INVALID;
  }
  *payload = bytes;
  *size = n;
  return CACHE_READ_FOUND;
}

int cache_write(const char *dir, const CacheKey *k, const char *suffix, const void *payload,
                size_t size, Buf *why) {
  char path[4096];
  if (entry_path(dir, k, suffix, path, sizeof path)) {
    buf_printf(why, "cache directory path too long: %s", dir);
    return -1;
  }
  unsigned char header[HEADER_BYTES] = {0};
  memcpy(header, magic, sizeof magic);
  put_u32(header + 8, CACHE_FORMAT);
  put_u32(header + 12, HEADER_BYTES);
  memcpy(header + 16, k->digest, SHA256_BYTES);
  put_u64(header + 48, size);
  sha256(payload, size, header + 56);
  if (kiln_write_file_atomic(path, header, sizeof header, payload, size)) {
    buf_printf(why, "cannot write the cache entry %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}
