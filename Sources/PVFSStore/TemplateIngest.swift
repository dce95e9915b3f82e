import Dispatch
import Foundation
import GRDB
import Glibc
import Logging
import PVFSSystem
import Synchronization
import SystemPackage

/// How `Store.createTemplate` ingests a tree.
public struct IngestOptions: Sendable {
    /// Keep directories that are mount points of other filesystems, but not their content
    /// (like `tar --one-file-system`, `rsync -x`). On by default: a root tree with /proc, /sys or
    /// a bind mount inside must not pull those in.
    public var oneFileSystem = true
    /// Threads reading, hashing and staging file content.
    public var jobs = max(2, ProcessInfo.processInfo.activeProcessorCount)
    /// Clone content with FICLONE where the source and the store share a filesystem that can.
    public var reflink = true
    /// Files per publication batch (one syncfs, renames and catalog commit each, overlapping
    /// the staging of the next batch). Catalog transactions are also cut at 2000 rows.
    public var batchFiles = 2000
    /// Content bytes per publication batch (bounds the staged, not yet published data).
    public var batchBytes: Int64 = 256 << 20
    /// What `template.source` records; defaults to "dir:<absolute path>".
    public var sourceLabel: String?

    public init() {}
}

/// Set from a signal handler or another thread to stop an ingest; the ingest then removes what
/// it did and throws.
public final class IngestCancellation: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public func cancel() { flag.store(true, ordering: .relaxed) }
    public var isCancelled: Bool { flag.load(ordering: .relaxed) }
}

/// Progress callbacks of an ingest (called from worker threads).
public struct IngestProgress: Sendable {
    /// After the scan: entries, regular files with content, and their bytes.
    public var scanned: @Sendable (_ entries: Int, _ files: Int, _ bytes: Int64) -> Void
    /// After each file's content was staged.
    public var staged: @Sendable (_ bytes: Int64) -> Void

    public init(scanned: @escaping @Sendable (Int, Int, Int64) -> Void = { _, _, _ in },
                staged: @escaping @Sendable (Int64) -> Void = { _ in }) {
        self.scanned = scanned
        self.staged = staged
    }
}

/// What an ingest produced.
public struct IngestReport: Codable, Sendable {
    public var name: String
    public var source: String
    /// Paths in the tree, the root included.
    public var entries: Int
    public var inodes: Int
    public var directories = 0
    public var regularFiles = 0
    public var symlinks = 0
    public var devices = 0
    public var fifos = 0
    public var sockets = 0
    /// Names beyond the first of hardlinked files.
    public var extraHardlinks = 0
    public var xattrs = 0
    /// Sum of the sizes of the regular files (each hardlinked file once).
    public var logicalBytes: Int64 = 0
    /// Blobs this ingest added to the store and their bytes.
    public var newBlobs = 0
    public var newBlobBytes: Int64 = 0
    /// Files whose content the store already had (or that repeat content within the tree).
    public var reusedContent = 0
    public var copyMethod: ContentCopy = .copy
    public var skippedMountPoints: [String] = []
    public var seconds: Double = 0
}

