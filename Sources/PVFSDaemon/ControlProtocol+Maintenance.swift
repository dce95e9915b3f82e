import Foundation
import PVFSEngine
import PVFSStore
import PVFSSystem
import SystemPackage

/// Control operations of the store's maintenance (docs/janitor.md, "Daemon operations"). A VM
/// the daemon serves can only be changed through it, so `pvfs dedup` and `pvfs fsck` ask it:
///
/// | op | request | response |
/// |---|---|---|
/// | `dedup-candidates` | `vm`, `maintenance.minimumSize` | `maintenance.candidates`: private files (inode, size) |
/// | `dedup-replace` | `vm`, `maintenance.items`: inode, blob id, hash | `maintenance.outcomes`, one per item |
/// | `vm-check` | `vm`, `maintenance.repair` | `maintenance.check`: findings, recorded and computed usage |
/// | `janitor-report` | — | `maintenance.janitor`: the last periodic janitor run, if any |
///
/// An operation on a VM the daemon does not serve fails with `notServed` set, so the caller
/// can open the VM itself.
extension ControlProtocol {
    public struct MaintenanceRequest: Codable, Sendable {
        public var minimumSize: Int64?
        public var items: [DedupReplaceItem]?
        public var repair: Bool?

        public init(minimumSize: Int64? = nil, items: [DedupReplaceItem]? = nil, repair: Bool? = nil) {
            self.minimumSize = minimumSize
            self.items = items
            self.repair = repair
        }
    }

    public struct DedupReplaceItem: Codable, Sendable {
        public var inode: UInt64
        public var blobID: Int64
        /// Lower-case hex SHA-256 of the blob.
        public var hash: String
    }

    public struct MaintenanceResponse: Codable, Sendable {
        public var candidates: [DedupCandidate]?
        public var outcomes: [DedupReplacement]?
        public var check: VMCheckResult?
        public var janitor: JanitorReport?
        /// Set when the VM named is not served by this daemon.
        public var notServed: Bool?
    }
}

/// Why a maintenance request to the daemon did not work out.
public enum MaintenanceClientError: Error, CustomStringConvertible {
    /// No daemon listens on the store's control socket.
    case noDaemon
    /// The daemon does not serve the VM (it may have closed it meanwhile).
    case notServed(String)
    case failed(String)

    public var description: String {
        switch self {
        case .noDaemon: "no daemon runs for this store"
        case .notServed(let vm): "the daemon does not serve VM \(vm)"
        case .failed(let message): message
        }
    }
}

extension DaemonClient {
    /// Sends a maintenance request; throws unless the daemon answered with success.
    public func maintenance(_ op: String, vm: String? = nil, _ request: ControlProtocol.MaintenanceRequest = .init(),
                            timeoutSeconds: Int = 600) throws -> ControlProtocol.MaintenanceResponse {
        var message = ControlProtocol.Request(op: op, vm: vm)
        message.maintenance = request
        guard let response = try send(message, timeoutSeconds: timeoutSeconds) else { throw MaintenanceClientError.noDaemon }
        if response.maintenance?.notServed == true { throw MaintenanceClientError.notServed(vm ?? "") }
        guard response.ok else { throw MaintenanceClientError.failed(response.error ?? "the daemon refused \(op)") }
        return response.maintenance ?? .init()
    }
}

/// A VM the daemon serves, as dedup's driver talks to it: candidates and replacements go through
/// the control socket (the daemon holds the VM's volume); content is read from the private files
/// directly (what is read is verified: by hash when it is published, byte for byte by the
/// daemon when a file is replaced).
public final class DaemonDedupTarget: DedupTarget, @unchecked Sendable {
    public let client: DaemonClient
    public let store: Store
    public let vm: VMRecord

    public init(client: DaemonClient, store: Store, vm: VMRecord) {
        self.client = client
        self.store = store
        self.vm = vm
    }

    public var vmName: String { vm.name }

    public func dedupCandidates(minimumSize: Int64) throws -> [DedupCandidate] {
        try client.maintenance("dedup-candidates", vm: vm.name, .init(minimumSize: minimumSize)).candidates ?? []
    }

    public func openCandidate(_ inode: UInt64) throws -> FileDescriptor {
        try store.openPrivateFileForReading(vm: vm.id, inode: inode)
    }

    public func replace(_ inode: UInt64, blobID: Int64, hash: BlobHash) throws -> DedupReplacement {
        let response = try client.maintenance("dedup-replace", vm: vm.name,
                                              .init(items: [.init(inode: inode, blobID: blobID, hash: hash.hex)]))
        guard let outcome = response.outcomes?.first else { throw MaintenanceClientError.failed("the daemon returned no outcome") }
        return outcome
    }
}
