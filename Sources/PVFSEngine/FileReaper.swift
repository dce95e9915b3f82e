import Foundation
import Logging
import PVFSSystem
import SystemPackage

/// Unlinks files in the background, in order, so that deleting a file costs a guest only the
/// catalog commit. Callers make sure nothing can open a queued file any more.
final class FileReaper: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [(FileDescriptor, String)] = []
    private var busy = false
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func remove(at directory: FileDescriptor, _ path: String) {
        condition.lock()
        queue.append((directory, path))
        let start = !busy
        busy = true
        condition.unlock()
        if start {
            DispatchQueue.global(qos: .utility).async { [self] in work() }
        }
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
            for (directory, path) in batch {
                do {
                    try directory.unlink(at: path)
                } catch {
                    if error != .noSuchFileOrDirectory { logger.warning("cannot remove \(path): \(error)") }
                }
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
