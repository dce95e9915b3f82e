import CFuse
import Glibc
import Logging
import PVFSEngine
@_exported import PVFSFuseHost
import PVFSFuseServer
import PVFSSystem
import Synchronization
import SystemPackage

/// The FUSE low-level request handlers of one mount, each a thin translation between libfuse's
/// C calls and the VM's `VMView`.
///
/// Node ids are the view's inode numbers (the root is 1 in both), so no table maps one to the
/// other: the engine never reuses an inode number within a view, which makes generation 0 safe
/// and lets the kernel's lookup counts (forget) need no bookkeeping here. File handles (`fh`) are
/// retained `OpenFile` objects, released once by release/releasedir.
///
/// Permission checks are the kernel's (`default_permissions`, and ACLs with FUSE_CAP_POSIX_ACL);
/// the session therefore runs the engine without its own checks, and only the semantics that
/// depend on the caller stay here or in the engine: ownership of new inodes, setgid inheritance,
/// umask and default ACLs.
final class FuseFilesystem: @unchecked Sendable {
    let view: VMView
    let options: FuseMountOptions
    let logger: Logger
    /// Set in init when the kernel accepted FUSE_CAP_POSIX_ACL (and so FUSE_CAP_DONT_MASK).
    let aclActive = Atomic<Bool>(false)
    /// Set in init when the kernel applies no umask of its own.
    let umaskIsOurs = Atomic<Bool>(false)
    let initialised = Atomic<Bool>(false)
    /// The kernel's name of the mount's backing device ("0:N"), set once mounted.
    let backingDevice = Mutex<String?>(nil)
    private let readaheadApplied = Atomic<Bool>(false)
    /// Directories with open handles and their attributes when opened: Linux keeps serving
    /// fstat (with no links) and an empty listing for a directory removed while open, and the
    /// engine forgets a removed directory at once.
    let openDirectories = Mutex<[InodeNumber: (count: Int, attributes: Attributes)]>([:])

    init(view: VMView, options: FuseMountOptions, logger: Logger) {
        self.view = view
        self.options = options
        self.logger = logger
    }

    // MARK: Requests

    @inline(__always)
    static func of(_ req: fuse_req_t?) -> FuseFilesystem {
        Unmanaged<FuseFilesystem>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    func credentials(_ req: fuse_req_t) -> Credentials {
        let ctx = fuse_req_ctx(req)!.pointee
        guard view.policy.enforcePermissions else { return Credentials(uid: ctx.uid, gid: ctx.gid) }
        return Credentials(uid: ctx.uid, gid: ctx.gid, groups: supplementaryGroups(req))
    }

    /// The caller's supplementary groups (libfuse reads them from /proc: only asked for where a
    /// decision needs them).
    func supplementaryGroups(_ req: fuse_req_t) -> [UInt32] {
        var capacity = 64
        while true {
            var list = [gid_t](repeating: 0, count: capacity)
            let n = fuse_req_getgroups(req, Int32(capacity), &list)
            if n < 0 { return [] }
            if Int(n) <= capacity { return Array(list.prefix(Int(n))) }
            capacity = Int(n)
        }
    }

    func callerIsMember(_ req: fuse_req_t, of gid: UInt32) -> Bool {
        let ctx = fuse_req_ctx(req)!.pointee
        if ctx.uid == 0 || ctx.gid == gid { return true }
        return supplementaryGroups(req).contains(gid)
    }

    // MARK: Replies

    func stat(of a: Attributes) -> stat {
        var st = Glibc.stat()
        st.st_ino = ino_t(a.inode)
        st.st_mode = a.mode
        st.st_nlink = nlink_t(a.linkCount)
        st.st_uid = a.uid
        st.st_gid = a.gid
        st.st_rdev = dev_t(a.rdev)
        st.st_size = off_t(a.size)
        st.st_blksize = blksize_t(a.blockSize)
        st.st_blocks = blkcnt_t(a.blocks)
        st.st_atim = a.accessTime.timespec
        st.st_mtim = a.modificationTime.timespec
        st.st_ctim = a.changeTime.timespec
        return st
    }

    func entry(_ a: Attributes) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = a.inode
        e.generation = a.generation
        e.attr = stat(of: a)
        e.attr_timeout = options.attributeTimeout
        e.entry_timeout = options.entryTimeout
        return e
    }

