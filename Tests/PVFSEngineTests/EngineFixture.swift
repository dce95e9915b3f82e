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
