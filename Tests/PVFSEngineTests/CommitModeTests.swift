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

/// When operations reach the catalog: before their reply (default) or grouped a few ms later.
@Suite("catalog commit modes")
struct CommitModeTests {
    func entryCount(_ f: EngineFixture, _ vm: VMRecord, _ name: String) throws -> Int64 {
        try CatalogSQL(f.store.catalog).read { db in
            try Int64.fetchOne(db, sql: "SELECT count(*) FROM vm_dirent WHERE vm_id = ? AND name = ?",
                               arguments: [vm.id, Data(name.utf8)]) ?? 0
        }
    }

    /// A reply means the catalog has it: what another process (or the next start after a
    /// kill -9) reads right after the operation returned.
    @Test func acknowledgedOperationsAreInTheCatalogAtOnce() throws {
        let f = try EngineFixture()
        let vm = try f.provision("a")
        let v = try f.view("a")
        #expect(v.volume.commitMode == .beforeReply)
        for n in 0..<20 { _ = try v.createBytes("", "f\(n)", [UInt8(n)]) }
        #expect(try entryCount(f, vm, "f19") == 1)
        try v.unlink(rootInode, Array("f19".utf8), as: .root)
        #expect(try entryCount(f, vm, "f19") == 0)
        try v.volume.close()
    }

    /// Grouped commits end in the same catalog: many creates, unlinks and renames, then a clean
    /// close and a fresh open see exactly what the operations did.
    @Test func groupedCommitsKeepEveryOperation() throws {
        let f = try EngineFixture()
        let vm = try f.provision("a")
        var v = try f.view("a")
        v.volume.commitMode = .grouped
        let dir = try v.makeDirectory(rootInode, Array("g".utf8), mode: 0o755, as: .root).inode
        for n in 0..<300 { _ = try v.createBytes("g", "f\(n)", Array("content \(n)".utf8)) }
        for n in stride(from: 0, to: 300, by: 3) { try v.unlink(dir, Array("f\(n)".utf8), as: .root) }
        for n in stride(from: 1, to: 300, by: 3) {
            try v.rename(dir, Array("f\(n)".utf8), to: dir, Array("r\(n)".utf8), as: .root)
        }
        // Visible in the catalog once flushed (as fsync or a periodic save would).
        try v.volume.commitPendingChanges()
        #expect(try entryCount(f, vm, "r298") == 1 && entryCount(f, vm, "f0") == 0)
        _ = try v.createBytes("g", "last", Array("last".utf8))
        try v.volume.close()

        v = try f.view("a")
        for n in 0..<300 {
            switch n % 3 {
            case 0: #expect(throws: Errno.noSuchFileOrDirectory) { _ = try v.resolve("g/f\(n)") }
            case 1: #expect(try v.readText("g/r\(n)") == "content \(n)")
            default: #expect(try v.readText("g/f\(n)") == "content \(n)")
            }
        }
        #expect(try v.readText("g/last") == "last")
        try v.volume.close()
        #expect(try runFsck(f.store).findings.isEmpty)
    }

    /// Written sizes reach the catalog lazily; when the catalog refuses them at close, the volume
    /// stays marked unclean, so the next open takes the size from the private file.
    @Test func sizesSurviveACatalogThatRefusesTheLastFlush() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        var v = try f.view("a")
        _ = try v.createBytes("", "f", [UInt8](repeating: 9, count: 5000))
        #expect(try v.resolve("f").size == 5000)
        try CatalogSQL(f.store.catalog).write { db in
            try db.execute(sql: "CREATE TRIGGER refuse_inodes BEFORE INSERT ON vm_inode BEGIN SELECT RAISE(ABORT, 'refused'); END")
        }
        #expect(throws: (any Error).self) { try v.volume.close() }
        try CatalogSQL(f.store.catalog).write { db in try db.execute(sql: "DROP TRIGGER refuse_inodes") }
        v = try f.view("a")
        #expect(try v.resolve("f").size == 5000)
        try v.volume.close()
    }

    /// A catalog whose filesystem is full refuses operations with ENOSPC (not EIO), in both
    /// modes, and the view keeps what the catalog has.
    @Test(arguments: [Volume.CommitMode.beforeReply, .grouped])
    func aFullCatalogGivesENOSPC(mode: Volume.CommitMode) throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        v.volume.commitMode = mode
        _ = try v.createFile("", "before", "x")
        try v.volume.commitPendingChanges()
        try CatalogSQL(f.store.catalog).writeWithoutTransaction { db in
            let pages = try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0
            try db.execute(sql: "PRAGMA max_page_count = \(pages)")
        }
        var refused: Errno?
        for n in 0..<2000 where refused == nil {
            do {
                _ = try v.makeDirectory(rootInode, Array("d\(n)-\(String(repeating: "x", count: 200))".utf8), mode: 0o755, as: .root)
            } catch {
                refused = error
            }
        }
        if refused == nil {
            do { try v.volume.commitPendingChanges() } catch { refused = Errno.of(error) }
        }
        #expect(refused == .noSpace)
        try CatalogSQL(f.store.catalog).writeWithoutTransaction { db in try db.execute(sql: "PRAGMA max_page_count = 1073741823") }
        // With room again, the queued changes go in. In grouped mode the first flush may still
        // report an attempt the writer began before the room came back; the next one starts after.
        var flushed = false
        for _ in 0..<3 where !flushed {
            flushed = (try? v.volume.commitPendingChanges()) != nil
        }
        #expect(flushed)
        try v.volume.close()
        #expect(try f.view("a").readText("before") == "x")
    }
}
