import Foundation
import Glibc
import PVFS9P
import PVFS9PCodec
import PVFSEngineTestSupport
import PVFSTestSupport
import Synchronization
import SystemPackage
import Testing

/// The catalog survives everything the daemon and the commands do.
///
/// Each round starts pvfsd (commit mode sync or grouped, the janitor every second), checks that
/// every file fsync'd in earlier rounds is there with its content, then runs at once:
///
/// - a 9P client writing files with fsync, renaming and removing some (VM t1);
/// - `pvfs-vm mount` of VM t2 through pvfsd, files written and fsync'd there, `pvfs-vm umount`;
/// - two threads of commands beside pvfsd: reads (`pvfs-vm list/show`, `pvfs df`,
///   `pvfs status`, `pvfs fsck`), `pvfs dedup --all` and `pvfs gc`;
///
/// and stops pvfsd at a random moment with SIGTERM or SIGKILL. After each round
/// `PRAGMA integrity_check` (python3's sqlite3, read-only) must say ok and `pvfs fsck` must find
/// nothing but what a killed process leaves (and repair that).
///
/// `PVFS_CATALOG_TORTURE_ROUNDS` sets the number of rounds (default 10, about 30 s; a soak runs
/// hundreds), `PVFS_CATALOG_TORTURE_SEED` replays a run's random choices.
/// Slow: runs with PVFS_SLOW_TESTS=1 (scripts/test sets it).
@Suite("catalog torture", .serialized, .tags(.slow), .slowTestsOnly)
struct CatalogTortureTests {
    @Test(.enabled(if: geteuid() == 0, "needs root: FUSE mounts through pvfsd"))
    func catalogSurvivesTheDaemonAndTheCommands() throws {
        let environment = ProcessInfo.processInfo.environment
        let rounds = max(1, environment["PVFS_CATALOG_TORTURE_ROUNDS"].flatMap { Int($0) } ?? 10)
        let seed = environment["PVFS_CATALOG_TORTURE_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)
        print("catalog torture: \(rounds) rounds, PVFS_CATALOG_TORTURE_SEED=\(seed)")
        let torture = try CatalogTorture(seed: seed)
        defer { torture.tearDown() }
        for round in 1...rounds {
            let problems = try torture.runRound(round)
            print("catalog torture: round \(round): \(torture.lastRoundDescription): \(problems.isEmpty ? "ok" : "FAILED")")
            guard problems.isEmpty else {
                let report = problems.joined(separator: "\n") + "\npvfsd's log ends:\n" + torture.tail(torture.daemonLog)
                Issue.record("round \(round) (seed \(seed), \(torture.lastRoundDescription)):\n\(report)")
                return
            }
        }
        let problems = try torture.finish()
        let report = problems.joined(separator: "\n")
        #expect(problems.isEmpty, "after the last round (seed \(seed)):\n\(report)")
        print("catalog torture: \(rounds) rounds passed (\(torture.summary))")
    }
}

/// Tells a round's workers to stop.
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }
    func set() { flag.store(true, ordering: .relaxed) }
}

/// SplitMix64: random choices that a seed replays.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// What a VM must hold: files fsync'd since, and operations since the last fsync whose outcome
/// a crash leaves open.
struct AcknowledgedFiles {
    enum Operation {
        case create(path: String, content: [UInt8])
        case rename(from: String, to: String, content: [UInt8])
        case unlink(path: String, content: [UInt8])
    }

    struct Pending {
        var operation: Operation
        /// Its reply arrived.
        var acknowledged = false
        /// The catalog had it at the reply: commit mode sync, or pvfsd stopped cleanly after.
        var committedAtReply = false
    }

    /// Files fsync'd (with every operation before the fsync): they must be there, whatever happens.
    var durable: [String: [UInt8]] = [:]
    /// Files whose removal was followed by an fsync: they must stay away.
    var removed: Set<String> = []
    var pending: [Pending] = []
    var fsyncs = 0

