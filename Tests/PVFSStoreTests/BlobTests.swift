import Foundation
import Glibc
import GRDB
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSStore

@Suite struct BlobHashTests {
    @Test func knownVectors() {
        #expect(SHA256Hasher.hash([]).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256Hasher.hash(Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let million = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        #expect(SHA256Hasher.hash(million).hex == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func hexRoundTripAndOrdering() throws {
        let hash = SHA256Hasher.hash(Array("pvfs".utf8))
        #expect(BlobHash(hex: hash.hex) == hash)
        #expect(BlobHash(bytes: hash.bytes) == hash)
        #expect(BlobHash(hex: "zz") == nil)
        #expect(BlobHash(hex: String(repeating: "g", count: 64)) == nil)
        #expect(BlobHash(hex: hash.hex.uppercased()) == nil)  // names are lower case
        #expect(StoreLayout.blobPath(hash) == String(hash.hex.prefix(2)) + "/" + hash.hex)
        let other = SHA256Hasher.hash(Array("pvfs2".utf8))
        #expect((hash < other) == (hash.hex < other.hex))
    }

    @Test func fileHashMatchesMemoryHash() throws {
        let dir = try TemporaryDirectory()
        let bytes = randomBytes(3 * 1024 * 1024 + 17, seed: 9)
        try writeFile(dir.sub("f"), bytes)
        let fd = try FileDescriptor.openPath(dir.sub("f"))
        defer { fd.closeQuietly() }
        let (hash, size) = try SHA256Hasher.hash(file: fd, bufferSize: 64 * 1024)
        #expect(size == Int64(bytes.count))
        #expect(hash == SHA256Hasher.hash(bytes))
    }

    @Test func zeroFeedEqualsZeroBytes() {
        var hasher = SHA256Hasher()
        hasher.updateZeros(count: 3 * 1024 * 1024 + 5)
        #expect(hasher.finalize() == SHA256Hasher.hash([UInt8](repeating: 0, count: 3 * 1024 * 1024 + 5)))
    }
}

@Suite struct StagingTests {
    @Test func sparseCopyKeepsHolesAndHashesLogicalContent() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        let source = try FileDescriptor.openPath(dir.sub("sparse"), [.readWrite, .create])
        defer { source.closeQuietly() }
        let head = randomBytes(10_000, seed: 5), tail = randomBytes(5000, seed: 6)
        try source.writeAll(head, at: 0)
        try source.writeAll(tail, at: 20 << 20)
        try source.truncate(size: 40 << 20)
        var logical = [UInt8](repeating: 0, count: 40 << 20)
        logical.replaceSubrange(0..<head.count, with: head)
        logical.replaceSubrange((20 << 20)..<((20 << 20) + tail.count), with: tail)

        let area = try StagingArea(store: store)
        defer { area.dispose() }
        let staged = try #require(try area.stage(from: source, size: 40 << 20, mayBeSparse: true, buffer: StagingBuffer(), claim: { _ in false }))
        #expect(staged.0.hash == SHA256Hasher.hash(logical))
        #expect(staged.0.size == 40 << 20)
        #expect(staged.0.allocated < 1 << 20, "holes were filled: \(staged.0.allocated) bytes allocated")
        let copy: FileDescriptor
        switch staged.0.file {
        case .anonymous(let fd): copy = fd
        case .named(let name): copy = try FileDescriptor.open(at: area.directory, name, [.readOnly])
        case nil: Issue.record("nothing staged"); return
        }
        defer { copy.closeQuietly() }
        #expect(try copy.stat().size == 40 << 20)
        #expect(try copy.stat().permissions == 0o444)
    }

    @Test func sourceOfOtherSizeIsRefused() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        try writeFile(dir.sub("f"), randomBytes(1000, seed: 1))
        let source = try FileDescriptor.openPath(dir.sub("f"))
        defer { source.closeQuietly() }
        let area = try StagingArea(store: store)
        defer { area.dispose() }
        // The scan said 1001 bytes (the file shrank): refused, nothing left staged. A file that
        // grew is refused where it is read in more than one pass; a small file read in one
        // pass is caught by the caller's fstat afterwards (TemplateIngestTests).
        #expect(try area.stage(from: source, size: 1001, mayBeSparse: false, buffer: StagingBuffer(), claim: { _ in false }) == nil)
        #expect(try area.stage(from: source, size: 1001, mayBeSparse: true, buffer: StagingBuffer(), claim: { _ in false }) == nil)
        #expect(try area.stage(from: source, size: 999, mayBeSparse: true, buffer: StagingBuffer(), claim: { _ in false }) == nil)
        #expect(try area.stage(from: source, size: 999, mayBeSparse: false, buffer: StagingBuffer(size: 512), claim: { _ in false }) == nil)
        #expect(try area.directory.rawDirectoryEntries().map(\.name) == [Array("journal".utf8)])
    }
}

