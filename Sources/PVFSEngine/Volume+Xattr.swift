import PVFSStore
import PVFSSystem
import SystemPackage

/// Limits of Linux's xattr interface.
enum XattrLimits {
    static let maximumNameLength = 255
    static let maximumValueSize = 65536
    static let namespaces: [[UInt8]] = ["user.", "trusted.", "security.", "system."].map { Array($0.utf8) }
    static let aclNames: [[UInt8]] = ["system.posix_acl_access", "system.posix_acl_default"].map { Array($0.utf8) }
}

extension Volume {
    /// The xattr set of an inode: the VM's own once it changed any, else the template's.
    /// Caller holds metaLock.
    func xattrSet(_ ino: InodeNumber, _ r: InodeRecord) -> [[UInt8]: [UInt8]] {
        if r.privateXattrs { return overlay.xattrs[ino] ?? [:] }
        if isTemplateInode(ino) { return template.xattrs[ino] ?? [:] }
        return [:]
    }

    func getXattr(_ ino: InodeNumber, _ name: [UInt8], _ ctx: RequestContext) throws(Errno) -> [UInt8] {
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireRecord(ino)
        try checkXattrName(name)
        if name.starts(with: Array("trusted.".utf8)) && ctx.enforcePermissions && !ctx.caller.privileged {
            throw Errno.noData
        }
        guard let value = xattrSet(ino, r)[name] else { throw Errno.noData }
        return value
    }

    func listXattrs(_ ino: InodeNumber, _ ctx: RequestContext) throws(Errno) -> [[UInt8]] {
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireRecord(ino)
        // A local filesystem lists trusted.* only to CAP_SYS_ADMIN (root, as far as the server
        // can tell), and Linux's 9p client passes the server's list through unfiltered.
        let hideTrusted = ctx.checks != .hostKernel && !ctx.caller.privileged
        return xattrSet(ino, r).keys
            .filter { !(hideTrusted && $0.starts(with: Array("trusted.".utf8))) }
            .sorted { $0.lexicographicallyPrecedes($1) }
    }

    func setXattr(_ ino: InodeNumber, _ name: [UInt8], _ value: [UInt8], mode: XattrSetMode, _ ctx: RequestContext) throws(Errno) {
        try ctx.requireWritable()
        try checkXattrName(name)
        guard value.count <= XattrLimits.maximumValueSize else { throw Errno.argListTooLong }
        if XattrLimits.aclNames.contains(name) { try checkACL(value) }
        try requireRoomToGrow()
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireRecord(ino)
        try checkXattrWrite(r, name, ctx)
        var set = xattrSet(ino, r)
        let exists = set[name] != nil
        if mode == .createOnly && exists { throw Errno.fileExists }
        if mode == .replaceOnly && !exists { throw Errno.noData }
        set[name] = value
        try requireXattrRoom(ino, set)
        try replaceXattrs(ino, r, set)
    }

    func removeXattr(_ ino: InodeNumber, _ name: [UInt8], _ ctx: RequestContext) throws(Errno) {
        try ctx.requireWritable()
        try checkXattrName(name)
        metaLock.lock()
        defer { metaLock.unlock() }
        let r = try requireRecord(ino)
        try checkXattrWrite(r, name, ctx)
        var set = xattrSet(ino, r)
        guard set.removeValue(forKey: name) != nil else { throw Errno.noData }
        try replaceXattrs(ino, r, set)
    }

    /// Commits a new xattr set, charging its growth. Caller holds metaLock.
    private func replaceXattrs(_ ino: InodeNumber, _ r: InodeRecord, _ set: [[UInt8]: [UInt8]]) throws(Errno) {
        var after = touched(r)
        after.privateXattrs = true
        let before = chargeOf(ino, r)
        let then = chargeOf(ino, after, xattrs: set)
        var edit = Edit()
        edit.bytes = then.bytes - before.bytes
        edit.inodes = then.inodes - before.inodes
        edit.records[ino] = after
        edit.changes.append(.replaceXattrs(ino, set))
        try apply(edit)
    }

    private func checkXattrName(_ name: [UInt8]) throws(Errno) {
        guard !name.isEmpty, name.count <= XattrLimits.maximumNameLength else { throw Errno.outOfRange }
        guard !name.contains(0) else { throw Errno.invalidArgument }
        guard XattrLimits.namespaces.contains(where: { name.starts(with: $0) && name.count > $0.count }) else {
            throw Errno.notSupported
        }
    }

    /// Who may change which namespace, as on Linux: user.* needs write permission and a regular
    /// file or directory; trusted.* and security.* need root; ACLs need ownership.
    private func checkXattrWrite(_ r: InodeRecord, _ name: [UInt8], _ ctx: RequestContext) throws(Errno) {
        let privileged = !ctx.enforcePermissions || ctx.caller.privileged
        if name.starts(with: Array("user.".utf8)) {
            guard r.kind == .regular || r.kind == .directory else { throw Errno.notPermitted }
            if r.isDirectory && r.mode & stickyBit != 0 && !privileged && ctx.caller.uid != r.uid { throw Errno.notPermitted }
            try requirePermission(r, ctx, .write)
        } else if name.starts(with: Array("system.".utf8)) {
            guard XattrLimits.aclNames.contains(name) else { throw Errno.notSupported }
            if name == XattrLimits.aclNames[1] && !r.isDirectory { throw Errno.permissionDenied }
            if !privileged && ctx.caller.uid != r.uid { throw Errno.notPermitted }
        } else if !privileged {
            throw Errno.notPermitted
        }
    }

    /// A POSIX ACL xattr: a 4-byte version (2) then 8-byte entries.
    private func checkACL(_ value: [UInt8]) throws(Errno) {
        guard value.count >= 4, (value.count - 4) % 8 == 0 else { throw Errno.invalidArgument }
        let version = UInt32(value[0]) | UInt32(value[1]) << 8 | UInt32(value[2]) << 16 | UInt32(value[3]) << 24
        guard version == 2 else { throw Errno.invalidArgument }
    }
}
