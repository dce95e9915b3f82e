import ArgumentParser
import Foundation
import Logging
import PVFSDaemon
import PVFSEngine
import PVFSStore
import PVFSSystem

/// Tells a running daemon of this store to re-read the catalog; quiet when none runs.
func notifyDaemon(_ storePath: String, logger: Logger) {
    do {
        if let response = try DaemonClient(storePath: storePath).send(.init(op: "reload")), !response.ok {
            logger.warning("the daemon did not apply the change: \(response.error ?? "unknown error")")
        }
    } catch {
        logger.warning("cannot reach the daemon: \(error)")
    }
}

/// What `pvfs-vm show` and `list --json` print for a VM.
struct VMReport: Codable {
    var name: String
    var template: String
    var created: String
    var quotaBytes: Int64?
    var quotaInodes: Int64?
    /// The inode limit the VM is served with: its inode quota, or the default (docs/quotas.md).
    var inodeLimit: Int64?
    var usedBytes: Int64
    var usedInodes: Int64
    /// Its share of pvfsd's worker threads relative to other VMs' (default 100).
    var workerWeight: Int
    var inUse: Bool
    var access: VMAccessSettings?
    var bindings: [VMBinding]?

    init(_ vm: VMRecord, store: Store, detailed: Bool) throws {
        name = vm.name
        template = vm.template
        created = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(vm.createdNanoseconds) / 1e9))
        quotaBytes = vm.quotaBytes
        quotaInodes = vm.quotaInodes
        inodeLimit = InodeQuota.effective(quotaBytes: vm.quotaBytes, quotaInodes: vm.quotaInodes,
                                          withoutQuota: VolumeLimits().inodesWithoutQuota)
        usedBytes = vm.usedBytes
        usedInodes = vm.usedInodes
        workerWeight = vm.workerWeight
        inUse = store.isVMInUse(vm)
        if detailed {
            access = try store.accessSettings(vm: vm.name)
            bindings = try store.bindings(vm: vm.name)
        }
    }
}

/// "1000 inodes", or the default a VM without an inode quota gets.
func inodeQuotaText(quotaInodes: Int64?, limit: Int64?) -> String {
    if let quotaInodes { return "\(quotaInodes) inodes" }
    guard let limit else { return "no inode limit" }
    return "\(limit) inodes (default)"
}

func parseQuota(_ text: String?, what: String, sizes: Bool) throws -> Int64?? {
    guard let text else { return .none }
    if text == "none" || text == "unlimited" { return .some(nil) }
    let value = sizes ? parseSize(text) : Int64(text)
    guard let value, value >= 0 else { throw ValidationError("invalid \(what) '\(text)'") }
    return .some(value)
}

