import Foundation
import Logging
import PVFS9PCodec
import PVFSTestSupport
import Synchronization
import Testing
@testable import PVFSTransport

/// Ring workers over ordinary memory, with a frontend simulated by the test thread.
@Suite("Xen ring worker")
struct XenRingWorkerTests {
    final class FailureLog: @unchecked Sendable {
        private let lock = NSLock()
        private var entries: [(Int, XenError)] = []
        func record(_ ring: Int, _ error: XenError) { lock.withLock { entries.append((ring, error)) } }
        var all: [(Int, XenError)] { lock.withLock { entries } }
    }

    func makeWorker(_ memory: TestRingMemory, _ signal: TestSignal, _ handler: any NineMessageHandler,
                    limits: XenRingLimits = XenRingLimits(),
                    failures: FailureLog = FailureLog(), index: Int = 0) throws -> XenRingWorker {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try XenRingWorker(index: index, ring: memory.makeRing(), signal: signal, handler: handler,
                                 limits: limits, label: "test-ring", logger: logger) { ring, error in
            failures.record(ring, error)
        }
    }

    /// Sends every request (waiting for ring space as Linux does), collects every reply.
    func exchange(_ memory: TestRingMemory, _ signal: TestSignal, requests: [[UInt8]], timeout: TimeInterval = 20) -> [UInt16: [UInt8]] {
        var replies: [UInt16: [UInt8]] = [:]
        var next = 0
        let deadline = Date().addingTimeInterval(timeout)
        while (replies.count < requests.count) && Date() < deadline {
            let seen = signal.notificationCount
            var progressed = false
            while next < requests.count, memory.send(requests[next]) {
                next += 1
                progressed = true
            }
            if progressed { signal.kick() }
            let received = memory.receive()
            for reply in received { replies[NinePHeader(reply)!.tag] = reply }
            if !received.isEmpty {
                signal.kick()  // Linux notifies after draining the in ring
                continue
            }
            if !progressed { signal.waitForNotification(after: seen, timeout: 0.05) }
        }
        return replies
    }

    @Test func echoesManyRequestsWithOutOfOrderRepliesFromOtherThreads() throws {
        let memory = TestRingMemory(order: 1)
        let signal = TestSignal()
        let handler = AsyncEchoHandler()
        let worker = try makeWorker(memory, signal, handler)
        try worker.start()
        defer { worker.stop() }
        let requests = (0..<300).map { nineMessage(type: 110, tag: UInt16($0), payload: pattern(50 + $0 * 3, seed: $0)) }
        let replies = exchange(memory, signal, requests: requests)
        #expect(replies.count == requests.count)
        for request in requests {
            let header = NinePHeader(request)!
            #expect(replies[header.tag] == nineMessage(type: 111, tag: header.tag, payload: Array(request[7...].reversed())))
        }
        #expect(worker.counters.requests == 300)
        #expect(worker.counters.replies == 300)
    }

    @Test func repliesLargerThanTheFreeSpaceWaitAndWrap() throws {
        // 4 KiB each way; every reply is 3000 bytes, so at most one is on the ring at a time.
        let memory = TestRingMemory(order: 1, startIndex: 4096 - 100)
        let signal = TestSignal()
        let handler = AsyncEchoHandler(replySize: 3000, maxDelayMicroseconds: 200)
        let worker = try makeWorker(memory, signal, handler)
        try worker.start()
        defer { worker.stop() }
        let requests = (0..<40).map { nineMessage(type: 116, tag: UInt16($0), payload: pattern(20, seed: $0)) }
        let replies = exchange(memory, signal, requests: requests)
        #expect(replies.count == 40)
        for tag in 0..<40 {
            #expect(replies[UInt16(tag)] == nineMessage(type: 117, tag: UInt16(tag), payload: pattern(2993, seed: tag)))
        }
    }

