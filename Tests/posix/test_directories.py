"""Directory listings: completeness, d_type, and stability while entries change."""
import os
import stat

from conftest import write_file


def test_large_directory_lists_every_entry_once(d):
    names = {f"entry-{i:05d}-{'x' * (i % 50)}" for i in range(3000)}
    for name in names:
        write_file(f"{d}/{name}")
    listed = os.listdir(d)
    assert len(listed) == len(names)
    assert set(listed) == names


def test_entry_types(d):
    write_file(f"{d}/f")
    os.mkdir(f"{d}/dir")
    os.symlink("f", f"{d}/s")
    os.mkfifo(f"{d}/p")
    kinds = {e.name: (e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False), e.is_symlink())
             for e in os.scandir(d)}
    assert kinds == {"f": (True, False, False), "dir": (False, True, False),
                     "s": (False, False, True), "p": (False, False, False)}
    inodes = {e.name: e.inode() for e in os.scandir(d)}
    for name, ino in inodes.items():
        assert os.lstat(f"{d}/{name}").st_ino == ino


def test_removing_entries_while_listing(d):
    for i in range(500):
        write_file(f"{d}/f{i}")
    seen = []
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i % 3 == 0:
                # Remove some entries not yet seen (and some seen): none may show twice.
                for victim in (f"f{(i * 7) % 500}", entry.name):
                    try:
                        os.unlink(f"{d}/{victim}")
                    except FileNotFoundError:
                        pass
    assert len(seen) == len(set(seen))


def test_adding_entries_while_listing(d):
    for i in range(300):
        write_file(f"{d}/old{i}")
    seen = []
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i < 100:
                write_file(f"{d}/new{i}")
    assert len(seen) == len(set(seen))
    assert {f"old{i}" for i in range(300)} <= set(seen)


def test_dot_and_dotdot(d):
    os.mkdir(f"{d}/sub")
    fd = os.open(f"{d}/sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        # os.listdir hides them; the raw entries exist.
        import ctypes
        assert os.stat(f"{d}/sub/.").st_ino == os.stat(f"{d}/sub").st_ino
        assert os.stat(f"{d}/sub/..").st_ino == os.stat(d).st_ino
    finally:
        os.close(fd)
    assert stat.S_ISDIR(os.stat(f"{d}/sub/.").st_mode)


def test_rewind_lists_again(d):
    for i in range(50):
        write_file(f"{d}/f{i}")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = sorted(os.listdir(fd))
        os.lseek(fd, 0, os.SEEK_SET)
        second = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    assert first == second and len(first) == 50
