import Logging
import PVFS9PCodec

/// Settings of the Xen 9pfs backend.
public struct XenBackendConfiguration: Sendable {
    /// Backend directory kind: `/local/domain/<backend>/backend/<kind>/<domid>/<devid>`.
    /// "9pfs" is what libxl 4.17 and QEMU use.
    public var backendKind: String = "9pfs"
    /// Frontend directory kind: `/local/domain/<domid>/device/<kind>/<devid>`.
    public var frontendKind: String = "9pfs"
    /// Published as `max-rings`. Linux's frontend needs at least 2 and uses exactly 2.
    public var maxRings: UInt32 = 8
    /// Published as `max-ring-page-order` (1...9). Linux 6.1 refuses a backend offering
    /// less than 9 and then uses 9: 512 data pages, 1 MiB each way per ring.
    public var maxRingPageOrder: UInt32 = 9
    public var limits = XenRingLimits()
    /// Where rings report their use per Xen domain (metrics); nil: nowhere.
    public var admission: TenantAdmission?
    /// How long a stopping backend waits for connected frontends to acknowledge Closing.
    public var shutdownGrace: Duration = .seconds(2)
    /// The backend's own domain id; nil reads it from xenstore (`domid`).
    public var backendDomid: UInt32?

    public init() {}

    func validated() throws -> XenBackendConfiguration {
        guard maxRings >= 1, maxRings <= 64 else {
            throw XenError.invalid("max-rings", "\(maxRings) is outside 1...64")
        }
        guard maxRingPageOrder >= 1, maxRingPageOrder <= XenRingGeometry.maximumOrder else {
            throw XenError.invalid("max-ring-page-order", "\(maxRingPageOrder) is outside 1...\(XenRingGeometry.maximumOrder)")
        }
        for kind in [backendKind, frontendKind] {
            guard !kind.isEmpty, !kind.contains("/") else { throw XenError.invalid("device kind", "\"\(kind)\"") }
        }
        return self
    }
}

/// Something for the backend's event loop, posted from other threads.
public enum XenBackendEvent: Sendable {
    case ringFailed(XenDeviceAddress, generation: UInt64, ring: Int, XenError)
    /// A torn-down device's 9P handler has closed and its ring threads have ended.
    case released(XenDeviceAddress, token: UInt64)
}

/// The xenstore side of the Xen 9pfs backend: discovers devices under the backend
/// directory, runs the xenbus handshake of each one, validates everything the frontend
/// wrote, and tears devices down. Single-threaded: `XenBackend` drives it from its event
/// loop; tests drive it with an in-memory store and a fake connector.
///
/// Handshake per device (backend view):
/// 1. Toolstack creates the backend directory with `state` = 1 (Initialising).
/// 2. We publish `versions`=1, `max-rings`, `max-ring-page-order` and `state` = 2
///    (InitWait) in one transaction.
/// 3. Frontend writes `version`, `num-rings`, `ring-ref<N>`, `event-channel-<N>`, then
///    `state` = 3 (Initialised). We validate every value, ask the daemon for a 9P handler,
///    map the rings, bind the event channels and write `state` = 4 (Connected).
/// 4. Frontend `state` = 5 (Closing) → we disconnect and write 5; frontend 6 (Closed) →
///    we write 6. Frontend back to 1 → a fresh handshake.
/// Any invalid value or refusal: `error` node + `state` = 6, and the frontend must start
/// over (state 1) to try again.
public final class XenBackendCore {
    public let configuration: XenBackendConfiguration
    public let backendDomid: UInt32
    private let store: any XenStoreAccess
    private let connector: any XenDeviceConnector
    private let handlerFactory: NineHandlerFactory
    private let post: @Sendable (XenBackendEvent) -> Void
    private let logger: Logger

    public static let backendWatchToken = "pvfs-backend"
    public static let releaseWatchToken = "pvfs-release"
    static let frontendTokenPrefix = "pvfs-fe/"

    private var devices: [XenDeviceAddress: Device] = [:]
    /// Torn-down connections still finishing their requests, per device, each on a thread of
    /// its own: one slow device must not hold up the xenstore handling of the others. A device
    /// connects again only once its previous connection is released.
    private var releasing: [XenDeviceAddress: [UInt64: XenThread]] = [:]
    private var releaseCounter: UInt64 = 0
    private var generationCounter: UInt64 = 0
    private var started = false
    private var stopping = false

