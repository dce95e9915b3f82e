import Foundation
import Glibc
import PVFS9P
import PVFSDaemon
import PVFSTestSupport
import PVFSTransport
import SystemPackage
import Testing

/// pvfsd as a system service: the example configuration, systemd's readiness protocol, SIGTERM.
@Suite("pvfsd as a service", .serialized)
struct DaemonServiceTests {
    @Test func exampleConfigurationParses() throws {
        let text = try String(contentsOfFile: packageRoot + "/contrib/pvfsd.conf", encoding: .utf8)
        let config = try DaemonConfiguration.parse(text, defaults: DaemonConfiguration(storePath: "/elsewhere"))
        #expect(config.storePath == "/var/lib/pvfs")
        #expect(config.listeners.map(\.address) == ["unix:/run/pvfs/9p.sock"])
        #expect(config.metricsAddress == "tcp:127.0.0.1:9641" && !config.xenEnabled && config.janitorIntervalSeconds == 3600)
        #expect(throws: ConfigurationError.self) { try DaemonConfiguration.parse("listne = tcp:1:2\n", defaults: config) }
        // Every limit is listed, commented out at its default: uncommented, nothing changes.
        let limitLines = text.split(separator: "\n").map(String.init).filter { line in
            DaemonConfiguration.Limits().settings.contains { line.hasPrefix("# \($0.key) = ") }
        }
        #expect(limitLines.count == DaemonConfiguration.Limits().settings.count)
        let uncommented = try DaemonConfiguration.parse(limitLines.map { String($0.dropFirst(2)) }.joined(separator: "\n"),
                                                        defaults: config)
        #expect(uncommented.limits == DaemonConfiguration.Limits())
        let tuned = try DaemonConfiguration.parse("""
            max-connections = 100
            max-connections-per-listener = 10
            max-connections-per-vm = 3
            handshake-timeout = 2.5
            idle-timeout = 0
            max-outstanding-requests = 16
            max-outstanding-bytes = 8M
            reply-queue-bytes = 512K
            xen-ring-requests = 32
            xen-ring-reply-bytes = 1MiB
            tenant-cpu-nice = 10
            """, defaults: config)
        #expect(tuned.limits.tenantCPUNice == 10)
        #expect(tuned.limits.tenants.maximumConnections == 100 && tuned.limits.tenants.maximumConnectionsPerListener == 10)
        #expect(tuned.limits.tenants.maximumConnectionsPerVM == 3 && tuned.limits.tenants.handshakeTimeoutSeconds == 2.5)
        #expect(tuned.limits.tenants.idleTimeoutSeconds == 0 && tuned.connectionLimits.outstandingRequests == 16)
        #expect(tuned.connectionLimits.outstandingBytes == 8 << 20 && tuned.limits.replyQueueBytes == 512 << 10)
        #expect(tuned.limits.xenRing == XenRingLimits(maxRequestsInFlight: 32, maxReplyBytes: 1 << 20))
        for bad in ["max-connections = 0", "handshake-timeout = -1", "reply-queue-bytes = 12Q",
                    "max-outstanding-bytes = 99999999999999999999G", "xen-ring-requests = many",
                    "tenant-cpu-nice = 21", "tenant-cpu-nice = -1"] {
            #expect(throws: ConfigurationError.self) { try DaemonConfiguration.parse(bad, defaults: config) }
        }
        let unit = try String(contentsOfFile: packageRoot + "/contrib/systemd/pvfsd.service", encoding: .utf8)
        #expect(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
    }

    /// Under a Type=notify unit, systemd waits for READY=1 and sees STOPPING=1 on SIGTERM.
    @Test func readinessIsReportedToTheServiceManager() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let socketPath = area.sub("notify")
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(socketPath.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        let process = Process()
        process.executableURL = URL(fileURLWithPath: try builtProduct("pvfsd"))
        process.arguments = ["--store", area.sub("store"), "--listen", "unix:" + area.sub("9p.sock"), "--quiet"]
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = socketPath
        process.environment = environment
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

        func receive() -> String {
            var buffer = [UInt8](repeating: 0, count: 256)
            let n = recv(fd, &buffer, buffer.count, 0)
            return n > 0 ? String(decoding: buffer[..<n], as: UTF8.self) : ""
        }
        #expect(receive().hasPrefix("READY=1"))
        // Ready means serving: the listener accepts.
        #expect(FileManager.default.fileExists(atPath: area.sub("9p.sock")))
        kill(process.processIdentifier, SIGTERM)
        #expect(receive() == "STOPPING=1")
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }

    /// A free TCP port on 127.0.0.1 (bound and released).
    func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else { throw Errno(rawValue: errno) }
        return UInt16(bigEndian: address.sin_port)
    }

    func connectTCP(_ port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw error
        }
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// pvfsd serving VMs "a" and "b" of one small template, each bound to a listener of its own
    /// (`a-port`, `b-port`), with its metrics endpoint answering; `extraConfiguration` lines are
    /// added to its pvfsd.conf. The caller stops the daemon.
    struct TwoListenerDaemon {
        let area: TemporaryDirectory
        let daemon: Process
        let portA: UInt16, portB: UInt16, portMetrics: UInt16
    }

    func startTwoListenerDaemon(seed: UInt64, extraConfiguration: String = "") throws -> TwoListenerDaemon {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = area.sub("store")
        try makeSeededTree(at: area.sub("src"), files: 4, size: 1000, seed: seed)
        try mustRun("pvfs-template", ["create", "base", "--from", area.sub("src"), "--store", store])
        for vm in ["a", "b"] {
            try mustRun("pvfs-vm", ["provision", "--template", "base", vm, "--no-hooks", "--store", store])
            try mustRun("pvfs-vm", ["bind", vm, "--listener", "\(vm)-port", "--store", store])
        }
        let (portA, portB, portMetrics) = (try freePort(), try freePort(), try freePort())
        let config = area.sub("pvfsd.conf")
        try write(config, Array("""
            store = \(store)
            listen = a-port tcp:127.0.0.1:\(portA)
            listen = b-port tcp:127.0.0.1:\(portB)
            metrics = tcp:127.0.0.1:\(portMetrics)
            \(extraConfiguration)

            """.utf8))
        let daemon = try startTool("pvfsd", ["--config", config, "--quiet"])
        var up = false
        for _ in 0..<200 where !up {
            if let fd = try? connectTCP(portMetrics) { close(fd); up = true } else { usleep(50_000) }
        }
        #expect(up)
        return TwoListenerDaemon(area: area, daemon: daemon, portA: portA, portB: portB, portMetrics: portMetrics)
    }

    /// The value of one sample of a Prometheus text page (`name{labels}`), nil when absent.
    func sample(_ page: String, _ series: String) -> Double? {
        metricSample(page, series)
    }

    func httpGet(_ port: UInt16, _ path: String) throws -> String {
        let fd = try connectTCP(port)
        defer { close(fd) }
        let request = Array("GET \(path) HTTP/1.0\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// pvfsd with two VMs, each bound to a listener of its own: 600 idle connections to one
    /// listener leave the other VM's client unaffected, are closed after the handshake timeout,
    /// and show in the metrics; a VM's connection cap answers EUSERS.
    @Test func oneTenantsFloodLeavesTheOthersServed() throws {
        let served = try startTwoListenerDaemon(seed: 3, extraConfiguration: """
            max-connections-per-listener = 100
            max-connections-per-vm = 2
            handshake-timeout = 3
            """)
        let (daemon, portA, portB, portMetrics) = (served.daemon, served.portA, served.portB, served.portMetrics)
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }

        var idle: [Int32] = []
        defer { for fd in idle { close(fd) } }
        for _ in 0..<600 { idle.append(try connectTCP(portA)) }

        // VM b's client, on its own listener, is served.
        func attach() throws -> (Int32, NinePClient) {
            let fd = try connectTCP(portB)
            let client = NinePClient(fileDescriptor: fd)
            do {
                _ = try client.version(msize: 65536)
                _ = try client.attach(fid: 0, aname: "b")
            } catch {
                NinePClient.closeSocket(fd)
                throw error
            }
            return (fd, client)
        }
        let (fd1, c1) = try attach()
        defer { NinePClient.closeSocket(fd1) }
        _ = try c1.walk(fid: 0, newFid: 1, path: "d0/f0")
        _ = try c1.lopen(fid: 1, flags: 0)
        #expect(try c1.read(fid: 1, offset: 0, count: 4096) == benchContent(seed: 3, file: 0, bytes: 1000))
        // Its cap: a second connection attaches, a third is refused with EUSERS.
        let (fd2, _) = try attach()
        defer { NinePClient.closeSocket(fd2) }
        #expect(throws: Errno.tooManyUsers) { _ = try attach() }

        let listenerA = "{kind=\"listener\",tenant=\"a-port\""
        let metrics = try httpGet(portMetrics, "/metrics")
        #expect((sample(metrics, "pvfs_tenant_connections\(listenerA)}") ?? 0) <= 100)
        #expect(sample(metrics, "pvfs_tenant_connections{kind=\"vm\",tenant=\"b\"}") == 2)
        #expect((sample(metrics, "pvfs_tenant_refusals_total\(listenerA),limit=\"max-connections-per-listener\"}") ?? 0) >= 300)
        #expect(sample(metrics, "pvfs_tenant_refusals_total{kind=\"vm\",tenant=\"b\",limit=\"max-connections-per-vm\"}") == 1)
        #expect(sample(metrics, "pvfs_limit{limit=\"handshake-timeout\"}") == 3)

        // The idle ones are closed after the handshake timeout; the attached ones stay.
        var byte: UInt8 = 0
        let started = Date()
        #expect(recv(idle[0], &byte, 1, 0) == 0)
        #expect(Date().timeIntervalSince(started) < 10)
        var later = ""
        for _ in 0..<100 {
            later = try httpGet(portMetrics, "/metrics")
            if sample(later, "pvfs_tenant_connections\(listenerA)}") == 0 { break }
            usleep(100_000)
        }
        #expect(sample(later, "pvfs_tenant_connections\(listenerA)}") == 0)
        // Each of the 600 was refused at the cap or closed at the timeout.
        let refused = sample(later, "pvfs_tenant_refusals_total\(listenerA),limit=\"max-connections-per-listener\"}") ?? 0
        let timedOut = sample(later, "pvfs_tenant_refusals_total\(listenerA),limit=\"handshake-timeout\"}") ?? 0
        #expect(refused + timedOut == 600 && timedOut >= 100)
        #expect(try c1.getattr(fid: 1).size == 1000)

        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
    }

    /// `pvfs-vm qemu-args` finds the VM's Unix listener from its binding and pvfsd.conf, and
    /// `pvfs-vm socket-bridge` (run with one socket as stdin and stdout, as QEMU runs it) carries
    /// a 9P session to that listener.
    @Test func qemuArgsAndSocketBridgeReachTheVMsSocket() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = area.sub("store")
        try makeSeededTree(at: area.sub("src"), files: 2, size: 500, seed: 4)
        try mustRun("pvfs-template", ["create", "base", "--from", area.sub("src"), "--store", store])
        try mustRun("pvfs-vm", ["provision", "--template", "base", "web1", "--no-hooks", "--store", store])
        let socketPath = area.sub("web1.9p")
        let config = area.sub("pvfsd.conf")
        try write(config, Array("store = \(store)\nlisten = web1-sock unix:\(socketPath)\n".utf8))

        // Not bound yet: the command says how to set it up.
        let unbound = try runTool("pvfs-vm", ["qemu-args", "web1", "--config", config, "--store", store])
        #expect(unbound.status == 1 && unbound.stderr.contains("pvfs-vm bind web1 --listener"))
        try mustRun("pvfs-vm", ["bind", "web1", "--listener", "web1-sock", "--store", store])
        let printed = try parseJSON(try mustRun("pvfs-vm", ["qemu-args", "web1", "--config", config, "--store", store, "--json"]).stdout)
            as! [String: Any]
        let arguments = try #require(printed["arguments"] as? [String])
        #expect(arguments.count == 4 && arguments[0] == "-netdev" && arguments[2] == "-device")
        #expect(arguments[1].hasPrefix("user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:564-cmd:/"))
        #expect(arguments[1].hasSuffix("/pvfs-vm socket-bridge \(socketPath)"))
        #expect(printed["mount"] as? String == "mount -t 9p -o trans=tcp,port=564,version=9p2000.L,aname=web1 10.0.2.100 /mnt")
        let human = try mustRun("pvfs-vm", ["qemu-args", "web1", "--socket", "/run/a,b.9p", "--address", "10.0.2.7", "--port", "5640"])
        #expect(human.stdout.contains("guestfwd=tcp:10.0.2.7:5640-cmd:") && human.stdout.contains("/run/a,,b.9p"))
        #expect(human.stderr.contains("10.0.2.7 /mnt"))

        let daemon = try startTool("pvfsd", ["--config", config, "--quiet"])
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        var listening = false
        for _ in 0..<200 where !listening {
            listening = FileManager.default.fileExists(atPath: socketPath)
            if !listening { usleep(50_000) }
        }
        #expect(listening)
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        let bridge = Process()
        bridge.executableURL = URL(fileURLWithPath: try builtProduct("pvfs-vm"))
        bridge.arguments = ["socket-bridge", socketPath]
        let end = FileHandle(fileDescriptor: pair[1], closeOnDealloc: false)
        bridge.standardInput = end
        bridge.standardOutput = end
        bridge.standardError = end
        try bridge.run()
        close(pair[1])
        let client = NinePClient(fileDescriptor: pair[0])
        #expect(try client.version(msize: 65536).version == "9P2000.L")
        _ = try client.attach(fid: 0, aname: "web1")
        _ = try client.walk(fid: 0, newFid: 1, path: "d1/f1")
        _ = try client.lopen(fid: 1, flags: 0)
        #expect(try client.read(fid: 1, offset: 0, count: 4096) == benchContent(seed: 4, file: 1, bytes: 500))
        // The guest side closing ends the bridge.
        shutdown(pair[0], Int32(SHUT_RDWR))
        bridge.waitUntilExit()
        #expect(bridge.terminationStatus == 0)
        close(pair[0])
        // No listener: exit status 1, nothing written to the guest's stream.
        let nowhere = try runTool("pvfs-vm", ["socket-bridge", area.sub("none.9p")])
        #expect(nowhere.status == 1 && nowhere.stdout.isEmpty && nowhere.stderr.isEmpty)
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
    }
}
