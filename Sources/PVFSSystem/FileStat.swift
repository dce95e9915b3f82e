import CPVFSSystem
import Glibc
import SystemPackage

/// The kind of a filesystem object, as encoded in the S_IFMT bits of st_mode.
public enum FileKind: UInt8, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case regular = 1
    case directory = 2
    case symlink = 3
    case characterDevice = 4
    case blockDevice = 5
    case fifo = 6
    case socket = 7

    public init?(mode: UInt32) {
        switch mode & 0o170000 {
        case 0o100000: self = .regular
        case 0o040000: self = .directory
        case 0o120000: self = .symlink
        case 0o020000: self = .characterDevice
        case 0o060000: self = .blockDevice
        case 0o010000: self = .fifo
        case 0o140000: self = .socket
        default: return nil
        }
    }

    /// The S_IFMT bits for this kind.
    public var modeBits: UInt32 {
        switch self {
        case .regular: 0o100000
        case .directory: 0o040000
        case .symlink: 0o120000
        case .characterDevice: 0o020000
        case .blockDevice: 0o060000
        case .fifo: 0o010000
        case .socket: 0o140000
        }
    }

    /// The d_type value readdir reports for this kind.
    public var direntType: UInt8 {
        switch self {
        case .regular: UInt8(DT_REG)
        case .directory: UInt8(DT_DIR)
        case .symlink: UInt8(DT_LNK)
        case .characterDevice: UInt8(DT_CHR)
        case .blockDevice: UInt8(DT_BLK)
        case .fifo: UInt8(DT_FIFO)
        case .socket: UInt8(DT_SOCK)
        }
    }

    public var description: String {
        switch self {
        case .regular: "file"
        case .directory: "directory"
        case .symlink: "symlink"
        case .characterDevice: "char-device"
        case .blockDevice: "block-device"
        case .fifo: "fifo"
        case .socket: "socket"
        }
    }
}

/// Mode bits below the file type: permissions plus setuid, setgid and sticky.
public let fileTypeMask: UInt32 = 0o170000
public let permissionBitsMask: UInt32 = 0o7777

/// A host `stat` result in Swift types.
public struct FileStat: Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64
    public var mode: UInt32
    public var linkCount: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: Int64
    public var blockSize: Int64
    public var blocks: Int64
    public var accessTime: Timespec
    public var modificationTime: Timespec
    public var changeTime: Timespec

    public init(_ s: stat) {
        device = UInt64(s.st_dev)
        inode = UInt64(s.st_ino)
        mode = UInt32(s.st_mode)
        linkCount = UInt64(s.st_nlink)
        uid = s.st_uid
        gid = s.st_gid
        rdev = UInt64(s.st_rdev)
        size = Int64(s.st_size)
        blockSize = Int64(s.st_blksize)
        blocks = Int64(s.st_blocks)
        accessTime = Timespec(s.st_atim)
        modificationTime = Timespec(s.st_mtim)
        changeTime = Timespec(s.st_ctim)
    }

    public var kind: FileKind? { FileKind(mode: mode) }
    public var permissions: UInt32 { mode & permissionBitsMask }
}

public enum DeviceNumber {
    public static func make(major: UInt32, minor: UInt32) -> UInt64 { UInt64(cpvfs_makedev(major, minor)) }
    public static func major(_ dev: UInt64) -> UInt32 { cpvfs_major(dev_t(dev)) }
    public static func minor(_ dev: UInt64) -> UInt32 { cpvfs_minor(dev_t(dev)) }
}
