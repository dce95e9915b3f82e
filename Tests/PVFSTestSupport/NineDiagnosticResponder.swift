import PVFS9PCodec
import Synchronization

/// A tiny, read-only 9P2000.L server over a flat in-memory directory, for checking a
/// transport end to end without the real server: enough for a Linux client to mount,
/// list, stat and read (version, attach, walk, clunk, getattr, lopen, readdir, read,
/// statfs, flush). Everything that would modify answers EROFS, the rest EOPNOTSUPP.
/// Diagnostic only; it never touches a store.
public final class NineDiagnosticResponder: NineMessageHandler {
    public let maxMessageSize: UInt32
    private let files: [(name: String, contents: [UInt8])]
    private let modificationTime: UInt64

    private struct State {
        var fids: [UInt32: Int] = [:]   // fid -> node (0 = root, i + 1 = files[i])
        var msize: UInt32 = 0
        var closed = false
    }
    private let state = Mutex(State())

    /// `files` become the entries of the root directory, sorted by name.
    public init(files: [String: [UInt8]], maxMessageSize: UInt32 = 512 * 1024, modificationTime: UInt64 = 1_700_000_000) {
        precondition(maxMessageSize >= 4096)
        self.files = files.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        self.maxMessageSize = maxMessageSize
        self.modificationTime = modificationTime
    }

    public var maximumMessageSize: Int {
        let msize = state.withLock { $0.msize }
        return Int(msize == 0 ? maxMessageSize : msize)
    }

    public var usage: NineConnectionUsage {
        NineConnectionUsage(outstandingRequests: 0, fids: state.withLock { $0.fids.count })
    }

    public func close() {
        state.withLock { $0.closed = true; $0.fids.removeAll() }
    }

    public func receive(_ message: [UInt8], runInline: Bool, reply: @escaping @Sendable ([UInt8]) -> Void,
                        unanswered: (@Sendable () -> Void)?) {
        guard let header = NinePHeader(message) else {
            unanswered?()
            return
        }
        let response: NinePResponse
        do {
            let (_, request) = try NinePRequest.decode(message)
            response = answer(request)
        } catch {
            response = .error(errno: error.errno)
        }
        reply(response.encode(tag: header.tag))
    }

    private func qid(_ node: Int) -> NinePQid {
        NinePQid(type: node == 0 ? NinePQidType.directory : NinePQidType.file, version: 0, path: UInt64(node) + 1)
    }

    private func node(_ fid: UInt32) -> Int? {
        state.withLock { $0.fids[fid] }
    }