    func replyEntry(_ req: fuse_req_t, _ a: Attributes) {
        var e = entry(a)
        fuse_reply_entry(req, &e)
    }

    func replyAttributes(_ req: fuse_req_t, _ a: Attributes) {
        var st = stat(of: a)
        fuse_reply_attr(req, &st, options.attributeTimeout)
    }

    func reply(_ req: fuse_req_t, _ error: Errno) {
        fuse_reply_err(req, error.rawValue)
    }

    func replyOK(_ req: fuse_req_t) {
        fuse_reply_err(req, 0)
    }

    /// Runs a handler that replies itself; an errno it throws is the reply instead.
    @inline(__always)
    func replying(_ req: fuse_req_t, _ body: () throws(Errno) -> Void) {
        do throws(Errno) {
            try body()
        } catch {
            reply(req, error)
        }
    }

    /// Replies success once `body` is done, or the errno it throws.
    @inline(__always)
    func replyOK(_ req: fuse_req_t, after body: () throws(Errno) -> Void) {
        replying(req) { () throws(Errno) in
            try body()
            replyOK(req)
        }
    }

    /// Replies with the entry of the inode `body` returns, or the errno it throws.
    @inline(__always)
    func replyEntry(_ req: fuse_req_t, _ body: () throws(Errno) -> Attributes) {
        replying(req) { () throws(Errno) in replyEntry(req, try body()) }
    }

    /// Reads up to this size are copied through a buffer rather than spliced (libfuse itself
    /// copies replies under two pages, and allocates the whole request size to do so).
    static let copiedReadLimit = 128 << 10

    // MARK: Handles

    static func handleValue(_ handle: OpenFile) -> UInt64 {
        UInt64(UInt(bitPattern: Unmanaged.passRetained(handle).toOpaque()))
    }

    static func handle(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> OpenFile? {
        guard let fi, let raw = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) else { return nil }
        return Unmanaged<OpenFile>.fromOpaque(raw).takeUnretainedValue()
    }

    static func takeHandle(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> OpenFile? {
        guard let fi, let raw = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) else { return nil }
        fi.pointee.fh = 0
        return Unmanaged<OpenFile>.fromOpaque(raw).takeRetainedValue()
    }

    static func name(_ cName: UnsafePointer<CChar>) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: cName, count: strlen(cName)))
    }
}

// MARK: - Session setup

extension FuseFilesystem {
    func initialise(_ conn: UnsafeMutablePointer<fuse_conn_info>) {
        var want = conn.pointee.want
        let capable = conn.pointee.capable
        // The kernel clears setuid/setgid on write, truncate and chown by sending an explicit
        // mode change; the engine then needs to know nothing about the caller's capabilities.
        want &= ~CFUSE_CAP_HANDLE_KILLPRIV
        // Reads are answered from the blob or private file by splice where the kernel allows it.
        for cap in [CFUSE_CAP_SPLICE_WRITE, CFUSE_CAP_SPLICE_MOVE] where capable & cap != 0 { want |= cap }
        for cap in [CFUSE_CAP_ASYNC_READ, CFUSE_CAP_PARALLEL_DIROPS, CFUSE_CAP_ATOMIC_O_TRUNC,
                    CFUSE_CAP_READDIRPLUS, CFUSE_CAP_READDIRPLUS_AUTO, CFUSE_CAP_AUTO_INVAL_DATA, CFUSE_CAP_ASYNC_DIO]
        where capable & cap != 0 {
            want |= cap
        }
        // Locks: the engine's table where guest sessions must see them, else the kernel's own
        // (libfuse asks for both by default since lock handlers exist).
        let lockCaps = CFUSE_CAP_POSIX_LOCKS | CFUSE_CAP_FLOCK_LOCKS
        if options.locksInKernel {
            want &= ~lockCaps
        } else {
            want |= capable & lockCaps
        }
        // Symlink targets never change in place: a new target is a new inode.
        if capable & CFUSE_CAP_CACHE_SYMLINKS != 0, options.keepCache { want |= CFUSE_CAP_CACHE_SYMLINKS }
        // Writes go through to the engine at once (no writeback cache): the engine accounts
        // quota per write and other sessions must see them.
        want &= ~CFUSE_CAP_WRITEBACK_CACHE
        if options.posixACLs, capable & CFUSE_CAP_POSIX_ACL != 0, capable & CFUSE_CAP_DONT_MASK != 0 {
            // The kernel enforces ACLs; creating under a default ACL must not lose bits to the
            // umask first, so the umask is applied here where no default ACL applies.
            want |= CFUSE_CAP_POSIX_ACL | CFUSE_CAP_DONT_MASK
            aclActive.store(true, ordering: .releasing)
            umaskIsOurs.store(true, ordering: .releasing)
        }
        conn.pointee.want = want
        conn.pointee.max_write = 1 << 20
        conn.pointee.time_gran = 1
        if conn.pointee.max_background < 64 { conn.pointee.max_background = 64 }
        if conn.pointee.congestion_threshold < 48 { conn.pointee.congestion_threshold = 48 }
        initialised.store(true, ordering: .releasing)
        logger.debug("FUSE session initialised", metadata: [
            "protocol": "\(conn.pointee.proto_major).\(conn.pointee.proto_minor)",
            "acl": "\(aclActive.load(ordering: .relaxed))",
            "want": "\(String(want, radix: 16))",
        ])
    }
}

