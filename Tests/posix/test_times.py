"""atime, mtime and ctime: which calls change which, and utimensat's NOW and OMIT."""
import os
import time

import pytest

from conftest import read_file, write_file

# Timestamps are compared after a pause longer than any timestamp granularity.
PAUSE = 0.05


def ns(path, follow=True):
    st = os.stat(path, follow_symlinks=follow)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def later(fn, *args):
    time.sleep(PAUSE)
    fn(*args)


def test_write_changes_mtime_and_ctime(d):
    write_file(f"{d}/f", b"a")
    a0, m0, c0 = ns(f"{d}/f")
    def append():
        with open(f"{d}/f", "ab") as f:
            f.write(b"b")
    later(append)
    a1, m1, c1 = ns(f"{d}/f")
    assert m1 > m0 and c1 > c0


def test_truncate_changes_mtime_and_ctime(d):
    write_file(f"{d}/f", b"abc")
    _, m0, c0 = ns(f"{d}/f")
    later(os.truncate, f"{d}/f", 1)
    _, m1, c1 = ns(f"{d}/f")
    assert m1 > m0 and c1 > c0
    # O_TRUNC of a non-empty file too.
    later(lambda: os.close(os.open(f"{d}/f", os.O_WRONLY | os.O_TRUNC)))
    _, m2, c2 = ns(f"{d}/f")
    assert m2 > m1 and c2 > c1


def test_create_and_remove_change_the_parent(d):
    os.mkdir(f"{d}/p")
    _, m0, c0 = ns(f"{d}/p")
    later(write_file, f"{d}/p/f")
    _, m1, c1 = ns(f"{d}/p")
    assert m1 > m0 and c1 > c0
    later(os.mkdir, f"{d}/p/sub")
    _, m2, c2 = ns(f"{d}/p")
    assert m2 > m1 and c2 > c1
    later(os.rmdir, f"{d}/p/sub")
    _, m3, c3 = ns(f"{d}/p")
    assert m3 > m2 and c3 > c2
    _, _, cf = ns(f"{d}/p/f")
    os.link(f"{d}/p/f", f"{d}/p/g")
    later(os.unlink, f"{d}/p/f")
    _, m4, c4 = ns(f"{d}/p")
    assert m4 > m3 and c4 > c3
    assert ns(f"{d}/p/g")[2] > cf, "unlink changes the ctime of the remaining links"


def test_link_changes_ctime_of_the_file(d):
    write_file(f"{d}/f")
    _, m0, c0 = ns(f"{d}/f")
    later(os.link, f"{d}/f", f"{d}/g")
    _, m1, c1 = ns(f"{d}/f")
    assert c1 > c0 and m1 == m0


def test_rename_changes_ctime_and_both_parents(d):
    os.mkdir(f"{d}/a")
    os.mkdir(f"{d}/b")
    write_file(f"{d}/a/f")
    _, ma, ca = ns(f"{d}/a")
    _, mb, cb = ns(f"{d}/b")
    _, mf, cf = ns(f"{d}/a/f")
    later(os.rename, f"{d}/a/f", f"{d}/b/f")
    assert ns(f"{d}/a")[1] > ma and ns(f"{d}/a")[2] > ca
    assert ns(f"{d}/b")[1] > mb and ns(f"{d}/b")[2] > cb
    _, mf2, cf2 = ns(f"{d}/b/f")
    assert mf2 == mf and cf2 > cf


def test_chmod_chown_change_ctime_only(d):
    write_file(f"{d}/f")
    a0, m0, c0 = ns(f"{d}/f")
    later(os.chmod, f"{d}/f", 0o600)
    a1, m1, c1 = ns(f"{d}/f")
    assert c1 > c0 and m1 == m0 and a1 == a0
    if os.geteuid() == 0:
        later(os.chown, f"{d}/f", 2001, 3001)
        a2, m2, c2 = ns(f"{d}/f")
        assert c2 > c1 and m2 == m1


def test_xattr_changes_ctime(d):
    write_file(f"{d}/f")
    _, m0, c0 = ns(f"{d}/f")
    later(os.setxattr, f"{d}/f", "user.t", b"1")
    _, m1, c1 = ns(f"{d}/f")
    assert c1 > c0 and m1 == m0


def test_utimensat_explicit_now_and_omit(d):
    write_file(f"{d}/f")
    os.utime(f"{d}/f", ns=(1_000_000_123, 2_000_000_456))
    a, m, c0 = ns(f"{d}/f")
    assert (a, m) == (1_000_000_123, 2_000_000_456)
    # Python has no UTIME_OMIT; use ctypes for utimensat.
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
    UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
    times = (Timespec * 2)(Timespec(0, UTIME_OMIT), Timespec(77, 5))
    time.sleep(PAUSE)
    assert libc.utimensat(-100, os.fsencode(f"{d}/f"), times, 0) == 0
    a1, m1, c1 = ns(f"{d}/f")
    assert a1 == 1_000_000_123 and m1 == 77_000_000_005 and c1 > c0
    before = time.time_ns()
    times = (Timespec * 2)(Timespec(0, UTIME_NOW), Timespec(0, UTIME_OMIT))
    assert libc.utimensat(-100, os.fsencode(f"{d}/f"), times, 0) == 0
    a2, m2, _ = ns(f"{d}/f")
    assert a2 >= before - 10_000_000 and m2 == 77_000_000_005
    # Both OMIT changes nothing at all.
    _, _, c3 = ns(f"{d}/f")
    times = (Timespec * 2)(Timespec(0, UTIME_OMIT), Timespec(0, UTIME_OMIT))
    time.sleep(PAUSE)
    assert libc.utimensat(-100, os.fsencode(f"{d}/f"), times, 0) == 0
    assert ns(f"{d}/f")[2] == c3


def test_utimes_on_symlink_itself(d):
    os.symlink("nowhere", f"{d}/s")
    os.utime(f"{d}/s", ns=(3_000_000_000, 4_000_000_000), follow_symlinks=False)
    st = os.lstat(f"{d}/s")
    assert st.st_mtime_ns == 4_000_000_000


def test_times_are_nanosecond_precise(d):
    write_file(f"{d}/f")
    os.utime(f"{d}/f", ns=(1_234_567_891_123_456_789, 1_234_567_891_987_654_321))
    a, m, _ = ns(f"{d}/f")
    assert a == 1_234_567_891_123_456_789 and m == 1_234_567_891_987_654_321


def test_read_updates_atime_unless_noatime(d, mount_options):
    if "noatime" in mount_options:
        pytest.skip("mounted noatime")
    write_file(f"{d}/f", b"data")
    os.utime(f"{d}/f", ns=(1_000_000_000, 2_000_000_000))  # atime before mtime: relatime updates
    read_file(f"{d}/f")
    assert ns(f"{d}/f")[0] > 2_000_000_000


def test_new_file_times_are_equal_and_current(d):
    before = time.time_ns()
    write_file(f"{d}/f")
    a, m, c = ns(f"{d}/f")
    after = time.time_ns()
    slack = 20_000_000  # coarse kernel clocks lag the fine one by up to a tick
    for t in (a, m, c):
        assert before - slack <= t <= after + slack
