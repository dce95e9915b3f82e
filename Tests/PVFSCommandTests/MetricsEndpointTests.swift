import Foundation
import Glibc
import PVFSTestSupport
import Testing

/// The value of one sample of a Prometheus text page (`name{labels}` as printed), nil when absent.
func metricSample(_ page: String, _ series: String) -> Double? {
    for line in page.split(separator: "\n") where line.hasPrefix(series + " ") {
        return Double(line.dropFirst(series.count + 1))
    }
    return nil
}

extension DaemonServiceTests {
    /// Every family pvfsd exposed before swift-prometheus wrote the page, with its type.
    static let stateFamilies: [(String, String)] = [
        ("pvfs_requests_total", "counter"), ("pvfs_request_errors_total", "counter"), ("pvfs_read_bytes_total", "counter"),
        ("pvfs_written_bytes_total", "counter"), ("pvfs_copy_ups_total", "counter"), ("pvfs_quota_refusals_total", "counter"),
        ("pvfs_used_bytes", "gauge"), ("pvfs_used_inodes", "gauge"), ("pvfs_quota_bytes", "gauge"), ("pvfs_quota_inodes", "gauge"),
        ("pvfs_sessions", "gauge"), ("pvfs_hard_links", "gauge"), ("pvfs_xattr_bytes", "gauge"), ("pvfs_lock_records", "gauge"),
        ("pvfs_limit_hits_total", "counter"), ("pvfs_limit", "gauge"),
        ("pvfs_tenant_connections", "gauge"), ("pvfs_tenant_outstanding_requests", "gauge"), ("pvfs_tenant_reply_bytes", "gauge"),
        ("pvfs_tenant_cpu_seconds_total", "counter"), ("pvfs_tenant_cpu_demotions_total", "counter"),
        ("pvfs_tenant_cpu_demoted", "gauge"), ("pvfs_tenant_cpu_fairness_active", "gauge"),
        ("pvfs_worker_weight", "gauge"), ("pvfs_worker_threads", "gauge"), ("pvfs_worker_max_running", "gauge"),
    ]

    /// Real 9P requests to pvfsd over TCP show in the latency histograms of the metrics endpoint:
    /// per VM (every request after the attach) and per operation, with cumulative buckets, and
    /// beside them every family of the daemon's state with its type.
    @Test func metricsEndpointShowsRequestLatency() throws {
        let served = try startTwoListenerDaemon(seed: 5)
        let (daemon, portA, portB, portMetrics) = (served.daemon, served.portA, served.portB, served.portMetrics)
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }

        // VM a: attach, then 20 × (walk, lopen, read, clunk) and 10 getattrs; VM b: attach, 5 getattrs.
        let fdA = try connectTCP(portA)
        defer { NinePClient.closeSocket(fdA) }
        let a = NinePClient(fileDescriptor: fdA)
        _ = try a.version(msize: 65536)
        _ = try a.attach(fid: 0, aname: "a")
        for i in 0..<20 {
            _ = try a.walk(fid: 0, newFid: 1, path: "d\(i % 4)/f\(i % 4)")
            _ = try a.lopen(fid: 1, flags: 0)
            #expect(try a.read(fid: 1, offset: 0, count: 4096).count == 1000)
            try a.clunk(fid: 1)
        }
        for _ in 0..<10 { _ = try a.getattr(fid: 0) }
        let fdB = try connectTCP(portB)
        defer { NinePClient.closeSocket(fdB) }
        let b = NinePClient(fileDescriptor: fdB)
        _ = try b.version(msize: 65536)
        _ = try b.attach(fid: 0, aname: "b")
        for _ in 0..<5 { _ = try b.getattr(fid: 0) }