// MARK: - Names

extension FuseFilesystem {
    /// Raises the mount's readahead once INIT is done (INIT itself can only lower it: the kernel
    /// keeps the smaller of its default, 128 KiB, and what the filesystem asks). Any request
    /// after INIT will do; it runs once. 512 KiB keeps a reply (plus its header) within the
    /// largest pipe an unprivileged splice may use (fs.pipe-max-size, 1 MiB), so reads stay
    /// zero-copy while taking four times fewer requests.
    @inline(__always)
    func afterInit() {
        guard !readaheadApplied.load(ordering: .relaxed) else { return }
        guard readaheadApplied.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged,
              options.readaheadKiB > 0, let device = backingDevice.withLock({ $0 }) else { return }
        let fd = Glibc.open("/sys/class/bdi/\(device)/read_ahead_kb", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        let text = Array("\(options.readaheadKiB)\n".utf8)
        _ = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
    }

    func lookup(_ req: fuse_req_t, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>) {
        afterInit()
        do throws(Errno) {
            replyEntry(req, try view.lookup(parent, Self.name(name), as: credentials(req)))
        } catch where error == .noSuchFileOrDirectory && options.negativeTimeout > 0 {
            // A negative entry: the kernel remembers the name is absent.
            var e = fuse_entry_param()
            e.entry_timeout = options.negativeTimeout
            fuse_reply_entry(req, &e)
        } catch {
            reply(req, error)
        }
    }

    func getattr(_ req: fuse_req_t, _ ino: fuse_ino_t) {
        afterInit()
        do throws(Errno) {
            replyAttributes(req, try view.getAttributes(ino))
        } catch where error == .noSuchFileOrDirectory {
            if var removed = openDirectories.withLock({ $0[ino]?.attributes }) {
                removed.linkCount = 0
                replyAttributes(req, removed)
            } else {
                reply(req, error)
            }
        } catch {
            reply(req, error)
        }
    }

    func setattr(_ req: fuse_req_t, _ ino: fuse_ino_t, _ attr: UnsafeMutablePointer<stat>, _ toSet: Int32,
                 _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let a = attr.pointee
        var changes = AttributeChanges()
        if toSet & CFUSE_SET_ATTR_MODE != 0 { changes.mode = a.st_mode & permissionBitsMask }
        if toSet & CFUSE_SET_ATTR_UID != 0 { changes.uid = a.st_uid }
        if toSet & CFUSE_SET_ATTR_GID != 0 { changes.gid = a.st_gid }
        if toSet & CFUSE_SET_ATTR_SIZE != 0 { changes.size = Int64(a.st_size) }
        if toSet & CFUSE_SET_ATTR_ATIME_NOW != 0 {
            changes.accessTime = .now
        } else if toSet & CFUSE_SET_ATTR_ATIME != 0 {
            changes.accessTime = .set(Timespec(a.st_atim))
        }
        if toSet & CFUSE_SET_ATTR_MTIME_NOW != 0 {
            changes.modificationTime = .now
        } else if toSet & CFUSE_SET_ATTR_MTIME != 0 {
            changes.modificationTime = .set(Timespec(a.st_mtim))
        }
        replying(req) { () throws(Errno) in
            if changes.isEmpty {
                // Only a ctime the kernel keeps itself (writeback cache): nothing to store.
                replyAttributes(req, try view.getAttributes(ino))
                return
            }
            let cred = credentials(req)
            var result = try view.setAttributes(ino, changes, handle: Self.handle(fi), as: cred)
            if let mode = changes.mode, aclActive.load(ordering: .relaxed) {
                result = try view.followModeInAccessACL(ino, mode: mode, attributes: result)
            }
            replyAttributes(req, result)
        }
    }

    func readlink(_ req: fuse_req_t, _ ino: fuse_ino_t) {
        replying(req) { () throws(Errno) in
            var target = try view.readLink(ino)
            target.append(0)
            target.withUnsafeBufferPointer { buffer in
                buffer.withMemoryRebound(to: CChar.self) { _ = fuse_reply_readlink(req, $0.baseAddress) }
            }
        }
    }

    /// The umask for a new inode: nil where the kernel applied it already.
    func umaskToApply(_ req: fuse_req_t) -> UInt32? {
        umaskIsOurs.load(ordering: .relaxed) ? UInt32(fuse_req_ctx(req)!.pointee.umask) : nil
    }

    func mknod(_ req: fuse_req_t, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>, _ mode: mode_t, _ rdev: dev_t) {
        replyEntry(req) { () throws(Errno) in
            try view.makeNode(parent, Self.name(name), mode: mode, rdev: UInt64(rdev), umask: umaskToApply(req),
                              aclActive: aclActive.load(ordering: .relaxed), as: credentials(req))
        }
    }

    func mkdir(_ req: fuse_req_t, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>, _ mode: mode_t) {
        replyEntry(req) { () throws(Errno) in
            try view.makeDirectory(parent, Self.name(name), mode: mode, umask: umaskToApply(req),
                                   aclActive: aclActive.load(ordering: .relaxed), as: credentials(req))
        }
    }

    func symlink(_ req: fuse_req_t, _ target: UnsafePointer<CChar>, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>) {
        replyEntry(req) { () throws(Errno) in
            try view.makeSymlink(parent, Self.name(name), target: Self.name(target), as: credentials(req))
        }
    }

    func link(_ req: fuse_req_t, _ ino: fuse_ino_t, _ newParent: fuse_ino_t, _ newName: UnsafePointer<CChar>) {
        replyEntry(req) { () throws(Errno) in
            try view.link(ino, into: newParent, Self.name(newName), as: credentials(req))
        }
    }

    func unlink(_ req: fuse_req_t, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>) {
        replyOK(req) { () throws(Errno) in
            try view.unlink(parent, Self.name(name), as: credentials(req))
        }
    }

    func rmdir(_ req: fuse_req_t, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>) {
        replyOK(req) { () throws(Errno) in
            try view.removeDirectory(parent, Self.name(name), as: credentials(req))
        }
    }

    func rename(_ req: fuse_req_t, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>, _ newParent: fuse_ino_t,
                _ newName: UnsafePointer<CChar>, _ flags: UInt32) {
        let known: UInt32 = RenameFlags.noReplace.rawValue | RenameFlags.exchange.rawValue | RenameFlags.whiteout.rawValue
        guard flags & ~known == 0 else { return reply(req, .invalidArgument) }
        replyOK(req) { () throws(Errno) in
            try view.rename(parent, Self.name(name), to: newParent, Self.name(newName),
                            flags: RenameFlags(rawValue: flags), as: credentials(req))
        }
    }

    func statfs(_ req: fuse_req_t) {
        let s = view.statistics()
        var out = statvfs()
        out.f_bsize = UInt(s.blockSize)
        out.f_frsize = UInt(s.fragmentSize)
        out.f_blocks = fsblkcnt_t(s.totalBlocks)
        out.f_bfree = fsblkcnt_t(s.freeBlocks)
        out.f_bavail = fsblkcnt_t(s.availableBlocks)
        out.f_files = fsfilcnt_t(s.totalFiles)
        out.f_ffree = fsfilcnt_t(s.freeFiles)
        out.f_favail = fsfilcnt_t(s.availableFiles)
        out.f_namemax = UInt(s.maximumNameLength)
        fuse_reply_statfs(req, &out)
    }

    func access(_ req: fuse_req_t, _ ino: fuse_ino_t, _ mask: Int32) {
        replyOK(req) { () throws(Errno) in
            try view.access(ino, AccessMask(rawValue: UInt32(mask & 7)), as: credentials(req))
        }
    }
}

// MARK: - Files

extension FuseFilesystem {
    func setOpenReplyFlags(_ fi: UnsafeMutablePointer<fuse_file_info>, directory: Bool) {
        // FLUSH (each close) only drops the closer's locks in the engine's table; with the
        // kernel keeping locks it is a round trip for nothing. Without a writeback cache the
        // kernel has no dirty pages to write at close either (shared mmap pages are written
        // back when the mapping goes).
        let noFlush = !directory && options.locksInKernel
        cfuse_fi_set_reply_flags(fi, options.keepCache ? 1 : 0, 0, directory && options.keepCache ? 1 : 0, noFlush ? 1 : 0)
    }

