import Glibc
import PVFSSystem
import Synchronization
import SystemPackage

/// Where blob content waits before publication: `tmp/ingest-<token>/`, owned by one process
/// through the flock on `tmp/ingest-<token>.lock`.
///
/// Staged files are unnamed O_TMPFILEs created in that directory where the filesystem has them,
/// else named `s<n>` in it. The directory also holds `journal`, the SHA-256 of
/// every blob this area is about to rename into `blobs/`, appended before the rename. When the
/// owner dies, `Store.cleanUpInterruptedIngests` finds the unlocked lock file and uses the journal
/// to delete the blobs that no committed catalog row references.
public final class StagingArea: @unchecked Sendable {
    public let token: String
    let store: Store
    let directory: FileDescriptor
    private let lock: LockFile
    private let journal: FileDescriptor
    private let sequence = Atomic<Int>(0)
    /// 0: not tried yet, 1: FICLONE works from the source into the store, 2: it does not.
    private let reflinkState = Atomic<UInt8>(0)
    private let disposed = Atomic<Bool>(false)
    /// 0: O_TMPFILE not tried, 2: the staging filesystem has none.
    let anonymousFiles = Atomic<UInt8>(0)

    init(store: Store) throws {
        self.store = store
        let token = makeIngestToken()
        self.token = token
        do {
            // The token is new, so only a cleanup checking whether this area's ingest still runs
            // (between our open and our lock) can hold it, for as long as that check takes.
            var acquired: LockFile?
            for attempt in 0..<100 where acquired == nil {
                if attempt > 0 { usleep(10_000) }
                acquired = try LockFile.acquire(at: store.temporaryDirectory, StoreLayout.ingestLock(token), exclusive: true, nonBlocking: true)
            }
            guard let lock = acquired else {
                throw PVFSError(.store, "cannot lock a new staging area in \(store.path)/\(StoreLayout.temporary)", errno: .resourceBusy)
            }
            self.lock = lock
            try store.temporaryDirectory.makeDirectory(at: StoreLayout.ingestDirectory(token), mode: 0o700)
            directory = try FileDescriptor.open(at: store.temporaryDirectory, StoreLayout.ingestDirectory(token), [.directory, .readOnly, .noFollow])
            journal = try FileDescriptor.open(at: directory, "journal", [.writeOnly, .create, .append, .noFollow], mode: 0o600)
        } catch let error as Errno {
            _ = try? store.temporaryDirectory.unlink(at: StoreLayout.ingestLock(token))
            throw PVFSError(.store, "cannot create a staging area in \(store.path)/\(StoreLayout.temporary): \(error)", errno: error)
        }
    }

    deinit {
        journal.closeQuietly()
        directory.closeQuietly()
    }

    /// A new name for a staged file, unique within this area.
    func newStagedName() -> [UInt8] {
        Array("s\(sequence.add(1, ordering: .relaxed).newValue)".utf8)
    }

    var tryReflink: Bool { reflinkState.load(ordering: .relaxed) != 2 }

    func noteReflink(worked: Bool) {
        if worked {
            reflinkState.store(1, ordering: .relaxed)
        } else {
            // Once a clone worked, a later failure is about one file (another filesystem below
            // the source); before that, it is about the pair of filesystems.
            _ = reflinkState.compareExchange(expected: 0, desired: 2, ordering: .relaxed)
        }
    }

    var reflinkWorked: Bool { reflinkState.load(ordering: .relaxed) == 1 }

    /// Appends hashes to the journal. Made durable by the syncfs that precedes every rename.
    func journal(_ hashes: [BlobHash]) throws(Errno) {
        guard !hashes.isEmpty else { return }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hashes.count * 32)
        for hash in hashes { bytes += hash.bytes }
        try journal.appendAll(bytes)
    }

    /// Removes staged files (not the journal): after a failure, so that their space comes back.
    func removeStagedFiles() {
        Store.removeStagedFiles(in: directory)
    }

    /// Removes the area and its lock file: after the owner committed everything it published,
    /// or after cleanup reconciled the journal with the catalog.
    func dispose() {
        guard !disposed.exchange(true, ordering: .relaxed) else { return }
        try? store.removeTree(at: store.temporaryDirectory, StoreLayout.ingestDirectory(token))
        _ = try? store.temporaryDirectory.unlink(at: StoreLayout.ingestLock(token))
        _ = lock
    }
}

extension Store {
    static func removeStagedFiles(in directory: FileDescriptor) {
        guard let entries = try? directory.rawDirectoryEntries() else { return }
        for entry in entries where entry.name != Array("journal".utf8) {
            _ = try? directory.unlink(at: entry.name)
        }
    }
}

