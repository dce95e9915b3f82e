import CPVFSTransportIO
import Foundation
import Glibc
import Logging
import PVFSFuseCodec
import Synchronization

/// One vhost-user-fs front-end (a QEMU's `vhost-user-fs-pci` device) on one connected socket:
/// the control messages, the guest's memory, and its queues: queue 0 is the high-priority queue
/// (FORGET), the others carry FUSE requests. Requests go to one `FuseMessageHandler`, the FUSE
/// session of the VM the socket serves.
///
/// Control messages and kicks are handled on the event sources' thread; replies may complete
/// from other threads (a lock wait). A front-end that breaks the protocol ends its session; a
/// guest that puts something invalid on a queue stops that queue (its error descriptor is
/// signalled); neither touches anything outside the guest's memory or disturbs other devices.
public final class VhostUserFsDevice: @unchecked Sendable {
    public struct Limits: Sendable {
        /// Request queues offered besides the high-priority one (Linux 6.1 uses one).
        public var requestQueues: Int
        /// Bytes one chain may carry each way: the largest WRITE or READ plus room for headers.
        public var maximumRequestBytes: Int
        public var maximumReplyBytes: Int
        /// Chains taken per kick before the loop serves others.
        public var chainsPerPass: Int

        public init(requestQueues: Int = 16, maximumRequestBytes: Int = (1 << 20) + (64 << 10),
                    maximumReplyBytes: Int = (1 << 20) + (64 << 10), chainsPerPass: Int = 64) {
            self.requestQueues = requestQueues
            self.maximumRequestBytes = maximumRequestBytes
            self.maximumReplyBytes = maximumReplyBytes
            self.chainsPerPass = chainsPerPass
        }
    }

    public static let offeredFeatures = VirtioFeature.version1 | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
        | VirtioFeature.protocolFeatures
    public static let offeredProtocolFeatures = VhostUserProtocolFeature.multipleQueues | VhostUserProtocolFeature.replyAck
        | VhostUserProtocolFeature.resetDevice

    let socket: Int32
    let sources: any VhostEventSources
    let handler: any FuseMessageHandler
    let limits: Limits
    let logger: Logger
    private let onClose: @Sendable () -> Void

    // Confined to the event sources' thread.
    private var features: UInt64 = 0
    private var protocolFeatures: UInt64 = 0
    private var memory: GuestMemory?
    private var queues: [Virtqueue]
    private var socketToken: VhostEventToken?
    private var input: [UInt8] = []
    private var pendingDescriptors: [Int32] = []
    private var closed = false
    /// Requests handed to the FUSE session and not yet answered (any thread).
    private let outstanding = OutstandingRequests()

    /// Requests of this front-end being served now (for the per-tenant metrics).
    public var outstandingRequests: Int { outstanding.count.load(ordering: .relaxed) }

    /// Takes ownership of the connected socket; starts serving it on `sources`.
    public init(socket: Int32, sources: any VhostEventSources, handler: any FuseMessageHandler, limits: Limits = Limits(),
                logger: Logger, onClose: @escaping @Sendable () -> Void = {}) throws {
        self.socket = socket
        self.sources = sources
        self.handler = handler
        self.limits = limits
        self.logger = logger
        self.onClose = onClose
        queues = (0...limits.requestQueues).map { Virtqueue(index: $0, requestBytes: limits.maximumRequestBytes, logger: logger) }
        let flags = fcntl(socket, F_GETFL)
        _ = fcntl(socket, F_SETFL, flags | O_NONBLOCK)
        socketToken = try sources.watch(socket) { [weak self] in self?.socketReadable() }
    }

    deinit {
        for fd in pendingDescriptors { Glibc.close(fd) }
    }

    /// Ends the session from this side (the socket is closed, the session released).
    public func close(reason: String) {
        sources.execute { [self] in shutdown(reason: reason) }
    }

    public var isClosed: Bool { closed }

    // MARK: Control messages

