import Foundation
import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

// Finding an image's documents and layers: in an OCI image layout directory, or in an archive
// (a tarred OCI layout, or the legacy format of `docker save`/`podman save`/skopeo
// `docker-archive`). An archive is indexed, not extracted: each member is read in place.

/// How the image was packed.
public enum ImageFormat: String, Sendable, Codable {
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
    case ociLayout = "oci-layout"
    /// A tar of an OCI image layout (podman `oci-archive`, `docker save` of Docker 25 and later).
    case ociArchive = "oci-archive"
    /// `manifest.json` + config + layer tars (`docker save`, `podman save`, skopeo `docker-archive`).
    case dockerArchive = "docker-archive"
}

/// A member of an (uncompressed) outer archive.
struct ArchiveMember {
    enum Kind { case file, directory, symlink, hardlink, other }
    var kind: Kind
    var dataOffset: Int64
    var size: Int64
    var target: String?
}

/// An image's container: a layout directory or an indexed archive file.
final class ImageSource {
    let path: String
    let format: ImageFormat
    private let directory: FileDescriptor?
    private let archive: FileDescriptor?
    private let members: [String: ArchiveMember]

    static let maximumDocument = 16 << 20

    /// Opens `path`: a directory must be an OCI layout; a file is indexed as a tar (compressed
    /// archives are first decompressed into a file `scratch` creates).
    init(path: String, scratch: () throws -> FileDescriptor) throws {
        self.path = path
        // A fifo or device must not be opened at all (a fifo blocks open() beyond the reach of
        // Ctrl-C): its kind is looked at through an O_PATH descriptor first.
        let kind: FileKind?
        do {
            let probe = try FileDescriptor.open(at: .currentDirectory, path, [.path])
            defer { probe.closeQuietly() }
            kind = try probe.stat().kind
        } catch {
            switch error {
            case .noSuchFileOrDirectory: throw ImageError("no image at \(path)" + Self.transportHint(path), errno: error)
            default: throw ImageError("cannot open \(path): \(error)", errno: error)
            }
        }
        guard kind == .directory || kind == .regular else {
            throw ImageError("\(path) is neither a directory nor an archive file", errno: .invalidArgument)
        }
        let fd: FileDescriptor
        let st: FileStat
        do throws(Errno) {
            fd = try FileDescriptor.open(at: .currentDirectory, path, [.readOnly, .nonBlocking])
            do throws(Errno) {
                st = try fd.stat()
            } catch {
                fd.closeQuietly()
                throw error
            }
        } catch {
            throw ImageError("cannot open \(path): \(error)", errno: error)
        }
        if st.kind == .directory {
            directory = fd
            archive = nil
            members = [:]
            format = .ociLayout
            let layout: [UInt8]
            do {
                layout = try readDocument(named: "oci-layout")
            } catch let error as ImageError where error.errno == .noSuchFileOrDirectory {
                throw ImageError("\(path) is a directory without an oci-layout file: not an OCI image layout"
                                 + " (a plain directory tree is imported with --from)", errno: .invalidArgument)
            }
            try checkLayoutVersion(layout)
            return
        }
        guard st.kind == .regular else {
            fd.closeQuietly()
            throw ImageError("\(path) is neither a directory nor an archive file", errno: .invalidArgument)
        }
        directory = nil
        var file = fd
        do {
            let region = FileRegion(fd: fd, start: 0, length: st.size, name: path, ownsDescriptor: true)
            let compression = Compression.detect(try region.peek(8))
            if compression != .none {
                // Members are read in place at their offsets: a compressed archive is
                // decompressed once into the store's tmp/ (the region closes the original).
                file = try scratch()
                try Self.decompress(region, compression, into: file, name: path)
            } else {
                file = try fd.duplicate()
            }
            let size = try file.stat().size
            members = try Self.index(file, size: size, name: path)
        } catch {
            if file != fd { file.closeQuietly() }
            throw error
        }
        archive = file
        if members["index.json"] != nil && members["oci-layout"] != nil {
            format = .ociArchive
            try checkLayoutVersion(try readDocument(named: "oci-layout"))
        } else if members["manifest.json"] != nil {
            format = .dockerArchive
        } else {
            throw ImageError("\(path) holds neither an OCI layout (index.json, oci-layout) nor a docker archive (manifest.json)",
                             errno: .invalidArgument)
        }
    }

