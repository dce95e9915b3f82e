/// One request, decoded. The node a request acts on is the header's `nodeID` (the parent
/// directory for requests that name an entry).
public enum FuseRequest: Sendable, Hashable {
    case initialise(FuseInitIn)
    case destroy
    case lookup(name: [UInt8])
    case forget(count: UInt64)
    case batchForget([FuseForgetOne])
    case getattr(flags: UInt32, handle: UInt64)
    case setattr(FuseSetattrIn)
    case readlink
    case symlink(name: [UInt8], target: [UInt8])
    case mknod(mode: UInt32, rdev: UInt32, umask: UInt32, name: [UInt8])
    case mkdir(mode: UInt32, umask: UInt32, name: [UInt8])
    case unlink(name: [UInt8])
    case rmdir(name: [UInt8])
    /// RENAME (flags 0) and RENAME2.
    case rename(newParent: UInt64, flags: UInt32, name: [UInt8], newName: [UInt8], version2: Bool)
    case link(node: UInt64, name: [UInt8])
    case open(flags: UInt32, openFlags: UInt32)
    case opendir(flags: UInt32, openFlags: UInt32)
    case read(FuseReadIn)
    /// The data is `FuseWriteIn.size` bytes of the message, from `dataOffset`: it is not copied.
    case write(FuseWriteIn, dataOffset: Int)
    case statfs
    case release(FuseReleaseIn)
    case releasedir(FuseReleaseIn)
    case fsync(handle: UInt64, flags: UInt32)
    case fsyncdir(handle: UInt64, flags: UInt32)
    case setxattr(flags: UInt32, setxattrFlags: UInt32, name: [UInt8], value: [UInt8])
    case getxattr(size: UInt32, name: [UInt8])
    case listxattr(size: UInt32)
    case removexattr(name: [UInt8])
    case flush(handle: UInt64, lockOwner: UInt64)
    case readdir(FuseReadIn)
    case readdirplus(FuseReadIn)
    case getlk(FuseLockIn)
    case setlk(FuseLockIn, wait: Bool)
    case access(mask: UInt32)
    case create(FuseCreateIn, name: [UInt8])
    case interrupt(unique: UInt64)
    case fallocate(FuseFallocateIn)
    case lseek(handle: UInt64, offset: UInt64, whence: UInt32)
    case copyFileRange(FuseCopyFileRangeIn)
    case syncfs
    /// Opcodes pvfs does not serve (BMAP, IOCTL, POLL, DAX mappings, TMPFILE, unknown ones):
    /// answered ENOSYS, except NOTIFY_REPLY, which takes no reply.
    case unsupported(opcode: UInt32)

    /// Whether the request takes no reply (FORGET, BATCH_FORGET, NOTIFY_REPLY).
    public var expectsNoReply: Bool {
        switch self {
        case .forget, .batchForget: true
        case .unsupported(let opcode): opcode == FuseOpcode.notifyReply.rawValue
        default: false
        }
    }
}

/// What the decoder must know of the session: argument sizes that depend on INIT.
public struct FuseDecodeOptions: Sendable, Hashable {
    /// FUSE_SETXATTR_EXT was agreed: fuse_setxattr_in is 16 bytes instead of 8.
    public var extendedSetxattr: Bool

    public init(extendedSetxattr: Bool = false) {
        self.extendedSetxattr = extendedSetxattr
    }
}

extension FuseRequest {
    /// Decodes one whole request: the header's length must equal the bytes given, and every
    /// argument must fill its part exactly.
    public static func decode(_ message: UnsafeRawBufferPointer,
                              options: FuseDecodeOptions = FuseDecodeOptions()) throws(FuseDecodeError) -> (FuseInHeader, FuseRequest) {
        let header = try FuseInHeader.decode(message)
        guard Int(header.length) == message.count else { throw FuseDecodeError(.lengthMismatch, "in.len") }
        let extensions = Int(header.extensionLength) * 8
        guard extensions <= message.count - FuseProtocol.inHeaderSize else { throw FuseDecodeError(.badCount, "in.total_extlen") }
        var r = FuseReader(message, offset: FuseProtocol.inHeaderSize, end: message.count - extensions)
        let request = try decodeArguments(header.opcode, &r, options)
        return (header, request)
    }

