import Foundation
import Glibc
import PVFS9P
import PVFS9PCodec
import PVFSEngine
import PVFSEngineTestSupport
import PVFSSystem
import PVFSTestSupport
import SystemPackage
import Testing
@testable import PVFSTransport

@Suite("Listen addresses")
struct ListenAddressTests {
    @Test func parsing() {
        #expect(ListenAddress("tcp:127.0.0.1:5640") == .tcp(host: "127.0.0.1", port: 5640))
        #expect(ListenAddress("tcp:[::1]:564") == .tcp(host: "::1", port: 564))
        #expect(ListenAddress("tcp:*:0") == .tcp(host: "*", port: 0))
        #expect(ListenAddress("tcp:localhost:1") == .tcp(host: "localhost", port: 1))
        #expect(ListenAddress("unix:/run/pvfs/vm1.9p") == .unix(path: "/run/pvfs/vm1.9p"))
        for bad in ["", "tcp:", "tcp:host", "tcp::1:5", "tcp:[::1]5", "tcp:h:65536", "tcp:h:-1", "tcp:h:+1", "unix:", "udp:h:1", "tcp::5"] {
            #expect(ListenAddress(bad) == nil, "\(bad)")
        }
        for text in ["tcp:127.0.0.1:5640", "tcp:[::1]:564", "unix:/x"] {
            #expect(ListenAddress(text)?.description == text)
        }
    }
}

