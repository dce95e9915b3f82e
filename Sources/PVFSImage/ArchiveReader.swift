import CArchive
import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

/// Where an archive reader gets its bytes: a source read front to back.
protocol ByteInput: AnyObject {
    /// The next bytes, empty at the end. They stay valid until the next call.
    func nextChunk() throws -> UnsafeRawBufferPointer
}

/// Compressions a layer may use, told apart by their first bytes.
enum Compression: String, Sendable {
    case none
    case gzip
    case zstd
    case xz
    case bzip2

    /// The compression whose magic number `prefix` starts with; `.none` for anything else.
    static func detect(_ prefix: [UInt8]) -> Compression {
        if prefix.starts(with: [0x1f, 0x8b]) { return .gzip }
        if prefix.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) { return .zstd }
        if prefix.starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) { return .xz }
        if prefix.starts(with: Array("BZh".utf8)) { return .bzip2 }
        return .none
    }
}

/// One entry's header, as a layer describes it.
struct ArchiveHeader {
    enum Kind: Equatable {
        case regular
        case directory
        case symlink
        case hardlink
        case characterDevice
        case blockDevice
        case fifo
        case socket
    }

    var path: [UInt8]
    var kind: Kind
    /// Permission bits with setuid, setgid and sticky (07777).
    var permissions: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: Int64
    var atime: Int64
    var mtime: Int64
    var ctime: Int64
    var rdev: UInt64
    /// The target of a symlink, or the path a hard link names.
    var linkTarget: [UInt8]?
    var xattrs: [TreeExtendedAttribute]
    /// Stored with holes (pax or GNU sparse): its data blocks skip them.
    var sparse: Bool
}

/// A libarchive read handle over a `ByteInput`: either a tar reader (no compression: a layer is
/// decompressed by a reader of its own) or a raw reader that decompresses one stream.
final class ArchiveReader {
    enum Format {
        case tar
        /// One entry, the whole decompressed stream.
        case raw(Compression)
    }

    private let handle: OpaquePointer
    private let input: ByteInput
    /// An error the input threw inside libarchive's read callback; reported instead of
    /// libarchive's own message.
    fileprivate var inputError: (any Error)?
    private var entry: OpaquePointer?

    init(input: ByteInput, format: Format) throws {
        guard let handle = archive_read_new() else { throw ImageError("cannot create an archive reader (out of memory)") }
        self.handle = handle
        self.input = input
        switch format {
        case .tar:
            archive_read_support_format_tar(handle)
        case .raw(let compression):
            archive_read_support_format_raw(handle)
            switch compression {
            case .none: break
            case .gzip: archive_read_support_filter_gzip(handle)
            case .zstd: archive_read_support_filter_zstd(handle)
            case .xz: archive_read_support_filter_xz(handle)
            case .bzip2: archive_read_support_filter_bzip2(handle)
            }
        }
        let context = Unmanaged.passUnretained(self).toOpaque()
        let status = archive_read_open(handle, context, nil, { _, context, buffer in
            let reader = Unmanaged<ArchiveReader>.fromOpaque(context!).takeUnretainedValue()
            do {
                let chunk = try reader.input.nextChunk()
                buffer?.pointee = chunk.baseAddress.map { UnsafeRawPointer($0) }
                return chunk.count
            } catch {
                reader.inputError = error
                return -1
            }
        }, nil)
        // On a throw from here on, deinit frees the handle.
        if status != ARCHIVE_OK { throw failure("cannot read", status: status) }
        if case .raw(let compression) = format, compression != .none {
            // The stream must be in the compression its magic number announced.
            if archive_filter_count(handle) < 2 {
                throw ImageError("the data is not \(compression.rawValue)-compressed (filters: \(archive_filter_count(handle)))")
            }
        }
    }

    deinit {
        archive_read_free(handle)
    }

    /// The error of the last failed call: the input's, or libarchive's message.
    private func failure(_ doing: String, status: Int32) -> any Error {
        if let inputError { return inputError }
        let message = archive_error_string(handle).map { String(cString: $0) } ?? "error \(status)"
        return ImageError("\(doing): \(message)")
    }

    /// The next entry's header, nil at the end of the archive.
    func nextHeader() throws -> ArchiveHeader? {
        var entry: OpaquePointer?
        let status = archive_read_next_header(handle, &entry)
        if status == ARCHIVE_EOF { return nil }
        // A warning (a name that does not convert to the locale's charset) keeps the raw bytes.
        guard status == ARCHIVE_OK || status == ARCHIVE_WARN, let entry else { throw failure("cannot read an entry header", status: status) }
        self.entry = entry
        return try Self.header(of: entry)
    }

    /// Where the current entry's header starts in the (decompressed) archive.
    var headerPosition: Int64 { archive_read_header_position(handle) }

    /// Reads the current entry's data into `buffer`; 0 at its end.
    func readData(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = archive_read_data(handle, buffer.baseAddress, buffer.count)
        if n < 0 { throw failure("cannot read data", status: Int32(truncatingIfNeeded: n)) }
        return n
    }