extension Store {
    /// Ingests the tree at `path` as the template `name`: scans it, publishes the content of its
    /// regular files as blobs and records its metadata in the catalog; the template is listed
    /// once everything is durable. On failure (or cancellation) removes what it did, or leaves it
    /// to `cleanUpInterruptedIngests` when another process holds the blobs lock.
    public func createTemplate(name: String, fromDirectory path: String, options: IngestOptions = IngestOptions(),
                               progress: IngestProgress = IngestProgress(), cancellation: IngestCancellation? = nil) throws -> IngestReport {
        let started = monotonicNanoseconds()
        try Self.validateName(name, what: "template")
        let root: FileDescriptor
        let rootStat: FileStat
        do {
            // O_NOATIME (for the owner or CAP_FOWNER) keeps reading the tree from touching atimes.
            do {
                root = try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly, .noAccessTime])
            } catch Errno.notPermitted {
                root = try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly])
            }
            rootStat = try root.stat()
        } catch {
            switch error {
            case .noSuchFileOrDirectory: throw PVFSError(.sourceTree, "source directory \(path) does not exist", errno: error)
            case .notDirectory: throw PVFSError(.sourceTree, "source \(path) is not a directory", errno: error)
            default: throw PVFSError(.sourceTree, "cannot open source directory \(path): \(error)", errno: error)
            }
        }
        defer { root.closeQuietly() }
        let source = options.sourceLabel ?? "dir:" + Self.absolutePath(path)

        let area = try StagingArea(store: self)
        do {
            let templateID = try beginTemplate(name: name, token: area.token, source: source)
            let storeRoot = try self.root.stat()
            var scanner = TreeScanner(root: root, rootStat: rootStat, oneFileSystem: options.oneFileSystem,
                                      excluded: (storeRoot.device, storeRoot.inode))
            let tree = try scanner.scan { cancellation?.isCancelled ?? false }
            let scanned = monotonicNanoseconds()
            if tree.skippedStore { logger.notice("the store lies inside the source tree; left it out") }
            for mount in tree.skippedMountPoints {
                logger.notice("\(mount) is a mount point; kept the directory, not its content (one filesystem)")
            }
            progress.scanned(tree.dirents.count + 1, tree.files.count, tree.files.reduce(0) { $0 + $1.size })

            let run = IngestRun(store: self, area: area, templateID: templateID, root: root, tree: tree, options: options,
                                progress: progress, cancellation: cancellation)
            try run.ingestFiles()
            let published = monotonicNanoseconds()
            var report = run.report(name: name, source: source)
            try finishTemplate(id: templateID, report: report, maxInode: tree.maxInode)
            area.dispose()
            let finished = monotonicNanoseconds()
            report.seconds = Double(finished - started) / 1e9
            func ms(_ a: UInt64, _ b: UInt64) -> String { String(format: "%.0f ms", Double(b - a) / 1e6) }
            logger.debug("ingest of \(name): scan \(ms(started, scanned)), rows and file content \(ms(scanned, published)) (in syncfs \(ms(0, run.syncNanoseconds))), finish \(ms(published, finished))")
            return report
        } catch {
            abandon(area)
            if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted; nothing of template \(name) was kept", errno: .interrupted) }
            if let error = error as? Errno { throw PVFSError(.store, "cannot ingest \(path): \(error)", errno: error) }
            throw error
        }
    }

    static func absolutePath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Inserts the template row in state 'building' with the ingest's token. The ingest's lock
    /// is held already, so cleanup can never take this row for an abandoned one.
    func beginTemplate(name: String, token: String, source: String) throws -> Int64 {
        func attempt() throws -> Int64? {
            try catalog.write { db in
                if let state = try String.fetchOne(db, sql: "SELECT state FROM template WHERE name = ?", arguments: [name]) {
                    if state == "ready" { throw PVFSError(.store, "a template named \(name) exists already", errno: .fileExists) }
                    return nil
                }
                try db.execute(sql: """
                    INSERT INTO template (name, state, source, created_ns, ingest_token) VALUES (?, 'building', ?, ?, ?)
                    """, arguments: [name, source, Timespec.now.totalNanoseconds, token])
                return db.lastInsertedRowID
            }
        }
        if let id = try attempt() { return id }
        // Not ready: an ingest of that name runs, or one was killed and is not cleaned up yet.
        _ = try? cleanUpInterruptedIngests()
        if let id = try attempt() { return id }
        throw PVFSError(.store, "a template named \(name) is being created by another process", errno: .resourceBusy)
    }

    /// Marks the template ready, durably (the WAL is fsynced at this commit).
    func finishTemplate(id: Int64, report: IngestReport, maxInode: Int64) throws {
        try catalog.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            defer { try? db.execute(sql: "PRAGMA synchronous = NORMAL") }
            try db.inTransaction {
                try db.execute(sql: """
                    UPDATE template SET state = 'ready', ingest_token = NULL, entry_count = ?, logical_bytes = ?, max_inode = ?
                    WHERE id = ? AND state = 'building'
                    """, arguments: [report.entries, report.logicalBytes, maxInode, id])
                guard db.changesCount == 1 else {
                    throw PVFSError(.store, "template \(report.name) was removed while it was being created", errno: .ioError)
                }
                return .commit
            }
        }
    }

    /// Undoes a failed ingest: staged files go at once; rows and published blobs too when the
    /// blobs lock can be had within a few seconds, otherwise the next cleanup finishes.
    func abandon(_ area: StagingArea) {
        area.removeStagedFiles()
        do {
            if try reclaimIngest(token: area.token, waitSeconds: 5) {
                area.dispose()
            } else {
                logger.warning("another process holds the blobs lock; the interrupted template is left for the next cleanup")
            }
        } catch {
            logger.warning("cannot clean up after the failed ingest (the next command retries): \(error)")
        }
    }
}

