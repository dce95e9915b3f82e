import CXen
import PVFS9PCodec
import Testing
@testable import PVFSTransport

@Suite("Xen flex ring")
struct XenFlexRingTests {
    @Test func layoutMatchesTheHeader() {
        #expect(XenRingLayout.inCons == 0)
        #expect(XenRingLayout.inProd == 4)
        #expect(XenRingLayout.outCons == 64)
        #expect(XenRingLayout.outProd == 68)
        // struct xen_9pfs_data_intf: 8 bytes of indices + pad1[56], 8 + pad2[56], then
        // ring_order at 128 and the grant references from 132 (as Linux and QEMU use it).
        #expect(XenRingLayout.ringOrder == 128)
        #expect(XenRingLayout.refs == 132)
        #expect(XenRingGeometry(order: 9).ringSize == 1 << 20)
        #expect(XenRingGeometry(order: 1).ringSize == 4096)
        #expect(XenRingGeometry(order: 9).dataPageCount == 512)
    }

    @Test func takesCompleteRequestsAndPublishesTheConsumer() throws {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        let first = nineMessage(type: 100, tag: 1, payload: pattern(20, seed: 1))
        let second = nineMessage(type: 104, tag: 2, payload: pattern(300, seed: 2))
        #expect(memory.send(first))
        #expect(memory.send(second))
        let taken = try ring.takeRequests(maxMessageSize: .max, maxCount: 10)
        #expect(taken == [first, second])
        #expect(memory.load(XenRingLayout.outCons) == UInt32(first.count + second.count))
        #expect(try ring.takeRequests(maxMessageSize: .max, maxCount: 10).isEmpty)
    }

    @Test func honoursMaxCount() throws {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        for tag in 0..<5 { memory.send(nineMessage(type: 110, tag: UInt16(tag))) }
        #expect(try ring.takeRequests(maxMessageSize: .max, maxCount: 2).count == 2)
        #expect(memory.load(XenRingLayout.outCons) == 14)
        #expect(try ring.takeRequests(maxMessageSize: .max, maxCount: 10).count == 3)
    }

    @Test func requestWrapsAroundTheRingEnd() throws {
        // Start three bytes before the end: the header itself straddles the wrap.
        let memory = TestRingMemory(order: 1, startIndex: 4096 - 3)
        let ring = memory.makeRing()
        let message = nineMessage(type: 116, tag: 9, payload: pattern(1000, seed: 3))
        #expect(memory.send(message))
        #expect(try ring.takeRequests(maxMessageSize: .max, maxCount: 1) == [message])
        #expect(memory.load(XenRingLayout.outCons) == 4096 - 3 + UInt32(message.count))
    }

    @Test func partialMessageStaysOnTheRing() throws {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        let message = nineMessage(type: 118, tag: 4, payload: pattern(500, seed: 4))
        memory.sendRaw(message, publish: 5)          // not even a whole header
        #expect(try ring.takeRequests(maxMessageSize: .max, maxCount: 4).isEmpty)
        memory.publishMore(100)                       // header and part of the body
        #expect(try ring.takeRequests(maxMessageSize: .max, maxCount: 4).isEmpty)
        #expect(memory.load(XenRingLayout.outCons) == 0)
        memory.publishMore(message.count - 105)       // the rest
        #expect(try ring.takeRequests(maxMessageSize: .max, maxCount: 4) == [message])
    }

    @Test func headerLargerThanTheRingIsAViolation() {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        memory.sendRaw(headerBytes(size: 4097, type: 118, tag: 1), publish: 7)
        #expect(throws: XenError.self) { try ring.takeRequests(maxMessageSize: .max, maxCount: 1) }
        #expect(memory.load(XenRingLayout.outCons) == 0)
    }

    @Test func headerLargerThanMsizeIsAViolation() throws {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        let message = nineMessage(type: 118, tag: 1, payload: pattern(600, seed: 5))
        memory.send(message)
        let error = try #require(throws: XenError.self) { try ring.takeRequests(maxMessageSize: 512, maxCount: 1) }
        #expect(error.kind == .protocolViolation)
        #expect(error.description.contains("exceeds the limit of 512"))
    }

    @Test func headerSmallerThanItselfIsAViolation() {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        memory.sendRaw(headerBytes(size: 3, type: 100, tag: 1), publish: 7)
        #expect(throws: XenError.self) { try ring.takeRequests(maxMessageSize: .max, maxCount: 1) }
    }

    @Test func producerFurtherAheadThanTheRingIsAViolation() {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        memory.store(XenRingLayout.outProd, 4097)
        #expect(throws: XenError.self) { try ring.takeRequests(maxMessageSize: .max, maxCount: 1) }
        #expect(throws: XenError.self) { try ring.pendingRequestBytes() }
    }

    @Test func aWholeRingOfOneMessageIsAccepted() throws {
        let memory = TestRingMemory(order: 1, startIndex: 1000)
        let ring = memory.makeRing()
        let message = nineMessage(type: 118, tag: 1, payload: pattern(4096 - 7, seed: 6))
        #expect(memory.send(message))
        #expect(try ring.pendingRequestBytes() == 4096)
        #expect(try ring.takeRequests(maxMessageSize: .max, maxCount: 1) == [message])
    }

