#!/bin/bash
# Tests/package/debian-install.sh: the Debian package used the way a host's admin uses it.
#
# A fresh Debian 12 root (debootstrap, cached as a tarball in /var/cache/pvfs-test) boots its own
# systemd under `systemd-nspawn -b`; the admin's commands run in it as root (nsenter into the
# container). Then:
#   1. apt-get install of the PREVIOUS package: dependencies resolve, pvfsd is enabled and
#      started by its unit, /var/lib/pvfs exists (0700), every command prints its version;
#   2. in a folder holding a bogus templates/debian12.recipe, `pvfs-template create debian12`
#      builds the packaged recipe (debootstrap inside the root) and ignores the folder's;
#   3. `pvfs-vm provision` runs the packaged hooks; `pvfs status` sees the unit's pvfsd;
#   4. the admin edits /etc/pvfs/pvfsd.conf and restarts pvfsd; `pvfs-vm mount` (FUSE, hosted by
#      pvfsd) shows the VM's files to the admin; a file is written through it;
#   5. man pages (pvfs-vm, a subcommand, pvfsd(8), whatis) and bash completion work;
#   6. apt-get install of the CURRENT package upgrades in place through
#      /usr/lib/pvfs/pvfsd-upgrade: while pvfsd hosts a FUSE mount (which cannot move yet) the
#      previous build serves on and says so; once the admin unmounts, `pvfs upgrade` hands pvfsd
#      to the new build, systemd follows the new main process, and a 9P client connected
#      the whole time (Tests/package/9p-client.pl) sees no error; the edited conffile, the
#      template, the VM and its file are kept;
#   7. apt-get remove: pvfsd stopped, binaries gone, conffile and the store kept;
#   8. apt-get purge + autoremove: nothing of the package left except the store, which holds
#      a template and a VM; a second install whose store stays empty is purged without trace.
#
# usage: Tests/package/debian-install.sh --previous OLD.deb --current NEW.deb
# Exit 0 passed, 1 failed, 77 skipped (no debootstrap, systemd-nspawn or /dev/fuse; not root).
set -uo pipefail
PREVIOUS="" CURRENT=""
while [ $# -gt 0 ]; do
    case $1 in
    --previous) PREVIOUS=$(realpath "$2"); shift 2 ;;
    --current) CURRENT=$(realpath "$2"); shift 2 ;;
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -f "$PREVIOUS" ] && [ -f "$CURRENT" ] || { echo "usage: $0 --previous OLD.deb --current NEW.deb" >&2; exit 2; }
skip() { echo "SKIP: $*" >&2; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root"
command -v debootstrap >/dev/null || skip "debootstrap is not installed"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is not installed (apt-get install systemd-container)"
command -v slirp4netns >/dev/null || skip "slirp4netns is not installed"
[ -c /dev/fuse ] || skip "no /dev/fuse"

CACHE=/var/cache/pvfs-test
BASE=$CACHE/debian12-host.tar.gz
ARCHIVES=$CACHE/apt-archives
mkdir -p "$CACHE" "$ARCHIVES/partial"
WORK=$(mktemp -d /var/tmp/pvfs-package-test.XXXXXX)
ROOT=$WORK/root
NSPAWN_PID="" LEADER="" SLIRP_PID=""
STARTED=$(date +%s)
FAILURES=0

stop_container() {
    [ -n "$SLIRP_PID" ] && kill "$SLIRP_PID" 2>/dev/null
    SLIRP_PID=""
    [ -n "$NSPAWN_PID" ] || return 0
    kill "$NSPAWN_PID" 2>/dev/null   # nspawn asks the container's systemd to halt
    for _ in $(seq 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
    kill -9 "$NSPAWN_PID" 2>/dev/null
    wait "$NSPAWN_PID" 2>/dev/null
    NSPAWN_PID="" LEADER=""
}
cleanup() {
    stop_container
    if [ "$FAILURES" = 0 ]; then rm -rf "$WORK"; else echo "kept $WORK (console log: $WORK/console.log)" >&2; fi
}
trap cleanup EXIT

step() { printf '\n\033[1m-- %s\033[0m (%ss)\n' "$*" "$(($(date +%s) - STARTED))"; }
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*" >&2; FAILURES=$((FAILURES + 1)); }
check() { # check DESCRIPTION CMD...: runs CMD on the host side
    local what=$1; shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

# --- the Debian 12 host ---------------------------------------------------------------------
# A standard small server: debootstrap's default set (required + important, systemd as init)
# plus man-db, bash-completion and dbus, as a Debian install with "standard system utilities".
if [ ! -s "$BASE" ]; then
    step "debootstrap bookworm (cached in $BASE for later runs)"
    debootstrap --include=man-db,bash-completion,dbus bookworm "$WORK/base" http://deb.debian.org/debian \
        > "$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; echo "debootstrap failed" >&2; exit 1; }
    rm -f "$WORK/base/var/cache/apt/archives/"*.deb
    tar -C "$WORK/base" -czf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
    rm -rf "$WORK/base"
fi
step "fresh root from $BASE"
mkdir -p "$ROOT" && tar -C "$ROOT" -xzf "$BASE" || exit 1
echo pvfs-host > "$ROOT/etc/hostname"
echo "nameserver 10.0.2.3" > "$ROOT/etc/resolv.conf"   # slirp4netns' DNS forwarder
# The archive a Debian 12 host uses, security updates included (debootstrap sets only the release).
rm -f "$ROOT/etc/apt/sources.list"
cat > "$ROOT/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp "$PREVIOUS" "$CURRENT" "$ROOT/root/"
PREV_DEB=/root/$(basename "$PREVIOUS") CUR_DEB=/root/$(basename "$CURRENT")
PREV_VERSION=$(dpkg-deb -f "$PREVIOUS" Version) CUR_VERSION=$(dpkg-deb -f "$CURRENT" Version)

# Paths that change on any running system, whatever is installed: left out of the before/after
# comparison that proves purge leaves nothing behind.
snapshot() { # snapshot FILE: every path of the root's disk state
    (cd "$ROOT" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run -o -path ./tmp \
        -o -path ./var/tmp -o -path ./root -o -path ./var/log -o -path ./var/cache -o -path ./var/lib/apt \
        -o -path ./var/lib/dpkg -o -path ./var/lib/systemd -o -path ./var/lib/dbus \) -prune -o -print | sort) > "$1"
}
snapshot "$WORK/before.list"

# --- boot it ----------------------------------------------------------------------------------
boot() {
    # A network namespace of its own (the packaged pvfsd listens on fixed ports, which other
    # programs of this host may hold), reaching the Debian mirror through slirp4netns' user-mode
    # NAT; /dev/fuse for the FUSE mounts; the apt archive cache of earlier runs.
    # --register=no/--keep-unit: no machined on this host.
    systemd-nspawn -D "$ROOT" --register=no --keep-unit --quiet --private-network --resolv-conf=off \
        --bind=/dev/fuse --bind="$ARCHIVES:/var/cache/apt/archives" --boot > "$WORK/console.log" 2>&1 < /dev/null &
    NSPAWN_PID=$!
    local i child
    for i in $(seq 120); do
        for child in $(pgrep -P "$NSPAWN_PID"); do
            [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ] && LEADER=$child
        done
        [ -n "$LEADER" ] && break
        kill -0 "$NSPAWN_PID" 2>/dev/null || break
        sleep 0.5
    done
    [ -n "$LEADER" ] || { tail -20 "$WORK/console.log" >&2; echo "the container did not boot" >&2; return 1; }
    slirp4netns --configure --mtu=65520 --disable-host-loopback "$LEADER" eth0 > "$WORK/slirp.log" 2>&1 &
    SLIRP_PID=$!
    local state
    state=$(inside timeout 120 systemctl is-system-running --wait)
    case $state in running | degraded) ok "booted (systemd: $state)" ;; *) bad "systemd state: $state"; return 1 ;; esac
}
# The admin's root shell in the booted system.
inside() {
    (cd / && nsenter --target "$LEADER" --mount --uts --ipc --net --pid --cgroup --root \
        /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        TERM=dumb DEBIAN_FRONTEND=noninteractive /bin/sh -c 'cd /root && exec "$@"' inside "$@")
}
expect() { # expect DESCRIPTION SHELL-CODE: runs the code inside, as the admin
    if inside /bin/bash -c "$2" > "$WORK/out" 2>&1; then
        ok "$1"
    else
        bad "$1"
        sed 's/^/    /' "$WORK/out" | tail -25 >&2
    fi
}

