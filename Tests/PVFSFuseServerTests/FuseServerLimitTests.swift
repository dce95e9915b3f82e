import Foundation
import Glibc
import PVFSFuseCodec
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSFuseServer

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

private func lock(_ handle: UInt64, owner: UInt64, type: UInt32, start: UInt64 = 0, end: UInt64 = UInt64(Int64.max), flock: Bool = false) -> FuseLockIn {
    FuseLockIn(handle: handle, owner: owner, lock: FuseFileLock(start: start, end: end, type: type, pid: 7), lockFlags: flock ? FuseMiscFlags.lockFlock : 0)
}

@Suite("FUSE server: locks between sessions")
struct FuseServerLockTests {
    @Test("GETLK and SETLK see another session's lock; unlock frees it")
    func posixLocks() throws {
        let vm = try ServedFuseVM()
        let a = vm.client
        let b = vm.session()
        let (file, ah) = try #require(a.create(1, "locked"))
        _ = try #require(b.lookup(1, "locked"))
        let bh = try #require(b.openFile(file.nodeID, flags: O_RDWR))
        #expect(a.call(.setlk(lock(ah.handle, owner: 1, type: FuseFileLock.writeLock, start: 10, end: 19), wait: false), node: file.nodeID).error == 0)
        let conflict = b.call(.getlk(lock(bh, owner: 2, type: FuseFileLock.readLock)), node: file.nodeID)
        let out = try #require(conflict.decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseFileLock.decode(&r) })
        #expect(out.type == FuseFileLock.writeLock && out.start == 10 && out.end == 19 && out.pid == 7)
        #expect(b.call(.setlk(lock(bh, owner: 2, type: FuseFileLock.readLock, start: 15, end: 15), wait: false), node: file.nodeID).errno
            == .resourceTemporarilyUnavailable)
        // No conflict outside the range; the reply says F_UNLCK.
        let free = b.call(.getlk(lock(bh, owner: 2, type: FuseFileLock.writeLock, start: 20, end: 30)), node: file.nodeID)
        #expect(free.decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseFileLock.decode(&r) }?.type == FuseFileLock.unlock)
        // A whole-file lock reports its end as OFFSET_MAX, never beyond (the kernel refuses that).
        #expect(a.call(.setlk(lock(ah.handle, owner: 1, type: FuseFileLock.writeLock, start: 100), wait: false), node: file.nodeID).error == 0)
        let whole = b.call(.getlk(lock(bh, owner: 2, type: FuseFileLock.readLock, start: 1000)), node: file.nodeID)
        #expect(whole.decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseFileLock.decode(&r) }?.end == UInt64(Int64.max))
        // FLUSH by the owner drops its POSIX locks.
        #expect(a.call(.flush(handle: ah.handle, lockOwner: 1), node: file.nodeID).error == 0)
        #expect(b.call(.setlk(lock(bh, owner: 2, type: FuseFileLock.writeLock), wait: false), node: file.nodeID).error == 0)
        // Bad ranges and types.
        #expect(b.call(.setlk(lock(bh, owner: 2, type: 9), wait: false), node: file.nodeID).errno == .invalidArgument)
        #expect(b.call(.setlk(lock(bh, owner: 2, type: 1, start: 10, end: 5), wait: false), node: file.nodeID).errno == .invalidArgument)
    }

    @Test("SETLKW waits until the holder unlocks")
    func waitGranted() throws {
        let vm = try ServedFuseVM()
        let a = vm.client
        let b = vm.session()
        let (file, ah) = try #require(a.create(1, "w"))
        _ = try #require(b.lookup(1, "w"))
        let bh = try #require(b.openFile(file.nodeID, flags: O_RDWR))
        #expect(a.call(.setlk(lock(ah.handle, owner: 1, type: FuseFileLock.writeLock), wait: false), node: file.nodeID).error == 0)
        let (sink, _) = b.post(.setlk(lock(bh, owner: 2, type: FuseFileLock.writeLock), wait: true), node: file.nodeID)
        #expect(sink.take(timeout: 0.3) == nil)
        #expect(b.server.waitingLocks == 1)
        #expect(a.call(.setlk(lock(ah.handle, owner: 1, type: FuseFileLock.unlock), wait: false), node: file.nodeID).error == 0)
        #expect(sink.take(timeout: 5)?.error == 0)
        #expect(b.server.waitingLocks == 0)
        #expect(a.call(.getlk(lock(ah.handle, owner: 1, type: FuseFileLock.readLock)), node: file.nodeID)
            .decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseFileLock.decode(&r) }?.type == FuseFileLock.writeLock)
    }

    @Test("INTERRUPT ends a waiting SETLKW with EINTR, also when it comes first")
    func interrupted() throws {
        let vm = try ServedFuseVM()
        let a = vm.client
        let b = vm.session()
        let (file, ah) = try #require(a.create(1, "i"))
        _ = try #require(b.lookup(1, "i"))
        let bh = try #require(b.openFile(file.nodeID, flags: O_RDWR))
        #expect(a.call(.setlk(lock(ah.handle, owner: 1, type: FuseFileLock.writeLock), wait: false), node: file.nodeID).error == 0)
        let (sink, unique) = b.post(.setlk(lock(bh, owner: 2, type: FuseFileLock.writeLock), wait: true), node: file.nodeID)
        let (interruptSink, _) = b.post(.interrupt(unique: unique), node: 0)
        #expect(interruptSink.noReplyCount == 1)
        #expect(sink.take(timeout: 5)?.errno == .interrupted)
        // An INTERRUPT read before the SETLKW it names.
        let early = b.uniqueID() + 1000
        b.post(.interrupt(unique: early), node: 0)
        let (sink2, _) = b.post(.setlk(lock(bh, owner: 2, type: FuseFileLock.writeLock), wait: true), node: file.nodeID, unique: early)
        #expect(sink2.take(timeout: 5)?.errno == .interrupted)
        #expect(b.server.waitingLocks == 0)
    }

    @Test("flock locks are apart from POSIX locks; RELEASE with FLOCK_UNLOCK drops them")
    func flock() throws {
        let vm = try ServedFuseVM()
        let a = vm.client
        let b = vm.session()
        let (file, ah) = try #require(a.create(1, "fl"))
        _ = try #require(b.lookup(1, "fl"))
        let bh = try #require(b.openFile(file.nodeID, flags: O_RDWR))
        #expect(a.call(.setlk(lock(ah.handle, owner: 1, type: FuseFileLock.writeLock, flock: true), wait: false), node: file.nodeID).error == 0)
        // A POSIX lock does not conflict with a flock lock.
        #expect(b.call(.setlk(lock(bh, owner: 2, type: FuseFileLock.writeLock), wait: false), node: file.nodeID).error == 0)
        #expect(b.call(.setlk(lock(bh, owner: 2, type: FuseFileLock.readLock, flock: true), wait: false), node: file.nodeID).errno
            == .resourceTemporarilyUnavailable)
        #expect(a.call(.release(FuseReleaseIn(handle: ah.handle, releaseFlags: FuseMiscFlags.releaseFlockUnlock, lockOwner: 1)), node: file.nodeID).error == 0)
        #expect(b.call(.setlk(lock(bh, owner: 2, type: FuseFileLock.readLock, flock: true), wait: false), node: file.nodeID).error == 0)
    }

    @Test("the session ending cancels its waits and drops its locks")
    func sessionEnd() throws {
        let vm = try ServedFuseVM()
        let a = vm.client
        let b = vm.session()
        let (file, ah) = try #require(a.create(1, "e"))
        _ = try #require(b.lookup(1, "e"))
        let bh = try #require(b.openFile(file.nodeID, flags: O_RDWR))
        #expect(a.call(.setlk(lock(ah.handle, owner: 1, type: FuseFileLock.writeLock), wait: false), node: file.nodeID).error == 0)
        let (sink, _) = b.post(.setlk(lock(bh, owner: 2, type: FuseFileLock.writeLock), wait: true), node: file.nodeID)
        b.server.transportClosed()
        #expect(sink.take(timeout: 5)?.errno == .interrupted)
        a.server.transportClosed()
        #expect(vm.volume.locks.recordCount == 0)
    }
}

