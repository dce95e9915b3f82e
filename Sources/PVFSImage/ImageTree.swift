import PVFSStore

// The filesystem an image's layers build, in memory: each layer's whiteouts, opaque markers and
// entries are applied in order (OCI image spec, "Applying Changesets"); nothing is written
// anywhere until the final tree goes to the store, so no entry can reach outside the image.

/// What one layer entry asks for.
enum LayerChange {
    /// `.wh.NAME` in `directory`: NAME, as the layers below left it, goes.
    case whiteout(directory: [[UInt8]], name: [UInt8])
    /// `.wh..wh..opq` in `directory`: its children from the layers below go.
    case opaque(directory: [[UInt8]])
    /// A file, directory, link, device, fifo or socket at `path` (the root when empty).
    case entry(path: [[UInt8]], header: ArchiveHeader, content: StagedContent?)
}

enum Whiteout {
    static let prefix = Array(".wh.".utf8)
    static let metaPrefix = Array(".wh..wh.".utf8)
    static let opaque = Array(".wh..wh..opq".utf8)
}

/// Splits an entry path into components: leading `/` and `./`, empty and `.` components are
/// dropped (runtimes read `/etc/x` as `etc/x`); `..` is refused.
func pathComponents(_ path: [UInt8], what: String) throws -> [[UInt8]] {
    var components: [[UInt8]] = []
    for part in path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
        if part.elementsEqual([UInt8(ascii: ".")]) { continue }
        if part.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
            throw ImageError("\(what) \(displayBytes(path)) has a '..' component: it would escape the image root", errno: .invalidArgument)
        }
        guard part.count <= 255 else { throw ImageError("\(what) \(displayBytes(path)) has a name longer than 255 bytes", errno: .invalidArgument) }
        components.append(Array(part))
    }
    return components
}

/// What a layer entry means; nil for entries to ignore (AUFS metadata, `.wh..wh.*`).
func classify(_ header: ArchiveHeader) throws -> LayerChange? {
    let components = try pathComponents(header.path, what: "entry")
    if components.dropLast().contains(where: { $0.starts(with: Whiteout.metaPrefix) }) { return nil }
    if let last = components.last, last.starts(with: Whiteout.prefix) {
        let directory = Array(components.dropLast())
        if last == Whiteout.opaque { return .opaque(directory: directory) }
        if last.starts(with: Whiteout.metaPrefix) { return nil }
        let name = Array(last.dropFirst(Whiteout.prefix.count))
        guard !name.isEmpty, name != [UInt8(ascii: ".")], name != [UInt8(ascii: "."), UInt8(ascii: ".")] else {
            throw ImageError("whiteout \(displayBytes(header.path)) names nothing", errno: .invalidArgument)
        }
        return .whiteout(directory: directory, name: name)
    }
    return .entry(path: components, header: header, content: nil)
}

/// A file, directory, link or node of the image's filesystem.
final class ImageNode {
    /// st_mode with the file type bits.
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var atime: Int64
    var mtime: Int64
    var ctime: Int64
    var rdev: UInt64 = 0
    var size: Int64 = 0
    var symlinkTarget: [UInt8]?
    var xattrs: [TreeExtendedAttribute] = []
    var content: StagedContent?
    /// A directory's entries.
    var children: [[UInt8]: ImageNode] = [:]

    init(mode: UInt32, uid: UInt32, gid: UInt32, atime: Int64, mtime: Int64, ctime: Int64) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
    }

    var isDirectory: Bool { mode & 0o170000 == 0o040000 }
    var isSymlink: Bool { mode & 0o170000 == 0o120000 }

    static func directory(like header: ArchiveHeader) -> ImageNode {
        ImageNode(mode: 0o040755, uid: 0, gid: 0, atime: header.mtime, mtime: header.mtime, ctime: header.mtime)
    }
}

/// The merged filesystem of the layers applied so far.
final class ImageTree {
    let root = ImageNode(mode: 0o040755, uid: 0, gid: 0, atime: 0, mtime: 0, ctime: 0)
    private(set) var nodeCount = 1

    static let maximumNodes = 4_000_000
    static let maximumDepth = 1024
    static let maximumSymlinkHops = 40

