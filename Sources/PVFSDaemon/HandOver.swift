import Foundation
import Glibc
import Logging
import PVFS9PCodec
import PVFSEngine
import PVFSSystem
import PVFSTransport

/// What one pvfsd process hands to the binary that takes over from it (a graceful upgrade),
/// besides the descriptors themselves: where each descriptor goes, the 9P sessions, and the
/// unlinked files still open. JSON, versioned: a process takes over from its own format and the
/// one before it.
struct DaemonHandOverManifest: Codable {
    static let currentFormat = 1

    struct NineListener: Codable {
        var descriptor: Int
        var requestedAddress: String
        var boundAddress: String
        var unixPath: String?
    }

    /// A `NinePPeer`, as JSON.
    struct Peer: Codable {
        var kind: String
        var remote: String?
        var listener: String?
        var processID: Int32?
        var userID: UInt32?
        var groupID: UInt32?
        var connectionID: UInt64

        init(_ peer: NinePPeer) {
            connectionID = peer.connectionID
            switch peer.endpoint {
            case .tcp(let remote, let listener):
                kind = "tcp"
                self.remote = remote
                self.listener = listener
            case .unix(let listener, let processID, let userID, let groupID):
                kind = "unix"
                self.listener = listener
                self.processID = processID
                self.userID = userID
                self.groupID = groupID
            case .xen, .local:
                kind = "other"
                remote = peer.remoteAddress
                listener = peer.localAddress
            }
        }

        var peer: NinePPeer {
            let endpoint: NinePPeer.Endpoint = switch kind {
            case "tcp": .tcp(remote: remote ?? "unknown", listener: listener ?? "")
            case "unix": .unix(listener: listener ?? "", processID: processID, userID: userID, groupID: groupID)
            default: .local(remote: remote ?? "unknown", local: listener ?? "")
            }
            return NinePPeer(endpoint, connectionID: connectionID)
        }
    }

    struct Connection: Codable {
        var descriptor: Int
        var peer: Peer
        var listenerName: String
        var pendingInput: Data
        var session: Data
    }

    var format = currentFormat
    /// The pvfs version that wrote it.
    var producer: String
    var controlListener: Int?
    var metricsListener: Int?
    var nineListeners: [NineListener] = []
    var connections: [Connection] = []
    /// Unlinked inodes still open through a handed-over fid, by VM.
    var keptOrphans: [String: [UInt64]] = [:]

    static func decode(_ bytes: [UInt8]) throws -> DaemonHandOverManifest {
        let manifest = try JSONDecoder().decode(DaemonHandOverManifest.self, from: Data(bytes))
        guard (currentFormat - 1...currentFormat).contains(manifest.format) else {
            throw ConfigurationError("hand-over format \(manifest.format) from pvfs \(manifest.producer) is not one this build takes over from")
        }
        return manifest
    }
}

/// The short messages of the hand-over channel besides the manifest.
struct HandOverMessage: Codable {
    /// hello (new → old: ready to take over), adopted (new → old: everything restored, nothing
    /// read yet), serve (old → new: go on, this process exits), failed (new → old).
    var kind: String
    var formats: [Int]?
    var version: String?
    var pid: Int32?
    var error: String?

    func encoded() -> [UInt8] { (try? [UInt8](JSONEncoder().encode(self))) ?? [] }
    static func decode(_ bytes: [UInt8]) throws -> HandOverMessage { try JSONDecoder().decode(HandOverMessage.self, from: Data(bytes)) }
}

/// What the new process received: the descriptors, placed as the manifest says.
public struct DaemonAdoption: @unchecked Sendable {
    var manifest: DaemonHandOverManifest
    var descriptors: [Int32]
    let channel: HandOverChannel

    func descriptor(_ index: Int?) -> Int32? {
        guard let index, descriptors.indices.contains(index) else { return nil }
        return descriptors[index]
    }

    /// Closes the 9P listeners and connections handed over (no 9P listener is configured now).
    public func discardNineP() {
        let handed = nineP
        for fd in handed.listeners.map(\.fd) + handed.connections.map(\.fd) { close(fd) }
    }

