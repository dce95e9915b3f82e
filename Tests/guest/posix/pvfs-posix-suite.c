/*
 * pvfs-posix-suite: POSIX behaviour checks, run inside a guest on two filesystems and compared.
 *
 *   pvfs-posix-suite [-q] DIR
 *
 * Runs every case under DIR (which must exist, empty, and be writable by root) and prints one
 * line per case on stdout:
 *
 *   <case-name> <outcome>
 *
 * The outcome is what a program sees: an errno name ("ok" for success) and, where the case is
 * about state, the resulting mode, owner, times or contents in a form that does not depend on
 * the filesystem (no inode numbers, no block counts, no wall-clock times). The guest runs the
 * suite once on a local filesystem (ext4) and once on the 9P mount; the host compares the two
 * outputs case by case (Tests/guest/posix-compare.sh). The last line is "END <cases>".
 *
 * The program runs as root; the cases of other users run in a forked child that takes the
 * user's uid, gid and supplementary groups (setgroups/setgid/setuid), numeric ones included,
 * so that the filesystem's server sees the same requests a login session would send.
 *
 * -q: the smaller matrices (the nested Xen run, where each 9P request costs tens of
 *     milliseconds); every category still runs.
 *
 * Built on the host with `cc -static -O2` by Tests/guest/lib.sh.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#define RENAME_EXCHANGE (1 << 1)
#endif

static const char *base;
static int quick;
static long cases;

/* ------------------------------------------------------------------ output */

static const char *ename(int e) {
    switch (e) {
    case 0: return "ok";
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(EIO) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT)
    E(EBUSY) E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENXIO)
    E(ENFILE) E(EMFILE) E(ETXTBSY) E(EFBIG) E(ENOSPC) E(ESPIPE) E(EROFS)
    E(EMLINK) E(ERANGE) E(ENAMETOOLONG) E(ENOSYS) E(ENOTEMPTY) E(ELOOP)
    E(ENODATA) E(EOVERFLOW) E(EOPNOTSUPP) E(EDQUOT) E(ESTALE) E(E2BIG) E(EADDRINUSE)
#undef E
    default: return "E?";
    }
}

/* One case: NAME is a printf format (the case's name), then its outcome. */
static void report(const char *outcome, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    printf("%s %s\n", name, outcome);
    fflush(stdout);
    cases++;
}

static char *path(const char *fmt, ...) {
    static char bufs[8][PATH_MAX];
    static int next;
    char *b = bufs[next++ % 8];
    int n = snprintf(b, PATH_MAX, "%s/", base);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, PATH_MAX - n, fmt, ap);
    va_end(ap);
    return b;
}

/* "mode=100644 uid=1000 gid=1000" of PATH (lstat), or the errno name. */
static const char *statstr(const char *p, int nlink) {
    static char s[8][128];
    static int next;
    char *b = s[next++ % 8];
    struct stat st;
    if (lstat(p, &st) != 0) return ename(errno);
    if (nlink)
        snprintf(b, 128, "mode=%o,uid=%u,gid=%u,nlink=%lu", st.st_mode, st.st_uid, st.st_gid, (unsigned long)st.st_nlink);
    else
        snprintf(b, 128, "mode=%o,uid=%u,gid=%u", st.st_mode, st.st_uid, st.st_gid);
    return b;
}

static const char *join(const char *a, const char *b) {
    static char s[8][256];
    static int next;
    char *r = s[next++ % 8];
    snprintf(r, 256, "%s:%s", a, b);
    return r;
}

static void die(const char *what) {
    fprintf(stderr, "pvfs-posix-suite: %s: %s\n", what, strerror(errno));
    printf("ABORT %s %s\n", what, ename(errno));
    exit(1);
}

/* ------------------------------------------------------------------ users */

struct user {
    const char *name;
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[4];
};

/* Group 100 is listed in the served VM's /etc/group with "user" (uid 1000) as member; group
 * 4242 is in no /etc/group: a numeric or directory-service group only the guest kernel knows. */
static const struct user ROOT = {"root", 0, 0, 0, {0}};
static const struct user OWNER = {"owner", 1000, 1000, 3, {1000, 100, 4242}};
static const struct user GPRIM = {"gprim", 1003, 4242, 1, {4242}};
static const struct user GSUPP = {"gsupp", 1002, 1002, 2, {1002, 4242}};
static const struct user OTHER = {"other", 1001, 1001, 1, {1001}};
static const struct user NOBODY2 = {"u65533", 65533, 65533, 0, {0}};

#define FILE_GROUP 4242 /* the group of the files in the matrices */
#define ALIEN_GROUP 5555 /* nobody's group */

/* Runs FN(ARG) as U in a child; returns the errno it returned (0: success). */
typedef int (*op_fn)(void *arg);

static int as(const struct user *u, op_fn fn, void *arg) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        if (u->uid != 0) {
            if (setgroups((size_t)u->ngroups, u->groups) != 0 || setgid(u->gid) != 0 || setuid(u->uid) != 0) _exit(250);
        }
        int r = fn(arg);
        _exit(r > 0 && r < 250 ? r : (r == 0 ? 0 : 251));
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) die("waitpid");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) >= 250) {
        errno = EINVAL;
        die("child could not switch user");
    }
    return WEXITSTATUS(status);
}

#define ERR(expr) ((expr) < 0 ? errno : 0)

/* ------------------------------------------------------------------ objects */

enum kind { K_REG, K_DIR, K_FIFO, K_SOCK, K_CHR, K_BLK, K_LINKED_REG, K_COUNT };
static const char *kind_name[] = {"reg", "dir", "fifo", "sock", "chr", "blk", "via-symlink"};

static int make_socket(const char *p) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return errno;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    /* bind needs a short path: go there first. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", p);
    char *slash = strrchr(dir, '/');
    int cwd = open(".", O_RDONLY | O_DIRECTORY);
    int r = 0;
    if (slash) {
        *slash = 0;
        if (chdir(dir) != 0) r = errno;
        snprintf(a.sun_path, sizeof a.sun_path, "%s", slash + 1);
    } else {
        snprintf(a.sun_path, sizeof a.sun_path, "%s", p);
    }
    if (!r && bind(s, (struct sockaddr *)&a, sizeof a) != 0) r = errno;
    if (cwd >= 0) {
        if (fchdir(cwd) != 0) r = r ? r : errno;
        close(cwd);
    }
    close(s);
    return r;
}

/* Creates P of kind K as the current user (mode before umask where the call takes one). */
static int create_kind(enum kind k, const char *p, mode_t mode) {
    int fd;
    switch (k) {
    case K_REG:
        fd = open(p, O_CREAT | O_EXCL | O_WRONLY, mode);
        if (fd < 0) return errno;
        close(fd);
        return 0;
    case K_DIR: return ERR(mkdir(p, mode));
    case K_FIFO: return ERR(mkfifo(p, mode));
    case K_SOCK: return make_socket(p);
    case K_CHR: return ERR(mknod(p, S_IFCHR | mode, makedev(1, 3)));
    case K_BLK: return ERR(mknod(p, S_IFBLK | mode, makedev(7, 0)));
    case K_LINKED_REG: {
        char target[PATH_MAX];
        snprintf(target, sizeof target, "%s.target", p);
        fd = open(target, O_CREAT | O_EXCL | O_WRONLY, mode);
        if (fd < 0) return errno;
        close(fd);
        const char *slash = strrchr(target, '/');
        return ERR(symlink(slash ? slash + 1 : target, p));
    }
    default: return EINVAL;
    }
}

