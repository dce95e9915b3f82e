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

/// Creates an empty file at a VM's private data path of `ino` (its shard directory too).
func plantPrivateFile(_ store: Store, vmID: Int64, ino: UInt64) throws {
    let path = StoreLayout.privateFilePath(vm: vmID, inode: ino)
    _ = try? store.root.makeDirectory(at: String(path.dropLast(String(ino).count + 1)), mode: 0o700)
    let fd = try FileDescriptor.open(at: store.root, path, [.writeOnly, .create], mode: 0o600)
    fd.closeQuietly()
}

/// fsck as `pvfs fsck` runs it: the store's checks, then each VM's (closed VMs only here).
func runFsck(_ store: Store, repair: Bool = false, quick: Bool = false) throws -> FsckReport {
    var options = FsckOptions()
    options.repair = repair
    options.quick = quick
    options.waitSeconds = 2
    var report = FsckReport(repair: repair, quick: quick)
    try store.checkStore(options, into: &report)
    for vm in try store.listVMs() {
        let result = try Volume.check(store: store, vm: vm, repair: repair)
        if let skipped = result.skipped { report.skipped.append("vm \(vm.name): \(skipped)") }
        report.findings += result.findings
    }
    return report
}

@Suite("fsck")
struct FsckTests {
    /// A fixture with one VM that wrote a file, copied up a template file and was closed cleanly.
    func populated() throws -> (EngineFixture, VMRecord) {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        _ = try v.createBytes("", "own", pseudoRandom(9000, seed: 1))
        try v.writeFile("etc/hostname", "changed\n")
        try v.volume.close()
        return (f, try f.store.requireVM(named: "a"))
    }

    @Test func cleanStoreIsClean() throws {
        let (f, _) = try populated()
        let report = try runFsck(f.store)
        #expect(report.findings.isEmpty, "\(report.findings)")
        #expect(report.blobsChecked == 3 && report.templatesChecked == 1 && report.skipped.isEmpty)
        #expect(report.clean)
    }

    @Test func missingBlobIsDataLossWithItsUsers() throws {
        let (f, _) = try populated()
        let hash = SHA256Hasher.hash(Array("deep\n".utf8))
        try f.store.blobsDirectory.unlink(at: StoreLayout.blobPath(hash))
        let report = try runFsck(f.store, repair: true)
        let lost = try #require(report.findings.first { $0.kind == "blob-missing" })
        #expect(lost.status == .unrepairable)
        #expect(lost.affected?.contains { $0.hasPrefix("template tiny: /etc/deep/a/file") } == true)
        #expect(!report.clean)
    }

    @Test func corruptBlobIsFoundByHashNotByQuickCheck() throws {
        let (f, _) = try populated()
        let hash = SHA256Hasher.hash(Array("shared\n".utf8))
        let path = StoreLayout.blobPath(hash)
        try f.store.blobsDirectory.changeMode(at: path, 0o644)
        let fd = try FileDescriptor.open(at: f.store.blobsDirectory, path, [.writeOnly])
        try fd.writeAll(Array("SHARED\n".utf8), at: 0)
        fd.closeQuietly()
        #expect(try runFsck(f.store, quick: true).clean)
        let report = try runFsck(f.store)
        let corrupt = try #require(report.findings.first { $0.kind == "blob-corrupt" })
        #expect(corrupt.affected?.contains { $0.contains("/etc/hard-") } == true)
    }

