import GRDB

extension CatalogSchema {
    /// Access rules: per-VM defaults and bindings that say which clients may reach a VM
    /// (like NFS exports, with Xen domains, listeners and peer ids instead of hosts).
    static func registerAccessMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v2-access-rules") { db in
            try db.execute(sql: """
                ALTER TABLE vm ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE vm ADD COLUMN id_mapping TEXT NOT NULL DEFAULT 'none'
                    CHECK (id_mapping IN ('none', 'root-squash', 'all-squash', 'shift'));
                ALTER TABLE vm ADD COLUMN anon_uid INTEGER NOT NULL DEFAULT 65534;
                ALTER TABLE vm ADD COLUMN anon_gid INTEGER NOT NULL DEFAULT 65534;
                ALTER TABLE vm ADD COLUMN shift_base INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE vm ADD COLUMN shift_count INTEGER NOT NULL DEFAULT 65536;

                -- Who may reach a VM. kind: xen-domid, xen-name, listener, tcp, unix-uid, any.
                -- access narrows the VM's own mode (ro wins); squash overrides its squashing.
                CREATE TABLE vm_binding (
                    vm_id INTEGER NOT NULL REFERENCES vm(id) ON DELETE CASCADE,
                    kind TEXT NOT NULL CHECK (kind IN ('xen-domid', 'xen-name', 'listener', 'tcp', 'unix-uid', 'any')),
                    value TEXT NOT NULL,
                    access TEXT NOT NULL DEFAULT 'rw' CHECK (access IN ('rw', 'ro')),
                    squash TEXT NOT NULL DEFAULT 'inherit' CHECK (squash IN ('inherit', 'none', 'root', 'all')),
                    PRIMARY KEY (vm_id, kind, value)
                ) WITHOUT ROWID;
                CREATE INDEX vm_binding_by_identity ON vm_binding(kind, value);
                """)
        }
        // A vhost-user socket pvfsd listens on serves exactly one VM: identity by socket. The
        // kind CHECK cannot be altered in place, so the table is rebuilt with the new kind.
        migrator.registerMigration("vhost-user-bindings") { db in
            try db.execute(sql: """
                CREATE TABLE vm_binding_new (
                    vm_id INTEGER NOT NULL REFERENCES vm(id) ON DELETE CASCADE,
                    kind TEXT NOT NULL CHECK (kind IN ('xen-domid', 'xen-name', 'listener', 'tcp', 'unix-uid', 'any', 'vhost-user')),
                    value TEXT NOT NULL,
                    access TEXT NOT NULL DEFAULT 'rw' CHECK (access IN ('rw', 'ro')),
                    squash TEXT NOT NULL DEFAULT 'inherit' CHECK (squash IN ('inherit', 'none', 'root', 'all')),
                    PRIMARY KEY (vm_id, kind, value)
                ) WITHOUT ROWID;
                INSERT INTO vm_binding_new (vm_id, kind, value, access, squash)
                    SELECT vm_id, kind, value, access, squash FROM vm_binding;
                DROP TABLE vm_binding;
                ALTER TABLE vm_binding_new RENAME TO vm_binding;
                CREATE INDEX vm_binding_by_identity ON vm_binding(kind, value);
                """)
        }
    }
}
