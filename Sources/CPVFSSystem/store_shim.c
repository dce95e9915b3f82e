#define _GNU_SOURCE
#include "cpvfs_store.h"
#include <fcntl.h>
#include <unistd.h>
#include <sys/syscall.h>

ssize_t cpvfs_getdents64(int fd, void *buffer, size_t count) {
    return (ssize_t)syscall(SYS_getdents64, fd, buffer, count);
}

int cpvfs_sync_file_range(int fd, off_t offset, off_t count, unsigned int flags) {
    return sync_file_range(fd, offset, count, flags);
}

int cpvfs_fadvise(int fd, off_t offset, off_t length, int advice) {
    return posix_fadvise(fd, offset, length, advice);
}
