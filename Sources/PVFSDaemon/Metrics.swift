import Foundation
import PVFSEngine

/// Prometheus text exposition of the daemon's per-VM counters and usage.
public enum Metrics {
    public static func render(volumes: [Volume], sessions: [String: Int]) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ value: (Volume) -> String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
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
        return out
    }

    static func escape(_ label: String) -> String {
        label.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
