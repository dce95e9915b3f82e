import PVFSStore
import PVFSSystem
import SystemPackage

extension Volume {
    func setAttributes(_ ino: InodeNumber, _ changes: AttributeChanges, handle: OpenFile?, _ ctx: RequestContext) throws(Errno) -> Attributes {
        try ctx.requireWritable()
        var changes = changes
        // Validate everything before changing anything.
        metaLock.lock()
        let r: InodeRecord
        do {
            r = try requireRecord(ino)
            try checkSetAttributes(r, &changes, handle: handle, ctx)
        } catch {
            metaLock.unlock()
            throw error
        }
        metaLock.unlock()

        if let size = changes.size {
            if let data = handle?.data, handle?.writable == true {
                try resize(ino, data, to: size, ctx)
            } else {
                try withData(ino) { (data) throws(Errno) in try resize(ino, data, to: size, ctx) }
            }
        }

        metaLock.lock()
        defer { metaLock.unlock() }
        var current = try requireRecord(ino)
        if let data = openData[ino] { persistWrittenState(ino, data) }
        current = try requireRecord(ino)
        let now = Timespec.now
        if let mode = changes.mode {
            current.mode = (current.mode & fileTypeMask) | (mode & permissionBitsMask)
        }
        if changes.uid != nil || changes.gid != nil {
            if let uid = changes.uid { current.uid = uid }
            if let gid = changes.gid { current.gid = gid }
            // As Linux does on chown: a non-directory loses setuid, and setgid where it means
            // "run as group" (group execute set).
            if !current.isDirectory {
                current.mode &= ~setUIDBit
                if current.mode & 0o010 != 0 { current.mode &= ~setGIDBit }
            }
        }
        if let atime = changes.accessTime {
            current.accessTime = atime.resolved(now).clampedToCatalog
        }
        if let mtime = changes.modificationTime {
            current.modificationTime = mtime.resolved(now).clampedToCatalog
        } else if changes.size != nil {
            current.modificationTime = now
        }
        if current.data == .privateFile, changes.accessTime != nil || changes.modificationTime != nil || changes.size != nil {
            // The host file carries a private file's mtime: keep it in step.
            let file = openData[ino]?.currentFile
            if let fd = file?.descriptor {
                try fd.setTimes(access: current.accessTime, modification: current.modificationTime)
            } else {
                try area.setPrivateFileTimes(ino, access: current.accessTime, modification: current.modificationTime)
            }
            if let data = openData[ino] {
                data.lock.lock()
                current.size = data.size
                data.lock.unlock()
            } else if let size = privateSize(ino) {
                current.size = size
            }
        }
        current = touched(current, now: now)
        try commit([.putInode(ino, current)])
        return attributes(ino, current)
    }

    /// Permission rules of chmod, chown, truncate and utimes. Adjusts `changes` where Linux
    /// silently drops bits (setgid for a non-member). Caller holds metaLock.
    private func checkSetAttributes(_ r: InodeRecord, _ changes: inout AttributeChanges, handle: OpenFile?, _ ctx: RequestContext) throws(Errno) {
        // -1 means "unchanged" to chown(2) and is no id a file may have.
        if changes.uid == UInt32.max || changes.gid == UInt32.max { throw Errno.invalidArgument }
        let enforce = ctx.enforcePermissions
        let privileged = ctx.caller.privileged || !enforce
        let owner = ctx.caller.uid == r.uid
        if var mode = changes.mode {
            if !privileged && !owner { throw Errno.notPermitted }
            if !privileged {
                // As Linux's setattr_prepare: setgid needs membership of the (new) group. The
                // sticky bit stays on any kind of file, as on every Linux filesystem.
                let gid = changes.gid ?? r.gid
                if mode & setGIDBit != 0 && !ctx.caller.credentials.isMember(of: gid) { mode &= ~setGIDBit }
            }
            changes.mode = mode
        }
        if let uid = changes.uid, uid != r.uid, !privileged { throw Errno.notPermitted }
        if let gid = changes.gid, gid != r.gid, !privileged {
            if !owner || !ctx.caller.credentials.isMember(of: gid) { throw Errno.notPermitted }
        }
        if changes.uid == r.uid && changes.gid == nil && !privileged && !owner { throw Errno.notPermitted }
        if changes.size != nil {
            switch r.kind {
            case .regular: break
            case .directory: throw Errno.isDirectory
            default: throw Errno.invalidArgument
            }
            if !(handle?.writable ?? false) { try requirePermission(r, ctx, .write) }
        }
        for time in [changes.accessTime, changes.modificationTime] {
            switch time {
            case .none: continue
            case .some(.set):
                if !privileged && !owner { throw Errno.notPermitted }
            case .some(.now):
                if !privileged && !owner && !permits(r, ctx, .write) { throw Errno.permissionDenied }
            }
        }
    }