    private static func decodeArguments(_ opcode: UInt32, _ r: inout FuseReader,
                                        _ options: FuseDecodeOptions) throws(FuseDecodeError) -> FuseRequest {
        guard let op = FuseOpcode(rawValue: opcode) else { return .unsupported(opcode: opcode) }
        let request: FuseRequest
        switch op {
        case .initialise:
            let major = try r.u32("init.major")
            let minor = try r.u32("init.minor")
            let readahead = try r.u32("init.max_readahead")
            let low = try r.u32("init.flags")
            var high: UInt32 = 0
            // Kernels before minor 36 send 16 bytes; later ones 64 with flags2 and reserved words.
            if r.remaining > 0 {
                high = try r.u32("init.flags2")
                try r.skip(44, "init.unused")
            }
            var flags = UInt64(low)
            if low & UInt32(truncatingIfNeeded: FuseInitFlags.initExt.rawValue) != 0 { flags |= UInt64(high) << 32 }
            request = .initialise(FuseInitIn(major: major, minor: minor, maxReadahead: readahead, flags: FuseInitFlags(rawValue: flags)))
        case .destroy: request = .destroy
        case .lookup: request = .lookup(name: try r.name("lookup.name"))
        case .forget: request = .forget(count: try r.u64("forget.nlookup"))
        case .batchForget:
            let count = try r.u32("batch_forget.count")
            _ = try r.u32("batch_forget.dummy")
            // Checked against the bytes before anything is allocated for it.
            guard UInt64(count) * 16 == UInt64(r.remaining) else { throw FuseDecodeError(.badCount, "batch_forget.count") }
            var items: [FuseForgetOne] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<count {
                items.append(try FuseForgetOne.decode(&r))
            }
            request = .batchForget(items)
        case .getattr:
            let flags = try r.u32("getattr.flags")
            _ = try r.u32()
            request = .getattr(flags: flags, handle: try r.u64("getattr.fh"))
        case .setattr: request = .setattr(try FuseSetattrIn.decode(&r))
        case .readlink: request = .readlink
        case .symlink:
            let name = try r.name("symlink.name")
            request = .symlink(name: name, target: try r.name("symlink.target"))
        case .mknod:
            let mode = try r.u32("mknod.mode")
            let rdev = try r.u32("mknod.rdev")
            let umask = try r.u32("mknod.umask")
            _ = try r.u32()
            request = .mknod(mode: mode, rdev: rdev, umask: umask, name: try r.name("mknod.name"))
        case .mkdir:
            let mode = try r.u32("mkdir.mode")
            let umask = try r.u32("mkdir.umask")
            request = .mkdir(mode: mode, umask: umask, name: try r.name("mkdir.name"))
        case .unlink: request = .unlink(name: try r.name("unlink.name"))
        case .rmdir: request = .rmdir(name: try r.name("rmdir.name"))
        case .rename:
            let newParent = try r.u64("rename.newdir")
            let name = try r.name("rename.oldname")
            request = .rename(newParent: newParent, flags: 0, name: name, newName: try r.name("rename.newname"), version2: false)
        case .rename2:
            let newParent = try r.u64("rename2.newdir")
            let flags = try r.u32("rename2.flags")
            _ = try r.u32()
            let name = try r.name("rename2.oldname")
            request = .rename(newParent: newParent, flags: flags, name: name, newName: try r.name("rename2.newname"), version2: true)
        case .link:
            let node = try r.u64("link.oldnodeid")
            request = .link(node: node, name: try r.name("link.name"))
        case .open, .opendir:
            let flags = try r.u32("open.flags")
            let openFlags = try r.u32("open.open_flags")
            request = op == .open ? .open(flags: flags, openFlags: openFlags) : .opendir(flags: flags, openFlags: openFlags)
        case .read: request = .read(try FuseReadIn.decode(&r))
        case .readdir: request = .readdir(try FuseReadIn.decode(&r))
        case .readdirplus: request = .readdirplus(try FuseReadIn.decode(&r))
        case .write:
            let input = try FuseWriteIn.decode(&r)
            guard Int(input.size) == r.remaining else { throw FuseDecodeError(.badCount, "write.size") }
            let offset = r.offset
            try r.skip(Int(input.size))
            request = .write(input, dataOffset: offset)
        case .statfs: request = .statfs
        case .release, .releasedir:
            let input = try FuseReleaseIn.decode(&r)
            request = op == .release ? .release(input) : .releasedir(input)
        case .fsync, .fsyncdir:
            let handle = try r.u64("fsync.fh")
            let flags = try r.u32("fsync.flags")
            _ = try r.u32()
            request = op == .fsync ? .fsync(handle: handle, flags: flags) : .fsyncdir(handle: handle, flags: flags)
        case .setxattr:
            let size = try r.u32("setxattr.size")
            let flags = try r.u32("setxattr.flags")
            var setxattrFlags: UInt32 = 0
            if options.extendedSetxattr {
                setxattrFlags = try r.u32("setxattr.setxattr_flags")
                _ = try r.u32()
            }
            let name = try r.name("setxattr.name")
            guard Int(size) == r.remaining else { throw FuseDecodeError(.badCount, "setxattr.size") }
            request = .setxattr(flags: flags, setxattrFlags: setxattrFlags, name: name, value: try r.bytes(Int(size), "setxattr.value"))
        case .getxattr:
            let size = try r.u32("getxattr.size")
            _ = try r.u32()
            request = .getxattr(size: size, name: try r.name("getxattr.name"))
        case .listxattr:
            let size = try r.u32("listxattr.size")
            _ = try r.u32()
            request = .listxattr(size: size)
        case .removexattr: request = .removexattr(name: try r.name("removexattr.name"))
        case .flush:
            let handle = try r.u64("flush.fh")
            _ = try r.u32()
            _ = try r.u32()
            request = .flush(handle: handle, lockOwner: try r.u64("flush.lock_owner"))
        case .getlk, .setlk, .setlkw:
            let input = try FuseLockIn.decode(&r)
            request = op == .getlk ? .getlk(input) : .setlk(input, wait: op == .setlkw)
        case .access:
            let mask = try r.u32("access.mask")
            _ = try r.u32()
            request = .access(mask: mask)
        case .create:
            request = .create(try FuseCreateIn.decode(&r), name: try r.name("create.name"))
        case .interrupt: request = .interrupt(unique: try r.u64("interrupt.unique"))
        case .fallocate:
            request = .fallocate(try FuseFallocateIn.decode(&r))
        case .lseek:
            let handle = try r.u64("lseek.fh")
            let offset = try r.u64("lseek.offset")
            let whence = try r.u32("lseek.whence")
            _ = try r.u32()
            request = .lseek(handle: handle, offset: offset, whence: whence)
        case .copyFileRange:
            request = .copyFileRange(try FuseCopyFileRangeIn.decode(&r))
        case .syncfs:
            _ = try r.u64("syncfs.padding")
            request = .syncfs
        case .bmap, .ioctl, .poll, .notifyReply, .setupMapping, .removeMapping, .tmpfile:
            // Not decoded: answered without looking at the arguments.
            return .unsupported(opcode: opcode)
        }
        try r.finish(String(describing: op))
        return request
    }

