#!/usr/bin/env python3
"""Heap allocations and CPU time of relay, edge and client, per tunnel set-up and per 64 MiB moved.

    .venv/bin/python Benchmarks/allocations/measure.py NAME=path/to/hyrelay [NAME=path …] [--tunnels N] [--runs R]

Each build runs the three roles on 127.0.0.1 (one event-loop thread each, no export, default logging) with
`alloc_counter.so` preloaded, which counts every malloc, calloc, realloc and aligned allocation; the counts
are read between phases with SIGUSR2. Counts are exact, so two builds compare on this noisy machine where
timings do not; CPU time (utime + stime from /proc, 10 ms ticks) is given beside them as a rougher figure.
Log lines, timers and how the kernel splits the stream into reads move the counts by about 1 % from run to
run, so the builds run R times, interleaved, and the table gives each figure's median. Results go to
Benchmarks/results/allocations.json and a Markdown table to standard output (docs/performance.md).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "Conformance"))
import agents  # noqa: E402
import hc  # noqa: E402
from conftest import free_port  # noqa: E402

MOVED = 64 << 20
WARM_UP = 20


def build_counter(directory):
    library = os.path.join(directory, "alloc_counter.so")
    subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", library, os.path.join(HERE, "alloc_counter.c"),
                    "-ldl"], check=True)
    return library


class Counted:
    """A role started with the allocation counter; `snapshot()` returns (allocations, bytes, cpu seconds)."""

    def __init__(self, args, directory, name, library):
        self.file = os.path.join(directory, name + ".counts")
        environment = dict(os.environ, LD_PRELOAD=library, ALLOC_COUNTER_FILE=self.file,
                           HYRELAY_STATE_DIR=directory)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environment)
        try:
            self.process = agents.Process(args, os.path.join(directory, name + ".log"))
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def snapshot(self):
        lines = self._lines()
        self.process.popen.send_signal(12)  # SIGUSR2
        deadline = time.time() + 5
        while len(self._lines()) == len(lines):
            assert time.time() < deadline, "no count from " + self.file
            time.sleep(0.01)
        allocations, allocated = map(int, self._lines()[-1].split())
        return allocations, allocated, agents.cpu_seconds(self.process.popen.pid)

    def _lines(self):
        try:
            with open(self.file) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


def one_byte_tunnel(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"x")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b"x"


def move(port, count):
    """Sends `count` bytes in one tunnel to a target that reads to EOF and answers with a summary."""
    chunk = b"m" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sent = 0
        while sent < count:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        answer = hc.read_to_end(sock, 65536)
        assert answer.split()[0] == str(count).encode(), answer


def measure(binary, tunnels, library):
    os.environ["HYRELAY_BIN"] = binary
    directory = tempfile.mkdtemp(prefix="allocations-")
    common = ["--threads", "1", "--no-export"]
    relay_port = free_port()
    url = "ws://127.0.0.1:%d" % relay_port
    echo, sink = agents.TcpServer("echo"), agents.TcpServer("reply")
    echo_port, sink_port = free_port(), free_port()
    roles = {}
    try:
        roles["relay"] = Counted(
            ["relay", "--listen", "127.0.0.1:%d" % relay_port, "--hybrid-connection", "bench", "--sas-key-name",
             agents.KEY_NAME, "--sas-key", agents.KEY] + common, directory, "relay", library)
        roles["relay"].process.wait_for_log("relay listening")
        roles["edge"] = Counted(
            ["edge", "-e", url, "-K", agents.KEY_NAME, "-k", agents.KEY,
             "-T", "bench:echo/127.0.0.1:%d;sink/127.0.0.1:%d" % (echo.port, sink.port)] + common,
            directory, "edge", library)
        roles["edge"].process.wait_for_log("listener online")
        roles["client"] = Counted(
            ["client", "-e", url, "-K", agents.KEY_NAME, "-k", agents.KEY,
             "-L", "127.0.0.1:%d/echo;127.0.0.1:%d/sink:bench" % (echo_port, sink_port)] + common,
            directory, "client", library)
        deadline = time.time() + 20
        while roles["client"].process.log().count("client port bound") < 2:
            assert time.time() < deadline, roles["client"].process.log()
            time.sleep(0.05)
        for _ in range(WARM_UP):
            one_byte_tunnel(echo_port)
        time.sleep(0.5)
        before = {name: role.snapshot() for name, role in roles.items()}
        for _ in range(tunnels):
            one_byte_tunnel(echo_port)
        time.sleep(0.5)
        after_tunnels = {name: role.snapshot() for name, role in roles.items()}
        move(sink_port, MOVED)
        time.sleep(0.5)
        after_move = {name: role.snapshot() for name, role in roles.items()}
    finally:
        for role in roles.values():
            role.process.stop()
        echo.close()
        sink.close()
    result = {}
    for name in roles:
        (a0, b0, c0), (a1, b1, c1), (a2, b2, c2) = before[name], after_tunnels[name], after_move[name]
        per_tunnel = (a1 - a0) / tunnels
        result[name] = {
            "allocations_per_tunnel": round(per_tunnel, 1),
            "kib_allocated_per_tunnel": round((b1 - b0) / tunnels / 1024, 1),
            "cpu_ms_per_tunnel": round((c1 - c0) / tunnels * 1000, 3),
            # The moving tunnel's own set-up taken out.
            "allocations_per_64_mib": round(a2 - a1 - per_tunnel),
            "cpu_ms_per_64_mib": round((c2 - c1) * 1000, 1),
        }
    return result


def option(arguments, name, default):
    if name not in arguments:
        return default
    index = arguments.index(name)
    value = int(arguments[index + 1])
    del arguments[index:index + 2]
    return value


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else round((ordered[middle - 1] + ordered[middle]) / 2, 3)


def main():
    arguments = sys.argv[1:]
    tunnels = option(arguments, "--tunnels", 200)
    runs = option(arguments, "--runs", 3)
    builds = [argument.split("=", 1) for argument in arguments]
    assert builds and all(len(b) == 2 for b in builds), __doc__
    library = build_counter(tempfile.mkdtemp(prefix="alloc-counter-"))
    samples = {name: [] for name, _ in builds}
    for _ in range(runs):
        for name, path in builds:
            samples[name].append(measure(os.path.abspath(path), tunnels, library))
    results = {
        name: {role: {figure: median([run[role][figure] for run in runs_of_build]) for figure in runs_of_build[0][role]}
               for role in runs_of_build[0]}
        for name, runs_of_build in samples.items()}
    output = os.path.join(HERE, "..", "results", "allocations.json")
    with open(output, "w") as f:
        json.dump({"tunnels": tunnels, "runs": runs, "moved_bytes": MOVED, "medians": results, "samples": samples},
                  f, indent=2)
    print("| build | role | allocations/tunnel | KiB allocated/tunnel | CPU ms/tunnel | allocations/64 MiB | CPU ms/64 MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, roles in results.items():
        for role, figures in roles.items():
            print("| %s | %s | %s | %s | %s | %s | %s |" % (
                name, role, figures["allocations_per_tunnel"], figures["kib_allocated_per_tunnel"],
                figures["cpu_ms_per_tunnel"], figures["allocations_per_64_mib"], figures["cpu_ms_per_64_mib"]))


if __name__ == "__main__":
    main()
