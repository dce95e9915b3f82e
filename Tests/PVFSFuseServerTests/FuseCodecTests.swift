import PVFSFuseCodec
import Testing

/// Bytes of one little-endian integer.
private func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
}

private func decode(_ bytes: [UInt8], options: FuseDecodeOptions = FuseDecodeOptions()) throws -> (FuseInHeader, FuseRequest) {
    try bytes.withUnsafeBytes { raw in try FuseRequest.decode(raw, options: options) }
}

private func decodeError(_ bytes: [UInt8], options: FuseDecodeOptions = FuseDecodeOptions()) -> FuseDecodeError.Kind? {
    bytes.withUnsafeBytes { raw -> FuseDecodeError.Kind? in
        do {
            _ = try FuseRequest.decode(raw, options: options)
            return nil
        } catch {
            return (error as? FuseDecodeError)?.kind
        }
    }
}

@Suite("FUSE codec: wire format byte by byte")
struct FuseCodecTests {
    @Test("in header is 40 bytes in fuse.h order")
    func inHeader() throws {
        var w = FuseWriter()
        FuseInHeader(length: 0x11223344, opcode: 26, unique: 0x0102030405060708, nodeID: 0xa0a1a2a3a4a5a6a7,
                     uid: 1000, gid: 1001, pid: 77, extensionLength: 3).encode(into: &w)
        let expected = le(UInt32(0x11223344)) + le(UInt32(26)) + le(UInt64(0x0102030405060708)) + le(UInt64(0xa0a1a2a3a4a5a6a7))
            + le(UInt32(1000)) + le(UInt32(1001)) + le(UInt32(77)) + le(UInt16(3)) + [0, 0]
        #expect(w.bytes == expected)
        #expect(w.bytes.count == FuseProtocol.inHeaderSize)
        let back = try w.bytes.withUnsafeBytes { try FuseInHeader.decode($0) }
        #expect(back.unique == 0x0102030405060708 && back.nodeID == 0xa0a1a2a3a4a5a6a7 && back.extensionLength == 3)
    }

    @Test("out header carries -errno")
    func outHeader() {
        let bytes = FuseReplyWriter.error(unique: 9, errno: 2)
        #expect(bytes == le(UInt32(16)) + le(Int32(-2)) + le(UInt64(9)))
        #expect(FuseReplyWriter.empty(unique: 5) == le(UInt32(16)) + le(Int32(0)) + le(UInt64(5)))
    }

    @Test("reply structures have fuse.h's sizes")
    func sizes() {
        var w = FuseWriter()
        FuseEntryOut().encode(into: &w)
        #expect(w.count == 128)
        w = FuseWriter()
        FuseAttrOut().encode(into: &w)
        #expect(w.count == 104)
        w = FuseWriter()
        FuseStatfsOut().encode(into: &w)
        #expect(w.count == 80)
        w = FuseWriter()
        FuseInitOut().encode(into: &w)
        #expect(w.count == 64)
        w = FuseWriter()
        FuseOpenOut(handle: 1, openFlags: 2).encode(into: &w)
        #expect(w.count == 16)
        w = FuseWriter()
        FuseFileLock(start: 0, end: 1, type: 1, pid: 2).encode(into: &w)
        #expect(w.count == 24)
        w = FuseWriter()
        FuseSetattrIn().encode(into: &w)
        #expect(w.count == 88)
    }

    @Test("entry_out field offsets")
    func entryLayout() {
        var e = FuseEntryOut()
        e.nodeID = 0x42
        e.entryValid = 7
        e.attrValidNsec = 9
        e.attr.ino = 0x42
        e.attr.mode = 0o100644
        e.attr.flags = 0xdead
        var w = FuseWriter()
        e.encode(into: &w)
        #expect(Array(w.bytes[0..<8]) == le(UInt64(0x42)))
        #expect(Array(w.bytes[16..<24]) == le(UInt64(7)))
        #expect(Array(w.bytes[36..<40]) == le(UInt32(9)))
        #expect(Array(w.bytes[40..<48]) == le(UInt64(0x42)))          // attr.ino
        #expect(Array(w.bytes[40 + 60..<40 + 64]) == le(UInt32(0o100644)))  // attr.mode after 6 u64 and 3 u32
        #expect(Array(w.bytes[124..<128]) == le(UInt32(0xdead)))      // attr.flags last
    }

