"""File data: append, truncate, sparse files and holes, mmap, fallocate, copy_file_range."""
import errno
import mmap
import os

import pytest

from conftest import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, expect_errno, fallocate, read_file, write_file


def test_append_writes_at_the_end(d):
    write_file(f"{d}/f", b"12345")
    fd = os.open(f"{d}/f", os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"ab")
        os.pwrite(fd, b"cd", 0)  # Linux ignores the offset of pwrite on O_APPEND
    finally:
        os.close(fd)
    assert read_file(f"{d}/f") == b"12345abcd"


def test_append_from_two_descriptors(d):
    write_file(f"{d}/f")
    a = os.open(f"{d}/f", os.O_WRONLY | os.O_APPEND)
    b = os.open(f"{d}/f", os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(50):
            os.write(a, b"a" * 10)
            os.write(b, b"b" * 10)
    finally:
        os.close(a)
        os.close(b)
    data = read_file(f"{d}/f")
    assert len(data) == 1000
    assert data.count(b"a") == 500


def test_o_trunc(d):
    write_file(f"{d}/f", b"long content")
    fd = os.open(f"{d}/f", os.O_RDWR | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert read_file(f"{d}/f") == b"new"
    # O_TRUNC with O_RDONLY is unspecified; Linux truncates only writable opens... of regular
    # files it does truncate. Only check that a read-only open without O_TRUNC keeps data.
    os.close(os.open(f"{d}/f", os.O_RDONLY))
    assert read_file(f"{d}/f") == b"new"


def test_truncate_extends_with_zeros(d):
    write_file(f"{d}/f", b"abc")
    os.truncate(f"{d}/f", 10)
    assert read_file(f"{d}/f") == b"abc" + b"\0" * 7
    os.truncate(f"{d}/f", 2)
    assert read_file(f"{d}/f") == b"ab"
    fd = os.open(f"{d}/f", os.O_RDWR)
    try:
        os.ftruncate(fd, 5)
        assert os.fstat(fd).st_size == 5
        os.pwrite(fd, b"Z", 4)
    finally:
        os.close(fd)
    assert read_file(f"{d}/f") == b"ab\0\0Z"


def test_sparse_file_and_seek_hole(d):
    fd = os.open(f"{d}/sparse", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * 4096, 1 << 20)
        os.pwrite(fd, b"y" * 4096, 8 << 20)
        st = os.fstat(fd)
        assert st.st_size == (8 << 20) + 4096
        assert st.st_blocks * 512 < 1 << 20, "holes take no space"
        assert os.pread(fd, 4, 0) == b"\0" * 4
        data = os.lseek(fd, 0, os.SEEK_DATA)
        assert data == 1 << 20
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        assert (1 << 20) + 4096 <= hole <= 8 << 20
        assert os.lseek(fd, hole, os.SEEK_DATA) == 8 << 20
        assert os.lseek(fd, 8 << 20, os.SEEK_HOLE) == st.st_size
        expect_errno(errno.ENXIO, os.lseek, fd, st.st_size, os.SEEK_DATA)
        expect_errno(errno.ENXIO, os.lseek, fd, st.st_size + 1, os.SEEK_HOLE)
    finally:
        os.close(fd)


def test_seek_on_empty_file(d):
    write_file(f"{d}/empty")
    fd = os.open(f"{d}/empty", os.O_RDONLY)
    try:
        expect_errno(errno.ENXIO, os.lseek, fd, 0, os.SEEK_DATA)
        assert os.lseek(fd, 0, os.SEEK_END) == 0
    finally:
        os.close(fd)


def test_large_write_read_roundtrip(d):
    import hashlib
    chunk = os.urandom(1 << 20)
    with open(f"{d}/big", "wb") as f:
        for i in range(16):
            f.write(bytes([i]) + chunk[1:])
    h = hashlib.sha256()
    with open(f"{d}/big", "rb") as f:
        while True:
            b = f.read(1 << 17)
            if not b:
                break
            h.update(b)
    expected = hashlib.sha256()
    for i in range(16):
        expected.update(bytes([i]) + chunk[1:])
    assert h.digest() == expected.digest()


def test_unaligned_pread_pwrite(d):
    write_file(f"{d}/f", bytes(range(256)) * 64)
    fd = os.open(f"{d}/f", os.O_RDWR)
    try:
        os.pwrite(fd, b"HELLO", 4093)
        assert os.pread(fd, 9, 4091) == bytes([251, 252]) + b"HELLO" + bytes([2, 3])
        assert os.pread(fd, 100, 16380) == bytes(range(252, 256))
        assert os.pread(fd, 100, 1 << 30) == b""
    finally:
        os.close(fd)


def test_mmap_shared_write_and_read(d):
    write_file(f"{d}/f", b"\0" * 8192)
    fd = os.open(f"{d}/f", os.O_RDWR)
    try:
        m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[4090:4100] = b"0123456789"
        m.flush()
        m.close()
    finally:
        os.close(fd)
    data = read_file(f"{d}/f")
    assert data[4090:4100] == b"0123456789"
    fd = os.open(f"{d}/f", os.O_RDONLY)
    try:
        m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ)
        assert m[4090:4100] == b"0123456789"
        m.close()
    finally:
        os.close(fd)


def test_fallocate(d):
    fd = os.open(f"{d}/f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fallocate(fd, 0, 0, 1 << 20)
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                pytest.skip("no fallocate")
            raise
        st = os.fstat(fd)
        assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 1 << 20
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20)
        assert os.fstat(fd).st_size == 1 << 20
        os.pwrite(fd, b"x" * 8192, 0)
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
        assert os.pread(fd, 4097, 0) == b"\0" * 4096 + b"x"
        assert os.fstat(fd).st_size == 1 << 20
    finally:
        os.close(fd)


def test_copy_file_range(d):
    payload = os.urandom(300_000)
    write_file(f"{d}/src", payload)
    src = os.open(f"{d}/src", os.O_RDONLY)
    dst = os.open(f"{d}/dst", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copied = 0
        while copied < len(payload):
            n = os.copy_file_range(src, dst, len(payload) - copied, copied, copied)
            assert n > 0
            copied += n
        n = os.copy_file_range(src, dst, 100, 10, 1_000_000)
        assert n == 100
    finally:
        os.close(src)
        os.close(dst)
    out = read_file(f"{d}/dst")
    assert out[:len(payload)] == payload
    assert out[1_000_000:1_000_100] == payload[10:110]


def test_fsync_and_fdatasync(d):
    fd = os.open(f"{d}/f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert read_file(f"{d}/f") == b"durable"


def test_statvfs(d):
    st = os.statvfs(d)
    assert st.f_bsize > 0 and st.f_blocks > 0
    assert st.f_bavail <= st.f_bfree <= st.f_blocks
    assert st.f_namemax == 255


def test_o_excl_create_is_atomic_across_processes(d):
    results = []
    pids = []
    for i in range(8):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                os.close(os.open(f"{d}/race", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                os.write(w, b"1")
            except OSError:
                os.write(w, b"0")
            os._exit(0)
        os.close(w)
        pids.append((pid, r))
    for pid, r in pids:
        results.append(os.read(r, 1))
        os.close(r)
        os.waitpid(pid, 0)
    assert results.count(b"1") == 1
