import ArgumentParser
import Foundation
import Logging
import PVFSTransport

/// The mount tag a pvfs root device gets unless told otherwise.
public let pvfsXenDefaultTag = "pvfs-root"

/// Options shared by the commands that address a domain's 9pfs device.
public struct XenDeviceOptions: ParsableArguments {
    @Option(name: .long, help: "The frontend (guest) domain id, as `xl domid NAME` prints it.")
    public var domid: UInt32

    @Option(name: .long, help: "The domain running the pvfs backend (dom0 unless a driver domain serves).")
    public var backendDomid: UInt32 = 0

    @Option(name: .long, help: "The device index (default: the lowest free one for attach, every device of the VM for detach).")
    public var devid: UInt32?

    public init() {}
}

/// `pvfs-vm attach NAME --domid ID`: creates the Xen PV 9pfs device nodes that connect a
/// domain (created with `xl create -p`, no `p9` line) to the pvfs backend, exactly as libxl
/// writes them for a 9pfs device served from dom0.
public struct Attach: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Attach a VM's pvfs root to a Xen domain as a PV 9pfs device.",
        discussion: """
            Writes /local/domain/<backend>/backend/9pfs/<domid>/<devid> (frontend, frontend-id, online, \
            state=1, path=NAME, tag, security_model), /local/domain/<domid>/device/9pfs/<devid> \
            (backend, backend-id, state=1, tag) and libxl's /libxl/<domid>/device/9pfs/<devid>, with \
            libxl's permissions, in one transaction. pvfsd's Xen backend then runs the handshake when \
            the guest's 9pnet_xen frontend starts; the guest mounts with \
            `mount -t 9p -o trans=xen,version=9p2000.L TAG /mnt`. Run it between `xl create -p` and \
            `xl unpause`.
            """)

    @Argument(help: "The VM whose root pvfs serves (written to the backend's path node).")
    public var name: String

    @OptionGroup public var device: XenDeviceOptions

    @Option(name: .long, help: "The mount tag the guest uses.")
    public var tag: String = pvfsXenDefaultTag

    @OptionGroup public var output: OutputOptions

    public init() {}

    struct Result: Encodable {
        var vm: String
        var domid: UInt32
        var devid: UInt32
        var tag: String
        var backend: String
        var frontend: String
    }

    public func run() throws {
        try runCommand {
            let store = try openXenStore()
            let spec = XenToolstack.DeviceSpec(vmName: name, domid: device.domid, devid: device.devid, tag: tag,
                                               backendDomid: device.backendDomid)
            let attached = try mapToolstackFailures { try XenToolstack.attach(spec, store: store) }
            let result = Result(vm: name, domid: device.domid, devid: attached.devid, tag: tag,
                                backend: attached.paths.backend, frontend: attached.paths.frontend)
            try output.emit(result) {
                print("attached \(name) to domain \(device.domid) as 9pfs device \(attached.devid) (tag \(tag))")
                print("  backend  \(attached.paths.backend)")
                print("  frontend \(attached.paths.frontend)")
            }
        }
    }
}

/// `pvfs-vm detach NAME --domid ID`: closes and removes the VM's 9pfs device(s) of a domain.
public struct Detach: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "detach",
        abstract: "Detach a VM's pvfs 9pfs device from a Xen domain.",
        discussion: """
            As libxl does: sets the backend's online=0 and state=5 (Closing), waits for the backend to \
            reach Closed once the guest's frontend closed, then removes the backend, frontend and libxl \
            nodes. A dead domain's nodes are removed at once. Unmount the filesystem in the guest first: \
            Linux's frontend cannot survive losing a mounted device.
            """)

    @Argument(help: "The VM whose device to remove (matched against the backend's path node).")
    public var name: String

    @OptionGroup public var device: XenDeviceOptions

    @Option(name: .long, help: "Seconds to wait for the backend to acknowledge.")
    public var timeout: Double = 10

    @Flag(name: .long, help: "Remove the nodes without asking the backend to close first.")
    public var force = false

    public init() {}

    public func run() throws {
        try runCommand {
            let store = try openXenStore()
            let devids: [UInt32]
            if let devid = device.devid {
                devids = [devid]
            } else {
                devids = try XenToolstack.devices(of: name, domid: device.domid, backendDomid: device.backendDomid,
                                                  store: store)
                guard !devids.isEmpty else {
                    throw CommandFailure("domain \(device.domid) has no 9pfs device for VM \(name)",
                                         exitCode: PVFSExitCode.notFound)
                }
            }
            for devid in devids {
                let outcome = try mapToolstackFailures {
                    try XenToolstack.detach(domid: device.domid, devid: devid, backendDomid: device.backendDomid,
                                            timeout: .milliseconds(Int(max(0, timeout) * 1000)), force: force,
                                            store: store)
                }
                switch outcome {
                case .closedByBackend:
                    print("detached \(name) device \(devid) from domain \(device.domid)")
                case .removedWithoutHandshake:
                    print("removed \(name) device \(devid) of domain \(device.domid)")
                case .timedOut:
                    FileHandle.standardError.write(Data("warning: the backend did not close device \(devid) within \(timeout) s; nodes removed anyway\n".utf8))
                    print("removed \(name) device \(devid) of domain \(device.domid)")
                }
            }
        }
    }
}

