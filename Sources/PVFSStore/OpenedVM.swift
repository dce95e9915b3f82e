import Foundation
import GRDB
import PVFSSystem
import SystemPackage

/// A VM held by this process: its catalog record, its private area (locked) and the catalog rows
/// of its overlay. Valid until `area.close()`; no other process can change the VM meanwhile.
public struct OpenedVM: Sendable {
    /// As the catalog had it once the VM's lock was taken: id, name, template, quota, usage.
    public let record: VMRecord
    /// `vm.usage_clean` at open: false when the last holder died without closing the VM.
    public let usageClean: Bool
    /// vms/<id>, its lock held.
    public let area: VMArea
    public let catalog: VMOverlayCatalog
    /// The template the VM's view is built on, read with `record` (its tree is immutable; a
    /// template can lose no VM's tree while the VM exists).
    public let template: TemplateIdentity
}

extension Store {
    /// Opens a ready VM for serving: takes its lock and reads its record. Fails with ENOENT
    /// ("no VM named X") or EBUSY ("VM X is not ready (state …)", "VM X is in use by another
    /// process (mounted or served)").
    public func openVM(named name: String) throws -> OpenedVM {
        guard let vm = try catalog.read({ db in
            try Row.fetchOne(db, sql: "SELECT id, template_id, state FROM vm WHERE name = ?", arguments: [name])
        }) else {
            throw PVFSError(.store, "no VM named \(name)", errno: .noSuchFileOrDirectory)
        }
        guard (vm[2] as String) == "ready" else {
            throw PVFSError(.store, "VM \(name) is not ready (state \(vm[2] as String))", errno: .resourceBusy)
        }
        let area = try VMArea.open(in: self, vmID: vm[0], vmName: name)
        do {
            return try opened(vm[0], area: area)
        } catch {
            area.close()
            throw error
        }
    }

    /// Opens a VM no process holds, taking its lock, for fsck and the janitor: nil when another
    /// process holds it. Throws when its private area cannot be opened (the message says so).
    public func openVMIfFree(_ vm: VMRecord) throws -> OpenedVM? {
        let area: VMArea?
        do {
            area = try VMArea.openIfFree(in: self, vmID: vm.id)
        } catch {
            throw PVFSError(.store, "its private area \(StoreLayout.vmPath(vm.id)) cannot be opened: \(error)", errno: error)
        }
        guard let area else { return nil }
        do {
            return try opened(vm.id, area: area)
        } catch {
            area.close()
            throw error
        }
    }

    /// The record of a VM whose lock `area` holds (read after the lock is taken: the previous
    /// holder's last usage is in it).
    private func opened(_ id: Int64, area: VMArea) throws -> OpenedVM {
        let (record, clean, template) = try catalog.read { db -> (VMRecord, Bool, TemplateIdentity) in
            guard let row = try Row.fetchOne(db, sql: """
                SELECT \(Self.vmColumns), vm.usage_clean AS opened_usage_clean, template.created_ns AS opened_template_created_ns FROM vm JOIN template ON template.id = vm.template_id
                WHERE vm.id = ?
                """, arguments: [id]) else {
                throw PVFSError(.store, "VM \(id) is no longer in the catalog", errno: .noSuchFileOrDirectory)
            }
            // By name: the VM columns before them grow with the schema.
            let record = Self.vmRecord(row)
            return (record, (row["opened_usage_clean"] as Int64) != 0,
                    TemplateIdentity(id: record.templateID, createdNanoseconds: row["opened_template_created_ns"]))
        }
        return OpenedVM(record: record, usageClean: clean, area: area, catalog: VMOverlayCatalog(store: self, vmID: id),
                        template: template)
    }

