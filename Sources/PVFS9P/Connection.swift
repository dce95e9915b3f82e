import CoreMetrics
import Foundation
import Logging
import PVFS9PCodec
import PVFSEngine
import PVFSSystem
import SystemPackage

/// One 9P2000.L connection with one client, independent of what carries its bytes: it
/// schedules the client's requests (admission and back-pressure, tags, Tversion and Tflush,
/// ordering on fids, parallel slots on the worker pool, replies, close). What each request
/// means (fids, attaches, files, locks) is its `NinePSession`'s.
///
/// ## Transport contract
///
/// A transport (the socket transport in PVFSTransport, a Xen PV 9pfs ring backend, a test) owns
/// the bytes and the threads that read them; the connection owns the protocol, behind the
/// `NineMessageHandler` seam every transport uses (PVFS9PCodec, Seam.swift):
///
///     let connection = NinePConnection(peer: peer, configuration: config, pool: pool,
///                                      logger: logger, resolver: resolve)
///     // for each complete T-message (size[4] included), in the order received:
///     connection.receive(message) { reply in send(reply) }
///     // when the peer goes away or the transport stops:
///     connection.close()
///
/// - `receive(_:reply:)` takes exactly one whole message. Stream transports cut them with
///   `NinePMessageFramer`, setting its limit to `maximumMessageSize` before each cut; ring
///   transports check the size field against the same limit before copying a message out. A
///   message above the limit is a framing error: close the connection.
/// - Requests run concurrently on the worker pool and replies come back out of order, each
///   through the callback given with its request, from a worker thread. A transport with several
///   channels (Xen rings) thus answers on the ring the request came from. The callback must not
///   block for long (queue the bytes) and must not call `close()`.
/// - Replies handed to callbacks in sequence must go out in that sequence on the same channel:
///   an Rflush is handed over only after the reply of the request it flushed (if any).
/// - With `receive(_:runInline:reply:unanswered:)` every request ends in exactly one callback:
///   its reply, or `unanswered` when it ends without one (flushed before it took effect,
///   abandoned by a Tversion). A transport that counts requests per channel (a Xen ring) uses
///   it to free the request's place; after `close()` began neither is called.
/// - `receive` blocks while the connection holds `maximumOutstandingRequests` requests,
///   `maximumOutstandingBytes` bytes or (for a Tflush) `maximumOutstandingFlushes` flushes:
///   that is the back-pressure a transport relies on to bound its memory. It is always safe to
///   call from one reader thread per channel.
/// - Each Tattach opens a session through the resolver; it ends, and `onSessionEnd` hands its
///   view back to the transport, when the last fid descending from that attach is clunked (or
///   the connection closes). A connection holds at most `maximumSessions` sessions.
/// - `close()` cancels what can be cancelled (queued requests, waiting locks), waits for running
///   requests to finish, then closes every fid's handle, drops the sessions' locks and ends
///   them. After it returns no engine handle of the connection is open and no reply callback
///   will be called.
public final class NinePConnection: NineMessageHandler, @unchecked Sendable {
    public typealias Reply = @Sendable ([UInt8]) -> Void
    /// Called instead of the reply for a request that ends without one.
    public typealias Unanswered = @Sendable () -> Void

    public let peer: NinePPeer
    public let configuration: NinePConfiguration
    let pool: NinePWorkerPool
    let logger: Logger
    /// What the messages mean: fids, attached views, accounts.
    let session: NinePSession

    /// Called once when `close()` has released everything.
    public var onClose: (@Sendable () -> Void)? {
        get { state.withLock { closeHandler } }
        set { state.withLock { closeHandler = newValue } }
    }

    /// Called (from any thread, never under the connection's lock) with the view of each session
    /// that ended: its last fid was clunked, a Tversion or `close()` dropped its fids, or its
    /// attach failed after the resolver made it. The transport closes it in its registry.
    public var onSessionEnd: (@Sendable (VMView) -> Void)? {
        get { session.onSessionEnd }
        set { session.onSessionEnd = newValue }
    }

