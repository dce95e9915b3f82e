import Foundation
import Glibc
import GRDB
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSStore

@Suite(.serialized) struct TemplateIngestTests {
    @Test(.enabled(if: isRoot, "needs root: devices, owners, trusted.* and security.* xattrs"))
    func everyKindRoundTripsExactly() throws {
        let dir = try TemporaryDirectory()
        try makeEveryKindTree(at: dir.sub("src"))
        let before = try snapshotTree(dir.sub("src"))
        let store = try Store(path: dir.sub("store"))
        let report = try store.createTemplate(name: "every", fromDirectory: dir.sub("src"))
        #expect(report.devices == 2 && report.fifos == 1 && report.sockets == 1)
        #expect(report.extraHardlinks == 3)  // etc/a has 3 names, bin/sh 2
        #expect(report.newBlobs == report.regularFiles - 2)  // dup2 repeats dup1, the empty file needs none
        // The source was not disturbed: atimes included, as files and directories are read with
        // O_NOATIME. Only readlink updates a symlink's atime, as it does for every reader.
        var source = try snapshotTree(dir.sub("src"))
        for (path, entry) in source where entry.symlinkTarget != nil { source[path]!.atime = before[path]!.atime }
        for (path, entry) in before where source[path] != entry {
            Issue.record("the ingest changed the source at \(displayPath(path)): \(entry) became \(source[path].map(String.init(describing:)) ?? "nothing")")
        }

        let export = try store.exportTemplate(named: "every", to: dir.sub("out"))
        #expect(export.entries == report.entries)
        let after = try snapshotTree(dir.sub("out"))
        #expect(Set(after.keys) == Set(before.keys))
        for (path, expected) in before {
            let got = after[path]
            #expect(got == expected, "\(displayPath(path)): expected \(expected), got \(got.map(String.init(describing:)) ?? "nothing")")
        }
        // Holes survived into the blob store and out again.
        let sparse = try FileDescriptor.openPath(dir.sub("out/data/sparse"))
        defer { sparse.closeQuietly() }
        #expect(try sparse.stat().blocks * 512 < 1 << 20)
    }