    /// skopeo and podman name images `oci:DIR:TAG`, `oci-archive:FILE:TAG`, `docker-archive:FILE`;
    /// --from-oci takes the path alone, the tag going to --image-ref.
    static func transportHint(_ path: String) -> String {
        for transport in ["oci:", "oci-archive:", "docker-archive:"] where path.hasPrefix(transport) {
            let rest = path.dropFirst(transport.count)
            let parts = rest.split(separator: ":", maxSplits: 1).map(String.init)
            guard let file = parts.first, !file.isEmpty else { return "" }
            return " (--from-oci takes a path: --from-oci \(file)" + (parts.count == 2 ? " --image-ref \(parts[1])" : "") + ")"
        }
        return ""
    }

    deinit {
        directory?.closeQuietly()
        archive?.closeQuietly()
    }

    private func checkLayoutVersion(_ bytes: [UInt8]) throws {
        struct Layout: Decodable { var imageLayoutVersion: String? }
        let layout = try decodeJSON(Layout.self, bytes, what: "oci-layout")
        guard let version = layout.imageLayoutVersion, version.hasPrefix("1.") else {
            throw ImageError("\(path): unsupported image layout version \(layout.imageLayoutVersion ?? "(none)")", errno: .invalidArgument)
        }
    }

    // MARK: Archives

    private static func decompress(_ region: FileRegion, _ compression: Compression, into file: FileDescriptor, name: String) throws {
        let reader = try ArchiveReader(input: region, format: .raw(compression))
        let stream: DecompressedStream
        do {
            stream = try DecompressedStream(reader)
        } catch {
            throw ImageError("cannot decompress \(name): \(error)")
        }
        var offset: Int64 = 0
        while true {
            let chunk = try stream.nextChunk()
            if chunk.isEmpty { break }
            do {
                try file.writeAll(chunk, at: offset)
            } catch {
                throw ImageError("cannot decompress \(name) into the store's tmp/: \(error)", errno: error)
            }
            offset += Int64(chunk.count)
        }
    }

    /// Member name → where its data lies. One libarchive pass over the headers; data offsets
    /// come from the raw header blocks (after pax and GNU long-name extension headers).
    private static func index(_ file: FileDescriptor, size: Int64, name: String) throws -> [String: ArchiveMember] {
        let region = FileRegion(fd: file, start: 0, length: size, name: name)
        let reader: ArchiveReader
        do {
            reader = try ArchiveReader(input: region, format: .tar)
        } catch {
            throw ImageError("\(name) is not a tar archive: \(error)", errno: .invalidArgument)
        }
        var members: [String: ArchiveMember] = [:]
        while let header = try reader.nextHeader() {
            guard members.count < 1_000_000 else { throw ImageError("\(name) has more than a million members") }
            let memberName = normalizedMemberName(header.path)
            let kind: ArchiveMember.Kind
            switch header.kind {
            case .regular: kind = .file
            case .directory: kind = .directory
            case .symlink: kind = .symlink
            case .hardlink: kind = .hardlink
            default: kind = .other
            }
            if kind == .file && header.sparse { throw ImageError("\(name): member \(memberName) is stored sparse, which image archives never are") }
            var dataOffset: Int64 = 0
            if kind == .file { dataOffset = try dataStart(file, headerAt: reader.headerPosition, size: size, name: name) }
            members[memberName] = ArchiveMember(kind: kind, dataOffset: dataOffset, size: header.size,
                                                target: header.linkTarget.map { String(decoding: $0, as: UTF8.self) })
            if kind == .file && (dataOffset > size || header.size > size - dataOffset) {
                throw ImageError("\(name): member \(memberName) reaches past the end of the archive")
            }
        }
        return members
    }

