import ArgumentParser
import PVFSCommands

/// pvfs-vm: the VMs of a pvfs store.
struct PVFSVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvfs-vm",
        abstract: "Provision, configure and mount VM roots kept as copy-on-write overlays over templates.",
        version: pvfsVersion,
        subcommands: [
            Provision.self, ListVMs.self, ShowVM.self, RemoveVM.self, RenameVM.self,
            SetQuota.self, SetWeight.self, SetAccess.self, Bind.self, Unbind.self,
            Mount.self, Umount.self,
            BootFilesCommand.self, QemuArgs.self, LibvirtXML.self, SocketBridge.self,
            Attach.self, Detach.self, XlConfig.self, ServeVhostUser.self,
        ])
}

PVFSVM.main()
