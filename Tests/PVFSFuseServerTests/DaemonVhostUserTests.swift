import Foundation
import Glibc
import PVFSDaemon
import PVFSFuseCodec
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSFuseServer
@testable import PVFSStore
@testable import PVFSVhostUser

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// A LOOKUP answered "no such name": ENOENT, or a negative entry (node 0) the guest may cache.
private func absent(_ reply: FuseTestReply?) -> Bool {
    guard let reply else { return false }
    return reply.errno == .noSuchFileOrDirectory || (reply.error == 0 && reply.entry?.nodeID == 0)
}

/// pvfsd's vhost-user service: one socket per `vhost-user` binding, each serving only its VM,
/// all on one event loop, following the catalog as it changes.
@Suite("pvfsd: vhost-user bindings", .serialized)
struct DaemonVhostUserTests {
    final class Setup {
        let fixture: FuseServerFixture
        let registry: VolumeRegistry
        let service: VhostUserService

        init(vms: [String]) throws {
            fixture = try FuseServerFixture()
            for vm in vms { _ = try fixture.store.provisionVM(name: vm, template: "tiny", quotaBytes: nil, quotaInodes: nil) }
            registry = try VolumeRegistry(store: fixture.store, logger: testLogger)
            service = VhostUserService(registry: registry, logger: testLogger)
            try service.start()
        }

        func socket(_ name: String) -> String { fixture.directory + "/run/" + name + ".vhost" }

        func bind(_ vm: String, _ path: String) throws {
            try fixture.store.addBinding(VMBinding(vm: vm, kind: "vhost-user", value: path))
            try registry.reload()
            service.reconcile()
        }

        func unbind(_ vm: String, _ path: String) throws {
            try fixture.store.removeBinding(vm: vm, kind: "vhost-user", value: path)
            try registry.reload()
            service.reconcile()
        }