@Suite("Socket transport")
struct SocketServerTests {
    @Test func servesOverTCP() throws {
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)])
        try s.start()
        defer { s.finish() }
        #expect(s.tcpPort != 0)
        let fd = try connectTCP(s.tcpPort)
        defer { closeClient(fd) }
        let c = client(fd)
        #expect(try c.version(msize: 512 * 1024) == (512 * 1024, "9P2000.L"))
        _ = try c.attach(fid: 0, aname: "vm1")
        _ = try c.walk(fid: 0, newFid: 1, path: "etc/hostname")
        _ = try c.lopen(fid: 1, flags: 2)
        #expect(String(decoding: try c.read(fid: 1, offset: 0, count: 100), as: UTF8.self) == "template-host\n")
        #expect(try c.write(fid: 1, offset: 0, bytes("tcp-host\n")) == 9)
        #expect(c.violations.isEmpty)
        let peer = try #require(s.peers.first)
        guard case .tcp(let remote, _) = peer.endpoint else {
            Issue.record("not a TCP peer: \(peer)")
            return
        }
        #expect(remote.hasPrefix("127.0.0.1:"))
        #expect(peer.remoteAddress == remote)
        #expect(peer.localAddress == "tcp:127.0.0.1:\(s.tcpPort)")
        #expect(s.server.connectionCount == 1)
    }

    @Test func servesOverIPv6() throws {
        let s = try ServedSockets([.tcp(host: "::1", port: 0)])
        try s.start()
        defer { s.finish() }
        guard case .tcp(let host, let port) = try #require(s.server.boundAddresses.first) else { return }
        #expect(host == "::1" && port != 0)
        #expect(s.server.boundAddresses.first?.description == "tcp:[::1]:\(port)")
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        defer { closeClient(fd) }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        inet_pton(AF_INET6, "::1", &address.sin6_addr)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        #expect(rc == 0)
        let c = client(fd)
        _ = try c.version()
        _ = try c.attach(fid: 0)
        #expect(try c.walk(fid: 0, newFid: 1, ["etc"]).count == 1)
        #expect(s.peers.first?.remoteAddress.hasPrefix("[::1]:") == true)
    }

    @Test func servesOverUnixSocketsWithPeerCredentials() throws {
        let dir = try TemporaryDirectory()
        let path = dir.path + "/vm1.9p"
        var config = SocketServer.Configuration()
        config.unixSocketMode = 0o600
        let s = try ServedSockets([.unix(path: path)], configuration: config)
        try s.start()
        var st = stat()
        #expect(lstat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        let fd = try connectUnix(path)
        let c = client(fd)
        _ = try c.version()
        _ = try c.attach(fid: 0)
        #expect(try c.walk(fid: 0, newFid: 1, path: "etc/hostname").count == 2)
        let peer = try #require(s.peers.first)
        #expect(peer.endpoint == .unix(listener: "unix:\(path)", processID: getpid(), userID: getuid(), groupID: getgid()))
        #expect(peer.localAddress == "unix:\(path)")
        closeClient(fd)
        s.finish()
        // The socket file goes with the server.
        #expect(lstat(path, &st) != 0)
    }

    @Test func unixSocketFilesAreHandledWithCare() throws {
        let dir = try TemporaryDirectory()
        // A stale socket (nobody listening) is replaced.
        let stale = dir.path + "/stale.9p"
        let (fd, _) = try Sockets.listenUnix(path: stale, mode: 0o600, backlog: 1)
        close(fd)
        let s1 = try ServedSockets([.unix(path: stale)])
        try s1.start()
        // A live one is not taken over.
        let s2 = try ServedSockets([.unix(path: stale)])
        let s2Error = #expect(throws: PVFSError.self) { try s2.start() }
        #expect(s2Error?.domain == .transport)
        s1.finish()
        // Nor is a file of another kind.
        let file = dir.path + "/regular"
        _ = FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        let s3 = try ServedSockets([.unix(path: file)])
        let s3Error = #expect(throws: PVFSError.self) { try s3.start() }
        #expect(s3Error?.domain == .transport)
        #expect(FileManager.default.fileExists(atPath: file))
        // Binding is all or nothing.
        let ok = dir.path + "/ok.9p"
        let s4 = try ServedSockets([.unix(path: ok), .unix(path: file)])
        let s4Error = #expect(throws: PVFSError.self) { try s4.start() }
        #expect(s4Error?.domain == .transport)
        #expect(!FileManager.default.fileExists(atPath: ok))
        // Paths too long for sockaddr_un.
        let s5 = try ServedSockets([.unix(path: dir.path + "/" + String(repeating: "x", count: 120))])
        let s5Error = #expect(throws: PVFSError.self) { try s5.start() }
        #expect(s5Error?.domain == .transport)
    }

    @Test func manyClientsAtOnce() throws {
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)])
        try s.start()
        defer { s.finish() }
        let port = s.tcpPort
        let content = TransportFixture.bigContent()
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            do {
                let fd = try connectTCP(port)
                defer { closeClient(fd) }
                let c = client(fd)
                _ = try c.version(msize: 128 * 1024)
                _ = try c.attach(fid: 0, uid: 0)
                _ = try c.walk(fid: 0, newFid: 1, ["big"])
                _ = try c.lopen(fid: 1, flags: 0)
                var pendings: [(Int, NinePClient.Pending)] = []
                for k in 0..<32 {
                    let offset = (i * 32 + k) * 60_000 % (TransportFixture.bigSize - 100_000)
                    pendings.append((offset, try c.start(.read(fid: 1, offset: UInt64(offset), count: 100_000))))
                }
                for (offset, p) in pendings {
                    guard case .read(let data) = try p.wait() else { Issue.record("client \(i): not an Rread"); continue }
                    #expect(Array(data) == Array(content[offset..<(offset + 100_000)]))
                }
                #expect(c.violations.isEmpty)
            } catch {
                Issue.record("client \(i): \(error)")
            }
        }
        #expect(waitUntil { s.server.connectionCount == 0 })
        #expect(s.fixture.openHandleCount == 0)
    }

    @Test func largeRepliesSurvivePartialWrites() throws {
        var nine = NinePConfiguration()
        nine.maximumMessageSize = 1 << 20
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)], nine: nine)
        try s.start()
        defer { s.finish() }
        // A small receive buffer on the client, and more reply bytes than the server's send
        // buffer takes (over loopback the kernel grows it to about 4 MiB at once): the socket
        // fills, replies wait in the server's queue, and sends end partially and are resumed.
        let fd = try connectTCP(s.tcpPort, receiveBuffer: 4096)
        defer { closeClient(fd) }
        let c = client(fd)
        _ = try c.version(msize: 1 << 20)
        _ = try c.attach(fid: 0)
        _ = try c.walk(fid: 0, newFid: 1, ["big"])
        _ = try c.lopen(fid: 1, flags: 0)
        let replies = 8
        var pendings: [NinePClient.Pending] = []
        for k in 0..<replies {
            pendings.append(try c.start(.read(fid: 1, offset: UInt64(k % 2) << 20, count: 1 << 20)))
        }
        // Nothing read yet: what the socket did not take waits in the server's reply queue.
        #expect(waitUntil { s.server.admission.usage.contains { $0.queuedReplyBytes > 0 } })
        let content = TransportFixture.bigContent()
        let length = (1 << 20) - 11
        for (k, p) in pendings.enumerated() {
            // Each reply holds msize - 11 bytes.
            guard case .read(let data) = try p.wait() else { Issue.record("not an Rread"); return }
            let start = (k % 2) << 20
            #expect(Array(data) == Array(content[start..<(start + length)]))
        }
        let rest = try c.read(fid: 1, offset: UInt64(1 << 20) + UInt64(length), count: 1 << 20)
        #expect(rest.count == 11)
    }

    @Test func requestsArriveOneByteAtATime() throws {
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)])
        try s.start()
        defer { s.finish() }
        let fd = try connectTCP(s.tcpPort)
        defer { closeClient(fd) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), 1, &one, 4)
        let c = NinePClient(send: { message in
            for b in message {
                var byte = b
                guard Glibc.send(fd, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 else { throw Errno(rawValue: errno) }
            }
        }, receive: {
            var framer = NinePMessageFramer(maximumMessageSize: 1 << 20)
            var buffer = [UInt8](repeating: 0, count: 1)
            while true {
                if let m = try framer.next() { return m }
                let n = recv(fd, &buffer, 1, 0)
                if n <= 0 { return nil }
                framer.append(contentsOf: buffer[0..<n])
            }
        })
        #expect(try c.version(msize: 8192).version == "9P2000.L")
        _ = try c.attach(fid: 0)
        #expect(try c.walk(fid: 0, newFid: 1, path: "etc/hostname").count == 2)
        #expect(try c.getattr(fid: 1).size == 14)
    }

    @Test func framingErrorsCloseOnlyThatConnection() throws {
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)])
        try s.start()
        defer { s.finish() }
        let good = try connectTCP(s.tcpPort)
        defer { closeClient(good) }
        let c = client(good)
        _ = try c.version(msize: 8192)
        _ = try c.attach(fid: 0)
        for garbage: [UInt8] in [[3, 0, 0, 0], [0xFF, 0xFF, 0xFF, 0x7F, 100, 0, 0], [0x01, 0x20, 0, 0]] {
            let bad = try connectTCP(s.tcpPort)
            let bc = client(bad)
            _ = try bc.version(msize: 8192)
            _ = garbage.withUnsafeBytes { Glibc.send(bad, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            // The server hangs up on it.
            #expect(throws: Errno.self) { try bc.start(.getattr(fid: 0, mask: .all)).wait(timeout: 10) }
            closeClient(bad)
        }
        #expect(try c.walk(fid: 0, newFid: 1, ["etc"]).count == 1)
        #expect(waitUntil { s.server.connectionCount == 1 })
    }

    @Test func connectionLimitAndRefusals() throws {
        var config = SocketServer.Configuration()
        config.limits.maximumConnections = 2
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)], configuration: config,
                                  refuse: { peer in peer.connectionID == 4 })
        try s.start()
        defer { s.finish() }
        let a = try connectTCP(s.tcpPort)
        var aOpen = true
        // Closed once only: the number of a closed socket is soon another descriptor's, maybe
        // one of a test running beside this one.
        defer { if aOpen { closeClient(a) } }
        let b = try connectTCP(s.tcpPort)
        defer { closeClient(b) }
        _ = try client(a).version()
        _ = try client(b).version()
        #expect(s.server.connectionCount == 2)
        // A third is closed at once.
        let third = try connectTCP(s.tcpPort)
        var byte: UInt8 = 0
        #expect(recv(third, &byte, 1, 0) == 0)
        closeClient(third)
        // Refused by the factory (connection 4, once there is room).
        closeClient(a)
        aOpen = false
        #expect(waitUntil { s.server.connectionCount == 1 })
        let refused = try connectTCP(s.tcpPort)
        #expect(recv(refused, &byte, 1, 0) == 0)
        closeClient(refused)
        let fifth = try connectTCP(s.tcpPort)
        defer { closeClient(fifth) }
        #expect(try client(fifth).version().version == "9P2000.L")
    }

    /// A client that sends requests but never reads: the server queues a bounded amount of
    /// replies, stops reading its requests, and still shuts down cleanly.
    @Test func clientsThatDoNotReadAreBounded() throws {
        var config = SocketServer.Configuration()
        config.replyQueueLimit = 1 << 20
        var nine = NinePConfiguration()
        nine.maximumMessageSize = 256 << 10
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)], configuration: config, nine: nine)
        try s.start()
        let fd = try connectTCP(s.tcpPort)
        let c = client(fd)
        _ = try c.version(msize: 256 << 10)
        _ = try c.attach(fid: 0)
        _ = try c.walk(fid: 0, newFid: 1, ["big"])
        _ = try c.lopen(fid: 1, flags: 0)
        // The other client sends on a raw, non-blocking socket and never reads.
        var small: Int32 = 4096
        let raw = try connectTCP(s.tcpPort)
        setsockopt(raw, SOL_SOCKET, SO_RCVBUF, &small, 4)
        _ = fcntl(raw, F_SETFL, fcntl(raw, F_GETFL) | O_NONBLOCK)
        var sentMessages = 0
        let version = NinePRequest.version(msize: 256 << 10, version: bytes("9P2000.L")).encode(tag: NineP.noTag)
        let attach = NinePRequest.attach(fid: 0, afid: NineP.noFid, uname: [], aname: [], uid: 0).encode(tag: 0)
        let walk = NinePRequest.walk(fid: 0, newFid: 1, names: [bytes("big")]).encode(tag: 1)
        let open = NinePRequest.lopen(fid: 1, flags: 0).encode(tag: 2)
        for m in [version, attach, walk, open] { _ = m.withUnsafeBytes { Glibc.send(raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
        Thread.sleep(forTimeInterval: 0.2)
        let deadline = Date(timeIntervalSinceNow: 10)
        var tag: UInt16 = 3
        var pushedBack = false
        while Date() < deadline {
            let read = NinePRequest.read(fid: 1, offset: 0, count: 256 << 10).encode(tag: tag)
            let n = read.withUnsafeBytes { Glibc.send(raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                guard errno == EAGAIN else { break }
                // Give the server a moment: if it still took requests the buffer would drain.
                usleep(300_000)
                if read.withUnsafeBytes({ Glibc.send(raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) < 0 && errno == EAGAIN {
                    pushedBack = true
                    break
                }
            }
            sentMessages += 1
            tag &+= 1
            if tag == NineP.noTag { tag = 3 }
        }
        // The server stopped taking requests (its reply queue is bounded), so once the kernel's
        // socket buffers were full the client could send no more.
        #expect(pushedBack)
        #expect(sentMessages > 0)
        // The well-behaved client on the same server is unaffected.
        #expect(try c.read(fid: 1, offset: 0, count: 10).count == 10)
        closeClient(fd)
        let started = Date()
        closeClient(raw)
        s.finish()
        #expect(Date().timeIntervalSince(started) < 15)
        #expect(s.fixture.openHandleCount == 0)
    }

    @Test func stopEndsConnectionsAndReleasesHandles() throws {
        var nine = NinePConfiguration()
        nine.lockWaitSeconds = .infinity
        let s = try ServedSockets([.tcp(host: "127.0.0.1", port: 0)], nine: nine)
        try s.start()
        var fds: [Int32] = []
        var clients: [NinePClient] = []
        for i in 0..<4 {
            let fd = try connectTCP(s.tcpPort)
            let c = client(fd)
            _ = try c.version()
            _ = try c.attach(fid: 0)
            _ = try c.walk(fid: 0, newFid: 1, [])
            _ = try c.lcreate(fid: 1, name: "file\(i)", flags: 2, mode: 0o644)
            _ = try c.write(fid: 1, offset: 0, bytes("x"))
            fds.append(fd)
            clients.append(c)
        }
        // One client has a lock request waiting on another's lock.
        _ = try clients[0].walk(fid: 0, newFid: 2, ["file0"])
        _ = try clients[0].lopen(fid: 2, flags: 2)
        _ = try clients[0].lock(fid: 2, NinePLock(type: 1, flags: 0, start: 0, length: 0, processID: 1, clientID: bytes("a")))
        _ = try clients[1].walk(fid: 0, newFid: 2, ["file0"])
        _ = try clients[1].lopen(fid: 2, flags: 2)
        let waiting = try clients[1].start(.lock(fid: 2, NinePLock(type: 1, flags: 1, start: 0, length: 0, processID: 2, clientID: bytes("b"))))
        #expect(s.fixture.openHandleCount == 4)
        let started = Date()
        s.finish()
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(s.server.connectionCount == 0)
        #expect(s.fixture.openHandleCount == 0)
        // Clients see the end of the stream; the waiting lock never got granted.
        #expect(throws: Errno.self) { try waiting.wait(timeout: 5) }
        #expect(throws: Errno.self) { try clients[2].getattr(fid: 0) }
        for fd in fds { close(fd) }
        // And nothing listens any more.
        #expect(throws: Errno.self) { try connectTCP(s.tcpPort) }
        #expect(String(decoding: try s.fixture.view().readWhole("file3"), as: UTF8.self) == "x")
    }
}
