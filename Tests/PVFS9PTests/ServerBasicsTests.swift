import Foundation
import Glibc
import PVFS9PCodec
import PVFSEngineTestSupport
import SystemPackage
import Testing
@testable import PVFS9P
@testable import PVFSEngine

@Suite("9P server: session, walk, files, directories")
struct ServerBasicsTests {
    @Test func versionNegotiation() throws {
        var config = NinePConfiguration()
        config.maximumMessageSize = 256 * 1024
        let s = try ServedVM(configuration: config, attach: false)
        defer { s.finish() }
        let c = s.client
        // Nothing before Tversion.
        #expect(throws: Errno.protocolError) { try c.attach(fid: 0) }
        #expect(try c.version(msize: 8192, version: "9P2000.u") == (256 * 1024, "unknown"))
        #expect(throws: Errno.protocolError) { try c.attach(fid: 0) }
        #expect(try c.version(msize: 1 << 24) == (256 * 1024, "9P2000.L"))
        #expect(s.connection.maximumMessageSize == 256 * 1024)
        #expect(try c.version(msize: 8192, version: "9P2000.L.ext") == (8192, "9P2000.L"))
        #expect(s.connection.maximumMessageSize == 8192)
        #expect(throws: Errno.messageTooLong) { try c.version(msize: 4095) }
        #expect(try c.version(msize: 4096).msize == 4096)
        _ = try c.attach(fid: 0, aname: "vm1")
        #expect(c.violations.isEmpty)
    }

