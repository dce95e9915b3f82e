import Foundation
import Logging
import PVFSStore
import PVFSSystem
import SystemPackage

/// One VM's merged view: its template's tree below, its own changes above. All transports serve a
/// VM through its single Volume; a process holds a VM's volume only while it holds the VM's lock
/// (vms/<id>/lock), so no two processes change one VM at once.
///
/// Metadata lives in memory and is written through to the catalog, one transaction per operation,
/// under `metaLock`. File data moves outside that lock, through `InodeData`.
public final class Volume: @unchecked Sendable {
    public let vmID: Int64
    public let name: String
    /// The VM as the store opened it for this process: its record, area and catalog rows.
    let opened: OpenedVM
    /// Shared with every other open volume of the template (`TemplateImageCache`).
    let template: TemplateImage
    /// Returned to the cache at close.
    private let templateLease: TemplateImageLease
    /// The VM's overlay rows in the catalog.
    let catalog: VMOverlayCatalog
    let quota: QuotaAccount
    let logger: Logger
    /// The VM's private files, with its exclusive lock; close() drops the lock so another
    /// process may take the VM.
    let area: VMArea

    let metaLock = NSLock()
    /// Guarded by metaLock.
    var overlay: OverlayRecords
    /// Inodes with open handles. Guarded by metaLock.
    var openData: [InodeNumber: InodeData] = [:]
    /// Sorted listings, dropped when a directory changes. Guarded by metaLock.
    var listingCache: [InodeNumber: [DirectoryEntry]] = [:]
    /// blob id → hash for blobs the overlay references beyond the template's (which its image
    /// holds). Guarded by metaLock.
    var blobHashes: [Int64: BlobHash]
    let locks: LockTable
    public let counters: VolumeCounters
    /// Set when `close` ends (under metaLock): the VM's lock is released, so from then on nothing
    /// of this volume may reach the catalog (another process may hold the VM).
    private(set) var closed = false
    /// Names and xattr bytes the overlay holds, kept in step with it to bound them
    /// (`VolumeLimits`). Guarded by metaLock.
    var tally = MetadataTally()
    /// The quota the catalog gives (set-quota), before the inode limit's default is applied.
    private var catalogQuota: (bytes: Int64?, inodes: Int64?)
    private let limitsLock = NSLock()
    private var limitsValue = VolumeLimits()
    /// Monotonic counter for qid versions, above every version handed out for this VM before
    /// (`vm.version_counter`, `vm_inode.version`). Guarded by metaLock.
    var versionCounter: UInt64 = 0
    /// Versions up to this are reserved in the catalog (`vm.version_counter`); a commit raises
    /// the reservation once the counter reaches it. Guarded by metaLock.
    var reservedVersions: UInt64 = 0
    /// Unlinked inodes kept at open for handles a previous process held on them, so that they
    /// can be opened by inode number (`VMView.open`); reaped at their last release, or by
    /// `reapUnclaimedOrphans`. Guarded by metaLock.
    var keptOrphans = Set<InodeNumber>()
    /// Inodes whose in-memory record is newer than the catalog's only in times and sizes
    /// (`updateLazily`): written by the periodic flush, fsync and close, or by the next operation
    /// that commits the inode. A crash can lose such times, never a name, an inode or data.
    /// Guarded by metaLock.
    var dirtyInodes = Set<InodeNumber>()
    /// Inode numbers below this are reserved in the catalog (`vm.next_inode`), so that creating a
    /// file does not write the VM's row each time. Guarded by metaLock.
    var reservedInodes: InodeNumber = 0
    /// Removes private files the catalog no longer names, off the request path.
    let reaper: FileReaper
    /// Commits operations' changes in the background, many per transaction (`.grouped` mode).
    let catalogWriter: CatalogWriter

