import Foundation
import Glibc
import PVFS9PCodec
import PVFSTestSupport
import SystemPackage
import Testing

/// `pvfs upgrade` with a real pvfsd: the running daemon hands its listeners and 9P connections
/// to a new process, and the clients go on as if nothing happened.
@Suite("pvfsd: graceful upgrade", .serialized)
struct UpgradeCommandTests {
    /// A running pvfsd serving one VM on a Unix and a TCP listener.
    final class RunningDaemon {
        let area: TemporaryDirectory
        let store: String
        let unixAddress: String
        let tcpAddress: String
        let first: Process

        init() throws {
            area = try TemporaryDirectory("pvfs-upgrade-test")
            store = try TenantLimitCommandTests().makeStore(area)
            unixAddress = "unix:" + area.sub("9p.sock")
            tcpAddress = "tcp:127.0.0.1:\(try Self.freePort())"
            // The log goes to a file, which every process taking over appends to. The shell
            // redirects it: no descriptor of this test process is handed to Process, whose
            // closes of it could hit another test's descriptor (SQLite's among them).
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            let argv = [try builtProduct("pvfsd"), "--store", store, "--listen", "local=" + unixAddress, "--listen", "net=" + tcpAddress]
            process.arguments = ["-c", "exec \"$@\" >>'\(area.sub("pvfsd.log"))' 2>&1 </dev/null", "pvfsd"] + argv
            try process.run()
            first = process
        }

        var log: String { (try? String(contentsOfFile: area.sub("pvfsd.log"), encoding: .utf8)) ?? "" }

        static func freePort() throws -> UInt16 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
            _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            return UInt16(bigEndian: sa.sin_port)
        }

        /// Connects, retrying while the listener comes up.
        func connect(_ address: String) throws -> (fd: Int32, client: NinePClient) {
            let deadline = Date(timeIntervalSinceNow: 30)
            while true {
                do {
                    return try TenantLimitCommandTests.connect(address)
                } catch let error as Errno where (error == .noSuchFileOrDirectory || error == .connectionRefused) && Date() < deadline {
                    usleep(50_000)
                }
            }
        }

        /// A client over the Unix listener, attached to the VM as fid 0.
        func attachedClient() throws -> (fd: Int32, client: NinePClient) {
            let (fd, client) = try connect(unixAddress)
            _ = try client.version(msize: 65536)
            _ = try client.attach(fid: 0, aname: "guest", uid: 0)
            return (fd, client)
        }

        func status() throws -> [String: Any] {
            let status = try parseJSON(try mustRun("pvfs", ["status", "--json", "--store", store]).stdout) as? [String: Any]
            return (status?["daemon"] as? [String: Any]) ?? [:]
        }

        func pid() throws -> Int32 { (try status()["pid"] as? Int).map(Int32.init) ?? -1 }

        func upgrade(_ extra: [String] = []) throws -> [String: Any] {
            let result = try runTool("pvfs", ["upgrade", "--json", "--store", store] + extra)
            guard result.status == 0 else { throw TestSupportError("pvfs upgrade exited \(result.status): \(result.stderr)") }
            return (try parseJSON(result.stdout) as? [String: Any]) ?? [:]
        }

