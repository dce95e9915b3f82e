import CArchive
import Foundation
import Glibc
import PVFSSystem
import PVFSTestSupport
import SystemPackage
@testable import PVFSStore

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// One entry of a hand-built layer tar.
struct TarEntry {
    enum Kind {
        case file([UInt8])
        /// A file of `size` bytes whose data is only the given segments (pax sparse).
        case sparse(size: Int64, segments: [(offset: Int64, bytes: [UInt8])])
        case directory
        case symlink(String)
        case hardlink(String)
        case characterDevice(major: UInt64, minor: UInt64)
        case blockDevice(major: UInt64, minor: UInt64)
        case fifo
    }

    var path: String
    var kind: Kind
    var mode: UInt32 = 0o644
    var uid: Int64 = 0
    var gid: Int64 = 0
    var mtime: (seconds: Int, nanoseconds: Int) = (1_700_000_000, 0)
    var xattrs: [(String, [UInt8])] = []

    static func file(_ path: String, _ text: String, mode: UInt32 = 0o644) -> TarEntry {
        TarEntry(path: path, kind: .file(Array(text.utf8)), mode: mode)
    }
    static func dir(_ path: String, mode: UInt32 = 0o755) -> TarEntry { TarEntry(path: path, kind: .directory, mode: mode) }
    static func symlink(_ path: String, _ target: String) -> TarEntry { TarEntry(path: path, kind: .symlink(target), mode: 0o777) }
    static func hardlink(_ path: String, _ target: String) -> TarEntry { TarEntry(path: path, kind: .hardlink(target)) }
}

/// A pax tar of `entries`, written by libarchive (as image tools write layers).
func makeTar(_ entries: [TarEntry]) throws -> [UInt8] {
    let directory = try TemporaryDirectory("pvfs-tar")
    let path = directory.sub("layer.tar")
    guard let archive = archive_write_new() else { throw FixtureError("archive_write_new") }
    defer { archive_write_free(archive) }
    archive_write_set_format_pax(archive)
    guard archive_write_open_filename(archive, path) == ARCHIVE_OK else { throw FixtureError(String(cString: archive_error_string(archive))) }
    for item in entries {
        let entry = archive_entry_new()!
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname(entry, item.path)
        archive_entry_set_perm(entry, mode_t(item.mode))
        archive_entry_set_uid(entry, item.uid)
        archive_entry_set_gid(entry, item.gid)
        archive_entry_set_mtime(entry, time_t(item.mtime.seconds), item.mtime.nanoseconds)
        for (name, value) in item.xattrs {
            value.withUnsafeBytes { archive_entry_xattr_add_entry(entry, name, $0.baseAddress, $0.count) }
        }
        var data: [UInt8] = []
        var sparseData: [(Int64, [UInt8])] = []
        switch item.kind {
        case .file(let bytes):
            archive_entry_set_filetype(entry, 0o100000)
            archive_entry_set_size(entry, Int64(bytes.count))
            data = bytes
        case .sparse(let size, let segments):
            archive_entry_set_filetype(entry, 0o100000)
            archive_entry_set_size(entry, size)
            for segment in segments { archive_entry_sparse_add_entry(entry, segment.offset, Int64(segment.bytes.count)) }
            sparseData = segments.map { ($0.offset, $0.bytes) }
        case .directory:
            archive_entry_set_filetype(entry, 0o040000)
        case .symlink(let target):
            archive_entry_set_filetype(entry, 0o120000)
            archive_entry_set_symlink(entry, target)
        case .hardlink(let target):
            archive_entry_set_filetype(entry, 0o100000)
            archive_entry_set_hardlink(entry, target)
            archive_entry_set_size(entry, 0)
        case .characterDevice(let major, let minor):
            archive_entry_set_filetype(entry, 0o020000)
            archive_entry_set_rdevmajor(entry, dev_t(major))
            archive_entry_set_rdevminor(entry, dev_t(minor))
        case .blockDevice(let major, let minor):
            archive_entry_set_filetype(entry, 0o060000)
            archive_entry_set_rdevmajor(entry, dev_t(major))
            archive_entry_set_rdevminor(entry, dev_t(minor))
        case .fifo:
            archive_entry_set_filetype(entry, 0o010000)
        }
        guard archive_write_header(archive, entry) == ARCHIVE_OK else { throw FixtureError(String(cString: archive_error_string(archive))) }
        if !data.isEmpty {
            _ = data.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, $0.count) }
        }
        // libarchive's pax writer takes a sparse file's whole content and skips the holes.
        var written: Int64 = 0
        let zeros = [UInt8](repeating: 0, count: 1 << 16)
        func writeZeros(upTo end: Int64) {
            while written < end {
                let n = Int(min(Int64(zeros.count), end - written))
                _ = zeros.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, n) }
                written += Int64(n)
            }
        }
        for (offset, bytes) in sparseData {
            writeZeros(upTo: offset)
            _ = bytes.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, $0.count) }
            written += Int64(bytes.count)
        }
        if case .sparse(let size, _) = item.kind { writeZeros(upTo: size) }
    }
    archive_write_close(archive)
    return try Array(Data(contentsOf: URL(fileURLWithPath: path)))
}

