import Foundation
import Glibc
import PVFSSystem
import SystemPackage

/// pvfs mounts in the calling process's mount table (/proc/self/mountinfo).
public enum FuseMountTable {
    public struct Entry: Sendable {
        public var device: (major: UInt32, minor: UInt32)?
        public var mountpoint: String
        public var fileSystemType: String
        public var source: String

        public var isPVFS: Bool { fileSystemType == "fuse.pvfs" }
    }

    /// The calling process's mounts (paths unescaped).
    public static func entries() -> [Entry] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var result: [Entry] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            let numbers = fields[2].split(separator: ":")
            var device: (UInt32, UInt32)?
            if numbers.count == 2, let major = UInt32(numbers[0]), let minor = UInt32(numbers[1]) { device = (major, minor) }
            result.append(Entry(device: device, mountpoint: unescape(fields[4]),
                                fileSystemType: String(fields[dash + 1]), source: unescape(fields[dash + 2])))
        }
        return result
    }

    /// mountinfo writes space, tab, newline and backslash as octal escapes.
    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        let raw = Array(field.utf8)
        var i = 0
        while i < raw.count {
            if raw[i] == UInt8(ascii: "\\"), i + 3 < raw.count,
               let value = UInt8(String(decoding: raw[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(raw[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A pvfs mount found in the mount table.
    public struct MountedView: Sendable, Equatable {
        public var mountpoint: String
        /// From the mount's source, `pvfs:<vm>`.
        public var vmName: String?
    }

    /// The pvfs mount at `path` (the mountpoint itself, not a directory below one), also when its
    /// serving process died and the mount only answers ENOTCONN.
    public static func pvfsMount(at path: String) -> MountedView? {
        let canonical = canonicalPath(path)
        guard let entry = entries().last(where: { $0.mountpoint == canonical }), entry.isPVFS else { return nil }
        let vmName = entry.source.hasPrefix("pvfs:") ? String(entry.source.dropFirst("pvfs:".count)) : nil
        return MountedView(mountpoint: canonical, vmName: vmName)
    }

    /// realpath(3); for a dead mount (whose root cannot be resolved) the resolved parent plus the
    /// last component.
    public static func canonicalPath(_ path: String) -> String {
        if let resolved = realpath(path, nil) {
            defer { free(resolved) }
            return String(cString: resolved)
        }
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let parent = url.deletingLastPathComponent().path
        guard let resolvedParent = realpath(parent, nil) else { return url.path }
        defer { free(resolvedParent) }
        let base = String(cString: resolvedParent)
        return (base == "/" ? "" : base) + "/" + url.lastPathComponent
    }

    /// The directory a mount may go on: resolved, a directory, and without a pvfs mount yet.
    public static func checkMountpoint(_ mountpoint: String) throws(PVFSError) -> String {
        guard let resolved = realpath(mountpoint, nil) else {
            let error = Errno(rawValue: Glibc.errno)
            throw PVFSError(.mount, "cannot mount on \(mountpoint): \(error)", errno: error)
        }
        let canonical = String(cString: resolved)
        free(resolved)
        var st = Glibc.stat()
        guard Glibc.lstat(canonical, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw PVFSError(.mount, "cannot mount on \(mountpoint): not a directory", errno: .notDirectory)
        }
        if entries().contains(where: { $0.mountpoint == canonical && $0.isPVFS }) {
            throw PVFSError(.mount, "\(canonical) already has a pvfs mount", errno: .resourceBusy)
        }
        return canonical
    }

    /// Aborts the kernel side of a FUSE connection (/sys/fs/fuse/connections/N/abort): whatever
    /// still uses the mount gets ENOTCONN.
    public static func abortConnection(_ connection: UInt32) {
        let directory = "/sys/fs/fuse/connections"
        if access("\(directory)/\(connection)", F_OK) != 0 {
            // The fusectl filesystem is not mounted everywhere (systemd mounts it; containers
            // and minimal systems may not).
            _ = Glibc.mount("fusectl", directory, "fusectl", 0, nil)
        }
        let fd = Glibc.open("\(directory)/\(connection)/abort", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = Glibc.write(fd, "1", 1)
        Glibc.close(fd)
    }
}
