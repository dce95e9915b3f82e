import Foundation
import GRDB
import Logging
import PVFSSystem
import Synchronization
import SystemPackage

/// Space held back on the store's filesystem so that catalog commits still go through when
/// guests have filled it: an allocated file, `reserve` in the store directory.
///
/// A catalog commit needs room in SQLite's log even when it frees space (an unlink, a truncate),
/// so on a completely full filesystem nobody could free space from inside a guest. The reserve
/// file holds the space physically, whoever else writes to the filesystem. When a catalog commit
/// fails because the filesystem is full, the store deletes the file and commits again (the
/// reserve is *depleted*). While it is depleted, the engine answers ENOSPC to everything that
/// would consume space again (data writes, copy-ups, new inodes, xattrs), so what the file
/// freed stays for the catalog: deletes, renames, truncates and attribute changes keep working.
/// As soon as the filesystem has room for the reserve and as much again, the file is allocated
/// again and writes are accepted.
///
/// A free-space threshold checked before every data write (statvfs against the reserve) was the
/// alternative: it protects nothing from writers outside pvfs, and concurrent writers of many
/// VMs all pass the check at once; the allocated file is space nobody else can take.
public final class SpaceReserve: Sendable {
    /// The reserve when none is configured: 8 MiB, or 1/32 of a smaller filesystem.
    public static let defaultBytes: Int64 = 8 << 20
    /// The reserve a store of `totalBytes` gets by default.
    public static func defaultBytes(forFileSystemOf totalBytes: Int64) -> Int64 {
        let fraction = (totalBytes / 32) & ~4095
        return max(256 << 10, min(defaultBytes, fraction))
    }
    /// The environment variable that sets the reserve, in bytes (suffixes K, M, G); 0 disables it.
    public static let environmentVariable = "PVFS_SPACE_RESERVE"

    /// The reserve's size in bytes; 0 when disabled.
    public let bytes: Int64
    private let directory: FileDescriptor
    private let logger: Logger
    /// The reserve file, open, while this process sees it in place. Whether the reserve is held
    /// is read from the file itself (its link count), not remembered: another process sharing
    /// the store (a command, a host mount) or an admin may delete it at any time.
    private let held = Mutex<FileDescriptor?>(nil)
    /// Whether this process released the reserve since it last allocated it (for the log).
    private let released = Atomic<Bool>(false)
    /// The largest reserve honoured (1 TiB): larger settings are clamped, so no size arithmetic
    /// can overflow.
    static let maximumBytes: Int64 = 1 << 40

    init(directory: FileDescriptor, bytes: Int64, logger: Logger) {
        self.directory = directory
        self.bytes = min(Self.maximumBytes, max(0, bytes))
        self.logger = logger
        if self.bytes > 0 { _ = restore() }
        // Without a reserve of its own, a process leaves the file alone: another process
        // sharing the store may count on it.
    }

    deinit {
        held.withLock { $0?.closeQuietly() }
    }

    /// Parses a size as the environment variable gives it ("8M", "65536", "0").
    public static func parseSize(_ text: String) -> Int64? {
        var digits = text.trimmingCharacters(in: .whitespaces).uppercased()
        var unit: Int64 = 1
        if digits.hasSuffix("IB") { digits.removeLast(2) } else if digits.hasSuffix("B") { digits.removeLast() }
        switch digits.last {
        case "K": unit = 1 << 10
        case "M": unit = 1 << 20
        case "G": unit = 1 << 30
        default: break
        }
        if unit != 1 { digits.removeLast() }
        guard let value = Int64(digits), value >= 0 else { return nil }
        // Anything above `maximumBytes` is clamped to it at use.
        let (product, overflow) = value.multipliedReportingOverflow(by: unit)
        return overflow ? nil : product
    }

    /// Whether the store's filesystem may take more data: false while the reserve is depleted
    /// and the filesystem still has no room to allocate it again.
    public func admitsGrowth() -> Bool {
        guard bytes > 0 else { return true }
        if isHeld { return true }
        return restore()
    }

    /// Whether the reserve file is in place (one fstat: deleted by anyone, it is depleted).
    public var isHeld: Bool {
        guard bytes > 0 else { return false }
        return held.withLock { Self.stillInPlace(&$0) }
    }

    /// Whether `file` (the reserve, open) still has its name; forgets it when not. Under `held`.
    private static func stillInPlace(_ file: inout FileDescriptor?) -> Bool {
        guard let current = file else { return false }
        if let st = try? current.stat(), st.linkCount > 0 { return true }
        current.closeQuietly()
        file = nil
        return false
    }

    /// Deletes the reserve file so that a catalog commit that found the filesystem full can go
    /// through, and refuses growth until it is allocated again. Returns whether this call freed
    /// the space (false when the file was already gone).
    func release() -> Bool {
        guard bytes > 0 else { return false }
        return held.withLock { file in
            let wasHeld = file != nil
            file?.closeQuietly()
            file = nil
            do throws(Errno) {
                try directory.unlink(at: StoreLayout.spaceReserve)
            } catch {
                // Another process sharing the store released it first (or it was never made).
                return false
            }
            released.store(true, ordering: .relaxed)
            if wasHeld {
                logger.warning("store filesystem full: released the space reserve so that catalog commits go on; data writes get ENOSPC until space is freed",
                               metadata: ["reserve-bytes": "\(bytes)"])
            }
            return true
        }
    }

