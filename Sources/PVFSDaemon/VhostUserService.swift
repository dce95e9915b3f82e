import Foundation
import Glibc
import Logging
import PVFSEngine
import PVFSFuseCodec
import PVFSFuseServer
import PVFSStore
import PVFSTransport
import PVFSVhostUser
import Synchronization

/// virtio-fs for QEMU/KVM guests: one vhost-user-fs socket per `vhost-user` binding
/// (`pvfs-vm bind VM --vhost-user PATH`), each serving exactly its VM to one front-end at a
/// time. The socket is the guest's identity; no guest network is involved. Every socket and
/// device of the daemon runs on one event loop. Bindings are picked up at start and whenever
/// the catalog is reloaded (after a `pvfs-vm` change, or SIGHUP): a new binding starts
/// listening, a removed one stops and ends its guest's session.
public final class VhostUserService: DaemonService, @unchecked Sendable {
    public struct Settings: Sendable {
        /// Seconds the guest may cache names and attributes.
        public var cacheTimeout: Double = 1
        public var sessionLimits = FuseSessionLimits()
        public var deviceLimits = VhostUserFsDevice.Limits()
        /// Mode of each socket: QEMU runs as root with pvfsd, or is given access explicitly.
        public var socketMode: mode_t = 0o600
        public init() {}
    }

    private struct Served {
        var vm: String
        var listener: VhostUserFsListener
    }

    private let registry: VolumeRegistry
    private let logger: Logger
    private let settings: Settings
    /// Where the front-ends are reported as connections of their VMs, for the per-tenant metrics.
    private let admission: TenantAdmission?
    private var admissionSource: UInt64?
    /// Serialises reconciliation (start, reloads, stop).
    private let lock = NSLock()
    private var loop: EpollEventLoop?
    private var served: [String: Served] = [:]
    private var stopped = false

    public init(registry: VolumeRegistry, logger: Logger, settings: Settings = Settings(), admission: TenantAdmission? = nil) {
        self.registry = registry
        self.logger = logger
        self.settings = settings
        self.admission = admission
    }

    public var serviceDescription: String {
        let sockets = boundSockets
        return "vhost-user-fs on " + (sockets.isEmpty ? "no sockets yet" : sockets.joined(separator: ", "))
    }

    /// The sockets listened on, sorted.
    public var boundSockets: [String] {
        lock.lock()
        defer { lock.unlock() }
        return served.keys.sorted()
    }

    /// The front-ends connected now, with their VM and requests being served (the per-tenant
    /// metrics count each as a connection of its VM).
    public var frontEnds: [(vm: String, outstandingRequests: Int)] {
        lock.lock()
        let listeners = served.values.map { ($0.vm, $0.listener) }
        lock.unlock()
        return listeners.compactMap { vm, listener in
            guard let device = listener.servedDevice, !device.isClosed else { return nil }
            return (vm, device.outstandingRequests)
        }.sorted { $0.vm < $1.vm }
    }

    /// Connected front-ends: a hand-over cannot move their memory and rings yet.
    public var sessionsLostByHandOver: [String] {
        frontEnds.map { "virtio-fs front-end of \($0.vm)" }
    }

    /// The device currently served on a socket (tests, status).
    public func servedDevice(socket: String) -> VhostUserFsDevice? {
        lock.lock()
        defer { lock.unlock() }
        return served[socket]?.listener.servedDevice
    }

    public func start() throws {
        lock.lock()
        if loop == nil { loop = try EpollEventLoop(name: "pvfsd.vhost", logger: logger) }
        if let admission, admissionSource == nil {
            admissionSource = admission.addSource { [weak self] in
                (self?.frontEnds ?? []).map {
                    TenantGauge(tenant: .vm($0.vm), connections: 1, outstandingRequests: $0.outstandingRequests, queuedReplyBytes: 0)
                }
            }
        }
        lock.unlock()
        reconcile()
    }

    public func stop() {
        lock.lock()
        stopped = true
        let all = served.values.map(\.listener)
        served.removeAll()
        let loop = self.loop
        self.loop = nil
        let source = admissionSource
        admissionSource = nil
        lock.unlock()
        if let source { admission?.removeSource(source) }
        for listener in all { listener.close() }
        loop?.shutdown()
    }

