import Foundation
import Logging
import PVFS9PCodec
import Testing
@testable import PVFSTransport

/// The xenbus handshake and teardown logic against an in-memory xenstore.
@Suite("Xen backend handshake")
struct XenBackendCoreTests {
    final class FakeConnection: XenDeviceConnection {
        let ringOrders: [UInt32]
        private(set) var disconnects = 0
        init(ringOrders: [UInt32]) { self.ringOrders = ringOrders }
        func disconnect() { disconnects += 1 }
    }

    final class FakeConnector: XenDeviceConnector {
        struct Call {
            var frontend: XenFrontendInfo
            var rings: [XenRingAnnouncement]
            var maxOrder: UInt32
            var handler: any NineMessageHandler
            var onRingFailure: @Sendable (Int, XenError) -> Void
            var connection: FakeConnection
        }
        var calls: [Call] = []
        var nextFailure: XenError?

        func connect(frontend: XenFrontendInfo, rings: [XenRingAnnouncement], maxOrder: UInt32,
                     handler: any NineMessageHandler,
                     onRingFailure: @escaping @Sendable (Int, XenError) -> Void) throws -> any XenDeviceConnection {
            if let failure = nextFailure {
                nextFailure = nil
                throw failure
            }
            let connection = FakeConnection(ringOrders: rings.map { _ in maxOrder })
            calls.append(Call(frontend: frontend, rings: rings, maxOrder: maxOrder, handler: handler,
                              onRingFailure: onRingFailure, connection: connection))
            return connection
        }
    }

    final class Posted: @unchecked Sendable {
        private let lock = NSLock()
        private var events: [XenBackendEvent] = []
        func add(_ event: XenBackendEvent) { lock.withLock { events.append(event) } }
        func take() -> [XenBackendEvent] { lock.withLock { defer { events.removeAll() }; return events } }
    }

    final class Harness: @unchecked Sendable {
        let store = FakeXenStore(liveDomains: [5, 6])
        let connector = FakeConnector()
        let posted = Posted()
        let refusedTags: Set<String>
        let core: XenBackendCore
        /// The peers the backend asked the factory for a handler.
        let peers = PeerBox()
        let root = "/local/domain/0/backend/9pfs"

        init(refusedTags: Set<String> = [], configure: (inout XenBackendConfiguration) -> Void = { _ in },
             handlers: (@Sendable (NinePPeer) -> any NineMessageHandler)? = nil) throws {
            self.refusedTags = refusedTags
            var configuration = XenBackendConfiguration()
            configure(&configuration)
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let posted = self.posted
            let refused = refusedTags
            let peers = self.peers
            store.set("/local/domain/0/name", "Domain-0")
            for domid in [5, 6] {
                store.set("/local/domain/\(domid)/name", "guest\(domid)")
                try store.makeDirectory("/local/domain/\(domid)/device", in: .none)
            }
            core = try XenBackendCore(configuration: configuration, backendDomid: 0, store: store, connector: connector,
                                      logger: logger, post: { posted.add($0) }) { peer in
                peers.append(peer)
                if case .xen(_, _, _, _, let tag?) = peer.endpoint, refused.contains(tag) {
                    throw NineConnectionRefused("tag \(tag) not allowed")
                }
                return handlers?(peer) ?? AsyncEchoHandler()
            }
        }

        func backend(_ domid: UInt32 = 5, _ devid: UInt32 = 0) -> String { "\(root)/\(domid)/\(devid)" }
        func frontend(_ domid: UInt32 = 5, _ devid: UInt32 = 0) -> String { "/local/domain/\(domid)/device/9pfs/\(devid)" }

        /// What `pvfs-vm attach` writes, then the watch event xenstored would fire.
        func attach(_ domid: UInt32 = 5, _ devid: UInt32 = 0, tag: String = "pvfs-root", notify: Bool = true) throws {
            try XenToolstack.attach(.init(vmName: "vm\(domid)", domid: domid, devid: devid, tag: tag), store: store)
            if notify { core.handleWatch(path: backend(domid, devid), token: XenBackendCore.backendWatchToken) }
        }

