import Foundation
import Glibc
import PVFSFuseCodec
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSFuseServer

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

@Suite("FUSE server: INIT and the session")
struct FuseServerSessionTests {
    @Test("INIT grants what pvfs serves of Linux 6.1's offer")
    func initFlags() throws {
        let vm = try ServedFuseVM(initialise: false)
        let reply = vm.client.initialise()
        #expect(reply.error == 0)
        let out = try #require(reply.decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseInitOut.decode(&r) })
        #expect(out.major == 7 && out.minor == 38)
        #expect(out.maxWrite == 1 << 20 && out.maxPages == 256 && out.timeGranularity == 1)
        #expect(out.maxReadahead == 131072)
        let granted: FuseInitFlags = [.asyncRead, .posixLocks, .atomicOTrunc, .bigWrites, .dontMask, .flockLocks, .autoInvalData,
                                      .doReaddirplus, .readdirplusAuto, .asyncDIO, .parallelDirops, .posixACL, .maxPages,
                                      .cacheSymlinks, .setxattrExt]
        #expect(out.flags == granted)
        // Never granted: writeback cache (quota per write), killpriv (explicit SETATTRs), DAX,
        // export, security labels, open-less files.
        for refused: FuseInitFlags in [.writebackCache, .handleKillpriv, .handleKillprivV2, .exportSupport, .hasInodeDAX,
                                       .mapAlignment, .securityContext, .noOpenSupport, .noOpendirSupport, .submounts, .initExt] {
            #expect(!out.flags.contains(refused))
        }
        #expect(vm.server.negotiation?.minor == 38)
    }

    @Test("a newer kernel gets 7.38; an older one keeps its minor; before 7.31 is refused")
    func minors() throws {
        let vm = try ServedFuseVM(initialise: false)
        let reply = vm.client.initialise(minor: 45)
        #expect(reply.decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseInitOut.decode(&r) }?.minor == 38)
        let old = try ServedFuseVM(initialise: false)
        #expect(old.client.initialise(minor: 31).decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseInitOut.decode(&r) }?.minor == 31)
        let ancient = try ServedFuseVM(initialise: false)
        #expect(ancient.client.initialise(minor: 26).errno == .protocolError)
        #expect(ancient.client.call(.getattr(flags: 0, handle: 0)).errno == .ioError)
    }

    @Test("nothing but INIT before INIT")
    func beforeInit() throws {
        let vm = try ServedFuseVM(initialise: false)
        #expect(vm.client.call(.lookup(name: bytes("etc"))).errno == .ioError)
        let (sink, _) = vm.client.post(.forget(count: 1), node: 2)
        #expect(sink.noReplyCount == 1 && sink.pending == 0)
    }

