import Foundation
import Glibc
import PVFSSystem
import Testing
@testable import PVFS9P

@Suite("9P: CPU fairness between tenants", .serialized)
struct TenantCPUFairnessTests {
    /// The scheduling policy of thread `id` of this process (field 41 of its stat).
    static func policy(ofThread id: Int32) -> Int {
        let text = (try? String(contentsOfFile: "/proc/self/task/\(id)/stat", encoding: .utf8)) ?? ""
        guard let close = text.lastIndex(of: ")") else { return -1 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // Fields from the third (state) on: policy is field 41, so index 38 here.
        return fields.count > 38 ? Int(fields[38]) ?? -1 : -1
    }

    /// Runs `body` on a thread of its own and waits for it.
    static func onThread(_ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        Thread { body(); done.signal() }.start()
        done.wait()
    }

    static func spin(seconds: Double) {
        let end = Date(timeIntervalSinceNow: seconds)
        var x: UInt64 = 1
        while Date() < end { for _ in 0..<10_000 { x = x &* 6364136223846793005 &+ 1 } }
        if x == 0 { print("") }
    }

    /// A tenant that takes far more CPU than another is demoted and its thread runs at
    /// SCHED_IDLE; the light one keeps normal priority; once the heavy one stops, it is
    /// promoted again, and a lone busy tenant is never demoted. CPU is accounted per tenant.
    @Test func aTenantOverItsShareIsDemotedAndPromotedBack() throws {
        var settings = TenantCPUFairness.Settings()
        settings.windowNanoseconds = 20_000_000
        let fairness = TenantCPUFairness(settings: settings)
        try #require(fairness.demotes, "this test needs CAP_SYS_NICE (root)")
        let heavy = NinePWorkerPool.Tenant.vm("heavy"), light = NinePWorkerPool.Tenant.vm("light")
        let heavyPolicy = Atomic(-1)
        let lightThread = Thread {
            let end = Date(timeIntervalSinceNow: 1.5)
            while Date() < end {
                fairness.serve(light)
                Self.spin(seconds: 0.003)
                fairness.charge()
                usleep(7_000)
            }
        }
        lightThread.start()
        Self.onThread {
            let end = Date(timeIntervalSinceNow: 1)
            while Date() < end {
                fairness.serve(heavy)
                Self.spin(seconds: 0.005)
                fairness.charge()
            }
            heavyPolicy.store(Self.policy(ofThread: ThreadCPU.currentThreadID))
        }
        #expect(fairness.isDemoted(heavy))
        #expect(!fairness.isDemoted(light))
        #expect(heavyPolicy.load() == 5 /* SCHED_IDLE */, "the heavy tenant's thread runs at SCHED_IDLE")
        let usage = Dictionary(uniqueKeysWithValues: fairness.usage.map { ($0.tenant, $0) })
        #expect((usage[heavy]?.cpuNanoseconds ?? 0) > 100_000_000)
        #expect((usage[light]?.cpuNanoseconds ?? 0) > 10_000_000 && (usage[light]?.cpuNanoseconds ?? 0) < (usage[heavy]?.cpuNanoseconds ?? 0))
        #expect((usage[heavy]?.demotions ?? 0) >= 1 && usage[light]?.demotions == 0)

        // The heavy tenant stopped: alone now, the light one keeps going, and the next thread
        // to serve the heavy one finds it promoted and runs at normal priority.
        Thread.sleep(forTimeInterval: 0.6)
        let promotedPolicy = Atomic(-1)
        Self.onThread {
            fairness.serve(heavy)
            Self.spin(seconds: 0.001)
            fairness.charge()
            promotedPolicy.store(Self.policy(ofThread: ThreadCPU.currentThreadID))
        }
        #expect(!fairness.isDemoted(heavy))
        #expect(promotedPolicy.load() == 0 /* SCHED_OTHER */)

        // Alone, a tenant may use all it wants.
        let alone = NinePWorkerPool.Tenant.listener("alone")
        Self.onThread {
            let end = Date(timeIntervalSinceNow: 0.5)
            while Date() < end {
                fairness.serve(alone)
                Self.spin(seconds: 0.005)
                fairness.charge()
            }
        }
        #expect(!fairness.isDemoted(alone))
    }

    /// With tenant-cpu-nice 0, CPU is accounted and nobody is demoted.
    @Test func accountingOnlyDemotesNobody() {
        var settings = TenantCPUFairness.Settings()
        settings.demotedNice = 0
        settings.windowNanoseconds = 10_000_000
        let fairness = TenantCPUFairness(settings: settings)
        #expect(!fairness.demotes)
        Self.onThread {
            for i in 0..<40 {
                fairness.serve(.vm(i % 4 == 0 ? "light" : "heavy"))
                Self.spin(seconds: 0.005)
                fairness.charge()
            }
        }
        #expect(fairness.usage.count == 2)
        #expect(fairness.usage.allSatisfy { !$0.isDemoted })
    }
}

/// An atomic Int without Synchronization's non-copyable type (captured by @Sendable closures).
final class Atomic: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Int
    init(_ value: Int) { self.value = value }
    func load() -> Int { lock.lock(); defer { lock.unlock() }; return value }
    func store(_ newValue: Int) { lock.lock(); value = newValue; lock.unlock() }
}
