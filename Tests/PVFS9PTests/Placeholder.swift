import Testing
@testable import PVFS9P

@Test func placeholder() {}
