import Foundation
import Glibc
import Logging
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine

/// Background removal of large private files: their space counts as free while they wait.
@Suite("File reaper")
struct FileReaperTests {
    @Test func queuedFilesCountAsFreeSpaceUntilRemoved() throws {
        var template = Array("/tmp/pvfs-reaper-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        let path = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let directory = try FileDescriptor.open(at: .currentDirectory, path, [.directory, .readOnly])
        defer { directory.closeQuietly() }
        let file = try FileDescriptor.open(at: directory, "big", [.readWrite, .create, .exclusive], mode: 0o600)
        let chunk = [UInt8](repeating: 7, count: 1 << 20)
        for i in 0..<4 { _ = try chunk.withUnsafeBytes { (b) throws(Errno) in try file.write(b, at: Int64(i) << 20) } }
        try file.sync()
        file.closeQuietly()
        let allocated = try directory.stat(at: "big").blocks * 512
        #expect(allocated >= 4 << 20)

        let gate = DispatchSemaphore(value: 0)
        let reaper = FileReaper(logger: Logger(label: "test")) { gate.wait() }
        reaper.remove(at: directory, "big")
        #expect(reaper.bytesPending == allocated)
        #expect((try? directory.stat(at: "big")) != nil)
        gate.signal()
        reaper.drain()
        #expect(reaper.bytesPending == 0)
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try directory.stat(at: "big") }
    }
}