@Suite("FUSE server: per-session bounds and hostile input")
struct FuseServerLimitTests {
    @Test("the node table is bounded: LOOKUP gets ENFILE, READDIRPLUS leaves attributes out")
    func nodeLimit() throws {
        var limits = FuseSessionLimits()
        limits.nodes = 3
        let vm = try ServedFuseVM(configuration: .guest(limits: limits))
        let c = vm.client
        _ = try #require(c.lookup(1, "etc"))
        _ = try #require(c.lookup(1, "bin"))
        _ = try #require(c.lookup(1, "home"))
        #expect(c.call(.lookup(name: bytes("big"))).errno == .tooManyOpenFilesInSystem)
        #expect(vm.server.limitCounters.hits(.nodes) == 1)
        // Held nodes are still looked up; creating is refused before anything is made.
        #expect(c.lookup(1, "etc") != nil)
        #expect(c.call(.mkdir(mode: 0o755, umask: 0, name: bytes("d"))).errno == .tooManyOpenFilesInSystem)
        #expect(c.lookup(1, "d") == nil || c.lookup(1, "d")?.nodeID == 0)
        let dir = try #require(c.call(.opendir(flags: 0, openFlags: 0)).open?.handle)
        let entries = try c.call(.readdirplus(FuseReadIn(handle: dir, offset: 0, size: 65536))).payload.withUnsafeBytes { try FuseDirent.decodeAllPlus($0) }
        let big = try #require(entries.first { $0.1.name == bytes("big") })
        #expect(big.0.nodeID == 0 && big.0.attr.ino == 8)
        #expect(vm.server.heldNodes == 3)
        // Forgetting every lookup of "etc" (two LOOKUPs and a READDIRPLUS) makes room again.
        c.post(.forget(count: 3), node: 2)
        #expect(c.lookup(1, "big")?.nodeID == 8)
    }