    /// Applies one layer: its whiteouts and opaque markers first (they only ever hide what the
    /// layers below made, wherever they come in the layer), then its entries in order.
    func apply(layer number: Int, _ changes: [LayerChange]) throws {
        for change in changes {
            switch change {
            case .whiteout(let directory, let name):
                if let node = try resolveDirectory(directory, create: nil, layer: number, entry: directory.joined(separator: [UInt8(ascii: "/")]) + [UInt8(ascii: "/")] + Whiteout.prefix + name) {
                    node.children[name] = nil
                }
            case .opaque(let directory):
                if let node = try resolveDirectory(directory, create: nil, layer: number, entry: directory.joined(separator: [UInt8(ascii: "/")]) + [UInt8(ascii: "/")] + Whiteout.opaque) {
                    node.children = [:]
                }
            case .entry:
                break
            }
        }
        for change in changes {
            if case .entry(let path, let header, let content) = change {
                try add(path, header, content, layer: number)
            }
        }
    }

    private func error(_ layer: Int, _ path: [UInt8], _ message: String) -> ImageError {
        ImageError("layer \(layer): entry \(displayBytes(path)): \(message)", errno: .invalidArgument)
    }

    /// The directory `components` names, following symlinks on the way as the image's own
    /// (chrooted) view would: absolute targets start at the image root and `..` stops there.
    /// Missing directories are created like `header` says when `create` is given (as tar
    /// does), otherwise the result is nil.
    private func resolveDirectory(_ components: [[UInt8]], create: ArchiveHeader?, layer: Int, entry shown: [UInt8]) throws -> ImageNode? {
        var stack: [ImageNode] = [root]
        var pending = Array(components.reversed())
        var hops = 0
        while let name = pending.popLast() {
            if name.isEmpty || name == [UInt8(ascii: ".")] { continue }
            if name == [UInt8(ascii: "."), UInt8(ascii: ".")] {
                if stack.count > 1 { stack.removeLast() }
                continue
            }
            let current = stack[stack.count - 1]
            if let child = current.children[name] {
                if child.isDirectory {
                    stack.append(child)
                } else if child.isSymlink {
                    hops += 1
                    guard hops <= Self.maximumSymlinkHops else { throw error(layer, Array(shown), "too many levels of symbolic links") }
                    let target = child.symlinkTarget ?? []
                    if target.first == UInt8(ascii: "/") { stack = [root] }
                    pending.append(contentsOf: target.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map(Array.init).reversed())
                    guard pending.count <= ArchiveReader.maximumPathLength else { throw error(layer, Array(shown), "symbolic links expand too far") }
                } else {
                    guard create != nil else { return nil }
                    throw error(layer, Array(shown), "\(displayBytes(name)) is not a directory")
                }
            } else {
                guard let create else { return nil }
                let directory = try makeNode(.directory(like: create), layer: layer, path: Array(shown))
                current.children[name] = directory
                stack.append(directory)
            }
            guard stack.count <= Self.maximumDepth else { throw error(layer, Array(shown), "deeper than \(Self.maximumDepth) directories") }
        }
        return stack[stack.count - 1]
    }

    private func makeNode(_ node: ImageNode, layer: Int, path: [UInt8]) throws -> ImageNode {
        nodeCount += 1
        guard nodeCount <= Self.maximumNodes else { throw error(layer, path, "the image has more than \(Self.maximumNodes) entries") }
        return node
    }

    private func add(_ path: [[UInt8]], _ header: ArchiveHeader, _ content: StagedContent?, layer: Int) throws {
        guard let name = path.last else {
            // The root itself ("./"): only its attributes can change.
            guard header.kind == .directory else { throw error(layer, header.path, "replaces the image root with a non-directory") }
            update(root, from: header)
            return
        }
        let parent = try resolveDirectory(Array(path.dropLast()), create: header, layer: layer, entry: header.path)!
        let existing = parent.children[name]
        switch header.kind {
        case .directory:
            if let existing, existing.isDirectory {
                update(existing, from: header)
            } else {
                let node = try makeNode(.directory(like: header), layer: layer, path: header.path)
                update(node, from: header)
                parent.children[name] = node
            }
        case .hardlink:
            let targetPath = try pathComponents(header.linkTarget ?? [], what: "hard link target")
            guard let targetName = targetPath.last,
                  let directory = try resolveDirectory(Array(targetPath.dropLast()), create: nil, layer: layer, entry: header.path),
                  let target = directory.children[targetName] else {
                throw error(layer, header.path, "hard link to \(displayBytes(header.linkTarget ?? [])): no such file")
            }
            guard !target.isDirectory else { throw error(layer, header.path, "hard link to the directory \(displayBytes(header.linkTarget ?? []))") }
            if let content {
                // A hard link that carries data (pax allows it) gives the file that data.
                target.content = content
                target.size = header.size
            }
            parent.children[name] = target
        default:
            let node = try makeNode(ImageNode(mode: 0, uid: 0, gid: 0, atime: 0, mtime: 0, ctime: 0), layer: layer, path: header.path)
            update(node, from: header)
            switch header.kind {
            case .regular:
                node.size = header.size
                node.content = content
            case .symlink:
                node.symlinkTarget = header.linkTarget ?? []
            case .characterDevice, .blockDevice:
                node.rdev = header.rdev
            default:
                break
            }
            parent.children[name] = node
        }
    }

