import Foundation
import GRDB
import Glibc
import PVFSEngine
import PVFSFuse
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFSStore

/// `pvfs-vm mount` / `pvfs-vm umount` as a user runs them, and what a killed mount process leaves.
@Suite("pvfs-vm mount and crashes", .serialized)
struct MountCommandTests {
    static var pvfsVM: String { FuseFixture.binaries + "/pvfs-vm" }

    @Test func mountInBackgroundRefuseBusyAndUnmount() throws {
        let f = try FuseFixture()
        try f.provision("a")
        let first = try f.mountpoint("a")
        let second = try f.mountpoint("a2")
        let mounted = try run(Self.pvfsVM, ["mount", "--store", f.storePath, "a", first])
        #expect(mounted.status == 0, "\(mounted.output)")
        #expect(FuseMount.pvfsMount(at: first)?.vmName == "a")
        #expect(try readFile(first + "/etc/hostname") == Array("template-host\n".utf8))
        try writeFile(first + "/etc/hostname", "through the daemon\n")

        let busy = try run(Self.pvfsVM, ["mount", "--store", f.storePath, "a", second])
        #expect(busy.status == 4)
        #expect(busy.output.contains("in use"), "\(busy.output)")

        let unmounted = try run(Self.pvfsVM, ["umount", "--store", f.storePath, first])
        #expect(unmounted.status == 0, "\(unmounted.output)")
        #expect(FuseMount.pvfsMount(at: first) == nil)
        // The lock is free as soon as umount returns: mounting again works at once.
        let again = try run(Self.pvfsVM, ["mount", "--store", f.storePath, "--read-only", "a", second])
        #expect(again.status == 0, "\(again.output)")
        #expect(try readFile(second + "/etc/hostname") == Array("through the daemon\n".utf8))
        #expect(try run(Self.pvfsVM, ["umount", "--store", f.storePath, second]).status == 0)
    }

