import Foundation
import GRDB
import PVFSSystem
import SystemPackage

/// A ready template as the catalog records it.
public struct TemplateRecord: Codable, Sendable, Equatable {
    public var id: Int64
    public var name: String
    public var source: String
    public var createdNanoseconds: Int64
    /// Paths in the tree, the root included.
    public var entryCount: Int64
    /// Sum of the sizes of its regular files (hardlinked files once).
    public var logicalBytes: Int64
    public var maxInode: Int64
}

/// How a template uses the blob store.
public struct TemplateUsage: Codable, Sendable, Equatable {
    /// Inodes (files, directories, ...) of the template.
    public var inodes: Int64
    /// Distinct blobs its files reference, their bytes and the space they take on disk.
    public var blobCount: Int64
    public var blobBytes: Int64
    public var allocatedBytes: Int64
    /// Of those, the blobs another template references too.
    public var sharedBlobCount: Int64
    public var sharedBytes: Int64
    /// VMs provisioned from the template.
    public var vms: [String]
}

/// What removing a template freed.
public struct TemplateRemoval: Codable, Sendable, Equatable {
    public var name: String
    /// Blobs deleted because nothing else referenced them, and their bytes.
    public var blobsRemoved: Int
    public var bytesRemoved: Int64
    /// True when another process held the blobs lock: the template is gone from listings and
    /// its rows and blobs are removed by the next cleanup.
    public var deferred: Bool
}

/// What `cleanUpInterruptedIngests` did.
public struct CleanupReport: Sendable, Equatable {
    /// Staging areas of dead ingests fully reconciled and removed.
    public var ingestsReclaimed = 0
    /// Templates (unfinished or being removed) whose rows were deleted.
    public var templatesPurged = 0
    public var blobsRemoved = 0
    /// Work left because the blobs lock was held by someone else.
    public var deferred = 0
    /// Scratch directories (recipe builds) of dead processes removed.
    public var scratchDirectoriesRemoved = 0
}

extension Store {
    static let templateColumns = "id, name, source, created_ns, entry_count, logical_bytes, max_inode"

    static func templateRecord(_ row: Row) -> TemplateRecord {
        TemplateRecord(id: row[0], name: row[1], source: row[2], createdNanoseconds: row[3], entryCount: row[4],
                       logicalBytes: row[5], maxInode: row[6])
    }

    /// Ready templates by name. Templates being built or removed are never listed.
    public func listTemplates() throws -> [TemplateRecord] {
        try catalog.read { db in
            try Row.fetchAll(db, sql: "SELECT \(Self.templateColumns) FROM template WHERE state = 'ready' ORDER BY name")
                .map(Self.templateRecord)
        }
    }

