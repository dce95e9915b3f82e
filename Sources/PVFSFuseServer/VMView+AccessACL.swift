import Glibc
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

/// What a new inode takes from its directory's default ACL (posix_acl_create): its mode, and
/// the access and default ACLs stored on it.
public struct InheritedACLs: Sendable {
    public var mode: UInt32
    public var access: [UInt8]?
    public var inheritedDefault: [UInt8]?

    public init(mode: UInt32, access: [UInt8]? = nil, inheritedDefault: [UInt8]? = nil) {
        self.mode = mode
        self.access = access
        self.inheritedDefault = inheritedDefault
    }
}

/// Creating inodes, the same for every FUSE front-end: `umask` is nil where the client applied
/// it already; with DONT_MASK it is applied here, and only where no default ACL replaces it.
extension VMView {
    public func inheritedACLs(parent: InodeNumber, mode: UInt32, umask: UInt32?, aclActive: Bool, directory: Bool) -> InheritedACLs {
        guard let umask else { return InheritedACLs(mode: mode) }
        guard aclActive, let bytes = try? getXattr(parent, PosixACL.defaultName, as: .root), let acl = PosixACL(xattr: bytes) else {
            return InheritedACLs(mode: mode & ~(umask & 0o777))
        }
        let (access, newMode, extended) = acl.inherited(mode: mode)
        return InheritedACLs(mode: newMode, access: extended ? access.xattr : nil, inheritedDefault: directory ? bytes : nil)
    }

    /// Stores the ACLs a new inode inherited; returns its attributes after that. A failure leaves
    /// the inode with its mode only, which the caller sees as an error.
    public func storeInheritedACLs(_ inherited: InheritedACLs, on attributes: Attributes) throws(Errno) -> Attributes {
        guard inherited.access != nil || inherited.inheritedDefault != nil else { return attributes }
        if let access = inherited.access { try setXattr(attributes.inode, PosixACL.accessName, access, as: .root) }
        if let inheritedDefault = inherited.inheritedDefault {
            try setXattr(attributes.inode, PosixACL.defaultName, inheritedDefault, as: .root)
        }
        return try getAttributes(attributes.inode)
    }

    /// mknod with the ACLs the directory hands down.
    public func makeNode(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, rdev: UInt64, umask: UInt32?, aclActive: Bool,
                         as credentials: Credentials) throws(Errno) -> Attributes {
        let inherited = inheritedACLs(parent: parent, mode: mode, umask: umask, aclActive: aclActive, directory: false)
        return try storeInheritedACLs(inherited, on: try makeNode(parent, name, mode: inherited.mode, rdev: rdev, as: credentials))
    }

    /// mkdir with the ACLs the directory hands down (a directory also inherits the default ACL).
    public func makeDirectory(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, umask: UInt32?, aclActive: Bool,
                              as credentials: Credentials) throws(Errno) -> Attributes {
        let inherited = inheritedACLs(parent: parent, mode: mode, umask: umask, aclActive: aclActive, directory: true)
        return try storeInheritedACLs(inherited, on: try makeDirectory(parent, name, mode: inherited.mode, as: credentials))
    }

    /// open(O_CREAT) with the ACLs the directory hands down. Without O_EXCL, a file another
    /// creator made first is opened instead.
    public func createOrOpen(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, flags: Int32, umask: UInt32?, aclActive: Bool,
                             as credentials: Credentials) throws(Errno) -> (Attributes, OpenFile) {
        let inherited = inheritedACLs(parent: parent, mode: mode, umask: umask, aclActive: aclActive, directory: false)
        do throws(Errno) {
            let (attributes, file) = try create(parent, name, mode: inherited.mode, flags: flags, as: credentials)
            do throws(Errno) {
                return (try storeInheritedACLs(inherited, on: attributes), file)
            } catch {
                release(file)
                throw error
            }
        } catch where error == .fileExists && flags & O_EXCL == 0 {
            let attributes = try lookup(parent, name, as: credentials)
            return (attributes, try open(attributes.inode, flags: flags & ~O_CREAT, as: credentials))
        }
    }
}
