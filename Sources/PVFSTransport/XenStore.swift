import CXen
#if canImport(Glibc)
import Glibc
#endif

/// A xenstore transaction handle; `.none` means "outside any transaction".
public struct XenStoreTransaction: Sendable, Hashable {
    public let id: UInt32
    public init(id: UInt32) { self.id = id }
    public static let none = XenStoreTransaction(id: 0)
}

/// One entry of a node's access list. The first entry names the owner and the access of
/// every domain not listed; the following ones grant extra access to single domains.
public struct XenStorePermission: Sendable, Equatable, CustomStringConvertible {
    public enum Access: UInt32, Sendable {
        case none = 0, read = 1, write = 2, readWrite = 3
    }
    public var domid: UInt32
    public var access: Access

    public init(domid: UInt32, access: Access) {
        self.domid = domid
        self.access = access
    }

    /// xenstore-chmod notation: n0, r5, w3, b1.
    public var description: String {
        let letter: String
        switch access {
        case .none: letter = "n"
        case .read: letter = "r"
        case .write: letter = "w"
        case .readWrite: letter = "b"
        }
        return "\(letter)\(domid)"
    }
}

/// The xenstore operations pvfs uses. `XenStore` implements it over libxenstore; tests use
/// an in-memory store.
public protocol XenStoreAccess: AnyObject {
    /// The node's value, or nil when it does not exist.
    func read(_ path: String, in transaction: XenStoreTransaction) throws -> [UInt8]?
    /// Writes a node, creating missing parents (which inherit their parent's permissions).
    func write(_ path: String, _ value: [UInt8], in transaction: XenStoreTransaction) throws
    /// Removes a node and everything below it; a missing node is not an error.
    func remove(_ path: String, in transaction: XenStoreTransaction) throws
    func makeDirectory(_ path: String, in transaction: XenStoreTransaction) throws
    /// The children's names, or nil when the node does not exist.
    func list(_ path: String, in transaction: XenStoreTransaction) throws -> [String]?
    func setPermissions(_ path: String, _ permissions: [XenStorePermission],
                        in transaction: XenStoreTransaction) throws
    func startTransaction() throws -> XenStoreTransaction
    /// Ends a transaction. Returns false when a commit conflicted (EAGAIN) and the whole
    /// transaction must be run again.
    func endTransaction(_ transaction: XenStoreTransaction, commit: Bool) throws -> Bool
    /// Registers a watch: `path` and everything below it, or a special path such as
    /// "@releaseDomain". xenstored fires each new watch once right away.
    func watch(_ path: String, token: String) throws
    func unwatch(_ path: String, token: String) throws
    /// Whether xenstored still knows the domain (false once it has died and been released).
    func isDomainIntroduced(_ domid: UInt32) -> Bool
}

extension XenStoreAccess {
    public func read(_ path: String) throws -> [UInt8]? {
        try read(path, in: .none)
    }

    /// The node's value as text (invalid UTF-8 is replaced), or nil when missing.
    public func readString(_ path: String, in transaction: XenStoreTransaction = .none) throws -> String? {
        guard let bytes = try read(path, in: transaction) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    public func write(_ path: String, _ value: String, in transaction: XenStoreTransaction = .none) throws {
        try write(path, Array(value.utf8), in: transaction)
    }

    public func exists(_ path: String, in transaction: XenStoreTransaction = .none) throws -> Bool {
        try read(path, in: transaction) != nil
    }

    /// Runs `body` inside a transaction and commits it, running it again when the commit
    /// conflicts. `body` returns nil to abort (nothing is written) and the call returns nil.
    public func withTransaction<T>(maxAttempts: Int = 32,
                                   _ body: (XenStoreTransaction) throws -> T?) throws -> T? {
        var attempt = 0
        while true {
            attempt += 1
            let transaction = try startTransaction()
            let result: T?
            do {
                result = try body(transaction)
            } catch {
                _ = try? endTransaction(transaction, commit: false)
                throw error
            }
            guard let result else {
                _ = try endTransaction(transaction, commit: false)
                return nil
            }
            if try endTransaction(transaction, commit: true) { return result }
            if attempt >= maxAttempts {
                throw XenError(kind: .system, call: "xs_transaction_end", errno: EAGAIN,
                               detail: "still conflicting after \(attempt) attempts")
            }
        }
    }
}

/// A xenstore connection through libxenstore (the xenstored socket, or /dev/xen/xenbus).
/// libxenstore handles are thread-safe; watch events arrive on `fileDescriptor`.
public final class XenStore: XenStoreAccess, @unchecked Sendable {
    private let handle: OpaquePointer

