import PVFSStore

/// The small template trees the tests of the engine, the protocols and the transports run on.
/// Inode numbers are fixed, so tests may name them; every inode has the times
/// `TemplateTree`'s default (1,700,000,000 s) and link counts follow from the entries.
public enum TemplateFixture {
    /// The engine's tree:
    ///
    ///     /                          ino 1
    ///     /etc                       ino 2
    ///     /etc/hostname              ino 3   "template-host\n", xattr user.origin=template
    ///     /etc/hard-a, /etc/hard-b   ino 4   (two links) "shared\n"
    ///     /bin                       ino 5
    ///     /bin/sh -> busybox         ino 6
    ///     /empty                     ino 7   empty regular file, 0600 uid 1000
    ///     /etc/deep, /etc/deep/a     inos 8, 9 (directories)
    ///     /etc/deep/a/file           ino 10  "deep\n"
    public static var tiny: TemplateTree {
        var t = TemplateTree()
        t.directory(1)
        t.directory(2)
        t.file(3, content: "template-host\n")
        t.file(4, content: "shared\n")
        t.directory(5)
        t.symlink(6, target: "busybox")
        t.file(7, content: [], mode: 0o600, uid: 1000)
        t.directory(8)
        t.directory(9)
        t.file(10, content: "deep\n")
        t.entry(1, "etc", 2)
        t.entry(2, "hostname", 3)
        t.entry(2, "hard-a", 4)
        t.entry(2, "hard-b", 4)
        t.entry(1, "bin", 5)
        t.entry(5, "sh", 6)
        t.entry(1, "empty", 7)
        t.entry(2, "deep", 8)
        t.entry(8, "a", 9)
        t.entry(9, "file", 10)
        t.xattr(3, "user.origin", Array("template".utf8))
        return t
    }

    public static let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n"
    public static let group = "root:x:0:\nalice:x:1000:\nbob:x:1001:\nproject:x:2000:alice,bob\n"

    /// The size of `/big` in `accounts` and `fuseServer`.
    public static let bigSize = 300_000

    /// The content of `/big` in `accounts` and `fuseServer`: a position-dependent pattern.
    public static func bigContent() -> [UInt8] {
        (0..<bigSize).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
    }

    /// A tree with users and groups, for permission checks through a protocol (9P):
    ///
    ///     /                      ino 1
    ///     /etc                   ino 2
    ///     /etc/hostname          ino 3   "template-host\n", xattr user.origin=template
    ///     /etc/passwd            ino 4   root, alice (1000), bob (1001)
    ///     /etc/group             ino 5   project (2000) has alice and bob
    ///     /bin                   ino 6
    ///     /bin/sh -> busybox     ino 7
    ///     /home                  ino 8
    ///     /home/alice            ino 9   0700 alice:alice
    ///     /project               ino 10  02770 root:project
    ///     /project/notes         ino 11  0660 alice:project "notes\n"
    ///     /big                   ino 12  `bigSize` bytes of `bigContent()`
    public static var accounts: TemplateTree {
        var t = TemplateTree()
        t.directory(1)
        t.directory(2)
        t.file(3, content: "template-host\n")
        t.file(4, content: passwd)
        t.file(5, content: group)
        t.directory(6)
        t.symlink(7, target: "busybox")
        t.directory(8)
        t.directory(9, mode: 0o700, uid: 1000, gid: 1000)
        t.directory(10, mode: 0o2770, gid: 2000)
        t.file(11, content: "notes\n", mode: 0o660, uid: 1000, gid: 2000)
        t.file(12, content: bigContent())
        t.entry(1, "etc", 2)
        t.entry(2, "hostname", 3)
        t.entry(2, "passwd", 4)
        t.entry(2, "group", 5)
        t.entry(1, "bin", 6)
        t.entry(6, "sh", 7)
        t.entry(1, "home", 8)
        t.entry(8, "alice", 9)
        t.entry(1, "project", 10)
        t.entry(10, "notes", 11)
        t.entry(1, "big", 12)
        t.xattr(3, "user.origin", Array("template".utf8))
        return t
    }

    /// The FUSE server's tree:
    ///
    ///     /                      ino 1
    ///     /etc                   ino 2
    ///     /etc/hostname          ino 3   "template-host\n", xattr user.origin=template
    ///     /bin                   ino 4
    ///     /bin/sh -> busybox     ino 5
    ///     /home                  ino 6
    ///     /home/alice            ino 7   0700 1000:1000
    ///     /big                   ino 8   `bigSize` bytes of `bigContent()`
    public static var fuseServer: TemplateTree {
        var t = TemplateTree()
        t.directory(1)
        t.directory(2)
        t.file(3, content: "template-host\n")
        t.directory(4)
        t.symlink(5, target: "busybox")
        t.directory(6)
        t.directory(7, mode: 0o700, uid: 1000, gid: 1000)
        t.file(8, content: bigContent())
        t.entry(1, "etc", 2)
        t.entry(2, "hostname", 3)
        t.entry(1, "bin", 4)
        t.entry(4, "sh", 5)
        t.entry(1, "home", 6)
        t.entry(6, "alice", 7)
        t.entry(1, "big", 8)
        t.xattr(3, "user.origin", Array("template".utf8))
        return t
    }

    /// The size of `/big` in `transport`.
    public static let transportBigSize = 2 << 20

    /// The content of `/big` in `transport`: a position-dependent pattern.
    public static func transportBigContent() -> [UInt8] {
        (0..<transportBigSize).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 9) }
    }

    /// The transports' tree: enough to move a few bytes and many.
    ///
    ///     /etc/hostname   ino 3  "template-host\n"
    ///     /big            ino 4  `transportBigSize` bytes of `transportBigContent()`
    public static var transport: TemplateTree {
        var t = TemplateTree()
        t.directory(1)
        t.directory(2)
        t.file(3, content: "template-host\n")
        t.file(4, content: transportBigContent())
        t.entry(1, "etc", 2)
        t.entry(2, "hostname", 3)
        t.entry(1, "big", 4)
        return t
    }
}
