import Foundation
import Glibc
import PVFS9PCodec
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFS9P
@testable import PVFSEngine

@Suite("9P server: names, attributes, xattrs")
struct ServerNamespaceTests {
    @Test func renameAndUnlink() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, [])
        _ = try c.mkdir(dfid: 1, name: "a", mode: 0o755)
        _ = try c.mkdir(dfid: 1, name: "b", mode: 0o755)
        _ = try c.walk(fid: 0, newFid: 2, ["a"])
        _ = try c.walk(fid: 0, newFid: 3, ["b"])
        _ = try c.walk(fid: 2, newFid: 4, [])
        _ = try c.lcreate(fid: 4, name: "f", flags: Dotl.rdwr, mode: 0o644)
        _ = try c.write(fid: 4, offset: 0, bytes("content"))
        try c.renameat(oldDirFid: 2, oldName: "f", newDirFid: 3, newName: "g")
        #expect(throws: Errno.noSuchFileOrDirectory) { try c.walk(fid: 2, newFid: 5, ["f"]) }
        #expect(try c.walk(fid: 3, newFid: 5, ["g"]).count == 1)
        // The open fid still reads the moved file.
        #expect(text(try c.read(fid: 4, offset: 0, count: 100)) == "content")
        #expect(throws: Errno.noSuchFileOrDirectory) { try c.renameat(oldDirFid: 2, oldName: "f", newDirFid: 3, newName: "h") }
        // Trename moves the file a fid names.
        try c.rename(fid: 5, dfid: 2, name: "back")
        #expect(try c.walk(fid: 2, newFid: 6, ["back"]).first?.path == (try c.getattr(fid: 5)).qid.path)
        // A fid whose file moved under it elsewhere no longer names it: Tremove is refused
        // (ESTALE) rather than removing whatever now has the old name.
        _ = try c.walk(fid: 2, newFid: 7, ["back"])
        try c.renameat(oldDirFid: 2, oldName: "back", newDirFid: 3, newName: "moved")
        _ = try c.mknod(dfid: 2, name: "back", mode: 0o100600)
        #expect(throws: Errno.staleNFSFileHandle) { try c.remove(fid: 7) }
        #expect(throws: Errno.badFileDescriptor) { try c.getattr(fid: 7) }
        #expect(try c.walk(fid: 2, newFid: 7, ["back"]).count == 1)
        // Tremove of a file and of an empty directory.
        try c.remove(fid: 7)
        #expect(throws: Errno.noSuchFileOrDirectory) { try c.walk(fid: 2, newFid: 8, ["back"]) }
        _ = try c.mkdir(dfid: 2, name: "sub", mode: 0o755)
        _ = try c.walk(fid: 2, newFid: 8, ["sub"])
        try c.remove(fid: 8)
        // Tremove of the root is refused and still clunks.
        _ = try c.walk(fid: 0, newFid: 9, [])
        #expect(throws: Errno.resourceBusy) { try c.remove(fid: 9) }
        #expect(throws: Errno.badFileDescriptor) { try c.getattr(fid: 9) }
        // unlinkat: files, directories with AT_REMOVEDIR, and the errors between.
        #expect(throws: Errno.isDirectory) { try c.unlinkat(dirFid: 1, name: "a") }
        #expect(throws: Errno.directoryNotEmpty) { try c.unlinkat(dirFid: 1, name: "b", flags: NinePUnlinkFlags.removeDirectory) }
        #expect(throws: Errno.notDirectory) { try c.unlinkat(dirFid: 3, name: "moved", flags: NinePUnlinkFlags.removeDirectory) }
        #expect(throws: Errno.invalidArgument) { try c.unlinkat(dirFid: 3, name: "moved", flags: 0x100) }
        try c.unlinkat(dirFid: 3, name: "moved")
        #expect(throws: Errno.noSuchFileOrDirectory) { try c.unlinkat(dirFid: 3, name: "g") }
        try c.unlinkat(dirFid: 1, name: "b", flags: NinePUnlinkFlags.removeDirectory)
        // The unlinked file stays readable through the fid that has it open.
        #expect(text(try c.read(fid: 4, offset: 0, count: 100)) == "content")
        #expect(try c.getattr(fid: 4).linkCount == 0)
        try c.clunk(fid: 4)
    }

    @Test func linksSymlinksAndNodes() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, [])
        let target = try c.walk(fid: 0, newFid: 2, path: "etc/hostname")[1]
        try c.link(dfid: 1, fid: 2, name: "hostname-link")
        #expect(try c.getattr(fid: 2).linkCount == 2)
        #expect(try c.walk(fid: 0, newFid: 3, ["hostname-link"]).first?.path == target.path)
        #expect(throws: Errno.fileExists) { try c.link(dfid: 1, fid: 2, name: "hostname-link") }
        _ = try c.walk(fid: 0, newFid: 4, ["etc"])
        #expect(throws: Errno.notPermitted) { try c.link(dfid: 1, fid: 4, name: "dirlink") }

        let link = try c.symlink(fid: 1, name: "ln", target: "etc/hostname", gid: 0)
        #expect(link.type == NinePQidType.symlink)
        _ = try c.walk(fid: 0, newFid: 5, ["ln"])
        #expect(try c.readlink(fid: 5) == "etc/hostname")
        #expect(throws: Errno.invalidArgument) { try c.readlink(fid: 0) }
        #expect(throws: Errno.invalidArgument) { try c.readlink(fid: 2) }

        let fifo = try c.mknod(dfid: 1, name: "fifo", mode: 0o10644)
        _ = try c.walk(fid: 0, newFid: 6, ["fifo"])
        #expect(try c.getattr(fid: 6).mode == 0o10644)
        #expect(fifo.type == NinePQidType.file)
        _ = try c.mknod(dfid: 1, name: "null", mode: 0o20666, major: 1, minor: 3)
        _ = try c.walk(fid: 0, newFid: 7, ["null"])
        let null = try c.getattr(fid: 7)
        #expect(null.mode == 0o20666)
        #expect(DeviceNumber.major(null.rdev) == 1 && DeviceNumber.minor(null.rdev) == 3)
        // Device nodes are records only: never opened on the host.
        #expect(throws: Errno.noSuchAddressOrDevice) { try c.lopen(fid: 7, flags: Dotl.rdonly) }
        // Only root makes devices.
        _ = try c.attach(fid: 20, aname: "vm1", uid: 1000)
        _ = try c.walk(fid: 20, newFid: 21, path: "home/alice")
        #expect(throws: Errno.notPermitted) { try c.mknod(dfid: 21, name: "dev", mode: 0o20600, major: 1, minor: 1, gid: 1000) }
    }

    @Test func creationCarriesTheRequestGid() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.attach(fid: 10, aname: "vm1", uid: 1000)
        _ = try c.walk(fid: 10, newFid: 11, path: "home/alice")
        _ = try c.mkdir(dfid: 11, name: "d", mode: 0o750, gid: 1000)
        _ = try c.walk(fid: 11, newFid: 12, ["d"])
        let d = try c.getattr(fid: 12)
        #expect(d.uid == 1000 && d.gid == 1000 && d.mode == 0o40750)
        // In a setgid directory new files take its group (and directories its setgid bit).
        _ = try c.walk(fid: 10, newFid: 13, ["project"])
        _ = try c.mkdir(dfid: 13, name: "sub", mode: 0o755, gid: 1000)
        _ = try c.walk(fid: 13, newFid: 14, ["sub"])
        let sub = try c.getattr(fid: 14)
        #expect(sub.gid == 2000)
        #expect(sub.mode & 0o2000 != 0)
        _ = try c.symlink(fid: 11, name: "sl", target: "x", gid: 1000)
        _ = try c.walk(fid: 11, newFid: 15, ["sl"])
        #expect(try c.getattr(fid: 15).uid == 1000)
    }

    @Test func setAttributes() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, [])
        _ = try c.lcreate(fid: 1, name: "f", flags: Dotl.rdwr, mode: 0o644)
        _ = try c.write(fid: 1, offset: 0, bytes("0123456789"))
        _ = try c.walk(fid: 0, newFid: 2, ["f"])
        try c.setattr(fid: 2, NinePSetattr(valid: .mode, mode: 0o100600))
        #expect(try c.getattr(fid: 2).mode == 0o100600)
        try c.setattr(fid: 2, NinePSetattr(valid: [.uid, .gid], uid: 1000, gid: 2000))
        var a = try c.getattr(fid: 2)
        #expect(a.uid == 1000 && a.gid == 2000)
        // Truncate by path and through the open fid.
        try c.setattr(fid: 2, NinePSetattr(valid: .size, size: 4))
        #expect(try c.getattr(fid: 2).size == 4)
        try c.setattr(fid: 1, NinePSetattr(valid: .size, size: 2))
        #expect(text(try c.read(fid: 1, offset: 0, count: 100)) == "01")
        // Explicit times, and "now" when the _SET bit is absent.
        try c.setattr(fid: 2, NinePSetattr(valid: [.accessTime, .accessTimeSet, .modificationTime, .modificationTimeSet],
                                           accessTimeSeconds: 1_000_000_000, accessTimeNanoseconds: 123,
                                           modificationTimeSeconds: 1_100_000_000, modificationTimeNanoseconds: 456))
        a = try c.getattr(fid: 2)
        #expect(a.accessTimeSeconds == 1_000_000_000 && a.accessTimeNanoseconds == 123)
        #expect(a.modificationTimeSeconds == 1_100_000_000 && a.modificationTimeNanoseconds == 456)
        let before = Timespec.now.seconds
        try c.setattr(fid: 2, NinePSetattr(valid: [.modificationTime], modificationTimeSeconds: 5))
        a = try c.getattr(fid: 2)
        #expect(Int64(bitPattern: a.modificationTimeSeconds) >= before)
        #expect(a.accessTimeSeconds == 1_000_000_000)
        // A time before 1970 travels as a negative number.
        try c.setattr(fid: 2, NinePSetattr(valid: [.accessTime, .accessTimeSet], accessTimeSeconds: UInt64(bitPattern: -86400)))
        #expect(Int64(bitPattern: try c.getattr(fid: 2).accessTimeSeconds) == -86400)
        // Only ctime.
        let version = try c.getattr(fid: 2).dataVersion
        try c.setattr(fid: 2, NinePSetattr(valid: .changeTime))
        #expect(try c.getattr(fid: 2).dataVersion != version)
        // Nothing valid: nothing happens.
        try c.setattr(fid: 2, NinePSetattr(valid: []))
        #expect(throws: Errno.invalidArgument) {
            try c.setattr(fid: 2, NinePSetattr(valid: [.accessTime, .accessTimeSet], accessTimeNanoseconds: 1_000_000_000))
        }
        // Not the owner: no chmod.
        _ = try c.attach(fid: 10, aname: "vm1", uid: 1001)
        _ = try c.walk(fid: 10, newFid: 11, path: "etc/hostname")
        #expect(throws: Errno.notPermitted) { try c.setattr(fid: 11, NinePSetattr(valid: .mode, mode: 0o777)) }
    }

    @Test func statfsAndFsync() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        let st = try c.statfs(fid: 0)
        #expect(st.type == NineP.filesystemMagic)
        #expect(st.nameLength == 255)
        #expect(st.blockSize > 0 && st.blocks >= st.freeBlocks && st.freeBlocks >= st.availableBlocks)
        _ = try c.walk(fid: 0, newFid: 1, [])
        _ = try c.lcreate(fid: 1, name: "durable", flags: Dotl.rdwr, mode: 0o644)
        _ = try c.write(fid: 1, offset: 0, bytes("x"))
        try c.fsync(fid: 1)
        try c.fsync(fid: 1, datasync: true)
        _ = try c.walk(fid: 0, newFid: 2, ["durable"])
        try c.fsync(fid: 2)
    }

    @Test func quotaShowsInStatfs() throws {
        let fixture = try NinePFixture()
        let volume = try fixture.provision("q", quotaBytes: 10 << 20)
        let resolver = TestResolver(["q": volume], defaultVM: "q")
        let pool = NinePWorkerPool(threads: 2)
        defer { pool.shutdown() }
        let h = try SocketPairHarness(NinePConnection(
            peer: NinePPeer(.local(remote: "t", local: "t"), connectionID: 3),
            pool: pool, logger: testLogger, resolver: resolver.resolver))
        defer { h.finish() }
        _ = try h.client.version()
        _ = try h.client.attach(fid: 0)
        let st = try h.client.statfs(fid: 0)
        #expect(UInt64(st.blockSize) * st.blocks == 10 << 20)
    }

    @Test func extendedAttributes() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, path: "etc/hostname")
        // Get one.
        #expect(try c.xattrwalk(fid: 1, newFid: 2, name: "user.origin") == 8)
        #expect(text(try c.read(fid: 2, offset: 0, count: 100)) == "template")
        #expect(text(try c.read(fid: 2, offset: 3, count: 2)) == "pl")
        #expect(try c.read(fid: 2, offset: 100, count: 2).isEmpty)
        #expect(throws: Errno.badFileDescriptor) { try c.write(fid: 2, offset: 0, bytes("x")) }
        #expect(throws: Errno.invalidArgument) { try c.getattr(fid: 2) }
        try c.clunk(fid: 2)
        #expect(throws: Errno.noData) { try c.xattrwalk(fid: 1, newFid: 2, name: "user.missing") }
        #expect(throws: Errno.badFileDescriptor) { try c.getattr(fid: 2) }
        #expect(throws: Errno.invalidArgument) { try c.xattrwalk(fid: 1, newFid: 1, name: "user.origin") }

        // Set one: Txattrcreate, writes, Tclunk.
        _ = try c.walk(fid: 1, newFid: 3, [])
        let value = (0..<3000).map { UInt8(truncatingIfNeeded: $0) }
        try c.xattrcreate(fid: 3, name: "user.big", size: UInt64(value.count), flags: 0)
        #expect(throws: Errno.badFileDescriptor) { try c.read(fid: 3, offset: 0, count: 10) }
        _ = try c.write(fid: 3, offset: 0, Array(value[0..<1000]))
        _ = try c.write(fid: 3, offset: 1000, Array(value[1000...]))
        #expect(throws: Errno.noSpace) { try c.write(fid: 3, offset: 3000, [1]) }
        try c.clunk(fid: 3)
        #expect(try s.view().getXattr(3, bytes("user.big"), as: .root) == value)

        // List: every name NUL-terminated.
        #expect(try c.xattrwalk(fid: 1, newFid: 4, name: "") == UInt64("user.big\0user.origin\0".utf8.count))
        #expect(text(try c.read(fid: 4, offset: 0, count: 1000)) == "user.big\0user.origin\0")
        try c.clunk(fid: 4)

        // XATTR_CREATE on an existing name fails at the clunk, which reports it.
        _ = try c.walk(fid: 1, newFid: 5, [])
        try c.xattrcreate(fid: 5, name: "user.origin", size: 1, flags: NinePXattrFlags.create)
        _ = try c.write(fid: 5, offset: 0, bytes("x"))
        #expect(throws: Errno.fileExists) { try c.clunk(fid: 5) }
        #expect(throws: Errno.badFileDescriptor) { try c.clunk(fid: 5) }
        // XATTR_REPLACE of a missing name.
        _ = try c.walk(fid: 1, newFid: 5, [])
        try c.xattrcreate(fid: 5, name: "user.nope", size: 1, flags: NinePXattrFlags.replace)
        _ = try c.write(fid: 5, offset: 0, bytes("x"))
        #expect(throws: Errno.noData) { try c.clunk(fid: 5) }
        // Fewer bytes written than announced.
        _ = try c.walk(fid: 1, newFid: 5, [])
        try c.xattrcreate(fid: 5, name: "user.short", size: 10, flags: 0)
        _ = try c.write(fid: 5, offset: 0, bytes("abc"))
        #expect(throws: Errno.invalidArgument) { try c.write(fid: 5, offset: 5, bytes("x")) }
        #expect(throws: Errno.invalidArgument) { try c.clunk(fid: 5) }
        // An empty value is a value.
        _ = try c.walk(fid: 1, newFid: 5, [])
        try c.xattrcreate(fid: 5, name: "user.empty", size: 0, flags: 0)
        try c.clunk(fid: 5)
        #expect(try c.xattrwalk(fid: 1, newFid: 6, name: "user.empty") == 0)
        try c.clunk(fid: 6)
        // Removal: size 0 with XATTR_REPLACE, as Linux sends removexattr.
        _ = try c.walk(fid: 1, newFid: 5, [])
        try c.xattrcreate(fid: 5, name: "user.origin", size: 0, flags: NinePXattrFlags.replace)
        try c.clunk(fid: 5)
        #expect(throws: Errno.noData) { try c.xattrwalk(fid: 1, newFid: 6, name: "user.origin") }
        // Limits and bad flags.
        _ = try c.walk(fid: 1, newFid: 7, [])
        #expect(throws: Errno.argListTooLong) { try c.xattrcreate(fid: 7, name: "user.x", size: 65537, flags: 0) }
        #expect(throws: Errno.invalidArgument) { try c.xattrcreate(fid: 7, name: "user.x", size: 1, flags: 3) }
        #expect(throws: Errno.invalidArgument) { try c.xattrcreate(fid: 7, name: "user.x", size: 1, flags: 4) }
        #expect(throws: Errno.invalidArgument) { try c.xattrcreate(fid: 7, name: "", size: 1, flags: 0) }
        // Unknown namespaces are the engine's to refuse.
        try c.xattrcreate(fid: 7, name: "weird.x", size: 0, flags: 0)
        #expect(throws: Errno.notSupported) { try c.clunk(fid: 7) }
        // An opened fid cannot become an xattr buffer.
        _ = try c.walk(fid: 1, newFid: 8, [])
        _ = try c.lopen(fid: 8, flags: Dotl.rdonly)
        #expect(throws: Errno.invalidArgument) { try c.xattrcreate(fid: 8, name: "user.x", size: 1, flags: 0) }
        #expect(c.violations.isEmpty)
    }

    @Test func xattrBuffersAreBounded() throws {
        var config = NinePConfiguration()
        config.maximumXattrBytes = 100_000
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        _ = try c.walk(fid: 0, newFid: 1, [])
        try c.xattrcreate(fid: 1, name: "user.a", size: 65536, flags: 0)
        _ = try c.walk(fid: 0, newFid: 2, [])
        #expect(throws: Errno.noMemory) { try c.xattrcreate(fid: 2, name: "user.b", size: 65536, flags: 0) }
        try? c.clunk(fid: 1)
        try c.xattrcreate(fid: 2, name: "user.b", size: 65536, flags: 0)
        #expect(s.connection.xattrBytes == 65536)
        try? c.clunk(fid: 2)
        #expect(s.connection.xattrBytes == 0)
    }

    @Test func readOnlySessions() throws {
        let s = try ServedVM(attach: false)
        defer { s.finish() }
        s.resolver.readOnly = true
        let c = s.client
        _ = try c.version()
        _ = try c.attach(fid: 0)
        _ = try c.walk(fid: 0, newFid: 1, [])
        #expect(throws: Errno.readOnlyFileSystem) { try c.lcreate(fid: 1, name: "x", flags: Dotl.rdwr, mode: 0o644) }
        #expect(throws: Errno.readOnlyFileSystem) { try c.mkdir(dfid: 0, name: "x", mode: 0o755) }
        _ = try c.walk(fid: 0, newFid: 2, path: "etc/hostname")
        #expect(throws: Errno.readOnlyFileSystem) { try c.lopen(fid: 2, flags: Dotl.wronly) }
        _ = try c.lopen(fid: 2, flags: Dotl.rdonly)
        #expect(text(try c.read(fid: 2, offset: 0, count: 100)) == "template-host\n")
    }

    @Test func groupsComeFromTheGuestsAccounts() throws {
        let s = try ServedVM()
        defer { s.finish() }
        let c = s.client
        // alice and bob are in "project" through /etc/group; uid 1002 is nobody there.
        for (fid, uid) in [(10 as UInt32, 1000 as UInt32), (20, 1001)] {
            _ = try c.attach(fid: fid, aname: "vm1", uid: uid)
            _ = try c.walk(fid: fid, newFid: fid + 1, ["project"])
            _ = try c.lcreate(fid: fid + 1, name: "by-\(uid)", flags: Dotl.rdwr, mode: 0o660, gid: uid)
            #expect(try c.getattr(fid: fid + 1).gid == 2000)
        }
        _ = try c.attach(fid: 30, aname: "vm1", uid: 1002)
        _ = try c.walk(fid: 30, newFid: 31, path: "project")
        #expect(throws: Errno.permissionDenied) { try c.walk(fid: 31, newFid: 32, ["notes"]) }

        // Changing /etc/group in the guest changes access (after the refresh interval).
        let accounts = GuestAccountDatabase.parse(passwd: bytes(NinePFixture.passwd), group: bytes(NinePFixture.group))
        #expect(accounts.supplementaryGroups[1000] == [2000])
        #expect(accounts.primaryGroup[1001] == 1001)
        #expect(accounts.uidByName[bytes("bob")] == 1001)
    }

    @Test func uidOnlyAccountsIgnoreGroups() throws {
        var config = NinePConfiguration()
        config.accounts = .uidOnly(gid: 65534)
        let s = try ServedVM(configuration: config)
        defer { s.finish() }
        let c = s.client
        _ = try c.attach(fid: 10, aname: "vm1", uid: 1001)
        _ = try c.walk(fid: 10, newFid: 11, path: "project")
        #expect(throws: Errno.permissionDenied) { try c.walk(fid: 11, newFid: 12, ["notes"]) }
    }

    @Test func accountFilesAreParsedDefensively() {
        let passwd = bytes("root:x:0:0::/:/bin/sh\n\n:x:5:5\nbad\nx:x:notanumber:1\nbig:x:99999999999:1\ncarol:x:1003:1003\ncarol:x:9:9\n")
        let group = bytes("g:x:10:carol,nobody,,carol\nh:x:11\nk:x:12:carol\n")
        let db = GuestAccountDatabase.parse(passwd: passwd, group: group)
        #expect(db.uidByName[bytes("carol")] == 1003)
        #expect(db.primaryGroup[1003] == 1003)
        #expect(db.supplementaryGroups[1003] == [10, 12])
        #expect(db.uidByName.count == 2)
    }
}
