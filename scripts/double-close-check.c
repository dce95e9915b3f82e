// Preloaded into the test process by scripts/double-close-check. close(fd) puts a tombstone (a
// dup of one memfd) in place of fd instead of freeing the number, so a second close of the same
// number is caught, with the backtraces of both closes, whatever the process opened in between:
// without it, the second close would close whichever descriptor got the number meanwhile (and
// drop every POSIX lock the process holds on that file, SQLite's included). At most RING
// tombstones live; the oldest are really closed. Other processes (children) are left alone.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RING 8192
#define MAXFD (1 << 20)
#define DEPTH 24

static int (*real_close)(int);
static int logfd = -1, tomb = -1;
static dev_t tomb_dev; static ino_t tomb_ino;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int ring[RING]; static int head, count;
struct first { int n; void *frames[DEPTH]; long tid; struct timespec when; };
static struct first *firsts; // indexed by fd

__attribute__((constructor)) static void init(void) {
    real_close = dlsym(RTLD_NEXT, "close");
    char exe[512]; ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k <= 0) return;
    exe[k] = 0;
    if (!strstr(exe, ".xctest")) return;  // only the test process: children keep plain close
    const char *path = getenv("DOUBLE_CLOSE_LOG");
    char buf[256];
    if (!path) { snprintf(buf, sizeof buf, "/tmp/double-close-%d.log", getpid()); path = buf; }
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) { logfd = fcntl(fd, F_DUPFD_CLOEXEC, 900); syscall(SYS_close, fd); }
    int m = (int)syscall(SYS_memfd_create, "fd-tombstone", MFD_CLOEXEC);
    if (m >= 0) { tomb = fcntl(m, F_DUPFD_CLOEXEC, 901); syscall(SYS_close, m); }
    struct stat st;
    if (tomb >= 0 && fstat(tomb, &st) == 0) { tomb_dev = st.st_dev; tomb_ino = st.st_ino; } else tomb = -1;
    firsts = calloc(MAXFD, sizeof *firsts);
    if (!firsts) tomb = -1;
}

static void say(const char *text) { if (logfd >= 0) write(logfd, text, strlen(text)); }

int close(int fd) {
    // Another library's constructor may close before this one's has run.
    if (!real_close) real_close = dlsym(RTLD_NEXT, "close");
    if (fd <= 2 || tomb < 0 || fd >= MAXFD) return real_close(fd);
    if (fd == logfd || fd == tomb) { errno = EBADF; return -1; }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        if (e != EBADF) return real_close(fd);  // e.g. ENOTCONN: a file of a FUSE mount whose server died
        char b[200]; snprintf(b, sizeof b, "=== CLOSE OF A FREE NUMBER %d (tid %ld):\n", fd, (long)syscall(SYS_gettid));
        pthread_mutex_lock(&mu); say(b);
        void *f[DEPTH]; int n = backtrace(f, DEPTH); backtrace_symbols_fd(f, n, logfd);
        pthread_mutex_unlock(&mu);
        errno = e; return -1;
    }
    pthread_mutex_lock(&mu);
    if (st.st_dev == tomb_dev && st.st_ino == tomb_ino) {
        struct timespec now; clock_gettime(CLOCK_REALTIME, &now);
        char b[300]; snprintf(b, sizeof b, "=== DOUBLE CLOSE of %d at %ld.%09ld (tid %ld); first closed at %ld.%09ld (tid %ld) by:\n",
                              fd, (long)now.tv_sec, now.tv_nsec, (long)syscall(SYS_gettid),
                              (long)firsts[fd].when.tv_sec, firsts[fd].when.tv_nsec, firsts[fd].tid);
        say(b);
        backtrace_symbols_fd(firsts[fd].frames, firsts[fd].n, logfd);
        say("--- second close by:\n");
        void *f[DEPTH]; int n = backtrace(f, DEPTH); backtrace_symbols_fd(f, n, logfd);
        // The tombstone stays until evicted; eviction closes only a number still a tombstone.
        pthread_mutex_unlock(&mu);
        errno = EBADF;
        return -1;
    }
    // Put the tombstone in place: the old file is released exactly as close would.
    if (dup3(tomb, fd, O_CLOEXEC) < 0) { pthread_mutex_unlock(&mu); return real_close(fd); }
    firsts[fd].n = backtrace(firsts[fd].frames, DEPTH);
    firsts[fd].tid = (long)syscall(SYS_gettid);
    clock_gettime(CLOCK_REALTIME, &firsts[fd].when);
    if (count == RING) {
        int old = ring[head];
        struct stat os;
        // Free the oldest tombstone, unless its number was taken over (dup2 onto it).
        if (fstat(old, &os) == 0 && os.st_dev == tomb_dev && os.st_ino == tomb_ino) real_close(old);
        ring[head] = fd; head = (head + 1) % RING;
    } else {
        ring[(head + count) % RING] = fd; count++;
    }
    pthread_mutex_unlock(&mu);
    return 0;
}
