import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

/// Largest file a view accepts (ext4's limit with 4 KiB blocks): EFBIG past it.
let maximumFileSize: Int64 = 16 << 40

extension Volume {
    // MARK: Open and release

    /// The shared data state of `ino`, creating it and counting one more user. Caller holds metaLock.
    func retainData(_ ino: InodeNumber, _ r: InodeRecord) throws(Errno) -> InodeData {
        if let existing = openData[ino] {
            existing.openCount += 1
            return existing
        }
        let data: InodeData
        switch r.data {
        case .privateFile:
            let file = try openPrivateFile(ino)
            data = InodeData(inode: ino, file: file, size: try file.descriptor.stat().size)
        case .blob(let id):
            data = InodeData(inode: ino, file: try openBlob(id), size: r.size)
        case .none:
            data = InodeData(inode: ino, file: nil, size: 0)
        }
        data.openCount = 1
        openData[ino] = data
        return data
    }

    /// Drops one user of `ino`'s data state; the last one writes back pending times and sizes and
    /// removes an inode that lost its last link while open. Caller holds metaLock.
    func releaseData(_ data: InodeData) {
        data.openCount -= 1
        guard data.openCount <= 0 else { return }
        persistWrittenState(data.inode, data)
        openData[data.inode] = nil
        reapOrphan(data.inode, privateSize: data.size)
    }

    /// Removes `ino` if it has no links and no open handle: its record (a template inode keeps a
    /// tombstone), its private file and its charge. Caller holds metaLock.
    func reapOrphan(_ ino: InodeNumber, privateSize knownSize: Int64? = nil) {
        guard openData[ino] == nil, let r = record(ino), r.linkCount == 0 else { return }
        let size = r.data == .privateFile ? (knownSize ?? privateSize(ino)) : nil
        var edit = Edit()
        let charge = Charge.of(r, createdByVM: !isTemplateInode(ino), privateSize: size,
                               xattrBytes: r.privateXattrs ? Charge.xattrBytes(overlay.xattrs[ino] ?? [:]) : 0)
        edit.bytes = -charge.bytes
        edit.inodes = -charge.inodes
        if r.data == .privateFile {
            edit.removedFiles.append(ino)
            edit.removedBytes = charge.bytes
        }
        dirtyInodes.remove(ino)
        if isTemplateInode(ino) {
            var tombstone = r
            tombstone.data = .none
            tombstone.privateXattrs = false
            edit.records[ino] = tombstone
        } else {
            edit.changes.append(.deleteInode(ino))
        }
        do throws(Errno) {
            try apply(edit)
            keptOrphans.remove(ino)
        } catch {
            logger.error("cannot remove unlinked inode \(ino): \(error); the next open of the VM will")
        }
    }

    /// Unlinked inodes this volume keeps for open handles: those open now and those kept at open
    /// for handles of a previous process not yet opened again. A server handing its sessions to
    /// another process passes them to the new one's `open(…keepingOrphans:)`.
    public var openOrphans: Set<InodeNumber> {
        metaLock.lock()
        defer { metaLock.unlock() }
        var orphans = keptOrphans
        for ino in openData.keys where record(ino)?.linkCount == 0 { orphans.insert(ino) }
        return orphans
    }

    /// Removes the orphans kept at open that no handle opened again (the sessions that held them
    /// were not restored). Returns how many went.
    @discardableResult
    public func reapUnclaimedOrphans() -> Int {
        metaLock.lock()
        defer { metaLock.unlock() }
        let unclaimed = keptOrphans.filter { openData[$0] == nil }
        for ino in unclaimed { reapOrphan(ino) }
        keptOrphans.subtract(unclaimed)
        return unclaimed.count
    }

    /// Folds what writes changed (size, mtime, ctime) into the inode's record, to reach the
    /// catalog with the next flush (periodic, fsync, close). Caller holds metaLock.
    func persistWrittenState(_ ino: InodeNumber, _ data: InodeData) {
        data.lock.lock()
        let pending = data.pendingChangeTime
        data.pendingChangeTime = nil
        let size = data.size
        let file = data.file
        data.lock.unlock()
        guard let pending, var r = record(ino), r.data == .privateFile else { return }
        r.size = size
        if pending > r.changeTime { r.changeTime = pending }
        if let st = try? file?.descriptor.stat() {
            r.modificationTime = st.modificationTime
            r.blocks = st.blocks
        }
        // Kept lazily like other times: a crash may lose the times (the size is recovered from
        // the file itself), and a create+write+close costs one catalog transaction, not two.
        updateLazily(ino, r)
    }

