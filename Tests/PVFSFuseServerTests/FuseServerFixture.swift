import Foundation
import Glibc
import Logging
import PVFSFuseCodec
import PVFSSystem
import PVFSTestSupport
import Synchronization
import SystemPackage
@testable import PVFSEngine
@testable import PVFSFuseServer
@testable import PVFSStore

/// A store in a fresh temporary directory holding `TemplateFixture.fuseServer` (written through
/// the store's API) and VMs provisioned from it:
///
///     /                      ino 1
///     /etc                   ino 2
///     /etc/hostname          ino 3   "template-host\n", xattr user.origin=template
///     /bin                   ino 4
///     /bin/sh -> busybox     ino 5
///     /home                  ino 6
///     /home/alice            ino 7   0700 uid 1000
///     /big                   ino 8   300000 bytes of a pattern
final class FuseServerFixture {
    private let fixture: FixtureStore
    var directory: String { fixture.directory }
    var store: Store { fixture.store }
    static let bigSize = TemplateFixture.bigSize

    init() throws {
        fixture = try FixtureStore(prefix: "pvfs-fuse-server-test", template: TemplateFixture.fuseServer)
    }

    static func bigContent() -> [UInt8] { TemplateFixture.bigContent() }

    func provision(_ name: String, quotaBytes: Int64? = nil) throws -> Volume {
        _ = try store.provisionVM(name: name, template: "tiny", quotaBytes: quotaBytes, quotaInodes: nil)
        return try Volume.open(store: store, vmName: name)
    }
}

let testLogger: Logger = {
    var l = Logger(label: "pvfs.fuse.test", factory: { _ in SwiftLogNoOpLogHandler() })
    l.logLevel = .critical
    return l
}()

/// One reply as a client sees it.
struct FuseTestReply {
    var header: FuseOutHeader
    var payload: [UInt8]

    var error: Int32 { header.error }
    var errno: Errno? { header.error == 0 ? nil : Errno(rawValue: -header.error) }

    func decode<T>(_ body: (inout FuseReader) throws(FuseDecodeError) -> T) -> T? {
        payload.withUnsafeBytes { raw in
            var r = FuseReader(raw)
            return try? body(&r)
        }
    }

    var entry: FuseEntryOut? { decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseEntryOut.decode(&r) } }
    var attr: FuseAttrOut? { decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseAttrOut.decode(&r) } }
    var open: FuseOpenOut? { decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseOpenOut.decode(&r) } }
    var u32: UInt32? { decode { (r: inout FuseReader) throws(FuseDecodeError) in try r.u32() } }
    var u64: UInt64? { decode { (r: inout FuseReader) throws(FuseDecodeError) in try r.u64() } }
}

/// A reply sink that records what the server sends, like a transport would deliver it, and
/// lets a test wait for replies that come later (lock waits).
final class RecordingSink: FuseReplySink, @unchecked Sendable {
    let capacity: Int
    private let condition = NSCondition()
    private var replies: [[UInt8]] = []
    private var noReplies = 0

    init(capacity: Int = Int.max) {
        self.capacity = capacity
    }

    func send(_ reply: UnsafeRawBufferPointer) {
        condition.lock()
        replies.append(Array(reply))
        condition.broadcast()
        condition.unlock()
    }

    func sendRead(unique: UInt64, descriptor: Int32, offset: Int64, count: Int) -> Int {
        var data = [UInt8](repeating: 0, count: count)
        let n = data.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, count, off_t(offset)) }
        guard n >= 0 else { return -Int(Glibc.errno) }
        var w = FuseReplyWriter(unique: unique)
        w.writer.data(data.prefix(n))
        w.finish().withUnsafeBytes { send($0) }
        return n
    }

    func noReply() {
        condition.lock()
        noReplies += 1
        condition.broadcast()
        condition.unlock()
    }

    var noReplyCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return noReplies
    }

    /// The next reply, waiting up to `timeout` seconds for it.
    func take(timeout: Double = 5) -> FuseTestReply? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while replies.isEmpty {
            if !condition.wait(until: deadline) { return nil }
        }
        let bytes = replies.removeFirst()
        return bytes.withUnsafeBytes { raw -> FuseTestReply? in
            guard let header = try? FuseOutHeader.decode(raw), Int(header.length) == bytes.count else { return nil }
            return FuseTestReply(header: header, payload: Array(bytes[FuseProtocol.outHeaderSize...]))
        }
    }

    var pending: Int {
        condition.lock()
        defer { condition.unlock() }
        return replies.count
    }
}

/// Feeds encoded requests to a FuseServer and decodes its replies, as a FUSE client kernel
/// would (the bytes are those /dev/fuse or a virtqueue carries).
final class FuseTestClient: @unchecked Sendable {
    let server: FuseServer
    private let nextUnique = Atomic<UInt64>(1)
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    var pid: UInt32 = 4242
    var options = FuseDecodeOptions()

    init(server: FuseServer) {
        self.server = server
    }

    func uniqueID() -> UInt64 { nextUnique.wrappingAdd(1, ordering: .relaxed).newValue }

