import Glibc
import SystemPackage

/// One entry of a host directory, without "." and "..".
public struct HostDirectoryEntry: Sendable {
    public var name: String
    public var inode: UInt64
    /// The d_type; DT_UNKNOWN where the filesystem does not fill it.
    public var type: UInt8
}

extension FileDescriptor {
    /// Reads all entries of the directory this descriptor refers to (the descriptor is duplicated,
    /// so it stays open and usable).
    public func directoryEntries() throws(Errno) -> [HostDirectoryEntry] {
        let copy = try retryingSyscall { Glibc.openat(rawValue, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard let dir = fdopendir(copy) else {
            let code = Glibc.errno
            _ = Glibc.close(copy)
            throw Errno(rawValue: code)
        }
        defer { closedir(dir) }
        var entries: [HostDirectoryEntry] = []
        while true {
            Glibc.errno = 0
            guard let entry = readdir(dir) else {
                if Glibc.errno != 0 { throw Errno(rawValue: Glibc.errno) }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw -> String in
                let bytes = raw.prefix { $0 != 0 }
                return String(decoding: bytes, as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            entries.append(HostDirectoryEntry(name: name, inode: UInt64(entry.pointee.d_ino), type: entry.pointee.d_type))
        }
        return entries
    }
}
