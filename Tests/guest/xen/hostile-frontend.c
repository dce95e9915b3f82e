/*
 * A deliberately misbehaving Xen PV 9pfs frontend, run in a domU's userspace for the
 * nested-Xen end-to-end test of pvfs's backend. It uses gntalloc (grant pages to the
 * backend), evtchn (unbound ports) and xenbus (its own device directory, which the guest
 * owns) to do what a hostile guest kernel could do: write garbage into xenstore and into
 * the rings. Each 9pfs device attached to this domain is one scenario, named by its tag.
 *
 * For every scenario it prints one result line in the format of Tests/guest/lib/results.sh
 *   PVFS-TEST hostile-<scenario> ok|fail backend-state=<n> error="<backend error node>"
 * (other lines start with HOSTILE) and finally writes data/hostile=pass|fail and data/phase=done.
 *
 * Build: gcc -O2 -o hostile-frontend hostile-frontend.c -lxenstore -lxengnttab -lxenevtchn
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xenstore.h>
#include <xengnttab.h>
#include <xenevtchn.h>
#include <xen/io/9pfs.h>

static struct xs_handle *xs;
static xengntshr_handle *gs;
static xenevtchn_handle *xe;
static int failures;

struct ring {
    struct xen_9pfs_data_intf *intf;
    uint32_t intf_ref;
    unsigned char *data;     /* in half, then out half */
    uint32_t order;
    uint32_t size;
    uint32_t *refs;
    evtchn_port_t port;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *fe_read(const char *dev, const char *key) {
    char path[256];
    unsigned int len;
    snprintf(path, sizeof(path), "%s/%s", dev, key);
    return xs_read(xs, XBT_NULL, path, &len);
}

static void fe_write(const char *dev, const char *key, const char *fmt, ...) {
    char path[256], value[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    snprintf(path, sizeof(path), "%s/%s", dev, key);
    if (!xs_write(xs, XBT_NULL, path, value, strlen(value)))
        fprintf(stderr, "hostile: cannot write %s: %s\n", path, strerror(errno));
}

static int read_state(const char *be) {
    char *s = fe_read(be, "state");
    int state = s ? atoi(s) : -1;
    free(s);
    return state;
}

/* Waits until the backend's state is `want`; returns the last state seen. */
static int wait_state(const char *be, int want, double timeout) {
    double end = now() + timeout;
    int state;
    while ((state = read_state(be)) != want && now() < end)
        usleep(50 * 1000);
    return state;
}

/* Waits until the backend's error node contains `needle`. */
static int wait_error(const char *be, const char *needle, double timeout) {
    double end = now() + timeout;
    do {
        char *e = fe_read(be, "error");
        int found = e && strstr(e, needle);
        free(e);
        if (found) return 1;
        usleep(50 * 1000);
    } while (now() < end);
    return 0;
}

static void report(const char *scenario, const char *be, int ok) {
    char *e = fe_read(be, "error");
    printf("PVFS-TEST hostile-%s %s backend-state=%d error=\"%s\"\n", scenario, ok ? "ok" : "fail",
           read_state(be), e ? e : "");
    fflush(stdout);
    free(e);
    if (!ok) failures++;
}

static int make_ring(struct ring *r, uint32_t order, uint32_t backend) {
    memset(r, 0, sizeof(*r));
    r->order = order < 1 ? 1 : order;  /* pages actually granted */
    r->size = 1u << (r->order + 11);
    r->intf = xengntshr_share_pages(gs, backend, 1, &r->intf_ref, 1);
    if (!r->intf) { perror("hostile: share interface page"); return -1; }
    memset(r->intf, 0, 4096);
    r->refs = calloc(1u << r->order, sizeof(uint32_t));
    r->data = xengntshr_share_pages(gs, backend, 1u << r->order, r->refs, 1);
    if (!r->data) { perror("hostile: share data pages"); return -1; }
    memset(r->data, 0, 2 * r->size);
    for (uint32_t i = 0; i < (1u << r->order); i++) r->intf->ref[i] = r->refs[i];
    r->intf->ring_order = order;
    int port = xenevtchn_bind_unbound_port(xe, backend);
    if (port < 0) { perror("hostile: unbound port"); return -1; }
    r->port = port;
    return 0;
}

static void free_ring(struct ring *r) {
    if (r->data) xengntshr_unshare(gs, r->data, 1u << r->order);
    if (r->intf) xengntshr_unshare(gs, r->intf, 1);
    if (r->port) xenevtchn_unbind(xe, r->port);
    free(r->refs);
    memset(r, 0, sizeof(*r));
}

static void announce(const char *dev, struct ring *rings, int n) {
    fe_write(dev, "version", "1");
    fe_write(dev, "num-rings", "%d", n);
    for (int i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof(key), "ring-ref%d", i);
        fe_write(dev, key, "%u", rings[i].intf_ref);
        snprintf(key, sizeof(key), "event-channel-%d", i);
        fe_write(dev, key, "%u", rings[i].port);
    }
}

