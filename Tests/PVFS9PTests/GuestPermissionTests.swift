import Foundation
import Glibc
import PVFS9PCodec
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFS9P
@testable import PVFSEngine
@testable import PVFSStore

/// Who decides permissions for a VM's own users (docs/access.md, "Who decides"): the guest's
/// kernel for unsquashed guests, the server for squashed ones; the VM's policy always.
@Suite struct GuestPermissionTests {
    /// Makes /NAME as root (fid 0 is root's) and gives it UID:GID and MODE (type bits say the
    /// kind: regular, fifo, socket, character device). Returns a fid of root's on it.
    @discardableResult
    func make(_ c: NinePClient, _ name: String, uid: UInt32, gid: UInt32, mode: UInt32, fid: UInt32) throws -> UInt32 {
        let kind = mode & 0o170000
        if kind == 0o100000 {
            _ = try c.walk(fid: 0, newFid: fid, [])
            _ = try c.lcreate(fid: fid, name: name, flags: Dotl.rdwr, mode: 0o600, gid: 0)
            try c.clunk(fid: fid)
        } else {
            _ = try c.mknod(dfid: 0, name: name, mode: kind | 0o600, major: 1, minor: 3, gid: 0)
        }
        _ = try c.walk(fid: 0, newFid: fid, [name])
        try c.setattr(fid: fid, NinePSetattr(valid: [.uid, .gid], uid: uid, gid: gid))
        try c.setattr(fid: fid, NinePSetattr(valid: .mode, mode: mode & 0o7777))
        return fid
    }

    func served(_ policy: SessionPolicy?) throws -> ServedVM {
        let s = try ServedVM()
        s.resolver.policy = policy
        return s
    }

    // MARK: Unsquashed guests: the guest's kernel decides

    @Test func unsquashedGuestsAreDecidedByTheirKernel() {
        #expect(TestResolver.daemonPolicy().permissionChecks == .guestKernel)
        #expect(TestResolver.daemonPolicy(VMAccessSettings(idMapping: "shift", shiftBase: 100_000)).permissionChecks == .guestKernel)
        #expect(TestResolver.daemonPolicy(squash: "none").permissionChecks == .guestKernel)
        #expect(TestResolver.daemonPolicy(VMAccessSettings(idMapping: "root-squash")).permissionChecks == .server)
        #expect(TestResolver.daemonPolicy(squash: "root").permissionChecks == .server)
        #expect(TestResolver.daemonPolicy(squash: "all").permissionChecks == .server)
        #expect(AccessRules.policy(VMAccessSettings(), binding: nil, side: .host).permissionChecks == .server)
    }

    /// `chown file -1 G` of one's own file to a supplementary group the VM's /etc/group does not
    /// list (numeric, or from a directory service): the guest's kernel allowed it.
    @Test func chownToAGroupOnlyTheGuestKnows() throws {
        let s = try served(TestResolver.daemonPolicy())
        defer { s.finish() }
        let c = s.client
        for (i, mode) in [0o100644, 0o104755, 0o102755, 0o010644, 0o140755].enumerated() {
            let name = "own-\(i)"
            try make(c, name, uid: 1000, gid: 1000, mode: UInt32(mode), fid: 1)
            try c.clunk(fid: 1)
            _ = try c.attach(fid: 10, aname: "vm1", uid: 1000)
            _ = try c.walk(fid: 10, newFid: 11, [name])
            try c.setattr(fid: 11, NinePSetattr(valid: .gid, gid: 4242))
            let a = try c.getattr(fid: 11)
            #expect(a.gid == 4242 && a.uid == 1000, "mode \(String(mode, radix: 8))")
            // As on Linux: chown takes setuid away, and setgid where group execute is set.
            #expect(a.mode & 0o6000 == 0, "mode \(String(mode, radix: 8)) became \(String(a.mode, radix: 8))")
            try c.clunk(fid: 11)
            try c.clunk(fid: 10)
        }
    }

    /// A file 65534:65534 mode 0006 opened by uid 65533 (gid 65533): only "other" applies.
    @Test func otherBitsApplyToUsersOfOtherGroups() throws {
        for policy in [TestResolver.daemonPolicy(), TestResolver.daemonPolicy(squash: "root")] {
            let s = try served(policy)
            defer { s.finish() }
            let c = s.client
            try make(c, "o", uid: 65534, gid: 65534, mode: 0o100006, fid: 1)
            _ = try c.attach(fid: 10, aname: "vm1", uid: 65533)
            for (fid, flags) in [(11 as UInt32, Dotl.rdonly), (12, Dotl.wronly), (13, Dotl.rdwr)] {
                _ = try c.walk(fid: 10, newFid: fid, ["o"])
                _ = try c.lopen(fid: fid, flags: flags)
            }
            _ = try c.write(fid: 13, offset: 0, bytes("x"))
            #expect(try c.read(fid: 11, offset: 0, count: 10) == bytes("x"))
        }
    }

