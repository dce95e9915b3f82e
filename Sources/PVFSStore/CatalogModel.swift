import PVFSSystem
import SystemPackage

// The catalog's model of a tree, in the terms the engine works in: the store builds these from
// its rows (a template's image, a VM's overlay) and writes the engine's changes back.

/// A directory entry name: 1...255 bytes, no "/" and no NUL, neither "." nor "..".
/// Names are bytes, not text: a guest may use any encoding.
public struct FileName: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let bytes: [UInt8]

    public static let maximumLength = 255

    /// Validates a name coming from a client. Throws EINVAL for "/" or NUL, ENAMETOOLONG past 255
    /// bytes, ENOENT for an empty name; "." and ".." are refused with EINVAL (callers that accept
    /// them as lookups handle them first).
    public init(validating bytes: some Collection<UInt8>) throws(Errno) {
        guard !bytes.isEmpty else { throw Errno.noSuchFileOrDirectory }
        guard bytes.count <= Self.maximumLength else { throw Errno.fileNameTooLong }
        for b in bytes where b == UInt8(ascii: "/") || b == 0 { throw Errno.invalidArgument }
        let array = Array(bytes)
        if array == [UInt8(ascii: ".")] || array == [UInt8(ascii: "."), UInt8(ascii: ".")] {
            throw Errno.invalidArgument
        }
        self.bytes = array
    }

    public init(validating string: String) throws(Errno) {
        try self.init(validating: Array(string.utf8))
    }

    /// For names already known valid (the catalog's).
    public init(trusted bytes: [UInt8]) { self.bytes = bytes }

    public init(stringLiteral value: String) { self.bytes = Array(value.utf8) }

    public var string: String { String(decoding: bytes, as: UTF8.self) }
    public var description: String { string }

    public static func isDot(_ bytes: some Collection<UInt8>) -> Bool { bytes.count == 1 && bytes.first == UInt8(ascii: ".") }
    public static func isDotDot(_ bytes: some Collection<UInt8>) -> Bool { Array(bytes) == [UInt8(ascii: "."), UInt8(ascii: ".")] }
}

/// Where a regular file's bytes live.
public enum DataLocation: Sendable, Equatable {
    /// No data: directories, symlinks, devices, fifos, sockets, and empty template files.
    case none
    /// A shared, immutable blob; the first write copies it into the VM's private area.
    case blob(id: Int64)
    /// The VM's own file at vms/<vm>/data/<xx>/<ino> (`VMArea`).
    case privateFile

    /// The `data` column of `vm_inode`.
    var catalogCode: Int64 {
        switch self {
        case .none: 0
        case .blob: 1
        case .privateFile: 2
        }
    }

    public var blobID: Int64? {
        if case .blob(let id) = self { return id }
        return nil
    }
}

/// The metadata of one inode (template or VM-owned), as the catalog stores it.
public struct InodeRecord: Sendable, Equatable {
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var linkCount: UInt32
    /// For private files, the size at the last metadata commit; the host file is authoritative.
    public var size: Int64
    public var blocks: Int64
    public var accessTime: Timespec
    public var modificationTime: Timespec
    public var changeTime: Timespec
    public var rdev: UInt64
    /// The directory holding this one (directories only; the root is its own parent).
    public var parent: UInt64
    public var data: DataLocation
    public var symlinkTarget: [UInt8]?
    /// The VM replaced this inode's xattr set (it lives in the overlay, not the template).
    public var privateXattrs: Bool
    /// Bumped by the engine on every change (9P reports it as qid.version); stored with the
    /// record (`vm_inode.version`), so a client comparing versions across a restart of the
    /// server sees the same value for the same content. Template records keep 0.
    public var version: UInt64 = 0

    public init(mode: UInt32, uid: UInt32, gid: UInt32, linkCount: UInt32, size: Int64, blocks: Int64,
                accessTime: Timespec, modificationTime: Timespec, changeTime: Timespec, rdev: UInt64,
                parent: UInt64, data: DataLocation, symlinkTarget: [UInt8]?, privateXattrs: Bool, version: UInt64 = 0) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.linkCount = linkCount
        self.size = size
        self.blocks = blocks
        self.accessTime = accessTime
        self.modificationTime = modificationTime
        self.changeTime = changeTime
        self.rdev = rdev
        self.parent = parent
        self.data = data
        self.symlinkTarget = symlinkTarget
        self.privateXattrs = privateXattrs
        self.version = version
    }

    public var kind: FileKind { FileKind(mode: mode) ?? .regular }
    public var isDirectory: Bool { mode & fileTypeMask == FileKind.directory.modeBits }
    public var permissions: UInt32 { mode & permissionBitsMask }
}

