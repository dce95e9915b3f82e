import CPVFSTransportIO
import Glibc

/// A guest's memory as the front-end shared it: regions of memfds mapped into this process.
///
/// Only descriptors sealed against shrinking are mapped (QEMU's memory-backend-memfd seals by
/// default): a file shrunk under a mapping would make every later access to the lost pages raise
/// SIGBUS in the daemon, which serves every other guest too. Guest addresses are translated only
/// where a whole range lies inside the regions; the mapping lives as long as the object, which
/// every request in flight retains, so a front-end that goes away mid-request cannot make a
/// worker write into unmapped memory.
public final class GuestMemory: @unchecked Sendable {
    struct Mapped {
        var region: VhostUserMemoryRegion
        /// The region's first byte in this process.
        var base: UnsafeMutableRawPointer
        /// What mmap returned and its length (the region plus its offset into the file).
        var mapping: UnsafeMutableRawPointer
        var mappingLength: Int
        var descriptor: Int32
    }

    private let regions: [Mapped]

    /// Maps each region from its descriptor (taking ownership of the descriptors, also on error).
    public init(_ table: [(VhostUserMemoryRegion, Int32)]) throws(VhostUserProtocolError) {
        var mapped: [Mapped] = []
        func fail(_ message: String) -> VhostUserProtocolError {
            for m in mapped { munmap(m.mapping, m.mappingLength) }
            for (_, fd) in table { Glibc.close(fd) }
            return VhostUserProtocolError(message)
        }
        for (region, fd) in table {
            guard region.size > 0 else { throw fail("memory region of size 0") }
            let (guestEnd, o1) = region.guestAddress.addingReportingOverflow(region.size)
            let (userEnd, o2) = region.userAddress.addingReportingOverflow(region.size)
            let (fileEnd, o3) = region.mmapOffset.addingReportingOverflow(region.size)
            guard !o1, !o2, !o3, fileEnd <= UInt64(Int.max) else { throw fail("memory region wraps the address space") }
            _ = guestEnd
            _ = userEnd
            let seals = cpvfs_get_seals(fd)
            guard seals >= 0, seals & CPVFS_SEAL_SHRINK != 0 else {
                throw fail("memory region descriptor is not sealed against shrinking (use memory-backend-memfd)")
            }
            var st = Glibc.stat()
            guard fstat(fd, &st) == 0, st.st_size >= 0, UInt64(st.st_size) >= fileEnd else {
                throw fail("memory region extends past its file")
            }
            let length = Int(fileEnd)
            guard let mapping = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0),
                  mapping != MAP_FAILED else {
                throw fail("cannot map a memory region: \(String(cString: strerror(errno)))")
            }
            mapped.append(Mapped(region: region, base: mapping + Int(region.mmapOffset), mapping: mapping, mappingLength: length, descriptor: fd))
        }
        let sorted = mapped.sorted { $0.region.guestAddress < $1.region.guestAddress }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.region.guestAddress + a.region.size > b.region.guestAddress {
            throw fail("memory regions overlap")
        }
        let byUser = mapped.sorted { $0.region.userAddress < $1.region.userAddress }
        for (a, b) in zip(byUser, byUser.dropFirst()) where a.region.userAddress + a.region.size > b.region.userAddress {
            throw fail("memory regions overlap in the front-end's addresses")
        }
        regions = sorted
    }

    deinit {
        for m in regions {
            munmap(m.mapping, m.mappingLength)
            Glibc.close(m.descriptor)
        }
    }

    public var regionCount: Int { regions.count }
    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.region.size } }

    /// The host buffers of `length` guest bytes at `guestAddress`, split where the range crosses
    /// from one region into the next; nil where any byte lies outside the regions.
    public func translate(_ guestAddress: UInt64, length: UInt32) -> [UnsafeMutableRawBufferPointer]? {
        var address = guestAddress
        var left = UInt64(length)
        guard !address.addingReportingOverflow(left).overflow else { return nil }
        var out: [UnsafeMutableRawBufferPointer] = []
        while left > 0 {
            guard let m = region(containing: address) else { return nil }
            let offset = address - m.region.guestAddress
            let n = min(left, m.region.size - offset)
            out.append(UnsafeMutableRawBufferPointer(start: m.base + Int(offset), count: Int(n)))
            address += n
            left -= n
        }
        return out
    }

    /// One contiguous host range for `length` guest bytes (descriptor and indirect tables).
    public func contiguous(_ guestAddress: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        guard length >= 0, let m = region(containing: guestAddress) else { return nil }
        let offset = guestAddress - m.region.guestAddress
        guard UInt64(length) <= m.region.size - offset else { return nil }
        return m.base + Int(offset)
    }

    /// A ring given by the front-end's own virtual address: wholly inside one region, aligned.
    public func ring(userAddress: UInt64, length: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        guard length > 0, alignment > 0, userAddress % UInt64(alignment) == 0 else { return nil }
        for m in regions where userAddress >= m.region.userAddress && userAddress - m.region.userAddress < m.region.size {
            let offset = userAddress - m.region.userAddress
            guard UInt64(length) <= m.region.size - offset else { return nil }
            return m.base + Int(offset)
        }
        return nil
    }

    private func region(containing address: UInt64) -> Mapped? {
        var low = 0
        var high = regions.count - 1
        while low <= high {
            let mid = (low + high) / 2
            let r = regions[mid].region
            if address < r.guestAddress {
                high = mid - 1
            } else if address - r.guestAddress >= r.size {
                low = mid + 1
            } else {
                return regions[mid]
            }
        }
        return nil
    }
}
