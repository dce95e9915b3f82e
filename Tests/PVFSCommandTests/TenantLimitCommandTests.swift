import Foundation
import Glibc
import Logging
import PVFS9P
import PVFSDaemon
import PVFSEngine
import PVFSStore
import PVFSTestSupport
import Synchronization
import SystemPackage
import Testing

/// pvfsd under a tenant that reconnects without pause or attaches without end: it serves the
/// guest every time and does not grow.
@Suite("pvfsd: limits per tenant", .serialized)
struct TenantLimitCommandTests {
    /// A store with a small template and one VM bound to every client.
    func makeStore(_ area: TemporaryDirectory, vm: String = "guest") throws -> String {
        let store = area.sub("store")
        let src = area.sub("src")
        try makeSeededTree(at: src, files: 16, size: 2000, seed: 7)
        try mustRun("pvfs-template", ["create", "base", "--from", src, "--store", store])
        try mustRun("pvfs-vm", ["provision", "--template", "base", vm, "--no-hooks", "--store", store])
        try mustRun("pvfs-vm", ["bind", vm, "--any", "--store", store])
        return store
    }

    /// A client over a fresh stream socket to `address` ("tcp:127.0.0.1:PORT" or "unix:PATH").
    static func connect(_ address: String) throws -> (fd: Int32, client: NinePClient) {
        let fd = try connectedSocket(address)
        return (fd, NinePClient(fileDescriptor: fd))
    }

