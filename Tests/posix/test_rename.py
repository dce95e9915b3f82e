"""rename(2) and renameat2(2) edge cases."""
import errno
import os

from conftest import RENAME_EXCHANGE, RENAME_NOREPLACE, expect_errno, read_file, renameat2, write_file


def test_over_a_file(d):
    write_file(f"{d}/a", b"A")
    write_file(f"{d}/b", b"B")
    ino = os.stat(f"{d}/a").st_ino
    os.rename(f"{d}/a", f"{d}/b")
    assert not os.path.exists(f"{d}/a")
    assert read_file(f"{d}/b") == b"A"
    assert os.stat(f"{d}/b").st_ino == ino


def test_over_an_open_file(d):
    write_file(f"{d}/a", b"A")
    write_file(f"{d}/b", b"B")
    fd = os.open(f"{d}/b", os.O_RDONLY)
    try:
        os.rename(f"{d}/a", f"{d}/b")
        assert os.pread(fd, 10, 0) == b"B"
    finally:
        os.close(fd)
    assert read_file(f"{d}/b") == b"A"


def test_over_an_empty_directory(d):
    os.mkdir(f"{d}/a")
    write_file(f"{d}/a/inside", b"x")
    os.mkdir(f"{d}/b")
    os.rename(f"{d}/a", f"{d}/b")
    assert os.listdir(f"{d}/b") == ["inside"]
    assert os.stat(d).st_nlink == 3


def test_over_a_non_empty_directory(d):
    os.mkdir(f"{d}/a")
    os.mkdir(f"{d}/b")
    write_file(f"{d}/b/f")
    expect_errno(errno.ENOTEMPTY, os.rename, f"{d}/a", f"{d}/b")


def test_kind_mismatches(d):
    os.mkdir(f"{d}/dir")
    write_file(f"{d}/f")
    expect_errno(errno.ENOTDIR, os.rename, f"{d}/dir", f"{d}/f")
    expect_errno(errno.EISDIR, os.rename, f"{d}/f", f"{d}/dir")


def test_into_its_own_subtree(d):
    os.makedirs(f"{d}/a/b/c")
    expect_errno(errno.EINVAL, os.rename, f"{d}/a", f"{d}/a/b/c/a")
    expect_errno(errno.EINVAL, os.rename, f"{d}/a", f"{d}/a/x")
    # A directory onto its ancestor is ENOTEMPTY (the ancestor holds it).
    expect_errno(errno.ENOTEMPTY, os.rename, f"{d}/a/b/c", f"{d}/a")


def test_hardlinks_of_one_inode_do_nothing(d):
    write_file(f"{d}/a", b"x")
    os.link(f"{d}/a", f"{d}/b")
    os.rename(f"{d}/a", f"{d}/b")
    assert os.path.exists(f"{d}/a") and os.path.exists(f"{d}/b")
    assert os.stat(f"{d}/a").st_nlink == 2


def test_to_itself(d):
    write_file(f"{d}/a", b"x")
    os.rename(f"{d}/a", f"{d}/a")
    assert read_file(f"{d}/a") == b"x"
    os.mkdir(f"{d}/dir")
    os.rename(f"{d}/dir", f"{d}/dir")
    assert os.path.isdir(f"{d}/dir")


def test_noreplace(d):
    write_file(f"{d}/a", b"A")
    write_file(f"{d}/b", b"B")
    expect_errno(errno.EEXIST, renameat2, f"{d}/a", f"{d}/b", RENAME_NOREPLACE)
    assert read_file(f"{d}/b") == b"B"
    renameat2(f"{d}/a", f"{d}/c", RENAME_NOREPLACE)
    assert read_file(f"{d}/c") == b"A"


def test_exchange(d):
    write_file(f"{d}/a", b"A")
    os.makedirs(f"{d}/sub/dir")
    write_file(f"{d}/sub/dir/in", b"I")
    ino_a = os.stat(f"{d}/a").st_ino
    ino_dir = os.stat(f"{d}/sub/dir").st_ino
    renameat2(f"{d}/a", f"{d}/sub/dir", RENAME_EXCHANGE)
    assert os.stat(f"{d}/a").st_ino == ino_dir
    assert os.stat(f"{d}/sub/dir").st_ino == ino_a
    assert read_file(f"{d}/a/in") == b"I"
    assert read_file(f"{d}/sub/dir") == b"A"
    assert os.stat(f"{d}/a/..").st_ino == os.stat(d).st_ino
    # The directory moved from sub to d: link counts follow.
    assert os.stat(f"{d}/sub").st_nlink == 2
    assert os.stat(d).st_nlink == 4
    expect_errno(errno.ENOENT, renameat2, f"{d}/a", f"{d}/missing", RENAME_EXCHANGE)
    expect_errno(errno.EINVAL, renameat2, f"{d}/a", f"{d}/sub/dir", RENAME_EXCHANGE | RENAME_NOREPLACE)


def test_exchange_into_own_subtree(d):
    os.makedirs(f"{d}/a/b")
    expect_errno(errno.EINVAL, renameat2, f"{d}/a", f"{d}/a/b", RENAME_EXCHANGE)


def test_directory_moves_update_dotdot(d):
    os.makedirs(f"{d}/x/moving/deeper")
    os.mkdir(f"{d}/y")
    os.rename(f"{d}/x/moving", f"{d}/y/moved")
    assert os.stat(f"{d}/y/moved/..").st_ino == os.stat(f"{d}/y").st_ino
    assert os.stat(f"{d}/y/moved/deeper/../..").st_ino == os.stat(f"{d}/y").st_ino
    assert os.stat(f"{d}/x").st_nlink == 2
    assert os.stat(f"{d}/y").st_nlink == 3


def test_many_renames_keep_every_name_once(d):
    for i in range(200):
        write_file(f"{d}/f{i}", str(i).encode())
    for i in range(200):
        os.rename(f"{d}/f{i}", f"{d}/g{i}")
    names = sorted(os.listdir(d))
    assert names == sorted(f"g{i}" for i in range(200))
    assert all(read_file(f"{d}/g{i}") == str(i).encode() for i in range(200))
