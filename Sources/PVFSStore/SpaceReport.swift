import Foundation
import GRDB
import PVFSSystem
import SystemPackage

/// Where a store's space goes (`pvfs df`, docs/janitor.md "Space report").
public struct SpaceReport: Codable, Sendable {
    public struct TemplateSpace: Codable, Sendable {
        public var name: String
        /// Sum of the sizes of its regular files (hardlinked files once).
        public var logicalBytes: Int64
        /// Distinct blobs its files use, their content bytes, and how much of that no other
        /// template and no VM uses (what removing the template would give back).
        public var blobs: Int64
        public var blobBytes: Int64
        public var exclusiveBytes: Int64
        public var vms: Int
    }

    public struct VMSpace: Codable, Sendable {
        public var name: String
        public var template: String
        /// What the VM sees: the template's files it did not change or remove, plus its own.
        public var logicalBytes: Int64
        /// Its private files: count, bytes, and the space they take.
        public var privateFiles: Int64
        public var privateBytes: Int64
        public var privateAllocatedBytes: Int64
        /// Its files that are shared blob references (deduplicated), and their bytes.
        public var sharedFiles: Int64
        public var sharedBytes: Int64
        /// Charged usage as the catalog has it (docs/quotas.md).
        public var usedBytes: Int64
        public var quotaBytes: Int64?
    }

    /// Physical space: blob files, private files, the catalog (with its WAL), and the total.
    public var blobCount: Int64 = 0
    public var blobAllocatedBytes: Int64 = 0
    public var privateAllocatedBytes: Int64 = 0
    public var catalogBytes: Int64 = 0
    public var temporaryBytes: Int64 = 0
    public var physicalBytes: Int64 = 0
    /// Logical bytes: every template's files plus every VM's view.
    public var logicalBytes: Int64 = 0
    /// Blobs used by more than one file (inode references across templates and VMs), their
    /// content bytes, and the bytes all those references would take as separate copies.
    public var sharedBlobs: Int64 = 0
    public var sharedBytes: Int64 = 0
    public var referencedBytes: Int64 = 0
    /// Blobs used by more than one object (several templates, several VMs, or both).
    public var blobsSharedAcrossObjects: Int64 = 0
    /// Content bytes of blobs nothing references (the janitor's).
    public var unreferencedBlobs: Int64 = 0
    public var unreferencedBytes: Int64 = 0
    /// logicalBytes / physicalBytes.
    public var savingsRatio: Double = 0
    /// The filesystem holding the store.
    public var filesystemBytes: Int64 = 0
    public var filesystemFreeBytes: Int64 = 0
    /// The space reserve (`SpaceReserve`): its configured size, the space its file takes now, and
    /// whether it is in place (false with a size above 0: a full filesystem made the catalog use
    /// it, and growth is refused until it can be allocated again; a size of 0 means no reserve).
    public var reserveBytes: Int64 = 0
    public var reserveAllocatedBytes: Int64 = 0
    public var reserveHeld = false
    public var templates: [TemplateSpace] = []
    public var vms: [VMSpace] = []
}