/// A staged file: an unnamed O_TMPFILE kept open until it is linked into `blobs/` (nothing to
/// clean up if the process dies: the kernel frees it), or, where the filesystem has no
/// O_TMPFILE, a name in the staging directory.
enum StagedFile: Sendable {
    case anonymous(FileDescriptor)
    case named([UInt8])
}

/// A file whose content waits in a staging area, named by the SHA-256 of exactly the bytes
/// staged (the hash is computed over the staged copy's bytes, never over a source that could
/// change behind our back).
struct StagedBlob: Sendable {
    /// nil when nothing was staged: the store has the content already, or another file of the
    /// same ingest stages it.
    var file: StagedFile?
    var hash: BlobHash
    var size: Int64
    var allocated: Int64
}

/// How ingest copied a file's bytes into the store.
public enum ContentCopy: String, Codable, Sendable {
    case reflink
    case copy
}

/// A 1 MiB page-aligned buffer of zeros, hashed in place of holes.
nonisolated(unsafe) private let zeroBlock: UnsafeRawBufferPointer = {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    buffer.initializeMemory(as: UInt8.self, repeating: 0)
    return UnsafeRawBufferPointer(buffer)
}()

extension SHA256Hasher {
    mutating func updateZeros(count: Int64) {
        var left = count
        while left > 0 {
            let n = Int(min(left, Int64(zeroBlock.count)))
            update(UnsafeRawBufferPointer(rebasing: zeroBlock[0..<n]))
            left -= Int64(n)
        }
    }
}

/// Per-thread scratch space for staging.
final class StagingBuffer {
    let bytes: UnsafeMutableRawBufferPointer
    init(size: Int = 1 << 20) { bytes = .allocate(byteCount: size, alignment: 4096) }
    deinit { bytes.deallocate() }
}

