import Foundation
import GRDB
import Glibc
import Logging
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

/// SQLite's files (catalog.db, -wal, -shm) belong to SQLite. Closing any descriptor of a file
/// drops every POSIX lock the process holds on it, SQLite's included; another process then takes
/// itself for the catalog's last user when it closes, checkpoints and deletes the log under this
/// one, and the two go on with different catalogs (lost commits, a database one page shorter
/// than its header says). These tests keep that from coming back.
@Suite("the catalog's files belong to SQLite")
struct CatalogFilesTests {
    /// POSIX (fcntl) locks this process holds on the store's catalog.db, from /proc/locks.
    func catalogLocksHeld(_ store: Store) throws -> Int {
        var st = stat()
        guard stat(store.catalogPath, &st) == 0 else { throw Errno(rawValue: errno) }
        let locks = try String(contentsOfFile: "/proc/locks", encoding: .utf8)
        // "1: POSIX  ADVISORY  READ 1234 fd:01:567 1073741826 1073742335"
        let held = locks.split(separator: "\n").filter { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 6, fields[1] == "POSIX", fields[4] == "\(getpid())" else { return false }
            return fields[5].split(separator: ":").last == "\(st.st_ino)"
        }.count
        if held == 0 {
            // Which descriptors of this process still lead to the catalog: none means one of
            // SQLite's was closed behind its back (a double close elsewhere in the process).
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            let toCatalog = fds.filter { fd in
                var target = stat()
                return stat("/proc/self/fd/" + fd, &target) == 0 && target.st_ino == st.st_ino && target.st_dev == st.st_dev
            }
            Issue.record("no POSIX lock of this process on the catalog; descriptors leading to it: \(toCatalog)")
        }
        return held
    }

    func durableCommits(_ store: Store) throws -> Int64 {
        try CatalogSQL(store.catalog).read { db in try Int64.fetchOne(db, sql: "SELECT commits FROM catalog_durability") ?? -1 }
    }