    @Test func orphanBlobFilesAreRemovedByRepair() throws {
        let (f, _) = try populated()
        let content = Array("no row".utf8)
        let hash = SHA256Hasher.hash(content)
        _ = try? f.store.blobsDirectory.makeDirectory(at: String(hash.hex.prefix(2)), mode: 0o755)
        let fd = try FileDescriptor.open(at: f.store.blobsDirectory, StoreLayout.blobPath(hash), [.writeOnly, .create], mode: 0o444)
        fd.closeQuietly()
        let found = try runFsck(f.store)
        #expect(found.findings.map(\.kind) == ["blob-orphan"] && found.findings[0].status == .found)
        let repaired = try runFsck(f.store, repair: true)
        #expect(repaired.findings.map(\.status) == [.repaired] && repaired.clean)
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    @Test func templateLinkCountsAndDanglingEntriesAreRepaired() throws {
        let (f, _) = try populated()
        try CatalogSQL(f.store.catalog).write { db in
            try db.execute(sql: "UPDATE template_inode SET nlink = 7 WHERE template_id = 1 AND ino = 4")
            try db.execute(sql: "INSERT INTO template_dirent (template_id, parent, name, ino) VALUES (1, 2, ?, 99)",
                           arguments: [Array("ghost".utf8).databaseBlob])
        }
        let found = try runFsck(f.store)
        #expect(Set(found.findings.map(\.kind)) == ["link-count", "dirent-dangling"])
        #expect(try runFsck(f.store, repair: true).clean)
        #expect(try runFsck(f.store).findings.isEmpty)
        #expect(try f.store.scalar("SELECT nlink FROM template_inode WHERE template_id = 1 AND ino = 4") == 2)
    }

    @Test func vmOverlayProblemsAndUsageDriftAreRepaired() throws {
        let (f, vm) = try populated()
        // An orphaned private file, an entry pointing nowhere, a lost private file and a drifted total.
        try plantPrivateFile(f.store, vmID: vm.id, ino: 4242)
        let own: Int64 = try f.store.scalar("SELECT ino FROM vm_inode WHERE vm_id = \(vm.id) AND ino > 10 AND data = 2")
        try CatalogSQL(f.store.catalog).write { db in
            try db.execute(sql: "INSERT INTO vm_dirent (vm_id, parent, name, ino) VALUES (?, 1, ?, 777)",
                           arguments: [vm.id, Array("dangling".utf8).databaseBlob])
            try db.execute(sql: "UPDATE vm SET used_bytes = used_bytes + 12345 WHERE id = ?", arguments: [vm.id])
        }
        try f.store.root.unlink(at: StoreLayout.privateFilePath(vm: vm.id, inode: UInt64(own)))
        let found = try runFsck(f.store)
        #expect(Set(found.findings.map(\.kind)) == ["private-file-orphan", "dirent-dangling", "private-file-missing", "usage-drift"])
        let repaired = try runFsck(f.store, repair: true)
        // The lost file stays reported as data loss; everything else is repaired.
        #expect(repaired.findings.filter { $0.status != .repaired }.map(\.kind) == ["private-file-missing"])
        let after = try runFsck(f.store)
        #expect(after.findings.isEmpty, "\(after.findings)")
        let v = try f.view("a")
        #expect(try v.readWhole("own").isEmpty)
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try v.resolve("dangling") }
        #expect(try v.readText("etc/hostname") == "changed\n")
    }

    @Test func uncleanShutdownAndInterruptedOperationsAreFinished() throws {
        let (f, vm) = try populated()
        try CatalogSQL(f.store.catalog).write { db in
            try db.execute(sql: "UPDATE vm SET usage_clean = 0 WHERE id = ?", arguments: [vm.id])
            try db.execute(sql: "INSERT INTO template (name, state, created_ns) VALUES ('gone.deleting.9', 'deleting', 0)")
            try db.execute(sql: "INSERT INTO vm (name, template_id, state, created_ns, next_inode) VALUES ('half', 1, 'provisioning', 0, 11)")
        }
        try f.store.root.makeDirectory(at: StoreLayout.vmPath(999), mode: 0o700)
        let found = try runFsck(f.store)
        #expect(Set(found.findings.map(\.kind)) == ["vm-unclean-shutdown", "template-removal-interrupted", "vm-provisioning-interrupted",
                                                    "vm-directory-orphan"])
        #expect(try runFsck(f.store, repair: true).clean)
        #expect(try runFsck(f.store).findings.isEmpty)
        #expect(try f.store.scalar("SELECT usage_clean FROM vm WHERE id = \(vm.id)") == 1)
    }

    /// Sizes reach the catalog lazily; after a crash the private file's own size wins.
    @Test func sizesOfWrittenFilesAreRecoveredAfterACrash() throws {
        let (f, vm) = try populated()
        let ino = try f.view("a").resolve("own").inode
        let path = f.store.path + "/" + StoreLayout.privateFilePath(vm: vm.id, inode: ino)
        let host = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.append])
        _ = try host.writeAll(pseudoRandom(3000, seed: 9))
        try host.close()
        try CatalogSQL(f.store.catalog).write { db in
            try db.execute(sql: "UPDATE vm SET usage_clean = 0 WHERE id = ?", arguments: [vm.id])
        }
        let v = try f.view("a")
        let attributes = try v.getAttributes(try v.resolve("own").inode)
        #expect(attributes.size == 12_000)
        #expect(try v.readWhole("own").count == 12_000)
        // The catalog agrees (what dedup, df and exports read without opening the file).
        #expect(try f.store.scalar("SELECT size FROM vm_inode WHERE vm_id = \(vm.id) AND ino = \(ino)") == 12_000)
        try v.volume.close()
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    @Test func servedVolumeIsCheckedUnderItsOwnLocks() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        _ = try v.createBytes("", "own", pseudoRandom(5000, seed: 2))
        let vm = try f.store.requireVM(named: "a")
        // Held by this process: the static check skips it, the volume's own check runs.
        #expect(try Volume.check(store: f.store, vm: vm, repair: false).skipped != nil)
        let clean = v.volume.check(repair: false)
        #expect(clean.findings.isEmpty && clean.computedUsage == clean.recordedUsage)
        try plantPrivateFile(f.store, vmID: vm.id, ino: 5151)
        let repaired = v.volume.check(repair: true)
        #expect(repaired.findings.map(\.kind) == ["private-file-orphan"] && repaired.findings[0].status == .repaired)
        #expect(v.volume.check(repair: false).findings.isEmpty)
    }
}
