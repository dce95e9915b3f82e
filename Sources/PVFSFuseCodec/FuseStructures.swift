// The fixed structures of requests and replies, each with its decoder and encoder. Field
// names follow fuse.h; padding fields are written as zeros and ignored when read.

/// fuse_attr (88 bytes).
public struct FuseAttr: Sendable, Hashable, FuseFixedLayout {
    public var ino: UInt64 = 0
    public var size: UInt64 = 0
    public var blocks: UInt64 = 0
    public var atime: UInt64 = 0
    public var mtime: UInt64 = 0
    public var ctime: UInt64 = 0
    public var atimensec: UInt32 = 0
    public var mtimensec: UInt32 = 0
    public var ctimensec: UInt32 = 0
    public var mode: UInt32 = 0
    public var nlink: UInt32 = 0
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public var rdev: UInt32 = 0
    public var blksize: UInt32 = 0
    public var flags: UInt32 = 0

    public init() {}

    public static let size = 88

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&ino, "attr.ino"); try c.field(&size, "attr.size"); try c.field(&blocks, "attr.blocks")
        try c.field(&atime, "attr.atime"); try c.field(&mtime, "attr.mtime"); try c.field(&ctime, "attr.ctime")
        try c.field(&atimensec, "attr.atimensec"); try c.field(&mtimensec, "attr.mtimensec"); try c.field(&ctimensec, "attr.ctimensec")
        try c.field(&mode, "attr.mode"); try c.field(&nlink, "attr.nlink"); try c.field(&uid, "attr.uid"); try c.field(&gid, "attr.gid")
        try c.field(&rdev, "attr.rdev"); try c.field(&blksize, "attr.blksize"); try c.field(&flags, "attr.flags")
    }
}

/// fuse_entry_out (128 bytes). A nodeid of 0 is a negative entry: the name is absent and the
/// kernel may remember that for `entryValid`.
public struct FuseEntryOut: Sendable, Hashable, FuseFixedLayout {
    public var nodeID: UInt64 = 0
    public var generation: UInt64 = 0
    public var entryValid: UInt64 = 0
    public var attrValid: UInt64 = 0
    public var entryValidNsec: UInt32 = 0
    public var attrValidNsec: UInt32 = 0
    public var attr = FuseAttr()

    public init() {}

    public static let size = 40 + FuseAttr.size

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&nodeID, "entry.nodeid"); try c.field(&generation, "entry.generation")
        try c.field(&entryValid, "entry.entry_valid"); try c.field(&attrValid, "entry.attr_valid")
        try c.field(&entryValidNsec, "entry.entry_valid_nsec"); try c.field(&attrValidNsec, "entry.attr_valid_nsec")
        try attr.fields(&c)
    }
}

/// fuse_attr_out (104 bytes).
public struct FuseAttrOut: Sendable, Hashable, FuseFixedLayout {
    public var attrValid: UInt64 = 0
    public var attrValidNsec: UInt32 = 0
    public var attr = FuseAttr()

    public init() {}

    public static let size = 16 + FuseAttr.size

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&attrValid, "attr_out.attr_valid"); try c.field(&attrValidNsec, "attr_out.attr_valid_nsec")
        try c.padding(4, "attr_out.dummy")
        try attr.fields(&c)
    }
}

/// fuse_open_out (16 bytes).
public struct FuseOpenOut: Sendable, Hashable, FuseFixedLayout {
    public var handle: UInt64
    public var openFlags: UInt32

    public init(handle: UInt64, openFlags: UInt32) {
        self.handle = handle
        self.openFlags = openFlags
    }

    public static let size = 16

    public init() { self.init(handle: 0, openFlags: 0) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&handle, "open_out.fh"); try c.field(&openFlags, "open_out.open_flags"); try c.padding(4, "open_out.padding")
    }
}

/// fuse_kstatfs (80 bytes).
public struct FuseStatfsOut: Sendable, Hashable, FuseFixedLayout {
    public var blocks: UInt64 = 0
    public var bfree: UInt64 = 0
    public var bavail: UInt64 = 0
    public var files: UInt64 = 0
    public var ffree: UInt64 = 0
    public var bsize: UInt32 = 0
    public var namelen: UInt32 = 0
    public var frsize: UInt32 = 0

    public init() {}

    public static let size = 80

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&blocks, "statfs.blocks"); try c.field(&bfree, "statfs.bfree"); try c.field(&bavail, "statfs.bavail")
        try c.field(&files, "statfs.files"); try c.field(&ffree, "statfs.ffree")
        try c.field(&bsize, "statfs.bsize"); try c.field(&namelen, "statfs.namelen"); try c.field(&frsize, "statfs.frsize")
        try c.padding(4 + 24, "statfs.spare")
    }
}

