// The fixed structures of requests and replies, each with its decoder and encoder. Field
// names follow fuse.h; padding fields are written as zeros and ignored when read.

/// fuse_attr (88 bytes).
public struct FuseAttr: Sendable, Hashable {
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

    public func encode(into w: inout FuseWriter) {
        w.u64(ino); w.u64(size); w.u64(blocks); w.u64(atime); w.u64(mtime); w.u64(ctime)
        w.u32(atimensec); w.u32(mtimensec); w.u32(ctimensec); w.u32(mode); w.u32(nlink)
        w.u32(uid); w.u32(gid); w.u32(rdev); w.u32(blksize); w.u32(flags)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseAttr {
        var a = FuseAttr()
        a.ino = try r.u64("attr.ino"); a.size = try r.u64("attr.size"); a.blocks = try r.u64("attr.blocks")
        a.atime = try r.u64("attr.atime"); a.mtime = try r.u64("attr.mtime"); a.ctime = try r.u64("attr.ctime")
        a.atimensec = try r.u32(); a.mtimensec = try r.u32(); a.ctimensec = try r.u32()
        a.mode = try r.u32(); a.nlink = try r.u32(); a.uid = try r.u32(); a.gid = try r.u32()
        a.rdev = try r.u32(); a.blksize = try r.u32(); a.flags = try r.u32("attr.flags")
        return a
    }
}

/// fuse_entry_out (128 bytes). A nodeid of 0 is a negative entry: the name is absent and the
/// kernel may remember that for `entryValid`.
public struct FuseEntryOut: Sendable, Hashable {
    public var nodeID: UInt64 = 0
    public var generation: UInt64 = 0
    public var entryValid: UInt64 = 0
    public var attrValid: UInt64 = 0
    public var entryValidNsec: UInt32 = 0
    public var attrValidNsec: UInt32 = 0
    public var attr = FuseAttr()

    public init() {}

    public static let size = 40 + FuseAttr.size

    public func encode(into w: inout FuseWriter) {
        w.u64(nodeID); w.u64(generation); w.u64(entryValid); w.u64(attrValid)
        w.u32(entryValidNsec); w.u32(attrValidNsec)
        attr.encode(into: &w)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseEntryOut {
        var e = FuseEntryOut()
        e.nodeID = try r.u64("entry.nodeid"); e.generation = try r.u64(); e.entryValid = try r.u64(); e.attrValid = try r.u64()
        e.entryValidNsec = try r.u32(); e.attrValidNsec = try r.u32()
        e.attr = try FuseAttr.decode(&r)
        return e
    }
}

/// fuse_attr_out (104 bytes).
public struct FuseAttrOut: Sendable, Hashable {
    public var attrValid: UInt64 = 0
    public var attrValidNsec: UInt32 = 0
    public var attr = FuseAttr()

    public init() {}

    public static let size = 16 + FuseAttr.size

    public func encode(into w: inout FuseWriter) {
        w.u64(attrValid); w.u32(attrValidNsec); w.u32(0)
        attr.encode(into: &w)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseAttrOut {
        var a = FuseAttrOut()
        a.attrValid = try r.u64("attr_out.attr_valid"); a.attrValidNsec = try r.u32(); _ = try r.u32()
        a.attr = try FuseAttr.decode(&r)
        return a
    }
}

/// fuse_open_out (16 bytes).
public struct FuseOpenOut: Sendable, Hashable {
    public var handle: UInt64
    public var openFlags: UInt32

    public init(handle: UInt64, openFlags: UInt32) {
        self.handle = handle
        self.openFlags = openFlags
    }

    public static let size = 16

    public func encode(into w: inout FuseWriter) {
        w.u64(handle); w.u32(openFlags); w.u32(0)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseOpenOut {
        let handle = try r.u64("open_out.fh")
        let flags = try r.u32()
        _ = try r.u32()
        return FuseOpenOut(handle: handle, openFlags: flags)
    }
}

/// fuse_kstatfs (80 bytes).
public struct FuseStatfsOut: Sendable, Hashable {
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

    public func encode(into w: inout FuseWriter) {
        w.u64(blocks); w.u64(bfree); w.u64(bavail); w.u64(files); w.u64(ffree)
        w.u32(bsize); w.u32(namelen); w.u32(frsize); w.u32(0)
        w.zeros(24)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseStatfsOut {
        var s = FuseStatfsOut()
        s.blocks = try r.u64("statfs.blocks"); s.bfree = try r.u64(); s.bavail = try r.u64(); s.files = try r.u64(); s.ffree = try r.u64()
        s.bsize = try r.u32(); s.namelen = try r.u32(); s.frsize = try r.u32(); _ = try r.u32()
        try r.skip(24, "statfs.spare")
        return s
    }
}

/// fuse_file_lock (24 bytes). `end` is inclusive; the kernel's "to the end of the file" is
/// Int64.max (OFFSET_MAX). `type` is F_RDLCK 0, F_WRLCK 1, F_UNLCK 2.
public struct FuseFileLock: Sendable, Hashable {
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