    @Test("locks left to the client's kernel and no ACLs when configured so")
    func hostExclusive() throws {
        let vm = try ServedFuseVM(configuration: FuseServerConfiguration(entryTimeout: 86400, keepCache: true, locksInKernel: true, posixACLs: false),
                                  initialise: false)
        let out = vm.client.initialise().decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseInitOut.decode(&r) }
        #expect(out?.flags.contains(.posixLocks) == false && out?.flags.contains(.flockLocks) == false)
        #expect(out?.flags.contains(.posixACL) == false && out?.flags.contains(.dontMask) == false)
        let etc = try #require(vm.client.lookup(1, "etc"))
        #expect(etc.entryValid == 86400)
        let hostname = try #require(vm.client.lookup(etc.nodeID, "hostname"))
        let open = vm.client.call(.open(flags: 0, openFlags: 0), node: hostname.nodeID).open
        #expect(open?.openFlags == FuseOpenReplyFlags.keepCache | FuseOpenReplyFlags.noFlush)
        let dir = vm.client.call(.opendir(flags: 0, openFlags: 0), node: etc.nodeID).open
        #expect(dir?.openFlags == FuseOpenReplyFlags.keepCache | FuseOpenReplyFlags.cacheDirectory)
    }

    @Test("a second INIT: a protocol error on /dev/fuse, a fresh session for a rebooted guest")
    func reinitialise() throws {
        let host = try ServedFuseVM(configuration: FuseServerConfiguration(), initialise: true)
        #expect(host.client.initialise().errno == .ioError)

        let guest = try ServedFuseVM()
        let etc = try #require(guest.client.lookup(1, "etc"))
        let hostname = try #require(guest.client.lookup(etc.nodeID, "hostname"))
        let fh = try #require(guest.client.openFile(hostname.nodeID))
        #expect(guest.server.openHandles == 1 && guest.server.heldNodes == 2)
        #expect(guest.client.initialise().error == 0)
        #expect(guest.server.openHandles == 0 && guest.server.heldNodes == 0)
        #expect(guest.client.read(hostname.nodeID, handle: fh).errno == .badFileDescriptor)
        #expect(guest.client.call(.getattr(flags: 0, handle: 0), node: hostname.nodeID).errno == .staleNFSFileHandle)
    }

    @Test("DESTROY releases handles and locks; the transport closing ends the session")
    func destroy() throws {
        let vm = try ServedFuseVM()
        let (entry, open) = try #require(vm.client.create(1, "f"))
        let lock = FuseLockIn(handle: open.handle, owner: 1, lock: FuseFileLock(start: 0, end: 10, type: 1, pid: 1))
        #expect(vm.client.call(.setlk(lock, wait: false), node: entry.nodeID).error == 0)
        #expect(vm.volume.locks.recordCount == 1)
        #expect(vm.client.call(.destroy, node: 0).error == 0)
        #expect(vm.server.openHandles == 0 && vm.volume.locks.recordCount == 0)
        // A new INIT after DESTROY is a new session (virtio-fs remount).
        #expect(vm.client.initialise().error == 0)
        vm.server.transportClosed()
        #expect(vm.client.call(.statfs).errno == .ioError)
    }
}

