#!/usr/bin/env python3
"""Measures what each attack of the security issue costs a relay process (docs/security.md).

    .venv/bin/python Benchmarks/relay_attacks.py [path/to/hyrelay]

Starts a relay on 127.0.0.1 and prints, per attack, what the relay did and what it cost: exit status,
response times, descriptors held, resident memory, CPU. Runs against any build, so a fix can be shown
beside the code before it.
"""
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "Conformance"))
import agents  # noqa: E402
import hc  # noqa: E402
from conftest import free_port  # noqa: E402
from test_security import upgrade_head as upgrade  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".build", "debug", "hyrelay")


class Relay:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="attacks-")
        config = os.path.join(self.dir, "relay.yaml")
        with open(config, "w") as f:
            f.write("listen: \"127.0.0.1:%d\"\nnamespaceRules:\n  - {keyName: %s, primaryKey: \"%s\", rights: [Listen, Send]}\n"
                    "hybridConnections:\n  - name: hyco\n  - name: open\n    requiresClientAuthorization: false\n"
                    % (self.port, hc.KEY_NAME, hc.KEY))
        env = dict(os.environ, HYRELAY_STATE_DIR=self.dir)
        self.process = subprocess.Popen([BINARY, "relay", "--config", config, "--log-level", "error"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("relay did not start")

    def status(self):
        code = self.process.poll()
        return "running" if code is None else "exited %d" % code

    def rss_mib(self):
        return agents.rss(self.process.pid) / (1 << 20)

    def fds(self):
        return agents.fds(self.process.pid)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def first_line(port, data, timeout=120):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(data)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.split(b"\r\n")[0].decode(errors="replace")[:60] or "(closed)"
    except OSError as error:
        return "(%s)" % error.__class__.__name__
    finally:
        sock.close()


def token_overflow():
    relay = Relay()
    token = hc.sas_token("http://127.0.0.1/hyco/", expiry=2 ** 63 - 1)
    line = first_line(relay.port, upgrade("/$hc/hyco", "ServiceBusAuthorization: %s\r\n" % token))
    time.sleep(0.5)
    print("1. se = Int64.max: answer %r, relay %s" % (line, relay.status()))
    relay.stop()


def long_targets():
    relay = Relay()
    for segments in (5000, 8000, 20000):
        target = "/$hc" + "/a" * segments
        started = time.time()
        line = first_line(relay.port, upgrade(target))
        print("2. %d-segment target (%d bytes): %.2f s, %r" % (segments, len(target), time.time() - started, line))
    relay.stop()


def bodies_on_upgrades(count=2000):
    relay = Relay()
    before = relay.fds()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        sock.sendall(upgrade("/$hc/open", "Content-Length: 100000\r\n"))
        sockets.append(sock)
    time.sleep(12)  # past the 10 s handshake deadline
    print("3. %d upgrades declaring a body: descriptors held after 12 s: %d (baseline %d)"
          % (count, relay.fds() - before, before))
    for sock in sockets:
        sock.close()
    relay.stop()


def pings_without_reading(megabytes=64):
    relay = Relay()

    async def accept_one():
        control = await connect(hc.listen_uri("ws://127.0.0.1:%d" % relay.port, "open"), ping_interval=None,
                                additional_headers={"ServiceBusAuthorization": hc.sas_token("http://127.0.0.1/open/")})
        _, accept = hc.parse_control(await control.recv())
        return control, await connect(accept["address"])

    loop = asyncio.new_event_loop()
    task = loop.create_task(accept_one())
    loop.run_until_complete(asyncio.sleep(0.3))
    attacker = socket.socket()
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    attacker.connect(("127.0.0.1", relay.port))
    attacker.sendall(upgrade("/$hc/open"))
    threading.Thread(target=lambda: attacker.recv(4096), daemon=True).start()
    control, rendezvous = loop.run_until_complete(task)
    before = relay.rss_mib()
    chunk = (bytes([0x89, 0xFD]) + b"\x00" * 4 + b"p" * 125) * 8000
    for _ in range(megabytes * 1024 * 1024 // len(chunk)):
        attacker.sendall(chunk)
    time.sleep(2)
    print("4. %d MB of pings, never reading: relay RSS %.0f -> %.0f MiB" % (megabytes, before, relay.rss_mib()))
    attacker.close()
    loop.run_until_complete(rendezvous.close())
    loop.run_until_complete(control.close())
    loop.close()
    relay.stop()


if __name__ == "__main__":
    print("binary:", os.path.realpath(BINARY))
    token_overflow()
    long_targets()
    bodies_on_upgrades()
    pings_without_reading()