    /// Guards everything below.
    let state = NSCondition()
    private var closeHandler: (@Sendable () -> Void)?
    private var closing = false
    private var closed = false
    /// Being handed to another process: long waits give up (`NineSuspendableHandler`).
    private var suspending = false
    /// Reply callbacks running now; `close()` waits for them.
    private var activeReplies = 0
    /// msize agreed by the last good Tversion; nil before it (and after a refused one).
    private var negotiatedSize: Int?
    /// Bumped by each Tversion: replies of requests from before it are dropped.
    private(set) var generation: UInt64 = 0
    private var inflight: [UInt16: Request] = [:]
    /// Requests completed whose reply is being handed over: a Tflush of one is answered after
    /// that reply, never before (its tag is free for reuse already).
    private var replying: [UInt16: Request] = [:]
    /// Requests received and not finished, Tflush included.
    private var outstanding = 0
    private var outstandingFlushes = 0
    private var outstandingBytes = 0
    /// Requests waiting for a parallel slot of this connection.
    private var runQueue: [Request] = []
    private var runQueueHead = 0
    private var running = 0
    /// Requests not yet completed that use each fid, in arrival order (for fid ordering).
    private var fidQueues: [UInt32: [Request]] = [:]
    /// Requests waiting long (blocking locks) on threads of their own.
    private var blockedLocks = 0
    /// The session's fid table of the current generation, given to each request received.
    private var fids: FidTable
    /// Whose share of the worker pool the connection's requests take: the VM its session
    /// serves (every attach of the connection is of that VM), or before an attach the listener
    /// or Xen domain it came through. So a VM's share does not grow with the connections it opens.
    private(set) var poolTenant: NinePWorkerPool.Tenant
    /// The latency timer of the VM the connection is bound to (looked up once, at the attach).
    private var vmTimer: CoreMetrics.Timer?

    public init(peer: NinePPeer, configuration: NinePConfiguration = NinePConfiguration(), pool: NinePWorkerPool,
                logger: Logger, resolver: @escaping NinePAttachResolver) {
        self.peer = peer
        poolTenant = NinePWorkerPool.Tenant(peer: peer)
        var configuration = configuration
        configuration.maximumMessageSize = Self.boundedMessageSize(configuration.maximumMessageSize)
        configuration.maximumOutstandingRequests = max(1, configuration.maximumOutstandingRequests)
        configuration.maximumOutstandingFlushes = max(1, configuration.maximumOutstandingFlushes)
        configuration.maximumSessions = max(1, configuration.maximumSessions)
        configuration.maximumParallelRequests = max(1, configuration.maximumParallelRequests)
        // Lock waiters hold outstanding slots indefinitely; leave room for the requests that
        // would release the locks.
        configuration.maximumBlockedLocks = max(0, min(configuration.maximumBlockedLocks,
                                                       configuration.maximumOutstandingRequests - 1))
        self.configuration = configuration
        self.pool = pool
        var logger = logger
        logger[metadataKey: "peer"] = "\(peer)"
        self.logger = logger
        session = NinePSession(peer: peer, configuration: configuration, logger: logger, resolver: resolver)
        fids = session.fids
    }

    /// The largest message the connection accepts now: the negotiated msize, or the configured
    /// maximum before Tversion.
    public var maximumMessageSize: Int {
        state.withLock { negotiatedSize ?? configuration.maximumMessageSize }
    }

    /// The msize agreed with the client, nil before Tversion.
    public var messageSize: Int? { state.withLock { negotiatedSize } }

    public var isClosed: Bool { state.withLock { closing } }

    /// Requests outstanding and fids held, under one lock (for the transport's timeouts and gauges).
    public var usage: NineConnectionUsage {
        state.withLock {
            let fidUsage = session.fidUsage
            return NineConnectionUsage(outstandingRequests: outstanding, fids: fidUsage.count,
                                       hasHeldFid: fidUsage.everInserted)
        }
    }

    /// Requests received and not yet answered (for metrics and tests).
    public var outstandingRequestCount: Int { state.withLock { outstanding } }

    /// Fids in use (for metrics and tests).
    public var fidCount: Int { session.fidUsage.count }

    /// Sessions open (for metrics and tests).
    public var sessionCount: Int { session.sessionCount }

    /// Bytes held in xattr fids (for tests).
    var xattrBytes: Int { session.xattrBytes }

    /// Counts and logs a limit of the connection reached, where the session counts its own
    /// (its VM's counters, or the daemon's before an attach). Caller holds `state`.
    private func limitReachedLocked(_ limit: TenantLimit, _ detail: @autoclosure () -> String) {
        session.limitReached(limit, detail())
    }

    // MARK: - Requests

