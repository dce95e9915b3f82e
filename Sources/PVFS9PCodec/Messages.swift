// Every message of 9P2000.L as Linux's v9fs sends and expects it (net/9p/client.c), with its
// encoder and a decoder that checks each length against the message.

/// Tsetattr's body.
public struct NinePSetattr: Hashable, Sendable {
    public var valid: NinePSetattrMask
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    public var accessTimeSeconds: UInt64
    public var accessTimeNanoseconds: UInt64
    public var modificationTimeSeconds: UInt64
    public var modificationTimeNanoseconds: UInt64

    public init(valid: NinePSetattrMask, mode: UInt32 = 0, uid: UInt32 = 0, gid: UInt32 = 0, size: UInt64 = 0,
                accessTimeSeconds: UInt64 = 0, accessTimeNanoseconds: UInt64 = 0,
                modificationTimeSeconds: UInt64 = 0, modificationTimeNanoseconds: UInt64 = 0) {
        self.valid = valid
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.accessTimeSeconds = accessTimeSeconds
        self.accessTimeNanoseconds = accessTimeNanoseconds
        self.modificationTimeSeconds = modificationTimeSeconds
        self.modificationTimeNanoseconds = modificationTimeNanoseconds
    }
}

/// Tlock's body after the fid.
public struct NinePLock: Hashable, Sendable {
    public var type: UInt8
    public var flags: UInt32
    public var start: UInt64
    /// 0: to the end of the file.
    public var length: UInt64
    public var processID: UInt32
    public var clientID: [UInt8]

    public init(type: UInt8, flags: UInt32, start: UInt64, length: UInt64, processID: UInt32, clientID: [UInt8]) {
        self.type = type
        self.flags = flags
        self.start = start
        self.length = length
        self.processID = processID
        self.clientID = clientID
    }
}

/// Tgetlock's body after the fid, and Rgetlock's body.
public struct NinePGetlock: Hashable, Sendable {
    public var type: UInt8
    public var start: UInt64
    public var length: UInt64
    public var processID: UInt32
    public var clientID: [UInt8]

    public init(type: UInt8, start: UInt64, length: UInt64, processID: UInt32, clientID: [UInt8]) {
        self.type = type
        self.start = start
        self.length = length
        self.processID = processID
        self.clientID = clientID
    }
}

/// Rstatfs's body.
public struct NinePStatfs: Hashable, Sendable {
    public var type: UInt32
    public var blockSize: UInt32
    public var blocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var files: UInt64
    public var freeFiles: UInt64
    public var filesystemID: UInt64
    public var nameLength: UInt32

    public init(type: UInt32, blockSize: UInt32, blocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64,
                files: UInt64, freeFiles: UInt64, filesystemID: UInt64, nameLength: UInt32) {
        self.type = type
        self.blockSize = blockSize
        self.blocks = blocks
        self.freeBlocks = freeBlocks
        self.availableBlocks = availableBlocks
        self.files = files
        self.freeFiles = freeFiles
        self.filesystemID = filesystemID
        self.nameLength = nameLength
    }
}

/// Rgetattr's body (struct p9_stat_dotl). Times are seconds and nanoseconds as u64; a time
/// before 1970 travels as the two's complement of its negative seconds.
public struct NinePAttributes: Hashable, Sendable {
    public var valid: NinePAttributeMask
    public var qid: NinePQid
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var linkCount: UInt64
    public var rdev: UInt64
    public var size: UInt64
    public var blockSize: UInt64
    public var blocks: UInt64
    public var accessTimeSeconds: UInt64
    public var accessTimeNanoseconds: UInt64
    public var modificationTimeSeconds: UInt64
    public var modificationTimeNanoseconds: UInt64
    public var changeTimeSeconds: UInt64
    public var changeTimeNanoseconds: UInt64
    public var birthTimeSeconds: UInt64
    public var birthTimeNanoseconds: UInt64
    public var generation: UInt64
    public var dataVersion: UInt64

