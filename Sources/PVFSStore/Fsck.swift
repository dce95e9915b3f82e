import Foundation
import GRDB
import Glibc
import PVFSSystem
import SystemPackage

/// One thing fsck found.
public struct FsckFinding: Codable, Sendable, Equatable {
    public enum Status: String, Codable, Sendable {
        /// Found and left as it is (no --repair, or repair needs the daemon or a free lock).
        case found
        /// Found and repaired.
        case repaired
        /// Cannot be repaired: data is lost or damaged (a blob row without its file, content
        /// that does not match its name). Reported with what is affected.
        case unrepairable
    }

    /// catalog, blobs, template, vm, usage, interrupted, tmp
    public var area: String
    /// A stable identifier of the kind of problem (blob-missing, blob-orphan, dirent-dangling, ...).
    public var kind: String
    /// What it is about: "blob 5f3a…", "template debian-12", "vm web1".
    public var subject: String
    public var message: String
    public var status: Status
    /// Paths or objects affected (for data loss: which files of which templates and VMs).
    public var affected: [String]?

    public init(area: String, kind: String, subject: String, message: String, status: Status, affected: [String]? = nil) {
        self.area = area
        self.kind = kind
        self.subject = subject
        self.message = message
        self.status = status
        self.affected = affected
    }
}

public struct FsckOptions: Sendable {
    public var repair = false
    /// Check blob sizes only, not their content.
    public var quick = false
    /// How long to wait for the blobs lock (exclusive) for the orphan check and its repair.
    public var waitSeconds: Double = 10

    public init() {}
}

/// What fsck checked and found.
public struct FsckReport: Codable, Sendable {
    public var repair: Bool
    public var quick: Bool
    public var findings: [FsckFinding] = []
    /// Checks that could not run, and why (a VM in use by another process, a busy lock).
    public var skipped: [String] = []
    public var blobsChecked = 0
    public var bytesHashed: Int64 = 0
    public var templatesChecked = 0
    public var vmsChecked = 0
    public var seconds: Double = 0

    public init(repair: Bool, quick: Bool) {
        self.repair = repair
        self.quick = quick
    }

    /// True when nothing remains to be fixed.
    public var clean: Bool { findings.allSatisfy { $0.status == .repaired } }

    public mutating func add(_ finding: FsckFinding) { findings.append(finding) }
}

extension Store {
    /// The store-level part of fsck (docs/janitor.md, "fsck"): the catalog's integrity and
    /// foreign keys, every blob against its row and name, files without rows, templates'
    /// structure, interrupted operations and leftovers. VMs' overlays and usage are checked by
    /// the engine (`VMCheck`), which knows how a VM's view is built.
    public func checkStore(_ options: FsckOptions, into report: inout FsckReport) throws {
        try checkCatalog(&report)
        try checkInterruptedOperations(options, &report)
        try checkTemplates(options, &report)
        try checkBlobRows(options, &report)
        try checkBlobFiles(options, &report)
        try checkVMDirectories(options, &report)
    }

    // MARK: Catalog

    func checkCatalog(_ report: inout FsckReport) throws {
        let (integrity, foreign): ([String], [Row]) = try catalog.read { db in
            (try String.fetchAll(db, sql: "PRAGMA integrity_check"), try Row.fetchAll(db, sql: "PRAGMA foreign_key_check"))
        }
        if integrity != ["ok"] {
            report.add(FsckFinding(area: "catalog", kind: "catalog-integrity", subject: StoreLayout.catalog,
                                   message: "PRAGMA integrity_check: " + integrity.prefix(20).joined(separator: "; "),
                                   status: .unrepairable))
        }
        for row in foreign.prefix(1000) {
            let table: String = row[0], rowid: Int64? = row[1], parent: String = row[2]
            report.add(FsckFinding(area: "catalog", kind: "catalog-foreign-key", subject: "\(table) row \(rowid.map(String.init) ?? "?")",
                                   message: "\(table) row \(rowid.map(String.init) ?? "?") refers to a missing \(parent) row",
                                   status: .unrepairable))
        }
    }

    // MARK: Interrupted operations and leftovers