    /// The opcode this request travels under.
    public var opcode: UInt32 {
        let op: FuseOpcode
        switch self {
        case .initialise: op = .initialise
        case .destroy: op = .destroy
        case .lookup: op = .lookup
        case .forget: op = .forget
        case .batchForget: op = .batchForget
        case .getattr: op = .getattr
        case .setattr: op = .setattr
        case .readlink: op = .readlink
        case .symlink: op = .symlink
        case .mknod: op = .mknod
        case .mkdir: op = .mkdir
        case .unlink: op = .unlink
        case .rmdir: op = .rmdir
        case .rename(_, _, _, _, let version2): op = version2 ? .rename2 : .rename
        case .link: op = .link
        case .open: op = .open
        case .opendir: op = .opendir
        case .read: op = .read
        case .write: op = .write
        case .statfs: op = .statfs
        case .release: op = .release
        case .releasedir: op = .releasedir
        case .fsync: op = .fsync
        case .fsyncdir: op = .fsyncdir
        case .setxattr: op = .setxattr
        case .getxattr: op = .getxattr
        case .listxattr: op = .listxattr
        case .removexattr: op = .removexattr
        case .flush: op = .flush
        case .readdir: op = .readdir
        case .readdirplus: op = .readdirplus
        case .getlk: op = .getlk
        case .setlk(_, let wait): op = wait ? .setlkw : .setlk
        case .access: op = .access
        case .create: op = .create
        case .interrupt: op = .interrupt
        case .fallocate: op = .fallocate
        case .lseek: op = .lseek
        case .copyFileRange: op = .copyFileRange
        case .syncfs: op = .syncfs
        case .unsupported(let opcode): return opcode
        }
        return op.rawValue
    }

