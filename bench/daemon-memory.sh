#!/bin/bash
# bench/daemon-memory.sh: pvfsd's resident memory, idle, with many VMs configured, with clients.
#
# One store, a tiny template (scripts/lib/make-tiny-tree.sh) or a tree given with --tree (a Debian
# root, say, from debootstrap --variant=minbase), then:
#   1. pvfsd serving the store with no VM                       -> RSS idle
#   2. VMS VMs provisioned from the template and bound to the daemon's listener, picked up live
#      (control socket), then the daemon restarted over them    -> RSS with VMS configured
#   3. CLIENTS 9P2000.L clients (bench/9p-hold-clients.py) connected at once, each attached to a
#      different VM, holding a walked fid and an open file (--file: /etc/config of the tiny
#      tree, /etc/debian_version of a --tree; one read done)
#                                                               -> RSS with 1 and with CLIENTS connected
#   4. the clients gone                                         -> RSS after they leave
# Per-connection cost = (RSS with CLIENTS - RSS with 1) / (CLIENTS - 1): the first connection
# also pays one-time costs (the VM's engine state, worker threads), reported separately.
# RSS is VmRSS from /proc/PID/status, read after the daemon settled (2 s).
#
# usage: bench/daemon-memory.sh [--vms N] [--clients N] [--transport tcp|unix] [--work DIR]
#                               [--tree DIR] [--file PATH]
# Environment: PVFSD / PVFS_VM_BIN / PVFS_TEMPLATE_BIN (default .build/release, built if missing).
# Needs python3; no guest and no 9p in the host kernel.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VMS=100 CLIENTS=10 TRANSPORT=tcp WORK="" TREE="" FILE=""
while [ $# -gt 0 ]; do
    case $1 in
    --vms) VMS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --transport) TRANSPORT=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --tree) TREE=$2; shift 2 ;;
    --file) FILE=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$CLIENTS" -ge 2 ] && [ "$CLIENTS" -le "$VMS" ] || { echo "need 2 <= --clients <= --vms" >&2; exit 2; }

BIN=$REPO/.build/release
if [ -z "${PVFSD:-}" ] || [ -z "${PVFS_VM_BIN:-}" ] || [ -z "${PVFS_TEMPLATE_BIN:-}" ]; then
    if [ ! -x "$BIN/pvfsd" ] || [ ! -x "$BIN/pvfs-vm" ] || [ ! -x "$BIN/pvfs-template" ]; then
        (cd "$REPO" && PATH=/opt/swift/usr/bin:$PATH swift build -c release >&2)
    fi
fi
PVFSD=${PVFSD:-$BIN/pvfsd}
VM=${PVFS_VM_BIN:-$BIN/pvfs-vm}
TEMPLATE=${PVFS_TEMPLATE_BIN:-$BIN/pvfs-template}

