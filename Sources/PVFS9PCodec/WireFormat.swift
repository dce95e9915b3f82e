// The 9P wire format: little-endian integers, strings as len[2] + bytes, qids as
// type[1] version[4] path[8], every message framed as size[4] type[1] tag[2] body.

/// Why a message could not be decoded. Decoding never traps and never allocates more than the
/// message itself holds: every length is checked against the bytes that remain.
public struct NinePDecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// The body ends before a field does.
        case truncated
        /// Bytes remain after the last field.
        case trailingBytes
        /// The size field does not match the message's length.
        case sizeMismatch
        /// Not a message type of 9P2000.L (or not one this side decodes).
        case unknownType
        /// Twalk with more than 16 names.
        case tooManyNames
        /// A field holds a value the protocol does not allow.
        case invalidValue
    }

    public var kind: Kind
    public var field: String

    public init(_ kind: Kind, _ field: String = "") {
        self.kind = kind
        self.field = field
    }

    /// The errno an Rlerror reports for this error.
    public var errno: UInt32 {
        switch kind {
        case .tooManyNames, .invalidValue: LinuxErrno.EINVAL
        case .unknownType: LinuxErrno.EOPNOTSUPP
        case .truncated, .trailingBytes, .sizeMismatch: LinuxErrno.EPROTO
        }
    }

    public var description: String { field.isEmpty ? "\(kind)" : "\(kind) at \(field)" }
}

/// Reads fields from one message, front to back, with a bounds check on every read.
public struct NinePReader {
    public let bytes: [UInt8]
    public private(set) var offset: Int
    public let end: Int

    /// A reader of `bytes[offset..<end]`.
    public init(_ bytes: [UInt8], offset: Int = 0, end: Int? = nil) {
        self.bytes = bytes
        let end = min(end ?? bytes.count, bytes.count)
        self.offset = max(0, min(offset, end))
        self.end = end
    }

    public var remaining: Int { end - offset }

    @inline(__always)
    private mutating func take(_ n: Int, _ field: String) throws(NinePDecodeError) -> Int {
        guard n >= 0, n <= end - offset else { throw NinePDecodeError(.truncated, field) }
        let start = offset
        offset += n
        return start
    }

    public mutating func u8(_ field: String = "") throws(NinePDecodeError) -> UInt8 {
        bytes[try take(1, field)]
    }

    public mutating func u16(_ field: String = "") throws(NinePDecodeError) -> UInt16 {
        let i = try take(2, field)
        return UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8
    }

    public mutating func u32(_ field: String = "") throws(NinePDecodeError) -> UInt32 {
        let i = try take(4, field)
        return UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
    }

    public mutating func u64(_ field: String = "") throws(NinePDecodeError) -> UInt64 {
        let i = try take(8, field)
        var value: UInt64 = 0
        for k in (0..<8).reversed() { value = value << 8 | UInt64(bytes[i + k]) }
        return value
    }

    /// A string: len[2] then that many bytes. Kept as bytes; names need not be UTF-8.
    public mutating func string(_ field: String = "") throws(NinePDecodeError) -> [UInt8] {
        let n = Int(try u16(field))
        let i = try take(n, field)
        return Array(bytes[i..<(i + n)])
    }

    public mutating func qid(_ field: String = "") throws(NinePDecodeError) -> NinePQid {
        let type = try u8(field)
        let version = try u32(field)
        let path = try u64(field)
        return NinePQid(type: type, version: version, path: path)
    }

    /// `count` raw bytes, sharing the message's storage.
    public mutating func data(_ count: Int, _ field: String = "") throws(NinePDecodeError) -> ArraySlice<UInt8> {
        let i = try take(count, field)
        return bytes[i..<(i + count)]
    }

    /// Fails unless every byte was consumed.
    public func finish() throws(NinePDecodeError) {
        guard offset == end else { throw NinePDecodeError(.trailingBytes) }
    }
}

/// Builds one message: the header first with a size placeholder, patched by `finish`.
public struct NinePWriter {
    public private(set) var bytes: [UInt8]

    public init(type: NinePMessageType, tag: UInt16, capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(max(capacity, NineP.headerSize))
        u32(0)
        u8(type.rawValue)
        u16(tag)
    }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }

    public mutating func u16(_ v: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: v))
        bytes.append(UInt8(truncatingIfNeeded: v >> 8))
    }

    public mutating func u32(_ v: UInt32) {
        for k in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(k)))) }
    }

    public mutating func u64(_ v: UInt64) {
        for k in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(k)))) }
    }

    /// A string; callers keep it within 65535 bytes (longer ones are cut, never wrapped).
    public mutating func string(_ s: some Collection<UInt8>) {
        let n = min(s.count, Int(UInt16.max))
        u16(UInt16(n))
        bytes.append(contentsOf: s.prefix(n))
    }

    public mutating func qid(_ q: NinePQid) {
        u8(q.type)
        u32(q.version)
        u64(q.path)
    }

    public mutating func data(_ d: some Collection<UInt8>) { bytes.append(contentsOf: d) }

    /// The message with its size field filled in.
    public func finish() -> [UInt8] {
        var out = bytes
        NinePWriter.patchU32(&out, at: 0, UInt32(truncatingIfNeeded: out.count))
        return out
    }

    public static func patchU32(_ bytes: inout [UInt8], at index: Int, _ v: UInt32) {
        bytes[index] = UInt8(truncatingIfNeeded: v)
        bytes[index + 1] = UInt8(truncatingIfNeeded: v >> 8)
        bytes[index + 2] = UInt8(truncatingIfNeeded: v >> 16)
        bytes[index + 3] = UInt8(truncatingIfNeeded: v >> 24)
    }
}

/// size[4] type[1] tag[2] of a message.
public struct NinePHeader: Hashable, Sendable {
    public var size: UInt32
    public var type: NinePMessageType
    public var tag: UInt16

    /// The header of a complete message, or nil when fewer than 7 bytes are given.
    public init?(_ message: [UInt8]) {
        guard message.count >= NineP.headerSize else { return nil }
        var r = NinePReader(message)
        do {
            size = try r.u32()
            type = NinePMessageType(rawValue: try r.u8())
            tag = try r.u16()
        } catch {
            return nil
        }
    }

    public init(size: UInt32, type: NinePMessageType, tag: UInt16) {
        self.size = size
        self.type = type
        self.tag = tag
    }
}
