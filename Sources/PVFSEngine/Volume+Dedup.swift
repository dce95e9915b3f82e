import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

/// What became of one file offered for deduplication.
public enum DedupOutcome: String, Sendable, Codable {
    case replaced
    /// Open for writing, changed, or no longer private: left as it is.
    case skippedBusy = "skipped-busy"
    case skippedChanged = "skipped-changed"
    case skippedGone = "skipped-gone"
}

/// A private regular file of a VM, as dedup sees it.
public struct PrivateFileInfo: Sendable {
    public var inode: InodeNumber
    public var size: Int64
}

extension Volume {
    /// Private regular files of at least `minimumSize` bytes (dedup candidates).
    public func privateFiles(minimumSize: Int64) -> [PrivateFileInfo] {
        metaLock.lock()
        defer { metaLock.unlock() }
        var result: [PrivateFileInfo] = []
        for (ino, r) in overlay.inodes where r.kind == .regular && r.data == .privateFile && r.linkCount > 0 {
            let size = privateSize(ino) ?? r.size
            if size >= minimumSize { result.append(PrivateFileInfo(inode: ino, size: size)) }
        }
        return result
    }

    /// Opens a private file read-only for hashing. The result is a snapshot hint only: what is
    /// shared is verified again under the inode's lock by `replaceWithBlob`.
    public func openPrivateFileForReading(_ ino: InodeNumber) throws(Errno) -> FileDescriptor {
        try area.openPrivateFileForReading(ino)
    }

    /// Turns a private file into a reference to an already published blob with the same content,
    /// copy-on-write like a template file from then on. Writers are held off for the duration and
    /// the bytes are compared in full, so only identical content is ever shared. The caller holds
    /// the store's blob lock shared (the janitor's protocol) from the blob's publication until this
    /// returns.
    public func replaceWithBlob(_ ino: InodeNumber, blobID: Int64, hash: BlobHash) throws(Errno) -> DedupOutcome {
        metaLock.lock()
        guard let r = record(ino), r.kind == .regular, r.data == .privateFile, r.linkCount > 0 else {
            metaLock.unlock()
            return .skippedGone
        }
        if let open = openData[ino], open.writers > 0 {
            metaLock.unlock()
            return .skippedBusy
        }
        return try withRetainedData(ino, r) { data throws(Errno) in try replace(ino, data, withBlob: blobID, hash: hash) }
    }

    /// The comparison and the commit of `replaceWithBlob`, with the file's data retained.
    private func replace(_ ino: InodeNumber, _ data: InodeData, withBlob blobID: Int64, hash: BlobHash) throws(Errno) -> DedupOutcome {
        // Compare under the data lock (writes wait), then commit under the metadata lock; the
        // generation tells whether anything was written in between. Lock order is always
        // metadata before data.
        data.lock.lock()
        let examined = data.generation
        guard let file = data.file, file.isPrivate else {
            data.lock.unlock()
            return .skippedGone
        }
        let blob: FileDescriptor
        do {
            blob = try catalog.openBlob(hash)
        } catch {
            data.lock.unlock()
            logger.error("dedup: blob \(hash) cannot be opened: \(error)")
            throw Errno.ioError
        }
        let blobFile = HostFile(descriptor: blob, isPrivate: false)
        let same: Bool
        do {
            same = try identicalContent(file.descriptor, blob)
        } catch {
            data.lock.unlock()
            throw error
        }
        data.lock.unlock()
        guard same else { return .skippedChanged }

        metaLock.lock()
        defer { metaLock.unlock() }
        if data.writers > 0 { return .skippedBusy }
        guard var current = record(ino), current.data == .privateFile else { return .skippedGone }
        data.lock.lock()
        defer { data.lock.unlock() }
        guard data.generation == examined, data.file === file else { return .skippedChanged }
        let size = data.size
        let xattrBytes = current.privateXattrs ? Charge.xattrBytes(overlay.xattrs[ino] ?? [:]) : 0
        let before = Charge.of(current, createdByVM: !isTemplateInode(ino), privateSize: size, xattrBytes: xattrBytes)
        let mtime = (try? file.descriptor.stat().modificationTime) ?? current.modificationTime
        current.data = .blob(id: blobID)
        current.size = size
        current.blocks = (size + 511) / 512
        current.modificationTime = mtime
        current.version = nextVersion()
        blobHashes[blobID] = hash
        let after = Charge.of(current, createdByVM: !isTemplateInode(ino), privateSize: nil, xattrBytes: xattrBytes)
        try commit([.putInode(ino, current)], synchronously: true)
        try? quota.charge(bytes: after.bytes - before.bytes, inodes: after.inodes - before.inodes)
        data.file = blobFile
        data.generation &+= 1
        // The private file is the only copy the old record describes: remove it only once the
        // new record is durable (an orphan left by a failed sync is removed by recovery or fsck).
        do {
            try catalog.makeDurable()
            removePrivateFile(ino)
        } catch {
            logger.warning("dedup: inode \(ino): \(error); its private file stays until recovery")
        }
        return .replaced
    }

    /// Byte-for-byte comparison of two files from offset 0 to the end.
    private func identicalContent(_ a: FileDescriptor, _ b: FileDescriptor) throws(Errno) -> Bool {
        let sa = try a.stat().size
        let sb = try b.stat().size
        guard sa == sb else { return false }
        let chunk = 1 << 20
        let ba = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        let bb = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { ba.deallocate(); bb.deallocate() }
        var offset: Int64 = 0
        while offset < sa {
            let want = Int(min(Int64(chunk), sa - offset))
            let na = try a.read(into: UnsafeMutableRawBufferPointer(rebasing: ba[0..<want]), at: offset)
            let nb = try b.read(into: UnsafeMutableRawBufferPointer(rebasing: bb[0..<want]), at: offset)
            guard na == nb, na > 0, memcmp(ba.baseAddress!, bb.baseAddress!, na) == 0 else { return false }
            offset += Int64(na)
        }
        return true
    }
}
