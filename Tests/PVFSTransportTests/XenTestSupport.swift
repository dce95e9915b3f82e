import CXen
import Foundation
import PVFS9PCodec
import Synchronization
@testable import PVFSTransport

/// An in-memory xenstore: nodes with values and permissions, parents created on write,
/// recursive removal. Transactions apply at once; `conflictingCommits` makes that many
/// commits report EAGAIN so that retry loops run.
final class FakeXenStore: XenStoreAccess, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var nodes: [String: [UInt8]] = [:]
    private(set) var permissions: [String: [XenStorePermission]] = [:]
    private(set) var watches: [(path: String, token: String)] = []
    private(set) var writeLog: [(path: String, value: String)] = []
    var liveDomains: Set<UInt32> = []
    var conflictingCommits = 0
    private var nextTransaction: UInt32 = 1

    init(liveDomains: Set<UInt32> = []) {
        self.liveDomains = liveDomains
        nodes["/"] = []
    }

    private func parent(of path: String) -> String? {
        guard path != "/", let slash = path.lastIndex(of: "/") else { return nil }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    private func create(_ path: String) {
        guard nodes[path] == nil else { return }
        if let parent = parent(of: path) {
            create(parent)
            if let inherited = permissions[parent] { permissions[path] = inherited }
        }
        nodes[path] = []
    }

    func read(_ path: String, in transaction: XenStoreTransaction) throws -> [UInt8]? {
        lock.withLock { nodes[path] }
    }

    func write(_ path: String, _ value: [UInt8], in transaction: XenStoreTransaction) throws {
        lock.withLock {
            create(path)
            nodes[path] = value
            writeLog.append((path, String(decoding: value, as: UTF8.self)))
        }
    }

    func remove(_ path: String, in transaction: XenStoreTransaction) throws {
        lock.withLock {
            for key in nodes.keys where key == path || key.hasPrefix(path + "/") {
                nodes[key] = nil
                permissions[key] = nil
            }
            writeLog.append((path, "<removed>"))
        }
    }

    func makeDirectory(_ path: String, in transaction: XenStoreTransaction) throws {
        lock.withLock { create(path) }
    }

    func list(_ path: String, in transaction: XenStoreTransaction) throws -> [String]? {
        lock.withLock {
            guard nodes[path] != nil else { return nil }
            let prefix = path == "/" ? "/" : path + "/"
            var children: Set<String> = []
            for key in nodes.keys where key.hasPrefix(prefix) && key != path {
                children.insert(String(key.dropFirst(prefix.count).split(separator: "/")[0]))
            }
            return children.sorted()
        }
    }

    func setPermissions(_ path: String, _ permissions: [XenStorePermission], in transaction: XenStoreTransaction) throws {
        try lock.withLock {
            guard nodes[path] != nil else { throw XenError(kind: .system, call: "xs_set_permissions", errno: ENOENT) }
            self.permissions[path] = permissions
        }
    }

    private var snapshots: [UInt32: (nodes: [String: [UInt8]], permissions: [String: [XenStorePermission]])] = [:]

    func startTransaction() throws -> XenStoreTransaction {
        lock.withLock {
            defer { nextTransaction += 1 }
            snapshots[nextTransaction] = (nodes, permissions)
            return XenStoreTransaction(id: nextTransaction)
        }
    }

    /// A conflicting or aborted transaction leaves the store as it found it.
    func endTransaction(_ transaction: XenStoreTransaction, commit: Bool) throws -> Bool {
        lock.withLock {
            let snapshot = snapshots.removeValue(forKey: transaction.id)
            if commit && conflictingCommits > 0 {
                conflictingCommits -= 1
                if let snapshot { (nodes, permissions) = snapshot }
                return false
            }
            if !commit, let snapshot { (nodes, permissions) = snapshot }
            return true
        }
    }

    func watch(_ path: String, token: String) throws {
        lock.withLock { watches.append((path, token)) }
    }

    func unwatch(_ path: String, token: String) throws {
        lock.withLock { watches.removeAll { $0.path == path && $0.token == token } }
    }

    func isDomainIntroduced(_ domid: UInt32) -> Bool {
        lock.withLock { liveDomains.contains(domid) }
    }

    // Test conveniences.
    func set(_ path: String, _ value: String) { try! write(path, value) }
    func get(_ path: String) -> String? { lock.withLock { nodes[path].map { String(decoding: $0, as: UTF8.self) } } }
    func clearLog() { lock.withLock { writeLog.removeAll() } }
    func writes(to path: String) -> [String] { lock.withLock { writeLog.filter { $0.path == path }.map(\.value) } }
}

