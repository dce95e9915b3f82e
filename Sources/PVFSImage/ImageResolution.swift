import Foundation
import Glibc
import PVFSStore

// Choosing the image in a layout or archive (by reference name and platform), reading its
// manifest and configuration with their digests checked, and listing its layers.

/// One layer of the chosen image, in application order.
struct LayerReference {
    /// 1-based, for messages.
    var number: Int
    /// Where the layer's blob lies in the image.
    var name: String
    /// The compression the media type announces (nil: the data decides).
    var announcedCompression: Compression?
    /// The digest of the blob as stored (OCI); docker archives have none.
    var blobDigest: String?
    var blobSize: Int64?
    /// The digest of the uncompressed tar (the configuration's `rootfs.diff_ids`).
    var diffID: String
}

/// The image an import reads.
struct ResolvedImage {
    var format: ImageFormat
    var manifestDigest: String?
    var configDigest: String
    var config: [UInt8]
    var platform: String
    var layers: [LayerReference]
}

/// What to pick from a layout or archive holding several images.
public struct ImageSelection: Sendable {
    /// `os/architecture[/variant]`; nil: the host's (linux/amd64 on x86-64).
    public var platform: String?
    /// The image's reference name (the `org.opencontainers.image.ref.name` annotation of an
    /// OCI index, a `RepoTags` entry of a docker archive).
    public var reference: String?

    public init(platform: String? = nil, reference: String? = nil) {
        self.platform = platform
        self.reference = reference
    }
}

/// The host's platform in OCI terms.
func hostPlatform() -> Platform {
    var names = utsname()
    uname(&names)
    let machine = withUnsafeBytes(of: &names.machine) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    let architecture: String
    switch machine {
    case "x86_64": architecture = "amd64"
    case "aarch64": architecture = "arm64"
    case "i386", "i486", "i586", "i686": architecture = "386"
    case "armv7l": architecture = "arm"
    case "ppc64le": architecture = "ppc64le"
    case "s390x": architecture = "s390x"
    case "riscv64": architecture = "riscv64"
    default: architecture = machine
    }
    return Platform(architecture: architecture, os: "linux", variant: architecture == "arm" ? "v7" : nil)
}

func parsePlatform(_ text: String) throws -> Platform {
    let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    guard parts.count == 2 || parts.count == 3, parts.allSatisfy({ !$0.isEmpty }) else {
        throw ImageError("invalid platform \(text): expected os/architecture[/variant], e.g. linux/amd64", errno: .invalidArgument)
    }
    return Platform(architecture: parts[1], os: parts[0], variant: parts.count == 3 ? parts[2] : nil)
}

extension ImageSource {
    func resolve(_ selection: ImageSelection) throws -> ResolvedImage {
        let explicit = selection.platform != nil
        let platform = try selection.platform.map(parsePlatform) ?? hostPlatform()
        var image = format == .dockerArchive
            ? try resolveDockerArchive(reference: selection.reference)
            : try resolveLayout(platform: platform, reference: selection.reference)
        let config = try decodeJSON(ImageConfiguration.self, image.config, what: "the image configuration")
        if let os = config.os, let architecture = config.architecture {
            let imagePlatform = Platform(architecture: architecture, os: os, variant: config.variant)
            image.platform = imagePlatform.description
            let fits = os == platform.os && architecture == platform.architecture
                && (platform.variant == nil || config.variant == nil || config.variant == platform.variant)
            if !fits {
                throw ImageError(explicit
                    ? "the image in \(path) is for \(imagePlatform.description), not \(platform.description)"
                    : "the image in \(path) is for \(imagePlatform.description), not this host's \(platform.description); pass --platform \(imagePlatform.description) to import it anyway",
                    errno: .invalidArgument)
            }
        } else {
            image.platform = platform.description
        }
        guard config.rootfs.type == "layers" else {
            throw ImageError("the image configuration's rootfs type is \(config.rootfs.type), not layers", errno: .invalidArgument)
        }
        guard config.rootfs.diff_ids.count == image.layers.count else {
            throw ImageError("the manifest lists \(image.layers.count) layers, the configuration \(config.rootfs.diff_ids.count) diff_ids",
                             errno: .invalidArgument)
        }
        for index in image.layers.indices {
            let diffID = config.rootfs.diff_ids[index]
            _ = try Digest(diffID, what: "diff_id of layer \(index + 1)")
            image.layers[index].diffID = diffID
        }
        return image
    }

