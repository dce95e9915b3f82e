import Foundation
import Glibc
import PVFS9P
import PVFS9PCodec
import PVFSEngineTestSupport
import PVFSTestSupport
import PVFSDaemon
import SystemPackage

/// A running pvfsd serving two VMs of one store, each on a TCP listener of its own:
/// "victim", a well-behaved guest, and "abuser", the hostile tenant. Both VMs come from one
/// template with /big (1 MiB) and 16 small files in d0...d7.
final class HostileDaemon {
    let area: TemporaryDirectory
    let store: String
    let victimPort: UInt16
    let abuserPort: UInt16
    let logPath: String
    private let process: Process

    /// `settings`: extra pvfsd.conf lines (limits).
    init(settings: [String] = []) throws {
        area = try TemporaryDirectory("pvfs-hostile")
        store = area.sub("store")
        let src = area.sub("src")
        try makeSeededTree(at: src, files: 16, size: 4000, seed: 11)
        try write(src + "/big", benchContent(seed: 3, file: 0, bytes: 1 << 20))
        try mustRun("pvfs-template", ["create", "base", "--from", src, "--store", store])
        for vm in ["victim", "abuser"] {
            try mustRun("pvfs-vm", ["provision", "--template", "base", vm, "--no-hooks", "--store", store])
            try mustRun("pvfs-vm", ["bind", vm, "--listener", vm, "--store", store])
        }
        let ports = try Self.freePorts(2)
        victimPort = ports[0]
        abuserPort = ports[1]
        let config = area.sub("pvfsd.conf")
        let lines = ["store = \(store)", "listen = victim tcp:127.0.0.1:\(victimPort)",
                     "listen = abuser tcp:127.0.0.1:\(abuserPort)", "janitor-interval = 0"] + settings
        try write(config, Array((lines.joined(separator: "\n") + "\n").utf8))
        logPath = area.sub("pvfsd.log")
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process = Process()
        // PVFS_HOSTILE_PVFSD: another pvfsd binary (an earlier build, for before/after benches).
        let executable = try ProcessInfo.processInfo.environment["PVFS_HOSTILE_PVFSD"] ?? builtProduct("pvfsd")
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["--config", config, "--log-level", "error"]
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "PVFS_STORE")
        process.environment = environment
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let deadline = Date(timeIntervalSinceNow: 60)
        while true {
            if let fd = try? tcpConnect(victimPort) {
                Glibc.close(fd)
                break
            }
            guard process.isRunning, Date() < deadline else {
                throw TestSupportError("pvfsd did not start: \(logTail())")
            }
            usleep(50_000)
        }
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    var pid: Int32 { process.processIdentifier }
    var isAlive: Bool { process.isRunning }

    /// Kernel-chosen ports, free when this returns.
    static func freePorts(_ count: Int) throws -> [UInt16] {
        var fds: [Int32] = []
        defer { for fd in fds { Glibc.close(fd) } }
        var ports: [UInt16] = []
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            fds.append(fd)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let rc = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
                    guard bind(fd, pointer, length) == 0 else { return -1 }
                    return getsockname(fd, pointer, &length)
                }
            }
            guard rc == 0 else { throw Errno(rawValue: errno) }
            ports.append(UInt16(bigEndian: address.sin_port))
        }
        return ports
    }

    /// A value from /proc/PID/status ("VmRSS", "Threads"), in its unit (kB for sizes).
    func status(_ key: String) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix(key + ":") } ?? ""
        return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? -1
    }

    var residentKiB: Int { status("VmRSS") }
    var threadCount: Int { status("Threads") }
    /// Threads pvfsd started itself (connections, workers, lock waits, catalog writers): named
    /// after the process. libdispatch names the threads of its own pool after their queues and
    /// keeps some alive a while after their work; their number is libdispatch's to bound.
    var ownThreadCount: Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.filter { (try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/comm", encoding: .utf8)) == "pvfsd\n" }.count
    }
    var openDescriptorCount: Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }

    /// The daemon's metrics text (through its control socket).
    func metrics() throws -> String {
        guard let text = try DaemonClient(storePath: store).send(.init(op: "metrics"))?.text else {
            throw TestSupportError("pvfsd sent no metrics")
        }
        return text
    }

    /// The value of one metric line, named with its labels as printed.
    func metric(_ series: String) -> Double? {
        guard let text = try? metrics() else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    /// Sessions the daemon holds on `vm` (`pvfs status`), 0 when it serves it no more.
    func sessions(_ vm: String) throws -> Int {
        let status = try parseJSON(try mustRun("pvfs", ["status", "--json", "--store", store]).stdout) as? [String: Any]
        let served = (status?["daemon"] as? [String: Any])?["servedVMs"] as? [[String: Any]]
        return served?.first { $0["name"] as? String == vm }?["sessions"] as? Int ?? 0
    }

    func logTail(_ bytes: Int = 4000) -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return String(text.suffix(bytes))
    }

    /// SIGTERM and the exit status (nil when pvfsd did not exit within 30 s and was killed).
    func stop() -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        kill(pid, SIGTERM)
        let deadline = Date(timeIntervalSinceNow: 30)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        guard !process.isRunning else {
            kill(pid, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }
}