W=${WORK:-$(mktemp -d /var/tmp/pvfs-memory.XXXXXX)}
mkdir -p "$W"
DAEMON=""
HOLDER=""
exec 9>/dev/null
cleanup() {
    [ -n "$HOLDER" ] && kill "$HOLDER" 2>/dev/null || true
    if [ -n "$DAEMON" ]; then kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; fi
    [ -z "$WORK" ] && rm -rf "$W"
    return 0
}
trap cleanup EXIT
log() { printf '[memory %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

export PVFS_STORE=$W/store
if [ -n "$TREE" ]; then
    TEMPLATE_NAME=$(basename "$TREE")
    FILE=${FILE:-/etc/debian_version}
    "$TEMPLATE" create "$TEMPLATE_NAME" --from "$TREE" -q >/dev/null
else
    TEMPLATE_NAME=tiny
    FILE=${FILE:-/etc/config}
    "$REPO/scripts/lib/make-tiny-tree.sh" "$W/tree"
    "$TEMPLATE" create tiny --from "$W/tree" -q >/dev/null
fi

if [ "$TRANSPORT" = tcp ]; then
    PORT=$((20000 + RANDOM % 20000))
    ADDRESS=tcp:127.0.0.1:$PORT
else
    ADDRESS=unix:$W/9p.sock
fi

start_daemon() {
    "$PVFSD" --store "$PVFS_STORE" --listen "mem=$ADDRESS" --log-level warning 2>>"$W/pvfsd.log" &
    DAEMON=$!
    for _ in $(seq 100); do
        if [ "$TRANSPORT" = tcp ]; then (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        else [ -S "$W/9p.sock" ] && break; fi
        kill -0 "$DAEMON" 2>/dev/null || { cat "$W/pvfsd.log" >&2; exit 1; }
        sleep 0.1
    done
}
stop_daemon() { kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=""; }
rss() { sleep 2; awk '/^VmRSS/ { print $2 }' "/proc/$DAEMON/status"; }
threads() { awk '/^Threads/ { print $2 }' "/proc/$DAEMON/status"; }

start_daemon
RSS_IDLE=$(rss) THR_IDLE=$(threads)
log "idle: $RSS_IDLE KiB, $THR_IDLE threads"

log "provisioning $VMS VMs"
for i in $(seq 1 "$VMS"); do
    "$VM" provision --template "$TEMPLATE_NAME" -q "vm$i" >/dev/null 2>>"$W/provision.log"
    "$VM" bind "vm$i" --listener mem -q >/dev/null
done
RSS_LIVE=$(rss)
stop_daemon
start_daemon
RSS_CONF=$(rss) THR_CONF=$(threads)
log "$VMS configured: $RSS_CONF KiB after a restart ($RSS_LIVE KiB when added live)"

# Clients: one first, then the rest, each on its own VM; every holder keeps its connections
# until its stdin (a fifo held open here) closes.
mkfifo "$W/hold1" "$W/hold2"
python3 "$REPO/bench/9p-hold-clients.py" "$ADDRESS" "$FILE" vm1 <"$W/hold1" >"$W/ready1" &
H1=$!
exec 7>"$W/hold1"
for _ in $(seq 300); do grep -q READY "$W/ready1" 2>/dev/null && break; kill -0 $H1 2>/dev/null || exit 1; sleep 0.1; done
RSS_ONE=$(rss)
VMLIST=$(seq -f 'vm%g' 2 "$CLIENTS" | tr '\n' ' ')
# shellcheck disable=SC2086
python3 "$REPO/bench/9p-hold-clients.py" "$ADDRESS" "$FILE" $VMLIST <"$W/hold2" >"$W/ready2" &
H2=$!
exec 8>"$W/hold2"
for _ in $(seq 300); do grep -q READY "$W/ready2" 2>/dev/null && break; kill -0 $H2 2>/dev/null || exit 1; sleep 0.1; done
RSS_ALL=$(rss) THR_ALL=$(threads)
CONNS=$(ls -l "/proc/$DAEMON/fd" 2>/dev/null | grep -c socket || true)
log "$CLIENTS connected: $RSS_ALL KiB, $THR_ALL threads, $CONNS sockets"
exec 7>&- 8>&-
wait $H1 $H2 || { echo "a client failed" >&2; exit 1; }
RSS_AFTER=$(rss)

echo
echo "pvfsd resident memory ($TRANSPORT, template $TEMPLATE_NAME; VmRSS in MiB)"
python3 - "$RSS_IDLE" "$RSS_CONF" "$RSS_LIVE" "$RSS_ONE" "$RSS_ALL" "$RSS_AFTER" "$VMS" "$CLIENTS" "$THR_IDLE" "$THR_CONF" "$THR_ALL" <<'EOF'
import sys
idle, conf, live, one, every, after = (int(x) / 1024 for x in sys.argv[1:7])
vms, clients = int(sys.argv[7]), int(sys.argv[8])
t_idle, t_conf, t_all = sys.argv[9:12]
rows = [
    ("idle (store with the template, no VM)", f"{idle:.1f}", t_idle),
    (f"{vms} VMs configured (fresh start)", f"{conf:.1f}", t_conf),
    (f"{vms} VMs configured (added live)", f"{live:.1f}", ""),
    ("1 client connected", f"{one:.1f}", ""),
    (f"{clients} clients connected", f"{every:.1f}", t_all),
    ("clients gone", f"{after:.1f}", ""),
]
print(f"{'state':<40} | {'RSS MiB':>8} | threads")
print("-" * 62)
for name, value, threads in rows:
    print(f"{name:<40} | {value:>8} | {threads}")
print(f"per configured VM: {(conf - idle) * 1024 / vms:.1f} KiB")
print(f"first connection: {(one - conf) * 1024:.0f} KiB; each further one: {(every - one) * 1024 / (clients - 1):.0f} KiB")
EOF
