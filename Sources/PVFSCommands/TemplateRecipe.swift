import Foundation

/// A template recipe: how to build a root tree with debootstrap (docs/templates.md).
///
///     # comment
///     description  Debian 12 VM root
///     suite        bookworm
///     variant      minbase
///     mirror       http://deb.debian.org/debian
///     components   main
///     packages     systemd-sysv udev
///     packages     iproute2 openssh-server
///     exclude      some-package
///     hook         debian12-vm.sh
///
/// One directive per line; `#` starts a comment at the beginning of a word. `components`,
/// `packages`, `exclude` and `hook` may repeat and accumulate; the others appear at most once.
/// `suite` is required.
public struct TemplateRecipe: Equatable, Sendable {
    public var name: String
    public var description = ""
    public var suite = ""
    public var variant = "minbase"
    public var mirror = "http://deb.debian.org/debian"
    public var components: [String] = ["main"]
    public var architecture: String?
    public var packages: [String] = []
    public var excludedPackages: [String] = []
    /// Scripts (relative to the recipe's directory) run in order on the finished tree.
    public var hooks: [String] = []

    public init(name: String) { self.name = name }

    public static let variants = ["minbase", "buildd", "fakechroot", "default"]

    /// Parses a recipe; `name` is used in messages and as the recipe's name.
    public static func parse(_ text: String, name: String) throws(RecipeError) -> TemplateRecipe {
        var recipe = TemplateRecipe(name: name)
        var seen = Set<String>()
        var explicitComponents = false
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            func fail(_ message: String) -> RecipeError { RecipeError(recipe: name, line: lineNumber, message: message) }
            var words: [Substring] = []
            for word in rawLine.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }) {
                if word.hasPrefix("#") { break }
                words.append(word)
            }
            guard let keyword = words.first.map(String.init) else { continue }
            let values = words.dropFirst().map(String.init)
            let repeatable = ["components", "packages", "exclude", "hook"]
            if !repeatable.contains(keyword) {
                if seen.contains(keyword) { throw fail("'\(keyword)' appears twice") }
                seen.insert(keyword)
            }
            func single() throws(RecipeError) -> String {
                guard values.count == 1 else { throw fail("'\(keyword)' takes one value, got \(values.count)") }
                return values[0]
            }
            func some() throws(RecipeError) -> [String] {
                guard !values.isEmpty else { throw fail("'\(keyword)' needs at least one value") }
                return values
            }
            switch keyword {
            case "description":
                guard !values.isEmpty else { throw fail("'description' needs a text") }
                recipe.description = values.joined(separator: " ")
            case "suite":
                let suite = try single()
                guard Self.isToken(suite, extra: ".-") else { throw fail("invalid suite '\(suite)'") }
                recipe.suite = suite
            case "variant":
                let variant = try single()
                guard variants.contains(variant) else { throw fail("unknown variant '\(variant)' (one of \(variants.joined(separator: ", ")))") }
                recipe.variant = variant
            case "mirror":
                let mirror = try single()
                guard ["http://", "https://", "file:/"].contains(where: mirror.hasPrefix),
                      !mirror.contains(where: { $0.isWhitespace || $0 == "'" || $0 == "\"" }) else {
                    throw fail("invalid mirror '\(mirror)' (an http, https or file URL)")
                }
                recipe.mirror = mirror
            case "components":
                if !explicitComponents { recipe.components = [] }
                explicitComponents = true
                for component in try some() {
                    guard Self.isToken(component, extra: "-") else { throw fail("invalid component '\(component)'") }
                    if !recipe.components.contains(component) { recipe.components.append(component) }
                }
            case "architecture", "arch":
                let arch = try single()
                guard Self.isToken(arch, extra: "-") else { throw fail("invalid architecture '\(arch)'") }
                recipe.architecture = arch
            case "packages", "include":
                for package in try some() {
                    guard Self.isPackageName(package) else { throw fail("invalid package name '\(package)'") }
                    if !recipe.packages.contains(package) { recipe.packages.append(package) }
                }
            case "exclude":
                for package in try some() {
                    guard Self.isPackageName(package) else { throw fail("invalid package name '\(package)'") }
                    if !recipe.excludedPackages.contains(package) { recipe.excludedPackages.append(package) }
                }
            case "hook":
                let hook = try single()
                let parts = hook.split(separator: "/", omittingEmptySubsequences: false)
                guard !hook.hasPrefix("/"), !parts.contains(".."), !parts.contains(""), !parts.contains("."),
                      hook.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-/+".contains($0)) }) else {
                    throw fail("invalid hook '\(hook)' (a script path relative to the recipe's directory)")
                }
                recipe.hooks.append(hook)
            default:
                throw fail("unknown directive '\(keyword)'")
            }
        }
        if recipe.suite.isEmpty { throw RecipeError(recipe: name, line: nil, message: "no 'suite' given") }
        return recipe
    }

    /// Lower-case letters and digits plus `extra`, starting with a letter or digit.
    private static func isToken(_ s: String, extra: String) -> Bool {
        guard let first = s.first, first.isASCII, first.isLowercase || first.isNumber else { return false }
        return s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || extra.contains($0)) }
    }

    /// Debian policy 5.6.1: lower case letters, digits, '+', '-', '.'; at least two characters,
    /// starting with an alphanumeric.
    static func isPackageName(_ s: String) -> Bool {
        s.count >= 2 && isToken(s, extra: "+-.")
    }

    /// The debootstrap command line that builds this recipe into `target`.
    public func debootstrapArguments(target: String) -> [String] {
        var arguments: [String] = []
        if variant != "default" { arguments.append("--variant=\(variant)") }
        if !components.isEmpty { arguments.append("--components=\(components.joined(separator: ","))") }
        if let architecture { arguments.append("--arch=\(architecture)") }
        if !packages.isEmpty { arguments.append("--include=\(packages.joined(separator: ","))") }
        if !excludedPackages.isEmpty { arguments.append("--exclude=\(excludedPackages.joined(separator: ","))") }
        arguments += [suite, target, mirror]
        return arguments
    }
}

/// A recipe that cannot be parsed: file, line and what is wrong.
public struct RecipeError: Error, CustomStringConvertible, Equatable {
    public var recipe: String
    public var line: Int?
    public var message: String

    public var description: String {
        if let line { return "\(recipe):\(line): \(message)" }
        return "\(recipe): \(message)"
    }
}
