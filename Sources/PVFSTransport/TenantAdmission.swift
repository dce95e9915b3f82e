import Dispatch
import Foundation
import Logging

/// Who a limit is kept for: a listener, a VM, or a Xen domain. Never a peer address: every
/// QEMU guest on user networking arrives as 127.0.0.1, so a cap per address would let one guest
/// lock out all the others.
public enum Tenant: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// A listener, by its configured name (its address when it has none).
    case listener(String)
    case vm(String)
    case xenDomain(UInt32)

    /// The metric label: `listener`, `vm` or `xen-domain`.
    public var kind: String {
        switch self {
        case .listener: "listener"
        case .vm: "vm"
        case .xenDomain: "xen-domain"
        }
    }

    public var name: String {
        switch self {
        case .listener(let name), .vm(let name): name
        case .xenDomain(let domid): String(domid)
        }
    }

    public var description: String { "\(kind) \(name)" }

    public static func < (lhs: Tenant, rhs: Tenant) -> Bool { (lhs.kind, lhs.name) < (rhs.kind, rhs.name) }
}

/// The limits kept per tenant, each named as its pvfsd.conf setting so that a log line or a
/// metric says which one was hit and where to change it.
public enum TransportLimit: String, Sendable, CaseIterable, Comparable {
    /// Socket connections of the whole daemon.
    case connections = "max-connections"
    case listenerConnections = "max-connections-per-listener"
    case vmConnections = "max-connections-per-vm"
    /// No Tversion and Tattach within the timeout after connecting.
    case handshakeTimeout = "handshake-timeout"
    /// No fid held, nothing outstanding and nothing received for the timeout.
    case idleTimeout = "idle-timeout"
    /// Reply bytes queued for one socket: past it the socket is not read (back-pressure).
    case replyQueueBytes = "reply-queue-bytes"
    /// Requests taken off one Xen ring and not finished: past it the ring is not consumed.
    case ringRequests = "xen-ring-requests"
    /// Reply bytes one Xen ring may hold (reserved for requests taken plus replies waiting for
    /// ring space): past it the ring is not consumed.
    case ringReplyBytes = "xen-ring-reply-bytes"

    public static func < (lhs: TransportLimit, rhs: TransportLimit) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Per-tenant limits of the transports (defaults documented in docs/operations.md).
public struct TenantLimits: Sendable, Equatable {
    /// Socket connections served at once by the whole daemon. Each listener is guaranteed an
    /// equal share of it (up to its own cap); only the rest is first come, first served, so a
    /// flood on one listener never takes another's share.
    public var maximumConnections = 1024
    /// Socket connections served at once through one listener.
    public var maximumConnectionsPerListener = 256
    /// Socket connections attached to one VM at once (counted from their first Tattach).
    public var maximumConnectionsPerVM = 64
    /// Seconds a connection may take from connecting to holding an attached fid (Tversion and
    /// Tattach); 0: no limit.
    public var handshakeTimeoutSeconds: Double = 30
    /// Seconds a connection that holds no fid and has nothing outstanding may stay silent
    /// (a mounted Linux client always holds its root fid); 0: no limit.
    public var idleTimeoutSeconds: Double = 300

    public init() {}

    /// Why a connection should be closed now, if it should: the timeout it ran over.
    public func expiredTimeout(_ activity: ConnectionActivity, now: UInt64) -> TransportLimit? {
        guard !activity.holdsFid, activity.outstandingRequests == 0 else { return nil }
        if !activity.hasAttached {
            if handshakeTimeoutSeconds > 0, now &- activity.connectedAt >= Self.nanoseconds(handshakeTimeoutSeconds) {
                return .handshakeTimeout
            }
            return nil
        }
        if idleTimeoutSeconds > 0, now &- activity.lastActivity >= Self.nanoseconds(idleTimeoutSeconds) {
            return .idleTimeout
        }
        return nil
    }

    /// How often a transport should look for expired connections.
    public var timeoutCheckIntervalNanoseconds: UInt64 {
        let shortest = [handshakeTimeoutSeconds, idleTimeoutSeconds].filter { $0 > 0 }.min() ?? 1
        return Self.nanoseconds(min(1, max(0.01, shortest / 4)))
    }