    private func socketReadable() {
        guard !closed else { return }
        var buffer = [UInt8](repeating: 0, count: 4096)
        var fds = [Int32](repeating: -1, count: VhostUser.maximumDescriptors)
        var count: Int32 = 0
        var truncated: Int32 = 0
        let n = buffer.withUnsafeMutableBytes { raw in
            fds.withUnsafeMutableBufferPointer { f in
                cpvfs_recv_with_fds(socket, raw.baseAddress, raw.count, f.baseAddress, Int32(f.count), &count, &truncated)
            }
        }
        if n < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
            return shutdown(reason: "control socket: \(String(cString: strerror(errno)))")
        }
        pendingDescriptors += fds.prefix(Int(count))
        guard n > 0 else { return shutdown(reason: "front-end closed the connection") }
        guard truncated == 0 else { return shutdown(reason: "a message came with more descriptors than any message takes") }
        input += buffer.prefix(n)
        while !closed, input.count >= VhostUser.headerSize {
            guard let header = VhostUserHeader.decode(input) else { break }
            guard Int(header.size) <= VhostUser.maximumPayload else {
                return shutdown(reason: "message of \(header.size) bytes")
            }
            let total = VhostUser.headerSize + Int(header.size)
            guard input.count >= total else { break }
            let payload = Array(input[VhostUser.headerSize..<total])
            input.removeFirst(total)
            do {
                let message = try VhostUserMessage.decode(header, payload)
                let needed = message.descriptorCount
                guard pendingDescriptors.count >= needed else {
                    throw VhostUserProtocolError("\(message) came without its \(needed) descriptor(s)")
                }
                let descriptors = Array(pendingDescriptors.prefix(needed))
                pendingDescriptors.removeFirst(needed)
                if !pendingDescriptors.isEmpty, input.isEmpty {
                    for fd in pendingDescriptors { Glibc.close(fd) }
                    pendingDescriptors.removeAll()
                    throw VhostUserProtocolError("request \(header.request) came with descriptors it does not take")
                }
                try handle(message, header, descriptors)
            } catch {
                return shutdown(reason: "protocol error: \(error)")
            }
        }
    }

    private func reply(_ header: VhostUserHeader, _ payload: [UInt8]) throws(VhostUserProtocolError) {
        let bytes = vhostUserReply(header.request, payload)
        let n = bytes.withUnsafeBytes { cpvfs_send_with_fds(socket, $0.baseAddress, $0.count, nil, 0) }
        guard n == bytes.count else { throw VhostUserProtocolError("cannot send a reply: \(n < 0 ? String(cString: strerror(errno)) : "short write")") }
    }

    private func queue(_ index: UInt32) throws(VhostUserProtocolError) -> Virtqueue {
        guard Int(index) < queues.count else { throw VhostUserProtocolError("queue \(index) does not exist (\(queues.count) offered)") }
        return queues[Int(index)]
    }

    private func handle(_ message: VhostUserMessage, _ header: VhostUserHeader, _ descriptors: [Int32]) throws(VhostUserProtocolError) {
        var hasOwnReply = false
        switch message {
        case .getFeatures:
            hasOwnReply = true
            try reply(header, le(Self.offeredFeatures))
        case .setFeatures(let requested):
            guard requested & ~Self.offeredFeatures == 0 else { throw VhostUserProtocolError("features \(String(requested, radix: 16)) were not offered") }
            guard requested & VirtioFeature.version1 != 0 else { throw VhostUserProtocolError("the driver did not accept VIRTIO_F_VERSION_1") }
            features = requested
        case .setOwner:
            break
        case .resetOwner, .resetDevice:
            for q in queues { q.stop(sources: sources, forget: true) }
            features = 0
            memory = nil
        case .getProtocolFeatures:
            hasOwnReply = true
            try reply(header, le(Self.offeredProtocolFeatures))
        case .setProtocolFeatures(let requested):
            guard requested & ~Self.offeredProtocolFeatures == 0 else {
                throw VhostUserProtocolError("protocol features \(String(requested, radix: 16)) were not offered")
            }
            protocolFeatures = requested
        case .getQueueNumber:
            hasOwnReply = true
            try reply(header, le(UInt64(queues.count)))
        case .setMemoryTable(let regions):
            let fresh = try GuestMemory(Array(zip(regions, descriptors)))
            memory = fresh
            logger.debug("guest memory: \(regions.count) region(s), \(fresh.totalSize >> 20) MiB")
            // Rings running on the old table continue on the new one.
            for q in queues where q.isStarted { try q.start(memory: fresh, features: features, limits: limits) }
        case .setVringNumber(let index, let number):
            let q = try queue(index)
            guard number >= 1, number <= 32768, number & (number - 1) == 0 else { throw VhostUserProtocolError("queue size \(number)") }
            guard !q.isStarted else { throw VhostUserProtocolError("queue \(index) resized while running") }
            q.number = UInt16(number)
        case .setVringAddress(let address):
            let q = try queue(address.index)
            guard address.flags == 0 else { throw VhostUserProtocolError("vring logging is not served") }
            q.address = address
            if q.isStarted, let memory { try q.start(memory: memory, features: features, limits: limits) }
        case .setVringBase(let index, let base):
            let q = try queue(index)
            guard base <= UInt32(UInt16.max) else { throw VhostUserProtocolError("vring base \(base) beyond a split ring's index") }
            q.base = UInt16(base)
        case .getVringBase(let index):
            let q = try queue(index)
            let base = q.stop(sources: sources, forget: false)
            hasOwnReply = true
            try reply(header, le(index) + le(UInt32(base)))
        case .setVringKick(let index, let hasDescriptor):
            let q = try queue(index)
            guard hasDescriptor, let fd = descriptors.first else { throw VhostUserProtocolError("polling a queue without a kick descriptor is not served") }
            q.setKick(fd, sources: sources) { [weak self, weak q] in
                guard let self, let q else { return }
                q.drainKick()
                self.process(q)
            }
            // A kick descriptor starts the ring (vhost-user "Ring states").
            guard let memory else { throw VhostUserProtocolError("queue \(index) started before the memory table") }
            // Without VHOST_USER_F_PROTOCOL_FEATURES a ring starts enabled; with it, SET_VRING_ENABLE says.
            if features & VirtioFeature.protocolFeatures == 0 { q.enabled = true }
            try q.start(memory: memory, features: features, limits: limits)
            process(q)
        case .setVringCall(let index, let hasDescriptor):
            try queue(index).setCall(hasDescriptor ? descriptors.first : nil)
        case .setVringError(let index, let hasDescriptor):
            try queue(index).setError(hasDescriptor ? descriptors.first : nil)
        case .setVringEnable(let index, let enable):
            let q = try queue(index)
            q.enabled = enable
            if enable { process(q) }
        case .unsupported(let request):
            throw VhostUserProtocolError("request \(request) is not served")
        }
        if !hasOwnReply, header.needsReply, protocolFeatures & VhostUserProtocolFeature.replyAck != 0 {
            try reply(header, le(UInt64(0)))
        }
    }

    // MARK: Queues

    /// Takes chains off a queue and hands each to the FUSE session; after a batch it yields to
    /// the other work of the loop and comes back.
    private func process(_ q: Virtqueue) {
        guard !closed, let ring = q.runningRing else { return }
        var taken = 0
        while taken < limits.chainsPerPass {
            let chain: DescriptorChain
            do {
                guard let next = try ring.nextChain() else {
                    if ring.prepareToWait() { continue }
                    return
                }
                chain = next
            } catch {
                logger.error("virtio-fs queue \(q.index) stopped: \(error)")
                q.fail()
                return
            }
            taken += 1
            serve(chain, on: q, ring: ring)
        }
        sources.execute { [weak self, weak q] in
            guard let self, let q else { return }
            self.process(q)
        }
    }

    private func serve(_ chain: DescriptorChain, on q: Virtqueue, ring: SplitVirtqueue) {
        let sink = VirtqueueReplySink(queue: q, session: q.session, head: chain.head, writable: chain.writable,
                                      capacity: chain.writableBytes, memory: ring.memory, outstanding: outstanding)
        // The request is copied out of guest memory before it is decoded: the guest cannot change
        // it under the decoder.
        var length = 0
        for buffer in chain.readable {
            (q.requestBuffer + length).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count)
            length += buffer.count
        }
        guard length >= FuseProtocol.inHeaderSize else {
            // Nothing a FUSE request could be: hand the buffers back empty.
            sink.noReply()
            return
        }
        handler.handle(UnsafeRawBufferPointer(start: q.requestBuffer, count: length), reply: sink)
    }

    private func shutdown(reason: String) {
        guard !closed else { return }
        closed = true
        logger.info("vhost-user front-end gone: \(reason)")
        if let socketToken { sources.cancel(socketToken) }
        socketToken = nil
        for q in queues { q.stop(sources: sources, forget: true) }
        for fd in pendingDescriptors { Glibc.close(fd) }
        pendingDescriptors.removeAll()
        Glibc.close(socket)
        memory = nil
        handler.transportClosed()
        onClose()
    }
}

