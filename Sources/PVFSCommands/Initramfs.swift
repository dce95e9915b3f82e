import Foundation
import Glibc

// Building blocks for the boot initramfs a guest needs to run with its root on pvfs:
// a cpio "newc" archive writer, the kernel's module dependency order (modules.dep),
// the kernel version of a bzImage, and a check that a binary is statically linked.

/// An error while assembling boot artefacts.
public struct BootArtifactError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

// MARK: - cpio newc

/// Writes a cpio archive in the "newc" format the Linux kernel unpacks as an initramfs
/// (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst).
///
/// Paths are stored without a leading slash. Parent directories are added automatically
/// before their first entry, because the kernel's unpacker does not create them. Every
/// entry gets uid/gid 0 and the same mtime, so equal inputs give byte-identical archives.
public struct CpioWriter {
    public private(set) var data = Data()
    private var nextInode: UInt32 = 1
    private var seen: Set<String> = []
    private let mtime: UInt32
    private var finished = false

    public init(mtime: UInt32 = 0) {
        self.mtime = mtime
    }

    /// The paths written so far, in order.
    public private(set) var paths: [String] = []

    public mutating func addDirectory(_ path: String, mode: UInt32 = 0o755) {
        let p = Self.normalize(path)
        guard !p.isEmpty, !seen.contains(p) else { return }
        addParents(of: p)
        append(path: p, mode: UInt32(S_IFDIR) | (mode & 0o7777), nlink: 2, body: Data())
    }

    public mutating func addFile(_ path: String, contents: Data, mode: UInt32 = 0o644) {
        let p = Self.normalize(path)
        addParents(of: p)
        append(path: p, mode: UInt32(S_IFREG) | (mode & 0o7777), nlink: 1, body: contents)
    }

    public mutating func addSymlink(_ path: String, target: String) {
        let p = Self.normalize(path)
        addParents(of: p)
        append(path: p, mode: UInt32(S_IFLNK) | 0o777, nlink: 1, body: Data(target.utf8))
    }

    public mutating func addCharacterDevice(_ path: String, major: UInt32, minor: UInt32, mode: UInt32 = 0o600) {
        let p = Self.normalize(path)
        addParents(of: p)
        append(path: p, mode: UInt32(S_IFCHR) | (mode & 0o7777), nlink: 1, body: Data(), rdev: (major, minor))
    }

    /// Whether an entry exists for `path`.
    public func contains(_ path: String) -> Bool { seen.contains(Self.normalize(path)) }

    /// Appends the trailer; the archive is complete afterwards.
    public mutating func finish() -> Data {
        if !finished {
            appendRaw(name: "TRAILER!!!", ino: 0, mode: 0, nlink: 1, body: Data(), rdev: (0, 0))
            finished = true
        }
        return data
    }

    static func normalize(_ path: String) -> String {
        var comps: [Substring] = []
        for c in path.split(separator: "/", omittingEmptySubsequences: true) where c != "." {
            comps.append(c)
        }
        return comps.joined(separator: "/")
    }

    private mutating func addParents(of path: String) {
        var comps = path.split(separator: "/").map(String.init)
        comps.removeLast()
        var prefix = ""
        for c in comps {
            prefix = prefix.isEmpty ? c : prefix + "/" + c
            if !seen.contains(prefix) {
                append(path: prefix, mode: UInt32(S_IFDIR) | 0o755, nlink: 2, body: Data())
            }
        }
    }

    private mutating func append(path: String, mode: UInt32, nlink: UInt32, body: Data,
                                 rdev: (UInt32, UInt32) = (0, 0)) {
        precondition(!finished, "CpioWriter used after finish()")
        if seen.contains(path) { return }
        seen.insert(path)
        paths.append(path)
        appendRaw(name: path, ino: nextInode, mode: mode, nlink: nlink, body: body, rdev: rdev)
        nextInode += 1
    }

    private mutating func appendRaw(name: String, ino: UInt32, mode: UInt32, nlink: UInt32, body: Data,
                                    rdev: (UInt32, UInt32)) {
        let nameBytes = Data(name.utf8) + Data([0])
        let fields: [UInt32] = [
            ino, mode, 0, 0, nlink, name == "TRAILER!!!" ? 0 : mtime, UInt32(body.count),
            0, 0, rdev.0, rdev.1, UInt32(nameBytes.count), 0,
        ]
        var header = "070701"
        for f in fields { header += String(format: "%08x", f) }
        data.append(Data(header.utf8))
        data.append(nameBytes)
        pad()
        data.append(body)
        pad()
    }

    private mutating func pad() {
        let rem = data.count % 4
        if rem != 0 { data.append(Data(count: 4 - rem)) }
    }
}