    /// `/local/domain/<backend>/backend/<kind>`
    public var root: String { "/local/domain/\(backendDomid)/backend/\(configuration.backendKind)" }

    public init(configuration: XenBackendConfiguration, backendDomid: UInt32, store: any XenStoreAccess,
                connector: any XenDeviceConnector, logger: Logger,
                post: @escaping @Sendable (XenBackendEvent) -> Void,
                handlerFactory: @escaping NineHandlerFactory) throws {
        self.configuration = try configuration.validated()
        self.backendDomid = backendDomid
        self.store = store
        self.connector = connector
        self.logger = logger
        self.post = post
        self.handlerFactory = handlerFactory
    }

    // MARK: - Device record

    fileprivate enum Phase: Equatable {
        /// Registered, handshake not begun (toolstack still writing, or adoption pending).
        case discovered
        /// We wrote InitWait; waiting for the frontend's Initialised.
        case initWait
        /// Rings mapped and served.
        case connected
        /// We (or the toolstack) wrote Closing; waiting for the frontend's Closed.
        case closing
        /// Closed; a frontend going back to Initialising starts over.
        case closed
        /// The toolstack wrote something we cannot serve (bad frontend path); nothing is done.
        case refused
        /// The frontend domain died: nothing more happens until the directory is removed.
        case dead
    }

    fileprivate final class Device {
        let address: XenDeviceAddress
        let backendPath: String
        let frontendPath: String
        let watchToken: String
        var phase: Phase = .discovered
        var lastWrittenState: XenbusState?
        var frontendState: XenbusState?
        var connection: (any XenDeviceConnection)?
        var handler: (any NineMessageHandler)?
        var generation: UInt64 = 0
        var lostSession = false
        var failedRings: Set<Int> = []
        var error: String?
        var domainName: String?
        var watching = false

        init(address: XenDeviceAddress, backendPath: String, frontendPath: String) {
            self.address = address
            self.backendPath = backendPath
            self.frontendPath = frontendPath
            self.watchToken = XenBackendCore.frontendTokenPrefix + "\(address.domid)/\(address.devid)"
        }
    }

    // MARK: - Entry points

    /// Registers the watches and adopts what a previous backend instance left behind.
    public func start() throws {
        precondition(!started)
        started = true
        try store.watch(root, token: XenBackendCore.backendWatchToken)
        try store.watch("@releaseDomain", token: XenBackendCore.releaseWatchToken)
        logger.notice("xen 9pfs backend watching \(root) (max-rings \(configuration.maxRings), max-ring-page-order \(configuration.maxRingPageOrder))")
        rescan()
    }

    /// Dispatches one watch event.
    public func handleWatch(path: String, token: String) {
        switch token {
        case XenBackendCore.backendWatchToken:
            backendPathChanged(path)
        case XenBackendCore.releaseWatchToken:
            checkDomains()
        default:
            guard token.hasPrefix(XenBackendCore.frontendTokenPrefix),
                  let address = parseToken(token), let device = devices[address] else { return }
            frontendChanged(device)
        }
    }

    public func handle(_ event: XenBackendEvent) {
        switch event {
        case let .ringFailed(address, generation, ring, error):
            guard let device = devices[address], device.generation == generation, device.connection != nil else { return }
            device.failedRings.insert(ring)
            let message = "ring \(ring) stopped: \(error)"
            logger.warning("device \(address): \(message); the other rings keep serving")
            device.error = message
            _ = guardedWrite(device, [("error", message)])
        case let .released(address, token):
            guard let thread = releasing[address]?.removeValue(forKey: token) else { return }
            thread.join()
            if releasing[address]?.isEmpty == true { releasing[address] = nil }
            logger.info("device \(address): previous connection released")
            if releasing[address] == nil, let device = devices[address], device.phase == .initWait { evaluate(device) }
        }
    }

    /// Connections of torn-down devices still finishing their requests.
    public var releasingCount: Int { releasing.values.reduce(0) { $0 + $1.count } }

