import CXen
import Foundation
import Logging
import PVFS9PCodec
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A joinable POSIX thread running one closure.
final class XenThread: @unchecked Sendable {
    private final class Box {
        let name: String
        let body: () -> Void
        init(name: String, body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
    }

    private var thread = pthread_t()
    private let joined = Mutex(false)

    init(name: String, body: @escaping @Sendable () -> Void) throws {
        let box = Unmanaged.passRetained(Box(name: name, body: body))
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            cxen_set_thread_name(String(box.name.prefix(15)))
            box.body()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw XenError.system("pthread_create", name, errno: rc)
        }
    }

    /// Waits for the thread to finish (once; later calls return at once).
    func join() {
        let first = joined.withLock { state in
            defer { state = true }
            return !state
        }
        guard first else { return }
        pthread_join(thread, nil)
    }
}

/// Limits that keep a frontend from making the backend hold unbounded memory. Both work by
/// back-pressure: at a limit the backend stops consuming the ring, and the frontend waits for
/// ring space; nothing is refused.
public struct XenRingLimits: Sendable, Equatable {
    /// Requests taken from the ring and not finished (replied to, or ended without a reply).
    public var maxRequestsInFlight: Int
    /// Reply bytes the ring may hold in the backend: the largest replies the requests taken can
    /// have (the count a Tread or Treaddir asks for, up to msize) plus the replies waiting for
    /// ring space. The ring always takes a request when it holds nothing, so a frontend's
    /// memory in the backend stays below this plus one msize.
    public var maxReplyBytes: Int

    public init(maxRequestsInFlight: Int = 128, maxReplyBytes: Int = 4 << 20) {
        precondition(maxRequestsInFlight >= 1 && maxReplyBytes >= 1)
        self.maxRequestsInFlight = maxRequestsInFlight
        self.maxReplyBytes = maxReplyBytes
    }

    /// The most bytes the reply to `request` can take, with `msize` the largest message.
    static func replyEstimate(_ request: [UInt8], msize: Int) -> Int {
        NinePMessageFramer.replySizeBound(ofRequest: request, msize: msize)
    }
}

/// Where a ring reports its use of the limits: the tenant (its Xen domain) and the shared
/// accounting that metrics read.
public struct XenRingAccounting: Sendable {
    public var admission: TenantAdmission
    public var tenant: Tenant

    public init(admission: TenantAdmission, tenant: Tenant) {
        self.admission = admission
        self.tenant = tenant
    }
}

/// Serves one data ring on its own thread: waits for the frontend's event, takes complete
/// requests off the out ring, hands them to the 9P handler, and writes replies (which may
/// come from any thread, in any order) into the in ring as space allows, notifying the
/// frontend after moving an index. A framing violation stops this ring only and is
/// reported through `onFailure`; the other rings of the device keep going.
///
/// Each request taken holds a place until the handler finishes it: when its reply is on the
/// ring, or when the handler says it ends without one (a flushed request, one abandoned by
/// Tversion). Were only replies counted, such requests would fill the ring's places for good.
public final class XenRingWorker: @unchecked Sendable {
    public let index: Int
    private let ring: XenFlexRing
    private let signal: any XenRingSignal
    private let handler: any NineMessageHandler
    private let limits: XenRingLimits
    private let accounting: XenRingAccounting?
    private let onFailure: @Sendable (Int, XenError) -> Void
    private let wakeup: XenWakeup
    private let label: String
    private let logger: Logger

    private struct Shared {
        /// Replies handed over, with the estimate reserved for each.
        var replies: [(bytes: [UInt8], reserved: Int)] = []
        /// Requests that ended without a reply: how many, and the bytes reserved for them.
        var unanswered = 0
        var unansweredReserved = 0
        var stopping = false
    }
    private let shared = Mutex(Shared())
    private var thread: XenThread?
    /// Held by the worker thread while it touches the ring memory or the event channel;
    /// `detach()` takes it to know that the thread no longer does.
    private let ringGate = NSLock()
    /// Guarded by `ringGate`.
    private var detached = false

    // Owned by the worker thread.
    private var outbox: [[UInt8]] = []
    private var outboxHead = 0
    private var outboxBytes = 0
    private var inFlight = 0
    /// Bytes reserved for the replies of requests taken and not answered yet.
    private var reservedBytes = 0
    /// The ring is not consumed because of a limit (for counting stalls once each).
    private var stalledAt: TransportLimit?

    /// Statistics, readable from any thread.
    private let requestCount = Atomic<UInt64>(0)
    private let replyCount = Atomic<UInt64>(0)
    private let unansweredCount = Atomic<UInt64>(0)
    private let inFlightGauge = Atomic<Int>(0)
    private let heldBytesGauge = Atomic<Int>(0)
    private var usageSource: UInt64?

