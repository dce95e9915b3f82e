import Foundation
import Glibc
import Logging
import PVFSEngine
import PVFSFuseCodec
import PVFSSystem
import Synchronization
import SystemPackage

/// How one FUSE session is served: caching the client may do, what INIT grants, and bounds.
public struct FuseServerConfiguration: Sendable {
    /// Seconds the client may trust a name, an attribute, or a name's absence.
    public var entryTimeout: Double
    public var attributeTimeout: Double
    public var negativeTimeout: Double
    /// Pages and directory listings survive across opens (FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR):
    /// right only when nothing but this session changes the VM.
    public var keepCache: Bool
    /// The client's kernel keeps POSIX and flock locks itself (no POSIX_LOCKS/FLOCK_LOCKS, and
    /// FOPEN_NOFLUSH): only when no other session of the VM takes locks.
    public var locksInKernel: Bool
    /// Offer POSIX ACLs (the client's kernel enforces them; the server keeps mode and ACL in step).
    public var posixACLs: Bool
    public var maximumWrite: UInt32
    public var maximumPages: UInt16
    /// A second INIT starts the session over (a guest rebooting on the same virtio-fs device);
    /// otherwise it is a protocol error, as on /dev/fuse.
    public var allowsReinitialisation: Bool
    public var limits: FuseSessionLimits
    /// The caller's supplementary groups, where a decision needs them: where the engine checks
    /// permissions itself (squashed guests), and for the set-group-id rule of setfacl on kernels
    /// without FUSE_SETXATTR_EXT. Nil: none are known.
    public var supplementaryGroups: (@Sendable (_ uid: UInt32, _ gid: UInt32, _ pid: UInt32) -> [UInt32])?

    public init(entryTimeout: Double = 1, attributeTimeout: Double? = nil, negativeTimeout: Double? = nil,
                keepCache: Bool = false, locksInKernel: Bool = false, posixACLs: Bool = true,
                maximumWrite: UInt32 = 1 << 20, maximumPages: UInt16 = 256, allowsReinitialisation: Bool = false,
                limits: FuseSessionLimits = FuseSessionLimits(),
                supplementaryGroups: (@Sendable (_ uid: UInt32, _ gid: UInt32, _ pid: UInt32) -> [UInt32])? = nil) {
        self.entryTimeout = entryTimeout
        self.attributeTimeout = attributeTimeout ?? entryTimeout
        self.negativeTimeout = negativeTimeout ?? entryTimeout
        self.keepCache = keepCache
        self.locksInKernel = locksInKernel
        self.posixACLs = posixACLs
        self.maximumWrite = maximumWrite
        self.maximumPages = maximumPages
        self.allowsReinitialisation = allowsReinitialisation
        self.limits = limits
        self.supplementaryGroups = supplementaryGroups
    }

    /// A guest's virtio-fs device: nothing is kept across opens (other sessions of the VM may
    /// change it), the engine's lock table, a new INIT after a guest reboot.
    public static func guest(cacheTimeout: Double = 1, limits: FuseSessionLimits = FuseSessionLimits()) -> FuseServerConfiguration {
        FuseServerConfiguration(entryTimeout: cacheTimeout, allowsReinitialisation: true, limits: limits)
    }

    /// The largest READ the client is told it may send.
    var maximumRead: Int { Int(maximumPages) * 4096 }
}

/// What INIT agreed.
public struct FuseNegotiation: Sendable, Equatable {
    public var minor: UInt32
    public var flags: FuseInitFlags
    public var maximumWrite: UInt32
    public var maximumPages: UInt16

    /// The client enforces ACLs and sends the umask for the server to apply (DONT_MASK).
    var aclActive: Bool { flags.contains(.posixACL) }
    var umaskIsOurs: Bool { flags.contains(.dontMask) }
    var extendedSetxattr: Bool { flags.contains(.setxattrExt) }
}

/// One FUSE session over a VM's view, transport-neutral: the same server answers a guest's
/// virtio-fs queues and a host mount's /dev/fuse.
///
/// Node ids are the engine's inode numbers (the root is 1 in both; the engine never reuses a
/// number, so generation 0 suffices). The session counts the lookups the client holds on each
/// (`NodeTable`) and refuses ids it does not hold; file handles are indices into a table with a
/// generation check. `handle` may run on several threads at once; a SETLKW that must wait gets
/// a thread of its own (bounded), and its reply comes from there.
///
/// Who checks permissions is the view's policy (docs/access.md, "Who decides"): a FUSE client
/// kernel mounts with default_permissions and sends every implicit change (set-id clearing on
/// write, truncate and chown) as an explicit SETATTR, so unsquashed sessions run with
/// `PermissionChecks.hostKernel`; squashed guests are checked by the engine.
public final class FuseServer: FuseMessageHandler, @unchecked Sendable {
    public let view: VMView
    public let configuration: FuseServerConfiguration
    public let limitCounters = FuseLimitCounters()
    let logger: Logger

