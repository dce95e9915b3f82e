import PVFSCommands
print("todo")
