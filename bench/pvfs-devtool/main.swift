// pvfs-devtool: builds templates and VMs in a store for tests and benchmarks, straight through
// the store's catalog, so that they do not depend on the template ingest command.
//
//     pvfs-devtool template --store S --name T DIR   a template holding DIR's tree
//     pvfs-devtool provision --store S --template T --name VM [--count N]
//         provisions VM (or VM-1..VM-N) and prints the seconds each took
//     pvfs-devtool remove --store S --name VM
import Foundation
import GRDB
import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

struct Failure: Error, CustomStringConvertible {
    var description: String
}

func option(_ name: String, in arguments: [String]) -> String? {
    guard let i = arguments.firstIndex(of: name), i + 1 < arguments.count else { return nil }
    return arguments[i + 1]
}

func required(_ name: String, in arguments: [String]) throws -> String {
    guard let value = option(name, in: arguments) else { throw Failure(description: "missing \(name)") }
    return value
}

/// One inode of the tree being ingested.
struct IngestedInode {
    var stat: FileStat
    var blobID: Int64?
    var symlinkTarget: [UInt8]?
    var linkCount: Int64
    var xattrs: [(String, [UInt8])]
}

/// Walks a host tree and writes it as a template: inodes numbered from 1 (the root) in walk
/// order, hardlinks sharing one number, file contents published as blobs.
final class TemplateBuilder {
    let store: Store
    var inodes: [IngestedInode] = []
    var entries: [(parent: Int64, name: [UInt8], ino: Int64)] = []
    var byHostInode: [UInt64: Int64] = [:]
    var knownBlobs: [BlobHash: Int64] = [:]

    init(store: Store) {
        self.store = store
    }

    func build(name: String, from root: String) throws {
        let rootStat = try FileDescriptor.currentDirectory.stat(at: root)
        guard rootStat.kind == .directory else { throw Failure(description: "\(root) is not a directory") }
        inodes.append(IngestedInode(stat: rootStat, blobID: nil, symlinkTarget: nil, linkCount: 2,
                                    xattrs: readXattrs(root)))
        try walk(root, ino: 1)
        try store.catalog.write { db in
            try db.execute(sql: "INSERT INTO template (name, state, source, created_ns) VALUES (?, 'building', ?, ?)",
                           arguments: [name, root, Timespec.now.totalNanoseconds])
            let id = db.lastInsertedRowID
            for (index, inode) in inodes.enumerated() {
                let s = inode.stat
                try db.cachedStatement(sql: """
                    INSERT INTO template_inode (template_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns,
                        ctime_ns, rdev, blob_id, symlink_target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """).execute(arguments: [
                        id, index + 1, Int64(s.mode), Int64(s.uid), Int64(s.gid), inode.linkCount,
                        s.kind == .directory ? 4096 : s.size, s.blocks,
                        s.accessTime.totalNanoseconds, s.modificationTime.totalNanoseconds, s.changeTime.totalNanoseconds,
                        Int64(bitPattern: s.rdev), inode.blobID, inode.symlinkTarget?.databaseBlob,
                    ])
                for (xname, value) in inode.xattrs {
                    try db.cachedStatement(sql: "INSERT INTO template_xattr (template_id, ino, name, value) VALUES (?, ?, ?, ?)")
                        .execute(arguments: [id, index + 1, Array(xname.utf8).databaseBlob, value.databaseBlob])
                }
            }
            for e in entries {
                try db.cachedStatement(sql: "INSERT INTO template_dirent (template_id, parent, name, ino) VALUES (?, ?, ?, ?)")
                    .execute(arguments: [id, e.parent, e.name.databaseBlob, e.ino])
            }
            let logical = inodes.reduce(Int64(0)) { $0 + ($1.stat.kind == .regular ? $1.stat.size : 0) }
            try db.execute(sql: "UPDATE template SET state = 'ready', max_inode = ?, entry_count = ?, logical_bytes = ? WHERE id = ?",
                           arguments: [inodes.count, entries.count, logical, id])
        }
    }

    private func readXattrs(_ path: String) -> [(String, [UInt8])] {
        guard let names = try? ExtendedAttributes.list(.path(path)) else { return [] }
        return names.compactMap { name in (try? ExtendedAttributes.get(.path(path), name: name)).map { (name, $0) } }
    }

