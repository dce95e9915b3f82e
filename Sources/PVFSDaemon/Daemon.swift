import Foundation
import Glibc
import Logging
import PVFS9P
import PVFSEngine
import PVFSStore
import PVFSSystem
import PVFSTransport

/// Something the daemon runs: a 9P listener, the Xen backend, a FUSE mount.
public protocol DaemonService: AnyObject, Sendable {
    var serviceDescription: String { get }
    func start() throws
    /// Stops accepting work and ends the service's sessions.
    func stop()
    /// Sessions that would end if pvfsd handed over to a new process now, because this
    /// transport cannot move them yet (for the refusal message of an upgrade).
    var sessionsLostByHandOver: [String] { get }
}

extension DaemonService {
    public var sessionsLostByHandOver: [String] { [] }
}

/// pvfsd: one process serving every VM. It owns the store, the registry of open volumes, the
/// control socket, metrics, periodic work, and the services (transports) configured.
public final class Daemon: @unchecked Sendable {
    public let configuration: DaemonConfiguration
    public let store: Store
    public let registry: VolumeRegistry
    /// Per-tenant connection caps and the use of every transport limit (for metrics).
    public let admission: TenantAdmission
    /// pvfsd's CPU per tenant, and the priority of the threads serving each (shared by the 9P
    /// transports' worker pools and connections).
    public let cpuFairness: TenantCPUFairness
    /// The worker threads that run every transport's file operations, fair between VMs by
    /// their catalog weights (one pool, so that fairness holds across transports).
    public let workerPool: NinePWorkerPool
    public let logger: Logger
    /// Limits reached by connections not bound to a VM yet (those of a VM count in its counters).
    public let unboundLimitCounters = LimitCounters()
    /// The metrics registry: request latency recorded by the 9P connections, the rest set from
    /// the daemon's state at each scrape.
    public let metrics = DaemonMetrics()
    var services: [any DaemonService] = []
    private var control: StreamListener?
    private var metricsListener: StreamListener?
    private let stopped = NSCondition()
    private var stopping = false
    /// A graceful upgrade is under way (guarded by `stopped`).
    private var upgrading = false
    /// What the previous process handed over, when this one takes over from it (set before `start`).
    public var adoption: DaemonAdoption?
    /// The version and connection count of the process this one took over from.
    private var tookOver: (version: String, connections: Int)?
    /// The pvfs version of this build, written into hand-over manifests.
    public var softwareVersion = "unknown"
    /// The daemon's own periodic work (the janitor); the engine's runs in `usageSaving`.
    let periodicWork = PeriodicWork(label: "pvfsd.periodic", qos: .utility)
    /// The engine's periodic save of usage, sizes and times, stopped before the volumes close.
    private var usageSaving: PeriodicWork?
    /// Extra control operations (mount requests, dedup commits) registered by other layers.
    private var controlHandlers: [String: @Sendable (ControlProtocol.Request) throws -> ControlProtocol.Response] = [:]
    /// Services that follow the catalog (vhost-user bindings), told after every reload.
    private var reloadHandlers: [@Sendable () -> Void] = []

    public init(configuration: DaemonConfiguration, logger: Logger) throws {
        _ = Self.ownExecutable  // opened now, while the file is this build
        self.configuration = configuration
        self.logger = logger
        store = try Store(path: configuration.storePath, create: true, logger: logger)
        try store.cleanUpInterruptedVMOperations()
        registry = try VolumeRegistry(store: store, logger: logger,
                                      templateImageRetention: .seconds(configuration.templateImageRetentionSeconds))
        registry.commitMode = configuration.commitMode
        registry.volumeLimits = configuration.volumeLimits
        admission = TenantAdmission(limits: configuration.limits.tenants, listeners: configuration.listeners.map(\.name),
                                    logger: logger)
        var fairness = TenantCPUFairness.Settings()
        fairness.demotedNice = configuration.limits.tenantCPUNice
        cpuFairness = TenantCPUFairness(settings: fairness, logger: logger)
        workerPool = NinePWorkerPool(threads: configuration.limits.workerThreads,
                                     maximumShare: configuration.limits.workerMaxShare, fairness: cpuFairness)
        do {
            try applyWorkerWeights()
        } catch {
            workerPool.shutdown()  // its threads would otherwise keep it alive
            throw error
        }
    }

    /// Gives the worker pool every VM's weight from the catalog.
    private func applyWorkerWeights() throws {
        var weights: [NinePWorkerPool.Tenant: Int] = [:]
        for vm in try store.listVMs() where vm.workerWeight != NinePWorkerPool.defaultWeight {
            weights[.vm(vm.name)] = vm.workerWeight
        }
        workerPool.setWeights(weights)
    }

    /// The configuration of each 9P connection of this daemon's services.
    public var ninePConfiguration: NinePConfiguration {
        var nineP = configuration.ninePConfiguration(unboundLimitCounters: unboundLimitCounters)
        nineP.requestTimers = metrics.requestTimers
        return nineP
    }

    public func add(_ service: any DaemonService) {
        services.append(service)
    }