    /// Daemon shutdown: connected devices are disconnected and set to Closing with an
    /// error node; devices still waiting for their frontend are handed back as Initialising
    /// so that a backend started later can run the handshake. Returns whether some
    /// frontend still has to acknowledge (see `shutdownSettled`).
    @discardableResult
    public func beginShutdown() -> Bool {
        stopping = true
        for device in devices.values.sorted(by: { $0.address < $1.address }) {
            switch device.phase {
            case .connected:
                disconnect(device)
                device.error = "pvfs backend stopped; re-attach the device after it restarts"
                device.phase = .closing
                _ = guardedWrite(device, [("error", device.error!)], state: .closing)
                logger.notice("device \(device.address): backend stopping, set to Closing")
            case .initWait, .discovered:
                _ = guardedWrite(device, [], state: .initialising)
                device.phase = .closed
                logger.notice("device \(device.address): backend stopping, handed back as Initialising")
            case .closing, .closed, .refused, .dead:
                break
            }
        }
        return !shutdownSettled
    }

    /// True once no device waits for its frontend's Closed any more.
    public var shutdownSettled: Bool {
        !devices.values.contains { $0.phase == .closing }
    }

    /// Final step of a shutdown: disconnects whatever is left, removes our watches, and waits
    /// for every connection to be released.
    public func finishShutdown() {
        for device in devices.values {
            disconnect(device)
            unwatchFrontend(device)
        }
        try? store.unwatch(root, token: XenBackendCore.backendWatchToken)
        try? store.unwatch("@releaseDomain", token: XenBackendCore.releaseWatchToken)
        for threads in releasing.values {
            for thread in threads.values { thread.join() }
        }
        releasing.removeAll()
    }

    public var status: [XenDeviceStatus] {
        devices.values.sorted { $0.address < $1.address }.map { device in
            let phase: XenDeviceStatus.Phase
            switch device.phase {
            case .discovered, .initWait: phase = .waitingForFrontend
            case .connected: phase = device.lostSession ? .lostSession : .connected
            case .closing: phase = .closing
            case .closed, .refused: phase = .closed
            case .dead: phase = .dead
            }
            return XenDeviceStatus(address: device.address, phase: phase, frontendState: device.frontendState,
                                   domainName: device.domainName, ringOrders: device.connection?.ringOrders ?? [],
                                   failedRings: device.failedRings.sorted(), error: device.error)
        }
    }

    // MARK: - Discovery

    private func parseToken(_ token: String) -> XenDeviceAddress? {
        let parts = token.dropFirst(XenBackendCore.frontendTokenPrefix.count).split(separator: "/")
        guard parts.count == 2, let domid = UInt32(parts[0]), let devid = UInt32(parts[1]) else { return nil }
        return XenDeviceAddress(domid: domid, devid: devid)
    }

    private func parseDomid(_ name: String) -> UInt32? {
        guard let domid = try? XenValue.parseUInt32(name, name: "domid"),
              domid < xenFirstReservedDomid, domid != backendDomid else { return nil }
        return domid
    }

    private func backendPathChanged(_ path: String) {
        guard path.hasPrefix(root + "/") else {
            rescan()
            return
        }
        let components = path.dropFirst(root.count + 1).split(separator: "/", omittingEmptySubsequences: false)
        guard components.count >= 2, let domid = parseDomid(String(components[0])),
              let devid = try? XenValue.parseUInt32(String(components[1]), name: "devid") else {
            rescan()
            return
        }
        let address = XenDeviceAddress(domid: domid, devid: devid)
        guard let device = devices[address] else {
            discover(address)
            return
        }
        let key = components.count > 2 ? String(components[2]) : nil
        switch key {
        case nil, "frontend", "frontend-id":
            if !backendDirectoryExists(device) {
                removeDevice(device, reason: "backend directory removed")
            } else {
                backendStateChanged(device)
            }
        case "state", "online":
            backendStateChanged(device)
        default:
            break
        }
    }

    /// Brings the device table in line with the backend directory.
    private func rescan() {
        var present: Set<XenDeviceAddress> = []
        let domains: [String]
        do {
            domains = try store.list(root, in: .none) ?? []
        } catch {
            logger.error("cannot list \(root): \(error)")
            return
        }
        for name in domains {
            guard let domid = parseDomid(name) else {
                if name != String(backendDomid) { logger.warning("ignoring \(root)/\(name): not a guest domain id") }
                continue
            }
            let devids: [String]
            do {
                devids = try store.list("\(root)/\(name)", in: .none) ?? []
            } catch {
                logger.error("cannot list \(root)/\(name): \(error)")
                continue
            }
            for devName in devids {
                guard let devid = try? XenValue.parseUInt32(devName, name: "devid") else {
                    logger.warning("ignoring \(root)/\(name)/\(devName): not a device index")
                    continue
                }
                let address = XenDeviceAddress(domid: domid, devid: devid)
                present.insert(address)
                if devices[address] == nil { discover(address) }
            }
        }
        for device in devices.values where !present.contains(device.address) {
            removeDevice(device, reason: "backend directory removed")
        }
    }

