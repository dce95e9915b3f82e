import Testing
@testable import PVFSTransport

@Test func placeholder() {}
