#define _GNU_SOURCE
#include "cxen.h"
#include <fcntl.h>
#include <pthread.h>
#include <sys/eventfd.h>

void cxen_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void cxen_rmb(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
void cxen_wmb(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

void cxen_ring_copy_out(void *dst, const unsigned char *ring, uint32_t ring_size,
                        uint32_t start, uint32_t len) {
    uint32_t first = ring_size - start;
    if (len <= first) {
        memcpy(dst, ring + start, len);
    } else {
        memcpy(dst, ring + start, first);
        memcpy((unsigned char *)dst + first, ring, len - first);
    }
}

void cxen_ring_copy_in(unsigned char *ring, uint32_t ring_size, uint32_t start,
                       const void *src, uint32_t len) {
    uint32_t first = ring_size - start;
    if (len <= first) {
        memcpy(ring + start, src, len);
    } else {
        memcpy(ring + start, src, first);
        memcpy(ring, (const unsigned char *)src + first, len - first);
    }
}

int cxen_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int cxen_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

void cxen_set_thread_name(const char *name) {
    char buffer[16];
    strncpy(buffer, name, sizeof(buffer) - 1);
    buffer[sizeof(buffer) - 1] = 0;
    pthread_setname_np(pthread_self(), buffer);
}
