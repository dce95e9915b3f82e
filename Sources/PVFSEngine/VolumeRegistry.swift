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
    private var rules: AccessRules
    private var nextSessionID: UInt64 = 1

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

    /// A new session for a client: resolves `aname` through the binding rules.
    public func attach(aname: String, identity: ClientIdentity) throws(Errno) -> VMView {
        let (vm, policy) = try accessRules.resolve(aname: aname, identity: identity)
        do {
            let view = try openSession(vm: vm, policy: policy)
            logger.info("session attached", metadata: ["vm": "\(vm)", "client": "\(identity)", "readOnly": "\(policy.readOnly)"])
            return view
        } catch {
            logger.error("cannot open VM \(vm) for \(identity): \(error)")
            throw Errno.of(error)
        }
    }

    /// A session on a VM with an explicit policy (host-side FUSE mounts, tools).
    public func openSession(vm: String, policy: SessionPolicy) throws -> VMView {
        lock.lock()
        defer { lock.unlock() }
        let volume: Volume
        if let entry = volumes[vm] {
            volume = entry.volume
            volumes[vm] = (volume, entry.sessions + 1)
        } else {
            volume = try Volume.open(store: store, vmName: vm, logger: logger)
            volumes[vm] = (volume, 1)
        }
        let id = nextSessionID
        nextSessionID += 1
        return VMView(volume: volume, policy: policy, sessionID: id)
    }

    /// Ends a session; the VM's volume closes (releasing its lock) with its last session.
    public func closeSession(_ view: VMView) {
        view.releaseAllLocks()
        lock.lock()
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

    /// Closes every volume (daemon shutdown).
    public func closeAll() {
        lock.lock()
        let all = volumes.values.map(\.volume)
        volumes.removeAll()
        lock.unlock()
        for volume in all {
            do { try volume.close() } catch { logger.error("closing VM \(volume.name): \(error)") }
        }
    }
}
