import Foundation
import Glibc
import Logging
import PVFS9P
import PVFS9PCodec
import PVFSEngine
import PVFSEngineTestSupport
import Synchronization
import Testing
@testable import PVFSTransport

/// Limits per tenant (listener, VM, Xen domain) on the socket transport: one tenant at its
/// limits is refused or slowed, the others notice nothing.
@Suite("Per-tenant socket limits", .serialized)
struct TenantSocketLimitTests {
    /// Two named listeners, "a" and "b", on kernel-chosen ports.
    func twoListeners(_ configure: (inout SocketServer.Configuration) -> Void = { _ in },
                      nine: NinePConfiguration = NinePConfiguration()) throws -> (ServedSockets, a: UInt16, b: UInt16) {
        let a = ListenAddress.tcp(host: "127.0.0.1", port: 0)
        let b = ListenAddress.tcp(host: "127.0.0.2", port: 0)
        var config = SocketServer.Configuration()
        config.listenerNames = [a.description: "a", b.description: "b"]
        configure(&config)
        let s = try ServedSockets([a, b], configuration: config, nine: nine)
        try s.start()
        var ports: [String: UInt16] = [:]
        for case .tcp(let host, let port) in s.server.boundAddresses { ports[host] = port }
        return (s, ports["127.0.0.1"] ?? 0, ports["127.0.0.2"] ?? 0)
    }

