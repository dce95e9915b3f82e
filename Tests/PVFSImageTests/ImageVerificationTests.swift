import Foundation
import Glibc
import GRDB
import PVFSImage
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFSStore

/// Choosing the image (platform, reference, nested indexes), checking every digest, and
/// refusing hostile layers with a clear error while keeping nothing.
@Suite struct ImageVerificationTests {
    let directory: TemporaryDirectory
    let store: Store

    init() throws {
        directory = try TemporaryDirectory()
        store = try Store(path: directory.sub("store"))
    }

    /// The import fails with a message containing `expected`, and the store is as before:
    /// no template, no blob, nothing in tmp/, fsck clean.
    func expectFailure(_ path: String, _ expected: String, selection: ImageSelection = ImageSelection(),
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let blobs = try store.blobCount()
        do {
            _ = try store.createTemplate(name: "bad", fromImage: path, selection: selection)
            Issue.record("the import of \(path) succeeded", sourceLocation: sourceLocation)
        } catch {
            #expect("\(error)".contains(expected), "\(error)", sourceLocation: sourceLocation)
        }
        #expect(try store.template(named: "bad") == nil, sourceLocation: sourceLocation)
        #expect(try store.blobCount() == blobs, sourceLocation: sourceLocation)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: store.path + "/tmp")
        #expect(leftovers.isEmpty, "left in tmp/: \(leftovers)", sourceLocation: sourceLocation)
        #expect(try store.fsckFindings().isEmpty, sourceLocation: sourceLocation)
    }

    func layout(_ name: String) throws -> LayoutBuilder { try LayoutBuilder(at: directory.sub(name)) }

    // MARK: Selection

    @Test func multiPlatformIndexPicksTheHostsOrTheAskedPlatform() throws {
        let builder = try layout("multi")
        let amd = try builder.image([try builder.layer([.file("arch", "amd64")])], architecture: "amd64", platformInIndex: true, addToIndex: false)
        let arm = try builder.image([try builder.layer([.file("arch", "arm64")])], architecture: "arm64", platformInIndex: true, addToIndex: false)
        // buildx puts attestations beside the images, as platform unknown/unknown.
        var attestation = try builder.image([try builder.layer([.file("x", "x")])], addToIndex: false)
        attestation["platform"] = ["architecture": "unknown", "os": "unknown"]
        try builder.nestedIndex([arm, amd, attestation], reference: "latest")
        try builder.writeIndex()

        let host = try store.createTemplate(name: "host", fromImage: builder.path)
        #expect(try store.tree(of: "host")["/arch"]?.content == Array("amd64".utf8))
        #expect(host.image.platform == "linux/amd64")
        let other = try store.createTemplate(name: "arm", fromImage: builder.path, selection: ImageSelection(platform: "linux/arm64"))
        #expect(try store.tree(of: "arm")["/arch"]?.content == Array("arm64".utf8))
        #expect(other.image.platform == "linux/arm64")
        #expect(other.image.manifestDigest == arm["digest"] as? String)
        try expectFailure(builder.path, "has no image for linux/s390x (platforms: linux/amd64, linux/arm64)",
                          selection: ImageSelection(platform: "linux/s390x"))
    }

    @Test func referenceNamesChooseAmongImages() throws {
        let builder = try layout("refs")
        try builder.image([try builder.layer([.file("v", "1")])], reference: "v1")
        try builder.image([try builder.layer([.file("v", "2")])], reference: "v2")
        try builder.writeIndex()
        _ = try store.createTemplate(name: "two", fromImage: builder.path, selection: ImageSelection(reference: "v2"))
        #expect(try store.tree(of: "two")["/v"]?.content == Array("2".utf8))
        try expectFailure(builder.path, "holds 2 images; choose one with --image-ref or --platform")
        try expectFailure(builder.path, "has no image named v3 (names: v1, v2)", selection: ImageSelection(reference: "v3"))
    }

    @Test func anImageForAnotherArchitectureIsRefusedUnlessAskedFor() throws {
        let builder = try layout("foreign")
        try builder.image([try builder.layer([.file("f", "x")])], architecture: "riscv64")
        try builder.writeIndex()
        try expectFailure(builder.path, "is for linux/riscv64, not this host's linux/amd64; pass --platform linux/riscv64")
        _ = try store.createTemplate(name: "rv", fromImage: builder.path, selection: ImageSelection(platform: "linux/riscv64"))
    }

