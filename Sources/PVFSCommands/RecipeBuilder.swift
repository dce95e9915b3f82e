import Foundation
import Glibc
import Logging
import PVFSStore

/// Where `pvfs-template create NAME` (without --from) looks for `NAME.recipe`, in order.
public func recipeSearchPath(explicitDirectory: String?) -> [String] {
    ShippedFiles.recipeSearchPath(explicitDirectory: explicitDirectory)
}

/// Finds and parses a recipe: `spec` is a file path (contains '/' or ends in .recipe) or a
/// recipe name looked up along `searchPath`.
public func loadRecipe(_ spec: String, searchPath: [String]) throws -> (recipe: TemplateRecipe, file: String) {
    var candidates: [String] = []
    if spec.contains("/") || spec.hasSuffix(".recipe") {
        candidates = [spec]
    } else {
        candidates = searchPath.map { $0 + "/" + spec + ".recipe" }
    }
    for file in candidates where FileManager.default.fileExists(atPath: file) {
        let text: String
        do {
            text = try String(contentsOfFile: file, encoding: .utf8)
        } catch {
            throw CommandFailure("cannot read recipe \(file): \(error.localizedDescription)")
        }
        let name = URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent
        do {
            return (try TemplateRecipe.parse(text, name: file), URL(fileURLWithPath: file).standardizedFileURL.path)
        } catch {
            _ = name
            throw CommandFailure(error.description)
        }
    }
    if candidates.count == 1 {
        throw CommandFailure("no recipe file \(spec)", exitCode: PVFSExitCode.notFound)
    }
    throw CommandFailure("no recipe named \(spec) (looked for \(spec).recipe in \(searchPath.joined(separator: ", "))); "
                         + "use --from DIR to ingest a directory", exitCode: PVFSExitCode.notFound)
}

/// Builds a recipe's tree with debootstrap and runs its hooks.
public struct RecipeBuilder {
    public var recipe: TemplateRecipe
    /// The directory the recipe file is in: hooks are relative to it.
    public var recipeDirectory: String
    public var logger: Logger
    /// Stream debootstrap's output to stderr instead of keeping it for error messages.
    public var verbose = false

    public init(recipe: TemplateRecipe, recipeDirectory: String, logger: Logger) {
        self.recipe = recipe
        self.recipeDirectory = recipeDirectory
        self.logger = logger
    }

    public static func findExecutable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in (path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]) {
            let candidate = dir + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// Checks what the build needs before anything starts: debootstrap, root, the hooks.
    public func preflight() throws {
        guard Self.findExecutable("debootstrap") != nil else {
            throw CommandFailure("debootstrap is not installed (apt-get install debootstrap)")
        }
        guard geteuid() == 0 else {
            throw CommandFailure("building a template from a recipe needs root (debootstrap creates device nodes and owners)")
        }
        for hook in recipe.hooks {
            let path = recipeDirectory + "/" + hook
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
                throw CommandFailure("\(recipe.name): hook \(hook) not found (looked for \(path))")
            }
        }
    }

    /// Runs debootstrap into `root` (an empty directory), then the hooks in order.
    public func build(into root: String) throws {
        try preflight()
        let debootstrap = Self.findExecutable("debootstrap")!
        let arguments = recipe.debootstrapArguments(target: root)
        logger.info("debootstrap \(arguments.joined(separator: " "))")
        try run(debootstrap, arguments, what: "debootstrap", workingDirectory: nil, environment: [:])
        for hook in recipe.hooks {
            logger.info("hook \(hook)")
            try run("/bin/sh", [recipeDirectory + "/" + hook, root], what: "hook \(hook)", workingDirectory: root,
                    environment: ["PVFS_ROOT": root, "PVFS_RECIPE": recipe.name, "PVFS_SUITE": recipe.suite])
        }
    }

    /// Runs a program to completion; its output goes to stderr when verbose, otherwise the last
    /// lines are kept for the error message.
    private func run(_ executable: String, _ arguments: [String], what: String, workingDirectory: String?,
                     environment: [String: String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let workingDirectory { process.currentDirectoryURL = URL(fileURLWithPath: workingDirectory) }
        var env = ProcessInfo.processInfo.environment
        env["DEBIAN_FRONTEND"] = "noninteractive"
        env["LC_ALL"] = "C.UTF-8"
        for (key, value) in environment { env[key] = value }
        process.environment = env
        process.standardInput = FileHandle.nullDevice
        let output = Pipe()
        let tail = OutputTail(lines: 30)
        if verbose {
            process.standardOutput = FileHandle.standardError
            process.standardError = FileHandle.standardError
        } else {
            process.standardOutput = output
            process.standardError = output
            output.fileHandleForReading.readabilityHandler = { handle in
                let data = handle.availableData
                if !data.isEmpty { tail.append(data) }
            }
        }
        do {
            try process.run()
        } catch {
            throw CommandFailure("cannot run \(executable): \(error.localizedDescription)")
        }
        process.waitUntilExit()
        output.fileHandleForReading.readabilityHandler = nil
        if !verbose { tail.append(output.fileHandleForReading.readDataToEndOfFile()) }
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let how = process.terminationReason == .exit ? "exit status \(process.terminationStatus)" : "signal \(process.terminationStatus)"
            let lines = tail.text
            throw CommandFailure("\(what) failed (\(how))" + (lines.isEmpty ? "" : "; its last output:\n" + lines))
        }
    }
}

/// The last lines of a stream, kept for error messages.
private final class OutputTail: @unchecked Sendable {
    private let lock = NSLock()
    private var buffer = Data()
    private let limit: Int

    init(lines: Int) { limit = lines }

    func append(_ data: Data) {
        lock.lock()
        defer { lock.unlock() }
        buffer.append(data)
        if buffer.count > 64 * 1024 { buffer = buffer.suffix(32 * 1024) }
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        let lines = String(decoding: buffer, as: UTF8.self).split(separator: "\n").suffix(limit)
        return lines.map { "  " + $0 }.joined(separator: "\n")
    }
}