    private func discover(_ address: XenDeviceAddress) {
        guard !stopping else { return }
        let backendPath = "\(root)/\(address.domid)/\(address.devid)"
        let frontendNode: [UInt8]?
        let frontendID: [UInt8]?
        let stateNode: [UInt8]?
        do {
            frontendNode = try store.read("\(backendPath)/frontend", in: .none)
            frontendID = try store.read("\(backendPath)/frontend-id", in: .none)
            stateNode = try store.read("\(backendPath)/state", in: .none)
        } catch {
            logger.error("device \(address): cannot read \(backendPath): \(error)")
            return
        }
        // The toolstack writes the directory in one transaction; a partial one is still
        // being written (or removed) and a later watch event brings us back.
        guard let frontendNode, let stateNode else { return }

        let expectedFrontend = "/local/domain/\(address.domid)/device/\(configuration.frontendKind)/\(address.devid)"
        let device = Device(address: address, backendPath: backendPath, frontendPath: expectedFrontend)
        devices[address] = device

        guard frontendNode == Array(expectedFrontend.utf8) else {
            refuse(device, "backend node frontend=\(XenValue.describe(frontendNode)) is not \(expectedFrontend)")
            return
        }
        if let frontendID, (try? XenValue.parseUInt32(frontendID, name: "frontend-id")) != address.domid {
            refuse(device, "backend node frontend-id=\(XenValue.describe(frontendID)) does not match domain \(address.domid)")
            return
        }
        device.domainName = try? store.readString("/local/domain/\(address.domid)/name")

        let backendState = XenbusState(node: stateNode)
        device.lastWrittenState = backendState
        logger.info("device \(address): found (domain \(device.domainName ?? "?"), backend state \(backendState.map(String.init(describing:)) ?? XenValue.describe(stateNode)))")
        watchFrontend(device)

        switch backendState {
        case .initialising?:
            beginHandshake(device)
        case .initWait?, .initialised?:
            // A previous instance began the handshake; the frontend's grants, if any, are
            // still valid, so the handshake simply goes on.
            beginHandshake(device)
        case .connected?:
            // A previous instance served this device. Its 9P session (fids, negotiated
            // msize, requests it had taken off the ring) died with it, and Linux's frontend
            // cannot reconnect: serve the rings, answering every request with EIO.
            let frontend = readFrontendState(device)
            device.frontendState = frontend
            switch frontend {
            case .initialised?, .connected?:
                device.lostSession = true
                connect(device)
            case .initialising?:
                beginHandshake(device)
            case .closing?:
                closeDevice(device, to: .closing)
            default:
                closeDevice(device, to: .closed)
            }
        case .closing?:
            device.phase = .closing
            evaluate(device)
        case .closed?:
            device.phase = .closed
            evaluate(device)
        default:
            fail(device, "backend state \(XenValue.describe(stateNode)) is not one a backend can resume from")
        }
    }

    private func watchFrontend(_ device: Device) {
        do {
            try store.watch("\(device.frontendPath)/state", token: device.watchToken)
            device.watching = true
        } catch {
            logger.error("device \(device.address): cannot watch \(device.frontendPath)/state: \(error)")
        }
    }

    private func unwatchFrontend(_ device: Device) {
        guard device.watching else { return }
        device.watching = false
        try? store.unwatch("\(device.frontendPath)/state", token: device.watchToken)
    }

    private func backendDirectoryExists(_ device: Device) -> Bool {
        (try? store.read("\(device.backendPath)/frontend", in: .none)) != nil
    }

    /// libxl writes `online` = 0 when it wants a device gone: no new handshake then.
    private func toolstackWantsDevice(_ device: Device) -> Bool {
        (try? store.read("\(device.backendPath)/online", in: .none)) != Array("0".utf8)
    }

    private func removeDevice(_ device: Device, reason: String) {
        disconnect(device)
        unwatchFrontend(device)
        devices[device.address] = nil
        logger.notice("device \(device.address): removed (\(reason))")
    }

    // MARK: - State changes