/// A ustar header for a regular file claiming `size` bytes (base-256 when it does not fit the
/// octal field), followed by `data` and the end-of-archive blocks: a layer that lies.
func lyingTar(name: String, size: Int64, data: [UInt8] = []) -> [UInt8] {
    var header = [UInt8](repeating: 0, count: 512)
    func put(_ text: String, at offset: Int) { for (i, byte) in text.utf8.enumerated() { header[offset + i] = byte } }
    put(name, at: 0)
    put("0000644", at: 100)
    put("0000000", at: 108)
    put("0000000", at: 116)
    if size < 1 << 33 {
        put(String(size, radix: 8).leftPadded(11), at: 124)
    } else {
        header[124] = 0x80
        for i in 0..<8 { header[135 - i] = UInt8(truncatingIfNeeded: size >> (8 * i)) }
    }
    put("14543347400", at: 136)
    header[156] = UInt8(ascii: "0")
    put("ustar", at: 257)
    put("00", at: 263)
    for i in 148..<156 { header[i] = UInt8(ascii: " ") }
    let checksum = header.reduce(0) { $0 + Int($1) }
    put(String(checksum, radix: 8).leftPadded(6), at: 148)
    header[154] = 0
    var padded = data
    if padded.count % 512 != 0 { padded += [UInt8](repeating: 0, count: 512 - padded.count % 512) }
    return header + padded + [UInt8](repeating: 0, count: 1024)
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}

/// Runs a program with `input` on stdin and returns its stdout.
func filter(_ program: String, _ arguments: [String], _ input: [UInt8]) throws -> [UInt8] {
    let directory = try TemporaryDirectory("pvfs-filter")
    let inPath = directory.sub("in"), outPath = directory.sub("out")
    try Data(input).write(to: URL(fileURLWithPath: inPath))
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", "\"$0\" \"$@\" < '\(inPath)' > '\(outPath)'", program] + arguments
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw FixtureError("\(program) failed") }
    return try Array(Data(contentsOf: URL(fileURLWithPath: outPath)))
}

func sha256(_ bytes: [UInt8]) -> String { "sha256:" + SHA256Hasher.hash(bytes).hex }

/// Builds an OCI image layout by hand: blobs, manifests, configs and the index.
final class LayoutBuilder {
    enum LayerCompression { case none, gzip, zstd }

    struct Layer {
        var blob: [UInt8]
        var digest: String
        var diffID: String
        var mediaType: String
    }

    let path: String
    private(set) var manifests: [[String: Any]] = []

