import Dispatch
import Foundation
import PVFSEngine
import SystemPackage

/// A Tlock with the block flag that found the range taken: it waits without a thread of its
/// own. The engine calls back when the inode's locks change and the waiter tries again; a
/// timer tries again every `pollInterval` as well, which is when a flush, the end of the
/// connection or the deadline is noticed. Every attempt runs on one serial queue shared by all
/// waiters of the process (an attempt is a few microseconds under the lock table's lock), so a
/// waiter's attempts never overlap and a thousand waiting guests cost no thread each.
final class NinePLockWaiter: @unchecked Sendable {
    /// Where every waiter's attempts and timers run.
    static let queue = DispatchQueue(label: "pvfs.9p.lockwait")
    /// How often a waiter looks at its flush, connection and deadline between wake-ups.
    static let pollInterval = DispatchTimeInterval.milliseconds(200)

    enum Outcome {
        /// The lock is held now.
        case granted
        /// The deadline passed: the client is told BLOCKED (Linux sleeps and asks again).
        case timedOut
        /// Flushed, or the connection ended: no reply.
        case cancelled
        case failed(Errno)
    }

    private let view: VMView
    private let inode: InodeNumber
    private let owner: UInt64
    private let range: FileLockRange
    private let deadline: UInt64
    private let isCancelled: @Sendable () -> Bool
    /// The connection is being handed to another process: stop waiting as if timed out.
    private let shouldGiveUp: @Sendable () -> Bool
    private let finished: @Sendable (Outcome) -> Void
    // Confined to `queue`:
    private var done = false
    private var watch: LockWatch?

    /// `deadline`: DispatchTime uptime nanoseconds, or UInt64.max for none. `finished` is called
    /// once, on `queue`.
    init(view: VMView, inode: InodeNumber, owner: UInt64, range: FileLockRange, deadline: UInt64,
         isCancelled: @escaping @Sendable () -> Bool, shouldGiveUp: @escaping @Sendable () -> Bool = { false },
         finished: @escaping @Sendable (Outcome) -> Void) {
        self.shouldGiveUp = shouldGiveUp
        self.view = view
        self.inode = inode
        self.owner = owner
        self.range = range
        self.deadline = deadline
        self.isCancelled = isCancelled
        self.finished = finished
    }

    /// Starts waiting: the first attempt runs at once on the queue.
    func start() {
        Self.queue.async { self.attempt() }
        schedulePoll()
    }

    private func schedulePoll() {
        Self.queue.asyncAfter(deadline: .now() + Self.pollInterval) { [self] in
            guard !done else { return }
            attempt()
            if !done { schedulePoll() }
        }
    }

    /// Runs on `queue`.
    private func attempt() {
        guard !done else { return }
        if let pending = watch {
            view.stopWatching(pending)
            watch = nil
        }
        if isCancelled() { return finish(.cancelled) }
        if DispatchTime.now().uptimeNanoseconds >= deadline { return finish(.timedOut) }
        do throws(Errno) {
            watch = try view.setLockOrWatch(inode, owner: owner, range: range) { [self] in
                Self.queue.async { self.attempt() }
            }
            if watch != nil {
                if shouldGiveUp() { finish(.timedOut) }
                return
            }
            if isCancelled() {
                // Granted just as it was flushed: the client will not learn of it, so undo it.
                let undo = FileLockRange(type: .unlock, start: range.start, end: range.end, pid: range.pid)
                try? view.setLock(inode, owner: owner, range: undo, wait: false)
                return finish(.cancelled)
            }
            finish(.granted)
        } catch {
            finish(.failed(error))
        }
    }

    private func finish(_ outcome: Outcome) {
        done = true
        if let pending = watch {
            view.stopWatching(pending)
            watch = nil
        }
        finished(outcome)
    }
}
