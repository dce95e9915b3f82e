import Foundation
import PVFSSystem
import SystemPackage

/// An open host descriptor, closed when the last reference goes. Readers hold a reference for the
/// length of a read, so a copy-up can swap an inode's file without closing it under them.
final class HostFile: Sendable {
    let descriptor: FileDescriptor
    let isPrivate: Bool

    init(descriptor: FileDescriptor, isPrivate: Bool) {
        self.descriptor = descriptor
        self.isPrivate = isPrivate
    }

    deinit { descriptor.closeQuietly() }
}

/// Shared state of an inode that has open handles: its current data file and the facts writes
/// need (size for quota charging, a pending ctime). All handles of an inode share one, so every
/// reader sees a copy-up or a write at once.
final class InodeData: @unchecked Sendable {
    let inode: InodeNumber
    /// Guards `file`, `size` and `pendingChangeTime`; held across a write so that quota charges
    /// and size growth of one inode happen in order.
    let lock = NSLock()
    /// Serialises copy-up of this inode.
    let copyUpLock = NSLock()
    /// nil for a template file without content (empty).
    var file: HostFile?
    var size: Int64
    /// Set by writes; folded into the inode's ctime/mtime when metadata is next committed.
    var pendingChangeTime: Timespec?
    /// Bumped by every change of content (under `lock`), so a reader can tell whether the bytes
    /// it examined are still the current ones.
    var generation: UInt64 = 0
    /// Open handles; guarded by the volume's metadata lock.
    var openCount = 0
    /// Open handles that may write; guarded by the volume's metadata lock. Dedup leaves an
    /// inode alone while any exist.
    var writers = 0

    init(inode: InodeNumber, file: HostFile?, size: Int64) {
        self.inode = inode
        self.file = file
        self.size = size
    }

    var currentFile: HostFile? {
        lock.lock()
        defer { lock.unlock() }
        return file
    }
}

/// An open file or directory of a view: what FUSE keeps as `fh` and 9P as an opened fid.
public final class OpenFile: @unchecked Sendable {
    public let inode: InodeNumber
    /// The open(2) flags the client asked for.
    public let flags: Int32
    let data: InodeData?
    let readable: Bool
    let writable: Bool
    let append: Bool
    /// Released once; further use fails with EBADF.
    var released = false

    init(inode: InodeNumber, flags: Int32, data: InodeData?) {
        self.inode = inode
        self.flags = flags
        self.data = data
        let access = flags & O_ACCMODE
        readable = access == O_RDONLY || access == O_RDWR
        writable = access == O_WRONLY || access == O_RDWR
        append = flags & O_APPEND != 0
    }

    public var isWritable: Bool { writable }
}
