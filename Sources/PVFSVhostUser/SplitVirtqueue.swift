import CPVFSTransportIO

/// Why a queue was stopped: the guest put something on it no device may accept.
public enum VirtqueueError: Error, Sendable, Equatable, CustomStringConvertible {
    case availableIndexJump(UInt16)
    case headOutOfRange(UInt16)
    case nextOutOfRange(UInt16)
    case chainTooLong
    case nestedIndirect
    case indirectWithNext
    case badIndirectLength(UInt32)
    case outsideGuestMemory(UInt64, UInt32)
    case readableAfterWritable
    case tooLarge

    public var description: String {
        switch self {
        case .availableIndexJump(let n): "the available index moved \(n) entries ahead, more than the ring holds"
        case .headOutOfRange(let i): "chain head \(i) is outside the descriptor table"
        case .nextOutOfRange(let i): "descriptor \(i) is outside its table"
        case .chainTooLong: "a descriptor chain is longer than its table (a loop)"
        case .nestedIndirect: "an indirect table points to another"
        case .indirectWithNext: "an indirect descriptor continues a chain"
        case .badIndirectLength(let n): "an indirect table of \(n) bytes"
        case .outsideGuestMemory(let a, let n): "a buffer of \(n) bytes at \(String(a, radix: 16)) is outside guest memory"
        case .readableAfterWritable: "a readable buffer follows a writable one"
        case .tooLarge: "a chain holds more bytes than a request may"
        }
    }
}

/// One request's buffers: what the device reads (the request) and where it writes (the reply).
public struct DescriptorChain: @unchecked Sendable {
    public let head: UInt16
    public var readable: [UnsafeRawBufferPointer] = []
    public var writable: [UnsafeMutableRawBufferPointer] = []
    public var readableBytes = 0
    public var writableBytes = 0
}

/// A split virtqueue (virtio 1.x, section 2.6) in guest memory, seen from the device side.
///
/// Every field the guest can write is read once through a volatile load and validated before
/// use: indices against the ring size, chains against loops (a bounded walk), buffers against
/// the guest's memory regions. A violation stops the queue (`VirtqueueError`) and nothing
/// outside guest memory is ever touched. Taking chains (`nextChain`) is confined to one thread;
/// `complete` may run on any thread, under `usedLock` held by the caller.
public final class SplitVirtqueue: @unchecked Sendable {
    public let size: UInt16
    let descriptors: UnsafeMutableRawPointer
    let available: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    public let memory: GuestMemory
    let eventIndex: Bool
    let indirect: Bool
    public private(set) var lastAvailableIndex: UInt16
    public private(set) var usedIndex: UInt16
    /// Bounds on one chain's bytes.
    let maximumReadable: Int
    let maximumWritable: Int

    /// Descriptors in an indirect table at most (Linux uses up to the queue size; QEMU's limit).
    static let maximumIndirect = 1024
    static let descriptorSize = 16
    static let flagNext: UInt16 = 1
    static let flagWrite: UInt16 = 2
    static let flagIndirect: UInt16 = 4
    static let availableNoInterrupt: UInt16 = 1

    /// Bytes of each part of a ring of `size` entries (with the event index words).
    public static func descriptorTableBytes(_ size: Int) -> Int { 16 * size }
    public static func availableRingBytes(_ size: Int) -> Int { 6 + 2 * size }
    public static func usedRingBytes(_ size: Int) -> Int { 6 + 8 * size }

    public init(size: UInt16, descriptors: UnsafeMutableRawPointer, available: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer,
                memory: GuestMemory, eventIndex: Bool, indirect: Bool, lastAvailableIndex: UInt16, usedIndex: UInt16,
                maximumReadable: Int, maximumWritable: Int) {
        self.size = size
        self.descriptors = descriptors
        self.available = available
        self.used = used
        self.memory = memory
        self.eventIndex = eventIndex
        self.indirect = indirect
        self.lastAvailableIndex = lastAvailableIndex
        self.usedIndex = usedIndex
        self.maximumReadable = maximumReadable
        self.maximumWritable = maximumWritable
    }

    var availableIndex: UInt16 { cpvfs_load16(available + 2) }
    var availableFlags: UInt16 { cpvfs_load16(available) }
    /// used_event, after the available ring's entries.
    var usedEvent: UInt16 { cpvfs_load16(available + 4 + 2 * Int(size)) }

