import Foundation
import Glibc
import PVFSTestSupport
import Testing

/// `pvfs-vm bind/unbind --vhost-user`, served by a running pvfsd, and the QEMU options and
/// libvirt XML for it.
@Suite("pvfsd: vhost-user bindings from the command line", .serialized)
struct VhostUserCommandTests {
    func connect(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let b = Array(path.utf8)
            raw.copyBytes(from: b)
            raw[b.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 { close(fd); return -1 }
        return fd
    }

    /// VHOST_USER_GET_FEATURES as QEMU sends it first; the features offered, or nil.
    func features(_ path: String) -> UInt64? {
        let fd = connect(path)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let request: [UInt8] = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 5000) == 1 else { return nil }
        var reply = [UInt8](repeating: 0, count: 20)
        let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 20, Int32(MSG_WAITALL)) }
        guard n == 20 else { return nil }
        return reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 12, as: UInt64.self) }
    }

    func isSocket(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
    }

    @Test func bindServesUnbindStopsAndTheGuestOptionsMatch() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = area.sub("store")
        try makeSeededTree(at: area.sub("src"), files: 2, size: 500, seed: 5)
        try mustRun("pvfs-template", ["create", "base", "--from", area.sub("src"), "--store", store])
        for vm in ["web1", "web2"] {
            try mustRun("pvfs-vm", ["provision", "--template", "base", vm, "--no-hooks", "--store", store])
        }
        let path = area.sub("run/web1.vhost")

        // Bad input is refused before anything changes.
        let relative = try runTool("pvfs-vm", ["bind", "web1", "--vhost-user", "web1.vhost", "--store", store])
        #expect(relative.status != 0 && relative.stderr.contains("absolute path"))
        let two = try runTool("pvfs-vm", ["bind", "web1", "--vhost-user", path, "--tcp", "10.0.0.1", "--store", store])
        #expect(two.status != 0)
        let unbound = try runTool("pvfs-vm", ["qemu-args", "web1", "--transport", "virtiofs", "--store", store])
        #expect(unbound.status == 3 && unbound.stderr.contains("pvfs-vm bind web1 --vhost-user"))

        let daemon = try startTool("pvfsd", ["--store", store, "--quiet"])
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        for _ in 0..<200 where !isSocket(store + "/pvfsd.sock") { usleep(50_000) }

        // Bound while pvfsd runs: it listens before bind returns, 0600, and speaks vhost-user.
        try mustRun("pvfs-vm", ["bind", "web1", "--vhost-user", path, "--store", store])
        #expect(isSocket(path))
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600 && st.st_uid == geteuid())
        let offered = try #require(features(path))
        #expect(offered & (1 << 32) != 0, "VIRTIO_F_VERSION_1 offered")
        // One socket, one VM.
        let clash = try runTool("pvfs-vm", ["bind", "web2", "--vhost-user", path, "--store", store])
        #expect(clash.status == 4 && clash.stderr.contains("bound to VM web1"))
        let shown = try mustRun("pvfs-vm", ["show", "web1", "--store", store]).stdout
        #expect(shown.contains("vhost-user \(path)"))
        let status = try mustRun("pvfs", ["status", "--store", store]).stdout
        #expect(status.contains(path))

        // What QEMU needs, from the binding.
        let printed = try parseJSON(try mustRun("pvfs-vm", ["qemu-args", "web1", "--transport", "virtiofs", "--memory", "512M",
                                                            "--store", store, "--json"]).stdout) as! [String: Any]
        #expect(printed["socket"] as? String == path && printed["tag"] as? String == "web1")
        #expect(printed["arguments"] as? [String] == [
            "-object", "memory-backend-memfd,id=vfs0-mem,size=512M,share=on", "-numa", "node,memdev=vfs0-mem",
            "-chardev", "socket,id=vfs0,path=\(path)", "-device", "vhost-user-fs-pci,chardev=vfs0,tag=web1",
        ])
        #expect(printed["mount"] as? String == "mount -t virtiofs web1 /mnt")
        for bad in [["--memory", "lots"], ["--tag", String(repeating: "t", count: 37)], ["--id", "a,b"]] {
            let refused = try runTool("pvfs-vm", ["qemu-args", "web1", "--transport", "virtiofs", "--store", store] + bad)
            #expect(refused.status != 0, "\(bad)")
        }

        // What libvirt needs, valid against libvirt's own schema inside a minimal domain.
        let xml = try parseJSON(try mustRun("pvfs-vm", ["libvirt-xml", "web1", "--store", store, "--json"]).stdout) as! [String: Any]
        let filesystem = try #require(xml["filesystem"] as? String)
        let memoryBacking = try #require(xml["memoryBacking"] as? String)
        #expect(filesystem.contains("<driver type='virtiofs'") && filesystem.contains("<source socket='\(path)'/>"))
        #expect(filesystem.contains("<target dir='web1'/>") && memoryBacking.contains("<access mode='shared'/>"))
        let human = try mustRun("pvfs-vm", ["libvirt-xml", "web1", "--store", store])
        #expect(human.stdout == memoryBacking + "\n" + filesystem + "\n" && human.stderr.contains("mount -t virtiofs web1"))
        let domain = area.sub("domain.xml")
        try write(domain, Array("""
            <domain type='kvm'>
              <name>web1</name>
              <memory unit='MiB'>512</memory>
            \(memoryBacking)
              <os><type arch='x86_64' machine='q35'>hvm</type></os>
              <devices>
            \(filesystem)
              </devices>
            </domain>
            """.utf8))
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/virt-xml-validate") {
            let validation = try runProgram("/usr/bin/virt-xml-validate", [domain, "domain"])
            #expect(validation.status == 0, "\(validation.stdout)\(validation.stderr)")
        }

        // A restarted pvfsd picks the binding up at start.
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(!isSocket(path))
        let again = try startTool("pvfsd", ["--store", store, "--quiet"])
        defer { if again.isRunning { kill(again.processIdentifier, SIGKILL) } }
        // The socket file appears at bind(), a moment before pvfsd listens and serves it.
        var offeredAgain = features(path)
        let serving = Date(timeIntervalSinceNow: 30)
        while offeredAgain == nil && Date() < serving {
            usleep(100_000)
            offeredAgain = features(path)
        }
        #expect(offeredAgain != nil)

        // Unbound: the socket goes at once.
        try mustRun("pvfs-vm", ["unbind", "web1", "--vhost-user", path, "--store", store])
        #expect(!isSocket(path))
        let gone = try runTool("pvfs-vm", ["unbind", "web1", "--vhost-user", path, "--store", store])
        #expect(gone.status == 3)
        kill(again.processIdentifier, SIGTERM)
        again.waitUntilExit()
        #expect(again.terminationStatus == 0)
    }
}

/// Runs a program given by path and waits for it.
func runProgram(_ path: String, _ arguments: [String]) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.standardOutput = Pipe()
    process.standardError = Pipe()
    try process.run()
    return collectOutput(of: process)
}
