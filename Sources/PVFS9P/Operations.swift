import Foundation
import Glibc
import PVFS9PCodec
import PVFSEngine
import PVFSSystem
import SystemPackage

// Each T-message mapped onto VMView. Handlers run on worker threads, throw `Errno` for
// Rlerror, and return the encoded reply.

extension NinePSession {
    /// Executes one decoded request (not Tversion or Tflush: the connection answers those) and
    /// returns its encoded reply, an Rlerror included; `.deferred` when it completes later
    /// through `request.complete`.
    func handle(_ decoded: NinePRequest, _ request: any NinePRequestContext) -> NinePOutcome {
        let tag = request.tag
        do throws(Errno) {
            if case .lock(let fid, let lock) = decoded {
                return try self.lock(request, fid: fid, lock)
            }
            if case .read(let fid, let offset, let count) = decoded {
                return .reply(try read(request, fid: fid, offset: offset, count: count))
            }
            if case .readdir(let fid, let offset, let count) = decoded {
                return .reply(try readDirectory(request, fid: fid, offset: offset, count: count))
            }
            return .reply(try perform(request, decoded).encode(tag: tag))
        } catch {
            return .reply(NinePResponse.error(errno: UInt32(bitPattern: error.rawValue)).encode(tag: tag))
        }
    }

