"""errno values of failing calls, as Linux local filesystems return them."""
import errno
import os

from conftest import expect_errno, write_file


def test_missing_names(d):
    expect_errno(errno.ENOENT, os.stat, f"{d}/nothing")
    expect_errno(errno.ENOENT, os.open, f"{d}/nothing", os.O_RDONLY)
    expect_errno(errno.ENOENT, os.unlink, f"{d}/nothing")
    expect_errno(errno.ENOENT, os.rmdir, f"{d}/nothing")
    expect_errno(errno.ENOENT, os.rename, f"{d}/nothing", f"{d}/other")
    expect_errno(errno.ENOENT, os.mkdir, f"{d}/no/such")
    expect_errno(errno.ENOENT, os.link, f"{d}/nothing", f"{d}/other")
    expect_errno(errno.ENOENT, os.readlink, f"{d}/nothing")


def test_existing_names(d):
    write_file(f"{d}/f")
    os.mkdir(f"{d}/dir")
    os.symlink("f", f"{d}/s")
    for target in ("f", "dir", "s"):
        expect_errno(errno.EEXIST, os.mkdir, f"{d}/{target}")
        expect_errno(errno.EEXIST, os.symlink, "x", f"{d}/{target}")
        expect_errno(errno.EEXIST, os.link, f"{d}/f", f"{d}/{target}")
        expect_errno(errno.EEXIST, os.mknod, f"{d}/{target}", 0o600 | 0o010000)
    expect_errno(errno.EEXIST, os.open, f"{d}/f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    # O_EXCL on a dangling symlink does not follow it.
    os.symlink("missing", f"{d}/dangling")
    expect_errno(errno.EEXIST, os.open, f"{d}/dangling", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert not os.path.lexists(f"{d}/missing")


def test_not_directory(d):
    write_file(f"{d}/f")
    expect_errno(errno.ENOTDIR, os.stat, f"{d}/f/x")
    expect_errno(errno.ENOTDIR, os.mkdir, f"{d}/f/x")
    expect_errno(errno.ENOTDIR, os.rmdir, f"{d}/f")
    expect_errno(errno.ENOTDIR, os.listdir, f"{d}/f")
    expect_errno(errno.ENOTDIR, os.open, f"{d}/f", os.O_RDONLY | os.O_DIRECTORY)
    os.mkdir(f"{d}/dir")
    expect_errno(errno.ENOTDIR, os.rename, f"{d}/dir", f"{d}/f")


def test_is_directory(d):
    os.mkdir(f"{d}/dir")
    expect_errno(errno.EISDIR, os.unlink, f"{d}/dir")
    expect_errno(errno.EISDIR, os.open, f"{d}/dir", os.O_WRONLY)
    expect_errno(errno.EISDIR, os.open, f"{d}/dir", os.O_RDWR)
    write_file(f"{d}/f")
    expect_errno(errno.EISDIR, os.rename, f"{d}/f", f"{d}/dir")
    fd = os.open(f"{d}/dir", os.O_RDONLY)
    try:
        expect_errno(errno.EISDIR, os.read, fd, 10)
    finally:
        os.close(fd)


def test_not_empty(d):
    os.makedirs(f"{d}/a/b")
    expect_errno(errno.ENOTEMPTY, os.rmdir, f"{d}/a")
    os.mkdir(f"{d}/c")
    expect_errno(errno.ENOTEMPTY, os.rename, f"{d}/c", f"{d}/a")
    write_file(f"{d}/a/b/f")
    expect_errno(errno.ENOTEMPTY, os.rmdir, f"{d}/a/b")


def test_name_too_long(d):
    longest = "x" * 255
    write_file(f"{d}/{longest}", b"ok")
    assert os.stat(f"{d}/{longest}").st_size == 2
    assert longest in os.listdir(d)
    too_long = "y" * 256
    expect_errno(errno.ENAMETOOLONG, os.stat, f"{d}/{too_long}")
    expect_errno(errno.ENAMETOOLONG, os.open, f"{d}/{too_long}", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, f"{d}/{too_long}")
    expect_errno(errno.ENAMETOOLONG, os.symlink, "t", f"{d}/{too_long}")
    expect_errno(errno.ENAMETOOLONG, os.rename, f"{d}/{longest}", f"{d}/{too_long}")
    expect_errno(errno.ENAMETOOLONG, os.link, f"{d}/{longest}", f"{d}/{too_long}")
    # Names of 255 bytes in UTF-8 that are fewer characters.
    utf8 = "é" * 127  # 254 bytes
    os.mkdir(f"{d}/{utf8}")
    assert utf8 in os.listdir(d)


def test_invalid_arguments(d):
    os.mkdir(f"{d}/dir")
    expect_errno(errno.EINVAL, os.rmdir, f"{d}/dir/.")
    expect_errno(errno.EINVAL, os.rename, f"{d}/dir", f"{d}/dir/sub")
    write_file(f"{d}/f")
    expect_errno(errno.EINVAL, os.readlink, f"{d}/f")


def test_symlink_loops(d):
    os.symlink("b", f"{d}/a")
    os.symlink("a", f"{d}/b")
    expect_errno(errno.ELOOP, os.stat, f"{d}/a")
    write_file(f"{d}/f")
    os.symlink("f", f"{d}/s")
    expect_errno(errno.ELOOP, os.open, f"{d}/s", os.O_RDONLY | os.O_NOFOLLOW)


def test_links_to_directories_are_refused(d):
    os.mkdir(f"{d}/dir")
    expect_errno(errno.EPERM, os.link, f"{d}/dir", f"{d}/dir2")


def test_no_cross_device_error_inside_the_view(d):
    os.makedirs(f"{d}/a/deep/tree")
    os.mkdir(f"{d}/b")
    write_file(f"{d}/a/deep/tree/f", b"x")
    os.rename(f"{d}/a/deep", f"{d}/b/deep")
    os.rename(f"{d}/b/deep/tree/f", f"{d}/f")
    os.link(f"{d}/f", f"{d}/b/f2")
    assert os.stat(f"{d}/f").st_ino == os.stat(f"{d}/b/f2").st_ino


def test_bad_descriptors(d):
    write_file(f"{d}/f", b"data")
    fd = os.open(f"{d}/f", os.O_RDONLY)
    try:
        expect_errno(errno.EBADF, os.write, fd, b"x")
    finally:
        os.close(fd)
    fd = os.open(f"{d}/f", os.O_WRONLY)
    try:
        expect_errno(errno.EBADF, os.read, fd, 1)
    finally:
        os.close(fd)
