// 9P2000.L protocol constants, as Linux defines them (include/net/9p/9p.h, fs/9p/*.c).
//
// The files of this module (the codec and the transport seam) import nothing but the standard
// library, so that fuzz/run-9p-decoder-fuzz.sh can compile them alone.

/// Protocol-wide constants.
public enum NineP {
    /// The only protocol version this server speaks.
    public static let protocolVersion: [UInt8] = Array("9P2000.L".utf8)
    /// Rversion's answer to a version the server does not speak.
    public static let unknownVersion: [UInt8] = Array("unknown".utf8)
    public static let noTag: UInt16 = 0xFFFF
    public static let noFid: UInt32 = 0xFFFF_FFFF
    /// n_uname when the client names the user only by its uname string.
    public static let noUid: UInt32 = 0xFFFF_FFFF
    /// Most names one Twalk may carry.
    public static let maximumWalkNames = 16
    /// size[4] type[1] tag[2].
    public static let headerSize = 7
    /// Header of Rread and Rreaddir: size[4] type[1] tag[2] count[4].
    public static let readReplyHeaderSize = 11
    /// Room Linux reserves for the header of Twrite/Rread (P9_IOHDRSZ).
    public static let ioHeaderSize = 24
    /// The smallest msize this server negotiates (as QEMU; Linux never offers less).
    public static let minimumMessageSize = 4096
    /// statfs f_type of a 9P mount (V9FS_MAGIC).
    public static let filesystemMagic: UInt32 = 0x0102_1997
    /// Largest xattr value Linux transfers (XATTR_SIZE_MAX).
    public static let maximumXattrSize = 65536
}

/// A message type byte. T-messages are even, their R-messages the next odd number.
public struct NinePMessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let tlerror = Self(rawValue: 6)
    public static let rlerror = Self(rawValue: 7)
    public static let tstatfs = Self(rawValue: 8)
    public static let rstatfs = Self(rawValue: 9)
    public static let tlopen = Self(rawValue: 12)
    public static let rlopen = Self(rawValue: 13)
    public static let tlcreate = Self(rawValue: 14)
    public static let rlcreate = Self(rawValue: 15)
    public static let tsymlink = Self(rawValue: 16)
    public static let rsymlink = Self(rawValue: 17)
    public static let tmknod = Self(rawValue: 18)
    public static let rmknod = Self(rawValue: 19)
    public static let trename = Self(rawValue: 20)
    public static let rrename = Self(rawValue: 21)
    public static let treadlink = Self(rawValue: 22)
    public static let rreadlink = Self(rawValue: 23)
    public static let tgetattr = Self(rawValue: 24)
    public static let rgetattr = Self(rawValue: 25)
    public static let tsetattr = Self(rawValue: 26)
    public static let rsetattr = Self(rawValue: 27)
    public static let txattrwalk = Self(rawValue: 30)
    public static let rxattrwalk = Self(rawValue: 31)
    public static let txattrcreate = Self(rawValue: 32)
    public static let rxattrcreate = Self(rawValue: 33)
    public static let treaddir = Self(rawValue: 40)
    public static let rreaddir = Self(rawValue: 41)
    public static let tfsync = Self(rawValue: 50)
    public static let rfsync = Self(rawValue: 51)
    public static let tlock = Self(rawValue: 52)
    public static let rlock = Self(rawValue: 53)
    public static let tgetlock = Self(rawValue: 54)
    public static let rgetlock = Self(rawValue: 55)
    public static let tlink = Self(rawValue: 70)
    public static let rlink = Self(rawValue: 71)
    public static let tmkdir = Self(rawValue: 72)
    public static let rmkdir = Self(rawValue: 73)
    public static let trenameat = Self(rawValue: 74)
    public static let rrenameat = Self(rawValue: 75)
    public static let tunlinkat = Self(rawValue: 76)
    public static let runlinkat = Self(rawValue: 77)
    public static let tversion = Self(rawValue: 100)
    public static let rversion = Self(rawValue: 101)
    public static let tauth = Self(rawValue: 102)
    public static let rauth = Self(rawValue: 103)
    public static let tattach = Self(rawValue: 104)
    public static let rattach = Self(rawValue: 105)
    public static let terror = Self(rawValue: 106)
    public static let rerror = Self(rawValue: 107)
    public static let tflush = Self(rawValue: 108)
    public static let rflush = Self(rawValue: 109)
    public static let twalk = Self(rawValue: 110)
    public static let rwalk = Self(rawValue: 111)
    public static let topen = Self(rawValue: 112)
    public static let ropen = Self(rawValue: 113)
    public static let tcreate = Self(rawValue: 114)
    public static let rcreate = Self(rawValue: 115)
    public static let tread = Self(rawValue: 116)
    public static let rread = Self(rawValue: 117)
    public static let twrite = Self(rawValue: 118)
    public static let rwrite = Self(rawValue: 119)
    public static let tclunk = Self(rawValue: 120)
    public static let rclunk = Self(rawValue: 121)
    public static let tremove = Self(rawValue: 122)
    public static let rremove = Self(rawValue: 123)
    public static let tstat = Self(rawValue: 124)
    public static let rstat = Self(rawValue: 125)
    public static let twstat = Self(rawValue: 126)
    public static let rwstat = Self(rawValue: 127)

    private static let names: [UInt8: String] = [
        6: "Tlerror", 7: "Rlerror", 8: "Tstatfs", 9: "Rstatfs", 12: "Tlopen", 13: "Rlopen",
        14: "Tlcreate", 15: "Rlcreate", 16: "Tsymlink", 17: "Rsymlink", 18: "Tmknod", 19: "Rmknod",
        20: "Trename", 21: "Rrename", 22: "Treadlink", 23: "Rreadlink", 24: "Tgetattr", 25: "Rgetattr",
        26: "Tsetattr", 27: "Rsetattr", 30: "Txattrwalk", 31: "Rxattrwalk", 32: "Txattrcreate",
        33: "Rxattrcreate", 40: "Treaddir", 41: "Rreaddir", 50: "Tfsync", 51: "Rfsync", 52: "Tlock",
        53: "Rlock", 54: "Tgetlock", 55: "Rgetlock", 70: "Tlink", 71: "Rlink", 72: "Tmkdir", 73: "Rmkdir",
        74: "Trenameat", 75: "Rrenameat", 76: "Tunlinkat", 77: "Runlinkat", 100: "Tversion",
        101: "Rversion", 102: "Tauth", 103: "Rauth", 104: "Tattach", 105: "Rattach", 106: "Terror",
        107: "Rerror", 108: "Tflush", 109: "Rflush", 110: "Twalk", 111: "Rwalk", 112: "Topen",
        113: "Ropen", 114: "Tcreate", 115: "Rcreate", 116: "Tread", 117: "Rread", 118: "Twrite",
        119: "Rwrite", 120: "Tclunk", 121: "Rclunk", 122: "Tremove", 123: "Rremove", 124: "Tstat",
        125: "Rstat", 126: "Twstat", 127: "Rwstat",
    ]

    public var description: String { Self.names[rawValue] ?? "type \(rawValue)" }
}