    var touched: Set<String> {
        var paths = Set<String>()
        for p in pending {
            switch p.operation {
            case .create(let path, _), .unlink(let path, _): paths.insert(path)
            case .rename(let from, let to, _): paths.formUnion([from, to])
            }
        }
        return paths
    }

    /// Durable files no pending operation touches (to rename or remove), in order.
    var untouchedDurable: [(path: String, content: [UInt8])] {
        let busy = touched
        return durable.filter { !busy.contains($0.key) }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// An fsync returned: everything before it is in the catalog.
    mutating func synced() {
        for p in pending {
            switch p.operation {
            case .create(let path, let content):
                durable[path] = content
                removed.remove(path)
            case .rename(let from, let to, let content):
                durable[from] = nil
                removed.insert(from)
                durable[to] = content
                removed.remove(to)
            case .unlink(let path, _):
                durable[path] = nil
                removed.insert(path)
            }
        }
        pending = []
        fsyncs += 1
    }

    /// Checks the VM's files against what was acknowledged (`read` gives a file's content, nil
    /// when it does not exist), then takes what was found as the new starting point.
    mutating func verify(_ vm: String, read: (String) throws -> [UInt8]?) throws -> [String] {
        var problems: [String] = []
        let busy = touched
        for (path, content) in durable.sorted(by: { $0.key < $1.key }) where !busy.contains(path) {
            let found = try read(path)
            if found == nil {
                problems.append("\(vm): \(path) was fsync'd and is gone")
            } else if found != content {
                problems.append("\(vm): \(path) was fsync'd with \(content.count) bytes and reads \(found!.count) other bytes")
            }
        }
        for path in removed.sorted() where !busy.contains(path) {
            if try read(path) != nil { problems.append("\(vm): \(path) was removed (and fsync'd after) and is back") }
        }
        for p in pending {
            let certain = p.acknowledged && p.committedAtReply
            switch p.operation {
            case .create(let path, let content):
                let found = try read(path)
                if let found {
                    if found.count > content.count || Array(content.prefix(found.count)) != found {
                        problems.append("\(vm): \(path), created and not fsync'd, holds bytes that were never written")
                    } else if found == content {
                        durable[path] = content
                    }
                } else if certain {
                    problems.append("\(vm): \(path) was created (acknowledged, committed at the reply) and is gone")
                }
            case .rename(let from, let to, let content):
                let (a, b) = (try read(from), try read(to))
                switch (a, b) {
                case (nil, .some(let x)) where x == content:
                    durable[from] = nil
                    removed.insert(from)
                    durable[to] = content
                case (.some(let x), nil) where x == content && !certain:
                    break
                default:
                    problems.append("\(vm): rename \(from) -> \(to)\(certain ? " (acknowledged)" : ""): found \(a.map { "\($0.count) bytes" } ?? "nothing") at \(from) and \(b.map { "\($0.count) bytes" } ?? "nothing") at \(to)")
                }
            case .unlink(let path, let content):
                let found = try read(path)
                if found == nil {
                    durable[path] = nil
                    removed.insert(path)
                } else if found != content || certain {
                    problems.append("\(vm): \(path), removed\(certain ? " (acknowledged)" : ""), reads \(found!.count) bytes")
                }
            }
        }
        pending = []
        return problems
    }
}

/// The files a worker writes: over 9P or through a FUSE mount.
protocol TortureFiles: AnyObject {
    func makeDirectory(_ path: String) throws
    /// Creates `path` (new), writes `content`, fsyncs; `created` runs once the create is acknowledged.
    func createWritingAndSyncing(_ path: String, _ content: [UInt8], created: () -> Void) throws
    func rename(_ from: String, _ to: String) throws
    func unlink(_ path: String) throws
}

/// A 9P2000.L session with pvfsd over its Unix socket, root on one VM.
final class NinePSession: TortureFiles, @unchecked Sendable {
    let fd: Int32
    let client: NinePClient
    private let stream: SocketStream
    private var nextFid: UInt32 = 1

