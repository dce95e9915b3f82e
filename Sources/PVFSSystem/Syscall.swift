import CPVFSSystem
import Glibc
import SystemPackage

/// Runs a syscall that returns -1 and sets errno on failure, retrying on EINTR.
///
/// `@inline(never)` keeps ARC traffic from running between the call and the read of errno.
@inline(never)
@discardableResult
public func retryingSyscall<T: FixedWidthInteger>(_ body: () -> T) throws(Errno) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw Errno(rawValue: code)
    }
}

extension Errno {
    /// The errno a foreign error stands for when it must cross a protocol boundary.
    public static func of(_ error: any Error) -> Errno {
        if let errno = error as? Errno { return errno }
        if let convertible = error as? any ErrnoConvertible { return convertible.errno }
        return .ioError
    }
}

/// Errors that know which errno a guest should see for them.
public protocol ErrnoConvertible: Error {
    var errno: Errno { get }
}
