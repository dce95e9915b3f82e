// pvfs-devtool: builds templates and VMs in a store for benchmarks, through the store's
// API for trees built in memory, so that they do not depend on the template ingest command.
//
//     pvfs-devtool template --store S --name T DIR   a template holding DIR's tree
//     pvfs-devtool provision --store S --template T --name VM [--count N]
//         provisions VM (or VM-1..VM-N) and prints the seconds each took
//     pvfs-devtool remove --store S --name VM
import Foundation
import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

struct Failure: Error, CustomStringConvertible {
    var description: String
}

func option(_ name: String, in arguments: [String]) -> String? {
    guard let i = arguments.firstIndex(of: name), i + 1 < arguments.count else { return nil }
    return arguments[i + 1]
}

func required(_ name: String, in arguments: [String]) throws -> String {
    guard let value = option(name, in: arguments) else { throw Failure(description: "missing \(name)") }
    return value
}

/// Walks a host tree into a `TemplateTree`: inodes numbered from 1 (the root) in walk order,
/// hardlinks sharing one number, each inode with the host's mode, owner, times and xattrs.
struct TreeWalker {
    var tree = TemplateTree()
    var inodeCount: UInt64 = 0
    var entryCount = 0
    var byHostInode: [UInt64: UInt64] = [:]

    mutating func walk(root: String) throws {
        let rootStat = try FileDescriptor.currentDirectory.stat(at: root)
        guard rootStat.kind == .directory else { throw Failure(description: "\(root) is not a directory") }
        add(rootStat, path: root, content: nil)
        try walk(root, ino: 1)
    }

    private mutating func add(_ s: FileStat, path: String, content: TemplateTree.Content?, symlinkTarget: [UInt8]? = nil) {
        inodeCount += 1
        let record = InodeRecord(mode: s.mode, uid: s.uid, gid: s.gid, linkCount: 0,
                                 size: s.kind == .directory ? 4096 : s.size, blocks: s.blocks,
                                 accessTime: s.accessTime, modificationTime: s.modificationTime, changeTime: s.changeTime,
                                 rdev: s.rdev, parent: 0, data: .none, symlinkTarget: symlinkTarget, privateXattrs: false)
        tree.node(inodeCount, record, content: content)
        for (name, value) in readXattrs(path) { tree.xattr(inodeCount, name, value) }
    }

    private func readXattrs(_ path: String) -> [(String, [UInt8])] {
        guard let names = try? ExtendedAttributes.list(.path(path)) else { return [] }
        return names.compactMap { name in (try? ExtendedAttributes.get(.path(path), name: name)).map { (name, $0) } }
    }

    private mutating func walk(_ path: String, ino directoryIno: UInt64) throws {
        let dir = try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly, .noFollow])
        defer { dir.closeQuietly() }
        for item in try dir.directoryEntries().sorted(by: { $0.name < $1.name }) {
            let childPath = path + "/" + item.name
            let s = try dir.stat(at: item.name)
            entryCount += 1
            if s.kind != .directory, s.linkCount > 1, let existing = byHostInode[s.inode] {
                tree.entry(directoryIno, item.name, existing)
                continue
            }
            switch s.kind {
            case .regular where s.size > 0:
                add(s, path: childPath, content: .hostFile(childPath))
            case .symlink:
                add(s, path: childPath, content: nil, symlinkTarget: try dir.readLink(at: item.name))
            default:
                add(s, path: childPath, content: nil)
            }
            let ino = inodeCount
            if s.kind != .directory && s.linkCount > 1 { byHostInode[s.inode] = ino }
            tree.entry(directoryIno, item.name, ino)
            if s.kind == .directory { try walk(childPath, ino: ino) }
        }
    }
}

func run() throws {
    let arguments = Array(CommandLine.arguments.dropFirst())
    guard let command = arguments.first else {
        throw Failure(description: "usage: pvfs-devtool template|provision --store PATH ...")
    }
    let store = try Store(path: try required("--store", in: arguments))
    switch command {
    case "template":
        guard let source = arguments.dropFirst().last, !source.hasPrefix("--") else { throw Failure(description: "missing DIR") }
        let name = try required("--name", in: arguments)
        let start = monotonicNanoseconds()
        var walker = TreeWalker()
        try walker.walk(root: source)
        try store.createTemplate(name: name, tree: walker.tree, source: source)
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        print("template \(name): \(walker.inodeCount) inodes, \(walker.entryCount) entries, \(String(format: "%.3f", seconds)) s")
    case "provision":
        let template = try required("--template", in: arguments)
        let name = try required("--name", in: arguments)
        let count = Int(option("--count", in: arguments) ?? "1") ?? 1
        for i in 1...max(1, count) {
            let vmName = count > 1 ? "\(name)-\(i)" : name
            let start = monotonicNanoseconds()
            _ = try store.provisionVM(name: vmName, template: template)
            print(String(format: "%.6f", Double(monotonicNanoseconds() - start) / 1e9))
        }
    case "remove":
        try store.removeVM(named: try required("--name", in: arguments))
    default:
        throw Failure(description: "unknown command \(command)")
    }
}

do {
    try run()
} catch {
    FileHandle.standardError.write(Data("pvfs-devtool: \(error)\n".utf8))
    exit(1)
}
