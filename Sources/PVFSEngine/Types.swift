import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

/// An inode number in a VM's merged view. Stable for the life of the file: copy-up keeps it.
/// The root directory of every view is 1.
public typealias InodeNumber = UInt64

public let rootInode: InodeNumber = 1

/// Who performs an operation, in the id space of the caller (the guest for 9P, the host for FUSE).
public struct Credentials: Sendable, Hashable {
    public var uid: UInt32
    public var gid: UInt32
    /// Supplementary groups.
    public var groups: [UInt32]

    public init(uid: UInt32, gid: UInt32, groups: [UInt32] = []) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    public static let root = Credentials(uid: 0, gid: 0)

    public func isMember(of gid: UInt32) -> Bool { self.gid == gid || groups.contains(gid) }
}

/// A directory entry name (the catalog's model, `PVFSStore.FileName`), for the protocols that
/// reach names through the engine only.
public typealias FileName = PVFSStore.FileName

/// What stat reports for an inode of a view.
public struct Attributes: Sendable, Equatable {
    public var inode: InodeNumber
    public var kind: FileKind
    /// Full st_mode: type bits plus permissions, setuid, setgid, sticky.
    public var mode: UInt32
    public var linkCount: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: Int64
    /// 512-byte blocks allocated.
    public var blocks: Int64
    public var blockSize: UInt32
    public var accessTime: Timespec
    public var modificationTime: Timespec
    public var changeTime: Timespec
    /// Changes whenever the inode's content or metadata changes (9P qid.version).
    public var version: UInt64
    /// Inode generation (FUSE); inode numbers are never reused within a view, so 0 suffices.
    public var generation: UInt64

    public init(inode: InodeNumber, kind: FileKind, mode: UInt32, linkCount: UInt32, uid: UInt32, gid: UInt32,
                rdev: UInt64, size: Int64, blocks: Int64, blockSize: UInt32 = 4096, accessTime: Timespec,
                modificationTime: Timespec, changeTime: Timespec, version: UInt64 = 0, generation: UInt64 = 0) {
        self.inode = inode
        self.kind = kind
        self.mode = mode
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.size = size
        self.blocks = blocks
        self.blockSize = blockSize
        self.accessTime = accessTime
        self.modificationTime = modificationTime
        self.changeTime = changeTime
        self.version = version
        self.generation = generation
    }

    public var permissions: UInt32 { mode & permissionBitsMask }
}

/// A time to set: the caller's value, or the server's clock (UTIME_NOW).
public enum TimeChange: Sendable, Equatable {
    case now
    case set(Timespec)
}

/// The attributes a setattr changes; nil fields stay as they are.
public struct AttributeChanges: Sendable, Equatable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: Int64?
    public var accessTime: TimeChange?
    public var modificationTime: TimeChange?

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: Int64? = nil,
                accessTime: TimeChange? = nil, modificationTime: TimeChange? = nil) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.accessTime = accessTime
        self.modificationTime = modificationTime
    }

    public var isEmpty: Bool {
        mode == nil && uid == nil && gid == nil && size == nil && accessTime == nil && modificationTime == nil
    }
}

/// One entry returned by readdir. `cookie` is the offset to pass to continue after this entry;
/// it stays valid while the directory changes (entries are ordered by a hash of their name).
public struct DirectoryEntry: Sendable, Equatable {
    public var name: [UInt8]
    public var inode: InodeNumber
    public var kind: FileKind
    public var cookie: UInt64

    public init(name: [UInt8], inode: InodeNumber, kind: FileKind, cookie: UInt64) {
        self.name = name
        self.inode = inode
        self.kind = kind
        self.cookie = cookie
    }
}

/// Flags of xattr set (XATTR_CREATE / XATTR_REPLACE).
public enum XattrSetMode: Sendable {
    case createOrReplace
    case createOnly
    case replaceOnly
}

/// Byte-range lock types (F_RDLCK / F_WRLCK / F_UNLCK).
public enum LockType: String, Codable, Sendable, Equatable {
    case read
    case write
    case unlock

    /// The type fcntl(2) names F_RDLCK, F_WRLCK or F_UNLCK, the codes 9P's Tlock and FUSE's
    /// fuse_file_lock carry too; nil for any other code.
    public init?<Code: BinaryInteger>(fcntlCode code: Code) {
        switch code {
        case Code(F_RDLCK): self = .read
        case Code(F_WRLCK): self = .write
        case Code(F_UNLCK): self = .unlock
        default: return nil
        }
    }
}

/// A lock request waiting without a thread (`VMView.setLockOrWatch`): what to withdraw when
/// the waiter gives up.
public struct LockWatch: Sendable, Equatable {
    public let inode: InodeNumber
    let token: UInt64
}

/// A POSIX byte-range lock or a whole-file flock. `end` is inclusive; UInt64.max means to the end.
public struct FileLockRange: Codable, Sendable, Equatable {
    public var type: LockType
    public var start: UInt64
    public var end: UInt64
    /// The process holding it, as far as the client tells (reported by getlk).
    public var pid: UInt32

    public init(type: LockType, start: UInt64, end: UInt64, pid: UInt32) {
        self.type = type
        self.start = start
        self.end = end
        self.pid = pid
    }
}

/// Identifies a lock owner: the session (one FUSE mount or 9P connection) plus the client's owner id.
public struct LockOwner: Hashable, Sendable {
    public var session: UInt64
    public var owner: UInt64

    public init(session: UInt64, owner: UInt64) {
        self.session = session
        self.owner = owner
    }
}

/// statfs of a view: the VM's quota when it has one, the store's filesystem otherwise.
public typealias ViewStatistics = FileSystemStatistics

/// A lock a session holds, as `VMView.heldLocks` lists it: what a server handing its sessions to
/// another process passes on, for the new one to take again with `VMView.setLock`.
public struct HeldLock: Codable, Sendable, Equatable {
    public var inode: InodeNumber
    /// The client's owner id, as given to `VMView.setLock` (the session is the view's).
    public var owner: UInt64
    public var range: FileLockRange

    public init(inode: InodeNumber, owner: UInt64, range: FileLockRange) {
        self.inode = inode
        self.owner = owner
        self.range = range
    }
}