    private func readFrontendState(_ device: Device) -> XenbusState? {
        let bytes: [UInt8]?
        do {
            bytes = try store.read("\(device.frontendPath)/state", in: .none)
        } catch {
            logger.warning("device \(device.address): cannot read frontend state: \(error)")
            return nil
        }
        guard let bytes else { return nil }
        guard let state = XenbusState(node: bytes) else {
            logger.warning("device \(device.address): frontend state \(XenValue.describe(bytes)) is not a xenbus state")
            return .unknown
        }
        return state
    }

    private func frontendChanged(_ device: Device) {
        evaluate(device)
    }

    /// Acts on the frontend's current state given our phase.
    private func evaluate(_ device: Device) {
        let state = readFrontendState(device)
        if state != device.frontendState {
            logger.info("device \(device.address): frontend \(state.map(String.init(describing:)) ?? "gone")")
        }
        device.frontendState = state
        guard let state, state != .unknown else {
            // Before the connection a missing or unreadable frontend state just means "not
            // yet" (a toolstack may write the backend directory first); afterwards the
            // frontend is gone. A dead domain or a removed device is noticed by
            // @releaseDomain and the backend watch in any phase.
            if device.phase != .initWait && device.phase != .discovered { frontendGone(device) }
            return
        }
        switch device.phase {
        case .discovered:
            break
        case .initWait:
            switch state {
            case .initialised, .connected:
                connect(device)
            case .closing, .closed:
                closeDevice(device, to: .closed)
            default:
                break
            }
        case .connected:
            switch state {
            case .initialising:
                logger.notice("device \(device.address): frontend restarted")
                if toolstackWantsDevice(device) {
                    disconnect(device)
                    beginHandshake(device)
                } else {
                    closeDevice(device, to: .closed)
                }
            case .closing:
                closeDevice(device, to: .closing)
            case .closed:
                closeDevice(device, to: .closed)
            default:
                break
            }
        case .closing:
            switch state {
            case .closed:
                closeDevice(device, to: .closed)
            case .initialising where toolstackWantsDevice(device):
                beginHandshake(device)
            default:
                break
            }
        case .closed:
            if state == .initialising && toolstackWantsDevice(device) { beginHandshake(device) }
        case .refused, .dead:
            break
        }
    }

    /// The frontend's state node is gone (device removed, or domain torn down).
    private func frontendGone(_ device: Device) {
        switch device.phase {
        case .closed, .refused, .dead:
            disconnect(device)
        default:
            closeDevice(device, to: .closed)
        }
    }

    /// Our own `state` node changed: either our write echoing back, or the toolstack
    /// asking for removal (libxl writes `online`=0 and `state`=5) or recreating the device.
    private func backendStateChanged(_ device: Device) {
        let bytes: [UInt8]?
        do {
            bytes = try store.read("\(device.backendPath)/state", in: .none)
        } catch {
            return
        }
        guard let bytes else {
            if !backendDirectoryExists(device) { removeDevice(device, reason: "backend directory removed") }
            return
        }
        let state = XenbusState(node: bytes)
        guard state != device.lastWrittenState else { return }
        switch state {
        case .closing?:
            logger.notice("device \(device.address): toolstack requested Closing")
            disconnect(device)
            device.lastWrittenState = .closing
            if device.phase != .dead && device.phase != .refused { device.phase = .closing }
            evaluate(device)
        case .closed?:
            logger.notice("device \(device.address): toolstack set Closed")
            disconnect(device)
            device.lastWrittenState = .closed
            if device.phase != .dead && device.phase != .refused { device.phase = .closed }
        case .initialising?:
            // The toolstack recreated the device: forget everything and start again.
            removeDevice(device, reason: "recreated by the toolstack")
            discover(device.address)
        default:
            logger.warning("device \(device.address): backend state changed to \(XenValue.describe(bytes)) behind our back")
            device.lastWrittenState = state
        }
    }

    /// @releaseDomain fired: some domain died. Unmap everything a dead domain granted us at
    /// once: while we hold its pages, Xen cannot finish destroying it.
    private func checkDomains() {
        for device in devices.values where device.phase != .dead {
            guard !store.isDomainIntroduced(device.address.domid) else { continue }
            logger.notice("device \(device.address): domain \(device.address.domid) is gone; tearing down")
            disconnect(device)
            device.phase = .dead
            _ = guardedWrite(device, [], state: .closed)
        }
    }

    // MARK: - Handshake

