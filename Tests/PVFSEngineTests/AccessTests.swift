import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

@Suite("Access rules and confinement")
struct AccessTests {
    func view(_ f: EngineFixture, _ name: String, _ policy: SessionPolicy) throws -> VMView {
        VMView(volume: try Volume.open(store: f.store, vmName: name), policy: policy, sessionID: 7)
    }

    @Test func readOnlySessionRefusesChanges() throws {
        let f = try EngineFixture()
        _ = try f.provision("ro")
        let v = try view(f, "ro", SessionPolicy(side: .guest, readOnly: true))
        #expect(try v.readText("etc/hostname") == "template-host\n")
        #expect(throws: Errno.readOnlyFileSystem) { try v.writeFile("etc/hostname", "x") }
        #expect(throws: Errno.readOnlyFileSystem) { _ = try v.makeDirectory(rootInode, Array("d".utf8), mode: 0o755, as: root) }
        #expect(throws: Errno.readOnlyFileSystem) { try v.unlink(try v.resolve("etc").inode, Array("hostname".utf8), as: root) }
        #expect(throws: Errno.readOnlyFileSystem) { try v.setXattr(rootInode, Array("user.a".utf8), [1], as: root) }
    }

    @Test func rootSquashRemovesPrivilege() throws {
        let f = try EngineFixture()
        _ = try f.provision("sq")
        let v = try view(f, "sq", SessionPolicy(side: .guest, idMapping: .rootSquash(uid: 65534, gid: 65534)))
        let admin = VMView(volume: v.volume, policy: SessionPolicy(side: .guest), sessionID: 8)
        // Squashed root cannot write root-owned 0644 files, and what it creates belongs to nobody.
        #expect(throws: Errno.permissionDenied) { try v.writeFile("etc/hostname", "x") }
        #expect(throws: Errno.permissionDenied) { _ = try v.createFile("etc", "new", "x") }
        _ = try admin.makeDirectory(rootInode, Array("tmp".utf8), mode: 0o1777, as: root)
        let created = try v.createFile("tmp", "mine", "x")
        #expect(created.uid == 65534 && created.gid == 65534)
        #expect(throws: Errno.notPermitted) {
            _ = try v.setAttributes(created.inode, AttributeChanges(uid: 0), as: root)
        }
    }

    @Test func shiftMapsHostSideIdsOnly() throws {
        let f = try EngineFixture()
        _ = try f.provision("sh")
        let host = try view(f, "sh", SessionPolicy(side: .host, idMapping: .shift(base: 100_000, count: 65536), permissionChecks: .hostKernel))
        #expect(try host.resolve("etc/hostname").uid == 100_000)
        #expect(try host.resolve("empty").uid == 101_000)
        let made = try host.createFile("", "by-host-user", "x", as: Credentials(uid: 101_000, gid: 101_000))
        #expect(made.uid == 101_000)
        try host.volume.close()
        let guest = try view(f, "sh", SessionPolicy(side: .guest, idMapping: .shift(base: 100_000, count: 65536)))
        #expect(try guest.resolve("by-host-user").uid == 1000)
        #expect(try guest.resolve("etc/hostname").uid == 0)
    }

    @Test func permissionsAreEnforcedForGuests() throws {
        let f = try EngineFixture()
        _ = try f.provision("p")
        let v = try f.view("p")
        let empty = try v.resolve("empty")  // 0600 owned by uid 1000
        #expect(throws: Errno.permissionDenied) { _ = try v.open(empty.inode, flags: O_RDONLY, as: Credentials(uid: 2000, gid: 2000)) }
        let h = try v.open(empty.inode, flags: O_RDWR, as: user)
        v.release(h)
        #expect(throws: Errno.notPermitted) { _ = try v.setAttributes(empty.inode, AttributeChanges(mode: 0o777), as: Credentials(uid: 2000, gid: 2000)) }
        #expect(throws: Errno.notPermitted) { _ = try v.setAttributes(empty.inode, AttributeChanges(uid: 2000), as: user) }
        let chmodded = try v.setAttributes(empty.inode, AttributeChanges(mode: 0o4755), as: user)
        #expect(chmodded.permissions == 0o4755)
        // A write by a non-root user drops setuid.
        let w = try v.open(empty.inode, flags: O_WRONLY, as: user)
        _ = try v.write(w, offset: 0, bytes: [1], as: user)
        v.release(w)
        #expect(try v.getAttributes(empty.inode).permissions == 0o755)
    }

    @Test func hostileNamesAndEscapesFail() throws {
        let f = try EngineFixture()
        _ = try f.provision("h")
        let v = try f.view("h")
        for bad in ["a/b", "../etc", "/etc", "x\u{0}y"] {
            #expect(throws: Errno.self) { _ = try v.makeDirectory(rootInode, Array(bad.utf8), mode: 0o755, as: root) }
        }
        #expect(throws: Errno.fileNameTooLong) { _ = try v.createFile("", String(repeating: "a", count: 256), "") }
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try v.lookup(rootInode, [], as: root) }
        // ".." of the root is the root: nothing lies above a view.
        #expect(try v.lookup(rootInode, Array("..".utf8), as: root).inode == rootInode)
        // Symlinks are data; the server never follows them, whatever they say.
        let link = try v.makeSymlink(rootInode, Array("escape".utf8), target: Array("/../../../etc/shadow".utf8), as: root)
        #expect(throws: Errno.tooManySymbolicLinkLevels) { _ = try v.open(link.inode, flags: O_RDONLY, as: root) }
        // Device nodes are records: opening one is refused, not passed to the host.
        let dev = try v.makeNode(rootInode, Array("sda".utf8), mode: 0o060600, rdev: DeviceNumber.make(major: 8, minor: 0), as: root)
        #expect(throws: Errno.noSuchAddressOrDevice) { _ = try v.open(dev.inode, flags: O_RDWR, as: root) }
        // Inode numbers that do not exist in this view.
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try v.getAttributes(999_999) }
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try v.open(0, flags: O_RDONLY, as: root) }
        #expect(throws: Errno.notDirectory) { _ = try v.lookup(try v.resolve("etc/hostname").inode, Array("x".utf8), as: root) }
        #expect(throws: Errno.notPermitted) { _ = try v.link(rootInode, into: rootInode, Array("rootlink".utf8), as: root) }
    }

    @Test func bindingsSelectVMs() throws {
        let f = try EngineFixture()
        _ = try f.provision("web1")
        _ = try f.provision("web2")
        try f.store.addBinding(VMBinding(vm: "web1", kind: "xen-domid", value: "5"))
        try f.store.addBinding(VMBinding(vm: "web2", kind: "xen-name", value: "web2-dom", access: "ro"))
        try f.store.addBinding(VMBinding(vm: "web2", kind: "listener", value: "port-web2", squash: "root"))
        try f.store.addBinding(VMBinding(vm: "web1", kind: "tcp", value: "10.0.0.0/8"))
        let rules = try AccessRules.load(from: f.store)
        #expect(try rules.resolve(aname: "web1", identity: .xen(domid: 5, name: nil)).vm == "web1")
        #expect(try rules.resolve(aname: "", identity: .xen(domid: 5, name: nil)).vm == "web1")
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try rules.resolve(aname: "web2", identity: .xen(domid: 5, name: nil)) }
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try rules.resolve(aname: "web1", identity: .xen(domid: 6, name: "web2-dom")) }
        let ro = try rules.resolve(aname: "web2", identity: .xen(domid: 6, name: "web2-dom"))
        #expect(ro.policy.readOnly)
        let squashed = try rules.resolve(aname: "web2", identity: .tcp(address: "127.0.0.1", listener: "port-web2"))
        #expect(squashed.policy.idMapping == .rootSquash(uid: 65534, gid: 65534))
        #expect(try rules.resolve(aname: "web1", identity: .tcp(address: "10.1.2.3", listener: "main")).vm == "web1")
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try rules.resolve(aname: "web1", identity: .tcp(address: "11.1.2.3", listener: "main")) }
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try rules.resolve(aname: "../web1", identity: .xen(domid: 5, name: nil)) }
        let taken = #expect(throws: PVFSError.self) { try f.store.addBinding(VMBinding(vm: "web2", kind: "xen-domid", value: "5")) }
        #expect(taken?.domain == .store)
    }

    @Test func crashRecoveryRemovesOrphans() throws {
        let f = try EngineFixture()
        let vm = try f.provision("c")
        do {
            let v = try f.view("c")
            _ = try v.createFile("", "kept", "kept\n")
            let (_, h) = try v.create(rootInode, Array("orphan".utf8), mode: 0o644, flags: O_RDWR, as: root)
            _ = try v.write(h, offset: 0, bytes: [UInt8](repeating: 7, count: 10_000), as: root)
            try v.unlink(rootInode, Array("orphan".utf8), as: root)
            // Simulate kill -9: the handle is never released, the volume never closed.
            _ = Unmanaged.passRetained(h)
            _ = Unmanaged.passRetained(v.volume)
        }
        // The dead process's lock would be gone; emulate by reopening through a new lock holder
        // after dropping ours (flock is per open file description, so take it via a new Volume).
        let vmDir = try FileDescriptor.open(at: f.store.vmsDirectory, String(vm.id), [.directory])
        defer { vmDir.closeQuietly() }
        try vmDir.unlink(at: "lock")
        let v = try f.view("c")
        #expect(try v.readText("kept") == "kept\n")
        #expect(throws: Errno.noSuchFileOrDirectory) { try v.resolve("orphan") }
        #expect(v.volume.usage.bytes == 4096)
        #expect(v.volume.usage.inodes == 1)
    }
}
