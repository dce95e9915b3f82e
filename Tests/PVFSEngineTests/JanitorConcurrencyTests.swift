import Foundation
import GRDB
import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import Synchronization
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

/// The janitor running without pause while templates are ingested and removed, VMs are
/// provisioned, written, copied up and deduplicated: no referenced blob may ever disappear and
/// every file must stay readable with the right content.
@Suite("Janitor against concurrent referencers", .serialized)
struct JanitorConcurrencyTests {
    static let fileSize = 12_000

    /// Contents every writer picks from, by seed: the reader knows them all.
    static let contents: [UInt64: [UInt8]] = {
        var all: [UInt64: [UInt8]] = [:]
        for seed in UInt64(1)...40 { all[seed] = pseudoRandom(fileSize, seed: seed) }
        return all
    }()
    static let knownHashes = Set(contents.values.map { SHA256Hasher.hash($0) })

    final class Failures: Sendable {
        let list = Mutex<[String]>([])
        func add(_ s: String) { list.withLock { if $0.count < 50 { $0.append(s) } } }
        var all: [String] { list.withLock { $0 } }
    }

    @Test func gcNeverTakesABlobInUse() throws {
        let f = try EngineFixture()
        let store = f.store
        let failures = Failures()
        let stop = Atomic<Bool>(false)
        let rounds = 12
        var threads: [Thread] = []
        let done = DispatchGroup()
        func spawn(_ name: String, _ body: @escaping @Sendable () throws -> Void) {
            done.enter()
            let t = Thread {
                do { try body() } catch { failures.add("\(name): \(error)") }
                done.leave()
            }
            t.stackSize = 4 << 20
            threads.append(t)
        }

        // VMs written, deduplicated and read concurrently; "c" copies template files up.
        for name in ["a", "b", "c"] { _ = try f.provision(name) }
        let views = try ["a", "b", "c"].map { try f.view($0) }
        let gcRuns = Atomic<Int>(0)
        let dedupRuns = Atomic<Int>(0)

        spawn("janitor") {
            var options = JanitorOptions()
            options.waitSeconds = 20
            options.sliceMilliseconds = 20
            while !stop.load(ordering: .relaxed) {
                let report = try store.collectGarbage(options)
                if report.deferred { failures.add("janitor deferred for 20 s") }
                gcRuns.add(1, ordering: .relaxed)
            }
        }

        let sources = try TemporaryDirectory("pvfs-janitor-test")
        let writersDone = Atomic<Int>(0)
        spawn("ingest") {
            defer { writersDone.add(1, ordering: .relaxed) }
            for round in 0..<rounds {
                let dir = sources.path + "/r\(round)"
                try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
                // Content shared with the VMs' files and with other rounds, and content new each round.
                for seed in UInt64(1)...8 {
                    try Data(Self.contents[seed]!).write(to: URL(fileURLWithPath: dir + "/sub/s\(seed)"))
                }
                try Data(Self.contents[UInt64(20 + round % 20)]!).write(to: URL(fileURLWithPath: dir + "/unique"))
                var options = IngestOptions()
                options.jobs = 2
                _ = try store.createTemplate(name: "t\(round)", fromDirectory: dir, options: options)
                if round > 0 { _ = try store.removeTemplate(named: "t\(round - 1)", waitSeconds: 20) }
            }
        }

        spawn("provision-write-dedup") {
            defer { writersDone.add(1, ordering: .relaxed) }
            for round in 0..<rounds {
                // A VM provisioned from a template being ingested and removed around it.
                if let template = try store.listTemplates().last {
                    _ = try store.provisionVM(name: "p\(round)", template: template.name)
                    try store.removeVM(named: "p\(round)")
                }
                for (i, view) in views.prefix(2).enumerated() {
                    for k in 0..<6 {
                        let seed = UInt64(1 + (k + round) % 10)
                        _ = try? view.unlink(rootInode, Array("w\(k)".utf8), as: .root)
                        _ = try view.createBytes("", "w\(k)", Self.contents[seed]!)
                    }
                    _ = i
                }
                let report = try store.deduplicate(views.prefix(2).map { VolumeDedupTarget($0.volume) })
                if report.filesDeduplicated == 0 { failures.add("round \(round): dedup shared nothing") }
                dedupRuns.add(1, ordering: .relaxed)
            }
        }

        spawn("copy-up") {
            defer { writersDone.add(1, ordering: .relaxed) }
            let c = views[2]
            var options = DedupOptions()
            options.minimumSize = 1
            for round in 0..<(rounds * 2) {
                // Copy a template file up by writing it, then let dedup give it back to the template's blob.
                try c.writeFile("etc/hostname", "template-host\n")
                try c.writeFile("etc/deep/a/file", round % 2 == 0 ? "deep\n" : "other\n")
                _ = try store.deduplicate([VolumeDedupTarget(c.volume)], options: options)
            }
        }

        spawn("reader") {
            while writersDone.load(ordering: .relaxed) < 3 {
                for view in views.prefix(2) {
                    for k in 0..<6 {
                        // Between unlink and create, or between create and write.
                        guard let bytes = try? view.readWhole("w\(k)"), !bytes.isEmpty else { continue }
                        if !Self.knownHashes.contains(SHA256Hasher.hash(bytes)) {
                            failures.add("\(view.vmName)/w\(k): unexpected content (\(bytes.count) bytes)")
                        }
                    }
                }
                // One read each: the copy-up thread rewrites these files (truncate, then write)
                // while they are read, and a second read could see its next version.
                let c = views[2]
                let host = String(decoding: try c.readOnce("etc/hostname"), as: UTF8.self)
                if host != "template-host\n" && !host.isEmpty { failures.add("c/etc/hostname reads \(host.debugDescription)") }
                let deep = String(decoding: try c.readOnce("etc/deep/a/file"), as: UTF8.self)
                if deep != "deep\n" && deep != "other\n" && !deep.isEmpty { failures.add("c/etc/deep/a/file reads \(deep.debugDescription)") }
                for hash in try store.referencedBlobsMissingFiles() { failures.add("referenced blob \(hash) has no file") }
            }
        }

        for t in threads { t.start() }
        // Writers finish on their own; then the janitor and the reader stop.
        while writersDone.load(ordering: .relaxed) < 3 { usleep(50_000) }
        stop.store(true, ordering: .relaxed)
        done.wait()

        #expect(failures.all.isEmpty, "\(failures.all)")
        #expect(gcRuns.load(ordering: .relaxed) > 2 && dedupRuns.load(ordering: .relaxed) == rounds)
        #expect(try store.referencedBlobsMissingFiles().isEmpty)
        // Everything ends consistent and the last janitor run leaves nothing unreferenced.
        for view in views { try view.volume.close() }
        _ = try store.collectGarbage()
        #expect(try store.scalar("""
            SELECT COUNT(*) FROM blob WHERE NOT EXISTS (SELECT 1 FROM template_inode WHERE blob_id = blob.id)
              AND NOT EXISTS (SELECT 1 FROM vm_inode WHERE blob_id = blob.id)
            """) == 0)
        let report = try runFsck(store)
        #expect(report.clean, "\(report.findings)")
    }
}
