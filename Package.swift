// swift-tools-version: 6.1
// pvfs: VM root filesystems as files on one host volume.
//
// Layers depend one way only:
//   PVFSSystem (syscalls) → PVFSStore (blobs + catalog) → PVFSEngine (merged VM views)
//   → protocols (PVFS9P, PVFSFuse) → transports (PVFSTransport: sockets, Xen rings)
//   → PVFSDaemon / PVFSCommands → executables.
import PackageDescription

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
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        // C libraries from Debian and the few syscalls Swift cannot call directly.
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(name: "CPVFSSystem"),
        .target(name: "CFuse", linkerSettings: [.linkedLibrary("fuse3")]),
        .target(name: "CPVFSTransportIO"),
        .target(name: "CXen", linkerSettings: [
            .linkedLibrary("xenstore"), .linkedLibrary("xengnttab"), .linkedLibrary("xenevtchn"),
        ]),

        // Thin typed wrappers over Linux syscalls (openat family, xattrs, renameat2, ...).
        .target(name: "PVFSSystem", dependencies: [
            "CPVFSSystem",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Content-addressed blob store, SQLite catalog, template ingest/export, janitor.
        .target(name: "PVFSStore", dependencies: [
            "PVFSSystem", "CCrypto",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Copy-on-write merged views of VM roots: the one engine every transport serves.
        .target(name: "PVFSEngine", dependencies: ["PVFSStore"]),
        // The 9P2000.L wire format: constants, messages, framing. Standard library only, so that
        // fuzz/run-9p-decoder-fuzz.sh compiles it alone.
        .target(name: "PVFS9PCodec"),
        // Protocols: 9P2000.L (transport-neutral) and FUSE low-level.
        .target(name: "PVFS9P", dependencies: [
            "PVFS9PCodec", "PVFSEngine", "PVFSSystem",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The FUSE wire format and the seam between FUSE transports and servers; standard
        // library only, so that it compiles alone for fuzzing.
        .target(name: "PVFSFuseCodec"),
        // One FUSE server over VMView, whatever carries its requests (virtio-fs, /dev/fuse).
        .target(name: "PVFSFuseServer", dependencies: [
            "PVFSEngine", "PVFSFuseCodec",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The vhost-user-fs backend: control messages, guest memory, split virtqueues carrying
        // FUSE requests to any FuseMessageHandler.
        .target(name: "PVFSVhostUser", dependencies: [
            "PVFSFuseCodec", "CPVFSTransportIO",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Host mounts of VM views: /dev/fuse served by PVFSFuseServer (mount(2), reader threads).
        .target(name: "PVFSFuseHost", dependencies: [
            "PVFSFuseServer", "PVFSFuseCodec", "PVFSEngine", "PVFSSystem", "CPVFSTransportIO",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Host mounts through libfuse (the previous FUSE implementation, kept until the server
        // above has replaced it everywhere).
        .target(name: "PVFSFuse", dependencies: ["PVFSEngine", "PVFSFuseServer", "PVFSFuseHost", "CFuse"]),
        // Transports carrying 9P: TCP/Unix sockets and Xen PV 9pfs rings.
        .target(name: "PVFSTransport", dependencies: [
            "PVFS9PCodec", "PVFSSystem", "CXen",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The daemon's composition: control socket, configuration, metrics.
        .target(name: "PVFSDaemon", dependencies: [
            "PVFSTransport", "PVFSFuse", "PVFSEngine", "PVFS9P", "PVFS9PCodec", "PVFSVhostUser", "PVFSFuseServer",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Shared pieces of the command-line tools: --store, --json, progress, logging.
        .target(name: "PVFSCommands", dependencies: [
            "PVFSDaemon", "PVFSTransport", "PVFSVhostUser", "PVFSFuseServer",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        .executableTarget(name: "pvfs-template", dependencies: ["PVFSCommands"]),
        .executableTarget(name: "pvfs-vm", dependencies: ["PVFSCommands"]),
        .executableTarget(name: "pvfs", dependencies: ["PVFSCommands"]),
        .executableTarget(name: "pvfsd", dependencies: ["PVFSCommands"]),
        // Builds templates and VMs straight in a store's catalog for tests and benchmarks.
        .executableTarget(name: "pvfs-devtool", dependencies: ["PVFSStore"], path: "bench/pvfs-devtool"),
        // Writes files into a VM through the engine, for bench/dedup.sh and the command tests.
        .executableTarget(name: "pvfs-bench-writer", dependencies: ["PVFSEngine"], path: "bench/writer"),

        // What the test targets share: a 9P client, a diagnostic 9P server. Never a dependency of Sources.
        .target(name: "PVFSTestSupport", dependencies: [
            "PVFS9PCodec", "PVFSSystem", .product(name: "SystemPackage", package: "swift-system"),
        ], path: "Tests/PVFSTestSupport"),
        .testTarget(name: "PVFSSystemTests", dependencies: ["PVFSSystem"]),
        .testTarget(name: "PVFSStoreTests", dependencies: ["PVFSStore"]),
        .testTarget(name: "PVFSEngineTests", dependencies: ["PVFSEngine"]),
        .testTarget(name: "PVFS9PCodecTests", dependencies: ["PVFS9PCodec"]),
        .testTarget(name: "PVFS9PTests", dependencies: ["PVFS9P", "PVFS9PCodec", "PVFSTestSupport"]),
        .testTarget(name: "PVFSFuseTests", dependencies: ["PVFSFuse", "PVFSFuseHost"]),
        // The FUSE server, and the vhost-user transport in front of it with a simulated guest.
        .testTarget(name: "PVFSFuseServerTests", dependencies: ["PVFSFuseServer", "PVFSFuseCodec", "PVFSVhostUser", "CPVFSTransportIO", "PVFSDaemon"]),
        .testTarget(name: "PVFSTransportTests", dependencies: ["PVFSTransport", "PVFS9PCodec", "PVFS9P", "PVFSTestSupport"]),
        .testTarget(name: "PVFSCommandTests", dependencies: ["PVFSCommands", "PVFSTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
