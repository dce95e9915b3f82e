import Testing
@testable import PVFS9PCodec

/// One of every T-message, with values that exercise every field.
let sampleRequests: [NinePRequest] = [
    .version(msize: 512 * 1024, version: bytes("9P2000.L")),
    .auth(afid: 7, uname: bytes("alice"), aname: bytes("vm1"), uid: 1000),
    .attach(fid: 1, afid: NineP.noFid, uname: bytes(""), aname: bytes("vm1"), uid: 0),
    .flush(oldTag: 0xBEEF),
    .walk(fid: 1, newFid: 2, names: [bytes("etc"), bytes(".."), bytes("bin"), bytes("sh")]),
    .walk(fid: 1, newFid: 3, names: []),
    .walk(fid: 1, newFid: 3, names: Array(repeating: bytes("a"), count: 16)),
    .lopen(fid: 2, flags: 0o2002),
    .lcreate(fid: 2, name: bytes("new"), flags: 0o100102, mode: 0o644, gid: 2000),
    .read(fid: 2, offset: 1 << 40, count: 65536),
    .write(fid: 2, offset: 12, data: bytes("hello world")[...]),
    .write(fid: 2, offset: 0, data: []),
    .clunk(fid: 9),
    .remove(fid: 9),
    .statfs(fid: 1),
    .symlink(fid: 1, name: bytes("link"), target: bytes("../target"), gid: 5),
    .mknod(dfid: 1, name: bytes("null"), mode: 0o20666, major: 1, minor: 3, gid: 0),
    .rename(fid: 4, dfid: 1, name: bytes("moved")),
    .readlink(fid: 4),
    .getattr(fid: 4, mask: .all),
    .setattr(fid: 4, NinePSetattr(valid: [.mode, .size, .accessTime, .accessTimeSet], mode: 0o600, uid: 1, gid: 2,
                                  size: 4096, accessTimeSeconds: 1_700_000_000, accessTimeNanoseconds: 5,
                                  modificationTimeSeconds: UInt64(bitPattern: -1), modificationTimeNanoseconds: 999_999_999)),
    .xattrwalk(fid: 4, newFid: 5, name: bytes("user.x")),
    .xattrwalk(fid: 4, newFid: 5, name: []),
    .xattrcreate(fid: 4, name: bytes("user.y"), size: 300, flags: 1),
    .readdir(fid: 2, offset: 0x7fff_ffff_ffff_0000, count: 8168),
    .fsync(fid: 2, datasync: 1),
    .lock(fid: 2, NinePLock(type: 1, flags: 1, start: 10, length: 0, processID: 4242, clientID: bytes("guest"))),
    .getlock(fid: 2, NinePGetlock(type: 2, start: 0, length: 100, processID: 1, clientID: bytes("guest"))),
    .link(dfid: 1, fid: 4, name: bytes("hard")),
    .mkdir(dfid: 1, name: bytes("dir"), mode: 0o755, gid: 100),
    .renameat(oldDirFid: 1, oldName: bytes("a"), newDirFid: 2, newName: bytes("b")),
    .unlinkat(dirFid: 1, name: bytes("dir"), flags: 0x200),
]

let sampleQid = NinePQid(type: NinePQidType.directory, version: 0xDEAD_BEEF, path: 0x0102_0304_0506_0708)

/// One of every R-message.
let sampleResponses: [NinePResponse] = [
    .error(errno: 2),
    .version(msize: 8192, version: bytes("9P2000.L")),
    .auth(qid: sampleQid),
    .attach(qid: sampleQid),
    .flush,
    .walk(qids: []),
    .walk(qids: [sampleQid, NinePQid(type: 0, version: 1, path: 2)]),
    .lopen(qid: sampleQid, iounit: 0),
    .lcreate(qid: sampleQid, iounit: 8168),
    .read(data: bytes("data")[...]),
    .read(data: []),
    .write(count: 65536),
    .clunk,
    .remove,
    .statfs(NinePStatfs(type: NineP.filesystemMagic, blockSize: 4096, blocks: 1 << 30, freeBlocks: 1 << 20,
                        availableBlocks: 1 << 19, files: 1000, freeFiles: 10, filesystemID: 0xABCD, nameLength: 255)),
    .symlink(qid: sampleQid),
    .mknod(qid: sampleQid),
    .rename,
    .readlink(target: bytes("busybox")),
    .getattr(NinePAttributes(valid: .all, qid: sampleQid, mode: 0o100644, uid: 1, gid: 2, linkCount: 3, rdev: 4,
                             size: 5, blockSize: 6, blocks: 7, accessTimeSeconds: 8, accessTimeNanoseconds: 9,
                             modificationTimeSeconds: 10, modificationTimeNanoseconds: 11, changeTimeSeconds: 12,
                             changeTimeNanoseconds: 13, birthTimeSeconds: 14, birthTimeNanoseconds: 15,
                             generation: 16, dataVersion: 17)),
    .setattr,
    .xattrwalk(size: 12),
    .xattrcreate,
    .readdir(data: []),
    .fsync,
    .lock(status: NinePLockStatus.blocked),
    .getlock(NinePGetlock(type: 1, start: 5, length: 0, processID: 77, clientID: bytes("host"))),
    .link,
    .mkdir(qid: sampleQid),
    .renameat,
    .unlinkat,
]