public struct Provision: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Create a VM root as a copy-on-write overlay over a template (instant, whatever the template's size).")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Option(name: .long, help: "The template the VM's root starts from.")
    public var template: String

    @Option(name: .long, help: "Byte quota, e.g. 10G (default: none).")
    public var quotaBytes: String?

    @Option(name: .long, help: "Inode quota (default: one inode per 16 KiB of the byte quota, at least 1024).")
    public var quotaInodes: String?

    @Option(name: .long, help: "Run only this hook (repeatable; default: every hook of the hooks directory).")
    public var hook: [String] = []

    @Flag(name: .long, help: "Run no provisioning hooks.")
    public var noHooks = false

    @Option(name: .long, help: "Hooks directory (default: $PVFS_HOOKS_DIR, else the first of /etc/pvfs/hooks.d, <prefix>/lib/pvfs/hooks, /usr/lib/pvfs/hooks; a binary built in a source checkout uses its hooks/).")
    public var hooksDir: String?

    @Option(name: .long, help: ArgumentHelp("Setting for the hooks, as PVFS_HOOK_KEY (repeatable), e.g. HOSTNAME=web1.", valueName: "key=value"))
    public var hookEnv: [String] = []

    @Argument(help: "The new VM's name.")
    public var name: String

    public init() {}

    public func validate() throws {
        for item in hookEnv where !item.contains("=") { throw ValidationError("--hook-env takes KEY=VALUE") }
        if noHooks && !hook.isEmpty { throw ValidationError("--no-hooks and --hook exclude each other") }
    }

    public func run() throws {
        try withStore(log: "pvfs.vm") { store, logger in
            let bytes = try parseQuota(quotaBytes, what: "byte quota", sizes: true) ?? nil
            let inodes = try parseQuota(quotaInodes, what: "inode quota", sizes: false) ?? nil
            let started = monotonicNanoseconds()
            let vm = try store.provisionVM(name: name, template: template, quotaBytes: bytes, quotaInodes: inodes)
            let elapsed = Double(monotonicNanoseconds() - started) / 1e6
            var ran: [String] = []
            var hookMilliseconds = 0.0
            if !noHooks, let directory = ProvisioningHooks.findDirectory(hooksDir) {
                var environment: [String: String] = [:]
                for item in hookEnv {
                    let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
                    environment[parts[0]] = parts.count > 1 ? parts[1] : ""
                }
                let hooks = ProvisioningHooks(directory: directory, selected: hook.isEmpty ? nil : hook, environment: environment)
                let hookStart = monotonicNanoseconds()
                do {
                    ran = try hooks.run(store: store, vm: name, template: template, logger: logger)
                } catch {
                    // A VM its hooks could not prepare is not left behind half made.
                    try? store.removeVM(named: name)
                    throw error
                }
                hookMilliseconds = Double(monotonicNanoseconds() - hookStart) / 1e6
            } else if !hook.isEmpty {
                throw CommandFailure("no hooks directory found (use --hooks-dir)")
            }
            if output.json {
                try printJSON(ProvisionResult(vm: try VMReport(vm, store: store, detailed: true), milliseconds: elapsed,
                                              hooks: ran, hookMilliseconds: hookMilliseconds))
            } else {
                print("provisioned VM \(vm.name) from template \(vm.template) in \(String(format: "%.1f", elapsed)) ms")
                if !ran.isEmpty {
                    print("hooks: \(ran.joined(separator: ", ")) (\(String(format: "%.0f", hookMilliseconds)) ms)")
                }
            }
            notifyDaemon(storeOptions.storePath, logger: logger)
        }
    }

    struct ProvisionResult: Codable {
        var vm: VMReport
        /// Time to create the VM itself (catalog row and private area), hooks excluded.
        var milliseconds: Double
        var hooks: [String]
        var hookMilliseconds: Double
    }
}

public struct ListVMs: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(commandName: "list", abstract: "List VMs.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    public init() {}

    public func run() throws {
        try withStore(log: "pvfs.vm") { store, logger in
            let reports = try store.listVMs().map { try VMReport($0, store: store, detailed: false) }
            try output.emit(reports) {
                let header = ["NAME", "TEMPLATE", "USED", "QUOTA", "INODES", "IN USE"]
                let rows = reports.map { r in
                    [r.name, r.template, formatBytes(r.usedBytes), r.quotaBytes.map(formatBytes) ?? "-",
                     "\(r.usedInodes)" + (r.inodeLimit.map { "/\($0)" } ?? ""), r.inUse ? "yes" : "no"]
                }
                printTable(header, rows)
            }
        }
    }
}

public struct ShowVM: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a VM: template, quota, usage, worker weight, access rules.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var output: OutputOptions

    @Argument(help: "The VM's name.")
    public var name: String

    public init() {}

    public func run() throws {
        try withStore(log: "pvfs.vm") { store, logger in
            let report = try VMReport(try store.requireVM(named: name), store: store, detailed: true)
            try output.emit(report) {
                print("name:        \(report.name)")
                print("template:    \(report.template)")
                print("created:     \(report.created)")
                print("used:        \(formatBytes(report.usedBytes)), \(report.usedInodes) inodes")
                print("quota:       \(report.quotaBytes.map(formatBytes) ?? "no byte limit"), \(inodeQuotaText(quotaInodes: report.quotaInodes, limit: report.inodeLimit))")
                print("weight:      \(report.workerWeight)\(report.workerWeight == VMRecord.defaultWorkerWeight ? " (default)" : "")")
                print("in use:      \(report.inUse ? "yes (served or mounted)" : "no")")
                if let access = report.access {
                    var mapping = access.idMapping
                    if access.idMapping == "shift" { mapping += " (VM 0..\(access.shiftCount - 1) = host \(access.shiftBase)..)" }
                    if access.idMapping.hasSuffix("squash") { mapping += " (anonymous \(access.anonymousUID):\(access.anonymousGID))" }
                    print("access:      \(access.readOnly ? "read-only" : "read-write"), id mapping \(mapping)")
                }
                for b in report.bindings ?? [] {
                    print("binding:     \(b.kind) \(b.value) \(b.access)\(b.squash == "inherit" ? "" : " squash=\(b.squash)")")
                }
            }
        }
    }
}