/// One queue's state. Taking chains happens on the loop's thread; the used side (completions,
/// the call descriptor) is guarded by `lock`, since replies come from any thread.
final class Virtqueue: @unchecked Sendable {
    let index: Int
    let logger: Logger
    var number: UInt16 = 0
    var address: VhostUserVringAddress?
    var base: UInt16 = 0
    var enabled = false
    private var kick: Int32 = -1
    private var kickToken: VhostEventToken?
    private var errorDescriptor: Int32 = -1
    /// The request being decoded is copied here.
    let requestBuffer: UnsafeMutableRawPointer
    let requestBytes: Int

    private struct UsedSide {
        var ring: SplitVirtqueue?
        var call: Int32 = -1
        /// Completions that came while the ring was stopped (GET_VRING_BASE): written when it
        /// starts again, so that the guest gets every reply it is owed.
        var deferred: [(UInt16, UInt32)] = []
        /// Changes when the queue is reset: replies of an earlier session are dropped.
        var session: UInt64 = 0
        var broken = false
    }

    private let lock = Mutex(UsedSide())

    init(index: Int, requestBytes: Int, logger: Logger) {
        self.index = index
        self.requestBytes = requestBytes
        self.logger = logger
        requestBuffer = UnsafeMutableRawPointer.allocate(byteCount: requestBytes, alignment: 8)
    }