@Suite struct BlobPublicationTests {
    /// Publishes contents and references them from a throwaway template so they stay alive.
    func publish(_ store: Store, _ contents: [[UInt8]], template: String) throws -> ([Int64], PublicationStatistics) {
        var ids: [Int64] = []
        let stats = try store.publishBlobs(contents) { db, blobIDs in
            try db.execute(sql: "INSERT INTO template (name, state, created_ns) VALUES (?, 'ready', 0)", arguments: [template])
            let templateID = db.lastInsertedRowID
            for (i, id) in blobIDs.enumerated() {
                try db.execute(sql: """
                    INSERT INTO template_inode (template_id, ino, mode, uid, gid, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns, blob_id)
                    VALUES (?, ?, ?, 0, 0, 1, 1, 0, 0, 0, 0, ?)
                    """, arguments: [templateID, i + 1, 0o100644, id])
            }
            ids = blobIDs
        }
        return (ids, stats)
    }

    @Test func publishStoresImmutableNamedBlobs() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        let content = Array("hello blob\n".utf8)
        let (ids, stats) = try publish(store, [content], template: "a")
        #expect(stats.newBlobs == 1 && stats.newBytes == Int64(content.count) && stats.reused == 0)
        let hash = SHA256Hasher.hash(content)
        let st = try store.blobsDirectory.stat(at: StoreLayout.blobPath(hash))
        #expect(st.permissions == 0o444)
        #expect(st.size == Int64(content.count))
        let fd = try store.blobs.open(hash)
        defer { fd.closeQuietly() }
        #expect(try SHA256Hasher.hash(file: fd).hash == hash)
        let row = try store.catalog.read { db in try Row.fetchOne(db, sql: "SELECT id, size, allocated FROM blob WHERE hash = ?", arguments: [hash.bytes.databaseBlob]) }
        #expect(row?[0] == ids[0])
        #expect(row?[1] == Int64(content.count))
        #expect((row?[2] as Int64?) ?? -1 >= 0)
        // Nothing left in tmp/: the staging area and its lock are gone.
        #expect(try store.temporaryEntries() == [])
    }

    @Test func samContentIsStoredOnce() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        let a = randomBytes(70_000, seed: 1), b = randomBytes(1234, seed: 2)
        let (first, s1) = try publish(store, [a, b, a], template: "one")
        #expect(s1.newBlobs == 2 && s1.reused == 1)
        #expect(first[0] == first[2])
        let (second, s2) = try publish(store, [b, a], template: "two")
        #expect(s2.newBlobs == 0 && s2.reused == 2)
        #expect(second == [first[1], first[0]])
        #expect(try store.blobFiles() == [SHA256Hasher.hash(a), SHA256Hasher.hash(b)])
        #expect(try store.count("SELECT COUNT(*) FROM blob") == 2)
    }

    @Test func orphanBlobFileIsAdopted() throws {
        let dir = try TemporaryDirectory()
        let store = try Store(path: dir.sub("store"))
        let content = Array("left behind by a killed ingest".utf8)
        let hash = SHA256Hasher.hash(content)
        // A complete blob file without a catalog row, as a crash between rename and commit leaves.
        try? store.blobsDirectory.makeDirectory(at: String(hash.hex.prefix(2)))
        let fd = try FileDescriptor.open(at: store.blobsDirectory, StoreLayout.blobPath(hash), [.writeOnly, .create], mode: 0o444)
        try fd.writeAll(content, at: 0)
        fd.closeQuietly()
        let (ids, stats) = try publish(store, [content], template: "t")
        #expect(stats.newBlobs == 0 && stats.reused == 1)
        #expect(try store.blobRows() == [hash])
        #expect(ids.count == 1)
    }
}
