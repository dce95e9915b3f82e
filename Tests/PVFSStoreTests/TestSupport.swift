import Foundation
import Glibc
import GRDB
import PVFSSystem
import SystemPackage
@testable import PVFSStore

/// A fresh directory under /tmp, removed when the value goes away.
final class TemporaryDirectory {
    let path: String

    init(_ prefix: String = "pvfs-store-test") throws {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        path = String(cString: made)
    }

    deinit {
        Store.detachMounts(below: path)
        _ = try? Process.run(URL(fileURLWithPath: "/bin/rm"), arguments: ["-rf", path]).waitUntilExit()
    }

    func sub(_ name: String) -> String { path + "/" + name }
}

let isRoot = geteuid() == 0

/// Runs a program, returning its exit status.
@discardableResult
func shell(_ arguments: String...) -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    do {
        try process.run()
    } catch {
        return -1
    }
    process.waitUntilExit()
    return process.terminationStatus
}

/// Whether this process may mount filesystems (tmpfs, loop devices): root in the initial
/// namespaces with CAP_SYS_ADMIN.
let canMount: Bool = {
    guard isRoot, let dir = try? TemporaryDirectory("pvfs-mount-probe") else { return false }
    guard shell("mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", dir.path) == 0 else { return false }
    shell("umount", dir.path)
    return true
}()

extension FileDescriptor {
    static func openPath(_ path: String, _ flags: OpenFlags = [.readOnly]) throws -> FileDescriptor {
        try FileDescriptor.open(at: .currentDirectory, path, flags)
    }
}

func writeFile(_ path: String, _ bytes: [UInt8], mode: UInt32 = 0o644) throws {
    let fd = try FileDescriptor.openPath(path, [.writeOnly, .create, .truncate])
    defer { fd.closeQuietly() }
    try fd.writeAll(bytes, at: 0)
    try fd.changeMode(mode)
}

func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    var out = [UInt8](repeating: 0, count: count)
    for i in stride(from: 0, to: count, by: 8) {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        var word = state ^ (state >> 29)
        for j in 0..<min(8, count - i) {
            out[i + j] = UInt8(truncatingIfNeeded: word)
            word >>= 8
        }
    }
    return out
}

/// A POSIX access ACL as the kernel's system.posix_acl_access value (version 2): owner rwx,
/// user 1001 r-x, group r-x, mask r-x, other ---.
let sampleAccessACL: [UInt8] = {
    func entry(_ tag: UInt16, _ perm: UInt16, _ id: UInt32) -> [UInt8] {
        withUnsafeBytes(of: tag.littleEndian, Array.init) + withUnsafeBytes(of: perm.littleEndian, Array.init)
            + withUnsafeBytes(of: id.littleEndian, Array.init)
    }
    let undefined: UInt32 = 0xffff_ffff
    return withUnsafeBytes(of: UInt32(2).littleEndian, Array.init)
        + entry(0x01, 7, undefined) + entry(0x02, 5, 1001) + entry(0x04, 5, undefined) + entry(0x10, 5, undefined) + entry(0x20, 0, undefined)
}()

/// A default ACL for directories: owner rwx, group r-x, other r-x, user 1002 rwx, mask rwx.
let sampleDefaultACL: [UInt8] = {
    func entry(_ tag: UInt16, _ perm: UInt16, _ id: UInt32) -> [UInt8] {
        withUnsafeBytes(of: tag.littleEndian, Array.init) + withUnsafeBytes(of: perm.littleEndian, Array.init)
            + withUnsafeBytes(of: id.littleEndian, Array.init)
    }
    let undefined: UInt32 = 0xffff_ffff
    return withUnsafeBytes(of: UInt32(2).littleEndian, Array.init)
        + entry(0x01, 7, undefined) + entry(0x02, 7, 1002) + entry(0x04, 5, undefined) + entry(0x10, 7, undefined) + entry(0x20, 5, undefined)
}()