    public init(valid: NinePAttributeMask, qid: NinePQid, mode: UInt32 = 0, uid: UInt32 = 0, gid: UInt32 = 0,
                linkCount: UInt64 = 0, rdev: UInt64 = 0, size: UInt64 = 0, blockSize: UInt64 = 0, blocks: UInt64 = 0,
                accessTimeSeconds: UInt64 = 0, accessTimeNanoseconds: UInt64 = 0,
                modificationTimeSeconds: UInt64 = 0, modificationTimeNanoseconds: UInt64 = 0,
                changeTimeSeconds: UInt64 = 0, changeTimeNanoseconds: UInt64 = 0,
                birthTimeSeconds: UInt64 = 0, birthTimeNanoseconds: UInt64 = 0,
                generation: UInt64 = 0, dataVersion: UInt64 = 0) {
        self.valid = valid
        self.qid = qid
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.linkCount = linkCount
        self.rdev = rdev
        self.size = size
        self.blockSize = blockSize
        self.blocks = blocks
        self.accessTimeSeconds = accessTimeSeconds
        self.accessTimeNanoseconds = accessTimeNanoseconds
        self.modificationTimeSeconds = modificationTimeSeconds
        self.modificationTimeNanoseconds = modificationTimeNanoseconds
        self.changeTimeSeconds = changeTimeSeconds
        self.changeTimeNanoseconds = changeTimeNanoseconds
        self.birthTimeSeconds = birthTimeSeconds
        self.birthTimeNanoseconds = birthTimeNanoseconds
        self.generation = generation
        self.dataVersion = dataVersion
    }
}

/// One entry of Rreaddir's data: qid[13] offset[8] type[1] name[s].
public struct NinePDirectoryEntry: Hashable, Sendable {
    public var qid: NinePQid
    /// The Treaddir offset that continues after this entry.
    public var offset: UInt64
    /// d_type (DT_REG, DT_DIR, ...).
    public var type: UInt8
    public var name: [UInt8]

    public init(qid: NinePQid, offset: UInt64, type: UInt8, name: [UInt8]) {
        self.qid = qid
        self.offset = offset
        self.type = type
        self.name = name
    }

    /// Bytes this entry takes in Rreaddir's data.
    public var encodedSize: Int { Self.encodedSize(nameLength: name.count) }

    public static func encodedSize(nameLength: Int) -> Int { NinePQid.encodedSize + 8 + 1 + 2 + nameLength }

    public func encode(into writer: inout NinePWriter) {
        writer.qid(qid)
        writer.u64(offset)
        writer.u8(type)
        writer.string(name)
    }

    /// Splits Rreaddir's data into entries; every entry must be whole.
    public static func decodeAll(_ data: ArraySlice<UInt8>) throws(NinePDecodeError) -> [NinePDirectoryEntry] {
        let bytes = Array(data)
        var r = NinePReader(bytes)
        var entries: [NinePDirectoryEntry] = []
        while r.remaining > 0 {
            let qid = try r.qid("dirent.qid")
            let offset = try r.u64("dirent.offset")
            let type = try r.u8("dirent.type")
            let name = try r.string("dirent.name")
            entries.append(NinePDirectoryEntry(qid: qid, offset: offset, type: type, name: name))
        }
        return entries
    }
}

