import Foundation

/// A fixed set of threads running submitted work in FIFO order. One pool serves every 9P
/// connection of a process: engine calls block (disk I/O, fsync), so they run here rather than on
/// transport threads or in Swift concurrency's cooperative pool.
///
/// Connections submit one job at a time per parallel slot and resubmit after each job, so
/// connections take turns (see `NinePConfiguration.maximumParallelRequests`). The threads keep
/// the pool alive until `shutdown()`.
public final class NinePWorkerPool: @unchecked Sendable {
    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var jobs: [@Sendable () -> Void] = []
    private var head = 0
    private var stopping = false
    private var running = 0
    private var threads: [Thread] = []
    public let threadCount: Int

    public init(threads: Int, name: String = "pvfs.9p.worker") {
        threadCount = max(1, threads)
        for i in 0..<threadCount {
            let thread = Thread { [self] in self.work() }
            thread.name = "\(name).\(i)"
            thread.stackSize = 1 << 20
            self.threads.append(thread)
        }
        condition.lock()
        running = threadCount
        condition.unlock()
        for thread in self.threads { thread.start() }
    }

    /// Queues `work`. After `shutdown()` the work runs on the caller's thread instead, so that
    /// nothing submitted is ever lost (a connection's completion depends on it).
    public func submit(_ work: @escaping @Sendable () -> Void) {
        condition.lock()
        if stopping {
            condition.unlock()
            work()
            return
        }
        jobs.append(work)
        condition.signal()
        condition.unlock()
    }

    /// Jobs queued and not started.
    public var queuedCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return jobs.count - head
    }

    /// Runs what is queued, then stops the threads and waits for them.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running > 0 { condition.wait() }
        condition.unlock()
    }

    private func work() {
        while true {
            condition.lock()
            while head == jobs.count && !stopping { condition.wait() }
            if head == jobs.count {
                running -= 1
                condition.broadcast()
                condition.unlock()
                return
            }
            let job = jobs[head]
            head += 1
            if head >= 1024 && head * 2 >= jobs.count {
                jobs.removeFirst(head)
                head = 0
            } else if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            }
            condition.unlock()
            job()
        }
    }
}
