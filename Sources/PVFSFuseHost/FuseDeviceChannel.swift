import CPVFSTransportIO
import Foundation
import Glibc
import Logging
import PVFSFuseCodec
import PVFSSystem
import Synchronization
import SystemPackage

/// A FUSE mount's kernel connection, /dev/fuse, served by a few threads that read requests
/// and hand them to a `FuseMessageHandler`.
///
/// The mount is made with mount(2) itself (root only: `fd=N` of an open /dev/fuse, as fusermount3
/// does on a user's behalf), so no libfuse and no helper process are involved. Each reader thread
/// reads from its own clone of the descriptor (FUSE_DEV_IOC_CLONE), so that the kernel hands
/// requests to them without a shared queue lock; a reply goes back on the descriptor its request
/// came from. The threads end when the kernel ends the connection (unmount, abort).
public final class FuseDeviceChannel: @unchecked Sendable {
    public let mountpoint: String
    /// The kernel's connection number (the minor of the mount's device), for a forced abort.
    public let connection: UInt32?
    /// The mount's "major:minor", for its readahead setting.
    let device: String?
    let logger: Logger
    private let descriptor: Int32

    /// Bytes one read from /dev/fuse needs: the kernel refuses buffers that could not hold a
    /// whole WRITE of max_write (plus header and arguments).
    let bufferSize: Int

    public struct Options: Sendable {
        public var fsName: String
        public var subtype: String
        public var readOnly: Bool
        public var allowOther: Bool
        public var maximumWrite: Int
        /// Readahead of the mount in KiB, set after INIT (0 keeps the kernel's 128 KiB).
        public var readaheadKiB: Int

        public init(fsName: String, subtype: String = "pvfs", readOnly: Bool = false, allowOther: Bool = false,
                    maximumWrite: Int = 1 << 20, readaheadKiB: Int = 512) {
            self.fsName = fsName
            self.subtype = subtype
            self.readOnly = readOnly
            self.allowOther = allowOther
            self.maximumWrite = maximumWrite
            self.readaheadKiB = readaheadKiB
        }
    }

    public let options: Options

    private struct State {
        var running = false
        var stopRequested = false
        var finished = false
    }

    private let state = Mutex(State())
    private let readaheadApplied = Atomic<Bool>(false)

