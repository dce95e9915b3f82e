import Foundation
import Glibc
import Logging
import PVFS9PCodec
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import SystemPackage
@testable import PVFS9P
@testable import PVFSEngine
@testable import PVFSStore

/// A store in a fresh temporary directory holding `TemplateFixture.accounts` (written through the
/// store's API) and VMs provisioned from it:
///
///     /                      ino 1
///     /etc                   ino 2
///     /etc/hostname          ino 3   "template-host\n", xattr user.origin=template
///     /etc/passwd            ino 4   root, alice (1000), bob (1001)
///     /etc/group             ino 5   project (2000) has alice and bob
///     /bin                   ino 6
///     /bin/sh -> busybox     ino 7
///     /home                  ino 8
///     /home/alice            ino 9   0700 alice:alice
///     /project               ino 10  02770 root:project
///     /project/notes         ino 11  0660 alice:project "notes\n"
///     /big                   ino 12  300000 bytes of a pattern
final class NinePFixture {
    private let fixture: FixtureStore
    var directory: String { fixture.directory }
    var store: Store { fixture.store }
    static let bigSize = TemplateFixture.bigSize
    static let passwd = TemplateFixture.passwd
    static let group = TemplateFixture.group

    init() throws {
        fixture = try FixtureStore(prefix: "pvfs-9p-test", template: TemplateFixture.accounts)
    }

    static func bigContent() -> [UInt8] { TemplateFixture.bigContent() }

    func provision(_ name: String, quotaBytes: Int64? = nil) throws -> Volume {
        _ = try store.provisionVM(name: name, template: "tiny", quotaBytes: quotaBytes, quotaInodes: nil)
        return try Volume.open(store: store, vmName: name)
    }
}

/// Hands out views of volumes by aname; an empty aname means `defaultVM`.
final class TestResolver: @unchecked Sendable {
    private let lock = NSLock()
    private var volumes: [String: Volume] = [:]
    private var nextSession: UInt64 = 100
    var defaultVM: String
    var readOnly = false
    /// The policy of new sessions; nil: the engine checks every caller (`.server`), as for a
    /// squashed guest. `daemonPolicy` gives what pvfsd gives a VM's guest.
    var policy: SessionPolicy?
    private(set) var requests: [NinePAttachRequest] = []

    init(_ volumes: [String: Volume], defaultVM: String) {
        self.volumes = volumes
        self.defaultVM = defaultVM
    }

    func resolve(_ request: NinePAttachRequest) throws -> VMView {
        lock.lock()
        defer { lock.unlock() }
        requests.append(request)
        let name = request.aname.isEmpty ? defaultVM : request.aname
        guard let volume = volumes[name] else { throw Errno.noSuchFileOrDirectory }
        nextSession += 1
        return VMView(volume: volume, policy: policy ?? SessionPolicy(side: .guest, readOnly: readOnly), sessionID: nextSession)
    }

    /// The session policy pvfsd gives a guest of a VM with these settings, reached through a
    /// binding with this squash mode.
    static func daemonPolicy(_ settings: VMAccessSettings = VMAccessSettings(), squash: String = "inherit") -> SessionPolicy {
        AccessRules.policy(settings, binding: VMBinding(vm: "vm1", kind: "any", value: "", squash: squash), side: .guest)
    }

    var resolver: NinePAttachResolver { { try self.resolve($0) } }

    func add(_ name: String, _ volume: Volume) {
        lock.lock()
        volumes[name] = volume
        lock.unlock()
    }
}

let testLogger: Logger = {
    var l = Logger(label: "pvfs.9p.test", factory: { _ in SwiftLogNoOpLogHandler() })
    l.logLevel = .critical
    return l
}()

