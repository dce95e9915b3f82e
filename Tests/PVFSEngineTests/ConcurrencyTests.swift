import Foundation
import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

@Suite("Concurrency")
struct ConcurrencyTests {
    /// Many threads creating, writing, renaming, reading attributes and deleting at once, with a
    /// quota that some writes hit: no deadlock, usage matches the data afterwards.
    @Test func mixedOperationsKeepUsageExact() throws {
        let f = try EngineFixture()
        _ = try f.provision("c", quotaBytes: 2 << 20, quotaInodes: 5000)
        let v = try f.view("c")
        let dir = try v.makeDirectory(rootInode, Array("work".utf8), mode: 0o777, as: root).inode
        let etc = try v.resolve("etc").inode
        let hostname = try v.resolve("etc/hostname").inode
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            var rng = SystemRandomNumberGenerator()
            for i in 0..<150 {
                let name = Array("w\(worker)-\(i % 20)".utf8)
                do {
                    switch Int.random(in: 0..<8, using: &rng) {
                    case 0, 1:
                        let (_, h) = try v.create(dir, name, mode: 0o644, flags: O_RDWR, as: root)
                        _ = try? v.write(h, offset: Int64.random(in: 0..<200_000, using: &rng),
                                         bytes: [UInt8](repeating: 9, count: Int.random(in: 1..<50_000, using: &rng)), as: root)
                        v.release(h)
                    case 2:
                        try v.unlink(dir, name, as: root)
                    case 3:
                        try v.rename(dir, name, to: dir, Array("w\(worker)-r".utf8), as: root)
                    case 4:
                        _ = try v.readDirectory(dir, after: 0, limit: 50, as: root)
                    case 5:
                        let h = try v.open(hostname, flags: O_RDWR, as: root)
                        _ = try? v.write(h, offset: 0, bytes: Array("x\(worker)".utf8), as: root)
                        v.release(h)
                    case 6:
                        let a = try v.lookup(dir, name, as: root)
                        _ = try v.setAttributes(a.inode, AttributeChanges(size: Int64.random(in: 0..<100_000, using: &rng)), as: root)
                    default:
                        _ = try v.lookup(etc, Array("hard-a".utf8), as: root)
                        _ = v.statistics()
                    }
                } catch {
                    // ENOENT/EEXIST/EDQUOT are expected outcomes of racing workers.
                }
            }
        }
        let counted = v.volume.usage
        let recomputed = v.volume.recomputeUsage()
        #expect(counted.bytes == recomputed.bytes)
        #expect(counted.inodes == recomputed.inodes)
        #expect(counted.bytes <= 2 << 20)
        try v.volume.close()
        // Reopen after a clean close: the same tree and usage.
        let again = try f.view("c")
        #expect(again.volume.usage.bytes == counted.bytes)
    }

    /// Concurrent writers extending files cannot together pass the quota.
    @Test func concurrentWritersRespectQuota() throws {
        let f = try EngineFixture()
        _ = try f.provision("q", quotaBytes: 1 << 20)
        let v = try f.view("q")
        let handles = try (0..<4).map { i in try v.create(rootInode, Array("f\(i)".utf8), mode: 0o644, flags: O_RDWR, as: root).1 }
        DispatchQueue.concurrentPerform(iterations: 4) { i in
            var offset: Int64 = 0
            while true {
                do {
                    offset += Int64(try v.write(handles[i], offset: offset, bytes: [UInt8](repeating: 1, count: 4096), as: root))
                } catch {
                    break
                }
            }
        }
        for h in handles { v.release(h) }
        #expect(v.volume.usage.bytes <= 1 << 20)
        #expect(v.volume.usage.bytes > (1 << 20) - 4 * 4096)
        #expect(v.volume.recomputeUsage().bytes == v.volume.usage.bytes)
    }
}
