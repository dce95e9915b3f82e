import Foundation
import Glibc
import PVFSStore
import PVFSSystem
import PVFSTestSupport
import Testing

/// The tools these tests build images with; scripts/setup installs them (umoci, skopeo, zstd,
/// python3, attr), so scripts/test always runs this suite.
private let haveImageTools = geteuid() == 0
    && ["/usr/bin/umoci", "/usr/bin/skopeo", "/usr/bin/zstd", "/usr/bin/python3", "/usr/bin/getfattr"].allSatisfy {
        FileManager.default.isExecutableFile(atPath: $0)
    }

/// Runs an external program; throws with its output unless it exits 0.
@discardableResult
private func sh(_ command: String) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-ec", command]
    process.standardOutput = Pipe()
    process.standardError = Pipe()
    try process.run()
    let result = collectOutput(of: process)
    guard result.status == 0 else { throw TestSupportError("\(command) exited \(result.status): \(result.stderr)") }
    return result.stdout
}

/// A tree as a user compares two trees: per path, type, mode, owner, size, mtime (seconds: tar
/// as umoci writes it keeps no more), symlink target, content hash, user xattrs, link group.
private func treeManifest(_ root: String) throws -> [String: String] {
    var result: [String: String] = [:]
    var firstName: [UInt64: String] = [:]
    var paths = [""]
    while let relative = paths.popLast() {
        let full = root + relative
        var st = stat()
        guard lstat(full, &st) == 0 else { throw TestSupportError("cannot lstat \(full)") }
        var line = String(st.st_mode, radix: 8) + " \(st.st_uid):\(st.st_gid) mtime \(st.st_mtim.tv_sec)"
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            for name in try FileManager.default.contentsOfDirectory(atPath: full) { paths.append(relative + "/" + name) }
        case S_IFLNK:
            line += " -> " + (try FileManager.default.destinationOfSymbolicLink(atPath: full))
        case S_IFREG:
            line += " size \(st.st_size) " + SHA256Hasher.hash([UInt8](try Data(contentsOf: URL(fileURLWithPath: full)))).hex.prefix(16)
            if st.st_nlink > 1 {
                let group = firstName[UInt64(st.st_ino)] ?? relative
                firstName[UInt64(st.st_ino)] = min(group, relative)
            }
        case S_IFCHR, S_IFBLK:
            line += " rdev \(st.st_rdev)"
        default:
            break
        }
        let names = (try? sh("getfattr --absolute-names -h -d -m '^user\\.' '\(full)' 2>/dev/null | grep -v '^#' | sort")) ?? ""
        if !names.isEmpty { line += " xattrs " + names.split(separator: "\n").joined(separator: ",") }
        result[relative.isEmpty ? "/" : relative] = line
    }
    // Hard link groups: every name records the group's smallest name.
    for (path, _) in result {
        var st = stat()
        lstat(root + (path == "/" ? "" : path), &st)
        if st.st_mode & S_IFMT == S_IFREG && st.st_nlink > 1, let group = firstName[UInt64(st.st_ino)] { result[path]! += " group " + group }
    }
    return result
}

private func expectSameTrees(_ a: [String: String], _ b: [String: String], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(Set(a.keys) == Set(b.keys), "\(what): paths differ: \(Set(a.keys).symmetricDifference(b.keys).sorted())", sourceLocation: sourceLocation)
    for (path, line) in a where b[path] != nil && b[path] != line {
        Issue.record("\(what): \(path): \(line) vs \(b[path]!)", sourceLocation: sourceLocation)
    }
}

