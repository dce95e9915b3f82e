import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

/// One client session's view of a VM: the volume seen through the session's policy (read-only,
/// id mapping, permission checks). Transports (FUSE, 9P) call only this type.
///
/// Inode numbers, names and offsets are what the client sent and get validated here; errors are
/// thrown as `Errno` with the value the client should see.
public final class VMView: Sendable {
    /// The engine's own: the protocols above reach the VM only through this view.
    let volume: Volume
    public let policy: SessionPolicy
    /// Distinguishes this session's lock owners from other sessions'.
    public let sessionID: UInt64

    public init(volume: Volume, policy: SessionPolicy, sessionID: UInt64) {
        self.volume = volume
        self.policy = policy
        self.sessionID = sessionID
    }

    public var vmName: String { volume.name }

    /// Whether both views show the same open VM (a link or rename between two VMs is EXDEV).
    public func isSameVM(as other: VMView) -> Bool { volume === other.volume }

    /// An object that stands for the open VM: identical (`===`) for every view of it, alive
    /// while the VM is open. For caches per VM, which hold it weakly so that a VM closed and
    /// another opened in its place never share an entry.
    public var vmIdentity: AnyObject { volume }

    /// The VM's counters of refusals by tenant limits, where a protocol records the limits it
    /// enforces itself for this VM's sessions.
    public var limitCounters: LimitCounters { volume.counters.limits }

    /// Counts a request and its failure in the VM's counters.
    @inline(__always)
    private func counted<T>(_ body: () throws(Errno) -> T) throws(Errno) -> T {
        volume.counters.request()
        do {
            return try body()
        } catch {
            volume.counters.error()
            if error == .diskQuotaExceeded { volume.counters.quotaRefusals.add(1, ordering: .relaxed) }
            throw error
        }
    }

    private func context(_ credentials: Credentials) -> RequestContext {
        RequestContext(caller: policy.vmCaller(credentials), checks: policy.permissionChecks, readOnly: policy.readOnly)
    }

    private func present(_ attributes: Attributes) -> Attributes { policy.present(attributes) }

    // MARK: Names

    public func lookup(_ parent: InodeNumber, _ name: [UInt8], as credentials: Credentials) throws(Errno) -> Attributes {
        try counted { () throws(Errno) in
            present(try volume.lookup(parent, name, context(credentials)))
        }
    }

    /// The parent of a directory (for 9P walks of "..").
    public func parent(of directory: InodeNumber) throws(Errno) -> InodeNumber {
        try counted { () throws(Errno) in
            try volume.parentOf(directory)
        }
    }

    public func getAttributes(_ ino: InodeNumber) throws(Errno) -> Attributes {
        try counted { () throws(Errno) in
            present(try volume.getAttributes(ino))
        }
    }

    /// setattr; uid and gid are in the client's id space.
    public func setAttributes(_ ino: InodeNumber, _ changes: AttributeChanges, handle: OpenFile? = nil,
                              as credentials: Credentials) throws(Errno) -> Attributes {
        try counted { () throws(Errno) in
            var vmChanges = changes
            vmChanges.uid = changes.uid.map(policy.idToVM)
            vmChanges.gid = changes.gid.map(policy.idToVM)
            return present(try volume.setAttributes(ino, vmChanges, handle: handle, context(credentials)))
        }
    }

