import Glibc

/// A `sockaddr_un` for a path, for bind, connect and sendto. With `abstractAt`, a path starting
/// with "@" names an abstract socket (as systemd's $NOTIFY_SOCKET may): its first byte becomes NUL.
struct UnixSocketAddress {
    private var address = sockaddr_un()
    private let length: socklen_t

    /// Nil when the path does not fit `sun_path`.
    init?(path: String, abstractAt: Bool = false) {
        var bytes = Array(path.utf8)
        let abstract = abstractAt && bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        // An abstract name is exactly its bytes; a path name ends at its NUL.
        length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
    }

    func withSocketAddress<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}
