import Foundation
import GRDB
import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

/// What a VM's volume keeps for its clients when one server process closes it and another opens
/// it (an upgrade hands the sessions over) or when the server dies: qid versions, unlinked files
/// still open, lock records.
extension EngineFixture {
    /// Leaves a volume as a killed process would: never closed, its handles never released, its
    /// lock gone with the process (flock is per open file description, so the lock file goes).
    func abandon(_ view: VMView, vmID: Int64, handles: [OpenFile] = []) throws {
        for h in handles { _ = Unmanaged.passRetained(h) }
        _ = Unmanaged.passRetained(view.volume)
        let vmDir = try FileDescriptor.open(at: store.vmsDirectory, String(vmID), [.directory])
        defer { vmDir.closeQuietly() }
        try vmDir.unlink(at: "lock")
    }

    func privateFileExists(vmID: Int64, _ ino: InodeNumber) -> Bool {
        access(store.path + "/" + StoreLayout.privateFilePath(vm: vmID, inode: ino), F_OK) == 0
    }
}

@Suite("qid versions across restarts")
struct QidVersionTests {
    @Test func versionsSurviveACleanCloseAndTheCounterGoesOn() throws {
        let f = try EngineFixture()
        _ = try f.provision("q")
        var v = try f.view("q")
        let a = try v.createFile("", "a", "one\n").inode
        try v.setAttributes(a, AttributeChanges(mode: 0o600), as: root)
        let b = try v.createFile("", "b", "two\n").inode
        // A write's size and times are kept lazily: the close flushes them with the version.
        let h = try v.open(b, flags: O_WRONLY, as: root)
        _ = try v.write(h, offset: 4, bytes: Array("more\n".utf8), as: root)
        v.release(h)
        let copied = try v.resolve("etc/hostname").inode
        try v.setAttributes(copied, AttributeChanges(mode: 0o640), as: root)
        let before = try [a, b, copied, rootInode].map { try v.getAttributes($0).version }
        #expect(before.allSatisfy { $0 > 0 })
        let untouched = try v.resolve("bin").inode
        #expect(try v.getAttributes(untouched).version == 0)
        try v.volume.close()

        v = try f.view("q")
        #expect(try [a, b, copied, rootInode].map { try v.getAttributes($0).version } == before)
        // A template inode the VM never changed has no row: 0, as before.
        #expect(try v.getAttributes(untouched).version == 0)
        let c = try v.createFile("", "c", "three\n").inode
        #expect(try v.getAttributes(c).version > before.max()!)
        try v.setAttributes(a, AttributeChanges(mode: 0o644), as: root)
        let changed = try v.getAttributes(a).version
        #expect(changed > before.max()! && changed != before[0])
        try v.volume.close()
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    @Test func afterACrashNoVersionIsHandedOutAgain() throws {
        let f = try EngineFixture()
        let vm = try f.provision("q")
        var v = try f.view("q")
        let a = try v.createFile("", "a", "one\n").inode
        let grown = try v.createFile("", "grown", "x").inode
        var seen: [UInt64] = []
        for i in 0..<50 {
            try v.setAttributes(a, AttributeChanges(mode: UInt32(0o600 + i % 8)), as: root)
            seen.append(try v.getAttributes(a).version)
        }
        let committedA = try v.getAttributes(a).version
        // Changed only in memory (a lazily kept time): its new version dies with the process.
        try v.setAttributes(a, AttributeChanges(accessTime: .now), as: root)
        seen.append(try v.getAttributes(a).version)
        let grownVersion = try v.getAttributes(grown).version
        seen.append(grownVersion)
        let highest = seen.max()!
        try f.abandon(v, vmID: vm.id)
        // Data the host filesystem got whose size the catalog never heard of.
        let path = f.store.path + "/" + StoreLayout.privateFilePath(vm: vm.id, inode: grown)
        let host = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.append])
        _ = try host.writeAll(Array("yz".utf8))
        try host.close()

        v = try f.view("q")
        // What was committed is what the guest saw for that content.
        #expect(try v.getAttributes(a).version <= highest)
        #expect(try v.getAttributes(a).version >= committedA)
        // Recovery fixed this size: the content changed behind the guest's back, so a new version,
        // above everything handed out before.
        #expect(try v.getAttributes(grown).size == 3)
        #expect(try v.getAttributes(grown).version > highest)
        let fresh = try v.createFile("", "fresh", "f\n").inode
        let freshVersion = try v.getAttributes(fresh).version
        #expect(freshVersion > highest)
        // 9P carries the low 32 bits: those must not come round to the values seen before either.
        #expect(!seen.map { UInt32(truncatingIfNeeded: $0) }.contains(UInt32(truncatingIfNeeded: freshVersion)))