    /// The current entry's next block of data and its offset in the file (gaps are holes); nil
    /// at its end.
    func nextBlock() throws -> (bytes: UnsafeRawBufferPointer, offset: Int64)? {
        var pointer: UnsafeRawPointer?
        var size = 0
        var offset: la_int64_t = 0
        let status = archive_read_data_block(handle, &pointer, &size, &offset)
        if status == ARCHIVE_EOF { return nil }
        guard status == ARCHIVE_OK || status == ARCHIVE_WARN else { throw failure("cannot read data", status: status) }
        return (UnsafeRawBufferPointer(start: pointer, count: pointer == nil ? 0 : size), offset)
    }

    static let maximumPathLength = 4096
    static let maximumXattrValue = 65536

    private static func bytes(_ pointer: UnsafePointer<CChar>?) -> [UInt8]? {
        guard let pointer else { return nil }
        return Array(UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)))
    }

    /// Nanoseconds since the epoch, saturated at the ends of Int64.
    private static func nanoseconds(_ seconds: time_t, _ nanoseconds: Int) -> Int64 {
        let (scaled, overflow) = Int64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflow2) = scaled.addingReportingOverflow(Int64(nanoseconds))
        return overflow2 ? .max : sum
    }

    private static func header(of entry: OpaquePointer) throws -> ArchiveHeader {
        // A name libarchive could not convert to the locale's charset is read in its UTF-8
        // form; an entry without any name is refused rather than taken for the root.
        guard let path = bytes(archive_entry_pathname(entry)) ?? bytes(archive_entry_pathname_utf8(entry)) else {
            throw ImageError("an entry has no readable name", errno: .invalidArgument)
        }
        func bad(_ message: String) -> ImageError {
            ImageError("entry \(displayBytes(path)): \(message)", errno: .invalidArgument)
        }
        guard path.count <= maximumPathLength else { throw bad("path longer than \(maximumPathLength) bytes") }
        let kind: ArchiveHeader.Kind
        var linkTarget: [UInt8]?
        if let hardlink = bytes(archive_entry_hardlink(entry)) {
            kind = .hardlink
            linkTarget = hardlink
        } else {
            switch archive_entry_filetype(entry) & 0o170000 {
            case 0o100000: kind = .regular
            case 0o040000: kind = .directory
            case 0o120000:
                kind = .symlink
                linkTarget = bytes(archive_entry_symlink(entry)) ?? []
            case 0o020000: kind = .characterDevice
            case 0o060000: kind = .blockDevice
            case 0o010000: kind = .fifo
            case 0o140000: kind = .socket
            default: throw bad("unsupported entry type (mode \(String(archive_entry_filetype(entry), radix: 8)))")
            }
        }
        if let linkTarget, linkTarget.count > maximumPathLength { throw bad("link target longer than \(maximumPathLength) bytes") }
        let uid = archive_entry_uid(entry), gid = archive_entry_gid(entry)
        guard uid >= 0, uid <= Int64(UInt32.max), gid >= 0, gid <= Int64(UInt32.max) else { throw bad("owner \(uid):\(gid) out of range") }
        let size = archive_entry_size_is_set(entry) != 0 ? archive_entry_size(entry) : 0
        guard size >= 0 else { throw bad("negative size") }
        let mtime = nanoseconds(archive_entry_mtime(entry), archive_entry_mtime_nsec(entry))
        let atime = archive_entry_atime_is_set(entry) != 0 ? nanoseconds(archive_entry_atime(entry), archive_entry_atime_nsec(entry)) : mtime
        let ctime = archive_entry_ctime_is_set(entry) != 0 ? nanoseconds(archive_entry_ctime(entry), archive_entry_ctime_nsec(entry)) : mtime
        var xattrs: [TreeExtendedAttribute] = []
        if archive_entry_xattr_reset(entry) > 0 {
            var name: UnsafePointer<CChar>?
            var value: UnsafeRawPointer?
            var length = 0
            var listedBytes = 0
            while archive_entry_xattr_next(entry, &name, &value, &length) == ARCHIVE_OK {
                guard let nameBytes = bytes(name), !nameBytes.isEmpty, nameBytes.count <= 255 else { throw bad("extended attribute with an invalid name") }
                guard length <= maximumXattrValue else { throw bad("extended attribute \(displayBytes(nameBytes)) larger than 64 KiB") }
                // Linux lists at most 64 KiB of names per file (XATTR_LIST_MAX).
                listedBytes += nameBytes.count + 1
                guard listedBytes <= maximumXattrValue else { throw bad("more extended attributes than a file can have (64 KiB of names)") }
                let valueBytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
                if let index = xattrs.firstIndex(where: { $0.name == nameBytes }) {
                    xattrs[index].value = valueBytes
                } else {
                    xattrs.append(TreeExtendedAttribute(name: nameBytes, value: valueBytes))
                }
            }
        }
        let isDevice = kind == .characterDevice || kind == .blockDevice
        return ArchiveHeader(path: path, kind: kind, permissions: UInt32(archive_entry_perm(entry) & 0o7777), uid: UInt32(uid),
                             gid: UInt32(gid), size: kind == .regular || kind == .hardlink ? size : 0, atime: atime, mtime: mtime,
                             ctime: ctime, rdev: isDevice ? UInt64(archive_entry_rdev(entry)) : 0, linkTarget: linkTarget, xattrs: xattrs,
                             sparse: archive_entry_sparse_count(entry) > 0)
    }
}

