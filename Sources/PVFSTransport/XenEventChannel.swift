import CXen
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How a ring worker is told about and tells the frontend about ring activity. The real one
/// is an interdomain event channel; tests use an eventfd.
public protocol XenRingSignal: AnyObject, Sendable {
    /// Becomes readable when the peer has notified us.
    var fileDescriptor: Int32 { get }
    /// Consumes pending notifications and re-enables delivery (call before looking at the ring).
    func acknowledge() throws
    /// Notifies the peer.
    func notify() throws
    /// Releases the channel. The descriptor is invalid afterwards.
    func close()
}

/// The upper bound Xen's FIFO event channel ABI places on port numbers.
public let xenMaxEventChannelPort: UInt32 = 1 << 17

/// One interdomain event channel bound through its own libxenevtchn handle
/// (/dev/xen/evtchn), so that one thread can poll its descriptor alone.
public final class XenEventChannel: XenRingSignal, @unchecked Sendable {
    private let handle: OpaquePointer
    public let remoteDomain: UInt32
    public let remotePort: UInt32
    public let localPort: UInt32
    public let fileDescriptor: Int32
    private let open = Mutex(true)

    /// Binds the frontend's unbound port `remotePort` of `remoteDomain`.
    public init(remoteDomain: UInt32, remotePort: UInt32) throws {
        errno = 0
        guard let handle = xenevtchn_open(nil, 0) else {
            throw XenError.system("xenevtchn_open", "(is xen-evtchn loaded?)", errno: errno == 0 ? ENODEV : errno)
        }
        let local = xenevtchn_bind_interdomain(handle, remoteDomain, remotePort)
        guard local >= 0 else {
            let error = XenError.system("xenevtchn_bind_interdomain", "domain \(remoteDomain) port \(remotePort)")
            xenevtchn_close(handle)
            throw error
        }
        let fd = xenevtchn_fd(handle)
        guard fd >= 0, cxen_set_nonblocking(fd) == 0 else {
            let error = XenError.system("xenevtchn_fd")
            _ = xenevtchn_unbind(handle, evtchn_port_t(local))
            xenevtchn_close(handle)
            throw error
        }
        self.handle = handle
        self.remoteDomain = remoteDomain
        self.remotePort = remotePort
        self.localPort = UInt32(local)
        self.fileDescriptor = fd
    }

    public func acknowledge() throws {
        while true {
            let port = xenevtchn_pending(handle)
            if port < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                if errno == EINTR { continue }
                throw XenError.system("xenevtchn_pending")
            }
            // The kernel masks a port when it reports it; unmask so the next event arrives.
            guard xenevtchn_unmask(handle, evtchn_port_t(port)) >= 0 else {
                throw XenError.system("xenevtchn_unmask", "port \(port)")
            }
        }
    }

    public func notify() throws {
        guard xenevtchn_notify(handle, evtchn_port_t(localPort)) >= 0 else {
            throw XenError.system("xenevtchn_notify", "port \(localPort)")
        }
    }

    public func close() {
        let wasOpen = open.withLock { state in
            defer { state = false }
            return state
        }
        guard wasOpen else { return }
        _ = xenevtchn_unbind(handle, evtchn_port_t(localPort))
        xenevtchn_close(handle)
    }

    deinit {
        close()
    }
}

/// A non-blocking eventfd used to wake a polling thread.
final class XenWakeup: @unchecked Sendable {
    let fileDescriptor: Int32

    init() throws {
        let fd = cxen_eventfd()
        guard fd >= 0 else { throw XenError.system("eventfd") }
        fileDescriptor = fd
    }

    deinit {
        Glibc.close(fileDescriptor)
    }

    func signal() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(fileDescriptor, $0.baseAddress, 8) }
    }

    func drain() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { Glibc.read(fileDescriptor, $0.baseAddress, 8) }
    }
}
