import Foundation
import PVFS9P
import PVFSEngine
import PVFSTransport

/// pvfsd's settings: a small config file (`/etc/pvfs/pvfsd.conf`), overridden by options.
///
///     # pvfsd.conf
///     store = /var/lib/pvfs
///     listen = tcp:127.0.0.1:5640            # name defaults to the address
///     listen = web1-port tcp:127.0.0.1:5641  # a named listener (bind VMs with --listener web1-port)
///     listen = unix:/run/pvfs/9p.sock
///     metrics = tcp:127.0.0.1:9641
///     xen = on
///     janitor-interval = 3600                # seconds; 0 disables
///     usage-save-interval = 5
///     template-image-retention = 60          # seconds a template's tree stays loaded after its last VM closed
///     catalog-commit = sync                  # or grouped (faster metadata; see Volume.CommitMode)
///     max-connections-per-listener = 256     # per-tenant limits of the transports: see `Limits`
///     max-sessions-per-connection = 256      # and the other limits of DaemonConfiguration+Limits.swift
public struct DaemonConfiguration: Sendable, Equatable {
    /// Limits per tenant (listener, VM, Xen domain) of the transports. Connections and
    /// timeouts refuse or close; requests and reply bytes push back (stop reading a socket or
    /// consuming a ring). Defaults in docs/operations.md.
    public struct Limits: Sendable, Equatable {
        public var tenants = TenantLimits()
        /// Reply bytes queued for a socket whose client does not read; past it the socket is not read.
        public var replyQueueBytes = SocketServer.Configuration().replyQueueLimit
        public var xenRing = XenRingLimits()
        /// Nice value (1...19; 20: SCHED_IDLE) of the threads serving a tenant that uses more
        /// than its share of pvfsd's CPU (`TenantCPUFairness`); 0: account CPU per tenant,
        /// demote nobody (the default).
        public var tenantCPUNice: Int32 = TenantCPUFairness.Settings().demotedNice
        /// Threads of the worker pool every transport shares (file operations).
        public var workerThreads = max(4, ProcessInfo.processInfo.activeProcessorCount * 4)
        /// Share of the worker threads one VM may run on while another VM has work waiting.
        public var workerMaxShare = 0.5

        public init() {}

        /// The settings, as pvfsd.conf names them, with their values.
        public var settings: [(key: String, value: String)] {
            [("max-connections", "\(tenants.maximumConnections)"),
             ("max-connections-per-listener", "\(tenants.maximumConnectionsPerListener)"),
             ("max-connections-per-vm", "\(tenants.maximumConnectionsPerVM)"),
             ("handshake-timeout", "\(tenants.handshakeTimeoutSeconds)"),
             ("idle-timeout", "\(tenants.idleTimeoutSeconds)"),
             ("reply-queue-bytes", "\(replyQueueBytes)"),
             ("xen-ring-requests", "\(xenRing.maxRequestsInFlight)"),
             ("xen-ring-reply-bytes", "\(xenRing.maxReplyBytes)"),
             ("tenant-cpu-nice", "\(tenantCPUNice)"),
             ("worker-threads", "\(workerThreads)"),
             ("worker-max-share", "\(workerMaxShare)")]
        }

        /// Sets one limit from its pvfsd.conf line; false when `key` is not a limit.
        mutating func set(_ key: String, _ value: String) throws -> Bool {
            func count(_ range: ClosedRange<Int>) throws -> Int {
                guard let v = Int(value), range.contains(v) else {
                    throw ConfigurationError("\(key) takes a number in \(range.lowerBound)...\(range.upperBound)")
                }
                return v
            }
            func bytes(_ range: ClosedRange<Int>) throws -> Int {
                guard let v = Self.parseBytes(value), range.contains(v) else {
                    throw ConfigurationError("\(key) takes a size (bytes, or with K, M or G) in \(range.lowerBound)...\(range.upperBound)")
                }
                return v
            }
            func seconds() throws -> Double {
                guard let v = Double(value), v.isFinite, v >= 0, v <= 1e6 else {
                    throw ConfigurationError("\(key) takes seconds (0: no limit)")
                }
                return v
            }
            switch key {
            case "max-connections": tenants.maximumConnections = try count(1...1_000_000)
            case "max-connections-per-listener": tenants.maximumConnectionsPerListener = try count(1...1_000_000)
            case "max-connections-per-vm": tenants.maximumConnectionsPerVM = try count(1...1_000_000)
            case "handshake-timeout": tenants.handshakeTimeoutSeconds = try seconds()
            case "idle-timeout": tenants.idleTimeoutSeconds = try seconds()
            case "reply-queue-bytes": replyQueueBytes = try bytes(64 << 10 ... 1 << 34)
            case "xen-ring-requests": xenRing.maxRequestsInFlight = try count(1...65535)
            case "xen-ring-reply-bytes": xenRing.maxReplyBytes = try bytes(64 << 10 ... 1 << 34)
            case "tenant-cpu-nice": tenantCPUNice = Int32(try count(0...20))
            case "worker-threads": workerThreads = try count(1...1024)
            case "worker-max-share":
                guard let v = Double(value), v.isFinite, v > 0, v <= 1 else {
                    throw ConfigurationError("\(key) takes a fraction above 0 and at most 1 (e.g. 0.5)")
                }
                workerMaxShare = v
            default: return false
            }
            return true
        }

