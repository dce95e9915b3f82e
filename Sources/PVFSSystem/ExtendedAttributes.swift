import CPVFSSystem
import Glibc
import SystemPackage

/// Extended attributes of host files, read and written through a descriptor or a path that is
/// never followed if it is a symlink (the l* calls).
public enum ExtendedAttributes {
    public enum Target {
        case descriptor(FileDescriptor)
        /// A path whose last component is not followed.
        case path(String)
    }

    public static func list(_ target: Target) throws(Errno) -> [String] {
        var capacity = 1024
        while true {
            var buffer = [CChar](repeating: 0, count: capacity)
            let n: Int
            do throws(Errno) {
                n = try retryingSyscall {
                    switch target {
                    case .descriptor(let fd): flistxattr(fd.rawValue, &buffer, capacity)
                    case .path(let p): llistxattr(p, &buffer, capacity)
                    }
                }
            } catch where error == .outOfRange {
                capacity *= 4
                continue
            } catch where error == .notSupported {
                return []
            }
            var names: [String] = []
            var start = 0
            for i in 0..<n where buffer[i] == 0 {
                names.append(String(decoding: buffer[start..<i].map { UInt8(bitPattern: $0) }, as: UTF8.self))
                start = i + 1
            }
            return names
        }
    }

    public static func get(_ target: Target, name: String) throws(Errno) -> [UInt8] {
        var capacity = 256
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            do throws(Errno) {
                let n = try retryingSyscall {
                    switch target {
                    case .descriptor(let fd): fgetxattr(fd.rawValue, name, &buffer, capacity)
                    case .path(let p): lgetxattr(p, name, &buffer, capacity)
                    }
                }
                return Array(buffer[0..<n])
            } catch where error == .outOfRange {
                capacity = capacity >= 65536 ? capacity * 2 : 65536
                if capacity > 1 << 24 { throw error }
            }
        }
    }

    public static func set(_ target: Target, name: String, value: [UInt8], flags: Int32 = 0) throws(Errno) {
        try retryingSyscall {
            value.withUnsafeBytes { raw in
                switch target {
                case .descriptor(let fd): fsetxattr(fd.rawValue, name, raw.baseAddress, raw.count, flags)
                case .path(let p): lsetxattr(p, name, raw.baseAddress, raw.count, flags)
                }
            }
        }
    }

    public static func remove(_ target: Target, name: String) throws(Errno) {
        try retryingSyscall {
            switch target {
            case .descriptor(let fd): fremovexattr(fd.rawValue, name)
            case .path(let p): lremovexattr(p, name)
            }
        }
    }

    /// All attributes with their values, sorted by name.
    public static func all(_ target: Target) throws(Errno) -> [(name: String, value: [UInt8])] {
        var result: [(name: String, value: [UInt8])] = []
        for name in try list(target).sorted() {
            do throws(Errno) {
                result.append((name, try get(target, name: name)))
            } catch where error == .noData {
                continue  // removed between list and get
            }
        }
        return result
    }
}
