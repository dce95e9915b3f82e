import Glibc
import PVFSSystem
import SystemPackage

extension VMView {
    /// Opens an inode again for a client whose open file moved here from another process (a
    /// graceful upgrade of the server): the client opened it there, with the permissions of
    /// that moment, so nothing is checked again, nothing is truncated, and an inode unlinked
    /// while open (kept through the hand-over) opens too. Writable opens find the file copied
    /// up already (the first open did it); should it not be, it is copied up now.
    public func reopen(_ ino: InodeNumber, flags: Int32) throws(Errno) -> OpenFile {
        try volume.reopen(ino, flags: flags & ~(O_TRUNC | O_CREAT | O_EXCL))
    }
}

extension Volume {
    func reopen(_ ino: InodeNumber, flags: Int32) throws(Errno) -> OpenFile {
        let access = flags & O_ACCMODE
        let wantsWrite = access == O_WRONLY || access == O_RDWR
        metaLock.lock()
        guard let r = record(ino) else {
            metaLock.unlock()
            throw Errno.noSuchFileOrDirectory
        }
        switch r.kind {
        case .directory:
            metaLock.unlock()
            return OpenFile(inode: ino, flags: flags, data: nil)
        case .regular:
            break
        default:
            metaLock.unlock()
            throw Errno.noSuchAddressOrDevice
        }
        let data: InodeData
        do throws(Errno) {
            data = try retainData(ino, r)
        } catch {
            metaLock.unlock()
            throw error
        }
        if wantsWrite { data.writers += 1 }
        metaLock.unlock()
        let handle = OpenFile(inode: ino, flags: flags, data: data)
        if wantsWrite {
            do throws(Errno) {
                try copyUp(ino, data, contentUpTo: nil)
            } catch {
                release(handle)
                throw error
            }
        }
        return handle
    }
}
