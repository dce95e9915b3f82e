import Dispatch
import Foundation
import Glibc
import PVFSEngine
import PVFSSystem
import SystemPackage

/// The users and groups a VM defines in its own /etc/passwd and /etc/group.
///
/// 9P2000.L carries only a uid per attach (and a gid on creating requests), while the guest's
/// kernel checks access with the process's full group list. The server, which checks again,
/// rebuilds that list the way the guest's login would: primary group from passwd, supplementary
/// groups from the member lists of /etc/group. The files are the VM's own, so a guest can only
/// name groups for its own users; that grants nothing its root could not do anyway.
struct GuestAccountDatabase: Sendable, Equatable {
    var primaryGroup: [UInt32: UInt32] = [:]
    var uidByName: [[UInt8]: UInt32] = [:]
    var supplementaryGroups: [UInt32: [UInt32]] = [:]

    /// Largest account file read (a real one is a few KiB).
    static let maximumFileSize = 4 << 20

    static func parse(passwd: [UInt8], group: [UInt8]) -> GuestAccountDatabase {
        var db = GuestAccountDatabase()
        for line in passwd.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
            guard fields.count >= 4, !fields[0].isEmpty,
                  let uid = decimal(fields[2]), let gid = decimal(fields[3]) else { continue }
            let name = Array(fields[0])
            if db.uidByName[name] == nil { db.uidByName[name] = uid }
            if db.primaryGroup[uid] == nil { db.primaryGroup[uid] = gid }
        }
        for line in group.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
            guard fields.count >= 4, let gid = decimal(fields[2]) else { continue }
            for member in fields[3].split(separator: UInt8(ascii: ",")) {
                guard let uid = db.uidByName[Array(member)] else { continue }
                var list = db.supplementaryGroups[uid] ?? []
                if !list.contains(gid) && list.count < 65536 { list.append(gid) }
                db.supplementaryGroups[uid] = list
            }
        }
        return db
    }

    /// A decimal id, nil unless the field is all digits and fits 32 bits.
    static func decimal(_ field: some Collection<UInt8>) -> UInt32? {
        guard !field.isEmpty, field.count <= 10 else { return nil }
        var value: UInt64 = 0
        for b in field {
            guard b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + UInt64(b - UInt8(ascii: "0"))
        }
        return value <= UInt64(UInt32.max) ? UInt32(value) : nil
    }

    /// Reads the VM's account files as its root would; missing or unreadable files count as empty.
    static func load(from view: VMView) -> GuestAccountDatabase {
        parse(passwd: readEtcFile(view, "passwd"), group: readEtcFile(view, "group"))
    }

    private static func readEtcFile(_ view: VMView, _ name: String) -> [UInt8] {
        do {
            let etc = try view.lookup(rootInode, Array("etc".utf8), as: .root)
            guard etc.kind == .directory else { return [] }
            let file = try view.lookup(etc.inode, Array(name.utf8), as: .root)
            guard file.kind == .regular else { return [] }
            let handle = try view.open(file.inode, flags: O_RDONLY, as: .root)
            defer { view.release(handle) }
            var content: [UInt8] = []
            while content.count < maximumFileSize {
                let chunk = try view.read(handle, offset: Int64(content.count), count: min(65536, maximumFileSize - content.count))
                if chunk.isEmpty { break }
                content += chunk
            }
            return content
        } catch {
            return []
        }
    }
}

/// Credentials of a connection's users, per the configured `NinePAccountPolicy`.
final class GuestAccounts: @unchecked Sendable {
    static let nobodyGroup: UInt32 = 65534

    let policy: NinePAccountPolicy
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var database: GuestAccountDatabase?
    private var loadedAt: UInt64 = 0
    private var loadedFor: String = ""

    init(policy: NinePAccountPolicy) {
        self.policy = policy
    }

    private func current(_ view: VMView) -> GuestAccountDatabase {
        guard case .guestDatabase(let refresh) = policy else { return GuestAccountDatabase() }
        let now = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        defer { lock.unlock() }
        let age = Double(now &- loadedAt) / 1e9
        if let database, loadedFor == view.vmName, age < refresh {
            return database
        }
        let fresh = GuestAccountDatabase.load(from: view)
        database = fresh
        loadedAt = now
        loadedFor = view.vmName
        return fresh
    }

    /// Who `uid` acts as. `requestGid` is the gid a creating request carries (the guest's fsgid
    /// for the new file); it becomes the primary group and the account's groups still apply.
    func credentials(uid: UInt32, requestGid: UInt32? = nil, view: VMView) -> Credentials {
        if uid == 0 { return Credentials(uid: 0, gid: requestGid ?? 0) }
        switch policy {
        case .uidOnly(let gid):
            return Credentials(uid: uid, gid: requestGid ?? gid)
        case .guestDatabase:
            let db = current(view)
            let primary = db.primaryGroup[uid] ?? Self.nobodyGroup
            var groups = db.supplementaryGroups[uid] ?? []
            if let requestGid, requestGid != primary, db.primaryGroup[uid] != nil, !groups.contains(primary) {
                groups.append(primary)
            }
            return Credentials(uid: uid, gid: requestGid ?? primary, groups: groups)
        }
    }

    /// The uid of a user name, from the VM's /etc/passwd.
    func uid(named name: [UInt8], view: VMView) -> UInt32? {
        current(view).uidByName[name]
    }
}
