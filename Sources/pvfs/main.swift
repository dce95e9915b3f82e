import ArgumentParser
import PVFSCommands

@main
struct PVFS: ParsableCommand {
    static let configuration = PVFSTool.configuration
}