    @Test func malformedHeaderStopsOnlyThatRingAndIsReported() throws {
        let failures = FailureLog()
        let good = TestRingMemory(order: 1)
        let bad = TestRingMemory(order: 1)
        let goodSignal = TestSignal()
        let badSignal = TestSignal()
        let handler = AsyncEchoHandler(maxDelayMicroseconds: 0)
        let ring0 = try makeWorker(good, goodSignal, handler, failures: failures, index: 0)
        let ring1 = try makeWorker(bad, badSignal, handler, failures: failures, index: 1)
        try ring0.start()
        try ring1.start()
        defer { ring0.stop(); ring1.stop() }

        bad.sendRaw(headerBytes(size: 2, type: 100, tag: 1), publish: 7)
        badSignal.kick()
        #expect(eventually { failures.all.count == 1 })
        #expect(failures.all.first?.0 == 1)
        #expect(failures.all.first?.1.kind == .protocolViolation)
        // The broken ring answers nothing more; the good one goes on.
        bad.send(nineMessage(type: 100, tag: 2))
        badSignal.kick()
        let replies = exchange(good, goodSignal, requests: [nineMessage(type: 100, tag: 3, payload: [1, 2, 3])])
        #expect(replies[3] == nineMessage(type: 101, tag: 3, payload: [3, 2, 1]))
        usleep(50_000)
        #expect(bad.receive().isEmpty)
        #expect(failures.all.count == 1)
    }

