import Foundation
import Logging
import PVFSEngine
import PVFSStore
import Synchronization

/// The janitor's last run in this daemon, for `janitor-report`.
final class MaintenanceState: Sendable {
    let lastJanitor = Mutex<JanitorReport?>(nil)
    /// One janitor run at a time (a slow run must not pile up behind the timer).
    let janitorRunning = Atomic<Bool>(false)
}

extension Daemon {
    /// Registers the maintenance control operations (ControlProtocol+Maintenance.swift) and the
    /// periodic janitor (`janitor-interval`). Call before `start()`.
    public func installMaintenance() {
        let state = MaintenanceState()
        let registry = self.registry
        let store = self.store
        let logger = self.logger

        @Sendable func served(_ request: ControlProtocol.Request) -> Volume? {
            guard let name = request.vm else { return nil }
            return registry.volume(named: name)
        }
        let notServed: @Sendable (ControlProtocol.Request) -> ControlProtocol.Response = { request in
            ControlProtocol.Response(ok: false, error: "VM \(request.vm ?? "?") is not served by this daemon",
                                     maintenance: .init(notServed: true))
        }

        addControlHandler(op: "dedup-candidates") { request in
            guard let volume = served(request) else { return notServed(request) }
            let minimum = request.maintenance?.minimumSize ?? 4096
            let candidates = volume.privateFiles(minimumSize: max(1, minimum)).map { DedupCandidate(inode: $0.inode, size: $0.size) }
            return .init(ok: true, maintenance: .init(candidates: candidates))
        }

        addControlHandler(op: "dedup-replace") { request in
            guard let volume = served(request) else { return notServed(request) }
            let items = request.maintenance?.items ?? []
            // The requester holds the blobs lock shared; the daemon takes it too, so that the
            // blob stays until this reference commits even if the requester dies meanwhile, and
            // checks that the row still names the content it was told.
            let lock = try store.lockBlobsShared()
            defer { withExtendedLifetime(lock) {} }
            var outcomes: [DedupReplacement] = []
            for item in items {
                guard let hash = BlobHash(hex: item.hash) else { return .init(ok: false, error: "invalid hash \(item.hash)") }
                guard try store.blobRowMatches(id: item.blobID, hash: hash) else {
                    return .init(ok: false, error: "blob \(item.blobID) is not \(item.hash)")
                }
                do {
                    outcomes.append(DedupReplacement(try volume.replaceWithBlob(item.inode, blobID: item.blobID, hash: hash)))
                } catch {
                    return .init(ok: false, error: "VM \(volume.name), inode \(item.inode): \(error)")
                }
            }
            return .init(ok: true, maintenance: .init(outcomes: outcomes))
        }

        addControlHandler(op: "vm-check") { request in
            guard let volume = served(request) else { return notServed(request) }
            let result = volume.check(repair: request.maintenance?.repair ?? false)
            if request.maintenance?.repair == true {
                do { try volume.saveUsage() } catch { logger.warning("saving usage of \(volume.name): \(error)") }
            }
            return .init(ok: true, maintenance: .init(check: result))
        }

        addControlHandler(op: "janitor-report") { _ in
            .init(ok: true, maintenance: .init(janitor: state.lastJanitor.withLock { $0 }))
        }

        let interval = configuration.janitorIntervalSeconds
        if interval > 0 {
            periodicWork.every(interval) {
                guard !state.janitorRunning.exchange(true, ordering: .acquiring) else { return }
                defer { state.janitorRunning.store(false, ordering: .releasing) }
                var options = JanitorOptions()
                // A timer must not sit on the lock queue: what stays busy is left for next time.
                options.waitSeconds = 5
                do {
                    let report = try store.collectGarbage(options)
                    state.lastJanitor.withLock { $0 = report }
                    if report.blobsRemoved + report.orphanFilesRemoved + report.temporaryEntriesRemoved > 0 {
                        logger.notice("janitor: removed \(report.blobsRemoved) unreferenced blob(s), \(report.orphanFilesRemoved) orphaned file(s), \(report.temporaryEntriesRemoved) abandoned temporary entries; \(report.reclaimedBytes) bytes reclaimed")
                    }
                } catch {
                    logger.error("janitor failed: \(error)")
                }
            }
            logger.info("janitor runs every \(interval) s")
        }
    }
}
