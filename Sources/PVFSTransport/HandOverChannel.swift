import CPVFSTransportIO
import Foundation
import Glibc
import PVFSSystem
import SystemPackage

/// The channel between a running pvfsd and the binary that takes over from it (a graceful
/// upgrade): a SOCK_SEQPACKET pair, one end inherited by the new process. Each message is a
/// payload of any size (written into a sealed memfd, which travels as the first descriptor)
/// and any number of descriptors, sent in batches of up to 16 per packet (what the send primitive takes).
public final class HandOverChannel: @unchecked Sendable {
    /// The environment variable naming the descriptor the new process inherits.
    public static let environmentVariable = "PVFS_HANDOVER_FD"
    static let batch = 16
    static let magic = Array("PVFSHAND".utf8)

    public let fd: Int32

    public init(fd: Int32) {
        self.fd = fd
    }

    /// A connected pair: this process's end, and the descriptor to give the new process.
    public static func pair() throws -> (channel: HandOverChannel, peerFD: Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw PVFSError(.transport, "socketpair for the hand-over", errno: Errno(rawValue: errno))
        }
        return (HandOverChannel(fd: fds[0]), fds[1])
    }

    public func close() {
        Glibc.close(fd)
    }

    /// Sends `payload` with `descriptors` (which stay open here).
    public func send(_ payload: [UInt8], descriptors: [Int32] = []) throws {
        let memfd = cpvfs_memfd("pvfs-handover")
        guard memfd >= 0 else { throw PVFSError(.transport, "memfd for the hand-over", errno: Errno(rawValue: errno)) }
        defer { Glibc.close(memfd) }
        var written = 0
        while written < payload.count {
            let n = payload[written...].withUnsafeBytes { Glibc.write(memfd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw PVFSError(.transport, "writing the hand-over payload", errno: Errno(rawValue: errno)) }
            written += n
        }
        _ = cpvfs_add_seals(memfd, CPVFS_SEAL_SHRINK | CPVFS_SEAL_GROW | CPVFS_SEAL_SEAL)
        let all = [memfd] + descriptors
        var index = 0
        repeat {
            let chunk = Array(all[index..<min(all.count, index + Self.batch)])
            index += chunk.count
            // header: magic, payload length, descriptors in all, last packet flag
            var header = Self.magic
            header += withUnsafeBytes(of: UInt64(payload.count).littleEndian, Array.init)
            header += withUnsafeBytes(of: UInt32(all.count).littleEndian, Array.init)
            header.append(index >= all.count ? 1 : 0)
            let n = header.withUnsafeBytes { raw in
                chunk.withUnsafeBufferPointer { cpvfs_send_with_fds(fd, raw.baseAddress, raw.count, $0.baseAddress, Int32($0.count)) }
            }
            guard n == header.count else {
                throw PVFSError(.transport, "sending on the hand-over channel", errno: Errno(rawValue: n < 0 ? errno : EPIPE))
            }
        } while index < all.count
    }

    /// Waits up to `timeout` seconds for a message; its descriptors are close-on-exec and the
    /// caller's to close. Throws when the other process closed the channel (it exited).
    public func receive(timeout: Double) throws -> (payload: [UInt8], descriptors: [Int32]) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        var descriptors: [Int32] = []
        var expected: Int?
        var payloadLength = 0
        var done = false
        do {
            while !done {
                var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let wait = Int32(max(0, min(Double(Int32.max), deadline.timeIntervalSinceNow * 1000)))
                let ready = poll(&poller, 1, wait)
                if ready < 0 && errno == EINTR { continue }
                guard ready > 0 else {
                    throw PVFSError(.transport, "no answer from the other pvfsd within \(Int(timeout)) s", errno: .timedOut)
                }
                var header = [UInt8](repeating: 0, count: 64)
                var fds = [Int32](repeating: -1, count: 64)
                var count: Int32 = 0
                var truncated: Int32 = 0
                let n = header.withUnsafeMutableBytes { raw in
                    fds.withUnsafeMutableBufferPointer {
                        cpvfs_recv_with_fds(fd, raw.baseAddress, raw.count, $0.baseAddress, 64, &count, &truncated)
                    }
                }
                descriptors += fds.prefix(Int(count))
                guard n != 0 else { throw PVFSError(.transport, "the other pvfsd closed the hand-over channel", errno: .brokenPipe) }
                guard n == 21, truncated == 0, Array(header.prefix(8)) == Self.magic else {
                    throw PVFSError(.transport, "a malformed message on the hand-over channel", errno: .protocolError)
                }
                payloadLength = Int(header[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
                let total = Int(header[16..<20].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
                if expected == nil { expected = total }
                done = header[20] == 1
            }
            guard let expected, descriptors.count == expected, let memfd = descriptors.first else {
                throw PVFSError(.transport, "descriptors missing on the hand-over channel", errno: .protocolError)
            }
            var payload = [UInt8](repeating: 0, count: payloadLength)
            var read = 0
            while read < payloadLength {
                let n = payload.withUnsafeMutableBytes { pread(memfd, $0.baseAddress! + read, payloadLength - read, off_t(read)) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw PVFSError(.transport, "reading the hand-over payload", errno: Errno(rawValue: errno)) }
                read += n
            }
            Glibc.close(memfd)
            return (payload, Array(descriptors.dropFirst()))
        } catch {
            for descriptor in descriptors { Glibc.close(descriptor) }
            throw error
        }
    }
}
