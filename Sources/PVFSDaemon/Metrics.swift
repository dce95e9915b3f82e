import Foundation
import PVFS9P
import PVFSEngine
import PVFSTransport
import Prometheus

/// The daemon's metrics, written by swift-prometheus registries. The request-latency histograms
/// are recorded as requests complete (through swift-metrics timers the 9P connections hold) in
/// one long-lived registry; everything else is state that already lives elsewhere (volume
/// counters, usage, sessions, limits, the worker pool, CPU use), set into registries made for
/// each scrape and merged with the histograms into one page.
///
/// Why registries per scrape, and one per VM or tenant: swift-prometheus copies a family's
/// table of series each time it adds a series to it, so filling a family of N series in one
/// registry costs O(N²) (about 12 s for the first scrape of 4,000 VMs). A family has one
/// series per registry here (a handful where a VM's series also differ by limit), so a scrape
/// is O(series); and a registry that lives for one scrape lists exactly what exists then, with
/// nothing to unregister when a VM closes or a tenant goes.
public final class DaemonMetrics: @unchecked Sendable {
    /// The histograms of the request timers.
    public let registry = PrometheusCollectorRegistry()
    /// The swift-metrics factory over `registry`, with the latency buckets of the 9P timers.
    public let factory: PrometheusMetricsFactory
    /// Request latency per VM and per operation, for the 9P connections' configuration.
    public let requestTimers: NinePRequestTimers

    /// Serializes scrapes, so that concurrent scrapers cost one scrape's work at a time.
    private let scrapeLock = NSLock()

    public init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            NinePRequestTimers.vmLabel: NinePRequestTimers.bucketBounds,
            NinePRequestTimers.operationLabel: NinePRequestTimers.bucketBounds,
        ]
        self.factory = factory
        requestTimers = NinePRequestTimers(factory: factory)
    }

    /// The text exposition: `update` sets every state-derived series through the `Scrape` it is
    /// given, then the registries write them with the histograms, each family once.
    public func render(_ update: (Scrape) -> Void) -> String {
        scrapeLock.withLock {
            let scrape = Scrape()
            update(scrape)
            var page = ExpositionMerge()
            page.add(registry.emitToBuffer())
            for key in scrape.shardOrder {
                if let shard = scrape.shards[key] { page.add(shard.emitToBuffer()) }
            }
            return page.text
        }
    }

    /// One scrape's settings of state-derived series, in registries of its own: one per value of
    /// a series' `vm` or `tenant` label, one for series with neither.
    public final class Scrape {
        fileprivate var shards: [String: PrometheusCollectorRegistry] = [:]
        fileprivate var shardOrder: [String] = []

        init() {}

        private func shard(for labels: [(String, String)]) -> PrometheusCollectorRegistry {
            let key = labels.first(where: { $0.0 == "vm" || $0.0 == "tenant" }).map { "\($0.0)=\($0.1)" } ?? ""
            if let registry = shards[key] { return registry }
            let registry = PrometheusCollectorRegistry()
            shards[key] = registry
            shardOrder.append(key)
            return registry
        }

        private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
            // The whole name is the metric name: no namespace, subsystem or unit to join.
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }

        public func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = [], _ value: Double) {
            let registry = shard(for: labels)
            let gauge = labels.isEmpty ? registry.makeGauge(descriptor: Self.descriptor(name, help))
                : registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
            gauge.set(to: value)
        }

        public func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = [], _ value: Int64) {
            gauge(name, help, labels, Double(value))
        }

        /// A counter kept elsewhere: the scrape's is set to its total.
        public func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ total: UInt64) {
            let counter = shard(for: labels).makeCounter(descriptor: Self.descriptor(name, help), labels: labels)
            counter.increment(by: Int64(clamping: total))
        }

        public func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ total: Double) {
            let counter = shard(for: labels).makeCounter(descriptor: Self.descriptor(name, help), labels: labels)
            if total > 0 { counter.increment(by: total) }
        }
    }
}