/// The current entry's data of a tar reader as content blocks for the store.
struct EntryBlocks: ContentBlocks {
    let reader: ArchiveReader

    mutating func next() throws -> (bytes: UnsafeRawBufferPointer, offset: Int64)? {
        while let block = try reader.nextBlock() {
            if block.bytes.count > 0 { return block }
        }
        return nil
    }
}

/// A byte range of an open file read front to back with pread, hashing what it hands out.
final class FileRegion: ByteInput {
    let fd: FileDescriptor
    let start: Int64
    let length: Int64
    /// What the region is, for messages.
    let name: String
    /// Whether the region closes `fd` when it goes.
    let ownsDescriptor: Bool
    private(set) var position: Int64 = 0
    private var hasher: SHA256Hasher? = SHA256Hasher()
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    /// Called with the bytes of each chunk handed out.
    var progress: ((Int) -> Void)?

    init(fd: FileDescriptor, start: Int64, length: Int64, name: String, ownsDescriptor: Bool = false) {
        self.fd = fd
        self.start = start
        self.length = length
        self.name = name
        self.ownsDescriptor = ownsDescriptor
    }

    deinit {
        buffer.deallocate()
        if ownsDescriptor { fd.closeQuietly() }
    }

    /// The first bytes of the region (at most `count`), without consuming them.
    func peek(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(min(Int64(count), length)))
        let n = try bytes.withUnsafeMutableBytes { try readFully($0, at: start) }
        return Array(bytes[0..<n])
    }

    private func readFully(_ target: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        var done = 0
        while done < target.count {
            let n: Int
            do {
                n = try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: target[done...]), at: offset + Int64(done))
            } catch {
                throw ImageError("cannot read \(name): \(error)", errno: error)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    func nextChunk() throws -> UnsafeRawBufferPointer {
        let want = Int(min(Int64(buffer.count), length - position))
        guard want > 0 else { return UnsafeRawBufferPointer(start: buffer.baseAddress, count: 0) }
        let n = try readFully(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: start + position)
        guard n == want else { throw ImageError("\(name) is shorter than \(length) bytes (it changed while being read?)") }
        position += Int64(n)
        let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
        hasher?.update(chunk)
        progress?(n)
        return chunk
    }

    /// Reads (and hashes) whatever the consumer left unread.
    func drain() throws {
        while try nextChunk().count > 0 {}
    }

    private var finalDigest: String?

    /// `sha256:<hex>` of everything handed out; call after `drain`.
    func digest() -> String {
        if let finalDigest { return finalDigest }
        let digest = "sha256:" + (hasher.take()?.finalize().hex ?? "")
        finalDigest = digest
        return digest
    }

    /// The whole region as bytes (for JSON documents), refused beyond `limit`.
    func readAll(limit: Int) throws -> [UInt8] {
        guard length <= Int64(limit) else { throw ImageError("\(name) is \(length) bytes, more than the \(limit >> 20) MiB a JSON document may have") }
        var out: [UInt8] = []
        out.reserveCapacity(Int(length))
        while true {
            let chunk = try nextChunk()
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }
}

/// The data of a raw (decompressing) reader's single entry, hashing what it hands out.
final class DecompressedStream: ByteInput {
    private let reader: ArchiveReader
    private var hasher: SHA256Hasher? = SHA256Hasher()
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    private(set) var length: Int64 = 0

    init(_ reader: ArchiveReader) throws {
        self.reader = reader
        guard try reader.nextHeader() != nil else { throw ImageError("the compressed stream is empty") }
    }

    deinit { buffer.deallocate() }

    func nextChunk() throws -> UnsafeRawBufferPointer {
        let n = try reader.readData(into: buffer)
        let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
        hasher?.update(chunk)
        length += Int64(n)
        return chunk
    }

    func digest() -> String {
        "sha256:" + (hasher.take()?.finalize().hex ?? "")
    }
}

/// Bytes for messages: UTF-8 when valid and printable, else with \xNN escapes.
func displayBytes(_ bytes: [UInt8]) -> String { bytes.displayText }

/// A problem with an image: unreadable, malformed, hostile, or not matching its digests.
public struct ImageError: Error, CustomStringConvertible, ErrnoConvertible {
    public var message: String
    public var errno: Errno

    public init(_ message: String, errno: Errno = .ioError) {
        self.message = message
        self.errno = errno
    }

    public var description: String { message }
}
