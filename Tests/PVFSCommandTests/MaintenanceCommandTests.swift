import Foundation
import Glibc
import Logging
import PVFSDaemon
import PVFSEngine
import PVFSEngineTestSupport
import PVFSStore
import PVFSSystem
import PVFSTestSupport
import Synchronization
import Testing

/// `pvfs dedup`, `gc`, `fsck`, `df` and `status` as a user runs them, with and without a daemon,
/// and killed at random points.
@Suite("pvfs maintenance commands", .serialized)
struct MaintenanceCommandTests {
    /// A store with template "base" (from a seeded tree) and VMs that wrote the same files.
    func makeStore(_ area: TemporaryDirectory, vms: [String], files: Int = 12, bytes: Int = 40_000) throws -> String {
        let store = area.sub("store")
        let src = area.sub("src")
        try makeSeededTree(at: src, files: 40, size: 10_000, seed: 99)
        try mustRun("pvfs-template", ["create", "base", "--from", src, "--store", store])
        for vm in vms {
            // Without hooks: their files (hostname, keys) are unique per VM and would blur the counts.
            try mustRun("pvfs-vm", ["provision", "--template", "base", vm, "--no-hooks", "--store", store])
            try mustRun("pvfs-bench-writer", [store, vm, "\(files)", "\(bytes)", "5"])
        }
        return store
    }

