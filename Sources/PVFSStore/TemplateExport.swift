import CPVFSSystem
import Dispatch
import Foundation
import GRDB
import Glibc
import PVFSSystem
import Synchronization
import SystemPackage

/// What `exportTemplate` wrote.
public struct ExportReport: Codable, Sendable {
    public var name: String
    public var destination: String
    public var entries: Int
    public var inodes: Int
    public var bytes: Int64
    public var copyMethod: String
    public var seconds: Double
}

/// One inode of a template as export needs it.
private struct ExportInode {
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: Int64
    var atime: Int64
    var mtime: Int64
    var rdev: UInt64
    var blob: BlobHash?
    var symlinkTarget: [UInt8]?

    var kind: FileKind { FileKind(mode: mode) ?? .regular }
}

extension Store {
    /// Materialises a template as a real tree at `path` (created, or an existing empty
    /// directory, which takes the root's attributes): content with its holes, ownership, mode
    /// (setuid, setgid, sticky included), atime and mtime, xattrs (ACLs and capabilities
    /// included), hardlink groups, device numbers, fifos and sockets. ctime cannot be set and is
    /// whatever the export time is. Needs root for ownership, devices and trusted/security xattrs.
    public func exportTemplate(named name: String, to path: String, jobs: Int = max(2, ProcessInfo.processInfo.activeProcessorCount),
                               progress: @escaping @Sendable (Int64) -> Void = { _ in }) throws -> ExportReport {
        let started = monotonicNanoseconds()
        let destinationPath = path
        let record = try requireTemplate(named: name)
        let destination = try Self.openExportDestination(path)
        defer { destination.closeQuietly() }

        // Everything the export needs, read in one snapshot.
        var inodes: [Int64: ExportInode] = [:]
        var children: [Int64: [(name: [UInt8], ino: Int64)]] = [:]
        var xattrs: [Int64: [(name: [UInt8], value: [UInt8])]] = [:]
        var entryCount = 1
        try catalog.read { db in
            let rows = try Row.fetchCursor(db, sql: """
                SELECT i.ino, i.mode, i.uid, i.gid, i.size, i.atime_ns, i.mtime_ns, i.rdev, b.hash, i.symlink_target
                FROM template_inode i LEFT JOIN blob b ON b.id = i.blob_id WHERE i.template_id = ?
                """, arguments: [record.id])
            while let row = try rows.next() {
                inodes[row[0]] = ExportInode(
                    mode: UInt32(truncatingIfNeeded: row[1] as Int64), uid: UInt32(truncatingIfNeeded: row[2] as Int64),
                    gid: UInt32(truncatingIfNeeded: row[3] as Int64), size: row[4], atime: row[5], mtime: row[6],
                    rdev: UInt64(bitPattern: row[7] as Int64), blob: row.optionalBytes(8).flatMap { BlobHash(bytes: $0) },
                    symlinkTarget: row.optionalBytes(9))
            }
            let dirents = try Row.fetchCursor(db, sql: "SELECT parent, name, ino FROM template_dirent WHERE template_id = ? ORDER BY parent, name",
                                              arguments: [record.id])
            while let row = try dirents.next() {
                children[row[0], default: []].append((row.bytes(1), row[2]))
                entryCount += 1
            }
            let xrows = try Row.fetchCursor(db, sql: "SELECT ino, name, value FROM template_xattr WHERE template_id = ? ORDER BY ino, name",
                                            arguments: [record.id])
            while let row = try xrows.next() {
                xattrs[row[0], default: []].append((row.bytes(1), row.bytes(2)))
            }
        }
        guard let rootInode = inodes[1], rootInode.kind == .directory else {
            throw PVFSError(.store, "template \(name) has no root directory", errno: .ioError)
        }

        // 1. The namespace, depth first: directories (mode 0700 for now), empty regular files,
        //    hardlinks, and the other kinds complete with their attributes.
        var firstPath: [Int64: [UInt8]] = [:]
        var directories: [(path: [UInt8], ino: Int64)] = [([], 1)]
        var contentJobs: [(path: [UInt8], ino: Int64)] = []
        struct Frame { var fd: FileDescriptor; var path: [UInt8]; var entries: [(name: [UInt8], ino: Int64)]; var next: Int }
        var stack = [Frame(fd: destination, path: [], entries: children[1] ?? [], next: 0)]
        defer { for frame in stack.dropFirst() { frame.fd.closeQuietly() } }
        while !stack.isEmpty {
            let top = stack.count - 1
            if stack[top].next == stack[top].entries.count {
                let frame = stack.removeLast()
                if top > 0 { frame.fd.closeQuietly() }
                continue
            }
            let (entryName, ino) = stack[top].entries[stack[top].next]
            stack[top].next += 1
            let dir = stack[top].fd
            let path = stack[top].path.isEmpty ? entryName : stack[top].path + [UInt8(ascii: "/")] + entryName
            guard let inode = inodes[ino] else {
                throw PVFSError(.store, "template \(name): entry \(displayPath(path)) names inode \(ino), which is missing", errno: .ioError)
            }
            do {
                if let existing = firstPath[ino] {
                    try destination.link(at: existing, to: dir, entryName)
                    continue
                }
                switch inode.kind {
                case .directory:
                    try dir.makeDirectory(at: entryName, mode: 0o700)
                    let fd = try FileDescriptor.open(at: dir, entryName, [.directory, .readOnly, .noFollow])
                    directories.append((path, ino))
                    stack.append(Frame(fd: fd, path: path, entries: children[ino] ?? [], next: 0))
                case .regular:
                    let fd = try FileDescriptor.open(at: dir, entryName, [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
                    fd.closeQuietly()
                    firstPath[ino] = path
                    contentJobs.append((path, ino))
                case .symlink:
                    try dir.symlink(at: entryName, target: inode.symlinkTarget ?? [])
                    firstPath[ino] = path
                    try Self.applyAttributes(inode, xattrs: xattrs[ino] ?? [], in: dir, name: entryName)
                case .characterDevice, .blockDevice, .fifo, .socket:
                    try dir.makeNode(at: entryName, mode: inode.kind.modeBits | 0o600, device: inode.rdev)
                    firstPath[ino] = path
                    try Self.applyAttributes(inode, xattrs: xattrs[ino] ?? [], in: dir, name: entryName)
                }
            } catch {
                throw PVFSError(.store, "cannot create \(displayPath(path)) in \(destinationPath): \(error)", errno: error)
            }
        }

        // 2. File content and attributes, in parallel.
        let blobs = self.blobs
        let failure = Mutex<(any Error)?>(nil)
        let next = Atomic<Int>(0)
        let reflinked = Atomic<Int>(0)
        let copied = Atomic<Int>(0)
        let jobsCount = contentJobs.count
        let frozenInodes = inodes, frozenXattrs = xattrs, frozenJobs = contentJobs
        DispatchQueue.concurrentPerform(iterations: max(1, min(jobs, jobsCount))) { _ in
            while failure.withLock({ $0 == nil }) {
                let index = next.add(1, ordering: .relaxed).oldValue
                guard index < jobsCount else { break }
                let (path, ino) = frozenJobs[index]
                let inode = frozenInodes[ino]!
                do {
                    let fd = try FileDescriptor.openBeneath(destination, path, [.writeOnly, .noFollow], resolve: CPVFS_RESOLVE_NO_SYMLINKS)
                    defer { fd.closeQuietly() }
                    if let hash = inode.blob {
                        let blob = try blobs.open(hash)
                        defer { blob.closeQuietly() }
                        switch try fd.copyContents(from: blob, size: inode.size) {
                        case .reflink: reflinked.add(1, ordering: .relaxed)
                        case .copyFileRange, .readWrite: copied.add(1, ordering: .relaxed)
                        }
                    } else if inode.size > 0 {
                        throw PVFSError(.store, "template \(name): \(displayPath(path)) has \(inode.size) bytes but no blob", errno: .ioError)
                    }
                    try Self.applyAttributes(inode, xattrs: frozenXattrs[ino] ?? [], to: fd, path: path)
                    progress(inode.size)
                } catch let error as Errno {
                    failure.withLock { if $0 == nil { $0 = PVFSError(.store, "cannot export \(displayPath(path)): \(error)", errno: error) } }
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }

        // 3. Directories last and deepest first: creating entries no longer touches their times.
        for (dirPath, ino) in directories.reversed() {
            let inode = ino == 1 ? rootInode : inodes[ino]!
            do {
                let fd = dirPath.isEmpty ? destination
                    : try FileDescriptor.openBeneath(destination, dirPath, [.directory, .readOnly, .noFollow], resolve: CPVFS_RESOLVE_NO_SYMLINKS)
                defer { if !dirPath.isEmpty { fd.closeQuietly() } }
                try Self.applyAttributes(inode, xattrs: xattrs[ino] ?? [], to: fd, path: dirPath)
            } catch {
                throw PVFSError(.store, "cannot set the attributes of \(displayPath(dirPath)): \(error)", errno: error)
            }
        }
        let bytes = contentJobs.reduce(Int64(0)) { $0 + inodes[$1.ino]!.size }
        let method = reflinked.load(ordering: .relaxed) > 0 ? (copied.load(ordering: .relaxed) > 0 ? "mixed" : "reflink") : "copy"
        return ExportReport(name: name, destination: Self.absolutePath(path), entries: entryCount, inodes: inodes.count, bytes: bytes,
                            copyMethod: method, seconds: Double(monotonicNanoseconds() - started) / 1e9)
    }

    /// Opens (creating) the export destination, which must be empty.
    private static func openExportDestination(_ path: String) throws -> FileDescriptor {
        do {
            try FileDescriptor.currentDirectory.makeDirectory(at: path, mode: 0o700)
        } catch where error == .fileExists {
        } catch {
            throw PVFSError(.store, "cannot create \(path): \(error)", errno: error)
        }
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly])
        } catch {
            throw PVFSError(.store, "cannot open \(path): \(error)", errno: error == .notDirectory ? .fileExists : error)
        }
        do {
            if !(try fd.rawDirectoryEntries().isEmpty) {
                fd.closeQuietly()
                throw PVFSError(.store, "\(path) is not empty; export needs a new or empty directory", errno: .fileExists)
            }
        } catch let error as Errno {
            fd.closeQuietly()
            throw PVFSError(.store, "cannot read \(path): \(error)", errno: error)
        }
        return fd
    }

    /// Owner, mode, xattrs and times through an open descriptor. chown comes first (it clears
    /// setuid/setgid and security.capability), then the mode, then xattrs (capabilities and ACLs
    /// after both), then the times.
    private static func applyAttributes(_ inode: ExportInode, xattrs: [(name: [UInt8], value: [UInt8])], to fd: FileDescriptor,
                                        path: [UInt8]) throws(Errno) {
        try fd.changeOwner(uid: inode.uid, gid: inode.gid)
        try fd.changeMode(inode.mode & permissionBitsMask)
        for x in xattrs { try RawExtendedAttributes.set(.descriptor(fd), name: x.name, value: x.value) }
        try fd.setTimes(access: Timespec(totalNanoseconds: inode.atime), modification: Timespec(totalNanoseconds: inode.mtime))
    }

    /// The same for an entry that cannot be opened (symlink, device, fifo, socket).
    private static func applyAttributes(_ inode: ExportInode, xattrs: [(name: [UInt8], value: [UInt8])], in dir: FileDescriptor,
                                        name: [UInt8]) throws(Errno) {
        try dir.changeOwner(at: name, uid: inode.uid, gid: inode.gid)
        if inode.kind != .symlink { try dir.changeMode(at: name, inode.mode & permissionBitsMask) }
        let procPath = RawExtendedAttributes.procPath(directory: dir, name: name)
        for x in xattrs { try RawExtendedAttributes.set(.path(procPath), name: x.name, value: x.value) }
        try dir.setTimes(at: name, access: Timespec(totalNanoseconds: inode.atime), modification: Timespec(totalNanoseconds: inode.mtime))
    }
}
