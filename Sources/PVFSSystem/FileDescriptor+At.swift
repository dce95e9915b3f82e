import CPVFSSystem
import Glibc
import SystemPackage

/// Flags of renameat2(2).
public struct RenameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let noReplace = RenameFlags(rawValue: CPVFS_RENAME_NOREPLACE)
    public static let exchange = RenameFlags(rawValue: CPVFS_RENAME_EXCHANGE)
    public static let whiteout = RenameFlags(rawValue: CPVFS_RENAME_WHITEOUT)
}

/// Raw open(2) flags; kept as Int32 so that every Linux flag (O_PATH, O_TMPFILE, O_NOATIME) fits.
public struct OpenFlags: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let readOnly = OpenFlags([])
    public static let writeOnly = OpenFlags(rawValue: O_WRONLY)
    public static let readWrite = OpenFlags(rawValue: O_RDWR)
    public static let create = OpenFlags(rawValue: O_CREAT)
    public static let exclusive = OpenFlags(rawValue: O_EXCL)
    public static let truncate = OpenFlags(rawValue: O_TRUNC)
    public static let append = OpenFlags(rawValue: O_APPEND)
    public static let directory = OpenFlags(rawValue: CPVFS_O_DIRECTORY)
    public static let noFollow = OpenFlags(rawValue: CPVFS_O_NOFOLLOW)
    public static let closeOnExec = OpenFlags(rawValue: CPVFS_O_CLOEXEC)
    public static let path = OpenFlags(rawValue: CPVFS_O_PATH)
    public static let temporaryFile = OpenFlags(rawValue: CPVFS_O_TMPFILE)
    public static let noAccessTime = OpenFlags(rawValue: CPVFS_O_NOATIME)
    public static let nonBlocking = OpenFlags(rawValue: O_NONBLOCK)
}

extension FileDescriptor {
    /// The descriptor that makes *at calls resolve against the current directory.
    public static let currentDirectory = FileDescriptor(rawValue: AT_FDCWD)

    /// openat(2). O_CLOEXEC is always added: no descriptor of ours leaks into a child.
    public static func open(
        at directory: FileDescriptor, _ path: String, _ flags: OpenFlags, mode: UInt32 = 0o644
    ) throws(Errno) -> FileDescriptor {
        let fd = try retryingSyscall {
            cpvfs_openat(directory.rawValue, path, flags.union(.closeOnExec).rawValue, mode_t(mode))
        }
        return FileDescriptor(rawValue: fd)
    }

    /// openat2(2) confined below `directory` (RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS): no
    /// absolute path, `..` or symlink can lead outside it.
    public static func openBeneath(
        _ directory: FileDescriptor, _ path: String, _ flags: OpenFlags, mode: UInt32 = 0o644,
        noSymlinks: Bool = false
    ) throws(Errno) -> FileDescriptor {
        let extra = noSymlinks ? CPVFS_RESOLVE_NO_SYMLINKS : 0
        let fd = try retryingSyscall {
            cpvfs_openat2_beneath(directory.rawValue, path, flags.union(.closeOnExec).rawValue, mode_t(mode), extra)
        }
        return FileDescriptor(rawValue: fd)
    }

    public func stat() throws(Errno) -> FileStat {
        var s = Glibc.stat()
        try retryingSyscall { fstat(rawValue, &s) }
        return FileStat(s)
    }

    /// fstatat(2) of a name below this directory, not following a final symlink.
    public func stat(at path: String, followSymlinks: Bool = false) throws(Errno) -> FileStat {
        var s = Glibc.stat()
        let flags = followSymlinks ? 0 : AT_SYMLINK_NOFOLLOW
        try retryingSyscall { fstatat(rawValue, path, &s, flags) }
        return FileStat(s)
    }

    public func makeDirectory(at path: String, mode: UInt32 = 0o755) throws(Errno) {
        try retryingSyscall { mkdirat(rawValue, path, mode_t(mode)) }
    }

