import Foundation
import GRDB
import PVFSStore
import PVFSSystem

/// One change to a VM's overlay, as committed to the catalog. An operation commits its changes
/// in one transaction, so after a crash each operation is either wholly there or not at all.
enum OverlayChange: Sendable {
    case putInode(InodeNumber, InodeRecord)
    /// Removes the inode and its private xattrs.
    case deleteInode(InodeNumber)
    /// Sets a name in a directory; inode 0 is a whiteout hiding a template entry.
    case putEntry(parent: InodeNumber, name: FileName, inode: InodeNumber)
    case deleteEntry(parent: InodeNumber, name: FileName)
    /// Removes every entry (whiteouts) of a directory that is going away.
    case deleteAllEntries(parent: InodeNumber)
    case replaceXattrs(InodeNumber, [[UInt8]: [UInt8]])
    case nextInode(InodeNumber)
}

/// A VM's own layer in memory: inodes it created or changed and directory entries over the
/// template's. Mutated only under the volume's metadata lock.
struct OverlayState {
    var inodes: [InodeNumber: InodeRecord] = [:]
    /// Entries per directory; 0 marks a whiteout.
    var entries: [InodeNumber: [FileName: InodeNumber]] = [:]
    var xattrs: [InodeNumber: [[UInt8]: [UInt8]]] = [:]
    var nextInode: InodeNumber = 0

    mutating func apply(_ change: OverlayChange) {
        switch change {
        case .putInode(let ino, let record):
            inodes[ino] = record
        case .deleteInode(let ino):
            inodes[ino] = nil
            xattrs[ino] = nil
        case .putEntry(let parent, let name, let ino):
            entries[parent, default: [:]][name] = ino
        case .deleteEntry(let parent, let name):
            entries[parent]?[name] = nil
            if entries[parent]?.isEmpty == true { entries[parent] = nil }
        case .deleteAllEntries(let parent):
            entries[parent] = nil
        case .replaceXattrs(let ino, let set):
            xattrs[ino] = set
        case .nextInode:
            // The catalog's reservation, a high-water mark for after a restart; the allocation
            // cursor in memory moves one inode at a time (Volume.allocateInode).
            break
        }
    }
}

/// Writes overlay changes to the catalog and reads a VM's overlay back.
struct OverlayJournal: Sendable {
    let catalog: DatabasePool
    let vmID: Int64

    func commit(_ changes: [OverlayChange]) throws {
        guard !changes.isEmpty else { return }
        try catalog.write { db in
            for change in changes { try write(change, db) }
        }
    }

    private func write(_ change: OverlayChange, _ db: Database) throws {
        switch change {
        case .putInode(let ino, let r):
            try db.cachedStatement(sql: """
                INSERT OR REPLACE INTO vm_inode (vm_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns,
                    rdev, parent, data, blob_id, symlink_target, private_xattrs)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """).execute(arguments: [
                    vmID, Int64(ino), Int64(r.mode), Int64(r.uid), Int64(r.gid), Int64(r.linkCount), r.size, r.blocks,
                    r.accessTime.totalNanoseconds, r.modificationTime.totalNanoseconds, r.changeTime.totalNanoseconds,
                    Int64(bitPattern: r.rdev), Int64(r.parent), r.data.catalogCode, r.data.blobID,
                    r.symlinkTarget?.databaseBlob, r.privateXattrs ? 1 : 0,
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
        }
    }

    func load() throws -> OverlayState {
        try catalog.read { db in
            var state = OverlayState()
            state.nextInode = UInt64(try Int64.fetchOne(db, sql: "SELECT next_inode FROM vm WHERE id = ?", arguments: [vmID]) ?? 2)
            let rows = try Row.fetchCursor(db, sql: """
                SELECT ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, rdev, parent, data, blob_id,
                    symlink_target, private_xattrs FROM vm_inode WHERE vm_id = ?
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
                    symlinkTarget: row.optionalBytes(14), privateXattrs: (row[15] as Int64) != 0)
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
}
