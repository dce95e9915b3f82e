import Testing
@testable import PVFSStore

@Test func placeholder() {}