/// `pvfs-template create --from-oci` with images built by Debian's umoci and skopeo (nothing is
/// pulled from a registry): every archive format gives the tree umoci itself unpacks.
@Suite(.serialized, .enabled(if: haveImageTools, "needs root and umoci, skopeo, zstd, python3, getfattr (scripts/setup installs them)")) struct OCICommandTests {
    let area: TemporaryDirectory
    let store: String
    let layout: String

    init() throws {
        area = try TemporaryDirectory("pvfs-oci-test")
        store = area.sub("store")
        layout = area.sub("layout")
        let bundle = area.sub("bundle")
        try sh("""
            umoci init --layout '\(layout)'
            umoci new --image '\(layout):v1'
            umoci unpack --image '\(layout):v1' '\(bundle)'
            cd '\(bundle)/rootfs'
            mkdir -p etc bin srv/app srv/gone/deep usr/share/doc
            echo 'hello' > etc/motd
            ln etc/motd bin/motd-link
            ln -s ../etc/motd bin/sym
            setfattr -n user.origin -v umoci etc/motd
            mkfifo run-fifo
            mknod dev-null c 1 3
            printf 'a' > srv/app/a; printf 'b' > srv/app/b; printf 'x' > srv/gone/deep/x
            echo 'tool' > usr/share/doc/tool; chown 1000:1000 usr/share/doc/tool; chmod 4755 usr/share/doc/tool
            cd /
            umoci repack --image '\(layout):v1' '\(bundle)'
            umoci config --image '\(layout):v1' --config.entrypoint /bin/sh --config.env FOO=bar --config.workingdir /srv \\
                --config.label org.example.role=test --config.exposedports 8080/tcp
            rm -rf '\(bundle)'
            umoci unpack --image '\(layout):v1' '\(bundle)'
            cd '\(bundle)/rootfs'
            rm etc/motd
            rm -r srv/gone
            echo 'new in v2' > srv/app/new
            cd /
            umoci repack --image '\(layout):v2' '\(bundle)'
            rm -rf '\(bundle)'
            """)
    }

    func reference(_ tag: String) throws -> [String: String] {
        let bundle = area.sub("reference-\(tag)")
        if !FileManager.default.fileExists(atPath: bundle) { try sh("umoci unpack --image '\(layout):\(tag)' '\(bundle)'") }
        return try treeManifest(bundle + "/rootfs")
    }

    func exported(_ template: String) throws -> [String: String] {
        let out = area.sub("export-\(template)")
        try mustRun("pvfs-template", ["export", template, out, "--store", store])
        return try treeManifest(out)
    }

    @Test func layoutImportsGiveWhatUmociUnpacks() throws {
        let created = try runTemplateTool(["create", "web1", "--from-oci", layout, "--image-ref", "v1", "--store", store])
        #expect(created.status == 0, "\(created.stderr)")
        #expect(created.stdout.contains("image: oci-layout, linux/amd64, 1 layer, sha256:"), "\(created.stdout)")
        expectSameTrees(try exported("web1"), try reference("v1"), "v1")

        let json = try runTemplateTool(["create", "web2", "--from-oci", layout, "--image-ref", "v2", "--store", store, "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let result = try #require(try parseJSON(json.stdout) as? [String: Any])
        let image = try #require(result["image"] as? [String: Any])
        #expect(image["format"] as? String == "oci-layout" && image["layers"] as? Int == 2 && image["platform"] as? String == "linux/amd64")
        #expect((result["template"] as? [String: Any])?["name"] as? String == "web2")
        // v2's layer deletes etc/motd and srv/gone with explicit whiteouts.
        let v2 = try exported("web2")
        expectSameTrees(v2, try reference("v2"), "v2")
        #expect(v2["/etc/motd"] == nil && v2["/srv/gone"] == nil && v2["/bin/motd-link"] != nil && v2["/srv/app/new"] != nil)

        // Without --image-ref the layout's two images are ambiguous.
        let ambiguous = try runTemplateTool(["create", "x", "--from-oci", layout, "--store", store])
        #expect(ambiguous.status == 1)
        #expect(ambiguous.stderr.contains("holds 2 images; choose one with --image-ref or --platform"), "\(ambiguous.stderr)")
    }

    @Test func showPrintsTheImageConfiguration() throws {
        try mustRun("pvfs-template", ["create", "web", "--from-oci", layout, "--image-ref", "v1", "--store", store])
        let text = try runTemplateTool(["show", "web", "--store", store])
        #expect(text.status == 0)
        for expected in ["image:          oci-layout sha256:", "platform:       linux/amd64, 1 layer", "entrypoint:     /bin/sh",
                         "env:            FOO=bar", "working dir:    /srv", "exposed ports:  8080/tcp", "labels:         org.example.role=test"] {
            #expect(text.stdout.contains(expected), "missing \(expected) in \(text.stdout)")
        }
        let json = try runTemplateTool(["show", "web", "--store", store, "--json"])
        let details = try #require(try parseJSON(json.stdout) as? [String: Any])
        let image = try #require(details["image"] as? [String: Any])
        let config = try #require(image["config"] as? [String: Any])
        #expect((config["config"] as? [String: Any])?["Entrypoint"] as? [String] == ["/bin/sh"])
        #expect((image["settings"] as? [String: Any])?["env"] as? [String] == ["FOO=bar"])
        #expect((config["rootfs"] as? [String: Any])?["type"] as? String == "layers")
        #expect((image["configDigest"] as? String)?.hasPrefix("sha256:") == true && (image["manifestDigest"] as? String)?.hasPrefix("sha256:") == true)
        // A template from a directory has no image.
        try FileManager.default.createDirectory(atPath: area.sub("plain"), withIntermediateDirectories: true)
        try mustRun("pvfs-template", ["create", "plain", "--from", area.sub("plain"), "--store", store])
        let plain = try #require(try parseJSON(try runTemplateTool(["show", "plain", "--store", store, "--json"]).stdout) as? [String: Any])
        #expect(plain["image"] == nil)
    }

    @Test func skopeoArchivesGiveTheSameTree() throws {
        let docker = area.sub("docker.tar"), oci = area.sub("oci.tar")
        try sh("""
            skopeo copy -q 'oci:\(layout):v2' 'docker-archive:\(docker):example/web:v2'
            skopeo copy -q 'oci:\(layout):v2' 'oci-archive:\(oci):v2'
            gzip -k '\(docker)'
            """)
        let expected = try reference("v2")
        for (name, path, format) in [("d", docker, "docker-archive"), ("dz", docker + ".gz", "docker-archive"), ("o", oci, "oci-archive")] {
            let created = try runTemplateTool(["create", name, "--from-oci", path, "--store", store, "--json"])
            #expect(created.status == 0, "\(path): \(created.stderr)")
            let image = (try parseJSON(created.stdout) as? [String: Any])?["image"] as? [String: Any]
            #expect(image?["format"] as? String == format)
            expectSameTrees(try exported(name), expected, path)
        }
        // A docker archive is found by its tag, with Docker's defaults applied.
        let tagged = try runTemplateTool(["create", "tagged", "--from-oci", docker, "--image-ref", "example/web:v2", "--store", store])
        #expect(tagged.status == 0, "\(tagged.stderr)")
        let wrongTag = try runTemplateTool(["create", "nope", "--from-oci", docker, "--image-ref", "example/web:v9", "--store", store])
        #expect(wrongTag.status == 3)
        #expect(wrongTag.stderr.contains("has no image tagged example/web:v9 (tags: docker.io/example/web:v2)"), "\(wrongTag.stderr)")
        // The decompressed copy of the .gz archive is gone.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: store + "/tmp")
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func anOpaqueLayerAddedByHand() throws {
        // umoci never writes opaque markers: add a layer with srv/app/.wh..wh..opq by hand.
        try addImage("v3", layers: [HandLayer(tar: try pythonTar("""
            d('srv'); d('srv/app')
            f('srv/app/.wh..wh..opq')
            f('srv/app/only', b'only\\n')
            """))])
        try mustRun("pvfs-template", ["create", "opaque", "--from-oci", layout, "--image-ref", "v3", "--store", store])
        let tree = try exported("opaque")
        #expect(tree.keys.filter { $0.hasPrefix("/srv/app/") }.sorted() == ["/srv/app/only"])
        expectSameTrees(tree, try reference("v3"), "v3 (opaque)")
    }

    @Test func aVMOfAnImageShowsItsFilesThroughAMount() throws {
        try mustRun("pvfs-template", ["create", "web1", "--from-oci", layout, "--image-ref", "v1", "--store", store])
        try mustRun("pvfs-template", ["create", "web2", "--from-oci", layout, "--image-ref", "v2", "--store", store])
        for (vm, template, tag) in [("vm1", "web1", "v1"), ("vm2", "web2", "v2")] {
            try mustRun("pvfs-vm", ["provision", "--template", template, vm, "--no-hooks", "--store", store])
            let mountpoint = area.sub("mnt-\(vm)")
            try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
            try mustRun("pvfs-vm", ["mount", vm, mountpoint, "--store", store])
            defer { _ = try? runTool("pvfs-vm", ["umount", mountpoint, "--store", store]) }
            // Files, modes (setuid included), owners, symlinks, the hard link group, the fifo,
            // the device node and user xattrs are the image's; whiteouts hid what v2 deleted.
            let seen = try treeManifest(mountpoint)
            expectSameTrees(seen, try reference(tag), "\(vm) mounted")
            #expect(seen["/usr/share/doc/tool"]?.hasPrefix("104755 1000:1000 ") == true, "\(seen["/usr/share/doc/tool"] ?? "missing")")
            #expect(seen["/bin/sym"]?.hasSuffix("-> ../etc/motd") == true)
            #expect(seen["/dev-null"]?.hasPrefix("20644 0:0 ") == true && seen["/dev-null"]?.hasSuffix("rdev 259") == true, "\(seen["/dev-null"] ?? "missing")")
            if tag == "v1" {
                #expect(seen["/bin/motd-link"]?.contains("group /bin/motd-link") == true && seen["/etc/motd"]?.contains("group /bin/motd-link") == true)
                #expect(try String(contentsOfFile: mountpoint + "/bin/sym", encoding: .utf8) == "hello\n")
            } else {
                #expect(seen["/etc/motd"] == nil && seen["/srv/gone"] == nil && seen["/srv/app/new"] != nil)
            }
            // The VM writes over the image's files; the template stays as it was.
            try Data("changed\n".utf8).write(to: URL(fileURLWithPath: mountpoint + "/bin/motd-link"))
            #expect(try String(contentsOfFile: mountpoint + "/bin/motd-link", encoding: .utf8) == "changed\n")
            // An image's device nodes and setuid files are inert on the host's mount.
            let options = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8).split(separator: "\n")
                .first { $0.split(separator: " ").dropFirst().first.map(String.init) == mountpoint }.map(String.init) ?? ""
            #expect(options.contains("nosuid") && options.contains("nodev"), "\(options)")
        }
        #expect(try exported("web1")["/bin/motd-link"] == (try reference("v1"))["/bin/motd-link"])
    }

    @Test func symlinksAndAbsolutePathsStayInsideTheImage() throws {
        let marker = "/tmp/pvfs-oci-escape-\(getpid())"
        defer { _ = try? sh("rm -rf '\(marker)'") }
        // A symlink that climbs far above the root, then a later layer writing through it and
        // through an absolute symlink, plus absolute names: all of it lands inside the image.
        try addImage("v3", layers: [
            HandLayer(tar: try pythonTar("""
                l('up', '../../../../../../tmp'); l('hostroot', '/'); f('/abs/file', b'absolute')
                dev('disk', 8, 0, type=tarfile.BLKTYPE, mode=0o666)
                """)),
            HandLayer(tar: try pythonTar("""
                f('up/pvfs-oci-escape-\(getpid())/pwned', b'1')
                f('hostroot/etc/via-root', b'2')
                """), compression: "zstd"),
        ])
        try mustRun("pvfs-template", ["create", "inside", "--from-oci", layout, "--image-ref", "v3", "--store", store])
        #expect(!FileManager.default.fileExists(atPath: marker))
        let tree = try exported("inside")
        #expect(tree["/tmp/pvfs-oci-escape-\(getpid())/pwned"]?.contains("size 1 ") == true, "\(tree.keys.sorted())")
        #expect(tree["/etc/via-root"]?.contains("size 1 ") == true)
        #expect(tree["/abs/file"]?.contains("size 8 ") == true)
        #expect(tree["/up"]?.hasSuffix("-> ../../../../../../tmp") == true)
        #expect(tree["/disk"]?.hasPrefix("60666 0:0 ") == true && tree["/disk"]?.hasSuffix("rdev 2048") == true, "\(tree["/disk"] ?? "missing")")
    }

    /// Every hostile or broken image fails with one line naming the problem, exit 1, and leaves
    /// the store as it was: no template (not even a building one), no blob, nothing in tmp/.
    @Test func hostileAndBrokenImagesKeepNothing() throws {
        try mustRun("pvfs-template", ["create", "base", "--from-oci", layout, "--image-ref", "v1", "--store", store])
        let blobsBefore = try blobFiles()
        let hello = try pythonTar("f('etc/hello', b'hello')")
        var cases: [(String, [HandLayer], String)] = [
            ("dotdot", [HandLayer(tar: try pythonTar("f('../../../etc/passwd', b'root::0:0::/:/bin/sh')"))],
             "layer 3 (sha256:"),
            ("dotdot-message", [HandLayer(tar: try pythonTar("f('srv/../../x', b'x')"))],
             "entry srv/../../x has a '..' component: it would escape the image root"),
            ("hardlink-out", [HandLayer(tar: try pythonTar("h('shadow', '../../etc/shadow')"))],
             "hard link target ../../etc/shadow has a '..' component"),
            ("hardlink-missing", [HandLayer(tar: try pythonTar("h('l', 'no/such/file')"))],
             "entry l: hard link to no/such/file: no such file"),
            ("hardlink-dir", [HandLayer(tar: try pythonTar("h('l', 'srv')"))], "entry l: hard link to the directory srv"),
            ("through-a-file", [HandLayer(tar: try pythonTar("f('bin/motd-link/x', b'x')"))], "entry bin/motd-link/x: motd-link is not a directory"),
            ("symlink-loop", [HandLayer(tar: try pythonTar("l('a', 'b'); l('b', 'a')")), HandLayer(tar: try pythonTar("f('a/x', b'x')"))],
             "entry a/x: too many levels of symbolic links"),
            ("huge", [HandLayer(tar: try pythonTar("lying('huge', 1 << 50)"))],
             "entry huge claims 1125899906842624 bytes, more than the 64 GiB a file in an image may have"),
            ("short", [HandLayer(tar: try pythonTar("lying('short', 1 << 20)"))], "layer 3 (sha256:"),
            ("truncated-gzip", [HandLayer(tar: hello, blob: { Array($0.prefix($0.count / 2)) })], "layer 3 (sha256:"),
            ("corrupt-zstd", [HandLayer(tar: hello, compression: "zstd", blob: { var b = $0; b[b.count - 6] ^= 0xff; return b })],
             "layer 3 (sha256:"),
            ("not-a-tar", [HandLayer(tar: [UInt8](repeating: 0x41, count: 5000))], "layer 3 (sha256:"),
            ("gzip-says-zstd", [HandLayer(tar: hello, mediaType: "application/vnd.oci.image.layer.v1.tar+zstd")],
             "its media type says zstd, the data is gzip"),
            ("not-a-layer", [HandLayer(tar: hello, mediaType: "application/vnd.cncf.helm.chart.content.v1.tar+gzip")],
             "not a filesystem layer"),
            ("wrong-diff-id", [HandLayer(tar: hello, diffID: "sha256:" + String(repeating: "0", count: 64))],
             "diff_id mismatch: the configuration says sha256:0000"),
            ("layer-changed", [HandLayer(tar: try pythonTar("f('etc/tampered', b'x')"), tamper: .layer)], "digest mismatch: the blob hashes to sha256:"),
            ("config-changed", [HandLayer(tar: hello, tamper: .config)], "the image configuration (sha256:"),
            ("manifest-changed", [HandLayer(tar: hello, tamper: .manifest)], "digest mismatch: the content hashes to sha256:"),
        ]
        // The last layer's size in its descriptor is a lie.
        cases.append(("size-lie", [HandLayer(tar: hello, tamper: .size)], "the descriptor says"))
        for (tag, layers, expected) in cases {
            try addImage(tag, layers: layers)
            let result = try runTemplateTool(["create", "bad-\(tag)", "--from-oci", layout, "--image-ref", tag, "--store", store])
            #expect(result.status == 1, "\(tag): exit \(result.status): \(result.stderr)")
            #expect(result.stderr.hasPrefix("error: ") && result.stderr.contains(expected), "\(tag): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(tag): \(result.stderr)")
            let names = (try parseJSON(try runTemplateTool(["list", "--store", store, "--json"]).stdout) as? [[String: Any]])?.compactMap { $0["name"] as? String }
            #expect(names == ["base"], "\(tag): templates \(names ?? [])")
            #expect(try blobFiles() == blobsBefore, "\(tag): blobs changed")
            #expect(try FileManager.default.contentsOfDirectory(atPath: store + "/tmp").isEmpty, "\(tag): tmp/ not empty")
        }
        let fsck = try runTool("pvfs", ["fsck", "--store", store])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
    }

    /// A docker archive has no manifest digests: the configuration's name is its digest and the
    /// layers must match its diff_ids. Its members are found inside the archive only.
    @Test func dockerArchivesAreCheckedToo() throws {
        let docker = area.sub("docker.tar")
        try sh("skopeo copy -q 'oci:\(layout):v2' 'docker-archive:\(docker):example/web:v2'")
        let rewrite = area.sub("rewrite.py")
        try write(rewrite, Array("""
            import io, json, sys, tarfile
            src, dst, mode = sys.argv[1:4]
            tin = tarfile.open(src); tout = tarfile.open(dst, 'w', format=tarfile.PAX_FORMAT)
            manifest = json.load(tin.extractfile('manifest.json'))
            layer, config = manifest[0]['Layers'][-1], manifest[0]['Config']
            def other_tar():
                out = io.BytesIO(); t = tarfile.open(fileobj=out, mode='w')
                i = tarfile.TarInfo('smuggled'); i.size = 1; t.addfile(i, io.BytesIO(b'x')); t.close(); return out.getvalue()
            for m in tin.getmembers():
                data = tin.extractfile(m).read() if m.isfile() else None
                if mode == 'layer' and m.name == layer: data = other_tar()
                if mode == 'config' and m.name == config: data = data.replace(b'"amd64"', b'"amd64" ')
                if m.name == 'manifest.json' and mode in ('escape', 'symlink'):
                    manifest[0]['Layers'][-1] = '../../etc/passwd' if mode == 'escape' else 'evil/layer.tar'
                    data = json.dumps(manifest).encode()
                if data is not None: m.size = len(data)
                tout.addfile(m, io.BytesIO(data) if data is not None else None)
            if mode == 'symlink':
                i = tarfile.TarInfo('evil/layer.tar'); i.type = tarfile.SYMTYPE; i.linkname = '../../outside.tar'; tout.addfile(i)
            tout.close()
            """.utf8))
        let blobsBefore = try blobFiles()
        for (mode, status, expected) in [
            ("layer", Int32(1), "diff_id mismatch: the configuration says sha256:"),
            ("config", 1, "digest mismatch: the content hashes to sha256:"),
            ("escape", 3, "has no member ../../etc/passwd"),
            ("symlink", 1, "member evil/layer.tar leads outside the archive"),
        ] {
            let spoiled = area.sub("docker-\(mode).tar")
            try sh("python3 '\(rewrite)' '\(docker)' '\(spoiled)' \(mode)")
            let result = try runTemplateTool(["create", "bad", "--from-oci", spoiled, "--store", store])
            #expect(result.status == status && result.stderr.hasPrefix("error: ") && result.stderr.contains(expected), "\(mode): \(result.status) \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(mode): \(result.stderr)")
            #expect(try blobFiles() == blobsBefore, "\(mode): blobs changed")
            #expect(try FileManager.default.contentsOfDirectory(atPath: store + "/tmp").isEmpty, "\(mode): tmp/ not empty")
        }
        let listed = try #require(try parseJSON(try runTemplateTool(["list", "--store", store, "--json"]).stdout) as? [[String: Any]])
        #expect(listed.isEmpty)
    }

    @Test func helpAndJSON() throws {
        let help = try runTemplateTool(["create", "--help"])
        #expect(help.status == 0)
        for expected in ["--from-oci <path>", "--platform <platform>", "--image-ref <name>", "OCI image layout directory", "docker archive"] {
            #expect(help.stdout.contains(expected), "missing \(expected) in \(help.stdout)")
        }
        let created = try runTemplateTool(["create", "j", "--from-oci", layout, "--image-ref", "v1", "--store", store, "--json"])
        #expect(created.status == 0, "\(created.stderr)")
        let result = try #require(try parseJSON(created.stdout) as? [String: Any])
        let template = try #require(result["template"] as? [String: Any])
        #expect(template["name"] as? String == "j")
        #expect((template["source"] as? String)?.hasPrefix("oci-layout:\(layout)@sha256:") == true, "\(template["source"] ?? "")")
        #expect(template["regularFiles"] as? Int == 5 && template["symlinks"] as? Int == 1 && template["fifos"] as? Int == 1
                && template["devices"] as? Int == 1 && template["extraHardlinks"] as? Int == 1, "\(template)")
        let image = try #require(result["image"] as? [String: Any])
        #expect((image["settings"] as? [String: Any])?["entrypoint"] as? [String] == ["/bin/sh"])
        #expect(((image["config"] as? [String: Any])?["rootfs"] as? [String: Any])?["type"] as? String == "layers")
        // The same failure under --json: exit 1, the message on stderr, nothing on stdout.
        let failed = try runTemplateTool(["create", "j", "--from-oci", layout, "--image-ref", "v1", "--store", store, "--json"])
        #expect(failed.status != 0 && failed.stdout.isEmpty && failed.stderr.contains("j"), "\(failed.status) \(failed.stdout) \(failed.stderr)")
    }

    @Test func failuresAreOneLineAndKeepNothing() throws {
        let broken = area.sub("broken")
        try sh("cp -a '\(layout)' '\(broken)'")
        // Flip one byte in the middle of v1's layer blob (the largest blob but configs).
        let index = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: broken + "/index.json"))) as? [String: Any])
        let v1 = try #require((index["manifests"] as? [[String: Any]])?.first)
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: broken + "/blobs/sha256/" + (v1["digest"] as! String).dropFirst(7)))) as? [String: Any])
        let layerDigest = try #require((manifest["layers"] as? [[String: Any]])?.first?["digest"] as? String)
        let blobPath = broken + "/blobs/sha256/" + layerDigest.dropFirst(7)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: blobPath)))
        bytes[bytes.count / 2] ^= 0x55
        try Data(bytes).write(to: URL(fileURLWithPath: blobPath))
        let corrupt = try runTemplateTool(["create", "bad", "--from-oci", broken, "--image-ref", "v1", "--store", store])
        #expect(corrupt.status == 1)
        #expect(corrupt.stderr.hasPrefix("error: layer 1 (\(layerDigest)): "), "\(corrupt.stderr)")
        #expect(corrupt.stderr.split(separator: "\n").count == 1, "\(corrupt.stderr)")

        let missing = try runTemplateTool(["create", "bad", "--from-oci", area.sub("nothing"), "--store", store])
        #expect(missing.status == 3 && missing.stderr == "error: no image at \(area.sub("nothing"))\n", "\(missing.stderr)")
        // The way skopeo names an image gets a hint at how pvfs does.
        let transport = try runTemplateTool(["create", "bad", "--from-oci", "oci:\(layout):v1", "--store", store])
        #expect(transport.status == 3 && transport.stderr.contains("(--from-oci takes a path: --from-oci \(layout) --image-ref v1)"), "\(transport.stderr)")
        let bundle = try runTemplateTool(["create", "bad", "--from-oci", area.path, "--store", store])
        #expect(bundle.status == 1 && bundle.stderr.contains("not an OCI image layout (a plain directory tree is imported with --from)"), "\(bundle.stderr)")
        let usage = try runTemplateTool(["create", "bad", "--from", area.path, "--from-oci", layout, "--store", store])
        #expect(usage.status == 64 && usage.stderr.contains("--from, --from-oci and --recipe exclude each other"))
        let platform = try runTemplateTool(["create", "bad", "--from-oci", layout, "--image-ref", "v1", "--platform", "linux/arm64", "--store", store])
        #expect(platform.status == 1 && platform.stderr.contains("the image in \(layout) is for linux/amd64, not linux/arm64"), "\(platform.stderr)")

        let listed = try #require(try parseJSON(try runTemplateTool(["list", "--store", store, "--json"]).stdout) as? [[String: Any]])
        #expect(listed.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store + "/tmp").isEmpty)
        let fsck = try runTool("pvfs", ["fsck", "--store", store])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
    }
}

