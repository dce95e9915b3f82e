import Glibc
import PVFSSystem
import SystemPackage

/// The few socket calls the transport needs, with errors as `Errno`. Every descriptor is
/// created close-on-exec.
enum Sockets {
    static let streamType = Int32(SOCK_STREAM.rawValue)
    static let closeOnExec = Int32(SOCK_CLOEXEC.rawValue)
    static let tcpNoDelay: Int32 = 1

    /// A listening TCP socket on the first address `host` resolves to; the address it got
    /// (with the kernel's port when 0 was asked for).
    static func listenTCP(host: String, port: UInt16, backlog: Int32) throws -> (Int32, ListenAddress) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = streamType
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host == "*" ? nil : host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            let reason = gai_strerror(rc).map { String(validatingCString: $0) ?? "" } ?? ""
            throw PVFSError(.transport, "cannot resolve \(host): \(reason)", errno: .invalidArgument)
        }
        defer { freeaddrinfo(result) }
        var lastError = Errno.addressNotAvailable
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let ai = candidate {
            candidate = ai.pointee.ai_next
            let fd = socket(ai.pointee.ai_family, streamType | closeOnExec, 0)
            guard fd >= 0 else { lastError = Errno(rawValue: errno); continue }
            var one: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) != 0 || listen(fd, backlog) != 0 {
                lastError = Errno(rawValue: errno)
                Glibc.close(fd)
                continue
            }
            let bound = localAddress(fd) ?? (host, port)
            return (fd, .tcp(host: host == "*" ? "*" : bound.host, port: bound.port))
        }
        throw PVFSError(.transport, "cannot listen on tcp:\(host):\(port): \(lastError)", errno: lastError)
    }

    /// The identity of a socket file, so that only the one we made is removed.
    struct FileIdentity: Hashable, Sendable {
        var device: UInt64
        var inode: UInt64
    }

    static func fileIdentity(_ path: String) -> FileIdentity? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// A listening Unix socket at `path` with permissions `mode`. A stale socket file (nobody
    /// listening) is replaced; a live one, or any other kind of file, is left alone.
    static func listenUnix(path: String, mode: UInt32, backlog: Int32) throws -> (Int32, FileIdentity?) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        let pathBytes = Array(path.utf8)
        guard pathBytes.count < capacity else {
            throw PVFSError(.transport, "socket path \(path) is longer than \(capacity - 1) bytes", errno: .fileNameTooLong)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw PVFSError(.transport, "\(path) exists and is not a socket", errno: .fileExists)
            }
            if isLive(&address) {
                throw PVFSError(.transport, "another server listens on \(path)", errno: .addressInUse)
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, streamType | closeOnExec, 0)
        guard fd >= 0 else { throw PVFSError(.transport, "socket(AF_UNIX): \(Errno(rawValue: errno))", errno: Errno(rawValue: errno)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let error = Errno(rawValue: errno)
            Glibc.close(fd)
            throw PVFSError(.transport, "cannot bind unix:\(path): \(error)", errno: error)
        }
        guard chmod(path, mode_t(mode)) == 0, listen(fd, backlog) == 0 else {
            let error = Errno(rawValue: errno)
            Glibc.close(fd)
            unlink(path)
            throw PVFSError(.transport, "cannot listen on unix:\(path): \(error)", errno: error)
        }
        return (fd, fileIdentity(path))
    }

    private static func isLive(_ address: inout sockaddr_un) -> Bool {
        let fd = socket(AF_UNIX, streamType | closeOnExec, 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0 || errno != ECONNREFUSED && errno != ENOENT
    }

    /// accept4 of one pending connection; nil when there was none after all or it went away.
    static func accept(_ fd: Int32) throws(Errno) -> Int32? {
        do throws(Errno) {
            return try FileDescriptor(rawValue: fd).acceptConnection().rawValue
        } catch where [.resourceTemporarilyUnavailable, .connectionAbort, .protocolError, .notPermitted].contains(error) {
            return nil
        }
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) {
        var v = value
        _ = setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Host and port of a socket address.
    static func describe(_ storage: inout sockaddr_storage) -> (host: String, port: UInt16)? {
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    var addr = sin.pointee.sin_addr
                    var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                    inet_ntop(AF_INET, &addr, &text, socklen_t(text.count))
                    return (String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), UInt16(bigEndian: sin.pointee.sin_port))
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    var addr = sin6.pointee.sin6_addr
                    var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
                    inet_ntop(AF_INET6, &addr, &text, socklen_t(text.count))
                    return (String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), UInt16(bigEndian: sin6.pointee.sin6_port))
                }
            }
        default:
            return nil
        }
    }

    static func localAddress(_ fd: Int32) -> (host: String, port: UInt16)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        return describe(&storage)
    }

    static func peerAddress(_ fd: Int32) -> (host: String, port: UInt16)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        return describe(&storage)
    }

    static func formatHostPort(_ host: String, _ port: UInt16) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}
