import Foundation
import PVFS9PCodec
import PVFSEngine
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFS9P

/// A request handed straight to a session, the way a connection hands one over, with no
/// transport and no scheduling: it records what the session asks of its scheduler.
final class DirectRequest: NinePRequestContext, @unchecked Sendable {
    let tag: UInt16
    let fids: FidTable
    let messageSize: Int
    private let lock = NSLock()
    private var cancelled = false
    private var deferredReply: [UInt8]??
    private(set) var boundVM: String?
    private(set) var blockedWaits = 0
    private let completed = DispatchSemaphore(value: 0)

    init(tag: UInt16, fids: FidTable, messageSize: Int = 65536) {
        self.tag = tag
        self.fids = fids
        self.messageSize = messageSize
    }

    var isCancelled: Bool { lock.withLock { cancelled } }
    func cancel() { lock.withLock { cancelled = true } }
    func reserveBlockedWait() -> Bool { lock.withLock { blockedWaits += 1 }; return true }
    func releaseBlockedWait() { lock.withLock { blockedWaits -= 1 } }
    func bound(toVM name: String) { lock.withLock { boundVM = name } }

    func complete(_ reply: [UInt8]?) {
        lock.withLock { deferredReply = .some(reply) }
        completed.signal()
    }

    /// The reply of a deferred request (nil: it ended without one); throws when none came in time.
    func awaitCompletion(seconds: Double = 10) throws -> [UInt8]? {
        guard completed.wait(timeout: .now() + seconds) == .success else { throw Errno.timedOut }
        return lock.withLock { deferredReply ?? nil }
    }
}

/// A session over a provisioned VM of `NinePFixture` (a `FixtureStore`), driven request by request.
final class SessionHarness {
    let fixture: NinePFixture
    let resolver: TestResolver
    let session: NinePSession
    private var nextTag: UInt16 = 1
    /// The VMs of the sessions that ended, in order.
    private let endedViews = Locked<[String]>([])

    init(configuration: NinePConfiguration = NinePConfiguration()) throws {
        fixture = try NinePFixture()
        resolver = TestResolver(["vm1": try fixture.provision("vm1")], defaultVM: "vm1")
        session = NinePSession(peer: NinePPeer(.local(remote: "test", local: "direct"), connectionID: 7),
                               configuration: configuration, logger: testLogger, resolver: resolver.resolver)
        session.onSessionEnd = { [endedViews] view in endedViews.withLock { $0.append(view.vmName) } }
    }

    var ended: [String] { endedViews.withLock { $0 } }

    func request(fids: FidTable? = nil) -> DirectRequest {
        nextTag &+= 1
        return DirectRequest(tag: nextTag, fids: fids ?? session.fids)
    }

    /// Runs one request to its reply and decodes it; the tag must be the request's.
    func send(_ message: NinePRequest, as request: DirectRequest? = nil) throws -> NinePResponse {
        let request = request ?? self.request()
        guard case .reply(let bytes) = session.handle(message, request) else { throw Errno.resourceBusy }
        let decoded = try NinePResponse.decode(bytes)
        #expect(decoded.tag == request.tag)
        return decoded.response
    }
}

@Suite("9P session: one request in, one reply out, without a transport")
struct SessionTests {
    @Test func attachWalkOpenRead() throws {
        let h = try SessionHarness()
        let attach = h.request()
        guard case .attach(let root) = try h.send(.attach(fid: 0, afid: NineP.noFid, uname: bytes("root"), aname: bytes("vm1"),
                                                          uid: 0), as: attach) else {
            Issue.record("no Rattach")
            return
        }
        #expect(root.path == 1)
        #expect(attach.boundVM == "vm1")
        #expect(h.session.sessionCount == 1)
        guard case .walk(let qids) = try h.send(.walk(fid: 0, newFid: 1, names: [bytes("etc"), bytes("hostname")])) else {
            Issue.record("no Rwalk")
            return
        }
        #expect(qids.map(\.path) == [2, 3])
        guard case .lopen = try h.send(.lopen(fid: 1, flags: 0)) else {
            Issue.record("no Rlopen")
            return
        }
        #expect(try h.send(.read(fid: 1, offset: 0, count: 4096)) == .read(data: ArraySlice(bytes("template-host\n"))))
        #expect(h.session.fidUsage.count == 2)
        #expect(try h.send(.clunk(fid: 1)) == .clunk)
        #expect(try h.send(.clunk(fid: 0)) == .clunk)
        // The last fid of the attach ends its session.
        #expect(h.session.sessionCount == 0)
        #expect(h.ended == ["vm1"])
    }