    /// Opens /dev/fuse and mounts it on `mountpoint` (a resolved directory).
    public init(mountpoint: String, options: Options, logger: Logger) throws(PVFSError) {
        self.mountpoint = mountpoint
        self.options = options
        self.logger = logger
        bufferSize = options.maximumWrite + 4096
        let fd = Glibc.open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let error = Errno(rawValue: Glibc.errno)
            throw PVFSError(.mount, "cannot open /dev/fuse: \(error)", errno: error)
        }
        var data = "fd=\(fd),rootmode=40000,user_id=\(getuid()),group_id=\(getgid()),default_permissions"
        if options.allowOther { data += ",allow_other" }
        var flags = UInt(MS_NOSUID) | UInt(MS_NODEV) | UInt(MS_NOATIME)
        if options.readOnly { flags |= UInt(MS_RDONLY) }
        let rc = Glibc.mount(options.fsName, mountpoint, "fuse.\(options.subtype)", flags, data)
        guard rc == 0 else {
            let error = Errno(rawValue: Glibc.errno)
            Glibc.close(fd)
            let hint = error == .notPermitted ? " (mounting through /dev/fuse needs root)" : ""
            throw PVFSError(.mount, "cannot mount \(options.fsName) on \(mountpoint): \(error)\(hint)", errno: error)
        }
        descriptor = fd
        let entry = FuseMountTable.entries().last { $0.mountpoint == mountpoint && $0.fileSystemType == "fuse.\(options.subtype)" }
        connection = entry?.device?.minor
        device = entry?.device.map { "\($0.major):\($0.minor)" }
    }

    deinit {
        Glibc.close(descriptor)
    }

    /// Serves requests with `threads` readers until the kernel ends the connection; then tells
    /// the handler. Returns at once if `stop` came first.
    public func serve(_ handler: any FuseMessageHandler, threads: Int) {
        let proceed = state.withLock { s -> Bool in
            guard !s.running, !s.finished, !s.stopRequested else { return false }
            s.running = true
            return true
        }
        guard proceed else {
            handler.transportClosed()
            return
        }
        var sinks: [DeviceReplySink] = []
        for i in 0..<max(1, threads) {
            let fd = i == 0 ? dup(descriptor) : cloneDescriptor()
            guard fd >= 0 else {
                logger.warning("cannot clone /dev/fuse for reader \(i): \(Errno(rawValue: Glibc.errno)); serving with \(i)")
                break
            }
            sinks.append(DeviceReplySink(descriptor: fd, readBufferSize: bufferSize, logger: logger))
        }
        let group = DispatchGroup()
        for (i, sink) in sinks.enumerated() {
            group.enter()
            let thread = Thread { [self] in
                readLoop(sink, handler)
                group.leave()
            }
            thread.name = "pvfs.fuse.dev\(i)"
            thread.stackSize = 1 << 20
            thread.start()
        }
        group.wait()
        for sink in sinks { sink.close() }
        handler.transportClosed()
        state.withLock {
            $0.running = false
            $0.finished = true
        }
    }

    private func cloneDescriptor() -> Int32 {
        let fd = Glibc.open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return -1 }
        var master = UInt32(bitPattern: descriptor)
        // FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t)
        let request: UInt = 0x8004_e500
        guard ioctl(fd, request, &master) == 0 else {
            Glibc.close(fd)
            return -1
        }
        return fd
    }

    private func readLoop(_ sink: DeviceReplySink, _ handler: any FuseMessageHandler) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 4096)
        defer { buffer.deallocate() }
        while true {
            let n = Glibc.read(sink.descriptor, buffer, bufferSize)
            if n < 0 {
                let error = Glibc.errno
                // ENOENT: the request was interrupted before it could be read.
                if error == EINTR || error == EAGAIN || error == ENOENT { continue }
                if error != ENODEV { logger.error("reading /dev/fuse: \(Errno(rawValue: error))") }
                return
            }
            if n == 0 { return }
            let message = UnsafeRawBufferPointer(start: buffer, count: n)
            let opcode = n >= 8 ? message.loadUnaligned(fromByteOffset: 4, as: UInt32.self) : 0
            handler.handle(message, reply: sink)
            if opcode == FuseOpcode.initialise.rawValue, !readaheadApplied.exchange(true, ordering: .relaxed) {
                applyReadahead()
            }
        }
    }

    /// INIT can only lower the readahead (the kernel keeps the smaller of its default, 128 KiB,
    /// and what INIT says); the bdi setting raises it once the INIT reply was processed, which
    /// the kernel does within the write of that reply. 512 KiB takes a quarter of the requests of
    /// sequential reads.
    private func applyReadahead() {
        guard options.readaheadKiB > 0, let device else { return }
        let fd = Glibc.open("/sys/class/bdi/\(device)/read_ahead_kb", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        let text = Array("\(options.readaheadKiB)\n".utf8)
        _ = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
    }

    /// Ends the mount. The kernel detaches it at once; files still open keep working until
    /// closed, then `serve` returns. With `force` the connection is aborted instead: whatever
    /// still uses the mount gets ENOTCONN and `serve` returns now.
    public func stop(force: Bool = false) {
        state.withLock { $0.stopRequested = true }
        if Glibc.umount2(mountpoint, 0) != 0 {
            let error = Errno(rawValue: Glibc.errno)
            if error == .resourceBusy {
                _ = Glibc.umount2(mountpoint, Int32(MNT_DETACH))
            } else if error != .invalidArgument && error != .noSuchFileOrDirectory {
                logger.warning("cannot unmount \(mountpoint): \(error)")
            }
        }
        if force { abortConnection() }
    }

    public func abortConnection() {
        if let connection { FuseMountTable.abortConnection(connection) }
    }

    /// Unmounts what is still mounted of this connection (after the serving ended by an abort).
    public func unmountIfMounted() {
        let stillMounted = FuseMountTable.entries().contains {
            $0.mountpoint == mountpoint && $0.fileSystemType == "fuse.\(options.subtype)" && (connection == nil || $0.device?.minor == connection)
        }
        if stillMounted, Glibc.umount2(mountpoint, 0) != 0 { _ = Glibc.umount2(mountpoint, Int32(MNT_DETACH)) }
    }
}

/// Replies of one reader thread, written on the descriptor its requests came from. A reply may
/// come from another thread (a lock wait) at any time, also after the channel closed: it is then
/// dropped, never written to a descriptor number that may have been reused.
final class DeviceReplySink: FuseReplySink, @unchecked Sendable {
    let descriptor: Int32
    private let closed = Mutex(false)
    private let readBuffer: UnsafeMutableRawPointer
    private let readBufferSize: Int
    private let logger: Logger

    init(descriptor: Int32, readBufferSize: Int, logger: Logger) {
        self.descriptor = descriptor
        self.readBufferSize = readBufferSize
        readBuffer = UnsafeMutableRawPointer.allocate(byteCount: readBufferSize, alignment: 4096)
        self.logger = logger
    }

    deinit {
        readBuffer.deallocate()
        if let pipe {
            Glibc.close(pipe.read)
            Glibc.close(pipe.write)
        }
    }

    var capacity: Int { Int.max }

    func close() {
        closed.withLock { isClosed in
            guard !isClosed else { return }
            isClosed = true
            Glibc.close(descriptor)
        }
    }

    func send(_ reply: UnsafeRawBufferPointer) {
        write(reply.baseAddress, reply.count)
    }

