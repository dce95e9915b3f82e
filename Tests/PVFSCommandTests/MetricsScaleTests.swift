import Foundation
import PVFSDaemon
import Testing

/// The cost of a scrape as the number of VMs grows: the per-VM families of `Metrics.record` set
/// for N VMs through `DaemonMetrics.render`, timed for the first scrape and the next.
@Suite struct MetricsScaleTests {
    static let perVMFamilies: [(String, Bool)] = [
        ("pvfs_requests_total", true), ("pvfs_request_errors_total", true), ("pvfs_read_bytes_total", true),
        ("pvfs_written_bytes_total", true), ("pvfs_copy_ups_total", true), ("pvfs_quota_refusals_total", true),
        ("pvfs_used_bytes", false), ("pvfs_used_inodes", false), ("pvfs_quota_bytes", false), ("pvfs_quota_inodes", false),
        ("pvfs_sessions", false), ("pvfs_hard_links", false), ("pvfs_xattr_bytes", false), ("pvfs_lock_records", false),
        ("pvfs_worker_weight", false),
    ]

    static func scrape(_ metrics: DaemonMetrics, vms: Int) -> (seconds: Double, page: String) {
        let start = DispatchTime.now().uptimeNanoseconds
        let page = metrics.render { scrape in
            for (family, isCounter) in perVMFamilies {
                for i in 0..<vms {
                    if isCounter {
                        scrape.counter(family, "help of \(family)", [("vm", "vm\(i)")], UInt64(i))
                    } else {
                        scrape.gauge(family, "help of \(family)", [("vm", "vm\(i)")], Int64(i))
                    }
                }
            }
        }
        return (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, page)
    }

    /// Prints the times (a scrape of N VMs should take about N times as long as one of one VM; it
    /// took O(N²) when every family's series shared one registry: 0.5 s for 1,000 VMs, 12 s for
    /// 4,000) and checks the page: every family once with its HELP and TYPE, every series in it.
    @Test func scrapeOfManyVMsIsWholeAndLinear() {
        for vms in [250, 1000, 4000] {
            let metrics = DaemonMetrics()
            let first = Self.scrape(metrics, vms: vms)
            let second = Self.scrape(metrics, vms: vms)
            print("metrics scale: \(vms) VMs: first scrape \(String(format: "%.3f", first.seconds)) s, "
                + "next \(String(format: "%.3f", second.seconds)) s, \(first.page.utf8.count) bytes")
            #expect(first.page == second.page)
            let lines = first.page.split(separator: "\n")
            for (family, isCounter) in Self.perVMFamilies {
                #expect(lines.filter { $0 == "# TYPE \(family) \(isCounter ? "counter" : "gauge")" }.count == 1, "\(family)")
                #expect(lines.filter { $0 == "# HELP \(family) help of \(family)" }.count == 1, "\(family)")
                #expect(lines.filter { $0.hasPrefix("\(family){vm=") }.count == vms, "\(family)")
            }
            #expect(metricSample(first.page, #"pvfs_used_bytes{vm="vm\#(vms - 1)"}"#) == Double(vms - 1))
            #expect(metricSample(first.page, #"pvfs_requests_total{vm="vm7"}"#) == 7)
        }
    }

    /// A series not set by a scrape is not on its page: the VM closed, the tenant went.
    @Test func scrapeListsOnlyWhatItSet() {
        let metrics = DaemonMetrics()
        let page1 = metrics.render { $0.gauge("pvfs_sessions", "Open client sessions.", [("vm", "a")], Int64(1)); $0.gauge("pvfs_sessions", "Open client sessions.", [("vm", "b")], Int64(2)) }
        #expect(metricSample(page1, #"pvfs_sessions{vm="b"}"#) == 2)
        let page2 = metrics.render { $0.gauge("pvfs_sessions", "Open client sessions.", [("vm", "a")], Int64(3)) }
        #expect(metricSample(page2, #"pvfs_sessions{vm="a"}"#) == 3)
        #expect(metricSample(page2, #"pvfs_sessions{vm="b"}"#) == nil)
        let page3 = metrics.render { _ in }
        #expect(!page3.contains("pvfs_sessions"))
    }
}
