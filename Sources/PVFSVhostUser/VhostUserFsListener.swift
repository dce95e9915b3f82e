import CPVFSTransportIO
import Foundation
import Glibc
import Logging
import PVFSFuseCodec
import Synchronization

/// A Unix socket that serves one VM to one vhost-user-fs front-end at a time: identity by
/// socket, no network. A second front-end connecting while one is served is turned away (its
/// connection closed, a line logged); once the first goes, the next connection is served
/// afresh, from SET_OWNER on.
public final class VhostUserFsListener: @unchecked Sendable {
    public let path: String
    let sources: any VhostEventSources
    let sessionFactory: @Sendable () throws -> any FuseMessageHandler
    let limits: VhostUserFsDevice.Limits
    let logger: Logger
    private let listening: Int32
    private var token: VhostEventToken?
    private let active = Mutex<VhostUserFsDevice?>(nil)

    /// Binds `path` (mode 0600 unless `mode` says otherwise; a stale socket file is replaced)
    /// and serves connections on `sources`. `sessionFactory` makes the FUSE session of each
    /// front-end.
    public init(path: String, mode: mode_t = 0o600, sources: any VhostEventSources,
                limits: VhostUserFsDevice.Limits = VhostUserFsDevice.Limits(), logger: Logger,
                sessionFactory: @escaping @Sendable () throws -> any FuseMessageHandler) throws {
        self.path = path
        self.sources = sources
        self.sessionFactory = sessionFactory
        self.limits = limits
        self.logger = logger
        listening = try Self.listen(path: path, mode: mode)
        token = try sources.watch(listening) { [weak self] in self?.accept() }
        logger.info("vhost-user-fs listening", metadata: ["socket": "\(path)"])
    }

    /// Stops listening and ends the served session.
    public func close() {
        let done = DispatchSemaphore(value: 0)
        sources.execute { [self] in
            if let token { sources.cancel(token) }
            token = nil
            Glibc.close(listening)
            unlink(path)
            active.withLock { $0 }?.close(reason: "listener closed")
            done.signal()
        }
        done.wait()
    }

    public var servedDevice: VhostUserFsDevice? { active.withLock { $0 } }

    private func accept() {
        let fd = cpvfs_accept(listening)
        guard fd >= 0 else { return }
        if active.withLock({ $0 != nil }) {
            logger.warning("a second vhost-user front-end connected to \(path) while one is served: turned away")
            Glibc.close(fd)
            return
        }
        do {
            let handler = try sessionFactory()
            let device = try VhostUserFsDevice(socket: fd, sources: sources, handler: handler, limits: limits, logger: logger) { [weak self] in
                self?.active.withLock { $0 = nil }
            }
            active.withLock { $0 = device }
            logger.info("vhost-user front-end connected", metadata: ["socket": "\(path)"])
        } catch {
            logger.error("cannot serve the front-end on \(path): \(error)")
            Glibc.close(fd)
        }
    }

    static func listen(path: String, mode: mode_t) throws -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw VhostUserProtocolError("socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        var st = Glibc.stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw VhostUserProtocolError("\(path) exists and is not a socket") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VhostUserProtocolError("socket: \(String(cString: strerror(errno)))") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(path, mode) == 0, Glibc.listen(fd, 4) == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw VhostUserProtocolError("cannot listen on \(path): \(message)")
        }
        return fd
    }
}
