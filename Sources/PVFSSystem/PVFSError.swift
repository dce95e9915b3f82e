import SystemPackage

/// A failure with the message a user reads and the errno a client (a guest, an exit code) gets.
/// The one error type of pvfs' layers; `domain` tells what failed.
public struct PVFSError: Error, Sendable, Equatable, CustomStringConvertible, ErrnoConvertible {
    /// What failed. The commands map store, mount and transport failures to exit codes by errno,
    /// and a source-tree failure (a problem with the tree being ingested, not with the store) to
    /// 1 whatever its errno.
    public enum Domain: Sendable, Hashable {
        /// The store: its catalog, blobs, VMs' private areas, locks.
        case store
        /// The tree being ingested: unreadable, vanished or changed entries.
        case sourceTree
        /// Mounting or serving a FUSE mount.
        case mount
        /// Setting up a listener or a connection.
        case transport
    }

    public var domain: Domain
    public var message: String
    public var errno: Errno

    public init(_ domain: Domain, _ message: String, errno: Errno = .ioError) {
        self.domain = domain
        self.message = message
        self.errno = errno
    }

    public var description: String { message }
}
