import ArgumentParser
import Foundation
import Glibc

// What a guest needs to boot with its root filesystem served by pvfs: a kernel, an initramfs
// whose /init mounts the root (9P2000.L over TCP or virtio-fs for QEMU/KVM guests, 9P over Xen
// PV 9pfs rings for Xen domUs) and switch_roots into it, and a kernel command line.

/// How the guest reaches its root filesystem.
public enum BootTransport: String, CaseIterable, ExpressibleByArgument, Codable, Sendable {
    /// 9P over TCP (`trans=tcp`) through the guest's first NIC (virtio-net).
    case tcp
    /// 9P over a Xen PV 9pfs device (`trans=xen`), identified by its tag.
    case xen
    /// virtio-fs (`mount -t virtiofs TAG`): a vhost-user-fs device on the VM's vhost-user
    /// socket, identified by its tag; the guest needs no network.
    case virtiofs
}

/// Everything that decides the artefacts' contents.
public struct BootConfiguration: Codable, Sendable {
    /// The VM whose root is served: the 9P aname pvfsd selects the VM by.
    public var vm: String
    /// The 9P attach name when it is not the VM name (e.g. an exported path for another server).
    public var aname: String
    public var transport: BootTransport
    /// tcp: server IPv4 address as the guest sees it (QEMU user networking: 10.0.2.2 is the host).
    public var serverAddress: String
    public var serverPort: Int
    /// xen: the 9pfs device tag; virtiofs: the vhost-user-fs device's tag.
    public var tag: String
    /// 9P msize the guest asks for (0 = the kernel's default); the server may lower it.
    public var msize: Int
    /// Extra 9P mount options (comma-separated), e.g. `cache=loose`.
    public var mountOptions: String
    /// The program /init execs in the new root.
    public var initPath: String
    /// Kernel-style `ip=` value for the guest's network (tcp only); empty = 10.0.2.15/24 via 10.0.2.2.
    public var ip: String
    /// `shell`, `poweroff`, `reboot` or `halt`: what /init does when it cannot mount the root.
    public var onFailure: String
    /// Console device for the kernel command line.
    public var console: String
    /// Arguments appended to the kernel command line.
    public var extraKernelArguments: String
    /// Modules added on top of the 9P/virtio-net/Xen/virtio-fs sets.
    public var extraModules: [String]
    public var compression: InitramfsCompression

    public init(vm: String, aname: String? = nil, transport: BootTransport = .tcp, serverAddress: String = "10.0.2.2",
                serverPort: Int = 564, tag: String? = nil, msize: Int = 262_144, mountOptions: String = "",
                initPath: String = "/sbin/init", ip: String = "", onFailure: String = "shell",
                console: String? = nil, extraKernelArguments: String = "", extraModules: [String] = [],
                compression: InitramfsCompression = .gzip) {
        self.vm = vm
        self.aname = aname ?? vm
        self.transport = transport
        self.serverAddress = serverAddress
        self.serverPort = serverPort
        // The virtio-fs tag defaults to the VM's name, as `pvfs-vm qemu-args --transport virtiofs` gives QEMU.
        self.tag = tag ?? (transport == .virtiofs ? vm : "root")
        self.msize = msize
        self.mountOptions = mountOptions
        self.initPath = initPath
        self.ip = ip
        self.onFailure = onFailure
        self.console = console ?? (transport == .xen ? "hvc0" : "ttyS0")
        self.extraKernelArguments = extraKernelArguments
        self.extraModules = extraModules
        self.compression = compression
    }