    /// `body` runs after every catalog reload (a `pvfs-vm` change, SIGHUP).
    public func addReloadHandler(_ body: @escaping @Sendable () -> Void) {
        reloadHandlers.append(body)
    }

    /// Re-reads access rules, quotas and weights, then tells the services that follow the catalog.
    public func reload() throws {
        try registry.reload()
        try applyWorkerWeights()
        for handler in reloadHandlers { handler() }
    }

    public func addControlHandler(op: String, _ handler: @escaping @Sendable (ControlProtocol.Request) throws -> ControlProtocol.Response) {
        controlHandlers[op] = handler
    }

    /// Starts everything; returns once serving. Call `waitUntilStopped()` or `runUntilSignalled()`.
    public func start() throws {
        signal(SIGPIPE, SIG_IGN)
        let controlAddress = "unix:" + configuration.storePath + "/" + ControlProtocol.socketName
        if let manifest = adoption?.manifest {
            tookOver = (manifest.producer, manifest.connections.count)
            // Unlinked files the clients still hold open stay until they close them.
            for (vm, inodes) in manifest.keptOrphans { registry.keepOrphans(Set(inodes), ofVM: vm) }
        }
        control = try StreamListener(address: controlAddress, adopting: adoption?.descriptor(adoption?.manifest.controlListener),
                                     logger: logger) { [weak self] fd in self?.serveControl(fd) }
        control?.start()
        if let metrics = configuration.metricsAddress {
            metricsListener = try StreamListener(address: metrics, mode: 0o644,
                                                 adopting: adoption?.descriptor(adoption?.manifest.metricsListener),
                                                 logger: logger) { [weak self] fd in self?.serveMetricsHTTP(fd) }
            metricsListener?.start()
        } else if let fd = adoption?.descriptor(adoption?.manifest.metricsListener) {
            close(fd)  // no longer configured
        }
        for service in services {
            try service.start()
            logger.notice("serving \(service.serviceDescription)")
        }
        usageSaving = registry.savingUsagePeriodically(every: configuration.usageSaveIntervalSeconds)
        logger.notice("pvfsd started", metadata: ["store": "\(configuration.storePath)", "pid": "\(getpid())"])
    }

    /// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread created after:
    /// call first thing in main, so that only `runUntilSignalled`'s waiter receives them.
    public static func blockControlSignals() {
        // Exactly these: a mask inherited from whoever started pvfsd (a test runner's thread,
        // say) would otherwise block signals its threads rely on.
        var set = controlSignals
        pthread_sigmask(SIG_SETMASK, &set, nil)
    }