    /// Opens the catalog in another process (as any pvfs command does) and closes it again.
    func readInAnotherProcess(_ store: Store) throws -> String {
        let script = """
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1])
            print(c.execute("SELECT count(*) FROM vm_dirent").fetchone()[0])
            c.close()
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script, store.catalogPath]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// fsync, fsyncdir, dedup, the janitor, fsck and the space report keep SQLite's locks, so a
    /// command that reads the catalog beside the serving process and exits leaves its log alone.
    @Test func everyStoreAndEngineStepKeepsSQLitesLocks() throws {
        let f = try EngineFixture()
        _ = try f.provision("a", quotaBytes: 1 << 20)
        let v = try f.view("a")
        defer { try? v.volume.close() }
        #expect(try catalogLocksHeld(f.store) > 0, "a WAL connection holds a shared lock on the database")

        let content = String(repeating: "fsync me\n", count: 500)
        let made = try v.createFile("", "data", content)
        let handle = try v.open(made.inode, flags: O_RDWR, as: .root)
        _ = try v.write(handle, offset: 0, bytes: Array("written".utf8), as: .root)
        try v.sync(made.inode, handle: handle, dataOnly: false)
        v.release(handle)
        #expect(try catalogLocksHeld(f.store) > 0, "fsync")
        try v.sync(rootInode, handle: nil, dataOnly: false)
        #expect(try catalogLocksHeld(f.store) > 0, "fsyncdir")

        let replaced = try v.createFile("", "dup", content)
        let blob = try f.publishBlob(content)
        #expect(try v.volume.replaceWithBlob(replaced.inode, blobID: blob, hash: SHA256Hasher.hash(Array(content.utf8))) == .replaced)
        #expect(try catalogLocksHeld(f.store) > 0, "dedup")

        _ = try f.publishBlob("nobody refers to this")
        let collected = try f.store.collectGarbage()
        #expect(collected.blobsRemoved == 1)
        var report = FsckReport(repair: false, quick: false)
        try f.store.checkStore(FsckOptions(), into: &report)
        _ = try f.store.spaceReport()
        #expect(try catalogLocksHeld(f.store) > 0, "janitor, fsck, df")

        // Another process reads and exits: it is not the last user, so the log stays and both
        // processes keep seeing one catalog.
        #expect(try readInAnotherProcess(f.store) == "2")
        #expect(FileManager.default.fileExists(atPath: f.store.catalogPath + "-wal"))
        _ = try v.createFile("", "after", "x")
        #expect(try readInAnotherProcess(f.store) == "3")
    }

    /// fsync commits one small transaction under synchronous = FULL when something was
    /// committed since the last one, and nothing otherwise.
    @Test func fsyncCommitsDurablyOnlyWhenThereIsSomethingToSync() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        defer { try? v.volume.close() }
        let made = try v.createFile("", "data", "one")
        let before = try durableCommits(f.store)
        try v.sync(made.inode, handle: nil, dataOnly: false)
        #expect(try durableCommits(f.store) == before + 1)
        try v.sync(made.inode, handle: nil, dataOnly: false)
        try v.sync(rootInode, handle: nil, dataOnly: false)
        #expect(try durableCommits(f.store) == before + 1)
        try v.writeFile("data", "two")
        try v.sync(made.inode, handle: nil, dataOnly: true)
        #expect(try durableCommits(f.store) == before + 2)
        // The connection is back to NORMAL for ordinary commits.
        let level = try CatalogSQL(f.store.catalog).write { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") }
        #expect(level == 1)
    }

    /// Once a volume is closed its VM's lock is released and another process may own the VM:
    /// a request still under way (a mount's, while the server stops) gets EIO and leaves the
    /// catalog as the close left it; a stopping server opens no new session.
    @Test func aClosedVolumeChangesNothingInTheCatalog() throws {
        let f = try EngineFixture()
        let vm = try f.provision("a")
        let registry = try VolumeRegistry(store: f.store, logger: Logger(label: "test"))
        let v = try registry.openSession(vm: "a", policy: SessionPolicy(side: .guest))
        _ = try v.createFile("", "before", "x")
        let entries = { try CatalogSQL(f.store.catalog).read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM vm_dirent WHERE vm_id = ?", arguments: [vm.id]) ?? -1
        } }
        let usage = { try CatalogSQL(f.store.catalog).read { db in
            try Row.fetchOne(db, sql: "SELECT used_bytes, used_inodes, usage_clean FROM vm WHERE id = ?", arguments: [vm.id])!
        } }
        registry.refuseNewSessions()
        #expect(throws: (any Error).self) { _ = try registry.openSession(vm: "a", policy: SessionPolicy(side: .guest)) }
        registry.closeAll()
        let (entriesAtClose, usageAtClose) = (try entries(), try usage())
        #expect(throws: Errno.ioError) { _ = try v.createFile("", "after", "y") }
        #expect(throws: Errno.ioError) { _ = try v.makeDirectory(rootInode, Array("dir".utf8), mode: 0o755, as: .root) }
        #expect(throws: (any Error).self) { try v.volume.saveUsage() }
        #expect(try entries() == entriesAtClose)
        #expect(try usage() == usageAtClose)
        #expect(usageAtClose["usage_clean"] as Int64 == 1)
    }

    /// No code opens, copies, syncs, renames or removes the catalog's files: every mention of
    /// them in Sources is SQLite opening the catalog, a stat, or a name in a message.
    @Test func noCodeOpensTheCatalogsFiles() throws {
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        let definitions = ["static let catalog = \"catalog.db\"", "static let catalogFiles = ", "static func catalogPath(inStore", "var catalogPath: String"]
        let allowedUses = [
            "DatabasePool(path:", "DatabaseQueue(path:",  // SQLite opens it
            ".stat(at:", "fileExists(atPath:",  // metadata, no descriptor
            "subject:", "CommandFailure(",  // its name in a message
        ]
        let names = ["StoreLayout.catalog", "catalogPath"]
        let literals = ["catalog.db", "\"-wal\"", "\"-shm\"", "-wal\"", "-shm\""]
        var offending: [String] = []
        var scanned = 0
        for directory in ["Sources", "bench"] {
            let root = package + "/" + directory
            guard let walker = FileManager.default.enumerator(atPath: root) else { continue }
            for case let relative as String in walker where [".swift", ".c", ".h"].contains(where: relative.hasSuffix) {
                let text = try String(contentsOfFile: root + "/" + relative, encoding: .utf8)
                scanned += 1
                for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                    var line = rawLine.trimmingCharacters(in: .whitespaces)
                    if line.hasPrefix("//") || line.hasPrefix("*") || line.hasPrefix("/*") { continue }
                    if let comment = line.range(of: " // ") { line = String(line[..<comment.lowerBound]) }
                    let place = "\(directory)/\(relative):\(number + 1): \(line)"
                    if definitions.contains(where: line.contains) { continue }
                    if literals.contains(where: line.contains) {
                        offending.append(place)
                        continue
                    }
                    if names.contains(where: line.contains) && !allowedUses.contains(where: line.contains) {
                        offending.append(place)
                    }
                }
            }
        }
        #expect(scanned > 50)
        #expect(offending.isEmpty, "the catalog's files are SQLite's alone (docs/store-format.md, \"The catalog's files\"):\n\(offending.joined(separator: "\n"))")
    }
}
