import Foundation
import Logging
import PVFSSystem
import SystemPackage

/// pvfsd's CPU, shared fairly among its tenants (VMs, listeners, Xen domains).
///
/// Every thread that serves a tenant (a connection's reader and writer, a worker running one of
/// its requests) charges the CPU time it used to that tenant: it reads its own CPU clock each
/// time it starts serving a tenant and after each request. Every `window` the tenants' use is
/// compared: a tenant using more than `overShare` times its fair share, the mean use of the
/// tenants competing for pvfsd's CPU, is demoted, and the threads serving it run at `demotedNice`
/// until its use falls back to its share (with the default 0, nobody is demoted: CPU is accounted). Tenants under their share run at normal priority, so on a busy
/// machine their requests preempt the demoted tenant's at wakeup. A lone busy tenant is never
/// demoted (it uses its whole share), and a demoted one still gets every CPU nobody else wants:
/// nice and SCHED_IDLE lower a thread's weight (SCHED_IDLE to the least), they never stop it.
///
/// Threads switch priority only when the class of the tenant they serve changes (one
/// setpriority per change); accounting costs two reads of the thread's CPU clock and a short
/// lock per request.
public final class TenantCPUFairness: @unchecked Sendable {
    public typealias Tenant = NinePWorkerPool.Tenant

    public struct Settings: Sendable, Equatable {
        /// Nice value (1...19) of threads serving a tenant over its share, or 20 for SCHED_IDLE
        /// (any other runnable thread preempts them at wakeup; when the CPU is free they run as
        /// any other); 0, the default, accounts CPU without demoting anyone (demotion has not
        /// yet shown a gain, and can demote a victim in an abuser's place: docs/operations.md).
        public var demotedNice: Int32 = 0
        /// How often shares are compared.
        public var windowNanoseconds: UInt64 = 100_000_000
        /// A tenant is demoted above this multiple of its fair share, and promoted again below 1.
        public var overShare = 1.25
        /// Below this fraction of one CPU a tenant is never demoted (noise, an idle daemon).
        public var minimumCPUFraction = 0.1

        public init() {}
    }

    /// A tenant's CPU use and demotions, for metrics.
    public struct Usage: Sendable, Equatable {
        public var tenant: Tenant
        public var cpuNanoseconds: UInt64
        public var demotions: UInt64
        public var isDemoted: Bool
    }

    private struct Account {
        var total: UInt64 = 0
        var window: UInt64 = 0
        /// Decayed recent use, in nanoseconds per window.
        var recent: Double = 0
        /// What it would use: `recent`, or while demoted what it used before, decaying slowly.
        var demand: Double = 0
        var demoted = false
        var demotions: UInt64 = 0
        /// Windows without any use, to forget tenants gone for long.
        var idleWindows = 0
    }

    /// What a thread serving tenants remembers (thread-local).
    private final class ThreadState {
        let threadID = ThreadCPU.currentThreadID
        var lastCPU = ThreadCPU.currentThreadNanoseconds
        var tenant: Tenant?
        var nice: Int32 = 0
    }

    public let settings: Settings
    /// False when the threads' priority cannot be restored once lowered (no CAP_SYS_NICE and
    /// RLIMIT_NICE below 20): CPU is accounted, nobody is demoted.
    public let demotes: Bool
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var accounts: [Tenant: Account] = [:]
    private var windowStart: UInt64
    /// Windows of 100 ms without use after which a tenant's account is dropped (10 minutes).
    private static let forgetAfterIdleWindows = 6000
    /// Windows without any use after which a demoted tenant counts as gone (0.5 s).
    private static let goneAfterIdleWindows = 5
    /// Windows over which a demoted tenant's demand halves (2 s).
    private static let demandHalfLifeWindows = 20.0

    public init(settings: Settings = Settings(), logger: Logger? = nil) {
        var settings = settings
        settings.demotedNice = max(0, min(20, settings.demotedNice))
        settings.windowNanoseconds = max(1_000_000, settings.windowNanoseconds)
        self.settings = settings
        windowStart = Self.monotonicNanoseconds()
        if settings.demotedNice == 0 {
            demotes = false
        } else if let problem = Self.probeRestore(nice: settings.demotedNice) {
            demotes = false
            logger?.warning("""
                tenant CPU fairness: threads cannot get their priority back once lowered (\(problem)); CPU is accounted \
                per tenant but nobody is demoted. Run pvfsd as root, with CAP_SYS_NICE or RLIMIT_NICE 20.
                """)
        } else {
            demotes = true
        }
    }