step "boot the root (systemd-nspawn -b)"
boot || exit 1

expect "the network reaches the Debian mirror" "for i in \$(seq 20); do ip route | grep -q default && break; sleep 0.5; done; getent hosts deb.debian.org"

inside dpkg-query -W -f='${Package}\n' | sort > "$WORK/packages-before"

step "install $PREV_VERSION (apt-get install ./pvfs_...deb)"
expect "apt-get installs the package and its dependencies" \
    "apt-get update -qq && apt-get install -y -q $PREV_DEB > /root/install.log 2>&1 || { tail -30 /root/install.log; exit 1; }"
expect "dpkg has pvfs $PREV_VERSION installed" "[ \"\$(dpkg-query -W -f='\${Version} \${Status}' pvfs)\" = '$PREV_VERSION install ok installed' ]"
expect "recommended debootstrap and fuse3 came along" "dpkg-query -W debootstrap fuse3 >/dev/null"
expect "pvfsd.service is enabled and active" "systemctl is-enabled pvfsd && systemctl is-active pvfsd"
expect "the store /var/lib/pvfs exists, mode 0700" "[ \"\$(stat -c %a /var/lib/pvfs)\" = 700 ]"
expect "every command prints the version" \
    "v=\$(pvfs --version) && [ \"\$(pvfs-vm --version)\" = \"\$v\" ] && [ \"\$(pvfs-template --version)\" = \"\$v\" ] && [ \"\$(pvfsd --version)\" = \"\$v\" ] && echo \$v"
