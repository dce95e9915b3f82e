import Foundation
import Glibc
import PVFS9P
import PVFS9PCodec
import PVFSTestSupport
import PVFSEngine
import SystemPackage
import Testing
@testable import PVFSTransport

/// What a client sees when the server stops under it.
@Suite("Socket server stop", .serialized)
struct SocketServerStopTests {
    /// Twelve clients hold a lock each and twelve others wait for them. When the server stops,
    /// every connection ends; the holders' locks go with them, and a waiter must not be told it
    /// got one just before its own connection ends (the server used to shut the sockets one
    /// after the other, so a holder's end could grant its lock to a waiter still connected).
    @Test func stopGrantsNoLockToAConnectionItEnds() throws {
        var nine = NinePConfiguration()
        nine.lockWaitSeconds = .infinity
        for round in 0..<5 {
            let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)], nine: nine)
            try s.start()
            var fds: [Int32] = []
            var waits: [NinePClient.Pending] = []
            // The clients must live on: a client's reader stops once it is gone.
            var clients: [NinePClient] = []
            for pair in 0..<12 {
                let holderFD = try connectTCP(s.tcpPort)
                let waiterFD = try connectTCP(s.tcpPort)
                fds += [holderFD, waiterFD]
                let holder = client(holderFD), waiter = client(waiterFD)
                clients += [holder, waiter]
                for c in [holder, waiter] {
                    _ = try c.version()
                    _ = try c.attach(fid: 0)
                }
                _ = try holder.walk(fid: 0, newFid: 1, [])
                _ = try holder.lcreate(fid: 1, name: "lock\(pair)", flags: 2, mode: 0o644)
                _ = try holder.lock(fid: 1, NinePLock(type: 1, flags: 0, start: 0, length: 0, processID: 1, clientID: bytes("h")))
                _ = try waiter.walk(fid: 0, newFid: 1, ["lock\(pair)"])
                _ = try waiter.lopen(fid: 1, flags: 2)
                waits.append(try waiter.start(.lock(fid: 1, NinePLock(type: 1, flags: 1, start: 0, length: 0, processID: 2,
                                                                          clientID: bytes("w")))))
            }
            usleep(50_000)
            #expect(waits.allSatisfy { !$0.isAnswered })
            s.finish()
            #expect(s.fixture.openHandleCount == 0)
            for (pair, wait) in waits.enumerated() {
                // The end of the stream, not a timeout and not a granted lock.
                do {
                    let response = try wait.wait(timeout: 5)
                    Issue.record("round \(round), pair \(pair): \(response) as the server stopped")
                } catch {
                    #expect(error != .timedOut, "round \(round), pair \(pair): no end of stream")
                }
            }
            for fd in fds { close(fd) }
        }
    }
}