/* Root makes P of kind K owned by UID:GID with MODE (chown first: it clears set-id bits). */
static void make(enum kind k, const char *p, uid_t uid, gid_t gid, mode_t mode) {
    int r = create_kind(k, p, 0600);
    if (r) {
        errno = r;
        die(p);
    }
    if (k == K_LINKED_REG) {
        char target[PATH_MAX];
        snprintf(target, sizeof target, "%s.target", p);
        if (chown(target, uid, gid) != 0 || chmod(target, mode) != 0) die(target);
        if (lchown(p, uid, gid) != 0) die(p);
        return;
    }
    if (lchown(p, uid, gid) != 0 || chmod(p, mode) != 0) die(p);
}

static void mkdir_as_root(const char *p, mode_t mode, uid_t uid, gid_t gid) {
    if (mkdir(p, 0700) != 0) die(p);
    if (chown(p, uid, gid) != 0 || chmod(p, mode) != 0) die(p);
}

static void put(const char *p, const char *text) {
    int fd = open(p, O_WRONLY | O_TRUNC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) die(p);
    close(fd);
}

/* ------------------------------------------------------------------ operation arguments */

struct args {
    const char *p, *q;
    int flags;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    long n;
    const char *s;
    const struct timespec *times;
};

static int op_open(void *v) {
    struct args *a = v;
    int fd = open(a->p, a->flags, a->mode);
    if (fd < 0) return errno;
    close(fd);
    return 0;
}

static int op_chown(void *v) { struct args *a = v; return ERR(chown(a->p, a->uid, a->gid)); }
static int op_lchown(void *v) { struct args *a = v; return ERR(lchown(a->p, a->uid, a->gid)); }
static int op_chmod(void *v) { struct args *a = v; return ERR(chmod(a->p, a->mode)); }
static int op_unlink(void *v) { struct args *a = v; return ERR(unlink(a->p)); }
static int op_rmdir(void *v) { struct args *a = v; return ERR(rmdir(a->p)); }
static int op_rename(void *v) { struct args *a = v; return ERR(rename(a->p, a->q)); }
static int op_link(void *v) { struct args *a = v; return ERR(link(a->p, a->q)); }
static int op_truncate(void *v) { struct args *a = v; return ERR(truncate(a->p, a->n)); }
static int op_stat(void *v) { struct stat st; struct args *a = v; return ERR(stat(a->p, &st)); }
static int op_utimens(void *v) { struct args *a = v; return ERR(utimensat(AT_FDCWD, a->p, a->times, a->flags)); }
static int op_create(void *v) { struct args *a = v; return create_kind((enum kind)a->n, a->p, a->mode); }

static int op_readdir(void *v) {
    struct args *a = v;
    DIR *d = opendir(a->p);
    if (!d) return errno;
    errno = 0;
    while (readdir(d)) {
    }
    int e = errno;
    closedir(d);
    return e;
}

static int op_write(void *v) {
    struct args *a = v;
    int fd = open(a->p, O_WRONLY);
    if (fd < 0) return errno;
    int r = write(fd, "w", 1) == 1 ? 0 : errno;
    close(fd);
    return r;
}

static int op_ftruncate(void *v) {
    struct args *a = v;
    int fd = open(a->p, O_WRONLY);
    if (fd < 0) return errno;
    int r = ERR(ftruncate(fd, a->n));
    close(fd);
    return r;
}

static int op_setxattr(void *v) {
    struct args *a = v;
    return ERR(lsetxattr(a->p, a->q, a->s, a->s ? strlen(a->s) : 0, a->flags));
}

static int op_getxattr(void *v) {
    struct args *a = v;
    char buf[256];
    return ERR(lgetxattr(a->p, a->q, buf, sizeof buf));
}

static int op_removexattr(void *v) { struct args *a = v; return ERR(lremovexattr(a->p, a->q)); }

/* listxattr as the user, the names sorted and joined by ',' into the shared buffer. */
static char *shared;

static int cmpstr(const void *x, const void *y) { return strcmp(*(char *const *)x, *(char *const *)y); }

static void sorted_names(char *list, ssize_t n, char *out, size_t outlen) {
    char *names[256];
    int count = 0;
    for (ssize_t i = 0; i < n && count < 256; i += (ssize_t)strlen(list + i) + 1) {
        /* security.* names a local filesystem may add by itself (selinux) are not compared. */
        names[count++] = list + i;
    }
    qsort(names, (size_t)count, sizeof names[0], cmpstr);
    out[0] = 0;
    for (int i = 0; i < count; i++) {
        if (i) strncat(out, ",", outlen - strlen(out) - 1);
        strncat(out, names[i], outlen - strlen(out) - 1);
    }
    if (!count) snprintf(out, outlen, "-");
}

static int op_listxattr(void *v) {
    struct args *a = v;
    char list[4096];
    ssize_t n = llistxattr(a->p, list, sizeof list);
    if (n < 0) return errno;
    sorted_names(list, n, shared, 1024);
    return 0;
}

/* ------------------------------------------------------------------ categories */

static const struct user *CALLERS[] = {&OWNER, &GPRIM, &GSUPP, &OTHER, &ROOT};
#define NCALLERS 5

/* Opening a file of every owner/group/other combination of r and w bits, by the owner, by
 * members of its group (primary, supplementary numeric), by others and by root. */
static void open_matrix(void) {
    static const int bits_full[] = {0, 2, 4, 6};
    static const int bits_quick[] = {0, 6};
    const int *bits = quick ? bits_quick : bits_full;
    int nb = quick ? 2 : 4;
    static const struct { const char *name; int flags; } opens[] = {
        {"r", O_RDONLY}, {"w", O_WRONLY}, {"rw", O_RDWR}};
    mkdir_as_root(path("open"), 0755, 0, 0);
    for (int u = 0; u < nb; u++)
        for (int g = 0; g < nb; g++)
            for (int o = 0; o < nb; o++) {
                mode_t mode = (mode_t)(bits[u] << 6 | bits[g] << 3 | bits[o]);
                char *p = path("open/m%04o", mode);
                make(K_REG, p, OWNER.uid, FILE_GROUP, mode);
                for (int c = 0; c < NCALLERS; c++)
                    for (int f = 0; f < 3; f++) {
                        struct args a = {.p = p, .flags = opens[f].flags};
                        report(ename(as(CALLERS[c], op_open, &a)), "open/%04o/%s/%s", mode, CALLERS[c]->name, opens[f].name);
                    }
            }
    /* Only the "other" bits grant: the caller is in neither the owner's nor the group's class. */
    char *p = path("open/nobody-0006");
    make(K_REG, p, 65534, 65534, 0006);
    static const struct { const char *name; int flags; } o2[] = {{"r", O_RDONLY}, {"w", O_WRONLY}, {"rw", O_RDWR}};
    for (int f = 0; f < 3; f++) {
        struct args a = {.p = p, .flags = o2[f].flags};
        report(ename(as(&NOBODY2, op_open, &a)), "open/65534-0006/u65533/%s", o2[f].name);
    }
    /* O_TRUNC needs write permission; O_CREAT on an existing file does not need directory write. */
    p = path("open/trunc");
    make(K_REG, p, OWNER.uid, FILE_GROUP, 0640);
    put(p, "data");
    for (int c = 0; c < NCALLERS; c++) {
        struct args a = {.p = p, .flags = O_RDONLY | O_TRUNC};
        report(ename(as(CALLERS[c], op_open, &a)), "open/trunc-rdonly/%s", CALLERS[c]->name);
    }
}