    private static var controlSignals: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGHUP)
        return set
    }

    /// Blocks until SIGTERM or SIGINT, then stops cleanly; SIGHUP reloads the catalog.
    public func runUntilSignalled() {
        Self.blockControlSignals()
        let blocked = Self.controlSignals
        let waiter = Thread { [self] in
            var waitSet = blocked
            while true {
                var signal: Int32 = 0
                sigwait(&waitSet, &signal)
                if signal == SIGHUP {
                    logger.notice("SIGHUP: reloading the catalog")
                    do { try reload() } catch { logger.error("reload failed: \(error)") }
                    continue
                }
                logger.notice("signal \(signal): shutting down")
                stop()
                return
            }
        }
        waiter.start()
        waitUntilStopped()
    }

    public func waitUntilStopped() {
        stopped.lock()
        while !stopping { stopped.wait() }
        stopped.unlock()
    }

    /// After taking over (`adoption`): the adopted connections are read and new ones accepted.
    public func beginServingAdopted() {
        // Unlinked files kept for handles that no restored session opened again go now.
        for volume in registry.openVolumes { volume.reapUnclaimedOrphans() }
        for service in services {
            (service as? NinePSocketService)?.beginServing()
        }
    }

    /// Marks an upgrade under way; false when one is, or the daemon stops.
    func beginUpgrade() -> Bool {
        stopped.lock()
        defer { stopped.unlock() }
        guard !stopping && !upgrading else { return false }
        upgrading = true
        return true
    }

    func endUpgrade() {
        stopped.withLock {
            upgrading = false
            stopped.broadcast()
        }
    }

    func stopUsageSaving() {
        usageSaving?.stop()
    }

    /// The listening descriptors of the control and metrics endpoints, their accept loops
    /// stopped (for a hand-over).
    var controlListenerDescriptor: Int32? { control?.suspendAccepting() }
    var metricsListenerDescriptor: Int32? { metricsListener?.suspendAccepting() }

    public func stop() {
        stopped.lock()
        // An upgrade under way ends first: undone (then this stop goes on) or handed over (then
        // the process exits and this never returns). Stopping meanwhile would close volumes
        // and files the new process is taking over.
        while upgrading { stopped.wait() }
        if stopping { stopped.unlock(); return }
        stopping = true
        stopped.unlock()
        // No session opens from here on: a mount or attach arriving while the services stop
        // would otherwise get a volume that closeAll then closes under it.
        registry.refuseNewSessions()
        // A janitor run under way is not waited for: it is safe to cut short, and may be slow.
        periodicWork.cancel()
        usageSaving?.stop()
        for service in services.reversed() { service.stop() }
        // The services' connections are gone; what they queued runs before the volumes close.
        workerPool.shutdown()
        control?.stop()
        metricsListener?.stop()
        registry.saveUsage()
        registry.closeAll()
        logger.notice("pvfsd stopped")
        stopped.lock()
        stopped.broadcast()
        stopped.unlock()
    }

    // MARK: Control socket

    private func serveControl(_ fd: Int32) {
        defer { close(fd) }
        var reader = LineReader(fd: fd)
        while let line = reader.next() {
            var response: ControlProtocol.Response
            var exitCode: Int32?
            do {
                let request = try JSONDecoder().decode(ControlProtocol.Request.self, from: Data(line))
                if request.op == "upgrade" {
                    (response, exitCode) = runUpgrade(request)
                } else {
                    response = try handle(request)
                }
            } catch {
                response = .init(ok: false, error: "\(error)")
            }
            var out = (try? JSONEncoder().encode(response)) ?? Data("{\"ok\":false}".utf8)
            out.append(UInt8(ascii: "\n"))
            sendAll(fd, [UInt8](out))
            if let exitCode {
                // Handed over (or, past the point of no return, nobody took over): this process
                // ends here, closing nothing the new one serves (its descriptors stay open there).
                logger.notice("pvfsd exits after the hand-over")
                // _exit: no atexit work under the parked threads; what the new process serves
                // stays open there.
                _exit(exitCode)
            }
        }
    }

    /// The control operation `upgrade`: the response, and the exit code once this process must end.
    private func runUpgrade(_ request: ControlProtocol.Request) -> (ControlProtocol.Response, Int32?) {
        var committed = false
        do {
            let outcome = try upgrade(binary: request.path, force: request.force ?? false, timeout: request.timeout ?? 10,
                                      committed: &committed)
            return (.init(ok: true, upgrade: outcome), 0)
        } catch let blocked as UpgradeBlocked {
            return (.init(ok: false, error: "\(blocked)", blockers: blocked.sessions), nil)
        } catch {
            // Before the point of no return the upgrade was undone and serving goes on.
            return (.init(ok: false, error: "\(error)"), committed ? 1 : nil)
        }
    }

    func handle(_ request: ControlProtocol.Request) throws -> ControlProtocol.Response {
        switch request.op {
        case "status":
            let counts = registry.sessionCounts
            let served = registry.openVolumes.map {
                ControlProtocol.ServedVM(name: $0.name, sessions: counts[$0.name] ?? 0, usedBytes: $0.usage.bytes, usedInodes: $0.usage.inodes)
            }.sorted { $0.name < $1.name }
            return .init(ok: true, status: .init(pid: getpid(), listeners: services.map(\.serviceDescription), servedVMs: served,
                                                 tookOverFrom: tookOver.map { "pvfs \($0.version)" },
                                                 adoptedConnections: tookOver?.connections))
        case "reload":
            try reload()
            return .init(ok: true)
        case "release":
            guard let vm = request.vm else { return .init(ok: false, error: "release needs a vm") }
            let released = registry.release(vm: vm)
            return released ? .init(ok: true) : .init(ok: false, error: "VM \(vm) is still busy")
        case "metrics":
            return .init(ok: true, text: renderMetrics())
        default:
            if let handler = controlHandlers[request.op] { return try handler(request) }
            return .init(ok: false, error: "unknown operation \(request.op)")
        }
    }

    // MARK: Metrics over HTTP

    func renderMetrics() -> String {
        // A VM removed or renamed since the last scrape loses its latency series. The registry's
        // rules are the VMs pvfsd serves (reloaded after every catalog change): no catalog read here.
        let mark = metrics.requestTimers.mark()
        metrics.requestTimers.forgetVMs(otherThan: Set(registry.accessRules.vms.keys), madeBefore: mark)
        return metrics.render { scrape in
            let volumes = registry.openVolumes
            Metrics.record(into: scrape, volumes: volumes, sessions: registry.sessionCounts,
                           unboundLimits: unboundLimitCounters, connectionLimits: configuration.connectionLimits,
                           volumeLimits: registry.volumeLimits, transportLimits: configuration.limits)
            Metrics.record(into: scrape, tenants: admission.usage)
            Metrics.record(into: scrape, cpu: cpuFairness)
            Metrics.record(into: scrape, pool: workerPool, volumes: volumes)
        }
    }

    private func serveMetricsHTTP(_ fd: Int32) {
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var reader = LineReader(fd: fd, limit: 16384)
        guard let requestLine = reader.next() else { return }
        while let header = reader.next(), header != [UInt8(ascii: "\r")], !header.isEmpty {}
        let text = String(decoding: requestLine, as: UTF8.self)
        let ok = text.hasPrefix("GET /metrics ") || text.hasPrefix("GET / ")
        let body = ok ? renderMetrics() : "not found\n"
        let head = "HTTP/1.1 \(ok ? "200 OK" : "404 Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\n" +
            "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        sendAll(fd, Array((head + body).utf8))
    }
}