    private func beginHandshake(_ device: Device) {
        guard !stopping else { return }
        device.lostSession = false
        device.failedRings = []
        device.error = nil
        let written = guardedWrite(device, [
            ("versions", "1"),
            ("max-rings", String(configuration.maxRings)),
            ("max-ring-page-order", String(configuration.maxRingPageOrder)),
            ("error", nil),
        ], state: .initWait)
        guard written else { return }
        device.phase = .initWait
        logger.info("device \(device.address): InitWait")
        evaluate(device)
    }

    private func readFrontendNode(_ device: Device, _ key: String) throws -> [UInt8] {
        guard let bytes = try store.read("\(device.frontendPath)/\(key)", in: .none) else {
            throw XenError.invalid(key, "missing")
        }
        return bytes
    }

    /// Reads and validates everything the frontend announced.
    private func readAnnouncement(_ device: Device) throws -> [XenRingAnnouncement] {
        let version = try XenValue.parseUInt32(try readFrontendNode(device, "version"), name: "version")
        guard version == 1 else { throw XenError.invalid("version", "\(version) is not the supported version 1") }
        let count = try XenValue.parseUInt32(try readFrontendNode(device, "num-rings"), name: "num-rings")
        guard count >= 1, count <= configuration.maxRings else {
            throw XenError.invalid("num-rings", "\(count) is outside 1...\(configuration.maxRings)")
        }
        var rings: [XenRingAnnouncement] = []
        for index in 0..<Int(count) {
            let refName = "ring-ref\(index)"
            let ref = try XenValue.parseUInt32(try readFrontendNode(device, refName), name: refName)
            guard ref >= xenFirstUnreservedGrantRef else {
                throw XenError.invalid(refName, "grant reference \(ref) is reserved")
            }
            let portName = "event-channel-\(index)"
            let port = try XenValue.parseUInt32(try readFrontendNode(device, portName), name: portName)
            guard port >= 1, port < xenMaxEventChannelPort else {
                throw XenError.invalid(portName, "port \(port) is outside 1...\(xenMaxEventChannelPort - 1)")
            }
            if rings.contains(where: { $0.ref == ref }) {
                throw XenError.invalid(refName, "grant reference \(ref) is used by another ring")
            }
            if rings.contains(where: { $0.port == port }) {
                throw XenError.invalid(portName, "port \(port) is used by another ring")
            }
            rings.append(XenRingAnnouncement(index: index, ref: ref, port: port))
        }
        return rings
    }

    private func frontendInfo(_ device: Device) -> XenFrontendInfo {
        func backendNode(_ key: String) -> String? { try? store.readString("\(device.backendPath)/\(key)") }
        var frontendTag = try? store.readString("\(device.frontendPath)/tag")
        if let tag = frontendTag, tag.utf8.count > 256 { frontendTag = String(tag.utf8.prefix(256)) }
        device.domainName = try? store.readString("/local/domain/\(device.address.domid)/name")
        return XenFrontendInfo(domid: device.address.domid, devid: device.address.devid,
                               domainName: device.domainName, tag: backendNode("tag"), path: backendNode("path"),
                               securityModel: backendNode("security_model"), frontendTag: frontendTag,
                               backendPath: device.backendPath, frontendPath: device.frontendPath)
    }

    private func connect(_ device: Device) {
        if releasing[device.address] != nil {
            logger.info("device \(device.address): waiting for the previous connection to finish its requests")
            return
        }
        let rings: [XenRingAnnouncement]
        do {
            rings = try readAnnouncement(device)
        } catch {
            fail(device, "invalid frontend announcement: \(error)")
            return
        }
        let info = frontendInfo(device)
        let handler: any NineMessageHandler
        if device.lostSession {
            handler = NineLostSessionHandler()
        } else {
            do {
                handler = try handlerFactory(info.peer)
            } catch {
                fail(device, "refused: \(error)")
                return
            }
        }
        generationCounter += 1
        let generation = generationCounter
        let address = device.address
        let post = self.post
        let connection: any XenDeviceConnection
        do {
            connection = try connector.connect(frontend: info, rings: rings, maxOrder: configuration.maxRingPageOrder,
                                               handler: handler) { ring, error in
                post(.ringFailed(address, generation: generation, ring: ring, error))
            }
        } catch {
            handler.close()
            fail(device, "cannot connect: \(error)")
            return
        }
        device.connection = connection
        device.handler = handler
        device.generation = generation
        device.failedRings = []
        if device.lostSession {
            device.error = "9P session lost when the pvfs backend restarted; every request fails with EIO. Detach and re-attach the device (or restart the domain)."
        } else {
            device.error = nil
        }
        guard guardedWrite(device, [("error", device.error)], state: .connected) else {
            // The directory vanished while we connected.
            disconnect(device)
            return
        }
        device.phase = .connected
        let orders = connection.ringOrders.map(String.init).joined(separator: ",")
        if device.lostSession {
            logger.warning("device \(device.address): adopted a connected frontend whose 9P session is lost; answering EIO (\(rings.count) rings, orders \(orders))")
        } else {
            logger.notice("device \(device.address): Connected, \(info), \(rings.count) rings, orders \(orders)")
        }
    }