        // A second crash right after: the counter stays above what the recovered process handed out.
        try v.setAttributes(fresh, AttributeChanges(mode: 0o600), as: root)
        let secondHighest = try v.getAttributes(fresh).version
        try f.abandon(v, vmID: vm.id)
        v = try f.view("q")
        let later = try v.createFile("", "later", "l\n").inode
        #expect(try v.getAttributes(later).version > secondHighest)
        try v.volume.close()
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    @Test func theCatalogHoldsVersionsWithTheRecords() throws {
        let f = try EngineFixture()
        let vm = try f.provision("q")
        let v = try f.view("q")
        let a = try v.createFile("", "a", "one\n").inode
        let version = try v.getAttributes(a).version
        // The create's own commit carried the version and reserved versions ahead in the VM's row.
        #expect(try f.store.scalar("SELECT version FROM vm_inode WHERE vm_id = \(vm.id) AND ino = \(a)") == Int64(version))
        #expect(try f.store.scalar("SELECT version_counter FROM vm WHERE id = \(vm.id)") > Int64(version))
        try v.volume.close()
        // A clean close leaves the exact counter.
        #expect(try f.store.scalar("SELECT version_counter FROM vm WHERE id = \(vm.id)") >= Int64(version))
        #expect(try f.store.scalar("SELECT version_counter FROM vm WHERE id = \(vm.id)") < Int64(version) + 100)
    }
}

@Suite("unlinked open files across a hand-over")
struct OrphanRetentionTests {
    /// A VM with a file opened, written, then unlinked while its handle stays open.
    func openOrphan(_ f: EngineFixture) throws -> (VMRecord, VMView, OpenFile, baseline: (bytes: Int64, inodes: Int64)) {
        let vm = try f.provision("o")
        let v = try f.view("o")
        _ = try v.createFile("", "kept", "kept\n")
        let baseline = v.volume.usage
        let (_, h) = try v.create(rootInode, Array("gone".utf8), mode: 0o644, flags: O_RDWR, as: root)
        _ = try v.write(h, offset: 0, bytes: Array("still here\n".utf8), as: root)
        try v.unlink(rootInode, Array("gone".utf8), as: root)
        #expect(v.volume.openOrphans == [h.inode])
        return (vm, v, h, baseline)
    }

    @Test func keptOrphanOpensByInodeInTheNextProcessAndGoesAtItsLastRelease() throws {
        let f = try EngineFixture()
        let (vm, old, h, baseline) = try openOrphan(f)
        let ino = h.inode
        let handedOver = old.volume.openOrphans
        try old.volume.close(keepingOrphans: true)
        // The old process's handle ends after the close: it changes nothing the new one keeps.
        old.release(h)

        let volume = try Volume.open(store: f.store, vmName: "o", keepingOrphans: handedOver)
        let v = VMView(volume: volume, policy: SessionPolicy(side: .guest), sessionID: 1)
        #expect(v.volume.openOrphans == [ino])
        #expect(throws: Errno.noSuchFileOrDirectory) { try v.resolve("gone") }
        let reopened = try v.open(ino, flags: O_RDONLY, as: root)
        #expect(try v.read(reopened, offset: 0, count: 100) == Array("still here\n".utf8))
        #expect(try v.getAttributes(ino).linkCount == 0)
        #expect(v.volume.check(repair: false).findings.isEmpty)
        #expect(f.privateFileExists(vmID: vm.id, ino))
        v.release(reopened)
        // Last release: gone, as on a server that never restarted.
        #expect(v.volume.openOrphans.isEmpty)
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try v.open(ino, flags: O_RDONLY, as: root) }
        #expect(!f.privateFileExists(vmID: vm.id, ino))
        #expect(v.volume.usage == baseline)
        #expect(v.volume.check(repair: false).findings.isEmpty)
        try v.volume.close()
        #expect(try f.store.scalar("SELECT count(*) FROM vm_inode WHERE vm_id = \(vm.id) AND ino = \(ino)") == 0)
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    @Test func orphanNotKeptGoesAtTheNextOpen() throws {
        let f = try EngineFixture()
        let (vm, old, h, baseline) = try openOrphan(f)
        let ino = h.inode
        try old.volume.close(keepingOrphans: true)
        old.release(h)
        // Between the two processes the orphan is in the catalog and in the usage, as fsck says.
        let between = try runFsck(f.store).findings
        #expect(between.map(\.kind) == ["inode-orphan", "usage-drift"], "\(between)")

        let v = try f.view("o")
        #expect(v.volume.openOrphans.isEmpty)
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try v.open(ino, flags: O_RDONLY, as: root) }
        #expect(!f.privateFileExists(vmID: vm.id, ino))
        #expect(v.volume.usage == baseline)
        #expect(try v.readText("kept") == "kept\n")
        try v.volume.close()
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    @Test func anOrdinaryCloseRemovesOrphansOfItsOpenHandles() throws {
        let f = try EngineFixture()
        let (vm, old, h, baseline) = try openOrphan(f)
        try old.volume.close()
        old.release(h)
        #expect(!f.privateFileExists(vmID: vm.id, h.inode))
        #expect(try runFsck(f.store).findings.isEmpty)
        let v = try f.view("o")
        #expect(v.volume.usage == baseline)
        try v.volume.close()
    }

