"""Owner/group/other permissions, sticky and setgid directories, chmod/chown rules."""
import errno
import os
import stat

import pytest

from conftest import as_user, expect_errno, needs_root, read_file, write_file

pytestmark = needs_root

U1, U2, G1, G2, G3 = 2001, 2002, 3001, 3002, 3003


def try_open(path, flags):
    os.close(os.open(path, flags))
    return True


def test_owner_group_other_bits(d):
    path = f"{d}/f"
    write_file(path, b"secret")
    os.chown(path, U1, G1)
    cases = [
        (0o400, U1, G2, (), os.O_RDONLY, True),
        (0o400, U1, G2, (), os.O_WRONLY, False),
        (0o040, U2, G1, (), os.O_RDONLY, True),
        (0o040, U2, G2, (G1,), os.O_RDONLY, True),   # supplementary group
        (0o040, U2, G2, (), os.O_RDONLY, False),
        (0o004, U2, G2, (), os.O_RDONLY, True),
        (0o404, U2, G1, (), os.O_RDONLY, False),     # group class applies, has no read
        (0o044, U1, G1, (), os.O_RDONLY, False),     # owner class applies, has no read
        (0o020, U2, G1, (), os.O_WRONLY, True),
        (0o002, U2, G2, (), os.O_RDWR, False),
    ]
    for mode, uid, gid, groups, flags, allowed in cases:
        os.chmod(path, mode)
        if allowed:
            assert as_user(uid, gid, try_open, path, flags, groups=groups), (oct(mode), uid, gid, groups)
        else:
            with pytest.raises(OSError) as info:
                as_user(uid, gid, try_open, path, flags, groups=groups)
            assert info.value.errno == errno.EACCES, (oct(mode), uid, gid, groups)


def test_search_permission_on_directories(d):
    os.mkdir(f"{d}/dir", 0o700)
    write_file(f"{d}/dir/f", b"x", 0o644)
    expect_errno(errno.EACCES, as_user, U1, G1, os.stat, f"{d}/dir/f")
    os.chmod(f"{d}/dir", 0o711)
    assert as_user(U1, G1, lambda: os.stat(f"{d}/dir/f").st_size) == 1
    expect_errno(errno.EACCES, as_user, U1, G1, os.listdir, f"{d}/dir")
    os.chmod(f"{d}/dir", 0o755)
    assert as_user(U1, G1, os.listdir, f"{d}/dir") == ["f"]
    # Creating needs write and search on the directory.
    expect_errno(errno.EACCES, as_user, U1, G1, os.mkdir, f"{d}/dir/new")
    os.chmod(f"{d}/dir", 0o733)
    as_user(U1, G1, os.mkdir, f"{d}/dir/new")
    assert os.stat(f"{d}/dir/new").st_uid == U1


def test_new_files_take_the_creators_ids(d):
    def create():
        write_file(f"{d}/mine", b"", 0o666)
        os.mkdir(f"{d}/mydir", 0o777)
        os.symlink("x", f"{d}/mylink")
    as_user(U1, G1, create, umask=0o022)
    for name in ("mine", "mydir", "mylink"):
        st = os.lstat(f"{d}/{name}")
        assert (st.st_uid, st.st_gid) == (U1, G1), name
    assert stat.S_IMODE(os.stat(f"{d}/mine").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(f"{d}/mydir").st_mode) == 0o755


def test_umask(d):
    old = os.umask(0o027)
    try:
        write_file(f"{d}/f", b"", 0o777)
        os.mkdir(f"{d}/dir", 0o777)
        os.mkfifo(f"{d}/fifo", 0o666)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(f"{d}/dir").st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(f"{d}/fifo").st_mode) == 0o640


def test_sticky_directory(d):
    os.mkdir(f"{d}/tmp")
    os.chmod(f"{d}/tmp", 0o1777)
    assert os.stat(f"{d}/tmp").st_mode & stat.S_ISVTX
    as_user(U1, G1, write_file, f"{d}/tmp/u1file", b"1")
    as_user(U2, G2, write_file, f"{d}/tmp/u2file", b"2")
    expect_errno(errno.EPERM, as_user, U2, G2, os.unlink, f"{d}/tmp/u1file")
    expect_errno(errno.EPERM, as_user, U2, G2, os.rename, f"{d}/tmp/u1file", f"{d}/tmp/stolen")
    expect_errno(errno.EPERM, as_user, U2, G2, os.rename, f"{d}/tmp/u2file", f"{d}/tmp/u1file")
    as_user(U1, G1, os.unlink, f"{d}/tmp/u1file")
    # The directory's owner may remove anything in it.
    os.chown(f"{d}/tmp", U1, G1)
    as_user(U1, G1, os.unlink, f"{d}/tmp/u2file")


def test_setgid_directory_inheritance(d):
    os.mkdir(f"{d}/shared", 0o777)
    os.chown(f"{d}/shared", 0, G3)
    os.chmod(f"{d}/shared", 0o2777)
    def create():
        write_file(f"{d}/shared/f", b"", 0o666)
        os.mkdir(f"{d}/shared/sub", 0o777)
    as_user(U1, G1, create)
    f = os.stat(f"{d}/shared/f")
    sub = os.stat(f"{d}/shared/sub")
    assert f.st_gid == G3 and sub.st_gid == G3
    assert sub.st_mode & stat.S_ISGID, "subdirectories inherit setgid"
    assert not f.st_mode & stat.S_ISGID


def test_setgid_file_created_by_non_member_loses_setgid(d):
    os.mkdir(f"{d}/shared", 0o777)
    os.chown(f"{d}/shared", 0, G3)
    os.chmod(f"{d}/shared", 0o2777)
    as_user(U1, G1, lambda: os.close(os.open(f"{d}/shared/g", os.O_CREAT | os.O_WRONLY, 0o2775)), umask=0)
    assert not os.stat(f"{d}/shared/g").st_mode & stat.S_ISGID