    /// Opens xenstore read-write.
    public init() throws {
        errno = 0
        guard let handle = xs_open(0) else {
            throw XenError.system("xs_open", "(is this a Xen domain with xenstored running?)",
                                  errno: errno == 0 ? ENOENT : errno)
        }
        self.handle = handle
    }

    deinit {
        xs_close(handle)
    }

    public func read(_ path: String, in transaction: XenStoreTransaction) throws -> [UInt8]? {
        var length: UInt32 = 0
        errno = 0
        guard let raw = xs_read(handle, transaction.id, path, &length) else {
            if errno == ENOENT { return nil }
            throw XenError.system("xs_read", path)
        }
        defer { free(raw) }
        return Array(UnsafeRawBufferPointer(start: raw, count: Int(length)))
    }

    public func write(_ path: String, _ value: [UInt8], in transaction: XenStoreTransaction) throws {
        let ok = value.withUnsafeBytes { bytes in
            xs_write(handle, transaction.id, path, bytes.baseAddress, UInt32(bytes.count))
        }
        guard ok else { throw XenError.system("xs_write", path) }
    }

    public func remove(_ path: String, in transaction: XenStoreTransaction) throws {
        errno = 0
        guard xs_rm(handle, transaction.id, path) else {
            if errno == ENOENT { return }
            throw XenError.system("xs_rm", path)
        }
    }

    public func makeDirectory(_ path: String, in transaction: XenStoreTransaction) throws {
        guard xs_mkdir(handle, transaction.id, path) else { throw XenError.system("xs_mkdir", path) }
    }

    public func list(_ path: String, in transaction: XenStoreTransaction) throws -> [String]? {
        var count: UInt32 = 0
        errno = 0
        guard let entries = xs_directory(handle, transaction.id, path, &count) else {
            if errno == ENOENT { return nil }
            throw XenError.system("xs_directory", path)
        }
        defer { free(entries) }
        var names: [String] = []
        names.reserveCapacity(Int(count))
        for index in 0..<Int(count) {
            if let name = entries[index] { names.append(String(cString: name)) }
        }
        return names
    }

    public func setPermissions(_ path: String, _ permissions: [XenStorePermission],
                               in transaction: XenStoreTransaction) throws {
        var entries = permissions.map { xs_permissions(id: $0.domid, perms: $0.access.rawValue) }
        let ok = entries.withUnsafeMutableBufferPointer { buffer in
            xs_set_permissions(handle, transaction.id, path, buffer.baseAddress, UInt32(buffer.count))
        }
        guard ok else { throw XenError.system("xs_set_permissions", path) }
    }

    /// The node's access list (owner first).
    public func permissions(_ path: String, in transaction: XenStoreTransaction = .none) throws -> [XenStorePermission]? {
        var count: UInt32 = 0
        errno = 0
        guard let entries = xs_get_permissions(handle, transaction.id, path, &count) else {
            if errno == ENOENT { return nil }
            throw XenError.system("xs_get_permissions", path)
        }
        defer { free(entries) }
        return (0..<Int(count)).map { index in
            XenStorePermission(domid: entries[index].id,
                               access: XenStorePermission.Access(rawValue: entries[index].perms & 3) ?? .none)
        }
    }

