import Testing
@testable import PVFS9PCodec

@Suite("9P framing")
struct FramingTests {
    let messages: [[UInt8]] = sampleRequests.enumerated().map { $0.element.encode(tag: UInt16($0.offset)) }
        + [NinePRequest.write(fid: 1, offset: 0, data: [UInt8](repeating: 0xAB, count: 200_000)[...]).encode(tag: 99)]

    private func drain(_ framer: inout NinePMessageFramer) throws -> [[UInt8]] {
        var out: [[UInt8]] = []
        while let m = try framer.next() { out.append(m) }
        return out
    }

    @Test func wholeStreamAtOnce() throws {
        var framer = NinePMessageFramer(maximumMessageSize: 1 << 20)
        framer.append(contentsOf: messages.joined())
        #expect(try drain(&framer) == messages)
        #expect(framer.bufferedByteCount == 0)
    }

    @Test func oneByteAtATime() throws {
        var framer = NinePMessageFramer(maximumMessageSize: 1 << 20)
        var out: [[UInt8]] = []
        let stream = Array(messages.joined())
        for b in stream {
            #expect(framer.bytesNeeded > 0)
            framer.append(contentsOf: [b])
            out += try drain(&framer)
        }
        #expect(out == messages)
        #expect(framer.bytesNeeded == NineP.headerSize)
    }

    @Test func randomSplits() throws {
        var rng = SplitMix(seed: 42)
        let stream = Array(messages.joined())
        for _ in 0..<50 {
            var framer = NinePMessageFramer(maximumMessageSize: 1 << 20)
            var out: [[UInt8]] = []
            var i = 0
            while i < stream.count {
                let n = min(stream.count - i, 1 + Int(rng.next() % 3000))
                stream[i..<(i + n)].withUnsafeBytes { framer.append($0) }
                i += n
                out += try drain(&framer)
            }
            #expect(out == messages)
        }
    }

    @Test func sizesOutOfBoundsFailEarly() {
        var framer = NinePMessageFramer(maximumMessageSize: 8192)
        framer.append(contentsOf: [6, 0, 0, 0])
        #expect(throws: NinePFramingError.messageTooShort(6)) { try framer.next() }

        var big = NinePMessageFramer(maximumMessageSize: 8192)
        // Only the size field has arrived: the error comes before any body is awaited.
        big.append(contentsOf: [0x01, 0x20, 0, 0])
        #expect(throws: NinePFramingError.messageTooLarge(8193, limit: 8192)) { try big.next() }

        var huge = NinePMessageFramer(maximumMessageSize: 8192)
        huge.append(contentsOf: [0xFF, 0xFF, 0xFF, 0xFF, 100])
        #expect(throws: NinePFramingError.self) { try huge.next() }
    }

    @Test func limitFollowsNegotiation() throws {
        var framer = NinePMessageFramer(maximumMessageSize: 1 << 20)
        let write = NinePRequest.write(fid: 1, offset: 0, data: [UInt8](repeating: 1, count: 10_000)[...]).encode(tag: 1)
        framer.append(contentsOf: write)
        framer.maximumMessageSize = 8192
        #expect(throws: NinePFramingError.self) { try framer.next() }
        framer.maximumMessageSize = 16384
        #expect(try framer.next() == write)
    }
}

/// A small seeded generator (SplitMix64), so that randomized tests repeat exactly.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