/* Frontend side of the flex ring: put bytes on the out half and publish `publish` of them. */
static void ring_send_raw(struct ring *r, const void *bytes, uint32_t len, uint32_t publish) {
    uint32_t prod = r->intf->out_prod;
    unsigned char *out = r->data + r->size;
    for (uint32_t i = 0; i < len; i++)
        out[(prod + i) & (r->size - 1)] = ((const unsigned char *)bytes)[i];
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    r->intf->out_prod = prod + publish;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    xenevtchn_notify(xe, r->port);
}

static void put_header(unsigned char *m, uint32_t size, uint8_t type, uint16_t tag) {
    m[0] = size; m[1] = size >> 8; m[2] = size >> 16; m[3] = size >> 24;
    m[4] = type; m[5] = tag; m[6] = tag >> 8;
}

/* A Tversion(msize 8192, "9P2000.L") with `tag`. */
static void send_tversion(struct ring *r, uint16_t tag) {
    unsigned char m[64];
    const char *v = "9P2000.L";
    uint32_t size = 7 + 4 + 2 + strlen(v);
    put_header(m, size, 100, tag);
    m[7] = 0; m[8] = 0x20; m[9] = 0; m[10] = 0;
    m[11] = strlen(v); m[12] = 0;
    memcpy(m + 13, v, strlen(v));
    ring_send_raw(r, m, size, size);
}

/* Waits for one reply on the in half; returns its type or -1. */
static int ring_receive(struct ring *r, uint16_t *tag, double timeout) {
    double end = now() + timeout;
    while (now() < end) {
        uint32_t cons = r->intf->in_cons, prod = r->intf->in_prod;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (prod - cons >= 7) {
            unsigned char h[7];
            for (int i = 0; i < 7; i++) h[i] = r->data[(cons + i) & (r->size - 1)];
            uint32_t size = h[0] | h[1] << 8 | h[2] << 16 | (uint32_t)h[3] << 24;
            if (prod - cons < size) {
                printf("PVFS-TEST hostile-whole-replies fail the backend published a partial reply\n");
                failures++;
                return -1;
            }
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            r->intf->in_cons = cons + size;
            xenevtchn_notify(xe, r->port);
            if (tag) *tag = h[5] | h[6] << 8;
            return h[4];
        }
        usleep(20 * 1000);
    }
    return -1;
}

/* Sets up `n` rings of `order`, announces them with `mutate` applied, goes Initialised. */
static int connect_device(const char *dev, struct ring *rings, int n, uint32_t order, uint32_t backend) {
    for (int i = 0; i < n; i++)
        if (make_ring(&rings[i], order, backend) < 0) return -1;
    announce(dev, rings, n);
    return 0;
}