    static func nanoseconds(_ seconds: Double) -> UInt64 {
        seconds >= 1e9 ? UInt64.max : UInt64(max(0, seconds) * 1e9)
    }
}

/// What a connection is doing, as its transport sees it, for the handshake and idle timeouts.
/// Times are `TenantAdmission.now()` values (monotonic nanoseconds).
public struct ConnectionActivity: Sendable {
    public var connectedAt: UInt64
    public var lastActivity: UInt64
    /// It held an attached fid at some point.
    public var hasAttached: Bool
    /// It holds a fid now.
    public var holdsFid: Bool
    public var outstandingRequests: Int

    public init(connectedAt: UInt64, lastActivity: UInt64, hasAttached: Bool, holdsFid: Bool, outstandingRequests: Int) {
        self.connectedAt = connectedAt
        self.lastActivity = lastActivity
        self.hasAttached = hasAttached
        self.holdsFid = holdsFid
        self.outstandingRequests = outstandingRequests
    }
}

/// A connection refused (or a session refused) at a limit.
public struct AdmissionRefusal: Error, Sendable, CustomStringConvertible {
    public var tenant: Tenant
    public var limit: TransportLimit
    public var value: Int

    public var description: String {
        switch limit {
        case .connections: "the daemon serves \(value) connections (\(limit.rawValue))"
        default: "\(tenant) has \(value) connections (\(limit.rawValue))"
        }
    }
}

/// Usage a transport reports on demand (current values, not counters).
public struct TenantGauge: Sendable, Equatable {
    public var tenant: Tenant
    /// Connections the transport serves outside `admit` (virtio-fs front-ends).
    public var connections: Int
    public var outstandingRequests: Int
    public var queuedReplyBytes: Int

    public init(tenant: Tenant, connections: Int = 0, outstandingRequests: Int, queuedReplyBytes: Int) {
        self.tenant = tenant
        self.connections = connections
        self.outstandingRequests = outstandingRequests
        self.queuedReplyBytes = queuedReplyBytes
    }
}

/// One tenant's use of the limits, for metrics.
public struct TenantUsage: Sendable, Equatable {
    public var tenant: Tenant
    public var connections = 0
    public var outstandingRequests = 0
    public var queuedReplyBytes = 0
    /// Connections or sessions refused, and connections closed, at each limit.
    public var refusals: [TransportLimit: UInt64] = [:]
    /// Times a channel of the tenant stopped being read at each back-pressure limit.
    public var backpressure: [TransportLimit: UInt64] = [:]

    public init(tenant: Tenant) { self.tenant = tenant }
}

/// Admission and accounting of connections per tenant, independent of the thread or event-loop
/// machinery around it: a transport asks it before serving a connection (`admit`), tells it
/// when the connection's first attach names a VM (`bind`), and when the connection ends
/// (`release`). Transports also report limits they enforce themselves (timeouts,
/// back-pressure) so that metrics show every limit per tenant.
///
/// The daemon-wide cap is shared fairly: each listener is guaranteed
/// `min(maximumConnectionsPerListener, maximumConnections / listeners)` connections; a listener
/// beyond its guarantee borrows only from what no listener's guarantee holds.
public final class TenantAdmission: @unchecked Sendable {
    public let limits: TenantLimits
    private let logger: Logger
    private let lock = NSLock()

    private struct ListenerShare {
        var connections = 0
    }

    private struct Ticket {
        var listener: String
        /// The VMs the connection attached to. One at a time, but a Tversion starts a new
        /// session that may attach another, and an attach the connection then refuses (another
        /// VM than its own) has passed the resolver: counting every VM it reached errs on the
        /// safe side.
        var vms: Set<String> = []
    }

    /// Guarded by `lock`.
    private var listenerShares: [String: ListenerShare] = [:]
    private var vmConnections: [String: Int] = [:]
    private var tickets: [UInt64: Ticket] = [:]
    private var total = 0
    private var refusals: [Tenant: [TransportLimit: UInt64]] = [:]
    private var backpressure: [Tenant: [TransportLimit: UInt64]] = [:]
    private var sources: [UInt64: @Sendable () -> [TenantGauge]] = [:]
    private var nextSource: UInt64 = 1
    /// Last time a refusal at a (tenant, limit) was logged, and how many since.
    private var logged: [LogKey: (at: UInt64, suppressed: Int)] = [:]

