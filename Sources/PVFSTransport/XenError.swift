#if canImport(Glibc)
import Glibc
#endif

/// A failed call into one of the Xen libraries (libxenstore, libxengnttab, libxenevtchn)
/// or a value from another domain that does not pass validation.
public struct XenError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A library call failed with an errno.
        case system
        /// A value written by the other end (xenstore node, shared page) is unacceptable.
        case invalidValue
        /// The peer violated the ring protocol.
        case protocolViolation
        /// The device or the node disappeared underneath us.
        case gone
    }

    public var kind: Kind
    /// The library call ("xs_read", "xengnttab_map_grant_ref", ...) or the value's name.
    public var call: String
    /// errno for `.system`, 0 otherwise.
    public var errno: Int32
    public var detail: String

    public init(kind: Kind, call: String, errno: Int32 = 0, detail: String = "") {
        self.kind = kind
        self.call = call
        self.errno = errno
        self.detail = detail
    }

    /// A failed library call; reads the calling thread's errno.
    static func system(_ call: String, _ detail: String = "", errno code: Int32 = Glibc.errno) -> XenError {
        XenError(kind: .system, call: call, errno: code, detail: detail)
    }

    static func invalid(_ what: String, _ detail: String) -> XenError {
        XenError(kind: .invalidValue, call: what, detail: detail)
    }

    public var description: String {
        switch kind {
        case .system:
            let reason = String(cString: strerror(errno))
            return detail.isEmpty ? "\(call): \(reason) (errno \(errno))"
                                  : "\(call) \(detail): \(reason) (errno \(errno))"
        case .invalidValue, .protocolViolation:
            return detail.isEmpty ? call : "\(call): \(detail)"
        case .gone:
            return detail.isEmpty ? "\(call): gone" : "\(call): \(detail)"
        }
    }
}
