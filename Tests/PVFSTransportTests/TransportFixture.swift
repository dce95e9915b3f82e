import Foundation
import GRDB
import Glibc
import Logging
import PVFS9P
import PVFS9PCodec
import PVFSSystem
import PVFSTestSupport
import SystemPackage
@testable import PVFSEngine
@testable import PVFSStore
@testable import PVFSTransport

/// A store in a temporary directory with a small template written into the catalog (as the
/// engine's tests do) and one VM, "vm1":
///
///     /etc/hostname   ino 3  "template-host\n"
///     /big            ino 4  2 MiB of a pattern
final class TransportFixture: @unchecked Sendable {
    let directory: String
    let store: Store
    let volume: Volume
    static let bigSize = 2 << 20

    init() throws {
        var template = Array("/tmp/pvfs-transport-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        directory = String(cString: made)
        store = try Store(path: directory + "/store")
        let hostname = try Self.publish(store, Array("template-host\n".utf8))
        let big = try Self.publish(store, Self.bigContent())
        let t: Int64 = 1_700_000_000_000_000_000
        try store.catalog.write { db in
            try db.execute(sql: "INSERT INTO template (id, name, state, created_ns, entry_count, max_inode) VALUES (1, 'tiny', 'ready', 0, 4, 4)")
            func inode(_ ino: Int, _ mode: Int, _ nlink: Int, _ size: Int, _ blob: Int64?) throws {
                try db.execute(sql: """
                    INSERT INTO template_inode (template_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, rdev, blob_id, symlink_target)
                    VALUES (1, ?, ?, 0, 0, ?, ?, 8, ?, ?, ?, 0, ?, NULL)
                    """, arguments: [ino, mode, nlink, size, t, t, t, blob])
            }
            try inode(1, 0o040755, 3, 4096, nil)
            try inode(2, 0o040755, 2, 4096, nil)
            try inode(3, 0o100644, 1, 14, hostname)
            try inode(4, 0o100644, 1, Self.bigSize, big)
            for (parent, name, ino) in [(1, "etc", 2), (2, "hostname", 3), (1, "big", 4)] {
                try db.execute(sql: "INSERT INTO template_dirent (template_id, parent, name, ino) VALUES (1, ?, ?, ?)",
                               arguments: [parent, Array(name.utf8).databaseBlob, ino])
            }
        }
        _ = try store.provisionVM(name: "vm1", template: "tiny")
        volume = try Volume.open(store: store, vmName: "vm1")
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    static func bigContent() -> [UInt8] {
        (0..<bigSize).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 9) }
    }

    private static func publish(_ store: Store, _ bytes: [UInt8]) throws -> Int64 {
        let hash = SHA256Hasher.hash(bytes)
        let rel = StoreLayout.blobPath(hash)
        _ = try? store.blobsDirectory.makeDirectory(at: String(rel.prefix(2)))
        let fd = try FileDescriptor.open(at: store.blobsDirectory, rel, [.writeOnly, .create, .truncate], mode: 0o444)
        try bytes.withUnsafeBytes { try fd.writeAll($0, at: 0) }
        fd.closeQuietly()
        return try store.catalog.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO blob (hash, size, allocated, created_ns) VALUES (?, ?, ?, 0)",
                           arguments: [hash.bytes.databaseBlob, bytes.count, bytes.count])
            return try Int64.fetchOne(db, sql: "SELECT id FROM blob WHERE hash = ?", arguments: [hash.bytes.databaseBlob])!
        }
    }

    var openHandleCount: Int {
        volume.metaLock.lock()
        defer { volume.metaLock.unlock() }
        return volume.openData.count
    }

    func view() -> VMView { VMView(volume: volume, policy: SessionPolicy(side: .guest), sessionID: 999) }
}

/// Silent, unless PVFS_TEST_LOG names a level (debug, info, ...) to print at on stderr.
let quietLogger: Logger = {
    if let level = ProcessInfo.processInfo.environment["PVFS_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) {
        var l = Logger(label: "pvfs.transport.test", factory: { StreamLogHandler.standardError(label: $0) })
        l.logLevel = level
        return l
    }
    var l = Logger(label: "pvfs.transport.test", factory: { _ in SwiftLogNoOpLogHandler() })
    l.logLevel = .critical
    return l
}()

/// A socket server over the fixture's VM, recording the peers it was asked about.
final class ServedSockets: @unchecked Sendable {
    let fixture: TransportFixture
    let pool = NinePWorkerPool(threads: 4)
    let server: SocketServer
    private let lock = NSLock()
    private var seenPeers: [NinePPeer] = []
    private var sessions: UInt64 = 0

    init(_ addresses: [ListenAddress], configuration: SocketServer.Configuration = .init(),
         nine: NinePConfiguration = NinePConfiguration(), refuse: (@Sendable (NinePPeer) -> Bool)? = nil) throws {
        let fixture = try TransportFixture()
        self.fixture = fixture
        let pool = self.pool
        let box = PeerBox()
        server = SocketServer(listen: addresses, configuration: configuration, logger: quietLogger) { peer in
            box.append(peer)
            if refuse?(peer) == true { throw Errno.permissionDenied }
            return NinePConnection(peer: peer, configuration: nine, pool: pool, logger: quietLogger) { request in
                guard request.aname.isEmpty || request.aname == "vm1" else { throw Errno.noSuchFileOrDirectory }
                return VMView(volume: fixture.volume, policy: SessionPolicy(side: .guest), sessionID: peer.connectionID)
            }
        }
        peerBox = box
    }

    private let peerBox: PeerBox
    var peers: [NinePPeer] { peerBox.all }

    func start() throws { try server.start() }

    var tcpPort: UInt16 {
        for case .tcp(_, let port) in server.boundAddresses { return port }
        return 0
    }

    func finish() {
        server.stop()
        pool.shutdown()
    }
}

final class PeerBox: @unchecked Sendable {
    private let lock = NSLock()
    private var peers: [NinePPeer] = []
    func append(_ p: NinePPeer) { lock.lock(); peers.append(p); lock.unlock() }
    var all: [NinePPeer] { lock.lock(); defer { lock.unlock() }; return peers }
}

/// `receiveBuffer`: SO_RCVBUF, set before connecting. Shrinking it on a connected TCP socket
/// keeps the window scale agreed for the larger buffer: the kernel then drops segments it
/// advertised room for, and every one of them waits for a retransmission timeout (2 MiB took
/// about 50 s over loopback that way, instead of well under a second).
func connectTCP(_ port: UInt16, host: String = "127.0.0.1", receiveBuffer: Int32? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw Errno(rawValue: errno) }
    if var size = receiveBuffer {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    inet_pton(AF_INET, host, &address.sin_addr)
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let e = Errno(rawValue: errno)
        close(fd)
        throw e
    }
    return fd
}

func connectUnix(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw Errno(rawValue: errno) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8)
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else {
        let e = Errno(rawValue: errno)
        close(fd)
        throw e
    }
    return fd
}

/// A client over a fresh socket; closing the socket is the caller's (`closeClient`).
func client(_ fd: Int32) -> NinePClient { NinePClient(fileDescriptor: fd) }

func closeClient(_ fd: Int32) {
    NinePClient.closeSocket(fd)
}

func waitUntil(_ timeout: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while !condition() {
        if Date() > deadline { return false }
        usleep(2000)
    }
    return true
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
