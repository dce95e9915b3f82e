import Logging
import PVFS9PCodec
import Synchronization

/// Connects devices for real: maps each ring's interface page and data pages through
/// gntdev (one handle per device), binds each ring's event channel through its own evtchn
/// handle, and starts one worker thread per ring.
public final class XenGrantConnector: XenDeviceConnector {
    private let limits: XenRingLimits
    private let admission: TenantAdmission?
    private let logger: Logger

    /// `admission`: where the rings report their use per Xen domain (for metrics).
    public init(limits: XenRingLimits, admission: TenantAdmission? = nil, logger: Logger) {
        self.limits = limits
        self.admission = admission
        self.logger = logger
    }

    public func connect(frontend: XenFrontendInfo, rings: [XenRingAnnouncement], maxOrder: UInt32,
                        handler: any NineMessageHandler,
                        onRingFailure: @escaping @Sendable (Int, XenError) -> Void) throws -> any XenDeviceConnection {
        let table = try XenGrantTable()
        let connection = XenGrantConnection()
        do {
            for announcement in rings {
                let index = announcement.index
                func context(_ error: Error) -> XenError {
                    var wrapped = error as? XenError ?? XenError(kind: .system, call: "\(error)")
                    wrapped.call = "ring \(index): \(wrapped.call)"
                    return wrapped
                }
                let interface: XenGrantMapping
                do {
                    interface = try table.map(domid: frontend.domid, ref: announcement.ref)
                } catch { throw context(error) }
                connection.mappings.append(interface)
                let layout: (geometry: XenRingGeometry, refs: [UInt32])
                do {
                    layout = try XenRingLayout.readInterface(interface.address, maxOrder: maxOrder)
                } catch { throw context(error) }
                let data: XenGrantMapping
                do {
                    data = try table.mapContiguous(domid: frontend.domid, refs: layout.refs)
                } catch { throw context(error) }
                connection.mappings.append(data)
                let channel: XenEventChannel
                do {
                    channel = try XenEventChannel(remoteDomain: frontend.domid, remotePort: announcement.port)
                } catch { throw context(error) }
                connection.channels.append(channel)
                let ring = XenFlexRing(interface: interface.address, data: data.address, geometry: layout.geometry)
                let worker = try XenRingWorker(index: index, ring: ring, signal: channel, handler: handler,
                                               limits: limits,
                                               accounting: admission.map { XenRingAccounting(admission: $0, tenant: .xenDomain(frontend.domid)) },
                                               label: "xen9p-\(frontend.domid).\(frontend.devid).\(index)",
                                               logger: logger, onFailure: onRingFailure)
                connection.workers.append(worker)
                connection.ringOrders.append(layout.geometry.order)
            }
            for worker in connection.workers { try worker.start() }
        } catch {
            connection.disconnect()
            connection.join()
            throw error
        }
        return connection
    }
}

final class XenGrantConnection: XenDeviceConnection {
    var mappings: [XenGrantMapping] = []
    var channels: [XenEventChannel] = []
    var workers: [XenRingWorker] = []
    var ringOrders: [UInt32] = []
    private var disconnected = false

    func disconnect() {
        guard !disconnected else { return }
        disconnected = true
        // Threads first: once they are detached nobody touches the pages or the ports. A
        // thread still running a request in the 9P handler ends later (`join`).
        for worker in workers { worker.detach() }
        for channel in channels { channel.close() }
        for mapping in mappings.reversed() { mapping.unmap() }
    }

    func join() {
        for worker in workers { worker.join() }
    }
}