    public func template(named name: String) throws -> TemplateRecord? {
        try catalog.read { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.templateColumns) FROM template WHERE name = ? AND state = 'ready'", arguments: [name])
                .map(Self.templateRecord)
        }
    }

    public func requireTemplate(named name: String) throws -> TemplateRecord {
        guard let record = try template(named: name) else {
            throw PVFSError(.store, "no template named \(name)", errno: .noSuchFileOrDirectory)
        }
        return record
    }

    public func templateUsage(_ template: TemplateRecord) throws -> TemplateUsage {
        try catalog.read { db in
            let id = template.id
            let inodes = try Int64.fetchOne(db, sql: "SELECT COUNT(*) FROM template_inode WHERE template_id = ?", arguments: [id]) ?? 0
            let totals = try Row.fetchOne(db, sql: """
                SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(allocated), 0) FROM blob
                WHERE id IN (SELECT blob_id FROM template_inode WHERE template_id = ? AND blob_id IS NOT NULL)
                """, arguments: [id])!
            let shared = try Row.fetchOne(db, sql: """
                SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blob
                WHERE id IN (SELECT blob_id FROM template_inode WHERE template_id = ? AND blob_id IS NOT NULL)
                  AND EXISTS (SELECT 1 FROM template_inode other WHERE other.blob_id = blob.id AND other.template_id != ?)
                """, arguments: [id, id])!
            let vms = try String.fetchAll(db, sql: "SELECT name FROM vm WHERE template_id = ? AND state = 'ready' ORDER BY name", arguments: [id])
            return TemplateUsage(inodes: inodes, blobCount: totals[0], blobBytes: totals[1], allocatedBytes: totals[2],
                                 sharedBlobCount: shared[0], sharedBytes: shared[1], vms: vms)
        }
    }

    /// Removes a template, refused while a VM uses it. Its rows go in short transactions, then
    /// the blobs nothing else references (holding the blobs lock exclusively, waiting for it up
    /// to `waitSeconds`; when it stays busy the removal is finished by a later cleanup).
    public func removeTemplate(named name: String, waitSeconds: Double = 10) throws -> TemplateRemoval {
        let id: Int64 = try writeCatalog { db in
            guard let id = try Int64.fetchOne(db, sql: "SELECT id FROM template WHERE name = ? AND state = 'ready'", arguments: [name]) else {
                throw PVFSError(.store, "no template named \(name)", errno: .noSuchFileOrDirectory)
            }
            let users = try String.fetchAll(db, sql: "SELECT name FROM vm WHERE template_id = ? ORDER BY name", arguments: [id])
            if !users.isEmpty {
                let list = users.prefix(5).joined(separator: ", ") + (users.count > 5 ? ", ..." : "")
                throw PVFSError(.store, "template \(name) is used by \(users.count) VM(s) (\(list)); remove them first", errno: .resourceBusy)
            }
            try Self.markDeleting(db, templateID: id)
            return id
        }
        guard let lock = try lockBlobsExclusive(waitSeconds: waitSeconds) else {
            return TemplateRemoval(name: name, blobsRemoved: 0, bytesRemoved: 0, deferred: true)
        }
        defer { withExtendedLifetime(lock) {} }
        let (blobs, bytes) = try purgeTemplate(id: id)
        return TemplateRemoval(name: name, blobsRemoved: blobs, bytesRemoved: bytes, deferred: false)
    }

    /// Takes a template out of listings and frees its name.
    static func markDeleting(_ db: Database, templateID id: Int64) throws {
        try db.execute(sql: "UPDATE template SET state = 'deleting', name = name || '.deleting.' || id WHERE id = ? AND state != 'deleting'",
                       arguments: [id])
    }

    /// Deletes a (deleting) template's rows in inode ranges, one short transaction each, with the
    /// blobs that thereby lose their last reference. The caller holds the blobs lock
    /// exclusively. Rows are committed, durably, before files are unlinked: a crash or a power
    /// loss in between leaves files without rows (collected by the janitor, or adopted by a later
    /// publication of the same content), never a row without its file.
    func purgeTemplate(id: Int64) throws -> (blobs: Int, bytes: Int64) {
        let maxIno: Int64 = try catalog.read { db in
            let a = try Int64.fetchOne(db, sql: "SELECT MAX(ino) FROM template_inode WHERE template_id = ?", arguments: [id]) ?? 0
            let b = try Int64.fetchOne(db, sql: "SELECT MAX(parent) FROM template_dirent WHERE template_id = ?", arguments: [id]) ?? 0
            let c = try Int64.fetchOne(db, sql: "SELECT MAX(ino) FROM template_xattr WHERE template_id = ?", arguments: [id]) ?? 0
            return max(a, b, c)
        }
        var blobsRemoved = 0
        var bytesRemoved: Int64 = 0
        let step: Int64 = 2000
        var low: Int64 = 0
        while low <= maxIno {
            let high = low + step - 1
            let doomed: [(hash: BlobHash, size: Int64)] = try writeCatalog { db in
                try db.execute(sql: "DELETE FROM template_xattr WHERE template_id = ? AND ino BETWEEN ? AND ?", arguments: [id, low, high])
                try db.execute(sql: "DELETE FROM template_dirent WHERE template_id = ? AND parent BETWEEN ? AND ?", arguments: [id, low, high])
                let blobIDs = try Int64.fetchAll(db, sql: """
                    SELECT DISTINCT blob_id FROM template_inode WHERE template_id = ? AND ino BETWEEN ? AND ? AND blob_id IS NOT NULL
                    """, arguments: [id, low, high])
                try db.execute(sql: "DELETE FROM template_inode WHERE template_id = ? AND ino BETWEEN ? AND ?", arguments: [id, low, high])
                return try Self.deleteUnreferencedBlobRows(db, ids: blobIDs)
            }
            if !doomed.isEmpty { try makeCatalogDurable() }
            for blob in doomed {
                unlinkBlob(blob.hash)
                blobsRemoved += 1
                bytesRemoved += blob.size
            }
            low += step
        }
        try writeCatalog { db in
            try db.execute(sql: "DELETE FROM template WHERE id = ?", arguments: [id])
        }
        return (blobsRemoved, bytesRemoved)
    }

    /// Deletes the rows of those blobs no template or VM references; returns their hashes.
    static func deleteUnreferencedBlobRows(_ db: Database, ids: [Int64]) throws -> [(hash: BlobHash, size: Int64)] {
        var doomed: [(hash: BlobHash, size: Int64)] = []
        let check = try db.cachedStatement(sql: """
            SELECT hash, size FROM blob WHERE id = ?
              AND NOT EXISTS (SELECT 1 FROM template_inode WHERE blob_id = ?)
              AND NOT EXISTS (SELECT 1 FROM vm_inode WHERE blob_id = ?)
            """)
        let delete = try db.cachedStatement(sql: "DELETE FROM blob WHERE id = ?")
        for blobID in ids {
            guard let row = try Row.fetchOne(check, arguments: [blobID, blobID, blobID]),
                  let hash = BlobHash(bytes: row.bytes(0)) else { continue }
            try delete.execute(arguments: [blobID])
            doomed.append((hash, row[1]))
        }
        return doomed
    }

    /// Unlinks a blob's file (already gone is fine).
    func unlinkBlob(_ hash: BlobHash) {
        do {
            try blobsDirectory.unlink(at: StoreLayout.blobPath(hash))
        } catch where error == .noSuchFileOrDirectory {
        } catch {
            logger.warning("cannot remove blob \(hash): \(error)")
        }
    }

    /// Finishes what killed processes left half done (docs/store-format.md, "Crash cleanup"):
    ///
    /// - a staging area whose lock file nobody holds belongs to a dead ingest: its staged files
    ///   go, its template (state 'building') is taken out of listings, its rows are deleted, and
    ///   every blob its journal names that no committed row references is deleted;
    /// - templates left in state 'deleting' by an interrupted removal are purged.
    ///
    /// Deleting rows and blobs needs the blobs lock exclusively; when another process holds it
    /// the work stays for a later call. Safe to run at any time and from several processes: live
    /// ingests hold their lock, so they are never touched. Cheap when there is nothing to do.
    @discardableResult
    public func cleanUpInterruptedIngests() throws -> CleanupReport {
        var report = CleanupReport()
        var tokens: [String] = []
        do {
            for entry in try temporaryDirectory.rawDirectoryEntries() {
                if let token = StoreLayout.ingestToken(lockName: entry.name) { tokens.append(token) }
            }
        } catch {
            throw PVFSError(.store, "cannot list \(path)/\(StoreLayout.temporary): \(error)", errno: error)
        }
        // Unfinished templates whose ingest left no lock file behind (it was removed by hand).
        let orphans: [String] = try catalog.read { db in
            try String.fetchAll(db, sql: "SELECT ingest_token FROM template WHERE ingest_token IS NOT NULL AND state != 'ready'")
        }
        for token in orphans where !tokens.contains(token) && Self.isToken(token) { tokens.append(token) }

        for token in tokens {
            let lock: LockFile?
            do {
                lock = try LockFile.acquire(at: temporaryDirectory, StoreLayout.ingestLock(token), exclusive: true, nonBlocking: true)
            } catch {
                logger.warning("cannot check ingest \(token): \(error)")
                continue
            }
            guard let lock else { continue }  // its ingest is running
            let before = try countTemplates(token: token)
            if try reclaimIngest(token: token, waitSeconds: 0) {
                report.ingestsReclaimed += 1
                report.templatesPurged += before
            } else {
                report.deferred += 1
            }
            withExtendedLifetime(lock) {}
        }

        let deleting: [Int64] = try catalog.read { db in
            try Int64.fetchAll(db, sql: "SELECT id FROM template WHERE state = 'deleting' AND ingest_token IS NULL")
        }
        if !deleting.isEmpty {
            if let lock = try lockBlobsExclusive(waitSeconds: 0) {
                for id in deleting {
                    let (blobs, _) = try purgeTemplate(id: id)
                    report.blobsRemoved += blobs
                    report.templatesPurged += 1
                }
                withExtendedLifetime(lock) {}
            } else {
                report.deferred += deleting.count
            }
        }
        report.scratchDirectoriesRemoved = cleanUpAbandonedScratch()
        if report != CleanupReport() {
            logger.info("cleaned up after interrupted operations: \(report.ingestsReclaimed) ingest(s), \(report.templatesPurged) template(s), \(report.deferred) deferred")
        }
        return report
    }

    private static func isToken(_ token: String) -> Bool {
        StoreLayout.ingestToken(lockName: Array(StoreLayout.ingestLock(token).utf8)) == token
    }

    private func countTemplates(token: String) throws -> Int {
        try catalog.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM template WHERE ingest_token = ?", arguments: [token]) ?? 0
        }
    }

    /// Reconciles a dead (or failed) ingest with the catalog. The caller holds the ingest's lock.
    /// Returns false when the blobs lock could not be had: the template is then out of listings
    /// and the rest is left for later.
    func reclaimIngest(token: String, waitSeconds: Double) throws -> Bool {
        let directory = try? FileDescriptor.open(at: temporaryDirectory, StoreLayout.ingestDirectory(token), [.directory, .readOnly, .noFollow])
        defer { directory?.closeQuietly() }
        if let directory { Self.removeStagedFiles(in: directory) }

        let templates: [Int64] = try catalog.write { db in
            let ids = try Int64.fetchAll(db, sql: "SELECT id FROM template WHERE ingest_token = ? AND state != 'ready'", arguments: [token])
            for id in ids { try Self.markDeleting(db, templateID: id) }
            return ids
        }
        let hashes = directory.map(Self.readJournal) ?? []
        // Nothing published and no rows (a name clash, a failure during the scan): no blob can
        // need deleting, so no need to wait for the blobs lock.
        if templates.isEmpty && hashes.isEmpty {
            try? removeTree(at: temporaryDirectory, StoreLayout.ingestDirectory(token))
            _ = try? temporaryDirectory.unlink(at: StoreLayout.ingestLock(token))
            return true
        }
        guard let blobsLock = try lockBlobsExclusive(waitSeconds: waitSeconds) else { return false }
        defer { withExtendedLifetime(blobsLock) {} }
        for id in templates { _ = try purgeTemplate(id: id) }

        if directory != nil {
            for chunk in hashes.chunked(500) {
                let doomed: [BlobHash] = try catalog.write { db in
                    var doomed: [BlobHash] = []
                    let find = try db.cachedStatement(sql: "SELECT id FROM blob WHERE hash = ?")
                    for hash in hashes[chunk] {
                        if let id = try Int64.fetchOne(find, arguments: [hash.bytes.databaseBlob]) {
                            doomed += try Self.deleteUnreferencedBlobRows(db, ids: [id]).map(\.hash)
                        } else {
                            doomed.append(hash)  // published, never committed
                        }
                    }
                    return doomed
                }
                if !doomed.isEmpty { try makeCatalogDurable() }
                for hash in doomed { unlinkBlob(hash) }
            }
        }
        try? removeTree(at: temporaryDirectory, StoreLayout.ingestDirectory(token))
        _ = try? temporaryDirectory.unlink(at: StoreLayout.ingestLock(token))
        return true
    }

    /// The hashes of a staging area's journal (a torn last record is ignored).
    static func readJournal(_ directory: FileDescriptor) -> [BlobHash] {
        guard let fd = try? FileDescriptor.open(at: directory, "journal", [.readOnly, .noFollow]) else { return [] }
        defer { fd.closeQuietly() }
        var hashes: [BlobHash] = []
        var record = [UInt8](repeating: 0, count: 32 * 1024)
        var offset: Int64 = 0
        var pending: [UInt8] = []
        while true {
            let n = (try? record.withUnsafeMutableBytes { try fd.read(into: $0, at: offset) }) ?? 0
            if n == 0 { break }
            offset += Int64(n)
            pending += record[0..<n]
            let whole = pending.count / 32 * 32
            for start in stride(from: 0, to: whole, by: 32) {
                if let hash = BlobHash(bytes: pending[start..<start + 32]) { hashes.append(hash) }
            }
            pending.removeFirst(whole)
        }
        return hashes
    }
}
