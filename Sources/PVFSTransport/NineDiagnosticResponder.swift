import Synchronization

/// A tiny, read-only 9P2000.L server over a flat in-memory directory, for checking a
/// transport end to end without the real server: enough for a Linux client to mount,
/// list, stat and read (version, attach, walk, clunk, getattr, lopen, readdir, read,
/// statfs, flush). Everything that would modify answers EROFS, the rest EOPNOTSUPP.
/// Diagnostic only; it never touches a store.
public final class NineDiagnosticResponder: NineMessageHandler {
    public let maxMessageSize: UInt32
    private let files: [(name: String, contents: [UInt8])]
    private let modificationTime: UInt64

    private struct State {
        var fids: [UInt32: Int] = [:]   // fid -> node (0 = root, i + 1 = files[i])
        var msize: UInt32 = 0
        var closed = false
    }
    private let state = Mutex(State())

    /// `files` become the entries of the root directory, sorted by name.
    public init(files: [String: [UInt8]], maxMessageSize: UInt32 = 512 * 1024, modificationTime: UInt64 = 1_700_000_000) {
        precondition(maxMessageSize >= 4096)
        self.files = files.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        self.maxMessageSize = maxMessageSize
        self.modificationTime = modificationTime
    }

    public func close() {
        state.withLock { $0.closed = true; $0.fids.removeAll() }
    }

    // Linux errno values carried in Rlerror.
    enum Errno {
        static let enoent: UInt32 = 2
        static let ebadf: UInt32 = 9
        static let einval: UInt32 = 22
        static let enotdir: UInt32 = 20
        static let eisdir: UInt32 = 21
        static let erofs: UInt32 = 30
        static let enodata: UInt32 = 61
        static let eproto: UInt32 = 71
        static let eopnotsupp: UInt32 = 95
    }

    private struct Malformed: Error {}

    private struct Reader {
        let bytes: [UInt8]
        var offset = NineHeader.length