    /// When an operation's catalog changes are committed relative to its reply.
    public enum CommitMode: String, Sendable, CaseIterable {
        /// Committed before the operation returns: a `kill -9` of the serving process loses
        /// nothing that was acknowledged (the default).
        case beforeReply = "sync"
        /// Committed by the catalog writer with the operations around it, a few milliseconds
        /// later: metadata-heavy work runs about twice as fast, and a `kill -9` may lose the last
        /// milliseconds of operations not fsync'd (never part of one), as a crash of a local
        /// filesystem may. Like an NFS export's `async`.
        case grouped
    }

    private let commitModeLock = NSLock()
    private var commitModeValue = CommitMode.beforeReply
    /// See `CommitMode`; may change while the volume serves (takes effect at the next operation).
    public var commitMode: CommitMode {
        get { commitModeLock.withLock { commitModeValue } }
        set { commitModeLock.withLock { commitModeValue = newValue } }
    }

    /// Limits of this VM's metadata (the daemon's settings); may change while it serves.
    public var metadataLimits: VolumeLimits {
        get { limitsLock.withLock { limitsValue } }
        set {
            let quota = limitsLock.withLock {
                limitsValue = newValue
                return catalogQuota
            }
            locks.setLimits(perVolume: newValue.lockRecords, perSession: newValue.lockRecordsPerSession)
            setQuota(bytes: quota.bytes, inodes: quota.inodes)
        }
    }

    /// Opens a VM's volume, taking its lock. Fails with EBUSY when another process serves the VM.
    /// Its template's image comes from `templateImages` (shared with the other volumes of the
    /// template), or without one is loaded for this volume alone.
    ///
    /// Unlinked inodes still in the catalog (open when the previous holder closed the VM or
    /// died) are removed, except those in `keepingOrphans`: a new server that takes over the
    /// previous one's open handles opens them again by inode number.
    public static func open(store: Store, vmName: String, logger: Logger? = nil,
                            templateImages: TemplateImageCache? = nil,
                            keepingOrphans: Set<InodeNumber> = []) throws -> Volume {
        let opened = try store.openVM(named: vmName)
        do {
            let lease = try templateImages?.lease(opened.template)
                ?? TemplateImageLease(unshared: TemplateImageCache.load(opened.template, from: store))
            return try Volume(opened: opened, template: lease, logger: logger ?? Logger(label: "pvfs.volume"),
                              keepingOrphans: keepingOrphans)
        } catch {
            opened.area.close()
            throw error
        }
    }

    init(opened: OpenedVM, template lease: TemplateImageLease, logger: Logger,
         keepingOrphans: Set<InodeNumber> = []) throws {
        let record = opened.record
        self.opened = opened
        vmID = record.id
        name = record.name
        var logger = logger
        logger[metadataKey: "vm"] = "\(name)"
        self.logger = logger
        let counters = VolumeCounters()
        self.counters = counters
        let defaults = VolumeLimits()
        locks = LockTable(perVolume: defaults.lockRecords, perSession: defaults.lockRecordsPerSession,
                          counters: counters.limits, logger: logger)
        let area = opened.area
        self.area = area
        catalog = opened.catalog
        let reaper = FileReaper(logger: logger)
        self.reaper = reaper
        catalogWriter = CatalogWriter(catalog: catalog, logger: logger) { files in
            for ino in files { reaper.remove(ino, from: area) }
        }

        let template = lease.image
        templateLease = lease
        self.template = template
        blobHashes = try catalog.loadBlobHashes(templateID: template.templateID)
        overlay = try catalog.loadOverlay()
        overlay.nextInode = max(overlay.nextInode, template.maximumInode + 1)
        reservedInodes = overlay.nextInode
        catalogQuota = (record.quotaBytes, record.quotaInodes)
        quota = QuotaAccount(usage: .init(bytes: record.usedBytes, inodes: record.usedInodes),
                             limits: .init(bytes: record.quotaBytes,
                                           inodes: InodeQuota.effective(quotaBytes: record.quotaBytes, quotaInodes: record.quotaInodes,
                                                                        withoutQuota: defaults.inodesWithoutQuota)),
                             counters: counters.limits, logger: logger)
        try recover(afterUncleanShutdown: !opened.usageClean, keepingOrphans: keepingOrphans)
        tally = MetadataTally(overlay: overlay, template: template)
        try catalog.markInUse()
    }