/* Directory permissions: search (x), listing (r), creating and removing (w+x). */
static void directory_matrix(void) {
    static const struct { const char *name; const struct user *u; int shift; } classes[] = {
        {"owner", &OWNER, 6}, {"gprim", &GPRIM, 3}, {"gsupp", &GSUPP, 3}, {"other", &OTHER, 0}};
    mkdir_as_root(path("dirs"), 0755, 0, 0);
    for (int c = 0; c < 4; c++)
        for (int b = 0; b < 8; b++) {
            if (quick && b != 0 && b != 1 && b != 5 && b != 3 && b != 7) continue;
            mode_t mode = (mode_t)(b << classes[c].shift);
            char *d = path("dirs/%s-%o", classes[c].name, b);
            mkdir_as_root(d, 0755, OWNER.uid, FILE_GROUP);
            make(K_REG, path("dirs/%s-%o/f", classes[c].name, b), 0, 0, 0644);
            make(K_REG, path("dirs/%s-%o/g", classes[c].name, b), 0, 0, 0644);
            if (chmod(d, mode) != 0) die(d);
            const struct user *u = classes[c].u;
            struct args st = {.p = path("dirs/%s-%o/f", classes[c].name, b)};
            report(ename(as(u, op_stat, &st)), "dir/%s/%o/lookup", classes[c].name, b);
            struct args ls = {.p = d};
            report(ename(as(u, op_readdir, &ls)), "dir/%s/%o/list", classes[c].name, b);
            struct args cr = {.p = path("dirs/%s-%o/new", classes[c].name, b), .flags = O_CREAT | O_EXCL | O_WRONLY, .mode = 0644};
            report(ename(as(u, op_open, &cr)), "dir/%s/%o/create", classes[c].name, b);
            struct args rn = {.p = path("dirs/%s-%o/g", classes[c].name, b), .q = path("dirs/%s-%o/g2", classes[c].name, b)};
            report(ename(as(u, op_rename, &rn)), "dir/%s/%o/rename", classes[c].name, b);
            struct args ul = {.p = path("dirs/%s-%o/f", classes[c].name, b)};
            report(ename(as(u, op_unlink, &ul)), "dir/%s/%o/unlink", classes[c].name, b);
        }
    /* Search permission along a path: every directory on the way needs x. */
    mkdir_as_root(path("dirs/outer"), 0700, OWNER.uid, OWNER.gid);
    mkdir_as_root(path("dirs/outer/inner"), 0777, OWNER.uid, OWNER.gid);
    make(K_REG, path("dirs/outer/inner/f"), OWNER.uid, OWNER.gid, 0666);
    for (int c = 0; c < NCALLERS; c++) {
        struct args a = {.p = path("dirs/outer/inner/f"), .flags = O_RDONLY};
        report(ename(as(CALLERS[c], op_open, &a)), "dir/path-search/%s", CALLERS[c]->name);
    }
}

/* chown and chgrp of every kind of file, with and without set-id bits, by its owner (to his
 * primary group, a group of /etc/group, a numeric group, a group he is not in), by others
 * and by root. Set-id bits clear as Linux clears them. */
static void chown_matrix(void) {
    static const mode_t modes_full[] = {0755, 04755, 02755, 06755, 02745, 01755};
    static const mode_t modes_quick[] = {0755, 06755, 02745};
    const mode_t *modes = quick ? modes_quick : modes_full;
    int nm = quick ? 3 : 6;
    static const struct {
        const char *name;
        const struct user *u;
        uid_t uid;
        gid_t gid;
    } ops[] = {
        {"owner-to-primary", &OWNER, (uid_t)-1, 1000},
        {"owner-to-listed", &OWNER, (uid_t)-1, 100},
        {"owner-to-numeric", &OWNER, (uid_t)-1, 4242},
        {"owner-to-alien", &OWNER, (uid_t)-1, ALIEN_GROUP},
        {"owner-give-away", &OWNER, 1001, (gid_t)-1},
        {"owner-keep-both", &OWNER, 1000, 1000},
        {"owner-nop", &OWNER, (uid_t)-1, (gid_t)-1},
        {"other-to-numeric", &GSUPP, (uid_t)-1, 4242},
        {"root-to-both", &ROOT, 1001, ALIEN_GROUP},
        {"root-group", &ROOT, (uid_t)-1, 4242},
    };
    int nops = sizeof ops / sizeof ops[0];
    mkdir_as_root(path("chown"), 0777, 0, 0);
    for (int k = 0; k < K_COUNT; k++) {
        if (quick && (k == K_SOCK || k == K_BLK)) continue;
        for (int m = 0; m < nm; m++)
            for (int o = 0; o < nops; o++) {
                if (quick && o != 2 && o != 3 && o != 8) continue;
                char *p = path("chown/%s-%04o-%s", kind_name[k], modes[m], ops[o].name);
                make((enum kind)k, p, OWNER.uid, OWNER.gid, modes[m]);
                struct args a = {.p = p, .uid = ops[o].uid, .gid = ops[o].gid};
                /* chown follows a symlink; the symlink case changes its target. */
                int r = as(ops[o].u, op_chown, &a);
                char target[PATH_MAX];
                snprintf(target, sizeof target, "%s.target", p);
                report(join(ename(r), statstr(k == K_LINKED_REG ? target : p, 0)), "chown/%s/%04o/%s", kind_name[k], modes[m], ops[o].name);
            }
    }
    /* lchown of a symlink itself. */
    for (int o = 0; o < nops; o++) {
        char *p = path("chown/symlink-%s", ops[o].name);
        if (symlink("nowhere", p) != 0 || lchown(p, OWNER.uid, OWNER.gid) != 0) die(p);
        struct args a = {.p = p, .uid = ops[o].uid, .gid = ops[o].gid};
        int r = as(ops[o].u, op_lchown, &a);
        report(join(ename(r), statstr(p, 0)), "lchown/symlink/%s", ops[o].name);
    }
}

/* chmod: the owner sets any bit (sticky on any kind, setgid only for a group he is in); others
 * may not; root may. */
static void chmod_matrix(void) {
    static const mode_t targets[] = {01644, 02644, 04644, 06755, 07777, 0600};
    static const struct { const char *name; const struct user *u; gid_t group; } who[] = {
        {"owner-member", &OWNER, 4242}, {"owner-listed", &OWNER, 100}, {"owner-nonmember", &OWNER, ALIEN_GROUP},
        {"nonowner", &GSUPP, 4242}, {"root", &ROOT, ALIEN_GROUP}};
    mkdir_as_root(path("chmod"), 0777, 0, 0);
    for (int k = 0; k < K_COUNT; k++) {
        if (quick && (k == K_SOCK || k == K_BLK)) continue;
        for (int t = 0; t < 6; t++)
            for (int w = 0; w < 5; w++) {
                if (quick && t > 2) continue;
                char *p = path("chmod/%s-%04o-%s", kind_name[k], targets[t], who[w].name);
                make((enum kind)k, p, OWNER.uid, who[w].group, 0644);
                struct args a = {.p = p, .mode = targets[t]};
                int r = as(who[w].u, op_chmod, &a);
                char target[PATH_MAX];
                snprintf(target, sizeof target, "%s.target", p);
                report(join(ename(r), statstr(k == K_LINKED_REG ? target : p, 0)), "chmod/%s/%04o/%s", kind_name[k], targets[t], who[w].name);
            }
    }
}

