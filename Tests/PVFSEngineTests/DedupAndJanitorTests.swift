import Foundation
import GRDB
import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Synchronization
import Testing
@testable import PVFSEngine
@testable import PVFSStore

/// Pseudo-random bytes, the same for the same seed.
func pseudoRandom(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        out[i] = UInt8(truncatingIfNeeded: state >> 33)
    }
    return out
}

extension Store {
    func scalar(_ sql: String) throws -> Int64 {
        try CatalogSQL(catalog).read { db in try Int64.fetchOne(db, sql: sql) ?? 0 }
    }

    /// Every blob a row references has its file (checked under the blobs lock, shared, so that
    /// no deleter runs between reading the references and looking at the files).
    func referencedBlobsMissingFiles() throws -> [String] {
        let lock = try lockBlobsShared()
        defer { withExtendedLifetime(lock) {} }
        let hashes: [BlobHash] = try CatalogSQL(catalog).read { db in
            try Row.fetchAll(db, sql: """
                SELECT hash FROM blob WHERE id IN (SELECT blob_id FROM template_inode WHERE blob_id IS NOT NULL
                                                 UNION SELECT blob_id FROM vm_inode WHERE blob_id IS NOT NULL)
                """).compactMap { BlobHash(bytes: $0.bytes(0)) }
        }
        return hashes.filter { !blobs.exists($0) }.map(\.hex)
    }
}

@Suite("Dedup of VM files")
struct DedupTests {
    @Test func identicalFilesAcrossVMsShareOneBlobAndStayCopyOnWrite() throws {
        let f = try EngineFixture()
        _ = try f.provision("a", quotaBytes: 1 << 30)
        _ = try f.provision("b")
        let a = try f.view("a"), b = try f.view("b")
        let data = pseudoRandom(300_000, seed: 7)
        _ = try a.createBytes("", "big", data)
        _ = try b.createBytes("etc", "copy", data)
        _ = try a.createBytes("", "other", pseudoRandom(10_000, seed: 8))  // unique: stays private
        let usageA = a.volume.usage, usageB = b.volume.usage

        let report = try f.store.deduplicate([VolumeDedupTarget(a.volume), VolumeDedupTarget(b.volume)])
        #expect(report.filesDeduplicated == 2)
        #expect(report.groups == 1 && report.newBlobs == 1 && report.existingBlobsReused == 0)
        #expect(report.bytesSaved > 250_000)
        // Files the VMs created stay charged to them (docs/quotas.md).
        #expect(a.volume.usage == usageA)
        #expect(b.volume.usage == usageB)
        #expect(a.volume.privateFiles(minimumSize: 1).map(\.inode) == [try a.resolve("other").inode])
        #expect(b.volume.privateFiles(minimumSize: 1).isEmpty)
        #expect(try a.readWhole("big") == data)
        #expect(try b.readWhole("etc/copy") == data)
        let hash = SHA256Hasher.hash(data)
        #expect(f.store.blobs.exists(hash))

        // A write after dedup changes that VM's file only.
        try a.writeFile("big", "changed", flags: O_WRONLY)
        var expected = data
        expected.replaceSubrange(0..<7, with: Array("changed".utf8))
        #expect(try a.readWhole("big") == expected)
        #expect(try b.readWhole("etc/copy") == data)
        let blob = try f.store.blobs.open(hash)
        defer { blob.closeQuietly() }
        #expect(try SHA256Hasher.hash(file: blob).hash == hash)
        #expect(a.volume.usage == usageA)

        // Still referenced by b: the janitor keeps it; once b drops it, it goes.
        #expect(try f.store.collectGarbage().blobsRemoved == 0)
        try b.unlink(try b.resolve("etc").inode, Array("copy".utf8), as: .root)
        let gc = try f.store.collectGarbage()
        #expect(gc.blobsRemoved == 1 && gc.blobBytes == Int64(data.count))
        #expect(!f.store.blobs.exists(hash))
        #expect(try a.readWhole("big") == expected)
    }

