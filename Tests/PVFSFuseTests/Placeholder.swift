import Testing
@testable import PVFSFuse

@Test func placeholder() {}