    // MARK: OCI layouts and archives

    private func resolveLayout(platform: Platform, reference: String?) throws -> ResolvedImage {
        let index = try decodeJSON(ImageIndex.self, try readDocument(named: "index.json"), what: "index.json")
        var descriptor = try select(index.manifests, platform: platform, reference: reference, in: "index.json")
        var depth = 0
        while true {
            let bytes = try document(descriptor, what: "manifest \(descriptor.digest)")
            let isIndex = MediaType.isIndex(descriptor.mediaType) || (descriptor.mediaType == nil && Self.hasKey("manifests", bytes))
            if isIndex {
                depth += 1
                guard depth <= 4 else { throw ImageError("\(path): image indexes nested deeper than 4 levels", errno: .invalidArgument) }
                let nested = try decodeJSON(ImageIndex.self, bytes, what: "image index \(descriptor.digest)")
                descriptor = try select(nested.manifests, platform: platform, reference: nil, in: "image index \(descriptor.digest)")
                continue
            }
            guard descriptor.mediaType == nil || MediaType.isManifest(descriptor.mediaType) else {
                throw ImageError("\(path): \(descriptor.digest) has media type \(descriptor.mediaType ?? ""), not an image manifest",
                                 errno: .invalidArgument)
            }
            let manifest = try decodeJSON(ImageManifest.self, bytes, what: "manifest \(descriptor.digest)")
            if let type = manifest.config.mediaType, type != MediaType.ociConfig && type != MediaType.dockerConfig {
                throw ImageError("\(path): the manifest's config has media type \(type): not a container image", errno: .invalidArgument)
            }
            let config = try document(manifest.config, what: "the image configuration")
            var layers: [LayerReference] = []
            guard manifest.layers.count <= 1000 else { throw ImageError("\(path): more than 1000 layers", errno: .invalidArgument) }
            for (index, layer) in manifest.layers.enumerated() {
                guard let compression = MediaType.layerCompression(layer.mediaType) else {
                    throw ImageError("layer \(index + 1) (\(layer.digest)) has media type \(layer.mediaType ?? "(none)"): not a filesystem layer",
                                     errno: .invalidArgument)
                }
                let digest = try Digest(layer.digest, what: "layer \(index + 1)")
                guard layer.size >= 0 else { throw ImageError("layer \(index + 1) has a negative size", errno: .invalidArgument) }
                layers.append(LayerReference(number: index + 1, name: Self.blobName(digest), announcedCompression: compression,
                                             blobDigest: layer.digest, blobSize: layer.size, diffID: ""))
            }
            return ResolvedImage(format: format, manifestDigest: descriptor.digest, configDigest: manifest.config.digest, config: config,
                                 platform: "", layers: layers)
        }
    }