/// fuse_file_lock (24 bytes). `end` is inclusive; the kernel's "to the end of the file" is
/// Int64.max (OFFSET_MAX). `type` is F_RDLCK 0, F_WRLCK 1, F_UNLCK 2.
public struct FuseFileLock: Sendable, Hashable, FuseFixedLayout {
    public var start: UInt64
    public var end: UInt64
    public var type: UInt32
    public var pid: UInt32

    public init(start: UInt64, end: UInt64, type: UInt32, pid: UInt32) {
        self.start = start
        self.end = end
        self.type = type
        self.pid = pid
    }

    public static let readLock: UInt32 = 0
    public static let writeLock: UInt32 = 1
    public static let unlock: UInt32 = 2
    public static let offsetMax = UInt64(Int64.max)

    public static let size = 24

    public init() { self.init(start: 0, end: 0, type: 0, pid: 0) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&start, "lock.start"); try c.field(&end, "lock.end"); try c.field(&type, "lock.type"); try c.field(&pid, "lock.pid")
    }
}

/// fuse_init_in: 16 bytes before minor 36, 64 bytes (with flags2) since.
public struct FuseInitIn: Sendable, Hashable {
    public var major: UInt32
    public var minor: UInt32
    public var maxReadahead: UInt32
    /// flags | flags2 << 32 (flags2 only counts with FUSE_INIT_EXT).
    public var flags: FuseInitFlags

    public init(major: UInt32, minor: UInt32, maxReadahead: UInt32, flags: FuseInitFlags) {
        self.major = major
        self.minor = minor
        self.maxReadahead = maxReadahead
        self.flags = flags
    }
}

/// fuse_init_out (64 bytes).
public struct FuseInitOut: Sendable, Hashable, FuseFixedLayout {
    public var major: UInt32 = FuseProtocol.major
    public var minor: UInt32 = FuseProtocol.minor
    public var maxReadahead: UInt32 = 0
    public var flags: FuseInitFlags = []
    public var maxBackground: UInt16 = 0
    public var congestionThreshold: UInt16 = 0
    public var maxWrite: UInt32 = 0
    public var timeGranularity: UInt32 = 0
    public var maxPages: UInt16 = 0
    public var mapAlignment: UInt16 = 0

    public init() {}

    public static let size = 64

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        var low = UInt32(truncatingIfNeeded: flags.rawValue)
        var high = UInt32(truncatingIfNeeded: flags.rawValue >> 32)
        try c.field(&major, "init_out.major"); try c.field(&minor, "init_out.minor"); try c.field(&maxReadahead, "init_out.max_readahead")
        try c.field(&low, "init_out.flags")
        try c.field(&maxBackground, "init_out.max_background"); try c.field(&congestionThreshold, "init_out.congestion_threshold")
        try c.field(&maxWrite, "init_out.max_write"); try c.field(&timeGranularity, "init_out.time_gran")
        try c.field(&maxPages, "init_out.max_pages"); try c.field(&mapAlignment, "init_out.map_alignment")
        try c.field(&high, "init_out.flags2")
        try c.padding(28, "init_out.unused")
        flags = FuseInitFlags(rawValue: UInt64(low) | UInt64(high) << 32)
    }
}

/// fuse_setattr_in (88 bytes).
public struct FuseSetattrIn: Sendable, Hashable, FuseFixedLayout {
    public var valid: UInt32 = 0
    public var handle: UInt64 = 0
    public var size: UInt64 = 0
    public var lockOwner: UInt64 = 0
    public var atime: UInt64 = 0
    public var mtime: UInt64 = 0
    public var ctime: UInt64 = 0
    public var atimensec: UInt32 = 0
    public var mtimensec: UInt32 = 0
    public var ctimensec: UInt32 = 0
    public var mode: UInt32 = 0
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0

    public init() {}

    public static let size = 88

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&valid, "setattr.valid"); try c.padding(4, "setattr.padding")
        try c.field(&handle, "setattr.fh"); try c.field(&size, "setattr.size"); try c.field(&lockOwner, "setattr.lock_owner")
        try c.field(&atime, "setattr.atime"); try c.field(&mtime, "setattr.mtime"); try c.field(&ctime, "setattr.ctime")
        try c.field(&atimensec, "setattr.atimensec"); try c.field(&mtimensec, "setattr.mtimensec"); try c.field(&ctimensec, "setattr.ctimensec")
        try c.field(&mode, "setattr.mode"); try c.padding(4, "setattr.unused4")
        try c.field(&uid, "setattr.uid"); try c.field(&gid, "setattr.gid"); try c.padding(4, "setattr.unused5")
    }
}

