// Constants and headers of the FUSE protocol (include/uapi/linux/fuse.h), major 7. pvfs speaks
// minors 31 (Linux 5.4) to 38 (Linux 6.1's virtiofs client); newer kernels (the host's sends
// 7.45) fall back to the minor the server answers.

public enum FuseProtocol {
    public static let major: UInt32 = 7
    /// The newest minor whose structures this codec knows.
    public static let minor: UInt32 = 38
    /// The oldest minor served: every structure below has its full size from here on.
    public static let minimumMinor: UInt32 = 31
    public static let rootNode: UInt64 = 1
    public static let inHeaderSize = 40
    public static let outHeaderSize = 16
    /// The kernel refuses reads from /dev/fuse into smaller buffers.
    public static let minimumReadBuffer = 8192
}

public enum FuseOpcode: UInt32, Sendable, CaseIterable {
    case lookup = 1, forget = 2, getattr = 3, setattr = 4, readlink = 5, symlink = 6
    case mknod = 8, mkdir = 9, unlink = 10, rmdir = 11, rename = 12, link = 13, open = 14
    case read = 15, write = 16, statfs = 17, release = 18
    case fsync = 20, setxattr = 21, getxattr = 22, listxattr = 23, removexattr = 24, flush = 25
    case initialise = 26, opendir = 27, readdir = 28, releasedir = 29, fsyncdir = 30
    case getlk = 31, setlk = 32, setlkw = 33, access = 34, create = 35, interrupt = 36
    case bmap = 37, destroy = 38, ioctl = 39, poll = 40, notifyReply = 41, batchForget = 42
    case fallocate = 43, readdirplus = 44, rename2 = 45, lseek = 46, copyFileRange = 47
    case setupMapping = 48, removeMapping = 49, syncfs = 50, tmpfile = 51
}

/// INIT flags (fuse_init_in.flags, with flags2 as the upper 32 bits).
public struct FuseInitFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let asyncRead = FuseInitFlags(rawValue: 1 << 0)
    public static let posixLocks = FuseInitFlags(rawValue: 1 << 1)
    public static let fileOps = FuseInitFlags(rawValue: 1 << 2)
    public static let atomicOTrunc = FuseInitFlags(rawValue: 1 << 3)
    public static let exportSupport = FuseInitFlags(rawValue: 1 << 4)
    public static let bigWrites = FuseInitFlags(rawValue: 1 << 5)
    public static let dontMask = FuseInitFlags(rawValue: 1 << 6)
    public static let spliceWrite = FuseInitFlags(rawValue: 1 << 7)
    public static let spliceMove = FuseInitFlags(rawValue: 1 << 8)
    public static let spliceRead = FuseInitFlags(rawValue: 1 << 9)
    public static let flockLocks = FuseInitFlags(rawValue: 1 << 10)
    public static let hasIoctlDir = FuseInitFlags(rawValue: 1 << 11)
    public static let autoInvalData = FuseInitFlags(rawValue: 1 << 12)
    public static let doReaddirplus = FuseInitFlags(rawValue: 1 << 13)
    public static let readdirplusAuto = FuseInitFlags(rawValue: 1 << 14)
    public static let asyncDIO = FuseInitFlags(rawValue: 1 << 15)
    public static let writebackCache = FuseInitFlags(rawValue: 1 << 16)
    public static let noOpenSupport = FuseInitFlags(rawValue: 1 << 17)
    public static let parallelDirops = FuseInitFlags(rawValue: 1 << 18)
    public static let handleKillpriv = FuseInitFlags(rawValue: 1 << 19)
    public static let posixACL = FuseInitFlags(rawValue: 1 << 20)
    public static let abortError = FuseInitFlags(rawValue: 1 << 21)
    public static let maxPages = FuseInitFlags(rawValue: 1 << 22)
    public static let cacheSymlinks = FuseInitFlags(rawValue: 1 << 23)
    public static let noOpendirSupport = FuseInitFlags(rawValue: 1 << 24)
    public static let explicitInvalData = FuseInitFlags(rawValue: 1 << 25)
    public static let mapAlignment = FuseInitFlags(rawValue: 1 << 26)
    public static let submounts = FuseInitFlags(rawValue: 1 << 27)
    public static let handleKillprivV2 = FuseInitFlags(rawValue: 1 << 28)
    public static let setxattrExt = FuseInitFlags(rawValue: 1 << 29)
    public static let initExt = FuseInitFlags(rawValue: 1 << 30)
    public static let securityContext = FuseInitFlags(rawValue: 1 << 32)
    public static let hasInodeDAX = FuseInitFlags(rawValue: 1 << 33)
    public static let hasExpireOnly = FuseInitFlags(rawValue: 1 << 35)
}

