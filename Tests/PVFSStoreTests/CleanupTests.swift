import Foundation
import Glibc
import GRDB
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSStore

/// Crash cleanup, with the state a killed ingest leaves built by hand: a 'building' template
/// with one committed batch, a blob renamed into blobs/ but never committed, a staged file, and
/// the staging area's lock file.
@Suite struct CleanupTests {
    struct Interrupted {
        var token: String
        var committed: BlobHash
        var uncommitted: BlobHash
        var shared: BlobHash
    }

    /// Leaves an interrupted ingest behind; `keep` receives the live staging area (whose lock
    /// stands for the running owner) when the caller wants to hold it.
    func interruptedIngest(_ store: Store, sharedWith other: [UInt8]? = nil, keep: ((StagingArea) -> Void)? = nil) throws -> Interrupted {
        let area = try StagingArea(store: store)
        let templateID: Int64 = try store.catalog.write { db in
            try db.execute(sql: "INSERT INTO template (name, state, created_ns, ingest_token) VALUES ('half', 'building', 0, ?)", arguments: [area.token])
            return db.lastInsertedRowID
        }
        let committedContent = Array("committed batch".utf8)
        let sharedContent = other ?? Array("shared".utf8)
        let staged = [try area.stage(bytes: committedContent), try area.stage(bytes: sharedContent)]
        _ = try store.publish(staged, from: area, shards: ShardDirectories(blobs: store.blobsDirectory)) { db, _, ids in
            for (i, blob) in staged.enumerated() {
                try db.execute(sql: """
                    INSERT INTO template_inode (template_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, blob_id)
                    VALUES (?, ?, 33188, 0, 0, 1, ?, 0, 0, 0, 0, ?)
                    """, arguments: [templateID, i + 2, blob.size, ids[blob.hash]!])
            }
            try db.execute(sql: "INSERT INTO template_dirent (template_id, parent, name, ino) VALUES (?, 1, ?, 2)",
                           arguments: [templateID, Array("f".utf8).databaseBlob])
        }
        // The next batch: journaled and renamed, killed before its commit.
        let next = try area.stage(bytes: Array("renamed, never committed".utf8))
        try area.journal([next.hash])
        let shard = ShardDirectories(blobs: store.blobsDirectory)
        _ = try shard.ensure(UInt8(truncatingIfNeeded: next.hash.words.0 >> 56))
        #expect(try area.publish(next.file!, to: store.blobsDirectory, Array(StoreLayout.blobPath(next.hash).utf8)))
        // And files still staged, named and unnamed.
        _ = try area.stage(bytes: Array("staged only".utf8))
        let unnamed = try area.createStagedFile()
        try unnamed.fd.writeAll(Array("unnamed".utf8), at: 0)
        unnamed.fd.closeQuietly()  // its process dies: the kernel frees the unnamed file
        keep?(area)
        return Interrupted(token: area.token, committed: staged[0].hash, uncommitted: next.hash, shared: staged[1].hash)
    }

    @Test func deadIngestIsReclaimed() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        let left = try interruptedIngest(store)
        #expect(try store.listTemplates().isEmpty)
        #expect(try store.blobFiles() == [left.committed, left.uncommitted, left.shared])

