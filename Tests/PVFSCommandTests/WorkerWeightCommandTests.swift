import Foundation
import Logging
import PVFS9P
@testable import PVFSDaemon
import PVFSTestSupport
import Testing

/// A VM's weight on pvfsd's worker pool: set with `pvfs-vm set-weight`, shown by `show`, and
/// applied by a running pvfsd at once (metrics included).
@Suite("pvfs-vm set-weight", .serialized)
struct WorkerWeightCommandTests {
    struct Shown: Decodable { var workerWeight: Int }

    @Test func aWeightIsStoredShownAndAppliedLive() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try TenantLimitCommandTests().makeStore(area)
        let shown = try mustRun("pvfs-vm", ["show", "guest", "--json", "--store", store])
        #expect(try JSONDecoder().decode(Shown.self, from: Data(shown.stdout.utf8)).workerWeight == 100)
        #expect(try mustRun("pvfs-vm", ["show", "guest", "--store", store]).stdout.contains("weight:      100 (default)"))

        var logger = Logger(label: "test.pvfsd")
        logger.logLevel = .critical
        let daemon = try Daemon(configuration: DaemonConfiguration(storePath: store), logger: logger)
        let service = try NinePSocketService(listeners: [.init(name: "guests", address: "tcp:127.0.0.1:0")],
                                             registry: daemon.registry, logger: logger, configuration: daemon.ninePConfiguration,
                                             pool: daemon.workerPool)
        daemon.add(service)
        try daemon.start()
        defer { daemon.stop() }
        let address = try #require(service.boundAddresses.first)
        let (fd, client) = try TenantLimitCommandTests.connect(address)
        defer { NinePClient.closeSocket(fd) }
        _ = try client.version(msize: 65536)
        _ = try client.attach(fid: 0, aname: "guest", uid: 0)
        #expect(daemon.workerPool.weight(of: .vm("guest")) == 100)
        #expect(metricSample(daemon.renderMetrics(), "pvfs_worker_weight{vm=\"guest\"}") == 100)

        #expect(try mustRun("pvfs-vm", ["set-weight", "guest", "300", "--store", store]).stdout == "VM guest: weight 300\n")
        // The command told the running daemon: its pool serves the VM with the new weight.
        #expect(daemon.workerPool.weight(of: .vm("guest")) == 300)
        #expect(metricSample(daemon.renderMetrics(), "pvfs_worker_weight{vm=\"guest\"}") == 300)
        let json = try mustRun("pvfs-vm", ["show", "guest", "--json", "--store", store])
        #expect(try JSONDecoder().decode(Shown.self, from: Data(json.stdout.utf8)).workerWeight == 300)
        #expect(try mustRun("pvfs-vm", ["show", "guest", "--store", store]).stdout.contains("weight:      300\n"))

        // Bad input: a clear error, exit 64 (usage), nothing changed.
        let negative = try runTool("pvfs-vm", ["set-weight", "--store", store, "guest", "--", "-5"])
        #expect(negative.status == 64 && negative.stderr.contains("invalid weight"), "\(negative.stderr)")
        for bad in ["0", "10001", "heavy", "1.5"] {
            let result = try runTool("pvfs-vm", ["set-weight", "guest", bad, "--store", store])
            #expect(result.status == 64, "\(bad): exit \(result.status)")
            #expect(result.stderr.contains("invalid weight"), "\(bad): \(result.stderr)")
        }
        let missing = try runTool("pvfs-vm", ["set-weight", "nosuch", "200", "--store", store])
        #expect(missing.status != 0 && missing.stderr.contains("no VM named nosuch"), "\(missing.stderr)")
        #expect(daemon.workerPool.weight(of: .vm("guest")) == 300)

        try mustRun("pvfs-vm", ["set-weight", "guest", "default", "--store", store])
        #expect(daemon.workerPool.weight(of: .vm("guest")) == 100)
        let fsck = try runTool("pvfs", ["fsck", "--store", store])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
    }

    /// Every transport's connections run on the daemon's one pool, sized by pvfsd.conf.
    @Test func theDaemonsPoolIsConfigured() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try TenantLimitCommandTests().makeStore(area)
        let defaults = DaemonConfiguration(storePath: store)
        let configuration = try DaemonConfiguration.parse("worker-threads = 6\nworker-max-share = 0.34\n", defaults: defaults)
        var logger = Logger(label: "test.pvfsd")
        logger.logLevel = .critical
        let daemon = try Daemon(configuration: configuration, logger: logger)
        defer { daemon.stop() }
        #expect(daemon.workerPool.threadCount == 6)
        #expect(daemon.workerPool.sharedCap == 2)
        // The shared template images stay as long as pvfsd.conf says after their last VM.
        let retained = try DaemonConfiguration.parse("template-image-retention = 5\n", defaults: defaults)
        #expect(retained.templateImageRetentionSeconds == 5)
        let retaining = try Daemon(configuration: retained, logger: logger)
        defer { retaining.stop() }
        #expect(retaining.registry.templateImages.idleRetention == .seconds(5))
        for bad in ["worker-max-share = 0", "worker-max-share = 1.5", "worker-threads = 0",
                    "template-image-retention = -1", "template-image-retention = soon"] {
            #expect(throws: ConfigurationError.self) { try DaemonConfiguration.parse(bad + "\n", defaults: defaults) }
        }
    }
}
