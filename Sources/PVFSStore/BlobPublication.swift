import Foundation
import GRDB
import PVFSSystem
import Synchronization
import SystemPackage

/// What one publication did.
public struct PublicationStatistics: Sendable, Equatable {
    /// Blobs renamed into `blobs/` by this publication.
    public var newBlobs = 0
    public var newBytes: Int64 = 0
    /// Staged files whose content the store (or this batch) had already: dropped.
    public var reused = 0
    /// Time spent waiting for syncfs and directory fsyncs.
    public var syncNanoseconds: UInt64 = 0

    public init() {}

    mutating func add(_ other: PublicationStatistics) {
        newBlobs += other.newBlobs
        newBytes += other.newBytes
        reused += other.reused
        syncNanoseconds += other.syncNanoseconds
    }
}

extension Store {
    /// Publishes staged files as blobs and, in the same catalog transactions, lets `record` write
    /// the rows that reference them (it gets each staged hash's blob id).
    ///
    /// The caller holds `lock` (the blobs lock, shared) since before the files were staged; it is
    /// released by the caller after this returns. The order makes every committed row point at a
    /// durable, complete blob (docs/store-format.md, "Publication"):
    ///
    /// 1. look the hashes up in the catalog; staged copies of known content (or of content
    ///    staged twice in this batch) are deleted before anything is flushed, so re-ingesting
    ///    known content writes nothing to disk;
    /// 2. append the new hashes to the area's journal;
    /// 3. syncfs: staged data and the journal reach the disk;
    /// 4. link each unnamed staged file as `blobs/<xx>/<hash>` (linkat), or rename a named one
    ///    there with RENAME_NOREPLACE (EEXIST: the blob is there already, from a concurrent
    ///    publisher or an interrupted one; content-addressed, so it is the same bytes);
    /// 5. make the names durable: syncfs, which also writes the linked inodes' link counts
    ///    (a directory fsync would not, on a filesystem without a journal); for a few renamed
    ///    files, fsync of their shard directories (and `blobs/` when a shard was created);
    /// 6. write transactions of `rowsPerTransaction` staged blobs each: their blob rows plus the
    ///    caller's rows for them (`record` gets the range of `staged` a transaction covers).
    func publish(_ staged: [StagedBlob], from area: StagingArea, shards: ShardDirectories, rowsPerTransaction: Int = 2000,
                 record: (Database, Range<Int>, [BlobHash: Int64]) throws -> Void) throws -> PublicationStatistics {
        var stats = PublicationStatistics()
        var firstIndex: [BlobHash: Int] = [:]
        firstIndex.reserveCapacity(staged.count)
        var unique: [BlobHash] = []
        // Staged files already published or dropped; the others are dropped on the way out, so
        // no staged descriptor outlives this call whatever happens.
        var consumed = Set<Int>()
        defer {
            for (i, blob) in staged.enumerated() where !consumed.contains(i) { area.discard(blob.file) }
        }
        for (i, blob) in staged.enumerated() where blob.file != nil && firstIndex[blob.hash] == nil {
            firstIndex[blob.hash] = i
            unique.append(blob.hash)
        }
        var ids: [BlobHash: Int64] = try catalog.read { db in
            var known: [BlobHash: Int64] = [:]
            let statement = try db.cachedStatement(sql: "SELECT id FROM blob WHERE hash = ?")
            for hash in unique {
                if let id = try Int64.fetchOne(statement, arguments: [hash.bytes.databaseBlob]) { known[hash] = id }
            }
            return known
        }
        var toPublish: [Int] = []
        for (i, blob) in staged.enumerated() {
            guard blob.file != nil else {
                stats.reused += 1  // nothing staged: the content is known, its id is looked up at commit
                continue
            }
            if ids[blob.hash] == nil && firstIndex[blob.hash] == i {
                toPublish.append(i)
            } else {
                // Known or repeated content: dropped before anything is flushed.
                stats.reused += 1
                area.discard(blob.file)
                consumed.insert(i)
            }
        }

        var rowsToInsert: [(hash: BlobHash, size: Int64, allocated: Int64)] = []
        if !toPublish.isEmpty {
            do {
                try area.journal(toPublish.map { staged[$0].hash })
                let syncStarted = monotonicNanoseconds()
                try area.directory.syncFileSystem()
                stats.syncNanoseconds += monotonicNanoseconds() - syncStarted
                var touched = Set<UInt8>()
                var createdShard = false
                var linked = false
                for i in toPublish {
                    let blob = staged[i]
                    let shard = UInt8(truncatingIfNeeded: blob.hash.words.0 >> 56)
                    if try shards.ensure(shard) { createdShard = true }
                    touched.insert(shard)
                    let target = Array(StoreLayout.blobPath(blob.hash).utf8)
                    var allocated = blob.allocated
                    consumed.insert(i)
                    if case .anonymous = blob.file { linked = true }
                    if try area.publish(blob.file!, to: blobsDirectory, target) {
                        stats.newBlobs += 1
                        stats.newBytes += blob.size
                    } else {
                        allocated = (try? blobsDirectory.stat(at: target).blocks * 512) ?? allocated
                        stats.reused += 1
                    }
                    rowsToInsert.append((blob.hash, blob.size, allocated))
                }
                // The new names must be durable before rows point at them. Linked files need
                // their inodes written too (their link count went from 0 to 1): syncfs. Renamed
                // files only changed directories: a few are fsynced one by one, beyond that one
                // syncfs is cheaper (without a journal, ext4 flushes the device's cache on every
                // fsync).
                let dirSyncStarted = monotonicNanoseconds()
                if linked || touched.count > Self.directoryFsyncLimit {
                    try blobsDirectory.syncFileSystem()
                } else {
                    if createdShard { try blobsDirectory.sync() }
                    for shard in touched { try shards.sync(shard) }
                }
                stats.syncNanoseconds += monotonicNanoseconds() - dirSyncStarted
            } catch {
                throw PVFSError(.store, "cannot publish blobs in \(path)/\(StoreLayout.blobs): \(error)", errno: error)
            }
        }