    public init(index: Int, ring: XenFlexRing, signal: any XenRingSignal, handler: any NineMessageHandler,
                limits: XenRingLimits, accounting: XenRingAccounting? = nil,
                label: String, logger: Logger, onFailure: @escaping @Sendable (Int, XenError) -> Void) throws {
        self.index = index
        self.ring = ring
        self.signal = signal
        self.handler = handler
        self.limits = limits
        self.accounting = accounting
        self.label = label
        self.logger = logger
        self.onFailure = onFailure
        self.wakeup = try XenWakeup()
    }

    public var counters: (requests: UInt64, replies: UInt64) {
        (requestCount.load(ordering: .relaxed), replyCount.load(ordering: .relaxed))
    }

    /// Requests that ended without a reply.
    public var unansweredRequests: UInt64 { unansweredCount.load(ordering: .relaxed) }

    /// Requests taken and not finished, and the reply bytes held for them (reserved or queued),
    /// as of the thread's last pass.
    public var usage: (requestsInFlight: Int, replyBytes: Int) {
        (inFlightGauge.load(ordering: .relaxed), heldBytesGauge.load(ordering: .relaxed))
    }

    public func start() throws {
        precondition(thread == nil)
        if let accounting {
            usageSource = accounting.admission.addSource { [weak self] in
                guard let self else { return [] }
                let (requests, bytes) = usage
                return [TenantGauge(tenant: accounting.tenant, outstandingRequests: requests, queuedReplyBytes: bytes)]
            }
        }
        thread = try XenThread(name: label) { [self] in run() }
    }

    /// Stops the thread and waits for it. Replies delivered afterwards are dropped; the
    /// ring memory is not touched once this returns.
    public func stop() {
        detach()
        join()
    }

    /// Stops using the ring: once this returns the thread touches neither the ring memory nor
    /// the event channel, so both may go. It does not wait for a request the thread may be
    /// running in the handler (one slow request must not hold up a teardown): `join()` does.
    /// Replies delivered afterwards are dropped.
    public func detach() {
        shared.withLock { $0.stopping = true }
        ringGate.lock()
        detached = true
        ringGate.unlock()
        wakeup.signal()
    }

    /// Waits for the thread to end (after `detach()`).
    public func join() {
        thread?.join()
        if let usageSource, let accounting {
            accounting.admission.removeSource(usageSource)
            self.usageSource = nil
        }
    }

