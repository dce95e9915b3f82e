#!/bin/bash
# bench/upgrade-pause.sh: what a 9P client sees while pvfsd is replaced, side by side:
#   restart: SIGTERM, then a new pvfsd started (what a package upgrade did before `pvfs upgrade`):
#            every client loses its connection; measured is the time from the stop until a
#            fresh connection is attached again (the client must also remount);
#   upgrade: `pvfs upgrade`: measured is the longest gap between two answers of a client that
#            sends Tgetattr in a loop the whole time, on a connection that stays open.
# CLIENTS other connections each hold FIDS walked fids and an open file, so that the hand-over
# carries real sessions. Each mode runs ROUNDS times; medians are printed with their ratio.
#
# usage: bench/upgrade-pause.sh [--clients N] [--fids N] [--rounds N] [--work DIR]
# Environment: PVFSD / PVFS_BIN / PVFS_VM_BIN / PVFS_TEMPLATE_BIN (default: the newer of
# .build/release and .build/debug). Needs python3.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=50 FIDS=10 ROUNDS=5 WORK=""
while [ $# -gt 0 ]; do
    case $1 in
    --clients) CLIENTS=$2; shift 2 ;;
    --fids) FIDS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
# The newer of the release and debug builds (a stale one would measure old code).
BUILD=$REPO/.build/release
if [ ! -x "$BUILD/pvfsd" ] || [ "$REPO/.build/debug/pvfsd" -nt "$BUILD/pvfsd" ]; then BUILD=$REPO/.build/debug; fi
PVFSD=${PVFSD:-$BUILD/pvfsd} PVFS=${PVFS_BIN:-$BUILD/pvfs}
PVFS_VM=${PVFS_VM_BIN:-$BUILD/pvfs-vm} PVFS_TEMPLATE=${PVFS_TEMPLATE_BIN:-$BUILD/pvfs-template}
WORK=${WORK:-$(mktemp -d /var/tmp/pvfs-upgrade-bench.XXXXXX)}
STORE=$WORK/store SOCK=$WORK/9p.sock
mkdir -p "$WORK"
"$REPO/scripts/lib/make-tiny-tree.sh" "$WORK/tree" >/dev/null
"$PVFS_TEMPLATE" create tiny --from "$WORK/tree" --store "$STORE" >/dev/null
"$PVFS_VM" provision --template tiny --no-hooks vm1 --store "$STORE" >/dev/null
"$PVFS_VM" bind vm1 --any --store "$STORE" >/dev/null

start_daemon() {
    "$PVFSD" --store "$STORE" --listen "unix:$SOCK" --quiet >>"$WORK/pvfsd.log" 2>&1 &
    for _ in $(seq 1 200); do [ -S "$SOCK" ] && "$PVFS" status --store "$STORE" >/dev/null 2>&1 && return; sleep 0.05; done
    echo "pvfsd did not start" >&2; exit 1
}
daemon_pid() { "$PVFS" status --json --store "$STORE" | sed -n 's/^ *"pid" *: *\([0-9]*\).*/\1/p' | head -1; }
stop_daemon() {
    local pid; pid=$(daemon_pid || true)
    [ -n "$pid" ] && [ "$pid" -gt 0 ] && kill "$pid" && while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
    return 0
}

cat >"$WORK/client.py" <<'PY'
import socket, struct, sys, time, threading, subprocess
sock, clients, fids, mode, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
cmd = sys.argv[6:]
def msg(t, tag, body): return struct.pack('<IBH', len(body) + 7, t, tag) + body
def st(b): return struct.pack('<H', len(b)) + b
def rpc(s, m):
    s.sendall(m)
    head = b''
    while len(head) < 4:
        c = s.recv(4 - len(head))
        if not c: raise ConnectionError
        head += c
    n = struct.unpack('<I', head)[0] - 4
    body = b''
    while len(body) < n:
        c = s.recv(n - len(body))
        if not c: raise ConnectionError
        body += c
    if body[0] == 7: raise OSError('Rlerror')
    return body
def attach():
    s = socket.socket(socket.AF_UNIX); s.connect(sock)
    rpc(s, msg(100, 0xffff, struct.pack('<I', 65536) + st(b'9P2000.L')))
    rpc(s, msg(104, 1, struct.pack('<II', 0, 0xffffffff) + st(b'') + st(b'vm1') + struct.pack('<I', 0)))
    return s
held = []
for c in range(clients):
    s = attach()
    for f in range(1, fids + 1):
        rpc(s, msg(110, 2, struct.pack('<IIH', 0, f, 0)))
    rpc(s, msg(12, 3, struct.pack('<II', 1, 0)))  # Tlopen fid 1 O_RDONLY (the root directory)
    held.append(s)
getattr_msg = msg(24, 5, struct.pack('<IQ', 0, 0x3fff))
results = []
for r in range(rounds):
    if mode == 'upgrade':
        probe = attach()
        gaps = []; stop = threading.Event()
        def loop():
            last = time.monotonic(); worst = 0.0
            while not stop.is_set():
                rpc(probe, getattr_msg)
                now = time.monotonic(); worst = max(worst, now - last); last = now
            gaps.append(worst)
        t = threading.Thread(target=loop, daemon=True); t.start()
        time.sleep(0.5)
        try:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        finally:
            time.sleep(0.5); stop.set()
        t.join()
        for s in held: rpc(s, getattr_msg)   # every held connection still answers
        results.append(gaps[0])
        probe.close()
    else:
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        while True:
            try:
                s = attach(); rpc(s, getattr_msg); s.close(); break
            except (OSError, ConnectionError):
                time.sleep(0.002)
        results.append(time.monotonic() - t0)
results.sort()
print('%.4f %.4f' % (results[len(results) // 2], results[-1]))
PY

cat >"$WORK/restart.sh" <<EOF2
#!/bin/bash
pid=\$("$PVFS" status --json --store "$STORE" | sed -n 's/^ *"pid" *: *\([0-9]*\).*/\1/p' | head -1)
kill "\$pid"; while kill -0 "\$pid" 2>/dev/null; do sleep 0.005; done
"$PVFSD" --store "$STORE" --listen "unix:$SOCK" --quiet >>"$WORK/pvfsd.log" 2>&1 &
EOF2
chmod +x "$WORK/restart.sh"

start_daemon
read -r up_med up_max < <(python3 "$WORK/client.py" "$SOCK" "$CLIENTS" "$FIDS" upgrade "$ROUNDS" "$PVFS" upgrade --store "$STORE")
stop_daemon
start_daemon
# The restart mode's held clients lose their connections at the first round; that is the point.
read -r re_med re_max < <(python3 "$WORK/client.py" "$SOCK" 0 0 restart "$ROUNDS" "$WORK/restart.sh")
stop_daemon
printf '%-44s %12s %12s\n' "pvfsd replaced under clients ($(basename "$(dirname "$PVFSD")"))" "median s" "max s"
printf '%-44s %12s %12s\n' "restart: stop to first answer (conn. lost)" "$re_med" "$re_max"
printf '%-44s %12s %12s\n' "pvfs upgrade: longest gap ($CLIENTS conns kept)" "$up_med" "$up_max"
python3 -c "import sys; print('ratio upgrade/restart (median): %.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$up_med" "$re_med"
echo "work: $WORK"
