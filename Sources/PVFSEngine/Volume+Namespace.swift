import PVFSStore
import PVFSSystem
import SystemPackage

/// Records an operation's changes before they are committed together.
struct Edit {
    var records: [InodeNumber: InodeRecord] = [:]
    var changes: [OverlayChange] = []
    /// Private data files to remove once the catalog no longer names them, and the bytes they
    /// charged (small ones are removed before the reply, large ones in the background).
    var removedFiles: [InodeNumber] = []
    var removedBytes: Int64 = 0
    /// Quota change of this operation.
    var bytes: Int64 = 0
    var inodes: Int64 = 0
    /// Records whose times alone change: kept in memory once the edit is committed.
    var lazy: [(InodeNumber, InodeRecord)] = []
}

extension Volume {
    // MARK: Edit helpers (caller holds metaLock)

    func current(_ ino: InodeNumber, _ edit: Edit) throws(Errno) -> InodeRecord {
        if let r = edit.records[ino] { return r }
        return try requireRecord(ino)
    }

    func chargeOf(_ ino: InodeNumber, _ r: InodeRecord?, xattrs: [[UInt8]: [UInt8]]? = nil) -> QuotaAccount.Usage {
        guard let r, r.linkCount > 0 || openData[ino] != nil else { return .init(bytes: 0, inodes: 0) }
        let size = r.data == .privateFile ? privateSize(ino) : nil
        let xattrBytes = r.privateXattrs ? Charge.xattrBytes(xattrs ?? overlay.xattrs[ino] ?? [:]) : 0
        return Charge.of(r, createdByVM: !isTemplateInode(ino), privateSize: size, xattrBytes: xattrBytes)
    }

    /// Removes one link of `ino`; at zero links the inode goes (or stays as an orphan while open).
    func dropLink(_ ino: InodeNumber, _ edit: inout Edit, now: Timespec) throws(Errno) {
        var r = try current(ino, edit)
        r.linkCount = r.isDirectory ? 0 : r.linkCount &- 1
        if r.linkCount > 0x7fff_ffff { r.linkCount = 0 }
        r = touched(r, now: now)
        if r.linkCount == 0 && openData[ino] == nil {
            let old = try current(ino, edit)
            let before = chargeOf(ino, old)
            if old.data == .privateFile {
                edit.removedFiles.append(ino)
                edit.removedBytes += before.bytes
            }
            edit.bytes -= before.bytes
            edit.inodes -= before.inodes
            if isTemplateInode(ino) {
                r.data = .none
                r.privateXattrs = false
                edit.records[ino] = r
                edit.changes.append(.replaceXattrs(ino, [:]))
            } else {
                edit.records[ino] = nil
                edit.changes.append(.deleteInode(ino))
            }
            if r.isDirectory { edit.changes.append(.deleteAllEntries(parent: ino)) }
        } else {
            edit.records[ino] = r
        }
    }

    /// Removes `name` from `parent`: a whiteout where the template has that name.
    func removeEntry(_ parent: InodeNumber, _ name: FileName, _ edit: inout Edit) {
        if templateHasEntry(parent, name) {
            edit.changes.append(.putEntry(parent: parent, name: name, inode: 0))
        } else {
            edit.changes.append(.deleteEntry(parent: parent, name: name))
        }
    }

    /// Charges the edit's quota, commits it, and applies it. Caller holds metaLock.
    func apply(_ edit: Edit) throws(Errno) {
        if edit.bytes > 0 || edit.inodes > 0 {
            try quota.charge(bytes: max(0, edit.bytes), inodes: max(0, edit.inodes))
        }
        var changes: [OverlayChange] = []
        changes.reserveCapacity(edit.records.count + edit.changes.count)
        for (ino, r) in edit.records { changes.append(.putInode(ino, r)) }
        changes.append(contentsOf: edit.changes)
        do throws(Errno) {
            try commit(changes, removing: edit.removedFiles, removedBytes: edit.removedBytes)
        } catch {
            if edit.bytes > 0 || edit.inodes > 0 {
                try? quota.charge(bytes: -max(0, edit.bytes), inodes: -max(0, edit.inodes))
            }
            throw error
        }
        if edit.bytes < 0 || edit.inodes < 0 {
            try? quota.charge(bytes: min(0, edit.bytes), inodes: min(0, edit.inodes))
        }
        for (ino, record) in edit.lazy where edit.records[ino] == nil { updateLazily(ino, record) }
    }