        let page = try httpGet(portMetrics, "/metrics")
        // Per operation, over both VMs.
        #expect(metricSample(page, #"pvfs_operation_duration_seconds_count{op="read"}"#) == 20)
        #expect(metricSample(page, #"pvfs_operation_duration_seconds_count{op="lopen"}"#) == 20)
        #expect(metricSample(page, #"pvfs_operation_duration_seconds_count{op="walk"}"#) == 20)
        #expect(metricSample(page, #"pvfs_operation_duration_seconds_count{op="getattr"}"#) == 15)
        #expect(metricSample(page, #"pvfs_operation_duration_seconds_count{op="attach"}"#) == 2)
        #expect(metricSample(page, #"pvfs_operation_duration_seconds_count{op="version"}"#) == 2)
        #expect(metricSample(page, #"pvfs_operation_duration_seconds_count{op="fsync"}"#) == 0)
        // Per VM: the attach (bound as it runs) and every request after it.
        #expect(metricSample(page, #"pvfs_request_duration_seconds_count{vm="a"}"#) == Double(1 + 20 * 4 + 10))
        #expect(metricSample(page, #"pvfs_request_duration_seconds_count{vm="b"}"#) == Double(1 + 5))
        // No series per VM and operation.
        #expect(!page.contains(#"vm="a",op="#) && !page.contains(#"op="read",vm="#))
        // Cumulative buckets from 50 µs to 5 s; +Inf holds every request; the sum is plausible.
        let bucket = { (le: String) in metricSample(page, #"pvfs_request_duration_seconds_bucket{vm="a",le="\#(le)"}"#) }
        let bounds = ["0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                      "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "+Inf"]
        let counts = bounds.map { bucket($0) }
        #expect(!counts.contains(nil), "buckets: \(counts)")
        let values = counts.compactMap { $0 }
        #expect(zip(values, values.dropFirst()).allSatisfy { $0 <= $1 })
        #expect(values.last == 91)
        let sum = try #require(metricSample(page, #"pvfs_request_duration_seconds_sum{vm="a"}"#))
        #expect(sum > 0 && sum < 91 * 5, "sum \(sum)")
        #expect(page.contains("# TYPE pvfs_request_duration_seconds histogram\n"))
        #expect(page.contains("# TYPE pvfs_operation_duration_seconds histogram\n"))

        // The families of the daemon's state keep their names and types, with HELP lines.
        for (family, type) in Self.stateFamilies {
            #expect(page.contains("# TYPE \(family) \(type)\n"), "\(family)")
            #expect(page.contains("# HELP \(family) "), "\(family)")
        }
        #expect(metricSample(page, #"pvfs_sessions{vm="a"}"#) == 1)
        #expect(metricSample(page, #"pvfs_tenant_connections{kind="vm",tenant="a"}"#) == 1)
        #expect((metricSample(page, #"pvfs_requests_total{vm="a"}"#) ?? 0) >= 91)
        #expect((metricSample(page, #"pvfs_read_bytes_total{vm="a"}"#) ?? 0) == 20_000)

        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
    }

    /// A VM removed from the store loses its latency series at the next scrape (it kept it until
    /// pvfsd restarted); the other VM's stays.
    @Test func removedVMLosesItsLatencySeries() throws {
        let served = try startTwoListenerDaemon(seed: 6)
        let (daemon, portA, portB, portMetrics) = (served.daemon, served.portA, served.portB, served.portMetrics)
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        for (port, vm) in [(portA, "a"), (portB, "b")] {
            let fd = try connectTCP(port)
            defer { NinePClient.closeSocket(fd) }
            let client = NinePClient(fileDescriptor: fd)
            _ = try client.version(msize: 65536)
            _ = try client.attach(fid: 0, aname: vm)
            for _ in 0..<3 { _ = try client.getattr(fid: 0) }
        }
        let before = try httpGet(portMetrics, "/metrics")
        #expect(metricSample(before, #"pvfs_request_duration_seconds_count{vm="a"}"#) == 4)
        #expect(metricSample(before, #"pvfs_request_duration_seconds_count{vm="b"}"#) == 4)

        try mustRun("pvfs-vm", ["rm", "b", "--force", "--store", served.area.sub("store")])
        let after = try httpGet(portMetrics, "/metrics")
        #expect(metricSample(after, #"pvfs_request_duration_seconds_count{vm="a"}"#) == 4)
        #expect(!after.contains(#"vm="b""#), "series of the removed VM: \(after.split(separator: "\n").filter { $0.contains(#"vm="b""#) })")
        // The per-operation series count every request, the removed VM's included.
        #expect(metricSample(after, #"pvfs_operation_duration_seconds_count{op="getattr"}"#) == 6)

        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
    }
}
