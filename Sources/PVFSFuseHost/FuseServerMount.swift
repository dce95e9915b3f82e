import Foundation
import Glibc
import Logging
import PVFSEngine
import PVFSFuseServer
import PVFSSystem
import SystemPackage

/// One VM view mounted on the host, served by pvfs's own FUSE server (`FuseServer`) over
/// /dev/fuse: the server that answers guests' virtio-fs queues, without libfuse.
///
/// `init` mounts (the directory shows the VM once it returns, though requests wait until `run`
/// serves them); `run` serves until the mount goes away, by `stop`, `pvfs-vm umount` or
/// `umount`; `stop` may be called from any thread. The caller owns the view's volume and closes
/// it after `run` returns.
public final class FuseServerMount: @unchecked Sendable {
    public let view: VMView
    public let mountpoint: String
    public let options: FuseMountOptions
    public let server: FuseServer
    let channel: FuseDeviceChannel
    let logger: Logger
    let threads: Int

    public var connection: UInt32? { channel.connection }

    /// Reader threads by default: requests never wait on a lock in them (SETLKW has threads of
    /// its own), so a few per core keep the kernel's queue drained.
    public static var defaultThreads: Int { max(2, min(8, ProcessInfo.processInfo.activeProcessorCount * 2)) }

    public init(view: VMView, mountpoint: String, options: FuseMountOptions = FuseMountOptions(),
                logger: Logger = Logger(label: "pvfs.fuse"), threads: Int? = nil) throws {
        self.view = view
        self.options = options
        var logger = logger
        logger[metadataKey: "vm"] = "\(view.vmName)"
        self.logger = logger
        self.threads = threads ?? Self.defaultThreads
        let canonical = try FuseMountTable.checkMountpoint(mountpoint)
        self.mountpoint = canonical
        let configuration = FuseServerConfiguration(
            entryTimeout: options.entryTimeout, attributeTimeout: options.attributeTimeout, negativeTimeout: options.negativeTimeout,
            keepCache: options.keepCache, locksInKernel: options.locksInKernel, posixACLs: options.posixACLs,
            maximumPages: Self.splicedPages,
            supplementaryGroups: { _, _, pid in Self.supplementaryGroups(of: pid) })
        server = FuseServer(view: view, configuration: configuration, logger: logger)
        channel = try FuseDeviceChannel(
            mountpoint: canonical,
            options: FuseDeviceChannel.Options(fsName: "pvfs:\(view.vmName)", readOnly: options.readOnly, allowOther: options.allowOther,
                                               maximumWrite: Int(configuration.maximumWrite), readaheadKiB: options.readaheadKiB),
            logger: logger)
        logger.info("mounted", metadata: ["mountpoint": "\(canonical)", "readOnly": "\(options.readOnly)", "server": "pvfs"])
    }

    /// Serves requests until the mount goes away; then unmounts what is left and drops the
    /// session's locks and handles. Returns at once if `stop` came first.
    public func run() throws {
        channel.serve(server, threads: threads)
        channel.unmountIfMounted()
        view.releaseAllLocks()
        logger.info("unmounted", metadata: ["mountpoint": "\(mountpoint)"])
    }

    public func stop(force: Bool = false) {
        channel.stop(force: force)
    }

    public func abortConnection() {
        channel.abortConnection()
    }

    /// The most pages one READ may ask for such that its reply (plus the 16-byte header) fits
    /// the largest pipe this process may make (fs.pipe-max-size, 1 MiB by default): then every
    /// large read is spliced, never copied.
    static var splicedPages: UInt16 {
        let text = (try? String(contentsOfFile: "/proc/sys/fs/pipe-max-size", encoding: .utf8)) ?? ""
        let limit = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? (1 << 20)
        return UInt16(clamping: max(32, min(256, (limit - 4096) / 4096)))
    }

    /// A host process's supplementary groups, from /proc (as libfuse's fuse_req_getgroups): read
    /// only where a decision needs them.
    static func supplementaryGroups(of pid: UInt32) -> [UInt32] {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return [] }
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Groups:") }) else { return [] }
        return line.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) }
    }
}

/// A host mount of a VM view, whichever FUSE implementation serves it.
public protocol HostFuseMount: AnyObject, Sendable {
    var mountpoint: String { get }
    /// Serves until the mount goes away.
    func run() throws
    /// Ends the mount (from any thread); `force` aborts the connection.
    func stop(force: Bool)
}

extension FuseServerMount: HostFuseMount {}

/// Which FUSE implementation serves host mounts.
public enum HostFuseEngine: String, CaseIterable, Sendable {
    /// libfuse's low-level loop (PVFSFuse).
    case libfuse
    /// pvfs's own server over /dev/fuse (FuseServerMount), the one virtio-fs guests get.
    case fuseServer = "fuse-server"

    /// The engine named by PVFS_FUSE_ENGINE, else libfuse: a switch for tests and benchmarks
    /// while both exist.
    public static var fromEnvironment: HostFuseEngine {
        ProcessInfo.processInfo.environment["PVFS_FUSE_ENGINE"].flatMap(HostFuseEngine.init(rawValue:)) ?? .libfuse
    }
}
