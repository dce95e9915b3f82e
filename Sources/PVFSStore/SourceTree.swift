import CPVFSSystem
import Glibc
import PVFSSystem
import SystemPackage

/// A path inside a source tree for messages: "/"-rooted; when it is not valid UTF-8, bytes
/// outside printable ASCII appear as \xNN.
func displayPath(_ path: [UInt8]) -> String { "/" + path.displayText }

/// One inode of a scanned tree, as the catalog will hold it.
struct ScannedInode {
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    /// Links inside the tree (not the source's st_nlink, which counts links outside it);
    /// 2 + subdirectories for a directory.
    var nlink: UInt32
    var size: Int64
    var blocks: Int64
    var atime: Int64
    var mtime: Int64
    var ctime: Int64
    var rdev: UInt64
    var symlinkTarget: [UInt8]?
    var xattrs: [(name: [UInt8], value: [UInt8])]

    init(_ st: FileStat) {
        mode = st.mode
        uid = st.uid
        gid = st.gid
        nlink = 1
        size = st.size
        blocks = st.blocks
        atime = st.accessTime.totalNanoseconds
        mtime = st.modificationTime.totalNanoseconds
        ctime = st.changeTime.totalNanoseconds
        let kind = st.kind
        rdev = kind == .characterDevice || kind == .blockDevice ? st.rdev : 0
        symlinkTarget = nil
        xattrs = []
    }

    var kind: FileKind { FileKind(mode: mode) ?? .regular }
    /// A regular file with content: its data becomes a blob.
    var hasContent: Bool { kind == .regular && size > 0 }
}

/// A directory entry of a scanned tree.
struct ScannedDirent {
    var parent: Int64
    var name: [UInt8]
    var ino: Int64
}

/// A regular file whose content is to be staged: where it is and what it looked like when
/// scanned, so that a file replaced or changed before it is read is noticed.
struct FileJob: Sendable {
    var ino: Int64
    var path: [UInt8]
    var size: Int64
    var blocks: Int64
    var device: UInt64
    var inode: UInt64
    var mtime: Timespec
    var ctime: Timespec

    var mayBeSparse: Bool { blocks * 512 < size }
}

/// What a scan found.
struct ScannedTree {
    /// Indexed by template inode number - 1 (the root is inode 1).
    var inodes: [ScannedInode] = []
    var dirents: [ScannedDirent] = []
    var files: [FileJob] = []
    var skippedMountPoints: [String] = []
    var skippedStore = false

    var maxInode: Int64 { Int64(inodes.count) }
}

/// Walks a source tree through descriptors only: every directory is opened relative to its
/// parent with O_NOFOLLOW, every entry is examined with fstatat(AT_SYMLINK_NOFOLLOW), so no
/// symlink inside the tree is ever followed, and names are bytes throughout.
///
/// Inode numbers are assigned in pre-order with entries sorted by name, so the same tree always
/// gets the same numbers. Hardlinks (non-directories sharing a source (device, inode)) share one
/// template inode.
struct TreeScanner {
    let root: FileDescriptor
    let rootStat: FileStat
    /// Do not descend into directories on another filesystem (mount points are kept, empty).
    let oneFileSystem: Bool
    /// (device, inode) of a directory to leave out: the store itself when it lies in the tree.
    let excluded: (UInt64, UInt64)?

    private var tree = ScannedTree()
    private var hardlinks: [HardlinkKey: Int64] = [:]
    private var noAccessTime = true

    private struct HardlinkKey: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    private struct Frame {
        var fd: FileDescriptor
        var ino: Int64
        var path: [UInt8]
        var entries: [RawDirectoryEntry]
        var next: Int
        var subdirectories: UInt32
    }

    init(root: FileDescriptor, rootStat: FileStat, oneFileSystem: Bool, excluded: (UInt64, UInt64)?) {
        self.root = root
        self.rootStat = rootStat
        self.oneFileSystem = oneFileSystem
        self.excluded = excluded
    }

