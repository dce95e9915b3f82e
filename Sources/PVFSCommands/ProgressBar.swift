import Foundation
import Glibc

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
public final class ProgressBar: @unchecked Sendable {
    private let lock = NSLock()
    private let title: String
    private var total: Int64
    private var done: Int64 = 0
    private var lastDraw: UInt64 = 0
    private let enabled: Bool
    private let formatter: (Int64) -> String

    public init(title: String, total: Int64, enabled: Bool = isatty(STDERR_FILENO) == 1,
                format: @escaping (Int64) -> String = { String($0) }) {
        self.title = title
        self.total = total
        self.enabled = enabled
        self.formatter = format
    }

    public func setTotal(_ total: Int64) {
        lock.lock(); self.total = total; lock.unlock()
    }

    public func advance(by n: Int64 = 1) {
        lock.lock()
        done += n
        let now = DispatchTime.now().uptimeNanoseconds
        let draw = enabled && (now - lastDraw > 100_000_000 || done >= total)
        if draw { lastDraw = now }
        let (d, t) = (done, total)
        lock.unlock()
        if draw { render(done: d, total: t) }
    }

    public func finish() {
        guard enabled else { return }
        lock.lock(); let (d, t) = (done, total); lock.unlock()
        render(done: d, total: t)
        FileHandle.standardError.write(Data("\n".utf8))
    }

    private func render(done: Int64, total: Int64) {
        let width = 30
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 0
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let line = "\r\(title) [\(bar)] \(Int(fraction * 100))% \(formatter(done))/\(formatter(total))"
        FileHandle.standardError.write(Data(line.utf8))
    }
}

/// Human-readable byte counts (1.5 GiB).
public func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var value = Double(bytes)
    var unit = 0
    while abs(value) >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

/// Parses sizes like 10G, 512M, 4096, 1.5GiB (powers of 1024).
public func parseSize(_ text: String) -> Int64? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let digits = trimmed.prefix { $0.isNumber || $0 == "." }
    guard let number = Double(digits), number >= 0 else { return nil }
    let suffix = trimmed.dropFirst(digits.count).lowercased()
    let kib = 1024.0
    let multipliers: [String: Double] = [
        "": 1, "b": 1, "k": kib, "kb": kib, "kib": kib, "m": kib * kib, "mb": kib * kib, "mib": kib * kib,
        "g": kib * kib * kib, "gb": kib * kib * kib, "gib": kib * kib * kib,
        "t": kib * kib * kib * kib, "tb": kib * kib * kib * kib, "tib": kib * kib * kib * kib,
    ]
    guard let multiplier = multipliers[suffix] else { return nil }
    return Int64(number * multiplier)
}
