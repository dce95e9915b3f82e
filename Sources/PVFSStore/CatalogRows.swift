import Foundation
import GRDB

extension Row {
    /// A BLOB column as bytes (names, symlink targets, xattr values); empty for NULL.
    func bytes(_ index: Int) -> [UInt8] {
        guard let data = self[index] as Data? else { return [] }
        return [UInt8](data)
    }

    /// A BLOB column as bytes, nil for NULL.
    func optionalBytes(_ index: Int) -> [UInt8]? {
        guard let data = self[index] as Data? else { return nil }
        return [UInt8](data)
    }
}

extension Array where Element == UInt8 {
    /// The bytes as a value SQLite stores as a BLOB.
    var databaseBlob: Data { Data(self) }
}