    func open(_ ino: InodeNumber, flags: Int32, _ ctx: RequestContext) throws(Errno) -> OpenFile {
        try openHandle(ino, flags: flags, checkedFor: ctx)
    }

    /// open(2) of an existing inode. With `ctx`, as the client asks: the file must have a link,
    /// permissions and read-only sessions are checked, O_TRUNC truncates. Without (a file the
    /// client opened in a previous server process, `reopen`): none of that.
    private func openHandle(_ ino: InodeNumber, flags: Int32, checkedFor ctx: RequestContext?) throws(Errno) -> OpenFile {
        let access = flags & O_ACCMODE
        let wantsWrite = access == O_WRONLY || access == O_RDWR
        let truncate = flags & O_TRUNC != 0 && wantsWrite && ctx != nil
        metaLock.lock()
        let r: InodeRecord
        do throws(Errno) {
            // An unlinked inode opens by number only while kept for a previous process's
            // handles (or, reopened, while another handle holds it).
            guard let found = record(ino),
                  found.linkCount > 0 || keptOrphans.contains(ino) || (ctx == nil && openData[ino] != nil) else {
                throw Errno.noSuchFileOrDirectory
            }
            r = found
        } catch {
            metaLock.unlock()
            throw error
        }
        switch r.kind {
        case .directory:
            metaLock.unlock()
            if wantsWrite { throw Errno.isDirectory }
            if let ctx { try checkOpenPermission(ino, access: access, ctx) }
            return OpenFile(inode: ino, flags: flags, data: nil)
        case .symlink:
            metaLock.unlock()
            throw Errno.tooManySymbolicLinkLevels
        case .regular:
            break
        default:
            // Device nodes, fifos and sockets exist only as records: the server never opens them.
            metaLock.unlock()
            throw Errno.noSuchAddressOrDevice
        }
        if wantsWrite && ctx?.readOnly == true { metaLock.unlock(); throw Errno.readOnlyFileSystem }
        var mask: AccessMask = []
        if access == O_RDONLY || access == O_RDWR { mask.insert(.read) }
        if wantsWrite { mask.insert(.write) }
        let data: InodeData
        do throws(Errno) {
            if let ctx { try requirePermission(r, ctx, mask) }
            data = try retainData(ino, r)
        } catch {
            metaLock.unlock()
            throw error
        }
        if wantsWrite { data.writers += 1 }
        metaLock.unlock()
        let handle = OpenFile(inode: ino, flags: flags, data: data)
        do throws(Errno) {
            if wantsWrite {
                try copyUp(ino, data, contentUpTo: truncate ? 0 : nil)
            }
            if truncate, let ctx {
                try resize(ino, data, to: 0, ctx)
            }
        } catch {
            release(handle)
            throw error
        }
        return handle
    }

    /// `VMView.reopen`: see `openHandle` without a context.
    func reopen(_ ino: InodeNumber, flags: Int32) throws(Errno) -> OpenFile {
        try openHandle(ino, flags: flags, checkedFor: nil)
    }

    private func checkOpenPermission(_ ino: InodeNumber, access: Int32, _ ctx: RequestContext) throws(Errno) {
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireRecord(ino)
        try requirePermission(r, ctx, .read)
    }

    /// Creates a regular file and opens it: the atomic O_CREAT of 9P lcreate and FUSE create.
    func create(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, flags: Int32, _ ctx: RequestContext) throws(Errno) -> (Attributes, OpenFile) {
        metaLock.lock()
        let ino: InodeNumber
        let data: InodeData
        let attributes: Attributes
        do throws(Errno) {
            let (newIno, r, file) = try createInodeKeepingFile(parent, name, mode: FileKind.regular.modeBits | (mode & permissionBitsMask), ctx)
            ino = newIno
            if let file, openData[ino] == nil {
                data = InodeData(inode: ino, file: file, size: 0)
                data.openCount = 1
                openData[ino] = data
            } else {
                data = try retainData(ino, r)
            }
            let access = flags & O_ACCMODE
            if access == O_WRONLY || access == O_RDWR { data.writers += 1 }
            attributes = self.attributes(ino, r)
        } catch {
            metaLock.unlock()
            throw error
        }
        metaLock.unlock()
        return (attributes, OpenFile(inode: ino, flags: flags, data: data))
    }

    func release(_ handle: OpenFile) {
        metaLock.lock()
        defer { metaLock.unlock() }
        guard !handle.released else { return }
        handle.released = true
        // After close the handle's inode belongs to the catalog as close left it (an orphan kept
        // for the next process stays for it).
        guard !closed else { return }
        if let data = handle.data {
            if handle.writable { data.writers -= 1 }
            releaseData(data)
        }
    }

