import Foundation
import Glibc
import PVFSEngineTestSupport
import PVFSSystem
import SystemPackage

/// The path of a product built next to this test bundle (.build/<triple>/debug/<name>).
func builtProduct(_ name: String) throws -> String {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var candidates = [exe.deletingLastPathComponent().appendingPathComponent(name).path]
    // On macOS the tests run inside an .xctest bundle: the products are beside the bundle.
    let bundle = Bundle.main.bundleURL
    candidates.append(bundle.deletingLastPathComponent().appendingPathComponent(name).path)
    for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate) {
        return candidate
    }
    throw TestSupportError("\(name) is not built next to the tests (looked at \(candidates.joined(separator: ", "))); run swift build first")
}

struct TestSupportError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The outcome of running a command.
struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `pvfs-template` with arguments and waits for it.
func runTemplateTool(_ arguments: [String], environment: [String: String] = [:], asUser: UInt32? = nil,
                     currentDirectory: String? = nil) throws -> CommandResult {
    var executable = try builtProduct("pvfs-template")
    var args = arguments
    if let asUser {
        args = ["--reuid=\(asUser)", "--regid=\(asUser)", "--clear-groups", executable] + args
        executable = "/usr/bin/setpriv"
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = args
    var env = ProcessInfo.processInfo.environment
    env.removeValue(forKey: "PVFS_STORE")
    for (k, v) in environment { env[k] = v }
    process.environment = env
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    process.standardOutput = Pipe()
    process.standardError = Pipe()
    try process.run()
    return collectOutput(of: process)
}

/// Reads a started process's stdout and stderr pipes to the end, then waits for it (reading
/// both before waiting, so a chatty child never blocks on a full pipe).
func collectOutput(of process: Process) -> CommandResult {
    let out = process.standardOutput as! Pipe, err = process.standardError as! Pipe
    let group = DispatchGroup()
    nonisolated(unsafe) var outData = Data(), errData = Data()
    group.enter()
    DispatchQueue.global().async { outData = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    errData = err.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
}

func write(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else { throw TestSupportError("cannot create \(path)") }
    chmod(path, mode)
}

/// A tree of `files` files of `size` pseudo-random bytes each, in 20 directories.
func makeGeneratedTree(at root: String, files: Int, size: Int) throws {
    var state: UInt64 = 0x1234_5678
    for d in 0..<20 { try FileManager.default.createDirectory(atPath: "\(root)/d\(d)", withIntermediateDirectories: true) }
    var buffer = [UInt8](repeating: 0, count: size)
    for f in 0..<files {
        for i in stride(from: 0, to: size, by: 8) {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            var word = state
            for j in 0..<min(8, size - i) { buffer[i + j] = UInt8(truncatingIfNeeded: word); word >>= 8 }
        }
        try write("\(root)/d\(f % 20)/f\(f)", buffer)
    }
}

/// JSON output parsed as a dictionary or array.
func parseJSON(_ text: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(text.utf8))
}

/// The directory of this package's sources (for templates/).
let packageRoot: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path