    /// Unmaps the rings and unbinds the event channels at once (a dead domain's pages must go
    /// without delay), then closes the 9P handler and ends the ring threads on a thread of
    /// their own: that waits for the requests the device has running, which may be slow.
    private func disconnect(_ device: Device) {
        let connection = device.connection
        let handler = device.handler
        device.connection = nil
        device.handler = nil
        if let connection {
            connection.disconnect()
            logger.info("device \(device.address): rings unmapped, event channels unbound")
        }
        guard connection != nil || handler != nil else { return }
        let release = DeviceRelease(handler: handler, connection: connection)
        releaseCounter += 1
        let token = releaseCounter
        let address = device.address
        let post = self.post
        do {
            let thread = try XenThread(name: "xen9p-rel-\(address.domid)") {
                release.run()
                post(.released(address, token: token))
            }
            releasing[address, default: [:]][token] = thread
        } catch {
            logger.warning("device \(address): \(error); releasing the connection on the xenstore thread")
            release.run()
        }
    }

    private func closeDevice(_ device: Device, to state: XenbusState) {
        disconnect(device)
        device.phase = state == .closing ? .closing : .closed
        _ = guardedWrite(device, [], state: state)
        logger.info("device \(device.address): \(state)")
    }

    /// The device cannot be served: error node, Closed. The frontend must go back to
    /// Initialising to try again.
    private func fail(_ device: Device, _ message: String) {
        disconnect(device)
        device.error = message
        device.phase = .closed
        logger.warning("device \(device.address): \(message)")
        _ = guardedWrite(device, [("error", message)], state: .closed)
    }

    /// The toolstack set the device up in a way we will not serve.
    private func refuse(_ device: Device, _ message: String) {
        device.error = message
        device.phase = .refused
        logger.error("device \(device.address): \(message)")
        _ = guardedWrite(device, [("error", message)], state: .closed)
    }

    /// Writes backend nodes (nil removes one) and optionally `state`, in one transaction
    /// that first checks the backend directory still exists: a write must never resurrect
    /// a directory the toolstack removed. Returns false when it no longer exists.
    @discardableResult
    private func guardedWrite(_ device: Device, _ nodes: [(String, String?)], state: XenbusState? = nil) -> Bool {
        do {
            let done: Bool? = try store.withTransaction { transaction in
                guard try store.read("\(device.backendPath)/frontend", in: transaction) != nil else { return nil }
                for (key, value) in nodes {
                    if let value {
                        try store.write("\(device.backendPath)/\(key)", value, in: transaction)
                    } else {
                        try store.remove("\(device.backendPath)/\(key)", in: transaction)
                    }
                }
                if let state {
                    try store.write("\(device.backendPath)/state", state.node, in: transaction)
                }
                return true
            }
            guard done != nil else {
                logger.info("device \(device.address): backend directory is gone; nothing written")
                return false
            }
            if let state { device.lastWrittenState = state }
            return true
        } catch {
            logger.error("device \(device.address): cannot write backend nodes: \(error)")
            return false
        }
    }
}

/// What a torn-down device still holds: its 9P handler (running requests finish when it
/// closes) and its ring threads.
private final class DeviceRelease: @unchecked Sendable {
    private let handler: (any NineMessageHandler)?
    private let connection: (any XenDeviceConnection)?

    init(handler: (any NineMessageHandler)?, connection: (any XenDeviceConnection)?) {
        self.handler = handler
        self.connection = connection
    }

    /// Closing first cancels what can be cancelled and wakes a ring thread waiting in the
    /// handler for room; then the threads end.
    func run() {
        handler?.close()
        connection?.join()
    }
}
