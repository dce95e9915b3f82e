// Linux syscalls and macros that Swift cannot call or import directly:
// variadic functions (openat, ioctl, fcntl), inline macros (makedev), and calls glibc 2.36
// does not wrap (openat2).
#ifndef CPVFS_SYSTEM_H
#define CPVFS_SYSTEM_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/file.h>
#include <sys/uio.h>

int cpvfs_openat(int dirfd, const char *path, int flags, mode_t mode);
/// openat2 confined below dirfd: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | extra_resolve.
/// Returns -1 with errno ENOSYS where the kernel lacks openat2.
int cpvfs_openat2_beneath(int dirfd, const char *path, int flags, mode_t mode, uint64_t extra_resolve);
int cpvfs_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
int cpvfs_ficlone(int dest_fd, int src_fd);
/// FIDEDUPERANGE of one range; returns 0 and sets *bytes_deduped / *status, or -1 with errno.
int cpvfs_fideduperange(int src_fd, uint64_t src_offset, uint64_t length, int dest_fd,
                        uint64_t dest_offset, uint64_t *bytes_deduped, int32_t *status);
int cpvfs_fcntl_int(int fd, int cmd, int arg);
int cpvfs_fcntl_lock(int fd, int cmd, struct flock *lock);
int cpvfs_fallocate(int fd, int mode, off_t offset, off_t len);
int cpvfs_syncfs(int fd);
ssize_t cpvfs_copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len, unsigned int flags);
int cpvfs_peercred(int socket_fd, pid_t *pid, uid_t *uid, gid_t *gid);
/// accept4(2) with SOCK_CLOEXEC (glibc declares accept4 only under _GNU_SOURCE).
int cpvfs_accept_cloexec(int socket_fd);
/// eventfd(2) with EFD_CLOEXEC.
int cpvfs_eventfd_cloexec(unsigned int initial);

dev_t cpvfs_makedev(unsigned int major, unsigned int minor);
unsigned int cpvfs_major(dev_t dev);
unsigned int cpvfs_minor(dev_t dev);

static const long CPVFS_UTIME_NOW = UTIME_NOW;
static const long CPVFS_UTIME_OMIT = UTIME_OMIT;
static const unsigned int CPVFS_RENAME_NOREPLACE = 1;
static const unsigned int CPVFS_RENAME_EXCHANGE = 2;
static const unsigned int CPVFS_RENAME_WHITEOUT = 4;
static const int CPVFS_SEEK_DATA = 3;
static const int CPVFS_SEEK_HOLE = 4;
static const int CPVFS_O_PATH = 010000000;
static const int CPVFS_O_TMPFILE = 020000000 | 0200000;
static const int CPVFS_O_DIRECTORY = 0200000;
static const int CPVFS_O_NOFOLLOW = 0400000;
static const int CPVFS_O_CLOEXEC = 02000000;
static const int CPVFS_O_NOATIME = 01000000;
static const int CPVFS_O_DIRECT = 040000;
static const int CPVFS_AT_EMPTY_PATH = 0x1000;
static const int CPVFS_FALLOC_FL_KEEP_SIZE = 0x01;
static const int CPVFS_FALLOC_FL_PUNCH_HOLE = 0x02;
static const int CPVFS_FALLOC_FL_COLLAPSE_RANGE = 0x08;
static const int CPVFS_FALLOC_FL_ZERO_RANGE = 0x10;
static const int CPVFS_FALLOC_FL_INSERT_RANGE = 0x20;
static const int CPVFS_FALLOC_FL_UNSHARE_RANGE = 0x40;
static const int CPVFS_F_OFD_GETLK = 36;
static const int CPVFS_F_OFD_SETLK = 37;
static const int CPVFS_F_OFD_SETLKW = 38;
static const uint64_t CPVFS_RESOLVE_NO_XDEV = 0x01;
static const uint64_t CPVFS_RESOLVE_NO_SYMLINKS = 0x04;
static const uint64_t CPVFS_RESOLVE_BENEATH = 0x08;

/// The calling thread's kernel id (gettid(2)); setpriority(PRIO_PROCESS, tid) sets one thread's nice.
int cpvfs_gettid(void);
/// CPU time the calling thread has used, in nanoseconds (CLOCK_THREAD_CPUTIME_ID); 0 if unavailable.
uint64_t cpvfs_thread_cpu_nanoseconds(void);
/// One thread's scheduling class: nice -20...19 under SCHED_OTHER, or 20 for SCHED_IDLE (which the
/// kernel itself treats as nice 20). 0, or the error number.
int cpvfs_set_thread_nice(int tid, int nice);

#endif
