import PVFSStore
import PVFSSystem

/// A template's tree held in memory, immutable and shared by every VM built on it: the lower
/// layer of their views. Inode numbers are the template's own (root = 1). One instance serves
/// every open volume of the template (`TemplateImageCache`).
final class TemplateImage: Sendable {
    let identity: TemplateIdentity
    var templateID: Int64 { identity.id }
    let maximumInode: InodeNumber
    /// Indexed by inode number; nil where the number is unused.
    let inodes: [InodeRecord?]
    /// Entries of each directory, by name.
    let directories: [InodeNumber: [FileName: InodeNumber]]
    /// Entries of each directory in readdir order (by cookie): the listing of a directory the VM
    /// has not changed.
    let listings: [InodeNumber: [DirectoryEntry]]
    let xattrs: [InodeNumber: [[UInt8]: [UInt8]]]
    /// blob id → hash of every blob the template's files reference.
    let blobHashes: [Int64: BlobHash]

    /// Takes the tree the store loaded (`Store.loadTemplateImage`) as it is.
    init(_ source: consuming TemplateImageSource) {
        identity = source.identity
        maximumInode = source.maximumInode
        let inodes = source.inodes
        let directories = source.directories
        var listings: [InodeNumber: [DirectoryEntry]] = [:]
        listings.reserveCapacity(directories.count)
        for (dir, entries) in directories {
            var listing: [DirectoryEntry] = []
            listing.reserveCapacity(entries.count)
            for (name, ino) in entries {
                guard ino < UInt64(inodes.count), let r = inodes[Int(ino)] else { continue }
                listing.append(DirectoryEntry(name: name.bytes, inode: ino, kind: r.kind, cookie: Volume.cookie(of: name.bytes)))
            }
            listing.sort { $0.cookie < $1.cookie }
            listings[dir] = listing
        }
        self.inodes = inodes
        self.directories = directories
        self.listings = listings
        xattrs = source.xattrs
        blobHashes = source.blobHashes
    }

    func record(_ ino: InodeNumber) -> InodeRecord? {
        guard ino < UInt64(inodes.count) else { return nil }
        return inodes[Int(ino)]
    }

    func contains(_ ino: InodeNumber) -> Bool { record(ino) != nil }
}
