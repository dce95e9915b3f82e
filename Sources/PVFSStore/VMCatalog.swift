import Foundation
import GRDB
import PVFSSystem
import SystemPackage

/// A VM as the catalog records it.
public struct VMRecord: Codable, Sendable, Equatable {
    public var id: Int64
    public var name: String
    public var template: String
    public var templateID: Int64
    public var state: String
    public var createdNanoseconds: Int64
    public var quotaBytes: Int64?
    public var quotaInodes: Int64?
    public var usedBytes: Int64
    public var usedInodes: Int64
    /// Its share of the daemon's worker threads relative to other VMs' (`workerWeights`).
    public var workerWeight: Int

    /// The weight of a new VM.
    public static let defaultWorkerWeight = 100
    /// The weights a VM may have.
    public static let workerWeights = 1...10_000
}

extension Store {
    static let vmColumns = """
        vm.id, vm.name, template.name, vm.template_id, vm.state, vm.created_ns, vm.quota_bytes, vm.quota_inodes,
        vm.used_bytes, vm.used_inodes, vm.worker_weight
        """

    static func vmRecord(_ row: Row) -> VMRecord {
        VMRecord(id: row[0], name: row[1], template: row[2], templateID: row[3], state: row[4], createdNanoseconds: row[5],
                 quotaBytes: row[6], quotaInodes: row[7], usedBytes: row[8], usedInodes: row[9], workerWeight: row[10])
    }

    /// Checks a VM or template name: what users type and what becomes part of paths in messages.
    public static func validateName(_ name: String, what: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        guard !name.isEmpty, name.count <= 64, name.allSatisfy(allowed.contains), name.first != ".", name.first != "-" else {
            throw PVFSError(.store, "invalid \(what) name '\(name)': use 1-64 letters, digits, '-', '_' or '.', not starting with '.' or '-'",
                                    errno: .invalidArgument)
        }
    }

