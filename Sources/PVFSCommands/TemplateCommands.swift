import ArgumentParser
import Dispatch
import Foundation
import Glibc
import Logging
import PVFSImage
import PVFSStore
import PVFSSystem

// `pvfs-template`: templates are read-only root trees in the store, named, ingested once and
// shared by every VM provisioned from them (docs/templates.md).

func isoDate(nanoseconds: Int64) -> String {
    ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(nanoseconds) / 1e9))
}

/// Turns SIGINT and SIGTERM into a cancellation for as long as the returned sources live.
func installCancellationHandlers(_ cancellation: IngestCancellation) -> [DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { number in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler {
            FileHandle.standardError.write(Data("\ninterrupted; removing the unfinished template\n".utf8))
            cancellation.cancel()
        }
        source.resume()
        return source
    }
}

public struct CreateTemplate: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a template from a directory tree (--from), a container image (--from-oci) or by building a recipe.",
        discussion: """
            With --from DIR, ingests the tree at DIR: every regular file's content goes into the blob \
            store once (named by its SHA-256), everything else (directories, symlinks, hardlinks, devices, \
            fifos, sockets, owners, modes, times, xattrs incl. ACLs and capabilities) into the catalog. \
            Symlinks inside the tree are never followed. Directories that are mount points of other \
            filesystems are kept empty unless --cross-file-systems is given.

            With --from-oci PATH, imports a container image: an OCI image layout directory, an OCI \
            archive (podman oci-archive, docker save of Docker 25+) or a docker archive (docker save, \
            podman save, skopeo docker-archive), compressed or not. Its layers are applied in order \
            (whiteouts and opaque directories included), every digest is checked, and the image's \
            configuration is kept with the template (pvfs-template show). --platform and --image-ref \
            choose among several images. Nothing is fetched from a registry.

            Without --from or --from-oci, builds NAME.recipe (or --recipe) with debootstrap in the store's tmp/ and \
            ingests the result; see docs/templates.md for the recipe format. Recipes are looked up in \
            --recipe-dir, $PVFS_RECIPE_PATH, the source checkout's templates/ (for a binary built \
            there), /etc/pvfs/templates, <prefix>/share/pvfs/templates and /usr/share/pvfs/templates; \
            never in the current directory.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Argument(help: "The new template's name (letters, digits, '-', '_', '.').")
    public var name: String

    @Option(name: .long, help: ArgumentHelp("Ingest this directory tree.", valueName: "dir"))
    public var from: String?

    @Option(name: .customLong("from-oci"), help: ArgumentHelp("Import this container image: an OCI layout directory, an OCI archive or a docker archive.", valueName: "path"))
    public var fromOCI: String?

    @Option(name: .long, help: ArgumentHelp("With --from-oci: the image's platform, os/architecture[/variant] (default: the host's, e.g. linux/amd64).", valueName: "platform"))
    public var platform: String?

    @Option(name: .long, help: ArgumentHelp("With --from-oci: the image's reference name (an OCI index's ref.name annotation, a docker archive's tag).", valueName: "name"))
    public var imageRef: String?

    @Option(name: .long, help: ArgumentHelp("Build this recipe (a name or a .recipe file) instead of NAME.recipe.", valueName: "recipe"))
    public var recipe: String?

    @Option(name: .long, help: ArgumentHelp("Look for recipes in this directory first.", valueName: "dir"))
    public var recipeDir: String?

    /// Whether ingest descends into mount points of other filesystems.
    public enum FileSystemBoundary: String, EnumerableFlag {
        case oneFileSystem
        case crossFileSystems

        public static func help(for value: FileSystemBoundary) -> ArgumentHelp? {
            switch value {
            case .oneFileSystem: "Keep mount points of other filesystems as empty directories."
            case .crossFileSystems: "Descend into mount points of other filesystems."
            }
        }
    }

    @Flag public var fileSystems: FileSystemBoundary = .oneFileSystem

    @Flag(name: .long, help: "Copy file content even where the filesystems could share it (FICLONE).")
    public var noReflink = false

    @Option(name: .long, help: "Threads hashing and copying file content (default: the number of CPUs, at least 2).")
    public var jobs: Int?

    @Option(name: .long, help: "Files per publication batch: one syncfs and catalog commit each (default: 2000).")
    public var batchFiles: Int?

    public init() {}

    public func validate() throws {
        if [from != nil, recipe != nil, fromOCI != nil].filter({ $0 }).count > 1 {
            throw ValidationError("--from, --from-oci and --recipe exclude each other")
        }
        if fromOCI == nil && (platform != nil || imageRef != nil) { throw ValidationError("--platform and --image-ref go with --from-oci") }
        if let jobs, jobs < 1 || jobs > 256 { throw ValidationError("--jobs must be between 1 and 256") }
        if let batchFiles, batchFiles < 1 || batchFiles > 100_000 { throw ValidationError("--batch-files must be between 1 and 100000") }
    }

    public func run() throws {
        let logger = logging.makeLogger("pvfs.template")
        try runCommand {
            try Store.validateName(name, what: "template")
            // Parse the recipe before touching the store: a typo fails fast.
            var build: (RecipeBuilder, String)?
            if from == nil && fromOCI == nil {
                let (parsed, file) = try loadRecipe(recipe ?? name, searchPath: recipeSearchPath(explicitDirectory: recipeDir))
                var builder = RecipeBuilder(recipe: parsed, recipeDirectory: URL(fileURLWithPath: file).deletingLastPathComponent().path,
                                            logger: logger)
                builder.verbose = logging.verbose
                try builder.preflight()
                build = (builder, file)
            }
            let store = try storeOptions.open(logger: logger)
            if try store.template(named: name) != nil {
                throw PVFSError(.store, "a template named \(name) exists already", errno: .fileExists)
            }
            let cancellation = IngestCancellation()
            let signalSources = installCancellationHandlers(cancellation)
            defer { withExtendedLifetime(signalSources) {} }

            var options = IngestOptions()
            options.oneFileSystem = fileSystems == .oneFileSystem
            options.reflink = !noReflink
            if let jobs { options.jobs = jobs }
            if let batchFiles { options.batchFiles = batchFiles }

            if let fromOCI {
                try importImage(fromOCI, into: store, options: options, cancellation: cancellation)
                return
            }

            var scratch: ScratchDirectory?
            var sourcePath = from ?? ""
            let started = monotonicNanoseconds()
            var buildSeconds: Double?
            if let (builder, file) = build {
                let directory = try ScratchDirectory(store: store, kind: "recipe")
                scratch = directory
                sourcePath = directory.path
                if !logging.quiet {
                    let extras = builder.recipe.packages.isEmpty ? "" : " + \(builder.recipe.packages.count) packages"
                    FileHandle.standardError.write(Data("building \(name) from \(file): debootstrap \(builder.recipe.suite) (\(builder.recipe.variant)\(extras))...\n".utf8))
                }
                do {
                    try builder.build(into: directory.path)
                } catch {
                    try? directory.remove()
                    throw error
                }
                if cancellation.isCancelled {
                    try? directory.remove()
                    throw CommandFailure("interrupted")
                }
                buildSeconds = Double(monotonicNanoseconds() - started) / 1e9
                options.sourceLabel = "recipe:\(file) (\(builder.recipe.suite), \(builder.recipe.variant))"
            }
            defer { try? scratch?.remove() }

            let bar = ProgressBar(title: "ingesting \(name)", total: 0, enabled: isatty(STDERR_FILENO) == 1 && !logging.quiet,
                                  format: formatBytes)
            let progress = IngestProgress(scanned: { _, _, bytes in bar.setTotal(bytes) }, staged: { bar.advance(by: $0) })
            let report: IngestReport
            do {
                report = try store.createTemplate(name: name, fromDirectory: sourcePath, options: options, progress: progress,
                                                  cancellation: cancellation)
            } catch {
                bar.finish()
                throw error
            }
            bar.finish()
            try output.emit(CreateResult(template: report, buildSeconds: buildSeconds)) {
                print(Self.summary(report, buildSeconds: buildSeconds))
            }
        }
    }

    struct CreateResult: Encodable {
        var template: IngestReport
        var buildSeconds: Double?
        var image: ImageDetails?
    }

    private func importImage(_ path: String, into store: Store, options: IngestOptions, cancellation: IngestCancellation) throws {
        let bar = ProgressBar(title: "importing \(name)", total: 0, enabled: isatty(STDERR_FILENO) == 1 && !logging.quiet, format: formatBytes)
        let imported: ImageImport
        do {
            imported = try store.createTemplate(name: name, fromImage: path, selection: ImageSelection(platform: platform, reference: imageRef),
                                                options: options, progress: { bytes, total in
                                                    bar.setTotal(total)
                                                    bar.advance(by: bytes)
                                                }, cancellation: cancellation)
        } catch {
            bar.finish()
            throw error
        }
        bar.finish()
        let details = ImageDetails(imported.image)
        try output.emit(CreateResult(template: imported.template, buildSeconds: nil, image: details)) {
            print(Self.summary(imported.template, buildSeconds: nil))
            print("  image: \(details.format), \(details.platform), \(details.layers) layer\(details.layers == 1 ? "" : "s"), "
                  + "\(details.manifestDigest ?? details.configDigest)")
        }
    }

    static func summary(_ r: IngestReport, buildSeconds: Double?) -> String {
        var lines = ["created template \(r.name): \(r.entries) entries, \(r.regularFiles) files, \(formatBytes(r.logicalBytes)) in "
                     + String(format: "%.2f s", r.seconds) + (buildSeconds.map { String(format: " (after %.0f s of building)", $0) } ?? "")]
        var kinds = ["\(r.directories) directories", "\(r.symlinks) symlinks"]
        if r.extraHardlinks > 0 { kinds.append("\(r.extraHardlinks) extra hardlinks") }
        if r.devices > 0 { kinds.append("\(r.devices) devices") }
        if r.fifos > 0 { kinds.append("\(r.fifos) fifos") }
        if r.sockets > 0 { kinds.append("\(r.sockets) sockets") }
        if r.xattrs > 0 { kinds.append("\(r.xattrs) xattrs") }
        lines.append("  " + kinds.joined(separator: ", "))
        lines.append("  content: \(r.newBlobs) new blobs (\(formatBytes(r.newBlobBytes)), \(r.copyMethod.rawValue)), "
                     + "\(r.reusedContent) files reused content already stored")
        for mount in r.skippedMountPoints { lines.append("  kept mount point \(mount) empty (use --cross-file-systems to descend)") }
        return lines.joined(separator: "\n")
    }
}

public struct ListTemplates: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(commandName: "list", abstract: "List the ready templates.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    public init() {}

    struct Item: Encodable {
        var name: String
        var source: String
        var created: String
        var entries: Int64
        var logicalBytes: Int64
    }

    public func run() throws {
        try withStore(log: "pvfs.template") { store, logger in
            let templates = try store.listTemplates()
            let items = templates.map {
                Item(name: $0.name, source: $0.source, created: isoDate(nanoseconds: $0.createdNanoseconds), entries: $0.entryCount,
                     logicalBytes: $0.logicalBytes)
            }
            try output.emit(items) {
                if items.isEmpty {
                    print("no templates (create one with: pvfs-template create NAME --from DIR)")
                    return
                }
                let width = max(4, items.map(\.name.count).max() ?? 0)
                print("NAME".padding(toLength: width, withPad: " ", startingAt: 0) + "  ENTRIES       SIZE  CREATED               SOURCE")
                for item in items {
                    print(item.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                          + String(item.entries).leftPad(7) + "  " + formatBytes(item.logicalBytes).leftPad(9) + "  "
                          + item.created.padding(toLength: 20, withPad: " ", startingAt: 0) + "  " + item.source)
                }
            }
        }
    }
}

extension String {
    func leftPad(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}

public struct ShowTemplate: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Show a template: entries, sizes, blobs, what it shares with other templates, its VMs.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Argument(help: "The template's name.")
    public var name: String

    public init() {}

    struct Details: Encodable {
        var name: String
        var source: String
        var created: String
        var entries: Int64
        var inodes: Int64
        var logicalBytes: Int64
        var blobCount: Int64
        var blobBytes: Int64
        var allocatedBytes: Int64
        var sharedBlobCount: Int64
        var sharedBytes: Int64
        var vms: [String]
        var image: ImageDetails?
    }

    public func run() throws {
        try withStore(log: "pvfs.template") { store, logger in
            let t = try store.requireTemplate(named: name)
            let u = try store.templateUsage(t)
            let details = Details(name: t.name, source: t.source, created: isoDate(nanoseconds: t.createdNanoseconds), entries: t.entryCount,
                                  inodes: u.inodes, logicalBytes: t.logicalBytes, blobCount: u.blobCount, blobBytes: u.blobBytes,
                                  allocatedBytes: u.allocatedBytes, sharedBlobCount: u.sharedBlobCount, sharedBytes: u.sharedBytes, vms: u.vms,
                                  image: try store.templateImage(t).map(ImageDetails.init))
            try output.emit(details) {
                print("""
                    template \(t.name)
                      source:         \(t.source)
                      created:        \(details.created)
                      entries:        \(t.entryCount) (\(u.inodes) inodes)
                      logical size:   \(formatBytes(t.logicalBytes))
                      blobs:          \(u.blobCount) (\(formatBytes(u.blobBytes)), \(formatBytes(u.allocatedBytes)) on disk)
                      shared:         \(u.sharedBlobCount) blobs, \(formatBytes(u.sharedBytes)) also used by other templates
                      VMs:            \(u.vms.isEmpty ? "none" : u.vms.joined(separator: ", "))
                    """)
                if let image = details.image { print(image.text) }
            }
        }
    }
}

public struct RemoveTemplate: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove a template and the blobs only it used (refused while a VM uses it).",
        aliases: ["remove"])

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Argument(help: "The template's name.")
    public var name: String

    public init() {}

    public func run() throws {
        try withStore(log: "pvfs.template") { store, logger in
            let removal = try store.removeTemplate(named: name)
            try output.emit(removal) {
                if removal.deferred {
                    print("removed template \(name); another process holds the blobs lock, so its blobs are freed by a later command")
                } else {
                    print("removed template \(name), freed \(removal.blobsRemoved) blobs (\(formatBytes(removal.bytesRemoved)))")
                }
            }
        }
    }
}

public struct ExportTemplate: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a template out as a real directory tree, exactly (content, holes, owners, modes, times, xattrs, hardlinks, devices).",
        discussion: "DIR is created, or must be an empty directory (it takes the template root's attributes). Needs root.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Argument(help: "The template's name.")
    public var name: String

    @Argument(help: ArgumentHelp("Where to write the tree.", valueName: "dir"))
    public var directory: String

    @Option(name: .long, help: "Threads copying file content (default: the number of CPUs, at least 2).")
    public var jobs: Int?

    public init() {}

    public func run() throws {
        try withStore(log: "pvfs.template") { store, logger in
            let template = try store.requireTemplate(named: name)
            let bar = ProgressBar(title: "exporting \(name)", total: template.logicalBytes,
                                  enabled: isatty(STDERR_FILENO) == 1 && !logging.quiet, format: formatBytes)
            let report: ExportReport
            do {
                report = try store.exportTemplate(named: name, to: directory, jobs: jobs ?? max(2, ProcessInfo.processInfo.activeProcessorCount),
                                                  progress: { bar.advance(by: $0) })
            } catch {
                bar.finish()
                throw error
            }
            bar.finish()
            try output.emit(report) {
                print("exported template \(name) to \(report.destination): \(report.entries) entries, \(formatBytes(report.bytes)) ("
                      + "\(report.copyMethod)) in " + String(format: "%.2f s", report.seconds))
            }
        }
    }
}

/// The root of `pvfs-template`.
public struct TemplateTool: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pvfs-template",
        abstract: "Create, inspect, export and remove the templates VM roots are provisioned from.",
        discussion: """
            Exit codes: 0 success, 1 failure, 3 no such template, 4 conflict (exists already, in use, \
            being created by another process).
            """,
        version: pvfsVersion,
        subcommands: [CreateTemplate.self, ListTemplates.self, ShowTemplate.self, RemoveTemplate.self, ExportTemplate.self])

    public init() {}
}

/// A template's image as `create --from-oci` and `show` report it.
struct ImageDetails: Encodable {
    var format: String
    var manifestDigest: String?
    var configDigest: String
    var platform: String
    var layers: Int
    var settings: ImageConfigSummary?
    /// The image configuration, verbatim.
    var config: JSONValue?

    init(_ record: TemplateImageRecord) {
        format = record.format
        manifestDigest = record.manifestDigest
        configDigest = record.configDigest
        platform = record.platform
        layers = record.layers
        settings = ImageConfigSummary(config: record.config)
        config = try? JSONValue(bytes: record.config)
    }

    var text: String {
        var lines = ["  image:          \(format) \(manifestDigest ?? configDigest)",
                     "  platform:       \(platform), \(layers) layer\(layers == 1 ? "" : "s")"]
        if manifestDigest != nil { lines.append("  config:         \(configDigest)") }
        guard let s = settings else { return lines.joined(separator: "\n") }
        func quoted(_ items: [String]) -> String {
            items.map { $0.contains(" ") || $0.isEmpty ? "\"\($0)\"" : $0 }.joined(separator: " ")
        }
        if let created = s.created { lines.append("  image created:  \(created)" + (s.author.map { " by \($0)" } ?? "")) }
        if let entrypoint = s.entrypoint, !entrypoint.isEmpty { lines.append("  entrypoint:     \(quoted(entrypoint))") }
        if let cmd = s.cmd, !cmd.isEmpty { lines.append("  cmd:            \(quoted(cmd))") }
        if let user = s.user { lines.append("  user:           \(user)") }
        if let dir = s.workingDir { lines.append("  working dir:    \(dir)") }
        for (index, variable) in (s.env ?? []).enumerated() { lines.append((index == 0 ? "  env:            " : "                  ") + variable) }
        if let ports = s.exposedPorts, !ports.isEmpty { lines.append("  exposed ports:  \(ports.joined(separator: ", "))") }
        if let volumes = s.volumes, !volumes.isEmpty { lines.append("  volumes:        \(volumes.joined(separator: ", "))") }
        for (index, label) in (s.labels ?? [:]).sorted(by: { $0.key < $1.key }).enumerated() {
            lines.append((index == 0 ? "  labels:         " : "                  ") + "\(label.key)=\(label.value)")
        }
        if let signal = s.stopSignal { lines.append("  stop signal:    \(signal)") }
        if s.historyEntries > 0 { lines.append("  history:        \(s.historyEntries) entries") }
        return lines.joined(separator: "\n")
    }
}
