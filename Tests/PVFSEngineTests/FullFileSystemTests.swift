import Foundation
import GRDB
import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import Synchronization
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

/// Writes `name` (created when missing) in the root of `view` until a write is refused: rounds of writes (1 MiB, then
/// 4 KiB), each round ending with an fsync, since filesystems with delayed allocation (ext4) give
/// back what they held for pending writes once the data is on disk, so a guest that keeps
/// writing fills those blocks too. Checks that what was acknowledged reads back; the handle is
/// closed on return, as a guest's close drops it.
func fillUntilRefused(_ view: VMView, _ name: String, _ chunk: [UInt8]) throws -> (Attributes, Int64, Errno?) {
    let file: Attributes, handle: OpenFile
    if let existing = try? view.lookup(rootInode, Array(name.utf8), as: .root) {
        (file, handle) = (existing, try view.open(existing.inode, flags: O_RDWR, as: .root))
    } else {
        (file, handle) = try view.create(rootInode, Array(name.utf8), mode: 0o644, flags: O_RDWR, as: .root)
    }
    defer { view.release(handle) }
    var written: Int64 = 0
    var refusal: Errno?
    var step = chunk.count
    let period = Int64(chunk.count)
    while written < 1 << 30 {
        let before = written
        refusal = nil
        while refusal == nil && written < 1 << 30 {
            do {
                let at = Int(written % period)
                let count = min(step, chunk.count - at)
                written += Int64(try view.write(handle, offset: written, bytes: Array(chunk[at..<at + count]), as: .root))
            } catch {
                refusal = Errno.of(error)
            }
        }
        // An fsync on a full filesystem may fail too; the read-back below shows what stayed.
        try? view.sync(file.inode, handle: handle, dataOnly: true)
        if written == before { break }
        step = 4096
    }
    let tailOffset = max(0, written - 4096)
    let tail = try view.read(handle, offset: tailOffset, count: 4096)
    #expect(tail == (tailOffset..<written).map { chunk[Int($0 % period)] }, "\(name): acknowledged bytes read back")
    return (file, written, refusal)
}

/// A store whose filesystem a guest fills completely must not lock the guest out: the write
/// that finds no room gets ENOSPC with what it wrote intact, and deleting a file (a catalog
/// commit, which needs room in SQLite's log) must still succeed and give the space back.
@Suite("a completely full store filesystem", .serialized)
struct FullFileSystemTests {
    /// Whether the reserve is in place is read from the file: one deleted by another process
    /// (a command that released it, an admin) counts as released at once, and the next check
    /// that finds room allocates it again.
    @Test func aReserveDeletedByAnotherProcessIsSeenAndAllocatedAgain() throws {
        let scratch = try TemporaryDirectory("pvfs-reserve-test")
        let store = try Store(path: scratch.sub("store"), spaceReserve: 1 << 20)
        let reserve = store.spaceReserve
        #expect(reserve.isHeld)
        #expect(unlink(scratch.sub("store/reserve")) == 0)
        #expect(!reserve.isHeld, "a deleted reserve still counted as held")
        #expect(reserve.admitsGrowth())
        #expect(reserve.isHeld)
        var st = stat()
        #expect(stat(scratch.sub("store/reserve"), &st) == 0 && st.st_blocks * 512 >= 1 << 20)
    }

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
        _ = try CatalogSQL(f.store.catalog).writeWithoutTransaction { db in try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)") }