        /// The frontend's xenstore writes before Initialised (as Linux's xen_9pfs_front_init).
        func announce(_ domid: UInt32 = 5, _ devid: UInt32 = 0, rings: Int = 2, overrides: [String: String?] = [:]) {
            var nodes: [String: String?] = ["version": "1", "num-rings": String(rings)]
            for index in 0..<rings {
                nodes["ring-ref\(index)"] = String(8 + index * 513)
                nodes["event-channel-\(index)"] = String(20 + index)
            }
            for (key, value) in overrides { nodes[key] = value }
            for (key, value) in nodes {
                if let value { store.set("\(frontend(domid, devid))/\(key)", value) }
            }
        }

        func frontendState(_ state: String, _ domid: UInt32 = 5, _ devid: UInt32 = 0) {
            store.set("\(frontend(domid, devid))/state", state)
            fireFrontendWatch(domid, devid)
        }

        func fireFrontendWatch(_ domid: UInt32 = 5, _ devid: UInt32 = 0) {
            core.handleWatch(path: "\(frontend(domid, devid))/state", token: "pvfs-fe/\(domid)/\(devid)")
        }

        func backendState(_ domid: UInt32 = 5, _ devid: UInt32 = 0) -> String? { store.get("\(backend(domid, devid))/state") }
        func backendError(_ domid: UInt32 = 5, _ devid: UInt32 = 0) -> String? { store.get("\(backend(domid, devid))/error") }

        /// Handles what the core posted (connections released on their own threads) until no
        /// release is pending, as the backend's event loop does.
        @discardableResult
        func settle(timeout: TimeInterval = 5) -> Bool {
            eventually(timeout: timeout) {
                for event in posted.take() { core.handle(event) }
                return core.releasingCount == 0
            }
        }

        func connectDevice(_ domid: UInt32 = 5, _ devid: UInt32 = 0) throws {
            try attach(domid, devid)
            announce(domid, devid)
            frontendState("3", domid, devid)
        }
    }

