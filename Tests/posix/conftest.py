"""A POSIX conformance suite run against any mounted filesystem.

    python3 -m pytest Tests/posix --root /path/inside/the/mount

Each test works in a fresh directory below --root (or $PVFS_POSIX_ROOT). Tests that act as
other users need root and a mount other users may enter (FUSE: allow_other). The suite is meant
to pass on ext4 and tmpfs as well: run it there to check the suite itself.
"""
import ctypes
import errno
import os
import shutil
import uuid

import pytest


def pytest_addoption(parser):
    parser.addoption("--root", action="store", default=os.environ.get("PVFS_POSIX_ROOT"),
                     help="directory (on the filesystem under test) the tests work in")


@pytest.fixture(scope="session")
def root(request):
    path = request.config.getoption("--root")
    if not path:
        pytest.exit("no --root given (or PVFS_POSIX_ROOT)", returncode=2)
    os.makedirs(path, exist_ok=True)
    return os.path.realpath(path)


@pytest.fixture
def d(root):
    """A fresh directory, world-writable so that other users can work in it."""
    path = os.path.join(root, "t-" + uuid.uuid4().hex[:12])
    os.mkdir(path)
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def mount_options(root):
    """The mount options (super and per-mount) of the filesystem holding root."""
    st_dev = os.stat(root).st_dev
    options = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            major, minor = (int(x) for x in fields[2].split(":"))
            if os.makedev(major, minor) == st_dev:
                options = set(fields[5].split(","))
                dash = fields.index("-")
                options |= set(fields[dash + 3].split(","))
    return options


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


class UserError(Exception):
    pass


def as_user(uid, gid, fn, *args, groups=(), umask=None):
    """Runs fn(*args) in a child process with the given credentials. Returns its result (which
    must be picklable-free: None, bool, int, str or bytes) or raises the OSError it raised."""
    import pickle
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if umask is not None:
                os.umask(umask)
            result = ("ok", fn(*args))
        except OSError as e:
            result = ("oserror", e.errno, str(e))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            result = ("exception", repr(e))
        os.write(w, pickle.dumps(result))
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result = pickle.loads(data)
    if result[0] == "ok":
        return result[1]
    if result[0] == "oserror":
        raise OSError(result[1], result[2])
    raise UserError(result[1])


def expect_errno(code, fn, *args, **kwargs):
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {errno.errorcode.get(info.value.errno)}"


_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old, new, flags):
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2


def fallocate(fd, mode, offset, length):
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def write_file(path, data=b"", mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()
