// pvfs-bench-writer: writes files into a VM through the engine (the same path a guest's writes
// take), for bench/dedup.sh. Not installed; built with the package.
//
//     pvfs-bench-writer STORE VM FILES BYTES [SEED [DIRECTORY]]
//
// Creates /DIRECTORY/f<n> (n < FILES; DIRECTORY defaults to "bench"), each BYTES of pseudo-random
// content determined by SEED and n, so that VMs given the same seed write identical files.
import Foundation
import Glibc
import PVFSEngine
import PVFSStore

let args = CommandLine.arguments
guard args.count >= 5, let files = Int(args[3]), let bytes = Int(args[4]) else {
    FileHandle.standardError.write(Data("usage: pvfs-bench-writer STORE VM FILES BYTES [SEED [DIRECTORY]]\n".utf8))
    exit(2)
}
let seed = args.count > 5 ? UInt64(args[5]) ?? 1 : 1
let directoryName = args.count > 6 ? args[6] : "bench"
do {
    let store = try Store(path: args[1], create: false)
    let volume = try Volume.open(store: store, vmName: args[2])
    let view = VMView(volume: volume, policy: SessionPolicy(side: .host, readOnly: false), sessionID: 1)
    let root = try view.getAttributes(1).inode
    let dir: InodeNumber
    if let existing = try? view.lookup(root, Array(directoryName.utf8), as: .root) {
        dir = existing.inode
    } else {
        dir = try view.makeDirectory(root, Array(directoryName.utf8), mode: 0o755, as: .root).inode
    }
    var buffer = [UInt8](repeating: 0, count: bytes)
    for n in 0..<files {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(n) &* 0xBF58_476D_1CE4_E5B9
        for i in stride(from: 0, to: bytes, by: 8) {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            var word = state
            for j in 0..<min(8, bytes - i) { buffer[i + j] = UInt8(truncatingIfNeeded: word >> 24); word >>= 8 }
        }
        let (_, handle) = try view.create(dir, Array("f\(n)".utf8), mode: 0o644, flags: O_WRONLY, as: .root)
        var offset = 0
        while offset < bytes {
            let chunk = min(1 << 20, bytes - offset)
            offset += try buffer[offset..<(offset + chunk)].withUnsafeBytes { try view.write(handle, offset: Int64(offset), from: $0, as: .root) }
        }
        view.release(handle)
    }
    try volume.close()
} catch {
    FileHandle.standardError.write(Data("pvfs-bench-writer: \(error)\n".utf8))
    exit(1)
}
