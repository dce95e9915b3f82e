import Foundation
import GRDB
import Glibc
import PVFSSystem
import SystemPackage

/// How the janitor runs.
public struct JanitorOptions: Sendable {
    /// How long to wait for the blobs lock each time it is needed (0: one attempt).
    public var waitSeconds: Double = 30
    /// Count what would be reclaimed, change nothing.
    public var dryRun = false
    /// Blob rows deleted per catalog transaction.
    public var batchRows = 500
    /// How long the blobs lock is held at most before it is released for waiting publishers.
    public var sliceMilliseconds: UInt64 = 200

    public init() {}
}

/// What one janitor run reclaimed (or, with `dryRun`, would reclaim).
public struct JanitorReport: Codable, Sendable, Equatable {
    public var dryRun: Bool
    /// Blob rows no template and no VM references, deleted with their files.
    public var blobsRemoved = 0
    /// Their content bytes and the space their files took.
    public var blobBytes: Int64 = 0
    public var blobAllocatedBytes: Int64 = 0
    /// Files in blobs/ without a catalog row (left by killed publishers).
    public var orphanFilesRemoved = 0
    public var orphanBytes: Int64 = 0
    /// Staging areas of dead ingests and dedups, and other abandoned entries of tmp/ and vms/*/tmp.
    public var ingestsReclaimed = 0
    public var templatesPurged = 0
    public var temporaryEntriesRemoved = 0
    /// VMs whose interrupted provisioning or removal was finished.
    public var vmOperationsFinished = 0
    /// True when the blobs lock stayed busy: part of the work is left for the next run.
    public var deferred = false
    public var seconds: Double = 0

    public init(dryRun: Bool) { self.dryRun = dryRun }

    /// Bytes given back to the filesystem.
    public var reclaimedBytes: Int64 { blobAllocatedBytes + orphanBytes }
}

/// An unreferenced blob as the janitor sees it.
struct BlobRow: Sendable {
    var id: Int64
    var hash: BlobHash
    var size: Int64
    var allocated: Int64
}

extension Store {
    /// The janitor (docs/janitor.md): reclaims blobs no template (in any state: the rows of a
    /// template being built count) and no VM references, blob files without a catalog row, and
    /// what dead processes left in tmp/.
    ///
    /// Safe against every concurrent publisher and referencer by the blobs lock: each unit of
    /// work holds it exclusively, so nobody is between "this blob exists" and "my reference is
    /// committed" while the janitor checks that a blob has no reference. The lock is taken in
    /// slices of at most `sliceMilliseconds` so ingests are not starved. Rows are deleted (and
    /// committed) before files: a crash in between leaves files without rows, which the next run
    /// removes as orphans.
    public func collectGarbage(_ options: JanitorOptions = JanitorOptions()) throws -> JanitorReport {
        let started = monotonicNanoseconds()
        var report = JanitorReport(dryRun: options.dryRun)
        if !options.dryRun {
            // Crash cleanup takes the blobs lock without waiting; retry it within the wait.
            let deadline = monotonicNanoseconds() + UInt64(max(0, options.waitSeconds) * 1e9)
            var pause: UInt32 = 2_000
            while true {
                let cleanup = try cleanUpInterruptedIngests()
                report.ingestsReclaimed += cleanup.ingestsReclaimed
                report.templatesPurged += cleanup.templatesPurged
                report.temporaryEntriesRemoved += cleanup.scratchDirectoriesRemoved
                if cleanup.deferred == 0 { break }
                if monotonicNanoseconds() >= deadline {
                    report.deferred = true
                    break
                }
                usleep(pause)
                pause = min(pause * 2, 100_000)
            }
            report.vmOperationsFinished = try cleanUpInterruptedVMOperationsCounting()
        }
        try collectUnreferencedBlobs(options, &report)
        if !report.deferred { try sweepOrphanBlobFiles(options, &report) }
        report.temporaryEntriesRemoved += removeStaleTemporaryEntries(dryRun: options.dryRun)
        report.temporaryEntriesRemoved += removeStaleVMScratch(dryRun: options.dryRun)
        report.seconds = Double(monotonicNanoseconds() - started) / 1e9
        if !options.dryRun && (report.blobsRemoved > 0 || report.orphanFilesRemoved > 0) {
            logger.info("janitor: removed \(report.blobsRemoved) unreferenced blob(s) and \(report.orphanFilesRemoved) orphaned file(s), \(report.reclaimedBytes) bytes")
        }
        return report
    }

    /// Blob rows that nothing references, in id order after `afterID`.
    func unreferencedBlobs(after afterID: Int64, limit: Int) throws -> [BlobRow] {
        try catalog.read { db in
            try Row.fetchAll(db, sql: """
                SELECT id, hash, size, allocated FROM blob
                WHERE id > ?
                  AND NOT EXISTS (SELECT 1 FROM template_inode WHERE blob_id = blob.id)
                  AND NOT EXISTS (SELECT 1 FROM vm_inode WHERE blob_id = blob.id)
                ORDER BY id LIMIT ?
                """, arguments: [afterID, limit]).compactMap { row in
                guard let hash = BlobHash(bytes: row.bytes(1)) else { return nil }
                return BlobRow(id: row[0], hash: hash, size: row[2], allocated: row[3])
            }
        }
    }