    deinit {
        requestBuffer.deallocate()
        if kick >= 0 { Glibc.close(kick) }
        if errorDescriptor >= 0 { Glibc.close(errorDescriptor) }
        lock.withLock { if $0.call >= 0 { Glibc.close($0.call) } }
    }

    var isStarted: Bool { lock.withLock { $0.ring != nil } }
    var session: UInt64 { lock.withLock { $0.session } }

    /// The ring when it may be served: started, enabled, not failed.
    var runningRing: SplitVirtqueue? {
        guard enabled else { return nil }
        return lock.withLock { $0.broken ? nil : $0.ring }
    }

    /// Builds the ring over `memory` from the addresses and base given; the used index is the
    /// guest's (it is the device's to write, but a restarted ring continues where it stopped).
    func start(memory: GuestMemory, features: UInt64, limits: VhostUserFsDevice.Limits) throws(VhostUserProtocolError) {
        guard number > 0, let address else { throw VhostUserProtocolError("queue \(index) started without its size and addresses") }
        let n = Int(number)
        guard let descriptors = memory.ring(userAddress: address.descriptorTable, length: SplitVirtqueue.descriptorTableBytes(n), alignment: 16),
              let available = memory.ring(userAddress: address.availableRing, length: SplitVirtqueue.availableRingBytes(n), alignment: 2),
              let used = memory.ring(userAddress: address.usedRing, length: SplitVirtqueue.usedRingBytes(n), alignment: 4) else {
            throw VhostUserProtocolError("queue \(index)'s rings lie outside guest memory")
        }
        let usedIndex = cpvfs_load16(used + 2)
        let ring = SplitVirtqueue(size: number, descriptors: descriptors, available: available, used: used, memory: memory,
                                  eventIndex: features & VirtioFeature.eventIndex != 0, indirect: features & VirtioFeature.indirectDescriptors != 0,
                                  lastAvailableIndex: lock.withLock { $0.ring?.lastAvailableIndex } ?? base, usedIndex: usedIndex,
                                  maximumReadable: min(limits.maximumRequestBytes, requestBytes), maximumWritable: limits.maximumReplyBytes)
        lock.withLock { side in
            side.ring = ring
            side.broken = false
            var notify = false
            for (head, written) in side.deferred { notify = ring.complete(head, written: written) || notify }
            side.deferred.removeAll()
            if notify { Self.signal(side.call) }
        }
    }