    /// The owner's chmod 01644 keeps the sticky bit on files of every kind, as Linux does.
    @Test func stickyBitStaysOnEveryKind() throws {
        for policy in [TestResolver.daemonPolicy(), TestResolver.daemonPolicy(squash: "root")] {
            let s = try served(policy)
            defer { s.finish() }
            let c = s.client
            _ = try c.attach(fid: 10, aname: "vm1", uid: 1000)
            for (i, kind) in [0o100000, 0o010000, 0o140000, 0o020000].enumerated() {
                try make(c, "k\(i)", uid: 1000, gid: 1000, mode: UInt32(kind) | 0o644, fid: 1)
                try c.clunk(fid: 1)
                _ = try c.walk(fid: 10, newFid: 11, ["k\(i)"])
                try c.setattr(fid: 11, NinePSetattr(valid: .mode, mode: 0o1644))
                #expect(try c.getattr(fid: 11).mode == UInt32(kind) | 0o1644, "kind \(String(kind, radix: 8))")
                try c.clunk(fid: 11)
            }
        }
    }

    /// Group permissions through groups only the guest's kernel knows, and the set-id decisions
    /// it makes with them (chmod g+s, the mode a truncation sends to clear set-id bits).
    @Test func groupAccessTheGuestKernelGranted() throws {
        let s = try served(TestResolver.daemonPolicy())
        defer { s.finish() }
        let c = s.client
        try make(c, "g", uid: 1000, gid: 4242, mode: 0o100060, fid: 1)
        _ = try c.attach(fid: 10, aname: "vm1", uid: 1002)
        _ = try c.walk(fid: 10, newFid: 11, ["g"])
        _ = try c.lopen(fid: 11, flags: Dotl.rdwr)
        // chmod g+s by the owner, a member of 4242 in the guest only: the bit stays.
        _ = try c.attach(fid: 20, aname: "vm1", uid: 1000)
        _ = try c.walk(fid: 20, newFid: 21, ["g"])
        try c.setattr(fid: 21, NinePSetattr(valid: .mode, mode: 0o2664))
        #expect(try c.getattr(fid: 21).mode == 0o102664)
        // truncate(2) by a group member of a setuid file: the guest's kernel sends the size and
        // the mode without setuid in one Tsetattr.
        try c.setattr(fid: 21, NinePSetattr(valid: .mode, mode: 0o4666))
        _ = try c.walk(fid: 10, newFid: 12, ["g"])
        try c.setattr(fid: 12, NinePSetattr(valid: [.size, .mode], mode: 0o666, size: 0))
        let a = try c.getattr(fid: 12)
        #expect(a.mode == 0o100666 && a.size == 0)
        // Directories: search and write through the guest-only group.
        _ = try c.mkdir(dfid: 0, name: "d", mode: 0o700)
        _ = try c.walk(fid: 0, newFid: 2, ["d"])
        try c.setattr(fid: 2, NinePSetattr(valid: [.uid, .gid], uid: 1000, gid: 4242))
        try c.setattr(fid: 2, NinePSetattr(valid: .mode, mode: 0o2070))
        _ = try c.walk(fid: 10, newFid: 13, ["d"])
        _ = try c.lcreate(fid: 13, name: "new", flags: Dotl.rdwr, mode: 0o644, gid: 1002)
        #expect(try c.getattr(fid: 13).gid == 4242)
    }

    /// What the guest's kernel refused never reaches the server; what reaches it is the VM's
    /// policy's to refuse: read-only stays read-only whoever asks.
    @Test func policyStaysWithTheServer() throws {
        let s = try served(TestResolver.daemonPolicy(VMAccessSettings(readOnly: true)))
        defer { s.finish() }
        let c = s.client
        _ = try c.attach(fid: 10, aname: "vm1", uid: 0)
        _ = try c.walk(fid: 10, newFid: 11, path: "etc/hostname")
        #expect(throws: Errno.readOnlyFileSystem) { try c.lopen(fid: 11, flags: Dotl.wronly) }
        #expect(throws: Errno.readOnlyFileSystem) { try c.setattr(fid: 11, NinePSetattr(valid: .mode, mode: 0o600)) }
        #expect(throws: Errno.readOnlyFileSystem) { try c.mkdir(dfid: 10, name: "x", mode: 0o755) }
    }