    func open(_ req: fuse_req_t, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        afterInit()
        replying(req) { () throws(Errno) in
            let handle = try view.open(ino, flags: fi.pointee.flags, as: credentials(req))
            fi.pointee.fh = Self.handleValue(handle)
            setOpenReplyFlags(fi, directory: false)
            if fuse_reply_open(req, fi) != 0 {
                // The opener went away (interrupted): nobody will release this handle.
                if let h = Self.takeHandle(fi) { view.release(h) }
            }
        }
    }

    func create(_ req: fuse_req_t, _ parent: fuse_ino_t, _ cName: UnsafePointer<CChar>, _ mode: mode_t,
                _ fi: UnsafeMutablePointer<fuse_file_info>) {
        replying(req) { () throws(Errno) in
            let (attributes, handle) = try view.createOrOpen(parent, Self.name(cName), mode: mode, flags: fi.pointee.flags,
                                                             umask: umaskToApply(req), aclActive: aclActive.load(ordering: .relaxed),
                                                             as: credentials(req))
            fi.pointee.fh = Self.handleValue(handle)
            setOpenReplyFlags(fi, directory: false)
            var e = entry(attributes)
            if fuse_reply_create(req, &e, fi) != 0 {
                if let h = Self.takeHandle(fi) { view.release(h) }
            }
        }
    }

