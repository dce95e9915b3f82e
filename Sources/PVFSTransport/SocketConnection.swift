import Dispatch
import Foundation
import CPVFSTransportIO
import Glibc
import Logging
import PVFS9PCodec
import Synchronization
import SystemPackage

/// Closed once when the server stops: from then on no connection of the server sends anything.
/// Every connection stops sending at the same instant, before any of them releases its fids and
/// locks; otherwise a connection ending first could hand its lock to another still sending, and
/// that client would be told it got a lock just before its connection ends.
final class SendGate: Sendable {
    private let closed = Atomic<Bool>(false)
    var isClosed: Bool { closed.load(ordering: .acquiring) }
    func close() { closed.store(true, ordering: .releasing) }
}

/// Writes a socket's replies in the order they are handed over. A reply handed over while
/// nothing is queued or being sent goes out at once from the caller's thread with a
/// non-blocking send (no thread switch on the way out: a request costs one hand-off fewer);
/// whatever the socket does not take then, and every reply that finds others queued, is sent by
/// a thread of its own. Worker threads thus never block on a slow client, and each reply goes
/// out whole (partial writes are resumed; several replies are gathered into one sendmsg).
final class ReplyWriter: @unchecked Sendable {
    private let fd: Int32
    private let limit: Int
    private let gate: SendGate
    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var queue: [[UInt8]] = []
    private var head = 0
    private var queuedBytes = 0
    /// Replies queued beyond which the reader also waits (many tiny replies count too).
    private let countLimit = 4096
    private var finishing = false
    private var failed = false
    /// A send is under way (the thread's batch or a caller's direct send): nothing else may
    /// start one, so replies keep their order.
    private var sending = false
    /// The writer thread has returned.
    private var ended = false

    /// The peer is gone or the socket failed: nothing queued will be sent. Caller holds `condition`.
    private func dropQueueAfterFailureLocked() {
        failed = true
        queue.removeAll()
        head = 0
        queuedBytes = 0
    }

    /// `limit`: queued bytes above which the reader stops taking requests.
    /// Called on the writer thread before each batch it sends (the tenant's CPU accounting).
    private let beforeSending: @Sendable () -> Void

    init(fd: Int32, limit: Int, gate: SendGate, beforeSending: @escaping @Sendable () -> Void = {}) {
        self.fd = fd
        self.limit = limit
        self.gate = gate
        self.beforeSending = beforeSending
    }

    func start(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.stackSize = 256 << 10
        thread.start()
    }

    /// Sends or queues a reply; never blocks. Replies after a write error, or once the gate is
    /// closed, are dropped.
    func enqueue(_ reply: [UInt8]) {
        condition.lock()
        guard !failed && !gate.isClosed else { condition.unlock(); return }
        guard !sending && head == queue.count && !finishing && !reply.isEmpty else {
            queue.append(reply)
            queuedBytes += reply.count
            condition.signal()
            condition.unlock()
            return
        }
        sending = true
        condition.unlock()
        var sent = 0
        var error: Int32 = 0
        while sent < reply.count {
            let n = reply.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if n > 0 { sent += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno != EAGAIN && errno != EWOULDBLOCK { error = errno }
            break
        }
        condition.lock()
        sending = false
        if error != 0 {
            dropQueueAfterFailureLocked()
            condition.broadcast()
            condition.unlock()
            shutdown(fd, Int32(SHUT_RDWR))
            return
        }
        if sent < reply.count {
            // The socket is full: the thread sends the rest, before anything queued meanwhile.
            let rest = Array(reply[sent...])
            queue.insert(rest, at: head)
            queuedBytes += rest.count
        }
        // Wake the thread only when there is something for it to send (replies queued during
        // this send, or the rest of this one): waking it for nothing costs a thread switch.
        if head < queue.count || finishing { condition.broadcast() }
        condition.unlock()
    }

    /// Blocks while more than `limit` bytes wait to be sent: a client that does not read its
    /// replies gets no more requests served. `blocked` is called (without the lock) when it
    /// has to wait, before waiting.
    func waitForRoom(blocked: () -> Void = {}, stop: () -> Bool = { false }) {
        condition.lock()
        defer { condition.unlock() }
        var reported = false
        while (queuedBytes > limit || queue.count - head > countLimit) && !failed && !stop() {
            if !reported {
                reported = true
                condition.unlock()
                blocked()
                condition.lock()
                continue
            }
            condition.wait()
        }
    }

    /// Wakes a reader waiting in `waitForRoom` so that it looks at its `stop` condition.
    func interruptWaits() {
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }

    /// Reply bytes waiting to be sent.
    var queuedByteCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return queuedBytes
    }

    var hasFailed: Bool {
        condition.lock()
        defer { condition.unlock() }
        return failed
    }

