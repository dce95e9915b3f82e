import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine
@testable import PVFSStore

@Suite("Dedup in the engine")
struct DedupEngineTests {
    @Test func replacedFileStaysCopyOnWrite() throws {
        let f = try EngineFixture()
        _ = try f.provision("a", quotaBytes: 1 << 20)
        let v = try f.view("a")
        let content = String(repeating: "dedup me\n", count: 1000)
        let made = try v.createFile("", "data", content)
        let blob = try f.publishBlob(content)
        let usageBefore = v.volume.usage
        #expect(try v.volume.replaceWithBlob(made.inode, blobID: blob, hash: SHA256Hasher.hash(Array(content.utf8))) == .replaced)
        #expect(v.volume.usage == usageBefore)
        #expect(try v.readText("data") == content)
        #expect(try v.resolve("data").size == Int64(content.utf8.count))
        // A write copies it up again; the blob keeps the shared content.
        try v.writeFile("data", "changed", flags: O_WRONLY)
        #expect(try v.readText("data").hasPrefix("changed"))
        let blobFD = try f.store.blobs.open(SHA256Hasher.hash(Array(content.utf8)))
        defer { blobFD.closeQuietly() }
        #expect(try blobFD.stat().size == Int64(content.utf8.count))
    }

    @Test func busyOrChangedFilesAreLeftAlone() throws {
        let f = try EngineFixture()
        _ = try f.provision("a")
        let v = try f.view("a")
        let made = try v.createFile("", "data", "one")
        let blob = try f.publishBlob("two")
        #expect(try v.volume.replaceWithBlob(made.inode, blobID: blob, hash: SHA256Hasher.hash(Array("two".utf8))) == .skippedChanged)
        let h = try v.open(made.inode, flags: O_RDWR, as: root)
        let same = try f.publishBlob("one")
        #expect(try v.volume.replaceWithBlob(made.inode, blobID: same, hash: SHA256Hasher.hash(Array("one".utf8))) == .skippedBusy)
        v.release(h)
        #expect(try v.volume.replaceWithBlob(made.inode, blobID: same, hash: SHA256Hasher.hash(Array("one".utf8))) == .replaced)
    }
}