    @Test("init_out splits flags and flags2")
    func initOut() throws {
        var out = FuseInitOut()
        out.flags = FuseInitFlags(rawValue: 0x0000_0002_0000_0001)
        out.maxWrite = 1 << 20
        out.maxPages = 256
        var w = FuseWriter()
        out.encode(into: &w)
        #expect(Array(w.bytes[12..<16]) == le(UInt32(1)))
        #expect(Array(w.bytes[20..<24]) == le(UInt32(1 << 20)))
        #expect(Array(w.bytes[28..<30]) == le(UInt16(256)))
        #expect(Array(w.bytes[32..<36]) == le(UInt32(2)))
        let back = try w.bytes.withUnsafeBytes { raw -> FuseInitOut in
            var reader = FuseReader(raw)
            return try FuseInitOut.decode(&reader)
        }
        #expect(back == out)
    }

    @Test("INIT from Linux 6.1's virtiofs (7.38, 64 bytes, flags2 with INIT_EXT)")
    func initFromLinux61() throws {
        let flags: UInt64 = 0x0000_000b_7bff_fffb
        var bytes = le(UInt32(104)) + le(UInt32(26)) + le(UInt64(2)) + le(UInt64(0)) + le(UInt32(0)) + le(UInt32(0)) + le(UInt32(0)) + [0, 0, 0, 0]
        bytes += le(UInt32(7)) + le(UInt32(38)) + le(UInt32(131072)) + le(UInt32(truncatingIfNeeded: flags)) + le(UInt32(truncatingIfNeeded: flags >> 32))
        bytes += [UInt8](repeating: 0, count: 44)
        let (header, request) = try decode(bytes)
        #expect(header.opcode == 26 && header.unique == 2)
        guard case .initialise(let input) = request else { Issue.record("not INIT"); return }
        #expect(input.minor == 38 && input.maxReadahead == 131072)
        #expect(input.flags.rawValue == flags)
        #expect(input.flags.contains(.initExt) && input.flags.contains(.securityContext) && input.flags.contains(.hasInodeDAX))
        // An old kernel's 16-byte INIT decodes too, and flags2 counts only with INIT_EXT.
        var old = bytes
        old.removeLast(48)
        FuseWriter.patchU32(&old, at: 0, UInt32(old.count))
        let (_, oldRequest) = try decode(old)
        guard case .initialise(let oldInput) = oldRequest else { Issue.record("not INIT"); return }
        #expect(oldInput.flags.rawValue == flags & 0xffff_ffff)
    }

