import Foundation
import GRDB
import PVFSSystem
import SystemPackage

/// A template's tree built in memory: for fixtures of tests and benchmarks, which must not depend
/// on the ingest code. Inode numbers are the caller's (the root is 1); link counts come from the
/// entries (a directory's from its subdirectories), sizes and blocks from the contents.
public struct TemplateTree: Sendable {
    /// Where a regular file's content comes from.
    public enum Content: Sendable {
        case bytes([UInt8])
        /// A file on the host, read when the template is created.
        case hostFile(String)
    }

    struct Node: Sendable {
        var record: InodeRecord
        var content: Content?
    }

    private(set) var nodes: [UInt64: Node] = [:]
    private(set) var entries: [(parent: UInt64, name: FileName, inode: UInt64)] = []
    private(set) var xattrs: [(inode: UInt64, name: [UInt8], value: [UInt8])] = []
    /// The times of every inode not given its own.
    public var time: Timespec

    public init(time: Timespec = Timespec(seconds: 1_700_000_000, nanoseconds: 0)) {
        self.time = time
    }

    private func record(mode: UInt32, uid: UInt32, gid: UInt32, size: Int64 = 0, rdev: UInt64 = 0,
                        symlinkTarget: [UInt8]? = nil) -> InodeRecord {
        InodeRecord(mode: mode, uid: uid, gid: gid, linkCount: 0, size: size,
                    blocks: FileKind(mode: mode) == .directory ? 8 : (size + 511) / 512, accessTime: time,
                    modificationTime: time, changeTime: time, rdev: rdev, parent: 0, data: .none,
                    symlinkTarget: symlinkTarget, privateXattrs: false)
    }

    public mutating func directory(_ ino: UInt64, mode: UInt32 = 0o040755, uid: UInt32 = 0, gid: UInt32 = 0) {
        nodes[ino] = Node(record: record(mode: FileKind.directory.modeBits | (mode & permissionBitsMask), uid: uid, gid: gid,
                                         size: 4096))
    }

    public mutating func file(_ ino: UInt64, content: [UInt8], mode: UInt32 = 0o100644, uid: UInt32 = 0, gid: UInt32 = 0) {
        nodes[ino] = Node(record: record(mode: FileKind.regular.modeBits | (mode & permissionBitsMask), uid: uid, gid: gid,
                                         size: Int64(content.count)),
                          content: .bytes(content))
    }

    public mutating func file(_ ino: UInt64, content: String, mode: UInt32 = 0o100644, uid: UInt32 = 0, gid: UInt32 = 0) {
        file(ino, content: Array(content.utf8), mode: mode, uid: uid, gid: gid)
    }

    /// A regular file holding a host file's content (read when the template is created).
    public mutating func file(_ ino: UInt64, contentsOf path: String, size: Int64, mode: UInt32 = 0o100644,
                              uid: UInt32 = 0, gid: UInt32 = 0) {
        nodes[ino] = Node(record: record(mode: FileKind.regular.modeBits | (mode & permissionBitsMask), uid: uid, gid: gid,
                                         size: size),
                          content: .hostFile(path))
    }

    public mutating func symlink(_ ino: UInt64, target: String, uid: UInt32 = 0, gid: UInt32 = 0) {
        let bytes = Array(target.utf8)
        nodes[ino] = Node(record: record(mode: FileKind.symlink.modeBits | 0o777, uid: uid, gid: gid, size: Int64(bytes.count),
                                         symlinkTarget: bytes))
    }

    /// Any other inode (devices, fifos, sockets), or one with times of its own. Its link count,
    /// blob and parent are set when the template is created.
    public mutating func node(_ ino: UInt64, _ record: InodeRecord, content: Content? = nil) {
        nodes[ino] = Node(record: record, content: content)
    }

    /// Names `ino` in directory `parent`.
    public mutating func entry(_ parent: UInt64, _ name: String, _ ino: UInt64) {
        entries.append((parent, FileName(trusted: Array(name.utf8)), ino))
    }

    public mutating func xattr(_ ino: UInt64, _ name: String, _ value: [UInt8]) {
        xattrs.append((ino, Array(name.utf8), value))
    }

    /// The records as the catalog gets them: link counts from the entries.
    func finishedRecords() throws -> [UInt64: InodeRecord] {
        guard nodes[1]?.record.isDirectory == true else {
            throw PVFSError(.store, "a template's inode 1 must be its root directory", errno: .invalidArgument)
        }
        var records = nodes.mapValues(\.record)
        for ino in records.keys {
            records[ino]!.linkCount = records[ino]!.isDirectory ? 2 : 0
            records[ino]!.data = .none
        }
        var seen = Set<[UInt8]>()
        for e in entries {
            guard records[e.parent]?.isDirectory == true else {
                throw PVFSError(.store, "entry \(e.name) is in inode \(e.parent), which is no directory of the tree", errno: .invalidArgument)
            }
            guard let child = records[e.inode], e.inode != 1 else {
                throw PVFSError(.store, "entry \(e.name) names inode \(e.inode), which is not in the tree", errno: .invalidArgument)
            }
            guard (try? FileName(validating: e.name.bytes)) != nil,
                  seen.insert(withUnsafeBytes(of: e.parent) { Array($0) } + e.name.bytes).inserted else {
                throw PVFSError(.store, "entry \(e.name) of inode \(e.parent) is invalid or given twice", errno: .invalidArgument)
            }
            if child.isDirectory {
                records[e.parent]!.linkCount += 1
            } else {
                records[e.inode]!.linkCount += 1
            }
        }
        return records
    }

