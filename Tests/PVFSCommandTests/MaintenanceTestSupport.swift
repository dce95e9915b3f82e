import Foundation
import Glibc
import PVFSEngine
import PVFSStore
import PVFSSystem

/// Runs a built product (pvfs, pvfs-vm, pvfs-template, pvfs-bench-writer) and waits for it.
func runTool(_ name: String, _ arguments: [String]) throws -> CommandResult {
    collectOutput(of: try startTool(name, arguments))
}

/// Starts a built product with its output captured in pipes.
func startTool(_ name: String, _ arguments: [String]) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try builtProduct(name))
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env.removeValue(forKey: "PVFS_STORE")
    process.environment = env
    process.standardOutput = Pipe()
    process.standardError = Pipe()
    try process.run()
    return process
}

/// Runs a tool and fails unless it exits 0.
@discardableResult
func mustRun(_ name: String, _ arguments: [String]) throws -> CommandResult {
    let result = try runTool(name, arguments)
    guard result.status == 0 else {
        throw TestSupportError("\(name) \(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)\(result.stdout)")
    }
    return result
}

/// What pvfs-bench-writer writes as file `n` for `seed` (the same generator).
func benchContent(seed: UInt64, file n: Int, bytes: Int) -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: bytes)
    var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(n) &* 0xBF58_476D_1CE4_E5B9
    for i in stride(from: 0, to: bytes, by: 8) {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        var word = state
        for j in 0..<min(8, bytes - i) { buffer[i + j] = UInt8(truncatingIfNeeded: word >> 24); word >>= 8 }
    }
    return buffer
}

/// A tree of files with content from `seed` (unlike makeGeneratedTree, different per seed).
func makeSeededTree(at root: String, files: Int, size: Int, seed: UInt64) throws {
    for d in 0..<8 { try FileManager.default.createDirectory(atPath: "\(root)/d\(d)", withIntermediateDirectories: true) }
    for f in 0..<files {
        try write("\(root)/d\(f % 8)/f\(f)", benchContent(seed: seed, file: f, bytes: size))
    }
}

/// Opens a VM in this process and runs `body` on a view of it (the VM must not be held elsewhere).
func withVM<T>(_ store: Store, _ name: String, _ body: (VMView) throws -> T) throws -> T {
    let volume = try Volume.open(store: store, vmName: name)
    defer { try? volume.close() }
    return try body(VMView(volume: volume, policy: SessionPolicy(side: .host), sessionID: 1))
}