    /// Saves usage and marks the VM cleanly closed. Open handles are dropped; the unlinked inodes
    /// they held are removed, or with `keepingOrphans` left in the catalog for the next process
    /// to keep (`open(…keepingOrphans:)`, listed by `openOrphans`) or remove at its open.
    public func close(keepingOrphans: Bool = false) throws {
        metaLock.lock()
        defer { metaLock.unlock() }
        guard !closed else { return }
        defer {
            closed = true
            templateLease.release()
        }
        for (ino, data) in openData { persistWrittenState(ino, data) }
        if !keepingOrphans {
            // Handles end here: unlinked inodes they held go as at their last release.
            for data in Array(openData.values) {
                data.openCount = 1
                releaseData(data)
            }
            for ino in keptOrphans { reapOrphan(ino) }
        }
        openData.removeAll()
        keptOrphans.removeAll()
        // Sizes and times kept lazily reach the catalog here; if they cannot, the volume is not
        // marked clean, so the next open takes sizes from the private files (recovery).
        var committed: Errno?
        do throws(Errno) {
            try flushDirtyLocked()
        } catch {
            committed = error
        }
        do throws(Errno) {
            try catalogWriter.stop()
        } catch {
            committed = committed ?? error
        }
        reaper.drain()
        if let committed {
            // Not marked clean: the next open recovers from what the catalog holds.
            area.close()
            throw PVFSError(.store, "VM \(name): the catalog did not take the last changes: \(committed)", errno: committed)
        }
        let usage = quota.usage
        try catalog.setUsage(usage, clean: true, versionCounter: versionCounter)
        area.close()
        logger.debug("volume closed", metadata: ["bytes": "\(usage.bytes)", "inodes": "\(usage.inodes)"])
    }

    deinit {
        if !closed { try? close() }
    }

    /// Writes usage and lazily kept times to the catalog; the daemon calls this periodically.
    public func saveUsage() throws {
        try flushDirtyRecords()
        try catalogWriter.flush()
        metaLock.lock()
        defer { metaLock.unlock() }
        try ensureOpen()
        guard let usage = quota.takeChangedUsage() else { return }
        try catalog.setUsage(usage, clean: nil)
    }

    /// Refuses a change once the volume is closed (caller holds metaLock): a request that was
    /// already under way when its server closed the VM gets EIO and changes nothing.
    /// ENOSPC while the store's space reserve is depleted (`SpaceReserve`): what is left of the
    /// filesystem stays for catalog commits, so deletes and truncates keep working.
    func requireRoomToGrow() throws(Errno) {
        guard catalog.admitsGrowth() else {
            throw Errno.noSpace
        }
    }

    func ensureOpen() throws(Errno) {
        if closed {
            logger.warning("a change reached VM \(name) after it was closed; refused")
            throw Errno.ioError
        }
    }

    /// Waits until every change acknowledged so far is committed to the catalog (not synced),
    /// for readers of the catalog that must see them, such as a garbage collection next.
    public func commitPendingChanges() throws {
        try catalogWriter.flush()
    }

    /// Applies a quota change made in the catalog (set-quota) to the live volume. Without an
    /// inode quota the VM gets the default one (`InodeQuota`).
    public func setQuota(bytes: Int64?, inodes: Int64?) {
        let withoutQuota = limitsLock.withLock {
            catalogQuota = (bytes, inodes)
            return limitsValue.inodesWithoutQuota
        }
        quota.setLimits(.init(bytes: bytes, inodes: InodeQuota.effective(quotaBytes: bytes, quotaInodes: inodes,
                                                                          withoutQuota: withoutQuota)))
    }