@Suite("9P codec")
struct CodecTests {
    @Test func everyRequestRoundTrips() throws {
        for (i, request) in sampleRequests.enumerated() {
            let tag = UInt16(i * 257 % 65535)
            let encoded = request.encode(tag: tag)
            let header = try #require(NinePHeader(encoded))
            #expect(Int(header.size) == encoded.count)
            #expect(header.type == request.type)
            #expect(header.tag == tag)
            let decoded = try NinePRequest.decode(encoded)
            #expect(decoded.tag == tag)
            #expect(decoded.request == request, "\(request.type)")
        }
    }

    @Test func everyResponseRoundTrips() throws {
        for (i, response) in sampleResponses.enumerated() {
            let tag = UInt16(i)
            let encoded = response.encode(tag: tag)
            let decoded = try NinePResponse.decode(encoded)
            #expect(decoded.tag == tag)
            #expect(decoded.response == response, "\(response.type)")
        }
    }

    @Test func typesPairUp() {
        for request in sampleRequests {
            #expect(request.type.rawValue % 2 == 0)
        }
        #expect(NinePMessageType.tgetattr.description == "Tgetattr")
        #expect(NinePMessageType(rawValue: 200).description == "type 200")
    }

    /// Wire layout checked against what Linux's client marshals ("dqd" for Tread, etc.).
    @Test func knownEncodings() {
        #expect(NinePRequest.read(fid: 1, offset: 2, count: 3).encode(tag: 4)
            == [23, 0, 0, 0, 116, 4, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0])
        #expect(NinePRequest.version(msize: 8192, version: bytes("9P2000.L")).encode(tag: 0xFFFF)
            == [21, 0, 0, 0, 100, 0xFF, 0xFF, 0, 0x20, 0, 0, 8, 0] + bytes("9P2000.L"))
        #expect(NinePResponse.error(errno: 2).encode(tag: 1) == [11, 0, 0, 0, 7, 1, 0, 2, 0, 0, 0])
        #expect(NinePResponse.walk(qids: [NinePQid(type: 0x80, version: 1, path: 2)]).encode(tag: 0)
            == [22, 0, 0, 0, 111, 0, 0, 1, 0, 0x80, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
        // Rgetattr is 7 + 8 + 13 + 3*4 + 15*8 = 160 bytes.
        #expect(sampleResponses.first { $0.type == .rgetattr }!.encode(tag: 0).count == 160)
    }

    @Test func everyTruncationFails() {
        for request in sampleRequests {
            let encoded = request.encode(tag: 1)
            for cut in 0..<encoded.count {
                var message = Array(encoded[0..<cut])
                // With the size field fixed up, only the body is short.
                if cut >= 4 { NinePWriter.patchU32(&message, at: 0, UInt32(cut)) }
                #expect(throws: NinePDecodeError.self, "\(request.type) cut at \(cut)") {
                    try NinePRequest.decode(message)
                }
            }
        }
        for response in sampleResponses {
            let encoded = response.encode(tag: 1)
            for cut in 0..<encoded.count {
                var message = Array(encoded[0..<cut])
                if cut >= 4 { NinePWriter.patchU32(&message, at: 0, UInt32(cut)) }
                #expect(throws: NinePDecodeError.self) { try NinePResponse.decode(message) }
            }
        }
    }

    @Test func trailingBytesAndSizeMismatchFail() throws {
        for request in sampleRequests {
            var message = request.encode(tag: 1) + [0]
            #expect(throws: NinePDecodeError(.sizeMismatch, "size")) { try NinePRequest.decode(message) }
            NinePWriter.patchU32(&message, at: 0, UInt32(message.count))
            #expect(throws: NinePDecodeError(.trailingBytes)) { try NinePRequest.decode(message) }
        }
    }

    @Test func stringLengthsAreBounded() {
        // Tattach whose uname claims 65535 bytes in a 30-byte message.
        var w = NinePWriter(type: .tattach, tag: 1)
        w.u32(0); w.u32(NineP.noFid); w.u16(0xFFFF); w.data(bytes("abc"))
        #expect(throws: NinePDecodeError(.truncated, "uname")) { try NinePRequest.decode(w.finish()) }
        // Twrite whose count exceeds the data present.
        var t = NinePWriter(type: .twrite, tag: 1)
        t.u32(0); t.u64(0); t.u32(0xFFFF_FFFF); t.data([1, 2, 3])
        #expect(throws: NinePDecodeError(.truncated, "data")) { try NinePRequest.decode(t.finish()) }
        // Rread likewise.
        var r = NinePWriter(type: .rread, tag: 1)
        r.u32(1000); r.data([1])
        #expect(throws: NinePDecodeError.self) { try NinePResponse.decode(r.finish()) }
    }

    @Test func walkOfSeventeenNamesFails() {
        var w = NinePWriter(type: .twalk, tag: 3)
        w.u32(0); w.u32(1); w.u16(17)
        for _ in 0..<17 { w.string(bytes("x")) }
        let error = #expect(throws: NinePDecodeError.self) { try NinePRequest.decode(w.finish()) }
        #expect(error?.kind == .tooManyNames)
        #expect(error?.errno == LinuxErrno.EINVAL)
        // nwname 65535 with no names: refused before anything is read or reserved.
        var huge = NinePWriter(type: .twalk, tag: 3)
        huge.u32(0); huge.u32(1); huge.u16(0xFFFF)
        #expect(throws: NinePDecodeError(.tooManyNames, "nwname")) { try NinePRequest.decode(huge.finish()) }
    }

    @Test func legacyAndUnknownTypesAreRefused() {
        for type: UInt8 in [0, 6, 7, 99, 101, 106, 112, 114, 124, 126, 127, 200, 255] {
            var w = NinePWriter(type: NinePMessageType(rawValue: type), tag: 9)
            w.u32(1)
            let error = #expect(throws: NinePDecodeError.self) { try NinePRequest.decode(w.finish()) }
            #expect(error?.kind == .unknownType)
            #expect(error?.errno == LinuxErrno.EOPNOTSUPP)
        }
    }

    @Test func headerNeedsSevenBytes() {
        #expect(NinePHeader([7, 0, 0, 0, 100, 1]) == nil)
        #expect(NinePHeader([7, 0, 0, 0, 100, 1, 2]) == NinePHeader(size: 7, type: .tversion, tag: 0x0201))
    }

    @Test func directoryEntriesRoundTrip() throws {
        let entries = [
            NinePDirectoryEntry(qid: sampleQid, offset: 1, type: 4, name: bytes(".")),
            NinePDirectoryEntry(qid: NinePQid(type: 0, version: 0, path: 99), offset: 0x7fff_ffff_ffff_ffff, type: 8,
                                name: Array(repeating: 0x61, count: 255)),
        ]
        var w = NinePWriter(type: .rreaddir, tag: 0)
        for e in entries { e.encode(into: &w) }
        let data = Array(w.bytes[7...])
        #expect(data.count == entries.map(\.encodedSize).reduce(0, +))
        #expect(try NinePDirectoryEntry.decodeAll(data[...]) == entries)
        #expect(throws: NinePDecodeError.self) { try NinePDirectoryEntry.decodeAll(data.dropLast()) }
    }

    @Test func dataRepliesAreBuiltInPlace() throws {
        let message = NinePResponse.encodeData(type: .rread, tag: 77, capacity: 10) { buffer in
            for i in 0..<4 { buffer[i] = UInt8(i + 1) }
            return 4
        }
        #expect(try NinePResponse.decode(message).response == .read(data: [1, 2, 3, 4][...]))
        #expect(try NinePResponse.decode(message).tag == 77)
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            _ = try NinePResponse.encodeData(type: .rread, tag: 1, capacity: 4) { (_) throws(Boom) -> Int in throw Boom() }
        }
    }
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