    // MARK: Attributes

    /// The attributes clients see. Caller holds metaLock.
    func attributes(_ ino: InodeNumber, _ r: InodeRecord) -> Attributes {
        var size = r.size
        var blocks = r.blocks
        var mtime = r.modificationTime
        var ctime = r.changeTime
        if r.data == .privateFile {
            if let data = openData[ino] {
                data.lock.lock()
                let file = data.file
                size = data.size
                if let pending = data.pendingChangeTime, pending > ctime { ctime = pending }
                data.lock.unlock()
                if let st = try? file?.descriptor.stat() {
                    blocks = st.blocks
                    mtime = st.modificationTime
                }
            } else if let st = try? area.statPrivateFile(ino) {
                size = st.size
                blocks = st.blocks
                mtime = st.modificationTime
            }
        } else if r.isDirectory {
            size = 4096
            blocks = 8
        }
        return Attributes(inode: ino, kind: r.kind, mode: r.mode, linkCount: r.linkCount, uid: r.uid, gid: r.gid,
                          rdev: r.rdev, size: size, blocks: blocks, accessTime: r.accessTime, modificationTime: mtime,
                          changeTime: ctime, version: r.version)
    }

    func getAttributes(_ ino: InodeNumber) throws(Errno) -> Attributes {
        metaLock.lock()
        defer { metaLock.unlock() }
        return attributes(ino, try requireRecord(ino))
    }

    // MARK: Lookup

    func lookup(_ parent: InodeNumber, _ name: [UInt8], _ ctx: RequestContext) throws(Errno) -> Attributes {
        metaLock.lock()
        defer { metaLock.unlock() }
        let dir = try requireDirectory(parent)
        try requirePermission(dir, ctx, .execute)
        if FileName.isDot(name) { return attributes(parent, dir) }
        if FileName.isDotDot(name) {
            let up = dir.parent == 0 ? rootInode : dir.parent
            return attributes(up, try requireRecord(up))
        }
        let fname = try FileName(validating: name)
        guard let ino = entry(parent, fname), let r = record(ino), r.linkCount > 0 else {
            throw Errno.noSuchFileOrDirectory
        }
        return attributes(ino, r)
    }

    /// The parent directory of a directory ("..").
    func parentOf(_ dir: InodeNumber) throws(Errno) -> InodeNumber {
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireDirectory(dir)
        return r.parent == 0 ? rootInode : r.parent
    }

    // MARK: Creation

    /// Creates an inode of any kind in `parent`. Regular files get an empty private data file.
    /// Caller holds metaLock.
    func createInode(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, rdev: UInt64 = 0,
                     symlinkTarget: [UInt8]? = nil, _ ctx: RequestContext) throws(Errno) -> (InodeNumber, InodeRecord) {
        let (ino, record, _) = try createInodeKeepingFile(parent, name, mode: mode, rdev: rdev, symlinkTarget: symlinkTarget, ctx)
        return (ino, record)
    }

