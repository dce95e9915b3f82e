import Foundation
import Logging
import PVFS9PCodec
import PVFSEngine
import PVFSSystem
import SystemPackage

/// One request as the session executes it: what it needs from whoever scheduled it (a
/// `NinePConnection`, or a test calling the session directly).
protocol NinePRequestContext: AnyObject, Sendable {
    var tag: UInt16 { get }
    /// The fid table of the protocol session (Tversion to Tversion) the request arrived in.
    var fids: FidTable { get }
    /// The msize agreed when the request arrived.
    var messageSize: Int { get }
    /// Flushed, superseded by a Tversion, or its connection closing: a waiting request stops.
    var isCancelled: Bool { get }
    /// Takes one of the places for requests that wait long (blocking locks); false when none
    /// is free (the limit was counted).
    func reserveBlockedWait() -> Bool
    func releaseBlockedWait()
    /// The attach of this request bound the session to a VM: the scheduler charges its work there.
    func bound(toVM name: String)
    /// Ends a request whose handling returned `.deferred`: its reply, or nil for none.
    func complete(_ reply: [UInt8]?)
    /// The connection is moving to another process: a request waiting long ends now as if its
    /// wait timed out (the client asks again, of the new process).
    var isSuspending: Bool { get }
}

extension NinePRequestContext {
    var isSuspending: Bool { false }
}

/// How `NinePSession.handle` ends a request.
enum NinePOutcome {
    case reply([UInt8])
    /// The session completes the request later through its context (a lock wait, which holds no thread).
    case deferred
}

/// What 9P2000.L messages mean for one client: the fids (per Tversion), the VM views its
/// attaches opened, the guest accounts that give users their groups, and the buffers and limits
/// that go with them. It executes one decoded request at a time per call, from any thread, and
/// knows nothing of tags in flight, flushes, ordering or back-pressure: `NinePConnection` does
/// that and calls `handle(_:_:)` on worker threads.
///
/// Lock order: a caller may hold its own lock while calling the session (the connection's
/// `state`); the session never calls out while holding its `stateLock`.
final class NinePSession: @unchecked Sendable {
    /// Who the client is, as the resolver is told on each attach.
    let peer: NinePPeer
    /// Chooses the view each Tattach reaches.
    let resolver: NinePAttachResolver
    let configuration: NinePConfiguration
    /// Counts limits reached when neither a VM nor the configuration gives counters.
    private let ownLimitCounters = LimitCounters()
    let logger: Logger
    /// Users' groups, for the checks the server makes itself.
    let accounts: GuestAccounts

    /// Guards everything below.
    private let stateLock = NSLock()
    /// The fid table of the current protocol session; a Tversion replaces it.
    private var table: FidTable
    /// The VM the client is served (set by its first attach; a Tversion clears it).
    private var boundVM: String?
    /// Sessions whose attach succeeded and that still have fids, by view.
    private var views: [ObjectIdentifier: VMView] = [:]
    /// The attach that made each session, by view: what a process taking the connection over
    /// resolves again.
    private var attaches: [ObjectIdentifier: NinePAttachRequest] = [:]
    /// Attaches between the session check and their fid's insertion.
    private var attachesInProgress = 0
    /// Bytes held in xattr fids.
    private var heldXattrBytes = 0
    /// A fid was inserted at some point (sticky across Tversion), for the idle timeout.
    private var insertedFid = false
    private var sessionEndHandler: (@Sendable (VMView) -> Void)?

    /// `configuration` as the connection normalized it; `logger` names the peer.
    init(peer: NinePPeer, configuration: NinePConfiguration, logger: Logger, resolver: @escaping NinePAttachResolver) {
        self.peer = peer
        self.configuration = configuration
        self.logger = logger
        self.resolver = resolver
        accounts = GuestAccounts(policy: configuration.accounts)
        table = FidTable(limit: configuration.maximumFids)
    }

    /// Called (never under the session's lock) with the view of each session that ended.
    var onSessionEnd: (@Sendable (VMView) -> Void)? {
        get { stateLock.withLock { sessionEndHandler } }
        set { stateLock.withLock { sessionEndHandler = newValue } }
    }

