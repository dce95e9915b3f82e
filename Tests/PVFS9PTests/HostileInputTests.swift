import Foundation
import Glibc
import PVFS9PCodec
import SystemPackage
import Testing
@testable import PVFS9P
@testable import PVFSEngine

/// Feeds a connection messages directly (no socket) and collects every reply by tag.
final class DirectHarness: @unchecked Sendable {
    let fixture: NinePFixture
    let volume: Volume
    let pool: NinePWorkerPool
    let connection: NinePConnection
    private let condition = NSCondition()
    private var replies: [UInt16: [[UInt8]]] = [:]
    private(set) var replyCount = 0

    init(configuration: NinePConfiguration = NinePConfiguration()) throws {
        fixture = try NinePFixture()
        volume = try fixture.provision("vm1")
        let resolver = TestResolver(["vm1": volume], defaultVM: "vm1")
        pool = NinePWorkerPool(threads: 3)
        connection = NinePConnection(peer: NinePPeer(.local(remote: "fuzz", local: "direct"), connectionID: 9),
                                     configuration: configuration, pool: pool, logger: testLogger, resolver: resolver.resolver)
    }

    func send(_ message: [UInt8]) {
        connection.receive(message) { [self] reply in
            condition.lock()
            replies[NinePHeader(reply)?.tag ?? 0xFFFF, default: []].append(reply)
            replyCount += 1
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Sends and waits for the reply to `tag`.
    func call(_ message: [UInt8], tag: UInt16, timeout: Double = 10) -> [UInt8]? {
        send(message)
        return wait(tag: tag, timeout: timeout)
    }

    func call(_ request: NinePRequest, tag: UInt16 = 1) -> NinePResponse? {
        guard let reply = call(request.encode(tag: tag), tag: tag) else { return nil }
        return try? NinePResponse.decode(reply).response
    }

    func wait(tag: UInt16, timeout: Double = 10) -> [UInt8]? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while replies[tag]?.isEmpty ?? true {
            if !condition.wait(until: deadline) { return nil }
        }
        return replies[tag]!.removeFirst()
    }

    func takeAll() -> [UInt16: [[UInt8]]] {
        condition.lock()
        defer { condition.unlock() }
        let all = replies
        replies.removeAll()
        return all
    }

    func waitUntilIdle(timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while connection.outstandingRequestCount > 0 {
            if Date() > deadline { return false }
            usleep(1000)
        }
        return true
    }

    func finish() {
        connection.close()
        pool.shutdown()
    }
}

@Suite("9P server: hostile input")
struct HostileInputTests {
    @Test func malformedMessagesGetErrorsNotCrashes() throws {
        var config = NinePConfiguration()
        config.lockWaitSeconds = .infinity
        let h = try DirectHarness(configuration: config)
        defer { h.finish() }
        #expect(h.call(.version(msize: 65536, version: bytes("9P2000.L")), tag: NineP.noTag) == .version(msize: 65536, version: bytes("9P2000.L")))
        #expect(h.call(.attach(fid: 0, afid: NineP.noFid, uname: [], aname: [], uid: 0)) != nil)

        // Size field larger than the message.
        var m = NinePRequest.clunk(fid: 0).encode(tag: 2)
        NinePWriter.patchU32(&m, at: 0, 100)
        #expect(h.call(m, tag: 2).flatMap { try? NinePResponse.decode($0).response } == .error(errno: LinuxErrno.EPROTO))
        // Truncated body with a matching size field.
        var t = Array(NinePRequest.walk(fid: 0, newFid: 1, names: [bytes("etc")]).encode(tag: 3).dropLast(2))
        NinePWriter.patchU32(&t, at: 0, UInt32(t.count))
        #expect(h.call(t, tag: 3).flatMap { try? NinePResponse.decode($0).response } == .error(errno: LinuxErrno.EPROTO))
        // Unknown and legacy types.
        for type: UInt8 in [0, 1, 6, 7, 99, 112, 114, 124, 126, 201, 255] {
            var w = NinePWriter(type: NinePMessageType(rawValue: type), tag: 4)
            w.u32(0)
            #expect(h.call(w.finish(), tag: 4).flatMap { try? NinePResponse.decode($0).response } == .error(errno: LinuxErrno.EOPNOTSUPP))
        }
        // A fragment shorter than a header is ignored; a message over msize is refused.
        h.send([1, 2, 3])
        let big = NinePRequest.write(fid: 0, offset: 0, data: [UInt8](repeating: 0, count: 70000)[...]).encode(tag: 5)
        #expect(h.call(big, tag: 5).flatMap { try? NinePResponse.decode($0).response } == .error(errno: LinuxErrno.EMSGSIZE))
        // Fids that do not exist, NOFID, use after clunk.
        #expect(h.call(.getattr(fid: 12345, mask: .all), tag: 6) == .error(errno: LinuxErrno.EBADF))
        #expect(h.call(.walk(fid: 0, newFid: NineP.noFid, names: []), tag: 6) == .error(errno: LinuxErrno.EINVAL))
        #expect(h.call(.walk(fid: 0, newFid: 1, names: []), tag: 6) == .walk(qids: []))
        #expect(h.call(.clunk(fid: 1), tag: 6) == .clunk)
        #expect(h.call(.clunk(fid: 1), tag: 6) == .error(errno: LinuxErrno.EBADF))
        #expect(h.call(.read(fid: 1, offset: 0, count: 10), tag: 6) == .error(errno: LinuxErrno.EBADF))
        // Double attach of a fid.
        #expect(h.call(.attach(fid: 0, afid: NineP.noFid, uname: [], aname: [], uid: 0), tag: 7) == .error(errno: LinuxErrno.EINVAL))
        // Names with a slash, a NUL, too long.
        #expect(h.call(.walk(fid: 0, newFid: 2, names: [bytes("etc/passwd")]), tag: 8) == .error(errno: LinuxErrno.EINVAL))
        #expect(h.call(.walk(fid: 0, newFid: 2, names: [[0x61, 0, 0x62]]), tag: 8) == .error(errno: LinuxErrno.EINVAL))
        #expect(h.call(.mkdir(dfid: 0, name: [UInt8](repeating: 0x61, count: 256), mode: 0o755, gid: 0), tag: 8)
            == .error(errno: LinuxErrno.ENAMETOOLONG))
        #expect(h.call(.mkdir(dfid: 0, name: [], mode: 0o755, gid: 0), tag: 8) == .error(errno: LinuxErrno.ENOENT))
        #expect(h.call(.mkdir(dfid: 0, name: bytes(".."), mode: 0o755, gid: 0), tag: 8) == .error(errno: LinuxErrno.EEXIST))
        // A reused tag while its request is in flight is refused without disturbing the first.
        #expect(h.call(.walk(fid: 0, newFid: 3, names: [bytes("etc"), bytes("hostname")]), tag: 9) != nil)
        #expect(h.call(.lopen(fid: 3, flags: 2), tag: 9) != nil)
        #expect(h.call(.lock(fid: 3, lockRequest(NinePLockType.writeLock, pid: 1)), tag: 9) == .lock(status: 0))
        h.send(NinePRequest.lock(fid: 3, lockRequest(NinePLockType.writeLock, pid: 2, block: true)).encode(tag: 10))
        usleep(100_000)
        #expect(h.call(.getattr(fid: 0, mask: .all), tag: 10) == .error(errno: LinuxErrno.EPROTO))
        #expect(h.call(.flush(oldTag: 10), tag: 11) == .flush)
        #expect(h.wait(tag: 10, timeout: 1) == nil)
        #expect(h.connection.outstandingRequestCount == 0)
    }