/// A T-message.
public enum NinePRequest: Hashable, Sendable {
    case version(msize: UInt32, version: [UInt8])
    case auth(afid: UInt32, uname: [UInt8], aname: [UInt8], uid: UInt32)
    case attach(fid: UInt32, afid: UInt32, uname: [UInt8], aname: [UInt8], uid: UInt32)
    case flush(oldTag: UInt16)
    case walk(fid: UInt32, newFid: UInt32, names: [[UInt8]])
    case lopen(fid: UInt32, flags: UInt32)
    case lcreate(fid: UInt32, name: [UInt8], flags: UInt32, mode: UInt32, gid: UInt32)
    case read(fid: UInt32, offset: UInt64, count: UInt32)
    case write(fid: UInt32, offset: UInt64, data: ArraySlice<UInt8>)
    case clunk(fid: UInt32)
    case remove(fid: UInt32)
    case statfs(fid: UInt32)
    case symlink(fid: UInt32, name: [UInt8], target: [UInt8], gid: UInt32)
    case mknod(dfid: UInt32, name: [UInt8], mode: UInt32, major: UInt32, minor: UInt32, gid: UInt32)
    case rename(fid: UInt32, dfid: UInt32, name: [UInt8])
    case readlink(fid: UInt32)
    case getattr(fid: UInt32, mask: NinePAttributeMask)
    case setattr(fid: UInt32, NinePSetattr)
    case xattrwalk(fid: UInt32, newFid: UInt32, name: [UInt8])
    case xattrcreate(fid: UInt32, name: [UInt8], size: UInt64, flags: UInt32)
    case readdir(fid: UInt32, offset: UInt64, count: UInt32)
    case fsync(fid: UInt32, datasync: UInt32)
    case lock(fid: UInt32, NinePLock)
    case getlock(fid: UInt32, NinePGetlock)
    case link(dfid: UInt32, fid: UInt32, name: [UInt8])
    case mkdir(dfid: UInt32, name: [UInt8], mode: UInt32, gid: UInt32)
    case renameat(oldDirFid: UInt32, oldName: [UInt8], newDirFid: UInt32, newName: [UInt8])
    case unlinkat(dirFid: UInt32, name: [UInt8], flags: UInt32)

    public var type: NinePMessageType {
        switch self {
        case .version: .tversion
        case .auth: .tauth
        case .attach: .tattach
        case .flush: .tflush
        case .walk: .twalk
        case .lopen: .tlopen
        case .lcreate: .tlcreate
        case .read: .tread
        case .write: .twrite
        case .clunk: .tclunk
        case .remove: .tremove
        case .statfs: .tstatfs
        case .symlink: .tsymlink
        case .mknod: .tmknod
        case .rename: .trename
        case .readlink: .treadlink
        case .getattr: .tgetattr
        case .setattr: .tsetattr
        case .xattrwalk: .txattrwalk
        case .xattrcreate: .txattrcreate
        case .readdir: .treaddir
        case .fsync: .tfsync
        case .lock: .tlock
        case .getlock: .tgetlock
        case .link: .tlink
        case .mkdir: .tmkdir
        case .renameat: .trenameat
        case .unlinkat: .tunlinkat
        }
    }

