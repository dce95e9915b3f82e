import ArgumentParser
import Foundation
import Glibc
import PVFSDaemon
import PVFSStore

// QEMU guests on user networking (slirp) reach every port of the host's 127.0.0.1 through
// 10.0.2.2, so a listener per VM does not keep one guest from another VM's listener. With
// `restrict=on` the guest reaches nothing of the host but explicit forwards; a `guestfwd` to the
// VM's own Unix socket listener then gives it its root and nothing else.

/// `pvfs-vm qemu-args VM`: the QEMU network options that give a guest its own pvfsd listener only.
public struct QemuArgs: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "qemu-args",
        abstract: "Print QEMU network options that let a guest reach its own VM's listener and nothing else on the host.",
        discussion: """
            On QEMU's user networking a guest reaches every port of the host's 127.0.0.1 (as \
            10.0.2.2), so a TCP listener per VM does not keep guests apart: a guest can attach to \
            another VM's listener. These options isolate the guest (restrict=on) and forward one \
            address (10.0.2.100:564 by default) to the VM's Unix socket listener, through \
            `pvfs-vm socket-bridge`, started by QEMU for each connection. The guest mounts \
            `mount -t 9p -o trans=tcp,port=564,version=9p2000.L,aname=VM 10.0.2.100 /mnt`.

            The socket is the unix: listener the VM is bound to (pvfs-vm bind VM --listener NAME, \
            with `listen = NAME unix:PATH` in pvfsd.conf), or --socket. The options go to stdout \
            (shell-quoted, one line); the guest's mount command to stderr.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Argument(help: "The VM the guest boots.")
    public var vm: String

    @Option(name: .long, help: ArgumentHelp("The VM's Unix socket listener (default: from its listener binding and pvfsd.conf).", valueName: "path"))
    public var socket: String?

    @Option(name: .long, help: ArgumentHelp("pvfsd's configuration file, to find the socket (default /etc/pvfs/pvfsd.conf).", valueName: "path"))
    public var config: String?

    @Option(name: .long, help: ArgumentHelp("The address the guest connects to (on QEMU's 10.0.2.0/24).", valueName: "ipv4"))
    public var address = "10.0.2.100"

    @Option(name: .long, help: "The port the guest connects to.")
    public var port = 564

    @Option(name: .long, help: ArgumentHelp("The -netdev id (the NIC's netdev=).", valueName: "id"))
    public var id = "n0"

    @Option(name: .long, help: ArgumentHelp("The NIC model for -device.", valueName: "model"))
    public var nic = "virtio-net-pci"

    public init() {}

    public struct Result: Codable {
        public var vm: String
        public var socket: String
        public var address: String
        public var port: Int
        /// The QEMU options, one argv word each.
        public var arguments: [String]
        /// The same, shell-quoted on one line.
        public var command: String
        /// What the guest runs to mount the VM.
        public var mount: String
    }

    public func validate() throws {
        let octets = address.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4, octets.allSatisfy({ UInt8($0) != nil }) else {
            throw ValidationError("--address must be an IPv4 address")
        }
        guard (1...65535).contains(port) else { throw ValidationError("--port must be in 1...65535") }
        guard !id.isEmpty, !id.contains(","), !nic.contains(",") else { throw ValidationError("--id and --nic may not contain commas") }
    }

    public func run() throws {
        try runReportingFailures {
            let result = try build()
            if output.json {
                try printJSON(result)
            } else {
                print(result.command)
                FileHandle.standardError.write(Data("# in the guest: \(result.mount)\n".utf8))
            }
        }
    }

    func build() throws -> Result {
        let path = try socketPath()
        let bridge = [Self.ownExecutable(), "socket-bridge", path]
        // QEMU's option syntax: a comma inside a value is written twice.
        let command = bridge.map(shellQuote).joined(separator: " ").replacingOccurrences(of: ",", with: ",,")
        let netdev = "user,id=\(id),restrict=on,guestfwd=tcp:\(address):\(port)-cmd:\(command)"
        let arguments = ["-netdev", netdev, "-device", "\(nic),netdev=\(id),romfile="]
        return Result(vm: vm, socket: path, address: address, port: port, arguments: arguments,
                      command: arguments.map(shellQuote).joined(separator: " "),
                      mount: "mount -t 9p -o trans=tcp,port=\(port),version=9p2000.L,aname=\(vm) \(address) /mnt")
    }

    /// The Unix listener the VM is bound to, from its bindings and pvfsd.conf.
    func socketPath() throws -> String {
        if let socket { return absolute(socket) }
        let configPath = config ?? DaemonConfiguration.defaultPath
        guard let text = try? String(contentsOfFile: configPath, encoding: .utf8) else {
            throw CommandFailure("cannot read \(configPath) to find VM \(vm)'s Unix socket listener; pass --socket PATH (or --config)")
        }
        let daemon: DaemonConfiguration
        do {
            daemon = try DaemonConfiguration.parse(text, defaults: DaemonConfiguration(storePath: storeOptions.storePath))
        } catch {
            throw CommandFailure("\(configPath): \(error)")
        }
        let logger = logging.makeLogger("pvfs.vm")
        let store = try Store(path: storeOptions.storePath, create: false, logger: logger)
        _ = try store.requireVM(named: vm)
        let bound = Set(try store.bindings(vm: vm).filter { $0.kind == "listener" }.map(\.value))
        let sockets = daemon.listeners.filter { bound.contains($0.name) && $0.address.hasPrefix("unix:") }
        switch sockets.count {
        case 1:
            return String(sockets[0].address.dropFirst(5))
        case 0:
            throw CommandFailure("""
                VM \(vm) is bound to no unix: listener of \(configPath). Add one, e.g.
                  listen = \(vm)-sock unix:/run/pvfs/\(vm).9p      (in \(configPath), then restart pvfsd)
                  pvfs-vm bind \(vm) --listener \(vm)-sock
                or pass --socket PATH.
                """)
        default:
            throw CommandFailure("VM \(vm) is bound to several unix: listeners (\(sockets.map(\.name).joined(separator: ", "))); pass --socket PATH")
        }
    }

    private func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    /// This program's absolute path: QEMU runs the bridge without our PATH.
    static func ownExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "pvfs-vm" }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// `pvfs-vm socket-bridge PATH`: copies standard input to a Unix socket and the socket to
/// standard output, for QEMU's `guestfwd=...-cmd:`.
public struct SocketBridge: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "socket-bridge",
        abstract: "Connect standard input and output to a Unix socket (QEMU runs it for guestfwd=...-cmd:).",
        discussion: """
            QEMU connects the program's standard input, output and error to the guest's TCP \
            connection, so the bridge never writes to standard error: a failure is only its exit \
            status (1: cannot connect, 2: I/O error).
            """)

    @Argument(help: "The Unix socket to connect to (the VM's pvfsd listener).")
    public var path: String

    public init() {}

    public func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let socket = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socket >= 0, Self.connect(socket, path) else { throw ExitCode(1) }
        guard Self.pump(input: 0, output: 1, socket: socket) else { throw ExitCode(2) }
    }

    static func connect(_ fd: Int32, _ path: String) -> Bool {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path), !bytes.contains(0) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0
    }

    /// Copies input → socket and socket → output until both directions ended. True when they
    /// ended by end of stream.
    static func pump(input: Int32, output: Int32, socket: Int32) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        var inputOpen = true
        var socketOpen = true
        while socketOpen {
            var fds = [pollfd(fd: socket, events: Int16(POLLIN), revents: 0)]
            if inputOpen { fds.append(pollfd(fd: input, events: Int16(POLLIN), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                return false
            }
            if fds[0].revents != 0 {
                let n = read(socket, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n < 0 { return false }
                if n == 0 {
                    socketOpen = false
                } else if !writeAll(output, buffer, n) {
                    return false
                }
            }
            if inputOpen, fds.count > 1, fds[1].revents != 0 {
                let n = read(input, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    // The guest closed its side: tell the server, keep its last replies coming.
                    inputOpen = false
                    shutdown(socket, Int32(SHUT_WR))
                } else if !writeAll(socket, buffer, n) {
                    return false
                }
            }
        }
        return true
    }

    static func writeAll(_ fd: Int32, _ buffer: [UInt8], _ count: Int) -> Bool {
        var offset = 0
        while offset < count {
            let n = buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }
}