public struct RemoveVM: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a VM and its private data.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Flag(name: .long, help: "Make the daemon drop the VM's sessions first if it serves it.")
    public var force = false

    @Argument(help: "The VM's name.")
    public var name: String

    public init() {}

    public func run() throws {
        try changeStore(log: "pvfs.vm") { store, logger in
            let vm = try store.requireVM(named: name)
            if store.isVMInUse(vm) {
                guard force else {
                    throw CommandFailure("VM \(name) is in use (served by pvfsd or mounted); unmount it, or use --force to make the daemon drop it",
                                         exitCode: PVFSExitCode.conflict)
                }
                let response = try DaemonClient(storePath: storeOptions.storePath).send(.init(op: "release", vm: name, force: true))
                if response?.ok != true {
                    throw CommandFailure("VM \(name) is held by a process other than the daemon (a FUSE mount?): \(response?.error ?? "no daemon answered")",
                                         exitCode: PVFSExitCode.conflict)
                }
            }
            try store.removeVM(named: name)
            return "removed VM \(name)"
        }
    }
}

public struct RenameVM: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(commandName: "rename", abstract: "Rename a VM.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Argument(help: "The VM's current name.")
    public var name: String

    @Argument(help: "Its new name.")
    public var newName: String

    public init() {}

    public func run() throws {
        try changeStore(log: "pvfs.vm") { store, _ in
            try store.renameVM(name, to: newName)
            return "renamed VM \(name) to \(newName)"
        }
    }
}

public struct SetQuota: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "set-quota", abstract: "Change a VM's quota; a served or mounted VM applies it at once.",
        discussion: """
            A VM served by pvfsd (or mounted through it) applies the change at its next operation; \
            one mounted with `pvfs-vm mount` while pvfsd is not running applies it within a second. \
            Without an inode quota a VM gets a default one: one inode per 16 KiB of its byte quota \
            (at least 1,024), or pvfsd's vm-inodes-without-quota when it has no byte quota either.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Option(name: .long, help: "Byte quota, e.g. 20G, or 'none'.")
    public var bytes: String?

    @Option(name: .long, help: "Inode quota, or 'none' for the default (derived from the byte quota).")
    public var inodes: String?

    @Argument(help: "The VM's name.")
    public var name: String

    public init() {}

    public func validate() throws {
        if bytes == nil && inodes == nil { throw ValidationError("give --bytes and/or --inodes") }
    }

    public func run() throws {
        try changeStore(log: "pvfs.vm") { store, _ in
            try store.setQuota(vm: name, bytes: try parseQuota(bytes, what: "byte quota", sizes: true),
                               inodes: try parseQuota(inodes, what: "inode quota", sizes: false))
            let vm = try store.requireVM(named: name)
            let limit = InodeQuota.effective(quotaBytes: vm.quotaBytes, quotaInodes: vm.quotaInodes,
                                             withoutQuota: VolumeLimits().inodesWithoutQuota)
            return "VM \(name): quota \(vm.quotaBytes.map(formatBytes) ?? "no byte limit"), \(inodeQuotaText(quotaInodes: vm.quotaInodes, limit: limit))"
        }
    }
}

public struct SetWeight: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "set-weight", abstract: "Change a VM's share of pvfsd's worker threads; a served VM applies it at once.",
        discussion: """
            pvfsd's worker threads run the file operations of every VM. While several VMs have \
            work waiting, each gets worker time in proportion to its weight (default \(VMRecord.defaultWorkerWeight)): \
            a VM of weight 200 gets twice the time of one of weight 100. Whatever its weight, one VM \
            runs on at most worker-max-share of the threads while others wait (docs/operations.md).
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Argument(help: "The VM's name.")
    public var name: String

    @Argument(help: ArgumentHelp("The weight, \(VMRecord.workerWeights.lowerBound) to \(VMRecord.workerWeights.upperBound), or 'default' (\(VMRecord.defaultWorkerWeight)).",
                                 valueName: "weight"))
    public var weight: String

    public init() {}

    var parsedWeight: Int? {
        weight == "default" ? VMRecord.defaultWorkerWeight : Int(weight).flatMap { VMRecord.workerWeights.contains($0) ? $0 : nil }
    }

    public func validate() throws {
        if parsedWeight == nil {
            throw ValidationError("invalid weight '\(weight)': use \(VMRecord.workerWeights.lowerBound) to \(VMRecord.workerWeights.upperBound), or 'default'")
        }
    }

    public func run() throws {
        try changeStore(log: "pvfs.vm") { store, _ in
            try store.setWorkerWeight(vm: name, parsedWeight ?? VMRecord.defaultWorkerWeight)
            let vm = try store.requireVM(named: name)
            return "VM \(name): weight \(vm.workerWeight)"
        }
    }
}

