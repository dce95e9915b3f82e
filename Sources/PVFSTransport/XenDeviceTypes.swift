import PVFS9PCodec

/// The xenbus device states (xen/io/xenbus.h) both ends publish in their `state` node.
public enum XenbusState: UInt32, Sendable, CustomStringConvertible {
    case unknown = 0
    case initialising = 1
    case initWait = 2
    case initialised = 3
    case connected = 4
    case closing = 5
    case closed = 6
    case reconfiguring = 7
    case reconfigured = 8

    /// Parses a `state` node strictly; anything but a canonical decimal 0...8 is nil.
    public init?(node bytes: [UInt8]) {
        guard let value = try? XenValue.parseUInt32(bytes, name: "state"),
              let state = XenbusState(rawValue: value) else { return nil }
        self = state
    }

    public var node: String { String(rawValue) }

    public var description: String {
        switch self {
        case .unknown: "Unknown"
        case .initialising: "Initialising"
        case .initWait: "InitWait"
        case .initialised: "Initialised"
        case .connected: "Connected"
        case .closing: "Closing"
        case .closed: "Closed"
        case .reconfiguring: "Reconfiguring"
        case .reconfigured: "Reconfigured"
        }
    }
}

/// A PV device: the frontend domain and the device index within its kind.
public struct XenDeviceAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var domid: UInt32
    public var devid: UInt32

    public init(domid: UInt32, devid: UInt32) {
        self.domid = domid
        self.devid = devid
    }

    public static func < (lhs: XenDeviceAddress, rhs: XenDeviceAddress) -> Bool {
        (lhs.domid, lhs.devid) < (rhs.domid, rhs.devid)
    }

    public var description: String { "\(domid)/\(devid)" }
}

/// Domain ids at and above DOMID_FIRST_RESERVED (0x7FF0) name no ordinary domain.
public let xenFirstReservedDomid: UInt32 = 0x7FF0

/// What the backend knows about a frontend when it asks the daemon for a 9P handler.
/// Only `domid`, `devid` and the backend-directory nodes are under dom0's control; the
/// frontend directory is writable by the guest.
public struct XenFrontendInfo: Sendable, Equatable, CustomStringConvertible {
    /// The frontend domain (from the backend path, which only dom0 can write).
    public var domid: UInt32
    public var devid: UInt32
    /// `/local/domain/<domid>/name`, written by the toolstack (read-only to the guest).
    public var domainName: String?
    /// The backend's `tag` node (written by `pvfs-vm attach`; dom0-owned).
    public var tag: String?
    /// The backend's `path` node (the VM name for pvfs devices; dom0-owned).
    public var path: String?
    /// The backend's `security_model` node (dom0-owned).
    public var securityModel: String?
    /// The frontend's `tag` node. The guest can rewrite it: never decide access on it.
    public var frontendTag: String?
    public var backendPath: String
    public var frontendPath: String

    public init(domid: UInt32, devid: UInt32, domainName: String? = nil, tag: String? = nil, path: String? = nil,
                securityModel: String? = nil, frontendTag: String? = nil, backendPath: String, frontendPath: String) {
        self.domid = domid
        self.devid = devid
        self.domainName = domainName
        self.tag = tag
        self.path = path
        self.securityModel = securityModel
        self.frontendTag = frontendTag
        self.backendPath = backendPath
        self.frontendPath = frontendPath
    }

    public var description: String {
        "domain \(domid) (\(domainName ?? "unnamed")) device \(devid) tag \(tag ?? frontendTag ?? "-") path \(path ?? "-")"
    }

    /// The device as its 9P handler sees the other end: only what dom0 wrote (never the
    /// frontend's own nodes). Its connection ID is unique per device: domid << 32 | devid.
    public var peer: NinePPeer {
        NinePPeer(.xen(domainID: domid, deviceID: devid, domainName: domainName, vm: path, tag: tag),
                  connectionID: UInt64(domid) << 32 | UInt64(devid))
    }
}

/// One ring as the frontend announced it in xenstore.
public struct XenRingAnnouncement: Sendable, Equatable {
    public var index: Int
    /// `ring-ref<N>`: the grant reference of the interface page.
    public var ref: UInt32
    /// `event-channel-<N>`: the frontend's unbound event channel port.
    public var port: UInt32

    public init(index: Int, ref: UInt32, port: UInt32) {
        self.index = index
        self.ref = ref
        self.port = port
    }
}

/// Maps the announced rings, binds their event channels and starts serving them.
/// The real one uses gntdev and evtchn; tests use a fake.
public protocol XenDeviceConnector: AnyObject {
    func connect(frontend: XenFrontendInfo, rings: [XenRingAnnouncement], maxOrder: UInt32,
                 handler: any NineMessageHandler,
                 onRingFailure: @escaping @Sendable (Int, XenError) -> Void) throws -> any XenDeviceConnection
}

/// The resources of one connected device.
public protocol XenDeviceConnection: AnyObject {
    /// The ring order each ring uses.
    var ringOrders: [UInt32] { get }
    /// Stops every ring's thread from touching the rings, unbinds the event channels and
    /// unmaps the pages. Idempotent; nothing touches the frontend's memory once it returns. It
    /// does not wait for requests the 9P handler is running (see `join`).
    func disconnect()
    /// After `disconnect()`: waits until the rings' threads have ended (a thread may still have
    /// been handing a request to the 9P handler).
    func join()
}

extension XenDeviceConnection {
    public func join() {}
}

/// A snapshot of one device, for status reports.
public struct XenDeviceStatus: Sendable, Equatable, CustomStringConvertible {
    public enum Phase: String, Sendable {
        case waitingForFrontend = "waiting"
        case connected
        case lostSession = "lost-session"
        case closing
        case closed
        case dead
    }
    public var address: XenDeviceAddress
    public var phase: Phase
    public var frontendState: XenbusState?
    public var domainName: String?
    public var ringOrders: [UInt32]
    public var failedRings: [Int]
    public var error: String?

    public var description: String {
        var text = "device \(address) \(phase.rawValue)"
        if let domainName { text += " domain=\(domainName)" }
        if let frontendState { text += " frontend=\(frontendState)" }
        if !ringOrders.isEmpty { text += " rings=\(ringOrders.count) orders=\(ringOrders.map(String.init).joined(separator: ","))" }
        if !failedRings.isEmpty { text += " failed-rings=\(failedRings.map(String.init).joined(separator: ","))" }
        if let error { text += " error=\"\(error)\"" }
        return text
    }
}