    private func answer(_ request: NinePRequest) -> NinePResponse {
        switch request {
        case .version(let requested, let version):
            let msize = min(requested, maxMessageSize)
            state.withLock { $0.fids.removeAll(); $0.msize = msize }
            let speaks = version.starts(with: NineP.protocolVersion)
            return .version(msize: msize, version: speaks ? NineP.protocolVersion : NineP.unknownVersion)

        case .attach(let fid, _, _, _, _):
            state.withLock { $0.fids[fid] = 0 }
            return .attach(qid: qid(0))

        case .walk(let fid, let newFid, let names):
            guard let start = node(fid) else { return .error(errno: LinuxErrno.EBADF) }
            var node = start
            var qids: [NinePQid] = []
            for name in names {
                if FileNames.isDotOrDotDot(name) {
                    node = 0
                } else if node == 0, let index = files.firstIndex(where: { Array($0.name.utf8) == name }) {
                    node = index + 1
                } else {
                    if qids.isEmpty { return .error(errno: node == 0 ? LinuxErrno.ENOENT : LinuxErrno.ENOTDIR) }
                    break
                }
                qids.append(qid(node))
            }
            if qids.count == names.count { state.withLock { $0.fids[newFid] = node } }
            return .walk(qids: qids)

        case .clunk(let fid):
            guard state.withLock({ $0.fids.removeValue(forKey: fid) }) != nil else { return .error(errno: LinuxErrno.EBADF) }
            return .clunk

        case .getattr(let fid, _):
            guard let node = node(fid) else { return .error(errno: LinuxErrno.EBADF) }
            let size = node == 0 ? UInt64(4096) : UInt64(files[node - 1].contents.count)
            let time = modificationTime
            return .getattr(NinePAttributes(
                valid: .basic, qid: qid(node), mode: node == 0 ? 0o040555 : 0o100444, uid: 0, gid: 0,
                linkCount: node == 0 ? 2 : 1, rdev: 0, size: size, blockSize: 4096, blocks: (size + 511) / 512,
                accessTimeSeconds: time, modificationTimeSeconds: time, changeTimeSeconds: time, birthTimeSeconds: time))

        case .lopen(let fid, let flags):
            guard let node = node(fid) else { return .error(errno: LinuxErrno.EBADF) }
            if flags & NinePOpenFlags.accessModeMask != 0 || flags & NinePOpenFlags.truncate.rawValue != 0 {
                return .error(errno: LinuxErrno.EROFS)
            }
            return .lopen(qid: qid(node), iounit: 0)

        case .readdir(let fid, let offset, let count):
            guard let node = node(fid) else { return .error(errno: LinuxErrno.EBADF) }
            guard node == 0 else { return .error(errno: LinuxErrno.ENOTDIR) }
            let limit = Int(min(count, replyPayloadLimit()))
            var entries: [(name: String, qid: NinePQid)] = [(".", qid(0)), ("..", qid(0))]
            for index in files.indices { entries.append((files[index].name, qid(index + 1))) }
            var data = NinePWriter(type: .rreaddir, tag: 0)
            var used = 0
            var position = Int(min(offset, UInt64(entries.count)))
            while position < entries.count {
                let entry = NinePDirectoryEntry(qid: entries[position].qid, offset: UInt64(position + 1),
                                                type: entries[position].qid.type == NinePQidType.directory ? 4 : 8,   // DT_DIR, DT_REG
                                                name: Array(entries[position].name.utf8.prefix(Int(UInt16.max))))
                guard used + entry.encodedSize <= limit else { break }
                entry.encode(into: &data)
                used += entry.encodedSize
                position += 1
            }
            return .readdir(data: data.bytes[NineP.headerSize...])

        case .read(let fid, let offset, let count):
            guard let node = node(fid) else { return .error(errno: LinuxErrno.EBADF) }
            guard node != 0 else { return .error(errno: LinuxErrno.EISDIR) }
            let contents = files[node - 1].contents
            let start = Int(min(offset, UInt64(contents.count)))
            let length = min(Int(min(count, replyPayloadLimit())), contents.count - start)
            return .read(data: contents[start..<start + length])

        case .statfs(let fid):
            guard node(fid) != nil else { return .error(errno: LinuxErrno.EBADF) }
            return .statfs(NinePStatfs(type: NineP.filesystemMagic, blockSize: 4096, blocks: 1024, freeBlocks: 0,
                                       availableBlocks: 0, files: UInt64(files.count + 1), freeFiles: 0,
                                       filesystemID: 0x7076_6673, nameLength: 255))   // fsid "pvfs"

        case .flush:
            return .flush

        case .xattrwalk:
            return .error(errno: LinuxErrno.ENODATA)

        case .lcreate, .symlink, .mknod, .rename, .setattr, .xattrcreate, .fsync, .link, .mkdir, .renameat,
             .unlinkat, .write, .remove:
            return .error(errno: LinuxErrno.EROFS)

        case .auth, .readlink, .lock, .getlock:
            return .error(errno: LinuxErrno.EOPNOTSUPP)
        }
    }

    /// Payload bytes an Rread/Rreaddir may carry within the negotiated msize.
    private func replyPayloadLimit() -> UInt32 {
        let msize = state.withLock { $0.msize }
        return (msize == 0 ? maxMessageSize : msize) - UInt32(NineP.readReplyHeaderSize)
    }
}

private enum FileNames {
    static func isDotOrDotDot(_ name: [UInt8]) -> Bool {
        name == [0x2E] || name == [0x2E, 0x2E]
    }
}