    /// The 9P socket server's share.
    public var nineP: SocketServerHandOff {
        SocketServerHandOff(
            listeners: manifest.nineListeners.compactMap { listener in
                descriptor(listener.descriptor).map {
                    SocketListenerHandOff(fd: $0, requestedAddress: listener.requestedAddress, boundAddress: listener.boundAddress,
                                          unixPath: listener.unixPath)
                }
            },
            connections: manifest.connections.compactMap { connection in
                descriptor(connection.descriptor).map {
                    SocketConnectionHandOff(fd: $0, id: connection.peer.connectionID, peer: connection.peer.peer,
                                            listenerName: connection.listenerName, pendingInput: [UInt8](connection.pendingInput),
                                            session: [UInt8](connection.session))
                }
            })
    }

    /// Takes over from the process that started this one: says hello on the inherited channel
    /// and waits for the manifest and descriptors. nil when this process was not started for a
    /// hand-over.
    public static func receiveIfStartedForHandOver(version: String, logger: Logger) throws -> DaemonAdoption? {
        guard let text = getenv(HandOverChannel.environmentVariable).map({ String(cString: $0) }) else { return nil }
        unsetenv(HandOverChannel.environmentVariable)
        guard let fd = Int32(text), fd >= 0 else { throw ConfigurationError("\(HandOverChannel.environmentVariable)=\(text) is no descriptor") }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let channel = HandOverChannel(fd: fd)
        try channel.send(HandOverMessage(kind: "hello", formats: [DaemonHandOverManifest.currentFormat - 1, DaemonHandOverManifest.currentFormat],
                                         version: version).encoded())
        let (payload, descriptors) = try channel.receive(timeout: 120)
        let manifest: DaemonHandOverManifest
        do {
            manifest = try DaemonHandOverManifest.decode(payload)
        } catch {
            for fd in descriptors { close(fd) }
            try? channel.send(HandOverMessage(kind: "failed", error: "\(error)").encoded())
            throw error
        }
        logger.notice("taking over from pvfs \(manifest.producer): \(manifest.nineListeners.count) 9P listeners, \(manifest.connections.count) connections")
        return DaemonAdoption(manifest: manifest, descriptors: descriptors, channel: channel)
    }

    /// Tells the previous process that everything is restored, and waits for its word to serve
    /// (after which it exits). Throws when it does not give it: it may serve on (or take over
    /// from itself), so this process must not read a byte of any client.
    public func awaitPermissionToServe() throws {
        try channel.send(HandOverMessage(kind: "adopted", pid: getpid()).encoded())
        let answer = try HandOverMessage.decode(channel.receive(timeout: 30).payload)
        channel.close()
        guard answer.kind == "serve" else { throw ConfigurationError("the previous pvfsd answered \(answer.kind)") }
    }

    /// Tells the previous process the take-over failed (it then tries its own binary).
    public func reportFailure(_ error: Error) {
        try? channel.send(HandOverMessage(kind: "failed", error: "\(error)").encoded())
        channel.close()
    }
}

/// An upgrade refused because sessions that cannot move yet would end.
struct UpgradeBlocked: Error, CustomStringConvertible {
    var sessions: [String]
    var description: String {
        "these sessions cannot move to a new process yet and would end: " + sessions.joined(separator: "; ")
            + " (end them first, or upgrade with --force)"
    }
}

/// The result of a graceful upgrade, as the control socket reports it.
public struct UpgradeOutcome: Codable, Sendable {
    public var pid: Int32
    public var binary: String
    public var version: String?
    public var connections: Int
    public var closedConnections: Int
    public var listeners: Int
    /// Set when the new binary failed to take over and this build took over from itself: why.
    public var fallbackReason: String?
}

extension Daemon {
    /// The path this process was started from (a package upgrade may have replaced the file since).
    static let ownBinary: String = {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .replacingOccurrences(of: " (deleted)", with: "")
    }()

