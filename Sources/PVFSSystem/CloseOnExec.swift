import CPVFSSystem
import Glibc

/// Marks every open descriptor above 2 close-on-exec, so that a child this process spawns
/// inherits only what the spawn hands it on purpose (dup2 onto a number clears the flag
/// there). A descriptor some library opened without O_CLOEXEC would otherwise live on in the
/// child: a socket would stay open after this process closed it, a pipe another process
/// watches for our exit would not close with us.
public func markDescriptorsCloseOnExec() {
    guard let directory = opendir("/proc/self/fd") else { return }
    defer { closedir(directory) }
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if let fd = Int32(name), fd > 2 { _ = cpvfs_fcntl_int(fd, F_SETFD, FD_CLOEXEC) }
    }
}