    func read(_ req: fuse_req_t, _ size: Int, _ offset: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let handle = Self.handle(fi) else { return reply(req, .badFileDescriptor) }
        guard offset >= 0 else { return reply(req, .invalidArgument) }
        replying(req) { () throws(Errno) in
            try view.withReadDescriptor(handle) { (fd: FileDescriptor?) throws(Errno) in
                guard let fd, size > 0 else {
                    fuse_reply_buf(req, nil, 0)
                    return
                }
                // Large reads: the kernel takes the bytes straight from the blob or private file
                // (splice). Small ones (small files, random 4 KiB reads) are cheaper copied once
                // through a per-thread buffer than sent through a pipe.
                _ = cfuse_reply_read(req, fd.rawValue, size, offset, Self.copiedReadLimit)
            }
        }
    }

    func write(_ req: fuse_req_t, _ buffer: UnsafePointer<CChar>?, _ size: Int, _ offset: off_t,
               _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let handle = Self.handle(fi) else { return reply(req, .badFileDescriptor) }
        replying(req) { () throws(Errno) in
            let n = try view.write(handle, offset: Int64(offset), from: UnsafeRawBufferPointer(start: buffer, count: size),
                                   as: credentials(req))
            fuse_reply_write(req, n)
        }
    }

    /// close(2) of one descriptor: POSIX says the closing process loses all its locks on the file.
    func flush(_ req: fuse_req_t, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        let everything = FileLockRange(type: .unlock, start: 0, end: .max, pid: 0)
        try? view.setLock(ino, owner: fi.pointee.lock_owner, range: everything, wait: false)
        replyOK(req)
    }

    func release(_ req: fuse_req_t, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        if cfuse_fi_flock_release(fi) != 0 {
            let everything = FileLockRange(type: .unlock, start: 0, end: .max, pid: 0)
            try? view.setLock(Self.flockKey(ino), owner: fi.pointee.lock_owner, range: everything, wait: false)
        }
        if let handle = Self.takeHandle(fi) { view.release(handle) }
        replyOK(req)
    }