        // Fill the filesystem through the view until the write is refused.
        let chunk = pseudoRandom(1 << 20, seed: 3)
        let (big, written, refusal) = try fillUntilRefused(v, "big", chunk)
        #expect(refusal == .noSpace, "the write that found the filesystem full: \(String(describing: refusal))")
        #expect(written > 20 << 20, "wrote only \(written) bytes before ENOSPC")
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
        let integrity = try CatalogSQL(f.store.catalog).read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") }
        #expect(integrity == "ok")
        let reopened = try Store(path: f.store.path)
        let volume = try Volume.open(store: reopened, vmName: "a")
        let view = VMView(volume: volume, policy: SessionPolicy(side: .guest, readOnly: false), sessionID: 2)
        #expect(try view.readWhole("kept") == kept)
        #expect(try view.readWhole("after") == after)
        #expect(throws: Errno.noSuchFileOrDirectory) { try view.resolve("big") }
        try volume.close()
    }

    /// Several VMs write at once until the filesystem is full: every one gets ENOSPC, every one
    /// can then delete its file, and the store stays consistent.
    @Test func manyVMsFillTheFileSystemAtOnceThenFreeSpace() throws {
        let fs = try SmallFileSystem(.ext4, megabytes: 64)
        defer { fs.unmount() }
        var fixture: EngineFixture? = try EngineFixture(directory: fs.mountpoint)
        defer { fixture = nil }
        let f = try #require(fixture)
        let names = ["a", "b", "c", "d"]
        let views = try names.map { name in _ = try f.provision(name); return try f.view(name) }
        // Created before any VM fills the filesystem: a create on a full one gets ENOSPC.
        for view in views { _ = try view.createBytes("", "big", []) }
        _ = try CatalogSQL(f.store.catalog).writeWithoutTransaction { db in try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)") }

        let results = Mutex<[String: (Int64, Errno?, Errno?)]>([:])
        DispatchQueue.concurrentPerform(iterations: views.count) { i in
            let chunk = pseudoRandom(1 << 20, seed: UInt64(i + 1))
            do {
                let (_, written, refusal) = try fillUntilRefused(views[i], "big", chunk)
                var removal: Errno?
                do { try views[i].unlink(rootInode, Array("big".utf8), as: .root) } catch { removal = Errno.of(error) }
                results.withLock { $0[names[i]] = (written, refusal, removal) }
            } catch {
                Issue.record("VM \(names[i]): \(error)")
                results.withLock { $0[names[i]] = (-1, Errno.of(error), nil) }
            }
        }
        let outcome = results.withLock { $0 }
        for name in names {
            let (written, refusal, removal) = try #require(outcome[name])
            #expect(written >= 0 && refusal == .noSpace, "VM \(name): wrote \(written), refused with \(String(describing: refusal))")
            #expect(removal == nil, "VM \(name): rm failed with \(String(describing: removal))")
        }
        let total = outcome.values.reduce(Int64(0)) { $0 + max(0, $1.0) }
        #expect(total > 40 << 20, "all VMs together wrote \(total) bytes")
        let deadline = Date().addingTimeInterval(20)
        while fs.availableBytes < 40 << 20 && Date() < deadline { usleep(20_000) }
        #expect(fs.availableBytes >= 40 << 20, "free after rm: \(fs.availableBytes)")
        for (i, view) in views.enumerated() {
            let bytes = pseudoRandom(1 << 20, seed: UInt64(100 + i))
            _ = try view.createBytes("", "after", bytes)
            try view.volume.close()
        }
        let report = try runFsck(f.store)
        #expect(report.findings.isEmpty, "\(report.findings)")
        let reopened = try Store(path: f.store.path)
        for (i, name) in names.enumerated() {
            let volume = try Volume.open(store: reopened, vmName: name)
            let view = VMView(volume: volume, policy: SessionPolicy(side: .guest, readOnly: false), sessionID: 3)
            #expect(try view.readWhole("after") == pseudoRandom(1 << 20, seed: UInt64(100 + i)))
            #expect(throws: Errno.noSuchFileOrDirectory) { try view.resolve("big") }
            try volume.close()
        }
    }
}

/// While the reserve is in use, new blobs are refused too: an ingest on a full filesystem stops
/// with ENOSPC and a message naming the reserve, leaves no template and no staged file behind,
/// and works again once space is back. `pvfs df`'s report says whether the reserve is held.
@Suite("ingest beside a depleted space reserve", .serialized)
struct IngestBesideDepletedReserveTests {
    @Test func anIngestIsRefusedWhileTheReserveIsInUse() throws {
        let fs = try SmallFileSystem(.tmpfs, megabytes: 32)
        defer { fs.unmount() }
        let source = try TemporaryDirectory("pvfs-reserve-ingest-source")
        // Less than the reserve freed: without the check, the ingest would take that space.
        for i in 0..<4 {
            try Data(pseudoRandom(64 << 10, seed: UInt64(i + 1))).write(to: URL(fileURLWithPath: source.sub("file\(i)")))
        }
        let store = try Store(path: fs.mountpoint + "/store", spaceReserve: 1 << 20)
        #expect(try store.spaceReport().reserveHeld)

        // Fill what is left, then take the reserve away as a catalog commit on a full
        // filesystem would: there is no room to allocate it again.
        let filler = open(fs.mountpoint + "/filler", O_WRONLY | O_CREAT, 0o600)
        #expect(filler >= 0)
        let chunk = [UInt8](repeating: 7, count: 1 << 20)
        while chunk.withUnsafeBytes({ write(filler, $0.baseAddress, $0.count) }) > 0 {}
        #expect(unlink(fs.mountpoint + "/store/reserve") == 0)
        #expect(!store.spaceReserve.admitsGrowth())
        let depleted = try store.spaceReport()
        #expect(!depleted.reserveHeld && depleted.reserveAllocatedBytes == 0 && depleted.reserveBytes == 1 << 20)

        do {
            _ = try store.createTemplate(name: "refused", fromDirectory: source.path)
            Issue.record("an ingest went through while the reserve was in use")
        } catch {
            #expect(Errno.of(error) == .noSpace, "\(error)")
            #expect("\(error)".contains("space reserve"), "\(error)")
        }
        #expect(try store.template(named: "refused") == nil)
        #expect(try store.temporaryDirectory.rawDirectoryEntries().filter { !String(decoding: $0.name, as: UTF8.self).hasSuffix(".lock") }.isEmpty)

        // Space comes back: the reserve is allocated again and the ingest goes through.
        close(filler)
        #expect(unlink(fs.mountpoint + "/filler") == 0)
        let created = try store.createTemplate(name: "accepted", fromDirectory: source.path)
        #expect(created.regularFiles == 4)
        #expect(try store.spaceReport().reserveHeld)
        #expect(try runFsck(store).findings.isEmpty)
    }
}