    /// How a request uses one fid, for ordering: requests that make, open, convert or end a
    /// fid are exclusive on it; the rest share it.
    struct FidAccess: Sendable, Equatable {
        var fid: UInt32
        var exclusive: Bool
    }

    /// One request from receipt to reply.
    final class Request: @unchecked Sendable {
        let tag: UInt16
        let type: NinePMessageType
        /// Decoded at receipt; nil for Tflush.
        let message: NinePRequest?
        let accesses: [FidAccess]
        let reply: Reply
        let unanswered: Unanswered?
        let cost: Int
        let generation: UInt64
        let fids: FidTable
        /// The msize of its generation.
        let messageSize: Int
        let connection: NinePConnection
        /// Guarded by the connection's `state`.
        var cancelled = false
        /// Its outcome is settled; its reply (if any) may still be on its way.
        var completed = false
        /// Its reply was handed over (or it had none): Tflushes of it are answered at once.
        var replied = false
        /// Handed to the worker pool (or this connection's run queue): its fids allowed it.
        var dispatched = false
        /// Tflush requests waiting for this one.
        var flushes: [Request] = []
        /// When it was received (monotonic nanoseconds), for the latency timers; 0 without them.
        let receivedAt: UInt64

        init(tag: UInt16, message: NinePRequest?, type: NinePMessageType, reply: @escaping Reply,
             unanswered: Unanswered? = nil, cost: Int, generation: UInt64, fids: FidTable, messageSize: Int,
             connection: NinePConnection) {
            self.tag = tag
            self.message = message
            self.type = type
            self.reply = reply
            self.unanswered = unanswered
            self.cost = cost
            self.generation = generation
            self.fids = fids
            self.messageSize = messageSize
            self.connection = connection
            receivedAt = connection.configuration.requestTimers == nil ? 0 : NinePRequestTimers.now()
            accesses = message.map(Self.accesses) ?? []
        }

        func isExclusive(on fid: UInt32) -> Bool {
            accesses.first { $0.fid == fid }?.exclusive ?? false
        }

        /// The fids a request touches. Requests on different fids, and shared uses of one fid
        /// (reads, writes, getattr, ...), run in parallel; an exclusive use waits for every
        /// earlier request on the fid and holds back every later one. So a client may pipeline
        /// Twalk, Tlopen and Tread of a new fid and they run in that order, while Linux's
        /// parallel reads of one file stay parallel.
        static func accesses(_ message: NinePRequest) -> [FidAccess] {
            var list: [FidAccess]
            switch message {
            case .version, .auth, .flush:
                list = []
            case .attach(let fid, _, _, _, _), .lopen(let fid, _), .lcreate(let fid, _, _, _, _),
                 .xattrcreate(let fid, _, _, _), .clunk(let fid), .remove(let fid):
                list = [FidAccess(fid: fid, exclusive: true)]
            case .walk(let fid, let newFid, _), .xattrwalk(let fid, let newFid, _):
                list = newFid == fid ? [FidAccess(fid: fid, exclusive: true)]
                    : [FidAccess(fid: fid, exclusive: false), FidAccess(fid: newFid, exclusive: true)]
            case .read(let fid, _, _), .write(let fid, _, _), .readdir(let fid, _, _), .getattr(let fid, _),
                 .setattr(let fid, _), .fsync(let fid, _), .statfs(let fid), .readlink(let fid), .lock(let fid, _),
                 .getlock(let fid, _), .mkdir(let fid, _, _, _), .symlink(let fid, _, _, _),
                 .mknod(let fid, _, _, _, _, _), .unlinkat(let fid, _, _):
                list = [FidAccess(fid: fid, exclusive: false)]
            case .link(let a, let b, _), .rename(let a, let b, _), .renameat(let a, _, let b, _):
                list = a == b ? [FidAccess(fid: a, exclusive: false)]
                    : [FidAccess(fid: a, exclusive: false), FidAccess(fid: b, exclusive: false)]
            }
            return list
        }
    }

    /// Takes one complete T-message. See the type's documentation for the contract.
    public func receive(_ message: [UInt8], reply: @escaping Reply) {
        receive(message, runInline: false, reply: reply)
    }

