import CFuse
import Foundation
import Glibc
import Logging
import PVFSEngine
import PVFSSystem
import Synchronization
import SystemPackage

/// One VM view mounted on the host through the kernel's FUSE, served by libfuse's low-level
/// multithreaded loop.
///
/// `init` mounts (the directory shows the VM once it returns, though requests wait until `run`
/// serves them); `run` serves until the mount goes away, by `stop`, `pvfs-vm umount` or
/// `fusermount3 -u`; `stop` may be called from any thread. The caller owns the view's volume and
/// closes it after `run` returns.
public final class FuseMount: @unchecked Sendable {
    public let view: VMView
    public let mountpoint: String
    public let options: FuseMountOptions
    let logger: Logger
    private let filesystem: FuseFilesystem
    private let userdata: Unmanaged<FuseFilesystem>
    private let session: OpaquePointer
    /// The kernel's connection number (the minor of the mount's device), for a forced abort.
    public let connection: UInt32?

    private struct State {
        var running = false
        var stopRequested = false
        var finished = false
        var destroyed = false
    }
    private let state = Mutex(State())

    public init(view: VMView, mountpoint: String, options: FuseMountOptions = FuseMountOptions(),
                logger: Logger = Logger(label: "pvfs.fuse")) throws {
        self.view = view
        self.options = options
        var logger = logger
        logger[metadataKey: "vm"] = "\(view.vmName)"
        self.logger = logger
        FuseLibraryLog.install()

        let canonical = try FuseMountTable.checkMountpoint(mountpoint)
        self.mountpoint = canonical

        let filesystem = FuseFilesystem(view: view, options: options, logger: logger)
        self.filesystem = filesystem
        let userdata = Unmanaged.passRetained(filesystem)
        self.userdata = userdata

        var mountOptions = ["fsname=pvfs:\(view.vmName)", "subtype=pvfs", "default_permissions", "noatime"]
        if options.allowOther { mountOptions.append("allow_other") }
        mountOptions.append(options.readOnly ? "ro" : "rw")
        var arguments = ["pvfs", "-o", mountOptions.joined(separator: ",")]
        if options.debug { arguments.append("-d") }
        let cArguments = arguments.map { strdup($0) }
        defer { cArguments.forEach { free($0) } }
        var argv = cArguments + [nil]
        var ops = FuseOperations.table()
        let created = argv.withUnsafeMutableBufferPointer { argvBuffer -> OpaquePointer? in
            var args = fuse_args(argc: Int32(arguments.count), argv: argvBuffer.baseAddress, allocated: 0)
            defer { fuse_opt_free_args(&args) }
            return fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata.toOpaque())
        }
        guard let created else {
            userdata.release()
            throw PVFSError(.mount, "cannot set up a FUSE session (see the messages above)", errno: .invalidArgument)
        }
        session = created
        if fuse_session_mount(created, canonical) != 0 {
            fuse_session_destroy(created)
            userdata.release()
            throw PVFSError(.mount, "cannot mount \(view.vmName) on \(canonical) (is /dev/fuse usable and the directory free?)",
                                    errno: .notPermitted)
        }
        let device = FuseMount.mountedFileSystems().last { $0.mountpoint == canonical && $0.isPVFS }?.device
        connection = device?.minor
        if let device { filesystem.backingDevice.withLock { $0 = "\(device.major):\(device.minor)" } }
        logger.info("mounted", metadata: ["mountpoint": "\(canonical)", "readOnly": "\(options.readOnly)"])
    }

    deinit {
        destroySession()
        userdata.release()
    }

    /// Serves requests until the mount goes away; then unmounts what is left and drops the
    /// session's locks. Returns at once if `stop` came first.
    public func run() throws {
        let proceed = state.withLock { s -> Bool in
            guard !s.running, !s.finished, !s.stopRequested else { return false }
            s.running = true
            return true
        }
        guard proceed else {
            destroySession()
            return
        }
        let rc = cfuse_session_loop_mt(session, options.cloneDescriptor ? 1 : 0, options.maximumThreads,
                                       min(options.idleThreads, options.maximumThreads))
        state.withLock {
            $0.running = false
            $0.finished = true
        }
        destroySession()
        logger.info("unmounted", metadata: ["mountpoint": "\(mountpoint)"])
        // The loop reports the kernel closing the connection (unmount) as ENODEV: a normal end.
        if rc != 0 && rc != -ENODEV && rc != ENODEV {
            throw PVFSError(.mount, "serving \(mountpoint) failed: \(Errno(rawValue: abs(rc)))", errno: Errno(rawValue: abs(rc)))
        }
    }

    private func destroySession() {
        let destroy = state.withLock { s -> Bool in
            guard !s.destroyed, !s.running else { return false }
            s.destroyed = true
            return true
        }
        guard destroy else { return }
        // Unmount only what is still mounted (stop, umount or fusermount may have done it); libfuse
        // complains about a mount that is gone.
        let stillMounted = FuseMount.mountedFileSystems().contains {
            $0.isPVFS && $0.mountpoint == mountpoint && (connection == nil || $0.device?.minor == connection)
        }
        if stillMounted { fuse_session_unmount(session) }
        fuse_session_destroy(session)
        view.releaseAllLocks()
    }

    /// Ends the mount. The kernel detaches it at once; files still open keep working until
    /// closed, then `run` returns. With `force` the connection is aborted instead: whatever
    /// still uses the mount gets ENOTCONN and `run` returns now.
    public func stop(force: Bool = false) {
        let running = state.withLock { s -> Bool in
            s.stopRequested = true
            return s.running
        }
        guard running else { return }
        // The loop ends when the kernel ends the connection: at once for an idle mount, after
        // the last close for a detached busy one. Exiting the session here would cut off the
        // files still open.
        if force { fuse_session_exit(session) }
        if Glibc.umount2(mountpoint, 0) != 0 {
            let error = Errno(rawValue: Glibc.errno)
            if error == .resourceBusy {
                _ = Glibc.umount2(mountpoint, CFUSE_MNT_DETACH)
            } else if error != .invalidArgument && error != .noSuchFileOrDirectory {
                logger.warning("cannot unmount \(mountpoint): \(error)")
            }
        }
        if force { abortConnection() }
    }

    /// Aborts the kernel side of the connection (/sys/fs/fuse/connections/N/abort).
    public func abortConnection() {
        if let connection { FuseMountTable.abortConnection(connection) }
    }

    // MARK: Mount table

    typealias MountEntry = FuseMountTable.Entry
    public typealias MountedView = FuseMountTable.MountedView

    static func mountedFileSystems() -> [MountEntry] { FuseMountTable.entries() }

    /// The pvfs mount at `path` (the mountpoint itself, not a directory below one), also when its
    /// serving process died and the mount only answers ENOTCONN.
    public static func pvfsMount(at path: String) -> MountedView? { FuseMountTable.pvfsMount(at: path) }
}

/// Sends libfuse's own messages to swift-log.
enum FuseLibraryLog {
    static let logger = Logger(label: "pvfs.fuse.libfuse")
    private static let installed = Mutex(false)

    static func install() {
        let first = installed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        cfuse_set_log_sink { level, message in
            guard let message else { return }
            var text = String(cString: message)
            while text.hasSuffix("\n") { text.removeLast() }
            // fuse_log_level follows syslog: 0 emerg ... 3 err, 4 warning, 5 notice, 6 info, 7 debug.
            let mapped: Logger.Level = switch level {
            case ...3: .error
            case 4: .warning
            case 5: .notice
            case 6: .info
            default: .debug
            }
            FuseLibraryLog.logger.log(level: mapped, "\(text)")
        }
    }
}

extension FuseMount: HostFuseMount {}