/// A TCP connection to 127.0.0.1:`port`, from 127.0.0.`sourceHost` when given (spreads many
/// short connections over more address pairs than one source address has ports).
func tcpConnect(_ port: UInt16, sourceHost: UInt8? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw Errno(rawValue: errno) }
    if let sourceHost {
        var source = sockaddr_in()
        source.sin_family = sa_family_t(AF_INET)
        source.sin_addr.s_addr = inet_addr("127.0.0.\(sourceHost)")
        let rc = withUnsafePointer(to: &source) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let error = Errno(rawValue: errno)
            Glibc.close(fd)
            throw error
        }
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let error = Errno(rawValue: errno)
        Glibc.close(fd)
        throw error
    }
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    return fd
}

/// Raw 9P over one TCP connection, on the caller's thread: bytes out, whole messages in. It
/// sends whatever it is given (garbage included) and checks the size of every reply.
final class RawNineConnection: @unchecked Sendable {
    let fd: Int32
    private var inbox: [UInt8] = []
    private var inboxHead = 0
    private var scratch = [UInt8](repeating: 0, count: 256 << 10)
    private(set) var closed = false

    init(port: UInt16, sourceHost: UInt8? = nil, receiveTimeout: Double = 15) throws {
        fd = try tcpConnect(port, sourceHost: sourceHost)
        setReceiveTimeout(receiveTimeout)
    }

    deinit { close() }

    func setReceiveTimeout(_ seconds: Double) {
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends every byte; false when the server closed the connection.
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// The next whole message; throws at the end of the stream (ECONNRESET), after the receive
    /// timeout (EAGAIN), or on a reply whose size field is impossible (EBADMSG).
    func receive() throws -> [UInt8] {
        while true {
            let available = inbox.count - inboxHead
            if available >= 4 {
                let size = inbox[inboxHead..<inboxHead + 4].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
                guard size >= 7 && size <= 16 << 20 else { throw Errno.badMessage }
                if available >= size {
                    let message = Array(inbox[inboxHead..<inboxHead + size])
                    inboxHead += size
                    if inboxHead == inbox.count {
                        inbox.removeAll(keepingCapacity: true)
                        inboxHead = 0
                    }
                    return message
                }
            }
            let n = scratch.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw Errno(rawValue: errno) }
            if n == 0 { throw Errno.connectionReset }
            if inboxHead > 0 {
                inbox.removeFirst(inboxHead)
                inboxHead = 0
            }
            inbox.append(contentsOf: scratch[0..<n])
        }
    }

    /// Sends a request and returns its reply (replies to other tags before it are skipped).
    func call(_ request: NinePRequest, tag: UInt16 = 1) throws -> NinePResponse {
        guard send(request.encode(tag: tag)) else { throw Errno.connectionReset }
        while true {
            let message = try receive()
            let decoded: (tag: UInt16, response: NinePResponse)
            do {
                decoded = try NinePResponse.decode(message)
            } catch {
                throw Errno.badMessage
            }
            if decoded.tag == tag { return decoded.response }
        }
    }

    /// Tversion and Tattach of `aname` as fid 0.
    /// Throws `AttachRefused` when the Tattach gets an Rlerror.
    func mount(_ aname: String, msize: UInt32 = 65536, uid: UInt32 = 0) throws {
        let version = try call(.version(msize: msize, version: NineP.protocolVersion), tag: NineP.noTag)
        guard case .version = version else { throw TestSupportError("Tversion: \(version)") }
        switch try call(.attach(fid: 0, afid: NineP.noFid, uname: [], aname: Array(aname.utf8), uid: uid)) {
        case .attach: return
        case .error(let errno): throw AttachRefused(errno: errno)
        case let other: throw TestSupportError("Tattach of \(aname): \(other)")
        }
    }