    init(at path: String) throws {
        self.path = path
        try FileManager.default.createDirectory(atPath: path + "/blobs/sha256", withIntermediateDirectories: true)
        try write("oci-layout", Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
    }

    func write(_ name: String, _ bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path + "/" + name))
    }

    @discardableResult
    func addBlob(_ bytes: [UInt8]) throws -> String {
        let digest = sha256(bytes)
        try write("blobs/sha256/" + digest.dropFirst(7), bytes)
        return digest
    }

    func blobPath(_ digest: String) -> String { path + "/blobs/sha256/" + digest.dropFirst(7) }

    func layer(_ entries: [TarEntry], _ compression: LayerCompression = .gzip) throws -> Layer {
        try layer(tar: try makeTar(entries), compression)
    }

    func layer(tar: [UInt8], _ compression: LayerCompression = .gzip) throws -> Layer {
        let blob: [UInt8]
        let mediaType: String
        switch compression {
        case .none:
            blob = tar
            mediaType = "application/vnd.oci.image.layer.v1.tar"
        case .gzip:
            blob = try filter("gzip", ["-n", "-c"], tar)
            mediaType = "application/vnd.oci.image.layer.v1.tar+gzip"
        case .zstd:
            blob = try filter("zstd", ["-q", "-c"], tar)
            mediaType = "application/vnd.oci.image.layer.v1.tar+zstd"
        }
        let digest = try addBlob(blob)
        return Layer(blob: blob, digest: digest, diffID: sha256(tar), mediaType: mediaType)
    }

    /// The config JSON of an image with these layers.
    func config(_ layers: [Layer], architecture: String = "amd64", os: String = "linux", extra: [String: Any] = [:]) throws -> [UInt8] {
        var object: [String: Any] = [
            "architecture": architecture, "os": os,
            "rootfs": ["type": "layers", "diff_ids": layers.map(\.diffID)],
            "config": ["Entrypoint": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin", "FOO=bar"], "WorkingDir": "/srv",
                       "ExposedPorts": ["80/tcp": [String: Any]()], "Labels": ["org.example.role": "test"]],
            "history": [["created_by": "hand"]],
        ]
        for (key, value) in extra { object[key] = value }
        return Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }

    /// Adds an image (config + manifest blobs) and returns the manifest's descriptor.
    @discardableResult
    func image(_ layers: [Layer], architecture: String = "amd64", reference: String? = nil, platformInIndex: Bool = false,
               config configBytes: [UInt8]? = nil, addToIndex: Bool = true) throws -> [String: Any] {
        let config = try configBytes ?? self.config(layers, architecture: architecture)
        let configDigest = try addBlob(config)
        let manifest: [String: Any] = [
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": ["mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": config.count],
            "layers": layers.map { ["mediaType": $0.mediaType, "digest": $0.digest, "size": $0.blob.count] },
        ]
        let bytes = Array(try JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys]))
        let digest = try addBlob(bytes)
        var descriptor: [String: Any] = ["mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": bytes.count]
        if let reference { descriptor["annotations"] = ["org.opencontainers.image.ref.name": reference] }
        if platformInIndex { descriptor["platform"] = ["architecture": architecture, "os": "linux"] }
        if addToIndex { manifests.append(descriptor) }
        return descriptor
    }

    /// Adds a nested index of `descriptors` to the top-level index.
    func nestedIndex(_ descriptors: [[String: Any]], reference: String? = nil) throws {
        let index: [String: Any] = ["schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descriptors]
        let bytes = Array(try JSONSerialization.data(withJSONObject: index, options: [.sortedKeys]))
        let digest = try addBlob(bytes)
        var descriptor: [String: Any] = ["mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": bytes.count]
        if let reference { descriptor["annotations"] = ["org.opencontainers.image.ref.name": reference] }
        manifests.append(descriptor)
    }

    func writeIndex() throws {
        let index: [String: Any] = ["schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests]
        try write("index.json", Array(try JSONSerialization.data(withJSONObject: index, options: [.sortedKeys])))
    }

    /// A one-image layout of `layers`, ready to import.
    static func single(at path: String, _ layers: [[TarEntry]], compression: LayerCompression = .gzip) throws -> LayoutBuilder {
        let builder = try LayoutBuilder(at: path)
        try builder.image(try layers.map { try builder.layer($0, compression) })
        try builder.writeIndex()
        return builder
    }
}

/// A template's tree as path → description, read from the catalog.
struct TemplateEntry: Equatable, CustomStringConvertible {
    var mode: UInt32
    var uid: Int64
    var gid: Int64
    var nlink: Int64
    var size: Int64
    var mtime: Int64
    var rdev: Int64
    var content: [UInt8]?
    var symlink: String?
    var xattrs: [String: [UInt8]]
    var ino: Int64

    var description: String {
        "mode \(String(mode, radix: 8)) \(uid):\(gid) nlink \(nlink) size \(size) mtime \(mtime) rdev \(rdev) ino \(ino)"
            + (symlink.map { " -> \($0)" } ?? "") + (content.map { " \"\(String(decoding: $0.prefix(40), as: UTF8.self))\"" } ?? "")
            + (xattrs.isEmpty ? "" : " xattrs \(xattrs.keys.sorted())")
    }
}

extension Store {
    /// Every path of a template with its attributes and content.
    func tree(of name: String) throws -> [String: TemplateEntry] {
        let template = try requireTemplate(named: name)
        return try CatalogSQL(catalog).read { db in
            var inodes: [Int64: TemplateEntry] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT i.ino, i.mode, i.uid, i.gid, i.nlink, i.size, i.mtime_ns, i.rdev, b.hash, i.symlink_target
                FROM template_inode i LEFT JOIN blob b ON b.id = i.blob_id WHERE i.template_id = ?
                """, arguments: [template.id]) {
                var content: [UInt8]?
                if let hashBytes = row[8] as Data?, let hash = BlobHash(bytes: [UInt8](hashBytes)) {
                    content = try [UInt8](Data(contentsOf: URL(fileURLWithPath: self.path + "/blobs/" + StoreLayout.blobPath(hash))))
                } else if UInt32(row[1] as Int64) & 0o170000 == 0o100000 {
                    content = []
                }
                inodes[row[0]] = TemplateEntry(mode: UInt32(row[1] as Int64), uid: row[2], gid: row[3], nlink: row[4], size: row[5], mtime: row[6],
                                               rdev: row[7], content: content, symlink: (row[9] as Data?).map { String(decoding: $0, as: UTF8.self) },
                                               xattrs: [:], ino: row[0])
            }
            for row in try Row.fetchAll(db, sql: "SELECT ino, name, value FROM template_xattr WHERE template_id = ?", arguments: [template.id]) {
                inodes[row[0]]?.xattrs[String(decoding: row[1] as Data, as: UTF8.self)] = [UInt8](row[2] as Data)
            }
            var names: [Int64: [(parent: Int64, name: String)]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT parent, name, ino FROM template_dirent WHERE template_id = ?", arguments: [template.id]) {
                names[row[2], default: []].append((row[0], String(decoding: row[1] as Data, as: UTF8.self)))
            }
            var parents: [Int64: (Int64, String)] = [:]
            for (ino, list) in names where (inodes[ino]?.mode ?? 0) & 0o170000 == 0o040000 { parents[ino] = list[0] }
            func pathOf(_ dir: Int64) -> String {
                guard dir != 1, let (parent, name) = parents[dir] else { return "" }
                return pathOf(parent) + "/" + name
            }
            var result: [String: TemplateEntry] = ["/": inodes[1]!]
            for (ino, list) in names {
                for (parent, name) in list { result[pathOf(parent) + "/" + name] = inodes[ino] }
            }
            return result
        }
    }

    func blobCount() throws -> Int {
        try CatalogSQL(catalog).read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM blob") ?? 0 }
    }

    func fsckFindings() throws -> [FsckFinding] {
        var report = FsckReport(repair: false, quick: false)
        try checkStore(FsckOptions(), into: &report)
        return report.findings
    }
}

import GRDB