    private struct LogKey: Hashable {
        var tenant: Tenant
        var limit: TransportLimit
    }

    public init(limits: TenantLimits = TenantLimits(), listeners: [String] = [], logger: Logger) {
        self.limits = limits
        self.logger = logger
        for name in listeners { listenerShares[name] = ListenerShare() }
    }

    /// Monotonic nanoseconds, the clock of `ConnectionActivity`.
    public static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Makes `name` known, so that it gets its guaranteed share from the start.
    public func addListener(_ name: String) {
        lock.withLock { if listenerShares[name] == nil { listenerShares[name] = ListenerShare() } }
    }

    /// The connections each listener is guaranteed. Caller holds `lock`.
    private var guaranteedShareLocked: Int {
        let count = max(1, listenerShares.count)
        return min(limits.maximumConnectionsPerListener, limits.maximumConnections / count)
    }

    /// Admits connection `id` arriving on `listener`, or says which limit refuses it.
    public func admit(connection id: UInt64, listener: String) -> AdmissionRefusal? {
        lock.lock()
        defer { lock.unlock() }
        if listenerShares[listener] == nil { listenerShares[listener] = ListenerShare() }
        var share = listenerShares[listener] ?? ListenerShare()
        let tenant = Tenant.listener(listener)
        if share.connections >= limits.maximumConnectionsPerListener {
            return refuseLocked(AdmissionRefusal(tenant: tenant, limit: .listenerConnections, value: share.connections))
        }
        let guaranteed = guaranteedShareLocked
        if share.connections >= guaranteed {
            // Borrowing: only from what no listener's guarantee holds.
            let held = listenerShares.values.reduce(0) { $0 + max($1.connections, guaranteed) }
            if held >= limits.maximumConnections || total >= limits.maximumConnections {
                return refuseLocked(AdmissionRefusal(tenant: tenant, limit: .connections, value: total))
            }
        }
        share.connections += 1
        listenerShares[listener] = share
        total += 1
        tickets[id] = Ticket(listener: listener)
        return nil
    }

    /// Counts connection `id` against `vm` from its first attach to it on; later attaches of
    /// the same connection to the same VM change nothing. Throws when the VM is at its cap.
    public func bind(connection id: UInt64, toVM vm: String) throws(AdmissionRefusal) {
        lock.lock()
        defer { lock.unlock() }
        guard var ticket = tickets[id], !ticket.vms.contains(vm) else { return }
        let count = vmConnections[vm] ?? 0
        if count >= limits.maximumConnectionsPerVM {
            throw refuseLocked(AdmissionRefusal(tenant: .vm(vm), limit: .vmConnections, value: count))
        }
        vmConnections[vm] = count + 1
        ticket.vms.insert(vm)
        tickets[id] = ticket
    }

    /// The connection ended: its places are free again. Idempotent.
    public func release(connection id: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        guard let ticket = tickets.removeValue(forKey: id) else { return }
        total -= 1
        listenerShares[ticket.listener, default: ListenerShare()].connections -= 1
        for vm in ticket.vms { decrementVMLocked(vm) }
    }

    private func decrementVMLocked(_ vm: String) {
        let left = (vmConnections[vm] ?? 1) - 1
        vmConnections[vm] = left > 0 ? left : nil
    }

    private func refuseLocked(_ refusal: AdmissionRefusal) -> AdmissionRefusal {
        refusals[refusal.tenant, default: [:]][refusal.limit, default: 0] += 1
        return refusal
    }

    /// Counts a connection closed at a limit the transport keeps itself (a timeout).
    public func countClosed(_ tenant: Tenant, limit: TransportLimit) {
        lock.withLock { refusals[tenant, default: [:]][limit, default: 0] += 1 }
    }