    /// Re-reads this VM's quota from the catalog and applies it (a process that serves the VM
    /// without pvfsd's control socket polls with this). Returns whether it changed.
    @discardableResult
    public func reloadQuota() throws -> Bool {
        guard let stored = try catalog.loadQuota() else { return false }
        let bytes = stored.bytes
        let inodes = stored.inodes
        let current = limitsLock.withLock { catalogQuota }
        guard current.bytes != bytes || current.inodes != inodes else { return false }
        setQuota(bytes: bytes, inodes: inodes)
        logger.notice("quota changed", metadata: ["bytes": "\(bytes.map(String.init) ?? "none")",
                                                  "inodes": "\(inodes.map(String.init) ?? "default")"])
        return true
    }

    public var usage: (bytes: Int64, inodes: Int64) {
        let u = quota.usage
        return (u.bytes, u.inodes)
    }

    public var limits: (bytes: Int64?, inodes: Int64?) {
        let l = quota.limits
        return (l.bytes, l.inodes)
    }

    // MARK: - Records

    func isTemplateInode(_ ino: InodeNumber) -> Bool { ino <= template.maximumInode }

    /// The current record of an inode: the VM's own, else the template's. Caller holds metaLock.
    func record(_ ino: InodeNumber) -> InodeRecord? {
        if let own = overlay.inodes[ino] { return own }
        // A template inode the VM removed keeps an overlay record with no links (a tombstone),
        // so an unrecorded template inode is part of the view.
        guard ino <= template.maximumInode else { return nil }
        return template.record(ino)
    }

    func requireRecord(_ ino: InodeNumber) throws(Errno) -> InodeRecord {
        guard let r = record(ino), r.linkCount > 0 || openData[ino] != nil || keptOrphans.contains(ino) else {
            throw Errno.noSuchFileOrDirectory
        }
        return r
    }

    func requireDirectory(_ ino: InodeNumber) throws(Errno) -> InodeRecord {
        let r = try requireRecord(ino)
        guard r.isDirectory else { throw Errno.notDirectory }
        guard r.linkCount > 0 else { throw Errno.noSuchFileOrDirectory }
        return r
    }

    func nextVersion() -> UInt64 {
        versionCounter &+= 1
        return versionCounter
    }

    /// Looks a name up in a directory of the merged view. Caller holds metaLock.
    func entry(_ parent: InodeNumber, _ name: FileName) -> InodeNumber? {
        if let own = overlay.entries[parent]?[name] {
            return own == 0 ? nil : own
        }
        if parent <= template.maximumInode, let ino = template.directories[parent]?[name] {
            return ino
        }
        return nil
    }

    /// Whether `name` in `parent` comes from the template (so removing it needs a whiteout).
    func templateHasEntry(_ parent: InodeNumber, _ name: FileName) -> Bool {
        parent <= template.maximumInode && template.directories[parent]?[name] != nil
    }

    /// All entries of a directory in the merged view, unordered. Caller holds metaLock.
    func mergedEntries(_ dir: InodeNumber) -> [(FileName, InodeNumber)] {
        let own = overlay.entries[dir] ?? [:]
        var result: [(FileName, InodeNumber)] = []
        if dir <= template.maximumInode, let base = template.directories[dir] {
            result.reserveCapacity(base.count + own.count)
            for (name, ino) in base where own[name] == nil { result.append((name, ino)) }
        }
        for (name, ino) in own where ino != 0 { result.append((name, ino)) }
        return result
    }

    func isEmptyDirectory(_ dir: InodeNumber) -> Bool {
        let own = overlay.entries[dir] ?? [:]
        for (_, ino) in own where ino != 0 { return false }
        if dir <= template.maximumInode, let base = template.directories[dir] {
            for (name, _) in base where own[name] == nil { return false }
        }
        return true
    }

