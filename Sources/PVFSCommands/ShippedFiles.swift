import Foundation

/// Where the commands find the files pvfs ships beside its executables (recipes, provisioning
/// hooks). A binary built in a source checkout uses that checkout's `templates/` and `hooks/`
/// first; then come the admin's own directories under /etc/pvfs and the installation's. The
/// current directory is never searched: root running a command in some folder must not pick up
/// whatever scripts lie there.
public enum ShippedFiles {
    /// The running executable, symlinks resolved.
    static var executablePath: String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    }

    /// The source checkout an executable was built in, or nil for an installed one. SwiftPM puts
    /// products in `<checkout>/<scratch>/<triple>/<configuration>/` with a scratch directory named
    /// `.build` (or `.build-*`, `.build_*`); the checkout must hold pvfs's Package.swift and sources.
    public static func sourceCheckout(ofExecutable executable: String) -> String? {
        let components = URL(fileURLWithPath: executable).standardizedFileURL.pathComponents
        guard let scratch = components.dropLast().lastIndex(where: { $0.hasPrefix(".build") }), scratch > 1 else {
            return nil
        }
        let checkout = NSString.path(withComponents: Array(components[..<scratch]))
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: checkout + "/Package.swift"),
              FileManager.default.fileExists(atPath: checkout + "/Sources/PVFSCommands", isDirectory: &isDirectory),
              isDirectory.boolValue
        else { return nil }
        return checkout
    }

    /// The checkout the running executable was built in, if it was.
    public static var sourceCheckout: String? {
        executablePath.flatMap(sourceCheckout(ofExecutable:))
    }

    /// The installation prefix of an installed executable: `/usr` for `/usr/sbin/pvfs-vm`,
    /// `/usr/local` for `/usr/local/sbin/pvfs-vm`.
    static var installationPrefix: String? {
        guard sourceCheckout == nil, let executablePath else { return nil }
        return URL(fileURLWithPath: executablePath).deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// Where `NAME.recipe` is looked for, in order: --recipe-dir, $PVFS_RECIPE_PATH, the source
    /// checkout's templates/ (for a binary built there), /etc/pvfs/templates, the installation's
    /// `<prefix>/share/pvfs/templates`, /usr/share/pvfs/templates.
    public static func recipeSearchPath(explicitDirectory: String?,
                                        environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        var directories: [String] = []
        if let explicitDirectory { directories.append(explicitDirectory) }
        if let env = environment["PVFS_RECIPE_PATH"] {
            directories += env.split(separator: ":").map(String.init).filter { !$0.isEmpty }
        }
        directories += shippedLocations(checkout: "templates", etc: "/etc/pvfs/templates", prefix: "share/pvfs/templates",
                                        usr: "/usr/share/pvfs/templates")
        return withoutRepeats(directories)
    }

    /// Where provisioning hooks are looked for when neither --hooks-dir nor $PVFS_HOOKS_DIR is
    /// given; the first that exists is used whole: the source checkout's hooks/ (for a binary
    /// built there), /etc/pvfs/hooks.d, the installation's `<prefix>/lib/pvfs/hooks`,
    /// /usr/lib/pvfs/hooks.
    static var hookDirectoryCandidates: [String] {
        withoutRepeats(shippedLocations(checkout: "hooks", etc: "/etc/pvfs/hooks.d", prefix: "lib/pvfs/hooks", usr: "/usr/lib/pvfs/hooks"))
    }

    /// One kind of shipped file's places, in the order they win: the source checkout (for a
    /// binary built there), /etc, the installation's prefix, /usr.
    static func shippedLocations(checkout: String, etc: String, prefix: String, usr: String) -> [String] {
        var locations: [String] = []
        if let sourceCheckout { locations.append(sourceCheckout + "/" + checkout) }
        locations.append(etc)
        if let installationPrefix { locations.append(installationPrefix + "/" + prefix) }
        locations.append(usr)
        return locations
    }

    static func withoutRepeats(_ directories: [String]) -> [String] {
        directories.reduce(into: []) { unique, directory in
            if !unique.contains(directory) { unique.append(directory) }
        }
    }
}