/// A layer made by hand on top of the layout's v2, and how to spoil it.
fileprivate struct HandLayer {
    enum Tamper { case layer, config, manifest, size }
    var tar: [UInt8]
    var compression = "gzip"
    /// The media type, when not the one the compression calls for.
    var mediaType: String?
    /// The blob as stored, made from the compressed bytes (to truncate or corrupt them).
    var blob: (([UInt8]) -> [UInt8])?
    /// The configuration's diff_id, when not the tar's digest.
    var diffID: String?
    /// A change made after the descriptors were written.
    var tamper: Tamper?
}

/// A tar written by Python's tarfile (pax): `f(name, data)`, `d(name)`, `l(name, target)`,
/// `h(name, target)`, `dev(name, major, minor)`, `lying(name, size)` (a header claiming `size`
/// bytes followed by one block of data).
private func pythonTar(_ body: String) throws -> [UInt8] {
    let scratch = try TemporaryDirectory("pvfs-oci-tar")
    let script = """
        import io, sys, tarfile
        out = open(sys.argv[1], 'wb')
        t = tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT)
        def info(name, type, mode):
            i = tarfile.TarInfo(name); i.type = type; i.mode = mode; i.mtime = 1700000000; return i
        def f(name, data=b'', mode=0o644):
            i = info(name, tarfile.REGTYPE, mode); i.size = len(data); t.addfile(i, io.BytesIO(data))
        def d(name, mode=0o755): t.addfile(info(name, tarfile.DIRTYPE, mode))
        def l(name, target):
            i = info(name, tarfile.SYMTYPE, 0o777); i.linkname = target; t.addfile(i)
        def h(name, target):
            i = info(name, tarfile.LNKTYPE, 0o644); i.linkname = target; t.addfile(i)
        def dev(name, major, minor, type=tarfile.CHRTYPE, mode=0o600):
            i = info(name, type, mode); i.devmajor = major; i.devminor = minor; t.addfile(i)
        def lying(name, size):
            i = info(name, tarfile.REGTYPE, 0o644); i.size = size
            out.write(i.tobuf(tarfile.PAX_FORMAT, 'utf-8', 'surrogateescape') + b'x' * 512); out.flush()
        \(body)
        t.close(); out.close()
        """
    try write(scratch.sub("make.py"), Array(script.utf8))
    try sh("python3 '\(scratch.sub("make.py"))' '\(scratch.sub("layer.tar"))'")
    return [UInt8](try Data(contentsOf: URL(fileURLWithPath: scratch.sub("layer.tar"))))
}

