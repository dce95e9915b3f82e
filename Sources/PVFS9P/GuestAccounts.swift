import Dispatch
import Foundation
import Glibc
import PVFSEngine
import PVFSSystem
import SystemPackage

/// The users and groups a VM defines in its own /etc/passwd and /etc/group.
///
/// 9P2000.L carries only a uid per attach (and a gid on creating requests). Where the server
/// checks permissions itself (squashed guests, docs/access.md) it rebuilds a user's group list
/// the way the guest's login would: primary group from passwd, supplementary groups from the
/// member lists of /etc/group. The files are the VM's own, so a guest can only name groups for
/// its own users; that grants nothing its root could not do anyway.
struct GuestAccountDatabase: Sendable, Equatable {
    var primaryGroup: [UInt32: UInt32] = [:]
    var uidByName: [[UInt8]: UInt32] = [:]
    var supplementaryGroups: [UInt32: [UInt32]] = [:]

    /// Largest account file read (a real one is a few KiB).
    static let maximumFileSize = 4 << 20
    /// Supplementary groups kept per user (Linux's NGROUPS_MAX).
    static let maximumGroupsPerUser = 65536

    /// Parses both files in time linear in their size: a hostile /etc/group (one user in every
    /// one of a hundred thousand groups) costs no more than reading it.
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
        var seen = Set<UInt64>()
        for line in group.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
            guard fields.count >= 4, let gid = decimal(fields[2]) else { continue }
            for member in fields[3].split(separator: UInt8(ascii: ",")) {
                guard let uid = db.uidByName[Array(member)] else { continue }
                guard seen.insert(UInt64(uid) << 32 | UInt64(gid)).inserted else { continue }
                // Appended in place: no copy of the user's list per group.
                db.supplementaryGroups[uid, default: []].append(gid)
            }
        }
        for (uid, groups) in db.supplementaryGroups where groups.count > maximumGroupsPerUser {
            db.supplementaryGroups[uid] = Array(groups.prefix(maximumGroupsPerUser))
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

/// Where a file of the VM's stands: parsed contents stay valid while it stays.
struct GuestAccountFileStamp: Sendable, Equatable {
    var inode: InodeNumber
    var size: Int64
    var modificationTime: Timespec
    var changeTime: Timespec
    var version: UInt64

    init?(_ view: VMView, _ name: String) {
        guard let etc = try? view.lookup(rootInode, Array("etc".utf8), as: .root), etc.kind == .directory,
              let a = try? view.lookup(etc.inode, Array(name.utf8), as: .root) else { return nil }
        inode = a.inode
        size = a.size
        modificationTime = a.modificationTime
        changeTime = a.changeTime
        version = a.version
    }
}

/// Parsed account files, shared by every connection of a VM, so that a guest opening many
/// connections (or reconnecting) costs one parse per change of its files, not one per
/// connection. Entries hold their VM (`VMView.vmIdentity`) weakly: a VM closed and another
/// opened in its place never see each other's accounts.
final class GuestAccountCache: @unchecked Sendable {
    static let shared = GuestAccountCache()
    /// Entries kept at most; past it, those of closed VMs go first, then any.
    static let maximumEntries = 1024

    private struct Entry {
        /// `VMView.vmIdentity`, held weakly.
        weak var vm: AnyObject?
        var stamps: [GuestAccountFileStamp?]
        var database: GuestAccountDatabase
    }

    private let lock = NSLock()
    /// Guarded by `lock`.
    private var entries: [ObjectIdentifier: Entry] = [:]
    /// Parses done (tests and metrics).
    private(set) var parses = 0

    func database(for view: VMView) -> GuestAccountDatabase {
        let stamps = [GuestAccountFileStamp(view, "passwd"), GuestAccountFileStamp(view, "group")]
        let key = ObjectIdentifier(view.vmIdentity)
        lock.lock()
        if let entry = entries[key], entry.vm === view.vmIdentity, entry.stamps == stamps {
            lock.unlock()
            return entry.database
        }
        lock.unlock()
        // Read and parsed outside the lock: another VM's connections need not wait for it.
        let fresh = GuestAccountDatabase.load(from: view)
        lock.lock()
        defer { lock.unlock() }
        parses += 1
        if entries[key] == nil && entries.count >= Self.maximumEntries {
            entries = entries.filter { $0.value.vm != nil }
            if entries.count >= Self.maximumEntries, let victim = entries.keys.first { entries[victim] = nil }
        }
        entries[key] = Entry(vm: view.vmIdentity, stamps: stamps, database: fresh)
        return fresh
    }

    /// Forgets every entry (tests).
    func removeAll() {
        lock.lock()
        entries = [:]
        lock.unlock()
    }
}

/// Credentials of a connection's users, per the configured `NinePAccountPolicy`.
final class GuestAccounts: @unchecked Sendable {
    /// The gid of a user the VM's /etc/passwd does not list, outside creating requests: no
    /// group at all (chown(2) reserves -1), so that only the "other" bits apply to him, as they
    /// would in the guest to any user whose group owns nothing.
    static let noGroup = UInt32.max

    let policy: NinePAccountPolicy
    private let cache: GuestAccountCache
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var database: GuestAccountDatabase?
    private var loadedAt: UInt64 = 0
    private var loadedFor: ObjectIdentifier?

    init(policy: NinePAccountPolicy, cache: GuestAccountCache = .shared) {
        self.policy = policy
        self.cache = cache
    }

    private func current(_ view: VMView) -> GuestAccountDatabase {
        guard case .guestDatabase(let refresh) = policy else { return GuestAccountDatabase() }
        let now = DispatchTime.now().uptimeNanoseconds
        let vm = ObjectIdentifier(view.vmIdentity)
        lock.lock()
        let age = Double(now &- loadedAt) / 1e9
        if let database, loadedFor == vm, age < refresh {
            lock.unlock()
            return database
        }
        lock.unlock()
        let fresh = cache.database(for: view)
        lock.lock()
        database = fresh
        loadedAt = now
        loadedFor = vm
        lock.unlock()
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
            let primary = db.primaryGroup[uid]
            var groups = db.supplementaryGroups[uid] ?? []
            if let requestGid, let primary, requestGid != primary, !groups.contains(primary) {
                groups.append(primary)
            }
            return Credentials(uid: uid, gid: requestGid ?? primary ?? Self.noGroup, groups: groups)
        }
    }

    /// The uid of a user name, from the VM's /etc/passwd.
    func uid(named name: [UInt8], view: VMView) -> UInt32? {
        current(view).uidByName[name]
    }
}
