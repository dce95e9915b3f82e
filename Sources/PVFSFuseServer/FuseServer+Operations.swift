import Foundation
import Glibc
import PVFSEngine
import PVFSFuseCodec
import PVFSSystem
import SystemPackage

// Each FUSE request mapped onto VMView. Errors are thrown as `Errno` and answered as -errno.

extension FuseServer {
    // Linux ABI values Glibc's module does not export.
    static let seekData: UInt32 = 3
    static let seekHole: UInt32 = 4
    static let xattrCreate: Int32 = 1
    static let xattrReplace: Int32 = 2

    // MARK: Replies

    static func split(_ seconds: Double) -> (UInt64, UInt32) {
        guard seconds.isFinite, seconds > 0 else { return (0, 0) }
        let clamped = min(seconds, 1e12)
        let whole = clamped.rounded(.down)
        return (UInt64(whole), UInt32(min(999_999_999, ((clamped - whole) * 1e9).rounded(.down))))
    }

    static func fuseAttr(_ a: Attributes) -> FuseAttr {
        var f = FuseAttr()
        f.ino = a.inode
        f.size = UInt64(max(0, a.size))
        f.blocks = UInt64(max(0, a.blocks))
        f.atime = UInt64(bitPattern: a.accessTime.seconds)
        f.mtime = UInt64(bitPattern: a.modificationTime.seconds)
        f.ctime = UInt64(bitPattern: a.changeTime.seconds)
        f.atimensec = UInt32(clamping: a.accessTime.nanoseconds)
        f.mtimensec = UInt32(clamping: a.modificationTime.nanoseconds)
        f.ctimensec = UInt32(clamping: a.changeTime.nanoseconds)
        f.mode = a.mode
        f.nlink = a.linkCount
        f.uid = a.uid
        f.gid = a.gid
        // The kernel's 32-bit device encoding, which is the low half of glibc's dev_t for the
        // numbers it can hold (as libfuse passes st_rdev).
        f.rdev = UInt32(truncatingIfNeeded: a.rdev)
        f.blksize = a.blockSize
        return f
    }

    func entryOut(_ a: Attributes) -> FuseEntryOut {
        var e = FuseEntryOut()
        e.nodeID = a.inode
        e.generation = a.generation
        (e.entryValid, e.entryValidNsec) = Self.split(configuration.entryTimeout)
        (e.attrValid, e.attrValidNsec) = Self.split(configuration.attributeTimeout)
        e.attr = Self.fuseAttr(a)
        return e
    }

    /// EMFILE-like refusal before an operation that hands out a new node, so that no object is
    /// made that could not be answered.
    func requireNodeRoom() throws(Errno) {
        let limit = configuration.limits.nodes
        let count = state.withLock { $0.nodes.count }
        guard count < limit else {
            limitReached(.nodes, "the client holds \(count) of \(limit) inodes")
            throw Errno.tooManyOpenFilesInSystem
        }
    }

    /// Counts the lookup the reply hands out, then sends it. `force`: the object exists already
    /// (made by this request), so it is counted even past the limit (by at most the requests
    /// running at once).
    func replyEntry(_ r: Request, _ a: Attributes, force: Bool = false) {
        let limit = configuration.limits.nodes
        let admitted = state.withLock { $0.nodes.add(a.inode, limit: limit, force: force) }
        guard admitted else {
            limitReached(.nodes, "the client holds \(limit) inodes; lookup refused")
            r.fail(.tooManyOpenFilesInSystem)
            return
        }
        r.reply { entryOut(a).encode(into: &$0) }
    }

    func replyAttributes(_ r: Request, _ a: Attributes) {
        var out = FuseAttrOut()
        (out.attrValid, out.attrValidNsec) = Self.split(configuration.attributeTimeout)
        out.attr = Self.fuseAttr(a)
        r.reply { out.encode(into: &$0) }
    }

    /// The bytes a reply may hold: what the client asked, the transport can carry and the
    /// session's bound allows.
    func replyRoom(_ r: Request, asked: Int) -> Int {
        let bound = configuration.limits.replyBytes - FuseProtocol.outHeaderSize
        if asked > bound { limitReached(.replyBytes, "a request asked for \(asked) bytes; answered with at most \(bound)") }
        return max(0, min(asked, bound, r.sink.capacity - FuseProtocol.outHeaderSize))
    }