    private func perform(_ request: any NinePRequestContext, _ message: NinePRequest) throws(Errno) -> NinePResponse {
        switch message {
        case .version, .flush, .lock, .read, .readdir:
            // Handled before dispatch; a second copy of the tag would be a bug.
            throw Errno.protocolError
        case .auth:
            // No authentication: Tattach takes afid = NOFID.
            throw Errno.notSupported
        case .attach(let fid, let afid, let uname, let aname, let uid):
            return try attach(request, fid: fid, afid: afid, uname: uname, aname: aname, uid: uid)
        case .walk(let fid, let newFid, let names):
            return try walk(request, fid: fid, newFid: newFid, names: names)
        case .lopen(let fid, let flags):
            return try open(request, fid: fid, flags: NinePOpenFlags(rawValue: flags))
        case .lcreate(let fid, let name, let flags, let mode, let gid):
            return try create(request, fid: fid, name: name, flags: NinePOpenFlags(rawValue: flags), mode: mode, gid: gid)
        case .write(let fid, let offset, let data):
            return try write(request, fid: fid, offset: offset, data: data)
        case .clunk(let fid):
            return try clunk(request, fid: fid)
        case .remove(let fid):
            return try remove(request, fid: fid)
        case .statfs(let fid):
            return try withFid(request, fid) { (f) throws(Errno) in
                .statfs(ninePStatfs(f.view.statistics(), vmName: f.view.vmName))
            }
        case .symlink(let fid, let name, let target, let gid):
            return try withFid(request, fid) { (f) throws(Errno) in
                let dir = try plainFile(f)
                let a = try f.view.makeSymlink(dir.inode, name, target: target, as: credentials(f, gid: gid))
                return .symlink(qid: NinePQid(a))
            }
        case .mknod(let dfid, let name, let mode, let major, let minor, let gid):
            return try withFid(request, dfid) { (f) throws(Errno) in
                let dir = try plainFile(f)
                let a = try f.view.makeNode(dir.inode, name, mode: mode, rdev: DeviceNumber.make(major: major, minor: minor),
                                            as: credentials(f, gid: gid))
                return .mknod(qid: NinePQid(a))
            }
        case .mkdir(let dfid, let name, let mode, let gid):
            return try withFid(request, dfid) { (f) throws(Errno) in
                let dir = try plainFile(f)
                let a = try f.view.makeDirectory(dir.inode, name, mode: mode, as: credentials(f, gid: gid))
                return .mkdir(qid: NinePQid(a))
            }
        case .rename(let fid, let dfid, let name):
            return try rename(request, fid: fid, dfid: dfid, name: name)
        case .renameat(let oldDirFid, let oldName, let newDirFid, let newName):
            return try withFid(request, oldDirFid) { (from) throws(Errno) in
                try withFid(request, newDirFid) { (to) throws(Errno) in
                    guard from.view.isSameVM(as: to.view) else { throw Errno.improperLink }
                    let source = try plainFile(from)
                    let target = try plainFile(to)
                    try from.view.rename(source.inode, oldName, to: target.inode, newName, as: credentials(from))
                    return .renameat
                }
            }
        case .unlinkat(let dirFid, let name, let flags):
            guard flags & ~NinePUnlinkFlags.removeDirectory == 0 else { throw Errno.invalidArgument }
            return try withFid(request, dirFid) { (f) throws(Errno) in
                let dir = try plainFile(f)
                if flags & NinePUnlinkFlags.removeDirectory != 0 {
                    try f.view.removeDirectory(dir.inode, name, as: credentials(f))
                } else {
                    try f.view.unlink(dir.inode, name, as: credentials(f))
                }
                return .unlinkat
            }
        case .link(let dfid, let fid, let name):
            return try withFid(request, dfid) { (dir) throws(Errno) in
                try withFid(request, fid) { (file) throws(Errno) in
                    guard dir.view.isSameVM(as: file.view) else { throw Errno.improperLink }
                    let d = try plainFile(dir)
                    let target = try plainFile(file)
                    _ = try dir.view.link(target.inode, into: d.inode, name, as: credentials(dir))
                    return .link
                }
            }
        case .readlink(let fid):
            return try withFid(request, fid) { (f) throws(Errno) in
                let target = try f.view.readLink(try plainFile(f).inode)
                guard NineP.headerSize + 2 + target.count <= request.messageSize else { throw Errno.fileNameTooLong }
                return .readlink(target: target)
            }
        case .getattr(let fid, _):
            return try withFid(request, fid) { (f) throws(Errno) in
                .getattr(NinePAttributes(try f.view.getAttributes(try plainFile(f).inode)))
            }
        case .setattr(let fid, let changes):
            return try setAttributes(request, fid: fid, changes)
        case .xattrwalk(let fid, let newFid, let name):
            return try xattrWalk(request, fid: fid, newFid: newFid, name: name)
        case .xattrcreate(let fid, let name, let size, let flags):
            return try xattrCreate(request, fid: fid, name: name, size: size, flags: flags)
        case .fsync(let fid, let datasync):
            return try withFid(request, fid) { (f) throws(Errno) in
                let snapshot = try plainFile(f)
                var handle: OpenFile?
                if case .open(let h) = snapshot.state { handle = h }
                try f.view.sync(snapshot.inode, handle: handle, dataOnly: datasync != 0)
                return .fsync
            }
        case .getlock(let fid, let lock):
            return try getLock(request, fid: fid, lock)
        }
    }

    // MARK: Helpers

    /// Credentials of a fid's user; `gid` is the one a creating request carries.
    func credentials(_ fid: Fid, gid: UInt32? = nil) -> Credentials {
        accounts.credentials(uid: fid.uid, requestGid: gid, view: fid.view)
    }

    /// The fid's snapshot, refusing xattr fids (they stand for an attribute, not a file).
    func plainFile(_ fid: Fid) throws(Errno) -> Fid.Snapshot {
        let s = fid.snapshot
        if s.state.isXattr { throw Errno.invalidArgument }
        return s
    }

    // MARK: Attach and walk

