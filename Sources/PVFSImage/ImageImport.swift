import Foundation
import Glibc
import Logging
import PVFSStore
import PVFSSystem
import SystemPackage

// `pvfs-template create NAME --from-oci PATH`: one pass over each layer, in order. The layer
// blob is read once: hashed as stored (the manifest's digest), decompressed by one libarchive
// reader, hashed again uncompressed (the configuration's diff_id) and parsed as tar by a second
// reader. Each regular file's content goes straight into the store's staging area as it is
// read; the layer's changes are then applied to an in-memory tree. When every layer checked
// out, the merged tree is handed to the store as a template.

/// What an image import produced.
public struct ImageImport: Sendable {
    public var template: IngestReport
    public var image: TemplateImageRecord
    /// Seconds spent reading layers (decompressing, hashing, staging content).
    public var layerSeconds: Double
}

/// The largest file a layer may hold. Content is named by its SHA-256, holes hashed as zeros,
/// so a sparse file claiming terabytes would cost hours of hashing: 64 GiB take about a minute.
let maximumFileSize: Int64 = 64 << 30

extension Store {
    /// Imports the image at `path` (an OCI layout directory, an OCI archive or a docker archive)
    /// as the template `name`. Every digest is checked; on any failure nothing is kept.
    /// `progress` gets the layer bytes read since its last call and the layers' total.
    public func createTemplate(name: String, fromImage path: String, selection: ImageSelection = ImageSelection(),
                               options: IngestOptions = IngestOptions(), progress: (@Sendable (_ bytes: Int64, _ total: Int64) -> Void)? = nil,
                               cancellation: IngestCancellation? = nil) throws -> ImageImport {
        try Self.validateName(name, what: "template")
        var scratch: ScratchDirectory?
        defer { try? scratch?.remove() }
        let source = try ImageSource(path: path) {
            let directory = try ScratchDirectory(store: self, kind: "image")
            scratch = directory
            do throws(Errno) {
                return try FileDescriptor.open(at: .currentDirectory, directory.path + "/archive.tar", [.readWrite, .create, .exclusive], mode: 0o600)
            } catch {
                throw PVFSError(.store, "cannot create \(directory.path)/archive.tar: \(error)", errno: error)
            }
        }
        let image = try source.resolve(selection)
        let regions = try image.layers.map { layer in
            do {
                if let size = layer.blobSize, let digest = layer.blobDigest {
                    return try source.blob(Descriptor(mediaType: nil, digest: digest, size: size), what: "layer \(layer.number)")
                }
                return try source.region(named: layer.name)
            } catch let error as ImageError {
                throw ImageError("layer \(layer.number): \(error.message)", errno: error.errno)
            }
        }
        let total = regions.reduce(Int64(0)) { $0 + $1.length }
        if let progress {
            for region in regions { region.progress = { (bytes: Int) in progress(Int64(bytes), total) } }
        }
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let identity = image.manifestDigest ?? image.configDigest
        var ingestOptions = options
        ingestOptions.sourceLabel = nil
        let ingest = try beginStreamedTemplate(name: name, source: "\(image.format.rawValue):\(absolute)@\(identity)", options: ingestOptions,
                                               cancellation: cancellation)
        do {
            let started = monotonicNanoseconds()
            let tree = ImageTree()
            for (layer, region) in zip(image.layers, regions) {
                let changes = try readLayer(layer, region, into: ingest, cancellation: cancellation)
                try tree.apply(layer: layer.number, changes)
            }
            let layerSeconds = Double(monotonicNanoseconds() - started) / 1e9
            let record = TemplateImageRecord(format: image.format.rawValue, manifestDigest: image.manifestDigest, configDigest: image.configDigest,
                                             platform: image.platform, layers: image.layers.count, config: image.config)
            let report = try ingest.finish(tree: try tree.streamedTree(), image: record)
            return ImageImport(template: report, image: record, layerSeconds: layerSeconds)
        } catch {
            ingest.abandon()
            if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted; nothing of template \(name) was kept", errno: .interrupted) }
            throw error
        }
    }

