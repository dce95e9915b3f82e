#if canImport(Glibc)
import Glibc
#endif

/// Creates and removes 9pfs device nodes in xenstore the way libxl does
/// (`libxl__device_generic_add` / `libxl__initiate_device_generic_remove`), so that a
/// backend running in a daemon can serve a domain that xl created without a `p9` line.
public enum XenToolstack {
    public struct DeviceSpec: Sendable, Equatable {
        /// Written to the backend's `path` node: the VM the daemon serves.
        public var vmName: String
        public var domid: UInt32
        /// nil picks the lowest free index.
        public var devid: UInt32?
        /// The mount tag (frontend and backend `tag`).
        public var tag: String
        public var backendDomid: UInt32 = 0
        public var kind: String = "9pfs"
        public var securityModel: String = "none"

        public init(vmName: String, domid: UInt32, devid: UInt32? = nil, tag: String, backendDomid: UInt32 = 0) {
            self.vmName = vmName
            self.domid = domid
            self.devid = devid
            self.tag = tag
            self.backendDomid = backendDomid
        }
    }

    public struct Paths: Sendable, Equatable {
        public var backend: String
        public var frontend: String
        public var libxl: String

        public init(domid: UInt32, devid: UInt32, backendDomid: UInt32, kind: String = "9pfs") {
            backend = "/local/domain/\(backendDomid)/backend/\(kind)/\(domid)/\(devid)"
            frontend = "/local/domain/\(domid)/device/\(kind)/\(devid)"
            libxl = "/libxl/\(domid)/device/\(kind)/\(devid)"
        }
    }

    public enum Failure: Error, Sendable, Equatable, CustomStringConvertible {
        case invalidArgument(String)
        case noSuchDomain(UInt32)
        case deviceExists(String)
        case noSuchDevice(String)

        public var description: String {
            switch self {
            case .invalidArgument(let text): text
            case .noSuchDomain(let domid): "domain \(domid) does not exist (no /local/domain/\(domid) in xenstore)"
            case .deviceExists(let path): "a device exists already at \(path)"
            case .noSuchDevice(let text): text
            }
        }
    }

    /// A mount tag a guest can pass to mount(8): 1-63 bytes of [A-Za-z0-9._-].
    public static func validateTag(_ tag: String) throws {
        guard !tag.isEmpty, tag.utf8.count <= 63,
              tag.utf8.allSatisfy({ $0.isASCIIAlnum || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }) else {
            throw Failure.invalidArgument("tag \"\(tag)\" must be 1-63 characters of A-Z a-z 0-9 . _ -")
        }
    }

