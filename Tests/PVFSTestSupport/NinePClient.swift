import Foundation
import Glibc
import PVFS9PCodec
import PVFSSystem
import SystemPackage

/// A small 9P2000.L client: pipelined requests over any byte stream, replies matched by tag.
/// The project's tests drive the server through it. It trusts the server no more than the
/// server trusts clients: replies are decoded strictly and anything unexpected is recorded in
/// `violations`.
public final class NinePClient: @unchecked Sendable {
    /// A request sent and not yet answered.
    public final class Pending: @unchecked Sendable {
        public let tag: UInt16
        public let request: NinePRequest
        fileprivate let condition = NSCondition()
        fileprivate var response: NinePResponse?
        fileprivate var failure: Errno?
        /// The order replies arrived in, across the client.
        public fileprivate(set) var sequence: Int = -1

        fileprivate init(tag: UInt16, request: NinePRequest) {
            self.tag = tag
            self.request = request
        }

        /// Whether a reply (or a failure) arrived.
        public var isAnswered: Bool {
            condition.lock()
            defer { condition.unlock() }
            return response != nil || failure != nil
        }

        /// The reply, waiting at most `timeout` seconds (ETIMEDOUT past it).
        public func wait(timeout: Double = 30) throws(Errno) -> NinePResponse {
            let deadline = Date(timeIntervalSinceNow: timeout)
            condition.lock()
            defer { condition.unlock() }
            while response == nil && failure == nil {
                if !condition.wait(until: deadline) { break }
            }
            if let response { return response }
            throw failure ?? Errno.timedOut
        }

        fileprivate func resolve(_ response: NinePResponse?, _ failure: Errno?, sequence: Int) {
            condition.lock()
            self.response = response
            self.failure = failure
            self.sequence = sequence
            condition.broadcast()
            condition.unlock()
        }
    }

    private let send: @Sendable ([UInt8]) throws -> Void
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var pending: [UInt16: Pending] = [:]
    private var nextTag: UInt16 = 0
    private var received = 0
    private var closedError: Errno?
    private var violationList: [String] = []
    private var readerThread: Thread?

    /// A client that writes messages with `send` and reads them with `receive` (one complete
    /// message per call, nil at the end of the stream) on a thread of its own.
    public init(send: @escaping @Sendable ([UInt8]) throws -> Void, receive: @escaping @Sendable () throws -> [UInt8]?,
                readerEnded: (@Sendable () -> Void)? = nil) {
        self.send = send
        let thread = Thread { [weak self] in
            defer { readerEnded?() }
            while true {
                let message: [UInt8]?
                do {
                    message = try receive()
                } catch {
                    self?.fail(Errno.of(error))
                    return
                }
                guard let self else { return }
                guard let message else {
                    self.fail(.connectionReset)
                    return
                }
                self.dispatch(message)
            }
        }
        thread.name = "pvfs.9p.client"
        readerThread = thread
        thread.start()
    }

