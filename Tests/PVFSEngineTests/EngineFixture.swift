import Foundation
import Glibc
import PVFSSystem
import PVFSTestSupport
import SystemPackage
@testable import PVFSEngine
@testable import PVFSStore

/// A store in a fresh temporary directory holding `TemplateFixture.tiny` (written through the
/// store's API, not the ingest code, which the engine's tests must not depend on), named "tiny":
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
    private let fixture: FixtureStore
    var directory: String { fixture.directory }
    var store: Store { fixture.store }

    /// `directory`: where the store goes (its contents are removed with the fixture); a fresh
    /// temporary directory when nil.
    init(directory: String? = nil) throws {
        fixture = try FixtureStore(prefix: "pvfs-engine-test", template: TemplateFixture.tiny, directory: directory)
    }

    /// Publishes `content` as a blob no template or VM refers to, and returns its id.
    func publishBlob(_ content: String) throws -> Int64 {
        var id: Int64 = 0
        try store.publishBlobs([Array(content.utf8)]) { _, ids in id = ids[0] }
        return id
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