    /// Creates a VM over a ready template: a catalog row and an empty private area. Constant time
    /// whatever the template's size: nothing of the template is copied.
    public func provisionVM(name: String, template: String, quotaBytes: Int64? = nil, quotaInodes: Int64? = nil) throws -> VMRecord {
        try Self.validateName(name, what: "VM")
        let id: Int64 = try catalog.write { db in
            guard let templateRow = try Row.fetchOne(db, sql: "SELECT id, max_inode FROM template WHERE name = ? AND state = 'ready'", arguments: [template]) else {
                throw PVFSError(.store, "no template named \(template)", errno: .noSuchFileOrDirectory)
            }
            if try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM vm WHERE name = ?)", arguments: [name]) == true {
                throw PVFSError(.store, "a VM named \(name) exists already", errno: .fileExists)
            }
            try db.execute(sql: """
                INSERT INTO vm (name, template_id, state, created_ns, next_inode, quota_bytes, quota_inodes)
                VALUES (?, ?, 'provisioning', ?, ?, ?, ?)
                """, arguments: [name, templateRow[0] as Int64, Timespec.now.totalNanoseconds, (templateRow[1] as Int64) + 1, quotaBytes, quotaInodes])
            return db.lastInsertedRowID
        }
        do {
            try VMArea.create(in: self, vmID: id)
        } catch {
            try? catalog.write { db in try db.execute(sql: "DELETE FROM vm WHERE id = ?", arguments: [id]) }
            throw PVFSError(.store, "cannot create the private area of VM \(name): \(error)", errno: error)
        }
        return try catalog.write { db in
            try db.execute(sql: "UPDATE vm SET state = 'ready' WHERE id = ?", arguments: [id])
            return Self.vmRecord(try Row.fetchOne(db, sql: "SELECT \(Self.vmColumns) FROM vm JOIN template ON template.id = vm.template_id WHERE vm.id = ?", arguments: [id])!)
        }
    }

    public func listVMs() throws -> [VMRecord] {
        try catalog.read { db in
            try Row.fetchAll(db, sql: "SELECT \(Self.vmColumns) FROM vm JOIN template ON template.id = vm.template_id WHERE vm.state = 'ready' ORDER BY vm.name")
                .map(Self.vmRecord)
        }
    }

    public func vm(named name: String) throws -> VMRecord? {
        try catalog.read { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.vmColumns) FROM vm JOIN template ON template.id = vm.template_id WHERE vm.name = ? AND vm.state = 'ready'", arguments: [name])
                .map(Self.vmRecord)
        }
    }

    public func requireVM(named name: String) throws -> VMRecord {
        guard let vm = try vm(named: name) else { throw PVFSError(.store, "no VM named \(name)", errno: .noSuchFileOrDirectory) }
        return vm
    }

    /// Whether a process holds the VM (serves or mounts it).
    public func isVMInUse(_ vm: VMRecord) -> Bool {
        let area: VMArea?
        do {
            area = try VMArea.openIfFree(in: self, vmID: vm.id)
        } catch {
            return false  // no private area: nobody can hold it
        }
        guard let area else { return true }
        area.close()
        return false
    }

    /// Removes a VM and its private data. Refused while a process holds it.
    public func removeVM(named name: String) throws {
        let vm = try requireVM(named: name)
        // Without a private area there is nothing to hold; with one, its lock keeps the VM from
        // being opened until the catalog says it is going away.
        let area: VMArea?
        do {
            area = try VMArea.openIfFree(in: self, vmID: vm.id)
        } catch {
            logger.debug("VM \(name) has no private area to lock: \(error)")
            area = nil
        }
        if area == nil, (try? VMArea.openUnlocked(in: self, vmID: vm.id)) != nil {
            throw PVFSError(.store, "VM \(name) is in use (served by pvfsd or mounted); stop it first", errno: .resourceBusy)
        }
        try writeCatalog { db in
            try db.execute(sql: "UPDATE vm SET state = 'deleting', name = name || '.deleting.' || id WHERE id = ?", arguments: [vm.id])
        }
        area?.close()
        try finishVMRemoval(id: vm.id)
    }

    /// Second half of removal, also run by cleanup after a crash: data first, then the rows.
    func finishVMRemoval(id: Int64) throws {
        try removeTree(at: vmsDirectory, StoreLayout.vmDirectory(id))
        try writeCatalog { db in
            try db.execute(sql: "DELETE FROM vm_xattr WHERE vm_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM vm_dirent WHERE vm_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM vm_inode WHERE vm_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM vm WHERE id = ?", arguments: [id])
        }
    }

    public func renameVM(_ name: String, to newName: String) throws {
        try Self.validateName(newName, what: "VM")
        try catalog.write { db in
            guard try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM vm WHERE name = ? AND state = 'ready')", arguments: [name]) == true else {
                throw PVFSError(.store, "no VM named \(name)", errno: .noSuchFileOrDirectory)
            }
            if try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM vm WHERE name = ?)", arguments: [newName]) == true {
                throw PVFSError(.store, "a VM named \(newName) exists already", errno: .fileExists)
            }
            try db.execute(sql: "UPDATE vm SET name = ? WHERE name = ?", arguments: [newName, name])
        }
    }

    public func setQuota(vm name: String, bytes: Int64??, inodes: Int64??) throws {
        try catalog.write { db in
            guard let id = try Int64.fetchOne(db, sql: "SELECT id FROM vm WHERE name = ? AND state = 'ready'", arguments: [name]) else {
                throw PVFSError(.store, "no VM named \(name)", errno: .noSuchFileOrDirectory)
            }
            if let bytes { try db.execute(sql: "UPDATE vm SET quota_bytes = ? WHERE id = ?", arguments: [bytes, id]) }
            if let inodes { try db.execute(sql: "UPDATE vm SET quota_inodes = ? WHERE id = ?", arguments: [inodes, id]) }
        }
    }

    /// Sets a VM's share of the daemon's worker threads (`VMRecord.workerWeights`).
    public func setWorkerWeight(vm name: String, _ weight: Int) throws {
        guard VMRecord.workerWeights.contains(weight) else {
            throw PVFSError(.store, "invalid weight \(weight): use \(VMRecord.workerWeights.lowerBound) to \(VMRecord.workerWeights.upperBound)",
                            errno: .invalidArgument)
        }
        try catalog.write { db in
            guard let id = try Int64.fetchOne(db, sql: "SELECT id FROM vm WHERE name = ? AND state = 'ready'", arguments: [name]) else {
                throw PVFSError(.store, "no VM named \(name)", errno: .noSuchFileOrDirectory)
            }
            try db.execute(sql: "UPDATE vm SET worker_weight = ? WHERE id = ?", arguments: [weight, id])
        }
    }

    /// Finishes work a killed process left half done: VMs being provisioned or removed.
    /// Safe to run at any time: it skips what a live process still holds.
    public func cleanUpInterruptedVMOperations() throws {
        let stale: [(Int64, String)] = try catalog.read { db in
            try Row.fetchAll(db, sql: "SELECT id, state FROM vm WHERE state IN ('provisioning', 'deleting')").map { ($0[0], $0[1]) }
        }
        for (id, state) in stale {
            if state == "provisioning" {
                // A provisioning that still runs is younger than a few seconds; leave those.
                let age: Int64 = try catalog.read { db in
                    Timespec.now.totalNanoseconds - (try Int64.fetchOne(db, sql: "SELECT created_ns FROM vm WHERE id = ?", arguments: [id]) ?? 0)
                }
                if age < 60_000_000_000 { continue }
            }
            try finishVMRemoval(id: id)
        }
    }

    /// Removes a directory tree below `parent` without following symlinks.
    func removeTree(at parent: FileDescriptor, _ name: String) throws {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(at: parent, name, [.directory, .readOnly, .noFollow])
        } catch {
            if error == .noSuchFileOrDirectory { return }
            if error == .notDirectory || error == .tooManySymbolicLinkLevels {
                try parent.unlink(at: name)
                return
            }
            throw error
        }
        defer { fd.closeQuietly() }
        // Another process may be removing the same tree (crash cleanup finishing a removal that
        // is still running): what is gone already is fine.
        for entry in try fd.directoryEntries() {
            if entry.type == DT_DIR {
                try removeTree(at: fd, entry.name)
            } else if entry.type == DT_UNKNOWN, (try? fd.stat(at: entry.name))?.kind == .directory {
                try removeTree(at: fd, entry.name)
            } else {
                do {
                    try fd.unlink(at: entry.name)
                } catch {
                    if error != .noSuchFileOrDirectory { throw error }
                }
            }
        }
        do {
            try parent.unlink(at: name, directory: true)
        } catch {
            if error != .noSuchFileOrDirectory { throw error }
        }
    }
}
