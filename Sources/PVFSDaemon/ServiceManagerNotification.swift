import Glibc

/// Tells systemd (Type=notify units) that the daemon is ready or stopping, through the datagram
/// socket named by $NOTIFY_SOCKET. Written out here rather than linking libsystemd for one
/// sendto(2); without the variable (not under systemd) it does nothing.
public enum ServiceManagerNotification {
    public static func send(_ state: String) {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        guard let address = UnixSocketAddress(path: path, abstractAt: true) else { return }
        let message = Array(state.utf8)
        _ = address.withSocketAddress { socketAddress, length in
            message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), socketAddress, length) }
        }
    }
}