/// fuse_read_in and fuse_write_in (40 bytes each, one layout): READ, READDIR and READDIRPLUS take
/// the first, WRITE the second with its data after it. `ioFlags` is read_flags or write_flags.
public struct FuseIOIn: Sendable, Hashable, FuseFixedLayout {
    public var handle: UInt64
    public var offset: UInt64
    public var size: UInt32
    public var ioFlags: UInt32
    public var lockOwner: UInt64
    public var flags: UInt32

    public init(handle: UInt64, offset: UInt64, size: UInt32, ioFlags: UInt32 = 0, lockOwner: UInt64 = 0, flags: UInt32 = 0) {
        self.handle = handle
        self.offset = offset
        self.size = size
        self.ioFlags = ioFlags
        self.lockOwner = lockOwner
        self.flags = flags
    }

    public static let size = 40

    public init() { self.init(handle: 0, offset: 0, size: 0) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&handle, "io.fh"); try c.field(&offset, "io.offset"); try c.field(&size, "io.size")
        try c.field(&ioFlags, "io.flags"); try c.field(&lockOwner, "io.lock_owner"); try c.field(&flags, "io.open_flags")
        try c.padding(4, "io.padding")
    }
}

public typealias FuseReadIn = FuseIOIn
public typealias FuseWriteIn = FuseIOIn

/// fuse_release_in (24 bytes), for RELEASE and RELEASEDIR.
public struct FuseReleaseIn: Sendable, Hashable, FuseFixedLayout {
    public var handle: UInt64
    public var flags: UInt32
    public var releaseFlags: UInt32
    public var lockOwner: UInt64

    public init(handle: UInt64, flags: UInt32 = 0, releaseFlags: UInt32 = 0, lockOwner: UInt64 = 0) {
        self.handle = handle
        self.flags = flags
        self.releaseFlags = releaseFlags
        self.lockOwner = lockOwner
    }

    public init() { self.init(handle: 0) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&handle, "release.fh"); try c.field(&flags, "release.flags")
        try c.field(&releaseFlags, "release.release_flags"); try c.field(&lockOwner, "release.lock_owner")
    }
}

/// fuse_lk_in (48 bytes), for GETLK, SETLK and SETLKW.
public struct FuseLockIn: Sendable, Hashable, FuseFixedLayout {
    public var handle: UInt64
    public var owner: UInt64
    public var lock: FuseFileLock
    public var lockFlags: UInt32

    public init(handle: UInt64, owner: UInt64, lock: FuseFileLock, lockFlags: UInt32 = 0) {
        self.handle = handle
        self.owner = owner
        self.lock = lock
        self.lockFlags = lockFlags
    }

    public init() { self.init(handle: 0, owner: 0, lock: FuseFileLock()) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&handle, "lk.fh"); try c.field(&owner, "lk.owner"); try lock.fields(&c)
        try c.field(&lockFlags, "lk.lk_flags"); try c.padding(4, "lk.padding")
    }
}

/// fuse_create_in (16 bytes); the name follows it.
public struct FuseCreateIn: Sendable, Hashable, FuseFixedLayout {
    public var flags: UInt32
    public var mode: UInt32
    public var umask: UInt32
    public var openFlags: UInt32

    public init(flags: UInt32, mode: UInt32, umask: UInt32 = 0, openFlags: UInt32 = 0) {
        self.flags = flags
        self.mode = mode
        self.umask = umask
        self.openFlags = openFlags
    }

    public init() { self.init(flags: 0, mode: 0) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&flags, "create.flags"); try c.field(&mode, "create.mode")
        try c.field(&umask, "create.umask"); try c.field(&openFlags, "create.open_flags")
    }
}

/// fuse_fallocate_in (32 bytes).
public struct FuseFallocateIn: Sendable, Hashable, FuseFixedLayout {
    public var handle: UInt64
    public var offset: UInt64
    public var length: UInt64
    public var mode: UInt32

    public init(handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) {
        self.handle = handle
        self.offset = offset
        self.length = length
        self.mode = mode
    }

