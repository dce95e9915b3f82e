import Glibc
import PVFSSystem
import Synchronization
import SystemPackage

/// What a VM's data/ directory holds (fsck, recovery).
public struct PrivateFileListing: Sendable {
    /// Private files by inode: their path below data/ ("2a/42").
    public var paths: [UInt64: String] = [:]
    public var sizes: [UInt64: Int64] = [:]
    /// Bytes the host allocates to each.
    public var allocated: [UInt64: Int64] = [:]
    /// Names in data/ that are not `<xx>/<ino>` of the right shard.
    public var unexpected: [String] = []

    public init() {}
}

/// A VM's private area `vms/<id>/{data,tmp,lock}`, opened with the VM's lock held (or, for the
/// read-only walks of `Store`, without). Its private files are named by inode number only, so
/// the engine reaches them without knowing the layout; each call is one *at syscall.
///
/// The lock (flock on vms/<id>/lock) is what makes a process the VM's only holder; `close`
/// drops it. The directories stay open until the area goes away, so a call racing with `close`
/// never reaches a descriptor number that was reused.
public final class VMArea: @unchecked Sendable {
    public let vmID: Int64
    let directory: FileDescriptor
    /// data/ and tmp/; nil when missing from an area opened only to be checked or cleaned.
    let data: FileDescriptor?
    let scratch: FileDescriptor?
    private let lock: Mutex<LockFile?>
    /// Shard directories of data/ known to exist.
    private let knownShards = Mutex(Set<UInt8>())

    private init(vmID: Int64, directory: FileDescriptor, data: FileDescriptor?, scratch: FileDescriptor?, lock: LockFile?) {
        self.vmID = vmID
        self.directory = directory
        self.data = data
        self.scratch = scratch
        self.lock = Mutex(lock)
    }

    deinit {
        for fd in [data, scratch, directory] { fd?.closeQuietly() }
    }

    /// Makes the (empty) private area of a new VM.
    static func create(in store: Store, vmID: Int64) throws(Errno) {
        let name = StoreLayout.vmDirectory(vmID)
        try store.vmsDirectory.makeDirectory(at: name, mode: 0o700)
        let fd = try FileDescriptor.open(at: store.vmsDirectory, name, [.directory, .readOnly, .noFollow])
        defer { fd.closeQuietly() }
        try fd.makeDirectory(at: StoreLayout.VM.data, mode: 0o700)
        try fd.makeDirectory(at: StoreLayout.VM.scratch, mode: 0o700)
    }

    /// How long `open` waits for a VM's lock held only by a child between fork and exec (µs).
    static let transientHolderWait: useconds_t = 500_000
    static let transientHolderPoll: useconds_t = 2_000

    /// Opens a VM's area for serving: takes its lock (EBUSY when another process holds it) and
    /// recreates data/ or tmp/ if they went missing.
    static func open(in store: Store, vmID: Int64, vmName: String) throws -> VMArea {
        let name = StoreLayout.vmDirectory(vmID)
        let directory: FileDescriptor
        do {
            directory = try FileDescriptor.open(at: store.vmsDirectory, name, [.directory, .readOnly, .noFollow])
        } catch {
            throw PVFSError(.store, "the private area of VM \(vmName) (\(StoreLayout.vms)/\(name)) is missing: \(error)", errno: error)
        }
        var acquired: LockFile?
        // A child being spawned by any thread of this process holds a copy of every descriptor,
        // the lock's included, until it execs (O_CLOEXEC acts only then); a VM closed and opened
        // again in that window would look busy. A real holder keeps the lock far longer than
        // the short wait below.
        var waited: useconds_t = 0
        while true {
            do {
                acquired = try LockFile.acquire(at: directory, StoreLayout.VM.lock, exclusive: true, nonBlocking: true)
            } catch {
                directory.closeQuietly()
                throw PVFSError(.store, "cannot lock the private area of VM \(vmName) (\(StoreLayout.vms)/\(name)): \(error)", errno: error)
            }
            if acquired != nil || waited >= Self.transientHolderWait { break }
            usleep(Self.transientHolderPoll)
            waited += Self.transientHolderPoll
        }
        guard let lock = acquired else {
            directory.closeQuietly()
            throw PVFSError(.store, "VM \(vmName) is in use by another process (mounted or served)", errno: .resourceBusy)
        }
        do throws(Errno) {
            for sub in [StoreLayout.VM.data, StoreLayout.VM.scratch] {
                do {
                    try directory.makeDirectory(at: sub, mode: 0o700)
                } catch where error == .fileExists {}
            }
            let data = try FileDescriptor.open(at: directory, StoreLayout.VM.data, [.directory, .readOnly, .noFollow])
            let scratch: FileDescriptor
            do {
                scratch = try FileDescriptor.open(at: directory, StoreLayout.VM.scratch, [.directory, .readOnly, .noFollow])
            } catch {
                data.closeQuietly()
                throw error
            }
            return VMArea(vmID: vmID, directory: directory, data: data, scratch: scratch, lock: lock)
        } catch {
            directory.closeQuietly()
            throw PVFSError(.store, "cannot open the private area of VM \(vmName) (\(StoreLayout.vms)/\(name)): \(error)", errno: error)
        }
    }