/// security.capability (VFS_CAP_REVISION_2) granting cap_net_bind_service (bit 10) permitted
/// and effective.
let sampleCapability: [UInt8] = {
    let magic = UInt32(0x0200_0000 | 0x0000_0001)  // revision 2, effective flag
    let permitted: UInt32 = 1 << 10
    return [magic, permitted, 0, 0, 0].flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }
}()

/// Builds a tree holding every kind of entry a root filesystem has (run as root).
///
///     bin/ping            setuid 04755, security.capability, 3 MiB random
///     bin/sh -> dash      symlink; bin/dash regular
///     dev/null, dev/loop0 char 1:3, block 7:0
///     run/fifo, run/sock  fifo, socket
///     etc/a, etc/deep/b, var/c   one file, three names (hardlinks)
///     etc/link-to-sh      a hardlink to the symlink bin/sh
///     tmp/                sticky 01777; srv/ setgid 02775 with a default ACL
///     data/acl            access ACL; data/owned 1234:5678 with user and trusted xattrs
///     data/sparse         64 MiB with data at 0 and at 32 MiB
///     data/empty          empty file; data/dup1, data/dup2 same content
///     odd/"with space", odd/<non-UTF-8>, odd/"new\nline"
///     deep/d1/.../d40/leaf
func makeEveryKindTree(at root: String) throws {
    let fm = FileManager.default
    for dir in ["bin", "dev", "run", "etc/deep", "var", "tmp", "srv", "data", "odd"] {
        try fm.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
    }
    try writeFile(root + "/bin/ping", randomBytes(3 << 20, seed: 1), mode: 0o755)
    chmod(root + "/bin/ping", 0o4755)
    try RawExtendedAttributes.set(.path(Array((root + "/bin/ping").utf8)), name: Array("security.capability".utf8), value: sampleCapability)
    try writeFile(root + "/bin/dash", randomBytes(100_000, seed: 2), mode: 0o755)
    symlink("dash", root + "/bin/sh")
    mknod(root + "/dev/null", mode_t(S_IFCHR | 0o666), dev_t(DeviceNumber.make(major: 1, minor: 3)))
    mknod(root + "/dev/loop0", mode_t(S_IFBLK | 0o660), dev_t(DeviceNumber.make(major: 7, minor: 0)))
    chown(root + "/dev/loop0", 0, 6)
    mkfifo(root + "/run/fifo", 0o620)
    mknod(root + "/run/sock", mode_t(S_IFSOCK | 0o777), 0)
    try writeFile(root + "/etc/a", Array("three names\n".utf8))
    link(root + "/etc/a", root + "/etc/deep/b")
    link(root + "/etc/a", root + "/var/c")
    // linkat without AT_SYMLINK_FOLLOW links the symlink itself.
    linkat(AT_FDCWD, root + "/bin/sh", AT_FDCWD, root + "/etc/link-to-sh", 0)
    chmod(root + "/tmp", 0o1777)
    chmod(root + "/srv", 0o2775)
    chown(root + "/srv", 0, 50)
    try RawExtendedAttributes.set(.path(Array((root + "/srv").utf8)), name: Array("system.posix_acl_default".utf8), value: sampleDefaultACL)
    try writeFile(root + "/data/acl", Array("acl\n".utf8), mode: 0o750)
    try RawExtendedAttributes.set(.path(Array((root + "/data/acl").utf8)), name: Array("system.posix_acl_access".utf8), value: sampleAccessACL)
    try writeFile(root + "/data/owned", Array("owned\n".utf8), mode: 0o640)
    chown(root + "/data/owned", 1234, 5678)
    try RawExtendedAttributes.set(.path(Array((root + "/data/owned").utf8)), name: Array("user.note".utf8), value: Array("hello\u{0}binary\u{ff}".utf8))
    try RawExtendedAttributes.set(.path(Array((root + "/data/owned").utf8)), name: Array("trusted.overlay.x".utf8), value: [0, 1, 2, 255])
    do {
        let fd = try FileDescriptor.openPath(root + "/data/sparse", [.writeOnly, .create])
        defer { fd.closeQuietly() }
        try fd.writeAll(randomBytes(8192, seed: 3), at: 0)
        try fd.writeAll(randomBytes(4096, seed: 4), at: 32 << 20)
        try fd.truncate(size: 64 << 20)
    }
    try writeFile(root + "/data/empty", [])
    try writeFile(root + "/data/dup1", Array(repeating: 7, count: 50_000))
    try writeFile(root + "/data/dup2", Array(repeating: 7, count: 50_000))
    try writeFile(root + "/odd/with space", Array("space\n".utf8))
    let oddDir = try FileDescriptor.openPath(root + "/odd", [.directory, .readOnly])
    defer { oddDir.closeQuietly() }
    let nonUTF8: [UInt8] = [0x66, 0xff, 0xfe, 0x80, 0x2e, 0x74]
    let odd = try FileDescriptor.open(at: oddDir, nonUTF8, [.writeOnly, .create], mode: 0o600)
    try odd.writeAll(Array("latin1 name\n".utf8), at: 0)
    odd.closeQuietly()
    try oddDir.symlink(at: Array("link\u{1}odd".utf8), target: [0x2e, 0x2e, 0x2f, 0xc3, 0x28])
    try writeFile(root + "/odd/new\nline", Array("nl\n".utf8))
    var deep = root + "/deep"
    for i in 1...40 { deep += "/d\(i)" }
    try fm.createDirectory(atPath: deep, withIntermediateDirectories: true)
    try writeFile(deep + "/leaf", Array("leaf\n".utf8))
    // Distinct, nanosecond-precise times everywhere (directories last).
    var counter: Int64 = 0
    func stamp(_ path: [UInt8]) {
        counter += 1
        var times = [timespec(tv_sec: 1_600_000_000 + Int(counter) * 1000, tv_nsec: Int(counter * 7919 % 1_000_000_000)),
                     timespec(tv_sec: 1_500_000_000 + Int(counter) * 1000, tv_nsec: Int(counter * 104_729 % 1_000_000_000))]
        _ = path.withCPath { utimensat(AT_FDCWD, $0, &times, AT_SYMLINK_NOFOLLOW) }
    }
    let all = try treePaths(root).sorted { $0.count > $1.count }
    for path in all { stamp(Array(root.utf8) + [UInt8(ascii: "/")] + path) }
    stamp(Array(root.utf8))
}