    func fsync(_ req: fuse_req_t, _ ino: fuse_ino_t, _ dataOnly: Bool, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        replyOK(req) { () throws(Errno) in
            try view.sync(ino, handle: Self.handle(fi), dataOnly: dataOnly)
        }
    }

    func fallocate(_ req: fuse_req_t, _ ino: fuse_ino_t, _ mode: Int32, _ offset: off_t, _ length: off_t,
                   _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let handle = Self.handle(fi) else { return reply(req, .badFileDescriptor) }
        replyOK(req) { () throws(Errno) in
            try view.allocate(handle, mode: mode, offset: Int64(offset), length: Int64(length), as: credentials(req))
        }
    }

    func copyFileRange(_ req: fuse_req_t, _ inputOffset: off_t, _ input: UnsafeMutablePointer<fuse_file_info>?,
                       _ outputOffset: off_t, _ output: UnsafeMutablePointer<fuse_file_info>?, _ length: Int, _ flags: Int32) {
        guard flags == 0 else { return reply(req, .invalidArgument) }
        guard let source = Self.handle(input), let destination = Self.handle(output) else { return reply(req, .badFileDescriptor) }
        replying(req) { () throws(Errno) in
            let n = try view.copyRange(from: source, at: Int64(inputOffset), to: destination, at: Int64(outputOffset),
                                       length: min(length, 1 << 30), as: credentials(req))
            fuse_reply_write(req, n)
        }
    }

    /// SEEK_DATA and SEEK_HOLE, answered from the host file (the kernel handles the other whences).
    func lseek(_ req: fuse_req_t, _ ino: fuse_ino_t, _ offset: off_t, _ whence: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard whence == CFUSE_SEEK_DATA || whence == CFUSE_SEEK_HOLE else { return reply(req, .invalidArgument) }
        guard offset >= 0 else { return reply(req, .noSuchAddressOrDevice) }
        guard var handle = Self.handle(fi) else { return reply(req, .badFileDescriptor) }
        var temporary: OpenFile?
        if handle.flags & O_ACCMODE == O_WRONLY {
            // A write-only descriptor may seek too; the engine reads only through readable handles.
            do throws(Errno) {
                temporary = try view.open(ino, flags: O_RDONLY, as: .root)
                handle = temporary!
            } catch {
                return reply(req, error)
            }
        }
        defer { if let temporary { view.release(temporary) } }
        replying(req) { () throws(Errno) in
            let result: off_t = try view.withReadDescriptor(handle) { (fd: FileDescriptor?) throws(Errno) -> off_t in
                guard let fd else { throw Errno.noSuchAddressOrDevice }  // empty: no data, no hole before EOF
                return try retryingSyscall { Glibc.lseek(fd.rawValue, offset, whence) }
            }
            fuse_reply_lseek(req, result)
        }
    }
}

// MARK: - Directories

extension FuseFilesystem {
    func opendir(_ req: fuse_req_t, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        replying(req) { () throws(Errno) in
            let handle = try view.open(ino, flags: O_RDONLY | O_DIRECTORY, as: credentials(req))
            let attributes = try view.getAttributes(ino)
            openDirectories.withLock { table in
                table[ino] = ((table[ino]?.count ?? 0) + 1, attributes)
            }
            fi.pointee.fh = Self.handleValue(handle)
            setOpenReplyFlags(fi, directory: true)
            if fuse_reply_open(req, fi) != 0 {
                if let h = Self.takeHandle(fi) { closeDirectory(h) }
            }
        }
    }

    func releasedir(_ req: fuse_req_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        if let handle = Self.takeHandle(fi) { closeDirectory(handle) }
        replyOK(req)
    }

    private func closeDirectory(_ handle: OpenFile) {
        openDirectories.withLock { table in
            guard let entry = table[handle.inode] else { return }
            table[handle.inode] = entry.count > 1 ? (entry.count - 1, entry.attributes) : nil
        }
        view.release(handle)
    }