    /// Opens a VM's area with its lock, changing nothing: nil when another process holds the
    /// VM. Throws ENOENT when vms/<id> cannot be opened. For fsck, the janitor and removal.
    static func openIfFree(in store: Store, vmID: Int64) throws(Errno) -> VMArea? {
        let directory = try FileDescriptor.open(at: store.vmsDirectory, StoreLayout.vmDirectory(vmID), [.directory, .readOnly, .noFollow])
        let lock: LockFile?
        do {
            lock = try LockFile.acquire(at: directory, StoreLayout.VM.lock, exclusive: true, nonBlocking: true)
        } catch {
            directory.closeQuietly()
            throw error
        }
        guard let lock else {
            directory.closeQuietly()
            return nil
        }
        let data = try? FileDescriptor.open(at: directory, StoreLayout.VM.data, [.directory, .readOnly, .noFollow])
        let scratch = try? FileDescriptor.open(at: directory, StoreLayout.VM.scratch, [.directory, .readOnly, .noFollow])
        return VMArea(vmID: vmID, directory: directory, data: data, scratch: scratch, lock: lock)
    }

    /// Opens a VM's area without its lock, for reading only (space reports, pvfs dedup reading a
    /// file of a VM the daemon holds). Throws ENOENT when vms/<id> cannot be opened.
    static func openUnlocked(in store: Store, vmID: Int64) throws(Errno) -> VMArea {
        let directory = try FileDescriptor.open(at: store.vmsDirectory, StoreLayout.vmDirectory(vmID), [.directory, .readOnly, .noFollow])
        let data = try? FileDescriptor.open(at: directory, StoreLayout.VM.data, [.directory, .readOnly, .noFollow])
        let scratch = try? FileDescriptor.open(at: directory, StoreLayout.VM.scratch, [.directory, .readOnly, .noFollow])
        return VMArea(vmID: vmID, directory: directory, data: data, scratch: scratch, lock: nil)
    }

    /// Drops the VM's lock: from then on another process may take the VM. Idempotent.
    public func close() {
        lock.withLock { $0 = nil }
    }

    private func dataDirectory() throws(Errno) -> FileDescriptor {
        guard let data else { throw Errno.noSuchFileOrDirectory }
        return data
    }

    private func scratchDirectory() throws(Errno) -> FileDescriptor {
        guard let scratch else { throw Errno.noSuchFileOrDirectory }
        return scratch
    }

    // MARK: Private files

    /// Opens a private file read-write, never following a symlink; `create` makes a new one
    /// (EEXIST if it exists), creating its shard directory when needed.
    public func openPrivateFile(_ ino: UInt64, create: Bool = false) throws(Errno) -> FileDescriptor {
        let data = try dataDirectory()
        var flags: OpenFlags = [.readWrite, .noFollow]
        if create {
            try ensureShard(of: ino)
            flags.formUnion([.create, .exclusive])
        }
        return try FileDescriptor.open(at: data, StoreLayout.VM.privateFile(ino), flags, mode: 0o600)
    }

    public func openPrivateFileForReading(_ ino: UInt64) throws(Errno) -> FileDescriptor {
        try FileDescriptor.open(at: try dataDirectory(), StoreLayout.VM.privateFile(ino), [.readOnly, .noFollow])
    }

    public func statPrivateFile(_ ino: UInt64) throws(Errno) -> FileStat {
        try dataDirectory().stat(at: StoreLayout.VM.privateFile(ino))
    }

    public func setPrivateFileTimes(_ ino: UInt64, access: Timespec, modification: Timespec) throws(Errno) {
        try dataDirectory().setTimes(at: StoreLayout.VM.privateFile(ino), access: access, modification: modification)
    }

    /// Removes a private file; one that does not exist counts as removed.
    public func removePrivateFile(_ ino: UInt64) throws(Errno) {
        do {
            try dataDirectory().unlink(at: StoreLayout.VM.privateFile(ino))
        } catch where error == .noSuchFileOrDirectory {}
    }

    /// Creates a private file empty (fsck's repair of a lost one), with its shard directory.
    public func createEmptyPrivateFile(_ ino: UInt64) throws(Errno) {
        let data = try dataDirectory()
        try ensureShard(of: ino)
        let fd = try FileDescriptor.open(at: data, StoreLayout.VM.privateFile(ino), [.writeOnly, .create, .noFollow], mode: 0o600)
        fd.closeQuietly()
    }

