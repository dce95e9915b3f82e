import PVFSSystem

/// How a VM's uids and gids relate to its clients' (configured per VM, `pvfs-vm set-access`).
///
/// The engine stores ownership in the VM's own id space (what the guest sees). Squashing acts on
/// who a guest request runs as; a shift maps the VM's ids into a host range for the host-side view.
public enum IdMapping: Sendable, Equatable, Codable, CustomStringConvertible {
    case identity
    /// Guest root (uid 0) acts as the anonymous ids and holds no privilege.
    case rootSquash(uid: UInt32, gid: UInt32)
    /// Every guest user acts as the anonymous ids.
    case allSquash(uid: UInt32, gid: UInt32)
    /// VM ids 0..<count appear on the host as base..<base+count.
    case shift(base: UInt32, count: UInt32)

    public static let overflowId: UInt32 = 65534

    public var description: String {
        switch self {
        case .identity: "none"
        case .rootSquash(let uid, let gid): "root-squash(\(uid):\(gid))"
        case .allSquash(let uid, let gid): "all-squash(\(uid):\(gid))"
        case .shift(let base, let count): "shift(\(base)+\(count))"
        }
    }
}

/// The side of a view a session is on: a guest (ids as the VM knows them) or the host's
/// file-level access (ids shifted into the VM's host range).
public enum ViewSide: Sendable, Equatable {
    case guest
    case host
}

/// Who decides whether a caller may do something within a VM (docs/access.md, "Who decides").
///
/// Whatever the choice, the engine keeps the VM's boundary and policy: confinement, read-only,
/// squashing, id shifts and quotas are never left to a client.
public enum PermissionChecks: Sendable, Equatable {
    /// The engine checks every request against the caller's credentials as the server knows
    /// them: squashed guests, whose kernel's checks count for nothing.
    case server
    /// The guest's kernel, which holds the caller's full credentials (every supplementary group,
    /// capabilities), has checked the request already: 9P2000.L carries none of that, so the
    /// engine denies nothing on the caller's behalf. It still makes the changes a filesystem
    /// makes by itself and that Linux's 9p client leaves to the server (a write clears set-id bits).
    case guestKernel
    /// A host kernel has checked (FUSE `default_permissions`) and sends every change explicitly,
    /// set-id clearing included: the engine checks nothing and changes nothing implicitly.
    case hostKernel
}

/// Everything that shapes what one client session may do with a VM.
public struct SessionPolicy: Sendable, Equatable {
    public var side: ViewSide
    /// The session may not change anything (EROFS).
    public var readOnly: Bool
    public var idMapping: IdMapping
    /// Who checks the caller's permissions within the VM.
    public var permissionChecks: PermissionChecks

    public init(side: ViewSide, readOnly: Bool = false, idMapping: IdMapping = .identity,
                permissionChecks: PermissionChecks = .server) {
        self.side = side
        self.readOnly = readOnly
        self.idMapping = idMapping
        self.permissionChecks = permissionChecks
    }

    /// Whether the engine itself decides what the caller may do.
    public var enforcePermissions: Bool { permissionChecks == .server }

    /// The caller as the VM sees it, and whether it holds root's privileges inside the VM.
    func vmCaller(_ credentials: Credentials) -> Caller {
        switch (side, idMapping) {
        case (_, .identity):
            return Caller(credentials: credentials, privileged: credentials.uid == 0)
        case (.guest, .rootSquash(let uid, let gid)):
            if credentials.uid == 0 {
                return Caller(credentials: Credentials(uid: uid, gid: gid, groups: []), privileged: false)
            }
            let gid = credentials.gid == 0 ? gid : credentials.gid
            return Caller(credentials: Credentials(uid: credentials.uid, gid: gid, groups: credentials.groups.filter { $0 != 0 }), privileged: false)
        case (.guest, .allSquash(let uid, let gid)):
            return Caller(credentials: Credentials(uid: uid, gid: gid, groups: []), privileged: false)
        case (.guest, .shift):
            return Caller(credentials: credentials, privileged: credentials.uid == 0)
        case (.host, .shift):
            // Host root administers the VM as its root; other host ids count only inside the range.
            let uid = idToVM(credentials.uid)
            let gid = idToVM(credentials.gid)
            let groups = credentials.groups.map(idToVM)
            return Caller(credentials: Credentials(uid: uid, gid: gid, groups: groups), privileged: credentials.uid == 0)
        case (.host, _):
            return Caller(credentials: credentials, privileged: credentials.uid == 0)
        }
    }

    /// An id a client names (chown) translated into the VM's id space.
    func idToVM(_ id: UInt32) -> UInt32 {
        guard side == .host, case .shift(let base, let count) = idMapping else { return id }
        if id >= base && UInt64(id) < UInt64(base) + UInt64(count) { return id - base }
        if id == 0 { return 0 }
        return IdMapping.overflowId
    }

    /// An id of the VM translated for this session's client.
    func idFromVM(_ id: UInt32) -> UInt32 {
        guard side == .host, case .shift(let base, let count) = idMapping else { return id }
        guard id < count, UInt64(base) + UInt64(id) <= UInt64(UInt32.max) else { return IdMapping.overflowId }
        return base + id
    }

    func present(_ attributes: Attributes) -> Attributes {
        guard side == .host, case .shift = idMapping else { return attributes }
        var out = attributes
        out.uid = idFromVM(attributes.uid)
        out.gid = idFromVM(attributes.gid)
        return out
    }
}

/// A caller in the VM's id space.
struct Caller: Sendable {
    var credentials: Credentials
    /// Root inside the VM: passes permission checks as CAP_DAC_OVERRIDE / CAP_FOWNER would.
    var privileged: Bool

    var uid: UInt32 { credentials.uid }
    var gid: UInt32 { credentials.gid }

    static let root = Caller(credentials: .root, privileged: true)
}
