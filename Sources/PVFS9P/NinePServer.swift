import PVFSEngine