    public func encode(into w: inout FuseWriter) {
        w.u64(start); w.u64(end); w.u32(type); w.u32(pid)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseFileLock {
        FuseFileLock(start: try r.u64("lock.start"), end: try r.u64("lock.end"), type: try r.u32("lock.type"), pid: try r.u32("lock.pid"))
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
public struct FuseInitOut: Sendable, Hashable {
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

    public func encode(into w: inout FuseWriter) {
        w.u32(major); w.u32(minor); w.u32(maxReadahead)
        w.u32(UInt32(truncatingIfNeeded: flags.rawValue))
        w.u16(maxBackground); w.u16(congestionThreshold); w.u32(maxWrite); w.u32(timeGranularity)
        w.u16(maxPages); w.u16(mapAlignment)
        w.u32(UInt32(truncatingIfNeeded: flags.rawValue >> 32))
        w.zeros(28)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseInitOut {
        var o = FuseInitOut()
        o.major = try r.u32("init_out.major"); o.minor = try r.u32(); o.maxReadahead = try r.u32()
        let low = try r.u32()
        o.maxBackground = try r.u16(); o.congestionThreshold = try r.u16(); o.maxWrite = try r.u32(); o.timeGranularity = try r.u32()
        o.maxPages = try r.u16(); o.mapAlignment = try r.u16()
        let high = try r.u32()
        try r.skip(28, "init_out.unused")
        o.flags = FuseInitFlags(rawValue: UInt64(low) | UInt64(high) << 32)
        return o
    }
}

/// fuse_setattr_in (88 bytes).
public struct FuseSetattrIn: Sendable, Hashable {
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

    public func encode(into w: inout FuseWriter) {
        w.u32(valid); w.u32(0); w.u64(handle); w.u64(size); w.u64(lockOwner)
        w.u64(atime); w.u64(mtime); w.u64(ctime); w.u32(atimensec); w.u32(mtimensec); w.u32(ctimensec)
        w.u32(mode); w.u32(0); w.u32(uid); w.u32(gid); w.u32(0)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseSetattrIn {
        var s = FuseSetattrIn()
        s.valid = try r.u32("setattr.valid"); _ = try r.u32()
        s.handle = try r.u64(); s.size = try r.u64(); s.lockOwner = try r.u64()
        s.atime = try r.u64(); s.mtime = try r.u64(); s.ctime = try r.u64()
        s.atimensec = try r.u32(); s.mtimensec = try r.u32(); s.ctimensec = try r.u32()
        s.mode = try r.u32(); _ = try r.u32(); s.uid = try r.u32(); s.gid = try r.u32(); _ = try r.u32("setattr.unused5")
        return s
    }
}

/// fuse_read_in (40 bytes), also the argument of READDIR and READDIRPLUS.
public struct FuseReadIn: Sendable, Hashable {
    public var handle: UInt64
    public var offset: UInt64
    public var size: UInt32
    public var readFlags: UInt32
    public var lockOwner: UInt64
    public var flags: UInt32

    public init(handle: UInt64, offset: UInt64, size: UInt32, readFlags: UInt32 = 0, lockOwner: UInt64 = 0, flags: UInt32 = 0) {
        self.handle = handle
        self.offset = offset
        self.size = size
        self.readFlags = readFlags
        self.lockOwner = lockOwner
        self.flags = flags
    }

    public static let size = 40

    public func encode(into w: inout FuseWriter) {
        w.u64(handle); w.u64(offset); w.u32(size); w.u32(readFlags); w.u64(lockOwner); w.u32(flags); w.u32(0)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseReadIn {
        let handle = try r.u64("read.fh")
        let offset = try r.u64("read.offset")
        let size = try r.u32("read.size")
        let readFlags = try r.u32()
        let lockOwner = try r.u64()
        let flags = try r.u32()
        _ = try r.u32("read.padding")
        return FuseReadIn(handle: handle, offset: offset, size: size, readFlags: readFlags, lockOwner: lockOwner, flags: flags)
    }
}

/// fuse_write_in (40 bytes); the data follows it.
public struct FuseWriteIn: Sendable, Hashable {
    public var handle: UInt64
    public var offset: UInt64
    public var size: UInt32
    public var writeFlags: UInt32
    public var lockOwner: UInt64
    public var flags: UInt32

    public init(handle: UInt64, offset: UInt64, size: UInt32, writeFlags: UInt32 = 0, lockOwner: UInt64 = 0, flags: UInt32 = 0) {
        self.handle = handle
        self.offset = offset
        self.size = size
        self.writeFlags = writeFlags
        self.lockOwner = lockOwner
        self.flags = flags
    }

    public static let size = 40

    public func encode(into w: inout FuseWriter) {
        w.u64(handle); w.u64(offset); w.u32(size); w.u32(writeFlags); w.u64(lockOwner); w.u32(flags); w.u32(0)
    }

    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> FuseWriteIn {
        let handle = try r.u64("write.fh")
        let offset = try r.u64("write.offset")
        let size = try r.u32("write.size")
        let writeFlags = try r.u32()
        let lockOwner = try r.u64()
        let flags = try r.u32()
        _ = try r.u32("write.padding")
        return FuseWriteIn(handle: handle, offset: offset, size: size, writeFlags: writeFlags, lockOwner: lockOwner, flags: flags)
    }
}

/// fuse_release_in (24 bytes), for RELEASE and RELEASEDIR.
public struct FuseReleaseIn: Sendable, Hashable {
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
}

/// fuse_lk_in (48 bytes), for GETLK, SETLK and SETLKW.
public struct FuseLockIn: Sendable, Hashable {
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
}

/// fuse_create_in (16 bytes); the name follows it.
public struct FuseCreateIn: Sendable, Hashable {
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
}

/// fuse_fallocate_in (32 bytes).
public struct FuseFallocateIn: Sendable, Hashable {
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
}

/// fuse_copy_file_range_in (56 bytes); the source node is the header's.
public struct FuseCopyFileRangeIn: Sendable, Hashable {
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
}

/// fuse_forget_one (16 bytes).
public struct FuseForgetOne: Sendable, Hashable {
    public var nodeID: UInt64
    public var count: UInt64

    public init(nodeID: UInt64, count: UInt64) {
        self.nodeID = nodeID
        self.count = count
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