    func handle(_ handle: UInt64, directory: Bool? = nil) throws(Errno) -> OpenFile {
        guard let slot = state.withLock({ $0.handles.get(handle) }), let file = slot.file else { throw Errno.badFileDescriptor }
        if let directory, slot.directory != directory { throw Errno.badFileDescriptor }
        return file
    }

    // MARK: Names and attributes

    func lookup(_ r: Request, _ name: [UInt8]) throws(Errno) {
        try requireHeld(r.node)
        // "." and ".." come only from clients that export the mount; answered all the same.
        let target: InodeNumber?
        if FileName.isDot(name) {
            target = r.node
        } else if FileName.isDotDot(name) {
            target = try view.parent(of: r.node)
        } else {
            target = nil
        }
        do throws(Errno) {
            let a = if let target { try view.getAttributes(target) } else { try view.lookup(r.node, name, as: credentials(r)) }
            replyEntry(r, a)
        } catch where error == .noSuchFileOrDirectory && configuration.negativeTimeout > 0 {
            // A negative entry: the client remembers the name is absent (node id 0, not counted).
            var e = FuseEntryOut()
            (e.entryValid, e.entryValidNsec) = Self.split(configuration.negativeTimeout)
            r.reply { e.encode(into: &$0) }
        }
    }

    func getattr(_ r: Request, flags: UInt32, handle fh: UInt64) throws(Errno) {
        var node = r.node
        if flags & FuseMiscFlags.getattrHandle != 0 {
            node = try handle(fh).inode
        } else {
            try requireHeld(node)
        }
        do throws(Errno) {
            replyAttributes(r, try view.getAttributes(node))
        } catch where error == .noSuchFileOrDirectory {
            guard var removed = state.withLock({ $0.openDirectories[node]?.attributes }) else { throw error }
            removed.linkCount = 0
            replyAttributes(r, removed)
        }
    }

    func setattr(_ r: Request, _ s: FuseSetattrIn) throws(Errno) {
        try requireHeld(r.node)
        var changes = AttributeChanges()
        if s.valid & FuseSetattrValid.mode != 0 { changes.mode = s.mode & permissionBitsMask }
        if s.valid & FuseSetattrValid.uid != 0 { changes.uid = s.uid }
        if s.valid & FuseSetattrValid.gid != 0 { changes.gid = s.gid }
        if s.valid & FuseSetattrValid.size != 0 {
            guard let size = Int64(exactly: s.size) else { throw Errno.fileTooLarge }
            changes.size = size
        }
        if s.valid & FuseSetattrValid.atimeNow != 0 {
            changes.accessTime = .now
        } else if s.valid & FuseSetattrValid.atime != 0 {
            changes.accessTime = .set(try Self.time(s.atime, s.atimensec))
        }
        if s.valid & FuseSetattrValid.mtimeNow != 0 {
            changes.modificationTime = .now
        } else if s.valid & FuseSetattrValid.mtime != 0 {
            changes.modificationTime = .set(try Self.time(s.mtime, s.mtimensec))
        }
        var file: OpenFile?
        if s.valid & FuseSetattrValid.handle != 0 {
            file = try handle(s.handle, directory: false)
        }
        if changes.isEmpty {
            // Only a ctime the client keeps itself: nothing to store.
            return replyAttributes(r, try view.getAttributes(r.node))
        }
        var result = try view.setAttributes(r.node, changes, handle: file, as: credentials(r))
        if let mode = changes.mode, r.negotiation.aclActive {
            result = try view.followModeInAccessACL(r.node, mode: mode, attributes: result)
        }
        replyAttributes(r, result)
    }

    static func time(_ seconds: UInt64, _ nanoseconds: UInt32) throws(Errno) -> Timespec {
        guard nanoseconds < 1_000_000_000 else { throw Errno.invalidArgument }
        return Timespec(seconds: Int64(bitPattern: seconds), nanoseconds: Int64(nanoseconds))
    }

    /// The umask for a new inode: nil where the client applied it already.
    func umaskToApply(_ r: Request, _ umask: UInt32) -> UInt32? {
        r.negotiation.umaskIsOurs ? umask : nil
    }

    func mknod(_ r: Request, mode: UInt32, rdev: UInt32, umask: UInt32, name: [UInt8]) throws(Errno) {
        try requireHeld(r.node)
        try requireNodeRoom()
        let a = try view.makeNode(r.node, name, mode: mode, rdev: UInt64(rdev), umask: umaskToApply(r, umask),
                                  aclActive: r.negotiation.aclActive, as: credentials(r))
        replyEntry(r, a, force: true)
    }

