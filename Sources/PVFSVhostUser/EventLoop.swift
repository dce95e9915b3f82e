import CPVFSTransportIO
import Foundation
import Glibc
import Logging
import Synchronization

/// Where the vhost-user backend waits for its descriptors (control sockets, kick eventfds): a
/// small interface so that the daemon's I/O core can take the place of the plain epoll thread
/// below. Callbacks run on the loop's thread, one at a time.
public protocol VhostEventSources: AnyObject, Sendable {
    /// Calls `readable` whenever `descriptor` can be read, until `cancel` of the returned token.
    func watch(_ descriptor: Int32, readable: @escaping @Sendable () -> Void) throws -> VhostEventToken
    func cancel(_ token: VhostEventToken)
    /// Runs `work` on the loop's thread soon.
    func execute(_ work: @escaping @Sendable () -> Void)
}

public struct VhostEventToken: Hashable, Sendable {
    public let value: UInt64
}

/// One thread waiting in epoll on every registered descriptor.
public final class EpollEventLoop: VhostEventSources, @unchecked Sendable {
    private let epoll: Int32
    private let wakeup: Int32
    private struct State {
        var handlers: [UInt64: (descriptor: Int32, callback: @Sendable () -> Void)] = [:]
        var next: UInt64 = 1
        var queued: [@Sendable () -> Void] = []
        var stopping = false
    }
    private let state = Mutex(State())
    private let logger: Logger
    private let finished = DispatchSemaphore(value: 0)
    private static let wakeupToken: UInt64 = 0

    public init(name: String = "pvfs.vhost.loop", logger: Logger = Logger(label: "pvfs.vhost")) throws {
        self.logger = logger
        // Both descriptors are made before either property is set: an initializer that throws
        // once every stored property is set still runs deinit, which closes them.
        let epoll = cpvfs_epoll_create()
        guard epoll >= 0 else { throw VhostUserProtocolError("epoll_create1: \(String(cString: strerror(errno)))") }
        let wakeup = cpvfs_eventfd(0)
        guard wakeup >= 0 else {
            Glibc.close(epoll)
            throw VhostUserProtocolError("eventfd: \(String(cString: strerror(errno)))")
        }
        self.epoll = epoll
        self.wakeup = wakeup
        _ = cpvfs_epoll_add(epoll, wakeup, Self.wakeupToken)
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    deinit {
        Glibc.close(epoll)
        Glibc.close(wakeup)
    }

    public func watch(_ descriptor: Int32, readable: @escaping @Sendable () -> Void) throws -> VhostEventToken {
        let token = state.withLock { s -> UInt64 in
            let t = s.next
            s.next += 1
            s.handlers[t] = (descriptor, readable)
            return t
        }
        guard cpvfs_epoll_add(epoll, descriptor, token) == 0 else {
            let message = String(cString: strerror(errno))
            _ = state.withLock { $0.handlers.removeValue(forKey: token) }
            throw VhostUserProtocolError("cannot watch descriptor \(descriptor): \(message)")
        }
        return VhostEventToken(value: token)
    }

    /// Stops watching; the callback is not called again once this returns on the loop's thread
    /// (from elsewhere, at most once more if already dispatched).
    public func cancel(_ token: VhostEventToken) {
        guard let entry = state.withLock({ $0.handlers.removeValue(forKey: token.value) }) else { return }
        _ = cpvfs_epoll_remove(epoll, entry.descriptor)
    }

    public func execute(_ work: @escaping @Sendable () -> Void) {
        state.withLock { $0.queued.append(work) }
        var one: UInt64 = 1
        _ = Glibc.write(wakeup, &one, 8)
    }

    /// Ends the thread after the work queued so far.
    public func shutdown() {
        state.withLock { $0.stopping = true }
        var one: UInt64 = 1
        _ = Glibc.write(wakeup, &one, 8)
        finished.wait()
    }

    private func run() {
        var tokens = [UInt64](repeating: 0, count: 64)
        defer { finished.signal() }
        while true {
            let n = tokens.withUnsafeMutableBufferPointer { cpvfs_epoll_wait(epoll, $0.baseAddress, Int32($0.count), -1) }
            if n < 0 {
                if errno == EINTR { continue }
                logger.error("epoll_wait: \(String(cString: strerror(errno)))")
                return
            }
            for i in 0..<Int(n) {
                let token = tokens[i]
                if token == Self.wakeupToken {
                    var value: UInt64 = 0
                    _ = Glibc.read(wakeup, &value, 8)
                    continue
                }
                // Looked up per event: an earlier callback of this round may have cancelled it.
                if let callback = state.withLock({ $0.handlers[token]?.callback }) { callback() }
            }
            let (work, stopping) = state.withLock { s -> ([@Sendable () -> Void], Bool) in
                let w = s.queued
                s.queued.removeAll()
                return (w, s.stopping)
            }
            for item in work { item() }
            if stopping { return }
        }
    }
}