    @Test func copiedUpTemplateFileRejoinsTheTemplateBlobAndStopsBeingCharged() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let a = try f.view("a")
        let before = a.volume.usage
        try a.writeFile("etc/hostname", "template-host\n")  // copied up, same content
        #expect(a.volume.usage.bytes == before.bytes + 4096)
        var options = DedupOptions()
        options.minimumSize = 1
        let report = try f.store.deduplicate([VolumeDedupTarget(a.volume)], options: options)
        #expect(report.filesDeduplicated == 1 && report.existingBlobsReused == 1 && report.newBlobs == 0)
        #expect(a.volume.usage == before)
        #expect(try a.readText("etc/hostname") == "template-host\n")
        #expect(try f.store.scalar("SELECT COUNT(*) FROM blob") == 3)
    }

    @Test func filesOpenForWritingAreLeftAloneAndDryRunChangesNothing() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        _ = try f.provision("b")
        let a = try f.view("a"), b = try f.view("b")
        let data = pseudoRandom(50_000, seed: 3)
        let madeA = try a.createBytes("", "x", data)
        _ = try b.createBytes("", "x", data)
        let targets: [any DedupTarget] = [VolumeDedupTarget(a.volume), VolumeDedupTarget(b.volume)]

        var dry = DedupOptions()
        dry.dryRun = true
        let preview = try f.store.deduplicate(targets, options: dry)
        #expect(preview.filesDeduplicated == 2 && preview.newBlobs == 1)
        #expect(try f.store.scalar("SELECT COUNT(*) FROM blob") == 3)
        #expect(a.volume.privateFiles(minimumSize: 1).count == 1)

        let writer = try a.open(madeA.inode, flags: O_RDWR, as: .root)
        let report = try f.store.deduplicate(targets)
        #expect(report.skippedBusy == 1 && report.filesDeduplicated == 1)
        #expect(a.volume.privateFiles(minimumSize: 1).count == 1)
        _ = try a.write(writer, offset: 0, bytes: [1, 2, 3], as: .root)
        a.release(writer)
        var changed = data
        changed.replaceSubrange(0..<3, with: [1, 2, 3])
        #expect(try a.readWhole("x") == changed)
        #expect(try b.readWhole("x") == data)
        // The changed file no longer matches: nothing more to share.
        let again = try f.store.deduplicate(targets)
        #expect(again.filesDeduplicated == 0)
    }

    @Test func fileChangedAfterHashingIsNotPublishedUnderTheOldHash() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let a = try f.view("a")
        let data = pseudoRandom(20_000, seed: 11)
        let made = try a.createBytes("", "x", data)
        // A target that changes the file between hashing and publication.
        final class Racing: DedupTarget, @unchecked Sendable {
            let inner: VolumeDedupTarget
            let view: VMView
            let opened = Atomic<Int>(0)
            init(_ view: VMView) { self.view = view; inner = VolumeDedupTarget(view.volume) }
            var vmName: String { inner.vmName }
            func dedupCandidates(minimumSize: Int64) throws -> [DedupCandidate] { try inner.dedupCandidates(minimumSize: minimumSize) }
            func openCandidate(_ inode: UInt64) throws -> FileDescriptor {
                if opened.add(1, ordering: .relaxed).newValue == 3 { try view.writeFile("x", "Z", flags: O_WRONLY) }
                return try inner.openCandidate(inode)
            }
            func replace(_ inode: UInt64, blobID: Int64, hash: BlobHash) throws -> DedupReplacement {
                try inner.replace(inode, blobID: blobID, hash: hash)
            }
        }
        let racing = Racing(a)
        // Two candidates of the same size in one VM; the second hash pass sees the first file.
        _ = try a.createBytes("", "y", data)
        let report = try f.store.deduplicate([racing])
        // Whatever was published is named by the hash of its bytes.
        let rows: [(BlobHash, Int64)] = try CatalogSQL(f.store.catalog).read { db in
            try Row.fetchAll(db, sql: "SELECT hash, size FROM blob").map { (BlobHash(bytes: $0.bytes(0))!, $0[1]) }
        }
        for (hash, _) in rows {
            let fd = try f.store.blobs.open(hash)
            #expect(try SHA256Hasher.hash(file: fd).hash == hash)
            fd.closeQuietly()
        }
        var changed = data
        changed[0] = UInt8(ascii: "Z")
        #expect(try a.readWhole("x") == changed)
        #expect(try a.readWhole("y") == data)
        #expect(report.filesDeduplicated == 1 && report.skippedChanged == 1)
        _ = made
    }
}

@Suite("Janitor")
struct JanitorTests {
    func orphanBlob(_ store: Store, _ content: [UInt8]) throws -> BlobHash {
        let hash = SHA256Hasher.hash(content)
        _ = try? store.blobsDirectory.makeDirectory(at: String(hash.hex.prefix(2)), mode: 0o755)
        let fd = try FileDescriptor.open(at: store.blobsDirectory, StoreLayout.blobPath(hash), [.writeOnly, .create], mode: 0o444)
        try fd.writeAll(content, at: 0)
        fd.closeQuietly()
        return hash
    }