    /// -1 means "unchanged" to chown(2): no file may be given it.
    @Test func chownToMinusOneIsRefused() throws {
        let s = try served(TestResolver.daemonPolicy())
        defer { s.finish() }
        let c = s.client
        try make(c, "f", uid: 1000, gid: 1000, mode: 0o100644, fid: 1)
        #expect(throws: Errno.invalidArgument) { try c.setattr(fid: 1, NinePSetattr(valid: .gid, gid: UInt32.max)) }
        #expect(throws: Errno.invalidArgument) { try c.setattr(fid: 1, NinePSetattr(valid: .uid, uid: UInt32.max)) }
        #expect(try c.getattr(fid: 1).gid == 1000)
    }

    // MARK: Writes clear set-id bits (Linux's 9p client leaves it to the server)

    @Test func writesClearSetIDBits() throws {
        let s = try served(TestResolver.daemonPolicy())
        defer { s.finish() }
        let c = s.client
        // (mode, group, writer, mode after). bob (1001) is in project (2000) through the VM's
        // /etc/group; 4242 is no group of his as far as the server can tell.
        let cases: [(UInt32, UInt32, UInt32, UInt32)] = [
            (0o6767, 2000, 1001, 0o2767),  // setuid goes; setgid without group execute stays for a member
            (0o2767, 4242, 1001, 0o0767),  // ... and goes for a writer outside the group
            (0o2777, 2000, 1001, 0o0777),  // setgid with group execute goes for everyone
            (0o4666, 2000, 1000, 0o0666),  // the owner's write clears setuid too
            (0o6777, 2000, 0, 0o6777),     // root's write keeps everything
        ]
        for (i, (mode, gid, writer, after)) in cases.enumerated() {
            let name = "w\(i)"
            try make(c, name, uid: 1000, gid: gid, mode: 0o100000 | mode, fid: 1)
            try c.clunk(fid: 1)
            _ = try c.attach(fid: 10, aname: "vm1", uid: writer)
            _ = try c.walk(fid: 10, newFid: 11, [name])
            _ = try c.lopen(fid: 11, flags: Dotl.wronly)
            _ = try c.write(fid: 11, offset: 0, bytes("data"))
            let got = try c.getattr(fid: 11).mode
            #expect(got == 0o100000 | after, "mode \(String(mode, radix: 8)) written by \(writer): \(String(got, radix: 8))")
            try c.clunk(fid: 11)
            try c.clunk(fid: 10)
        }
    }

    // MARK: Squashed guests: the server decides

    @Test func squashedGuestsAreCheckedByTheServer() throws {
        let s = try served(TestResolver.daemonPolicy(squash: "root"))
        defer { s.finish() }
        let c = s.client
        try make(c, "secret", uid: 0, gid: 0, mode: 0o100600, fid: 1)
        // Guest root acts as the anonymous ids, without privilege.
        _ = try c.attach(fid: 10, aname: "vm1", uid: 0)
        _ = try c.walk(fid: 10, newFid: 11, ["secret"])
        #expect(throws: Errno.permissionDenied) { try c.lopen(fid: 11, flags: Dotl.rdonly) }
        #expect(throws: Errno.notPermitted) { try c.setattr(fid: 11, NinePSetattr(valid: .uid, uid: 0)) }
        // Other users act with the groups the VM's /etc/passwd and /etc/group give them.
        _ = try c.attach(fid: 20, aname: "vm1", uid: 1001)
        _ = try c.walk(fid: 20, newFid: 21, path: "project/notes")
        _ = try c.lopen(fid: 21, flags: Dotl.rdwr)
        _ = try c.attach(fid: 30, aname: "vm1", uid: 1003)
        _ = try c.walk(fid: 30, newFid: 31, path: "project")
        #expect(throws: Errno.permissionDenied) { try c.walk(fid: 31, newFid: 32, ["notes"]) }
        // A group the server cannot see grants nothing here.
        try make(c, "mine", uid: 1000, gid: 1000, mode: 0o100644, fid: 2)
        _ = try c.attach(fid: 40, aname: "vm1", uid: 1000)
        _ = try c.walk(fid: 40, newFid: 41, ["mine"])
        #expect(throws: Errno.notPermitted) { try c.setattr(fid: 41, NinePSetattr(valid: .gid, gid: 4242)) }
        try c.setattr(fid: 41, NinePSetattr(valid: .gid, gid: 2000))
        #expect(try c.getattr(fid: 41).gid == 2000)
    }

    @Test func allSquashActsAsTheAnonymousIds() throws {
        let s = try served(TestResolver.daemonPolicy(squash: "all"))
        defer { s.finish() }
        let c = s.client
        _ = try c.attach(fid: 10, aname: "vm1", uid: 1000)
        // alice's own home is alice's, not the anonymous user's.
        _ = try c.walk(fid: 10, newFid: 11, path: "home/alice")
        #expect(throws: Errno.permissionDenied) { try c.walk(fid: 11, newFid: 12, ["x"]) }
        _ = try c.walk(fid: 10, newFid: 13, [])
        #expect(throws: Errno.permissionDenied) { try c.lcreate(fid: 13, name: "x", flags: Dotl.rdwr, mode: 0o644, gid: 1000) }
    }

