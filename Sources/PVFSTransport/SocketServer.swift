import Dispatch
import Foundation
import Glibc
import Logging
import PVFS9PCodec
import PVFSSystem
import SystemPackage

/// A listening socket handed to another process.
public struct SocketListenerHandOff: Sendable {
    public var fd: Int32
    /// The address as configured ("tcp:0.0.0.0:5640"; port 0 when the kernel chose).
    public var requestedAddress: String
    /// The address bound, with the port the kernel chose.
    public var boundAddress: String
    /// The socket file of a Unix listener.
    public var unixPath: String?

    public init(fd: Int32, requestedAddress: String, boundAddress: String, unixPath: String?) {
        self.fd = fd
        self.requestedAddress = requestedAddress
        self.boundAddress = boundAddress
        self.unixPath = unixPath
    }
}

/// Everything a 9P socket server hands to the process that takes over.
public struct SocketServerHandOff: Sendable {
    public var listeners: [SocketListenerHandOff]
    public var connections: [SocketConnectionHandOff]
    /// Connections closed instead (their clients did not take their replies in time).
    public var closedCount: Int

    public init(listeners: [SocketListenerHandOff], connections: [SocketConnectionHandOff], closedCount: Int = 0) {
        self.listeners = listeners
        self.connections = connections
        self.closedCount = closedCount
    }
}