    @Test("open handles are bounded: ENFILE, and the engine's file is closed again")
    func handleLimit() throws {
        var limits = FuseSessionLimits()
        limits.openHandles = 2
        let vm = try ServedFuseVM(configuration: .guest(limits: limits))
        let c = vm.client
        _ = try #require(c.lookup(1, "etc"))
        _ = try #require(c.lookup(2, "hostname"))
        let h1 = try #require(c.openFile(3))
        _ = try #require(c.openFile(3))
        #expect(c.call(.open(flags: 0, openFlags: 0), node: 3).errno == .tooManyOpenFilesInSystem)
        #expect(c.call(.opendir(flags: 0, openFlags: 0), node: 2).errno == .tooManyOpenFilesInSystem)
        #expect(c.create(1, "nope") == nil)
        #expect(vm.server.limitCounters.hits(.openHandles) == 3)
        _ = c.release(3, handle: h1)
        #expect(c.openFile(3) != nil)
    }

    @Test("waiting SETLKWs are bounded: ENOLCK past the limit")
    func lockWaitLimit() throws {
        var limits = FuseSessionLimits()
        limits.lockWaits = 2
        let vm = try ServedFuseVM()
        let a = vm.client
        let b = vm.session(configuration: .guest(limits: limits))
        let (file, ah) = try #require(a.create(1, "busy"))
        _ = try #require(b.lookup(1, "busy"))
        let bh = try #require(b.openFile(file.nodeID, flags: O_RDWR))
        #expect(a.call(.setlk(lock(ah.handle, owner: 1, type: FuseFileLock.writeLock), wait: false), node: file.nodeID).error == 0)
        let (s1, _) = b.post(.setlk(lock(bh, owner: 10, type: FuseFileLock.writeLock), wait: true), node: file.nodeID)
        let (s2, _) = b.post(.setlk(lock(bh, owner: 11, type: FuseFileLock.writeLock), wait: true), node: file.nodeID)
        #expect(b.call(.setlk(lock(bh, owner: 12, type: FuseFileLock.writeLock), wait: true), node: file.nodeID).errno == .noLocks)
        #expect(b.server.limitCounters.hits(.lockWaits) == 1)
        b.server.transportClosed()
        #expect(s1.take()?.errno == .interrupted && s2.take()?.errno == .interrupted)
    }

    @Test("replies stay within the bound and the transport's capacity")
    func replyBounds() throws {
        var limits = FuseSessionLimits()
        limits.replyBytes = 64 << 10
        let vm = try ServedFuseVM(configuration: .guest(limits: limits))
        let c = vm.client
        _ = try #require(c.lookup(1, "big"))
        let fh = try #require(c.openFile(8))
        // A READ of 4 GiB gets what the bound allows (the kernel never asks beyond max_pages).
        let huge = c.read(8, handle: fh, size: .max)
        #expect(huge.error == 0 && huge.payload.count == (64 << 10) - 16)
        #expect(vm.server.limitCounters.hits(.replyBytes) >= 1)
        // A virtqueue chain with little writable room gets a reply that fits it.
        let small = c.call(.read(FuseReadIn(handle: fh, offset: 0, size: 4096)), node: 8, capacity: 100)
        #expect(small.payload.count == 84)
        let dir = try #require(c.call(.opendir(flags: 0, openFlags: 0)).open?.handle)
        let listing = c.call(.readdirplus(FuseReadIn(handle: dir, offset: 0, size: 65536)), capacity: 400)
        #expect(listing.payload.count + 16 <= 400)
        // Offsets past Int64 are refused.
        #expect(c.read(8, handle: fh, offset: UInt64(Int64.max) + 1).errno == .invalidArgument)
    }