    func checkInterruptedOperations(_ options: FsckOptions, _ report: inout FsckReport) throws {
        let templates: [Row] = try catalog.read { db in
            try Row.fetchAll(db, sql: "SELECT id, name, state, ingest_token FROM template WHERE state != 'ready' ORDER BY id")
        }
        var needsCleanup = false
        for row in templates {
            let name: String = row[1], state: String = row[2], token: String? = row[3]
            if state == "building", let token {
                // A live ingest holds its lock: not a finding.
                guard lockIsFree(in: temporaryDirectory, StoreLayout.ingestLock(token)) else { continue }
                report.add(FsckFinding(area: "interrupted", kind: "ingest-interrupted", subject: "template \(name)",
                                       message: "template \(name) was being created by a process that died", status: .found))
            } else {
                report.add(FsckFinding(area: "interrupted", kind: state == "deleting" ? "template-removal-interrupted" : "template-unfinished",
                                       subject: "template \(name)", message: "template \(name) is left in state '\(state)'", status: .found))
            }
            needsCleanup = true
        }
        // Staging areas of dead processes without a template (dedup, a killed publisher).
        for entry in (try? temporaryDirectory.rawDirectoryEntries()) ?? [] {
            guard let token = StoreLayout.ingestToken(lockName: entry.name),
                  !templates.contains(where: { ($0[3] as String?) == token }) else { continue }
            guard lockIsFree(in: temporaryDirectory, StoreLayout.ingestLock(token)) else { continue }
            report.add(FsckFinding(area: "interrupted", kind: "staging-abandoned", subject: StoreLayout.temporary + "/" + StoreLayout.ingestDirectory(token),
                                   message: "staging area of a process that died", status: .found))
            needsCleanup = true
        }
        let vms: [Row] = try catalog.read { db in
            try Row.fetchAll(db, sql: "SELECT id, name, state, created_ns FROM vm WHERE state != 'ready' ORDER BY id")
        }
        var vmCleanup = false
        for row in vms {
            let name: String = row[1], state: String = row[2], created: Int64 = row[3]
            if state == "provisioning" && Timespec.now.totalNanoseconds - created < 60_000_000_000 { continue }
            report.add(FsckFinding(area: "interrupted", kind: state == "deleting" ? "vm-removal-interrupted" : "vm-provisioning-interrupted",
                                   subject: "vm \(name)", message: "VM \(name) is left in state '\(state)'", status: .found))
            vmCleanup = true
        }
        // An entry whose lock is free; a lone free lock file is left for the janitor.
        let stale = staleTemporaryEntries().filter { base in
            lockIsFree(in: temporaryDirectory, base + ".lock") && (try? temporaryDirectory.stat(at: base)) != nil
        }
        for base in stale {
            report.add(FsckFinding(area: "tmp", kind: "tmp-abandoned", subject: "\(StoreLayout.temporary)/\(base)",
                                   message: "\(StoreLayout.temporary)/\(base) belongs to no live process", status: .found))
        }
        guard options.repair else { return }
        var cleanupDeferred = false
        if needsCleanup {
            let result = try cleanUpInterruptedIngests()
            cleanupDeferred = result.deferred > 0
        }
        if vmCleanup { try cleanUpInterruptedVMOperations() }
        if !stale.isEmpty { _ = removeStaleTemporaryEntries(dryRun: false) }
        // What is gone now was repaired.
        let remainingTemplates: Set<String> = try catalog.read { db in
            Set(try String.fetchAll(db, sql: "SELECT 'template ' || name FROM template WHERE state != 'ready'"))
        }
        let remainingVMs: Set<String> = try catalog.read { db in
            Set(try String.fetchAll(db, sql: "SELECT 'vm ' || name FROM vm WHERE state != 'ready'"))
        }
        let remainingTmp = Set((try? temporaryDirectory.rawDirectoryEntries())?.map { StoreLayout.temporary + "/" + String(decoding: $0.name, as: UTF8.self) } ?? [])
        for i in report.findings.indices where report.findings[i].status == .found {
            let f = report.findings[i]
            switch f.area {
            case "interrupted":
                let remains = remainingTemplates.contains(f.subject) || remainingVMs.contains(f.subject) || remainingTmp.contains(f.subject)
                if !remains { report.findings[i].status = .repaired }
            case "tmp":
                if !remainingTmp.contains(f.subject) { report.findings[i].status = .repaired }
            default: break
            }
        }
        if cleanupDeferred { report.skipped.append("crash cleanup: the blobs lock is busy; run fsck --repair again") }
    }

