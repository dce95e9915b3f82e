import CXen
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Size of a Xen page: grants and ring protocols are always in 4 KiB units.
public let xenPageSize = 4096

/// The first grant references are reserved for the toolstack (console and xenstore rings,
/// GNTTAB_NR_RESERVED_ENTRIES); a frontend never grants a ring through them.
public let xenFirstUnreservedGrantRef: UInt32 = 8

/// A libxengnttab handle (/dev/xen/gntdev) for mapping pages other domains granted us.
public final class XenGrantTable: @unchecked Sendable {
    fileprivate let handle: OpaquePointer

    public init() throws {
        errno = 0
        guard let handle = xengnttab_open(nil, 0) else {
            throw XenError.system("xengnttab_open", "(is xen-gntdev loaded?)", errno: errno == 0 ? ENODEV : errno)
        }
        self.handle = handle
    }

    deinit {
        xengnttab_close(handle)
    }

    /// Maps one page granted by `domid` read-write.
    public func map(domid: UInt32, ref: UInt32) throws -> XenGrantMapping {
        errno = 0
        guard let address = xengnttab_map_grant_ref(handle, domid, ref, PROT_READ | PROT_WRITE) else {
            throw XenError.system("xengnttab_map_grant_ref", "domain \(domid) ref \(ref)")
        }
        return XenGrantMapping(table: self, address: address, pageCount: 1)
    }

    /// Maps the pages granted by `domid` under `refs` read-write, contiguously in the order given.
    public func mapContiguous(domid: UInt32, refs: [UInt32]) throws -> XenGrantMapping {
        precondition(!refs.isEmpty)
        var refs = refs
        errno = 0
        let address = refs.withUnsafeMutableBufferPointer { buffer in
            xengnttab_map_domain_grant_refs(handle, UInt32(buffer.count), domid, buffer.baseAddress,
                                            PROT_READ | PROT_WRITE)
        }
        guard let address else {
            throw XenError.system("xengnttab_map_domain_grant_refs", "domain \(domid), \(refs.count) refs")
        }
        return XenGrantMapping(table: self, address: address, pageCount: refs.count)
    }
}

/// Pages of another domain mapped into this process. Unmapped explicitly by `unmap()` or
/// when the last reference goes away; the grant table handle lives at least as long.
public final class XenGrantMapping: @unchecked Sendable {
    private let table: XenGrantTable
    public let address: UnsafeMutableRawPointer
    public let pageCount: Int
    private let mapped = Mutex(true)

    fileprivate init(table: XenGrantTable, address: UnsafeMutableRawPointer, pageCount: Int) {
        self.table = table
        self.address = address
        self.pageCount = pageCount
    }

    public var byteCount: Int { pageCount * xenPageSize }

    /// Unmaps the pages. Nothing may touch `address` afterwards.
    public func unmap() {
        let wasMapped = mapped.withLock { state in
            defer { state = false }
            return state
        }
        guard wasMapped else { return }
        _ = xengnttab_unmap(table.handle, address, UInt32(pageCount))
    }

    deinit {
        unmap()
    }
}