    init(socket path: String, vm: String) throws {
        let descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw Errno(rawValue: errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let error = Errno(rawValue: errno)
            Glibc.close(descriptor)
            throw error
        }
        fd = descriptor
        let stream = SocketStream(descriptor)
        self.stream = stream
        client = NinePClient(send: { try stream.send($0) }, receive: { try stream.receive() })
        do {
            _ = try client.version()
            _ = try client.attach(fid: 0, aname: vm, uname: "root", uid: 0)
        } catch {
            close()
            throw error
        }
    }

    /// Ends the session; the descriptor is closed once the client's reader is done with it (a
    /// number closed under a reader could be reused by the next session's socket).
    func close() {
        shutdown(fd, Int32(SHUT_RDWR))
        if stream.finished.wait(timeout: .now() + 10) == .success { Glibc.close(fd) }
    }

    private func fid() -> UInt32 {
        nextFid += 1
        return nextFid
    }

    private func split(_ path: String) -> (directory: String, name: String) {
        let parts = path.split(separator: "/").map(String.init)
        return (parts.dropLast().joined(separator: "/"), parts.last ?? "")
    }

    /// A new fid for `path`; ENOENT when a name on the way is missing (a partial walk makes no fid).
    private func walk(_ path: String) throws -> UInt32 {
        let f = fid()
        let names = path.split(separator: "/").count
        guard try client.walk(fid: 0, newFid: f, path: path).count == names else { throw Errno.noSuchFileOrDirectory }
        return f
    }

    func makeDirectory(_ path: String) throws {
        let (directory, name) = split(path)
        let d = try walk(directory)
        defer { try? client.clunk(fid: d) }
        do {
            _ = try client.mkdir(dfid: d, name: name, mode: 0o755)
        } catch {
            if error != .fileExists { throw error }
        }
    }

    func createWritingAndSyncing(_ path: String, _ content: [UInt8], created: () -> Void) throws {
        let (directory, name) = split(path)
        let f = try walk(directory)
        defer { try? client.clunk(fid: f) }
        _ = try client.lcreate(fid: f, name: name, flags: UInt32(O_RDWR | O_CREAT | O_EXCL), mode: 0o644)
        created()
        var offset = 0
        while offset < content.count {
            let end = min(content.count, offset + 65536)
            let n = try client.write(fid: f, offset: UInt64(offset), Array(content[offset..<end]))
            guard n > 0 else { throw Errno.ioError }
            offset += Int(n)
        }
        try client.fsync(fid: f)
    }

    func rename(_ from: String, _ to: String) throws {
        let (a, b) = (split(from), split(to))
        let da = try walk(a.directory)
        defer { try? client.clunk(fid: da) }
        let db = try walk(b.directory)
        defer { try? client.clunk(fid: db) }
        try client.renameat(oldDirFid: da, oldName: a.name, newDirFid: db, newName: b.name)
    }

    func unlink(_ path: String) throws {
        let (directory, name) = split(path)
        let d = try walk(directory)
        defer { try? client.clunk(fid: d) }
        try client.unlinkat(dirFid: d, name: name)
    }

    /// fsync of a directory (Tfsync on an unopened fid): everything before it is committed.
    func syncDirectory(_ path: String) throws {
        let d = try walk(path)
        defer { try? client.clunk(fid: d) }
        try client.fsync(fid: d)
    }