    /// readdir and readdirplus: entries after the engine's cookie `offset`, each carrying its
    /// own cookie as the offset to resume after it.
    func readdir(_ req: fuse_req_t, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t, plus: Bool) {
        guard offset >= 0 else { return reply(req, .invalidArgument) }
        let entries: [DirectoryEntry]
        do throws(Errno) {
            // Small entries take 24-32 bytes; ask for what could fit and stop where it is full.
            entries = try view.readDirectory(ino, after: UInt64(offset), limit: max(8, size / 24), as: credentials(req))
        } catch where error == .noSuchFileOrDirectory && openDirectories.withLock({ $0[ino] != nil }) {
            // Removed while open: an empty listing, as Linux gives.
            fuse_reply_buf(req, nil, 0)
            return
        } catch {
            return reply(req, error)
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 8)
        defer { buffer.deallocate() }
        var used = 0
        var name = [CChar](repeating: 0, count: 256 + 1)
        for item in entries {
            guard item.name.count <= 255 else { continue }
            name.withUnsafeMutableBufferPointer { b in
                item.name.withUnsafeBufferPointer { src in
                    UnsafeMutableRawPointer(b.baseAddress!).copyMemory(from: src.baseAddress!, byteCount: src.count)
                }
                b[item.name.count] = 0
            }
            let remaining = size - used
            let needed: Int
            let isDots = item.name == [0x2e] || item.name == [0x2e, 0x2e]
            if plus {
                var e = fuse_entry_param()
                if isDots {
                    // Not a lookup: the kernel takes only the type and number of "." and "..".
                    e.attr.st_ino = ino_t(item.inode)
                    e.attr.st_mode = item.kind.modeBits
                } else {
                    guard let a = try? view.getAttributes(item.inode) else { continue }
                    e = entry(a)
                }
                needed = name.withUnsafeBufferPointer { n in
                    fuse_add_direntry_plus(req, buffer.advanced(by: used).assumingMemoryBound(to: CChar.self), remaining,
                                           n.baseAddress, &e, off_t(item.cookie))
                }
            } else {
                var st = Glibc.stat()
                st.st_ino = ino_t(item.inode)
                st.st_mode = item.kind.modeBits
                needed = name.withUnsafeBufferPointer { n in
                    fuse_add_direntry(req, buffer.advanced(by: used).assumingMemoryBound(to: CChar.self), remaining,
                                      n.baseAddress, &st, off_t(item.cookie))
                }
            }
            if needed > remaining { break }
            used += needed
        }
        fuse_reply_buf(req, buffer.assumingMemoryBound(to: CChar.self), used)
    }

    func fsyncdir(_ req: fuse_req_t, _ ino: fuse_ino_t, _ dataOnly: Bool) {
        replyOK(req) { () throws(Errno) in
            try view.sync(ino, handle: nil, dataOnly: dataOnly)
        }
    }
}

// MARK: - Extended attributes

extension FuseFilesystem {
    static let trustedPrefix: [UInt8] = Array("trusted.".utf8)

    /// Answers an xattr read the way getxattr(2) and listxattr(2) size probes expect.
    func replyXattrValue(_ req: fuse_req_t, _ value: [UInt8], size: Int) {
        if size == 0 {
            fuse_reply_xattr(req, value.count)
        } else if value.count > size {
            reply(req, .outOfRange)
        } else {
            value.withUnsafeBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { _ = fuse_reply_buf(req, $0.baseAddress, $0.count) }
            }
        }
    }

    func getxattr(_ req: fuse_req_t, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>, _ size: Int) {
        replying(req) { () throws(Errno) in
            replyXattrValue(req, try view.getXattr(ino, Self.name(name), as: credentials(req)), size: size)
        }
    }

    func listxattr(_ req: fuse_req_t, _ ino: fuse_ino_t, _ size: Int) {
        replying(req) { () throws(Errno) in
            // trusted.* is listed only to root, as ext4 and tmpfs do.
            let showTrusted = fuse_req_ctx(req)!.pointee.uid == 0
            var list: [UInt8] = []
            for name in try view.listXattrs(ino, as: credentials(req)) {
                if !showTrusted && name.starts(with: Self.trustedPrefix) { continue }
                list.append(contentsOf: name)
                list.append(0)
            }
            replyXattrValue(req, list, size: size)
        }
    }

