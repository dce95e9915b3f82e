import PVFS9P
import Synchronization

/// The transport-neutral side of one 9P connection, as a transport sees it.
///
/// A transport hands over one complete T-message at a time (its 4-byte size header
/// included) and gets each R-message back through the `reply` closure given with that
/// request. Replies may come in any order and from any thread. Each request ends in exactly
/// one callback: its reply, or `unanswered` when the handler finishes it without a reply (9P
/// sends none for a request flushed before it took effect, or abandoned by a Tversion); a
/// transport that bounds the requests it has handed over counts on it. `close()` ends the
/// connection: the transport calls it once, when it hands over no more requests (a ring thread
/// being torn down may still be inside one `receive` call; the handler drops that request),
/// and drops replies that arrive later.
public protocol NineMessageHandler: AnyObject, Sendable {
    func receive(_ message: [UInt8], reply: @escaping @Sendable ([UInt8]) -> Void)
    /// As `receive(_:reply:)`; `runInline` says the transport has nothing else to hand over now,
    /// so the handler may run the request on the caller's thread (saving two thread hand-offs)
    /// and return after its reply was given.
    func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void)
    /// As `receive(_:runInline:reply:)`, with the callback for a request that ends without a reply.
    func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                 unanswered: @escaping @Sendable () -> Void)
    func close()
}

extension NineMessageHandler {
    public func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void) {
        receive(message, reply: reply)
    }

    /// For handlers that answer every request.
    public func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                        unanswered: @escaping @Sendable () -> Void) {
        receive(message, runInline: runInline, reply: reply)
    }
}

extension NinePConnection: NineMessageHandler {
    public func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                        unanswered: @escaping @Sendable () -> Void) {
        receive(message, runInline: runInline, reply: reply, unanswered: Optional(unanswered))
    }
}

/// 9P message types a transport needs to recognise.
public enum NineMessageType {
    public static let rlerror: UInt8 = 7
    public static let tversion: UInt8 = 100
    public static let rversion: UInt8 = 101
}

extension NineHeader {
    /// An Rlerror (9P2000.L) reply for `tag` carrying a Linux errno.
    public static func rlerror(tag: UInt16, errno: UInt32) -> [UInt8] {
        var message = NineHeader(size: 11, type: NineMessageType.rlerror, tag: tag).bytes
        message += [UInt8(truncatingIfNeeded: errno), UInt8(truncatingIfNeeded: errno >> 8),
                    UInt8(truncatingIfNeeded: errno >> 16), UInt8(truncatingIfNeeded: errno >> 24)]
        return message
    }
}

/// What one device's rings share: the msize the 9P server agreed to in its last Rversion.
/// Until then a message is bounded by the ring size alone.
public final class XenNineSession: Sendable {
    private let negotiated = Atomic<UInt32>(0)

    public init() {}

    /// The largest message either side may send now, given a ring of `ringSize` bytes.
    public func maxMessageSize(ringSize: UInt32) -> UInt32 {
        let msize = negotiated.load(ordering: .relaxed)
        return msize == 0 ? ringSize : min(msize, ringSize)
    }

    public var msize: UInt32? {
        let value = negotiated.load(ordering: .relaxed)
        return value == 0 ? nil : value
    }

    /// Looks at a reply on its way to the frontend and remembers the msize of an Rversion.
    public func observeReply(_ message: [UInt8]) {
        guard message.count >= NineHeader.length + 4, message[4] == NineMessageType.rversion else { return }
        let msize = UInt32(message[7]) | UInt32(message[8]) << 8 | UInt32(message[9]) << 16 | UInt32(message[10]) << 24
        guard msize >= UInt32(NineHeader.length) else { return }
        negotiated.store(msize, ordering: .relaxed)
    }
}

/// Answers every request with Rlerror(EIO). Serves devices whose 9P session was lost
/// (the daemon restarted under a connected frontend): the guest gets I/O errors at once
/// instead of hanging on requests nobody will answer.
public final class NineLostSessionHandler: NineMessageHandler {
    public static let eio: UInt32 = 5

    public init() {}

    public func receive(_ message: [UInt8], reply: @escaping @Sendable ([UInt8]) -> Void) {
        guard let header = NineHeader(message) else { return }
        reply(NineHeader.rlerror(tag: header.tag, errno: NineLostSessionHandler.eio))
    }

    public func close() {}
}
