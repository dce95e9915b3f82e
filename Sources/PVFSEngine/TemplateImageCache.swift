import Foundation
import Logging
import PVFSStore
import PVFSSystem

/// The template images of one store, one per template tree, shared by every volume of it.
///
/// A volume takes a lease on its template's image when it opens and returns it when it closes.
/// The first lease of a template loads the image from the catalog; volumes of that template
/// opened meanwhile wait for that load rather than loading their own. An image nobody leases
/// stays for `idleRetention` (a rebooting guest re-attaches within seconds), at most
/// `maximumIdleImages` of them, then it is dropped.
///
/// Images are keyed by `TemplateIdentity` (id and creation time): a ready template's tree never
/// changes, and a template created after another was removed may get its id but never its
/// identity, so an image is never served for a tree it was not loaded from.
public final class TemplateImageCache: @unchecked Sendable {
    public let store: Store
    public let idleRetention: Duration
    public let maximumIdleImages: Int
    private let logger: Logger
    /// Guards `slots`; signalled when a load ends.
    private let condition = NSCondition()
    private var slots: [TemplateIdentity: Slot] = [:]
    /// Images loaded so far. Guarded by `condition`.
    private var loadCount = 0
    /// Called before each load, outside the lock (tests widen the window of a race with it).
    var willLoad: (@Sendable (TemplateIdentity) -> Void)?
    /// Runs the deferred drops of idle images.
    private let evictionQueue = DispatchQueue(label: "pvfs.template-images")

    private enum Slot {
        /// One thread loads the image; other openers wait for it.
        case loading
        case leased(TemplateImage, leases: Int)
        /// Nobody leases it since `since` (`ContinuousClock`); dropped after `idleRetention`.
        case idle(TemplateImage, since: ContinuousClock.Instant)
    }

    /// How long an unleased image stays when none is given.
    public static let defaultIdleRetention: Duration = .seconds(60)

    public init(store: Store, idleRetention: Duration = TemplateImageCache.defaultIdleRetention, maximumIdleImages: Int = 4,
                logger: Logger = Logger(label: "pvfs.template-images")) {
        self.store = store
        self.idleRetention = idleRetention
        self.maximumIdleImages = max(0, maximumIdleImages)
        self.logger = logger
    }

    /// The shared image of a template tree, loaded on first use. Throws what the load throws
    /// (a missing or damaged template); a failed load is retried by the next lease.
    func lease(_ identity: TemplateIdentity) throws -> TemplateImageLease {
        condition.lock()
        while true {
            switch slots[identity] {
            case .leased(let image, let leases):
                slots[identity] = .leased(image, leases: leases + 1)
                condition.unlock()
                return TemplateImageLease(image: image, cache: self)
            case .idle(let image, _):
                slots[identity] = .leased(image, leases: 1)
                condition.unlock()
                return TemplateImageLease(image: image, cache: self)
            case .loading:
                condition.wait()
            case nil:
                // Images of an earlier template with this id are of a removed tree.
                for (key, slot) in slots where key.id == identity.id {
                    if case .idle = slot { slots[key] = nil }
                }
                slots[identity] = .loading
                let image = try condition.whileUnlocked({
                    willLoad?(identity)
                    return try Self.load(identity, from: store)
                }, ifFailed: { slots[identity] = nil })
                loadCount += 1
                slots[identity] = .leased(image, leases: 1)
                condition.unlock()
                logger.debug("template image loaded", metadata: ["template": "\(identity.id)", "inodes": "\(image.inodes.count)"])
                return TemplateImageLease(image: image, cache: self)
            }
        }
    }

    /// Loads a template's image outside any cache (tools that open one VM, fsck).
    static func load(_ identity: TemplateIdentity, from store: Store) throws -> TemplateImage {
        let image = TemplateImage(try store.loadTemplateImage(id: identity.id))
        guard image.identity == identity else {
            throw PVFSError(.store, "\(identity) is no longer in the catalog (its id names a newer template)",
                            errno: .noSuchFileOrDirectory)
        }
        return image
    }

    fileprivate func release(_ image: TemplateImage) {
        let identity = image.identity
        condition.lock()
        defer { condition.unlock() }
        guard case .leased(let held, let leases) = slots[identity], held === image else { return }
        if leases > 1 {
            slots[identity] = .leased(image, leases: leases - 1)
            return
        }
        slots[identity] = .idle(image, since: .now)
        dropIdleLocked(now: .now)
        let retention = idleRetention
        evictionQueue.asyncAfter(deadline: .now() + Self.seconds(retention) + 0.01) { [weak self] in
            guard let self else { return }
            condition.lock()
            dropIdleLocked(now: .now)
            condition.unlock()
        }
    }

    /// Drops images idle for `idleRetention`, and the oldest idle ones beyond `maximumIdleImages`.
    private func dropIdleLocked(now: ContinuousClock.Instant) {
        var idle: [(TemplateIdentity, ContinuousClock.Instant)] = []
        for (identity, slot) in slots {
            guard case .idle(_, let since) = slot else { continue }
            if now - since >= idleRetention {
                slots[identity] = nil
                logger.debug("template image dropped", metadata: ["template": "\(identity.id)"])
            } else {
                idle.append((identity, since))
            }
        }
        guard idle.count > maximumIdleImages else { return }
        idle.sort { $0.1 < $1.1 }
        for (identity, _) in idle.prefix(idle.count - maximumIdleImages) { slots[identity] = nil }
    }

    private static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// Images loaded so far (each load is one template's tree read from the catalog).
    public var loads: Int {
        condition.lock()
        defer { condition.unlock() }
        return loadCount
    }

    /// Images held now (leased or idle), and how many leases each has (tests, reports).
    public var heldImages: [TemplateIdentity: Int] {
        condition.lock()
        defer { condition.unlock() }
        var held: [TemplateIdentity: Int] = [:]
        for (identity, slot) in slots {
            switch slot {
            case .leased(_, let leases): held[identity] = leases
            case .idle: held[identity] = 0
            case .loading: break
            }
        }
        return held
    }
}

/// A volume's hold on its template's image; returned once, by `release()` or when dropped.
final class TemplateImageLease: @unchecked Sendable {
    let image: TemplateImage
    private weak var cache: TemplateImageCache?
    private let lock = NSLock()
    private var released = false

    fileprivate init(image: TemplateImage, cache: TemplateImageCache?) {
        self.image = image
        self.cache = cache
    }

    /// An image no cache holds (a volume opened without one).
    convenience init(unshared image: TemplateImage) {
        self.init(image: image, cache: nil)
    }

    func release() {
        let first = lock.withLock {
            defer { released = true }
            return !released
        }
        if first { cache?.release(image) }
    }

    deinit { release() }
}