    @Test func tversionStartsANewSession() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, path: "etc/hostname")
        _ = try c.lopen(fid: 1, flags: Dotl.rdonly)
        #expect(s.connection.fidCount == 2)
        _ = try c.version(msize: 65536)
        #expect(s.connection.fidCount == 0)
        #expect(throws: Errno.badFileDescriptor) { try c.getattr(fid: 0) }
        #expect(throws: Errno.badFileDescriptor) { try c.read(fid: 1, offset: 0, count: 10) }
        _ = try c.attach(fid: 0, aname: "vm1")
        #expect(try c.walk(fid: 0, newFid: 1, path: "etc").count == 1)
        // The handle of the old session is closed.
        s.volume.metaLock.lock()
        let open = s.volume.openData.count
        s.volume.metaLock.unlock()
        #expect(open == 0)
    }

    @Test func attachSelectsTheVM() throws {
        let s = try ServedVM(attach: false)
        defer { s.finish() }
        let c = s.client
        _ = try c.version()
        #expect(throws: Errno.noSuchFileOrDirectory) { try c.attach(fid: 0, aname: "nosuchvm") }
        let qid = try c.attach(fid: 0, aname: "vm1", uname: "", uid: 0)
        #expect(qid.type == NinePQidType.directory)
        #expect(qid.path == rootInode)
        // Same fid again: refused, the first attach stays.
        #expect(throws: Errno.invalidArgument) { try c.attach(fid: 0, aname: "vm1") }
        #expect(try c.getattr(fid: 0).qid.path == rootInode)
        // afid must be NOFID: there is no authentication.
        #expect(throws: Errno.invalidArgument) {
            try c.call(.attach(fid: 5, afid: 3, uname: [], aname: bytes("vm1"), uid: 0))
        }
        #expect(throws: Errno.notSupported) {
            try c.call(.auth(afid: 3, uname: [], aname: bytes("vm1"), uid: 0))
        }
        let requests = s.resolver.requests
        #expect(requests.last?.aname == "vm1")
        #expect(requests.last?.uid == 0)
        #expect(requests.last?.peer.localAddress == "socketpair")
    }

    @Test func oneVMPerConnection() throws {
        let fixture = try NinePFixture()
        let a = try fixture.provision("a")
        let b = try fixture.provision("b")
        let resolver = TestResolver(["a": a, "b": b], defaultVM: "a")
        let pool = NinePWorkerPool(threads: 2)
        defer { pool.shutdown() }
        let h = try SocketPairHarness(NinePConnection(
            peer: NinePPeer(.local(remote: "t", local: "t"), connectionID: 2),
            pool: pool, logger: testLogger, resolver: resolver.resolver))
        defer { h.finish() }
        _ = try h.client.version()
        _ = try h.client.attach(fid: 0, aname: "a")
        _ = try h.client.attach(fid: 1, aname: "a", uid: 1000)
        #expect(throws: Errno.permissionDenied) { try h.client.attach(fid: 2, aname: "b") }
    }

    @Test func attachByUserName() throws {
        let s = try ServedVM(attach: false)
        defer { s.finish() }
        let c = s.client
        _ = try c.version()
        _ = try c.attach(fid: 0, aname: "vm1", uname: "alice", uid: NineP.noUid)
        _ = try c.walk(fid: 0, newFid: 1, path: "home/alice")
        let qid = try c.lcreate(fid: 1, name: "mine", flags: Dotl.rdwr, mode: 0o600, gid: 1000)
        #expect(try c.getattr(fid: 1).uid == 1000)
        #expect(qid.type == NinePQidType.file)
        _ = try c.attach(fid: 2, aname: "vm1", uname: "1001", uid: NineP.noUid)
        // A failure past the first name is a partial Rwalk, not an error.
        #expect(try c.walk(fid: 2, newFid: 3, path: "home/alice/mine").count == 2)
        _ = try c.walk(fid: 2, newFid: 3, path: "home/alice")
        #expect(throws: Errno.permissionDenied) { try c.walk(fid: 3, newFid: 4, ["mine"]) }
        // Unknown names (Linux's first attach says "nobody") act as nobody, without privilege.
        _ = try c.attach(fid: 4, aname: "vm1", uname: "mallory", uid: NineP.noUid)
        _ = try c.walk(fid: 4, newFid: 5, path: "home/alice")
        #expect(throws: Errno.permissionDenied) { try c.walk(fid: 5, newFid: 6, ["mine"]) }
        _ = try c.attach(fid: 7, aname: "vm1", uname: "nobody", uid: NineP.noUid)
        _ = try c.walk(fid: 7, newFid: 8, [])
        #expect(throws: Errno.permissionDenied) { try c.lcreate(fid: 8, name: "x", flags: Dotl.rdwr, mode: 0o644) }
    }

    @Test func walkSemantics() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        let qids = try c.walk(fid: 0, newFid: 1, path: "etc/hostname")
        #expect(qids.count == 2)
        #expect(qids[0].type == NinePQidType.directory)
        #expect(qids[1].type == NinePQidType.file)
        #expect(qids[1].path == 3)
        // Symlinks are walked to, not through.
        #expect(try c.walk(fid: 0, newFid: 2, path: "bin/sh").last?.type == NinePQidType.symlink)
        // Partial walk: Rwalk with the qids reached, newfid not made.
        #expect(try c.walk(fid: 0, newFid: 3, ["etc", "missing", "x"]).count == 1)
        #expect(throws: Errno.badFileDescriptor) { try c.getattr(fid: 3) }
        // First name missing: an error.
        #expect(throws: Errno.noSuchFileOrDirectory) { try c.walk(fid: 0, newFid: 3, ["missing"]) }
        // "..", ".", and ".." at the root staying there.
        #expect(try c.walk(fid: 0, newFid: 3, ["etc", "..", ".", "..", "bin"]).map(\.path) == [2, 1, 1, 1, 6])
        // Zero names clone.
        #expect(try c.walk(fid: 1, newFid: 4, []).isEmpty)
        #expect(try c.getattr(fid: 4).qid.path == 3)
        // Walking from a file, a bad name, a used newfid.
        #expect(throws: Errno.notDirectory) { try c.walk(fid: 1, newFid: 5, ["x"]) }
        #expect(throws: Errno.invalidArgument) { try c.walk(fid: 0, newFid: 5, ["a/b"]) }
        #expect(throws: Errno.invalidArgument) { try c.walk(fid: 0, newFid: 1, ["etc"]) }
        #expect(throws: Errno.badFileDescriptor) { try c.walk(fid: 77, newFid: 78, ["etc"]) }
        // newfid == fid moves the fid.
        #expect(try c.walk(fid: 3, newFid: 3, ["sh"]).count == 1)
        #expect(try c.getattr(fid: 3).qid.path == 7)
        // Sixteen names are fine, seventeen are not.
        let sixteen = Array(repeating: ".", count: 16)
        #expect(try c.walk(fid: 0, newFid: 6, sixteen).count == 16)
        var w = NinePWriter(type: .twalk, tag: 500)
        w.u32(0); w.u32(7); w.u16(17)
        for _ in 0..<17 { w.string(bytes(".")) }
        let reply = try c.startRaw(w.finish(), expectingTag: 500, claimed: .walk(fid: 0, newFid: 7, names: [])).wait()
        #expect(reply == .error(errno: LinuxErrno.EINVAL))
        #expect(c.violations.isEmpty)
    }

    @Test func searchPermissionGovernsWalks() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.attach(fid: 10, aname: "vm1", uid: 1001)
        _ = try c.walk(fid: 10, newFid: 11, path: "home/alice")
        #expect(throws: Errno.permissionDenied) { try c.walk(fid: 11, newFid: 12, ["x"]) }
        #expect(try c.walk(fid: 10, newFid: 12, path: "home/alice/x").count == 2)
        _ = try c.attach(fid: 13, aname: "vm1", uid: 1000)
        _ = try c.walk(fid: 13, newFid: 14, path: "home/alice")
        #expect(throws: Errno.noSuchFileOrDirectory) { try c.walk(fid: 14, newFid: 15, ["x"]) }
    }

    @Test func createWriteRead() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, [])
        let qid = try c.lcreate(fid: 1, name: "file", flags: Dotl.rdwr | Dotl.create, mode: 0o640, gid: 0)
        #expect(qid.type == NinePQidType.file)
        #expect(try c.write(fid: 1, offset: 0, bytes("hello, ")) == 7)
        #expect(try c.write(fid: 1, offset: 7, bytes("world\n")) == 6)
        #expect(text(try c.read(fid: 1, offset: 0, count: 100)) == "hello, world\n")
        #expect(text(try c.read(fid: 1, offset: 7, count: 3)) == "wor")
        #expect(try c.read(fid: 1, offset: 1000, count: 10).isEmpty)
        let attributes = try c.getattr(fid: 1)
        #expect(attributes.size == 13)
        #expect(attributes.mode == 0o100640)
        #expect(attributes.qid == NinePQid(type: 0, version: attributes.qid.version, path: qid.path))
        #expect(attributes.valid.contains(.basic))
        #expect(!attributes.valid.contains(.birthTime))
        try c.clunk(fid: 1)
        #expect(try s.view().readWhole("file") == bytes("hello, world\n"))

        // Tlcreate of an existing name opens it, unless O_EXCL.
        _ = try c.walk(fid: 0, newFid: 2, [])
        _ = try c.lcreate(fid: 2, name: "file", flags: Dotl.rdwr | Dotl.create, mode: 0o600)
        #expect(text(try c.read(fid: 2, offset: 0, count: 5)) == "hello")
        _ = try c.walk(fid: 0, newFid: 3, [])
        #expect(throws: Errno.fileExists) { try c.lcreate(fid: 3, name: "file", flags: Dotl.rdwr | Dotl.create | Dotl.excl, mode: 0o600) }
        // The fid that failed stays usable as the directory it was.
        #expect(try c.getattr(fid: 3).qid.path == rootInode)
        #expect(throws: Errno.notDirectory) {
            _ = try c.walk(fid: 0, newFid: 4, path: "etc/hostname")
            _ = try c.lcreate(fid: 4, name: "x", flags: Dotl.rdwr, mode: 0o600)
        }
    }

    @Test func openModesAreEnforced() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, path: "etc/hostname")
        _ = try c.lopen(fid: 1, flags: Dotl.rdonly)
        #expect(throws: Errno.badFileDescriptor) { try c.write(fid: 1, offset: 0, bytes("x")) }
        #expect(throws: Errno.badFileDescriptor) { try c.lopen(fid: 1, flags: Dotl.rdonly) }
        _ = try c.walk(fid: 0, newFid: 2, path: "etc/hostname")
        #expect(throws: Errno.badFileDescriptor) { try c.read(fid: 2, offset: 0, count: 1) }
        _ = try c.lopen(fid: 2, flags: Dotl.wronly | Dotl.trunc)
        #expect(throws: Errno.badFileDescriptor) { try c.read(fid: 2, offset: 0, count: 1) }
        #expect(try c.write(fid: 2, offset: 0, bytes("vm\n")) == 3)
        #expect(text(try s.view().readWhole("etc/hostname")) == "vm\n")
        // O_APPEND writes land at the end whatever the offset.
        _ = try c.walk(fid: 0, newFid: 3, path: "etc/hostname")
        _ = try c.lopen(fid: 3, flags: Dotl.wronly | Dotl.append)
        _ = try c.write(fid: 3, offset: 0, bytes("more\n"))
        #expect(text(try s.view().readWhole("etc/hostname")) == "vm\nmore\n")
        // Directories: no writing, no Tread, and O_DIRECTORY only on directories.
        _ = try c.walk(fid: 0, newFid: 4, path: "etc")
        #expect(throws: Errno.isDirectory) { try c.lopen(fid: 4, flags: Dotl.rdwr) }
        _ = try c.lopen(fid: 4, flags: Dotl.rdonly | Dotl.directory)
        #expect(throws: Errno.isDirectory) { try c.read(fid: 4, offset: 0, count: 10) }
        _ = try c.walk(fid: 0, newFid: 5, path: "etc/passwd")
        #expect(throws: Errno.notDirectory) { try c.lopen(fid: 5, flags: Dotl.rdonly | Dotl.directory) }
        // A symlink is not opened.
        _ = try c.walk(fid: 0, newFid: 6, path: "bin/sh")
        #expect(throws: Errno.tooManySymbolicLinkLevels) { try c.lopen(fid: 6, flags: Dotl.rdonly) }
        // Permission: bob may not write alice's notes... but the group may (bob is in project).
        _ = try c.attach(fid: 20, aname: "vm1", uid: 1001)
        _ = try c.walk(fid: 20, newFid: 21, path: "project/notes")
        _ = try c.lopen(fid: 21, flags: Dotl.rdwr)
        _ = try c.walk(fid: 20, newFid: 22, path: "etc/passwd")
        #expect(throws: Errno.permissionDenied) { try c.lopen(fid: 22, flags: Dotl.wronly) }
    }

    @Test func largeReadsAreClampedToMsize() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, path: "big")
        _ = try c.lopen(fid: 1, flags: Dotl.rdonly)
        let msize = s.connection.messageSize!
        let first = try c.read(fid: 1, offset: 0, count: 1 << 30)
        #expect(first.count == msize - NineP.readReplyHeaderSize)
        var content: [UInt8] = []
        while true {
            let chunk = try c.read(fid: 1, offset: UInt64(content.count), count: 40000)
            if chunk.isEmpty { break }
            content += chunk
        }
        #expect(content == NinePFixture.bigContent())
        #expect(throws: Errno.invalidArgument) { try c.read(fid: 1, offset: UInt64(Int64.max) + 1, count: 1) }
    }

    @Test func largeWritesUpToMsize() throws {
        var config = NinePConfiguration()
        config.maximumMessageSize = 1 << 20
        let s = try ServedVM(configuration: config, attach: false)
        defer { s.finish() }
        let c = s.client
        #expect(try c.version(msize: 1 << 20).msize == 1 << 20)
        _ = try c.attach(fid: 0, aname: "vm1")
        _ = try c.walk(fid: 0, newFid: 1, [])
        _ = try c.lcreate(fid: 1, name: "large", flags: Dotl.rdwr, mode: 0o644)
        let data = (0..<((1 << 20) - NineP.ioHeaderSize)).map { UInt8(truncatingIfNeeded: $0 * 31) }
        #expect(try c.write(fid: 1, offset: 0, data) == UInt32(data.count))
        #expect(try s.view().readWhole("large") == data)
        // One byte over msize: the transport (framer) refuses the message and the connection ends.
        let over = NinePRequest.write(fid: 1, offset: 0, data: [UInt8](repeating: 0, count: (1 << 20) - 22)[...]).encode(tag: 1)
        #expect(over.count == (1 << 20) + 1)
        #expect(throws: Errno.self) {
            let p = try c.startRaw(over, expectingTag: 1)
            _ = try p.wait(timeout: 10)
        }
    }

    @Test func readDirectoryPages() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, [])
        _ = try c.mkdir(dfid: 1, name: "many", mode: 0o755)
        _ = try c.walk(fid: 0, newFid: 2, ["many"])
        var expected: Set<String> = [".", ".."]
        for i in 0..<300 {
            _ = try c.mknod(dfid: 2, name: "entry-\(i)-" + String(repeating: "x", count: i % 40), mode: 0o100644)
            expected.insert("entry-\(i)-" + String(repeating: "x", count: i % 40))
        }
        _ = try c.walk(fid: 0, newFid: 3, ["many"])
        _ = try c.lopen(fid: 3, flags: Dotl.rdonly | Dotl.directory)
        let entries = try c.readAllEntries(fid: 3, count: 600)
        #expect(Set(entries.map { text($0.name) }) == expected)
        #expect(entries.count == expected.count)
        let dot = try #require(entries.first { $0.name == bytes(".") })
        #expect(dot.type == UInt8(DT_DIR))
        #expect(entries.first { $0.name == bytes("..") }?.qid.path == rootInode)
        #expect(entries.filter { $0.name != bytes(".") && $0.name != bytes("..") }.allSatisfy { $0.type == UInt8(DT_REG) })
        // A page never exceeds count, and a count too small for one entry gives nothing.
        let small = try c.call(.readdir(fid: 3, offset: 0, count: 100))
        if case .readdir(let data) = small { #expect(data.count <= 100 && !data.isEmpty) }
        #expect(try c.readdir(fid: 3, offset: 0, count: 10).isEmpty)
        // Readdir needs an opened directory.
        _ = try c.walk(fid: 0, newFid: 4, ["many"])
        #expect(throws: Errno.badFileDescriptor) { try c.readdir(fid: 4, offset: 0, count: 1000) }
        _ = try c.walk(fid: 0, newFid: 5, path: "etc/hostname")
        _ = try c.lopen(fid: 5, flags: Dotl.rdonly)
        #expect(throws: Errno.notDirectory) { try c.readdir(fid: 5, offset: 0, count: 1000) }
    }

    /// Paging while the directory changes: entries present throughout are seen exactly once;
    /// none is seen twice.
    @Test func readDirectoryPagesThroughChanges() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, [])
        _ = try c.mkdir(dfid: 1, name: "busy", mode: 0o755)
        _ = try c.walk(fid: 0, newFid: 2, ["busy"])
        for i in 0..<200 { _ = try c.mknod(dfid: 2, name: "keep-\(i)", mode: 0o100644) }
        for i in 0..<100 { _ = try c.mknod(dfid: 2, name: "drop-\(i)", mode: 0o100644) }
        _ = try c.walk(fid: 0, newFid: 3, ["busy"])
        _ = try c.lopen(fid: 3, flags: Dotl.rdonly)
        var seen: [String] = []
        var offset: UInt64 = 0
        var round = 0
        while true {
            let page = try c.readdir(fid: 3, offset: offset, count: 300)
            guard let last = page.last else { break }
            seen += page.map { text($0.name) }
            offset = last.offset
            // Between pages another client adds, removes and renames entries.
            for k in 0..<5 {
                let n = round * 5 + k
                if n < 100 { try c.unlinkat(dirFid: 2, name: "drop-\(n)") }
                _ = try c.mknod(dfid: 2, name: "new-\(n)", mode: 0o100644)
            }
            round += 1
        }
        #expect(Set(seen).count == seen.count, "an entry was returned twice")
        for i in 0..<200 { #expect(seen.contains("keep-\(i)")) }
    }

    @Test func clunkedFidsAreGone() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, path: "etc/hostname")
        _ = try c.lopen(fid: 1, flags: Dotl.rdonly)
        try c.clunk(fid: 1)
        #expect(throws: Errno.badFileDescriptor) { try c.read(fid: 1, offset: 0, count: 1) }
        #expect(throws: Errno.badFileDescriptor) { try c.clunk(fid: 1) }
        #expect(throws: Errno.badFileDescriptor) { try c.getattr(fid: 1) }
        // The number is free again.
        #expect(try c.walk(fid: 0, newFid: 1, ["etc"]).count == 1)
        s.volume.metaLock.lock()
        let open = s.volume.openData.count
        s.volume.metaLock.unlock()
        #expect(open == 0)
    }

    @Test func closingReleasesEverything() throws {
        let s = try ServedVM()
        let c = s.client
        for i in 1...20 {
            _ = try c.walk(fid: 0, newFid: UInt32(i), [])
            _ = try c.lcreate(fid: UInt32(i), name: "f\(i)", flags: Dotl.rdwr, mode: 0o644)
            _ = try c.write(fid: UInt32(i), offset: 0, bytes("data \(i)"))
        }
        _ = try c.walk(fid: 0, newFid: 100, path: "etc/hostname")
        _ = try c.lopen(fid: 100, flags: Dotl.rdonly)
        _ = try c.lock(fid: 100, NinePLock(type: NinePLockType.readLock, flags: 0, start: 0, length: 0, processID: 1, clientID: bytes("g")))
        s.volume.metaLock.lock()
        #expect(s.volume.openData.count == 21)
        s.volume.metaLock.unlock()
        s.finish()
        s.volume.metaLock.lock()
        let open = s.volume.openData.count
        s.volume.metaLock.unlock()
        #expect(open == 0)
        #expect(s.volume.locks.test(3, owner: LockOwner(session: 0, owner: 0), range: FileLockRange(type: .write, start: 0, end: .max, pid: 0)) == nil)
        #expect(s.connection.isClosed)
        #expect(text(try s.view().readWhole("f7")) == "data 7")
    }
}
