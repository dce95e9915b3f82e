import CXen
import Logging
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

/// Limits that keep a frontend from making the backend hold unbounded memory.
public struct XenRingLimits: Sendable, Equatable {
    /// Requests taken from the ring whose replies have not been written back yet. At the
    /// limit the backend stops consuming and the frontend waits for ring space.
    public var maxRequestsInFlight: Int
    public init(maxRequestsInFlight: Int = 128) {
        precondition(maxRequestsInFlight >= 1)
        self.maxRequestsInFlight = maxRequestsInFlight
    }
}

/// Serves one data ring on its own thread: waits for the frontend's event, takes complete
/// requests off the out ring, hands them to the 9P handler, and writes replies (which may
/// come from any thread, in any order) into the in ring as space allows, notifying the
/// frontend after moving an index. A framing violation stops this ring only and is
/// reported through `onFailure`; the other rings of the device keep going.
public final class XenRingWorker: @unchecked Sendable {
    public let index: Int
    private let ring: XenFlexRing
    private let signal: any XenRingSignal
    private let handler: any NineMessageHandler
    private let session: XenNineSession
    private let limits: XenRingLimits
    private let onFailure: @Sendable (Int, XenError) -> Void
    private let wakeup: XenWakeup
    private let label: String
    private let logger: Logger

    private struct Shared {
        var replies: [[UInt8]] = []
        var stopping = false
    }
    private let shared = Mutex(Shared())
    private var thread: XenThread?

    // Owned by the worker thread.
    private var outbox: [[UInt8]] = []
    private var outboxHead = 0
    private var inFlight = 0

    /// Statistics, readable from any thread.
    private let requestCount = Atomic<UInt64>(0)
    private let replyCount = Atomic<UInt64>(0)

    public init(index: Int, ring: XenFlexRing, signal: any XenRingSignal, handler: any NineMessageHandler,
                session: XenNineSession, limits: XenRingLimits, label: String, logger: Logger,
                onFailure: @escaping @Sendable (Int, XenError) -> Void) throws {
        self.index = index
        self.ring = ring
        self.signal = signal
        self.handler = handler
        self.session = session
        self.limits = limits
        self.label = label
        self.logger = logger
        self.onFailure = onFailure
        self.wakeup = try XenWakeup()
    }

    public var counters: (requests: UInt64, replies: UInt64) {
        (requestCount.load(ordering: .relaxed), replyCount.load(ordering: .relaxed))
    }

    public func start() throws {
        precondition(thread == nil)
        thread = try XenThread(name: label) { [self] in run() }
    }

    /// Stops the thread and waits for it. Replies delivered afterwards are dropped; the
    /// ring memory is not touched once this returns.
    public func stop() {
        shared.withLock { $0.stopping = true }
        wakeup.signal()
        thread?.join()
    }

    /// Queues a reply for the worker thread to write (any thread).
    fileprivate func deliver(_ reply: [UInt8]) {
        let accepted = shared.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.replies.append(reply)
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
            let incoming: [[UInt8]]? = shared.withLock { state in
                if state.stopping { return nil }
                defer { state.replies.removeAll(keepingCapacity: true) }
                return state.replies
            }
            guard let incoming else { return }
            // Look at the ring only after re-enabling the event: one arriving later wakes poll.
            try signal.acknowledge()

            var moved = false
            for reply in incoming {
                try check(reply)
                outbox.append(reply)
            }
            while outboxHead < outbox.count {
                let reply = outbox[outboxHead]
                guard try ring.putReply(reply) else { break }
                session.observeReply(reply)
                outboxHead += 1
                inFlight -= 1
                moved = true
                replyCount.add(1, ordering: .relaxed)
            }
            if outboxHead == outbox.count {
                outbox.removeAll(keepingCapacity: true)
                outboxHead = 0
            } else if outboxHead > 64 {
                outbox.removeFirst(outboxHead)
                outboxHead = 0
            }

            let capacity = limits.maxRequestsInFlight - inFlight
            var requests: [[UInt8]] = []
            if capacity > 0 {
                requests = try ring.takeRequests(maxMessageSize: session.maxMessageSize(ringSize: ring.ringSize),
                                                 maxCount: capacity)
            }
            if !requests.isEmpty { moved = true }
            if moved { try signal.notify() }
            // A lone request on an idle ring runs on this thread (the handler decides whether it
            // may: not fsync or locks): the reply is on the ring without waking another thread.
            let idle = requests.count == 1 && inFlight == 0 && outbox.isEmpty
            for request in requests {
                inFlight += 1
                requestCount.add(1, ordering: .relaxed)
                let once = ReplyOnce(worker: self)
                handler.receive(request, runInline: idle) { reply in once.deliver(reply) }
            }
            // More work may be ready at once (replies given synchronously, more requests).
            if !requests.isEmpty { continue }
            if shared.withLock({ !$0.replies.isEmpty || $0.stopping }) { continue }

            for slot in fds.indices { fds[slot].revents = 0 }
            let rc = poll(&fds, nfds_t(fds.count), -1)
            if rc < 0 && errno != EINTR { throw XenError.system("poll", "ring \(index)") }
        }
    }

    /// A reply must be one well-framed 9P message; anything else is a handler bug that would
    /// corrupt the frontend's view of the ring.
    private func check(_ reply: [UInt8]) throws {
        guard let header = NineHeader(reply), header.size == UInt32(reply.count) else {
            throw XenError(kind: .protocolViolation, call: "reply from the 9P handler",
                           detail: "\(reply.count) bytes do not frame one 9P message")
        }
        guard reply.count <= Int(ring.ringSize) else {
            throw XenError(kind: .protocolViolation, call: "reply from the 9P handler",
                           detail: "\(reply.count) bytes (type \(header.type), tag \(header.tag)) never fit the \(ring.ringSize)-byte ring")
        }
    }
}

/// Passes exactly one reply per request to its ring worker.
private final class ReplyOnce: Sendable {
    private let worker: XenRingWorker
    private let used = Atomic<Bool>(false)

    init(worker: XenRingWorker) { self.worker = worker }

    func deliver(_ reply: [UInt8]) {
        guard !used.exchange(true, ordering: .acquiringAndReleasing) else { return }
        worker.deliver(reply)
    }
}