    /// A ready template's tree, as the engine holds it in memory, with the hashes of its blobs.
    public func loadTemplateImage(id templateID: Int64) throws -> TemplateImageSource {
        try catalog.read { db in
            guard let templateRow = try Row.fetchOne(db, sql: "SELECT max_inode, created_ns FROM template WHERE id = ?",
                                                     arguments: [templateID]) else {
                throw PVFSError(.store, "template \(templateID) is not in the catalog", errno: .noSuchFileOrDirectory)
            }
            let maxInode: Int64 = templateRow[0]
            let identity = TemplateIdentity(id: templateID, createdNanoseconds: templateRow[1])
            var inodes = [InodeRecord?](repeating: nil, count: Int(maxInode) + 1)
            let rows = try Row.fetchCursor(db, sql: """
                SELECT ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, rdev, blob_id, symlink_target
                FROM template_inode WHERE template_id = ?
                """, arguments: [templateID])
            while let row = try rows.next() {
                let ino: Int64 = row[0]
                guard ino >= 1, ino <= maxInode else {
                    throw PVFSError(.store, "template \(templateID): inode \(ino) is out of range", errno: .ioError)
                }
                let blobID: Int64? = row[11]
                let size: Int64 = row[5]
                inodes[Int(ino)] = InodeRecord(
                    mode: UInt32(truncatingIfNeeded: row[1] as Int64), uid: UInt32(truncatingIfNeeded: row[2] as Int64),
                    gid: UInt32(truncatingIfNeeded: row[3] as Int64), linkCount: UInt32(truncatingIfNeeded: row[4] as Int64),
                    size: size, blocks: row[6],
                    accessTime: Timespec(totalNanoseconds: row[7]), modificationTime: Timespec(totalNanoseconds: row[8]),
                    changeTime: Timespec(totalNanoseconds: row[9]), rdev: UInt64(bitPattern: row[10] as Int64),
                    parent: 0, data: blobID.map { DataLocation.blob(id: $0) } ?? .none,
                    symlinkTarget: row.optionalBytes(12), privateXattrs: false)
            }
            var directories: [UInt64: [FileName: UInt64]] = [:]
            let dirents = try Row.fetchCursor(db, sql: "SELECT parent, name, ino FROM template_dirent WHERE template_id = ?", arguments: [templateID])
            while let row = try dirents.next() {
                let parent = UInt64(row[0] as Int64)
                let ino = UInt64(row[2] as Int64)
                let name = row.bytes(1)
                directories[parent, default: [:]][FileName(trusted: name)] = ino
                if ino < UInt64(inodes.count), inodes[Int(ino)]?.isDirectory == true {
                    inodes[Int(ino)]!.parent = parent
                }
            }
            let root: UInt64 = 1
            if inodes.count > 1, inodes[1] != nil {
                inodes[1]!.parent = root
                if directories[root] == nil { directories[root] = [:] }
            } else {
                throw PVFSError(.store, "template \(templateID) has no root directory", errno: .ioError)
            }
            for (ino, record) in inodes.enumerated() where record?.isDirectory == true && directories[UInt64(ino)] == nil {
                directories[UInt64(ino)] = [:]
            }
            var xattrs: [UInt64: [[UInt8]: [UInt8]]] = [:]
            let xrows = try Row.fetchCursor(db, sql: "SELECT ino, name, value FROM template_xattr WHERE template_id = ?", arguments: [templateID])
            while let row = try xrows.next() {
                xattrs[UInt64(row[0] as Int64), default: [:]][row.bytes(1)] = row.bytes(2)
            }
            var blobHashes: [Int64: BlobHash] = [:]
            let blobRows = try Row.fetchCursor(db, sql: """
                SELECT id, hash FROM blob WHERE id IN (SELECT blob_id FROM template_inode WHERE template_id = ? AND blob_id IS NOT NULL)
                """, arguments: [templateID])
            while let row = try blobRows.next() {
                if let hash = BlobHash(bytes: row.bytes(1)) { blobHashes[row[0]] = hash }
            }
            return TemplateImageSource(identity: identity, maximumInode: UInt64(maxInode), inodes: inodes,
                                       directories: directories, xattrs: xattrs, blobHashes: blobHashes)
        }
    }
}

