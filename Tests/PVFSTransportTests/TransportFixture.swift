import Foundation
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

/// A store in a temporary directory holding `TemplateFixture.transport` (written through the
/// store's API) and one VM, "vm1":
///
///     /etc/hostname   ino 3  "template-host\n"
///     /big            ino 4  2 MiB of a pattern
final class TransportFixture: @unchecked Sendable {
    private let fixture: FixtureStore
    var directory: String { fixture.directory }
    var store: Store { fixture.store }
    let volume: Volume
    static let bigSize = TemplateFixture.transportBigSize

    init() throws {
        fixture = try FixtureStore(prefix: "pvfs-transport-test", template: TemplateFixture.transport)
        _ = try fixture.store.provisionVM(name: "vm1", template: FixtureStore.templateName)
        volume = try Volume.open(store: fixture.store, vmName: "vm1")
    }

    static func bigContent() -> [UInt8] { TemplateFixture.transportBigContent() }

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
