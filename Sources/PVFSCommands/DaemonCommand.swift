import ArgumentParser
import Foundation
import Logging
import PVFSDaemon
import PVFSEngine
import PVFSStore

/// `pvfsd`: serve every VM of a store to its clients.
public struct DaemonCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pvfsd",
        abstract: "Serve every VM's merged view: 9P2000.L over TCP/Unix sockets and Xen PV rings, virtio-fs (vhost-user) sockets, FUSE mounts on request.",
        discussion: """
            Settings come from --config (default /etc/pvfs/pvfsd.conf when it exists), then options.
            The control socket is <store>/pvfsd.sock; pvfs-vm changes (quota, access, bindings, rm) take effect live.
            SIGTERM/SIGINT stop cleanly; SIGHUP re-reads the catalog.
            `pvfs upgrade` hands every 9P listener and connection (with its fids, open files and \
            locks) to a new pvfsd binary without the clients noticing.
            """,
        version: pvfsVersion)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Option(name: .long, help: "Configuration file (default /etc/pvfs/pvfsd.conf if present).")
    public var config: String?

    @Option(name: .long, help: ArgumentHelp("Listen for 9P: [NAME=]tcp:HOST:PORT or [NAME=]unix:PATH (repeatable).", valueName: "address"))
    public var listen: [String] = []

    @Option(name: .long, help: "Serve Prometheus metrics over HTTP at tcp:HOST:PORT.")
    public var metrics: String?

    @Flag(name: .long, inversion: .prefixedNo, help: "Be the Xen PV 9pfs backend (dom0).")
    public var xen: Bool?

    @Option(name: .long, help: "Run the janitor every N seconds (0: never).")
    public var janitorInterval: Int?

    @Option(name: .long, help: ArgumentHelp("""
        When metadata changes reach the catalog: sync (before the reply; a kill -9 loses nothing \
        acknowledged) or grouped (a few ms later, many per transaction: faster; a kill -9 may lose \
        the last ms of operations not fsync'd).
        """, valueName: "mode"))
    public var catalogCommit: String?

    public init() {}

    public func loadConfiguration() throws -> DaemonConfiguration {
        var configuration = DaemonConfiguration(storePath: storeOptions.storePath)
        let path = config ?? (FileManager.default.fileExists(atPath: DaemonConfiguration.defaultPath) ? DaemonConfiguration.defaultPath : nil)
        if let path {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw CommandFailure("cannot read the configuration file \(path)")
            }
            configuration = try DaemonConfiguration.parse(text, defaults: configuration)
            if storeOptions.store != nil { configuration.storePath = storeOptions.storePath }
        }
        if !listen.isEmpty { configuration.listeners = try listen.map(DaemonConfiguration.Listener.init(parsing:)) }
        if let metrics { configuration.metricsAddress = metrics }
        if let xen { configuration.xenEnabled = xen }
        if let janitorInterval { configuration.janitorIntervalSeconds = janitorInterval }
        if let catalogCommit {
            guard let mode = Volume.CommitMode(rawValue: catalogCommit) else {
                throw CommandFailure("--catalog-commit is sync or grouped")
            }
            configuration.commitMode = mode
        }
        return configuration
    }

    public func run() throws {
        Daemon.blockControlSignals()
        let logger = logging.makeLogger("pvfsd")
        try runCommand {
            let configuration: DaemonConfiguration
            do {
                configuration = try loadConfiguration()
            } catch let error as ConfigurationError {
                throw CommandFailure(error.description)
            }
            // Started by a running pvfsd to take over from it (`pvfs upgrade`)?
            let adoption = try DaemonAdoption.receiveIfStartedForHandOver(version: pvfsVersion, logger: logger)
            let daemon: Daemon
            do {
                daemon = try Daemon(configuration: configuration, logger: logger)
                daemon.softwareVersion = pvfsVersion
                daemon.adoption = adoption
                try DaemonServices.install(into: daemon)
                try daemon.start()
            } catch {
                adoption?.reportFailure(error)
                if let error = error as? ConfigurationError { throw CommandFailure(error.description) }
                throw error
            }
            if let adoption {
                // Restored, not yet reading: serve only once the previous process lets go.
                do {
                    try adoption.awaitPermissionToServe()
                } catch {
                    logger.error("the previous pvfsd did not let go: \(error)")
                    throw CommandFailure("taking over failed: \(error)")
                }
                daemon.beginServingAdopted()
            }
            daemon.adoption = nil
            ServiceManagerNotification.send("READY=1\nSTATUS=serving")
            daemon.runUntilSignalled()
            ServiceManagerNotification.send("STOPPING=1")
        }
    }
}

/// Attaches the configured transports to a daemon.
enum DaemonServices {
    static func install(into daemon: Daemon) throws {
        daemon.installMaintenance()
        if !daemon.configuration.listeners.isEmpty {
            let nineP = try NinePSocketService(listeners: daemon.configuration.listeners, registry: daemon.registry, logger: daemon.logger,
                                               configuration: daemon.ninePConfiguration,
                                               limits: daemon.configuration.limits, admission: daemon.admission,
                                               cpuFairness: daemon.cpuFairness, pool: daemon.workerPool)
            nineP.adoption = daemon.adoption?.nineP
            daemon.add(nineP)
        } else {
            // No 9P listener configured any more: what was handed over closes.
            daemon.adoption?.discardNineP()
        }
        HostMountService(registry: daemon.registry, logger: daemon.logger).install(into: daemon)
        // Always present, so that a binding made while pvfsd runs starts serving at once.
        let vhostUser = VhostUserService(registry: daemon.registry, logger: daemon.logger, admission: daemon.admission)
        daemon.add(vhostUser)
        daemon.addReloadHandler { [weak vhostUser] in vhostUser?.reconcile() }
        if daemon.configuration.xenEnabled {
            daemon.add(XenService(registry: daemon.registry, logger: daemon.logger, configuration: daemon.ninePConfiguration,
                                  limits: daemon.configuration.limits, admission: daemon.admission,
                                  cpuFairness: daemon.cpuFairness, pool: daemon.workerPool))
        }
    }
}
