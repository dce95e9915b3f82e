import ArgumentParser
import Foundation
import Logging
import PVFSDaemon
import PVFSEngine
import PVFSStore
import PVFSSystem
import SystemPackage

// `pvfs`: the store's maintenance (docs/janitor.md): dedup, gc, fsck, df, status.

func seconds(_ value: Double) -> String { String(format: "%.2f s", value) }

public struct Dedup: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Share identical files that VMs wrote: identical private files become one copy-on-write blob.",
        discussion: """
            Hashes the private files of the VMs named (or of all VMs) whose size another file or a stored blob \
            has, and turns each group of identical files (or a file identical to a template's or an earlier \
            dedup's blob) into references to one blob. A later write copies the file up again, for that VM only. \
            Files open for writing, or written meanwhile, are left alone: every replacement is verified byte for \
            byte. VMs served by pvfsd are deduplicated through it; VMs nobody uses are opened (and locked) for \
            the run; VMs mounted by another process are skipped.
            Exit codes: 0 done, 1 failure, 3 no such VM, 4 some VMs were in use by a process other than pvfsd.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Option(name: .long, help: ArgumentHelp("A VM to deduplicate (repeatable).", valueName: "name"))
    public var vm: [String] = []

    @Flag(name: .long, help: "Deduplicate every VM.")
    public var all = false

    @Option(name: .long, help: ArgumentHelp("Leave files smaller than this alone.", valueName: "size"))
    public var minSize: String = "4K"

    @Flag(name: .long, help: "Report what would be shared; change nothing.")
    public var dryRun = false

    @Flag(name: .long, help: "Copy content into new blobs even where the filesystem could clone it.")
    public var noReflink = false

    public init() {}

    public func validate() throws {
        if vm.isEmpty && !all { throw ValidationError("name VMs with --vm, or give --all") }
        if !vm.isEmpty && all { throw ValidationError("--vm and --all exclude each other") }
        guard let size = parseSize(minSize), size >= 0 else { throw ValidationError("invalid --min-size '\(minSize)'") }
        _ = size
    }

    public func run() throws {
        try withStore(log: "pvfs.dedup") { store, logger in
            let vms = all ? try store.listVMs() : try vm.map { try store.requireVM(named: $0) }
            let client = DaemonClient(storePath: storeOptions.storePath)
            var targets: [any DedupTarget] = []
            var volumes: [Volume] = []
            // The VMs of one template share its image while they are open together.
            let templateImages = TemplateImageCache(store: store, idleRetention: .zero, logger: logger)
            defer {
                for volume in volumes {
                    do { try volume.close() } catch { logger.error("closing VM \(volume.name): \(error)") }
                }
            }
            for record in vms {
                do {
                    let volume = try Volume.open(store: store, vmName: record.name, logger: logger, templateImages: templateImages)
                    volumes.append(volume)
                    targets.append(VolumeDedupTarget(volume))
                } catch let error as PVFSError where error.domain == .store && error.errno == .resourceBusy {
                    // Held by another process: the daemon, if it serves it (asked when listing).
                    targets.append(ServedOrLocalDedupTarget(daemon: DaemonDedupTarget(client: client, store: store, vm: record), logger: logger))
                }
            }
            defer {
                for case let target as ServedOrLocalDedupTarget in targets { target.close() }
            }
            var options = DedupOptions()
            options.minimumSize = parseSize(minSize) ?? 4096
            options.dryRun = dryRun
            options.reflink = !noReflink
            let report = try store.deduplicate(targets, options: options)
            let skippedVMs = report.vms.filter { $0.error != nil }
            try output.emit(report) {
                print(Self.summary(report))
            }
            for vm in skippedVMs {
                FileHandle.standardError.write(Data("warning: VM \(vm.name) skipped: \(vm.error!)\n".utf8))
            }
            if !skippedVMs.isEmpty { throw PVFSExitCode.conflict }
        }
    }

    static func summary(_ r: DedupReport) -> String {
        let verb = r.dryRun ? "would share" : "shared"
        var lines = ["dedup of \(r.vms.count) VM(s): \(r.candidates) private files of at least the minimum size, "
                     + "\(r.hashedFiles) hashed (\(formatBytes(r.hashedBytes)))"]
        if r.filesDeduplicated == 0 {
            lines.append("nothing to share")
        } else {
            lines.append("\(verb) \(r.filesDeduplicated) files (\(formatBytes(r.logicalBytes))) in \(r.groups) groups of identical content: "
                         + "\(r.newBlobs) new blobs (\(formatBytes(r.newBlobBytes))), \(r.existingBlobsReused) existing blobs reused")
            lines.append("\(r.dryRun ? "would save" : "saved") \(formatBytes(r.bytesSaved)) of disk space")
        }
        if r.skippedBusy + r.skippedChanged + r.skippedGone > 0 {
            lines.append("left alone: \(r.skippedBusy) open for writing, \(r.skippedChanged) changed meanwhile, \(r.skippedGone) removed meanwhile")
        }
        let rows = r.vms.filter { $0.error == nil }.map { [$0.name, "\($0.candidates)", "\($0.filesDeduplicated)", formatBytes($0.bytesDeduplicated)] }
        if rows.count > 1 {
            lines.append("")
            var widths = [2, 10, 6, 5]
            let header = ["VM", "CANDIDATES", "SHARED", "BYTES"]
            for row in [header] + rows { for (i, c) in row.enumerated() { widths[i] = max(widths[i], c.count) } }
            for row in [header] + rows {
                lines.append(row.enumerated().map { i, c in i == 0 ? c.padding(toLength: widths[i], withPad: " ", startingAt: 0) : c.leftPad(widths[i]) }
                    .joined(separator: "  "))
            }
        }
        lines.append("in \(seconds(r.seconds))")
        return lines.joined(separator: "\n")
    }
}

/// A VM another process held when dedup started: the daemon's, when it serves it; if the daemon
/// does not (it closed the VM meanwhile), the VM is opened here when it is free by then.
final class ServedOrLocalDedupTarget: DedupTarget, @unchecked Sendable {
    let daemon: DaemonDedupTarget
    let logger: Logger
    private var local: VolumeDedupTarget?

    init(daemon: DaemonDedupTarget, logger: Logger) {
        self.daemon = daemon
        self.logger = logger
    }

    var vmName: String { daemon.vmName }
    private var current: any DedupTarget { local ?? daemon }

    func dedupCandidates(minimumSize: Int64) throws -> [DedupCandidate] {
        do {
            return try daemon.dedupCandidates(minimumSize: minimumSize)
        } catch let error as MaintenanceClientError {
            switch error {
            case .noDaemon, .notServed:
                let volume: Volume
                do {
                    volume = try Volume.open(store: daemon.store, vmName: vmName, logger: logger)
                } catch let busy as PVFSError where busy.domain == .store && busy.errno == .resourceBusy {
                    throw CommandFailure("VM \(vmName) is in use by a process other than pvfsd (a FUSE mount?)", exitCode: PVFSExitCode.conflict)
                }
                local = VolumeDedupTarget(volume)
                return try local!.dedupCandidates(minimumSize: minimumSize)
            case .failed:
                throw error
            }
        }
    }

    func openCandidate(_ inode: UInt64) throws -> FileDescriptor { try current.openCandidate(inode) }

    func replace(_ inode: UInt64, blobID: Int64, hash: BlobHash) throws -> DedupReplacement {
        try current.replace(inode, blobID: blobID, hash: hash)
    }

    func close() {
        guard let volume = local?.volume else { return }
        do { try volume.close() } catch { logger.error("closing VM \(volume.name): \(error)") }
    }
}

public struct GarbageCollect: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Run the janitor: reclaim blobs nothing references, orphaned blob files and abandoned temporary files.",
        discussion: """
            A blob is reclaimed when no template (ready, being built or being removed) and no VM references it. \
            Each step holds the store's blobs lock exclusively, in slices, so it never races a publisher or a \
            dedup; a busy lock is waited for up to --wait seconds, after which the rest is left for the next run. \
            Also finishes what killed processes left half done (ingests, template and VM removals). \
            pvfsd runs the janitor periodically when janitor-interval is set.
            Exit codes: 0 done, 1 failure, 4 the blobs lock stayed busy (part of the work is left).
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Option(name: .long, help: ArgumentHelp("Wait up to this long for the blobs lock each time.", valueName: "seconds"))
    public var wait: Double = 30

    @Flag(name: .long, help: "Report what would be reclaimed; change nothing.")
    public var dryRun = false

    public init() {}

    public func run() throws {
        try withStore(log: "pvfs.gc", existing: true) { store, logger in
            var options = JanitorOptions()
            options.waitSeconds = max(0, wait)
            options.dryRun = dryRun
            let report = try store.collectGarbage(options)
            try output.emit(report) {
                let verb = dryRun ? "would remove" : "removed"
                print("\(verb) \(report.blobsRemoved) unreferenced blobs (\(formatBytes(report.blobBytes)), \(formatBytes(report.blobAllocatedBytes)) on disk)")
                print("\(verb) \(report.orphanFilesRemoved) blob files without a catalog row (\(formatBytes(report.orphanBytes)))")
                var other: [String] = []
                if report.temporaryEntriesRemoved > 0 { other.append("\(report.temporaryEntriesRemoved) abandoned temporary entries") }
                if report.ingestsReclaimed > 0 { other.append("\(report.ingestsReclaimed) interrupted ingests") }
                if report.templatesPurged > 0 { other.append("\(report.templatesPurged) templates left half removed") }
                if report.vmOperationsFinished > 0 { other.append("\(report.vmOperationsFinished) interrupted VM operations") }
                if !other.isEmpty { print("cleaned up " + other.joined(separator: ", ")) }
                print("\(dryRun ? "would reclaim" : "reclaimed") \(formatBytes(report.reclaimedBytes)) in \(seconds(report.seconds))")
                if report.deferred { print("the blobs lock stayed busy: part of the work is left for the next run") }
            }
            if report.deferred { throw PVFSExitCode.conflict }
        }
    }
}