    @Test func replyWrapsAroundAndIsReadWhole() throws {
        let memory = TestRingMemory(order: 1, startIndex: 4096 - 2)
        let ring = memory.makeRing()
        let reply = nineMessage(type: 117, tag: 3, payload: pattern(2000, seed: 7))
        #expect(try ring.putReply(reply))
        #expect(memory.load(XenRingLayout.inProd) == 4096 - 2 + UInt32(reply.count))
        #expect(memory.receive() == [reply])
    }

    @Test func replyLargerThanTheFreeSpaceWaitsForTheFrontend() throws {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        let first = nineMessage(type: 117, tag: 1, payload: pattern(3000, seed: 8))
        let second = nineMessage(type: 117, tag: 2, payload: pattern(2000, seed: 9))
        #expect(try ring.putReply(first))
        let before = memory.load(XenRingLayout.inProd)
        #expect(try ring.putReply(second) == false)          // 1096 bytes free
        #expect(memory.load(XenRingLayout.inProd) == before)  // nothing published
        #expect(memory.receive() == [first])
        #expect(try ring.putReply(second))                   // wraps around now
        #expect(memory.receive() == [second])
    }

    @Test func replyThatNeverFitsIsRefused() {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        #expect(throws: XenError.self) { try ring.putReply(nineMessage(type: 117, tag: 1, payload: pattern(4090, seed: 1))) }
    }

    @Test func consumerPastTheProducerIsAViolation() {
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        memory.store(XenRingLayout.inCons, 100)
        #expect(throws: XenError.self) { try ring.putReply(nineMessage(type: 101, tag: 0)) }
    }

    @Test func indicesOverflowAt2To32() throws {
        let start = UInt32.max - 10
        let memory = TestRingMemory(order: 1, startIndex: start)
        let ring = memory.makeRing()
        var requests: [[UInt8]] = []
        var replies: [[UInt8]] = []
        for round in 0..<12 {
            let request = nineMessage(type: 110, tag: UInt16(round), payload: pattern(700 + round, seed: round))
            #expect(memory.send(request))
            requests.append(request)
            let taken = try ring.takeRequests(maxMessageSize: .max, maxCount: 4)
            #expect(taken == [request])
            let reply = nineMessage(type: 111, tag: UInt16(round), payload: pattern(900 - round, seed: round + 50))
            #expect(try ring.putReply(reply))
            replies.append(reply)
            #expect(memory.receive() == [reply])
        }
        let sent = requests.reduce(0) { $0 + $1.count }
        let answered = replies.reduce(0) { $0 + $1.count }
        #expect(memory.load(XenRingLayout.outCons) == start &+ UInt32(sent))
        #expect(memory.load(XenRingLayout.outCons) < 10_000)   // wrapped past 2^32
        #expect(memory.load(XenRingLayout.inProd) == start &+ UInt32(answered))
        #expect(ring.indices.outCons == memory.load(XenRingLayout.outCons))
    }

    @Test func frontendRewritingTheHeaderAfterTheCheckDoesNotLeak() throws {
        // The backend delivers the header it validated, whatever the bytes say later.
        let memory = TestRingMemory(order: 1)
        let ring = memory.makeRing()
        let message = nineMessage(type: 100, tag: 7, payload: pattern(40, seed: 1))
        memory.send(message)
        let taken = try ring.takeRequests(maxMessageSize: .max, maxCount: 1)
        #expect(NinePHeader(taken[0])?.size == UInt32(taken[0].count))
    }

    @Test func interfacePageIsValidated() throws {
        let memory = TestRingMemory(order: 2)
        for index in 0..<4 { memory.store(XenRingLayout.refs + 4 * index, 100 + UInt32(index)) }
        let parsed = try XenRingLayout.readInterface(memory.interface, maxOrder: 9)
        #expect(parsed.geometry.order == 2)
        #expect(parsed.refs == [100, 101, 102, 103])

        memory.store(XenRingLayout.refs + 8, 1)   // a reserved grant (the xenstore page)
        #expect(throws: XenError.self) { try XenRingLayout.readInterface(memory.interface, maxOrder: 9) }

        for order: UInt32 in [0, 10, 20, 0xFFFF_FFFF] {
            memory.store(XenRingLayout.ringOrder, order)
            #expect(throws: XenError.self) { try XenRingLayout.readInterface(memory.interface, maxOrder: 9) }
        }
        memory.store(XenRingLayout.ringOrder, 3)
        #expect(throws: XenError.self) { try XenRingLayout.readInterface(memory.interface, maxOrder: 2) }
    }

    @Test func strictDecimalParsing() throws {
        #expect(try XenValue.parseUInt32("0", name: "x") == 0)
        #expect(try XenValue.parseUInt32("521", name: "x") == 521)
        #expect(try XenValue.parseUInt32("4294967295", name: "x") == .max)
        for bad in ["", "-1", "+1", " 1", "1 ", "0x10", "01", "4294967296", "99999999999", "1\u{0}", "abc", "１"] {
            #expect(throws: XenError.self, "\(bad)") { try XenValue.parseUInt32(bad, name: "x") }
        }
        #expect(XenbusState(node: Array("4".utf8)) == .connected)
        #expect(XenbusState(node: Array("9".utf8)) == nil)
        #expect(XenbusState(node: Array("x".utf8)) == nil)
        #expect(XenValue.describe([0x41, 0x0a, 0x22]) == "\"A\\x0a\\x22\"")
    }
}