def test_chmod_rules(d):
    write_file(f"{d}/f")
    os.chown(f"{d}/f", U1, G1)
    expect_errno(errno.EPERM, as_user, U2, G2, os.chmod, f"{d}/f", 0o777)
    as_user(U1, G1, os.chmod, f"{d}/f", 0o751)
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o751
    # setgid on a file whose group the owner is not in is dropped silently.
    os.chown(f"{d}/f", U1, G3)
    as_user(U1, G1, os.chmod, f"{d}/f", 0o2755)
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o755
    as_user(U1, G1, os.chmod, f"{d}/f", 0o2755, groups=(G3,))
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o2755
    os.chmod(f"{d}/f", 0o7777)
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o7777


def test_chown_rules(d):
    write_file(f"{d}/f")
    os.chown(f"{d}/f", U1, G1)
    expect_errno(errno.EPERM, as_user, U1, G1, os.chown, f"{d}/f", U2, -1)
    expect_errno(errno.EPERM, as_user, U2, G2, os.chown, f"{d}/f", -1, G2)
    # The owner may change the group to one of its own groups only.
    expect_errno(errno.EPERM, as_user, U1, G1, os.chown, f"{d}/f", -1, G2)
    as_user(U1, G1, os.chown, f"{d}/f", -1, G2, groups=(G2,))
    assert os.stat(f"{d}/f").st_gid == G2
    os.chown(f"{d}/f", U2, G3)
    st = os.stat(f"{d}/f")
    assert (st.st_uid, st.st_gid) == (U2, G3)


def test_chown_clears_setuid_and_setgid(d):
    write_file(f"{d}/f")
    os.chmod(f"{d}/f", 0o6755)
    os.chown(f"{d}/f", U1, G1)
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o755
    os.mkdir(f"{d}/dir")
    os.chmod(f"{d}/dir", 0o2755)
    os.chown(f"{d}/dir", U1, G1)
    assert os.stat(f"{d}/dir").st_mode & stat.S_ISGID, "directories keep setgid"
    # setgid without group execute is a locking mark, not a privilege: it stays.
    write_file(f"{d}/g")
    os.chmod(f"{d}/g", 0o2745)
    os.chown(f"{d}/g", U2, G2)
    assert stat.S_IMODE(os.stat(f"{d}/g").st_mode) == 0o2745


def test_write_by_non_root_clears_setuid(d):
    write_file(f"{d}/f", b"#!/bin/sh\n")
    os.chown(f"{d}/f", U1, G1)
    os.chmod(f"{d}/f", 0o6777)
    def append():
        with open(f"{d}/f", "ab") as f:
            f.write(b"echo\n")
    as_user(U2, G2, append)
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o777
    os.chmod(f"{d}/f", 0o4777)
    as_user(U2, G2, os.truncate, f"{d}/f", 1)
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o777
    # Root's writes keep the bits.
    os.chmod(f"{d}/f", 0o4755)
    with open(f"{d}/f", "ab") as f:
        f.write(b"x")
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o4755


def test_truncate_and_utimes_need_permission(d):
    write_file(f"{d}/f", b"content")
    os.chown(f"{d}/f", U1, G1)
    os.chmod(f"{d}/f", 0o644)
    expect_errno(errno.EACCES, as_user, U2, G2, os.truncate, f"{d}/f", 0)
    expect_errno(errno.EPERM, as_user, U2, G2, os.utime, f"{d}/f", (1, 1))
    expect_errno(errno.EACCES, as_user, U2, G2, os.utime, f"{d}/f", None)
    os.chmod(f"{d}/f", 0o646)
    as_user(U2, G2, os.utime, f"{d}/f", None)  # "now" needs only write permission
    expect_errno(errno.EPERM, as_user, U2, G2, os.utime, f"{d}/f", (1, 1))
    as_user(U1, G1, os.utime, f"{d}/f", (5, 6))
    st = os.stat(f"{d}/f")
    assert (st.st_atime, st.st_mtime) == (5, 6)
    as_user(U2, G2, os.truncate, f"{d}/f", 2)
    assert read_file(f"{d}/f") == b"co"


def test_access_calls(d):
    write_file(f"{d}/f")
    os.chown(f"{d}/f", U1, G1)
    os.chmod(f"{d}/f", 0o640)
    assert as_user(U1, G1, os.access, f"{d}/f", os.R_OK | os.W_OK)
    assert not as_user(U1, G1, os.access, f"{d}/f", os.X_OK)
    assert as_user(U2, G1, os.access, f"{d}/f", os.R_OK)
    assert not as_user(U2, G1, os.access, f"{d}/f", os.W_OK)
    assert not as_user(U2, G2, os.access, f"{d}/f", os.R_OK)
    assert os.access(f"{d}/f", os.R_OK | os.W_OK)
    assert not os.access(f"{d}/f", os.X_OK), "root needs some execute bit to execute"


def test_rename_of_directory_across_parents_needs_write_on_it(d):
    for name in ("a", "b"):
        os.mkdir(f"{d}/{name}")
        os.chmod(f"{d}/{name}", 0o777)
    os.mkdir(f"{d}/a/sub", 0o555)
    os.chown(f"{d}/a/sub", U1, G1)
    expect_errno(errno.EACCES, as_user, U1, G1, os.rename, f"{d}/a/sub", f"{d}/b/sub")
    as_user(U1, G1, os.rename, f"{d}/a/sub", f"{d}/a/sub2")  # same parent: ".." unchanged