    @Test("every request round-trips through encode and decode")
    func roundTrips() throws {
        let ext = FuseDecodeOptions(extendedSetxattr: true)
        let lock = FuseFileLock(start: 5, end: UInt64(Int64.max), type: 1, pid: 99)
        let cases: [(FuseRequest, [UInt8], FuseDecodeOptions)] = [
            (.initialise(FuseInitIn(major: 7, minor: 38, maxReadahead: 4096, flags: [.asyncRead, .initExt, .securityContext])), [], .init()),
            (.destroy, [], .init()),
            (.lookup(name: Array("name".utf8)), [], .init()),
            (.forget(count: 3), [], .init()),
            (.batchForget([FuseForgetOne(nodeID: 5, count: 1), FuseForgetOne(nodeID: 6, count: 2)]), [], .init()),
            (.getattr(flags: 1, handle: 77), [], .init()),
            (.setattr({ var s = FuseSetattrIn(); s.valid = 0x3f; s.size = 10; s.mode = 0o644; s.atimensec = 5; return s }()), [], .init()),
            (.readlink, [], .init()),
            (.symlink(name: Array("l".utf8), target: Array("../target".utf8)), [], .init()),
            (.mknod(mode: 0o020644, rdev: 0x0103, umask: 0o022, name: Array("dev".utf8)), [], .init()),
            (.mkdir(mode: 0o755, umask: 0o022, name: Array("d".utf8)), [], .init()),
            (.unlink(name: Array("u".utf8)), [], .init()),
            (.rmdir(name: Array("r".utf8)), [], .init()),
            (.rename(newParent: 9, flags: 0, name: Array("a".utf8), newName: Array("b".utf8), version2: false), [], .init()),
            (.rename(newParent: 9, flags: 2, name: Array("a".utf8), newName: Array("b".utf8), version2: true), [], .init()),
            (.link(node: 12, name: Array("hard".utf8)), [], .init()),
            (.open(flags: 0o2, openFlags: 0), [], .init()),
            (.opendir(flags: 0o200000, openFlags: 0), [], .init()),
            (.read(FuseReadIn(handle: 1, offset: 4096, size: 8192, ioFlags: 2, lockOwner: 7, flags: 0o2)), [], .init()),
            (.write(FuseWriteIn(handle: 1, offset: 3, size: 5, ioFlags: 0, lockOwner: 0, flags: 0o2), dataOffset: 80), Array("hello".utf8), .init()),
            (.statfs, [], .init()),
            (.release(FuseReleaseIn(handle: 4, flags: 2, releaseFlags: 2, lockOwner: 11)), [], .init()),
            (.releasedir(FuseReleaseIn(handle: 4)), [], .init()),
            (.fsync(handle: 4, flags: 1), [], .init()),
            (.fsyncdir(handle: 4, flags: 0), [], .init()),
            (.setxattr(flags: 1, setxattrFlags: 0, name: Array("user.a".utf8), value: [1, 2, 0, 3]), [], .init()),
            (.setxattr(flags: 0, setxattrFlags: 1, name: Array("system.posix_acl_access".utf8), value: []), [], ext),
            (.getxattr(size: 100, name: Array("user.a".utf8)), [], .init()),
            (.listxattr(size: 0), [], .init()),
            (.removexattr(name: Array("user.a".utf8)), [], .init()),
            (.flush(handle: 3, lockOwner: 8), [], .init()),
            (.readdir(FuseReadIn(handle: 1, offset: 0, size: 4096)), [], .init()),
            (.readdirplus(FuseReadIn(handle: 1, offset: 99, size: 4096)), [], .init()),
            (.getlk(FuseLockIn(handle: 1, owner: 2, lock: lock)), [], .init()),
            (.setlk(FuseLockIn(handle: 1, owner: 2, lock: lock, lockFlags: 1), wait: false), [], .init()),
            (.setlk(FuseLockIn(handle: 1, owner: 2, lock: lock), wait: true), [], .init()),
            (.access(mask: 4), [], .init()),
            (.create(FuseCreateIn(flags: 0o102, mode: 0o100644, umask: 0o022, openFlags: 0), name: Array("c".utf8)), [], .init()),
            (.interrupt(unique: 17), [], .init()),
            (.fallocate(FuseFallocateIn(handle: 1, offset: 2, length: 3, mode: 1)), [], .init()),
            (.lseek(handle: 1, offset: 2, whence: 3), [], .init()),
            (.copyFileRange(FuseCopyFileRangeIn(handleIn: 1, offsetIn: 2, nodeOut: 3, handleOut: 4, offsetOut: 5, length: 6, flags: 0)), [], .init()),
            (.syncfs, [], .init()),
        ]
        for (request, data, options) in cases {
            let bytes = request.encode(unique: 0x55, nodeID: 0x66, uid: 1, gid: 2, pid: 3, data: data, options: options)
            let (header, back) = try decode(bytes, options: options)
            #expect(header.opcode == request.opcode)
            #expect(Int(header.length) == bytes.count)
            #expect(header.unique == 0x55 && header.nodeID == 0x66 && header.uid == 1 && header.gid == 2 && header.pid == 3)
            if case .write(let input, let offset) = back {
                #expect(input.size == UInt32(data.count))
                #expect(Array(bytes[offset..<(offset + Int(input.size))]) == data)
            } else {
                #expect(back == request, "opcode \(request.opcode)")
            }
            // Re-encoding what was decoded gives the same bytes (padding is zero on both sides).
            #expect(back.encode(unique: 0x55, nodeID: 0x66, uid: 1, gid: 2, pid: 3, data: data, options: options) == bytes)
        }
    }

    @Test("symlink sends the entry name first, then the target")
    func symlinkOrder() throws {
        let bytes = FuseRequest.symlink(name: Array("link".utf8), target: Array("dest".utf8)).encode(unique: 1, nodeID: 1)
        #expect(Array(bytes[40...]) == Array("link\0dest\0".utf8))
    }

    @Test("WRITE data stays in place at offset 80")
    func writeData() throws {
        let bytes = FuseRequest.write(FuseWriteIn(handle: 1, offset: 0, size: 0), dataOffset: 0).encode(unique: 1, nodeID: 2, data: [9, 8, 7])
        #expect(bytes.count == 83)
        let (_, request) = try decode(bytes)
        guard case .write(let input, let offset) = request else { Issue.record("not WRITE"); return }
        #expect(offset == 80 && input.size == 3)
    }