public struct Fsck: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Check the store: catalog, blobs, templates, VM overlays, usage accounting, interrupted operations.",
        discussion: """
            Checks the catalog (PRAGMA integrity_check, foreign keys), every blob against its row and its name \
            (--quick: sizes only), blob files without rows, every template's tree, every VM's overlay and \
            private files and its usage against its data, and work that killed processes left half done. \
            VMs served by pvfsd are checked (and repaired) by it; VMs held by another process are skipped. \
            --repair fixes what can be fixed; lost data (a blob row without its file, a private file gone) is \
            reported with the templates and VM files affected.
            Exit codes: 0 clean (or everything repaired), 5 findings remain, 1 the check itself failed.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Flag(name: .long, help: "Repair what can be repaired.")
    public var repair = false

    @Flag(name: .long, help: "Check blob sizes only, not their content.")
    public var quick = false

    @Option(name: .long, help: ArgumentHelp("Wait up to this long for the blobs lock.", valueName: "seconds"))
    public var wait: Double = 10

    public init() {}

    public func run() throws {
        try withStore(log: "pvfs.fsck", existing: true) { store, logger in
            let started = monotonicNanoseconds()
            var options = FsckOptions()
            options.repair = repair
            options.quick = quick
            options.waitSeconds = max(0, wait)
            var report = FsckReport(repair: repair, quick: quick)
            try store.checkStore(options, into: &report)
            let client = DaemonClient(storePath: storeOptions.storePath)
            for vm in try store.listVMs() {
                var result = try Volume.check(store: store, vm: vm, repair: repair)
                if result.skipped != nil {
                    do {
                        if let check = try client.maintenance("vm-check", vm: vm.name, .init(repair: repair)).check { result = check }
                    } catch let error as MaintenanceClientError {
                        switch error {
                        case .noDaemon, .notServed:
                            // The holder may have let go meanwhile: one more try here.
                            let retry = try Volume.check(store: store, vm: vm, repair: repair)
                            result = retry
                            if retry.skipped != nil { result.skipped = "in use by a process other than pvfsd (a FUSE mount?)" }
                        case .failed(let message):
                            result.skipped = "pvfsd serves it but could not check it: \(message)"
                        }
                    }
                }
                if let skipped = result.skipped {
                    report.skipped.append("vm \(vm.name): \(skipped); its overlay and usage were not checked")
                    continue
                }
                report.vmsChecked += 1
                report.findings += result.findings
                for note in result.notes { report.skipped.append("vm \(vm.name): \(note)") }
            }
            report.seconds = Double(monotonicNanoseconds() - started) / 1e9
            try output.emit(report) {
                print(Self.render(report))
            }
            if !report.clean { throw PVFSExitCode.inconsistent }
        }
    }

    static func render(_ r: FsckReport) -> String {
        var lines: [String] = []
        for f in r.findings {
            let tag = switch f.status {
            case .found: "FOUND"
            case .repaired: "REPAIRED"
            case .unrepairable: "DATA LOSS"
            }
            lines.append("[\(tag)] \(f.subject): \(f.message)")
            for a in f.affected ?? [] { lines.append("    affects \(a)") }
        }
        for s in r.skipped { lines.append("[SKIPPED] \(s)") }
        let remaining = r.findings.filter { $0.status == .found }.count
        let lost = r.findings.filter { $0.status == .unrepairable }.count
        let repaired = r.findings.filter { $0.status == .repaired }.count
        let checked = "checked \(r.blobsChecked) blobs (\(r.quick ? "sizes only" : formatBytes(r.bytesHashed) + " hashed")), "
            + "\(r.templatesChecked) templates, \(r.vmsChecked) VMs in \(seconds(r.seconds))"
        lines.append(checked)
        if r.findings.isEmpty {
            lines.append("clean")
        } else {
            var parts: [String] = []
            if repaired > 0 { parts.append("\(repaired) repaired") }
            if remaining > 0 { parts.append("\(remaining) to repair (run pvfs fsck --repair)") }
            if lost > 0 { parts.append("\(lost) unrepairable (data loss)") }
            lines.append("\(r.findings.count) findings: " + parts.joined(separator: ", "))
        }
        return lines.joined(separator: "\n")
    }
}

public struct DiskUsage: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "df",
        abstract: "Show where the store's space goes: physical bytes, logical bytes per template and VM, sharing, savings.",
        discussion: """
            physical: blob files, VMs' private files, the catalog and tmp/ as allocated on disk. \
            logical: every template's files plus every VM's view (the template files it kept plus its own). \
            shared: blobs used by more than one file. savings ratio: logical / physical.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    public init() {}

    public func run() throws {
        try withStore(log: "pvfs.df", existing: true) { store, logger in
            let r = try store.spaceReport()
            try output.emit(r) {
                let templateLogical = r.templates.reduce(Int64(0)) { $0 + $1.logicalBytes }
                print("store \(store.path): filesystem \(formatBytes(r.filesystemBytes)), \(formatBytes(r.filesystemFreeBytes)) free")
                if r.reserveBytes > 0 {
                    print(r.reserveHeld
                        ? "space reserve \(formatBytes(r.reserveAllocatedBytes).leftPad(10))  held for catalog commits on a full filesystem"
                        : "space reserve \(formatBytes(0).leftPad(10))  IN USE: the filesystem filled up; writes and ingests get ENOSPC until \(formatBytes(2 * r.reserveBytes)) are free")
                }
                print("physical      \(formatBytes(r.physicalBytes).leftPad(10))  blobs \(formatBytes(r.blobAllocatedBytes)) in \(r.blobCount) files, "
                      + "private files \(formatBytes(r.privateAllocatedBytes)), catalog \(formatBytes(r.catalogBytes)), tmp \(formatBytes(r.temporaryBytes))")
                print("logical       \(formatBytes(r.logicalBytes).leftPad(10))  templates \(formatBytes(templateLogical)), "
                      + "VMs \(formatBytes(r.logicalBytes - templateLogical))")
                print("savings ratio \(String(format: "%.2fx", r.savingsRatio).leftPad(10))  logical / physical")
                print("shared        \(formatBytes(r.sharedBytes).leftPad(10))  \(r.sharedBlobs) blobs used by more than one file "
                      + "(\(formatBytes(r.referencedBytes)) as separate copies), \(r.blobsSharedAcrossObjects) by several templates or VMs")
                if r.unreferencedBlobs > 0 {
                    print("unreferenced  \(formatBytes(r.unreferencedBytes).leftPad(10))  \(r.unreferencedBlobs) blobs nothing uses (pvfs gc reclaims them)")
                }
                if !r.templates.isEmpty {
                    print("")
                    printTable(["TEMPLATE", "LOGICAL", "BLOBS", "BLOB BYTES", "ONLY ITS OWN", "VMS"], r.templates.map {
                        [$0.name, formatBytes($0.logicalBytes), "\($0.blobs)", formatBytes($0.blobBytes), formatBytes($0.exclusiveBytes), "\($0.vms)"]
                    })
                }
                if !r.vms.isEmpty {
                    print("")
                    printTable(["VM", "TEMPLATE", "LOGICAL", "PRIVATE", "ON DISK", "DEDUPED", "USED", "QUOTA"], r.vms.map {
                        [$0.name, $0.template, formatBytes($0.logicalBytes), "\($0.privateFiles) files, \(formatBytes($0.privateBytes))",
                         formatBytes($0.privateAllocatedBytes), "\($0.sharedFiles) files, \(formatBytes($0.sharedBytes))",
                         formatBytes($0.usedBytes), $0.quotaBytes.map(formatBytes) ?? "-"]
                    })
                }
            }
        }
    }
}

