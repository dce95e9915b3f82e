/*
 * pvfs-guest-helper: a tiny static program for the guest tests.
 *
 * Busybox has no setfattr/getfattr, no way to drop to another uid without a
 * passwd database, and its tools report errors as free text. This helper makes
 * single system calls and reports the outcome in a fixed form so that the
 * guest's fileops.sh can check exact errno values:
 *
 *   success:  prints "OK" (or the requested data) on stdout, exit 0
 *   failure:  prints "ERR <ENAME> <strerror>" on stdout, exit 1
 *   bad use:  message on stderr, exit 2
 *
 * Built on the host with `cc -static -Os` by Tests/guest/lib.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static const char *errno_name(int e) {
    switch (e) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(EIO) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT)
    E(EBUSY) E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL)
    E(ENFILE) E(EMFILE) E(ETXTBSY) E(EFBIG) E(ENOSPC) E(ESPIPE) E(EROFS)
    E(EMLINK) E(ERANGE) E(ENAMETOOLONG) E(ENOSYS) E(ENOTEMPTY) E(ELOOP)
    E(ENODATA) E(EOVERFLOW) E(EOPNOTSUPP) E(EDQUOT) E(ESTALE)
#undef E
    default: return "E?";
    }
}

static int fail(void) {
    int e = errno;
    printf("ERR %s %s\n", errno_name(e), strerror(e));
    return 1;
}

static int ok(void) { puts("OK"); return 0; }

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(void) {
    fprintf(stderr,
        "usage: pvfs-guest-helper CMD ARGS\n"
        "  setxattr PATH NAME VALUE      getxattr PATH NAME\n"
        "  listxattr PATH                removexattr PATH NAME\n"
        "  rename OLD NEW                link OLD NEW\n"
        "  mkdir PATH MODE(octal)        rmdir PATH\n"
        "  unlink PATH                   open PATH r|w|c|x|a   (x = O_CREAT|O_EXCL)\n"
        "  statfs PATH                   (bsize blocks bfree bavail files ffree type)\n"
        "  write PATH BYTES              (O_CREAT|O_TRUNC; prints bytes written)\n"
        "  utime PATH SECONDS            (sets atime and mtime)\n"
        "  runas UID GID CMD [ARGS...]   (drops supplementary groups; exit 127 and\n"
        "                                \"RUNAS-FAILED ...\" if it cannot switch or exec)\n"
        "  smallfiles DIR N              (creates N 4 KiB files, stats and unlinks them;\n"
        "                                prints \"create S stat S unlink S OK\", seconds)\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *cmd = argv[1];
    char **a = argv + 2;
    int n = argc - 2;

    if (!strcmp(cmd, "setxattr") && n == 3) {
        if (lsetxattr(a[0], a[1], a[2], strlen(a[2]), 0) != 0) return fail();
        return ok();
    }
    if (!strcmp(cmd, "getxattr") && n == 2) {
        char buf[65536];
        ssize_t r = lgetxattr(a[0], a[1], buf, sizeof buf);
        if (r < 0) return fail();
        fwrite(buf, 1, (size_t)r, stdout);
        putchar('\n');
        return 0;
    }
    if (!strcmp(cmd, "listxattr") && n == 1) {
        char buf[65536];
        ssize_t r = llistxattr(a[0], buf, sizeof buf);
        if (r < 0) return fail();
        for (ssize_t i = 0; i < r; i += (ssize_t)strlen(buf + i) + 1) puts(buf + i);
        return 0;
    }
    if (!strcmp(cmd, "removexattr") && n == 2) {
        if (lremovexattr(a[0], a[1]) != 0) return fail();
        return ok();
    }
    if (!strcmp(cmd, "rename") && n == 2) {
        if (rename(a[0], a[1]) != 0) return fail();
        return ok();
    }
    if (!strcmp(cmd, "link") && n == 2) {
        if (link(a[0], a[1]) != 0) return fail();
        return ok();
    }
    if (!strcmp(cmd, "mkdir") && n == 2) {
        if (mkdir(a[0], (mode_t)strtol(a[1], NULL, 8)) != 0) return fail();
        return ok();
    }
    if (!strcmp(cmd, "rmdir") && n == 1) {
        if (rmdir(a[0]) != 0) return fail();
        return ok();
    }
    if (!strcmp(cmd, "unlink") && n == 1) {
        if (unlink(a[0]) != 0) return fail();
        return ok();
    }
    if (!strcmp(cmd, "open") && n == 2) {
        int flags;
        switch (a[1][0]) {
        case 'r': flags = O_RDONLY; break;
        case 'w': flags = O_WRONLY; break;
        case 'c': flags = O_WRONLY | O_CREAT; break;
        case 'x': flags = O_WRONLY | O_CREAT | O_EXCL; break;
        case 'a': flags = O_WRONLY | O_APPEND; break;
        default: return usage();
        }
        int fd = open(a[0], flags, 0644);
        if (fd < 0) return fail();
        close(fd);
        return ok();
    }
    if (!strcmp(cmd, "statfs") && n == 1) {
        struct statfs s;
        if (statfs(a[0], &s) != 0) return fail();
        printf("%ld %llu %llu %llu %llu %llu 0x%lx\n", (long)s.f_bsize,
               (unsigned long long)s.f_blocks, (unsigned long long)s.f_bfree,
               (unsigned long long)s.f_bavail, (unsigned long long)s.f_files,
               (unsigned long long)s.f_ffree, (unsigned long)s.f_type);
        return 0;
    }
    if (!strcmp(cmd, "write") && n == 2) {
        long long want = atoll(a[1]), done = 0;
        static char buf[1 << 16];
        int fd = open(a[0], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return fail();
        while (done < want) {
            size_t chunk = (size_t)((want - done) < (long long)sizeof buf ? (want - done) : (long long)sizeof buf);
            ssize_t w = write(fd, buf, chunk);
            if (w < 0) {
                int e = errno;
                close(fd);
                printf("%lld ", done);
                errno = e;
                return fail();
            }
            done += w;
        }
        if (fsync(fd) != 0 || close(fd) != 0) {
            printf("%lld ", done);
            return fail();
        }
        printf("%lld OK\n", done);
        return 0;
    }
    if (!strcmp(cmd, "utime") && n == 2) {
        struct timespec ts[2];
        ts[0].tv_sec = ts[1].tv_sec = (time_t)atoll(a[1]);
        ts[0].tv_nsec = ts[1].tv_nsec = 0;
        if (utimensat(AT_FDCWD, a[0], ts, AT_SYMLINK_NOFOLLOW) != 0) return fail();
        return ok();
    }
    if (!strcmp(cmd, "runas") && n >= 3) {
        uid_t uid = (uid_t)atol(a[0]);
        gid_t gid = (gid_t)atol(a[1]);
        /* Failures here must not look like the checked operation's errno. */
        if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
            printf("RUNAS-FAILED setuid: %s\n", strerror(errno));
            return 127;
        }
        execvp(a[2], a + 2);
        printf("RUNAS-FAILED exec %s: %s\n", a[2], strerror(errno));
        return 127;
    }
    if (!strcmp(cmd, "smallfiles") && n == 2) {
        /* The benchmark's metadata phase in one process: a fork per file would cost more
         * than the file operation itself in an emulated guest. */
        long count = atol(a[1]);
        static char data[4096];
        char path[4096];
        double t[4];
        struct stat st;
        memset(data, 'x', sizeof data);
        t[0] = now_seconds();
        for (long i = 0; i < count; i++) {
            snprintf(path, sizeof path, "%s/f%ld", a[0], i);
            int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0) return fail();
            if (write(fd, data, sizeof data) != (ssize_t)sizeof data) return fail();
            if (close(fd) != 0) return fail();
        }
        t[1] = now_seconds();
        for (long i = 0; i < count; i++) {
            snprintf(path, sizeof path, "%s/f%ld", a[0], i);
            if (stat(path, &st) != 0) return fail();
            if (st.st_size != (off_t)sizeof data) { errno = EIO; return fail(); }
        }
        t[2] = now_seconds();
        for (long i = 0; i < count; i++) {
            snprintf(path, sizeof path, "%s/f%ld", a[0], i);
            if (unlink(path) != 0) return fail();
        }
        t[3] = now_seconds();
        printf("create %.3f stat %.3f unlink %.3f OK\n", t[1] - t[0], t[2] - t[1], t[3] - t[2]);
        return 0;
    }
    return usage();
}
