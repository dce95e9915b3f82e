import GRDB

extension CatalogSchema {
    /// Template ingest bookkeeping: which running (or killed) ingest owns a template that is not
    /// ready yet. docs/store-format.md describes the protocol.
    static func registerTemplateMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("template-ingest-token") { db in
            try db.execute(sql: """
                -- The token of the ingest building this template: its lock is tmp/ingest-<token>.lock,
                -- its staging directory tmp/ingest-<token>/. NULL once the template is ready.
                ALTER TABLE template ADD COLUMN ingest_token TEXT;
                """)
        }
    }
}
