import CPVFSTransportIO
import Foundation
import Glibc
import PVFSFuseCodec
import Synchronization
import Testing
@testable import PVFSEngine
@testable import PVFSFuseServer
@testable import PVFSVhostUser

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// A counter threads and closures can share.
final class SharedCounter: Sendable {
    private let value = Atomic<Int>(0)
    func increment() -> Int { value.wrappingAdd(1, ordering: .relaxed).newValue }
    var count: Int { value.load(ordering: .relaxed) }
}

/// A VM served over a vhost-user device to a simulated guest.
final class VirtioFSHarness {
    let vm: ServedFuseVM
    let loop: EpollEventLoop
    let guest: SimulatedGuest
    let device: VhostUserFsDevice
    let closings = SharedCounter()

    init(start: Bool = true, seal: Bool = true, limits: VhostUserFsDevice.Limits = VhostUserFsDevice.Limits(),
         configuration: FuseServerConfiguration = .guest()) throws {
        vm = try ServedFuseVM(configuration: configuration, initialise: false)
        loop = try EpollEventLoop(logger: testLogger)
        guest = try SimulatedGuest(seal: seal)
        let closings = self.closings
        device = try VhostUserFsDevice(socket: guest.backendSocket, sources: loop, handler: vm.server, limits: limits, logger: testLogger) {
            _ = closings.increment()
        }
        if start { try guest.start() }
    }

    deinit {
        device.close(reason: "test over")
        loop.shutdown()
    }

    /// INIT as Linux 6.1's virtio-fs sends it.
    func initialise() -> FuseTestReply? {
        guest.fuse(.initialise(FuseInitIn(major: 7, minor: 38, maxReadahead: 131072, flags: FuseTestClient.linux61Flags)), node: 0, replySize: 80)
    }

    func waitClosed() -> Bool {
        for _ in 0..<500 {
            if closings.count > 0 { return true }
            usleep(10_000)
        }
        return false
    }
}

@Suite("vhost-user: the message codec")
struct VhostUserCodecTests {
    @Test("messages encode as QEMU sends them and decode back")
    func roundTrip() throws {
        let messages: [VhostUserMessage] = [
            .getFeatures, .setFeatures(0x1_7000_0000), .setOwner, .resetOwner,
            .setMemoryTable([VhostUserMemoryRegion(guestAddress: 0, size: 0xa0000, userAddress: 0x7f00_0000_0000, mmapOffset: 0),
                             VhostUserMemoryRegion(guestAddress: 0xc0000, size: 0x3ff40000, userAddress: 0x7f00_000c_0000, mmapOffset: 0xc0000)]),
            .setVringNumber(index: 1, number: 1024), .setVringBase(index: 1, base: 7), .getVringBase(index: 1),
            .setVringAddress(VhostUserVringAddress(index: 1, descriptorTable: 0x1000, usedRing: 0x3000, availableRing: 0x2000)),
            .setVringKick(index: 1, hasDescriptor: true), .setVringCall(index: 0, hasDescriptor: false), .setVringError(index: 1, hasDescriptor: true),
            .getProtocolFeatures, .setProtocolFeatures(9), .getQueueNumber, .setVringEnable(index: 1, enable: true), .resetDevice,
        ]
        for message in messages {
            let encoded = message.encode()
            let header = try #require(VhostUserHeader.decode(encoded))
            #expect(header.flags == 1 && Int(header.size) == encoded.count - 12)
            #expect(try VhostUserMessage.decode(header, Array(encoded[12...])) == message)
        }
        // SET_VRING_ADDR's payload order is desc, used, avail.
        let addr = VhostUserMessage.setVringAddress(VhostUserVringAddress(index: 2, flags: 0, descriptorTable: 0x11, usedRing: 0x22, availableRing: 0x33)).encode()
        #expect(Array(addr[12..<20]) == [2, 0, 0, 0, 0, 0, 0, 0])
        #expect(addr[20] == 0x11 && addr[28] == 0x22 && addr[36] == 0x33)
        // A vring descriptor message without a descriptor sets bit 8.
        #expect(Array(VhostUserMessage.setVringCall(index: 3, hasDescriptor: false).encode()[12...]) == [3, 1, 0, 0, 0, 0, 0, 0])
        #expect(vhostUserReply(1, [7]) == [1, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 7])
    }

    @Test("wrong sizes, versions and flags are protocol errors")
    func malformed() {
        func fails(_ request: UInt32, _ payload: [UInt8], flags: UInt32 = 1) -> Bool {
            (try? VhostUserMessage.decode(VhostUserHeader(request: request, flags: flags, size: UInt32(payload.count)), payload)) == nil
        }
        #expect(fails(2, [1, 2, 3]))                        // SET_FEATURES of 3 bytes
        #expect(fails(3, [0]))                              // SET_OWNER with a payload
        #expect(fails(8, [0, 0, 0, 0]))                     // SET_VRING_NUM short
        #expect(fails(9, [UInt8](repeating: 0, count: 39))) // SET_VRING_ADDR short
        #expect(fails(12, le(UInt64(1 << 9))))              // unknown vring flag
        #expect(fails(18, le(UInt32(0)) + le(UInt32(2))))   // enable 2
        #expect(fails(5, le(UInt32(0)) + le(UInt32(0))))    // no regions
        #expect(fails(5, le(UInt32(9)) + le(UInt32(0)) + [UInt8](repeating: 0, count: 9 * 32)))  // nine regions
        #expect(fails(5, le(UInt32(2)) + le(UInt32(0)) + [UInt8](repeating: 0, count: 32)))       // fewer than it says
        #expect(fails(1, [], flags: 2))                     // version 2
        #expect((try? VhostUserMessage.decode(VhostUserHeader(request: 24, flags: 1, size: 0), [])) == .unsupported(request: 24))
        #expect((try? VhostUserMessage.decode(VhostUserHeader(request: 999, flags: 1, size: 0), [])) == .unsupported(request: 999))
    }
}

@Suite("vhost-user-fs: a simulated guest over real queues", .serialized)
struct VhostUserDeviceTests {
    @Test("the front-end's setup, then FUSE requests on the request queue")
    func requests() throws {
        let h = try VirtioFSHarness()
        let initReply = try #require(h.initialise())
        #expect(initReply.error == 0)
        let out = try #require(initReply.decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseInitOut.decode(&r) })
        #expect(out.minor == 38 && out.flags.contains(.posixLocks) && !out.flags.contains(.writebackCache))
        let etc = try #require(h.guest.fuse(.lookup(name: bytes("etc")))?.entry)
        #expect(etc.nodeID == 2)
        let hostname = try #require(h.guest.fuse(.lookup(name: bytes("hostname")), node: 2, split: true)?.entry)
        let fh = try #require(h.guest.fuse(.open(flags: 0, openFlags: 0), node: hostname.nodeID)?.open?.handle)
        let read = try #require(h.guest.fuse(.read(FuseReadIn(handle: fh, offset: 0, size: 4096)), node: hostname.nodeID, split: true))
        #expect(read.payload == bytes("template-host\n"))
        // The whole big file through indirect tables, READ data straight into the guest's buffers.
        _ = try #require(h.guest.fuse(.lookup(name: bytes("big")))?.entry)
        let big = try #require(h.guest.fuse(.open(flags: 0, openFlags: 0), node: 8)?.open?.handle)
        var content: [UInt8] = []
        while content.count < FuseServerFixture.bigSize {
            let piece = try #require(h.guest.fuse(.read(FuseReadIn(handle: big, offset: UInt64(content.count), size: 65536)), node: 8,
                                                  replySize: 65536 + 16, indirect: true, split: true))
            if piece.payload.isEmpty { break }
            content += piece.payload
        }
        #expect(content == FuseServerFixture.bigContent())
        // A WRITE whose data spans buffers.
        let created = try #require(h.guest.fuse(.create(FuseCreateIn(flags: UInt32(O_RDWR | O_CREAT), mode: 0o100644), name: bytes("new")), replySize: 200))
        let (entry, open) = try #require(created.decode { (r: inout FuseReader) throws(FuseDecodeError) in (try FuseEntryOut.decode(&r), try FuseOpenOut.decode(&r)) })
        let data = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 * 13) }
        let written = try #require(h.guest.fuse(.write(FuseWriteIn(handle: open.handle, offset: 0, size: 0), dataOffset: 0), node: entry.nodeID,
                                                data: data, split: true))
        #expect(written.u32 == 100_000)
        let back = try #require(h.guest.fuse(.read(FuseReadIn(handle: open.handle, offset: 0, size: 100_000)), node: entry.nodeID, replySize: 100_016))
        #expect(back.payload == data)
        #expect(h.vm.volume.name == "vm1")
    }

    @Test("FORGET on the high-priority queue: the chain comes back with nothing written")
    func forgetOnHiprio() throws {
        let h = try VirtioFSHarness()
        _ = try #require(h.initialise())
        _ = try #require(h.guest.fuse(.lookup(name: bytes("etc")))?.entry)
        #expect(h.vm.server.heldNodes == 1)
        let request = FuseRequest.forget(count: 1).encode(unique: 99, nodeID: 2)
        let (head, _) = h.guest.post(0, readable: [request], writable: [])
        h.guest.makeAvailable(0, head: head)
        h.guest.kick(0)
        let used = h.guest.waitForUsed(0)
        #expect(used.count == 1 && used.first?.id == UInt32(head) && used.first?.length == 0)
        #expect(h.vm.server.heldNodes == 0)
    }

    @Test("a reply larger than the guest's buffer becomes an error that fits")
    func smallReplyBuffer() throws {
        let h = try VirtioFSHarness()
        _ = try #require(h.initialise())
        let reply = try #require(h.guest.fuse(.lookup(name: bytes("etc")), replySize: 32))
        #expect(reply.errno == .outOfRange)
        // And the session goes on.
        #expect(h.guest.fuse(.getattr(flags: 0, handle: 0))?.error == 0)
    }

    @Test("GET_VRING_BASE stops a ring and says where to start again; the ring restarts there")
    func stopAndRestart() throws {
        let h = try VirtioFSHarness()
        _ = try #require(h.initialise())
        _ = try #require(h.guest.fuse(.getattr(flags: 0, handle: 0)))
        h.guest.send(.getVringBase(index: 1))
        let (_, payload) = try #require(h.guest.receive())
        #expect(payload == le(UInt32(1)) + le(UInt32(h.guest.availableIndex[1])))
        // A request made available while stopped waits until the ring runs again.
        h.guest.unique += 1
        let request = FuseRequest.getattr(flags: 0, handle: 0).encode(unique: h.guest.unique, nodeID: 1)
        let (head, _) = h.guest.post(1, readable: [request], writable: [200])
        h.guest.makeAvailable(1, head: head)
        #expect(h.guest.takeUsed(1).isEmpty)
        usleep(100_000)
        #expect(h.guest.takeUsed(1).isEmpty)
        try h.guest.startQueue(1, base: UInt16(truncatingIfNeeded: le32(payload, 4)))
        let used = h.guest.waitForUsed(1)
        #expect(used.contains { $0.id == UInt32(head) })
        #expect(h.guest.fuse(.statfs)?.error == 0)
    }

    @Test("hostile chains stop their queue, touch nothing outside guest memory, and leave the other queue serving")
    func hostileChains() throws {
        typealias Setup = (SimulatedGuest) -> UInt16
        let q = 1
        let cases: [(String, Setup)] = [
            ("buffer outside memory", { g in
                let head = g.takeDescriptors(q, 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: 0x7000_0000_0000, length: 4096, flags: 0, next: 0)
                return head
            }),
            ("buffer running past the end of memory", { g in
                let head = g.takeDescriptors(q, 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: g.guestAddress(g.memorySize - 100), length: 4096, flags: 0, next: 0)
                return head
            }),
            ("address wrapping around", { g in
                let head = g.takeDescriptors(q, 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: UInt64.max - 10, length: 100, flags: 0, next: 0)
                return head
            }),
            ("a loop of descriptors", { g in
                let head = g.takeDescriptors(q, 2)
                let a = g.allocate(64)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: g.guestAddress(a), length: 8, flags: SplitVirtqueue.flagNext, next: head + 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head) + 1, address: g.guestAddress(a), length: 8, flags: SplitVirtqueue.flagNext, next: head)
                return head
            }),
            ("next beyond the table", { g in
                let head = g.takeDescriptors(q, 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: g.guestAddress(g.allocate(64)), length: 8,
                                  flags: SplitVirtqueue.flagNext, next: 4000)
                return head
            }),
            ("readable after writable", { g in
                let head = g.takeDescriptors(q, 2)
                let a = g.allocate(64)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: g.guestAddress(a), length: 8,
                                  flags: SplitVirtqueue.flagNext | SplitVirtqueue.flagWrite, next: head + 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head) + 1, address: g.guestAddress(a), length: 8, flags: 0, next: 0)
                return head
            }),
            ("nested indirect tables", { g in
                let inner = g.allocate(16)
                let outer = g.allocate(16)
                g.writeDescriptor(table: inner, 0, address: g.guestAddress(g.allocate(64)), length: 8, flags: 0, next: 0)
                g.writeDescriptor(table: outer, 0, address: g.guestAddress(inner), length: 16, flags: SplitVirtqueue.flagIndirect, next: 0)
                let head = g.takeDescriptors(q, 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: g.guestAddress(outer), length: 16, flags: SplitVirtqueue.flagIndirect, next: 0)
                return head
            }),
            ("an indirect table of odd length", { g in
                let head = g.takeDescriptors(q, 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: g.guestAddress(g.allocate(64)), length: 20,
                                  flags: SplitVirtqueue.flagIndirect, next: 0)
                return head
            }),
            ("an indirect table outside memory", { g in
                let head = g.takeDescriptors(q, 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: 0xdead_0000, length: 64, flags: SplitVirtqueue.flagIndirect, next: 0)
                return head
            }),
            ("a chain larger than any request", { g in
                let head = g.takeDescriptors(q, 1)
                g.writeDescriptor(table: g.descriptorOffset(q), Int(head), address: g.guestAddress(0), length: UInt32(g.memorySize), flags: 0, next: 0)
                return head
            }),
        ]
        for (name, setup) in cases {
            let h = try VirtioFSHarness()
            _ = try #require(h.initialise())
            let head = setup(h.guest)
            h.guest.makeAvailable(q, head: head)
            h.guest.kick(q)
            #expect(h.guest.errorSignalled(q), "\(name): no error signalled")
            #expect(h.guest.takeUsed(q).isEmpty, "\(name): a used entry appeared")
            // The high-priority queue still serves.
            let forget = FuseRequest.forget(count: 1).encode(unique: 5, nodeID: 1)
            let (fh, _) = h.guest.post(0, readable: [forget], writable: [])
            h.guest.makeAvailable(0, head: fh)
            h.guest.kick(0)
            #expect(h.guest.waitForUsed(0).count == 1, "\(name): the other queue stopped too")
            #expect(h.closings.count == 0)
        }
        // Indices: an available index far ahead, a head beyond the table.
        let h = try VirtioFSHarness()
        h.guest.store16(h.guest.availableOffset(q) + 2, 500)
        h.guest.kick(q)
        #expect(h.guest.errorSignalled(q))
        let h2 = try VirtioFSHarness()
        h2.guest.makeAvailable(q, head: 300)
        h2.guest.kick(q)
        #expect(h2.guest.errorSignalled(q))
    }

    @Test("memory that could shrink, malformed messages and unserved requests end the session")
    func protocolErrors() throws {
        let unsealed = try VirtioFSHarness(start: false, seal: false)
        #expect(throws: (any Error).self) { try unsealed.guest.start() }
        #expect(unsealed.waitClosed())

        let short = try VirtioFSHarness(start: false)
        short.guest.sendRaw(VhostUserHeader(request: 2, flags: 1, size: 4).bytes + [0, 0, 0, 0])
        #expect(short.waitClosed())

        let huge = try VirtioFSHarness(start: false)
        huge.guest.sendRaw(VhostUserHeader(request: 2, flags: 1, size: 1 << 20).bytes)
        #expect(huge.waitClosed())

        let noFD = try VirtioFSHarness(start: false)
        noFD.guest.send(.setVringKick(index: 1, hasDescriptor: true))
        #expect(noFD.waitClosed())

        let log = try VirtioFSHarness(start: false)
        log.guest.send(.unsupported(request: 6))
        #expect(log.waitClosed())

        let queue = try VirtioFSHarness(start: false)
        queue.guest.send(.setVringNumber(index: 40, number: 128))
        #expect(queue.waitClosed())

        let size = try VirtioFSHarness(start: false)
        size.guest.send(.setVringNumber(index: 1, number: 100))
        #expect(size.waitClosed())

        let features = try VirtioFSHarness(start: false)
        features.guest.send(.setFeatures(VirtioFeature.version1 | (1 << 34)))
        #expect(features.waitClosed())

        // An extra descriptor with a message that takes none.
        let extra = try VirtioFSHarness(start: false)
        extra.guest.send(.setOwner, fds: [extra.guest.kicks[0]])
        #expect(extra.waitClosed())
        #expect(extra.vm.server.negotiation == nil)
    }

    @Test("the front-end going away mid-wait ends the FUSE session: locks released, waits cancelled")
    func frontEndGone() throws {
        let h = try VirtioFSHarness()
        _ = try #require(h.initialise())
        let other = h.vm.session()
        let (file, oh) = try #require(other.create(1, "locked"))
        let lock = FuseLockIn(handle: oh.handle, owner: 1, lock: FuseFileLock(start: 0, end: UInt64(Int64.max), type: 1, pid: 1))
        #expect(other.call(.setlk(lock, wait: false), node: file.nodeID).error == 0)
        _ = try #require(h.guest.fuse(.lookup(name: bytes("locked")))?.entry)
        let fh = try #require(h.guest.fuse(.open(flags: UInt32(O_RDWR), openFlags: 0), node: file.nodeID)?.open?.handle)
        let wait = FuseLockIn(handle: fh, owner: 2, lock: FuseFileLock(start: 0, end: 10, type: 1, pid: 2))
        h.guest.unique += 1
        let (head, _) = h.guest.post(1, readable: [FuseRequest.setlk(wait, wait: true).encode(unique: h.guest.unique, nodeID: file.nodeID)], writable: [64])
        h.guest.makeAvailable(1, head: head)
        h.guest.kick(1)
        for _ in 0..<100 where h.vm.server.waitingLocks == 0 { usleep(10_000) }
        #expect(h.vm.server.waitingLocks == 1)
        shutdown(h.guest.socket, Int32(SHUT_RDWR))
        #expect(h.waitClosed())
        for _ in 0..<300 where h.vm.server.waitingLocks != 0 { usleep(10_000) }
        #expect(h.vm.server.waitingLocks == 0 && h.vm.server.openHandles == 0)
        // The other session's lock is untouched.
        #expect(h.vm.volume.locks.recordCount == 1)
    }

    @Test("the listener serves one front-end at a time and the next one after it")
    func listener() throws {
        let vm = try ServedFuseVM(initialise: false)
        let loop = try EpollEventLoop(logger: testLogger)
        defer { loop.shutdown() }
        let path = vm.fixture.directory + "/vhost.sock"
        let sessions = SharedCounter()
        let volume = vm.volume
        let listener = try VhostUserFsListener(path: path, sources: loop, logger: testLogger) {
            let id = sessions.increment()
            return FuseServer(view: VMView(volume: volume, policy: SessionPolicy(side: .guest, permissionChecks: .hostKernel),
                                           sessionID: UInt64(100 + id)), configuration: .guest(), logger: testLogger)
        }
        defer { listener.close() }
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        func connect() -> Int32 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                let b = Array(path.utf8)
                raw.copyBytes(from: b)
                raw[b.count] = 0
            }
            let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            precondition(rc == 0)
            return fd
        }
        func features(_ fd: Int32) -> [UInt8]? {
            let request = VhostUserMessage.getFeatures.encode()
            // MSG_NOSIGNAL: a front-end turned away finds its socket closed (EPIPE, not SIGPIPE).
            _ = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 3000) == 1 else { return nil }
            var reply = [UInt8](repeating: 0, count: 20)
            let n = reply.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, 20, Int32(MSG_WAITALL)) }
            return n == 20 ? reply : nil
        }
        let first = connect()
        #expect(features(first) != nil)
        let second = connect()
        #expect(features(second) == nil, "a second front-end was served")
        Glibc.close(second)
        Glibc.close(first)
        for _ in 0..<300 where listener.servedDevice != nil { usleep(10_000) }
        let third = connect()
        #expect(features(third) != nil)
        Glibc.close(third)
        #expect(sessions.count == 2)
    }
}