    // MARK: - Commit

    /// Commits changes to the catalog, then applies them in memory; `removing` lists private
    /// files to remove once the catalog stops naming them. In `.grouped` mode (unless
    /// `synchronously`, or while the writer's last commit failed) the changes are applied at once
    /// and handed to the catalog writer, which commits them with the operations around them
    /// (`CatalogWriter`); a synchronous commit comes after everything queued before it.
    /// Caller holds metaLock.
    /// On a catalog failure nothing changes and the error surfaces as EIO (or ENOSPC).
    func commit(_ changes: [OverlayChange], removing files: [InodeNumber] = [], removedBytes: Int64 = .max,
                synchronously: Bool = false) throws(Errno) {
        try ensureOpen()
        var changes = changes
        // Rides in this operation's transaction: one more statement per block of versions.
        let reservation: UInt64? = versionCounter >= reservedVersions ? versionCounter.addingSaturating(Self.versionReservation) : nil
        if let reservation { changes.append(.versionCounter(reservation)) }
        if synchronously || commitMode == .beforeReply || catalogWriter.hasFailed {
            try catalogWriter.flush()
            do {
                try catalog.apply(changes)
            } catch {
                logger.error("catalog write failed: \(error)")
                throw Errno.of(error)
            }
            applyCommitted(changes)
            if let reservation { reservedVersions = reservation }
            // Unlinking a small file costs less than waking the reaper; a large one may take
            // the filesystem a while to free, so it goes to the background.
            if removedBytes <= Self.inlineRemovalBytes {
                for ino in files { removePrivateFile(ino) }
            } else {
                for ino in files { reapPrivateFile(ino) }
            }
            return
        }
        applyCommitted(changes)
        if let reservation { reservedVersions = reservation }
        catalogWriter.enqueue(changes, removing: files)
    }

    /// How far ahead of the counter a commit reserves qid versions in the catalog.
    static let versionReservation: UInt64 = 1 << 16
    /// How far above the catalog's reservation the counter starts after an unclean shutdown:
    /// past every version handed out before the crash, including those of grouped commits the
    /// crash lost. Far below 2^32, so that the 32 bits of a 9P qid.version do not come round
    /// to values handed out before either.
    static let versionMarginAfterCrash: UInt64 = 1 << 24

    private func applyCommitted(_ changes: [OverlayChange]) {
        for change in changes {
            tally.account(change, overlay: overlay, template: template)
            overlay.apply(change)
            switch change {
            case .putEntry(let parent, _, _), .deleteEntry(let parent, _), .deleteAllEntries(let parent):
                listingCache[parent] = nil
            case .putInode(let ino, _), .deleteInode(let ino):
                dirtyInodes.remove(ino)
            default: break
            }
        }
    }

    /// Changes a record in memory only; the catalog gets it with the next flush (every few
    /// seconds, on fsync, at close) unless an operation commits the inode sooner. For times and
    /// sizes only — what a crash may lose is what a filesystem mounted `lazytime` may lose.
    /// Caller holds metaLock.
    func updateLazily(_ ino: InodeNumber, _ record: InodeRecord) {
        tally.account(.putInode(ino, record), overlay: overlay, template: template)
        overlay.inodes[ino] = record
        dirtyInodes.insert(ino)
    }

    /// Writes records changed only in memory to the catalog (periodically, on fsync and close).
    /// Caller holds metaLock or calls `flushDirtyRecords()`.
    func flushDirtyLocked() throws(Errno) {
        guard !dirtyInodes.isEmpty else { return }
        let changes: [OverlayChange] = dirtyInodes.compactMap { ino in overlay.inodes[ino].map { .putInode(ino, $0) } }
        try commit(changes)
        dirtyInodes.removeAll()
    }

    public func flushDirtyRecords() throws {
        metaLock.lock()
        defer { metaLock.unlock() }
        try flushDirtyLocked()
    }

