import CPVFSSystem
import Foundation
import Glibc
import PVFSEngine
import PVFSFuse
import PVFSStore
import PVFSSystem
import SystemPackage

/// A store in a fresh temporary directory holding one template written through the store's API
/// (`Store.createTemplate(name:tree:)`), VMs provisioned over it, and real FUSE mounts of them:
///
///     /etc/hostname              "template-host\n"
///     /etc/hard-a, /etc/hard-b   one inode, two links, "shared\n"
///     /etc/tagged                user.origin = "template"
///     /usr/bin/tool              0755
///     /usr/share/doc/deep/readme
///     /bin/sh -> busybox
///     /home/user                 uid 1000, with private (0600)
///     /var/tmp                   1777
///     /big                       `bigFileBytes` of a position-dependent pattern
final class FuseFixture {
    let directory: String
    let storePath: String
    let store: Store
    let bigFileBytes: Int

    static let templateName = "base"

    /// The directory holding the test bundle and the package's built executables.
    static let binaries: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }()

    /// The repository's root (for Tests/posix).
    static let repository: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    init(bigFileBytes: Int = 1 << 20) throws {
        var template = Array("/tmp/pvfs-fuse-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        directory = String(cString: made)
        chmod(directory, 0o755)
        storePath = directory + "/store"
        self.bigFileBytes = bigFileBytes
        store = try Store(path: storePath)
        try store.createTemplate(name: Self.templateName, tree: Self.tree(bigFileBytes: bigFileBytes))
    }

    deinit {
        for entry in FuseMount.mountedFileSystemPaths(below: directory) {
            _ = umount2(entry, Int32(MNT_DETACH))
        }
        _ = try? run("/bin/rm", ["-rf", directory])
    }

    static func pattern(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: offset &* 31 &+ offset >> 12) }

    /// The template's tree, its times those of its creation as if ingested from a host tree.
    private static func tree(bigFileBytes: Int) -> TemplateTree {
        var t = TemplateTree(time: .now)
        var next: UInt64 = 1
        t.directory(1)
        func add(_ parent: UInt64, _ name: String, _ make: (inout TemplateTree, UInt64) -> Void) -> UInt64 {
            next += 1
            make(&t, next)
            t.entry(parent, name, next)
            return next
        }
        let etc = add(1, "etc") { $0.directory($1) }
        _ = add(etc, "hostname") { $0.file($1, content: "template-host\n") }
        let shared = add(etc, "hard-a") { $0.file($1, content: "shared\n") }
        t.entry(etc, "hard-b", shared)
        let tagged = add(etc, "tagged") { $0.file($1, content: "xattr\n") }
        t.xattr(tagged, "user.origin", Array("template".utf8))
        let usr = add(1, "usr") { $0.directory($1) }
        let usrBin = add(usr, "bin") { $0.directory($1) }
        _ = add(usrBin, "tool") { $0.file($1, content: "#!/bin/sh\necho tool\n", mode: 0o755) }
        let share = add(usr, "share") { $0.directory($1) }
        let doc = add(share, "doc") { $0.directory($1) }
        let deep = add(doc, "deep") { $0.directory($1) }
        _ = add(deep, "readme") { $0.file($1, content: "deep\n") }
        let bin = add(1, "bin") { $0.directory($1) }
        _ = add(bin, "sh") { $0.symlink($1, target: "busybox") }
        let home = add(1, "home") { $0.directory($1) }
        let user = add(home, "user") { $0.directory($1, uid: 1000, gid: 1000) }
        _ = add(user, "private") { $0.file($1, content: "mine\n", mode: 0o600, uid: 1000, gid: 1000) }
        let variable = add(1, "var") { $0.directory($1) }
        _ = add(variable, "tmp") { $0.directory($1, mode: 0o1777) }
        _ = add(1, "big") { $0.file($1, content: (0..<bigFileBytes).map(pattern)) }
        return t
    }

    @discardableResult
    func provision(_ name: String) throws -> VMRecord {
        try store.provisionVM(name: name, template: Self.templateName)
    }

    func mountpoint(_ name: String) throws -> String {
        let path = directory + "/mnt-" + name
        if !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        }
        return path
    }

    /// Mounts a VM in this process, served by a thread until `unmount`, by the FUSE
    /// implementation PVFS_FUSE_ENGINE names (libfuse unless it says fuse-server).
    func mount(_ name: String, at path: String? = nil, readOnly: Bool = false,
               caching: FuseMountOptions.Caching = .exclusive) throws -> MountedVM {
        let volume = try Volume.open(store: store, vmName: name)
        let view = VMView(volume: volume, policy: SessionPolicy(side: .host, readOnly: readOnly, permissionChecks: .hostKernel),
                          sessionID: 1)
        let options = FuseMountOptions(readOnly: readOnly, allowOther: true, caching: caching)
        let mount: any HostFuseMount = switch HostFuseEngine.fromEnvironment {
        case .libfuse: try FuseMount(view: view, mountpoint: path ?? mountpoint(name), options: options)
        case .fuseServer: try FuseServerMount(view: view, mountpoint: path ?? mountpoint(name), options: options)
        }
        return MountedVM(mount: mount, volume: volume)
    }
}