/// The catalog rows of one VM's overlay, in the engine's terms. Only the process holding the
/// VM's lock (`OpenedVM`) writes them.
public final class VMOverlayCatalog: Sendable {
    public let vmID: Int64
    private let store: Store

    init(store: Store, vmID: Int64) {
        self.store = store
        self.vmID = vmID
    }

    /// The VM's overlay: its own inodes, entries (whiteouts included) and xattrs.
    public func loadOverlay() throws -> OverlayRecords {
        try store.catalog.read { db in
            var state = OverlayRecords()
            if let vm = try Row.fetchOne(db, sql: "SELECT next_inode, version_counter FROM vm WHERE id = ?", arguments: [vmID]) {
                state.nextInode = UInt64(max(2, vm[0] as Int64))
                state.versionCounter = UInt64(bitPattern: vm[1] as Int64)
            } else {
                state.nextInode = 2
            }
            let rows = try Row.fetchCursor(db, sql: """
                SELECT ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, rdev, parent, data, blob_id,
                    symlink_target, private_xattrs, version FROM vm_inode WHERE vm_id = ?
                """, arguments: [vmID])
            while let row = try rows.next() {
                let ino = UInt64(row[0] as Int64)
                let dataCode: Int64 = row[12]
                let data: DataLocation = switch dataCode {
                case 1: (row[13] as Int64?).map { .blob(id: $0) } ?? .none
                case 2: .privateFile
                default: .none
                }
                state.inodes[ino] = InodeRecord(
                    mode: UInt32(truncatingIfNeeded: row[1] as Int64), uid: UInt32(truncatingIfNeeded: row[2] as Int64),
                    gid: UInt32(truncatingIfNeeded: row[3] as Int64), linkCount: UInt32(truncatingIfNeeded: row[4] as Int64),
                    size: row[5], blocks: row[6], accessTime: Timespec(totalNanoseconds: row[7]),
                    modificationTime: Timespec(totalNanoseconds: row[8]), changeTime: Timespec(totalNanoseconds: row[9]),
                    rdev: UInt64(bitPattern: row[10] as Int64), parent: UInt64(row[11] as Int64), data: data,
                    symlinkTarget: row.optionalBytes(14), privateXattrs: (row[15] as Int64) != 0,
                    version: UInt64(bitPattern: row[16] as Int64))
                state.nextInode = max(state.nextInode, ino + 1)
            }
            let entries = try Row.fetchCursor(db, sql: "SELECT parent, name, ino FROM vm_dirent WHERE vm_id = ?", arguments: [vmID])
            while let row = try entries.next() {
                let ino = UInt64(row[2] as Int64)
                state.entries[UInt64(row[0] as Int64), default: [:]][FileName(trusted: row.bytes(1))] = ino
                state.nextInode = max(state.nextInode, ino + 1)
            }
            let xattrs = try Row.fetchCursor(db, sql: "SELECT ino, name, value FROM vm_xattr WHERE vm_id = ?", arguments: [vmID])
            while let row = try xattrs.next() {
                state.xattrs[UInt64(row[0] as Int64), default: [:]][row.bytes(1)] = row.bytes(2)
            }
            for (ino, record) in state.inodes where record.privateXattrs && state.xattrs[ino] == nil {
                state.xattrs[ino] = [:]
            }
            return state
        }
    }

    /// Commits a batch in one transaction. A failure changes nothing and throws
    /// `PVFSError(.store)` with ENOSPC when the catalog's filesystem is full, EIO otherwise.
    public func apply(_ batch: OverlayBatch) throws {
        guard !batch.isEmpty else { return }
        do {
            try store.writeCatalog { db in
                for change in batch { try write(change, db) }
            }
        } catch {
            throw Self.failure("cannot commit changes of VM \(vmID)", error)
        }
    }

