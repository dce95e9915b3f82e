import Dispatch
import Foundation
import GRDB
import Glibc
import PVFSSystem
import Synchronization
import SystemPackage

/// A private regular file of a VM that dedup may share.
public struct DedupCandidate: Codable, Sendable, Equatable {
    public var inode: UInt64
    public var size: Int64

    public init(inode: UInt64, size: Int64) {
        self.inode = inode
        self.size = size
    }
}

/// What became of one file dedup offered to its VM (mirrors the engine's outcome).
public enum DedupReplacement: String, Codable, Sendable {
    case replaced
    /// Open for writing: left alone.
    case skippedBusy = "skipped-busy"
    /// Written since it was hashed, or not identical byte for byte.
    case skippedChanged = "skipped-changed"
    /// Removed, or no longer a private file.
    case skippedGone = "skipped-gone"
}

/// A VM as dedup talks to it: a volume this process opened (holding the VM's lock) or a VM the
/// daemon serves (through its control socket). Only `replace` changes anything, and it verifies
/// byte for byte under the inode's locks.
public protocol DedupTarget: AnyObject, Sendable {
    var vmName: String { get }
    /// Private regular files of at least `minimumSize` bytes.
    func dedupCandidates(minimumSize: Int64) throws -> [DedupCandidate]
    /// Opens a private file read-only for hashing and copying. What it yields is only a hint:
    /// the copy is verified by its hash and the replacement byte for byte.
    func openCandidate(_ inode: UInt64) throws -> FileDescriptor
    /// Turns the private file into a reference to the blob. The caller holds the blobs lock
    /// shared from the blob's lookup or publication until this returns.
    func replace(_ inode: UInt64, blobID: Int64, hash: BlobHash) throws -> DedupReplacement
}

public struct DedupOptions: Sendable {
    /// Files smaller than this are left alone: sharing them saves little and costs a catalog row.
    public var minimumSize: Int64 = 4096
    /// Report what would be shared, change nothing.
    public var dryRun = false
    /// Publish blobs by cloning the private file where the filesystem can (no data copied).
    public var reflink = true
    /// Threads hashing candidates.
    public var jobs = max(2, ProcessInfo.processInfo.activeProcessorCount)

    public init() {}
}

/// What a dedup run did (or would do).
public struct DedupReport: Codable, Sendable {
    public struct VMStatistics: Codable, Sendable, Equatable {
        public var name: String
        public var candidates = 0
        public var filesDeduplicated = 0
        public var bytesDeduplicated: Int64 = 0
        public var error: String?
    }

    public var dryRun: Bool
    public var vms: [VMStatistics] = []
    /// Private files at least the minimum size, and those hashed (their size matched another's).
    public var candidates = 0
    public var hashedFiles = 0
    public var hashedBytes: Int64 = 0
    /// Groups of identical content that were shared (≥ 2 files, or matching a stored blob).
    public var groups = 0
    /// Files turned into blob references, and their logical bytes.
    public var filesDeduplicated = 0
    public var logicalBytes: Int64 = 0
    /// Space given back: allocation of the replaced private files minus that of new blobs.
    public var bytesSaved: Int64 = 0
    public var newBlobs = 0
    public var newBlobBytes: Int64 = 0
    /// Groups whose content the store had already as a blob (template or earlier dedup).
    public var existingBlobsReused = 0
    public var skippedBusy = 0
    public var skippedChanged = 0
    public var skippedGone = 0
    public var seconds: Double = 0

    public init(dryRun: Bool) { self.dryRun = dryRun }
}

