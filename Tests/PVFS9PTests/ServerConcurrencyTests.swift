import Foundation
import Glibc
import PVFS9PCodec
import PVFSEngineTestSupport
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFS9P
@testable import PVFSEngine

func lockRequest(_ type: UInt8, start: UInt64 = 0, length: UInt64 = 0, pid: UInt32, block: Bool = false,
                 client: String = "guest") -> NinePLock {
    NinePLock(type: type, flags: block ? NinePLockFlags.block : 0, start: start, length: length, processID: pid,
              clientID: bytes(client))
}

@Suite("9P server: locks, flush, concurrency")
struct ServerConcurrencyTests {
    @Test func posixLocks() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        try openHostname(c, 1)
        try openHostname(c, 2)
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, start: 10, length: 10, pid: 100)) == NinePLockStatus.success)
        // Another process sees the conflict; the holder does not conflict with itself.
        let conflict = try c.getlock(fid: 2, NinePGetlock(type: NinePLockType.readLock, start: 0, length: 0, processID: 200, clientID: bytes("guest")))
        #expect(conflict.type == NinePLockType.writeLock)
        #expect(conflict.start == 10 && conflict.length == 10 && conflict.processID == 100)
        let own = try c.getlock(fid: 1, NinePGetlock(type: NinePLockType.writeLock, start: 0, length: 0, processID: 100, clientID: bytes("guest")))
        #expect(own.type == NinePLockType.unlock)
        // Linux asks with UNLCK: answered as a test for any conflicting lock.
        let linux = try c.getlock(fid: 2, NinePGetlock(type: NinePLockType.unlock, start: 15, length: 1, processID: 200, clientID: bytes("guest")))
        #expect(linux.type == NinePLockType.writeLock)
        #expect(try c.getlock(fid: 2, NinePGetlock(type: NinePLockType.unlock, start: 20, length: 5, processID: 200, clientID: bytes("guest"))).type == NinePLockType.unlock)
        // F_SETLK of a conflicting range: BLOCKED at once.
        #expect(try c.lock(fid: 2, lockRequest(NinePLockType.readLock, start: 0, length: 11, pid: 200)) == NinePLockStatus.blocked)
        // The same pid from another client (guest hostname) is another owner.
        #expect(try c.lock(fid: 2, lockRequest(NinePLockType.readLock, start: 12, length: 1, pid: 100, client: "other")) == NinePLockStatus.blocked)
        #expect(try c.lock(fid: 2, lockRequest(NinePLockType.readLock, start: 20, length: 0, pid: 200)) == NinePLockStatus.success)
        // Unlock, then the other owner gets it.
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.unlock, start: 10, length: 10, pid: 100)) == NinePLockStatus.success)
        #expect(try c.lock(fid: 2, lockRequest(NinePLockType.writeLock, start: 0, length: 20, pid: 200)) == NinePLockStatus.success)
        // Bad types and ranges.
        #expect(throws: Errno.invalidArgument) { try c.lock(fid: 2, lockRequest(7, pid: 1)) }
        #expect(throws: Errno.invalidArgument) { try c.lock(fid: 2, lockRequest(NinePLockType.readLock, start: UInt64.max, length: 2, pid: 1)) }
        // Clunking the fid drops the locks taken through it.
        try c.clunk(fid: 2)
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 100)) == NinePLockStatus.success)
    }

    @Test func blockingLockWaitsForTheHolder() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        try openHostname(c, 1)
        try openHostname(c, 2)
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1)) == NinePLockStatus.success)
        let waiting = try c.start(.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)))
        Thread.sleep(forTimeInterval: 0.3)
        #expect(!waiting.isAnswered)
        // Other requests keep flowing meanwhile.
        #expect(try c.getattr(fid: 1).qid.path == 3)
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.unlock, pid: 1)) == NinePLockStatus.success)
        #expect(try waiting.wait(timeout: 5) == .lock(status: NinePLockStatus.success))
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.readLock, pid: 1)) == NinePLockStatus.blocked)
    }

    /// Linux waits for a Tlock reply uninterruptibly, so the server gives up after
    /// `lockWaitSeconds` and answers BLOCKED (the guest then sleeps interruptibly and retries).
    @Test func blockingLockWaitIsBounded() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = 0.3
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        try openHostname(c, 1)
        try openHostname(c, 2)
        _ = try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1))
        let started = Date()
        #expect(try c.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)) == NinePLockStatus.blocked)
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.25 && waited < 5)
        // Freed while a retry waits: granted at once.
        let retry = try c.start(.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)))
        Thread.sleep(forTimeInterval: 0.05)
        _ = try c.lock(fid: 1, lockRequest(NinePLockType.unlock, pid: 1))
        #expect(try retry.wait(timeout: 5) == .lock(status: NinePLockStatus.success))
        // No server-side wait at all: BLOCKED at once, as diod does.
        var none = NinePConfiguration()
        none.lockWaitSeconds = 0
        let t = try ServedVM(configuration: none)
        defer { t.finish() }
        try openHostname(t.client, 1)
        try openHostname(t.client, 2)
        _ = try t.client.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1))
        #expect(try t.client.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)) == NinePLockStatus.blocked)
    }

    /// Tflush of a Tlock waiting for a lock: the Rflush comes, the Rlock never does, and the
    /// flushed request leaves no lock behind.
    @Test func flushOfABlockedLock() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        try openHostname(c, 1)
        try openHostname(c, 2)
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1)) == NinePLockStatus.success)
        let waiting = try c.start(.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)))
        Thread.sleep(forTimeInterval: 0.2)
        #expect(s.connection.outstandingRequestCount == 1)
        let answeredFirst = try c.flush(waiting)
        #expect(!answeredFirst)
        #expect(s.connection.outstandingRequestCount == 0)
        // The old tag is free; the lock was not taken.
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.unlock, pid: 1)) == NinePLockStatus.success)
        Thread.sleep(forTimeInterval: 0.6)
        #expect(!waiting.isAnswered)
        let test = try c.getlock(fid: 1, NinePGetlock(type: NinePLockType.writeLock, start: 0, length: 0, processID: 3, clientID: bytes("guest")))
        #expect(test.type == NinePLockType.unlock)
        #expect(c.violations.isEmpty)
    }

    @Test func flushOfFinishedOrUnknownTags() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        // A tag not in flight: Rflush at once.
        #expect(try c.start(.flush(oldTag: 4321)).wait() == .flush)
        // A request that completes: its reply, then the Rflush, never the other way round.
        for _ in 0..<50 {
            let p = try c.start(.getattr(fid: 0, mask: .all))
            _ = try c.flush(p)
        }
        // Flushing a flush.
        try openHostname(c, 1)
        try openHostname(c, 2)
        _ = try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1))
        let waiting = try c.start(.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)))
        Thread.sleep(forTimeInterval: 0.1)
        let f1 = try c.start(.flush(oldTag: waiting.tag))
        let f2 = try c.start(.flush(oldTag: f1.tag))
        #expect(try f1.wait(timeout: 5) == .flush)
        #expect(try f2.wait(timeout: 5) == .flush)
        #expect(f1.sequence < f2.sequence)
        c.abandon(waiting)
        #expect(c.violations.isEmpty)
    }

    @Test func blockedLocksAreBounded() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        config.maximumBlockedLocks = 2
        let (s, waiting) = try lockedHostname(config, waiters: 2...3)
        defer { s.finish() }
        let c = s.client
        let waiters = Array(waiting.values)
        Thread.sleep(forTimeInterval: 0.2)
        // A third waiter is told BLOCKED (Linux then polls).
        #expect(try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 4, block: true)) == NinePLockStatus.blocked)
        for w in waiters { #expect(try !c.flush(w)) }
    }

    /// A blocked Tlock holds no thread while it waits (before, each waiter had a thread named
    /// pvfs.9p.lockwait), and every waiter is granted the lock in turn as its holder unlocks.
    @Test func blockedLocksHoldNoThread() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        config.maximumBlockedLocks = 64
        config.maximumOutstandingRequests = 128
        let (s, waiters) = try lockedHostname(config, waiters: 2...49)
        defer { s.finish() }
        let c = s.client
        Thread.sleep(forTimeInterval: 0.5)
        #expect(waiters.values.allSatisfy { !$0.isAnswered })
        #expect(threadsNamed(prefix: "pvfs.9p.lockwa") == 0, "a blocked lock holds a thread")
        // Unlock by the holder, then by each waiter as it is granted: everyone gets the lock once.
        var holder: UInt32 = 1
        var granted: Set<UInt32> = []
        while granted.count < waiters.count {
            _ = try c.lock(fid: 1, lockRequest(NinePLockType.unlock, pid: holder))
            let deadline = Date().addingTimeInterval(10)
            var next: UInt32?
            while next == nil && Date() < deadline {
                next = waiters.first { !granted.contains($0.key) && $0.value.isAnswered }?.key
                if next == nil { Thread.sleep(forTimeInterval: 0.005) }
            }
            let pid = try #require(next, "no waiter was granted the lock after pid \(holder) unlocked")
            #expect(try waiters[pid]!.wait(timeout: 5) == .lock(status: NinePLockStatus.success))
            // Only one waiter holds the write lock at a time.
            #expect(waiters.filter { !granted.contains($0.key) && $0.key != pid && $0.value.isAnswered }.isEmpty)
            granted.insert(pid)
            holder = pid
        }
        #expect(c.violations.isEmpty)
    }

    /// A served VM whose etc/hostname is open as fid 1 with a write lock of pid 1, and a blocking
    /// write-lock request of each pid in `waiters` sent behind it.
    private func lockedHostname(_ config: NinePConfiguration, waiters pids: ClosedRange<UInt32>)
        throws -> (ServedVM, [UInt32: NinePClient.Pending]) {
        let s = try ServedVM(configuration: config)
        let c = s.client
        try openHostname(c, 1)
        _ = try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1))
        var waiters: [UInt32: NinePClient.Pending] = [:]
        for pid in pids {
            waiters[pid] = try c.start(.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: pid, block: true)))
        }
        return (s, waiters)
    }

    /// Threads of this process whose name starts with `prefix` (Linux keeps 15 bytes of it).
    private func threadsNamed(prefix: String) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.filter { task in
            let name = (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? ""
            return name.hasPrefix(prefix)
        }.count
    }

    /// A client may send dependent requests without waiting: those on one fid run in order.
    @Test func pipelinedRequestsOnAFidRunInOrder() throws {
        let s = try ServedVM(threads: 4)
        defer { s.finish() }
        let c = s.client
        for round in 0..<20 {
            let base = UInt32(100 + round * 10)
            // Each step depends on the one before through fid `base` (or base + 1), and each
            // dependent step follows an exclusive one (a walk, an open, a clunk).
            let steps: [NinePRequest] = [
                .walk(fid: 0, newFid: base, names: []),
                .lcreate(fid: base, name: bytes("p\(round)"), flags: Dotl.rdwr, mode: 0o644, gid: 0),
                .write(fid: base, offset: 0, data: bytes("round \(round)")[...]),
                .clunk(fid: base),
                .walk(fid: 0, newFid: base, names: [bytes("p\(round)")]),
                .lopen(fid: base, flags: Dotl.rdonly),
                .read(fid: base, offset: 0, count: 100),
                .xattrwalk(fid: base, newFid: base + 1, name: []),
                .read(fid: base + 1, offset: 0, count: 100),
                .clunk(fid: base + 1),
                .clunk(fid: base),
            ]
            let pendings = try steps.map { try c.start($0) }
            let replies = try pendings.map { try $0.wait() }
            for (step, reply) in zip(steps, replies) {
                if case .error(let e) = reply { Issue.record("\(step.type) failed with \(e)") }
            }
            #expect(replies[6] == .read(data: bytes("round \(round)")[...]))
            #expect(replies[8] == .read(data: []))
        }
        #expect(s.connection.fidCount == 1)
    }

    /// Reads of one fid stay parallel; a clunk waits for them and a flush of a request that is
    /// held back behind a lock wait answers at once.
    @Test func fidOrderingAndFlush() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        try openHostname(c, 1)
        try openHostname(c, 2)
        _ = try c.lock(fid: 1, lockRequest(NinePLockType.writeLock, pid: 1))
        let waiting = try c.start(.lock(fid: 2, lockRequest(NinePLockType.writeLock, pid: 2, block: true)))
        Thread.sleep(forTimeInterval: 0.1)
        // Reads share fid 2 with the waiting lock: they run.
        #expect(text(try c.read(fid: 2, offset: 0, count: 100)) == "template-host\n")
        // A clunk of fid 2 must wait for the lock request...
        let clunk = try c.start(.clunk(fid: 2))
        Thread.sleep(forTimeInterval: 0.2)
        #expect(!clunk.isAnswered)
        // ...and a request behind it on fid 2 can be flushed at once.
        let behind = try c.start(.getattr(fid: 2, mask: .all))
        #expect(try !c.flush(behind))
        // Flushing the lock lets the clunk through.
        #expect(try !c.flush(waiting))
        #expect(try clunk.wait(timeout: 5) == .clunk)
        #expect(c.violations.isEmpty)
    }

    @Test func manyOutstandingRequests() throws {
        var config = NinePConfiguration()
        config.maximumOutstandingRequests = 16
        let s = try ServedVM(configuration: config, threads: 3)
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, path: "big")
        _ = try c.lopen(fid: 1, flags: Dotl.rdonly)
        let content = NinePFixture.bigContent()
        var pendings: [(UInt64, NinePClient.Pending)] = []
        // 500 requests in flight from the client's side; the server takes 16 at a time.
        for i in 0..<500 {
            let offset = UInt64(i * 577 % (NinePFixture.bigSize - 1000))
            pendings.append((offset, try c.start(.read(fid: 1, offset: offset, count: 1000))))
        }
        for (offset, p) in pendings {
            guard case .read(let data) = try p.wait() else { Issue.record("not an Rread"); continue }
            #expect(Array(data) == Array(content[Int(offset)..<(Int(offset) + 1000)]))
        }
        #expect(c.violations.isEmpty)
        #expect(s.connection.outstandingRequestCount == 0)
    }

    @Test func concurrentWritersAndReaders() throws {
        let s = try ServedVM(threads: 4)
        defer { s.finish() }
        let c = s.client
        let writers = 8
        DispatchQueue.concurrentPerform(iterations: writers) { w in
            do {
                let dir = UInt32(1000 + w * 10)
                _ = try c.walk(fid: 0, newFid: dir, [])
                _ = try c.lcreate(fid: dir, name: "w\(w)", flags: Dotl.rdwr, mode: 0o644)
                for k in 0..<50 {
                    let chunk = [UInt8](repeating: UInt8(w), count: 1000)
                    #expect(try c.write(fid: dir, offset: UInt64(k * 1000), chunk) == 1000)
                }
                #expect(try c.read(fid: dir, offset: 0, count: 60000) == [UInt8](repeating: UInt8(w), count: 50_000))
                try c.clunk(fid: dir)
            } catch {
                Issue.record("writer \(w): \(error)")
            }
        }
        for w in 0..<writers {
            #expect(try s.view().readWhole("w\(w)") == [UInt8](repeating: UInt8(w), count: 50_000))
        }
    }

    /// With every slot of the connection taken by lock waiters and slow requests, receive()
    /// holds the transport back instead of queueing without bound, and Tflush still gets in.
    @Test func backPressureBoundsOutstandingRequests() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        config.maximumOutstandingRequests = 4
        config.maximumBlockedLocks = 8
        let (s, waiting) = try lockedHostname(config, waiters: 2...4)
        defer { s.finish() }
        let c = s.client
        let waiters = Array(waiting.values)
        Thread.sleep(forTimeInterval: 0.2)
        // Blocked locks are capped below the outstanding limit, so requests still flow.
        #expect(s.connection.outstandingRequestCount <= 3)
        for _ in 0..<20 { _ = try c.getattr(fid: 1) }
        for w in waiters where !w.isAnswered { _ = try c.flush(w) }
        #expect(c.violations.isEmpty)
    }
}