    private func write(_ change: OverlayChange, _ db: Database) throws {
        switch change {
        case .putInode(let ino, let r):
            try db.cachedStatement(sql: """
                INSERT OR REPLACE INTO vm_inode (vm_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns,
                    rdev, parent, data, blob_id, symlink_target, private_xattrs, version)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """).execute(arguments: [
                    vmID, Int64(ino), Int64(r.mode), Int64(r.uid), Int64(r.gid), Int64(r.linkCount), r.size, r.blocks,
                    r.accessTime.totalNanoseconds, r.modificationTime.totalNanoseconds, r.changeTime.totalNanoseconds,
                    Int64(bitPattern: r.rdev), Int64(r.parent), r.data.catalogCode, r.data.blobID,
                    r.symlinkTarget?.databaseBlob, r.privateXattrs ? 1 : 0, Int64(bitPattern: r.version),
                ])
        case .deleteInode(let ino):
            try db.cachedStatement(sql: "DELETE FROM vm_inode WHERE vm_id = ? AND ino = ?").execute(arguments: [vmID, Int64(ino)])
            try db.cachedStatement(sql: "DELETE FROM vm_xattr WHERE vm_id = ? AND ino = ?").execute(arguments: [vmID, Int64(ino)])
        case .putEntry(let parent, let name, let ino):
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO vm_dirent (vm_id, parent, name, ino) VALUES (?, ?, ?, ?)")
                .execute(arguments: [vmID, Int64(parent), name.bytes.databaseBlob, Int64(ino)])
        case .deleteEntry(let parent, let name):
            try db.cachedStatement(sql: "DELETE FROM vm_dirent WHERE vm_id = ? AND parent = ? AND name = ?")
                .execute(arguments: [vmID, Int64(parent), name.bytes.databaseBlob])
        case .deleteAllEntries(let parent):
            try db.cachedStatement(sql: "DELETE FROM vm_dirent WHERE vm_id = ? AND parent = ?").execute(arguments: [vmID, Int64(parent)])
        case .replaceXattrs(let ino, let set):
            try db.cachedStatement(sql: "DELETE FROM vm_xattr WHERE vm_id = ? AND ino = ?").execute(arguments: [vmID, Int64(ino)])
            for (name, value) in set {
                try db.cachedStatement(sql: "INSERT INTO vm_xattr (vm_id, ino, name, value) VALUES (?, ?, ?, ?)")
                    .execute(arguments: [vmID, Int64(ino), name.databaseBlob, value.databaseBlob])
            }
        case .nextInode(let next):
            try db.cachedStatement(sql: "UPDATE vm SET next_inode = max(next_inode, ?) WHERE id = ?").execute(arguments: [Int64(next), vmID])
        case .versionCounter(let counter):
            try db.cachedStatement(sql: "UPDATE vm SET version_counter = max(version_counter, ?) WHERE id = ?")
                .execute(arguments: [Int64(bitPattern: counter), vmID])
        }
    }

    /// Hashes of the blobs the overlay references that its template does not (dedup results;
    /// the template's own come with its image), so the engine opens blobs without asking the
    /// catalog.
    public func loadBlobHashes(templateID: Int64) throws -> [Int64: BlobHash] {
        try store.catalog.read { db in
            var hashes: [Int64: BlobHash] = [:]
            let rows = try Row.fetchCursor(db, sql: """
                SELECT id, hash FROM blob WHERE id IN (SELECT blob_id FROM vm_inode WHERE vm_id = ? AND blob_id IS NOT NULL
                    EXCEPT SELECT blob_id FROM template_inode WHERE template_id = ? AND blob_id IS NOT NULL)
                """, arguments: [vmID, templateID])
            while let row = try rows.next() {
                if let hash = BlobHash(bytes: row.bytes(1)) { hashes[row[0]] = hash }
            }
            return hashes
        }
    }

