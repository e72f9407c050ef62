"""Real traffic for the analysis tests, run as a script inside a network namespace (stdlib only).

    python3 test_analyse_traffic.py serve HOST TCP_PORT REQ_PORT UDP_PORT   # until stdin closes
    python3 test_analyse_traffic.py clients HOST TCP_PORT REQ_PORT UDP_PORT CLOSED_PORT N

``serve`` runs the exercise's servers in miniature (TCP: the time on accept, then close; TCP request:
answer "GET TIME"; UDP: answer each datagram) and prints "ready". ``clients`` makes N of each kind of
call, one TCP connection to CLOSED_PORT (refused) and one datagram to it, and prints a JSON summary.
(Named test_analyse_* to live in the analysis tests' room; pytest finds no tests in it.)
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time


def _now() -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()).encode()


def serve(host: str, tcp_port: int, req_port: int, udp_port: int) -> None:
    tcp = socket.create_server((host, tcp_port))
    req = socket.create_server((host, req_port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, udp_port))

    def tcp_loop():
        while True:
            conn, _ = tcp.accept()
            with conn:
                conn.sendall(_now())

    def req_loop():
        while True:
            conn, _ = req.accept()
            with conn:
                conn.settimeout(5)
                try:
                    if conn.recv(512).startswith(b"GET TIME"):
                        conn.sendall(_now())
                except OSError:
                    pass

    def udp_loop():
        while True:
            data, addr = udp.recvfrom(512)
            udp.sendto(_now()[:3 * len(data)], addr)

    for f in (tcp_loop, req_loop, udp_loop):
        threading.Thread(target=f, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def _tcp(host: str, port: int, request: bytes = b"") -> str:
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            if request:
                s.sendall(request)
            data = b""
            while True:
                chunk = s.recv(512)
                if not chunk:
                    return "ok" if data else "empty"
                data += chunk
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc}"


def _udp(host: str, port: int, timeout: float) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"GET TIME\n", (host, port))
        try:
            return "ok" if s.recv(512) else "empty"
        except socket.timeout:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"


def clients(host: str, tcp_port: int, req_port: int, udp_port: int, closed: int, n: int) -> None:
    res = {"tcp": [], "req": [], "udp": [], "refused_tcp": None, "closed_udp": None}
    for _ in range(n):
        res["tcp"].append(_tcp(host, tcp_port))
        res["req"].append(_tcp(host, req_port, b"GET TIME\n"))
        res["udp"].append(_udp(host, udp_port, 0.5))
    res["refused_tcp"] = _tcp(host, closed)
    res["closed_udp"] = _udp(host, closed, 0.3)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], *map(int, sys.argv[3:6]))
    else:
        clients(sys.argv[2], *map(int, sys.argv[3:8]))