    public func unlink(at path: String, directory: Bool = false) throws(Errno) {
        try retryingSyscall { unlinkat(rawValue, path, directory ? AT_REMOVEDIR : 0) }
    }

    public func rename(at path: String, to newDirectory: FileDescriptor, _ newPath: String,
                       flags: RenameFlags = []) throws(Errno) {
        try retryingSyscall {
            cpvfs_renameat2(rawValue, path, newDirectory.rawValue, newPath, flags.rawValue)
        }
    }

    public func link(at path: String, to newDirectory: FileDescriptor, _ newPath: String) throws(Errno) {
        try retryingSyscall { linkat(rawValue, path, newDirectory.rawValue, newPath, 0) }
    }

    public func symlink(at path: String, target: String) throws(Errno) {
        try retryingSyscall { symlinkat(target, rawValue, path) }
    }

    public func makeNode(at path: String, mode: UInt32, device: UInt64 = 0) throws(Errno) {
        try retryingSyscall { mknodat(rawValue, path, mode_t(mode), dev_t(device)) }
    }

    /// readlinkat(2) of a name below this directory (or of this O_PATH descriptor with "").
    public func readLink(at path: String) throws(Errno) -> [UInt8] {
        var capacity = 256
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            let n = try retryingSyscall {
                buffer.withUnsafeMutableBytes { readlinkat(rawValue, path, $0.baseAddress!.assumingMemoryBound(to: CChar.self), capacity) }
            }
            if n < capacity { return Array(buffer[0..<n]) }
            capacity *= 4
        }
    }

    public func changeMode(_ mode: UInt32) throws(Errno) {
        try retryingSyscall { fchmod(rawValue, mode_t(mode)) }
    }

    public func changeMode(at path: String, _ mode: UInt32) throws(Errno) {
        try retryingSyscall { fchmodat(rawValue, path, mode_t(mode), 0) }
    }

    public func changeOwner(uid: UInt32, gid: UInt32) throws(Errno) {
        try retryingSyscall { fchown(rawValue, uid, gid) }
    }

    public func changeOwner(at path: String, uid: UInt32, gid: UInt32) throws(Errno) {
        try retryingSyscall { fchownat(rawValue, path, uid, gid, AT_SYMLINK_NOFOLLOW) }
    }

    /// futimens(2); nil leaves a time unchanged.
    public func setTimes(access: Timespec?, modification: Timespec?) throws(Errno) {
        var times = [Self.utime(access), Self.utime(modification)]
        try retryingSyscall { futimens(rawValue, &times) }
    }

    /// utimensat(2) of a name below this directory, not following symlinks.
    public func setTimes(at path: String, access: Timespec?, modification: Timespec?) throws(Errno) {
        var times = [Self.utime(access), Self.utime(modification)]
        try retryingSyscall { utimensat(rawValue, path, &times, AT_SYMLINK_NOFOLLOW) }
    }

    private static func utime(_ t: Timespec?) -> timespec {
        guard let t else { return timespec(tv_sec: 0, tv_nsec: Int(CPVFS_UTIME_OMIT)) }
        return t.timespec
    }

    public func truncate(size: Int64) throws(Errno) {
        try retryingSyscall { ftruncate(rawValue, off_t(size)) }
    }

    public func sync() throws(Errno) {
        try retryingSyscall { fsync(rawValue) }
    }

    public func dataSync() throws(Errno) {
        try retryingSyscall { fdatasync(rawValue) }
    }

    /// syncfs(2): flushes the whole filesystem this descriptor is on.
    public func syncFileSystem() throws(Errno) {
        try retryingSyscall { cpvfs_syncfs(rawValue) }
    }

    public func allocate(mode: Int32, offset: Int64, length: Int64) throws(Errno) {
        try retryingSyscall { cpvfs_fallocate(rawValue, mode, off_t(offset), off_t(length)) }
    }

    /// pread(2) into a buffer; returns the bytes read (0 at end of file).
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno) -> Int {
        try retryingSyscall { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// pwrite(2) of a buffer; returns the bytes written.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(Errno) -> Int {
        try retryingSyscall { Glibc.pwrite(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// Writes all of `buffer` at `offset`, looping over short writes.
    public func writeAll(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(Errno) {
        var done = 0
        while done < buffer.count {
            let n = try write(UnsafeRawBufferPointer(rebasing: buffer[done...]), at: offset + Int64(done))
            if n == 0 { throw Errno.noSpace }
            done += n
        }
    }

    /// lseek(2) with SEEK_DATA / SEEK_HOLE; nil where there is no further data (ENXIO).
    public func seek(dataFrom offset: Int64) throws(Errno) -> Int64? {
        do throws(Errno) {
            return Int64(try retryingSyscall { Glibc.lseek(rawValue, off_t(offset), CPVFS_SEEK_DATA) })
        } catch where error == .noSuchAddressOrDevice {
            return nil
        }
    }

    public func seek(holeFrom offset: Int64) throws(Errno) -> Int64 {
        Int64(try retryingSyscall { Glibc.lseek(rawValue, off_t(offset), CPVFS_SEEK_HOLE) })
    }

    /// flock(2) on this descriptor; false where `nonBlocking` and another holder has it.
    @discardableResult
    public func lock(exclusive: Bool, nonBlocking: Bool = false) throws(Errno) -> Bool {
        var op = exclusive ? LOCK_EX : LOCK_SH
        if nonBlocking { op |= LOCK_NB }
        do throws(Errno) {
            try retryingSyscall { flock(rawValue, op) }
            return true
        } catch where error == .wouldBlock && nonBlocking {
            return false
        }
    }

    public func unlock() throws(Errno) {
        try retryingSyscall { flock(rawValue, LOCK_UN) }
    }

    /// statfs(2) of the filesystem holding this descriptor.
    public func fileSystemStatistics() throws(Errno) -> FileSystemStatistics {
        var s = statvfs()
        try retryingSyscall { fstatvfs(rawValue, &s) }
        return FileSystemStatistics(s)
    }

    /// Closes, ignoring errors: for cleanup paths where nothing better can be done.
    public func closeQuietly() {
        _ = Glibc.close(rawValue)
    }
}

/// statvfs(2) numbers.
public struct FileSystemStatistics: Sendable, Equatable {
    public var blockSize: UInt64
    public var fragmentSize: UInt64
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var totalFiles: UInt64
    public var freeFiles: UInt64
    public var availableFiles: UInt64
    public var maximumNameLength: UInt64

    public init(blockSize: UInt64, fragmentSize: UInt64, totalBlocks: UInt64, freeBlocks: UInt64,
                availableBlocks: UInt64, totalFiles: UInt64, freeFiles: UInt64, availableFiles: UInt64,
                maximumNameLength: UInt64) {
        self.blockSize = blockSize
        self.fragmentSize = fragmentSize
        self.totalBlocks = totalBlocks
        self.freeBlocks = freeBlocks
        self.availableBlocks = availableBlocks
        self.totalFiles = totalFiles
        self.freeFiles = freeFiles
        self.availableFiles = availableFiles
        self.maximumNameLength = maximumNameLength
    }

    init(_ s: statvfs) {
        self.init(blockSize: UInt64(s.f_bsize), fragmentSize: UInt64(s.f_frsize), totalBlocks: UInt64(s.f_blocks),
                  freeBlocks: UInt64(s.f_bfree), availableBlocks: UInt64(s.f_bavail), totalFiles: UInt64(s.f_files),
                  freeFiles: UInt64(s.f_ffree), availableFiles: UInt64(s.f_favail), maximumNameLength: UInt64(s.f_namemax))
    }
}
