import PVFSCommands

DaemonCommand.main()
