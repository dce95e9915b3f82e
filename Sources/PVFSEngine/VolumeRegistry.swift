import Foundation
import Logging
import PVFSStore
import PVFSSystem
import SystemPackage

/// The volumes one process serves, opened on first use and shared by all sessions (9P
/// connections, FUSE mounts) of a VM, so every client of a VM sees one engine state.
///
/// A VM's volume opens with its first session and closes with its last. Opening and closing
/// take time (the catalog, the VM's lock) and run outside the registry's lock, so that other
/// VMs' sessions never wait for them; a session of the same VM that arrives meanwhile waits
/// until the volume is open, or until it is closed (and its lock free) to open it anew. A guest
/// reconnecting at once thus never finds its own VM busy.
public final class VolumeRegistry: @unchecked Sendable {
    public let store: Store
    /// One image per template, shared by the volumes of its VMs.
    public let templateImages: TemplateImageCache
    private let logger: Logger
    /// Guards everything below; signalled when a volume finishes opening or closing.
    private let condition = NSCondition()

    private enum Slot {
        /// One thread opens the volume; sessions of the VM wait for it.
        case opening
        case open(Volume, sessions: Int)
        /// Its last session ended; it is being closed and holds the VM's lock until then.
        case closing(Volume)
    }

    private var volumes: [String: Slot] = [:]
    /// Callbacks that end a session from the server side, by session id (rm --force, shutdown).
    private var revokers: [UInt64: (vm: String, revoke: @Sendable () -> Void)] = [:]
    private var rules: AccessRules
    private var nextSessionID: UInt64 = 1
    /// Set when the server stops: `openSession` refuses.
    private var refusingSessions = false
    private var commitModeValue = Volume.CommitMode.beforeReply
    private var limitsValue = VolumeLimits()
    /// Unlinked inodes to keep at the next open of a VM (`keepOrphans`), by VM name.
    private var keptOrphans: [String: Set<InodeNumber>] = [:]

    /// The commit mode of every volume this registry opens (and of those open already).
    public var commitMode: Volume.CommitMode {
        get { locked { commitModeValue } }
        set { update({ commitModeValue = newValue }, thenEachOpenVolume: { $0.commitMode = newValue }) }
    }

    /// The metadata limits of every volume this registry opens (and of those open already).
    public var volumeLimits: VolumeLimits {
        get { locked { limitsValue } }
        set { update({ limitsValue = newValue }, thenEachOpenVolume: { $0.metadataLimits = newValue }) }
    }

    /// Changes a setting of every volume: `update` (under the lock) for those opened from now
    /// on, then `apply` to each one open already.
    private func update(_ update: () -> Void, thenEachOpenVolume apply: (Volume) -> Void) {
        let open = locked {
            update()
            return openVolumesLocked
        }
        for volume in open { apply(volume) }
    }

    public init(store: Store, logger: Logger,
                templateImageRetention: Duration = TemplateImageCache.defaultIdleRetention) throws {
        self.store = store
        self.logger = logger
        templateImages = TemplateImageCache(store: store, idleRetention: templateImageRetention, logger: logger)
        self.rules = try AccessRules.load(from: store)
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        condition.lock()
        defer { condition.unlock() }
        return try body()
    }

    private var openVolumesLocked: [Volume] {
        volumes.values.compactMap { slot in
            if case .open(let volume, _) = slot { return volume }
            return nil
        }
    }

    /// Re-reads access rules and quotas from the catalog (after a CLI change).
    public func reload() throws {
        let fresh = try AccessRules.load(from: store)
        let vms = try store.listVMs()
        let open: [String: Volume] = locked {
            rules = fresh
            var open: [String: Volume] = [:]
            for (name, slot) in volumes {
                if case .open(let volume, _) = slot { open[name] = volume }
            }
            return open
        }
        for vm in vms {
            if let volume = open[vm.name] { volume.setQuota(bytes: vm.quotaBytes, inodes: vm.quotaInodes) }
        }
        // A renamed or removed VM keeps serving its sessions under the old name until they end.
    }

    public var accessRules: AccessRules {
        locked { rules }
    }

    /// A new session for a client: resolves `aname` through the binding rules. `revoke` is called
    /// (from any thread) when the server must end the session, e.g. the VM is being removed.
    public func attach(aname: String, identity: ClientIdentity, revoke: @escaping @Sendable () -> Void = {}) throws(Errno) -> VMView {
        let (vm, policy) = try accessRules.resolve(aname: aname, identity: identity)
        do {
            let view = try openSession(vm: vm, policy: policy, revoke: revoke)
            logger.info("session attached", metadata: ["vm": "\(vm)", "client": "\(identity)", "readOnly": "\(policy.readOnly)"])
            return view
        } catch {
            logger.error("cannot open VM \(vm) for \(identity): \(error)")
            throw Errno.of(error)
        }
    }