    /// createInode that also hands back the open data file of a new regular file (create opens
    /// it right away: no second openat).
    func createInodeKeepingFile(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, rdev: UInt64 = 0,
                                symlinkTarget: [UInt8]? = nil, _ ctx: RequestContext) throws(Errno) -> (InodeNumber, InodeRecord, HostFile?) {
        try ctx.requireWritable()
        var dir = try requireDirectory(parent)
        if FileName.isDot(name) || FileName.isDotDot(name) { throw Errno.fileExists }
        let fname = try FileName(validating: name)
        try requirePermission(dir, ctx, [.write, .execute])
        if entry(parent, fname) != nil { throw Errno.fileExists }
        try requireRoomToGrow()
        guard let kind = FileKind(mode: mode) else { throw Errno.invalidArgument }
        if kind == .directory { try requireLinkRoom(parent, dir.linkCount) }

        let now = Timespec.now
        var permissions = mode & permissionBitsMask
        var gid = ctx.caller.gid
        if dir.mode & setGIDBit != 0 {
            gid = dir.gid
            if kind == .directory {
                permissions |= setGIDBit
            } else if permissions & setGIDBit != 0, ctx.enforcePermissions, !ctx.caller.privileged,
                      !ctx.caller.credentials.isMember(of: gid) {
                permissions &= ~setGIDBit
            }
        }
        let (ino, reservation) = allocateInode()
        var record = InodeRecord(
            mode: kind.modeBits | permissions, uid: ctx.caller.uid, gid: gid,
            linkCount: kind == .directory ? 2 : 1, size: 0, blocks: 0,
            accessTime: now, modificationTime: now, changeTime: now,
            rdev: (kind == .characterDevice || kind == .blockDevice) ? rdev : 0,
            parent: kind == .directory ? parent : 0,
            data: kind == .regular ? .privateFile : .none,
            symlinkTarget: symlinkTarget, privateXattrs: false, version: nextVersion())
        if kind == .symlink { record.size = Int64(symlinkTarget?.count ?? 0) }
        if kind == .directory { record.size = 4096; record.blocks = 8 }

        var edit = Edit()
        let charge = Charge.of(record, createdByVM: true, privateSize: 0, xattrBytes: 0)
        edit.bytes = charge.bytes
        edit.inodes = charge.inodes
        if kind == .directory {
            dir.linkCount += 1
            edit.records[parent] = touched(dir, modification: true, now: now)
        } else {
            // Only the parent's times change: kept lazily, not a page of every create's commit.
            edit.lazy.append((parent, touched(dir, modification: true, now: now)))
        }
        edit.records[ino] = record
        edit.changes.append(.putEntry(parent: parent, name: fname, inode: ino))
        if let reservation { edit.changes.append(reservation) }

        if kind == .regular {
            let file = try openPrivateFile(ino, create: true)
            // The data file exists before the catalog names it; a crash in between leaves an
            // orphan that recovery removes.
            do throws(Errno) {
                try apply(edit)
            } catch {
                removePrivateFile(ino)
                throw error
            }
            return (ino, record, file)
        }
        try apply(edit)
        return (ino, record, nil)
    }

    func makeDirectory(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, _ ctx: RequestContext) throws(Errno) -> Attributes {
        metaLock.lock()
        defer { metaLock.unlock() }
        let (ino, r) = try createInode(parent, name, mode: FileKind.directory.modeBits | (mode & permissionBitsMask), ctx)
        return attributes(ino, r)
    }

    func makeNode(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, rdev: UInt64, _ ctx: RequestContext) throws(Errno) -> Attributes {
        metaLock.lock()
        defer { metaLock.unlock() }
        var mode = mode
        if mode & fileTypeMask == 0 { mode |= FileKind.regular.modeBits }
        guard let kind = FileKind(mode: mode), kind != .directory, kind != .symlink else { throw Errno.invalidArgument }
        if (kind == .characterDevice || kind == .blockDevice) && ctx.enforcePermissions && !ctx.caller.privileged {
            throw Errno.notPermitted
        }
        let (ino, r) = try createInode(parent, name, mode: mode, rdev: rdev, ctx)
        return attributes(ino, r)
    }