    /// The whole request as the kernel would send it (tests, simulated guests, the fuzzer's
    /// round trip). For WRITE, `data` is the payload (its size is taken from it).
    public func encode(unique: UInt64, nodeID: UInt64, uid: UInt32 = 0, gid: UInt32 = 0, pid: UInt32 = 0,
                       data: [UInt8] = [], options: FuseDecodeOptions = FuseDecodeOptions()) -> [UInt8] {
        var w = FuseWriter(capacity: 128 + data.count)
        FuseInHeader(length: 0, opcode: opcode, unique: unique, nodeID: nodeID, uid: uid, gid: gid, pid: pid).encode(into: &w)
        switch self {
        case .initialise(let i):
            w.u32(i.major); w.u32(i.minor); w.u32(i.maxReadahead)
            w.u32(UInt32(truncatingIfNeeded: i.flags.rawValue)); w.u32(UInt32(truncatingIfNeeded: i.flags.rawValue >> 32))
            w.zeros(44)
        case .destroy, .readlink, .statfs, .unsupported: break
        case .lookup(let name), .unlink(let name), .rmdir(let name), .removexattr(let name): w.name(name)
        case .forget(let count): w.u64(count)
        case .batchForget(let items):
            w.u32(UInt32(truncatingIfNeeded: items.count)); w.u32(0)
            for item in items { item.encode(into: &w) }
        case .getattr(let flags, let handle): w.u32(flags); w.u32(0); w.u64(handle)
        case .setattr(let s): s.encode(into: &w)
        case .symlink(let name, let target): w.name(name); w.name(target)
        case .mknod(let mode, let rdev, let umask, let name): w.u32(mode); w.u32(rdev); w.u32(umask); w.u32(0); w.name(name)
        case .mkdir(let mode, let umask, let name): w.u32(mode); w.u32(umask); w.name(name)
        case .rename(let newParent, let flags, let name, let newName, let version2):
            w.u64(newParent)
            if version2 { w.u32(flags); w.u32(0) }
            w.name(name); w.name(newName)
        case .link(let node, let name): w.u64(node); w.name(name)
        case .open(let flags, let openFlags), .opendir(let flags, let openFlags): w.u32(flags); w.u32(openFlags)
        case .read(let i), .readdir(let i), .readdirplus(let i): i.encode(into: &w)
        case .write(var i, _):
            i.size = UInt32(truncatingIfNeeded: data.count)
            i.encode(into: &w)
            w.data(data)
        case .release(let i), .releasedir(let i): i.encode(into: &w)
        case .fsync(let handle, let flags), .fsyncdir(let handle, let flags): w.u64(handle); w.u32(flags); w.u32(0)
        case .setxattr(let flags, let setxattrFlags, let name, let value):
            w.u32(UInt32(truncatingIfNeeded: value.count)); w.u32(flags)
            if options.extendedSetxattr { w.u32(setxattrFlags); w.u32(0) }
            w.name(name); w.data(value)
        case .getxattr(let size, let name): w.u32(size); w.u32(0); w.name(name)
        case .listxattr(let size): w.u32(size); w.u32(0)
        case .flush(let handle, let lockOwner): w.u64(handle); w.u32(0); w.u32(0); w.u64(lockOwner)
        case .getlk(let i), .setlk(let i, _): i.encode(into: &w)
        case .access(let mask): w.u32(mask); w.u32(0)
        case .create(let i, let name): i.encode(into: &w); w.name(name)
        case .interrupt(let unique): w.u64(unique)
        case .fallocate(let i): i.encode(into: &w)
        case .lseek(let handle, let offset, let whence): w.u64(handle); w.u64(offset); w.u32(whence); w.u32(0)
        case .copyFileRange(let i): i.encode(into: &w)
        case .syncfs: w.u64(0)
        }
        var bytes = w.bytes
        FuseWriter.patchU32(&bytes, at: 0, UInt32(truncatingIfNeeded: bytes.count))
        return bytes
    }
}