/// An in-process mount and the thread serving it.
///
/// `unmount` drops the mount and the volume, so that the VM's lock (held by the volume's lock
/// file until it is freed) is released for the next open.
final class MountedVM: @unchecked Sendable {
    private var mount: (any HostFuseMount)?
    private var volume: Volume?
    private let finished = DispatchSemaphore(value: 0)
    let path: String

    init(mount: any HostFuseMount, volume: Volume) {
        self.mount = mount
        self.volume = volume
        self.path = mount.mountpoint
        let thread = Thread { [mount, finished] in
            do {
                try mount.run()
            } catch {
                FileHandle.standardError.write(Data("mount failed: \(error)\n".utf8))
            }
            finished.signal()
        }
        thread.start()
    }

    func unmount() throws {
        guard let mount, let volume else { return }
        mount.stop(force: false)
        guard finished.wait(timeout: .now() + 30) == .success else { throw TestFailure("the mount did not stop") }
        try volume.close()
        self.mount = nil
        self.volume = nil
    }

    deinit {
        try? unmount()
    }
}

/// Starts `pvfs-vm mount --foreground` and waits until the mount answers.
func startForeground(_ f: FuseFixture, _ name: String, _ path: String) throws -> Process {
    let server = Process()
    server.executableURL = URL(fileURLWithPath: FuseFixture.binaries + "/pvfs-vm")
    server.arguments = ["mount", "--foreground", "--store", f.storePath, "--allow-other", name, path]
    server.standardInput = FileHandle(forReadingAtPath: "/dev/null")
    try server.run()
    for _ in 0..<500 {
        if FuseMount.pvfsMount(at: path) != nil, access(path + "/etc", F_OK) == 0 { return server }
        if !server.isRunning { throw TestFailure("pvfs-vm mount exited with \(server.terminationStatus)") }
        usleep(10_000)
    }
    throw TestFailure("the mount of \(name) did not come up")
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a program to completion; stdout and stderr together.
///
/// The child starts with no signal blocked and every signal at its default action: test runners
/// run tests on threads that block signals, and a tool such as stress-ng, which stops its
/// workers with SIGALRM, would otherwise never stop.
@discardableResult
func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw Errno(rawValue: errno) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
    posix_spawn_file_actions_addclose(&actions, fds[0])
    posix_spawn_file_actions_addclose(&actions, fds[1])
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t()
    sigemptyset(&none)
    var all = sigset_t()
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var env = ProcessInfo.processInfo.environment
    if let environment { env.merge(environment) { $1 } }
    let cArguments = ([executable] + arguments).map { strdup($0) } + [nil]
    let cEnvironment = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        cArguments.forEach { free($0) }
        cEnvironment.forEach { free($0) }
    }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, &attributes, cArguments, cEnvironment)
    close(fds[1])
    guard rc == 0 else {
        close(fds[0])
        throw Errno(rawValue: rc)
    }
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fds[0], &buffer, buffer.count)
        if n > 0 { output += buffer[0..<n]; continue }
        if n < 0 && errno == EINTR { continue }
        break
    }
    close(fds[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let exitCode = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return (exitCode, String(decoding: output, as: UTF8.self))
}

func readFile(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

func writeFile(_ path: String, _ text: String) throws {
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

func inode(_ path: String) throws -> UInt64 {
    var st = stat()
    guard lstat(path, &st) == 0 else { throw Errno(rawValue: errno) }
    return UInt64(st.st_ino)
}

extension FuseMount {
    /// Mountpoints below `directory` in this process's mount table (for cleanup).
    static func mountedFileSystemPaths(below directory: String) -> [String] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            let path = String(fields[4])
            return path.hasPrefix(directory + "/") ? path : nil
        }.reversed()
    }
}