    /// Takes one complete T-message; with `runInline`, the transport says it has no other
    /// message to hand over now (its buffer is empty), so when nothing else of the connection
    /// is running and the request is not one that may wait long (fsync, locks), it runs on the
    /// caller's thread and `receive` returns after its reply was handed to the callback.
    /// Otherwise as `receive(_:reply:)`.
    public func receive(_ message: [UInt8], runInline: Bool, reply: @escaping Reply) {
        receive(message, runInline: runInline, reply: reply, unanswered: nil)
    }

    /// As `receive(_:runInline:reply:)`; a request that ends without a reply calls `unanswered`
    /// instead (see the type's documentation).
    public func receive(_ message: [UInt8], runInline: Bool, reply: @escaping Reply, unanswered: Unanswered?) {
        serveOnCurrentThread()
        guard let header = NinePHeader(message) else {
            logger.debug("dropping a fragment of \(message.count) bytes")
            unanswered?()
            return
        }
        guard Int(header.size) == message.count else {
            answerNow(reply, NinePResponse.error(errno: LinuxErrno.EPROTO).encode(tag: header.tag))
            return
        }
        switch header.type {
        case .tversion:
            version(message, tag: header.tag, reply: reply)
        case .tflush:
            flush(message, tag: header.tag, reply: reply, unanswered: unanswered)
        default:
            enqueue(message, header: header, runInline: runInline && configuration.runsIdleRequestsInline, reply: reply,
                    unanswered: unanswered)
        }
    }

    /// Charges the calling thread's CPU since its last charge to the tenant it served (this
    /// connection's, for a transport's own threads) and runs it at the connection's tenant's priority.
    public func serveOnCurrentThread() {
        guard let fairness = pool.fairness else { return }
        state.lock()
        let tenant = poolTenant
        state.unlock()
        fairness.serve(tenant)
    }

    /// Calls a reply callback unless the connection is closing; `close()` waits for callbacks
    /// under way, so none runs after it returns.
    private func answerNow(_ reply: Reply, _ bytes: [UInt8]) {
        state.lock()
        guard !closing else { state.unlock(); return }
        activeReplies += 1
        state.unlock()
        reply(bytes)
        state.lock()
        activeReplies -= 1
        if activeReplies == 0 { state.broadcast() }
        state.unlock()
    }

    /// The most bytes a request's reply can take, for the memory budget.
    private func replyEstimate(_ request: NinePRequest, msize: Int) -> Int {
        switch request {
        case .read(_, _, let count), .readdir(_, _, let count):
            return NineP.readReplyHeaderSize + min(Int(count), msize - NineP.readReplyHeaderSize)
        case .readlink:
            return 4200
        default:
            return 256
        }
    }

    /// Requests that never run on a transport's thread: they may wait long (a sync to disk, a
    /// lock), and the transport would read nothing else from the client meanwhile.
    private static func mayRunInline(_ request: NinePRequest) -> Bool {
        switch request {
        case .fsync, .lock, .getlock: false
        default: true
        }
    }

    private func enqueue(_ message: [UInt8], header: NinePHeader, runInline: Bool, reply: @escaping Reply,
                         unanswered: Unanswered?) {
        let decoded: NinePRequest
        do {
            decoded = try NinePRequest.decode(message).request
        } catch {
            logger.debug("malformed \(header.type): \(error)")
            answerNow(reply, NinePResponse.error(errno: error.errno).encode(tag: header.tag))
            return
        }
        state.lock()
        guard !closing else { state.unlock(); return }
        guard let msize = negotiatedSize else {
            state.unlock()
            answerNow(reply, NinePResponse.error(errno: LinuxErrno.EPROTO).encode(tag: header.tag))
            return
        }
        guard message.count <= msize else {
            state.unlock()
            answerNow(reply, NinePResponse.error(errno: LinuxErrno.EMSGSIZE).encode(tag: header.tag))
            return
        }
        let cost = message.count + replyEstimate(decoded, msize: msize)
        var waited = false
        while !closing {
            let requests = outstanding - outstandingFlushes
            let limit: TenantLimit
            if requests >= configuration.maximumOutstandingRequests {
                limit = .outstandingRequests
            } else if requests > 0 && outstandingBytes + cost > configuration.maximumOutstandingBytes {
                limit = .outstandingBytes
            } else {
                break
            }
            if !waited {
                waited = true
                limitReachedLocked(limit, "\(requests) requests of \(outstandingBytes) bytes outstanding; reading paused")
            }
            state.wait()
        }
        guard !closing else { state.unlock(); return }
        // A Tversion that arrived on another ring while this request waited may have changed
        // the msize: the request runs in the new protocol session, so it gets the new size.
        let messageSize = negotiatedSize ?? msize
        guard message.count <= messageSize else {
            state.unlock()
            answerNow(reply, NinePResponse.error(errno: LinuxErrno.EMSGSIZE).encode(tag: header.tag))
            return
        }
        guard inflight[header.tag] == nil else {
            state.unlock()
            logger.debug("tag \(header.tag) reused while in flight (\(header.type))")
            answerNow(reply, NinePResponse.error(errno: LinuxErrno.EPROTO).encode(tag: header.tag))
            return
        }
        let request = Request(tag: header.tag, message: decoded, type: header.type, reply: reply, unanswered: unanswered,
                              cost: cost, generation: generation, fids: fids, messageSize: messageSize, connection: self)
        inflight[header.tag] = request
        outstanding += 1
        outstandingBytes += cost
        for access in request.accesses { fidQueues[access.fid, default: []].append(request) }
        var submit: Request?
        let idle = running == 0
        if isReady(request) { submit = dispatchLocked(request) }
        let tenant = poolTenant
        state.unlock()
        guard let submit else { return }
        if runInline && idle && Self.mayRunInline(decoded) {
            run(submit)
        } else {
            pool.submit(for: tenant) { self.run(submit) }
        }
    }

