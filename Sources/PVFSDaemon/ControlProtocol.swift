import Foundation

/// The daemon's control socket speaks one JSON object per line each way. It lives in the store
/// (`<store>/pvfsd.sock`, mode 0600) so a command given `--store` finds its daemon.
public enum ControlProtocol {
    public static let socketName = "pvfsd.sock"

    public struct Request: Codable, Sendable {
        /// reload | status | release | metrics | mount | umount | mounts | upgrade (`path`: the
        /// new binary, `force`, `timeout`), and the maintenance
        /// operations of ControlProtocol+Maintenance.swift.
        public var op: String
        public var vm: String?
        public var force: Bool?
        /// mount/umount: the host directory.
        public var path: String?
        public var readOnly: Bool?
        public var allowOther: Bool?
        public var maintenance: MaintenanceRequest?
        /// upgrade: seconds the connections have to come to rest.
        public var timeout: Double?

        public init(op: String, vm: String? = nil, force: Bool? = nil, path: String? = nil, readOnly: Bool? = nil,
                    allowOther: Bool? = nil, timeout: Double? = nil) {
            self.timeout = timeout
            self.op = op
            self.vm = vm
            self.force = force
            self.path = path
            self.readOnly = readOnly
            self.allowOther = allowOther
        }
    }

    public struct Response: Codable, Sendable {
        public var ok: Bool
        public var error: String?
        public var status: DaemonStatus?
        public var text: String?
        public var mounts: [HostMount]?
        public var maintenance: MaintenanceResponse?
        public var upgrade: UpgradeOutcome?
        /// upgrade refused: the sessions that cannot move yet.
        public var blockers: [String]?

        public init(ok: Bool, error: String? = nil, status: DaemonStatus? = nil, text: String? = nil, mounts: [HostMount]? = nil,
                    maintenance: MaintenanceResponse? = nil, upgrade: UpgradeOutcome? = nil, blockers: [String]? = nil) {
            self.blockers = blockers
            self.ok = ok
            self.error = error
            self.status = status
            self.text = text
            self.mounts = mounts
            self.maintenance = maintenance
            self.upgrade = upgrade
        }
    }

    /// A VM mounted on the host by the daemon.
    public struct HostMount: Codable, Sendable, Equatable {
        public var vm: String
        public var path: String
        public var readOnly: Bool

        public init(vm: String, path: String, readOnly: Bool) {
            self.vm = vm
            self.path = path
            self.readOnly = readOnly
        }
    }

    public struct DaemonStatus: Codable, Sendable {
        public var pid: Int32
        public var listeners: [String]
        public var servedVMs: [ServedVM]
        /// Set when this process took over from another (a graceful upgrade): its pvfs version.
        public var tookOverFrom: String?
        /// Connections it adopted then.
        public var adoptedConnections: Int?
    }

    public struct ServedVM: Codable, Sendable {
        public var name: String
        public var sessions: Int
        public var usedBytes: Int64
        public var usedInodes: Int64
    }
}

/// A client of a running daemon's control socket.
public struct DaemonClient: Sendable {
    public let socketPath: String

    public init(storePath: String) {
        socketPath = storePath + "/" + ControlProtocol.socketName
    }

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// Sends one request; nil when no daemon listens (the caller then works on the store alone).
    public func send(_ request: ControlProtocol.Request, timeoutSeconds: Int = 10) throws -> ControlProtocol.Response? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard let address = UnixSocketAddress(path: socketPath) else { return nil }
        let connected = address.withSocketAddress { connect(fd, $0, $1) }
        guard connected == 0 else { return nil }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var line = try JSONEncoder().encode(request)
        line.append(UInt8(ascii: "\n"))
        let sent = line.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == line.count else { throw ControlError("cannot send to the daemon at \(socketPath)") }
        var reply = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !reply.contains(UInt8(ascii: "\n")) {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { throw ControlError("the daemon at \(socketPath) did not answer") }
            reply.append(contentsOf: buffer[0..<n])
        }
        let body = reply.prefix { $0 != UInt8(ascii: "\n") }
        return try JSONDecoder().decode(ControlProtocol.Response.self, from: body)
    }
}

public struct ControlError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