    /// The next chain the guest made available, nil when there is none.
    public func nextChain() throws(VirtqueueError) -> DescriptorChain? {
        let availableIndex = self.availableIndex
        let pending = availableIndex &- lastAvailableIndex
        guard pending != 0 else { return nil }
        guard pending <= size else { throw .availableIndexJump(pending) }
        // The ring entry is read only after the index that published it.
        cpvfs_read_barrier()
        let slot = Int(lastAvailableIndex % size)
        let head = cpvfs_load16(available + 4 + 2 * slot)
        guard head < size else { throw .headOutOfRange(head) }
        var chain = DescriptorChain(head: head)
        try walk(&chain, table: descriptors, entries: Int(size), start: head, allowIndirect: indirect)
        lastAvailableIndex &+= 1
        return chain
    }

    /// Follows a chain through one table, at most `entries` descriptors long.
    private func walk(_ chain: inout DescriptorChain, table: UnsafeMutableRawPointer, entries: Int, start: UInt16,
                      allowIndirect: Bool) throws(VirtqueueError) {
        var index = start
        var steps = 0
        while true {
            guard Int(index) < entries else { throw .nextOutOfRange(index) }
            steps += 1
            guard steps <= entries else { throw .chainTooLong }
            let d = table + Self.descriptorSize * Int(index)
            let address = cpvfs_load64(d)
            let length = cpvfs_load32(d + 8)
            let flags = cpvfs_load16(d + 12)
            let next = cpvfs_load16(d + 14)
            if flags & Self.flagIndirect != 0 {
                guard allowIndirect else { throw .nestedIndirect }
                guard flags & Self.flagNext == 0 else { throw .indirectWithNext }
                guard length > 0, length % UInt32(Self.descriptorSize) == 0,
                      Int(length) / Self.descriptorSize <= Self.maximumIndirect else { throw .badIndirectLength(length) }
                guard let indirectTable = memory.contiguous(address, length: Int(length)) else {
                    throw .outsideGuestMemory(address, length)
                }
                try walk(&chain, table: indirectTable, entries: Int(length) / Self.descriptorSize, start: 0, allowIndirect: false)
                return
            }
            if length > 0 {
                guard let buffers = memory.translate(address, length: length) else { throw .outsideGuestMemory(address, length) }
                if flags & Self.flagWrite != 0 {
                    chain.writableBytes += Int(length)
                    guard chain.writableBytes <= maximumWritable else { throw .tooLarge }
                    chain.writable += buffers
                } else {
                    guard chain.writable.isEmpty else { throw .readableAfterWritable }
                    chain.readableBytes += Int(length)
                    guard chain.readableBytes <= maximumReadable else { throw .tooLarge }
                    chain.readable += buffers.map { UnsafeRawBufferPointer($0) }
                }
            }
            guard flags & Self.flagNext != 0 else { return }
            index = next
        }
    }

    /// Returns a chain to the guest with `written` bytes of reply. Caller holds the used lock.
    /// Returns whether the guest wants to be told (the call descriptor signalled).
    public func complete(_ head: UInt16, written: UInt32) -> Bool {
        let slot = Int(usedIndex % size)
        let element = used + 4 + 8 * slot
        cpvfs_store32(element, UInt32(head))
        cpvfs_store32(element + 4, written)
        let old = usedIndex
        usedIndex &+= 1
        // The element is visible before the index that publishes it.
        cpvfs_write_barrier()
        cpvfs_store16(used + 2, usedIndex)
        // The index is visible before the guest's wish is read.
        cpvfs_full_barrier()
        if eventIndex {
            let event = usedEvent
            return Self.needsEvent(event: event, new: usedIndex, old: old)
        }
        return availableFlags & Self.availableNoInterrupt == 0
    }

    /// vring_need_event: whether `event` lies in (old, new].
    static func needsEvent(event: UInt16, new: UInt16, old: UInt16) -> Bool {
        (new &- event &- 1) < (new &- old)
    }

    /// Before waiting for a kick: tell the guest (with the event index) from which entry on it
    /// must kick, then look again. True when chains came meanwhile (process them, no waiting).
    public func prepareToWait() -> Bool {
        guard eventIndex else { return availableIndex != lastAvailableIndex }
        cpvfs_store16(used + 4 + 8 * Int(size), lastAvailableIndex)
        cpvfs_full_barrier()
        return availableIndex != lastAvailableIndex
    }
}
