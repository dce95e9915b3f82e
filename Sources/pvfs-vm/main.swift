import ArgumentParser
import PVFSCommands

/// pvfs-vm: VMs of a pvfs store.
struct PVFSVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvfs-vm",
        abstract: "Manage the VMs of a pvfs store.",
        subcommands: [
            Mount.self,
            Umount.self,
        ])
}

PVFSVM.main()
