/* LD_PRELOAD shim for tests: open() of a path containing $HANG_OPEN_MARKER never returns, as
   on a stale NFS or Lustre mount. The process sleeps in pause(): signals reach its handlers
   (Python's C-level one, which only sets a flag) and the call goes on waiting. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static void hang_if_marked(const char *path) {
    const char *marker = getenv("HANG_OPEN_MARKER");
    if (marker && *marker && path && strstr(path, marker))
        for (;;) pause();
}

static mode_t mode_of(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, int) : 0;
}

/* name(PARAMS) with the real one's type, called with ARGS after the hang check */
#define WRAP(name, PARAMS, ARGS)                                          \
    int name PARAMS {                                                     \
        static __typeof__(name) *real;                                    \
        va_list ap;                                                       \
        va_start(ap, flags);                                              \
        mode_t mode = mode_of(flags, ap);                                 \
        va_end(ap);                                                       \
        if (!real) real = dlsym(RTLD_NEXT, #name);                        \
        hang_if_marked(path);                                             \
        return real ARGS;                                                 \
    }

WRAP(open, (const char *path, int flags, ...), (path, flags, mode))
WRAP(open64, (const char *path, int flags, ...), (path, flags, mode))
WRAP(openat, (int dirfd, const char *path, int flags, ...), (dirfd, path, flags, mode))
WRAP(openat64, (int dirfd, const char *path, int flags, ...), (dirfd, path, flags, mode))
