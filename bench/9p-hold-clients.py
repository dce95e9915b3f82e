#!/usr/bin/env python3
"""bench/9p-hold-clients.py: open 9P2000.L connections and hold them (for bench/daemon-memory.sh).

    9p-hold-clients.py ADDRESS PATH VM [VM...]

ADDRESS is tcp:HOST:PORT or unix:PATH. For each VM one connection: Tversion (msize 262144),
Tattach (aname = the VM, uid 0), Twalk to PATH (slash-separated, from the root) on a new fid,
Tlopen read-only and a Tread of its first bytes. When every connection holds its open file the
script prints "READY <n>" and keeps them until its standard input closes, then clunks and exits.
Exit status 1 when a server answers Rlerror.
"""
import socket
import struct
import sys

NOFID = 0xFFFFFFFF
RLERROR = 7


def pstr(s):
    b = s.encode()
    return struct.pack("<H", len(b)) + b


class Conn:
    def __init__(self, address):
        kind, _, rest = address.partition(":")
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            self.sock = socket.create_connection((host.strip("[]"), int(port)))
        elif kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(rest)
        else:
            raise SystemExit(f"bad address {address}")
        self.tag = 0

    def rpc(self, mtype, body):
        self.tag = (self.tag + 1) % 0xFFFF
        tag = 0xFFFF if mtype == 100 else self.tag
        self.sock.sendall(struct.pack("<IBH", 7 + len(body), mtype, tag) + body)
        head = self._read(7)
        size, rtype, rtag = struct.unpack("<IBH", head)
        payload = self._read(size - 7)
        if rtag != tag:
            raise SystemExit(f"tag mismatch {rtag} != {tag}")
        if rtype == RLERROR:
            raise SystemExit(f"Rlerror {struct.unpack('<I', payload[:4])[0]} for message type {mtype}")
        if rtype != mtype + 1:
            raise SystemExit(f"unexpected reply type {rtype} to {mtype}")
        return payload

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise SystemExit("connection closed by the server")
            data += chunk
        return data


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    address, path, vms = sys.argv[1], sys.argv[2], sys.argv[3:]
    names = [p for p in path.split("/") if p]
    conns = []
    for vm in vms:
        c = Conn(address)
        c.rpc(100, struct.pack("<I", 262144) + pstr("9P2000.L"))                                  # Tversion
        c.rpc(104, struct.pack("<II", 0, NOFID) + pstr("root") + pstr(vm) + struct.pack("<I", 0))  # Tattach
        c.rpc(110, struct.pack("<IIH", 0, 1, len(names)) + b"".join(pstr(n) for n in names))       # Twalk
        c.rpc(12, struct.pack("<II", 1, 0))                                                        # Tlopen O_RDONLY
        data = c.rpc(116, struct.pack("<IQI", 1, 0, 64))                                           # Tread
        if struct.unpack("<I", data[:4])[0] == 0:
            raise SystemExit(f"{vm}: empty read of {path}")
        conns.append(c)
    print(f"READY {len(conns)}", flush=True)
    sys.stdin.read()
    for c in conns:
        c.rpc(120, struct.pack("<I", 1))  # Tclunk
        c.sock.close()


if __name__ == "__main__":
    main()
