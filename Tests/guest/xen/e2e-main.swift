// Entry point of the binary the nested-Xen end-to-end test runs in dom0: the Xen commands
// of pvfs-vm, including the hidden `xen-serve-test` diagnostic backend. The test builds it
// from a copy of the package with this file as Sources/pvfs-vm/main.swift.
import ArgumentParser
import PVFSCommands

@main
struct PVFSXenE2E: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvfs-vm",
        abstract: "pvfs Xen commands (end-to-end test build).",
        subcommands: [Attach.self, Detach.self, XlConfig.self, XenServeTest.self])
}
