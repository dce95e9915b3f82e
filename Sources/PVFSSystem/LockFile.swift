import Glibc
import SystemPackage

/// An flock(2)-held lock file. The kernel drops the lock when the process dies (kill -9 included),
/// so a lock never outlives its holder.
public final class LockFile: @unchecked Sendable {
    public let descriptor: FileDescriptor

    /// Opens (creating) the lock file and takes the lock; nil when `nonBlocking` and it is held.
    public static func acquire(at directory: FileDescriptor, _ name: String, exclusive: Bool, nonBlocking: Bool) throws(Errno) -> LockFile? {
        let fd = try FileDescriptor.open(at: directory, name, [.readWrite, .create], mode: 0o600)
        do throws(Errno) {
            if try fd.lock(exclusive: exclusive, nonBlocking: nonBlocking) {
                return LockFile(descriptor: fd)
            }
            fd.closeQuietly()
            return nil
        } catch {
            fd.closeQuietly()
            throw error
        }
    }

    private init(descriptor: FileDescriptor) { self.descriptor = descriptor }

    deinit { descriptor.closeQuietly() }
}
