import CPVFSSystem
import Glibc
import SystemPackage

// Calls that take names and paths as bytes. A POSIX name is any byte string without '/' and NUL,
// so a tree copied exactly (non-UTF-8 names included) never goes through String.

extension Array where Element == UInt8 {
    /// These bytes for messages: as UTF-8 when valid and printable, else printable ASCII with
    /// every other byte (and the backslash) as \xNN.
    public var displayText: String {
        if let text = String(validating: self, as: UTF8.self), !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            return text
        }
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in self {
            if byte >= 0x20 && byte < 0x7f && byte != UInt8(ascii: "\\") {
                out.append(byte)
            } else {
                out += [UInt8(ascii: "\\"), UInt8(ascii: "x"), digits[Int(byte >> 4)], digits[Int(byte & 0xf)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Runs `body` with these bytes as a NUL-terminated C string, on the stack where small.
    @inlinable
    public func withCPath<R>(_ body: (UnsafePointer<CChar>) -> R) -> R {
        let count = self.count
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: count + 1) { buffer in
            self.withUnsafeBytes { source in
                if count > 0 {
                    UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: source.baseAddress!, byteCount: count)
                }
            }
            buffer[count] = 0
            return body(buffer.baseAddress!)
        }
    }
}

/// One entry of a directory as getdents64 returns it, name as bytes ("." and ".." left out).
public struct RawDirectoryEntry: Sendable {
    public var name: [UInt8]
    public var inode: UInt64
    /// The d_type; DT_UNKNOWN where the filesystem does not fill it.
    public var type: UInt8
}

extension FileDescriptor {
    /// openat(2) of a byte path. O_CLOEXEC is always added.
    public static func open(at directory: FileDescriptor, _ path: [UInt8], _ flags: OpenFlags, mode: UInt32 = 0o644) throws(Errno) -> FileDescriptor {
        let fd = try retryingSyscall {
            path.withCPath { cpvfs_openat(directory.rawValue, $0, flags.union(.closeOnExec).rawValue, mode_t(mode)) }
        }
        return FileDescriptor(rawValue: fd)
    }

    /// openat2(2) of a byte path confined below `directory` (RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
    /// plus `resolve`, e.g. CPVFS_RESOLVE_NO_SYMLINKS | CPVFS_RESOLVE_NO_XDEV).
    public static func openBeneath(_ directory: FileDescriptor, _ path: [UInt8], _ flags: OpenFlags, mode: UInt32 = 0o644,
                                   resolve: UInt64) throws(Errno) -> FileDescriptor {
        let fd = try retryingSyscall {
            path.withCPath { cpvfs_openat2_beneath(directory.rawValue, $0, flags.union(.closeOnExec).rawValue, mode_t(mode), resolve) }
        }
        return FileDescriptor(rawValue: fd)
    }

    /// fstatat(2) of a byte name below this directory, never following a final symlink.
    public func stat(at path: [UInt8]) throws(Errno) -> FileStat {
        var s = Glibc.stat()
        try retryingSyscall { path.withCPath { fstatat(rawValue, $0, &s, AT_SYMLINK_NOFOLLOW) } }
        return FileStat(s)
    }

    public func makeDirectory(at path: [UInt8], mode: UInt32) throws(Errno) {
        try retryingSyscall { path.withCPath { mkdirat(rawValue, $0, mode_t(mode)) } }
    }

    public func unlink(at path: [UInt8], directory: Bool = false) throws(Errno) {
        try retryingSyscall { path.withCPath { unlinkat(rawValue, $0, directory ? AT_REMOVEDIR : 0) } }
    }

    public func symlink(at path: [UInt8], target: [UInt8]) throws(Errno) {
        try retryingSyscall { target.withCPath { t in path.withCPath { symlinkat(t, rawValue, $0) } } }
    }

    public func makeNode(at path: [UInt8], mode: UInt32, device: UInt64 = 0) throws(Errno) {
        try retryingSyscall { path.withCPath { mknodat(rawValue, $0, mode_t(mode), dev_t(device)) } }
    }

    /// linkat(2) without following symlinks.
    public func link(at path: [UInt8], to newDirectory: FileDescriptor, _ newPath: [UInt8]) throws(Errno) {
        try retryingSyscall { path.withCPath { old in newPath.withCPath { linkat(rawValue, old, newDirectory.rawValue, $0, 0) } } }
    }

    public func rename(at path: [UInt8], to newDirectory: FileDescriptor, _ newPath: [UInt8], flags: RenameFlags = []) throws(Errno) {
        try retryingSyscall {
            path.withCPath { old in newPath.withCPath { cpvfs_renameat2(rawValue, old, newDirectory.rawValue, $0, flags.rawValue) } }
        }
    }

    /// readlinkat(2) of a byte name below this directory.
    public func readLink(at path: [UInt8]) throws(Errno) -> [UInt8] {
        var capacity = 256
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            let n = try retryingSyscall {
                path.withCPath { p in
                    buffer.withUnsafeMutableBytes { readlinkat(rawValue, p, $0.baseAddress!.assumingMemoryBound(to: CChar.self), capacity) }
                }
            }
            if n < capacity { return Array(buffer[0..<n]) }
            capacity *= 4
        }
    }

    /// fchownat(2), not following a final symlink.
    public func changeOwner(at path: [UInt8], uid: UInt32, gid: UInt32) throws(Errno) {
        try retryingSyscall { path.withCPath { fchownat(rawValue, $0, uid, gid, AT_SYMLINK_NOFOLLOW) } }
    }

    /// fchmodat(2) (which always follows symlinks: never call it on one).
    public func changeMode(at path: [UInt8], _ mode: UInt32) throws(Errno) {
        try retryingSyscall { path.withCPath { fchmodat(rawValue, $0, mode_t(mode), 0) } }
    }

    /// utimensat(2) of a byte name, not following a final symlink.
    public func setTimes(at path: [UInt8], access: Timespec, modification: Timespec) throws(Errno) {
        var times = [access.timespec, modification.timespec]
        try retryingSyscall { path.withCPath { utimensat(rawValue, $0, &times, AT_SYMLINK_NOFOLLOW) } }
    }

    /// All entries of this directory descriptor, read with getdents64 from its start. Names are
    /// bytes, exactly as stored.
    public func rawDirectoryEntries() throws(Errno) -> [RawDirectoryEntry] {
        _ = try retryingSyscall { Glibc.lseek(rawValue, 0, SEEK_SET) }
        let capacity = 64 * 1024
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }
        var entries: [RawDirectoryEntry] = []
        while true {
            let n = try retryingSyscall { cpvfs_getdents64(rawValue, buffer, capacity) }
            if n == 0 { break }
            var offset = 0
            while offset < n {
                // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
                let record = buffer + offset
                let inode = record.loadUnaligned(as: UInt64.self)
                let length = Int(record.loadUnaligned(fromByteOffset: 16, as: UInt16.self))
                let type = record.load(fromByteOffset: 18, as: UInt8.self)
                let namePointer = (record + 19).assumingMemoryBound(to: UInt8.self)
                let nameLength = strnlen(UnsafeRawPointer(namePointer).assumingMemoryBound(to: CChar.self), length - 19)
                offset += length
                if nameLength == 1 && namePointer[0] == UInt8(ascii: ".") { continue }
                if nameLength == 2 && namePointer[0] == UInt8(ascii: ".") && namePointer[1] == UInt8(ascii: ".") { continue }
                entries.append(RawDirectoryEntry(name: Array(UnsafeBufferPointer(start: namePointer, count: nameLength)),
                                                 inode: inode, type: type))
            }
        }
        return entries
    }