/* Writing or truncating a set-id file clears setuid, and setgid where it means "run as group",
 * unless the writer is root. */
static void setid_clearing(void) {
    static const mode_t modes[] = {04777, 02777, 02767, 06777, 06767, 04666, 02666};
    static const struct { const char *name; op_fn fn; } ops[] = {
        {"write", op_write}, {"ftruncate", op_ftruncate}, {"truncate", op_truncate}};
    mkdir_as_root(path("setid"), 0777, 0, 0);
    const struct user *writers[] = {&OWNER, &GSUPP, &OTHER, &ROOT};
    for (int m = 0; m < 7; m++)
        for (int w = 0; w < 4; w++)
            for (int o = 0; o < 3; o++) {
                if (quick && (o == 2 || w == 1)) continue;
                char *p = path("setid/%04o-%s-%s", modes[m], writers[w]->name, ops[o].name);
                make(K_REG, p, OWNER.uid, FILE_GROUP, modes[m]);
                put(p, "0123456789");
                if (chmod(p, modes[m]) != 0) die(p);
                struct args a = {.p = p, .n = 3};
                int r = as(writers[w], ops[o].fn, &a);
                report(join(ename(r), statstr(p, 0)), "setid/%04o/%s/%s", modes[m], writers[w]->name, ops[o].name);
            }
    /* A directory's setgid bit survives chown; a file's setuid goes even for root. */
    char *d = path("setid/dir-2775");
    mkdir_as_root(d, 02775, OWNER.uid, FILE_GROUP);
    struct args a = {.p = d, .uid = (uid_t)-1, .gid = 100};
    int r = as(&OWNER, op_chown, &a);
    report(join(ename(r), statstr(d, 0)), "setid/dir-2775/owner-chgrp");
}

/* Sticky directories: only the owner of the file or of the directory (or root) may remove or
 * rename a file in it. */
static void sticky(void) {
    static const mode_t dmodes[] = {01777, 0777};
    const struct user *who[] = {&OWNER, &OTHER, &GSUPP, &ROOT};
    static const char *role[] = {"dirowner", "fileowner", "third", "root"};
    mkdir_as_root(path("sticky"), 0755, 0, 0);
    for (int dm = 0; dm < 2; dm++)
        for (int w = 0; w < 4; w++) {
            char *d = path("sticky/%04o-%s", dmodes[dm], role[w]);
            mkdir_as_root(d, dmodes[dm], OWNER.uid, OWNER.gid);
            make(K_REG, path("sticky/%04o-%s/victim1", dmodes[dm], role[w]), OTHER.uid, OTHER.gid, 0666);
            make(K_REG, path("sticky/%04o-%s/victim2", dmodes[dm], role[w]), OTHER.uid, OTHER.gid, 0666);
            make(K_REG, path("sticky/%04o-%s/victim3", dmodes[dm], role[w]), OTHER.uid, OTHER.gid, 0666);
            make(K_REG, path("sticky/%04o-%s/mine", dmodes[dm], role[w]), who[w]->uid, who[w]->gid, 0644);
            mkdir_as_root(path("sticky/%04o-%s/subdir", dmodes[dm], role[w]), 0777, OTHER.uid, OTHER.gid);
            struct args ul = {.p = path("sticky/%04o-%s/victim1", dmodes[dm], role[w])};
            report(ename(as(who[w], op_unlink, &ul)), "sticky/%04o/%s/unlink", dmodes[dm], role[w]);
            struct args rn = {.p = path("sticky/%04o-%s/victim2", dmodes[dm], role[w]), .q = path("sticky/%04o-%s/renamed", dmodes[dm], role[w])};
            report(ename(as(who[w], op_rename, &rn)), "sticky/%04o/%s/rename-away", dmodes[dm], role[w]);
            struct args ov = {.p = path("sticky/%04o-%s/mine", dmodes[dm], role[w]), .q = path("sticky/%04o-%s/victim3", dmodes[dm], role[w])};
            report(ename(as(who[w], op_rename, &ov)), "sticky/%04o/%s/rename-over", dmodes[dm], role[w]);
            struct args rd = {.p = path("sticky/%04o-%s/subdir", dmodes[dm], role[w])};
            report(ename(as(who[w], op_rmdir, &rd)), "sticky/%04o/%s/rmdir", dmodes[dm], role[w]);
        }
}

/* Owner and group of new files: the creator's fsuid and fsgid, or the directory's group (and
 * for directories its setgid bit) in a setgid directory. */
static void ownership(void) {
    const struct user *who[] = {&ROOT, &OWNER, &GPRIM, &GSUPP, &OTHER};
    static const struct { const char *name; mode_t mode; } dirs[] = {{"plain", 0777}, {"setgid", 02777}};
    static const mode_t cmodes[] = {0644, 02755, 0777, 04755};
    mkdir_as_root(path("own"), 0755, 0, 0);
    for (int d = 0; d < 2; d++) {
        char *dp = path("own/%s", dirs[d].name);
        mkdir_as_root(dp, dirs[d].mode, 0, FILE_GROUP);
        for (int w = 0; w < 5; w++)
            for (int k = 0; k < 4; k++)
                for (int cm = 0; cm < 4; cm++) {
                    if (quick && cm != 1) continue;
                    if (k == 2 && cm != 0) continue; /* sockets take no mode */
                    static const enum kind kinds[] = {K_REG, K_DIR, K_SOCK, K_FIFO};
                    char *p = path("own/%s/%s-%s-%04o", dirs[d].name, who[w]->name, kind_name[kinds[k]], cmodes[cm]);
                    struct args a = {.p = p, .n = kinds[k], .mode = cmodes[cm]};
                    int r = as(who[w], op_create, &a);
                    report(join(ename(r), statstr(p, 0)), "own/%s/%s/%s/%04o", dirs[d].name, who[w]->name, kind_name[kinds[k]], cmodes[cm]);
                }
    }
}