    /// Sends what is queued, then stops; true when that finished within `timeout` seconds.
    func finish(timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        finishing = true
        condition.broadcast()
        while !ended {
            if !condition.wait(until: deadline) { return ended }
        }
        return true
    }

    /// Waits for the thread to end (after `finish`, and after the socket was shut down).
    func join() {
        condition.lock()
        while !ended { condition.wait() }
        condition.unlock()
    }

    private func run() {
        defer {
            beforeSending()
            condition.lock()
            ended = true
            condition.broadcast()
            condition.unlock()
        }
        while true {
            condition.lock()
            while ((head == queue.count && !finishing) || sending) && !failed { condition.wait() }
            if head == queue.count || failed {
                condition.unlock()
                return
            }
            sending = true
            var batch: [[UInt8]] = []
            var bytes = 0
            while head < queue.count && batch.count < 64 && bytes < 4 << 20 {
                let reply = queue[head]
                queue[head] = []
                head += 1
                bytes += reply.count
                batch.append(reply)
            }
            if head == queue.count {
                queue.removeAll(keepingCapacity: queue.count <= 4096)
                head = 0
            } else if head >= 1024 && head * 2 >= queue.count {
                queue.removeFirst(head)
                head = 0
            }
            condition.unlock()
            beforeSending()
            let sent = !gate.isClosed && sendAll(batch)
            condition.lock()
            sending = false
            queuedBytes -= bytes
            if !sent { dropQueueAfterFailureLocked() }
            condition.broadcast()
            condition.unlock()
            if !sent {
                // Wake the reader: the connection is over.
                shutdown(fd, Int32(SHUT_RDWR))
                return
            }
        }
    }

    /// sendmsg of the whole batch, resuming after partial writes. MSG_NOSIGNAL: a closed peer
    /// is an EPIPE here, never a SIGPIPE for the daemon.
    private func sendAll(_ batch: [[UInt8]]) -> Bool {
        var index = 0
        var offset = 0
        while index < batch.count {
            var iovecs: [iovec] = []
            iovecs.reserveCapacity(batch.count - index)
            // The arrays stay alive (held by `batch`) for the call; their storage is contiguous.
            let sent: Int = withExtendedLifetime(batch) {
                for i in index..<batch.count {
                    batch[i].withUnsafeBytes { raw in
                        let start = i == index ? offset : 0
                        guard let base = raw.baseAddress, raw.count > start else { return }
                        iovecs.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: base + start), iov_len: raw.count - start))
                    }
                }
                if iovecs.isEmpty { return 0 }
                return iovecs.withUnsafeMutableBufferPointer { vectors in
                    var message = msghdr()
                    message.msg_iov = vectors.baseAddress
                    message.msg_iovlen = vectors.count
                    return sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
                }
            }
            if sent < 0 {
                if errno == EINTR { continue }
                return false
            }
            if sent == 0 && index < batch.count && batch[index...].allSatisfy({ $0.isEmpty }) { return true }
            var remaining = sent
            while remaining > 0 && index < batch.count {
                let left = batch[index].count - offset
                if remaining >= left {
                    remaining -= left
                    index += 1
                    offset = 0
                } else {
                    offset += remaining
                    remaining = 0
                }
            }
        }
        return true
    }
}

/// What a 9P socket connection carries to another process (a graceful upgrade): its socket,
/// the bytes of requests received but not yet handed to the handler (a message cut in two, or
/// several whole ones), and its handler's session, opaque to the transport.
public struct SocketConnectionHandOff: Sendable {
    public var fd: Int32
    public var id: UInt64
    public var peer: NinePPeer
    /// The tenant (listener) it came through.
    public var listenerName: String
    public var pendingInput: [UInt8]
    public var session: [UInt8]

    public init(fd: Int32, id: UInt64, peer: NinePPeer, listenerName: String, pendingInput: [UInt8], session: [UInt8]) {
        self.fd = fd
        self.id = id
        self.peer = peer
        self.listenerName = listenerName
        self.pendingInput = pendingInput
        self.session = session
    }
}

/// One accepted socket served by one 9P handler: a reader thread that frames requests and
/// hands them to the handler, and a ReplyWriter for the replies.
final class SocketConnection: @unchecked Sendable {
    let id: UInt64
    let peer: NinePPeer
    /// The tenant (listener) the connection came through.
    let listenerName: String
    let handler: any NineMessageHandler
    private let logger: Logger
    private let readSize: Int
    private let writer: ReplyWriter
    /// Guards `fd` against being shut down after it was closed (and reused).
    private let fdLock = NSLock()
    private var fd: Int32
    private let stalled: @Sendable () -> Void
    private let finished: @Sendable (SocketConnection) -> Void
    /// For the handshake and idle timeouts (`TenantAdmission.now()` values).
    private let connectedAt = TenantAdmission.now()
    private let lastActivity = Atomic<UInt64>(TenantAdmission.now())
    private let attached = Atomic<Bool>(false)
    /// Bytes received before this process served the connection (it was handed over).
    private let initialInput: [UInt8]

