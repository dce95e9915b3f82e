import Foundation
import PVFSStore
import PVFSSystem
import SystemPackage

/// Who is on the other end of a connection, as its transport established it. Nothing a client
/// sends can change this; only the transport fills it in.
public enum ClientIdentity: Sendable, Equatable, CustomStringConvertible {
    /// A Xen domU reaching us through its 9pfs device; `name` is read from xenstore by dom0.
    case xen(domid: UInt32, name: String?)
    /// A TCP peer (address without port) on a named listener.
    case tcp(address: String, listener: String)
    /// A Unix-socket peer (SO_PEERCRED) on a named listener.
    case unix(uid: UInt32, pid: Int32, listener: String)
    /// A vhost-user-fs front-end (QEMU) on the socket pvfsd listens on for one VM.
    case vhostUser(socket: String)

    public var description: String {
        switch self {
        case .xen(let domid, let name): "xen domain \(domid)\(name.map { " (\($0))" } ?? "")"
        case .tcp(let address, let listener): "tcp \(address) on \(listener)"
        case .unix(let uid, let pid, let listener): "unix uid \(uid) pid \(pid) on \(listener)"
        case .vhostUser(let socket): "vhost-user on \(socket)"
        }
    }
}

/// Decides which VM a client may reach and with which session policy, from the catalog's
/// bindings (docs/access.md). Pure logic over a snapshot, so it is easy to test and to reload.
public struct AccessRules: Sendable {
    public struct VMEntry: Sendable {
        public var name: String
        public var settings: VMAccessSettings
        public var bindings: [VMBinding]
    }

    public var vms: [String: VMEntry]

    public init(vms: [String: VMEntry]) {
        self.vms = vms
    }

    /// Reads every ready VM's settings and bindings.
    public static func load(from store: Store) throws -> AccessRules {
        let bindings = try store.bindings()
        var vms: [String: VMEntry] = [:]
        for vm in try store.listVMs() {
            vms[vm.name] = VMEntry(name: vm.name, settings: try store.accessSettings(vm: vm.name),
                                   bindings: bindings.filter { $0.vm == vm.name })
        }
        return AccessRules(vms: vms)
    }

    /// Specificity order: the most specific matching binding decides access and squash.
    private static let precedence = ["vhost-user", "xen-domid", "xen-name", "unix-uid", "listener", "tcp", "any"]

    static func matches(_ binding: VMBinding, _ identity: ClientIdentity) -> Bool {
        switch (binding.kind, identity) {
        case ("xen-domid", .xen(let domid, _)): return UInt32(binding.value) == domid
        case ("xen-name", .xen(_, let name)): return name != nil && name == binding.value
        case ("listener", .tcp(_, let listener)), ("listener", .unix(_, _, let listener)): return binding.value == listener
        case ("tcp", .tcp(let address, _)): return addressMatches(address, binding.value)
        case ("unix-uid", .unix(let uid, _, _)): return UInt32(binding.value) == uid
        case ("vhost-user", .vhostUser(let socket)): return binding.value == socket
        case ("any", _): return true
        default: return false
        }
    }

    /// IPv4/IPv6 address against "ADDR" or "ADDR/PREFIX".
    static func addressMatches(_ address: String, _ pattern: String) -> Bool {
        let parts = pattern.split(separator: "/", maxSplits: 1).map(String.init)
        guard let network = ipBytes(parts[0]), let peer = ipBytes(address), network.count == peer.count else { return false }
        let prefix = parts.count == 2 ? Int(parts[1]) ?? -1 : network.count * 8
        guard prefix >= 0, prefix <= network.count * 8 else { return false }
        for bit in 0..<prefix {
            let mask = UInt8(0x80) >> UInt8(bit % 8)
            if network[bit / 8] & mask != peer[bit / 8] & mask { return false }
        }
        return true
    }

    public static func ipBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }

    /// The VM a client reaches with `aname` (empty: the only VM bound to it) and its policy.
    /// A VM the client may not reach is reported exactly like one that does not exist, so names
    /// do not leak across tenants.
    public func resolve(aname: String, identity: ClientIdentity) throws(Errno) -> (vm: String, policy: SessionPolicy) {
        let candidates: [VMEntry]
        if aname.isEmpty || aname == "/" {
            candidates = vms.values.filter { entry in entry.bindings.contains { $0.kind != "any" && Self.matches($0, identity) } }
            guard candidates.count == 1 else { throw Errno.noSuchFileOrDirectory }
        } else {
            let name = aname.hasPrefix("/") ? String(aname.dropFirst()) : aname
            guard let entry = vms[name] else { throw Errno.noSuchFileOrDirectory }
            candidates = [entry]
        }
        let entry = candidates[0]
        let matching = entry.bindings.filter { Self.matches($0, identity) }
        guard let best = matching.min(by: { (Self.precedence.firstIndex(of: $0.kind) ?? 99) < (Self.precedence.firstIndex(of: $1.kind) ?? 99) }) else {
            throw Errno.noSuchFileOrDirectory
        }
        return (entry.name, Self.policy(entry.settings, binding: best, side: .guest))
    }

    /// The session policy of a VM's settings narrowed by a binding.
    public static func policy(_ settings: VMAccessSettings, binding: VMBinding?, side: ViewSide) -> SessionPolicy {
        var mapping = idMapping(settings)
        if let binding, side == .guest {
            switch binding.squash {
            case "none": if case .shift = mapping {} else { mapping = .identity }
            case "root": if case .shift = mapping {} else { mapping = .rootSquash(uid: settings.anonymousUID, gid: settings.anonymousGID) }
            case "all": mapping = .allSquash(uid: settings.anonymousUID, gid: settings.anonymousGID)
            default: break
            }
        }
        let readOnly = settings.readOnly || binding?.access == "ro"
        return SessionPolicy(side: side, readOnly: readOnly, idMapping: mapping,
                             permissionChecks: permissionChecks(side: side, mapping: mapping))
    }

    /// Who checks a session's callers (docs/access.md, "Who decides"). A guest whose users keep
    /// their ids has a kernel that holds their full credentials and has checked every request
    /// already; 9P2000.L carries a uid, not the groups, so the server could only deny what that
    /// kernel allowed (and guest root may attach as any uid anyway). A squashed guest's kernel
    /// counts for nothing: the server checks, with the credentials squashing leaves.
    public static func permissionChecks(side: ViewSide, mapping: IdMapping) -> PermissionChecks {
        guard side == .guest else { return .server }
        switch mapping {
        case .identity, .shift: return .guestKernel
        case .rootSquash, .allSquash: return .server
        }
    }

    public static func idMapping(_ settings: VMAccessSettings) -> IdMapping {
        switch settings.idMapping {
        case "root-squash": .rootSquash(uid: settings.anonymousUID, gid: settings.anonymousGID)
        case "all-squash": .allSquash(uid: settings.anonymousUID, gid: settings.anonymousGID)
        case "shift": .shift(base: settings.shiftBase, count: settings.shiftCount)
        default: .identity
        }
    }
}
