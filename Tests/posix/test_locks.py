"""fcntl (POSIX) and flock locks between processes."""
import errno
import fcntl
import os
import struct
import time

from conftest import write_file


def in_child(fn):
    """Runs fn in a forked child; returns what it returned (an int) through the exit status."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def getlk(fd, kind, start, length):
    """F_GETLK: (type, pid, start, len) of the conflicting lock."""
    request = struct.pack("hhqqi", kind, os.SEEK_SET, start, length, 0)
    out = fcntl.fcntl(fd, fcntl.F_GETLK, request)
    t, _, s, n, pid = struct.unpack("hhqqi", out)
    return t, pid, s, n


def test_posix_locks_conflict_between_processes(d):
    write_file(f"{d}/f", b"x" * 100)
    fd = os.open(f"{d}/f", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 20)  # bytes 20..29

        def child():
            cfd = os.open(f"{d}/f", os.O_RDWR)
            try:
                fcntl.lockf(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 25)
                return 1
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    return 2
            fcntl.lockf(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 30)  # free range
            t, pid, s, n = getlk(cfd, fcntl.F_WRLCK, 0, 0)
            if t != fcntl.F_WRLCK or pid != os.getppid() or (s, n) != (20, 10):
                return 3
            return 0
        assert in_child(child) == 0
        t, _, _, _ = getlk(fd, fcntl.F_WRLCK, 0, 0)
        assert t == fcntl.F_UNLCK, "own locks never conflict"
    finally:
        os.close(fd)


def test_shared_locks_coexist(d):
    write_file(f"{d}/f", b"x")
    fd = os.open(f"{d}/f", os.O_RDONLY)
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH)

        def child():
            cfd = os.open(f"{d}/f", os.O_RDWR)
            fcntl.lockf(cfd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            try:
                fcntl.lockf(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return 1
            except OSError:
                return 0
        assert in_child(child) == 0
    finally:
        os.close(fd)


def test_closing_any_descriptor_drops_the_process_locks(d):
    write_file(f"{d}/f", b"x")
    fd1 = os.open(f"{d}/f", os.O_RDWR)
    fd2 = os.open(f"{d}/f", os.O_RDWR)
    fcntl.lockf(fd1, fcntl.LOCK_EX)
    os.close(fd2)  # POSIX: this releases the lock taken through fd1

    def child():
        cfd = os.open(f"{d}/f", os.O_RDWR)
        fcntl.lockf(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return 0
    try:
        assert in_child(child) == 0
    finally:
        os.close(fd1)


def test_blocking_lock_waits_for_release(d):
    write_file(f"{d}/f", b"x")
    fd = os.open(f"{d}/f", os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        cfd = os.open(f"{d}/f", os.O_RDWR)
        fcntl.lockf(cfd, fcntl.LOCK_EX)  # blocks until the parent unlocks
        os.write(w, str(time.monotonic()).encode())
        os._exit(0)
    os.close(w)
    time.sleep(0.3)
    released = time.monotonic()
    fcntl.lockf(fd, fcntl.LOCK_UN)
    acquired = float(os.read(r, 100).decode())
    os.waitpid(pid, 0)
    os.close(r)
    os.close(fd)
    assert acquired >= released


def test_flock_between_processes(d):
    write_file(f"{d}/f", b"x")
    fd = os.open(f"{d}/f", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)

        def child():
            cfd = os.open(f"{d}/f", os.O_RDONLY)
            try:
                fcntl.flock(cfd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return 1
            except OSError as e:
                return 0 if e.errno == errno.EWOULDBLOCK else 2
        assert in_child(child) == 0
        fcntl.flock(fd, fcntl.LOCK_UN)

        def child2():
            cfd = os.open(f"{d}/f", os.O_RDONLY)
            fcntl.flock(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return 0
        assert in_child(child2) == 0
    finally:
        os.close(fd)


def test_flock_is_released_when_the_open_file_is_closed(d):
    write_file(f"{d}/f", b"x")
    fd = os.open(f"{d}/f", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(fd)

    def child():
        cfd = os.open(f"{d}/f", os.O_RDONLY)
        fcntl.flock(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return 0
    assert in_child(child) == 0


def test_flock_and_posix_locks_are_independent(d):
    write_file(f"{d}/f", b"x")
    fd = os.open(f"{d}/f", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)

        def child():
            cfd = os.open(f"{d}/f", os.O_RDWR)
            fcntl.lockf(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return 0
        assert in_child(child) == 0
    finally:
        os.close(fd)
