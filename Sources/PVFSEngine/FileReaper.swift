import Foundation
import Logging
import PVFSStore
import PVFSSystem
import SystemPackage

/// Unlinks files in the background, in order, so that deleting a large file costs a guest only
/// the catalog commit. Callers make sure nothing can open a queued file any more.
///
/// The host space of queued files counts as free (`bytesPending`): a guest that removed a file
/// sees the space back in statfs at once, as on a local filesystem, not when the reaper gets to it.
final class FileReaper: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [(area: VMArea, inode: UInt64, bytes: Int64)] = []
    private var busy = false
    private var pending: Int64 = 0
    private let logger: Logger
    /// Runs before each unlink on the reaper's thread (tests hold the reaper with it).
    private let beforeUnlink: (@Sendable () -> Void)?

    init(logger: Logger, beforeUnlink: (@Sendable () -> Void)? = nil) {
        self.logger = logger
        self.beforeUnlink = beforeUnlink
    }

    /// Queues the private file of `inode` in `area` for removal.
    func remove(_ inode: UInt64, from area: VMArea) {
        let bytes = (try? area.statPrivateFile(inode)).map { $0.blocks * 512 } ?? 0
        condition.lock()
        queue.append((area, inode, bytes))
        pending += bytes
        let start = !busy
        busy = true
        condition.unlock()
        if start {
            DispatchQueue.global(qos: .utility).async { [self] in work() }
        }
    }

    /// Host bytes still allocated to files queued for removal.
    var bytesPending: Int64 {
        condition.lock()
        defer { condition.unlock() }
        return pending
    }

    private func work() {
        while true {
            condition.lock()
            guard !queue.isEmpty else {
                busy = false
                condition.broadcast()
                condition.unlock()
                return
            }
            let batch = queue
            queue.removeAll()
            condition.unlock()
            for item in batch {
                beforeUnlink?()
                do {
                    try item.area.removePrivateFile(item.inode)
                } catch {
                    logger.warning("cannot remove the private file of inode \(item.inode): \(error)")
                }
                condition.lock()
                pending -= item.bytes
                condition.unlock()
            }
        }
    }

    /// Waits until every queued file is gone (before the directories close).
    func drain() {
        condition.lock()
        while busy { condition.wait() }
        condition.unlock()
    }
}