        /// Stops whichever process serves now and waits for it to go.
        func stop() {
            // Never a pid <= 0: kill(-1, …) would signal every process.
            let current = (try? pid()).flatMap { $0 > 0 ? $0 : nil } ?? first.processIdentifier
            for pid in Set([current, first.processIdentifier]) where pid > 0 { kill(pid, SIGTERM) }
            let deadline = Date(timeIntervalSinceNow: 30)
            while current > 0 && kill(current, 0) == 0 && Date() < deadline { usleep(50_000) }
            first.waitUntilExit()
        }
    }

    static func message(_ request: NinePRequest, tag: UInt16) -> [UInt8] { request.encode(tag: tag) }

    /// Reads one whole R-message from a raw socket.
    static func readReply(_ fd: Int32) throws -> NinePResponse {
        func readExactly(_ n: Int) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: n)
            var got = 0
            while got < n {
                let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
                if r < 0 && errno == EINTR { continue }
                guard r > 0 else { throw Errno.connectionReset }
                got += r
            }
            return out
        }
        let head = try readExactly(4)
        let size = Int(head[0]) | Int(head[1]) << 8 | Int(head[2]) << 16 | Int(head[3]) << 24
        return try NinePResponse.decode(head + readExactly(size - 4)).response
    }

    static func sendAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) {
        var rest = bytes
        while !rest.isEmpty {
            let n = rest.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return }
            rest = rest.dropFirst(n)
        }
    }

    /// Three upgrades in a row under two clients: every fid, open file (one of them unlinked),
    /// lock and half-sent request survives each, the daemon's pid changes each time, and the
    /// store checks clean at the end.
    @Test func connectionsSurviveUpgrades() throws {
        let daemon = try RunningDaemon()
        defer { daemon.stop() }
        let (fdA, a) = try daemon.attachedClient()
        defer { NinePClient.closeSocket(fdA) }
        _ = try a.walk(fid: 0, newFid: 1, [])
        _ = try a.lcreate(fid: 1, name: "kept.txt", flags: UInt32(O_RDWR | O_CREAT), mode: 0o644)
        #expect(try a.write(fid: 1, offset: 0, Array("before;".utf8)) == 7)
        _ = try a.walk(fid: 0, newFid: 2, [])
        _ = try a.lcreate(fid: 2, name: "unlinked.txt", flags: UInt32(O_RDWR | O_CREAT), mode: 0o600)
        _ = try a.write(fid: 2, offset: 0, Array("still here".utf8))
        try a.unlinkat(dirFid: 0, name: "unlinked.txt")
        let writeLock = NinePLock(type: 1, flags: 0, start: 0, length: 0, processID: 42, clientID: Array("clientA".utf8))
        #expect(try a.lock(fid: 1, writeLock) == 0)
        let versionBefore = try a.getattr(fid: 1).qid.version

        // A second client over TCP, speaking raw bytes so that it can stop inside a message.
        let fdB = try TenantLimitCommandTests.connectedSocket(daemon.tcpAddress)
        defer { close(fdB) }
        Self.sendAll(fdB, Self.message(.version(msize: 65536, version: Array("9P2000.L".utf8)), tag: NineP.noTag)[...])
        _ = try Self.readReply(fdB)
        Self.sendAll(fdB, Self.message(.attach(fid: 0, afid: NineP.noFid, uname: [], aname: Array("guest".utf8), uid: 0), tag: 1)[...])
        _ = try Self.readReply(fdB)

        var pids: Set<Int32> = [try daemon.pid()]
        for round in 1...3 {
            // Half a Twalk is on its way when the daemon changes.
            let walk = Self.message(.walk(fid: 0, newFid: UInt32(10 + round), names: [Array("kept.txt".utf8)]), tag: UInt16(10 + round))
            Self.sendAll(fdB, walk[..<9])
            let outcome = try daemon.upgrade()
            #expect(outcome["connections"] as? Int == 2, "round \(round): \(outcome)")
            if round == 1 {
                // A guest mounted with cache=loose compares qid versions: unchanged file, same version.
                #expect(try a.getattr(fid: 1).qid.version == versionBefore)
            }
            let pid = try daemon.pid()
            #expect(!pids.contains(pid), "round \(round): still pid \(pid)")
            pids.insert(pid)
            Self.sendAll(fdB, walk[9...])
            let reply: NinePResponse
            do {
                reply = try Self.readReply(fdB)
            } catch {
                Issue.record("round \(round): \(error); pvfsd's log:\n\(daemon.log)")
                return
            }
            guard case .walk(let qids) = reply else {
                Issue.record("round \(round): the half-sent Twalk was not answered with Rwalk")
                return
            }
            #expect(qids.count == 1)

            // Client A's fids, open files and lock went along.
            let text = String(decoding: try a.read(fid: 1, offset: 0, count: 4096), as: UTF8.self)
            #expect(text.hasPrefix("before;"), "round \(round): \(text)")
            _ = try a.write(fid: 1, offset: UInt64(text.utf8.count), Array("after\(round);".utf8))
            #expect(String(decoding: try a.read(fid: 2, offset: 0, count: 100), as: UTF8.self) == "still here")
            // B's lock on the file A locked is refused: A's lock moved too.
            Self.sendAll(fdB, Self.message(.walk(fid: 0, newFid: UInt32(20 + round), names: [Array("kept.txt".utf8)]), tag: 2)[...])
            _ = try Self.readReply(fdB)
            Self.sendAll(fdB, Self.message(.lopen(fid: UInt32(20 + round), flags: UInt32(O_RDWR)), tag: 3)[...])
            _ = try Self.readReply(fdB)
            let otherLock = NinePLock(type: 1, flags: 0, start: 0, length: 0, processID: 7, clientID: Array("clientB".utf8))
            Self.sendAll(fdB, Self.message(.lock(fid: UInt32(20 + round), otherLock), tag: 4)[...])
            guard case .lock(let status) = try Self.readReply(fdB) else {
                Issue.record("round \(round): no Rlock")
                return
            }
            #expect(status == 1, "round \(round): B got the lock A holds (status \(status))")
            Self.sendAll(fdB, Self.message(.clunk(fid: UInt32(20 + round)), tag: 5)[...])
            _ = try Self.readReply(fdB)
            #expect(try a.getattr(fid: 0).qid.type != 0)
        }
        let status = try daemon.status()
        #expect(status["tookOverFrom"] as? String != nil)
        #expect(status["adoptedConnections"] as? Int == 2)
        let text = String(decoding: try a.read(fid: 1, offset: 0, count: 4096), as: UTF8.self)
        #expect(text == "before;after1;after2;after3;")
        // Closing the last handle of the unlinked file removes it at last.
        try a.clunk(fid: 2)
        try a.clunk(fid: 1)
        daemon.stop()
        let fsck = try runTool("pvfs", ["fsck", "--store", daemon.store])
        #expect(fsck.status == 0, "fsck: \(fsck.stdout)\(fsck.stderr)")
    }

    /// A binary that cannot take over leaves the running daemon serving, its clients untouched.
    @Test func failedUpgradeKeepsServing() throws {
        let daemon = try RunningDaemon()
        defer { daemon.stop() }
        let (fd, client) = try daemon.attachedClient()
        defer { NinePClient.closeSocket(fd) }
        let pid = try daemon.pid()
        let result = try runTool("pvfs", ["upgrade", "--store", daemon.store, "--binary", "/bin/true"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("did not start for the hand-over"), "\(result.stderr)")
        #expect(try daemon.pid() == pid)
        #expect(try client.getattr(fid: 0).qid.type != 0)
        // And the next upgrade works.
        let outcome = try daemon.upgrade()
        #expect(outcome["connections"] as? Int == 1)
        #expect(try client.getattr(fid: 0).qid.type != 0)
    }

    /// A host FUSE mount cannot move yet: the upgrade is refused (exit 4, the mount named) and
    /// the daemon serves on; --force upgrades and ends the mount.
    @Test func sessionsThatCannotMoveRefuseTheUpgrade() throws {
        let daemon = try RunningDaemon()
        defer { daemon.stop() }
        let (fd, client) = try daemon.attachedClient()
        defer { NinePClient.closeSocket(fd) }
        let mountPoint = daemon.area.sub("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try mustRun("pvfs-vm", ["mount", "guest", mountPoint, "--store", daemon.store])
        defer { _ = try? runTool("pvfs-vm", ["umount", mountPoint, "--store", daemon.store]) }
        let pid = try daemon.pid()
        let refused = try runTool("pvfs", ["upgrade", "--store", daemon.store])
        #expect(refused.status == 4)
        #expect(refused.stderr.contains("host mount of guest"), "\(refused.stderr)")
        #expect(try daemon.pid() == pid)
        #expect(try client.getattr(fid: 0).qid.type != 0)
        #expect(FileManager.default.fileExists(atPath: mountPoint + "/d1") || (try? FileManager.default.contentsOfDirectory(atPath: mountPoint))?.isEmpty == false)

        let forced = try daemon.upgrade(["--force"])
        #expect(forced["connections"] as? Int == 1)
        #expect(try daemon.pid() != pid)
        #expect(try client.getattr(fid: 0).qid.type != 0)
    }

    /// A new binary that fails after the point of no return (here it cannot open the store:
    /// too few descriptors): the running build takes over from itself, the client keeps its
    /// fids, and the command says the upgrade failed.
    @Test func failedTakeOverFallsBackToTheRunningBuild() throws {
        let daemon = try RunningDaemon()
        defer { daemon.stop() }
        let (fd, client) = try daemon.attachedClient()
        defer { NinePClient.closeSocket(fd) }
        _ = try client.walk(fid: 0, newFid: 1, [])
        _ = try client.lcreate(fid: 1, name: "f", flags: UInt32(O_RDWR | O_CREAT), mode: 0o644)
        _ = try client.write(fid: 1, offset: 0, Array("data".utf8))
        let wrapper = daemon.area.sub("starved-pvfsd")
        try "#!/bin/sh\nulimit -n 9\nexec \(try builtProduct("pvfsd")) \"$@\"\n".write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        let pid = try daemon.pid()
        let result = try runTool("pvfs", ["upgrade", "--store", daemon.store, "--binary", wrapper])
        #expect(result.status == 1)
        #expect(result.stderr.contains("took over from itself"), "\(result.stderr)")
        #expect(try daemon.pid() != pid)
        #expect(try client.read(fid: 1, offset: 0, count: 10) == Array("data".utf8))
    }
}