    /// Counts a channel of `tenant` that stopped being read at a back-pressure limit.
    public func countBackpressure(_ tenant: Tenant, limit: TransportLimit) {
        lock.withLock { backpressure[tenant, default: [:]][limit, default: 0] += 1 }
    }

    /// Whether a refusal at (tenant, limit) should be logged now: the first one is, then at
    /// most one every 10 s, with the number left unlogged meanwhile. A flood of refused
    /// connections thus cannot flood the log.
    public func shouldLog(_ tenant: Tenant, _ limit: TransportLimit) -> (log: Bool, suppressed: Int) {
        let now = Self.now()
        return lock.withLock {
            let key = LogKey(tenant: tenant, limit: limit)
            if let last = logged[key], now &- last.at < 10_000_000_000 {
                logged[key] = (last.at, last.suppressed + 1)
                return (false, 0)
            }
            let suppressed = logged[key]?.suppressed ?? 0
            logged[key] = (now, 0)
            return (true, suppressed)
        }
    }

    /// Logs a refusal or a close at a limit, rate-limited per tenant and limit.
    public func logLimit(_ tenant: Tenant, _ limit: TransportLimit, _ message: @autoclosure () -> String, peer: String? = nil) {
        let (log, suppressed) = shouldLog(tenant, limit)
        guard log else { return }
        var text = message()
        if suppressed > 0 { text += " (\(suppressed) more since the last report)" }
        if let peer {
            logger.warning("\(text)", metadata: ["peer": "\(peer)", "limit": "\(limit.rawValue)"])
        } else {
            logger.warning("\(text)", metadata: ["limit": "\(limit.rawValue)"])
        }
    }

    /// Registers a reporter of current usage (a transport's connections or rings); returns a
    /// token for `removeSource`.
    public func addSource(_ report: @escaping @Sendable () -> [TenantGauge]) -> UInt64 {
        lock.withLock {
            defer { nextSource += 1 }
            sources[nextSource] = report
            return nextSource
        }
    }

    public func removeSource(_ token: UInt64) {
        lock.withLock { _ = sources.removeValue(forKey: token) }
    }

    /// The VMs connection `id` is counted against (from its attaches).
    public func vms(ofConnection id: UInt64) -> [String] {
        lock.withLock { tickets[id].map { Array($0.vms) } ?? [] }
    }

    /// Connections counted now for `tenant` (listener or VM).
    public func connections(of tenant: Tenant) -> Int {
        lock.withLock {
            switch tenant {
            case .listener(let name): listenerShares[name]?.connections ?? 0
            case .vm(let name): vmConnections[name] ?? 0
            case .xenDomain: 0
            }
        }
    }

    /// Every tenant's use of the limits, sorted by tenant.
    public var usage: [TenantUsage] {
        let (snapshot, reporters) = lock.withLock { () -> ([Tenant: TenantUsage], [@Sendable () -> [TenantGauge]]) in
            var out: [Tenant: TenantUsage] = [:]
            func entry(_ tenant: Tenant) -> TenantUsage { out[tenant] ?? TenantUsage(tenant: tenant) }
            for (name, share) in listenerShares {
                var u = entry(.listener(name))
                u.connections = share.connections
                out[.listener(name)] = u
            }
            for (name, count) in vmConnections {
                var u = entry(.vm(name))
                u.connections = count
                out[.vm(name)] = u
            }
            for (tenant, counts) in refusals {
                var u = entry(tenant)
                u.refusals = counts
                out[tenant] = u
            }
            for (tenant, counts) in backpressure {
                var u = entry(tenant)
                u.backpressure = counts
                out[tenant] = u
            }
            return (out, Array(sources.values))
        }
        var result = snapshot
        // Reporters run outside the lock: they take their transports' locks.
        for report in reporters {
            for gauge in report() {
                var u = result[gauge.tenant] ?? TenantUsage(tenant: gauge.tenant)
                u.connections += gauge.connections
                u.outstandingRequests += gauge.outstandingRequests
                u.queuedReplyBytes += gauge.queuedReplyBytes
                result[gauge.tenant] = u
            }
        }
        return result.values.sorted { $0.tenant < $1.tenant }
    }
}
