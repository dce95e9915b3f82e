import ArgumentParser
import Foundation
import Glibc
import Logging
import PVFSDaemon
import PVFSEngine
import PVFSFuse
import PVFSStore
import PVFSSystem
import SystemPackage

/// `pvfs-vm mount NAME DIR`: the VM's root filesystem on the host, through FUSE, without the VM.
///
/// The mount holds the VM's lock for as long as it exists, so nothing else changes the VM
/// meanwhile: a running VM (served by pvfsd) cannot be mounted this way, and a mounted VM cannot
/// be started.
public struct Mount: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount a VM's root filesystem on a host directory (FUSE).",
        discussion: """
            Without --foreground the command returns once the mount is live and a background \
            process serves it until `pvfs-vm umount DIR`. The VM must not be running or mounted \
            elsewhere.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Argument(help: "The VM to mount.")
    public var name: String

    @Argument(help: "An existing directory to mount it on.")
    public var directory: String

    @Flag(name: .long, help: "Refuse every change (the mount is read-only).")
    public var readOnly = false

    @Flag(name: .long, help: "Serve in this process until unmounted (Ctrl-C or SIGTERM unmounts).")
    public var foreground = false

    @Flag(name: .long, help: "Let other users in (the kernel checks their permissions).")
    public var allowOther = false

    @Flag(name: .long, help: """
        Commit metadata changes a few ms after the reply, many per transaction (faster; a crash \
        may lose the last ms of changes not fsync'd). Through pvfsd, its --catalog-commit applies.
        """)
    public var groupedCommit = false

    @Option(name: .long, help: ArgumentHelp("Where the background process logs (default: nowhere).", valueName: "path"))
    public var logFile: String?

    @Flag(name: .long, help: .hidden)
    public var fuseDebug = false

    @Option(name: .long, help: ArgumentHelp("""
        The FUSE implementation: libfuse, or fuse-server (pvfs's own server over /dev/fuse, the one \
        virtio-fs guests get; root only). Default: $PVFS_FUSE_ENGINE, else libfuse.
        """, valueName: "engine"))
    public var engine: String?

    /// Serve with the caching of a mount shared with guest sessions (seconds of validity for
    /// names and attributes, no pages kept across opens): for measuring what sharing costs.
    @Option(name: .long, help: .hidden)
    public var sharedCacheTimeout: Double?

    /// The descriptor a daemonizing parent waits on for "ready" or an error.
    @Option(name: .long, help: .hidden)
    public var readyFD: Int32?

    public init() {}

    public func validate() throws {
        if let engine, HostFuseEngine(rawValue: engine) == nil {
            throw ValidationError("unknown engine \(engine): use \(HostFuseEngine.allCases.map(\.rawValue).joined(separator: " or "))")
        }
    }

    public func run() throws {
        if foreground {
            try serve()
        } else if try mountThroughDaemon() {
            return
        } else {
            try startInBackground()
        }
    }

    /// While pvfsd runs for this store it hosts the mount itself, so the host and the VM's
    /// guests share one engine (a separate process could not take the VM while it is served).
    /// Returns false when no daemon runs.
    private func mountThroughDaemon() throws -> Bool {
        let client = DaemonClient(storePath: storeOptions.storePath)
        let absolute = URL(fileURLWithPath: directory).standardizedFileURL.path
        let response: ControlProtocol.Response?
        do {
            response = try client.send(.init(op: "mount", vm: name, path: absolute, readOnly: readOnly, allowOther: allowOther),
                                       timeoutSeconds: 60)
        } catch {
            throw Self.report(CommandFailure("the daemon did not answer: \(error)"))
        }
        guard let response else { return false }
        guard response.ok else {
            let message = response.error ?? "unknown error"
            throw Self.report(CommandFailure("pvfsd could not mount VM \(name): \(message)",
                                             exitCode: message.contains("no VM") ? PVFSExitCode.notFound : PVFSExitCode.failure))
        }
        return true
    }

    // MARK: Foreground

    private func serve() throws {
        let notifier = ReadyNotifier(fd: readyFD)
        // Signals are taken by one thread with sigwait; every thread started from here on
        // (libfuse's workers among them) inherits the blocked mask.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let logger = logging.makeLogger("pvfs.vm.mount")
        let engine = engine.flatMap(HostFuseEngine.init(rawValue:)) ?? HostFuseEngine.fromEnvironment
        let volume: Volume
        let mount: any HostFuseMount
        do {
            let store = try storeOptions.open(logger: logger)
            volume = try Volume.open(store: store, vmName: name, logger: logger)
            if groupedCommit { volume.commitMode = .grouped }
        } catch let error as PVFSError where error.domain == .store {
            let failure = CommandFailure(error.message, exitCode: Self.exitCode(for: error.errno))
            notifier.fail(failure)
            throw Self.report(failure)
        }
        var policy = SessionPolicy(side: .host, readOnly: readOnly, permissionChecks: .hostKernel)
        if let store = try? storeOptions.open(logger: logger), let settings = try? store.accessSettings(vm: name) {
            // The host side of a VM with shifted ids shows them shifted.
            policy.idMapping = AccessRules.idMapping(settings)
            policy.readOnly = readOnly || settings.readOnly
        }
        let view = VMView(volume: volume, policy: policy, sessionID: 1)
        do {
            let options = FuseMountOptions(readOnly: readOnly, allowOther: allowOther,
                                           caching: sharedCacheTimeout.map { .shared(timeout: $0) } ?? .exclusive,
                                           debug: fuseDebug)
            mount = try engine.mount(view, on: directory, options: options, logger: logger)
        } catch let error as PVFSError where error.domain == .mount {
            try? volume.close()
            let failure = CommandFailure(error.message, exitCode: error.errno == .resourceBusy ? PVFSExitCode.conflict : PVFSExitCode.failure)
            notifier.fail(failure)
            throw Self.report(failure)
        }

        let waitedSignals = signals
        let signalThread = Thread {
            var signals = waitedSignals
            var caught: Int32 = 0
            var stops = 0
            while sigwait(&signals, &caught) == 0 {
                stops += 1
                logger.notice("signal \(caught): unmounting\(stops > 1 ? " (forced)" : "")")
                mount.stop(force: stops > 1)
            }
        }
        signalThread.start()

        // Times and sizes kept lazily reach the catalog every few seconds, as in pvfsd.
        let housekeeping = volume.housekeeping(saveEvery: 5, reloadQuotaEvery: Self.quotaPollSeconds, logger: logger)
        func stopFlushing() { housekeeping.stop() }

        notifier.ready()
        if readyFD != nil { detachStandardStreams() }
        do {
            try mount.run()
            stopFlushing()
        } catch let error as PVFSError where error.domain == .mount {
            stopFlushing()
            try? volume.close()
            throw Self.report(CommandFailure(error.message))
        }
        do {
            try volume.close()
        } catch {
            throw Self.report(CommandFailure("closing VM \(name) failed: \(error)"))
        }
    }

    /// A background server keeps no terminal: its output goes to --log-file or nowhere.
    private func detachStandardStreams() {
        let null = Glibc.open("/dev/null", O_RDWR)
        if null >= 0 { dup2(null, 0) }
        var out = null
        if let logFile {
            let fd = Glibc.open(logFile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            if fd >= 0 { out = fd }
        }
        if out >= 0 {
            dup2(out, 1)
            dup2(out, 2)
        }
    }

    // MARK: Background

    /// Starts this command again with --foreground in a new session and waits until it reports
    /// the mount live (exit 0) or failed (its message and exit code).
    private func startInBackground() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw Self.report(CommandFailure("pipe: \(Errno(rawValue: errno))")) }
        let (readEnd, writeEnd) = (fds[0], fds[1])
        // Only the copy made for the child (fd 3) may stay open in it: a descriptor our own parent
        // watches for our exit (as Foundation's Process does) must close when we exit, not when
        // the server does.
        markDescriptorsCloseOnExec()
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let arguments = [executable] + CommandLine.arguments.dropFirst() + ["--foreground", "--ready-fd", "3"]

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(Self.spawnSetSID))

        var pid: pid_t = 0
        let cArguments = arguments.map { strdup($0) } + [nil]
        defer { cArguments.forEach { free($0) } }
        let rc = posix_spawn(&pid, executable, &actions, &attributes, cArguments, environ)
        close(writeEnd)
        guard rc == 0 else {
            close(readEnd)
            throw Self.report(CommandFailure("cannot start the mount process: \(Errno(rawValue: rc))"))
        }
        var message: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !message.contains(UInt8(ascii: "\n")) {
            let n = read(readEnd, &buffer, buffer.count)
            if n > 0 { message += buffer[0..<n]; continue }
            if n < 0 && errno == EINTR { continue }
            break
        }
        close(readEnd)
        let text = String(decoding: message, as: UTF8.self)
        if text.hasPrefix("ready") { return }
        if text.hasPrefix("error ") {
            let rest = text.dropFirst("error ".count)
            let code = Int32(rest.prefix { $0.isNumber }) ?? 1
            let messageText = rest.drop { $0.isNumber }.trimmingCharacters(in: .whitespacesAndNewlines)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw Self.report(CommandFailure(messageText, exitCode: ExitCode(code)))
        }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        throw Self.report(CommandFailure("the mount process exited before the mount was live (status \(status))"))
    }

    /// glibc's POSIX_SPAWN_SETSID (not exported to Swift): the child leaves our session and
    /// terminal, as a daemon does.
    static let spawnSetSID: Int32 = 0x80

    /// How often a mount served without pvfsd looks for a quota change (seconds).
    static let quotaPollSeconds = 1

    // MARK: Errors

    static func exitCode(for errno: Errno) -> ExitCode {
        switch errno {
        case .noSuchFileOrDirectory: PVFSExitCode.notFound
        case .resourceBusy, .fileExists: PVFSExitCode.conflict
        default: PVFSExitCode.failure
        }
    }

    /// Prints the failure and returns the exit code to throw.
    static func report(_ failure: CommandFailure) -> ExitCode {
        FileHandle.standardError.write(Data("error: \(failure.message)\n".utf8))
        return failure.exitCode
    }
}

/// Tells a waiting parent (pvfs-vm mount without --foreground) how starting went.
struct ReadyNotifier {
    let fd: Int32?

    func ready() { send("ready\n") }

    func fail(_ failure: CommandFailure) {
        send("error \(failure.exitCode.rawValue) \(failure.message)\n")
    }

    private func send(_ text: String) {
        guard let fd else { return }
        var bytes = Array(text.utf8)
        _ = write(fd, &bytes, bytes.count)
        close(fd)
    }
}

/// `pvfs-vm umount DIR`: ends a mount made by `pvfs-vm mount` and waits until its process has
/// released the VM.
public struct Umount: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "umount",
        abstract: "Unmount a VM mounted with `pvfs-vm mount`.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Argument(help: "The directory the VM is mounted on.")
    public var directory: String

    @Flag(name: .long, help: "Detach now even if files are open; the VM is released when they are closed.")
    public var lazy = false

    @Option(name: .long, help: "Seconds to wait for the mount process to release the VM.")
    public var timeout: Double = 30

    public init() {}

    public func run() throws {
        let absolute = URL(fileURLWithPath: directory).standardizedFileURL.path
        if let response = try? DaemonClient(storePath: storeOptions.storePath).send(.init(op: "umount", force: lazy, path: absolute)),
           response.ok {
            return
        }
        guard let entry = FuseMount.pvfsMount(at: directory) else {
            throw Mount.report(CommandFailure("\(directory) is not a pvfs mount", exitCode: PVFSExitCode.notFound))
        }
        if umount2(entry.mountpoint, lazy ? Int32(MNT_DETACH) : 0) != 0 {
            let error = Errno(rawValue: errno)
            if error == .notPermitted {
                // Not root: the setuid helper unmounts what the user mounted.
                try unmountWithHelper(entry.mountpoint)
            } else if error == .resourceBusy {
                throw Mount.report(CommandFailure("\(entry.mountpoint) is busy (files are open there); close them or use --lazy",
                                                  exitCode: PVFSExitCode.conflict))
            } else {
                throw Mount.report(CommandFailure("cannot unmount \(entry.mountpoint): \(error)"))
            }
        }
        try waitForRelease(vmName: entry.vmName)
    }

    private func unmountWithHelper(_ mountpoint: String) throws {
        let helper = Process()
        helper.executableURL = URL(fileURLWithPath: "/usr/bin/fusermount3")
        helper.arguments = lazy ? ["-u", "-z", mountpoint] : ["-u", mountpoint]
        do {
            try helper.run()
            helper.waitUntilExit()
        } catch {
            throw Mount.report(CommandFailure("cannot run fusermount3: \(error)"))
        }
        guard helper.terminationStatus == 0 else {
            throw Mount.report(CommandFailure("fusermount3 could not unmount \(mountpoint)"))
        }
    }

    /// The serving process closes the VM after the kernel ends the connection; wait for its lock
    /// so that a command run next (mount, start) finds the VM free.
    private func waitForRelease(vmName: String?) throws {
        guard !lazy, let vmName, let store = try? Store(path: storeOptions.storePath, create: false),
              let vm = try? store.vm(named: vmName) else { return }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while store.isVMInUse(vm) {
            if Date() > deadline {
                throw Mount.report(CommandFailure("unmounted, but the process serving \(vmName) has not released it yet",
                                                  exitCode: PVFSExitCode.conflict))
            }
            usleep(20_000)
        }
    }
}
