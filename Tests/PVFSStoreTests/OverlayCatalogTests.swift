import Foundation
import GRDB
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSStore

/// The catalog API the engine uses (`OpenedVM`, `VMOverlayCatalog`, `loadTemplateImage`) and the
/// in-memory template writer (`TemplateTree`), against a real store.
@Suite("overlay catalog API")
struct OverlayCatalogTests {
    static let t = Timespec(seconds: 1_700_000_000, nanoseconds: 5)

    /// / (1), /etc (2), /etc/hostname (3), /etc/a and /etc/b (4, one inode), /bin/sh -> busybox (5, 6),
    /// /empty (7), /dev/null (8, a character device in /etc for brevity).
    static func smallTree() -> TemplateTree {
        var tree = TemplateTree(time: t)
        tree.directory(1)
        tree.directory(2, mode: 0o750, uid: 5, gid: 6)
        tree.file(3, content: "host\n")
        tree.file(4, content: [1, 2, 3, 4], mode: 0o600, uid: 1000, gid: 1000)
        tree.directory(5)
        tree.symlink(6, target: "busybox")
        tree.file(7, content: [])
        tree.node(8, InodeRecord(mode: FileKind.characterDevice.modeBits | 0o666, uid: 0, gid: 0, linkCount: 0, size: 0,
                                 blocks: 0, accessTime: t, modificationTime: t, changeTime: t, rdev: 0x103, parent: 0,
                                 data: .none, symlinkTarget: nil, privateXattrs: false))
        tree.entry(1, "etc", 2)
        tree.entry(2, "hostname", 3)
        tree.entry(2, "a", 4)
        tree.entry(2, "b", 4)
        tree.entry(1, "bin", 5)
        tree.entry(5, "sh", 6)
        tree.entry(1, "empty", 7)
        tree.entry(2, "null", 8)
        tree.xattr(3, "user.origin", Array("template".utf8))
        return tree
    }

    func storeWithVM(_ dir: TemporaryDirectory) throws -> (Store, VMRecord) {
        let store = try Store(path: dir.sub("store"))
        try store.createTemplate(name: "small", tree: Self.smallTree())
        return (store, try store.provisionVM(name: "vm", template: "small"))
    }