    static func normalizedMemberName(_ path: [UInt8]) -> String {
        let components = path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true)
            .filter { !$0.elementsEqual([UInt8(ascii: ".")]) }
        return components.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/")
    }

    /// The offset of a member's data: after its header block and the extension headers before it.
    private static func dataStart(_ file: FileDescriptor, headerAt start: Int64, size: Int64, name: String) throws -> Int64 {
        var position = start
        var block = [UInt8](repeating: 0, count: 512)
        for _ in 0..<16 {
            let n = try block.withUnsafeMutableBytes { buffer in
                do throws(Errno) {
                    return try file.read(into: buffer, at: position)
                } catch {
                    throw ImageError("cannot read \(name): \(error)", errno: error)
                }
            }
            guard n == 512 else { break }
            let type = block[156]
            guard [UInt8(ascii: "x"), UInt8(ascii: "g"), UInt8(ascii: "L"), UInt8(ascii: "K")].contains(type) else {
                return position + 512
            }
            guard let length = tarNumber(block[124..<136]), length <= size else { break }
            position += 512 + (length + 511) / 512 * 512
        }
        throw ImageError("\(name): cannot find the data of the member at offset \(start)")
    }

    /// A tar numeric field: octal digits, or base-256 when the first byte's high bit is set.
    static func tarNumber(_ field: ArraySlice<UInt8>) -> Int64? {
        guard let first = field.first else { return nil }
        if first & 0x80 != 0 {
            var value: Int64 = Int64(first & 0x7f)
            for byte in field.dropFirst() {
                guard value <= (Int64.max >> 8) else { return nil }
                value = value << 8 | Int64(byte)
            }
            return value
        }
        var value: Int64 = 0
        var seen = false
        for byte in field {
            if byte == 0 || byte == UInt8(ascii: " ") {
                if seen { break } else { continue }
            }
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "7"), value <= (Int64.max >> 3) else { return nil }
            value = value << 3 | Int64(byte - UInt8(ascii: "0"))
            seen = true
        }
        return value
    }

    /// The regular member a name leads to, following symlinks and hard links inside the archive.
    private func member(_ name: String) throws -> ArchiveMember {
        var current = name
        for _ in 0..<8 {
            guard let member = members[current] else { throw ImageError("\(path) has no member \(current)", errno: .noSuchFileOrDirectory) }
            switch member.kind {
            case .file:
                return member
            case .symlink:
                let target = member.target ?? ""
                let base = target.hasPrefix("/") ? [] : current.split(separator: "/").dropLast().map(String.init)
                var parts: [String] = base
                for part in target.split(separator: "/") {
                    if part == "." { continue }
                    if part == ".." {
                        guard !parts.isEmpty else { throw ImageError("\(path): member \(name) leads outside the archive") }
                        parts.removeLast()
                    } else {
                        parts.append(String(part))
                    }
                }
                current = parts.joined(separator: "/")
            case .hardlink:
                current = Self.normalizedMemberName(Array((member.target ?? "").utf8))
            default:
                throw ImageError("\(path): member \(current) is not a file")
            }
        }
        throw ImageError("\(path): member \(name) is a chain of more than 8 links")
    }

    // MARK: Reading

    /// A file of the image by its path in the layout (`index.json`, `blobs/sha256/<hex>`).
    func region(named name: String) throws -> FileRegion {
        if let directory {
            let fd: FileDescriptor
            do {
                // Never open a fifo or device of the layout (see init): look at its kind first.
                let probe = try FileDescriptor.openBeneath(directory, name, [.path])
                let kind = try? probe.stat().kind
                probe.closeQuietly()
                guard kind == .regular else { throw ImageError("\(name) in \(path) is not a regular file", errno: .invalidArgument) }
                fd = try FileDescriptor.openBeneath(directory, name, [.readOnly, .nonBlocking])
            } catch let error as Errno {
                if error == .noSuchFileOrDirectory { throw ImageError("\(path) has no \(name)", errno: error) }
                // openat2's RESOLVE_BENEATH refuses a path that leaves the layout with EXDEV.
                if error == .improperLink { throw ImageError("\(name) in \(path) leads outside the image layout (a symlink?)", errno: .invalidArgument) }
                throw ImageError("cannot open \(name) in \(path): \(error)", errno: error)
            }
            let st: FileStat
            do {
                st = try fd.stat()
            } catch {
                fd.closeQuietly()
                throw ImageError("cannot examine \(name) in \(path): \(error)", errno: error)
            }
            guard st.kind == .regular else {
                fd.closeQuietly()
                throw ImageError("\(name) in \(path) is not a regular file")
            }
            return FileRegion(fd: fd, start: 0, length: st.size, name: name, ownsDescriptor: true)
        }
        let member = try member(name)
        return FileRegion(fd: archive!, start: member.dataOffset, length: member.size, name: name)
    }

    func readDocument(named name: String) throws -> [UInt8] {
        try region(named: name).readAll(limit: Self.maximumDocument)
    }

    static func blobName(_ digest: Digest) -> String { "blobs/sha256/\(digest.hex)" }

    /// A blob, checked against its descriptor's size (its digest is checked as it is read).
    func blob(_ descriptor: Descriptor, what: String) throws -> FileRegion {
        let digest = try Digest(descriptor.digest, what: what)
        let region = try region(named: Self.blobName(digest))
        guard region.length == descriptor.size else {
            throw ImageError("\(what) (\(digest)): the descriptor says \(descriptor.size) bytes, the blob has \(region.length)")
        }
        return region
    }

    /// A JSON blob, its digest and size checked.
    func document(_ descriptor: Descriptor, what: String) throws -> [UInt8] {
        let region = try blob(descriptor, what: what)
        let bytes = try region.readAll(limit: Self.maximumDocument)
        let found = region.digest()
        guard found == descriptor.digest else { throw digestMismatch(what: what, expected: descriptor.digest, found: found) }
        return bytes
    }
}