    /// Takes the blobs lock exclusively for one slice of work; nil (and `deferred`) when it stays busy.
    private func janitorLock(_ options: JanitorOptions, _ report: inout JanitorReport) throws -> LockFile? {
        guard let lock = try lockBlobsExclusive(waitSeconds: options.waitSeconds) else {
            report.deferred = true
            logger.notice("janitor: the blobs lock stayed busy for \(options.waitSeconds) s; the rest is left for the next run")
            return nil
        }
        return lock
    }

    /// Lets waiting publishers in between two slices: they block in flock(2) and are woken when
    /// the lock is released, but need a moment to run before the next non-blocking attempt.
    private func yieldBlobsLock() { usleep(5_000) }

    private func collectUnreferencedBlobs(_ options: JanitorOptions, _ report: inout JanitorReport) throws {
        if options.dryRun {
            var after: Int64 = 0
            while true {
                let batch = try unreferencedBlobs(after: after, limit: 10_000)
                guard let last = batch.last else { break }
                for blob in batch {
                    report.blobsRemoved += 1
                    report.blobBytes += blob.size
                    report.blobAllocatedBytes += blob.allocated
                }
                after = last.id
            }
            return
        }
        var after: Int64 = 0
        var exhausted = false
        while !exhausted {
            guard let lock = try janitorLock(options, &report) else { return }
            let sliceStart = monotonicNanoseconds()
            repeat {
                let candidates = try unreferencedBlobs(after: after, limit: options.batchRows)
                guard let last = candidates.last else {
                    exhausted = true
                    break
                }
                after = last.id
                let allocated = Dictionary(candidates.map { ($0.id, $0.allocated) }, uniquingKeysWith: { a, _ in a })
                // Checked again inside the deleting transaction: exact, since the lock keeps every
                // new reference out.
                let doomed: [(id: Int64, hash: BlobHash, size: Int64)] = try writeCatalog { db in
                    var doomed: [(Int64, BlobHash, Int64)] = []
                    for blob in candidates {
                        for gone in try Self.deleteUnreferencedBlobRows(db, ids: [blob.id]) { doomed.append((blob.id, gone.hash, gone.size)) }
                    }
                    return doomed
                }
                // The deletion must outlive a power loss before the files go (a row without its file).
                if !doomed.isEmpty { try makeCatalogDurable() }
                for blob in doomed {
                    unlinkBlob(blob.hash)
                    report.blobsRemoved += 1
                    report.blobBytes += blob.size
                    report.blobAllocatedBytes += allocated[blob.id] ?? 0
                }
            } while monotonicNanoseconds() - sliceStart < options.sliceMilliseconds * 1_000_000
            withExtendedLifetime(lock) {}
            if !exhausted { yieldBlobsLock() }
        }
    }

    /// The shard directories present in blobs/, sorted.
    func blobShardNames() throws -> [[UInt8]] {
        do {
            return try blobsDirectory.rawDirectoryEntries().map(\.name).filter(Self.isShardName).sorted { $0.lexicographicallyPrecedes($1) }
        } catch {
            throw PVFSError(.store, "cannot list \(path)/\(StoreLayout.blobs): \(error)", errno: error)
        }
    }

    static func isShardName(_ name: [UInt8]) -> Bool {
        name.count == 2 && name.allSatisfy(StoreLayout.isLowerHexDigit)
    }

    /// What a shard directory holds: blob names (parsed) and anything else.
    struct ShardListing {
        var blobs: [(name: [UInt8], hash: BlobHash)] = []
        var unexpected: [[UInt8]] = []
    }

    func listShard(_ shardName: [UInt8]) throws(Errno) -> ShardListing {
        let fd = try FileDescriptor.open(at: blobsDirectory, shardName, [.directory, .readOnly, .noFollow])
        defer { fd.closeQuietly() }
        var listing = ShardListing()
        for entry in try fd.rawDirectoryEntries() {
            if entry.name.count == 64, entry.name.starts(with: shardName), entry.name.allSatisfy(StoreLayout.isLowerHexDigit),
               let hash = BlobHash(hex: String(decoding: entry.name, as: UTF8.self)) {
                listing.blobs.append((entry.name, hash))
            } else {
                listing.unexpected.append(entry.name)
            }
        }
        return listing
    }

