import Foundation
import PVFS9PCodec
import Testing
@testable import PVFS9P

@Suite("9P worker pool: fairness between tenants")
struct WorkerPoolTests {
    /// Records which tenant's jobs ran, in order; the pool's threads append to it.
    final class Log: @unchecked Sendable {
        private let lock = NSLock()
        private var entries: [String] = []
        func append(_ entry: String) { lock.lock(); entries.append(entry); lock.unlock() }
        var all: [String] { lock.lock(); defer { lock.unlock() }; return entries }
    }

    /// A submitter as a connection is: one job in flight, the next submitted when it finishes.
    final class Submitter: @unchecked Sendable {
        let pool: NinePWorkerPool
        let tenant: NinePWorkerPool.Tenant
        let label: String
        let log: Log
        let done: DispatchGroup
        private var left: Int

        init(pool: NinePWorkerPool, tenant: NinePWorkerPool.Tenant, label: String, jobs: Int, log: Log, done: DispatchGroup) {
            self.pool = pool
            self.tenant = tenant
            self.label = label
            self.log = log
            self.done = done
            left = jobs
            done.enter()
        }

        func submitNext() {
            pool.submit(for: tenant) { [self] in
                log.append(label)
                left -= 1
                if left > 0 { submitNext() } else { done.leave() }
            }
        }
    }

    /// Holds the pool's only thread until opened, so that everything submitted meanwhile queues.
    private func blockThread(_ pool: NinePWorkerPool) -> DispatchSemaphore {
        let gate = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        pool.submit(for: .listener("gate")) {
            started.signal()
            gate.wait()
        }
        started.wait()
        return gate
    }

    /// One tenant with ten submitters beside one with a single submitter: the pool takes their
    /// jobs in alternation, so the smaller tenant gets half the pool while it has work, not one
    /// eleventh (as a FIFO shared by submitters would give it).
    @Test func tenantsTakeTurnsWhateverTheirSubmitterCount() throws {
        let pool = NinePWorkerPool(threads: 1, name: "test.pool")
        defer { pool.shutdown() }
        let log = Log()
        let done = DispatchGroup()
        let gate = blockThread(pool)
        let abuser = (0..<10).map { Submitter(pool: pool, tenant: .vm("abuser"), label: "A\($0)", jobs: 50, log: log, done: done) }
        let victim = Submitter(pool: pool, tenant: .vm("victim"), label: "V", jobs: 50, log: log, done: done)
        for s in abuser { s.submitNext() }
        victim.submitNext()
        #expect(pool.queuedCount == 11)
        #expect(pool.queuedTenantCount == 2)
        gate.signal()
        #expect(done.wait(timeout: .now() + 30) == .success)
        let order = log.all
        #expect(order.count == 550)
        // The first 100 jobs alternate: abuser, victim, abuser, victim, ...
        let first = Array(order.prefix(100))
        let alternation = first.enumerated().allSatisfy { i, label in (i % 2 == 1) == (label == "V") }
        #expect(alternation, "\(first.prefix(24))")
        // Within the abuser, its submitters keep their order: they take turns.
        let abuserFirst = first.filter { $0 != "V" }.prefix(10)
        #expect(Array(abuserFirst) == (0..<10).map { "A\($0)" })
        // Entries of tenants are gone once their queues are empty.
        #expect(pool.queuedCount == 0)
        #expect(pool.queuedTenantCount == 0)
    }

    /// Jobs of one tenant run in the order submitted; tenants that join later join the ring
    /// at its back.
    @Test func firstInFirstOutWithinATenant() throws {
        let pool = NinePWorkerPool(threads: 1, name: "test.pool")
        let log = Log()
        let gate = blockThread(pool)
        for i in 0..<5 { pool.submit(for: .listener("tcp:a")) { log.append("a\(i)") } }
        for i in 0..<2 { pool.submit(for: .xenDomain(7)) { log.append("x\(i)") } }
        for i in 0..<3 { pool.submit(for: .vm("b")) { log.append("b\(i)") } }
        gate.signal()
        pool.shutdown()
        #expect(log.all == ["a0", "x0", "b0", "a1", "x1", "b1", "a2", "b2", "a3", "a4"])
    }

    /// After `shutdown()` work runs on the caller's thread, nothing is lost.
    @Test func afterShutdownWorkRunsOnTheCaller() {
        let pool = NinePWorkerPool(threads: 2, name: "test.pool")
        let log = Log()
        for i in 0..<100 { pool.submit(for: .vm("v\(i % 3)")) { log.append("\(i)") } }
        pool.shutdown()
        #expect(log.all.count == 100)
        let caller = pthread_self()
        pool.submit(for: .vm("late")) { log.append(pthread_equal(pthread_self(), caller) != 0 ? "caller" : "elsewhere") }
        #expect(log.all.last == "caller")
        #expect(pool.queuedTenantCount == 0)
    }

    /// A connection's tenant is its listener or Xen domain before an attach, never the
    /// client's address.
    @Test func tenantOfAPeer() {
        let tcp = NinePPeer(.tcp(remote: "10.0.2.15:43122", listener: "tcp:127.0.0.1:5640"), connectionID: 1)
        let other = NinePPeer(.tcp(remote: "10.0.2.16:1", listener: "tcp:127.0.0.1:5640"), connectionID: 2)
        #expect(NinePWorkerPool.Tenant(peer: tcp) == .listener("tcp:127.0.0.1:5640"))
        #expect(NinePWorkerPool.Tenant(peer: tcp) == NinePWorkerPool.Tenant(peer: other))
        let xen = NinePPeer(.xen(domainID: 7, deviceID: 1, domainName: "guest", vm: nil, tag: nil), connectionID: 3)
        #expect(NinePWorkerPool.Tenant(peer: xen) == .xenDomain(7))
    }
}
