// libFuzzer entry for the FUSE codec (compiled with Sources/PVFSFuseCodec only, by
// run-fuse-decoder-fuzz.sh). Properties checked on every input:
//
// - decoding never traps, whatever the bytes, with either setxattr layout;
// - what decodes re-encodes to a request that decodes to the same value (the encoder is the
//   inverse of the decoder up to padding), with WRITE data in place and unchanged;
// - the reply decoders (entries, attributes, INIT, dirents) never trap, and what they decode
//   re-encodes to bytes that decode the same.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuseDecoderFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    for extended in [false, true] {
        checkRequest(input, FuseDecodeOptions(extendedSetxattr: extended))
    }
    // The same bytes with the length field made right, so that the arguments get exercised.
    if input.count >= 4 {
        var fixed = input
        FuseWriter.patchU32(&fixed, at: 0, UInt32(fixed.count))
        checkRequest(fixed, FuseDecodeOptions(extendedSetxattr: input.count % 2 == 0))
    }
    checkReplies(input)
    return 0
}

private func checkRequest(_ message: [UInt8], _ options: FuseDecodeOptions) {
    guard let (header, request) = (try? message.withUnsafeBytes { try FuseRequest.decode($0, options: options) }) else { return }
    if case .unsupported = request { return }
    var data: [UInt8] = []
    if case .write(let input, let offset) = request {
        guard offset >= 0, offset + Int(input.size) == message.count - Int(header.extensionLength) * 8 else {
            fatalError("WRITE data outside the message")
        }
        data = Array(message[offset..<(offset + Int(input.size))])
    }
    let again = request.encode(unique: header.unique, nodeID: header.nodeID, uid: header.uid, gid: header.gid, pid: header.pid,
                               data: data, options: options)
    guard let (header2, request2) = (try? again.withUnsafeBytes { try FuseRequest.decode($0, options: options) }) else {
        fatalError("opcode \(header.opcode) re-encodes to something that does not decode")
    }
    guard header2.unique == header.unique, header2.nodeID == header.nodeID, header2.opcode == header.opcode else {
        fatalError("header changed through a round trip")
    }
    switch (request, request2) {
    case (.write(let a, _), .write(let b, let offset)):
        guard a == b, Array(again[offset...]) == data else { fatalError("WRITE changed through a round trip") }
    default:
        guard request == request2 else { fatalError("opcode \(header.opcode) changed through a round trip") }
    }
}

private func checkReplies(_ input: [UInt8]) {
    input.withUnsafeBytes { raw in
        var r = FuseReader(raw)
        if let entry = try? FuseEntryOut.decode(&r) {
            var w = FuseWriter()
            entry.encode(into: &w)
            let back = w.bytes.withUnsafeBytes { b -> FuseEntryOut? in
                var reader = FuseReader(b)
                return try? FuseEntryOut.decode(&reader)
            }
            if back != entry { fatalError("entry_out round trip") }
        }
        r = FuseReader(raw)
        if let out = try? FuseInitOut.decode(&r) {
            var w = FuseWriter()
            out.encode(into: &w)
            let back = w.bytes.withUnsafeBytes { b -> FuseInitOut? in
                var reader = FuseReader(b)
                return try? FuseInitOut.decode(&reader)
            }
            if back != out { fatalError("init_out round trip") }
        }
        if let dirents = try? FuseDirent.decodeAll(raw) {
            var w = FuseWriter()
            for d in dirents { d.encode(into: &w) }
            let back = w.bytes.withUnsafeBytes { try? FuseDirent.decodeAll($0) }
            if back != dirents { fatalError("dirent round trip") }
        }
        _ = try? FuseDirent.decodeAllPlus(raw)
        _ = try? FuseOutHeader.decode(raw)
        r = FuseReader(raw)
        _ = try? FuseAttrOut.decode(&r)
        r = FuseReader(raw)
        _ = try? FuseStatfsOut.decode(&r)
    }
}
