import Foundation
import GRDB
import Glibc
import PVFSSystem
import SystemPackage
@testable import PVFSEngine
@testable import PVFSStore

/// A store in a fresh temporary directory with a small template written straight into the
/// catalog (the engine's tests must not depend on the ingest code):
///
///     /                 ino 1
///     /etc              ino 2
///     /etc/hostname     ino 3  "template-host\n"
///     /etc/hard-a, /etc/hard-b   ino 4 (two links) "shared\n"
///     /bin              ino 5
///     /bin/sh -> busybox  ino 6
///     /empty            ino 7  empty regular file
///     /etc/deep/a/b     inos 8, 9 (dirs) with /etc/deep/a/b/file ino 10 "deep\n"
final class EngineFixture {
    let directory: String
    let store: Store

    /// `directory`: where the store goes (its contents are removed with the fixture); a fresh
    /// temporary directory when nil.
    init(directory given: String? = nil) throws {
        if let given {
            directory = given
        } else {
            var template = Array("/tmp/pvfs-engine-test-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
            directory = String(cString: made)
        }
        store = try Store(path: directory + "/store")
        try makeTemplate()
    }

    deinit {
        _ = try? Process.run(URL(fileURLWithPath: "/bin/rm"), arguments: ["-rf", directory]).waitUntilExit()
    }

    func publishBlob(_ content: String) throws -> Int64 {
        let bytes = Array(content.utf8)
        let hash = SHA256Hasher.hash(bytes)
        let rel = StoreLayout.blobPath(hash)
        let shard = String(rel.prefix(2))
        _ = try? store.blobsDirectory.makeDirectory(at: shard)
        let fd = try FileDescriptor.open(at: store.blobsDirectory, rel, [.writeOnly, .create, .truncate], mode: 0o444)
        try bytes.withUnsafeBytes { try fd.writeAll($0, at: 0) }
        fd.closeQuietly()
        return try store.catalog.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO blob (hash, size, allocated, created_ns) VALUES (?, ?, ?, 0)",
                           arguments: [hash.bytes.databaseBlob, bytes.count, bytes.count])
            return try Int64.fetchOne(db, sql: "SELECT id FROM blob WHERE hash = ?", arguments: [hash.bytes.databaseBlob])!
        }
    }

    private func makeTemplate() throws {
        let hostname = try publishBlob("template-host\n")
        let shared = try publishBlob("shared\n")
        let deep = try publishBlob("deep\n")
        let t: Int64 = 1_700_000_000_000_000_000
        try store.catalog.write { db in
            try db.execute(sql: "INSERT INTO template (id, name, state, created_ns, entry_count, max_inode) VALUES (1, 'tiny', 'ready', 0, 10, 10)")
            func inode(_ ino: Int, _ mode: Int, _ nlink: Int, _ size: Int, _ blob: Int64?, _ target: String? = nil, uid: Int = 0) throws {
                try db.execute(sql: """
                    INSERT INTO template_inode (template_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, rdev, blob_id, symlink_target)
                    VALUES (1, ?, ?, ?, 0, ?, ?, 8, ?, ?, ?, 0, ?, ?)
                    """, arguments: [ino, mode, uid, nlink, size, t, t, t, blob, target.map { Array($0.utf8).databaseBlob }])
            }
            func dirent(_ parent: Int, _ name: String, _ ino: Int) throws {
                try db.execute(sql: "INSERT INTO template_dirent (template_id, parent, name, ino) VALUES (1, ?, ?, ?)",
                               arguments: [parent, Array(name.utf8).databaseBlob, ino])
            }
            try inode(1, 0o040755, 4, 4096, nil)
            try inode(2, 0o040755, 3, 4096, nil)
            try inode(3, 0o100644, 1, 14, hostname)
            try inode(4, 0o100644, 2, 7, shared)
            try inode(5, 0o040755, 2, 4096, nil)
            try inode(6, 0o120777, 1, 7, nil, "busybox")
            try inode(7, 0o100600, 1, 0, nil, uid: 1000)
            try inode(8, 0o040755, 3, 4096, nil)
            try inode(9, 0o040755, 2, 4096, nil)
            try inode(10, 0o100644, 1, 5, deep)
            try dirent(1, "etc", 2)
            try dirent(2, "hostname", 3)
            try dirent(2, "hard-a", 4)
            try dirent(2, "hard-b", 4)
            try dirent(1, "bin", 5)
            try dirent(5, "sh", 6)
            try dirent(1, "empty", 7)
            try dirent(2, "deep", 8)
            try dirent(8, "a", 9)
            try dirent(9, "file", 10)
            try db.execute(sql: "INSERT INTO template_xattr (template_id, ino, name, value) VALUES (1, 3, ?, ?)",
                           arguments: [Array("user.origin".utf8).databaseBlob, Array("template".utf8).databaseBlob])
        }
    }

    func provision(_ name: String, quotaBytes: Int64? = nil, quotaInodes: Int64? = nil) throws -> VMRecord {
        try store.provisionVM(name: name, template: "tiny", quotaBytes: quotaBytes, quotaInodes: quotaInodes)
    }

    func view(_ name: String, side: ViewSide = .guest, readOnly: Bool = false) throws -> VMView {
        let volume = try Volume.open(store: store, vmName: name)
        return VMView(volume: volume, policy: SessionPolicy(side: side, readOnly: readOnly), sessionID: 1)
    }
}

let root = Credentials.root
let user = Credentials(uid: 1000, gid: 1000)

extension VMView {
    /// Resolves a slash-separated path from the root, as a client would by repeated lookups.
    func resolve(_ path: String, as credentials: Credentials = .root) throws -> Attributes {
        var attributes = try getAttributes(rootInode)
        for component in path.split(separator: "/") {
            attributes = try lookup(attributes.inode, Array(component.utf8), as: credentials)
        }
        return attributes
    }

    func readAll(_ path: String) throws -> String {
        let ino = try resolve(path).inode
        let handle = try open(ino, flags: O_RDONLY, as: .root)
        defer { release(handle) }
        return String(decoding: try read(handle, offset: 0, count: 1 << 20), as: UTF8.self)
    }

    func writeFile(_ path: String, _ content: String, flags: Int32 = O_WRONLY | O_TRUNC, as credentials: Credentials = .root) throws {
        let ino = try resolve(path).inode
        let handle = try open(ino, flags: flags, as: credentials)
        defer { release(handle) }
        _ = try write(handle, offset: 0, bytes: Array(content.utf8), as: credentials)
    }

    func createFile(_ parent: String, _ name: String, _ content: String, as credentials: Credentials = .root) throws -> Attributes {
        let dir = try resolve(parent).inode
        let (attributes, handle) = try create(dir, Array(name.utf8), mode: 0o644, flags: O_RDWR, as: credentials)
        defer { release(handle) }
        _ = try write(handle, offset: 0, bytes: Array(content.utf8), as: credentials)
        return attributes
    }

    func names(_ path: String) throws -> [String] {
        let ino = try resolve(path).inode
        return try readDirectory(ino, after: 0, as: .root).map { String(decoding: $0.name, as: UTF8.self) }
            .filter { $0 != "." && $0 != ".." }.sorted()
    }
}