    /// The complete message, size field included.
    public func encode(tag: UInt16) -> [UInt8] {
        var w = NinePWriter(type: type, tag: tag)
        switch self {
        case .version(let msize, let version):
            w.u32(msize); w.string(version)
        case .auth(let afid, let uname, let aname, let uid):
            w.u32(afid); w.string(uname); w.string(aname); w.u32(uid)
        case .attach(let fid, let afid, let uname, let aname, let uid):
            w.u32(fid); w.u32(afid); w.string(uname); w.string(aname); w.u32(uid)
        case .flush(let oldTag):
            w.u16(oldTag)
        case .walk(let fid, let newFid, let names):
            w.u32(fid); w.u32(newFid); w.u16(UInt16(truncatingIfNeeded: names.count))
            for name in names { w.string(name) }
        case .lopen(let fid, let flags):
            w.u32(fid); w.u32(flags)
        case .lcreate(let fid, let name, let flags, let mode, let gid):
            w.u32(fid); w.string(name); w.u32(flags); w.u32(mode); w.u32(gid)
        case .read(let fid, let offset, let count):
            w.u32(fid); w.u64(offset); w.u32(count)
        case .write(let fid, let offset, let data):
            w.u32(fid); w.u64(offset); w.u32(UInt32(truncatingIfNeeded: data.count)); w.data(data)
        case .clunk(let fid), .remove(let fid), .statfs(let fid), .readlink(let fid):
            w.u32(fid)
        case .symlink(let fid, let name, let target, let gid):
            w.u32(fid); w.string(name); w.string(target); w.u32(gid)
        case .mknod(let dfid, let name, let mode, let major, let minor, let gid):
            w.u32(dfid); w.string(name); w.u32(mode); w.u32(major); w.u32(minor); w.u32(gid)
        case .rename(let fid, let dfid, let name):
            w.u32(fid); w.u32(dfid); w.string(name)
        case .getattr(let fid, let mask):
            w.u32(fid); w.u64(mask.rawValue)
        case .setattr(let fid, let s):
            w.u32(fid); w.u32(s.valid.rawValue); w.u32(s.mode); w.u32(s.uid); w.u32(s.gid); w.u64(s.size)
            w.u64(s.accessTimeSeconds); w.u64(s.accessTimeNanoseconds)
            w.u64(s.modificationTimeSeconds); w.u64(s.modificationTimeNanoseconds)
        case .xattrwalk(let fid, let newFid, let name):
            w.u32(fid); w.u32(newFid); w.string(name)
        case .xattrcreate(let fid, let name, let size, let flags):
            w.u32(fid); w.string(name); w.u64(size); w.u32(flags)
        case .readdir(let fid, let offset, let count):
            w.u32(fid); w.u64(offset); w.u32(count)
        case .fsync(let fid, let datasync):
            w.u32(fid); w.u32(datasync)
        case .lock(let fid, let l):
            w.u32(fid); w.u8(l.type); w.u32(l.flags); w.u64(l.start); w.u64(l.length); w.u32(l.processID); w.string(l.clientID)
        case .getlock(let fid, let l):
            w.u32(fid); w.u8(l.type); w.u64(l.start); w.u64(l.length); w.u32(l.processID); w.string(l.clientID)
        case .link(let dfid, let fid, let name):
            w.u32(dfid); w.u32(fid); w.string(name)
        case .mkdir(let dfid, let name, let mode, let gid):
            w.u32(dfid); w.string(name); w.u32(mode); w.u32(gid)
        case .renameat(let oldDirFid, let oldName, let newDirFid, let newName):
            w.u32(oldDirFid); w.string(oldName); w.u32(newDirFid); w.string(newName)
        case .unlinkat(let dirFid, let name, let flags):
            w.u32(dirFid); w.string(name); w.u32(flags)
        }
        return w.finish()
    }

