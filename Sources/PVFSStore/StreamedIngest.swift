import Dispatch
import Foundation
import GRDB
import Glibc
import PVFSSystem
import Synchronization
import SystemPackage

// Ingest of a tree whose file content arrives as streams rather than as files of a directory:
// the layers of a container image. The caller stages every file's content as it reads it
// (`stageContent`), in any order and possibly more than once per path (a later layer replaces a
// file), then describes the final tree (`finish`), whose inodes name the staged content they
// use. Content is published as blobs in batches while staging goes on; the blobs lock is held
// shared from the first staging to the commit of the template's rows, because blobs published
// here are referenced only by those rows. docs/templates.md ("OCI images") and
// docs/store-format.md ("Publication") describe the protocol.

/// An extended attribute of a streamed tree's inode.
public struct TreeExtendedAttribute: Sendable, Equatable {
    public var name: [UInt8]
    public var value: [UInt8]

    public init(name: [UInt8], value: [UInt8]) {
        self.name = name
        self.value = value
    }
}

/// Content a streamed ingest staged; inodes of the final tree refer to it.
public struct StagedContent: Hashable, Sendable {
    let index: Int
}

/// One inode of a streamed tree, as the catalog will hold it.
public struct StreamedInode: Sendable {
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Names in the tree for a non-directory; 2 + subdirectories for a directory.
    public var nlink: UInt32
    public var size: Int64
    public var atime: Int64
    public var mtime: Int64
    public var ctime: Int64
    public var rdev: UInt64
    public var symlinkTarget: [UInt8]?
    public var xattrs: [TreeExtendedAttribute]
    /// The content of a regular file with a size above 0.
    public var content: StagedContent?

    public init(mode: UInt32, uid: UInt32, gid: UInt32, nlink: UInt32, size: Int64, atime: Int64, mtime: Int64, ctime: Int64,
                rdev: UInt64 = 0, symlinkTarget: [UInt8]? = nil, xattrs: [TreeExtendedAttribute] = [], content: StagedContent? = nil) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = nlink
        self.size = size
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
        self.rdev = rdev
        self.symlinkTarget = symlinkTarget
        self.xattrs = xattrs
        self.content = content
    }

    var kind: FileKind { FileKind(mode: mode) ?? .regular }
}

/// A directory entry of a streamed tree.
public struct StreamedEntry: Sendable {
    public var parent: Int64
    public var name: [UInt8]
    public var ino: Int64

    public init(parent: Int64, name: [UInt8], ino: Int64) {
        self.parent = parent
        self.name = name
        self.ino = ino
    }
}

/// The final tree of a streamed ingest: `inodes[i]` is inode i + 1, the root (1) a directory.
/// Numbering in pre-order with names sorted, as a directory ingest does, gives a tree the same
/// numbers whichever way it was ingested.
public struct StreamedTree: Sendable {
    public var inodes: [StreamedInode]
    public var entries: [StreamedEntry]

    public init(inodes: [StreamedInode], entries: [StreamedEntry]) {
        self.inodes = inodes
        self.entries = entries
    }
}

/// A file's content as blocks of bytes at offsets, in increasing order; what lies between
/// blocks (and after the last, up to the file's size) is a hole.
public protocol ContentBlocks {
    /// The next block, nil at the end. The bytes stay valid until the next call.
    mutating func next() throws -> (bytes: UnsafeRawBufferPointer, offset: Int64)?
}

/// Where a template came from when it was made from a container image: kept with the template
/// (`template_image`) and shown by `pvfs-template show`.
public struct TemplateImageRecord: Sendable, Equatable {
    /// `oci-layout`, `oci-archive` or `docker-archive`.
    public var format: String
    /// `sha256:...` of the image manifest; nil for a docker archive, which has none.
    public var manifestDigest: String?
    /// `sha256:...` of the image configuration.
    public var configDigest: String
    /// `os/architecture[/variant]`.
    public var platform: String
    public var layers: Int
    /// The image configuration (JSON), exactly as the image holds it.
    public var config: [UInt8]

    public init(format: String, manifestDigest: String?, configDigest: String, platform: String, layers: Int, config: [UInt8]) {
        self.format = format
        self.manifestDigest = manifestDigest
        self.configDigest = configDigest
        self.platform = platform
        self.layers = layers
        self.config = config
    }
}

