import Foundation
import Glibc
import GRDB
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFSStore

/// `pvfs-template` driven as a user drives it: the built binary, its output and exit codes.
@Suite(.serialized) struct TemplateCommandTests {
    @Test func lifecycleWithJSONAndExitCodes() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = area.sub("store")
        try FileManager.default.createDirectory(atPath: area.sub("src/etc"), withIntermediateDirectories: true)
        try write(area.sub("src/etc/hostname"), Array("vm\n".utf8))
        try write(area.sub("src/etc/copy"), Array("vm\n".utf8))
        symlink("hostname", area.sub("src/etc/link"))

        let created = try runTemplateTool(["create", "base", "--store", store, "--from", area.sub("src"), "--json"])
        #expect(created.status == 0, "\(created.stderr)")
        let json = try #require(try parseJSON(created.stdout) as? [String: Any])
        let template = try #require(json["template"] as? [String: Any])
        #expect(template["name"] as? String == "base")
        #expect(template["entries"] as? Int == 5)
        #expect(template["regularFiles"] as? Int == 2)
        #expect(template["newBlobs"] as? Int == 1)
        #expect(template["reusedContent"] as? Int == 1)

        let again = try runTemplateTool(["create", "base", "--store", store, "--from", area.sub("src")])
        #expect(again.status == 4)
        #expect(again.stderr == "error: a template named base exists already\n")

        let listed = try runTemplateTool(["list", "--store", store, "--json"])
        #expect(listed.status == 0)
        let items = try #require(try parseJSON(listed.stdout) as? [[String: Any]])
        #expect(items.map { $0["name"] as? String } == ["base"])
        #expect(items.first?["logicalBytes"] as? Int == 6)

        let plain = try runTemplateTool(["list", "--store", store])
        #expect(plain.stdout.contains("base") && plain.stdout.hasPrefix("NAME"))

        let shown = try runTemplateTool(["show", "base", "--store", store, "--json"])
        let details = try #require(try parseJSON(shown.stdout) as? [String: Any])
        #expect(details["blobCount"] as? Int == 1)
        #expect(details["entries"] as? Int == 5)
        #expect(details["vms"] as? [String] == [])

        let missing = try runTemplateTool(["show", "nope", "--store", store])
        #expect(missing.status == 3)
        #expect(missing.stderr == "error: no template named nope\n")

        // Export refuses a non-empty destination, then writes the tree.
        try FileManager.default.createDirectory(atPath: area.sub("busy"), withIntermediateDirectories: true)
        try write(area.sub("busy/x"), [1])
        let refused = try runTemplateTool(["export", "base", area.sub("busy"), "--store", store])
        #expect(refused.status == 4)
        #expect(refused.stderr.contains("is not empty"))
        let exported = try runTemplateTool(["export", "base", area.sub("out"), "--store", store, "--json"])
        #expect(exported.status == 0, "\(exported.stderr)")
        #expect(try String(contentsOfFile: area.sub("out/etc/hostname"), encoding: .utf8) == "vm\n")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: area.sub("out/etc/link")) == "hostname")

