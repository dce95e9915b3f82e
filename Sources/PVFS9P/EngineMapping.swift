import Glibc
import PVFS9PCodec
import PVFSEngine
import PVFSSystem
import SystemPackage

// Translations between 9P2000.L's wire values and the engine's types.

extension NinePQid {
    /// The qid of a file: type bits from its kind, the engine's change counter as version
    /// (Linux compares it to notice changed files), the inode number as path.
    public init(_ attributes: Attributes) {
        self.init(type: Self.type(of: attributes.kind),
                  version: UInt32(truncatingIfNeeded: attributes.version),
                  path: attributes.inode)
    }

    public static func type(of kind: FileKind) -> UInt8 {
        switch kind {
        case .directory: NinePQidType.directory
        case .symlink: NinePQidType.symlink
        default: NinePQidType.file
        }
    }
}

extension NinePAttributes {
    /// What the engine knows about every file; btime it does not keep, so it is left out of
    /// `valid`.
    static let served: NinePAttributeMask = [.basic, .generation, .dataVersion]

    /// Rgetattr of a file. Every served field is filled whatever the request mask asks for
    /// (the protocol allows more than requested); `valid` names exactly the filled fields.
    public init(_ a: Attributes) {
        self.init(
            valid: Self.served, qid: NinePQid(a), mode: a.mode, uid: a.uid, gid: a.gid,
            linkCount: UInt64(a.linkCount), rdev: a.rdev, size: UInt64(bitPattern: a.size),
            blockSize: UInt64(a.blockSize), blocks: UInt64(bitPattern: a.blocks),
            accessTimeSeconds: UInt64(bitPattern: a.accessTime.seconds),
            accessTimeNanoseconds: UInt64(bitPattern: a.accessTime.nanoseconds),
            modificationTimeSeconds: UInt64(bitPattern: a.modificationTime.seconds),
            modificationTimeNanoseconds: UInt64(bitPattern: a.modificationTime.nanoseconds),
            changeTimeSeconds: UInt64(bitPattern: a.changeTime.seconds),
            changeTimeNanoseconds: UInt64(bitPattern: a.changeTime.nanoseconds),
            generation: a.generation, dataVersion: a.version)
    }
}

extension NinePOpenFlags {
    /// The host's open(2) flags for these P9_DOTL_* flags. O_CREAT and O_EXCL are the caller's
    /// to keep or drop; O_DIRECT, O_NOCTTY, O_ASYNC, O_CLOEXEC and O_LARGEFILE mean nothing to
    /// the engine (it reads and writes whole buffers through its own descriptors) and go.
    public var hostFlags: Int32 {
        var flags: Int32
        switch accessMode {
        case NinePOpenFlags.writeOnly: flags = O_WRONLY
        case NinePOpenFlags.readWrite: flags = O_RDWR
        case NinePOpenFlags.noAccess: flags = O_ACCMODE
        default: flags = O_RDONLY
        }
        let map: [(NinePOpenFlags, Int32)] = [
            (.create, O_CREAT), (.exclusive, O_EXCL), (.truncate, O_TRUNC), (.append, O_APPEND),
            (.nonBlocking, O_NONBLOCK), (.dataSync, O_DSYNC), (.directory, OpenFlags.directory.rawValue),
            (.noFollow, OpenFlags.noFollow.rawValue), (.noAccessTime, OpenFlags.noAccessTime.rawValue),
            (.sync, O_SYNC),
        ]
        for (dotl, host) in map where contains(dotl) { flags |= host }
        return flags
    }
}

extension FileKind {
    /// d_type for Rreaddir.
    var ninePDirentType: UInt8 { direntType }
}

/// The lock range a Tlock/Tgetlock names: length 0 runs to the end of the file.
func lockRange(type: LockType, start: UInt64, length: UInt64, processID: UInt32) throws(Errno) -> FileLockRange {
    guard start <= UInt64(Int64.max) else { throw Errno.invalidArgument }
    let end: UInt64
    if length == 0 {
        end = .max
    } else {
        let (last, overflow) = start.addingReportingOverflow(length - 1)
        guard !overflow, last <= UInt64(Int64.max) else { throw Errno.invalidArgument }
        end = last
    }
    return FileLockRange(type: type, start: start, end: end, pid: processID)
}

/// The engine's lock owner for a Tlock: POSIX locks belong to a process, and 9P names the
/// process by the client's name (its hostname) and pid.
func lockOwner(clientID: [UInt8], processID: UInt32) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in clientID {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    for k in 0..<4 {
        h ^= UInt64(UInt8(truncatingIfNeeded: processID >> (8 * UInt32(k))))
        h = h &* 0x100_0000_01b3
    }
    return h
}

/// statfs of a view as Rstatfs. Blocks are counted in fragment-size units (statvfs's f_frsize),
/// which is what Linux takes Rstatfs's bsize to be.
func ninePStatfs(_ s: ViewStatistics, vmName: String) -> NinePStatfs {
    let unit = s.fragmentSize != 0 ? s.fragmentSize : s.blockSize
    var fsid: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in vmName.utf8 {
        fsid ^= UInt64(b)
        fsid = fsid &* 0x100_0000_01b3
    }
    return NinePStatfs(
        type: NineP.filesystemMagic, blockSize: UInt32(clamping: unit), blocks: s.totalBlocks,
        freeBlocks: s.freeBlocks, availableBlocks: s.availableBlocks, files: s.totalFiles,
        freeFiles: s.freeFiles, filesystemID: fsid,
        nameLength: UInt32(clamping: min(s.maximumNameLength == 0 ? 255 : s.maximumNameLength, UInt64(FileName.maximumLength))))
}