    /// A session on a VM with an explicit policy (host-side FUSE mounts, tools).
    public func openSession(vm: String, policy: SessionPolicy, revoke: @escaping @Sendable () -> Void = {}) throws -> VMView {
        condition.lock()
        while true {
            guard !refusingSessions else {
                condition.unlock()
                throw PVFSError(.store, "the server is stopping: VM \(vm) is not opened", errno: .ioError)
            }
            switch volumes[vm] {
            case .open(let volume, let sessions):
                volumes[vm] = .open(volume, sessions: sessions + 1)
                let view = makeViewLocked(volume, vm: vm, policy: policy, revoke: revoke)
                condition.unlock()
                return view
            case .opening, .closing:
                condition.wait()
            case nil:
                volumes[vm] = .opening
                let orphans = keptOrphans.removeValue(forKey: vm) ?? []
                let volume = try condition.whileUnlocked({
                    try Volume.open(store: store, vmName: vm, logger: logger, templateImages: templateImages,
                                    keepingOrphans: orphans)
                }, ifFailed: { volumes[vm] = nil })
                volume.commitMode = commitModeValue
                volume.metadataLimits = limitsValue
                volumes[vm] = .open(volume, sessions: 1)
                let view = makeViewLocked(volume, vm: vm, policy: policy, revoke: revoke)
                condition.unlock()
                return view
            }
        }
    }

    private func makeViewLocked(_ volume: Volume, vm: String, policy: SessionPolicy,
                                revoke: @escaping @Sendable () -> Void) -> VMView {
        let id = nextSessionID
        nextSessionID += 1
        revokers[id] = (vm, revoke)
        return VMView(volume: volume, policy: policy, sessionID: id)
    }

    /// Ends a session; the VM's volume closes (releasing its lock) with its last session.
    public func closeSession(_ view: VMView) {
        view.releaseAllLocks()
        let name = view.volume.name
        condition.lock()
        guard revokers.removeValue(forKey: view.sessionID) != nil else {
            // Closed before: a session counts once.
            condition.unlock()
            return
        }
        guard case .open(let volume, let sessions) = volumes[name], volume === view.volume else {
            condition.unlock()
            return
        }
        guard sessions <= 1 else {
            volumes[name] = .open(volume, sessions: sessions - 1)
            condition.unlock()
            return
        }
        volumes[name] = .closing(volume)
        condition.whileUnlocked({
            do { try volume.close() } catch { logger.error("closing VM \(name): \(error)") }
        }, ifFailed: {})
        if case .closing(let closing) = volumes[name], closing === volume { volumes[name] = nil }
        condition.unlock()
    }

    /// Ends every session of a VM from the server side and waits (up to `timeout`) for its volume
    /// to close. Returns whether the VM is no longer held.
    public func release(vm: String, timeout: Double = 10) -> Bool {
        let targets = locked { revokers.values.filter { $0.vm == vm }.map(\.revoke) }
        for revoke in targets { revoke() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while volumes[vm] != nil {
            if !condition.wait(until: deadline) { break }
        }
        return volumes[vm] == nil
    }

    /// Open sessions per VM.
    public var sessionCounts: [String: Int] {
        locked {
            var counts: [String: Int] = [:]
            for (name, slot) in volumes {
                if case .open(_, let sessions) = slot { counts[name] = sessions }
            }
            return counts
        }
    }

    /// Sessions handed out and not closed, all VMs together (for tests and metrics).
    public var sessionTotal: Int {
        locked { revokers.count }
    }

    public var openVolumes: [Volume] {
        locked { openVolumesLocked }
    }

    /// The open volume of a VM (not one being opened or closed).
    public func volume(named name: String) -> Volume? {
        locked {
            if case .open(let volume, _) = volumes[name] { return volume }
            return nil
        }
    }

    /// Saves usage of every open volume (periodic, and before shutdown).
    public func saveUsage() {
        for volume in openVolumes {
            do { try volume.saveUsage() } catch { logger.warning("saving usage of \(volume.name): \(error)") }
        }
    }

    /// Refuses every new session from now on (the first step of a shutdown: no mount, attach or
    /// maintenance request may open a VM that `closeAll` would then close under it).
    public func refuseNewSessions() {
        condition.lock()
        refusingSessions = true
        condition.unlock()
    }

    /// Makes the next open of `vm` keep these unlinked inodes (open handles of a previous server
    /// that this one takes over; see `Volume.open(…keepingOrphans:)`) instead of removing them.
    /// Called before the VM's first session opens; the open consumes the set.
    public func keepOrphans(_ inodes: Set<InodeNumber>, ofVM vm: String) {
        condition.lock()
        defer { condition.unlock() }
        if inodes.isEmpty {
            keptOrphans[vm] = nil
        } else {
            keptOrphans[vm, default: []].formUnion(inodes)
        }
    }

    /// Closes every volume (daemon shutdown), after those being opened or closed settle; no
    /// session opens afterwards. With `keepingOrphans` (a hand-over to another server), unlinked
    /// inodes with open handles stay in the catalog for the next process (`Volume.openOrphans`
    /// lists them; read it before closing).
    public func closeAll(keepingOrphans: Bool = false) {
        condition.lock()
        refusingSessions = true
        var all: [(String, Volume)] = []
        let deadline = Date(timeIntervalSinceNow: 30)
        while true {
            for (name, slot) in volumes {
                if case .open(let volume, _) = slot {
                    volumes[name] = .closing(volume)
                    all.append((name, volume))
                }
            }
            let settling = volumes.values.contains { if case .opening = $0 { return true }; return false }
            if !settling || !condition.wait(until: deadline) { break }
        }
        condition.unlock()
        for (name, volume) in all {
            do { try volume.close(keepingOrphans: keepingOrphans) } catch { logger.error("closing VM \(name): \(error)") }
            condition.lock()
            if case .closing(let closing) = volumes[name], closing === volume { volumes[name] = nil }
            condition.broadcast()
            condition.unlock()
        }
    }
}
