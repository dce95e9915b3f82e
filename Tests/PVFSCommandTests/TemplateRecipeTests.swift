import Foundation
import Testing
@testable import PVFSCommands

@Suite struct TemplateRecipeTests {
    @Test func shippedDebian12RecipeParses() throws {
        let file = packageRoot + "/templates/debian12.recipe"
        let recipe = try TemplateRecipe.parse(try String(contentsOfFile: file, encoding: .utf8), name: "debian12.recipe")
        #expect(recipe.suite == "bookworm")
        #expect(recipe.variant == "minbase")
        #expect(recipe.mirror == "http://deb.debian.org/debian")
        #expect(recipe.components == ["main"])
        // What a VM root needs: an init and the console and network basics.
        for package in ["systemd-sysv", "udev", "iproute2", "openssh-server"] { #expect(recipe.packages.contains(package)) }
        #expect(!recipe.packages.contains { $0.hasPrefix("linux-image") })
        #expect(recipe.hooks == ["debian12-vm.sh"])
        #expect(FileManager.default.isReadableFile(atPath: packageRoot + "/templates/debian12-vm.sh"))
        let args = recipe.debootstrapArguments(target: "/t")
        #expect(args.first == "--variant=minbase")
        #expect(args.contains("--include=" + recipe.packages.joined(separator: ",")))
        #expect(Array(args.suffix(3)) == ["bookworm", "/t", "http://deb.debian.org/debian"])
    }

    @Test func directivesAccumulateAndCommentsAreIgnored() throws {
        let recipe = try TemplateRecipe.parse("""
            # a comment
            suite   trixie   # trailing comment
            variant default

            packages a1 b2
            include  c3 a1
            exclude  e5
            components main contrib
            components non-free-firmware
            architecture arm64
            hook one.sh
            hook sub/two.sh
            description  A   test recipe
            """, name: "t.recipe")
        #expect(recipe.suite == "trixie")
        #expect(recipe.packages == ["a1", "b2", "c3"])
        #expect(recipe.excludedPackages == ["e5"])
        #expect(recipe.components == ["main", "contrib", "non-free-firmware"])
        #expect(recipe.hooks == ["one.sh", "sub/two.sh"])
        #expect(recipe.description == "A test recipe")
        #expect(recipe.debootstrapArguments(target: "/x") == [
            "--components=main,contrib,non-free-firmware", "--arch=arm64", "--include=a1,b2,c3", "--exclude=e5", "trixie", "/x",
            "http://deb.debian.org/debian",
        ])
    }

    @Test(arguments: [
        ("suite bookworm\nfrobnicate yes", 2, "unknown directive 'frobnicate'"),
        ("suite bookworm\nsuite trixie", 2, "'suite' appears twice"),
        ("suite bookworm\npackages Bad_Name", 2, "invalid package name 'Bad_Name'"),
        ("suite bookworm\nvariant tiny", 2, "unknown variant 'tiny'"),
        ("suite bookworm\nmirror ftp://x", 2, "invalid mirror"),
        ("suite bookworm\nhook ../escape.sh", 2, "invalid hook"),
        ("suite bookworm\nhook /abs.sh", 2, "invalid hook"),
        ("suite bookworm\npackages", 2, "needs at least one value"),
        ("suite a b", 1, "takes one value"),
        ("\n# nothing\nvariant minbase", nil, "no 'suite' given"),
    ] as [(String, Int?, String)])
    func errorsNameTheLine(text: String, line: Int?, message: String) {
        do {
            _ = try TemplateRecipe.parse(text, name: "x.recipe")
            Issue.record("parsed: \(text)")
        } catch {
            #expect(error.line == line)
            #expect(error.message.contains(message), "\(error.message)")
            #expect(error.description.hasPrefix(line.map { "x.recipe:\($0): " } ?? "x.recipe: "))
        }
    }

    @Test func recipesAreFoundByName() throws {
        let (recipe, file) = try loadRecipe("debian12", searchPath: ["/nonexistent", packageRoot + "/templates"])
        #expect(recipe.suite == "bookworm")
        #expect(file == packageRoot + "/templates/debian12.recipe")
        #expect(throws: CommandFailure.self) { try loadRecipe("no-such-recipe", searchPath: [packageRoot + "/templates"]) }
    }
}
