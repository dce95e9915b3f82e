import Foundation
import Glibc
import SystemPackage
import Testing
@testable import PVFSSystem
import PVFSTestSupport

@Suite("lock files") struct LockFileTests {
    func scratch() throws -> (String, FileDescriptor) {
        var template = Array("/tmp/pvfs-lock-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        let path = String(cString: made)
        return (path, try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly]))
    }

    /// A holder that unlinks its lock file as it lets go (as a reclaimed ingest's is) must not
    /// leave a waiter holding a lock on the nameless file: the next one to come would create
    /// the name again and lock it too, and two would think they hold the lock.
    @Test func aLockWhoseFileWasUnlinkedIsTakenAgainOnTheNewFile() throws {
        let (path, directory) = try scratch()
        defer {
            directory.closeQuietly()
            try? FileManager.default.removeItem(atPath: path)
        }
        var first: LockFile? = try #require(try LockFile.acquire(at: directory, "x.lock", exclusive: true, nonBlocking: true))
        let waiterHolds = DispatchSemaphore(value: 0)
        let waiter = Locked<LockFile?>(nil)
        Thread {
            let lock = try? LockFile.acquire(at: directory, "x.lock", exclusive: true, nonBlocking: false)
            waiter.withLock { $0 = lock }
            waiterHolds.signal()
        }.start()
        usleep(200_000)  // the waiter has opened the file and waits in flock
        try directory.unlink(at: "x.lock")
        first = nil
        #expect(first == nil)
        #expect(waiterHolds.wait(timeout: .now() + 10) == .success)
        let held = try #require(waiter.withLock { $0 })
        let named = try directory.stat(at: "x.lock")
        let locked = try held.descriptor.stat()
        #expect(named.inode == locked.inode, "the waiter holds a lock on a file that has no name")
        // And the name is really held: nobody else gets it.
        #expect(try LockFile.acquire(at: directory, "x.lock", exclusive: true, nonBlocking: true) == nil)
        withExtendedLifetime(held) {}
    }

    @Test func aHeldLockIsRefusedWithoutWaitingAndFreedWithItsHolder() throws {
        let (path, directory) = try scratch()
        defer {
            directory.closeQuietly()
            try? FileManager.default.removeItem(atPath: path)
        }
        var held: LockFile? = try #require(try LockFile.acquire(at: directory, "y.lock", exclusive: true, nonBlocking: true))
        #expect(try LockFile.acquire(at: directory, "y.lock", exclusive: true, nonBlocking: true) == nil)
        #expect(try LockFile.acquire(at: directory, "y.lock", exclusive: false, nonBlocking: true) == nil)
        held = nil
        #expect(held == nil)
        #expect(try LockFile.acquire(at: directory, "y.lock", exclusive: true, nonBlocking: true) != nil)
    }
}
