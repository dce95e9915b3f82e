import GRDB

/// Raw SQL on a store's catalog, beneath the store's API. Every fixture and nearly every test
/// goes through the store's API (`TemplateTree`, `provisionVM`, `openVM`, ...); this is the one
/// way around it, for tests that must look or reach under it:
///
/// - tests that damage the catalog on purpose (fsck findings, commit failures from a trigger or a
///   full database, a crash halfway through an ingest) to see the store notice and repair it;
/// - tests that check what the API does not report: `PRAGMA integrity_check`, foreign keys,
///   rows left behind (orphans, usage_clean), the durability counter.
///
/// `catalog` is `store.catalog`, which only `@testable import PVFSStore` reaches: the catalog is
/// the store's alone.
public struct CatalogSQL {
    private let catalog: DatabasePool

    public init(_ catalog: DatabasePool) {
        self.catalog = catalog
    }

    public func read<T>(_ body: (Database) throws -> T) throws -> T {
        try catalog.read(body)
    }

    public func write<T>(_ body: (Database) throws -> T) throws -> T {
        try catalog.write(body)
    }

    /// Statements that must run outside a transaction (PRAGMAs such as max_page_count).
    public func writeWithoutTransaction<T>(_ body: (Database) throws -> T) throws -> T {
        try catalog.writeWithoutTransaction(body)
    }
}