static void run(const char *scenario, const char *dev, const char *be, uint32_t backend) {
    struct ring rings[2];
    memset(rings, 0, sizeof(rings));
    int st = wait_state(be, 2, 60);
    if (st != 2) {
        printf("PVFS-TEST hostile-%s fail backend never reached InitWait (state %d)\n", scenario, st);
        failures++;
        return;
    }
    char *v = fe_read(be, "max-ring-page-order");
    char *m = fe_read(be, "max-rings");
    printf("HOSTILE %s backend offers versions=1 max-rings=%s max-ring-page-order=%s\n", scenario, m, v);
    free(v); free(m);

    int ok = 0;
    if (!strcmp(scenario, "nr0") || !strcmp(scenario, "nr100") || !strcmp(scenario, "nrabc")) {
        connect_device(dev, rings, 2, 1, backend);
        fe_write(dev, "num-rings", !strcmp(scenario, "nr0") ? "0" : !strcmp(scenario, "nr100") ? "100" : "two");
        fe_write(dev, "state", "3");
        ok = wait_state(be, 6, 30) == 6 && wait_error(be, "num-rings", 5);
    } else if (!strcmp(scenario, "refabc")) {
        connect_device(dev, rings, 2, 1, backend);
        fe_write(dev, "ring-ref0", "abc");
        fe_write(dev, "state", "3");
        ok = wait_state(be, 6, 30) == 6 && wait_error(be, "ring-ref0", 5);
    } else if (!strcmp(scenario, "refbad")) {
        connect_device(dev, rings, 2, 1, backend);
        fe_write(dev, "ring-ref1", "30000");   /* a grant this domain never made */
        fe_write(dev, "state", "3");
        ok = wait_state(be, 6, 30) == 6 && wait_error(be, "ring 1", 5);
    } else if (!strcmp(scenario, "order20") || !strcmp(scenario, "order0")) {
        connect_device(dev, rings, 2, 1, backend);
        rings[1].intf->ring_order = !strcmp(scenario, "order20") ? 20 : 0;
        fe_write(dev, "state", "3");
        ok = wait_state(be, 6, 30) == 6 && wait_error(be, "ring_order", 5);
    } else if (!strcmp(scenario, "evbad")) {
        connect_device(dev, rings, 2, 1, backend);
        fe_write(dev, "event-channel-1", "%u", 4000);
        fe_write(dev, "state", "3");
        ok = wait_state(be, 6, 30) == 6 && wait_error(be, "ring 1", 5);
    } else if (!strcmp(scenario, "ver2")) {
        connect_device(dev, rings, 2, 1, backend);
        fe_write(dev, "version", "2");
        fe_write(dev, "state", "3");
        ok = wait_state(be, 6, 30) == 6 && wait_error(be, "version", 5);
    } else if (!strcmp(scenario, "refused")) {
        connect_device(dev, rings, 2, 1, backend);
        fe_write(dev, "state", "3");
        ok = wait_state(be, 6, 30) == 6 && wait_error(be, "refused", 5);
    } else if (!strcmp(scenario, "malformed")) {
        /* A valid connection; then garbage on ring 1 must stop ring 1 only. */
        connect_device(dev, rings, 2, 1, backend);
        fe_write(dev, "state", "3");
        int connected = wait_state(be, 4, 30) == 4;
        fe_write(dev, "state", "4");
        uint16_t tag = 0;
        send_tversion(&rings[0], 1);
        int first = ring_receive(&rings[0], &tag, 20);
        unsigned char bad[7];
        put_header(bad, 3, 100, 2);                    /* size below the header */
        ring_send_raw(&rings[1], bad, 7, 7);
        int reported = wait_error(be, "ring 1 stopped", 20);
        send_tversion(&rings[0], 3);
        int second = ring_receive(&rings[0], &tag, 20);
        send_tversion(&rings[1], 4);                   /* the stopped ring answers nothing */
        int dead = ring_receive(&rings[1], NULL, 3);
        int still = read_state(be) == 4;
        printf("HOSTILE malformed connected=%d rversion=%d reported=%d ring0-after=%d(tag %u) ring1-after=%d\n",
               connected, first, reported, second, tag, dead);
        /* Orderly close: Closing, then Closed. */
        fe_write(dev, "state", "5");
        int closing = wait_state(be, 5, 20) == 5;
        fe_write(dev, "state", "6");
        int closed = wait_state(be, 6, 20) == 6;
        ok = connected && first == 101 && reported && second == 101 && tag == 3 && dead == -1 && still && closing && closed;
    } else if (!strcmp(scenario, "jump")) {
        /* Producer index further ahead than the ring holds. */
        connect_device(dev, rings, 1, 1, backend);
        fe_write(dev, "num-rings", "1");
        fe_write(dev, "state", "3");
        int connected = wait_state(be, 4, 30) == 4;
        fe_write(dev, "state", "4");
        rings[0].intf->out_prod = rings[0].size + 100;
        xenevtchn_notify(xe, rings[0].port);
        ok = connected && wait_error(be, "producer index", 20);
        fe_write(dev, "state", "6");
        ok = ok && wait_state(be, 6, 20) == 6;
    } else if (!strcmp(scenario, "huge")) {
        /* A header claiming 4 GiB. */
        connect_device(dev, rings, 2, 1, backend);
        fe_write(dev, "state", "3");
        int connected = wait_state(be, 4, 30) == 4;
        fe_write(dev, "state", "4");
        unsigned char bad[7];
        put_header(bad, 0xFFFFFFFFu, 110, 9);
        ring_send_raw(&rings[0], bad, 7, 7);
        ok = connected && wait_error(be, "exceeds the limit", 20);
        fe_write(dev, "state", "6");
        ok = ok && wait_state(be, 6, 20) == 6;
    } else {
        printf("PVFS-TEST hostile-%s fail unknown scenario\n", scenario);
        failures++;
        return;
    }
    report(scenario, be, ok);
    /* Pages are only freed once the backend unmapped them; ours must have by now. */
    for (int i = 0; i < 2; i++) free_ring(&rings[i]);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    xs = xs_open(0);
    gs = xengntshr_open(NULL, 0);
    xe = xenevtchn_open(NULL, 0);
    if (!xs || !gs || !xe) {
        printf("PVFS-TEST hostile-frontend fail cannot open xenstore/gntalloc/evtchn: %s\n", strerror(errno));
        return 1;
    }
    unsigned int n = 0;
    char **devs = NULL;
    double end = now() + 30;
    while (now() < end && !(devs = xs_directory(xs, XBT_NULL, "device/9pfs", &n)))
        usleep(100 * 1000);
    if (!devs) {
        printf("PVFS-TEST hostile-frontend fail no device/9pfs directory\n");
        return 1;
    }
    for (unsigned int i = 0; i < n; i++) {
        char dev[128];
        snprintf(dev, sizeof(dev), "device/9pfs/%s", devs[i]);
        char *tag = fe_read(dev, "tag");
        char *be = fe_read(dev, "backend");
        char *bid = fe_read(dev, "backend-id");
        if (!tag || !be || !bid) {
            printf("PVFS-TEST hostile-device-%s fail lacks tag/backend\n", devs[i]);
            failures++;
            continue;
        }
        fe_write(dev, "state", "1");
        run(tag, dev, be, atoi(bid));
        free(tag); free(be); free(bid);
    }
    free(devs);
    printf("HOSTILE DONE failures=%d\n", failures);
    xs_write(xs, XBT_NULL, "data/hostile", failures ? "fail" : "pass", 4);
    xs_write(xs, XBT_NULL, "data/phase", "done", 4);
    return failures ? 1 : 0;
}
