// Writes a seed corpus for the FUSE codec fuzzer: one request of every opcode Linux's FUSE and
// virtiofs clients send (INIT as Linux 6.1's virtiofs offers it), and a few replies. Compiled
// with the codec sources by run-fuse-decoder-fuzz.sh.

import Glibc

@main
struct FuseSeeds {
    static func main() {
        let directory = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "corpus"
        let name: [UInt8] = Array("name".utf8)
        let lock = FuseFileLock(start: 0, end: UInt64(Int64.max), type: 1, pid: 9)
        var setattr = FuseSetattrIn()
        setattr.valid = 0x1ff
        setattr.size = 4096
        let requests: [FuseRequest] = [
            .initialise(FuseInitIn(major: 7, minor: 38, maxReadahead: 131072, flags: FuseInitFlags(rawValue: 0x0000_000b_7bff_fffb))),
            .destroy, .lookup(name: name), .forget(count: 1),
            .batchForget([FuseForgetOne(nodeID: 5, count: 1), FuseForgetOne(nodeID: 6, count: 2)]),
            .getattr(flags: 1, handle: 3), .setattr(setattr), .readlink,
            .symlink(name: name, target: Array("../target".utf8)),
            .mknod(mode: 0o20644, rdev: 0x103, umask: 0o22, name: name), .mkdir(mode: 0o755, umask: 0o22, name: name),
            .unlink(name: name), .rmdir(name: name),
            .rename(newParent: 2, flags: 0, name: name, newName: name, version2: false),
            .rename(newParent: 2, flags: 1, name: name, newName: name, version2: true),
            .link(node: 4, name: name), .open(flags: 2, openFlags: 0), .opendir(flags: 0, openFlags: 0),
            .read(FuseReadIn(handle: 1, offset: 0, size: 131072)),
            .write(FuseWriteIn(handle: 1, offset: 0, size: 0), dataOffset: 0),
            .statfs, .release(FuseReleaseIn(handle: 1, releaseFlags: 2, lockOwner: 7)), .releasedir(FuseReleaseIn(handle: 1)),
            .fsync(handle: 1, flags: 1), .fsyncdir(handle: 1, flags: 0),
            .setxattr(flags: 1, setxattrFlags: 1, name: Array("user.x".utf8), value: [1, 2, 3]),
            .getxattr(size: 64, name: Array("user.x".utf8)), .listxattr(size: 0), .removexattr(name: Array("user.x".utf8)),
            .flush(handle: 1, lockOwner: 7),
            .readdir(FuseReadIn(handle: 1, offset: 0, size: 4096)), .readdirplus(FuseReadIn(handle: 1, offset: 5, size: 4096)),
            .getlk(FuseLockIn(handle: 1, owner: 7, lock: lock)), .setlk(FuseLockIn(handle: 1, owner: 7, lock: lock), wait: false),
            .setlk(FuseLockIn(handle: 1, owner: 7, lock: lock, lockFlags: 1), wait: true),
            .access(mask: 4), .create(FuseCreateIn(flags: 0o102, mode: 0o100644, umask: 0o22), name: name),
            .interrupt(unique: 3), .fallocate(FuseFallocateIn(handle: 1, offset: 0, length: 4096, mode: 0)),
            .lseek(handle: 1, offset: 0, whence: 3),
            .copyFileRange(FuseCopyFileRangeIn(handleIn: 1, offsetIn: 0, nodeOut: 5, handleOut: 2, offsetOut: 0, length: 100)),
            .syncfs,
        ]
        var seeds: [[UInt8]] = []
        for (i, request) in requests.enumerated() {
            seeds.append(request.encode(unique: UInt64(i + 1), nodeID: 1, uid: 1000, gid: 1000, pid: 42, data: [1, 2, 3, 4],
                                        options: FuseDecodeOptions(extendedSetxattr: i % 2 == 0)))
        }
        var entry = FuseEntryOut()
        entry.nodeID = 5
        entry.attr.mode = 0o100644
        var w = FuseWriter()
        entry.encode(into: &w)
        seeds.append(w.bytes)
        w = FuseWriter()
        FuseInitOut().encode(into: &w)
        seeds.append(w.bytes)
        w = FuseWriter()
        FuseDirent(ino: 5, offset: 9, type: 8, name: name).encode(into: &w)
        seeds.append(w.bytes)
        for (i, seed) in seeds.enumerated() {
            let path = "\(directory)/seed-\(i)"
            guard let f = fopen(path, "wb") else { continue }
            _ = seed.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
        }
    }
}