    func checkAccess(_ ino: InodeNumber, _ mask: AccessMask, _ ctx: RequestContext) throws(Errno) {
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireRecord(ino)
        if mask.contains(.write) && ctx.readOnly { throw Errno.readOnlyFileSystem }
        try requirePermission(r, ctx, mask)
    }

    /// statfs: the quota as the filesystem's size and what is left of it as free space, so `df`
    /// in the guest shows the VM's limits; the store's own filesystem where no quota is set.
    func statistics() -> ViewStatistics {
        let host = (try? catalog.hostStatistics()) ?? ViewStatistics(
            blockSize: 4096, fragmentSize: 4096, totalBlocks: 0, freeBlocks: 0, availableBlocks: 0,
            totalFiles: 0, freeFiles: 0, availableFiles: 0, maximumNameLength: 255)
        let usage = quota.usage
        let limits = quota.limits
        let blockSize: UInt64 = 4096
        var stats = host
        stats.maximumNameLength = UInt64(FileName.maximumLength)
        // Files being unlinked in the background are already free space for the guest.
        let reaping = UInt64(max(0, reaper.bytesPending))
        let hostAvailableBytes = host.availableBlocks * host.fragmentSize + reaping
        if let limit = limits.bytes {
            let total = UInt64(max(0, limit))
            let free = UInt64(max(0, limit - usage.bytes))
            stats.blockSize = blockSize
            stats.fragmentSize = blockSize
            stats.totalBlocks = total / blockSize
            stats.freeBlocks = free / blockSize
            stats.availableBlocks = min(free, hostAvailableBytes) / blockSize
        } else {
            let scale = max(1, host.fragmentSize) 
            stats.blockSize = blockSize
            stats.fragmentSize = blockSize
            stats.totalBlocks = host.totalBlocks * scale / blockSize
            stats.freeBlocks = min(stats.totalBlocks, (host.freeBlocks * scale + reaping) / blockSize)
            stats.availableBlocks = min(stats.totalBlocks, (host.availableBlocks * scale + reaping) / blockSize)
        }
        if let limit = limits.inodes {
            let free = UInt64(max(0, limit - usage.inodes))
            stats.totalFiles = UInt64(max(0, limit))
            stats.freeFiles = free
            stats.availableFiles = free
        }
        return stats
    }
}

extension Timespec {
    /// The catalog keeps times as 64-bit nanoseconds since 1970 (1677 to 2262): a time a
    /// client sets beyond is clamped to the nearest it can hold, as a local filesystem clamps
    /// times to its own range, instead of wrapping around.
    var clampedToCatalog: Timespec {
        let limit = Int64.max / 1_000_000_000 - 1
        if seconds > limit { return Timespec(seconds: limit, nanoseconds: 999_999_999) }
        if seconds < -limit { return Timespec(seconds: -limit, nanoseconds: 0) }
        return self
    }
}

extension TimeChange {
    func resolved(_ now: Timespec) -> Timespec {
        switch self {
        case .now: now
        case .set(let t): t
        }
    }
}