        // Every staged blob is now durable under its name: the rows can be committed in chunks,
        // each chunk's new blob rows together with the caller's rows that use them.
        let now = Timespec.now.totalNanoseconds
        var pendingRows: [BlobHash: (size: Int64, allocated: Int64)] = [:]
        for row in rowsToInsert { pendingRows[row.hash] = (row.size, row.allocated) }
        for chunk in staged.indices.chunked(max(1, rowsPerTransaction)) {
            try catalog.write { db in
                let insert = try db.cachedStatement(sql: """
                    INSERT INTO blob (hash, size, allocated, created_ns) VALUES (?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING
                    """)
                let select = try db.cachedStatement(sql: "SELECT id FROM blob WHERE hash = ?")
                for index in chunk {
                    let hash = staged[index].hash
                    if ids[hash] != nil { continue }
                    let hashBlob = hash.bytes.databaseBlob
                    if let row = pendingRows[hash] {
                        try insert.execute(arguments: [hashBlob, row.size, row.allocated, now])
                        if db.changesCount == 1 {
                            ids[hash] = db.lastInsertedRowID
                            continue
                        }
                    }
                    // Content that needed no copy: known when it was staged (and still there:
                    // deleting a blob takes the blobs lock exclusively, which the caller's shared
                    // lock keeps out), or published by this ingest, or inserted by a concurrent
                    // publisher of the same content.
                    guard let id = try Int64.fetchOne(select, arguments: [hashBlob]) else {
                        throw PVFSError(.store, "blob \(hash) is neither staged nor in the catalog", errno: .ioError)
                    }
                    ids[hash] = id
                }
                try record(db, chunk, ids)
            }
        }
        return stats
    }

    /// Shard directories fsynced one by one after renames; more are covered by one syncfs.
    static let directoryFsyncLimit = 16

    /// Publishes blobs from memory; `record` writes, in the publishing transaction, the rows that
    /// reference them (a blob nothing references may be collected as soon as this returns).
    @discardableResult
    func publishBlobs(_ contents: [[UInt8]], record: (Database, [Int64]) throws -> Void) throws -> PublicationStatistics {
        let area = try StagingArea(store: self)
        defer { area.dispose() }
        let lock = try lockBlobsShared()
        defer { withExtendedLifetime(lock) {} }
        do {
            var staged: [StagedBlob] = []
            for content in contents { staged.append(try area.stage(bytes: content)) }
            return try publish(staged, from: area, shards: ShardDirectories(blobs: blobsDirectory), rowsPerTransaction: staged.count) { db, _, ids in
                try record(db, staged.map { ids[$0.hash]! })
            }
        } catch let error as Errno {
            area.removeStagedFiles()
            throw PVFSError(.store, "cannot stage blobs in \(path)/\(StoreLayout.temporary): \(error)", errno: error)
        } catch {
            area.removeStagedFiles()
            throw error
        }
    }
}

/// The 256 shard directories of `blobs/`, created on first use and kept open for fsync.
final class ShardDirectories: @unchecked Sendable {
    private let blobs: FileDescriptor
    private let opened = Mutex<[UInt8: FileDescriptor]>([:])

    init(blobs: FileDescriptor) { self.blobs = blobs }

    deinit {
        opened.withLock { for fd in $0.values { fd.closeQuietly() } }
    }

    static func name(_ shard: UInt8) -> [UInt8] { Array(StoreLayout.blobShard(shard).utf8) }

    /// Makes sure the shard directory exists; true when this call created it.
    func ensure(_ shard: UInt8) throws(Errno) -> Bool {
        if opened.withLock({ $0[shard] != nil }) { return false }
        var created = false
        do throws(Errno) {
            try blobs.makeDirectory(at: Self.name(shard), mode: 0o755)
            created = true
        } catch where error == .fileExists {}
        let fd = try FileDescriptor.open(at: blobs, Self.name(shard), [.directory, .readOnly, .noFollow])
        let kept = opened.withLock { map -> Bool in
            if map[shard] != nil { return false }
            map[shard] = fd
            return true
        }
        if !kept { fd.closeQuietly() }
        return created
    }

    func sync(_ shard: UInt8) throws(Errno) {
        guard let fd = opened.withLock({ $0[shard] }) else { return }
        try fd.sync()
    }
}
