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
    /// Whether the reserve file is missing (released, or not yet allocated for lack of room).
    private let depleted = Atomic<Bool>(false)
    /// Whether this process released the reserve since it last allocated it (for the log).
    private let released = Atomic<Bool>(false)
    /// Serialises allocating and releasing the file.
    private let lock = Mutex<Void>(())

    init(directory: FileDescriptor, bytes: Int64, logger: Logger) {
        self.directory = directory
        self.bytes = max(0, bytes)
        self.logger = logger
        if self.bytes > 0 {
            depleted.store(true, ordering: .relaxed)
            _ = restore()
        }
        // Without a reserve of its own, a process leaves the file alone: another process
        // sharing the store may count on it.
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
        let (product, overflow) = value.multipliedReportingOverflow(by: unit)
        return overflow ? nil : product
    }

    /// Whether the store's filesystem may take more data: false while the reserve is depleted
    /// and the filesystem still has no room to allocate it again.
    public func admitsGrowth() -> Bool {
        if !depleted.load(ordering: .relaxed) { return true }
        return restore()
    }

    /// Whether the reserve file is in place.
    public var isHeld: Bool { bytes > 0 && !depleted.load(ordering: .relaxed) }

    /// Deletes the reserve file so that a catalog commit that found the filesystem full can go
    /// through, and refuses growth until it is allocated again. Returns whether this call freed
    /// the space (false when the file was already gone).
    func release() -> Bool {
        guard bytes > 0 else { return false }
        return lock.withLock { _ in
            let wasHeld = !depleted.load(ordering: .relaxed)
            depleted.store(true, ordering: .relaxed)
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
    /// (so the data writes it lets in do not fill the filesystem at once). Returns whether the
    /// reserve is held.
    @discardableResult
    func restore() -> Bool {
        guard bytes > 0 else { return true }
        let existing = Self.allocatedBytes(directory)
        if existing < bytes {
            // Room for the reserve and as much again; the file's own blocks count as room.
            guard let stats = try? directory.fileSystemStatistics() else { return false }
            let available = Int64(clamping: stats.availableBlocks.multipliedReportingOverflow(by: stats.fragmentSize).partialValue)
            guard available + existing >= 2 * bytes else { return false }
        }
        return lock.withLock { _ in
            guard depleted.load(ordering: .relaxed) else { return true }
            if existing >= bytes {
                depleted.store(false, ordering: .relaxed)
                return true
            }
            do throws(Errno) {
                let file = try FileDescriptor.open(at: directory, StoreLayout.spaceReserve, [.writeOnly, .create], mode: 0o600)
                defer { file.closeQuietly() }
                do throws(Errno) {
                    try file.allocate(mode: 0, offset: 0, length: bytes)
                } catch where error == .notSupported {
                    try Self.writeZeros(file, bytes)
                }
            } catch {
                try? directory.unlink(at: StoreLayout.spaceReserve)
                return false
            }
            depleted.store(false, ordering: .relaxed)
            if released.exchange(false, ordering: .relaxed) {
                logger.notice("space back: space reserve allocated again", metadata: ["reserve-bytes": "\(bytes)"])
            } else {
                logger.debug("space reserve allocated", metadata: ["reserve-bytes": "\(bytes)"])
            }
            return true
        }
    }

    private static func allocatedBytes(_ directory: FileDescriptor) -> Int64 {
        guard let st = try? directory.stat(at: StoreLayout.spaceReserve) else { return 0 }
        return st.blocks.multipliedReportingOverflow(by: 512).partialValue
    }

    /// For filesystems without fallocate(2).
    private static func writeZeros(_ file: FileDescriptor, _ bytes: Int64) throws(Errno) {
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
        do {
            let result = try write()
            if spaceReserve.bytes > 0 && !spaceReserve.isHeld { spaceReserve.restore() }
            return result
        } catch let error as DatabaseError where error.resultCode == .SQLITE_FULL {
            guard spaceReserve.bytes > 0 else { throw error }
            // Once more even when another thread or process released the file a moment ago:
            // the space it freed may be what this commit needs.
            _ = spaceReserve.release()
            return try write()
        }
    }
}