        mutating func u8() throws -> UInt8 {
            guard offset + 1 <= bytes.count else { throw Malformed() }
            defer { offset += 1 }
            return bytes[offset]
        }
        mutating func u16() throws -> UInt16 {
            guard offset + 2 <= bytes.count else { throw Malformed() }
            defer { offset += 2 }
            return UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
        }
        mutating func u32() throws -> UInt32 {
            guard offset + 4 <= bytes.count else { throw Malformed() }
            defer { offset += 4 }
            return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
        }
        mutating func u64() throws -> UInt64 {
            guard offset + 8 <= bytes.count else { throw Malformed() }
            defer { offset += 8 }
            return (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * $1) }
        }
        mutating func string() throws -> String {
            let length = Int(try u16())
            guard offset + length <= bytes.count else { throw Malformed() }
            defer { offset += length }
            return String(decoding: bytes[offset..<offset + length], as: UTF8.self)
        }
    }

    private struct Writer {
        var bytes: [UInt8]
        init(type: UInt8, tag: UInt16) {
            bytes = NineHeader(size: 0, type: type, tag: tag).bytes
        }
        mutating func u8(_ value: UInt8) { bytes.append(value) }
        mutating func u16(_ value: UInt16) { for shift in [0, 8] { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) } }
        mutating func u32(_ value: UInt32) { for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) } }
        mutating func u64(_ value: UInt64) { for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) } }
        mutating func string(_ value: String) {
            let utf8 = Array(value.utf8.prefix(Int(UInt16.max)))
            u16(UInt16(utf8.count))
            bytes += utf8
        }
        mutating func qid(_ qid: (type: UInt8, path: UInt64)) {
            u8(qid.type)
            u32(0)
            u64(qid.path)
        }
        func finished() -> [UInt8] {
            var result = bytes
            let size = UInt32(result.count)
            for index in 0..<4 { result[index] = UInt8(truncatingIfNeeded: size >> (8 * index)) }
            return result
        }
    }

    private func qid(_ node: Int) -> (type: UInt8, path: UInt64) {
        (node == 0 ? 0x80 : 0x00, UInt64(node) + 1)
    }

    public func receive(_ message: [UInt8], reply: @escaping @Sendable ([UInt8]) -> Void) {
        guard let header = NineHeader(message) else { return }
        let response: [UInt8]
        do {
            response = try answer(header, Reader(bytes: message))
        } catch {
            response = NineHeader.rlerror(tag: header.tag, errno: Errno.eproto)
        }
        reply(response)
    }

    private func error(_ tag: UInt16, _ errno: UInt32) -> [UInt8] {
        NineHeader.rlerror(tag: tag, errno: errno)
    }

    private func answer(_ header: NineHeader, _ input: Reader) throws -> [UInt8] {
        var reader = input
        let tag = header.tag
        switch header.type {
        case 100: // Tversion
            let requested = try reader.u32()
            let version = try reader.string()
            let msize = min(requested, maxMessageSize)
            state.withLock { $0.fids.removeAll(); $0.msize = msize }
            var writer = Writer(type: 101, tag: tag)
            writer.u32(msize)
            writer.string(version.hasPrefix("9P2000.L") ? "9P2000.L" : "unknown")
            return writer.finished()

        case 104: // Tattach fid afid uname aname n_uname
            let fid = try reader.u32()
            _ = try reader.u32()
            _ = try reader.string()
            _ = try reader.string()
            state.withLock { $0.fids[fid] = 0 }
            var writer = Writer(type: 105, tag: tag)
            writer.qid(qid(0))
            return writer.finished()

        case 110: // Twalk fid newfid nwname wname*
            let fid = try reader.u32()
            let newfid = try reader.u32()
            let count = Int(try reader.u16())
            var names: [String] = []
            for _ in 0..<count { names.append(try reader.string()) }
            guard let start = state.withLock({ $0.fids[fid] }) else { return error(tag, Errno.ebadf) }
            var node = start
            var qids: [(type: UInt8, path: UInt64)] = []
            for name in names {
                if name == ".." || name == "." {
                    node = 0
                } else if node == 0, let index = files.firstIndex(where: { $0.name == name }) {
                    node = index + 1
                } else {
                    if qids.isEmpty { return error(tag, node == 0 ? Errno.enoent : Errno.enotdir) }
                    break
                }
                qids.append(qid(node))
            }
            if qids.count == names.count { state.withLock { $0.fids[newfid] = node } }
            var writer = Writer(type: 111, tag: tag)
            writer.u16(UInt16(qids.count))
            for entry in qids { writer.qid(entry) }
            return writer.finished()

        case 120: // Tclunk
            let fid = try reader.u32()
            guard state.withLock({ $0.fids.removeValue(forKey: fid) }) != nil else { return error(tag, Errno.ebadf) }
            return Writer(type: 121, tag: tag).finished()

        case 24: // Tgetattr fid request_mask
            let fid = try reader.u32()
            _ = try reader.u64()
            guard let node = state.withLock({ $0.fids[fid] }) else { return error(tag, Errno.ebadf) }
            let size = node == 0 ? UInt64(4096) : UInt64(files[node - 1].contents.count)
            var writer = Writer(type: 25, tag: tag)
            writer.u64(0x7ff) // P9_GETATTR_BASIC
            writer.qid(qid(node))
            writer.u32(node == 0 ? 0o040555 : 0o100444)
            writer.u32(0)
            writer.u32(0)
            writer.u64(node == 0 ? 2 : 1)
            writer.u64(0)
            writer.u64(size)
            writer.u64(4096)
            writer.u64((size + 511) / 512)
            for _ in 0..<4 { writer.u64(modificationTime); writer.u64(0) } // atime mtime ctime btime
            writer.u64(0)
            writer.u64(0)
            return writer.finished()

        case 12: // Tlopen fid flags
            let fid = try reader.u32()
            let flags = try reader.u32()
            guard let node = state.withLock({ $0.fids[fid] }) else { return error(tag, Errno.ebadf) }
            if flags & 3 != 0 || flags & 0o1000 != 0 { return error(tag, Errno.erofs) }
            var writer = Writer(type: 13, tag: tag)
            writer.qid(qid(node))
            writer.u32(0)
            return writer.finished()

        case 40: // Treaddir fid offset count
            let fid = try reader.u32()
            let offset = try reader.u64()
            let count = try reader.u32()
            guard let node = state.withLock({ $0.fids[fid] }) else { return error(tag, Errno.ebadf) }
            guard node == 0 else { return error(tag, Errno.enotdir) }
            let limit = Int(min(count, replyPayloadLimit()))
            var entries: [(name: String, qid: (type: UInt8, path: UInt64))] = [(".", qid(0)), ("..", qid(0))]
            for index in files.indices { entries.append((files[index].name, qid(index + 1))) }
            var data: [UInt8] = []
            var position = Int(min(offset, UInt64(entries.count)))
            while position < entries.count {
                var entry = Writer(type: 0, tag: 0)
                entry.bytes.removeAll()
                entry.qid(entries[position].qid)
                entry.u64(UInt64(position + 1))
                entry.u8(entries[position].qid.type == 0x80 ? 4 : 8) // DT_DIR / DT_REG
                entry.string(entries[position].name)
                guard data.count + entry.bytes.count <= limit else { break }
                data += entry.bytes
                position += 1
            }
            var writer = Writer(type: 41, tag: tag)
            writer.u32(UInt32(data.count))
            writer.bytes += data
            return writer.finished()

        case 116: // Tread fid offset count
            let fid = try reader.u32()
            let offset = try reader.u64()
            let count = try reader.u32()
            guard let node = state.withLock({ $0.fids[fid] }) else { return error(tag, Errno.ebadf) }
            guard node != 0 else { return error(tag, Errno.eisdir) }
            let contents = files[node - 1].contents
            let start = Int(min(offset, UInt64(contents.count)))
            let length = min(Int(min(count, replyPayloadLimit())), contents.count - start)
            var writer = Writer(type: 117, tag: tag)
            writer.u32(UInt32(length))
            writer.bytes += contents[start..<start + length]
            return writer.finished()

        case 8: // Tstatfs
            let fid = try reader.u32()
            guard state.withLock({ $0.fids[fid] }) != nil else { return error(tag, Errno.ebadf) }
            var writer = Writer(type: 9, tag: tag)
            writer.u32(0x0102_1997) // V9FS_MAGIC
            writer.u32(4096)
            writer.u64(1024)
            writer.u64(0)
            writer.u64(0)
            writer.u64(UInt64(files.count + 1))
            writer.u64(0)
            writer.u64(0x7076_6673) // "pvfs"
            writer.u32(255)
            return writer.finished()

        case 108: // Tflush oldtag
            _ = try reader.u16()
            return Writer(type: 109, tag: tag).finished()

        case 30: // Txattrwalk
            return error(tag, Errno.enodata)

        case 14, 16, 18, 20, 26, 32, 50, 70, 72, 74, 76, 118, 122: // create, write, rename, ...
            return error(tag, Errno.erofs)

        default:
            return error(tag, Errno.eopnotsupp)
        }
    }

    /// Payload bytes an Rread/Rreaddir may carry within the negotiated msize.
    private func replyPayloadLimit() -> UInt32 {
        let msize = state.withLock { $0.msize }
        return (msize == 0 ? maxMessageSize : msize) - 11
    }
}