    /// This process's own executable, held open from the start: when a new binary fails to take
    /// over, this build takes over from itself, even after a package upgrade replaced its file.
    static let ownExecutable: Int32 = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)

    /// A path that executes this very build while this process lives.
    static var ownExecutablePath: String {
        ownExecutable >= 0 ? "/proc/\(getpid())/fd/\(ownExecutable)" : ownBinary
    }

    /// Hands everything to a new process running `binary` (this process's own path by default,
    /// where a package upgrade puts the new build), then returns; the caller exits. Sockets
    /// (9P listeners and connections with their sessions, the control and metrics listeners)
    /// move without a moment where no one listens; clients see nothing. Transports whose
    /// sessions cannot move yet (Xen devices, virtio-fs front-ends, host FUSE mounts) refuse
    /// the upgrade while they have any, unless `force`.
    /// `committed` turns true at the point of no return: from then on this process must exit,
    /// whatever the outcome.
    func upgrade(binary requested: String?, force: Bool, timeout: Double, committed: inout Bool) throws -> UpgradeOutcome {
        let binary = requested ?? Self.ownBinary
        guard access(binary, X_OK) == 0 else { throw ConfigurationError("\(binary) is not an executable") }
        let lost = services.flatMap(\.sessionsLostByHandOver)
        if !lost.isEmpty && !force { throw UpgradeBlocked(sessions: lost) }
        guard beginUpgrade() else { throw ConfigurationError("an upgrade or shutdown is already under way") }
        var pointOfNoReturn = false
        defer {
            if !pointOfNoReturn { endUpgrade() }
            committed = pointOfNoReturn
        }

        // 1. The new process starts and says which formats it takes over from.
        var child = try HandOverChild.spawn(binary: binary, logger: logger)
        let hello: HandOverMessage
        do {
            hello = try HandOverMessage.decode(child.channel.receive(timeout: 60).payload)
        } catch {
            child.abandon()
            throw ConfigurationError("\(binary) did not start for the hand-over: \(error)")
        }
        guard hello.kind == "hello", hello.formats?.contains(DaemonHandOverManifest.currentFormat) == true else {
            child.abandon()
            throw ConfigurationError("\(binary) (pvfs \(hello.version ?? "?")) cannot take over from this version")
        }

        // 2. Every connection of every listener comes to rest between two messages; all of them
        // serve on if any does not. Reversible until here.
        let nineP = services.compactMap { $0 as? NinePSocketService }
        var prepared: [NinePSocketService] = []
        do {
            for service in nineP {
                try service.prepareHandOver(timeout: timeout)
                prepared.append(service)
            }
        } catch {
            for service in prepared { service.abandonHandOver() }
            child.abandon()
            throw error
        }
        pointOfNoReturn = true
        let handOffs = nineP.map { $0.completeHandOver(timeout: timeout) }

        // 3. Nothing of this process may touch the store any more: periodic work stops, the
        // services that cannot move end, the volumes close keeping the open unlinked files.
        periodicWork.cancel()
        stopUsageSaving()
        for service in services.reversed() where !(service is NinePSocketService) { service.stop() }
        var manifest = DaemonHandOverManifest(producer: softwareVersion)
        for volume in registry.openVolumes {
            let orphans = volume.openOrphans
            if !orphans.isEmpty { manifest.keptOrphans[volume.name] = orphans.sorted() }
        }
        registry.saveUsage()
        registry.closeAll(keepingOrphans: true)

        var descriptors: [Int32] = []
        func place(_ fd: Int32) -> Int {
            descriptors.append(fd)
            return descriptors.count - 1
        }
        manifest.controlListener = controlListenerDescriptor.map(place)
        manifest.metricsListener = metricsListenerDescriptor.map(place)
        var connections = 0
        var closed = 0
        for handOff in handOffs {
            closed += handOff.closedCount
            for listener in handOff.listeners {
                manifest.nineListeners.append(.init(descriptor: place(listener.fd), requestedAddress: listener.requestedAddress,
                                                    boundAddress: listener.boundAddress, unixPath: listener.unixPath))
            }
            for connection in handOff.connections {
                connections += 1
                manifest.connections.append(.init(descriptor: place(connection.fd), peer: .init(connection.peer),
                                                  listenerName: connection.listenerName, pendingInput: Data(connection.pendingInput),
                                                  session: Data(connection.session)))
            }
        }
        let payload = try [UInt8](JSONEncoder().encode(manifest))

        // 4. The new process takes over; should it fail, this build takes over from itself.
        let candidates = [binary, Self.ownExecutablePath]
        var lastError = ""
        var firstError = ""
        for (attempt, candidate) in candidates.enumerated() {
            if attempt > 0 {
                firstError = lastError
                logger.error("the take-over by \(binary) failed (\(lastError)); this build takes over from itself")
                do {
                    child = try HandOverChild.spawn(binary: candidate, logger: logger)
                    _ = try child.channel.receive(timeout: 60)
                } catch {
                    lastError = "\(error)"
                    child.abandon()
                    continue
                }
            }
            do {
                try child.channel.send(payload, descriptors: descriptors)
                let answer = try HandOverMessage.decode(child.channel.receive(timeout: max(60, timeout * 4)).payload)
                guard answer.kind == "adopted", let pid = answer.pid else {
                    throw ConfigurationError(answer.error ?? "the new process answered \(answer.kind)")
                }
                // The new process has restored everything and reads nothing until told: from
                // this message on it serves, and this process only exits.
                try child.channel.send(HandOverMessage(kind: "serve").encoded())
                child.release()
                ServiceManagerNotification.send("MAINPID=\(pid)\nSTATUS=handed over to pid \(pid)")
                logger.notice("handed over to pid \(pid) (\(candidate)): \(connections) connections, \(closed) closed")
                return UpgradeOutcome(pid: pid, binary: attempt == 0 ? candidate : Self.ownBinary,
                                      version: attempt == 0 ? hello.version : softwareVersion, connections: connections,
                                      closedConnections: closed, listeners: manifest.nineListeners.count,
                                      fallbackReason: attempt == 0 ? nil : "\(binary) could not take over: \(firstError)")
            } catch {
                lastError = "\(error)"
                child.abandon()
            }
        }
        // Nobody took over: the descriptors close with this process and the clients lose
        // their connections, as at a crash.
        logger.critical("no process took over: \(lastError)")
        throw ConfigurationError("no process took over (\(lastError)); pvfsd exits")
    }
}

