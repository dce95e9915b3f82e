// libfuse3 (libfuse3-dev) low-level API. FUSE_USE_VERSION must be set before the include.
//
// Besides the header this module has the few pieces Swift cannot express: the bit-fields of
// fuse_file_info, the versioned loop symbol, fd-backed reply buffers and libfuse's variadic log
// callback.
#ifndef CFUSE_H
#define CFUSE_H
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#include <sys/types.h>
#include <stdint.h>
#include <sys/xattr.h>
#include <sys/mount.h>

/// Runs the multithreaded session loop (a macro over versioned symbols in the header).
/// `max_threads` bounds the workers; `max_idle` is how many idle ones are kept.
int cfuse_session_loop_mt(struct fuse_session *se, int clone_fd, unsigned int max_threads, unsigned int max_idle);

/// Sets the bit-fields an open/opendir/create reply carries.
void cfuse_fi_set_reply_flags(struct fuse_file_info *fi, int keep_cache, int direct_io, int cache_readdir, int noflush);
/// Whether release must also drop the flock(2) locks of fi->lock_owner.
int cfuse_fi_flock_release(const struct fuse_file_info *fi);
/// Whether a write comes from the page cache (writeback) rather than from a process.
int cfuse_fi_writepage(const struct fuse_file_info *fi);

/// Replies to a read with `size` bytes of `fd` at `offset`, letting libfuse splice them from the
/// descriptor into /dev/fuse (no copy through user memory where the kernel allows it). Returns
/// what fuse_reply_data returns.
int cfuse_reply_data_fd(fuse_req_t req, int fd, size_t size, off_t offset);

/// Replies to a read of `size` bytes of `fd` at `offset`. Requests up to `copy_limit` bytes are
/// read into a buffer of the calling thread and sent from there (small files: one copy, no pipe
/// and no allocation); larger ones go by cfuse_reply_data_fd (splice). Returns 0 or -errno.
int cfuse_reply_read(fuse_req_t req, int fd, size_t size, off_t offset, size_t copy_limit);

/// Routes libfuse's log messages (already formatted) to `sink`; NULL restores stderr.
void cfuse_set_log_sink(void (*sink)(int level, const char *message));

/// Capability bits as plain values (the header defines them as macros Swift may not import
/// when they contain shifts of typed values).
static const unsigned CFUSE_CAP_ASYNC_READ = FUSE_CAP_ASYNC_READ;
static const unsigned CFUSE_CAP_POSIX_LOCKS = FUSE_CAP_POSIX_LOCKS;
static const unsigned CFUSE_CAP_ATOMIC_O_TRUNC = FUSE_CAP_ATOMIC_O_TRUNC;
static const unsigned CFUSE_CAP_EXPORT_SUPPORT = FUSE_CAP_EXPORT_SUPPORT;
static const unsigned CFUSE_CAP_DONT_MASK = FUSE_CAP_DONT_MASK;
static const unsigned CFUSE_CAP_SPLICE_WRITE = FUSE_CAP_SPLICE_WRITE;
static const unsigned CFUSE_CAP_SPLICE_MOVE = FUSE_CAP_SPLICE_MOVE;
static const unsigned CFUSE_CAP_SPLICE_READ = FUSE_CAP_SPLICE_READ;
static const unsigned CFUSE_CAP_FLOCK_LOCKS = FUSE_CAP_FLOCK_LOCKS;
static const unsigned CFUSE_CAP_AUTO_INVAL_DATA = FUSE_CAP_AUTO_INVAL_DATA;
static const unsigned CFUSE_CAP_READDIRPLUS = FUSE_CAP_READDIRPLUS;
static const unsigned CFUSE_CAP_READDIRPLUS_AUTO = FUSE_CAP_READDIRPLUS_AUTO;
static const unsigned CFUSE_CAP_ASYNC_DIO = FUSE_CAP_ASYNC_DIO;
static const unsigned CFUSE_CAP_WRITEBACK_CACHE = FUSE_CAP_WRITEBACK_CACHE;
static const unsigned CFUSE_CAP_PARALLEL_DIROPS = FUSE_CAP_PARALLEL_DIROPS;
static const unsigned CFUSE_CAP_POSIX_ACL = FUSE_CAP_POSIX_ACL;
static const unsigned CFUSE_CAP_HANDLE_KILLPRIV = FUSE_CAP_HANDLE_KILLPRIV;
static const unsigned CFUSE_CAP_CACHE_SYMLINKS = FUSE_CAP_CACHE_SYMLINKS;

static const int CFUSE_SET_ATTR_MODE = FUSE_SET_ATTR_MODE;
static const int CFUSE_SET_ATTR_UID = FUSE_SET_ATTR_UID;
static const int CFUSE_SET_ATTR_GID = FUSE_SET_ATTR_GID;
static const int CFUSE_SET_ATTR_SIZE = FUSE_SET_ATTR_SIZE;
static const int CFUSE_SET_ATTR_ATIME = FUSE_SET_ATTR_ATIME;
static const int CFUSE_SET_ATTR_MTIME = FUSE_SET_ATTR_MTIME;
static const int CFUSE_SET_ATTR_ATIME_NOW = FUSE_SET_ATTR_ATIME_NOW;
static const int CFUSE_SET_ATTR_MTIME_NOW = FUSE_SET_ATTR_MTIME_NOW;
static const int CFUSE_SET_ATTR_CTIME = FUSE_SET_ATTR_CTIME;

static const int CFUSE_SEEK_DATA = 3;
static const int CFUSE_SEEK_HOLE = 4;
static const int CFUSE_XATTR_CREATE = XATTR_CREATE;
static const int CFUSE_XATTR_REPLACE = XATTR_REPLACE;
static const int CFUSE_MNT_DETACH = MNT_DETACH;
#endif