    @Test func handshakePublishesFeaturesThenConnectsAValidFrontend() throws {
        let h = try Harness()
        try h.core.start()
        #expect(h.store.watches.contains { $0.path == h.root && $0.token == XenBackendCore.backendWatchToken })
        #expect(h.store.watches.contains { $0.path == "@releaseDomain" })
        try h.attach()
        #expect(h.backendState() == "2")
        #expect(h.store.get("\(h.backend())/versions") == "1")
        #expect(h.store.get("\(h.backend())/max-rings") == "8")
        #expect(h.store.get("\(h.backend())/max-ring-page-order") == "9")
        #expect(h.store.watches.contains { $0.path == "\(h.frontend())/state" })

        h.frontendState("1")                // the frontend probing: nothing to do yet
        #expect(h.connector.calls.isEmpty)
        h.announce()
        h.frontendState("3")
        #expect(h.connector.calls.count == 1)
        let call = try #require(h.connector.calls.first)
        #expect(call.rings == [XenRingAnnouncement(index: 0, ref: 8, port: 20), XenRingAnnouncement(index: 1, ref: 521, port: 21)])
        #expect(call.maxOrder == 9)
        #expect(call.frontend.domid == 5)
        #expect(call.frontend.domainName == "guest5")
        #expect(call.frontend.tag == "pvfs-root")
        #expect(call.frontend.path == "vm5")
        #expect(call.frontend.securityModel == "none")
        // The handler's peer holds what dom0 wrote, never the frontend's own nodes.
        #expect(h.peers.all == [NinePPeer(.xen(domainID: 5, deviceID: 0, domainName: "guest5", vm: "vm5", tag: "pvfs-root"),
                                          connectionID: 5 << 32)])
        #expect(h.peers.all.first?.description == "xen domain 5 via xen:5/0 #\(5 << 32)")
        #expect(h.backendState() == "4")
        #expect(h.backendError() == nil)
        #expect(h.core.status.first?.phase == .connected)

        h.frontendState("4")                // the frontend follows: nothing changes
        #expect(h.connector.calls.count == 1)
        #expect(call.connection.disconnects == 0)
    }

    @Test("garbage in the frontend's nodes closes that device only", arguments: [
        ("num-rings", "0", "num-rings"), ("num-rings", "100", "num-rings"), ("num-rings", "two", "num-rings"),
        ("num-rings", "-1", "num-rings"), ("num-rings", "", "num-rings"),
        ("ring-ref0", "abc", "ring-ref0"), ("ring-ref1", "3", "ring-ref1"), ("ring-ref0", "99999999999", "ring-ref0"),
        ("ring-ref1", "8", "ring-ref1"),            // same grant as ring 0
        ("event-channel-0", "0", "event-channel-0"), ("event-channel-1", "20", "event-channel-1"),
        ("event-channel-0", "999999", "event-channel-0"), ("event-channel-1", "0x15", "event-channel-1"),
        ("version", "2", "version"), ("version", "1 ", "version"),
    ] as [(String, String, String)])
    func garbageIsRejected(key: String, value: String, mentioned: String) throws {
        let h = try Harness()
        try h.core.start()
        try h.attach()
        h.announce(overrides: [key: value])
        h.frontendState("3")
        #expect(h.connector.calls.isEmpty)
        #expect(h.backendState() == "6")
        let error = try #require(h.backendError())
        #expect(error.contains(mentioned))
        // The backend goes on serving others.
        try h.connectDevice(6, 0)
        #expect(h.backendState(6, 0) == "4")
        // The failed frontend may start over and succeed.
        h.frontendState("6")
        h.frontendState("1")
        #expect(h.backendState() == "2")
        #expect(h.backendError() == nil)
        h.announce()
        h.frontendState("3")
        #expect(h.backendState() == "4")
    }

    @Test func missingNodesAreRejected() throws {
        let h = try Harness()
        try h.core.start()
        try h.attach()
        h.announce(overrides: ["event-channel-1": nil])
        h.frontendState("3")
        #expect(h.backendState() == "6")
        #expect(h.backendError()?.contains("event-channel-1: missing") == true)
    }

    @Test func mappingFailureClosesTheDeviceWithTheReason() throws {
        let h = try Harness()
        try h.core.start()
        try h.attach()
        h.announce()
        h.connector.nextFailure = XenError.invalid("ring 1: ring_order", "20 is outside 1...9")
        h.frontendState("3")
        #expect(h.backendState() == "6")
        #expect(h.backendError()?.contains("ring_order") == true)
        #expect(h.core.status.first?.phase == .closed)
    }

    @Test func refusalByTheDaemonClosesTheDevice() throws {
        let h = try Harness(refusedTags: ["secret"])
        try h.core.start()
        try h.attach(tag: "secret")
        h.announce()
        h.frontendState("3")
        #expect(h.connector.calls.isEmpty)
        #expect(h.backendState() == "6")
        #expect(h.backendError() == "refused: tag secret not allowed")
    }

    @Test func frontendClosingThenClosedThenReconnecting() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        let connection = try #require(h.connector.calls.first?.connection)
        let handler = try #require(h.connector.calls.first?.handler as? AsyncEchoHandler)
        h.frontendState("5")
        #expect(connection.disconnects == 1)
        #expect(eventually { handler.closed })
        #expect(h.backendState() == "5")
        h.frontendState("6")
        #expect(h.backendState() == "6")
        h.frontendState("1")
        #expect(h.backendState() == "2")
        h.announce()
        h.frontendState("3")
        // The new connection is made once the previous one is released.
        #expect(h.settle())
        #expect(h.connector.calls.count == 2)
        #expect(h.backendState() == "4")
    }

    /// A device whose requests take long to finish is torn down while another domain's device
    /// connects: the other domain's handshake goes on at once, on the same (xenstore) thread.
    @Test func slowTeardownOfOneDeviceDoesNotDelayAnotherDomain() throws {
        final class SlowToClose: NineMessageHandler, @unchecked Sendable {
            let closing = DispatchSemaphore(value: 0)
            let requestsDone = DispatchSemaphore(value: 0)
            private let lock = NSLock()
            private var closedFlag = false
            var maximumMessageSize: Int { Int(UInt32.max) }
            func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                         unanswered: (@Sendable () -> Void)?) {}
            /// Waits for its "running requests", as NinePConnection.close does.
            func close() {
                closing.signal()
                requestsDone.wait()
                lock.withLock { closedFlag = true }
            }
            var closed: Bool { lock.withLock { closedFlag } }
        }
        let slow = SlowToClose()
        let h = try Harness(handlers: { peer in peer.connectionID >> 32 == 5 ? slow as any NineMessageHandler : AsyncEchoHandler() })
        try h.core.start()
        try h.connectDevice(5)
        #expect(h.backendState(5) == "4")
        // The core is single-threaded: drive it from one thread, as the backend's loop does.
        let otherConnected = DispatchSemaphore(value: 0)
        let driver = Thread {
            h.frontendState("5", 5)               // domain 5 closes: its requests are still running
            try? h.connectDevice(6)               // meanwhile domain 6 starts
            if h.backendState(6) == "4" { otherConnected.signal() }
        }
        driver.start()
        #expect(otherConnected.wait(timeout: .now() + 5) == .success)
        #expect(slow.closing.wait(timeout: .now() + 5) == .success)
        // Domain 5's rings went at once; its handler closes when its requests are done.
        #expect(h.connector.calls[0].connection.disconnects == 1)
        #expect(h.backendState(5) == "5")
        #expect(!slow.closed)
        #expect(h.core.releasingCount == 1)
        slow.requestsDone.signal()
        #expect(eventually { slow.closed })
        #expect(h.settle())
        #expect(h.core.releasingCount == 0)
    }

    /// A frontend that reconnects while its previous connection is still finishing requests
    /// waits for it: the new 9P session starts only once the old one is closed.
    @Test func reconnectWaitsForThePreviousConnection() throws {
        final class Closing: NineMessageHandler, @unchecked Sendable {
            let requestsDone = DispatchSemaphore(value: 0)
            var maximumMessageSize: Int { Int(UInt32.max) }
            func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                         unanswered: (@Sendable () -> Void)?) {}
            func close() { requestsDone.wait() }
        }
        let first = Closing()
        let h = try Harness(handlers: { _ in first })
        try h.core.start()
        try h.connectDevice()
        // Driven from one thread, as the backend's loop does; the test thread only watches.
        let reannounced = DispatchSemaphore(value: 0)
        let driver = Thread {
            h.frontendState("1")                  // the frontend restarts
            h.announce()
            h.frontendState("3")
            reannounced.signal()
        }
        driver.start()
        #expect(reannounced.wait(timeout: .now() + 5) == .success)
        #expect(h.backendState() == "2")
        #expect(h.connector.calls.count == 1)     // not yet: the old session is closing
        usleep(50_000)
        for event in h.posted.take() { h.core.handle(event) }
        #expect(h.connector.calls.count == 1)
        first.requestsDone.signal()
        #expect(h.settle())
        #expect(h.connector.calls.count == 2)
        #expect(h.backendState() == "4")
        first.requestsDone.signal()               // the second connection is closed at the end
    }

    @Test func frontendRestartWhileConnectedStartsANewHandshake() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        h.frontendState("1")
        #expect(h.connector.calls[0].connection.disconnects == 1)
        #expect(h.backendState() == "2")
    }

    @Test func garbageFrontendStateClosesTheDevice() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        h.frontendState("banana")
        #expect(h.connector.calls[0].connection.disconnects == 1)
        #expect(h.backendState() == "6")
        h.frontendState("17")
        #expect(h.backendState() == "6")
    }

    @Test func removedBackendDirectoryTearsDownWithoutResurrectingIt() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        try h.store.remove(h.backend(), in: .none)
        h.core.handleWatch(path: h.backend(), token: XenBackendCore.backendWatchToken)
        #expect(h.connector.calls[0].connection.disconnects == 1)
        #expect(h.core.status.isEmpty)
        #expect(!h.store.watches.contains { $0.path.hasPrefix(h.frontend()) })
        // A late frontend event writes nothing back.
        h.frontendState("6")
        #expect(h.store.get(h.backend()) == nil)
        #expect(h.store.get("\(h.backend())/state") == nil)
    }

    @Test func frontendDirectoryVanishingClosesTheDevice() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        try h.store.remove(h.frontend(), in: .none)
        h.fireFrontendWatch()
        #expect(h.connector.calls[0].connection.disconnects == 1)
        #expect(h.backendState() == "6")
    }

    @Test func deadDomainIsUnmappedAtOnce() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        try h.connectDevice(6, 0)
        h.store.liveDomains.remove(5)
        h.core.handleWatch(path: "@releaseDomain", token: XenBackendCore.releaseWatchToken)
        #expect(h.connector.calls[0].connection.disconnects == 1)
        #expect(h.connector.calls[1].connection.disconnects == 0)
        #expect(h.backendState() == "6")
        #expect(h.core.status.first { $0.address.domid == 5 }?.phase == .dead)
        // The toolstack then removes the directories.
        try h.store.remove("\(h.root)/5", in: .none)
        h.core.handleWatch(path: "\(h.root)/5", token: XenBackendCore.backendWatchToken)
        #expect(h.core.status.map(\.address.domid) == [6])
    }

    @Test func toolstackRemovalRequestIsHonoured() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        // libxl's removal: online=0 and state=5 in the backend directory.
        h.store.set("\(h.backend())/online", "0")
        h.store.set("\(h.backend())/state", "5")
        h.core.handleWatch(path: "\(h.backend())/state", token: XenBackendCore.backendWatchToken)
        #expect(h.connector.calls[0].connection.disconnects == 1)
        h.frontendState("6")
        #expect(h.backendState() == "6")
        // No new handshake for a device the toolstack is removing.
        h.frontendState("1")
        #expect(h.backendState() == "6")
    }

    @Test func ourOwnWritesEchoingBackChangeNothing() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        for key in ["state", "versions", "error", "online", "frontend"] {
            h.core.handleWatch(path: "\(h.backend())/\(key)", token: XenBackendCore.backendWatchToken)
        }
        h.core.handleWatch(path: h.root, token: XenBackendCore.backendWatchToken)
        #expect(h.connector.calls.count == 1)
        #expect(h.connector.calls[0].connection.disconnects == 0)
        #expect(h.backendState() == "4")
    }

    @Test func toolstackRecreatingTheDeviceStartsAfresh() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        try XenToolstack.attach(.init(vmName: "vm5b", domid: 5, devid: 1, tag: "t"), store: h.store)
        try h.store.remove(h.backend(), in: .none)
        try h.store.remove(h.frontend(), in: .none)
        try h.attach(5, 0, notify: false)
        h.core.handleWatch(path: "\(h.backend())/state", token: XenBackendCore.backendWatchToken)
        #expect(h.connector.calls[0].connection.disconnects == 1)
        #expect(h.backendState() == "2")
    }

    @Test func adoptsAConnectedDeviceAsALostSession() throws {
        let h = try Harness()
        try h.attach(notify: false)
        h.announce()
        h.store.set("\(h.frontend())/state", "4")
        h.store.set("\(h.backend())/state", "4")
        try h.core.start()
        let call = try #require(h.connector.calls.first)
        #expect(call.handler is NineLostSessionHandler)
        #expect(h.backendState() == "4")
        #expect(h.backendError()?.contains("session lost") == true)
        #expect(h.core.status.first?.phase == .lostSession)
        // Every request is answered with EIO instead of hanging.
        final class Box: @unchecked Sendable { var reply: [UInt8] = [] }
        let box = Box()
        call.handler.receive(nineMessage(type: 110, tag: 42, payload: [1, 2, 3]), runInline: true,
                             reply: { box.reply = $0 }, unanswered: nil)
        #expect(box.reply == NinePResponse.error(errno: 5).encode(tag: 42))
        // Closing still works as usual.
        h.frontendState("5")
        #expect(h.backendState() == "5")
    }

    @Test func adoptsAHalfDoneHandshake() throws {
        let h = try Harness()
        try h.attach(notify: false)
        h.store.set("\(h.backend())/state", "2")
        h.announce()
        h.store.set("\(h.frontend())/state", "3")
        try h.core.start()
        #expect(h.connector.calls.count == 1)
        #expect(h.connector.calls[0].handler is AsyncEchoHandler)
        #expect(h.backendState() == "4")
    }

    @Test func adoptsClosingAndClosedDevices() throws {
        let h = try Harness()
        try h.attach(5, 0, notify: false)
        h.store.set("\(h.backend(5, 0))/state", "5")
        h.store.set("\(h.frontend(5, 0))/state", "6")
        try h.attach(6, 0, notify: false)
        h.store.set("\(h.backend(6, 0))/state", "6")
        h.store.set("\(h.frontend(6, 0))/state", "6")
        try h.core.start()
        #expect(h.backendState(5, 0) == "6")
        #expect(h.backendState(6, 0) == "6")
        #expect(h.connector.calls.isEmpty)
        h.frontendState("1", 6, 0)
        #expect(h.backendState(6, 0) == "2")
    }

    @Test func adoptedConnectedDeviceWhoseFrontendRestartedGetsAHandshake() throws {
        let h = try Harness()
        try h.attach(notify: false)
        h.store.set("\(h.backend())/state", "4")
        h.store.set("\(h.frontend())/state", "1")
        try h.core.start()
        #expect(h.connector.calls.isEmpty)
        #expect(h.backendState() == "2")
    }

    @Test func shutdownClosesConnectedDevicesAndHandsBackWaitingOnes() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice(5, 0)
        try h.attach(6, 0)
        #expect(h.backendState(6, 0) == "2")
        #expect(h.core.beginShutdown())
        #expect(h.connector.calls[0].connection.disconnects == 1)
        #expect(h.backendState(5, 0) == "5")
        #expect(h.backendError(5, 0)?.contains("backend stopped") == true)
        #expect(h.backendState(6, 0) == "1")
        #expect(!h.core.shutdownSettled)
        h.frontendState("6", 5, 0)
        #expect(h.backendState(5, 0) == "6")
        #expect(h.core.shutdownSettled)
        // No new handshake while stopping.
        h.frontendState("1", 5, 0)
        #expect(h.backendState(5, 0) == "6")
        h.core.finishShutdown()
        #expect(h.store.watches.isEmpty)
    }

    @Test func ringFailureIsReportedInTheErrorNode() throws {
        let h = try Harness()
        try h.core.start()
        try h.connectDevice()
        let call = try #require(h.connector.calls.first)
        call.onRingFailure(1, XenError(kind: .protocolViolation, call: "request header", detail: "size 3 is smaller than the header"))
        for event in h.posted.take() { h.core.handle(event) }
        #expect(h.backendError() == "ring 1 stopped: request header: size 3 is smaller than the header")
        #expect(h.backendState() == "4")
        #expect(h.core.status.first?.failedRings == [1])
        // A failure from a connection that no longer exists is ignored.
        h.frontendState("1")
        h.announce()
        h.frontendState("3")
        call.onRingFailure(0, XenError(kind: .protocolViolation, call: "old"))
        for event in h.posted.take() { h.core.handle(event) }
        #expect(h.backendError() == nil)
    }

    @Test func misconfiguredBackendNodesAreRefused() throws {
        let h = try Harness()
        try h.core.start()
        try h.attach(notify: false)
        h.store.set("\(h.backend())/frontend", "/local/domain/6/device/9pfs/0")
        h.core.handleWatch(path: h.backend(), token: XenBackendCore.backendWatchToken)
        #expect(h.backendState() == "6")
        #expect(h.backendError()?.contains("is not /local/domain/5/device/9pfs/0") == true)
        #expect(!h.store.watches.contains { $0.path.hasPrefix("/local/domain/6") })
    }

    @Test func ignoresDirectoriesThatAreNotGuests() throws {
        let h = try Harness()
        h.store.set("\(h.root)/0/0/frontend", "/local/domain/0/device/9pfs/0")
        h.store.set("\(h.root)/0/0/state", "1")
        h.store.set("\(h.root)/65535/0/state", "1")
        h.store.set("\(h.root)/abc/0/state", "1")
        h.store.set("\(h.root)/7/x/state", "1")
        try h.core.start()
        #expect(h.core.status.isEmpty)
    }

    @Test func partiallyWrittenDevicesWaitForTheRest() throws {
        let h = try Harness()
        try h.core.start()
        h.store.set("\(h.backend())/frontend", h.frontend())
        h.core.handleWatch(path: "\(h.backend())/frontend", token: XenBackendCore.backendWatchToken)
        #expect(h.core.status.isEmpty)
        h.store.set("\(h.backend())/state", "1")
        h.core.handleWatch(path: "\(h.backend())/state", token: XenBackendCore.backendWatchToken)
        #expect(h.backendState() == "2")
    }

    @Test func conflictingTransactionsAreRetried() throws {
        let h = try Harness()
        try h.core.start()
        h.store.conflictingCommits = 3
        try h.attach()
        #expect(h.backendState() == "2")
    }

    @Test func configurationIsValidated() throws {
        #expect(throws: XenError.self) { try Harness { $0.maxRingPageOrder = 10 } }
        #expect(throws: XenError.self) { try Harness { $0.maxRings = 0 } }
        let h = try Harness { $0.maxRings = 2; $0.maxRingPageOrder = 4 }
        try h.core.start()
        try h.attach()
        #expect(h.store.get("\(h.backend())/max-rings") == "2")
        #expect(h.store.get("\(h.backend())/max-ring-page-order") == "4")
        h.announce(rings: 3)
        h.frontendState("3")
        #expect(h.backendError()?.contains("num-rings: 3 is outside 1...2") == true)
    }
}
