// The vhost-user protocol (QEMU's docs/interop/vhost-user.rst): messages on a Unix socket,
// each a 12-byte header {request u32, flags u32, size u32} and `size` bytes of payload, with
// descriptors passed alongside (SCM_RIGHTS). Little-endian, as every host pvfs runs on.

public enum VhostUser {
    public static let headerSize = 12
    /// Flags: the version (1) in the low two bits, then REPLY and NEED_REPLY.
    public static let version: UInt32 = 0x1
    public static let versionMask: UInt32 = 0x3
    public static let replyFlag: UInt32 = 0x4
    public static let needReplyFlag: UInt32 = 0x8
    /// The largest payload accepted: a memory table of 8 regions is 264 bytes; nothing served
    /// comes near 4 KiB.
    public static let maximumPayload = 4096
    /// Regions of a memory table (VHOST_MEMORY_BASELINE_NREGIONS).
    public static let maximumRegions = 8
    /// Descriptors one message may carry.
    public static let maximumDescriptors = 8
    /// SET_VRING_KICK/CALL/ERR: bit 8 set means no descriptor comes with the message.
    public static let vringNoDescriptorFlag: UInt64 = 1 << 8
    public static let vringIndexMask: UInt64 = 0xff
}

/// Device feature bits (virtio) as vhost-user carries them.
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28
    public static let eventIndex: UInt64 = 1 << 29
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    public static let protocolFeatures: UInt64 = 1 << 30
    public static let version1: UInt64 = 1 << 32
}

/// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
public enum VhostUserProtocolFeature {
    public static let multipleQueues: UInt64 = 1 << 0
    public static let replyAck: UInt64 = 1 << 3
    public static let resetDevice: UInt64 = 1 << 13
}

public enum VhostUserRequestType: UInt32, Sendable {
    case getFeatures = 1, setFeatures = 2, setOwner = 3, resetOwner = 4, setMemTable = 5, setLogBase = 6, setLogFD = 7
    case setVringNum = 8, setVringAddr = 9, setVringBase = 10, getVringBase = 11, setVringKick = 12, setVringCall = 13
    case setVringErr = 14, getProtocolFeatures = 15, setProtocolFeatures = 16, getQueueNum = 17, setVringEnable = 18
    case sendRARP = 19, netSetMTU = 20, setBackendRequestFD = 21, iotlbMessage = 22, setVringEndian = 23
    case getConfig = 24, setConfig = 25, createCryptoSession = 26, closeCryptoSession = 27, postcopyAdvise = 28
    case postcopyListen = 29, postcopyEnd = 30, getInflightFD = 31, setInflightFD = 32, gpuSetSocket = 33
    case resetDevice = 34, vringKick = 35, getMaxMemSlots = 36, addMemoryRegion = 37, removeMemoryRegion = 38
}

/// One region of guest memory as the front-end describes it.
public struct VhostUserMemoryRegion: Sendable, Hashable {
    public var guestAddress: UInt64
    public var size: UInt64
    /// The front-end's own virtual address of the region (ring addresses are given in these).
    public var userAddress: UInt64
    /// Where the region starts in its descriptor.
    public var mmapOffset: UInt64
}

/// vhost_vring_addr: the three parts of a split ring, in the front-end's virtual addresses.
public struct VhostUserVringAddress: Sendable, Hashable {
    public var index: UInt32
    public var flags: UInt32 = 0
    public var descriptorTable: UInt64
    public var usedRing: UInt64
    public var availableRing: UInt64
    public var logAddress: UInt64 = 0
}

/// A decoded front-end message.
public enum VhostUserMessage: Sendable, Hashable {
    case getFeatures
    case setFeatures(UInt64)
    case setOwner
    case resetOwner
    /// The descriptors, one per region, travel beside the message.
    case setMemoryTable([VhostUserMemoryRegion])
    case setVringNumber(index: UInt32, number: UInt32)
    case setVringAddress(VhostUserVringAddress)
    case setVringBase(index: UInt32, base: UInt32)
    case getVringBase(index: UInt32)
    /// KICK, CALL, ERR: the queue and whether a descriptor comes with it.
    case setVringKick(index: UInt32, hasDescriptor: Bool)
    case setVringCall(index: UInt32, hasDescriptor: Bool)
    case setVringError(index: UInt32, hasDescriptor: Bool)
    case getProtocolFeatures
    case setProtocolFeatures(UInt64)
    case getQueueNumber
    case setVringEnable(index: UInt32, enable: Bool)
    case resetDevice
    /// Anything not served: the session is ended (a protocol error), as the protocol leaves
    /// no other way to refuse a request the front-end was not offered.
    case unsupported(request: UInt32)

    /// Descriptors the message must come with.
    public var descriptorCount: Int {
        switch self {
        case .setMemoryTable(let regions): regions.count
        case .setVringKick(_, let has), .setVringCall(_, let has), .setVringError(_, let has): has ? 1 : 0
        default: 0
        }
    }
}

public struct VhostUserHeader: Sendable, Hashable {
    public var request: UInt32
    public var flags: UInt32
    public var size: UInt32

    public init(request: UInt32, flags: UInt32, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    public var needsReply: Bool { flags & VhostUser.needReplyFlag != 0 }

    public static func decode(_ bytes: some Collection<UInt8>) -> VhostUserHeader? {
        let b = Array(bytes.prefix(VhostUser.headerSize))
        guard b.count == VhostUser.headerSize else { return nil }
        return VhostUserHeader(request: le32(b, 0), flags: le32(b, 4), size: le32(b, 8))
    }

    public var bytes: [UInt8] { le(request) + le(flags) + le(size) }
}

/// Why a message was refused: a protocol error, which ends the front-end's session.
public struct VhostUserProtocolError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension VhostUserMessage {
    /// Decodes a message; the payload size must be exactly what the request carries.
    public static func decode(_ header: VhostUserHeader, _ payload: [UInt8]) throws(VhostUserProtocolError) -> VhostUserMessage {
        guard header.flags & VhostUser.versionMask == VhostUser.version else {
            throw VhostUserProtocolError("message version \(header.flags & VhostUser.versionMask), expected 1")
        }
        guard Int(header.size) == payload.count else { throw VhostUserProtocolError("payload size mismatch") }
        func expect(_ size: Int) throws(VhostUserProtocolError) {
            guard payload.count == size else {
                throw VhostUserProtocolError("request \(header.request): payload of \(payload.count) bytes, expected \(size)")
            }
        }
        func state() throws(VhostUserProtocolError) -> (UInt32, UInt32) {
            try expect(8)
            return (le32(payload, 0), le32(payload, 4))
        }
        func vringFile() throws(VhostUserProtocolError) -> (UInt32, Bool) {
            try expect(8)
            let value = le64(payload, 0)
            guard value & ~(VhostUser.vringIndexMask | VhostUser.vringNoDescriptorFlag) == 0 else {
                throw VhostUserProtocolError("vring descriptor message with unknown flags \(String(value, radix: 16))")
            }
            return (UInt32(value & VhostUser.vringIndexMask), value & VhostUser.vringNoDescriptorFlag == 0)
        }
        guard let type = VhostUserRequestType(rawValue: header.request) else { return .unsupported(request: header.request) }
        switch type {
        case .getFeatures:
            // QEMU sends GET requests with an empty payload; some front-ends send a zero u64.
            guard payload.isEmpty || payload.count == 8 else { try expect(0); return .getFeatures }
            return .getFeatures
        case .setFeatures:
            try expect(8)
            return .setFeatures(le64(payload, 0))
        case .setOwner:
            try expect(0)
            return .setOwner
        case .resetOwner:
            guard payload.isEmpty || payload.count == 8 else { try expect(0); return .resetOwner }
            return .resetOwner
        case .setMemTable:
            guard payload.count >= 8 else { throw VhostUserProtocolError("memory table shorter than its header") }
            let count = Int(le32(payload, 0))
            guard count >= 1, count <= VhostUser.maximumRegions else {
                throw VhostUserProtocolError("memory table with \(count) regions (1 to \(VhostUser.maximumRegions) served)")
            }
            try expect(8 + 32 * count)
            var regions: [VhostUserMemoryRegion] = []
            for i in 0..<count {
                let o = 8 + 32 * i
                regions.append(VhostUserMemoryRegion(guestAddress: le64(payload, o), size: le64(payload, o + 8),
                                                     userAddress: le64(payload, o + 16), mmapOffset: le64(payload, o + 24)))
            }
            return .setMemoryTable(regions)
        case .setVringNum:
            let (index, number) = try state()
            return .setVringNumber(index: index, number: number)
        case .setVringAddr:
            try expect(40)
            return .setVringAddress(VhostUserVringAddress(index: le32(payload, 0), flags: le32(payload, 4), descriptorTable: le64(payload, 8),
                                                          usedRing: le64(payload, 16), availableRing: le64(payload, 24), logAddress: le64(payload, 32)))
        case .setVringBase:
            let (index, base) = try state()
            return .setVringBase(index: index, base: base)
        case .getVringBase:
            let (index, _) = try state()
            return .getVringBase(index: index)
        case .setVringKick:
            let (index, has) = try vringFile()
            return .setVringKick(index: index, hasDescriptor: has)
        case .setVringCall:
            let (index, has) = try vringFile()
            return .setVringCall(index: index, hasDescriptor: has)
        case .setVringErr:
            let (index, has) = try vringFile()
            return .setVringError(index: index, hasDescriptor: has)
        case .getProtocolFeatures:
            guard payload.isEmpty || payload.count == 8 else { try expect(0); return .getProtocolFeatures }
            return .getProtocolFeatures
        case .setProtocolFeatures:
            try expect(8)
            return .setProtocolFeatures(le64(payload, 0))
        case .getQueueNum:
            guard payload.isEmpty || payload.count == 8 else { try expect(0); return .getQueueNumber }
            return .getQueueNumber
        case .setVringEnable:
            let (index, enable) = try state()
            guard enable <= 1 else { throw VhostUserProtocolError("SET_VRING_ENABLE with \(enable)") }
            return .setVringEnable(index: index, enable: enable == 1)
        case .resetDevice:
            return .resetDevice
        default:
            return .unsupported(request: header.request)
        }
    }

