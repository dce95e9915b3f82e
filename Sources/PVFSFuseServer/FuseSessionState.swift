import PVFSEngine
import Synchronization

/// The limits that keep one FUSE session (a guest's virtio-fs device, a host mount) from
/// growing the server without bound. Each has a name, used in logs and metrics.
public enum FuseLimit: String, CaseIterable, Sendable {
    /// Inodes the client holds lookups on (its inode cache).
    case nodes = "fuse-nodes"
    /// Open files and directories.
    case openHandles = "fuse-open-handles"
    /// SETLKW requests waiting for a lock.
    case lockWaits = "fuse-lock-waits"
    /// Bytes one reply may take (READ, READDIR, xattr lists): larger requests get shorter replies.
    case replyBytes = "fuse-reply-bytes"
}

public struct FuseSessionLimits: Sendable, Equatable {
    /// Inodes with lookups held. A Linux guest drops inodes from its cache under memory
    /// pressure; at the limit a LOOKUP fails with ENFILE and READDIRPLUS leaves attributes out.
    public var nodes: Int
    /// Open handles; at the limit OPEN, OPENDIR and CREATE fail with ENFILE.
    public var openHandles: Int
    /// Waiting SETLKW requests, each holding a thread; past it SETLKW fails with ENOLCK.
    public var lockWaits: Int
    /// The largest reply built for one request (READ data, READDIR, xattr values and lists).
    public var replyBytes: Int

    public init(nodes: Int = 262_144, openHandles: Int = 16_384, lockWaits: Int = 32, replyBytes: Int = (1 << 20) + 4096) {
        self.nodes = nodes
        self.openHandles = openHandles
        self.lockWaits = lockWaits
        self.replyBytes = replyBytes
    }
}

/// How often each FUSE limit was reached, and a rate-limited log line naming it.
public typealias FuseLimitCounters = RateLimitedLimitCounters<FuseLimit>

/// The kernel's lookup counts: how many times each node id was handed out (LOOKUP,
/// READDIRPLUS, CREATE, MKDIR, MKNOD, SYMLINK, LINK) minus what FORGET returned. A node id
/// the client does not hold is stale: requests on it fail with ESTALE, so a client can reach
/// only inodes it was given. The root is always held and never counted.
struct NodeTable {
    private(set) var counts: [InodeNumber: UInt64] = [:]

    var count: Int { counts.count }

    func holds(_ node: InodeNumber) -> Bool { node == rootInode || counts[node] != nil }

    /// Counts one more lookup of `node`; false when the table is full and `node` is new.
    mutating func add(_ node: InodeNumber, limit: Int, force: Bool = false) -> Bool {
        guard node != rootInode else { return true }
        if let n = counts[node] {
            counts[node] = n &+ 1 == 0 ? n : n + 1
            return true
        }
        guard force || counts.count < limit else { return false }
        counts[node] = 1
        return true
    }

    mutating func forget(_ node: InodeNumber, _ count: UInt64) {
        guard let n = counts[node] else { return }
        counts[node] = n > count ? n - count : nil
    }

    mutating func removeAll() { counts.removeAll() }
}

/// Open files and directories by file handle. A handle is an index into this table plus the
/// slot's generation, never a pointer: a forged or stale value finds nothing (EBADF).
struct HandleTable {
    struct Slot {
        var generation: UInt32 = 0
        var file: OpenFile?
        var directory = false
    }

    private var slots: [Slot] = []
    private var free: [Int] = []
    private(set) var count = 0

    mutating func insert(_ file: OpenFile, directory: Bool, limit: Int) -> UInt64? {
        guard count < limit else { return nil }
        let index: Int
        if let reused = free.popLast() {
            index = reused
        } else {
            guard slots.count < Int(UInt32.max) else { return nil }
            slots.append(Slot())
            index = slots.count - 1
        }
        slots[index].generation &+= 1
        if slots[index].generation == 0 { slots[index].generation = 1 }
        slots[index].file = file
        slots[index].directory = directory
        count += 1
        return UInt64(slots[index].generation) << 32 | UInt64(index)
    }

    private func index(of handle: UInt64) -> Int? {
        let index = Int(handle & 0xffff_ffff)
        let generation = UInt32(truncatingIfNeeded: handle >> 32)
        guard index < slots.count, slots[index].generation == generation, slots[index].file != nil else { return nil }
        return index
    }

    func get(_ handle: UInt64) -> Slot? {
        guard let i = index(of: handle) else { return nil }
        return slots[i]
    }

    mutating func remove(_ handle: UInt64) -> Slot? {
        guard let i = index(of: handle) else { return nil }
        let slot = slots[i]
        slots[i].file = nil
        free.append(i)
        count -= 1
        return slot
    }

    /// Every open handle, the table emptied (session end).
    mutating func removeAll() -> [OpenFile] {
        let files = slots.compactMap(\.file)
        for i in slots.indices where slots[i].file != nil {
            slots[i].file = nil
            free.append(i)
        }
        count = 0
        return files
    }

    var openFiles: [OpenFile] { slots.compactMap(\.file) }
}

/// One SETLKW waiting on its own thread.
final class LockWait: Sendable {
    let unique: UInt64
    private let cancelledFlag = Atomic<Bool>(false)

    init(unique: UInt64) { self.unique = unique }

    var cancelled: Bool { cancelledFlag.load(ordering: .acquiring) }
    func cancel() { cancelledFlag.store(true, ordering: .releasing) }
}
