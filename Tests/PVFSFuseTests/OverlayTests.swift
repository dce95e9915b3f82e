import CPVFSSystem
import Foundation
import GRDB
import Glibc
import PVFSEngine
import PVFSFuse
import PVFSStore
import PVFSSystem
import SystemPackage
import Testing

/// What only a copy-on-write view can get wrong, checked through real mounts.
@Suite("Overlay semantics over FUSE", .serialized)
struct OverlayTests {
    @Test func changingATemplateFileTouchesNeitherTheTemplateNorOtherVMs() throws {
        let f = try FuseFixture()
        try f.provision("a")
        try f.provision("b")
        let a = try f.mount("a")
        let b = try f.mount("b")
        defer { try? a.unmount(); try? b.unmount() }
        try writeFile(a.path + "/etc/hostname", "vm-a\n")
        #expect(try readFile(a.path + "/etc/hostname") == Array("vm-a\n".utf8))
        #expect(try readFile(b.path + "/etc/hostname") == Array("template-host\n".utf8))
        // Append through one hardlink: the other name (same inode) follows, in A only.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: a.path + "/etc/hard-a"))
        handle.seekToEndOfFile()
        handle.write(Data("more\n".utf8))
        try handle.close()
        #expect(try readFile(a.path + "/etc/hard-b") == Array("shared\nmore\n".utf8))
        #expect(try readFile(b.path + "/etc/hard-b") == Array("shared\n".utf8))
        // chmod, xattrs and removal of template files stay private too.
        #expect(chmod(a.path + "/usr/bin/tool", 0o700) == 0)
        #expect(removexattr(a.path + "/etc/tagged", "user.origin") == 0)
        #expect(unlink(a.path + "/etc/hostname") == 0)
        var st = stat()
        #expect(stat(b.path + "/usr/bin/tool", &st) == 0 && st.st_mode & 0o777 == 0o755)
        var value = [UInt8](repeating: 0, count: 64)
        #expect(getxattr(b.path + "/etc/tagged", "user.origin", &value, 64) == 8)
        #expect(access(b.path + "/etc/hostname", F_OK) == 0)
        // Every blob still holds the content its name promises.
        try expectBlobsIntact(f)
    }

