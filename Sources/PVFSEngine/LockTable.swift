import Foundation
import Logging
import PVFSSystem
import SystemPackage

/// POSIX byte-range locks and flock locks of a volume's inodes, kept by the server so that every
/// client of a VM (guest over 9P, host over FUSE) sees the same locks.
///
/// Records are bounded per volume and per session (`VolumeLimits.lockRecords`): a request that
/// would need more fails with ENOLCK, as Linux's lock code does when it cannot allocate one.
/// An owner's adjacent ranges of one type merge into one record, as on Linux, so a process that
/// locks a file piece by piece holds one record.
final class LockTable: @unchecked Sendable {
    private struct Held {
        var owner: LockOwner
        var range: FileLockRange
    }

    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var held: [InodeNumber: [Held]] = [:]
    private var total = 0
    private var perSession: [UInt64: Int] = [:]
    private var volumeLimit: Int
    private var sessionLimit: Int
    private let counters: LimitCounters?
    private let logger: Logger?
    /// Waiters that hold no thread (`setOrWatch`), by inode: each is called once, after the
    /// inode's locks next change, outside the table's lock.
    private var watchers: [InodeNumber: [UInt64: @Sendable () -> Void]] = [:]
    private var nextWatchToken: UInt64 = 1

    init(perVolume: Int = VolumeLimits().lockRecords, perSession: Int = VolumeLimits().lockRecordsPerSession,
         counters: LimitCounters? = nil, logger: Logger? = nil) {
        volumeLimit = perVolume
        sessionLimit = perSession
        self.counters = counters
        self.logger = logger
    }

    func setLimits(perVolume: Int, perSession: Int) {
        condition.lock()
        volumeLimit = perVolume
        sessionLimit = perSession
        condition.unlock()
    }

