import Dispatch

/// Work a process repeats on timers of its own: the engine's flush of lazily kept sizes, times
/// and usage, pvfsd's janitor. The runs of one `PeriodicWork` take turns on one queue; the owner
/// stops it before it tears down what the runs use.
public final class PeriodicWork: @unchecked Sendable {
    private let queue: DispatchQueue
    private var timers: [DispatchSourceTimer] = []

    public init(label: String, qos: DispatchQoS = .unspecified) {
        queue = DispatchQueue(label: label, qos: qos)
    }

    /// Runs `body` every `seconds`, first after `seconds` (nothing when `seconds` is not positive).
    public func every(_ seconds: Int, _ body: @escaping @Sendable () -> Void) {
        guard seconds > 0 else { return }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .seconds(seconds), repeating: .seconds(seconds))
        timer.setEventHandler(handler: body)
        timer.resume()
        timers.append(timer)
    }

    /// Cancels the timers; a run under way finishes on its own.
    public func cancel() {
        for timer in timers { timer.cancel() }
        timers.removeAll()
    }

    /// Cancels the timers and waits for a run under way, so what the runs use can be closed next.
    public func stop() {
        cancel()
        queue.sync {}
    }

    deinit {
        for timer in timers { timer.cancel() }
    }
}