    /// Whether no earlier request holds back `request` on any of its fids. Caller holds `state`.
    private func isReady(_ request: Request) -> Bool {
        for access in request.accesses {
            guard let queue = fidQueues[access.fid] else { continue }
            for earlier in queue {
                if earlier === request { break }
                if access.exclusive || earlier.isExclusive(on: access.fid) { return false }
            }
        }
        return true
    }

    /// Marks a request runnable: it takes a parallel slot (returned, for the caller to submit
    /// to the pool once `state` is released) or waits in the run queue. Caller holds `state`.
    private func dispatchLocked(_ request: Request) -> Request? {
        request.dispatched = true
        if running < configuration.maximumParallelRequests {
            running += 1
            return request
        }
        runQueue.append(request)
        return nil
    }

    /// Takes a finished request out of its fids' queues and dispatches what it held back.
    /// Caller holds `state`; returns requests to submit to the pool.
    private func releaseFids(_ request: Request) -> [Request] {
        var candidates: [Request] = []
        for access in request.accesses {
            guard var queue = fidQueues[access.fid] else { continue }
            queue.removeAll { $0 === request }
            fidQueues[access.fid] = queue.isEmpty ? nil : queue
            for waiting in queue where !waiting.dispatched && !waiting.completed && !candidates.contains(where: { $0 === waiting }) {
                candidates.append(waiting)
            }
        }
        var submit: [Request] = []
        for candidate in candidates where isReady(candidate) {
            if let r = dispatchLocked(candidate) { submit.append(r) }
        }
        return submit
    }

    /// Runs one request, then hands this parallel slot to the next runnable request through the
    /// pool (so that connections of a tenant take turns on its share of the threads).
    private func run(_ request: Request) {
        execute(request)
        state.lock()
        if runQueueHead < runQueue.count {
            let next = runQueue[runQueueHead]
            runQueueHead += 1
            if runQueueHead == runQueue.count {
                runQueue.removeAll(keepingCapacity: runQueue.count <= 1024)
                runQueueHead = 0
            }
            let tenant = poolTenant
            state.unlock()
            pool.submit(for: tenant) { self.run(next) }
        } else {
            running -= 1
            state.unlock()
        }
    }

    private func execute(_ request: Request) {
        state.lock()
        let cancelled = request.cancelled
        state.unlock()
        guard !cancelled, let message = request.message else {
            complete(request, nil)
            return
        }
        switch session.handle(message, request) {
        case .reply(let bytes):
            complete(request, bytes)
        case .deferred:
            break
        }
    }

    /// Finishes a request: sends its reply (nil: it was cancelled before taking effect, send
    /// nothing), lets the requests it held back on its fids run, then sends the Rflush of every
    /// Tflush that waited for it, and of every Tflush that waited for those, and so on. A chain
    /// of flushes is as long as the client makes it: it is walked in a loop, never recursively.
    func complete(_ request: Request, _ bytes: [UInt8]?) {
        var work: [(Request, [UInt8]?)] = [(request, bytes)]
        var next = 0
        while next < work.count {
            let (request, bytes) = work[next]
            next += 1
            for flush in finish(request, bytes) {
                work.append((flush, NinePResponse.flush.encode(tag: flush.tag)))
            }
        }
    }

