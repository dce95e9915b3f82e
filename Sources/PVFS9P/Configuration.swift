import PVFS9PCodec
import PVFSEngine
import PVFSSystem

/// One Tattach, as the resolver sees it.
public struct NinePAttachRequest: Sendable {
    /// The VM the client names (mount -o aname=...). Bytes as sent; `aname` is its UTF-8 reading.
    public var anameBytes: [UInt8]
    public var unameBytes: [UInt8]
    /// The numeric user (n_uname), or the uname when that is a decimal number; nil when the
    /// client gave only a user name (it is then looked up in the VM's /etc/passwd).
    public var uid: UInt32?
    public var peer: NinePPeer

    public init(anameBytes: [UInt8], unameBytes: [UInt8], uid: UInt32?, peer: NinePPeer) {
        self.anameBytes = anameBytes
        self.unameBytes = unameBytes
        self.uid = uid
        self.peer = peer
    }

    public var aname: String { String(decoding: anameBytes, as: UTF8.self) }
    public var uname: String { String(decoding: unameBytes, as: UTF8.self) }
}

/// Chooses the VM view a Tattach reaches, or throws (an `Errno`, or any error that converts to
/// one) to refuse it. Called on a worker thread, once per Tattach; it may block (opening a volume).
public typealias NinePAttachResolver = @Sendable (NinePAttachRequest) throws -> VMView

/// How the server learns a guest user's groups. 9P2000.L sends only a uid (and a gid on
/// creation); the engine checks permissions with the full group list.
public enum NinePAccountPolicy: Sendable, Equatable {
    /// Read the VM's own /etc/passwd and /etc/group (as the guest's kernel would), refreshed
    /// at most every `refreshSeconds`. Users missing there act with gid 65534 and no groups.
    case guestDatabase(refreshSeconds: Double)
    /// Act with the attach uid and `gid` (or the gid a creating request carries), no groups.
    case uidOnly(gid: UInt32)
}

/// Limits and policies of one connection. The defaults suit a Linux guest on a shared host.
public struct NinePConfiguration: Sendable {
    /// The largest msize the server agrees to; a client asking for more gets this.
    public var maximumMessageSize: Int = 1 << 20
    /// Requests received and not yet answered (Tflush apart). The connection stops taking
    /// messages beyond it (`receive` blocks), which pushes back on the transport.
    public var maximumOutstandingRequests: Int = 64
    /// Tflush requests waiting for the request they flush, counted apart from the others so
    /// that a client can always flush what holds its other slots; past it `receive` blocks too.
    public var maximumOutstandingFlushes: Int = 64
    /// Bytes held for outstanding requests (the request plus the largest reply it can have).
    public var maximumOutstandingBytes: Int = 32 << 20
    /// Worker threads one connection may occupy at once; the rest of its requests wait in its
    /// own queue, so that a VM's connections take turns on its share of the pool (the pool
    /// itself takes turns between VMs).
    public var maximumParallelRequests: Int = 4
    /// Fids one connection may hold (Linux keeps one per cached dentry). A fid costs about
    /// 200 bytes plus the name it was reached by.
    public var maximumFids: Int = 1 << 19
    /// Sessions (attaches whose fids are not all clunked) one connection may hold at once; an
    /// attach past it is refused with EUSERS. Linux attaches once per mount, and once per
    /// user with `access=user`.
    public var maximumSessions: Int = 256
    /// Tlock requests that wait for a conflicting lock at once; past it, a waiting lock is
    /// answered BLOCKED and the client polls.
    public var maximumBlockedLocks: Int = 16
    /// How long a blocking Tlock (F_SETLKW) waits on the server before it is answered BLOCKED.
    /// Linux waits for a Tlock reply uninterruptibly (only SIGKILL ends the wait) and retries a
    /// BLOCKED lock itself, sleeping interruptibly for its `locktimeout` (30 s unless mounted with
    /// e.g. `locktimeout=1`). A short wait hands a lock over at once when it is freed soon, while
    /// the guest process stays interruptible. `.infinity`: wait until granted or flushed.
    public var lockWaitSeconds: Double = 1
    /// Bytes of xattr values held in xattr fids.
    public var maximumXattrBytes: Int = 8 << 20
    public var accounts: NinePAccountPolicy = .guestDatabase(refreshSeconds: 2)
    /// Lets `receive(_:runInline:reply:)` run a request on the transport's own thread when the
    /// connection has nothing else running and the transport has nothing else to hand over:
    /// a client waiting for each reply before its next request (a guest process doing one
    /// system call after another) then costs no thread switch on the way in. Off: every
    /// request goes through the worker pool.
    public var runsIdleRequestsInline = true
    /// Where limits reached before the connection is bound to a VM are counted (afterwards,
    /// in the VM's counters).
    public var unboundLimitCounters: LimitCounters?
    /// Where each request's latency is recorded (per VM and per operation); nil: nowhere.
    public var requestTimers: NinePRequestTimers?

    public init() {}
}
