import Foundation
import Logging
import PVFSEngine
import PVFSFuseHost

extension HostFuseEngine {
    /// Mounts `view` on `mountpoint` with this engine: the one place a VM view becomes a host
    /// mount (`pvfs-vm mount`, pvfsd's host mounts, provisioning hooks).
    public func mount(_ view: VMView, on mountpoint: String, options: FuseMountOptions, logger: Logger) throws -> any HostFuseMount {
        switch self {
        case .libfuse: try FuseMount(view: view, mountpoint: mountpoint, options: options, logger: logger)
        case .fuseServer: try FuseServerMount(view: view, mountpoint: mountpoint, options: options, logger: logger)
        }
    }
}

/// A host mount served by a thread of its own until it ends (pvfsd's host mounts and the
/// provisioning hooks' view; `pvfs-vm mount` serves on its main thread instead).
public final class BackgroundHostMount: Sendable {
    public let mount: any HostFuseMount
    private let ended = DispatchSemaphore(value: 0)

    /// Starts serving `mount` on a thread named `name`; `whenEnded` runs on that thread once the
    /// mount has gone away (unmounted, stopped, or failed with the error it gives).
    public init(_ mount: any HostFuseMount, name: String, whenEnded: @escaping @Sendable ((any Error)?) -> Void = { _ in }) {
        self.mount = mount
        let ended = self.ended
        let thread = Thread {
            var failure: (any Error)?
            do { try mount.run() } catch { failure = error }
            whenEnded(failure)
            ended.signal()
        }
        thread.name = name
        thread.start()
    }

    /// Stops the mount and waits until it has gone: a clean unmount first, then after `grace`
    /// seconds an abort of the FUSE connection.
    public func stop(grace: Double = 30) {
        mount.stop(force: false)
        if ended.wait(timeout: .now() + grace) == .timedOut {
            mount.stop(force: true)
            ended.wait()
        }
        ended.signal()  // a later stop returns at once
    }
}
