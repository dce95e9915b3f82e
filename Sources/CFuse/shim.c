#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#include "cfuse.h"

int cfuse_session_loop_mt(struct fuse_session *se, int clone_fd, unsigned int max_threads, unsigned int max_idle) {
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (config == NULL) return -1;
    fuse_loop_cfg_set_clone_fd(config, clone_fd);
    fuse_loop_cfg_set_max_threads(config, max_threads);
    fuse_loop_cfg_set_idle_threads(config, max_idle);
    int rc = fuse_session_loop_mt(se, config);
    fuse_loop_cfg_destroy(config);
    return rc;
}

void cfuse_fi_set_reply_flags(struct fuse_file_info *fi, int keep_cache, int direct_io, int cache_readdir, int noflush) {
    fi->keep_cache = keep_cache ? 1 : 0;
    fi->direct_io = direct_io ? 1 : 0;
    fi->cache_readdir = cache_readdir ? 1 : 0;
    fi->noflush = noflush ? 1 : 0;
}

int cfuse_fi_flock_release(const struct fuse_file_info *fi) { return fi->flock_release; }

int cfuse_fi_writepage(const struct fuse_file_info *fi) { return fi->writepage; }

int cfuse_reply_data_fd(fuse_req_t req, int fd, size_t size, off_t offset) {
    struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
    buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    buf.buf[0].fd = fd;
    buf.buf[0].pos = offset;
    return fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

/* One read buffer per worker thread, freed when the worker exits (libfuse retires idle ones). */
struct read_buffer {
    char *data;
    size_t capacity;
};

static pthread_key_t read_buffer_key;
static pthread_once_t read_buffer_once = PTHREAD_ONCE_INIT;

static void free_read_buffer(void *value) {
    struct read_buffer *buffer = value;
    free(buffer->data);
    free(buffer);
}

static void make_read_buffer_key(void) { pthread_key_create(&read_buffer_key, free_read_buffer); }

static char *thread_read_buffer(size_t size) {
    pthread_once(&read_buffer_once, make_read_buffer_key);
    struct read_buffer *buffer = pthread_getspecific(read_buffer_key);
    if (buffer == NULL) {
        buffer = calloc(1, sizeof *buffer);
        if (buffer == NULL) return NULL;
        pthread_setspecific(read_buffer_key, buffer);
    }
    if (buffer->capacity < size) {
        char *grown = realloc(buffer->data, size);
        if (grown == NULL) return NULL;
        buffer->data = grown;
        buffer->capacity = size;
    }
    return buffer->data;
}

int cfuse_reply_read(fuse_req_t req, int fd, size_t size, off_t offset, size_t copy_limit) {
    if (size > copy_limit) return cfuse_reply_data_fd(req, fd, size, offset);
    char *buffer = thread_read_buffer(size);
    if (buffer == NULL) return fuse_reply_err(req, ENOMEM);
    ssize_t n;
    do {
        n = pread(fd, buffer, size, offset);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return fuse_reply_err(req, errno);
    return fuse_reply_buf(req, buffer, (size_t)n);
}

static void (*log_sink)(int, const char *) = NULL;

static void forward_log(enum fuse_log_level level, const char *fmt, va_list ap) {
    char message[1024];
    vsnprintf(message, sizeof message, fmt, ap);
    if (log_sink != NULL) {
        log_sink((int)level, message);
    } else {
        fputs(message, stderr);
    }
}

void cfuse_set_log_sink(void (*sink)(int level, const char *message)) {
    log_sink = sink;
    if (sink != NULL) {
        fuse_set_log_func(forward_log);
    } else {
        fuse_set_log_func(NULL);
    }
}