    /// A client of another listener is served while 600 idle connections (no Tversion) sit on one.
    @Test func idleConnectionsOnOneListenerDoNotLockOutAnother() throws {
        let (s, portA, portB) = try twoListeners()
        defer { s.finish() }
        var idle: [Int32] = []
        defer { for fd in idle { close(fd) } }
        for _ in 0..<600 { idle.append(try connectTCP(portA)) }
        let cap = s.server.admission.limits.maximumConnectionsPerListener
        #expect(waitUntil { s.server.admission.connections(of: .listener("a")) == cap })
        // The flood is refused at listener a's own cap, and counted there.
        #expect(waitUntil { (s.server.admission.usage.first { $0.tenant == .listener("a") }?.refusals[.listenerConnections] ?? 0) > 0 })

        let fd = try connectTCP(portB, host: "127.0.0.2")
        defer { closeClient(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let c = client(fd)
        #expect(try c.version(msize: 65536).version == "9P2000.L")
        _ = try c.attach(fid: 0, aname: "vm1")
        _ = try c.walk(fid: 0, newFid: 1, path: "etc/hostname")
        _ = try c.lopen(fid: 1, flags: 0)
        #expect(String(decoding: try c.read(fid: 1, offset: 0, count: 100), as: UTF8.self) == "template-host\n")
        #expect(s.server.admission.connections(of: .listener("b")) == 1)
    }

    /// The daemon-wide cap is shared fairly: a listener keeps its guaranteed share however many
    /// connections another one holds.
    @Test func theGlobalCapKeepsEachListenersShare() throws {
        let (s, portA, portB) = try twoListeners { $0.limits.maximumConnections = 8 }
        defer { s.finish() }
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        for _ in 0..<20 { fds.append(try connectTCP(portA)) }
        #expect(waitUntil { s.server.admission.connections(of: .listener("a")) == 4 })
        usleep(100_000)
        #expect(s.server.admission.connections(of: .listener("a")) == 4)
        for _ in 0..<4 {
            let fd = try connectTCP(portB, host: "127.0.0.2")
            fds.append(fd)
            #expect(try client(fd).version().version == "9P2000.L")
        }
        #expect(s.server.admission.connections(of: .listener("b")) == 4)
        let refusals = s.server.admission.usage.first { $0.tenant == .listener("a") }?.refusals ?? [:]
        #expect((refusals[.connections] ?? 0) > 0)
    }

    /// Connections that do not finish Tversion and Tattach within the handshake timeout are
    /// closed; an attached one stays.
    @Test func handshakeTimeoutClosesSilentConnections() throws {
        let (s, portA, _) = try twoListeners { $0.limits.handshakeTimeoutSeconds = 0.5 }
        defer { s.finish() }
        func receiveTimeout(_ fd: Int32) {
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        let silent = try connectTCP(portA)
        defer { close(silent) }
        receiveTimeout(silent)
        let versioned = try connectTCP(portA)
        defer { close(versioned) }
        receiveTimeout(versioned)
        _ = try client(versioned).version()
        let attached = try connectTCP(portA)
        defer { close(attached) }
        let c = client(attached)
        _ = try c.version()
        _ = try c.attach(fid: 0)

        let started = Date()
        var byte: UInt8 = 0
        #expect(recv(silent, &byte, 1, 0) == 0)
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(waitUntil(5) { s.server.connectionCount == 1 })
        // The attached client still works long after the timeout.
        Thread.sleep(forTimeInterval: 0.8)
        #expect(try c.walk(fid: 0, newFid: 1, ["etc"]).count == 1)
        let refusals = s.server.admission.usage.first { $0.tenant == .listener("a") }?.refusals ?? [:]
        #expect(refusals[.handshakeTimeout] == 2)
    }

    /// A connection that holds no fid and sends nothing for the idle timeout is closed.
    @Test func idleTimeoutClosesConnectionsWithoutFids() throws {
        let (s, portA, _) = try twoListeners {
            $0.limits.handshakeTimeoutSeconds = 0
            $0.limits.idleTimeoutSeconds = 0.5
        }
        defer { s.finish() }
        let done = try connectTCP(portA)
        defer { close(done) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(done, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let d = client(done)
        _ = try d.version()
        _ = try d.attach(fid: 0)
        let mounted = try connectTCP(portA)
        defer { closeClient(mounted) }
        let m = client(mounted)
        _ = try m.version()
        _ = try m.attach(fid: 0)
        #expect(waitUntil { s.server.admission.connections(of: .listener("a")) == 2 })
        try d.clunk(fid: 0)
        #expect(waitUntil(5) { s.server.connectionCount == 1 })
        Thread.sleep(forTimeInterval: 0.8)
        #expect(try m.walk(fid: 0, newFid: 1, ["etc"]).count == 1)
        let refusals = s.server.admission.usage.first { $0.tenant == .listener("a") }?.refusals ?? [:]
        #expect(refusals[.idleTimeout] == 1)
    }

    /// A connection that attaches and clunks its fid at once, between two looks of the timeout
    /// check, is still one that attached: idle, it is closed.
    @Test func idleTimeoutClosesConnectionsThatClunkedAtOnce() throws {
        let (s, portA, _) = try twoListeners {
            $0.limits.handshakeTimeoutSeconds = 0
            $0.limits.idleTimeoutSeconds = 2
        }
        defer { s.finish() }
        let fd = try connectTCP(portA)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let c = client(fd)
        _ = try c.version()
        _ = try c.attach(fid: 0)
        try c.clunk(fid: 0)
        #expect(waitUntil(10) { s.server.connectionCount == 0 })
        let refusals = s.server.admission.usage.first { $0.tenant == .listener("a") }?.refusals ?? [:]
        #expect(refusals[.idleTimeout] == 1)
    }

    /// A client that sends thousands of reads at once and never reads the replies: the server
    /// holds at most the reply queue limit plus the outstanding requests' replies, and another
    /// client keeps being served meanwhile.
    @Test func slowReaderMemoryIsBounded() throws {
        var nine = NinePConfiguration()
        nine.maximumMessageSize = 64 << 10
        nine.maximumOutstandingBytes = 1 << 20
        let (s, portA, portB) = try twoListeners({ $0.replyQueueLimit = 1 << 20 }, nine: nine)
        defer { s.finish() }
        let raw = try connectTCP(portA)
        var small: Int32 = 4096
        setsockopt(raw, SOL_SOCKET, SO_RCVBUF, &small, 4)
        var burst: [UInt8] = []
        burst += NinePRequest.version(msize: 64 << 10, version: bytes("9P2000.L")).encode(tag: NineP.noTag)
        burst += NinePRequest.attach(fid: 0, afid: NineP.noFid, uname: [], aname: [], uid: 0).encode(tag: 0)
        burst += NinePRequest.walk(fid: 0, newFid: 1, names: [bytes("big")]).encode(tag: 1)
        burst += NinePRequest.lopen(fid: 1, flags: 0).encode(tag: 2)
        // 3000 reads of 60 KiB: 180 MiB of replies, 69 KB of requests (one recv's worth).
        for i in 0..<3000 {
            burst += NinePRequest.read(fid: 1, offset: UInt64(i % 16) << 16, count: 60 << 10).encode(tag: UInt16(3 + i))
        }
        _ = burst.withUnsafeBytes { Glibc.send(raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }

        let other = try connectTCP(portB, host: "127.0.0.2")
        defer { closeClient(other) }
        let c = client(other)
        _ = try c.version()
        _ = try c.attach(fid: 0)
        _ = try c.walk(fid: 0, newFid: 1, ["big"])
        _ = try c.lopen(fid: 1, flags: 0)
        var largest = 0
        let deadline = Date(timeIntervalSinceNow: 3)
        while Date() < deadline {
            let held = s.server.admission.usage.first { $0.tenant == .listener("a") }?.queuedReplyBytes ?? 0
            largest = max(largest, held)
            #expect(try c.read(fid: 1, offset: 0, count: 100).count == 100)
        }
        // Reply queue (1 MiB) + outstanding replies (1 MiB) + one reply over.
        #expect(largest > 0)
        #expect(largest <= (2 << 20) + (64 << 10))
        let stalls = s.server.admission.usage.first { $0.tenant == .listener("a") }?.backpressure[.replyQueueBytes] ?? 0
        #expect(stalls > 0)
        closeClient(raw)
    }
}

/// Admission bookkeeping on its own: shares, VM caps, release.
@Suite("Tenant admission")
struct TenantAdmissionTests {
    @Test func sharesCapsAndRelease() {
        var limits = TenantLimits()
        limits.maximumConnections = 10
        limits.maximumConnectionsPerListener = 6
        limits.maximumConnectionsPerVM = 2
        let admission = TenantAdmission(limits: limits, listeners: ["a", "b"], logger: quietLogger)
        // Each listener is guaranteed 5; a may borrow only what b's guarantee does not hold.
        for id in 1...5 { #expect(admission.admit(connection: UInt64(id), listener: "a") == nil) }
        #expect(admission.admit(connection: 6, listener: "a")?.limit == .connections)
        for id in 7...11 { #expect(admission.admit(connection: UInt64(id), listener: "b") == nil) }
        #expect(admission.admit(connection: 12, listener: "b")?.limit == .connections)
        admission.release(connection: 1)
        admission.release(connection: 1)   // idempotent
        #expect(admission.connections(of: .listener("a")) == 4)
        // VM caps count from the first attach; a second attach to the same VM changes nothing.
        #expect(throws: Never.self) { try admission.bind(connection: 2, toVM: "web1") }
        #expect(throws: Never.self) { try admission.bind(connection: 2, toVM: "web1") }
        #expect(throws: Never.self) { try admission.bind(connection: 3, toVM: "web1") }
        #expect(throws: AdmissionRefusal.self) { try admission.bind(connection: 4, toVM: "web1") }
        #expect(admission.connections(of: .vm("web1")) == 2)
        admission.release(connection: 2)
        #expect(admission.connections(of: .vm("web1")) == 1)
        #expect(throws: Never.self) { try admission.bind(connection: 4, toVM: "web1") }
        // A connection that reached two VMs (a Tversion between) counts against both until it ends.
        #expect(throws: Never.self) { try admission.bind(connection: 4, toVM: "web2") }
        #expect(admission.connections(of: .vm("web2")) == 1)
        admission.release(connection: 4)
        #expect(admission.connections(of: .vm("web1")) == 1 && admission.connections(of: .vm("web2")) == 0)
        let usage = admission.usage
        #expect(usage.first { $0.tenant == .vm("web1") }?.refusals[.vmConnections] == 1)
        #expect(usage.first { $0.tenant == .listener("a") }?.refusals[.connections] == 1)
        // Per-listener cap below the share: with one listener of cap 6, the 7th is refused by it.
        let single = TenantAdmission(limits: limits, listeners: ["x"], logger: quietLogger)
        for id in 1...6 { #expect(single.admit(connection: UInt64(id), listener: "x") == nil) }
        #expect(single.admit(connection: 7, listener: "x")?.limit == .listenerConnections)
    }

    @Test func timeouts() {
        var limits = TenantLimits()
        limits.handshakeTimeoutSeconds = 2
        limits.idleTimeoutSeconds = 10
        let s: UInt64 = 1_000_000_000
        var a = ConnectionActivity(connectedAt: 100 * s, lastActivity: 100 * s, hasAttached: false, holdsFid: false, outstandingRequests: 0)
        #expect(limits.expiredTimeout(a, now: 101 * s) == nil)
        #expect(limits.expiredTimeout(a, now: 102 * s) == .handshakeTimeout)
        // Activity does not extend the handshake.
        a.lastActivity = 102 * s
        #expect(limits.expiredTimeout(a, now: 102 * s) == .handshakeTimeout)
        a.outstandingRequests = 1
        #expect(limits.expiredTimeout(a, now: 200 * s) == nil)
        a = ConnectionActivity(connectedAt: 100 * s, lastActivity: 105 * s, hasAttached: true, holdsFid: false, outstandingRequests: 0)
        #expect(limits.expiredTimeout(a, now: 114 * s) == nil)
        #expect(limits.expiredTimeout(a, now: 115 * s) == .idleTimeout)
        a.holdsFid = true
        #expect(limits.expiredTimeout(a, now: 1000 * s) == nil)
        limits.idleTimeoutSeconds = 0
        a.holdsFid = false
        #expect(limits.expiredTimeout(a, now: 1000 * s) == nil)
    }
}

/// A frontend's side of one ring, driven by the test: sends requests as Linux does (waiting for
/// ring space) and collects replies by tag.
final class RingFrontend {
    let memory: TestRingMemory
    let signal: TestSignal
    private(set) var replies: [UInt16: [UInt8]] = [:]

    init(order: UInt32 = 4) {
        memory = TestRingMemory(order: order)
        signal = TestSignal()
    }

    @discardableResult
    func send(_ message: [UInt8], timeout: TimeInterval = 5) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !memory.send(message) {
            drain()
            if Date() > deadline { return false }
            signal.waitForNotification(after: signal.notificationCount, timeout: 0.01)
        }
        signal.kick()
        return true
    }

    func send(_ request: NinePRequest, tag: UInt16) -> Bool { send(request.encode(tag: tag)) }

    func drain() {
        let received = memory.receive()
        for reply in received { replies[NinePHeader(reply)?.tag ?? NineP.noTag] = reply }
        if !received.isEmpty { signal.kick() }
    }

    func reply(_ tag: UInt16, timeout: TimeInterval = 5) -> NinePResponse? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            drain()
            if let reply = replies.removeValue(forKey: tag) { return try? NinePResponse.decode(reply).response }
            signal.waitForNotification(after: signal.notificationCount, timeout: 0.01)
        }
        return nil
    }

    /// The raw reply to `tag`, waiting for it.
    func rawReply(_ tag: UInt16, timeout: TimeInterval = 5) -> [UInt8]? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            drain()
            if let reply = replies.removeValue(forKey: tag) { return reply }
            signal.waitForNotification(after: signal.notificationCount, timeout: 0.01)
        }
        return nil
    }

    func call(_ request: NinePRequest, tag: UInt16) -> NinePResponse? {
        guard send(request, tag: tag) else { return nil }
        return reply(tag)
    }
}

/// The Xen ring code with a real 9P connection (over the fixture's VM) as its handler, and a
/// hostile or careless frontend.
@Suite("Xen ring limits", .serialized)
struct XenRingLimitTests {
    final class Served {
        let fixture: TransportFixture
        let pool = NinePWorkerPool(threads: 4)
        let connection: NinePConnection
        let worker: XenRingWorker
        let frontend: RingFrontend
        let admission = TenantAdmission(logger: quietLogger)

        init(limits: XenRingLimits = XenRingLimits(), nine: NinePConfiguration = NinePConfiguration(),
             handler: (any NineMessageHandler)? = nil) throws {
            fixture = try TransportFixture()
            let fixture = self.fixture
            let peer = NinePPeer(.xen(domainID: 7, deviceID: 0, domainName: nil, vm: "vm1", tag: nil), connectionID: 7 << 32)
            connection = NinePConnection(peer: peer, configuration: nine, pool: pool, logger: quietLogger) { _ in
                VMView(volume: fixture.volume, policy: SessionPolicy(side: .guest), sessionID: 77)
            }
            frontend = RingFrontend()
            worker = try XenRingWorker(index: 0, ring: frontend.memory.makeRing(), signal: frontend.signal,
                                       handler: handler ?? connection, limits: limits,
                                       accounting: XenRingAccounting(admission: admission, tenant: .xenDomain(7)),
                                       label: "test-ring", logger: quietLogger) { _, _ in }
            try worker.start()
        }

        func finish() {
            worker.stop()
            connection.close()
            pool.shutdown()
        }

        /// Tversion, Tattach fid 0, and fids 1 and 2 open on /big.
        func mount() -> Bool {
            guard case .version? = frontend.call(.version(msize: 16384, version: bytes("9P2000.L")), tag: NineP.noTag),
                  case .attach? = frontend.call(.attach(fid: 0, afid: NineP.noFid, uname: [], aname: [], uid: 0), tag: 1)
            else { return false }
            for fid: UInt32 in [1, 2] {
                guard case .walk? = frontend.call(.walk(fid: 0, newFid: fid, names: [bytes("big")]), tag: 2),
                      case .lopen? = frontend.call(.lopen(fid: fid, flags: 2), tag: 3) else { return false }
            }
            return true
        }
    }

    static func writeLock(pid: UInt32, client: String, wait: Bool) -> NinePLock {
        NinePLock(type: NinePLockType.writeLock, flags: wait ? NinePLockFlags.block : 0, start: 0, length: 0,
                  processID: pid, clientID: bytes(client))
    }

    /// Ctrl-C during lock waits: more flushed lock waits (no reply each) than the ring's
    /// in-flight limit, and the ring still serves. (A flushed wait ends within the lock
    /// table's 0.5 s poll, so the limit is lowered to keep the test short.)
    @Test func flushedLockWaitsDoNotStopTheRing() throws {
        var nine = NinePConfiguration()
        nine.lockWaitSeconds = .infinity
        let s = try Served(limits: XenRingLimits(maxRequestsInFlight: 16), nine: nine)
        defer { s.finish() }
        #expect(s.mount())
        guard case .lock(let status)? = s.frontend.call(.lock(fid: 1, Self.writeLock(pid: 1, client: "holder", wait: false)), tag: 4) else {
            Issue.record("no Rlock")
            return
        }
        #expect(status == NinePLockStatus.success)
        for round in 0..<40 {
            #expect(s.frontend.send(.lock(fid: 2, Self.writeLock(pid: 2, client: "waiter", wait: true)), tag: 10))
            guard case .flush? = s.frontend.call(.flush(oldTag: 10), tag: 11) else {
                Issue.record("round \(round): no Rflush (the ring stopped consuming)")
                return
            }
            // The flushed wait got no reply.
            #expect(s.frontend.replies[10] == nil)
        }
        guard case .getattr(let attributes)? = s.frontend.call(.getattr(fid: 1, mask: .all), tag: 12) else {
            Issue.record("no Rgetattr after the flushes")
            return
        }
        #expect(attributes.size == UInt64(TransportFixture.bigSize))
        #expect(eventually { s.worker.usage.requestsInFlight == 0 })
        #expect(eventually { s.worker.unansweredRequests == 40 })
    }

    /// Requests a Tversion abandons (a lock wait, and a clunk queued behind it) get no reply;
    /// 150 rounds leave 300 of them, and the ring still serves.
    @Test func requestsAbandonedByTversionDoNotStopTheRing() throws {
        var nine = NinePConfiguration()
        nine.lockWaitSeconds = .infinity
        // An abandoned wait ends within the lock table's 0.5 s poll; on a fast machine rounds
        // come quicker than that, and past the default 16 waiters a lock is answered BLOCKED.
        nine.maximumOutstandingRequests = 256
        nine.maximumBlockedLocks = 200
        let s = try Served(nine: nine)
        defer { s.finish() }
        // Another session holds the lock the ring's lock requests wait for.
        let holder = s.fixture.view()
        let big = try holder.resolve("big").inode
        try holder.setLock(big, owner: 1, range: FileLockRange(type: .write, start: 0, end: .max, pid: 1), wait: false)
        for round in 0..<150 {
            guard s.mount() else {
                Issue.record("round \(round): the mount sequence got no replies (the ring stopped consuming)")
                return
            }
            #expect(s.frontend.send(.lock(fid: 2, Self.writeLock(pid: 2, client: "waiter", wait: true)), tag: 10))
            #expect(s.frontend.send(.clunk(fid: 2), tag: 11))
        }
        #expect(s.mount())
        #expect(s.frontend.replies[10] == nil && s.frontend.replies[11] == nil)
        #expect(eventually { s.worker.unansweredRequests == 300 })
        holder.releaseAllLocks()
    }

    /// A frontend that never consumes its replies: the backend holds at most the reply budget
    /// (plus one reply) for it, stops consuming its ring, and another ring keeps being served.
    @Test func unconsumedRepliesAreBoundedByBytes() throws {
        let budget = 64 << 10
        let limits = XenRingLimits(maxRequestsInFlight: 128, maxReplyBytes: budget)
        let handler = AsyncEchoHandler(replySize: 8 << 10, maxDelayMicroseconds: 0)
        let s = try Served(limits: limits, handler: handler)
        defer { s.finish() }
        // 1000 reads of 8 KiB, never consumed (the in ring holds 32 KiB of replies).
        var sent = 0
        for tag in 0..<1000 {
            let read = NinePRequest.read(fid: 1, offset: 0, count: (8 << 10) - 11).encode(tag: UInt16(tag))
            guard s.frontend.memory.send(read) else { break }
            sent += 1
        }
        s.frontend.signal.kick()
        #expect(sent == 1000)
        Thread.sleep(forTimeInterval: 0.5)
        let (inFlight, held) = s.worker.usage
        // Taken: what the ring holds (4 replies) plus what the budget allows.
        #expect(handler.receivedCount <= 4 + budget / (8 << 10) + 1)
        #expect(held <= budget + (8 << 10))
        // Four replies fill the 32 KiB in ring; the rest are held.
        #expect(inFlight + 4 == handler.receivedCount)
        #expect(s.frontend.memory.load(XenRingLayout.outCons) < UInt32(sent * 23))
        let stalls = s.admission.usage.first { $0.tenant == .xenDomain(7) }?.backpressure[.ringReplyBytes] ?? 0
        #expect(stalls >= 1 && stalls <= 3)
        let gauge = s.admission.usage.first { $0.tenant == .xenDomain(7) }
        #expect(gauge?.queuedReplyBytes == held)

        // Another ring of the same backend is served meanwhile.
        let otherFrontend = RingFrontend()
        let other = try XenRingWorker(index: 1, ring: otherFrontend.memory.makeRing(), signal: otherFrontend.signal,
                                      handler: AsyncEchoHandler(maxDelayMicroseconds: 0), limits: limits, label: "test-ring-1", logger: quietLogger) { _, _ in }
        try other.start()
        defer { other.stop() }
        for tag: UInt16 in 0..<50 {
            #expect(otherFrontend.send(nineMessage(type: 110, tag: tag, payload: [1, 2, 3])))
            #expect(otherFrontend.rawReply(tag) == nineMessage(type: 111, tag: tag, payload: [3, 2, 1]))
        }

        // Once the frontend consumes, everything is answered.
        var answered = 0
        let deadline = Date().addingTimeInterval(20)
        while answered < sent && Date() < deadline {
            let got = s.frontend.memory.receive()
            answered += got.count
            if !got.isEmpty { s.frontend.signal.kick() } else { usleep(500) }
        }
        #expect(answered == sent)
    }

    /// Tearing a ring down does not wait for a request the handler is running on the ring's
    /// thread: the ring memory is released at once, the thread ends when the request does.
    @Test func detachDoesNotWaitForTheHandler() throws {
        final class StuckHandler: NineMessageHandler, @unchecked Sendable {
            let entered = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            var maximumMessageSize: Int { Int(UInt32.max) }
            func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                         unanswered: (@Sendable () -> Void)?) {
                entered.signal()
                release.wait()
                reply(nineMessage(type: 101, tag: NinePHeader(message)?.tag ?? 0))
            }
            func close() {}
        }
        let handler = StuckHandler()
        let frontend = RingFrontend()
        let worker = try XenRingWorker(index: 0, ring: frontend.memory.makeRing(), signal: frontend.signal, handler: handler,
                                       limits: XenRingLimits(), label: "test-ring",
                                       logger: quietLogger) { _, _ in }
        try worker.start()
        #expect(frontend.send(nineMessage(type: 100, tag: 1)))
        #expect(handler.entered.wait(timeout: .now() + 5) == .success)
        let detached = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            worker.detach()
            detached.signal()
        }
        #expect(detached.wait(timeout: .now() + 1) == .success)
        handler.release.signal()
        _ = detached.wait(timeout: .now() + 5)
        worker.join()
        // The reply came after the detach: dropped, never written.
        #expect(frontend.memory.receive().isEmpty)
    }
}
