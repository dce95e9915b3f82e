import Foundation
import Glibc
import Logging
import PVFSEngineTestSupport
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

/// What one VM may hold in memory is bounded: inodes (a default quota derived from the byte
/// quota), hard links, xattrs, lock records; and the registry never turns a quick reconnect away.
@Suite("Tenant limits of the engine")
struct TenantLimitTests {
    /// A VM with only a byte quota gets an inode quota of one inode per 16 KiB of it: mass
    /// creation of empty files (or fifos, which cost no bytes at all) stops there with EDQUOT.
    @Test func massCreationStopsAtTheDerivedInodeQuota() throws {
        let f = try EngineFixture()
        _ = try f.provision("v", quotaBytes: 32 << 20)
        let v = try f.view("v")
        defer { try? v.volume.close() }
        let expected = Int64(32 << 20) / (16 << 10)
        #expect(expected == 2048)
        #expect(v.statistics().totalFiles == UInt64(expected))
        let dir = try v.makeDirectory(rootInode, Array("many".utf8), mode: 0o755, as: root).inode
        var created = 1
        var refusal: Errno?
        for i in 0..<5000 {
            do {
                if i % 2 == 0 {
                    let (_, handle) = try v.create(dir, Array("f\(i)".utf8), mode: 0o644, flags: O_RDWR, as: root)
                    v.release(handle)
                } else {
                    _ = try v.makeNode(dir, Array("p\(i)".utf8), mode: 0o010644, rdev: 0, as: root)
                }
                created += 1
            } catch {
                refusal = error
                break
            }
        }
        #expect(refusal == .diskQuotaExceeded)
        #expect(Int64(created) == expected)
        #expect(v.volume.usage.inodes == expected)
        #expect(v.volume.counters.limits.hits(.quotaInodes) == 1)
        // Deleting makes room again.
        try v.unlink(dir, Array("f0".utf8), as: root)
        _ = try v.makeNode(dir, Array("again".utf8), mode: 0o010644, rdev: 0, as: root)
    }

    /// Existing VMs without an inode quota get the default when opened; an explicit quota wins,
    /// and a quota change made live moves the default with it.
    @Test func defaultInodeQuotaFollowsTheByteQuota() throws {
        let f = try EngineFixture()
        _ = try f.provision("small", quotaBytes: 1 << 20)
        _ = try f.provision("explicit", quotaBytes: 1 << 30, quotaInodes: 10)
        _ = try f.provision("none")
        let small = try f.view("small")
        defer { try? small.volume.close() }
        #expect(small.volume.limits.inodes == InodeQuota.minimumDerived)
        small.volume.setQuota(bytes: 1 << 30, inodes: nil)
        #expect(small.volume.limits.inodes == (1 << 30) / (16 << 10))
        let explicit = try f.view("explicit")
        defer { try? explicit.volume.close() }
        #expect(explicit.volume.limits.inodes == 10)
        let none = try f.view("none")
        defer { try? none.volume.close() }
        #expect(none.volume.limits.inodes == VolumeLimits().inodesWithoutQuota)
        var limits = VolumeLimits()
        limits.inodesWithoutQuota = nil
        none.volume.metadataLimits = limits
        #expect(none.volume.limits.inodes == nil)
    }

