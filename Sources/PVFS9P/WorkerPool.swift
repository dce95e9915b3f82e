import Foundation
import PVFS9PCodec

/// A fixed set of threads running submitted work, shared fairly among tenants. One pool serves
/// every 9P connection of a process, whatever its transport (sockets, Xen rings): engine calls
/// block (disk I/O, fsync), so they run here rather than on transport threads or in Swift
/// concurrency's cooperative pool.
///
/// Jobs wait in one FIFO per tenant. Two rules decide which tenant a free thread serves:
/// - **Fair queueing by worker time.** Each tenant has a virtual time that grows by the time its
///   jobs hold a thread, divided by its weight (`setWeights`, default 100): a free thread takes the
///   first job of the tenant with the smallest virtual time (a min-heap, O(log tenants)). A
///   job is charged an estimate of its cost when it starts (the tenant's recent mean) and
///   corrected by what it took when it ends, so a tenant whose requests sleep in fsync is
///   charged for the threads it holds, not for the number of its requests. A tenant that had no
///   work re-enters at the virtual time of the last job started: idle time earns no credit.
/// - **A cap on running jobs.** While another tenant has work queued, a tenant may run at most
///   `maximumShare` of the threads (half by default); alone, it may use them all. Running jobs
///   are never pre-empted: the cap only stops dispatches, so threads stay free for the others
///   even while one tenant's requests sleep, which weights alone cannot do.
///
/// A tenant's share thus grows neither with the number of connections it opens nor with how
/// slow its requests are. Within a tenant, connections submit one job at a time per parallel
/// slot and resubmit after each job, so they take turns (`NinePConfiguration.maximumParallelRequests`).
/// A tenant's entry exists only while it has jobs queued or running. The threads keep the pool
/// alive until `shutdown()`.
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

    /// The weight of a tenant without one of its own: its share of worker time relative to others.
    public static let defaultWeight = 100
    /// The weights a tenant may have.
    public static let weightRange = 1...10_000

    /// A tenant with work queued or running, for metrics.
    public struct TenantStatistics: Sendable, Equatable {
        public var tenant: Tenant
        public var queued: Int
        public var running: Int
        public var weight: Int
    }

    /// A tenant with work queued or running.
    private final class TenantQueue {
        let tenant: Tenant
        var jobs = FIFO<Job>()
        var running = 0
        var weight: Int
        /// Worker nanoseconds used, scaled by `defaultWeight / weight`.
        var virtualTime: Double
        /// Recent mean worker nanoseconds of a job (charged when one starts).
        var estimate = 100_000.0
        /// Position in `eligible`, or -1.
        var heapIndex = -1
        /// Whether it is in `capped`.
        var isCapped = false
        /// Order of entering `eligible`: ties of virtual time go first come, first served.
        var arrival: UInt64 = 0
        init(_ tenant: Tenant, weight: Int, virtualTime: Double) {
            self.tenant = tenant
            self.weight = weight
            self.virtualTime = virtualTime
        }
        var scale: Double { Double(NinePWorkerPool.defaultWeight) / Double(weight) }
    }

    private let condition = NSCondition()
    // Guarded by `condition`:
    /// Tenants with jobs queued or running.
    private var queues: [Tenant: TenantQueue] = [:]
    /// Tenants with jobs queued and fewer than `sharedCap` running, by virtual time.
    private var eligible: [TenantQueue] = []
    /// Tenants with jobs queued and `sharedCap` or more running (at most threads / sharedCap).
    private var capped: [TenantQueue] = []
    private var arrivals: UInt64 = 0
    /// The virtual time of the last job started: where a tenant with no work re-enters.
    private var systemVirtualTime = 0.0
    private var configuredWeights: [Tenant: Int] = [:]
    private var queued = 0
    private var stopping = false
    private var running = 0
    private var threads: [Thread] = []
    public let threadCount: Int
    /// Share of the threads a tenant may run on while another has work queued.
    public let maximumShare: Double
    /// `maximumShare` of the threads, at least one.
    public let sharedCap: Int
    /// Charges each job's CPU to its tenant and runs it at the tenant's priority; the
    /// connections using the pool charge their transport threads to it as well.
    public let fairness: TenantCPUFairness?

    /// Nanoseconds of a monotonic clock: how long a job held its thread.
    private let clock: @Sendable () -> UInt64

    public convenience init(threads: Int, maximumShare: Double = 0.5, name: String = "pvfs.9p.worker",
                            fairness: TenantCPUFairness? = nil) {
        self.init(threads: threads, maximumShare: maximumShare, name: name, fairness: fairness,
                  clock: NinePWorkerPool.monotonicNanoseconds)
    }

    /// `clock`: tests give one their jobs advance, so that the order does not depend on timing.
    init(threads: Int, maximumShare: Double = 0.5, name: String = "pvfs.9p.worker",
         fairness: TenantCPUFairness? = nil, clock: @escaping @Sendable () -> UInt64) {
        self.clock = clock
        threadCount = max(1, threads)
        let share = maximumShare.isFinite ? min(1, max(0, maximumShare)) : 0.5
        self.maximumShare = share
        sharedCap = max(1, Int((Double(threadCount) * share).rounded(.down)))
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
        let queue: TenantQueue
        if let existing = queues[tenant] {
            queue = existing
            if queue.jobs.isEmpty { queue.virtualTime = max(queue.virtualTime, systemVirtualTime) }
        } else {
            queue = TenantQueue(tenant, weight: configuredWeights[tenant] ?? Self.defaultWeight,
                                virtualTime: systemVirtualTime)
            queues[tenant] = queue
        }
        queue.jobs.append(work)
        queued += 1
        placeLocked(queue)
        condition.signal()
        condition.unlock()
    }

    /// Sets the tenants' weights (clamped to `weightRange`); a tenant not named gets
    /// `defaultWeight`. Applies to work queued and running at once.
    public func setWeights(_ weights: [Tenant: Int]) {
        condition.lock()
        configuredWeights = weights.compactMapValues { weight in
            let clamped = min(Self.weightRange.upperBound, max(Self.weightRange.lowerBound, weight))
            return clamped == Self.defaultWeight ? nil : clamped
        }
        for (tenant, queue) in queues { queue.weight = configuredWeights[tenant] ?? Self.defaultWeight }
        condition.unlock()
    }

    /// The weight `tenant` is served with.
    public func weight(of tenant: Tenant) -> Int {
        condition.lock()
        defer { condition.unlock() }
        return configuredWeights[tenant] ?? Self.defaultWeight
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
        return eligible.count + capped.count
    }

    /// Tenants with jobs queued or running (the pool keeps an entry for these only).
    public var activeTenantCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return queues.count
    }

    /// Every tenant with work queued or running.
    public var statistics: [TenantStatistics] {
        condition.lock()
        defer { condition.unlock() }
        return queues.values.map { TenantStatistics(tenant: $0.tenant, queued: $0.jobs.count, running: $0.running, weight: $0.weight) }
            .sorted { $0.tenant.description < $1.tenant.description }
    }

    /// Runs what is queued, then stops the threads and waits for them.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running > 0 { condition.wait() }
        condition.unlock()
    }

    // MARK: Scheduling (caller holds `condition`)

    /// Whether a free thread may start a job now: a tenant under the cap has work queued, or
    /// one tenant alone has (it may use every thread).
    private var hasStartableJobLocked: Bool {
        !eligible.isEmpty || capped.count == 1 || (stopping && !capped.isEmpty)
    }

    /// The next job: the first of the eligible tenant with the smallest virtual time, or of the
    /// only tenant with work queued.
    private func takeLocked() -> (TenantQueue, Job, charged: Double, scale: Double)? {
        let queue: TenantQueue
        if let first = eligible.first {
            queue = first
        } else if capped.count == 1 || (stopping && !capped.isEmpty) {
            queue = capped[0]
        } else {
            return nil
        }
        guard let job = queue.jobs.popFirst() else {
            placeLocked(queue)
            return nil
        }
        queued -= 1
        queue.running += 1
        systemVirtualTime = max(systemVirtualTime, queue.virtualTime)
        let charged = queue.estimate
        // The scale of this moment is kept for the correction: a weight changed while the job
        // runs must not rescale what was charged under the old one.
        let scale = queue.scale
        queue.virtualTime += charged * scale
        placeLocked(queue)
        return (queue, job, charged, scale)
    }

    /// A job of `queue` that was charged `charged` at `scale` ended after `elapsed` nanoseconds.
    private func finishLocked(_ queue: TenantQueue, charged: Double, scale: Double, elapsed: Double) {
        queue.running -= 1
        queue.virtualTime += (elapsed - charged) * scale
        // Whole nanoseconds: virtual times stay exact sums, so equal costs give exact ties.
        queue.estimate = ((queue.estimate * 7 + elapsed) / 8).rounded()
        placeLocked(queue)
    }

    /// Puts `queue` where its state says: in `eligible` (sifted to its virtual time), in
    /// `capped`, in neither (nothing queued), or out of the pool (nothing queued or running).
    private func placeLocked(_ queue: TenantQueue) {
        let wantsEligible = !queue.jobs.isEmpty && queue.running < sharedCap
        let wantsCapped = !queue.jobs.isEmpty && queue.running >= sharedCap
        if queue.isCapped && !wantsCapped {
            if let i = capped.firstIndex(where: { $0 === queue }) { capped.remove(at: i) }
            queue.isCapped = false
        } else if !queue.isCapped && wantsCapped {
            capped.append(queue)
            queue.isCapped = true
        }
        if queue.heapIndex >= 0 {
            if wantsEligible { siftLocked(queue.heapIndex) } else { removeFromHeapLocked(queue) }
        } else if wantsEligible {
            arrivals &+= 1
            queue.arrival = arrivals
            queue.heapIndex = eligible.count
            eligible.append(queue)
            siftUpLocked(queue.heapIndex)
        }
        if queue.jobs.isEmpty && queue.running == 0 && queues[queue.tenant] === queue {
            queues[queue.tenant] = nil
        }
    }

    private func precedes(_ a: TenantQueue, _ b: TenantQueue) -> Bool {
        a.virtualTime != b.virtualTime ? a.virtualTime < b.virtualTime : a.arrival < b.arrival
    }

    private func swapLocked(_ i: Int, _ j: Int) {
        eligible.swapAt(i, j)
        eligible[i].heapIndex = i
        eligible[j].heapIndex = j
    }

    private func siftLocked(_ index: Int) {
        siftUpLocked(index)
        siftDownLocked(index)
    }

    private func siftUpLocked(_ index: Int) {
        var i = index
        while i > 0 {
            let parent = (i - 1) / 2
            guard precedes(eligible[i], eligible[parent]) else { return }
            swapLocked(i, parent)
            i = parent
        }
    }

    private func siftDownLocked(_ index: Int) {
        var i = index
        while true {
            let left = 2 * i + 1, right = left + 1
            var first = i
            if left < eligible.count && precedes(eligible[left], eligible[first]) { first = left }
            if right < eligible.count && precedes(eligible[right], eligible[first]) { first = right }
            if first == i { return }
            swapLocked(i, first)
            i = first
        }
    }

    private func removeFromHeapLocked(_ queue: TenantQueue) {
        let i = queue.heapIndex
        guard i >= 0 && i < eligible.count else { return }
        let last = eligible.count - 1
        if i != last { swapLocked(i, last) }
        eligible.removeLast()
        queue.heapIndex = -1
        if i < eligible.count { siftLocked(i) }
    }

    private func work() {
        condition.lock()
        while true {
            while !hasStartableJobLocked && !(stopping && queued == 0) { condition.wait() }
            guard let (queue, job, charged, scale) = takeLocked() else {
                if stopping && queued == 0 { break }
                continue
            }
            // Another thread may start a job as well (this one took the wakeup).
            if hasStartableJobLocked { condition.signal() }
            condition.unlock()
            let start = clock()
            if let fairness {
                fairness.serve(queue.tenant)
                job()
                fairness.finish()
            } else {
                job()
            }
            let elapsed = Double(clock() &- start)
            condition.lock()
            // This thread takes what the end of the job made startable; it wakes another if more is.
            finishLocked(queue, charged: charged, scale: scale, elapsed: elapsed)
        }
        running -= 1
        condition.broadcast()
        condition.unlock()
    }

    static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) &* 1_000_000_000 &+ UInt64(t.tv_nsec)
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
