import PVFSEngine
import PVFSSystem
import SystemPackage

/// Mode and access ACL kept in step, the same for every FUSE front-end (the FUSE server and the
/// libfuse host mount): Linux's rules from fs/posix_acl.c.
extension VMView {
    /// setfacl of `system.posix_acl_access`: an ACL equivalent to a mode is stored as that mode
    /// only; the mode's permission bits follow the ACL. `clearsSetGID(gid)` says whether the
    /// set-group-id bit goes (the caller is not in the file's group, or the client says so).
    public func setAccessACL(_ ino: InodeNumber, _ bytes: [UInt8], mode: XattrSetMode, as credentials: Credentials,
                             clearsSetGID: (UInt32) -> Bool) throws(Errno) {
        guard let acl = PosixACL(xattr: bytes) else { throw Errno.invalidArgument }
        let current = try getAttributes(ino)
        let (aclMode, extended) = acl.equivalentMode()
        var newMode = (current.mode & ~0o777) | aclMode
        if newMode & 0o2000 != 0 && clearsSetGID(current.gid) { newMode &= ~0o2000 }
        if extended {
            try setXattr(ino, PosixACL.accessName, bytes, mode: mode, as: credentials)
        } else {
            if mode == .replaceOnly, (try? getXattr(ino, PosixACL.accessName, as: .root)) == nil { throw Errno.noData }
            do throws(Errno) {
                try removeXattr(ino, PosixACL.accessName, as: credentials)
            } catch where error == .noData {
            }
        }
        if newMode & permissionBitsMask != current.mode & permissionBitsMask {
            _ = try setAttributes(ino, AttributeChanges(mode: newMode & permissionBitsMask), as: .root)
        }
    }

    /// chmod of an inode with an access ACL rewrites the ACL's owner, mask (or group) and other
    /// entries (posix_acl_chmod). Returns the attributes after the change.
    public func followModeInAccessACL(_ ino: InodeNumber, mode: UInt32, attributes: Attributes) throws(Errno) -> Attributes {
        guard let bytes = try? getXattr(ino, PosixACL.accessName, as: .root), let acl = PosixACL(xattr: bytes) else {
            return attributes
        }
        let updated = acl.changingMode(mode)
        guard updated != acl else { return attributes }
        try setXattr(ino, PosixACL.accessName, updated.xattr, as: .root)
        return try getAttributes(ino)
    }
}