/// A frontend's view of one ring in ordinary memory: an interface page plus data pages,
/// with the frontend's side of the protocol (the mirror of what Linux's trans_xen does).
final class TestRingMemory: @unchecked Sendable {
    let interface: UnsafeMutableRawPointer
    let data: UnsafeMutableRawPointer
    let geometry: XenRingGeometry
    private let lock = NSLock()

    init(order: UInt32, startIndex: UInt32 = 0) {
        geometry = XenRingGeometry(order: order)
        interface = UnsafeMutableRawPointer.allocate(byteCount: xenPageSize, alignment: xenPageSize)
        interface.initializeMemory(as: UInt8.self, repeating: 0, count: xenPageSize)
        data = UnsafeMutableRawPointer.allocate(byteCount: 2 * Int(geometry.ringSize), alignment: xenPageSize)
        data.initializeMemory(as: UInt8.self, repeating: 0xEE, count: 2 * Int(geometry.ringSize))
        for offset in [XenRingLayout.inCons, XenRingLayout.inProd, XenRingLayout.outCons, XenRingLayout.outProd] {
            store(offset, startIndex)
        }
        store(XenRingLayout.ringOrder, order)
    }

    deinit {
        interface.deallocate()
        data.deallocate()
    }

    var ringSize: UInt32 { geometry.ringSize }
    func load(_ offset: Int) -> UInt32 { cxen_load_u32(interface + offset) }
    func store(_ offset: Int, _ value: UInt32) { cxen_store_u32(interface + offset, value) }

    func makeRing() -> XenFlexRing { XenFlexRing(interface: interface, data: data, geometry: geometry) }

    /// Frontend: writes a whole request if it fits (as Linux does), publishing out_prod.
    @discardableResult
    func send(_ message: [UInt8]) -> Bool {
        lock.withLock {
            let cons = load(XenRingLayout.outCons)
            let prod = load(XenRingLayout.outProd)
            cxen_mb()
            guard ringSize - (prod &- cons) >= UInt32(message.count) else { return false }
            writeOut(message, at: prod)
            cxen_wmb()
            store(XenRingLayout.outProd, prod &+ UInt32(message.count))
            return true
        }
    }

    /// Frontend: writes bytes at the producer index without publishing them all:
    /// `publish` bytes become visible.
    func sendRaw(_ bytes: [UInt8], publish: Int) {
        lock.withLock {
            let prod = load(XenRingLayout.outProd)
            writeOut(bytes, at: prod)
            cxen_wmb()
            store(XenRingLayout.outProd, prod &+ UInt32(publish))
        }
    }

    /// Frontend: publishes more bytes already written by `sendRaw`.
    func publishMore(_ count: Int) {
        lock.withLock {
            store(XenRingLayout.outProd, load(XenRingLayout.outProd) &+ UInt32(count))
        }
    }

    private func writeOut(_ bytes: [UInt8], at index: UInt32) {
        bytes.withUnsafeBytes { buffer in
            cxen_ring_copy_in(data.assumingMemoryBound(to: UInt8.self) + Int(ringSize), ringSize,
                              index & (ringSize - 1), buffer.baseAddress, UInt32(buffer.count))
        }
    }

    /// Frontend: takes every complete reply off the in ring (as Linux's p9_xen_response).
    func receive(limit: Int = .max) -> [[UInt8]] {
        lock.withLock {
            var replies: [[UInt8]] = []
            while replies.count < limit {
                let cons = load(XenRingLayout.inCons)
                let prod = load(XenRingLayout.inProd)
                cxen_rmb()
                let queued = prod &- cons
                guard queued >= UInt32(NineP.headerSize) else { break }
                var header = [UInt8](repeating: 0, count: NineP.headerSize)
                header.withUnsafeMutableBytes { buffer in
                    cxen_ring_copy_out(buffer.baseAddress, data.assumingMemoryBound(to: UInt8.self), ringSize,
                                       cons & (ringSize - 1), UInt32(NineP.headerSize))
                }
                let size = NinePHeader(header)!.size
                precondition(size <= queued, "backend published a partial reply")
                var message = [UInt8](repeating: 0, count: Int(size))
                message.withUnsafeMutableBytes { buffer in
                    cxen_ring_copy_out(buffer.baseAddress, data.assumingMemoryBound(to: UInt8.self), ringSize,
                                       cons & (ringSize - 1), size)
                }
                cxen_mb()
                store(XenRingLayout.inCons, cons &+ size)
                replies.append(message)
            }
            return replies
        }
    }
}