public struct Status: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Show whether pvfsd runs for the store (pid, listeners, served VMs) and a summary of the store.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    public init() {}

    struct Result: Encodable {
        var daemon: ControlProtocol.DaemonStatus?
        var lastJanitorRun: JanitorReport?
        var store: StoreSummary
    }

    public func run() throws {
        try withStore(log: "pvfs.status", existing: true) { store, logger in
            let client = DaemonClient(storePath: storeOptions.storePath)
            var daemon: ControlProtocol.DaemonStatus?
            var janitor: JanitorReport?
            do {
                daemon = try client.send(.init(op: "status"))?.status
                if daemon != nil { janitor = try? client.maintenance("janitor-report", timeoutSeconds: 10).janitor }
            } catch {
                logger.warning("the daemon's control socket did not answer: \(error)")
            }
            let summary = try store.summary()
            try output.emit(Result(daemon: daemon, lastJanitorRun: janitor, store: summary)) {
                if let daemon {
                    print("pvfsd: running, pid \(daemon.pid)")
                    if let from = daemon.tookOverFrom {
                        print("  took over:   from \(from), \(daemon.adoptedConnections ?? 0) connection(s) adopted")
                    }
                    print("  listeners:   \(daemon.listeners.isEmpty ? "none" : daemon.listeners.joined(separator: ", "))")
                    if daemon.servedVMs.isEmpty {
                        print("  served VMs:  none")
                    } else {
                        print("  served VMs:")
                        for vm in daemon.servedVMs {
                            print("    \(vm.name): \(vm.sessions) session(s), \(formatBytes(vm.usedBytes)) and \(vm.usedInodes) inodes used")
                        }
                    }
                    if let janitor {
                        print("  janitor:     last run reclaimed \(formatBytes(janitor.reclaimedBytes)) (\(janitor.blobsRemoved) blobs, \(janitor.orphanFilesRemoved) orphaned files)")
                    }
                } else {
                    print("pvfsd: not running for this store")
                }
                print("store \(summary.path)")
                print("  templates:   \(summary.templates)" + (summary.templatesInProgress > 0 ? " (+\(summary.templatesInProgress) being created or removed)" : ""))
                print("  VMs:         \(summary.vms), \(formatBytes(summary.vmUsedBytes)) charged to them")
                print("  blobs:       \(summary.blobs), \(formatBytes(summary.blobBytes)) (\(formatBytes(summary.blobAllocatedBytes)) on disk)")
                print("  filesystem:  \(formatBytes(summary.filesystemFreeBytes)) free of \(formatBytes(summary.filesystemBytes))")
            }
        }
    }
}