    private func attach(_ request: any NinePRequestContext, fid number: UInt32, afid: UInt32, uname: [UInt8], aname: [UInt8],
                        uid: UInt32) throws(Errno) -> NinePResponse {
        guard afid == NineP.noFid else { throw Errno.invalidArgument }
        guard number != NineP.noFid, !request.fids.contains(number) else { throw Errno.invalidArgument }
        let numeric: UInt32? = uid != NineP.noUid ? uid : GuestAccountDatabase.decimal(uname)
        let attachRequest = NinePAttachRequest(anameBytes: aname, unameBytes: uname, uid: numeric, peer: peer)
        try beginAttach()
        let view: VMView
        do {
            view = try resolver(attachRequest)
        } catch {
            abandonAttach()
            let errno = Errno.of(error)
            logger.info("attach to \"\(attachRequest.aname)\" as \(numeric.map(String.init) ?? attachRequest.uname) refused: \(error)")
            throw errno
        }
        try admitAttach(view, for: request, attach: attachRequest)
        do throws(Errno) {
            // Linux's first attach of a mount (access=client, its default) names no uid and the
            // user "nobody"; a name the VM does not know acts as nobody too: never with privilege.
            let user = numeric ?? accounts.uid(named: uname, view: view) ?? IdMapping.overflowId
            let root = try view.getAttributes(rootInode)
            let fid = Fid(number: number, view: view, uid: user, inode: rootInode, kind: .directory, path: nil,
                          lock: request.fids.fidStateLock)
            try insert(fid, into: request.fids)
            logger.debug("attached fid \(number) to VM \(view.vmName) as uid \(user)")
            return .attach(qid: NinePQid(root))
        } catch {
            // No fid made it: the session has nothing to live for.
            if !request.fids.hasFids(of: view) { endSession(view) }
            throw error
        }
    }

