/// A POSIX ACL in the xattr form Linux passes for `system.posix_acl_access` and
/// `system.posix_acl_default`: a little-endian version (2), then entries of tag (u16),
/// permissions (u16) and id (u32).
///
/// With FUSE_CAP_POSIX_ACL the kernel enforces ACLs from this form, and the filesystem keeps mode
/// and ACL in step: the rules below are Linux's own (fs/posix_acl.c), so that a file created
/// under a default ACL, or chmod'ed, ends with the mode and ACL ext4 would give it.
public struct PosixACL: Equatable, Sendable {
    public enum Tag: UInt16, Sendable {
        case userObject = 0x01
        case user = 0x02
        case groupObject = 0x04
        case group = 0x08
        case mask = 0x10
        case other = 0x20
    }

    public struct Entry: Equatable, Sendable {
        public var tag: Tag
        public var permissions: UInt16
        public var id: UInt32

        public init(tag: Tag, permissions: UInt16, id: UInt32) {
            self.tag = tag
            self.permissions = permissions
            self.id = id
        }
    }

    public static let version: UInt32 = 2
    public static let accessName: [UInt8] = Array("system.posix_acl_access".utf8)
    public static let defaultName: [UInt8] = Array("system.posix_acl_default".utf8)

    public var entries: [Entry]

    public init(entries: [Entry]) {
        self.entries = entries
    }

    /// Parses the xattr form; nil for anything malformed (wrong version, size or tag).
    public init?(xattr bytes: [UInt8]) {
        guard bytes.count >= 4, (bytes.count - 4) % 8 == 0 else { return nil }
        func u16(_ i: Int) -> UInt16 { UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8 }
        func u32(_ i: Int) -> UInt32 { UInt32(u16(i)) | UInt32(u16(i + 2)) << 16 }
        guard u32(0) == Self.version else { return nil }
        var entries: [Entry] = []
        var i = 4
        while i < bytes.count {
            guard let tag = Tag(rawValue: u16(i)) else { return nil }
            entries.append(Entry(tag: tag, permissions: u16(i + 2) & 7, id: u32(i + 4)))
            i += 8
        }
        self.entries = entries
    }

    public var xattr: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + 8 * entries.count)
        func put16(_ v: UInt16) { out.append(UInt8(v & 0xff)); out.append(UInt8(v >> 8)) }
        func put32(_ v: UInt32) { put16(UInt16(v & 0xffff)); put16(UInt16(v >> 16)) }
        put32(Self.version)
        for e in entries {
            put16(e.tag.rawValue)
            put16(e.permissions)
            put32(e.id)
        }
        return out
    }

    /// posix_acl_equiv_mode: the permission bits the ACL implies and whether the ACL says more
    /// than those bits can (named entries or a mask).
    public func equivalentMode() -> (mode: UInt32, extended: Bool) {
        var mode: UInt32 = 0
        var extended = false
        for e in entries {
            let p = UInt32(e.permissions & 7)
            switch e.tag {
            case .userObject: mode |= p << 6
            case .groupObject: mode |= p << 3
            case .other: mode |= p
            case .mask:
                mode = (mode & ~0o070) | (p << 3)
                extended = true
            case .user, .group: extended = true
            }
        }
        return (mode, extended)
    }

    /// posix_acl_create_masq: a default ACL inherited by a new inode, cut down to the mode the
    /// creator asked for. Returns the inode's access ACL and its permission bits; `extended` is
    /// false when the ACL adds nothing to those bits (then no access ACL is stored).
    public func inherited(mode requested: UInt32) -> (acl: PosixACL, mode: UInt32, extended: Bool) {
        var acl = self
        var mode = requested & 0o777
        var extended = false
        var groupIndex: Int?
        var maskIndex: Int?
        for i in acl.entries.indices {
            switch acl.entries[i].tag {
            case .userObject:
                acl.entries[i].permissions &= UInt16((mode >> 6) & 7)
                mode &= (UInt32(acl.entries[i].permissions) << 6) | ~0o700
            case .user, .group:
                extended = true
            case .groupObject:
                groupIndex = i
            case .other:
                acl.entries[i].permissions &= UInt16(mode & 7)
                mode &= UInt32(acl.entries[i].permissions) | ~0o007
            case .mask:
                maskIndex = i
                extended = true
            }
        }
        if let i = maskIndex ?? groupIndex {
            acl.entries[i].permissions &= UInt16((mode >> 3) & 7)
            mode &= (UInt32(acl.entries[i].permissions) << 3) | ~0o070
        }
        return (acl, (requested & ~0o777) | (mode & 0o777), extended)
    }

    /// posix_acl_chmod: the ACL after chmod to `mode` (owner, mask-or-group and other follow it).
    public func changingMode(_ mode: UInt32) -> PosixACL {
        var acl = self
        var groupIndex: Int?
        var maskIndex: Int?
        for i in acl.entries.indices {
            switch acl.entries[i].tag {
            case .userObject: acl.entries[i].permissions = UInt16((mode >> 6) & 7)
            case .other: acl.entries[i].permissions = UInt16(mode & 7)
            case .groupObject: groupIndex = i
            case .mask: maskIndex = i
            case .user, .group: break
            }
        }
        if let i = maskIndex ?? groupIndex {
            acl.entries[i].permissions = UInt16((mode >> 3) & 7)
        }
        return acl
    }
}