/// One ingest's file pipeline and its bookkeeping.
final class IngestRun: @unchecked Sendable {
    let store: Store
    let area: StagingArea
    let templateID: Int64
    let root: FileDescriptor
    let tree: ScannedTree
    let options: IngestOptions
    let progress: IngestProgress
    let cancellation: IngestCancellation?
    let shards: ShardDirectories

    private let failure = Mutex<(any Error)?>(nil)
    private let statistics = Mutex(PublicationStatistics())
    var syncNanoseconds: UInt64 { statistics.withLock { $0.syncNanoseconds } }

    static let rowsPerTransaction = 2000

    init(store: Store, area: StagingArea, templateID: Int64, root: FileDescriptor, tree: ScannedTree, options: IngestOptions,
         progress: IngestProgress, cancellation: IngestCancellation?) {
        self.store = store
        self.area = area
        self.templateID = templateID
        self.root = root
        self.tree = tree
        self.options = options
        self.progress = progress
        self.cancellation = cancellation
        self.shards = ShardDirectories(blobs: store.blobsDirectory)
    }

    private var failed: Bool { failure.withLock { $0 != nil } || cancellation?.isCancelled == true }

    private func fail(_ error: any Error) {
        failure.withLock { if $0 == nil { $0 = error } }
    }

    static let insertInodeSQL = """
        INSERT INTO template_inode (template_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, rdev, blob_id, symlink_target)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """

    func insertInode(_ statement: Statement, ino: Int64, blobID: Int64?) throws {
        let r = tree.inodes[Int(ino - 1)]
        try statement.execute(arguments: [
            templateID, ino, Int64(r.mode), Int64(r.uid), Int64(r.gid), Int64(r.nlink), r.size, r.blocks,
            r.atime, r.mtime, r.ctime, Int64(bitPattern: r.rdev), blobID, r.symlinkTarget?.databaseBlob,
        ])
    }

    /// Everything but file content: inodes without a blob, directory entries and xattrs, in
    /// transactions of a few thousand rows so that other writers (a serving daemon) wait little.
    func insertStructure() throws {
        let plain = tree.inodes.indices.filter { !tree.inodes[$0].hasContent }
        for chunk in plain.chunked(Self.rowsPerTransaction) {
            try checkCancelled()
            try store.catalog.write { db in
                let statement = try db.cachedStatement(sql: Self.insertInodeSQL)
                for position in chunk { try insertInode(statement, ino: Int64(plain[position] + 1), blobID: nil) }
            }
        }
        for chunk in tree.dirents.indices.chunked(Self.rowsPerTransaction) {
            try checkCancelled()
            try store.catalog.write { db in
                let statement = try db.cachedStatement(sql: "INSERT INTO template_dirent (template_id, parent, name, ino) VALUES (?, ?, ?, ?)")
                for index in chunk {
                    let d = tree.dirents[index]
                    try statement.execute(arguments: [templateID, d.parent, d.name.databaseBlob, d.ino])
                }
            }
        }
        var xattrs: [(ino: Int64, name: [UInt8], value: [UInt8])] = []
        for (index, inode) in tree.inodes.enumerated() {
            for x in inode.xattrs { xattrs.append((Int64(index + 1), x.name, x.value)) }
        }
        for chunk in xattrs.indices.chunked(Self.rowsPerTransaction) {
            try store.catalog.write { db in
                let statement = try db.cachedStatement(sql: "INSERT INTO template_xattr (template_id, ino, name, value) VALUES (?, ?, ?, ?)")
                for index in chunk {
                    let x = xattrs[index]
                    try statement.execute(arguments: [templateID, x.ino, x.name.databaseBlob, x.value.databaseBlob])
                }
            }
        }
    }