    /// One step of `complete`: settles a request, hands its reply over, frees its slot and
    /// returns the Tflushes to answer after it.
    private func finish(_ request: Request, _ bytes: [UInt8]?) -> [Request] {
        state.lock()
        guard !request.completed else { state.unlock(); return [] }
        request.completed = true
        // The tag is free as soon as the client can see the reply: take it out of flight now,
        // and keep the request findable for a Tflush until the reply is handed over.
        if inflight[request.tag] === request { inflight[request.tag] = nil }
        let current = request.generation == generation
        let submit = current ? releaseFids(request) : []
        let send = !closing && current && bytes != nil
        // A request that ends without a reply still tells a transport that counts requests
        // per channel (`unanswered`), unless the connection is closing.
        let silent = !closing && !send && request.unanswered != nil
        if send {
            activeReplies += 1
            replying[request.tag] = request
        } else if silent {
            activeReplies += 1
        }
        // Its slot is free once its outcome is settled (the reply is on its way).
        outstanding -= 1
        if request.type == .tflush { outstandingFlushes -= 1 }
        outstandingBytes -= request.cost
        state.broadcast()
        let tenant = poolTenant
        let limit = negotiatedSize ?? configuration.maximumMessageSize
        let requestVMTimer = vmTimer
        guard send, var bytes else {
            // No reply to wait for: its flushes are answered now.
            request.replied = true
            let flushes = request.flushes
            request.flushes = []
            state.unlock()
            for r in submit { pool.submit(for: tenant) { self.run(r) } }
            if silent, let unanswered = request.unanswered {
                unanswered()
                state.lock()
                activeReplies -= 1
                if activeReplies == 0 { state.broadcast() }
                state.unlock()
            }
            return flushes
        }
        state.unlock()
        for r in submit { pool.submit(for: tenant) { self.run(r) } }
        if bytes.count > limit {
            logger.error("reply of \(bytes.count) bytes to \(request.type) exceeds msize")
            bytes = NinePResponse.error(errno: LinuxErrno.EIO).encode(tag: request.tag)
        }
        if let timers = configuration.requestTimers {
            let elapsed = NinePRequestTimers.now() &- request.receivedAt
            timers.record(request.type, vm: requestVMTimer, nanoseconds: Int64(truncatingIfNeeded: elapsed))
        }
        request.reply(bytes)
        state.lock()
        activeReplies -= 1
        if replying[request.tag] === request { replying[request.tag] = nil }
        request.replied = true
        let flushes = request.flushes
        request.flushes = []
        if activeReplies == 0 { state.broadcast() }
        state.unlock()
        return flushes
    }

    /// Whether a request should stop waiting: flushed, superseded by Tversion, or the connection closing.
    func isCancelled(_ request: Request) -> Bool {
        state.lock()
        defer { state.unlock() }
        return request.cancelled || closing || request.generation != generation
    }

    // MARK: - Tflush

