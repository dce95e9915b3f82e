/// Builds one reply: the out header first, its length patched by `finish`.
public struct FuseReplyWriter {
    public var writer: FuseWriter
    public let unique: UInt64

    public init(unique: UInt64, capacity: Int = 160) {
        self.unique = unique
        writer = FuseWriter(capacity: max(capacity, FuseProtocol.outHeaderSize))
        writer.zeros(FuseProtocol.outHeaderSize)
    }

    /// Bytes of payload so far.
    public var payloadCount: Int { writer.count - FuseProtocol.outHeaderSize }

    public func finish() -> [UInt8] {
        var bytes = writer.bytes
        var header = FuseWriter(capacity: FuseProtocol.outHeaderSize)
        FuseOutHeader(length: UInt32(truncatingIfNeeded: bytes.count), error: 0, unique: unique).encode(into: &header)
        for i in 0..<FuseProtocol.outHeaderSize { bytes[i] = header.bytes[i] }
        return bytes
    }

    /// An error reply: the header alone, carrying -errno.
    public static func error(unique: UInt64, errno: Int32) -> [UInt8] {
        var w = FuseWriter(capacity: FuseProtocol.outHeaderSize)
        FuseOutHeader(length: UInt32(FuseProtocol.outHeaderSize), error: errno == 0 ? 0 : -abs(errno), unique: unique).encode(into: &w)
        return w.bytes
    }

    /// A success reply without payload.
    public static func empty(unique: UInt64) -> [UInt8] { error(unique: unique, errno: 0) }
}

/// Where a transport takes one request's reply. Exactly one of `send`, `sendRead` (when it
/// returns ≥ 0) or `noReply` is called per request, by the thread that handles it or later by
/// another (a lock wait).
public protocol FuseReplySink: Sendable {
    /// The largest reply this request can carry, header included (a virtqueue chain's writable
    /// bytes; unbounded for /dev/fuse, where the kernel sized its own buffer).
    var capacity: Int { get }
    /// Sends a whole reply (out header with its length, then the payload).
    func send(_ reply: UnsafeRawBufferPointer)
    /// A READ reply: the out header, then up to `count` bytes of `descriptor` from `offset`,
    /// copied by the transport straight where they go (guest buffers, the kernel's pipe).
    /// Returns the bytes of data sent (fewer at end of file), or a negated errno when nothing was
    /// sent and the caller must send an error reply instead.
    func sendRead(unique: UInt64, descriptor: Int32, offset: Int64, count: Int) -> Int
    /// The request takes no reply; a transport that must hand its buffer back does so now.
    func noReply()
}

extension FuseReplySink {
    public func send(_ reply: [UInt8]) {
        reply.withUnsafeBytes { send($0) }
    }
}

/// A transport-neutral FUSE server: fed whole requests, answering through the sink.
public protocol FuseMessageHandler: AnyObject, Sendable {
    /// One request as read by the transport. The bytes belong to the transport and stay valid
    /// only during the call.
    func handle(_ message: UnsafeRawBufferPointer, reply: any FuseReplySink)
    /// The transport ended (unmounted, front-end gone): every handle, lock and wait of the
    /// session is released. Replies sent afterwards are dropped by the transport.
    func transportClosed()
}
