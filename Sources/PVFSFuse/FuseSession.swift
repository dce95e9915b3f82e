import CFuse
import PVFSEngine
