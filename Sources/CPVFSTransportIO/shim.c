#define _GNU_SOURCE
#include "cpvfs_transport_io.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <signal.h>

int cpvfs_pipe(int fds[2], int size) {
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    // Best effort: the largest capacity up to `size` allowed (fs.pipe-max-size, 1 MiB by
    // default, binds everyone without CAP_SYS_RESOURCE); what does not fit is copied instead.
    for (int want = size; want > 65536 && fcntl(fds[0], F_GETPIPE_SZ) < want; want /= 2) {
        if (fcntl(fds[0], F_SETPIPE_SZ, want) >= 0) break;
    }
    return fcntl(fds[0], F_GETPIPE_SZ);
}

ssize_t cpvfs_splice(int in, int64_t *offset, int out, size_t length, unsigned int move) {
    loff_t off = offset ? (loff_t)*offset : 0;
    ssize_t n = splice(in, offset ? &off : NULL, out, NULL, length, move ? SPLICE_F_MOVE : 0);
    if (offset && n > 0) *offset = (int64_t)off;
    return n;
}

int cpvfs_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING); }
int cpvfs_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }
int cpvfs_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals); }
int cpvfs_eventfd(unsigned int initial) { return eventfd(initial, EFD_CLOEXEC | EFD_NONBLOCK); }

#define CPVFS_MAX_FDS 16

ssize_t cpvfs_send_with_fds(int socket, const void *bytes, size_t length, const int *fds, int count) {
    if (count < 0 || count > CPVFS_MAX_FDS) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = (void *)bytes, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(int) * CPVFS_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (count > 0) {
        msg.msg_control = control.buffer;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)count);
    }
    ssize_t n;
    do {
        n = sendmsg(socket, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t cpvfs_recv_with_fds(int socket, void *bytes, size_t length, int *fds, int capacity, int *count, int *truncated) {
    struct iovec iov = {.iov_base = bytes, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(int) * 64)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof(control.buffer)};
    *count = 0;
    *truncated = 0;
    ssize_t n;
    do {
        n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) *truncated = 1;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
        size_t n_fds = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received = (int *)CMSG_DATA(cmsg);
        for (size_t i = 0; i < n_fds; i++) {
            if (*count < capacity) {
                fds[(*count)++] = received[i];
            } else {
                close(received[i]);
                *truncated = 1;
            }
        }
    }
    return n;
}

int cpvfs_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int cpvfs_epoll_add(int epoll, int fd, uint64_t token) {
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = token};
    return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
}

int cpvfs_epoll_remove(int epoll, int fd) { return epoll_ctl(epoll, EPOLL_CTL_DEL, fd, NULL); }

int cpvfs_epoll_wait(int epoll, uint64_t *tokens, int capacity, int timeout_ms) {
    struct epoll_event events[64];
    if (capacity > 64) capacity = 64;
    int n = epoll_wait(epoll, events, capacity, timeout_ms);
    for (int i = 0; i < n; i++) tokens[i] = events[i].data.u64;
    return n;
}

int cpvfs_accept(int socket) { return accept4(socket, NULL, NULL, SOCK_CLOEXEC); }

static void cpvfs_ignore_interrupt(int signal) { (void)signal; }

static pthread_once_t cpvfs_interrupt_once = PTHREAD_ONCE_INIT;

static void cpvfs_install_interrupt(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = cpvfs_ignore_interrupt;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR
    sigaction(SIGRTMIN + 3, &action, NULL);
}

int cpvfs_interrupt_signal(void) {
    pthread_once(&cpvfs_interrupt_once, cpvfs_install_interrupt);
    return SIGRTMIN + 3;
}

void cpvfs_accept_interrupts(int accept) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, cpvfs_interrupt_signal());
    pthread_sigmask(accept ? SIG_UNBLOCK : SIG_BLOCK, &set, NULL);
}

int cpvfs_interrupt_thread(unsigned long thread) {
    return pthread_kill((pthread_t)thread, cpvfs_interrupt_signal());
}

unsigned long cpvfs_current_thread(void) { return (unsigned long)pthread_self(); }