/// qid.type bits.
public enum NinePQidType {
    public static let directory: UInt8 = 0x80
    public static let append: UInt8 = 0x40
    public static let exclusive: UInt8 = 0x20
    public static let mount: UInt8 = 0x10
    public static let auth: UInt8 = 0x08
    public static let temporary: UInt8 = 0x04
    public static let symlink: UInt8 = 0x02
    public static let link: UInt8 = 0x01
    public static let file: UInt8 = 0x00
}

/// The server's identity for a file: type bits, a version that changes with the file, and a
/// path unique within the attached tree (the inode number).
public struct NinePQid: Hashable, Sendable, CustomStringConvertible {
    public var type: UInt8
    public var version: UInt32
    public var path: UInt64

    public init(type: UInt8, version: UInt32, path: UInt64) {
        self.type = type
        self.version = version
        self.path = path
    }

    public static let encodedSize = 13

    public var description: String { "(\(path) v\(version) t\(type))" }
}

/// Open flags of Tlopen and Tlcreate (P9_DOTL_*). They equal x86's O_* values but not every
/// architecture's, so the server translates them rather than passing them on.
public struct NinePOpenFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let accessModeMask: UInt32 = 0o3
    public static let readOnly: UInt32 = 0o0
    public static let writeOnly: UInt32 = 0o1
    public static let readWrite: UInt32 = 0o2
    /// O_ACCMODE == 3: neither read nor write (used for ioctl-only opens).
    public static let noAccess: UInt32 = 0o3

    public static let create = Self(rawValue: 0o100)
    public static let exclusive = Self(rawValue: 0o200)
    public static let noControllingTerminal = Self(rawValue: 0o400)
    public static let truncate = Self(rawValue: 0o1000)
    public static let append = Self(rawValue: 0o2000)
    public static let nonBlocking = Self(rawValue: 0o4000)
    public static let dataSync = Self(rawValue: 0o10000)
    public static let asyncNotify = Self(rawValue: 0o20000)
    public static let direct = Self(rawValue: 0o40000)
    public static let largeFile = Self(rawValue: 0o100000)
    public static let directory = Self(rawValue: 0o200000)
    public static let noFollow = Self(rawValue: 0o400000)
    public static let noAccessTime = Self(rawValue: 0o1000000)
    public static let closeOnExec = Self(rawValue: 0o2000000)
    public static let sync = Self(rawValue: 0o4000000)

    public var accessMode: UInt32 { rawValue & Self.accessModeMask }
}

