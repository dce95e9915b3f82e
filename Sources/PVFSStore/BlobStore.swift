import PVFSSystem
import SystemPackage

/// Paths and read access of the blob area: `blobs/<first two hex digits>/<64 hex digits>`.
/// Blobs are immutable once published: nothing ever opens one for writing.
public struct BlobStore: Sendable {
    public let directory: FileDescriptor

    public init(directory: FileDescriptor) {
        self.directory = directory
    }

    /// The blob's path relative to the blobs directory.
    public static func relativePath(_ hash: BlobHash) -> String {
        let hex = hash.hex
        return String(hex.prefix(2)) + "/" + hex
    }

    /// Opens a blob read-only (never following a symlink).
    public func open(_ hash: BlobHash) throws(Errno) -> FileDescriptor {
        try FileDescriptor.open(at: directory, Self.relativePath(hash), [.readOnly, .noFollow])
    }

    public func exists(_ hash: BlobHash) -> Bool {
        (try? directory.stat(at: Self.relativePath(hash))) != nil
    }
}

extension Store {
    public var blobs: BlobStore { BlobStore(directory: blobsDirectory) }
}
