import GRDB

/// The catalog's tables, created by versioned migrations. docs/store-format.md and docs/engine.md describe them.
///
/// Conventions: times are nanoseconds since the epoch; `mode` is the full st_mode including the
/// S_IFMT type bits; names are BLOBs because a POSIX name is bytes, not text.
enum CatalogSchema {
    /// stat(2)'s fields of an inode, the same in a template's rows and a VM's.
    static let inodeAttributeColumns = [
        "mode INTEGER NOT NULL", "uid INTEGER NOT NULL", "gid INTEGER NOT NULL", "nlink INTEGER NOT NULL",
        "size INTEGER NOT NULL", "blocks INTEGER NOT NULL",
        "atime_ns INTEGER NOT NULL", "mtime_ns INTEGER NOT NULL", "ctime_ns INTEGER NOT NULL",
        "rdev INTEGER NOT NULL DEFAULT 0",
    ].joined(separator: ",\n    ")

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-templates-and-vms") { db in
            try db.execute(sql: """
                CREATE TABLE blob (
                    id INTEGER PRIMARY KEY,
                    hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
                    size INTEGER NOT NULL,
                    allocated INTEGER NOT NULL,
                    created_ns INTEGER NOT NULL
                );

                CREATE TABLE template (
                    id INTEGER PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    state TEXT NOT NULL CHECK (state IN ('building', 'ready', 'deleting')),
                    source TEXT NOT NULL DEFAULT '',
                    created_ns INTEGER NOT NULL,
                    entry_count INTEGER NOT NULL DEFAULT 0,
                    logical_bytes INTEGER NOT NULL DEFAULT 0,
                    max_inode INTEGER NOT NULL DEFAULT 1
                );

                CREATE TABLE template_inode (
                    template_id INTEGER NOT NULL REFERENCES template(id) ON DELETE CASCADE,
                    ino INTEGER NOT NULL,
                    \(inodeAttributeColumns),
                    blob_id INTEGER REFERENCES blob(id),
                    symlink_target BLOB,
                    PRIMARY KEY (template_id, ino)
                ) WITHOUT ROWID;
                CREATE INDEX template_inode_by_blob ON template_inode(blob_id) WHERE blob_id IS NOT NULL;

                CREATE TABLE template_dirent (
                    template_id INTEGER NOT NULL REFERENCES template(id) ON DELETE CASCADE,
                    parent INTEGER NOT NULL,
                    name BLOB NOT NULL,
                    ino INTEGER NOT NULL,
                    PRIMARY KEY (template_id, parent, name)
                ) WITHOUT ROWID;

                CREATE TABLE template_xattr (
                    template_id INTEGER NOT NULL REFERENCES template(id) ON DELETE CASCADE,
                    ino INTEGER NOT NULL,
                    name BLOB NOT NULL,
                    value BLOB NOT NULL,
                    PRIMARY KEY (template_id, ino, name)
                ) WITHOUT ROWID;

                CREATE TABLE vm (
                    id INTEGER PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    template_id INTEGER NOT NULL REFERENCES template(id) ON DELETE RESTRICT,
                    state TEXT NOT NULL CHECK (state IN ('provisioning', 'ready', 'deleting')),
                    created_ns INTEGER NOT NULL,
                    next_inode INTEGER NOT NULL,
                    quota_bytes INTEGER,
                    quota_inodes INTEGER,
                    used_bytes INTEGER NOT NULL DEFAULT 0,
                    used_inodes INTEGER NOT NULL DEFAULT 0,
                    usage_clean INTEGER NOT NULL DEFAULT 1
                );

                -- A VM's own inodes: new ones and template inodes it changed (copy-up).
                -- data: 0 none (directory, symlink, device, fifo), 1 shared blob, 2 private file
                -- at vms/<vm>/data/<xx>/<ino>.
                CREATE TABLE vm_inode (
                    vm_id INTEGER NOT NULL REFERENCES vm(id) ON DELETE CASCADE,
                    ino INTEGER NOT NULL,
                    \(inodeAttributeColumns),
                    parent INTEGER NOT NULL DEFAULT 0,
                    data INTEGER NOT NULL DEFAULT 0,
                    blob_id INTEGER REFERENCES blob(id),
                    symlink_target BLOB,
                    private_xattrs INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (vm_id, ino)
                ) WITHOUT ROWID;
                CREATE INDEX vm_inode_by_blob ON vm_inode(blob_id) WHERE blob_id IS NOT NULL;

                -- A VM's directory entries over the template's: ino 0 is a whiteout.
                CREATE TABLE vm_dirent (
                    vm_id INTEGER NOT NULL REFERENCES vm(id) ON DELETE CASCADE,
                    parent INTEGER NOT NULL,
                    name BLOB NOT NULL,
                    ino INTEGER NOT NULL,
                    PRIMARY KEY (vm_id, parent, name)
                ) WITHOUT ROWID;

                -- Extended attributes of inodes whose set the VM changed (vm_inode.private_xattrs = 1).
                CREATE TABLE vm_xattr (
                    vm_id INTEGER NOT NULL REFERENCES vm(id) ON DELETE CASCADE,
                    ino INTEGER NOT NULL,
                    name BLOB NOT NULL,
                    value BLOB NOT NULL,
                    PRIMARY KEY (vm_id, ino, name)
                ) WITHOUT ROWID;
                """)
        }
        registerTemplateMigrations(&migrator)
        registerAccessMigrations(&migrator)
        migrator.registerMigration("catalog-durability") { db in
            try db.execute(sql: """
                -- One row that Store.makeCatalogDurable rewrites under synchronous = FULL: a commit
                -- at which SQLite syncs the log, making every commit before it durable.
                CREATE TABLE catalog_durability (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    commits INTEGER NOT NULL
                );
                INSERT INTO catalog_durability (id, commits) VALUES (1, 0);
                """)
        }
        registerImageMigrations(&migrator)
        migrator.registerMigration("vm-worker-weight") { db in
            try db.execute(sql: """
                -- A VM's share of pvfsd's worker threads relative to other VMs' (docs/operations.md).
                ALTER TABLE vm ADD COLUMN worker_weight INTEGER NOT NULL DEFAULT 100
                    CHECK (worker_weight BETWEEN 1 AND 10000);
                """)
        }
        migrator.registerMigration("qid-versions") { db in
            try db.execute(sql: """
                -- qid versions outlive the process: each VM inode keeps its last version, and the
                -- VM keeps the counter they come from (exact after a clean close, a reservation
                -- above the versions handed out while the VM is served). docs/store-format.md.
                ALTER TABLE vm_inode ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE vm ADD COLUMN version_counter INTEGER NOT NULL DEFAULT 0;
                """)
        }
        return migrator
    }
}
