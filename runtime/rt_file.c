/*
 * rt_file.c — opening files safely: temporaries for atomic writes, and reads that refuse what is
 * not a regular file.
 *
 * A temporary named from the process id (PATH.tmp.<pid>) can be predicted: a symlink planted at
 * that name would make the writer overwrite the link's target. mkstemp's O_EXCL never follows
 * one, and the name is random. The file is created in the target's directory so the final
 * rename cannot cross file systems.
 */
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
