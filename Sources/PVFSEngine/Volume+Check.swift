import Foundation
import PVFSStore
import PVFSSystem
import SystemPackage

// fsck and dedup of VMs: the engine's side (docs/janitor.md).

/// What checking one VM found.
public struct VMCheckResult: Codable, Sendable {
    public var vm: String
    public var findings: [FsckFinding] = []
    /// Usage as the catalog (or, for a served VM, the daemon's running total) has it, and as
    /// the data says.
    public var recordedUsage: VMUsage?
    public var computedUsage: VMUsage?
    /// Why the VM was not checked (in use by another process), nil when it was.
    public var skipped: String?
    /// Parts of the check left out, and why.
    public var notes: [String] = []

    public init(vm: String) { self.vm = vm }
}

extension Volume {
    /// Checks this (open) volume's overlay against its private files and its usage against its
    /// data, under the metadata lock; with `repair`, fixes what it can (the running usage total
    /// is replaced by the recomputed one). Used by the daemon for the VMs it serves.
    public func check(repair: Bool) -> VMCheckResult {
        metaLock.lock()
        defer { metaLock.unlock() }
        var result = VMCheckResult(vm: name)
        let files = area.listPrivateFiles()
        var sizes = files.sizes
        for (ino, data) in openData {
            data.lock.lock()
            if data.file?.isPrivate == true { sizes[ino] = data.size }
            data.lock.unlock()
        }
        let checker = OverlayChecker(vmName: name, template: template, overlay: overlay, openInodes: Set(openData.keys).union(keptOrphans),
                                     files: files, sizes: sizes)
        let plan = checker.run()
        result.findings = plan.findings
        if repair && !plan.isEmpty {
            do throws(Errno) {
                try commit(plan.changes, synchronously: true)
                for ino in plan.emptyFiles { try? area.createEmptyPrivateFile(ino) }
                for ino in plan.removedFiles { try? area.removePrivateFile(ino) }
                result.findings = result.findings.map { f in var f = f; if f.status == .found { f.status = .repaired }; return f }
            } catch {
                result.findings.append(FsckFinding(area: "vm", kind: "repair-failed", subject: "vm \(name)",
                                                   message: "cannot write the repairs: \(error)", status: .found))
            }
        }
        // With a writer open, a write may be between its charge and its size update: compare
        // only a quiet volume.
        if openData.values.contains(where: { $0.writers > 0 }) {
            result.notes.append("files are open for writing; usage was not compared")
            return result
        }
        let computed = computeUsage()
        let recorded = quota.usage
        result.recordedUsage = recorded
        result.computedUsage = computed
        if computed != recorded {
            var finding = OverlayChecker.driftFinding(name, recorded: recorded, computed: computed)
            if repair {
                quota.setUsage(computed)
                finding.status = .repaired
            }
            result.findings.append(finding)
        }
        return result
    }