    /// Records held now (for metrics and tests).
    var recordCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return total
    }

    func recordCount(session: UInt64) -> Int {
        condition.lock()
        defer { condition.unlock() }
        return perSession[session] ?? 0
    }

    /// The first lock of another owner that conflicts with `range`, if any.
    func test(_ ino: InodeNumber, owner: LockOwner, range: FileLockRange) -> FileLockRange? {
        condition.lock()
        defer { condition.unlock() }
        return conflict(ino, owner, range)?.range
    }

    private func conflict(_ ino: InodeNumber, _ owner: LockOwner, _ range: FileLockRange) -> Held? {
        guard range.type != .unlock else { return nil }
        for h in held[ino] ?? [] where h.owner != owner {
            let overlaps = h.range.start <= range.end && range.start <= h.range.end
            if overlaps && (h.range.type == .write || range.type == .write) { return h }
        }
        return nil
    }

    /// Takes, changes or releases a lock. Without `wait`, a conflict fails with EAGAIN; with it
    /// the call blocks until the lock can be had (or `cancelled` returns true).
    func set(_ ino: InodeNumber, owner: LockOwner, range: FileLockRange, wait: Bool,
             cancelled: () -> Bool = { false }) throws(Errno) {
        try changing { () throws(Errno) in
            while conflict(ino, owner, range) != nil {
                guard wait else { throw Errno.resourceTemporarilyUnavailable }
                if cancelled() { throw Errno.interrupted }
                _ = condition.wait(until: Date(timeIntervalSinceNow: 0.5))
            }
            try apply(ino, owner: owner, range: range)
            return ((), [ino])
        }
    }

    /// Takes the lock now, or, on a conflict, arranges for `wake` to be called once the inode's
    /// locks next change and returns a token for `stopWatching` (F_SETLKW without a thread: the
    /// caller tries again when woken). Checking and watching happen under one lock, so no
    /// release between them goes unseen.
    func setOrWatch(_ ino: InodeNumber, owner: LockOwner, range: FileLockRange,
                    wake: @escaping @Sendable () -> Void) throws(Errno) -> UInt64? {
        try changing { () throws(Errno) -> (UInt64?, [InodeNumber]) in
            if conflict(ino, owner, range) != nil {
                let token = nextWatchToken
                nextWatchToken += 1
                watchers[ino, default: [:]][token] = wake
                return (token, [])
            }
            try apply(ino, owner: owner, range: range)
            return (nil, [ino])
        }
    }

    /// Forgets a watch that has not fired (the waiter gave up).
    func stopWatching(_ ino: InodeNumber, token: UInt64) {
        condition.lock()
        defer { condition.unlock() }
        watchers[ino]?[token] = nil
        if watchers[ino]?.isEmpty == true { watchers[ino] = nil }
    }

    /// Waiters currently watching (for tests and metrics).
    var watcherCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return watchers.values.reduce(0) { $0 + $1.count }
    }

    /// Runs `change` under the table's lock, then calls the watchers of the inodes it says it
    /// changed, after the lock is released: every change of the locks goes through here, so no
    /// change forgets its waiters and no waiter runs under the lock.
    private func changing<T, E: Error>(_ change: () throws(E) -> (T, [InodeNumber])) throws(E) -> T {
        condition.lock()
        let result: T, woken: [@Sendable () -> Void]
        do {
            let (value, changed) = try change()
            result = value
            woken = takeWatchers(of: changed)
        } catch {
            condition.unlock()
            throw error
        }
        condition.unlock()
        for wake in woken { wake() }
        return result
    }

    /// Removes and returns the watchers of inodes whose locks changed. Caller holds `condition`.
    private func takeWatchers(of inodes: some Sequence<InodeNumber>) -> [@Sendable () -> Void] {
        guard !watchers.isEmpty else { return [] }
        var woken: [@Sendable () -> Void] = []
        for ino in inodes {
            if let list = watchers.removeValue(forKey: ino) { woken.append(contentsOf: list.values) }
        }
        return woken
    }

    /// Takes, changes or releases a lock that conflicts with no other owner's. Caller holds `condition`.
    private func apply(_ ino: InodeNumber, owner: LockOwner, range: FileLockRange) throws(Errno) {
        let old = held[ino] ?? []
        // Remove the owner's overlap with the new range, splitting locks it cuts through.
        var kept: [Held] = []
        kept.reserveCapacity(old.count + 2)
        var merged = range
        // Only the owner's records change: count them before and after.
        var ownBefore = 0
        var ownAfter = 0
        for h in old {
            guard h.owner == owner else {
                kept.append(h)
                continue
            }
            ownBefore += 1
            let overlaps = h.range.start <= range.end && range.start <= h.range.end
            if !overlaps {
                // A neighbour of the same type joins the new range (end + 1 cannot wrap: a range
                // that ends at UInt64.max has no right neighbour).
                let touchesLeft = h.range.end != .max && h.range.end + 1 == range.start
                let touchesRight = range.end != .max && range.end + 1 == h.range.start
                if range.type != .unlock && h.range.type == range.type && (touchesLeft || touchesRight) {
                    merged.start = min(merged.start, h.range.start)
                    merged.end = max(merged.end, h.range.end)
                } else {
                    kept.append(h)
                    ownAfter += 1
                }
                continue
            }
            if h.range.start < range.start {
                var left = h
                left.range.end = range.start - 1
                if range.type != .unlock && left.range.type == range.type {
                    merged.start = min(merged.start, left.range.start)
                } else {
                    kept.append(left)
                    ownAfter += 1
                }
            }
            if h.range.end > range.end {
                var right = h
                right.range.start = range.end + 1
                if range.type != .unlock && right.range.type == range.type {
                    merged.end = max(merged.end, right.range.end)
                } else {
                    kept.append(right)
                    ownAfter += 1
                }
            }
        }
        if range.type != .unlock {
            kept.append(Held(owner: owner, range: merged))
            ownAfter += 1
        }
        let (before, after) = (ownBefore, ownAfter)
        if after > before {
            let grown = after - before
            let sessionHeld = perSession[owner.session] ?? 0
            if total + grown > volumeLimit {
                report(.lockRecords, "\(total) of \(volumeLimit) lock records held")
                throw Errno.noLocks
            }
            if sessionHeld + grown > sessionLimit {
                report(.lockRecordsPerSession, "session \(owner.session) holds \(sessionHeld) of \(sessionLimit) lock records")
                throw Errno.noLocks
            }
        }
        total += after - before
        adjust(owner.session, by: after - before)
        held[ino] = kept.isEmpty ? nil : kept
        condition.broadcast()
    }

    private func report(_ limit: TenantLimit, _ detail: String) {
        if let counters, let logger { counters.record(limit, logger: logger, detail) }
    }

    /// Caller holds `condition`.
    private func adjust(_ session: UInt64, by delta: Int) {
        guard delta != 0 else { return }
        let n = (perSession[session] ?? 0) + delta
        perSession[session] = n > 0 ? n : nil
    }

    /// Replaces an inode's list, keeping the counts. Caller holds `condition`.
    private func replace(_ ino: InodeNumber, _ old: [Held], _ new: [Held]) {
        var delta: [UInt64: Int] = [:]
        for h in old { delta[h.owner.session, default: 0] -= 1 }
        for h in new { delta[h.owner.session, default: 0] += 1 }
        for (session, d) in delta { adjust(session, by: d) }
        total += new.count - old.count
        held[ino] = new.isEmpty ? nil : new
    }

    /// The locks a session holds, ordered by inode and start.
    func held(session: UInt64) -> [HeldLock] {
        condition.lock()
        defer { condition.unlock() }
        guard perSession[session] != nil else { return [] }
        var result: [HeldLock] = []
        for (ino, list) in held {
            for h in list where h.owner.session == session {
                result.append(HeldLock(inode: ino, owner: h.owner.owner, range: h.range))
            }
        }
        return result.sorted { ($0.inode, $0.range.start, $0.owner) < ($1.inode, $1.range.start, $1.owner) }
    }

    /// Drops every lock an owner holds on an inode (close of a file by that owner).
    func releaseAll(_ ino: InodeNumber, owner: LockOwner) {
        changing { () -> ((), [InodeNumber]) in
            guard let list = held[ino] else { return ((), []) }
            replace(ino, list, list.filter { $0.owner != owner })
            condition.broadcast()
            return ((), [ino])
        }
    }

    /// Drops every lock of a session (a connection or mount went away).
    func releaseSession(_ session: UInt64) {
        changing { () -> ((), [InodeNumber]) in
            guard perSession[session] != nil else { return ((), []) }
            var changed: [InodeNumber] = []
            for (ino, list) in held where list.contains(where: { $0.owner.session == session }) {
                replace(ino, list, list.filter { $0.owner.session != session })
                changed.append(ino)
            }
            condition.broadcast()
            return ((), changed)
        }
    }
}