/// Paths below `root` (relative, as bytes), not following symlinks.
func treePaths(_ root: String) throws -> [[UInt8]] {
    var out: [[UInt8]] = []
    func walk(_ fd: FileDescriptor, _ prefix: [UInt8]) throws {
        for entry in try fd.rawDirectoryEntries() {
            let path = prefix.isEmpty ? entry.name : prefix + [UInt8(ascii: "/")] + entry.name
            out.append(path)
            if try fd.stat(at: entry.name).kind == .directory {
                let child = try FileDescriptor.open(at: fd, entry.name, [.directory, .readOnly, .noFollow, .noAccessTime])
                defer { child.closeQuietly() }
                try walk(child, path)
            }
        }
    }
    let fd = try FileDescriptor.openPath(root, [.directory, .readOnly, .noAccessTime])
    defer { fd.closeQuietly() }
    try walk(fd, [])
    return out
}

/// Everything export must reproduce about one path.
struct EntrySnapshot: Equatable, CustomStringConvertible {
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: Int64
    var atime: Timespec
    var mtime: Timespec
    var rdev: UInt64
    var symlinkTarget: [UInt8]?
    var contentHash: BlobHash?
    /// Data segments (SEEK_DATA/SEEK_HOLE) of regular files.
    var dataSegments: [Range<Int64>]?
    var xattrs: [[UInt8]: [UInt8]]
    /// The first path (in sorted order) sharing this inode: hardlink groups.
    var linkGroup: [UInt8]

    var description: String {
        "mode \(String(mode, radix: 8)) \(uid):\(gid) size \(size) atime \(atime) mtime \(mtime) rdev \(rdev) "
            + "target \(symlinkTarget.map { String(decoding: $0, as: UTF8.self) } ?? "-") hash \(contentHash?.hex.prefix(12) ?? "-") "
            + "segments \(dataSegments ?? []) xattrs \(xattrs.keys.map { String(decoding: $0, as: UTF8.self) }.sorted()) group \(String(decoding: linkGroup, as: UTF8.self))"
    }
}

