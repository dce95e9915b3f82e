import Foundation
import Glibc
import PVFSDaemon
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
        let unit = try String(contentsOfFile: packageRoot + "/contrib/systemd/pvfsd.service", encoding: .utf8)
        #expect(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
    }

    /// Under a Type=notify unit, systemd waits for READY=1 and sees STOPPING=1 on SIGTERM.
    @Test func readinessIsReportedToTheServiceManager() throws {
        let area = try ScratchArea()
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
}
