import Foundation
import Glibc
import PVFS9P
import PVFS9PCodec
import PVFSTestSupport
import SystemPackage
import Testing

/// A real pvfsd under a hostile tenant, over raw 9P on TCP: the abuser's VM and listener take
/// garbage, floods, Tflush chains and storms, connection floods, slow reads, reconnects, lock,
/// inode, link and xattr floods, while the victim, another VM on another listener, is served as
/// if nothing happened, and the daemon lives, stays within its memory and exits cleanly.
///
/// Covered elsewhere: the catalog's safety (CatalogTortureTests), a quota change reaching a
/// standalone `pvfs-vm mount` (PVFSFuseTests.MountCommandTests), slow xenstore teardown and
/// hostile Xen frontends (PVFSTransportTests: XenBackendCoreTests, HostileXenFrontendTests),
/// guests on QEMU user networking (Tests/guest/run-9p-isolated.sh).
///
/// Environment: `PVFS_HOSTILE_CYCLES` (abuse cycles of the memory test, default 10000; the
/// full run is 100000), `PVFS_HOSTILE_LATENCY_ROUNDS` (quiet/loaded rounds, default 4),
/// `PVFS_HOSTILE_LATENCY_SAMPLES` (requests per phase, default 2000), `PVFS_HOSTILE_SEED`
/// (replays the random choices), `PVFS_HOSTILE_LOAD_IN_PROCESS` (the latency test's loads run
/// in this process rather than in a child), `PVFS_HOSTILE_TENANT_CPU_NICE` (that setting for
/// the latency test's pvfsd), `PVFS_HOSTILE_PVFSD` (another pvfsd binary, for before/after).
/// bench/hostile-tenant.sh runs the latency and memory tests long and prints their numbers.
@Suite("pvfsd: hostile tenants", .serialized)
struct HostileTenantTests {
    static let environment = ProcessInfo.processInfo.environment
    static let seed: UInt64 = environment["PVFS_HOSTILE_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)

    /// The well-behaved guest: VM "victim" mounted on its own listener, /big open as fid 1.
    final class Victim {
        let connection: RawNineConnection
        private var round = 0
        static let big = benchContent(seed: 3, file: 0, bytes: 1 << 20)

        init(_ daemon: HostileDaemon) throws {
            connection = try RawNineConnection(port: daemon.victimPort)
            try connection.mount("victim")
            try connection.open("big", fid: 1)
        }

        /// One of the guest's requests: a getattr, a 4 KiB read (checked), or a walk and a clunk.
        func request() throws {
            round += 1
            switch round % 3 {
            case 0:
                guard case .getattr(let a) = try connection.call(.getattr(fid: 1, mask: .all)), a.size == 1 << 20 else {
                    throw TestSupportError("victim: getattr of /big failed")
                }
            case 1:
                let offset = (round * 4096) % (1 << 20)
                guard case .read(let data) = try connection.call(.read(fid: 1, offset: UInt64(offset), count: 4096)),
                      Array(data) == Array(Self.big[offset..<offset + 4096]) else {
                    throw TestSupportError("victim: read of /big at \(offset) failed")
                }
            default:
                guard case .walk(let qids) = try connection.call(.walk(fid: 0, newFid: 3, names: [Array("d\(round % 8)".utf8)])),
                      qids.count == 1, case .clunk = try connection.call(.clunk(fid: 3)) else {
                    throw TestSupportError("victim: walk to d\(round % 8) failed")
                }
            }
        }

        /// A few requests; throws unless each is answered correctly.
        func check() throws {
            for _ in 0..<3 { try request() }
        }
    }

    /// Ends the test's daemon: it must still run, exit 0 on SIGTERM, and leave a store that
    /// `pvfs fsck` finds clean.
    func finish(_ daemon: HostileDaemon) throws {
        #expect(daemon.isAlive, "pvfsd died: \(daemon.logTail())")
        let status = daemon.stop()
        #expect(status == 0, "pvfsd exited \(status.map(String.init) ?? "only to SIGKILL"): \(daemon.logTail())")
        let fsck = try runTool("pvfs", ["fsck", "--store", daemon.store])
        #expect(fsck.status == 0, "pvfs fsck: \(fsck.stdout)\(fsck.stderr)")
    }

    /// Waits until the abuser's VM has no session left (every connection of it ended).
    func waitForAbuserToLeave(_ daemon: HostileDaemon, timeout: Double = 30) throws -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while try daemon.sessions("abuser") > 0 {
            if Date() > deadline { return false }
            usleep(100_000)
        }
        return true
    }

    // MARK: - Garbage