    /// vms/<id> directories without a VM row, and ready VMs without their directory.
    func checkVMDirectories(_ options: FsckOptions, _ report: inout FsckReport) throws {
        let rows: [Int64: (name: String, state: String)] = try catalog.read { db in
            var map: [Int64: (String, String)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT id, name, state FROM vm") { map[row[0]] = (row[1], row[2]) }
            return map
        }
        let entries = (try? vmsDirectory.directoryEntries()) ?? []
        let present = Set(entries.compactMap { StoreLayout.vmID(directoryName: $0.name) })
        for entry in entries {
            let subject = StoreLayout.vms + "/" + entry.name
            guard let id = StoreLayout.vmID(directoryName: entry.name) else {
                report.add(FsckFinding(area: "vm", kind: "vm-directory-unexpected", subject: subject,
                                       message: "\(subject) is not a VM's directory; remove it by hand", status: .found))
                continue
            }
            guard rows[id] == nil else { continue }
            var finding = FsckFinding(area: "vm", kind: "vm-directory-orphan", subject: subject,
                                      message: "\(subject) belongs to no VM", status: .found)
            if options.repair {
                // Its lock keeps a process that still holds it (it cannot: the row is gone) safe.
                if let area = try? VMArea.openIfFree(in: self, vmID: id) {
                    do {
                        try removeTree(at: vmsDirectory, StoreLayout.vmDirectory(id))
                        finding.status = .repaired
                    } catch {
                        finding.message += " (cannot remove it: \(error))"
                    }
                    area.close()
                }
            }
            report.add(finding)
        }
        for (id, vm) in rows.sorted(by: { $0.key < $1.key }) where vm.state == "ready" && !present.contains(id) {
            var finding = FsckFinding(area: "vm", kind: "vm-directory-missing", subject: "vm \(vm.name)",
                                      message: "the private area of VM \(vm.name) (\(StoreLayout.vmPath(id))) is missing: its private files are lost",
                                      status: .unrepairable)
            if options.repair {
                // An empty area lets the VM open; its records of private files are reported by the
                // VM check as data loss.
                if (try? VMArea.create(in: self, vmID: id)) != nil {
                    finding.message += "; recreated it empty"
                }
            }
            report.add(finding)
        }
    }

    // MARK: Templates

    func checkTemplates(_ options: FsckOptions, _ report: inout FsckReport) throws {
        let templates: [(id: Int64, name: String, maxInode: Int64)] = try catalog.read { db in
            try Row.fetchAll(db, sql: "SELECT id, name, max_inode FROM template WHERE state = 'ready' ORDER BY name").map { ($0[0], $0[1], $0[2]) }
        }
        for template in templates {
            try checkTemplate(id: template.id, name: template.name, maxInode: template.maxInode, options, &report)
            report.templatesChecked += 1
        }
    }

    private func checkTemplate(id: Int64, name: String, maxInode: Int64, _ options: FsckOptions, _ report: inout FsckReport) throws {
        struct Inode { var mode: Int64; var nlink: Int64; var size: Int64; var blob: Int64?; var blobSize: Int64? }
        let (inodes, dirents): ([Int64: Inode], [(parent: Int64, name: [UInt8], ino: Int64)]) = try catalog.read { db in
            var inodes: [Int64: Inode] = [:]
            let rows = try Row.fetchCursor(db, sql: """
                SELECT i.ino, i.mode, i.nlink, i.size, i.blob_id, b.size FROM template_inode i LEFT JOIN blob b ON b.id = i.blob_id
                WHERE i.template_id = ?
                """, arguments: [id])
            while let row = try rows.next() { inodes[row[0]] = Inode(mode: row[1], nlink: row[2], size: row[3], blob: row[4], blobSize: row[5]) }
            var dirents: [(Int64, [UInt8], Int64)] = []
            let drows = try Row.fetchCursor(db, sql: "SELECT parent, name, ino FROM template_dirent WHERE template_id = ?", arguments: [id])
            while let row = try drows.next() { dirents.append((row[0], row.bytes(1), row[2])) }
            return (inodes, dirents)
        }
        let subject = "template \(name)"
        func isDirectory(_ ino: Int64) -> Bool { (inodes[ino]?.mode ?? 0) & 0o170000 == 0o040000 }
        var repairs: [(sql: String, arguments: StatementArguments)] = []
        var findings: [FsckFinding] = []

        guard inodes[1].map({ $0.mode & 0o170000 == 0o040000 }) == true else {
            report.add(FsckFinding(area: "template", kind: "template-root-missing", subject: subject,
                                   message: "template \(name) has no root directory (inode 1)", status: .unrepairable))
            return
        }
        if let largest = inodes.keys.max(), largest > maxInode {
            findings.append(FsckFinding(area: "template", kind: "template-inode-range", subject: subject,
                                        message: "inode \(largest) is above the template's max_inode \(maxInode)", status: .found))
            repairs.append(("UPDATE template SET max_inode = ? WHERE id = ?", [largest, id]))
        }
        var names: [Int64: Int] = [:]
        var subdirectories: [Int64: Int] = [:]
        var children: [Int64: [Int64]] = [:]
        for d in dirents {
            let display = String(decoding: d.name, as: UTF8.self)
            if inodes[d.ino] == nil {
                findings.append(FsckFinding(area: "template", kind: "dirent-dangling", subject: subject,
                                            message: "entry '\(display)' in directory inode \(d.parent) points at missing inode \(d.ino)",
                                            status: .found))
                repairs.append(("DELETE FROM template_dirent WHERE template_id = ? AND parent = ? AND name = ?", [id, d.parent, d.name.databaseBlob]))
                continue
            }
            if !isDirectory(d.parent) {
                findings.append(FsckFinding(area: "template", kind: "dirent-parent-not-directory", subject: subject,
                                            message: "entry '\(display)' (inode \(d.ino)) is in inode \(d.parent), which is not a directory",
                                            status: .found))
                repairs.append(("DELETE FROM template_dirent WHERE template_id = ? AND parent = ? AND name = ?", [id, d.parent, d.name.databaseBlob]))
                continue
            }
            names[d.ino, default: 0] += 1
            children[d.parent, default: []].append(d.ino)
            if isDirectory(d.ino) { subdirectories[d.parent, default: 0] += 1 }
        }
        for (ino, inode) in inodes.sorted(by: { $0.key < $1.key }) {
            let count = names[ino] ?? 0
            if inode.mode & 0o170000 == 0o040000 {
                if ino != 1 && count != 1 {
                    findings.append(FsckFinding(area: "template", kind: "directory-parent", subject: subject,
                                                message: "directory inode \(ino) has \(count) names (a directory has exactly one parent)",
                                                status: count == 0 ? .found : .unrepairable))
                }
                let expected = 2 + Int64(subdirectories[ino] ?? 0)
                if inode.nlink != expected && (ino == 1 || count == 1) {
                    findings.append(FsckFinding(area: "template", kind: "link-count", subject: subject,
                                                message: "directory inode \(ino) has link count \(inode.nlink), expected \(expected)", status: .found))
                    repairs.append(("UPDATE template_inode SET nlink = ? WHERE template_id = ? AND ino = ?", [expected, id, ino]))
                }
            } else if count > 0 && inode.nlink != Int64(count) {
                findings.append(FsckFinding(area: "template", kind: "link-count", subject: subject,
                                            message: "inode \(ino) has link count \(inode.nlink) but \(count) names", status: .found))
                repairs.append(("UPDATE template_inode SET nlink = ? WHERE template_id = ? AND ino = ?", [count, id, ino]))
            }
            if inode.mode & 0o170000 == 0o100000 {
                if inode.size > 0 && inode.blob == nil {
                    findings.append(FsckFinding(area: "template", kind: "content-missing", subject: subject,
                                                message: "regular file inode \(ino) of \(inode.size) bytes has no blob", status: .unrepairable,
                                                affected: [templatePath(id: id, ino: ino).map { "\(subject): \($0)" } ?? "\(subject): inode \(ino)"]))
                } else if let blobSize = inode.blobSize, blobSize != inode.size {
                    findings.append(FsckFinding(area: "template", kind: "content-size", subject: subject,
                                                message: "inode \(ino) is \(inode.size) bytes but its blob has \(blobSize)", status: .unrepairable))
                }
            }
        }
        // Reachability from the root.
        var reached: Set<Int64> = [1]
        var queue: [Int64] = [1]
        while let dir = queue.popLast() {
            for child in children[dir] ?? [] where reached.insert(child).inserted && isDirectory(child) { queue.append(child) }
        }
        let unreachable = inodes.keys.filter { !reached.contains($0) }.sorted()
        if !unreachable.isEmpty {
            let usedByVMs: Set<Int64> = try catalog.read { db in
                Set(try Int64.fetchAll(db, sql: """
                    SELECT ino FROM vm_inode WHERE vm_id IN (SELECT id FROM vm WHERE template_id = ?)
                    UNION SELECT ino FROM vm_dirent WHERE vm_id IN (SELECT id FROM vm WHERE template_id = ?)
                    """, arguments: [id, id]))
            }
            for ino in unreachable {
                findings.append(FsckFinding(area: "template", kind: "inode-unreachable", subject: subject,
                                            message: "inode \(ino) is not reachable from the root", status: usedByVMs.contains(ino) ? .unrepairable : .found))
                if !usedByVMs.contains(ino) {
                    repairs.append(("DELETE FROM template_xattr WHERE template_id = ? AND ino = ?", [id, ino]))
                    repairs.append(("DELETE FROM template_dirent WHERE template_id = ? AND parent = ?", [id, ino]))
                    repairs.append(("DELETE FROM template_inode WHERE template_id = ? AND ino = ?", [id, ino]))
                }
            }
        }
        if options.repair && !repairs.isEmpty {
            try catalog.write { db in
                for repair in repairs { try db.execute(sql: repair.sql, arguments: repair.arguments) }
            }
            for i in findings.indices where findings[i].status == .found { findings[i].status = .repaired }
        }
        for finding in findings { report.add(finding) }
    }

    /// A path of a template inode (its first name, walked up to the root), nil if unreachable.
    public func templatePath(id: Int64, ino: Int64) -> String? {
        try? catalog.read { db -> String? in
            var components: [String] = []
            var current = ino
            var steps = 0
            while current != 1 {
                guard steps < 4096, let row = try Row.fetchOne(db, sql: "SELECT parent, name FROM template_dirent WHERE template_id = ? AND ino = ? LIMIT 1",
                                                              arguments: [id, current]) else { return nil }
                components.append(String(decoding: row.bytes(1), as: UTF8.self))
                current = row[0]
                steps += 1
            }
            return "/" + components.reversed().joined(separator: "/")
        }
    }

    /// A path of a VM inode (through the VM's own entries, then the template's), nil if none found.
    public func vmPath(vmID: Int64, templateID: Int64, ino: Int64) -> String? {
        try? catalog.read { db -> String? in
            var components: [String] = []
            var current = ino
            var steps = 0
            while current != 1 {
                guard steps < 4096 else { return nil }
                steps += 1
                if let row = try Row.fetchOne(db, sql: "SELECT parent, name FROM vm_dirent WHERE vm_id = ? AND ino = ? LIMIT 1", arguments: [vmID, current]) {
                    components.append(String(decoding: row.bytes(1), as: UTF8.self))
                    current = row[0]
                    continue
                }
                // A template name the VM has not hidden.
                guard let row = try Row.fetchOne(db, sql: """
                    SELECT d.parent, d.name FROM template_dirent d WHERE d.template_id = ? AND d.ino = ?
                      AND NOT EXISTS (SELECT 1 FROM vm_dirent v WHERE v.vm_id = ? AND v.parent = d.parent AND v.name = d.name)
                    LIMIT 1
                    """, arguments: [templateID, current, vmID]) else { return nil }
                components.append(String(decoding: row.bytes(1), as: UTF8.self))
                current = row[0]
            }
            return "/" + components.reversed().joined(separator: "/")
        }
    }

    // MARK: Blobs

    /// Who uses a blob: template paths and VM files (for reports of damaged content).
    public func blobUsers(id: Int64, limit: Int = 20) -> [String] {
        var users: [String] = []
        let refs: ([Row], [Row]) = (try? catalog.read { db in
            (try Row.fetchAll(db, sql: """
                SELECT t.id, t.name, i.ino, (SELECT COUNT(*) FROM vm WHERE vm.template_id = t.id) FROM template_inode i
                JOIN template t ON t.id = i.template_id WHERE i.blob_id = ? LIMIT ?
                """, arguments: [id, limit]),
             try Row.fetchAll(db, sql: """
                SELECT v.id, v.name, v.template_id, i.ino FROM vm_inode i JOIN vm v ON v.id = i.vm_id
                WHERE i.blob_id = ? AND i.nlink > 0 LIMIT ?
                """, arguments: [id, limit]))
        }) ?? ([], [])
        for row in refs.0 {
            let templateID: Int64 = row[0], name: String = row[1], ino: Int64 = row[2], vms: Int = row[3]
            let where_ = templatePath(id: templateID, ino: ino) ?? "inode \(ino)"
            users.append("template \(name): \(where_)" + (vms > 0 ? " (seen by its \(vms) VM(s) unless they changed it)" : ""))
        }
        for row in refs.1 {
            let vmID: Int64 = row[0], name: String = row[1], templateID: Int64 = row[2], ino: Int64 = row[3]
            users.append("vm \(name): " + (vmPath(vmID: vmID, templateID: templateID, ino: ino) ?? "inode \(ino)"))
        }
        return users
    }

    func checkBlobRows(_ options: FsckOptions, _ report: inout FsckReport) throws {
        let buffer = StagingBuffer()
        var after: Int64 = 0
        while true {
            let rows: [(id: Int64, hash: BlobHash?, raw: [UInt8], size: Int64)] = try catalog.read { db in
                try Row.fetchAll(db, sql: "SELECT id, hash, size FROM blob WHERE id > ? ORDER BY id LIMIT 1000", arguments: [after])
                    .map { ($0[0], BlobHash(bytes: $0.bytes(1)), $0.bytes(1), $0[2]) }
            }
            guard let last = rows.last else { break }
            after = last.id
            for row in rows {
                report.blobsChecked += 1
                guard let hash = row.hash else {
                    report.add(FsckFinding(area: "blobs", kind: "blob-row-invalid", subject: "blob row \(row.id)",
                                           message: "blob row \(row.id) has an invalid hash", status: .unrepairable, affected: blobUsers(id: row.id)))
                    continue
                }
                var problem: (kind: String, message: String)?
                do {
                    let fd = try blobs.open(hash)
                    defer { fd.closeQuietly() }
                    let st = try fd.stat()
                    if st.kind != .regular {
                        problem = ("blob-not-file", "\(StoreLayout.blobs)/\(StoreLayout.blobPath(hash)) is not a regular file")
                    } else if st.size != row.size {
                        problem = ("blob-size", "its file has \(st.size) bytes, its row says \(row.size)")
                    } else if !options.quick {
                        let (actual, length) = try StagingArea.hash(fd, size: row.size, sparse: true, buffer: buffer)
                        report.bytesHashed += row.size
                        if length != row.size || actual != hash {
                            problem = ("blob-corrupt", "its content does not match its name (it hashes to \(actual))")
                        }
                    }
                } catch {
                    problem = error == .noSuchFileOrDirectory
                        ? ("blob-missing", "it has a catalog row but its file \(StoreLayout.blobs)/\(StoreLayout.blobPath(hash)) is missing")
                        : ("blob-unreadable", "its file cannot be read: \(error)")
                }
                guard let problem else { continue }
                // The janitor deletes rows before files: a row still there means a real loss.
                guard try blobRowMatches(id: row.id, hash: hash) else { continue }
                report.add(FsckFinding(area: "blobs", kind: problem.kind, subject: "blob \(hash)",
                                       message: problem.message + " (data loss)", status: .unrepairable, affected: blobUsers(id: row.id)))
            }
        }
    }

    /// Files in blobs/ without a catalog row (checked under the blobs lock, exclusively, so no
    /// publication is half done), and names that are not blobs.
    func checkBlobFiles(_ options: FsckOptions, _ report: inout FsckReport) throws {
        let shards = try blobShardNames()
        for entry in (try? blobsDirectory.rawDirectoryEntries()) ?? [] where !Self.isShardName(entry.name) {
            report.add(FsckFinding(area: "blobs", kind: "blob-unexpected", subject: StoreLayout.blobs + "/" + String(decoding: entry.name, as: UTF8.self),
                                   message: "not a shard directory of the blob store; remove it by hand", status: .found))
        }
        var index = 0
        while index < shards.count {
            guard let lock = try lockBlobsExclusive(waitSeconds: options.waitSeconds) else {
                report.skipped.append("orphaned blob files: the blobs lock stayed busy for \(options.waitSeconds) s")
                return
            }
            let sliceStart = monotonicNanoseconds()
            repeat {
                let shard = shards[index]
                index += 1
                let shardName = String(decoding: shard, as: UTF8.self)
                if let listing = try? listShard(shard) {
                    for name in listing.unexpected {
                        report.add(FsckFinding(area: "blobs", kind: "blob-unexpected", subject: "\(StoreLayout.blobs)/\(shardName)/" + String(decoding: name, as: UTF8.self),
                                               message: "not a blob name; remove it by hand", status: .found))
                    }
                }
                let (_, _, orphans) = try removeOrphanBlobFiles(shard: shard, dryRun: !options.repair)
                for hash in orphans {
                    report.add(FsckFinding(area: "blobs", kind: "blob-orphan", subject: "blob \(hash)",
                                           message: "\(StoreLayout.blobs)/\(StoreLayout.blobPath(hash)) has no catalog row",
                                           status: options.repair ? .repaired : .found))
                }
            } while index < shards.count && monotonicNanoseconds() - sliceStart < 200_000_000
            withExtendedLifetime(lock) {}
            if index < shards.count { usleep(5_000) }
        }
    }
}
