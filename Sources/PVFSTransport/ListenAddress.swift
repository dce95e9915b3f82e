/// Where a socket listener listens: `tcp:HOST:PORT` or `unix:/path`.
///
/// HOST is an IPv4 address, a bracketed IPv6 address (`tcp:[::1]:5640`), a name resolved at
/// bind time, or `*` (every address). PORT 0 asks the kernel for a free port (see
/// `SocketServer.boundAddresses`).
public enum ListenAddress: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    public init?(_ text: String) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty, !path.utf8.contains(0) else { return nil }
            self = .unix(path: path)
            return
        }
        guard text.hasPrefix("tcp:") else { return nil }
        let rest = text.dropFirst(4)
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            guard after.hasPrefix(":") else { return nil }
            portText = after.dropFirst()
        } else {
            guard let colon = rest.lastIndex(of: ":") else { return nil }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
            guard !host.contains(":") else { return nil }
        }
        guard !host.isEmpty, !portText.isEmpty, portText.allSatisfy({ $0 >= "0" && $0 <= "9" }),
              let port = UInt16(portText) else { return nil }
        self = .tcp(host: String(host), port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }
}