    /// Queues a reply for the worker thread to write (any thread).
    fileprivate func deliver(_ reply: [UInt8], reserved: Int) {
        let accepted = shared.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.replies.append((reply, reserved))
            return true
        }
        if accepted { wakeup.signal() }
    }

    /// A request ended without a reply (any thread).
    fileprivate func finishUnanswered(reserved: Int) {
        let accepted = shared.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.unanswered += 1
            state.unansweredReserved += reserved
            return true
        }
        if accepted { wakeup.signal() }
    }

    private func run() {
        do {
            try serve()
        } catch let error as XenError {
            logger.warning("\(label): ring \(index) stopped: \(error)")
            onFailure(index, error)
        } catch {
            onFailure(index, XenError(kind: .system, call: "ring \(index)", detail: "\(error)"))
        }
    }

    private func serve() throws {
        var fds = [pollfd(fd: signal.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeup.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        while true {
            wakeup.drain()
            let taken: (replies: [(bytes: [UInt8], reserved: Int)], unanswered: Int, unansweredReserved: Int)? = shared.withLock { state in
                if state.stopping { return nil }
                defer {
                    state.replies.removeAll(keepingCapacity: true)
                    state.unanswered = 0
                    state.unansweredReserved = 0
                }
                return (state.replies, state.unanswered, state.unansweredReserved)
            }
            guard let taken else { return }
            inFlight -= taken.unanswered
            reservedBytes -= taken.unansweredReserved
            if taken.unanswered > 0 { unansweredCount.add(UInt64(taken.unanswered), ordering: .relaxed) }
            for (reply, reserved) in taken.replies {
                try check(reply)
                outbox.append(reply)
                outboxBytes += reply.count
                reservedBytes -= reserved
            }

            ringGate.lock()
            guard !detached else {
                ringGate.unlock()
                return
            }
            let requests: [[UInt8]]
            do {
                defer { ringGate.unlock() }
                requests = try exchange()
            }
            inFlightGauge.store(inFlight, ordering: .relaxed)
            heldBytesGauge.store(reservedBytes + outboxBytes, ordering: .relaxed)

            // A lone request on an idle ring runs on this thread (the handler decides whether it
            // may: not fsync or locks): the reply is on the ring without waking another thread.
            let idle = requests.count == 1 && inFlight == 1 && outbox.isEmpty
            let msize = messageSizeLimit
            for request in requests {
                if shared.withLock({ $0.stopping }) { return }
                requestCount.add(1, ordering: .relaxed)
                let once = ReplyOnce(worker: self, reserved: XenRingLimits.replyEstimate(request, msize: msize))
                handler.receive(request, runInline: idle, reply: { reply in once.deliver(reply) },
                                unanswered: { once.finishUnanswered() })
            }
            // More work may be ready at once (replies given synchronously, more requests).
            if !requests.isEmpty { continue }
            if shared.withLock({ !$0.replies.isEmpty || $0.unanswered > 0 || $0.stopping }) { continue }

            for slot in fds.indices { fds[slot].revents = 0 }
            let rc = poll(&fds, nfds_t(fds.count), -1)
            if rc < 0 && errno != EINTR { throw XenError.system("poll", "ring \(index)") }
        }
    }

    /// Writes what replies fit, takes what requests the limits allow, notifies the frontend.
    /// Caller holds `ringGate`.
    private func exchange() throws -> [[UInt8]] {
        // Look at the ring only after re-enabling the event: one arriving later wakes poll.
        try signal.acknowledge()
        var moved = false
        while outboxHead < outbox.count {
            let reply = outbox[outboxHead]
            guard try ring.putReply(reply) else { break }
            outboxHead += 1
            outboxBytes -= reply.count
            inFlight -= 1
            moved = true
            replyCount.add(1, ordering: .relaxed)
        }
        if outboxHead == outbox.count {
            outbox.removeAll(keepingCapacity: outbox.count <= 256)
            outboxHead = 0
        } else if outboxHead > 64 {
            outbox.removeFirst(outboxHead)
            outboxHead = 0
        }

        let msize = messageSizeLimit
        var requests: [[UInt8]] = []
        var blockedBy: TransportLimit?
        let capacity = limits.maxRequestsInFlight - inFlight
        if capacity <= 0 {
            blockedBy = .ringRequests
        } else {
            var held = reservedBytes + outboxBytes
            var admitted = inFlight
            requests = try ring.takeRequests(maxMessageSize: UInt32(msize), maxCount: capacity) { request in
                let estimate = XenRingLimits.replyEstimate(request, msize: msize)
                // An empty ring always takes one: a request larger than the budget still runs.
                guard admitted == 0 || held + estimate <= limits.maxReplyBytes else {
                    blockedBy = .ringReplyBytes
                    return false
                }
                held += estimate
                admitted += 1
                return true
            }
            inFlight += requests.count
            reservedBytes = held - outboxBytes
        }
        if !requests.isEmpty { moved = true }
        if moved { try signal.notify() }
        // Count each stop at a limit once, and only when requests are actually waiting.
        if let limit = blockedBy, try ring.pendingRequestBytes() > 0 {
            if stalledAt != limit, let accounting { accounting.admission.countBackpressure(accounting.tenant, limit: limit) }
            stalledAt = limit
        } else {
            stalledAt = nil
        }
        return requests
    }

    /// The largest message either side may send now: the handler's (the msize it agreed to, or
    /// its maximum before Tversion), within the ring.
    private var messageSizeLimit: Int {
        Int(min(UInt32(clamping: handler.maximumMessageSize), ring.ringSize))
    }

    /// A reply must be one well-framed 9P message; anything else is a handler bug that would
    /// corrupt the frontend's view of the ring.
    private func check(_ reply: [UInt8]) throws {
        guard let header = NinePHeader(reply), header.size == UInt32(reply.count) else {
            throw XenError(kind: .protocolViolation, call: "reply from the 9P handler",
                           detail: "\(reply.count) bytes do not frame one 9P message")
        }
        guard reply.count <= Int(ring.ringSize) else {
            throw XenError(kind: .protocolViolation, call: "reply from the 9P handler",
                           detail: "\(reply.count) bytes (type \(header.type.rawValue), tag \(header.tag)) never fit the \(ring.ringSize)-byte ring")
        }
    }
}

/// Passes exactly one outcome per request to its ring worker: the first reply, or the news
/// that it ended without one.
private final class ReplyOnce: Sendable {
    private let worker: XenRingWorker
    private let reserved: Int
    private let used = Atomic<Bool>(false)

    init(worker: XenRingWorker, reserved: Int) {
        self.worker = worker
        self.reserved = reserved
    }

    func deliver(_ reply: [UInt8]) {
        guard !used.exchange(true, ordering: .acquiringAndReleasing) else { return }
        worker.deliver(reply, reserved: reserved)
    }

    func finishUnanswered() {
        guard !used.exchange(true, ordering: .acquiringAndReleasing) else { return }
        worker.finishUnanswered(reserved: reserved)
    }
}