    @Test(.enabled(if: isRoot))
    func catalogFollowsTheEngineContract() throws {
        let dir = try TemporaryDirectory()
        try makeEveryKindTree(at: dir.sub("src"))
        let store = try Store(path: dir.sub("store"))
        let report = try store.createTemplate(name: "every", fromDirectory: dir.sub("src"))
        let template = try #require(try store.template(named: "every"))
        #expect(template.entryCount == Int64(report.entries))
        #expect(template.maxInode == Int64(report.inodes))
        try store.catalog.read { db in
            let root = try #require(try Row.fetchOne(db, sql: "SELECT mode, nlink FROM template_inode WHERE template_id = ? AND ino = 1", arguments: [template.id]))
            #expect(FileKind(mode: UInt32(root[0] as Int64)) == .directory)
            // Root: 2 + its 10 subdirectories.
            #expect(root[1] == 12 as Int64)
            #expect(try Int64.fetchOne(db, sql: "SELECT MAX(ino) FROM template_inode WHERE template_id = ?", arguments: [template.id]) == template.maxInode)
            #expect(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM template_inode WHERE template_id = ?", arguments: [template.id]) == report.inodes)
            // Every dirent names an inode; every non-root inode has a dirent.
            #expect(try Int.fetchOne(db, sql: """
                SELECT COUNT(*) FROM template_dirent d LEFT JOIN template_inode i ON i.template_id = d.template_id AND i.ino = d.ino
                WHERE d.template_id = ? AND i.ino IS NULL
                """, arguments: [template.id]) == 0)
            // Empty files have no blob; every other regular file has one of the right size.
            #expect(try Int.fetchOne(db, sql: """
                SELECT COUNT(*) FROM template_inode WHERE template_id = ? AND (mode & 61440) = 32768 AND size = 0 AND blob_id IS NOT NULL
                """, arguments: [template.id]) == 0)
            #expect(try Int.fetchOne(db, sql: """
                SELECT COUNT(*) FROM template_inode i LEFT JOIN blob b ON b.id = i.blob_id
                WHERE i.template_id = ? AND (i.mode & 61440) = 32768 AND i.size > 0 AND (b.id IS NULL OR b.size != i.size)
                """, arguments: [template.id]) == 0)
            // The three names of etc/a share an inode with nlink 3.
            let a = try #require(try Row.fetchOne(db, sql: """
                SELECT i.ino, i.nlink FROM template_dirent d JOIN template_inode i ON i.template_id = d.template_id AND i.ino = d.ino
                WHERE d.template_id = ? AND d.name = ?
                """, arguments: [template.id, Array("a".utf8).databaseBlob]))
            #expect(a[1] == 3 as Int64)
            #expect(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM template_dirent WHERE template_id = ? AND ino = ?", arguments: [template.id, a[0] as Int64]) == 3)
            // Capability and ACLs are kept byte for byte.
            #expect(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM template_xattr WHERE template_id = ? AND name = ? AND value = ?",
                                     arguments: [template.id, Array("security.capability".utf8).databaseBlob, sampleCapability.databaseBlob]) == 1)
            #expect(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM template_xattr WHERE template_id = ? AND name = ?",
                                     arguments: [template.id, Array("system.posix_acl_default".utf8).databaseBlob]) == 1)
            #expect(try String.fetchOne(db, sql: "SELECT state FROM template WHERE id = ?", arguments: [template.id]) == "ready")
            #expect(try Row.fetchOne(db, sql: "SELECT ingest_token FROM template WHERE id = ?", arguments: [template.id])?[0] as String? == nil)
        }
        #expect(try store.temporaryEntries() == [])
        #expect(try store.blobFiles() == store.blobRows())
    }

    @Test func reingestAddsNoBlobAndShowsSharing() throws {
        let dir = try TemporaryDirectory()
        let src = dir.sub("src")
        try FileManager.default.createDirectory(atPath: src + "/sub", withIntermediateDirectories: true)
        for i in 0..<50 { try writeFile(src + "/sub/f\(i)", randomBytes(1000 + i * 997, seed: UInt64(i))) }
        let store = try Store(path: dir.sub("store"))
        let first = try store.createTemplate(name: "first", fromDirectory: src)
        #expect(first.newBlobs == 50)
        let blobs = try store.blobFiles()
        let second = try store.createTemplate(name: "second", fromDirectory: src)
        #expect(second.newBlobs == 0 && second.newBlobBytes == 0 && second.reusedContent == 50)
        #expect(try store.blobFiles() == blobs)
        #expect(try store.count("SELECT COUNT(*) FROM blob") == 50)
        let usage = try store.templateUsage(try store.requireTemplate(named: "second"))
        #expect(usage.blobCount == 50 && usage.sharedBlobCount == 50 && usage.sharedBytes == first.logicalBytes)
        #expect(try store.listTemplates().map(\.name) == ["first", "second"])

        // Removing one keeps the blobs the other uses; removing the last frees them.
        let r1 = try store.removeTemplate(named: "first")
        #expect(r1.blobsRemoved == 0 && !r1.deferred)
        #expect(try store.blobFiles() == blobs)
        let r2 = try store.removeTemplate(named: "second")
        #expect(r2.blobsRemoved == 50 && r2.bytesRemoved == first.logicalBytes)
        #expect(try store.blobFiles().isEmpty && store.blobRows().isEmpty)
        #expect(try store.count("SELECT COUNT(*) FROM template_inode") == 0)
        #expect(try store.count("SELECT COUNT(*) FROM template_dirent") == 0)
        #expect(try store.count("SELECT COUNT(*) FROM template") == 0)
    }

    @Test func repeatedContentIsStagedOnceAcrossBatches() throws {
        let dir = try TemporaryDirectory()
        let src = dir.sub("src")
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        let small = randomBytes(3000, seed: 1), large = randomBytes(3 << 20, seed: 2)
        for i in 0..<30 {
            try writeFile(src + "/s\(i)", small)
            try writeFile(src + "/u\(i)", randomBytes(100 + i, seed: UInt64(100 + i)))
        }
        for i in 0..<3 { try writeFile(src + "/l\(i)", large) }
        let store = try Store(path: dir.sub("store"))
        var options = IngestOptions()
        options.batchFiles = 4
        options.jobs = 3
        let report = try store.createTemplate(name: "t", fromDirectory: src, options: options)
        #expect(report.newBlobs == 32)
        #expect(report.reusedContent == 31)
        #expect(try store.blobFiles().count == 32)
        #expect(try store.temporaryEntries() == [])
        _ = try store.exportTemplate(named: "t", to: dir.sub("out"))
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: dir.sub("out/s17")))) == small)
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: dir.sub("out/l2")))) == large)
    }

    @Test func nameClashesAreConflicts() throws {
        let dir = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        try writeFile(dir.sub("src/x"), [1, 2, 3])
        let store = try Store(path: dir.sub("store"))
        _ = try store.createTemplate(name: "t", fromDirectory: dir.sub("src"))
        let error = #expect(throws: PVFSError.self) { try store.createTemplate(name: "t", fromDirectory: dir.sub("src")) }
        #expect(error?.domain == .store && error?.errno == .fileExists)
        let invalid = #expect(throws: PVFSError.self) { try store.createTemplate(name: "../bad", fromDirectory: dir.sub("src")) }
        #expect(invalid?.domain == .store)
        let missing = #expect(throws: PVFSError.self) { try store.createTemplate(name: "u", fromDirectory: dir.sub("nope")) }
        #expect(missing?.domain == .sourceTree)
        #expect(missing?.message.contains("does not exist") == true)
        #expect(try store.listTemplates().map(\.name) == ["t"])
        #expect(try store.temporaryEntries() == [])
    }

    @Test func removalIsRefusedWhileAVMUsesTheTemplate() throws {
        let dir = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        try writeFile(dir.sub("src/x"), [1, 2, 3])
        let store = try Store(path: dir.sub("store"))
        _ = try store.createTemplate(name: "base", fromDirectory: dir.sub("src"))
        _ = try store.provisionVM(name: "vm1", template: "base")
        let error = #expect(throws: PVFSError.self) { try store.removeTemplate(named: "base") }
        #expect(error?.domain == .store && error?.errno == .resourceBusy)
        #expect(error?.message.contains("vm1") == true)
        #expect(try store.templateUsage(try store.requireTemplate(named: "base")).vms == ["vm1"])
        try store.removeVM(named: "vm1")
        _ = try store.removeTemplate(named: "base")
        #expect(try store.listTemplates().isEmpty)
        let gone = #expect(throws: PVFSError.self) { try store.removeTemplate(named: "base") }
        #expect(gone?.domain == .store)
    }

    @Test func vanishedSourceFileFailsCleanly() throws {
        let dir = try TemporaryDirectory()
        let src = dir.sub("src")
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        for i in 0..<20 { try writeFile(src + "/f\(i)", randomBytes(5000, seed: UInt64(i))) }
        let store = try Store(path: dir.sub("store"))
        // Between the scan and the copy, a file disappears.
        let progress = IngestProgress(scanned: { _, _, _ in unlink(src + "/f7") })
        let error = #expect(throws: PVFSError.self) { try store.createTemplate(name: "t", fromDirectory: src, progress: progress) }
        #expect(error?.domain == .sourceTree)
        #expect(error?.message.contains("/f7 vanished") == true)
        try expectNoTrace(store)
    }

    @Test func changedSourceFileFailsCleanly() throws {
        let dir = try TemporaryDirectory()
        let src = dir.sub("src")
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        for i in 0..<20 { try writeFile(src + "/f\(i)", randomBytes(5000, seed: UInt64(i))) }
        let store = try Store(path: dir.sub("store"))
        let progress = IngestProgress(scanned: { _, _, _ in
            let fd = open(src + "/f3", O_WRONLY | O_APPEND)
            _ = write(fd, "more", 4)
            close(fd)
        })
        let error = #expect(throws: PVFSError.self) { try store.createTemplate(name: "t", fromDirectory: src, progress: progress) }
        #expect(error?.domain == .sourceTree)
        #expect(error?.message.contains("/f3 changed") == true)
        try expectNoTrace(store)
    }

    @Test func cancellationRemovesEverything() throws {
        let dir = try TemporaryDirectory()
        let src = dir.sub("src")
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        for i in 0..<300 { try writeFile(src + "/f\(i)", randomBytes(3000, seed: UInt64(i))) }
        let store = try Store(path: dir.sub("store"))
        let cancellation = IngestCancellation()
        var options = IngestOptions()
        options.batchFiles = 20
        options.jobs = 1
        let staged = SharedCounter(0)
        let progress = IngestProgress(staged: { _ in if staged.increment() == 100 { cancellation.cancel() } })
        let error = #expect(throws: PVFSError.self) {
            try store.createTemplate(name: "t", fromDirectory: src, options: options, progress: progress, cancellation: cancellation)
        }
        #expect(error?.domain == .store && error?.errno == .interrupted)
        try expectNoTrace(store)
    }

    @Test(.enabled(if: canMount, "needs mount (tmpfs)"))
    func diskFullFailsCleanly() throws {
        let dir = try TemporaryDirectory()
        let src = dir.sub("src")
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        for i in 0..<12 { try writeFile(src + "/big\(i)", randomBytes(1 << 20, seed: UInt64(i))) }
        try FileManager.default.createDirectory(atPath: dir.sub("store"), withIntermediateDirectories: true)
        #expect(shell("mount", "-t", "tmpfs", "-o", "size=6M", "tmpfs", dir.sub("store")) == 0)
        defer { shell("umount", "-l", dir.sub("store")) }
        let store = try Store(path: dir.sub("store"))
        var options = IngestOptions()
        options.batchFiles = 3
        let error = #expect(throws: PVFSError.self) { try store.createTemplate(name: "big", fromDirectory: src, options: options) }
        #expect(error?.domain == .store && error?.errno == .noSpace)
        #expect(error?.message.contains("no space left") == true)
        try expectNoTrace(store)
        // Space came back: a small tree still fits.
        try FileManager.default.createDirectory(atPath: dir.sub("small"), withIntermediateDirectories: true)
        try writeFile(dir.sub("small/x"), randomBytes(100_000, seed: 99))
        _ = try store.createTemplate(name: "small", fromDirectory: dir.sub("small"))
        #expect(try store.listTemplates().map(\.name) == ["small"])
    }

    @Test(.enabled(if: canMount, "needs mount (tmpfs)"))
    func mountPointsAreKeptEmptyUnlessCrossing() throws {
        let dir = try TemporaryDirectory()
        let src = dir.sub("src")
        try FileManager.default.createDirectory(atPath: src + "/proc", withIntermediateDirectories: true)
        try writeFile(src + "/file", [1])
        #expect(shell("mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", src + "/proc") == 0)
        defer { shell("umount", "-l", src + "/proc") }
        try writeFile(src + "/proc/inside", [2, 3])
        let store = try Store(path: dir.sub("store"))
        let one = try store.createTemplate(name: "one", fromDirectory: src)
        #expect(one.skippedMountPoints == ["/proc"])
        #expect(one.regularFiles == 1 && one.directories == 2)
        var options = IngestOptions()
        options.oneFileSystem = false
        let all = try store.createTemplate(name: "all", fromDirectory: src, options: options)
        #expect(all.skippedMountPoints.isEmpty && all.regularFiles == 2)
    }

    @Test(.enabled(if: canMount && FileManager.default.isExecutableFile(atPath: "/usr/sbin/mkfs.btrfs"), "needs mount and mkfs.btrfs"))
    func reflinkWhereTheFilesystemAllows() throws {
        let dir = try TemporaryDirectory()
        let image = dir.sub("btrfs.img")
        #expect(shell("truncate", "-s", "300M", image) == 0)
        #expect(shell("/usr/sbin/mkfs.btrfs", "-q", image) == 0)
        try FileManager.default.createDirectory(atPath: dir.sub("fs"), withIntermediateDirectories: true)
        guard shell("mount", "-o", "loop", image, dir.sub("fs")) == 0 else { return }
        defer { shell("umount", "-l", dir.sub("fs")) }
        let src = dir.sub("fs/src")
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        let big = randomBytes(4 << 20, seed: 4)
        try writeFile(src + "/big", big)
        try writeFile(src + "/small", [1, 2, 3])
        let store = try Store(path: dir.sub("fs/store"))
        let report = try store.createTemplate(name: "r", fromDirectory: src)
        #expect(report.copyMethod == .reflink)
        #expect(report.newBlobs == 2)
        // The blob is a snapshot: changing the source afterwards does not change it.
        try writeFile(src + "/big", randomBytes(4 << 20, seed: 5))
        let blob = try store.blobs.open(SHA256Hasher.hash(big))
        defer { blob.closeQuietly() }
        #expect(try SHA256Hasher.hash(file: blob).hash == SHA256Hasher.hash(big))
        let export = try store.exportTemplate(named: "r", to: dir.sub("fs/out"))
        #expect(export.copyMethod == "reflink")
    }

    /// Nothing of a failed ingest remains: no template, rows, blobs, staging or lock files.
    func expectNoTrace(_ store: Store, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try store.listTemplates().isEmpty, sourceLocation: sourceLocation)
        #expect(try store.count("SELECT COUNT(*) FROM template") == 0, sourceLocation: sourceLocation)
        #expect(try store.count("SELECT COUNT(*) FROM template_inode") == 0, sourceLocation: sourceLocation)
        #expect(try store.count("SELECT COUNT(*) FROM template_dirent") == 0, sourceLocation: sourceLocation)
        #expect(try store.blobRows().isEmpty, sourceLocation: sourceLocation)
        #expect(try store.blobFiles().isEmpty, sourceLocation: sourceLocation)
        #expect(try store.temporaryEntries() == [], sourceLocation: sourceLocation)
        #expect(try store.integrityCheck() == "ok", sourceLocation: sourceLocation)
    }
}

/// A counter shared with @Sendable callbacks.
final class SharedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Int
    init(_ value: Int) { self.value = value }
    func increment() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}

@Suite struct ConcurrentIngestTests {
    /// Two processes' worth of stores ingesting the same content at once: both templates are
    /// complete, each content is stored once, nothing is left over.
    @Test func concurrentIngestsShareBlobs() throws {
        let dir = try TemporaryDirectory()
        let src = dir.sub("src")
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        for i in 0..<400 { try writeFile(src + "/f\(i)", randomBytes(2000 + (i % 300) * 37, seed: UInt64(i % 300))) }
        let path = dir.sub("store")
        _ = try Store(path: path)
        let errors = SharedErrors()
        let group = DispatchGroup()
        for name in ["a", "b", "c"] {
            DispatchQueue.global().async(group: group) {
                do {
                    let store = try Store(path: path)
                    var options = IngestOptions()
                    options.batchFiles = 50
                    _ = try store.createTemplate(name: name, fromDirectory: src, options: options)
                } catch {
                    errors.append("\(name): \(error)")
                }
            }
        }
        group.wait()
        #expect(errors.all.isEmpty, "\(errors.all)")
        let store = try Store(path: path)
        #expect(try store.listTemplates().map(\.name) == ["a", "b", "c"])
        #expect(try store.blobRows().count == 300)
        #expect(try store.blobFiles() == store.blobRows())
        #expect(try store.temporaryEntries() == [])
        for name in ["a", "b", "c"] {
            #expect(try store.templateUsage(try store.requireTemplate(named: name)).blobCount == 300)
        }
    }
}

final class SharedErrors: @unchecked Sendable {
    private let lock = NSLock()
    private var errors: [String] = []
    func append(_ error: String) { lock.lock(); errors.append(error); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return errors }
}
