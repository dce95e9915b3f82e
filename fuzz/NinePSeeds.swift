// Writes a seed corpus for the codec fuzzer: one valid message of every type, and a stream of
// several. Compiled with the codec sources by run-9p-decoder-fuzz.sh.

import Glibc

@main
struct NinePSeeds {
    static func main() {
        let directory = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "corpus"
        let name: [UInt8] = Array("name".utf8)
        let qid = NinePQid(type: 0x80, version: 7, path: 42)
        let requests: [NinePRequest] = [
            .version(msize: 8192, version: NineP.protocolVersion),
            .auth(afid: 1, uname: name, aname: name, uid: 0),
            .attach(fid: 0, afid: NineP.noFid, uname: [], aname: name, uid: 1000),
            .flush(oldTag: 3),
            .walk(fid: 0, newFid: 1, names: [name, Array("..".utf8)]),
            .lopen(fid: 1, flags: 2),
            .lcreate(fid: 1, name: name, flags: 0o102, mode: 0o644, gid: 0),
            .read(fid: 1, offset: 0, count: 4096),
            .write(fid: 1, offset: 0, data: [1, 2, 3][...]),
            .clunk(fid: 1), .remove(fid: 1), .statfs(fid: 0), .readlink(fid: 1),
            .symlink(fid: 0, name: name, target: name, gid: 0),
            .mknod(dfid: 0, name: name, mode: 0o20644, major: 1, minor: 3, gid: 0),
            .rename(fid: 1, dfid: 0, name: name),
            .getattr(fid: 1, mask: .all),
            .setattr(fid: 1, NinePSetattr(valid: [.mode, .size], mode: 0o600, size: 10)),
            .xattrwalk(fid: 1, newFid: 2, name: Array("user.x".utf8)),
            .xattrcreate(fid: 1, name: Array("user.x".utf8), size: 3, flags: 1),
            .readdir(fid: 1, offset: 0, count: 8192),
            .fsync(fid: 1, datasync: 1),
            .lock(fid: 1, NinePLock(type: 1, flags: 1, start: 0, length: 0, processID: 9, clientID: name)),
            .getlock(fid: 1, NinePGetlock(type: 2, start: 0, length: 10, processID: 9, clientID: name)),
            .link(dfid: 0, fid: 1, name: name),
            .mkdir(dfid: 0, name: name, mode: 0o755, gid: 0),
            .renameat(oldDirFid: 0, oldName: name, newDirFid: 0, newName: name),
            .unlinkat(dirFid: 0, name: name, flags: 0x200),
        ]
        let responses: [NinePResponse] = [
            .error(errno: 2), .version(msize: 8192, version: NineP.protocolVersion), .attach(qid: qid), .flush,
            .walk(qids: [qid, qid]), .lopen(qid: qid, iounit: 0), .read(data: [1, 2][...]), .write(count: 2),
            .statfs(NinePStatfs(type: 1, blockSize: 4096, blocks: 1, freeBlocks: 1, availableBlocks: 1, files: 1,
                                freeFiles: 1, filesystemID: 1, nameLength: 255)),
            .readlink(target: name), .getattr(NinePAttributes(valid: .all, qid: qid)), .xattrwalk(size: 3),
            .readdir(data: []), .lock(status: 0),
            .getlock(NinePGetlock(type: 1, start: 0, length: 0, processID: 1, clientID: name)), .mkdir(qid: qid),
        ]
        var stream: [UInt8] = []
        var n = 0
        func write(_ bytes: [UInt8]) {
            let path = "\(directory)/seed-\(n)"
            n += 1
            guard let f = fopen(path, "wb") else { return }
            _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
        }
        for (i, r) in requests.enumerated() {
            let m = r.encode(tag: UInt16(i))
            write(m)
            stream += m
        }
        for (i, r) in responses.enumerated() { write(r.encode(tag: UInt16(i))) }
        write([200] + stream)
    }
}
