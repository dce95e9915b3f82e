import Foundation
import PVFS9P
import PVFSEngine
import PVFSTransport

/// Prometheus text exposition of the daemon's per-VM counters and usage.
public enum Metrics {
    public static func render(volumes: [Volume], sessions: [String: Int], unboundLimits: LimitCounters? = nil,
                              connectionLimits: ConnectionLimits = ConnectionLimits(),
                              volumeLimits: VolumeLimits = VolumeLimits(),
                              transportLimits: DaemonConfiguration.Limits = DaemonConfiguration.Limits()) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ value: (Volume) -> String) {
            out += header(name, type, help)
            for volume in volumes.sorted(by: { $0.name < $1.name }) {
                out += "\(name){vm=\"\(escape(volume.name))\"} \(value(volume))\n"
            }
        }
        family("pvfs_requests_total", "counter", "Requests served for a VM, all transports.") { "\($0.counters.snapshot.requests)" }
        family("pvfs_request_errors_total", "counter", "Requests answered with an error.") { "\($0.counters.snapshot.errors)" }
        family("pvfs_read_bytes_total", "counter", "File bytes read.") { "\($0.counters.snapshot.bytesRead)" }
        family("pvfs_written_bytes_total", "counter", "File bytes written.") { "\($0.counters.snapshot.bytesWritten)" }
        family("pvfs_copy_ups_total", "counter", "Template files copied into the VM's private area.") { "\($0.counters.snapshot.copyUps)" }
        family("pvfs_quota_refusals_total", "counter", "Operations refused with EDQUOT.") { "\($0.counters.snapshot.quotaRefusals)" }
        family("pvfs_used_bytes", "gauge", "Bytes charged to the VM.") { "\($0.usage.bytes)" }
        family("pvfs_used_inodes", "gauge", "Inodes charged to the VM.") { "\($0.usage.inodes)" }
        family("pvfs_quota_bytes", "gauge", "Byte quota (-1: none).") { "\($0.limits.bytes ?? -1)" }
        family("pvfs_quota_inodes", "gauge", "Inode quota (-1: none).") { "\($0.limits.inodes ?? -1)" }
        family("pvfs_sessions", "gauge", "Open client sessions.") { "\(sessions[$0.name] ?? 0)" }
        let held = Dictionary(volumes.map { ($0.name, $0.metadataUsage) }, uniquingKeysWith: { a, _ in a })
        family("pvfs_hard_links", "gauge", "Hard links the VM added (bounded by vm-hard-links).") { "\(held[$0.name]?.addedLinks ?? 0)" }
        family("pvfs_xattr_bytes", "gauge", "Bytes of extended attributes the VM holds (bounded by vm-xattr-bytes).") { "\(held[$0.name]?.xattrBytes ?? 0)" }
        family("pvfs_lock_records", "gauge", "Lock records the VM's clients hold (bounded by vm-lock-records).") { "\(held[$0.name]?.lockRecords ?? 0)" }

        out += "# HELP pvfs_limit_hits_total Times a limit was reached, by VM (empty: a connection bound to no VM yet) and limit.\n"
        out += "# TYPE pvfs_limit_hits_total counter\n"
        for volume in volumes.sorted(by: { $0.name < $1.name }) {
            let hits = volume.counters.limits.hits
            for limit in TenantLimit.allCases {
                out += "pvfs_limit_hits_total{vm=\"\(escape(volume.name))\",limit=\"\(limit.rawValue)\"} \(hits[limit] ?? 0)\n"
            }
        }
        if let unboundLimits {
            let hits = unboundLimits.hits
            for limit in TenantLimit.allCases {
                out += "pvfs_limit_hits_total{vm=\"\",limit=\"\(limit.rawValue)\"} \(hits[limit] ?? 0)\n"
            }
        }

        out += "# HELP pvfs_limit The configured value of each limit (per tenant, connection or VM; seconds for timeouts; -1: none).\n"
        out += "# TYPE pvfs_limit gauge\n"
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
            out += "pvfs_limit{limit=\"\(limit.rawValue)\"} \(value)\n"
        }
        for (key, value) in transportLimits.settings {
            out += "pvfs_limit{limit=\"\(key)\"} \(value)\n"
        }
        return out
    }

    /// The transports' per-tenant limits: each limit's setting, and per tenant (listener, VM,
    /// Xen domain) its current use and how often it refused, closed or pushed back.
    public static func render(tenants: [TenantUsage]) -> String {
        var out = ""
        func labels(_ tenant: Tenant) -> String { "kind=\"\(tenant.kind)\",tenant=\"\(escape(tenant.name))\"" }
        func gauge(_ name: String, _ help: String, _ value: (TenantUsage) -> Int?) {
            out += header(name, "gauge", help)
            for usage in tenants {
                if let v = value(usage) { out += "\(name){\(labels(usage.tenant))} \(v)\n" }
            }
        }
        func counter(_ name: String, _ help: String, _ value: (TenantUsage) -> [TransportLimit: UInt64]) {
            out += header(name, "counter", help)
            for usage in tenants {
                for (limit, count) in value(usage).sorted(by: { $0.key < $1.key }) {
                    out += "\(name){\(labels(usage.tenant)),limit=\"\(limit.rawValue)\"} \(count)\n"
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
        return out
    }

    /// CPU time pvfsd's threads spent per tenant, and the tenants' demotions to a lower
    /// priority for using more than their share (`tenant-cpu-nice`).
    public static func render(cpu fairness: TenantCPUFairness) -> String {
        var out = ""
        let usage = fairness.usage
        func perTenant(_ name: String, _ type: String, _ help: String, _ value: (TenantCPUFairness.Usage) -> String) {
            out += header(name, type, help)
            for u in usage { out += "\(name){\(labels(u.tenant))} \(value(u))\n" }
        }
        perTenant("pvfs_tenant_cpu_seconds_total", "counter", "CPU time pvfsd spent serving the tenant (connection threads and workers).") {
            "\(Double($0.cpuNanoseconds) / 1e9)"
        }
        perTenant("pvfs_tenant_cpu_demotions_total", "counter",
                  "Times the tenant's threads were lowered to tenant-cpu-nice for using more than its share.") { "\($0.demotions)" }
        perTenant("pvfs_tenant_cpu_demoted", "gauge", "Whether the tenant's threads run at tenant-cpu-nice now.") { $0.isDemoted ? "1" : "0" }
        out += header("pvfs_tenant_cpu_fairness_active", "gauge",
                      "Whether over-share tenants are demoted (0: tenant-cpu-nice = 0, or pvfsd may not raise a thread's priority back).")
        out += "pvfs_tenant_cpu_fairness_active \(fairness.demotes ? 1 : 0)\n"
        return out
    }

    /// The worker pool: each served VM's weight, and the work each tenant has queued and
    /// running now (tenants with none are not listed).
    public static func render(pool: NinePWorkerPool, volumes: [Volume]) -> String {
        var out = header("pvfs_worker_weight", "gauge", "The VM's share of the worker threads relative to other VMs' (pvfs-vm set-weight).")
        for name in Set(volumes.map(\.name)).sorted() {
            out += "pvfs_worker_weight{vm=\"\(escape(name))\"} \(pool.weight(of: .vm(name)))\n"
        }
        out += header("pvfs_worker_threads", "gauge", "Threads of the worker pool shared by every transport.")
        out += "pvfs_worker_threads \(pool.threadCount)\n"
        out += header("pvfs_worker_max_running", "gauge", "Jobs one tenant may run at once while another has work queued (worker-max-share).")
        out += "pvfs_worker_max_running \(pool.sharedCap)\n"
        let statistics = pool.statistics
        out += header("pvfs_tenant_worker_queued", "gauge", "Jobs of the tenant waiting for a worker thread.")
        for s in statistics { out += "pvfs_tenant_worker_queued{\(labels(s.tenant))} \(s.queued)\n" }
        out += header("pvfs_tenant_worker_running", "gauge", "Jobs of the tenant running on worker threads.")
        for s in statistics { out += "pvfs_tenant_worker_running{\(labels(s.tenant))} \(s.running)\n" }
        return out
    }

    /// The HELP and TYPE lines that open a metric family.
    static func header(_ name: String, _ type: String, _ help: String) -> String {
        "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    static func labels(_ tenant: NinePWorkerPool.Tenant) -> String {
        switch tenant {
        case .vm(let name): "kind=\"vm\",tenant=\"\(escape(name))\""
        case .listener(let name): "kind=\"listener\",tenant=\"\(escape(name))\""
        case .xenDomain(let id): "kind=\"xen-domain\",tenant=\"\(id)\""
        }
    }

    static func escape(_ label: String) -> String {
        label.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
