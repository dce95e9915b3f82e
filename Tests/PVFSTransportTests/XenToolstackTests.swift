import Foundation
import Testing
@testable import PVFSTransport

@Suite("Xen toolstack nodes")
struct XenToolstackTests {
    func store() throws -> FakeXenStore {
        let store = FakeXenStore(liveDomains: [3])
        store.set("/local/domain/3/name", "guest")
        return store
    }

    @Test func attachWritesWhatLibxlWrites() throws {
        let store = try store()
        let attached = try XenToolstack.attach(.init(vmName: "web-1", domid: 3, tag: "pvfs-root"), store: store)
        #expect(attached.devid == 0)
        let be = "/local/domain/0/backend/9pfs/3/0"
        let fe = "/local/domain/3/device/9pfs/0"
        #expect(attached.paths.backend == be)
        #expect(attached.paths.frontend == fe)
        let expectedBackend = ["frontend": fe, "frontend-id": "3", "online": "1", "state": "1", "path": "web-1",
                               "security_model": "none", "tag": "pvfs-root"]
        for (key, value) in expectedBackend { #expect(store.get("\(be)/\(key)") == value, "\(key)") }
        #expect(try store.list(be, in: .none)?.sorted() == expectedBackend.keys.sorted())
        let expectedFrontend = ["backend": be, "backend-id": "0", "state": "1", "tag": "pvfs-root"]
        for (key, value) in expectedFrontend { #expect(store.get("\(fe)/\(key)") == value, "\(key)") }
        #expect(try store.list(fe, in: .none)?.sorted() == expectedFrontend.keys.sorted())
        #expect(store.get("/libxl/3/device/9pfs/0/backend") == be)
        #expect(store.get("/libxl/3/device/9pfs/0/frontend") == fe)
        #expect(store.get("/libxl/3/device/9pfs/0/path") == "web-1")

        // Backend: owned by the backend domain, readable by the guest (nodes inherit).
        let backendPerms = [XenStorePermission(domid: 0, access: .none), XenStorePermission(domid: 3, access: .read)]
        #expect(store.permissions[be] == backendPerms)
        #expect(store.permissions["\(be)/state"] == backendPerms)
        // Frontend: owned by the guest, readable by the backend.
        let frontendPerms = [XenStorePermission(domid: 3, access: .none), XenStorePermission(domid: 0, access: .read)]
        #expect(store.permissions[fe] == frontendPerms)
        for key in expectedFrontend.keys { #expect(store.permissions["\(fe)/\(key)"] == frontendPerms, "\(key)") }
        #expect(backendPerms.map(\.description) == ["n0", "r3"])
    }

    @Test func attachPicksTheLowestFreeIndexAndRefusesClashes() throws {
        let store = try store()
        try XenToolstack.attach(.init(vmName: "a", domid: 3, tag: "t"), store: store)
        try XenToolstack.attach(.init(vmName: "b", domid: 3, devid: 2, tag: "t"), store: store)
        #expect(try XenToolstack.attach(.init(vmName: "c", domid: 3, tag: "t"), store: store).devid == 1)
        #expect(throws: XenToolstack.Failure.deviceExists("/local/domain/0/backend/9pfs/3/2")) {
            try XenToolstack.attach(.init(vmName: "d", domid: 3, devid: 2, tag: "t"), store: store)
        }
        #expect(try XenToolstack.devices(of: "b", domid: 3, store: store) == [2])
    }

    @Test func attachValidatesItsArguments() throws {
        let store = try store()
        #expect(throws: XenToolstack.Failure.noSuchDomain(9)) {
            try XenToolstack.attach(.init(vmName: "a", domid: 9, tag: "t"), store: store)
        }
        for tag in ["", "a b", "a/b", String(repeating: "x", count: 64), "ü"] {
            #expect(throws: XenToolstack.Failure.self) { try XenToolstack.attach(.init(vmName: "a", domid: 3, tag: tag), store: store) }
        }
        #expect(throws: XenToolstack.Failure.self) { try XenToolstack.attach(.init(vmName: "a/b", domid: 3, tag: "t"), store: store) }
        #expect(throws: XenToolstack.Failure.self) { try XenToolstack.attach(.init(vmName: "a", domid: 0, tag: "t"), store: store) }
        #expect(throws: XenToolstack.Failure.self) { try XenToolstack.attach(.init(vmName: "a", domid: 0x7FF0, tag: "t"), store: store) }
    }

    @Test func detachWaitsForTheBackendsClosed() throws {
        let store = try store()
        try XenToolstack.attach(.init(vmName: "a", domid: 3, tag: "t"), store: store)
        let be = "/local/domain/0/backend/9pfs/3/0"
        store.set("\(be)/state", "4")
        // A backend that answers Closing with Closed a little later.
        let responder = Thread {
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline {
                if store.get("\(be)/state") == "5" && store.get("\(be)/online") == "0" {
                    usleep(20_000)
                    store.set("\(be)/state", "6")
                    return
                }
                usleep(1000)
            }
        }
        responder.start()
        let outcome = try XenToolstack.detach(domid: 3, devid: 0, timeout: .seconds(5), store: store)
        #expect(outcome == .closedByBackend)
        #expect(store.get(be) == nil)
        #expect(store.get("/local/domain/0/backend/9pfs/3") == nil)
        #expect(store.get("/local/domain/3/device/9pfs/0") == nil)
        #expect(store.get("/libxl/3/device/9pfs/0") == nil)
        #expect(store.get("/local/domain/3/name") == "guest")
    }

    @Test func detachTimesOutOrSkipsTheHandshakeWhenItMust() throws {
        let store = try store()
        try XenToolstack.attach(.init(vmName: "a", domid: 3, tag: "t"), store: store)
        #expect(try XenToolstack.detach(domid: 3, devid: 0, timeout: .milliseconds(100), store: store) == .timedOut)
        try XenToolstack.attach(.init(vmName: "a", domid: 3, tag: "t"), store: store)
        store.liveDomains = []
        #expect(try XenToolstack.detach(domid: 3, devid: 0, store: store) == .removedWithoutHandshake)
        #expect(throws: XenToolstack.Failure.self) { try XenToolstack.detach(domid: 3, devid: 0, store: store) }
    }
}