    /// Decodes one complete T-message. The size field must equal the message's length and every
    /// byte must belong to a field. Types outside 9P2000.L (Topen, Tcreate, Tstat, Twstat,
    /// R-messages, unknown numbers) fail with `.unknownType`; the header still gives their tag.
    public static func decode(_ message: [UInt8]) throws(NinePDecodeError) -> (tag: UInt16, request: NinePRequest) {
        var r = NinePReader(message)
        let size = try r.u32("size")
        guard Int(size) == message.count else { throw NinePDecodeError(.sizeMismatch, "size") }
        let type = NinePMessageType(rawValue: try r.u8("type"))
        let tag = try r.u16("tag")
        let request: NinePRequest
        switch type {
        case .tversion:
            request = .version(msize: try r.u32("msize"), version: try r.string("version"))
        case .tauth:
            request = .auth(afid: try r.u32("afid"), uname: try r.string("uname"), aname: try r.string("aname"),
                            uid: try r.u32("n_uname"))
        case .tattach:
            request = .attach(fid: try r.u32("fid"), afid: try r.u32("afid"), uname: try r.string("uname"),
                              aname: try r.string("aname"), uid: try r.u32("n_uname"))
        case .tflush:
            request = .flush(oldTag: try r.u16("oldtag"))
        case .twalk:
            let fid = try r.u32("fid")
            let newFid = try r.u32("newfid")
            let count = Int(try r.u16("nwname"))
            guard count <= NineP.maximumWalkNames else { throw NinePDecodeError(.tooManyNames, "nwname") }
            var names: [[UInt8]] = []
            names.reserveCapacity(count)
            for _ in 0..<count { names.append(try r.string("wname")) }
            request = .walk(fid: fid, newFid: newFid, names: names)
        case .tlopen:
            request = .lopen(fid: try r.u32("fid"), flags: try r.u32("flags"))
        case .tlcreate:
            request = .lcreate(fid: try r.u32("fid"), name: try r.string("name"), flags: try r.u32("flags"),
                               mode: try r.u32("mode"), gid: try r.u32("gid"))
        case .tread:
            request = .read(fid: try r.u32("fid"), offset: try r.u64("offset"), count: try r.u32("count"))
        case .twrite:
            let fid = try r.u32("fid")
            let offset = try r.u64("offset")
            let count = try r.u32("count")
            guard UInt64(count) <= UInt64(r.remaining) else { throw NinePDecodeError(.truncated, "data") }
            request = .write(fid: fid, offset: offset, data: try r.data(Int(count), "data"))
        case .tclunk:
            request = .clunk(fid: try r.u32("fid"))
        case .tremove:
            request = .remove(fid: try r.u32("fid"))
        case .tstatfs:
            request = .statfs(fid: try r.u32("fid"))
        case .tsymlink:
            request = .symlink(fid: try r.u32("fid"), name: try r.string("name"), target: try r.string("symtgt"),
                               gid: try r.u32("gid"))
        case .tmknod:
            request = .mknod(dfid: try r.u32("dfid"), name: try r.string("name"), mode: try r.u32("mode"),
                             major: try r.u32("major"), minor: try r.u32("minor"), gid: try r.u32("gid"))
        case .trename:
            request = .rename(fid: try r.u32("fid"), dfid: try r.u32("dfid"), name: try r.string("name"))
        case .treadlink:
            request = .readlink(fid: try r.u32("fid"))
        case .tgetattr:
            request = .getattr(fid: try r.u32("fid"), mask: NinePAttributeMask(rawValue: try r.u64("request_mask")))
        case .tsetattr:
            let fid = try r.u32("fid")
            let s = NinePSetattr(
                valid: NinePSetattrMask(rawValue: try r.u32("valid")), mode: try r.u32("mode"), uid: try r.u32("uid"),
                gid: try r.u32("gid"), size: try r.u64("size"),
                accessTimeSeconds: try r.u64("atime_sec"), accessTimeNanoseconds: try r.u64("atime_nsec"),
                modificationTimeSeconds: try r.u64("mtime_sec"), modificationTimeNanoseconds: try r.u64("mtime_nsec"))
            request = .setattr(fid: fid, s)
        case .txattrwalk:
            request = .xattrwalk(fid: try r.u32("fid"), newFid: try r.u32("newfid"), name: try r.string("name"))
        case .txattrcreate:
            request = .xattrcreate(fid: try r.u32("fid"), name: try r.string("name"), size: try r.u64("attr_size"),
                                   flags: try r.u32("flags"))
        case .treaddir:
            request = .readdir(fid: try r.u32("fid"), offset: try r.u64("offset"), count: try r.u32("count"))
        case .tfsync:
            request = .fsync(fid: try r.u32("fid"), datasync: try r.u32("datasync"))
        case .tlock:
            let fid = try r.u32("fid")
            let l = NinePLock(type: try r.u8("type"), flags: try r.u32("flags"), start: try r.u64("start"),
                              length: try r.u64("length"), processID: try r.u32("proc_id"), clientID: try r.string("client_id"))
            request = .lock(fid: fid, l)
        case .tgetlock:
            let fid = try r.u32("fid")
            let l = NinePGetlock(type: try r.u8("type"), start: try r.u64("start"), length: try r.u64("length"),
                                 processID: try r.u32("proc_id"), clientID: try r.string("client_id"))
            request = .getlock(fid: fid, l)
        case .tlink:
            request = .link(dfid: try r.u32("dfid"), fid: try r.u32("fid"), name: try r.string("name"))
        case .tmkdir:
            request = .mkdir(dfid: try r.u32("dfid"), name: try r.string("name"), mode: try r.u32("mode"), gid: try r.u32("gid"))
        case .trenameat:
            request = .renameat(oldDirFid: try r.u32("olddirfid"), oldName: try r.string("oldname"),
                                newDirFid: try r.u32("newdirfid"), newName: try r.string("newname"))
        case .tunlinkat:
            request = .unlinkat(dirFid: try r.u32("dirfd"), name: try r.string("name"), flags: try r.u32("flags"))
        default:
            throw NinePDecodeError(.unknownType, "\(type)")
        }
        try r.finish()
        return (tag, request)
    }
}