/// fuse_setattr_in.valid.
public enum FuseSetattrValid {
    public static let mode: UInt32 = 1 << 0
    public static let uid: UInt32 = 1 << 1
    public static let gid: UInt32 = 1 << 2
    public static let size: UInt32 = 1 << 3
    public static let atime: UInt32 = 1 << 4
    public static let mtime: UInt32 = 1 << 5
    public static let handle: UInt32 = 1 << 6
    public static let atimeNow: UInt32 = 1 << 7
    public static let mtimeNow: UInt32 = 1 << 8
    public static let lockOwner: UInt32 = 1 << 9
    public static let ctime: UInt32 = 1 << 10
    public static let killSUIDGID: UInt32 = 1 << 11
}

/// fuse_open_out.open_flags.
public enum FuseOpenReplyFlags {
    public static let directIO: UInt32 = 1 << 0
    public static let keepCache: UInt32 = 1 << 1
    public static let nonseekable: UInt32 = 1 << 2
    public static let cacheDirectory: UInt32 = 1 << 3
    public static let stream: UInt32 = 1 << 4
    public static let noFlush: UInt32 = 1 << 5
}

public enum FuseMiscFlags {
    /// fuse_release_in.release_flags
    public static let releaseFlush: UInt32 = 1 << 0
    public static let releaseFlockUnlock: UInt32 = 1 << 1
    /// fuse_getattr_in.getattr_flags
    public static let getattrHandle: UInt32 = 1 << 0
    /// fuse_lk_in.lk_flags
    public static let lockFlock: UInt32 = 1 << 0
    /// fuse_write_in.write_flags
    public static let writeCache: UInt32 = 1 << 0
    public static let writeLockOwner: UInt32 = 1 << 1
    public static let writeKillSUIDGID: UInt32 = 1 << 2
    /// fuse_fsync_in.fsync_flags
    public static let fsyncDataOnly: UInt32 = 1 << 0
    /// fuse_setxattr_in.setxattr_flags
    public static let setxattrACLKillSGID: UInt32 = 1 << 0
    /// fuse_open_in.open_flags
    public static let openKillSUIDGID: UInt32 = 1 << 0
}

/// fuse_in_header: 40 bytes in front of every request.
public struct FuseInHeader: Sendable, Hashable {
    public var length: UInt32
    public var opcode: UInt32
    public var unique: UInt64
    public var nodeID: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var pid: UInt32
    /// Length of extensions after the arguments, in 8-byte units (minor 38).
    public var extensionLength: UInt16

    public init(length: UInt32 = 0, opcode: UInt32, unique: UInt64, nodeID: UInt64, uid: UInt32 = 0, gid: UInt32 = 0,
                pid: UInt32 = 0, extensionLength: UInt16 = 0) {
        self.length = length
        self.opcode = opcode
        self.unique = unique
        self.nodeID = nodeID
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.extensionLength = extensionLength
    }

    /// The header at the start of `bytes` (which may hold less than the whole request).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(FuseDecodeError) -> FuseInHeader {
        var r = FuseReader(bytes)
        let length = try r.u32("in.len")
        let opcode = try r.u32("in.opcode")
        let unique = try r.u64("in.unique")
        let nodeID = try r.u64("in.nodeid")
        let uid = try r.u32("in.uid")
        let gid = try r.u32("in.gid")
        let pid = try r.u32("in.pid")
        let extensionLength = try r.u16("in.total_extlen")
        _ = try r.u16("in.padding")
        return FuseInHeader(length: length, opcode: opcode, unique: unique, nodeID: nodeID, uid: uid, gid: gid, pid: pid,
                            extensionLength: extensionLength)
    }

    public func encode(into w: inout FuseWriter) {
        w.u32(length)
        w.u32(opcode)
        w.u64(unique)
        w.u64(nodeID)
        w.u32(uid)
        w.u32(gid)
        w.u32(pid)
        w.u16(extensionLength)
        w.u16(0)
    }
}

/// fuse_out_header: 16 bytes in front of every reply. `error` is 0 or a negated errno.
public struct FuseOutHeader: Sendable, Hashable {
    public var length: UInt32
    public var error: Int32
    public var unique: UInt64

    public init(length: UInt32, error: Int32, unique: UInt64) {
        self.length = length
        self.error = error
        self.unique = unique
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(FuseDecodeError) -> FuseOutHeader {
        var r = FuseReader(bytes)
        return FuseOutHeader(length: try r.u32("out.len"), error: try r.i32("out.error"), unique: try r.u64("out.unique"))
    }

    public func encode(into w: inout FuseWriter) {
        w.u32(length)
        w.i32(error)
        w.u64(unique)
    }

    /// Writes a header into the first 16 bytes of `buffer` (which holds at least that many).
    public func store(into buffer: UnsafeMutableRawBufferPointer) {
        guard buffer.count >= FuseProtocol.outHeaderSize else { return }
        var w = FuseWriter(capacity: FuseProtocol.outHeaderSize)
        encode(into: &w)
        for i in 0..<FuseProtocol.outHeaderSize { buffer[i] = w.bytes[i] }
    }
}