    /// The whole content of `path`, nil when it does not exist.
    func read(_ path: String) throws -> [UInt8]? {
        let f: UInt32
        do {
            f = try walk(path)
        } catch {
            if error as? Errno == .noSuchFileOrDirectory { return nil }
            throw error
        }
        defer { try? client.clunk(fid: f) }
        _ = try client.lopen(fid: f, flags: UInt32(O_RDONLY))
        var out: [UInt8] = []
        while true {
            let chunk = try client.read(fid: f, offset: UInt64(out.count), count: 65536)
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }
}

/// One 9P client's socket: whole messages out and in; `finished` is signalled when the reading
/// side has ended (end of stream or an error), after which nothing reads the descriptor again.
final class SocketStream: @unchecked Sendable {
    let fd: Int32
    let finished = DispatchSemaphore(value: 0)
    private var framer = NinePMessageFramer(maximumMessageSize: 16 << 20)
    private var scratch = [UInt8](repeating: 0, count: 65536)

    init(_ fd: Int32) { self.fd = fd }

    func send(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Errno(rawValue: errno)
            }
            done += n
        }
    }

    func receive() throws -> [UInt8]? {
        do {
            while true {
                if let message = try framer.next() { return message }
                let n = scratch.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw Errno(rawValue: errno)
                }
                if n == 0 {
                    finished.signal()
                    return nil
                }
                scratch.withUnsafeBytes { framer.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
        } catch {
            finished.signal()
            throw error
        }
    }
}

/// Files through a FUSE mount (system calls of this process), relative to the mount's root
/// directory opened once: when pvfsd goes away and its mount with it, nothing lands in the
/// directory underneath.
final class MountedFiles: TortureFiles, @unchecked Sendable {
    let root: Int32

    init(mountpoint: String) throws {
        // Checked before `root` is set: an initializer that throws once every stored property
        // is set still runs deinit, which would close the descriptor a second time.
        let fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        var mounted = stat(), parent = stat()
        guard fstat(fd, &mounted) == 0, stat(mountpoint + "/..", &parent) == 0, mounted.st_dev != parent.st_dev else {
            close(fd)
            throw TestSupportError("nothing is mounted on \(mountpoint)")
        }
        root = fd
    }

    deinit { close(root) }

    private func check(_ rc: Int32) throws {
        if rc != 0 { throw Errno(rawValue: errno) }
    }

    func makeDirectory(_ path: String) throws {
        if mkdirat(root, path, 0o755) != 0 && errno != EEXIST { throw Errno(rawValue: errno) }
    }

    func createWritingAndSyncing(_ path: String, _ content: [UInt8], created: () -> Void) throws {
        let fd = openat(root, path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        defer { close(fd) }
        created()
        var offset = 0
        while offset < content.count {
            let at = offset
            let n = content[at...].withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(at)) }
            guard n > 0 else { throw Errno(rawValue: n < 0 ? errno : EIO) }
            offset += n
        }
        try check(fsync(fd))
    }

    func rename(_ from: String, _ to: String) throws { try check(renameat(root, from, root, to)) }
    func unlink(_ path: String) throws { try check(unlinkat(root, path, 0)) }
}

/// A store, pvfsd, and the workers that hammer them.
final class CatalogTorture: @unchecked Sendable {
    let area: TemporaryDirectory
    let store: String
    let socket: String
    let mountpoint: String
    let daemonLog: String
    var random: SeededRandom
    var daemon: Process?
    var files: [String: AcknowledgedFiles] = ["t1": AcknowledgedFiles(), "t2": AcknowledgedFiles()]
    var lastRoundDescription = ""
    var kills = 0, terms = 0
    let commands = Atomic<Int>(0), mounts = Atomic<Int>(0)

    /// Content drawn from a small pool now and then, so dedup finds identical files.
    static let sharedContents: [[UInt8]] = (0..<6).map { benchContent(seed: 77, file: $0, bytes: 3000 + $0 * 9000) }

