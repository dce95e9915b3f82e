/* bench/9p-guest-bench.c: the guest side of bench/9p-vs-diod.sh (built static on the host).
 *
 *   9p-guest-bench now              print CLOCK_REALTIME as SECONDS.NANOSECONDS (busybox date lacks %N)
 *   9p-guest-bench create DIR N     mkdir DIR, then N files f0..f(N-1) of 64 bytes each
 *   9p-guest-bench stat DIR N       stat every file
 *   9p-guest-bench readdir DIR      read the whole directory (prints the entry count)
 *   9p-guest-bench lsl DIR          read the directory and lstat every entry (ls -l)
 *   9p-guest-bench unlink DIR N     unlink every file, then rmdir DIR
 *
 * The loops run in one process with plain system calls, so that what is measured is the 9P round
 * trips and not the shell's forks (costly under emulation). Exit status 1 on the first failure. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what, const char *path) {
    fprintf(stderr, "9p-guest-bench: %s %s: %s\n", what, path, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "now")) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        printf("%lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
        return 0;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: 9p-guest-bench now | create|stat|unlink DIR N | readdir|lsl DIR\n");
        return 2;
    }
    const char *cmd = argv[1], *dir = argv[2];
    long n = argc > 3 ? strtol(argv[3], NULL, 10) : 0;
    char path[4096];
    static const char payload[64] = "9p-guest-bench small file payload.............................\n";

    if (!strcmp(cmd, "create")) {
        if (mkdir(dir, 0755) != 0) return fail("mkdir", dir);
        for (long i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/f%ld", dir, i);
            int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
            if (fd < 0) return fail("create", path);
            if (write(fd, payload, sizeof payload) != (ssize_t)sizeof payload) return fail("write", path);
            if (close(fd) != 0) return fail("close", path);
        }
        return 0;
    }
    if (!strcmp(cmd, "stat")) {
        struct stat st;
        for (long i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/f%ld", dir, i);
            if (stat(path, &st) != 0) return fail("stat", path);
            if (st.st_size != (off_t)sizeof payload) { errno = EIO; return fail("size of", path); }
        }
        return 0;
    }
    if (!strcmp(cmd, "readdir") || !strcmp(cmd, "lsl")) {
        int withStat = !strcmp(cmd, "lsl");
        DIR *d = opendir(dir);
        if (!d) return fail("opendir", dir);
        long count = 0;
        struct dirent *e;
        struct stat st;
        errno = 0;
        while ((e = readdir(d)) != NULL) {
            count++;
            if (withStat) {
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                if (lstat(path, &st) != 0) return fail("lstat", path);
            }
            errno = 0;
        }
        if (errno != 0) return fail("readdir", dir);
        closedir(d);
        printf("%ld\n", count);
        return 0;
    }
    if (!strcmp(cmd, "unlink")) {
        for (long i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/f%ld", dir, i);
            if (unlink(path) != 0) return fail("unlink", path);
        }
        if (rmdir(dir) != 0) return fail("rmdir", dir);
        return 0;
    }
    fprintf(stderr, "9p-guest-bench: unknown command %s\n", cmd);
    return 2;
}