    func makeSymlink(_ parent: InodeNumber, _ name: [UInt8], target: [UInt8], _ ctx: RequestContext) throws(Errno) -> Attributes {
        guard !target.isEmpty else { throw Errno.noSuchFileOrDirectory }
        guard target.count < 4096 else { throw Errno.fileNameTooLong }
        guard !target.contains(0) else { throw Errno.invalidArgument }
        metaLock.lock()
        defer { metaLock.unlock() }
        let (ino, r) = try createInode(parent, name, mode: FileKind.symlink.modeBits | 0o777, symlinkTarget: target, ctx)
        return attributes(ino, r)
    }

    func readLink(_ ino: InodeNumber) throws(Errno) -> [UInt8] {
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireRecord(ino)
        guard r.kind == .symlink, let target = r.symlinkTarget else { throw Errno.invalidArgument }
        return target
    }

    func link(_ ino: InodeNumber, _ newParent: InodeNumber, _ newName: [UInt8], _ ctx: RequestContext) throws(Errno) -> Attributes {
        try ctx.requireWritable()
        metaLock.lock()
        defer { metaLock.unlock() }
        var r = try requireRecord(ino)
        guard r.linkCount > 0 else { throw Errno.noSuchFileOrDirectory }
        try requireRoomToGrow()
        guard !r.isDirectory else { throw Errno.notPermitted }
        let dir = try requireDirectory(newParent)
        if FileName.isDot(newName) || FileName.isDotDot(newName) { throw Errno.fileExists }
        let fname = try FileName(validating: newName)
        try requirePermission(dir, ctx, [.write, .execute])
        if entry(newParent, fname) != nil { throw Errno.fileExists }
        try requireLinkRoom(ino, r.linkCount)
        try quota.checkWithinLimits()
        let now = Timespec.now
        r.linkCount += 1
        try requireHardLinkRoom(ino, after: r)
        var edit = Edit()
        edit.records[ino] = touched(r, now: now)
        edit.records[newParent] = touched(dir, modification: true, now: now)
        edit.changes.append(.putEntry(parent: newParent, name: fname, inode: ino))
        try apply(edit)
        return attributes(ino, edit.records[ino]!)
    }

    // MARK: Removal

    func unlink(_ parent: InodeNumber, _ name: [UInt8], _ ctx: RequestContext) throws(Errno) {
        try ctx.requireWritable()
        metaLock.lock()
        defer { metaLock.unlock() }
        let dir = try requireDirectory(parent)
        if FileName.isDot(name) || FileName.isDotDot(name) { throw Errno.isDirectory }
        let fname = try FileName(validating: name)
        guard let ino = entry(parent, fname) else { throw Errno.noSuchFileOrDirectory }
        let victim = try requireRecord(ino)
        if victim.isDirectory { throw Errno.isDirectory }
        try requireCanRemove(from: dir, victim: victim, ctx)
        let now = Timespec.now
        var edit = Edit()
        removeEntry(parent, fname, &edit)
        edit.lazy.append((parent, touched(dir, modification: true, now: now)))
        try dropLink(ino, &edit, now: now)
        try apply(edit)
    }

    func removeDirectory(_ parent: InodeNumber, _ name: [UInt8], _ ctx: RequestContext) throws(Errno) {
        try ctx.requireWritable()
        metaLock.lock()
        defer { metaLock.unlock() }
        var dir = try requireDirectory(parent)
        if FileName.isDot(name) { throw Errno.invalidArgument }
        if FileName.isDotDot(name) { throw Errno.directoryNotEmpty }
        let fname = try FileName(validating: name)
        guard let ino = entry(parent, fname) else { throw Errno.noSuchFileOrDirectory }
        let victim = try requireRecord(ino)
        guard victim.isDirectory else { throw Errno.notDirectory }
        guard ino != rootInode else { throw Errno.resourceBusy }
        guard isEmptyDirectory(ino) else { throw Errno.directoryNotEmpty }
        try requireCanRemove(from: dir, victim: victim, ctx)
        let now = Timespec.now
        var edit = Edit()
        removeEntry(parent, fname, &edit)
        dir.linkCount = max(2, dir.linkCount - 1)
        edit.records[parent] = touched(dir, modification: true, now: now)
        try dropLink(ino, &edit, now: now)
        try apply(edit)
    }

