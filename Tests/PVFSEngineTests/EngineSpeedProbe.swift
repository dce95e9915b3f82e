import Foundation
import Glibc
import PVFSSystem
import Testing
@testable import PVFSEngine

/// Prints per-operation costs of the engine alone (no transport): a probe for profiling, not a
/// timed assertion.
@Suite("Engine speed probe", .serialized)
struct EngineSpeedProbe {
    @Test func createUnlinkAndStat() throws {
        let f = try EngineFixture()
        _ = try f.provision("p")
        let v = try f.view("p")
        let dir = try v.makeDirectory(rootInode, Array("d".utf8), mode: 0o755, as: root).inode
        let n = 5000
        var t0 = monotonicNanoseconds()
        for i in 0..<n {
            let (_, h) = try v.create(dir, Array("f\(i)".utf8), mode: 0o644, flags: O_RDWR, as: root)
            _ = try v.write(h, offset: 0, bytes: [1, 2, 3], as: root)
            v.release(h)
        }
        let create = Double(monotonicNanoseconds() - t0) / Double(n) / 1000
        t0 = monotonicNanoseconds()
        for i in 0..<n { _ = try v.lookup(dir, Array("f\(i)".utf8), as: root) }
        let lookup = Double(monotonicNanoseconds() - t0) / Double(n) / 1000
        t0 = monotonicNanoseconds()
        for i in 0..<n { try v.unlink(dir, Array("f\(i)".utf8), as: root) }
        let unlink = Double(monotonicNanoseconds() - t0) / Double(n) / 1000
        print("engine probe: create+write+release \(String(format: "%.1f", create)) µs, lookup \(String(format: "%.2f", lookup)) µs, unlink \(String(format: "%.1f", unlink)) µs")
    }
}