    /// fsyncs the shard directory of a private file, so that its name is durable.
    public func syncShard(of ino: UInt64) throws(Errno) {
        let shard = try FileDescriptor.open(at: try dataDirectory(), StoreLayout.VM.privateFileShard(ino), [.directory, .readOnly])
        defer { shard.closeQuietly() }
        try shard.sync()
    }

    /// Removes an entry of data/ that is not a private file (`PrivateFileListing.unexpected`).
    public func removeUnexpectedEntry(_ path: String) throws(Errno) {
        try dataDirectory().unlink(at: path)
    }

    private func ensureShard(of ino: UInt64) throws(Errno) {
        let shard = UInt8(truncatingIfNeeded: ino)
        if knownShards.withLock({ $0.contains(shard) }) { return }
        do {
            try dataDirectory().makeDirectory(at: StoreLayout.VM.privateFileShard(ino), mode: 0o700)
        } catch where error == .fileExists {}
        knownShards.withLock { _ = $0.insert(shard) }
    }

    /// The private files of data/, with their sizes; unreadable parts are left out.
    public func listPrivateFiles() -> PrivateFileListing {
        var result = PrivateFileListing()
        guard let data else { return result }
        for shard in (try? data.directoryEntries()) ?? [] {
            guard let fd = try? FileDescriptor.open(at: data, shard.name, [.directory, .readOnly, .noFollow]) else {
                result.unexpected.append(shard.name)
                continue
            }
            defer { fd.closeQuietly() }
            for file in (try? fd.directoryEntries()) ?? [] {
                let path = shard.name + "/" + file.name
                guard let ino = StoreLayout.VM.inode(privateFile: path) else {
                    result.unexpected.append(path)
                    continue
                }
                let st = try? fd.stat(at: file.name)
                result.paths[ino] = path
                result.sizes[ino] = st?.size ?? 0
                result.allocated[ino] = (st?.blocks ?? 0) * 512
            }
        }
        return result
    }

    // MARK: Copy-up scratch files

    /// A file being filled in tmp/ before it becomes a private file (copy-up).
    public struct ScratchFile: Sendable {
        public let name: String
        public let descriptor: FileDescriptor
    }

    /// Creates a new scratch file in tmp/ for inode `ino`'s copy-up.
    public func makeScratchFile(for ino: UInt64) throws(Errno) -> ScratchFile {
        let name = StoreLayout.VM.copyUpScratch(ino, nonce: monotonicNanoseconds())
        let fd = try FileDescriptor.open(at: try scratchDirectory(), name, [.readWrite, .create, .exclusive], mode: 0o600)
        return ScratchFile(name: name, descriptor: fd)
    }

    /// Renames a filled scratch file over the private file of `ino`; its descriptor stays open
    /// (it is the private file now).
    public func publish(_ file: ScratchFile, as ino: UInt64) throws(Errno) {
        let data = try dataDirectory()
        try ensureShard(of: ino)
        try scratchDirectory().rename(at: file.name, to: data, StoreLayout.VM.privateFile(ino))
    }

    /// Closes and removes a scratch file that will not be published.
    public func discard(_ file: ScratchFile) {
        file.descriptor.closeQuietly()
        _ = try? scratch?.unlink(at: file.name)
    }

    /// Whether tmp/ holds anything (read without the lock).
    var hasScratchFiles: Bool {
        guard let entries = try? scratch?.directoryEntries() else { return false }
        return !entries.isEmpty
    }

    /// Entries in tmp/: leftovers of copy-ups a crash interrupted.
    public func scratchFileCount() -> Int {
        (try? scratch?.directoryEntries())?.count ?? 0
    }

    /// Removes everything in tmp/ (leftovers of interrupted copy-ups); returns how many entries.
    @discardableResult
    public func clearScratch() -> Int {
        guard let scratch else { return 0 }
        var removed = 0
        for entry in (try? scratch.directoryEntries()) ?? [] {
            removed += 1
            _ = try? scratch.unlink(at: entry.name)
        }
        return removed
    }
}

extension Store {
    /// Opens a private file of a VM that another process of this store holds, read-only (pvfs
    /// dedup reading through the daemon's VM). What it reads is a hint only: the holder verifies.
    public func openPrivateFileForReading(vm: Int64, inode: UInt64) throws(Errno) -> FileDescriptor {
        let path = StoreLayout.vmDirectory(vm) + "/" + StoreLayout.VM.data + "/" + StoreLayout.VM.privateFile(inode)
        return try FileDescriptor.open(at: vmsDirectory, path, [.readOnly, .noFollow])
    }
}