    private func checkCancelled() throws {
        if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted", errno: .interrupted) }
    }

    /// Stages the files batch by batch on `options.jobs` threads while a committer thread
    /// publishes the previous batch (its syncfs overlaps the next batch's reading and hashing).
    /// Each batch holds the blobs lock shared from before its first file is staged until its
    /// catalog commit.
    func ingestFiles() throws {
        // Source inode order: on a cold cache it follows the disk layout more closely than
        // directory order does.
        let jobs = tree.files.sorted { ($0.device, $0.inode) < ($1.device, $1.inode) }
        // Staged files are open descriptors until published: two batches' worth at a time.
        let batchFiles = Self.batchFilesWithinDescriptorLimit(options.batchFiles)
        startWritebackThread()
        defer { stopWritebackThread() }
        let committer = DispatchQueue(label: "pvfs.ingest.commit")
        let slots = DispatchSemaphore(value: 1)
        let group = DispatchGroup()
        // The rows of everything but file content go first, on the committer thread, while the
        // workers stage the first batch.
        group.enter()
        committer.async { [self] in
            defer { group.leave() }
            do {
                try insertStructure()
            } catch {
                fail(error)
            }
        }
        var start = 0
        while start < jobs.count && !failed {
            var end = start
            var bytes: Int64 = 0
            while end < jobs.count && end - start < batchFiles && (end == start || bytes + jobs[end].size <= options.batchBytes) {
                bytes += jobs[end].size
                end += 1
            }
            let batch = Array(jobs[start..<end])
            start = end
            let lock: LockFile
            do {
                lock = try store.lockBlobsShared()
            } catch {
                fail(error)
                break
            }
            let t0 = monotonicNanoseconds()
            guard let staged = stage(batch) else { break }
            let t1 = monotonicNanoseconds()
            slots.wait()
            store.logger.trace("batch of \(batch.count) files (\(bytes) bytes) staged in \((t1 - t0) / 1_000_000) ms; waited \((monotonicNanoseconds() - t1) / 1_000_000) ms for the previous commit")
            group.enter()
            committer.async { [self] in
                defer {
                    withExtendedLifetime(lock) {}
                    slots.signal()
                    group.leave()
                }
                guard !failed else {
                    for blob in staged { area.discard(blob.file) }
                    return
                }
                do {
                    let c0 = monotonicNanoseconds()
                    try commit(batch, staged)
                    store.logger.trace("batch of \(batch.count) files published and committed in \((monotonicNanoseconds() - c0) / 1_000_000) ms")
                } catch {
                    fail(error)
                }
            }
        }
        group.wait()
        if let error = failure.withLock({ $0 }) { throw error }
        try checkCancelled()
    }

    // Early writeback. Staged data would otherwise sit in the page cache until the batch's
    // syncfs and then be written while nothing else happens. A writeback thread calls syncfs each
    // time another 64 MiB were staged, so the disk works while the workers hash and copy; the
    // batch's own syncfs, which orders the renames after the data, then finds little left.
    // (Per-file sync_file_range would do the same at a much higher CPU cost: one block-layer
    // submission per file instead of one writeback pass over all of them.)

    static let writebackEvery: Int64 = 64 << 20
    private let unflushedBytes = Atomic<Int64>(0)
    private let writebackRequests = DispatchSemaphore(value: 0)
    private let writebackDone = DispatchSemaphore(value: 0)
    private let writebackStop = Atomic<Bool>(false)

    private func startWritebackThread() {
        let thread = Thread { [self] in
            while true {
                writebackRequests.wait()
                if writebackStop.load(ordering: .relaxed) { break }
                unflushedBytes.store(0, ordering: .relaxed)
                try? area.directory.syncFileSystem()
            }
            writebackDone.signal()
        }
        thread.name = "pvfs.ingest.writeback"
        thread.start()
    }

    private func stopWritebackThread() {
        writebackStop.store(true, ordering: .relaxed)
        writebackRequests.signal()
        writebackDone.wait()
    }

