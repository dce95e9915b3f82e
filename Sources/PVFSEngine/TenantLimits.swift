import Logging
import PVFSSystem
import Synchronization

/// The limits that keep one tenant (a VM and the connections serving it) from growing without
/// bound at the others' expense. Each has a name, used in logs, metrics and configuration.
/// Connection limits are enforced by the protocol layer (PVFS9P), the others by the engine.
public enum TenantLimit: String, CaseIterable, Sendable {
    // One 9P connection. Reaching the first three slows the client (its transport stops
    // reading); the others refuse the request.
    case outstandingRequests = "outstanding-requests"
    case outstandingBytes = "outstanding-bytes"
    case outstandingFlushes = "outstanding-flushes"
    case sessionsPerConnection = "sessions-per-connection"
    case fidsPerConnection = "fids-per-connection"
    case blockedLocks = "blocked-locks"
    case xattrBufferBytes = "xattr-buffer-bytes"
    // One VM.
    case quotaBytes = "quota-bytes"
    case quotaInodes = "quota-inodes"
    case linksPerInode = "links-per-inode"
    case hardLinks = "hard-links"
    case xattrsPerInode = "xattrs-per-inode"
    case xattrBytesPerInode = "xattr-bytes-per-inode"
    case xattrBytes = "xattr-bytes"
    case lockRecords = "lock-records"
    case lockRecordsPerSession = "lock-records-per-session"
}

/// How often each limit was reached, for metrics, and a log line naming it. A tenant pressing
/// on a limit would flood the log, so a limit is logged at most every `logInterval` seconds,
/// with the count of hits since the last line. One type serves every family of limits (the
/// engine's and 9P's `TenantLimit`, FUSE's `FuseLimit`).
public final class RateLimitedLimitCounters<Limit: Hashable & Sendable & RawRepresentable<String>>: Sendable {
    private struct Entry {
        var hits: UInt64 = 0
        var loggedHits: UInt64 = 0
        var loggedAt: UInt64 = 0
    }

    private let entries = Mutex<[Limit: Entry]>([:])
    private let logInterval: UInt64 = 10_000_000_000

    public init() {}

    /// Counts one hit of `limit`; logs it (rate-limited) with `detail` saying who and how much.
    public func record(_ limit: Limit, logger: Logger, _ detail: @autoclosure () -> String) {
        let now = monotonicNanoseconds()
        let unlogged: UInt64? = entries.withLock { all in
            var entry = all[limit] ?? Entry()
            entry.hits &+= 1
            defer { all[limit] = entry }
            guard entry.loggedAt == 0 || now &- entry.loggedAt >= logInterval else { return nil }
            let count = entry.hits &- entry.loggedHits
            entry.loggedHits = entry.hits
            entry.loggedAt = now
            return count
        }
        guard let unlogged else { return }
        let more = unlogged > 1 ? " (\(unlogged) times since the last report)" : ""
        logger.warning("limit \(limit.rawValue) reached: \(detail())\(more)")
    }

    /// Hits per limit so far.
    public var hits: [Limit: UInt64] {
        entries.withLock { $0.mapValues(\.hits) }
    }

    public func hits(_ limit: Limit) -> UInt64 {
        entries.withLock { $0[limit]?.hits ?? 0 }
    }
}

/// The counters of the tenant limits.
public typealias LimitCounters = RateLimitedLimitCounters<TenantLimit>
