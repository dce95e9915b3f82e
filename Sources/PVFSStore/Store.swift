import Foundation
import GRDB
import Logging
import PVFSSystem
import SystemPackage

/// Errors of the store layer, with the message a user should read.
public struct StoreError: Error, CustomStringConvertible, ErrnoConvertible {
    public var message: String
    public var errno: Errno

    public init(_ message: String, errno: Errno = .ioError) {
        self.message = message
        self.errno = errno
    }

    public var description: String { message }
}

/// A pvfs store: the directory holding the catalog, the blobs and the VMs' private areas.
///
///     <store>/catalog.db          SQLite catalog (WAL)
///     <store>/blobs/<xx>/<sha256> immutable content, named by its SHA-256
///     <store>/vms/<id>/data/...   each VM's private files
///     <store>/tmp/                staging for atomic publication
///     <store>/locks/              flock(2) files coordinating processes
public final class Store: Sendable {
    public static let defaultPath = "/var/lib/pvfs"

    public let path: String
    public let root: FileDescriptor
    public let blobsDirectory: FileDescriptor
    public let vmsDirectory: FileDescriptor
    public let temporaryDirectory: FileDescriptor
    public let locksDirectory: FileDescriptor
    public let catalog: DatabasePool
    public let logger: Logger

    /// Opens the store at `path`, creating its layout when `create` is true.
    public init(path: String, create: Bool = true, logger: Logger = Logger(label: "pvfs.store")) throws {
        self.path = path
        self.logger = logger
        if create {
            try Self.makeDirectories(path)
        }
        do {
            root = try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly])
        } catch {
            throw StoreError("cannot open store \(path): \(error)", errno: error)
        }
        do {
            blobsDirectory = try FileDescriptor.open(at: root, "blobs", [.directory, .readOnly])
            vmsDirectory = try FileDescriptor.open(at: root, "vms", [.directory, .readOnly])
            temporaryDirectory = try FileDescriptor.open(at: root, "tmp", [.directory, .readOnly])
            locksDirectory = try FileDescriptor.open(at: root, "locks", [.directory, .readOnly])
        } catch {
            throw StoreError("\(path) is not a pvfs store (run a pvfs command with --store \(path) to create one): \(error)", errno: error)
        }
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        configuration.foreignKeysEnabled = true
        configuration.label = "pvfs.catalog"
        configuration.prepareDatabase { db in
            // NORMAL is durable across process crashes in WAL mode; fsync-level durability is
            // requested explicitly where a client asked for it (see Catalog.checkpointDurably).
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        do {
            catalog = try DatabasePool(path: path + "/catalog.db", configuration: configuration)
            try CatalogSchema.migrator.migrate(catalog)
        } catch {
            throw StoreError("cannot open the catalog of \(path): \(error)")
        }
    }

    private static func makeDirectories(_ path: String) throws {
        for dir in [path, path + "/blobs", path + "/vms", path + "/tmp", path + "/locks"] {
            do {
                try FileDescriptor.currentDirectory.makeDirectory(at: dir, mode: 0o700)
            } catch where error == .fileExists {
                continue
            } catch {
                throw StoreError("cannot create \(dir): \(error)", errno: error)
            }
        }
    }

    deinit {
        for fd in [blobsDirectory, vmsDirectory, temporaryDirectory, locksDirectory, root] { fd.closeQuietly() }
    }
}

extension Store {
    /// Makes every committed catalog transaction durable. In WAL mode a commit is in the log;
    /// fsync of the log (and of the database, which a completed checkpoint already synced) makes
    /// it survive a power loss. Unlike a checkpoint this never waits for, or holds up, writers.
    public func syncCatalog() throws {
        for name in ["catalog.db-wal", "catalog.db"] {
            guard let fd = try? FileDescriptor.open(at: root, name, [.readOnly, .noFollow]) else { continue }
            defer { fd.closeQuietly() }
            try fd.sync()
        }
    }
}