extension Store {
    /// Measures the store: physical allocation from the files themselves, logical sizes and
    /// sharing from the catalog.
    public func spaceReport() throws -> SpaceReport {
        var report = SpaceReport()
        // Blob files as they are on disk.
        for shard in try blobShardNames() {
            guard let fd = try? FileDescriptor.open(at: blobsDirectory, shard, [.directory, .readOnly, .noFollow]) else { continue }
            defer { fd.closeQuietly() }
            for entry in (try? fd.rawDirectoryEntries()) ?? [] {
                guard let st = try? fd.stat(at: entry.name) else { continue }
                report.blobCount += 1
                report.blobAllocatedBytes += st.blocks * 512
            }
        }
        // fstatat takes no descriptor of SQLite's files (closing one would drop SQLite's locks).
        report.catalogBytes = StoreLayout.catalogFiles.reduce(0) { $0 + ((try? root.stat(at: $1))?.blocks ?? 0) * 512 }
        report.temporaryBytes = Self.allocatedBytes(below: temporaryDirectory)
        report.reserveBytes = spaceReserve.bytes
        // With a reserve configured, admitsGrowth is true exactly when the file is in place (it
        // allocates it again first if there is room).
        report.reserveHeld = spaceReserve.bytes > 0 && spaceReserve.admitsGrowth()
        report.reserveAllocatedBytes = ((try? root.stat(at: StoreLayout.spaceReserve))?.blocks ?? 0) * 512

        // Private files per VM directory: inode -> (size, allocated).
        var privateByVM: [Int64: [Int64: (size: Int64, allocated: Int64)]] = [:]
        for entry in (try? vmsDirectory.directoryEntries()) ?? [] {
            guard let id = StoreLayout.vmID(directoryName: entry.name),
                  let area = try? VMArea.openUnlocked(in: self, vmID: id) else { continue }
            let listing = area.listPrivateFiles()
            var files: [Int64: (Int64, Int64)] = [:]
            for (ino, size) in listing.sizes {
                let allocated = listing.allocated[ino] ?? 0
                files[Int64(bitPattern: ino)] = (size, allocated)
                report.privateAllocatedBytes += allocated
            }
            privateByVM[id] = files
        }
        report.physicalBytes = report.blobAllocatedBytes + report.privateAllocatedBytes + report.catalogBytes + report.temporaryBytes

        try catalog.read { db in
            let sharing = try Row.fetchOne(db, sql: """
                WITH refs AS (
                    SELECT blob_id, 't' || template_id AS owner FROM template_inode WHERE blob_id IS NOT NULL
                    UNION ALL SELECT blob_id, 'v' || vm_id FROM vm_inode WHERE blob_id IS NOT NULL AND nlink > 0
                ), counts AS (
                    SELECT blob_id, COUNT(*) AS n, COUNT(DISTINCT owner) AS owners FROM refs GROUP BY blob_id
                )
                SELECT COALESCE(SUM(CASE WHEN c.n > 1 THEN 1 ELSE 0 END), 0),
                       COALESCE(SUM(CASE WHEN c.n > 1 THEN b.size ELSE 0 END), 0),
                       COALESCE(SUM(b.size * c.n), 0),
                       COALESCE(SUM(CASE WHEN c.owners > 1 THEN 1 ELSE 0 END), 0)
                FROM counts c JOIN blob b ON b.id = c.blob_id
                """)!
            report.sharedBlobs = sharing[0]
            report.sharedBytes = sharing[1]
            report.referencedBytes = sharing[2]
            report.blobsSharedAcrossObjects = sharing[3]
            let unreferenced = try Row.fetchOne(db, sql: """
                SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blob
                WHERE NOT EXISTS (SELECT 1 FROM template_inode WHERE blob_id = blob.id)
                  AND NOT EXISTS (SELECT 1 FROM vm_inode WHERE blob_id = blob.id)
                """)!
            report.unreferencedBlobs = unreferenced[0]
            report.unreferencedBytes = unreferenced[1]

            for row in try Row.fetchAll(db, sql: """
                SELECT t.id, t.name, t.logical_bytes, (SELECT COUNT(*) FROM vm WHERE vm.template_id = t.id AND vm.state = 'ready')
                FROM template t WHERE t.state = 'ready' ORDER BY t.name
                """) {
                let id: Int64 = row[0]
                let blobs = try Row.fetchOne(db, sql: """
                    SELECT COUNT(*), COALESCE(SUM(size), 0),
                           COALESCE(SUM(CASE WHEN NOT EXISTS (SELECT 1 FROM template_inode o WHERE o.blob_id = blob.id AND o.template_id != ?)
                                              AND NOT EXISTS (SELECT 1 FROM vm_inode v WHERE v.blob_id = blob.id)
                                             THEN size ELSE 0 END), 0)
                    FROM blob WHERE id IN (SELECT blob_id FROM template_inode WHERE template_id = ? AND blob_id IS NOT NULL)
                    """, arguments: [id, id])!
                report.templates.append(.init(name: row[1], logicalBytes: row[2], blobs: blobs[0], blobBytes: blobs[1],
                                              exclusiveBytes: blobs[2], vms: row[3]))
                report.logicalBytes += row[2] as Int64
            }

            for row in try Row.fetchAll(db, sql: """
                SELECT v.id, v.name, t.name, t.id, t.logical_bytes, v.used_bytes, v.quota_bytes FROM vm v JOIN template t ON t.id = v.template_id
                WHERE v.state = 'ready' ORDER BY v.name
                """) {
                let id: Int64 = row[0], templateID: Int64 = row[3], templateLogical: Int64 = row[4]
                // Template files the VM has its own record of (changed, copied up or removed).
                let overridden = try Int64.fetchOne(db, sql: """
                    SELECT COALESCE(SUM(t.size), 0) FROM vm_inode v JOIN template_inode t ON t.template_id = ? AND t.ino = v.ino
                    WHERE v.vm_id = ? AND (t.mode & 61440) = 32768
                    """, arguments: [templateID, id]) ?? 0
                let files = privateByVM[id] ?? [:]
                var own: Int64 = 0
                var privateFiles: Int64 = 0, privateBytes: Int64 = 0, privateAllocated: Int64 = 0
                var sharedFiles: Int64 = 0, sharedBytes: Int64 = 0
                let records = try Row.fetchCursor(db, sql: """
                    SELECT ino, size, data FROM vm_inode WHERE vm_id = ? AND (mode & 61440) = 32768 AND nlink > 0
                    """, arguments: [id])
                while let r = try records.next() {
                    let ino: Int64 = r[0], size: Int64 = r[1], data: Int64 = r[2]
                    if data == 2 {
                        let file = files[ino]
                        own += file?.size ?? size
                        privateFiles += 1
                        privateBytes += file?.size ?? size
                        privateAllocated += file?.allocated ?? 0
                    } else {
                        own += size
                        if data == 1 {
                            sharedFiles += 1
                            sharedBytes += size
                        }
                    }
                }
                let logical = max(0, templateLogical - overridden) + own
                report.vms.append(.init(name: row[1], template: row[2], logicalBytes: logical, privateFiles: privateFiles,
                                        privateBytes: privateBytes, privateAllocatedBytes: privateAllocated, sharedFiles: sharedFiles,
                                        sharedBytes: sharedBytes, usedBytes: row[5], quotaBytes: row[6]))
                report.logicalBytes += logical
            }
        }
        report.savingsRatio = report.physicalBytes > 0 ? Double(report.logicalBytes) / Double(report.physicalBytes) : 0
        if let fs = try? root.fileSystemStatistics() {
            report.filesystemBytes = Int64(fs.totalBlocks * fs.fragmentSize)
            report.filesystemFreeBytes = Int64(fs.availableBlocks * fs.fragmentSize)
        }
        return report
    }