    mutating func scan(cancelled: () -> Bool) throws -> ScannedTree {
        var rootInode = ScannedInode(rootStat)
        rootInode.xattrs = try readXattrs(.descriptor(root), path: [])
        tree.inodes.append(rootInode)
        var stack = [Frame(fd: root, ino: 1, path: [], entries: try listDirectory(root, path: []), next: 0, subdirectories: 0)]
        defer {
            for frame in stack.dropFirst() { frame.fd.closeQuietly() }
        }
        while !stack.isEmpty {
            if cancelled() { throw PVFSError(.store, "interrupted", errno: .interrupted) }
            let top = stack.count - 1
            if stack[top].next == stack[top].entries.count {
                let frame = stack.removeLast()
                tree.inodes[Int(frame.ino - 1)].nlink = 2 + frame.subdirectories
                if top > 0 { frame.fd.closeQuietly() }
                continue
            }
            let entry = stack[top].entries[stack[top].next]
            stack[top].next += 1
            let dirFD = stack[top].fd
            let parentIno = stack[top].ino
            let path = stack[top].path.isEmpty ? entry.name : stack[top].path + [UInt8(ascii: "/")] + entry.name

            let st: FileStat
            do {
                st = try dirFD.stat(at: entry.name)
            } catch {
                throw sourceError(error, path: path, doing: "examine")
            }
            guard let kind = st.kind else {
                throw PVFSError(.sourceTree, "\(displayPath(path)): unknown file type (mode \(String(st.mode, radix: 8)))")
            }
            if kind == .directory, let excluded, st.device == excluded.0, st.inode == excluded.1 {
                tree.skippedStore = true
                continue
            }
            if kind != .directory, st.linkCount > 1 {
                let key = HardlinkKey(device: st.device, inode: st.inode)
                if let existing = hardlinks[key] {
                    tree.dirents.append(ScannedDirent(parent: parentIno, name: entry.name, ino: existing))
                    tree.inodes[Int(existing - 1)].nlink += 1
                    continue
                }
                hardlinks[key] = Int64(tree.inodes.count + 1)
            }
            let ino = Int64(tree.inodes.count + 1)
            var inode = ScannedInode(st)
            tree.dirents.append(ScannedDirent(parent: parentIno, name: entry.name, ino: ino))

            if kind == .directory {
                stack[top].subdirectories += 1
                let crossesDevice = st.device != rootStat.device
                if crossesDevice && oneFileSystem {
                    inode.xattrs = try readXattrs(.entry(directory: dirFD, name: entry.name), path: path)
                    tree.inodes.append(inode)
                    tree.skippedMountPoints.append(displayPath(path))
                    continue
                }
                let child = try openDirectory(dirFD, entry.name, path: path, expected: st)
                do {
                    inode.xattrs = try readXattrs(.descriptor(child), path: path)
                    tree.inodes.append(inode)
                    stack.append(Frame(fd: child, ino: ino, path: path, entries: try listDirectory(child, path: path), next: 0, subdirectories: 0))
                } catch {
                    child.closeQuietly()
                    throw error
                }
                continue
            }

            inode.xattrs = try readXattrs(.entry(directory: dirFD, name: entry.name), path: path)
            switch kind {
            case .symlink:
                do {
                    inode.symlinkTarget = try dirFD.readLink(at: entry.name)
                } catch {
                    throw sourceError(error, path: path, doing: "read the symlink")
                }
            case .regular where st.size > 0:
                tree.files.append(FileJob(ino: ino, path: path, size: st.size, blocks: st.blocks, device: st.device, inode: st.inode,
                                          mtime: st.modificationTime, ctime: st.changeTime))
            default:
                break
            }
            tree.inodes.append(inode)
        }
        return tree
    }

    private func sourceError(_ error: Errno, path: [UInt8], doing what: String) -> PVFSError {
        switch error {
        case .noSuchFileOrDirectory:
            PVFSError(.sourceTree, "\(displayPath(path)) vanished while the tree was being ingested", errno: error)
        case .permissionDenied, .notPermitted:
            PVFSError(.sourceTree, "cannot \(what) \(displayPath(path)): permission denied", errno: error)
        default:
            PVFSError(.sourceTree, "cannot \(what) \(displayPath(path)): \(error)", errno: error)
        }
    }

    private func listDirectory(_ fd: FileDescriptor, path: [UInt8]) throws -> [RawDirectoryEntry] {
        do {
            var entries = try fd.rawDirectoryEntries()
            entries.sort { $0.name.lexicographicallyPrecedes($1.name) }
            return entries
        } catch {
            throw sourceError(error, path: path, doing: "read the directory")
        }
    }

