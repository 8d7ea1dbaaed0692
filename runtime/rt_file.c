/*
 * rt_file.c — opening files safely: temporaries for atomic writes, and reads that refuse what is
 * not a regular file.
 *
 * A temporary named from the process id (PATH.tmp.<pid>) can be predicted: a symlink planted at
 * that name would make the writer overwrite the link's target. mkstemp's O_EXCL never follows
 * one, and the name is random. The file is created in the target's directory so the final
 * rename cannot cross file systems.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"

FILE *rt_create_temp(const char *path, char *tmp, size_t len, char *err) {
  const char *slash = strrchr(path, '/');
  int dir_len = slash ? (int)(slash - path + 1) : 0;
  /* A dot file beside the target: hidden from listings while it is written. */
  if ((size_t)snprintf(tmp, len, "%.*s.%s.tmp-XXXXXX", dir_len, path,
                       slash ? slash + 1 : path) >= len) {
    rt_errf(err, "%s: path too long", path);
    return NULL;
  }
  int fd = mkstemp(tmp);
  if (fd < 0) {
    rt_errf(err, "%s: cannot create a file in its directory: %s", path, strerror(errno));
    return NULL;
  }
  /* mkstemp makes it 0600; a checkpoint should get the permissions any new file would. */
  mode_t mask = umask(0);
  umask(mask);
  (void)fchmod(fd, 0666 & ~mask);
  FILE *f = fdopen(fd, "wb");
  if (!f) {
    rt_errf(err, "%s: %s", path, strerror(errno));
    close(fd);
    unlink(tmp);
  }
  return f;
}

int rt_write_target(const char *path, char *target, size_t len, char *err) {
  struct stat st;
  /* /dev/stdout, /dev/fd/N and /proc/self/fd/N lead to a descriptor of this process; renaming
   * a new file onto such a name replaces the link (or the caller's redirect target) instead of
   * writing to it. */
  if (!strncmp(path, "/dev/", 5) || !strncmp(path, "/proc/", 6))
    return 1;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return rt_errf(err, "%s: is a directory", path);
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    return 1; /* a pipe or a device: written as it is */
  if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
    /* Through a link: the new file takes the place of the file it leads to, so the link stays a
     * link; a dangling link's file is created where it points. */
    char *real = realpath(path, NULL), link[4096];
    int fits;
    if (real) {
      fits = (size_t)snprintf(target, len, "%s", real) < len;
      free(real);
    } else {
      ssize_t n = readlink(path, link, sizeof link - 1);
      if (n <= 0)
        return rt_errf(err, "%s: cannot follow the link: %s", path, strerror(errno));
      link[n] = 0;
      const char *slash = strrchr(path, '/');
      int dir = link[0] == '/' || !slash ? 0 : (int)(slash - path + 1);
      fits = (size_t)snprintf(target, len, "%.*s%s", dir, path, link) < len;
    }
    if (!fits)
      return rt_errf(err, "%s: path too long", path);
    return !strncmp(target, "/dev/", 5) || !strncmp(target, "/proc/", 6);
  }
  if ((size_t)snprintf(target, len, "%s", path) >= len)
    return rt_errf(err, "%s: path too long", path);
  return 0;
}

FILE *rt_open_regular(const char *path, struct stat *st, char *err) {
  /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    rt_errf(err, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  if (fstat(fd, st)) {
    rt_errf(err, "%s: %s", path, strerror(errno));
    close(fd);
    return NULL;
  }
  if (!S_ISREG(st->st_mode)) {
    rt_errf(err, "%s: %s", path,
            S_ISDIR(st->st_mode) ? "is a directory, not a file" : "not a regular file");
    close(fd);
    return NULL;
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0)
    (void)fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    rt_errf(err, "%s: %s", path, strerror(errno));
    close(fd);
  }
  return f;
}
