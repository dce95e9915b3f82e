import PVFSStore
import PVFSSystem

/// Where a regular file's bytes live.
enum DataLocation: Sendable, Equatable {
    /// No data: directories, symlinks, devices, fifos, sockets, and empty template files.
    case none
    /// A shared, immutable blob; the first write copies it into the VM's private area.
    case blob(id: Int64)
    /// The VM's own file at vms/<vm>/data/<xx>/<ino>.
    case privateFile

    var catalogCode: Int64 {
        switch self {
        case .none: 0
        case .blob: 1
        case .privateFile: 2
        }
    }

    var blobID: Int64? {
        if case .blob(let id) = self { return id }
        return nil
    }
}

/// The metadata of one inode as the engine keeps it (template or VM-owned).
struct InodeRecord: Sendable, Equatable {
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var linkCount: UInt32
    /// For private files, the size at the last metadata commit; the host file is authoritative.
    var size: Int64
    var blocks: Int64
    var accessTime: Timespec
    var modificationTime: Timespec
    var changeTime: Timespec
    var rdev: UInt64
    /// The directory holding this one (directories only; the root is its own parent).
    var parent: InodeNumber
    var data: DataLocation
    var symlinkTarget: [UInt8]?
    /// The VM replaced this inode's xattr set (it lives in the overlay, not the template).
    var privateXattrs: Bool
    /// Bumped on every change this process makes; 9P reports it as qid.version.
    var version: UInt64 = 0

    var kind: FileKind { FileKind(mode: mode) ?? .regular }
    var isDirectory: Bool { mode & fileTypeMask == FileKind.directory.modeBits }
    var permissions: UInt32 { mode & permissionBitsMask }
}