    /// Stops the ring (no more kicks served); returns the next available index to take.
    /// `forget`: the queue is reset, replies still to come are dropped.
    @discardableResult
    func stop(sources: any VhostEventSources, forget: Bool) -> UInt16 {
        if let kickToken { sources.cancel(kickToken) }
        kickToken = nil
        if kick >= 0 { Glibc.close(kick) }
        kick = -1
        let next = lock.withLock { side -> UInt16 in
            let next = side.ring?.lastAvailableIndex ?? base
            side.ring = nil
            if forget {
                side.session &+= 1
                side.deferred.removeAll()
                side.broken = false
                if side.call >= 0 { Glibc.close(side.call) }
                side.call = -1
            }
            return next
        }
        base = next
        if forget {
            enabled = false
            address = nil
            number = 0
            base = 0
            if errorDescriptor >= 0 { Glibc.close(errorDescriptor) }
            errorDescriptor = -1
        }
        return next
    }

    func setKick(_ fd: Int32, sources: any VhostEventSources, _ callback: @escaping @Sendable () -> Void) {
        if let kickToken { sources.cancel(kickToken) }
        if kick >= 0 { Glibc.close(kick) }
        kick = fd
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        kickToken = try? sources.watch(fd, readable: callback)
    }

    func drainKick() {
        var value: UInt64 = 0
        _ = Glibc.read(kick, &value, 8)
    }

    /// Accepted at any time: the descriptor is swapped under the lock, the old one closed.
    func setCall(_ fd: Int32?) {
        lock.withLock { side in
            if side.call >= 0 { Glibc.close(side.call) }
            side.call = fd ?? -1
        }
    }

    func setError(_ fd: Int32?) {
        if errorDescriptor >= 0 { Glibc.close(errorDescriptor) }
        errorDescriptor = fd ?? -1
    }

    /// The guest broke the queue's rules: it serves nothing more until reset, and the front-end
    /// learns of it through the error descriptor.
    func fail() {
        lock.withLock { $0.broken = true }
        Self.signal(errorDescriptor)
    }

    /// Hands a chain back with `written` bytes of reply, unless the queue was reset since.
    func complete(_ head: UInt16, written: UInt32, session: UInt64) {
        lock.withLock { side in
            guard side.session == session else { return }
            guard let ring = side.ring else {
                side.deferred.append((head, written))
                return
            }
            if ring.complete(head, written: written) { Self.signal(side.call) }
        }
    }

    static func signal(_ fd: Int32) {
        guard fd >= 0 else { return }
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }
}

/// A front-end's count of requests being served, shared with the reply sinks that end them.
final class OutstandingRequests: Sendable {
    let count = Atomic<Int>(0)
}

/// The reply side of one chain: FUSE replies written into the chain's writable buffers (READ
/// data read straight into them), then the chain handed back on the used ring.
final class VirtqueueReplySink: FuseReplySink, @unchecked Sendable {
    let queue: Virtqueue
    let session: UInt64
    let head: UInt16
    let writable: [UnsafeMutableRawBufferPointer]
    let capacity: Int
    /// Keeps the guest's memory mapped until the reply is written.
    let memory: GuestMemory
    private let done = Atomic<Bool>(false)
    private let outstanding: OutstandingRequests

