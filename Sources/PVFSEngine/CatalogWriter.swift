import Foundation
import Logging
import PVFSStore
import PVFSSystem
import SystemPackage

/// Writes a volume's overlay changes to the catalog in the background, the changes of many
/// operations in one SQLite transaction (group commit).
///
/// Operations apply their changes in memory and hand them here in order (under the volume's
/// metadata lock); a writer thread commits whatever has gathered, in that order, each
/// operation's changes whole. A killed process therefore leaves the catalog as it was after
/// some operation: the latest operations may be missing, none is torn. `flush()` waits until
/// everything handed over so far is committed: fsync, fsyncdir and close use it.
///
/// Private data files of removed inodes are reaped only once the transaction that stopped
/// naming them is committed.
///
/// A commit that fails keeps its changes queued and marks the writer failed; the volume then
/// commits synchronously (`flush`) before each further change and refuses changes while that
/// still fails, so callers see the error (EIO, ENOSPC) as they did with one transaction per
/// operation.
final class CatalogWriter: @unchecked Sendable {
    private let condition = NSCondition()
    private var pending: [OverlayChange] = []
    private var pendingFiles: [InodeNumber] = []
    /// Operations handed over, and operations committed (the first `committed` of them).
    private var handedOver: UInt64 = 0
    private var committed: UInt64 = 0
    /// Commit attempts made; flush waits for an attempt after a failure before reporting it.
    private var attempts: UInt64 = 0
    private var failure: Errno?
    private var flushWaiters = 0
    private var stopping = false
    private var running = false

    private let catalog: VMOverlayCatalog
    private let logger: Logger
    private let committedFiles: @Sendable ([InodeNumber]) -> Void
    /// How long the writer lets operations gather before committing, unless someone waits.
    let gatherDelay: Double
    /// Changes beyond which a batch is committed at once and operations wait for the writer.
    let batchLimit: Int

    init(catalog: VMOverlayCatalog, logger: Logger, gatherDelay: Double = 0.002, batchLimit: Int = 4096,
         committedFiles: @escaping @Sendable ([InodeNumber]) -> Void) {
        self.catalog = catalog
        self.logger = logger
        self.gatherDelay = gatherDelay
        self.batchLimit = batchLimit
        self.committedFiles = committedFiles
    }

    /// Whether the last commit failed (the next change must be committed synchronously).
    var hasFailed: Bool {
        condition.lock()
        defer { condition.unlock() }
        return failure != nil
    }

    /// Queues one operation's changes and the private files to remove once they are committed.
    func enqueue(_ changes: [OverlayChange], removing files: [InodeNumber]) {
        guard !changes.isEmpty || !files.isEmpty else { return }
        condition.lock()
        defer { condition.unlock() }
        if !running && !stopping {
            running = true
            let thread = Thread { [self] in run() }
            thread.name = "pvfs-catalog"
            thread.start()
        }
        // Bounded memory: a writer far behind (a slow disk) slows operations down.
        while pending.count >= batchLimit * 4 && failure == nil && running {
            condition.wait()
        }
        pending.append(contentsOf: changes)
        pendingFiles.append(contentsOf: files)
        handedOver += 1
        if pending.count >= batchLimit || pending.count == changes.count { condition.broadcast() }
    }

    /// Waits until every operation handed over so far is committed; throws the commit's error
    /// when that fails (the changes stay queued for the next attempt).
    func flush() throws(Errno) {
        condition.lock()
        defer { condition.unlock() }
        let target = handedOver
        guard committed < target else { return }
        guard running else {
            // Stopped with changes left: only a failure leaves them.
            throw failure ?? Errno.ioError
        }
        let startAttempts = attempts
        flushWaiters += 1
        defer { flushWaiters -= 1 }
        condition.broadcast()
        while committed < target {
            if let failure, attempts > startAttempts { throw failure }
            condition.wait()
        }
    }

    /// Commits what is queued and ends the writer thread.
    func stop() throws(Errno) {
        var result: Errno?
        do throws(Errno) {
            try flush()
        } catch {
            result = error
        }
        condition.lock()
        stopping = true
        condition.broadcast()
        while running { condition.wait() }
        let lost = pending.count
        condition.unlock()
        if lost > 0 { logger.error("catalog: \(lost) changes could not be committed; recovery will") }
        if let result { throw result }
    }

    private func run() {
        condition.lock()
        while true {
            while (pending.isEmpty || (failure != nil && flushWaiters == 0)) && !stopping {
                condition.wait()
            }
            if stopping && (pending.isEmpty || failure != nil) { break }
            if flushWaiters == 0 && gatherDelay > 0 && pending.count < batchLimit && !stopping {
                // Let more operations join this transaction.
                _ = condition.wait(until: Date(timeIntervalSinceNow: gatherDelay))
            }
            let batch = pending
            let files = pendingFiles
            let upTo = handedOver
            pending = []
            pendingFiles = []
            condition.broadcast()
            condition.unlock()

            var error: Errno?
            do {
                try catalog.apply(batch)
            } catch let failure {
                logger.error("catalog write failed: \(failure)")
                error = Errno.of(failure)  // ENOSPC when the catalog's filesystem is full
            }
            if error == nil && !files.isEmpty { committedFiles(files) }

            condition.lock()
            attempts += 1
            if let error {
                failure = error
                pending = batch + pending
                pendingFiles = files + pendingFiles
            } else {
                failure = nil
                committed = upTo
            }
            condition.broadcast()
        }
        running = false
        condition.broadcast()
        condition.unlock()
    }
}