    @Test("garbage, truncated and mutated requests never trap and answer EIO when they can")
    func hostileBytes() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        _ = try #require(c.lookup(1, "etc"))
        _ = try #require(c.lookup(2, "hostname"))
        let fh = try #require(c.openFile(3))
        let samples: [[UInt8]] = [
            FuseRequest.lookup(name: bytes("hostname")).encode(unique: 1, nodeID: 2),
            FuseRequest.read(FuseReadIn(handle: fh, offset: 0, size: 10)).encode(unique: 2, nodeID: 3),
            FuseRequest.write(FuseWriteIn(handle: fh, offset: 0, size: 0), dataOffset: 0).encode(unique: 3, nodeID: 3, data: [1, 2, 3]),
            FuseRequest.setxattr(flags: 0, setxattrFlags: 0, name: bytes("user.a"), value: [1]).encode(unique: 4, nodeID: 3),
            FuseRequest.batchForget([FuseForgetOne(nodeID: 2, count: 1)]).encode(unique: 5, nodeID: 0),
            FuseRequest.rename(newParent: 1, flags: 0, name: bytes("a"), newName: bytes("b"), version2: true).encode(unique: 6, nodeID: 1),
            FuseRequest.initialise(FuseInitIn(major: 7, minor: 38, maxReadahead: 0, flags: [])).encode(unique: 7, nodeID: 0),
        ]
        var generator = SystemRandomNumberGenerator()
        for sample in samples {
            // Every prefix, with the length field fixed up or not.
            for n in 0..<sample.count {
                var prefix = Array(sample[0..<n])
                _ = c.postRaw(prefix)
                if n >= 4 {
                    FuseWriter.patchU32(&prefix, at: 0, UInt32(n))
                    _ = c.postRaw(prefix)
                }
            }
            // Random byte flips past the header's opcode.
            for _ in 0..<200 {
                var mutated = sample
                for _ in 0..<3 {
                    let i = Int.random(in: 8..<mutated.count, using: &generator)
                    mutated[i] = UInt8.random(in: 0...255, using: &generator)
                }
                _ = c.postRaw(mutated)
            }
        }
        // Random messages of every opcode but DESTROY: a DESTROY with an empty body (about one
        // random message in 120) is well-formed and ends the session by design, after which the
        // last check below would rightly get EIO.
        for opcode in 0..<60 where opcode != Int(FuseOpcode.destroy.rawValue) {
            for _ in 0..<20 {
                var w = FuseWriter()
                let body = (0..<Int.random(in: 0..<120, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
                FuseInHeader(length: UInt32(40 + body.count), opcode: UInt32(opcode), unique: 99, nodeID: UInt64.random(in: 0...12, using: &generator)).encode(into: &w)
                w.data(body)
                _ = c.postRaw(w.bytes)
            }
        }
        // A request whose header cannot be read gets nothing; one whose can gets EIO.
        #expect(c.postRaw([1, 2, 3]).noReplyCount == 1)
        var bad = FuseRequest.lookup(name: bytes("x")).encode(unique: 77, nodeID: 1)
        bad.removeLast()
        let sink = c.postRaw(bad)
        let reply = try #require(sink.take())
        #expect(reply.header.unique == 77 && reply.errno == .ioError)
        // The session still works.
        #expect(c.call(.getattr(flags: 0, handle: 0), node: 1).error == 0)
    }

    @Test("concurrent requests from several threads keep the tables consistent")
    func concurrency() async throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<4 {
                group.addTask {
                    for i in 0..<50 {
                        guard let (entry, open) = c.create(1, "t\(t)-\(i)") else { continue }
                        _ = c.write(entry.nodeID, handle: open.handle, [UInt8](repeating: UInt8(i), count: 100))
                        _ = c.release(entry.nodeID, handle: open.handle)
                        c.post(.forget(count: 1), node: entry.nodeID)
                    }
                }
            }
        }
        #expect(vm.server.openHandles == 0)
        #expect(vm.server.heldNodes == 0)
    }
}