    /// The ring's limit is the handler's: the ring size until Tversion, then the msize agreed.
    @Test func requestsAboveTheNegotiatedMsizeAreViolations() throws {
        final class VersionHandler: NineMessageHandler, @unchecked Sendable {
            private let agreed = Mutex(0)
            var maximumMessageSize: Int { agreed.withLock { $0 == 0 ? 1 << 20 : $0 } }
            func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                         unanswered: (@Sendable () -> Void)?) {
                let header = NinePHeader(message)!
                if header.type == .tversion {
                    agreed.withLock { $0 = 1024 }
                    var answer = nineMessage(type: 101, tag: header.tag, payload: [0, 4, 0, 0, 8, 0] + Array("9P2000.L".utf8))
                    answer[0] = UInt8(answer.count)
                    reply(answer)
                } else {
                    reply(nineMessage(type: header.type.rawValue + 1, tag: header.tag))
                }
            }
            func close() {}
        }
        let failures = FailureLog()
        let memory = TestRingMemory(order: 2)
        let signal = TestSignal()
        let handler = VersionHandler()
        let worker = try makeWorker(memory, signal, handler, failures: failures)
        try worker.start()
        defer { worker.stop() }
        // Before Tversion a message may fill the ring (8 KiB here).
        #expect(exchange(memory, signal, requests: [nineMessage(type: 110, tag: 3, payload: pattern(5000, seed: 3))]).count == 1)
        let version = nineMessage(type: 100, tag: 0xFFFF, payload: [0, 0, 1, 0, 8, 0] + Array("9P2000.L".utf8))
        #expect(exchange(memory, signal, requests: [version]).count == 1)
        #expect(handler.maximumMessageSize == 1024)
        #expect(exchange(memory, signal, requests: [nineMessage(type: 110, tag: 1, payload: pattern(1000, seed: 1))]).count == 1)
        memory.send(nineMessage(type: 118, tag: 2, payload: pattern(1100, seed: 2)))
        signal.kick()
        #expect(eventually { failures.all.count == 1 })
        #expect(failures.all.first?.1.description.contains("1024") == true)
    }

    @Test func stopsConsumingAtTheInFlightLimit() throws {
        let memory = TestRingMemory(order: 1)
        let signal = TestSignal()
        let handler = HoldingHandler()
        let worker = try makeWorker(memory, signal, handler, limits: XenRingLimits(maxRequestsInFlight: 3))
        try worker.start()
        defer { worker.stop() }
        for tag in 0..<8 { memory.send(nineMessage(type: 110, tag: UInt16(tag))) }
        signal.kick()
        #expect(eventually { handler.pendingCount == 3 })
        usleep(50_000)
        #expect(handler.pendingCount == 3)
        #expect(memory.load(XenRingLayout.outCons) == 21)   // three 7-byte requests taken
        handler.releaseAll()
        #expect(eventually { handler.pendingCount == 3 && memory.load(XenRingLayout.outCons) == 42 })
        handler.releaseAll()
        #expect(eventually { handler.pendingCount == 2 })
        handler.releaseAll()
        #expect(eventually { worker.counters.replies == 8 })
        #expect(memory.receive().count == 8)
    }

    @Test func replyFramingErrorsFromTheHandlerStopTheRing() throws {
        final class BrokenHandler: NineMessageHandler, @unchecked Sendable {
            var maximumMessageSize: Int { Int(UInt32.max) }
            func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                         unanswered: (@Sendable () -> Void)?) {
                reply([9, 0, 0, 0, 101, 0, 0])   // claims 9 bytes, has 7
            }
            func close() {}
        }
        let failures = FailureLog()
        let memory = TestRingMemory(order: 1)
        let signal = TestSignal()
        let worker = try makeWorker(memory, signal, BrokenHandler(), failures: failures)
        try worker.start()
        defer { worker.stop() }
        memory.send(nineMessage(type: 100, tag: 0))
        signal.kick()
        #expect(eventually { failures.all.count == 1 })
        #expect(memory.receive().isEmpty)
    }

    @Test func secondReplyForOneRequestIsIgnoredAndLateRepliesAreDropped() throws {
        final class DoubleHandler: NineMessageHandler, @unchecked Sendable {
            let lock = NSLock()
            var saved: (@Sendable ([UInt8]) -> Void)?
            var maximumMessageSize: Int { Int(UInt32.max) }
            func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                         unanswered: (@Sendable () -> Void)?) {
                let header = NinePHeader(message)!
                reply(nineMessage(type: 101, tag: header.tag))
                reply(nineMessage(type: 101, tag: header.tag, payload: [1]))
                lock.withLock { saved = reply }
            }
            func close() {}
        }
        let memory = TestRingMemory(order: 1)
        let signal = TestSignal()
        let handler = DoubleHandler()
        let worker = try makeWorker(memory, signal, handler)
        try worker.start()
        let replies = exchange(memory, signal, requests: [nineMessage(type: 100, tag: 4)])
        #expect(replies[4] == nineMessage(type: 101, tag: 4))
        usleep(20_000)
        #expect(memory.receive().isEmpty)
        worker.stop()
        handler.lock.withLock { handler.saved }?(nineMessage(type: 101, tag: 4))   // after stop: dropped
        #expect(memory.receive().isEmpty)
    }

    @Test func diagnosticResponderAnswersAMountSequence() throws {
        let memory = TestRingMemory(order: 3)
        let signal = TestSignal()
        let responder = NineDiagnosticResponder(files: ["hello.txt": Array("hi\n".utf8)])
        let worker = try makeWorker(memory, signal, responder)
        try worker.start()
        defer { worker.stop() }
        func string(_ text: String) -> [UInt8] { [UInt8(text.utf8.count), 0] + Array(text.utf8) }
        func u32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        func u64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        func framed(_ type: UInt8, _ tag: UInt16, _ payload: [UInt8]) -> [UInt8] { nineMessage(type: type, tag: tag, payload: payload) }

        let version = exchange(memory, signal, requests: [framed(100, 0xFFFF, u32(8192) + string("9P2000.L"))])[0xFFFF]!
        #expect(version[4] == 101)
        #expect(Array(version[7..<11]) == u32(8192))
        let steps: [[UInt8]] = [
            framed(104, 1, u32(0) + u32(0xFFFF_FFFF) + string("root") + string("") + u32(0)),     // attach fid 0
            framed(110, 2, u32(0) + u32(1) + [1, 0] + string("hello.txt")),                       // walk 0 -> 1
            framed(24, 3, u32(1) + u64(0x7ff)),                                                    // getattr 1
            framed(12, 4, u32(1) + u32(0)),                                                        // lopen 1 RDONLY
            framed(116, 5, u32(1) + u64(0) + u32(100)),                                            // read 1
            framed(40, 6, u32(0) + u64(0) + u32(4000)),                                            // readdir 0
            framed(110, 7, u32(0) + u32(2) + [1, 0] + string("missing")),                          // walk fails
            framed(12, 8, u32(1) + u32(2)),                                                        // lopen RDWR
            framed(120, 9, u32(1)),                                                                // clunk 1
        ]
        let replies = exchange(memory, signal, requests: steps)
        #expect(replies[1]?[4] == 105)
        #expect(replies[2]?[4] == 111)
        #expect(replies[3]?[4] == 25)
        #expect(replies[3].map { Array($0[28..<32]) } == u32(0o100444))
        #expect(replies[4]?[4] == 13)
        #expect(replies[5].map { Array($0[7...]) } == u32(3) + Array("hi\n".utf8))
        #expect(replies[6]?[4] == 41)
        #expect(replies[6].map { String(decoding: $0, as: UTF8.self).contains("hello.txt") } == true)
        #expect(replies[7] == NinePResponse.error(errno: 2).encode(tag: 7))
        #expect(replies[8] == NinePResponse.error(errno: 30).encode(tag: 8))
        #expect(replies[9]?[4] == 121)
    }
}
