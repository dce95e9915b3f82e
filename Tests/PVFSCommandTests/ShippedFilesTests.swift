import Foundation
import PVFSTestSupport
import Testing
@testable import PVFSCommands

/// Where the commands find recipes and hooks: never in the current directory, a source
/// checkout's own only for a binary built in it.
@Suite(.serialized) struct ShippedFilesTests {
    @Test func sourceCheckoutIsTheDirectoryAboveTheBuildDirectory() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let checkout = area.sub("src/pvfs")
        try FileManager.default.createDirectory(atPath: checkout + "/Sources/PVFSCommands", withIntermediateDirectories: true)
        try write(checkout + "/Package.swift", Array("// pvfs\n".utf8))
        #expect(ShippedFiles.sourceCheckout(ofExecutable: checkout + "/.build/x86_64-unknown-linux-gnu/debug/pvfs-vm") == checkout)
        #expect(ShippedFiles.sourceCheckout(ofExecutable: checkout + "/.build/release/pvfs-template") == checkout)
        #expect(ShippedFiles.sourceCheckout(ofExecutable: checkout + "/.build-release/x86_64-unknown-linux-gnu/release/pvfsd") == checkout)
        // Installed binaries, and build directories of other packages, are not checkouts.
        #expect(ShippedFiles.sourceCheckout(ofExecutable: "/usr/bin/pvfs-template") == nil)
        #expect(ShippedFiles.sourceCheckout(ofExecutable: area.sub("other/.build/debug/pvfs-vm")) == nil)
        try FileManager.default.createDirectory(atPath: area.sub("nosources"), withIntermediateDirectories: true)
        try write(area.sub("nosources/Package.swift"), [])
        #expect(ShippedFiles.sourceCheckout(ofExecutable: area.sub("nosources/.build/debug/pvfs-vm")) == nil)
    }

    @Test func recipeSearchPathOfThisBuild() throws {
        // These tests run from this checkout's .build: its templates/ is searched, the current
        // directory's never.
        let path = ShippedFiles.recipeSearchPath(explicitDirectory: "/x", environment: ["PVFS_RECIPE_PATH": "/a::/b"])
        #expect(path == ["/x", "/a", "/b", packageRoot + "/templates", "/etc/pvfs/templates", "/usr/share/pvfs/templates"])
        #expect(ShippedFiles.hookDirectoryCandidates == [packageRoot + "/hooks", "/etc/pvfs/hooks.d", "/usr/lib/pvfs/hooks"])
    }

    /// Root running `pvfs-template create NAME` in a folder that has a templates/ must not build
    /// the recipes lying there.
    @Test func recipesInTheCurrentDirectoryAreIgnored() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        try FileManager.default.createDirectory(atPath: area.sub("work/templates"), withIntermediateDirectories: true)
        try write(area.sub("work/templates/stray.recipe"), Array("suite bookworm\nhook evil.sh\n".utf8))
        let result = try runTemplateTool(["create", "stray", "--store", area.sub("store")], currentDirectory: area.sub("work"))
        #expect(result.status == 3, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("error: no recipe named stray"))
        #expect(result.stderr.contains(packageRoot + "/templates, /etc/pvfs/templates"))
        #expect(!result.stderr.contains(area.sub("work")))
        // The same file is used when asked for explicitly.
        let explicit = try runTemplateTool(["create", "stray", "--store", area.sub("store"), "--recipe-dir", area.sub("work/templates")],
                                           currentDirectory: area.sub("work"))
        #expect(explicit.status != 0 && !explicit.stderr.contains("no recipe named"), "\(explicit.stderr)")
    }

    @Test func everyCommandPrintsTheVersion() throws {
        for tool in ["pvfs", "pvfs-vm", "pvfs-template", "pvfsd"] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try builtProduct(tool))
            process.arguments = ["--version"]
            process.standardOutput = Pipe()
            process.standardError = Pipe()
            try process.run()
            let result = collectOutput(of: process)
            #expect(result.status == 0 && result.stdout == pvfsVersion + "\n", "\(tool): \(result.stdout) \(result.stderr)")
        }
    }
}
