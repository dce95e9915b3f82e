import Dispatch
import Logging

/// Work the engine repeats on a timer of its own: writing lazily kept sizes, times and usage to
/// the catalog, and (for a VM served without pvfsd) picking up a quota changed in the catalog.
/// The hosting process only says how often and stops it before it closes the volumes.
public final class PeriodicWork: @unchecked Sendable {
    private let queue: DispatchQueue
    private var timers: [DispatchSourceTimer] = []

    init(label: String) {
        queue = DispatchQueue(label: label)
    }

    /// Runs `body` every `seconds` (nothing when `seconds` is not positive).
    func every(_ seconds: Int, _ body: @escaping @Sendable () -> Void) {
        guard seconds > 0 else { return }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .seconds(seconds), repeating: .seconds(seconds))
        timer.setEventHandler(handler: body)
        timer.resume()
        timers.append(timer)
    }

    /// Cancels the timers and waits for a run under way, so the volumes can be closed next.
    public func stop() {
        for timer in timers { timer.cancel() }
        timers.removeAll()
        queue.sync {}
    }

    deinit {
        for timer in timers { timer.cancel() }
    }
}

extension VolumeRegistry {
    /// Saves every open volume's usage, sizes and times every `seconds` until the returned
    /// work is stopped (pvfsd stops it before `closeAll`).
    public func savingUsagePeriodically(every seconds: Int) -> PeriodicWork {
        let work = PeriodicWork(label: "pvfs.engine.usage")
        work.every(seconds) { [weak self] in self?.saveUsage() }
        return work
    }
}

extension Volume {
    /// The housekeeping of a volume served without pvfsd: its usage, sizes and times saved
    /// every `saveSeconds`, and its quota read from the catalog every `quotaSeconds` (no control
    /// socket tells such a process of `pvfs-vm set-quota`).
    public func housekeeping(saveEvery saveSeconds: Int, reloadQuotaEvery quotaSeconds: Int, logger: Logger) -> PeriodicWork {
        let work = PeriodicWork(label: "pvfs.engine.housekeeping")
        work.every(saveSeconds) { [weak self] in
            do { try self?.saveUsage() } catch { logger.warning("saving usage and times: \(error)") }
        }
        work.every(quotaSeconds) { [weak self] in
            do { _ = try self?.reloadQuota() } catch { logger.warning("reading the VM's quota: \(error)") }
        }
        return work
    }
}
