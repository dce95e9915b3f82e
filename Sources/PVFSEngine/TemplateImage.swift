import PVFSStore
import PVFSSystem

/// A template's tree held in memory, immutable and shared by every VM built on it: the lower
/// layer of their views. Inode numbers are the template's own (root = 1).
final class TemplateImage: Sendable {
    let templateID: Int64
    let maximumInode: InodeNumber
    /// Indexed by inode number; nil where the number is unused.
    let inodes: [InodeRecord?]
    /// Entries of each directory, by name.
    let directories: [InodeNumber: [FileName: InodeNumber]]
    let xattrs: [InodeNumber: [[UInt8]: [UInt8]]]

    /// Takes the tree the store loaded (`Store.loadTemplateImage`) as it is.
    init(_ source: consuming TemplateImageSource) {
        templateID = source.templateID
        maximumInode = source.maximumInode
        inodes = source.inodes
        directories = source.directories
        xattrs = source.xattrs
    }

    func record(_ ino: InodeNumber) -> InodeRecord? {
        guard ino < UInt64(inodes.count) else { return nil }
        return inodes[Int(ino)]
    }

    func contains(_ ino: InodeNumber) -> Bool { record(ino) != nil }
}