    init(queue: Virtqueue, session: UInt64, head: UInt16, writable: [UnsafeMutableRawBufferPointer], capacity: Int, memory: GuestMemory,
         outstanding: OutstandingRequests) {
        self.queue = queue
        self.session = session
        self.head = head
        self.writable = writable
        self.capacity = capacity
        self.memory = memory
        self.outstanding = outstanding
        outstanding.count.add(1, ordering: .relaxed)
    }

    deinit {
        // A sink dropped unanswered no longer counts.
        if !done.load(ordering: .acquiring) { outstanding.count.subtract(1, ordering: .relaxed) }
    }

    private func finish(_ written: Int) {
        guard !done.exchange(true, ordering: .acquiringAndReleasing) else { return }
        outstanding.count.subtract(1, ordering: .relaxed)
        queue.complete(head, written: UInt32(clamping: written), session: session)
    }

    /// Copies `bytes` into the writable buffers from byte `offset` on.
    private func scatter(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        var skip = offset
        var source = 0
        for buffer in writable where source < bytes.count {
            if skip >= buffer.count {
                skip -= buffer.count
                continue
            }
            let n = min(buffer.count - skip, bytes.count - source)
            (buffer.baseAddress! + skip).copyMemory(from: bytes.baseAddress! + source, byteCount: n)
            source += n
            skip = 0
        }
    }

    func send(_ reply: UnsafeRawBufferPointer) {
        if reply.count <= capacity {
            scatter(reply, at: 0)
            finish(reply.count)
        } else if capacity >= FuseProtocol.outHeaderSize, let header = try? FuseOutHeader.decode(reply) {
            // A reply the guest left no room for: an error in its place.
            FuseReplyWriter.error(unique: header.unique, errno: ERANGE).withUnsafeBytes { scatter($0, at: 0) }
            finish(FuseProtocol.outHeaderSize)
        } else {
            finish(0)
        }
    }

    func sendRead(unique: UInt64, descriptor: Int32, offset: Int64, count: Int) -> Int {
        let header = FuseProtocol.outHeaderSize
        guard capacity >= header else { return -Int(ERANGE) }
        let wanted = min(count, capacity - header)
        // The data goes straight into the guest's buffers behind the header.
        var vectors: [iovec] = []
        var skip = header
        var room = wanted
        for buffer in writable where room > 0 {
            if skip >= buffer.count {
                skip -= buffer.count
                continue
            }
            let n = min(buffer.count - skip, room)
            vectors.append(iovec(iov_base: buffer.baseAddress! + skip, iov_len: n))
            room -= n
            skip = 0
        }
        var done = 0
        var position = offset
        var index = 0
        while done < wanted && index < vectors.count {
            let n = vectors.withUnsafeBufferPointer { v in
                preadv(descriptor, v.baseAddress! + index, Int32(min(v.count - index, 1024)), off_t(position))
            }
            if n < 0 {
                if errno == EINTR { continue }
                if done == 0 { return -Int(errno) }
                break
            }
            if n == 0 { break }
            done += n
            position += Int64(n)
            // Past what this call filled (a short read continues where it stopped).
            var consumed = n
            while index < vectors.count && consumed >= vectors[index].iov_len {
                consumed -= vectors[index].iov_len
                index += 1
            }
            if consumed > 0 {
                vectors[index].iov_base += consumed
                vectors[index].iov_len -= consumed
            }
        }
        var headerBytes = [UInt8](repeating: 0, count: header)
        headerBytes.withUnsafeMutableBytes {
            FuseOutHeader(length: UInt32(header + done), error: 0, unique: unique).store(into: $0)
        }
        headerBytes.withUnsafeBytes { scatter($0, at: 0) }
        finish(header + done)
        return done
    }

    func noReply() {
        finish(0)
    }
}