        /// A guest set up and past INIT on `path`.
        /// A guest connected to `path` and initialised. `waitingForTheListener` retries the
        /// connection for up to 30 s while the listener turns it away because it still serves
        /// another front-end (one at a time).
        func guest(_ path: String, waitingForTheListener: Bool = false) throws -> SimulatedGuest {
            var guest = try SimulatedGuest(path: path)
            let deadline = Date(timeIntervalSinceNow: waitingForTheListener ? 30 : 0)
            while true {
                do {
                    try guest.start()
                    break
                } catch where Date() < deadline {
                    usleep(50_000)
                    guest = try SimulatedGuest(path: path)
                }
            }
            let reply = try #require(guest.fuse(.initialise(FuseInitIn(major: 7, minor: 38, maxReadahead: 131072,
                                                                        flags: FuseTestClient.linux61Flags)), node: 0, replySize: 80))
            #expect(reply.error == 0)
            return guest
        }

        func waitUntil(_ condition: () -> Bool) -> Bool {
            for _ in 0..<500 {
                if condition() { return true }
                usleep(10_000)
            }
            return condition()
        }

        deinit {
            service.stop()
            registry.closeAll()
        }
    }

    @Test("each bound socket serves exactly its VM; a front-end dying leaves the others served; unbind stops listening")
    func bindingsServeTheirVMs() throws {
        let s = try Setup(vms: ["web1", "web2", "web3"])
        let one = s.socket("web1"), two = s.socket("web2")
        try s.bind("web1", one)
        try s.bind("web2", two)
        #expect(s.service.boundSockets == [one, two])
        var st = stat()
        #expect(lstat(one, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK && st.st_mode & 0o777 == 0o600)

        // A file made by web1's guest is web1's alone.
        let g1 = try s.guest(one)
        let created = try #require(g1.fuse(.create(FuseCreateIn(flags: UInt32(O_RDWR | O_CREAT), mode: 0o100644), name: bytes("mine")), replySize: 200))
        #expect(created.error == 0)
        let g2 = try s.guest(two)
        #expect(absent(g2.fuse(.lookup(name: bytes("mine")))))
        #expect(try #require(g2.fuse(.lookup(name: bytes("etc")))?.entry).nodeID == 2)
        #expect(s.registry.sessionCounts == ["web1": 1, "web2": 1])

        // A second front-end on a served socket is turned away; the first goes on.
        #expect(throws: (any Error).self) { _ = try SimulatedGuest(path: one).start() }
        #expect(g1.fuse(.lookup(name: bytes("mine")))?.entry != nil)

        // web1's QEMU dies: its session ends and web1's volume closes; web2 keeps being served,
        // and a QEMU started again on the same socket is served afresh.
        g1.hangUp()
        #expect(s.waitUntil { s.registry.sessionCounts["web1"] == nil })
        #expect(g2.fuse(.lookup(name: bytes("etc")))?.entry != nil)
        let again = try s.guest(one)
        #expect(again.fuse(.lookup(name: bytes("mine")))?.entry != nil)

        // Bound while serving: listens at once. A socket path another process holds is refused
        // and does not disturb the others.
        let three = s.socket("web3")
        try s.bind("web3", three)
        let g3 = try s.guest(three)
        #expect(absent(g3.fuse(.lookup(name: bytes("mine")))))

        // Unbinding closes the socket and ends its guest's session; the others go on.
        try s.unbind("web1", one)
        #expect(again.backendHungUp())
        #expect(access(one, F_OK) != 0)
        #expect(s.service.boundSockets == [two, three])
        #expect(s.waitUntil { s.registry.sessionCounts["web1"] == nil })
        #expect(g2.fuse(.lookup(name: bytes("etc")))?.entry != nil)
        #expect(g3.fuse(.lookup(name: bytes("etc")))?.entry != nil)
        _ = g2
    }

    @Test("connected front-ends are listed with their VM and requests in service, for the per-tenant metrics")
    func frontEndsAreListedPerVM() throws {
        let s = try Setup(vms: ["web1", "web2"])
        let one = s.socket("web1"), two = s.socket("web2")
        try s.bind("web1", one)
        try s.bind("web2", two)
        #expect(s.service.frontEnds.isEmpty, "no QEMU connected yet")
        let g1 = try s.guest(one)
        let g2 = try s.guest(two)
        #expect(g1.fuse(.lookup(name: bytes("etc")))?.entry != nil)
        let listed = s.service.frontEnds
        #expect(listed.map(\.vm) == ["web1", "web2"])
        // Every request was answered: none is counted as in service.
        #expect(listed.allSatisfy { $0.outstandingRequests == 0 })
        g1.hangUp()
        #expect(s.waitUntil { s.service.frontEnds.map(\.vm) == ["web2"] })
        _ = g2
    }

    @Test("a binding that cannot listen is logged and skipped; a live socket of another process is never taken over")
    func badBindingsDoNotStopTheOthers() throws {
        let s = try Setup(vms: ["web1", "web2"])
        let foreign = s.socket("foreign")
        try FileManager.default.createDirectory(atPath: s.fixture.directory + "/run", withIntermediateDirectories: true)
        let loop = try EpollEventLoop(logger: testLogger)
        defer { loop.shutdown() }
        let volume = try s.fixture.store.provisionVM(name: "other", template: "tiny", quotaBytes: nil, quotaInodes: nil)
        _ = volume
        let otherVolume = try Volume.open(store: s.fixture.store, vmName: "other", logger: testLogger)
        defer { try? otherVolume.close() }
        let other = try VhostUserFsListener(path: foreign, sources: loop, logger: testLogger) {
            FuseServer(view: VMView(volume: otherVolume, policy: SessionPolicy(side: .guest, permissionChecks: .hostKernel), sessionID: 9),
                       configuration: .guest(), logger: testLogger)
        }
        defer { other.close() }
        let regular = s.fixture.directory + "/run/regular-file"
        _ = FileManager.default.createFile(atPath: regular, contents: Data("keep".utf8))
        try s.bind("web1", foreign)
        try s.bind("web1", regular)
        try s.bind("web2", s.socket("web2"))
        #expect(s.service.boundSockets == [s.socket("web2")])
        #expect(try String(contentsOfFile: regular, encoding: .utf8) == "keep")
        // pvfsd's check that the socket is live was a front-end of that listener for a moment;
        // it serves one at a time and turns others away meanwhile (its loop may not even have
        // accepted the check yet), so connect again until it has let the check go.
        let g = try s.guest(foreign, waitingForTheListener: true)  // still the other process's listener
        #expect(g.fuse(.lookup(name: bytes("etc")))?.entry != nil)
        #expect(s.registry.sessionCounts["web1"] == nil)
        let g2 = try s.guest(s.socket("web2"))
        #expect(g2.fuse(.lookup(name: bytes("etc")))?.entry != nil)
    }

    @Test("the catalog keeps a vhost-user socket to one VM and wants an existing VM")
    func catalogRules() throws {
        let s = try Setup(vms: ["web1", "web2"])
        let path = s.socket("shared")
        try s.fixture.store.addBinding(VMBinding(vm: "web1", kind: "vhost-user", value: path))
        #expect(throws: PVFSError.self) { try s.fixture.store.addBinding(VMBinding(vm: "web2", kind: "vhost-user", value: path)) }
        #expect(throws: PVFSError.self) { try s.fixture.store.addBinding(VMBinding(vm: "nope", kind: "vhost-user", value: path + "2")) }
        // Read-only and squash narrow the socket's sessions like any binding.
        let rules = try AccessRules.load(from: s.fixture.store)
        let (vm, policy) = try rules.resolve(aname: "", identity: .vhostUser(socket: path))
        #expect(vm == "web1" && !policy.readOnly)
        #expect(throws: Errno.self) { try rules.resolve(aname: "", identity: .vhostUser(socket: path + "x")) }
    }
}