/// Snapshots a tree: attributes are read before content (content is read with O_NOATIME), so
/// atimes are the tree's own.
func snapshotTree(_ root: String) throws -> [[UInt8]: EntrySnapshot] {
    let rootFD = try FileDescriptor.openPath(root, [.directory, .readOnly, .noAccessTime])
    defer { rootFD.closeQuietly() }
    var result: [[UInt8]: EntrySnapshot] = [:]
    var groups: [UInt64: [UInt8]] = [:]
    let paths = [[UInt8]()] + (try treePaths(root)).sorted { $0.lexicographicallyPrecedes($1) }
    for path in paths {
        let st = path.isEmpty ? try rootFD.stat() : try rootFD.stat(at: path)
        let kind = st.kind!
        let full = Array(root.utf8) + (path.isEmpty ? [] : [UInt8(ascii: "/")] + path)
        var snapshot = EntrySnapshot(mode: st.mode, uid: st.uid, gid: st.gid, size: kind == .directory ? 0 : st.size,
                                     atime: st.accessTime, mtime: st.modificationTime,
                                     rdev: kind == .characterDevice || kind == .blockDevice ? st.rdev : 0,
                                     symlinkTarget: nil, contentHash: nil, dataSegments: nil, xattrs: [:], linkGroup: path)
        if kind != .directory && st.linkCount > 1 {
            if let first = groups[st.inode] { snapshot.linkGroup = first } else { groups[st.inode] = path }
        }
        for x in try RawExtendedAttributes.all(.path(full)) { snapshot.xattrs[x.name] = x.value }
        switch kind {
        case .symlink:
            // readlink updates the atime (there is no O_NOATIME for it): put it back.
            snapshot.symlinkTarget = try rootFD.readLink(at: path)
            try rootFD.setTimes(at: path, access: st.accessTime, modification: st.modificationTime)
        case .regular:
            let fd = try FileDescriptor.open(at: .currentDirectory, full, [.readOnly, .noFollow, .noAccessTime])
            defer { fd.closeQuietly() }
            snapshot.contentHash = try SHA256Hasher.hash(file: fd).hash
            var segments: [Range<Int64>] = []
            var offset: Int64 = 0
            while offset < st.size, let start = try fd.seek(dataFrom: offset) {
                let end = try fd.seek(holeFrom: start)
                segments.append(start..<end)
                offset = end
            }
            snapshot.dataSegments = segments
        default:
            break
        }
        result[path] = snapshot
    }
    return result
}

extension Store {
    /// Blob files under blobs/ (hashes), for orphan checks.
    func blobFiles() throws -> Set<BlobHash> {
        var hashes = Set<BlobHash>()
        for shard in try blobsDirectory.rawDirectoryEntries() {
            let fd = try FileDescriptor.open(at: blobsDirectory, shard.name, [.directory, .readOnly, .noFollow])
            defer { fd.closeQuietly() }
            for entry in try fd.rawDirectoryEntries() {
                if let hash = BlobHash(hex: String(decoding: entry.name, as: UTF8.self)) { hashes.insert(hash) }
            }
        }
        return hashes
    }

    func blobRows() throws -> Set<BlobHash> {
        try catalog.read { db in
            Set(try Row.fetchAll(db, sql: "SELECT hash FROM blob").compactMap { BlobHash(bytes: $0.bytes(0)) })
        }
    }

    func count(_ sql: String, _ arguments: StatementArguments = []) throws -> Int {
        try catalog.read { db in try Int.fetchOne(db, sql: sql, arguments: arguments) ?? 0 }
    }

    func integrityCheck() throws -> String {
        try catalog.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") ?? "" }
    }

    /// Entries left in tmp/ (staging areas, lock files, scratch directories).
    func temporaryEntries() throws -> [String] {
        try temporaryDirectory.rawDirectoryEntries().map { String(decoding: $0.name, as: UTF8.self) }.sorted()
    }
}
