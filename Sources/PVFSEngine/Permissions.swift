import PVFSStore
import PVFSSystem
import SystemPackage

/// Who is asking and under which rules: built by a session for each request.
struct RequestContext: Sendable {
    var caller: Caller
    var checks: PermissionChecks
    var readOnly: Bool

    /// The engine's own requests: root, nothing checked, nothing changed implicitly.
    static let internalRoot = RequestContext(caller: .root, checks: .hostKernel, readOnly: false)

    /// Whether the engine decides what the caller may do (else a kernel holding the caller's
    /// full credentials has decided).
    var enforcePermissions: Bool { checks == .server }

    /// Whether the engine makes the implicit changes of a write (set-id clearing) itself.
    var clearsSetIDOnWrite: Bool { checks != .hostKernel && !caller.privileged }

    func requireWritable() throws(Errno) {
        if readOnly { throw Errno.readOnlyFileSystem }
    }
}

/// access(2) bits.
public struct AccessMask: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let execute = AccessMask(rawValue: 1)
    public static let write = AccessMask(rawValue: 2)
    public static let read = AccessMask(rawValue: 4)
}

let setUIDBit: UInt32 = 0o4000
let setGIDBit: UInt32 = 0o2000
let stickyBit: UInt32 = 0o1000

extension Volume {
    /// The classic owner/group/other check, with root passing as CAP_DAC_OVERRIDE allows
    /// (execute only where some execute bit is set, or on directories).
    func permits(_ r: InodeRecord, _ ctx: RequestContext, _ mask: AccessMask) -> Bool {
        guard ctx.enforcePermissions else { return true }
        if ctx.caller.privileged {
            if mask.contains(.execute) && !r.isDirectory && r.mode & 0o111 == 0 { return false }
            return true
        }
        let bits: UInt32
        if ctx.caller.uid == r.uid {
            bits = (r.mode >> 6) & 7
        } else if ctx.caller.credentials.isMember(of: r.gid) {
            bits = (r.mode >> 3) & 7
        } else {
            bits = r.mode & 7
        }
        return bits & mask.rawValue == mask.rawValue
    }

    func requirePermission(_ r: InodeRecord, _ ctx: RequestContext, _ mask: AccessMask) throws(Errno) {
        if !permits(r, ctx, mask) { throw Errno.permissionDenied }
    }

    /// Removing or renaming `victim` out of `dir` needs write+search on the directory, and in a
    /// sticky directory ownership of the victim or the directory.
    func requireCanRemove(from dir: InodeRecord, victim: InodeRecord, _ ctx: RequestContext) throws(Errno) {
        try requirePermission(dir, ctx, [.write, .execute])
        if ctx.enforcePermissions, dir.mode & stickyBit != 0, !ctx.caller.privileged,
           ctx.caller.uid != victim.uid, ctx.caller.uid != dir.uid {
            throw Errno.notPermitted
        }
    }
}