    func mkdir(_ r: Request, mode: UInt32, umask: UInt32, name: [UInt8]) throws(Errno) {
        try requireHeld(r.node)
        try requireNodeRoom()
        let a = try view.makeDirectory(r.node, name, mode: mode, umask: umaskToApply(r, umask),
                                       aclActive: r.negotiation.aclActive, as: credentials(r))
        replyEntry(r, a, force: true)
    }

    func statfs(_ r: Request) {
        let s = view.statistics()
        var out = FuseStatfsOut()
        out.blocks = s.totalBlocks
        out.bfree = s.freeBlocks
        out.bavail = s.availableBlocks
        out.files = s.totalFiles
        out.ffree = s.freeFiles
        out.bsize = UInt32(clamping: s.blockSize)
        out.namelen = UInt32(clamping: s.maximumNameLength)
        out.frsize = UInt32(clamping: s.fragmentSize)
        r.reply { out.encode(into: &$0) }
    }

    // MARK: Files

    func openReplyFlags(directory: Bool) -> UInt32 {
        var flags: UInt32 = 0
        if configuration.keepCache { flags |= directory ? FuseOpenReplyFlags.cacheDirectory | FuseOpenReplyFlags.keepCache : FuseOpenReplyFlags.keepCache }
        // FLUSH at each close only drops the closer's locks in the engine's table; with the
        // client's kernel keeping locks it is a round trip for nothing (no writeback cache, so no
        // dirty pages at close either).
        if !directory && configuration.locksInKernel { flags |= FuseOpenReplyFlags.noFlush }
        return flags
    }

    /// Puts an open file in the table and answers with its handle; a full table closes it again.
    func insertHandle(_ file: OpenFile, directory: Bool) throws(Errno) -> UInt64 {
        let limit = configuration.limits.openHandles
        guard let fh = state.withLock({ $0.handles.insert(file, directory: directory, limit: limit) }) else {
            view.release(file)
            limitReached(.openHandles, "\(limit) files and directories open")
            throw Errno.tooManyOpenFilesInSystem
        }
        return fh
    }

    func open(_ r: Request, flags: UInt32) throws(Errno) {
        try requireHeld(r.node)
        let file = try view.open(r.node, flags: Int32(bitPattern: flags), as: credentials(r))
        let fh = try insertHandle(file, directory: false)
        r.reply { FuseOpenOut(handle: fh, openFlags: openReplyFlags(directory: false)).encode(into: &$0) }
    }

    func opendir(_ r: Request) throws(Errno) {
        try requireHeld(r.node)
        let file = try view.open(r.node, flags: O_RDONLY | O_DIRECTORY, as: credentials(r))
        let attributes: Attributes
        do throws(Errno) {
            attributes = try view.getAttributes(r.node)
        } catch {
            view.release(file)
            throw error
        }
        let fh = try insertHandle(file, directory: true)
        state.withLock { s in
            s.openDirectories[r.node] = ((s.openDirectories[r.node]?.count ?? 0) + 1, attributes)
        }
        r.reply { FuseOpenOut(handle: fh, openFlags: openReplyFlags(directory: true)).encode(into: &$0) }
    }

    func create(_ r: Request, _ input: FuseCreateIn, name: [UInt8]) throws(Errno) {
        try requireHeld(r.node)
        try requireNodeRoom()
        let (attributes, file) = try view.createOrOpen(r.node, name, mode: input.mode, flags: Int32(bitPattern: input.flags),
                                                       umask: umaskToApply(r, input.umask), aclActive: r.negotiation.aclActive,
                                                       as: credentials(r))
        let fh = try insertHandle(file, directory: false)
        let limit = configuration.limits.nodes
        _ = state.withLock { $0.nodes.add(attributes.inode, limit: limit, force: true) }
        let entry = entryOut(attributes)
        r.reply { w in
            entry.encode(into: &w)
            FuseOpenOut(handle: fh, openFlags: openReplyFlags(directory: false)).encode(into: &w)
        }
    }

    func read(_ r: Request, _ input: FuseReadIn) throws(Errno) {
        let file = try handle(input.handle, directory: false)
        guard let offset = Int64(exactly: input.offset) else { throw Errno.invalidArgument }
        var count = replyRoom(r, asked: Int(input.size))
        if count > configuration.maximumRead { count = configuration.maximumRead }
        try view.withReadDescriptor(file) { (fd: FileDescriptor?) throws(Errno) in
            guard let fd, count > 0 else {
                r.ok()
                return
            }
            let sent = r.sink.sendRead(unique: r.unique, descriptor: fd.rawValue, offset: offset, count: count)
            if sent < 0 { throw Errno(rawValue: Int32(clamping: -sent)) }
        }
    }

