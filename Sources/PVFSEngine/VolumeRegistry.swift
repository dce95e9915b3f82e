import Foundation
import Logging
import PVFSStore
import PVFSSystem
import SystemPackage

/// The volumes one process serves, opened on first use and shared by all sessions (9P
/// connections, FUSE mounts) of a VM, so every client of a VM sees one engine state.
public final class VolumeRegistry: @unchecked Sendable {
    public let store: Store
    private let logger: Logger
    private let lock = NSLock()
    private var volumes: [String: (volume: Volume, sessions: Int)] = [:]
    /// Callbacks that end a session from the server side, by session id (rm --force, shutdown).
    private var revokers: [UInt64: (vm: String, revoke: @Sendable () -> Void)] = [:]
    private var rules: AccessRules
    private var nextSessionID: UInt64 = 1
    /// Set when the server stops: `openSession` refuses.
    private var refusingSessions = false
    private var commitModeValue = Volume.CommitMode.beforeReply

    /// The commit mode of every volume this registry opens (and of those open already).
    public var commitMode: Volume.CommitMode {
        get { lock.withLock { commitModeValue } }
        set {
            let open = lock.withLock {
                commitModeValue = newValue
                return volumes.values.map(\.volume)
            }
            for volume in open { volume.commitMode = newValue }
        }
    }

    public init(store: Store, logger: Logger) throws {
        self.store = store
        self.logger = logger
        self.rules = try AccessRules.load(from: store)
    }

    /// Re-reads access rules and quotas from the catalog (after a CLI change).
    public func reload() throws {
        let fresh = try AccessRules.load(from: store)
        let vms = try store.listVMs()
        lock.lock()
        rules = fresh
        let open = volumes
        lock.unlock()
        for vm in vms {
            if let entry = open[vm.name] { entry.volume.setQuota(bytes: vm.quotaBytes, inodes: vm.quotaInodes) }
        }
        // A renamed or removed VM keeps serving its sessions under the old name until they end.
    }

    public var accessRules: AccessRules {
        lock.lock()
        defer { lock.unlock() }
        return rules
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
        lock.lock()
        defer { lock.unlock() }
        guard !refusingSessions else { throw StoreError("the server is stopping: VM \(vm) is not opened", errno: .ioError) }
        let volume: Volume
        if let entry = volumes[vm] {
            volume = entry.volume
            volumes[vm] = (volume, entry.sessions + 1)
        } else {
            volume = try Volume.open(store: store, vmName: vm, logger: logger)
            volume.commitMode = commitModeValue
            volumes[vm] = (volume, 1)
        }
        let id = nextSessionID
        nextSessionID += 1
        revokers[id] = (vm, revoke)
        return VMView(volume: volume, policy: policy, sessionID: id)
    }

    /// Ends a session; the VM's volume closes (releasing its lock) with its last session.
    public func closeSession(_ view: VMView) {
        view.releaseAllLocks()
        lock.lock()
        revokers[view.sessionID] = nil
        guard let entry = volumes[view.volume.name], entry.volume === view.volume else {
            lock.unlock()
            return
        }
        if entry.sessions <= 1 {
            volumes[view.volume.name] = nil
            lock.unlock()
            do { try view.volume.close() } catch { logger.error("closing VM \(view.volume.name): \(error)") }
        } else {
            volumes[view.volume.name] = (entry.volume, entry.sessions - 1)
            lock.unlock()
        }
    }

    /// Ends every session of a VM from the server side and waits (up to `timeout`) for its volume
    /// to close. Returns whether the VM is no longer held.
    public func release(vm: String, timeout: Double = 10) -> Bool {
        lock.lock()
        let targets = revokers.values.filter { $0.vm == vm }.map(\.revoke)
        lock.unlock()
        for revoke in targets { revoke() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while Date() < deadline {
            if volume(named: vm) == nil { return true }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return volume(named: vm) == nil
    }

    /// Open sessions per VM.
    public var sessionCounts: [String: Int] {
        lock.lock()
        defer { lock.unlock() }
        return volumes.mapValues(\.sessions)
    }

    public var openVolumes: [Volume] {
        lock.lock()
        defer { lock.unlock() }
        return volumes.values.map(\.volume)
    }

    public func volume(named name: String) -> Volume? {
        lock.lock()
        defer { lock.unlock() }
        return volumes[name]?.volume
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
        lock.lock()
        refusingSessions = true
        lock.unlock()
    }

    /// Closes every volume (daemon shutdown); no session opens afterwards.
    public func closeAll() {
        lock.lock()
        refusingSessions = true
        let all = volumes.values.map(\.volume)
        volumes.removeAll()
        lock.unlock()
        for volume in all {
            do { try volume.close() } catch { logger.error("closing VM \(volume.name): \(error)") }
        }
    }
}