    @Test func configurationIsKeptVerbatim() throws {
        let builder = try LayoutBuilder.single(at: directory.sub("config"), [[.file("f", "x")]])
        let imported = try store.createTemplate(name: "c", fromImage: builder.path)
        let record = try #require(try store.templateImage(try store.requireTemplate(named: "c")))
        #expect(record == imported.image)
        #expect(record.format == "oci-layout" && record.layers == 1 && record.platform == "linux/amd64")
        let configDigest = "sha256:" + SHA256Hasher.hash(record.config).hex
        #expect(record.configDigest == configDigest)
        let summary = try #require(ImageConfigSummary(config: record.config))
        #expect(summary.entrypoint == ["/bin/sh"] && summary.env == ["PATH=/usr/bin:/bin", "FOO=bar"] && summary.workingDir == "/srv")
        #expect(summary.exposedPorts == ["80/tcp"] && summary.labels == ["org.example.role": "test"] && summary.historyEntries == 1)
        // Removing the template removes its image record (ON DELETE CASCADE).
        _ = try store.removeTemplate(named: "c")
        #expect(try CatalogSQL(store.catalog).read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM template_image") } == 0)
    }

    // MARK: Digests

    @Test func corruptedLayerBlob() throws {
        let builder = try LayoutBuilder.single(at: directory.sub("corrupt"), [[.file("a", String(repeating: "a", count: 5000))]], compression: .none)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: builder.blobPath(builder.manifests[0]["digest"] as! String)))) as! [String: Any]
        let layerDigest = ((manifest["layers"] as! [[String: Any]])[0]["digest"] as! String)
        // Same size, one byte changed inside the file's content.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: builder.blobPath(layerDigest))))
        bytes[1024 + 100] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: builder.blobPath(layerDigest)))
        try expectFailure(builder.path, "layer 1 (\(layerDigest)): digest mismatch: the blob hashes to sha256:")

        // A change that breaks decompression is reported as what it is: the blob is not the
        // one the manifest names (not as a decompression error).
        let gzipped = try LayoutBuilder.single(at: directory.sub("corrupt-gzip"), [[.file("a", String(repeating: "a", count: 5000))]])
        let gzipManifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: gzipped.blobPath(gzipped.manifests[0]["digest"] as! String)))) as! [String: Any]
        let gzipDigest = ((gzipManifest["layers"] as! [[String: Any]])[0]["digest"] as! String)
        var gzipBytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: gzipped.blobPath(gzipDigest))))
        gzipBytes[12] ^= 0xff
        try Data(gzipBytes).write(to: URL(fileURLWithPath: gzipped.blobPath(gzipDigest)))
        try expectFailure(gzipped.path, "layer 1 (\(gzipDigest)): digest mismatch: the blob hashes to sha256:")
    }

    @Test func wrongDiffID() throws {
        let builder = try layout("diffid")
        let layer = try builder.layer([.file("a", "a")])
        var wrong = layer
        wrong.diffID = sha256(Array("something else".utf8))
        try builder.image([layer], config: try builder.config([wrong]))
        try builder.writeIndex()
        try expectFailure(builder.path, "layer 1 (\(layer.digest)): diff_id mismatch: the configuration says \(wrong.diffID), the uncompressed layer hashes to \(layer.diffID)")
    }

    @Test func tamperedManifestAndConfig() throws {
        let builder = try LayoutBuilder.single(at: directory.sub("manifest"), [[.file("a", "a")]])
        let digest = builder.manifests[0]["digest"] as! String
        var text = try String(contentsOfFile: builder.blobPath(digest), encoding: .utf8)
        text = text.replacingOccurrences(of: "\"schemaVersion\":2", with: "\"schemaVersion\":3")
        try text.write(toFile: builder.blobPath(digest), atomically: false, encoding: .utf8)
        try expectFailure(builder.path, "manifest \(digest) (\(digest)): digest mismatch")

        let other = try LayoutBuilder.single(at: directory.sub("config"), [[.file("a", "a")]])
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: other.blobPath(other.manifests[0]["digest"] as! String)))) as! [String: Any]
        let configDigest = (manifest["config"] as! [String: Any])["digest"] as! String
        var config = [UInt8](try Data(contentsOf: URL(fileURLWithPath: other.blobPath(configDigest))))
        config[config.count - 2] = UInt8(ascii: " ")
        try Data(config).write(to: URL(fileURLWithPath: other.blobPath(configDigest)))
        try expectFailure(other.path, "the image configuration (\(configDigest)): digest mismatch")
    }

    @Test func sizeMismatchAndMissingBlob() throws {
        let builder = try LayoutBuilder.single(at: directory.sub("size"), [[.file("a", "a")]])
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: builder.blobPath(builder.manifests[0]["digest"] as! String)))) as! [String: Any]
        let layerDigest = ((manifest["layers"] as! [[String: Any]])[0]["digest"] as! String)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: builder.blobPath(layerDigest)))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data([0]))
        try handle.close()
        try expectFailure(builder.path, "layer 1: layer 1 (\(layerDigest)): the descriptor says")
        try FileManager.default.removeItem(atPath: builder.blobPath(layerDigest))
        try expectFailure(builder.path, "has no blobs/sha256/\(layerDigest.dropFirst(7))")
    }

    @Test func mediaTypeAndCompressionMustAgree() throws {
        let builder = try layout("media")
        var layer = try builder.layer([.file("a", "a")], .gzip)
        layer.mediaType = "application/vnd.oci.image.layer.v1.tar+zstd"
        try builder.image([layer])
        try builder.writeIndex()
        try expectFailure(builder.path, "its media type says zstd, the data is gzip")

        let artifact = try layout("artifact")
        var helm = try artifact.layer([.file("a", "a")])
        helm.mediaType = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
        try artifact.image([helm])
        try artifact.writeIndex()
        try expectFailure(artifact.path, "has media type application/vnd.cncf.helm.chart.content.v1.tar+gzip: not a filesystem layer")
    }

    // MARK: Hostile layers

    @Test func dotDotEscapesAreRefused() throws {
        try expectFailure(try LayoutBuilder.single(at: directory.sub("dotdot"), [[.file("../../etc/passwd", "root::0:0::/:/bin/sh")]]).path,
                          "layer 1 (sha256:")
        try expectFailure(directory.sub("dotdot"), "entry ../../etc/passwd has a '..' component: it would escape the image root")
        try expectFailure(try LayoutBuilder.single(at: directory.sub("hardlink-dotdot"), [[.hardlink("x", "../../etc/shadow")]]).path,
                          "hard link target ../../etc/shadow has a '..' component")
    }

    @Test func absolutePathsAndSymlinksStayInsideTheImage() throws {
        let marker = "/tmp/pvfs-image-escape-\(getpid())"
        _ = try store.createTemplate(name: "abs", fromImage: try LayoutBuilder.single(at: directory.sub("abs"), [
            [.dir("tmp"), .file("/etc/abs", "absolute"), .symlink("up", "../../../../.."), .symlink("root", "/"), .symlink("tmplink", "/tmp")],
            // Through each symlink: resolved in the image's root, never the host's.
            [.file("up/tmp/pvfs-image-escape-\(getpid())", "1"), .file("root/etc/via-root", "2"), .file("tmplink/via-tmp", "3")],
        ]).path)
        let tree = try store.tree(of: "abs")
        #expect(tree["/etc/abs"]?.content == Array("absolute".utf8))
        #expect(tree["/tmp/pvfs-image-escape-\(getpid())"]?.content == Array("1".utf8))
        #expect(tree["/etc/via-root"]?.content == Array("2".utf8))
        #expect(tree["/tmp/via-tmp"]?.content == Array("3".utf8))
        #expect(tree["/up"]?.symlink == "../../../../..")
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    @Test func brokenStructuresAreClearErrors() throws {
        func single(_ name: String, _ layers: [[TarEntry]]) throws -> String {
            try LayoutBuilder.single(at: directory.sub(name), layers).path
        }
        try expectFailure(try single("loop", [[.symlink("a", "b"), .symlink("b", "a")], [.file("a/x", "x")]]), "entry a/x: too many levels of symbolic links")
        try expectFailure(try single("notdir", [[.file("f", "file")], [.file("f/x", "x")]]), "entry f/x: f is not a directory")
        try expectFailure(try single("dirlink", [[.dir("d")], [.hardlink("l", "d")]]), "entry l: hard link to the directory d")
        try expectFailure(try single("nolink", [[.hardlink("l", "missing")]]), "entry l: hard link to missing: no such file")
        try expectFailure(try single("rootfile", [[TarEntry(path: ".", kind: .file(Array("x".utf8)))]]), "replaces the image root with a non-directory")
    }

    @Test func hugeAndLyingSizes() throws {
        let huge = try layout("huge")
        try huge.image([try huge.layer(tar: lyingTar(name: "huge", size: 1 << 50), .none)])
        try huge.writeIndex()
        try expectFailure(huge.path, "entry huge claims 1125899906842624 bytes, more than the 64 GiB a file in an image may have")
        let short = try layout("short")
        try short.image([try short.layer(tar: lyingTar(name: "short", size: 1 << 20, data: Array("only this".utf8)), .gzip)])
        try short.writeIndex()
        try expectFailure(short.path, "layer 1 (sha256:")
        // A sparse file of 1 GiB with 4 KiB of data (GNU tar, pax sparse 1.0): stored sparse.
        let sparseDirectory = directory.sub("sparse-src")
        try FileManager.default.createDirectory(atPath: sparseDirectory, withIntermediateDirectories: true)
        let file = try FileDescriptor.open(FilePath(sparseDirectory + "/disk.img"), .writeOnly, options: [.create], permissions: [.ownerReadWrite])
        _ = try file.writeAll(toAbsoluteOffset: 1 << 29, [UInt8](repeating: 1, count: 4096))
        try file.resize(to: 1 << 30)
        try file.close()
        #expect(try runProcess("/bin/tar", ["--sparse", "--format=pax", "-C", sparseDirectory, "-cf", directory.sub("sparse.tar"), "disk.img"]) == 0)
        let builder = try LayoutBuilder(at: directory.sub("holes"))
        try builder.image([try builder.layer(tar: [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory.sub("sparse.tar")))), .gzip)])
        try builder.writeIndex()
        _ = try store.createTemplate(name: "holes", fromImage: builder.path)
        let template = try store.requireTemplate(named: "holes")
        #expect(template.logicalBytes == 1 << 30)
        let allocated = try CatalogSQL(store.catalog).read { db in try Int64.fetchOne(db, sql: "SELECT allocated FROM blob") ?? -1 }
        #expect(allocated >= 0 && allocated < 1 << 20)
    }

    @Test func garbageInsteadOfALayerOrAnImage() throws {
        let builder = try layout("garbage")
        try builder.image([try builder.layer(tar: Array(repeating: 0x41, count: 4096), .gzip)])
        try builder.writeIndex()
        try expectFailure(builder.path, "layer 1 (sha256:")

        try expectFailure(directory.sub("nothing-here"), "no image at \(directory.sub("nothing-here"))")
        try FileManager.default.createDirectory(atPath: directory.sub("plain-dir"), withIntermediateDirectories: true)
        try expectFailure(directory.sub("plain-dir"), "is a directory without an oci-layout file: not an OCI image layout")
        try Data("not a tar at all".utf8).write(to: URL(fileURLWithPath: directory.sub("junk.tar")))
        try expectFailure(directory.sub("junk.tar"), "is not a tar archive")
        let plainTar = try makeTar([.file("hello", "world")])
        try Data(plainTar).write(to: URL(fileURLWithPath: directory.sub("plain.tar")))
        try expectFailure(directory.sub("plain.tar"), "holds neither an OCI layout (index.json, oci-layout) nor a docker archive (manifest.json)")
    }

    /// A fifo blocks open() until a writer comes, beyond the reach of Ctrl-C; a device's open
    /// may act on hardware. Neither is ever opened, wherever it sits in the layout.
    @Test func fifosAndDevicesInALayoutAreNeverOpened() throws {
        let builder = try LayoutBuilder.single(at: directory.sub("fifo"), [[.file("a", "a")]])
        let manifest = builder.blobPath(builder.manifests[0]["digest"] as! String)
        try FileManager.default.removeItem(atPath: manifest)
        #expect(mkfifo(manifest, 0o644) == 0)
        try expectFailure(builder.path, "blobs/sha256/\((builder.manifests[0]["digest"] as! String).dropFirst(7)) in \(builder.path) is not a regular file")
        try FileManager.default.removeItem(atPath: builder.path + "/index.json")
        #expect(mknod(builder.path + "/index.json", S_IFCHR | 0o644, dev_t(deviceNumber(1, 3))) == 0)
        try expectFailure(builder.path, "index.json in \(builder.path) is not a regular file")
        // A blob that is a symlink out of the layout is not followed there.
        let outside = try LayoutBuilder.single(at: directory.sub("outside"), [[.file("a", "a")]])
        let blob = outside.blobPath(outside.manifests[0]["digest"] as! String)
        try FileManager.default.removeItem(atPath: blob)
        try FileManager.default.createSymbolicLink(atPath: blob, withDestinationPath: "/etc/passwd")
        try expectFailure(outside.path, "in \(outside.path) leads outside the image layout (a symlink?)")
        #expect(mkfifo(directory.sub("image.tar"), 0o644) == 0)
        try expectFailure(directory.sub("image.tar"), "is neither a directory nor an archive file")
    }

    @Test func unsupportedDigestAlgorithm() throws {
        let builder = try layout("sha512")
        let layer = try builder.layer([.file("a", "a")])
        var odd = layer
        odd.digest = "sha512:" + String(repeating: "ab", count: 64)
        try builder.image([odd], config: try builder.config([layer]))
        try builder.writeIndex()
        try expectFailure(builder.path, "layer 1: unsupported digest sha512:")
    }
}
