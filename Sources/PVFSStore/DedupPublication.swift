import GRDB
import PVFSSystem
import SystemPackage

extension StagingArea {
    /// Stages a copy of `source` (a VM's private file that dedup found to hash to `expected`)
    /// and verifies that the bytes actually staged hash to `expected`: the source may have been
    /// written since it was hashed, and a blob's name must always be the hash of its bytes.
    ///
    /// Where the store's filesystem can share extents (FICLONE) the copy is a clone, hashed after
    /// cloning (a private snapshot); otherwise the bytes are copied and hashed in the same pass,
    /// keeping holes. Returns nil when the staged bytes are not `expected` (the file changed).
    func stageVerified(from source: FileDescriptor, size: Int64, expected: BlobHash, allowReflink: Bool,
                       buffer: StagingBuffer) throws(Errno) -> StagedBlob? {
        let name = newStagedName()
        let target = try FileDescriptor.open(at: directory, name, [.readWrite, .create, .exclusive, .noFollow], mode: 0o444)
        defer { target.closeQuietly() }
        do throws(Errno) {
            var hash: BlobHash?
            var length: Int64 = -1
            if allowReflink && tryReflink {
                do throws(Errno) {
                    try target.clone(from: source)
                    noteReflink(worked: true)
                    let cloned = try target.stat().size
                    if cloned == size {
                        (hash, length) = try Self.hash(target, size: size, sparse: true, buffer: buffer)
                    }
                } catch {
                    noteReflink(worked: false)
                    try target.truncate(size: 0)
                }
            }
            if hash == nil && length < 0 {
                let (copied, count) = try Self.copyHashing(from: source, to: target, size: size, sparse: true, buffer: buffer)
                (hash, length) = (copied, count)
            }
            guard length == size, hash == expected else {
                _ = try? directory.unlink(at: name)
                return nil
            }
            let allocated = try target.stat().blocks * 512
            return StagedBlob(file: .named(name), hash: expected, size: size, allocated: allocated)
        } catch {
            _ = try? directory.unlink(at: name)
            throw error
        }
    }
}

extension Store {
    /// Looks a blob up by hash: its id, size and allocation. The caller holds the blobs lock
    /// shared when it means to reference the blob.
    public func blobRow(hash: BlobHash) throws -> (id: Int64, size: Int64, allocated: Int64)? {
        try catalog.read { db in
            try Row.fetchOne(db, sql: "SELECT id, size, allocated FROM blob WHERE hash = ?", arguments: [hash.bytes.databaseBlob])
                .map { ($0[0], $0[1], $0[2]) }
        }
    }

    /// Whether the blob row `id` exists and names `hash` (a reference about to be committed
    /// is checked under the blobs lock, shared).
    public func blobRowMatches(id: Int64, hash: BlobHash) throws -> Bool {
        try catalog.read { db in
            try Row.fetchOne(db, sql: "SELECT hash FROM blob WHERE id = ?", arguments: [id]).map { BlobHash(bytes: $0.bytes(0)) == hash } ?? false
        }
    }
}
