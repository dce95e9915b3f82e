import CPVFSTransportIO
import Dispatch
import Foundation
import Glibc
import Logging

/// A listening stream socket (tcp:HOST:PORT or unix:PATH) with an accept thread; each accepted
/// connection goes to `handler` on a thread of its own. For the daemon's low-traffic control and
/// metrics endpoints.
final class StreamListener: @unchecked Sendable {
    let address: String
    private let fd: Int32
    private let handler: @Sendable (Int32) -> Void
    private let logger: Logger
    private var thread: Thread?
    private let unixPath: String?
    /// An eventfd written to end the accept loop without closing the socket (a hand-over).
    private var wakeFD: Int32 = -1
    private let acceptLoopEnded = DispatchSemaphore(value: 0)

    /// Listens on `address`, or serves `adopting`, the listening socket of `address` handed over
    /// by the previous pvfsd process (already bound).
    init(address: String, mode: mode_t = 0o600, adopting: Int32? = nil, logger: Logger,
         handler: @escaping @Sendable (Int32) -> Void) throws {
        self.address = address
        self.handler = handler
        self.logger = logger
        if address.hasPrefix("unix:") {
            let path = String(address.dropFirst(5))
            unixPath = path
            fd = try adopting ?? Self.bindUnix(path, mode: mode)
        } else if address.hasPrefix("tcp:") {
            unixPath = nil
            fd = try adopting ?? Self.bindTCP(String(address.dropFirst(4)))
        } else {
            throw ConfigurationError("invalid address '\(address)': use tcp:HOST:PORT or unix:PATH")
        }
        if let adopting { _ = fcntl(adopting, F_SETFD, FD_CLOEXEC) }
    }

    static func bindUnix(_ path: String, mode: mode_t) throws -> Int32 {
        guard let address = UnixSocketAddress(path: path) else { throw ConfigurationError("socket path too long: \(path)") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ConfigurationError("socket: \(String(cString: strerror(errno)))") }
        // A stale socket of a dead daemon is removed; a live one answers and is kept.
        if access(path, F_OK) == 0 {
            if (try? DaemonClient.probe(path)) == true {
                close(fd)
                throw ConfigurationError("another daemon listens on \(path)")
            }
            unlink(path)
        }
        let oldMask = umask(0o177)
        let rc = address.withSocketAddress { bind(fd, $0, $1) }
        umask(oldMask)
        guard rc == 0, chmod(path, mode) == 0, listen(fd, 64) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw ConfigurationError("cannot listen on \(path): \(message)")
        }
        return fd
    }

    static func bindTCP(_ hostPort: String) throws -> Int32 {
        guard let colon = hostPort.lastIndex(of: ":"), let port = UInt16(hostPort[hostPort.index(after: colon)...]) else {
            throw ConfigurationError("invalid tcp address '\(hostPort)': use HOST:PORT")
        }
        var host = String(hostPort[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &result) == 0, let info = result else {
            throw ConfigurationError("cannot resolve \(hostPort)")
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ConfigurationError("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(fd, 128) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw ConfigurationError("cannot listen on \(hostPort): \(message)")
        }
        return fd
    }

    func start() {
        wakeFD = cpvfs_eventfd(0)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "pvfsd-listen \(address)"
        self.thread = thread
        thread.start()
    }

    private func acceptLoop() {
        defer { acceptLoopEnded.signal() }
        while true {
            // Polled with the wake-up eventfd, so a hand-over can end the loop and keep the socket.
            var polled = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&polled, 2, -1)
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 || polled[1].revents != 0 { return }
            if polled[0].revents & Int16(POLLIN) == 0 { return }  // closed by stop()
            // The listener is non-blocking (another process may take the connection first during
            // a hand-over); the accepted socket is blocking, as its handler expects.
            let client = cpvfs_accept(fd)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED || errno == EAGAIN { continue }
                if errno == EMFILE || errno == ENFILE {
                    logger.error("accept on \(address): out of descriptors")
                    Thread.sleep(forTimeInterval: 0.1)
                    continue
                }
                return  // closed by stop()
            }
            let handler = self.handler
            let worker = Thread { handler(client) }
            worker.start()
        }
    }

    func stop() {
        endAcceptLoop()
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        if let unixPath { unlink(unixPath) }
    }

    /// Ends the accept loop and returns the listening socket, open, for the process that takes
    /// over; `stop()` must not be called afterwards.
    func suspendAccepting() -> Int32 {
        endAcceptLoop()
        return fd
    }

    /// Wakes the accept loop, waits until it has returned, then closes its wake-up descriptor
    /// (only then: a number closed while the loop may still poll it could be another file's).
    private func endAcceptLoop() {
        guard wakeFD >= 0 else { return }
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
        acceptLoopEnded.wait()
        close(wakeFD)
        wakeFD = -1
    }
}

extension DaemonClient {
    /// Whether a daemon answers on a control socket path.
    static func probe(_ path: String) throws -> Bool {
        let client = DaemonClient(socketPath: path)
        return try client.send(.init(op: "status"), timeoutSeconds: 2) != nil
    }
}

/// Reads newline-terminated lines from a socket, bounded in size.
struct LineReader {
    let fd: Int32
    var buffer: [UInt8] = []
    let limit: Int

    init(fd: Int32, limit: Int = 1 << 20) {
        self.fd = fd
        self.limit = limit
    }

    mutating func next() -> [UInt8]? {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return line
            }
            guard buffer.count < limit else { return nil }
            var chunk = [UInt8](repeating: 0, count: 16384)
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { return nil }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}

func sendAll(_ fd: Int32, _ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { return }
        offset += n
    }
}