    /// Twalk: each name from the fid's directory; "." stays, ".." goes up (and stays at the
    /// root). A failure at the first name is an error; later, Rwalk lists the qids reached and
    /// newfid is not made. No names: newfid becomes a clone of fid.
    private func walk(_ request: any NinePRequestContext, fid: UInt32, newFid: UInt32, names: [[UInt8]]) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            let start = try plainFile(f)
            if newFid != fid {
                guard newFid != NineP.noFid, !request.fids.contains(newFid) else { throw Errno.invalidArgument }
            } else if !names.isEmpty, case .idle = start.state {
                // Moving fid itself: only an unopened fid may change what it names.
            } else if !names.isEmpty {
                throw Errno.invalidArgument
            }
            var inode = start.inode
            var kind = start.kind
            var path = start.path
            var qids: [NinePQid] = []
            // A clone (no names) looks nothing up: spare it the account lookup.
            let creds = names.isEmpty ? Credentials(uid: f.uid, gid: IdMapping.overflowId) : credentials(f)
            for (i, name) in names.enumerated() {
                let a: Attributes
                do throws(Errno) {
                    a = try f.view.lookup(inode, name, as: creds)
                } catch {
                    if i == 0 { throw error }
                    break
                }
                if FileName.isDot(name) {
                    // The same file: its path stays.
                } else if FileName.isDotDot(name) {
                    path = nil
                } else {
                    path = FidPath(parent: inode, name: name)
                }
                inode = a.inode
                kind = a.kind
                qids.append(NinePQid(a))
            }
            guard qids.count == names.count else { return .walk(qids: qids) }
            if newFid == fid {
                if !names.isEmpty {
                    try f.withLock { () throws(Errno) in
                        guard case .idle = f.state else { throw Errno.invalidArgument }
                        f.inode = inode
                        f.kind = kind
                        f.path = path
                    }
                }
            } else {
                try insert(Fid(number: newFid, view: f.view, uid: f.uid, inode: inode, kind: kind, path: path,
                               lock: request.fids.fidStateLock), into: request.fids)
            }
            return .walk(qids: qids)
        }
    }

    // MARK: Open and create

    /// Marks an idle fid as being opened, so that no second open or I/O races this one.
    private func beginOpening(_ f: Fid) throws(Errno) -> Fid.Snapshot {
        try f.withLock { () throws(Errno) in
            switch f.state {
            case .idle:
                f.state = .opening
                return Fid.Snapshot(inode: f.inode, kind: f.kind, path: f.path, state: .opening)
            case .xattrRead, .xattrWrite:
                throw Errno.invalidArgument
            case .opening, .open:
                throw Errno.badFileDescriptor
            }
        }
    }

    private func abandonOpening(_ f: Fid) {
        f.lock.lock()
        if case .opening = f.state { f.state = .idle }
        f.lock.unlock()
    }

    private func open(_ request: any NinePRequestContext, fid: UInt32, flags: NinePOpenFlags) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            let s = try beginOpening(f)
            do throws(Errno) {
                if flags.contains(.directory) && s.kind != .directory { throw Errno.notDirectory }
                // The file exists: O_CREAT and O_EXCL mean nothing here.
                let hostFlags = flags.subtracting([.create, .exclusive]).hostFlags
                let handle = try f.view.open(s.inode, flags: hostFlags, as: credentials(f))
                let attributes: Attributes
                do throws(Errno) {
                    attributes = try f.view.getAttributes(s.inode)
                } catch {
                    f.view.release(handle)
                    throw error
                }
                f.withLock { f.state = .open(handle) }
                return .lopen(qid: NinePQid(attributes), iounit: 0)
            } catch {
                abandonOpening(f)
                throw error
            }
        }
    }

    /// Tlcreate: creates and opens a regular file in the fid's directory; the fid then stands
    /// for the new file, open. As open(2) with O_CREAT, an existing name is opened unless
    /// O_EXCL is given (Linux sends Tlcreate only for a name it saw missing, but another client
    /// may have created it since).
    private func create(_ request: any NinePRequestContext, fid: UInt32, name: [UInt8], flags: NinePOpenFlags, mode: UInt32,
                        gid: UInt32) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            let s = try beginOpening(f)
            do throws(Errno) {
                guard s.kind == .directory else { throw Errno.notDirectory }
                let creds = credentials(f, gid: gid)
                let hostFlags = flags.subtracting([.create, .exclusive]).hostFlags
                var attributes: Attributes
                let handle: OpenFile
                do throws(Errno) {
                    (attributes, handle) = try f.view.create(s.inode, name, mode: mode, flags: hostFlags, as: creds)
                } catch where error == .fileExists && !flags.contains(.exclusive) {
                    attributes = try f.view.lookup(s.inode, name, as: creds)
                    guard attributes.kind != .directory else { throw Errno.isDirectory }
                    handle = try f.view.open(attributes.inode, flags: hostFlags, as: creds)
                    if let fresh = try? f.view.getAttributes(attributes.inode) { attributes = fresh }
                }
                f.withLock {
                    f.inode = attributes.inode
                    f.kind = attributes.kind
                    f.path = FidPath(parent: s.inode, name: name)
                    f.state = .open(handle)
                }
                return .lcreate(qid: NinePQid(attributes), iounit: 0)
            } catch {
                abandonOpening(f)
                throw error
            }
        }
    }

    // MARK: Read, write, readdir

    private func read(_ request: any NinePRequestContext, fid: UInt32, offset: UInt64, count: UInt32) throws(Errno) -> [UInt8] {
        let capacity = min(Int(count), request.messageSize - NineP.readReplyHeaderSize)
        return try withFid(request, fid) { (f) throws(Errno) in
            let s = f.snapshot
            switch s.state {
            case .open(let handle):
                guard s.kind != .directory else { throw Errno.isDirectory }
                guard offset <= UInt64(Int64.max) else { throw Errno.invalidArgument }
                return try NinePResponse.encodeData(type: .rread, tag: request.tag, capacity: capacity) { (buffer) throws(Errno) in
                    try f.view.read(handle, offset: Int64(offset), into: buffer)
                }
            case .xattrRead(let value):
                let start = Int(min(offset, UInt64(value.count)))
                let n = min(capacity, value.count - start)
                return NinePResponse.read(data: value[start..<(start + n)]).encode(tag: request.tag)
            case .idle, .opening, .xattrWrite:
                throw Errno.badFileDescriptor
            }
        }
    }

    private func write(_ request: any NinePRequestContext, fid: UInt32, offset: UInt64, data: ArraySlice<UInt8>) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            let s = f.snapshot
            switch s.state {
            case .open(let handle):
                guard offset <= UInt64(Int64.max) else { throw Errno.invalidArgument }
                let creds = credentials(f)
                var failure: Errno?
                let written = data.withUnsafeBytes { buffer -> Int in
                    do throws(Errno) {
                        return try f.view.write(handle, offset: Int64(offset), from: buffer, as: creds)
                    } catch {
                        failure = error
                        return 0
                    }
                }
                if let failure { throw failure }
                return .write(count: UInt32(written))
            case .xattrWrite:
                try f.withLock { () throws(Errno) in
                    guard case .xattrWrite(var x) = f.state else { throw Errno.badFileDescriptor }
                    // Writes fill the value from the start without gaps, as Linux sends them.
                    guard offset <= UInt64(x.written) else { throw Errno.invalidArgument }
                    let start = Int(offset)
                    guard data.count <= x.size - start else { throw Errno.noSpace }
                    x.value.replaceSubrange(start..<(start + data.count), with: data)
                    x.written = max(x.written, start + data.count)
                    f.state = .xattrWrite(x)
                }
                return .write(count: UInt32(data.count))
            case .idle, .opening, .xattrRead:
                throw Errno.badFileDescriptor
            }
        }
    }

    /// Treaddir: entries after `offset` (an engine cookie: 0 to start), as many as fit in
    /// `count` bytes. Cookies stay valid while the directory changes, so paging never repeats
    /// or skips an entry that stays.
    private func readDirectory(_ request: any NinePRequestContext, fid: UInt32, offset: UInt64, count: UInt32) throws(Errno) -> [UInt8] {
        let capacity = min(Int(count), request.messageSize - NineP.readReplyHeaderSize)
        return try withFid(request, fid) { (f) throws(Errno) in
            let s = f.snapshot
            guard case .open = s.state else { throw Errno.badFileDescriptor }
            guard s.kind == .directory else { throw Errno.notDirectory }
            let limit = capacity / NinePDirectoryEntry.encodedSize(nameLength: 1) + 1
            let entries = try f.view.readDirectory(s.inode, after: offset, limit: limit, as: credentials(f))
            return NinePResponse.encodeData(type: .rreaddir, tag: request.tag, capacity: capacity) { buffer in
                var used = 0
                for entry in entries where entry.name.count <= Int(UInt16.max) {
                    let size = NinePDirectoryEntry.encodedSize(nameLength: entry.name.count)
                    guard used + size <= buffer.count else { break }
                    let qid = NinePQid(type: NinePQid.type(of: entry.kind), version: 0, path: entry.inode)
                    used = storeDirectoryEntry(buffer, at: used, qid: qid, offset: entry.cookie,
                                               type: entry.kind.direntType, name: entry.name)
                }
                return used
            }
        }
    }

    // MARK: Clunk and remove

    private func clunk(_ request: any NinePRequestContext, fid: UInt32) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            request.fids.detach(f)
            var pending: XattrWrite?
            f.withLock {
                if case .xattrWrite(let x) = f.state {
                    pending = x
                    f.state = .idle
                }
            }
            if let x = pending {
                defer {
                    let held = f.withLock { () -> Int in
                        let n = f.xattrBytes
                        f.xattrBytes = 0
                        return n
                    }
                    if held > 0 { releaseXattrBytes(held) }
                }
                try commitXattr(f, x)
            }
            return .clunk
        }
    }

    /// Sets (or, for a zero-size XATTR_REPLACE, removes) the attribute a Txattrcreate fid
    /// collected. Linux removes an xattr exactly so; an empty value with other flags is set.
    private func commitXattr(_ f: Fid, _ x: XattrWrite) throws(Errno) {
        let inode = f.withLock { f.inode }
        if x.size == 0 && x.flags == NinePXattrFlags.replace {
            try f.view.removeXattr(inode, x.name, as: credentials(f))
            return
        }
        guard x.written == x.size else { throw Errno.invalidArgument }
        let mode: XattrSetMode = switch x.flags {
        case NinePXattrFlags.create: .createOnly
        case NinePXattrFlags.replace: .replaceOnly
        default: .createOrReplace
        }
        try f.view.setXattr(inode, x.name, x.value, mode: mode, as: credentials(f))
    }

    /// Tremove: unlinks the fid's file from the directory it was reached through, and clunks
    /// the fid whatever the outcome.
    private func remove(_ request: any NinePRequestContext, fid: UInt32) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            request.fids.detach(f)
            let s = try plainFile(f)
            guard let path = try currentPath(f, s) else {
                throw s.inode == rootInode ? Errno.resourceBusy : Errno.staleNFSFileHandle
            }
            if s.kind == .directory {
                try f.view.removeDirectory(path.parent, path.name, as: credentials(f))
            } else {
                try f.view.unlink(path.parent, path.name, as: credentials(f))
            }
            return .remove
        }
    }

    /// The fid's path if it still leads to the fid's file (another request may have renamed it).
    private func currentPath(_ f: Fid, _ s: Fid.Snapshot) throws(Errno) -> FidPath? {
        guard let path = s.path else { return nil }
        do throws(Errno) {
            let a = try f.view.lookup(path.parent, path.name, as: credentials(f))
            return a.inode == s.inode ? path : nil
        } catch where error == .noSuchFileOrDirectory {
            return nil
        }
    }

    /// Trename: moves the fid's file into dfid's directory under `name`.
    private func rename(_ request: any NinePRequestContext, fid: UInt32, dfid: UInt32, name: [UInt8]) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            try withFid(request, dfid) { (d) throws(Errno) in
                guard f.view.isSameVM(as: d.view) else { throw Errno.improperLink }
                let s = try plainFile(f)
                let target = try plainFile(d)
                guard let path = try currentPath(f, s) else {
                    throw s.inode == rootInode ? Errno.resourceBusy : Errno.staleNFSFileHandle
                }
                try f.view.rename(path.parent, path.name, to: target.inode, name, as: credentials(f))
                f.withLock {
                    if f.inode == s.inode { f.path = FidPath(parent: target.inode, name: name) }
                }
                return .rename
            }
        }
    }

    // MARK: Attributes

    private func setAttributes(_ request: any NinePRequestContext, fid: UInt32, _ s: NinePSetattr) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            let snapshot = try plainFile(f)
            let known: NinePSetattrMask = [.mode, .uid, .gid, .size, .accessTime, .modificationTime, .changeTime,
                                           .accessTimeSet, .modificationTimeSet]
            let valid = s.valid.intersection(known)
            guard !valid.isEmpty else { return .setattr }
            var changes = AttributeChanges()
            if valid.contains(.mode) { changes.mode = s.mode }
            if valid.contains(.uid) { changes.uid = s.uid }
            if valid.contains(.gid) { changes.gid = s.gid }
            if valid.contains(.size) {
                guard s.size <= UInt64(Int64.max) else { throw Errno.invalidArgument }
                changes.size = Int64(s.size)
            }
            if valid.contains(.accessTime) {
                changes.accessTime = valid.contains(.accessTimeSet)
                    ? .set(try timespec(s.accessTimeSeconds, s.accessTimeNanoseconds)) : .now
            }
            if valid.contains(.modificationTime) {
                changes.modificationTime = valid.contains(.modificationTimeSet)
                    ? .set(try timespec(s.modificationTimeSeconds, s.modificationTimeNanoseconds)) : .now
            }
            var handle: OpenFile?
            if case .open(let h) = snapshot.state, h.isWritable { handle = h }
            _ = try f.view.setAttributes(snapshot.inode, changes, handle: handle, as: credentials(f))
            return .setattr
        }
    }

    private func timespec(_ seconds: UInt64, _ nanoseconds: UInt64) throws(Errno) -> Timespec {
        guard nanoseconds < 1_000_000_000 else { throw Errno.invalidArgument }
        return Timespec(seconds: Int64(bitPattern: seconds), nanoseconds: Int64(nanoseconds))
    }

    // MARK: Extended attributes

    /// Txattrwalk: newfid holds one attribute's value (or, for an empty name, the list of
    /// names, each NUL-terminated) for Tread; Rxattrwalk gives its size.
    private func xattrWalk(_ request: any NinePRequestContext, fid: UInt32, newFid: UInt32, name: [UInt8]) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            let s = try plainFile(f)
            guard newFid != fid, newFid != NineP.noFid, !request.fids.contains(newFid) else { throw Errno.invalidArgument }
            let creds = credentials(f)
            var value: [UInt8]
            if name.isEmpty {
                value = []
                for n in try f.view.listXattrs(s.inode, as: creds) {
                    value += n
                    value.append(0)
                }
            } else {
                value = try f.view.getXattr(s.inode, name, as: creds)
            }
            try reserveXattrBytes(value.count)
            let x = Fid(number: newFid, view: f.view, uid: f.uid, inode: s.inode, kind: s.kind, path: s.path,
                        lock: request.fids.fidStateLock)
            x.state = .xattrRead(value)
            x.xattrBytes = value.count
            do throws(Errno) {
                try insert(x, into: request.fids)
            } catch {
                finalize(x, in: request.fids)
                throw error
            }
            return .xattrwalk(size: UInt64(value.count))
        }
    }

    /// Txattrcreate: the fid turns into a buffer for the value; Twrite fills it and Tclunk sets
    /// the attribute (and reports the error, if any).
    private func xattrCreate(_ request: any NinePRequestContext, fid: UInt32, name: [UInt8], size: UInt64, flags: UInt32) throws(Errno) -> NinePResponse {
        guard flags & ~(NinePXattrFlags.create | NinePXattrFlags.replace) == 0,
              flags != NinePXattrFlags.create | NinePXattrFlags.replace else { throw Errno.invalidArgument }
        guard size <= UInt64(NineP.maximumXattrSize) else { throw Errno.argListTooLong }
        guard !name.isEmpty, name.count <= 255, !name.contains(0) else {
            throw name.count > 255 ? Errno.outOfRange : Errno.invalidArgument
        }
        return try withFid(request, fid) { (f) throws(Errno) in
            try reserveXattrBytes(Int(size))
            do throws(Errno) {
                try f.withLock { () throws(Errno) in
                    guard case .idle = f.state else { throw Errno.invalidArgument }
                    f.state = .xattrWrite(XattrWrite(name: name, flags: flags, size: Int(size),
                                                     value: [UInt8](repeating: 0, count: Int(size)), written: 0))
                    f.xattrBytes = Int(size)
                }
            } catch {
                releaseXattrBytes(Int(size))
                throw error
            }
            return .xattrcreate
        }
    }

    // MARK: Locks

    /// Tlock. A lock another owner holds answers BLOCKED at once for F_SETLK; for F_SETLKW
    /// (the block flag) the request waits, holding no thread (`NinePLockWaiter`), until the lock
    /// is free (then SUCCESS), `lockWaitSeconds` pass (then BLOCKED: Linux sleeps and asks again),
    /// the client flushes it (then no reply), or the connection closes. Waiters past
    /// `maximumBlockedLocks` get BLOCKED at once.
    private func lock(_ request: any NinePRequestContext, fid number: UInt32, _ l: NinePLock) throws(Errno) -> NinePOutcome {
        guard let fid = request.fids.acquire(number) else { throw Errno.badFileDescriptor }
        var handedOff = false
        defer { if !handedOff { release(fid, in: request.fids) } }
        let s = try plainFile(fid)
        guard let type = LockType(fcntlCode: l.type) else { throw Errno.invalidArgument }
        let range = try lockRange(type: type, start: l.start, length: l.length, processID: l.processID)
        let owner = lockOwner(clientID: l.clientID, processID: l.processID)
        if type != .unlock { fid.withLock { _ = fid.lockOwners.insert(owner) } }
        do throws(Errno) {
            try fid.view.setLock(s.inode, owner: owner, range: range, wait: false)
            return .reply(NinePResponse.lock(status: NinePLockStatus.success).encode(tag: request.tag))
        } catch where error == .resourceTemporarilyUnavailable || error == .wouldBlock {
            guard l.flags & NinePLockFlags.block != 0 else {
                return .reply(NinePResponse.lock(status: NinePLockStatus.blocked).encode(tag: request.tag))
            }
        }
        guard configuration.lockWaitSeconds > 0, request.reserveBlockedWait() else {
            return .reply(NinePResponse.lock(status: NinePLockStatus.blocked).encode(tag: request.tag))
        }
        handedOff = true
        let table = request.fids
        let wait = configuration.lockWaitSeconds
        let deadline = wait.isFinite ? DispatchTime.now().uptimeNanoseconds &+ UInt64(min(wait, 1e6) * 1e9) : UInt64.max
        let tag = request.tag
        let waiter = NinePLockWaiter(view: fid.view, inode: s.inode, owner: owner, range: range, deadline: deadline,
                                     isCancelled: { request.isCancelled },
                                     shouldGiveUp: { request.isSuspending }) { [self] outcome in
            let reply: [UInt8]?
            switch outcome {
            case .granted: reply = NinePResponse.lock(status: NinePLockStatus.success).encode(tag: tag)
            case .timedOut: reply = NinePResponse.lock(status: NinePLockStatus.blocked).encode(tag: tag)
            case .cancelled: reply = nil
            case .failed(let error): reply = NinePResponse.error(errno: UInt32(bitPattern: error.rawValue)).encode(tag: tag)
            }
            // The fid goes before the request completes, so that once nothing is outstanding
            // (what close() waits for) no request holds a fid either.
            request.releaseBlockedWait()
            release(fid, in: table)
            request.complete(reply)
        }
        waiter.start()
        return .deferred
    }

    /// Tgetlock: the first lock of another owner that conflicts, or type UNLCK. Linux asks
    /// with type UNLCK (its own test already ran); that is answered as a test for a write lock,
    /// which any other owner's lock conflicts with.
    private func getLock(_ request: any NinePRequestContext, fid: UInt32, _ l: NinePGetlock) throws(Errno) -> NinePResponse {
        try withFid(request, fid) { (f) throws(Errno) in
            let s = try plainFile(f)
            let type: LockType
            switch l.type {
            case NinePLockType.readLock: type = .read
            case NinePLockType.writeLock, NinePLockType.unlock: type = .write
            default: throw Errno.invalidArgument
            }
            let range = try lockRange(type: type, start: l.start, length: l.length, processID: l.processID)
            let owner = lockOwner(clientID: l.clientID, processID: l.processID)
            guard let conflict = f.view.testLock(s.inode, owner: owner, range: range) else {
                var answer = l
                answer.type = NinePLockType.unlock
                return .getlock(answer)
            }
            let length = conflict.end == .max ? 0 : conflict.end - conflict.start + 1
            let conflictType = conflict.type == .read ? NinePLockType.readLock : NinePLockType.writeLock
            return .getlock(NinePGetlock(type: conflictType, start: conflict.start, length: length,
                                         processID: conflict.pid, clientID: l.clientID))
        }
    }
}

/// Writes one Rreaddir entry at `offset` of `buffer` (the caller checked it fits); returns the
/// offset after it.
private func storeDirectoryEntry(_ buffer: UnsafeMutableRawBufferPointer, at offset: Int, qid: NinePQid,
                                 offset cookie: UInt64, type: UInt8, name: [UInt8]) -> Int {
    var i = offset
    func put<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes in
            for b in bytes {
                buffer[i] = b
                i += 1
            }
        }
    }
    put(qid.type)
    put(qid.version)
    put(qid.path)
    put(cookie)
    put(type)
    put(UInt16(name.count))
    for b in name {
        buffer[i] = b
        i += 1
    }
    return i
}
