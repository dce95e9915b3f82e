import Foundation
import Glibc
import Logging
import PVFSEngine
import PVFSFuse
import PVFSStore
import PVFSSystem

/// Runs provisioning hooks (hooks/README.md) against a new VM's view, mounted on the host
/// through FUSE in this process for the duration.
struct ProvisioningHooks {
    var directory: String
    var selected: [String]?
    var environment: [String: String]

    /// The hooks directory: --hooks-dir, $PVFS_HOOKS_DIR, else the first directory of
    /// `ShippedFiles.hookDirectoryCandidates` that exists.
    static func findDirectory(_ explicit: String?) -> String? {
        if let explicit { return explicit }
        if let env = ProcessInfo.processInfo.environment["PVFS_HOOKS_DIR"], !env.isEmpty { return env }
        return ShippedFiles.hookDirectoryCandidates.first { path in
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
        }
    }

    /// Executable files of the directory in name order (helpers like lib.sh are not executable).
    func hooks() throws -> [String] {
        let all = (try FileManager.default.contentsOfDirectory(atPath: directory)).sorted()
            .filter { !$0.hasPrefix(".") && access(directory + "/" + $0, X_OK) == 0 }
            .filter { name in
                var isDirectory: ObjCBool = false
                return FileManager.default.fileExists(atPath: directory + "/" + name, isDirectory: &isDirectory) && !isDirectory.boolValue
            }
        guard let selected else { return all }
        for name in selected where !all.contains(name) {
            throw CommandFailure("no hook named \(name) in \(directory) (have: \(all.joined(separator: ", ")))")
        }
        return all.filter { selected.contains($0) }
    }

    /// Mounts the VM, runs each hook with (VM, view path), unmounts. Throws on the first failure.
    func run(store: Store, vm: String, template: String, logger: Logger) throws -> [String] {
        let names = try hooks()
        guard !names.isEmpty else { return [] }
        let volume = try Volume.open(store: store, vmName: vm, logger: logger)
        defer { try? volume.close() }
        let view = VMView(volume: volume, policy: SessionPolicy(side: .host, permissionChecks: .hostKernel), sessionID: 1)
        let mountpoint = store.path + "/" + StoreLayout.scratchMountpoint(vm: vm, pid: getpid())
        try? FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: mountpoint) }
        let mount = BackgroundHostMount(try HostFuseEngine.fromEnvironment.mount(view, on: mountpoint, options: FuseMountOptions(), logger: logger),
                                        name: "pvfs.fuse.provisioning") { error in
            if let error { logger.error("provisioning mount: \(error)") }
        }
        defer { mount.stop() }
        var environment = ProcessInfo.processInfo.environment
        environment["PVFS_VM"] = vm
        environment["PVFS_VIEW"] = mountpoint
        environment["PVFS_TEMPLATE"] = template
        environment["PVFS_STORE"] = store.path
        for (key, value) in self.environment { environment["PVFS_HOOK_" + key] = value }
        for name in names {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: directory + "/" + name)
            process.arguments = [vm, mountpoint]
            process.environment = environment
            process.currentDirectoryURL = URL(fileURLWithPath: directory)
            do {
                try process.run()
            } catch {
                throw CommandFailure("cannot run hook \(name): \(error)")
            }
            process.waitUntilExit()
            guard process.terminationReason == .exit, process.terminationStatus == 0 else {
                throw CommandFailure("hook \(name) failed (status \(process.terminationStatus))")
            }
            logger.info("hook \(name) done")
        }
        return names
    }
}