    func write(_ r: Request, _ input: FuseWriteIn, dataOffset: Int) throws(Errno) {
        let file = try handle(input.handle, directory: false)
        guard let offset = Int64(exactly: input.offset) else { throw Errno.fileTooLarge }
        let size = Int(input.size)
        guard dataOffset >= 0, size <= r.message.count - dataOffset else { throw Errno.invalidArgument }
        let data = UnsafeRawBufferPointer(rebasing: r.message[dataOffset..<(dataOffset + size)])
        let n = try view.write(file, offset: offset, from: data, as: credentials(r))
        r.reply { w in
            w.u32(UInt32(clamping: n))
            w.u32(0)
        }
    }

    func release(_ r: Request, _ input: FuseReleaseIn, directory: Bool) {
        guard let slot = state.withLock({ $0.handles.remove(input.handle) }), let file = slot.file else {
            return r.fail(.badFileDescriptor)
        }
        if slot.directory {
            state.withLock { s in
                guard let entry = s.openDirectories[file.inode] else { return }
                s.openDirectories[file.inode] = entry.count > 1 ? (entry.count - 1, entry.attributes) : nil
            }
        } else if input.releaseFlags & FuseMiscFlags.releaseFlockUnlock != 0 {
            let everything = FileLockRange(type: .unlock, start: 0, end: .max, pid: 0)
            try? view.setLock(Self.flockKey(file.inode), owner: input.lockOwner, range: everything, wait: false)
        }
        view.release(file)
        r.ok()
    }

    /// syncfs(2): every file this session has open, then the catalog.
    func syncfs() throws(Errno) {
        let files = state.withLock { $0.handles.openFiles }
        for file in files where file.isWritable {
            try view.sync(file.inode, handle: file, dataOnly: false)
        }
        try view.sync(rootInode, handle: nil, dataOnly: false)
    }

    /// SEEK_DATA and SEEK_HOLE, answered from the host file (the client handles the other whences).
    func lseek(_ r: Request, handle fh: UInt64, offset: UInt64, whence: UInt32) throws(Errno) {
        guard whence == Self.seekData || whence == Self.seekHole else { throw Errno.invalidArgument }
        guard let start = Int64(exactly: offset) else { throw Errno.noSuchAddressOrDevice }
        var file = try handle(fh, directory: false)
        var temporary: OpenFile?
        if file.flags & O_ACCMODE == O_WRONLY {
            // A write-only descriptor may seek too; the engine reads only through readable handles.
            temporary = try view.open(file.inode, flags: O_RDONLY, as: .root)
            if let temporary { file = temporary }
        }
        defer { if let temporary { view.release(temporary) } }
        let result: off_t = try view.withReadDescriptor(file) { (fd: FileDescriptor?) throws(Errno) -> off_t in
            guard let fd else { throw Errno.noSuchAddressOrDevice }  // empty: no data, no hole before EOF
            return try retryingSyscall { Glibc.lseek(fd.rawValue, off_t(start), Int32(whence)) }
        }
        r.reply { w in w.u64(UInt64(max(0, result))) }
    }

    func copyFileRange(_ r: Request, _ input: FuseCopyFileRangeIn) throws(Errno) {
        guard input.flags == 0 else { throw Errno.invalidArgument }
        let source = try handle(input.handleIn, directory: false)
        let destination = try handle(input.handleOut, directory: false)
        guard let from = Int64(exactly: input.offsetIn), let to = Int64(exactly: input.offsetOut) else { throw Errno.invalidArgument }
        let length = Int(min(input.length, 1 << 30))
        let n = try view.copyRange(from: source, at: from, to: destination, at: to, length: length, as: credentials(r))
        r.reply { w in
            w.u32(UInt32(clamping: n))
            w.u32(0)
        }
    }

    // MARK: Directories

