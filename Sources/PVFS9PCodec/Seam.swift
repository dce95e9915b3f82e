// The one interface between 9P and what carries it: a transport (sockets, Xen rings, a test)
// hands whole messages to a `NineMessageHandler` that a `NineHandlerFactory` made for the peer,
// and knows nothing else of 9P than the framing in Framing.swift.

/// Who is at the other end of a connection, as its transport established it: nothing the
/// client sends is part of it. The attach resolver decides from this (and the aname) which VM
/// the connection may reach.
public struct NinePPeer: Sendable, Hashable, CustomStringConvertible {
    public enum Endpoint: Sendable, Hashable {
        /// A TCP client; `listener` is the address listened on ("tcp:127.0.0.1:5640").
        case tcp(remote: String, listener: String)
        /// A Unix socket client with its SO_PEERCRED; `listener` is "unix:/run/pvfs/vm1.9p".
        case unix(listener: String, processID: Int32?, userID: UInt32?, groupID: UInt32?)
        /// A Xen PV 9pfs device: the frontend's domain, the device, and what dom0 wrote in the
        /// backend directory (`vm`: the `path` node `pvfs-vm attach` sets, `tag`: the `tag` node).
        case xen(domainID: UInt32, deviceID: UInt32, domainName: String?, vm: String?, tag: String?)
        /// In-process connections (tests, tools), named for logs.
        case local(remote: String, local: String)
    }

    public var endpoint: Endpoint
    /// Unique within the process, for logs.
    public var connectionID: UInt64

    public init(_ endpoint: Endpoint, connectionID: UInt64) {
        self.endpoint = endpoint
        self.connectionID = connectionID
    }

    /// The remote end: "10.0.2.15:43122", "[::1]:5640", "pid 812", "domain 7".
    public var remoteAddress: String {
        switch endpoint {
        case .tcp(let remote, _): remote
        case .unix(_, let processID, _, _): processID.map { "pid \($0)" } ?? "unknown"
        case .xen(let domainID, _, _, _, _): "domain \(domainID)"
        case .local(let remote, _): remote
        }
    }

    /// The listener or device the connection came through: "tcp:127.0.0.1:5640",
    /// "unix:/run/pvfs/vm1.9p", "xen:7/0".
    public var localAddress: String {
        switch endpoint {
        case .tcp(_, let listener), .unix(let listener, _, _, _): listener
        case .xen(let domainID, let deviceID, _, _, _): "xen:\(domainID)/\(deviceID)"
        case .local(_, let local): local
        }
    }

    private var kind: String {
        switch endpoint {
        case .tcp: "tcp"
        case .unix: "unix"
        case .xen: "xen"
        case .local: "local"
        }
    }

    public var description: String {
        var s = "\(kind) \(remoteAddress) via \(localAddress) #\(connectionID)"
        if case .unix(_, _, let userID?, _) = endpoint { s += " uid \(userID)" }
        return s
    }
}

/// What a connection holds now, for a transport's timeouts and gauges.
public struct NineConnectionUsage: Sendable, Equatable {
    /// Requests received and not yet answered.
    public var outstandingRequests: Int
    /// Fids in use (a connection holding none, with nothing outstanding, is idle).
    public var fids: Int
    /// It held a fid at some point (an attach succeeded), however briefly: a transport that
    /// only samples `fids` can miss an attach and clunk between two looks.
    public var hasHeldFid: Bool

    public init(outstandingRequests: Int, fids: Int, hasHeldFid: Bool? = nil) {
        self.outstandingRequests = outstandingRequests
        self.fids = fids
        self.hasHeldFid = hasHeldFid ?? (fids > 0)
    }
}