    /// The fid table requests arriving now use.
    var fids: FidTable { stateLock.withLock { table } }

    var sessionCount: Int { stateLock.withLock { views.count } }

    var xattrBytes: Int { stateLock.withLock { heldXattrBytes } }

    /// Fids in use and whether any was ever inserted.
    var fidUsage: (count: Int, everInserted: Bool) {
        stateLock.withLock { (table.count, insertedFid) }
    }

    /// Counts and logs a limit reached: in the counters of the VM served, or in the daemon's
    /// while none is (the log line is rate-limited per limit).
    func limitReached(_ limit: TenantLimit, _ detail: @autoclosure () -> String) {
        stateLock.lock()
        defer { stateLock.unlock() }
        limitReachedLocked(limit, detail())
    }

    /// `limitReached` with `stateLock` held.
    private func limitReachedLocked(_ limit: TenantLimit, _ detail: @autoclosure () -> String) {
        let view = views.values.first
        let counters = view?.limitCounters ?? configuration.unboundLimitCounters ?? ownLimitCounters
        counters.record(limit, logger: logger, "\(detail()) (\(view.map { "VM \($0.vmName)" } ?? "no VM attached"))")
    }

    /// Tversion: a new fid table and no VM bound. Returns the new table and the old one, whose
    /// fids the caller ends with `end(_:)` once no request can take a new use of them.
    func reset() -> (old: FidTable, new: FidTable) {
        stateLock.lock()
        defer { stateLock.unlock() }
        let old = table
        table = FidTable(limit: configuration.maximumFids)
        boundVM = nil
        return (old, table)
    }

    /// Ends a fid table: fids nobody uses are finalized now, the rest by their last user. The
    /// sessions end as their fids go.
    func end(_ fids: FidTable) {
        for fid in fids.close() { finalize(fid, in: fids) }
    }

    /// Ends everything once no request runs: every fid of the current table, then every session
    /// left (a session whose fids all went already ended with its last one).
    func close() {
        end(fids)
        let left = stateLock.withLock { Array(views.values) }
        for view in left { endSession(view) }
    }

    // MARK: - Fids

    /// Runs `body` with a use of fid `number` of the request's table.
    func withFid<T>(_ request: any NinePRequestContext, _ number: UInt32,
                    _ body: (Fid) throws(Errno) -> T) throws(Errno) -> T {
        let fids = request.fids
        guard let fid = fids.acquire(number) else { throw Errno.badFileDescriptor }
        defer { release(fid, in: fids) }
        return try body(fid)
    }

    func release(_ fid: Fid, in table: FidTable) {
        if table.release(fid) { finalize(fid, in: table) }
    }

    /// Inserts a new fid into a table (see `FidTable.insert`), counting the fid limit when it is
    /// the reason of a refusal.
    func insert(_ fid: Fid, into table: FidTable) throws(Errno) {
        do throws(Errno) {
            try table.insert(fid)
            stateLock.withLock { insertedFid = true }
        } catch where error == .tooManyOpenFilesInSystem {
            limitReached(.fidsPerConnection, "\(table.limit) fids in use")
            throw error
        }
    }

    /// Ends a session: its attach failed after the resolver made it, or its last fid went.
    /// Drops its locks and hands it back to the transport.
    func endSession(_ view: VMView) {
        stateLock.lock()
        views[ObjectIdentifier(view)] = nil
        attaches[ObjectIdentifier(view)] = nil
        let handler = sessionEndHandler
        stateLock.unlock()
        view.releaseAllLocks()
        handler?(view)
    }

    /// Closes what a detached fid holds: its open handle (dropping the locks taken through it)
    /// and its xattr buffer; ends its session when it was the session's last fid.
    func finalize(_ fid: Fid, in table: FidTable) {
        defer { if table.forget(fid) { endSession(fid.view) } }
        fid.lock.lock()
        let state = fid.state
        fid.state = .idle
        let owners = fid.lockOwners
        fid.lockOwners = []
        let inode = fid.inode
        let held = fid.xattrBytes
        fid.xattrBytes = 0
        fid.lock.unlock()
        if held > 0 { releaseXattrBytes(held) }
        if case .open(let handle) = state {
            for owner in owners {
                try? fid.view.setLock(inode, owner: owner, range: FileLockRange(type: .unlock, start: 0, end: .max, pid: 0), wait: false)
            }
            fid.view.release(handle)
        }
    }