echo "    version printed: $(inside pvfs --version)"
expect "the binaries load no Swift runtime from the system" "! ldd /usr/bin/pvfs-vm | grep -q 'not found\|libswift'"

step "pvfs-template create debian12 (from a folder holding a bogus templates/)"
inside /bin/bash -c "mkdir -p /root/work/templates && echo 'suite nosuch' > /root/work/templates/debian12.recipe && echo 'bogus' > /root/work/templates/evil.recipe"
build_start=$(date +%s)
expect "the packaged debian12 recipe builds (debootstrap in the root)" "cd /root/work && pvfs-template create debian12"
echo "    template build took $(($(date +%s) - build_start)) s"
expect "the template came from /usr/share/pvfs/templates, not ./templates" \
    "pvfs-template show debian12 --json | grep -q 'recipe:/usr/share/pvfs/templates/debian12.recipe'"
expect "a recipe only ./templates has is not found" \
    "cd /root/work && out=\$(pvfs-template create evil 2>&1); rc=\$?; echo \"\$out\"; [ \$rc = 3 ] && ! echo \"\$out\" | grep -q /root/work"

step "pvfs-vm provision, pvfsd from its unit"
expect "provision runs the packaged hooks" \
    "pvfs-vm provision --template debian12 --quota-bytes 2G web1 --json > /root/provision.json && grep -q 10-hostname /root/provision.json && cat /root/provision.json"
expect "pvfs status reports the unit's pvfsd" \
    "pid=\$(systemctl show -P MainPID pvfsd) && pvfs status | tee /root/status.txt | grep -q \"^pvfsd: running, pid \$pid\$\""
expect "the 9P socket of the packaged configuration listens" "[ -S /run/pvfs/9p.sock ]"
# No VM is open yet, so the per-VM families have no series (and are left out); the configured
# limits are always there.
expect "metrics answer on 127.0.0.1:9641" \
    "exec 3<>/dev/tcp/127.0.0.1/9641 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && grep -q '^pvfs_limit{limit=\"max-connections-per-vm\"}' <&3"

step "the admin edits pvfsd.conf, restarts pvfsd, mounts the VM"
expect "pvfsd restarts with the edited configuration" \
    "sed -i 's/^janitor-interval = 3600$/janitor-interval = 600/' /etc/pvfs/pvfsd.conf && echo '# edited by the admin' >> /etc/pvfs/pvfsd.conf &&
     systemctl restart pvfsd && systemctl is-active pvfsd"
expect "pvfs-vm mount shows the VM's files (FUSE, hosted by pvfsd)" \
    "mkdir -p /mnt/web1 && pvfs-vm mount web1 /mnt/web1 && mountpoint -q /mnt/web1 && [ \"\$(cat /mnt/web1/etc/hostname)\" = web1 ] && [ -x /mnt/web1/bin/bash ]"
expect "a file written through the mount is there" \
    "echo 'written by the admin' > /mnt/web1/root/note && sync && [ \"\$(cat /mnt/web1/root/note)\" = 'written by the admin' ]"

