import Foundation
import Logging
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import Testing
@testable import PVFSEngine
@testable import PVFSStore

/// One template image per template tree, shared by every open volume of it (`TemplateImageCache`).
@Suite struct TemplateImageCacheTests {
    let logger = Logger(label: "test")
    let guest = SessionPolicy(side: .guest)

    @Test func volumesOfOneTemplateShareOneImage() throws {
        let f = try EngineFixture()
        for name in ["a", "b", "c"] { _ = try f.provision(name) }
        var other = TemplateTree()
        other.directory(1)
        other.file(2, content: "other\n")
        other.entry(1, "file", 2)
        try f.store.createTemplate(name: "other", tree: other)
        _ = try f.store.provisionVM(name: "d", template: "other")
        let registry = try VolumeRegistry(store: f.store, logger: logger, templateImageRetention: .milliseconds(300))

        let views = try ["a", "b", "c"].map { try registry.openSession(vm: $0, policy: guest) }
        let image = views[0].volume.template
        #expect(views.allSatisfy { $0.volume.template === image })
        #expect(registry.templateImages.heldImages == [image.identity: 3])
        #expect(registry.templateImages.loads == 1)
        // Every VM still sees its own overlay over the shared tree.
        try views[0].writeFile("/etc/hostname", "changed\n")
        #expect(try views[0].readText("/etc/hostname") == "changed\n")
        #expect(try views[1].readText("/etc/hostname") == "template-host\n")
        // The template's blob hashes live in the image, not in each volume.
        #expect(views[1].volume.blobHashes.isEmpty && !image.blobHashes.isEmpty)

        let d = try registry.openSession(vm: "d", policy: guest)
        #expect(d.volume.template !== image)
        #expect(try d.readText("/file") == "other\n")
        #expect(registry.templateImages.loads == 2)
        registry.closeSession(d)

        // A second session of an open VM and a reopened VM take the same image.
        let again = try registry.openSession(vm: "a", policy: guest)
        #expect(again.volume.template === image)
        registry.closeSession(again)
        registry.closeSession(views[2])
        let c = try registry.openSession(vm: "c", policy: guest)
        #expect(c.volume.template === image)
        #expect(registry.templateImages.loads == 2)
        registry.closeSession(c)
        for view in views.prefix(2) { registry.closeSession(view) }
    }

    @Test func anImageIsDroppedAfterItsLastVolumeClosesAndTheIdleTime() throws {
        let f = try EngineFixture()
        for name in ["a", "b"] { _ = try f.provision(name) }
        let registry = try VolumeRegistry(store: f.store, logger: logger, templateImageRetention: .milliseconds(400))
        weak var image: TemplateImage?
        var identity: TemplateIdentity?
        try {
            let a = try registry.openSession(vm: "a", policy: guest)
            let b = try registry.openSession(vm: "b", policy: guest)
            image = a.volume.template
            identity = a.volume.template.identity
            registry.closeSession(a)
            #expect(registry.templateImages.heldImages == [identity!: 1])
            registry.closeSession(b)
        }()
        let held = try #require(identity)
        // Idle, kept for a guest that comes back at once.
        #expect(registry.templateImages.heldImages == [held: 0])
        #expect(image != nil)
        try {
            let back = try registry.openSession(vm: "a", policy: guest)
            #expect(back.volume.template === image)
            #expect(registry.templateImages.loads == 1)
            registry.closeSession(back)
        }()

        let deadline = Date(timeIntervalSinceNow: 10)
        while !registry.templateImages.heldImages.isEmpty && Date() < deadline { usleep(20_000) }
        #expect(registry.templateImages.heldImages.isEmpty)
        #expect(image == nil)
        // The next volume loads it again.
        let fresh = try registry.openSession(vm: "b", policy: guest)
        #expect(registry.templateImages.loads == 2)
        #expect(try fresh.readText("/etc/hostname") == "template-host\n")
        registry.closeSession(fresh)
    }

    @Test func concurrentOpensLoadTheImageOnce() throws {
        let f = try EngineFixture()
        let names = (0..<8).map { "vm\($0)" }
        for name in names { _ = try f.provision(name) }
        let registry = try VolumeRegistry(store: f.store, logger: logger)
        let started = Locked(0)
        // A slow load: every other opener arrives while it runs.
        registry.templateImages.willLoad = { _ in
            started.withLock { $0 += 1 }
            usleep(300_000)
        }
        let views = Locked<[VMView]>([])
        let failures = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: names.count) { i in
            do {
                let view = try registry.openSession(vm: names[i], policy: guest)
                views.withLock { $0.append(view) }
            } catch {
                failures.withLock { $0.append("\(names[i]): \(error)") }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty)
        let opened = views.withLock { $0 }
        #expect(opened.count == names.count)
        #expect(started.withLock { $0 } == 1)
        #expect(registry.templateImages.loads == 1)
        let image = try #require(opened.first?.volume.template)
        #expect(opened.allSatisfy { $0.volume.template === image })
        #expect(registry.templateImages.heldImages == [image.identity: names.count])
        for view in opened { registry.closeSession(view) }
        #expect(registry.templateImages.heldImages == [image.identity: 0])
    }

    /// A template removed and created again under its name (and, as SQLite reuses the largest
    /// rowid, under its id) is a new tree: its VMs never see the old image.
    @Test func aRemovedTemplatesImageIsNotReusedForItsSuccessor() throws {
        let f = try EngineFixture()
        func tree(_ content: String) -> TemplateTree {
            var t = TemplateTree()
            t.directory(1)
            t.directory(2)
            t.file(3, content: content)
            t.entry(1, "etc", 2)
            t.entry(2, "motd", 3)
            return t
        }
        let first = try f.store.createTemplate(name: "t", tree: tree("first\n"))
        _ = try f.store.provisionVM(name: "a", template: "t")
        let registry = try VolumeRegistry(store: f.store, logger: logger, templateImageRetention: .seconds(60))
        let a = try registry.openSession(vm: "a", policy: guest)
        #expect(try a.readText("/etc/motd") == "first\n")
        let old = a.volume.template.identity
        registry.closeSession(a)
        #expect(registry.templateImages.heldImages == [old: 0])

        try f.store.removeVM(named: "a")
        _ = try f.store.removeTemplate(named: "t")
        let second = try f.store.createTemplate(name: "t", tree: tree("second\n"))
        #expect(second.id == first.id)  // the case that makes an id alone unsafe as a key
        _ = try f.store.provisionVM(name: "a", template: "t")
        let b = try registry.openSession(vm: "a", policy: guest)
        #expect(try b.readText("/etc/motd") == "second\n")
        #expect(b.volume.template.identity != old)
        #expect(registry.templateImages.loads == 2)
        #expect(registry.templateImages.heldImages == [b.volume.template.identity: 1])
        registry.closeSession(b)
    }

    /// Volumes opened without a cache (a standalone mount, tools) load their own image.
    @Test func aVolumeWithoutACacheLoadsItsOwnImage() throws {
        let f = try EngineFixture()
        for name in ["a", "b"] { _ = try f.provision(name) }
        let a = try f.view("a")
        let b = try f.view("b")
        #expect(a.volume.template !== b.volume.template)
        #expect(try a.readText("/etc/deep/a/file") == "deep\n")
        let listing = try a.readDirectory(2, after: 0, limit: .max, as: .root).map { String(decoding: $0.name, as: UTF8.self) }
        #expect(Set(listing) == [".", "..", "hostname", "hard-a", "hard-b", "deep"])
        try a.volume.close()
        try b.volume.close()
    }
}
