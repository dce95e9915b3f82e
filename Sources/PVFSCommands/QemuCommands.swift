import ArgumentParser
import Foundation
import Glibc
import PVFSDaemon
import PVFSStore

// QEMU guests on user networking (slirp) reach every port of the host's 127.0.0.1 through
// 10.0.2.2, so a listener per VM does not keep one guest from another VM's listener. With
// `restrict=on` the guest reaches nothing of the host but explicit forwards; a `guestfwd` to the
// VM's own Unix socket listener then gives it its root and nothing else.

/// `pvfs-vm qemu-args VM`: the QEMU options that give a guest its own VM and nothing else on the
/// host: over 9P, an isolated user network forwarding one address to the VM's Unix listener;
/// over virtio-fs, shared guest memory and a vhost-user-fs device on the VM's bound socket.
public struct QemuArgs: ParsableCommand {
    public enum Transport: String, ExpressibleByArgument, CaseIterable, Codable {
        case ninep = "9p"
        case virtiofs
    }

    public static let configuration = CommandConfiguration(
        commandName: "qemu-args",
        abstract: "Print the QEMU options that give a guest its own VM (9P over an isolated network, or virtio-fs) and nothing else on the host.",
        discussion: """
            --transport 9p (default): on QEMU's user networking a guest reaches every port of the \
            host's 127.0.0.1 (as 10.0.2.2), so a TCP listener per VM does not keep guests apart: a \
            guest can attach to another VM's listener. These options isolate the guest \
            (restrict=on) and forward one address (10.0.2.100:564 by default) to the VM's Unix \
            socket listener, through `pvfs-vm socket-bridge`, started by QEMU for each connection. \
            The guest mounts `mount -t 9p -o trans=tcp,port=564,version=9p2000.L,aname=VM 10.0.2.100 /mnt`. \
            The socket is the unix: listener the VM is bound to (pvfs-vm bind VM --listener NAME, \
            with `listen = NAME unix:PATH` in pvfsd.conf), or --socket.

            --transport virtiofs: the guest needs no network. The options give it memory QEMU \
            shares with pvfsd (memory-backend-memfd, share=on, --memory bytes: equal to QEMU's -m), \
            one NUMA node on it, and a vhost-user-fs device on the VM's vhost-user socket \
            (pvfs-vm bind VM --vhost-user PATH, or --socket) with the tag --tag (default: the VM's \
            name). The guest mounts `mount -t virtiofs TAG /mnt`.

            The options go to stdout (shell-quoted, one line); the guest's mount command to stderr.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Argument(help: "The VM the guest boots.")
    public var vm: String

    @Option(name: .long, help: "How the guest reaches its VM: 9p or virtiofs.")
    public var transport: Transport = .ninep

    @Option(name: .long, help: ArgumentHelp("The VM's socket: its Unix listener (9p) or vhost-user socket (virtiofs); default from its bindings.", valueName: "path"))
    public var socket: String?

    @Option(name: .long, help: ArgumentHelp("pvfsd's configuration file, to find the 9P socket (default /etc/pvfs/pvfsd.conf).", valueName: "path"))
    public var config: String?

    @Option(name: .long, help: ArgumentHelp("9p: the address the guest connects to (on QEMU's 10.0.2.0/24).", valueName: "ipv4"))
    public var address = "10.0.2.100"

    @Option(name: .long, help: "9p: the port the guest connects to.")
    public var port = 564

    @Option(name: .long, help: ArgumentHelp("The -netdev id (9p) or the chardev id (virtiofs; the memory backend is ID-mem).", valueName: "id"))
    public var id: String?

    @Option(name: .long, help: ArgumentHelp("9p: the NIC model for -device.", valueName: "model"))
    public var nic = "virtio-net-pci"

    @Option(name: .long, help: ArgumentHelp("virtiofs: the guest's memory, as QEMU's -m takes it (e.g. 512M, 2G).", valueName: "size"))
    public var memory = "1G"

    @Option(name: .long, help: ArgumentHelp("virtiofs: the mount tag (at most 36 bytes; default the VM's name).", valueName: "tag"))
    public var tag: String?

    public init() {}

    public struct Result: Codable {
        public var vm: String
        public var transport: Transport
        public var socket: String
        /// 9p only.
        public var address: String?
        public var port: Int?
        /// virtiofs only.
        public var tag: String?
        public var memory: String?
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
        guard !(id ?? "x").isEmpty, !(id ?? "").contains(","), !nic.contains(",") else { throw ValidationError("--id and --nic may not contain commas") }
        if let id, !id.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }) || !(id.first?.isLetter ?? false) {
            throw ValidationError("--id must start with a letter and hold only letters, digits, '-', '_', '.'")
        }
        guard Self.memoryBytes(memory) != nil else { throw ValidationError("--memory takes a size such as 512M or 2G") }
        try Self.validateTag(tag ?? vm, option: tag == nil ? "the VM's name as the tag (give --tag)" : "--tag")
    }

    static func validateTag(_ tag: String, option: String) throws {
        guard !tag.isEmpty, tag.utf8.count <= 36, !tag.contains(","), !tag.contains("'"), !tag.contains("\""),
              tag.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 }) else {
            throw ValidationError("\(option): a virtio-fs tag is 1 to 36 printable ASCII bytes without spaces, commas or quotes")
        }
    }

    /// "512M", "2G", "1073741824" → bytes; nil when malformed or absurd.
    static func memoryBytes(_ text: String) -> UInt64? {
        var digits = text
        var unit: UInt64 = 1 << 20  // QEMU's -m default unit is MiB
        if let last = text.last, last.isLetter {
            digits = String(text.dropLast())
            switch last {
            case "k", "K": unit = 1 << 10
            case "m", "M": unit = 1 << 20
            case "g", "G": unit = 1 << 30
            case "t", "T": unit = 1 << 40
            default: return nil
            }
        }
        guard let value = UInt64(digits), value > 0 else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: unit)
        guard !overflow, bytes >= 1 << 20, bytes <= 1 << 50 else { return nil }
        return bytes
    }

    public func run() throws {
        try runCommand {
            let result = try build()
            try output.emit(result) {
                print(result.command)
                FileHandle.standardError.write(Data("# in the guest: \(result.mount)\n".utf8))
            }
        }
    }

    func build() throws -> Result {
        switch transport {
        case .ninep:
            let path = try socketPath()
            let id = self.id ?? "n0"
            let bridge = [Self.ownExecutable(), "socket-bridge", path]
            // QEMU's option syntax: a comma inside a value is written twice.
            let command = bridge.map(shellQuote).joined(separator: " ").replacingOccurrences(of: ",", with: ",,")
            let netdev = "user,id=\(id),restrict=on,guestfwd=tcp:\(address):\(port)-cmd:\(command)"
            let arguments = ["-netdev", netdev, "-device", "\(nic),netdev=\(id),romfile="]
            return Result(vm: vm, transport: transport, socket: path, address: address, port: port, arguments: arguments,
                          command: arguments.map(shellQuote).joined(separator: " "),
                          mount: "mount -t 9p -o trans=tcp,port=\(port),version=9p2000.L,aname=\(vm) \(address) /mnt")
        case .virtiofs:
            let path = try vhostUserSocket(vm: vm, socket: socket, storeOptions: storeOptions, logging: logging)
            let tag = self.tag ?? vm
            let id = self.id ?? "vfs0"
            let arguments = [
                "-object", "memory-backend-memfd,id=\(id)-mem,size=\(memory),share=on",
                "-numa", "node,memdev=\(id)-mem",
                "-chardev", "socket,id=\(id),path=\(path.replacingOccurrences(of: ",", with: ",,"))",
                "-device", "vhost-user-fs-pci,chardev=\(id),tag=\(tag)",
            ]
            return Result(vm: vm, transport: transport, socket: path, tag: tag, memory: memory, arguments: arguments,
                          command: arguments.map(shellQuote).joined(separator: " "),
                          mount: "mount -t virtiofs \(tag) /mnt")
        }
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
        let bound = Set(try bindingValues(vm: vm, kind: "listener", storeOptions: storeOptions, logging: logging))
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

/// The values of an existing VM's bindings of one kind (listener names, socket paths).
func bindingValues(vm: String, kind: String, storeOptions: StoreOptions, logging: LoggingOptions) throws -> [String] {
    let store = try Store(path: storeOptions.storePath, create: false, logger: logging.makeLogger("pvfs.vm"))
    _ = try store.requireVM(named: vm)
    return try store.bindings(vm: vm).filter { $0.kind == kind }.map(\.value)
}

/// The vhost-user socket a VM is bound to (`pvfs-vm bind VM --vhost-user PATH`), or `socket`.
func vhostUserSocket(vm: String, socket: String?, storeOptions: StoreOptions, logging: LoggingOptions) throws -> String {
    if let socket {
        do {
            return try BindingTarget.socketPath(socket.hasPrefix("/") ? socket : FileManager.default.currentDirectoryPath + "/" + socket)
        } catch let error as ValidationError {
            throw CommandFailure(error.message.replacingOccurrences(of: "--vhost-user", with: "--socket"))
        }
    }
    let sockets = try bindingValues(vm: vm, kind: "vhost-user", storeOptions: storeOptions, logging: logging).sorted()
    switch sockets.count {
    case 1:
        return sockets[0]
    case 0:
        throw CommandFailure("""
            VM \(vm) has no vhost-user socket. Bind one (pvfsd listens on it at once):
              pvfs-vm bind \(vm) --vhost-user /run/pvfs/\(vm).vhost
            or pass --socket PATH.
            """, exitCode: PVFSExitCode.notFound)
    default:
        throw CommandFailure("VM \(vm) has several vhost-user sockets (\(sockets.joined(separator: ", "))); pass --socket PATH")
    }
}

/// `pvfs-vm libvirt-xml VM`: the libvirt domain XML for a guest whose root (or a share) is the
/// VM over virtio-fs, with pvfsd as the externally started back-end.
public struct LibvirtXML: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "libvirt-xml",
        abstract: "Print the libvirt <filesystem> and <memoryBacking> elements for a VM over virtio-fs through pvfsd.",
        discussion: """
            pvfsd is the virtio-fs back-end, started outside libvirt: `<source socket=.../>` names \
            the VM's vhost-user socket (pvfs-vm bind VM --vhost-user PATH, or --socket). The \
            <filesystem> element goes into the domain's <devices>; the <memoryBacking> element \
            (memfd, shared: pvfsd maps the guest's memory) into the domain itself. libvirt's QEMU \
            must be able to connect to the socket: pvfsd creates it with mode 0600 for its own user, \
            so run QEMU as root (user = "root" in qemu.conf) or change the socket's owner after \
            binding. The guest mounts `mount -t virtiofs TAG /mnt`.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Argument(help: "The VM the guest mounts.")
    public var vm: String

    @Option(name: .long, help: ArgumentHelp("The VM's vhost-user socket (default: from its binding).", valueName: "path"))
    public var socket: String?

    @Option(name: .long, help: ArgumentHelp("The mount tag (at most 36 bytes; default the VM's name).", valueName: "tag"))
    public var tag: String?

    @Option(name: .long, help: "Entries of the request queue (libvirt's <driver queue=...>; a power of two).")
    public var queueSize = 1024

    public init() {}

    public struct Result: Codable {
        public var vm: String
        public var socket: String
        public var tag: String
        /// Goes into <devices>.
        public var filesystem: String
        /// Goes into <domain>.
        public var memoryBacking: String
        public var mount: String
    }

    public func validate() throws {
        try QemuArgs.validateTag(tag ?? vm, option: tag == nil ? "the VM's name as the tag (give --tag)" : "--tag")
        guard queueSize >= 16, queueSize <= 32768, queueSize & (queueSize - 1) == 0 else {
            throw ValidationError("--queue-size must be a power of two from 16 to 32768")
        }
    }

    public func run() throws {
        try runCommand {
            let result = try build()
            try output.emit(result) {
                print(result.memoryBacking)
                print(result.filesystem)
                FileHandle.standardError.write(Data("# in the guest: \(result.mount)\n".utf8))
            }
        }
    }

    func build() throws -> Result {
        let path = try vhostUserSocket(vm: vm, socket: socket, storeOptions: storeOptions, logging: logging)
        let tag = self.tag ?? vm
        let filesystem = """
            <filesystem type='mount'>
              <driver type='virtiofs' queue='\(queueSize)'/>
              <source socket='\(xmlEscaped(path))'/>
              <target dir='\(xmlEscaped(tag))'/>
            </filesystem>
            """
        let memoryBacking = """
            <memoryBacking>
              <source type='memfd'/>
              <access mode='shared'/>
            </memoryBacking>
            """
        return Result(vm: vm, socket: path, tag: tag, filesystem: filesystem, memoryBacking: memoryBacking,
                      mount: "mount -t virtiofs \(tag) /mnt")
    }

    private func xmlEscaped(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "'", with: "&apos;")
            .replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
            .replacingOccurrences(of: "\"", with: "&quot;")
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
