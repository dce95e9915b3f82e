import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

@Suite("Merged view")
struct MergedViewTests {
    @Test func readsTemplateFiles() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        #expect(try v.readText("etc/hostname") == "template-host\n")
        #expect(try v.readText("etc/hard-b") == "shared\n")
        #expect(try v.readLink(v.resolve("bin/sh").inode) == Array("busybox".utf8))
        #expect(try v.names("etc") == ["deep", "hard-a", "hard-b", "hostname"])
        #expect(try v.resolve("etc/hard-a").linkCount == 2)
        #expect(try v.resolve("etc").linkCount == 3)
        #expect(try v.readText("empty") == "")
        #expect(throws: Errno.noSuchFileOrDirectory) { try v.resolve("etc/nothing") }
        #expect(try v.resolve("etc/..").inode == rootInode)
        #expect(try v.resolve("..").inode == rootInode)
    }

    @Test func copyUpIsolatesVMs() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        _ = try f.provision("b")
        let a = try f.view("a")
        let b = try f.view("b")
        let before = try a.resolve("etc/hostname")
        try a.writeFile("etc/hostname", "vm-a\n")
        let after = try a.resolve("etc/hostname")
        #expect(after.inode == before.inode)
        #expect(try a.readText("etc/hostname") == "vm-a\n")
        #expect(try b.readText("etc/hostname") == "template-host\n")
        // Hardlinks stay one inode across copy-up.
        try a.writeFile("etc/hard-a", "changed\n")
        #expect(try a.readText("etc/hard-b") == "changed\n")
        #expect(try b.readText("etc/hard-b") == "shared\n")
        // The template's blob is untouched.
        let blob = try f.store.blobs.open(SHA256Hasher.hash(Array("template-host\n".utf8)))
        defer { blob.closeQuietly() }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = try buffer.withUnsafeMutableBytes { try blob.read(into: $0, at: 0) }
        #expect(String(decoding: buffer[0..<n], as: UTF8.self) == "template-host\n")
    }

    @Test func openHandleSeesCopyUp() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        let ino = try v.resolve("etc/hostname").inode
        let reader = try v.open(ino, flags: O_RDONLY, as: root)
        defer { v.release(reader) }
        let writer = try v.open(ino, flags: O_RDWR, as: root)
        _ = try v.write(writer, offset: 0, bytes: Array("XXXX".utf8), as: root)
        v.release(writer)
        #expect(String(decoding: try v.read(reader, offset: 0, count: 100), as: UTF8.self) == "XXXXlate-host\n")
    }

    @Test func unlinkWhiteoutAndRecreate() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        let etc = try v.resolve("etc").inode
        try v.unlink(etc, Array("hostname".utf8), as: root)
        #expect(throws: Errno.noSuchFileOrDirectory) { try v.resolve("etc/hostname") }
        #expect(try v.names("etc") == ["deep", "hard-a", "hard-b"])
        _ = try v.createFile("etc", "hostname", "new\n")
        #expect(try v.readText("etc/hostname") == "new\n")
        try v.unlink(etc, Array("hard-a".utf8), as: root)
        #expect(try v.resolve("etc/hard-b").linkCount == 1)
        #expect(throws: Errno.directoryNotEmpty) { try v.removeDirectory(rootInode, Array("etc".utf8), as: root) }
        #expect(throws: Errno.isDirectory) { try v.unlink(rootInode, Array("etc".utf8), as: root) }
    }

    @Test func renameTemplateDirectories() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        let etc = try v.resolve("etc").inode
        let deep = try v.resolve("etc/deep").inode
        try v.rename(etc, Array("deep".utf8), to: rootInode, Array("moved".utf8), as: root)
        #expect(try v.resolve("moved").inode == deep)
        #expect(try v.readText("moved/a/file") == "deep\n")
        #expect(try v.resolve("moved/..").inode == rootInode)
        #expect(throws: Errno.noSuchFileOrDirectory) { try v.resolve("etc/deep") }
        #expect(try v.resolve("etc").linkCount == 2)
        #expect(try v.getAttributes(rootInode).linkCount == 5)
        // Into its own subtree: EINVAL.
        let a = try v.resolve("moved/a").inode
        #expect(throws: Errno.invalidArgument) { try v.rename(rootInode, Array("moved".utf8), to: a, Array("x".utf8), as: root) }
        // Exchange a directory and a file.
        try v.rename(rootInode, Array("moved".utf8), to: etc, Array("hostname".utf8), flags: .exchange, as: root)
        #expect(try v.resolve("etc/hostname").inode == deep)
        #expect(try v.readText("moved") == "template-host\n")
        #expect(throws: Errno.fileExists) {
            try v.rename(rootInode, Array("moved".utf8), to: rootInode, Array("empty".utf8), flags: .noReplace, as: root)
        }
        // Recreate the old name as a new directory: it starts empty.
        _ = try v.makeDirectory(etc, Array("deep".utf8), mode: 0o755, as: root)
        #expect(try v.names("etc/deep") == [])
    }

    @Test func persistsAcrossReopen() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        do {
            let v = try f.view("a")
            _ = try v.makeDirectory(rootInode, Array("home".utf8), mode: 0o755, as: root)
            _ = try v.createFile("home", "notes", "hello\n")
            try v.writeFile("etc/hostname", "persisted\n")
            try v.unlink(try v.resolve("etc").inode, Array("hard-a".utf8), as: root)
            try v.setXattr(try v.resolve("home/notes").inode, Array("user.k".utf8), Array("v".utf8), as: root)
            try v.volume.close()
        }
        let v = try f.view("a")
        #expect(try v.readText("home/notes") == "hello\n")
        #expect(try v.readText("etc/hostname") == "persisted\n")
        #expect(try v.names("etc") == ["deep", "hard-b", "hostname"])
        #expect(try v.getXattr(try v.resolve("home/notes").inode, Array("user.k".utf8), as: root) == Array("v".utf8))
        #expect(try v.getXattr(try v.resolve("etc/hostname").inode, Array("user.origin".utf8), as: root) == Array("template".utf8))
    }

    @Test func readdirOffsetsAreStable() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        let dir = try v.makeDirectory(rootInode, Array("many".utf8), mode: 0o755, as: root).inode
        for i in 0..<200 { _ = try v.createFile("many", "f\(i)", "") }
        var seen = Set<String>()
        var cookie: UInt64 = 0
        var round = 0
        while true {
            let batch = try v.readDirectory(dir, after: cookie, limit: 17, as: root)
            if batch.isEmpty { break }
            for e in batch { seen.insert(String(decoding: e.name, as: UTF8.self)) }
            cookie = batch.last!.cookie
            // Concurrent change: remove one not yet seen and add a new one.
            round += 1
            if round == 3 { _ = try v.createFile("many", "late", "") }
        }
        for i in 0..<200 { #expect(seen.contains("f\(i)")) }
        #expect(seen.contains(".") && seen.contains(".."))
    }

    @Test func quotaLimitsWritesAndFreesOnDelete() throws {
        let f = try EngineFixture()
        _ = try f.provision("q", quotaBytes: 64 * 1024, quotaInodes: 10)
        let v = try f.view("q")
        let (_, h) = try v.create(rootInode, Array("big".utf8), mode: 0o644, flags: O_RDWR, as: root)
        _ = try v.write(h, offset: 0, bytes: [UInt8](repeating: 1, count: 40 * 1024), as: root)
        #expect(throws: Errno.diskQuotaExceeded) { _ = try v.write(h, offset: 40 * 1024, bytes: [UInt8](repeating: 1, count: 40 * 1024), as: root) }
        v.release(h)
        #expect(try v.resolve("big").size == 40 * 1024)
        let stats = v.statistics()
        #expect(stats.totalBlocks == 16)
        #expect(stats.freeBlocks == 16 - 10)
        try v.unlink(rootInode, Array("big".utf8), as: root)
        #expect(v.volume.usage.bytes == 0)
        #expect(v.statistics().freeBlocks == 16)
    }

    /// New inodes take consecutive numbers (so private files spread over the 256 shard
    /// directories), and numbers handed out before a restart are never handed out again.
    @Test func inodeNumbersAreConsecutiveAndNotReusedAfterRestart() throws {
        let f = try EngineFixture()
        _ = try f.provision("n")
        var v = try f.view("n")
        var numbers: [InodeNumber] = []
        for i in 0..<20 { numbers.append(try v.createFile("", "f\(i)", "").inode) }
        for (a, b) in zip(numbers, numbers.dropFirst()) { #expect(b == a + 1) }
        try v.volume.close()
        v = try f.view("n")
        let after = try v.createFile("", "g", "").inode
        #expect(after > numbers.last!)
        #expect(try v.resolve("f19").inode == numbers.last!)
        try v.volume.close()
    }
}