/* Device nodes, fifos and sockets: who may make them, what they record, how they open. */
static void special_files(void) {
    const struct user *who[] = {&ROOT, &OWNER};
    mkdir_as_root(path("special"), 0777, 0, 0);
    for (int w = 0; w < 2; w++) {
        struct { const char *name; mode_t mode; dev_t dev; } nodes[] = {
            {"chr", S_IFCHR | 0640, makedev(1, 3)}, {"blk", S_IFBLK | 0660, makedev(7, 0)},
            {"chr-big", S_IFCHR | 0600, makedev(300, 70000)}, {"fifo", S_IFIFO | 0644, 0},
            {"reg", S_IFREG | 0644, 0}, {"sock", S_IFSOCK | 0755, 0}};
        for (int n = 0; n < 6; n++) {
            char *p = path("special/%s-%s", who[w]->name, nodes[n].name);
            int r;
            /* mknod through a child so that the user case runs as the user. */
            struct mk { const char *p; mode_t m; dev_t d; } mk = {p, nodes[n].mode, nodes[n].dev};
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                if (who[w]->uid && (setgroups((size_t)who[w]->ngroups, who[w]->groups) || setgid(who[w]->gid) || setuid(who[w]->uid))) _exit(250);
                _exit(mknod(mk.p, mk.m, mk.d) == 0 ? 0 : errno);
            }
            int status;
            waitpid(pid, &status, 0);
            r = WEXITSTATUS(status);
            struct stat st;
            char detail[128] = "-";
            if (lstat(p, &st) == 0)
                snprintf(detail, sizeof detail, "mode=%o,uid=%u,gid=%u,rdev=%u:%u,size=%lld", st.st_mode, st.st_uid, st.st_gid,
                         major(st.st_rdev), minor(st.st_rdev), (long long)st.st_size);
            report(join(ename(r), detail), "special/mknod/%s/%s", who[w]->name, nodes[n].name);
        }
    }
    /* A fifo opens as a fifo (the guest's kernel serves it), whatever the filesystem. */
    char *f = path("special/fifo-io");
    if (mkfifo(f, 0666) != 0) die(f);
    int rd = open(f, O_RDONLY | O_NONBLOCK);
    report(ename(rd < 0 ? errno : 0), "special/fifo/open-read-nonblock");
    int wr = open(f, O_WRONLY | O_NONBLOCK);
    report(ename(wr < 0 ? errno : 0), "special/fifo/open-write-with-reader");
    if (wr >= 0) {
        report(write(wr, "xyz", 3) == 3 ? "ok" : ename(errno), "special/fifo/write");
        char buf[8] = {0};
        ssize_t n = rd >= 0 ? read(rd, buf, sizeof buf) : -1;
        report(n == 3 && !memcmp(buf, "xyz", 3) ? "ok" : "bad", "special/fifo/read-back");
        close(wr);
    }
    if (rd >= 0) close(rd);
    int wr2 = open(f, O_WRONLY | O_NONBLOCK);
    report(ename(wr2 < 0 ? errno : 0), "special/fifo/open-write-no-reader");
    if (wr2 >= 0) close(wr2);
    struct stat st;
    report(stat(f, &st) == 0 ? join("size", st.st_size == 0 ? "0" : "nonzero") : ename(errno), "special/fifo/size-after");
    /* A device node opens as the guest's device, not the server's. */
    char *nul = path("special/null");
    if (mknod(nul, S_IFCHR | 0666, makedev(1, 3)) != 0) die(nul);
    int fd = open(nul, O_RDWR);
    if (fd >= 0) {
        char c;
        report(write(fd, "x", 1) == 1 && read(fd, &c, 1) == 0 ? "ok" : "bad", "special/devnull/io");
        close(fd);
    } else {
        report(ename(errno), "special/devnull/io");
    }
}

static const char *timestr(const struct timespec *t) {
    static char s[8][48];
    static int next;
    char *b = s[next++ % 8];
    snprintf(b, 48, "%lld.%09ld", (long long)t->tv_sec, t->tv_nsec);
    return b;
}

static int later(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec > b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec > b->tv_nsec);
}

/* Timestamps: exact nanoseconds, UTIME_NOW and UTIME_OMIT, who may set them, and which
 * operations change them. */
