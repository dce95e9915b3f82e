// libfuse3 (libfuse3-dev) low-level API. FUSE_USE_VERSION must be set before the include.
#ifndef CFUSE_H
#define CFUSE_H
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>

/// Runs the multithreaded session loop (a macro over versioned symbols in the header).
int cfuse_session_loop_mt(struct fuse_session *se, int clone_fd, unsigned int max_threads);
#endif
