import Logging
import PVFSStore
import PVFSSystem
import Synchronization
import SystemPackage

/// A VM's inode limit when it has no explicit inode quota. Every inode's metadata lives in
/// memory, so a VM without an inode limit could grow the daemon without bound with empty files,
/// fifos or device nodes (which cost no bytes); the default keeps memory in proportion to the
/// VM's size, as a local filesystem's inode table is (docs/quotas.md).
public enum InodeQuota {
    /// One inode per 16 KiB of byte quota: ext4's default bytes-per-inode ratio (mke2fs).
    public static let bytesPerInode: Int64 = 16 << 10
    /// The least a byte quota yields, so that a small VM still holds a usable tree.
    public static let minimumDerived: Int64 = 1024

    /// The inode limit of a VM: its explicit inode quota; else one inode per 16 KiB of its byte
    /// quota (at least 1,024); else `withoutQuota` (nil: none).
    public static func effective(quotaBytes: Int64?, quotaInodes: Int64?, withoutQuota: Int64?) -> Int64? {
        if let quotaInodes { return quotaInodes }
        if let quotaBytes { return max(minimumDerived, max(0, quotaBytes) / bytesPerInode) }
        return withoutQuota
    }
}

/// Limits on what a VM's metadata may hold in memory beyond its byte and inode quota. The
/// daemon sets them for every VM (pvfsd.conf); reaching one fails the operation with the errno a
/// local filesystem gives, and the limit is counted and logged by name (`TenantLimit`).
public struct VolumeLimits: Sendable, Equatable {
    /// Names one file (or subdirectories one directory) may have: EMLINK past it, as ext4's 65000.
    public var linksPerInode: UInt32 = 65000
    /// Hard links a VM may add to its files, all files together (each is a name in memory that
    /// costs no inode): EDQUOT past it. nil: as many as the VM's inode limit.
    public var hardLinks: Int64? = nil
    /// Extended attributes on one inode, and their bytes (names plus values): ENOSPC past them,
    /// as a filesystem whose xattr space for the inode is full.
    public var xattrsPerInode: Int = 4096
    public var xattrBytesPerInode: Int = 1 << 20
    /// Bytes of extended attributes (names plus values) a VM's inodes hold in all: EDQUOT past it.
    public var xattrBytes: Int64 = 64 << 20
    /// Byte-range and flock lock records a VM's clients hold at once, and one session (a 9P
    /// attach, a FUSE mount) of them: ENOLCK past them. Adjacent ranges of one owner merge.
    public var lockRecords: Int = 1 << 16
    public var lockRecordsPerSession: Int = 1 << 14
    /// The inode limit of a VM with neither a byte nor an inode quota (nil: none).
    public var inodesWithoutQuota: Int64? = 1 << 22

    public init() {}
}

/// What a VM is charged for, and its limits. Reservations are checked and added atomically,
/// so concurrent writers cannot together pass a limit.
final class QuotaAccount: Sendable {
    typealias Usage = VMUsage
    typealias Limits = VMQuota

    private struct State {
        var usage: Usage
        var limits: Limits
        var changedSinceSave = false
    }

    private let state: Mutex<State>
    private let limitCounters: LimitCounters?
    private let logger: Logger?

    init(usage: Usage, limits: Limits, counters: LimitCounters? = nil, logger: Logger? = nil) {
        state = Mutex(State(usage: usage, limits: limits))
        limitCounters = counters
        self.logger = logger
    }

    private func refused(_ limit: TenantLimit, _ detail: String) -> Errno {
        if let limitCounters, let logger { limitCounters.record(limit, logger: logger, detail) }
        return Errno.diskQuotaExceeded
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
        let refusal: (TenantLimit, String)? = state.withLock { s in
            // Sizes are the client's: sums that would not fit (sparse files of 16 TiB, many of
            // them) are past any limit, not a wrap-around.
            let (newBytes, bytesOverflow) = s.usage.bytes.addingReportingOverflow(bytes)
            let (newInodes, inodesOverflow) = s.usage.inodes.addingReportingOverflow(inodes)
            if bytes > 0, bytesOverflow || s.limits.bytes.map({ newBytes > $0 }) == true {
                return (.quotaBytes, "\(s.usage.bytes) of \(s.limits.bytes.map(String.init) ?? "unlimited") bytes used, \(bytes) more asked")
            }
            if inodes > 0, inodesOverflow || s.limits.inodes.map({ newInodes > $0 }) == true {
                return (.quotaInodes, "\(s.usage.inodes) of \(s.limits.inodes.map(String.init) ?? "unlimited") inodes used")
            }
            s.usage.bytes = bytesOverflow ? (bytes < 0 ? .min : .max) : newBytes
            s.usage.inodes = inodesOverflow ? (inodes < 0 ? .min : .max) : newInodes
            s.changedSinceSave = true
            return nil
        }
        if let refusal { throw refused(refusal.0, refusal.1) }
    }

    /// Fails with EDQUOT when usage is already past a limit: for operations that allocate nothing
    /// measurable (link) but must not proceed over quota.
    func checkWithinLimits() throws(Errno) {
        let refusal: (TenantLimit, String)? = state.withLock { s in
            if let limit = s.limits.bytes, s.usage.bytes > limit { return (.quotaBytes, "\(s.usage.bytes) of \(limit) bytes used") }
            if let limit = s.limits.inodes, s.usage.inodes >= limit { return (.quotaInodes, "\(s.usage.inodes) of \(limit) inodes used") }
            return nil
        }
        if let refusal { throw refused(refusal.0, refusal.1) }
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