    func setxattr(_ req: fuse_req_t, _ ino: fuse_ino_t, _ cName: UnsafePointer<CChar>, _ value: UnsafePointer<CChar>?,
                  _ size: Int, _ flags: Int32) {
        let name = Self.name(cName)
        let bytes = Array(UnsafeRawBufferPointer(start: value, count: value == nil ? 0 : size))
        let mode: XattrSetMode
        switch flags {
        case 0: mode = .createOrReplace
        case CFUSE_XATTR_CREATE: mode = .createOnly
        case CFUSE_XATTR_REPLACE: mode = .replaceOnly
        default: return reply(req, .invalidArgument)
        }
        replyOK(req) { () throws(Errno) in
            if name == PosixACL.accessName, aclActive.load(ordering: .relaxed) {
                try view.setAccessACL(ino, bytes, mode: mode, as: credentials(req),
                                      clearsSetGID: { !callerIsMember(req, of: $0) })
            } else {
                try view.setXattr(ino, name, bytes, mode: mode, as: credentials(req))
            }
        }
    }

    func removexattr(_ req: fuse_req_t, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>) {
        replyOK(req) { () throws(Errno) in
            try view.removeXattr(ino, Self.name(name), as: credentials(req))
        }
    }
}

// MARK: - Locks

extension FuseFilesystem {
    /// flock(2) locks live apart from POSIX locks (on Linux the two never conflict): they are kept
    /// in the lock table under the inode number with the top bit set, which no inode has.
    static func flockKey(_ ino: fuse_ino_t) -> InodeNumber { ino | (1 << 63) }

    static func range(_ lock: flock) -> FileLockRange? {
        guard let type = LockType(fcntlCode: lock.l_type) else { return nil }
        guard lock.l_start >= 0, lock.l_len >= 0 else { return nil }
        let start = UInt64(lock.l_start)
        let end: UInt64 = lock.l_len == 0 ? .max : start &+ UInt64(lock.l_len) &- 1
        return FileLockRange(type: type, start: start, end: max(end, start), pid: UInt32(bitPattern: lock.l_pid))
    }

    func getlk(_ req: fuse_req_t, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>, _ lock: UnsafeMutablePointer<flock>) {
        guard let range = Self.range(lock.pointee) else { return reply(req, .invalidArgument) }
        var out = lock.pointee
        if let conflict = view.testLock(ino, owner: fi.pointee.lock_owner, range: range) {
            out.l_type = Int16(conflict.type == .read ? F_RDLCK : F_WRLCK)
            out.l_whence = Int16(SEEK_SET)
            out.l_start = off_t(clamping: conflict.start)
            out.l_len = conflict.end >= UInt64(Int64.max) ? 0 : off_t(clamping: conflict.end - conflict.start + 1)
            out.l_pid = pid_t(bitPattern: conflict.pid)
        } else {
            out.l_type = Int16(F_UNLCK)
        }
        fuse_reply_lock(req, &out)
    }

    func setlk(_ req: fuse_req_t, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>,
               _ lock: UnsafeMutablePointer<flock>, _ sleep: Bool) {
        guard let range = Self.range(lock.pointee) else { return reply(req, .invalidArgument) }
        replyOK(req) { () throws(Errno) in
            try view.setLock(ino, owner: fi.pointee.lock_owner, range: range, wait: sleep,
                             cancelled: { fuse_req_interrupted(req) != 0 })
        }
    }

    func flock(_ req: fuse_req_t, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>, _ op: Int32) {
        let type: LockType
        switch op & ~LOCK_NB {
        case LOCK_SH: type = .read
        case LOCK_EX: type = .write
        case LOCK_UN: type = .unlock
        default: return reply(req, .invalidArgument)
        }
        let pid = UInt32(bitPattern: fuse_req_ctx(req)!.pointee.pid)
        do throws(Errno) {
            try view.setLock(Self.flockKey(ino), owner: fi.pointee.lock_owner,
                             range: FileLockRange(type: type, start: 0, end: .max, pid: pid),
                             wait: op & LOCK_NB == 0, cancelled: { fuse_req_interrupted(req) != 0 })
            replyOK(req)
        } catch where error == .resourceTemporarilyUnavailable {
            reply(req, .wouldBlock)
        } catch {
            reply(req, error)
        }
    }
}
