import Synchronization
import PVFSSystem
import SystemPackage

/// What a VM is charged for, and its limits. Reservations are checked and added atomically,
/// so concurrent writers cannot together pass a limit.
final class QuotaAccount: Sendable {
    struct Usage: Sendable, Equatable {
        var bytes: Int64
        var inodes: Int64
    }

    struct Limits: Sendable, Equatable {
        var bytes: Int64?
        var inodes: Int64?
    }

    private struct State {
        var usage: Usage
        var limits: Limits
        var changedSinceSave = false
    }

    private let state: Mutex<State>

    init(usage: Usage, limits: Limits) {
        state = Mutex(State(usage: usage, limits: limits))
    }

    var usage: Usage { state.withLock { $0.usage } }
    var limits: Limits { state.withLock { $0.limits } }

    func setLimits(_ limits: Limits) {
        state.withLock { $0.limits = limits }
    }

    func setUsage(_ usage: Usage) {
        state.withLock {
            $0.usage = usage
            $0.changedSinceSave = true
        }
    }

    /// Charges a change. Growth is refused with EDQUOT when it would pass a limit; shrinking is
    /// always allowed, even over a limit (deleting must work after a quota was lowered).
    func charge(bytes: Int64, inodes: Int64) throws(Errno) {
        try state.withLock { (s: inout State) throws(Errno) in
            if bytes > 0, let limit = s.limits.bytes, s.usage.bytes + bytes > limit { throw Errno.diskQuotaExceeded }
            if inodes > 0, let limit = s.limits.inodes, s.usage.inodes + inodes > limit { throw Errno.diskQuotaExceeded }
            s.usage.bytes += bytes
            s.usage.inodes += inodes
            s.changedSinceSave = true
        }
    }

    /// Fails with EDQUOT when usage is already past a limit: for operations that allocate nothing
    /// measurable (link) but must not proceed over quota.
    func checkWithinLimits() throws(Errno) {
        try state.withLock { (s: inout State) throws(Errno) in
            if let limit = s.limits.bytes, s.usage.bytes > limit { throw Errno.diskQuotaExceeded }
            if let limit = s.limits.inodes, s.usage.inodes >= limit { throw Errno.diskQuotaExceeded }
        }
    }

    /// Returns usage when it changed since the last call (for periodic persistence).
    func takeChangedUsage() -> Usage? {
        state.withLock { s in
            guard s.changedSinceSave else { return nil }
            s.changedSinceSave = false
            return s.usage
        }
    }
}

/// The charging rule (docs/quotas.md): a VM pays for the data it owns privately, never for what
/// it shares with its template.
enum Charge {
    static let blockSize: Int64 = 4096

    static func roundUp(_ bytes: Int64) -> Int64 {
        bytes <= 0 ? 0 : (bytes + blockSize - 1) / blockSize * blockSize
    }

    /// Bytes for a file of `size` held privately.
    static func fileBytes(size: Int64) -> Int64 { roundUp(size) }

    /// The charge of an inode record, given whether the VM created it (not from the template).
    static func of(_ record: InodeRecord, createdByVM: Bool, privateSize: Int64?, xattrBytes: Int64) -> QuotaAccount.Usage {
        var bytes: Int64 = 0
        var inodes: Int64 = 0
        switch record.kind {
        case .regular:
            if case .privateFile = record.data {
                bytes = fileBytes(size: privateSize ?? record.size)
                inodes = 1
            } else if createdByVM {
                bytes = fileBytes(size: record.size)
                inodes = 1
            }
        case .directory:
            if createdByVM { bytes = blockSize; inodes = 1 }
        case .symlink:
            if createdByVM { bytes = Int64(record.symlinkTarget?.count ?? 0); inodes = 1 }
        default:
            if createdByVM { inodes = 1 }
        }
        if record.privateXattrs { bytes += xattrBytes }
        return .init(bytes: bytes, inodes: inodes)
    }

    static func xattrBytes(_ set: [[UInt8]: [UInt8]]) -> Int64 {
        set.reduce(0) { $0 + Int64($1.key.count + $1.value.count) }
    }
}