// MARK: - compression

public enum InitramfsCompression: String, CaseIterable, Sendable, Codable {
    /// gzip through the system's `gzip` tool (every Linux kernel can unpack it).
    case gzip
    /// A plain cpio: largest, but fastest to unpack under software emulation.
    case none
}

/// Runs `gzip -n -9` over `input` and returns the compressed bytes.
public func gzipData(_ input: Data) throws -> Data {
    let tmp = FileManager.default.temporaryDirectory
        .appendingPathComponent("pvfs-initramfs-\(getpid())-\(UInt32.random(in: 0 ... .max)).cpio")
    try input.write(to: tmp)
    defer { try? FileManager.default.removeItem(at: tmp) }
    let out = try runTool(["gzip", "-n", "-9", "-c", tmp.path])
    return out
}

/// Runs a tool found on PATH (or by absolute path) and returns its stdout; throws on failure.
@discardableResult
func runTool(_ argv: [String], stdin: FileHandle? = nil) throws -> Data {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = argv
    let outPipe = Pipe()
    let errFile = FileManager.default.temporaryDirectory
        .appendingPathComponent("pvfs-tool-\(getpid())-\(UInt32.random(in: 0 ... .max)).err")
    guard FileManager.default.createFile(atPath: errFile.path, contents: nil) else {
        throw CommandFailure("cannot create \(errFile.path) for \(argv.first ?? "a tool")'s messages")
    }
    defer { try? FileManager.default.removeItem(at: errFile) }
    let errHandle = try FileHandle(forWritingTo: errFile)
    process.standardOutput = outPipe
    process.standardError = errHandle
    if let stdin { process.standardInput = stdin }
    do {
        try process.run()
    } catch {
        throw BootArtifactError("cannot run \(argv[0]): \(error)")
    }
    // Read stdout to EOF before waiting, so a large output cannot fill the pipe and stall.
    let out = outPipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    try? errHandle.close()
    guard process.terminationStatus == 0 else {
        let err = (try? String(contentsOf: errFile, encoding: .utf8)) ?? ""
        throw BootArtifactError("\(argv.joined(separator: " ")) failed (exit \(process.terminationStatus)): "
            + err.trimmingCharacters(in: .whitespacesAndNewlines))
    }
    return out
}

// MARK: - kernel modules

/// A loadable kernel module: its name (with `_`, as the kernel names it) and file.
public struct KernelModule: Equatable, Codable, Sendable {
    public var name: String
    /// Path relative to /lib/modules/<version>, e.g. `kernel/fs/9p/9p.ko`.
    public var relativePath: String
}

/// The modules of one kernel version, read from `modules.dep` and `modules.builtin`.
public struct KernelModules {
    public let version: String
    public let directory: String
    private var pathByName: [String: String] = [:]
    private var depsByName: [String: [String]] = [:]
    private var builtin: Set<String> = []

    /// `modulesRoot` is normally /lib/modules.
    public init(version: String, modulesRoot: String = "/lib/modules") throws {
        self.version = version
        directory = modulesRoot + "/" + version
        let depPath = directory + "/modules.dep"
        guard let dep = try? String(contentsOfFile: depPath, encoding: .utf8) else {
            throw BootArtifactError("cannot read \(depPath): are the modules of kernel \(version) installed?")
        }
        for line in dep.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let path = String(line[..<colon])
            let deps = line[line.index(after: colon)...].split(separator: " ").map(String.init)
            let name = Self.moduleName(ofPath: path)
            pathByName[name] = path
            depsByName[name] = deps.map(Self.moduleName(ofPath:))
        }
        if let b = try? String(contentsOfFile: directory + "/modules.builtin", encoding: .utf8) {
            for line in b.split(separator: "\n") { builtin.insert(Self.moduleName(ofPath: String(line))) }
        }
    }

    /// `kernel/net/9p/9pnet_fd.ko.xz` → `9pnet_fd`; `xen-evtchn` → `xen_evtchn`.
    public static func moduleName(ofPath path: String) -> String {
        var base = path.split(separator: "/").last.map(String.init) ?? path
        for suffix in [".xz", ".zst", ".gz"] where base.hasSuffix(suffix) { base.removeLast(suffix.count) }
        if base.hasSuffix(".ko") { base.removeLast(3) }
        return base.replacingOccurrences(of: "-", with: "_")
    }

    public func module(named name: String) -> KernelModule? {
        let n = name.replacingOccurrences(of: "-", with: "_")
        return pathByName[n].map { KernelModule(name: n, relativePath: $0) }
    }

    /// The modules `names` need, each after everything it depends on. Names built into
    /// the kernel are left out; an unknown name is an error.
    public func loadOrder(for names: [String]) throws -> [KernelModule] {
        var order: [KernelModule] = []
        var done: Set<String> = []
        var visiting: Set<String> = []
        func visit(_ raw: String) throws {
            let name = raw.replacingOccurrences(of: "-", with: "_")
            if done.contains(name) { return }
            guard let path = pathByName[name] else {
                if builtin.contains(name) { done.insert(name); return }
                throw BootArtifactError("kernel \(version) has no module \(name)")
            }
            guard !visiting.contains(name) else { throw BootArtifactError("module dependency cycle at \(name)") }
            visiting.insert(name)
            for dep in depsByName[name] ?? [] { try visit(dep) }
            visiting.remove(name)
            done.insert(name)
            order.append(KernelModule(name: name, relativePath: path))
        }
        for n in names { try visit(n) }
        return order
    }

    /// The module's bytes, decompressed if the distribution compresses modules
    /// (busybox insmod loads plain .ko files).
    public func contents(of module: KernelModule) throws -> Data {
        let path = directory + "/" + module.relativePath
        if path.hasSuffix(".ko") {
            guard let d = FileManager.default.contents(atPath: path) else {
                throw BootArtifactError("cannot read \(path)")
            }
            return d
        }
        let tool: String
        if path.hasSuffix(".xz") { tool = "xz" } else if path.hasSuffix(".zst") { tool = "zstd" } else { tool = "gzip" }
        return try runTool([tool, "-dc", path])
    }
}