    /// Seeds of the connection fuzz: 3, or PVFS_FUZZ_SEEDS of them for a longer run.
    static let fuzzSeeds: [UInt64] = Array(1...UInt64(ProcessInfo.processInfo.environment["PVFS_FUZZ_SEEDS"].flatMap { UInt64($0) } ?? 3))

    /// Thousands of random and mutated messages (seeded, so a failure repeats): the connection
    /// answers each with a well-formed reply of the right tag (or none, for a flushed request),
    /// never more than one, never over msize; it stays usable and closes cleanly.
    @Test(arguments: fuzzSeeds)
    func fuzzedMessages(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        var config = NinePConfiguration()
        config.maximumMessageSize = 65536
        config.maximumBlockedLocks = 4
        let h = try DirectHarness(configuration: config)
        defer { h.finish() }
        let msize = 65536
        var fuzzer = MessageFuzzer()

        func setUp() {
            _ = h.call(.version(msize: UInt32(msize), version: bytes("9P2000.L")), tag: NineP.noTag)
            _ = h.call(.attach(fid: 0, afid: NineP.noFid, uname: [], aname: [], uid: 0), tag: 1)
            _ = h.call(.walk(fid: 0, newFid: 1, names: [bytes("etc"), bytes("hostname")]), tag: 1)
            _ = h.call(.lopen(fid: 1, flags: 2), tag: 1)
            _ = h.call(.walk(fid: 0, newFid: 2, names: [bytes("etc")]), tag: 1)
            _ = h.call(.lopen(fid: 2, flags: 0), tag: 1)
            _ = h.call(.attach(fid: 3, afid: NineP.noFid, uname: [], aname: [], uid: 1000), tag: 1)
            _ = h.takeAll()
        }
        setUp()

        var sent = 0
        var answered = 0
        for batch in 0..<100 {
            var tags: [UInt16: UInt8] = [:]
            for i in 0..<40 {
                var message = fuzzer.message(&rng)
                guard message.count >= NineP.headerSize else {
                    h.send(message)
                    continue
                }
                let tag = UInt16(batch * 40 + i + 2)
                message[5] = UInt8(truncatingIfNeeded: tag)
                message[6] = UInt8(truncatingIfNeeded: tag >> 8)
                if message[4] == NinePMessageType.tversion.rawValue { message[4] = NinePMessageType.tgetattr.rawValue }
                tags[tag] = message[4]
                h.send(message)
                sent += 1
            }
            // Lock waits block until flushed: flush whatever is still pending.
            if !h.waitUntilIdle(timeout: 2) {
                var flushTag: UInt16 = 60000
                for (tag, _) in tags {
                    h.send(NinePRequest.flush(oldTag: tag).encode(tag: flushTag))
                    flushTag += 1
                }
                #expect(h.waitUntilIdle(timeout: 5), "requests still outstanding after flushing (seed \(seed), batch \(batch))")
            }
            for (tag, replies) in h.takeAll() {
                if tag >= 60000 {
                    for r in replies { #expect((try? NinePResponse.decode(r).response) == .flush) }
                    continue
                }
                #expect(replies.count == 1, "tag \(tag) got \(replies.count) replies")
                for reply in replies {
                    answered += 1
                    #expect(reply.count <= msize)
                    guard let decoded = try? NinePResponse.decode(reply) else {
                        Issue.record("undecodable reply \(reply.prefix(16)) (seed \(seed))")
                        continue
                    }
                    #expect(decoded.tag == tag)
                    if case .error = decoded.response { continue }
                    if let type = tags[tag] {
                        #expect(decoded.response.type.rawValue == type + 1)
                    }
                }
            }
            // Now and then the fuzzer's Tversion-like resets are simulated by a real one.
            if batch % 25 == 24 { setUp() }
        }
        #expect(answered > sent / 2)
        // Still serving (the fuzzer may have renamed anything, so only the root is sure).
        #expect(h.call(.walk(fid: 0, newFid: 900, names: [bytes(".")]), tag: 1)?.type == .rwalk)
        #expect(h.call(.getattr(fid: 900, mask: .all), tag: 1)?.type == .rgetattr)
        h.connection.close()
        h.volume.metaLock.lock()
        let open = h.volume.openData.count
        h.volume.metaLock.unlock()
        #expect(open == 0)
    }
}

/// Builds random T-messages: valid ones with hostile values, then mutated at the byte level.
struct MessageFuzzer {
    var names: [[UInt8]] = [
        [], bytes("."), bytes(".."), bytes("etc"), bytes("hostname"), bytes("bin"), bytes("sh"), bytes("big"),
        bytes("project"), bytes("notes"), bytes("new"), bytes("x"), bytes("a/b"), [0x61, 0, 0x62],
        [UInt8](repeating: 0x7A, count: 255), [UInt8](repeating: 0x7A, count: 256), [0xFF, 0xFE],
        bytes("user.a"), bytes("user.origin"), bytes("trusted.x"), bytes("system.posix_acl_access"),
    ]

