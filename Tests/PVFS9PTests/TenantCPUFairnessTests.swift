import Foundation
import PVFSSystem
import PVFSTestSupport
import Testing
@testable import PVFS9P

@Suite("9P: CPU fairness between tenants")
struct TenantCPUFairnessTests {
    typealias Tenant = NinePWorkerPool.Tenant
    static let window: UInt64 = 100_000_000

    /// A fairness whose windows the test drives: charges at times an hour ahead of the clock,
    /// so that the threads' own charges (at the real time) never end a window.
    final class Driven {
        let fairness: TenantCPUFairness
        private var now = TenantCPUFairness.monotonicNanoseconds() + 3600 * 1_000_000_000

        init(nice: Int32 = 20) {
            var settings = TenantCPUFairness.Settings()
            settings.demotedNice = nice
            fairness = TenantCPUFairness(settings: settings)
        }

        /// `windows` windows in which each tenant uses the given fraction of a CPU.
        func run(_ windows: Int, _ use: [Tenant: Double]) {
            for _ in 0..<windows {
                for (tenant, fraction) in use where fraction > 0 {
                    fairness.record(tenant, nanoseconds: UInt64(fraction * Double(TenantCPUFairnessTests.window)), at: now)
                }
                now += TenantCPUFairnessTests.window
                // A charge of nothing ends the window.
                fairness.record(.listener("clock"), nanoseconds: 0, at: now)
            }
        }
    }

    /// The scheduling policy of thread `id` of this process (field 41 of its stat).
    static func policy(ofThread id: Int32) -> Int {
        let text = (try? String(contentsOfFile: "/proc/self/task/\(id)/stat", encoding: .utf8)) ?? ""
        guard let close = text.lastIndex(of: ")") else { return -1 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 38 ? Int(fields[38]) ?? -1 : -1
    }

    /// Runs `body` on a thread of its own and waits for it.
    static func onThread(_ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        Thread { body(); done.signal() }.start()
        done.wait()
    }

    @Test func aTenantOverItsShareIsDemotedAndAnotherIsNot() {
        let d = Driven()
        let heavy = Tenant.vm("heavy"), light = Tenant.vm("light")
        d.run(10, [heavy: 0.9, light: 0.3])
        #expect(d.fairness.isDemoted(heavy) && !d.fairness.isDemoted(light))
        // Demoted, the heavy one gets little: what it got is no measure of what it wants, so
        // the light one, now using more than it, is not demoted in its place.
        d.run(10, [heavy: 0.02, light: 0.3])
        #expect(d.fairness.isDemoted(heavy) && !d.fairness.isDemoted(light))
        // Nothing at all for half a second: gone, promoted.
        d.run(6, [light: 0.3])
        #expect(!d.fairness.isDemoted(heavy) && !d.fairness.isDemoted(light))
        let usage = Dictionary(uniqueKeysWithValues: d.fairness.usage.map { ($0.tenant, $0) })
        #expect(usage[heavy]?.demotions == 1 && usage[light]?.demotions == 0)
        #expect(usage[heavy]?.cpuNanoseconds == 10 * 90_000_000 + 10 * 2_000_000)
    }

    @Test func aTenantAloneOrLightIsNeverDemoted() {
        let d = Driven()
        d.run(20, [.vm("alone"): 1.8])
        #expect(!d.fairness.isDemoted(.vm("alone")))
        // Below a tenth of a CPU nobody is demoted, whatever the ratio.
        d.run(20, [.vm("a"): 0.09, .vm("b"): 0.01])
        #expect(!d.fairness.isDemoted(.vm("a")))
    }

    /// A thread serving a demoted tenant runs at SCHED_IDLE, and at normal priority again as
    /// soon as it serves another tenant.
    @Test func threadsTakeTheirTenantsPriority() throws {
        let d = Driven()
        try #require(d.fairness.demotes, "this test needs CAP_SYS_NICE (root)")
        d.run(10, [.vm("heavy"): 0.9, .vm("light"): 0.2])
        let policies = Locked<[Int]>([])
        let fairness = d.fairness
        Self.onThread {
            let id = ThreadCPU.currentThreadID
            fairness.serve(.vm("heavy"))
            policies.withLock { $0.append(Self.policy(ofThread: id)) }
            fairness.serve(.vm("light"))
            policies.withLock { $0.append(Self.policy(ofThread: id)) }
        }
        #expect(policies.withLock { $0 } == [5, 0])   // SCHED_IDLE, SCHED_OTHER
    }

    /// With tenant-cpu-nice 0, CPU is accounted and nobody is demoted.
    @Test func accountingOnlyDemotesNobody() {
        let d = Driven(nice: 0)
        #expect(!d.fairness.demotes)
        d.run(10, [.vm("heavy"): 0.9, .vm("light"): 0.2])
        #expect(d.fairness.usage.count == 3 && d.fairness.usage.allSatisfy { !$0.isDemoted })
    }
}

