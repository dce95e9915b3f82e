import CXen
import Logging
import PVFS9PCodec
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The Xen PV 9pfs backend: serves every 9pfs device under
/// `/local/domain/<self>/backend/9pfs` to Linux's `9pnet_xen` frontends, handing each
/// device's 9P traffic to a handler the daemon supplies.
///
/// ```swift
/// let backend = XenBackend(logger: logger) { peer in   // NinePPeer, endpoint .xen(domainID:...)
///     guard case .xen(let domid, _, _, let vm?, _) = peer.endpoint, rules.allow(domid, vm)
///     else { throw NineConnectionRefused("no VM for this device") }
///     return server.handler(for: peer)                // some NineMessageHandler
/// }
/// try backend.start()      // own thread; returns once the existing devices are adopted
/// ...
/// backend.stop()           // devices go Closing/Closed, pages unmapped, ports unbound
/// ```
/// One event-loop thread owns xenstore; each connected ring has its own thread.
public final class XenBackend: @unchecked Sendable {
    public let configuration: XenBackendConfiguration
    private let logger: Logger
    private let handlerFactory: NineHandlerFactory

    private struct Control {
        var stopRequested = false
        var events: [XenBackendEvent] = []
        var status: [XenDeviceStatus] = []
        var finished = false
        var failure: XenError?
    }
    private let control = Mutex(Control())
    private let wakeup: XenWakeup
    private var thread: XenThread?
    private let ready = XenLatch()

    public init(configuration: XenBackendConfiguration = XenBackendConfiguration(), logger: Logger,
                handlerFactory: @escaping NineHandlerFactory) throws {
        self.configuration = try configuration.validated()
        self.logger = logger
        self.handlerFactory = handlerFactory
        self.wakeup = try XenWakeup()
    }

    /// Runs the backend on its own thread. Returns once the watches are registered and the
    /// devices present are adopted, or throws when xenstore/gntdev/evtchn are unusable.
    public func start() throws {
        precondition(thread == nil, "XenBackend started twice")
        thread = try XenThread(name: "xen9p-backend") { [self] in
            do {
                try run()
            } catch {
                let failure = error as? XenError ?? XenError(kind: .system, call: "\(error)")
                control.withLock { $0.failure = failure }
                logger.error("xen 9pfs backend stopped: \(failure)")
            }
            control.withLock { $0.finished = true }
            ready.open()
        }
        ready.wait()
        if let failure = control.withLock({ $0.finished ? $0.failure : nil }) {
            thread?.join()
            throw failure
        }
    }

    /// Asks the backend to stop (any thread, also from a signal-handling thread).
    public func stop() {
        control.withLock { $0.stopRequested = true }
        wakeup.signal()
    }

    /// Waits until the backend thread has finished its shutdown.
    public func wait() {
        thread?.join()
    }

    /// The devices as the event loop last saw them.
    public var status: [XenDeviceStatus] {
        control.withLock { $0.status }
    }

    /// Runs the event loop on the calling thread until `stop()`.
    public func run() throws {
        let store = try XenStore()
        let domid = try configuration.backendDomid ?? store.ownDomainID()
        let connector = XenGrantConnector(limits: configuration.limits, admission: configuration.admission, logger: logger)
        // Fail early and clearly when gntdev or evtchn are missing rather than per device.
        _ = try XenGrantTable()
        let wakeup = self.wakeup
        let core = try XenBackendCore(configuration: configuration, backendDomid: domid, store: store,
                                      connector: connector, logger: logger,
                                      post: { [weak self] event in
                                          self?.control.withLock { $0.events.append(event) }
                                          wakeup.signal()
                                      },
                                      handlerFactory: handlerFactory)
        let watchFD = try store.fileDescriptor
        try core.start()
        publish(core)
        ready.open()

        var fds = [pollfd(fd: watchFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeup.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        var deadline: ContinuousClock.Instant?
        while true {
            wakeup.drain()
            while let event = store.nextWatchEvent() {
                core.handleWatch(path: event.path, token: event.token)
            }
            let (events, stopRequested) = control.withLock { state in
                defer { state.events.removeAll() }
                return (state.events, state.stopRequested)
            }
            for event in events { core.handle(event) }
            if stopRequested && deadline == nil {
                logger.notice("xen 9pfs backend stopping")
                core.beginShutdown()
                deadline = .now + configuration.shutdownGrace
            }
            publish(core)
            var timeout: Int32 = -1
            if let deadline {
                if core.shutdownSettled || ContinuousClock.now >= deadline { break }
                let left = ContinuousClock.now.duration(to: deadline)
                timeout = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            }
            for slot in fds.indices { fds[slot].revents = 0 }
            let rc = poll(&fds, nfds_t(fds.count), timeout)
            if rc < 0 && errno != EINTR { throw XenError.system("poll", "xenstore watches") }
        }
        core.finishShutdown()
        publish(core)
        logger.notice("xen 9pfs backend stopped")
    }

    private func publish(_ core: XenBackendCore) {
        let status = core.status
        control.withLock { $0.status = status }
    }
}

/// A one-shot gate: `wait()` blocks until `open()`.
final class XenLatch: @unchecked Sendable {
    private let state = Mutex(false)
    private let semaphore: UnsafeMutablePointer<sem_t>

    init() {
        semaphore = .allocate(capacity: 1)
        sem_init(semaphore, 0, 0)
    }

    deinit {
        sem_destroy(semaphore)
        semaphore.deallocate()
    }

    func open() {
        let first = state.withLock { opened in
            defer { opened = true }
            return !opened
        }
        if first { sem_post(semaphore) }
    }

    func wait() {
        while sem_wait(semaphore) != 0 && errno == EINTR {}
        sem_post(semaphore)
    }
}
