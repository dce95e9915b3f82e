import Foundation
import Glibc
import Testing

/// One loaded phase's load run by a child process: this test binary again, running only
/// `HostileTenantTests.loadInAChildProcess`. On a host each guest is a QEMU process of its own
/// (in a cgroup of its own, of the same weight as the others'); the child runs in a session of
/// its own (setsid), so the kernel puts it in a scheduling group (autogroup) of its own as
/// well, of the same weight as the test's (whose group pvfsd shares). Its client threads thus
/// compete with the victim's client as a guest's would, not as threads of the victim's own
/// process. The child and its group run at nice `niceValue` (19 unless
/// `PVFS_HOSTILE_LOAD_NICE` says otherwise; 20: SCHED_IDLE, which any other thread preempts at
/// its wakeup), as a low-priority guest's QEMU would: what the victim then loses is pvfsd's
/// doing, not the host scheduler's sharing of the CPU with the load generator.
final class ChildLoad {
    static let environmentKey = "PVFS_HOSTILE_CHILD_LOAD"
    static let niceValue = ProcessInfo.processInfo.environment["PVFS_HOSTILE_LOAD_NICE"].flatMap { Int32($0) }.map { max(0, min(20, $0)) } ?? 19
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var buffered: [UInt8] = []

    init(port: UInt16, load: HostileTenantTests.Load, seed: UInt64) throws {
        // setsid(1) forks when it has to (Process makes the child a process group leader, which
        // cannot start a session) and waits: closing the pipes still reaches the load.
        // nice(1) first, so that every thread of the load inherits it.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/nice")
        process.arguments = ["-n", "\(min(19, Self.niceValue))"] + (Self.niceValue == 20 ? ["/usr/bin/chrt", "--idle", "0"] : [])
            + ["/usr/bin/setsid", "--wait", URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path,
               "--testing-library", "swift-testing", "--filter", "HostileTenantTests/loadInAChildProcess"]
        var environment = ProcessInfo.processInfo.environment
        environment[Self.environmentKey] = "\(port) \(load) \(seed)"
        process.environment = environment
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        guard let ready = try line(startingWith: "hostile-load: ready") else {
            throw TestSupportError("the child load did not start")
        }
        // "hostile-load: ready /autogroup-N nice 0": not the test's own scheduling group.
        let own = (try? String(contentsOfFile: "/proc/self/autogroup", encoding: .utf8)) ?? ""
        let group = ready.dropFirst("hostile-load: ready ".count).split(separator: " ").first.map(String.init) ?? ""
        guard !group.isEmpty, !own.hasPrefix(group + " ") else {
            throw TestSupportError("the child load runs in the test's scheduling group (\(own))")
        }
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// The next line of the child's output that starts with `prefix` (nil at its end).
    private func line(startingWith prefix: String) throws -> String? {
        let fd = output.fileHandleForReading.fileDescriptor
        while true {
            while let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let text = String(decoding: buffered[..<newline], as: UTF8.self)
                buffered.removeSubrange(...newline)
                if let start = text.range(of: prefix) { return String(text[start.lowerBound...]) }
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            buffered += chunk[..<n]
        }
    }

    /// Ends the load (closing the child's stdin) and returns what its flood counted.
    func stop() throws -> (replies: Int, connections: Int, refusedAtTheCap: Int, problems: [String]) {
        try input.fileHandleForWriting.close()
        var problems: [String] = []
        var counts = (0, 0, 0)
        while let text = try line(startingWith: "hostile-load: ") {
            let words = text.split(separator: " ")
            if words.count == 5 && words[1] == "counts" {
                counts = (Int(words[2]) ?? 0, Int(words[3]) ?? 0, Int(words[4]) ?? 0)
            } else if words.count > 2 && words[1] == "problem" {
                problems.append(words.dropFirst(2).joined(separator: " "))
            }
        }
        process.waitUntilExit()
        if process.terminationStatus != 0 { problems.append("the child load exited \(process.terminationStatus)") }
        return (counts.0, counts.1, counts.2, problems)
    }
}

extension HostileTenantTests {
    /// The child's side of `ChildLoad`: runs one load until its stdin closes, then prints its
    /// counts and problems. Runs only in a child (`PVFS_HOSTILE_CHILD_LOAD`).
    @Test(.enabled(if: environment[ChildLoad.environmentKey] != nil))
    func loadInAChildProcess() throws {
        let words = (Self.environment[ChildLoad.environmentKey] ?? "").split(separator: " ").map(String.init)
        guard words.count == 3, let port = UInt16(words[0]), let load = Load.allCases.first(where: { "\($0)" == words[1] }),
              let seed = UInt64(words[2]) else {
            Issue.record("bad \(ChildLoad.environmentKey)")
            return
        }
        // The scheduling group's own weight: between groups, the group's nice counts, not the threads'.
        if ChildLoad.niceValue > 0, let group = FileHandle(forWritingAtPath: "/proc/self/autogroup") {
            group.write(Data("\(min(19, ChildLoad.niceValue))".utf8))
            try? group.close()
        }
        let flood = load.flood.map { TenantFlood(port: port, shape: $0, seed: seed) }
        let spinning = StopFlag()
        let spinners = DispatchGroup()
        if let flood {
            flood.start()
            // Ready once the flood flows (a reply or an attach): at nice 19 on a busy machine
            // the load may take a while to get going, and a phase without it measures nothing.
            let deadline = Date(timeIntervalSinceNow: 10)
            while flood.counts.replies + flood.counts.connections == 0 && Date() < deadline { usleep(10_000) }
        } else {
            HostileTenantTests.spin(threads: 4, until: spinning, group: spinners)
        }
        let group = (try? String(contentsOfFile: "/proc/self/autogroup", encoding: .utf8)) ?? "none"
        print("hostile-load: ready \(group.trimmingCharacters(in: .whitespacesAndNewlines))")
        fflush(nil)
        var byte: UInt8 = 0
        while read(0, &byte, 1) > 0 {}
        spinning.set()
        spinners.wait()
        flood?.stop()
        print("hostile-load: counts \(flood?.counts.replies ?? 0) \(flood?.counts.connections ?? 0) \(flood?.attachesRefusedAtTheCap ?? 0)")
        for problem in flood?.problems ?? [] { print("hostile-load: problem \(problem.replacingOccurrences(of: "\n", with: " "))") }
        fflush(nil)
    }

    /// CPU-bound threads that never touch pvfsd, until `flag` is set.
    static func spin(threads: Int, until flag: StopFlag, group: DispatchGroup) {
        for _ in 0..<threads {
            group.enter()
            Thread {
                defer { group.leave() }
                var x: UInt64 = 1
                while !flag.isSet { for _ in 0..<100_000 { x = x &* 6364136223846793005 &+ 1 } }
                if x == 0 { print("") }
            }.start()
        }
    }
}