    @Test func reclaimsUnreferencedRowsAndOrphanFilesOnly() throws {
        let f = try EngineFixture()
        // A blob with a row and no reference, one referenced by a template still being built,
        // and a file without a row.
        var unreferenced: Int64 = 0
        try f.store.publishBlobs([Array("nobody uses me".utf8)]) { _, ids in unreferenced = ids[0] }
        var building: Int64 = 0
        try f.store.publishBlobs([Array("a template being built uses me".utf8)]) { db, ids in
            building = ids[0]
            try db.execute(sql: "INSERT INTO template (id, name, state, created_ns, ingest_token) VALUES (2, 'wip', 'building', 0, NULL)")
            try db.execute(sql: """
                INSERT INTO template_inode (template_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, blob_id)
                VALUES (2, 2, 33188, 0, 0, 1, 30, 0, 0, 0, 0, ?)
                """, arguments: [ids[0]])
        }
        let orphan = try orphanBlob(f.store, Array("killed publisher".utf8))
        #expect(try f.store.scalar("SELECT COUNT(*) FROM blob") == 5)

        var dry = JanitorOptions()
        dry.dryRun = true
        let preview = try f.store.collectGarbage(dry)
        #expect(preview.blobsRemoved == 1 && preview.orphanFilesRemoved == 1)
        #expect(try f.store.scalar("SELECT COUNT(*) FROM blob") == 5)
        #expect(f.store.blobs.exists(orphan))

        let report = try f.store.collectGarbage()
        #expect(report.blobsRemoved == 1 && report.orphanFilesRemoved == 1 && !report.deferred)
        #expect(try f.store.scalar("SELECT COUNT(*) FROM blob WHERE id = \(unreferenced)") == 0)
        #expect(try f.store.scalar("SELECT COUNT(*) FROM blob WHERE id = \(building)") == 1)
        #expect(!f.store.blobs.exists(orphan))
        #expect(try f.store.referencedBlobsMissingFiles().isEmpty)
        #expect(try f.store.collectGarbage().blobsRemoved == 0)
    }

    @Test func waitsForTheBlobsLockAndDefers() throws {
        let f = try EngineFixture()
        try f.store.publishBlobs([Array("garbage".utf8)]) { _, _ in }
        var options = JanitorOptions()
        options.waitSeconds = 0.2
        do {
            let holder = try #require(try f.store.lockBlobsExclusive())
            let report = try f.store.collectGarbage(options)
            #expect(report.deferred && report.blobsRemoved == 0)
            withExtendedLifetime(holder) {}
        }
        do {
            // A publisher's shared lock keeps the janitor out the same way.
            let shared = try f.store.lockBlobsShared()
            #expect(try f.store.collectGarbage(options).deferred)
            withExtendedLifetime(shared) {}
        }
        #expect(try f.store.collectGarbage(options).blobsRemoved == 1)
    }

    @Test func removesAbandonedTemporaryEntriesButNotLiveOnes() throws {
        let f = try EngineFixture()
        let tmp = f.store.temporaryDirectory
        try tmp.makeDirectory(at: "recipe-dead", mode: 0o755)
        let dead = try FileDescriptor.open(at: tmp, "recipe-dead/file", [.writeOnly, .create], mode: 0o600)
        dead.closeQuietly()
        try tmp.makeDirectory(at: "stray", mode: 0o755)
        let live = try #require(try LockFile.acquire(at: tmp, "recipe-live.lock", exclusive: true, nonBlocking: true))
        try tmp.makeDirectory(at: "recipe-live", mode: 0o755)
        // Copy-up leftovers of a VM no process holds.
        let vm = try f.provision("a")
        let scratch = try FileDescriptor.open(at: f.store.vmsDirectory, "\(vm.id)/tmp/copyup-9-1", [.writeOnly, .create], mode: 0o600)
        scratch.closeQuietly()

        let report = try f.store.collectGarbage()
        #expect(report.temporaryEntriesRemoved == 3)
        let left = Set(try tmp.directoryEntries().map(\.name))
        #expect(left == ["recipe-live", "recipe-live.lock"])
        #expect((try? f.store.vmsDirectory.stat(at: "\(vm.id)/tmp/copyup-9-1")) == nil)
        withExtendedLifetime(live) {}
    }
}
