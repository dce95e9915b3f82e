import Foundation
import Glibc
import PVFS9P
import PVFS9PCodec
import PVFSEngine
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFSTransport

/// A real Linux guest (Debian's kernel under QEMU/TCG, its own v9fs and 9pnet_fd) mounts a VM
/// served by the socket transport and runs Tests/guest/fixture-init.sh against it
/// (Tests/guest/run-9p-fixture.sh; results in the format of Tests/guest/lib/results.sh). Slow (a minute
/// or two) and needs qemu-system-x86, linux-image-amd64 and busybox-static, so it runs only with
/// PVFS_GUEST_TESTS=1.
@Suite("Linux guest over 9P", .serialized, .tags(.slow),
       .enabled(if: ProcessInfo.processInfo.environment["PVFS_GUEST_TESTS"] == "1"))
struct LinuxGuestTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    @Test(arguments: ["msize=262144", "msize=65536,cache=loose"])
    func guestExercisesTheMount(options: String) throws {
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)])
        try s.start()
        defer { s.finish() }
        let out = "\(Self.repository)/.build/guest-fixture/run-\(getpid())-\(options.isEmpty ? "default" : options)"
        let status = try run(["\(Self.repository)/Tests/guest/run-9p-fixture.sh", String(s.tcpPort), "vm1", out, "400", options])
        let log = (try? String(contentsOfFile: out + "/console.log", encoding: .utf8)) ?? ""
        #expect(status == 0, "the guest run exited with \(status)")
        let results = GuestResults(log)
        #expect(results.failures.isEmpty, "\(results.failures.joined(separator: "\n"))")
        #expect(results.passed >= 50, "only \(results.passed) checks passed:\n\(log.suffix(3000))")
        #expect(results.finished, "the guest did not finish:\n\(log.suffix(3000))")

        // What the guest did, seen from the engine.
        let view = s.fixture.view()
        // Renamed over, hard-linked as a/hard, then truncated to 100000 through the link.
        let moved = try view.readWhole("a/b/moved.txt")
        #expect(moved.count == 100_000 && moved.prefix(2) == [0x78, 0x0A])
        #expect(try view.resolve("a/b/moved.txt").inode == (try view.resolve("a/hard")).inode)
        #expect(String(decoding: try view.readWhole("etc/hostname"), as: UTF8.self) == "guest-host\n")
        #expect(try view.readWhole("big-copy") == TransportFixture.bigContent())
        #expect(try view.readWhole("rand").count == 8 << 20)
        let u = try view.resolve("tmp/u")
        #expect(u.uid == 1000)
        let null = try view.resolve("null")
        #expect(null.kind == .characterDevice)
        #expect(DeviceNumber.major(null.rdev) == 1 && DeviceNumber.minor(null.rdev) == 3)
        #expect(waitUntil(10) { s.server.connectionCount == 0 })
        #expect(s.fixture.openHandleCount == 0)
    }

    /// Runs a program and waits for it (posix_spawn and waitpid: Foundation's Process can hang
    /// when many tests wait for children at once).
    private func run(_ arguments: [String]) throws -> Int32 {
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        let rc = posix_spawn(&pid, arguments[0], nil, nil, argv, environ)
        guard rc == 0 else { throw Errno(rawValue: rc) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw Errno(rawValue: errno) }
        }
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
    }
}

/// The result lines of a guest's serial log (Tests/guest/lib/results.sh):
/// `PVFS-TEST <name> ok|fail|skip <detail>` per check, `PVFS-TEST-DONE` at the end.
struct GuestResults {
    var passed = 0
    var failures: [String] = []
    var finished = false

    init(_ log: String) {
        for line in log.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) {
            guard let start = line.range(of: "PVFS-TEST") else { continue }
            let marker = line[start.lowerBound...]
            if marker.hasPrefix("PVFS-TEST-DONE") {
                finished = true
                continue
            }
            let words = marker.split(separator: " ", maxSplits: 3)
            guard words.count >= 3, words[0] == "PVFS-TEST" else { continue }
            switch words[2] {
            case "ok": passed += 1
            case "skip": break
            default: failures.append(String(marker))
            }
        }
    }
}
