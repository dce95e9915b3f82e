import Foundation
import Glibc
import PVFSTestSupport
import Testing

/// stress-ng's filesystem stressors and fio with data verification against a mount, bounded in
/// time; afterwards the view must still answer and hold what was verified.
@Suite("Stress over FUSE", .serialized, .tags(.slow), .slowTestsOnly)
struct StressTests {
    /// Stressors of stress-ng's filesystem class that apply to a FUSE mount (no bind mounts,
    /// inode flags, fanotify or fs-verity), in groups run one after the other (all of them at
    /// once on two cores measure the scheduler more than the filesystem). xattr and filename are
    /// left out: they probe limits by filling one inode with attributes or one directory with
    /// names, which outlasts any bound.
    static let stressorGroups = [
        ["access", "chdir", "chmod", "chown", "copy-file", "dentry", "dir"],
        ["dirdeep", "dirmany", "fallocate", "fcntl", "flock", "fpunch", "fstat"],
        ["getdent", "hdd", "iomix", "link", "lockf", "lockofd", "mknod"],
        ["open", "rename", "seek", "symlink", "sync-file", "touch", "utime"],
    ]

    @Test func stressNG() throws {
        let f = try FuseFixture()
        try f.provision("s")
        // Served by pvfs-vm mount, as a user mounts.
        let path = try f.mountpoint("s")
        let server = try startForeground(f, "s", path)
        defer {
            kill(server.processIdentifier, SIGTERM)
            server.waitUntilExit()
        }
        #expect(mkdir(path + "/stress", 0o777) == 0)
        for group in Self.stressorGroups {
            // stress-ng stops its stressors after --timeout; the outer bound catches a hang.
            // Some stressors create files in their working directory: give them the fixture's.
            var arguments = ["-C", f.directory, "/usr/bin/timeout", "-k", "30", "180", "/usr/bin/stress-ng",
                             "--temp-path", path + "/stress", "--timeout", "8s", "--verify", "--metrics-brief"]
            for s in group { arguments += ["--\(s)", "1"] }
            let result = try run("/usr/bin/env", arguments)
            if result.status != 0 { print(result.output) }
            #expect(result.status == 0, "stress-ng \(group): \(result.output.suffix(4000))")
            #expect(!result.output.contains("fail"), "\(result.output.suffix(4000))")
        }
        // The view still answers and the template is intact.
        #expect(try readFile(path + "/etc/hostname") == Array("template-host\n".utf8))
        let walk = try run("/usr/bin/find", [path, "-xdev", "-printf", "%i %n %s\n"])
        #expect(walk.status == 0)
    }

    @Test func fioVerifiesWhatItWrote() throws {
        let f = try FuseFixture()
        try f.provision("fio")
        let vm = try f.mount("fio")
        defer { try? vm.unmount() }
        #expect(mkdir(vm.path + "/fio", 0o755) == 0)
        let jobs: [[String]] = [
            ["--name=randwrite", "--rw=randwrite", "--bs=4k", "--size=48m", "--numjobs=2", "--ioengine=psync"],
            ["--name=mixed", "--rw=randrw", "--bsrange=512-64k", "--size=32m", "--ioengine=psync"],
            ["--name=sequential", "--rw=write", "--bs=1m", "--size=64m", "--ioengine=psync", "--fsync=8"],
            ["--name=mmap", "--rw=randwrite", "--bs=8k", "--size=16m", "--ioengine=mmap"],
        ]
        for job in jobs {
            let result = try run("/usr/bin/env", ["-C", f.directory, "/usr/bin/fio"] + job + [
                "--directory=" + vm.path + "/fio", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
                "--verify_state_save=0", "--group_reporting", "--output-format=terse",
            ])
            if result.status != 0 { print(result.output) }
            #expect(result.status == 0, "fio \(job[0]): \(result.output.suffix(3000))")
        }
    }
}