    /// Walks fid 0 to `path` as `fid` and opens it (flags as Tlopen's).
    func open(_ path: String, fid: UInt32, flags: UInt32 = 0) throws {
        let names = path.split(separator: "/").map { Array($0.utf8) }
        let walk = try call(.walk(fid: 0, newFid: fid, names: names))
        guard case .walk = walk else { throw TestSupportError("Twalk to \(path): \(walk)") }
        let open = try call(.lopen(fid: fid, flags: flags))
        guard case .lopen = open else { throw TestSupportError("Tlopen of \(path): \(open)") }
    }

    /// Whether the server ends the connection within `timeout` seconds (replies are skipped).
    func endsWithin(_ timeout: Double) -> Bool {
        setReceiveTimeout(timeout)
        while true {
            do {
                _ = try receive()
            } catch let error as Errno {
                return error == .connectionReset || error == .badMessage
            } catch {
                return false
            }
        }
    }

    /// Ends the connection with a reset (no TIME_WAIT left behind, as a guest that dies).
    func abort() {
        guard !closed else { return }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }
}

/// A Tattach answered with an error.
struct AttachRefused: Error, CustomStringConvertible {
    let errno: UInt32
    var description: String { "Tattach refused with errno \(errno)" }
}

/// Hostile bytes: random, truncated, oversized, lying about their size, on bad fids and tags.
struct GarbageMaker {
    var random: SeededRandom