    /// What the server asks of the reader between two messages (a graceful upgrade).
    private enum ReaderControl { case reading, pauseAsked, paused, handedOver, ending }
    private let control = NSCondition()
    /// Guarded by `control`.
    private var readerControl = ReaderControl.reading
    /// Bytes the parked reader had received but not handed over. Guarded by `control`.
    private var parkedInput: [UInt8] = []
    /// Read without the lock on every loop of the reader: set while `readerControl` is not `.reading`.
    private let controlAsked = Atomic<Bool>(false)
    /// The reader thread, to interrupt its recv(2) with a signal: 0 before it runs and once it
    /// has returned (so no signal is ever sent to a thread that is gone). Guarded by `control`.
    private var readerThread: UInt = 0

    /// `stalled`: called each time the reader stops taking requests because the client does not
    /// read its replies.
    init(fd: Int32, id: UInt64, peer: NinePPeer, listenerName: String, handler: any NineMessageHandler, readSize: Int,
         replyQueueLimit: Int, sendGate: SendGate, logger: Logger, initialInput: [UInt8] = [],
         stalled: @escaping @Sendable () -> Void = {}, finished: @escaping @Sendable (SocketConnection) -> Void) {
        self.fd = fd
        self.initialInput = initialInput
        self.id = id
        self.peer = peer
        self.listenerName = listenerName
        self.handler = handler
        self.readSize = readSize
        self.logger = logger
        self.stalled = stalled
        self.finished = finished
        writer = ReplyWriter(fd: fd, limit: replyQueueLimit, gate: sendGate, beforeSending: { [handler] in handler.serveOnCurrentThread() })
    }

    /// What the connection is doing, for the timeouts.
    func activity() -> ConnectionActivity {
        let usage = handler.usage
        let holdsFid = usage.fids > 0
        if holdsFid || usage.hasHeldFid { attached.store(true, ordering: .relaxed) }
        return ConnectionActivity(connectedAt: connectedAt, lastActivity: lastActivity.load(ordering: .relaxed),
                                  hasAttached: attached.load(ordering: .relaxed), holdsFid: holdsFid,
                                  outstandingRequests: usage.outstandingRequests)
    }

    var queuedReplyBytes: Int { writer.queuedByteCount }

    func start() {
        writer.start(name: "pvfs.9p.write.\(id)")
        let thread = Thread { [self] in run() }
        thread.name = "pvfs.9p.read.\(id)"
        thread.stackSize = 512 << 10
        thread.start()
    }

    /// Ends the connection from outside (server stop): both directions of the socket shut.
    func abort() {
        fdLock.lock()
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        fdLock.unlock()
    }

    // MARK: Pausing between messages (graceful upgrade)

    /// Asks the reader to stop between two messages and waits (up to `timeout` s) until it
    /// has; false when it did not (it is then told to go on reading).
    func pauseReading(timeout: Double) -> Bool {
        control.lock()
        guard readerControl == .reading else {
            defer { control.unlock() }
            return readerControl == .paused
        }
        readerControl = .pauseAsked
        controlAsked.store(true, ordering: .releasing)
        control.unlock()
        let deadline = Date(timeIntervalSinceNow: timeout)
        control.lock()
        defer { control.unlock() }
        while readerControl == .pauseAsked {
            // The reader may be blocked in recv (a signal ends that with EINTR; one sent just
            // before it entered recv is lost, hence again every 20 ms) or waiting for room.
            // Sent under `control`, which the reader takes before it ends: never to a thread gone.
            if readerThread != 0 { _ = cpvfs_interrupt_thread(readerThread) }
            writer.interruptWaits()
            if !control.wait(until: min(deadline, Date(timeIntervalSinceNow: 0.02))) && Date() >= deadline { break }
        }
        if readerControl == .pauseAsked {
            readerControl = .reading
            controlAsked.store(false, ordering: .releasing)
            return false
        }
        // Ended meanwhile (the client left): nothing to wait for; it is not handed over.
        return readerControl == .paused || readerControl == .ending
    }

    /// Lets a paused reader go on.
    func resumeReading() {
        control.lock()
        if readerControl == .paused || readerControl == .pauseAsked {
            readerControl = .reading
            controlAsked.store(false, ordering: .releasing)
            control.broadcast()
        }
        control.unlock()
    }