extension OCICommandTests {
    private func json(_ path: String) throws -> [String: Any] {
        guard let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any] else {
            throw TestSupportError("\(path) is not a JSON object")
        }
        return object
    }

    private func blobPath(_ digest: String) -> String { layout + "/blobs/sha256/" + digest.dropFirst(7) }

    private func writeBlob(_ bytes: [UInt8]) throws -> String {
        let digest = "sha256:" + SHA256Hasher.hash(bytes).hex
        try Data(bytes).write(to: URL(fileURLWithPath: blobPath(digest)))
        return digest
    }

    private func flipByte(_ path: String) throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count / 2] ^= 0x55
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// Adds the image `tag` to the layout: v2's layers plus `layers`, its own configuration and
    /// manifest, named in index.json.
    fileprivate func addImage(_ tag: String, layers: [HandLayer]) throws {
        var index = try json(layout + "/index.json")
        var manifests = index["manifests"] as? [[String: Any]] ?? []
        guard let v2 = manifests.first(where: { ($0["annotations"] as? [String: String])?["org.opencontainers.image.ref.name"] == "v2" }),
              let v2Digest = v2["digest"] as? String else { throw TestSupportError("no v2 in \(layout)") }
        var manifest = try json(blobPath(v2Digest))
        var configDescriptor = manifest["config"] as? [String: Any] ?? [:]
        var config = try json(blobPath(configDescriptor["digest"] as? String ?? ""))
        var rootfs = config["rootfs"] as? [String: Any] ?? [:]
        var diffIDs = rootfs["diff_ids"] as? [String] ?? []
        var descriptors = manifest["layers"] as? [[String: Any]] ?? []
        var tamperedLayer: String?
        for layer in layers {
            let raw = area.sub("layer-\(tag)-\(descriptors.count).tar")
            try write(raw, layer.tar)
            var compressed = layer.tar
            if layer.compression != "none" {
                try sh("\(layer.compression == "gzip" ? "gzip -n" : "zstd -q") -c '\(raw)' > '\(raw).z'")
                compressed = [UInt8](try Data(contentsOf: URL(fileURLWithPath: raw + ".z")))
            }
            if let spoil = layer.blob { compressed = spoil(compressed) }
            let digest = try writeBlob(compressed)
            diffIDs.append(layer.diffID ?? "sha256:" + SHA256Hasher.hash(layer.tar).hex)
            let suffix = layer.compression == "none" ? "" : "+" + layer.compression
            descriptors.append(["mediaType": layer.mediaType ?? "application/vnd.oci.image.layer.v1.tar" + suffix, "digest": digest,
                                "size": compressed.count + (layer.tamper == .size ? 1 : 0)])
            if layer.tamper == .layer { tamperedLayer = digest }
        }
        rootfs["diff_ids"] = diffIDs
        config["rootfs"] = rootfs
        let configBytes = [UInt8](try JSONSerialization.data(withJSONObject: config))
        configDescriptor["digest"] = try writeBlob(configBytes)
        configDescriptor["size"] = configBytes.count
        manifest["config"] = configDescriptor
        manifest["layers"] = descriptors
        let manifestBytes = [UInt8](try JSONSerialization.data(withJSONObject: manifest))
        let manifestDigest = try writeBlob(manifestBytes)
        manifests.append(["mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestBytes.count,
                          "annotations": ["org.opencontainers.image.ref.name": tag]])
        index["manifests"] = manifests
        try JSONSerialization.data(withJSONObject: index).write(to: URL(fileURLWithPath: layout + "/index.json"))
        // Blobs changed after the fact (copies under the same names, so other images keep theirs).
        if let tamperedLayer { try flipByte(blobPath(tamperedLayer)) }
        if layers.contains(where: { $0.tamper == .config }) { try flipByte(blobPath(configDescriptor["digest"] as? String ?? "")) }
        if layers.contains(where: { $0.tamper == .manifest }) { try flipByte(blobPath(manifestDigest)) }
    }

    /// The store's blob files, by name.
    func blobFiles() throws -> Set<String> {
        Set(try sh("find '\(store)/blobs' -type f 2>/dev/null | sort").split(separator: "\n").map(String.init))
    }
}