    @Test("malformed requests are refused with the reason")
    func malformed() {
        // Too short for a header.
        #expect(decodeError([1, 2, 3]) == .truncated)
        // Length field disagrees with the bytes.
        var lookup = FuseRequest.lookup(name: Array("x".utf8)).encode(unique: 1, nodeID: 1)
        var wrong = lookup
        FuseWriter.patchU32(&wrong, at: 0, UInt32(lookup.count + 1))
        #expect(decodeError(wrong) == .lengthMismatch)
        // A name without its NUL.
        lookup.removeLast()
        FuseWriter.patchU32(&lookup, at: 0, UInt32(lookup.count))
        #expect(decodeError(lookup) == .badName)
        // An empty name.
        #expect(decodeError(FuseRequest.lookup(name: []).encode(unique: 1, nodeID: 1)) == .badName)
        // Bytes after the last argument.
        var getattr = FuseRequest.getattr(flags: 0, handle: 0).encode(unique: 1, nodeID: 1) + [0]
        FuseWriter.patchU32(&getattr, at: 0, UInt32(getattr.count))
        #expect(decodeError(getattr) == .trailingBytes)
        // A WRITE whose size field claims more than was sent.
        var write = FuseRequest.write(FuseWriteIn(handle: 1, offset: 0, size: 0), dataOffset: 0).encode(unique: 1, nodeID: 1, data: [1, 2])
        FuseWriter.patchU32(&write, at: 56, 1000)
        #expect(decodeError(write) == .badCount)
        // BATCH_FORGET counting more items than the message holds (and one that would overflow).
        var batch = FuseRequest.batchForget([FuseForgetOne(nodeID: 1, count: 1)]).encode(unique: 1, nodeID: 0)
        FuseWriter.patchU32(&batch, at: 40, 0xffff_ffff)
        #expect(decodeError(batch) == .badCount)
        // SETXATTR whose size disagrees with the value.
        var set = FuseRequest.setxattr(flags: 0, setxattrFlags: 0, name: Array("user.a".utf8), value: [1, 2, 3]).encode(unique: 1, nodeID: 1)
        FuseWriter.patchU32(&set, at: 40, 2)
        #expect(decodeError(set) == .badCount)
        // Extensions longer than the message.
        var ext = FuseRequest.statfs.encode(unique: 1, nodeID: 1)
        ext[36] = 0xff
        #expect(decodeError(ext) == .badCount)
        // A truncated fixed argument.
        var read = FuseRequest.read(FuseReadIn(handle: 1, offset: 0, size: 1)).encode(unique: 1, nodeID: 1)
        read.removeLast(4)
        FuseWriter.patchU32(&read, at: 0, UInt32(read.count))
        #expect(decodeError(read) == .truncated)
    }

    @Test("unknown and unserved opcodes decode as unsupported")
    func unsupported() throws {
        for opcode: UInt32 in [7, 19, 37, 39, 40, 48, 49, 51, 52, 4096, 0xffff_ffff] {
            var w = FuseWriter()
            FuseInHeader(length: 48, opcode: opcode, unique: 1, nodeID: 1).encode(into: &w)
            w.zeros(8)
            let (_, request) = try decode(w.bytes)
            #expect(request == .unsupported(opcode: opcode))
        }
        #expect(FuseRequest.unsupported(opcode: 41).expectsNoReply)
        #expect(!FuseRequest.unsupported(opcode: 39).expectsNoReply)
    }

    @Test("every prefix of every request fails cleanly")
    func prefixes() {
        let samples: [[UInt8]] = [
            FuseRequest.rename(newParent: 2, flags: 1, name: Array("a".utf8), newName: Array("bb".utf8), version2: true).encode(unique: 1, nodeID: 1),
            FuseRequest.setattr(FuseSetattrIn()).encode(unique: 1, nodeID: 1),
            FuseRequest.batchForget([FuseForgetOne(nodeID: 1, count: 1)]).encode(unique: 1, nodeID: 1),
            FuseRequest.copyFileRange(FuseCopyFileRangeIn(handleIn: 1, offsetIn: 2, nodeOut: 3, handleOut: 4, offsetOut: 5, length: 6)).encode(unique: 1, nodeID: 1),
        ]
        for full in samples {
            for n in 0..<full.count {
                var prefix = Array(full[0..<n])
                if n >= 4 { FuseWriter.patchU32(&prefix, at: 0, UInt32(n)) }
                #expect(decodeError(prefix) != nil, "prefix of \(n) bytes decoded")
            }
        }
    }

    @Test("dirent records are padded to 8 and decode back")
    func dirents() throws {
        var w = FuseWriter()
        let a = FuseDirent(ino: 5, offset: 77, type: 8, name: Array("abc".utf8))
        let b = FuseDirent(ino: 6, offset: 78, type: 4, name: Array("12345".utf8))
        a.encode(into: &w)
        #expect(w.count == 32)
        b.encode(into: &w)
        #expect(w.count == 64)
        #expect(FuseDirent.recordSize(nameLength: 8) == 32 && FuseDirent.recordSize(nameLength: 9) == 40)
        let back = try w.bytes.withUnsafeBytes { try FuseDirent.decodeAll($0) }
        #expect(back == [a, b])
    }
}
