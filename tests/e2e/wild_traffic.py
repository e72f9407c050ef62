"""Traffic from the wild, made for real between two lab namespaces (stdlib only; run inside one).

    python3 wild_traffic.py serve HOST     # prints "ready", serves until stdin closes
    python3 wild_traffic.py client HOST    # runs every case once, prints a JSON summary

The cases (ports from HOST's side):
- 7001/udp: a reply of 4,000 bytes to each request (more than one MTU: the kernel sends IP fragments),
  and requests of 3,000 bytes (fragmented on the way in too);
- 7002/tcp: a connection left idle with TCP_KEEPIDLE/INTVL of 1 s, so the client's kernel sends
  keep-alives and the server's acknowledges them;
- 7003/tcp: the server closes with SO_LINGER 0: a RST instead of a FIN;
- 7004/tcp: 100 KB from the server, for the test's nftables rule to lose some of on the way.
"""
from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import threading
import time

UDP_BIG, KEEPALIVE, RESET, BULK = 7001, 7002, 7003, 7004
REPLY = 4000
BULK_BYTES = 100_000


def serve(host: str) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, UDP_BIG))
    servers = {port: socket.create_server((host, port)) for port in (KEEPALIVE, RESET, BULK)}

    def udp_loop() -> None:
        while True:
            _, addr = udp.recvfrom(65535)
            udp.sendto(b"r" * REPLY, addr)

    def keepalive(conn: socket.socket) -> None:
        conn.settimeout(30)
        with contextlib.suppress(OSError):
            conn.recv(16)           # until the client closes
        conn.close()

    def reset(conn: socket.socket) -> None:
        conn.recv(16)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def bulk(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"b" * BULK_BYTES)

    def accept_loop(port: int, handle) -> None:
        while True:
            conn, _ = servers[port].accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=udp_loop, daemon=True).start()
    for port, handle in ((KEEPALIVE, keepalive), (RESET, reset), (BULK, bulk)):
        threading.Thread(target=accept_loop, args=(port, handle), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def client(host: str) -> dict:
    out: dict = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        got = []
        for size in (10, 3000, 10):
            s.sendto(b"q" * size, (host, UDP_BIG))
            try:
                got.append(len(s.recv(65535)))
            except socket.timeout:
                got.append(0)
        out["udp_replies"] = got
    with socket.create_connection((host, KEEPALIVE), timeout=5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        s.sendall(b"hello")
        time.sleep(3.6)             # idle: keep-alives at about 1, 2 and 3 s
    out["keepalive"] = "done"
    with socket.create_connection((host, RESET), timeout=5) as s:
        s.sendall(b"bye")
        try:
            out["reset"] = "eof" if not s.recv(16) else "data"
        except ConnectionResetError:
            out["reset"] = "reset"
    with socket.create_connection((host, BULK), timeout=30) as s:
        n = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            n += len(chunk)
        out["bulk"] = n
    return out


if __name__ == "__main__":
    mode, where = sys.argv[1], sys.argv[2]
    if mode == "serve":
        serve(where)
    else:
        print(json.dumps(client(where)), flush=True)