    @Test func afterACrashKeptOrphansSurviveRecoveryAndOthersGo() throws {
        let f = try EngineFixture()
        let (vm, old, h, baseline) = try openOrphan(f)
        let (_, other) = try old.create(rootInode, Array("other".utf8), mode: 0o644, flags: O_RDWR, as: root)
        _ = try old.write(other, offset: 0, bytes: [UInt8](repeating: 1, count: 5000), as: root)
        try old.unlink(rootInode, Array("other".utf8), as: root)
        try f.abandon(old, vmID: vm.id, handles: [h, other])

        let volume = try Volume.open(store: f.store, vmName: "o", keepingOrphans: [h.inode])
        let v = VMView(volume: volume, policy: SessionPolicy(side: .guest), sessionID: 1)
        #expect(v.volume.openOrphans == [h.inode])
        #expect(!f.privateFileExists(vmID: vm.id, other.inode))
        let reopened = try v.open(h.inode, flags: O_RDWR, as: root)
        #expect(try v.read(reopened, offset: 0, count: 100) == Array("still here\n".utf8))
        v.release(reopened)
        #expect(!f.privateFileExists(vmID: vm.id, h.inode))
        #expect(v.volume.usage == baseline)
        try v.volume.close()
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    @Test func unclaimedOrphansCanBeDropped() throws {
        let f = try EngineFixture()
        let (vm, old, h, baseline) = try openOrphan(f)
        try old.volume.close(keepingOrphans: true)
        old.release(h)
        let volume = try Volume.open(store: f.store, vmName: "o", keepingOrphans: [h.inode, 999_999, rootInode])
        // Only unlinked inodes are kept: a number that is no orphan is ignored.
        #expect(volume.openOrphans == [h.inode])
        #expect(volume.reapUnclaimedOrphans() == 1)
        #expect(volume.openOrphans.isEmpty)
        #expect(!f.privateFileExists(vmID: vm.id, h.inode))
        #expect(volume.usage == baseline)
        try volume.close()
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    @Test func theRegistryKeepsOrphansForTheNextOpenOfTheVM() throws {
        let f = try EngineFixture()
        let (vm, oldView, h, _) = try openOrphan(f)
        let orphans = oldView.volume.openOrphans
        try oldView.volume.close(keepingOrphans: true)
        oldView.release(h)

        let registry = try VolumeRegistry(store: f.store, logger: .init(label: "test"))
        registry.keepOrphans(orphans, ofVM: "o")
        let v = try registry.openSession(vm: "o", policy: SessionPolicy(side: .guest))
        let reopened = try v.open(h.inode, flags: O_RDONLY, as: root)
        #expect(try v.read(reopened, offset: 0, count: 5) == Array("still".utf8))
        // The old process lists them and closes keeping them: the hand-over's other side.
        #expect(v.volume.openOrphans == [h.inode])
        registry.closeAll(keepingOrphans: true)
        v.release(reopened)
        #expect(f.privateFileExists(vmID: vm.id, h.inode))

        // Consumed by that open: a later open removes it.
        let next = try VolumeRegistry(store: f.store, logger: .init(label: "test"))
        let w = try next.openSession(vm: "o", policy: SessionPolicy(side: .guest))
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try w.open(h.inode, flags: O_RDONLY, as: root) }
        next.closeAll()
        #expect(!f.privateFileExists(vmID: vm.id, h.inode))
        #expect(try runFsck(f.store).findings.isEmpty)
    }
}
