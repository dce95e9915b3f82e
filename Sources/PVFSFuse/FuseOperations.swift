import CFuse
import Glibc
import PVFSEngine

/// The libfuse operation table: C function pointers that find the mount's `FuseFilesystem` in
/// the session's userdata and hand the request over. Operations left nil (bmap, ioctl, poll,
/// retrieve_reply) are answered ENOSYS by libfuse.
enum FuseOperations {
    static func table() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            Unmanaged<FuseFilesystem>.fromOpaque(userdata!).takeUnretainedValue().initialise(conn!)
        }
        ops.destroy = { _ in }
        ops.lookup = { req, parent, name in FuseFilesystem.of(req).lookup(req!, parent, name!) }
        // Inode numbers are the engine's own and never reused: the kernel's lookup counts need
        // no bookkeeping, only an acknowledgement-free reply.
        ops.forget = { req, _, _ in fuse_reply_none(req) }
        ops.forget_multi = { req, _, _ in fuse_reply_none(req) }
        ops.getattr = { req, ino, _ in FuseFilesystem.of(req).getattr(req!, ino) }
        ops.setattr = { req, ino, attr, toSet, fi in FuseFilesystem.of(req).setattr(req!, ino, attr!, toSet, fi) }
        ops.readlink = { req, ino in FuseFilesystem.of(req).readlink(req!, ino) }
        ops.mknod = { req, parent, name, mode, rdev in FuseFilesystem.of(req).mknod(req!, parent, name!, mode, rdev) }
        ops.mkdir = { req, parent, name, mode in FuseFilesystem.of(req).mkdir(req!, parent, name!, mode) }
        ops.unlink = { req, parent, name in FuseFilesystem.of(req).unlink(req!, parent, name!) }
        ops.rmdir = { req, parent, name in FuseFilesystem.of(req).rmdir(req!, parent, name!) }
        ops.symlink = { req, target, parent, name in FuseFilesystem.of(req).symlink(req!, target!, parent, name!) }
        ops.rename = { req, parent, name, newParent, newName, flags in
            FuseFilesystem.of(req).rename(req!, parent, name!, newParent, newName!, flags)
        }
        ops.link = { req, ino, newParent, newName in FuseFilesystem.of(req).link(req!, ino, newParent, newName!) }
        ops.open = { req, ino, fi in FuseFilesystem.of(req).open(req!, ino, fi!) }
        ops.read = { req, _, size, offset, fi in FuseFilesystem.of(req).read(req!, size, offset, fi) }
        ops.write = { req, _, buffer, size, offset, fi in FuseFilesystem.of(req).write(req!, buffer, size, offset, fi) }
        ops.flush = { req, ino, fi in FuseFilesystem.of(req).flush(req!, ino, fi!) }
        ops.release = { req, ino, fi in FuseFilesystem.of(req).release(req!, ino, fi!) }
        ops.fsync = { req, ino, datasync, fi in FuseFilesystem.of(req).fsync(req!, ino, datasync != 0, fi) }
        ops.opendir = { req, ino, fi in FuseFilesystem.of(req).opendir(req!, ino, fi!) }
        ops.readdir = { req, ino, size, offset, _ in FuseFilesystem.of(req).readdir(req!, ino, size, offset, plus: false) }
        ops.readdirplus = { req, ino, size, offset, _ in FuseFilesystem.of(req).readdir(req!, ino, size, offset, plus: true) }
        ops.releasedir = { req, _, fi in FuseFilesystem.of(req).releasedir(req!, fi!) }
        ops.fsyncdir = { req, ino, datasync, _ in FuseFilesystem.of(req).fsyncdir(req!, ino, datasync != 0) }
        ops.statfs = { req, _ in FuseFilesystem.of(req).statfs(req!) }
        ops.setxattr = { req, ino, name, value, size, flags in
            FuseFilesystem.of(req).setxattr(req!, ino, name!, value, size, flags)
        }
        ops.getxattr = { req, ino, name, size in FuseFilesystem.of(req).getxattr(req!, ino, name!, size) }
        ops.listxattr = { req, ino, size in FuseFilesystem.of(req).listxattr(req!, ino, size) }
        ops.removexattr = { req, ino, name in FuseFilesystem.of(req).removexattr(req!, ino, name!) }
        ops.access = { req, ino, mask in FuseFilesystem.of(req).access(req!, ino, mask) }
        ops.create = { req, parent, name, mode, fi in FuseFilesystem.of(req).create(req!, parent, name!, mode, fi!) }
        ops.getlk = { req, ino, fi, lock in FuseFilesystem.of(req).getlk(req!, ino, fi!, lock!) }
        ops.setlk = { req, ino, fi, lock, sleep in FuseFilesystem.of(req).setlk(req!, ino, fi!, lock!, sleep != 0) }
        ops.flock = { req, ino, fi, op in FuseFilesystem.of(req).flock(req!, ino, fi!, op) }
        ops.fallocate = { req, ino, mode, offset, length, fi in
            FuseFilesystem.of(req).fallocate(req!, ino, mode, offset, length, fi)
        }
        ops.copy_file_range = { req, _, inOffset, inFI, _, outOffset, outFI, length, flags in
            FuseFilesystem.of(req).copyFileRange(req!, inOffset, inFI, outOffset, outFI, length, flags)
        }
        ops.lseek = { req, ino, offset, whence, fi in FuseFilesystem.of(req).lseek(req!, ino, offset, whence, fi) }
        return ops
    }
}