/// Tgetattr's request mask and Rgetattr's valid mask (P9_STATS_*).
public struct NinePAttributeMask: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let mode = Self(rawValue: 0x1)
    public static let linkCount = Self(rawValue: 0x2)
    public static let uid = Self(rawValue: 0x4)
    public static let gid = Self(rawValue: 0x8)
    public static let rdev = Self(rawValue: 0x10)
    public static let accessTime = Self(rawValue: 0x20)
    public static let modificationTime = Self(rawValue: 0x40)
    public static let changeTime = Self(rawValue: 0x80)
    public static let inode = Self(rawValue: 0x100)
    public static let size = Self(rawValue: 0x200)
    public static let blocks = Self(rawValue: 0x400)
    public static let birthTime = Self(rawValue: 0x800)
    public static let generation = Self(rawValue: 0x1000)
    public static let dataVersion = Self(rawValue: 0x2000)

    /// Everything up to blocks: what stat(2) needs.
    public static let basic = Self(rawValue: 0x7ff)
    public static let all = Self(rawValue: 0x3fff)
}

/// Tsetattr's valid bits (P9_ATTR_*, Linux's ATTR_* of struct iattr).
public struct NinePSetattrMask: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let mode = Self(rawValue: 1 << 0)
    public static let uid = Self(rawValue: 1 << 1)
    public static let gid = Self(rawValue: 1 << 2)
    public static let size = Self(rawValue: 1 << 3)
    /// Set the access time: to the given value with `accessTimeSet`, else to the server's clock.
    public static let accessTime = Self(rawValue: 1 << 4)
    public static let modificationTime = Self(rawValue: 1 << 5)
    /// Only touch the change time.
    public static let changeTime = Self(rawValue: 1 << 6)
    public static let accessTimeSet = Self(rawValue: 1 << 7)
    public static let modificationTimeSet = Self(rawValue: 1 << 8)
}

/// Tunlinkat flags.
public enum NinePUnlinkFlags {
    public static let removeDirectory: UInt32 = 0x200
}

/// Txattrcreate flags (Linux's XATTR_CREATE / XATTR_REPLACE).
public enum NinePXattrFlags {
    public static let create: UInt32 = 1
    public static let replace: UInt32 = 2
}

/// Tlock / Tgetlock lock types.
public enum NinePLockType {
    public static let readLock: UInt8 = 0
    public static let writeLock: UInt8 = 1
    public static let unlock: UInt8 = 2
}

/// Rlock status.
public enum NinePLockStatus {
    public static let success: UInt8 = 0
    /// The lock is held by someone else; a client waiting (F_SETLKW) asks again.
    public static let blocked: UInt8 = 1
    public static let error: UInt8 = 2
    public static let grace: UInt8 = 3
}

/// Tlock flags.
public enum NinePLockFlags {
    /// F_SETLKW: the client will wait.
    public static let block: UInt32 = 1
    public static let reclaim: UInt32 = 2
}

/// Linux errno values the codec and server report in Rlerror. The engine throws swift-system
/// `Errno`, whose raw values are Linux's on Linux; these are for code that must not import it.
public enum LinuxErrno {
    public static let EPERM: UInt32 = 1
    public static let ENOENT: UInt32 = 2
    public static let EIO: UInt32 = 5
    public static let EBADF: UInt32 = 9
    public static let EAGAIN: UInt32 = 11
    public static let ENOMEM: UInt32 = 12
    public static let EACCES: UInt32 = 13
    public static let EBUSY: UInt32 = 16
    public static let EEXIST: UInt32 = 17
    public static let ENOTDIR: UInt32 = 20
    public static let EISDIR: UInt32 = 21
    public static let EINVAL: UInt32 = 22
    public static let ENFILE: UInt32 = 23
    public static let ENOSPC: UInt32 = 28
    public static let EROFS: UInt32 = 30
    public static let E2BIG: UInt32 = 7
    public static let ERANGE: UInt32 = 34
    public static let ENAMETOOLONG: UInt32 = 36
    public static let ENOLCK: UInt32 = 37
    public static let ENOSYS: UInt32 = 38
    public static let ENODATA: UInt32 = 61
    public static let EPROTO: UInt32 = 71
    public static let EMSGSIZE: UInt32 = 90
    public static let EUSERS: UInt32 = 87
    public static let EDQUOT: UInt32 = 122
    public static let EMLINK: UInt32 = 31
    public static let EOPNOTSUPP: UInt32 = 95
    public static let ESTALE: UInt32 = 116
}
