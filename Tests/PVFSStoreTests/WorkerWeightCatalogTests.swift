import Foundation
import GRDB
import PVFSSystem
import Testing
@testable import PVFSStore

/// A VM's worker weight in the catalog: a column with a default and a range, kept across
/// reopening, added to catalogs made before it existed.
@Suite("VM worker weight in the catalog")
struct WorkerWeightCatalogTests {
    @Test func aWeightIsStoredWithinItsRange() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        try store.createTemplate(name: "small", tree: OverlayCatalogTests.smallTree())
        let vm = try store.provisionVM(name: "vm", template: "small")
        #expect(vm.workerWeight == VMRecord.defaultWorkerWeight)
        try store.setWorkerWeight(vm: "vm", 250)
        #expect(try store.requireVM(named: "vm").workerWeight == 250)
        #expect(try store.listVMs().map(\.workerWeight) == [250])
        for bad in [0, -1, 10_001, Int.max] {
            #expect(throws: PVFSError.self) { try store.setWorkerWeight(vm: "vm", bad) }
        }
        #expect(throws: PVFSError.self) { try store.setWorkerWeight(vm: "nosuch", 200) }
        // The catalog itself refuses a weight out of range, whoever writes it.
        #expect(throws: DatabaseError.self) {
            try store.catalog.write { db in try db.execute(sql: "UPDATE vm SET worker_weight = 0") }
        }
        #expect(try store.requireVM(named: "vm").workerWeight == 250)
        // A VM opened by the engine carries its weight too.
        let reopened = try Store(path: dir.sub("store"))
        #expect(try reopened.requireVM(named: "vm").workerWeight == 250)
        var report = FsckReport(repair: false, quick: false)
        try reopened.checkStore(FsckOptions(), into: &report)
        #expect(report.clean, "\(report.findings)")
    }

    /// A catalog of the schema before the column: its VMs get the default weight.
    @Test func anOlderCatalogGainsTheColumn() throws {
        let queue = try DatabaseQueue()
        try CatalogSchema.migrator.migrate(queue, upTo: "v3-template-image")
        try queue.write { db in
            try db.execute(sql: "INSERT INTO template (id, name, state, created_ns) VALUES (1, 't', 'ready', 0)")
            try db.execute(sql: "INSERT INTO vm (name, template_id, state, created_ns, next_inode) VALUES ('old', 1, 'ready', 0, 2)")
        }
        try CatalogSchema.migrator.migrate(queue)
        let weight = try queue.read { db in try Int.fetchOne(db, sql: "SELECT worker_weight FROM vm WHERE name = 'old'") }
        #expect(weight == VMRecord.defaultWorkerWeight)
    }
}