    /// A VM name as it appears in the `path` node: 1-255 bytes, no '/', no control characters.
    public static func validateVMName(_ name: String) throws {
        guard !name.isEmpty, name.utf8.count <= 255,
              name.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x7f && $0 != UInt8(ascii: "/") }) else {
            throw Failure.invalidArgument("VM name \"\(name)\" must be 1-255 printable characters without '/'")
        }
    }

    static func validateDomids(domid: UInt32, backendDomid: UInt32) throws {
        guard domid < xenFirstReservedDomid, backendDomid < xenFirstReservedDomid else {
            throw Failure.invalidArgument("domain ids must be below \(xenFirstReservedDomid)")
        }
        guard domid != backendDomid else {
            throw Failure.invalidArgument("the frontend domain \(domid) cannot be its own backend")
        }
    }

    /// Writes the device's backend, frontend and libxl nodes in one transaction with
    /// libxl's permissions: backend directory owned by the backend domain and readable by
    /// the guest, frontend directory owned by the guest and readable by the backend.
    /// Returns the device's paths.
    @discardableResult
    public static func attach(_ spec: DeviceSpec, store: any XenStoreAccess) throws -> (devid: UInt32, paths: Paths) {
        try validateVMName(spec.vmName)
        try validateTag(spec.tag)
        try validateDomids(domid: spec.domid, backendDomid: spec.backendDomid)
        let result: (UInt32, Paths)? = try store.withTransaction { t in
            guard try store.exists("/local/domain/\(spec.domid)", in: t) || store.list("/local/domain/\(spec.domid)", in: t) != nil else {
                throw Failure.noSuchDomain(spec.domid)
            }
            let devid = try spec.devid ?? lowestFreeDevid(spec, store: store, transaction: t)
            let paths = Paths(domid: spec.domid, devid: devid, backendDomid: spec.backendDomid, kind: spec.kind)
            for path in [paths.backend, paths.frontend] where try store.list(path, in: t) != nil {
                throw Failure.deviceExists(path)
            }
            let frontendPerms = [XenStorePermission(domid: spec.domid, access: .none),
                                 XenStorePermission(domid: spec.backendDomid, access: .read)]
            let backendPerms = [XenStorePermission(domid: spec.backendDomid, access: .none),
                                XenStorePermission(domid: spec.domid, access: .read)]
            let backendEntries: [(String, String)] = [
                ("frontend-id", String(spec.domid)),
                ("online", "1"),
                ("state", XenbusState.initialising.node),
                ("path", spec.vmName),
                ("security_model", spec.securityModel),
                ("tag", spec.tag),
            ]
            let frontendEntries: [(String, String)] = [
                ("backend-id", String(spec.backendDomid)),
                ("state", XenbusState.initialising.node),
                ("tag", spec.tag),
            ]

            // libxl's own copy, which `xl destroy` walks to remove the device.
            try store.remove(paths.libxl, in: t)
            try store.write("\(paths.libxl)/frontend", paths.frontend, in: t)
            try store.write("\(paths.libxl)/backend", paths.backend, in: t)
            for (key, value) in backendEntries { try store.write("\(paths.libxl)/\(key)", value, in: t) }

            try store.remove(paths.frontend, in: t)
            try store.makeDirectory(paths.frontend, in: t)
            try store.setPermissions(paths.frontend, frontendPerms, in: t)
            try store.write("\(paths.frontend)/backend", paths.backend, in: t)
            for (key, value) in frontendEntries {
                try store.write("\(paths.frontend)/\(key)", value, in: t)
                try store.setPermissions("\(paths.frontend)/\(key)", frontendPerms, in: t)
            }

            try store.remove(paths.backend, in: t)
            try store.makeDirectory(paths.backend, in: t)
            try store.setPermissions(paths.backend, backendPerms, in: t)
            try store.write("\(paths.backend)/frontend", paths.frontend, in: t)
            for (key, value) in backendEntries { try store.write("\(paths.backend)/\(key)", value, in: t) }
            return (devid, paths)
        }
        guard let result else { throw Failure.invalidArgument("attach aborted") }
        return result
    }

    static func lowestFreeDevid(_ spec: DeviceSpec, store: any XenStoreAccess, transaction t: XenStoreTransaction) throws -> UInt32 {
        var used: Set<UInt32> = []
        let parents = ["/local/domain/\(spec.domid)/device/\(spec.kind)",
                       "/local/domain/\(spec.backendDomid)/backend/\(spec.kind)/\(spec.domid)",
                       "/libxl/\(spec.domid)/device/\(spec.kind)"]
        for parent in parents {
            for name in try store.list(parent, in: t) ?? [] {
                if let devid = try? XenValue.parseUInt32(name, name: "devid") { used.insert(devid) }
            }
        }
        var devid: UInt32 = 0
        while used.contains(devid) { devid += 1 }
        return devid
    }

    /// The devices of `domid` served by `backendDomid` whose backend `path` names `vmName`.
    public static func devices(of vmName: String, domid: UInt32, backendDomid: UInt32 = 0, kind: String = "9pfs",
                               store: any XenStoreAccess) throws -> [UInt32] {
        let parent = "/local/domain/\(backendDomid)/backend/\(kind)/\(domid)"
        var result: [UInt32] = []
        for name in try store.list(parent, in: .none) ?? [] {
            guard let devid = try? XenValue.parseUInt32(name, name: "devid") else { continue }
            if try store.readString("\(parent)/\(name)/path") == vmName { result.append(devid) }
        }
        return result.sorted()
    }

    public enum DetachOutcome: Sendable, Equatable {
        /// The backend acknowledged with Closed before the nodes were removed.
        case closedByBackend
        /// The domain is gone, or `force` was given: the nodes were removed at once.
        case removedWithoutHandshake
        /// The backend did not reach Closed in time; the nodes were removed anyway.
        case timedOut
    }

    /// Asks the backend to close the device (libxl: `online`=0, `state`=5), waits up to
    /// `timeout` for the backend's Closed while the domain is alive, then removes the
    /// backend, frontend and libxl nodes (and parents left empty).
    public static func detach(domid: UInt32, devid: UInt32, backendDomid: UInt32 = 0, kind: String = "9pfs",
                              timeout: Duration = .seconds(10), force: Bool = false,
                              store: any XenStoreAccess) throws -> DetachOutcome {
        try validateDomids(domid: domid, backendDomid: backendDomid)
        let paths = Paths(domid: domid, devid: devid, backendDomid: backendDomid, kind: kind)
        guard try store.list(paths.backend, in: .none) != nil || store.list(paths.frontend, in: .none) != nil else {
            throw Failure.noSuchDevice("no \(kind) device \(devid) for domain \(domid) at \(paths.backend)")
        }
        var outcome = DetachOutcome.removedWithoutHandshake
        if !force && store.isDomainIntroduced(domid) {
            let asked: Bool? = try store.withTransaction { t in
                guard let state = try store.read("\(paths.backend)/state", in: t) else { return false }
                try store.write("\(paths.backend)/online", "0", in: t)
                if XenbusState(node: state) != .closed {
                    try store.write("\(paths.backend)/state", XenbusState.closing.node, in: t)
                }
                return true
            }
            if asked == true {
                outcome = .timedOut
                let deadline = ContinuousClock.now + timeout
                while ContinuousClock.now < deadline {
                    guard let state = try store.read("\(paths.backend)/state", in: .none) else { break }
                    if XenbusState(node: state) == .closed {
                        outcome = .closedByBackend
                        break
                    }
                    if !store.isDomainIntroduced(domid) {
                        outcome = .removedWithoutHandshake
                        break
                    }
                    var pause = timespec(tv_sec: 0, tv_nsec: 50_000_000)
                    nanosleep(&pause, nil)
                }
            }
        }
        _ = try store.withTransaction { t -> Bool? in
            for path in [paths.backend, paths.frontend, paths.libxl] {
                try store.remove(path, in: t)
            }
            for parent in ["/local/domain/\(backendDomid)/backend/\(kind)/\(domid)",
                           "/libxl/\(domid)/device/\(kind)"] {
                if let children = try store.list(parent, in: t), children.isEmpty {
                    try store.remove(parent, in: t)
                }
            }
            return true
        }
        return outcome
    }
}

extension UInt8 {
    fileprivate var isASCIIAlnum: Bool {
        (self >= UInt8(ascii: "a") && self <= UInt8(ascii: "z")) || (self >= UInt8(ascii: "A") && self <= UInt8(ascii: "Z"))
            || (self >= UInt8(ascii: "0") && self <= UInt8(ascii: "9"))
    }
}
