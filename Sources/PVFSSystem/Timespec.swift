import Glibc

/// A point in time with nanosecond precision, as filesystems store it.
public struct Timespec: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var seconds: Int64
    public var nanoseconds: Int64

    public init(seconds: Int64, nanoseconds: Int64) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    public init(_ ts: timespec) {
        self.init(seconds: Int64(ts.tv_sec), nanoseconds: Int64(ts.tv_nsec))
    }

    /// Nanoseconds since the epoch, the catalog's representation.
    public init(totalNanoseconds: Int64) {
        var s = totalNanoseconds / 1_000_000_000
        var ns = totalNanoseconds % 1_000_000_000
        if ns < 0 { s -= 1; ns += 1_000_000_000 }
        self.init(seconds: s, nanoseconds: ns)
    }

    public var totalNanoseconds: Int64 { seconds &* 1_000_000_000 &+ nanoseconds }

    public var timespec: Glibc.timespec { Glibc.timespec(tv_sec: Int(seconds), tv_nsec: Int(nanoseconds)) }

    public static var now: Timespec {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timespec(ts)
    }

    public static let zero = Timespec(seconds: 0, nanoseconds: 0)

    public static func < (a: Timespec, b: Timespec) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }

    public var description: String { "\(seconds).\(String(nanoseconds + 1_000_000_000).dropFirst())" }
}

/// Monotonic clock reading in nanoseconds, for durations and grace periods.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