static void times_(void) {
    mkdir_as_root(path("times"), 0777, 0, 0);
    struct stat st;
    static const struct { const char *name; long asec, ansec, msec, mnsec; } sets[] = {
        {"ns", 1600000000, 100000000, 1600000001, 200000000},
        {"ns-odd", 1500000000, 123456789, 1500000000, 987654321},
        {"epoch", 0, 0, 0, 1},
        {"pre-1970", -86400, 500000000, -1, 999999999},
        {"y2100", 4102444800LL, 7, 4102444800LL, 8},
    };
    for (int k = 0; k < K_COUNT; k++) {
        if (quick && k != K_REG && k != K_DIR) continue;
        for (int s = 0; s < 5; s++) {
            char *p = path("times/%s-%s", kind_name[k], sets[s].name);
            make((enum kind)k, p, OWNER.uid, OWNER.gid, 0644);
            struct timespec t[2] = {{sets[s].asec, sets[s].ansec}, {sets[s].msec, sets[s].mnsec}};
            int r = ERR(utimensat(AT_FDCWD, p, t, 0));
            const char *out = ename(r);
            if (stat(p, &st) == 0) {
                char b[160];
                snprintf(b, sizeof b, "%s:atime=%s,mtime=%s", out, timestr(&st.st_atim), timestr(&st.st_mtim));
                report(b, "times/set/%s/%s", kind_name[k], sets[s].name);
            } else {
                report(ename(errno), "times/set/%s/%s", kind_name[k], sets[s].name);
            }
        }
    }
    /* The symlink's own times. */
    char *sl = path("times/symlink");
    if (symlink("nowhere", sl) != 0) die(sl);
    struct timespec t1[2] = {{1400000000, 300000000}, {1400000000, 400000000}};
    int r = ERR(utimensat(AT_FDCWD, sl, t1, AT_SYMLINK_NOFOLLOW));
    if (lstat(sl, &st) == 0) {
        char b[160];
        snprintf(b, sizeof b, "%s:atime=%s,mtime=%s", ename(r), timestr(&st.st_atim), timestr(&st.st_mtim));
        report(b, "times/set/symlink-nofollow");
    }
    /* UTIME_OMIT keeps one, UTIME_NOW takes the clock. */
    char *p = path("times/omit");
    make(K_REG, p, 0, 0, 0644);
    struct timespec base_t[2] = {{1000000000, 111}, {1000000000, 222}};
    utimensat(AT_FDCWD, p, base_t, 0);
    struct timespec omit[2] = {{0, UTIME_OMIT}, {1200000000, 333}};
    utimensat(AT_FDCWD, p, omit, 0);
    stat(p, &st);
    report(join(timestr(&st.st_atim), timestr(&st.st_mtim)), "times/omit-atime");
    struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
    utimensat(AT_FDCWD, p, now, 0);
    stat(p, &st);
    report(join(st.st_atim.tv_sec > 1600000000 ? "atime-now" : timestr(&st.st_atim), timestr(&st.st_mtim)), "times/now-atime");

    /* Who may set times: explicit times need ownership; "now" needs ownership or write access. */
    static const struct { const char *name; mode_t mode; } fmodes[] = {{"0644", 0644}, {"0666", 0666}};
    const struct user *who[] = {&OWNER, &GSUPP, &OTHER, &ROOT};
    for (int m = 0; m < 2; m++)
        for (int w = 0; w < 4; w++) {
            char *q = path("times/perm-%s-%s", fmodes[m].name, who[w]->name);
            make(K_REG, q, OWNER.uid, FILE_GROUP, fmodes[m].mode);
            struct timespec tt[2] = {{1300000000, 5}, {1300000000, 6}};
            struct args explicit_ = {.p = q, .times = tt};
            report(ename(as(who[w], op_utimens, &explicit_)), "times/who/%s/%s/explicit", fmodes[m].name, who[w]->name);
            struct args nowa = {.p = q, .times = NULL};
            report(ename(as(who[w], op_utimens, &nowa)), "times/who/%s/%s/now", fmodes[m].name, who[w]->name);
            struct timespec nn[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
            struct args nown = {.p = q, .times = nn};
            report(ename(as(who[w], op_utimens, &nown)), "times/who/%s/%s/utime-now", fmodes[m].name, who[w]->name);
        }

    /* What changes which time. Old times first, then the operation: did mtime/ctime move? */
    struct timespec old[2] = {{1000000000, 0}, {1000000000, 0}};
    static const char *actions[] = {"write", "truncate", "chmod", "chown", "link", "rename", "xattr", "create-in-dir", "unlink-in-dir"};
    for (int a = 0; a < 9; a++) {
        char *f = path("times/act-%s", actions[a]);
        char *d = path("times/actdir-%s", actions[a]);
        make(K_REG, f, 0, 0, 0666);
        put(f, "hello");
        mkdir_as_root(d, 0777, 0, 0);
        make(K_REG, path("times/actdir-%s/x", actions[a]), 0, 0, 0644);
        utimensat(AT_FDCWD, f, old, 0);
        utimensat(AT_FDCWD, d, old, 0);
        struct stat before, after, dbefore, dafter;
        stat(f, &before);
        stat(d, &dbefore);
        usleep(20000);
        const char *target = f;
        switch (a) {
        case 0: { int fd = open(f, O_WRONLY); if (write(fd, "x", 1) != 1) die(f); close(fd); break; }
        case 1: if (truncate(f, 1)) die(f); break;
        case 2: if (chmod(f, 0600)) die(f); break;
        case 3: if (chown(f, 1000, 1000)) die(f); break;
        case 4: if (link(f, path("times/act-link-2"))) die(f); break;
        case 5: if (rename(f, path("times/act-rename-2"))) die(f); target = path("times/act-rename-2"); break;
        case 6: if (setxattr(f, "user.t", "v", 1, 0)) die(f); break;
        case 7: make(K_REG, path("times/actdir-%s/new", actions[a]), 0, 0, 0644); break;
        case 8: if (unlink(path("times/actdir-%s/x", actions[a]))) die(f); break;
        }
        stat(target, &after);
        stat(d, &dafter);
        char b[128];
        snprintf(b, sizeof b, "mtime=%s,ctime=%s,dir-mtime=%s,dir-ctime=%s",
                 later(&after.st_mtim, &before.st_mtim) ? "moved" : "same",
                 later(&after.st_ctim, &before.st_ctim) ? "moved" : "same",
                 later(&dafter.st_mtim, &dbefore.st_mtim) ? "moved" : "same",
                 later(&dafter.st_ctim, &dbefore.st_ctim) ? "moved" : "same");
        report(b, "times/changes/%s", actions[a]);
    }
}

/* Hard links, symlinks and their counts. */
static void links(void) {
    mkdir_as_root(path("links"), 0777, 0, 0);
    char *f = path("links/f");
    make(K_REG, f, OWNER.uid, OWNER.gid, 0644);
    report(ename(ERR(link(f, path("links/f2")))), "links/link");
    report(statstr(f, 1), "links/nlink-2");
    report(ename(ERR(link(f, path("links/f2")))), "links/link-exists");
    if (chmod(path("links/f2"), 0600)) die(f);
    report(statstr(f, 1), "links/chmod-through-other-name");
    report(ename(ERR(unlink(path("links/f2")))), "links/unlink-one");
    report(statstr(f, 1), "links/nlink-1");
    char *d = path("links/d");
    mkdir_as_root(d, 0755, 0, 0);
    report(ename(ERR(link(d, path("links/d2")))), "links/link-directory");
    report(statstr(d, 1), "links/dir-nlink-empty");
    mkdir_as_root(path("links/d/sub1"), 0755, 0, 0);
    mkdir_as_root(path("links/d/sub2"), 0755, 0, 0);
    report(statstr(d, 1), "links/dir-nlink-two-subdirs");
    rmdir(path("links/d/sub1"));
    report(statstr(d, 1), "links/dir-nlink-after-rmdir");
    report(ename(ERR(link(path("links/missing"), path("links/m2")))), "links/link-missing");
    report(ename(ERR(link(f, path("links/missing-dir/x")))), "links/link-into-missing");
    /* Linking others' files: the guest kernel's protected_hardlinks decides; both filesystems
     * see the same setting. */
    char *rootf = path("links/rootfile");
    make(K_REG, rootf, 0, 0, 0600);
    struct args la = {.p = rootf, .q = path("links/by-owner")};
    report(ename(as(&OWNER, op_link, &la)), "links/user-links-root-file");
    /* Symlinks. */
    char *s = path("links/sym");
    report(ename(ERR(symlink("f", s))), "links/symlink");
    struct stat st;
    lstat(s, &st);
    char b[128];
    snprintf(b, sizeof b, "mode=%o,size=%lld", st.st_mode, (long long)st.st_size);
    report(b, "links/symlink-lstat");
    char target[64] = {0};
    ssize_t n = readlink(s, target, sizeof target - 1);
    report(n >= 0 ? target : ename(errno), "links/readlink");
    report(ename(ERR(stat(s, &st))), "links/stat-through");
    report(ename(ERR(symlink("nowhere", path("links/dangling")))), "links/symlink-dangling");
    report(ename(ERR(stat(path("links/dangling"), &st))), "links/stat-dangling");
    report(ename(ERR(symlink("loop", path("links/loop")))), "links/symlink-loop");
    report(ename(ERR(stat(path("links/loop"), &st))), "links/stat-loop");
    report(ename(ERR(symlink("x", s))), "links/symlink-exists");
    char longt[4100];
    memset(longt, 'a', 4095);
    longt[4095] = 0;
    report(ename(ERR(symlink(longt, path("links/long-target")))), "links/symlink-4095");
    report(ename(ERR(readlink(f, target, sizeof target))), "links/readlink-not-symlink");
    report(ename(ERR(open(path("links/sym"), O_RDONLY | O_NOFOLLOW))), "links/open-nofollow");
    struct args us = {.p = s, .uid = OTHER.uid, .gid = OTHER.gid};
    int r = as(&ROOT, op_lchown, &us);
    report(join(ename(r), statstr(s, 0)), "links/lchown-root");
}

/* Renames of every shape. */
static void renames(void) {
    mkdir_as_root(path("ren"), 0777, 0, 0);
#define F(n) make(K_REG, path("ren/" n), 0, 0, 0644)
#define D(n) mkdir_as_root(path("ren/" n), 0755, 0, 0)
    F("a");
    report(ename(ERR(rename(path("ren/a"), path("ren/b")))), "rename/file");
    report(ename(ERR(stat(path("ren/a"), &(struct stat){0}))), "rename/old-gone");
    F("c");
    put(path("ren/c"), "new");
    report(ename(ERR(rename(path("ren/c"), path("ren/b")))), "rename/over-file");
    {
        char buf[8] = {0};
        int fd = open(path("ren/b"), O_RDONLY);
        ssize_t n = fd >= 0 ? read(fd, buf, 7) : -1;
        if (fd >= 0) close(fd);
        report(n == 3 && !strcmp(buf, "new") ? "ok" : "bad", "rename/over-file-content");
    }
    D("d1");
    D("d2");
    report(ename(ERR(rename(path("ren/d1"), path("ren/d2")))), "rename/dir-over-empty-dir");
    D("d3");
    D("d4");
    F("d4/x");
    report(ename(ERR(rename(path("ren/d3"), path("ren/d4")))), "rename/dir-over-nonempty");
    F("e");
    D("d5");
    report(ename(ERR(rename(path("ren/e"), path("ren/d5")))), "rename/file-over-dir");
    report(ename(ERR(rename(path("ren/d5"), path("ren/e")))), "rename/dir-over-file");
    D("d6");
    D("d6/sub");
    report(ename(ERR(rename(path("ren/d6"), path("ren/d6/sub/x")))), "rename/dir-into-itself");
    report(ename(ERR(rename(path("ren/e"), path("ren/e")))), "rename/same-name");
    if (link(path("ren/e"), path("ren/e2"))) die("link");
    report(ename(ERR(rename(path("ren/e"), path("ren/e2")))), "rename/hardlink-onto-itself");
    report(join(ename(ERR(access(path("ren/e"), F_OK))), ename(ERR(access(path("ren/e2"), F_OK)))), "rename/hardlink-both-stay");
    report(ename(ERR(rename(path("ren/missing"), path("ren/z")))), "rename/missing");
    report(ename(ERR(rename(path("ren/e2"), path("ren/nodir/x")))), "rename/into-missing-dir");
    D("d7");
    F("d7/f");
    report(ename(ERR(rename(path("ren/d7/f"), path("ren/moved")))), "rename/across-dirs");
    D("d8");
    D("d8/child");
    report(ename(ERR(rename(path("ren/d8/child"), path("ren/child-moved")))), "rename/dir-across-dirs");
    report(statstr(path("ren/d8"), 1), "rename/dir-across-parent-nlink");
    report(ename(ERR(rename(path("ren/d8"), path("ren/d8-renamed")))), "rename/dir-with-children");
    report(ename(ERR(stat(path("ren/d8-renamed"), &(struct stat){0}))), "rename/dir-renamed-present");
    F("n1");
    F("n2");
    report(ename(ERR(renameat2(AT_FDCWD, path("ren/n1"), AT_FDCWD, path("ren/n2"), RENAME_NOREPLACE))), "rename/noreplace-exists");
    report(ename(ERR(renameat2(AT_FDCWD, path("ren/n1"), AT_FDCWD, path("ren/n3"), RENAME_NOREPLACE))), "rename/noreplace-free");
    report(ename(ERR(renameat2(AT_FDCWD, path("ren/n1"), AT_FDCWD, path("ren/n2"), RENAME_EXCHANGE))), "rename/exchange");
    /* Renaming a directory a user owns into a directory he may write needs write on the
     * directory itself (its ".." changes). */
    mkdir_as_root(path("ren/userdir"), 0777, 0, 0);
    mkdir_as_root(path("ren/userdir/ro-child"), 0555, OWNER.uid, OWNER.gid);
    struct args a = {.p = path("ren/userdir/ro-child"), .q = path("ren/ro-child-moved")};
    report(ename(as(&OWNER, op_rename, &a)), "rename/dir-without-write-to-other-parent");
    mkdir_as_root(path("ren/userdir/rw-child"), 0755, OWNER.uid, OWNER.gid);
    struct args b = {.p = path("ren/userdir/rw-child"), .q = path("ren/rw-child-moved")};
    report(ename(as(&OWNER, op_rename, &b)), "rename/dir-with-write-to-other-parent");
#undef F
#undef D
}

/* Extended attributes: namespaces, flags, sizes, kinds and permissions. */
static void xattrs(void) {
    mkdir_as_root(path("xattr"), 0777, 0, 0);
    char *f = path("xattr/f");
    make(K_REG, f, OWNER.uid, OWNER.gid, 0644);
    char buf[8192];
    report(ename(ERR(setxattr(f, "user.a", "1", 1, 0))), "xattr/set");
    ssize_t n = getxattr(f, "user.a", buf, sizeof buf);
    report(n == 1 && buf[0] == '1' ? "ok" : ename(errno), "xattr/get");
    report(ename(ERR(setxattr(f, "user.a", "2", 1, XATTR_CREATE))), "xattr/create-exists");
    report(ename(ERR(setxattr(f, "user.b", "2", 1, XATTR_REPLACE))), "xattr/replace-missing");
    report(ename(ERR(setxattr(f, "user.a", "22", 2, XATTR_REPLACE))), "xattr/replace");
    n = getxattr(f, "user.a", NULL, 0);
    report(n >= 0 ? (n == 2 ? "size=2" : "size=?") : ename(errno), "xattr/size-query");
    report(ename(ERR(getxattr(f, "user.a", buf, 1))), "xattr/get-small-buffer");
    report(ename(ERR(getxattr(f, "user.none", buf, sizeof buf))), "xattr/get-missing");
    report(ename(ERR(setxattr(f, "user.empty", "", 0, 0))), "xattr/set-empty");
    n = getxattr(f, "user.empty", buf, sizeof buf);
    report(n == 0 ? "ok" : ename(errno), "xattr/get-empty");
    memset(buf, 'v', 2000);
    report(ename(ERR(setxattr(f, "user.big", buf, 2000, 0))), "xattr/set-2000");
    n = getxattr(f, "user.big", buf, sizeof buf);
    report(n == 2000 ? "ok" : ename(errno), "xattr/get-2000");
    char longname[300] = "user.";
    memset(longname + 5, 'n', 260);
    longname[265] = 0;
    report(ename(ERR(setxattr(f, longname, "1", 1, 0))), "xattr/name-too-long");
    report(ename(ERR(setxattr(f, "bogus.a", "1", 1, 0))), "xattr/unknown-namespace");
    report(ename(ERR(setxattr(f, "trusted.t", "1", 1, 0))), "xattr/trusted-root");
    report(ename(ERR(setxattr(f, "security.s", "1", 1, 0))), "xattr/security-root");
    char list[4096], names[1024];
    n = listxattr(f, list, sizeof list);
    if (n >= 0) sorted_names(list, n, names, sizeof names);
    report(n >= 0 ? names : ename(errno), "xattr/list-root");
    report(ename(ERR(listxattr(f, list, 3))), "xattr/list-small-buffer");
    struct args la = {.p = f};
    int r = as(&OWNER, op_listxattr, &la);
    report(r ? ename(r) : shared, "xattr/list-owner");
    report(ename(ERR(removexattr(f, "user.a"))), "xattr/remove");
    report(ename(ERR(removexattr(f, "user.a"))), "xattr/remove-missing");
    report(ename(ERR(getxattr(f, "user.a", buf, sizeof buf))), "xattr/get-removed");

    /* Who may set user.* (write access), trusted.* (root); which kinds take user.* at all. */
    const struct user *who[] = {&OWNER, &GSUPP, &OTHER, &ROOT};
    static const mode_t fm[] = {0644, 0664, 0666};
    for (int m = 0; m < 3; m++)
        for (int w = 0; w < 4; w++) {
            char *p = path("xattr/perm-%04o-%s", fm[m], who[w]->name);
            make(K_REG, p, OWNER.uid, FILE_GROUP, fm[m]);
            if (setxattr(p, "user.pre", "x", 1, 0)) die(p);
            struct args s1 = {.p = p, .q = "user.k", .s = "v"};
            report(ename(as(who[w], op_setxattr, &s1)), "xattr/who/%04o/%s/set-user", fm[m], who[w]->name);
            struct args g1 = {.p = p, .q = "user.pre"};
            report(ename(as(who[w], op_getxattr, &g1)), "xattr/who/%04o/%s/get-user", fm[m], who[w]->name);
            struct args r1 = {.p = p, .q = "user.pre"};
            report(ename(as(who[w], op_removexattr, &r1)), "xattr/who/%04o/%s/remove-user", fm[m], who[w]->name);
            struct args t1 = {.p = p, .q = "trusted.k", .s = "v"};
            report(ename(as(who[w], op_setxattr, &t1)), "xattr/who/%04o/%s/set-trusted", fm[m], who[w]->name);
        }
    for (int k = 0; k < K_COUNT; k++) {
        char *p = path("xattr/kind-%s", kind_name[k]);
        make((enum kind)k, p, OWNER.uid, OWNER.gid, 0666);
        struct args s1 = {.p = p, .q = "user.k", .s = "v"};
        report(ename(as(&OWNER, op_setxattr, &s1)), "xattr/kind/%s/owner-set-user", kind_name[k]);
        report(ename(as(&ROOT, op_setxattr, &s1)), "xattr/kind/%s/root-set-user", kind_name[k]);
        struct args t1 = {.p = p, .q = "trusted.k", .s = "v"};
        report(ename(as(&ROOT, op_setxattr, &t1)), "xattr/kind/%s/root-set-trusted", kind_name[k]);
    }
    char *sl = path("xattr/symlink");
    if (symlink("f", sl)) die(sl);
    report(ename(ERR(lsetxattr(sl, "user.k", "v", 1, 0))), "xattr/kind/symlink/root-set-user");
    report(ename(ERR(lsetxattr(sl, "trusted.k", "v", 1, 0))), "xattr/kind/symlink/root-set-trusted");
    /* In a sticky directory, user.* of another's directory needs ownership. */
    char *sd = path("xattr/sticky");
    mkdir_as_root(sd, 01777, OTHER.uid, OTHER.gid);
    struct args s2 = {.p = sd, .q = "user.k", .s = "v"};
    report(ename(as(&OWNER, op_setxattr, &s2)), "xattr/sticky-dir/nonowner");
    report(ename(as(&OTHER, op_setxattr, &s2)), "xattr/sticky-dir/owner");
    /* trusted.* stays hidden from other users' listings. */
    char *h = path("xattr/hidden");
    make(K_REG, h, OWNER.uid, OWNER.gid, 0644);
    if (setxattr(h, "trusted.secret", "1", 1, 0) || setxattr(h, "user.visible", "1", 1, 0)) die(h);
    struct args lh = {.p = h};
    r = as(&OWNER, op_listxattr, &lh);
    report(r ? ename(r) : shared, "xattr/list-hides-trusted");
    r = as(&ROOT, op_listxattr, &lh);
    report(r ? ename(r) : shared, "xattr/list-root-sees-trusted");
    struct args gh = {.p = h, .q = "trusted.secret"};
    report(ename(as(&OWNER, op_getxattr, &gh)), "xattr/get-trusted-as-user");
}

/* The errors of everyday mistakes. */
static void errors(void) {
    mkdir_as_root(path("err"), 0777, 0, 0);
    make(K_REG, path("err/f"), 0, 0, 0644);
    mkdir_as_root(path("err/d"), 0755, 0, 0);
    make(K_REG, path("err/d/x"), 0, 0, 0644);
    struct stat st;
    report(ename(ERR(stat(path("err/missing"), &st))), "err/stat-missing");
    report(ename(ERR(stat(path("err/f/x"), &st))), "err/stat-through-file");
    report(ename(ERR(mkdir(path("err/d"), 0755))), "err/mkdir-exists");
    report(ename(ERR(mkdir(path("err/f"), 0755))), "err/mkdir-over-file");
    report(ename(ERR(rmdir(path("err/d")))), "err/rmdir-nonempty");
    report(ename(ERR(rmdir(path("err/f")))), "err/rmdir-file");
    report(ename(ERR(unlink(path("err/d")))), "err/unlink-dir");
    report(ename(ERR(open(path("err/d"), O_WRONLY))), "err/open-dir-write");
    report(ename(ERR(open(path("err/f"), O_RDONLY | O_DIRECTORY))), "err/open-file-directory");
    report(ename(ERR(open(path("err/f"), O_CREAT | O_EXCL | O_WRONLY, 0644))), "err/create-exclusive-exists");
    report(ename(ERR(open(path("err/missing"), O_RDONLY))), "err/open-missing");
    report(ename(ERR(rmdir(path("err/d/.")))), "err/rmdir-dot");
    char name[300];
    memset(name, 'a', 255);
    name[255] = 0;
    int fd = open(path("err/%s", name), O_CREAT | O_WRONLY, 0644);
    report(ename(fd < 0 ? errno : 0), "err/name-255");
    if (fd >= 0) close(fd);
    name[255] = 'a';
    name[256] = 0;
    report(ename(ERR(open(path("err/%s", name), O_CREAT | O_WRONLY, 0644))), "err/name-256");
    report(ename(ERR(stat(path("err/%s", name), &st))), "err/stat-name-256");
    report(ename(ERR(truncate(path("err/d"), 0))), "err/truncate-dir");
    report(ename(ERR(truncate(path("err/f"), -1))), "err/truncate-negative");
    /* Writes and reads at odd places. */
    fd = open(path("err/f"), O_RDWR);
    if (fd < 0) die("err/f");
    report(pwrite(fd, "z", 1, 1 << 20) == 1 ? "ok" : ename(errno), "err/write-past-end");
    fstat(fd, &st);
    char b[64];
    snprintf(b, sizeof b, "size=%lld", (long long)st.st_size);
    report(b, "err/size-after-sparse-write");
    char c = 'q';
    report(pread(fd, &c, 1, 1000) == 1 && c == 0 ? "zero" : "bad", "err/read-hole");
    report(pread(fd, &c, 1, 2 << 20) == 0 ? "eof" : "bad", "err/read-past-end");
    close(fd);
    fd = open(path("err/f"), O_RDONLY);
    report(ename(write(fd, "x", 1) < 0 ? errno : 0), "err/write-readonly-fd");
    close(fd);
    /* An unlinked open file stays readable. */
    make(K_REG, path("err/unl"), 0, 0, 0644);
    put(path("err/unl"), "still here");
    fd = open(path("err/unl"), O_RDONLY);
    unlink(path("err/unl"));
    memset(b, 0, sizeof b);
    report(fd >= 0 && read(fd, b, sizeof b - 1) == 10 && !strcmp(b, "still here") ? "ok" : "bad", "err/read-unlinked-open");
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv) {
    int i = 1;
    if (argc > 1 && !strcmp(argv[1], "-q")) {
        quick = 1;
        i++;
    }
    if (i != argc - 1) {
        fprintf(stderr, "usage: pvfs-posix-suite [-q] DIR\n");
        return 2;
    }
    base = argv[i];
    umask(022);
    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) die("mmap");
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct stat st;
    if (stat(base, &st) != 0 || !S_ISDIR(st.st_mode)) die(base);
    if (chmod(base, 0755) != 0) die(base);

    open_matrix();
    directory_matrix();
    chown_matrix();
    chmod_matrix();
    setid_clearing();
    sticky();
    ownership();
    special_files();
    times_();
    links();
    renames();
    xattrs();
    errors();
    printf("END %ld\n", cases);
    return 0;
}
