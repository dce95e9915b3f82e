import ArgumentParser
import Foundation
import Glibc
import Logging
import PVFSEngine
import PVFSFuseServer
import PVFSStore
import PVFSSystem
import PVFSVhostUser

/// `pvfs-vm serve-vhost-user NAME --socket PATH`: one VM served to one QEMU over a
/// vhost-user-fs socket by this process, until SIGINT or SIGTERM. A stand-alone server for
/// trying virtio-fs guests (Tests/guest/run-virtiofs.sh) until pvfsd hosts vhost-user bindings;
/// it holds the VM's lock like `pvfs-vm mount`, so the VM cannot be served elsewhere meanwhile.
public struct ServeVhostUser: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "serve-vhost-user",
        abstract: "Serve a VM to a QEMU vhost-user-fs device on a Unix socket (stand-alone, for tests).",
        shouldDisplay: false)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Argument(help: "The VM to serve.")
    public var name: String

    @Option(name: .long, help: ArgumentHelp("The socket QEMU connects to (-chardev socket,path=...).", valueName: "path"))
    public var socket: String

    @Option(name: .long, help: "Seconds the guest may cache names and attributes (0: none).")
    public var cacheTimeout: Double = 1

    @Flag(name: .long, help: "Commit metadata changes a few ms after the reply, many per transaction.")
    public var groupedCommit = false

    public init() {}

    public func run() throws {
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let logger = logging.makeLogger("pvfs.vhost")
        let store: Store
        let volume: Volume
        let settings: VMAccessSettings
        do {
            store = try storeOptions.open(logger: logger)
            volume = try Volume.open(store: store, vmName: name, logger: logger)
            settings = (try? store.accessSettings(vm: name)) ?? VMAccessSettings()
        } catch let error as PVFSError {
            throw CommandFailure(error.message, exitCode: error.errno == .noSuchFileOrDirectory ? PVFSExitCode.notFound : PVFSExitCode.conflict)
        }
        if groupedCommit { volume.commitMode = .grouped }
        // The guest's kernel checks permissions (virtiofs mounts with default_permissions) and sends
        // every implicit change explicitly; squashed guests are checked here (docs/access.md).
        var policy = AccessRules.policy(settings, binding: nil, side: .guest)
        if policy.permissionChecks == .guestKernel { policy.permissionChecks = .hostKernel }
        let loop = try EpollEventLoop(logger: logger)
        let sessions = SessionNumbers()
        let sessionPolicy = policy
        let configuration = FuseServerConfiguration.guest(cacheTimeout: cacheTimeout)
        let listener = try VhostUserFsListener(path: socket, sources: loop, logger: logger) {
            FuseServer(view: VMView(volume: volume, policy: sessionPolicy, sessionID: sessions.next()),
                       configuration: configuration, logger: logger)
        }
        logger.notice("serving VM \(name) on \(socket) (pid \(getpid()))")
        var received: Int32 = 0
        sigwait(&signals, &received)
        logger.notice("signal \(received): stopping")
        listener.close()
        loop.shutdown()
        try? volume.saveUsage()
        do {
            try volume.close()
        } catch {
            throw CommandFailure("closing VM \(name) failed: \(error)")
        }
    }
}

/// Session ids for the views of one process.
final class SessionNumbers: @unchecked Sendable {
    private let lock = NSLock()
    private var value: UInt64 = 0

    func next() -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}
