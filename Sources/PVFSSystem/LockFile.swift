import Glibc
import SystemPackage

/// An flock(2)-held lock file. The kernel drops the lock when the process dies (kill -9 included),
/// so a lock never outlives its holder.
public final class LockFile: @unchecked Sendable {
    public let descriptor: FileDescriptor

    /// Opens (creating) the lock file and takes the lock; nil when `nonBlocking` and it is held.
    ///
    /// A lock holder may unlink its lock file when done (a reclaimed ingest's, say). Whoever
    /// opened that file just before then locks a file with no name, which protects nothing: the
    /// next one to open the name creates a new file and locks it too. So the lock counts only
    /// when the name still leads to the locked file; otherwise it is taken again on the new one.
    public static func acquire(at directory: FileDescriptor, _ name: String, exclusive: Bool, nonBlocking: Bool) throws(Errno) -> LockFile? {
        for _ in 0..<1000 {
            let fd = try FileDescriptor.open(at: directory, name, [.readWrite, .create], mode: 0o600)
            do throws(Errno) {
                guard try fd.lock(exclusive: exclusive, nonBlocking: nonBlocking) else {
                    fd.closeQuietly()
                    return nil
                }
                let locked = try fd.stat()
                if let named = try? directory.stat(at: name, followSymlinks: false),
                   named.device == locked.device && named.inode == locked.inode {
                    return LockFile(descriptor: fd)
                }
                fd.closeQuietly()
            } catch {
                fd.closeQuietly()
                throw error
            }
        }
        // The name was replaced under every attempt: someone keeps unlinking it.
        throw Errno.resourceBusy
    }

    private init(descriptor: FileDescriptor) { self.descriptor = descriptor }

    deinit { descriptor.closeQuietly() }
}