    /// The hash of blob `id`; nil when no such blob row exists.
    public func blobHash(id: Int64) throws -> BlobHash? {
        try store.catalog.read { db in
            try Row.fetchOne(db, sql: "SELECT hash FROM blob WHERE id = ?", arguments: [id]).flatMap { BlobHash(bytes: $0.bytes(0)) }
        }
    }

    /// Opens a blob read-only.
    public func openBlob(_ hash: BlobHash) throws(Errno) -> FileDescriptor {
        try store.blobs.open(hash)
    }

    /// Marks the VM held (`usage_clean = 0`) until a clean close sets its usage.
    public func markInUse() throws {
        try store.writeCatalog { db in
            try db.execute(sql: "UPDATE vm SET usage_clean = 0 WHERE id = ?", arguments: [vmID])
        }
    }

    /// Records the VM's usage; `clean` sets `usage_clean` too (nil leaves it as it is), and
    /// `versionCounter` sets `vm.version_counter` exactly (a clean close, or recovery raising it).
    public func setUsage(_ usage: VMUsage, clean: Bool?, versionCounter: UInt64? = nil) throws {
        try store.writeCatalog { db in
            if let versionCounter {
                try db.execute(sql: "UPDATE vm SET version_counter = ? WHERE id = ?",
                               arguments: [Int64(bitPattern: versionCounter), vmID])
            }
            if let clean {
                try db.execute(sql: "UPDATE vm SET used_bytes = ?, used_inodes = ?, usage_clean = ? WHERE id = ?",
                               arguments: [usage.bytes, usage.inodes, clean ? 1 : 0, vmID])
            } else {
                try db.execute(sql: "UPDATE vm SET used_bytes = ?, used_inodes = ? WHERE id = ?", arguments: [usage.bytes, usage.inodes, vmID])
            }
        }
    }

    /// The VM's quota as the catalog has it now (set-quota may have changed it); nil when the VM
    /// is gone.
    public func loadQuota() throws -> VMQuota? {
        try store.catalog.read { db in
            try Row.fetchOne(db, sql: "SELECT quota_bytes, quota_inodes FROM vm WHERE id = ?", arguments: [vmID])
                .map { VMQuota(bytes: $0[0], inodes: $0[1]) }
        }
    }

    /// Makes every change committed so far durable against power loss (fsync, dedup), through
    /// SQLite (`Store.makeCatalogDurable`).
    public func makeDurable() throws {
        try store.makeCatalogDurable()
    }

    /// Whether the store's filesystem may take more of this VM's data: false while the space
    /// reserve is depleted (`SpaceReserve`), so that what is left stays for catalog commits.
    public func admitsGrowth() -> Bool {
        store.spaceReserve.admitsGrowth()
    }

    /// statfs of the store's filesystem, where the VM's files live. While the space reserve is
    /// depleted, the space it gave back counts as free but not as available (as a filesystem's
    /// blocks reserved for root do), since writes get ENOSPC until it is allocated again.
    public func hostStatistics() throws(Errno) -> FileSystemStatistics {
        let reserve = store.spaceReserve
        // admitsGrowth allocates the reserve again if space came back.
        let depleted = !reserve.admitsGrowth()
        var statistics = try store.fileSystemStatistics()
        if depleted {
            let reserveBlocks = UInt64(reserve.bytes) / max(1, statistics.fragmentSize)
            statistics.availableBlocks -= min(statistics.availableBlocks, reserveBlocks)
        }
        return statistics
    }

    /// A catalog failure as the engine reports it: ENOSPC when the filesystem is full.
    static func failure(_ what: String, _ error: any Error) -> PVFSError {
        if let dbError = error as? DatabaseError, dbError.resultCode == .SQLITE_FULL {
            return PVFSError(.store, "\(what): \(dbError)", errno: .noSpace)
        }
        if let pvfs = error as? PVFSError { return pvfs }
        return PVFSError(.store, "\(what): \(error)", errno: .ioError)
    }
}