/// One change to a VM's overlay, as committed to the catalog. An operation commits its changes
/// in one transaction, so after a crash each operation is either wholly there or not at all.
public enum OverlayChange: Sendable {
    case putInode(UInt64, InodeRecord)
    /// Removes the inode and its private xattrs.
    case deleteInode(UInt64)
    /// Sets a name in a directory; inode 0 is a whiteout hiding a template entry.
    case putEntry(parent: UInt64, name: FileName, inode: UInt64)
    case deleteEntry(parent: UInt64, name: FileName)
    /// Removes every entry (whiteouts) of a directory that is going away.
    case deleteAllEntries(parent: UInt64)
    case replaceXattrs(UInt64, [[UInt8]: [UInt8]])
    /// Raises the VM's inode reservation (`vm.next_inode`) to at least this number.
    case nextInode(UInt64)
    /// Raises the VM's qid-version reservation (`vm.version_counter`) to at least this value.
    case versionCounter(UInt64)
}

/// The changes one transaction commits, in order.
public typealias OverlayBatch = [OverlayChange]

/// A VM's own layer: inodes it created or changed and directory entries over the template's.
public struct OverlayRecords: Sendable {
    public var inodes: [UInt64: InodeRecord] = [:]
    /// Entries per directory; 0 marks a whiteout.
    public var entries: [UInt64: [FileName: UInt64]] = [:]
    public var xattrs: [UInt64: [[UInt8]: [UInt8]]] = [:]
    /// The next inode number to give out: above every number the overlay uses and its
    /// reservation in the catalog.
    public var nextInode: UInt64 = 0
    /// `vm.version_counter`: exact after a clean close, else a reservation above the versions
    /// handed out before the last commit (the engine starts above it and every record's version).
    public var versionCounter: UInt64 = 0

    public init() {}

    public mutating func apply(_ change: OverlayChange) {
        switch change {
        case .putInode(let ino, let record):
            inodes[ino] = record
        case .deleteInode(let ino):
            inodes[ino] = nil
            xattrs[ino] = nil
        case .putEntry(let parent, let name, let ino):
            entries[parent, default: [:]][name] = ino
        case .deleteEntry(let parent, let name):
            entries[parent]?[name] = nil
            if entries[parent]?.isEmpty == true { entries[parent] = nil }
        case .deleteAllEntries(let parent):
            entries[parent] = nil
        case .replaceXattrs(let ino, let set):
            xattrs[ino] = set
        case .nextInode:
            // The catalog's reservation, a high-water mark for after a restart; the allocation
            // cursor in memory moves one inode at a time (the engine's allocateInode).
            break
        case .versionCounter(let counter):
            versionCounter = max(versionCounter, counter)
        }
    }
}

/// What identifies a template's tree for as long as it exists: its id and its creation time.
/// A ready template's tree never changes, and a template's id may be given again to a template
/// created after it was removed, so the id alone names no tree.
public struct TemplateIdentity: Hashable, Sendable, CustomStringConvertible {
    public var id: Int64
    public var createdNanoseconds: Int64

    public init(id: Int64, createdNanoseconds: Int64) {
        self.id = id
        self.createdNanoseconds = createdNanoseconds
    }

    public var description: String { "template \(id) (created \(createdNanoseconds))" }
}

/// A ready template's tree as the catalog holds it: records indexed by inode number (root = 1),
/// each directory's entries (every directory has one, maybe empty), xattrs, and the hashes of
/// the blobs its files reference (by blob id).
public struct TemplateImageSource: Sendable {
    public var identity: TemplateIdentity
    public var templateID: Int64 { identity.id }
    public var maximumInode: UInt64
    /// Indexed by inode number; nil where the number is unused.
    public var inodes: [InodeRecord?]
    public var directories: [UInt64: [FileName: UInt64]]
    public var xattrs: [UInt64: [[UInt8]: [UInt8]]]
    public var blobHashes: [Int64: BlobHash]
}

/// Usage as bytes and inodes (docs/quotas.md).
public struct VMUsage: Codable, Sendable, Equatable {
    public var bytes: Int64
    public var inodes: Int64

    public init(bytes: Int64, inodes: Int64) {
        self.bytes = bytes
        self.inodes = inodes
    }
}

/// A VM's quota as set-quota records it; nil is no limit (docs/quotas.md).
public struct VMQuota: Sendable, Equatable {
    public var bytes: Int64?
    public var inodes: Int64?

    public init(bytes: Int64?, inodes: Int64?) {
        self.bytes = bytes
        self.inodes = inodes
    }
}