// MARK: - kernel images and binaries

public enum KernelImage {
    /// The release string of an x86 bzImage (e.g. `6.1.0-56-amd64`), read from the setup
    /// header's kernel_version pointer; nil if the file is not a bzImage.
    public static func version(ofImageAt path: String) -> String? {
        guard let fh = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? fh.close() }
        guard let head = try? fh.read(upToCount: 0x10000), head.count > 0x210 else { return nil }
        let bytes = [UInt8](head)
        guard bytes[0x202] == 0x48, bytes[0x203] == 0x64, bytes[0x204] == 0x72, bytes[0x205] == 0x53 else {
            return nil // no "HdrS"
        }
        let ptr = Int(bytes[0x20E]) | Int(bytes[0x20F]) << 8
        let start = ptr + 0x200
        guard ptr != 0, start < bytes.count else { return nil }
        var end = start
        while end < bytes.count, bytes[end] != 0, bytes[end] != 0x20 { end += 1 }
        return String(decoding: bytes[start ..< end], as: UTF8.self)
    }

    /// The newest /boot/vmlinuz-* that has a matching /lib/modules directory.
    public static func newestInstalled(bootDirectory: String = "/boot", modulesRoot: String = "/lib/modules") -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: bootDirectory)) ?? []
        let candidates = names.filter { $0.hasPrefix("vmlinuz-") }
            .filter { FileManager.default.fileExists(atPath: modulesRoot + "/" + $0.dropFirst("vmlinuz-".count)) }
            .sorted { $0.compare($1, options: .numeric) == .orderedAscending }
        return candidates.last.map { bootDirectory + "/" + $0 }
    }
}

public enum ELFFile {
    /// Whether the ELF file at `path` has no program interpreter (is statically linked).
    /// Returns nil if it is not a 64-bit little-endian ELF file.
    public static func isStatic(_ path: String) -> Bool? {
        guard let fh = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? fh.close() }
        guard let head = try? fh.read(upToCount: 64), head.count == 64 else { return nil }
        let h = [UInt8](head)
        guard h[0] == 0x7F, h[1] == 0x45, h[2] == 0x4C, h[3] == 0x46, h[4] == 2, h[5] == 1 else { return nil }
        func u16(_ b: [UInt8], _ o: Int) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 {
            (0 ..< 8).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) }
        }
        let phoff = u64(h, 0x20), phentsize = u16(h, 0x36), phnum = u16(h, 0x38)
        guard phentsize >= 4, phnum > 0 else { return true }
        do {
            try fh.seek(toOffset: phoff)
            guard let ph = try fh.read(upToCount: phentsize * phnum), ph.count == phentsize * phnum else { return nil }
            let p = [UInt8](ph)
            for i in 0 ..< phnum {
                let type = UInt32(p[i * phentsize]) | UInt32(p[i * phentsize + 1]) << 8
                    | UInt32(p[i * phentsize + 2]) << 16 | UInt32(p[i * phentsize + 3]) << 24
                if type == 3 { return false } // PT_INTERP
            }
            return true
        } catch {
            return nil
        }
    }
}
