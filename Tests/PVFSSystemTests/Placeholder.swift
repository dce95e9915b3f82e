import Testing
@testable import PVFSSystem

@Test func placeholder() {}
