// swift-tools-version: 6.1
// pvfs: VM root filesystems as files on one host volume.
//
// Layers depend one way only:
//   PVFSSystem (syscalls) → PVFSStore (blobs + catalog) → PVFSEngine (merged VM views)
//   (PVFSImage reads container images into the store beside the engine: PVFSStore → PVFSImage)
//   → protocols (PVFS9P, PVFSFuse) → transports (PVFSTransport: sockets, Xen rings)
//   → PVFSDaemon / PVFSCommands → executables.
import PackageDescription

// Every target declares each module it imports, and nothing else (scripts/check-layers checks it,
// with the edges docs/design.md forbids).
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let grdb = Target.Dependency.product(name: "GRDB", package: "GRDB.swift")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")
let system = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let coreMetrics = Target.Dependency.product(name: "CoreMetrics", package: "swift-metrics")
let prometheus = Target.Dependency.product(name: "Prometheus", package: "swift-prometheus")

let package = Package(
    name: "pvfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "pvfs-template", targets: ["pvfs-template"]),
        .executable(name: "pvfs-vm", targets: ["pvfs-vm"]),
        .executable(name: "pvfs", targets: ["pvfs"]),
        .executable(name: "pvfsd", targets: ["pvfsd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        // C libraries from Debian and the few syscalls Swift cannot call directly.
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .target(name: "CPVFSSystem"),
        .target(name: "CFuse", linkerSettings: [.linkedLibrary("fuse3")]),
        .target(name: "CPVFSTransportIO"),
        .target(name: "CXen", linkerSettings: [
            .linkedLibrary("xenstore"), .linkedLibrary("xengnttab"), .linkedLibrary("xenevtchn"),
        ]),

        // Thin typed wrappers over Linux syscalls (openat family, xattrs, renameat2, ...).
        .target(name: "PVFSSystem", dependencies: ["CPVFSSystem", system]),
        // Content-addressed blob store, SQLite catalog, template ingest/export, janitor.
        .target(name: "PVFSStore", dependencies: ["PVFSSystem", "CPVFSSystem", "CCrypto", grdb, logging, system]),
        // Container images (OCI layouts, docker/podman archives) read into templates.
        .target(name: "PVFSImage", dependencies: ["PVFSStore", "PVFSSystem", "CArchive", logging, system]),
        // Copy-on-write merged views of VM roots: the one engine every transport serves.
        .target(name: "PVFSEngine", dependencies: ["PVFSStore", "PVFSSystem", logging, system]),
        // The 9P2000.L wire format: constants, messages, framing, the handler seam. Standard
        // library only, so that fuzz/run-9p-decoder-fuzz.sh compiles it alone.
        .target(name: "PVFS9PCodec"),
        // 9P2000.L requests mapped onto VMView (transport-neutral).
        .target(name: "PVFS9P", dependencies: ["PVFS9PCodec", "PVFSEngine", "PVFSSystem", coreMetrics, logging, system]),
        // The FUSE wire format and the seam between FUSE transports and servers; standard
        // library only, so that it compiles alone for fuzzing.
        .target(name: "PVFSFuseCodec"),
        // One FUSE server over VMView, whatever carries its requests (virtio-fs, /dev/fuse).
        .target(name: "PVFSFuseServer", dependencies: ["PVFSEngine", "PVFSFuseCodec", "PVFSSystem", logging, system]),
        // The vhost-user-fs backend: control messages, guest memory, split virtqueues carrying
        // FUSE requests to any FuseMessageHandler.
        .target(name: "PVFSVhostUser", dependencies: ["PVFSFuseCodec", "CPVFSTransportIO", logging]),
        // Host mounts of VM views: /dev/fuse served by PVFSFuseServer (mount(2), reader threads).
        .target(name: "PVFSFuseHost", dependencies: [
            "PVFSFuseServer", "PVFSFuseCodec", "PVFSEngine", "PVFSSystem", "CPVFSTransportIO", logging, system,
        ]),
        // Host mounts through libfuse (the previous FUSE implementation, kept until the server
        // above has replaced it everywhere).
        .target(name: "PVFSFuse", dependencies: [
            "PVFSEngine", "PVFSFuseServer", "PVFSFuseHost", "PVFSSystem", "CFuse", logging, system,
        ]),
        // Transports carrying 9P: TCP/Unix sockets and Xen PV 9pfs rings.
        .target(name: "PVFSTransport", dependencies: ["PVFS9PCodec", "PVFSSystem", "CXen", "CPVFSTransportIO", logging, system]),
        // The daemon's composition: control socket, configuration, metrics.
        .target(name: "PVFSDaemon", dependencies: [
            "PVFSTransport", "PVFSVhostUser", "PVFSFuse", "PVFSFuseServer", "PVFSFuseCodec", "PVFS9P", "PVFS9PCodec", "PVFSEngine",
            "PVFSStore", "PVFSSystem", "CPVFSTransportIO", prometheus, logging, system,
        ]),
        // Shared pieces of the command-line tools: --store, --json, progress, logging.
        .target(name: "PVFSCommands", dependencies: [
            "PVFSDaemon", "PVFSTransport", "PVFSFuse", "PVFSFuseServer", "PVFSVhostUser", "PVFSImage",
            "PVFSEngine", "PVFSStore", "PVFSSystem",
            argumentParser, logging, system,
        ]),

        .executableTarget(name: "pvfs-template", dependencies: ["PVFSCommands", argumentParser]),
        .executableTarget(name: "pvfs-vm", dependencies: ["PVFSCommands", argumentParser]),
        .executableTarget(name: "pvfs", dependencies: ["PVFSCommands", argumentParser]),
        .executableTarget(name: "pvfsd", dependencies: ["PVFSCommands"]),
        // Builds templates (from a host tree, in memory) and VMs in a store for benchmarks.
        .executableTarget(name: "pvfs-devtool", dependencies: ["PVFSStore", "PVFSSystem", system], path: "bench/pvfs-devtool"),
        // Writes files into a VM through the engine, for bench/dedup.sh and the command tests.
        .executableTarget(name: "pvfs-bench-writer", dependencies: ["PVFSEngine", "PVFSStore"], path: "bench/writer"),

        // What the test targets share: stores with template fixtures written through the store's API,
        // the one door to catalog SQL for tests that damage the catalog, the slow-test gate, a 9P
        // client and a diagnostic 9P server. Never a dependency of Sources.
        .target(name: "PVFSTestSupport", dependencies: ["PVFS9PCodec", "PVFSStore", "PVFSSystem", grdb, system],
                path: "Tests/PVFSTestSupport"),
        // Test helpers over the engine's VMView, shared by the test targets that drive it directly.
        .target(name: "PVFSEngineTestSupport", dependencies: ["PVFSEngine"], path: "Tests/PVFSEngineTestSupport"),
        // The Xen 9pfs backend serving NineDiagnosticResponder instead of pvfsd's 9P server, for the
        // nested-Xen transport check (Tests/guest/xen/run-xen-9pfs.sh --transport-check). Not a product:
        // never installed.
        .executableTarget(name: "pvfs-xen-test-backend", dependencies: [
            "PVFSTransport", "PVFS9PCodec", "PVFSTestSupport", argumentParser, logging,
        ], path: "Tests/guest/xen/test-backend"),
        // Each test target declares every module it imports (scripts/check-layers).
        .testTarget(name: "PVFSSystemTests", dependencies: ["PVFSSystem", "PVFSTestSupport", system]),
        .testTarget(name: "PVFSStoreTests", dependencies: ["PVFSStore", "PVFSSystem", grdb, system]),
        .testTarget(name: "PVFSEngineTests", dependencies: [
            "PVFSEngineTestSupport",
            "PVFSEngine", "PVFSStore", "PVFSSystem", "PVFSTestSupport", grdb, logging, system,
        ]),
        .testTarget(name: "PVFSImageTests", dependencies: [
            "PVFSImage", "PVFSStore", "PVFSSystem", "PVFSTestSupport", "CArchive", grdb, system,
        ]),
        .testTarget(name: "PVFS9PCodecTests", dependencies: ["PVFS9PCodec"]),
        .testTarget(name: "PVFS9PTests", dependencies: [
            "PVFSEngineTestSupport",
            "PVFS9P", "PVFS9PCodec", "PVFSTestSupport", "PVFSEngine", "PVFSStore", "PVFSSystem", logging, system,
        ]),
        .testTarget(name: "PVFSFuseTests", dependencies: [
            "PVFSFuse", "PVFSEngine", "PVFSStore", "PVFSSystem", "PVFSTestSupport", "CPVFSSystem", grdb, system,
        ]),
        // The FUSE server, and the vhost-user transport in front of it with a simulated guest.
        .testTarget(name: "PVFSFuseServerTests", dependencies: [
            "PVFSFuseServer", "PVFSFuseCodec", "PVFSVhostUser", "CPVFSTransportIO", "PVFSDaemon", "PVFSEngine", "PVFSStore",
            "PVFSSystem", "PVFSTestSupport", logging, system,
        ]),
        .testTarget(name: "PVFSTransportTests", dependencies: [
            "PVFSEngineTestSupport",
            "PVFSTransport", "PVFS9P", "PVFS9PCodec", "PVFSTestSupport", "PVFSEngine", "PVFSStore", "PVFSSystem", "CXen",
            logging, system,
        ]),
        .testTarget(name: "PVFSCommandTests", dependencies: [
            "PVFSEngineTestSupport",
            "PVFSCommands", "PVFSDaemon", "PVFSTransport", "PVFS9P", "PVFS9PCodec", "PVFSTestSupport", "PVFSEngine",
            "PVFSStore", "PVFSSystem", grdb, logging, system,
        ]),
    ],
    swiftLanguageModes: [.v6]
)