extension Store {
    /// Finds identical private files across `targets` (and files identical to stored blobs) and
    /// turns them into shared, copy-on-write blob references (docs/janitor.md, "Dedup"):
    ///
    /// 1. list every target's private files of at least the minimum size;
    /// 2. hash those whose size another candidate or a stored blob has;
    /// 3. group by (size, hash); a group of two or more files, or one matching a stored blob,
    ///    is shared: holding the blobs lock shared, reuse the stored blob or publish one from a
    ///    member's content (verifying the hash of the bytes actually staged, trying the next
    ///    member when a file changed), then ask each member's VM to replace its file by the
    ///    blob; the VM compares byte for byte under the inode's locks and leaves files open for
    ///    writing or changed alone. The lock is released after the group's last replacement.
    ///
    /// A crash leaves at worst a published blob nothing references yet (the janitor's) or a
    /// staging area (crash cleanup's); every replacement is one catalog transaction.
    public func deduplicate(_ targets: [any DedupTarget], options: DedupOptions = DedupOptions()) throws -> DedupReport {
        let started = monotonicNanoseconds()
        var report = DedupReport(dryRun: options.dryRun)
        report.vms = targets.map { DedupReport.VMStatistics(name: $0.vmName) }

        struct Member {
            var target: Int
            var inode: UInt64
            var size: Int64
            var allocated: Int64 = 0
            var hash: BlobHash?
        }
        var members: [Member] = []
        for (index, target) in targets.enumerated() {
            do {
                let found = try target.dedupCandidates(minimumSize: max(1, options.minimumSize))
                report.vms[index].candidates = found.count
                members += found.map { Member(target: index, inode: $0.inode, size: $0.size) }
            } catch {
                report.vms[index].error = "\(error)"
                logger.warning("dedup: cannot list the private files of VM \(target.vmName): \(error)")
            }
        }
        report.candidates = members.count

        // Only sizes seen twice, or the size of a stored blob, can share anything.
        var sizeCounts: [Int64: Int] = [:]
        for m in members { sizeCounts[m.size, default: 0] += 1 }
        let blobSizes: Set<Int64> = try catalog.read { db in
            Set(try Int64.fetchAll(db, sql: "SELECT DISTINCT size FROM blob WHERE size >= ?", arguments: [max(1, options.minimumSize)]))
        }
        let toHash = members.indices.filter { sizeCounts[members[$0].size]! > 1 || blobSizes.contains(members[$0].size) }

        // Hash in parallel; a file that cannot be read or whose size changed drops out.
        let results = Mutex<[Int: (BlobHash, Int64)]>([:])
        let next = Atomic<Int>(0)
        let targetList = targets
        let snapshot = members
        DispatchQueue.concurrentPerform(iterations: max(1, min(options.jobs, toHash.count))) { _ in
            let buffer = StagingBuffer()
            while true {
                let position = next.add(1, ordering: .relaxed).oldValue
                guard position < toHash.count else { break }
                let m = snapshot[toHash[position]]
                guard let fd = try? targetList[m.target].openCandidate(m.inode) else { continue }
                defer { fd.closeQuietly() }
                guard let st = try? fd.stat(), st.size == m.size,
                      let (hash, length) = try? StagingArea.hash(fd, size: m.size, sparse: true, buffer: buffer),
                      length == m.size else { continue }
                results.withLock { $0[toHash[position]] = (hash, st.blocks * 512) }
            }
        }
        for (index, (hash, allocated)) in results.withLock({ $0 }) {
            members[index].hash = hash
            members[index].allocated = allocated
            report.hashedFiles += 1
            report.hashedBytes += members[index].size
        }

        struct GroupKey: Hashable {
            var size: Int64
            var hash: BlobHash
        }
        var groups: [GroupKey: [Int]] = [:]
        for (index, m) in members.enumerated() {
            if let hash = m.hash { groups[GroupKey(size: m.size, hash: hash), default: []].append(index) }
        }
        // Largest savings first, so that an interrupted run has done the most useful part.
        let ordered = groups.sorted { a, b in
            Int64(a.value.count) * a.key.size != Int64(b.value.count) * b.key.size
                ? Int64(a.value.count) * a.key.size > Int64(b.value.count) * b.key.size
                : a.key.hash < b.key.hash
        }

        // Groups worth sharing: two or more files, or one matching a stored blob.
        var eligible: [(key: GroupKey, members: [Int], known: Bool)] = []
        for (key, indices) in ordered {
            let known = try blobRow(hash: key.hash) != nil
            if indices.count >= 2 || known { eligible.append((key, indices, known)) }
        }
        if options.dryRun {
            for group in eligible {
                report.groups += 1
                if group.known {
                    report.existingBlobsReused += 1
                } else {
                    report.newBlobs += 1
                    report.newBlobBytes += group.key.size
                    report.bytesSaved -= members[group.members[0]].allocated
                }
                for i in group.members {
                    report.filesDeduplicated += 1
                    report.logicalBytes += group.key.size
                    report.bytesSaved += members[i].allocated
                    report.vms[members[i].target].filesDeduplicated += 1
                    report.vms[members[i].target].bytesDeduplicated += group.key.size
                }
            }
            report.seconds = Double(monotonicNanoseconds() - started) / 1e9
            return report
        }

        var area: StagingArea?
        defer { area?.dispose() }
        let buffer = StagingBuffer()
        let shards = ShardDirectories(blobs: blobsDirectory)
        var position = 0
        while position < eligible.count {
            // A batch of groups per lock hold and per publication (one syncfs for its new blobs).
            var batch: [(key: GroupKey, members: [Int], known: Bool)] = []
            var batchBytes: Int64 = 0
            while position < eligible.count && batch.count < 256 && (batch.isEmpty || batchBytes + eligible[position].key.size <= 256 << 20) {
                batch.append(eligible[position])
                batchBytes += eligible[position].key.size
                position += 1
            }
            let lock = try lockBlobsShared()
            defer { withExtendedLifetime(lock) {} }
            // Looked up again under the lock: from here until the last replacement of the batch
            // commits, no deleter can remove these blobs.
            var blobIDs: [BlobHash: Int64] = [:]
            var staged: [StagedBlob] = []
            for group in batch {
                if let row = try blobRow(hash: group.key.hash) {
                    blobIDs[group.key.hash] = row.id
                    continue
                }
                if area == nil { area = try StagingArea(store: self) }
                for i in group.members {
                    let m = members[i]
                    guard let fd = try? targets[m.target].openCandidate(m.inode) else { continue }
                    defer { fd.closeQuietly() }
                    let copy: StagedBlob?
                    do {
                        copy = try area!.stageVerified(from: fd, size: group.key.size, expected: group.key.hash, allowReflink: options.reflink,
                                                       buffer: buffer)
                    } catch {
                        throw PVFSError(.store, "dedup: cannot copy a private file of VM \(targets[m.target].vmName) into \(path)/\(StoreLayout.temporary): \(error)",
                                                errno: error)
                    }
                    guard let copy else { continue }  // written since it was hashed: try the next member
                    staged.append(copy)
                    break
                }
            }
            var newBlobs: Set<BlobHash> = []
            if !staged.isEmpty {
                var published: [BlobHash: Int64] = [:]
                _ = try publish(staged, from: area!, shards: shards) { _, _, ids in published = ids }
                for blob in staged {
                    guard let id = published[blob.hash] else { continue }
                    blobIDs[blob.hash] = id
                    newBlobs.insert(blob.hash)
                }
            }
            let allocation = Dictionary(staged.map { ($0.hash, $0.allocated) }, uniquingKeysWith: { a, _ in a })

            for group in batch {
                guard let blobID = blobIDs[group.key.hash] else {
                    report.skippedChanged += group.members.count
                    continue
                }
                var replaced = 0
                for i in group.members {
                    let m = members[i]
                    let outcome: DedupReplacement
                    do {
                        outcome = try targets[m.target].replace(m.inode, blobID: blobID, hash: group.key.hash)
                    } catch {
                        report.vms[m.target].error = "\(error)"
                        logger.warning("dedup: VM \(targets[m.target].vmName), inode \(m.inode): \(error)")
                        continue
                    }
                    switch outcome {
                    case .replaced:
                        replaced += 1
                        report.filesDeduplicated += 1
                        report.logicalBytes += group.key.size
                        report.bytesSaved += m.allocated
                        report.vms[m.target].filesDeduplicated += 1
                        report.vms[m.target].bytesDeduplicated += group.key.size
                    case .skippedBusy: report.skippedBusy += 1
                    case .skippedChanged: report.skippedChanged += 1
                    case .skippedGone: report.skippedGone += 1
                    }
                }
                // A new blob that no member took stays unreferenced: the janitor collects it.
                guard replaced > 0 else { continue }
                report.groups += 1
                if newBlobs.contains(group.key.hash) {
                    report.newBlobs += 1
                    report.newBlobBytes += group.key.size
                    report.bytesSaved -= allocation[group.key.hash] ?? 0
                } else {
                    report.existingBlobsReused += 1
                }
            }
        }
        report.seconds = Double(monotonicNanoseconds() - started) / 1e9
        return report
    }
}