        /// "4096", "512K", "8M", "1G" (powers of 1024; an optional trailing B or iB).
        static func parseBytes(_ text: String) -> Int? {
            var body = Substring(text.trimmingCharacters(in: .whitespaces).uppercased())
            if body.hasSuffix("IB") { body = body.dropLast(2) } else if body.hasSuffix("B") { body = body.dropLast() }
            let shifts: [Character: Int] = ["K": 10, "M": 20, "G": 30]
            var shift = 0
            if let last = body.last, let s = shifts[last] {
                shift = s
                body = body.dropLast()
            }
            guard !body.isEmpty, body.allSatisfy(\.isASCII), let number = Int(body), number >= 0 else { return nil }
            let (product, overflow) = number.multipliedReportingOverflow(by: 1 << shift)
            return overflow ? nil : product
        }
    }

    public struct Listener: Sendable, Equatable, CustomStringConvertible {
        public var name: String
        /// tcp:HOST:PORT or unix:PATH
        public var address: String

        public init(name: String, address: String) {
            self.name = name
            self.address = address
        }

        /// "ADDRESS" or "NAME ADDRESS" or "NAME=ADDRESS".
        public init(parsing text: String) throws {
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            let parts = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            let pair: (String, String)
            if parts.count == 2 {
                pair = (parts[0], parts[1])
            } else if parts.count == 1, let eq = trimmed.firstIndex(of: "="), !trimmed.hasPrefix("tcp:"), !trimmed.hasPrefix("unix:") {
                pair = (String(trimmed[..<eq]), String(trimmed[trimmed.index(after: eq)...]))
            } else if parts.count == 1 {
                pair = (trimmed, trimmed)
            } else {
                throw ConfigurationError("invalid listener '\(text)': use [NAME] tcp:HOST:PORT or [NAME] unix:PATH")
            }
            guard pair.1.hasPrefix("tcp:") || pair.1.hasPrefix("unix:") else {
                throw ConfigurationError("invalid listener address '\(pair.1)': use tcp:HOST:PORT or unix:PATH")
            }
            self.init(name: pair.0, address: pair.1)
        }

        public var description: String { name == address ? address : "\(name)=\(address)" }
    }

    public var storePath: String
    public var listeners: [Listener]
    public var metricsAddress: String?
    public var xenEnabled: Bool
    public var janitorIntervalSeconds: Int
    public var usageSaveIntervalSeconds: Int
    /// How long a template's shared image stays in memory after its last VM closed (seconds).
    public var templateImageRetentionSeconds = 60
    public var commitMode: Volume.CommitMode
    /// Per-tenant limits of the transports: connections, timeouts, reply queues, Xen rings.
    public var limits = Limits()
    /// Limits of each 9P connection and of each VM's metadata (DaemonConfiguration+Limits.swift).
    public var connectionLimits = ConnectionLimits()
    public var volumeLimits = VolumeLimits()

    public init(storePath: String, listeners: [Listener] = [], metricsAddress: String? = nil, xenEnabled: Bool = false,
                janitorIntervalSeconds: Int = 0, usageSaveIntervalSeconds: Int = 5, commitMode: Volume.CommitMode = .beforeReply) {
        self.storePath = storePath
        self.listeners = listeners
        self.metricsAddress = metricsAddress
        self.xenEnabled = xenEnabled
        self.janitorIntervalSeconds = janitorIntervalSeconds
        self.usageSaveIntervalSeconds = usageSaveIntervalSeconds
        self.commitMode = commitMode
    }

    public static let defaultPath = "/etc/pvfs/pvfsd.conf"

    /// Reads `key = value` lines; `#` starts a comment. Unknown keys are errors, so typos show.
    public static func parse(_ text: String, defaults: DaemonConfiguration) throws -> DaemonConfiguration {
        var config = defaults
        var sawListen = false
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)?
                .trimmingCharacters(in: .whitespaces) ?? ""
            if line.isEmpty { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw ConfigurationError("line \(number + 1): expected key = value")
            }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            switch key {
            case "store": config.storePath = value
            case "listen":
                if !sawListen { config.listeners = []; sawListen = true }
                config.listeners.append(try Listener(parsing: value))
            case "metrics": config.metricsAddress = value.isEmpty || value == "off" ? nil : value
            case "xen": config.xenEnabled = ["on", "yes", "true", "1"].contains(value.lowercased())
            case "janitor-interval":
                guard let v = Int(value), v >= 0 else { throw ConfigurationError("line \(number + 1): janitor-interval takes seconds") }
                config.janitorIntervalSeconds = v
            case "usage-save-interval":
                guard let v = Int(value), v > 0 else { throw ConfigurationError("line \(number + 1): usage-save-interval takes seconds") }
                config.usageSaveIntervalSeconds = v
            case "template-image-retention":
                guard let v = Int(value), v >= 0, v <= 86_400 else {
                    throw ConfigurationError("line \(number + 1): template-image-retention takes seconds (0 to 86400)")
                }
                config.templateImageRetentionSeconds = v
            case "catalog-commit":
                guard let mode = Volume.CommitMode(rawValue: value) else {
                    throw ConfigurationError("line \(number + 1): catalog-commit is sync or grouped")
                }
                config.commitMode = mode
            default:
                if try config.parseLimit(key, value, line: number + 1) { continue }
                do {
                    guard try config.limits.set(key, value) else {
                        throw ConfigurationError("line \(number + 1): unknown setting '\(key)'")
                    }
                } catch let error as ConfigurationError where !error.description.hasPrefix("line ") {
                    throw ConfigurationError("line \(number + 1): \(error.description)")
                }
            }
        }
        return config
    }
}

public struct ConfigurationError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
