import Foundation
import PVFS9PCodec
import PVFSEngine
import PVFSSystem
import SystemPackage

/// Where a fid's file was reached from, for the requests that name a file by its fid alone
/// (Tremove, Trename). Checked against the directory before use: another client may have
/// renamed the file since.
struct FidPath: Sendable, Equatable {
    var parent: InodeNumber
    var name: [UInt8]
}

/// A pending Txattrcreate: writes fill `value`, Tclunk commits it.
struct XattrWrite: Sendable {
    var name: [UInt8]
    var flags: UInt32
    var size: Int
    var value: [UInt8]
    /// Bytes written from offset 0 without a gap.
    var written: Int
}

/// What a fid is used for.
enum FidState: @unchecked Sendable {
    /// Names a file; not opened.
    case idle
    /// Tlopen or Tlcreate in progress: no second open, no I/O yet.
    case opening
    case open(OpenFile)
    /// From Txattrwalk: reads return this value (or the NUL-separated name list).
    case xattrRead([UInt8])
    /// After Txattrcreate.
    case xattrWrite(XattrWrite)

    var isXattr: Bool {
        switch self {
        case .xattrRead, .xattrWrite: true
        default: false
        }
    }
}

/// One fid of a connection.
final class Fid: @unchecked Sendable {
    let number: UInt32
    let view: VMView
    /// The user of the attach this fid descends from.
    let uid: UInt32

    /// Guards the mutable fields below (not `uses`/`detached`, which the table's lock guards).
    /// Shared by the fids of one table: the sections are tiny, and a fid costs no mutex of its own.
    let lock: NSLock
    var inode: InodeNumber
    var kind: FileKind
    var path: FidPath?
    var state: FidState = .idle
    /// Lock owners that took locks through this fid: their locks on the inode go when it is clunked.
    var lockOwners: Set<UInt64> = []
    /// Xattr bytes this fid holds against the connection's budget.
    var xattrBytes = 0

    /// Requests using the fid now. Guarded by the table's lock.
    var uses = 0
    /// Clunked, removed, or its connection closed: finalized when `uses` drops to 0.
    var detached = false
    /// Counted among its session's fids (it made it into the table). Guarded by the table's lock.
    var counted = false

    init(number: UInt32, view: VMView, uid: UInt32, inode: InodeNumber, kind: FileKind, path: FidPath?, lock: NSLock) {
        self.lock = lock
        self.number = number
        self.view = view
        self.uid = uid
        self.inode = inode
        self.kind = kind
        self.path = path
    }

    func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// A consistent copy of what requests read.
    struct Snapshot {
        var inode: InodeNumber
        var kind: FileKind
        var path: FidPath?
        var state: FidState
    }

    var snapshot: Snapshot {
        lock.lock()
        defer { lock.unlock() }
        return Snapshot(inode: inode, kind: kind, path: path, state: state)
    }

    /// The open handle, when the fid is opened.
    var openHandle: OpenFile? {
        lock.lock()
        defer { lock.unlock() }
        if case .open(let handle) = state { return handle }
        return nil
    }
}

/// The fids of one connection (of one protocol session: Tversion starts a new table).
///
/// Requests take a use of each fid they work on; a clunk detaches the fid at once (its number
/// is free again) and whoever drops the last use finalizes it: closes its handle, drops its
/// locks. So a Tclunk racing a Tread never closes a handle under the read.
final class FidTable: @unchecked Sendable {
    private let lock = NSLock()
    /// The lock of every fid's state in this table (never held together with `lock`).
    let fidStateLock = NSLock()
    private var fids: [UInt32: Fid] = [:]
    /// Fids of each session (by view) not yet finalized: a session ends with its last fid.
    private var sessionFids: [ObjectIdentifier: Int] = [:]
    private var closed = false
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return fids.count
    }

    func contains(_ number: UInt32) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return fids[number] != nil
    }

    /// Every fid in the table (a connection at rest, handing its session over).
    func all() -> [Fid] {
        lock.lock()
        defer { lock.unlock() }
        return fids.values.sorted { $0.number < $1.number }
    }

    /// Takes a use of a fid; nil when the number is not in use.
    func acquire(_ number: UInt32) -> Fid? {
        lock.lock()
        defer { lock.unlock() }
        guard let fid = fids[number] else { return nil }
        fid.uses += 1
        return fid
    }

    /// Drops a use; true when the caller must finalize the fid.
    func release(_ fid: Fid) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        fid.uses -= 1
        return fid.detached && fid.uses == 0
    }

    /// Adds a new fid. EINVAL when the number is in use (or is NOFID), ENFILE past the limit,
    /// EBADF when the table was closed (the session ended meanwhile): the caller then finalizes
    /// the fid itself.
    func insert(_ fid: Fid) throws(Errno) {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw Errno.badFileDescriptor }
        guard fid.number != NineP.noFid, fids[fid.number] == nil else { throw Errno.invalidArgument }
        guard fids.count < limit else { throw Errno.tooManyOpenFilesInSystem }
        fids[fid.number] = fid
        fid.counted = true
        sessionFids[ObjectIdentifier(fid.view), default: 0] += 1
    }

    /// Takes a finalized fid off its session's count; true when it was the session's last fid.
    func forget(_ fid: Fid) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard fid.counted else { return false }
        fid.counted = false
        let key = ObjectIdentifier(fid.view)
        let left = (sessionFids[key] ?? 1) - 1
        sessionFids[key] = left > 0 ? left : nil
        return left <= 0
    }

    /// Whether a session has fids in this table.
    func hasFids(of view: VMView) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return sessionFids[ObjectIdentifier(view)] != nil
    }

    /// Removes a fid the caller holds a use of; its number is free from now on.
    func detach(_ fid: Fid) {
        lock.lock()
        defer { lock.unlock() }
        if fids[fid.number] === fid { fids[fid.number] = nil }
        fid.detached = true
    }

    /// Ends the table: no fid can be added any more. Returns the fids nobody uses (to finalize
    /// now); the others are finalized by their last user.
    func close() -> [Fid] {
        lock.lock()
        defer { lock.unlock() }
        closed = true
        var idle: [Fid] = []
        for fid in fids.values {
            fid.detached = true
            if fid.uses == 0 { idle.append(fid) }
        }
        fids.removeAll()
        return idle
    }
}