    // MARK: Rename

    /// True when `ino` is `ancestor` or lies below it.
    func isWithin(_ ino: InodeNumber, _ ancestor: InodeNumber, _ edit: Edit) -> Bool {
        var cursor = ino
        var steps = 0
        while steps < 100_000 {
            if cursor == ancestor { return true }
            guard let r = (edit.records[cursor] ?? record(cursor)) else { return false }
            let up = r.parent == 0 ? rootInode : r.parent
            if up == cursor { return false }
            cursor = up
            steps += 1
        }
        return true
    }

    func rename(_ oldParent: InodeNumber, _ oldName: [UInt8], _ newParent: InodeNumber, _ newName: [UInt8],
                flags: RenameFlags, _ ctx: RequestContext) throws(Errno) {
        try ctx.requireWritable()
        if flags.contains(.exchange) && flags.contains(.noReplace) { throw Errno.invalidArgument }
        if flags.contains(.whiteout) { throw Errno.invalidArgument }
        metaLock.lock()
        defer { metaLock.unlock() }
        let srcDir = try requireDirectory(oldParent)
        let dstDir = try requireDirectory(newParent)
        for n in [oldName, newName] where FileName.isDot(n) || FileName.isDotDot(n) {
            throw n == oldName ? Errno.invalidArgument : Errno.invalidArgument
        }
        let srcName = try FileName(validating: oldName)
        let dstName = try FileName(validating: newName)
        guard let src = entry(oldParent, srcName) else { throw Errno.noSuchFileOrDirectory }
        let srcRecord = try requireRecord(src)
        let dst = entry(newParent, dstName)
        if flags.contains(.noReplace), dst != nil { throw Errno.fileExists }
        if flags.contains(.exchange), dst == nil { throw Errno.noSuchFileOrDirectory }

        try requireCanRemove(from: srcDir, victim: srcRecord, ctx)
        try requirePermission(dstDir, ctx, [.write, .execute])
        let dstRecord = try dst.map { (d: InodeNumber) throws(Errno) in try requireRecord(d) }
        if let dstRecord { try requireCanRemove(from: dstDir, victim: dstRecord, ctx) }
        if srcRecord.isDirectory && oldParent != newParent {
            try requirePermission(srcRecord, ctx, .write)
        }
        if let dstRecord, flags.contains(.exchange), dstRecord.isDirectory, oldParent != newParent {
            try requirePermission(dstRecord, ctx, .write)
        }
        if src == dst { return }  // same inode under both names: POSIX says do nothing

        var edit = Edit()
        if srcRecord.isDirectory && isWithin(newParent, src, edit) { throw Errno.invalidArgument }
        if let dst, let dstRecord, flags.contains(.exchange), dstRecord.isDirectory, isWithin(oldParent, dst, edit) {
            throw Errno.invalidArgument
        }
        let now = Timespec.now

        if flags.contains(.exchange), let dst, let dstRecord {
            edit.changes.append(.putEntry(parent: oldParent, name: srcName, inode: dst))
            edit.changes.append(.putEntry(parent: newParent, name: dstName, inode: src))
            var s = srcRecord
            var d = dstRecord
            if oldParent != newParent {
                var op = try current(oldParent, edit)
                var np = try current(newParent, edit)
                if s.isDirectory && !d.isDirectory { try requireLinkRoom(newParent, np.linkCount) }
                if d.isDirectory && !s.isDirectory { try requireLinkRoom(oldParent, op.linkCount) }
                if s.isDirectory { s.parent = newParent; op.linkCount -= 1; np.linkCount += 1 }
                if d.isDirectory { d.parent = oldParent; np.linkCount -= 1; op.linkCount += 1 }
                edit.records[oldParent] = touched(op, modification: true, now: now)
                edit.records[newParent] = touched(np, modification: true, now: now)
            } else {
                edit.records[oldParent] = touched(try current(oldParent, edit), modification: true, now: now)
            }
            edit.records[src] = touched(s, now: now)
            edit.records[dst] = touched(d, now: now)
            try apply(edit)
            return
        }

        if let dst, let dstRecord {
            if srcRecord.isDirectory && !dstRecord.isDirectory { throw Errno.notDirectory }
            if !srcRecord.isDirectory && dstRecord.isDirectory { throw Errno.isDirectory }
            if dstRecord.isDirectory && !isEmptyDirectory(dst) { throw Errno.directoryNotEmpty }
            try dropLink(dst, &edit, now: now)
            if dstRecord.isDirectory {
                var np = try current(newParent, edit)
                np.linkCount = max(2, np.linkCount - 1)
                edit.records[newParent] = np
            }
        }
        removeEntry(oldParent, srcName, &edit)
        edit.changes.append(.putEntry(parent: newParent, name: dstName, inode: src))
        var s = srcRecord
        if s.isDirectory && oldParent != newParent {
            s.parent = newParent
            var op = try current(oldParent, edit)
            op.linkCount = max(2, op.linkCount - 1)
            edit.records[oldParent] = op
            var np = try current(newParent, edit)
            try requireLinkRoom(newParent, np.linkCount)
            np.linkCount += 1
            edit.records[newParent] = np
        }
        edit.records[src] = touched(s, now: now)
        edit.records[oldParent] = touched(try current(oldParent, edit), modification: true, now: now)
        if newParent != oldParent {
            edit.records[newParent] = touched(try current(newParent, edit), modification: true, now: now)
        }
        try apply(edit)
    }

