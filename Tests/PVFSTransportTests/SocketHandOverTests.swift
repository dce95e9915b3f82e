import Foundation
import Glibc
import PVFS9PCodec
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFSTransport

/// A handler that answers every request with Rlerror(EIO) and, when asked to come to rest for a
/// hand-over, never does (a request that runs on and on).
final class RestlessHandler: NineSuspendableHandler, @unchecked Sendable {
    let resumed = Locked(0)
    var maximumMessageSize: Int { 8192 }
    func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void, unanswered: (@Sendable () -> Void)?) {
        guard let header = NinePHeader(message) else { return }
        reply(NinePResponse.error(errno: LinuxErrno.EIO).encode(tag: header.tag))
    }
    func beginSuspend() {}
    func finishSuspend(timeout: Double) -> Bool { false }
    func resume() { resumed.withLock { $0 += 1 } }
    func handOverState() throws -> [UInt8] { [] }
    func close() {}
}

@Suite("socket hand-over")
struct SocketHandOverTests {
    /// One request/reply on a raw socket: the reply's type.
    static func exchange(_ fd: Int32, tag: UInt16) throws -> UInt8 {
        // A reply that never comes fails the test instead of hanging it.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = NinePRequest.clunk(fid: 1).encode(tag: tag)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            throw Errno(rawValue: errno)
        }
        var head = [UInt8](repeating: 0, count: 7)
        guard recv(fd, &head, 7, Int32(MSG_WAITALL)) == 7 else { throw Errno.connectionReset }
        let size = Int(head[0]) | Int(head[1]) << 8 | Int(head[2]) << 16 | Int(head[3]) << 24
        var rest = [UInt8](repeating: 0, count: max(0, size - 7))
        if !rest.isEmpty { _ = recv(fd, &rest, rest.count, Int32(MSG_WAITALL)) }
        return head[4]
    }

    /// A connection that does not come to rest ends the hand-over: the server serves on, the
    /// parked connection included, and still accepts new ones.
    @Test func aHandOverThatCannotSettleServesOn() throws {
        let handlers = Locked<[RestlessHandler]>([])
        let server = SocketServer(listen: [.tcp(host: "127.0.0.1", port: 0)], logger: quietLogger) { _ in
            let handler = RestlessHandler()
            handlers.withLock { $0.append(handler) }
            return handler
        }
        try server.start()
        defer { server.stop() }
        guard case .tcp(_, let port)? = server.boundAddresses.first else { Issue.record("no port"); return }
        let first = try connectTCP(port)
        defer { close(first) }
        #expect(try Self.exchange(first, tag: 1) == NinePMessageType.rlerror.rawValue)

        #expect(throws: PVFSError.self) { try server.prepareHandOver(timeout: 0.3) }
        #expect(handlers.withLock { $0.first?.resumed.withLock { $0 } } == 1)
        #expect(try Self.exchange(first, tag: 2) == NinePMessageType.rlerror.rawValue)
        let second = try connectTCP(port)
        defer { close(second) }
        #expect(try Self.exchange(second, tag: 3) == NinePMessageType.rlerror.rawValue)
        #expect(server.connectionCount == 2)
    }
}