    /// A client over a connected stream socket (or pipe pair). Close `fd` with
    /// `NinePClient.closeSocket(_:)`, never with close(2) alone: the client's reader may still be
    /// about to read it, and would read whatever socket next gets the number.
    public convenience init(fileDescriptor fd: Int32, maximumMessageSize: Int = 16 << 20) {
        let framer = FramerBox(NinePMessageFramer(maximumMessageSize: maximumMessageSize))
        socketReaders.started(fd)
        self.init(send: { bytes in
            try bytes.withUnsafeBytes { raw in
                var done = 0
                while done < raw.count {
                    let n = Glibc.send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL))
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw Errno(rawValue: errno)
                    }
                    done += n
                }
            }
        }, receive: {
            try framer.next(from: fd)
        }, readerEnded: {
            socketReaders.ended(fd)
        })
    }

    /// Ends a client's connection and closes its socket once no reader of the socket is left.
    public static func closeSocket(_ fd: Int32) {
        shutdown(fd, Int32(SHUT_RDWR))
        socketReaders.waitUntilNoReader(fd)
        Glibc.close(fd)
    }

    /// Problems seen in the server's replies: undecodable messages, replies to unknown tags.
    public var violations: [String] {
        lock.lock()
        defer { lock.unlock() }
        return violationList
    }

    private func fail(_ error: Errno) {
        lock.lock()
        closedError = error
        let waiting = Array(pending.values)
        pending.removeAll()
        let n = received
        lock.unlock()
        for p in waiting { p.resolve(nil, error, sequence: n) }
    }

    private func dispatch(_ message: [UInt8]) {
        let decoded: (tag: UInt16, response: NinePResponse)
        do {
            decoded = try NinePResponse.decode(message)
        } catch {
            let tag = NinePHeader(message)?.tag
            lock.lock()
            violationList.append("undecodable reply (tag \(tag.map(String.init) ?? "?")): \(error)")
            let p = tag.flatMap { pending.removeValue(forKey: $0) }
            received += 1
            let n = received
            lock.unlock()
            p?.resolve(nil, .badMessage, sequence: n)
            return
        }
        lock.lock()
        received += 1
        let n = received
        guard let p = pending.removeValue(forKey: decoded.tag) else {
            violationList.append("reply \(decoded.response.type) to tag \(decoded.tag), which has no request")
            lock.unlock()
            return
        }
        if !Self.matches(p.request, decoded.response) {
            violationList.append("reply \(decoded.response.type) to \(p.request.type) (tag \(decoded.tag))")
        }
        lock.unlock()
        p.resolve(decoded.response, nil, sequence: n)
    }

    private static func matches(_ request: NinePRequest, _ response: NinePResponse) -> Bool {
        if case .error = response { return true }
        return response.type.rawValue == request.type.rawValue + 1
    }

    /// Sends a request with a fresh tag (or `tag`), without waiting for its reply.
    @discardableResult
    public func start(_ request: NinePRequest, tag: UInt16? = nil) throws(Errno) -> Pending {
        lock.lock()
        if let closedError {
            lock.unlock()
            throw closedError
        }
        var chosen: UInt16
        if let tag {
            chosen = tag
        } else {
            repeat {
                chosen = nextTag
                nextTag = nextTag == NineP.noTag - 1 ? 0 : nextTag + 1
            } while pending[chosen] != nil
        }
        if case .version = request { chosen = tag ?? NineP.noTag }
        let p = Pending(tag: chosen, request: request)
        pending[chosen] = p
        lock.unlock()
        do {
            try send(request.encode(tag: chosen))
        } catch {
            lock.lock()
            if pending[chosen] === p { pending[chosen] = nil }
            lock.unlock()
            throw Errno.of(error)
        }
        return p
    }

    /// Sends raw bytes (tests of malformed input). A reply to `expectingTag` is awaited with the
    /// returned Pending, whose request is recorded as `claimed`.
    public func startRaw(_ bytes: [UInt8], expectingTag tag: UInt16, claimed: NinePRequest = .clunk(fid: NineP.noFid)) throws(Errno) -> Pending {
        let p = Pending(tag: tag, request: claimed)
        lock.lock()
        pending[tag] = p
        lock.unlock()
        do {
            try send(bytes)
        } catch {
            throw Errno.of(error)
        }
        return p
    }

    /// Forgets a request that will not be answered (it was flushed), freeing its tag.
    public func abandon(_ p: Pending) {
        lock.lock()
        if pending[p.tag] === p { pending[p.tag] = nil }
        lock.unlock()
    }

    /// Sends a request and waits for its reply; Rlerror becomes a thrown Errno.
    public func call(_ request: NinePRequest, timeout: Double = 30) throws(Errno) -> NinePResponse {
        let response = try start(request).wait(timeout: timeout)
        if case .error(let errno) = response { throw Errno(rawValue: Int32(bitPattern: errno)) }
        return response
    }

    /// Flushes a pending request: sends Tflush, waits for Rflush, and reports whether the
    /// request's own reply arrived first (it must never arrive after).
    public func flush(_ p: Pending, timeout: Double = 30) throws(Errno) -> Bool {
        let f = try start(.flush(oldTag: p.tag))
        let response = try f.wait(timeout: timeout)
        guard case .flush = response else { throw Errno.badMessage }
        if p.isAnswered {
            if p.sequence > f.sequence {
                lock.lock()
                violationList.append("reply to flushed tag \(p.tag) after its Rflush")
                lock.unlock()
            }
            return true
        }
        abandon(p)
        return false
    }

    private func expect<T>(_ response: NinePResponse, _ extract: (NinePResponse) -> T?) throws(Errno) -> T {
        guard let value = extract(response) else { throw Errno.badMessage }
        return value
    }

    // MARK: Conveniences, one per message

    public func version(msize: UInt32 = 1 << 20, version: String = "9P2000.L") throws(Errno) -> (msize: UInt32, version: String) {
        let r = try call(.version(msize: msize, version: Array(version.utf8)))
        return try expect(r) { if case .version(let m, let v) = $0 { (m, String(decoding: v, as: UTF8.self)) } else { nil } }
    }

    public func attach(fid: UInt32, aname: String = "", uname: String = "", uid: UInt32 = 0) throws(Errno) -> NinePQid {
        let r = try call(.attach(fid: fid, afid: NineP.noFid, uname: Array(uname.utf8), aname: Array(aname.utf8), uid: uid))
        return try expect(r) { if case .attach(let q) = $0 { q } else { nil } }
    }

    public func walk(fid: UInt32, newFid: UInt32, _ names: [String]) throws(Errno) -> [NinePQid] {
        let r = try call(.walk(fid: fid, newFid: newFid, names: names.map { Array($0.utf8) }))
        return try expect(r) { if case .walk(let q) = $0 { q } else { nil } }
    }

    /// Walks a slash-separated path (16 names at most).
    public func walk(fid: UInt32, newFid: UInt32, path: String) throws(Errno) -> [NinePQid] {
        try walk(fid: fid, newFid: newFid, path.split(separator: "/").map(String.init))
    }

    public func lopen(fid: UInt32, flags: UInt32) throws(Errno) -> (qid: NinePQid, iounit: UInt32) {
        let r = try call(.lopen(fid: fid, flags: flags))
        return try expect(r) { if case .lopen(let q, let i) = $0 { (q, i) } else { nil } }
    }

    public func lcreate(fid: UInt32, name: String, flags: UInt32, mode: UInt32, gid: UInt32 = 0) throws(Errno) -> NinePQid {
        let r = try call(.lcreate(fid: fid, name: Array(name.utf8), flags: flags, mode: mode, gid: gid))
        return try expect(r) { if case .lcreate(let q, _) = $0 { q } else { nil } }
    }

    public func read(fid: UInt32, offset: UInt64, count: UInt32) throws(Errno) -> [UInt8] {
        let r = try call(.read(fid: fid, offset: offset, count: count))
        return try expect(r) { if case .read(let d) = $0 { Array(d) } else { nil } }
    }

    public func write(fid: UInt32, offset: UInt64, _ data: [UInt8]) throws(Errno) -> UInt32 {
        let r = try call(.write(fid: fid, offset: offset, data: data[...]))
        return try expect(r) { if case .write(let n) = $0 { n } else { nil } }
    }

    public func clunk(fid: UInt32) throws(Errno) {
        _ = try call(.clunk(fid: fid))
    }

    public func remove(fid: UInt32) throws(Errno) {
        _ = try call(.remove(fid: fid))
    }

    public func statfs(fid: UInt32) throws(Errno) -> NinePStatfs {
        let r = try call(.statfs(fid: fid))
        return try expect(r) { if case .statfs(let s) = $0 { s } else { nil } }
    }

    public func symlink(fid: UInt32, name: String, target: String, gid: UInt32 = 0) throws(Errno) -> NinePQid {
        let r = try call(.symlink(fid: fid, name: Array(name.utf8), target: Array(target.utf8), gid: gid))
        return try expect(r) { if case .symlink(let q) = $0 { q } else { nil } }
    }

    public func mknod(dfid: UInt32, name: String, mode: UInt32, major: UInt32 = 0, minor: UInt32 = 0, gid: UInt32 = 0) throws(Errno) -> NinePQid {
        let r = try call(.mknod(dfid: dfid, name: Array(name.utf8), mode: mode, major: major, minor: minor, gid: gid))
        return try expect(r) { if case .mknod(let q) = $0 { q } else { nil } }
    }

    public func rename(fid: UInt32, dfid: UInt32, name: String) throws(Errno) {
        _ = try call(.rename(fid: fid, dfid: dfid, name: Array(name.utf8)))
    }

    public func readlink(fid: UInt32) throws(Errno) -> String {
        let r = try call(.readlink(fid: fid))
        return try expect(r) { if case .readlink(let t) = $0 { String(decoding: t, as: UTF8.self) } else { nil } }
    }

    public func getattr(fid: UInt32, mask: NinePAttributeMask = .all) throws(Errno) -> NinePAttributes {
        let r = try call(.getattr(fid: fid, mask: mask))
        return try expect(r) { if case .getattr(let a) = $0 { a } else { nil } }
    }

    public func setattr(fid: UInt32, _ changes: NinePSetattr) throws(Errno) {
        _ = try call(.setattr(fid: fid, changes))
    }

    public func xattrwalk(fid: UInt32, newFid: UInt32, name: String) throws(Errno) -> UInt64 {
        let r = try call(.xattrwalk(fid: fid, newFid: newFid, name: Array(name.utf8)))
        return try expect(r) { if case .xattrwalk(let s) = $0 { s } else { nil } }
    }

    public func xattrcreate(fid: UInt32, name: String, size: UInt64, flags: UInt32) throws(Errno) {
        _ = try call(.xattrcreate(fid: fid, name: Array(name.utf8), size: size, flags: flags))
    }

    public func readdir(fid: UInt32, offset: UInt64, count: UInt32) throws(Errno) -> [NinePDirectoryEntry] {
        let r = try call(.readdir(fid: fid, offset: offset, count: count))
        let data = try expect(r) { if case .readdir(let d) = $0 { d } else { nil } }
        do {
            return try NinePDirectoryEntry.decodeAll(data)
        } catch {
            throw Errno.badMessage
        }
    }

    /// Every entry of an opened directory fid, paging with the offsets the server gives.
    public func readAllEntries(fid: UInt32, count: UInt32 = 8192) throws(Errno) -> [NinePDirectoryEntry] {
        var all: [NinePDirectoryEntry] = []
        var offset: UInt64 = 0
        while true {
            let page = try readdir(fid: fid, offset: offset, count: count)
            guard let last = page.last else { return all }
            all += page
            offset = last.offset
        }
    }

    public func fsync(fid: UInt32, datasync: Bool = false) throws(Errno) {
        _ = try call(.fsync(fid: fid, datasync: datasync ? 1 : 0))
    }

    public func lock(fid: UInt32, _ lock: NinePLock) throws(Errno) -> UInt8 {
        let r = try call(.lock(fid: fid, lock))
        return try expect(r) { if case .lock(let s) = $0 { s } else { nil } }
    }

    public func getlock(fid: UInt32, _ lock: NinePGetlock) throws(Errno) -> NinePGetlock {
        let r = try call(.getlock(fid: fid, lock))
        return try expect(r) { if case .getlock(let l) = $0 { l } else { nil } }
    }

    public func link(dfid: UInt32, fid: UInt32, name: String) throws(Errno) {
        _ = try call(.link(dfid: dfid, fid: fid, name: Array(name.utf8)))
    }

    public func mkdir(dfid: UInt32, name: String, mode: UInt32, gid: UInt32 = 0) throws(Errno) -> NinePQid {
        let r = try call(.mkdir(dfid: dfid, name: Array(name.utf8), mode: mode, gid: gid))
        return try expect(r) { if case .mkdir(let q) = $0 { q } else { nil } }
    }

    public func renameat(oldDirFid: UInt32, oldName: String, newDirFid: UInt32, newName: String) throws(Errno) {
        _ = try call(.renameat(oldDirFid: oldDirFid, oldName: Array(oldName.utf8), newDirFid: newDirFid, newName: Array(newName.utf8)))
    }

    public func unlinkat(dirFid: UInt32, name: String, flags: UInt32 = 0) throws(Errno) {
        _ = try call(.unlinkat(dirFid: dirFid, name: Array(name.utf8), flags: flags))
    }
}