extension StagingArea {
    /// Stages the content of `source`, a regular file expected to hold `size` bytes, unless
    /// `claim` says the content needs no copy (the store has it, or another file of this ingest
    /// stages it): then the result has no staged name.
    ///
    /// - Where the filesystems share extents (FICLONE), the file is cloned and the clone hashed.
    /// - A file that fits the buffer is read whole, hashed, and written only when new.
    /// - A larger file is, with `hashFirst`, hashed first and, when new, copied in a second pass
    ///   that hashes again (a mismatch means the source changed, so a blob's name is always the
    ///   hash of its bytes); without, copied in one pass that hashes what it writes, the copy
    ///   dropped if the content turns out to be known. Hashing first pays when much of the
    ///   content is known (a re-ingest), copying at once when little is (a new tree).
    ///
    /// Copies keep holes: only data segments are written when the file may be sparse.
    ///
    /// Returns nil when the source did not hold `size` bytes or changed while it was read. The
    /// caller compares the source's fstat after the call with the scan (size, mtime, ctime) to
    /// catch changes behind the last byte read.
    func stage(from source: FileDescriptor, size: Int64, mayBeSparse: Bool, buffer: StagingBuffer, hashFirst: Bool = true,
               claim: (BlobHash) throws -> Bool) throws -> (StagedBlob, ContentCopy)? {
        if tryReflink {
            if let result = try stageByClone(from: source, size: size, mayBeSparse: mayBeSparse, buffer: buffer, claim: claim) {
                return result
            }
        }
        if !mayBeSparse && size <= Int64(buffer.bytes.count) {
            // A file that grew after this read is caught by the caller's fstat afterwards.
            var length = 0
            while length < Int(size) {
                let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[length..<Int(size)]),
                                        at: Int64(length))
                if n == 0 { break }
                length += n
            }
            guard length == Int(size) else { return nil }
            let data = UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length])
            var hasher = SHA256Hasher()
            hasher.update(data)
            let hash = hasher.finalize()
            if try claim(hash) { return (StagedBlob(file: nil, hash: hash, size: size, allocated: 0), .copy) }
            let writer = try createStagedFile()
            do throws(Errno) {
                try writer.fd.writeAll(data, at: 0)
                let allocated = try writer.fd.stat().blocks * 512
                return (StagedBlob(file: writer.finish(), hash: hash, size: size, allocated: allocated), .copy)
            } catch {
                writer.abandon(in: self)
                throw error
            }
        }
        if !hashFirst {
            let writer = try createStagedFile()
            do {
                let (hash, copied) = try Self.copyHashing(from: source, to: writer.fd, size: size, sparse: mayBeSparse, buffer: buffer)
                guard copied == size else {
                    writer.abandon(in: self)
                    return nil
                }
                if try claim(hash) {
                    writer.abandon(in: self)
                    return (StagedBlob(file: nil, hash: hash, size: size, allocated: 0), .copy)
                }
                let allocated = try writer.fd.stat().blocks * 512
                return (StagedBlob(file: writer.finish(), hash: hash, size: size, allocated: allocated), .copy)
            } catch {
                writer.abandon(in: self)
                throw error
            }
        }
        let (first, length) = try Self.hash(source, size: size, sparse: mayBeSparse, buffer: buffer)
        guard length == size else { return nil }
        if try claim(first) { return (StagedBlob(file: nil, hash: first, size: size, allocated: 0), .copy) }
        let writer = try createStagedFile()
        do throws(Errno) {
            let (second, copied) = try Self.copyHashing(from: source, to: writer.fd, size: size, sparse: mayBeSparse, buffer: buffer)
            guard copied == size, second == first else {
                writer.abandon(in: self)
                return nil
            }
            let allocated = try writer.fd.stat().blocks * 512
            return (StagedBlob(file: writer.finish(), hash: first, size: size, allocated: allocated), .copy)
        } catch {
            writer.abandon(in: self)
            throw error
        }
    }

    /// FICLONE into a staged file, then hashes the clone (a private snapshot, so the hash names
    /// exactly what is stored). nil when the filesystems cannot clone (the caller copies).
    private func stageByClone(from source: FileDescriptor, size: Int64, mayBeSparse: Bool, buffer: StagingBuffer,
                              claim: (BlobHash) throws -> Bool) throws -> (StagedBlob, ContentCopy)?? {
        let writer = try createStagedFile()
        do {
            try writer.fd.clone(from: source)
        } catch {
            noteReflink(worked: false)
            writer.abandon(in: self)
            return .none
        }
        noteReflink(worked: true)
        do {
            let clonedSize = try writer.fd.stat().size
            guard clonedSize == size else {
                writer.abandon(in: self)
                return .some(nil)
            }
            let (hash, length) = try Self.hash(writer.fd, size: size, sparse: mayBeSparse, buffer: buffer)
            guard length == size else {
                writer.abandon(in: self)
                return .some(nil)
            }
            if try claim(hash) {
                writer.abandon(in: self)
                return (StagedBlob(file: nil, hash: hash, size: size, allocated: 0), .reflink)
            }
            let allocated = try writer.fd.stat().blocks * 512
            return (StagedBlob(file: writer.finish(), hash: hash, size: size, allocated: allocated), .reflink)
        } catch {
            writer.abandon(in: self)
            throw error
        }
    }

    /// A staged file being written.
    struct Writer {
        let file: StagedFile
        let fd: FileDescriptor

        /// Written: the staged file to publish (a named one's descriptor is closed).
        func finish() -> StagedFile {
            if case .named = file { fd.closeQuietly() }
            return file
        }

        /// Not wanted after all.
        func abandon(in area: StagingArea) {
            if case .named = file { fd.closeQuietly() }
            area.discard(file)
        }
    }

    /// Creates a new staged file: an O_TMPFILE where the filesystem has them (created in the
    /// staging directory, so the inode is allocated near it), else a new name.
    func createStagedFile() throws(Errno) -> Writer {
        try requireRoomToGrow()
        if anonymousFiles.load(ordering: .relaxed) != 2 {
            do throws(Errno) {
                let fd = try FileDescriptor.open(at: directory, ".", [.readWrite, .temporaryFile], mode: 0o444)
                return Writer(file: .anonymous(fd), fd: fd)
            } catch where error == .notSupported || error == .isDirectory || error == .invalidArgument {
                anonymousFiles.store(2, ordering: .relaxed)
            }
        }
        let name = newStagedName()
        let fd = try FileDescriptor.open(at: directory, name, [.readWrite, .create, .exclusive, .noFollow], mode: 0o444)
        return Writer(file: .named(name), fd: fd)
    }

    /// ENOSPC while the store's space reserve is depleted: what the reserve freed is kept for
    /// catalog commits (guests deleting files), not for new blobs. Every staged file is new
    /// data, so an ingest or a dedup pass stops at its next file.
    func requireRoomToGrow() throws(Errno) {
        guard store.spaceReserve.admitsGrowth() else { throw Errno.noSpace }
    }

    /// Drops a staged file: unlinks a named one, closes (and so frees) an anonymous one.
    func discard(_ file: StagedFile?) {
        switch file {
        case .anonymous(let fd): fd.closeQuietly()
        case .named(let name): _ = try? directory.unlink(at: name)
        case nil: break
        }
    }

    /// Gives a staged file its blob name `target` (below `blobs`); false when that name exists
    /// already (the staged file is then dropped). Closes an anonymous file's descriptor.
    func publish(_ file: StagedFile, to blobs: FileDescriptor, _ target: [UInt8]) throws(Errno) -> Bool {
        switch file {
        case .anonymous(let fd):
            defer { fd.closeQuietly() }
            do throws(Errno) {
                try fd.linkAnonymous(to: blobs, target)
                return true
            } catch where error == .fileExists {
                return false
            }
        case .named(let name):
            do throws(Errno) {
                try directory.rename(at: name, to: blobs, target, flags: .noReplace)
                return true
            } catch where error == .fileExists {
                _ = try? directory.unlink(at: name)
                return false
            }
        }
    }

    /// Stages bytes held in memory (always as a named file).
    func stage(bytes: [UInt8]) throws(Errno) -> StagedBlob {
        try requireRoomToGrow()
        let name = newStagedName()
        let target = try FileDescriptor.open(at: directory, name, [.writeOnly, .create, .exclusive, .noFollow], mode: 0o444)
        defer { target.closeQuietly() }
        do throws(Errno) {
            try target.writeAll(bytes, at: 0)
            let allocated = try target.stat().blocks * 512
            return StagedBlob(file: .named(name), hash: SHA256Hasher.hash(bytes), size: Int64(bytes.count), allocated: allocated)
        } catch {
            _ = try? directory.unlink(at: name)
            throw error
        }
    }

    /// Reads `source` up to `size` bytes (stopping early at end of file), hashing every byte and
    /// writing data at the same offsets into `target`. Holes (when `sparse`) are hashed as zeros
    /// and left unwritten; the target is then extended to the size read. Returns the hash and the
    /// bytes read (size + 1 when the file grew).
    static func copyHashing(from source: FileDescriptor, to target: FileDescriptor, size: Int64, sparse: Bool,
                            buffer: StagingBuffer) throws(Errno) -> (BlobHash, Int64) {
        var hasher = SHA256Hasher()
        var offset: Int64 = 0
        let chunk = buffer.bytes.count
        if !sparse {
            while offset <= size {
                let want = Int(min(Int64(chunk), size + 1 - offset))
                let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<want]), at: offset)
                if n == 0 { break }
                let data = UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<n])
                hasher.update(data)
                if offset + Int64(n) > size { return (hasher.finalize(), offset + Int64(n)) }
                try target.writeAll(data, at: offset)
                offset += Int64(n)
            }
            return (hasher.finalize(), offset)
        }
        // SEEK_DATA cannot tell a trailing hole from a file that shrank: check the size first.
        let current = try source.stat().size
        if current != size { return (hasher.finalize(), current) }
        while offset < size {
            let dataStart = min(try source.seek(dataFrom: offset) ?? size, size)
            if dataStart > offset {
                hasher.updateZeros(count: dataStart - offset)
                offset = dataStart
            }
            if offset >= size { break }
            let dataEnd = min(try source.seek(holeFrom: dataStart), size)
            while offset < dataEnd {
                let want = Int(min(Int64(chunk), dataEnd - offset))
                let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<want]), at: offset)
                if n == 0 { return (hasher.finalize(), offset) }
                let data = UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<n])
                hasher.update(data)
                try target.writeAll(data, at: offset)
                offset += Int64(n)
            }
        }
        // Anything beyond the expected size means the file grew.
        if try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<1]), at: size) > 0 {
            return (hasher.finalize(), size + 1)
        }
        try target.truncate(size: size)
        return (hasher.finalize(), size)
    }

    /// Hashes a file of `size` bytes (holes as zeros without reading them when `sparse`).
    /// Returns the bytes hashed: less than `size` when the file is shorter, `size + 1` when it
    /// is longer.
    static func hash(_ file: FileDescriptor, size: Int64, sparse: Bool, buffer: StagingBuffer) throws(Errno) -> (BlobHash, Int64) {
        var hasher = SHA256Hasher()
        var offset: Int64 = 0
        if sparse {
            let current = try file.stat().size
            if current != size { return (hasher.finalize(), current) }
        }
        while offset < size {
            var dataEnd = size
            if sparse {
                let dataStart = min(try file.seek(dataFrom: offset) ?? size, size)
                hasher.updateZeros(count: dataStart - offset)
                offset = dataStart
                if offset >= size { break }
                dataEnd = min(try file.seek(holeFrom: dataStart), size)
            }
            while offset < dataEnd {
                let want = Int(min(Int64(buffer.bytes.count), dataEnd - offset))
                let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<want]), at: offset)
                if n == 0 { return (hasher.finalize(), offset) }
                hasher.update(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<n]))
                offset += Int64(n)
            }
        }
        if try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<1]), at: size) > 0 {
            return (hasher.finalize(), size + 1)
        }
        return (hasher.finalize(), offset)
    }
}
