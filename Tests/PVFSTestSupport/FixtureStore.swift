import Foundation
import Glibc
import PVFSStore
import PVFSSystem
import SystemPackage

/// A fresh directory under /tmp, removed (with everything in it) when the value goes away.
/// Removal goes through FileManager, not a child `rm`: waiting for children from many parallel
/// tests can hang Foundation.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(_ prefix: String = "pvfs-test") throws {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        path = String(cString: made)
    }

    /// An existing directory (a test's mounted filesystem, say), whose contents go away with the
    /// value as a fresh one's would.
    public init(adopting path: String) {
        self.path = path
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// The path of `name` inside the directory.
    public func sub(_ name: String) -> String { path + "/" + name }
}

/// A store in a fresh scratch directory holding one template, `FixtureStore.templateName`,
/// written through the store's API (`Store.createTemplate(name:tree:)`), never through SQL: the
/// tests of the layers above the store see a template exactly as the store writes one.
/// The template's id is 1 (the first template of a new store).
public final class FixtureStore: @unchecked Sendable {
    public static let templateName = "tiny"

    public let scratch: TemporaryDirectory
    public let store: Store
    /// The scratch directory; the store is `directory + "/store"`.
    public var directory: String { scratch.path }

    /// `directory`: where the store goes instead of a fresh scratch directory (its contents
    /// are removed with the fixture).
    public init(prefix: String, template: TemplateTree, directory: String? = nil) throws {
        scratch = try directory.map { TemporaryDirectory(adopting: $0) } ?? TemporaryDirectory(prefix)
        store = try Store(path: scratch.sub("store"))
        try store.createTemplate(name: Self.templateName, tree: template)
    }
}