/// An R-message.
public enum NinePResponse: Hashable, Sendable {
    case error(errno: UInt32)
    case version(msize: UInt32, version: [UInt8])
    case auth(qid: NinePQid)
    case attach(qid: NinePQid)
    case flush
    case walk(qids: [NinePQid])
    case lopen(qid: NinePQid, iounit: UInt32)
    case lcreate(qid: NinePQid, iounit: UInt32)
    case read(data: ArraySlice<UInt8>)
    case write(count: UInt32)
    case clunk
    case remove
    case statfs(NinePStatfs)
    case symlink(qid: NinePQid)
    case mknod(qid: NinePQid)
    case rename
    case readlink(target: [UInt8])
    case getattr(NinePAttributes)
    case setattr
    case xattrwalk(size: UInt64)
    case xattrcreate
    case readdir(data: ArraySlice<UInt8>)
    case fsync
    case lock(status: UInt8)
    case getlock(NinePGetlock)
    case link
    case mkdir(qid: NinePQid)
    case renameat
    case unlinkat

    public var type: NinePMessageType {
        switch self {
        case .error: .rlerror
        case .version: .rversion
        case .auth: .rauth
        case .attach: .rattach
        case .flush: .rflush
        case .walk: .rwalk
        case .lopen: .rlopen
        case .lcreate: .rlcreate
        case .read: .rread
        case .write: .rwrite
        case .clunk: .rclunk
        case .remove: .rremove
        case .statfs: .rstatfs
        case .symlink: .rsymlink
        case .mknod: .rmknod
        case .rename: .rrename
        case .readlink: .rreadlink
        case .getattr: .rgetattr
        case .setattr: .rsetattr
        case .xattrwalk: .rxattrwalk
        case .xattrcreate: .rxattrcreate
        case .readdir: .rreaddir
        case .fsync: .rfsync
        case .lock: .rlock
        case .getlock: .rgetlock
        case .link: .rlink
        case .mkdir: .rmkdir
        case .renameat: .rrenameat
        case .unlinkat: .runlinkat
        }
    }

