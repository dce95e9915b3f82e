import Foundation
import Glibc
import PVFS9PCodec
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFS9P
@testable import PVFSEngine

/// One connection cannot grow the server without bound nor crash it: chains of flushes,
/// attaches that are never clunked, floods of Tflush.
@Suite("9P server: limits of one connection")
struct ConnectionLimitTests {
    /// 5,000 Tflush, each flushing the one before, behind a Tlock waiting for a lock; then the
    /// lock is released. The chain unwinds without recursion (it used to take pvfsd down with
    /// SIGSEGV), every Tflush gets its Rflush in order, the flushed Tlock gets none, and the
    /// connection never holds more than its Tflush budget meanwhile (the client is slowed).
    @Test func flushChainBehindABlockedLock() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        try openHostname(c, 1)
        try openHostname(c, 2)
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1)) == NinePLockStatus.success)
        let waiting = try c.start(.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)))
        Thread.sleep(forTimeInterval: 0.1)

        let connection = s.connection
        let peak = PeakSampler { connection.outstandingRequestCount }
        var chain: [NinePClient.Pending] = []
        var previous = waiting.tag
        for _ in 0..<5000 {
            let flush = try c.start(.flush(oldTag: previous))
            chain.append(flush)
            previous = flush.tag
        }
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.unlock, pid: 1)) == NinePLockStatus.success)
        var lastSequence = -1
        for flush in chain {
            #expect(try flush.wait(timeout: 60) == .flush)
            #expect(flush.sequence > lastSequence)
            lastSequence = flush.sequence
        }
        peak.stop()
        #expect(!waiting.isAnswered)
        c.abandon(waiting)
        #expect(c.violations.isEmpty, "\(c.violations.prefix(3))")
        #expect(s.connection.outstandingRequestCount == 0)
        // Alive and serving; the flushed lock was not taken.
        #expect(try c.getattr(fid: 0).qid.path == rootInode)
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 3)) == NinePLockStatus.success)
        #expect(peak.value <= 2 + NinePConfiguration().maximumOutstandingFlushes, "peak \(peak.value)")
    }

    /// A client that floods Tflush is held back at its budget (the transport stops reading),
    /// not answered with errors; a client that flushes flushes it cannot see end is not stuck.
    @Test func tflushFloodIsBoundedByBackPressure() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        config.maximumOutstandingFlushes = 4
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        try openHostname(c, 1)
        try openHostname(c, 2)
        _ = try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1))
        let waiting = try c.start(.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)))
        Thread.sleep(forTimeInterval: 0.1)
        let connection = s.connection
        let peak = PeakSampler { connection.outstandingRequestCount }
        var flushes: [NinePClient.Pending] = []
        for _ in 0..<200 { flushes.append(try c.start(.flush(oldTag: waiting.tag))) }
        for f in flushes { #expect(try f.wait(timeout: 30) == .flush) }
        peak.stop()
        #expect(peak.value <= 1 + 4)
        c.abandon(waiting)
        #expect(c.violations.isEmpty)
        #expect(s.volume.counters.limits.hits(.outstandingFlushes) >= 1)
    }

    /// Each Tattach is a session until its last fid is clunked: 20,000 attach/clunk cycles
    /// leave one session (the first attach's), and every other ended and went back to the
    /// transport. Past `maximumSessions` an attach is refused with EUSERS.
    @Test func sessionsEndWithTheirLastFidAndAreBounded() throws {
        var config = NinePConfiguration()
        config.maximumSessions = 8
        let s = try ServedVM(configuration: config)
        let ended = Counter()
        s.connection.onSessionEnd = { _ in ended.add() }
        let c = s.client
        #expect(s.connection.sessionCount == 1)
        for _ in 0..<20_000 {
            _ = try c.attach(fid: 5, uid: 0)
            try c.clunk(fid: 5)
        }
        #expect(s.connection.sessionCount == 1)
        #expect(ended.value == 20_000)

        // A walk's clone keeps its session alive after the attach fid goes.
        _ = try c.attach(fid: 6, uid: 1000)
        _ = try c.walk(fid: 6, newFid: 7, path: "etc")
        try c.clunk(fid: 6)
        #expect(s.connection.sessionCount == 2)
        try c.clunk(fid: 7)
        #expect(s.connection.sessionCount == 1)

        for fid in UInt32(10)..<17 { _ = try c.attach(fid: fid, uid: 0) }
        #expect(s.connection.sessionCount == 8)
        #expect(throws: Errno.tooManyUsers) { _ = try c.attach(fid: 20, uid: 0) }
        #expect(s.volume.counters.limits.hits(.sessionsPerConnection) == 1)
        try c.clunk(fid: 10)
        _ = try c.attach(fid: 20, uid: 0)

        // A new Tversion ends every session of the old one; so does the connection's end.
        _ = try c.version(msize: 65536)
        #expect(s.connection.sessionCount == 0)
        #expect(ended.value == 20_000 + 1 + 1 + 8)
        _ = try c.attach(fid: 0, uid: 0)
        _ = try c.attach(fid: 1, uid: 0)
        s.finish()
        #expect(ended.value == 20_000 + 1 + 1 + 8 + 2)
    }

    /// The VM's limits reach the guest as the errno a local filesystem gives: EDQUOT at the
    /// inode quota derived from the byte quota, EMLINK, ENOLCK; and times past the catalog's
    /// range are clamped, not wrapped.
    @Test func engineLimitsReachTheGuestAsErrno() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        s.volume.setQuota(bytes: 16 << 20, inodes: nil)
        _ = try c.walk(fid: 0, newFid: 1, [])
        _ = try c.mkdir(dfid: 0, name: "fifos", mode: 0o755)
        _ = try c.walk(fid: 0, newFid: 2, path: "fifos")
        var limits = VolumeLimits()
        limits.linksPerInode = 3
        limits.lockRecordsPerSession = 20
        s.volume.metadataLimits = limits
        var made = 0
        var failure: Errno?
        while failure == nil && made < 2000 {
            do {
                _ = try c.mknod(dfid: 2, name: "p\(made)", mode: 0o010644)
                made += 1
            } catch {
                failure = error
            }
        }
        #expect(failure == .diskQuotaExceeded)
        #expect(s.volume.usage.inodes == 1024)
        #expect(try c.statfs(fid: 0).files == 1024)

        try c.unlinkat(dirFid: 2, name: "p0")
        try c.unlinkat(dirFid: 2, name: "p1")
        _ = try c.lcreate(fid: 1, name: "linked", flags: Dotl.rdwr, mode: 0o644)
        try c.link(dfid: 2, fid: 1, name: "l1")
        try c.link(dfid: 2, fid: 1, name: "l2")
        #expect(throws: Errno.tooManyLinks) { try c.link(dfid: 2, fid: 1, name: "l3") }

        var status: [UInt8] = []
        var lockFailure: Errno?
        for i in 0..<30 where lockFailure == nil {
            do {
                status.append(try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, start: UInt64(2 * i), length: 1, pid: 1)))
            } catch {
                lockFailure = error
            }
        }
        #expect(status.count == 20 && status.allSatisfy { $0 == NinePLockStatus.success })
        #expect(lockFailure == .noLocks)

        let far = NinePSetattr(valid: [.modificationTime, .modificationTimeSet], modificationTimeSeconds: UInt64(Int64.max),
                               modificationTimeNanoseconds: 0)
        try c.setattr(fid: 1, far)
        #expect(try c.getattr(fid: 1).modificationTimeSeconds == UInt64(Int64.max / 1_000_000_000 - 1))
        #expect(c.violations.isEmpty)
    }

    /// An attach refused after its session was made (another VM than the connection's) ends
    /// that session at once.
    @Test func refusedAttachEndsItsSession() throws {
        let s = try ServedVM()
        let other = try s.fixture.provision("vm2")
        defer { try? other.close() }
        s.resolver.add("vm2", other)
        let ended = Counter()
        s.connection.onSessionEnd = { _ in ended.add() }
        #expect(throws: Errno.permissionDenied) { _ = try s.client.attach(fid: 9, aname: "vm2", uid: 0) }
        #expect(ended.value == 1)
        #expect(s.connection.sessionCount == 1)
        // A fid number in use: the new session never gets a fid.
        #expect(throws: Errno.invalidArgument) { _ = try s.client.attach(fid: 0, uid: 0) }
        #expect(s.connection.sessionCount == 1)
        s.finish()
        #expect(ended.value == 2)
    }
}

/// Polls a value on a thread of its own and keeps the largest seen.
final class PeakSampler: @unchecked Sendable {
    private let lock = NSLock()
    private var peak = 0
    private var running = true
    private let done = DispatchSemaphore(value: 0)

    init(_ sample: @escaping @Sendable () -> Int) {
        let thread = Thread { [self] in
            while true {
                let v = sample()
                lock.lock()
                peak = max(peak, v)
                let go = running
                lock.unlock()
                if !go { break }
                usleep(200)
            }
            done.signal()
        }
        thread.start()
    }

    func stop() {
        lock.lock()
        running = false
        lock.unlock()
        done.wait()
    }

    var value: Int {
        lock.lock()
        defer { lock.unlock() }
        return peak
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}
