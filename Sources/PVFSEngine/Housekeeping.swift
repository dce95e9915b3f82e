import Logging
import PVFSSystem

// The engine's own timers (PVFSSystem.PeriodicWork): writing lazily kept sizes, times and usage to
// the catalog, and (for a VM served without pvfsd) picking up a quota changed in the catalog. The
// hosting process only says how often and stops them before it closes the volumes.

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
