import Foundation
import GRDB
import PVFSSystem
import Testing
@testable import PVFSStore

/// qid versions in the catalog: each VM record's version and the VM's counter, stored with the
/// overlay and added to catalogs made before them.
@Suite("qid versions in the catalog")
struct QidVersionCatalogTests {
    @Test func versionsAndTheCounterRoundTrip() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        try store.createTemplate(name: "small", tree: OverlayCatalogTests.smallTree())
        let vm = try store.provisionVM(name: "vm", template: "small")
        let opened = try store.openVM(named: "vm")
        defer { opened.area.close() }
        #expect(try opened.catalog.loadOverlay().versionCounter == 0)
        let t = OverlayCatalogTests.t
        let big: UInt64 = 1 << 63 + 5
        func record(_ version: UInt64) -> InodeRecord {
            InodeRecord(mode: 0o100644, uid: 0, gid: 0, linkCount: 1, size: 0, blocks: 0, accessTime: t,
                        modificationTime: t, changeTime: t, rdev: 0, parent: 0, data: .none, symlinkTarget: nil,
                        privateXattrs: false, version: version)
        }
        try opened.catalog.apply([.putInode(20, record(17)), .putInode(21, record(big)), .versionCounter(1000)])
        // A reservation only rises.
        try opened.catalog.apply([.versionCounter(900)])
        var overlay = try opened.catalog.loadOverlay()
        #expect(overlay.inodes[20]?.version == 17)
        #expect(overlay.inodes[21]?.version == big)
        #expect(overlay.versionCounter == 1000)
        // A clean close writes the exact counter, which may be below the reservation.
        try opened.catalog.setUsage(VMUsage(bytes: 0, inodes: 2), clean: true, versionCounter: 950)
        overlay = try opened.catalog.loadOverlay()
        #expect(overlay.versionCounter == 950)
        let stored = try store.catalog.read { db in
            try Int64.fetchOne(db, sql: "SELECT version_counter FROM vm WHERE id = ?", arguments: [vm.id])
        }
        #expect(stored == 950)
        var applied = OverlayRecords()
        applied.apply(.versionCounter(5))
        applied.apply(.versionCounter(3))
        #expect(applied.versionCounter == 5)
    }

    /// A catalog of the schema before the columns: its rows get version 0, its VMs counter 0.
    @Test func anOlderCatalogGainsTheColumns() throws {
        let queue = try DatabaseQueue()
        try CatalogSchema.migrator.migrate(queue, upTo: "vm-worker-weight")
        try queue.write { db in
            try db.execute(sql: "INSERT INTO template (id, name, state, created_ns) VALUES (1, 't', 'ready', 0)")
            try db.execute(sql: "INSERT INTO vm (id, name, template_id, state, created_ns, next_inode) VALUES (1, 'old', 1, 'ready', 0, 2)")
            try db.execute(sql: """
                INSERT INTO vm_inode (vm_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns)
                VALUES (1, 9, 33188, 0, 0, 1, 0, 0, 0, 0, 0)
                """)
        }
        try CatalogSchema.migrator.migrate(queue)
        let (version, counter) = try queue.read { db in
            (try Int64.fetchOne(db, sql: "SELECT version FROM vm_inode WHERE ino = 9"),
             try Int64.fetchOne(db, sql: "SELECT version_counter FROM vm WHERE id = 1"))
        }
        #expect(version == 0 && counter == 0)
    }
}
