import PVFS9PCodec
import Testing
@testable import PVFS9P

@Suite("9P onto the engine: translations")
struct EngineMappingTests {
    @Test func openFlagsTranslate() {
        // x86-64's O_* equal the wire values; the translation must still drop what the engine
        // cannot honour and keep the rest.
        let flags = NinePOpenFlags(rawValue: NinePOpenFlags.readWrite | 0o1000 | 0o2000 | 0o40000 | 0o100000 | 0o2000000)
        #expect(flags.hostFlags == 0o2 | 0o1000 | 0o2000)
        #expect(NinePOpenFlags(rawValue: 3).hostFlags == 3)
        #expect(NinePOpenFlags(rawValue: 0o200000).hostFlags == 0o200000)
    }
}