    /// Sends one request; returns its sink (for replies that come later) and unique.
    @discardableResult
    func post(_ request: FuseRequest, node: UInt64 = 1, data: [UInt8] = [], sink: RecordingSink = RecordingSink(),
              unique: UInt64? = nil) -> (RecordingSink, UInt64) {
        let unique = unique ?? uniqueID()
        let bytes = request.encode(unique: unique, nodeID: node, uid: uid, gid: gid, pid: pid, data: data, options: options)
        bytes.withUnsafeBytes { server.handle($0, reply: sink) }
        return (sink, unique)
    }

    /// Sends raw bytes as a request.
    func postRaw(_ bytes: [UInt8], sink: RecordingSink = RecordingSink()) -> RecordingSink {
        bytes.withUnsafeBytes { server.handle($0, reply: sink) }
        return sink
    }

    func call(_ request: FuseRequest, node: UInt64 = 1, data: [UInt8] = [], capacity: Int = Int.max) -> FuseTestReply {
        let (sink, unique) = post(request, node: node, data: data, sink: RecordingSink(capacity: capacity))
        guard let reply = sink.take() else { fatalError("no reply to \(request.opcode)") }
        precondition(reply.header.unique == unique, "reply for another request")
        return reply
    }

    @discardableResult
    func initialise(flags: FuseInitFlags = FuseTestClient.linux61Flags, minor: UInt32 = 38) -> FuseTestReply {
        let reply = call(.initialise(FuseInitIn(major: 7, minor: minor, maxReadahead: 131072, flags: flags)), node: 0)
        if let out = reply.decode({ (r: inout FuseReader) throws(FuseDecodeError) in try FuseInitOut.decode(&r) }) {
            options = FuseDecodeOptions(extendedSetxattr: out.flags.contains(.setxattrExt))
        }
        return reply
    }

    /// What Linux 6.1's virtiofs client offered at INIT: 0x0000000b7bfffffb.
    static let linux61Flags = FuseInitFlags(rawValue: 0x0000_000b_7bff_fffb)

    // Conveniences that fail the calling test by returning nil.

    func lookup(_ parent: UInt64, _ name: String) -> FuseEntryOut? {
        let reply = call(.lookup(name: Array(name.utf8)), node: parent)
        return reply.error == 0 ? reply.entry : nil
    }

    func openFile(_ node: UInt64, flags: Int32 = O_RDONLY) -> UInt64? {
        let reply = call(.open(flags: UInt32(bitPattern: flags), openFlags: 0), node: node)
        return reply.open?.handle
    }

    func read(_ node: UInt64, handle: UInt64, offset: UInt64 = 0, size: UInt32 = 4096) -> FuseTestReply {
        call(.read(FuseReadIn(handle: handle, offset: offset, size: size)), node: node)
    }

    func write(_ node: UInt64, handle: UInt64, offset: UInt64 = 0, _ data: [UInt8]) -> FuseTestReply {
        call(.write(FuseWriteIn(handle: handle, offset: offset, size: 0), dataOffset: 0), node: node, data: data)
    }

    func release(_ node: UInt64, handle: UInt64, directory: Bool = false) -> FuseTestReply {
        let input = FuseReleaseIn(handle: handle)
        return call(directory ? .releasedir(input) : .release(input), node: node)
    }

    func create(_ parent: UInt64, _ name: String, mode: UInt32 = 0o100644, flags: Int32 = O_RDWR | O_CREAT) -> (FuseEntryOut, FuseOpenOut)? {
        let reply = call(.create(FuseCreateIn(flags: UInt32(bitPattern: flags), mode: mode, umask: 0o022), name: Array(name.utf8)), node: parent)
        guard reply.error == 0 else { return nil }
        return reply.decode { (r: inout FuseReader) throws(FuseDecodeError) in (try FuseEntryOut.decode(&r), try FuseOpenOut.decode(&r)) }
    }
}

/// A fixture VM served by one FuseServer session, initialised as Linux 6.1's virtiofs would.
final class ServedFuseVM {
    let fixture: FuseServerFixture
    let volume: Volume
    let server: FuseServer
    let client: FuseTestClient
    private let nextSession = Atomic<UInt64>(10)

    init(policy: SessionPolicy = SessionPolicy(side: .guest, permissionChecks: .hostKernel),
         configuration: FuseServerConfiguration = .guest(), quotaBytes: Int64? = nil, initialise: Bool = true) throws {
        fixture = try FuseServerFixture()
        volume = try fixture.provision("vm1", quotaBytes: quotaBytes)
        server = FuseServer(view: VMView(volume: volume, policy: policy, sessionID: 1), configuration: configuration, logger: testLogger)
        client = FuseTestClient(server: server)
        if initialise { client.initialise() }
    }

    /// Another session of the same VM (a second guest or a host mount).
    func session(policy: SessionPolicy = SessionPolicy(side: .guest, permissionChecks: .hostKernel),
                 configuration: FuseServerConfiguration = .guest()) -> FuseTestClient {
        let id = nextSession.wrappingAdd(1, ordering: .relaxed).newValue
        let server = FuseServer(view: VMView(volume: volume, policy: policy, sessionID: id), configuration: configuration, logger: testLogger)
        let client = FuseTestClient(server: server)
        client.initialise()
        return client
    }

    deinit {
        server.transportClosed()
        try? volume.close()
    }
}
