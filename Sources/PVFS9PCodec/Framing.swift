// Cutting a byte stream into 9P messages, for transports that carry 9P as a stream (TCP, Unix
// sockets) and for ring transports that must check a message's size before copying it out.

/// Why a stream can no longer be framed. The transport closes the connection: after a bad
/// size field nothing that follows can be trusted.
public enum NinePFramingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A size field below the 7-byte header.
    case messageTooShort(UInt32)
    /// A size field above the limit (the negotiated msize).
    case messageTooLarge(UInt32, limit: Int)

    public var description: String {
        switch self {
        case .messageTooShort(let size): "message size \(size) is below the 7-byte header"
        case .messageTooLarge(let size, let limit): "message size \(size) exceeds the limit of \(limit) bytes"
        }
    }
}

/// Accumulates bytes from a stream and hands out complete messages (size field included).
///
/// Feed it any split of the stream, down to one byte at a time; `next()` returns nil until a
/// whole message is buffered. It never buffers more than one message beyond `maximumMessageSize`
/// worth of bytes asked for: a size field above the limit fails before the body is awaited.
public struct NinePMessageFramer: Sendable {
    /// The largest message accepted. Transports set it to the connection's current limit
    /// (the negotiated msize) before each `next()`.
    public var maximumMessageSize: Int
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maximumMessageSize: Int) {
        self.maximumMessageSize = maximumMessageSize
    }

    /// Bytes received and not yet handed out.
    public var bufferedByteCount: Int { buffer.count - start }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compactIfWorthwhile()
        buffer.append(contentsOf: bytes)
    }

    public mutating func append(contentsOf bytes: some Sequence<UInt8>) {
        compactIfWorthwhile()
        buffer.append(contentsOf: bytes)
    }

    /// Hands out every byte received and not yet handed out (a message's beginning, when the
    /// stream was cut at a message boundary), leaving the framer empty: what a connection
    /// moving to another process carries with it.
    public mutating func takeBuffered() -> [UInt8] {
        let rest = Array(buffer[start...])
        buffer.removeAll()
        start = 0
        return rest
    }

    /// How many more bytes the next message needs before `next()` can return it (at least 1
    /// while its header is incomplete); 0 when a message is ready.
    public var bytesNeeded: Int {
        let available = buffer.count - start
        guard available >= 4 else { return NineP.headerSize - available }
        let size = Int(peekSize())
        return max(0, max(size, NineP.headerSize) - available)
    }

    /// The next complete message, nil when more bytes are needed.
    public mutating func next() throws(NinePFramingError) -> [UInt8]? {
        let available = buffer.count - start
        guard available >= 4 else { return nil }
        let size = peekSize()
        try Self.validate(size: size, limit: maximumMessageSize)
        guard available >= Int(size) else { return nil }
        let message = Array(buffer[start..<(start + Int(size))])
        start += Int(size)
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 20)
            start = 0
        }
        return message
    }

    /// The size rules of every transport, stream or ring: a message's size field counts at
    /// least its 7-byte header and at most `limit` bytes (the negotiated msize).
    @inline(__always)
    public static func validate(size: UInt32, limit: Int) throws(NinePFramingError) {
        guard size >= UInt32(NineP.headerSize) else { throw .messageTooShort(size) }
        guard UInt64(size) <= UInt64(max(0, limit)) else { throw .messageTooLarge(size, limit: limit) }
    }

    /// The most bytes the reply to an encoded request can take when no message exceeds `msize`:
    /// what a transport reserves for it before the request is decoded. Only Tread and Treaddir
    /// (their count) and Treadlink (a path) can have large replies.
    public static func replySizeBound(ofRequest message: [UInt8], msize: Int) -> Int {
        let small = 256
        guard message.count >= NineP.headerSize else { return small }
        switch NinePMessageType(rawValue: message[4]) {
        case .tread, .treaddir:
            // fid[4] offset[8] count[4]
            guard message.count >= 23 else { return small }
            let count = Int(message[19]) | Int(message[20]) << 8 | Int(message[21]) << 16 | Int(message[22]) << 24
            return min(msize, NineP.readReplyHeaderSize + count)
        case .treadlink:
            return min(msize, 4200)
        default:
            return min(msize, small)
        }
    }

    private func peekSize() -> UInt32 {
        UInt32(buffer[start]) | UInt32(buffer[start + 1]) << 8 | UInt32(buffer[start + 2]) << 16 | UInt32(buffer[start + 3]) << 24
    }

    /// Drops consumed bytes once they are both many and most of the buffer, so that appending
    /// stays linear however the stream is split.
    private mutating func compactIfWorthwhile() {
        if start > 0 && (start >= 65536 || start * 2 >= buffer.count) {
            buffer.removeFirst(start)
            start = 0
        }
    }
}