    /// READDIR and READDIRPLUS: entries after the engine's cookie `offset`, each carrying its
    /// own cookie as the offset to resume after it.
    func readdir(_ r: Request, _ input: FuseReadIn, plus: Bool) throws(Errno) {
        let directory = try handle(input.handle, directory: true).inode
        let room = replyRoom(r, asked: Int(input.size))
        let entries: [DirectoryEntry]
        do throws(Errno) {
            // Small entries take 24-32 bytes (plus 128 with attributes): ask for what could fit.
            let limit = max(8, room / (plus ? 152 : 24))
            entries = try view.readDirectory(directory, after: input.offset, limit: limit, as: credentials(r))
        } catch where error == .noSuchFileOrDirectory && state.withLock({ $0.openDirectories[directory] != nil }) {
            // Removed while open: an empty listing, as Linux gives.
            return r.ok()
        }
        var w = FuseReplyWriter(unique: r.unique, capacity: min(room, 64 << 10) + FuseProtocol.outHeaderSize)
        let nodeLimit = configuration.limits.nodes
        for item in entries {
            guard item.name.count <= FileName.maximumLength, !item.name.isEmpty else { continue }
            let dirent = FuseDirent(ino: item.inode, offset: item.cookie, type: UInt32(item.kind.direntType), name: item.name)
            if plus {
                guard w.payloadCount + FuseDirent.plusRecordSize(nameLength: item.name.count) <= room else { break }
                var entry = FuseEntryOut()
                if FileName.isDot(item.name) || FileName.isDotDot(item.name) {
                    // Not a lookup: the client takes only the type and number of "." and "..".
                    entry.attr.ino = item.inode
                    entry.attr.mode = item.kind.modeBits
                } else if let a = try? view.getAttributes(item.inode) {
                    if state.withLock({ $0.nodes.add(a.inode, limit: nodeLimit) }) {
                        entry = entryOut(a)
                    } else {
                        // Table full: the entry without attributes; the client looks it up if it must.
                        limitReached(.nodes, "the client holds \(nodeLimit) inodes; readdirplus without attributes")
                        entry.attr.ino = item.inode
                        entry.attr.mode = item.kind.modeBits
                    }
                } else {
                    continue
                }
                entry.encode(into: &w.writer)
            } else {
                guard w.payloadCount + FuseDirent.recordSize(nameLength: item.name.count) <= room else { break }
            }
            dirent.encode(into: &w.writer)
        }
        r.sink.send(w.finish())
    }

    // MARK: Extended attributes

    static let trustedPrefix: [UInt8] = Array("trusted.".utf8)

    /// Answers an xattr read the way getxattr(2) and listxattr(2) size probes expect.
    func replyXattr(_ r: Request, _ value: [UInt8], size: UInt32) {
        if size == 0 {
            r.reply { w in
                w.u32(UInt32(clamping: value.count))
                w.u32(0)
            }
        } else if value.count > Int(size) || value.count > replyRoom(r, asked: Int(size)) {
            r.fail(.outOfRange)
        } else {
            r.reply { $0.data(value) }
        }
    }

    func listxattr(_ r: Request, size: UInt32) throws(Errno) {
        try requireHeld(r.node)
        // trusted.* is listed only to root, as ext4 and tmpfs do.
        let showTrusted = r.header.uid == 0
        var list: [UInt8] = []
        for name in try view.listXattrs(r.node, as: credentials(r)) {
            if !showTrusted && name.starts(with: Self.trustedPrefix) { continue }
            list.append(contentsOf: name)
            list.append(0)
        }
        replyXattr(r, list, size: size)
    }

    func setxattr(_ r: Request, flags: UInt32, setxattrFlags: UInt32, name: [UInt8], value: [UInt8]) throws(Errno) {
        try requireHeld(r.node)
        let mode: XattrSetMode
        switch Int32(bitPattern: flags) {
        case 0: mode = .createOrReplace
        case Self.xattrCreate: mode = .createOnly
        case Self.xattrReplace: mode = .replaceOnly
        default: throw Errno.invalidArgument
        }
        if name == PosixACL.accessName, r.negotiation.aclActive {
            // With FUSE_SETXATTR_EXT the client says whether set-group-id goes; without it the
            // server decides from the caller's groups.
            let clientVerdict = r.negotiation.extendedSetxattr ? setxattrFlags & FuseMiscFlags.setxattrACLKillSGID != 0 : nil
            try view.setAccessACL(r.node, value, mode: mode, as: credentials(r),
                                  clearsSetGID: { clientVerdict ?? !callerIsMember(r, of: $0) })
        } else {
            try view.setXattr(r.node, name, value, mode: mode, as: credentials(r))
        }
        r.ok()
    }

    // MARK: Locks

    /// flock(2) locks live apart from POSIX locks (on Linux the two never conflict): they are
    /// kept in the lock table under the inode number with the top bit set, which no inode has.
    static func flockKey(_ ino: InodeNumber) -> InodeNumber { ino | (1 << 63) }

