import Foundation
import GRDB
import PVFSSystem

/// A VM's access settings as stored in the catalog.
public struct VMAccessSettings: Codable, Sendable, Equatable {
    public var readOnly: Bool
    /// none, root-squash, all-squash or shift.
    public var idMapping: String
    public var anonymousUID: UInt32
    public var anonymousGID: UInt32
    public var shiftBase: UInt32
    public var shiftCount: UInt32

    public init(readOnly: Bool = false, idMapping: String = "none", anonymousUID: UInt32 = 65534, anonymousGID: UInt32 = 65534,
                shiftBase: UInt32 = 0, shiftCount: UInt32 = 65536) {
        self.readOnly = readOnly
        self.idMapping = idMapping
        self.anonymousUID = anonymousUID
        self.anonymousGID = anonymousGID
        self.shiftBase = shiftBase
        self.shiftCount = shiftCount
    }

    public static let mappings = ["none", "root-squash", "all-squash", "shift"]
}

/// One rule saying a kind of client may reach a VM.
public struct VMBinding: Codable, Sendable, Equatable, Hashable {
    public static let kinds = ["xen-domid", "xen-name", "listener", "tcp", "unix-uid", "any", "vhost-user"]
    /// Kinds whose value names one client, so it may be bound to one VM only.
    public static let exclusiveKinds: Set<String> = ["xen-domid", "xen-name", "vhost-user"]
    public static let squashModes = ["inherit", "none", "root", "all"]

    public var vm: String
    public var kind: String
    public var value: String
    /// rw or ro.
    public var access: String
    public var squash: String

    public init(vm: String, kind: String, value: String, access: String = "rw", squash: String = "inherit") {
        self.vm = vm
        self.kind = kind
        self.value = value
        self.access = access
        self.squash = squash
    }
}

extension Store {
    public func accessSettings(vm name: String) throws -> VMAccessSettings {
        try catalog.read { db in
            guard let row = try Row.fetchOne(db, sql: """
                SELECT read_only, id_mapping, anon_uid, anon_gid, shift_base, shift_count FROM vm WHERE name = ? AND state = 'ready'
                """, arguments: [name]) else {
                throw PVFSError(.store, "no VM named \(name)", errno: .noSuchFileOrDirectory)
            }
            return VMAccessSettings(readOnly: (row[0] as Int64) != 0, idMapping: row[1],
                                    anonymousUID: UInt32(truncatingIfNeeded: row[2] as Int64),
                                    anonymousGID: UInt32(truncatingIfNeeded: row[3] as Int64),
                                    shiftBase: UInt32(truncatingIfNeeded: row[4] as Int64),
                                    shiftCount: UInt32(truncatingIfNeeded: row[5] as Int64))
        }
    }

    public func setAccessSettings(vm name: String, _ settings: VMAccessSettings) throws {
        guard VMAccessSettings.mappings.contains(settings.idMapping) else {
            throw PVFSError(.store, "unknown id mapping \(settings.idMapping) (use \(VMAccessSettings.mappings.joined(separator: ", ")))", errno: .invalidArgument)
        }
        if settings.idMapping == "shift" {
            guard settings.shiftCount > 0, UInt64(settings.shiftBase) + UInt64(settings.shiftCount) <= UInt64(UInt32.max) else {
                throw PVFSError(.store, "the shifted range \(settings.shiftBase)+\(settings.shiftCount) does not fit in 32-bit ids", errno: .invalidArgument)
            }
        }
        try catalog.write { db in
            try db.execute(sql: """
                UPDATE vm SET read_only = ?, id_mapping = ?, anon_uid = ?, anon_gid = ?, shift_base = ?, shift_count = ?
                WHERE name = ? AND state = 'ready'
                """, arguments: [settings.readOnly ? 1 : 0, settings.idMapping, Int64(settings.anonymousUID), Int64(settings.anonymousGID),
                                 Int64(settings.shiftBase), Int64(settings.shiftCount), name])
            if db.changesCount == 0 { throw PVFSError(.store, "no VM named \(name)", errno: .noSuchFileOrDirectory) }
        }
    }

    public func bindings(vm name: String? = nil) throws -> [VMBinding] {
        try catalog.read { db in
            let sql = """
                SELECT vm.name, b.kind, b.value, b.access, b.squash FROM vm_binding b JOIN vm ON vm.id = b.vm_id
                WHERE vm.state = 'ready' \(name == nil ? "" : "AND vm.name = ?") ORDER BY vm.name, b.kind, b.value
                """
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(name.map { [$0] } ?? []))
                .map { VMBinding(vm: $0[0], kind: $0[1], value: $0[2], access: $0[3], squash: $0[4]) }
        }
    }

    public func addBinding(_ binding: VMBinding) throws {
        guard VMBinding.kinds.contains(binding.kind) else {
            throw PVFSError(.store, "unknown binding kind \(binding.kind)", errno: .invalidArgument)
        }
        guard ["rw", "ro"].contains(binding.access), VMBinding.squashModes.contains(binding.squash) else {
            throw PVFSError(.store, "invalid binding access or squash", errno: .invalidArgument)
        }
        try catalog.write { db in
            guard let id = try Int64.fetchOne(db, sql: "SELECT id FROM vm WHERE name = ? AND state = 'ready'", arguments: [binding.vm]) else {
                throw PVFSError(.store, "no VM named \(binding.vm)", errno: .noSuchFileOrDirectory)
            }
            if VMBinding.exclusiveKinds.contains(binding.kind) {
                // One Xen domain or vhost-user socket reaches one VM: a second claim would be ambiguous.
                if let other = try String.fetchOne(db, sql: """
                    SELECT vm.name FROM vm_binding b JOIN vm ON vm.id = b.vm_id WHERE b.kind = ? AND b.value = ? AND b.vm_id != ?
                    """, arguments: [binding.kind, binding.value, id]) {
                    throw PVFSError(.store, "\(binding.kind) \(binding.value) is bound to VM \(other) already", errno: .fileExists)
                }
            }
            try db.execute(sql: "INSERT OR REPLACE INTO vm_binding (vm_id, kind, value, access, squash) VALUES (?, ?, ?, ?, ?)",
                           arguments: [id, binding.kind, binding.value, binding.access, binding.squash])
        }
    }

    public func removeBinding(vm name: String, kind: String, value: String) throws {
        try catalog.write { db in
            try db.execute(sql: """
                DELETE FROM vm_binding WHERE kind = ? AND value = ? AND vm_id = (SELECT id FROM vm WHERE name = ? AND state = 'ready')
                """, arguments: [kind, value, name])
            if db.changesCount == 0 { throw PVFSError(.store, "VM \(name) has no binding \(kind) \(value)", errno: .noSuchFileOrDirectory) }
        }
    }
}
