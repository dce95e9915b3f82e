import GRDB

extension CatalogSchema {
    /// Templates made from container images keep the image's identity and configuration
    /// (`pvfs-template show` prints it; docs/store-format.md describes the table).
    static func registerImageMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v3-template-image") { db in
            try db.execute(sql: """
                -- One row per template made from an OCI image or a docker/podman archive.
                CREATE TABLE template_image (
                    template_id INTEGER PRIMARY KEY REFERENCES template(id) ON DELETE CASCADE,
                    format TEXT NOT NULL CHECK (format IN ('oci-layout', 'oci-archive', 'docker-archive')),
                    manifest_digest TEXT,
                    config_digest TEXT NOT NULL,
                    platform TEXT NOT NULL,
                    layers INTEGER NOT NULL,
                    config BLOB NOT NULL
                );
                """)
        }
    }
}