func digestMismatch(what: String, expected: String, found: String) -> ImageError {
    ImageError("\(what) (\(expected)): digest mismatch: the content hashes to \(found)")
}

/// A `sha256:<64 hex>` digest (the only algorithm accepted).
struct Digest: CustomStringConvertible {
    let hex: String

    init(_ text: String, what: String) throws {
        guard text.hasPrefix("sha256:") else {
            throw ImageError("\(what): unsupported digest \(text.prefix(80)) (only sha256 is supported)", errno: .invalidArgument)
        }
        let hex = String(text.dropFirst(7))
        guard hex.utf8.count == 64, hex.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) }) else {
            throw ImageError("\(what): malformed digest \(text.prefix(80))", errno: .invalidArgument)
        }
        self.hex = hex
    }

    var description: String { "sha256:" + hex }
}

func decodeJSON<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], what: String) throws -> T {
    do {
        return try JSONDecoder().decode(type, from: Data(bytes))
    } catch let error as DecodingError {
        throw ImageError("\(what) is not valid: \(describe(error))", errno: .invalidArgument)
    } catch {
        throw ImageError("\(what) is not valid JSON: \(error)", errno: .invalidArgument)
    }
}

private func describe(_ error: DecodingError) -> String {
    func path(_ context: DecodingError.Context) -> String {
        context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined()
    }
    switch error {
    case .keyNotFound(let key, let context): return "missing \(path(context)).\(key.stringValue)"
    case .typeMismatch(_, let context), .valueNotFound(_, let context): return "unexpected value at \(path(context)): \(context.debugDescription)"
    case .dataCorrupted(let context): return "\(context.debugDescription) \(path(context))"
    @unknown default: return "\(error)"
    }
}

// MARK: Documents

/// An OCI content descriptor.
struct Descriptor: Codable {
    var mediaType: String?
    var digest: String
    var size: Int64
    var platform: Platform?
    var annotations: [String: String]?
}

struct Platform: Codable, Equatable {
    var architecture: String
    var os: String
    var variant: String?

    var description: String { "\(os)/\(architecture)" + (variant.map { "/\($0)" } ?? "") }
}

/// An image index (OCI) or manifest list (Docker).
struct ImageIndex: Decodable {
    var mediaType: String?
    var manifests: [Descriptor]
}

/// An image manifest (OCI or Docker schema 2).
struct ImageManifest: Decodable {
    var mediaType: String?
    var config: Descriptor
    var layers: [Descriptor]
}

/// The parts of an image configuration the import needs.
struct ImageConfiguration: Decodable {
    struct RootFS: Decodable {
        var type: String
        var diff_ids: [String]
    }
    var architecture: String?
    var os: String?
    var variant: String?
    var rootfs: RootFS
}

/// An entry of a docker archive's manifest.json.
struct DockerArchiveEntry: Decodable {
    var Config: String
    var RepoTags: [String]?
    var Layers: [String]
}

enum MediaType {
    static let ociIndex = "application/vnd.oci.image.index.v1+json"
    static let dockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
    static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    static let ociConfig = "application/vnd.oci.image.config.v1+json"
    static let dockerConfig = "application/vnd.docker.container.image.v1+json"

    static func isIndex(_ type: String?) -> Bool { type == ociIndex || type == dockerList }
    static func isManifest(_ type: String?) -> Bool { type == ociManifest || type == dockerManifest }

    /// The compression a layer media type announces; nil for media types that are not layers.
    static func layerCompression(_ type: String?) -> Compression?? {
        switch type {
        case "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.nondistributable.v1.tar":
            return .some(Compression.none)
        case "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip":
            return .some(.gzip)
        case "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":
            return .some(.zstd)
        // Docker's media types say gzip, but `docker save` of Docker 25 and later stores them
        // uncompressed: the data decides.
        case "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
            return .some(nil)
        default:
            return nil
        }
    }
}
