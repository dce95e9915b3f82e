"""Extended attributes and POSIX ACLs."""
import errno
import os
import shutil
import stat
import subprocess

import pytest

from conftest import as_user, expect_errno, needs_root, read_file, write_file


def test_set_get_list_remove(d):
    write_file(f"{d}/f")
    os.setxattr(f"{d}/f", "user.one", b"1")
    os.setxattr(f"{d}/f", "user.two", b"\0binary\xff")
    os.setxattr(f"{d}/f", "user.empty", b"")
    assert os.getxattr(f"{d}/f", "user.two") == b"\0binary\xff"
    assert os.getxattr(f"{d}/f", "user.empty") == b""
    assert {"user.one", "user.two", "user.empty"} <= set(os.listxattr(f"{d}/f"))
    os.setxattr(f"{d}/f", "user.one", b"replaced")
    assert os.getxattr(f"{d}/f", "user.one") == b"replaced"
    os.removexattr(f"{d}/f", "user.one")
    expect_errno(errno.ENODATA, os.getxattr, f"{d}/f", "user.one")
    expect_errno(errno.ENODATA, os.removexattr, f"{d}/f", "user.one")


def test_create_and_replace_flags(d):
    write_file(f"{d}/f")
    os.setxattr(f"{d}/f", "user.a", b"1", os.XATTR_CREATE)
    expect_errno(errno.EEXIST, os.setxattr, f"{d}/f", "user.a", b"2", os.XATTR_CREATE)
    expect_errno(errno.ENODATA, os.setxattr, f"{d}/f", "user.b", b"2", os.XATTR_REPLACE)
    os.setxattr(f"{d}/f", "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(f"{d}/f", "user.a") == b"3"


def test_size_probes(d):
    """getxattr/listxattr with a zero-sized buffer return the size; a short buffer is ERANGE."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.getxattr.restype = ctypes.c_ssize_t
    libc.listxattr.restype = ctypes.c_ssize_t
    write_file(f"{d}/f")
    os.setxattr(f"{d}/f", "user.sized", b"0123456789")
    path = os.fsencode(f"{d}/f")
    assert libc.getxattr(path, b"user.sized", None, ctypes.c_size_t(0)) == 10
    buf = ctypes.create_string_buffer(4)
    assert libc.getxattr(path, b"user.sized", buf, ctypes.c_size_t(4)) == -1
    assert ctypes.get_errno() == errno.ERANGE
    n = libc.listxattr(path, None, ctypes.c_size_t(0))
    assert n >= len(b"user.sized\0")
    buf = ctypes.create_string_buffer(n)
    assert libc.listxattr(path, buf, ctypes.c_size_t(n)) == n
    assert b"user.sized\0" in buf.raw
    buf = ctypes.create_string_buffer(1)
    assert libc.listxattr(path, buf, ctypes.c_size_t(1)) == -1
    assert ctypes.get_errno() == errno.ERANGE


def test_large_values_and_many_names(d):
    # Sizes every Linux filesystem takes (ext4 keeps all of an inode's xattrs in one block).
    write_file(f"{d}/f")
    big = os.urandom(3000)
    os.setxattr(f"{d}/f", "user.big", big)
    assert os.getxattr(f"{d}/f", "user.big") == big
    write_file(f"{d}/g")
    for i in range(40):
        os.setxattr(f"{d}/g", f"user.n{i}", str(i).encode())
    assert len([n for n in os.listxattr(f"{d}/g") if n.startswith("user.n")]) == 40


def test_directories_and_symlinks(d):
    os.mkdir(f"{d}/dir")
    os.setxattr(f"{d}/dir", "user.d", b"dir")
    assert os.getxattr(f"{d}/dir", "user.d") == b"dir"
    os.symlink("dir", f"{d}/link")
    expect_errno(errno.EPERM, os.setxattr, f"{d}/link", "user.x", b"1", follow_symlinks=False)
    assert os.getxattr(f"{d}/link", "user.d") == b"dir"  # follows to the directory


def test_unknown_namespace(d):
    write_file(f"{d}/f")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, f"{d}/f", "bogus.name", b"1")


@needs_root
def test_trusted_namespace_is_root_only(d):
    write_file(f"{d}/f")
    os.chmod(f"{d}/f", 0o666)
    os.setxattr(f"{d}/f", "trusted.t", b"root")
    assert os.getxattr(f"{d}/f", "trusted.t") == b"root"
    expect_errno(errno.EPERM, as_user, 2001, 3001, os.setxattr, f"{d}/f", "trusted.u", b"1")
    expect_errno(errno.ENODATA, as_user, 2001, 3001, os.getxattr, f"{d}/f", "trusted.t")
    assert "trusted.t" not in as_user(2001, 3001, os.listxattr, f"{d}/f")


@needs_root
def test_user_xattrs_need_write_permission(d):
    write_file(f"{d}/f")
    os.chmod(f"{d}/f", 0o644)
    os.setxattr(f"{d}/f", "user.r", b"1")
    assert as_user(2001, 3001, os.getxattr, f"{d}/f", "user.r") == b"1"
    expect_errno(errno.EACCES, as_user, 2001, 3001, os.setxattr, f"{d}/f", "user.w", b"1")


needs_acl_tools = pytest.mark.skipif(shutil.which("setfacl") is None, reason="needs setfacl/getfacl (acl)")


def acl(*args):
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


@needs_root
@needs_acl_tools
def test_access_acl_grants_and_masks(d):
    write_file(f"{d}/f", b"acl")
    os.chmod(f"{d}/f", 0o600)
    expect_errno(errno.EACCES, as_user, 2001, 3001, read_file, f"{d}/f")
    acl("setfacl", "-m", "u:2001:r", f"{d}/f")
    out = acl("getfacl", "-n", "--omit-header", f"{d}/f")
    assert "user:2001:r--" in out
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o640, "the group bits show the mask"
    assert as_user(2001, 3001, read_file, f"{d}/f") == b"acl"
    expect_errno(errno.EACCES, as_user, 2002, 3001, read_file, f"{d}/f")
    # chmod rewrites the mask: group bits 0 deny the named user.
    os.chmod(f"{d}/f", 0o600)
    assert "mask::---" in acl("getfacl", "-n", "--omit-header", f"{d}/f")
    expect_errno(errno.EACCES, as_user, 2001, 3001, read_file, f"{d}/f")
    acl("setfacl", "-b", f"{d}/f")
    assert "user:2001" not in acl("getfacl", "-n", "--omit-header", f"{d}/f")


@needs_root
@needs_acl_tools
def test_minimal_acl_is_just_the_mode(d):
    write_file(f"{d}/f")
    os.chmod(f"{d}/f", 0o600)
    acl("setfacl", "-m", "g::rw,o::r", f"{d}/f")
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o664
    assert "system.posix_acl_access" not in os.listxattr(f"{d}/f")


@needs_root
@needs_acl_tools
def test_default_acl_is_inherited(d):
    os.mkdir(f"{d}/dir", 0o755)
    acl("setfacl", "-d", "-m", "u:2001:rwx,g::rx,o::---", f"{d}/dir")
    old = os.umask(0o077)  # a default ACL replaces the umask
    try:
        write_file(f"{d}/dir/f", b"", 0o666)
        os.mkdir(f"{d}/dir/sub", 0o777)
    finally:
        os.umask(old)
    f_acl = acl("getfacl", "-n", "--omit-header", f"{d}/dir/f")
    assert "user:2001:rwx" in f_acl and "mask::rw-" in f_acl
    assert stat.S_IMODE(os.stat(f"{d}/dir/f").st_mode) == 0o660
    sub_acl = acl("getfacl", "-n", "--omit-header", f"{d}/dir/sub")
    assert "default:user:2001:rwx" in sub_acl
    assert stat.S_IMODE(os.stat(f"{d}/dir/sub").st_mode) == 0o770
    assert as_user(2001, 3001, lambda: write_file(f"{d}/dir/f", b"by acl") or True)
