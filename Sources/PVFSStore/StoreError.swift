import PVFSSystem
import SystemPackage

/// The store's errors under their former name, for code written before `PVFSError`.
@available(*, deprecated, renamed: "PVFSError")
public typealias StoreError = PVFSError

extension PVFSError {
    /// A failure of the store (the former `StoreError(_:errno:)`).
    @available(*, deprecated, message: "use PVFSError(.store, message, errno:)")
    public init(_ message: String, errno: Errno = .ioError) {
        self.init(.store, message, errno: errno)
    }
}
