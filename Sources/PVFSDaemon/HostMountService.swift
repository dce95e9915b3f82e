import Foundation
import Logging
import PVFSEngine
import PVFSFuse
import PVFSStore
import PVFSSystem

/// FUSE mounts of VMs made by the daemon itself (`pvfs-vm mount` while pvfsd runs): the mount
/// and the VM's guests share one engine state, so what the host changes is what the guest sees
/// and the other way round. The mounts revalidate names and attributes after a second and drop
/// cached pages on open (close-to-open consistency) because guests change the same files.
public final class HostMountService: @unchecked Sendable {
    private struct Entry {
        var mount: BackgroundHostMount
        var view: VMView
    }

    private let registry: VolumeRegistry
    private let logger: Logger
    private let lock = NSLock()
    private var mounts: [String: Entry] = [:]
    /// Places claimed by a mount request still being set up: a second request for the same
    /// place is refused before it mounts anything (a FUSE mount stacked on another's could only
    /// be undone by unmounting whichever is on top).
    private var claimed: Set<String> = []

    public init(registry: VolumeRegistry, logger: Logger) {
        self.registry = registry
        self.logger = logger
    }

    public func mount(vm: String, path: String, readOnly: Bool, allowOther: Bool) throws {
        let canonical = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
        lock.lock()
        let taken = mounts[canonical] != nil || claimed.contains(canonical)
        if !taken { claimed.insert(canonical) }
        lock.unlock()
        if taken { throw PVFSError(.mount, "\(canonical) is already a pvfs mount", errno: .resourceBusy) }
        defer {
            lock.lock()
            claimed.remove(canonical)
            lock.unlock()
        }
        let settings = try registry.store.accessSettings(vm: vm)
        var policy = AccessRules.policy(settings, binding: nil, side: .host)
        policy.readOnly = policy.readOnly || readOnly
        policy.permissionChecks = .hostKernel  // the kernel checks (default_permissions)
        let view = try registry.openSession(vm: vm, policy: policy)
        let mount: any HostFuseMount
        do {
            mount = try HostFuseEngine.fromEnvironment.mount(view, on: canonical,
                                                             options: FuseMountOptions(readOnly: policy.readOnly, allowOther: allowOther,
                                                                                       caching: .shared(timeout: 1)),
                                                             logger: logger)
        } catch {
            registry.closeSession(view)
            throw error
        }
        let registry = self.registry
        let logger = self.logger
        // Registered before it serves, so that the end of a mount that fails at once finds it.
        lock.lock()
        mounts[canonical] = Entry(mount: BackgroundHostMount(mount, name: "pvfs.fuse \(vm)") { [weak self] error in
            if let error { logger.error("mount of \(vm) on \(canonical) ended: \(error)") }
            registry.closeSession(view)
            self?.forget(canonical, mount)
        }, view: view)
        lock.unlock()
        logger.notice("mounted VM \(vm) on \(canonical)")
    }

    private func forget(_ path: String, _ mount: any HostFuseMount) {
        lock.lock()
        if mounts[path]?.mount.mount === mount { mounts[path] = nil }
        lock.unlock()
    }

    /// Unmounts; false when the daemon has no mount there.
    public func unmount(path: String, force: Bool) -> Bool {
        let canonical = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
        lock.lock()
        let entry = mounts[canonical]
        lock.unlock()
        guard let entry else { return false }
        entry.mount.mount.stop(force: force)
        // run() returns once the kernel has let go; wait a little so the caller sees it gone.
        let deadline = Date(timeIntervalSinceNow: 10)
        while Date() < deadline {
            lock.lock()
            let still = mounts[canonical] != nil
            lock.unlock()
            if !still { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return true
    }

    public var list: [ControlProtocol.HostMount] {
        lock.lock()
        defer { lock.unlock() }
        return mounts.map { ControlProtocol.HostMount(vm: $0.value.view.vmName, path: $0.key, readOnly: $0.value.view.policy.readOnly) }
            .sorted { $0.path < $1.path }
    }

    public func unmountAll() {
        lock.lock()
        let all = mounts
        lock.unlock()
        for (path, _) in all { _ = unmount(path: path, force: true) }
    }

    /// Control operations mount, umount and mounts.
    public func install(into daemon: Daemon) {
        daemon.addControlHandler(op: "mount") { [self] request in
            guard let vm = request.vm, let path = request.path else { return .init(ok: false, error: "mount needs vm and path") }
            do {
                try mount(vm: vm, path: path, readOnly: request.readOnly ?? false, allowOther: request.allowOther ?? false)
                return .init(ok: true)
            } catch {
                return .init(ok: false, error: "\(error)")
            }
        }
        daemon.addControlHandler(op: "umount") { [self] request in
            guard let path = request.path else { return .init(ok: false, error: "umount needs a path") }
            return unmount(path: path, force: request.force ?? false) ? .init(ok: true) : .init(ok: false, error: "not mounted by the daemon")
        }
        daemon.addControlHandler(op: "mounts") { [self] _ in .init(ok: true, mounts: list) }
        daemon.add(HostMountShutdown(service: self))
    }
}

/// Unmounts the daemon's host mounts when it stops.
final class HostMountShutdown: DaemonService, @unchecked Sendable {
    let service: HostMountService
    init(service: HostMountService) { self.service = service }
    var serviceDescription: String { "host mounts (FUSE)" }
    /// A hand-over cannot move a /dev/fuse session yet.
    var sessionsLostByHandOver: [String] { service.list.map { "host mount of \($0.vm) on \($0.path)" } }
    func start() throws {}
    func stop() { service.unmountAll() }
}