    /// Random bytes, size fields below the header or beyond any msize, frames cut short, and
    /// well-framed requests with hostile values (bad fids, duplicate and NOTAG tags, huge
    /// counts and offsets, overlong names, unknown types): each gets an error or ends its
    /// connection, and nothing else.
    @Test func garbageNeverHurtsTheDaemon() throws {
        print("hostile: PVFS_HOSTILE_SEED=\(Self.seed)")
        let daemon = try HostileDaemon(settings: ["handshake-timeout = 3"])
        try mustRun("pvfs-vm", ["set-quota", "abuser", "--bytes", "64M", "--store", daemon.store])
        let victim = try Victim(daemon)
        var maker = GarbageMaker(seed: Self.seed)

        // Framing violations end the connection, before Tversion or after an attach.
        var ended = 0
        for i in 0..<150 {
            let c = try RawNineConnection(port: daemon.abuserPort, sourceHost: UInt8(2 + i % 8))
            if i % 2 == 1 { try c.mount("abuser") }
            c.send(maker.framingViolation())
            if c.endsWithin(10) { ended += 1 }
            c.abort()
            if i % 25 == 0 { try victim.check() }
        }
        #expect(ended == 150)

        // Frames cut short: the rest never comes, the connection is reset or times out.
        var hanging: [RawNineConnection] = []
        for i in 0..<50 {
            let c = try RawNineConnection(port: daemon.abuserPort, sourceHost: UInt8(2 + i % 8))
            let message = NinePRequest.version(msize: 65536, version: NineP.protocolVersion).encode(tag: NineP.noTag)
            c.send(Array(message.prefix(Int.random(in: 1..<message.count, using: &maker.random))))
            if i % 2 == 0 { c.abort() } else { hanging.append(c) }
        }
        try victim.check()
        // The handshake timeout closes the ones left hanging.
        for c in hanging { #expect(c.endsWithin(15)) }

        // Hostile messages on attached connections, pipelined, replies read at the end.
        var answered = 0, closedByServer = 0
        for i in 0..<60 {
            let c = try RawNineConnection(port: daemon.abuserPort, sourceHost: UInt8(2 + i % 8))
            try c.mount("abuser")
            for _ in 0..<100 { c.send(maker.message()) }
            // Whatever state the garbage left, a fresh Tversion and Tattach are served, or the
            // connection was ended by a framing error (a message above a small msize). The
            // garbage uses tags up to 40 and NOTAG: the attach's tag is the connection's own.
            do {
                c.send(NinePRequest.version(msize: 65536, version: NineP.protocolVersion).encode(tag: NineP.noTag))
                let attach = try c.call(.attach(fid: 60_000, afid: NineP.noFid, uname: [], aname: Array("abuser".utf8), uid: 0),
                                        tag: 60_000)
                guard case .attach = attach else { throw TestSupportError("\(attach)") }
                answered += 1
            } catch {
                #expect(c.endsWithin(5), "connection \(i): neither served nor closed: \(error)")
                closedByServer += 1
            }
            c.abort()
            if i % 10 == 0 {
                try victim.check()
                #expect(daemon.isAlive)
            }
        }
        print("hostile: garbage: \(answered) connections served after 100 hostile messages, \(closedByServer) closed")
        #expect(answered > 0)
        #expect(try waitForAbuserToLeave(daemon))
        try victim.check()
        try finish(daemon)
    }

    // MARK: - Tflush

    /// A chain of 5000 Tflush, each for the one before, behind a lock wait (this recursed once
    /// per link and crashed pvfsd), then a storm of 20000 Tflush of idle tags: every one is
    /// answered, in order, and the victim is served meanwhile.
    @Test func flushChainsAndStorms() throws {
        let daemon = try HostileDaemon()
        let victim = try Victim(daemon)
        let holder = try RawNineConnection(port: daemon.abuserPort)
        try holder.mount("abuser")
        try holder.open("big", fid: 1, flags: 2)
        let writeLock = { (pid: UInt32, wait: Bool) in
            NinePLock(type: 1, flags: wait ? 1 : 0, start: 0, length: 0, processID: pid, clientID: Array("c\(pid)".utf8))
        }
        guard case .lock(let held) = try holder.call(.lock(fid: 1, writeLock(1, false))) else {
            Issue.record("no Rlock")
            return
        }
        #expect(held == 0)

        let chain = try RawNineConnection(port: daemon.abuserPort)
        try chain.mount("abuser")
        try chain.open("big", fid: 1, flags: 2)
        var burst = NinePRequest.lock(fid: 1, writeLock(2, true)).encode(tag: 0)
        let links = 5000
        for tag in 1...links { burst += NinePRequest.flush(oldTag: UInt16(tag - 1)).encode(tag: UInt16(tag)) }
        // Sent from another thread: pvfsd stops reading while 64 flushes wait.
        let chainBytes = burst
        let sender = Thread { chain.send(chainBytes) }
        sender.start()
        try victim.check()
        usleep(200_000)
        _ = try holder.call(.lock(fid: 1, NinePLock(type: 2, flags: 0, start: 0, length: 0, processID: 1, clientID: Array("c1".utf8))))
        var next: UInt16 = 1
        var outOfOrder = 0
        while Int(next) <= links {
            guard let decoded = try? NinePResponse.decode(try chain.receive()) else { break }
            if decoded.tag == 0 { continue }   // the lock, if it was granted before its flush
            guard case .flush = decoded.response else {
                Issue.record("tag \(decoded.tag): \(decoded.response)")
                break
            }
            if decoded.tag != next { outOfOrder += 1 }
            next = decoded.tag &+ 1
        }
        #expect(Int(next) == links + 1 && outOfOrder == 0, "\(next - 1) of \(links) Rflush, \(outOfOrder) out of order")
        #expect(daemon.isAlive)
        try victim.check()

        // A storm of flushes of tags that are not in flight, some of NOTAG and of themselves.
        let storm = try RawNineConnection(port: daemon.abuserPort)
        try storm.mount("abuser")
        var stormBytes: [UInt8] = []
        for i in 0..<20_000 {
            let tag = UInt16(i % 60_000)
            let old: UInt16 = i % 7 == 0 ? NineP.noTag : (i % 11 == 0 ? tag : UInt16((i * 31) % 65_000))
            stormBytes += NinePRequest.flush(oldTag: old).encode(tag: tag)
        }
        let stormMessages = stormBytes
        let stormSender = Thread { storm.send(stormMessages) }
        stormSender.start()
        var flushes = 0
        while flushes < 20_000 {
            guard let decoded = try? NinePResponse.decode(try storm.receive()), case .flush = decoded.response else { break }
            flushes += 1
            if flushes % 5000 == 0 { try victim.check() }
        }
        #expect(flushes == 20_000)
        for c in [holder, chain, storm] { c.abort() }
        #expect(try waitForAbuserToLeave(daemon))
        try finish(daemon)
    }

    // MARK: - Connections

    /// 600 idle connections (no Tversion) on the abuser's listener, and a thread reconnecting
    /// without pause: the victim connects and is served, the flood is refused at its
    /// listener's cap, and the handshake and idle timeouts close what stays silent.
    @Test func connectionFloodsAndTimeouts() throws {
        let daemon = try HostileDaemon(settings: ["handshake-timeout = 3", "idle-timeout = 3"])
        let victim = try Victim(daemon)
        var idle: [RawNineConnection] = []
        for i in 0..<600 { idle.append(try RawNineConnection(port: daemon.abuserPort, sourceHost: UInt8(2 + i % 8))) }
        // The victim's listener keeps its share: fresh connections are served.
        for _ in 0..<20 {
            let c = try RawNineConnection(port: daemon.victimPort)
            try c.mount("victim")
            c.abort()
        }
        try victim.check()
        let refused = daemon.metric(#"pvfs_tenant_refusals_total{kind="listener",tenant="abuser",limit="max-connections-per-listener"}"#) ?? 0
        #expect(refused >= 600 - 256, "refusals at the abuser's listener cap: \(refused)")

        // Every idle one ends: refused at the cap, or closed at the handshake timeout.
        var endedIdle = 0
        for c in idle where c.endsWithin(10) { endedIdle += 1 }
        #expect(endedIdle == 600)
        idle.forEach { $0.abort() }
        // Attached, then the last fid clunked: no fid, nothing sent, closed after the idle timeout.
        let late = try RawNineConnection(port: daemon.abuserPort)
        try late.mount("abuser")
        guard case .clunk = try late.call(.clunk(fid: 0)) else {
            Issue.record("no Rclunk")
            return
        }
        #expect(late.endsWithin(10), "a connection without fids stayed past the idle timeout")
        // The victim holds its root fid: never idle, still served after the timeouts.
        try victim.check()

        // Reconnects without pause while the victim reconnects too.
        let flood = TenantFlood(port: daemon.abuserPort, shape: .init(pipelines: 0, slowReaders: 0, churners: 3, garbage: 1),
                                seed: Self.seed)
        flood.start()
        for _ in 0..<100 {
            let c = try RawNineConnection(port: daemon.victimPort)
            try c.mount("victim")
            c.abort()
        }
        flood.stop()
        #expect(flood.problems.isEmpty, "\(flood.problems.prefix(3))")
        print("hostile: connections: \(flood.counts.connections) abuser reconnects during 100 of the victim's")
        try victim.check()
        late.abort()
        #expect(try waitForAbuserToLeave(daemon))
        try finish(daemon)
    }

    // MARK: - Sessions

    /// 300 quick connect/attach/reset rounds are each served (a reconnect found its VM busy
    /// when the last session's volume was closed outside the registry's lock); one connection
    /// attaching without end is refused past its session limit; attach/clunk cycles leave no
    /// session behind.
    @Test func reconnectsAndSessionFloods() throws {
        let daemon = try HostileDaemon()
        let victim = try Victim(daemon)
        var refused = 0
        for round in 0..<300 {
            let c = try RawNineConnection(port: daemon.abuserPort, sourceHost: UInt8(2 + round % 8))
            guard case .version = try c.call(.version(msize: 65536, version: NineP.protocolVersion), tag: NineP.noTag) else { continue }
            if case .error(let e) = try c.call(.attach(fid: 0, afid: NineP.noFid, uname: [], aname: Array("abuser".utf8), uid: 0)) {
                refused += 1
                print("hostile: round \(round): attach refused with errno \(e)")
            }
            c.abort()
        }
        #expect(refused == 0)
        try victim.check()

        let c = try RawNineConnection(port: daemon.abuserPort)
        try c.mount("abuser")
        var sessionsRefused = 0
        for fid in UInt32(1)...300 {
            if case .error(let e) = try c.call(.attach(fid: fid, afid: NineP.noFid, uname: [], aname: Array("abuser".utf8), uid: 0)) {
                #expect(e == 87)   // EUSERS
                sessionsRefused += 1
            }
        }
        #expect(sessionsRefused == 300 + 1 - 256)
        #expect(try daemon.sessions("abuser") == 256)
        for fid in UInt32(1)...300 { _ = try c.call(.clunk(fid: fid)) }
        for _ in 0..<3000 {
            _ = try c.call(.attach(fid: 7, afid: NineP.noFid, uname: [], aname: Array("abuser".utf8), uid: 0))
            _ = try c.call(.clunk(fid: 7))
        }
        #expect(try daemon.sessions("abuser") == 1)
        try victim.check()
        c.abort()
        #expect(try waitForAbuserToLeave(daemon))
        try finish(daemon)
    }

    // MARK: - Locks, inodes, links, xattrs

    /// Lock records, inodes (files, directories, fifos, symlinks), hard links and xattrs until
    /// each limit refuses; a quota change reaches the running daemon; the victim, in another
    /// VM, creates, links, locks and sets xattrs as before.
    @Test func metadataFloodsStopAtTheVMsLimits() throws {
        let daemon = try HostileDaemon(settings: ["vm-lock-records-per-session = 2000", "vm-lock-records = 3000",
                                                  "vm-xattrs-per-inode = 64", "vm-links-per-inode = 500"])
        try mustRun("pvfs-vm", ["set-quota", "abuser", "--bytes", "16M", "--store", daemon.store])
        let victim = try Victim(daemon)
        let a = try RawNineConnection(port: daemon.abuserPort)
        try a.mount("abuser")
        try a.open("big", fid: 1, flags: 2)

        // Read locks on every other byte: records that cannot merge.
        func lockFlood(_ c: RawNineConnection, pid: UInt32, limit: Int) throws -> (granted: Int, error: String) {
            for i in 0..<limit {
                let lock = NinePLock(type: 0, flags: 0, start: UInt64(2 * i), length: 1, processID: pid, clientID: Array("p\(pid)".utf8))
                switch try c.call(.lock(fid: 1, lock)) {
                case .lock(let status) where status == 0: continue
                case let other: return (i, "\(other)")
                }
            }
            return (limit, "")
        }
        let first = try lockFlood(a, pid: 1, limit: 5000)
        #expect(first.granted == 2000, "per session: \(first)")
        let b = try RawNineConnection(port: daemon.abuserPort)
        try b.mount("abuser")
        try b.open("big", fid: 1, flags: 2)
        let second = try lockFlood(b, pid: 2, limit: 5000)
        #expect(second.granted == 1000, "per VM: \(second)")
        try victim.check()

        // Inodes: the quota's default inode limit (one per 16 KiB of 16 MiB: 1024).
        _ = try a.call(.walk(fid: 0, newFid: 2, names: []))
        var created = 0
        var refusal = ""
        creating: for i in 0..<5000 {
            let name = Array("n\(i)".utf8)
            let response: NinePResponse
            switch i % 4 {
            case 0:
                _ = try a.call(.walk(fid: 0, newFid: 3, names: []))
                response = try a.call(.lcreate(fid: 3, name: name, flags: 0, mode: 0o644, gid: 0))
                _ = try a.call(.clunk(fid: 3))
            case 1: response = try a.call(.mkdir(dfid: 2, name: name, mode: 0o755, gid: 0))
            case 2: response = try a.call(.mknod(dfid: 2, name: name, mode: 0o010644, major: 0, minor: 0, gid: 0))
            default: response = try a.call(.symlink(fid: 2, name: name, target: Array("big".utf8), gid: 0))
            }
            if case .error(let e) = response {
                refusal = "errno \(e)"
                break creating
            }
            created += 1
        }
        #expect(refusal == "errno 122", "after \(created) inodes: \(refusal)")   // EDQUOT
        #expect(created > 900 && created < 1024)
        try victim.check()
        // Raised live through the daemon: the abuser may create again.
        try mustRun("pvfs-vm", ["set-quota", "abuser", "--inodes", "2000", "--store", daemon.store])
        #expect(try { if case .mkdir = try a.call(.mkdir(dfid: 2, name: Array("after-raise".utf8), mode: 0o755, gid: 0)) { true } else { false } }())

        // Hard links to one file, until links-per-inode.
        var links = 0
        var linkRefusal = ""
        for i in 0..<1000 {
            if case .error(let e) = try a.call(.link(dfid: 2, fid: 1, name: Array("l\(i)".utf8))) {
                linkRefusal = "errno \(e)"
                break
            }
            links += 1
        }
        #expect(links == 499 && linkRefusal == "errno 31", "\(links) links, then \(linkRefusal)")   // EMLINK
        // Xattrs on one file, until xattrs-per-inode.
        var xattrs = 0
        var xattrRefusal = ""
        for i in 0..<200 {
            _ = try a.call(.walk(fid: 0, newFid: 4, names: [Array("big".utf8)]))
            let value = Array("v\(i)".utf8)
            guard case .xattrcreate = try a.call(.xattrcreate(fid: 4, name: Array("user.x\(i)".utf8), size: UInt64(value.count), flags: 0))
            else { xattrRefusal = "xattrcreate refused"; break }
            _ = try a.call(.write(fid: 4, offset: 0, data: value[...]))
            if case .error(let e) = try a.call(.clunk(fid: 4)) {
                xattrRefusal = "errno \(e)"
                break
            }
            xattrs += 1
        }
        #expect(xattrs == 64 && xattrRefusal == "errno 28", "\(xattrs) xattrs, then \(xattrRefusal)")   // ENOSPC

        // The victim's VM has limits of its own: none of this reached it.
        let v = victim.connection
        _ = try v.call(.walk(fid: 0, newFid: 5, names: []))
        guard case .lcreate = try v.call(.lcreate(fid: 5, name: Array("mine".utf8), flags: 2, mode: 0o644, gid: 0)) else {
            Issue.record("victim: create failed")
            return
        }
        guard case .lock(let status) = try v.call(.lock(fid: 5, NinePLock(type: 1, flags: 0, start: 0, length: 0, processID: 9,
                                                                          clientID: Array("v".utf8)))), status == 0 else {
            Issue.record("victim: lock failed")
            return
        }
        _ = try v.call(.walk(fid: 0, newFid: 6, names: []))
        guard case .link = try v.call(.link(dfid: 6, fid: 1, name: Array("big-link".utf8))) else {
            Issue.record("victim: link failed")
            return
        }
        for limit in ["lock-records-per-session", "lock-records", "quota-inodes", "links-per-inode", "xattrs-per-inode"] {
            #expect((daemon.metric(#"pvfs_limit_hits_total{vm="abuser",limit="\#(limit)"}"#) ?? 0) > 0, "abuser \(limit)")
            #expect(daemon.metric(#"pvfs_limit_hits_total{vm="victim",limit="\#(limit)"}"#) == 0, "victim \(limit)")
        }
        a.abort()
        b.abort()
        #expect(try waitForAbuserToLeave(daemon))
        try victim.check()
        try finish(daemon)
    }

    // MARK: - Slow readers

    /// Eight connections send 3000 reads of 60 KiB each and never read a reply: pvfsd holds
    /// at most the reply queue plus the outstanding replies per connection, stops reading them,
    /// and serves the victim meanwhile.
    @Test func slowReadersAreBoundedByBackpressure() throws {
        let daemon = try HostileDaemon(settings: ["reply-queue-bytes = 1M", "max-outstanding-bytes = 2M"])
        let victim = try Victim(daemon)
        for _ in 0..<200 { try victim.request() }
        let before = daemon.residentKiB
        var readers: [RawNineConnection] = []
        for i in 0..<8 {
            let c = try RawNineConnection(port: daemon.abuserPort, sourceHost: UInt8(2 + i))
            var small: Int32 = 4096
            setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, 4)
            try c.mount("abuser", msize: 65536)
            try c.open("big", fid: 1)
            var burst: [UInt8] = []
            for r in 0..<3000 {
                burst += NinePRequest.read(fid: 1, offset: UInt64(r % 16) << 16, count: 60 << 10).encode(tag: UInt16(r))
            }
            _ = burst.withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            readers.append(c)
        }
        var largest = 0.0
        let deadline = Date(timeIntervalSinceNow: 3)
        while Date() < deadline {
            try victim.request()
            largest = max(largest, daemon.metric(#"pvfs_tenant_reply_bytes{kind="listener",tenant="abuser"}"#) ?? 0)
        }
        let during = daemon.residentKiB
        // Per connection: 1 MiB queued plus 2 MiB outstanding, and one reply over.
        #expect(largest > 0 && largest <= Double(8 * ((3 << 20) + (64 << 10))), "reply bytes held: \(largest)")
        #expect((daemon.metric(#"pvfs_tenant_backpressure_total{kind="listener",tenant="abuser",limit="reply-queue-bytes"}"#) ?? 0) > 0)
        #expect(during - before < 8 * 3 * 1024 + 16 * 1024, "RSS \(before) KiB before, \(during) KiB with 8 slow readers")
        print("hostile: slow readers: reply bytes held at most \(Int(largest)), RSS \(before) -> \(during) KiB")
        readers.forEach { $0.abort() }
        #expect(try waitForAbuserToLeave(daemon))
        try victim.check()
        try finish(daemon)
    }

    // MARK: - Latency

    /// What one loaded phase of the latency test runs beside the victim.
    enum Load: String, CaseIterable {
        case pipelined = "pipelined requests"
        case reads = "64 KiB reads"
        case slowReaders = "slow readers"
        case reconnects = "reconnects, garbage"
        case everything = "all at once"
        /// Not pvfsd: CPU-bound threads in the load's process, the machine's own share of the rise.
        case cpuControl = "control: 4 CPU spinners"

        /// The abuser's flood (nil for the control).
        var flood: TenantFlood.Shape? {
            switch self {
            case .pipelined: .init(pipelines: 6, slowReaders: 0, churners: 0, garbage: 0)
            case .reads: .init(pipelines: 6, slowReaders: 0, churners: 0, garbage: 0, requests: .reads)
            case .slowReaders: .init(pipelines: 0, slowReaders: 8, churners: 0, garbage: 0)
            case .reconnects: .init(pipelines: 0, slowReaders: 0, churners: 2, garbage: 2)
            case .everything: .init()
            case .cpuControl: nil
            }
        }
    }

    /// The victim is served while the abuser floods in each way (pipelined requests on six
    /// connections, 64 KiB reads, slow readers, reconnects with garbage, all at once): every
    /// request is answered correctly and in time (p99 under 250 ms; a request queued behind
    /// the slow readers' backlog would never be answered), and the abuser is served as well.
    ///
    /// Each load runs in a child process in a scheduling group of its own (`ChildLoad`), as a
    /// guest's load is another process; `PVFS_HOSTILE_LOAD_IN_PROCESS` runs it in this one.
    /// Quiet and loaded phases alternate, and the medians over the rounds of their p50 and p99
    /// are printed side by side with a control load that never touches pvfsd (CPU-bound
    /// threads): on a machine of few cores any load raises the victim's p99, and the control
    /// shows how much of that is the scheduler's. The loads run at nice 19 (`ChildLoad`), pvfsd
    /// and the victim at 0. When the control leaves the victim's p99 within 1.3x of its quiet
    /// p99 (either way), the test says whether each flood left it within 2x; otherwise the
    /// machine is too noisy for that bound to mean anything about pvfsd, and it says so. The bound
    /// is a speed target: bench/hostile-tenant.sh prints the table and fails when a judged flood
    /// breaks it (`PVFS_HOSTILE_ENFORCE_2X`); a plain test run only reports it.
    @Test(.tags(.slow), .slowTestsOnly) func anotherTenantIsServedWhileOneFloods() throws {
        let rounds = max(1, Self.environment["PVFS_HOSTILE_LATENCY_ROUNDS"].flatMap { Int($0) } ?? 4)
        let samples = max(100, Self.environment["PVFS_HOSTILE_LATENCY_SAMPLES"].flatMap { Int($0) } ?? 2000)
        let inProcess = Self.environment["PVFS_HOSTILE_LOAD_IN_PROCESS"] != nil
        let daemon = try HostileDaemon(settings: Self.environment["PVFS_HOSTILE_TENANT_CPU_NICE"].map { ["tenant-cpu-nice = \($0)"] } ?? [])
        let victim = try Victim(daemon)
        for _ in 0..<500 { try victim.request() }
        func measure() throws -> [Double] {
            var out: [Double] = []
            out.reserveCapacity(samples)
            for _ in 0..<samples {
                let start = monotonicSeconds()
                try victim.request()
                out.append((monotonicSeconds() - start) * 1e6)
            }
            return out
        }
        struct Phases {
            var quietP50: [Double] = [], quietP99: [Double] = [], loadedP50: [Double] = [], loadedP99: [Double] = []
            var loadedMax = 0.0
            /// Seconds the loaded phases lasted (the abuser's replies per second over them).
            var loadedSeconds = 0.0
            var abuserReplies = 0, abuserConnections = 0, abuserRefusedAtTheCap = 0
        }
        var phases: [Load: Phases] = [:]
        var loaded: [Double] = []
        var loadedSeconds = 0.0
        for round in 0..<rounds {
            for load in Load.allCases {
                let quiet = try measure()
                let seed = Self.seed &+ UInt64(round)
                var counts = (replies: 0, connections: 0, refusedAtTheCap: 0, problems: [String]())
                if inProcess {
                    let flood = load.flood.map { TenantFlood(port: daemon.abuserPort, shape: $0, seed: seed) }
                    let spinning = StopFlag()
                    let spinners = DispatchGroup()
                    if let flood { flood.start() } else { Self.spin(threads: 4, until: spinning, group: spinners) }
                    usleep(300_000)
                    let start = monotonicSeconds()
                    loaded = try measure()
                    loadedSeconds = monotonicSeconds() - start
                    spinning.set()
                    spinners.wait()
                    flood?.stop()
                    counts = (flood?.counts.replies ?? 0, flood?.counts.connections ?? 0, flood?.attachesRefusedAtTheCap ?? 0,
                              flood?.problems ?? [])
                } else {
                    let child = try ChildLoad(port: daemon.abuserPort, load: load, seed: seed)
                    usleep(300_000)
                    let start = monotonicSeconds()
                    loaded = try measure()
                    loadedSeconds = monotonicSeconds() - start
                    counts = try child.stop()
                }
                if load.flood != nil {
                    #expect(counts.problems.isEmpty, "\(load.rawValue): \(counts.problems.prefix(3))")
                    #expect(try waitForAbuserToLeave(daemon))
                }
                var p = phases[load] ?? Phases()
                p.quietP50.append(percentile(quiet, 0.5))
                p.quietP99.append(percentile(quiet, 0.99))
                p.loadedP50.append(percentile(loaded, 0.5))
                p.loadedP99.append(percentile(loaded, 0.99))
                p.loadedMax = max(p.loadedMax, loaded.max() ?? 0)
                p.loadedSeconds += loadedSeconds
                p.abuserReplies += counts.replies
                p.abuserConnections += counts.connections
                p.abuserRefusedAtTheCap += counts.refusedAtTheCap
                phases[load] = p
            }
        }
        print("hostile: latency of the victim's requests (us; medians over \(rounds) rounds of \(samples) requests per phase; "
              + "load \(inProcess ? "in the test's process" : "in a child process")); abuser demoted "
              + "\(Int(daemon.metric(#"pvfs_tenant_cpu_demotions_total{kind="vm",tenant="abuser"}"#) ?? -1)) times, victim "
              + "\(Int(daemon.metric(#"pvfs_tenant_cpu_demotions_total{kind="vm",tenant="victim"}"#) ?? 0)) times")
        print("hostile: load                      quiet p50    p99 | loaded p50    p99    max | p99 x quiet | abuser replies/s")
        func ratio(_ p: Phases) -> Double { median(p.loadedP99) / median(p.quietP99) }
        // The 2x bound is judged only when the machine itself leaves the victim's p99 alone: the
        // control load (never touching pvfsd) must leave it within 1.3x either way (far below
        // 1, the quiet phases were the disturbed ones).
        let control = phases[.cpuControl].map(ratio) ?? .infinity
        let judged = control <= Self.quietMachineControlRatio && control >= 1 / Self.quietMachineControlRatio
        // A latency bound is a speed target: bench/hostile-tenant.sh enforces it
        // (PVFS_HOSTILE_ENFORCE_2X); a plain test run prints the verdict and keeps its assertions
        // to what does not depend on the machine's timing.
        let enforceBound = Self.environment["PVFS_HOSTILE_ENFORCE_2X"] != nil
        var beyondBound: [String] = []
        for load in Load.allCases {
            guard let p = phases[load] else { continue }
            let quietP99 = median(p.quietP99), loadedP99 = median(p.loadedP99)
            let name = load.rawValue.padding(toLength: 24, withPad: " ", startingAt: 0)
            print("hostile: \(name)" + String(format: " %10.0f %6.0f | %10.0f %6.0f %6.0f | %5.1f | %.0f", median(p.quietP50), quietP99,
                                                     median(p.loadedP50), loadedP99, p.loadedMax, loadedP99 / quietP99,
                                                     Double(p.abuserReplies) / max(p.loadedSeconds, 1e-9)))
            #expect(loadedP99 < 250_000, "\(load.rawValue): victim p99 \(Int(loadedP99)) us")
            if judged && load.flood != nil && loadedP99 > 2 * quietP99 {
                beyondBound.append("\(load.rawValue) \(String(format: "%.1f", loadedP99 / quietP99))x")
            }
            if enforceBound && judged && load.flood != nil {
                #expect(loadedP99 <= 2 * quietP99, "\(load.rawValue): victim p99 \(Int(loadedP99)) us, \(String(format: "%.1f", loadedP99 / quietP99))x its quiet p99")
            }
            if load.flood.map({ $0.pipelines > 0 }) == true {
                #expect(p.abuserReplies > 0, "\(load.rawValue): the abuser was not served")
            }
            if load == .reconnects {
                #expect(p.abuserConnections > 0, "the abuser could not reconnect")
                print("hostile: reconnects: \(p.abuserConnections) attached, \(p.abuserRefusedAtTheCap) refused at max-connections-per-vm")
            }
        }
        if judged {
            print("hostile: 2x bound judged (control \(String(format: "%.2f", control))x): "
                  + (beyondBound.isEmpty ? "met" : "NOT met: " + beyondBound.joined(separator: ", ")))
        } else {
            print("hostile: machine too noisy: the control alone moved the victim's p99 \(String(format: "%.2f", control))x "
                  + "(beyond \(Self.quietMachineControlRatio)x either way); the 2x bound is not judged")
        }
        try victim.check()
        try finish(daemon)
    }

    /// The most the control load may raise the victim's p99 for the 2x bound to be judged.
    static let quietMachineControlRatio = 1.3

    /// What CPU accounting costs a tenant alone: replies per second to six connections of
    /// pipelined requests (mixed, then 64 KiB reads), nobody else served. Run by
    /// bench/hostile-tenant.sh (`PVFS_HOSTILE_THROUGHPUT=1`); with `PVFS_HOSTILE_PVFSD`, of
    /// another build.
    @Test(.enabled(if: environment["PVFS_HOSTILE_THROUGHPUT"] != nil))
    func singleTenantThroughput() throws {
        let daemon = try HostileDaemon()
        for requests in [TenantFlood.PipelineRequests.mixed, .reads] {
            var rates: [Double] = []
            for round in 0..<5 {
                let flood = TenantFlood(port: daemon.victimPort, aname: "victim",
                                        shape: .init(pipelines: 6, slowReaders: 0, churners: 0, garbage: 0, requests: requests),
                                        seed: Self.seed &+ UInt64(round))
                flood.start()
                usleep(300_000)
                let before = flood.counts.replies, start = monotonicSeconds()
                usleep(2_000_000)
                rates.append(Double(flood.counts.replies - before) / (monotonicSeconds() - start))
                flood.stop()
                #expect(flood.problems.isEmpty, "\(flood.problems.prefix(3))")
            }
            print(String(format: "hostile: throughput: one tenant, 6 pipelined connections, %@: %.0f replies/s (median of 5 rounds of 2 s)",
                         requests.rawValue, median(rates)))
        }
        try finish(daemon)
    }

    /// A victim with eight reads in flight goes through the worker pool, which VMs take turns on
    /// (and a VM's connections within its turns, `maximumParallelRequests` each): its share
    /// stays the same however many connections the abuser opens. Prints the victim's batch latency quiet and beside 6, 24 and 48 abuser
    /// connections of 64 KiB reads; every reply must come. Run by bench/hostile-tenant.sh
    /// (`PVFS_HOSTILE_POOL_SHARE=1`), about a minute.
    @Test(.enabled(if: environment["PVFS_HOSTILE_POOL_SHARE"] != nil))
    func pipelinedVictimSharesTheWorkerPool() throws {
        let daemon = try HostileDaemon()
        let victim = try Victim(daemon)
        let c = victim.connection
        func batch() throws -> Double {
            var bytes: [UInt8] = []
            for t in 0..<8 { bytes += NinePRequest.read(fid: 1, offset: UInt64(t) * 4096, count: 4096).encode(tag: UInt16(100 + t)) }
            let start = monotonicSeconds()
            guard c.send(bytes) else { throw Errno.connectionReset }
            for _ in 0..<8 {
                guard case .read(let data) = try NinePResponse.decode(try c.receive()).response, data.count == 4096 else {
                    throw TestSupportError("victim: a pipelined read failed")
                }
            }
            return (monotonicSeconds() - start) * 1e6
        }
        for _ in 0..<200 { _ = try batch() }
        print("hostile: pool share: the victim's batch of 8 pipelined 4 KiB reads (us), quiet and beside the abuser's 64 KiB reads")
        for connections in [6, 24, 48] {
            var quiet: [Double] = [], loaded: [Double] = []
            for round in 0..<3 {
                for _ in 0..<500 { quiet.append(try batch()) }
                let flood = TenantFlood(port: daemon.abuserPort, shape: .init(pipelines: connections, slowReaders: 0, churners: 0,
                                                                              garbage: 0, requests: .reads), seed: Self.seed &+ UInt64(round))
                flood.start()
                usleep(300_000)
                for _ in 0..<500 { loaded.append(try batch()) }
                flood.stop()
                #expect(flood.problems.isEmpty, "\(flood.problems.prefix(3))")
                #expect(try waitForAbuserToLeave(daemon))
            }
            print(String(format: "hostile: pool share: %2d abuser connections: quiet p50 %6.0f p99 %6.0f | loaded p50 %6.0f p99 %6.0f",
                         connections, percentile(quiet, 0.5), percentile(quiet, 0.99), percentile(loaded, 0.5), percentile(loaded, 0.99)))
        }
        try victim.check()
        try finish(daemon)
    }

    // MARK: - Memory

    /// Abuse cycles (connect/attach/garbage/reset, Tflush storms, attach/clunk, reads left
    /// unread at a reset): pvfsd's RSS grows by less than 16 MiB over them, and returns near its
    /// start, with its threads and descriptors, once the abuser leaves.
    @Test func memoryStaysFlatOverAbuseCycles() throws {
        let cycles = max(100, Self.environment["PVFS_HOSTILE_CYCLES"].flatMap { Int($0) } ?? 10_000)
        let daemon = try HostileDaemon()
        let victim = try Victim(daemon)
        var maker = GarbageMaker(seed: Self.seed &+ 99)
        let persistent = try RawNineConnection(port: daemon.abuserPort)
        try persistent.mount("abuser")
        try persistent.open("big", fid: 1)
        // A volume's first change starts its catalog writer, a thread that lives as long as the
        // volume is open (the garbage below changes the abuser's): started before the threads
        // are counted.
        _ = try persistent.call(.walk(fid: 0, newFid: 2, names: []))
        guard case .lcreate = try persistent.call(.lcreate(fid: 2, name: Array("warm".utf8), flags: 2, mode: 0o644, gid: 0)),
              case .clunk = try persistent.call(.clunk(fid: 2)),
              case .unlinkat = try persistent.call(.unlinkat(dirFid: 0, name: Array("warm".utf8), flags: 0)) else {
            Issue.record("abuser: create and remove of /warm failed")
            return
        }
        usleep(200_000)

        // Connections reset by the client end in pvfsd a moment later: when it falls behind (a
        // busy machine), up to max-connections-per-vm (64) of them still count, and the next
        // attach is refused with EUSERS, as it should be. Counted; the cycle is skipped.
        var refusedAtTheCap = 0
        func mountUnlessAtTheCap(_ c: RawNineConnection) throws -> Bool {
            do {
                try c.mount("abuser")
                return true
            } catch let refused as AttachRefused where refused.errno == 87 {
                refusedAtTheCap += 1
                c.abort()
                return false
            }
        }

        func cycle(_ i: Int) throws {
            let source = UInt8(2 + i % 16)
            switch i % 5 {
            case 0:
                let c = try RawNineConnection(port: daemon.abuserPort, sourceHost: source)
                guard try mountUnlessAtTheCap(c) else { return }
                for _ in 0..<3 { c.send(maker.message()) }
                c.abort()
            case 1:
                var storm: [UInt8] = []
                for t in 0..<32 { storm += NinePRequest.flush(oldTag: UInt16.random(in: 100...60_000, using: &maker.random)).encode(tag: UInt16(t)) }
                persistent.send(storm)
                for _ in 0..<32 { _ = try persistent.receive() }
            case 2:
                _ = try persistent.call(.attach(fid: 5, afid: NineP.noFid, uname: [], aname: Array("abuser".utf8), uid: 0))
                _ = try persistent.call(.clunk(fid: 5))
            case 3:
                let c = try RawNineConnection(port: daemon.abuserPort, sourceHost: source)
                guard try mountUnlessAtTheCap(c) else { return }
                try c.open("big", fid: 1)
                var reads: [UInt8] = []
                for t in 0..<16 { reads += NinePRequest.read(fid: 1, offset: UInt64(t) << 16, count: 65536 - 11).encode(tag: UInt16(t)) }
                c.send(reads)
                c.abort()
            default:
                let c = try RawNineConnection(port: daemon.abuserPort, sourceHost: source)
                c.send(maker.framingViolation())
                c.abort()
            }
        }

        let idleThreads = daemon.ownThreadCount, idleDescriptors = daemon.openDescriptorCount
        let warmup = min(1000, cycles / 10)
        for i in 0..<warmup { try cycle(i) }
        #expect(try waitForQuiet(daemon, threads: idleThreads))
        let start = daemon.residentKiB
        var peak = start
        let began = Date()
        // RSS every tenth of the run: a leak grows with the cycles, a cache levels off.
        var trace: [String] = []
        for i in warmup..<cycles {
            try cycle(i)
            if i % 1000 == 999 {
                try victim.check()
                guard daemon.isAlive else { break }
                let rss = daemon.residentKiB
                peak = max(peak, rss)
                if (i + 1) % max(1000, cycles / 10 / 1000 * 1000) == 0 { trace.append("\(i + 1): \(rss)") }
            }
        }
        let seconds = Date().timeIntervalSince(began)
        #expect(try waitForQuiet(daemon, threads: idleThreads))
        let end = daemon.residentKiB
        // What the garbage created in the abuser's VM stays, as in any filesystem (its quota bounds it).
        let inodes = Int(daemon.metric(#"pvfs_used_inodes{vm="abuser"}"#) ?? -1)
        print("hostile: memory: RSS (KiB) by cycle: \(trace.joined(separator: ", ")); abuser's inodes in use: \(inodes); "
              + "attaches refused at max-connections-per-vm: \(refusedAtTheCap)")
        #expect(refusedAtTheCap * 100 <= cycles, "\(refusedAtTheCap) attaches refused at the VM's connection cap")
        persistent.abort()
        #expect(try waitForAbuserToLeave(daemon))
        #expect(try waitForQuiet(daemon, threads: idleThreads))
        usleep(500_000)
        let left = daemon.residentKiB
        let threads = daemon.ownThreadCount, descriptors = daemon.openDescriptorCount
        print("hostile: memory: \(cycles) cycles in \(Int(seconds)) s: RSS \(start) KiB after \(warmup) warm-up cycles, peak \(peak), "
              + "end \(end), after the abuser left \(left); threads \(idleThreads) -> \(threads), descriptors \(idleDescriptors) -> \(descriptors)")
        #expect(max(peak, end) - start < 16 * 1024, "RSS grew from \(start) KiB to \(max(peak, end)) KiB")
        #expect(left - start < 4 * 1024, "RSS \(left) KiB after the abuser left, \(start) KiB at the start")
        #expect(threads <= idleThreads && descriptors <= idleDescriptors)
        try victim.check()
        try finish(daemon)
    }

    /// Waits until pvfsd's own threads are back to `threads` (every connection's reader and
    /// writer ended).
    func waitForQuiet(_ daemon: HostileDaemon, threads: Int, timeout: Double = 30) throws -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while daemon.ownThreadCount > threads {
            if Date() > deadline {
                print("hostile: pvfsd still has \(daemon.ownThreadCount) threads of its own, \(threads) expected; "
                      + "abuser connections served: \(daemon.metric(#"pvfs_tenant_connections{kind="listener",tenant="abuser"}"#) ?? -1)")
                return false
            }
            usleep(50_000)
        }
        return true
    }
}