    private func noteStaged(bytes: Int64) {
        let before = unflushedBytes.add(bytes, ordering: .relaxed).oldValue
        if before < Self.writebackEvery && before + bytes >= Self.writebackEvery { writebackRequests.signal() }
    }

    /// Raises the soft limit on open files to the hard one and returns the largest batch size
    /// (at most `wanted`) whose staged files two batches can keep open within it.
    static func batchFilesWithinDescriptorLimit(_ wanted: Int) -> Int {
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0 else { return min(wanted, 256) }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(resource, &raised) == 0 { limit = raised }
        }
        let usable = Int(min(limit.rlim_cur, 1 << 20)) - 512
        return max(16, min(wanted, usable / 2))
    }

    /// Stages one batch in parallel; nil after a failure (recorded).
    private func stage(_ batch: [FileJob]) -> [StagedBlob]? {
        let results = UnsafeMutableBufferPointer<StagedBlob?>.allocate(capacity: batch.count)
        results.initialize(repeating: nil)
        defer { results.deallocate() }
        let box = ResultSlots(results)
        let next = Atomic<Int>(0)
        let workers = min(max(1, options.jobs), batch.count)
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            let buffer = StagingBuffer()
            var noAccessTime = true
            let connection: DatabaseQueue
            do {
                connection = try takeLookupConnection()
            } catch {
                fail(PVFSError(.store, "cannot open the catalog of \(store.path): \(error)"))
                return
            }
            defer { returnLookupConnection(connection) }
            while !failed {
                let index = next.add(1, ordering: .relaxed).oldValue
                guard index < batch.count else { break }
                do {
                    box.slots[index] = try stageFile(batch[index], buffer: buffer, connection: connection, noAccessTime: &noAccessTime)
                } catch {
                    fail(error)
                }
            }
        }
        if failed {
            for slot in results { area.discard(slot?.file) }
            return nil
        }
        return results.map { $0! }
    }

    private func stageFile(_ job: FileJob, buffer: StagingBuffer, connection: DatabaseQueue, noAccessTime: inout Bool) throws -> StagedBlob {
        let fd = try job.open(in: root, oneFileSystem: options.oneFileSystem, noAccessTime: &noAccessTime)
        defer { fd.closeQuietly() }
        if !job.mayBeSparse && job.size > Int64(buffer.bytes.count) { fd.adviseSequential() }
        let staged: (StagedBlob, ContentCopy)?
        do {
            staged = try area.stage(from: fd, size: job.size, mayBeSparse: job.mayBeSparse, buffer: buffer, hashFirst: lookupsPay,
                                    claim: { try claim($0, using: connection) })
        } catch let error as Errno {
            switch error {
            case .noSpace, .diskQuotaExceeded:
                let reserve = store.spaceReserve.bytes > 0 && !store.spaceReserve.isHeld
                    ? " (its space reserve is in use by the catalog: free space, then try again)" : ""
                throw PVFSError(.store, "no space left in the store's filesystem (\(store.path)) while copying \(displayPath(job.path))\(reserve)", errno: error)
            default:
                throw PVFSError(.store, "cannot copy \(displayPath(job.path)) into the store: \(error)", errno: error)
            }
        }
        guard let (blob, _) = staged else {
            throw PVFSError(.sourceTree, "\(displayPath(job.path)) changed while the tree was being ingested (the source must not change during ingest)")
        }
        do {
            try job.checkUnchanged(try fd.stat())
        } catch {
            area.discard(blob.file)
            throw error
        }
        if blob.file != nil { noteStaged(bytes: job.size) }
        progress.staged(job.size)
        return blob
    }

    /// Hashes of content this ingest stages or found in the store.
    private let claimed = Mutex(Set<BlobHash>())

    /// Read-only catalog connections for the workers' lookups: a statement in autocommit mode
    /// on a private connection costs a few microseconds, a pool read transaction ten times more.
    private let lookupConnections = Mutex<[DatabaseQueue]>([])

    private func takeLookupConnection() throws -> DatabaseQueue {
        if let queue = lookupConnections.withLock({ $0.popLast() }) { return queue }
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(30)
        configuration.label = "pvfs.ingest.lookup"
        return try DatabaseQueue(path: store.catalogPath, configuration: configuration)
    }

    private func returnLookupConnection(_ queue: DatabaseQueue) {
        lookupConnections.withLock { $0.append(queue) }
    }

    private let lookups = Atomic<Int>(0)
    private let lookupHits = Atomic<Int>(0)
    private let claims = Atomic<Int>(0)

    /// Whether lookups have been finding content: then large files are hashed before they are
    /// copied, so that known content is never written.
    private var lookupsPay: Bool {
        let hits = lookupHits.load(ordering: .relaxed)
        return hits > 0 && hits * 16 >= lookups.load(ordering: .relaxed)
    }

    /// Whether content needs no copy: another file of this ingest has it, or the store does
    /// (looked up while the batch holds the blobs lock, so it stays until the batch commits).
    ///
    /// The store is asked while lookups pay: for the first few hundred files, then as long as
    /// at least one lookup in 16 finds the content (a re-ingest, a tree sharing much with the
    /// store), and otherwise for one file in 32, so that a rising hit rate is noticed. Content
    /// staged without a lookup is still deduplicated before anything is flushed (`publish`).
    private func claim(_ hash: BlobHash, using connection: DatabaseQueue) throws -> Bool {
        if !claimed.withLock({ $0.insert(hash).inserted }) { return true }
        let asked = lookups.load(ordering: .relaxed)
        let sequence = claims.add(1, ordering: .relaxed).oldValue
        guard asked < 256 || lookupHits.load(ordering: .relaxed) * 16 >= asked || sequence % 32 == 0 else { return false }
        lookups.add(1, ordering: .relaxed)
        let found = try connection.inDatabase { db in
            try Bool.fetchOne(db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM blob WHERE hash = ?)"),
                              arguments: [hash.bytes.databaseBlob]) ?? false
        }
        if found { lookupHits.add(1, ordering: .relaxed) }
        return found
    }

    private func commit(_ batch: [FileJob], _ staged: [StagedBlob]) throws {
        let stats = try store.publish(staged, from: area, shards: shards, rowsPerTransaction: Self.rowsPerTransaction) { db, range, ids in
            let statement = try db.cachedStatement(sql: Self.insertInodeSQL)
            for index in range {
                try insertInode(statement, ino: batch[index].ino, blobID: ids[staged[index].hash]!)
            }
        }
        statistics.withLock { $0.add(stats) }
    }

    func report(name: String, source: String) -> IngestReport {
        var report = IngestReport(name: name, source: source, entries: tree.dirents.count + 1, inodes: tree.inodes.count)
        for inode in tree.inodes {
            switch inode.kind {
            case .directory: report.directories += 1
            case .regular:
                report.regularFiles += 1
                report.logicalBytes += inode.size
                report.extraHardlinks += Int(inode.nlink) - 1
            case .symlink: report.symlinks += 1
            case .characterDevice, .blockDevice: report.devices += 1
            case .fifo: report.fifos += 1
            case .socket: report.sockets += 1
            }
            if inode.kind != .directory && inode.kind != .regular { report.extraHardlinks += Int(inode.nlink) - 1 }
            report.xattrs += inode.xattrs.count
        }
        let stats = statistics.withLock { $0 }
        report.newBlobs = stats.newBlobs
        report.newBlobBytes = stats.newBytes
        report.reusedContent = stats.reused
        report.copyMethod = area.reflinkWorked ? .reflink : .copy
        report.skippedMountPoints = tree.skippedMountPoints
        return report
    }
}

/// Result slots written by worker threads, each at its own index.
private final class ResultSlots: @unchecked Sendable {
    let slots: UnsafeMutableBufferPointer<StagedBlob?>
    init(_ slots: UnsafeMutableBufferPointer<StagedBlob?>) { self.slots = slots }
}

extension Collection where Index == Int {
    /// Consecutive index ranges of at most `size` elements.
    func chunked(_ size: Int) -> [Range<Int>] {
        stride(from: startIndex, to: endIndex, by: size).map { $0..<Swift.min($0 + size, endIndex) }
    }
}
