import PVFS9P
import PVFSEngine

/// Limits of each 9P connection (TCP, Unix socket or Xen device). The first three slow a client
/// down (its transport stops reading until requests finish); the others refuse what passes them.
/// See docs/operations.md.
public struct ConnectionLimits: Sendable, Equatable {
    public var outstandingRequests = NinePConfiguration().maximumOutstandingRequests
    public var outstandingBytes = NinePConfiguration().maximumOutstandingBytes
    public var outstandingFlushes = NinePConfiguration().maximumOutstandingFlushes
    public var sessions = NinePConfiguration().maximumSessions
    public var fids = NinePConfiguration().maximumFids
    public var blockedLocks = NinePConfiguration().maximumBlockedLocks
    public var xattrBufferBytes = NinePConfiguration().maximumXattrBytes

    public init() {}

    /// A connection configuration with these limits.
    public func apply(to configuration: inout NinePConfiguration) {
        configuration.maximumOutstandingRequests = outstandingRequests
        configuration.maximumOutstandingBytes = outstandingBytes
        configuration.maximumOutstandingFlushes = outstandingFlushes
        configuration.maximumSessions = sessions
        configuration.maximumFids = fids
        configuration.maximumBlockedLocks = blockedLocks
        configuration.maximumXattrBytes = xattrBufferBytes
    }
}

extension DaemonConfiguration {
    /// The pvfsd.conf keys of the limits, with what each sets.
    ///
    ///     max-outstanding-requests = 64          # per connection: reading pauses past it
    ///     max-outstanding-bytes = 32M
    ///     max-outstanding-flushes = 64
    ///     max-sessions-per-connection = 256      # attaches not yet clunked: EUSERS past it
    ///     max-fids-per-connection = 524288       # ENFILE past it
    ///     max-blocked-locks = 16                 # lock waits per connection: BLOCKED past it
    ///     max-xattr-buffer-bytes = 8M            # xattr values held in fids: ENOMEM past it
    ///     vm-links-per-inode = 65000             # EMLINK past it
    ///     vm-hard-links = auto                   # per VM: auto = its inode limit; EDQUOT past it
    ///     vm-xattrs-per-inode = 4096             # ENOSPC past it
    ///     vm-xattr-bytes-per-inode = 1M          # ENOSPC past it
    ///     vm-xattr-bytes = 64M                   # per VM: EDQUOT past it
    ///     vm-lock-records = 65536                # per VM: ENOLCK past it
    ///     vm-lock-records-per-session = 16384    # ENOLCK past it
    ///     vm-inodes-without-quota = 4194304      # inode limit of a VM with no quota ('none': no limit)
    mutating func parseLimit(_ key: String, _ value: String, line: Int) throws -> Bool {
        func count(allowZero: Bool = false) throws -> Int {
            guard let n = Self.parseCount(value), n > 0 || (allowZero && n == 0), n <= Int64(Int.max) else {
                throw ConfigurationError("line \(line): \(key) takes a \(allowZero ? "" : "positive ")number (K, M, G suffixes allowed)")
            }
            return Int(n)
        }
        switch key {
        case "max-outstanding-requests": connectionLimits.outstandingRequests = try count()
        case "max-outstanding-bytes": connectionLimits.outstandingBytes = try count()
        case "max-outstanding-flushes": connectionLimits.outstandingFlushes = try count()
        case "max-sessions-per-connection": connectionLimits.sessions = try count()
        case "max-fids-per-connection": connectionLimits.fids = try count()
        case "max-blocked-locks": connectionLimits.blockedLocks = try count(allowZero: true)
        case "max-xattr-buffer-bytes": connectionLimits.xattrBufferBytes = try count(allowZero: true)
        case "vm-links-per-inode":
            let n = try count()
            guard n >= 2, n <= Int(UInt32.max) else { throw ConfigurationError("line \(line): vm-links-per-inode is 2 to \(UInt32.max)") }
            volumeLimits.linksPerInode = UInt32(n)
        case "vm-hard-links": volumeLimits.hardLinks = value == "auto" ? nil : Int64(try count(allowZero: true))
        case "vm-xattrs-per-inode": volumeLimits.xattrsPerInode = try count()
        case "vm-xattr-bytes-per-inode": volumeLimits.xattrBytesPerInode = try count()
        case "vm-xattr-bytes": volumeLimits.xattrBytes = Int64(try count(allowZero: true))
        case "vm-lock-records": volumeLimits.lockRecords = try count()
        case "vm-lock-records-per-session": volumeLimits.lockRecordsPerSession = try count()
        case "vm-inodes-without-quota":
            volumeLimits.inodesWithoutQuota = value == "none" ? nil : Int64(try count())
        default:
            return false
        }
        return true
    }

    /// "4096", "64K", "32M", "1G" (powers of 1024).
    static func parseCount(_ text: String) -> Int64? {
        guard let last = text.last else { return nil }
        let shifts: [Character: Int64] = ["K": 10, "k": 10, "M": 20, "m": 20, "G": 30, "g": 30]
        if let shift = shifts[last] {
            guard let n = Int64(text.dropLast()), n >= 0 else { return nil }
            let (value, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
            return overflow ? nil : value
        }
        return Int64(text)
    }

    /// The configuration of each 9P connection the daemon serves.
    public func ninePConfiguration(unboundLimitCounters: LimitCounters?) -> NinePConfiguration {
        var configuration = NinePConfiguration()
        connectionLimits.apply(to: &configuration)
        configuration.unboundLimitCounters = unboundLimitCounters
        return configuration
    }
}
