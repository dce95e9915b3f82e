import Foundation
import PVFSEngine

/// A 9P connection's session as one pvfsd process hands it to the next (a graceful upgrade):
/// the msize agreed, each attach and the locks its session holds, each fid. Versioned: a
/// process reads its own format and the one before it.
struct NinePHandOverState: Codable {
    static let currentFormat = 1

    struct Session: Codable {
        var aname: [UInt8]
        var uname: [UInt8]
        var uid: UInt32?
        var locks: [HeldLock]
    }

    enum FidState: Codable {
        case idle
        case open(flags: Int32)
        case xattrRead([UInt8])
        /// A Txattrcreate being written: the bytes written so far.
        case xattrWrite(name: [UInt8], flags: UInt32, size: Int, value: [UInt8])
    }

    struct Fid: Codable {
        var number: UInt32
        /// Index into `sessions`.
        var session: Int
        var uid: UInt32
        var inode: InodeNumber
        var kind: UInt8
        var parent: InodeNumber?
        var name: [UInt8]?
        var state: FidState
        var lockOwners: [UInt64]
    }

    var format = currentFormat
    var messageSize: Int?
    var sessions: [Session]
    var fids: [Fid]

    init(messageSize: Int?, sessions: [Session], fids: [Fid]) {
        self.messageSize = messageSize
        self.sessions = sessions
        self.fids = fids
    }

    func encoded() throws -> [UInt8] {
        [UInt8](try JSONEncoder().encode(self))
    }

    static func decode(_ bytes: [UInt8]) throws -> NinePHandOverState {
        let state = try JSONDecoder().decode(NinePHandOverState.self, from: Data(bytes))
        guard state.format <= currentFormat, state.format >= currentFormat - 1 else {
            throw NinePHandOverError("session state format \(state.format) is not one this build reads (\(currentFormat - 1)–\(currentFormat))")
        }
        return state
    }
}

/// A session that cannot be handed over or taken over.
public struct NinePHandOverError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