/// A framer reading from a descriptor, for `NinePClient(fileDescriptor:)`.
/// Sockets with a client reader still running, so that closing one can wait for its readers.
private final class SocketReaders: @unchecked Sendable {
    private let condition = NSCondition()
    private var readers: [Int32: Int] = [:]

    func started(_ fd: Int32) {
        condition.lock()
        readers[fd, default: 0] += 1
        condition.unlock()
    }

    func ended(_ fd: Int32) {
        condition.lock()
        readers[fd, default: 1] -= 1
        if readers[fd] == 0 { readers[fd] = nil }
        condition.broadcast()
        condition.unlock()
    }

    /// After shutdown(2) every reader's recv returns at once, so this wait is short.
    func waitUntilNoReader(_ fd: Int32) {
        condition.lock()
        while readers[fd] != nil { condition.wait() }
        condition.unlock()
    }
}

private let socketReaders = SocketReaders()

private final class FramerBox: @unchecked Sendable {
    private var framer: NinePMessageFramer
    private var scratch = [UInt8](repeating: 0, count: 65536)

    init(_ framer: NinePMessageFramer) {
        self.framer = framer
    }

    func next(from fd: Int32) throws -> [UInt8]? {
        while true {
            if let message = try framer.next() { return message }
            let n = scratch.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Errno(rawValue: errno)
            }
            if n == 0 { return nil }
            scratch.withUnsafeBytes { framer.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }
}