    @Test func templateDirectoriesCanBeRemovedRecreatedAndRenamed() throws {
        let f = try FuseFixture()
        try f.provision("a")
        try f.provision("b")
        let a = try f.mount("a")
        defer { try? a.unmount() }
        let usrInode = try inode(a.path + "/usr")
        #expect(try run("/bin/rm", ["-rf", a.path + "/usr"]).status == 0)
        #expect(access(a.path + "/usr", F_OK) != 0)
        #expect(mkdir(a.path + "/usr", 0o755) == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: a.path + "/usr").isEmpty)
        #expect(try inode(a.path + "/usr") != usrInode)
        // A template directory renamed keeps its (template) contents and its inode number.
        let etcInode = try inode(a.path + "/etc")
        #expect(rename(a.path + "/etc", a.path + "/etc.old") == 0)
        #expect(try inode(a.path + "/etc.old") == etcInode)
        #expect(try readFile(a.path + "/etc.old/hostname") == Array("template-host\n".utf8))
        #expect(access(a.path + "/etc", F_OK) != 0)
        #expect(mkdir(a.path + "/etc", 0o755) == 0)
        try writeFile(a.path + "/etc/hostname", "fresh\n")
        // A template directory over which a new one was renamed.
        #expect(try run("/bin/mkdir", ["-p", a.path + "/newdoc/x"]).status == 0)
        #expect(rename(a.path + "/newdoc", a.path + "/bin") != 0, "bin is not empty")
        #expect(unlink(a.path + "/bin/sh") == 0)
        #expect(rename(a.path + "/newdoc", a.path + "/bin") == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: a.path + "/bin") == ["x"])
        try a.unmount()

        // All of it survives a remount; the other VM saw none of it.
        let again = try f.mount("a")
        defer { try? again.unmount() }
        #expect(try readFile(again.path + "/etc/hostname") == Array("fresh\n".utf8))
        #expect(try readFile(again.path + "/etc.old/hostname") == Array("template-host\n".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: again.path + "/usr").isEmpty)
        let b = try f.mount("b")
        defer { try? b.unmount() }
        #expect(try readFile(b.path + "/usr/share/doc/deep/readme") == Array("deep\n".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: b.path + "/etc").sorted()
                == ["hard-a", "hard-b", "hostname", "tagged"])
    }

    @Test func hardlinksKeepOneInodeNumberThroughCopyUp() throws {
        let f = try FuseFixture()
        try f.provision("a")
        let a = try f.mount("a")
        defer { try? a.unmount() }
        let before = try inode(a.path + "/etc/hard-a")
        #expect(try inode(a.path + "/etc/hard-b") == before)
        let fd = open(a.path + "/etc/hard-b", O_WRONLY | O_APPEND)
        #expect(fd >= 0)
        #expect(Glibc.write(fd, "x", 1) == 1)
        close(fd)
        #expect(try inode(a.path + "/etc/hard-a") == before)
        #expect(try inode(a.path + "/etc/hard-b") == before)
        var st = stat()
        stat(a.path + "/etc/hard-a", &st)
        #expect(st.st_nlink == 2)
        #expect(try readFile(a.path + "/etc/hard-a") == Array("shared\nx".utf8))
    }

    /// A shared writable mapping of a template file: the open copies it up, stores through the
    /// mapping reach the VM's copy only, and a private mapping taken before stays the template's.
    @Test func mmapOfATemplateFileWritesTheCopy() throws {
        let f = try FuseFixture(bigFileBytes: 64 << 10)
        try f.provision("a")
        try f.provision("b")
        let a = try f.mount("a")
        let b = try f.mount("b")
        defer { try? a.unmount(); try? b.unmount() }
        let fd = open(a.path + "/big", O_RDWR)
        #expect(fd >= 0)
        defer { close(fd) }
        let length = 64 << 10
        guard let map = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), map != MAP_FAILED else {
            Issue.record("mmap failed: \(errno)")
            return
        }
        let bytes = map.assumingMemoryBound(to: UInt8.self)
        #expect(bytes[4097] == FuseFixture.pattern(4097))
        for i in stride(from: 0, to: length, by: 4096) { bytes[i] = 0xAB }
        #expect(msync(map, length, MS_SYNC) == 0)
        munmap(map, length)
        let mine = try readFile(a.path + "/big")
        #expect(mine.count == length)
        #expect(mine[0] == 0xAB && mine[8192] == 0xAB && mine[1] == FuseFixture.pattern(1))
        let theirs = try readFile(b.path + "/big")
        #expect(theirs[0] == FuseFixture.pattern(0) && theirs[8192] == FuseFixture.pattern(8192))
    }

    @Test func inodeNumbersAreStableAcrossRemounts() throws {
        let f = try FuseFixture()
        try f.provision("a")
        var a = try f.mount("a")
        try writeFile(a.path + "/etc/hostname", "copied up\n")
        #expect(mkdir(a.path + "/new", 0o755) == 0)
        try writeFile(a.path + "/new/file", "new\n")
        #expect(link(a.path + "/new/file", a.path + "/etc/link-to-new") == 0)
        #expect(rename(a.path + "/usr/bin/tool", a.path + "/new/tool") == 0)
        let paths = ["etc", "etc/hostname", "etc/hard-a", "etc/hard-b", "new", "new/file", "etc/link-to-new",
                     "new/tool", "bin/sh", "usr/share/doc/deep/readme", "big", "."]
        var first: [String: UInt64] = [:]
        for p in paths { first[p] = try inode(a.path + "/" + p) }
        #expect(first["."] == 1)
        try a.unmount()
        a = try f.mount("a")
        defer { try? a.unmount() }
        for p in paths { #expect(try inode(a.path + "/" + p) == first[p], "\(p)") }
    }

    @Test func readOnlyMountsRefuseChanges() throws {
        let f = try FuseFixture()
        try f.provision("a")
        let a = try f.mount("a", readOnly: true)
        defer { try? a.unmount() }
        #expect(try readFile(a.path + "/etc/hostname") == Array("template-host\n".utf8))
        #expect(open(a.path + "/etc/hostname", O_WRONLY) == -1 && errno == EROFS)
        #expect(mkdir(a.path + "/x", 0o755) == -1 && errno == EROFS)
        #expect(unlink(a.path + "/etc/hostname") == -1 && errno == EROFS)
        #expect(setxattr(a.path + "/etc/hostname", "user.x", "1", 1, 0) == -1 && errno == EROFS)
        #expect(FuseMount.pvfsMount(at: a.path) != nil)
    }

    @Test func statfsAndMountTableShowTheVM() throws {
        let f = try FuseFixture()
        try f.provision("quota")
        try f.store.setQuota(vm: "quota", bytes: .some(64 << 20), inodes: .some(1000))
        let a = try f.mount("quota")
        defer { try? a.unmount() }
        var s = statvfs()
        #expect(statvfs(a.path, &s) == 0)
        #expect(UInt64(s.f_blocks) * UInt64(s.f_frsize) == 64 << 20)
        #expect(s.f_files == 1000)
        // The quota holds through the mount: EDQUOT past it.
        let fd = open(a.path + "/filler", O_WRONLY | O_CREAT, 0o644)
        defer { close(fd) }
        var chunk = [UInt8](repeating: 7, count: 1 << 20)
        var failure: Int32 = 0
        for _ in 0..<80 where failure == 0 {
            if Glibc.write(fd, &chunk, chunk.count) < 0 { failure = errno }
        }
        #expect(failure == EDQUOT)
        #expect(FuseMount.pvfsMount(at: a.path)?.vmName == "quota")
    }

    /// Every blob file still hashes to its name (no write reached shared content).
    func expectBlobsIntact(_ f: FuseFixture) throws {
        let blobs = f.storePath + "/blobs"
        for shard in try FileManager.default.contentsOfDirectory(atPath: blobs) {
            for name in try FileManager.default.contentsOfDirectory(atPath: blobs + "/" + shard) {
                let fd = try FileDescriptor.open(at: .currentDirectory, blobs + "/" + shard + "/" + name, [.readOnly])
                defer { fd.closeQuietly() }
                #expect(try SHA256Hasher.hash(file: fd).hash.hex == name)
            }
        }
    }
}