/// `pvfs-vm xl-config NAME`: prints an xl configuration for a PV domain whose root is
/// served by pvfs, with the steps that bring it up.
public struct XlConfig: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "xl-config",
        abstract: "Print an xl config for a PV domain whose root filesystem pvfs serves over Xen 9pfs.")

    @Argument(help: "The VM name (also the domain name unless --domain-name is given).")
    public var name: String

    @Option(name: .long, help: "The guest kernel (a Linux with 9pnet_xen available).")
    public var kernel: String?

    @Option(name: .long, help: "The initramfs that mounts the 9p root and switches to it (from `pvfs-vm boot-files --transport xen`).")
    public var initrd: String?

    @Option(name: .long, help: "Guest memory in MiB.")
    public var memory: Int = 512

    @Option(name: .long, help: "Virtual CPUs.")
    public var vcpus: Int = 1

    @Option(name: .long, help: "The Xen domain name.")
    public var domainName: String?

    @Option(name: .long, help: "The mount tag (must match `pvfs-vm attach --tag`).")
    public var tag: String = pvfsXenDefaultTag

    @Option(name: .long, help: "More kernel command line.")
    public var extra: String?

    public init() {}

    public func validate() throws {
        guard memory >= 64 else { throw ValidationError("--memory must be at least 64 MiB") }
        guard vcpus >= 1 else { throw ValidationError("--vcpus must be at least 1") }
        do {
            try XenToolstack.validateTag(tag)
            try XenToolstack.validateVMName(name)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// The default kernel: the running one.
    static func runningKernel() -> String {
        var info = utsname()
        uname(&info)
        let release = withUnsafeBytes(of: &info.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return "/boot/vmlinuz-\(release)"
    }

    public func render() -> String {
        let domain = domainName ?? name
        let kernel = self.kernel ?? XlConfig.runningKernel()
        let initrd = self.initrd ?? "/var/lib/pvfs/boot/\(name)/initrd-xen.img"
        var cmdline = "console=hvc0 root=\(tag) rootfstype=9p rootflags=trans=xen,version=9p2000.L"
        if let extra, !extra.isEmpty { cmdline += " " + extra }
        func quoted(_ text: String) -> String {
            "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        return """
            # xl configuration for VM \(name): a PV domain whose root filesystem pvfs serves over
            # Xen PV 9pfs (Linux 9pnet_xen frontend, pvfsd as the dom0 backend).
            #
            # The initramfs loads 9pnet_xen and 9p, mounts the root with
            #   mount -t 9p -o trans=xen,version=9p2000.L \(tag) /newroot
            # and switch_roots into it. Make it with:
            #   pvfs-vm boot-files \(name) --transport xen
            #
            # There is deliberately no p9 = [...] line: xl 4.17 would start QEMU as the backend.
            # Bring the domain up in three steps, with pvfsd running:
            #   xl create -p <this file>
            #   pvfs-vm attach \(name) --domid $(xl domid \(domain)) --tag \(tag)
            #   xl unpause \(domain)
            # `xl destroy \(domain)` removes the device with the domain; `pvfs-vm detach \(name)
            # --domid ID` removes it from a running domain (unmount in the guest first).
            name = \(quoted(domain))
            type = "pv"
            kernel = \(quoted(kernel))
            ramdisk = \(quoted(initrd))
            extra = \(quoted(cmdline))
            memory = \(memory)
            vcpus = \(vcpus)
            on_poweroff = "destroy"
            on_reboot = "restart"
            on_crash = "destroy"

            """
    }

    public func run() throws {
        print(render(), terminator: "")
    }
}

func openXenStore() throws -> XenStore {
    do {
        return try XenStore()
    } catch {
        throw CommandFailure("cannot open xenstore: \(error)")
    }
}

func mapToolstackFailures<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let failure as XenToolstack.Failure {
        switch failure {
        case .noSuchDomain, .noSuchDevice:
            throw CommandFailure(failure.description, exitCode: PVFSExitCode.notFound)
        case .deviceExists:
            throw CommandFailure(failure.description, exitCode: PVFSExitCode.conflict)
        case .invalidArgument:
            throw CommandFailure(failure.description)
        }
    } catch let error as XenError {
        throw CommandFailure("\(error)")
    }
}
