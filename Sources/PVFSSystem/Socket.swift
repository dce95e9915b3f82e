// Socket calls Swift cannot make directly: SO_PEERCRED, accept4, eventfd.

import CPVFSSystem
import Glibc
import SystemPackage

/// The process at the other end of a Unix socket, as the kernel recorded it at connect(2)
/// (SO_PEERCRED): trustworthy, unlike anything the peer sends.
public struct PeerCredentials: Sendable, Hashable {
    public var processID: Int32
    public var userID: UInt32
    public var groupID: UInt32

    public init(processID: Int32, userID: UInt32, groupID: UInt32) {
        self.processID = processID
        self.userID = userID
        self.groupID = groupID
    }
}

extension FileDescriptor {
    /// SO_PEERCRED of a connected Unix socket.
    public func peerCredentials() throws(Errno) -> PeerCredentials {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        try retryingSyscall { cpvfs_peercred(rawValue, &pid, &uid, &gid) }
        return PeerCredentials(processID: pid, userID: uid, groupID: gid)
    }
}

extension FileDescriptor {
    /// accept(2) of a listening socket, the new descriptor close-on-exec.
    public func acceptConnection() throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingSyscall { cpvfs_accept_cloexec(rawValue) })
    }

    /// A close-on-exec eventfd(2), for waking a thread blocked in poll(2).
    public static func makeEventFD(initial: UInt32 = 0) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingSyscall { cpvfs_eventfd_cloexec(initial) })
    }
}