    /// Rejects values the kernel command line or the 9P mount options cannot carry.
    public func validate() throws {
        func plain(_ s: String, _ what: String, allowEmpty: Bool = false, extra: String = "") throws {
            if s.isEmpty && allowEmpty { return }
            let ok = !s.isEmpty && s.unicodeScalars.allSatisfy {
                CharacterSet.alphanumerics.contains($0) && $0.isASCII || "._-\(extra)".unicodeScalars.contains($0)
            }
            guard ok else { throw BootArtifactError("\(what) '\(s)' may use only letters, digits and ._-\(extra)") }
        }
        try plain(vm, "VM name")
        try plain(aname, "aname", extra: "/")
        try plain(tag, "tag")
        if transport == .virtiofs && tag.utf8.count > 36 {
            throw BootArtifactError("virtio-fs tag '\(tag)' is longer than 36 bytes")
        }
        try plain(mountOptions, "mount options", allowEmpty: true, extra: ",=")
        try plain(ip, "ip", allowEmpty: true, extra: ":/")
        try plain(initPath, "init path", extra: "/")
        guard initPath.hasPrefix("/") else { throw BootArtifactError("init path must be absolute") }
        let octets = serverAddress.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4, octets.allSatisfy({ UInt8($0) != nil }) else {
            throw BootArtifactError("server address '\(serverAddress)' must be an IPv4 address (9P over TCP takes no host names)")
        }
        guard (1 ... 65535).contains(serverPort) else { throw BootArtifactError("bad port \(serverPort)") }
        guard ["shell", "poweroff", "reboot", "halt"].contains(onFailure) else {
            throw BootArtifactError("on-failure must be shell, poweroff, reboot or halt")
        }
    }

    /// The kernel command line. /init reads the pvfs.* parameters; the values are also baked
    /// into the image, so they only need repeating here to be visible and easy to override.
    public var kernelCommandLine: String {
        var args = ["console=\(console)", "rdinit=/init", "pvfs.transport=\(transport.rawValue)", "pvfs.vm=\(vm)"]
        if aname != vm { args.append("pvfs.aname=\(aname)") }
        switch transport {
        case .tcp:
            args += ["pvfs.server=\(serverAddress)", "pvfs.port=\(serverPort)"]
            if !ip.isEmpty { args.append("ip=\(ip)") }
        case .xen, .virtiofs:
            args.append("pvfs.tag=\(tag)")
        }
        if msize > 0 && transport != .virtiofs { args.append("pvfs.msize=\(msize)") }
        if !mountOptions.isEmpty { args.append("pvfs.opts=\(mountOptions)") }
        if initPath != "/sbin/init" { args.append("init=\(initPath)") }
        if onFailure != "shell" { args.append("pvfs.onfail=\(onFailure)") }
        if !extraKernelArguments.isEmpty { args.append(extraKernelArguments) }
        return args.joined(separator: " ")
    }
}

/// Builds the boot initramfs and writes the artefacts.
public struct BootArtifactBuilder {
    /// Modules per transport, by name; dependencies are added from modules.dep.
    public static let tcpModules = ["virtio_pci", "virtio_net", "9pnet_fd", "9p"]
    public static let xenModules = ["9pnet_xen", "9p"]
    /// virtio_pci brings the vhost-user-fs PCI device up; virtiofs pulls in fuse, virtio, virtio_ring.
    public static let virtiofsModules = ["virtio_pci", "virtiofs"]

    public static func modules(for transport: BootTransport) -> [String] {
        switch transport {
        case .tcp: tcpModules
        case .xen: xenModules
        case .virtiofs: virtiofsModules
        }
    }

    public var configuration: BootConfiguration
    public var kernelPath: String
    public var kernelVersion: String
    public var busyboxPath: String
    public var modulesRoot: String
    /// virtiofs: the VM's vhost-user socket, for the QEMU command line (none: no qemu.sh).
    public var vhostUserSocket: String?