    /// The engine's range for a FUSE lock: the client's "to the end" (Int64.max) is the
    /// engine's UInt64.max, so that 9P's and FUSE's whole-file locks are one range.
    static func range(_ lock: FuseFileLock) throws(Errno) -> FileLockRange {
        guard let type = LockType(fcntlCode: lock.type) else { throw Errno.invalidArgument }
        guard lock.start <= lock.end, lock.start <= FuseFileLock.offsetMax else { throw Errno.invalidArgument }
        let end = lock.end >= FuseFileLock.offsetMax ? UInt64.max : lock.end
        return FileLockRange(type: type, start: lock.start, end: end, pid: lock.pid)
    }

    func getlk(_ r: Request, _ input: FuseLockIn) throws(Errno) {
        let file = try handle(input.handle, directory: false)
        let range = try Self.range(input.lock)
        var out = input.lock
        if let conflict = view.testLock(file.inode, owner: input.owner, range: range) {
            out.type = conflict.type == .read ? FuseFileLock.readLock : FuseFileLock.writeLock
            out.start = min(conflict.start, FuseFileLock.offsetMax)
            out.end = min(conflict.end, FuseFileLock.offsetMax)
            out.pid = conflict.pid
        } else {
            out.type = FuseFileLock.unlock
        }
        r.reply { out.encode(into: &$0) }
    }

    func setlk(_ r: Request, _ input: FuseLockIn, wait: Bool) throws(Errno) {
        let file = try handle(input.handle)
        let isFlock = input.lockFlags & FuseMiscFlags.lockFlock != 0
        var range = try Self.range(input.lock)
        var key = file.inode
        if isFlock {
            key = Self.flockKey(file.inode)
            range.start = 0
            range.end = .max
            range.pid = r.header.pid
        }
        do throws(Errno) {
            try view.setLock(key, owner: input.owner, range: range, wait: false)
            return r.ok()
        } catch where error == .resourceTemporarilyUnavailable || error == .wouldBlock {
            guard wait else { throw Errno.resourceTemporarilyUnavailable }
        }
        try waitForLock(r, key: key, owner: input.owner, range: range)
    }

    /// A SETLKW that must wait: on a thread of its own, until the lock is granted, the client
    /// interrupts it (EINTR) or the session ends.
    private func waitForLock(_ r: Request, key: InodeNumber, owner: UInt64, range: FileLockRange) throws(Errno) {
        let waiter = LockWait(unique: r.unique)
        let limit = configuration.limits.lockWaits
        let admitted = state.withLock { s -> Bool in
            guard s.lockWaits.count < limit else { return false }
            s.lockWaits[r.unique] = waiter
            if let i = s.earlyInterrupts.firstIndex(of: r.unique) {
                s.earlyInterrupts.remove(at: i)
                waiter.cancel()
            }
            return true
        }
        guard admitted else {
            limitReached(.lockWaits, "\(limit) SETLKW requests waiting")
            throw Errno.noLocks
        }
        let sink = r.sink
        let unique = r.unique
        let thread = Thread { [self] in
            var outcome: Errno?
            do throws(Errno) {
                try view.setLock(key, owner: owner, range: range, wait: true, cancelled: { waiter.cancelled })
                if waiter.cancelled {
                    // Granted just as it was interrupted: the caller will not learn of it, so undo it.
                    try? view.setLock(key, owner: owner, range: FileLockRange(type: .unlock, start: range.start, end: range.end, pid: range.pid), wait: false)
                    outcome = .interrupted
                }
            } catch {
                outcome = error
            }
            state.withLock { _ = $0.lockWaits.removeValue(forKey: unique) }
            if let outcome {
                sink.send(FuseReplyWriter.error(unique: unique, errno: outcome.rawValue))
            } else {
                sink.send(FuseReplyWriter.empty(unique: unique))
            }
        }
        thread.name = "pvfs.fuse.lockwait"
        thread.stackSize = 256 << 10
        thread.start()
    }

    /// INTERRUPT: only a waiting SETLKW can be interrupted; other requests finish quickly anyway.
    func interrupt(_ unique: UInt64) {
        state.withLock { s in
            if let waiter = s.lockWaits[unique] {
                waiter.cancel()
            } else {
                s.earlyInterrupts.append(unique)
                if s.earlyInterrupts.count > 64 { s.earlyInterrupts.removeFirst() }
            }
        }
    }
}