    struct State {
        var negotiation: FuseNegotiation?
        var closed = false
        var nodes = NodeTable()
        var handles = HandleTable()
        /// Directories with open handles and their attributes when opened: Linux keeps
        /// answering fstat (no links) and an empty listing for a directory removed while open.
        var openDirectories: [InodeNumber: (count: Int, attributes: Attributes)] = [:]
        var lockWaits: [UInt64: LockWait] = [:]
        /// INTERRUPTs that came before the SETLKW they name (read by another thread first).
        var earlyInterrupts: [UInt64] = []
    }

    let state = Mutex(State())
    /// Called once when the session ends (DESTROY or the transport closing).
    private let onClose: (@Sendable () -> Void)?

    public init(view: VMView, configuration: FuseServerConfiguration, logger: Logger = Logger(label: "pvfs.fuse"),
                onClose: (@Sendable () -> Void)? = nil) {
        self.view = view
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "vm"] = "\(view.vmName)"
        self.logger = logger
        self.onClose = onClose
    }

    public var negotiation: FuseNegotiation? { state.withLock { $0.negotiation } }

    /// Counts of the session's tables, for tests and status.
    public var heldNodes: Int { state.withLock { $0.nodes.count } }
    public var openHandles: Int { state.withLock { $0.handles.count } }
    public var waitingLocks: Int { state.withLock { $0.lockWaits.count } }

    func limitReached(_ limit: FuseLimit, _ detail: @autoclosure () -> String) {
        limitCounters.record(limit, logger: logger, detail())
    }

    // MARK: Entry point

    public func handle(_ message: UnsafeRawBufferPointer, reply sink: any FuseReplySink) {
        let (negotiation, closed) = state.withLock { ($0.negotiation, $0.closed) }
        let options = FuseDecodeOptions(extendedSetxattr: negotiation?.extendedSetxattr ?? false)
        let header: FuseInHeader
        let request: FuseRequest
        do {
            (header, request) = try FuseRequest.decode(message, options: options)
        } catch {
            // A request that cannot be read gets EIO if its header names it; FORGETs never get a reply.
            if let h = try? FuseInHeader.decode(message), h.opcode != FuseOpcode.forget.rawValue,
               h.opcode != FuseOpcode.batchForget.rawValue, h.opcode != FuseOpcode.notifyReply.rawValue,
               h.opcode != FuseOpcode.interrupt.rawValue {
                logger.debug("undecodable request (opcode \(h.opcode)): \(error)")
                sink.send(FuseReplyWriter.error(unique: h.unique, errno: EIO))
            } else {
                logger.debug("undecodable request: \(error)")
                sink.noReply()
            }
            return
        }
        if closed {
            if request.expectsNoReply { sink.noReply() } else { sink.send(FuseReplyWriter.error(unique: header.unique, errno: EIO)) }
            return
        }
        if case .initialise(let input) = request {
            return initialise(header, input, sink)
        }
        guard let negotiation else {
            // Nothing but INIT before INIT (as libfuse).
            if request.expectsNoReply { sink.noReply() } else { sink.send(FuseReplyWriter.error(unique: header.unique, errno: EIO)) }
            return
        }
        let request_ = Request(header: header, message: message, sink: sink, negotiation: negotiation)
        dispatch(request_, request)
    }

    public func transportClosed() {
        endSession(reason: "transport closed", final: true)
    }

    /// Drops every handle, lock, wait and node of the session. `final`: no request is served
    /// afterwards (else a new INIT may start the session over).
    func endSession(reason: String, final: Bool) {
        let (files, waits, wasOpen) = state.withLock { s -> ([OpenFile], [LockWait], Bool) in
            let wasOpen = !s.closed
            if final { s.closed = true }
            s.negotiation = nil
            s.nodes.removeAll()
            s.openDirectories.removeAll()
            s.earlyInterrupts.removeAll()
            let waits = Array(s.lockWaits.values)
            return (s.handles.removeAll(), waits, wasOpen)
        }
        for wait in waits { wait.cancel() }
        for file in files { view.release(file) }
        view.releaseAllLocks()
        if final && wasOpen {
            logger.debug("FUSE session ended: \(reason)")
            onClose?()
        }
    }

    // MARK: Requests

    /// One request in progress: its header, the bytes it came in (valid during `handle` only)
    /// and where its reply goes.
    struct Request {
        let header: FuseInHeader
        let message: UnsafeRawBufferPointer
        let sink: any FuseReplySink
        let negotiation: FuseNegotiation

        var unique: UInt64 { header.unique }
        var node: InodeNumber { header.nodeID }

        func fail(_ error: Errno) {
            sink.send(FuseReplyWriter.error(unique: unique, errno: error.rawValue))
        }

        func ok() {
            sink.send(FuseReplyWriter.empty(unique: unique))
        }

        func reply(_ body: (inout FuseWriter) -> Void) {
            var w = FuseReplyWriter(unique: unique)
            body(&w.writer)
            sink.send(w.finish())
        }
    }

    func credentials(_ r: Request) -> Credentials {
        let h = r.header
        guard view.policy.enforcePermissions, let groups = configuration.supplementaryGroups else {
            return Credentials(uid: h.uid, gid: h.gid)
        }
        return Credentials(uid: h.uid, gid: h.gid, groups: groups(h.uid, h.gid, h.pid))
    }

    func callerIsMember(_ r: Request, of gid: UInt32) -> Bool {
        let h = r.header
        if h.uid == 0 || h.gid == gid { return true }
        return configuration.supplementaryGroups?(h.uid, h.gid, h.pid).contains(gid) ?? false
    }

    /// ESTALE for a node id the client was never given (or forgot).
    func requireHeld(_ node: InodeNumber) throws(Errno) {
        guard state.withLock({ $0.nodes.holds(node) }) else { throw Errno.staleNFSFileHandle }
    }

    private func dispatch(_ r: Request, _ request: FuseRequest) {
        do throws(Errno) {
            switch request {
            case .initialise:
                break  // handled before
            case .destroy:
                endSession(reason: "DESTROY", final: false)
                r.ok()
            case .forget(let count):
                state.withLock { $0.nodes.forget(r.node, count) }
                r.sink.noReply()
            case .batchForget(let items):
                state.withLock { s in for item in items { s.nodes.forget(item.nodeID, item.count) } }
                r.sink.noReply()
            case .interrupt(let unique):
                interrupt(unique)
                r.sink.noReply()
            case .lookup(let name): try lookup(r, name)
            case .getattr(let flags, let handle): try getattr(r, flags: flags, handle: handle)
            case .setattr(let input): try setattr(r, input)
            case .readlink:
                try requireHeld(r.node)
                let target = try view.readLink(r.node)
                r.reply { $0.data(target) }
            case .symlink(let name, let target):
                try requireHeld(r.node)
                try requireNodeRoom()
                replyEntry(r, try view.makeSymlink(r.node, name, target: target, as: credentials(r)), force: true)
            case .mknod(let mode, let rdev, let umask, let name): try mknod(r, mode: mode, rdev: rdev, umask: umask, name: name)
            case .mkdir(let mode, let umask, let name): try mkdir(r, mode: mode, umask: umask, name: name)
            case .unlink(let name):
                try requireHeld(r.node)
                try view.unlink(r.node, name, as: credentials(r))
                r.ok()
            case .rmdir(let name):
                try requireHeld(r.node)
                try view.removeDirectory(r.node, name, as: credentials(r))
                r.ok()
            case .rename(let newParent, let flags, let name, let newName, _):
                let known = RenameFlags.noReplace.rawValue | RenameFlags.exchange.rawValue | RenameFlags.whiteout.rawValue
                guard flags & ~known == 0 else { throw Errno.invalidArgument }
                try requireHeld(r.node)
                try requireHeld(newParent)
                try view.rename(r.node, name, to: newParent, newName, flags: RenameFlags(rawValue: flags), as: credentials(r))
                r.ok()
            case .link(let node, let name):
                try requireHeld(r.node)
                try requireHeld(node)
                try requireNodeRoom()
                replyEntry(r, try view.link(node, into: r.node, name, as: credentials(r)), force: true)
            case .open(let flags, _): try open(r, flags: flags)
            case .opendir: try opendir(r)
            case .create(let input, let name): try create(r, input, name: name)
            case .read(let input): try read(r, input)
            case .write(let input, let dataOffset): try write(r, input, dataOffset: dataOffset)
            case .statfs:
                try requireHeld(r.node)
                statfs(r)
            case .release(let input): release(r, input, directory: false)
            case .releasedir(let input): release(r, input, directory: true)
            case .flush(let handle, let lockOwner):
                guard let slot = state.withLock({ $0.handles.get(handle) }), let file = slot.file else { throw Errno.badFileDescriptor }
                // close(2) of one descriptor: POSIX says the process loses all its locks on the file.
                try? view.setLock(file.inode, owner: lockOwner, range: FileLockRange(type: .unlock, start: 0, end: .max, pid: 0), wait: false)
                r.ok()
            case .fsync(let handle, let flags):
                guard let file = state.withLock({ $0.handles.get(handle)?.file }) else { throw Errno.badFileDescriptor }
                try view.sync(file.inode, handle: file, dataOnly: flags & FuseMiscFlags.fsyncDataOnly != 0)
                r.ok()
            case .fsyncdir(_, let flags):
                try requireHeld(r.node)
                try view.sync(r.node, handle: nil, dataOnly: flags & FuseMiscFlags.fsyncDataOnly != 0)
                r.ok()
            case .syncfs:
                try syncfs()
                r.ok()
            case .setxattr(let flags, let setxattrFlags, let name, let value):
                try setxattr(r, flags: flags, setxattrFlags: setxattrFlags, name: name, value: value)
            case .getxattr(let size, let name):
                try requireHeld(r.node)
                replyXattr(r, try view.getXattr(r.node, name, as: credentials(r)), size: size)
            case .listxattr(let size): try listxattr(r, size: size)
            case .removexattr(let name):
                try requireHeld(r.node)
                try view.removeXattr(r.node, name, as: credentials(r))
                r.ok()
            case .readdir(let input): try readdir(r, input, plus: false)
            case .readdirplus(let input): try readdir(r, input, plus: true)
            case .getlk(let input): try getlk(r, input)
            case .setlk(let input, let wait): try setlk(r, input, wait: wait)
            case .access(let mask):
                try requireHeld(r.node)
                try view.access(r.node, AccessMask(rawValue: mask & 7), as: credentials(r))
                r.ok()
            case .fallocate(let input):
                guard let file = state.withLock({ $0.handles.get(input.handle)?.file }) else { throw Errno.badFileDescriptor }
                guard let offset = Int64(exactly: input.offset), let length = Int64(exactly: input.length) else { throw Errno.fileTooLarge }
                try view.allocate(file, mode: Int32(bitPattern: input.mode), offset: offset, length: length, as: credentials(r))
                r.ok()
            case .lseek(let handle, let offset, let whence): try lseek(r, handle: handle, offset: offset, whence: whence)
            case .copyFileRange(let input): try copyFileRange(r, input)
            case .unsupported(let opcode):
                if opcode == FuseOpcode.notifyReply.rawValue { r.sink.noReply() } else { r.fail(.noFunction) }
            }
        } catch {
            r.fail(error)
        }
    }

    // MARK: INIT

    /// What the server grants of what the client offers (docs/virtiofs.md, "INIT").
    func grantedFlags(_ offered: FuseInitFlags) -> FuseInitFlags {
        var wanted: FuseInitFlags = [.asyncRead, .atomicOTrunc, .bigWrites, .autoInvalData, .doReaddirplus, .readdirplusAuto,
                                     .asyncDIO, .parallelDirops, .maxPages, .cacheSymlinks, .setxattrExt]
        if !configuration.locksInKernel { wanted.formUnion([.posixLocks, .flockLocks]) }
        if configuration.posixACLs, offered.contains(.posixACL), offered.contains(.dontMask) {
            wanted.formUnion([.posixACL, .dontMask])
        }
        return offered.intersection(wanted)
    }

    private func initialise(_ header: FuseInHeader, _ input: FuseInitIn, _ sink: any FuseReplySink) {
        guard input.major == FuseProtocol.major, input.minor >= FuseProtocol.minimumMinor else {
            logger.error("FUSE client speaks \(input.major).\(input.minor); the server needs 7.\(FuseProtocol.minimumMinor) or newer")
            sink.send(FuseReplyWriter.error(unique: header.unique, errno: EPROTO))
            return
        }
        let already = state.withLock { $0.negotiation != nil }
        if already {
            guard configuration.allowsReinitialisation else {
                sink.send(FuseReplyWriter.error(unique: header.unique, errno: EIO))
                return
            }
            // The client started over (a guest rebooted): nothing it held survives.
            endSession(reason: "new INIT", final: false)
        }
        let negotiation = FuseNegotiation(minor: min(input.minor, FuseProtocol.minor), flags: grantedFlags(input.flags),
                                          maximumWrite: configuration.maximumWrite, maximumPages: configuration.maximumPages)
        var out = FuseInitOut()
        out.minor = negotiation.minor
        out.maxReadahead = input.maxReadahead
        out.flags = negotiation.flags
        out.maxBackground = 64
        out.congestionThreshold = 48
        out.maxWrite = negotiation.maximumWrite
        out.timeGranularity = 1
        out.maxPages = negotiation.maximumPages
        state.withLock { $0.negotiation = negotiation }
        logger.debug("FUSE session initialised", metadata: [
            "protocol": "7.\(input.minor)", "offered": "\(String(input.flags.rawValue, radix: 16))",
            "granted": "\(String(negotiation.flags.rawValue, radix: 16))",
        ])
        var w = FuseReplyWriter(unique: header.unique)
        out.encode(into: &w.writer)
        sink.send(w.finish())
    }
}