/// A 9P-framed message with `payload` after the header.
func nineMessage(type: UInt8, tag: UInt16, payload: [UInt8] = []) -> [UInt8] {
    headerBytes(size: UInt32(NineP.headerSize + payload.count), type: type, tag: tag) + payload
}

/// size[4] type[1] tag[2], whatever the size says (for malformed messages too).
func headerBytes(size: UInt32, type: UInt8, tag: UInt16) -> [UInt8] {
    withUnsafeBytes(of: size.littleEndian) { Array($0) } + [type] + withUnsafeBytes(of: tag.littleEndian) { Array($0) }
}

/// Deterministic filler bytes.
func pattern(_ count: Int, seed: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 31) &+ seed &* 7 &+ ($0 >> 8)) }
}

/// The event channel stand-in: an eventfd the test's frontend writes to notify the
/// worker; the worker's notifications are counted and wake `waitForNotification`.
final class TestSignal: XenRingSignal, @unchecked Sendable {
    let fileDescriptor: Int32
    private let condition = NSCondition()
    private var notifications = 0

    init() {
        fileDescriptor = cxen_eventfd()
        precondition(fileDescriptor >= 0)
    }

    deinit { Glibc.close(fileDescriptor) }

    func acknowledge() throws {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { Glibc.read(fileDescriptor, $0.baseAddress, 8) }
    }

    func notify() throws {
        condition.lock()
        notifications += 1
        condition.broadcast()
        condition.unlock()
    }

    func close() {}

    /// Frontend → backend notification.
    func kick() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(fileDescriptor, $0.baseAddress, 8) }
    }

    var notificationCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return notifications
    }

    /// Waits until more than `seen` notifications arrived or `timeout` passed.
    @discardableResult
    func waitForNotification(after seen: Int, timeout: TimeInterval = 5) -> Int {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while notifications <= seen {
            if !condition.wait(until: deadline) { break }
        }
        return notifications
    }
}

/// Replies to every request with the same message type + 1, the same tag and the payload
/// reversed, each from another thread after a random delay (so replies come back out of
/// order), or with `replySize` bytes when set.
final class AsyncEchoHandler: NineMessageHandler, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var received: [[UInt8]] = []
    private(set) var closed = false
    let replySize: Int?
    let maxDelayMicroseconds: UInt32

    init(replySize: Int? = nil, maxDelayMicroseconds: UInt32 = 2000) {
        self.replySize = replySize
        self.maxDelayMicroseconds = maxDelayMicroseconds
    }

    /// No Tversion: the transport's own bound applies.
    var maximumMessageSize: Int { Int(UInt32.max) }

    func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                 unanswered: (@Sendable () -> Void)?) {
        lock.withLock { received.append(message) }
        let header = NinePHeader(message)!
        let payload: [UInt8]
        if let replySize {
            payload = pattern(replySize - NineP.headerSize, seed: Int(header.tag))
        } else {
            payload = Array(message[NineP.headerSize...].reversed())
        }
        let answer = nineMessage(type: header.type.rawValue &+ 1, tag: header.tag, payload: payload)
        let delay = maxDelayMicroseconds == 0 ? 0 : UInt32.random(in: 0...maxDelayMicroseconds)
        Thread.detachNewThread {
            if delay > 0 { usleep(delay) }
            reply(answer)
        }
    }

    func close() { lock.withLock { closed = true } }

    var receivedCount: Int { lock.withLock { received.count } }
}

/// Holds requests until the test releases them.
final class HoldingHandler: NineMessageHandler, @unchecked Sendable {
    private let lock = NSLock()
    private var pending: [(message: [UInt8], reply: @Sendable ([UInt8]) -> Void)] = []

    var maximumMessageSize: Int { Int(UInt32.max) }

    func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                 unanswered: (@Sendable () -> Void)?) {
        lock.withLock { pending.append((message, reply)) }
    }

    func close() {}

    var pendingCount: Int { lock.withLock { pending.count } }

    func releaseAll() {
        let held = lock.withLock { () -> [(message: [UInt8], reply: @Sendable ([UInt8]) -> Void)] in
            defer { pending.removeAll() }
            return pending
        }
        for (message, reply) in held {
            let header = NinePHeader(message)!
            reply(nineMessage(type: header.type.rawValue &+ 1, tag: header.tag))
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: TimeInterval = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(1000)
    }
    return condition()
}
