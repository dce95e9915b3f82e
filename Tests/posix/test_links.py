"""Link counts, hardlinks, symlinks and unlinked-but-open files."""
import os

from conftest import read_file, write_file


def test_directory_link_counts(d):
    os.mkdir(f"{d}/p")
    assert os.stat(f"{d}/p").st_nlink == 2
    os.mkdir(f"{d}/p/a")
    os.mkdir(f"{d}/p/b")
    write_file(f"{d}/p/f")
    assert os.stat(f"{d}/p").st_nlink == 4
    os.rmdir(f"{d}/p/a")
    assert os.stat(f"{d}/p").st_nlink == 3
    os.mkdir(f"{d}/q")
    os.rename(f"{d}/p/b", f"{d}/q/b")
    assert os.stat(f"{d}/p").st_nlink == 2
    assert os.stat(f"{d}/q").st_nlink == 3
    assert os.stat(f"{d}/q/b/..").st_ino == os.stat(f"{d}/q").st_ino


def test_file_link_counts(d):
    write_file(f"{d}/f", b"data")
    assert os.stat(f"{d}/f").st_nlink == 1
    os.link(f"{d}/f", f"{d}/g")
    os.link(f"{d}/f", f"{d}/h")
    st = os.stat(f"{d}/g")
    assert st.st_nlink == 3
    assert st.st_ino == os.stat(f"{d}/f").st_ino == os.stat(f"{d}/h").st_ino
    os.unlink(f"{d}/f")
    assert os.stat(f"{d}/g").st_nlink == 2
    assert read_file(f"{d}/h") == b"data"
    with open(f"{d}/g", "ab") as f:
        f.write(b"+more")
    assert read_file(f"{d}/h") == b"data+more"


def test_unlinked_file_stays_readable_while_open(d):
    write_file(f"{d}/f", b"still here")
    fd = os.open(f"{d}/f", os.O_RDWR)
    try:
        os.unlink(f"{d}/f")
        assert not os.path.exists(f"{d}/f")
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 100, 0) == b"still here"
        os.pwrite(fd, b"STILL", 0)
        assert os.pread(fd, 100, 0) == b"STILL here"
        assert os.fstat(fd).st_size == 10
        # The name can be reused at once.
        write_file(f"{d}/f", b"new")
        assert read_file(f"{d}/f") == b"new"
        assert os.pread(fd, 100, 0) == b"STILL here"
    finally:
        os.close(fd)


def test_unlinked_directory_of_open_handle(d):
    os.mkdir(f"{d}/gone")
    fd = os.open(f"{d}/gone", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(f"{d}/gone")
        assert os.fstat(fd).st_nlink == 0
        assert os.listdir(fd) == []
    finally:
        os.close(fd)


def test_symlinks(d):
    os.symlink("target/with/../parts", f"{d}/s")
    st = os.lstat(f"{d}/s")
    assert st.st_size == len("target/with/../parts")
    assert os.readlink(f"{d}/s") == "target/with/../parts"
    assert oct(st.st_mode & 0o777) == oct(0o777)
    write_file(f"{d}/t", b"through")
    os.symlink("t", f"{d}/u")
    assert read_file(f"{d}/u") == b"through"
    os.symlink(f"{d}/t", f"{d}/abs")
    assert read_file(f"{d}/abs") == b"through"
    long_target = "a/" * 2000
    os.symlink(long_target, f"{d}/long")
    assert os.readlink(f"{d}/long") == long_target
    os.link(f"{d}/u", f"{d}/u2", follow_symlinks=False)
    assert os.lstat(f"{d}/u2").st_ino == os.lstat(f"{d}/u").st_ino
    assert os.lstat(f"{d}/u").st_nlink == 2


def test_special_files(d):
    import stat
    os.mkfifo(f"{d}/fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(f"{d}/fifo").st_mode)
    os.mknod(f"{d}/chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(f"{d}/chr")
    assert stat.S_ISCHR(st.st_mode)
    assert os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    os.mknod(f"{d}/blk", 0o600 | stat.S_IFBLK, os.makedev(8, 1))
    assert stat.S_ISBLK(os.lstat(f"{d}/blk").st_mode)
    os.mknod(f"{d}/reg", 0o600 | stat.S_IFREG)
    assert stat.S_ISREG(os.lstat(f"{d}/reg").st_mode)
    import socket
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(f"{d}/sock")
    finally:
        s.close()
    assert stat.S_ISSOCK(os.lstat(f"{d}/sock").st_mode)
