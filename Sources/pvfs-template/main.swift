import ArgumentParser
import PVFSCommands

@main
struct PVFSTemplate: ParsableCommand {
    static let configuration = TemplateTool.configuration
}
