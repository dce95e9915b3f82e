import Glibc
import PVFSEngine

/// Path-level shortcuts over a `VMView` for tests: what a client does with repeated lookups and
/// one open, written once for every test target that drives the engine directly.
extension VMView {
    /// Resolves a slash-separated path from the root, as a client would by repeated lookups.
    public func resolve(_ path: String, as credentials: Credentials = .root) throws -> Attributes {
        var attributes = try getAttributes(rootInode)
        for component in path.split(separator: "/") {
            attributes = try lookup(attributes.inode, Array(component.utf8), as: credentials)
        }
        return attributes
    }

    /// The whole content of a file, read in 1 MiB pieces.
    public func readWhole(_ path: String) throws -> [UInt8] {
        let handle = try open(try resolve(path).inode, flags: O_RDONLY, as: .root)
        defer { release(handle) }
        var out: [UInt8] = []
        while true {
            let chunk = try read(handle, offset: Int64(out.count), count: 1 << 20)
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }

    /// A file's content as one read sees it: unlike `readWhole`, whose second read (the one that
    /// finds the end) may see a writer's next version, this never mixes two versions of a small
    /// file that another thread rewrites (truncate, then write) meanwhile.
    public func readOnce(_ path: String, count: Int = 1 << 20) throws -> [UInt8] {
        let handle = try open(try resolve(path).inode, flags: O_RDONLY, as: .root)
        defer { release(handle) }
        return try read(handle, offset: 0, count: count)
    }

    /// The whole content of a file as text.
    public func readText(_ path: String) throws -> String {
        String(decoding: try readWhole(path), as: UTF8.self)
    }

    /// Writes `content` at offset 0 of an existing file (truncating it by default).
    public func writeFile(_ path: String, _ content: String, flags: Int32 = O_WRONLY | O_TRUNC, as credentials: Credentials = .root) throws {
        let handle = try open(try resolve(path).inode, flags: flags, as: credentials)
        defer { release(handle) }
        _ = try write(handle, offset: 0, bytes: Array(content.utf8), as: credentials)
    }

    /// Creates `name` in the directory `parent` (mode 0644) holding `bytes`.
    public func createBytes(_ parent: String, _ name: String, _ bytes: [UInt8], as credentials: Credentials = .root) throws -> Attributes {
        let (attributes, handle) = try create(try resolve(parent).inode, Array(name.utf8), mode: 0o644, flags: O_RDWR, as: credentials)
        defer { release(handle) }
        _ = try write(handle, offset: 0, bytes: bytes, as: credentials)
        return attributes
    }

    /// Creates `name` in the directory `parent` (mode 0644) holding `content`.
    public func createFile(_ parent: String, _ name: String, _ content: String, as credentials: Credentials = .root) throws -> Attributes {
        try createBytes(parent, name, Array(content.utf8), as: credentials)
    }

    /// The names in a directory, without . and .., sorted.
    public func names(_ path: String) throws -> [String] {
        try readDirectory(try resolve(path).inode, after: 0, as: .root).map { String(decoding: $0.name, as: UTF8.self) }
            .filter { $0 != "." && $0 != ".." }.sorted()
    }
}