    /// posix_fadvise(POSIX_FADV_SEQUENTIAL) over the whole file; advice only, errors ignored.
    public func adviseSequential() {
        _ = cpvfs_fadvise(rawValue, 0, 0, CPVFS_FADV_SEQUENTIAL)
    }
}

/// Extended attributes with names and values as bytes, of a descriptor or of a path whose last
/// component is never followed (the l* calls).
public enum RawExtendedAttributes {
    public enum Target {
        case descriptor(FileDescriptor)
        /// A NUL-free path; its last component is not followed.
        case path([UInt8])
        /// An entry of a directory, not followed if it is a symlink: listxattrat/getxattrat
        /// where the kernel has them (6.13), else the l* calls through /proc/self/fd.
        case entry(directory: FileDescriptor, name: [UInt8])
    }

    /// Cleared once listxattrat/getxattrat turn out to be missing.
    nonisolated(unsafe) private static var haveAtCalls = true

    /// The target with `.entry` resolved to a /proc path when the *at calls are missing.
    private static func effective(_ target: Target) -> Target {
        if case .entry(let directory, let name) = target, !haveAtCalls {
            return .path(procPath(directory: directory, name: name))
        }
        return target
    }

    /// The path that reaches `name` in the directory `directory` through /proc without resolving
    /// anything but the directory's descriptor: for the l*xattr calls on entries that cannot be
    /// opened (symlinks, devices, fifos, sockets).
    public static func procPath(directory: FileDescriptor, name: [UInt8]) -> [UInt8] {
        Array("/proc/self/fd/\(directory.rawValue)/".utf8) + name
    }

