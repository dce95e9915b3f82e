import Foundation
// Swift Testing is not part of the static Swift runtime: test-only executables built with
// --static-swift-stdlib (pvfs-xen-test-backend, which runs in a Xen dom0) use the rest of this
// target without the slow-test traits.
#if canImport(Testing)
import Testing

extension Tag {
    /// A test that runs for more than about 20 seconds, or drives an outside workload (a QEMU
    /// guest, fio, stress-ng, pytest). Swift Testing cannot select tests by tag from the command
    /// line, so the tag labels them and `.slowTestsOnly` gates them.
    @Tag public static var slow: Self
}

#endif

public enum TestEnvironment {
    /// PVFS_SLOW_TESTS=1: run the tests tagged `.slow` too. `swift test` alone leaves them out so
    /// that it stays quick; scripts/test (what CI runs) sets it.
    public static let slowTestsEnabled = ProcessInfo.processInfo.environment["PVFS_SLOW_TESTS"] == "1"
}

#if canImport(Testing)
extension Trait where Self == ConditionTrait {
    /// Runs the suite or test only when PVFS_SLOW_TESTS=1; goes with `.tags(.slow)`.
    public static var slowTestsOnly: Self {
        .enabled(if: TestEnvironment.slowTestsEnabled, "slow: runs with PVFS_SLOW_TESTS=1 (scripts/test sets it)")
    }
}
#endif