    // MARK: Copy-up

    /// Gives `ino` a private data file: a copy of its blob (or only its first `contentUpTo` bytes,
    /// 0 for an open with O_TRUNC). The copy is complete and fsync'd before the catalog points at
    /// it, so a crash leaves the old version or the new one, never a torn file.
    func copyUp(_ ino: InodeNumber, _ data: InodeData, contentUpTo limit: Int64?) throws(Errno) {
        data.copyUpLock.lock()
        defer { data.copyUpLock.unlock() }
        metaLock.lock()
        let r: InodeRecord
        do throws(Errno) {
            r = try requireRecord(ino)
        } catch {
            metaLock.unlock()
            throw error
        }
        metaLock.unlock()
        guard r.kind == .regular else { throw Errno.invalidArgument }
        if r.data == .privateFile { return }

        let size = min(r.size, limit ?? r.size)
        // A copy-up of nothing (open with O_TRUNC, truncate to 0) takes no space: allowed on a
        // full filesystem like any truncate.
        if size > 0 { try requireRoomToGrow() }
        var after = r
        after.data = .privateFile
        let before = Charge.of(r, createdByVM: !isTemplateInode(ino), privateSize: nil, xattrBytes: 0)
        let then = Charge.of(after, createdByVM: !isTemplateInode(ino), privateSize: size, xattrBytes: 0)
        try quota.charge(bytes: then.bytes - before.bytes, inodes: then.inodes - before.inodes)
        var charged = true
        defer { if charged { try? quota.charge(bytes: before.bytes - then.bytes, inodes: before.inodes - then.inodes) } }

        let scratch = try area.makeScratchFile(for: ino)
        let fd = scratch.descriptor
        var published = false
        defer {
            if !published { area.discard(scratch) }
        }
        if size > 0, case .blob = r.data, let source = data.currentFile {
            try fd.copyContents(from: source.descriptor, size: size)
        } else if size > 0 {
            try fd.truncate(size: size)
        }
        try fd.setTimes(access: r.accessTime, modification: r.modificationTime)
        try fd.sync()

        metaLock.lock()
        defer { metaLock.unlock() }
        try area.publish(scratch, as: ino)
        published = true
        var current = try requireRecord(ino)
        current.data = .privateFile
        current.size = size
        current.version = nextVersion()
        do throws(Errno) {
            try commit([.putInode(ino, current)])
        } catch {
            removePrivateFile(ino)
            fd.closeQuietly()
            throw error
        }
        charged = false
        counters.copyUps.add(1, ordering: .relaxed)
        let file = HostFile(descriptor: fd, isPrivate: true)
        data.lock.lock()
        data.file = file
        data.size = size
        data.lock.unlock()
    }

    // MARK: Read and write

    func read(_ handle: OpenFile, offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard !handle.released, handle.readable, let data = handle.data else { throw Errno.badFileDescriptor }
        guard offset >= 0 else { throw Errno.invalidArgument }
        guard let file = data.currentFile else { return 0 }
        let n = try file.descriptor.read(into: buffer, at: offset)
        counters.bytesRead.add(UInt64(n), ordering: .relaxed)
        return n
    }

    /// The host file behind a handle, for zero-copy replies (splice). Hold the result while using
    /// its descriptor.
    func readSource(_ handle: OpenFile) throws(Errno) -> HostFile? {
        guard !handle.released, handle.readable, let data = handle.data else { throw Errno.badFileDescriptor }
        return data.currentFile
    }

    /// Writes at `offset` (at the end for O_APPEND handles); returns the bytes written.
    func write(_ handle: OpenFile, offset: Int64, from buffer: UnsafeRawBufferPointer, _ ctx: RequestContext) throws(Errno) -> Int {
        guard !handle.released, handle.writable, let data = handle.data else { throw Errno.badFileDescriptor }
        if ctx.readOnly { throw Errno.readOnlyFileSystem }
        guard offset >= 0 else { throw Errno.invalidArgument }
        if buffer.count == 0 { return 0 }
        try requireRoomToGrow()
        data.lock.lock()
        defer { data.lock.unlock() }
        guard let file = data.file, file.isPrivate else { throw Errno.badFileDescriptor }
        let start = handle.append ? data.size : offset
        let (end, overflow) = start.addingReportingOverflow(Int64(buffer.count))
        guard !overflow, end <= maximumFileSize else { throw Errno.fileTooLarge }
        let written = try growing(data, from: start, upTo: end) { () throws(Errno) in try file.descriptor.write(buffer, at: start) }
        counters.bytesWritten.add(UInt64(written), ordering: .relaxed)
        return written
    }