extension Store {
    /// Starts a streamed ingest of the template `name` (state 'building' until `finish`).
    public func beginStreamedTemplate(name: String, source: String, options: IngestOptions = IngestOptions(),
                                      cancellation: IngestCancellation? = nil) throws -> StreamedTemplateIngest {
        try Self.validateName(name, what: "template")
        return try StreamedTemplateIngest(store: self, name: name, source: source, options: options, cancellation: cancellation)
    }

    /// The image a template was made from, nil for other templates.
    public func templateImage(_ template: TemplateRecord) throws -> TemplateImageRecord? {
        try catalog.read { db in
            try Row.fetchOne(db, sql: """
                SELECT format, manifest_digest, config_digest, platform, layers, config FROM template_image WHERE template_id = ?
                """, arguments: [template.id]).map {
                TemplateImageRecord(format: $0[0], manifestDigest: $0[1], configDigest: $0[2], platform: $0[3], layers: $0[4],
                                    config: [UInt8]($0[5] as Data))
            }
        }
    }
}

/// One streamed ingest; used by one thread. Call `finish` or `abandon` exactly once.
public final class StreamedTemplateIngest: @unchecked Sendable {
    public let name: String
    public let source: String
    let store: Store
    let area: StagingArea
    let templateID: Int64
    let options: IngestOptions
    let cancellation: IngestCancellation?
    private let started = monotonicNanoseconds()
    private var blobsLock: LockFile?
    private let shards: ShardDirectories
    private let buffer = StagingBuffer()
    private let lookup: DatabaseQueue
    private var done = false

    /// Every staging call's result, by `StagedContent.index`.
    private var contents: [(hash: BlobHash, size: Int64, dataBytes: Int64, staged: Bool)] = []
    /// Hashes staged (or found in the store) so far: repeated content is not staged again.
    private var claimed = Set<BlobHash>()
    private var knownBefore = 0

    private var batch: [StagedBlob] = []
    private var batchBytes: Int64 = 0
    private let batchLimit: Int
    private let committer = DispatchQueue(label: "pvfs.ingest.commit")
    private let slots = DispatchSemaphore(value: 1)
    private let pending = DispatchGroup()
    private let failure = Mutex<(any Error)?>(nil)
    private let statistics = Mutex(PublicationStatistics())

    init(store: Store, name: String, source: String, options: IngestOptions, cancellation: IngestCancellation?) throws {
        self.store = store
        self.name = name
        self.source = source
        self.options = options
        self.cancellation = cancellation
        shards = ShardDirectories(blobs: store.blobsDirectory)
        batchLimit = IngestRun.batchFilesWithinDescriptorLimit(options.batchFiles)
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(30)
        configuration.label = "pvfs.ingest.lookup"
        lookup = try DatabaseQueue(path: store.catalogPath, configuration: configuration)
        area = try StagingArea(store: store)
        do {
            templateID = try store.beginTemplate(name: name, token: area.token, source: source)
            blobsLock = try store.lockBlobsShared()
        } catch {
            store.abandon(area)
            throw error
        }
    }

    private var failed: Bool { failure.withLock { $0 != nil } }