    init(seed: UInt64) throws {
        random = SeededRandom(state: seed)
        area = try TemporaryDirectory("pvfs-catalog-torture")
        store = area.sub("store")
        socket = area.sub("9p.sock")
        mountpoint = area.sub("mnt")
        daemonLog = area.sub("pvfsd.log")
        try makeSeededTree(at: area.sub("src"), files: 24, size: 8_000, seed: 7)
        try mustRun("pvfs-template", ["create", "base", "--from", area.sub("src"), "--store", store])
        for vm in ["t1", "t2"] {
            try mustRun("pvfs-vm", ["provision", "--template", "base", vm, "--no-hooks", "--quota-bytes", "512M", "--store", store])
            try mustRun("pvfs-vm", ["bind", vm, "--listener", "torture", "--store", store])
        }
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: daemonLog, contents: nil)
    }

    var summary: String {
        "\(terms) SIGTERM, \(kills) SIGKILL, \(files.values.map(\.fsyncs).reduce(0, +)) fsyncs acknowledged, \(commands.load(ordering: .relaxed)) commands, \(mounts.load(ordering: .relaxed)) mounts"
    }

    // MARK: pvfsd

    func startDaemon(commitMode: String) throws {
        // The shell appends pvfsd's log to a file and becomes pvfsd (exec), so signals reach it.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "exec \"$0\" \"$@\" >>\"$PVFSD_LOG\" 2>&1", try builtProduct("pvfsd"),
                             "--store", store, "--listen", "torture=unix:" + socket, "--janitor-interval", "1",
                             "--catalog-commit", commitMode, "--log-level", "info"]
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "PVFS_STORE")
        environment.removeValue(forKey: "NOTIFY_SOCKET")
        environment["PVFSD_LOG"] = daemonLog
        process.environment = environment
        try process.run()
        daemon = process
        let deadline = Date(timeIntervalSinceNow: 30)
        while Date() < deadline {
            if !process.isRunning { throw TestSupportError("pvfsd exited \(process.terminationStatus) at start:\n\(tail(daemonLog))") }
            // Ready once the 9P listener accepts (no attach: a session closed and reopened at
            // once may find the VM still closing).
            if FileManager.default.fileExists(atPath: store + "/pvfsd.sock"), canConnect(socket) { return }
            usleep(20_000)
        }
        throw TestSupportError("pvfsd did not start within 30 s:\n\(tail(daemonLog))")
    }

    /// Stops pvfsd with `signal`; nil when it stopped as it should (SIGTERM: exit 0 within 30 s).
    func stopDaemon(_ signal: Int32) -> String? {
        guard let process = daemon else { return nil }
        daemon = nil
        kill(process.processIdentifier, signal)
        let deadline = Date(timeIntervalSinceNow: 30)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return "pvfsd did not stop within 30 s of \(signal == SIGTERM ? "SIGTERM" : "SIGKILL")"
        }
        process.waitUntilExit()
        if signal == SIGTERM && (process.terminationReason != .exit || process.terminationStatus != 0) {
            return "pvfsd exited \(process.terminationStatus) on SIGTERM:\n\(tail(daemonLog))"
        }
        return nil
    }

    func canConnect(_ path: String) -> Bool {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }

    func tail(_ path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(25).joined(separator: "\n")
    }

    // MARK: Checks between rounds

    /// `PRAGMA integrity_check` and `foreign_key_check` through SQLite (python3, read-only).
    func integrityCheck() -> String? {
        let script = """
            import sqlite3, sys
            c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
            rows = [r[0] for r in c.execute("PRAGMA integrity_check")]
            fk = c.execute("PRAGMA foreign_key_check").fetchall()
            print("ok" if rows == ["ok"] and not fk else "; ".join(rows[:10]) + (" foreign keys: %r" % fk[:5] if fk else ""))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script, store + "/catalog.db"]
        process.standardOutput = Pipe()
        process.standardError = Pipe()
        do { try process.run() } catch { return "cannot run python3: \(error)" }
        let result = collectOutput(of: process)
        let out = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        return result.status == 0 && out == "ok" ? nil : "PRAGMA integrity_check: \(out) \(result.stderr)"
    }

    /// `pvfs fsck` with the daemon stopped: clean after SIGTERM; after SIGKILL only what a killed
    /// process leaves, which `--repair` repairs.
    func fsck(afterKill: Bool) throws -> [String] {
        let first = try runTool("pvfs", ["fsck", "--json", "--store", store])
        guard afterKill, first.status == 5 else {
            return first.status == 0 ? [] : ["pvfs fsck exited \(first.status) after \(afterKill ? "SIGKILL" : "SIGTERM"): \(first.stdout) \(first.stderr)"]
        }
        var problems: [String] = []
        let report = (try? parseJSON(first.stdout)) as? [String: Any]
        for finding in (report?["findings"] as? [[String: Any]]) ?? [] {
            let area = finding["area"] as? String ?? "?"
            if area == "catalog" || finding["status"] as? String == "unrepairable" {
                problems.append("pvfs fsck after SIGKILL: \(finding)")
            }
        }
        let repair = try runTool("pvfs", ["fsck", "--repair", "--store", store])
        if repair.status != 0 { problems.append("pvfs fsck --repair exited \(repair.status): \(repair.stdout) \(repair.stderr)") }
        let again = try runTool("pvfs", ["fsck", "--store", store])
        if again.status != 0 { problems.append("pvfs fsck after --repair exited \(again.status): \(again.stdout) \(again.stderr)") }
        return problems
    }

    /// One 9P session per VM for the round (the 9P worker uses t1's), opened once: they keep
    /// the VMs open in pvfsd while mounts come and go.
    func openSessions() throws -> [String: NinePSession] {
        var sessions: [String: NinePSession] = [:]
        do {
            for vm in files.keys.sorted() { sessions[vm] = try NinePSession(socket: socket, vm: vm) }
        } catch {
            for session in sessions.values { session.close() }
            throw error
        }
        return sessions
    }

    /// Keeps a soak's work per round bounded: removes (through pvfsd, with an fsync) the files
    /// of rounds before the last three and forgets removals checked for six rounds.
    func prune(_ sessions: [String: NinePSession], before round: Int) throws {
        func roundOf(_ path: String) -> Int {
            Int(path.dropFirst(3).prefix { $0.isNumber }) ?? Int.max  // "w/r12/f3", "w/r12p2/m5"
        }
        for vm in files.keys.sorted() {
            let session = sessions[vm]!
            let old = files[vm]!.durable.keys.filter { roundOf($0) < round - 3 }.sorted()
            guard !old.isEmpty else { continue }
            for path in old { try session.unlink(path) }
            try session.syncDirectory("w")
            for path in old {
                files[vm]!.durable[path] = nil
                files[vm]!.removed.insert(path)
            }
            files[vm]!.removed = files[vm]!.removed.filter { roundOf($0) >= round - 9 }
        }
    }

    /// Reads every VM's acknowledged files back through pvfsd.
    func verifyFiles(_ sessions: [String: NinePSession]) throws -> [String] {
        var problems: [String] = []
        for vm in files.keys.sorted() {
            let session = sessions[vm]!
            problems += try files[vm]!.verify(vm) { try session.read($0) }
        }
        return problems
    }

    func isMounted() -> Bool {
        let table = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return table.split(separator: "\n").contains { $0.split(separator: " ").dropFirst(4).first.map(String.init) == mountpoint }
    }

    /// Unmounts t2 if a mount survived the round (pvfsd's own ends with it; a mount started
    /// while pvfsd was stopping runs in a process of its own, which releases t2 on unmount).
    func unmountLeftovers() {
        guard isMounted() else { return }
        _ = try? runTool("pvfs-vm", ["umount", mountpoint, "--timeout", "20", "--store", store])
        if isMounted() { umount2(mountpoint, Int32(MNT_DETACH)) }
    }

    // MARK: Rounds

    func runRound(_ round: Int) throws -> [String] {
        let commitMode = Bool.random(using: &random) ? "sync" : "grouped"
        let signal = Bool.random(using: &random) ? SIGTERM : SIGKILL
        let runFor = Double.random(in: 0.4...3.0, using: &random)
        lastRoundDescription = "commit \(commitMode), \(signal == SIGTERM ? "SIGTERM" : "SIGKILL") after \(String(format: "%.2f", runFor)) s"
        try startDaemon(commitMode: commitMode)
        let sessions = try openSessions()
        defer { for session in sessions.values { session.close() } }
        var problems = try verifyFiles(sessions)
        guard problems.isEmpty else { return problems }
        try prune(sessions, before: round)

        let stop = StopFlag()
        let found = Locked<[String]>([])
        let group = DispatchGroup()
        let seeds = (0..<4).map { _ in random.next() }
        let nineP = sessions["t1"]!
        let t1 = Locked(files["t1"]!), t2 = Locked(files["t2"]!)

        DispatchQueue.global().async(group: group) { [self] in
            var rng = SeededRandom(state: seeds[0])
            writeFiles(nineP, prefix: "w/r\(round)", name: "f", model: t1, random: &rng, stop: stop)
        }
        DispatchQueue.global().async(group: group) { [self] in
            var rng = SeededRandom(state: seeds[1])
            mountAndWrite(round: round, model: t2, random: &rng, stop: stop)
        }
        for seed in seeds[2...] {
            DispatchQueue.global().async(group: group) { [self] in
                var rng = SeededRandom(state: seed)
                runCommands(random: &rng, stop: stop, found: found)
            }
        }
        usleep(UInt32(runFor * 1e6))
        if let problem = stopDaemon(signal) { problems.append(problem) }
        stop.set()
        if group.wait(timeout: .now() + 60) == .timedOut { problems.append("workers did not finish within 60 s of pvfsd stopping") }
        unmountLeftovers()
        if signal == SIGTERM { terms += 1 } else { kills += 1 }

        files["t1"] = t1.withLock { $0 }
        files["t2"] = t2.withLock { $0 }
        // Operations acknowledged before a clean stop are in the catalog in either commit mode.
        for vm in files.keys {
            for i in files[vm]!.pending.indices where signal == SIGTERM || commitMode == "sync" {
                files[vm]!.pending[i].committedAtReply = true
            }
        }
        problems += found.withLock { $0 }
        if let integrity = integrityCheck() { problems.append(integrity) }
        problems += try fsck(afterKill: signal == SIGKILL)
        return problems
    }

    /// Last round: start, verify, stop cleanly, check.
    func finish() throws -> [String] {
        try startDaemon(commitMode: "sync")
        let sessions = try openSessions()
        var problems = try verifyFiles(sessions)
        for session in sessions.values { session.close() }
        if let problem = stopDaemon(SIGTERM) { problems.append(problem) }
        if let integrity = integrityCheck() { problems.append(integrity) }
        problems += try fsck(afterKill: false)
        return problems
    }

    func tearDown() {
        if let daemon, daemon.isRunning {
            kill(daemon.processIdentifier, SIGKILL)
            daemon.waitUntilExit()
        }
        unmountLeftovers()
    }

    // MARK: Workers

    /// Creates files with fsync (sometimes with content another file has), renames and removes
    /// some, until told to stop or the daemon goes away.
    func writeFiles(_ target: TortureFiles, prefix: String, name: String, model: Locked<AcknowledgedFiles>,
                    random: inout SeededRandom, stop: StopFlag) {
        do {
            try target.makeDirectory("w")
            try target.makeDirectory(prefix)
        } catch {
            return
        }
        var n = 0
        while !stop.isSet {
            n += 1
            let choice = Int.random(in: 0..<10, using: &random)
            let candidates = choice < 2 ? model.withLock { $0.untouchedDurable } : []
            if let (path, content) = candidates.randomElement(using: &random) {
                let renamed = "\(prefix)/\(name)\(n).renamed"
                let index = model.withLock { m in
                    m.pending.append(.init(operation: choice == 0 ? .rename(from: path, to: renamed, content: content) : .unlink(path: path, content: content)))
                    return m.pending.count - 1
                }
                do {
                    if choice == 0 { try target.rename(path, renamed) } else { try target.unlink(path) }
                } catch {
                    return
                }
                model.withLock { $0.pending[index].acknowledged = true }
                continue
            }
            let content: [UInt8]
            if Int.random(in: 0..<3, using: &random) == 0 {
                content = Self.sharedContents.randomElement(using: &random)!
            } else {
                content = benchContent(seed: random.next(), file: n, bytes: Int.random(in: 1...120_000, using: &random))
            }
            let path = "\(prefix)/\(name)\(n)"
            let index = model.withLock { m in
                m.pending.append(.init(operation: .create(path: path, content: content)))
                return m.pending.count - 1
            }
            do {
                try target.createWritingAndSyncing(path, content) { model.withLock { $0.pending[index].acknowledged = true } }
            } catch {
                return
            }
            model.withLock { $0.synced() }
        }
    }

    /// `pvfs-vm mount` of t2 through pvfsd, files written there for a while, `pvfs-vm umount`, again.
    func mountAndWrite(round: Int, model: Locked<AcknowledgedFiles>, random: inout SeededRandom, stop: StopFlag) {
        var pass = 0
        while !stop.isSet {
            pass += 1
            guard let mounted = try? runTool("pvfs-vm", ["mount", "t2", mountpoint, "--store", store]), mounted.status == 0 else { return }
            mounts.add(1, ordering: .relaxed)
            let until = Date(timeIntervalSinceNow: Double.random(in: 0.1...1.0, using: &random))
            guard let target = try? MountedFiles(mountpoint: mountpoint) else { return }
            let stopWriting = StopFlag()
            let writer = DispatchGroup()
            let seed = random.next()
            let prefix = "w/r\(round)p\(pass)"
            DispatchQueue.global().async(group: writer) { [self] in
                var rng = SeededRandom(state: seed)
                writeFiles(target, prefix: prefix, name: "m", model: model, random: &rng, stop: stopWriting)
            }
            while Date() < until && !stop.isSet { usleep(10_000) }
            stopWriting.set()
            writer.wait()
            if stop.isSet { return }
            guard let unmounted = try? runTool("pvfs-vm", ["umount", mountpoint, "--store", store]), unmounted.status == 0 else { return }
        }
    }

    /// Commands beside pvfsd: reads, fsck, dedup and gc. None may find the catalog damaged.
    func runCommands(random: inout SeededRandom, stop: StopFlag, found: Locked<[String]>) {
        let commandLines: [(String, [String])] = [
            ("pvfs-vm", ["list"]), ("pvfs-vm", ["show", "t1"]), ("pvfs-vm", ["show", "t2", "--json"]), ("pvfs", ["df"]),
            ("pvfs", ["status"]), ("pvfs", ["fsck", "--json"]), ("pvfs", ["dedup", "--all"]), ("pvfs", ["gc"]),
        ]
        while !stop.isSet {
            let (tool, arguments) = commandLines.randomElement(using: &random)!
            guard let result = try? runTool(tool, arguments + ["--store", store]) else { continue }
            commands.add(1, ordering: .relaxed)
            let output = result.stdout + result.stderr
            for sign in ["malformed", "corrupt", "not a database"] where output.contains(sign) {
                found.withLock { $0.append("\(tool) \(arguments.joined(separator: " ")) beside pvfsd: \(output.prefix(400))") }
            }
            if arguments.first == "fsck", let report = (try? parseJSON(result.stdout)) as? [String: Any] {
                for finding in (report["findings"] as? [[String: Any]]) ?? [] where finding["area"] as? String == "catalog" {
                    found.withLock { $0.append("pvfs fsck beside pvfsd: \(finding)") }
                }
            }
        }
    }
}
