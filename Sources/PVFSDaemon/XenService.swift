import Foundation
import Logging
import PVFS9P
import PVFS9PCodec
import PVFSEngine
import PVFSTransport
import SystemPackage

/// The Xen PV 9pfs backend: pvfsd as dom0's backend for domUs' `9pnet_xen` devices. The VM a
/// device serves is the one `pvfs-vm attach` named in the backend's dom0-owned `path` node; the
/// binding rules must also let that domain (by ID or name) reach it. Nothing the guest writes in
/// xenstore or in its rings can point the device at another VM.
public final class XenService: DaemonService, @unchecked Sendable {
    private let registry: VolumeRegistry
    private let logger: Logger
    private let pool: NinePWorkerPool
    /// Whether `pool` is this service's own (stopped with it) rather than the daemon's.
    private let ownsPool: Bool
    private let configuration: NinePConfiguration
    private let limits: DaemonConfiguration.Limits
    private let admission: TenantAdmission?
    private var backend: XenBackend?

    public init(registry: VolumeRegistry, logger: Logger, configuration: NinePConfiguration = NinePConfiguration(),
                limits: DaemonConfiguration.Limits = DaemonConfiguration.Limits(), admission: TenantAdmission? = nil,
                cpuFairness: TenantCPUFairness? = nil, pool: NinePWorkerPool? = nil,
                workerThreads: Int = max(4, ProcessInfo.processInfo.activeProcessorCount * 4)) {
        self.registry = registry
        self.logger = logger
        self.configuration = configuration
        self.limits = limits
        self.admission = admission
        // The daemon's pool when given (shared by every transport), else one of its own.
        self.pool = pool ?? NinePWorkerPool(threads: workerThreads, name: "pvfs.xen9p.worker", fairness: cpuFairness)
        ownsPool = pool == nil
    }

    public var serviceDescription: String { "Xen PV 9pfs backend" }

    public func start() throws {
        let registry = self.registry
        let logger = self.logger
        let pool = self.pool
        var backendConfiguration = XenBackendConfiguration()
        backendConfiguration.limits = limits.xenRing
        backendConfiguration.admission = admission
        let nine = configuration
        let backend = try XenBackend(configuration: backendConfiguration, logger: logger) { peer in
            guard case .xen(let domid, _, let domainName, let path, _) = peer.endpoint, let vm = path, !vm.isEmpty else {
                throw NineConnectionRefused("the device has no VM in its backend path node (attach it with pvfs-vm attach)")
            }
            let identity = ClientIdentity.xen(domid: domid, name: domainName)
            do {
                _ = try registry.accessRules.resolve(aname: vm, identity: identity)
            } catch {
                throw NineConnectionRefused("domain \(domid) may not reach VM \(vm) (bind it: pvfs-vm bind \(vm) --xen-name NAME or --xen-domid ID)")
            }
            let connection = NinePConnection(peer: peer, configuration: nine, pool: pool, logger: logger) { request in
                // The guest's aname may be empty (mount by tag) or must name the device's VM.
                let aname = request.aname
                guard aname.isEmpty || aname == vm || aname == "/" + vm else { throw Errno.noSuchFileOrDirectory }
                return try registry.attach(aname: vm, identity: identity)
            }
            // A session ends with its last fid (or with the connection).
            connection.onSessionEnd = { view in registry.closeSession(view) }
            return connection
        }
        try backend.start()
        self.backend = backend
    }

    public func stop() {
        backend?.stop()
        backend?.wait()
        if ownsPool { pool.shutdown() }
    }

    public var devices: [XenDeviceStatus] { backend?.status ?? [] }

    /// Connected devices: a hand-over cannot move their rings yet.
    public var sessionsLostByHandOver: [String] {
        devices.filter { $0.phase == .connected }.map { "Xen device \($0.address)" }
    }
}
