// Xen dom0 libraries (libxen-dev): xenstore, grant-table mapping, event channels, and the
// PV 9pfs ring layout.
#ifndef CXEN_H
#define CXEN_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <xenstore.h>
#include <xengnttab.h>
#include <xenevtchn.h>
#include <xen/io/ring.h>
#include <xen/io/9pfs.h>
#include <xen/io/xenbus.h>

/// Full, read and write memory barriers as io/ring.h's flex-ring helpers use them
/// (xen_mb, xen_rmb, xen_wmb).
void cxen_mb(void);
void cxen_rmb(void);
void cxen_wmb(void);

/// Single-copy-atomic access to a 32-bit index that another domain writes concurrently
/// (the ring indices of a shared interface page). The compiler may neither tear, merge
/// nor re-read these accesses; ordering comes from the barriers above.
static inline uint32_t cxen_load_u32(const void *p) {
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
}
static inline void cxen_store_u32(void *p, uint32_t value) {
    __atomic_store_n((uint32_t *)p, value, __ATOMIC_RELAXED);
}

/// Copies `len` bytes out of a power-of-two ring of `ring_size` bytes starting at the
/// masked offset `start`, wrapping around the end. The caller guarantees
/// `start < ring_size` and `len <= ring_size`; the copy never leaves the ring.
void cxen_ring_copy_out(void *dst, const unsigned char *ring, uint32_t ring_size,
                        uint32_t start, uint32_t len);
/// Copies `len` bytes into the ring at the masked offset `start`, wrapping around the end,
/// under the same guarantees as cxen_ring_copy_out.
void cxen_ring_copy_in(unsigned char *ring, uint32_t ring_size, uint32_t start,
                       const void *src, uint32_t len);

/// Sets O_NONBLOCK on a descriptor; returns 0 or -1 with errno.
int cxen_set_nonblocking(int fd);
/// Names the calling thread (at most 15 bytes are kept).
void cxen_set_thread_name(const char *name);
/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); returns the descriptor or -1 with errno.
int cxen_eventfd(void);

/// Byte offsets of struct xen_9pfs_data_intf fields, from the header itself.
enum {
    CXEN_9PFS_IN_CONS = offsetof(struct xen_9pfs_data_intf, in_cons),
    CXEN_9PFS_IN_PROD = offsetof(struct xen_9pfs_data_intf, in_prod),
    CXEN_9PFS_OUT_CONS = offsetof(struct xen_9pfs_data_intf, out_cons),
    CXEN_9PFS_OUT_PROD = offsetof(struct xen_9pfs_data_intf, out_prod),
    CXEN_9PFS_RING_ORDER = offsetof(struct xen_9pfs_data_intf, ring_order),
    CXEN_9PFS_REFS = offsetof(struct xen_9pfs_data_intf, ref),
};
#endif