/// Merges the text pages of several registries into one: each family's HELP and TYPE lines once
/// (from the first page that has the family), then its samples from every page in page order.
/// Families come out sorted by name. Linear in the pages' size.
struct ExpositionMerge {
    private var headers: [String: [UInt8]] = [:]
    private var samples: [String: [UInt8]] = [:]
    private var page = 0

    mutating func add(_ text: [UInt8]) {
        page += 1
        var headerPage: [String: Int] = [:]
        var family = ""
        var lineStart = 0
        while lineStart < text.count {
            var lineEnd = lineStart
            while lineEnd < text.count, text[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
            let line = text[lineStart..<lineEnd]
            lineStart = lineEnd + 1
            if line.isEmpty { continue }
            if let name = Self.headerFamily(line) {
                family = name
                if headers[name] == nil { headerPage[name] = page }
                if headerPage[name] == page {
                    headers[name, default: []].append(contentsOf: line)
                    headers[name, default: []].append(UInt8(ascii: "\n"))
                }
            } else {
                samples[family, default: []].append(contentsOf: line)
                samples[family, default: []].append(UInt8(ascii: "\n"))
            }
        }
    }

    /// The family a `# HELP NAME ...` or `# TYPE NAME ...` line describes.
    private static func headerFamily(_ line: ArraySlice<UInt8>) -> String? {
        let help = Array("# HELP ".utf8), type = Array("# TYPE ".utf8)
        guard line.starts(with: help) || line.starts(with: type) else { return nil }
        let nameStart = line.startIndex + help.count
        let nameEnd = line[nameStart...].firstIndex(of: UInt8(ascii: " ")) ?? line.endIndex
        return String(decoding: line[nameStart..<nameEnd], as: UTF8.self)
    }

    var text: String {
        var out: [UInt8] = []
        for name in Set(headers.keys).union(samples.keys).sorted() {
            out += headers[name] ?? []
            out += samples[name] ?? []
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The families of the daemon's state, as they are set into the registry at each scrape.
public enum Metrics {
    /// Per-VM counters and usage, the limits' settings and the limits reached.
    public static func record(into scrape: DaemonMetrics.Scrape, volumes: [Volume], sessions: [String: Int],
                              unboundLimits: LimitCounters? = nil,
                              connectionLimits: ConnectionLimits = ConnectionLimits(),
                              volumeLimits: VolumeLimits = VolumeLimits(),
                              transportLimits: DaemonConfiguration.Limits = DaemonConfiguration.Limits()) {
        let volumes = volumes.sorted(by: { $0.name < $1.name })
        func counter(_ name: String, _ help: String, _ value: (Volume) -> UInt64) {
            for volume in volumes { scrape.counter(name, help, [("vm", volume.name)], value(volume)) }
        }
        func gauge(_ name: String, _ help: String, _ value: (Volume) -> Int64) {
            for volume in volumes { scrape.gauge(name, help, [("vm", volume.name)], value(volume)) }
        }
        counter("pvfs_requests_total", "Requests served for a VM, all transports.") { UInt64($0.counters.snapshot.requests) }
        counter("pvfs_request_errors_total", "Requests answered with an error.") { UInt64($0.counters.snapshot.errors) }
        counter("pvfs_read_bytes_total", "File bytes read.") { UInt64($0.counters.snapshot.bytesRead) }
        counter("pvfs_written_bytes_total", "File bytes written.") { UInt64($0.counters.snapshot.bytesWritten) }
        counter("pvfs_copy_ups_total", "Template files copied into the VM's private area.") { UInt64($0.counters.snapshot.copyUps) }
        counter("pvfs_quota_refusals_total", "Operations refused with EDQUOT.") { UInt64($0.counters.snapshot.quotaRefusals) }
        gauge("pvfs_used_bytes", "Bytes charged to the VM.") { Int64($0.usage.bytes) }
        gauge("pvfs_used_inodes", "Inodes charged to the VM.") { Int64($0.usage.inodes) }
        gauge("pvfs_quota_bytes", "Byte quota (-1: none).") { Int64($0.limits.bytes ?? -1) }
        gauge("pvfs_quota_inodes", "Inode quota (-1: none).") { Int64($0.limits.inodes ?? -1) }
        gauge("pvfs_sessions", "Open client sessions.") { Int64(sessions[$0.name] ?? 0) }
        let held = Dictionary(volumes.map { ($0.name, $0.metadataUsage) }, uniquingKeysWith: { a, _ in a })
        gauge("pvfs_hard_links", "Hard links the VM added (bounded by vm-hard-links).") { Int64(held[$0.name]?.addedLinks ?? 0) }
        gauge("pvfs_xattr_bytes", "Bytes of extended attributes the VM holds (bounded by vm-xattr-bytes).") {
            Int64(held[$0.name]?.xattrBytes ?? 0)
        }
        gauge("pvfs_lock_records", "Lock records the VM's clients hold (bounded by vm-lock-records).") {
            Int64(held[$0.name]?.lockRecords ?? 0)
        }

        let hitsHelp = "Times a limit was reached, by VM (empty: a connection bound to no VM yet) and limit."
        for volume in volumes {
            let hits = volume.counters.limits.hits
            for limit in TenantLimit.allCases {
                scrape.counter("pvfs_limit_hits_total", hitsHelp, [("vm", volume.name), ("limit", limit.rawValue)],
                               UInt64(hits[limit] ?? 0))
            }
        }
        if let unboundLimits {
            let hits = unboundLimits.hits
            for limit in TenantLimit.allCases {
                scrape.counter("pvfs_limit_hits_total", hitsHelp, [("vm", ""), ("limit", limit.rawValue)], UInt64(hits[limit] ?? 0))
            }
        }

        let limitHelp = "The configured value of each limit (per tenant, connection or VM; seconds for timeouts; -1: none)."
        let v = volumeLimits
        let values: [(TenantLimit, Int64)] = [
            (.outstandingRequests, Int64(connectionLimits.outstandingRequests)),
            (.outstandingBytes, Int64(connectionLimits.outstandingBytes)),
            (.outstandingFlushes, Int64(connectionLimits.outstandingFlushes)),
            (.sessionsPerConnection, Int64(connectionLimits.sessions)),
            (.fidsPerConnection, Int64(connectionLimits.fids)),
            (.blockedLocks, Int64(connectionLimits.blockedLocks)),
            (.xattrBufferBytes, Int64(connectionLimits.xattrBufferBytes)),
            (.linksPerInode, Int64(v.linksPerInode)),
            (.hardLinks, v.hardLinks ?? -1),
            (.xattrsPerInode, Int64(v.xattrsPerInode)),
            (.xattrBytesPerInode, Int64(v.xattrBytesPerInode)),
            (.xattrBytes, v.xattrBytes),
            (.lockRecords, Int64(v.lockRecords)),
            (.lockRecordsPerSession, Int64(v.lockRecordsPerSession)),
        ]
        for (limit, value) in values {
            scrape.gauge("pvfs_limit", limitHelp, [("limit", limit.rawValue)], value)
        }
        for (key, value) in transportLimits.settings {
            if let number = Double(value) { scrape.gauge("pvfs_limit", limitHelp, [("limit", key)], number) }
        }
    }

    /// The transports' per-tenant limits: per tenant (listener, VM, Xen domain) its current use
    /// and how often it refused, closed or pushed back.
    public static func record(into scrape: DaemonMetrics.Scrape, tenants: [TenantUsage]) {
        func labels(_ tenant: Tenant) -> [(String, String)] { [("kind", tenant.kind), ("tenant", tenant.name)] }
        func gauge(_ name: String, _ help: String, _ value: (TenantUsage) -> Int?) {
            for usage in tenants {
                if let v = value(usage) { scrape.gauge(name, help, labels(usage.tenant), Int64(v)) }
            }
        }
        func counter(_ name: String, _ help: String, _ value: (TenantUsage) -> [TransportLimit: UInt64]) {
            for usage in tenants {
                for (limit, count) in value(usage).sorted(by: { $0.key < $1.key }) {
                    scrape.counter(name, help, labels(usage.tenant) + [("limit", limit.rawValue)], count)
                }
            }
        }
        gauge("pvfs_tenant_connections", "Socket connections served (listeners; VMs from their first attach).") {
            $0.tenant.kind == "xen-domain" ? nil : $0.connections
        }
        gauge("pvfs_tenant_outstanding_requests", "Requests received and not finished (sockets; Xen: taken off the rings).") {
            $0.outstandingRequests
        }
        gauge("pvfs_tenant_reply_bytes", "Reply bytes held: queued for sockets; reserved and queued for Xen rings.") {
            $0.queuedReplyBytes
        }
        counter("pvfs_tenant_refusals_total", "Connections or attaches refused, and connections closed, at a limit.") { $0.refusals }
        counter("pvfs_tenant_backpressure_total", "Times a socket or ring of the tenant was not read because of a limit.") { $0.backpressure }
    }

    /// CPU time pvfsd's threads spent per tenant, and the tenants' demotions to a lower
    /// priority for using more than their share (`tenant-cpu-nice`).
    public static func record(into scrape: DaemonMetrics.Scrape, cpu fairness: TenantCPUFairness) {
        for u in fairness.usage {
            let labels = labels(u.tenant)
            scrape.counter("pvfs_tenant_cpu_seconds_total", "CPU time pvfsd spent serving the tenant (connection threads and workers).",
                           labels, Double(u.cpuNanoseconds) / 1e9)
            scrape.counter("pvfs_tenant_cpu_demotions_total",
                           "Times the tenant's threads were lowered to tenant-cpu-nice for using more than its share.",
                           labels, UInt64(u.demotions))
            scrape.gauge("pvfs_tenant_cpu_demoted", "Whether the tenant's threads run at tenant-cpu-nice now.", labels,
                         Int64(u.isDemoted ? 1 : 0))
        }
        scrape.gauge("pvfs_tenant_cpu_fairness_active",
                     "Whether over-share tenants are demoted (0: tenant-cpu-nice = 0, or pvfsd may not raise a thread's priority back).",
                     [], Int64(fairness.demotes ? 1 : 0))
    }

    /// The worker pool: each served VM's weight, and the work each tenant has queued and
    /// running now (tenants with none are not listed).
    public static func record(into scrape: DaemonMetrics.Scrape, pool: NinePWorkerPool, volumes: [Volume]) {
        for name in Set(volumes.map(\.name)).sorted() {
            scrape.gauge("pvfs_worker_weight", "The VM's share of the worker threads relative to other VMs' (pvfs-vm set-weight).",
                         [("vm", name)], Int64(pool.weight(of: .vm(name))))
        }
        scrape.gauge("pvfs_worker_threads", "Threads of the worker pool shared by every transport.", [], Int64(pool.threadCount))
        scrape.gauge("pvfs_worker_max_running", "Jobs one tenant may run at once while another has work queued (worker-max-share).",
                     [], Int64(pool.sharedCap))
        for s in pool.statistics {
            scrape.gauge("pvfs_tenant_worker_queued", "Jobs of the tenant waiting for a worker thread.", labels(s.tenant), Int64(s.queued))
            scrape.gauge("pvfs_tenant_worker_running", "Jobs of the tenant running on worker threads.", labels(s.tenant), Int64(s.running))
        }
    }

    static func labels(_ tenant: NinePWorkerPool.Tenant) -> [(String, String)] {
        switch tenant {
        case .vm(let name): [("kind", "vm"), ("tenant", name)]
        case .listener(let name): [("kind", "listener"), ("tenant", name)]
        case .xenDomain(let id): [("kind", "xen-domain"), ("tenant", "\(id)")]
        }
    }
}