    public static func list(_ target: Target) throws(Errno) -> [[UInt8]] {
        let target = effective(target)
        var capacity = 1024
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            let n: Int
            do throws(Errno) {
                n = try retryingSyscall {
                    buffer.withUnsafeMutableBytes { raw in
                        let p = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
                        switch target {
                        case .descriptor(let fd): return flistxattr(fd.rawValue, p, capacity)
                        case .path(let path): return path.withCPath { llistxattr($0, p, capacity) }
                        case .entry(let dir, let name): return name.withCPath { cpvfs_listxattrat(dir.rawValue, $0, p, capacity) }
                        }
                    }
                }
            } catch where error == .outOfRange {
                capacity *= 4
                if capacity > 1 << 24 { throw error }
                continue
            } catch where error == .notSupported {
                return []
            } catch where error == .noFunction {
                if case .entry = target {
                    haveAtCalls = false
                    return try list(effective(target))
                }
                throw error
            }
            var names: [[UInt8]] = []
            var start = 0
            for i in 0..<n where buffer[i] == 0 {
                if i > start { names.append(Array(buffer[start..<i])) }
                start = i + 1
            }
            return names
        }
    }

    /// One attribute's value; nil when it vanished since it was listed.
    public static func get(_ target: Target, name: [UInt8]) throws(Errno) -> [UInt8]? {
        let target = effective(target)
        var capacity = 256
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            do throws(Errno) {
                let n = try retryingSyscall {
                    name.withCPath { cname in
                        buffer.withUnsafeMutableBytes { raw in
                            switch target {
                            case .descriptor(let fd): return fgetxattr(fd.rawValue, cname, raw.baseAddress, capacity)
                            case .path(let path): return path.withCPath { lgetxattr($0, cname, raw.baseAddress, capacity) }
                            case .entry(let dir, let entry):
                                return entry.withCPath { cpvfs_getxattrat(dir.rawValue, $0, cname, raw.baseAddress, capacity) }
                            }
                        }
                    }
                }
                return Array(buffer[0..<n])
            } catch where error == .outOfRange {
                capacity = capacity >= 65536 ? capacity * 2 : 65536
                if capacity > 1 << 24 { throw error }
            } catch where error == .noData {
                return nil
            } catch where error == .noFunction {
                if case .entry = target {
                    haveAtCalls = false
                    return try get(effective(target), name: name)
                }
                throw error
            }
        }
    }

    /// All attributes with their values, sorted by name.
    public static func all(_ target: Target) throws(Errno) -> [(name: [UInt8], value: [UInt8])] {
        let names = try list(target)
        if names.isEmpty { return [] }
        var result: [(name: [UInt8], value: [UInt8])] = []
        for name in names.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            if let value = try get(target, name: name) { result.append((name, value)) }
        }
        return result
    }

    public static func set(_ target: Target, name: [UInt8], value: [UInt8]) throws(Errno) {
        var path: [UInt8]?
        var descriptor: FileDescriptor?
        switch target {
        case .descriptor(let fd): descriptor = fd
        case .path(let p): path = p
        case .entry(let dir, let entry): path = procPath(directory: dir, name: entry)
        }
        try retryingSyscall {
            name.withCPath { cname in
                value.withUnsafeBytes { raw in
                    if let descriptor { return fsetxattr(descriptor.rawValue, cname, raw.baseAddress, raw.count, 0) }
                    return path!.withCPath { lsetxattr($0, cname, raw.baseAddress, raw.count, 0) }
                }
            }
        }
    }
}

extension FileDescriptor {
    /// ioctl(FICLONE): makes this (empty) file share all of `source`'s extents. Fails with
    /// EXDEV, EOPNOTSUPP, ENOTTY or EINVAL where the filesystems cannot share them.
    public func clone(from source: FileDescriptor) throws(Errno) {
        try retryingSyscall { cpvfs_ficlone(rawValue, source.rawValue) }
    }
}

extension FileDescriptor {
    /// Gives this unnamed file (O_TMPFILE) the name `name` in `directory`: linkat with
    /// AT_EMPTY_PATH, which needs CAP_DAC_READ_SEARCH, else through /proc/self/fd. Fails with
    /// EEXIST when the name exists.
    public func linkAnonymous(to directory: FileDescriptor, _ name: [UInt8]) throws(Errno) {
        do throws(Errno) {
            try retryingSyscall { name.withCPath { linkat(rawValue, "", directory.rawValue, $0, CPVFS_AT_EMPTY_PATH) } }
        } catch where error == .noSuchFileOrDirectory || error == .notPermitted {
            let path = Array("/proc/self/fd/\(rawValue)".utf8)
            try retryingSyscall { path.withCPath { p in name.withCPath { linkat(AT_FDCWD, p, directory.rawValue, $0, AT_SYMLINK_FOLLOW) } } }
        }
    }

    /// Writes all of `bytes` at `offset`.
    public func writeAll(_ bytes: [UInt8], at offset: Int64) throws(Errno) {
        let result: Result<Void, Errno> = bytes.withUnsafeBytes { raw in
            do throws(Errno) {
                try writeAll(raw, at: offset)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// Appends all of `bytes` with write(2) (for O_APPEND descriptors).
    public func appendAll(_ bytes: [UInt8]) throws(Errno) {
        var done = 0
        while done < bytes.count {
            let n = try retryingSyscall { bytes.withUnsafeBytes { Glibc.write(rawValue, $0.baseAddress! + done, $0.count - done) } }
            if n == 0 { throw Errno.noSpace }
            done += n
        }
    }
}