    /// The message as a front-end sends it (tests and simulated front-ends).
    public func encode(flags: UInt32 = VhostUser.version) -> [UInt8] {
        let (request, payload): (VhostUserRequestType, [UInt8])
        switch self {
        case .getFeatures: (request, payload) = (.getFeatures, [])
        case .setFeatures(let f): (request, payload) = (.setFeatures, le(f))
        case .setOwner: (request, payload) = (.setOwner, [])
        case .resetOwner: (request, payload) = (.resetOwner, [])
        case .setMemoryTable(let regions):
            var p = le(UInt32(regions.count)) + le(UInt32(0))
            for r in regions { p += le(r.guestAddress) + le(r.size) + le(r.userAddress) + le(r.mmapOffset) }
            (request, payload) = (.setMemTable, p)
        case .setVringNumber(let index, let number): (request, payload) = (.setVringNum, le(index) + le(number))
        case .setVringAddress(let a):
            (request, payload) = (.setVringAddr, le(a.index) + le(a.flags) + le(a.descriptorTable) + le(a.usedRing) + le(a.availableRing) + le(a.logAddress))
        case .setVringBase(let index, let base): (request, payload) = (.setVringBase, le(index) + le(base))
        case .getVringBase(let index): (request, payload) = (.getVringBase, le(index) + le(UInt32(0)))
        case .setVringKick(let index, let has): (request, payload) = (.setVringKick, le(UInt64(index) | (has ? 0 : VhostUser.vringNoDescriptorFlag)))
        case .setVringCall(let index, let has): (request, payload) = (.setVringCall, le(UInt64(index) | (has ? 0 : VhostUser.vringNoDescriptorFlag)))
        case .setVringError(let index, let has): (request, payload) = (.setVringErr, le(UInt64(index) | (has ? 0 : VhostUser.vringNoDescriptorFlag)))
        case .getProtocolFeatures: (request, payload) = (.getProtocolFeatures, [])
        case .setProtocolFeatures(let f): (request, payload) = (.setProtocolFeatures, le(f))
        case .getQueueNumber: (request, payload) = (.getQueueNum, [])
        case .setVringEnable(let index, let enable): (request, payload) = (.setVringEnable, le(index) + le(UInt32(enable ? 1 : 0)))
        case .resetDevice: (request, payload) = (.resetDevice, [])
        case .unsupported(let r): return VhostUserHeader(request: r, flags: flags, size: 0).bytes
        }
        return VhostUserHeader(request: request.rawValue, flags: flags, size: UInt32(payload.count)).bytes + payload
    }
}

/// A reply: the request's type, the REPLY flag, and the payload.
public func vhostUserReply(_ request: UInt32, _ payload: [UInt8]) -> [UInt8] {
    VhostUserHeader(request: request, flags: VhostUser.version | VhostUser.replyFlag, size: UInt32(payload.count)).bytes + payload
}

@inline(__always)
func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
}

@inline(__always)
func le32(_ b: [UInt8], _ o: Int) -> UInt32 {
    UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
}

@inline(__always)
func le64(_ b: [UInt8], _ o: Int) -> UInt64 {
    UInt64(le32(b, o)) | UInt64(le32(b, o + 4)) << 32
}
