import Foundation
import PVFS9PCodec
import PVFSTestSupport
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

    /// A clock that moves only when a job says how long it took: the pool's order then does
    /// not depend on how fast the machine runs the test.
    final class TestClock: @unchecked Sendable {
        private let lock = NSLock()
        private var now: UInt64 = 1_000_000_000
        func read() -> UInt64 { lock.lock(); defer { lock.unlock() }; return now }
        func advance(_ nanoseconds: UInt64) { lock.lock(); now += nanoseconds; lock.unlock() }
    }

    /// A pool of one thread on a test clock.
    static func clockedPool(threads: Int = 1) -> (NinePWorkerPool, TestClock) {
        let clock = TestClock()
        return (NinePWorkerPool(threads: threads, name: "test.pool", clock: { clock.read() }), clock)
    }

    /// A submitter as a connection is: one job in flight, the next submitted when it finishes.
    final class Submitter: @unchecked Sendable {
        let pool: NinePWorkerPool
        let tenant: NinePWorkerPool.Tenant
        let label: String
        let log: Log
        let done: DispatchGroup
        /// Each job advances it by `cost` nanoseconds (its time on the thread).
        let clock: TestClock?
        let cost: UInt64
        private var left: Int

        init(pool: NinePWorkerPool, tenant: NinePWorkerPool.Tenant, label: String, jobs: Int, log: Log, done: DispatchGroup,
             clock: TestClock? = nil, cost: UInt64 = 10_000) {
            self.pool = pool
            self.tenant = tenant
            self.label = label
            self.log = log
            self.done = done
            self.clock = clock
            self.cost = cost
            left = jobs
            done.enter()
        }

        func submitNext() {
            pool.submit(for: tenant) { [self] in
                log.append(label)
                clock?.advance(cost)
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

    /// One tenant with ten submitters beside one with a single submitter, jobs of equal cost:
    /// the pool takes their jobs in alternation, so the smaller tenant gets half the pool while
    /// it has work, not one eleventh (as a FIFO shared by submitters would give it).
    @Test func tenantsTakeTurnsWhateverTheirSubmitterCount() throws {
        let (pool, clock) = Self.clockedPool()
        defer { pool.shutdown() }
        let log = Log()
        let done = DispatchGroup()
        let gate = blockThread(pool)
        let abuser = (0..<10).map { Submitter(pool: pool, tenant: .vm("abuser"), label: "A\($0)", jobs: 50, log: log, done: done, clock: clock) }
        let victim = Submitter(pool: pool, tenant: .vm("victim"), label: "V", jobs: 50, log: log, done: done, clock: clock)
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

    /// Jobs of one tenant run in the order submitted; tenants that join later, with the same
    /// virtual time, take their turns after those that came first.
    @Test func firstInFirstOutWithinATenant() throws {
        let (pool, clock) = Self.clockedPool()
        let log = Log()
        let gate = blockThread(pool)
        for i in 0..<5 { pool.submit(for: .listener("tcp:a")) { log.append("a\(i)"); clock.advance(10_000) } }
        for i in 0..<2 { pool.submit(for: .xenDomain(7)) { log.append("x\(i)"); clock.advance(10_000) } }
        for i in 0..<3 { pool.submit(for: .vm("b")) { log.append("b\(i)"); clock.advance(10_000) } }
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

    /// Fairness is by worker time, not by request count: a tenant whose jobs hold the thread
    /// 5 ms each gets about as much time as one whose jobs take 1 ms, so one fifth of the jobs.
    @Test func slowJobsAreChargedTheirWorkerTime() throws {
        let (pool, clock) = Self.clockedPool()
        defer { pool.shutdown() }
        let log = Log()
        let done = DispatchGroup()
        let gate = blockThread(pool)
        let slow = Submitter(pool: pool, tenant: .vm("slow"), label: "S", jobs: 100, log: log, done: done, clock: clock, cost: 5_000_000)
        let fast = Submitter(pool: pool, tenant: .vm("fast"), label: "F", jobs: 500, log: log, done: done, clock: clock, cost: 1_000_000)
        for s in [slow, fast] { s.submitNext() }
        gate.signal()
        #expect(done.wait(timeout: .now() + 30) == .success)
        // While both have work: 5 ms of slow for each 5 ms of fast.
        let first = log.all.prefix(300)
        let slowJobs = first.filter { $0 == "S" }.count, fastJobs = first.count - slowJobs
        let slowTime = Double(slowJobs) * 5, fastTime = Double(fastJobs) * 1
        #expect(abs(slowTime - fastTime) / (slowTime + fastTime) < 0.05, "slow \(slowJobs) jobs, fast \(fastJobs) jobs")
    }

    /// A tenant of weight 300 beside one of 100 (jobs of equal cost) gets three jobs of four;
    /// a weight set while their work is queued applies at once.
    @Test func weightsGiveSharesOfWorkerTime() throws {
        let (pool, clock) = Self.clockedPool()
        defer { pool.shutdown() }
        pool.setWeights([.vm("heavy"): 300, .vm("ignored"): 100, .vm("clamped"): 1_000_000])
        #expect(pool.weight(of: .vm("heavy")) == 300)
        #expect(pool.weight(of: .vm("light")) == NinePWorkerPool.defaultWeight)
        #expect(pool.weight(of: .vm("clamped")) == NinePWorkerPool.weightRange.upperBound)
        let log = Log()
        let done = DispatchGroup()
        let gate = blockThread(pool)
        let heavy = Submitter(pool: pool, tenant: .vm("heavy"), label: "H", jobs: 800, log: log, done: done, clock: clock)
        let light = Submitter(pool: pool, tenant: .vm("light"), label: "L", jobs: 800, log: log, done: done, clock: clock)
        for s in [heavy, light] { s.submitNext() }
        gate.signal()
        #expect(done.wait(timeout: .now() + 30) == .success)
        let first = log.all.prefix(400)
        let heavyJobs = first.filter { $0 == "H" }.count
        #expect((295...305).contains(heavyJobs), "heavy ran \(heavyJobs) of the first 400 jobs")
        // No entries stay behind for tenants without work, whatever their weights (the last
        // job may still be ending).
        #expect(eventually { pool.activeTenantCount == 0 && pool.statistics.isEmpty })
    }

    /// Polls `condition` for up to five seconds.
    private func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<500 {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }

    private func running(_ pool: NinePWorkerPool, _ tenant: NinePWorkerPool.Tenant) -> Int {
        pool.statistics.first { $0.tenant == tenant }?.running ?? 0
    }

    /// A tenant alone uses every thread; once another has work waiting, the freed threads go to
    /// the other until the first runs on at most half of them, and it gets them all back
    /// when the other has nothing left. Running jobs are never interrupted.
    @Test func aTenantRunsOnAtMostHalfThePoolWhileAnotherWaits() throws {
        let pool = NinePWorkerPool(threads: 4, maximumShare: 0.5, name: "test.pool")
        defer { pool.shutdown() }
        #expect(pool.sharedCap == 2)
        let releaseA = DispatchSemaphore(value: 0), releaseB = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        func submit(_ tenant: NinePWorkerPool.Tenant, _ release: DispatchSemaphore, count: Int) {
            for _ in 0..<count {
                done.enter()
                pool.submit(for: tenant) { release.wait(); done.leave() }
            }
        }
        submit(.vm("a"), releaseA, count: 12)
        #expect(eventually { running(pool, .vm("a")) == 4 }, "alone, a runs on every thread")
        submit(.vm("b"), releaseB, count: 4)
        #expect(pool.queuedTenantCount == 2)
        // Each job of a that ends frees a thread: b takes them until a is down to its cap.
        releaseA.signal()
        #expect(eventually { running(pool, .vm("b")) == 1 && running(pool, .vm("a")) == 3 })
        releaseA.signal()
        #expect(eventually { running(pool, .vm("b")) == 2 && running(pool, .vm("a")) == 2 })
        // Now at their caps, they share: a thread a frees goes back to a, b stays at two.
        for _ in 0..<3 {
            releaseA.signal()
            #expect(eventually { pool.statistics.first { $0.tenant == .vm("a") }.map { $0.running == 2 } ?? false })
            #expect(running(pool, .vm("b")) == 2)
        }
        // b's jobs end and it has none queued: a may use every thread again.
        for _ in 0..<4 { releaseB.signal() }
        #expect(eventually { running(pool, .vm("a")) == 4 && running(pool, .vm("b")) == 0 })
        for _ in 0..<12 { releaseA.signal() }
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(eventually { pool.activeTenantCount == 0 })
    }

    /// A tenant of the least weight beside a flood of the greatest, whose jobs sleep: the cap
    /// keeps threads free, so the light tenant's jobs start within a few of the flood's.
    @Test func noTenantStarvesBesideAFlood() throws {
        let pool = NinePWorkerPool(threads: 4, name: "test.pool")
        defer { pool.shutdown() }
        pool.setWeights([.vm("flood"): NinePWorkerPool.weightRange.upperBound, .vm("light"): NinePWorkerPool.weightRange.lowerBound])
        let stop = Locked(false)
        let flooders = DispatchGroup()
        for _ in 0..<16 {
            flooders.enter()
            @Sendable func next() {
                pool.submit(for: .vm("flood")) {
                    usleep(2_000)
                    if stop.withLock({ $0 }) { flooders.leave() } else { next() }
                }
            }
            next()
        }
        usleep(100_000)
        var waits: [Double] = []
        for _ in 0..<100 {
            let submitted = DispatchTime.now().uptimeNanoseconds
            let started = DispatchSemaphore(value: 0)
            let startedAt = Locked<UInt64>(0)
            pool.submit(for: .vm("light")) {
                startedAt.withLock { $0 = DispatchTime.now().uptimeNanoseconds }
                started.signal()
            }
            #expect(started.wait(timeout: .now() + 10) == .success)
            waits.append(Double(startedAt.withLock { $0 } &- submitted) / 1e6)
        }
        stop.withLock { $0 = true }
        #expect(flooders.wait(timeout: .now() + 10) == .success)
        waits.sort()
        // Its jobs never queue behind the flood's: a thread is free for it (scheduling noise only).
        #expect(waits[waits.count / 2] < 20, "median wait \(waits[waits.count / 2]) ms")
        #expect(eventually { pool.activeTenantCount == 0 })
    }

    /// Many tenants each with a job: every job runs, and no entry outlives its tenant's work.
    @Test func idleTenantsLeaveNoEntry() throws {
        let pool = NinePWorkerPool(threads: 3, name: "test.pool")
        let done = DispatchGroup()
        for i in 0..<5000 {
            done.enter()
            pool.submit(for: .vm("vm\(i % 1000)")) { done.leave() }
        }
        #expect(done.wait(timeout: .now() + 30) == .success)
        #expect(eventually { pool.activeTenantCount == 0 })
        #expect(pool.queuedCount == 0)
        pool.shutdown()
    }
}
