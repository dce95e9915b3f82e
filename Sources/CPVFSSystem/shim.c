#define _GNU_SOURCE
#include "cpvfs_system.h"
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/sysmacros.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <linux/falloc.h>
#include <stdlib.h>

int cpvfs_openat(int dirfd, const char *path, int flags, mode_t mode) {
    return openat(dirfd, path, flags, mode);
}

int cpvfs_openat2_beneath(int dirfd, const char *path, int flags, mode_t mode, uint64_t extra_resolve) {
#ifdef SYS_openat2
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(unsigned int)flags;
    // __O_TMPFILE includes O_DIRECTORY: test all its bits, or every directory open would pass a
    // mode, which openat2 rejects with EINVAL.
    how.mode = ((flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | extra_resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int cpvfs_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
}

int cpvfs_ficlone(int dest_fd, int src_fd) {
    return ioctl(dest_fd, FICLONE, src_fd);
}

int cpvfs_fideduperange(int src_fd, uint64_t src_offset, uint64_t length, int dest_fd,
                        uint64_t dest_offset, uint64_t *bytes_deduped, int32_t *status) {
    size_t size = sizeof(struct file_dedupe_range) + sizeof(struct file_dedupe_range_info);
    struct file_dedupe_range *range = calloc(1, size);
    if (range == NULL) { errno = ENOMEM; return -1; }
    range->src_offset = src_offset;
    range->src_length = length;
    range->dest_count = 1;
    range->info[0].dest_fd = dest_fd;
    range->info[0].dest_offset = dest_offset;
    int rc = ioctl(src_fd, FIDEDUPERANGE, range);
    if (rc == 0) {
        *bytes_deduped = range->info[0].bytes_deduped;
        *status = range->info[0].status;
    }
    int saved = errno;
    free(range);
    errno = saved;
    return rc;
}

int cpvfs_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
int cpvfs_fcntl_lock(int fd, int cmd, struct flock *lock) { return fcntl(fd, cmd, lock); }
int cpvfs_fallocate(int fd, int mode, off_t offset, off_t len) { return fallocate(fd, mode, offset, len); }

int cpvfs_peercred(int socket_fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

int cpvfs_accept_cloexec(int socket_fd) { return accept4(socket_fd, NULL, NULL, SOCK_CLOEXEC); }
int cpvfs_eventfd_cloexec(unsigned int initial) { return eventfd(initial, EFD_CLOEXEC); }

dev_t cpvfs_makedev(unsigned int ma, unsigned int mi) { return makedev(ma, mi); }
unsigned int cpvfs_major(dev_t dev) { return major(dev); }
unsigned int cpvfs_minor(dev_t dev) { return minor(dev); }

int cpvfs_syncfs(int fd) { return syncfs(fd); }
ssize_t cpvfs_copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len, unsigned int flags) {
    return copy_file_range(fd_in, off_in, fd_out, off_out, len, flags);
}

#include <sys/syscall.h>
#include <time.h>

int cpvfs_gettid(void) { return (int)syscall(SYS_gettid); }

uint64_t cpvfs_thread_cpu_nanoseconds(void) {
    struct timespec t;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) != 0) return 0;
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

#include <sys/resource.h>

#include <sched.h>

int cpvfs_set_thread_nice(int tid, int nice) {
    struct sched_param param = { .sched_priority = 0 };
    if (nice >= 20) return sched_setscheduler(tid, SCHED_IDLE, &param) == 0 ? 0 : errno;
    if (sched_getscheduler(tid) != SCHED_OTHER && sched_setscheduler(tid, SCHED_OTHER, &param) != 0) return errno;
    return setpriority(PRIO_PROCESS, (id_t)tid, nice) == 0 ? 0 : errno;
}