    public init() { self.init(handle: 0, offset: 0, length: 0, mode: 0) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&handle, "fallocate.fh"); try c.field(&offset, "fallocate.offset"); try c.field(&length, "fallocate.length")
        try c.field(&mode, "fallocate.mode"); try c.padding(4, "fallocate.padding")
    }
}

/// fuse_copy_file_range_in (56 bytes); the source node is the header's.
public struct FuseCopyFileRangeIn: Sendable, Hashable, FuseFixedLayout {
    public var handleIn: UInt64
    public var offsetIn: UInt64
    public var nodeOut: UInt64
    public var handleOut: UInt64
    public var offsetOut: UInt64
    public var length: UInt64
    public var flags: UInt64

    public init(handleIn: UInt64, offsetIn: UInt64, nodeOut: UInt64, handleOut: UInt64, offsetOut: UInt64,
                length: UInt64, flags: UInt64 = 0) {
        self.handleIn = handleIn
        self.offsetIn = offsetIn
        self.nodeOut = nodeOut
        self.handleOut = handleOut
        self.offsetOut = offsetOut
        self.length = length
        self.flags = flags
    }

    public init() { self.init(handleIn: 0, offsetIn: 0, nodeOut: 0, handleOut: 0, offsetOut: 0, length: 0) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&handleIn, "copy_file_range.fh_in"); try c.field(&offsetIn, "copy_file_range.off_in")
        try c.field(&nodeOut, "copy_file_range.nodeid_out"); try c.field(&handleOut, "copy_file_range.fh_out")
        try c.field(&offsetOut, "copy_file_range.off_out"); try c.field(&length, "copy_file_range.len")
        try c.field(&flags, "copy_file_range.flags")
    }
}

/// fuse_forget_one (16 bytes).
public struct FuseForgetOne: Sendable, Hashable, FuseFixedLayout {
    public var nodeID: UInt64
    public var count: UInt64

    public init(nodeID: UInt64, count: UInt64) {
        self.nodeID = nodeID
        self.count = count
    }

    public init() { self.init(nodeID: 0, count: 0) }

    @inlinable
    public mutating func fields<Coder: FuseFieldCoder>(_ c: inout Coder) throws(FuseDecodeError) {
        try c.field(&nodeID, "forget_one.nodeid"); try c.field(&count, "forget_one.nlookup")
    }
}

/// fuse_dirent: ino, off (the cookie to resume after it), namelen, type (DT_*), name padded to 8.
public struct FuseDirent: Sendable, Hashable {
    public var ino: UInt64
    public var offset: UInt64
    public var type: UInt32
    public var name: [UInt8]

    public init(ino: UInt64, offset: UInt64, type: UInt32, name: [UInt8]) {
        self.ino = ino
        self.offset = offset
        self.type = type
        self.name = name
    }

    /// Bytes one record takes: 24 plus the name, padded to 8.
    public static func recordSize(nameLength: Int) -> Int { (24 + nameLength + 7) & ~7 }
    public static func plusRecordSize(nameLength: Int) -> Int { FuseEntryOut.size + recordSize(nameLength: nameLength) }

    public func encode(into w: inout FuseWriter) {
        w.u64(ino); w.u64(offset); w.u32(UInt32(truncatingIfNeeded: name.count)); w.u32(type)
        w.data(name)
        w.align8()
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseDirent {
        let ino = try r.u64("dirent.ino")
        let offset = try r.u64("dirent.off")
        let length = Int(try r.u32("dirent.namelen"))
        let type = try r.u32("dirent.type")
        let name = try r.bytes(length, "dirent.name")
        let pad = FuseDirent.recordSize(nameLength: length) - 24 - length
        try r.skip(min(pad, r.remaining), "dirent.padding")
        return FuseDirent(ino: ino, offset: offset, type: type, name: name)
    }

    /// Every record of a READDIR reply.
    public static func decodeAll(_ bytes: UnsafeRawBufferPointer) throws(FuseDecodeError) -> [FuseDirent] {
        var r = FuseReader(bytes)
        var out: [FuseDirent] = []
        while r.remaining > 0 { out.append(try decode(&r)) }
        return out
    }

    /// Every record of a READDIRPLUS reply.
    public static func decodeAllPlus(_ bytes: UnsafeRawBufferPointer) throws(FuseDecodeError) -> [(FuseEntryOut, FuseDirent)] {
        var r = FuseReader(bytes)
        var out: [(FuseEntryOut, FuseDirent)] = []
        while r.remaining > 0 {
            let entry = try FuseEntryOut.decode(&r)
            out.append((entry, try decode(&r)))
        }
        return out
    }
}