    public func startTransaction() throws -> XenStoreTransaction {
        let id = xs_transaction_start(handle)
        guard id != 0 else { throw XenError.system("xs_transaction_start") }
        return XenStoreTransaction(id: id)
    }

    public func endTransaction(_ transaction: XenStoreTransaction, commit: Bool) throws -> Bool {
        errno = 0
        if xs_transaction_end(handle, transaction.id, !commit) { return true }
        if commit && errno == EAGAIN { return false }
        if !commit { return true }
        throw XenError.system("xs_transaction_end")
    }

    public func watch(_ path: String, token: String) throws {
        guard xs_watch(handle, path, token) else { throw XenError.system("xs_watch", path) }
    }

    public func unwatch(_ path: String, token: String) throws {
        errno = 0
        guard xs_unwatch(handle, path, token) else {
            if errno == ENOENT { return }
            throw XenError.system("xs_unwatch", path)
        }
    }

    public func isDomainIntroduced(_ domid: UInt32) -> Bool {
        xs_is_domain_introduced(handle, domid)
    }

    /// Becomes readable when watch events are queued; drain them with `nextWatchEvent()`.
    public var fileDescriptor: Int32 {
        get throws {
            let fd = xs_fileno(handle)
            guard fd >= 0 else { throw XenError.system("xs_fileno") }
            return fd
        }
    }

    /// The next queued watch event without blocking, or nil when none is queued.
    public func nextWatchEvent() -> (path: String, token: String)? {
        guard let event = xs_check_watch(handle) else { return nil }
        defer { free(event) }
        guard let path = event[Int(XS_WATCH_PATH.rawValue)],
              let token = event[Int(XS_WATCH_TOKEN.rawValue)] else { return nil }
        return (String(cString: path), String(cString: token))
    }

    /// The domain id this process runs in (the "domid" node relative to our home path).
    public func ownDomainID() throws -> UInt32 {
        guard let bytes = try read("domid", in: .none) else {
            // xenstored answers ENOENT for dom0 before xen-init-dom0 has run; dom0 it is.
            return 0
        }
        return try XenValue.parseUInt32(bytes, name: "domid")
    }
}

/// Strict parsing of the values another domain writes into xenstore.
public enum XenValue {
    /// A canonical unsigned decimal that fits in 32 bits: digits only, no sign, no
    /// whitespace, no leading zeros (except "0" itself).
    public static func parseUInt32(_ bytes: [UInt8], name: String) throws -> UInt32 {
        guard !bytes.isEmpty, bytes.count <= 10 else {
            throw XenError.invalid(name, "\(describe(bytes)) is not an unsigned 32-bit decimal")
        }
        guard bytes.count == 1 || bytes[0] != UInt8(ascii: "0") else {
            throw XenError.invalid(name, "\(describe(bytes)) has a leading zero")
        }
        var value: UInt64 = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else {
                throw XenError.invalid(name, "\(describe(bytes)) is not an unsigned 32-bit decimal")
            }
            value = value * 10 + UInt64(byte - UInt8(ascii: "0"))
        }
        guard value <= UInt64(UInt32.max) else {
            throw XenError.invalid(name, "\(describe(bytes)) does not fit in 32 bits")
        }
        return UInt32(value)
    }

    public static func parseUInt32(_ text: String, name: String) throws -> UInt32 {
        try parseUInt32(Array(text.utf8), name: name)
    }

    /// A value quoted for a log line or an error node: printable ASCII kept, the rest escaped,
    /// at most 64 bytes shown.
    public static func describe(_ bytes: [UInt8]) -> String {
        var text = "\""
        for byte in bytes.prefix(64) {
            switch byte {
            case 0x20...0x7e where byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\"):
                text.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16)
                text += "\\x" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        if bytes.count > 64 { text += "…" }
        return text + "\""
    }
}