    /// The hashes among `hashes` that have no catalog row.
    func hashesWithoutRows(_ hashes: [BlobHash]) throws -> [BlobHash] {
        try catalog.read { db in
            let statement = try db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM blob WHERE hash = ?)")
            return try hashes.filter { try Bool.fetchOne(statement, arguments: [$0.bytes.databaseBlob]) != true }
        }
    }

    /// Removes the files of one shard that have no catalog row. The caller holds the blobs lock
    /// exclusively: no publisher is then between renaming a blob into place and committing its
    /// row, so a file without a row belongs to a publisher that died.
    func removeOrphanBlobFiles(shard: [UInt8], dryRun: Bool) throws -> (files: Int, bytes: Int64, hashes: [BlobHash]) {
        let listing: ShardListing
        do {
            listing = try listShard(shard)
        } catch {
            if error == .noSuchFileOrDirectory { return (0, 0, []) }
            throw PVFSError(.store, "cannot list \(path)/\(StoreLayout.blobs)/\(String(decoding: shard, as: UTF8.self)): \(error)", errno: error)
        }
        let orphans = try hashesWithoutRows(listing.blobs.map(\.hash))
        var bytes: Int64 = 0
        for hash in orphans {
            let relative = StoreLayout.blobPath(hash)
            bytes += ((try? blobsDirectory.stat(at: relative))?.blocks ?? 0) * 512
            if !dryRun { unlinkBlob(hash) }
        }
        return (orphans.count, bytes, orphans)
    }

    private func sweepOrphanBlobFiles(_ options: JanitorOptions, _ report: inout JanitorReport) throws {
        let shards = try blobShardNames()
        var index = 0
        while index < shards.count {
            guard let lock = try janitorLock(options, &report) else { return }
            let sliceStart = monotonicNanoseconds()
            repeat {
                let (files, bytes, _) = try removeOrphanBlobFiles(shard: shards[index], dryRun: options.dryRun)
                report.orphanFilesRemoved += files
                report.orphanBytes += bytes
                index += 1
            } while index < shards.count && monotonicNanoseconds() - sliceStart < options.sliceMilliseconds * 1_000_000
            withExtendedLifetime(lock) {}
            if index < shards.count { yieldBlobsLock() }
        }
    }

    /// Entries of tmp/ whose owner is gone, other than staging areas of ingests (those are
    /// reconciled with the catalog by `cleanUpInterruptedIngests` first, from their journal).
    /// Every owner of `tmp/<name>` holds the flock on `tmp/<name>.lock`, taken before it creates
    /// `<name>`; so an entry whose lock file can be locked (or does not exist) is abandoned.
    func staleTemporaryEntries() -> [String] {
        guard let entries = try? temporaryDirectory.rawDirectoryEntries() else { return [] }
        var bases = Set<String>()
        for entry in entries {
            var name = String(decoding: entry.name, as: UTF8.self)
            if name.hasSuffix(".lock") { name = String(name.dropLast(".lock".count)) }
            if StoreLayout.ingestToken(lockName: Array((name + ".lock").utf8)) != nil { continue }
            bases.insert(name)
        }
        return bases.sorted()
    }

    /// Whether nobody holds `<name>` in `directory` (a missing lock file has no holder). Creates
    /// nothing: for checks that must not change the store.
    func lockIsFree(in directory: FileDescriptor, _ name: String) -> Bool {
        guard let fd = try? FileDescriptor.open(at: directory, name, [.readOnly, .noFollow]) else {
            return (try? directory.stat(at: name)) == nil
        }
        defer { fd.closeQuietly() }
        guard (try? fd.lock(exclusive: true, nonBlocking: true)) == true else { return false }
        return true
    }

    /// Removes abandoned entries of tmp/; returns how many.
    func removeStaleTemporaryEntries(dryRun: Bool) -> Int {
        var removed = 0
        for base in staleTemporaryEntries() {
            if dryRun {
                if lockIsFree(in: temporaryDirectory, base + ".lock") && (try? temporaryDirectory.stat(at: base)) != nil { removed += 1 }
                continue
            }
            guard let lock = try? LockFile.acquire(at: temporaryDirectory, base + ".lock", exclusive: true, nonBlocking: true) else { continue }
            removed += 1
            do {
                try removeScratch(base)
            } catch {
                logger.warning("cannot remove the abandoned \(path)/\(StoreLayout.temporary)/\(base): \(error)")
            }
            withExtendedLifetime(lock) {}
        }
        return removed
    }

    /// Copy-up leftovers in vms/<id>/tmp of VMs no process holds (a holder cleans its own on open).
    /// The VM's lock is taken only where there is something to remove, so that the janitor does
    /// not make a concurrent open of the VM fail for the moment it holds it.
    func removeStaleVMScratch(dryRun: Bool) -> Int {
        guard let entries = try? vmsDirectory.directoryEntries() else { return 0 }
        var removed = 0
        for entry in entries {
            guard let id = StoreLayout.vmID(directoryName: entry.name),
                  (try? VMArea.openUnlocked(in: self, vmID: id))?.hasScratchFiles == true,
                  let area = try? VMArea.openIfFree(in: self, vmID: id) else { continue }
            removed += dryRun ? area.scratchFileCount() : area.clearScratch()
            area.close()
        }
        return removed
    }

    /// `cleanUpInterruptedVMOperations`, returning how many VMs it finished.
    func cleanUpInterruptedVMOperationsCounting() throws -> Int {
        let before: Int = try catalog.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM vm WHERE state IN ('provisioning', 'deleting')") ?? 0
        }
        guard before > 0 else { return 0 }
        try cleanUpInterruptedVMOperations()
        let after: Int = try catalog.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM vm WHERE state IN ('provisioning', 'deleting')") ?? 0
        }
        return before - after
    }
}