    // MARK: - Attach bookkeeping

    /// Takes a session place for an attach about to ask the resolver; EUSERS when the
    /// connection holds `maximumSessions` already.
    func beginAttach() throws(Errno) {
        stateLock.lock()
        defer { stateLock.unlock() }
        // Each attach is a session in the registry until its last fid goes: bounded, so that
        // attaching without end cannot grow the server.
        let held = views.count + attachesInProgress
        guard held < configuration.maximumSessions else {
            limitReachedLocked(.sessionsPerConnection, "\(held) sessions open; attach refused")
            throw Errno.tooManyUsers
        }
        attachesInProgress += 1
    }

    /// The resolver refused the attach.
    func abandonAttach() {
        stateLock.withLock { attachesInProgress -= 1 }
    }

    /// Makes the view the resolver gave a session of this client. EACCES when the client is
    /// served another VM, EBADF when a Tversion replaced the request's table meanwhile; the view
    /// is then ended.
    func admitAttach(_ view: VMView, for request: any NinePRequestContext, attach: NinePAttachRequest) throws(Errno) {
        stateLock.lock()
        attachesInProgress -= 1
        if let bound = boundVM, bound != view.vmName {
            stateLock.unlock()
            endSession(view)
            logger.warning("attach to VM \(view.vmName) refused: the connection serves \(bound)")
            throw Errno.permissionDenied
        }
        guard request.fids === table else {
            stateLock.unlock()
            endSession(view)
            throw Errno.badFileDescriptor
        }
        recordSessionLocked(view, attach: attach)
        stateLock.unlock()
        request.bound(toVM: view.vmName)
    }

    /// A session the client holds from now on: the VM it binds the client to and the attach that
    /// made it. Caller holds `stateLock`.
    private func recordSessionLocked(_ view: VMView, attach: NinePAttachRequest) {
        boundVM = view.vmName
        views[ObjectIdentifier(view)] = view
        attaches[ObjectIdentifier(view)] = attach
    }

    // MARK: - Xattr buffers

    /// Reserves xattr buffer bytes against the connection's budget.
    func reserveXattrBytes(_ n: Int) throws(Errno) {
        stateLock.lock()
        defer { stateLock.unlock() }
        guard heldXattrBytes + n <= configuration.maximumXattrBytes else {
            limitReachedLocked(.xattrBufferBytes, "\(heldXattrBytes) bytes held in xattr fids, \(n) more asked")
            throw Errno.noMemory
        }
        heldXattrBytes += n
    }

    func releaseXattrBytes(_ n: Int) {
        stateLock.withLock { heldXattrBytes -= n }
    }
}

// MARK: - Hand-over to another process

extension NinePSession {
    /// The session's state for the process taking the connection over. The connection is at
    /// rest (no request outstanding) and serves nothing afterwards; nothing is released.
    func handOverState(messageSize: Int?) throws -> [UInt8] {
        stateLock.lock()
        let sessions = views.map { (key: $0.key, view: $0.value, attach: attaches[$0.key]) }
        let current = table
        stateLock.unlock()
        var records: [NinePHandOverState.Session] = []
        var index: [ObjectIdentifier: Int] = [:]
        for session in sessions {
            guard let attach = session.attach else { continue }
            index[session.key] = records.count
            records.append(.init(aname: attach.anameBytes, uname: attach.unameBytes, uid: attach.uid,
                                 locks: session.view.heldLocks()))
        }
        var fids: [NinePHandOverState.Fid] = []
        for fid in current.all() {
            guard let session = index[ObjectIdentifier(fid.view)] else { continue }
            fid.lock.lock()
            let state: NinePHandOverState.FidState
            switch fid.state {
            case .idle, .opening: state = .idle
            case .open(let handle): state = .open(flags: handle.flags)
            case .xattrRead(let value): state = .xattrRead(value)
            case .xattrWrite(let pending):
                state = .xattrWrite(name: pending.name, flags: pending.flags, size: pending.size,
                                    value: Array(pending.value.prefix(pending.written)))
            }
            fids.append(.init(number: fid.number, session: session, uid: fid.uid, inode: fid.inode, kind: fid.kind.rawValue,
                              parent: fid.path?.parent, name: fid.path?.name, state: state, lockOwners: Array(fid.lockOwners)))
            fid.lock.unlock()
        }
        let state = NinePHandOverState(messageSize: messageSize, sessions: records, fids: fids)
        return try state.encoded()
    }

