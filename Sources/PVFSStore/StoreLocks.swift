import Glibc
import PVFSSystem
import SystemPackage

/// The store-wide lock on blobs, `locks/blobs.lock` (`StoreLayout.blobsLock`) (docs/store-format.md, "Lock protocol").
///
/// - **Shared**: held by every process that publishes a blob or decides to reference an existing
///   one, from the moment it publishes (or looks the blob up) until the catalog transaction that
///   records the reference has committed. Many holders at once.
/// - **Exclusive**: held by whoever deletes blobs (the janitor, template removal, crash cleanup).
///   While it is held nobody is between "this blob exists" and "my reference is committed", so a
///   blob without references in the catalog can be deleted safely.
///
/// The kernel drops an flock when its holder dies, so a killed process never leaves it held.
extension Store {
    /// Takes the blobs lock shared, waiting while a deleter holds it exclusively.
    public func lockBlobsShared() throws -> LockFile {
        do {
            guard let lock = try LockFile.acquire(at: locksDirectory, StoreLayout.blobsLock, exclusive: false, nonBlocking: false) else {
                throw PVFSError(.store, "cannot take \(path)/\(StoreLayout.locks)/\(StoreLayout.blobsLock)")
            }
            return lock
        } catch let error as Errno {
            throw PVFSError(.store, "cannot take \(path)/\(StoreLayout.locks)/\(StoreLayout.blobsLock): \(error)", errno: error)
        }
    }

    /// Takes the blobs lock exclusively; nil when another process holds it and `waitSeconds`
    /// passed without it being released (0 = one attempt).
    public func lockBlobsExclusive(waitSeconds: Double = 0) throws -> LockFile? {
        let deadline = monotonicNanoseconds() + UInt64(max(0, waitSeconds) * 1e9)
        var pause: UInt32 = 2_000
        while true {
            do {
                if let lock = try LockFile.acquire(at: locksDirectory, StoreLayout.blobsLock, exclusive: true, nonBlocking: true) {
                    return lock
                }
            } catch {
                throw PVFSError(.store, "cannot take \(path)/\(StoreLayout.locks)/\(StoreLayout.blobsLock): \(error)", errno: error)
            }
            if monotonicNanoseconds() >= deadline { return nil }
            usleep(pause)
            pause = min(pause * 2, 100_000)
        }
    }
}

/// A fresh random token naming a staging area: 128 bits as hex, never reused.
func makeIngestToken() -> String {
    var generator = SystemRandomNumberGenerator()
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for _ in 0..<2 {
        let word = generator.next() as UInt64
        for shift in stride(from: 60, through: 0, by: -4) { out.append(digits[Int((word >> UInt64(shift)) & 0xf)]) }
    }
    return String(decoding: out, as: UTF8.self)
}
