/// Where everything is in a store directory (docs/store-format.md, "Layout"). Every name of the
/// layout is spelled here and nowhere else:
///
///     catalog.db (-wal, -shm)        SQLite's files: the catalog
///     blobs/<xx>/<64 hex digits>     immutable content, named by its SHA-256; xx: its first byte
///     vms/<id>/data/<xx>/<ino>       a VM's private files; xx: the low byte of the inode number
///     vms/<id>/tmp/                  a VM's copy-up scratch files
///     vms/<id>/lock                  flock(2) held by the one process that serves the VM
///     tmp/                           staging areas (ingest-<token>/) and other scratch entries
///     locks/blobs.lock               the store-wide lock on blobs (StoreLocks.swift)
///     reserve                        space held back for catalog commits (SpaceReserve.swift)
public enum StoreLayout {
    /// The catalog database; SQLite's write-ahead log and shared-memory index sit beside it.
    public static let catalog = "catalog.db"
    /// The catalog's files: they belong to SQLite alone (see `Store`).
    public static let catalogFiles = [catalog, catalog + "-wal", catalog + "-shm"]

    /// The space reserve's file: allocated space, no content.
    public static let spaceReserve = "reserve"

    public static let blobs = "blobs"
    public static let vms = "vms"
    public static let temporary = "tmp"
    public static let locks = "locks"
    /// The directories of a store, created with it.
    public static let topLevelDirectories = [blobs, vms, temporary, locks]

    /// The blobs lock, in locks/.
    public static let blobsLock = "blobs.lock"

    /// A blob's shard directory below blobs/: the first byte of its hash in hex ("5f").
    public static func blobShard(_ hash: BlobHash) -> String { String(hash.hex.prefix(2)) }

    /// The name of shard `shard` below blobs/.
    public static func blobShard(_ shard: UInt8) -> String { hexByte(shard) }

    /// A blob's path below blobs/: "5f/5f3a…".
    public static func blobPath(_ hash: BlobHash) -> String {
        let hex = hash.hex
        return String(hex.prefix(2)) + "/" + hex
    }

    /// A VM's directory below vms/: its catalog id.
    public static func vmDirectory(_ id: Int64) -> String { String(id) }

    /// A VM's directory below the store directory, as messages name it: "vms/17".
    public static func vmPath(_ id: Int64) -> String { vms + "/" + vmDirectory(id) }

    /// The VM id a directory of vms/ stands for; nil for names that are no VM's directory.
    public static func vmID(directoryName name: String) -> Int64? {
        guard let id = Int64(name), id > 0, vmDirectory(id) == name else { return nil }
        return id
    }

    /// The staging area of an ingest (or a dedup run) below tmp/, and the lock file its owner
    /// holds beside it.
    public static func ingestDirectory(_ token: String) -> String { "ingest-\(token)" }
    public static func ingestLock(_ token: String) -> String { "ingest-\(token).lock" }

    /// The token of an ingest lock file's name, nil for other names.
    public static func ingestToken(lockName: [UInt8]) -> String? {
        let prefix = Array("ingest-".utf8), suffix = Array(".lock".utf8)
        guard lockName.count > prefix.count + suffix.count, lockName.starts(with: prefix),
              Array(lockName.suffix(suffix.count)) == suffix else { return nil }
        let token = lockName[prefix.count..<(lockName.count - suffix.count)]
        guard token.allSatisfy(isLowerHexDigit) else { return nil }
        return String(decoding: token, as: UTF8.self)
    }

    /// Where provisioning hooks see a new VM mounted, below the store directory.
    public static func scratchMountpoint(vm: String, pid: Int32) -> String { temporary + "/provision-\(vm)-\(pid)" }

    /// A VM's private file as a path below the store directory: "vms/17/data/2a/42".
    public static func privateFilePath(vm id: Int64, inode: UInt64) -> String {
        vmPath(id) + "/" + VM.data + "/" + VM.privateFile(inode)
    }

    /// Inside vms/<id>/.
    public enum VM {
        public static let data = "data"
        public static let scratch = "tmp"
        public static let lock = "lock"

        /// The shard directory of a private file below data/: the inode number's low byte in hex.
        public static func privateFileShard(_ ino: UInt64) -> String { hexByte(UInt8(truncatingIfNeeded: ino)) }

        /// A private file's path below data/: "2a/42".
        public static func privateFile(_ ino: UInt64) -> String { privateFileShard(ino) + "/" + String(ino) }

        /// The inode a path below data/ names; nil for any other name (or one in the wrong shard).
        public static func inode(privateFile path: String) -> UInt64? {
            guard let slash = path.firstIndex(of: "/"), let ino = UInt64(path[path.index(after: slash)...]),
                  privateFile(ino) == path else { return nil }
            return ino
        }

        /// A copy-up's scratch file below tmp/, unique per attempt.
        public static func copyUpScratch(_ ino: UInt64, nonce: UInt64) -> String { "copyup-\(ino)-\(nonce)" }
    }

    static func hexByte(_ byte: UInt8) -> String {
        String(decoding: [hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xf)]], as: UTF8.self)
    }

    static func isLowerHexDigit(_ c: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(c)
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)
}