    /// Tflush: answered at once when the old tag is not in flight; otherwise after the old
    /// request completes. A request still queued, or waiting for a lock, is cancelled and
    /// sends no reply; one that ran to completion sends its reply first (its effects happened,
    /// and Linux honours a reply that arrives before the Rflush).
    private func flush(_ message: [UInt8], tag: UInt16, reply: @escaping Reply, unanswered: Unanswered?) {
        let oldTag: UInt16
        do {
            guard case .flush(let old) = try NinePRequest.decode(message).request else { unanswered?(); return }
            oldTag = old
        } catch {
            answerNow(reply, NinePResponse.error(errno: error.errno).encode(tag: tag))
            return
        }
        state.lock()
        guard !closing else { state.unlock(); return }
        guard negotiatedSize != nil else {
            state.unlock()
            answerNow(reply, NinePResponse.error(errno: LinuxErrno.EPROTO).encode(tag: tag))
            return
        }
        // Flushes have slots of their own: every one ends once the request it targets ends,
        // which never waits for the client, so waiting for one cannot deadlock.
        var waited = false
        while !closing && outstandingFlushes >= configuration.maximumOutstandingFlushes {
            if !waited {
                waited = true
                limitReachedLocked(.outstandingFlushes, "\(outstandingFlushes) Tflush requests outstanding; reading paused")
            }
            state.wait()
        }
        guard !closing else { state.unlock(); return }
        guard inflight[tag] == nil else {
            state.unlock()
            logger.debug("tag \(tag) reused while in flight (Tflush)")
            answerNow(reply, NinePResponse.error(errno: LinuxErrno.EPROTO).encode(tag: tag))
            return
        }
        guard let target = inflight[oldTag] ?? replying[oldTag], !target.replied else {
            state.unlock()
            answerNow(reply, NinePResponse.flush.encode(tag: tag))
            return
        }
        let request = Request(tag: tag, message: nil, type: .tflush, reply: reply, unanswered: unanswered,
                              cost: message.count, generation: generation, fids: fids,
                              messageSize: negotiatedSize ?? NineP.minimumMessageSize, connection: self)
        // Never queued behind fids: it completes with (after) its target.
        request.dispatched = true
        inflight[tag] = request
        outstanding += 1
        outstandingFlushes += 1
        outstandingBytes += request.cost
        target.flushes.append(request)
        // Still held back by its fids: it never started, so it ends (silently) now.
        var abandon = false
        if !target.completed {
            target.cancelled = true
            abandon = !target.dispatched
        }
        state.unlock()
        if abandon { complete(target, nil) }
    }

    // MARK: - Tversion

    /// Tversion starts a new session: requests in flight are abandoned (their replies dropped),
    /// every fid is clunked, and the msize is agreed anew.
    private func version(_ message: [UInt8], tag: UInt16, reply: @escaping Reply) {
        let receivedAt = configuration.requestTimers == nil ? 0 : NinePRequestTimers.now()
        let msize: UInt32
        let version: [UInt8]
        do {
            guard case .version(let m, let v) = try NinePRequest.decode(message).request else { return }
            msize = m
            version = v
        } catch {
            answerNow(reply, NinePResponse.error(errno: error.errno).encode(tag: tag))
            return
        }
        let speaks = version == NineP.protocolVersion || version.starts(with: NineP.protocolVersion + [UInt8(ascii: ".")])
        state.lock()
        guard !closing else { state.unlock(); return }
        generation &+= 1
        for request in inflight.values { request.cancelled = true }
        let abandoned = inflight.values.filter { !$0.dispatched && !$0.completed }
        inflight.removeAll()
        replying.removeAll()
        fidQueues.removeAll()
        let tables = session.reset()
        fids = tables.new
        poolTenant = NinePWorkerPool.Tenant(peer: peer)
        vmTimer = nil
        let answer: NinePResponse
        if !speaks {
            negotiatedSize = nil
            answer = .version(msize: UInt32(configuration.maximumMessageSize), version: NineP.unknownVersion)
        } else if Int(msize) < NineP.minimumMessageSize {
            negotiatedSize = nil
            answer = .error(errno: LinuxErrno.EMSGSIZE)
        } else {
            let agreed = min(Int(msize), configuration.maximumMessageSize)
            negotiatedSize = agreed
            answer = .version(msize: UInt32(agreed), version: NineP.protocolVersion)
        }
        state.unlock()
        for request in abandoned { complete(request, nil) }
        // The old sessions end as their fids go: now, or when the requests using them finish.
        session.end(tables.old)
        logger.debug("Tversion \(String(decoding: version, as: UTF8.self)) msize \(msize): \(answer)")
        if let timers = configuration.requestTimers {
            // A Tversion unbinds the connection: it counts for no VM.
            timers.record(.tversion, vm: nil, nanoseconds: Int64(truncatingIfNeeded: NinePRequestTimers.now() &- receivedAt))
        }
        answerNow(reply, answer.encode(tag: tag))
    }

    // MARK: - Close

    /// Ends the connection; see the type's documentation. Safe to call more than once and from
    /// any thread but a reply callback.
    public func close() {
        state.lock()
        if closing {
            while !closed { state.wait() }
            state.unlock()
            return
        }
        closing = true
        for request in inflight.values { request.cancelled = true }
        let abandoned = inflight.values.filter { !$0.dispatched && !$0.completed }
        state.broadcast()
        state.unlock()
        for request in abandoned { complete(request, nil) }
        state.lock()
        while outstanding > 0 || activeReplies > 0 { state.wait() }
        state.unlock()
        // Nothing runs any more: every fid goes now, and with them every session.
        session.close()

        state.lock()
        closed = true
        let handler = closeHandler
        closeHandler = nil
        state.broadcast()
        state.unlock()
        logger.debug("connection closed")
        handler?()
    }

