import Glibc
import PVFSSystem
import SystemPackage

/// The store-wide lock on blobs, `locks/blobs.lock` (docs/store-format.md, "Lock protocol").
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
    public static let blobsLockName = "blobs.lock"

    /// Takes the blobs lock shared, waiting while a deleter holds it exclusively.
    public func lockBlobsShared() throws -> LockFile {
        do {
            guard let lock = try LockFile.acquire(at: locksDirectory, Self.blobsLockName, exclusive: false, nonBlocking: false) else {
                throw PVFSError(.store, "cannot take \(path)/locks/\(Self.blobsLockName)")
            }
            return lock
        } catch let error as Errno {
            throw PVFSError(.store, "cannot take \(path)/locks/\(Self.blobsLockName): \(error)", errno: error)
        }
    }

    /// Takes the blobs lock exclusively; nil when another process holds it and `waitSeconds`
    /// passed without it being released (0 = one attempt).
    public func lockBlobsExclusive(waitSeconds: Double = 0) throws -> LockFile? {
        let deadline = monotonicNanoseconds() + UInt64(max(0, waitSeconds) * 1e9)
        var pause: UInt32 = 2_000
        while true {
            do {
                if let lock = try LockFile.acquire(at: locksDirectory, Self.blobsLockName, exclusive: true, nonBlocking: true) {
                    return lock
                }
            } catch {
                throw PVFSError(.store, "cannot take \(path)/locks/\(Self.blobsLockName): \(error)", errno: error)
            }
            if monotonicNanoseconds() >= deadline { return nil }
            usleep(pause)
            pause = min(pause * 2, 100_000)
        }
    }

    /// The lock file of a staging area (an ingest) in tmp/.
    static func ingestLockName(_ token: String) -> String { "ingest-\(token).lock" }
    static func ingestDirectoryName(_ token: String) -> String { "ingest-\(token)" }

    /// The token of an ingest lock file name, nil for other names.
    static func ingestToken(lockName: [UInt8]) -> String? {
        let prefix = Array("ingest-".utf8), suffix = Array(".lock".utf8)
        guard lockName.count > prefix.count + suffix.count, lockName.starts(with: prefix),
              Array(lockName.suffix(suffix.count)) == suffix else { return nil }
        let token = lockName[prefix.count..<(lockName.count - suffix.count)]
        guard token.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) })
        else { return nil }
        return String(decoding: token, as: UTF8.self)
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
