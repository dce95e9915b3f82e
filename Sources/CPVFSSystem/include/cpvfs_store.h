// Calls the blob store and the template ingest need beyond cpvfs_system.h.
#ifndef CPVFS_STORE_H
#define CPVFS_STORE_H

#include <stdint.h>
#include <sys/types.h>

/// getdents64(2): fills `buffer` with struct linux_dirent64 records; 0 at end of directory.
ssize_t cpvfs_getdents64(int fd, void *buffer, size_t count);
/// posix_fadvise(2); returns the error number (0 on success), as posix_fadvise does.
int cpvfs_fadvise(int fd, off_t offset, off_t length, int advice);

/// listxattrat(2) / getxattrat(2) of `path` below `dirfd`, not following a final symlink;
/// -1 with ENOSYS where the kernel (before 6.13) or the architecture lacks them.
ssize_t cpvfs_listxattrat(int dirfd, const char *path, char *list, size_t size);
ssize_t cpvfs_getxattrat(int dirfd, const char *path, const char *name, void *value, size_t size);

static const int CPVFS_FADV_SEQUENTIAL = 2;
static const int CPVFS_FADV_DONTNEED = 4;

#endif
