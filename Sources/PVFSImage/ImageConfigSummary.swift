import Foundation

/// What `pvfs-template show` tells about an image's configuration: the runtime settings an OCI
/// runtime would apply (pvfs boots a VM's own init; these are kept for reference and scripts).
public struct ImageConfigSummary: Codable, Sendable, Equatable {
    public var architecture: String?
    public var os: String?
    public var variant: String?
    public var created: String?
    public var author: String?
    public var user: String?
    public var workingDir: String?
    public var entrypoint: [String]?
    public var cmd: [String]?
    public var env: [String]?
    public var exposedPorts: [String]?
    public var volumes: [String]?
    public var labels: [String: String]?
    public var stopSignal: String?
    public var historyEntries: Int

    /// nil when the bytes are not a JSON object.
    public init?(config bytes: [UInt8]) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else { return nil }
        func string(_ dictionary: [String: Any]?, _ key: String) -> String? {
            (dictionary?[key] as? String).flatMap { $0.isEmpty ? nil : $0 }
        }
        func strings(_ dictionary: [String: Any]?, _ key: String) -> [String]? {
            (dictionary?[key] as? [Any])?.compactMap { $0 as? String }
        }
        func keys(_ dictionary: [String: Any]?, _ key: String) -> [String]? {
            (dictionary?[key] as? [String: Any]).map { $0.keys.sorted() }
        }
        architecture = string(object, "architecture")
        os = string(object, "os")
        variant = string(object, "variant")
        created = string(object, "created")
        author = string(object, "author")
        let config = object["config"] as? [String: Any]
        user = string(config, "User")
        workingDir = string(config, "WorkingDir")
        entrypoint = strings(config, "Entrypoint")
        cmd = strings(config, "Cmd")
        env = strings(config, "Env")
        exposedPorts = keys(config, "ExposedPorts")
        volumes = keys(config, "Volumes")
        labels = (config?["Labels"] as? [String: Any])?.compactMapValues { $0 as? String }
        stopSignal = string(config, "StopSignal")
        historyEntries = (object["history"] as? [Any])?.count ?? 0
    }
}

/// Any JSON value, to carry a document verbatim inside another (`show --json`).
public indirect enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case integer(Int64)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(bytes: [UInt8]) throws {
        self = try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}