    /// Reads one layer: stages its files' content and returns its changes, once both of its
    /// digests checked out.
    private func readLayer(_ layer: LayerReference, _ region: FileRegion, into ingest: StreamedTemplateIngest,
                           cancellation: IngestCancellation?) throws -> [LayerChange] {
        let what = "layer \(layer.number)" + (layer.blobDigest.map { " (\($0))" } ?? " (\(layer.name))")
        do {
            var compression = Compression.detect(try region.peek(8))
            // "BZh" is a weak magic number: a tar whose first name starts with it is still a tar
            // when the media type says uncompressed.
            if layer.announcedCompression == Compression.none && compression == .bzip2 { compression = .none }
            if let announced = layer.announcedCompression, announced != compression {
                throw ImageError("its media type says \(announced == .none ? "uncompressed" : announced.rawValue), the data is "
                                 + (compression == .none ? "not compressed" : compression.rawValue), errno: .invalidArgument)
            }
            var decompressed: DecompressedStream?
            if compression != .none {
                decompressed = try DecompressedStream(try ArchiveReader(input: region, format: .raw(compression)))
            }
            let tar: ArchiveReader
            do {
                tar = try ArchiveReader(input: decompressed ?? region, format: .tar)
            } catch let error as ImageError {
                // An empty stream is an empty layer.
                if (decompressed?.length ?? region.position) == 0 {
                    try verify(layer, region, decompressed, cancellation: cancellation)
                    return []
                }
                throw error
            }
            var changes: [LayerChange] = []
            while let header = try tar.nextHeader() {
                if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted", errno: .interrupted) }
                // A layer's changes are held until it is verified: bound them as the tree is bound.
                guard changes.count < ImageTree.maximumNodes else {
                    throw ImageError("more than \(ImageTree.maximumNodes) entries in one layer", errno: .invalidArgument)
                }
                guard var change = try classify(header) else { continue }
                if case .entry(let path, let header, nil) = change, header.kind == .regular || header.kind == .hardlink, header.size > 0 {
                    guard header.size <= maximumFileSize else {
                        throw ImageError("entry \(displayBytes(header.path)) claims \(header.size) bytes, more than the 64 GiB a file in an image may have",
                                         errno: .fileTooLarge)
                    }
                    var blocks = EntryBlocks(reader: tar)
                    let content: StagedContent
                    do {
                        content = try ingest.stageContent(size: header.size, from: &blocks)
                    } catch let error as PVFSError where error.errno == .invalidArgument || error.errno == .ioError {
                        throw ImageError("entry \(displayBytes(header.path)): \(error.message)", errno: error.errno)
                    }
                    change = .entry(path: path, header: header, content: content)
                }
                changes.append(change)
            }
            try verify(layer, region, decompressed, cancellation: cancellation)
            return changes
        } catch let error as ImageError {
            // A blob that does not match its digest explains any error reading it: say so.
            throw ImageError("\(what): \(blobMismatch(layer, region) ?? error.message)", errno: error.errno)
        }
    }

    /// "digest mismatch: …" when the layer's blob, read to its end, is not what the manifest says.
    private func blobMismatch(_ layer: LayerReference, _ region: FileRegion) -> String? {
        guard let expected = layer.blobDigest, (try? region.drain()) != nil else { return nil }
        let found = region.digest()
        return found == expected ? nil : "digest mismatch: the blob hashes to \(found)"
    }

    /// Reads what the tar reader left of the layer (padding after the end-of-archive blocks),
    /// then checks the blob's digest and the uncompressed stream's diff_id.
    private func verify(_ layer: LayerReference, _ region: FileRegion, _ decompressed: DecompressedStream?,
                        cancellation: IngestCancellation?) throws {
        // What follows the tar's end is hashed too; it may be long (data after the end-of-archive
        // blocks), so Ctrl-C is heard here as well.
        while let decompressed, try decompressed.nextChunk().count > 0 {
            if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted", errno: .interrupted) }
        }
        while try region.nextChunk().count > 0 {
            if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted", errno: .interrupted) }
        }
        let blobDigest = region.digest()
        if let expected = layer.blobDigest, expected != blobDigest {
            throw ImageError("digest mismatch: the blob hashes to \(blobDigest)")
        }
        let diffID = decompressed?.digest() ?? blobDigest
        guard diffID == layer.diffID else {
            throw ImageError("diff_id mismatch: the configuration says \(layer.diffID), the uncompressed layer hashes to \(diffID)")
        }
    }
}