    /// Writes into `data`'s file from `start` up to `end` through `io` (which returns the bytes
    /// written): the growth is charged to the quota before, what `io` did not reach is given back,
    /// and the size, change time and generation follow. Call with `data.lock` held.
    private func growing(_ data: InodeData, from start: Int64, upTo end: Int64, _ io: () throws(Errno) -> Int) throws(Errno) -> Int {
        let oldSize = data.size
        let newSize = max(oldSize, end)
        let delta = Charge.fileBytes(size: newSize) - Charge.fileBytes(size: oldSize)
        if delta > 0 { try quota.charge(bytes: delta, inodes: 0) }
        let written: Int
        do throws(Errno) {
            written = try io()
        } catch {
            if delta > 0 { try? quota.charge(bytes: -delta, inodes: 0) }
            throw error
        }
        let reached = max(oldSize, start + Int64(written))
        let unused = Charge.fileBytes(size: newSize) - Charge.fileBytes(size: reached)
        if unused > 0 { try? quota.charge(bytes: -unused, inodes: 0) }
        data.size = reached
        data.pendingChangeTime = .now
        data.generation &+= 1
        return written
    }

    /// Sets a regular file's size (truncate or extend), copying it up first. Charged like a write.
    func resize(_ ino: InodeNumber, _ data: InodeData, to newSize: Int64, _ ctx: RequestContext) throws(Errno) {
        guard newSize >= 0 else { throw Errno.invalidArgument }
        guard newSize <= maximumFileSize else { throw Errno.fileTooLarge }
        try copyUp(ino, data, contentUpTo: newSize)
        data.lock.lock()
        defer { data.lock.unlock() }
        guard let file = data.file, file.isPrivate else { throw Errno.ioError }
        let oldSize = data.size
        if newSize > oldSize { try requireRoomToGrow() }
        let delta = Charge.fileBytes(size: newSize) - Charge.fileBytes(size: oldSize)
        if delta > 0 { try quota.charge(bytes: delta, inodes: 0) }
        do throws(Errno) {
            try file.descriptor.truncate(size: newSize)
        } catch {
            if delta > 0 { try? quota.charge(bytes: -delta, inodes: 0) }
            throw error
        }
        if delta < 0 { try? quota.charge(bytes: delta, inodes: 0) }
        data.size = newSize
        data.pendingChangeTime = .now
        data.generation &+= 1
    }

    /// Runs `body` with the data state of `ino`, retained for the call (for operations that need
    /// the data of a file nobody has open: truncate by path, copy-up for dedup).
    func withData<T>(_ ino: InodeNumber, _ body: (InodeData) throws(Errno) -> T) throws(Errno) -> T {
        metaLock.lock()
        guard let r = try? requireRecord(ino) else {  // its one error
            metaLock.unlock()
            throw Errno.noSuchFileOrDirectory
        }
        return try withRetainedData(ino, r, body)
    }

    /// Runs `body` with the data state of `ino` (record `r`) retained for the call. Call with
    /// `metaLock` held: it is released before `body` runs and taken again only to release the data.
    func withRetainedData<T>(_ ino: InodeNumber, _ r: InodeRecord, _ body: (InodeData) throws(Errno) -> T) throws(Errno) -> T {
        let data: InodeData
        do throws(Errno) {
            data = try retainData(ino, r)
        } catch {
            metaLock.unlock()
            throw error
        }
        metaLock.unlock()
        defer {
            metaLock.lock()
            releaseData(data)
            metaLock.unlock()
        }
        return try body(data)
    }

    // MARK: fallocate and copy_file_range