    /// The complete message, size field included.
    public func encode(tag: UInt16) -> [UInt8] {
        var w = NinePWriter(type: type, tag: tag)
        switch self {
        case .error(let errno):
            w.u32(errno)
        case .version(let msize, let version):
            w.u32(msize); w.string(version)
        case .auth(let qid), .attach(let qid), .symlink(let qid), .mknod(let qid), .mkdir(let qid):
            w.qid(qid)
        case .walk(let qids):
            w.u16(UInt16(truncatingIfNeeded: qids.count))
            for q in qids { w.qid(q) }
        case .lopen(let qid, let iounit), .lcreate(let qid, let iounit):
            w.qid(qid); w.u32(iounit)
        case .read(let data), .readdir(let data):
            w.u32(UInt32(truncatingIfNeeded: data.count)); w.data(data)
        case .write(let count):
            w.u32(count)
        case .statfs(let s):
            w.u32(s.type); w.u32(s.blockSize); w.u64(s.blocks); w.u64(s.freeBlocks); w.u64(s.availableBlocks)
            w.u64(s.files); w.u64(s.freeFiles); w.u64(s.filesystemID); w.u32(s.nameLength)
        case .readlink(let target):
            w.string(target)
        case .getattr(let a):
            w.u64(a.valid.rawValue); w.qid(a.qid); w.u32(a.mode); w.u32(a.uid); w.u32(a.gid)
            w.u64(a.linkCount); w.u64(a.rdev); w.u64(a.size); w.u64(a.blockSize); w.u64(a.blocks)
            w.u64(a.accessTimeSeconds); w.u64(a.accessTimeNanoseconds)
            w.u64(a.modificationTimeSeconds); w.u64(a.modificationTimeNanoseconds)
            w.u64(a.changeTimeSeconds); w.u64(a.changeTimeNanoseconds)
            w.u64(a.birthTimeSeconds); w.u64(a.birthTimeNanoseconds)
            w.u64(a.generation); w.u64(a.dataVersion)
        case .xattrwalk(let size):
            w.u64(size)
        case .lock(let status):
            w.u8(status)
        case .getlock(let l):
            w.u8(l.type); w.u64(l.start); w.u64(l.length); w.u32(l.processID); w.string(l.clientID)
        case .flush, .clunk, .remove, .rename, .setattr, .xattrcreate, .fsync, .link, .renameat, .unlinkat:
            break
        }
        return w.finish()
    }