    @Test func aTemplateTreeLoadsAsItWasBuilt() throws {
        let dir = try TemporaryDirectory()
        let (store, vm) = try storeWithVM(dir)
        let template = try store.requireTemplate(named: "small")
        #expect(template.maxInode == 8 && template.entryCount == 9 && template.logicalBytes == 9)
        let image = try store.loadTemplateImage(id: vm.templateID)
        #expect(image.maximumInode == 8)
        let root = try #require(image.inodes[1])
        #expect(root.isDirectory && root.linkCount == 4 && root.parent == 1)  // itself, etc, bin
        let etc = try #require(image.inodes[2])
        #expect(etc.mode == 0o040750 && etc.uid == 5 && etc.gid == 6 && etc.linkCount == 2 && etc.parent == 1)
        let shared = try #require(image.inodes[4])
        #expect(shared.linkCount == 2 && shared.size == 4 && shared.mode == 0o100600 && shared.uid == 1000)
        #expect(shared.accessTime == Self.t && shared.modificationTime == Self.t && shared.changeTime == Self.t)
        let link = try #require(image.inodes[6])
        #expect(link.kind == .symlink && link.symlinkTarget == Array("busybox".utf8) && link.size == 7)
        #expect(image.inodes[7]?.data == DataLocation.none && image.inodes[7]?.size == 0)
        #expect(image.inodes[8]?.kind == .characterDevice && image.inodes[8]?.rdev == 0x103)
        #expect(image.directories[1] == ["etc": 2, "bin": 5, "empty": 7])
        #expect(image.directories[2] == ["hostname": 3, "a": 4, "b": 4, "null": 8])
        #expect(image.xattrs[3] == [Array("user.origin".utf8): Array("template".utf8)])
        // File contents are blobs, readable by hash.
        guard case .blob(let blobID) = image.inodes[3]?.data else {
            Issue.record("hostname has no blob")
            return
        }
        let opened = try #require(try store.openVMIfFree(vm))
        defer { opened.area.close() }
        let hash = try #require(try opened.catalog.blobHash(id: blobID))
        #expect(hash == SHA256Hasher.hash(Array("host\n".utf8)))
        // The template's blob hashes come with its image; the VM's own list only what it adds.
        #expect(image.blobHashes.count == 2 && image.blobHashes[blobID] == hash)
        #expect(try opened.catalog.loadBlobHashes(templateID: vm.templateID).isEmpty)
        #expect(opened.template == image.identity && image.identity == TemplateIdentity(id: vm.templateID,
                                                                                         createdNanoseconds: template.createdNanoseconds))
        let fd = try opened.catalog.openBlob(hash)
        defer { fd.closeQuietly() }
        var bytes = [UInt8](repeating: 0, count: 16)
        let count = try bytes.withUnsafeMutableBytes { (b) throws(Errno) in try fd.read(into: b, at: 0) }
        #expect(Array(bytes.prefix(count)) == Array("host\n".utf8))
        #expect(try opened.catalog.blobHash(id: 9999) == nil)
    }

    @Test func treesThatAreNotTreesAreRefused() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        var noRoot = TemplateTree()
        noRoot.file(1, content: "x")
        #expect((#expect(throws: PVFSError.self) { try store.createTemplate(name: "a", tree: noRoot) })?.errno == .invalidArgument)
        var dangling = Self.smallTree()
        dangling.entry(1, "ghost", 99)
        let error = #expect(throws: PVFSError.self) { try store.createTemplate(name: "b", tree: dangling) }
        #expect(error?.message.contains("inode 99") == true)
        var twice = Self.smallTree()
        twice.entry(1, "etc", 3)
        #expect(throws: PVFSError.self) { try store.createTemplate(name: "c", tree: twice) }
        try store.createTemplate(name: "d", tree: Self.smallTree())
        let clash = #expect(throws: PVFSError.self) { try store.createTemplate(name: "d", tree: Self.smallTree()) }
        #expect(clash?.errno == .fileExists)
        #expect(try store.listTemplates().map(\.name) == ["d"])
        #expect(try store.integrityCheck() == "ok")
    }

    /// Every kind of change goes in with `apply` and comes back with `loadOverlay`.
    @Test func everyChangeKindRoundTrips() throws {
        let dir = try TemporaryDirectory()
        let (store, vm) = try storeWithVM(dir)
        let opened = try store.openVM(named: "vm")
        defer { opened.area.close() }
        let catalog = opened.catalog
        let fresh = try catalog.loadOverlay()
        #expect(fresh.inodes.isEmpty && fresh.entries.isEmpty && fresh.nextInode == 9)

        func record(_ mode: UInt32, size: Int64 = 0, data: DataLocation = .none, target: [UInt8]? = nil,
                    privateXattrs: Bool = false) -> InodeRecord {
            InodeRecord(mode: mode, uid: 7, gid: 8, linkCount: 1, size: size, blocks: (size + 511) / 512,
                        accessTime: Timespec(seconds: 1, nanoseconds: 2), modificationTime: Timespec(seconds: 3, nanoseconds: 4),
                        changeTime: Timespec(seconds: 5, nanoseconds: 6), rdev: 0, parent: 1, data: data,
                        symlinkTarget: target, privateXattrs: privateXattrs)
        }
        var expected = OverlayRecords()
        let batches: [OverlayBatch] = [
            [.putInode(9, record(0o100644, size: 10, data: .privateFile)), .putEntry(parent: 1, name: "new", inode: 9),
             .nextInode(1033)],
            [.putInode(10, record(0o120777, size: 3, target: [0xff, 0x00, 0x41])), .putEntry(parent: 2, name: "link", inode: 10),
             .putInode(3, record(0o100644, size: 5, data: .blob(id: 1), privateXattrs: true)),
             .replaceXattrs(3, [Array("user.a".utf8): [1], Array("trusted.b".utf8): []])],
            // A whiteout hides a template name; entries of a directory that goes away.
            [.putEntry(parent: 1, name: "empty", inode: 0), .putEntry(parent: 9, name: "x", inode: 10),
             .putEntry(parent: 9, name: "y", inode: 10), .deleteAllEntries(parent: 9)],
            [.putEntry(parent: 2, name: FileName(trusted: [0xc3, 0x28]), inode: 9), .deleteEntry(parent: 2, name: "link"),
             .putInode(11, record(0o040700)), .replaceXattrs(11, [Array("user.z".utf8): Array(repeating: 9, count: 300)]),
             .deleteInode(11)],
        ]
        for batch in batches {
            try catalog.apply(batch)
            for change in batch { expected.apply(change) }
        }
        let loaded = try catalog.loadOverlay()
        #expect(loaded.inodes == expected.inodes)
        #expect(loaded.entries == expected.entries)
        #expect(loaded.xattrs == expected.xattrs)
        #expect(loaded.entries[1]?["empty"] == 0)
        #expect(loaded.entries[9] == nil && loaded.inodes[11] == nil && loaded.xattrs[11] == nil)
        #expect(loaded.nextInode == 1033)
        // Symlink targets and names are bytes, not text.
        #expect(loaded.inodes[10]?.symlinkTarget == [0xff, 0x00, 0x41])
        #expect(loaded.entries[2]?[FileName(trusted: [0xc3, 0x28])] == 9)
        // The reservation only rises.
        try catalog.apply([.nextInode(20)])
        #expect(try catalog.loadOverlay().nextInode == 1033)
        #expect(try store.integrityCheck() == "ok")
        _ = vm
    }

    @Test func usageAndTheCleanFlagRoundTrip() throws {
        let dir = try TemporaryDirectory()
        let (store, vm) = try storeWithVM(dir)
        var opened = try store.openVM(named: "vm")
        #expect(opened.usageClean && opened.record.usedBytes == 0 && opened.record.id == vm.id)
        try opened.catalog.markInUse()
        try opened.catalog.setUsage(VMUsage(bytes: 4096, inodes: 3), clean: nil)
        opened.area.close()
        // A holder that died leaves the flag down and its last saved usage.
        opened = try store.openVM(named: "vm")
        #expect(!opened.usageClean && opened.record.usedBytes == 4096 && opened.record.usedInodes == 3)
        try opened.catalog.setUsage(VMUsage(bytes: 10, inodes: 1), clean: true)
        opened.area.close()
        opened = try store.openVM(named: "vm")
        #expect(opened.usageClean && opened.record.usedBytes == 10)
        #expect(try opened.catalog.loadQuota() == VMQuota(bytes: nil, inodes: nil))
        try store.setQuota(vm: "vm", bytes: 1 << 20, inodes: 50)
        #expect(try opened.catalog.loadQuota() == VMQuota(bytes: 1 << 20, inodes: 50))
        #expect(try opened.catalog.hostStatistics().blockSize > 0)
        opened.area.close()
    }

    @Test func openingTellsWhyAVMCannotBeServed() throws {
        let dir = try TemporaryDirectory()
        let (store, vm) = try storeWithVM(dir)
        let missing = #expect(throws: PVFSError.self) { _ = try store.openVM(named: "nope") }
        #expect(missing?.errno == .noSuchFileOrDirectory && missing?.message == "no VM named nope")

        let held = try store.openVM(named: "vm")
        let busy = #expect(throws: PVFSError.self) { _ = try store.openVM(named: "vm") }
        #expect(busy?.errno == .resourceBusy && busy?.message == "VM vm is in use by another process (mounted or served)")
        #expect(try store.openVMIfFree(vm) == nil)
        held.area.close()
        let free = try #require(try store.openVMIfFree(vm))
        free.area.close()

        try store.catalog.write { db in
            try db.execute(sql: "UPDATE vm SET state = 'provisioning' WHERE id = ?", arguments: [vm.id])
        }
        let unready = #expect(throws: PVFSError.self) { _ = try store.openVM(named: "vm") }
        #expect(unready?.errno == .resourceBusy && unready?.message == "VM vm is not ready (state provisioning)")
        try store.catalog.write { db in
            try db.execute(sql: "UPDATE vm SET state = 'ready' WHERE id = ?", arguments: [vm.id])
        }
        try FileManager.default.removeItem(atPath: store.path + "/" + StoreLayout.vmPath(vm.id))
        let gone = #expect(throws: PVFSError.self) { _ = try store.openVM(named: "vm") }
        #expect(gone?.message.hasPrefix("the private area of VM vm (\(StoreLayout.vmPath(vm.id))) is missing") == true)
        let unchecked = #expect(throws: PVFSError.self) { _ = try store.openVMIfFree(vm) }
        #expect(unchecked?.message.hasPrefix("its private area \(StoreLayout.vmPath(vm.id)) cannot be opened") == true)
    }

    @Test func damagedTemplatesFailToLoadWithAReason() throws {
        let dir = try TemporaryDirectory()
        let (store, vm) = try storeWithVM(dir)
        let absent = #expect(throws: PVFSError.self) { _ = try store.loadTemplateImage(id: 99) }
        #expect(absent?.errno == .noSuchFileOrDirectory && absent?.message == "template 99 is not in the catalog")
        try store.catalog.write { db in
            try db.execute(sql: "UPDATE template SET max_inode = 3 WHERE id = ?", arguments: [vm.templateID])
        }
        let range = #expect(throws: PVFSError.self) { _ = try store.loadTemplateImage(id: vm.templateID) }
        #expect(range?.errno == .ioError && range?.message.contains("is out of range") == true)
        try store.catalog.write { db in
            try db.execute(sql: "UPDATE template SET max_inode = 8 WHERE id = ?", arguments: [vm.templateID])
            try db.execute(sql: "DELETE FROM template_inode WHERE template_id = ? AND ino = 1", arguments: [vm.templateID])
        }
        let rootless = #expect(throws: PVFSError.self) { _ = try store.loadTemplateImage(id: vm.templateID) }
        #expect(rootless?.message == "template \(vm.templateID) has no root directory")
    }

    /// A full catalog refuses a batch with ENOSPC and keeps none of it; other failures are EIO.
    @Test func aFullCatalogRefusesWithENOSPC() throws {
        let dir = try TemporaryDirectory()
        let (store, _) = try storeWithVM(dir)
        let opened = try store.openVM(named: "vm")
        defer { opened.area.close() }
        let catalog = opened.catalog
        let big = InodeRecord(mode: 0o100644, uid: 0, gid: 0, linkCount: 1, size: 0, blocks: 0, accessTime: Self.t,
                              modificationTime: Self.t, changeTime: Self.t, rdev: 0, parent: 1, data: .none,
                              symlinkTarget: Array(repeating: 0x41, count: 4000), privateXattrs: false)
        // The writer connection may not grow the database file any more.
        try store.catalog.writeWithoutTransaction { db in
            let pages = try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0
            try db.execute(sql: "PRAGMA max_page_count = \(pages)")
        }
        defer {
            try? store.catalog.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA max_page_count = 1073741823") }
        }
        let batch: OverlayBatch = (100..<400).map { .putInode(UInt64($0), big) }
        let full = #expect(throws: PVFSError.self) { try catalog.apply(batch) }
        #expect(full?.errno == .noSpace && full?.domain == .store)
        #expect(Errno.of(full!) == .noSpace)
        #expect(try catalog.loadOverlay().inodes.isEmpty)

        try store.catalog.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA max_page_count = 1073741823") }
        try store.catalog.write { db in
            try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON vm_dirent BEGIN SELECT RAISE(ABORT, 'refused'); END")
        }
        let refused = #expect(throws: PVFSError.self) { try catalog.apply([.putEntry(parent: 1, name: "x", inode: 9)]) }
        #expect(refused?.errno == .ioError && refused?.message.contains("refused") == true)
        try catalog.apply(batch)
        #expect(try catalog.loadOverlay().inodes.count == 300)
    }
}
