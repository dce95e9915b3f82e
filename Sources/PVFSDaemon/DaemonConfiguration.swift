import Foundation
import PVFSEngine

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
///     catalog-commit = sync                  # or grouped (faster metadata; see Volume.CommitMode)
///     max-sessions-per-connection = 256      # and the other limits of DaemonConfiguration+Limits.swift
public struct DaemonConfiguration: Sendable, Equatable {
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
    public var commitMode: Volume.CommitMode
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
            case "catalog-commit":
                guard let mode = Volume.CommitMode(rawValue: value) else {
                    throw ConfigurationError("line \(number + 1): catalog-commit is sync or grouped")
                }
                config.commitMode = mode
            default:
                if try config.parseLimit(key, value, line: number + 1) { continue }
                throw ConfigurationError("line \(number + 1): unknown setting '\(key)'")
            }
        }
        return config
    }
}

public struct ConfigurationError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