    /// A quota change written to the catalog by another process reaches an open volume through
    /// reloadQuota (what a mount without pvfsd polls).
    @Test func reloadQuotaAppliesACatalogChange() throws {
        let f = try EngineFixture()
        _ = try f.provision("v", quotaBytes: 1 << 20)
        let v = try f.view("v")
        defer { try? v.volume.close() }
        #expect(try v.volume.reloadQuota() == false)
        try f.store.setQuota(vm: "v", bytes: .some(8192), inodes: .none)
        #expect(try v.volume.reloadQuota() == true)
        #expect(v.volume.limits.bytes == 8192)
        let (_, handle) = try v.create(rootInode, Array("data".utf8), mode: 0o644, flags: O_RDWR, as: root)
        defer { v.release(handle) }
        #expect(throws: Errno.diskQuotaExceeded) {
            _ = try v.write(handle, offset: 0, bytes: [UInt8](repeating: 1, count: 16384), as: root)
        }
    }

    /// Hard links cost no inode, so they have a limit of their own: as many as the VM's inode
    /// limit, all files together; and one file has at most `linksPerInode` names (EMLINK).
    @Test func hardLinksAreBounded() throws {
        let f = try EngineFixture()
        _ = try f.provision("v", quotaInodes: 100)
        let v = try f.view("v")
        defer { try? v.volume.close() }
        let dir = try v.makeDirectory(rootInode, Array("links".utf8), mode: 0o755, as: root).inode
        let outside = try v.makeDirectory(rootInode, Array("outside".utf8), mode: 0o755, as: root).inode
        let parent = try v.makeDirectory(rootInode, Array("subs".utf8), mode: 0o755, as: root).inode
        let file = try v.createFile("links", "target", "x").inode
        var made = 0
        var refusal: Errno?
        for i in 0..<150 {
            do {
                _ = try v.link(file, into: dir, Array("l\(i)".utf8), as: root)
                made += 1
            } catch {
                refusal = error
                break
            }
        }
        #expect(refusal == .diskQuotaExceeded)
        #expect(made == 100)
        #expect(v.volume.counters.limits.hits(.hardLinks) == 1)
        #expect(v.volume.metadataUsage.addedLinks == 100)
        // Removing a name gives its room back.
        try v.unlink(dir, Array("l0".utf8), as: root)
        #expect(v.volume.metadataUsage.addedLinks == 99)
        _ = try v.link(file, into: dir, Array("again".utf8), as: root)

        var limits = VolumeLimits()
        limits.linksPerInode = 5
        limits.hardLinks = 1000
        v.volume.metadataLimits = limits
        let other = try v.createFile("links", "other", "y").inode
        for i in 0..<4 { _ = try v.link(other, into: dir, Array("o\(i)".utf8), as: root) }
        #expect(throws: Errno.tooManyLinks) { _ = try v.link(other, into: dir, Array("o9".utf8), as: root) }
        #expect(v.volume.counters.limits.hits(.linksPerInode) == 1)
        // A directory's subdirectories count as its links too.
        for i in 0..<3 { _ = try v.makeDirectory(parent, Array("d\(i)".utf8), mode: 0o755, as: root) }
        #expect(throws: Errno.tooManyLinks) { _ = try v.makeDirectory(parent, Array("d9".utf8), mode: 0o755, as: root) }
        #expect(throws: Errno.tooManyLinks) {
            try v.rename(rootInode, Array("outside".utf8), to: parent, Array("moved".utf8), as: root)
        }
        _ = outside
        // The tally survives a reopen.
        try v.volume.close()
        let again = try f.view("v")
        defer { try? again.volume.close() }
        #expect(again.volume.metadataUsage.addedLinks == 104)
    }

    /// Extended attributes live in memory: bounded per inode (ENOSPC, as a full xattr block)
    /// and per VM (EDQUOT), whatever the byte quota.
    @Test func extendedAttributesAreBounded() throws {
        let f = try EngineFixture()
        _ = try f.provision("v")
        let v = try f.view("v")
        defer { try? v.volume.close() }
        var limits = VolumeLimits()
        limits.xattrsPerInode = 8
        limits.xattrBytesPerInode = 4096
        limits.xattrBytes = 20000
        v.volume.metadataLimits = limits
        let a = try v.createFile("/", "a", "").inode
        for i in 0..<8 { try v.setXattr(a, Array("user.k\(i)".utf8), [1], as: root) }
        #expect(throws: Errno.noSpace) { try v.setXattr(a, Array("user.k9".utf8), [1], as: root) }
        // Replacing a value in place is no new attribute.
        try v.setXattr(a, Array("user.k0".utf8), [2, 2], as: root)
        #expect(throws: Errno.noSpace) { try v.setXattr(a, Array("user.k1".utf8), [UInt8](repeating: 0, count: 5000), as: root) }
        var refusal: Errno?
        for i in 0..<20 {
            let ino = try v.createFile("/", "b\(i)", "").inode
            do {
                try v.setXattr(ino, Array("user.big".utf8), [UInt8](repeating: 7, count: 3000), as: root)
            } catch {
                refusal = error
                break
            }
        }
        #expect(refusal == .diskQuotaExceeded)
        #expect(v.volume.metadataUsage.xattrBytes <= 20000)
        #expect(v.volume.counters.limits.hits(.xattrBytes) == 1)
        #expect(v.volume.counters.limits.hits(.xattrsPerInode) == 1)
        #expect(v.volume.counters.limits.hits(.xattrBytesPerInode) == 1)
        // Removing frees room.
        let before = v.volume.metadataUsage.xattrBytes
        try v.removeXattr(a, Array("user.k0".utf8), as: root)
        #expect(v.volume.metadataUsage.xattrBytes == before - Int64("user.k0".utf8.count + 2))
    }

    /// A flood of lock records (every other byte, so none merge) ends in ENOLCK at the
    /// session's limit; the VM's total is bounded too, and adjacent ranges of one owner merge.
    @Test func lockRecordsAreBoundedAndMerge() throws {
        let f = try EngineFixture()
        _ = try f.provision("v")
        let v = try f.view("v")
        defer { try? v.volume.close() }
        #expect(VolumeLimits().lockRecords == 65536 && VolumeLimits().lockRecordsPerSession == 16384)
        var limits = VolumeLimits()
        limits.lockRecordsPerSession = 2000
        v.volume.metadataLimits = limits
        let ino = try v.createFile("/", "locked", "").inode
        func lock(_ view: VMView, _ type: LockType, _ byte: Int, owner: UInt64 = 1) throws(Errno) {
            try view.setLock(ino, owner: owner, range: FileLockRange(type: type, start: UInt64(byte), end: UInt64(byte), pid: 1), wait: false)
        }
        var taken = 0
        var refusal: Errno?
        for i in 0..<40_000 {
            do {
                try lock(v, .write, 2 * i)
                taken += 1
            } catch {
                refusal = error
                break
            }
        }
        #expect(refusal == .noLocks)
        #expect(taken == 2000)
        #expect(v.volume.locks.recordCount == taken)
        #expect(v.volume.counters.limits.hits(.lockRecordsPerSession) == 1)
        // Filling the gaps merges everything into one record.
        for i in 0..<taken { try lock(v, .write, 2 * i + 1) }
        #expect(v.volume.locks.recordCount == 1)
        #expect(v.testLock(ino, owner: 2, range: FileLockRange(type: .read, start: 0, end: .max, pid: 2))
            == FileLockRange(type: .write, start: 0, end: UInt64(2 * taken - 1), pid: 1))
        // Unlocking every other byte splits it again, up to the limit and no further.
        for i in 0..<taken { try lock(v, .unlock, 2 * i + 1) }
        #expect(v.volume.locks.recordCount == taken)
        #expect(throws: Errno.noLocks) { try lock(v, .read, 100_000) }

        // The VM's total, over sessions.
        limits.lockRecords = 100
        limits.lockRecordsPerSession = 60
        v.volume.metadataLimits = limits
        v.releaseAllLocks()
        #expect(v.volume.locks.recordCount == 0)
        let second = VMView(volume: v.volume, policy: SessionPolicy(side: .guest), sessionID: 2)
        for i in 0..<60 { try lock(v, .read, 2 * i) }
        #expect(throws: Errno.noLocks) { try lock(v, .read, 1000) }
        for i in 0..<40 { try lock(second, .read, 2 * i) }
        #expect(throws: Errno.noLocks) { try lock(second, .read, 1000) }
        #expect(v.volume.counters.limits.hits(.lockRecords) == 1)
        second.releaseAllLocks()
        #expect(v.volume.locks.recordCount == 60)
        #expect(v.volume.locks.recordCount(session: 2) == 0)
    }

    /// Offsets, lengths and times a client sends near the limits of 64 bits fail cleanly or are
    /// clamped; none traps (copy_file_range's overlap check used to overflow).
    @Test func clientValuesNearTheLimitsFailCleanly() throws {
        let f = try EngineFixture()
        _ = try f.provision("v")
        let v = try f.view("v")
        defer { try? v.volume.close() }
        let (a, h) = try v.create(rootInode, Array("x".utf8), mode: 0o644, flags: O_RDWR, as: root)
        _ = try v.write(h, offset: 0, bytes: Array("0123456789".utf8), as: root)
        #expect(throws: Errno.fileTooLarge) {
            _ = try v.copyRange(from: h, at: 0, to: h, at: Int64.max - 4, length: 8, as: root)
        }
        // Ranges of one file that overlap once the lengths run past 2^63.
        #expect(throws: Errno.invalidArgument) {
            _ = try v.copyRange(from: h, at: 2, to: h, at: Int64.max, length: Int.max, as: root)
        }
        #expect(throws: Errno.fileTooLarge) {
            try v.allocate(h, mode: FallocateMode.insertRange, offset: 0, length: Int64.max, as: root)
        }
        #expect(throws: Errno.fileTooLarge) {
            _ = try v.write(h, offset: Int64.max - 2, bytes: [1, 2, 3, 4], as: root)
        }
        let far = Timespec(seconds: Int64.max, nanoseconds: 5)
        let early = Timespec(seconds: Int64.min, nanoseconds: 0)
        _ = try v.setAttributes(a.inode, AttributeChanges(accessTime: .set(early), modificationTime: .set(far)), as: root)
        let limit = Int64.max / 1_000_000_000 - 1
        #expect(try v.getAttributes(a.inode).modificationTime == Timespec(seconds: limit, nanoseconds: 999_999_999))
        #expect(try v.getAttributes(a.inode).accessTime == Timespec(seconds: -limit, nanoseconds: 0))
        v.release(h)
        try v.volume.flushDirtyRecords()
        try v.volume.close()
        let again = try f.view("v")
        defer { try? again.volume.close() }
        #expect(try again.getAttributes(a.inode).modificationTime.seconds == limit)
    }

    /// A session opened while the VM's last session is closing waits for the close and gets
    /// the VM; it used to try to take the VM's lock while the closing volume still held it, and
    /// fail with EBUSY (a guest that reconnects at once, a rebooting guest's root). The close is
    /// held up here by holding the volume's metadata lock, which close() takes first.
    @Test func aSessionOpenedDuringTheLastCloseWaitsForIt() throws {
        let f = try EngineFixture()
        _ = try f.provision("v")
        var logger = Logger(label: "test.registry")
        logger.logLevel = .critical
        let registry = try VolumeRegistry(store: f.store, logger: logger)
        let first = try registry.openSession(vm: "v", policy: SessionPolicy(side: .guest))
        let volume = first.volume
        volume.metaLock.lock()
        let closed = DispatchSemaphore(value: 0)
        Thread { registry.closeSession(first); closed.signal() }.start()
        Thread.sleep(forTimeInterval: 0.2)
        let opened = DispatchSemaphore(value: 0)
        let result = Failures()
        Thread {
            do {
                let view = try registry.openSession(vm: "v", policy: SessionPolicy(side: .guest))
                result.add(view.volume === volume ? "the closing volume" : "ok")
                registry.closeSession(view)
            } catch {
                result.add("\(error)")
            }
            opened.signal()
        }.start()
        Thread.sleep(forTimeInterval: 0.2)
        // Other VMs are not held up meanwhile.
        _ = try f.provision("w")
        let other = try registry.openSession(vm: "w", policy: SessionPolicy(side: .guest))
        registry.closeSession(other)
        #expect(result.list.isEmpty, "the open did not wait for the close")
        volume.metaLock.unlock()
        closed.wait()
        opened.wait()
        #expect(result.list == ["ok"])
        #expect(registry.sessionCounts.isEmpty)
    }

    /// Sessions closing and opening on one VM at once: the last session's close and the next
    /// session's open never overlap, so the VM is never found busy (EBUSY) by its own process.
    @Test func quickReopensNeverFindTheVMBusy() throws {
        let f = try EngineFixture()
        _ = try f.provision("v")
        var logger = Logger(label: "test.registry")
        logger.logLevel = .critical
        let registry = try VolumeRegistry(store: f.store, logger: logger)
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for round in 0..<50 {
                do {
                    let view = try registry.openSession(vm: "v", policy: SessionPolicy(side: .guest))
                    if round % 7 == worker { _ = try view.getAttributes(rootInode) }
                    registry.closeSession(view)
                } catch {
                    failures.add("worker \(worker) round \(round): \(error)")
                }
            }
        }
        #expect(failures.list.isEmpty, "\(failures.list.prefix(3))")
        #expect(registry.sessionCounts.isEmpty)
        #expect(!f.store.isVMInUse(try f.store.requireVM(named: "v")))
    }
}

final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.lock(); items.append(s); lock.unlock() }
    var list: [String] { lock.lock(); defer { lock.unlock() }; return items }
}