    // MARK: Directory listing

    /// Entries after `cookie` in stable order: "." (cookie 1), ".." (cookie 2), then by name hash.
    func readDirectory(_ dir: InodeNumber, after cookie: UInt64, limit: Int, _ ctx: RequestContext) throws(Errno) -> [DirectoryEntry] {
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireDirectory(dir)
        try requirePermission(r, ctx, .read)
        var result: [DirectoryEntry] = []
        if cookie < 1 { result.append(DirectoryEntry(name: [UInt8(ascii: ".")], inode: dir, kind: .directory, cookie: 1)) }
        if cookie < 2 {
            let up = r.parent == 0 ? rootInode : r.parent
            result.append(DirectoryEntry(name: [UInt8(ascii: "."), UInt8(ascii: ".")], inode: up, kind: .directory, cookie: 2))
        }
        let listing = sortedListing(dir)
        var low = 0
        var high = listing.count
        while low < high {
            let mid = (low + high) / 2
            if listing[mid].cookie <= cookie { low = mid + 1 } else { high = mid }
        }
        var i = low
        while i < listing.count && result.count < limit {
            result.append(listing[i])
            i += 1
        }
        return result
    }

    private func sortedListing(_ dir: InodeNumber) -> [DirectoryEntry] {
        // A template directory the VM has not changed lists as the template's (shared) listing.
        if overlay.entries[dir] == nil, dir <= template.maximumInode, let listing = template.listings[dir] { return listing }
        if let cached = listingCache[dir] { return cached }
        var listing: [DirectoryEntry] = []
        for (name, ino) in mergedEntries(dir) {
            guard let r = record(ino) else { continue }
            listing.append(DirectoryEntry(name: name.bytes, inode: ino, kind: r.kind, cookie: Self.cookie(of: name.bytes)))
        }
        listing.sort { $0.cookie < $1.cookie }
        listingCache[dir] = listing
        return listing
    }

    /// A 63-bit hash of a name (FNV-1a, finalised), at least 3: the readdir offset after it.
    static func cookie(of name: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        h ^= h >> 33
        h = h &* 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        h &= 0x7fff_ffff_ffff_ffff
        return max(h, 3)
    }
}