/// `pvfs upgrade`: the running pvfsd hands everything to a new binary.
public struct Upgrade: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Hand the running pvfsd's listeners and 9P connections (fids, open files, locks) to a new pvfsd binary; clients notice nothing.",
        discussion: """
            The running daemon starts BINARY (default: its own path, where a package upgrade put the \
            new build) with its own arguments, lets every connection come to rest between two \
            requests, and passes the listening and connected sockets with each connection's session \
            to it; the old process then exits. Should the new binary fail to take over, the running \
            build takes over from itself. Xen devices, virtio-fs front-ends and host FUSE mounts \
            cannot move yet: the upgrade is refused while any is connected, unless --force (they \
            then end). Under systemd the new process becomes the service's main process (MAINPID=).
            Exit codes: 0 handed over; 1 failed (the old daemon still serves unless the message says \
            it exited); 3 no daemon runs for the store; 4 refused because of sessions that cannot \
            move (the old daemon serves on).
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Option(name: .long, help: ArgumentHelp("The new pvfsd executable (default: the running one's path).", valueName: "path"))
    public var binary: String?

    @Flag(name: .long, help: "Upgrade even though Xen devices, virtio-fs front-ends or host mounts are connected (they end).")
    public var force = false

    @Option(name: .long, help: "Seconds the connections have to come to rest before the upgrade is abandoned.")
    public var timeout: Double = 10

    public init() {}

    public func run() throws {
        try runCommand {
            let client = DaemonClient(storePath: storeOptions.storePath)
            let binaryPath = binary.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
            let request = ControlProtocol.Request(op: "upgrade", force: force, path: binaryPath, timeout: timeout)
            guard let response = try client.send(request, timeoutSeconds: Int(max(120, timeout * 6))) else {
                throw CommandFailure("pvfsd is not running for \(storeOptions.storePath)", exitCode: PVFSExitCode.notFound)
            }
            if let blockers = response.blockers, !blockers.isEmpty {
                throw CommandFailure("upgrade refused, pvfsd serves on: these sessions cannot move yet and would end:\n  "
                                     + blockers.joined(separator: "\n  ") + "\n(end them first, or use --force)",
                                     exitCode: PVFSExitCode.conflict)
            }
            guard response.ok, let outcome = response.upgrade else {
                throw CommandFailure("upgrade failed: \(response.error ?? "no reason given")")
            }
            if let reason = outcome.fallbackReason {
                // Clients kept their connections, but the new build does not run.
                if output.json { try printJSON(outcome) }
                throw CommandFailure("upgrade failed: \(reason); the running build took over from itself (pid \(outcome.pid)), clients kept their connections")
            }
            try output.emit(outcome) {
                print("pvfsd handed over to pid \(outcome.pid) (\(outcome.binary)\(outcome.version.map { ", pvfs \($0)" } ?? ""))")
                print("  \(outcome.listeners) 9P listener(s), \(outcome.connections) connection(s) moved"
                      + (outcome.closedConnections > 0 ? ", \(outcome.closedConnections) closed (their clients did not read their replies)" : ""))
            }
        }
    }
}

/// The root of `pvfs`.
public struct PVFSTool: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pvfs",
        abstract: "Maintain a pvfs store: share identical VM files, reclaim space, check and repair, report space.",
        discussion: """
            See also pvfs-template (templates), pvfs-vm (VMs) and pvfsd (the daemon). docs/janitor.md describes \
            what these commands do and why they are safe while VMs are served.
            Exit codes: 0 success, 1 failure, 3 not found, 4 busy or in use, 5 fsck findings remain.
            """,
        version: pvfsVersion,
        subcommands: [Dedup.self, GarbageCollect.self, Fsck.self, DiskUsage.self, Status.self, Upgrade.self])

    public init() {}
}