    /// The content of a regular file, or nil when it has none.
    static func bytes(of content: Content?) throws -> [UInt8]? {
        switch content {
        case nil: return nil
        case .bytes(let bytes): return bytes
        case .hostFile(let path):
            guard let data = FileManager.default.contents(atPath: path) else {
                throw PVFSError(.store, "cannot read \(path)", errno: .ioError)
            }
            return [UInt8](data)
        }
    }
}

extension Store {
    /// Writes a template built in memory (`TemplateTree`), ready at once: its contents are
    /// published as blobs, and its rows committed in the publishing transaction, under the blobs
    /// lock, as an ingest does.
    @discardableResult
    public func createTemplate(name: String, tree: TemplateTree, source: String = "") throws -> TemplateRecord {
        try Self.validateName(name, what: "template")
        let records = try tree.finishedRecords()
        let maximumInode = records.keys.max() ?? 1
        let area = try StagingArea(store: self)
        defer { area.dispose() }
        let lock = try lockBlobsShared()
        defer { withExtendedLifetime(lock) {} }
        var staged: [StagedBlob] = []
        var stagedInodes: [UInt64] = []
        do {
            for ino in records.keys.sorted() {
                guard records[ino]!.kind == .regular, let bytes = try TemplateTree.bytes(of: tree.nodes[ino]?.content),
                      !bytes.isEmpty else { continue }
                staged.append(try area.stage(bytes: bytes))
                stagedInodes.append(ino)
            }
        } catch let error as Errno {
            area.removeStagedFiles()
            throw PVFSError(.store, "cannot stage blobs in \(path)/\(StoreLayout.temporary): \(error)", errno: error)
        }
        let write = { (db: Database, blobIDs: [UInt64: Int64]) throws -> Int64 in
            if try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM template WHERE name = ?)", arguments: [name]) == true {
                throw PVFSError(.store, "a template named \(name) exists already", errno: .fileExists)
            }
            var logical: Int64 = 0
            for (_, r) in records where r.kind == .regular { logical += r.size }
            try db.execute(sql: """
                INSERT INTO template (name, state, source, created_ns, entry_count, logical_bytes, max_inode)
                VALUES (?, 'ready', ?, ?, ?, ?, ?)
                """, arguments: [name, source, Timespec.now.totalNanoseconds, tree.entries.count + 1, logical, Int64(maximumInode)])
            let id = db.lastInsertedRowID
            let inode = try db.cachedStatement(sql: """
                INSERT INTO template_inode (template_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns,
                    rdev, blob_id, symlink_target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            for (ino, r) in records.sorted(by: { $0.key < $1.key }) {
                try inode.execute(arguments: [
                    id, Int64(ino), Int64(r.mode), Int64(r.uid), Int64(r.gid), Int64(r.linkCount), r.size, r.blocks,
                    r.accessTime.totalNanoseconds, r.modificationTime.totalNanoseconds, r.changeTime.totalNanoseconds,
                    Int64(bitPattern: r.rdev), blobIDs[ino], r.symlinkTarget?.databaseBlob,
                ])
            }
            let dirent = try db.cachedStatement(sql: "INSERT INTO template_dirent (template_id, parent, name, ino) VALUES (?, ?, ?, ?)")
            for e in tree.entries {
                try dirent.execute(arguments: [id, Int64(e.parent), e.name.bytes.databaseBlob, Int64(e.inode)])
            }
            let xattr = try db.cachedStatement(sql: "INSERT OR REPLACE INTO template_xattr (template_id, ino, name, value) VALUES (?, ?, ?, ?)")
            for x in tree.xattrs {
                try xattr.execute(arguments: [id, Int64(x.inode), x.name.databaseBlob, x.value.databaseBlob])
            }
            return id
        }
        var templateID: Int64 = 0
        if staged.isEmpty {
            templateID = try catalog.write { db in try write(db, [:]) }
        } else {
            _ = try publish(staged, from: area, shards: ShardDirectories(blobs: blobsDirectory), rowsPerTransaction: staged.count) { db, _, ids in
                var blobIDs: [UInt64: Int64] = [:]
                for (index, ino) in stagedInodes.enumerated() { blobIDs[ino] = ids[staged[index].hash] }
                templateID = try write(db, blobIDs)
            }
        }
        return try catalog.read { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.templateColumns) FROM template WHERE id = ?", arguments: [templateID])
                .map(Self.templateRecord)
        } ?? { throw PVFSError(.store, "template \(name) vanished after its creation", errno: .ioError) }()
    }
}
