import Foundation
import PVFSTestSupport
import Testing

/// The project's POSIX conformance suite (Tests/posix, pytest) against a real mount of a VM.
@Suite("POSIX conformance over FUSE", .serialized, .tags(.slow), .slowTestsOnly)
struct PosixSuiteTests {
    func runSuite(caching: FuseMountOptionsCaching) throws {
        let f = try FuseFixture()
        try f.provision("posix")
        let vm = try f.mount("posix", caching: caching.value)
        defer { try? vm.unmount() }
        let result = try run("/usr/bin/env", [
            "python3", "-m", "pytest", FuseFixture.repository + "/Tests/posix", "--root", vm.path + "/posix",
            "-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic",
        ])
        if result.status != 0 { print(result.output) }
        #expect(result.status == 0, "pytest failed:\n\(result.output.suffix(6000))")
        let summary = result.output.split(separator: "\n").last { $0.contains("passed") } ?? "no summary"
        print("posix suite (\(caching)): \(summary)")
    }

    @Test func exclusiveCaching() throws {
        try runSuite(caching: .exclusive)
    }

    /// The caching a mount shared with guest sessions uses: short timeouts, no page cache kept
    /// across opens. Semantics must not depend on it.
    @Test func sharedCaching() throws {
        try runSuite(caching: .shared)
    }
}

enum FuseMountOptionsCaching: CustomStringConvertible {
    case exclusive
    case shared

    var value: PVFSFuse.FuseMountOptions.Caching {
        switch self {
        case .exclusive: .exclusive
        case .shared: .shared(timeout: 1)
        }
    }

    var description: String { self == .exclusive ? "exclusive" : "shared, 1 s" }
}

import PVFSFuse
