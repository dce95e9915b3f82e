import PVFSTransport
import PVFSFuse