    // MARK: - What running requests ask

    /// An attach of `request` bound the session to a VM: its work is charged there from now on
    /// (unless a Tversion came meanwhile).
    fileprivate func bind(_ request: Request, toVM name: String) {
        state.lock()
        if request.generation == generation { bindLocked(toVM: name) }
        state.unlock()
    }

    /// The connection's work is charged to VM `name` and timed as its. Caller holds `state`.
    private func bindLocked(toVM name: String) {
        poolTenant = .vm(name)
        vmTimer = configuration.requestTimers?.timer(forVM: name)
    }

    /// An msize within what 9P can carry: at least the smallest that works, at most 1 GiB
    /// (msize travels as a u32; beyond 1 GiB nothing is gained).
    private static func boundedMessageSize(_ size: Int) -> Int {
        min(1 << 30, max(NineP.minimumMessageSize, size))
    }

    /// Takes a blocked-lock place: a waiter holds an outstanding slot indefinitely, so their
    /// number is bounded below the outstanding limit.
    fileprivate func reserveBlockedWait() -> Bool {
        state.lock()
        defer { state.unlock() }
        guard blockedLocks < configuration.maximumBlockedLocks else {
            limitReachedLocked(.blockedLocks, "\(blockedLocks) Tlock requests waiting; answered BLOCKED")
            return false
        }
        blockedLocks += 1
        return true
    }

    fileprivate func releaseBlockedWait() {
        state.lock()
        blockedLocks -= 1
        state.unlock()
    }
}

// MARK: - Hand-over to another process

extension NinePConnection: NineSuspendableHandler {
    public func beginSuspend() {
        state.withLock { suspending = true }
    }

    public func finishSuspend(timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        state.lock()
        defer { state.unlock() }
        while outstanding > 0 || activeReplies > 0 {
            if !state.wait(until: deadline) { return outstanding == 0 && activeReplies == 0 }
        }
        return true
    }

    public func resume() {
        state.withLock { suspending = false }
    }

    public func handOverState() throws -> [UInt8] {
        state.lock()
        guard suspending, outstanding == 0, activeReplies == 0, !closing else {
            state.unlock()
            throw NinePHandOverError("the connection is not at rest")
        }
        let messageSize = negotiatedSize
        // From here on the connection belongs to the process that takes over: nothing is
        // answered, and close() releases nothing (the files, locks and sessions live on there).
        closing = true
        closed = true
        state.unlock()
        return try session.handOverState(messageSize: messageSize)
    }

    /// A connection handed over by another process, serving the session `state` describes: the
    /// msize agreed, every attach (resolved again, so the VM's access rules of now apply), every
    /// fid with its open file and locks.
    /// `onSessionEnd` is set before anything is restored, so that a restore that fails half-way
    /// hands back every session it had opened.
    public convenience init(restoring state: [UInt8], peer: NinePPeer, configuration: NinePConfiguration = NinePConfiguration(),
                            pool: NinePWorkerPool, logger: Logger, resolver: @escaping NinePAttachResolver,
                            onSessionEnd: (@Sendable (VMView) -> Void)?) throws {
        self.init(peer: peer, configuration: configuration, pool: pool, logger: logger, resolver: resolver)
        self.onSessionEnd = onSessionEnd
        let restored = try session.restore(state, into: fids)
        self.state.withLock {
            // The client goes on with the msize it agreed, whatever this build's maximum now.
            negotiatedSize = restored.messageSize.map(Self.boundedMessageSize)
            if let vm = restored.vm { bindLocked(toVM: vm) }
        }
    }

    fileprivate func isSuspending(_ request: Request) -> Bool {
        state.withLock { suspending }
    }
}

extension NinePConnection.Request: NinePRequestContext {
    var isSuspending: Bool { connection.isSuspending(self) }
    var isCancelled: Bool { connection.isCancelled(self) }
    func reserveBlockedWait() -> Bool { connection.reserveBlockedWait() }
    func releaseBlockedWait() { connection.releaseBlockedWait() }
    func bound(toVM name: String) { connection.bind(self, toVM: name) }
    func complete(_ reply: [UInt8]?) { connection.complete(self, reply) }
}