        let report = try store.cleanUpInterruptedIngests()
        #expect(report.ingestsReclaimed == 1 && report.templatesPurged == 1 && report.deferred == 0)
        #expect(try store.count("SELECT COUNT(*) FROM template") == 0)
        #expect(try store.count("SELECT COUNT(*) FROM template_inode") == 0)
        #expect(try store.count("SELECT COUNT(*) FROM template_dirent") == 0)
        #expect(try store.blobRows().isEmpty)
        #expect(try store.blobFiles().isEmpty)
        #expect(try store.temporaryEntries() == [])
        #expect(try store.integrityCheck() == "ok")
        // Idempotent and cheap the second time.
        #expect(try store.cleanUpInterruptedIngests() == CleanupReport())
    }

    @Test func liveIngestIsLeftAlone() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        var owner: StagingArea?
        let left = try interruptedIngest(store) { owner = $0 }
        #expect(try store.cleanUpInterruptedIngests() == CleanupReport())
        #expect(try store.count("SELECT COUNT(*) FROM template WHERE state = 'building'") == 1)
        #expect(try store.blobFiles().count == 3)
        #expect(try store.temporaryEntries() == ["ingest-\(left.token)", "ingest-\(left.token).lock"])
        owner = nil  // the owner dies
        _ = owner
        // Another test's child process may hold a copy of the lock's descriptor for the moment
        // between its fork and exec (close-on-exec closes it only at exec): the cleanup defers
        // then, and the next one reclaims.
        var reclaimed = 0
        for _ in 0..<50 where reclaimed == 0 {
            reclaimed = try store.cleanUpInterruptedIngests().ingestsReclaimed
            if reclaimed == 0 { usleep(100_000) }
        }
        #expect(reclaimed == 1)
        #expect(try store.blobFiles().isEmpty)
    }

    @Test func blobsOtherTemplatesUseAreKept() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        let content = Array("used by a ready template too".utf8)
        try writeFile(dir.sub("src/f"), content)
        _ = try store.createTemplate(name: "ready", fromDirectory: dir.sub("src"))
        let left = try interruptedIngest(store, sharedWith: content)
        #expect(left.shared == SHA256Hasher.hash(content))
        // As above: another test's child may hold the lock's descriptor between fork and exec.
        var reclaimed = 0
        for _ in 0..<50 where reclaimed == 0 {
            reclaimed = try store.cleanUpInterruptedIngests().ingestsReclaimed
            if reclaimed == 0 { usleep(100_000) }
        }
        #expect(reclaimed == 1)
        #expect(try store.blobFiles() == [left.shared])
        #expect(try store.blobRows() == [left.shared])
        #expect(try store.listTemplates().map(\.name) == ["ready"])
        let out = dir.sub("out")
        _ = try store.exportTemplate(named: "ready", to: out)
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: out + "/f"))) == content)
    }

    @Test func cleanupWaitsForTheBlobsLock() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        let left = try interruptedIngest(store)
        // Another process is between publishing and committing: it holds the lock shared.
        var publisher: LockFile? = try store.lockBlobsShared()
        let report = try store.cleanUpInterruptedIngests()
        #expect(report.deferred == 1 && report.ingestsReclaimed == 0)
        // The template left the listings and freed its name; nothing was deleted yet.
        #expect(try store.count("SELECT COUNT(*) FROM template WHERE state = 'deleting'") == 1)
        #expect(try store.blobFiles().count == 3)
        #expect(try store.temporaryEntries().contains("ingest-\(left.token).lock"))
        publisher = nil
        _ = publisher
        #expect(try store.cleanUpInterruptedIngests().ingestsReclaimed == 1)
        #expect(try store.blobFiles().isEmpty && store.count("SELECT COUNT(*) FROM template") == 0)
    }

    @Test func interruptedRemovalIsFinished() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        for i in 0..<10 { try writeFile(dir.sub("src/f\(i)"), randomBytes(100, seed: UInt64(i))) }
        _ = try store.createTemplate(name: "t", fromDirectory: dir.sub("src"))
        // rm ran while the blobs lock was busy and gave up waiting: marked, not purged.
        var busy: LockFile? = try store.lockBlobsShared()
        let removal = try store.removeTemplate(named: "t", waitSeconds: 0.05)
        #expect(removal.deferred)
        #expect(try store.listTemplates().isEmpty)
        #expect(try store.blobFiles().count == 10)
        busy = nil
        _ = busy
        let report = try store.cleanUpInterruptedIngests()
        #expect(report.templatesPurged == 1 && report.blobsRemoved == 10)
        #expect(try store.blobFiles().isEmpty && store.blobRows().isEmpty)
        #expect(try store.count("SELECT COUNT(*) FROM template") == 0)
    }

    @Test func abandonedScratchDirectoryIsRemoved() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        var scratch: ScratchDirectory? = try ScratchDirectory(store: store, kind: "recipe")
        try FileManager.default.createDirectory(atPath: scratch!.path + "/usr/bin", withIntermediateDirectories: true)
        try writeFile(scratch!.path + "/usr/bin/x", [1])
        #expect(try store.cleanUpInterruptedIngests().scratchDirectoriesRemoved == 0)
        scratch = nil  // its owner dies without removing it
        _ = scratch
        #expect(try store.cleanUpInterruptedIngests().scratchDirectoriesRemoved == 1)
        #expect(try store.temporaryEntries() == [])
    }
}
