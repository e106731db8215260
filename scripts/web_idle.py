#!/usr/bin/env python3
"""What an idle logged-in connection costs the server, over TCP and over the WebSocket.

Opens N connections to a running chat-server on loopback (TCP on TCP_PORT, the web
listener on WEB_PORT), registers and logs each in (modes `tcp`, `ws`) or only connects
(`tcponly`; `wsonly` upgrades), keeps them open and idle, and prints the growth of the
server's RSS (PID) divided by N. Start the server with `--max-conns-per-addr 0
--login-rate 0 --register-rate 0` (all clients come from 127.0.0.1) and cheap hashing,
for example:

    chat-server --listen 127.0.0.1:18940 --web-listen 127.0.0.1:18941 --data /tmp/d \\
        --argon2-memory-kib 64 --argon2-passes 1 --max-conns-per-addr 0 --login-rate 0 \\
        --register-rate 0
    ulimit -n 10000; scripts/web_idle.py ws 1000 18940 18941 $(pgrep -f 18940)

Run each mode against a fresh server (user ids are fixed per mode).
"""
import json
import os
import socket
import struct
import sys
import time

mode, n = sys.argv[1], int(sys.argv[2])
tcp_port, web_port, pid = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no such process")


def envelope(kind, inner):
    return json.dumps({"type": kind, "data": json.dumps(inner)}).encode()


def ws_frame(payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def recv_exact(s, n):
    return s.recv(n, socket.MSG_WAITALL)


def recv_ws(s):
    head = recv_exact(s, 2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", recv_exact(s, 8))[0]
    return json.loads(recv_exact(s, n))


def recv_tcp(s):
    n = struct.unpack(">I", recv_exact(s, 4))[0]
    return json.loads(recv_exact(s, n))


def upgrade(s):
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    got = b""
    while not got.endswith(b"\r\n\r\n"):
        got += s.recv(1)


socks = []
before = rss_kib()
for i in range(n):
    uid = (100000 if mode.startswith("tcp") else 600000) + i
    port = tcp_port if mode.startswith("tcp") else web_port
    s = socket.create_connection(("127.0.0.1", port))
    socks.append(s)
    if mode.startswith("ws"):
        upgrade(s)
        send, recv = (lambda b, s=s: s.sendall(ws_frame(b))), recv_ws
    else:
        send, recv = (lambda b, s=s: s.sendall(struct.pack(">I", len(b)) + b)), recv_tcp
    if mode.endswith("only"):
        continue
    send(envelope("RegisterMes", {"user": {"userId": uid, "userPwd": "pw", "userName": f"u{uid}"}}))
    while recv(s)["type"] != "RegisterResMes":
        pass
    send(envelope("LoginMes", {"userId": uid, "userPwd": "pw", "maxFrame": 1 << 20}))
    while recv(s)["type"] != "LoginResMes":
        pass
# The server gives freed memory back every 2 s: read RSS after that.
time.sleep(3)
after = rss_kib()
print(f"{mode}: {n} idle connections: RSS {before} -> {after} KiB, "
      f"{(after - before) * 1024 / n:.0f} bytes each")