/// Serves 9P2000.L on TCP and Unix stream sockets: QEMU/KVM guests reach it with
/// `mount -t 9p -o trans=tcp,port=PORT,version=9p2000.L,aname=VM HOST /mnt` (or `trans=unix`
/// through a forwarded socket).
///
/// One thread polls the listeners; each accepted socket gets a reader thread (framing requests
/// into its `NineMessageHandler`) and a writer thread (sending replies in order, partial-write
/// safe). The factory decides, per peer, what handler serves the connection (or refuses it by
/// throwing); the 9P server behind the handler decides which VM each Tattach reaches.
///
///     let server = SocketServer(listen: [.tcp(host: "127.0.0.1", port: 5640)], logger: logger) { peer in
///         try nineServer.handler(for: peer)
///     }
///     try server.start()
///     ...
///     server.stop()   // stops accepting, ends every connection, releases every engine handle
public final class SocketServer: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// Connections per listener and in all, and the handshake and idle timeouts. A
        /// connection beyond a cap is accepted and closed at once; one past a timeout is closed.
        /// Used when the server makes its own `TenantAdmission`.
        public var limits = TenantLimits()
        /// Tenant names of the listeners, by the address as given to `init` ("tcp:127.0.0.1:5641"
        /// → "web1-port"); a listener missing here is its own address.
        public var listenerNames: [String: String] = [:]
        /// Permissions of Unix socket files (who may connect).
        public var unixSocketMode: UInt32 = 0o660
        public var listenBacklog: Int32 = 64
        /// Bytes read from a socket per recv.
        public var readSize = 256 << 10
        /// Reply bytes queued for a socket before its reader stops taking requests.
        public var replyQueueLimit = 8 << 20
        public var tcpKeepAlive = true

        public init() {}
    }

    public let configuration: Configuration
    /// Who may connect: caps per listener and per VM, shared with the daemon's attach resolver
    /// (which counts connections against VMs) and its metrics.
    public let admission: TenantAdmission
    private let requested: [ListenAddress]
    private let factory: NineHandlerFactory
    private let logger: Logger

    private struct Listener {
        var fd: Int32
        var address: ListenAddress
        /// The tenant the listener is.
        var name: String
        /// The socket file we created, removed at stop if it is still ours.
        var unixPath: String?
        var unixIdentity: Sockets.FileIdentity?
    }

    private enum State { case idle, running, handingOver, handedOver, stopping, stopped }

    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var state = State.idle
    private var listeners: [Listener] = []
    private var connections: [UInt64: SocketConnection] = [:]
    private var nextConnectionID: UInt64 = 1
    private var wakeFD: Int32 = -1
    private let acceptorDone = DispatchSemaphore(value: 0)
    /// Closed by `stop()` before it ends any connection.
    private let sendGate = SendGate()
    private var usageSource: UInt64?
    /// What `beginServing` starts (adopted connections, the accept loop).
    private var deferredServing: (() -> Void)?

    /// `admission`: shared with the daemon (attach resolver, metrics); nil makes one from
    /// `configuration.limits`.
    public init(listen addresses: [ListenAddress], configuration: Configuration = Configuration(),
                admission: TenantAdmission? = nil, logger: Logger, handlerFactory: @escaping NineHandlerFactory) {
        requested = addresses
        self.configuration = configuration
        self.admission = admission ?? TenantAdmission(limits: configuration.limits, logger: logger)
        self.logger = logger
        factory = handlerFactory
        for address in addresses { self.admission.addListener(configuration.listenerNames[address.description] ?? address.description) }
    }

    /// The addresses listened on, with the ports the kernel chose for port 0.
    public var boundAddresses: [ListenAddress] {
        condition.lock()
        defer { condition.unlock() }
        return listeners.map(\.address)
    }

    /// Connections being served.
    public var connectionCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return connections.count
    }

    /// Binds every address and starts accepting. Binds all or none: if one address fails, the
    /// ones already bound are closed again and the error is thrown.
    ///
    /// `adopting`: what the previous process handed over (a graceful upgrade): its listening
    /// sockets serve the addresses they were bound to (no moment without a listener; a listener
    /// no longer configured is closed), and its connections are served again, each through the
    /// handler `restore` rebuilds from its session. A connection whose session cannot be
    /// restored is closed. Adopted connections are restored (sessions, files, locks) but not read,
    /// and nothing is accepted, until `beginServing()`: the process taking over reads no byte of
    /// a client before the previous one has let go (it may still serve on, should this one fail).
    public func start(adopting handOff: SocketServerHandOff? = nil,
                      restore: ((SocketConnectionHandOff) throws -> any NineMessageHandler)? = nil) throws {
        condition.lock()
        guard state == .idle else {
            condition.unlock()
            throw PVFSError(.transport, "the server was already started", errno: .invalidArgument)
        }
        condition.unlock()
        var bound: [Listener] = []
        var inherited = handOff?.listeners ?? []
        // On failure: what this process bound is closed and its socket files removed; what it was
        // handed is only closed (the previous process may serve on with those socket files).
        var adoptedFDs: Set<Int32> = []
        func giveUp() {
            Self.close(bound.filter { !adoptedFDs.contains($0.fd) })
            for fd in adoptedFDs { Glibc.close(fd) }
        }
        do {
            for address in requested {
                let name = configuration.listenerNames[address.description] ?? address.description
                let listener: Listener
                if let index = inherited.firstIndex(where: { $0.requestedAddress == address.description }) {
                    let handed = inherited.remove(at: index)
                    listener = Listener(fd: handed.fd, address: ListenAddress(handed.boundAddress) ?? address, name: name,
                                        unixPath: handed.unixPath, unixIdentity: handed.unixPath.flatMap { Sockets.fileIdentity($0) })
                    adoptedFDs.insert(handed.fd)
                } else {
                    switch address {
                    case .tcp(let host, let port):
                        let (fd, actual) = try Sockets.listenTCP(host: host, port: port, backlog: configuration.listenBacklog)
                        listener = Listener(fd: fd, address: actual, name: name)
                    case .unix(let path):
                        let (fd, identity) = try Sockets.listenUnix(path: path, mode: configuration.unixSocketMode,
                                                                    backlog: configuration.listenBacklog)
                        listener = Listener(fd: fd, address: address, name: name, unixPath: path, unixIdentity: identity)
                    }
                }
                bound.append(listener)
                _ = fcntl(listener.fd, F_SETFL, O_NONBLOCK)
            }
        } catch {
            giveUp()
            throw error
        }
        for unused in inherited {
            logger.notice("listener \(unused.boundAddress) is no longer configured: closed")
            Glibc.close(unused.fd)
        }
        let wake: Int32
        do {
            wake = try FileDescriptor.makeEventFD().rawValue
        } catch {
            giveUp()
            throw PVFSError(.transport, "eventfd: \(error)", errno: error)
        }

        condition.lock()
        listeners = bound
        wakeFD = wake
        state = .running
        condition.unlock()
        usageSource = admission.addSource { [weak self] in self?.gauges ?? [] }
        var adopted: [SocketConnection] = []
        for connection in handOff?.connections ?? [] {
            if let made = adopt(connection, restore: restore) { adopted.append(made) }
        }
        let serve = { [self] in
            for connection in adopted { connection.start() }
            startAcceptLoop(bound.map(\.fd), wake: wake)
            for listener in bound { logger.info("serving 9P on \(listener.address)") }
        }
        if handOff != nil {
            condition.lock()
            deferredServing = serve
            condition.unlock()
        } else {
            serve()
        }
    }

    /// After `start(adopting:)`: reads from the adopted connections and accepts
    /// new ones from now on.
    public func beginServing() {
        condition.lock()
        let serve = deferredServing
        deferredServing = nil
        condition.unlock()
        serve?()
    }

    private static func close(_ listeners: [Listener]) {
        for listener in listeners {
            Glibc.close(listener.fd)
            if let path = listener.unixPath, let identity = listener.unixIdentity, Sockets.fileIdentity(path) == identity {
                unlink(path)
            }
        }
    }

    /// Stops accepting, ends every connection (requests running finish first; fids, handles
    /// and locks are released), removes the Unix socket files, and returns when all is done.
    public func stop() {
        condition.lock()
        if state == .handedOver || state == .handingOver {
            // Everything belongs to the process that took over.
            while state == .handingOver { condition.wait() }
            state = .stopped
            condition.unlock()
            return
        }
        guard state == .running else {
            while state == .stopping { condition.wait() }
            condition.unlock()
            return
        }
        state = .stopping
        let wake = wakeFD
        condition.unlock()
        endAcceptLoop(wake)

        condition.lock()
        let bound = listeners
        let live = Array(connections.values)
        condition.unlock()
        Self.close(bound)
        // No client hears anything more, then the connections end and release what they hold.
        sendGate.close()
        for connection in live { connection.abort() }

        condition.lock()
        while !connections.isEmpty { condition.wait() }
        if let usageSource { admission.removeSource(usageSource) }
        usageSource = nil
        Glibc.close(wake)
        wakeFD = -1
        state = .stopped
        condition.broadcast()
        condition.unlock()
        logger.info("9P socket server stopped")
    }

    // MARK: Hand-over to another process (graceful upgrade)

    /// The connections of a hand-over in preparation (guarded by `condition`).
    private var handOverConnections: [SocketConnection] = []

    /// First step of a hand-over: stops accepting, parks every connection between two messages
    /// and waits (up to `timeout` s) until none has a request outstanding. Throws, serving on
    /// as before, when a connection does not come to rest in time. Reversible until
    /// `completeHandOver`: `abandonHandOver` serves on.
    public func prepareHandOver(timeout: Double) throws {
        condition.lock()
        guard state == .running else {
            condition.unlock()
            throw PVFSError(.transport, "the server is not running", errno: .invalidArgument)
        }
        state = .handingOver
        let wake = wakeFD
        condition.unlock()
        endAcceptLoop(wake)

        condition.lock()
        let live = Array(connections.values).sorted { $0.id < $1.id }
        handOverConnections = live
        condition.unlock()
        let deadline = Date(timeIntervalSinceNow: timeout)
        let suspendable = live.map { $0.handler as? any NineSuspendableHandler }
        for handler in suspendable { handler?.beginSuspend() }
        var unsettled: String?
        for (connection, handler) in zip(live, suspendable) {
            if handler == nil {
                unsettled = "connection \(connection.peer) cannot be handed over"
            } else if !connection.pauseReading(timeout: max(0.1, deadline.timeIntervalSinceNow)) {
                unsettled = "connection \(connection.peer) did not stop between two requests"
            }
            if unsettled != nil { break }
        }
        if unsettled == nil {
            for (connection, handler) in zip(live, suspendable)
            where !(handler?.finishSuspend(timeout: max(0.1, deadline.timeIntervalSinceNow)) ?? false) {
                unsettled = "connection \(connection.peer) still had requests running"
                break
            }
        }
        if let unsettled {
            abandonHandOver()
            throw PVFSError(.transport, "\(unsettled) within \(timeout) s", errno: .resourceBusy)
        }
    }

    /// Serves on after `prepareHandOver` (the hand-over was given up).
    public func abandonHandOver() {
        condition.lock()
        guard state == .handingOver else { condition.unlock(); return }
        let live = handOverConnections
        handOverConnections = []
        state = .running
        let wake = wakeFD
        let fds = listeners.map(\.fd)
        condition.unlock()
        for connection in live { (connection.handler as? any NineSuspendableHandler)?.resume() }
        for connection in live { connection.resumeReading() }
        // The wake-up that ended the accept loop is still counted: consumed, or the new loop
        // would end at once.
        var count: UInt64 = 0
        _ = read(wake, &count, 8)
        startAcceptLoop(fds, wake: wake)
    }

    /// Last step of a hand-over, after `prepareHandOver`: sends what each connection has
    /// queued and returns the listening sockets and the connections with their sessions, all
    /// left open for the process that takes over. A connection whose client does not take its
    /// replies within `timeout` s is closed instead (counted in `closedCount`). Afterwards the
    /// server serves nothing and `stop()` closes nothing.
    public func completeHandOver(timeout: Double) -> SocketServerHandOff {
        condition.lock()
        let live = handOverConnections
        handOverConnections = []
        let wake = wakeFD
        condition.unlock()
        let deadline = Date(timeIntervalSinceNow: timeout)
        var handed: [SocketConnectionHandOff] = []
        var closed = 0
        for connection in live {
            if let handOff = connection.handOff(timeout: max(1, deadline.timeIntervalSinceNow)) {
                handed.append(handOff)
                condition.lock()
                connections[connection.id] = nil
                condition.unlock()
                admission.release(connection: connection.id)
            } else {
                closed += 1
            }
        }
        condition.lock()
        let bound = listeners
        state = .handedOver
        if let usageSource { admission.removeSource(usageSource) }
        usageSource = nil
        if wake >= 0 { Glibc.close(wake) }
        wakeFD = -1
        condition.broadcast()
        condition.unlock()
        logger.info("9P socket server handed over: \(bound.count) listeners, \(handed.count) connections")
        return SocketServerHandOff(
            listeners: bound.map {
                SocketListenerHandOff(fd: $0.fd, requestedAddress: requestedAddress(of: $0), boundAddress: $0.address.description,
                                      unixPath: $0.unixPath)
            },
            connections: handed, closedCount: closed)
    }

    /// The address as configured (port 0 stays 0), which the next process matches its configuration against.
    private func requestedAddress(of listener: Listener) -> String {
        let index = listeners.firstIndex { $0.fd == listener.fd } ?? 0
        return index < requested.count ? requested[index].description : listener.address.description
    }

    /// A connection handed over by the previous process, its session restored, not started yet.
    private func adopt(_ handOff: SocketConnectionHandOff,
                       restore: ((SocketConnectionHandOff) throws -> any NineMessageHandler)?) -> SocketConnection? {
        var log = logger
        log[metadataKey: "peer"] = "\(handOff.peer)"
        condition.lock()
        nextConnectionID = max(nextConnectionID, handOff.id &+ 1)
        condition.unlock()
        if let refusal = admission.admit(connection: handOff.id, listener: handOff.listenerName) {
            // Counted past a cap that changed with the upgrade: still served, it was admitted before.
            log.notice("adopted connection is past a limit now: \(refusal)")
        }
        let handler: any NineMessageHandler
        do {
            guard let restore else { throw PVFSError(.transport, "no session restorer", errno: .invalidArgument) }
            handler = try restore(handOff)
        } catch {
            // This client loses its connection, as at a crash; the others are served.
            log.error("a handed-over connection could not be restored, closing it: \(error)")
            admission.release(connection: handOff.id)
            Glibc.close(handOff.fd)
            return nil
        }
        let connection = makeConnection(fd: handOff.fd, id: handOff.id, peer: handOff.peer, listenerName: handOff.listenerName,
                                        handler: handler, logger: log, initialInput: handOff.pendingInput)
        condition.lock()
        connections[handOff.id] = connection
        condition.unlock()
        log.info("connection adopted")
        return connection
    }

    private func startAcceptLoop(_ fds: [Int32], wake: Int32) {
        let thread = Thread { [self] in acceptLoop(fds, wake: wake) }
        thread.name = "pvfs.9p.accept"
        thread.start()
    }

    /// Wakes the accept loop to end and waits until it has.
    private func endAcceptLoop(_ wake: Int32) {
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        acceptorDone.wait()
    }

    private func acceptLoop(_ fds: [Int32], wake: Int32) {
        defer { acceptorDone.signal() }
        var polled = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        polled.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
        // The same thread closes connections past their handshake or idle timeout.
        let interval = admission.limits.timeoutCheckIntervalNanoseconds
        var nextCheck = TenantAdmission.now() &+ interval
        while true {
            let now = TenantAdmission.now()
            if now >= nextCheck {
                closeExpiredConnections(now: now)
                nextCheck = now &+ interval
            }
            let waitMilliseconds = Int32(clamping: (nextCheck &- min(now, nextCheck)) / 1_000_000 + 1)
            for i in polled.indices { polled[i].revents = 0 }
            let n = poll(&polled, nfds_t(polled.count), waitMilliseconds)
            if n < 0 {
                if errno == EINTR { continue }
                logger.error("poll of the listeners failed: \(Errno(rawValue: errno))")
                return
            }
            if n == 0 { continue }
            if polled[polled.count - 1].revents != 0 { return }
            for i in 0..<fds.count where polled[i].revents != 0 {
                acceptOne(fds[i], listenerIndex: i)
            }
        }
    }

    /// Closes connections that ran over the handshake or idle timeout.
    private func closeExpiredConnections(now: UInt64) {
        condition.lock()
        let live = Array(connections.values)
        condition.unlock()
        let limits = admission.limits
        for connection in live {
            guard let expired = limits.expiredTimeout(connection.activity(), now: now) else { continue }
            let tenant = Tenant.listener(connection.listenerName)
            admission.countClosed(tenant, limit: expired)
            let seconds = expired == .handshakeTimeout ? limits.handshakeTimeoutSeconds : limits.idleTimeoutSeconds
            let what = expired == .handshakeTimeout ? "no Tversion and Tattach" : "no fid, no request"
            admission.logLimit(tenant, expired, "closing a connection of \(tenant): \(what) within \(seconds) s (\(expired.rawValue))",
                               peer: "\(connection.peer)")
            connection.abort()
        }
    }

    /// Outstanding requests and queued reply bytes per listener and per VM.
    private var gauges: [TenantGauge] {
        condition.lock()
        let live = Array(connections.values)
        condition.unlock()
        var out: [TenantGauge] = []
        for connection in live {
            let outstanding = connection.handler.usage.outstandingRequests
            let queued = connection.queuedReplyBytes
            out.append(TenantGauge(tenant: .listener(connection.listenerName), outstandingRequests: outstanding, queuedReplyBytes: queued))
            for vm in admission.vms(ofConnection: connection.id) {
                out.append(TenantGauge(tenant: .vm(vm), outstandingRequests: outstanding, queuedReplyBytes: queued))
            }
        }
        return out
    }

    private func acceptOne(_ listenFD: Int32, listenerIndex: Int) {
        let fd: Int32
        do {
            guard let accepted = try Sockets.accept(listenFD) else { return }
            fd = accepted
        } catch {
            // Out of descriptors (EMFILE/ENFILE) or memory: back off rather than spin.
            logger.error("accept failed: \(error)")
            usleep(100_000)
            return
        }
        condition.lock()
        let address = listeners[listenerIndex].address
        let listenerName = listeners[listenerIndex].name
        let id = nextConnectionID
        nextConnectionID += 1
        condition.unlock()
        if let refusal = admission.admit(connection: id, listener: listenerName) {
            admission.logLimit(refusal.tenant, refusal.limit, "refusing a connection on \(address): \(refusal)")
            Glibc.close(fd)
            return
        }
        let peer: NinePPeer
        switch address {
        case .tcp:
            Sockets.setOption(fd, Int32(IPPROTO_TCP), Sockets.tcpNoDelay, 1)
            if configuration.tcpKeepAlive { Sockets.setOption(fd, SOL_SOCKET, SO_KEEPALIVE, 1) }
            let remote = Sockets.peerAddress(fd).map { Sockets.formatHostPort($0.host, $0.port) } ?? "unknown"
            peer = NinePPeer(.tcp(remote: remote, listener: address.description), connectionID: id)
        case .unix:
            let credentials = try? FileDescriptor(rawValue: fd).peerCredentials()
            peer = NinePPeer(.unix(listener: address.description, processID: credentials?.processID,
                                   userID: credentials?.userID, groupID: credentials?.groupID), connectionID: id)
        }
        var log = logger
        log[metadataKey: "peer"] = "\(peer)"
        let handler: any NineMessageHandler
        do {
            handler = try factory(peer)
        } catch {
            log.warning("connection refused: \(error)")
            admission.release(connection: id)
            Glibc.close(fd)
            return
        }
        let admission = self.admission
        let socketConnection = makeConnection(fd: fd, id: id, peer: peer, listenerName: listenerName, handler: handler, logger: log)
        condition.lock()
        guard state == .running else {
            condition.unlock()
            admission.release(connection: id)
            Glibc.close(fd)
            handler.close()
            return
        }
        connections[id] = socketConnection
        condition.unlock()
        log.info("connection accepted")
        socketConnection.start()
    }

    /// A connection of this server (accepted, or adopted with the bytes it had pending).
    private func makeConnection(fd: Int32, id: UInt64, peer: NinePPeer, listenerName: String, handler: any NineMessageHandler,
                                logger: Logger, initialInput: [UInt8] = []) -> SocketConnection {
        let admission = self.admission
        return SocketConnection(
            fd: fd, id: id, peer: peer, listenerName: listenerName, handler: handler, readSize: configuration.readSize,
            replyQueueLimit: configuration.replyQueueLimit, sendGate: sendGate, logger: logger, initialInput: initialInput,
            stalled: { admission.countBackpressure(.listener(listenerName), limit: .replyQueueBytes) },
            finished: { [weak self] finished in self?.remove(finished) })
    }

    /// Ends one connection from the server side (its VM is being removed, say): the socket is
    /// shut down, requests running finish, and the connection releases everything as if the
    /// client had gone.
    public func disconnect(connectionID: UInt64) {
        condition.lock()
        let target = connections[connectionID]
        condition.unlock()
        target?.abort()
    }

    private func remove(_ connection: SocketConnection) {
        admission.release(connection: connection.id)
        condition.lock()
        connections[connection.id] = nil
        condition.broadcast()
        condition.unlock()
        logger.info("connection closed", metadata: ["peer": "\(connection.peer)"])
    }
}