    init(seed: UInt64) { random = SeededRandom(state: seed) }

    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) } }

    mutating func u32() -> UInt32 {
        switch Int.random(in: 0..<6, using: &random) {
        case 0: 0
        case 1: .max
        case 2: UInt32.max - UInt32.random(in: 0...16, using: &random)
        case 3: UInt32.random(in: 0...64, using: &random)
        default: UInt32.random(in: 0...UInt32.max, using: &random)
        }
    }

    mutating func u64() -> UInt64 {
        switch Int.random(in: 0..<5, using: &random) {
        case 0: 0
        case 1: .max
        case 2: UInt64.max - UInt64.random(in: 0...1 << 20, using: &random)
        case 3: UInt64(Int64.max)
        default: UInt64.random(in: 0...UInt64.max, using: &random)
        }
    }

    mutating func name() -> [UInt8] {
        switch Int.random(in: 0..<8, using: &random) {
        case 0: []
        case 1: Array("..".utf8)
        case 2: Array("a/b".utf8)
        case 3: [UInt8](repeating: 0x61, count: Int.random(in: 255...2000, using: &random))
        case 4: [0]
        case 5: bytes(Int.random(in: 1...40, using: &random))
        default: Array("d\(Int.random(in: 0...9, using: &random))".utf8)
        }
    }

    /// A well-formed request with hostile values.
    mutating func request() -> NinePRequest {
        let fid = Bool.random(using: &random) ? UInt32.random(in: 0...4, using: &random) : u32()
        switch Int.random(in: 0..<28, using: &random) {
        case 0: return .walk(fid: fid, newFid: u32(), names: (0..<Int.random(in: 0...20, using: &random)).map { _ in name() })
        case 1: return .lopen(fid: fid, flags: u32())
        case 2: return .lcreate(fid: fid, name: name(), flags: u32(), mode: u32(), gid: u32())
        case 3: return .read(fid: fid, offset: u64(), count: u32())
        case 4: return .write(fid: fid, offset: u64(), data: bytes(Int.random(in: 0...3000, using: &random))[...])
        case 5: return .clunk(fid: fid)
        case 6: return .getattr(fid: fid, mask: NinePAttributeMask(rawValue: u64()))
        case 7: return .setattr(fid: fid, NinePSetattr(valid: NinePSetattrMask(rawValue: u32()), mode: u32(), uid: u32(), gid: u32(),
                                                      size: u64(), accessTimeSeconds: u64(), accessTimeNanoseconds: u64(),
                                                      modificationTimeSeconds: u64(), modificationTimeNanoseconds: u64()))
        case 8: return .readdir(fid: fid, offset: u64(), count: u32())
        case 9: return .xattrwalk(fid: fid, newFid: u32(), name: name())
        case 10: return .xattrcreate(fid: fid, name: name(), size: u64(), flags: u32())
        case 11: return .lock(fid: fid, NinePLock(type: UInt8.random(in: 0...4, using: &random), flags: u32(), start: u64(),
                                                  length: u64(), processID: u32(), clientID: name()))
        case 12: return .getlock(fid: fid, NinePGetlock(type: UInt8.random(in: 0...4, using: &random), start: u64(), length: u64(),
                                                        processID: u32(), clientID: name()))
        case 13: return .mkdir(dfid: fid, name: name(), mode: u32(), gid: u32())
        case 14: return .symlink(fid: fid, name: name(), target: bytes(Int.random(in: 0...5000, using: &random)), gid: u32())
        case 15: return .mknod(dfid: fid, name: name(), mode: u32(), major: u32(), minor: u32(), gid: u32())
        case 16: return .renameat(oldDirFid: fid, oldName: name(), newDirFid: u32(), newName: name())
        case 17: return .unlinkat(dirFid: fid, name: name(), flags: u32())
        case 18: return .link(dfid: fid, fid: u32(), name: name())
        case 19: return .flush(oldTag: UInt16.random(in: 0...UInt16.max, using: &random))
        case 21: return .remove(fid: fid)
        case 22: return .fsync(fid: fid, datasync: u32())
        case 23: return .statfs(fid: fid)
        case 24: return .readlink(fid: fid)
        case 25: return .rename(fid: fid, dfid: u32(), name: name())
        case 26: return .auth(afid: fid, uname: name(), aname: name(), uid: u32())
        case 20: return .attach(fid: fid, afid: u32(), uname: name(), aname: Bool.random(using: &random) ? Array("abuser".utf8) : name(),
                                uid: u32())
        default: return .version(msize: u32(), version: Bool.random(using: &random) ? NineP.protocolVersion : name())
        }
    }

    /// One hostile message: a request with hostile values, or one mangled on the wire.
    mutating func message() -> [UInt8] {
        let tag = Int.random(in: 0..<8, using: &random) == 0 ? NineP.noTag : UInt16.random(in: 0...40, using: &random)
        var encoded = request().encode(tag: tag)
        switch Int.random(in: 0..<10, using: &random) {
        case 0:   // a bit flipped after the size field
            let at = Int.random(in: 4..<encoded.count, using: &random)
            encoded[at] ^= 1 << UInt8.random(in: 0...7, using: &random)
        case 1:   // cut short, the size field saying so
            let keep = Int.random(in: 7...encoded.count, using: &random)
            encoded = Array(encoded.prefix(keep))
            setSize(&encoded, UInt32(keep))
        case 2:   // trailing bytes the size field counts
            encoded += bytes(Int.random(in: 1...64, using: &random))
            setSize(&encoded, UInt32(encoded.count))
        case 3:   // an unknown or reply type
            encoded[4] = UInt8.random(in: 0...255, using: &random)
        default:
            break
        }
        return encoded
    }

    /// Bytes that end a connection: a size field below the header, beyond any msize, or
    /// random bytes.
    mutating func framingViolation() -> [UInt8] {
        switch Int.random(in: 0..<4, using: &random) {
        case 0: return le32(UInt32.random(in: 0...6, using: &random)) + bytes(Int.random(in: 0...32, using: &random))
        case 1: return le32(UInt32.random(in: (64 << 20)...UInt32.max, using: &random)) + bytes(16)
        case 2: return le32(UInt32.max) + [100, 0xFF, 0xFF]
        default:   // random bytes after a size field no msize allows
            return le32(UInt32.random(in: (64 << 20)...UInt32.max, using: &random)) + bytes(Int.random(in: 0...4096, using: &random))
        }
    }

    private func setSize(_ message: inout [UInt8], _ size: UInt32) {
        message.replaceSubrange(0..<4, with: le32(size))
    }
}

func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

/// A percentile of samples (q in 0...1).
func percentile(_ samples: [Double], _ q: Double) -> Double {
    guard !samples.isEmpty else { return .nan }
    let sorted = samples.sorted()
    let index = min(sorted.count - 1, max(0, Int((q * Double(sorted.count)).rounded(.up)) - 1))
    return sorted[index]
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return .nan }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

/// Monotonic time in seconds.
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
