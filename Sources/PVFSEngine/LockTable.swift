import Foundation
import PVFSSystem
import SystemPackage

/// POSIX byte-range locks and flock locks of a volume's inodes, kept by the server so that every
/// client of a VM (guest over 9P, host over FUSE) sees the same locks.
final class LockTable: @unchecked Sendable {
    private struct Held {
        var owner: LockOwner
        var range: FileLockRange
    }

    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var held: [InodeNumber: [Held]] = [:]

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
        condition.lock()
        defer { condition.unlock() }
        while conflict(ino, owner, range) != nil {
            guard wait else { throw Errno.resourceTemporarilyUnavailable }
            if cancelled() { throw Errno.interrupted }
            _ = condition.wait(until: Date(timeIntervalSinceNow: 0.5))
        }
        var list = held[ino] ?? []
        // Remove the owner's overlap with the new range, splitting locks it cuts through.
        var kept: [Held] = []
        for h in list {
            guard h.owner == owner, h.range.start <= range.end, range.start <= h.range.end else {
                kept.append(h)
                continue
            }
            if h.range.start < range.start {
                var left = h
                left.range.end = range.start - 1
                kept.append(left)
            }
            if h.range.end > range.end {
                var right = h
                right.range.start = range.end + 1
                kept.append(right)
            }
        }
        list = kept
        if range.type != .unlock { list.append(Held(owner: owner, range: range)) }
        held[ino] = list.isEmpty ? nil : list
        condition.broadcast()
    }

    /// Drops every lock an owner holds on an inode (close of a file by that owner).
    func releaseAll(_ ino: InodeNumber, owner: LockOwner) {
        condition.lock()
        defer { condition.unlock() }
        guard var list = held[ino] else { return }
        list.removeAll { $0.owner == owner }
        held[ino] = list.isEmpty ? nil : list
        condition.broadcast()
    }

    /// Drops every lock of a session (a connection or mount went away).
    func releaseSession(_ session: UInt64) {
        condition.lock()
        defer { condition.unlock() }
        for (ino, list) in held {
            let kept = list.filter { $0.owner.session != session }
            held[ino] = kept.isEmpty ? nil : kept
        }
        condition.broadcast()
    }
}
