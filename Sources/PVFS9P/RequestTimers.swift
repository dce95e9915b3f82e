import CoreMetrics
import Foundation
import PVFS9PCodec

/// Request latency, from a request's receipt to its reply being handed to the transport: one
/// timer per VM and one per 9P operation (not per VM and operation, which would multiply the
/// series by the VMs served). Timers come from a swift-metrics factory the daemon gives (its
/// Prometheus registry); each is made once, the operations' here and a VM's when a connection
/// binds to it, so that recording a request allocates nothing.
public final class NinePRequestTimers: @unchecked Sendable {
    /// The timer labels, which the Prometheus backend uses as metric names.
    public static let vmLabel = "pvfs_request_duration_seconds"
    public static let operationLabel = "pvfs_operation_duration_seconds"

    /// Bucket bounds for both timers: 9P requests take from tens of microseconds (a getattr
    /// answered from memory) to seconds (an fsync or copy-up of a large file on a busy disk).
    public static let bucketBounds: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
        .milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5),
    ]

    private let factory: any MetricsFactory
    /// Indexed by the T-message type byte; nil for bytes that are no T-message.
    private let operations: [CoreMetrics.Timer?]
    private let lock = NSLock()
    private var byVM: [String: (timer: CoreMetrics.Timer, made: UInt64)] = [:]
    /// How many VM timers were made so far: orders them against `mark()`.
    private var made: UInt64 = 0

    public init(factory: any MetricsFactory) {
        self.factory = factory
        var operations = [CoreMetrics.Timer?](repeating: nil, count: 256)
        for type in Self.servedTypes {
            // "Twalk" → op="walk"
            operations[Int(type.rawValue)] = CoreMetrics.Timer(
                label: Self.operationLabel, dimensions: [("op", type.description.dropFirst().lowercased())], factory: factory)
        }
        self.operations = operations
    }

    /// The requests of 9P2000.L the server takes (each gets its series at once, at zero).
    static let servedTypes: [NinePMessageType] = [
        .tversion, .tauth, .tattach, .tflush, .twalk, .tlopen, .tlcreate, .tsymlink, .tmknod, .trename,
        .treadlink, .tgetattr, .tsetattr, .txattrwalk, .txattrcreate, .treaddir, .tfsync, .tlock, .tgetlock,
        .tlink, .tmkdir, .trenameat, .tunlinkat, .tstatfs, .tread, .twrite, .tclunk, .tremove,
    ]

    /// The timer of one VM, made on its first use.
    public func timer(forVM name: String) -> CoreMetrics.Timer {
        lock.withLock {
            if let entry = byVM[name] { return entry.timer }
            let timer = CoreMetrics.Timer(label: Self.vmLabel, dimensions: [("vm", name)], factory: factory)
            made += 1
            byVM[name] = (timer, made)
            return timer
        }
    }

    /// A point in time for `forgetVMs(otherThan:madeBefore:)`: take it before listing the VMs.
    public func mark() -> UInt64 {
        lock.withLock { made }
    }

    /// Drops the timers (and so the series) of VMs that no longer exist: those not in `existing`,
    /// a list of the VMs taken after `mark` was. A timer made after the mark is kept, since its VM
    /// may be newer than the list. A connection still holding a dropped timer records into
    /// nothing; the next attach to a VM of that name makes a new one.
    public func forgetVMs(otherThan existing: Set<String>, madeBefore mark: UInt64) {
        let gone: [CoreMetrics.Timer] = lock.withLock {
            let names = byVM.filter { !existing.contains($0.key) && $0.value.made <= mark }.map(\.key)
            return names.compactMap { byVM.removeValue(forKey: $0)?.timer }
        }
        for timer in gone { timer.destroy() }
    }

    /// Records one request of `type` that took `nanoseconds`, for `vm` when the connection is bound.
    @inline(__always)
    func record(_ type: NinePMessageType, vm: CoreMetrics.Timer?, nanoseconds: Int64) {
        operations[Int(type.rawValue)]?.recordNanoseconds(nanoseconds)
        vm?.recordNanoseconds(nanoseconds)
    }

    /// Now on the monotonic clock, in nanoseconds.
    @inline(__always)
    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
}
