import Synchronization

/// Per-VM request and byte counters, exported by the daemon in Prometheus text format.
/// Atomics, so counting never contends with the requests it counts.
public final class VolumeCounters: Sendable {
    public let requests = Atomic<UInt64>(0)
    public let errors = Atomic<UInt64>(0)
    public let bytesRead = Atomic<UInt64>(0)
    public let bytesWritten = Atomic<UInt64>(0)
    public let copyUps = Atomic<UInt64>(0)
    public let quotaRefusals = Atomic<UInt64>(0)
    /// Limits of this VM (and of the connections serving it) reached.
    public let limits = LimitCounters()

    public init() {}

    func request() { requests.add(1, ordering: .relaxed) }
    func error() { errors.add(1, ordering: .relaxed) }

    public struct Snapshot: Sendable {
        public var requests, errors, bytesRead, bytesWritten, copyUps, quotaRefusals: UInt64
    }

    public var snapshot: Snapshot {
        Snapshot(requests: requests.load(ordering: .relaxed), errors: errors.load(ordering: .relaxed),
                 bytesRead: bytesRead.load(ordering: .relaxed), bytesWritten: bytesWritten.load(ordering: .relaxed),
                 copyUps: copyUps.load(ordering: .relaxed), quotaRefusals: quotaRefusals.load(ordering: .relaxed))
    }
}
