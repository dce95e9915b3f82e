#define _GNU_SOURCE
#include "cpvfs_store.h"
#include <fcntl.h>
#include <unistd.h>
#include <sys/syscall.h>

ssize_t cpvfs_getdents64(int fd, void *buffer, size_t count) {
    return (ssize_t)syscall(SYS_getdents64, fd, buffer, count);
}

int cpvfs_fadvise(int fd, off_t offset, off_t length, int advice) {
    return posix_fadvise(fd, offset, length, advice);
}

// listxattrat(2) and getxattrat(2) (Linux 6.13) on an entry of a directory, never following a
// final symlink. The numbers are those of the unified syscall table; elsewhere, and on older
// kernels, the calls fail with ENOSYS and callers go through /proc/self/fd.
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>

struct cpvfs_xattr_args { uint64_t value; uint32_t size; uint32_t flags; };

ssize_t cpvfs_listxattrat(int dirfd, const char *path, char *list, size_t size) {
#if defined(__x86_64__) || defined(__aarch64__) || defined(__riscv)
    return (ssize_t)syscall(465, dirfd, path, AT_SYMLINK_NOFOLLOW, list, size);
#else
    errno = ENOSYS;
    return -1;
#endif
}

ssize_t cpvfs_getxattrat(int dirfd, const char *path, const char *name, void *value, size_t size) {
#if defined(__x86_64__) || defined(__aarch64__) || defined(__riscv)
    struct cpvfs_xattr_args args = { (uint64_t)(uintptr_t)value, (uint32_t)size, 0 };
    return (ssize_t)syscall(464, dirfd, path, AT_SYMLINK_NOFOLLOW, name, &args, sizeof args);
#else
    errno = ENOSYS;
    return -1;
#endif
}