    public func access(_ ino: InodeNumber, _ mask: AccessMask, as credentials: Credentials) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.checkAccess(ino, mask, context(credentials))
        }
    }

    public func readLink(_ ino: InodeNumber) throws(Errno) -> [UInt8] {
        try counted { () throws(Errno) in
            try volume.readLink(ino)
        }
    }

    public func makeDirectory(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, as credentials: Credentials) throws(Errno) -> Attributes {
        try counted { () throws(Errno) in
            present(try volume.makeDirectory(parent, name, mode: mode, context(credentials)))
        }
    }

    /// mknod: regular files, devices (records only: never opened on the host), fifos, sockets.
    public func makeNode(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, rdev: UInt64, as credentials: Credentials) throws(Errno) -> Attributes {
        try counted { () throws(Errno) in
            present(try volume.makeNode(parent, name, mode: mode, rdev: rdev, context(credentials)))
        }
    }

    public func makeSymlink(_ parent: InodeNumber, _ name: [UInt8], target: [UInt8], as credentials: Credentials) throws(Errno) -> Attributes {
        try counted { () throws(Errno) in
            present(try volume.makeSymlink(parent, name, target: target, context(credentials)))
        }
    }

    public func link(_ ino: InodeNumber, into parent: InodeNumber, _ name: [UInt8], as credentials: Credentials) throws(Errno) -> Attributes {
        try counted { () throws(Errno) in
            present(try volume.link(ino, parent, name, context(credentials)))
        }
    }

    public func unlink(_ parent: InodeNumber, _ name: [UInt8], as credentials: Credentials) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.unlink(parent, name, context(credentials))
        }
    }

    public func removeDirectory(_ parent: InodeNumber, _ name: [UInt8], as credentials: Credentials) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.removeDirectory(parent, name, context(credentials))
        }
    }

    public func rename(_ parent: InodeNumber, _ name: [UInt8], to newParent: InodeNumber, _ newName: [UInt8],
                       flags: RenameFlags = [], as credentials: Credentials) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.rename(parent, name, newParent, newName, flags: flags, context(credentials))
        }
    }

    /// Entries after `cookie` (0 to start), at most `limit`.
    public func readDirectory(_ directory: InodeNumber, after cookie: UInt64, limit: Int = .max,
                              as credentials: Credentials) throws(Errno) -> [DirectoryEntry] {
        try counted { () throws(Errno) in
            try volume.readDirectory(directory, after: cookie, limit: limit, context(credentials))
        }
    }

    public func statistics() -> ViewStatistics {
        volume.statistics()
    }

    // MARK: Files

    /// open(2) of an existing inode with the client's flags (O_ACCMODE, O_TRUNC, O_APPEND).
    /// Writable opens of template files copy them up here.
    public func open(_ ino: InodeNumber, flags: Int32, as credentials: Credentials) throws(Errno) -> OpenFile {
        try counted { () throws(Errno) in
            try volume.open(ino, flags: flags, context(credentials))
        }
    }

    /// Opens an inode again for a client whose open file moved here from another process (a
    /// graceful upgrade of the server): the client opened it there, with the permissions of
    /// that moment, so nothing is checked again, nothing is truncated, and an inode unlinked
    /// while open (kept through the hand-over) opens too. A writable open finds the file copied
    /// up already (its first open did it); should it not be, it is copied up now.
    public func reopen(_ ino: InodeNumber, flags: Int32) throws(Errno) -> OpenFile {
        try volume.reopen(ino, flags: flags & ~(O_TRUNC | O_CREAT | O_EXCL))
    }

    /// Atomic create-and-open of a new regular file (EEXIST if the name exists).
    public func create(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, flags: Int32,
                       as credentials: Credentials) throws(Errno) -> (Attributes, OpenFile) {
        try counted { () throws(Errno) in
            let (attributes, handle) = try volume.create(parent, name, mode: mode, flags: flags, context(credentials))
            return (present(attributes), handle)
        }
    }

    public func read(_ handle: OpenFile, offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try counted { () throws(Errno) in try volume.read(handle, offset: offset, into: buffer) }
    }

    /// Reads up to `count` bytes into a new array.
    public func read(_ handle: OpenFile, offset: Int64, count: Int) throws(Errno) -> [UInt8] {
        guard count > 0 else { return [] }
        var result = [UInt8](repeating: 0, count: count)
        var failure: Errno?
        let n = result.withUnsafeMutableBytes { buffer -> Int in
            do throws(Errno) { return try volume.read(handle, offset: offset, into: buffer) } catch { failure = error; return 0 }
        }
        if let failure { throw failure }
        result.removeLast(count - n)
        return result
    }

    /// The descriptor and size behind a handle, for zero-copy replies: call `body` with it while
    /// it stays open. The descriptor may be a shared blob: only read it.
    public func withReadDescriptor<T>(_ handle: OpenFile, _ body: (FileDescriptor?) throws(Errno) -> T) throws(Errno) -> T {
        let file = try volume.readSource(handle)
        defer { withExtendedLifetime(file) {} }
        return try body(file?.descriptor)
    }

    public func write(_ handle: OpenFile, offset: Int64, from buffer: UnsafeRawBufferPointer, as credentials: Credentials) throws(Errno) -> Int {
        let ctx = context(credentials)
        return try counted { () throws(Errno) in
            let written = try volume.write(handle, offset: offset, from: buffer, ctx)
            try volume.dropPrivilegesAfterWrite(handle, ctx)
            return written
        }
    }

    public func write(_ handle: OpenFile, offset: Int64, bytes: [UInt8], as credentials: Credentials) throws(Errno) -> Int {
        var failure: Errno?
        let n = bytes.withUnsafeBytes { buffer -> Int in
            do throws(Errno) { return try write(handle, offset: offset, from: buffer, as: credentials) } catch { failure = error; return 0 }
        }
        if let failure { throw failure }
        return n
    }

    public func allocate(_ handle: OpenFile, mode: Int32, offset: Int64, length: Int64, as credentials: Credentials) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.allocate(handle, mode: mode, offset: offset, length: length, context(credentials))
        }
    }

    public func copyRange(from source: OpenFile, at sourceOffset: Int64, to destination: OpenFile, at destinationOffset: Int64,
                          length: Int, as credentials: Credentials) throws(Errno) -> Int {
        try counted { () throws(Errno) in
            try volume.copyRange(from: source, at: sourceOffset, to: destination, at: destinationOffset, length: length, context(credentials))
        }
    }

    /// fsync / fdatasync; `handle` may be nil (9P fsync on an unopened fid, FUSE fsyncdir).
    public func sync(_ ino: InodeNumber, handle: OpenFile?, dataOnly: Bool) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.sync(ino, handle: handle, dataOnly: dataOnly)
        }
    }

    /// Closes a handle; locks its owner held on the inode go with it when `lockOwner` is given.
    public func release(_ handle: OpenFile, lockOwner: UInt64? = nil) {
        if let lockOwner { volume.locks.releaseAll(handle.inode, owner: LockOwner(session: sessionID, owner: lockOwner)) }
        volume.release(handle)
    }

    // MARK: Extended attributes

    public func getXattr(_ ino: InodeNumber, _ name: [UInt8], as credentials: Credentials) throws(Errno) -> [UInt8] {
        try counted { () throws(Errno) in
            try volume.getXattr(ino, name, context(credentials))
        }
    }

    public func listXattrs(_ ino: InodeNumber, as credentials: Credentials) throws(Errno) -> [[UInt8]] {
        try counted { () throws(Errno) in
            try volume.listXattrs(ino, context(credentials))
        }
    }

    public func setXattr(_ ino: InodeNumber, _ name: [UInt8], _ value: [UInt8], mode: XattrSetMode = .createOrReplace,
                         as credentials: Credentials) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.setXattr(ino, name, value, mode: mode, context(credentials))
        }
    }

    public func removeXattr(_ ino: InodeNumber, _ name: [UInt8], as credentials: Credentials) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.removeXattr(ino, name, context(credentials))
        }
    }

    // MARK: Locks

    /// F_GETLK: the conflicting lock, or nil where `range` could be taken.
    public func testLock(_ ino: InodeNumber, owner: UInt64, range: FileLockRange) -> FileLockRange? {
        volume.locks.test(ino, owner: LockOwner(session: sessionID, owner: owner), range: range)
    }

    /// F_SETLK / F_SETLKW (and flock, with an owner per open file and a whole-file range).
    public func setLock(_ ino: InodeNumber, owner: UInt64, range: FileLockRange, wait: Bool,
                        cancelled: () -> Bool = { false }) throws(Errno) {
        try counted { () throws(Errno) in
            try volume.locks.set(ino, owner: LockOwner(session: sessionID, owner: owner), range: range, wait: wait, cancelled: cancelled)
        }
    }

    /// F_SETLKW for a caller that must not hold a thread while it waits: takes the lock now and
    /// returns nil, or, on a conflict, returns a token after arranging for `wake` to be called
    /// once (on whichever thread next changes the inode's locks); the caller then tries again.
    public func setLockOrWatch(_ ino: InodeNumber, owner: UInt64, range: FileLockRange,
                               wake: @escaping @Sendable () -> Void) throws(Errno) -> LockWatch? {
        try counted { () throws(Errno) in
            try volume.locks.setOrWatch(ino, owner: LockOwner(session: sessionID, owner: owner), range: range, wake: wake)
                .map { LockWatch(inode: ino, token: $0) }
        }
    }

    /// Withdraws a watch that has not fired (the waiter timed out or was flushed).
    public func stopWatching(_ watch: LockWatch) {
        volume.locks.stopWatching(watch.inode, token: watch.token)
    }

    /// The locks this session holds: a server handing the session to another process passes
    /// them on, and the new one takes each again with `setLock(…, wait: false)` in its view.
    public func heldLocks() -> [HeldLock] {
        volume.locks.held(session: sessionID)
    }

    /// Drops every lock of this session (the connection or mount ended).
    public func releaseAllLocks() {
        volume.locks.releaseSession(sessionID)
    }
}

extension Volume {
    /// A write by someone without root's privilege clears setuid, and setgid where it means "run
    /// as group" (group execute set) or the writer is not in the file's group, as Linux's
    /// file_remove_privs does, so a guest cannot plant a writable set-id binary. Linux's 9p
    /// client sends a plain Twrite and leaves this to the server. Whether the writer is in the
    /// group is known only as far as the server knows the writer's groups (docs/access.md).
    func dropPrivilegesAfterWrite(_ handle: OpenFile, _ ctx: RequestContext) throws(Errno) {
        guard ctx.clearsSetIDOnWrite else { return }
        metaLock.lock()
        defer { metaLock.unlock() }
        guard var r = record(handle.inode), r.kind == .regular else { return }
        let clearGID = r.mode & setGIDBit != 0 && (r.mode & 0o010 != 0 || !ctx.caller.credentials.isMember(of: r.gid))
        guard r.mode & setUIDBit != 0 || clearGID else { return }
        r.mode &= ~setUIDBit
        if clearGID { r.mode &= ~setGIDBit }
        try commit([.putInode(handle.inode, touched(r))])
    }
}
