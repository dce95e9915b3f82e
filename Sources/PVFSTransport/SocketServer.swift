import Dispatch
import Foundation
import Glibc
import Logging
import PVFS9P
import PVFSSystem
import SystemPackage

/// Serves 9P2000.L on TCP and Unix stream sockets: QEMU/KVM guests reach it with
/// `mount -t 9p -o trans=tcp,port=PORT,version=9p2000.L,aname=VM HOST /mnt` (or `trans=unix`
/// through a forwarded socket).
///
/// One thread polls the listeners; each accepted socket gets a reader thread (framing requests
/// into its NinePConnection, which runs them on the shared worker pool) and a writer thread
/// (sending replies in order, partial-write safe). The factory decides, per peer, what
/// connection to build (or refuses by throwing); the connection's attach resolver then decides
/// which VM each Tattach reaches.
///
///     let server = SocketServer(listen: [.tcp(host: "127.0.0.1", port: 5640)], logger: logger) { peer in
///         NinePConnection(peer: peer, pool: pool, logger: logger, resolver: bindings.resolve)
///     }
///     try server.start()
///     ...
///     server.stop()   // stops accepting, ends every connection, releases every engine handle
public final class SocketServer: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// Connections served at once; more are accepted and closed at once.
        public var maximumConnections = 256
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

    public typealias ConnectionFactory = @Sendable (NinePPeer) throws -> NinePConnection

    public let configuration: Configuration
    private let requested: [ListenAddress]
    private let factory: ConnectionFactory
    private let logger: Logger

    private struct Listener {
        var fd: Int32
        var address: ListenAddress
        /// The socket file we created, removed at stop if it is still ours.
        var unixPath: String?
        var unixIdentity: Sockets.FileIdentity?
    }

    private enum State { case idle, running, stopping, stopped }

    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var state = State.idle
    private var listeners: [Listener] = []
    private var connections: [UInt64: SocketConnection] = [:]
    private var nextConnectionID: UInt64 = 1
    private var wakeFD: Int32 = -1
    private let acceptorDone = DispatchSemaphore(value: 0)

    public init(listen addresses: [ListenAddress], configuration: Configuration = Configuration(), logger: Logger,
                connectionFactory: @escaping ConnectionFactory) {
        requested = addresses
        self.configuration = configuration
        self.logger = logger
        factory = connectionFactory
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
    public func start() throws {
        condition.lock()
        guard state == .idle else {
            condition.unlock()
            throw TransportError("the server was already started", errno: .invalidArgument)
        }
        condition.unlock()
        var bound: [Listener] = []
        do {
            for address in requested {
                switch address {
                case .tcp(let host, let port):
                    let (fd, actual) = try Sockets.listenTCP(host: host, port: port, backlog: configuration.listenBacklog)
                    bound.append(Listener(fd: fd, address: actual))
                case .unix(let path):
                    let (fd, identity) = try Sockets.listenUnix(path: path, mode: configuration.unixSocketMode,
                                                                backlog: configuration.listenBacklog)
                    bound.append(Listener(fd: fd, address: address, unixPath: path, unixIdentity: identity))
                }
                _ = fcntl(bound[bound.count - 1].fd, F_SETFL, O_NONBLOCK)
            }
        } catch {
            Self.close(bound)
            throw error
        }
        let wake: Int32
        do {
            wake = try FileDescriptor.makeEventFD().rawValue
        } catch {
            Self.close(bound)
            throw TransportError("eventfd: \(error)", errno: error)
        }
        condition.lock()
        listeners = bound
        wakeFD = wake
        state = .running
        condition.unlock()
        let fds = bound.map(\.fd)
        let thread = Thread { [self] in acceptLoop(fds, wake: wake) }
        thread.name = "pvfs.9p.accept"
        thread.start()
        for listener in bound { logger.info("serving 9P on \(listener.address)") }
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
        guard state == .running else {
            while state == .stopping { condition.wait() }
            condition.unlock()
            return
        }
        state = .stopping
        let wake = wakeFD
        condition.unlock()

        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        acceptorDone.wait()

        condition.lock()
        let bound = listeners
        let live = Array(connections.values)
        condition.unlock()
        Self.close(bound)
        for connection in live { connection.abort() }

        condition.lock()
        while !connections.isEmpty { condition.wait() }
        Glibc.close(wake)
        wakeFD = -1
        state = .stopped
        condition.broadcast()
        condition.unlock()
        logger.info("9P socket server stopped")
    }

    private func acceptLoop(_ fds: [Int32], wake: Int32) {
        defer { acceptorDone.signal() }
        var polled = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        polled.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
        while true {
            let n = poll(&polled, nfds_t(polled.count), -1)
            if n < 0 {
                if errno == EINTR { continue }
                logger.error("poll of the listeners failed: \(Errno(rawValue: errno))")
                return
            }
            if polled[polled.count - 1].revents != 0 { return }
            for i in 0..<fds.count where polled[i].revents != 0 {
                acceptOne(fds[i], listenerIndex: i)
            }
        }
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
        let full = connections.count >= configuration.maximumConnections
        let id = nextConnectionID
        nextConnectionID += 1
        condition.unlock()
        if full {
            logger.warning("refusing a connection on \(address): \(configuration.maximumConnections) connections are open")
            Glibc.close(fd)
            return
        }
        let peer: NinePPeer
        switch address {
        case .tcp:
            Sockets.setOption(fd, Int32(IPPROTO_TCP), Sockets.tcpNoDelay, 1)
            if configuration.tcpKeepAlive { Sockets.setOption(fd, SOL_SOCKET, SO_KEEPALIVE, 1) }
            let remote = Sockets.peerAddress(fd).map { Sockets.formatHostPort($0.host, $0.port) } ?? "unknown"
            peer = NinePPeer(transport: .tcp, remoteAddress: remote, localAddress: address.description, connectionID: id)
        case .unix:
            let credentials = try? FileDescriptor(rawValue: fd).peerCredentials()
            peer = NinePPeer(transport: .unix, remoteAddress: credentials.map { "pid \($0.processID)" } ?? "unknown",
                             localAddress: address.description, processID: credentials?.processID,
                             userID: credentials?.userID, groupID: credentials?.groupID, connectionID: id)
        }
        var log = logger
        log[metadataKey: "peer"] = "\(peer)"
        let connection: NinePConnection
        do {
            connection = try factory(peer)
        } catch {
            log.warning("connection refused: \(error)")
            Glibc.close(fd)
            return
        }
        let socketConnection = SocketConnection(
            fd: fd, id: id, peer: peer, connection: connection, readSize: configuration.readSize,
            replyQueueLimit: configuration.replyQueueLimit, logger: log,
            finished: { [weak self] finished in self?.remove(finished) })
        condition.lock()
        guard state == .running else {
            condition.unlock()
            Glibc.close(fd)
            connection.close()
            return
        }
        connections[id] = socketConnection
        condition.unlock()
        log.info("connection accepted")
        socketConnection.start()
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
        condition.lock()
        connections[connection.id] = nil
        condition.broadcast()
        condition.unlock()
        logger.info("connection closed", metadata: ["peer": "\(connection.peer)"])
    }
}