    /// Allocates the reserve file again when the filesystem has room for it and as much again
    /// (so the data writes it lets in do not fill the filesystem at once); a statfs while the
    /// filesystem is still full. Returns whether the reserve is held.
    @discardableResult
    func restore() -> Bool {
        guard bytes > 0 else { return true }
        // Everything below under the lock: what is measured is what is decided on.
        return held.withLock { file in
            if Self.stillInPlace(&file) { return true }
            let existing = Self.allocatedBytes(directory)
            if existing < bytes {
                // Room for the reserve and as much again; the file's own blocks count as room.
                guard let stats = try? directory.fileSystemStatistics() else { return false }
                let available = Int64(clamping: stats.availableBlocks.multipliedReportingOverflow(by: stats.fragmentSize).partialValue)
                guard available.addingReportingOverflow(existing).partialValue >= 2 * bytes else { return false }
            }
            do throws(Errno) {
                let reserve = try FileDescriptor.open(at: directory, StoreLayout.spaceReserve, [.readWrite, .create, .noFollow], mode: 0o600)
                do throws(Errno) {
                    if existing < bytes { try Self.allocate(reserve, bytes) }
                } catch {
                    reserve.closeQuietly()
                    throw error
                }
                file = reserve
            } catch {
                try? directory.unlink(at: StoreLayout.spaceReserve)
                return false
            }
            if released.exchange(false, ordering: .relaxed) {
                logger.notice("space back: space reserve allocated again", metadata: ["reserve-bytes": "\(bytes)"])
            } else if existing < bytes {
                logger.debug("space reserve allocated", metadata: ["reserve-bytes": "\(bytes)"])
            }
            return true
        }
    }

    private static func allocatedBytes(_ directory: FileDescriptor) -> Int64 {
        guard let st = try? directory.stat(at: StoreLayout.spaceReserve) else { return 0 }
        return st.blocks.multipliedReportingOverflow(by: 512).partialValue
    }

    /// fallocate(2), or zeros written where the filesystem has none.
    private static func allocate(_ file: FileDescriptor, _ bytes: Int64) throws(Errno) {
        do throws(Errno) {
            try file.allocate(mode: 0, offset: 0, length: bytes)
            return
        } catch where error == .notSupported {}
        let chunk = [UInt8](repeating: 0, count: 1 << 20)
        var offset: Int64 = 0
        while offset < bytes {
            let n = Int(min(Int64(chunk.count), bytes - offset))
            try file.writeAll(Array(chunk[0..<n]), at: offset)
            offset += Int64(n)
        }
        try file.sync()
    }
}

extension Store {
    /// The reserve size for a store at `path` when the caller sets none: `PVFS_SPACE_RESERVE`,
    /// else `SpaceReserve.defaultBytes(forFileSystemOf:)`.
    static func configuredReserve(_ root: FileDescriptor, logger: Logger) -> Int64 {
        if let text = ProcessInfo.processInfo.environment[SpaceReserve.environmentVariable] {
            if let value = SpaceReserve.parseSize(text) { return value }
            logger.warning("ignoring \(SpaceReserve.environmentVariable)=\(text): not a size")
        }
        guard let stats = try? root.fileSystemStatistics() else { return SpaceReserve.defaultBytes }
        let total = Int64(clamping: stats.totalBlocks.multipliedReportingOverflow(by: stats.fragmentSize).partialValue)
        return SpaceReserve.defaultBytes(forFileSystemOf: total)
    }

    /// Runs a catalog write transaction; when it fails because the filesystem is full, releases
    /// the space reserve and runs it once more.
    func writeCatalog<T>(_ body: (Database) throws -> T) throws -> T {
        try withSpaceReserve { try catalog.write(body) }
    }

    /// Runs `write` (catalog writes); when it fails because the filesystem is full, releases the
    /// space reserve and runs it once more. A failed SQLite transaction changed nothing, so
    /// running it again is safe.
    func withSpaceReserve<T>(_ write: () throws -> T) throws -> T {
        var attempt = 0
        while true {
            do {
                let result = try write()
                _ = spaceReserve.admitsGrowth()  // allocates the reserve again if it can
                return result
            } catch let error as DatabaseError where Self.isFilesystemFull(error) && spaceReserve.bytes > 0 && attempt < 5 {
                // Again even when another thread or process released the file a moment ago: the
                // space it freed may be what this commit needs. Filesystems that free an unlinked
                // file's blocks at their next commit (btrfs, ZFS) need a moment: a few tries.
                if attempt > 0 { usleep(UInt32(50_000 << min(attempt, 3))) }
                _ = spaceReserve.release()
                attempt += 1
            }
        }
    }

    /// SQLITE_FULL, or the shared-memory index failing to grow (SQLITE_IOERR_SHMSIZE): both are
    /// a full filesystem to SQLite's WAL.
    static func isFilesystemFull(_ error: DatabaseError) -> Bool {
        error.resultCode == .SQLITE_FULL || error.extendedResultCode == .SQLITE_IOERR_SHMSIZE
    }
}