    /// A stream socket connected to `address`, with nobody reading it yet.
    static func connectedSocket(_ address: String) throws -> Int32 {
        let fd: Int32
        if address.hasPrefix("unix:") {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var sa = sockaddr_un()
            sa.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &sa.sun_path) { $0.copyBytes(from: Array(address.dropFirst(5).utf8)) }
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard rc == 0 else { close(fd); throw Errno(rawValue: errno) }
        } else {
            let parts = address.split(separator: ":")
            guard parts.count == 3, let port = UInt16(parts[2]) else { throw Errno.invalidArgument }
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            sa.sin_addr.s_addr = inet_addr(String(parts[1]))
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { close(fd); throw Errno(rawValue: errno) }
        }
        return fd
    }

    /// Ends a connection at once, as a guest that reboots does. The descriptor stays open (the
    /// caller closes it later): the client's reader may still be about to read it, and must not
    /// find its number reused by the next connection.
    static func abort(_ fd: Int32) {
        shutdown(fd, Int32(SHUT_RDWR))
    }

    /// 200 rounds of connect, Tversion, Tattach, abort: each attach is served. The last
    /// session's volume used to close outside the registry's lock, and an attach in that window
    /// failed to take the VM's lock: EBUSY, a rebooting guest without its root. So did one while
    /// a child spawned by another thread still held the lock's descriptor before its exec.
    @Test func quickReconnectsNeverFindTheirVMBusy() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area)
        var logger = Logger(label: "test.pvfsd")
        logger.logLevel = .critical
        let daemon = try Daemon(configuration: DaemonConfiguration(storePath: store), logger: logger)
        let service = try NinePSocketService(listeners: [.init(name: "guests", address: "tcp:127.0.0.1:0")],
                                             registry: daemon.registry, logger: logger, configuration: daemon.ninePConfiguration)
        daemon.add(service)
        try daemon.start()
        defer { daemon.stop() }
        let address = try #require(service.boundAddresses.first)
        var failures: [String] = []
        var descriptors: [Int32] = []
        defer { for fd in descriptors { NinePClient.closeSocket(fd) } }
        // Meanwhile another thread spawns processes, as other tests (and hooks) do: each child
        // holds a copy of the VM's flock'd lock descriptor until it execs.
        let spawning = Atomic<Bool>(true)
        let spawner = Thread {
            while spawning.load(ordering: .relaxed) {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/bin/true")
                try? p.run()
                p.waitUntilExit()
            }
        }
        spawner.start()
        defer { spawning.store(false, ordering: .relaxed) }
        for round in 0..<200 {
            let (fd, client) = try Self.connect(address)
            descriptors.append(fd)
            do {
                _ = try client.version(msize: 65536)
                let root = try client.attach(fid: 0, aname: "guest", uid: 0)
                if root.path != rootInode { failures.append("round \(round): root qid \(root)") }
                if round % 3 == 0 { _ = try client.walk(fid: 0, newFid: 1, path: "d0") }
            } catch {
                failures.append("round \(round): \(error)")
            }
            Self.abort(fd)
        }
        #expect(failures.isEmpty, "\(failures.count) failed, first: \(failures.prefix(3))")
        // Every session ends; the VM is released once the last connection is gone.
        let deadline = Date(timeIntervalSinceNow: 10)
        while daemon.registry.sessionTotal > 0 && Date() < deadline { usleep(10_000) }
        #expect(daemon.registry.sessionTotal == 0)
    }

    /// A real pvfsd under 20,000 attach/clunk cycles on one connection: its session count stays
    /// at the one attach the client keeps, and its memory stays flat (it grew by 7 MiB when each
    /// attach left a session until the connection closed).
    @Test func attachClunkCyclesLeaveNoSessionsBehind() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area)
        let socketPath = area.sub("9p.sock")
        let daemon = try startTool("pvfsd", ["--store", store, "--listen", "unix:" + socketPath, "--quiet"])
        defer {
            kill(daemon.processIdentifier, SIGTERM)
            daemon.waitUntilExit()
        }
        // The socket file appears at bind(), a moment before listen(): connect until it answers.
        let listening = Date(timeIntervalSinceNow: 30)
        var connected: (fd: Int32, client: NinePClient)?
        while connected == nil {
            do {
                connected = try Self.connect("unix:" + socketPath)
            } catch let error as Errno where (error == .noSuchFileOrDirectory || error == .connectionRefused) && Date() < listening {
                usleep(50_000)
            }
        }
        let (fd, client) = connected!
        defer {
            NinePClient.closeSocket(fd)
        }
        _ = try client.version(msize: 65536)
        _ = try client.attach(fid: 0, aname: "guest", uid: 0)

        func cycles(_ n: Int) throws {
            for _ in 0..<n {
                _ = try client.attach(fid: 1, aname: "guest", uid: 0)
                try client.clunk(fid: 1)
            }
        }
        func residentKiB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/\(daemon.processIdentifier)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
        }
        func sessions() throws -> Int? {
            let status = try parseJSON(try mustRun("pvfs", ["status", "--json", "--store", store]).stdout) as? [String: Any]
            let served = (status?["daemon"] as? [String: Any])?["servedVMs"] as? [[String: Any]]
            return served?.first { $0["name"] as? String == "guest" }?["sessions"] as? Int
        }

        try cycles(2000)
        let warm = residentKiB()
        try cycles(18_000)
        let after = residentKiB()
        #expect(try sessions() == 1)
        #expect(warm > 0 && after - warm < 2048, "RSS grew from \(warm) KiB to \(after) KiB over 18,000 cycles")
        // Still serving.
        _ = try client.walk(fid: 0, newFid: 2, path: "d1")
    }

    /// Every limit is a pvfsd.conf setting, checked when read.
    @Test func limitsAreConfigurable() throws {
        let text = """
            store = /srv/pvfs
            max-outstanding-requests = 32
            max-outstanding-bytes = 16M
            max-outstanding-flushes = 8
            max-sessions-per-connection = 20
            max-fids-per-connection = 64K
            max-blocked-locks = 4
            max-xattr-buffer-bytes = 1M
            vm-links-per-inode = 1000
            vm-hard-links = 5000
            vm-xattrs-per-inode = 64
            vm-xattr-bytes-per-inode = 64K
            vm-xattr-bytes = 8M
            vm-lock-records = 2048
            vm-lock-records-per-session = 512
            vm-inodes-without-quota = none
            """
        let config = try DaemonConfiguration.parse(text, defaults: DaemonConfiguration(storePath: "/x"))
        #expect(config.connectionLimits.outstandingRequests == 32 && config.connectionLimits.outstandingBytes == 16 << 20)
        #expect(config.connectionLimits.outstandingFlushes == 8 && config.connectionLimits.sessions == 20)
        #expect(config.connectionLimits.fids == 64 << 10 && config.connectionLimits.blockedLocks == 4)
        #expect(config.connectionLimits.xattrBufferBytes == 1 << 20)
        #expect(config.volumeLimits.linksPerInode == 1000 && config.volumeLimits.hardLinks == 5000)
        #expect(config.volumeLimits.xattrsPerInode == 64 && config.volumeLimits.xattrBytesPerInode == 64 << 10)
        #expect(config.volumeLimits.xattrBytes == 8 << 20 && config.volumeLimits.lockRecords == 2048)
        #expect(config.volumeLimits.lockRecordsPerSession == 512 && config.volumeLimits.inodesWithoutQuota == nil)
        let nine = config.ninePConfiguration(unboundLimitCounters: nil)
        #expect(nine.maximumSessions == 20 && nine.maximumOutstandingFlushes == 8 && nine.maximumFids == 65536)
        for bad in ["max-sessions-per-connection = 0", "vm-xattr-bytes = lots", "max-outstanding-bytes = 9999999999G",
                    "vm-links-per-inode = 1"] {
            #expect(throws: ConfigurationError.self) { try DaemonConfiguration.parse(bad, defaults: config) }
        }
    }

    /// The metrics name every limit, with how often each VM reached it.
    @Test func metricsNameEveryLimit() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = try makeStore(area)
        var logger = Logger(label: "test.pvfsd")
        logger.logLevel = .critical
        var configuration = DaemonConfiguration(storePath: store)
        configuration.volumeLimits.lockRecordsPerSession = 3
        configuration.connectionLimits.sessions = 9
        let daemon = try Daemon(configuration: configuration, logger: logger)
        try daemon.start()
        defer { daemon.stop() }
        let view = try daemon.registry.openSession(vm: "guest", policy: SessionPolicy(side: .guest))
        for i in 0..<5 {
            try? view.setLock(rootInode, owner: 1, range: FileLockRange(type: .read, start: UInt64(2 * i), end: UInt64(2 * i), pid: 1),
                              wait: false)
        }
        let text = try #require(try DaemonClient(storePath: store).send(.init(op: "metrics"))?.text)
        for limit in TenantLimit.allCases {
            #expect(text.contains("pvfs_limit_hits_total{vm=\"guest\",limit=\"\(limit.rawValue)\"}"), "\(limit)")
        }
        // Configured values show even when no VM is open.
        daemon.registry.closeSession(view)
        let idle = try #require(try DaemonClient(storePath: store).send(.init(op: "metrics"))?.text)
        #expect(metricSample(idle, "pvfs_limit{limit=\"lock-records-per-session\"}") == 3)
        #expect(metricSample(idle, "pvfs_limit{limit=\"sessions-per-connection\"}") == 9)
        #expect(metricSample(idle, "pvfs_limit_hits_total{vm=\"\",limit=\"sessions-per-connection\"}") == 0)
        #expect(metricSample(text, "pvfs_limit_hits_total{vm=\"guest\",limit=\"lock-records-per-session\"}") == 2)
        #expect(metricSample(text, "pvfs_limit{limit=\"lock-records-per-session\"}") == 3)
        #expect(metricSample(text, "pvfs_limit{limit=\"xattr-bytes\"}") == Double(VolumeLimits().xattrBytes))
        #expect(metricSample(text, "pvfs_lock_records{vm=\"guest\"}") == 3)
        #expect(metricSample(text, "pvfs_quota_inodes{vm=\"guest\"}") == Double(VolumeLimits().inodesWithoutQuota ?? -1))
    }
}
