// The FUSE wire format: the host's byte order (little-endian on every platform pvfs serves),
// fixed structures padded to 8 bytes, names NUL-terminated. Only the standard library is used,
// so that the codec compiles alone for fuzzing.

/// Why a request could not be decoded. Decoding never traps and never reads or allocates beyond
/// the bytes given: every length is checked against what remains.
public struct FuseDecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// Fewer bytes than the header or an argument needs.
        case truncated
        /// The header's length does not match the bytes received.
        case lengthMismatch
        /// Bytes remain after the last argument.
        case trailingBytes
        /// A name is not NUL-terminated, empty where it may not be, or holds a NUL.
        case badName
        /// A count or size field disagrees with the bytes that follow it.
        case badCount
    }

    public var kind: Kind
    public var field: String

    public init(_ kind: Kind, _ field: String = "") {
        self.kind = kind
        self.field = field
    }

    public var description: String { field.isEmpty ? "\(kind)" : "\(kind) at \(field)" }
}

/// Reads fields front to back from bytes the caller keeps alive, with a bounds check on each.
public struct FuseReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int
    public let end: Int

    public init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0, end: Int? = nil) {
        self.bytes = bytes
        let end = min(max(end ?? bytes.count, 0), bytes.count)
        self.end = end
        self.offset = max(0, min(offset, end))
    }

    public var remaining: Int { end - offset }

    @inline(__always)
    mutating func take(_ n: Int, _ field: String) throws(FuseDecodeError) -> Int {
        guard n >= 0, n <= end - offset else { throw FuseDecodeError(.truncated, field) }
        let start = offset
        offset += n
        return start
    }

    public mutating func u16(_ field: String = "") throws(FuseDecodeError) -> UInt16 {
        let i = try take(2, field)
        return UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8
    }

    public mutating func u32(_ field: String = "") throws(FuseDecodeError) -> UInt32 {
        let i = try take(4, field)
        return UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
    }

    public mutating func i32(_ field: String = "") throws(FuseDecodeError) -> Int32 {
        Int32(bitPattern: try u32(field))
    }

    public mutating func u64(_ field: String = "") throws(FuseDecodeError) -> UInt64 {
        let i = try take(8, field)
        var value: UInt64 = 0
        for k in (0..<8).reversed() { value = value << 8 | UInt64(bytes[i + k]) }
        return value
    }

    public mutating func skip(_ n: Int, _ field: String = "") throws(FuseDecodeError) {
        _ = try take(n, field)
    }

    /// A NUL-terminated name, without its NUL; the NUL is consumed. An empty name is refused
    /// unless `allowEmpty` (an xattr value may be empty, a name may not).
    public mutating func name(_ field: String = "", allowEmpty: Bool = false) throws(FuseDecodeError) -> [UInt8] {
        var i = offset
        while i < end && bytes[i] != 0 { i += 1 }
        guard i < end else { throw FuseDecodeError(.badName, field) }
        guard i > offset || allowEmpty else { throw FuseDecodeError(.badName, field) }
        let name = Array(bytes[offset..<i])
        offset = i + 1
        return name
    }

    /// `count` raw bytes, copied.
    public mutating func bytes(_ count: Int, _ field: String = "") throws(FuseDecodeError) -> [UInt8] {
        let i = try take(count, field)
        return Array(bytes[i..<(i + count)])
    }

    public func finish(_ field: String = "") throws(FuseDecodeError) {
        guard offset == end else { throw FuseDecodeError(.trailingBytes, field) }
    }
}

/// Builds a message: little-endian fields appended to a byte array.
public struct FuseWriter {
    public var bytes: [UInt8]

    public init(capacity: Int = 128) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public var count: Int { bytes.count }

    public mutating func u16(_ v: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: v))
        bytes.append(UInt8(truncatingIfNeeded: v >> 8))
    }

    public mutating func u32(_ v: UInt32) {
        for k in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(k)))) }
    }

    public mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }

    public mutating func u64(_ v: UInt64) {
        for k in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(k)))) }
    }

    public mutating func zeros(_ n: Int) {
        bytes.append(contentsOf: repeatElement(0, count: max(0, n)))
    }

    public mutating func name(_ n: [UInt8]) {
        bytes.append(contentsOf: n)
        bytes.append(0)
    }

    public mutating func data(_ d: some Collection<UInt8>) { bytes.append(contentsOf: d) }

    /// Pads with zeros to the next multiple of 8 (dirent records).
    public mutating func align8() {
        let rest = bytes.count % 8
        if rest != 0 { zeros(8 - rest) }
    }

    public static func patchU32(_ bytes: inout [UInt8], at index: Int, _ v: UInt32) {
        guard index >= 0, index + 4 <= bytes.count else { return }
        for k in 0..<4 { bytes[index + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) }
    }
}

/// One walk over a fixed structure's fields in wire order: `FuseWriter` appends each field,
/// `FuseReader` reads each one into place. A structure spells its layout once for both.
public protocol FuseFieldCoder {
    mutating func field(_ value: inout UInt64, _ name: String) throws(FuseDecodeError)
    mutating func field(_ value: inout UInt32, _ name: String) throws(FuseDecodeError)
    mutating func field(_ value: inout UInt16, _ name: String) throws(FuseDecodeError)
    /// Reserved bytes: written as zeros, skipped when read.
    mutating func padding(_ count: Int, _ name: String) throws(FuseDecodeError)
}

extension FuseWriter: FuseFieldCoder {
    @inlinable public mutating func field(_ value: inout UInt64, _ name: String) { u64(value) }
    @inlinable public mutating func field(_ value: inout UInt32, _ name: String) { u32(value) }
    @inlinable public mutating func field(_ value: inout UInt16, _ name: String) { u16(value) }
    @inlinable public mutating func padding(_ count: Int, _ name: String) { zeros(count) }
}

extension FuseReader: FuseFieldCoder {
    @inlinable public mutating func field(_ value: inout UInt64, _ name: String) throws(FuseDecodeError) { value = try u64(name) }
    @inlinable public mutating func field(_ value: inout UInt32, _ name: String) throws(FuseDecodeError) { value = try u32(name) }
    @inlinable public mutating func field(_ value: inout UInt16, _ name: String) throws(FuseDecodeError) { value = try u16(name) }
    @inlinable public mutating func padding(_ count: Int, _ name: String) throws(FuseDecodeError) { try skip(count, name) }
}

/// A fixed-size structure whose layout is the one `fields` walks.
public protocol FuseFixedLayout {
    /// Every field zero, to be filled in by decoding.
    init()
    mutating func fields<Coder: FuseFieldCoder>(_ coder: inout Coder) throws(FuseDecodeError)
}

extension FuseFixedLayout {
    @inlinable
    public func encode(into w: inout FuseWriter) {
        var copy = self
        do { try copy.fields(&w) } catch { /* a FuseWriter never fails */ }
    }

    @inlinable
    public static func decode(_ r: inout FuseReader) throws(FuseDecodeError) -> Self {
        var value = Self()
        try value.fields(&r)
        return value
    }
}