/// The new process of a hand-over, with its end of the channel.
struct HandOverChild {
    var pid: pid_t
    var channel: HandOverChannel

    /// Starts `binary` with this process's arguments, the channel's other end as descriptor 3.
    static func spawn(binary: String, logger: Logger) throws -> HandOverChild {
        let (channel, peer) = try HandOverChannel.pair()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let inherited: Int32 = 3
        posix_spawn_file_actions_adddup2(&actions, peer, inherited)
        // Only the channel goes to the new process: a client's socket leaked into it by a
        // library's descriptor without O_CLOEXEC would outlive its close there.
        markDescriptorsCloseOnExec()
        var arguments = CommandLine.arguments
        arguments[0] = binary.hasPrefix("/proc/") ? Daemon.ownBinary : binary
        var environment = ProcessInfo.processInfo.environment
        environment[HandOverChannel.environmentVariable] = "\(inherited)"
        // The new process is the service's main process from now on, not a child to wait for.
        environment["LISTEN_PID"] = nil
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, binary, &actions, nil, argv, envp)
        close(peer)
        guard rc == 0 else {
            channel.close()
            throw ConfigurationError("cannot start \(binary): \(String(cString: strerror(rc)))")
        }
        logger.notice("started \(binary) (pid \(pid)) to take over")
        return HandOverChild(pid: pid, channel: channel)
    }

    /// The child failed: it is stopped and reaped.
    func abandon() {
        channel.close()
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    /// The child serves: this process lets go of it (it outlives this one).
    func release() {
        channel.close()
    }
}
