import Foundation
import Glibc
import PVFSEngine
import PVFSStore
import PVFSSystem
import PVFSTestSupport
import Testing

/// What `createTemplate` writes is what the engine reads: a VM provisioned on an ingested
/// template shows the tree, content, links and attributes.
@Suite struct TemplateEngineContractTests {
    @Test(.enabled(if: geteuid() == 0, "needs root: device nodes and owners"))
    func engineServesAnIngestedTemplate() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let src = area.sub("src")
        try FileManager.default.createDirectory(atPath: src + "/etc/sub", withIntermediateDirectories: true)
        try write(src + "/etc/hostname", Array("engine\n".utf8), mode: 0o640)
        chown(src + "/etc/hostname", 12, 34)
        link(src + "/etc/hostname", src + "/etc/sub/again")
        symlink("../hostname", src + "/etc/sub/link")
        mknod(src + "/etc/null", mode_t(S_IFCHR | 0o666), dev_t(DeviceNumber.make(major: 1, minor: 3)))
        try write(src + "/empty", [])
        let fd = open(src + "/sparse", O_WRONLY | O_CREAT, 0o644)
        _ = pwrite(fd, "end", 3, 1 << 20)
        close(fd)

        let store = try Store(path: area.sub("store"))
        _ = try store.createTemplate(name: "base", fromDirectory: src)
        _ = try store.provisionVM(name: "vm", template: "base")
        let volume = try Volume.open(store: store, vmName: "vm")
        defer { try? volume.close() }
        let view = VMView(volume: volume, policy: SessionPolicy(side: .host), sessionID: 1)

        func resolve(_ path: String) throws -> Attributes {
            var attributes = try view.getAttributes(rootInode)
            for component in path.split(separator: "/") { attributes = try view.lookup(attributes.inode, Array(component.utf8), as: .root) }
            return attributes
        }
        func read(_ path: String) throws -> [UInt8] {
            let handle = try view.open(try resolve(path).inode, flags: O_RDONLY, as: .root)
            defer { view.release(handle) }
            return try view.read(handle, offset: 0, count: 4 << 20)
        }

        let hostname = try resolve("etc/hostname")
        #expect(hostname.kind == .regular && hostname.mode & 0o7777 == 0o640 && hostname.uid == 12 && hostname.gid == 34)
        #expect(hostname.linkCount == 2)
        #expect(try resolve("etc/sub/again").inode == hostname.inode)
        #expect(try read("etc/hostname") == Array("engine\n".utf8))
        #expect(try view.readLink(try resolve("etc/sub/link").inode) == Array("../hostname".utf8))
        let null = try resolve("etc/null")
        #expect(null.kind == .characterDevice && null.rdev == DeviceNumber.make(major: 1, minor: 3))
        #expect(try read("empty").isEmpty)
        let sparse = try read("sparse")
        #expect(sparse.count == (1 << 20) + 3 && sparse.prefix(1 << 20).allSatisfy { $0 == 0 } && Array(sparse.suffix(3)) == Array("end".utf8))
        let names = try view.readDirectory(try resolve("etc").inode, after: 0, as: .root).map { String(decoding: $0.name, as: UTF8.self) }
        #expect(Set(names).isSuperset(of: ["hostname", "sub", "null"]))
        #expect(try resolve("etc").linkCount == 3)
    }
}
