#include "cxen.h"

void cxen_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void cxen_rmb(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
void cxen_wmb(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
