import CXen
import PVFS9PCodec

/// Sizes that follow from a ring's page order (XEN_FLEX_RING_SIZE and friends).
public struct XenRingGeometry: Sendable, Equatable {
    /// The largest order whose grant references still fit in the one interface page
    /// (4096 - 136 bytes of header leave room for 990 refs, so 512 = 1 << 9).
    public static let maximumOrder: UInt32 = 9

    public let order: UInt32

    public init(order: UInt32) {
        precondition(order >= 1 && order <= XenRingGeometry.maximumOrder)
        self.order = order
    }

    /// Data pages granted for the ring: half for each direction.
    public var dataPageCount: Int { 1 << Int(order) }
    /// Bytes in each direction: 1 << (order + XEN_PAGE_SHIFT - 1).
    public var ringSize: UInt32 { 1 << (order + 11) }
}

/// Where the fields of `struct xen_9pfs_data_intf` lie in the shared interface page.
public enum XenRingLayout {
    public static let inCons = CXEN_9PFS_IN_CONS
    public static let inProd = CXEN_9PFS_IN_PROD
    public static let outCons = CXEN_9PFS_OUT_CONS
    public static let outProd = CXEN_9PFS_OUT_PROD
    public static let ringOrder = CXEN_9PFS_RING_ORDER
    public static let refs = CXEN_9PFS_REFS

    /// Reads the ring order and the data pages' grant references from a mapped interface
    /// page, each exactly once (the frontend can change the page at any time), and checks
    /// them: 1 ≤ order ≤ `maxOrder`, no reserved grant reference.
    public static func readInterface(_ page: UnsafeRawPointer, maxOrder: UInt32) throws -> (geometry: XenRingGeometry, refs: [UInt32]) {
        let order = cxen_load_u32(page + ringOrder)
        let limit = min(maxOrder, XenRingGeometry.maximumOrder)
        guard order >= 1, order <= limit else {
            throw XenError.invalid("ring_order", "\(order) is outside 1...\(limit)")
        }
        let geometry = XenRingGeometry(order: order)
        var result: [UInt32] = []
        result.reserveCapacity(geometry.dataPageCount)
        for index in 0..<geometry.dataPageCount {
            let ref = cxen_load_u32(page + refs + 4 * index)
            guard ref >= xenFirstUnreservedGrantRef else {
                throw XenError.invalid("ref[\(index)]", "grant reference \(ref) is reserved")
            }
            result.append(ref)
        }
        return (geometry, result)
    }
}

/// The backend's end of one Xen 9pfs data ring: requests come from the "out" half
/// (frontend → backend), replies go to the "in" half (backend → frontend).
///
/// Indices are free-running 32-bit counters masked by the ring size. The backend is the
/// only writer of `out_cons` and `in_prod` and keeps private copies of both, so what the
/// frontend writes there is never read back. Everything the frontend controls
/// (`out_prod`, `in_cons`, the bytes of a message) is read once and validated.
/// Barriers follow io/ring.h's flex-ring users: rmb after reading the producer index,
/// mb before publishing the consumer index, mb after reading the consumer index before
/// overwriting freed space, wmb before publishing the producer index.
///
/// Not thread-safe: exactly one worker owns a ring.
public final class XenFlexRing {
    public let geometry: XenRingGeometry
    public var ringSize: UInt32 { geometry.ringSize }
    private let interface: UnsafeMutableRawPointer
    private let inData: UnsafeMutableRawPointer
    private let outData: UnsafeMutableRawPointer
    private var outCons: UInt32
    private var inProd: UInt32

    /// `interface` is the mapped interface page, `data` the contiguously mapped data pages
    /// (2 × ringSize bytes: in half first, then out half). Starts from the indices in the
    /// page: zero for a new frontend, wherever a previous backend left them otherwise.
    public init(interface: UnsafeMutableRawPointer, data: UnsafeMutableRawPointer, geometry: XenRingGeometry) {
        self.geometry = geometry
        self.interface = interface
        self.inData = data
        self.outData = data + Int(geometry.ringSize)
        self.outCons = cxen_load_u32(interface + XenRingLayout.outCons)
        self.inProd = cxen_load_u32(interface + XenRingLayout.inProd)
    }

    private var mask: UInt32 { ringSize - 1 }

    /// Takes up to `maxCount` complete requests from the out ring and publishes the new
    /// consumer index. A request whose bytes have not all arrived stays on the ring, and so
    /// does the first one `accept` declines (with every one after it).
    /// Throws on a framing violation (size below the header, above `maxMessageSize`, or a
    /// producer index further ahead than the ring holds); nothing is consumed then.
    public func takeRequests(maxMessageSize: UInt32, maxCount: Int,
                             accept: ([UInt8]) -> Bool = { _ in true }) throws -> [[UInt8]] {
        let limit = min(maxMessageSize, ringSize)
        var available = try pendingRequestBytes()
        var cons = outCons
        var messages: [[UInt8]] = []
        var header = [UInt8](repeating: 0, count: NineP.headerSize)
        while messages.count < maxCount, available >= UInt32(NineP.headerSize) {
            header.withUnsafeMutableBytes { buffer in
                cxen_ring_copy_out(buffer.baseAddress, outData, ringSize, cons & mask, UInt32(NineP.headerSize))
            }
            guard let decoded = NinePHeader(header) else { break }
            do {
                try NinePMessageFramer.validate(size: decoded.size, limit: Int(limit))
            } catch {
                throw XenError(kind: .protocolViolation, call: "request header",
                               detail: "\(error) (type \(decoded.type.rawValue), tag \(decoded.tag))")
            }
            guard decoded.size <= available else { break }
            var message = [UInt8](repeating: 0, count: Int(decoded.size))
            message.withUnsafeMutableBytes { buffer in
                cxen_ring_copy_out(buffer.baseAddress, outData, ringSize, cons & mask, decoded.size)
            }
            // The frontend may have rewritten the header meanwhile: keep the one checked.
            message.replaceSubrange(0..<NineP.headerSize, with: header)
            guard accept(message) else { break }
            messages.append(message)
            cons &+= decoded.size
            available -= decoded.size
        }
        if cons != outCons {
            cxen_mb()
            cxen_store_u32(interface + XenRingLayout.outCons, cons)
            outCons = cons
        }
        return messages
    }

    /// Bytes of requests waiting on the out ring (complete or not), as far as the frontend's
    /// producer index says; throws when that index is impossible.
    public func pendingRequestBytes() throws -> UInt32 {
        let prod = cxen_load_u32(interface + XenRingLayout.outProd)
        cxen_rmb()
        let queued = prod &- outCons
        guard queued <= ringSize else {
            throw XenError(kind: .protocolViolation, call: "out_prod",
                           detail: "producer index \(prod) is \(queued) bytes ahead of consumer index \(outCons), more than the ring's \(ringSize)")
        }
        return queued
    }

    /// Writes one whole reply to the in ring and publishes it, or returns false without
    /// writing anything when the free space is smaller than the reply (the frontend must
    /// consume first: it reads a reply only once all of it is on the ring).
    /// Throws when the reply can never fit or the frontend's consumer index is impossible.
    public func putReply(_ message: [UInt8]) throws -> Bool {
        guard message.count <= Int(ringSize) else {
            throw XenError(kind: .protocolViolation, call: "reply",
                           detail: "\(message.count) bytes never fit the \(ringSize)-byte ring")
        }
        let cons = cxen_load_u32(interface + XenRingLayout.inCons)
        cxen_mb()
        let queued = inProd &- cons
        guard queued <= ringSize else {
            throw XenError(kind: .protocolViolation, call: "in_cons",
                           detail: "consumer index \(cons) is past producer index \(inProd)")
        }
        let free = ringSize - queued
        guard UInt32(message.count) <= free else { return false }
        message.withUnsafeBytes { buffer in
            cxen_ring_copy_in(inData, ringSize, inProd & mask, buffer.baseAddress, UInt32(buffer.count))
        }
        cxen_wmb()
        inProd &+= UInt32(message.count)
        cxen_store_u32(interface + XenRingLayout.inProd, inProd)
        return true
    }

    /// The backend's private indices (for tests and diagnostics).
    public var indices: (outCons: UInt32, inProd: UInt32) { (outCons, inProd) }
}