/// A NinePConnection served over one end of a socketpair by a minimal transport (a reader
/// thread and a locked blocking writer), with a NinePClient on the other end.
final class SocketPairHarness: @unchecked Sendable {
    let connection: NinePConnection
    let client: NinePClient
    let serverFD: Int32
    let clientFD: Int32
    private let writeLock = NSLock()
    private let done = DispatchSemaphore(value: 0)

    init(_ connection: NinePConnection) throws {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw Errno(rawValue: errno) }
        serverFD = fds[0]
        clientFD = fds[1]
        self.connection = connection
        client = NinePClient(fileDescriptor: clientFD)
        let thread = Thread { [self] in serve() }
        thread.name = "test.9p.reader"
        thread.start()
    }

    private func serve() {
        var framer = NinePMessageFramer(maximumMessageSize: connection.maximumMessageSize)
        var buffer = [UInt8](repeating: 0, count: 65536)
        let fd = serverFD
        loop: while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            buffer.withUnsafeBytes { framer.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            while true {
                framer.maximumMessageSize = connection.maximumMessageSize
                let message: [UInt8]?
                do { message = try framer.next() } catch { break loop }
                guard let message else { break }
                connection.receive(message) { [self] reply in self.send(reply) }
            }
        }
        connection.close()
        shutdown(fd, Int32(SHUT_RDWR))
        done.signal()
    }

    private func send(_ bytes: [UInt8]) {
        writeLock.lock()
        defer { writeLock.unlock() }
        bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.send(serverFD, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                off += n
            }
        }
    }

    /// Sends raw bytes from the client side.
    func sendRaw(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in _ = Glibc.send(clientFD, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Closes the client side and waits for the server side to finish.
    func finish() {
        shutdown(clientFD, Int32(SHUT_RDWR))
        done.wait()
        NinePClient.closeSocket(clientFD)
        Glibc.close(serverFD)
    }
}

/// One fixture, one VM, one worker pool, one connection over a socketpair, already versioned
/// and attached as root at fid 0.
final class ServedVM {
    let fixture: NinePFixture
    let volume: Volume
    let resolver: TestResolver
    let pool: NinePWorkerPool
    let harness: SocketPairHarness
    var client: NinePClient { harness.client }
    var connection: NinePConnection { harness.connection }

    init(configuration: NinePConfiguration = NinePConfiguration(), attach: Bool = true, threads: Int = 4) throws {
        fixture = try NinePFixture()
        volume = try fixture.provision("vm1")
        resolver = TestResolver(["vm1": volume], defaultVM: "vm1")
        pool = NinePWorkerPool(threads: threads)
        let connection = NinePConnection(
            peer: NinePPeer(.local(remote: "test", local: "socketpair"), connectionID: 1),
            configuration: configuration, pool: pool, logger: testLogger, resolver: resolver.resolver)
        harness = try SocketPairHarness(connection)
        if attach {
            _ = try harness.client.version(msize: 65536)
            _ = try harness.client.attach(fid: 0, aname: "vm1", uid: 0)
        }
    }

    func finish() {
        harness.finish()
        pool.shutdown()
    }

    /// A second view of the VM, for checking what the server did from the engine's side.
    func view() -> VMView {
        VMView(volume: volume, policy: SessionPolicy(side: .guest), sessionID: 999)
    }
}

/// P9_DOTL_* values for tests.
enum Dotl {
    static let rdonly: UInt32 = 0
    static let wronly: UInt32 = 1
    static let rdwr: UInt32 = 2
    static let create: UInt32 = 0o100
    static let excl: UInt32 = 0o200
    static let trunc: UInt32 = 0o1000
    static let append: UInt32 = 0o2000
    static let directory: UInt32 = 0o200000
}

/// Walks the attached root (fid 0) to etc/hostname as `fid` and opens it for reading and writing.
func openHostname(_ c: NinePClient, _ fid: UInt32) throws {
    _ = try c.walk(fid: 0, newFid: fid, path: "etc/hostname")
    _ = try c.lopen(fid: fid, flags: Dotl.rdwr)
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }
