import Foundation
import Glibc
import GRDB
import PVFSImage
import PVFSStore
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing

/// Layers applied in order, as the OCI image spec says: whiteouts, opaque directories, hard
/// links, every kind of entry, compressions. Images are built by hand (libarchive's writer,
/// gzip, zstd) and imported through the store; the template's rows are the result checked.
@Suite struct LayerApplicationTests {
    let directory: TemporaryDirectory
    let store: Store

    init() throws {
        directory = try TemporaryDirectory()
        store = try Store(path: directory.sub("store"))
    }

    func importLayers(_ layers: [[TarEntry]], compression: LayoutBuilder.LayerCompression = .gzip, name: String = "t") throws -> ImageImport {
        let builder = try LayoutBuilder.single(at: directory.sub("image-\(name)"), layers, compression: compression)
        return try store.createTemplate(name: name, fromImage: builder.path)
    }

    @Test func whiteoutsRemoveWhatLowerLayersMade() throws {
        let imported = try importLayers([
            [.dir("a"), .file("a/x", "x"), .file("a/y", "y"), .dir("b"), .dir("b/sub"), .file("b/sub/z", "z"), .file("c", "old")],
            // Whiteouts only hide lower layers: d/new made in this same layer stays.
            [TarEntry(path: "a/.wh.x", kind: .file([])), TarEntry(path: ".wh.b", kind: .file([])), .file("c", "new"),
             .dir("d"), .file("d/new", "n"), TarEntry(path: "d/.wh.new", kind: .file([])),
             TarEntry(path: ".wh.missing", kind: .file([]))],
        ])
        let tree = try store.tree(of: "t")
        #expect(Set(tree.keys) == ["/", "/a", "/a/y", "/c", "/d", "/d/new"])
        #expect(tree["/c"]?.content == Array("new".utf8))
        #expect(imported.image.layers == 2)
        #expect(try store.fsckFindings().isEmpty)
    }

    @Test func whiteoutThenRecreateInTheSameLayer() throws {
        _ = try importLayers([
            [.dir("etc"), .file("etc/motd", "one"), .dir("etc/sub"), .file("etc/sub/f", "f")],
            [.file("etc/sub", "now a file"), TarEntry(path: "etc/.wh.sub", kind: .file([])), TarEntry(path: "etc/.wh.motd", kind: .file([])), .file("etc/motd", "two")],
        ])
        let tree = try store.tree(of: "t")
        #expect(tree["/etc/motd"]?.content == Array("two".utf8))
        #expect(tree["/etc/sub"]?.content == Array("now a file".utf8))
        #expect(tree["/etc/sub/f"] == nil)
    }

    @Test func opaqueDirectoriesHideLowerChildrenWhereverTheMarkerComes() throws {
        _ = try importLayers([
            [.dir("a"), .file("a/x", "x"), .dir("a/deep"), .file("a/deep/y", "y"), .file("keep", "k")],
            // The marker comes after a child of its own layer: that child stays.
            [.dir("a"), .file("a/z", "z"), TarEntry(path: "a/.wh..wh..opq", kind: .file([])),
             // AUFS bookkeeping is ignored.
             TarEntry(path: ".wh..wh.plnk", kind: .directory), TarEntry(path: ".wh..wh.plnk/123", kind: .file(Array("junk".utf8)))],
        ])
        let tree = try store.tree(of: "t")
        #expect(Set(tree.keys) == ["/", "/a", "/a/z", "/keep"])
    }

    @Test func hardLinksWithinAndAcrossLayers() throws {
        _ = try importLayers([
            [.dir("bin"), .file("bin/busybox", "BB", mode: 0o755), .hardlink("bin/sh", "bin/busybox")],
            [.hardlink("bin/ls", "bin/busybox"), .dir("etc"), .hardlink("etc/alias", "./bin/sh")],
        ])
        let tree = try store.tree(of: "t")
        let busybox = try #require(tree["/bin/busybox"])
        #expect(busybox.nlink == 4)
        for path in ["/bin/sh", "/bin/ls", "/etc/alias"] { #expect(tree[path]?.ino == busybox.ino, "\(path)") }
        #expect(busybox.mode == 0o100755)
        #expect(try store.fsckFindings().isEmpty)
    }

    @Test func replacingOneNameOfALinkGroupKeepsTheOthers() throws {
        _ = try importLayers([
            [.file("a", "shared"), .hardlink("b", "a")],
            [.file("a", "replaced")],
        ])
        let tree = try store.tree(of: "t")
        #expect(tree["/a"]?.content == Array("replaced".utf8) && tree["/a"]?.nlink == 1)
        #expect(tree["/b"]?.content == Array("shared".utf8) && tree["/b"]?.nlink == 1)
    }

    @Test func everyKindOfEntryWithItsAttributes() throws {
        let longName = String(repeating: "n", count: 200) + "/" + String(repeating: "m", count: 200)
        _ = try importLayers([[
            TarEntry(path: "dev", kind: .directory, mode: 0o755),
            TarEntry(path: "dev/null", kind: .characterDevice(major: 1, minor: 3), mode: 0o666),
            TarEntry(path: "dev/loop0", kind: .blockDevice(major: 7, minor: 0), mode: 0o660, gid: 6),
            TarEntry(path: "run", kind: .directory, mode: 0o1777),
            TarEntry(path: "run/initctl", kind: .fifo, mode: 0o600),
            TarEntry(path: "usr/bin/ping", kind: .file(Array("ELF".utf8)), mode: 0o4755, uid: 1000, gid: 100_000,
                     mtime: (1_700_000_123, 456_789_012),
                     xattrs: [("security.capability", [1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), ("user.note", Array("hi".utf8))]),
            TarEntry(path: longName, kind: .file(Array("long".utf8))),
            .symlink("lib", "usr/lib"),
            TarEntry(path: "sparse", kind: .sparse(size: 8 << 20, segments: [(Int64(0), Array(repeating: 7, count: 4096)), (Int64(6 << 20), Array("tail".utf8))])),
        ]])
        let tree = try store.tree(of: "t")
        let null = try #require(tree["/dev/null"])
        #expect(null.mode == 0o020666 && null.rdev == deviceNumber(1, 3))
        #expect(tree["/dev/loop0"]?.mode == 0o060660 && tree["/dev/loop0"]?.rdev == deviceNumber(7, 0) && tree["/dev/loop0"]?.gid == 6)
        #expect(tree["/run"]?.mode == 0o041777)
        #expect(tree["/run/initctl"]?.mode == 0o010600)
        let ping = try #require(tree["/usr/bin/ping"])
        #expect(ping.mode == 0o104755 && ping.uid == 1000 && ping.gid == 100_000)
        #expect(ping.mtime == 1_700_000_123_456_789_012)
        #expect(ping.xattrs["security.capability"]?.count == 20 && ping.xattrs["user.note"] == Array("hi".utf8))
        // Parents the layer never named are made as tar makes them.
        #expect(tree["/usr"]?.mode == 0o040755 && tree["/usr/bin"]?.uid == 0)
        #expect(tree["/" + longName]?.content == Array("long".utf8))
        #expect(tree["/lib"]?.symlink == "usr/lib" && tree["/lib"]?.size == 7)
        let sparse = try #require(tree["/sparse"])
        #expect(sparse.size == 8 << 20)
        var expected = [UInt8](repeating: 0, count: 8 << 20)
        for i in 0..<4096 { expected[i] = 7 }
        expected.replaceSubrange((6 << 20)..<((6 << 20) + 4), with: Array("tail".utf8))
        #expect(sparse.content.map(sha256) == sha256(expected))
        #expect(try store.fsckFindings().isEmpty)
    }

    @Test(arguments: [LayoutBuilder.LayerCompression.none, .gzip, .zstd])
    func compressions(_ compression: LayoutBuilder.LayerCompression) throws {
        let imported = try importLayers([[.dir("etc"), .file("etc/hostname", "box\n")], [.file("etc/issue", "Debian\n")]], compression: compression)
        let tree = try store.tree(of: "t")
        #expect(tree["/etc/hostname"]?.content == Array("box\n".utf8) && tree["/etc/issue"]?.content == Array("Debian\n".utf8))
        #expect(imported.template.newBlobs == 2)
    }

    @Test func emptyLayersAreFine() throws {
        let builder = try LayoutBuilder(at: directory.sub("empty"))
        let empty = try builder.layer(tar: [UInt8](repeating: 0, count: 1024))
        let zeroBytes = try builder.layer(tar: [], .none)
        try builder.image([try builder.layer([.file("f", "x")]), empty, zeroBytes])
        try builder.writeIndex()
        _ = try store.createTemplate(name: "t", fromImage: builder.path)
        #expect(Set(try store.tree(of: "t").keys) == ["/", "/f"])
    }

    @Test func contentReplacedByALaterLayerLeavesNoBlob() throws {
        let before = try store.blobCount()
        _ = try importLayers([[.file("big", String(repeating: "old", count: 1000)), .file("kept", "kept")], [.file("big", "new")]])
        #expect(try store.blobCount() == before + 2)
        #expect(try store.fsckFindings().isEmpty)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: store.path + "/tmp")
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func sameTreeAsADirectoryIngest() throws {
        // A tree on disk, tarred by GNU tar (pax: nanosecond times, xattrs), imported as an
        // image, must give the template a directory ingest gives: same numbers, same rows.
        let source = directory.sub("src")
        for dir in ["etc/ssh", "usr/bin", "usr/lib/x", "var/empty"] {
            try FileManager.default.createDirectory(atPath: source + "/" + dir, withIntermediateDirectories: true)
        }
        for (path, text) in [("etc/hostname", "h\n"), ("etc/ssh/sshd_config", "Port 22\n"), ("usr/bin/tool", "#!/bin/sh\n"), ("usr/lib/x/a", "a"), ("usr/lib/x/b", "a")] {
            try Data(text.utf8).write(to: URL(fileURLWithPath: source + "/" + path))
        }
        link(source + "/usr/bin/tool", source + "/usr/bin/tool2")
        symlink("../lib/x", source + "/usr/bin/lx")
        #expect(try runProcess("/usr/bin/setfattr", ["-n", "user.k", "-v", "v", source + "/etc/hostname"]) == 0)
        chmod(source + "/usr/bin/tool", 0o755)
        mkfifo(source + "/var/fifo", 0o600)
        let tarPath = directory.sub("tree.tar")
        let status = try runProcess("/bin/tar", ["--xattrs", "--xattrs-include=*", "--format=pax", "-C", source, "-cf", tarPath, "."])
        #expect(status == 0)
        let builder = try LayoutBuilder(at: directory.sub("same"))
        try builder.image([try builder.layer(tar: Array(try Data(contentsOf: URL(fileURLWithPath: tarPath))), .gzip)])
        try builder.writeIndex()
        _ = try store.createTemplate(name: "img", fromImage: builder.path)
        _ = try store.createTemplate(name: "dir", fromDirectory: source)
        let image = try store.tree(of: "img"), tree = try store.tree(of: "dir")
        #expect(Set(image.keys) == Set(tree.keys))
        for (path, entry) in tree {
            var fromImage = try #require(image[path])
            // A directory's st_size is the filesystem's business; the image says 4096.
            if entry.mode & 0o170000 == 0o040000 { fromImage.size = entry.size }
            #expect(fromImage == entry, "\(path): image \(fromImage) vs directory \(entry)")
        }
    }
}

func runProcess(_ executable: String, _ arguments: [String]) throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    return process.terminationStatus
}

/// Linux's dev_t encoding of a major and minor number.
func deviceNumber(_ major: UInt64, _ minor: UInt64) -> Int64 {
    Int64(bitPattern: ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff))
}
