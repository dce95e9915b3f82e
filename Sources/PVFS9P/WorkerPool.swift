import Foundation
import PVFS9PCodec

/// A fixed set of threads running submitted work, shared fairly among tenants. One pool serves
/// every 9P connection of a process: engine calls block (disk I/O, fsync), so they run here
/// rather than on transport threads or in Swift concurrency's cooperative pool.
///
/// Jobs wait in one FIFO per tenant, and the threads take them round-robin across the tenants
/// that have work queued. A tenant's share of the threads thus does not grow with the number of
/// connections it opens: beside a tenant with one job queued, a tenant with a hundred gets every
/// other job taken. Within a tenant, connections submit one job at a time per parallel slot and
/// resubmit after each job, so they take turns (see `NinePConfiguration.maximumParallelRequests`).
/// Submitting and taking a job cost O(1); a tenant's entry exists only while it has jobs queued.
/// The threads keep the pool alive until `shutdown()`.
public final class NinePWorkerPool: @unchecked Sendable {
    /// Whose work a job is: the unit the pool is fair between.
    public enum Tenant: Hashable, Sendable, CustomStringConvertible {
        /// A VM, once a connection attached one.
        case vm(String)
        /// A socket listener (or an in-process endpoint), for a connection before its attach.
        case listener(String)
        /// A Xen domain, for a connection before its attach.
        case xenDomain(UInt32)

        /// The tenant of a connection that has attached no VM: the listener or domain it came
        /// through, never the peer's address (a client chooses that).
        public init(peer: NinePPeer) {
            switch peer.endpoint {
            case .xen(let domainID, _, _, _, _): self = .xenDomain(domainID)
            case .tcp, .unix, .local: self = .listener(peer.localAddress)
            }
        }

        public var description: String {
            switch self {
            case .vm(let name): "vm \(name)"
            case .listener(let address): "listener \(address)"
            case .xenDomain(let id): "xen domain \(id)"
            }
        }
    }

    public typealias Job = @Sendable () -> Void

    /// A tenant's queued jobs; in `active` while it has any.
    private final class TenantQueue {
        let tenant: Tenant
        var jobs = FIFO<Job>()
        init(_ tenant: Tenant) { self.tenant = tenant }
    }

    private let condition = NSCondition()
    /// Guarded by `condition`: the tenants with jobs queued, by tenant and in taking order.
    private var queues: [Tenant: TenantQueue] = [:]
    private var active = FIFO<TenantQueue>()
    private var queued = 0
    private var stopping = false
    private var running = 0
    private var threads: [Thread] = []
    public let threadCount: Int
    /// Charges each job's CPU to its tenant and runs it at the tenant's priority; the
    /// connections using the pool charge their transport threads to it as well.
    public let fairness: TenantCPUFairness?

    public init(threads: Int, name: String = "pvfs.9p.worker", fairness: TenantCPUFairness? = nil) {
        threadCount = max(1, threads)
        self.fairness = fairness
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

    /// Queues `work` behind the tenant's earlier jobs. After `shutdown()` the work runs on the
    /// caller's thread instead, so that nothing submitted is ever lost (a connection's
    /// completion depends on it).
    public func submit(for tenant: Tenant, _ work: @escaping Job) {
        condition.lock()
        if stopping {
            condition.unlock()
            work()
            return
        }
        if let queue = queues[tenant] {
            queue.jobs.append(work)
        } else {
            let queue = TenantQueue(tenant)
            queue.jobs.append(work)
            queues[tenant] = queue
            active.append(queue)
        }
        queued += 1
        condition.signal()
        condition.unlock()
    }

    /// Jobs queued and not started.
    public var queuedCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return queued
    }

    /// Tenants with jobs queued.
    public var queuedTenantCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return queues.count
    }

    /// Runs what is queued, then stops the threads and waits for them.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running > 0 { condition.wait() }
        condition.unlock()
    }

    /// The next job: the first of the tenant whose turn it is, which then goes to the back of
    /// the ring if it has more. Caller holds `condition`.
    private func takeLocked() -> (Tenant, Job)? {
        while let queue = active.popFirst() {
            // A queue is in the ring only while it holds jobs; an empty one is dropped.
            guard let job = queue.jobs.popFirst() else {
                queues[queue.tenant] = nil
                continue
            }
            queued -= 1
            if queue.jobs.isEmpty {
                queues[queue.tenant] = nil
            } else {
                active.append(queue)
            }
            return (queue.tenant, job)
        }
        return nil
    }

    private func work() {
        while true {
            condition.lock()
            while queued == 0 && !stopping { condition.wait() }
            guard let (tenant, job) = takeLocked() else {
                running -= 1
                condition.broadcast()
                condition.unlock()
                return
            }
            condition.unlock()
            if let fairness {
                fairness.serve(tenant)
                job()
                fairness.finish()
            } else {
                job()
            }
        }
    }
}

/// A first-in first-out queue with O(1) amortized append and removal of the first element. A
/// removed element is released at once (a job holds its request); the storage shrinks back when
/// the queue empties or when the removed front outweighs the rest.
fileprivate struct FIFO<Element> {
    private var elements: [Element?] = []
    private var head = 0

    var isEmpty: Bool { head == elements.count }
    var count: Int { elements.count - head }

    mutating func append(_ element: Element) {
        elements.append(element)
    }

    mutating func popFirst() -> Element? {
        guard head < elements.count else { return nil }
        let element = elements[head]
        elements[head] = nil
        head += 1
        if head == elements.count {
            elements.removeAll(keepingCapacity: elements.count <= 1024)
            head = 0
        } else if head >= 1024 && head * 2 >= elements.count {
            elements.removeFirst(head)
            head = 0
        }
        return element
    }
}