    /// Lowers and restores the nice value of a scratch thread: whether demotion can be undone.
    private static func probeRestore(nice: Int32) -> String? {
        let result = Locked<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            let id = ThreadCPU.currentThreadID
            var error = ThreadCPU.setNice(nice, thread: id)
            if error == 0 { error = ThreadCPU.setNice(0, thread: id) }
            if error != 0 { result.set("\(Errno(rawValue: error))") }
            done.signal()
        }
        thread.start()
        done.wait()
        return result.get()
    }

    // MARK: Threads

    /// The calling thread serves `tenant` from now on: what it used since its last call is
    /// charged to the tenant it served then, and it runs at `tenant`'s priority.
    public func serve(_ tenant: Tenant) {
        moveThread(to: tenant)
    }

    /// Charges what the calling thread used since its last call to the tenant it serves, and
    /// updates its priority if that tenant was demoted or promoted meanwhile.
    public func charge() {
        guard let tenant = Self.threadState().tenant else { return }
        moveThread(to: tenant)
    }

    /// Charges what the calling thread used to the tenant it served, and runs it at normal
    /// priority again with no tenant: a pool worker between jobs takes the pool's shared lock,
    /// which it must not hold at a demoted tenant's priority.
    public func finish() {
        guard Self.threadState().tenant != nil else { return }
        moveThread(to: nil)
    }

    /// Charges the calling thread's CPU since its last call to the tenant it served, and makes it
    /// serve `next` (nil: nobody) at `next`'s priority.
    private func moveThread(to next: Tenant?) {
        let state = Self.threadState()
        let now = ThreadCPU.currentThreadNanoseconds
        let used = now &- state.lastCPU
        state.lastCPU = now
        lock.lock()
        if let previous = state.tenant { chargeLocked(previous, used) }
        let demoted = next.map { accounts[$0]?.demoted ?? false } ?? false
        lock.unlock()
        state.tenant = next
        apply(demoted, to: state)
    }

    private func apply(_ demoted: Bool, to state: ThreadState) {
        guard demotes else { return }
        let nice = demoted ? settings.demotedNice : 0
        guard nice != state.nice else { return }
        if ThreadCPU.setNice(nice, thread: state.threadID) == 0 { state.nice = nice }
    }

    // MARK: Accounting

    /// Charges `nanoseconds` to `tenant` at monotonic time `now` (tests drive the windows with it).
    func record(_ tenant: Tenant, nanoseconds: UInt64, at now: UInt64) {
        lock.lock()
        chargeLocked(tenant, nanoseconds, now: now)
        lock.unlock()
    }

    private func chargeLocked(_ tenant: Tenant, _ nanoseconds: UInt64, now: UInt64 = monotonicNanoseconds()) {
        accounts[tenant, default: Account()].total &+= nanoseconds
        accounts[tenant, default: Account()].window &+= nanoseconds
        let elapsed = now &- windowStart
        if now > windowStart && elapsed >= settings.windowNanoseconds {
            compareSharesLocked(windows: elapsed / settings.windowNanoseconds)
            windowStart = now
        }
    }

    /// Ends a window: demotes the tenants over their share and promotes those back under it.
    ///
    /// A tenant's demand is its use, smoothed (halved each window); while it is demoted its use
    /// says how little it got, not what it wants, so its demand then only decays slowly (halves
    /// every `demandHalfLifeWindows`), and the tenants under their share are not demoted for
    /// using more than a throttled one. The share is the mean demand of the tenants competing
    /// (using at least `minimumCPUFraction` of a CPU); lighter tenants are never demoted. A
    /// demoted tenant that used nothing for `goneAfterIdleWindows` has gone and is promoted;
    /// one that keeps taking little is promoted when its demand has decayed below the share
    /// (seconds), and demoted again if it then takes more.
    private func compareSharesLocked(windows: UInt64) {
        let decay = pow(0.5, Double(min(windows, 64)))
        let slowDecay = pow(0.5, Double(min(windows, 1 << 20)) / Self.demandHalfLifeWindows)
        let floor = Double(settings.windowNanoseconds) * settings.minimumCPUFraction
        var total = 0.0
        var competing = 0
        for (tenant, var account) in accounts {
            // The window's use spread over the windows that passed, as nanoseconds per window.
            let used = Double(account.window) / Double(max(1, windows))
            account.recent = account.recent * decay + used * (1 - decay)
            account.demand = account.demoted ? max(account.recent, account.demand * slowDecay) : account.recent
            account.idleWindows = account.window == 0 ? account.idleWindows + Int(min(windows, 1 << 20)) : 0
            account.window = 0
            if account.idleWindows > Self.forgetAfterIdleWindows {
                accounts[tenant] = nil
                continue
            }
            if account.idleWindows >= Self.goneAfterIdleWindows {
                // Nothing at all for a while: gone, not starved (a starved thread still gets
                // the CPU others leave between their requests).
                account.demand = account.recent
            }
            accounts[tenant] = account
            if account.demand >= floor {
                total += account.demand
                competing += 1
            }
        }
        let fairShare = competing > 0 ? total / Double(competing) : 0
        for (tenant, var account) in accounts {
            let over = demotes && competing > 1 && account.demand >= floor && account.demand > fairShare * settings.overShare
            let under = competing <= 1 || account.demand < fairShare
            if over && !account.demoted {
                account.demoted = true
                account.demotions += 1
            } else if under && account.demoted {
                account.demoted = false
            } else {
                continue
            }
            accounts[tenant] = account
        }
    }

    /// Every tenant's CPU use so far (tenants idle for ten minutes are forgotten).
    public var usage: [Usage] {
        lock.lock()
        defer { lock.unlock() }
        return accounts.map { Usage(tenant: $0.key, cpuNanoseconds: $0.value.total, demotions: $0.value.demotions,
                                    isDemoted: $0.value.demoted) }
            .sorted { $0.tenant.description < $1.tenant.description }
    }

    /// Whether `tenant` is demoted now (for tests).
    public func isDemoted(_ tenant: Tenant) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return accounts[tenant]?.demoted ?? false
    }

    // MARK: Thread-local state

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { pointer in
            guard let pointer else { return }
            Unmanaged<ThreadState>.fromOpaque(pointer).release()
        }
        return key
    }()

    private static func threadState() -> ThreadState {
        if let pointer = pthread_getspecific(key) {
            return Unmanaged<ThreadState>.fromOpaque(pointer).takeUnretainedValue()
        }
        let state = ThreadState()
        pthread_setspecific(key, Unmanaged.passRetained(state).toOpaque())
        return state
    }

    static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) &* 1_000_000_000 &+ UInt64(t.tv_nsec)
    }
}

/// A value behind a lock, for a scratch thread's result.
private final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func get() -> Value { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ newValue: Value) { lock.lock(); value = newValue; lock.unlock() }
}
