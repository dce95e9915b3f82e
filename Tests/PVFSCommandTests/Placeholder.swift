import Testing
@testable import PVFSCommands

@Test func placeholder() {}
