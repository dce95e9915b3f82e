import Foundation
import PVFSEngineTestSupport
import PVFSSystem
import SystemPackage
import Testing
@testable import PVFSEngine

/// A session's locks, listed by the server handing it over and taken again by the one taking it.
@Suite("lock records across a hand-over")
struct LockHandOverTests {
    @Test func heldLocksAreListedPerSessionAndTakenAgainInTheNextProcess() throws {
        let f = try EngineFixture()
        _ = try f.provision("l")
        let volume = try Volume.open(store: f.store, vmName: "l")
        let a = VMView(volume: volume, policy: SessionPolicy(side: .guest), sessionID: 1)
        let b = VMView(volume: volume, policy: SessionPolicy(side: .guest), sessionID: 2)
        let file = try a.createFile("", "db", "data\n").inode
        let other = try a.createFile("", "log", "log\n").inode
        try a.setLock(file, owner: 7, range: FileLockRange(type: .write, start: 0, end: 99, pid: 41), wait: false)
        try a.setLock(file, owner: 8, range: FileLockRange(type: .read, start: 200, end: .max, pid: 42), wait: false)
        try a.setLock(other, owner: 7, range: FileLockRange(type: .read, start: 0, end: .max, pid: 41), wait: false)
        try b.setLock(other, owner: 7, range: FileLockRange(type: .read, start: 0, end: .max, pid: 90), wait: false)
        let exported = a.heldLocks()
        #expect(exported == [
            HeldLock(inode: file, owner: 7, range: FileLockRange(type: .write, start: 0, end: 99, pid: 41)),
            HeldLock(inode: file, owner: 8, range: FileLockRange(type: .read, start: 200, end: .max, pid: 42)),
            HeldLock(inode: other, owner: 7, range: FileLockRange(type: .read, start: 0, end: .max, pid: 41)),
        ])
        #expect(b.heldLocks() == [HeldLock(inode: other, owner: 7, range: FileLockRange(type: .read, start: 0, end: .max, pid: 90))])
        // The hand-over carries them as JSON.
        let json = try JSONEncoder().encode(exported)
        let carried = try JSONDecoder().decode([HeldLock].self, from: json)
        #expect(carried == exported)
        try volume.close()

        let next = try Volume.open(store: f.store, vmName: "l")
        let restored = VMView(volume: next, policy: SessionPolicy(side: .guest), sessionID: 10)
        let stranger = VMView(volume: next, policy: SessionPolicy(side: .guest), sessionID: 11)
        for lock in carried { try restored.setLock(lock.inode, owner: lock.owner, range: lock.range, wait: false) }
        #expect(restored.heldLocks() == exported)
        #expect(throws: Errno.resourceTemporarilyUnavailable) {
            try stranger.setLock(file, owner: 1, range: FileLockRange(type: .write, start: 50, end: 60, pid: 5), wait: false)
        }
        #expect(throws: Errno.resourceTemporarilyUnavailable) {
            try stranger.setLock(file, owner: 1, range: FileLockRange(type: .write, start: 300, end: 310, pid: 5), wait: false)
        }
        #expect(stranger.testLock(file, owner: 1, range: FileLockRange(type: .read, start: 50, end: 60, pid: 5))?.pid == 41)
        // Outside the carried ranges the file is free.
        try stranger.setLock(file, owner: 1, range: FileLockRange(type: .write, start: 100, end: 199, pid: 5), wait: false)
        // Owners stay apart as before: the same owner id in another session is another owner.
        #expect(stranger.heldLocks().count == 1)
        restored.releaseAllLocks()
        #expect(restored.heldLocks().isEmpty)
        try stranger.setLock(file, owner: 1, range: FileLockRange(type: .write, start: 0, end: 99, pid: 5), wait: false)
        try next.close()
    }
}