    public init(configuration: BootConfiguration, kernelPath: String, kernelVersion: String? = nil,
                busyboxPath: String? = nil, modulesRoot: String = "/lib/modules", vhostUserSocket: String? = nil) throws {
        self.configuration = configuration
        self.vhostUserSocket = vhostUserSocket
        self.kernelPath = kernelPath
        guard FileManager.default.fileExists(atPath: kernelPath) else {
            throw BootArtifactError("no kernel at \(kernelPath)")
        }
        if let kernelVersion {
            self.kernelVersion = kernelVersion
        } else if let v = KernelImage.version(ofImageAt: kernelPath) {
            self.kernelVersion = v
        } else if let r = kernelPath.range(of: "vmlinuz-") {
            self.kernelVersion = String(kernelPath[r.upperBound...])
        } else {
            throw BootArtifactError("cannot tell the version of \(kernelPath); pass --kernel-version")
        }
        self.modulesRoot = modulesRoot
        if let busyboxPath {
            self.busyboxPath = busyboxPath
        } else if let found = ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }) {
            self.busyboxPath = found
        } else {
            throw BootArtifactError("no busybox found (apt-get install busybox-static) or pass --busybox")
        }
    }

    /// The result of a build.
    public struct Artifacts: Codable, Sendable {
        public var vm: String
        public var transport: BootTransport
        public var kernel: String
        public var kernelVersion: String
        public var initrd: String
        public var initrdBytes: Int
        public var modules: [String]
        public var cmdline: String
        /// tcp, virtiofs: a QEMU command line that boots the guest (argv and as one shell line).
        public var qemu: [String]?
        public var qemuCommand: String?
        /// xen: an xl domain configuration for a PV guest.
        public var xlConfig: String?
        public var files: [String]
    }

    /// Builds the initramfs archive (uncompressed cpio) and the module list.
    public func buildInitramfs() throws -> (cpio: Data, modules: [KernelModule]) {
        try configuration.validate()
        guard ELFFile.isStatic(busyboxPath) == true else {
            throw BootArtifactError("\(busyboxPath) is not a statically linked ELF binary (install busybox-static)")
        }
        let kmods = try KernelModules(version: kernelVersion, modulesRoot: modulesRoot)
        let extra = configuration.extraModules
        // The chosen transport's modules must all be there; the others' go in too when the kernel
        // has them, so that pvfs.transport= on the command line can switch one image between them.
        var orders: [(BootTransport, [KernelModule])] = []
        for transport in BootTransport.allCases {
            do {
                orders.append((transport, try kmods.loadOrder(for: Self.modules(for: transport) + extra)))
            } catch where transport != configuration.transport {
                continue
            }
        }
        var all: [KernelModule] = []
        for (_, order) in orders {
            for m in order where !all.contains(m) { all.append(m) }
        }

        var cpio = CpioWriter()
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "newroot",
                  "etc/pvfs-boot", "lib/modules/pvfs", "root", "mnt", "var"] {
            cpio.addDirectory(d)
        }
        cpio.addCharacterDevice("dev/console", major: 5, minor: 1)
        cpio.addCharacterDevice("dev/null", major: 1, minor: 3, mode: 0o666)
        guard let bb = FileManager.default.contents(atPath: busyboxPath) else {
            throw BootArtifactError("cannot read \(busyboxPath)")
        }
        cpio.addFile("bin/busybox", contents: bb, mode: 0o755)
        let list = String(decoding: try runTool([busyboxPath, "--list-full"]), as: UTF8.self)
        for applet in list.split(separator: "\n").map(String.init) where applet != "bin/busybox" {
            cpio.addSymlink(applet, target: "/bin/busybox")
        }
        for m in all {
            cpio.addFile("lib/modules/pvfs/\(m.name).ko", contents: try kmods.contents(of: m))
        }
        for (transport, order) in orders {
            cpio.addFile("etc/pvfs-boot/modules.\(transport.rawValue)", contents: Data(order.map { $0.name + "\n" }.joined().utf8))
        }
        cpio.addFile("etc/pvfs-boot/boot.conf", contents: Data(bootConf.utf8))
        cpio.addFile("etc/pvfs-boot/udhcpc.sh", contents: Data(Self.udhcpcScript.utf8), mode: 0o755)
        cpio.addFile("init", contents: Data(Self.initScript.utf8), mode: 0o755)
        return (cpio.finish(), all)
    }

    /// Writes initrd.img, the kernel, cmdline and a boot recipe (qemu.sh or xl.cfg) into `output`;
    /// virtiofs writes qemu.sh only when the VM's vhost-user socket is known.
    public func write(to output: String) throws -> Artifacts {
        let fm = FileManager.default
        try fm.createDirectory(atPath: output, withIntermediateDirectories: true)
        let out = URL(fileURLWithPath: output).standardizedFileURL.path
        let (cpio, modules) = try buildInitramfs()
        let image = configuration.compression == .gzip ? try gzipData(cpio) : cpio
        let initrd = out + "/initrd.img"
        try image.write(to: URL(fileURLWithPath: initrd), options: .atomic)

        let kernel = out + "/vmlinuz"
        try? fm.removeItem(atPath: kernel)
        let src = URL(fileURLWithPath: kernelPath).resolvingSymlinksInPath().path
        if link(src, kernel) != 0 { try fm.copyItem(atPath: src, toPath: kernel) }

        let cmdline = configuration.kernelCommandLine
        try Data((cmdline + "\n").utf8).write(to: URL(fileURLWithPath: out + "/cmdline"))
        var files = [initrd, kernel, out + "/cmdline"]
        var result = Artifacts(vm: configuration.vm, transport: configuration.transport, kernel: kernel,
                               kernelVersion: kernelVersion, initrd: initrd, initrdBytes: image.count,
                               modules: modules.map(\.name), cmdline: cmdline, files: files)
        func writeQemuScript(_ argv: [String], servedBy: String) throws {
            let line = argv.map(shellQuote).joined(separator: " ")
            let script = "#!/bin/sh\n# Boots VM \(configuration.vm) with its root served \(servedBy).\nexec \(line) \"$@\"\n"
            try Data(script.utf8).write(to: URL(fileURLWithPath: out + "/qemu.sh"))
            chmod(out + "/qemu.sh", 0o755)
            files.append(out + "/qemu.sh")
            result.qemu = argv
            result.qemuCommand = line
        }
        switch configuration.transport {
        case .tcp:
            try writeQemuScript(qemuArguments(kernel: kernel, initrd: initrd, cmdline: cmdline),
                                servedBy: "over 9P/TCP by \(configuration.serverAddress):\(configuration.serverPort)")
        case .virtiofs:
            if let socket = vhostUserSocket {
                try writeQemuScript(qemuArguments(kernel: kernel, initrd: initrd, cmdline: cmdline),
                                    servedBy: "over virtio-fs by pvfsd on \(socket)")
            }
        case .xen:
            let cfg = xlConfig(kernel: kernel, initrd: initrd, cmdline: cmdline)
            try Data(cfg.utf8).write(to: URL(fileURLWithPath: out + "/xl.cfg"))
            files.append(out + "/xl.cfg")
            result.xlConfig = cfg
        }
        result.files = files
        return result
    }

    /// A QEMU command line: tcp on user networking (10.0.2.2 is the host); virtiofs with no
    /// network, guest memory QEMU shares with pvfsd and a vhost-user-fs device on the VM's socket
    /// (the options of `pvfs-vm qemu-args --transport virtiofs`).
    public func qemuArguments(kernel: String, initrd: String, cmdline: String) -> [String] {
        let base = [
            "qemu-system-x86_64", "-machine", "accel=kvm:tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
            "-nographic", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
        ]
        switch configuration.transport {
        case .virtiofs:
            let socket = (vhostUserSocket ?? "").replacingOccurrences(of: ",", with: ",,")
            return base + [
                "-object", "memory-backend-memfd,id=vfs0-mem,size=1024M,share=on", "-numa", "node,memdev=vfs0-mem",
                "-chardev", "socket,id=vfs0,path=\(socket)",
                "-device", "vhost-user-fs-pci,chardev=vfs0,tag=\(configuration.tag)",
                "-nic", "none",
            ]
        case .tcp, .xen:
            return base + ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile="]
        }
    }

    /// An xl configuration for a PV domU whose 9pfs device pvfs attaches (no p9= line:
    /// the device is created by `pvfs-vm attach`, not by libxl's QEMU backend).
    public func xlConfig(kernel: String, initrd: String, cmdline: String) -> String {
        """
        # Xen PV guest \(configuration.vm): root over a 9pfs device tagged '\(configuration.tag)'.
        # Create paused, attach the 9pfs device, then unpause:
        #   xl create -p xl.cfg && pvfs-vm attach \(configuration.vm) --domid $(xl domid \(configuration.vm)) --tag \(configuration.tag) && xl unpause \(configuration.vm)
        name = "\(configuration.vm)"
        type = "pv"
        kernel = "\(kernel)"
        ramdisk = "\(initrd)"
        extra = "\(cmdline)"
        memory = 512
        vcpus = 1
        on_poweroff = "destroy"
        on_reboot = "restart"
        on_crash = "destroy"

        """
    }

    var bootConf: String {
        let c = configuration
        return """
        # Defaults baked in by `pvfs-vm boot-files`; pvfs.* kernel parameters override them.
        PVFS_VM='\(c.vm)'
        PVFS_ANAME='\(c.aname)'
        PVFS_TRANSPORT='\(c.transport.rawValue)'
        PVFS_SERVER='\(c.serverAddress)'
        PVFS_PORT='\(c.serverPort)'
        PVFS_TAG='\(c.tag)'
        PVFS_MSIZE='\(c.msize)'
        PVFS_OPTS='\(c.mountOptions)'
        PVFS_INIT='\(c.initPath)'
        PVFS_IP='\(c.ip)'
        PVFS_ONFAIL='\(c.onFailure)'

        """
    }

    /// The initramfs /init (busybox sh).
    static let initScript = #"""
    #!/bin/sh
    # pvfs boot initramfs: mount the root filesystem (9P2000.L or virtio-fs) and switch_root into it.
    #
    # Settings come from /etc/pvfs-boot/boot.conf, overridden by kernel parameters:
    #   pvfs.transport=tcp|xen|virtiofs  pvfs.vm=NAME  pvfs.aname=NAME (default: the VM name)
    #   pvfs.server=IPV4  pvfs.port=N
    #   pvfs.tag=TAG (xen, virtiofs)  pvfs.msize=N (9P)  pvfs.opts=a,b=c
    #   pvfs.onfail=shell|poweroff|reboot|halt
    #   ip=dhcp | ip=off | ip=ADDR/PREFIX | ip=CLIENT:SERVER:GW:NETMASK:HOST:DEV:AUTOCONF
    #   init=/path (default /sbin/init)  ro | rw
    export PATH=/sbin:/bin:/usr/sbin:/usr/bin
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    exec </dev/console >/dev/console 2>&1

    . /etc/pvfs-boot/boot.conf
    RO=rw ANAME_ARG=""
    for arg in $(cat /proc/cmdline); do
        case $arg in
        pvfs.transport=*) PVFS_TRANSPORT=${arg#*=} ;;
        pvfs.vm=*) PVFS_VM=${arg#*=} PVFS_ANAME=${arg#*=} ;;
        pvfs.aname=*) ANAME_ARG=${arg#*=} ;;
        pvfs.server=*) PVFS_SERVER=${arg#*=} ;;
        pvfs.port=*) PVFS_PORT=${arg#*=} ;;
        pvfs.tag=*) PVFS_TAG=${arg#*=} ;;
        pvfs.msize=*) PVFS_MSIZE=${arg#*=} ;;
        pvfs.opts=*) PVFS_OPTS=${arg#*=} ;;
        pvfs.onfail=*) PVFS_ONFAIL=${arg#*=} ;;
        ip=*) PVFS_IP=${arg#*=} ;;
        init=*) PVFS_INIT=${arg#*=} ;;
        ro) RO=ro ;;
        rw) RO=rw ;;
        esac
    done
    [ -n "$ANAME_ARG" ] && PVFS_ANAME=$ANAME_ARG

    log() { echo "pvfs-boot[$(cut -d' ' -f1 /proc/uptime)]: $*"; }
    fail() {
        log "FAILED: $*"
        case $PVFS_ONFAIL in
        poweroff) poweroff -f ;;
        reboot) reboot -f ;;
        halt) halt -f ;;
        esac
        while true; do
            log "starting a rescue shell; exit it to retry the boot"
            setsid cttyhack sh
            [ -x /newroot$PVFS_INIT ] && break
        done
    }

    net_up() {
        dev=eth0 addr="" gw="" mask=""
        case $PVFS_IP in
        off | none) log "ip=$PVFS_IP: network left alone"; return 0 ;;
        "") addr=10.0.2.15/24 gw=10.0.2.2 ;;
        dhcp | on | any | both | dhcp4) addr=dhcp ;;
        */*) addr=$PVFS_IP gw=10.0.2.2 ;;
        *:*)
            IFS=: read -r client server gw mask host d auto <<EOF
    $PVFS_IP
    EOF
            [ -n "$d" ] && dev=$d
            if [ -z "$client" ] || [ "$auto" = dhcp ] || [ "$auto" = on ] || [ "$auto" = any ]; then
                addr=dhcp
            else
                [ -n "$mask" ] || mask=255.255.255.0
                eval "$(ipcalc -p "$client" "$mask")"
                addr=$client/$PREFIX
            fi
            ;;
        *) addr=$PVFS_IP/24 gw=10.0.2.2 ;;
        esac
        i=0
        while [ ! -e /sys/class/net/$dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        [ -e /sys/class/net/$dev ] || { log "no network device $dev"; return 1; }
        ip link set lo up
        ip link set "$dev" up || return 1
        if [ "$addr" = dhcp ]; then
            udhcpc -i "$dev" -n -q -t 10 -s /etc/pvfs-boot/udhcpc.sh || return 1
        else
            ip addr add "$addr" dev "$dev" || return 1
            [ -n "$gw" ] && { ip route add default via "$gw" || return 1; }
        fi
        log "network: $(ip -4 addr show dev "$dev" | sed -n 's/.*inet \([^ ]*\).*/\1/p') on $dev"
    }

    case $PVFS_TRANSPORT in
    virtiofs) log "VM $PVFS_VM, root over virtio-fs (tag $PVFS_TAG)" ;;
    *) log "VM $PVFS_VM, root over 9P/$PVFS_TRANSPORT" ;;
    esac
    [ -f /etc/pvfs-boot/modules.$PVFS_TRANSPORT ] ||
        fail "this initramfs has no modules for transport $PVFS_TRANSPORT (pvfs-vm boot-files --transport $PVFS_TRANSPORT)"
    for m in $(cat /etc/pvfs-boot/modules.$PVFS_TRANSPORT); do
        insmod /lib/modules/pvfs/$m.ko 2>/tmp/insmod.err || grep -q 'File exists' /tmp/insmod.err ||
            log "insmod $m: $(cat /tmp/insmod.err)"
    done

    fstype=9p
    opts="version=9p2000.L,aname=$PVFS_ANAME,$RO"
    [ "$PVFS_MSIZE" != 0 ] && [ -n "$PVFS_MSIZE" ] && opts="$opts,msize=$PVFS_MSIZE"
    case $PVFS_TRANSPORT in
    tcp)
        net_up || fail "network setup (ip=$PVFS_IP)"
        source=$PVFS_SERVER
        opts="trans=tcp,port=$PVFS_PORT,$opts"
        ;;
    xen)
        source=$PVFS_TAG
        opts="trans=xen,$opts"
        ;;
    virtiofs)
        # The device is the VM's: QEMU's vhost-user-fs device carries the tag, pvfsd's socket the VM.
        fstype=virtiofs
        source=$PVFS_TAG
        opts=$RO
        ;;
    *) fail "unknown transport $PVFS_TRANSPORT" ;;
    esac
    [ -n "$PVFS_OPTS" ] && opts="$opts,$PVFS_OPTS"

    n=0
    until mount -t $fstype -o "$opts" "$source" /newroot 2>/tmp/mount.err; do
        n=$((n + 1))
        if [ $n -ge 15 ]; then
            fail "mount -t $fstype -o $opts $source /newroot: $(cat /tmp/mount.err)"
            break
        fi
        log "mount attempt $n failed ($(cat /tmp/mount.err)); retrying"
        sleep 1
    done
    log "root mounted: $source ($opts)"

    if [ ! -e "/newroot$PVFS_INIT" ] && [ ! -L "/newroot$PVFS_INIT" ]; then
        fail "no $PVFS_INIT in the root filesystem"
    fi
    log "switching to $PVFS_INIT"
    for d in dev proc sys; do
        if [ -d /newroot/$d ]; then
            mount --move /$d /newroot/$d || umount -l /$d
        else
            umount -l /$d
        fi
    done
    # Arguments the kernel passed to /init (e.g. "single", or whatever follows "--") go on.
    exec switch_root /newroot "$PVFS_INIT" "$@"
    """#

    /// udhcpc event script: configure the leased address and default route.
    static let udhcpcScript = #"""
    #!/bin/sh
    case $1 in
    bound | renew)
        ip addr flush dev "$interface"
        eval "$(ipcalc -p "$ip" "$subnet")"
        ip addr add "$ip/$PREFIX" dev "$interface"
        for r in $router; do ip route add default via "$r" dev "$interface"; break; done
        ;;
    deconfig) ip addr flush dev "$interface" ;;
    esac
    exit 0
    """#
}

extension InitramfsCompression: ExpressibleByArgument {}

func shellQuote(_ s: String) -> String {
    if !s.isEmpty, s.unicodeScalars.allSatisfy({
        CharacterSet.alphanumerics.contains($0) && $0.isASCII || "-_./=:,@%+".unicodeScalars.contains($0)
    }) { return s }
    return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// `pvfs-vm boot-files VM`: the kernel, initramfs and command line to boot VM with its root on pvfs.
public struct BootFilesCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "boot-files",
        abstract: "Write the kernel, initramfs and kernel command line that boot a VM with its root on pvfs.",
        discussion: """
        The initramfs holds busybox and the modules for 9P over TCP (with virtio-net), 9P over \
        Xen PV 9pfs rings and virtio-fs. Its /init configures the network (tcp) and mounts the \
        VM's root on /newroot: over 9P with version=9p2000.L and aname=VM (tcp, xen), or with \
        `mount -t virtiofs TAG` (virtiofs: no network; the tag defaults to the VM's name, as \
        `pvfs-vm qemu-args VM --transport virtiofs` gives QEMU). Then it switch_roots to \
        /sbin/init. Writes initrd.img, vmlinuz (a hard link or copy), cmdline, and qemu.sh \
        (tcp; virtiofs when the VM's vhost-user socket is known: --socket, or the VM's binding \
        in the store) or xl.cfg (xen).
        """)

    @OptionGroup public var storeOptions: StoreOptions
    @OptionGroup public var logging: LoggingOptions

    @Argument(help: "The VM to boot (the 9P aname the server selects it by).")
    public var vm: String

    @Option(name: .long, help: ArgumentHelp("9P attach name, if not the VM name (e.g. a path diod exports).", valueName: "name"))
    public var aname: String?

    @Option(name: .long, help: "How the guest reaches its root: tcp, xen or virtiofs.")
    public var transport: BootTransport = .tcp

    @Option(name: .long, help: ArgumentHelp("tcp: the server as the guest sees it.", valueName: "ipv4:port"))
    public var server: String = "10.0.2.2:564"

    @Option(name: .long, help: ArgumentHelp("xen: the 9pfs device tag (default root); virtiofs: the vhost-user-fs tag (default the VM's name).", valueName: "tag"))
    public var tag: String?

    @Option(name: .long, help: ArgumentHelp("virtiofs: the VM's vhost-user socket for qemu.sh (default: its binding in the store).", valueName: "path"))
    public var socket: String?

    @Option(name: .long, help: ArgumentHelp("The guest kernel (default: the newest /boot/vmlinuz-*).", valueName: "path"))
    public var kernel: String?

    @Option(name: .long, help: ArgumentHelp("The kernel's module version (default: read from the image).", valueName: "release"))
    public var kernelVersion: String?

    @Option(name: .long, help: ArgumentHelp("Directory for the artefacts (default: ./boot-VM).", valueName: "dir"))
    public var output: String?

    @Option(name: .long, help: "tcp, xen: 9P msize the guest asks for (0: the kernel's default).")
    public var msize: Int = 262_144

    @Option(name: .long, help: ArgumentHelp("Extra mount options (9P or virtiofs), comma-separated.", valueName: "opts"))
    public var mountOptions: String = ""

    @Option(name: .long, help: ArgumentHelp("tcp: kernel-style ip= value (default 10.0.2.15/24 via 10.0.2.2).", valueName: "spec"))
    public var ip: String = ""

    @Option(name: .customLong("init"), help: ArgumentHelp("The init program in the VM's root.", valueName: "path"))
    public var initProgram: String = "/sbin/init"

    @Option(name: .long, help: "When the root cannot be mounted: shell, poweroff, reboot or halt.")
    public var onFailure: String = "shell"

    @Option(name: .long, help: ArgumentHelp("Console for the kernel command line (default ttyS0; hvc0 for xen).", valueName: "dev"))
    public var console: String?

    @Option(name: .long, help: ArgumentHelp("Extra kernel command-line arguments.", valueName: "args"))
    public var append: String = ""

    @Option(name: .long, help: ArgumentHelp("Another kernel module to include and load (repeatable).", valueName: "name"))
    public var module: [String] = []

    @Option(name: .long, help: ArgumentHelp("The statically linked busybox to use.", valueName: "path"))
    public var busybox: String?

    @Option(name: .long, help: "Initramfs compression: gzip or none.")
    public var compression: InitramfsCompression = .gzip

    @OptionGroup public var outputOptions: OutputOptions

    public init() {}

    public func run() throws {
        try runCommand {
            do {
                let result = try build()
                try outputOptions.emit(result) {
                    printHuman(result)
                }
            } catch let error as BootArtifactError {
                throw CommandFailure(error.message)
            }
        }
    }

    func build() throws -> BootArtifactBuilder.Artifacts {
        guard let colon = server.lastIndex(of: ":"), let port = Int(server[server.index(after: colon)...]) else {
            throw BootArtifactError("--server wants IPV4:PORT, got '\(server)'")
        }
        let config = BootConfiguration(
            vm: vm, aname: aname, transport: transport, serverAddress: String(server[..<colon]), serverPort: port, tag: tag,
            msize: msize, mountOptions: mountOptions, initPath: initProgram, ip: ip, onFailure: onFailure,
            console: console, extraKernelArguments: append, extraModules: module, compression: compression)
        try config.validate()
        guard let kernelPath = kernel ?? KernelImage.newestInstalled() else {
            throw BootArtifactError("no /boot/vmlinuz-* with modules installed; pass --kernel")
        }
        let builder = try BootArtifactBuilder(configuration: config, kernelPath: kernelPath,
                                              kernelVersion: kernelVersion, busyboxPath: busybox,
                                              vhostUserSocket: transport == .virtiofs ? try virtiofsSocket() : nil)
        return try builder.write(to: output ?? "boot-\(vm)")
    }

    /// The socket QEMU's vhost-user-fs device connects to: --socket, else the VM's binding. The
    /// initramfs does not need it, so without one the artefacts are written without qemu.sh.
    func virtiofsSocket() throws -> String? {
        do {
            return try vhostUserSocket(vm: vm, socket: socket, storeOptions: storeOptions, logging: logging)
        } catch {
            if socket != nil { throw error }
            logging.makeLogger("pvfs.vm").warning("no qemu.sh: \(error) (the initramfs and command line do not need it)")
            return nil
        }
    }

    func printHuman(_ a: BootArtifactBuilder.Artifacts) {
        var text = """
        kernel:  \(a.kernel) (\(a.kernelVersion))
        initrd:  \(a.initrd) (\(a.initrdBytes / 1024) KiB; modules: \(a.modules.joined(separator: " ")))
        cmdline: \(a.cmdline)

        """
        if let q = a.qemuCommand { text += "qemu:    \(q)\n" }
        if let x = a.xlConfig { text += "xl.cfg:\n\(x)" }
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
