import PVFSStore
import PVFSSystem
import SystemPackage

/// What a VM's overlay holds beyond its inodes that costs memory and no quota of its own: names
/// added by hard links, and extended attributes. Kept in step with the overlay, change by change,
/// so that `VolumeLimits` can bound them without a scan.
struct MetadataTally: Equatable {
    /// Hard links the VM added: names of files beyond their first (beyond the template's count,
    /// for template files).
    var addedLinks: Int64 = 0
    /// Bytes (names plus values) of the xattr sets the overlay holds.
    var xattrBytes: Int64 = 0

    init() {}

    init(overlay: OverlayRecords, template: TemplateImage) {
        for (ino, r) in overlay.inodes { addedLinks += Self.addedLinks(ino, r, template) }
        for set in overlay.xattrs.values { xattrBytes += Charge.xattrBytes(set) }
    }

    static func addedLinks(_ ino: InodeNumber, _ r: InodeRecord?, _ template: TemplateImage) -> Int64 {
        guard let r, !r.isDirectory, r.linkCount > 1 else { return 0 }
        let base = ino <= template.maximumInode ? max(1, Int64(template.record(ino)?.linkCount ?? 1)) : 1
        return max(0, Int64(r.linkCount) - base)
    }

    /// Accounts one change, before it is applied to `overlay`.
    mutating func account(_ change: OverlayChange, overlay: OverlayRecords, template: TemplateImage) {
        switch change {
        case .putInode(let ino, let r):
            addedLinks += Self.addedLinks(ino, r, template) - Self.addedLinks(ino, overlay.inodes[ino], template)
        case .deleteInode(let ino):
            addedLinks -= Self.addedLinks(ino, overlay.inodes[ino], template)
            xattrBytes -= Charge.xattrBytes(overlay.xattrs[ino] ?? [:])
        case .replaceXattrs(let ino, let set):
            xattrBytes += Charge.xattrBytes(set) - Charge.xattrBytes(overlay.xattrs[ino] ?? [:])
        case .putEntry, .deleteEntry, .deleteAllEntries, .nextInode, .versionCounter:
            break
        }
    }
}

extension Volume {
    /// Counts a limit of this VM reached, and logs it (rate-limited) by name.
    func limitReached(_ limit: TenantLimit, _ detail: @autoclosure () -> String) {
        counters.limits.record(limit, logger: logger, detail())
    }

    /// EMLINK when an inode already has as many names (or a directory as many subdirectories)
    /// as one may.
    func requireLinkRoom(_ ino: InodeNumber, _ linkCount: UInt32) throws(Errno) {
        let limit = metadataLimits.linksPerInode
        guard linkCount < limit else {
            limitReached(.linksPerInode, "inode \(ino) has \(linkCount) links")
            throw Errno.tooManyLinks
        }
    }

    /// EDQUOT when one more hard link to `ino` (whose record becomes `after`) would pass the
    /// VM's hard-link limit. Caller holds metaLock.
    func requireHardLinkRoom(_ ino: InodeNumber, after: InodeRecord) throws(Errno) {
        let limit = metadataLimits.hardLinks ?? quota.limits.inodes
        guard let limit else { return }
        let grows = MetadataTally.addedLinks(ino, after, template) > MetadataTally.addedLinks(ino, overlay.inodes[ino], template)
        guard grows, tally.addedLinks >= limit else { return }
        limitReached(.hardLinks, "\(tally.addedLinks) of \(limit) hard links added")
        throw Errno.diskQuotaExceeded
    }

    /// The per-inode and per-VM xattr limits for a new xattr set of `ino`. Caller holds metaLock.
    func requireXattrRoom(_ ino: InodeNumber, _ set: [[UInt8]: [UInt8]]) throws(Errno) {
        let limits = metadataLimits
        let bytes = Charge.xattrBytes(set)
        if set.count > limits.xattrsPerInode {
            limitReached(.xattrsPerInode, "inode \(ino) would have \(set.count) xattrs")
            throw Errno.noSpace
        }
        if bytes > Int64(limits.xattrBytesPerInode) {
            limitReached(.xattrBytesPerInode, "inode \(ino) would hold \(bytes) bytes of xattrs")
            throw Errno.noSpace
        }
        let after = tally.xattrBytes - Charge.xattrBytes(overlay.xattrs[ino] ?? [:]) + bytes
        if after > tally.xattrBytes && after > limits.xattrBytes {
            limitReached(.xattrBytes, "\(tally.xattrBytes) of \(limits.xattrBytes) xattr bytes held, \(after - tally.xattrBytes) more asked")
            throw Errno.diskQuotaExceeded
        }
    }

    /// Hard links and xattr bytes the VM holds now (for metrics and tests).
    public var metadataUsage: (addedLinks: Int64, xattrBytes: Int64, lockRecords: Int) {
        metaLock.lock()
        let t = tally
        metaLock.unlock()
        return (t.addedLinks, t.xattrBytes, locks.recordCount)
    }
}