/// One 9P connection as a transport drives it.
///
/// A transport hands over one complete T-message at a time (its size field included), in the
/// order received, and sends each R-message `reply` gets on the channel the request came from
/// (a Xen device has several rings). Replies may come in any order and from any thread; one
/// handed over after another goes out after it on that channel. Each request gets at most one
/// reply. With `unanswered`, each request ends in exactly one callback: its reply, or
/// `unanswered` when the handler finishes it without one (9P sends none for a request flushed
/// before it took effect, or abandoned by a Tversion); a transport that bounds the requests it
/// has handed over counts on it.
///
/// `close()` ends the connection: the transport calls it once, when it hands over no more
/// requests (a ring thread being torn down may still be inside one `receive` call; the handler
/// drops that request), and drops replies that arrive later.
public protocol NineMessageHandler: AnyObject, Sendable {
    /// The largest message accepted now: the negotiated msize, or the configured maximum before
    /// Tversion. A stream transport sets its framer's limit to it before each message; a ring
    /// transport bounds it by the ring's size. A larger message is a framing error.
    var maximumMessageSize: Int { get }
    /// Takes one message. `runInline`: the transport has nothing else to hand over now, so the
    /// handler may run the request on the caller's thread (saving two thread hand-offs) and
    /// return after its reply was given. May block (back-pressure) while the connection holds
    /// as many requests or bytes as it allows: call it from the channel's reader.
    func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                 unanswered: (@Sendable () -> Void)?)
    /// Requests outstanding and fids held, for idle timeouts and metrics.
    var usage: NineConnectionUsage { get }
    /// Charges the calling thread's CPU to the handler's tenant and runs the thread at that
    /// tenant's priority (pvfsd's per-tenant CPU fairness). `receive` does it for the reader;
    /// a transport calls it from the other threads it runs for the connection (a writer).
    func serveOnCurrentThread()
    func close()
}

extension NineMessageHandler {
    /// For handlers that hold nothing between requests.
    public var usage: NineConnectionUsage { NineConnectionUsage(outstandingRequests: 0, fids: 0) }
    /// For handlers whose CPU nobody accounts.
    public func serveOnCurrentThread() {}
}

/// A handler whose session can move to another process: pvfsd's graceful upgrade hands each
/// connection's socket and session to the new binary at a message boundary.
///
/// The transport calls `beginSuspend()`, stops handing over requests (it parks its reader
/// between two messages), then `finishSuspend(timeout:)`; once that succeeded and the replies
/// queued were sent, `handOverState()` gives the session's state, opaque to the transport, for
/// the process that takes over. Before `handOverState()`, `resume()` undoes it all.
public protocol NineSuspendableHandler: NineMessageHandler {
    /// From now on a request that would wait long (a blocking lock) ends as if its wait had
    /// timed out, which the client retries: nothing outstanding may outlive the hand-over.
    func beginSuspend()
    /// Waits up to `timeout` seconds until no request is outstanding and every reply was handed
    /// to its callback; false when something still runs.
    func finishSuspend(timeout: Double) -> Bool
    /// The hand-over was abandoned: serve as before.
    func resume()
    /// The session's state. The handler serves nothing afterwards and releases nothing: its
    /// files, locks and sessions belong to the process that takes over.
    func handOverState() throws -> [UInt8]
}

/// Why a connection is refused before any message: sockets close it, a Xen device goes to
/// Closed with "refused: <reason>" in its error node.
public struct NineConnectionRefused: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Builds the handler of a new connection, or throws to refuse it.
public typealias NineHandlerFactory = @Sendable (NinePPeer) throws -> any NineMessageHandler

/// Answers every request with Rlerror(EIO). Serves a Xen device whose 9P session was lost (the
/// backend restarted under a connected frontend): the guest gets I/O errors at once instead of
/// hanging on requests nobody will answer.
public final class NineLostSessionHandler: NineMessageHandler {
    public init() {}

    /// Never negotiates: the transport's own bound applies.
    public var maximumMessageSize: Int { Int(UInt32.max) }

    public func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                        unanswered: (@Sendable () -> Void)?) {
        guard let header = NinePHeader(message) else {
            unanswered?()
            return
        }
        reply(NinePResponse.error(errno: LinuxErrno.EIO).encode(tag: header.tag))
    }

    public func close() {}
}