    /// Checks a VM no process holds, taking its lock for the duration (so nothing changes it);
    /// `skipped` is set when another process holds it (the daemon or a FUSE mount). Reads the
    /// catalog and the private files only, unless `repair`: then fixes the overlay, removes
    /// orphans, and writes the recomputed usage (marking the VM cleanly closed when nothing
    /// remains to fix, which is all an open after an unclean shutdown would do).
    public static func check(store: Store, vm: VMRecord, repair: Bool) throws -> VMCheckResult {
        var result = VMCheckResult(vm: vm.name)
        let opened: OpenedVM
        do {
            guard let free = try store.openVMIfFree(vm) else {
                result.skipped = "in use by another process"
                return result
            }
            opened = free
        } catch {
            result.skipped = (error as? PVFSError)?.message ?? "\(error)"
            return result
        }
        let area = opened.area
        defer { area.close() }
        let subject = "vm \(vm.name)"
        let image: TemplateImage
        do {
            image = TemplateImage(try store.loadTemplateImage(id: vm.templateID))
        } catch {
            result.findings.append(FsckFinding(area: "vm", kind: "template-unloadable", subject: subject,
                                               message: "its template \(vm.template) cannot be loaded: \(error)", status: .unrepairable))
            return result
        }
        let clean = opened.usageClean
        var overlay = try opened.catalog.loadOverlay()
        let files = area.listPrivateFiles()
        let checker = OverlayChecker(vmName: vm.name, template: image, overlay: overlay, openInodes: [], files: files, sizes: files.sizes)
        let plan = checker.run()
        result.findings = plan.findings
        if !clean {
            result.findings.append(FsckFinding(area: "vm", kind: "vm-unclean-shutdown", subject: subject,
                                               message: "VM \(vm.name) was not closed cleanly (its holder died); its usage and orphans are recovered at its next open",
                                               status: .found))
        }
        var sizes = files.sizes
        if repair {
            try opened.catalog.apply(plan.changes)
            for change in plan.changes { overlay.apply(change) }
            for ino in plan.emptyFiles where (try? area.createEmptyPrivateFile(ino)) != nil { sizes[ino] = 0 }
            for ino in plan.removedFiles { try? area.removePrivateFile(ino) }
            area.clearScratch()
            for i in result.findings.indices where result.findings[i].status == .found { result.findings[i].status = .repaired }
        }
        let computed = OverlayChecker.usage(overlay: overlay, template: image, sizes: sizes, openInodes: [])
        let recorded = VMUsage(bytes: opened.record.usedBytes, inodes: opened.record.usedInodes)
        result.recordedUsage = recorded
        result.computedUsage = computed
        if computed != recorded {
            var finding = OverlayChecker.driftFinding(vm.name, recorded: recorded, computed: computed)
            if repair { finding.status = .repaired }
            result.findings.append(finding)
        }
        if repair {
            let settled = result.findings.allSatisfy { $0.status != .found }
            try opened.catalog.setUsage(computed, clean: settled || clean)
        }
        return result
    }
}

/// The checks of a VM's overlay, over a consistent snapshot of it (taken under the volume's
/// metadata lock, or with the VM's lock held).
struct OverlayChecker {
    struct Plan {
        var findings: [FsckFinding] = []
        var changes: [OverlayChange] = []
        /// Private files to remove (after the changes are committed).
        var removedFiles: [InodeNumber] = []
        /// Inodes whose lost data file is recreated empty.
        var emptyFiles: [InodeNumber] = []

        var isEmpty: Bool { changes.isEmpty && removedFiles.isEmpty && emptyFiles.isEmpty }
    }

    let vmName: String
    let template: TemplateImage
    let overlay: OverlayRecords
    let openInodes: Set<InodeNumber>
    let files: PrivateFileListing
    let sizes: [InodeNumber: Int64]

    /// Whether an inode is part of the VM's view (not removed).
    private func exists(_ ino: InodeNumber) -> Bool {
        if let own = overlay.inodes[ino] { return own.linkCount > 0 || openInodes.contains(ino) }
        return ino <= template.maximumInode && template.record(ino) != nil
    }

    private func isDirectory(_ ino: InodeNumber) -> Bool {
        if let own = overlay.inodes[ino] { return own.isDirectory }
        return ino <= template.maximumInode && template.record(ino)?.isDirectory == true
    }