    /// Rebuilds the sessions and fids `bytes` describe into `table` (this session's, fresh).
    /// An attach the rules refuse now loses its fids (logged); a file that cannot be opened
    /// again leaves its fid unopened (the client's next use gets EBADF).
    func restore(_ bytes: [UInt8], into table: FidTable) throws -> (messageSize: Int?, vm: String?) {
        let state = try NinePHandOverState.decode(bytes)
        var restored: [Int: VMView] = [:]
        for (i, record) in state.sessions.enumerated() {
            let attach = NinePAttachRequest(anameBytes: record.aname, unameBytes: record.uname, uid: record.uid, peer: peer)
            let view: VMView
            do {
                view = try resolver(attach)
            } catch {
                logger.error("a handed-over session of \"\(attach.aname)\" is refused now, its fids are dropped: \(error)")
                continue
            }
            stateLock.withLock { recordSessionLocked(view, attach: attach) }
            restored[i] = view
            for held in record.locks {
                do throws(Errno) {
                    try view.setLock(held.inode, owner: held.owner, range: held.range, wait: false)
                } catch {
                    // The client believes it holds this lock: serving it without would break
                    // its locking silently. The connection is not restored (it ends, as at a crash).
                    for fid in table.close() { finalize(fid, in: table) }
                    for view in restored.values { endSession(view) }
                    throw NinePHandOverError("a handed-over lock on inode \(held.inode) could not be taken again: \(error)")
                }
            }
        }
        for record in state.fids {
            guard let view = restored[record.session], let kind = FileKind(rawValue: record.kind) else { continue }
            let path = record.parent.map { FidPath(parent: $0, name: record.name ?? []) }
            let fid = Fid(number: record.number, view: view, uid: record.uid, inode: record.inode, kind: kind, path: path,
                          lock: table.fidStateLock)
            fid.lockOwners = Set(record.lockOwners)
            switch record.state {
            case .idle:
                break
            case .open(let flags):
                do throws(Errno) {
                    fid.state = .open(try view.reopen(record.inode, flags: flags))
                } catch {
                    logger.error("fid \(record.number): inode \(record.inode) could not be opened again: \(error)")
                }
            case .xattrRead(let value):
                // Counted against the budget as the first process counted it.
                if (try? reserveXattrBytes(value.count)) != nil { fid.xattrBytes = value.count }
                fid.state = .xattrRead(value)
            case .xattrWrite(let name, let flags, let size, let value):
                guard size >= 0, size <= configuration.maximumXattrBytes else { continue }
                if (try? reserveXattrBytes(size)) != nil { fid.xattrBytes = size }
                var buffer = [UInt8](repeating: 0, count: size)
                buffer.replaceSubrange(0..<min(size, value.count), with: value.prefix(size))
                fid.state = .xattrWrite(XattrWrite(name: name, flags: flags, size: size, value: buffer, written: min(size, value.count)))
            }
            do throws(Errno) {
                try insert(fid, into: table)
            } catch {
                logger.error("fid \(record.number) could not be restored: \(error)")
                finalize(fid, in: table)
            }
        }
        // A session whose fids all failed has nothing to live for.
        for view in restored.values where !table.hasFids(of: view) { endSession(view) }
        return (state.messageSize, restored.values.first?.vmName)
    }
}
