import CPVFSSystem
import Glibc
import SystemPackage

/// How `copyContents` moved the bytes.
public enum CopyMethod: String, Sendable {
    case reflink
    case copyFileRange
    case readWrite
}

extension FileDescriptor {
    /// Copies all of `source` into this (empty) descriptor, keeping holes: a reflink (FICLONE) where
    /// the filesystem shares extents, otherwise copy_file_range over each data segment.
    /// Leaves this descriptor at the source's size.
    @discardableResult
    public func copyContents(from source: FileDescriptor, size: Int64, allowReflink: Bool = true) throws(Errno) -> CopyMethod {
        if allowReflink, size > 0, cpvfs_ficlone(rawValue, source.rawValue) == 0 {
            return .reflink
        }
        var method = CopyMethod.copyFileRange
        var offset: Int64 = 0
        while offset < size {
            guard let dataStart = try source.seek(dataFrom: offset), dataStart < size else { break }
            let holeStart = min(try source.seek(holeFrom: dataStart), size)
            method = try copyRange(from: source, offset: dataStart, length: holeStart - dataStart, method: method)
            offset = holeStart
        }
        try truncate(size: size)
        return method
    }

    private static let copyFileRangeUnsupported: Set<Errno> = [.improperLink, .notSupported, .invalidArgument, .noFunction]

    private func copyRange(from source: FileDescriptor, offset: Int64, length: Int64, method: CopyMethod) throws(Errno) -> CopyMethod {
        var done: Int64 = 0
        if method == .copyFileRange {
            while done < length {
                var inOff = off_t(offset + done)
                var outOff = off_t(offset + done)
                do throws(Errno) {
                    let n = try retryingSyscall {
                        cpvfs_copy_file_range(source.rawValue, &inOff, rawValue, &outOff, Int(length - done), 0)
                    }
                    if n == 0 { break }  // source shrank under us
                    done += Int64(n)
                } catch where Self.copyFileRangeUnsupported.contains(error) {
                    break  // fall back to read/write for the rest
                }
            }
            if done >= length { return .copyFileRange }
        }
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        while done < length {
            let want = Int(min(Int64(chunk), length - done))
            let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: offset + done)
            if n == 0 { break }
            try writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), at: offset + done)
            done += Int64(n)
        }
        return .readWrite
    }
}

/// fallocate(2) mode bits.
public enum FallocateMode {
    public static let keepSize = CPVFS_FALLOC_FL_KEEP_SIZE
    public static let punchHole = CPVFS_FALLOC_FL_PUNCH_HOLE
    public static let collapseRange = CPVFS_FALLOC_FL_COLLAPSE_RANGE
    public static let zeroRange = CPVFS_FALLOC_FL_ZERO_RANGE
    public static let insertRange = CPVFS_FALLOC_FL_INSERT_RANGE
    public static let unshareRange = CPVFS_FALLOC_FL_UNSHARE_RANGE
}

extension FileDescriptor {
    /// One copy_file_range(2) call from this descriptor; returns the bytes copied.
    public func copyFileRange(to destination: FileDescriptor, sourceOffset: Int64, destinationOffset: Int64, count: Int) throws(Errno) -> Int {
        var inOff = off_t(sourceOffset)
        var outOff = off_t(destinationOffset)
        return try retryingSyscall {
            cpvfs_copy_file_range(rawValue, &inOff, destination.rawValue, &outOff, count, 0)
        }
    }
}
