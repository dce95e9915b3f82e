// Xen dom0 libraries (libxen-dev): xenstore, grant-table mapping, event channels, and the
// PV 9pfs ring layout.
#ifndef CXEN_H
#define CXEN_H
#include <stdint.h>
#include <xenstore.h>
#include <xengnttab.h>
#include <xenevtchn.h>
#include <xen/io/ring.h>
#include <xen/io/9pfs.h>

/// Full, read and write memory barriers as io/ring.h's flex-ring helpers use them.
void cxen_mb(void);
void cxen_rmb(void);
void cxen_wmb(void);
#endif
