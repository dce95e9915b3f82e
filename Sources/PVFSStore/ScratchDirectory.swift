import Foundation
import Glibc
import PVFSSystem
import SystemPackage

/// A private working directory in the store's tmp/ (e.g. a debootstrap target), owned through
/// the flock on `tmp/<kind>-<token>.lock`. When its owner dies the lock is free and
/// `Store.cleanUpInterruptedIngests` removes the directory, first detaching anything left
/// mounted below it (debootstrap mounts /proc and /sys inside its target).
public final class ScratchDirectory: @unchecked Sendable {
    public let path: String
    let name: String
    let store: Store
    private let lock: LockFile

    /// Kinds cleanup recognises.
    static let kinds = ["recipe", "image"]

    public init(store: Store, kind: String) throws {
        precondition(Self.kinds.contains(kind))
        self.store = store
        name = "\(kind)-\(makeIngestToken())"
        path = Store.absolutePath(store.path) + "/" + StoreLayout.temporary + "/" + name
        lock = try Self.create(store: store, name: name, path: path)
    }

    private static func create(store: Store, name: String, path: String) throws -> LockFile {
        let acquired: LockFile?
        do {
            acquired = try LockFile.acquire(at: store.temporaryDirectory, name + ".lock", exclusive: true, nonBlocking: true)
        } catch {
            throw PVFSError(.store, "cannot create \(path).lock: \(error)", errno: error)
        }
        guard let lock = acquired else { throw PVFSError(.store, "cannot lock \(path)", errno: .resourceBusy) }
        do {
            try store.temporaryDirectory.makeDirectory(at: name, mode: 0o755)
        } catch {
            _ = try? store.temporaryDirectory.unlink(at: name + ".lock")
            throw PVFSError(.store, "cannot create \(path): \(error)", errno: error)
        }
        return lock
    }

    /// Removes the directory (and whatever is still mounted below it) and the lock file.
    public func remove() throws {
        try store.removeScratch(name)
        _ = lock
    }
}

extension Store {
    /// Removes `tmp/<name>` without crossing into other filesystems (lazily unmounting any found
    /// below it), then `tmp/<name>.lock`.
    func removeScratch(_ name: String) throws {
        let full = path + "/" + StoreLayout.temporary + "/" + name
        Self.detachMounts(below: Self.absolutePath(full))
        try removeTreeOnOneFileSystem(parent: temporaryDirectory, name: Array(name.utf8), device: try root.stat().device, display: full)
        _ = try? temporaryDirectory.unlink(at: name + ".lock")
    }

    /// Lazily unmounts every mount point at or below `path` (deepest first).
    static func detachMounts(below path: String) {
        guard let mountinfo = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return }
        var points: [String] = []
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { continue }
            let point = unescapeMountPath(String(fields[4]))
            if point == path || point.hasPrefix(path + "/") { points.append(point) }
        }
        for point in points.sorted(by: { $0.count > $1.count }) {
            _ = umount2(point, Int32(MNT_DETACH))
        }
    }

    private static func unescapeMountPath(_ s: String) -> String {
        // mountinfo escapes space, tab, newline and backslash as \ooo.
        var out: [UInt8] = []
        let bytes = Array(s.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
               let value = UInt8(String(decoding: bytes[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(value)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Removes a tree below `parent`, never following symlinks and refusing to descend into a
    /// directory on another filesystem than `device`.
    func removeTreeOnOneFileSystem(parent: FileDescriptor, name: [UInt8], device: UInt64, display: String) throws {
        let opened: Result<FileDescriptor, Errno> = Result { () throws(Errno) in
            try FileDescriptor.open(at: parent, name, [.directory, .readOnly, .noFollow])
        }
        let fd: FileDescriptor
        switch opened {
        case .success(let descriptor):
            fd = descriptor
        case .failure(.noSuchFileOrDirectory):
            return
        case .failure(let error) where error == .notDirectory || error == .tooManySymbolicLinkLevels:
            try parent.unlink(at: name)
            return
        case .failure(let error):
            throw PVFSError(.store, "cannot remove \(display): \(error)", errno: error)
        }
        defer { fd.closeQuietly() }
        if try fd.stat().device != device {
            throw PVFSError(.store, "cannot remove \(display): a filesystem is still mounted there", errno: .resourceBusy)
        }
        for entry in try fd.rawDirectoryEntries() {
            let isDirectory = entry.type == DT_DIR || (entry.type == DT_UNKNOWN && (try? fd.stat(at: entry.name))?.kind == .directory)
            if isDirectory {
                try removeTreeOnOneFileSystem(parent: fd, name: entry.name, device: device,
                                              display: display + "/" + String(decoding: entry.name, as: UTF8.self))
            } else {
                try? fd.unlink(at: entry.name)
            }
        }
        try? parent.unlink(at: name, directory: true)
    }

    /// Removes scratch directories whose owners died.
    func cleanUpAbandonedScratch() -> Int {
        guard let entries = try? temporaryDirectory.rawDirectoryEntries() else { return 0 }
        var removed = 0
        for entry in entries {
            let name = String(decoding: entry.name, as: UTF8.self)
            guard name.hasSuffix(".lock"), ScratchDirectory.kinds.contains(where: { name.hasPrefix($0 + "-") }) else { continue }
            let base = String(name.dropLast(".lock".count))
            guard let lock = try? LockFile.acquire(at: temporaryDirectory, name, exclusive: true, nonBlocking: true) else { continue }
            do {
                try removeScratch(base)
                removed += 1
            } catch {
                logger.warning("cannot remove the abandoned \(path)/\(StoreLayout.temporary)/\(base): \(error)")
            }
            withExtendedLifetime(lock) {}
        }
        return removed
    }
}