    /// Takes the next inode number, reserving a block of them in the catalog when needed.
    /// Caller holds metaLock; the returned change (if any) must be committed with the creation.
    func allocateInode() -> (InodeNumber, OverlayChange?) {
        let ino = overlay.nextInode
        overlay.nextInode = ino + 1
        if ino >= reservedInodes {
            reservedInodes = ino + 1024
            return (ino, .nextInode(reservedInodes))
        }
        return (ino, nil)
    }

    /// The record with its ctime (and optionally mtime) set to now and a new version.
    func touched(_ r: InodeRecord, modification: Bool = false, now: Timespec = .now) -> InodeRecord {
        var r = r
        r.changeTime = now
        if modification { r.modificationTime = now }
        r.version = nextVersion()
        return r
    }

    // MARK: - Private data files

    func openPrivateFile(_ ino: InodeNumber, create: Bool = false) throws(Errno) -> HostFile {
        HostFile(descriptor: try area.openPrivateFile(ino, create: create), isPrivate: true)
    }

    /// Private files up to this size are removed before the reply (see `commit`).
    static let inlineRemovalBytes: Int64 = 1 << 20

    /// Removes a private file now (small files, and error paths where nothing names it yet).
    func removePrivateFile(_ ino: InodeNumber) {
        do {
            try area.removePrivateFile(ino)
        } catch {
            logger.warning("cannot remove private file of inode \(ino): \(error)")
        }
    }

    /// Removes a private file the catalog stopped naming, in the background. Its inode number is
    /// never reused, so nothing can open it meanwhile; a crash leaves an orphan recovery removes.
    func reapPrivateFile(_ ino: InodeNumber) {
        reaper.remove(ino, from: area)
    }

    func blobHash(_ id: Int64) throws(Errno) -> BlobHash {
        if let hash = template.blobHashes[id] ?? blobHashes[id] { return hash }
        let hash: BlobHash?
        do {
            hash = try catalog.blobHash(id: id)
        } catch {
            throw Errno.ioError
        }
        guard let hash else {
            logger.error("blob \(id) is referenced but not in the catalog")
            throw Errno.ioError
        }
        blobHashes[id] = hash
        return hash
    }

    func openBlob(_ id: Int64) throws(Errno) -> HostFile {
        let hash = try blobHash(id)
        do {
            return HostFile(descriptor: try catalog.openBlob(hash), isPrivate: false)
        } catch {
            logger.error("blob \(hash) is missing from the store: \(error)")
            throw Errno.ioError
        }
    }

    /// Size of a private file as the host has it.
    func privateSize(_ ino: InodeNumber) -> Int64? {
        if let data = openData[ino] {
            data.lock.lock()
            defer { data.lock.unlock() }
            return data.size
        }
        return try? area.statPrivateFile(ino).size
    }

    // MARK: - Recovery

