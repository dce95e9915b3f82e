import Foundation
import Logging
import PVFS9P
import PVFS9PCodec
import PVFSEngine
import PVFSSystem
import PVFSTransport
import SystemPackage

/// 9P2000.L over the configured TCP and Unix listeners. Each connection's attaches are resolved
/// by the daemon's binding rules; the listener's name is part of the client's identity, so a
/// VM can be bound to "whatever arrives on this port".
public final class NinePSocketService: DaemonService, @unchecked Sendable {
    private let registry: VolumeRegistry
    private let logger: Logger
    private let listeners: [DaemonConfiguration.Listener]
    private let limits: DaemonConfiguration.Limits
    /// Connections per listener and per VM, shared with the daemon's metrics.
    public let admission: TenantAdmission
    private let pool: NinePWorkerPool
    /// Whether `pool` is this service's own (stopped with it) rather than the daemon's.
    private let ownsPool: Bool
    private let configuration: NinePConfiguration
    private var server: SocketServer?
    /// Listener address as the transport reports it → configured name.
    private let names: [String: String]
    /// What the previous process handed over, served from `start()` on.
    public var adoption: SocketServerHandOff?

    public init(listeners: [DaemonConfiguration.Listener], registry: VolumeRegistry, logger: Logger,
                configuration: NinePConfiguration = NinePConfiguration(),
                limits: DaemonConfiguration.Limits = DaemonConfiguration.Limits(), admission: TenantAdmission? = nil,
                cpuFairness: TenantCPUFairness? = nil, pool: NinePWorkerPool? = nil,
                workerThreads: Int = max(4, ProcessInfo.processInfo.activeProcessorCount * 4)) throws {
        self.listeners = listeners
        self.registry = registry
        self.logger = logger
        self.configuration = configuration
        self.limits = limits
        self.admission = admission ?? TenantAdmission(limits: limits.tenants, logger: logger)
        // The daemon's pool when given (shared by every transport), else one of its own.
        self.pool = pool ?? NinePWorkerPool(threads: workerThreads, fairness: cpuFairness)
        ownsPool = pool == nil
        var names: [String: String] = [:]
        for listener in listeners {
            guard let address = ListenAddress(listener.address) else {
                throw ConfigurationError("invalid listener address '\(listener.address)': use tcp:HOST:PORT or unix:PATH")
            }
            names[address.description] = listener.name
        }
        self.names = names
    }

    public var serviceDescription: String {
        "9P2000.L on " + listeners.map(\.description).joined(separator: ", ")
    }

    /// Where the service listens, with kernel-chosen ports filled in.
    public var boundAddresses: [String] { server?.boundAddresses.map(\.description) ?? [] }

    public func start() throws {
        let addresses = listeners.compactMap { ListenAddress($0.address) }
        let registry = self.registry
        let logger = self.logger
        let pool = self.pool
        let names = self.names
        let admission = self.admission
        let serverBox = ServerBox()
        var serverConfiguration = SocketServer.Configuration()
        serverConfiguration.limits = limits.tenants
        serverConfiguration.listenerNames = names
        serverConfiguration.replyQueueLimit = limits.replyQueueBytes
        let nine = configuration
        // One connection's handler: new, or serving a session handed over by the previous process.
        let makeConnection: @Sendable (NinePPeer, [UInt8]?) throws -> NinePConnection = { peer, handedOver in
            let listenerName = names[peer.localAddress] ?? peer.localAddress
            let identity = Self.identity(of: peer, listener: listenerName)
            let resolver: NinePAttachResolver = { request in
                let view = try registry.attach(aname: request.aname, identity: identity) {
                    serverBox.server?.disconnect(connectionID: peer.connectionID)
                }
                // A connection counts against its VM from its first attach on.
                do throws(AdmissionRefusal) {
                    try admission.bind(connection: peer.connectionID, toVM: view.vmName)
                } catch {
                    registry.closeSession(view)
                    admission.logLimit(error.tenant, error.limit, "refusing an attach to VM \(view.vmName): \(error)",
                                       peer: "\(peer)")
                    throw Errno.tooManyUsers
                }
                return view
            }
            // A session ends with its last fid (or with the connection).
            let sessionEnded: @Sendable (VMView) -> Void = { view in registry.closeSession(view) }
            if let handedOver {
                return try NinePConnection(restoring: handedOver, peer: peer, configuration: nine, pool: pool, logger: logger,
                                           resolver: resolver, onSessionEnd: sessionEnded)
            }
            let connection = NinePConnection(peer: peer, configuration: nine, pool: pool, logger: logger, resolver: resolver)
            connection.onSessionEnd = sessionEnded
            return connection
        }
        let server = SocketServer(listen: addresses, configuration: serverConfiguration, admission: admission,
                                  logger: logger) { peer in try makeConnection(peer, nil) }
        serverBox.server = server
        try server.start(adopting: adoption) { handOff in
            try makeConnection(handOff.peer, handOff.session)
        }
        adoption = nil
        self.server = server
    }

    /// Brings every connection to rest for a hand-over; throws, serving on, when one does not
    /// within `timeout` s (see `SocketServer.prepareHandOver`).
    public func prepareHandOver(timeout: Double) throws {
        try server?.prepareHandOver(timeout: timeout)
    }

    /// Serves on after `prepareHandOver`.
    public func abandonHandOver() {
        server?.abandonHandOver()
    }

    /// The listeners and connections (at rest, with their sessions) for the next process.
    public func completeHandOver(timeout: Double) -> SocketServerHandOff {
        server?.completeHandOver(timeout: timeout) ?? SocketServerHandOff(listeners: [], connections: [])
    }

    /// After a take-over: reads the adopted connections and accepts new ones.
    public func beginServing() {
        server?.beginServing()
    }

    public func stop() {
        server?.stop()
        if ownsPool { pool.shutdown() }
    }

    static func identity(of peer: NinePPeer, listener: String) -> ClientIdentity {
        switch peer.endpoint {
        case .unix(_, let processID, let userID, _):
            return .unix(uid: userID ?? UInt32.max, pid: processID ?? 0, listener: listener)
        default:
            return .tcp(address: hostPart(of: peer.remoteAddress), listener: listener)
        }
    }

    /// "10.0.2.15:43122" → "10.0.2.15"; "[::1]:5640" → "::1".
    static func hostPart(of address: String) -> String {
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            return String(address[address.index(after: address.startIndex)..<close])
        }
        if let colon = address.lastIndex(of: ":") { return String(address[..<colon]) }
        return address
    }
}

/// Lets connection callbacks reach the server that made them without a cycle at init.
final class ServerBox: @unchecked Sendable {
    weak var server: SocketServer?
}

