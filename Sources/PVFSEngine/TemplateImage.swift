import GRDB
import PVFSStore
import PVFSSystem

/// A template's tree held in memory, immutable and shared by every VM built on it: the lower
/// layer of their views. Inode numbers are the template's own (root = 1).
final class TemplateImage: Sendable {
    let templateID: Int64
    let maximumInode: InodeNumber
    /// Indexed by inode number; nil where the number is unused.
    let inodes: [InodeRecord?]
    /// Entries of each directory, by name.
    let directories: [InodeNumber: [FileName: InodeNumber]]
    let xattrs: [InodeNumber: [[UInt8]: [UInt8]]]

    init(templateID: Int64, maximumInode: InodeNumber, inodes: [InodeRecord?],
         directories: [InodeNumber: [FileName: InodeNumber]], xattrs: [InodeNumber: [[UInt8]: [UInt8]]]) {
        self.templateID = templateID
        self.maximumInode = maximumInode
        self.inodes = inodes
        self.directories = directories
        self.xattrs = xattrs
    }

    func record(_ ino: InodeNumber) -> InodeRecord? {
        guard ino < UInt64(inodes.count) else { return nil }
        return inodes[Int(ino)]
    }

    func contains(_ ino: InodeNumber) -> Bool { record(ino) != nil }

    /// Loads a ready template from the catalog.
    static func load(templateID: Int64, from db: Database) throws -> TemplateImage {
        guard let maxInode = try Int64.fetchOne(db, sql: "SELECT max_inode FROM template WHERE id = ?", arguments: [templateID]) else {
            throw PVFSError(.store, "template \(templateID) is not in the catalog", errno: .noSuchFileOrDirectory)
        }
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
        var directories: [InodeNumber: [FileName: InodeNumber]] = [:]
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
        if inodes.count > 1, inodes[1] != nil {
            inodes[1]!.parent = rootInode
            if directories[rootInode] == nil { directories[rootInode] = [:] }
        } else {
            throw PVFSError(.store, "template \(templateID) has no root directory", errno: .ioError)
        }
        for (ino, record) in inodes.enumerated() where record?.isDirectory == true && directories[UInt64(ino)] == nil {
            directories[UInt64(ino)] = [:]
        }
        var xattrs: [InodeNumber: [[UInt8]: [UInt8]]] = [:]
        let xrows = try Row.fetchCursor(db, sql: "SELECT ino, name, value FROM template_xattr WHERE template_id = ?", arguments: [templateID])
        while let row = try xrows.next() {
            xattrs[UInt64(row[0] as Int64), default: [:]][row.bytes(1)] = row.bytes(2)
        }
        return TemplateImage(templateID: templateID, maximumInode: UInt64(maxInode), inodes: inodes, directories: directories, xattrs: xattrs)
    }
}
