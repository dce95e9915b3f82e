import Foundation
import Testing
@testable import PVFSCommands

/// Lists a newc archive with the system's cpio (`cpio -itv`), or nil if cpio is missing.
private func cpioListing(_ archive: Data) throws -> [String]? {
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/cpio") else { return nil }
    let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("cpio-test-\(getpid())-\(UUID().uuidString).cpio")
    try archive.write(to: tmp)
    defer { try? FileManager.default.removeItem(at: tmp) }
    let out = try runTool(["sh", "-c", "cpio -it --quiet < '\(tmp.path)'"])
    return String(decoding: out, as: UTF8.self).split(separator: "\n").map(String.init)
}

@Test func cpioWriterProducesNewcTheSystemCpioReads() throws {
    var w = CpioWriter()
    w.addFile("/etc/pvfs/conf", contents: Data("x=1\n".utf8))
    w.addSymlink("bin/sh", target: "/bin/busybox")
    w.addCharacterDevice("dev/console", major: 5, minor: 1)
    w.addDirectory("/newroot")
    let data = w.finish()
    #expect(data.count % 4 == 0)
    #expect(String(decoding: data.prefix(6), as: UTF8.self) == "070701")
    // Parents come before children; nothing is written twice.
    #expect(w.paths == ["etc", "etc/pvfs", "etc/pvfs/conf", "bin", "bin/sh", "dev", "dev/console", "newroot"])
    if let listing = try cpioListing(data) {
        #expect(listing == w.paths)
    }
}

@Test func cpioWriterIsDeterministic() {
    func make() -> Data {
        var w = CpioWriter()
        w.addFile("a/b", contents: Data(repeating: 7, count: 1001), mode: 0o755)
        return w.finish()
    }
    #expect(make() == make())
}

@Test func moduleOrderPutsDependenciesFirst() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kmods-\(getpid())")
    let ver = dir.appendingPathComponent("9.9.9-test")
    try FileManager.default.createDirectory(at: ver, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let dep = """
    kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
    kernel/net/9p/9pnet.ko:
    kernel/net/9p/9pnet_fd.ko: kernel/net/9p/9pnet.ko
    kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
    kernel/fs/netfs/netfs.ko:
    kernel/drivers/xen/xen-evtchn.ko.xz:

    """
    try Data(dep.utf8).write(to: ver.appendingPathComponent("modules.dep"))
    try Data("kernel/drivers/virtio/virtio.ko\n".utf8).write(to: ver.appendingPathComponent("modules.builtin"))
    let mods = try KernelModules(version: "9.9.9-test", modulesRoot: dir.path)
    let order = try mods.loadOrder(for: ["9pnet_fd", "9p", "virtio"]).map(\.name)
    #expect(order == ["9pnet", "9pnet_fd", "netfs", "fscache", "9p"])
    #expect(mods.module(named: "xen-evtchn")?.relativePath == "kernel/drivers/xen/xen-evtchn.ko.xz")
    #expect(throws: BootArtifactError.self) { try mods.loadOrder(for: ["nosuchmodule"]) }
}

@Test func kernelCommandLineCarriesTheMountParameters() throws {
    let tcp = BootConfiguration(vm: "web1", serverAddress: "10.0.2.2", serverPort: 5640)
    try tcp.validate()
    #expect(tcp.kernelCommandLine ==
        "console=ttyS0 rdinit=/init pvfs.transport=tcp pvfs.vm=web1 pvfs.server=10.0.2.2 pvfs.port=5640 pvfs.msize=262144")
    let xen = BootConfiguration(vm: "db", transport: .xen, tag: "rootfs", initPath: "/bin/sh", onFailure: "poweroff")
    #expect(xen.kernelCommandLine ==
        "console=hvc0 rdinit=/init pvfs.transport=xen pvfs.vm=db pvfs.tag=rootfs pvfs.msize=262144 init=/bin/sh pvfs.onfail=poweroff")
    let vfs = BootConfiguration(vm: "web1", transport: .virtiofs)
    try vfs.validate()
    // The tag is the VM's name, as `pvfs-vm qemu-args --transport virtiofs` gives QEMU; no 9P msize.
    #expect(vfs.kernelCommandLine == "console=ttyS0 rdinit=/init pvfs.transport=virtiofs pvfs.vm=web1 pvfs.tag=web1")
    #expect(BootConfiguration(vm: "web1", transport: .virtiofs, tag: "rootfs").kernelCommandLine.hasSuffix("pvfs.tag=rootfs"))
    #expect(throws: BootArtifactError.self) {
        try BootConfiguration(vm: "a", transport: .virtiofs, tag: String(repeating: "t", count: 37)).validate()
    }
    #expect(throws: BootArtifactError.self) { try BootConfiguration(vm: "a b").validate() }
    #expect(throws: BootArtifactError.self) { try BootConfiguration(vm: "a", serverAddress: "host.example").validate() }
    #expect(throws: BootArtifactError.self) { try BootConfiguration(vm: "a", mountOptions: "x y").validate() }
}