    private static func hasKey(_ key: String, _ bytes: [UInt8]) -> Bool {
        (try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])?[key] != nil
    }

    private static let referenceAnnotations = ["org.opencontainers.image.ref.name", "io.containerd.image.name"]

    private func select(_ manifests: [Descriptor], platform: Platform, reference: String?, in what: String) throws -> Descriptor {
        func name(_ d: Descriptor) -> String? { Self.referenceAnnotations.lazy.compactMap { d.annotations?[$0] }.first }
        // Attestations and signatures sit in indexes as manifests of platform unknown/unknown.
        var candidates = manifests.filter {
            ($0.mediaType == nil || MediaType.isIndex($0.mediaType) || MediaType.isManifest($0.mediaType)) && $0.platform?.os != "unknown"
        }
        if let reference {
            let named = candidates.filter { name($0) == reference }
            guard !named.isEmpty else {
                let names = Set(candidates.compactMap(name)).sorted()
                throw ImageError("\(path) has no image named \(reference)" + (names.isEmpty ? "" : " (names: \(names.joined(separator: ", ")))"),
                                 errno: .noSuchFileOrDirectory)
            }
            candidates = named
        }
        guard !candidates.isEmpty else { throw ImageError("\(what) in \(path) lists no image", errno: .invalidArgument) }
        let matching = candidates.filter {
            guard let p = $0.platform else { return false }
            return p.os == platform.os && p.architecture == platform.architecture && (platform.variant == nil || p.variant == nil || p.variant == platform.variant)
        }
        if matching.count == 1 { return matching[0] }
        let unspecified = candidates.filter { $0.platform == nil }
        if matching.isEmpty && unspecified.count == 1 { return unspecified[0] }
        if matching.isEmpty && unspecified.isEmpty {
            let platforms = Set(candidates.compactMap { $0.platform?.description }).sorted()
            throw ImageError("\(path) has no image for \(platform.description) (platforms: \(platforms.joined(separator: ", ")))",
                             errno: .noSuchFileOrDirectory)
        }
        let listed = (matching.isEmpty ? unspecified : matching).map { d in
            [name(d), d.platform?.description, String(d.digest.prefix(19))].compactMap { $0 }.joined(separator: " ")
        }
        throw ImageError("\(path) holds \(listed.count) images; choose one with --image-ref or --platform: \(listed.joined(separator: "; "))",
                         errno: .invalidArgument)
    }

    // MARK: Docker archives

    /// Whether two image references name the same image, Docker's defaults applied
    /// (`debian:12` is `docker.io/library/debian:12`).
    static func sameDockerReference(_ a: String, _ b: String) -> Bool {
        func expanded(_ reference: String) -> String {
            let first = reference.split(separator: "/", maxSplits: 1).first.map(String.init) ?? reference
            let hasRegistry = reference.contains("/") && (first.contains(".") || first.contains(":") || first == "localhost")
            if hasRegistry { return reference }
            return "docker.io/" + (reference.contains("/") ? reference : "library/" + reference)
        }
        return a == b || expanded(a) == expanded(b)
    }

    private func resolveDockerArchive(reference: String?) throws -> ResolvedImage {
        let entries = try decodeJSON([DockerArchiveEntry].self, try readDocument(named: "manifest.json"), what: "manifest.json")
        let entry: DockerArchiveEntry
        if let reference {
            guard let found = entries.first(where: { ($0.RepoTags ?? []).contains { Self.sameDockerReference($0, reference) } }) else {
                let tags = entries.flatMap { $0.RepoTags ?? [] }
                throw ImageError("\(path) has no image tagged \(reference)" + (tags.isEmpty ? "" : " (tags: \(tags.joined(separator: ", ")))"),
                                 errno: .noSuchFileOrDirectory)
            }
            entry = found
        } else {
            guard entries.count == 1 else {
                guard !entries.isEmpty else { throw ImageError("manifest.json in \(path) lists no image", errno: .invalidArgument) }
                let tags = entries.map { ($0.RepoTags ?? []).first ?? $0.Config }
                throw ImageError("\(path) holds \(entries.count) images; choose one with --image-ref: \(tags.joined(separator: ", "))",
                                 errno: .invalidArgument)
            }
            entry = entries[0]
        }
        let configName = ImageSource.normalizedMemberName(Array(entry.Config.utf8))
        let region = try region(named: configName)
        let config = try region.readAll(limit: ImageSource.maximumDocument)
        let digest = region.digest()
        // The config's name is its digest: <hex>.json (legacy) or blobs/sha256/<hex>.
        let base = configName.split(separator: "/").last.map(String.init) ?? configName
        let named = base.hasSuffix(".json") ? String(base.dropLast(5)) : base
        if named.utf8.count == 64, named.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) }),
           "sha256:" + named != digest {
            throw digestMismatch(what: "the image configuration \(configName)", expected: "sha256:" + named, found: digest)
        }
        guard entry.Layers.count <= 1000 else { throw ImageError("\(path): more than 1000 layers", errno: .invalidArgument) }
        let layers = entry.Layers.enumerated().map { index, name in
            LayerReference(number: index + 1, name: ImageSource.normalizedMemberName(Array(name.utf8)), announcedCompression: nil,
                           blobDigest: nil, blobSize: nil, diffID: "")
        }
        return ResolvedImage(format: .dockerArchive, manifestDigest: nil, configDigest: digest, config: config, platform: "", layers: layers)
    }
}
