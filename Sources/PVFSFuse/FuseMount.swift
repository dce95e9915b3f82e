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

        guard let resolved = realpath(mountpoint, nil) else {
            throw PVFSError(.mount, "cannot mount on \(mountpoint): \(Errno(rawValue: Glibc.errno))", errno: Errno(rawValue: Glibc.errno))
        }
        let canonical = String(cString: resolved)
        free(resolved)
        self.mountpoint = canonical
        var st = Glibc.stat()
        guard Glibc.lstat(canonical, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw PVFSError(.mount, "cannot mount on \(mountpoint): not a directory", errno: .notDirectory)
        }
        if FuseMount.mountedFileSystems().contains(where: { $0.mountpoint == canonical && $0.isPVFS }) {
            throw PVFSError(.mount, "\(canonical) already has a pvfs mount", errno: .resourceBusy)
        }

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
        guard let connection else { return }
        let directory = "/sys/fs/fuse/connections"
        if access("\(directory)/\(connection)", F_OK) != 0 {
            // The fusectl filesystem is not mounted everywhere (systemd mounts it; containers
            // and minimal systems may not).
            _ = Glibc.mount("fusectl", directory, "fusectl", 0, nil)
        }
        let path = "\(directory)/\(connection)/abort"
        let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = Glibc.write(fd, "1", 1)
        Glibc.close(fd)
    }

    // MARK: Mount table

    struct MountEntry {
        var device: (major: UInt32, minor: UInt32)?
        var mountpoint: String
        var fileSystemType: String
        var source: String

        var isPVFS: Bool { fileSystemType == "fuse.pvfs" }
    }

    /// The calling process's mounts, from /proc/self/mountinfo (paths unescaped).
    static func mountedFileSystems() -> [MountEntry] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var result: [MountEntry] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            let numbers = fields[2].split(separator: ":")
            var device: (UInt32, UInt32)?
            if numbers.count == 2, let major = UInt32(numbers[0]), let minor = UInt32(numbers[1]) { device = (major, minor) }
            result.append(MountEntry(device: device, mountpoint: unescape(fields[4]),
                                     fileSystemType: String(fields[dash + 1]), source: unescape(fields[dash + 2])))
        }
        return result
    }

    /// mountinfo writes space, tab, newline and backslash as octal escapes.
    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        let raw = Array(field.utf8)
        var i = 0
        while i < raw.count {
            if raw[i] == UInt8(ascii: "\\"), i + 3 < raw.count,
               let value = UInt8(String(decoding: raw[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(raw[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A pvfs mount found in the mount table.
    public struct MountedView: Sendable, Equatable {
        public var mountpoint: String
        /// From the mount's source, `pvfs:<vm>`.
        public var vmName: String?
    }

    /// The pvfs mount at `path` (the mountpoint itself, not a directory below one), also when its
    /// serving process died and the mount only answers ENOTCONN.
    public static func pvfsMount(at path: String) -> MountedView? {
        let canonical = canonicalPath(path)
        guard let entry = mountedFileSystems().last(where: { $0.mountpoint == canonical }), entry.isPVFS else { return nil }
        let vmName = entry.source.hasPrefix("pvfs:") ? String(entry.source.dropFirst("pvfs:".count)) : nil
        return MountedView(mountpoint: canonical, vmName: vmName)
    }

    /// realpath(3); for a dead mount (whose root cannot be resolved) the resolved parent plus the
    /// last component.
    static func canonicalPath(_ path: String) -> String {
        if let resolved = realpath(path, nil) {
            defer { free(resolved) }
            return String(cString: resolved)
        }
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let parent = url.deletingLastPathComponent().path
        guard let resolvedParent = realpath(parent, nil) else { return url.path }
        defer { free(resolvedParent) }
        let base = String(cString: resolvedParent)
        return (base == "/" ? "" : base) + "/" + url.lastPathComponent
    }
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
