import Foundation
import Glibc
import Logging
import PVFSStore
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine

/// Background removal of large private files: their space counts as free while they wait.
@Suite("File reaper")
struct FileReaperTests {
    @Test func queuedFilesCountAsFreeSpaceUntilRemoved() throws {
        let f = try EngineFixture()
        let vm = try f.provision("p")
        let area = try f.store.openVM(named: vm.name).area
        defer { area.close() }
        let ino: UInt64 = 4242
        let file = try area.openPrivateFile(ino, create: true)
        let chunk = [UInt8](repeating: 7, count: 1 << 20)
        for i in 0..<4 { _ = try chunk.withUnsafeBytes { (b) throws(Errno) in try file.write(b, at: Int64(i) << 20) } }
        try file.sync()
        file.closeQuietly()
        let allocated = try area.statPrivateFile(ino).blocks * 512
        #expect(allocated >= 4 << 20)

        let gate = DispatchSemaphore(value: 0)
        let reaper = FileReaper(logger: Logger(label: "test")) { gate.wait() }
        reaper.remove(ino, from: area)
        #expect(reaper.bytesPending == allocated)
        #expect((try? area.statPrivateFile(ino)) != nil)
        gate.signal()
        reaper.drain()
        #expect(reaper.bytesPending == 0)
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try area.statPrivateFile(ino) }
    }
}