public struct SetAccess: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "set-access", abstract: "Change a VM's access mode and uid/gid mapping.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Flag(name: .long, help: "Serve the VM read-only.")
    public var readOnly = false

    @Flag(name: .long, help: "Serve the VM read-write.")
    public var readWrite = false

    @Option(name: .long, help: "none, root-squash, all-squash or shift.")
    public var idMap: String?

    @Option(name: .long, help: "Anonymous uid for squashing (default 65534).")
    public var anonUid: UInt32?

    @Option(name: .long, help: "Anonymous gid for squashing (default 65534).")
    public var anonGid: UInt32?

    @Option(name: .long, help: "First host id of the shifted range.")
    public var shiftBase: UInt32?

    @Option(name: .long, help: "Size of the shifted range (default 65536).")
    public var shiftCount: UInt32?

    @Argument(help: "The VM's name.")
    public var name: String

    public init() {}

    public func validate() throws {
        if readOnly && readWrite { throw ValidationError("--read-only and --read-write exclude each other") }
        if let idMap, !VMAccessSettings.mappings.contains(idMap) {
            throw ValidationError("--id-map must be one of \(VMAccessSettings.mappings.joined(separator: ", "))")
        }
        if idMap == "shift" && shiftBase == nil { throw ValidationError("--id-map shift needs --shift-base") }
    }

    public func run() throws {
        try changeStore(log: "pvfs.vm") { store, _ in
            var settings = try store.accessSettings(vm: name)
            if readOnly { settings.readOnly = true }
            if readWrite { settings.readOnly = false }
            if let idMap { settings.idMapping = idMap }
            if let anonUid { settings.anonymousUID = anonUid }
            if let anonGid { settings.anonymousGID = anonGid }
            if let shiftBase { settings.shiftBase = shiftBase }
            if let shiftCount { settings.shiftCount = shiftCount }
            try store.setAccessSettings(vm: name, settings)
            return "VM \(name): \(settings.readOnly ? "read-only" : "read-write"), id mapping \(settings.idMapping)"
        }
    }
}

/// Options naming one kind of client, shared by bind and unbind.
public struct BindingTarget: ParsableArguments {
    @Option(name: .long, help: "A Xen domain ID.")
    public var xenDomid: UInt32?

    @Option(name: .long, help: "A Xen domain name (as xl names it).")
    public var xenName: String?

    @Option(name: .long, help: "A pvfsd listener name (connections arriving on it).")
    public var listener: String?

    @Option(name: .long, help: "A TCP peer address or CIDR range.")
    public var tcp: String?

    @Option(name: .long, help: "A Unix-socket peer uid.")
    public var unixUid: UInt32?

    @Flag(name: .long, help: "Any client of the daemon (for trusted single-tenant setups and tests).")
    public var any = false