    private func checkState() throws {
        precondition(!done, "streamed ingest used after finish or abandon")
        if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted", errno: .interrupted) }
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// Reads one file's content of `size` bytes (> 0) from `blocks`, hashes it and stages it
    /// unless the store or this ingest has it already. Throws when the blocks overlap, go
    /// backwards or reach past `size`.
    public func stageContent(size: Int64, from blocks: inout some ContentBlocks) throws -> StagedContent {
        try checkState()
        guard size > 0 else { throw PVFSError(.store, "content of size \(size) cannot be staged", errno: .invalidArgument) }
        let result: (StagedBlob, Int64)
        do {
            result = size <= Int64(buffer.bytes.count) ? try stageInMemory(size: size, &blocks) : try stageByWriting(size: size, &blocks)
        } catch let error as Errno {
            switch error {
            case .noSpace, .diskQuotaExceeded: throw PVFSError(.store, "no space left in the store's filesystem (\(store.path))", errno: error)
            default: throw PVFSError(.store, "cannot stage content in \(store.path)/tmp: \(error)", errno: error)
            }
        }
        let (blob, dataBytes) = result
        let index = contents.count
        contents.append((blob.hash, size, dataBytes, blob.file != nil))
        if blob.file == nil {
            knownBefore += 1
        } else {
            batch.append(blob)
            batchBytes += size
            if batch.count >= batchLimit || batchBytes >= options.batchBytes { submitBatch() }
        }
        return StagedContent(index: index)
    }

    /// Blocks are checked as they come: in order, without overlap, within the size.
    private struct BlockCursor {
        let size: Int64
        var position: Int64 = 0
        var dataBytes: Int64 = 0

        mutating func accept(_ count: Int, at offset: Int64) throws {
            guard offset >= position, offset <= size, Int64(count) <= size - offset else {
                if offset < position { throw PVFSError(.store, "content blocks overlap or go backwards (offset \(offset) after \(position))") }
                throw PVFSError(.store, "content runs past its size of \(size) bytes (block at \(offset) of \(count) bytes)")
            }
            position = offset + Int64(count)
            dataBytes += Int64(count)
        }
    }

    private func stageInMemory(size: Int64, _ blocks: inout some ContentBlocks) throws -> (StagedBlob, Int64) {
        let length = Int(size)
        let memory = UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<length])
        memory.initializeMemory(as: UInt8.self, repeating: 0)
        var cursor = BlockCursor(size: size)
        while let (bytes, offset) = try blocks.next() {
            try cursor.accept(bytes.count, at: offset)
            if bytes.count > 0 {
                UnsafeMutableRawBufferPointer(rebasing: memory[Int(offset)..<Int(offset) + bytes.count]).copyMemory(from: bytes)
            }
        }
        var hasher = SHA256Hasher()
        hasher.update(UnsafeRawBufferPointer(memory))
        let hash = hasher.finalize()
        if try claim(hash) { return (StagedBlob(file: nil, hash: hash, size: size, allocated: 0), cursor.dataBytes) }
        let writer = try area.createStagedFile()
        do throws(Errno) {
            if cursor.dataBytes == size {
                try writer.fd.writeAll(UnsafeRawBufferPointer(memory), at: 0)
            } else {
                try writeSparse(UnsafeRawBufferPointer(memory), to: writer.fd)
            }
            let allocated = try writer.fd.stat().blocks * 512
            return (StagedBlob(file: writer.finish(), hash: hash, size: size, allocated: allocated), cursor.dataBytes)
        } catch {
            writer.abandon(in: area)
            throw error
        }
    }

    /// Writes a small file with holes: 4 KiB pages of zeros are left unwritten.
    private func writeSparse(_ memory: UnsafeRawBufferPointer, to fd: FileDescriptor) throws(Errno) {
        let page = 4096
        var start = 0
        while start < memory.count {
            let end = min(start + page, memory.count)
            let chunk = UnsafeRawBufferPointer(rebasing: memory[start..<end])
            if chunk.contains(where: { $0 != 0 }) { try fd.writeAll(chunk, at: Int64(start)) }
            start = end
        }
        try fd.truncate(size: Int64(memory.count))
    }

    private func stageByWriting(size: Int64, _ blocks: inout some ContentBlocks) throws -> (StagedBlob, Int64) {
        let writer = try area.createStagedFile()
        do {
            var hasher = SHA256Hasher()
            var cursor = BlockCursor(size: size)
            while let (bytes, offset) = try blocks.next() {
                if offset > cursor.position && offset <= size { hasher.updateZeros(count: offset - cursor.position) }
                try cursor.accept(bytes.count, at: offset)
                if bytes.count > 0 {
                    hasher.update(bytes)
                    try writer.fd.writeAll(bytes, at: offset)
                }
                if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted", errno: .interrupted) }
            }
            if cursor.position < size { hasher.updateZeros(count: size - cursor.position) }
            try writer.fd.truncate(size: size)
            let hash = hasher.finalize()
            if try claim(hash) {
                writer.abandon(in: area)
                return (StagedBlob(file: nil, hash: hash, size: size, allocated: 0), cursor.dataBytes)
            }
            let allocated = try writer.fd.stat().blocks * 512
            return (StagedBlob(file: writer.finish(), hash: hash, size: size, allocated: allocated), cursor.dataBytes)
        } catch {
            writer.abandon(in: area)
            throw error
        }
    }

    /// Whether content needs no staging: this ingest staged it already, or the store has it
    /// (and keeps it: the blobs lock is held shared until the template's rows are committed).
    private func claim(_ hash: BlobHash) throws -> Bool {
        if !claimed.insert(hash).inserted { return true }
        return try lookup.inDatabase { db in
            try Bool.fetchOne(db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM blob WHERE hash = ?)"),
                              arguments: [hash.bytes.databaseBlob]) ?? false
        }
    }

    /// Hands the current batch to the committer thread (one batch publishes while the next
    /// is staged).
    private func submitBatch() {
        guard !batch.isEmpty else { return }
        let staged = batch
        batch = []
        batchBytes = 0
        slots.wait()
        pending.enter()
        committer.async { [self] in
            defer {
                slots.signal()
                pending.leave()
            }
            guard !failed else {
                for blob in staged { area.discard(blob.file) }
                return
            }
            do {
                let stats = try store.publish(staged, from: area, shards: shards, rowsPerTransaction: IngestRun.rowsPerTransaction) { _, _, _ in }
                statistics.withLock { $0.add(stats) }
            } catch {
                failure.withLock { if $0 == nil { $0 = error } }
            }
        }
    }

    /// Publishes what is still staged, writes the tree's rows and the image record, and marks
    /// the template ready. Content staged but not used by the tree (replaced by a later layer)
    /// is deleted again when the blobs lock can be had briefly, else left to the janitor.
    public func finish(tree: StreamedTree, image: TemplateImageRecord? = nil) throws -> IngestReport {
        do {
            try checkState()
            submitBatch()
            pending.wait()
            try checkState()
            try validate(tree)
            let ids = try blobIDs(for: tree)
            let published = monotonicNanoseconds()
            try insertRows(tree, ids: ids)
            if let image { try insertImage(image) }
            var report = makeReport(tree)
            try store.finishTemplate(id: templateID, report: report, maxInode: Int64(tree.inodes.count))
            done = true
            blobsLock = nil
            let used = Set(tree.inodes.compactMap { $0.content?.index })
            let unused = contents.indices.contains { contents[$0].staged && !used.contains($0) }
            if unused {
                // The journal names every blob this ingest published; those the template does
                // not reference are deleted (the template is ready, so its rows stay).
                if (try? store.reclaimIngest(token: area.token, waitSeconds: 2)) != true {
                    store.logger.notice("content replaced by later layers is left for the janitor (the blobs lock is busy)")
                }
            } else {
                area.dispose()
            }
            let finished = monotonicNanoseconds()
            report.seconds = Double(finished - started) / 1e9
            store.logger.debug("streamed ingest of \(name): staging and publication \((published - started) / 1_000_000) ms, rows \((finished - published) / 1_000_000) ms")
            return report
        } catch {
            abandon()
            if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted; nothing of template \(name) was kept", errno: .interrupted) }
            throw error
        }
    }

    /// Removes everything this ingest did (staged files, published blobs no one else uses, the
    /// template's rows). Safe to call after a failed `finish`; does nothing after a good one.
    public func abandon() {
        guard !done else { return }
        done = true
        failure.withLock { if $0 == nil { $0 = PVFSError(.store, "abandoned", errno: .interrupted) } }
        for blob in batch { area.discard(blob.file) }
        batch = []
        pending.wait()
        // Reclaiming takes the blobs lock exclusively: ours must go first.
        blobsLock = nil
        store.abandon(area)
    }

    private func validate(_ tree: StreamedTree) throws {
        func bad(_ message: String) -> PVFSError { PVFSError(.store, "invalid tree for template \(name): \(message)", errno: .invalidArgument) }
        guard let root = tree.inodes.first, root.kind == .directory else { throw bad("inode 1 is not a directory") }
        let count = Int64(tree.inodes.count)
        for (index, inode) in tree.inodes.enumerated() {
            if let content = inode.content {
                guard inode.kind == .regular, content.index >= 0, content.index < contents.count,
                      contents[content.index].size == inode.size else {
                    throw bad("inode \(index + 1) names content that does not match it")
                }
            } else if inode.kind == .regular && inode.size != 0 {
                throw bad("regular file inode \(index + 1) of \(inode.size) bytes has no content")
            }
        }
        for entry in tree.entries {
            guard entry.parent >= 1, entry.parent <= count, entry.ino >= 2, entry.ino <= count,
                  tree.inodes[Int(entry.parent - 1)].kind == .directory else {
                throw bad("entry in \(entry.parent) → \(entry.ino) is out of range")
            }
            guard !entry.name.isEmpty, entry.name.count <= 255, !entry.name.contains(UInt8(ascii: "/")), !entry.name.contains(0),
                  entry.name != [UInt8(ascii: ".")], entry.name != [UInt8(ascii: "."), UInt8(ascii: ".")] else {
                throw bad("invalid name \(displayPath(entry.name)) in directory \(entry.parent)")
            }
        }
    }

    /// The blob id of every content the tree uses: published by this ingest, or in the store
    /// before (kept there by the shared blobs lock held since it was looked up).
    private func blobIDs(for tree: StreamedTree) throws -> [Int: Int64] {
        let used = Set(tree.inodes.compactMap { $0.content?.index })
        return try store.catalog.read { db in
            let statement = try db.cachedStatement(sql: "SELECT id FROM blob WHERE hash = ?")
            var ids: [Int: Int64] = [:]
            var byHash: [BlobHash: Int64] = [:]
            for index in used {
                let hash = contents[index].hash
                if let id = byHash[hash] {
                    ids[index] = id
                    continue
                }
                guard let id = try Int64.fetchOne(statement, arguments: [hash.bytes.databaseBlob]) else {
                    throw PVFSError(.store, "blob \(hash) is neither published nor in the catalog", errno: .ioError)
                }
                byHash[hash] = id
                ids[index] = id
            }
            return ids
        }
    }

    /// The tree's rows, in transactions of a few thousand rows each.
    private func insertRows(_ tree: StreamedTree, ids: [Int: Int64]) throws {
        let step = IngestRun.rowsPerTransaction
        for chunk in tree.inodes.indices.chunked(step) {
            try checkCancelled()
            try store.catalog.write { db in
                let statement = try db.cachedStatement(sql: IngestRun.insertInodeSQL)
                for index in chunk {
                    let r = tree.inodes[index]
                    var blocks: Int64 = 0
                    var blobID: Int64?
                    if let content = r.content {
                        blobID = ids[content.index]
                        blocks = (contents[content.index].dataBytes + 4095) / 4096 * 8
                    }
                    try statement.execute(arguments: [
                        templateID, Int64(index + 1), Int64(r.mode), Int64(r.uid), Int64(r.gid), Int64(r.nlink), r.size, blocks,
                        r.atime, r.mtime, r.ctime, Int64(bitPattern: r.rdev), blobID, r.symlinkTarget?.databaseBlob,
                    ])
                }
            }
        }
        for chunk in tree.entries.indices.chunked(step) {
            try checkCancelled()
            try store.catalog.write { db in
                let statement = try db.cachedStatement(sql: "INSERT INTO template_dirent (template_id, parent, name, ino) VALUES (?, ?, ?, ?)")
                for index in chunk {
                    let e = tree.entries[index]
                    try statement.execute(arguments: [templateID, e.parent, e.name.databaseBlob, e.ino])
                }
            }
        }
        var xattrs: [(ino: Int64, name: [UInt8], value: [UInt8])] = []
        for (index, inode) in tree.inodes.enumerated() {
            for x in inode.xattrs { xattrs.append((Int64(index + 1), x.name, x.value)) }
        }
        for chunk in xattrs.indices.chunked(step) {
            try checkCancelled()
            try store.catalog.write { db in
                let statement = try db.cachedStatement(sql: "INSERT INTO template_xattr (template_id, ino, name, value) VALUES (?, ?, ?, ?)")
                for index in chunk {
                    let x = xattrs[index]
                    try statement.execute(arguments: [templateID, x.ino, x.name.databaseBlob, x.value.databaseBlob])
                }
            }
        }
    }

    private func insertImage(_ image: TemplateImageRecord) throws {
        try store.catalog.write { db in
            try db.execute(sql: """
                INSERT INTO template_image (template_id, format, manifest_digest, config_digest, platform, layers, config)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [templateID, image.format, image.manifestDigest, image.configDigest, image.platform, image.layers,
                                 image.config.databaseBlob])
        }
    }

    private func checkCancelled() throws {
        if cancellation?.isCancelled == true { throw PVFSError(.store, "interrupted", errno: .interrupted) }
    }

    private func makeReport(_ tree: StreamedTree) -> IngestReport {
        var report = IngestReport(name: name, source: source, entries: tree.entries.count + 1, inodes: tree.inodes.count)
        for inode in tree.inodes {
            switch inode.kind {
            case .directory: report.directories += 1
            case .regular:
                report.regularFiles += 1
                let (sum, overflow) = report.logicalBytes.addingReportingOverflow(inode.size)
                report.logicalBytes = overflow ? .max : sum
            case .symlink: report.symlinks += 1
            case .characterDevice, .blockDevice: report.devices += 1
            case .fifo: report.fifos += 1
            case .socket: report.sockets += 1
            }
            if inode.kind != .directory && inode.nlink > 1 { report.extraHardlinks += Int(inode.nlink) - 1 }
            report.xattrs += inode.xattrs.count
        }
        let stats = statistics.withLock { $0 }
        report.newBlobs = stats.newBlobs
        report.newBlobBytes = stats.newBytes
        report.reusedContent = knownBefore + stats.reused
        report.copyMethod = .copy
        return report
    }
}