    /// Decodes one complete R-message, as strictly as `NinePRequest.decode`.
    public static func decode(_ message: [UInt8]) throws(NinePDecodeError) -> (tag: UInt16, response: NinePResponse) {
        var r = NinePReader(message)
        let size = try r.u32("size")
        guard Int(size) == message.count else { throw NinePDecodeError(.sizeMismatch, "size") }
        let type = NinePMessageType(rawValue: try r.u8("type"))
        let tag = try r.u16("tag")
        let response: NinePResponse
        switch type {
        case .rlerror: response = .error(errno: try r.u32("ecode"))
        case .rversion: response = .version(msize: try r.u32("msize"), version: try r.string("version"))
        case .rauth: response = .auth(qid: try r.qid("aqid"))
        case .rattach: response = .attach(qid: try r.qid("qid"))
        case .rflush: response = .flush
        case .rwalk:
            let count = Int(try r.u16("nwqid"))
            guard count <= NineP.maximumWalkNames else { throw NinePDecodeError(.tooManyNames, "nwqid") }
            var qids: [NinePQid] = []
            for _ in 0..<count { qids.append(try r.qid("wqid")) }
            response = .walk(qids: qids)
        case .rlopen: response = .lopen(qid: try r.qid("qid"), iounit: try r.u32("iounit"))
        case .rlcreate: response = .lcreate(qid: try r.qid("qid"), iounit: try r.u32("iounit"))
        case .rread, .rreaddir:
            let count = try r.u32("count")
            guard UInt64(count) <= UInt64(r.remaining) else { throw NinePDecodeError(.truncated, "data") }
            let data = try r.data(Int(count), "data")
            response = type == .rread ? .read(data: data) : .readdir(data: data)
        case .rwrite: response = .write(count: try r.u32("count"))
        case .rclunk: response = .clunk
        case .rremove: response = .remove
        case .rstatfs:
            response = .statfs(NinePStatfs(
                type: try r.u32("type"), blockSize: try r.u32("bsize"), blocks: try r.u64("blocks"),
                freeBlocks: try r.u64("bfree"), availableBlocks: try r.u64("bavail"), files: try r.u64("files"),
                freeFiles: try r.u64("ffree"), filesystemID: try r.u64("fsid"), nameLength: try r.u32("namelen")))
        case .rsymlink: response = .symlink(qid: try r.qid("qid"))
        case .rmknod: response = .mknod(qid: try r.qid("qid"))
        case .rrename: response = .rename
        case .rreadlink: response = .readlink(target: try r.string("target"))
        case .rgetattr:
            response = .getattr(NinePAttributes(
                valid: NinePAttributeMask(rawValue: try r.u64("valid")), qid: try r.qid("qid"), mode: try r.u32("mode"),
                uid: try r.u32("uid"), gid: try r.u32("gid"), linkCount: try r.u64("nlink"), rdev: try r.u64("rdev"),
                size: try r.u64("size"), blockSize: try r.u64("blksize"), blocks: try r.u64("blocks"),
                accessTimeSeconds: try r.u64("atime_sec"), accessTimeNanoseconds: try r.u64("atime_nsec"),
                modificationTimeSeconds: try r.u64("mtime_sec"), modificationTimeNanoseconds: try r.u64("mtime_nsec"),
                changeTimeSeconds: try r.u64("ctime_sec"), changeTimeNanoseconds: try r.u64("ctime_nsec"),
                birthTimeSeconds: try r.u64("btime_sec"), birthTimeNanoseconds: try r.u64("btime_nsec"),
                generation: try r.u64("gen"), dataVersion: try r.u64("data_version")))
        case .rsetattr: response = .setattr
        case .rxattrwalk: response = .xattrwalk(size: try r.u64("size"))
        case .rxattrcreate: response = .xattrcreate
        case .rfsync: response = .fsync
        case .rlock: response = .lock(status: try r.u8("status"))
        case .rgetlock:
            response = .getlock(NinePGetlock(type: try r.u8("type"), start: try r.u64("start"), length: try r.u64("length"),
                                             processID: try r.u32("proc_id"), clientID: try r.string("client_id")))
        case .rlink: response = .link
        case .rmkdir: response = .mkdir(qid: try r.qid("qid"))
        case .rrenameat: response = .renameat
        case .runlinkat: response = .unlinkat
        default:
            throw NinePDecodeError(.unknownType, "\(type)")
        }
        try r.finish()
        return (tag, response)
    }

    /// Builds an Rread or Rreaddir of up to `capacity` data bytes in place: `fill` writes into the
    /// message's data area and returns how many bytes it wrote. Saves a copy of every read.
    public static func encodeData<E: Error>(
        type: NinePMessageType, tag: UInt16, capacity: Int,
        _ fill: (UnsafeMutableRawBufferPointer) throws(E) -> Int
    ) throws(E) -> [UInt8] {
        let header = NineP.readReplyHeaderSize
        let capacity = max(0, capacity)
        var failure: E?
        // Uninitialized: the data area is written by `fill` (a read of up to msize), not zeroed first.
        let message = [UInt8](unsafeUninitializedCapacity: header + capacity) { buffer, count in
            let area = UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[header...]))
            var written = 0
            do throws(E) {
                written = min(max(0, try fill(area)), capacity)
            } catch {
                failure = error
            }
            let total = header + written
            let fields: [UInt8] = [
                UInt8(truncatingIfNeeded: total), UInt8(truncatingIfNeeded: total >> 8),
                UInt8(truncatingIfNeeded: total >> 16), UInt8(truncatingIfNeeded: total >> 24),
                type.rawValue, UInt8(truncatingIfNeeded: tag), UInt8(truncatingIfNeeded: tag >> 8),
                UInt8(truncatingIfNeeded: written), UInt8(truncatingIfNeeded: written >> 8),
                UInt8(truncatingIfNeeded: written >> 16), UInt8(truncatingIfNeeded: written >> 24),
            ]
            for (i, b) in fields.enumerated() { buffer[i] = b }
            count = total
        }
        if let failure { throw failure }
        return message
    }
}