        // A VM on the template blocks its removal.
        do {
            let opened = try Store(path: store)
            _ = try opened.provisionVM(name: "web1", template: "base")
        }
        let blocked = try runTemplateTool(["rm", "base", "--store", store])
        #expect(blocked.status == 4)
        #expect(blocked.stderr.contains("used by 1 VM(s) (web1)"))
        try Store(path: store).removeVM(named: "web1")
        let removed = try runTemplateTool(["rm", "base", "--store", store, "--json"])
        #expect(removed.status == 0, "\(removed.stderr)")
        let removal = try #require(try parseJSON(removed.stdout) as? [String: Any])
        #expect(removal["blobsRemoved"] as? Int == 1)
        #expect((try parseJSON(try runTemplateTool(["list", "--store", store, "--json"]).stdout) as? [Any])?.isEmpty == true)
    }

    @Test func badInputGivesOneLineAndAnExitCode() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = area.sub("store")
        let noSource = try runTemplateTool(["create", "t", "--store", store, "--from", area.sub("missing")])
        #expect(noSource.status == 1)
        #expect(noSource.stderr == "error: source directory \(area.sub("missing")) does not exist\n")
        let badName = try runTemplateTool(["create", "../t", "--store", store, "--from", area.path])
        #expect(badName.status == 1)
        #expect(badName.stderr.hasPrefix("error: invalid template name"))
        let noRecipe = try runTemplateTool(["create", "no-such-recipe", "--store", store], environment: ["PVFS_RECIPE_PATH": area.path])
        #expect(noRecipe.status == 3)
        #expect(noRecipe.stderr.hasPrefix("error: no recipe named no-such-recipe"))
        for sub in ["create", "list", "show", "rm", "export"] {
            let help = try runTemplateTool([sub, "--help"])
            #expect(help.status == 0 && help.stdout.contains("--store"), "\(sub) --help")
        }
        #expect(try runTemplateTool(["--help"]).stdout.contains("Exit codes"))
    }

    @Test(.enabled(if: geteuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "needs root and setpriv"))
    func unreadableFileIsReported() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        chmod(area.path, 0o755)
        try FileManager.default.createDirectory(atPath: area.sub("src/etc"), withIntermediateDirectories: true)
        try write(area.sub("src/etc/open"), Array("readable".utf8))
        try write(area.sub("src/etc/shadow"), Array("secret".utf8), mode: 0o600)
        try FileManager.default.createDirectory(atPath: area.sub("store"), withIntermediateDirectories: true)
        chown(area.sub("store"), 65534, 65534)
        let result = try runTemplateTool(["create", "t", "--store", area.sub("store"), "--from", area.sub("src")], asUser: 65534)
        #expect(result.status == 1)
        #expect(result.stderr.hasSuffix("error: cannot read /etc/shadow: permission denied\n"), "\(result.stderr)")
        let listed = try runTemplateTool(["list", "--store", area.sub("store"), "--json"], asUser: 65534)
        #expect(listed.status == 0)
        #expect((try parseJSON(listed.stdout) as? [Any])?.isEmpty == true)
        let opened = try Store(path: area.sub("store"))
        #expect(try CatalogSQL(opened.catalog).read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM template") } == 0)
        #expect(try opened.temporaryDirectory.rawDirectoryEntries().isEmpty)
    }

    /// kill -9 in the middle of an ingest: the template is never listed, the next command
    /// removes its rows, staging and blobs, and the catalog stays consistent.
    @Test(.tags(.slow), .slowTestsOnly) func killedIngestIsCleanedUpByTheNextCommand() throws {
        let area = try TemporaryDirectory("pvfs-command-test")
        let store = area.sub("store")
        try makeGeneratedTree(at: area.sub("src"), files: 3000, size: 16 * 1024)
        _ = try runTemplateTool(["list", "--store", store])

        let process = Process()
        process.executableURL = URL(fileURLWithPath: try builtProduct("pvfs-template"))
        // Small batches and one thread: many publications, each with its syncfs and commit.
        process.arguments = ["create", "big", "--store", store, "--from", area.sub("src"), "--batch-files", "25", "--jobs", "1", "--quiet"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Kill it once some batches are committed, with more to come.
        let opened = try Store(path: store)
        var published = 0
        let deadline = Date().addingTimeInterval(60)
        while process.isRunning && Date() < deadline {
            published = (try? CatalogSQL(opened.catalog).read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM blob") ?? 0 }) ?? 0
            if published >= 200 { break }
            usleep(2000)
        }
        try #require(process.isRunning, "the ingest finished before it could be killed")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal)

        // What the killed process left: a building template (not listed), its staging area.
        #expect(try CatalogSQL(opened.catalog).read { db in try String.fetchOne(db, sql: "SELECT state FROM template WHERE name = 'big'") } == "building")
        #expect(try opened.listTemplates().isEmpty)
        #expect(try opened.temporaryDirectory.rawDirectoryEntries().count == 2)

        // Any command cleans up.
        let listed = try runTemplateTool(["list", "--store", store, "--json"])
        #expect(listed.status == 0)
        #expect((try parseJSON(listed.stdout) as? [Any])?.isEmpty == true)
        let (integrity, foreignKeyProblems, rows) = try CatalogSQL(opened.catalog).read { db -> (String?, Int, [String: Int]) in
            var rows: [String: Int] = [:]
            for table in ["template", "template_inode", "template_dirent", "template_xattr", "blob"] {
                rows[table] = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? -1
            }
            return (try String.fetchOne(db, sql: "PRAGMA integrity_check"), try Row.fetchAll(db, sql: "PRAGMA foreign_key_check").count, rows)
        }
        #expect(integrity == "ok")
        #expect(foreignKeyProblems == 0)
        for (table, count) in rows { #expect(count == 0, "\(table) is not empty") }
        var blobFiles = 0
        for shard in try opened.blobsDirectory.rawDirectoryEntries() {
            let fd = try FileDescriptor.open(at: opened.blobsDirectory, shard.name, [.directory, .readOnly])
            blobFiles += try fd.rawDirectoryEntries().count
            fd.closeQuietly()
        }
        #expect(blobFiles == 0, "orphan blobs left")
        #expect(try opened.temporaryDirectory.rawDirectoryEntries().isEmpty)

        // And the same ingest then succeeds.
        let retried = try runTemplateTool(["create", "big", "--store", store, "--from", area.sub("src"), "--json"])
        #expect(retried.status == 0, "\(retried.stderr)")
        #expect(try opened.listTemplates().map(\.name) == ["big"])
        #expect(try CatalogSQL(opened.catalog).read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM blob") } == 3000)
    }
}