@Test func elfStaticCheck() {
    if FileManager.default.fileExists(atPath: "/bin/busybox") {
        #expect(ELFFile.isStatic("/bin/busybox") == true)
    }
    #expect(ELFFile.isStatic("/bin/sh") == false)
    #expect(ELFFile.isStatic("/etc/passwd") == nil)
}

@Test func bootFilesOnThisMachine() throws {
    guard let kernel = KernelImage.newestInstalled(),
          FileManager.default.isExecutableFile(atPath: "/bin/busybox") else { return }
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("bootfiles-\(getpid())")
    defer { try? FileManager.default.removeItem(at: out) }
    let cmd = try BootFilesCommand.parse(["vm1", "--kernel", kernel, "--output", out.path, "--compression", "none"])
    let a = try cmd.build()
    #expect(a.modules.contains("9pnet_fd") && a.modules.contains("9pnet_xen") && a.modules.contains("virtio_net"))
    #expect(a.qemuCommand?.contains("virtio-net-pci") == true)
    if let listing = try cpioListing(try Data(contentsOf: URL(fileURLWithPath: a.initrd))) {
        #expect(listing.contains("init"))
        #expect(listing.contains("sbin/switch_root"))
        #expect(listing.contains("lib/modules/pvfs/9p.ko"))
        #expect(listing.contains("etc/pvfs-boot/boot.conf"))
    }
}

@Test func bootFilesForVirtiofsOnThisMachine() throws {
    guard let kernel = KernelImage.newestInstalled(),
          FileManager.default.isExecutableFile(atPath: "/bin/busybox") else { return }
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("bootfiles-vfs-\(getpid())")
    defer { try? FileManager.default.removeItem(at: out) }
    let socket = out.appendingPathComponent("vm1.vhost").path
    let cmd = try BootFilesCommand.parse(["vm1", "--transport", "virtiofs", "--socket", socket, "--kernel", kernel,
                                          "--output", out.path, "--compression", "none"])
    let a = try cmd.build()
    // virtiofs and what modules.dep says it needs, after them in load order.
    for name in ["virtio_ring", "virtio", "virtio_pci", "fuse", "virtiofs"] { #expect(a.modules.contains(name)) }
    #expect(a.cmdline.contains("pvfs.transport=virtiofs") && a.cmdline.contains("pvfs.tag=vm1"))
    let qemu = a.qemu ?? []
    #expect(qemu.contains("memory-backend-memfd,id=vfs0-mem,size=1024M,share=on"))
    #expect(qemu.contains("socket,id=vfs0,path=\(socket)"))
    #expect(qemu.contains("vhost-user-fs-pci,chardev=vfs0,tag=vm1"))
    #expect(!qemu.contains { $0.contains("virtio-net") })
    let archive = try Data(contentsOf: URL(fileURLWithPath: a.initrd))
    if let listing = try cpioListing(archive) {
        #expect(listing.contains("lib/modules/pvfs/virtiofs.ko"))
        #expect(listing.contains("etc/pvfs-boot/modules.virtiofs"))
    }
    let order = try String(contentsOf: out.appendingPathComponent("cmdline"), encoding: .utf8)
    #expect(order == a.cmdline + "\n")
    let virtiofsOrder = try KernelModules(version: a.kernelVersion).loadOrder(for: BootArtifactBuilder.virtiofsModules).map(\.name)
    #expect(virtiofsOrder.firstIndex(of: "fuse")! < virtiofsOrder.firstIndex(of: "virtiofs")!)
    #expect(virtiofsOrder.firstIndex(of: "virtio_ring")! < virtiofsOrder.firstIndex(of: "virtio_pci")!)

    // Without a socket (no store, no binding) the boot files are still written, without qemu.sh.
    let bare = try BootFilesCommand.parse(["vm1", "--transport", "virtiofs", "--store", out.appendingPathComponent("nostore").path,
                                           "--kernel", kernel, "--output", out.appendingPathComponent("bare").path,
                                           "--compression", "none", "--quiet"]).build()
    #expect(bare.qemu == nil && !bare.files.contains { $0.hasSuffix("qemu.sh") })
}