    func allocate(_ handle: OpenFile, mode: Int32, offset: Int64, length: Int64, _ ctx: RequestContext) throws(Errno) {
        guard !handle.released, handle.writable, let data = handle.data else { throw Errno.badFileDescriptor }
        if ctx.readOnly { throw Errno.readOnlyFileSystem }
        guard offset >= 0, length > 0 else { throw Errno.invalidArgument }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= maximumFileSize else { throw Errno.fileTooLarge }
        data.lock.lock()
        defer { data.lock.unlock() }
        guard let file = data.file, file.isPrivate else { throw Errno.badFileDescriptor }
        let keepSize = mode & FallocateMode.keepSize != 0
        if mode & (FallocateMode.punchHole | FallocateMode.collapseRange) == 0 { try requireRoomToGrow() }
        let oldSize = data.size
        var newSize = oldSize
        var hostOffset = offset
        var hostLength = length
        if mode & (FallocateMode.punchHole | FallocateMode.collapseRange) != 0 {
            if mode & FallocateMode.collapseRange != 0 { newSize = max(0, oldSize - length) }
        } else if mode & FallocateMode.insertRange != 0 {
            let (grown, overflow) = oldSize.addingReportingOverflow(length)
            guard !overflow, grown <= maximumFileSize else { throw Errno.fileTooLarge }
            newSize = grown
        } else if keepSize {
            // Space past the end would be allocated without growing the charged size, so it is
            // not reserved on the host at all: later writes are charged as they come.
            guard offset < oldSize else { return }
            hostLength = min(length, oldSize - offset)
            hostOffset = offset
        } else {
            newSize = max(oldSize, end)
        }
        let delta = Charge.fileBytes(size: newSize) - Charge.fileBytes(size: oldSize)
        if delta > 0 { try quota.charge(bytes: delta, inodes: 0) }
        do throws(Errno) {
            try file.descriptor.allocate(mode: mode, offset: hostOffset, length: hostLength)
        } catch {
            if delta > 0 { try? quota.charge(bytes: -delta, inodes: 0) }
            throw error
        }
        if delta < 0 { try? quota.charge(bytes: delta, inodes: 0) }
        data.size = (try? file.descriptor.stat().size) ?? newSize
        data.pendingChangeTime = .now
        data.generation &+= 1
    }

    func copyRange(from source: OpenFile, at sourceOffset: Int64, to destination: OpenFile, at destinationOffset: Int64,
                   length: Int, _ ctx: RequestContext) throws(Errno) -> Int {
        guard !source.released, source.readable, let sourceData = source.data else { throw Errno.badFileDescriptor }
        guard !destination.released, destination.writable, let data = destination.data else { throw Errno.badFileDescriptor }
        if ctx.readOnly { throw Errno.readOnlyFileSystem }
        guard sourceOffset >= 0, destinationOffset >= 0, length >= 0 else { throw Errno.invalidArgument }
        if destination.append { throw Errno.badFileDescriptor }
        if source.inode == destination.inode {
            // Overlapping ranges of one file; the sums saturate (offsets are the client's).
            let a = sourceOffset, b = destinationOffset, n = Int64(length)
            let (bEnd, bOverflow) = b.addingReportingOverflow(n)
            let (aEnd, aOverflow) = a.addingReportingOverflow(n)
            if (bOverflow || a < bEnd) && (aOverflow || b < aEnd) { throw Errno.invalidArgument }
        }
        guard let input = sourceData.currentFile else { return 0 }
        let sourceSize = (try? input.descriptor.stat().size) ?? 0
        let count = Int(max(0, min(Int64(length), sourceSize - sourceOffset)))
        if count == 0 { return 0 }
        try requireRoomToGrow()
        data.lock.lock()
        defer { data.lock.unlock() }
        guard let output = data.file, output.isPrivate else { throw Errno.badFileDescriptor }
        let (end, overflow) = destinationOffset.addingReportingOverflow(Int64(count))
        guard !overflow, end <= maximumFileSize else { throw Errno.fileTooLarge }
        return try growing(data, from: destinationOffset, upTo: end) { () throws(Errno) in
            try input.descriptor.copyFileRange(to: output.descriptor, sourceOffset: sourceOffset,
                                               destinationOffset: destinationOffset, count: count)
        }
    }

    // MARK: Durability

    /// fsync: the file's data, its record, and every catalog commit before it reach stable storage.
    func sync(_ ino: InodeNumber, handle: OpenFile?, dataOnly: Bool) throws(Errno) {
        if let file = handle?.data?.currentFile, file.isPrivate {
            if dataOnly { try file.descriptor.dataSync() } else { try file.descriptor.sync() }
        }
        metaLock.lock()
        if let data = openData[ino] { persistWrittenState(ino, data) }
        let isPrivate = record(ino)?.data == .privateFile
        do {
            try flushDirtyLocked()
        } catch {
            metaLock.unlock()
            throw error
        }
        metaLock.unlock()
        try catalogWriter.flush()
        if isPrivate { try? area.syncShard(of: ino) }
        try syncCatalog()
    }

    /// Makes every committed catalog transaction durable against power loss (through SQLite).
    func syncCatalog() throws(Errno) {
        do {
            try catalog.makeDurable()
        } catch {
            logger.error("catalog sync failed: \(error)")
            throw Errno.ioError
        }
    }
}