    /// `pvfs-vm set-quota` on a VM mounted without pvfsd reaches the mount's process (it reads
    /// the catalog every second): writes past the new quota fail with EDQUOT, and raising it
    /// again lets them through.
    @Test func quotaChangesReachAMountWithoutTheDaemon() throws {
        let f = try FuseFixture()
        try f.provision("a")
        let path = try f.mountpoint("a")
        let mounted = try run(Self.pvfsVM, ["mount", "--store", f.storePath, "a", path])
        #expect(mounted.status == 0, "\(mounted.output)")
        defer { _ = try? run(Self.pvfsVM, ["umount", "--store", f.storePath, path]) }
        try writeFile(path + "/before", String(repeating: "x", count: 100_000))

        func writeRefused(_ name: String) -> Int32 {
            let fd = open(path + "/" + name, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { return errno }
            defer { close(fd) }
            var chunk = [UInt8](repeating: 7, count: 65536)
            if Glibc.write(fd, &chunk, chunk.count) < 0 { return errno }
            return fsync(fd) == 0 ? 0 : errno
        }
        let lowered = try run(Self.pvfsVM, ["set-quota", "--store", f.storePath, "--bytes", "64K", "a"])
        #expect(lowered.status == 0, "\(lowered.output)")
        var failure: Int32 = 0
        let deadline = Date(timeIntervalSinceNow: 5)
        while failure == 0 && Date() < deadline {
            failure = writeRefused("after")
            if failure == 0 { usleep(200_000) }
        }
        #expect(failure == EDQUOT)
        #expect(try run(Self.pvfsVM, ["set-quota", "--store", f.storePath, "--bytes", "none", "a"]).status == 0)
        var accepted = false
        let again = Date(timeIntervalSinceNow: 5)
        while !accepted && Date() < again {
            accepted = writeRefused("later") == 0
            if !accepted { usleep(200_000) }
        }
        #expect(accepted)
    }

    @Test func errorsHaveTheDocumentedExitCodes() throws {
        let f = try FuseFixture()
        let missing = try run(Self.pvfsVM, ["mount", "--store", f.storePath, "nosuchvm", try f.mountpoint("x")])
        #expect(missing.status == 3)
        #expect(missing.output.contains("no VM named nosuchvm"))
        let notMounted = try run(Self.pvfsVM, ["umount", "--store", f.storePath, try f.mountpoint("x")])
        #expect(notMounted.status == 3)
        try f.provision("a")
        let badDirectory = try run(Self.pvfsVM, ["mount", "--store", f.storePath, "a", f.directory + "/does-not-exist"])
        #expect(badDirectory.status == 1)
        #expect(!f.store.isVMInUse(try f.store.requireVM(named: "a")), "a failed mount releases the VM")
    }

    @Test func sigtermUnmountsCleanly() throws {
        let f = try FuseFixture()
        try f.provision("a")
        let path = try f.mountpoint("a")
        let server = try startForeground(f, "a", path)
        try writeFile(path + "/note", "kept\n")
        kill(server.processIdentifier, SIGTERM)
        server.waitUntilExit()
        #expect(server.terminationStatus == 0)
        #expect(FuseMount.pvfsMount(at: path) == nil)
        // Closed cleanly: no recovery needed and the data is there.
        let clean = try CatalogSQL(f.store.catalog).read { db in
            try Int64.fetchOne(db, sql: "SELECT usage_clean FROM vm WHERE name = 'a'")
        }
        #expect(clean == 1)
        let vm = try f.mount("a")
        defer { try? vm.unmount() }
        #expect(try readFile(vm.path + "/note") == Array("kept\n".utf8))
    }

    /// SIGTERM with a file open detaches the mount but keeps serving that file until it is
    /// closed; a second signal aborts at once.
    @Test func sigtermKeepsOpenFilesUntilClosedAndASecondSignalForces() throws {
        let f = try FuseFixture()
        try f.provision("a")
        let path = try f.mountpoint("a")
        var server = try startForeground(f, "a", path)
        var fd = open(path + "/etc/hostname", O_RDONLY)
        #expect(fd >= 0)
        kill(server.processIdentifier, SIGTERM)
        usleep(300_000)
        #expect(server.isRunning)
        #expect(FuseMount.pvfsMount(at: path) == nil, "detached from the namespace")
        var buffer = [UInt8](repeating: 0, count: 64)
        #expect(pread(fd, &buffer, 64, 0) == 14)
        close(fd)
        server.waitUntilExit()
        #expect(server.terminationStatus == 0)

        server = try startForeground(f, "a", path)
        fd = open(path + "/etc/hostname", O_RDONLY)
        kill(server.processIdentifier, SIGTERM)
        usleep(200_000)
        kill(server.processIdentifier, SIGTERM)
        server.waitUntilExit()
        #expect(server.terminationStatus == 0)
        #expect(pread(fd, &buffer, 64, 0) == -1 && errno == ENOTCONN)
        close(fd)
    }

    // MARK: Crashes

    /// kill -9 of the mount process while a write-open copies a large template file up: after
    /// recovery the file is the template's or the changed one, never torn; fsync'd data is there.
    @Test func killDuringCopyUp() throws {
        let f = try FuseFixture(bigFileBytes: 96 << 20)
        var caughtMidCopy = 0
        var expected = [UInt8](repeating: 0, count: f.bigFileBytes)
        for i in 0..<expected.count { expected[i] = FuseFixture.pattern(i) }
        for (attempt, delay) in [0.01, 0.03, 0.06, 0.12, 0.25, 0.5].enumerated() {
            let name = "c\(attempt)"
            let vm = try f.provision(name)
            let path = try f.mountpoint(name)
            let server = try startForeground(f, name, path)
            try writeFile(path + "/durable", "fsynced\n")
            let fd = open(path + "/durable", O_RDWR)
            #expect(fsync(fd) == 0)
            close(fd)

            let writer = Process()
            writer.executableURL = URL(fileURLWithPath: "/bin/dd")
            writer.arguments = ["if=/dev/zero", "of=" + path + "/big", "bs=1", "count=1", "seek=5", "conv=notrunc", "status=none"]
            writer.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try writer.run()
            usleep(useconds_t(delay * 1_000_000))
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
            let scratch = (try? FileManager.default.contentsOfDirectory(atPath: "\(f.storePath)/vms/\(vm.id)/tmp")) ?? []
            if scratch.contains(where: { $0.hasPrefix("copyup-") }) { caughtMidCopy += 1 }
            writer.waitUntilExit()
            #expect(umount2(path, Int32(MNT_DETACH)) == 0)

            let mounted = try f.mount(name)
            let big = try readFile(mounted.path + "/big")
            #expect(big.count == f.bigFileBytes)
            var written = expected
            written[5] = 0
            func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
                a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { memcmp(x.baseAddress!, $0.baseAddress!, x.count) == 0 } }
            }
            let torn = !same(big, expected) && !same(big, written)
            #expect(!torn, "attempt \(attempt): /big is neither the template's nor the written version")
            #expect(try readFile(mounted.path + "/durable") == Array("fsynced\n".utf8))
            try mounted.unmount()
            try expectConsistent(f, vmID: vm.id)
        }
        print("copy-up crash: killed mid copy-up in \(caughtMidCopy) of 6 attempts")
        #expect(caughtMidCopy > 0, "no attempt killed the mount during a copy-up")
    }

    /// kill -9 during a stream of renames (files and a template directory): every entry is under
    /// its old name or its new one, exactly once, with its content.
    @Test(.tags(.slow), .slowTestsOnly) func killDuringRenames() throws {
        let f = try FuseFixture()
        for attempt in 0..<3 {
            let name = "r\(attempt)"
            let vm = try f.provision(name)
            let path = try f.mountpoint(name)
            let server = try startForeground(f, name, path)
            #expect(mkdir(path + "/names", 0o755) == 0)
            let count = 400
            for i in 0..<count { try writeFile("\(path)/names/n\(i)", "\(i)\n") }
            let script = """
                import os, sys
                p = sys.argv[1]
                try:
                    for i in range(\(count)):
                        os.rename(f"{p}/names/n{i}", f"{p}/names/m{i}")
                        if i % 10 == 0:
                            src, dst = (f"{p}/usr", f"{p}/usr2") if os.path.exists(f"{p}/usr") else (f"{p}/usr2", f"{p}/usr")
                            os.rename(src, dst)
                except OSError:
                    pass
                """
            let renamer = Process()
            renamer.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            renamer.arguments = ["python3", "-c", script, path]
            try renamer.run()
            usleep(useconds_t([40_000, 120_000, 250_000][attempt]))
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
            renamer.waitUntilExit()
            #expect(umount2(path, Int32(MNT_DETACH)) == 0)

            let mounted = try f.mount(name)
            let names = Set(try FileManager.default.contentsOfDirectory(atPath: mounted.path + "/names"))
            #expect(names.count == count)
            for i in 0..<count {
                let old = names.contains("n\(i)"), new = names.contains("m\(i)")
                #expect(old != new, "entry \(i): old \(old), new \(new)")
                let file = mounted.path + "/names/" + (old ? "n\(i)" : "m\(i)")
                #expect(try readFile(file) == Array("\(i)\n".utf8))
            }
            let usr = access(mounted.path + "/usr", F_OK) == 0, usr2 = access(mounted.path + "/usr2", F_OK) == 0
            #expect(usr != usr2)
            #expect(try readFile(mounted.path + (usr ? "/usr" : "/usr2") + "/share/doc/deep/readme") == Array("deep\n".utf8))
            try mounted.unmount()
            try expectConsistent(f, vmID: vm.id)
        }
    }

    // MARK: Helpers

    /// After recovery and a clean close: no staging leftovers, every private data file named by
    /// the catalog and every catalog reference resolvable, and SQLite's own check passes.
    func expectConsistent(_ f: FuseFixture, vmID: Int64) throws {
        let vmDir = "\(f.storePath)/vms/\(vmID)"
        #expect(try FileManager.default.contentsOfDirectory(atPath: vmDir + "/tmp").isEmpty)
        let (integrity, privateInodes, danglingEntries, clean) = try CatalogSQL(f.store.catalog).read { db in
            (try String.fetchOne(db, sql: "PRAGMA integrity_check"),
             Set(try Int64.fetchAll(db, sql: "SELECT ino FROM vm_inode WHERE vm_id = ? AND data = 2", arguments: [vmID])),
             try Int64.fetchOne(db, sql: """
                SELECT count(*) FROM vm_dirent d WHERE d.vm_id = ? AND d.ino != 0
                  AND NOT EXISTS (SELECT 1 FROM vm_inode i WHERE i.vm_id = d.vm_id AND i.ino = d.ino)
                  AND d.ino > (SELECT max_inode FROM template t JOIN vm ON vm.template_id = t.id WHERE vm.id = d.vm_id)
                """, arguments: [vmID]),
             try Int64.fetchOne(db, sql: "SELECT usage_clean FROM vm WHERE id = ?", arguments: [vmID]))
        }
        #expect(integrity == "ok")
        #expect(danglingEntries == 0)
        #expect(clean == 1)
        var onDisk = Set<Int64>()
        for shard in (try? FileManager.default.contentsOfDirectory(atPath: vmDir + "/data")) ?? [] {
            for file in try FileManager.default.contentsOfDirectory(atPath: vmDir + "/data/" + shard) {
                onDisk.insert(Int64(file) ?? -1)
            }
        }
        #expect(onDisk == privateInodes)
    }
}
