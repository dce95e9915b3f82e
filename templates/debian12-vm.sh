#!/bin/sh
# Post-build hook of debian12.recipe: turns a debootstrapped tree into a VM root.
# Runs on the host, as root, with the tree as $1 (also $PVFS_ROOT) and as the working directory.
# Uses no chroot: everything here is plain file editing, so it works for foreign architectures.
set -eu
root="${1:?usage: $0 ROOT}"
cd "$root"

# Logins on the consoles a VM has: the emulated serial port and the Xen/virtio console.
mkdir -p etc/systemd/system/getty.target.wants
for tty in ttyS0 hvc0; do
    ln -sf /lib/systemd/system/serial-getty@.service "etc/systemd/system/getty.target.wants/serial-getty@$tty.service"
done

# Identity: every VM gets its own machine-id on first boot (systemd writes it when empty).
echo pvfs-vm > etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpvfs-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' > etc/hosts
: > etc/machine-id
rm -f var/lib/dbus/machine-id

# The root filesystem is mounted by the kernel (9P or FUSE from pvfs); nothing else to mount.
printf '# The root filesystem is provided by pvfs and mounted by the kernel.\n' > etc/fstab

# DHCP on the first network interface.
mkdir -p etc/network/interfaces.d
printf 'allow-hotplug eth0\niface eth0 inet dhcp\n' > etc/network/interfaces.d/eth0

# Development default: root logs in on the console without a password. SSH refuses empty
# passwords (PermitEmptyPasswords no), so remote logins need keys in /root/.ssh/authorized_keys.
sed -i 's/^root:[^:]*:/root::/' etc/shadow

# SSH host keys must differ between VMs: drop the ones built into the tree and generate them on
# each VM's first boot, before sshd starts.
rm -f etc/ssh/ssh_host_*
cat > etc/systemd/system/ssh-host-keys.service <<'UNIT'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
UNIT
mkdir -p etc/systemd/system/ssh.service.wants
ln -sf /etc/systemd/system/ssh-host-keys.service etc/systemd/system/ssh.service.wants/ssh-host-keys.service

# No package caches in a shared template.
rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin var/lib/apt/lists/*
mkdir -p var/lib/apt/lists/partial
rm -f var/log/*.log var/log/apt/*
