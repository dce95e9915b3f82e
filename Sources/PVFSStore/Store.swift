import Foundation
import GRDB
import Logging
import PVFSSystem
import Synchronization
import SystemPackage

/// A pvfs store: the directory holding the catalog, the blobs and the VMs' private areas
/// (`StoreLayout` names every part of it).
///
/// The catalog's files belong to SQLite alone: pvfs never opens, copies or syncs them itself.
/// Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
/// included; another process would then take itself for the catalog's last user, checkpoint
/// and delete the log under this one (docs/store-format.md, "The catalog's files").
public final class Store: Sendable {
    public static let defaultPath = "/var/lib/pvfs"
    /// Where SQLite opens the catalog of the store at `storePath`.
    public static func catalogPath(inStore storePath: String) -> String { storePath + "/" + StoreLayout.catalog }
    public var catalogPath: String { Self.catalogPath(inStore: path) }

    public let path: String
    let root: FileDescriptor
    public let blobsDirectory: FileDescriptor
    let vmsDirectory: FileDescriptor
    public let temporaryDirectory: FileDescriptor
    let locksDirectory: FileDescriptor
    /// The catalog's connections. Only the store runs SQL: the layers above ask for what they need
    /// through its API, in their own terms (`openVM`, `loadTemplateImage`, `VMOverlayCatalog`).
    let catalog: DatabasePool
    public let logger: Logger
    /// Space held back for catalog commits on a full filesystem (`SpaceReserve`).
    public let spaceReserve: SpaceReserve
    /// `totalChangesCount` of the catalog's writer connection right after its last durable
    /// commit (`makeCatalogDurable`); -1 before the first.
    private let changesAtLastDurableCommit = Mutex<Int>(-1)

    /// Opens the store at `path`, creating its layout when `create` is true. `spaceReserve` is
    /// the size of its space reserve in bytes (0: none); nil takes `PVFS_SPACE_RESERVE` or the
    /// default (`SpaceReserve`).
    public init(path: String, create: Bool = true, spaceReserve reserveBytes: Int64? = nil,
                logger: Logger = Logger(label: "pvfs.store")) throws {
        self.path = path
        self.logger = logger
        if create {
            try Self.makeDirectories(path)
        }
        do {
            root = try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly])
        } catch {
            throw PVFSError(.store, "cannot open store \(path): \(error)", errno: error)
        }
        do {
            blobsDirectory = try FileDescriptor.open(at: root, StoreLayout.blobs, [.directory, .readOnly])
            vmsDirectory = try FileDescriptor.open(at: root, StoreLayout.vms, [.directory, .readOnly])
            temporaryDirectory = try FileDescriptor.open(at: root, StoreLayout.temporary, [.directory, .readOnly])
            locksDirectory = try FileDescriptor.open(at: root, StoreLayout.locks, [.directory, .readOnly])
        } catch {
            throw PVFSError(.store, "\(path) is not a pvfs store (run a pvfs command with --store \(path) to create one): \(error)", errno: error)
        }
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        configuration.foreignKeysEnabled = true
        configuration.label = "pvfs.catalog"
        configuration.prepareDatabase { db in
            // NORMAL is durable across process crashes in WAL mode; durability against power
            // loss is asked for where a client needs it (`makeCatalogDurable`).
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        do {
            catalog = try DatabasePool(path: Self.catalogPath(inStore: path), configuration: configuration)
            try CatalogSchema.migrator.migrate(catalog)
        } catch {
            throw PVFSError(.store, "cannot open the catalog of \(path): \(error)")
        }
        spaceReserve = SpaceReserve(directory: root, bytes: reserveBytes ?? Self.configuredReserve(root, logger: logger),
                                    logger: logger)
    }

    private static func makeDirectories(_ path: String) throws {
        for dir in [path] + StoreLayout.topLevelDirectories.map({ path + "/" + $0 }) {
            do {
                try FileDescriptor.currentDirectory.makeDirectory(at: dir, mode: 0o700)
            } catch where error == .fileExists {
                continue
            } catch {
                throw PVFSError(.store, "cannot create \(dir): \(error)", errno: error)
            }
        }
    }

    deinit {
        for fd in [blobsDirectory, vmsDirectory, temporaryDirectory, locksDirectory, root] { fd.closeQuietly() }
    }

    /// statfs of the store's filesystem: where the VMs' private files and the blobs live.
    public func fileSystemStatistics() throws(Errno) -> FileSystemStatistics {
        try root.fileSystemStatistics()
    }
}

extension Store {
    /// Makes every transaction committed through this store's catalog durable against power loss.
    ///
    /// The catalog commits with `synchronous = NORMAL`: in WAL mode a commit survives a crash of
    /// any process as soon as it returns, and a power loss once the log is synced. This commits
    /// one small transaction (a counter in `catalog_durability`) under `synchronous = FULL`, so
    /// SQLite syncs the log at that commit, and with it every frame written before (commits that
    /// a checkpoint already moved into the database file were synced by that checkpoint). When
    /// nothing was committed through this store's writer since its last durable commit, nothing
    /// is written.
    ///
    /// SQLite does the syncing: pvfs never opens the catalog's files (see `Store`).
    public func makeCatalogDurable() throws {
        do {
            try withSpaceReserve { try catalog.writeWithoutTransaction { db in
                if changesAtLastDurableCommit.withLock({ $0 }) == db.totalChangesCount { return }
                try db.execute(sql: "PRAGMA synchronous = FULL")
                defer { try? db.execute(sql: "PRAGMA synchronous = NORMAL") }
                try db.inTransaction {
                    try db.execute(sql: "UPDATE catalog_durability SET commits = commits + 1")
                    return .commit
                }
                let changes = db.totalChangesCount
                changesAtLastDurableCommit.withLock { $0 = changes }
            } }
        } catch {
            throw PVFSError(.store, "cannot make the catalog of \(path) durable: \(error)")
        }
    }
}