step "man pages and completion"
expect "man pvfs-vm" "man -P cat pvfs-vm 2>&1 | grep -q 'pvfs-vm-provision'"
expect "man pvfs-vm-provision documents --template" "man -P cat pvfs-vm-provision 2>&1 | grep -q -- '--template'"
expect "man 8 pvfsd" "man -P cat 8 pvfsd 2>&1 | grep -q -- '--config'"
expect "whatis finds the subcommand pages" "whatis pvfs-template-create | grep -q 'Create a template'"
expect "bash completes 'pvfs-vm pro' to provision" \
    ". /usr/share/bash-completion/completions/pvfs-vm && COMP_WORDS=(pvfs-vm pro) COMP_CWORD=1 COMP_LINE='pvfs-vm pro' COMP_POINT=11 &&
     _pvfs-vm pvfs-vm pro pvfs-vm && [ \"\${COMPREPLY[*]}\" = provision ]"
expect "zsh and fish completions are where those shells look" \
    "[ -s /usr/share/zsh/vendor-completions/_pvfs-vm ] && [ -s /usr/share/fish/vendor_completions.d/pvfs-vm.fish ]"

step "upgrade to $CUR_VERSION"
old_pid=$(inside systemctl show -P MainPID pvfsd)
cp "$(dirname "$0")/9p-client.pl" "$ROOT/root/9p-client.pl"
expect "a 9P client attaches over the packaged socket and stays connected" \
    "pvfs-vm bind web1 --any >/dev/null && (setsid perl /root/9p-client.pl /run/pvfs/9p.sock web1 75 /root/9p-client.log >/dev/null 2>&1 &) &&
     for i in \$(seq 50); do grep -q attached /root/9p-client.log 2>/dev/null && exit 0; sleep 0.2; done; cat /root/9p-client.log; perl -c /root/9p-client.pl; exit 1"
expect "apt-get installs the new version over the old" \
    "apt-get install -y -q $CUR_DEB > /root/upgrade.log 2>&1 || { tail -30 /root/upgrade.log; exit 1; }"
expect "dpkg has pvfs $CUR_VERSION installed" "[ \"\$(dpkg-query -W -f='\${Version}' pvfs)\" = '$CUR_VERSION' ]"
expect "with the host mount up, the previous build serves on and says why" \
    "[ \"\$(systemctl show -P MainPID pvfsd)\" = '$old_pid' ] && grep -q 'keeps running the previous build' /root/upgrade.log &&
     grep -q 'host mount of web1' /root/upgrade.log && [ \"\$(cat /mnt/web1/root/note)\" = 'written by the admin' ] || { cat /root/upgrade.log; exit 1; }"
expect "once unmounted, pvfs upgrade hands pvfsd to the new build" \
    "pvfs-vm umount /mnt/web1 && pvfs upgrade && [ \"\$(systemctl show -P MainPID pvfsd)\" != '$old_pid' ] && systemctl is-active pvfsd &&
     pvfs status | grep -q 'took over: *from pvfs'"
expect "systemd follows the new main process" \
    "[ \"\$(systemctl show -P MainPID pvfsd)\" = \"\$(pvfs status --json | sed -n 's/^ *\"pid\" *: *\\([0-9]*\\).*/\\1/p' | head -1)\" ]"
expect "the 9P client connected through both saw no error" \
    "[ -e /root/9p-client.log ] || exit 1; for i in \$(seq 150); do grep -q '^done' /root/9p-client.log && break; sleep 1; done; tail -3 /root/9p-client.log; grep -q '^done ok=[1-9][0-9]* bad=0' /root/9p-client.log"
expect "the edited conffile is kept" "grep -q '^janitor-interval = 600$' /etc/pvfs/pvfsd.conf && grep -q 'edited by the admin' /etc/pvfs/pvfsd.conf && [ ! -e /etc/pvfs/pvfsd.conf.dpkg-new ]"
expect "the template, the VM and the admin's file are kept" \
    "pvfs-template list | grep -q debian12 && pvfs-vm list | grep -q web1 && pvfs-vm mount web1 /mnt/web1 &&
     [ \"\$(cat /mnt/web1/root/note)\" = 'written by the admin' ] && pvfs-vm umount /mnt/web1"
expect "pvfs fsck finds the store clean" "pvfs fsck"

step "apt-get remove"
# Template contents and VM files; the catalog is checked by using it after reinstalling.
store_data() { inside /bin/bash -c "find /var/lib/pvfs/blobs /var/lib/pvfs/vms -type f | sort | xargs -r sha256sum" > "$1" 2>/dev/null; }
store_data "$WORK/store-before-remove"
expect "apt-get remove pvfs" "apt-get remove -y -q pvfs > /root/remove.log 2>&1 || { cat /root/remove.log; exit 1; }"
expect "pvfsd is stopped and its binaries are gone" "! pgrep -x pvfsd && [ ! -e /usr/sbin/pvfsd ] && [ ! -e /usr/bin/pvfs-vm ] && ! systemctl is-active pvfsd"
expect "the conffile stays after remove" "grep -q 'edited by the admin' /etc/pvfs/pvfsd.conf"
store_data "$WORK/store-after-remove"
check "remove leaves the store's $(wc -l < "$WORK/store-before-remove") blob and VM files as they were" \
    cmp -s "$WORK/store-before-remove" "$WORK/store-after-remove"

step "apt-get purge, autoremove"
expect "apt-get purge pvfs keeps a store that holds a template and a VM, and says so" \
    "apt-get purge -y -q pvfs > /root/purge.log 2>&1 || { cat /root/purge.log; exit 1; }; grep 'store /var/lib/pvfs holds' /root/purge.log"
expect "apt-get autoremove --purge" "apt-get autoremove --purge -y -q > /root/autoremove.log 2>&1"
expect "dpkg no longer knows pvfs" "! dpkg-query -W pvfs 2>/dev/null"
expect "no conffile, unit, unit symlink or deb-systemd-helper state is left" \
    "[ ! -e /etc/pvfs ] && [ ! -e /lib/systemd/system/pvfsd.service ] &&
     [ -z \"\$(find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name 'pvfsd*' 2>/dev/null)\" ] &&
     ! systemctl cat pvfsd >/dev/null 2>&1"
store_data "$WORK/store-after-purge"
check "the store's blob and VM files survive purge unchanged" cmp -s "$WORK/store-before-remove" "$WORK/store-after-purge"

step "install again: the kept store is served as it was"
expect "apt-get install finds the kept store" "apt-get install -y -q $CUR_DEB > /root/install2.log 2>&1 && systemctl is-active pvfsd"
expect "the template, the VM and the admin's file are there" \
    "pvfs-template list | grep -q debian12 && pvfs-vm list | grep -q web1 && pvfs-vm mount web1 /mnt/web1 &&
     [ \"\$(cat /mnt/web1/root/note)\" = 'written by the admin' ] && pvfs-vm umount /mnt/web1 && pvfs fsck"
expect "the admin sets the used store aside and purges" \
    "apt-get purge -y -q pvfs > /root/purge2.log 2>&1 && mv /var/lib/pvfs /root/kept-store"

step "install and purge with an unused store"
expect "install: pvfsd creates an empty store" \
    "apt-get install -y -q $CUR_DEB > /root/install3.log 2>&1 && systemctl is-active pvfsd && [ -e /var/lib/pvfs/catalog.db ]"
expect "purge removes the unused store" \
    "apt-get purge -y -q pvfs > /root/purge3.log 2>&1 && apt-get autoremove --purge -y -q >/dev/null 2>&1 && [ ! -e /var/lib/pvfs ] && rmdir /mnt/web1"
# apt keeps some automatically installed packages (what other installed packages recommend or
# suggest: gnupg, ca-certificates, ...); purging those too must give back the root as it was.
inside dpkg-query -W -f='${Package}\n' | sort > "$WORK/packages-after"
extra=$(comm -13 "$WORK/packages-before" "$WORK/packages-after" | tr '\n' ' ')
echo "    still installed, kept by apt's autoremove policy: ${extra:-none}"
[ -z "$extra" ] || expect "purge the packages apt kept" "apt-get purge -y -q $extra > /root/purge-extra.log 2>&1"
stop_container
snapshot "$WORK/after.list"
if diff "$WORK/before.list" "$WORK/after.list" > "$WORK/left.diff"; then
    ok "the root is as it was before the first install (apart from logs, caches and package state)"
else
    bad "paths differ from before the install:"
    sed 's/^/    /' "$WORK/left.diff" | head -40 >&2
fi

step "done"
echo "$FAILURES failure(s) in $(($(date +%s) - STARTED)) s"
[ "$FAILURES" = 0 ]