    func fid(_ rng: inout SplitMix) -> UInt32 {
        switch rng.next() % 10 {
        case 0: NineP.noFid
        case 1: UInt32(truncatingIfNeeded: rng.next())
        default: UInt32(rng.next() % 12)
        }
    }

    func name(_ rng: inout SplitMix) -> [UInt8] {
        if rng.next() % 8 == 0 {
            return (0..<Int(rng.next() % 20)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        }
        return names[Int(rng.next() % UInt64(names.count))]
    }

    func u64(_ rng: inout SplitMix) -> UInt64 {
        switch rng.next() % 5 {
        case 0: 0
        case 1: UInt64.max
        case 2: rng.next() % 100_000
        case 3: UInt64(Int64.max)
        default: rng.next()
        }
    }

    func u32(_ rng: inout SplitMix) -> UInt32 {
        switch rng.next() % 4 {
        case 0: 0
        case 1: UInt32.max
        case 2: UInt32(rng.next() % 70000)
        default: UInt32(truncatingIfNeeded: rng.next())
        }
    }

    func request(_ rng: inout SplitMix) -> NinePRequest {
        switch rng.next() % 29 {
        case 0: return .auth(afid: fid(&rng), uname: name(&rng), aname: name(&rng), uid: u32(&rng))
        case 1: return .attach(fid: fid(&rng), afid: rng.next() % 2 == 0 ? NineP.noFid : fid(&rng), uname: name(&rng), aname: [], uid: u32(&rng))
        case 2: return .flush(oldTag: UInt16(truncatingIfNeeded: rng.next()))
        case 3, 4: return .walk(fid: fid(&rng), newFid: fid(&rng), names: (0..<Int(rng.next() % 5)).map { _ in name(&rng) })
        case 5: return .lopen(fid: fid(&rng), flags: u32(&rng))
        case 6: return .lcreate(fid: fid(&rng), name: name(&rng), flags: u32(&rng), mode: u32(&rng), gid: u32(&rng))
        case 7: return .read(fid: fid(&rng), offset: u64(&rng), count: u32(&rng))
        case 8:
            let n = Int(rng.next() % 3000)
            return .write(fid: fid(&rng), offset: u64(&rng), data: [UInt8](repeating: 0x41, count: n)[...])
        case 9: return .clunk(fid: fid(&rng))
        case 10: return .remove(fid: fid(&rng))
        case 11: return .statfs(fid: fid(&rng))
        case 12: return .symlink(fid: fid(&rng), name: name(&rng), target: name(&rng), gid: u32(&rng))
        case 13: return .mknod(dfid: fid(&rng), name: name(&rng), mode: u32(&rng), major: u32(&rng), minor: u32(&rng), gid: u32(&rng))
        case 14: return .rename(fid: fid(&rng), dfid: fid(&rng), name: name(&rng))
        case 15: return .readlink(fid: fid(&rng))
        case 16: return .getattr(fid: fid(&rng), mask: NinePAttributeMask(rawValue: u64(&rng)))
        case 17:
            return .setattr(fid: fid(&rng), NinePSetattr(valid: NinePSetattrMask(rawValue: u32(&rng)), mode: u32(&rng), uid: u32(&rng),
                                                          gid: u32(&rng), size: u64(&rng) % (1 << 24), accessTimeSeconds: u64(&rng),
                                                          accessTimeNanoseconds: u64(&rng), modificationTimeSeconds: u64(&rng),
                                                          modificationTimeNanoseconds: u64(&rng)))
        case 18: return .xattrwalk(fid: fid(&rng), newFid: fid(&rng), name: name(&rng))
        case 19: return .xattrcreate(fid: fid(&rng), name: name(&rng), size: u64(&rng) % 70000, flags: u32(&rng) % 5)
        case 20: return .readdir(fid: fid(&rng), offset: u64(&rng), count: u32(&rng))
        case 21: return .fsync(fid: fid(&rng), datasync: u32(&rng))
        case 22:
            return .lock(fid: fid(&rng), NinePLock(type: UInt8(rng.next() % 4), flags: UInt32(rng.next() % 4), start: u64(&rng) % 1000,
                                                   length: u64(&rng) % 1000, processID: UInt32(rng.next() % 4), clientID: name(&rng)))
        case 23:
            return .getlock(fid: fid(&rng), NinePGetlock(type: UInt8(rng.next() % 4), start: u64(&rng), length: u64(&rng),
                                                         processID: u32(&rng), clientID: name(&rng)))
        case 24: return .link(dfid: fid(&rng), fid: fid(&rng), name: name(&rng))
        case 25: return .mkdir(dfid: fid(&rng), name: name(&rng), mode: u32(&rng), gid: u32(&rng))
        case 26: return .renameat(oldDirFid: fid(&rng), oldName: name(&rng), newDirFid: fid(&rng), newName: name(&rng))
        case 27: return .unlinkat(dirFid: fid(&rng), name: name(&rng), flags: rng.next() % 2 == 0 ? 0 : u32(&rng))
        default: return .version(msize: u32(&rng), version: name(&rng))
        }
    }

    mutating func message(_ rng: inout SplitMix) -> [UInt8] {
        switch rng.next() % 10 {
        case 0:
            // Pure noise, with a consistent size field half of the time.
            var m = (0..<(4 + Int(rng.next() % 200))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if rng.next() % 2 == 0, m.count >= 4 { NinePWriter.patchU32(&m, at: 0, UInt32(m.count)) }
            return m
        case 1, 2:
            // A valid message with bytes flipped, cut or appended; size field fixed up.
            var m = request(&rng).encode(tag: 0)
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                switch rng.next() % 3 {
                case 0: m[Int(rng.next() % UInt64(m.count))] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
                case 1: if m.count > 7 { m.removeLast(1 + Int(rng.next() % UInt64(m.count - 7))) }
                default: m += (0..<Int(1 + rng.next() % 8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                }
            }
            if rng.next() % 4 != 0, m.count >= 4 { NinePWriter.patchU32(&m, at: 0, UInt32(m.count)) }
            return m
        default:
            return request(&rng).encode(tag: 0)
        }
    }
}

/// A small seeded generator (SplitMix64), so that randomized tests repeat exactly.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
