import Testing
@testable import PVFSEngine

@Test func placeholder() {}