    @Test func errorsAreRlerror() throws {
        let h = try SessionHarness()
        #expect(try h.send(.walk(fid: 9, newFid: 10, names: [])) == .error(errno: LinuxErrno.EBADF))
        _ = try h.send(.attach(fid: 0, afid: NineP.noFid, uname: bytes("root"), aname: bytes("vm1"), uid: 0))
        #expect(try h.send(.walk(fid: 0, newFid: 1, names: [bytes("missing")])) == .error(errno: LinuxErrno.ENOENT))
        #expect(try h.send(.attach(fid: 2, afid: NineP.noFid, uname: [], aname: bytes("nonexistent"), uid: 0))
                == .error(errno: LinuxErrno.ENOENT))
        #expect(try h.send(.auth(afid: 1, uname: [], aname: [], uid: 0)) == .error(errno: LinuxErrno.EOPNOTSUPP))
        #expect(h.session.sessionCount == 1)
    }

    @Test func resetEndsTheOldTableAndRefusesItsAttaches() throws {
        let h = try SessionHarness()
        let old = h.session.fids
        _ = try h.send(.attach(fid: 0, afid: NineP.noFid, uname: bytes("root"), aname: bytes("vm1"), uid: 0))
        let tables = h.session.reset()
        #expect(tables.old === old)
        #expect(tables.new === h.session.fids)
        h.session.end(tables.old)
        #expect(h.ended == ["vm1"])
        #expect(h.session.sessionCount == 0)
        // An attach still running with the table of before the reset makes no session.
        let late = h.request(fids: old)
        #expect(try h.send(.attach(fid: 5, afid: NineP.noFid, uname: [], aname: bytes("vm1"), uid: 0), as: late)
                == .error(errno: LinuxErrno.EBADF))
        #expect(late.boundVM == nil)
        #expect(h.session.sessionCount == 0)
        #expect(h.ended == ["vm1", "vm1"])
        // The new table works.
        guard case .attach = try h.send(.attach(fid: 0, afid: NineP.noFid, uname: [], aname: bytes("vm1"), uid: 0)) else {
            Issue.record("no Rattach after reset")
            return
        }
        h.session.close()
        #expect(h.session.fidUsage.count == 0)
        #expect(h.ended.count == 3)
    }

    @Test func blockingLockIsDeferredAndCompletedThroughTheContext() throws {
        var configuration = NinePConfiguration()
        configuration.lockWaitSeconds = 30
        let h = try SessionHarness(configuration: configuration)
        _ = try h.send(.attach(fid: 0, afid: NineP.noFid, uname: bytes("root"), aname: bytes("vm1"), uid: 0))
        for fid: UInt32 in [1, 2] {
            _ = try h.send(.walk(fid: 0, newFid: fid, names: [bytes("etc"), bytes("hostname")]))
            _ = try h.send(.lopen(fid: fid, flags: 2))
        }
        #expect(try h.send(.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1, client: "a")))
                == .lock(status: NinePLockStatus.success))
        let waiting = h.request()
        let outcome = h.session.handle(.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true, client: "b")),
                                       waiting)
        guard case .deferred = outcome else {
            Issue.record("a conflicting blocking lock was answered at once")
            return
        }
        #expect(waiting.blockedWaits == 1)
        #expect(try h.send(.lock(fid: 1, lockRequest(NinePLockType.unlock, pid: 1, client: "a")))
                == .lock(status: NinePLockStatus.success))
        let reply = try #require(try waiting.awaitCompletion())
        #expect(try NinePResponse.decode(reply) == (waiting.tag, .lock(status: NinePLockStatus.success)))
        #expect(waiting.blockedWaits == 0)

        // A flushed wait ends without a reply and leaves no lock behind.
        let flushed = h.request()
        guard case .deferred = h.session.handle(.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1, block: true,
                                                                           client: "a")), flushed) else {
            Issue.record("a conflicting blocking lock was answered at once")
            return
        }
        flushed.cancel()
        #expect(try flushed.awaitCompletion() == nil)
        #expect(try h.send(.lock(fid: 2, lockRequest(NinePLockType.unlock, pid: 2, client: "b")))
                == .lock(status: NinePLockStatus.success))
        #expect(try h.send(.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1, client: "a")))
                == .lock(status: NinePLockStatus.success))
        h.session.close()
        #expect(h.ended == ["vm1"])
    }
}
