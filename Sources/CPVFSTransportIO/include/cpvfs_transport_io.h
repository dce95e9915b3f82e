// Linux calls and memory primitives the FUSE (/dev/fuse) and vhost-user transports need that
// Swift cannot call or import directly: GNU extensions (splice, pipe2, memfd seals), control
// messages carrying descriptors, and loads and stores of memory another party (a guest) writes
// concurrently, which must be read exactly once and ordered by explicit barriers.
#ifndef CPVFS_TRANSPORT_IO_H
#define CPVFS_TRANSPORT_IO_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

/// pipe2(2) with O_CLOEXEC; the pipe's capacity raised to at least `size` bytes where allowed.
/// Returns the capacity it got, or -1 with errno.
int cpvfs_pipe(int fds[2], int size);
/// splice(2) from `in` at *offset (NULL: its position) to `out`.
ssize_t cpvfs_splice(int in, int64_t *offset, int out, size_t length, unsigned int move);

/// memfd_create(2) with MFD_CLOEXEC | MFD_ALLOW_SEALING.
int cpvfs_memfd(const char *name);
/// F_GET_SEALS; -1 with errno for files that cannot be sealed.
int cpvfs_get_seals(int fd);
/// F_ADD_SEALS.
int cpvfs_add_seals(int fd, int seals);
static const int CPVFS_SEAL_SEAL = 0x0001;
static const int CPVFS_SEAL_SHRINK = 0x0002;
static const int CPVFS_SEAL_GROW = 0x0004;

/// eventfd(2), non-blocking and close-on-exec.
int cpvfs_eventfd(unsigned int initial);

/// sendmsg(2) of `length` bytes with up to `count` descriptors (SCM_RIGHTS).
ssize_t cpvfs_send_with_fds(int socket, const void *bytes, size_t length, const int *fds, int count);
/// recvmsg(2) of up to `length` bytes; descriptors that come with them (close-on-exec) are
/// stored in `fds` (at most `capacity`; extra ones are closed) and counted in *count.
/// *truncated is set when the kernel cut data or descriptors.
ssize_t cpvfs_recv_with_fds(int socket, void *bytes, size_t length, int *fds, int capacity, int *count, int *truncated);

/// epoll(7), close-on-exec, readiness for reading (level-triggered), one 64-bit token per descriptor.
int cpvfs_epoll_create(void);
int cpvfs_epoll_add(int epoll, int fd, uint64_t token);
int cpvfs_epoll_remove(int epoll, int fd);
/// Waits up to `timeout_ms` (-1: forever); stores the tokens of ready descriptors; returns
/// their count, or -1 with errno.
int cpvfs_epoll_wait(int epoll, uint64_t *tokens, int capacity, int timeout_ms);
/// accept4(2) with SOCK_CLOEXEC.
int cpvfs_accept(int socket);

/// A real-time signal whose handler does nothing and is installed without SA_RESTART: sent to a
/// thread blocked in recv(2) or poll(2), it makes the call fail with EINTR, so the thread can
/// look at what it was asked to do (pause at a message boundary) without a poll per read.
/// Installs the handler once; returns the signal number.
int cpvfs_interrupt_signal(void);
/// Blocks (0) or unblocks (1) the interrupt signal in the calling thread. A reader unblocks it
/// only around its blocking recv(2), so that no other call of the thread (a request it runs
/// itself: file I/O, SQLite, locks) ever sees an EINTR from it.
void cpvfs_accept_interrupts(int accept);
/// pthread_kill(3) of `thread` with the interrupt signal.
int cpvfs_interrupt_thread(unsigned long thread);
/// pthread_self(3), as a number Swift can store atomically.
unsigned long cpvfs_current_thread(void);

// Guest memory: every field a guest can change is read once, through a volatile access, so
// that the compiler neither re-reads it after validation nor tears it.
static inline uint16_t cpvfs_load16(const void *p) { return *(const volatile uint16_t *)p; }
static inline uint32_t cpvfs_load32(const void *p) { return *(const volatile uint32_t *)p; }
static inline uint64_t cpvfs_load64(const void *p) { return *(const volatile uint64_t *)p; }
static inline void cpvfs_store16(void *p, uint16_t v) { *(volatile uint16_t *)p = v; }
static inline void cpvfs_store32(void *p, uint32_t v) { *(volatile uint32_t *)p = v; }
/// Loads after it see memory at least as new as the loads before it (virtio's rmb).
static inline void cpvfs_read_barrier(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
/// Stores before it are visible before stores after it (virtio's wmb).
static inline void cpvfs_write_barrier(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
/// A full barrier (virtio's mb): a store before it is visible before a load after it.
static inline void cpvfs_full_barrier(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif
