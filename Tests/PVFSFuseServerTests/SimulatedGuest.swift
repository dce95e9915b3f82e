import CPVFSTransportIO
import Foundation
import Glibc
import PVFSFuseCodec
@testable import PVFSVhostUser

/// A vhost-user front-end and guest driver in one, as QEMU 7.2 and Linux's virtio-fs would be:
/// guest memory is a sealed memfd mapped here too, the rings are laid out in it, the control
/// messages go over a socketpair, and kicks and calls are eventfds.
///
///     guest 0x100000 + q * 0x10000   queue q: descriptors, available ring (+0x4000), used ring (+0x8000)
///     guest 0x100000 + 0x80000 ...   request and reply buffers
final class SimulatedGuest {
    let memfd: Int32
    let memory: UnsafeMutableRawPointer
    let memorySize: Int
    let guestBase: UInt64 = 0x10_0000
    let socket: Int32
    /// The backend's end, for the device.
    let backendSocket: Int32
    let queueSize: UInt16
    var kicks: [Int32] = []
    var calls: [Int32] = []
    var errors: [Int32] = []
    var availableIndex: [UInt16]
    var lastUsed: [UInt16]
    private var nextDescriptor: [UInt16]
    private var dataCursor = 0x80000
    var unique: UInt64 = 1

    /// `path`: connect to a listening backend there (as QEMU's chardev does) instead of handing
    /// the backend a socketpair end (`backendSocket` is then -1).
    init(queues: Int = 2, queueSize: UInt16 = 128, memorySize: Int = 8 << 20, seal: Bool = true, path: String? = nil) throws {
        self.queueSize = queueSize
        self.memorySize = memorySize
        memfd = cpvfs_memfd("guest")
        guard memfd >= 0, ftruncate(memfd, off_t(memorySize)) == 0 else { throw VhostUserProtocolError("memfd") }
        if seal { _ = cpvfs_add_seals(memfd, CPVFS_SEAL_SHRINK | CPVFS_SEAL_GROW) }
        guard let m = mmap(nil, memorySize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0), m != MAP_FAILED else {
            throw VhostUserProtocolError("mmap")
        }
        memory = m
        var fds: [Int32] = [0, 0]
        if let path {
            fds = [Self.connect(path), -1]
            guard fds[0] >= 0 else { throw VhostUserProtocolError("cannot connect to \(path)") }
        } else {
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
                throw VhostUserProtocolError("socketpair")
            }
        }
        socket = fds[0]
        backendSocket = fds[1]
        availableIndex = Array(repeating: 0, count: queues)
        lastUsed = Array(repeating: 0, count: queues)
        nextDescriptor = Array(repeating: 0, count: queues)
        for _ in 0..<queues {
            kicks.append(cpvfs_eventfd(0))
            calls.append(cpvfs_eventfd(0))
            errors.append(cpvfs_eventfd(0))
        }
    }

    deinit {
        munmap(memory, memorySize)
        Glibc.close(memfd)
        Glibc.close(socket)
        for fd in kicks + calls + errors { Glibc.close(fd) }
    }

    static func connect(_ path: String) -> Int32 {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let b = Array(path.utf8)
            raw.copyBytes(from: b)
            raw[b.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 { Glibc.close(fd); return -1 }
        return fd
    }

    /// The front-end dies (QEMU killed): its end of the control socket goes, nothing else.
    func hangUp() {
        shutdown(socket, Int32(SHUT_RDWR))
    }

    // MARK: Addresses

    func queueOffset(_ q: Int) -> Int { q * 0x10000 }
    func descriptorOffset(_ q: Int) -> Int { queueOffset(q) }
    func availableOffset(_ q: Int) -> Int { queueOffset(q) + 0x4000 }
    func usedOffset(_ q: Int) -> Int { queueOffset(q) + 0x8000 }
    /// The front-end's "virtual address" of guest memory: this process's mapping.
    var userBase: UInt64 { UInt64(UInt(bitPattern: memory)) }
    func guestAddress(_ offset: Int) -> UInt64 { guestBase + UInt64(offset) }

    func allocate(_ size: Int) -> Int {
        let offset = dataCursor
        dataCursor += (size + 63) & ~63
        if dataCursor > memorySize - (1 << 20) { dataCursor = 0x80000 }
        return offset
    }

    func store16(_ offset: Int, _ v: UInt16) { memory.storeBytes(of: v, toByteOffset: offset, as: UInt16.self) }
    func store32(_ offset: Int, _ v: UInt32) { memory.storeBytes(of: v, toByteOffset: offset, as: UInt32.self) }
    func store64(_ offset: Int, _ v: UInt64) { memory.storeBytes(of: v, toByteOffset: offset, as: UInt64.self) }
    func load16(_ offset: Int) -> UInt16 { memory.loadUnaligned(fromByteOffset: offset, as: UInt16.self) }
    func load32(_ offset: Int) -> UInt32 { memory.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }

    // MARK: Control messages

    func send(_ message: VhostUserMessage, fds: [Int32] = [], needReply: Bool = false) {
        let bytes = message.encode(flags: VhostUser.version | (needReply ? VhostUser.needReplyFlag : 0))
        sendRaw(bytes, fds: fds)
    }

    func sendRaw(_ bytes: [UInt8], fds: [Int32] = []) {
        let n = bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer { cpvfs_send_with_fds(socket, raw.baseAddress, raw.count, $0.baseAddress, Int32($0.count)) }
        }
        // A backend that hung up fails the send (MSG_NOSIGNAL: EPIPE); the reply the test then
        // waits for does not come, and its expectation says so. A trap here would end every test.
        sendFailures += n == bytes.count ? 0 : 1
    }

    /// Control messages that could not be sent whole.
    private(set) var sendFailures = 0

    /// The next reply (header and payload), or nil when none came within `timeout`.
    func receive(timeout: Int32 = 5000) -> (VhostUserHeader, [UInt8])? {
        var header = [UInt8](repeating: 0, count: VhostUser.headerSize)
        guard readExactly(&header, timeout: timeout), let h = VhostUserHeader.decode(header) else { return nil }
        var payload = [UInt8](repeating: 0, count: Int(h.size))
        guard h.size == 0 || readExactly(&payload, timeout: timeout) else { return nil }
        return (h, payload)
    }

    private func readExactly(_ buffer: inout [UInt8], timeout: Int32) -> Bool {
        var done = 0
        while done < buffer.count {
            var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeout) == 1 else { return false }
            let n = buffer.withUnsafeMutableBytes { Glibc.recv(socket, $0.baseAddress! + done, $0.count - done, 0) }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// Whether the backend closed its end (EOF within `timeout`).
    func backendHungUp(timeout: Int32 = 5000) -> Bool {
        var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeout) == 1 else { return false }
        var byte: UInt8 = 0
        return Glibc.recv(socket, &byte, 1, Int32(MSG_DONTWAIT)) == 0
    }

    func u64Reply(_ message: VhostUserMessage) -> UInt64? {
        send(message)
        guard let (_, payload) = receive(), payload.count == 8 else { return nil }
        return payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    /// What QEMU 7.2's vhost-user-fs does from connect to a running device.
    func start(features: UInt64 = VirtioFeature.version1 | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
                   | VirtioFeature.protocolFeatures) throws {
        guard let offered = u64Reply(.getFeatures), offered & features == features else { throw VhostUserProtocolError("features") }
        guard let protocolFeatures = u64Reply(.getProtocolFeatures) else { throw VhostUserProtocolError("protocol features") }
        send(.setProtocolFeatures(protocolFeatures & (VhostUserProtocolFeature.multipleQueues | VhostUserProtocolFeature.replyAck)))
        guard let queues = u64Reply(.getQueueNumber), queues >= UInt64(kicks.count) else { throw VhostUserProtocolError("queue number") }
        send(.setOwner)
        send(.setFeatures(features))
        send(.setMemoryTable([VhostUserMemoryRegion(guestAddress: guestBase, size: UInt64(memorySize), userAddress: userBase, mmapOffset: 0)]),
             fds: [memfd], needReply: true)
        guard let (_, ack) = receive(), ack == [UInt8](repeating: 0, count: 8) else { throw VhostUserProtocolError("memory table not acknowledged") }
        for q in 0..<kicks.count { try startQueue(q) }
    }

    func startQueue(_ q: Int, base: UInt16 = 0) throws {
        send(.setVringNumber(index: UInt32(q), number: UInt32(queueSize)))
        send(.setVringBase(index: UInt32(q), base: UInt32(base)))
        send(.setVringAddress(VhostUserVringAddress(index: UInt32(q), descriptorTable: userBase + UInt64(descriptorOffset(q)),
                                                    usedRing: userBase + UInt64(usedOffset(q)),
                                                    availableRing: userBase + UInt64(availableOffset(q)))))
        send(.setVringError(index: UInt32(q), hasDescriptor: true), fds: [errors[q]])
        send(.setVringKick(index: UInt32(q), hasDescriptor: true), fds: [kicks[q]])
        send(.setVringCall(index: UInt32(q), hasDescriptor: true), fds: [calls[q]])
        send(.setVringEnable(index: UInt32(q), enable: true), needReply: true)
        guard let (_, ack) = receive(), ack.count == 8 else { throw VhostUserProtocolError("enable not acknowledged") }
    }

    // MARK: The guest's driver

    /// Writes descriptor `index` of queue `q` (or of the table at `table`).
    func writeDescriptor(table: Int, _ index: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let d = table + 16 * index
        store64(d, address)
        store32(d + 8, length)
        store16(d + 12, flags)
        store16(d + 14, next)
    }

    /// Puts `head` on the available ring (without kicking).
    func makeAvailable(_ q: Int, head: UInt16) {
        let slot = Int(availableIndex[q] % queueSize)
        store16(availableOffset(q) + 4 + 2 * slot, head)
        availableIndex[q] &+= 1
        __atomic_thread_fence_release()
        store16(availableOffset(q) + 2, availableIndex[q])
    }

    func kick(_ q: Int) {
        var one: UInt64 = 1
        _ = Glibc.write(kicks[q], &one, 8)
    }

    /// A chain of readable buffers, then writable ones, in fresh descriptors (or one indirect table).
    func post(_ q: Int, readable: [[UInt8]], writable: [Int], indirect: Bool = false) -> (head: UInt16, replies: [Int]) {
        var parts: [(UInt64, UInt32, UInt16)] = []
        for bytes in readable {
            let offset = allocate(bytes.count)
            bytes.withUnsafeBytes { (memory + offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            parts.append((guestAddress(offset), UInt32(bytes.count), 0))
        }
        var replies: [Int] = []
        for size in writable {
            let offset = allocate(size)
            memset(memory + offset, 0xee, size)
            replies.append(offset)
            parts.append((guestAddress(offset), UInt32(size), SplitVirtqueue.flagWrite))
        }
        if indirect {
            let table = allocate(16 * parts.count)
            for (i, p) in parts.enumerated() {
                let last = i == parts.count - 1
                writeDescriptor(table: table, i, address: p.0, length: p.1, flags: p.2 | (last ? 0 : SplitVirtqueue.flagNext), next: UInt16(i + 1))
            }
            let head = takeDescriptors(q, 1)
            writeDescriptor(table: descriptorOffset(q), Int(head), address: guestAddress(table), length: UInt32(16 * parts.count),
                            flags: SplitVirtqueue.flagIndirect, next: 0)
            return (head, replies)
        }
        let head = takeDescriptors(q, parts.count)
        for (i, p) in parts.enumerated() {
            let last = i == parts.count - 1
            let index = (Int(head) + i) % Int(queueSize)
            writeDescriptor(table: descriptorOffset(q), index, address: p.0, length: p.1,
                            flags: p.2 | (last ? 0 : SplitVirtqueue.flagNext), next: UInt16((index + 1) % Int(queueSize)))
        }
        return (head, replies)
    }

    func takeDescriptors(_ q: Int, _ n: Int) -> UInt16 {
        let head = nextDescriptor[q]
        nextDescriptor[q] = UInt16((Int(head) + n) % Int(queueSize))
        return head
    }

    /// Waits for the call descriptor, then returns the used entries that came.
    func waitForUsed(_ q: Int, timeout: Int32 = 5000) -> [(id: UInt32, length: UInt32)] {
        var p = pollfd(fd: calls[q], events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, timeout)
        var value: UInt64 = 0
        _ = Glibc.read(calls[q], &value, 8)
        return takeUsed(q)
    }

    func takeUsed(_ q: Int) -> [(id: UInt32, length: UInt32)] {
        var out: [(UInt32, UInt32)] = []
        let usedIndex = load16(usedOffset(q) + 2)
        while lastUsed[q] != usedIndex {
            let slot = Int(lastUsed[q] % queueSize)
            out.append((load32(usedOffset(q) + 4 + 8 * slot), load32(usedOffset(q) + 8 + 8 * slot)))
            lastUsed[q] &+= 1
        }
        // Ask to be called after every used entry (event index).
        store16(availableOffset(q) + 4 + 2 * Int(queueSize), lastUsed[q])
        return out
    }

    func errorSignalled(_ q: Int, timeout: Int32 = 5000) -> Bool {
        var p = pollfd(fd: errors[q], events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, timeout) == 1
    }

    func bytes(at offset: Int, count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: memory + offset, count: count))
    }

    /// One FUSE request on queue 1 with a reply buffer of `replySize`, answered.
    func fuse(_ request: FuseRequest, node: UInt64 = 1, data: [UInt8] = [], replySize: Int = 4096, queue q: Int = 1,
              indirect: Bool = false, split: Bool = false) -> FuseTestReply? {
        unique += 1
        let message = request.encode(unique: unique, nodeID: node, data: data)
        // Linux puts the in header and the arguments in separate buffers, and READ pages apart.
        let readable = split && message.count > 40 ? [Array(message[0..<40]), Array(message[40...])] : [message]
        let writable = split && replySize > 16 ? [16, replySize - 16] : [replySize]
        let (head, replies) = post(q, readable: readable, writable: writable, indirect: indirect)
        makeAvailable(q, head: head)
        kick(q)
        guard let used = waitForUsed(q).first(where: { $0.id == UInt32(head) }) else { return nil }
        var reply: [UInt8] = []
        var left = Int(used.length)
        for (offset, size) in zip(replies, writable) where left > 0 {
            reply += bytes(at: offset, count: min(size, left))
            left -= min(size, left)
        }
        guard reply.count >= 16, let header = reply.withUnsafeBytes({ try? FuseOutHeader.decode($0) }), Int(header.length) == reply.count,
              header.unique == unique else { return nil }
        return FuseTestReply(header: header, payload: Array(reply[16...]))
    }
}

@inline(__always)
func __atomic_thread_fence_release() { cpvfs_write_barrier() }