    func run() -> Plan {
        var plan = Plan()
        let subject = "vm \(vmName)"
        func found(_ kind: String, _ message: String, status: FsckFinding.Status = .found) {
            plan.findings.append(FsckFinding(area: "vm", kind: kind, subject: subject, message: message, status: status))
        }
        // Entries.
        for (parent, entries) in overlay.entries.sorted(by: { $0.key < $1.key }) {
            guard exists(parent) && isDirectory(parent) else {
                found("entries-orphan", "\(entries.count) entries of directory inode \(parent), which no longer exists")
                plan.changes.append(.deleteAllEntries(parent: parent))
                continue
            }
            for (name, ino) in entries.sorted(by: { $0.key.bytes.lexicographicallyPrecedes($1.key.bytes) }) where ino != 0 && !exists(ino) {
                found("dirent-dangling", "entry '\(String(decoding: name.bytes, as: UTF8.self))' in directory inode \(parent) points at missing inode \(ino)")
                let templateHas = parent <= template.maximumInode && template.directories[parent]?[name] != nil
                plan.changes.append(templateHas ? .putEntry(parent: parent, name: name, inode: 0) : .deleteEntry(parent: parent, name: name))
            }
        }
        // Records.
        for (ino, r) in overlay.inodes.sorted(by: { $0.key < $1.key }) {
            let isTemplate = ino <= template.maximumInode
            if r.linkCount == 0 && !openInodes.contains(ino) {
                if isTemplate {
                    guard r.data != .none || r.privateXattrs else { continue }  // a proper tombstone
                    found("tombstone-with-data", "removed template inode \(ino) still holds data or xattrs (it was open when its holder died)")
                    var tombstone = r
                    tombstone.data = .none
                    tombstone.privateXattrs = false
                    plan.changes.append(.putInode(ino, tombstone))
                    plan.changes.append(.replaceXattrs(ino, [:]))
                } else {
                    found("inode-orphan", "inode \(ino) has no names (it was open when its holder died or handed the VM over)")
                    plan.changes.append(.deleteInode(ino))
                }
                if r.data == .privateFile, files.paths[ino] != nil { plan.removedFiles.append(ino) }
                continue
            }
            if r.data == .privateFile && files.paths[ino] == nil {
                plan.findings.append(FsckFinding(area: "vm", kind: "private-file-missing", subject: subject,
                                                 message: "the data file of inode \(ino) (\(StoreLayout.VM.data)/\(StoreLayout.VM.privateFile(ino))) is missing: its content is lost; repair recreates it empty",
                                                 status: .unrepairable))
                var emptied = r
                emptied.size = 0
                emptied.blocks = 0
                plan.changes.append(.putInode(ino, emptied))
                plan.emptyFiles.append(ino)
            }
        }
        // Files.
        for (ino, path) in files.paths.sorted(by: { $0.key < $1.key }) {
            guard overlay.inodes[ino]?.data != .privateFile else { continue }
            found("private-file-orphan", "\(StoreLayout.VM.data)/\(path) belongs to no inode of the VM")
            plan.removedFiles.append(ino)
        }
        for path in files.unexpected {
            plan.findings.append(FsckFinding(area: "vm", kind: "private-file-unexpected", subject: subject,
                                             message: "\(StoreLayout.VM.data)/\(path) is not a private file name; remove it by hand", status: .found))
        }
        return plan
    }

    /// Usage by the charging rule (docs/quotas.md), as `Volume.computeUsage` computes it.
    static func usage(overlay: OverlayRecords, template: TemplateImage, sizes: [InodeNumber: Int64],
                      openInodes: Set<InodeNumber>) -> QuotaAccount.Usage {
        var total = QuotaAccount.Usage(bytes: 0, inodes: 0)
        for (ino, record) in overlay.inodes where record.linkCount > 0 || openInodes.contains(ino) {
            let size = record.data == .privateFile ? sizes[ino] : nil
            let charge = Charge.of(record, createdByVM: ino > template.maximumInode, privateSize: size,
                                   xattrBytes: record.privateXattrs ? Charge.xattrBytes(overlay.xattrs[ino] ?? [:]) : 0)
            total.bytes += charge.bytes
            total.inodes += charge.inodes
        }
        return total
    }

    static func driftFinding(_ vm: String, recorded: QuotaAccount.Usage, computed: QuotaAccount.Usage) -> FsckFinding {
        FsckFinding(area: "usage", kind: "usage-drift", subject: "vm \(vm)",
                    message: "usage recorded as \(recorded.bytes) bytes, \(recorded.inodes) inodes; the data says \(computed.bytes) bytes, \(computed.inodes) inodes",
                    status: .found)
    }
}

/// A volume this process holds, as dedup's driver talks to it.
public final class VolumeDedupTarget: DedupTarget, @unchecked Sendable {
    public let volume: Volume

    public init(_ volume: Volume) { self.volume = volume }

    public var vmName: String { volume.name }

    public func dedupCandidates(minimumSize: Int64) throws -> [DedupCandidate] {
        volume.privateFiles(minimumSize: minimumSize).map { DedupCandidate(inode: $0.inode, size: $0.size) }
    }

    public func openCandidate(_ inode: UInt64) throws -> FileDescriptor {
        try volume.openPrivateFileForReading(inode)
    }

    public func replace(_ inode: UInt64, blobID: Int64, hash: BlobHash) throws -> DedupReplacement {
        DedupReplacement(try volume.replaceWithBlob(inode, blobID: blobID, hash: hash))
    }
}

extension DedupReplacement {
    public init(_ outcome: DedupOutcome) {
        switch outcome {
        case .replaced: self = .replaced
        case .skippedBusy: self = .skippedBusy
        case .skippedChanged: self = .skippedChanged
        case .skippedGone: self = .skippedGone
        }
    }
}
