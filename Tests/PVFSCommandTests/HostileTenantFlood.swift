import Foundation
import Glibc
import PVFS9P
import PVFS9PCodec
import PVFSTestSupport
import Synchronization
import SystemPackage

/// One tenant flooding pvfsd on its listener, on threads of its own until `stop()`:
///
/// - `pipelines` connections each keep a batch of 48 mixed requests outstanding (getattr,
///   64 KiB reads, readdir, statfs, walk+clunk, Tflush of idle tags, requests on bad fids);
/// - `slowReaders` connections send 2000 reads of 60 KiB each and never read a reply;
/// - `churners` threads connect, attach and reset the connection, again and again;
/// - `garbage` threads connect, send bytes that end the connection, and go.
final class TenantFlood: @unchecked Sendable {
    struct Shape: Sendable {
        var pipelines = 6
        var slowReaders = 2
        var churners = 1
        var garbage = 1
        /// What the pipelines ask for.
        var requests = PipelineRequests.mixed
    }

    enum PipelineRequests: String, Sendable {
        case mixed
        /// getattr, statfs, Tflush, bad fids: small replies.
        case small
        /// 64 KiB reads only.
        case reads
    }

    let port: UInt16
    let aname: String
    let shape: Shape
    private let stopFlag = StopFlag()
    private let done = DispatchGroup()
    private let replies = Atomic<Int>(0)
    private let connections = Atomic<Int>(0)
    private let refusedAtTheCap = Atomic<Int>(0)
    private let failures = Locked<[String]>([])
    private let seed: UInt64

    init(port: UInt16, aname: String = "abuser", shape: Shape = Shape(), seed: UInt64) {
        self.port = port
        self.aname = aname
        self.shape = shape
        self.seed = seed
    }

    /// Replies the pipelined connections received, connections the churners made.
    var counts: (replies: Int, connections: Int) { (replies.load(ordering: .relaxed), connections.load(ordering: .relaxed)) }
    /// The churners' attaches refused at max-connections-per-vm.
    var attachesRefusedAtTheCap: Int { refusedAtTheCap.load(ordering: .relaxed) }
    /// What went wrong on the flood's side (a connection refused, a reply missing).
    var problems: [String] { failures.withLock { $0 } }

    func start() {
        for i in 0..<shape.pipelines { spawn("pipeline \(i)") { try self.pipeline(i) } }
        for i in 0..<shape.slowReaders { spawn("slow reader \(i)") { try self.slowReader() } }
        for i in 0..<shape.churners { spawn("churner \(i)") { try self.churn(i) } }
        for i in 0..<shape.garbage { spawn("garbage \(i)") { try self.garbageLoop(i) } }
    }

    func stop() {
        stopFlag.set()
        done.wait()
    }

    private func proceed() -> Bool { !stopFlag.isSet }

    private func spawn(_ name: String, _ body: @escaping @Sendable () throws -> Void) {
        done.enter()
        let thread = Thread { [self] in
            defer { done.leave() }
            do {
                try body()
            } catch {
                if !stopFlag.isSet { failures.withLock { $0.append("\(name): \(error)") } }
            }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    private func pipeline(_ index: Int) throws {
        let c = try RawNineConnection(port: port)
        defer { c.abort() }
        try c.mount(aname)
        try c.open("big", fid: 1)
        try c.open("d\(index % 8)", fid: 2)
        var random = SeededRandom(state: seed &+ UInt64(index))
        var batch: [UInt8] = []
        var offset: UInt64 = 0
        while proceed() {
            batch.removeAll(keepingCapacity: true)
            var expected = 0
            var tag: UInt16 = 0
            func add(_ request: NinePRequest) {
                batch += request.encode(tag: tag)
                tag += 1
                expected += 1
            }
            for _ in 0..<6 {
                offset = (offset + 65536) % (1 << 20)
                switch shape.requests {
                case .mixed:
                    add(.getattr(fid: 1, mask: .all))
                    add(.read(fid: 1, offset: offset, count: 65536))
                    add(.readdir(fid: 2, offset: 0, count: 8192))
                    add(.statfs(fid: 0))
                    add(.walk(fid: 0, newFid: 10 + UInt32(tag), names: [Array("d\(Int.random(in: 0...7, using: &random))".utf8)]))
                    add(.clunk(fid: 10 + UInt32(tag - 1)))
                    add(.flush(oldTag: 1000 + UInt16.random(in: 0...999, using: &random)))
                    add(.getattr(fid: 99_999, mask: .all))
                case .small:
                    for _ in 0..<2 {
                        add(.getattr(fid: 1, mask: .all))
                        add(.statfs(fid: 0))
                        add(.flush(oldTag: 1000 + UInt16.random(in: 0...999, using: &random)))
                        add(.getattr(fid: 99_999, mask: .all))
                    }
                case .reads:
                    for _ in 0..<8 { add(.read(fid: 1, offset: offset, count: 65536)) }
                }
            }
            guard c.send(batch) else { throw Errno.connectionReset }
            for _ in 0..<expected { _ = try c.receive() }
            replies.add(expected, ordering: .relaxed)
        }
    }

    private func slowReader() throws {
        let c = try RawNineConnection(port: port)
        defer { c.abort() }
        var small: Int32 = 4096
        setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, 4)
        try c.mount(aname, msize: 65536)
        try c.open("big", fid: 1)
        var burst: [UInt8] = []
        for i in 0..<2000 {
            burst += NinePRequest.read(fid: 1, offset: UInt64(i % 16) << 16, count: 60 << 10).encode(tag: UInt16(i))
        }
        // Sent without blocking: once pvfsd stops reading, the rest stays here.
        var sent = 0
        while sent < burst.count && !stopFlag.isSet {
            let n = burst.withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 { sent += n } else { usleep(10_000) }
        }
        while !stopFlag.isSet { usleep(10_000) }
    }

    private func churn(_ index: Int) throws {
        var round = 0
        while proceed() {
            round += 1
            let c = try RawNineConnection(port: port, sourceHost: UInt8(2 + (round + index) % 8))
            do {
                try c.mount(aname)
            } catch let error where Self.isRefusalAtACap(error) {
                // The VM's (or listener's) reset connections still count against its cap until
                // pvfsd has ended them, which it does after the other tenants' work when this
                // one is over its CPU share: the attach is refused (EUSERS), or the connection
                // closed at accept (reset). The caps doing their job, not a failure.
                refusedAtTheCap.add(1, ordering: .relaxed)
                c.abort()
                continue
            }
            connections.add(1, ordering: .relaxed)
            c.abort()
        }
    }

    static func isRefusalAtACap(_ error: any Error) -> Bool {
        if let refused = error as? AttachRefused { return refused.errno == 87 }
        return (error as? Errno) == .connectionReset
    }

    private func garbageLoop(_ index: Int) throws {
        var maker = GarbageMaker(seed: seed &+ 7919 &* UInt64(index + 1))
        var round = 0
        while proceed() {
            round += 1
            let c = try RawNineConnection(port: port, sourceHost: UInt8(10 + (round + index) % 8))
            if round % 2 == 0 {
                c.send(maker.message())
            }
            c.send(maker.framingViolation())
            c.abort()
        }
    }
}