    @Test func dedupGcFsckDfAndStatusFromTheCommandLine() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area, vms: ["a", "b", "c"])
        let help = try mustRun("pvfs", ["--help"])
        for sub in ["dedup", "gc", "fsck", "df", "status"] { #expect(help.stdout.contains(sub)) }
        #expect(try runTool("pvfs", ["dedup", "--store", store]).status != 0)  // needs --vm or --all

        let dry = try parseJSON(try mustRun("pvfs", ["dedup", "--all", "--dry-run", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(dry["filesDeduplicated"] as? Int == 36)
        let done = try parseJSON(try mustRun("pvfs", ["dedup", "--all", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(done["filesDeduplicated"] as? Int == 36 && done["newBlobs"] as? Int == 12)
        #expect((done["bytesSaved"] as? Int ?? 0) > 2 * 12 * 40_000 * 9 / 10)
        let again = try parseJSON(try mustRun("pvfs", ["dedup", "--all", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(again["filesDeduplicated"] as? Int == 0)

        let df = try parseJSON(try mustRun("pvfs", ["df", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(df["privateAllocatedBytes"] as? Int == 0)
        #expect((df["savingsRatio"] as? Double ?? 0) > 2)
        #expect(try mustRun("pvfs", ["df", "--store", store]).stdout.contains("savings ratio"))

        try mustRun("pvfs-vm", ["rm", "b", "--store", store])
        try mustRun("pvfs-vm", ["rm", "c", "--store", store])
        let gcDry = try parseJSON(try mustRun("pvfs", ["gc", "--dry-run", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(gcDry["blobsRemoved"] as? Int == 0)  // a still uses them
        try mustRun("pvfs-vm", ["rm", "a", "--store", store])
        let gc = try parseJSON(try mustRun("pvfs", ["gc", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(gc["blobsRemoved"] as? Int == 12)
        let fsck = try mustRun("pvfs", ["fsck", "--store", store])
        #expect(fsck.stdout.contains("clean"))
        let status = try mustRun("pvfs", ["status", "--store", store])
        #expect(status.stdout.contains("pvfsd: not running") && status.stdout.contains("templates:   1"))
        #expect(try runTool("pvfs", ["fsck", "--store", area.sub("nowhere")]).status == 3)
    }

    @Test func servedVMsAreDeduplicatedAndCheckedThroughTheDaemon() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area, vms: ["a", "b"])
        var logger = Logger(label: "test.pvfsd")
        logger.logLevel = .warning
        let daemon = try Daemon(configuration: DaemonConfiguration(storePath: store), logger: logger)
        daemon.installMaintenance()
        try daemon.start()
        defer { daemon.stop() }
        let view = try daemon.registry.openSession(vm: "a", policy: SessionPolicy(side: .host))
        defer { daemon.registry.closeSession(view) }

        let status = try parseJSON(try mustRun("pvfs", ["status", "--json", "--store", store]).stdout) as! [String: Any]
        let served = (status["daemon"] as? [String: Any])?["servedVMs"] as? [[String: Any]]
        #expect(served?.map { $0["name"] as? String } == ["a"])
        #expect((status["daemon"] as? [String: Any])?["pid"] as? Int32 == getpid())

        // a through the daemon, b opened by the command itself.
        let done = try parseJSON(try mustRun("pvfs", ["dedup", "--all", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(done["filesDeduplicated"] as? Int == 24)
        #expect(try #require(daemon.registry.volume(named: "a")).privateFiles(minimumSize: 1).isEmpty)
        for n in 0..<12 {
            #expect(try view.readWhole("bench/f\(n)") == benchContent(seed: 5, file: n, bytes: 40_000))
        }
        // A write through the session copies that file up again, for a only.
        let ino = try view.lookup(try view.lookup(1, Array("bench".utf8), as: .root).inode, Array("f0".utf8), as: .root).inode
        let handle = try view.open(ino, flags: O_WRONLY, as: .root)
        _ = try view.write(handle, offset: 0, bytes: Array("mine".utf8), as: .root)
        view.release(handle)
        try withVM(try Store(path: store, create: false), "b") { (b: VMView) throws -> Void in
            #expect(try b.readWhole("bench/f0") == benchContent(seed: 5, file: 0, bytes: 40_000))
        }

        // fsck asks the daemon about a; both are checked, nothing is skipped.
        let fsck = try parseJSON(try mustRun("pvfs", ["fsck", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(fsck["vmsChecked"] as? Int == 2)
        #expect((fsck["skipped"] as? [String])?.isEmpty == true)
        // An orphaned private file of the served VM is removed by the daemon on --repair.
        let vmID = try Store(path: store, create: false).requireVM(named: "a").id
        let path = "\(store)/" + StoreLayout.privateFilePath(vm: vmID, inode: 7777)
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try write(path, [1, 2, 3])
        #expect(try runTool("pvfs", ["fsck", "--store", store]).status == 5)
        #expect(try runTool("pvfs", ["fsck", "--repair", "--store", store]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(try runTool("pvfs", ["fsck", "--store", store]).status == 0)
    }

    @Test func vmsHeldByAnotherProcessAreSkipped() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area, vms: ["a", "b", "c"], files: 3, bytes: 20_000)
        // This process holds c (as a FUSE mount would); no daemon runs.
        let volume = try Volume.open(store: try Store(path: store, create: false), vmName: "c")
        defer { try? volume.close() }
        let dedup = try runTool("pvfs", ["dedup", "--all", "--json", "--store", store])
        #expect(dedup.status == 4)
        #expect(dedup.stderr.contains("VM c skipped") && dedup.stderr.contains("FUSE mount"))
        let report = try parseJSON(dedup.stdout) as! [String: Any]
        #expect(report["filesDeduplicated"] as? Int == 6)
        #expect(volume.privateFiles(minimumSize: 1).count == 3)
        let fsck = try runTool("pvfs", ["fsck", "--store", store])
        #expect(fsck.status == 0 && fsck.stdout.contains("[SKIPPED] vm c"))
    }

    @Test func daemonRunsTheJanitorPeriodically() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area, vms: ["a", "b"], files: 4, bytes: 20_000)
        try mustRun("pvfs", ["dedup", "--all", "--store", store])
        try mustRun("pvfs-vm", ["rm", "a", "--store", store])
        try mustRun("pvfs-vm", ["rm", "b", "--store", store])
        var logger = Logger(label: "test.pvfsd")
        logger.logLevel = .warning
        let daemon = try Daemon(configuration: DaemonConfiguration(storePath: store, janitorIntervalSeconds: 1), logger: logger)
        daemon.installMaintenance()
        try daemon.start()
        defer { daemon.stop() }
        let client = DaemonClient(storePath: store)
        var report: JanitorReport?
        for _ in 0..<100 where report == nil {
            usleep(100_000)
            report = try client.maintenance("janitor-report").janitor
        }
        let run = try #require(report)
        #expect(run.blobsRemoved == 4 && !run.deferred)
        #expect(try mustRun("pvfs", ["status", "--store", store]).stdout.contains("janitor:     last run reclaimed"))
        #expect(try Store(path: store, create: false).summary().blobs == 40)
    }

    /// The same race as the engine's concurrency test, across processes: `pvfs gc` in a loop
    /// while templates are created and removed, VMs written and deduplicated.
    @Test func gcRacesIngestAndDedupAcrossProcesses() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area, vms: ["a", "b"], files: 4, bytes: 30_000)
        let src2 = area.sub("src2")
        // Shares content with the VMs' files (seed 5) and the base template (seed 99).
        try makeSeededTree(at: src2, files: 40, size: 10_000, seed: 99)
        for n in 0..<4 { try write("\(src2)/w\(n)", benchContent(seed: 5, file: n, bytes: 30_000)) }
        let stop = DispatchSemaphore(value: 0)
        let gc = Mutex<(runs: Int, failures: [String])>((0, []))
        let janitor = Thread {
            while stop.wait(timeout: .now()) == .timedOut {
                do {
                    let r = try runTool("pvfs", ["gc", "--wait", "30", "--store", store])
                    gc.withLock {
                        if r.status != 0 { $0.failures.append("gc exited \(r.status): \(r.stderr)") }
                        $0.runs += 1
                    }
                } catch {
                    gc.withLock { $0.failures.append("\(error)") }
                    return
                }
            }
        }
        janitor.start()
        var written: [(dir: String, seed: UInt64)] = [("bench", 5)]
        for round in 0..<5 {
            try mustRun("pvfs-template", ["create", "t\(round)", "--from", src2, "--store", store])
            if round > 0 { try mustRun("pvfs-template", ["rm", "t\(round - 1)", "--store", store]) }
            for vm in ["a", "b"] {
                try mustRun("pvfs-bench-writer", [store, vm, "4", "30000", "\(round + 10)", "r\(round)"])
            }
            written.append(("r\(round)", UInt64(round + 10)))
            try mustRun("pvfs", ["dedup", "--all", "--store", store])
        }
        stop.signal()
        while janitor.isExecuting { usleep(20_000) }
        let (runs, failures) = gc.withLock { ($0.runs, $0.failures) }
        #expect(failures.isEmpty, "\(failures)")
        #expect(runs > 0)
        let fsck = try runTool("pvfs", ["fsck", "--store", store])
        #expect(fsck.status == 0, "\(fsck.stdout)")
        let s = try Store(path: store, create: false)
        for vm in ["a", "b"] {
            try withVM(s, vm) { (v: VMView) throws -> Void in
                for set in written {
                    for n in 0..<4 { #expect(try v.readWhole("\(set.dir)/f\(n)") == benchContent(seed: set.seed, file: n, bytes: 30_000)) }
                }
            }
        }
    }

    /// kill -9 of `pvfs gc`, `pvfs dedup` and `pvfs-template create` at random points: fsck then
    /// finds nothing, or only what --repair fixes (never lost data), every file reads back right,
    /// and running the command again finishes its work.
    @Test(.tags(.slow), .slowTestsOnly) func killedMaintenanceLeavesARepairableStore() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area, vms: ["a", "b"], files: 16, bytes: 64_000)
        let src2 = area.sub("src2")
        try makeSeededTree(at: src2, files: 400, size: 16_000, seed: 1234)
        var generator = SystemRandomNumberGenerator()
        var findings: [String: Int] = [:]
        var killedRunning = 0
        var round = 0
        let iterations = Int(ProcessInfo.processInfo.environment["PVFS_CRASH_ITERATIONS"] ?? "") ?? 8
        var written: [String: [(dir: String, seed: UInt64, files: Int)]] = ["a": [("bench", 5, 16)], "b": [("bench", 5, 16)]]

        func kill(_ tool: String, _ arguments: [String], maxDelay: UInt32) throws {
            let process = try startTool(tool, arguments)
            usleep(UInt32.random(in: 0...maxDelay, using: &generator))
            if process.isRunning { killedRunning += 1 }
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }

        func checkAndRepair(_ what: String) throws {
            let first = try runTool("pvfs", ["fsck", "--json", "--store", store])
            #expect(first.status == 0 || first.status == 5, "\(what): fsck exited \(first.status): \(first.stderr)")
            let report = try parseJSON(first.stdout) as! [String: Any]
            for finding in report["findings"] as? [[String: Any]] ?? [] {
                let kind = finding["kind"] as? String ?? "?"
                findings[kind, default: 0] += 1
                #expect(finding["status"] as? String == "found", "\(what): \(finding)")
            }
            if first.status == 5 {
                let repair = try runTool("pvfs", ["fsck", "--repair", "--store", store])
                #expect(repair.status == 0, "\(what): fsck --repair exited \(repair.status): \(repair.stdout)")
                let after = try runTool("pvfs", ["fsck", "--store", store])
                #expect(after.status == 0, "\(what): fsck after repair: \(after.stdout)")
            }
            // Every file of every VM reads back as written; template files too.
            let s = try Store(path: store, create: false)
            for (vm, sets) in written {
                try withVM(s, vm) { (v: VMView) throws -> Void in
                    for set in sets {
                        for n in 0..<set.files {
                            #expect(try v.readWhole("\(set.dir)/f\(n)") == benchContent(seed: set.seed, file: n, bytes: 64_000), "\(what): \(vm)/\(set.dir)/f\(n)")
                        }
                    }
                    #expect(try v.readWhole("d3/f3") == benchContent(seed: 99, file: 3, bytes: 10_000))
                }
            }
        }

        for iteration in 0..<iterations {
            // dedup: fresh identical files in both VMs, then a killed run.
            round += 1
            for vm in ["a", "b"] {
                try mustRun("pvfs-bench-writer", [store, vm, "16", "64000", "\(100 + round)", "r\(round)"])
                written[vm, default: []].append(("r\(round)", 100 + UInt64(round), 16))
            }
            try kill("pvfs", ["dedup", "--all", "--store", store], maxDelay: 250_000)
            try checkAndRepair("dedup #\(iteration)")

            // gc: garbage from a VM that deduplicated its own files and was removed.
            try mustRun("pvfs-vm", ["provision", "--template", "base", "g\(iteration)", "--store", store])
            for dir in ["x", "y"] {
                try mustRun("pvfs-bench-writer", [store, "g\(iteration)", "16", "64000", "\(500 + iteration)", dir])
            }
            try mustRun("pvfs", ["dedup", "--vm", "g\(iteration)", "--store", store])
            try mustRun("pvfs-vm", ["rm", "g\(iteration)", "--store", store])
            try kill("pvfs", ["gc", "--store", store], maxDelay: 150_000)
            try checkAndRepair("gc #\(iteration)")

            // template create: killed mid-ingest, then created for real.
            try kill("pvfs-template", ["create", "t\(iteration)", "--from", src2, "--store", store], maxDelay: 400_000)
            try checkAndRepair("create #\(iteration)")
            // The kill may land after the template was committed: then it exists, complete.
            if try runTool("pvfs-template", ["show", "t\(iteration)", "--store", store]).status != 0 {
                try mustRun("pvfs-template", ["create", "t\(iteration)", "--from", src2, "--store", store])
            }
            try mustRun("pvfs-template", ["rm", "t\(iteration)", "--store", store])
        }

        // Second runs finish the work.
        try mustRun("pvfs", ["dedup", "--all", "--store", store])
        let rest = try parseJSON(try mustRun("pvfs", ["dedup", "--all", "--dry-run", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(rest["filesDeduplicated"] as? Int == 0)
        try mustRun("pvfs", ["gc", "--store", store])
        let gcAgain = try parseJSON(try mustRun("pvfs", ["gc", "--json", "--store", store]).stdout) as! [String: Any]
        #expect(gcAgain["blobsRemoved"] as? Int == 0 && gcAgain["orphanFilesRemoved"] as? Int == 0)
        #expect(try runTool("pvfs", ["fsck", "--store", store]).status == 0)
        try checkAndRepair("final")
        print("crash loop: \(iterations * 3) kills (\(killedRunning) while running); fsck findings before repair: \(findings.sorted { $0.key < $1.key })")
    }
}
