import ArgumentParser
import Foundation
import Logging
import PVFSImage
import PVFSStore
import PVFSSystem

/// `--store PATH`, falling back to $PVFS_STORE and then /var/lib/pvfs.
public struct StoreOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The pvfs store directory (default: $PVFS_STORE or /var/lib/pvfs).", valueName: "path"))
    public var store: String?

    public init() {}

    /// Always absolute: hooks, the daemon's control socket and mount tables see it from elsewhere.
    public var storePath: String {
        var path = Store.defaultPath
        if let store {
            path = store
        } else if let env = ProcessInfo.processInfo.environment["PVFS_STORE"], !env.isEmpty {
            path = env
        }
        if !path.hasPrefix("/") {
            path = FileManager.default.currentDirectoryPath + "/" + path
        }
        return (path as NSString).standardizingPath
    }

    /// Opens the store, creating its layout on first use, and finishes what killed processes
    /// left half done (interrupted ingests and template removals, abandoned recipe builds).
    public func open(logger: Logger) throws -> Store {
        let store = try Store(path: storePath, create: true, logger: logger)
        do {
            try store.cleanUpInterruptedIngests()
        } catch {
            logger.warning("cleanup of interrupted operations failed (the next command retries): \(error)")
        }
        return store
    }
}

/// `--json` for output that scripts read.
public struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print the result as JSON.")
    public var json = false

    public init() {}

    /// Prints `value` as JSON with --json, else what `text` prints.
    func emit(_ value: some Encodable, text: () throws -> Void) throws {
        if json {
            try printJSON(value)
        } else {
            try text()
        }
    }
}

/// `--verbose` / `--quiet` / `--log-level`.
public struct LoggingOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Log more (debug level).")
    public var verbose = false

    @Flag(name: .shortAndLong, help: "Log only errors.")
    public var quiet = false

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    public var logLevel: String?

    public init() {}

    public var level: Logger.Level {
        if let logLevel, let level = Logger.Level(rawValue: logLevel) { return level }
        if verbose { return .debug }
        if quiet { return .error }
        return .notice
    }

    /// Bootstraps swift-log once per process (stderr) and returns a logger for `label`.
    public func makeLogger(_ label: String) -> Logger {
        LoggingBootstrap.once(level: level)
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

enum LoggingBootstrap {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var done = false

    static func once(level: Logger.Level) {
        lock.lock()
        defer { lock.unlock() }
        guard !done else { return }
        done = true
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// Exit codes shared by every pvfs command (docs/cli.md lists them).
public enum PVFSExitCode {
    /// The operation failed (I/O error, bad input, refused).
    public static let failure = ExitCode(1)
    /// The named template, VM or object does not exist.
    public static let notFound = ExitCode(3)
    /// The object is in use or exists already (busy, name clash, served VM).
    public static let conflict = ExitCode(4)
    /// The store or its catalog is inconsistent (fsck findings).
    public static let inconsistent = ExitCode(5)
}

/// A failure a command reports to the user: a message on stderr and an exit code.
public struct CommandFailure: Error, CustomStringConvertible {
    public var message: String
    public var exitCode: ExitCode

    public init(_ message: String, exitCode: ExitCode = PVFSExitCode.failure) {
        self.message = message
        self.exitCode = exitCode
    }

    public var description: String { message }
}

/// Prints an Encodable as pretty, key-sorted JSON on stdout.
public func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let data = try encoder.encode(value)
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

/// Maps store errors to the exit codes of docs/cli.md.
func exitCode(for error: PVFSError) -> ExitCode {
    switch error.errno {
    case .noSuchFileOrDirectory: PVFSExitCode.notFound
    case .fileExists, .resourceBusy: PVFSExitCode.conflict
    default: PVFSExitCode.failure
    }
}

/// Runs a command body, reporting every failure as one line on stderr with an exit code from
/// PVFSExitCode (docs/cli.md); usage errors stay ArgumentParser's.
func runCommand(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as PVFSError where error.domain == .store {
        reportFailure(error.message)
        throw exitCode(for: error)
    } catch let error as PVFSError where error.domain == .sourceTree {
        reportFailure(error.message)
        throw PVFSExitCode.failure
    } catch let error as ImageError {
        reportFailure(error.message)
        throw error.errno == .noSuchFileOrDirectory ? PVFSExitCode.notFound : PVFSExitCode.failure
    } catch let failure as CommandFailure {
        reportFailure(failure.message)
        throw failure.exitCode
    } catch let error as ValidationError {
        throw error
    } catch let code as ExitCode {
        throw code
    } catch {
        reportFailure("\(error)")
        throw PVFSExitCode.failure
    }
}

private func reportFailure(_ message: String) {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
}

/// A command that works on a store: `--store` and the logging options.
protocol StoreCommand {
    var storeOptions: StoreOptions { get }
    var logging: LoggingOptions { get }
}

extension StoreCommand {
    /// The command prologue: a logger named `label`, the store opened (created on first use, or
    /// only an existing one), and failures reported as `runCommand` does.
    func withStore(log label: String, existing: Bool = false, _ body: (Store, Logger) throws -> Void) throws {
        let logger = logging.makeLogger(label)
        try runCommand {
            let store = existing ? try openExistingStore(storeOptions, logger: logger) : try storeOptions.open(logger: logger)
            try body(store, logger)
        }
    }

    /// `withStore` for a change to the catalog: a running daemon re-reads it, then the line `body`
    /// returns is printed.
    func changeStore(log label: String, _ body: (Store, Logger) throws -> String) throws {
        try withStore(log: label) { store, logger in
            let line = try body(store, logger)
            notifyDaemon(storeOptions.storePath, logger: logger)
            print(line)
        }
    }
}

/// Opens an existing store (maintenance commands never create one).
func openExistingStore(_ options: StoreOptions, logger: Logger) throws -> Store {
    guard FileManager.default.fileExists(atPath: options.storePath + "/" + StoreLayout.catalog) else {
        throw CommandFailure("\(options.storePath) is not a pvfs store (no \(StoreLayout.catalog)); give --store or set PVFS_STORE", exitCode: PVFSExitCode.notFound)
    }
    return try Store(path: options.storePath, create: false, logger: logger)
}