    private func update(_ node: ImageNode, from header: ArchiveHeader) {
        let type: UInt32
        switch header.kind {
        case .regular, .hardlink: type = 0o100000
        case .directory: type = 0o040000
        case .symlink: type = 0o120000
        case .characterDevice: type = 0o020000
        case .blockDevice: type = 0o060000
        case .fifo: type = 0o010000
        case .socket: type = 0o140000
        }
        node.mode = type | header.permissions
        node.uid = header.uid
        node.gid = header.gid
        node.atime = header.atime
        node.mtime = header.mtime
        node.ctime = header.ctime
        node.xattrs = header.xattrs
    }

    /// The tree numbered as a directory ingest numbers one: pre-order with names sorted
    /// bytewise, the root 1, a hard-linked file numbered at its first name.
    func streamedTree() throws -> StreamedTree {
        var inodes: [StreamedInode] = [inode(root)]
        var entries: [StreamedEntry] = []
        var numbers: [ObjectIdentifier: Int64] = [:]
        var visitedDirectories: Set<ObjectIdentifier> = [ObjectIdentifier(root)]
        struct Frame {
            var ino: Int64
            var children: [([UInt8], ImageNode)]
            var next = 0
            var subdirectories: UInt32 = 0
        }
        func sortedChildren(_ node: ImageNode) -> [([UInt8], ImageNode)] {
            node.children.sorted { $0.key.lexicographicallyPrecedes($1.key) }.map { ($0.key, $0.value) }
        }
        var stack = [Frame(ino: 1, children: sortedChildren(root))]
        while !stack.isEmpty {
            let top = stack.count - 1
            if stack[top].next == stack[top].children.count {
                let frame = stack.removeLast()
                inodes[Int(frame.ino - 1)].nlink = 2 + frame.subdirectories
                continue
            }
            let (name, node) = stack[top].children[stack[top].next]
            stack[top].next += 1
            if !node.isDirectory, let existing = numbers[ObjectIdentifier(node)] {
                entries.append(StreamedEntry(parent: stack[top].ino, name: name, ino: existing))
                inodes[Int(existing - 1)].nlink += 1
                continue
            }
            let ino = Int64(inodes.count + 1)
            inodes.append(inode(node))
            entries.append(StreamedEntry(parent: stack[top].ino, name: name, ino: ino))
            if node.isDirectory {
                guard visitedDirectories.insert(ObjectIdentifier(node)).inserted else {
                    throw ImageError("the image tree has a directory under two names", errno: .invalidArgument)
                }
                stack[top].subdirectories += 1
                stack.append(Frame(ino: ino, children: sortedChildren(node)))
            } else {
                numbers[ObjectIdentifier(node)] = ino
            }
        }
        return StreamedTree(inodes: inodes, entries: entries)
    }

    private func inode(_ node: ImageNode) -> StreamedInode {
        let regular = node.mode & 0o170000 == 0o100000
        // Symlinks are as long as their target; directories get ext4's usual 4096 bytes.
        let size = regular ? node.size : node.isSymlink ? Int64(node.symlinkTarget?.count ?? 0) : node.isDirectory ? 4096 : 0
        return StreamedInode(mode: node.mode, uid: node.uid, gid: node.gid, nlink: 1, size: size,
                             atime: node.atime, mtime: node.mtime, ctime: node.ctime, rdev: node.rdev,
                             symlinkTarget: node.symlinkTarget, xattrs: node.xattrs, content: regular ? node.content : nil)
    }
}