    /// Listens on every socket bound now and stops listening on the others.
    public func reconcile() {
        var wanted: [String: String] = [:]
        for entry in registry.accessRules.vms.values {
            for binding in entry.bindings where binding.kind == "vhost-user" { wanted[binding.value] = entry.name }
        }
        lock.lock()
        defer { lock.unlock() }
        guard !stopped, let loop else { return }
        for (path, current) in served where wanted[path] != current.vm {
            current.listener.close()
            served[path] = nil
            logger.notice("vhost-user-fs socket closed", metadata: ["socket": "\(path)", "vm": "\(current.vm)"])
        }
        for (path, vm) in wanted.sorted(by: { $0.key < $1.key }) where served[path] == nil {
            do {
                served[path] = Served(vm: vm, listener: try listen(path: path, vm: vm, loop: loop))
                logger.notice("serving VM \(vm) over vhost-user-fs", metadata: ["socket": "\(path)"])
            } catch {
                // One bad binding must not keep the others (or the daemon) from serving.
                logger.error("cannot listen for VM \(vm) on \(path): \(error)")
            }
        }
    }

    private func listen(path: String, vm: String, loop: EpollEventLoop) throws -> VhostUserFsListener {
        guard path.hasPrefix("/") else { throw ConfigurationError("vhost-user socket \(path) is not an absolute path") }
        if Self.answers(path) { throw ConfigurationError("another process listens on \(path)") }
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty, access(parent, F_OK) != 0 {
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
        }
        let registry = self.registry
        let identity = ClientIdentity.vhostUser(socket: path)
        let configuration = FuseServerConfiguration.guest(cacheTimeout: settings.cacheTimeout, limits: settings.sessionLimits)
        let logger = self.logger
        let sessionLogger = { () -> Logger in
            var l = logger
            l[metadataKey: "socket"] = "\(path)"
            return l
        }()
        let listenerBox = ListenerBox()
        let listener = try VhostUserFsListener(path: path, mode: settings.socketMode, sources: loop, limits: settings.deviceLimits,
                                               logger: sessionLogger) {
            // Resolved per connection: access, squash and read-only changes apply to the next guest.
            let (vm, resolved) = try registry.accessRules.resolve(aname: "", identity: identity)
            var policy = resolved
            // Linux's virtiofs mounts with default_permissions: the guest's kernel checks and
            // sends every implicit change; squashed guests are checked here (docs/access.md).
            if policy.permissionChecks == .guestKernel { policy.permissionChecks = .hostKernel }
            let view = try registry.openSession(vm: vm, policy: policy) {
                listenerBox.listener?.servedDevice?.close(reason: "VM \(vm) released")
            }
            logger.info("vhost-user session attached", metadata: ["vm": "\(vm)", "socket": "\(path)", "readOnly": "\(policy.readOnly)"])
            return RegistrySession(server: FuseServer(view: view, configuration: configuration, logger: sessionLogger),
                                   registry: registry)
        }
        listenerBox.listener = listener
        return listener
    }

    /// Whether something accepts connections on `path` (a live socket is never replaced).
    static func answers(_ path: String) -> Bool {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0
    }
}

/// Lets a session's revoke callback reach its listener without a cycle.
private final class ListenerBox: @unchecked Sendable {
    weak var listener: VhostUserFsListener?
}

/// The FUSE session of one front-end; ends the registry session (and with the VM's last
/// session, closes its volume) when the front-end goes.
private final class RegistrySession: FuseMessageHandler, @unchecked Sendable {
    let server: FuseServer
    let registry: VolumeRegistry

    init(server: FuseServer, registry: VolumeRegistry) {
        self.server = server
        self.registry = registry
    }

    func handle(_ message: UnsafeRawBufferPointer, reply: any FuseReplySink) {
        server.handle(message, reply: reply)
    }

    func transportClosed() {
        server.transportClosed()
        registry.closeSession(server.view)
    }
}