    // MARK: Times

    /// The server keeps what Tsetattr carries to the nanosecond, on every kind of file and before
    /// 1970. (Linux 6.1's 9p client truncates explicit times to seconds and clamps them at 1970
    /// before sending them: docs/access.md.)
    @Test func timesKeepTheirNanoseconds() throws {
        let s = try served(TestResolver.daemonPolicy())
        defer { s.finish() }
        let c = s.client
        try make(c, "fifo", uid: 1000, gid: 1000, mode: 0o010644, fid: 1)
        _ = try c.mkdir(dfid: 0, name: "dir", mode: 0o755)
        _ = try c.symlink(fid: 0, name: "sym", target: "x")
        let times: [(Int64, UInt64, Int64, UInt64)] = [(1_600_000_000, 100_000_000, 1_600_000_001, 200_000_000),
                                                       (-86_400, 500_000_000, -1, 999_999_999)]
        for (n, path) in ["fifo", "dir", "sym", "etc/hostname"].enumerated() {
            let fid = UInt32(20 + n)
            _ = try c.walk(fid: 0, newFid: fid, path: path)
            for (asec, ansec, msec, mnsec) in times {
                try c.setattr(fid: fid, NinePSetattr(valid: [.accessTime, .accessTimeSet, .modificationTime, .modificationTimeSet],
                                                     accessTimeSeconds: UInt64(bitPattern: asec), accessTimeNanoseconds: ansec,
                                                     modificationTimeSeconds: UInt64(bitPattern: msec), modificationTimeNanoseconds: mnsec))
                let a = try c.getattr(fid: fid)
                #expect(Int64(bitPattern: a.accessTimeSeconds) == asec && a.accessTimeNanoseconds == ansec, "\(path)")
                #expect(Int64(bitPattern: a.modificationTimeSeconds) == msec && a.modificationTimeNanoseconds == mnsec, "\(path)")
            }
        }
    }

    // MARK: The VM's account files

    @Test func accountFilesAreParsedOncePerChange() throws {
        let fixture = try NinePFixture()
        let volume = try fixture.provision("vm1")
        let cache = GuestAccountCache()
        let views = (0..<3).map { VMView(volume: volume, policy: SessionPolicy(side: .guest), sessionID: UInt64(10 + $0)) }
        // Three connections of the VM, each with its own accounts: one parse.
        for view in views {
            let accounts = GuestAccounts(policy: .guestDatabase(refreshSeconds: 0), cache: cache)
            #expect(accounts.credentials(uid: 1001, view: view).groups == [2000])
        }
        #expect(cache.parses == 1)
        // The guest adds bob to a group: the next lookup parses again and sees it.
        let etc = try views[0].lookup(rootInode, bytes("etc"), as: .root)
        let group = try views[0].lookup(etc.inode, bytes("group"), as: .root)
        let handle = try views[0].open(group.inode, flags: O_WRONLY | O_APPEND, as: .root)
        _ = try views[0].write(handle, offset: Int64(NinePFixture.group.utf8.count), bytes: bytes("extra:x:3000:bob\n"), as: .root)
        views[0].release(handle)
        let accounts = GuestAccounts(policy: .guestDatabase(refreshSeconds: 0), cache: cache)
        #expect(accounts.credentials(uid: 1001, view: views[1]).groups == [2000, 3000])
        #expect(cache.parses == 2)
        _ = accounts.credentials(uid: 1001, view: views[2])
        #expect(cache.parses == 2)
        // Users the VM does not list have no group but the one a creating request carries.
        #expect(accounts.credentials(uid: 4000, view: views[0]).gid == GuestAccounts.noGroup)
        #expect(accounts.credentials(uid: 4000, requestGid: 7, view: views[0]).gid == 7)
    }

    /// One user in seventy thousand groups: parsed in one pass, capped at NGROUPS_MAX.
    @Test func hugeGroupFilesParseInLinearTime() {
        var group = [UInt8]()
        group.reserveCapacity(2_000_000)
        for gid in 0..<70_000 {
            group += bytes("g\(gid):x:\(gid + 10_000):alice,bob,alice\n")
        }
        let db = GuestAccountDatabase.parse(passwd: bytes(NinePFixture.passwd), group: group)
        #expect(db.supplementaryGroups[1000]?.count == GuestAccountDatabase.maximumGroupsPerUser)
        #expect(db.supplementaryGroups[1001]?.first == 10_000)
        #expect(Set(db.supplementaryGroups[1000] ?? []).count == GuestAccountDatabase.maximumGroupsPerUser)
    }
}