    private mutating func openDirectory(_ parent: FileDescriptor, _ name: [UInt8], path: [UInt8], expected: FileStat) throws -> FileDescriptor {
        var flags: OpenFlags = [.directory, .readOnly, .noFollow]
        if noAccessTime { flags.insert(.noAccessTime) }
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(at: parent, name, flags)
        } catch Errno.notPermitted where noAccessTime {
            // O_NOATIME needs ownership or CAP_FOWNER; reading then updates atimes, which were
            // recorded before.
            noAccessTime = false
            return try openDirectory(parent, name, path: path, expected: expected)
        } catch {
            throw sourceError(error == .notDirectory || error == .tooManySymbolicLinkLevels ? .noSuchFileOrDirectory : error,
                              path: path, doing: "open the directory")
        }
        let st: FileStat
        do {
            st = try fd.stat()
        } catch {
            fd.closeQuietly()
            throw sourceError(error, path: path, doing: "examine")
        }
        if st.device != expected.device || st.inode != expected.inode {
            fd.closeQuietly()
            throw PVFSError(.sourceTree, "\(displayPath(path)) was replaced while the tree was being ingested", errno: .ioError)
        }
        return fd
    }

    private func readXattrs(_ target: RawExtendedAttributes.Target, path: [UInt8]) throws -> [(name: [UInt8], value: [UInt8])] {
        do {
            return try RawExtendedAttributes.all(target)
        } catch {
            throw sourceError(error, path: path, doing: "read the extended attributes of")
        }
    }
}

extension FileJob {
    /// Opens the file for reading through the tree's root descriptor without following any
    /// symlink (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, component by component where
    /// openat2 is missing) and checks it is the file that was scanned.
    func open(in root: FileDescriptor, oneFileSystem: Bool, noAccessTime: inout Bool) throws -> FileDescriptor {
        var flags: OpenFlags = [.readOnly, .noFollow, .nonBlocking]
        if noAccessTime { flags.insert(.noAccessTime) }
        let fd: FileDescriptor
        do {
            fd = try Self.openBeneath(root, path, flags, oneFileSystem: oneFileSystem)
        } catch Errno.notPermitted where noAccessTime {
            noAccessTime = false
            return try open(in: root, oneFileSystem: oneFileSystem, noAccessTime: &noAccessTime)
        } catch {
            switch error {
            case .noSuchFileOrDirectory, .notDirectory, .tooManySymbolicLinkLevels, .improperLink:
                throw PVFSError(.sourceTree, "\(displayPath(path)) vanished or was replaced while the tree was being ingested", errno: error)
            case .permissionDenied, .notPermitted:
                throw PVFSError(.sourceTree, "cannot read \(displayPath(path)): permission denied", errno: error)
            default:
                throw PVFSError(.sourceTree, "cannot open \(displayPath(path)): \(error)", errno: error)
            }
        }
        do {
            let st = try fd.stat()
            guard st.device == device, st.inode == inode, st.kind == .regular else {
                throw PVFSError(.sourceTree, "\(displayPath(path)) was replaced while the tree was being ingested", errno: .ioError)
            }
            try checkUnchanged(st)
            return fd
        } catch {
            fd.closeQuietly()
            throw error
        }
    }

    /// Throws unless `st` (of the opened file) still matches the scan.
    func checkUnchanged(_ st: FileStat) throws {
        if st.size != size || st.modificationTime != mtime || st.changeTime != ctime {
            throw PVFSError(.sourceTree, "\(displayPath(path)) changed while the tree was being ingested (the source must not change during ingest)",
                                         errno: .ioError)
        }
    }

    private static func openBeneath(_ root: FileDescriptor, _ path: [UInt8], _ flags: OpenFlags, oneFileSystem: Bool) throws(Errno) -> FileDescriptor {
        if path.count < 4000 {
            do throws(Errno) {
                return try FileDescriptor.openBeneath(root, path, flags,
                                                      resolve: CPVFS_RESOLVE_NO_SYMLINKS | (oneFileSystem ? CPVFS_RESOLVE_NO_XDEV : 0))
            } catch where error == .noFunction {
                // fall through to the component walk
            }
        }
        // Component by component, each directory opened O_NOFOLLOW relative to the last.
        let components = path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map(Array.init)
        var current = root
        defer { if current != root { current.closeQuietly() } }
        for component in components.dropLast() {
            let next = try FileDescriptor.open(at: current, component, [.directory, .readOnly, .noFollow])
            if current != root { current.closeQuietly() }
            current = next
        }
        let fd = try FileDescriptor.open(at: current, components.last ?? [], flags)
        return fd
    }
}