@Suite("FUSE server: names, attributes and data")
struct FuseServerOperationTests {
    @Test("lookup, getattr, readlink and read of template files")
    func templateFiles() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        let etc = try #require(c.lookup(1, "etc"))
        #expect(etc.nodeID == 2 && etc.attr.mode == 0o040755 && etc.generation == 0)
        #expect(etc.entryValid == 1 && etc.attrValid == 1)
        let hostname = try #require(c.lookup(2, "hostname"))
        #expect(hostname.attr.size == 14 && hostname.attr.ino == 3 && hostname.attr.nlink == 1)
        #expect(hostname.attr.mtime == 1_700_000_000)
        let attr = try #require(c.call(.getattr(flags: 0, handle: 0), node: 3).attr)
        #expect(attr.attr == hostname.attr)
        _ = try #require(c.lookup(1, "bin"))
        let sh = try #require(c.lookup(4, "sh"))
        #expect(sh.attr.mode == 0o120777)
        #expect(c.call(.readlink, node: sh.nodeID).payload == bytes("busybox"))
        let fh = try #require(c.openFile(3))
        #expect(c.read(3, handle: fh).payload == bytes("template-host\n"))
        #expect(c.read(3, handle: fh, offset: 9, size: 3).payload == bytes("hos"))
        #expect(c.read(3, handle: fh, offset: 100).payload.isEmpty)
        #expect(c.release(3, handle: fh).error == 0)
        // Large reads: the whole big file in 128 KiB pieces, as a client's readahead asks.
        _ = try #require(c.lookup(1, "big"))
        let big = try #require(c.openFile(8))
        var content: [UInt8] = []
        while true {
            let piece = c.read(8, handle: big, offset: UInt64(content.count), size: 131072).payload
            if piece.isEmpty { break }
            content += piece
        }
        #expect(content == FuseServerFixture.bigContent())
    }

    @Test("absent names: ENOENT or a negative entry, as configured")
    func negativeEntries() throws {
        let vm = try ServedFuseVM()
        let reply = vm.client.call(.lookup(name: bytes("missing")))
        #expect(reply.error == 0)
        #expect(reply.entry?.nodeID == 0 && reply.entry?.entryValid == 1)
        let strict = try ServedFuseVM(configuration: FuseServerConfiguration(entryTimeout: 1, negativeTimeout: 0))
        #expect(strict.client.call(.lookup(name: bytes("missing"))).errno == .noSuchFileOrDirectory)
        // Names the engine refuses.
        #expect(strict.client.call(.lookup(name: [UInt8](repeating: 0x61, count: 256))).errno == .fileNameTooLong)
        #expect(strict.client.call(.lookup(name: bytes("a/b"))).errno == .invalidArgument)
    }

    @Test("node ids: only those handed out are usable; FORGET and BATCH_FORGET return them")
    func lookupCounts() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        // A guessed inode number the client was never given.
        #expect(c.call(.getattr(flags: 0, handle: 0), node: 3).errno == .staleNFSFileHandle)
        #expect(c.call(.lookup(name: bytes("hostname")), node: 2).errno == .staleNFSFileHandle)
        _ = try #require(c.lookup(1, "etc"))
        _ = try #require(c.lookup(1, "etc"))
        #expect(vm.server.heldNodes == 1)
        c.post(.forget(count: 1), node: 2)
        #expect(c.call(.getattr(flags: 0, handle: 0), node: 2).error == 0)
        let (sink, _) = c.post(.forget(count: 1), node: 2)
        #expect(sink.noReplyCount == 1)
        #expect(c.call(.getattr(flags: 0, handle: 0), node: 2).errno == .staleNFSFileHandle)
        // BATCH_FORGET of several, with counts larger than held and ids never held.
        _ = try #require(c.lookup(1, "etc"))
        _ = try #require(c.lookup(1, "bin"))
        c.post(.batchForget([FuseForgetOne(nodeID: 2, count: 5), FuseForgetOne(nodeID: 4, count: 1), FuseForgetOne(nodeID: 999, count: 1)]), node: 0)
        #expect(vm.server.heldNodes == 0)
        // The root is always held; forgetting it changes nothing.
        c.post(.forget(count: 100), node: 1)
        #expect(c.call(.getattr(flags: 0, handle: 0), node: 1).error == 0)
        // "." and ".." answer the node itself and its parent.
        _ = try #require(c.lookup(1, "etc"))
        #expect(c.lookup(2, ".")?.nodeID == 2)
        #expect(c.lookup(2, "..")?.nodeID == 1)
    }

    @Test("create, write, read back, setattr, unlink")
    func fileLifecycle() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        c.uid = 1000
        c.gid = 1000
        let (entry, open) = try #require(c.create(1, "new", mode: 0o100664))
        // DONT_MASK: the server applied the umask (0o022) sent with CREATE.
        #expect(entry.attr.mode == 0o100644 && entry.attr.uid == 1000 && entry.attr.gid == 1000)
        let w = c.write(entry.nodeID, handle: open.handle, offset: 0, bytes("hello world"))
        #expect(w.u32 == 11)
        #expect(c.read(entry.nodeID, handle: open.handle, size: 100).payload == bytes("hello world"))
        var s = FuseSetattrIn()
        s.valid = FuseSetattrValid.size | FuseSetattrValid.handle
        s.size = 5
        s.handle = open.handle
        #expect(c.call(.setattr(s), node: entry.nodeID).attr?.attr.size == 5)
        s = FuseSetattrIn()
        s.valid = FuseSetattrValid.mode | FuseSetattrValid.mtime
        s.mode = 0o100600
        s.mtime = 1234
        s.mtimensec = 5
        let after = try #require(c.call(.setattr(s), node: entry.nodeID).attr)
        #expect(after.attr.mode == 0o100600 && after.attr.mtime == 1234 && after.attr.mtimensec == 5)
        s.mtimensec = 2_000_000_000
        #expect(c.call(.setattr(s), node: entry.nodeID).errno == .invalidArgument)
        #expect(c.release(entry.nodeID, handle: open.handle).error == 0)
        #expect(c.release(entry.nodeID, handle: open.handle).errno == .badFileDescriptor)
        #expect(c.call(.unlink(name: bytes("new"))).error == 0)
        #expect(c.call(.lookup(name: bytes("new"))).entry?.nodeID == 0)
        // O_EXCL on an existing name.
        _ = try #require(c.create(1, "x"))
        let again = c.call(.create(FuseCreateIn(flags: UInt32(O_RDWR | O_CREAT | O_EXCL), mode: 0o100644), name: bytes("x")))
        #expect(again.errno == .fileExists)
    }

    @Test("forged and stale file handles are EBADF")
    func forgedHandles() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        _ = try #require(c.lookup(1, "etc"))
        _ = try #require(c.lookup(2, "hostname"))
        let fh = try #require(c.openFile(3))
        for forged: UInt64 in [0, fh ^ (1 << 32), fh + 1, .max, 0xdead_beef_0000_0000] {
            #expect(c.read(3, handle: forged).errno == .badFileDescriptor)
        }
        let dir = try #require(c.call(.opendir(flags: 0, openFlags: 0), node: 2).open?.handle)
        // A directory handle is no file handle, and the other way round.
        #expect(c.read(2, handle: dir).errno == .badFileDescriptor)
        #expect(c.call(.readdir(FuseReadIn(handle: fh, offset: 0, size: 4096)), node: 3).errno == .badFileDescriptor)
        #expect(c.release(3, handle: fh).error == 0)
        // The slot is reused with a new generation: the old value stays dead.
        let fh2 = try #require(c.openFile(3))
        #expect(fh2 != fh)
        #expect(c.read(3, handle: fh).errno == .badFileDescriptor)
    }

    @Test("mkdir, symlink, mknod, link, rename, rename2, rmdir")
    func namespace() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        let dir = try #require(c.call(.mkdir(mode: 0o777, umask: 0o027, name: bytes("d"))).entry)
        #expect(dir.attr.mode == 0o040750)
        let link = try #require(c.call(.symlink(name: bytes("l"), target: bytes("../etc")), node: dir.nodeID).entry)
        #expect(link.attr.mode & 0o170000 == 0o120000)
        #expect(c.call(.readlink, node: link.nodeID).payload == bytes("../etc"))
        let fifo = try #require(c.call(.mknod(mode: 0o010644, rdev: 0, umask: 0, name: bytes("fifo")), node: dir.nodeID).entry)
        #expect(fifo.attr.mode == 0o010644)
        let device = try #require(c.call(.mknod(mode: 0o020600, rdev: 0x0103, umask: 0, name: bytes("null")), node: dir.nodeID).entry)
        #expect(device.attr.rdev == 0x0103)
        let (file, open) = try #require(c.create(dir.nodeID, "f"))
        _ = c.release(file.nodeID, handle: open.handle)
        let hard = try #require(c.call(.link(node: file.nodeID, name: bytes("hard")), node: 1).entry)
        #expect(hard.nodeID == file.nodeID && hard.attr.nlink == 2)
        #expect(c.call(.rename(newParent: 1, flags: 0, name: bytes("f"), newName: bytes("g"), version2: false), node: dir.nodeID).error == 0)
        // RENAME2: NOREPLACE refuses, EXCHANGE swaps, unknown flags are EINVAL.
        #expect(c.call(.rename(newParent: 1, flags: 1, name: bytes("g"), newName: bytes("hard"), version2: true)).errno == .fileExists)
        #expect(c.call(.rename(newParent: dir.nodeID, flags: 2, name: bytes("g"), newName: bytes("l"), version2: true)).error == 0)
        #expect(c.lookup(1, "g")?.attr.mode == link.attr.mode)
        #expect(c.call(.rename(newParent: 1, flags: 8, name: bytes("g"), newName: bytes("z"), version2: true)).errno == .invalidArgument)
        #expect(c.call(.rmdir(name: bytes("d"))).errno == .directoryNotEmpty)
        for name in ["l", "fifo", "null"] { #expect(c.call(.unlink(name: bytes(name)), node: dir.nodeID).error == 0) }
        #expect(c.call(.unlink(name: bytes("g"))).error == 0)
        #expect(c.call(.rmdir(name: bytes("d"))).error == 0)
        // Renaming into a node the client does not hold.
        #expect(c.call(.rename(newParent: 424242, flags: 0, name: bytes("hard"), newName: bytes("x"), version2: false)).errno == .staleNFSFileHandle)
    }

    @Test("readdir and readdirplus resume at the engine's cookies; plus counts lookups but not dots")
    func directories() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        for i in 0..<50 { _ = c.create(1, "file\(i)") }
        let held = vm.server.heldNodes
        let dir = try #require(c.call(.opendir(flags: 0, openFlags: 0)).open?.handle)
        var names: [String] = []
        var offset: UInt64 = 0
        while true {
            let reply = c.call(.readdir(FuseReadIn(handle: dir, offset: offset, size: 256)))
            let entries = try reply.payload.withUnsafeBytes { try FuseDirent.decodeAll($0) }
            #expect(reply.payload.count <= 256)
            if entries.isEmpty { break }
            names += entries.map { String(decoding: $0.name, as: UTF8.self) }
            offset = entries.last!.offset
        }
        #expect(names.count == Set(names).count)
        #expect(Set(names) == Set([".", "..", "etc", "bin", "home", "big"] + (0..<50).map { "file\($0)" }))
        // Readdirplus: attributes for every entry but the dots, each counted once.
        #expect(held == 50)
        offset = 0
        var plusNames: [String] = []
        while true {
            let reply = c.call(.readdirplus(FuseReadIn(handle: dir, offset: offset, size: 4096)))
            let entries = try reply.payload.withUnsafeBytes { try FuseDirent.decodeAllPlus($0) }
            if entries.isEmpty { break }
            for (entry, dirent) in entries {
                let name = String(decoding: dirent.name, as: UTF8.self)
                plusNames.append(name)
                if name == "." || name == ".." {
                    #expect(entry.nodeID == 0)
                } else {
                    #expect(entry.nodeID == dirent.ino && entry.attr.ino == dirent.ino)
                }
            }
            offset = entries.last!.1.offset
        }
        #expect(Set(plusNames) == Set(names))
        #expect(vm.server.heldNodes == 54)
        #expect(c.release(1, handle: dir, directory: true).error == 0)
    }

    @Test("a directory removed while open: fstat with no links and an empty listing")
    func removedWhileOpen() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        let d = try #require(c.call(.mkdir(mode: 0o755, umask: 0, name: bytes("gone"))).entry)
        let fh = try #require(c.call(.opendir(flags: 0, openFlags: 0), node: d.nodeID).open?.handle)
        #expect(c.call(.rmdir(name: bytes("gone"))).error == 0)
        #expect(c.call(.getattr(flags: 0, handle: 0), node: d.nodeID).attr?.attr.nlink == 0)
        let listing = c.call(.readdir(FuseReadIn(handle: fh, offset: 0, size: 4096)), node: d.nodeID)
        #expect(listing.error == 0 && listing.payload.isEmpty)
        _ = c.release(d.nodeID, handle: fh, directory: true)
        #expect(c.call(.getattr(flags: 0, handle: 0), node: d.nodeID).errno == .noSuchFileOrDirectory)
    }

    @Test("xattrs: set, size probe, get, ERANGE, list (trusted only for root), remove, flags")
    func xattrs() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        _ = try #require(c.lookup(1, "etc"))
        _ = try #require(c.lookup(2, "hostname"))
        #expect(c.call(.getxattr(size: 0, name: bytes("user.origin")), node: 3).u32 == 8)
        #expect(c.call(.getxattr(size: 100, name: bytes("user.origin")), node: 3).payload == bytes("template"))
        #expect(c.call(.getxattr(size: 3, name: bytes("user.origin")), node: 3).errno == .outOfRange)
        #expect(c.call(.setxattr(flags: 0, setxattrFlags: 0, name: bytes("user.new"), value: [0, 1, 2]), node: 3).error == 0)
        #expect(c.call(.setxattr(flags: 1, setxattrFlags: 0, name: bytes("user.new"), value: [9]), node: 3).errno == .fileExists)
        #expect(c.call(.setxattr(flags: 2, setxattrFlags: 0, name: bytes("user.none"), value: [9]), node: 3).errno == .noData)
        #expect(c.call(.setxattr(flags: 7, setxattrFlags: 0, name: bytes("user.x"), value: [9]), node: 3).errno == .invalidArgument)
        #expect(c.call(.setxattr(flags: 0, setxattrFlags: 0, name: bytes("trusted.t"), value: [1]), node: 3).error == 0)
        #expect(c.call(.getxattr(size: 10, name: bytes("user.new")), node: 3).payload == [0, 1, 2])
        let list = c.call(.listxattr(size: 1000), node: 3).payload
        #expect(Set(list.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }) == ["user.origin", "user.new", "trusted.t"])
        c.uid = 1000
        let userList = c.call(.listxattr(size: 1000), node: 3).payload
        #expect(!userList.split(separator: 0).contains { $0.starts(with: bytes("trusted.")) })
        #expect(c.call(.listxattr(size: 0), node: 3).u32 == UInt32(userList.count))
        c.uid = 0
        #expect(c.call(.removexattr(name: bytes("user.new")), node: 3).error == 0)
        #expect(c.call(.getxattr(size: 10, name: bytes("user.new")), node: 3).errno == .noData)
    }

    @Test("statfs shows the VM's quota; writes past it are EDQUOT")
    func quota() throws {
        let vm = try ServedFuseVM(quotaBytes: 1 << 20)
        let c = vm.client
        let statfs = try #require(c.call(.statfs).decode { (r: inout FuseReader) throws(FuseDecodeError) in try FuseStatfsOut.decode(&r) })
        #expect(statfs.blocks * UInt64(statfs.frsize) <= 1 << 20 && statfs.blocks > 0)
        #expect(statfs.namelen == 255)
        let (entry, open) = try #require(c.create(1, "fill"))
        let chunk = [UInt8](repeating: 7, count: 256 << 10)
        var result: FuseTestReply?
        for i in 0..<8 {
            result = c.write(entry.nodeID, handle: open.handle, offset: UInt64(i * chunk.count), chunk)
            if result?.error != 0 { break }
        }
        #expect(result?.errno == .diskQuotaExceeded)
    }

    @Test("read-only sessions refuse changes with EROFS")
    func readOnly() throws {
        let vm = try ServedFuseVM(policy: SessionPolicy(side: .guest, readOnly: true, permissionChecks: .hostKernel))
        let c = vm.client
        #expect(c.call(.mkdir(mode: 0o755, umask: 0, name: bytes("d"))).errno == .readOnlyFileSystem)
        #expect(c.create(1, "f") == nil)
        _ = try #require(c.lookup(1, "etc"))
        #expect(c.call(.open(flags: UInt32(O_WRONLY), openFlags: 0), node: 2).error != 0)
        #expect(c.call(.getattr(flags: 0, handle: 0), node: 2).error == 0)
    }

    @Test("a squashed guest is checked by the engine with the squashed ids")
    func squashed() throws {
        let policy = SessionPolicy(side: .guest, idMapping: .rootSquash(uid: 65534, gid: 65534), permissionChecks: .server)
        let vm = try ServedFuseVM(policy: policy)
        let c = vm.client
        _ = try #require(c.lookup(1, "home"))
        _ = try #require(c.lookup(6, "alice"))
        // Root acts as nobody: alice's 0700 home is closed to it.
        #expect(c.call(.opendir(flags: 0, openFlags: 0), node: 7).errno == .permissionDenied)
        #expect(c.call(.mkdir(mode: 0o755, umask: 0, name: bytes("x"))).errno == .permissionDenied)
        c.uid = 1000
        c.gid = 1000
        #expect(c.call(.opendir(flags: 0, openFlags: 0), node: 7).error == 0)
        let made = try #require(c.call(.mkdir(mode: 0o755, umask: 0, name: bytes("mine")), node: 7).entry)
        #expect(made.attr.uid == 1000)
    }

    @Test("fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range, fsync, syncfs")
    func dataOperations() throws {
        let vm = try ServedFuseVM()
        let c = vm.client
        let (a, ah) = try #require(c.create(1, "a"))
        #expect(c.call(.fallocate(FuseFallocateIn(handle: ah.handle, offset: 0, length: 8192, mode: 0)), node: a.nodeID).error == 0)
        #expect(c.call(.getattr(flags: 0, handle: 0), node: a.nodeID).attr?.attr.size == 8192)
        _ = c.write(a.nodeID, handle: ah.handle, offset: 0, bytes("abcdef"))
        #expect(c.call(.lseek(handle: ah.handle, offset: 0, whence: 3), node: a.nodeID).u64 == 0)
        let hole = try #require(c.call(.lseek(handle: ah.handle, offset: 0, whence: 4), node: a.nodeID).u64)
        #expect(hole <= 8192)
        #expect(c.call(.lseek(handle: ah.handle, offset: 0, whence: 0), node: a.nodeID).errno == .invalidArgument)
        let (b, bh) = try #require(c.create(1, "b"))
        let copied = c.call(.copyFileRange(FuseCopyFileRangeIn(handleIn: ah.handle, offsetIn: 2, nodeOut: b.nodeID, handleOut: bh.handle,
                                                                offsetOut: 0, length: 3)), node: a.nodeID)
        #expect(copied.u32 == 3)
        #expect(c.read(b.nodeID, handle: bh.handle).payload == bytes("cde"))
        #expect(c.call(.copyFileRange(FuseCopyFileRangeIn(handleIn: ah.handle, offsetIn: 0, nodeOut: b.nodeID, handleOut: bh.handle,
                                                           offsetOut: 0, length: 3, flags: 1)), node: a.nodeID).errno == .invalidArgument)
        #expect(c.call(.fsync(handle: ah.handle, flags: 1), node: a.nodeID).error == 0)
        #expect(c.call(.fsyncdir(handle: 0, flags: 0)).error == 0)
        #expect(c.call(.syncfs).error == 0)
        #expect(c.call(.flush(handle: ah.handle, lockOwner: 5), node: a.nodeID).error == 0)
    }

    @Test("unserved opcodes: ENOSYS, and none for NOTIFY_REPLY")
    func unsupported() throws {
        let vm = try ServedFuseVM()
        for opcode: UInt32 in [37, 39, 40, 48, 49, 51, 7, 1000] {
            var w = FuseWriter()
            FuseInHeader(length: 48, opcode: opcode, unique: 5, nodeID: 1).encode(into: &w)
            w.zeros(8)
            let sink = vm.client.postRaw(w.bytes)
            #expect(sink.take()?.errno == .noFunction)
        }
        var w = FuseWriter()
        FuseInHeader(length: 40, opcode: 41, unique: 5, nodeID: 1).encode(into: &w)
        let sink = vm.client.postRaw(w.bytes)
        #expect(sink.noReplyCount == 1 && sink.pending == 0)
    }
}
