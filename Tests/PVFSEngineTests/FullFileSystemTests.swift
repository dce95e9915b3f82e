import Foundation
import GRDB
import Glibc
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

/// A small filesystem mounted for a store (needs root): an ext4 image on a loop device, or a
/// size-limited tmpfs.
final class SmallFileSystem {
    enum Kind: String, CaseIterable, Sendable { case ext4, tmpfs }

    let scratch: String
    let mountpoint: String
    private var mounted = false

    init(_ kind: Kind, megabytes: Int) throws {
        var template = Array("/tmp/pvfs-full-fs-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        scratch = String(cString: made)
        mountpoint = scratch + "/mnt"
        guard mkdir(mountpoint, 0o755) == 0 else { throw Errno(rawValue: errno) }
        switch kind {
        case .ext4:
            let image = scratch + "/fs.img"
            guard truncate(image, off_t(megabytes) << 20) == 0 || creat(image, 0o600) >= 0 && truncate(image, off_t(megabytes) << 20) == 0
            else { throw Errno(rawValue: errno) }
            try Self.run("/usr/sbin/mkfs.ext4", ["-q", "-F", "-m", "0", image])
            try Self.run("/bin/mount", ["-o", "loop", image, mountpoint])
        case .tmpfs:
            try Self.run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(megabytes)m", "tmpfs", mountpoint])
        }
        mounted = true
    }

    func unmount() {
        guard mounted else { return }
        mounted = false
        try? Self.run("/bin/umount", [mountpoint])
    }

    deinit {
        unmount()
        _ = try? Process.run(URL(fileURLWithPath: "/bin/rm"), arguments: ["-rf", scratch]).waitUntilExit()
    }

    var availableBytes: Int64 {
        var s = statvfs()
        guard statvfs(mountpoint, &s) == 0 else { return -1 }
        return Int64(s.f_bavail) * Int64(s.f_frsize)
    }

    static func run(_ tool: String, _ arguments: [String]) throws {
        let process = try Process.run(URL(fileURLWithPath: tool), arguments: arguments)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestFailure("\(tool) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A store whose filesystem a guest fills completely must not lock the guest out: the write
/// that finds no room gets ENOSPC with what it wrote intact, and deleting a file (a catalog
/// commit, which needs room in SQLite's log) must still succeed and give the space back.
@Suite("a completely full store filesystem", .serialized)
struct FullFileSystemTests {
    @Test(arguments: SmallFileSystem.Kind.allCases)
    func guestFillsTheFileSystemThenFreesSpace(_ kind: SmallFileSystem.Kind) throws {
        let fs = try SmallFileSystem(kind, megabytes: 64)
        defer { fs.unmount() }
        var fixture: EngineFixture? = try EngineFixture(directory: fs.mountpoint)
        defer { fixture = nil }
        let f = try #require(fixture)
        _ = try f.provision("a")
        let v = try f.view("a")

        // Something acknowledged before the filesystem fills.
        let kept = pseudoRandom(50_000, seed: 7)
        let keptFile = try v.createBytes("", "kept", kept)
        try v.sync(keptFile.inode, handle: nil, dataOnly: false)

        // The log as a restarted pvfsd finds it (the last close checkpointed and removed it): a
        // commit after the filesystem fills needs new blocks for it.
        _ = try f.store.catalog.writeWithoutTransaction { db in try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)") }

        // Fill the filesystem through the view, 1 MiB at a time, until the write is refused.
        let chunk = pseudoRandom(1 << 20, seed: 3)
        var written: Int64 = 0
        // The handle goes away with this scope, as a guest's close drops it.
        let big = try { () throws -> Attributes in
        let (big, handle) = try v.create(rootInode, Array("big".utf8), mode: 0o644, flags: O_RDWR, as: .root)
        var refusal: Errno?
        // Rounds of writes until one is refused, each round ending with an fsync: filesystems
        // with delayed allocation (ext4) give back what they held for pending writes once the
        // data is on disk, so a guest that keeps writing fills those blocks too.
        var step = chunk.count
        while written < 1 << 30 {
            let before = written
            refusal = nil
            while refusal == nil && written < 1 << 30 {
                do {
                    let count = Int(min(Int64(step), Int64(chunk.count) - written % Int64(chunk.count)))
                    let piece = Array(chunk[Int(written % Int64(chunk.count))..<Int(written % Int64(chunk.count)) + count])
                    let n = try v.write(handle, offset: written, bytes: piece, as: .root)
                    written += Int64(n)
                } catch {
                    refusal = Errno.of(error)
                }
            }
            // An fsync on a full filesystem may fail too; the read-back below shows what stayed.
            try? v.sync(big.inode, handle: handle, dataOnly: true)
            if written == before { break }
            step = 4096
        }
        #expect(refusal == .noSpace, "the write that found the filesystem full: \(String(describing: refusal))")
        #expect(written > 20 << 20, "wrote only \(written) bytes before ENOSPC")
        // What the guest wrote is there, up to the last byte acknowledged.
        let tailOffset = max(0, written - 4096)
        let tail = try v.read(handle, offset: tailOffset, count: 4096)
        let expectedTail = (tailOffset..<written).map { chunk[Int($0 % Int64(chunk.count))] }
        #expect(tail == expectedTail)
        v.release(handle)
        return big
        }()
        #expect(try v.getAttributes(big.inode).size == written)
        // statfs agrees with the refusal: no space is available to the guest.
        let full = v.statistics()
        #expect(full.availableBlocks * full.fragmentSize < 512 << 10, "statfs when full: \(full)")

        // The guest frees space: the unlink must be committed, and the space must come back.
        try v.unlink(rootInode, Array("big".utf8), as: .root)
        #expect(throws: Errno.noSuchFileOrDirectory) { try v.resolve("big") }
        let deadline = Date().addingTimeInterval(20)
        while fs.availableBytes < 30 << 20 && Date() < deadline { usleep(20_000) }
        #expect(fs.availableBytes >= 30 << 20, "free after rm: \(fs.availableBytes)")
        let statistics = v.statistics()
        #expect(statistics.availableBlocks * statistics.fragmentSize >= 20 << 20, "statfs after rm: \(statistics)")

        // New writes succeed again.
        let after = pseudoRandom(4 << 20, seed: 11)
        let afterFile = try v.createBytes("", "after", after)
        try v.sync(afterFile.inode, handle: nil, dataOnly: false)
        try v.volume.close()

        // Consistent, and everything acknowledged is there after reopening the store.
        let report = try runFsck(f.store)
        #expect(report.findings.isEmpty, "\(report.findings)")
        let integrity = try f.store.catalog.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") }
        #expect(integrity == "ok")
        let reopened = try Store(path: f.store.path)
        let volume = try Volume.open(store: reopened, vmName: "a")
        let view = VMView(volume: volume, policy: SessionPolicy(side: .guest, readOnly: false), sessionID: 2)
        #expect(try view.readBytes("kept") == kept)
        #expect(try view.readBytes("after") == after)
        #expect(throws: Errno.noSuchFileOrDirectory) { try view.resolve("big") }
        try volume.close()
    }
}