    /// Ends a paused connection's service here without touching its socket or its handler's
    /// state: sends the replies queued (up to `timeout` s), then returns what the process that
    /// takes over needs. nil when the client did not take its replies in time: the connection
    /// is then closed as if the client had gone.
    func handOff(timeout: Double) -> SocketConnectionHandOff? {
        guard let suspendable = handler as? any NineSuspendableHandler else { return nil }
        guard writer.finish(timeout: timeout) else {
            logger.warning("not handed over: the client did not read its replies within \(timeout) s")
            endParkedReader(.ending)
            abort()
            return nil
        }
        let session: [UInt8]
        do {
            session = try suspendable.handOverState()
        } catch {
            logger.error("not handed over: \(error)")
            endParkedReader(.ending)
            abort()
            return nil
        }
        control.lock()
        let input = parkedInput
        control.unlock()
        endParkedReader(.handedOver)
        return SocketConnectionHandOff(fd: fd, id: id, peer: peer, listenerName: listenerName, pendingInput: input, session: session)
    }

    private func endParkedReader(_ how: ReaderControl) {
        control.lock()
        readerControl = how
        control.broadcast()
        control.unlock()
    }

    /// Called by the reader between messages when the server asked something of it: parks
    /// until told to go on (`.reading`), or that the connection is handed over or ending.
    private func parkIfAsked(_ framer: inout NinePMessageFramer) -> ReaderControl {
        guard controlAsked.load(ordering: .acquiring) else { return .reading }
        control.lock()
        defer { control.unlock() }
        guard readerControl == .pauseAsked else { return readerControl }
        readerControl = .paused
        parkedInput = framer.takeBuffered()
        control.broadcast()
        while readerControl == .paused { control.wait() }
        if readerControl == .reading { framer.append(contentsOf: parkedInput) }
        parkedInput = readerControl == .handedOver ? parkedInput : []
        return readerControl
    }

    private func run() {
        // The interrupt signal reaches this thread only inside recv (below).
        cpvfs_accept_interrupts(0)
        control.withLock { readerThread = UInt(cpvfs_current_thread()) }
        defer {
            control.lock()
            readerThread = 0
            if readerControl != .handedOver { readerControl = .ending }
            control.broadcast()
            control.unlock()
        }
        let socket = fd
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: readSize, alignment: 16)
        defer { buffer.deallocate() }
        let handler = self.handler
        var framer = NinePMessageFramer(maximumMessageSize: handler.maximumMessageSize)
        framer.append(contentsOf: initialInput)
        let writer = self.writer
        let reply: @Sendable ([UInt8]) -> Void = { writer.enqueue($0) }
        let paused: () -> Bool = { [unowned self] in controlAsked.load(ordering: .acquiring) }
        // At the tenant's priority from the start: a demoted tenant's new connections are too.
        handler.serveOnCurrentThread()
        var reason = "end of stream"
        reading: while true {
            // Whole messages received first (those handed over with the connection too).
            while !paused() {
                framer.maximumMessageSize = handler.maximumMessageSize
                let message: [UInt8]?
                do {
                    message = try framer.next()
                } catch {
                    reason = "\(error)"
                    logger.warning("closing connection: \(error)")
                    break reading
                }
                guard let message else { break }
                // Each request waits for room in the reply queue, not only each recv: one recv
                // may hold thousands of small requests whose replies are large (Tread).
                writer.waitForRoom(blocked: stalled, stop: paused)
                if paused() {
                    // Parked with the rest: this message goes back in front of it.
                    var rest = framer.takeBuffered()
                    rest.insert(contentsOf: message, at: 0)
                    framer.append(contentsOf: rest)
                    break
                }
                // Nothing more buffered: the client waits for this reply (or has not sent the
                // rest yet), so an idle connection may run it on this thread.
                handler.receive(message, runInline: framer.bufferedByteCount == 0, reply: reply, unanswered: nil)
            }
            switch parkIfAsked(&framer) {
            case .handedOver: return
            case .ending: reason = "not handed over"; break reading
            default: break
            }
            writer.waitForRoom(blocked: stalled, stop: paused)
            if paused() { continue }
            cpvfs_accept_interrupts(1)
            let n = recv(socket, buffer.baseAddress, buffer.count, 0)
            let error = errno
            cpvfs_accept_interrupts(0)
            if n < 0 {
                if error == EINTR { continue }
                reason = "\(Errno(rawValue: error))"
                break
            }
            if n == 0 { break }
            lastActivity.store(TenantAdmission.now(), ordering: .relaxed)
            framer.append(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        logger.debug("connection ends: \(reason)")
        // Requests still running finish (their replies are queued), then every fid is released.
        handler.close()
        // What the connection's end cost is the tenant's too.
        handler.serveOnCurrentThread()
        // Flush what is queued to a client that still reads; give up on one that does not.
        if !writer.finish(timeout: 5) {
            abort()
        }
        writer.join()
        fdLock.lock()
        Glibc.close(socket)
        fd = -1
        fdLock.unlock()
        finished(self)
    }
}
