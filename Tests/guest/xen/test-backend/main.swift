// pvfs-xen-test-backend: the Xen 9pfs backend of PVFSTransport serving every device with the
// tiny read-only NineDiagnosticResponder instead of pvfsd's 9P server, so that the nested-Xen
// test (Tests/guest/xen/run-xen-9pfs.sh --transport-check) checks the Xen transport on its own.
// Not for serving VMs, and never installed.
import ArgumentParser
import Glibc
import Logging
import PVFS9PCodec
import PVFSTestSupport
import PVFSTransport

@main
struct XenTestBackend: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvfs-xen-test-backend",
        abstract: "Serve Xen 9pfs devices with a built-in read-only 9P responder (a transport test).",
        discussion: """
            Runs until SIGINT or SIGTERM. Each device's root holds the --file entries and a file
            "whoami" describing the device as the backend sees it (domain, name, device, dom0's
            tag and path nodes).
            """)

    @Option(name: .customLong("file"), help: "NAME=CONTENT: a file in the served root (repeatable).")
    var files: [String] = []

    @Option(name: .long, help: "Refuse devices with this backend tag (repeatable).")
    var refuseTag: [String] = []

    @Option(name: .long, help: "max-rings to offer.")
    var maxRings: UInt32 = 8

    @Option(name: .long, help: "max-ring-page-order to offer.")
    var maxRingPageOrder: UInt32 = 9

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "notice"

    func run() throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level \(logLevel)")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "pvfs.xen")
        logger.logLevel = level
        var contents: [String: [UInt8]] = [:]
        for entry in files {
            guard let equals = entry.firstIndex(of: "=") else {
                throw ValidationError("--file wants NAME=CONTENT, got \(entry)")
            }
            contents[String(entry[..<equals])] = Array(entry[entry.index(after: equals)...].utf8) + [0x0a]
        }
        var configuration = XenBackendConfiguration()
        configuration.maxRings = maxRings
        configuration.maxRingPageOrder = maxRingPageOrder
        let refused = Set(refuseTag)
        let fixed = contents

        // Signals go to a waiting thread, not to whichever thread happens to run.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let backend = try XenBackend(configuration: configuration, logger: logger) { peer in
            guard case .xen(let domid, let devid, let domainName, let path, let tag) = peer.endpoint else {
                throw NineConnectionRefused("not a Xen device")
            }
            if let tag, refused.contains(tag) {
                throw NineConnectionRefused("tag \(tag) is refused by this backend")
            }
            var files = fixed
            files["whoami"] = Array("domid=\(domid) name=\(domainName ?? "-") devid=\(devid) tag=\(tag ?? "-") path=\(path ?? "-")\n".utf8)
            return NineDiagnosticResponder(files: files)
        }
        do {
            try backend.start()
        } catch {
            logger.critical("cannot start the Xen backend: \(error)")
            throw ExitCode(1)
        }
        logger.notice("pvfs-xen-test-backend: backend running (pid \(getpid()))")
        var received: Int32 = 0
        sigwait(&signals, &received)
        logger.notice("pvfs-xen-test-backend: signal \(received), stopping")
        backend.stop()
        backend.wait()
        for device in backend.status { logger.notice("pvfs-xen-test-backend: final \(device)") }
    }
}