    @Option(name: .long, help: ArgumentHelp(
        "A vhost-user-fs socket (absolute path): pvfsd listens there and serves this VM, and only it, to the QEMU that connects (virtio-fs; see pvfs-vm qemu-args --transport virtiofs).",
        valueName: "path"))
    public var vhostUser: String?

    public init() {}

    func kindAndValue() throws -> (String, String) {
        var found: [(String, String)] = []
        if let xenDomid { found.append(("xen-domid", String(xenDomid))) }
        if let xenName { found.append(("xen-name", xenName)) }
        if let listener { found.append(("listener", listener)) }
        if let tcp {
            guard AccessRules.ipBytes(String(tcp.split(separator: "/").first ?? "")) != nil else {
                throw ValidationError("--tcp takes an IP address or CIDR range")
            }
            found.append(("tcp", tcp))
        }
        if let unixUid { found.append(("unix-uid", String(unixUid))) }
        if any { found.append(("any", "*")) }
        if let vhostUser { found.append(("vhost-user", try Self.socketPath(vhostUser))) }
        guard found.count == 1 else {
            throw ValidationError("name exactly one of --xen-domid, --xen-name, --listener, --tcp, --unix-uid, --any, --vhost-user")
        }
        return found[0]
    }

    /// An absolute, normalised socket path that fits a sockaddr_un.
    static func socketPath(_ text: String) throws -> String {
        guard text.hasPrefix("/") else { throw ValidationError("--vhost-user takes an absolute path (QEMU and pvfsd must agree on it)") }
        let path = URL(fileURLWithPath: text).standardizedFileURL.path
        guard path != "/", !path.hasSuffix("/") else { throw ValidationError("--vhost-user must name a socket file, not a directory") }
        guard path.utf8.count < 108, !path.utf8.contains(0), !path.contains(","), !path.contains("'") else {
            throw ValidationError("--vhost-user path must be shorter than 108 bytes and contain no comma or quote")
        }
        return path
    }
}

public struct Bind: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Allow a kind of client (Xen domain, listener, TCP peer, Unix uid, vhost-user socket) to reach a VM.",
        discussion: """
            --vhost-user PATH makes pvfsd listen on PATH (mode 0600, owned by pvfsd's user) and serve \
            this VM over virtio-fs to one QEMU at a time; the binding is the guest's identity. \
            pvfsd picks bindings up at start and at once while it runs; `pvfs-vm qemu-args VM \
            --transport virtiofs` and `pvfs-vm libvirt-xml VM` print what QEMU or libvirt need.
            """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var target: BindingTarget

    @Flag(name: .long, help: "This client gets the VM read-only.")
    public var readOnly = false

    @Option(name: .long, help: "Squash for this client: inherit (the VM's), none, root, all.")
    public var squash = "inherit"

    @Argument(help: "The VM's name.")
    public var name: String

    public init() {}

    public func validate() throws {
        guard VMBinding.squashModes.contains(squash) else { throw ValidationError("--squash must be inherit, none, root or all") }
        _ = try target.kindAndValue()
    }

    public func run() throws {
        try changeStore(log: "pvfs.vm") { store, _ in
            let (kind, value) = try target.kindAndValue()
            try store.addBinding(VMBinding(vm: name, kind: kind, value: value, access: readOnly ? "ro" : "rw", squash: squash))
            return "VM \(name): \(kind) \(value) may reach it \(readOnly ? "read-only" : "read-write")"
        }
    }
}

public struct Unbind: ParsableCommand, StoreCommand {
    public static let configuration = CommandConfiguration(abstract: "Remove a client binding from a VM.")

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions
    @OptionGroup public var target: BindingTarget

    @Argument(help: "The VM's name.")
    public var name: String

    public init() {}

    public func run() throws {
        try changeStore(log: "pvfs.vm") { store, _ in
            let (kind, value) = try target.kindAndValue()
            try store.removeBinding(vm: name, kind: kind, value: value)
            return "VM \(name): \(kind) \(value) removed"
        }
    }
}

/// Prints rows as aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    print(line(header))
    for row in rows { print(line(row)) }
}