    private func write(_ bytes: UnsafeRawPointer?, _ count: Int) {
        closed.withLock { isClosed in
            guard !isClosed else { return }
            while true {
                let n = Glibc.write(descriptor, bytes, count)
                if n >= 0 { return }
                let error = Glibc.errno
                if error == EINTR { continue }
                // ENOENT: the request was interrupted or aborted; the kernel no longer waits.
                if error != ENOENT && error != ENODEV { logger.debug("writing a FUSE reply: \(Errno(rawValue: error))") }
                return
            }
        }
    }

    /// Replies at least this large move through a pipe: the kernel splices the file's pages into
    /// the reply, without a copy through this process. Smaller ones are cheaper copied once
    /// through the thread's buffer (as libfuse does below two pages, and pvfs did below 128 KiB).
    static let spliceThreshold = 128 << 10

    /// A READ reply. Called only while the request is handled on this sink's thread, which owns
    /// the buffer and the pipe.
    func sendRead(unique: UInt64, descriptor file: Int32, offset: Int64, count: Int) -> Int {
        if count >= Self.spliceThreshold, let sent = spliceRead(unique: unique, file: file, offset: offset, count: count) {
            return sent
        }
        return copyRead(unique: unique, file: file, offset: offset, count: count)
    }

    /// Reads the data into the thread's buffer behind the header and writes both at once.
    private func copyRead(unique: UInt64, file: Int32, offset: Int64, count: Int) -> Int {
        let header = FuseProtocol.outHeaderSize
        let wanted = min(count, readBufferSize - header)
        var done = 0
        while done < wanted {
            let n = pread(file, readBuffer + header + done, wanted - done, off_t(offset) + off_t(done))
            if n > 0 {
                done += n
                continue
            }
            if n == 0 { break }
            let error = Glibc.errno
            if error == EINTR { continue }
            if done == 0 { return -Int(error) }
            break
        }
        FuseOutHeader(length: UInt32(header + done), error: 0, unique: unique)
            .store(into: UnsafeMutableRawBufferPointer(start: readBuffer, count: header))
        write(readBuffer, header + done)
        return done
    }

    private var pipe: (read: Int32, write: Int32, capacity: Int)?
    private var pipeUnavailable = false

    /// Header written into the pipe, the file's pages spliced behind it, the whole spliced into
    /// /dev/fuse as one reply. Nil: not done (no pipe, the file changed size meanwhile), copy it.
    private func spliceRead(unique: UInt64, file: Int32, offset: Int64, count: Int) -> Int? {
        guard let pipe = ensurePipe() else { return nil }
        var st = Glibc.stat()
        guard fstat(file, &st) == 0 else { return nil }
        let available = max(0, min(Int64(count), Int64(st.st_size) - offset))
        let length = Int(available)
        guard length >= Self.spliceThreshold, length + FuseProtocol.outHeaderSize <= pipe.capacity else { return nil }
        var header = [UInt8](repeating: 0, count: FuseProtocol.outHeaderSize)
        header.withUnsafeMutableBytes {
            FuseOutHeader(length: UInt32(FuseProtocol.outHeaderSize + length), error: 0, unique: unique).store(into: $0)
        }
        var inPipe = 0
        let written = header.withUnsafeBytes { Glibc.write(pipe.write, $0.baseAddress, $0.count) }
        guard written == FuseProtocol.outHeaderSize else {
            if written > 0 { drain(pipe.read, written) }
            return nil
        }
        inPipe = written
        var position = offset
        var moved = 0
        while moved < length {
            let n = cpvfs_splice(file, &position, pipe.write, length - moved, 1)
            if n > 0 {
                moved += n
                inPipe += n
            } else if n < 0 && Glibc.errno == EINTR {
                continue
            } else {
                break
            }
        }
        guard moved == length else {
            // The file shrank under us (another session truncated it): answer by copying.
            drain(pipe.read, inPipe)
            return nil
        }
        closed.withLock { isClosed in
            var left = inPipe
            if !isClosed {
                while left > 0 {
                    let n = cpvfs_splice(pipe.read, nil, descriptor, left, 1)
                    if n > 0 {
                        left -= n
                    } else if n < 0 && Glibc.errno == EINTR {
                        continue
                    } else {
                        break
                    }
                }
            }
            // A reply the kernel refused (ENOENT: request gone) stays in the pipe: empty it.
            if left > 0 { drain(pipe.read, left) }
        }
        return length
    }

    private func ensurePipe() -> (read: Int32, write: Int32, capacity: Int)? {
        if let pipe { return pipe }
        guard !pipeUnavailable else { return nil }
        var fds: [Int32] = [-1, -1]
        let capacity = Int(cpvfs_pipe(&fds, Int32(readBufferSize + 4096)))
        guard capacity > 0 else {
            pipeUnavailable = true
            return nil
        }
        pipe = (fds[0], fds[1], capacity)
        return pipe
    }

    private func drain(_ fd: Int32, _ count: Int) {
        var left = count
        while left > 0 {
            let n = Glibc.read(fd, readBuffer, min(left, readBufferSize))
            if n > 0 { left -= n } else if n < 0 && Glibc.errno == EINTR { continue } else { break }
        }
    }

    func noReply() {}
}
