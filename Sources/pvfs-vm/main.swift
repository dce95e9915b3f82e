import ArgumentParser
import PVFSCommands

@main
struct PVFSVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvfs-vm",
        abstract: "Provision, configure and mount VM roots kept as copy-on-write overlays over templates.",
        subcommands: [Provision.self, ListVMs.self, ShowVM.self, RemoveVM.self, RenameVM.self, SetQuota.self, SetAccess.self,
                      Bind.self, Unbind.self, BootFilesCommand.self,
                      Attach.self, Detach.self, XlConfig.self, XenServeTest.self])
}