    private func walk(_ path: String, ino directoryIno: Int64) throws {
        let dir = try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly, .noFollow])
        defer { dir.closeQuietly() }
        for item in try dir.directoryEntries().sorted(by: { $0.name < $1.name }) {
            let childPath = path + "/" + item.name
            let s = try dir.stat(at: item.name)
            if s.kind != .directory, s.linkCount > 1, let existing = byHostInode[s.inode] {
                inodes[Int(existing - 1)].linkCount += 1
                entries.append((directoryIno, Array(item.name.utf8), existing))
                continue
            }
            var inode = IngestedInode(stat: s, blobID: nil, symlinkTarget: nil, linkCount: 1, xattrs: readXattrs(childPath))
            switch s.kind {
            case .regular where s.size > 0:
                inode.blobID = try publish(dir, item.name)
            case .symlink:
                inode.symlinkTarget = try dir.readLink(at: item.name)
            case .directory:
                inode.linkCount = 2
                inodes[Int(directoryIno - 1)].linkCount += 1
            default:
                break
            }
            inodes.append(inode)
            let ino = Int64(inodes.count)
            if s.kind != .directory && s.linkCount > 1 { byHostInode[s.inode] = ino }
            entries.append((directoryIno, Array(item.name.utf8), ino))
            if s.kind == .directory { try walk(childPath, ino: ino) }
        }
    }

    /// Copies a file into the blob area under its SHA-256 (once per content) and records it.
    private func publish(_ dir: FileDescriptor, _ name: String) throws -> Int64 {
        let fd = try FileDescriptor.open(at: dir, name, [.readOnly, .noFollow])
        defer { fd.closeQuietly() }
        let (hash, size) = try SHA256Hasher.hash(file: fd)
        if let id = knownBlobs[hash] { return id }
        if !store.blobs.exists(hash) {
            let relative = StoreLayout.blobPath(hash)
            _ = try? store.blobsDirectory.makeDirectory(at: String(relative.prefix(2)), mode: 0o755)
            let staging = "blob-\(hash.hex)"
            let out = try FileDescriptor.open(at: store.temporaryDirectory, staging, [.readWrite, .create, .truncate], mode: 0o444)
            try out.copyContents(from: fd, size: size)
            try out.sync()
            out.closeQuietly()
            try store.temporaryDirectory.rename(at: staging, to: store.blobsDirectory, relative)
        }
        let id = try store.catalog.write { db -> Int64 in
            try db.execute(sql: "INSERT OR IGNORE INTO blob (hash, size, allocated, created_ns) VALUES (?, ?, ?, ?)",
                           arguments: [hash.bytes.databaseBlob, size, size, Timespec.now.totalNanoseconds])
            return try Int64.fetchOne(db, sql: "SELECT id FROM blob WHERE hash = ?", arguments: [hash.bytes.databaseBlob])!
        }
        knownBlobs[hash] = id
        return id
    }
}

func run() throws {
    let arguments = Array(CommandLine.arguments.dropFirst())
    guard let command = arguments.first else {
        throw Failure(description: "usage: pvfs-devtool template|provision --store PATH ...")
    }
    let store = try Store(path: try required("--store", in: arguments))
    switch command {
    case "template":
        guard let source = arguments.dropFirst().last, !source.hasPrefix("--") else { throw Failure(description: "missing DIR") }
        let name = try required("--name", in: arguments)
        let start = monotonicNanoseconds()
        let builder = TemplateBuilder(store: store)
        try builder.build(name: name, from: source)
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        print("template \(name): \(builder.inodes.count) inodes, \(builder.entries.count) entries, \(String(format: "%.3f", seconds)) s")
    case "provision":
        let template = try required("--template", in: arguments)
        let name = try required("--name", in: arguments)
        let count = Int(option("--count", in: arguments) ?? "1") ?? 1
        for i in 1...max(1, count) {
            let vmName = count > 1 ? "\(name)-\(i)" : name
            let start = monotonicNanoseconds()
            _ = try store.provisionVM(name: vmName, template: template)
            print(String(format: "%.6f", Double(monotonicNanoseconds() - start) / 1e9))
        }
    case "remove":
        try store.removeVM(named: try required("--name", in: arguments))
    default:
        throw Failure(description: "unknown command \(command)")
    }
}

do {
    try run()
} catch {
    FileHandle.standardError.write(Data("pvfs-devtool: \(error)\n".utf8))
    exit(1)
}