    /// At every open: starts the version counter above every version handed out before, and
    /// drops orphans (unlinked inodes that were open) not in `kept`. After a crash also: private
    /// files nothing references and staging leftovers, sizes from the private files, usage
    /// recomputed from the data.
    private func recover(afterUncleanShutdown unclean: Bool, keepingOrphans kept: Set<InodeNumber>) throws {
        area.clearScratch()
        var highestVersion = overlay.versionCounter
        for record in overlay.inodes.values where record.version > highestVersion { highestVersion = record.version }
        // After a clean close the counter is exact; after a crash, versions handed out since the
        // last commit (and lazily kept records' versions) are unknown: start well above them.
        versionCounter = unclean ? highestVersion.addingSaturating(Self.versionMarginAfterCrash) : highestVersion
        reservedVersions = versionCounter
        for ino in kept {
            if let record = overlay.inodes[ino], record.linkCount == 0, record.kind == .regular { keptOrphans.insert(ino) }
        }
        guard unclean else {
            try dropOrphans(cleanly: true)
            return
        }
        logger.notice("recovering after an unclean shutdown")
        try dropOrphans(cleanly: false)
        let files = area.listPrivateFiles()
        for (ino, path) in files.paths where overlay.inodes[ino]?.data != .privateFile {
            try? area.removePrivateFile(ino)
            logger.info("removed orphaned private file \(path)")
        }
        // Other names inside a shard directory are no private file of the VM either.
        for path in files.unexpected where path.contains("/") {
            try? area.removeUnexpectedEntry(path)
            logger.info("removed orphaned private file \(path)")
        }
        // Sizes of written files are kept in the catalog lazily: the private file's own size is
        // the truth for data the host filesystem holds. Changes kept lazily may be lost with
        // their versions, so a fixed record gets a new one.
        var resized: [OverlayChange] = []
        for (ino, record) in overlay.inodes where record.data == .privateFile && record.kind == .regular {
            guard let size = try? area.statPrivateFile(ino).size, size != record.size else { continue }
            var fixed = record
            fixed.size = size
            fixed.blocks = (size + 511) / 512
            fixed.version = nextVersion()
            resized.append(.putInode(ino, fixed))
        }
        if !resized.isEmpty {
            try catalog.apply(resized)
            for change in resized { overlay.apply(change) }
            logger.info("recovered the sizes of \(resized.count) written files")
        }
        quota.setUsage(computeUsage())
        try catalog.setUsage(quota.usage, clean: nil, versionCounter: versionCounter)
    }

    /// Removes the catalog's unlinked inodes but the kept ones. After a clean close their private
    /// files go here and usage is recomputed without them; after a crash recovery does both.
    private func dropOrphans(cleanly: Bool) throws {
        var changes: [OverlayChange] = []
        var files: [InodeNumber] = []
        for (ino, record) in overlay.inodes where record.linkCount == 0 && !keptOrphans.contains(ino) {
            if record.data == .privateFile { files.append(ino) }
            if isTemplateInode(ino) {
                if record.data != .none || record.privateXattrs {
                    var tombstone = record
                    tombstone.data = .none
                    tombstone.privateXattrs = false
                    changes.append(.putInode(ino, tombstone))
                    changes.append(.replaceXattrs(ino, [:]))
                }
            } else {
                changes.append(.deleteInode(ino))
            }
        }
        guard !changes.isEmpty else { return }
        try catalog.apply(changes)
        for change in changes { overlay.apply(change) }
        guard cleanly else { return }
        for ino in files { removePrivateFile(ino) }
        logger.info("removed \(files.count) unlinked inodes left open by the previous server")
        quota.setUsage(computeUsage())
        try catalog.setUsage(quota.usage, clean: nil)
    }

    /// Usage recomputed from the overlay and the private files (fsck and recovery).
    func computeUsage() -> QuotaAccount.Usage {
        var total = QuotaAccount.Usage(bytes: 0, inodes: 0)
        for (ino, record) in overlay.inodes where record.linkCount > 0 || openData[ino] != nil || keptOrphans.contains(ino) {
            let size = record.data == .privateFile ? privateSize(ino) : nil
            let charge = Charge.of(record, createdByVM: !isTemplateInode(ino), privateSize: size,
                                   xattrBytes: record.privateXattrs ? Charge.xattrBytes(overlay.xattrs[ino] ?? [:]) : 0)
            total.bytes = total.bytes.addingReportingOverflow(charge.bytes).overflow ? .max : total.bytes + charge.bytes
            total.inodes += charge.inodes
        }
        return total
    }

    /// Recomputes usage from the data and replaces the running total (fsck --repair on a served VM).
    public func recomputeUsage() -> (bytes: Int64, inodes: Int64) {
        metaLock.lock()
        defer { metaLock.unlock() }
        let usage = computeUsage()
        quota.setUsage(usage)
        return (usage.bytes, usage.inodes)
    }
}

extension UInt64 {
    func addingSaturating(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
