import CPVFSSystem
import Foundation
import GRDB
import Glibc
import PVFSEngine
import PVFSFuse
import PVFSStore
import PVFSSystem
import SystemPackage

/// A store in a fresh temporary directory holding one template built from a small host tree
/// (by the pvfs-devtool binary, as benchmarks build theirs), VMs provisioned over it, and real
/// FUSE mounts of them:
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
        try Self.buildSourceTree(directory + "/source", bigFileBytes: bigFileBytes)
        let result = try run(Self.binaries + "/pvfs-devtool",
                             ["template", "--store", storePath, "--name", Self.templateName, directory + "/source"])
        guard result.status == 0 else { throw TestFailure("pvfs-devtool template failed: \(result.output)") }
        store = try Store(path: storePath, create: false)
    }

    deinit {
        for entry in FuseMount.mountedFileSystemPaths(below: directory) {
            _ = umount2(entry, Int32(MNT_DETACH))
        }
        _ = try? run("/bin/rm", ["-rf", directory])
    }

    static func pattern(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: offset &* 31 &+ offset >> 12) }

    private static func buildSourceTree(_ root: String, bigFileBytes: Int) throws {
        let fm = FileManager.default
        for dir in ["etc", "usr/bin", "usr/share/doc/deep", "bin", "home/user", "var/tmp"] {
            try fm.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
        }
        func write(_ path: String, _ text: String, mode: Int = 0o644) throws {
            try Data(text.utf8).write(to: URL(fileURLWithPath: root + "/" + path))
            chmod(root + "/" + path, mode_t(mode))
        }
        try write("etc/hostname", "template-host\n")
        try write("etc/hard-a", "shared\n")
        link(root + "/etc/hard-a", root + "/etc/hard-b")
        try write("etc/tagged", "xattr\n")
        setxattr(root + "/etc/tagged", "user.origin", "template", 8, 0)
        try write("usr/bin/tool", "#!/bin/sh\necho tool\n", mode: 0o755)
        try write("usr/share/doc/deep/readme", "deep\n")
        symlink("busybox", root + "/bin/sh")
        try write("home/user/private", "mine\n", mode: 0o600)
        chown(root + "/home/user/private", 1000, 1000)
        chown(root + "/home/user", 1000, 1000)
        chmod(root + "/var/tmp", 0o1777)
        var big = [UInt8](repeating: 0, count: bigFileBytes)
        for i in 0..<bigFileBytes { big[i] = pattern(i) }
        try Data(big).write(to: URL(fileURLWithPath: root + "/big"))
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

    /// Mounts a VM in this process, served by a thread until `unmount`.
    func mount(_ name: String, at path: String? = nil, readOnly: Bool = false,
               caching: FuseMountOptions.Caching = .exclusive) throws -> MountedVM {
        let volume = try Volume.open(store: store, vmName: name)
        let view = VMView(volume: volume, policy: SessionPolicy(side: .host, readOnly: readOnly, enforcePermissions: false),
                          sessionID: 1)
        let mount = try FuseMount(view: view, mountpoint: path ?? mountpoint(name),
                                  options: FuseMountOptions(readOnly: readOnly, allowOther: true, caching: caching))
        return MountedVM(mount: mount, volume: volume)
    }
}

/// An in-process mount and the thread serving it.
///
/// `unmount` drops the mount and the volume, so that the VM's lock (held by the volume's lock
/// file until it is freed) is released for the next open.
final class MountedVM: @unchecked Sendable {
    private var mount: FuseMount?
    private var volume: Volume?
    private let finished = DispatchSemaphore(value: 0)
    let path: String

    init(mount: FuseMount, volume: Volume) {
        self.mount = mount
        self.volume = volume
        self.path = mount.mountpoint
        let thread = Thread { [weak mount, finished] in
            do {
                try mount?.run()
            } catch {
                FileHandle.standardError.write(Data("mount failed: \(error)\n".utf8))
            }
            finished.signal()
        }
        thread.start()
    }

    func unmount() throws {
        guard let mount, let volume else { return }
        mount.stop()
        guard finished.wait(timeout: .now() + 30) == .success else { throw TestFailure("the mount did not stop") }
        try volume.close()
        self.mount = nil
        self.volume = nil
    }

    deinit {
        try? unmount()
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a program to completion; stdout and stderr together.
@discardableResult
func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
         input: FileHandle? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    process.standardInput = input ?? FileHandle(forReadingAtPath: "/dev/null")
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
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