    /// Allocated bytes of every file below a directory (not following symlinks, one filesystem).
    static func allocatedBytes(below directory: FileDescriptor, depth: Int = 0) -> Int64 {
        guard depth < 64, let entries = try? directory.directoryEntries() else { return 0 }
        var total: Int64 = 0
        for entry in entries {
            guard let st = try? directory.stat(at: entry.name) else { continue }
            total += st.blocks * 512
            if st.kind == .directory, let sub = try? FileDescriptor.open(at: directory, entry.name, [.directory, .readOnly, .noFollow]) {
                if (try? sub.stat().device) == (try? directory.stat().device) { total += allocatedBytes(below: sub, depth: depth + 1) }
                sub.closeQuietly()
            }
        }
        return total
    }
}

/// A quick summary of a store from its catalog (`pvfs status`).
public struct StoreSummary: Codable, Sendable {
    public var path: String
    public var templates: Int
    public var templatesInProgress: Int
    public var vms: Int
    public var blobs: Int64
    public var blobBytes: Int64
    public var blobAllocatedBytes: Int64
    public var vmUsedBytes: Int64
    public var filesystemBytes: Int64
    public var filesystemFreeBytes: Int64
}

extension Store {
    public func summary() throws -> StoreSummary {
        let row: Row = try catalog.read { db in
            try Row.fetchOne(db, sql: """
                SELECT (SELECT COUNT(*) FROM template WHERE state = 'ready'), (SELECT COUNT(*) FROM template WHERE state != 'ready'),
                       (SELECT COUNT(*) FROM vm WHERE state = 'ready'), (SELECT COUNT(*) FROM blob),
                       (SELECT COALESCE(SUM(size), 0) FROM blob), (SELECT COALESCE(SUM(allocated), 0) FROM blob),
                       (SELECT COALESCE(SUM(used_bytes), 0) FROM vm WHERE state = 'ready')
                """)!
        }
        let fs = try? root.fileSystemStatistics()
        return StoreSummary(path: path, templates: row[0], templatesInProgress: row[1], vms: row[2], blobs: row[3], blobBytes: row[4],
                            blobAllocatedBytes: row[5], vmUsedBytes: row[6],
                            filesystemBytes: Int64((fs?.totalBlocks ?? 0) * (fs?.fragmentSize ?? 0)),
                            filesystemFreeBytes: Int64((fs?.availableBlocks ?? 0) * (fs?.fragmentSize ?? 0)))
    }
}
