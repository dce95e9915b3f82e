import PVFSSystem
import SystemPackage

/// Read access to the blob area (`StoreLayout.blobPath`). Blobs are immutable once published:
/// nothing ever opens one for writing.
public struct BlobStore: Sendable {
    public let directory: FileDescriptor

    public init(directory: FileDescriptor) {
        self.directory = directory
    }

    /// Opens a blob read-only (never following a symlink).
    public func open(_ hash: BlobHash) throws(Errno) -> FileDescriptor {
        try FileDescriptor.open(at: directory, StoreLayout.blobPath(hash), [.readOnly, .noFollow])
    }

    public func exists(_ hash: BlobHash) -> Bool {
        (try? directory.stat(at: StoreLayout.blobPath(hash))) != nil
    }
}

extension Store {
    public var blobs: BlobStore { BlobStore(directory: blobsDirectory) }
}
