/// How a VM view is mounted on the host.
public struct FuseMountOptions: Sendable, Equatable {
    /// Caching of names, attributes and file contents in the host kernel.
    public enum Caching: Sendable, Equatable {
        /// Nothing but this mount changes the VM (the mount holds the VM's lock, as `pvfs-vm mount`
        /// does): every change passes through the kernel, which keeps its caches coherent, so
        /// names, attributes and pages are kept for a long time and across opens.
        case exclusive
        /// Other sessions (a guest over 9P) change the VM through the same engine: the kernel
        /// revalidates names and attributes after `timeout` seconds and drops a file's pages on
        /// each open (close-to-open consistency, as NFS gives).
        case shared(timeout: Double)
    }

    /// The mount refuses every change (the `ro` mount flag plus a read-only session).
    public var readOnly: Bool
    /// Let users other than the mounting one in (`allow_other`); the kernel checks permissions
    /// (`default_permissions`) either way.
    public var allowOther: Bool
    public var caching: Caching
    /// Upper bound of worker threads serving requests (libfuse); threads blocked waiting for a
    /// lock (F_SETLKW) count, so it must stay well above the expected number of waiters.
    public var maximumThreads: UInt32
    /// Idle workers kept instead of exited.
    public var idleThreads: UInt32
    /// One /dev/fuse descriptor per worker (FUSE_DEV_IOC_CLONE), so that workers do not contend
    /// for a single queue.
    public var cloneDescriptor: Bool
    /// Enforce and inherit POSIX ACLs (FUSE_CAP_POSIX_ACL).
    public var posixACLs: Bool
    /// Readahead of the mount, in KiB (0 keeps the kernel's 128 KiB). 512 KiB takes a quarter
    /// of the requests for sequential reads and keeps replies within a 1 MiB pipe, so they are
    /// still spliced.
    public var readaheadKiB: Int
    /// libfuse's request trace on stderr.
    public var debug: Bool
    /// The kernel keeps POSIX and flock locks itself, as for a local filesystem, instead of the
    /// engine's lock table. Only right when no other session of the VM takes locks (the
    /// default for `.exclusive`): guest sessions see the engine's table only. Close then needs
    /// no FLUSH request (FOPEN_NOFLUSH), which was there only to drop the closer's locks.
    public var locksInKernel: Bool

    public init(readOnly: Bool = false, allowOther: Bool = false, caching: Caching = .exclusive,
                maximumThreads: UInt32 = 32, idleThreads: UInt32 = 16, cloneDescriptor: Bool = true,
                posixACLs: Bool = true, readaheadKiB: Int = 512, debug: Bool = false, locksInKernel: Bool? = nil) {
        self.readOnly = readOnly
        self.allowOther = allowOther
        self.caching = caching
        self.maximumThreads = maximumThreads
        self.idleThreads = idleThreads
        self.cloneDescriptor = cloneDescriptor
        self.posixACLs = posixACLs
        self.readaheadKiB = readaheadKiB
        self.debug = debug
        self.locksInKernel = locksInKernel ?? (caching == .exclusive)
    }

    /// Seconds the kernel may trust a name, an attribute or a missing name.
    public var entryTimeout: Double {
        switch caching {
        case .exclusive: Self.exclusiveTimeout
        case .shared(let timeout): timeout
        }
    }

    public var attributeTimeout: Double { entryTimeout }
    public var negativeTimeout: Double { entryTimeout }

    /// Whether pages and directory listings survive across opens.
    public var keepCache: Bool { caching == .exclusive }

    /// A day: long enough that the kernel never asks again in practice, short enough that a
    /// missed invalidation could not last forever.
    public static let exclusiveTimeout: Double = 86_400
}
