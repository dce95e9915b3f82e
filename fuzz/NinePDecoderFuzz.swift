// libFuzzer entry for the 9P codec (compiled with the codec sources only, by
// run-9p-decoder-fuzz.sh). Properties checked on every input:
//
// - decoding never traps, whatever the bytes (ASan and Swift's own checks catch the rest);
// - decoding is strict and the format canonical, so a message that decodes re-encodes to exactly
//   the same bytes, as a request and as a response;
// - the framer, fed the input in pieces of any size, hands out only messages whose size field
//   matches their length and stays within the limit, and never loses or invents bytes;
// - an Rread built in place holds exactly the bytes written into it, whatever the capacity.

@_cdecl("LLVMFuzzerTestOneInput")
public func ninePDecoderFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    checkRoundTrips(input)
    checkFraming(input)
    checkDataReplies(input)
    if !input.isEmpty {
        _ = try? NinePDirectoryEntry.decodeAll(input[1...])
        _ = NinePHeader(input)
    }
    return 0
}

private func checkRoundTrips(_ message: [UInt8]) {
    if let (tag, request) = try? NinePRequest.decode(message) {
        let again = request.encode(tag: tag)
        if again != message { fatalError("request \(request.type) re-encodes differently") }
        if request.type.rawValue != message[4] { fatalError("request type mismatch") }
    }
    if let (tag, response) = try? NinePResponse.decode(message) {
        let again = response.encode(tag: tag)
        if again != message { fatalError("response \(response.type) re-encodes differently") }
    }
    // A message claiming to be whatever type its fifth byte says, with a fixed-up size.
    if message.count >= 7 {
        var fixed = message
        NinePWriter.patchU32(&fixed, at: 0, UInt32(fixed.count))
        if let (tag, request) = try? NinePRequest.decode(fixed), request.encode(tag: tag) != fixed {
            fatalError("fixed-up request re-encodes differently")
        }
        if let (tag, response) = try? NinePResponse.decode(fixed), response.encode(tag: tag) != fixed {
            fatalError("fixed-up response re-encodes differently")
        }
    }
}

private func checkFraming(_ stream: [UInt8]) {
    let limit = 1 + Int(stream.first ?? 0) * 64
    var framer = NinePMessageFramer(maximumMessageSize: limit)
    var consumed = 0
    var i = 0
    var step = 1
    while i < stream.count {
        let n = min(step, stream.count - i)
        stream[i..<(i + n)].withUnsafeBytes { framer.append($0) }
        i += n
        step = step % 7 + 1
        while true {
            let message: [UInt8]?
            do {
                message = try framer.next()
            } catch {
                return
            }
            guard let message else { break }
            guard message.count >= 7, message.count <= limit,
                  let header = NinePHeader(message), Int(header.size) == message.count,
                  Array(stream[consumed..<(consumed + message.count)]) == message else {
                fatalError("framer produced a bad message")
            }
            consumed += message.count
        }
    }
    if consumed + framer.bufferedByteCount != stream.count { fatalError("framer lost bytes") }
}

private func checkDataReplies(_ input: [UInt8]) {
    let capacity = input.isEmpty ? 0 : Int(input[0]) * 37 % (input.count + 1)
    let message = NinePResponse.encodeData(type: .rread, tag: 0x1234, capacity: capacity) { buffer in
        let n = min(buffer.count, input.count)
        for i in 0..<n { buffer[i] = input[i] }
        return n
    }
    guard let (tag, response) = try? NinePResponse.decode(message), tag == 0x1234,
          response == .read(data: input[0..<min(capacity, input.count)]) else {
        fatalError("in-place Rread does not decode to what was written")
    }
}
